//! The controller runs only while this replica leads, stops when leadership is lost and
//! returns when the leadership sender is gone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use poolgate_k8s::controller::run_while_leading;
use tokio::sync::watch;

/// The four watches the controller opens, as (path, label selector).
fn expected_watches() -> BTreeSet<(String, String)> {
    [
        (
            "/apis/poolgate.dev/v1alpha1/namespaces/pool/upstreamaccounts",
            "",
        ),
        (
            "/apis/poolgate.dev/v1alpha1/namespaces/pool/platformkeys",
            "",
        ),
        ("/api/v1/namespaces/pool/secrets", ""),
        (
            "/api/v1/namespaces/pool/secrets",
            "poolgate.dev/platform-key",
        ),
    ]
    .into_iter()
    .map(|(p, l)| (p.to_string(), l.to_string()))
    .collect()
}

/// Collects the initial list requests of the watches (left unanswered).
async fn initial_lists(api: &mut ApiServer) -> (BTreeSet<(String, String)>, Vec<Call>) {
    let mut seen = BTreeSet::new();
    let mut pending = Vec::new();
    for _ in 0..4 {
        let call = api.next().await;
        assert_eq!(call.method, "GET", "{call:?}");
        assert_ne!(call.param("watch"), Some("true"), "{call:?}");
        seen.insert((
            call.path.clone(),
            call.param("labelSelector").unwrap_or_default().to_string(),
        ));
        pending.push(call);
    }
    (seen, pending)
}

fn empty_list(call: &Call) -> serde_json::Value {
    let (api_version, kind) = if call.path.contains("/secrets") {
        ("v1", "SecretList")
    } else if call.path.ends_with("/upstreamaccounts") {
        ("poolgate.dev/v1alpha1", "UpstreamAccountList")
    } else {
        ("poolgate.dev/v1alpha1", "PlatformKeyList")
    };
    serde_json::json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"resourceVersion": "100"}, "items": []
    })
}

fn answer_lists(pending: Vec<Call>) {
    for call in pending {
        let body = empty_list(&call);
        call.ok(&body);
    }
}

#[tokio::test]
async fn runs_only_while_leading() {
    let store = sqlite_store();
    let (client, mut api) = mock_client();
    let (leader_tx, leader_rx) = watch::channel(false);
    let task = tokio::spawn(run_while_leading(
        client,
        NS.to_string(),
        store.store.clone(),
        leader_rx,
    ));

    // Not leading: the API server hears nothing.
    assert!(api.try_next(Duration::from_millis(300)).await.is_none());

    // Leading: the controller lists, then watches, CRs and Secrets in its namespace.
    leader_tx.send(true).unwrap();
    let (seen, pending) = initial_lists(&mut api).await;
    assert_eq!(seen, expected_watches());
    answer_lists(pending);
    let mut watches = Vec::new();
    for _ in 0..4 {
        let call = api.next().await;
        assert_eq!(call.param("watch"), Some("true"), "{call:?}");
        assert_eq!(call.param("resourceVersion"), Some("100"), "{call:?}");
        watches.push(call);
    }

    // Leadership lost, then regained: a fresh controller lists again.
    leader_tx.send(false).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(watches);
    leader_tx.send(true).unwrap();
    let (seen, pending) = initial_lists(&mut api).await;
    assert_eq!(seen, expected_watches());

    // Lost again before the lists were answered: answering them now leads nowhere, since the
    // controller that asked is gone (a live one would open its watches, as above).
    leader_tx.send(false).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    answer_lists(pending);
    assert!(api.try_next(Duration::from_secs(1)).await.is_none());

    // The process shuts down: the sender goes, the function returns.
    drop(leader_tx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("run_while_leading did not return")
        .unwrap();
}
