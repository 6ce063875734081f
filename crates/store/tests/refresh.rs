//! The token-refresh contract (claim, compare-and-set, release) and usage writes that end
//! stale quota state: every test runs against SQLite and against a real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use common::*;
use poolgate_core::page::PageRequest;
use poolgate_core::report::{Observation, ObservationKind};
use poolgate_core::{
    AccountStatus, Credentials, OAuthTokens, Secret, StatusReason, UsageSnapshot, UsageWindow,
};
use poolgate_store::{
    ImportOutcome, RefreshClaim, RefreshCommit, RefreshRelease, RefreshStart, Store, now_ms,
};

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(&super::Fixture::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(&super::Fixture::postgres().await).await;
                }
            )*
        }
    };
}

contract!(
    claim_then_complete_swaps_tokens_once,
    a_new_login_beats_a_refresh_in_flight,
    concurrent_refreshers_exactly_one_claims,
    a_lapsed_claim_is_recovered_and_the_old_holder_loses,
    releases_record_expiry_backoff_pause_and_invalid,
    gateway_auth_failures_make_accounts_due,
    access_only_logins_are_never_claimed,
    usage_with_room_ends_a_quota_cooldown,
);

/// Far beyond every fixture token's expiry (2_000_000_000_000).
const FAR: i64 = 3_000_000_000_000;
const LEASE: i64 = 120_000;

async fn import(s: &dyn Store, sub: &str, generation: u32) -> String {
    match s
        .import_codex(vec![codex_login(sub, "ws", generation)], "default", "t")
        .await
        .unwrap()
        .remove(0)
    {
        ImportOutcome::Created(a) | ImportOutcome::Updated(a) => a.id,
        ImportOutcome::Failed(e) => panic!("{e}"),
    }
}

async fn claim(s: &dyn Store, id: &str) -> RefreshClaim {
    match s.begin_refresh(id, LEASE).await.unwrap() {
        RefreshStart::Claimed(c) => c,
        other => panic!("expected a claim, got {other:?}"),
    }
}

fn rotated(tag: &str) -> OAuthTokens {
    OAuthTokens {
        id_token: Secret::new(format!("id-{tag}")),
        access_token: Secret::new(format!("access-SECRET-{tag}")),
        refresh_token: Secret::new(format!("refresh-SECRET-{tag}")),
        expires_at_ms: Some(2_100_000_000_000),
        last_refresh_ms: Some(1_900_000_000_000),
    }
}

async fn tokens_of(s: &dyn Store, id: &str) -> OAuthTokens {
    match s.get_credentials(id).await.unwrap() {
        Some(Credentials::OAuth(t)) => t,
        other => panic!("expected OAuth tokens, got {other:?}"),
    }
}

async fn claim_then_complete_swaps_tokens_once(f: &Fixture) {
    let s = &*f.store;
    let id = import(s, "u1", 0).await;
    let now = now_ms();
    // Not due while its access token lives past the horizon; due once the horizon passes it.
    assert!(
        s.accounts_due_for_refresh(now, now, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.accounts_due_for_refresh(FAR, now, 10).await.unwrap(),
        vec![id.clone()]
    );

    let c = claim(s, &id).await;
    assert_eq!(c.tokens.refresh_token.expose(), "refresh-SECRET-u1-0");
    assert!(!c.requested && !c.recovered);
    assert!(c.lease_until_ms >= now + LEASE);
    // Claimed: nobody else gets the token, and it is not offered as due.
    assert!(matches!(
        s.begin_refresh(&id, LEASE).await.unwrap(),
        RefreshStart::Busy { until_ms } if until_ms == c.lease_until_ms
    ));
    assert!(
        s.accounts_due_for_refresh(FAR, now_ms(), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let before = s.current_version().await.unwrap();
    assert_eq!(
        s.complete_refresh(&c, &rotated("r1"), "refresher")
            .await
            .unwrap(),
        RefreshCommit::Committed
    );
    let changes = s.changes_since(before, 100).await.unwrap();
    assert_eq!(changes.len(), 1, "one change-log row tells every gateway");
    assert_eq!(changes[0].id, id);
    assert_eq!(tokens_of(s, &id).await, rotated("r1"));
    // The snapshot carries the new access token.
    let st = s
        .load_account_states(std::slice::from_ref(&id))
        .await
        .unwrap();
    assert_eq!(st[0].credentials, Some(Credentials::OAuth(rotated("r1"))));

    // The claim is spent: completing it again writes nothing.
    assert_eq!(
        s.complete_refresh(&c, &rotated("r2"), "refresher")
            .await
            .unwrap(),
        RefreshCommit::Conflict
    );
    assert_eq!(tokens_of(s, &id).await, rotated("r1"));
    assert!(
        !s.release_refresh(&c, &RefreshRelease::Retry { not_before_ms: FAR }, "r")
            .await
            .unwrap()
    );
    // The next claim hands out the rotated token.
    let c2 = claim(s, &id).await;
    assert_eq!(c2.tokens.refresh_token.expose(), "refresh-SECRET-r1");

    // Audited, without a secret.
    let audit = s.list_audit(&PageRequest::first(500)).await.unwrap().items;
    let e = audit
        .iter()
        .find(|e| e.action == "account.refresh")
        .unwrap();
    assert_eq!(e.actor, "refresher");
    assert!(!e.detail.contains("SECRET"));
    let raw = f.raw_bytes().await;
    assert!(!contains(&raw, "refresh-SECRET-r1"), "tokens stay sealed");
}

async fn a_new_login_beats_a_refresh_in_flight(f: &Fixture) {
    let s = &*f.store;
    let id = import(s, "u1", 0).await;
    let c = claim(s, &id).await;
    // The person logs in again while the refresh is in flight.
    import(s, "u1", 1).await;
    assert_eq!(
        s.complete_refresh(&c, &rotated("late"), "refresher")
            .await
            .unwrap(),
        RefreshCommit::Conflict
    );
    assert_eq!(
        tokens_of(s, &id).await.refresh_token.expose(),
        "refresh-SECRET-u1-1"
    );
    // set_credentials ends a claim the same way.
    let c = claim(s, &id).await;
    let mut manual = rotated("manual");
    manual.refresh_token = Secret::new("refresh-SECRET-manual");
    s.set_credentials(&id, &Credentials::OAuth(manual.clone()), "admin")
        .await
        .unwrap();
    assert_eq!(
        s.complete_refresh(&c, &rotated("late2"), "refresher")
            .await
            .unwrap(),
        RefreshCommit::Conflict
    );
    assert_eq!(tokens_of(s, &id).await, manual);
}

async fn concurrent_refreshers_exactly_one_claims(f: &Fixture) {
    let id = import(&*f.store, "u1", 0).await;
    // Two "replicas" (two store objects on the same database), four refreshers each.
    let other = f.reopen(poolgate_store::Cipher::new(&KEY)).await;
    let stores: Vec<Arc<dyn Store>> = vec![f.store.clone(), other];
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = stores[i % 2].clone();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            s.begin_refresh(&id, LEASE).await.unwrap()
        }));
    }
    let mut claims = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            RefreshStart::Claimed(c) => claims.push(c),
            RefreshStart::Busy { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(claims.len(), 1, "exactly one refresher holds the token");

    // Two completions racing on the same claim: exactly one commits.
    let c = claims.remove(0);
    let mut tasks = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        let (s, c) = (s.clone(), c.clone());
        tasks.push(tokio::spawn(async move {
            s.complete_refresh(&c, &rotated(&format!("w{i}")), "r")
                .await
                .unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    outcomes.sort_by_key(|o| *o == RefreshCommit::Conflict);
    assert_eq!(
        outcomes,
        vec![RefreshCommit::Committed, RefreshCommit::Conflict]
    );
}

async fn a_lapsed_claim_is_recovered_and_the_old_holder_loses(f: &Fixture) {
    let s = &*f.store;
    let id = import(s, "u1", 0).await;
    let first = match s.begin_refresh(&id, 1).await.unwrap() {
        RefreshStart::Claimed(c) => c,
        other => panic!("{other:?}"),
    };
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    // The first holder crashed (or stalled) past its lease: the next claim says so, since the
    // token may have reached the issuer already.
    let second = claim(s, &id).await;
    assert!(second.recovered);
    assert_eq!(second.tokens.refresh_token, first.tokens.refresh_token);
    // A holder that comes back late cannot overwrite, nor release, the new claim.
    assert_eq!(
        s.complete_refresh(&first, &rotated("stale"), "r")
            .await
            .unwrap(),
        RefreshCommit::Conflict
    );
    assert!(
        !s.release_refresh(&first, &RefreshRelease::Invalid { detail: "x".into() }, "r")
            .await
            .unwrap()
    );
    assert_eq!(
        s.complete_refresh(&second, &rotated("fresh"), "r")
            .await
            .unwrap(),
        RefreshCommit::Committed
    );
    assert_eq!(tokens_of(s, &id).await, rotated("fresh"));
}

async fn releases_record_expiry_backoff_pause_and_invalid(f: &Fixture) {
    let s = &*f.store;
    let id = import(s, "u1", 0).await;
    let now = now_ms();

    // Not due: the recorded expiry decides the next due query.
    let c = claim(s, &id).await;
    assert!(
        s.release_refresh(
            &c,
            &RefreshRelease::NotDue {
                access_expires_at_ms: Some(now + 3_600_000)
            },
            "r"
        )
        .await
        .unwrap()
    );
    assert!(
        s.accounts_due_for_refresh(now + 60_000, now, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.accounts_due_for_refresh(now + 7_200_000, now, 10)
            .await
            .unwrap(),
        vec![id.clone()]
    );

    // Backoff: neither due nor claimable before the time.
    let c = claim(s, &id).await;
    let later = now_ms() + 60_000;
    s.release_refresh(
        &c,
        &RefreshRelease::Retry {
            not_before_ms: later,
        },
        "r",
    )
    .await
    .unwrap();
    assert!(matches!(
        s.begin_refresh(&id, LEASE).await.unwrap(),
        RefreshStart::Paused { until_ms } if until_ms == later
    ));
    assert!(
        s.accounts_due_for_refresh(FAR, now_ms(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.accounts_due_for_refresh(FAR, later, 10).await.unwrap(),
        vec![id.clone()]
    );

    // A region block pauses (audited) but leaves the account routable.
    let id2 = import(s, "u2", 0).await;
    let c = claim(s, &id2).await;
    let until = now_ms() + 3_600_000;
    s.release_refresh(
        &c,
        &RefreshRelease::Paused {
            until_ms: until,
            detail: "region blocked (403 unsupported_country_region_territory)".into(),
        },
        "refresher",
    )
    .await
    .unwrap();
    assert!(matches!(
        s.begin_refresh(&id2, LEASE).await.unwrap(),
        RefreshStart::Paused { until_ms } if until_ms == until
    ));
    assert_eq!(
        s.get_account(&id2).await.unwrap().status,
        AccountStatus::Active
    );
    let audit = s.list_audit(&PageRequest::first(500)).await.unwrap().items;
    assert!(
        audit
            .iter()
            .any(|e| e.action == "account.refresh_paused" && e.target_id == id2)
    );

    // A dead refresh token: unavailable (auth_invalid) at once on every gateway, never
    // claimed again, until a new login.
    let id3 = import(s, "u3", 0).await;
    let c = claim(s, &id3).await;
    let before = s.current_version().await.unwrap();
    s.release_refresh(
        &c,
        &RefreshRelease::Invalid {
            detail: "refresh_token_reused".into(),
        },
        "refresher",
    )
    .await
    .unwrap();
    assert_eq!(s.changes_since(before, 10).await.unwrap().len(), 1);
    let a = s.get_account(&id3).await.unwrap();
    assert_eq!(
        (a.status, a.status_reason),
        (AccountStatus::Unavailable, Some(StatusReason::AuthInvalid))
    );
    assert_eq!(
        s.begin_refresh(&id3, LEASE).await.unwrap(),
        RefreshStart::NotRefreshable
    );
    assert!(
        !s.accounts_due_for_refresh(FAR, FAR, 10)
            .await
            .unwrap()
            .contains(&id3)
    );
    // A new login brings it back.
    import(s, "u3", 1).await;
    let a = s.get_account(&id3).await.unwrap();
    assert_eq!((a.status, a.status_reason), (AccountStatus::Active, None));
    assert_eq!(
        claim(s, &id3).await.tokens.refresh_token.expose(),
        "refresh-SECRET-u3-1"
    );
}

async fn gateway_auth_failures_make_accounts_due(f: &Fixture) {
    let s = &*f.store;
    let id = import(s, "u1", 0).await;
    let now = now_ms();
    s.record_observations(
        &[Observation {
            account_id: id.clone(),
            ts_ms: now,
            kind: ObservationKind::AuthFailed,
            detail: "token_expired".into(),
        }],
        "gateway:gw-1",
    )
    .await
    .unwrap();
    // Due although its access token is far from expiry.
    assert_eq!(
        s.accounts_due_for_refresh(now, now, 10).await.unwrap(),
        vec![id.clone()]
    );
    let c = claim(s, &id).await;
    assert!(c.requested);
    assert_eq!(
        s.complete_refresh(&c, &rotated("r1"), "r").await.unwrap(),
        RefreshCommit::Committed
    );
    // The request is answered and the auth cooldown lifted on every gateway.
    assert!(s.accounts_needing_refresh().await.unwrap().is_empty());
    let st = s
        .load_account_states(std::slice::from_ref(&id))
        .await
        .unwrap();
    assert_eq!(st[0].cooldown_until_ms, None);
    assert!(
        s.accounts_due_for_refresh(now, now_ms(), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn access_only_logins_are_never_claimed(f: &Fixture) {
    let s = &*f.store;
    let mut login = codex_login("u1", "ws", 0);
    login.tokens.refresh_token = Secret::new("");
    let id = match s
        .import_codex(vec![login], "default", "t")
        .await
        .unwrap()
        .remove(0)
    {
        ImportOutcome::Created(a) => a.id,
        other => panic!("{other:?}"),
    };
    let api = s
        .create_account(openai("k"), Some(api_key("k")), None, "t")
        .await
        .unwrap();
    assert!(
        s.accounts_due_for_refresh(FAR, now_ms(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.begin_refresh(&id, LEASE).await.unwrap(),
        RefreshStart::NotRefreshable
    );
    assert_eq!(
        s.begin_refresh(&api.id, LEASE).await.unwrap(),
        RefreshStart::NotRefreshable
    );
    assert!(s.begin_refresh("acc_missing", LEASE).await.is_err());
}

fn window(pct: f64, minutes: u32, resets_at_ms: i64) -> Option<UsageWindow> {
    Some(UsageWindow {
        used_percent: pct,
        window_minutes: minutes,
        resets_at_ms: Some(resets_at_ms),
    })
}

async fn usage_with_room_ends_a_quota_cooldown(f: &Fixture) {
    let s = &*f.store;
    let id = import(s, "u1", 0).await;
    let now = now_ms();
    let reset = now + 3_600_000;
    s.record_observations(
        &[Observation {
            account_id: id.clone(),
            ts_ms: now,
            kind: ObservationKind::QuotaExhausted { until_ms: reset },
            detail: "usage_limit_reached".into(),
        }],
        "gateway:gw-1",
    )
    .await
    .unwrap();
    assert_eq!(cooldown(s, &id).await, Some(reset));
    // A poll that still shows the window full keeps it.
    let full = UsageSnapshot {
        primary: window(100.0, 300, reset),
        secondary: window(40.0, 10_080, now + 86_400_000),
        extra: vec![],
        captured_at_ms: now,
    };
    s.set_usage(&id, &full).await.unwrap();
    assert_eq!(cooldown(s, &id).await, Some(reset));
    // The window reset early (or was reset by hand): the poll ends the stale cooldown.
    let room = UsageSnapshot {
        primary: window(3.0, 300, now + 18_000_000),
        ..full
    };
    let before = s.current_version().await.unwrap();
    s.set_usage(&id, &room).await.unwrap();
    assert_eq!(cooldown(s, &id).await, None);
    assert_eq!(s.changes_since(before, 10).await.unwrap().len(), 1);
    assert_eq!(
        s.get_usage(std::slice::from_ref(&id)).await.unwrap()[0].1,
        room
    );
}

async fn cooldown(s: &dyn Store, id: &str) -> Option<i64> {
    s.load_account_states(&[id.to_string()]).await.unwrap()[0].cooldown_until_ms
}
