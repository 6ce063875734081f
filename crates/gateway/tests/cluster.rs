#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The in-process cluster (tests/common/cluster.rs): one control plane on PostgreSQL, three
//! gateways following it over gRPC, and the mock upstream with three OpenAI API-key accounts.
//! Needs `POOLGATE_TEST_DATABASE_URL`.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, GATEWAYS, TOKENS, eventually};
use common::{KEY, platform_key, sse_data};
use poolgate_core::{KeyPatch, KeyStatus};
use poolgate_testkit::mock::Fault;
use serde_json::{Value, json};

/// Polls until the key answers `status` on every gateway.
async fn key_status_everywhere(c: &Cluster, key: &str, status: u16) {
    for gw in 0..GATEWAYS {
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
    for gw in 0..GATEWAYS {
        assert_eq!(c.chat(gw, NEW, None).await.status(), 200);
    }

    let patch = KeyPatch {
        status: Some(KeyStatus::Disabled),
        ..KeyPatch::default()
    };
    c.store.update_key(&key.id, &patch, "test").await.unwrap();
    // 403 `api_key_disabled`: the gateways know the key, as disabled.
    key_status_everywhere(&c, NEW, 403).await;
    for gw in 0..GATEWAYS {
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
        for gw in 0..GATEWAYS {
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
        for gw in 0..GATEWAYS {
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
