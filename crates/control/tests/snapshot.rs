//! The snapshot stream and the report path, over real sockets: `SnapshotService.Watch` and
//! `ReportService.Report` with node-token auth, on SQLite and on a real PostgreSQL (two
//! control-plane replicas on one database), and the in-process hub and intake standalone uses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{BOOTSTRAP, Harness, NODE, admin, authed, http_get, node};
use poolgate_core::key::hash_secret;
use poolgate_core::report::{Observation, ObservationKind, ReportBatch};
use poolgate_core::snapshot::Snapshot;
use poolgate_core::{AccountStatus, Credentials, StatusReason};
use poolgate_proto::convert::{delta_from_pb, report_batch_to_pb};
use poolgate_proto::v1 as pb;
use poolgate_store::now_ms;
use prost::Message;
use serde_json::json;
use tonic::Code;

type Updates = tonic::Streaming<pb::SnapshotUpdate>;

fn openai(name: &str, key: &str) -> pb::CreateAccountRequest {
    pb::CreateAccountRequest {
        provider: "openai".into(),
        name: name.into(),
        api_key: key.into(),
        ..Default::default()
    }
}

async fn watch(h: &Harness, node_id: &str, have_version: i64) -> Updates {
    h.snapshots()
        .await
        .watch(node(pb::WatchRequest {
            node_id: node_id.into(),
            have_version,
        }))
        .await
        .unwrap()
        .into_inner()
}

async fn next(u: &mut Updates) -> pb::SnapshotUpdate {
    tokio::time::timeout(Duration::from_secs(10), u.message())
        .await
        .expect("an update within 10 s")
        .unwrap()
        .expect("the stream is open")
}

/// Asserts that nothing arrives for a moment.
async fn quiet(u: &mut Updates) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(400), u.message()).await {
        panic!("unexpected update {m:?}");
    }
}

fn apply(s: &Snapshot, u: pb::SnapshotUpdate) -> Snapshot {
    s.apply(delta_from_pb(u).unwrap()).unwrap()
}

fn account_ids(u: &pb::SnapshotUpdate) -> Vec<String> {
    u.upsert_accounts
        .iter()
        .map(|a| a.account.as_ref().unwrap().id.clone())
        .collect()
}

async fn current(h: &Harness) -> i64 {
    h.store.current_version().await.unwrap()
}

/// Waits until the replica's hub has built everything in the store.
async fn settle(h: &Harness) -> i64 {
    let want = current(h).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while h.hub.version() < want {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the hub catches up within 10 s");
    want
}

#[tokio::test]
async fn watch_sends_a_full_snapshot_then_deltas_for_admin_changes() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let a = c
        .create_account(admin(openai("a", "sk-a")))
        .await
        .unwrap()
        .into_inner();
    let b = c
        .create_account(admin(openai("b", "sk-b")))
        .await
        .unwrap()
        .into_inner();
    let k = c
        .create_key(admin(pb::CreateKeyRequest {
            name: "ci".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();

    settle(&h).await;
    let mut u = watch(&h, "gw-0", 0).await;
    let first = next(&mut u).await;
    assert!(first.full);
    assert_eq!(first.version, current(&h).await);
    let mut ids = account_ids(&first);
    ids.sort();
    let mut want = vec![a.id.clone(), b.id.clone()];
    want.sort();
    assert_eq!(ids, want);
    assert!(first.policy.is_some());
    let mut snap = apply(&Snapshot::default(), first);
    let Some(Credentials::ApiKey { key }) = &snap.accounts.get(&a.id).unwrap().credentials else {
        panic!("{:?}", snap.accounts.get(&a.id).unwrap())
    };
    assert_eq!(key.expose(), "sk-a");
    let by_hash = snap.key_by_hash(&hash_secret(&k.key)).unwrap().clone();
    assert_eq!(&*by_hash.id, k.platform_key.as_ref().unwrap().id.as_str());

    // One account changes: one small delta with that account only.
    c.update_account(admin(pb::UpdateAccountRequest {
        id: a.id.clone(),
        priority: Some(9),
        ..Default::default()
    }))
    .await
    .unwrap();
    let d = next(&mut u).await;
    assert!(!d.full);
    assert_eq!(account_ids(&d), vec![a.id.clone()]);
    assert!(d.upsert_keys.is_empty() && d.remove_accounts.is_empty() && d.policy.is_none());
    assert_eq!(d.version, current(&h).await);
    snap = apply(&snap, d);
    assert_eq!(snap.accounts.get(&a.id).unwrap().account.spec.priority, 9);

    c.disable_key(admin(pb::KeyIdRequest {
        id: by_hash.id.to_string(),
    }))
    .await
    .unwrap();
    let d = next(&mut u).await;
    assert_eq!(d.upsert_keys.len(), 1);
    assert_eq!(d.upsert_keys[0].key.as_ref().unwrap().status, "disabled");
    snap = apply(&snap, d);

    c.delete_key(admin(pb::KeyIdRequest {
        id: by_hash.id.to_string(),
    }))
    .await
    .unwrap();
    let d = next(&mut u).await;
    assert_eq!(d.remove_keys, vec![by_hash.id.to_string()]);
    snap = apply(&snap, d);
    assert!(snap.key_by_hash(&hash_secret(&k.key)).is_none());

    let mut policy = c
        .get_routing_policy(admin(pb::GetRoutingPolicyRequest {}))
        .await
        .unwrap()
        .into_inner();
    policy.p2c_window = 5;
    c.set_routing_policy(admin(pb::SetRoutingPolicyRequest {
        policy: Some(policy),
    }))
    .await
    .unwrap();
    let d = next(&mut u).await;
    assert_eq!(d.policy.as_ref().unwrap().p2c_window, 5);
    assert!(d.upsert_accounts.is_empty());
    snap = apply(&snap, d);

    c.delete_account(admin(pb::DeleteAccountRequest { id: b.id.clone() }))
        .await
        .unwrap();
    let d = next(&mut u).await;
    assert_eq!(d.remove_accounts, vec![b.id.clone()]);
    snap = apply(&snap, d);
    assert_eq!(snap.accounts.len(), 1);
    assert_eq!(snap.policy.p2c_window, 5);
    assert_eq!(snap.version, current(&h).await);
    quiet(&mut u).await;
}

#[tokio::test]
async fn resume_sends_only_the_missing_changes() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let a = c
        .create_account(admin(openai("a", "sk-a")))
        .await
        .unwrap()
        .into_inner();
    c.create_account(admin(openai("b", "sk-b"))).await.unwrap();
    settle(&h).await;
    let mut u = watch(&h, "gw-0", 0).await;
    let first = next(&mut u).await;
    let snap = apply(&Snapshot::default(), first.clone());
    drop(u);

    // Missed while disconnected: one account changed, one key created.
    c.update_account(admin(pb::UpdateAccountRequest {
        id: a.id.clone(),
        note: Some("changed while away".into()),
        ..Default::default()
    }))
    .await
    .unwrap();
    let k = c
        .create_key(admin(pb::CreateKeyRequest {
            name: "new".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut u = watch(&h, "gw-0", first.version).await;
    let d = next(&mut u).await;
    assert!(!d.full);
    assert_eq!(account_ids(&d), vec![a.id.clone()]);
    assert_eq!(d.upsert_keys.len(), 1);
    assert_eq!(d.upsert_keys[0].hash, hash_secret(&k.key));
    assert_eq!(d.version, current(&h).await);
    let snap = apply(&snap, d);
    assert_eq!(
        snap.accounts.get(&a.id).unwrap().account.spec.note,
        "changed while away"
    );
    assert_eq!(snap.accounts.len(), 2);

    // Up to date: nothing until the next change.
    let mut fresh = watch(&h, "gw-1", current(&h).await).await;
    quiet(&mut fresh).await;
    c.update_account(admin(pb::UpdateAccountRequest {
        id: a.id.clone(),
        priority: Some(3),
        ..Default::default()
    }))
    .await
    .unwrap();
    let d = next(&mut fresh).await;
    assert_eq!(account_ids(&d), vec![a.id.clone()]);
    assert_eq!(next(&mut u).await, d);
}

#[tokio::test]
async fn versions_outside_the_change_log_get_a_full_snapshot() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let a = c
        .create_account(admin(openai("a", "sk-a")))
        .await
        .unwrap()
        .into_inner();
    for p in 1..=5 {
        c.update_account(admin(pb::UpdateAccountRequest {
            id: a.id.clone(),
            priority: Some(p),
            ..Default::default()
        }))
        .await
        .unwrap();
    }
    let newest = settle(&h).await;
    // Resumable while the log reaches back far enough...
    let mut u = watch(&h, "gw", 1).await;
    let d = next(&mut u).await;
    assert!(!d.full);
    assert_eq!(d.version, newest);
    // ...but not once retention removed what the gateway lacks.
    assert_eq!(h.store.prune_changes(now_ms() + 1000, 2).await.unwrap(), 4);
    let mut u = watch(&h, "gw", 1).await;
    let d = next(&mut u).await;
    assert!(d.full);
    assert_eq!((d.version, d.upsert_accounts.len()), (newest, 1));
    let mut u = watch(&h, "gw", newest - 2).await;
    assert!(!next(&mut u).await.full);

    // A version newer than the store's (a restored database): full snapshot of what is.
    let mut u = watch(&h, "gw", newest + 1000).await;
    let d = next(&mut u).await;
    assert!(d.full);
    assert_eq!(d.version, newest);
}

#[tokio::test]
async fn a_restarted_control_plane_resumes_gateways_from_the_change_log() {
    let mut h = Harness::start().await;
    let mut c = h.client().await;
    let a = c
        .create_account(admin(openai("a", "sk-a")))
        .await
        .unwrap()
        .into_inner();
    let b = c
        .create_account(admin(openai("b", "sk-b")))
        .await
        .unwrap()
        .into_inner();
    settle(&h).await;
    let mut u = watch(&h, "gw", 0).await;
    let first = next(&mut u).await;
    let dir = h.dir.take();
    let store = h.store.clone();
    h.stop().await.unwrap();
    // The stream ends with the control plane.
    let end = tokio::time::timeout(Duration::from_secs(10), u.message())
        .await
        .unwrap();
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");

    store.delete_account(&b.id, "t").await.unwrap();
    let h = Harness::start_on(dir, store, |_| {}).await;
    settle(&h).await;
    let mut u = watch(&h, "gw", first.version).await;
    let d = next(&mut u).await;
    assert!(!d.full, "the new hub starts above the gateway's version");
    assert_eq!(d.remove_accounts, vec![b.id.clone()]);
    assert!(d.upsert_accounts.is_empty());
    let snap = apply(&apply(&Snapshot::default(), first), d);
    assert_eq!(
        snap.accounts.keys().cloned().collect::<Vec<_>>(),
        vec![a.id]
    );
}

#[tokio::test]
async fn node_token_is_required_and_distinct_from_admin_tokens() {
    let h = Harness::start().await;
    let mut snapshots = h.snapshots().await;
    let mut reports = h.reports().await;
    let req = || pb::WatchRequest {
        node_id: "gw".into(),
        have_version: 0,
    };
    for (r, needle) in [
        (tonic::Request::new(req()), "missing node token"),
        (authed("pgn_wrong", req()), "unknown node token"),
        (authed(BOOTSTRAP, req()), "admin tokens are not accepted"),
    ] {
        let e = snapshots.watch(r).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert!(e.message().contains(needle), "{}", e.message());
    }
    let batch = || pb::ReportBatch {
        node_id: "gw".into(),
        ..Default::default()
    };
    for r in [
        tonic::Request::new(batch()),
        authed("pgn_wrong", batch()),
        authed(BOOTSTRAP, batch()),
    ] {
        let e = reports.report(r).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    assert!(reports.report(node(batch())).await.is_ok());

    // The node token opens nothing on the admin API.
    let mut c = h.client().await;
    let e = c
        .who_am_i(authed(NODE, pb::WhoAmIRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("node token"), "{}", e.message());
    let e = c
        .list_gateways(authed(NODE, pb::ListGatewaysRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // Bad watch requests.
    for bad in [
        pb::WatchRequest {
            node_id: String::new(),
            have_version: 0,
        },
        pb::WatchRequest {
            node_id: "gw".into(),
            have_version: -1,
        },
    ] {
        let e = snapshots.watch(node(bad)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }

    // A control plane without a node token serves no gateway.
    let bare = Harness::start_with(|c| c.node_token = None).await;
    let e = bare.snapshots().await.watch(node(req())).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains("no node token configured"),
        "{}",
        e.message()
    );
}

fn log(i: usize) -> pb::RequestLog {
    pb::RequestLog {
        id: format!("req_{i:06}"),
        ts_ms: now_ms(),
        method: "POST".into(),
        path: "/v1/responses".into(),
        protocol: "openai_responses".into(),
        status: 200,
        node: "gw".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn oversized_or_malformed_reports_are_invalid_and_change_nothing() {
    let h = Harness::start().await;
    let mut reports = h.reports().await;
    let too_many_logs = pb::ReportBatch {
        node_id: "gw".into(),
        logs: (0..10_001).map(log).collect(),
        ..Default::default()
    };
    let e = reports.report(node(too_many_logs)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("10000"), "{}", e.message());
    let obs = pb::Observation {
        account_id: "acc_x".into(),
        ts_ms: 1,
        kind: Some(pb::observation::Kind::Deactivated(
            pb::Deactivated::default(),
        )),
    };
    let too_many_obs = pb::ReportBatch {
        node_id: "gw".into(),
        observations: vec![obs.clone(); 10_001],
        ..Default::default()
    };
    let e = reports.report(node(too_many_obs)).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    for bad in [
        pb::ReportBatch {
            node_id: "gw 1".into(),
            logs: vec![log(1)],
            ..Default::default()
        },
        pb::ReportBatch {
            node_id: "gw".into(),
            logs: vec![log(2)],
            observations: vec![pb::Observation {
                kind: None,
                ..obs.clone()
            }],
            ..Default::default()
        },
        pb::ReportBatch {
            node_id: "gw".into(),
            logs: vec![pb::RequestLog {
                status: 70_000,
                ..log(3)
            }],
            ..Default::default()
        },
        pb::ReportBatch {
            node_id: "gw".into(),
            logs: vec![pb::RequestLog {
                id: String::new(),
                ..log(4)
            }],
            ..Default::default()
        },
    ] {
        let e = reports.report(node(bad)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    }
    assert!(h.store.list_gateways(0).await.unwrap().is_empty());
    let page = h
        .store
        .query_request_logs(
            &Default::default(),
            &poolgate_core::page::PageRequest::first(10),
        )
        .await
        .unwrap();
    assert!(page.items.is_empty());

    // The largest allowed batch goes through.
    let full = pb::ReportBatch {
        node_id: "gw".into(),
        logs: (0..10_000).map(log).collect(),
        ..Default::default()
    };
    assert!(reports.report(node(full.clone())).await.is_ok());
    // Re-sent: nothing is written twice.
    assert!(reports.report(node(full)).await.is_ok());
    let (_, metrics) = http_get(h.admin, "/metrics").await;
    assert!(
        metrics.contains("poolgate_control_request_log_rows_total 10000"),
        "{metrics}"
    );
    assert!(
        metrics.contains("poolgate_control_reports_total{outcome=\"invalid\"} 6"),
        "{metrics}"
    );
}

#[tokio::test]
async fn list_gateways_shows_watching_and_reporting_nodes() {
    let h = Harness::start_with(|c| c.node_name = Some("control-test".into())).await;
    let mut c = h.client().await;
    let a = c
        .create_account(admin(openai("a", "sk-a")))
        .await
        .unwrap()
        .into_inner();
    let mut u = watch(&h, "gw-watch", 0).await;
    let first = next(&mut u).await;
    let reported = first.version;
    c.update_account(admin(pb::UpdateAccountRequest {
        id: a.id.clone(),
        priority: Some(1),
        ..Default::default()
    }))
    .await
    .unwrap();
    let batch = ReportBatch {
        node_id: "gw-report".into(),
        applied_version: reported,
        logs: vec![],
        observations: vec![],
        dropped: 7,
    };
    let ack = h
        .reports()
        .await
        .report(node(report_batch_to_pb(&batch)))
        .await
        .unwrap()
        .into_inner();
    assert!(ack.version >= reported);

    let viewer = c
        .create_admin_token(admin(pb::CreateAdminTokenRequest {
            name: "ro".into(),
            role: "viewer".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .token;
    let r = c
        .list_gateways(authed(&viewer, pb::ListGatewaysRequest {}))
        .await
        .unwrap()
        .into_inner();
    let newest = current(&h).await;
    assert_eq!(r.version, newest);
    let names: Vec<&str> = r.gateways.iter().map(|g| g.node_id.as_str()).collect();
    assert_eq!(names, ["gw-report", "gw-watch"]);
    let rep = &r.gateways[0];
    assert_eq!(rep.applied_version, reported);
    assert_eq!(rep.lag, newest - reported);
    assert!(rep.lag > 0);
    assert_eq!(rep.control_node, "control-test");
    assert!(rep.last_report_at_ms > 0 && rep.connected_at_ms == 0);
    let w = &r.gateways[1];
    assert_eq!(w.applied_version, 0);
    assert!(w.connected_at_ms > 0 && w.last_report_at_ms == 0);
    let (_, metrics) = http_get(h.admin, "/metrics").await;
    assert!(
        metrics.contains("poolgate_control_gateway_dropped_records_total 7"),
        "{metrics}"
    );
    assert!(
        metrics.contains("poolgate_control_snapshot_subscribers 1"),
        "{metrics}"
    );
}

/// A Codex access token shaped like the real ones (RS256, the usual claims), so size
/// measurements are honest.
fn realistic_access_token(sub: &str, ws: &str, email: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let b64 = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let header =
        json!({"alg": "RS256", "kid": "b1dd3f8f-9926-4e9e-9a6d-4a2a8ed9e2c1", "typ": "JWT"});
    let claims = json!({
        "aud": ["https://api.openai.com/v1"],
        "client_id": "app_EMoamEEZ73f0CkXaXp7hrann",
        "exp": 1_900_000_000,
        "https://api.openai.com/auth": {
            "chatgpt_account_id": ws,
            "chatgpt_account_user_id": format!("user-AbCdEfGhIjKlMnOpQrStUvWx__{ws}"),
            "chatgpt_compute_residency": "no_constraint",
            "chatgpt_plan_type": "pro",
            "chatgpt_user_id": "user-AbCdEfGhIjKlMnOpQrStUvWx",
            "user_id": "user-AbCdEfGhIjKlMnOpQrStUvWx"
        },
        "https://api.openai.com/profile": {"email": email, "email_verified": true},
        "iat": 1_899_136_000,
        "iss": "https://auth.openai.com",
        "jti": "3f6c8a2e-1b4d-4e7f-9a0c-5d2e8f1b3c4a",
        "nbf": 1_899_136_000,
        "pwd_auth_time": 1_899_135_990_000_i64,
        "scp": ["openid", "profile", "email", "offline_access"],
        "session_id": "authsess_AbCdEfGhIjKlMnOpQrStUvWx",
        "sub": sub
    });
    // A 2048-bit RSA signature.
    let signature = URL_SAFE_NO_PAD.encode([0x5a_u8; 256]);
    format!("{}.{}.{signature}", b64(&header), b64(&claims))
}

fn realistic_auth_json(sub: &str, ws: &str, email: &str) -> String {
    let id_token = poolgate_core::jwt::unsigned(&json!({
        "sub": sub,
        "email": email,
        "https://api.openai.com/auth": {
            "chatgpt_account_id": ws,
            "chatgpt_plan_type": "pro",
            "chatgpt_user_id": "user-AbCdEfGhIjKlMnOpQrStUvWx"
        }
    }));
    json!({
        "tokens": {
            "id_token": id_token,
            "access_token": realistic_access_token(sub, ws, email),
            "refresh_token": "rt_SECRET-refresh-token-that-never-leaves-the-control-plane",
            "account_id": ws
        },
        "last_refresh": "2026-01-01T00:00:00Z"
    })
    .to_string()
}

#[tokio::test]
async fn a_one_account_delta_is_small_and_carries_only_the_access_token() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let (sub, ws, email) = (
        "auth0|AbCdEfGhIjKlMnOpQrStUvWx",
        "9f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b",
        "alice.wonderland@example.com",
    );
    let imported = c
        .import_accounts(admin(pb::ImportAccountsRequest {
            documents: vec![realistic_auth_json(sub, ws, email)],
            group: "team-a".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let id = imported.results[0].account_id.clone();
    // Plus 1,000 other accounts: the delta must not grow with the pool.
    for i in 0..1000 {
        h.store
            .create_account(
                poolgate_core::AccountSpec::new(poolgate_core::Provider::OpenAi, format!("o{i}")),
                Some(Credentials::ApiKey {
                    key: poolgate_core::Secret::new(format!("sk-proj-{i:0>150}")),
                }),
                None,
                "t",
            )
            .await
            .unwrap();
    }
    h.store
        .set_usage(
            &id,
            &poolgate_core::UsageSnapshot {
                primary: Some(poolgate_core::UsageWindow {
                    used_percent: 41.0,
                    window_minutes: 300,
                    resets_at_ms: Some(now_ms() + 3_600_000),
                }),
                secondary: Some(poolgate_core::UsageWindow {
                    used_percent: 12.0,
                    window_minutes: 10080,
                    resets_at_ms: Some(now_ms() + 5 * 86_400_000),
                }),
                extra: vec![],
                captured_at_ms: now_ms(),
            },
        )
        .await
        .unwrap();
    settle(&h).await;
    let mut u = watch(&h, "gw", 0).await;
    let full = next(&mut u).await;
    assert_eq!(full.upsert_accounts.len(), 1001);

    // A gateway saw a 429: every gateway gets this one account with its cooldown.
    let until = now_ms() + 45_000;
    h.reports()
        .await
        .report(node(report_batch_to_pb(&ReportBatch {
            node_id: "gw".into(),
            applied_version: full.version,
            logs: vec![],
            observations: vec![Observation {
                account_id: id.clone(),
                ts_ms: now_ms(),
                kind: ObservationKind::RateLimited { until_ms: until },
                detail: "rate_limit_exceeded".into(),
            }],
            dropped: 0,
        })))
        .await
        .unwrap();
    let d = next(&mut u).await;
    assert_eq!(account_ids(&d), vec![id.clone()]);
    let st = &d.upsert_accounts[0];
    assert_eq!(st.cooldown_until_ms, until);
    assert_eq!(
        st.account
            .as_ref()
            .unwrap()
            .identity
            .as_ref()
            .unwrap()
            .chatgpt_account_id,
        ws
    );
    let Some(pb::account_state::Credential::AccessToken(token)) = &st.credential else {
        panic!("{:?}", st.credential)
    };
    assert_eq!(*token, realistic_access_token(sub, ws, email));
    let bytes = d.encode_to_vec();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.contains("rt_SECRET"),
        "refresh tokens never leave the control plane"
    );
    eprintln!(
        "one-account delta: {} bytes encoded (access token {} bytes); full snapshot of 1001 \
         accounts: {} bytes",
        bytes.len(),
        token.len(),
        full.encoded_len()
    );
    assert!(
        bytes.len() <= 2048,
        "one-account delta is {} bytes",
        bytes.len()
    );
}

#[tokio::test]
async fn in_process_hub_and_intake_match_the_grpc_services() {
    use futures::StreamExt;
    let h = Harness::start().await;
    let mut c = h.client().await;
    let a = c
        .create_account(admin(openai("a", "sk-a")))
        .await
        .unwrap()
        .into_inner();
    settle(&h).await;
    let mut grpc = watch(&h, "gw-remote", 0).await;
    let remote_full = delta_from_pb(next(&mut grpc).await).unwrap();
    let mut local = h.hub.subscribe(0).await.unwrap();
    let local_full = local.next().await.unwrap().unwrap();
    assert_eq!(*local_full, remote_full);
    assert_eq!(h.hub.version(), remote_full.version);

    let version = h
        .ingest
        .ingest(ReportBatch {
            node_id: "standalone".into(),
            applied_version: remote_full.version,
            logs: vec![],
            observations: vec![Observation {
                account_id: a.id.clone(),
                ts_ms: now_ms(),
                kind: ObservationKind::Deactivated,
                detail: "account_deactivated".into(),
            }],
            dropped: 0,
        })
        .await
        .unwrap();
    assert!(version >= remote_full.version);
    let d = tokio::time::timeout(Duration::from_secs(10), local.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let acc = &d.upsert_accounts[0].account;
    assert_eq!(
        (acc.status, acc.status_reason),
        (AccountStatus::Unavailable, Some(StatusReason::Deactivated))
    );
    assert_eq!(delta_from_pb(next(&mut grpc).await).unwrap(), *d);
    let invalid = h
        .ingest
        .ingest(ReportBatch {
            node_id: String::new(),
            ..Default::default()
        })
        .await;
    assert!(matches!(
        invalid,
        Err(poolgate_control::IngestError::Invalid(_))
    ));
}

#[tokio::test]
async fn a_lagging_subscriber_catches_up_without_losing_a_change() {
    use futures::StreamExt;
    let h = Harness::start_with(|c| c.hub.buffer = 2).await;
    let mut c = h.client().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            c.create_account(admin(openai(&format!("a{i}"), "sk")))
                .await
                .unwrap()
                .into_inner()
                .id,
        );
    }
    settle(&h).await;
    let mut slow = h.hub.subscribe(0).await.unwrap();
    let full = slow.next().await.unwrap().unwrap();
    let mut snap = Snapshot::default().apply((*full).clone()).unwrap();
    // Ten separate deltas while the subscriber reads nothing.
    for i in 0..10 {
        let id = &ids[i % 3];
        c.update_account(admin(pb::UpdateAccountRequest {
            id: id.clone(),
            priority: Some(i as i32 + 1),
            ..Default::default()
        }))
        .await
        .unwrap();
        settle(&h).await;
    }
    c.delete_account(admin(pb::DeleteAccountRequest { id: ids[2].clone() }))
        .await
        .unwrap();
    let newest = current(&h).await;
    let mut got = 0;
    while snap.version < newest {
        let d = tokio::time::timeout(Duration::from_secs(10), slow.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        snap = snap.apply((*d).clone()).unwrap();
        got += 1;
    }
    assert!(
        got < 11,
        "the lagging subscriber got {got} messages, not one per change"
    );
    let mut left: Vec<_> = snap.accounts.keys().cloned().collect();
    left.sort();
    let mut want = ids[..2].to_vec();
    want.sort();
    assert_eq!(left, want);
    for (i, id) in ids[..2].iter().enumerate() {
        let stored = h.store.get_account(id).await.unwrap();
        assert_eq!(
            snap.accounts.get(id).unwrap().account,
            stored,
            "account {i}"
        );
    }
    let (_, metrics) = http_get(h.admin, "/metrics").await;
    assert!(
        metrics.contains("poolgate_control_snapshot_lagged_total 1"),
        "{metrics}"
    );
}

// --- PostgreSQL: two replicas on one database -------------------------------------------------

/// Replica `b` polls the change log only every 10 minutes: whatever it learns within seconds
/// came through `LISTEN/NOTIFY`.
async fn two_replicas() -> (Harness, Harness) {
    let url = poolgate_testkit::pg::fresh_database().await.unwrap();
    let a = Harness::postgres(&url, |c| c.node_name = Some("control-a".into())).await;
    let b = Harness::postgres(&url, |c| {
        c.node_name = Some("control-b".into());
        c.hub.poll_interval = Duration::from_secs(600);
    })
    .await;
    (a, b)
}

#[tokio::test]
async fn postgres_a_change_through_one_replica_reaches_watchers_of_another() {
    let (a, b) = two_replicas().await;
    a.client()
        .await
        .create_account(admin(openai("seed", "sk-s")))
        .await
        .unwrap();
    settle(&b).await;
    let mut ub = watch(&b, "gw-b", 0).await;
    let first = next(&mut ub).await;
    assert!(first.full && first.upsert_accounts.len() == 1);
    let started = Instant::now();
    let acc = a
        .client()
        .await
        .create_account(admin(openai("via-a", "sk-a")))
        .await
        .unwrap()
        .into_inner();
    let d = tokio::time::timeout(Duration::from_secs(5), ub.message())
        .await
        .expect("NOTIFY wakes replica b within seconds")
        .unwrap()
        .unwrap();
    eprintln!(
        "change via replica a reached a watcher of b in {:?}",
        started.elapsed()
    );
    assert_eq!(account_ids(&d), vec![acc.id.clone()]);
    assert_eq!(d.version, a.store.current_version().await.unwrap());

    // Both replicas compute the same deltas: a gateway may resume on either.
    let mut ua = watch(&a, "gw-a", first.version).await;
    let from_a = next(&mut ua).await;
    assert_eq!(from_a, d);
}

#[tokio::test]
async fn postgres_a_reported_429_cools_the_account_on_every_replica() {
    let (a, b) = two_replicas().await;
    let acc = a
        .client()
        .await
        .create_account(admin(openai("x", "sk-x")))
        .await
        .unwrap()
        .into_inner();
    settle(&a).await;
    settle(&b).await;
    let mut ua = watch(&a, "gw-a", 0).await;
    let mut ub = watch(&b, "gw-b", 0).await;
    let fa = next(&mut ua).await;
    let fb = next(&mut ub).await;
    assert_eq!(fa, fb);
    assert_eq!(fa.upsert_accounts[0].cooldown_until_ms, 0);

    let until = now_ms() + 120_000;
    let batch = ReportBatch {
        node_id: "gw-a".into(),
        applied_version: fa.version,
        logs: vec![],
        observations: vec![Observation {
            account_id: acc.id.clone(),
            ts_ms: now_ms(),
            kind: ObservationKind::RateLimited { until_ms: until },
            detail: "rate_limit_exceeded".into(),
        }],
        dropped: 0,
    };
    a.reports()
        .await
        .report(node(report_batch_to_pb(&batch)))
        .await
        .unwrap();
    for u in [&mut ua, &mut ub] {
        let d = tokio::time::timeout(Duration::from_secs(5), u.message())
            .await
            .expect("the cooldown reaches every replica within seconds")
            .unwrap()
            .unwrap();
        assert_eq!(account_ids(&d), vec![acc.id.clone()]);
        assert_eq!(d.upsert_accounts[0].cooldown_until_ms, until);
    }
    // Reported again (a retry, or another gateway): no new delta.
    b.reports()
        .await
        .report(node(report_batch_to_pb(&batch)))
        .await
        .unwrap();
    quiet(&mut ua).await;

    let gateways = b
        .client()
        .await
        .list_gateways(admin(pb::ListGatewaysRequest {}))
        .await
        .unwrap()
        .into_inner()
        .gateways;
    let names: Vec<(&str, &str)> = gateways
        .iter()
        .map(|g| (g.node_id.as_str(), g.control_node.as_str()))
        .collect();
    assert_eq!(names, [("gw-a", "control-b"), ("gw-b", "control-b")]);
}
