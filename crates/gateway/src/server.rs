//! The listeners: the client-facing server (HTTP/1.1 and h2c on one port) and the admin
//! server (`/healthz`, `/readyz`, `/metrics`). `TCP_NODELAY` on every accepted socket: SSE
//! frames are small and must not wait for Nagle.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::metrics::Metrics;
use crate::respond::{self, Body};
use crate::state::Shared;

/// How long a connection may take to send a request's headers (also closes idle
/// keep-alive connections).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Accepts connections and serves each with `handler` until `shutdown`; then open
/// connections get `grace` to finish their requests.
pub(crate) async fn serve<F, Fut>(
    listener: TcpListener,
    handler: F,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    what: &'static str,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let mut conns = JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, server = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        while conns.try_join_next().is_some() {}
        let handler = handler.clone();
        let builder = builder.clone();
        let mut stop = shutdown.clone();
        conns.spawn(async move {
            let svc = service_fn(handler);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                _ = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(grace, conn).await;
                }
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(grace + Duration::from_secs(1), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
}

fn text(status: u16, body: &'static str) -> Response<Body> {
    let mut r = respond::with_status(status, respond::full(body));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// `/healthz` (the process runs), `/readyz` (a snapshot is loaded: the gateway can route),
/// `/metrics` (OpenMetrics text).
pub(crate) async fn admin(
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(405, "method not allowed\n"));
    }
    Ok(match req.uri().path() {
        "/healthz" => text(200, "ok"),
        "/readyz" => {
            if shared.view().is_some() {
                text(200, "ready")
            } else {
                text(503, "no snapshot from the control plane yet")
            }
        }
        "/metrics" => match metrics.encode() {
            Ok(body) => {
                let mut r = respond::with_status(200, respond::full(body));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                r
            }
            Err(_) => text(500, "cannot encode metrics"),
        },
        _ => text(404, "not found\n"),
    })
}
