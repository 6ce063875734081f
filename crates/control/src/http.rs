//! The admin HTTP server: `/healthz` (the process runs), `/readyz` (the store answers) and
//! `/metrics` (Prometheus). Plain HTTP/1.1, no auth: it carries no secrets and binds to
//! localhost by default in standalone mode.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use poolgate_store::Store;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::metrics::Metrics;

/// Probes and scrapes are few; more connections than this wait to be accepted.
const MAX_CONNECTIONS: usize = 64;
const READY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub(crate) struct AdminState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
}

fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";

async fn handle(
    state: AdminState,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET {
        return Ok(text(StatusCode::NOT_FOUND, "not found\n", PLAIN));
    }
    let resp = match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok", PLAIN),
        "/readyz" => match tokio::time::timeout(READY_TIMEOUT, state.store.current_version()).await
        {
            Ok(Ok(_)) => text(StatusCode::OK, "ready", PLAIN),
            Ok(Err(e)) => {
                state.metrics.store_error("readyz");
                tracing::warn!(error = %e, "readiness check: store failed");
                text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable", PLAIN)
            }
            Err(_) => {
                state.metrics.store_error("readyz");
                tracing::warn!("readiness check: store did not answer within 2s");
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store unavailable (timeout)",
                    PLAIN,
                )
            }
        },
        "/metrics" => match state.metrics.encode() {
            Ok(body) => text(
                StatusCode::OK,
                body,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            Err(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode metrics",
                PLAIN,
            ),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n", PLAIN),
    };
    Ok(resp)
}

/// Serves until `shutdown` turns true, then lets open connections finish their request.
pub(crate) async fn serve(
    listener: TcpListener,
    state: AdminState,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = crate::stopped(&mut shutdown) => break,
        };
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Usually EMFILE; back off instead of spinning.
                    tracing::warn!(error = %e, "admin HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = crate::stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let mut stop = shutdown.clone();
        // Reap finished connections so the set stays small.
        while conns.try_join_next().is_some() {}
        conns.spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| handle(state.clone(), req));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = crate::stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
    while conns.join_next().await.is_some() {}
}
