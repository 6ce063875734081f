//! The poolgate control plane: the gRPC admin API (with health checking and server
//! reflection), the snapshot stream and report intake for gateways, the admin HTTP server
//! (`/healthz`, `/readyz`, `/metrics`) and background jobs (retention), all over one [`Store`].
//!
//! [`bind`] opens both listeners (port 0 picks a free port) and [`ControlPlane::run`] serves
//! until the shutdown future resolves; [`serve`] does both. In-process gateways (standalone)
//! use [`ControlPlane::hub`] and [`ControlPlane::ingest`] instead of gRPC.

pub mod auth;
pub mod convert;
pub mod error;
pub mod gateway_api;
mod http;
pub mod hub;
pub mod import;
pub mod ingest;
pub mod leader;
pub mod login;
pub mod metrics;
pub mod refresh;
pub mod retention;
pub mod service;
pub mod usage_poll;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use poolgate_proto::v1::admin_service_server::AdminServiceServer;
use poolgate_proto::v1::login_service_server::LoginServiceServer;
use poolgate_proto::v1::report_service_server::ReportServiceServer;
use poolgate_proto::v1::snapshot_service_server::SnapshotServiceServer;
use poolgate_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

pub use auth::{BOOTSTRAP_ACTOR, BootstrapToken, NODE_TOKEN_PREFIX, NodeToken, generate_secret};
pub use error::ControlError;
pub use gateway_api::GatewayApi;
pub use hub::{DeltaStream, HubConfig, HubError, SnapshotHub};
pub use ingest::{IngestError, MAX_REPORT_LOGS, MAX_REPORT_OBSERVATIONS, ReportIngest};
pub use leader::{LeaderFlag, Leadership, run_while_leading};
pub use login::{LoginApi, LoginConfig};
pub use metrics::Metrics;
pub use refresh::{RefreshJobConfig, Refresher};
pub use service::AdminApi;
pub use usage_poll::{UsagePollConfig, UsagePoller};

pub const DEFAULT_REQUEST_LOG_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(3600);
/// Change-log rows younger than this are kept, so gateways reconnecting within a day resume
/// with a delta instead of a full snapshot.
pub const DEFAULT_CHANGE_LOG_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Change-log rows always kept, whatever their age.
pub const DEFAULT_CHANGE_LOG_KEEP: u64 = 10_000;
/// How long in-flight calls may take to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What the control plane needs besides its store.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// `host:port` of the gRPC listener.
    pub grpc_listen: String,
    /// `host:port` of the admin HTTP listener.
    pub admin_listen: String,
    /// Request logs older than this are deleted.
    pub request_log_retention: Duration,
    /// How often the retention job runs (it also runs at start).
    pub retention_interval: Duration,
    /// The bootstrap admin token (from `POOLGATE_ADMIN_TOKEN_FILE` or the data directory).
    pub bootstrap_token: Option<BootstrapToken>,
    /// The token gateways present (from `POOLGATE_NODE_TOKEN_FILE` or the data directory).
    /// Without one, the snapshot and report services refuse every call.
    pub node_token: Option<NodeToken>,
    /// This replica's name, shown per gateway by `poolctl get gateways`. Default: `HOSTNAME`
    /// (the pod name in Kubernetes), else `control@<gRPC address>`.
    pub node_name: Option<String>,
    /// Change-log rows older than this are deleted (at least `change_log_keep` stay).
    pub change_log_retention: Duration,
    pub change_log_keep: u64,
    /// Tuning of the snapshot stream.
    pub hub: HubConfig,
    /// Whether this replica leads: background jobs (retention) run only while it does and
    /// stop the moment it does not. Default: always (standalone, a single replica).
    pub leadership: Leadership,
    /// The OAuth issuer and client id (`POOLGATE_OAUTH_ISSUER`, `POOLGATE_OAUTH_CLIENT_ID`).
    pub oauth: poolgate_upstream::oauth::OAuthConfig,
    /// `poolctl login` sessions: redirect URI (`POOLGATE_OAUTH_REDIRECT_URI`), TTL, bound.
    pub login: LoginConfig,
    /// Leader-only OAuth token refresh against `oauth.issuer`; `None` runs none (the library
    /// default, so tests never reach a real issuer; `poolgate` always sets it).
    pub token_refresh: Option<RefreshJobConfig>,
    /// Leader-only usage polling of `usage_base_url`; `None` runs none.
    pub usage_poll: Option<UsagePollConfig>,
    /// `POOLGATE_USAGE_BASE_URL`; `/wham/usage` is appended.
    pub usage_base_url: String,
}

impl ControlConfig {
    pub fn new(grpc_listen: impl Into<String>, admin_listen: impl Into<String>) -> Self {
        ControlConfig {
            grpc_listen: grpc_listen.into(),
            admin_listen: admin_listen.into(),
            request_log_retention: DEFAULT_REQUEST_LOG_RETENTION,
            retention_interval: DEFAULT_RETENTION_INTERVAL,
            bootstrap_token: None,
            node_token: None,
            node_name: None,
            change_log_retention: DEFAULT_CHANGE_LOG_RETENTION,
            change_log_keep: DEFAULT_CHANGE_LOG_KEEP,
            hub: HubConfig::default(),
            leadership: Leadership::always(),
            oauth: poolgate_upstream::oauth::OAuthConfig::default(),
            login: LoginConfig::default(),
            token_refresh: None,
            usage_poll: None,
            usage_base_url: poolgate_upstream::usage::DEFAULT_USAGE_BASE_URL.into(),
        }
    }

    fn validate(&self) -> Result<(), ControlError> {
        if self.request_log_retention < Duration::from_secs(60) {
            return Err(ControlError::Config(
                "the request-log retention must be at least 1 minute".into(),
            ));
        }
        if self.retention_interval < Duration::from_secs(1) {
            return Err(ControlError::Config(
                "the retention interval must be at least 1s".into(),
            ));
        }
        if let (Some(n), Some(b)) = (&self.node_token, &self.bootstrap_token)
            && n.same_as(b)
        {
            return Err(ControlError::Config(
                "the node token and the admin token must differ: gateways hold the node token"
                    .into(),
            ));
        }
        if self.change_log_keep == 0 {
            return Err(ControlError::Config(
                "at least one change-log row must be kept".into(),
            ));
        }
        if self.hub.poll_interval < Duration::from_millis(10) || self.hub.buffer == 0 {
            return Err(ControlError::Config(
                "the snapshot poll interval must be at least 10ms and its buffer non-empty".into(),
            ));
        }
        self.oauth
            .validate()
            .map_err(|e| ControlError::Config(e.to_string()))?;
        poolgate_upstream::oauth::check_redirect_uri(&self.login.redirect_uri)
            .map_err(|e| ControlError::Config(e.to_string()))?;
        if self.login.session_ttl < Duration::from_secs(1) || self.login.max_sessions == 0 {
            return Err(ControlError::Config(
                "login sessions need a TTL of at least 1s and room for at least one".into(),
            ));
        }
        if let Some(r) = &self.token_refresh
            && (r.lead < Duration::from_secs(1) || r.interval < Duration::from_millis(10))
        {
            return Err(ControlError::Config(
                "the token refresh lead must be at least 1s and its interval at least 10ms".into(),
            ));
        }
        if let Some(u) = &self.usage_poll
            && u.interval < Duration::from_millis(10)
        {
            return Err(ControlError::Config(
                "the usage poll interval must be at least 10ms".into(),
            ));
        }
        if self.usage_poll.is_some() {
            poolgate_upstream::oauth::check_base_url("the usage base URL", &self.usage_base_url)
                .map_err(|e| ControlError::Config(e.to_string()))?;
        }
        if let Some(name) = &self.node_name {
            ingest::check_node_id(name)
                .map_err(|_| ControlError::Config(format!("invalid node name {name:?}")))?;
        }
        Ok(())
    }
}

/// A control plane whose listeners are bound but not yet serving.
pub struct ControlPlane {
    config: ControlConfig,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    hub: SnapshotHub,
    ingest: ReportIngest,
    node_name: String,
    grpc: TcpListener,
    admin: TcpListener,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .field("store", &self.store.backend())
            .finish_non_exhaustive()
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn listen(what: &'static str, addr: &str) -> Result<(TcpListener, SocketAddr), ControlError> {
    let err = |source| ControlError::Bind {
        what,
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    Ok((listener, local))
}

/// Binds the gRPC and admin listeners.
pub async fn bind(
    config: ControlConfig,
    store: Arc<dyn Store>,
) -> Result<ControlPlane, ControlError> {
    config.validate()?;
    let (grpc, grpc_addr) = listen("gRPC", &config.grpc_listen).await?;
    let (admin, admin_addr) = listen("admin HTTP", &config.admin_listen).await?;
    let node_name = config
        .node_name
        .clone()
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| ingest::check_node_id(h).is_ok())
        })
        .unwrap_or_else(|| format!("control@{grpc_addr}"));
    let metrics = Arc::new(Metrics::new());
    let hub = SnapshotHub::new(store.clone(), metrics.clone(), config.hub.clone());
    let ingest = ReportIngest::new(store.clone(), metrics.clone(), hub.clone(), &node_name);
    Ok(ControlPlane {
        config,
        store,
        metrics,
        hub,
        ingest,
        node_name,
        grpc,
        admin,
        grpc_addr,
        admin_addr,
    })
}

/// Binds and serves until `shutdown` resolves.
pub async fn serve(
    config: ControlConfig,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ControlError> {
    bind(config, store).await?.run(shutdown).await
}

impl ControlPlane {
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The snapshot hub, for gateways in the same process. It serves once [`run`] started.
    ///
    /// [`run`]: ControlPlane::run
    pub fn hub(&self) -> SnapshotHub {
        self.hub.clone()
    }

    /// Report intake, for gateways in the same process.
    pub fn ingest(&self) -> ReportIngest {
        self.ingest.clone()
    }

    /// This replica's name, as recorded for the gateways it serves.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Whether this replica leads (runs the background jobs).
    pub fn leadership(&self) -> Leadership {
        self.config.leadership.clone()
    }

    /// Replaces the leadership set in the config: for an elector that needs this replica's
    /// name (known once bound) as its identity.
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.config.leadership = leadership;
        self
    }

    /// Serves gRPC, admin HTTP and (while leading) the retention job until `shutdown`
    /// resolves, then stops the jobs, stops accepting, lets in-flight calls finish (up to
    /// 10 s) and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ControlError> {
        let ControlPlane {
            config,
            store,
            metrics,
            hub,
            ingest,
            node_name,
            grpc,
            admin,
            grpc_addr,
            admin_addr,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<AdminServiceServer<AdminApi>>().await;
        health
            .set_serving::<SnapshotServiceServer<GatewayApi>>()
            .await;
        health
            .set_serving::<ReportServiceServer<GatewayApi>>()
            .await;
        health.set_serving::<LoginServiceServer<LoginApi>>().await;
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(poolgate_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        // grpcurl before 1.8.8 speaks only v1alpha.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(poolgate_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let api = AdminApi::new(
            store.clone(),
            config.bootstrap_token.clone(),
            config.node_token.clone(),
            metrics.clone(),
        );
        let oauth = poolgate_upstream::oauth::OAuthClient::new(config.oauth.clone())
            .map_err(|e| ControlError::Config(e.to_string()))?;
        let login = LoginApi::new(
            store.clone(),
            config.bootstrap_token.clone(),
            config.node_token.clone(),
            metrics.clone(),
            oauth,
            config.login.clone(),
        );
        let gateways = GatewayApi::new(
            hub.clone(),
            ingest,
            store.clone(),
            metrics.clone(),
            config.node_token.clone(),
            node_name.clone(),
        );
        let hub_task = tokio::spawn(hub.run(stop_rx.clone()));

        let incoming = TcpIncoming::from(grpc).with_nodelay(Some(true));
        let mut grpc_stop = stop_rx.clone();
        let grpc_server = Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(api.into_server())
            .add_service(login.into_server())
            .add_service(gateways.clone().snapshot_server())
            .add_service(gateways.report_server())
            .serve_with_incoming_shutdown(incoming, async move {
                stopped(&mut grpc_stop).await;
            });

        let admin_state = http::AdminState {
            store: store.clone(),
            metrics: metrics.clone(),
        };
        let admin_server = tokio::spawn(http::serve(admin, admin_state, stop_rx.clone()));
        let leader_gauge = tokio::spawn(leader::track(
            config.leadership.clone(),
            metrics.clone(),
            node_name.clone(),
        ));
        let retention = {
            let (store, metrics, stop_rx) = (store.clone(), metrics.clone(), stop_rx.clone());
            let kept = retention::Retention {
                request_logs: config.request_log_retention,
                change_log: config.change_log_retention,
                change_log_keep: config.change_log_keep,
            };
            let every = config.retention_interval;
            tokio::spawn(run_while_leading(
                config.leadership.clone(),
                "retention",
                move || {
                    retention::run(
                        store.clone(),
                        metrics.clone(),
                        kept.clone(),
                        every,
                        stop_rx.clone(),
                    )
                },
            ))
        };
        let mut jobs = Vec::new();
        if let Some(cfg) = config.token_refresh.clone() {
            let client = poolgate_upstream::refresh::TokenRefresher::new(
                poolgate_upstream::refresh::RefreshConfig {
                    issuer: config.oauth.issuer.clone(),
                    client_id: config.oauth.client_id.clone(),
                    ..Default::default()
                },
            )
            .map_err(|e| ControlError::Config(e.to_string()))?;
            tracing::info!(
                issuer = %config.oauth.issuer,
                lead = %humantime::format_duration(cfg.lead),
                "OAuth token refresh runs while this replica leads"
            );
            let refresher = Arc::new(Refresher::new(store.clone(), client, metrics.clone(), cfg));
            let stop_rx = stop_rx.clone();
            jobs.push(tokio::spawn(run_while_leading(
                config.leadership.clone(),
                "token_refresh",
                move || refresh::run(refresher.clone(), stop_rx.clone()),
            )));
        }
        if let Some(cfg) = config.usage_poll.clone() {
            let client = poolgate_upstream::usage::UsageClient::new(&config.usage_base_url)
                .map_err(|e| ControlError::Config(e.to_string()))?;
            tracing::info!(
                url = %client.url(),
                interval = %humantime::format_duration(cfg.interval),
                "usage polling runs while this replica leads"
            );
            let poller = Arc::new(UsagePoller::new(
                store.clone(),
                client,
                metrics.clone(),
                cfg,
            ));
            let stop_rx = stop_rx.clone();
            jobs.push(tokio::spawn(run_while_leading(
                config.leadership.clone(),
                "usage_poll",
                move || usage_poll::run(poller.clone(), stop_rx.clone()),
            )));
        }

        tracing::info!(grpc_listen = %grpc_addr, "control plane gRPC listening");
        tracing::info!(admin_listen = %admin_addr, "admin HTTP listening");
        tracing::info!(
            store = store.backend(),
            node = %node_name,
            request_log_retention = %humantime::format_duration(config.request_log_retention),
            gateways_enabled = config.node_token.is_some(),
            "control plane started"
        );

        let mut grpc_task = tokio::spawn(grpc_server);
        tokio::pin!(shutdown);
        // Serve until asked to stop, or until the gRPC server fails on its own.
        let early = tokio::select! {
            r = &mut grpc_task => Some(r),
            _ = &mut shutdown => None,
        };
        tracing::info!("shutting down the control plane");
        health
            .set_not_serving::<AdminServiceServer<AdminApi>>()
            .await;
        health
            .set_not_serving::<SnapshotServiceServer<GatewayApi>>()
            .await;
        health
            .set_not_serving::<ReportServiceServer<GatewayApi>>()
            .await;
        health
            .set_not_serving::<LoginServiceServer<LoginApi>>()
            .await;
        // Stops the hub too, which ends every snapshot stream so the server can drain.
        let _ = stop_tx.send(true);
        // Jobs stop now, not after the drain: aborting the supervisor aborts its job.
        retention.abort();
        for job in &jobs {
            job.abort();
        }
        leader_gauge.abort();
        let result = match early {
            Some(r) => r,
            None => match tokio::time::timeout(SHUTDOWN_GRACE, &mut grpc_task).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("gRPC calls still running after 10s; closing them");
                    grpc_task.abort();
                    Ok(Ok(()))
                }
            },
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, admin_server)
            .await
            .is_err()
        {
            tracing::warn!("admin HTTP connections still open after 10s; closing them");
        }
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, hub_task).await;
        match result {
            Ok(r) => r.map_err(ControlError::from),
            Err(join) => Err(ControlError::Task(join.to_string())),
        }
    }
}
