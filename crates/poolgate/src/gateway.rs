//! `poolgate gateway`: the data plane, following a control plane over gRPC; and the
//! in-process adapters `poolgate standalone` uses to run a gateway next to its control plane.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use clap::Args;
use futures::StreamExt;
use poolgate_control::{ControlConfig, IngestError, ReportIngest, SnapshotHub};
use poolgate_core::report::ReportBatch;
use poolgate_gateway::{
    DeltaStream, Gateway, GatewayConfig, GrpcReportSink, GrpcSnapshotSource, ReportSink, SinkError,
    SnapshotSource, SourceError,
};

use poolgate_store::Store;
use tokio::sync::watch;

use crate::{Failure, config_err, one_line, required};

#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// The control plane's gRPC URL.
    #[arg(
        long,
        env = "POOLGATE_CONTROL_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub control_url: String,
    /// File holding the node token the control plane issued for gateways.
    #[arg(long, env = "POOLGATE_NODE_TOKEN_FILE")]
    pub node_token_file: Option<PathBuf>,
    /// This gateway's name in request logs and `poolctl get gateways` (default: hostname).
    #[arg(long, env = "POOLGATE_NODE_ID")]
    pub node_id: Option<String>,
    /// Client-facing HTTP address (host:port; port 0 picks a free one).
    #[arg(long, env = "POOLGATE_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub gateway_listen: String,
    /// Admin HTTP address for /healthz, /readyz and /metrics.
    #[arg(long, env = "POOLGATE_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: String,
    #[command(flatten)]
    pub tuning: GatewayTuning,
}

/// Gateway settings shared by `gateway` and `standalone`.
#[derive(Debug, Clone, Args)]
pub(crate) struct GatewayTuning {
    /// Largest request body accepted (after zstd decoding), e.g. 16MiB, 512KiB, 1048576.
    #[arg(long, env = "POOLGATE_MAX_BODY", default_value = "16MiB", value_parser = parse_size)]
    pub max_body: usize,
    /// Codex CLI version the upstream header profile claims.
    #[arg(long, env = "POOLGATE_CODEX_VERSION", default_value = poolgate_upstream::DEFAULT_CODEX_VERSION)]
    pub codex_version: String,
    /// The Codex model that serves Anthropic Messages requests for a Claude model
    /// (`claude-*`), unless the platform key overrides the model.
    #[arg(long, env = "POOLGATE_ANTHROPIC_DEFAULT_MODEL", default_value = poolgate_gateway::DEFAULT_ANTHROPIC_MODEL)]
    pub anthropic_default_model: String,
    /// Threads serving client connections, each with its own event loop and upstream
    /// connection pool; 0 = one per CPU available to the process (cgroup limits included).
    #[arg(long, env = "POOLGATE_GATEWAY_WORKERS", default_value_t = 0)]
    pub gateway_workers: usize,
}

impl GatewayTuning {
    pub fn config(&self, listen: String, admin_listen: String, node_id: String) -> GatewayConfig {
        let mut cfg = GatewayConfig {
            listen,
            admin_listen,
            node_id,
            max_body_bytes: self.max_body,
            anthropic_default_model: self.anthropic_default_model.clone(),
            workers: self.gateway_workers,
            ..GatewayConfig::default()
        };
        cfg.upstream.codex_version = self.codex_version.clone();
        cfg
    }
}

/// A byte size: digits with an optional unit (B, KB, KiB, MB, MiB, GB, GiB).
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (use e.g. 16MiB, 512KiB, 1048576)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    let bytes = n
        .checked_mul(mult)
        .filter(|b| *b >= 1024 && *b <= 4 << 30)
        .ok_or_else(|| "must be between 1KiB and 4GiB".to_string())?;
    usize::try_from(bytes).map_err(|_| "too large for this platform".to_string())
}

/// The machine's name: `HOSTNAME`, else the kernel's, else `gateway`.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into())
}

pub(crate) async fn gateway(args: GatewayArgs) -> Result<(), Failure> {
    let shutdown = crate::shutdown_signal()?;
    let token_file = required(
        args.node_token_file,
        "--node-token-file",
        "POOLGATE_NODE_TOKEN_FILE",
    )?;
    // Fail at start on an unreadable or empty token; later reads pick up rotations.
    let token = std::fs::read_to_string(&token_file).map_err(|e| {
        config_err(
            &format!(
                "--node-token-file / POOLGATE_NODE_TOKEN_FILE {}",
                token_file.display()
            ),
            e,
        )
    })?;
    if token.trim().is_empty() {
        return Err(Failure::Config(
            "--node-token-file / POOLGATE_NODE_TOKEN_FILE is empty".into(),
        ));
    }
    let channel = poolgate_gateway::control_channel(&args.control_url).map_err(|e| {
        Failure::Config(one_line(&format!(
            "--control-url / POOLGATE_CONTROL_URL: {e}"
        )))
    })?;
    let node_id = args
        .node_id
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(hostname);
    let token = poolgate_gateway::NodeToken::File(token_file);
    let source = Arc::new(GrpcSnapshotSource::new(
        channel.clone(),
        node_id.clone(),
        token.clone(),
    ));
    let sink = Arc::new(GrpcReportSink::new(channel, token));
    tracing::info!(control_url = %args.control_url, node = %node_id, "gateway following the control plane");
    let cfg = args
        .tuning
        .config(args.gateway_listen, args.admin_listen, node_id);
    let gw = Gateway::bind(cfg, source, sink)
        .await
        .map_err(|e| Failure::Runtime(one_line(&e.to_string())))?;
    gw.run(shutdown).await;
    tracing::info!("stopped");
    Ok(())
}

fn control_failure(e: poolgate_control::ControlError) -> Failure {
    match e {
        poolgate_control::ControlError::Config(_) => Failure::Config(one_line(&e.to_string())),
        other => Failure::Runtime(one_line(&other.to_string())),
    }
}

/// `poolgate standalone`: the control plane and a gateway in one process, the gateway fed
/// in-process from the hub and reporting straight to the intake. Stops both on `shutdown`
/// (or when the control plane fails).
pub(crate) async fn run_standalone(
    config: ControlConfig,
    store: Arc<dyn Store>,
    gateway: GatewayConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Failure> {
    let control = poolgate_control::bind(config, store)
        .await
        .map_err(control_failure)?;
    let source = Arc::new(HubSource(control.hub()));
    let sink = Arc::new(IngestSink(control.ingest()));
    let gw = Gateway::bind(gateway, source, sink)
        .await
        .map_err(|e| Failure::Runtime(one_line(&e.to_string())))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let gw_task = tokio::spawn(gw.run(stopped(stop_rx.clone())));
    let control_run = control.run(stopped(stop_rx));
    tokio::pin!(control_run);
    let result = tokio::select! {
        r = &mut control_run => {
            let _ = stop_tx.send(true);
            r
        }
        _ = shutdown => {
            let _ = stop_tx.send(true);
            control_run.await
        }
    };
    let _ = gw_task.await;
    result.map_err(control_failure)?;
    tracing::info!("stopped");
    Ok(())
}

/// Snapshots straight from the control plane's hub (standalone: no gRPC hop, no token).
pub(crate) struct HubSource(pub SnapshotHub);

#[async_trait]
impl SnapshotSource for HubSource {
    async fn watch(&self, have_version: i64) -> Result<DeltaStream, SourceError> {
        let stream = self
            .0
            .subscribe(have_version)
            .await
            .map_err(|e| SourceError::Unavailable(e.to_string()))?;
        Ok(stream
            .map(|item| match item {
                Ok(delta) => Ok((*delta).clone()),
                Err(e) => Err(SourceError::Unavailable(e.to_string())),
            })
            .boxed())
    }
}

/// Reports straight into the control plane's intake.
pub(crate) struct IngestSink(pub ReportIngest);

#[async_trait]
impl ReportSink for IngestSink {
    async fn report(&self, batch: &mut ReportBatch) -> Result<(), SinkError> {
        match self.0.ingest_mut(batch).await {
            Ok(_) => Ok(()),
            Err(e @ IngestError::Invalid(_)) => Err(SinkError::Rejected(e.to_string())),
            Err(e) => Err(SinkError::Unavailable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("512 KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("2mb").unwrap(), 2_000_000);
        assert!(parse_size("10").is_err());
        assert!(parse_size("16 parsecs").is_err());
        assert!(parse_size("9GiB").is_err());
        assert!(parse_size("").is_err());
    }
}
