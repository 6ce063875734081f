//! The `poolgate` binary: subcommand wiring only.
//!
//! - `poolgate standalone`: the control plane on the embedded SQLite store, with its
//!   encryption key, bootstrap admin token and node token in one data directory.
//! - `poolgate control`: the control plane on PostgreSQL.
//! - `poolgate gateway`: the data plane, following a control plane over gRPC.
//!
//! Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT), 2 for bad configuration, 1 when
//! something fails at run time (database unreachable, address in use).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use poolgate_control::{BootstrapToken, ControlConfig, NODE_TOKEN_PREFIX, NodeToken};
use poolgate_core::key::ADMIN_TOKEN_PREFIX;
use poolgate_store::Cipher;
use poolgate_store::crypto::write_private_file;
use poolgate_store::postgres::PgStore;
use poolgate_store::sqlite::SqliteStore;
use tracing_subscriber::EnvFilter;

/// jemalloc: its per-thread caches serve the gateway's per-request allocations (hyper's
/// 8 KiB read buffers among them, which glibc serves from its shared bins after consolidating)
/// for about 1.5 µs less CPU per proxied request in `scripts/bench-gateway.sh`.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod cluster;
mod gateway;
mod jobs;
mod login;

#[derive(Debug, Parser)]
#[command(
    name = "poolgate",
    version,
    about = "A gateway for a pool of upstream LLM accounts"
)]
struct Cli {
    /// Log output format.
    #[arg(long, env = "POOLGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Control plane on the embedded SQLite store, all state in one data directory.
    Standalone(StandaloneArgs),
    /// Control plane on PostgreSQL (cluster mode).
    Control(ControlArgs),
    /// Gateway (data plane) following a control plane over gRPC.
    Gateway(gateway::GatewayArgs),
    /// Print the UpstreamAccount and PlatformKey CRDs as YAML (or write one file per CRD).
    Crdgen(CrdgenArgs),
}

#[derive(Debug, Args)]
struct CrdgenArgs {
    /// Write `<plural>.poolgate.dev.yaml` files into this directory instead of printing one
    /// multi-document YAML to stdout.
    #[arg(long)]
    out_dir: Option<PathBuf>,
}

fn crdgen(args: CrdgenArgs) -> Result<(), Failure> {
    use std::io::Write;
    let runtime = |e: poolgate_k8s::Error| Failure::Runtime(one_line(&e.to_string()));
    match args.out_dir {
        Some(dir) => {
            for path in poolgate_k8s::crdgen::write_dir(&dir).map_err(runtime)? {
                eprintln!("wrote {}", path.display());
            }
        }
        None => {
            let yaml = poolgate_k8s::crdgen::multi_document().map_err(runtime)?;
            std::io::stdout()
                .write_all(yaml.as_bytes())
                .map_err(|e| Failure::Runtime(format!("cannot write to stdout: {e}")))?;
        }
    }
    Ok(())
}

fn parse_retention(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 30d, 12h, 90m)"))?;
    if d < Duration::from_secs(60) {
        return Err("must be at least 1m".into());
    }
    Ok(d)
}

/// The key file's own message, without the store's "cannot decrypt" framing.
fn key_error(e: poolgate_store::StoreError) -> String {
    match e {
        poolgate_store::StoreError::Crypto(msg) => msg,
        other => other.to_string(),
    }
}

#[derive(Debug, Args)]
struct StandaloneArgs {
    /// Directory for the SQLite database, the encryption key, admin.token and node.token
    /// (created 0700).
    #[arg(long, env = "POOLGATE_DATA_DIR", default_value = "./poolgate-data")]
    data_dir: PathBuf,
    /// gRPC admin API address (host:port; port 0 picks a free one).
    #[arg(long, env = "POOLGATE_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    grpc_listen: String,
    /// Admin HTTP address for /healthz, /readyz and /metrics.
    #[arg(long, env = "POOLGATE_ADMIN_LISTEN", default_value = "127.0.0.1:9091")]
    admin_listen: String,
    /// Request logs older than this are deleted.
    #[arg(long, env = "POOLGATE_REQUEST_LOG_RETENTION", default_value = "30d", value_parser = parse_retention)]
    request_log_retention: Duration,
    /// The gateway's client-facing HTTP address (the OpenAI-compatible endpoint).
    #[arg(
        long,
        env = "POOLGATE_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    gateway_listen: String,
    /// The gateway's admin HTTP address (/healthz, /readyz, /metrics).
    #[arg(
        long,
        env = "POOLGATE_GATEWAY_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    gateway_admin_listen: String,
    #[command(flatten)]
    gateway: gateway::GatewayTuning,
    #[command(flatten)]
    login: login::LoginArgs,
    #[command(flatten)]
    jobs: jobs::JobArgs,
}

#[derive(Debug, Args)]
struct ControlArgs {
    /// PostgreSQL URL (postgres://user:password@host:port/db); never logged with its password.
    #[arg(long, env = "POOLGATE_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// File holding the 32-byte credential encryption key (64 hex characters).
    #[arg(long, env = "POOLGATE_ENCRYPTION_KEY_FILE")]
    encryption_key_file: Option<PathBuf>,
    /// File holding the bootstrap admin token.
    #[arg(long, env = "POOLGATE_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// File holding the node token gateways authenticate with (must differ from the admin
    /// token).
    #[arg(long, env = "POOLGATE_NODE_TOKEN_FILE")]
    node_token_file: Option<PathBuf>,
    /// gRPC admin API address (host:port; port 0 picks a free one).
    #[arg(long, env = "POOLGATE_GRPC_LISTEN", default_value = "0.0.0.0:50051")]
    grpc_listen: String,
    /// Admin HTTP address for /healthz, /readyz and /metrics.
    #[arg(long, env = "POOLGATE_ADMIN_LISTEN", default_value = "0.0.0.0:9091")]
    admin_listen: String,
    /// Request logs older than this are deleted.
    #[arg(long, env = "POOLGATE_REQUEST_LOG_RETENTION", default_value = "30d", value_parser = parse_retention)]
    request_log_retention: Duration,
    #[command(flatten)]
    cluster: cluster::ClusterArgs,
    #[command(flatten)]
    login: login::LoginArgs,
    #[command(flatten)]
    jobs: jobs::JobArgs,
}

/// Why the process stops with an error: bad configuration (exit 2) or a run-time failure
/// (exit 1). Messages are one line and never carry secrets.
#[derive(Debug)]
enum Failure {
    Config(String),
    Runtime(String),
}

fn config_err(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::Config(one_line(&format!("{what}: {e}")))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Declared before the runtime, so traces are flushed after it has stopped.
    let _otel = match init_logging(cli.log_format) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("poolgate: error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("poolgate: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Standalone(args) => standalone(args).await,
            Command::Control(args) => control(args).await,
            Command::Gateway(args) => gateway::gateway(args).await,
            Command::Crdgen(args) => crdgen(args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(msg)) => {
            eprintln!("poolgate: error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(msg)) => {
            eprintln!("poolgate: error: {msg}");
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr; with `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans also go out over OTLP (the
/// guard flushes them at exit).
fn init_logging(
    format: LogFormat,
) -> Result<Option<poolgate_gateway::telemetry::OtelGuard>, String> {
    use tracing_subscriber::prelude::*;
    let spec = ["POOLGATE_LOG", "RUST_LOG"].iter().find_map(|k| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| (*k, v))
    });
    let filter = match spec {
        Some((var, v)) => EnvFilter::try_new(&v).map_err(|e| format!("{var}: {e}"))?,
        None => EnvFilter::new("info"),
    };
    let (otel, guard) =
        match poolgate_gateway::telemetry::otel_layer("poolgate").map_err(|e| e.to_string())? {
            Some(o) => (Some(o.layer), Some(o.guard)),
            None => (None, None),
        };
    // No colour codes when stderr is a file or a pipe: scripts parse these lines.
    let text = (format == LogFormat::Text).then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(otel)
        .with(filter)
        .with(text)
        .with(json)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(guard)
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, before the
/// servers start, so an early signal still shuts down cleanly.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| Failure::Runtime(format!("cannot install the SIGTERM handler: {e}")))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| Failure::Runtime(format!("cannot install the SIGINT handler: {e}")))?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
    })
}

/// Invalid settings exit 2, anything else 1.
fn control_failure(e: poolgate_control::ControlError) -> Failure {
    match e {
        poolgate_control::ControlError::Config(_) => Failure::Config(one_line(&e.to_string())),
        other => Failure::Runtime(one_line(&other.to_string())),
    }
}

// ------------------------------------------------------------------------------- standalone

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            data_dir = %dir.display(),
            mode = format!("{:o}", mode & 0o777),
            "the data directory is readable by other users; consider chmod 700"
        );
    }
    Ok(())
}

/// Reuses the token file at `path`, or writes a new token with `prefix` (mode 0600) on first
/// start. Returns whether it created one.
fn ensure_token(path: &Path, prefix: &str, what: &str) -> Result<bool, Failure> {
    if path.exists() {
        return Ok(false);
    }
    let token =
        poolgate_control::generate_secret(prefix).map_err(|e| Failure::Runtime(e.to_string()))?;
    match write_private_file(path, format!("{token}\n").as_bytes()) {
        Ok(()) => Ok(true),
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(config_err(
            &format!("cannot write the {what} to {}", path.display()),
            e,
        )),
    }
}

/// Reuses DIR/admin.token, or writes a new one (mode 0600) on first start.
fn ensure_admin_token(path: &Path) -> Result<bool, Failure> {
    ensure_token(path, ADMIN_TOKEN_PREFIX, "admin token")
}

/// Reuses DIR/node.token, or writes a new one (mode 0600) on first start.
fn ensure_node_token(path: &Path) -> Result<bool, Failure> {
    ensure_token(path, NODE_TOKEN_PREFIX, "node token")
}

async fn standalone(args: StandaloneArgs) -> Result<(), Failure> {
    let shutdown = shutdown_signal()?;
    let dir = args.data_dir;
    create_private_dir(&dir).map_err(|e| {
        config_err(
            &format!(
                "--data-dir / POOLGATE_DATA_DIR {}: cannot create",
                dir.display()
            ),
            e,
        )
    })?;
    let key_path = dir.join("encryption.key");
    let cipher = Cipher::load_or_create(&key_path)
        .map_err(|e| config_err("--data-dir / POOLGATE_DATA_DIR", key_error(e)))?;
    let token_path = dir.join("admin.token");
    let created = ensure_admin_token(&token_path)?;
    let bootstrap = BootstrapToken::from_file(&token_path)
        .map_err(|e| config_err("--data-dir / POOLGATE_DATA_DIR", e))?;
    let node_token_path = dir.join("node.token");
    let node_created = ensure_node_token(&node_token_path)?;
    let node_token = NodeToken::from_file(&node_token_path)
        .map_err(|e| config_err("--data-dir / POOLGATE_DATA_DIR", e))?;
    let db_path = dir.join("poolgate.db");
    let store = SqliteStore::open(&db_path, cipher).map_err(|e| {
        Failure::Runtime(one_line(&format!(
            "cannot open the database {}: {e}",
            db_path.display()
        )))
    })?;
    tracing::info!(
        data_dir = %dir.display(),
        database = %db_path.display(),
        encryption_key_file = %key_path.display(),
        admin_token_file = %token_path.display(),
        admin_token_created = created,
        node_token_file = %node_token_path.display(),
        node_token_created = node_created,
        "standalone data directory; the admin token is in admin_token_file (poolctl --token-file)"
    );
    let mut config = ControlConfig::new(args.grpc_listen, args.admin_listen);
    config.request_log_retention = args.request_log_retention;
    config.bootstrap_token = Some(bootstrap);
    config.node_token = Some(node_token);
    args.login.apply(&mut config);
    args.jobs.apply(&mut config);
    let gateway = args.gateway.config(
        args.gateway_listen,
        args.gateway_admin_listen,
        "standalone".into(),
    );
    gateway::run_standalone(config, Arc::new(store), gateway, shutdown).await
}

// ------------------------------------------------------------------------------- control

/// Where a PostgreSQL config points, without user secrets: for logs and errors.
fn describe_database(cfg: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = cfg.get_ports().iter().map(u16::to_string).collect();
    format!(
        "host={} port={} dbname={} user={}",
        if hosts.is_empty() {
            "localhost".to_string()
        } else {
            hosts.join(",")
        },
        if ports.is_empty() {
            "5432".to_string()
        } else {
            ports.join(",")
        },
        cfg.get_dbname().unwrap_or("(default)"),
        cfg.get_user().unwrap_or("(default)"),
    )
}

fn required<T>(value: Option<T>, flag: &str, env: &str) -> Result<T, Failure> {
    value.ok_or_else(|| Failure::Config(format!("{flag} / {env} is required")))
}

async fn control(args: ControlArgs) -> Result<(), Failure> {
    let shutdown = shutdown_signal()?;
    let url = required(
        args.database_url.filter(|u| !u.trim().is_empty()),
        "--database-url",
        "POOLGATE_DATABASE_URL",
    )?;
    let key_file = required(
        args.encryption_key_file,
        "--encryption-key-file",
        "POOLGATE_ENCRYPTION_KEY_FILE",
    )?;
    let token_file = required(
        args.admin_token_file,
        "--admin-token-file",
        "POOLGATE_ADMIN_TOKEN_FILE",
    )?;
    let node_token_file = required(
        args.node_token_file,
        "--node-token-file",
        "POOLGATE_NODE_TOKEN_FILE",
    )?;

    // tokio-postgres' parse errors name the bad option, never its value.
    let pg: tokio_postgres::Config = url.trim().parse().map_err(|e| {
        config_err(
            "--database-url / POOLGATE_DATABASE_URL is not a valid PostgreSQL URL",
            e,
        )
    })?;
    let cipher = Cipher::from_key_file(&key_file).map_err(|e| {
        config_err(
            "--encryption-key-file / POOLGATE_ENCRYPTION_KEY_FILE",
            key_error(e),
        )
    })?;
    let bootstrap = BootstrapToken::from_file(&token_file)
        .map_err(|e| config_err("--admin-token-file / POOLGATE_ADMIN_TOKEN_FILE", e))?;
    let node_token = NodeToken::from_file(&node_token_file)
        .map_err(|e| config_err("--node-token-file / POOLGATE_NODE_TOKEN_FILE", e))?;
    if node_token.same_as(&bootstrap) {
        return Err(Failure::Config(
            "--node-token-file / POOLGATE_NODE_TOKEN_FILE holds the admin token; gateways need \
             a token of their own"
                .into(),
        ));
    }

    // Leader election, controller and policy file: checked before connecting anywhere.
    let plan = args
        .cluster
        .plan(cluster::in_cluster(), cluster::pod_namespace())?;

    let target = describe_database(&pg);
    tracing::info!(database = %target, "connecting to PostgreSQL");
    let store = PgStore::connect(url.trim(), cipher).await.map_err(|e| {
        Failure::Runtime(one_line(&format!("cannot use PostgreSQL ({target}): {e}")))
    })?;
    let mut config = ControlConfig::new(args.grpc_listen, args.admin_listen);
    config.request_log_retention = args.request_log_retention;
    config.bootstrap_token = Some(bootstrap);
    config.node_token = Some(node_token);
    config.node_name = args.cluster.node_name;
    args.login.apply(&mut config);
    args.jobs.apply(&mut config);
    let store: Arc<dyn poolgate_store::Store> = Arc::new(store);
    let plane = poolgate_control::bind(config, store.clone())
        .await
        .map_err(control_failure)?;
    cluster::serve(plane, store, plan, &pg, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_description_hides_the_password() {
        let cfg: tokio_postgres::Config = "postgres://app:s3cret@db.internal:6543/poolgate"
            .parse()
            .unwrap();
        let d = describe_database(&cfg);
        assert_eq!(d, "host=db.internal port=6543 dbname=poolgate user=app");
        assert!(!d.contains("s3cret"));
        let bad = "postgres://app:s3cret@db:notaport/x".parse::<tokio_postgres::Config>();
        let msg = bad.unwrap_err().to_string();
        assert!(!msg.contains("s3cret"), "{msg}");
    }

    #[test]
    fn cli_defaults_and_env_names() {
        let cli = Cli::try_parse_from(["poolgate", "standalone"]).unwrap();
        let Command::Standalone(a) = cli.command else {
            panic!("standalone expected")
        };
        assert_eq!(a.data_dir, PathBuf::from("./poolgate-data"));
        assert_eq!(a.grpc_listen, "127.0.0.1:50051");
        assert_eq!(a.admin_listen, "127.0.0.1:9091");
        assert_eq!(a.request_log_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(a.gateway_listen, "127.0.0.1:8080");
        assert_eq!(a.gateway_admin_listen, "127.0.0.1:9090");
        assert_eq!(a.gateway.max_body, 16 << 20);
        let cli =
            Cli::try_parse_from(["poolgate", "control", "--request-log-retention", "12h"]).unwrap();
        let Command::Control(a) = cli.command else {
            panic!("control expected")
        };
        assert_eq!(a.grpc_listen, "0.0.0.0:50051");
        assert_eq!(a.request_log_retention, Duration::from_secs(12 * 3600));
        let cli = Cli::try_parse_from(["poolgate", "gateway", "--max-body", "1MiB"]).unwrap();
        let Command::Gateway(g) = cli.command else {
            panic!("gateway expected")
        };
        assert_eq!(g.control_url, "http://127.0.0.1:50051");
        assert_eq!(g.gateway_listen, "0.0.0.0:8080");
        assert_eq!(g.admin_listen, "0.0.0.0:9090");
        assert_eq!(g.tuning.max_body, 1 << 20);
        assert!(g.node_token_file.is_none());
        assert!(Cli::try_parse_from(["poolgate", "gateway", "--max-body", "lots"]).is_err());
        assert!(
            Cli::try_parse_from(["poolgate", "standalone", "--request-log-retention", "soon"])
                .is_err()
        );
    }

    #[test]
    fn admin_token_is_created_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        create_private_dir(&data).unwrap();
        assert_eq!(
            std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let p = data.join("admin.token");
        assert!(ensure_admin_token(&p).unwrap());
        let first = std::fs::read_to_string(&p).unwrap();
        assert!(first.starts_with("pga_"));
        assert!(!ensure_admin_token(&p).unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), first);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        BootstrapToken::from_file(&p).unwrap();

        let n = data.join("node.token");
        assert!(ensure_node_token(&n).unwrap());
        let node = std::fs::read_to_string(&n).unwrap();
        assert!(node.starts_with("pgn_") && node != first);
        assert!(!ensure_node_token(&n).unwrap());
        assert_eq!(
            std::fs::metadata(&n).unwrap().permissions().mode() & 0o777,
            0o600
        );
        NodeToken::from_file(&n).unwrap();
    }
}
