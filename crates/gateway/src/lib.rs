//! The poolgate gateway: the data plane in front of a pool of upstream accounts.
//!
//! A [`Gateway`] follows a [`SnapshotSource`] (the control plane's versioned snapshot
//! stream, applied atomically; the last snapshot keeps serving while the control plane is
//! away), authenticates platform keys locally, routes each request ([`poolgate_routing`]),
//! walks the candidates until one answers (failing over only before the first byte reaches
//! the client), streams the answer frame by frame, and ships request logs and account
//! observations to a [`ReportSink`] in the background.
//!
//! Client surface (OpenAI-compatible): `POST /v1/responses` (streaming and not),
//! `POST /v1/responses/compact`, `POST /v1/chat/completions` (translated to Responses for
//! Codex accounts), `GET /v1/models`, `GET /health`; Anthropic-compatible: `POST
//! /v1/messages` (translated to Responses for Codex accounts, Claude model names served by
//! [`GatewayConfig::anthropic_default_model`]) and `POST /v1/messages/count_tokens`
//! (estimated locally). Admin surface: `/healthz`, `/readyz`,
//! `/metrics`.
//!
//! ```no_run
//! # async fn run() -> Result<(), poolgate_gateway::GatewayError> {
//! use std::sync::Arc;
//! use poolgate_gateway::{GatewayConfig, MemoryReportSink, MemorySnapshotSource, serve};
//! let source = Arc::new(MemorySnapshotSource::new());
//! let sink = Arc::new(MemoryReportSink::new());
//! serve(GatewayConfig::default(), source, sink, std::future::pending()).await
//! # }
//! ```

mod auth;
mod body;
mod clock;
pub mod config;
mod finish;
pub mod grpc;
mod ids;
pub mod metrics;
mod models;
mod proxy;
mod relay;
mod report;
mod respond;
mod server;
pub mod source;
mod state;
pub mod telemetry;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use poolgate_upstream::UpstreamClient;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{DEFAULT_ANTHROPIC_MODEL, DEFAULT_MAX_BODY_BYTES, GatewayConfig, ReportConfig};
pub use grpc::{GrpcReportSink, GrpcSnapshotSource, NodeToken, control_channel};
pub use ids::request_id;
pub use metrics::Metrics;
pub use source::{
    DeltaStream, MemoryReportSink, MemorySnapshotSource, ReportSink, SinkError, SnapshotSource,
    SourceError,
};

/// How long open connections get to finish after shutdown is requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot set up the upstream HTTP client: {0}")]
    Upstream(#[from] poolgate_upstream::UpstreamError),
}

/// A gateway with its listeners bound (so the chosen ports are known before it serves).
pub struct Gateway {
    /// One per worker thread: they share everything but the upstream connection pool.
    gws: Vec<Arc<proxy::Gw>>,
    source: Arc<dyn SnapshotSource>,
    sink: Arc<dyn ReportSink>,
    listener: TcpListener,
    admin: TcpListener,
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("local_addr", &self.local_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), GatewayError> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let a = l.local_addr().map_err(|source| GatewayError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    Ok((l, a))
}

impl Gateway {
    /// Binds both listeners (port 0 picks a free port) and builds the upstream clients.
    pub async fn bind(
        config: GatewayConfig,
        source: Arc<dyn SnapshotSource>,
        sink: Arc<dyn ReportSink>,
    ) -> Result<Gateway, GatewayError> {
        let (listener, local_addr) = bind(&config.listen).await?;
        let (admin, admin_addr) = bind(&config.admin_listen).await?;
        let metrics = Arc::new(Metrics::new());
        let shared = Arc::new(state::Shared::new(metrics.clone()));
        let reporter = Arc::new(report::Reporter::new(
            config.report.clone(),
            config.node_id.clone(),
            metrics.clone(),
        ));
        let workers = config.worker_threads();
        let mut gws = Vec::with_capacity(workers);
        for _ in 0..workers {
            gws.push(Arc::new(proxy::Gw {
                cfg: config.clone(),
                shared: shared.clone(),
                upstream: UpstreamClient::new(config.upstream.clone())?,
                reporter: reporter.clone(),
                metrics: metrics.clone(),
            }));
        }
        Ok(Gateway {
            gws,
            source,
            sink,
            listener,
            admin,
            local_addr,
            admin_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.gws[0].metrics.clone()
    }

    /// Serves until `shutdown` completes; then stops accepting, lets open requests finish
    /// (up to 30 s) and flushes the report queue.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let Gateway {
            gws,
            source,
            sink,
            listener,
            admin,
            local_addr,
            admin_addr,
        } = self;
        let gw = gws[0].clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        // The shipper stops last, so logs of requests that finish during the grace period
        // are flushed too.
        let (ship_stop_tx, ship_stop_rx) = watch::channel(false);
        let follower = tokio::spawn(state::follow_snapshots(
            gw.shared.clone(),
            source,
            gw.cfg.snapshot_backoff_max,
            stop_rx.clone(),
        ));
        let shipper = tokio::spawn(report::ship(
            gw.reporter.clone(),
            sink,
            gw.shared.clone(),
            ship_stop_rx,
        ));
        let (shared, metrics) = (gw.shared.clone(), gw.metrics.clone());
        let admin_task = tokio::spawn(server::serve(
            admin,
            move |req| server::admin(shared.clone(), metrics.clone(), req),
            stop_rx.clone(),
            Duration::from_secs(2),
            "admin",
        ));
        tracing::info!(admin_listen = %admin_addr, "gateway admin HTTP listening");
        let workers = gws.len();
        let worker_metrics = gw.metrics.clone();
        let main = tokio::spawn(async move {
            server::serve_workers(
                listener,
                workers,
                &worker_metrics,
                move |i| {
                    let gw = gws[i].clone();
                    move |req| proxy::handle(gw.clone(), req)
                },
                stop_rx.clone(),
                SHUTDOWN_GRACE,
            )
            .await
        });
        tracing::info!(gateway_listen = %local_addr, node = %gw.cfg.node_id, workers, "gateway listening");
        shutdown.await;
        tracing::info!("gateway shutting down");
        let _ = stop_tx.send(true);
        match main.await {
            Ok(Err(e)) => tracing::error!(error = %e, "cannot start the gateway's worker threads"),
            Err(e) => tracing::error!(error = %e, "the gateway's acceptor failed"),
            Ok(Ok(())) => {}
        }
        let _ = admin_task.await;
        let _ = follower.await;
        let _ = ship_stop_tx.send(true);
        let _ = shipper.await;
    }
}

/// Binds and serves until `shutdown` completes.
pub async fn serve(
    config: GatewayConfig,
    source: Arc<dyn SnapshotSource>,
    sink: Arc<dyn ReportSink>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), GatewayError> {
    Gateway::bind(config, source, sink)
        .await?
        .run(shutdown)
        .await;
    Ok(())
}
