//! A gateway on real sockets in front of the mock upstream, fed by an in-memory snapshot
//! source, reporting to an in-memory sink.

#![allow(dead_code)]

pub mod cluster;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use poolgate_core::key::hash_secret;
use poolgate_core::snapshot::{AccountState, Delta};
use poolgate_core::{
    Account, AccountSpec, AccountStatus, CodexIdentity, Credentials, KeySpec, KeyStatus, ManagedBy,
    OAuthTokens, PlatformKey, Provider, RoutingPolicy, Secret,
};
use poolgate_gateway::{Gateway, GatewayConfig, MemoryReportSink, MemorySnapshotSource};
use poolgate_testkit::mock::MockUpstream;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const KEY: &str = "pgk_test_key_plaintext_0000000000000000000000";

pub fn codex_account(id: &str, token: &str, base: &str, priority: i32) -> AccountState {
    let mut spec = AccountSpec::new(Provider::Codex, id);
    spec.base_url = Some(base.to_string());
    spec.priority = priority;
    AccountState {
        account: Account {
            id: id.into(),
            spec,
            status: AccountStatus::Active,
            status_reason: None,
            identity: Some(CodexIdentity {
                subject: format!("user-{id}"),
                chatgpt_account_id: format!("ws-{id}"),
                chatgpt_user_id: None,
                email: None,
                plan_type: Some("plus".into()),
            }),
            managed_by: ManagedBy::Api,
            managed_ref: None,
            has_credentials: true,
            created_at_ms: 0,
            updated_at_ms: 0,
        },
        credentials: Some(Credentials::OAuth(OAuthTokens {
            id_token: Secret::default(),
            access_token: Secret::new(token),
            refresh_token: Secret::default(),
            expires_at_ms: None,
            last_refresh_ms: None,
        })),
        usage: None,
        cooldown_until_ms: None,
    }
}

pub fn openai_account(id: &str, key: &str, base: &str, priority: i32) -> AccountState {
    let mut a = codex_account(id, "", base, priority);
    a.account.spec.provider = Provider::OpenAi;
    a.account.identity = None;
    a.credentials = Some(Credentials::ApiKey {
        key: Secret::new(key),
    });
    a
}

/// An Azure OpenAI account: one deployment of the endpoint, the key in `api-key`.
pub fn azure_account(
    id: &str,
    key: &str,
    endpoint: &str,
    deployment: &str,
    priority: i32,
) -> AccountState {
    let mut a = openai_account(id, key, endpoint, priority);
    a.account.spec.provider = Provider::AzureOpenAi;
    a.account.spec.azure = Some(poolgate_core::AzureConfig {
        deployment: deployment.into(),
        api_version: "2025-04-01-preview".into(),
    });
    a
}

/// An Anthropic API-key account.
pub fn anthropic_account(id: &str, key: &str, base: &str, priority: i32) -> AccountState {
    let mut a = openai_account(id, key, base, priority);
    a.account.spec.provider = Provider::Anthropic;
    a
}

pub fn platform_key(id: &str, plaintext: &str) -> PlatformKey {
    PlatformKey {
        id: id.into(),
        spec: KeySpec {
            name: id.into(),
            ..Default::default()
        },
        prefix: plaintext.chars().take(12).collect(),
        hash: hash_secret(plaintext),
        status: KeyStatus::Active,
        managed_by: ManagedBy::Api,
        managed_ref: None,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

pub fn full(version: i64, accounts: Vec<AccountState>, keys: Vec<PlatformKey>) -> Delta {
    Delta {
        version,
        full: true,
        upsert_accounts: accounts,
        upsert_keys: keys,
        policy: Some(RoutingPolicy::default()),
        ..Default::default()
    }
}

pub struct Harness {
    pub mock: MockUpstream,
    pub source: Arc<MemorySnapshotSource>,
    pub sink: Arc<MemoryReportSink>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

pub fn test_config() -> GatewayConfig {
    let mut cfg = GatewayConfig {
        listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        node_id: "gw-test".into(),
        // Two serving threads whatever the machine: connections are spread over both.
        workers: 2,
        ..GatewayConfig::default()
    };
    cfg.report.interval = Duration::from_millis(50);
    cfg
}

pub fn client() -> reqwest::Client {
    poolgate_upstream::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

impl Harness {
    /// A gateway without any snapshot yet.
    pub async fn empty(cfg: GatewayConfig) -> Harness {
        let mock = MockUpstream::start().await.expect("mock");
        let source = Arc::new(MemorySnapshotSource::new());
        let sink = Arc::new(MemoryReportSink::new());
        let gw = Gateway::bind(cfg, source.clone(), sink.clone())
            .await
            .expect("bind");
        let (addr, admin) = (gw.local_addr(), gw.admin_addr());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(gw.run(async move {
            let _ = rx.await;
        }));
        Harness {
            mock,
            source,
            sink,
            addr,
            admin,
            http: client(),
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// A gateway whose first snapshot is `delta` (built with the mock's URLs), applied.
    pub async fn start(cfg: GatewayConfig, delta: impl FnOnce(&MockUpstream) -> Delta) -> Harness {
        let h = Harness::empty(cfg).await;
        let d = delta(&h.mock);
        let v = d.version;
        h.source.push(d);
        h.wait_version(v).await;
        h
    }

    pub async fn wait_version(&self, v: i64) {
        let needle = format!("poolgate_gateway_snapshot_version {v}");
        for _ in 0..200 {
            if self.metrics().await.contains(&needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("snapshot version {v} never applied");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    pub fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    /// Waits for the request log with this id to reach the sink.
    pub async fn log(&self, request_id: &str) -> poolgate_core::RequestLog {
        let id = request_id.to_string();
        let found = self
            .sink
            .wait_for(Duration::from_secs(5), |b| {
                b.iter().flat_map(|b| &b.logs).any(|l| l.id == id)
            })
            .await;
        assert!(found, "request log {request_id} never reported");
        self.sink
            .logs()
            .into_iter()
            .find(|l| l.id == request_id)
            .expect("log")
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

pub fn request_id(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_string()
}

/// Reads an SSE body to its end.
pub async fn text_of(r: reqwest::Response) -> String {
    r.text().await.expect("body")
}

/// `data:` payloads of an SSE body, parsed (non-JSON ones, like `[DONE]`, as strings).
pub fn sse_data(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .flat_map(|frame| frame.lines())
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or(Value::String(d.to_string())))
        .collect()
}

/// `(event name, data)` of every frame of an SSE body.
pub fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|frame| {
            let mut name = None;
            let mut data = None;
            for l in frame.lines() {
                if let Some(n) = l.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = l.strip_prefix("data: ") {
                    data = serde_json::from_str(d).ok();
                }
            }
            Some((name?, data?))
        })
        .collect()
}
