#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Each fault the mock upstream injects, handled as specified across the in-process cluster
//! (tests/common/cluster.rs: control plane on PostgreSQL, three gateways): failover before
//! the first byte, cooldowns from the routing policy, observations that reach every gateway
//! through the control plane, clean endings after the first byte. Needs
//! `POOLGATE_TEST_DATABASE_URL`.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, ClusterSpec, GATEWAYS, TOKENS, refresh_token_of};
use common::{KEY, request_id, sse_data, test_config};
use poolgate_core::{AccountStatus, ErrorClass, Provider, RoutingPolicy, StatusReason};
use poolgate_testkit::mock::{Fault, Pacing};
use serde_json::{Value, json};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Short local cooldowns (so a test sees them end), a short first-byte limit and a short
/// stream idle limit; the 429 ladder and auth cooldown keep their defaults.
fn fault_spec(accounts: Vec<(Provider, String)>) -> ClusterSpec {
    let mut gateway = test_config();
    gateway.first_byte_timeout = Duration::from_secs(1);
    gateway.keepalive_interval = Duration::from_millis(100);
    gateway.stream_idle_timeout = Duration::from_millis(1500);
    ClusterSpec {
        accounts,
        policy: Some(RoutingPolicy {
            cooldown_5xx_secs: 3,
            cooldown_network_secs: 2,
            ..RoutingPolicy::default()
        }),
        gateway,
    }
}

fn openai_accounts() -> Vec<(Provider, String)> {
    TOKENS
        .iter()
        .map(|t| (Provider::OpenAi, (*t).to_string()))
        .collect()
}

fn codex_accounts(n: usize) -> Vec<(Provider, String)> {
    (0..n)
        .map(|i| (Provider::Codex, format!("codex-at-{i}")))
        .collect()
}

fn responses_body(stream: bool) -> Value {
    json!({"model": "gpt-5.3-codex", "input": "hello there", "stream": stream})
}

fn chat_body(stream: bool) -> Value {
    json!({"model": "gpt-5.3-codex", "stream": stream,
           "messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "hello chat"}]})
}

/// The value of a counter or gauge line of a `/metrics` text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The text of a chat completion: the message of a JSON answer, or a stream's deltas.
fn reply_text(body: &str) -> String {
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        return v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    sse_data(body)
        .iter()
        .filter_map(|f| f["choices"][0]["delta"]["content"].as_str())
        .collect()
}

/// `retry-after` of a response, in seconds.
fn retry_after(r: &reqwest::Response) -> u64 {
    r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Sends `n` chats anchored on `session` through every gateway and checks none reached
/// account `avoided`.
async fn all_gateways_avoid(c: &Cluster, avoided: usize, session: &str, n: usize) {
    let before = c.mock.request_count(&c.tokens[avoided]);
    for gw in 0..GATEWAYS {
        for i in 0..n {
            let r = c.chat(gw, KEY, Some(session)).await;
            assert_eq!(r.status(), 200, "gateway {gw} request {i}");
            let r = c.chat(gw, KEY, None).await;
            assert_eq!(r.status(), 200, "gateway {gw} request {i}");
        }
    }
    assert_eq!(
        c.mock.request_count(&c.tokens[avoided]),
        before,
        "a gateway still routed to account {avoided}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures_and_deactivation_fail_over_and_take_the_account_out_everywhere() {
    let c = Cluster::start().await;
    let s0 = c.session_on(0).await;
    c.mock.set_fault(TOKENS[0], Fault::Unauthorized);

    let before = c.counts();
    let r = c.chat(1, KEY, Some(&s0)).await;
    assert_eq!(r.status(), 200, "gateway 1 fails over after the 401");
    let id = request_id(&r);
    let after = c.counts();
    assert_eq!(after[0], before[0] + 1);
    assert_eq!(after[1] + after[2], before[1] + before[2] + 1);
    let log = c.log(&id).await;
    assert_eq!(log.attempts.len(), 2, "{log:?}");
    assert_eq!(log.attempts[0].status, 401);
    assert_eq!(log.attempts[0].error_class, Some(ErrorClass::Auth));
    assert_eq!(log.attempts[1].status, 200);

    // An API key cannot be refreshed: the control plane marks the account auth-invalid and
    // the next delta takes it out on every gateway.
    let out = c
        .wait_account(0, |s| {
            s.account.status == AccountStatus::Unavailable
                && s.account.status_reason == Some(StatusReason::AuthInvalid)
        })
        .await;
    assert!(out, "{:?}", c.account_state(0).await.account);
    c.wait_all_applied().await;
    all_gateways_avoid(&c, 0, &s0, 4).await;
    for gw in 0..GATEWAYS {
        let m = c.metrics(gw).await;
        assert!(
            metric(
                &m,
                "poolgate_gateway_candidate_skips_total{reason=\"unavailable\"}"
            ) >= 1.0,
            "gateway {gw} does not skip the account as unavailable: {m}"
        );
    }
    // Gateways never refresh tokens themselves.
    assert!(c.mock.requests_to("/oauth/token").is_empty());

    // A deactivated account goes the same way, as deactivated.
    let s1 = c.session_on(1).await;
    c.mock.set_fault(TOKENS[1], Fault::Deactivated);
    let r = c.chat(2, KEY, Some(&s1)).await;
    assert_eq!(
        r.status(),
        200,
        "gateway 2 fails over after the deactivation"
    );
    let log = c.log(&request_id(&r)).await;
    assert_eq!(log.attempts[0].error_class, Some(ErrorClass::Deactivated));
    let out = c
        .wait_account(1, |s| {
            s.account.status == AccountStatus::Unavailable
                && s.account.status_reason == Some(StatusReason::Deactivated)
        })
        .await;
    assert!(out, "{:?}", c.account_state(1).await.account);
    c.wait_all_applied().await;
    all_gateways_avoid(&c, 1, &s1, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_codex_auth_failure_is_left_to_the_control_plane_to_refresh() {
    let c = Cluster::start_with(fault_spec(codex_accounts(2))).await;
    let s0 = c.session_on(0).await;
    c.mock.set_fault(&c.tokens[0], Fault::Unauthorized);

    let r = c.chat(2, KEY, Some(&s0)).await;
    assert_eq!(r.status(), 200, "gateway 2 fails over after the 401");
    let log = c.log(&request_id(&r)).await;
    assert_eq!(log.attempts.len(), 2, "{log:?}");
    assert_eq!(log.attempts[0].error_class, Some(ErrorClass::Auth));
    assert_eq!(log.account_id.as_deref(), Some(c.accounts[1].as_str()));

    // The report reached the control plane, which flags the account for a refresh (it has a
    // refresh token; the refresh itself is the leader's job, never a gateway's).
    let flagged = common::cluster::eventually(|| async {
        c.store
            .accounts_needing_refresh()
            .await
            .unwrap()
            .contains(&c.accounts[0])
    })
    .await;
    assert!(flagged, "the auth failure never reached the store");
    assert_eq!(
        c.account_state(0).await.account.status,
        AccountStatus::Active
    );
    // Until new tokens arrive the control plane cools the account for the policy's auth
    // cooldown, and that reaches every gateway, not only the one that saw the 401.
    let cooled = c
        .wait_account(0, |s| s.cooldown_until_ms.is_some_and(|u| u > now_ms()))
        .await;
    assert!(cooled, "{:?}", c.account_state(0).await);
    c.wait_all_applied().await;
    all_gateways_avoid(&c, 0, &s0, 2).await;
    assert!(c.mock.requests_to("/oauth/token").is_empty());
    assert_eq!(c.mock.request_count(&refresh_token_of(&c.tokens[0])), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_limits_cool_everywhere_and_an_exhausted_pool_answers_429() {
    let c = Cluster::start().await;
    let s0 = c.session_on(0).await;
    c.mock.set_fault(
        TOKENS[0],
        Fault::UsageLimit {
            resets_in_secs: 3000,
        },
    );
    let t0 = now_ms();
    let r = c.chat(1, KEY, Some(&s0)).await;
    assert_eq!(
        r.status(),
        200,
        "gateway 1 fails over after the usage limit"
    );
    let log = c.log(&request_id(&r)).await;
    assert_eq!(log.attempts[0].status, 429);
    assert_eq!(
        log.attempts[0].error_class,
        Some(ErrorClass::QuotaExhausted)
    );

    // Cooled until the reset the upstream announced, in the store and on every gateway.
    let cooled = c
        .wait_account(0, |s| {
            s.cooldown_until_ms
                .is_some_and(|u| (t0 + 2_990_000..=now_ms() + 3_000_000).contains(&u))
        })
        .await;
    assert!(cooled, "{:?}", c.account_state(0).await.cooldown_until_ms);
    let usage = c.account_state(0).await.usage.expect("an exhausted window");
    assert!(
        usage.primary.is_some_and(|w| w.used_percent >= 100.0),
        "{usage:?}"
    );
    c.wait_all_applied().await;
    all_gateways_avoid(&c, 0, &s0, 3).await;

    // The rest of the pool runs out too: the client gets 429 usage_limit_reached with
    // Retry-After at the earliest reset, never a 502/503.
    c.mock.set_fault(
        TOKENS[1],
        Fault::UsageLimit {
            resets_in_secs: 1200,
        },
    );
    c.mock.set_fault(
        TOKENS[2],
        Fault::UsageLimit {
            resets_in_secs: 600,
        },
    );
    let r = c.chat(2, KEY, None).await;
    assert_eq!(r.status(), 429);
    let secs = retry_after(&r);
    assert!((590..=600).contains(&secs), "{secs}");
    let id = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "usage_limit_reached", "{v}");
    assert_eq!(v["error"]["code"], "usage_limit_reached", "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    let log = c.log(&id).await;
    assert_eq!(log.status, 429);
    assert_eq!(log.error_class, Some(ErrorClass::QuotaExhausted));
    assert_eq!(log.attempts.len(), 2, "{log:?}");

    // Once the control plane has told everyone, no gateway even asks the upstream.
    for i in [1, 2] {
        let cooled = c.wait_account(i, |s| s.cooldown_until_ms.is_some()).await;
        assert!(cooled, "account {i} never cooled");
    }
    c.wait_all_applied().await;
    let before = c.counts();
    for gw in 0..GATEWAYS {
        let r = c.chat(gw, KEY, Some(&s0)).await;
        assert_eq!(r.status(), 429, "gateway {gw}");
        let secs = retry_after(&r);
        assert!((585..=600).contains(&secs), "gateway {gw}: {secs}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "usage_limit_reached");
    }
    assert_eq!(c.counts(), before, "an exhausted pool is answered locally");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_dropped_connections_cool_locally_for_the_policy_time() {
    let c = Cluster::start_with(fault_spec(openai_accounts())).await;
    let s0 = c.session_on(0).await;

    for (fault, status, class, reason) in [
        (
            Fault::ServerError { status: 502 },
            502,
            ErrorClass::Upstream5xx,
            "upstream_5xx",
        ),
        // Closed before any answer: a network failure.
        (
            Fault::DropConnection { after_events: 0 },
            0,
            ErrorClass::Network,
            "network",
        ),
    ] {
        c.mock.set_fault(TOKENS[0], fault.times(1));
        let before = c.counts();
        let r = c.chat(1, KEY, Some(&s0)).await;
        assert_eq!(r.status(), 200, "{reason}: gateway 1 fails over");
        let after = c.counts();
        assert_eq!(after[0], before[0] + 1, "{reason}");
        assert_eq!(after[1] + after[2], before[1] + before[2] + 1, "{reason}");
        let log = c.log(&request_id(&r)).await;
        assert_eq!(log.attempts.len(), 2, "{reason}: {log:?}");
        assert_eq!(log.attempts[0].status, status, "{reason}");
        assert_eq!(log.attempts[0].error_class, Some(class), "{reason}");
        let m = c.metrics(1).await;
        let series = format!("poolgate_gateway_cooldowns_total{{reason=\"{reason}\"}}");
        assert_eq!(metric(&m, &series), 1.0, "{m}");

        // Cooling on gateway 1: the conversation goes elsewhere for now.
        let r = c.chat(1, KEY, Some(&s0)).await;
        assert_eq!(r.status(), 200);
        assert_ne!(c.last_token(), TOKENS[0], "{reason}: not cooling");
        // Transient trouble stays local: gateway 2 still sends the conversation there.
        let r = c.chat(2, KEY, Some(&s0)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            c.last_token(),
            TOKENS[0],
            "{reason}: cooled beyond gateway 1"
        );
        // The policy's short cooldown ends: gateway 1 routes it back.
        let back = common::cluster::eventually(|| async {
            c.chat(1, KEY, Some(&s0)).await.status() == 200 && c.last_token() == TOKENS[0]
        })
        .await;
        assert!(back, "{reason}: the cooldown never ended");
    }
    // Neither kind is the control plane's business.
    assert_eq!(c.account_state(0).await.cooldown_until_ms, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_byte_fails_over_before_anything_is_sent() {
    let c = Cluster::start_with(fault_spec(openai_accounts())).await;
    for (target, stream) in [(0, false), (1, true)] {
        let session = c.session_on(target).await;
        // Ten times the gateways' first-byte limit.
        c.mock.set_fault(
            TOKENS[target],
            Fault::SlowFirstByte { delay_ms: 10_000 }.times(1),
        );
        let r = c
            .post(
                0,
                "/v1/chat/completions",
                &json!({"model": "gpt-4o", "stream": stream,
                        "messages": [{"role": "user", "content": "hello"}]}),
            )
            .header("session_id", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "stream={stream}");
        let id = request_id(&r);
        let body = r.text().await.unwrap();
        assert!(
            reply_text(&body).starts_with("echo:"),
            "stream={stream}: {body}"
        );
        let log = c.log(&id).await;
        assert_eq!(log.attempts.len(), 2, "stream={stream}: {log:?}");
        assert_eq!(log.attempts[0].account_id, c.accounts[target]);
        assert_eq!(log.attempts[0].status, 0);
        assert_eq!(log.attempts[0].error_class, Some(ErrorClass::Network));
        assert_eq!(log.attempts[1].status, 200);
        assert_eq!(log.error_class, None);
    }
    let m = c.metrics(0).await;
    assert_eq!(
        metric(&m, "poolgate_gateway_failovers_total{reason=\"network\"}"),
        2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_after_the_first_byte_keeps_alive_then_ends_cleanly_without_failover() {
    let c = Cluster::start_with(fault_spec(openai_accounts())).await;
    let s1 = c.session_on(1).await;
    let stream = |gw: usize| {
        c.post(
            gw,
            "/v1/chat/completions",
            &json!({"model": "gpt-4o", "stream": true,
                    "messages": [{"role": "user", "content": "hello"}]}),
        )
        .header("session_id", &s1)
        .send()
    };

    // A pause shorter than the idle limit: keep-alive comments, then the stream completes.
    c.mock.set_fault(
        TOKENS[1],
        Fault::StallMidStream {
            after_events: 2,
            stall_ms: 400,
        }
        .times(1),
    );
    let r = stream(2).await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    let pause = body
        .find(": keep-alive")
        .expect("keep-alive during the stall");
    assert!(
        !reply_text(&body[..pause]).is_empty(),
        "content before the stall: {body}"
    );
    assert_eq!(reply_text(&body), "echo: hello");
    let frames = sse_data(&body);
    assert_eq!(
        frames.last(),
        Some(&Value::String("[DONE]".into())),
        "{body}"
    );

    // Silent past the idle limit: the client gets what was relayed, then an error frame;
    // no other account is tried, the slot is freed and the log says what happened.
    c.mock.set_fault(
        TOKENS[1],
        Fault::StallMidStream {
            after_events: 2,
            stall_ms: 30_000,
        }
        .times(1),
    );
    let before = c.counts();
    let r = stream(2).await.unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let body = r.text().await.unwrap();
    let frames = sse_data(&body);
    assert!(reply_text(&body).starts_with("ec"), "{body}");
    assert!(body.contains(": keep-alive"), "{body}");
    let last = frames.last().expect("frames");
    assert_eq!(last["error"]["code"], "upstream_stream_error", "{body}");
    assert!(!frames.iter().any(|f| f == "[DONE]"), "{body}");
    let after = c.counts();
    assert_eq!(after[1], before[1] + 1);
    assert_eq!((after[0], after[2]), (before[0], before[2]), "no failover");
    let log = c.log(&id).await;
    assert_eq!(log.status, 200);
    assert_eq!(log.attempts.len(), 1);
    assert_eq!(log.error_class, Some(ErrorClass::Network));
    assert_eq!(log.account_id.as_deref(), Some(c.accounts[1].as_str()));
    let freed = common::cluster::eventually(|| async {
        let m = c.metrics(2).await;
        let series = format!(
            "poolgate_gateway_account_inflight{{account=\"{}\"}}",
            c.accounts[1]
        );
        m.contains(&format!("{series} 0")) && metric(&m, "poolgate_gateway_requests_active") == 0.0
    })
    .await;
    assert!(freed, "{}", c.metrics(2).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_stream_quota_failures_fail_over_early_and_cool_the_account_everywhere_late() {
    let c = Cluster::start_with(fault_spec(codex_accounts(3))).await;
    let s0 = c.session_on(0).await;
    let s1 = c.session_on(1).await;
    let streamed = |gw: usize, session: &str, path: &str, body: Value| {
        c.post(gw, path, &body).header("session-id", session).send()
    };

    // Inside the preflight window (only lifecycle events so far): silently replayed on
    // another account.
    c.mock.set_fault(
        &c.tokens[0],
        Fault::InStreamFailure {
            code: "usage_limit_reached".into(),
            resets_in_secs: Some(1800),
        }
        .times(1),
    );
    let t0 = now_ms();
    let r = streamed(1, &s0, "/v1/responses", responses_body(true))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let body = r.text().await.unwrap();
    assert!(body.contains("event: response.completed"), "{body}");
    assert!(!body.contains("response.failed"), "{body}");
    let log = c.log(&id).await;
    assert_eq!(log.attempts.len(), 2, "{log:?}");
    assert_eq!(
        log.attempts[0].error_class,
        Some(ErrorClass::QuotaExhausted)
    );
    assert_eq!(log.error_class, None);
    let cooled = c
        .wait_account(0, |s| {
            s.cooldown_until_ms
                .is_some_and(|u| (t0 + 1_790_000..=now_ms() + 1_800_000).contains(&u))
        })
        .await;
    assert!(cooled, "{:?}", c.account_state(0).await.cooldown_until_ms);

    // After content reached the client: no failover, the failure event reaches the client
    // as the upstream sent it, and the account is still reported and cooled everywhere.
    c.mock.set_pacing(
        &c.tokens[1],
        Pacing {
            deltas: Some(3),
            delta_delay_ms: Some(50),
        },
    );
    c.mock.set_fault(
        &c.tokens[1],
        Fault::FailureAfterContent {
            code: "usage_limit_reached".into(),
            resets_in_secs: Some(2400),
        }
        .times(1),
    );
    let before = c.counts();
    let t1 = now_ms();
    let r = streamed(2, &s1, "/v1/responses", responses_body(true))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let body = r.text().await.unwrap();
    let events = sse_data(&body);
    let first_delta = events
        .iter()
        .position(|e| e["type"] == "response.output_text.delta")
        .expect("content first");
    let failed = events
        .iter()
        .position(|e| e["type"] == "response.failed")
        .expect("the failure event");
    assert!(first_delta < failed);
    assert!(!body.contains("response.completed"), "{body}");
    let after = c.counts();
    assert_eq!(after[1], before[1] + 1);
    assert_eq!((after[0], after[2]), (before[0], before[2]), "no failover");
    let log = c.log(&id).await;
    assert_eq!(log.attempts.len(), 1, "{log:?}");
    assert_eq!(log.error_class, Some(ErrorClass::QuotaExhausted));
    let cooled = c
        .wait_account(1, |s| {
            s.cooldown_until_ms
                .is_some_and(|u| (t1 + 2_390_000..=now_ms() + 2_400_000).contains(&u))
        })
        .await;
    assert!(cooled, "{:?}", c.account_state(1).await.cooldown_until_ms);
    c.wait_all_applied().await;
    all_gateways_avoid(&c, 1, &s1, 2).await;

    // The same through the chat translation, with a rate limit: reported as one (the 429
    // ladder's first step), reaching the store too.
    c.mock.set_pacing(
        &c.tokens[2],
        Pacing {
            deltas: Some(3),
            delta_delay_ms: Some(50),
        },
    );
    c.mock.set_fault(
        &c.tokens[2],
        Fault::FailureAfterContent {
            code: "rate_limit_exceeded".into(),
            resets_in_secs: None,
        }
        .times(1),
    );
    let t2 = now_ms();
    let r = c
        .post(0, "/v1/chat/completions", &chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let frames = sse_data(&r.text().await.unwrap());
    assert!(
        frames
            .iter()
            .any(|f| f["choices"][0]["delta"]["content"].is_string()),
        "{frames:?}"
    );
    assert!(
        frames
            .iter()
            .any(|f| f["error"]["code"] == "rate_limit_exceeded"),
        "{frames:?}"
    );
    let cooled = c
        .wait_account(2, |s| {
            s.cooldown_until_ms
                .is_some_and(|u| (t2 + 44_000..=now_ms() + 45_000).contains(&u))
        })
        .await;
    assert!(cooled, "{:?}", c.account_state(2).await.cooldown_until_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_fails_over_and_cools_only_locally() {
    let c = Cluster::start_with(fault_spec(openai_accounts())).await;
    let s0 = c.session_on(0).await;
    c.mock.set_fault(TOKENS[0], Fault::Challenge.times(1));
    let r = c.chat(1, KEY, Some(&s0)).await;
    assert_eq!(r.status(), 200, "a challenge page is never relayed");
    let log = c.log(&request_id(&r)).await;
    assert_eq!(log.attempts.len(), 2, "{log:?}");
    assert_eq!(log.attempts[0].status, 403);
    // The classifier counts a challenge as throttling, cooled like transient upstream trouble.
    assert_eq!(log.attempts[0].error_class, Some(ErrorClass::RateLimited));
    let m = c.metrics(1).await;
    assert_eq!(
        metric(&m, "poolgate_gateway_failovers_total{reason=\"challenge\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "poolgate_gateway_cooldowns_total{reason=\"upstream_5xx\"}"
        ),
        1.0,
        "{m}"
    );
    let r = c.chat(1, KEY, Some(&s0)).await;
    assert_eq!(r.status(), 200);
    assert_ne!(c.last_token(), TOKENS[0], "cooling on gateway 1");
    // Not an account problem: the control plane is not told (the log of the same request
    // reached the store, and the observation would have travelled before it).
    let s = c.account_state(0).await;
    assert_eq!(s.cooldown_until_ms, None);
    assert_eq!(s.account.status, AccountStatus::Active);
    let r = c.chat(2, KEY, Some(&s0)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(c.last_token(), TOKENS[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codex_accounts_serve_responses_and_chat_with_the_codex_headers() {
    let c = Cluster::start_with(fault_spec(codex_accounts(2))).await;
    let session = "sess-codex-cluster-1";

    // Streamed Responses through gateway 0.
    let r = c
        .post(0, "/v1/responses", &responses_body(true))
        .header("session-id", session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    let text: String = sse_data(&body)
        .iter()
        .filter(|v| v["type"] == "response.output_text.delta")
        .filter_map(|v| v["delta"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, "echo: hello there");
    assert!(body.contains("event: response.completed"));
    let account = c.tokens.iter().position(|t| *t == c.last_token()).unwrap();

    // Not streamed, through gateway 1: aggregated from the backend's stream, and on the
    // same account (every replica agrees on the conversation's account).
    let r = c
        .post(1, "/v1/responses", &responses_body(false))
        .header("session-id", session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(c.last_token(), c.tokens[account]);

    // Chat Completions through gateway 2, translated both ways, streamed and not.
    let r = c
        .post(2, "/v1/chat/completions", &chat_body(false))
        .header("session-id", session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "echo: hello chat");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let r = c
        .post(2, "/v1/chat/completions", &chat_body(true))
        .header("session-id", session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let frames = sse_data(&r.text().await.unwrap());
    let content: String = frames
        .iter()
        .filter_map(|f| f["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "echo: hello chat");
    assert_eq!(frames.last(), Some(&Value::String("[DONE]".into())));

    // Upstream, every request followed the Codex rules on the conversation's account.
    let reqs = c.mock.requests_to("/backend-api/codex/responses");
    assert_eq!(reqs.len(), 4);
    for up in &reqs {
        assert_eq!(
            up.header("authorization"),
            Some(format!("Bearer {}", c.tokens[account]).as_str())
        );
        assert_eq!(
            up.header("chatgpt-account-id"),
            Some(format!("ws-{account}").as_str())
        );
        assert_eq!(up.header("originator"), Some("codex_cli_rs"));
        assert_eq!(up.header("session-id"), Some(session));
        assert_eq!(
            up.header("x-codex-window-id"),
            Some(format!("{session}:0").as_str())
        );
        let b = up.json().unwrap();
        assert_eq!(b["stream"], true);
        assert_eq!(b["store"], false);
        assert!(!b["instructions"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        reqs[2].json().unwrap()["instructions"],
        "Be brief.",
        "the chat system message became the instructions"
    );
}
