#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! An in-process cluster: one control plane on PostgreSQL, three gateways following it over
//! gRPC, and the mock upstream with three OpenAI API-key accounts. Needs
//! `POOLGATE_TEST_DATABASE_URL`.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{KEY, client, platform_key, sse_data, test_config};
use poolgate_control::{ControlConfig, ControlError};
use poolgate_core::{AccountSpec, Credentials, KeyPatch, KeyStatus, Provider, Secret};
use poolgate_gateway::{Gateway, GrpcReportSink, GrpcSnapshotSource, NodeToken, control_channel};
use poolgate_store::{Cipher, PgStore, Store};
use poolgate_testkit::mock::{Fault, MockUpstream};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const NODE_TOKEN: &str = "pgn_cluster_node_token_for_tests_0123456789";
/// The API keys of the three upstream accounts (the mock tells accounts apart by them).
const TOKENS: [&str; 3] = ["sk-acct-0", "sk-acct-1", "sk-acct-2"];
/// Bound on every wait for something to propagate.
const WAIT: Duration = Duration::from_secs(10);

struct Cluster {
    store: Arc<dyn Store>,
    mock: MockUpstream,
    /// Account ids, in the order of `TOKENS`.
    accounts: Vec<String>,
    gateways: Vec<SocketAddr>,
    admins: Vec<SocketAddr>,
    http: reqwest::Client,
    control_stop: Option<oneshot::Sender<()>>,
    control: Option<JoinHandle<Result<(), ControlError>>>,
}

impl Cluster {
    async fn start() -> Cluster {
        let url = poolgate_testkit::pg::fresh_database().await.unwrap();
        let store: Arc<dyn Store> = Arc::new(
            PgStore::connect(&url, Cipher::new(&[7u8; 32]))
                .await
                .unwrap(),
        );
        let mock = MockUpstream::start().await.unwrap();
        let mut accounts = Vec::new();
        for (i, token) in TOKENS.iter().enumerate() {
            let mut spec = AccountSpec::new(Provider::OpenAi, format!("acct-{i}"));
            spec.base_url = Some(mock.openai_base_url());
            let a = store
                .create_account(
                    spec.validate().unwrap(),
                    Some(Credentials::ApiKey {
                        key: Secret::new(*token),
                    }),
                    None,
                    "test",
                )
                .await
                .unwrap();
            accounts.push(a.id);
        }
        store
            .create_key(platform_key("key_main", KEY), "test")
            .await
            .unwrap();

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
        for i in 0..3 {
            let node = format!("gw-{i}");
            let channel = control_channel(&grpc).unwrap();
            let token = NodeToken::Value(NODE_TOKEN.into());
            let source = Arc::new(GrpcSnapshotSource::new(
                channel.clone(),
                node.clone(),
                token.clone(),
            ));
            let sink = Arc::new(GrpcReportSink::new(channel, token));
            let mut gcfg = test_config();
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

    /// A non-streaming chat completion through gateway `gw`.
    async fn chat(&self, gw: usize, key: &str, session: Option<&str>) -> reqwest::Response {
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
    fn last_token(&self) -> String {
        self.mock
            .requests()
            .last()
            .and_then(|r| r.token.clone())
            .expect("a recorded request")
    }

    fn counts(&self) -> [u64; 3] {
        TOKENS.map(|t| self.mock.request_count(t))
    }

    /// A session id that gateway 0 routes to account `target` (rendezvous affinity makes
    /// this a property of the id, not of the request).
    async fn session_on(&self, target: usize) -> String {
        for i in 0..64 {
            let s = format!("probe-{target}-{i}");
            let r = self.chat(0, KEY, Some(&s)).await;
            assert_eq!(r.status(), 200);
            if self.last_token() == TOKENS[target] {
                return s;
            }
        }
        panic!("no session id lands on account {target}");
    }

    /// The version each gateway reports having applied.
    async fn applied_version(&self, gw: usize) -> i64 {
        let text = self
            .http
            .get(format!("http://{}/metrics", self.admins[gw]))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("poolgate_gateway_snapshot_version "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(-1, |v| v as i64)
    }

    /// Waits until every gateway applied the store's current version.
    async fn wait_all_applied(&self) {
        let v = self.store.current_version().await.unwrap();
        for gw in 0..3 {
            let mut reached = false;
            for _ in 0..(WAIT.as_millis() / 50) {
                if self.applied_version(gw).await >= v {
                    reached = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(reached, "gateway {gw} never applied version {v}");
        }
    }
}

/// Polls `check` every 50 ms for up to [`WAIT`].
async fn eventually<F, Fut>(mut check: F) -> bool
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

/// Polls until the key answers `status` on every gateway.
async fn key_status_everywhere(c: &Cluster, key: &str, status: u16) {
    for gw in 0..3 {
        let ok = eventually(|| async move {
            c.http
                .get(format!("http://{}/v1/models", c.gateways[gw]))
                .bearer_auth(key)
                .send()
                .await
                .is_ok_and(|r| r.status() == status)
        })
        .await;
        assert!(ok, "key never answered {status} on gateway {gw}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_change_reaches_every_gateway() {
    let c = Cluster::start().await;
    const NEW: &str = "pgk_cluster_new_key_plaintext_000000000000000";
    key_status_everywhere(&c, NEW, 401).await;

    let key = c
        .store
        .create_key(platform_key("key_new", NEW), "test")
        .await
        .unwrap();
    key_status_everywhere(&c, NEW, 200).await;
    for gw in 0..3 {
        assert_eq!(c.chat(gw, NEW, None).await.status(), 200);
    }

    let patch = KeyPatch {
        status: Some(KeyStatus::Disabled),
        ..KeyPatch::default()
    };
    c.store.update_key(&key.id, &patch, "test").await.unwrap();
    // 403 `api_key_disabled`: the gateways know the key, as disabled.
    key_status_everywhere(&c, NEW, 403).await;
    for gw in 0..3 {
        assert_eq!(c.chat(gw, NEW, None).await.status(), 403);
    }
    // The other key is untouched.
    key_status_everywhere(&c, KEY, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_one_gateway_cools_the_account_on_all() {
    let c = Cluster::start().await;
    let session = c.session_on(0).await;
    c.mock.set_fault(
        TOKENS[0],
        Fault::RateLimited {
            retry_after_secs: 600,
        },
    );
    let before = c.counts();
    let r = c.chat(0, KEY, Some(&session)).await;
    assert_eq!(r.status(), 200, "gateway 0 fails over after the 429");
    let after = c.counts();
    assert_eq!(after[0], before[0] + 1, "the 429 came from account 0");
    assert_eq!(
        after[1] + after[2],
        before[1] + before[2] + 1,
        "one other account answered"
    );

    // The observation reaches the store, then every gateway's snapshot.
    let id = c.accounts[0].clone();
    let cooled = eventually(|| {
        let id = id.clone();
        let store = c.store.clone();
        async move {
            store
                .load_account_states(&[id])
                .await
                .unwrap()
                .first()
                .is_some_and(|s| s.cooldown_until_ms.is_some())
        }
    })
    .await;
    assert!(cooled, "the 429 never cooled the account in the store");
    c.wait_all_applied().await;

    let cooled_count = c.mock.request_count(TOKENS[0]);
    for gw in [1, 2] {
        // Even the conversation anchored on account 0 goes elsewhere.
        for i in 0..10 {
            let r = c.chat(gw, KEY, Some(&session)).await;
            assert_eq!(r.status(), 200, "gateway {gw} request {i}");
            assert_ne!(c.last_token(), TOKENS[0]);
            let r = c.chat(gw, KEY, None).await;
            assert_eq!(r.status(), 200, "gateway {gw} request {i}");
        }
    }
    assert_eq!(
        c.mock.request_count(TOKENS[0]),
        cooled_count,
        "gateways 1 and 2 still sent requests to the cooled account"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_agree_on_affinity() {
    let c = Cluster::start().await;
    let mut used = std::collections::BTreeSet::new();
    for i in 0..12 {
        let session = format!("conv-{i}");
        let mut picked = Vec::new();
        for gw in 0..3 {
            // Twice per gateway: the pick does not drift either.
            for _ in 0..2 {
                let r = c.chat(gw, KEY, Some(&session)).await;
                assert_eq!(r.status(), 200);
                picked.push(c.last_token());
            }
        }
        assert!(
            picked.iter().all(|t| *t == picked[0]),
            "session {session} landed on {picked:?}"
        );
        used.insert(picked[0].clone());
    }
    // Affinity spreads conversations rather than pinning everything on one account
    // (all 12 on one of 3 accounts by chance: about 1 in 177,000).
    assert!(used.len() > 1, "every session on {used:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_before_the_first_byte_and_a_clean_error_after_it() {
    let c = Cluster::start().await;
    let s0 = c.session_on(0).await;
    let s1 = c.session_on(1).await;

    // A 5xx before any byte reached the client: another account answers.
    c.mock
        .set_fault(TOKENS[0], Fault::ServerError { status: 502 }.times(1));
    let before = c.counts();
    let r = c.chat(1, KEY, Some(&s0)).await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|t| t.starts_with("echo:")),
        "{body}"
    );
    let after = c.counts();
    assert_eq!(after[0], before[0] + 1);
    assert_eq!(after[1] + after[2], before[1] + before[2] + 1);

    // The connection drops after content was relayed: the stream ends with an error event
    // and no other account is tried.
    c.mock
        .set_fault(TOKENS[1], Fault::DropConnection { after_events: 3 });
    let before = c.counts();
    let r = c
        .http
        .post(format!("http://{}/v1/chat/completions", c.gateways[2]))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .header("session_id", &s1)
        .body(
            json!({"model": "gpt-4o", "stream": true,
                   "messages": [{"role": "user", "content": "hello"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let events = sse_data(&text);
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!content.is_empty(), "no content before the drop: {text}");
    let last = events.last().expect("events");
    assert!(
        last.get("error").is_some(),
        "no error event at the end: {text}"
    );
    assert!(
        !events.iter().any(|e| e == "[DONE]"),
        "a broken stream must not look complete: {text}"
    );
    let after = c.counts();
    assert_eq!(after[1], before[1] + 1);
    assert_eq!(
        (after[0], after[2]),
        (before[0], before[2]),
        "no second account after the first byte"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_keep_serving_without_the_control_plane() {
    let mut c = Cluster::start().await;
    c.wait_all_applied().await;
    let _ = c.control_stop.take().unwrap().send(());
    let result = tokio::time::timeout(Duration::from_secs(30), c.control.take().unwrap())
        .await
        .expect("the control plane stops")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");

    for round in 0..3 {
        for gw in 0..3 {
            let r = c.chat(gw, KEY, Some(&format!("after-{round}"))).await;
            assert_eq!(r.status(), 200, "gateway {gw} round {round}");
            let r = c
                .http
                .get(format!("http://{}/readyz", c.admins[gw]))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "gateway {gw} is still ready");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Unknown keys are still refused from the last snapshot.
    let r = c
        .chat(0, "pgk_unknown_key_plaintext_0000000000000000000", None)
        .await;
    assert_eq!(r.status(), 401);
}
