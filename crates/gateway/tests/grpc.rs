#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The gRPC transport against a real control plane (SQLite store): node-token auth, the
//! snapshot stream, and reports landing in the store.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use poolgate_control::ControlConfig;
use poolgate_core::page::PageRequest;
use poolgate_core::{AccountSpec, Credentials, LogFilter, Provider, Secret};
use poolgate_gateway::{
    Gateway, GrpcReportSink, GrpcSnapshotSource, NodeToken, SnapshotSource, SourceError,
    control_channel,
};
use poolgate_store::Store;
use poolgate_store::sqlite::SqliteStore;
use poolgate_testkit::mock::MockUpstream;
use serde_json::json;

const NODE_TOKEN: &str = "pgn_gateway_node_token_for_tests_0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_follows_the_control_plane_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let cipher = poolgate_store::Cipher::load_or_create(&dir.path().join("key")).unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("poolgate.db"), cipher).unwrap());
    let mock = MockUpstream::start().await.unwrap();
    let mut spec = AccountSpec::new(Provider::OpenAi, "o1");
    spec.base_url = Some(mock.openai_base_url());
    let account = store
        .create_account(
            spec.validate().unwrap(),
            Some(Credentials::ApiKey {
                key: Secret::new("sk-grpc"),
            }),
            None,
            "test",
        )
        .await
        .unwrap();
    store
        .create_key(platform_key("key_grpc", KEY), "test")
        .await
        .unwrap();

    let mut cfg = ControlConfig::new("127.0.0.1:0", "127.0.0.1:0");
    cfg.node_token = Some(poolgate_control::NodeToken::from_plaintext(NODE_TOKEN).unwrap());
    let cp = poolgate_control::bind(cfg, store.clone()).await.unwrap();
    let url = format!("http://{}", cp.grpc_addr());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let control = tokio::spawn(cp.run(async move {
        let _ = stop_rx.await;
    }));

    let channel = control_channel(&url).unwrap();
    let intruder = GrpcSnapshotSource::new(
        channel.clone(),
        "gw-1",
        NodeToken::Value("pgn_wrong_token".into()),
    );
    match intruder.watch(0).await {
        Err(SourceError::Unauthenticated(_)) => {}
        Err(e) => panic!("expected Unauthenticated, got {e}"),
        Ok(_) => panic!("a wrong node token was accepted"),
    }

    let token = NodeToken::Value(NODE_TOKEN.into());
    let source = Arc::new(GrpcSnapshotSource::new(
        channel.clone(),
        "gw-1",
        token.clone(),
    ));
    let sink = Arc::new(GrpcReportSink::new(channel, token));
    let mut gcfg = test_config();
    gcfg.node_id = "gw-1".into();
    let gw = Gateway::bind(gcfg, source, sink).await.unwrap();
    let (addr, admin) = (gw.local_addr(), gw.admin_addr());
    let (gw_stop_tx, gw_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(gw.run(async move {
        let _ = gw_stop_rx.await;
    }));
    let http = client();
    let mut ready = false;
    for _ in 0..100 {
        let r = http
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "the gateway never received a snapshot");

    let r = http
        .post(format!("http://{addr}/v1/chat/completions"))
        .bearer_auth(KEY)
        .body(
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "over grpc"}]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    assert_eq!(
        mock.requests_to("/v1/chat/completions")[0].header("authorization"),
        Some("Bearer sk-grpc")
    );

    // The request log reaches the store through ReportService.
    let mut logged = None;
    for _ in 0..100 {
        let page = store
            .query_request_logs(&LogFilter::default(), &PageRequest::first(10))
            .await
            .unwrap();
        if let Some(l) = page.items.into_iter().find(|l| l.id == id) {
            logged = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = logged.expect("request log stored");
    assert_eq!(log.node, "gw-1");
    assert_eq!(log.account_id.as_deref(), Some(account.id.as_str()));
    assert_eq!(log.status, 200);
    let gateways = store.list_gateways(0).await.unwrap();
    assert!(
        gateways
            .iter()
            .any(|g| g.node_id == "gw-1" && g.applied_version > 0),
        "{gateways:?}"
    );

    let _ = gw_stop_tx.send(());
    gateway.await.unwrap();
    let _ = stop_tx.send(());
    control.await.unwrap().unwrap();
}
