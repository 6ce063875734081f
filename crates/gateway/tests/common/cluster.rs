//! An in-process cluster: one control plane on PostgreSQL, three gateways following it over
//! gRPC, and the mock upstream standing in for the accounts. Needs
//! `POOLGATE_TEST_DATABASE_URL`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use poolgate_control::{ControlConfig, ControlError};
use poolgate_core::page::PageRequest;
use poolgate_core::snapshot::AccountState;
use poolgate_core::{
    AccountSpec, CodexIdentity, Credentials, LogFilter, OAuthTokens, Provider, RequestLog,
    RoutingPolicy, Secret,
};
use poolgate_gateway::{
    Gateway, GatewayConfig, GrpcReportSink, GrpcSnapshotSource, NodeToken, control_channel,
};
use poolgate_store::{Cipher, PgStore, Store};
use poolgate_testkit::mock::MockUpstream;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{KEY, client, platform_key, test_config};

pub const NODE_TOKEN: &str = "pgn_cluster_node_token_for_tests_0123456789";
/// The API keys of the default cluster's three upstream accounts (the mock tells accounts
/// apart by them).
pub const TOKENS: [&str; 3] = ["sk-acct-0", "sk-acct-1", "sk-acct-2"];
/// Bound on every wait for something to propagate.
pub const WAIT: Duration = Duration::from_secs(10);
/// How many gateways a cluster runs.
pub const GATEWAYS: usize = 3;

/// What a cluster starts with.
pub struct ClusterSpec {
    /// One account per entry, in this order: its provider and the token the mock knows it
    /// by (API key, or OAuth access token for Codex accounts).
    pub accounts: Vec<(Provider, String)>,
    /// Stored before the control plane starts; `None` keeps the default.
    pub policy: Option<RoutingPolicy>,
    /// Every gateway's settings (node id and snapshot backoff are set per gateway).
    pub gateway: GatewayConfig,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            accounts: TOKENS
                .iter()
                .map(|t| (Provider::OpenAi, (*t).to_string()))
                .collect(),
            policy: None,
            gateway: test_config(),
        }
    }
}

pub struct Cluster {
    pub store: Arc<dyn Store>,
    pub mock: MockUpstream,
    /// Account ids, in the order of the spec's accounts.
    pub accounts: Vec<String>,
    /// The mock's token of each account, same order.
    pub tokens: Vec<String>,
    pub gateways: Vec<SocketAddr>,
    pub admins: Vec<SocketAddr>,
    pub http: reqwest::Client,
    pub control_stop: Option<oneshot::Sender<()>>,
    pub control: Option<JoinHandle<Result<(), ControlError>>>,
}

/// The refresh token a Codex account of the cluster holds (the gateway never sees it).
pub fn refresh_token_of(access_token: &str) -> String {
    format!("rt-{access_token}")
}

impl Cluster {
    /// Three OpenAI API-key accounts with the default policy.
    pub async fn start() -> Cluster {
        Cluster::start_with(ClusterSpec::default()).await
    }

    pub async fn start_with(spec: ClusterSpec) -> Cluster {
        let url = poolgate_testkit::pg::fresh_database().await.unwrap();
        let store: Arc<dyn Store> = Arc::new(
            PgStore::connect(&url, Cipher::new(&[7u8; 32]))
                .await
                .unwrap(),
        );
        let mock = MockUpstream::start().await.unwrap();
        let mut accounts = Vec::new();
        let mut tokens = Vec::new();
        for (i, (provider, token)) in spec.accounts.iter().enumerate() {
            let mut s = AccountSpec::new(*provider, format!("acct-{i}"));
            let (credentials, identity) = match provider {
                Provider::Codex => {
                    s.base_url = Some(mock.codex_base_url());
                    let creds = Credentials::OAuth(OAuthTokens {
                        id_token: Secret::default(),
                        access_token: Secret::new(token.clone()),
                        refresh_token: Secret::new(refresh_token_of(token)),
                        expires_at_ms: None,
                        last_refresh_ms: None,
                    });
                    let identity = CodexIdentity {
                        subject: format!("user-{i}"),
                        chatgpt_account_id: format!("ws-{i}"),
                        chatgpt_user_id: None,
                        email: None,
                        plan_type: Some("plus".into()),
                    };
                    (creds, Some(identity))
                }
                _ => {
                    s.base_url = Some(mock.openai_base_url());
                    let creds = Credentials::ApiKey {
                        key: Secret::new(token.clone()),
                    };
                    (creds, None)
                }
            };
            let a = store
                .create_account(s.validate().unwrap(), Some(credentials), identity, "test")
                .await
                .unwrap();
            accounts.push(a.id);
            tokens.push(token.clone());
        }
        store
            .create_key(platform_key("key_main", KEY), "test")
            .await
            .unwrap();
        if let Some(p) = &spec.policy {
            store.set_policy(p, "test").await.unwrap();
        }

        let mut cfg = ControlConfig::new("127.0.0.1:0", "127.0.0.1:0");
        cfg.node_token = Some(poolgate_control::NodeToken::from_plaintext(NODE_TOKEN).unwrap());
        cfg.hub.poll_interval = Duration::from_millis(100);
        let cp = poolgate_control::bind(cfg, store.clone()).await.unwrap();
        let grpc = format!("http://{}", cp.grpc_addr());
        let (control_stop, rx) = oneshot::channel::<()>();
        let control = tokio::spawn(cp.run(async move {
            let _ = rx.await;
        }));

        let (mut gateways, mut admins) = (Vec::new(), Vec::new());
        for i in 0..GATEWAYS {
            let node = format!("gw-{i}");
            let channel = control_channel(&grpc).unwrap();
            let token = NodeToken::Value(NODE_TOKEN.into());
            let source = Arc::new(GrpcSnapshotSource::new(
                channel.clone(),
                node.clone(),
                token.clone(),
            ));
            let sink = Arc::new(GrpcReportSink::new(channel, token));
            let mut gcfg = spec.gateway.clone();
            gcfg.node_id = node;
            gcfg.snapshot_backoff_max = Duration::from_millis(500);
            let gw = Gateway::bind(gcfg, source, sink).await.unwrap();
            gateways.push(gw.local_addr());
            admins.push(gw.admin_addr());
            // Runs until the test's runtime ends.
            tokio::spawn(gw.run(std::future::pending()));
        }
        let c = Cluster {
            store,
            mock,
            accounts,
            tokens,
            gateways,
            admins,
            http: client(),
            control_stop: Some(control_stop),
            control: Some(control),
        };
        for admin in c.admins.clone() {
            let http = c.http.clone();
            let ready = eventually(|| {
                let http = http.clone();
                async move {
                    http.get(format!("http://{admin}/readyz"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200)
                }
            })
            .await;
            assert!(ready, "gateway {admin} never loaded a snapshot");
        }
        c
    }

    /// A POST with the main key and a JSON body through gateway `gw`.
    pub fn post(&self, gw: usize, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("http://{}{path}", self.gateways[gw]))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    /// A non-streaming chat completion through gateway `gw`.
    pub async fn chat(&self, gw: usize, key: &str, session: Option<&str>) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("http://{}/v1/chat/completions", self.gateways[gw]))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(
                json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]})
                    .to_string(),
            );
        if let Some(s) = session {
            req = req.header("session_id", s);
        }
        req.send().await.unwrap()
    }

    /// The token of the last request the mock received.
    pub fn last_token(&self) -> String {
        self.mock
            .requests()
            .last()
            .and_then(|r| r.token.clone())
            .expect("a recorded request")
    }

    /// Requests the mock received per account, in account order.
    pub fn counts(&self) -> Vec<u64> {
        self.tokens
            .iter()
            .map(|t| self.mock.request_count(t))
            .collect()
    }

    /// A session id that gateway 0 routes to account `target` (rendezvous affinity makes
    /// this a property of the id, not of the request).
    pub async fn session_on(&self, target: usize) -> String {
        for i in 0..64 {
            let s = format!("probe-{target}-{i}");
            let r = self.chat(0, KEY, Some(&s)).await;
            assert_eq!(r.status(), 200);
            if self.last_token() == self.tokens[target] {
                return s;
            }
        }
        panic!("no session id lands on account {target}");
    }

    /// The admin `/metrics` text of gateway `gw`.
    pub async fn metrics(&self, gw: usize) -> String {
        self.http
            .get(format!("http://{}/metrics", self.admins[gw]))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The version each gateway reports having applied.
    pub async fn applied_version(&self, gw: usize) -> i64 {
        self.metrics(gw)
            .await
            .lines()
            .find_map(|l| l.strip_prefix("poolgate_gateway_snapshot_version "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(-1, |v| v as i64)
    }

    /// Waits until every gateway applied the store's current version.
    pub async fn wait_all_applied(&self) {
        let v = self.store.current_version().await.unwrap();
        for gw in 0..GATEWAYS {
            let reached = eventually(|| async move { self.applied_version(gw).await >= v }).await;
            assert!(reached, "gateway {gw} never applied version {v}");
        }
    }

    /// The store's shared state of account `i`.
    pub async fn account_state(&self, i: usize) -> AccountState {
        self.store
            .load_account_states(std::slice::from_ref(&self.accounts[i]))
            .await
            .unwrap()
            .pop()
            .expect("the account exists")
    }

    /// Polls the store until `check` holds for account `i`'s shared state.
    pub async fn wait_account(&self, i: usize, check: impl Fn(&AccountState) -> bool) -> bool {
        let check = &check;
        eventually(|| async move { check(&self.account_state(i).await) }).await
    }

    /// Waits for the request log with this id to reach the store (through a gateway's
    /// report and the control plane's ingest).
    pub async fn log(&self, request_id: &str) -> RequestLog {
        let filter = LogFilter::default();
        let mut found = None;
        for _ in 0..(WAIT.as_millis() / 50) {
            let page = self
                .store
                .query_request_logs(&filter, &PageRequest::first(500))
                .await
                .unwrap();
            if let Some(l) = page.items.into_iter().find(|l| l.id == request_id) {
                found = Some(l);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        found.unwrap_or_else(|| panic!("request log {request_id} never reached the store"))
    }
}

/// Polls `check` every 50 ms for up to [`WAIT`].
pub async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..(WAIT.as_millis() / 50) {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
