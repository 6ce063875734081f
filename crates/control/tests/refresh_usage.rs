//! The leader's token refresh and usage polling against the mock issuer and usage endpoint:
//! proactive and reactive refresh, rotation stored before use, classified failures, two
//! control planes on one PostgreSQL, usage parsing end to end, backoff and recovery.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use poolgate_control::refresh::RefreshOutcome;
use poolgate_control::usage_poll::PollOutcome;
use poolgate_control::{
    ControlConfig, Leadership, Metrics, RefreshJobConfig, Refresher, UsagePollConfig, UsagePoller,
};
use poolgate_core::report::{Observation, ObservationKind};
use poolgate_core::{
    AccountSpec, AccountStatus, Availability, CodexIdentity, Credentials, OAuthTokens, Provider,
    Secret, StatusReason,
};
use poolgate_store::{Cipher, PgStore, RefreshStart, SqliteStore, Store, now_ms};
use poolgate_testkit::mock::{Fault, MockUpstream, MockUsage, MockWindow};
use poolgate_upstream::refresh::{RefreshConfig, TokenRefresher};
use poolgate_upstream::usage::UsageClient;

const KEY: [u8; 32] = [9u8; 32];

fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("p.db"), Cipher::new(&KEY)).unwrap();
    (Arc::new(s), dir)
}

fn client(mock: &MockUpstream) -> TokenRefresher {
    TokenRefresher::new(RefreshConfig {
        issuer: mock.oauth_issuer(),
        ..RefreshConfig::default()
    })
    .unwrap()
}

fn fast() -> RefreshJobConfig {
    RefreshJobConfig {
        interval: Duration::from_millis(20),
        reactive_debounce: Duration::ZERO,
        retry_min: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        ..RefreshJobConfig::default()
    }
}

/// A Codex account logged in at the mock; with `expiring`, its stored access token expires
/// in a minute (inside the 10-minute lead), else in ten days.
async fn login(
    s: &dyn Store,
    mock: &MockUpstream,
    n: u32,
    expiring: bool,
) -> (String, OAuthTokens) {
    let issued = mock.issue_tokens(&format!("u{n}@example.test"), &format!("ws-{n}"));
    let access = if expiring {
        poolgate_core::jwt::unsigned(&serde_json::json!({"exp": now_ms() / 1000 + 60}))
    } else {
        issued.access_token.clone()
    };
    let tokens = OAuthTokens {
        id_token: Secret::new(issued.id_token),
        access_token: Secret::new(access),
        refresh_token: Secret::new(issued.refresh_token),
        expires_at_ms: None,
        last_refresh_ms: None,
    };
    let identity = CodexIdentity {
        subject: format!("auth0|u{n}"),
        chatgpt_account_id: issued.account_id,
        chatgpt_user_id: None,
        email: Some(format!("u{n}@example.test")),
        plan_type: None,
    };
    let a = s
        .create_account(
            AccountSpec::new(Provider::Codex, format!("acc{n}")),
            Some(Credentials::OAuth(tokens.clone())),
            Some(identity),
            "t",
        )
        .await
        .unwrap();
    (a.id, tokens)
}

async fn tokens_of(s: &dyn Store, id: &str) -> OAuthTokens {
    match s.get_credentials(id).await.unwrap() {
        Some(Credentials::OAuth(t)) => t,
        other => panic!("{other:?}"),
    }
}

/// Every refresh token the mock issuer was shown, with how often.
fn presented(mock: &MockUpstream) -> HashMap<String, u32> {
    let mut m = HashMap::new();
    for r in mock.requests_to("/oauth/token") {
        *m.entry(r.token.unwrap_or_default()).or_insert(0) += 1;
    }
    m
}

fn assert_never_twice(mock: &MockUpstream) {
    let p = presented(mock);
    assert!(
        p.values().all(|n| *n == 1),
        "a refresh token was presented twice: {:?}",
        p.values().collect::<Vec<_>>()
    );
}

async fn auth_failed(s: &dyn Store, id: &str) {
    s.record_observations(
        &[Observation {
            account_id: id.into(),
            ts_ms: now_ms(),
            kind: ObservationKind::AuthFailed,
            detail: "token_expired".into(),
        }],
        "gateway:gw",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn proactive_refresh_rotates_and_stores_before_use() {
    let mock = MockUpstream::start().await.unwrap();
    let (s, _d) = sqlite();
    let metrics = Arc::new(Metrics::new());
    let r = Refresher::new(s.clone(), client(&mock), metrics.clone(), fast());
    let (due, old) = login(&*s, &mock, 1, true).await;
    let (fresh, fresh_tokens) = login(&*s, &mock, 2, false).await;

    let before = s.current_version().await.unwrap();
    let out = r.run_once().await;
    assert_eq!(out, vec![(due.clone(), RefreshOutcome::Refreshed)]);
    let new = tokens_of(&*s, &due).await;
    assert_ne!(new.refresh_token, old.refresh_token);
    assert_ne!(new.access_token, old.access_token);
    assert!(new.access_expires_at_ms().unwrap() > now_ms() + 86_400_000);
    assert!(new.last_refresh_ms.is_some());
    // Stored with a change-log row: the next delta gives gateways the new access token.
    let changes = s.changes_since(before, 100).await.unwrap();
    assert!(changes.iter().any(|c| c.id == due));
    let st = s
        .load_account_states(std::slice::from_ref(&due))
        .await
        .unwrap();
    assert_eq!(st[0].credentials, Some(Credentials::OAuth(new.clone())));
    // The account not yet due was left alone.
    assert_eq!(tokens_of(&*s, &fresh).await, fresh_tokens);
    assert_eq!(mock.request_count(fresh_tokens.refresh_token.expose()), 0);

    // Nothing is due any more; the old token was sent exactly once.
    assert!(r.run_once().await.is_empty());
    assert_eq!(mock.request_count(old.refresh_token.expose()), 1);
    // The stored (rotated) token is the one the next refresh presents.
    auth_failed(&*s, &due).await;
    assert_eq!(
        r.run_once().await,
        vec![(due.clone(), RefreshOutcome::Refreshed)]
    );
    assert_eq!(mock.request_count(new.refresh_token.expose()), 1);
    assert_never_twice(&mock);
    let text = metrics.encode().unwrap();
    assert!(
        text.contains("poolgate_control_token_refreshes_total{outcome=\"refreshed\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn reactive_refresh_after_a_gateway_auth_failure_is_debounced() {
    let mock = MockUpstream::start().await.unwrap();
    let (s, _d) = sqlite();
    let cfg = RefreshJobConfig {
        reactive_debounce: Duration::from_secs(30),
        ..fast()
    };
    let r = Refresher::new(s.clone(), client(&mock), Arc::new(Metrics::new()), cfg);
    let (id, old) = login(&*s, &mock, 1, false).await;
    assert!(r.run_once().await.is_empty(), "not due, not requested");

    auth_failed(&*s, &id).await;
    assert_eq!(
        s.accounts_needing_refresh().await.unwrap(),
        vec![id.clone()]
    );
    assert_eq!(
        r.run_once().await,
        vec![(id.clone(), RefreshOutcome::Refreshed)]
    );
    assert!(s.accounts_needing_refresh().await.unwrap().is_empty());
    let st = s
        .load_account_states(std::slice::from_ref(&id))
        .await
        .unwrap();
    assert_eq!(st[0].cooldown_until_ms, None, "the auth cooldown is lifted");
    assert_eq!(mock.request_count(old.refresh_token.expose()), 1);

    // Another refusal right after: at most one refresh per 30 s.
    auth_failed(&*s, &id).await;
    assert_eq!(
        r.run_once().await,
        vec![(id.clone(), RefreshOutcome::Debounced)]
    );
    assert!(
        r.run_once().await.is_empty(),
        "deferred, not retried at once"
    );
    assert!(matches!(
        s.begin_refresh(&id, 1000).await.unwrap(),
        RefreshStart::Paused { .. }
    ));
    assert_eq!(presented(&mock).len(), 1);
}

#[tokio::test]
async fn failures_are_classified() {
    let mock = MockUpstream::start().await.unwrap();
    let (s, _d) = sqlite();
    let r = Refresher::new(s.clone(), client(&mock), Arc::new(Metrics::new()), fast());
    let (reused, reused_t) = login(&*s, &mock, 1, true).await;
    let (expired, expired_t) = login(&*s, &mock, 2, true).await;
    let (blocked, blocked_t) = login(&*s, &mock, 3, true).await;
    let (flaky, flaky_t) = login(&*s, &mock, 4, true).await;
    // Another tool used this login's refresh token behind our back.
    client(&mock).refresh(&reused_t).await.unwrap();
    mock.set_fault(expired_t.refresh_token.expose(), Fault::RefreshTokenExpired);
    mock.set_fault(blocked_t.refresh_token.expose(), Fault::RegionBlocked);
    mock.set_fault(
        flaky_t.refresh_token.expose(),
        Fault::ServerError { status: 503 }.times(1),
    );

    let mut out = r.run_once().await;
    out.sort();
    let mut want = vec![
        (reused.clone(), RefreshOutcome::Invalid),
        (expired.clone(), RefreshOutcome::Invalid),
        (blocked.clone(), RefreshOutcome::RegionBlocked),
        (flaky.clone(), RefreshOutcome::Transient),
    ];
    want.sort();
    assert_eq!(out, want);
    for id in [&reused, &expired] {
        let a = s.get_account(id).await.unwrap();
        assert_eq!(
            (a.status, a.status_reason),
            (AccountStatus::Unavailable, Some(StatusReason::AuthInvalid))
        );
    }
    // A region block pauses refreshing but leaves the account routable.
    let a = s.get_account(&blocked).await.unwrap();
    assert_eq!(a.status, AccountStatus::Active);
    assert!(matches!(
        s.begin_refresh(&blocked, 1000).await.unwrap(),
        RefreshStart::Paused { until_ms } if until_ms > now_ms() + 3_600_000
    ));

    // Only the transient failure is retried, after its backoff; dead logins stay dead.
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        r.run_once().await,
        vec![(flaky.clone(), RefreshOutcome::Refreshed)]
    );
    assert!(r.run_once().await.is_empty());
    for t in [&expired_t, &blocked_t] {
        assert_eq!(mock.request_count(t.refresh_token.expose()), 1);
    }
    assert_eq!(
        mock.request_count(reused_t.refresh_token.expose()),
        2,
        "ours and the other tool's"
    );
    assert_eq!(
        mock.request_count(flaky_t.refresh_token.expose()),
        2,
        "503 consumed nothing"
    );
    // Audit and errors never show a token.
    let audit = s
        .list_audit(&poolgate_core::page::PageRequest::first(500))
        .await
        .unwrap()
        .items;
    let failed: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "account.refresh_failed")
        .collect();
    assert_eq!(failed.len(), 2);
    assert!(
        failed
            .iter()
            .any(|e| e.detail.contains("refresh_token_reused"))
    );
    assert!(
        failed
            .iter()
            .any(|e| e.detail.contains("refresh_token_expired"))
    );
    for e in &audit {
        assert!(!e.detail.contains("rt_mock_"), "{}", e.detail);
    }
}

/// Two control-plane replicas on one PostgreSQL: the refresh job runs on the leader only, a
/// handover moves it, and even two refreshers acting at once never send a token twice.
#[tokio::test]
async fn two_control_planes_on_one_postgres_refresh_once() {
    let mock = MockUpstream::start().await.unwrap();
    let url = poolgate_testkit::pg::fresh_database().await.unwrap();
    let s1: Arc<dyn Store> = Arc::new(PgStore::connect(&url, Cipher::new(&KEY)).await.unwrap());
    let s2: Arc<dyn Store> = Arc::new(PgStore::connect(&url, Cipher::new(&KEY)).await.unwrap());
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(login(&*s1, &mock, n, true).await.0);
    }

    let (flag1, lead1) = Leadership::channel();
    let (flag2, lead2) = Leadership::channel();
    flag1.set(true);
    let plane = |store: Arc<dyn Store>, leadership: Leadership| {
        let mut cfg = ControlConfig::new("127.0.0.1:0", "127.0.0.1:0");
        cfg.leadership = leadership;
        cfg.oauth.issuer = mock.oauth_issuer();
        cfg.token_refresh = Some(fast());
        async move { poolgate_control::bind(cfg, store).await.unwrap() }
    };
    let cp1 = plane(s1.clone(), lead1).await;
    let cp2 = plane(s2.clone(), lead2).await;
    let (m1, m2) = (cp1.metrics(), cp2.metrics());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let run = |cp: poolgate_control::ControlPlane| {
        let mut rx = stop_rx.clone();
        tokio::spawn(async move {
            cp.run(async move {
                let _ = rx.wait_for(|s| *s).await;
            })
            .await
            .unwrap()
        })
    };
    let (t1, t2) = (run(cp1), run(cp2));

    let refreshed = |m: &Metrics| {
        m.encode()
            .unwrap()
            .lines()
            .find(|l| {
                l.starts_with("poolgate_control_token_refreshes_total{outcome=\"refreshed\"}")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let until = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    tokio::task::spawn_blocking({
        let m1 = m1.clone();
        move || until("the leader refreshes all six", &|| refreshed(&m1) == 6)
    })
    .await
    .unwrap();
    assert_eq!(refreshed(&m2), 0, "the follower refreshes nothing");

    // Handover: the second replica leads, and answers the next auth failures.
    flag1.set(false);
    flag2.set(true);
    for id in &ids {
        auth_failed(&*s1, id).await;
    }
    tokio::task::spawn_blocking({
        let m2 = m2.clone();
        move || until("the new leader refreshes all six", &|| refreshed(&m2) == 6)
    })
    .await
    .unwrap();
    assert_eq!(refreshed(&m1), 6);
    let _ = stop_tx.send(true);
    t1.await.unwrap();
    t2.await.unwrap();
    drop((flag1, flag2));

    // Split brain (a paused leader waking up while the other acts): two refreshers on the
    // two stores race over the same due accounts; the claims let each token out once.
    for id in &ids {
        auth_failed(&*s1, id).await;
    }
    let r1 = Arc::new(Refresher::new(
        s1.clone(),
        client(&mock),
        Arc::new(Metrics::new()),
        fast(),
    ));
    let r2 = Arc::new(Refresher::new(
        s2.clone(),
        client(&mock),
        Arc::new(Metrics::new()),
        fast(),
    ));
    let (a, b) = tokio::join!(r1.run_once(), r2.run_once());
    let wins = a
        .iter()
        .chain(b.iter())
        .filter(|(_, o)| *o == RefreshOutcome::Refreshed)
        .count();
    assert!(wins <= 6);
    // Whatever the first race left (busy elsewhere), a second pass finishes.
    let rest = r1.run_once().await;
    let wins = wins
        + rest
            .iter()
            .filter(|(_, o)| *o == RefreshOutcome::Refreshed)
            .count();
    assert_eq!(wins, 6);
    assert_never_twice(&mock);
    assert_eq!(presented(&mock).len(), 18);
    for id in &ids {
        assert_eq!(
            s2.get_account(id).await.unwrap().status,
            AccountStatus::Active
        );
    }
}

fn poller(s: &Arc<dyn Store>, mock: &MockUpstream, metrics: Arc<Metrics>) -> UsagePoller {
    UsagePoller::new(
        s.clone(),
        UsageClient::new(&mock.usage_base_url()).unwrap(),
        metrics,
        UsagePollConfig {
            interval: Duration::from_millis(50),
            concurrency: 2,
            backoff_max: Duration::from_millis(200),
        },
    )
}

#[tokio::test]
async fn usage_polls_store_windows_only_when_they_move() {
    let mock = MockUpstream::start().await.unwrap();
    let (s, _d) = sqlite();
    let metrics = Arc::new(Metrics::new());
    let p = poller(&s, &mock, metrics.clone());
    let (two, two_t) = login(&*s, &mock, 1, false).await;
    let (free, free_t) = login(&*s, &mock, 2, false).await;
    mock.set_usage(
        two_t.access_token.expose(),
        MockUsage {
            primary: Some(MockWindow::five_hour(42.0)),
            secondary: Some(MockWindow::weekly(7.5)),
            ..MockUsage::default()
        },
    );
    mock.set_usage(
        free_t.access_token.expose(),
        MockUsage {
            plan_type: "free".into(),
            primary: Some(MockWindow::weekly(12.0)),
            secondary: None,
            additional: vec![poolgate_testkit::mock::MockLimit {
                limit_name: "Spark".into(),
                metered_feature: "codex_spark".into(),
                primary: Some(MockWindow::five_hour(100.0)),
                secondary: None,
            }],
        },
    );

    let mut out = p.run_once().await;
    out.sort();
    let mut want = vec![
        (two.clone(), PollOutcome::Changed),
        (free.clone(), PollOutcome::Changed),
    ];
    want.sort();
    assert_eq!(out, want);
    let usage: HashMap<String, _> = s
        .get_usage(&[two.clone(), free.clone()])
        .await
        .unwrap()
        .into_iter()
        .collect();
    let u = &usage[&two];
    assert_eq!(u.five_hour().unwrap().used_percent, 42.0);
    assert_eq!(u.weekly().unwrap().used_percent, 7.5);
    assert_eq!(u.availability(), Availability::Available);
    let f = &usage[&free];
    assert!(f.five_hour().is_none() && f.secondary.is_none());
    assert_eq!(f.availability(), Availability::PrimaryWindowAvailableOnly);
    assert_eq!(f.extra.len(), 1);
    assert!(f.extra[0].limit_reached);
    // The poll sent the account's workspace.
    let req = mock.requests_to("/backend-api/wham/usage");
    assert!(req.iter().all(|r| r.header("chatgpt-account-id").is_some()));

    // Nothing moved: nothing written.
    let v = s.current_version().await.unwrap();
    assert!(
        p.run_once()
            .await
            .iter()
            .all(|(_, o)| *o == PollOutcome::Unchanged)
    );
    assert_eq!(s.current_version().await.unwrap(), v);
    // A move of a point is written.
    mock.set_usage(
        two_t.access_token.expose(),
        MockUsage {
            primary: Some(MockWindow::five_hour(43.0)),
            secondary: Some(MockWindow::weekly(7.5)),
            ..MockUsage::default()
        },
    );
    assert!(
        p.run_once()
            .await
            .contains(&(two.clone(), PollOutcome::Changed))
    );
    let text = metrics.encode().unwrap();
    assert!(
        text.contains(&format!(
            "poolgate_control_account_usage_used_percent{{account=\"{two}\",window=\"5h\"}} 43"
        )),
        "{text}"
    );
    assert!(text.contains(&format!(
        "poolgate_control_account_usage_used_percent{{account=\"{free}\",window=\"7d\"}} 12"
    )));
    assert!(text.contains("poolgate_control_usage_polls_total{outcome=\"unchanged\"}"));
}

#[tokio::test]
async fn usage_failures_back_off_and_exhausted_accounts_come_back() {
    let mock = MockUpstream::start().await.unwrap();
    let (s, _d) = sqlite();
    let p = poller(&s, &mock, Arc::new(Metrics::new()));
    let (id, t) = login(&*s, &mock, 1, false).await;
    let token = t.access_token.expose().to_string();

    // Backoff: a 503 is not retried on the next pass, but after the backoff.
    mock.set_fault(&token, Fault::ServerError { status: 503 }.times(1));
    assert_eq!(
        p.run_once().await,
        vec![(id.clone(), PollOutcome::Transient)]
    );
    assert_eq!(
        p.run_once().await,
        vec![(id.clone(), PollOutcome::BackingOff)]
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(p.run_once().await, vec![(id.clone(), PollOutcome::Changed)]);
    assert_eq!(mock.request_count(&token), 2);

    // Exhausted: a gateway saw usage_limit_reached (cooldown until the reset) and the poll
    // agrees.
    let reset = now_ms() + 3_600_000;
    s.record_observations(
        &[Observation {
            account_id: id.clone(),
            ts_ms: now_ms(),
            kind: ObservationKind::QuotaExhausted { until_ms: reset },
            detail: "usage_limit_reached".into(),
        }],
        "gateway:gw",
    )
    .await
    .unwrap();
    mock.set_usage(
        &token,
        MockUsage {
            primary: Some(MockWindow::new(100.0, 300, 3600)),
            secondary: Some(MockWindow::weekly(20.0)),
            ..MockUsage::default()
        },
    );
    p.run_once().await;
    let st = &s
        .load_account_states(std::slice::from_ref(&id))
        .await
        .unwrap()[0];
    assert_eq!(
        st.usage.as_ref().unwrap().availability(),
        Availability::Unavailable
    );
    assert!(st.cooldown_until_ms.is_some());

    // The window reset (earlier than the cooldown said): the next poll brings it back.
    mock.set_usage(
        &token,
        MockUsage {
            primary: Some(MockWindow::five_hour(0.0)),
            secondary: Some(MockWindow::weekly(20.0)),
            ..MockUsage::default()
        },
    );
    assert_eq!(p.run_once().await, vec![(id.clone(), PollOutcome::Changed)]);
    let st = &s
        .load_account_states(std::slice::from_ref(&id))
        .await
        .unwrap()[0];
    assert_eq!(st.cooldown_until_ms, None, "the stale cooldown is gone");
    assert_eq!(
        st.usage.as_ref().unwrap().availability(),
        Availability::Available
    );

    // A refused access token asks the refresh job for new tokens.
    mock.set_fault(&token, Fault::Unauthorized);
    assert_eq!(
        p.run_once().await,
        vec![(id.clone(), PollOutcome::Unauthorized)]
    );
    assert_eq!(
        s.accounts_needing_refresh().await.unwrap(),
        vec![id.clone()]
    );
}
