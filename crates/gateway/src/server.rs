//! The listeners: the client-facing server (HTTP/1.1 and h2c on one port) and the admin
//! server (`/healthz`, `/readyz`, `/metrics`). `TCP_NODELAY` on every accepted socket: SSE
//! frames are small and must not wait for Nagle.
//!
//! The client-facing server runs thread-per-core ([`serve_workers`]): one acceptor hands each
//! connection to the worker thread with the fewest open connections, and each worker runs its
//! connections on a current-thread runtime of its own, with its own upstream connection pool.
//! A request's server connection, its upstream connection and every wake-up between them stay
//! on one thread, as in nginx's worker model: no work stealing, no cross-thread wake-ups and
//! no allocator traffic between threads on the hot path.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
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

/// A request handler the servers can clone into every connection.
pub(crate) trait Handler: Clone + Send + Sync + 'static {
    type Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static;
    fn call(&self, req: Request<Incoming>) -> Self::Fut;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    type Fut = Fut;
    fn call(&self, req: Request<Incoming>) -> Fut {
        self(req)
    }
}

/// Waits up to `grace` (and a second) for the connections to finish, then aborts the rest.
async fn drain(mut conns: JoinSet<()>, grace: Duration) {
    let _ = tokio::time::timeout(grace + Duration::from_secs(1), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
}

/// The builders every connection is served with: HTTP/1.1, or h2c with prior knowledge;
/// `auto` (which reads the first bytes itself and replays them) for a connection whose
/// first bytes do not tell yet.
#[derive(Clone)]
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    auto: auto::Builder<TokioExecutor>,
}

fn builders() -> Builders {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // Head and body in one buffer, one plain write: cheaper than a vectored write for
        // the small answers and frames a gateway mostly sends.
        .writev(false);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new());
    let mut auto = auto::Builder::new(TokioExecutor::new());
    auto.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .writev(false);
    auto.http2().timer(TokioTimer::new());
    Builders {
        http1: h1,
        http2: h2,
        auto,
    }
}

/// The first bytes of the HTTP/2 connection preface. `PRI` is reserved as an HTTP/1 method
/// for exactly this: a client speaking h2c with prior knowledge sends it first.
const H2_PREFACE_START: &[u8] = b"PRI";

/// What a connection's first bytes say it speaks.
#[derive(Debug, PartialEq)]
enum Opening {
    Http1,
    Http2,
    /// A prefix of the preface (`P`, `PR`; `POST` starts so too): not yet known.
    Undecided,
}

/// Looks at the first bytes without consuming them (the chosen protocol reads them itself),
/// once: a peek does not clear readiness, so waiting for more bytes here would spin. `None`
/// if the connection closed or failed first.
async fn opening(stream: &TcpStream) -> Option<Opening> {
    let mut buf = [0u8; 3];
    let n = stream.peek(&mut buf).await.ok()?;
    let seen = buf.get(..n).filter(|b| !b.is_empty())?;
    Some(if !H2_PREFACE_START.starts_with(seen) {
        Opening::Http1
    } else if n == buf.len() {
        Opening::Http2
    } else {
        Opening::Undecided
    })
}

/// Drives a served connection until it ends, or until `stop`, after which it gets `grace`
/// to finish the requests under way (idle keep-alive connections close at once).
async fn drive<C, E>(
    conn: C,
    graceful: impl FnOnce(Pin<&mut C>),
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    tokio::select! {
        biased;
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = stopped(&mut stop) => {
            graceful(conn.as_mut());
            let _ = tokio::time::timeout(grace, conn).await;
        }
    }
}

/// Serves one accepted connection with `handler` until it ends, or until `shutdown`, after
/// which it gets `grace` to finish its requests. HTTP/1.1 goes straight to hyper's HTTP/1
/// connection (no protocol-sniffing wrapper around every read); h2c is recognised by its
/// preface. The rare connection whose first bytes do not decide goes to hyper-util's auto
/// builder, which reads on until they do.
async fn serve_connection(
    stream: TcpStream,
    builders: Builders,
    handler: impl Handler,
    stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let opening = match tokio::time::timeout(HEADER_READ_TIMEOUT, opening(&stream)).await {
        Ok(Some(o)) => o,
        Ok(None) | Err(_) => return,
    };
    let svc = service_fn(move |req| handler.call(req));
    let io = TokioIo::new(stream);
    match opening {
        Opening::Http1 => {
            let conn = builders.http1.serve_connection(io, svc);
            drive(conn, |c| c.graceful_shutdown(), stop, grace).await;
        }
        Opening::Http2 => {
            let conn = builders.http2.serve_connection(io, svc);
            drive(conn, |c| c.graceful_shutdown(), stop, grace).await;
        }
        Opening::Undecided => {
            let conn = builders.auto.serve_connection(io, svc);
            drive(conn, |c| c.graceful_shutdown(), stop, grace).await;
        }
    }
}

/// Accepts the next connection; `None` once `shutdown` is signalled. Accept errors (usually
/// EMFILE) back off instead of spinning.
async fn accept(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
    what: &'static str,
) -> Option<TcpStream> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                    return Some(stream);
                }
                Err(e) => {
                    tracing::warn!(error = %e, server = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stopped(shutdown) => return None,
        }
    }
}

/// Connections handed to a worker but not yet picked up by it. Small: the acceptor moves on
/// to another worker when one is behind.
const WORKER_BACKLOG: usize = 256;

/// One serving thread as the acceptor sees it.
struct WorkerSlot {
    conns: mpsc::Sender<std::net::TcpStream>,
    /// Connections handed to the worker and not yet closed (`worker_connections`).
    open: Gauge,
}

/// Serves `listener` on `workers` threads, each running a current-thread runtime with the
/// handler `make(i)` builds for it (so each worker has its own upstream pool). Accepts on the
/// caller's runtime and hands each connection to the worker with the fewest open ones. On
/// `shutdown` the listener closes and open connections get `grace` to finish.
pub(crate) async fn serve_workers<H: Handler>(
    listener: TcpListener,
    workers: usize,
    metrics: &Metrics,
    make: impl Fn(usize) -> H,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) -> std::io::Result<()> {
    let mut slots = Vec::with_capacity(workers.max(1));
    let mut finished = Vec::with_capacity(workers.max(1));
    for i in 0..workers.max(1) {
        let (tx, rx) = mpsc::channel(WORKER_BACKLOG);
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let open = metrics.worker_connections(i);
        let handler = make(i);
        let worker_open = open.clone();
        let stop = shutdown.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("gateway-{i}"))
            .spawn(move || {
                runtime.block_on(run_worker(rx, handler, worker_open, stop, grace));
                // A DNS lookup still running on the blocking pool must not hold the exit.
                runtime.shutdown_timeout(Duration::from_secs(1));
                let _ = done_tx.send(());
            })?;
        slots.push(WorkerSlot { conns: tx, open });
        finished.push(done_rx);
    }
    while let Some(stream) = accept(&listener, &mut shutdown, "gateway").await {
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot hand over an accepted connection");
                continue;
            }
        };
        hand_over(&slots, stream).await;
    }
    drop(listener);
    // Closing the channels tells idle workers there is nothing more to come.
    drop(slots);
    for done in finished {
        let _ = done.await;
    }
    Ok(())
}

/// Gives `stream` to the least loaded worker that has room in its backlog, or waits for the
/// least loaded one when all are behind.
async fn hand_over(slots: &[WorkerSlot], stream: std::net::TcpStream) {
    let mut order: Vec<usize> = (0..slots.len()).collect();
    order.sort_by_key(|&i| slots[i].open.get());
    let mut stream = stream;
    for &i in &order {
        let slot = &slots[i];
        slot.open.inc();
        match slot.conns.try_send(stream) {
            Ok(()) => return,
            Err(e) => {
                slot.open.dec();
                match e {
                    mpsc::error::TrySendError::Full(s) | mpsc::error::TrySendError::Closed(s) => {
                        stream = s;
                    }
                }
            }
        }
    }
    if let Some(slot) = order.first().map(|&i| &slots[i]) {
        slot.open.inc();
        if slot.conns.send(stream).await.is_err() {
            slot.open.dec();
        }
    }
}

/// Decrements a worker's open-connection count when a connection ends, however it ends.
struct OpenGuard(Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn run_worker(
    mut rx: mpsc::Receiver<std::net::TcpStream>,
    handler: impl Handler,
    open: Gauge,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let builders = builders();
    let mut conns = JoinSet::new();
    loop {
        let stream = tokio::select! {
            s = rx.recv() => match s {
                Some(s) => s,
                None => break,
            },
            _ = stopped(&mut shutdown) => break,
        };
        let guard = OpenGuard(open.clone());
        let stream = match stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream))
        {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot adopt a connection");
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let (handler, builders, stop) = (handler.clone(), builders.clone(), shutdown.clone());
        conns.spawn(async move {
            let _guard = guard;
            serve_connection(stream, builders, handler, stop, grace).await;
        });
    }
    // Connections already handed over but not picked up are closed unserved.
    rx.close();
    while rx.try_recv().is_ok() {
        open.dec();
    }
    drain(conns, grace).await;
}

/// Accepts connections and serves each with `handler` until `shutdown`; then open
/// connections get `grace` to finish their requests.
pub(crate) async fn serve(
    listener: TcpListener,
    handler: impl Handler,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    what: &'static str,
) {
    let builders = builders();
    let mut conns = JoinSet::new();
    while let Some(stream) = accept(&listener, &mut shutdown, what).await {
        while conns.try_join_next().is_some() {}
        let (handler, builders, stop) = (handler.clone(), builders.clone(), shutdown.clone());
        conns.spawn(serve_connection(stream, builders, handler, stop, grace));
    }
    drop(listener);
    drain(conns, grace).await;
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
