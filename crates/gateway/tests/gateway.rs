#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use poolgate_core::report::ObservationKind;
use poolgate_core::{ErrorClass, KeyStatus, UsageSnapshot, UsageWindow};
use poolgate_testkit::mock::{Fault, Pacing};
use serde_json::{Value, json};

fn responses_body(stream: bool) -> Value {
    json!({
        "model": "gpt-5.3-codex",
        "input": "hello there",
        "stream": stream,
        "temperature": 0.2,
        "max_output_tokens": 100,
    })
}

fn chat_body(stream: bool) -> Value {
    json!({
        "model": "gpt-5.3-codex",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello chat"}
        ],
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

async fn one_codex() -> Harness {
    Harness::start(test_config(), |m| {
        full(
            1,
            vec![codex_account("acc_a", "tok-a", &m.codex_base_url(), 0)],
            vec![platform_key("key_1", KEY)],
        )
    })
    .await
}

#[tokio::test]
async fn readiness_health_and_metrics() {
    let h = Harness::empty(test_config()).await;
    let r = h.http.get(h.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let r = h.http.get(h.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = h.http.get(h.url("/health")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "ok");
    // Before any snapshot the API answers 503 in OpenAI shape.
    let r = h
        .post("/v1/responses", &responses_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "gateway_not_ready");

    h.source.push(full(
        3,
        vec![codex_account("acc_a", "tok-a", &h.mock.codex_base_url(), 0)],
        vec![platform_key("key_1", KEY)],
    ));
    h.wait_version(3).await;
    let r = h.http.get(h.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = h
        .post("/v1/responses", &responses_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let m = h.metrics().await;
    for family in [
        "poolgate_gateway_requests_total{route=\"responses\",status=\"200\",protocol=\"openai_responses\",translation=\"none\"}",
        "poolgate_gateway_upstream_attempts_total{provider=\"codex\",outcome=\"success\"}",
        "poolgate_gateway_upstream_latency_seconds_bucket",
        "poolgate_gateway_account_inflight{account=\"acc_a\"} 0",
        "poolgate_gateway_snapshot_version 3",
        "poolgate_gateway_snapshot_age_seconds",
        "poolgate_gateway_snapshot_stream_connected 1",
        "poolgate_gateway_report_dropped_total 0",
    ] {
        assert!(m.contains(family), "missing {family}\n{m}");
    }
    h.stop().await;
}

/// The client port speaks HTTP/1.1 and h2c (prior knowledge) on one socket, told apart by a
/// look at the first bytes: request lines trickling in byte by byte (`POST` starts like the
/// h2 preface, so its first bytes do not decide), an h2c client and a connection that closes
/// half-way through the preface are each handled.
#[tokio::test]
async fn http1_and_h2c_share_the_client_port() {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let h = Harness::empty(test_config()).await;
    let addr = h.url("").trim_start_matches("http://").to_string();

    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"PR").await.unwrap();
    drop(s);

    // Sent a byte at a time, each request is read whole; the first answers 200, the second
    // (whose `P` could still begin the h2 preface) the gateway's 405, over HTTP/1.1.
    let trickle = |request: &'static [u8]| {
        let addr = addr.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            for (i, b) in request.iter().enumerate() {
                s.write_all(&[*b]).await.unwrap();
                if i < 4 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let mut answer = String::new();
            s.read_to_string(&mut answer).await.unwrap();
            answer
        }
    };
    let answer = trickle(b"GET /health HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");
    let answer = trickle(
        b"POST /health HTTP/1.1\r\nhost: gw\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("method_not_allowed"), "{answer}");

    let s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{addr}/health"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let r = send.send_request(req).await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, http::Version::HTTP_2)
    );
    let body = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
    // Unknown paths get the gateway's error in HTTP/2 too.
    let req = http::Request::get(format!("http://{addr}/nowhere"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(send.send_request(req).await.unwrap().status(), 404);
}

#[tokio::test]
async fn platform_key_authentication() {
    let h = Harness::start(test_config(), |m| {
        let mut disabled = platform_key("key_off", "pgk_disabled");
        disabled.status = KeyStatus::Disabled;
        let mut expired = platform_key("key_old", "pgk_expired");
        expired.spec.expires_at_ms = Some(1_000);
        full(
            1,
            vec![codex_account("acc_a", "tok-a", &m.codex_base_url(), 0)],
            vec![platform_key("key_1", KEY), disabled, expired],
        )
    })
    .await;
    let models = h.url("/v1/models");
    for (name, value) in [
        ("authorization", format!("Bearer {KEY}")),
        ("x-api-key", KEY.to_string()),
        ("api-key", KEY.to_string()),
    ] {
        let r = h
            .http
            .get(&models)
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
    }
    let cases = [
        (None, 401, "missing_api_key"),
        (Some("pgk_unknown"), 401, "invalid_api_key"),
        (Some("pgk_disabled"), 403, "api_key_disabled"),
        (Some("pgk_expired"), 403, "api_key_expired"),
    ];
    for (key, status, code) in cases {
        let mut req = h
            .http
            .post(h.url("/v1/responses"))
            .body(responses_body(false).to_string());
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), status, "{key:?}");
        let id = request_id(&r);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code);
        assert_eq!(
            v["error"]["type"],
            if status == 401 {
                "authentication_error"
            } else {
                "permission_error"
            }
        );
        let log = h.log(&id).await;
        assert_eq!(log.status, status);
        assert_eq!(log.error_class, Some(ErrorClass::Auth));
    }
    assert!(
        h.mock
            .requests_to("/backend-api/codex/responses")
            .is_empty()
    );
    h.stop().await;
}

#[tokio::test]
async fn codex_responses_streaming_follows_the_codex_rules() {
    let h = one_codex().await;
    let r = h
        .post("/v1/responses", &responses_body(true))
        .header("x-api-key", "pgk_client_secret")
        .header("x-stainless-os", "Linux")
        .header("session_id", "sess-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(r.headers().get("x-codex-turn-state").is_some());
    let id = request_id(&r);
    let body = text_of(r).await;
    assert!(body.contains("event: response.completed"), "{body}");
    let text: String = sse_data(&body)
        .iter()
        .filter(|v| v["type"] == "response.output_text.delta")
        .map(|v| v["delta"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "echo: hello there");

    let reqs = h.mock.requests_to("/backend-api/codex/responses");
    assert_eq!(reqs.len(), 1);
    let up = &reqs[0];
    assert_eq!(up.header("authorization"), Some("Bearer tok-a"));
    assert_eq!(up.header("chatgpt-account-id"), Some("ws-acc_a"));
    assert_eq!(up.header("originator"), Some("codex_cli_rs"));
    assert!(
        up.header("user-agent")
            .unwrap()
            .starts_with("codex_cli_rs/")
    );
    assert_eq!(up.header("session-id"), Some("sess-123"));
    assert_eq!(up.header("x-codex-window-id"), Some("sess-123:0"));
    assert_eq!(up.header("accept"), Some("text/event-stream"));
    assert!(up.header("x-api-key").is_none());
    assert!(up.header("x-stainless-os").is_none());
    let b = up.json().unwrap();
    assert_eq!(b["stream"], true);
    assert_eq!(b["store"], false);
    assert!(!b["instructions"].as_str().unwrap().is_empty());
    assert!(b.get("temperature").is_none());
    assert!(b.get("max_output_tokens").is_none());
    assert_eq!(b["input"][0]["content"][0]["text"], "hello there");
    assert_eq!(b["prompt_cache_key"], "sess-123");

    let log = h.log(&id).await;
    assert_eq!(log.status, 200);
    assert_eq!(log.account_id.as_deref(), Some("acc_a"));
    assert_eq!(log.attempts.len(), 1);
    assert_eq!(log.protocol, "openai_responses");
    assert_eq!(log.model.as_deref(), Some("gpt-5.3-codex"));
    assert_eq!(log.key_id.as_deref(), Some("key_1"));
    assert_eq!(log.node, "gw-test");
    assert!(log.input_tokens > 0 && log.output_tokens > 0, "{log:?}");
    assert!(log.ttfb_ms.is_some());
    assert_eq!(log.error_class, None);
    h.stop().await;
}

#[tokio::test]
async fn codex_responses_non_streaming_is_aggregated() {
    let h = one_codex().await;
    let r = h
        .post("/v1/responses", &responses_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    let text = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap().clone())
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect::<String>();
    assert_eq!(text, "echo: hello there");
    // The backend only streams: the upstream request streamed all the same.
    let up = &h.mock.requests_to("/backend-api/codex/responses")[0];
    assert_eq!(up.json().unwrap()["stream"], true);
    let log = h.log(&id).await;
    assert!(log.output_tokens > 0);
    h.stop().await;
}

#[tokio::test]
async fn chat_completions_are_translated_for_codex() {
    let h = one_codex().await;
    let r = h
        .post("/v1/chat/completions", &chat_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "echo: hello chat");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let log = h.log(&id).await;
    assert_eq!(log.protocol, "openai_chat");

    let r = h
        .post("/v1/chat/completions", &chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = text_of(r).await;
    let frames = sse_data(&body);
    assert_eq!(frames.last().unwrap(), &Value::String("[DONE]".into()));
    let content: String = frames
        .iter()
        .filter_map(|f| f["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "echo: hello chat");
    assert!(
        frames
            .iter()
            .any(|f| f["usage"]["completion_tokens"].as_u64().is_some())
    );
    assert!(
        frames
            .iter()
            .all(|f| f.is_string() || f["object"] == "chat.completion.chunk")
    );
    // Upstream saw a Codex Responses request with the system message as instructions.
    let reqs = h.mock.requests_to("/backend-api/codex/responses");
    let b = reqs.last().unwrap().json().unwrap();
    assert_eq!(b["instructions"], "Be brief.");
    assert!(b.get("stream_options").is_none());
    h.stop().await;
}

#[tokio::test]
async fn openai_accounts_get_the_original_bytes() {
    let h = Harness::start(test_config(), |m| {
        full(
            1,
            vec![openai_account(
                "acc_o",
                "sk-openai",
                &m.openai_base_url(),
                0,
            )],
            vec![platform_key("key_1", KEY)],
        )
    })
    .await;
    // Odd spacing and key order must survive: nothing is parsed and written again.
    let raw = "{ \"messages\": [{\"role\":\"user\",\"content\":\"hi openai\"}],   \"model\": \"gpt-4o\" }";
    let r = h
        .http
        .post(h.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .body(raw)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    let up = &h.mock.requests_to("/v1/chat/completions")[0];
    assert_eq!(up.body.as_ref(), raw.as_bytes());
    assert_eq!(up.header("authorization"), Some("Bearer sk-openai"));
    let log = h.log(&id).await;
    assert!(
        log.input_tokens > 0,
        "usage read from the body's tail: {log:?}"
    );

    let stream =
        json!({"model": "gpt-4o", "stream": true, "messages": [{"role": "user", "content": "s"}]});
    let r = h
        .post("/v1/chat/completions", &stream)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = text_of(r).await;
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");

    let responses = json!({"model": "gpt-4o", "input": "resp", "stream": false});
    let r = h.post("/v1/responses", &responses).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        h.mock.requests_to("/v1/responses")[0].body.as_ref(),
        responses.to_string().as_bytes()
    );
    h.stop().await;
}

#[tokio::test]
async fn models_lists_both_shapes_with_an_etag() {
    let h = one_codex().await;
    let r = h
        .http
        .get(h.url("/v1/models"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "gpt-5.3-codex")
    );
    assert!(
        v["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["slug"] == "gpt-5.3-codex")
    );
    let r = h
        .http
        .get(h.url("/v1/models"))
        .bearer_auth(KEY)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    h.stop().await;
}

/// Two Codex accounts: `acc_a` (priority 0, tried first) and `acc_b`.
async fn two_codex() -> Harness {
    Harness::start(test_config(), |m| {
        full(
            1,
            vec![
                codex_account("acc_a", "tok-a", &m.codex_base_url(), 0),
                codex_account("acc_b", "tok-b", &m.codex_base_url(), 1),
            ],
            vec![platform_key("key_1", KEY)],
        )
    })
    .await
}

async fn expect_failover(h: &Harness, stream: bool) -> poolgate_core::RequestLog {
    let r = h
        .post("/v1/responses", &responses_body(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let body = text_of(r).await;
    assert!(
        body.contains("echo: hello") || body.contains("echo"),
        "{body}"
    );
    let log = h.log(&id).await;
    assert_eq!(log.account_id.as_deref(), Some("acc_b"), "{log:?}");
    assert_eq!(log.attempts.len(), 2, "{log:?}");
    assert_eq!(log.attempts[0].account_id, "acc_a");
    assert_eq!(log.attempts[1].status, 200);
    assert_eq!(log.status, 200);
    log
}

#[tokio::test]
async fn fails_over_on_rate_limit_and_reports_it() {
    let h = two_codex().await;
    h.mock.set_fault(
        "tok-a",
        Fault::RateLimited {
            retry_after_secs: 120,
        }
        .times(1),
    );
    let log = expect_failover(&h, false).await;
    assert_eq!(log.attempts[0].status, 429);
    assert_eq!(log.attempts[0].error_class, Some(ErrorClass::RateLimited));
    let found = h
        .sink
        .wait_for(Duration::from_secs(5), |b| {
            b.iter().flat_map(|b| &b.observations).any(|o| {
                o.account_id == "acc_a" && matches!(o.kind, ObservationKind::RateLimited { .. })
            })
        })
        .await;
    assert!(found, "{:?}", h.sink.observations());
    // The account now cools down locally: the next request goes straight to acc_b.
    let r = h
        .post("/v1/responses", &responses_body(false))
        .send()
        .await
        .unwrap();
    let log = h.log(&request_id(&r)).await;
    assert_eq!(log.attempts.len(), 1);
    assert_eq!(log.account_id.as_deref(), Some("acc_b"));
    let m = h.metrics().await;
    assert!(
        m.contains("poolgate_gateway_failovers_total{reason=\"rate_limited\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("poolgate_gateway_cooldowns_total{reason=\"rate_limited\"} 1"),
        "{m}"
    );
    h.stop().await;
}

#[tokio::test]
async fn fails_over_on_server_errors_and_network_failures() {
    let h = two_codex().await;
    h.mock
        .set_fault("tok-a", Fault::ServerError { status: 503 }.times(1));
    let log = expect_failover(&h, true).await;
    assert_eq!(log.attempts[0].status, 503);
    assert_eq!(log.attempts[0].error_class, Some(ErrorClass::Upstream5xx));
    h.stop().await;

    // An account whose upstream refuses connections.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/backend-api/codex", dead.local_addr().unwrap());
    drop(dead);
    let h = Harness::start(test_config(), move |m| {
        full(
            1,
            vec![
                codex_account("acc_a", "tok-a", &dead_url, 0),
                codex_account("acc_b", "tok-b", &m.codex_base_url(), 1),
            ],
            vec![platform_key("key_1", KEY)],
        )
    })
    .await;
    let log = expect_failover(&h, true).await;
    assert_eq!(log.attempts[0].status, 0);
    assert_eq!(log.attempts[0].error_class, Some(ErrorClass::Network));
    h.stop().await;
}

#[tokio::test]
async fn in_stream_quota_failure_before_content_fails_over() {
    let h = two_codex().await;
    h.mock.set_fault(
        "tok-a",
        Fault::InStreamFailure {
            code: "usage_limit_reached".into(),
            resets_in_secs: Some(1800),
        }
        .times(1),
    );
    let log = expect_failover(&h, true).await;
    assert_eq!(
        log.attempts[0].error_class,
        Some(ErrorClass::QuotaExhausted)
    );
    let found = h
        .sink
        .wait_for(Duration::from_secs(5), |b| {
            b.iter().flat_map(|b| &b.observations).any(|o| {
                o.account_id == "acc_a" && matches!(o.kind, ObservationKind::QuotaExhausted { .. })
            })
        })
        .await;
    assert!(found);
    // The retried request is a failover: a fresh session, no affinity to acc_a.
    let reqs = h.mock.requests_to("/backend-api/codex/responses");
    assert_eq!(reqs.len(), 2);
    assert_ne!(reqs[0].header("session-id"), reqs[1].header("session-id"));
    h.stop().await;
}

#[tokio::test]
async fn a_drop_after_the_first_byte_ends_cleanly_without_failover() {
    let h = two_codex().await;
    h.mock
        .set_fault("tok-a", Fault::DropConnection { after_events: 6 }.times(1));
    let r = h
        .post("/v1/responses", &responses_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let body = text_of(r).await;
    assert!(body.contains("response.output_text.delta"), "{body}");
    assert!(body.contains("event: error"), "{body}");
    assert!(body.contains("upstream_stream_error"), "{body}");
    assert!(!body.contains("response.completed"));
    let log = h.log(&id).await;
    assert_eq!(log.attempts.len(), 1, "no failover after the first byte");
    assert_eq!(log.error_class, Some(ErrorClass::Network));
    assert_eq!(h.mock.request_count("tok-b"), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_quota_failure_after_the_first_byte_is_reported_and_cools_the_account() {
    let h = two_codex().await;
    // Paced, so the content reaches the client before the failure arrives.
    h.mock.set_pacing(
        "tok-a",
        Pacing {
            deltas: Some(3),
            delta_delay_ms: Some(50),
        },
    );
    h.mock.set_fault(
        "tok-a",
        Fault::FailureAfterContent {
            code: "usage_limit_reached".into(),
            resets_in_secs: Some(1800),
        }
        .times(1),
    );
    let before = now_ms();
    let r = h
        .post("/v1/responses", &responses_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let body = text_of(r).await;
    assert!(body.contains("response.output_text.delta"), "{body}");
    assert!(body.contains("event: response.failed"), "{body}");
    assert!(!body.contains("response.completed"), "{body}");
    let log = h.log(&id).await;
    assert_eq!(log.attempts.len(), 1, "no failover after the first byte");
    assert_eq!(log.error_class, Some(ErrorClass::QuotaExhausted));
    assert_eq!(h.mock.request_count("tok-b"), 0);
    // Reported like a usage_limit_reached before the first byte: quota, with its reset.
    let found = h
        .sink
        .wait_for(Duration::from_secs(5), |b| {
            b.iter().flat_map(|b| &b.observations).any(|o| {
                o.account_id == "acc_a"
                    && matches!(o.kind, ObservationKind::QuotaExhausted { until_ms }
                        if (before + 1_799_000..=now_ms() + 1_800_000).contains(&until_ms))
            })
        })
        .await;
    assert!(found, "{:?}", h.sink.observations());
    // And the account cools down here at once: the next request goes to acc_b.
    let r = h
        .post("/v1/responses", &responses_body(false))
        .send()
        .await
        .unwrap();
    let log = h.log(&request_id(&r)).await;
    assert_eq!(log.account_id.as_deref(), Some("acc_b"));
    assert_eq!(log.attempts.len(), 1);
    let m = h.metrics().await;
    assert!(
        m.contains("poolgate_gateway_cooldowns_total{reason=\"quota_exhausted\"} 1"),
        "{m}"
    );

    // The same through the chat translation, with a rate limit: reported as one.
    h.mock.set_pacing(
        "tok-b",
        Pacing {
            deltas: Some(3),
            delta_delay_ms: Some(50),
        },
    );
    h.mock.set_fault(
        "tok-b",
        Fault::FailureAfterContent {
            code: "rate_limit_exceeded".into(),
            resets_in_secs: None,
        }
        .times(1),
    );
    let r = h
        .post("/v1/chat/completions", &chat_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let frames = sse_data(&text_of(r).await);
    assert!(
        frames
            .iter()
            .any(|f| f["choices"][0]["delta"]["content"].is_string())
    );
    // The translator's error frame (followed by its `[DONE]`), no finish reason.
    assert!(
        frames
            .iter()
            .any(|f| f["error"]["code"] == "rate_limit_exceeded"),
        "{frames:?}"
    );
    assert!(
        !frames
            .iter()
            .any(|f| f["choices"][0]["finish_reason"].is_string()),
        "{frames:?}"
    );
    let found = h
        .sink
        .wait_for(Duration::from_secs(5), |b| {
            b.iter().flat_map(|b| &b.observations).any(|o| {
                o.account_id == "acc_b" && matches!(o.kind, ObservationKind::RateLimited { .. })
            })
        })
        .await;
    assert!(found, "{:?}", h.sink.observations());
    h.stop().await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test]
async fn a_pool_out_of_quota_answers_usage_limit_reached() {
    let h = Harness::start(test_config(), |m| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let exhausted = |resets_in_ms: i64| UsageSnapshot {
            primary: Some(UsageWindow {
                used_percent: 100.0,
                window_minutes: 300,
                resets_at_ms: Some(now + resets_in_ms),
            }),
            secondary: None,
            extra: vec![],
            captured_at_ms: now,
        };
        let mut a = codex_account("acc_a", "tok-a", &m.codex_base_url(), 0);
        a.usage = Some(exhausted(3_600_000));
        let mut b = codex_account("acc_b", "tok-b", &m.codex_base_url(), 1);
        b.usage = Some(exhausted(7_200_000));
        full(1, vec![a, b], vec![platform_key("key_1", KEY)])
    })
    .await;
    let r = h
        .post("/v1/responses", &responses_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3590..=3600).contains(&retry), "{retry}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "usage_limit_reached");
    assert!(h.mock.requests().is_empty());
    h.stop().await;

    // Every account answering usage_limit_reached ends the same way.
    let h = two_codex().await;
    h.mock.set_fault(
        "tok-a",
        Fault::UsageLimit {
            resets_in_secs: 900,
        },
    );
    h.mock.set_fault(
        "tok-b",
        Fault::UsageLimit {
            resets_in_secs: 600,
        },
    );
    let r = h
        .post("/v1/responses", &responses_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((590..=600).contains(&retry), "{retry}");
    let id = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "usage_limit_reached");
    let log = h.log(&id).await;
    assert_eq!(log.attempts.len(), 2);
    assert_eq!(log.error_class, Some(ErrorClass::QuotaExhausted));
    h.stop().await;
}

#[tokio::test]
async fn the_same_anchor_sticks_to_one_account() {
    let h = Harness::start(test_config(), |m| {
        full(
            1,
            (0..4)
                .map(|i| {
                    codex_account(
                        &format!("acc_{i}"),
                        &format!("tok-{i}"),
                        &m.codex_base_url(),
                        0,
                    )
                })
                .collect(),
            vec![platform_key("key_1", KEY)],
        )
    })
    .await;
    let mut picked = std::collections::HashMap::new();
    for conv in 0..6 {
        let mut accounts = std::collections::HashSet::new();
        for _ in 0..4 {
            let r = h
                .post("/v1/responses", &responses_body(false))
                .header("session-id", format!("conversation-{conv}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let log = h.log(&request_id(&r)).await;
            accounts.insert(log.account_id.unwrap());
        }
        assert_eq!(accounts.len(), 1, "conversation {conv} moved: {accounts:?}");
        picked.insert(conv, accounts.into_iter().next().unwrap());
    }
    let distinct: std::collections::HashSet<_> = picked.values().collect();
    assert!(
        distinct.len() >= 2,
        "anchors spread over the pool: {picked:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn the_inflight_cap_sends_the_next_request_elsewhere() {
    let h = Harness::start(test_config(), |m| {
        let mut a = codex_account("acc_a", "tok-a", &m.codex_base_url(), 0);
        a.account.spec.max_inflight = 1;
        full(
            1,
            vec![a, codex_account("acc_b", "tok-b", &m.codex_base_url(), 1)],
            vec![platform_key("key_1", KEY)],
        )
    })
    .await;
    h.mock.set_pacing(
        "tok-a",
        Pacing {
            deltas: Some(20),
            delta_delay_ms: Some(100),
        },
    );
    let slow = h
        .post("/v1/responses", &responses_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    let m = h.metrics().await;
    assert!(
        m.contains("poolgate_gateway_account_inflight{account=\"acc_a\"} 1"),
        "{m}"
    );
    let r = h
        .post("/v1/responses", &responses_body(false))
        .send()
        .await
        .unwrap();
    let log = h.log(&request_id(&r)).await;
    assert_eq!(log.account_id.as_deref(), Some("acc_b"));
    assert_eq!(log.attempts.len(), 1);
    let body = text_of(slow).await;
    assert!(body.contains("response.completed"));
    let m = h.metrics().await;
    assert!(
        m.contains("poolgate_gateway_account_inflight{account=\"acc_a\"} 0"),
        "{m}"
    );
    h.stop().await;
}

#[tokio::test]
async fn keep_alive_comments_flow_while_upstream_stalls() {
    let mut cfg = test_config();
    cfg.keepalive_interval = Duration::from_millis(200);
    let h = Harness::start(cfg, |m| {
        full(
            1,
            vec![codex_account("acc_a", "tok-a", &m.codex_base_url(), 0)],
            vec![platform_key("key_1", KEY)],
        )
    })
    .await;
    h.mock.set_fault(
        "tok-a",
        Fault::StallMidStream {
            after_events: 4,
            stall_ms: 1_000,
        },
    );
    let r = h
        .post("/v1/responses", &responses_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body = text_of(r).await;
    let stall = body
        .find(": keep-alive")
        .expect("keep-alive during the stall");
    assert!(body[stall..].contains("response.completed"), "{body}");
    // Comments only between frames: every event still parses.
    for v in sse_data(&body) {
        assert!(v.is_object(), "{v}");
    }
    h.stop().await;
}

#[tokio::test]
async fn a_client_disconnect_cancels_the_upstream_and_frees_the_slot() {
    let h = one_codex().await;
    h.mock.set_pacing(
        "tok-a",
        Pacing {
            deltas: Some(50),
            delta_delay_ms: Some(200),
        },
    );
    let mut r = h
        .post("/v1/responses", &responses_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    assert!(
        h.metrics()
            .await
            .contains("poolgate_gateway_account_inflight{account=\"acc_a\"} 1")
    );
    drop(r);
    let log = h.log(&id).await;
    assert_eq!(log.error_class, Some(ErrorClass::Cancelled));
    assert!(
        log.duration_ms < 5_000,
        "cancelled long before the 10 s stream would end"
    );
    let m = h.metrics().await;
    assert!(
        m.contains("poolgate_gateway_account_inflight{account=\"acc_a\"} 0"),
        "{m}"
    );
    assert!(m.contains("poolgate_gateway_requests_active 0"), "{m}");
    h.stop().await;
}

#[tokio::test]
async fn body_limit_and_zstd_bodies() {
    let mut cfg = test_config();
    cfg.max_body_bytes = 2048;
    let h = Harness::start(cfg, |m| {
        full(
            1,
            vec![codex_account("acc_a", "tok-a", &m.codex_base_url(), 0)],
            vec![platform_key("key_1", KEY)],
        )
    })
    .await;
    let big = json!({"model": "gpt-5.3-codex", "input": "x".repeat(4096)});
    let r = h.post("/v1/responses", &big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_too_large");

    let body = responses_body(false).to_string();
    let packed = zstd::bulk::compress(body.as_bytes(), 3).unwrap();
    let r = h
        .http
        .post(h.url("/v1/responses"))
        .bearer_auth(KEY)
        .header("content-encoding", "zstd")
        .body(packed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A small zstd body that inflates past the limit is refused too.
    let bomb = zstd::bulk::compress(big.to_string().as_bytes(), 19).unwrap();
    assert!(bomb.len() < 2048);
    let r = h
        .http
        .post(h.url("/v1/responses"))
        .bearer_auth(KEY)
        .header("content-encoding", "zstd")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    h.stop().await;
}

#[tokio::test]
async fn keeps_serving_while_the_control_plane_is_away_and_resumes() {
    let h = one_codex().await;
    h.source.set_available(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = h
        .post("/v1/responses", &responses_body(false))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "static stability: the last snapshot serves"
    );
    // A change made meanwhile arrives on reconnect, from the applied version on.
    h.source.push(poolgate_core::snapshot::Delta {
        version: 2,
        upsert_accounts: vec![codex_account(
            "acc_b",
            "tok-b",
            &h.mock.codex_base_url(),
            -1,
        )],
        ..Default::default()
    });
    h.source.set_available(true);
    h.wait_version(2).await;
    assert!(
        h.source.watch_calls().iter().skip(1).all(|v| *v == 1),
        "{:?}",
        h.source.watch_calls()
    );
    let r = h
        .post("/v1/responses", &responses_body(false))
        .send()
        .await
        .unwrap();
    let log = h.log(&request_id(&r)).await;
    assert_eq!(log.account_id.as_deref(), Some("acc_b"));
    h.stop().await;
}

#[tokio::test]
async fn client_errors_are_returned_as_they_are() {
    let h = two_codex().await;
    // A turn state minted for another account: the backend answers 400, which is the
    // client's to fix, so it comes back unchanged and nothing fails over.
    let native = json!({
        "model": "gpt-5.3-codex",
        "instructions": "You are Codex.",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}],
        "stream": true,
        "store": false,
    });
    let r = h
        .post("/v1/responses", &native)
        .header("session-id", "sess-x")
        .header("x-codex-turn-state", "ts_00000000000000ff_1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let id = request_id(&r);
    let body = r.text().await.unwrap();
    assert!(body.contains("Invalid x-codex-turn-state"), "{body}");
    let log = h.log(&id).await;
    assert_eq!(log.attempts.len(), 1);
    assert_eq!(log.error_class, Some(ErrorClass::ClientError));
    assert_eq!(h.mock.request_count("tok-b"), 0);
    // A body no rewrite can save is refused locally.
    let r = h
        .post(
            "/v1/responses",
            &json!({"model": "gpt-5.3-codex", "input": 5}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].is_string());
    h.stop().await;
}

/// An upstream that streams a Responses SSE forever (a delta every 50 ms) and reports when
/// its client (the gateway) closes the connection.
async fn endless_upstream() -> (String, tokio::sync::oneshot::Receiver<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!(
        "http://{}/backend-api/codex",
        listener.local_addr().unwrap()
    );
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 8192];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0);
            head.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        let chunk = |ev: &str, data: &str| {
            let frame = format!("event: {ev}\ndata: {data}\n\n");
            format!("{:x}\r\n{frame}\r\n", frame.len())
        };
        s.write_all(
            chunk(
                "response.created",
                r#"{"type":"response.created","response":{"id":"r1"}}"#,
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        for _ in 0..400 {
            let delta = chunk(
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","delta":"x"}"#,
            );
            if s.write_all(delta.as_bytes()).await.is_err() {
                let _ = closed_tx.send(());
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (base, closed_rx)
}

#[tokio::test]
async fn a_client_disconnect_closes_the_upstream_connection() {
    let (base, closed) = endless_upstream().await;
    let h = Harness::start(test_config(), move |_| {
        full(
            1,
            vec![codex_account("acc_a", "tok-a", &base, 0)],
            vec![platform_key("key_1", KEY)],
        )
    })
    .await;
    let mut r = h
        .post("/v1/responses", &responses_body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = r.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("response."));
    drop(r);
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the upstream connection closed after the client left")
        .unwrap();
    let m = h.metrics().await;
    assert!(
        m.contains("poolgate_gateway_account_inflight{account=\"acc_a\"} 0"),
        "{m}"
    );
    h.stop().await;
}

async fn two_openai() -> Harness {
    Harness::start(test_config(), |m| {
        full(
            1,
            vec![
                openai_account("acc_a", "sk-a", &m.openai_base_url(), 0),
                openai_account("acc_b", "sk-b", &m.openai_base_url(), 1),
            ],
            vec![platform_key("key_1", KEY)],
        )
    })
    .await
}

#[tokio::test]
async fn json_answers_keep_their_length_and_a_cut_one_fails_over() {
    let h = two_openai().await;
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "whole"}]});
    let r = h.post("/v1/chat/completions", &body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // Read whole and sent with its length, not re-chunked.
    let len: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(r.headers().get("transfer-encoding").is_none());
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len(), len);

    // The upstream announces the whole length and breaks off halfway: nothing has reached
    // the client, so the next account answers instead.
    h.mock.set_fault("sk-a", Fault::TruncatedBody.times(1));
    let r = h.post("/v1/chat/completions", &body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "echo: whole");
    let log = h.log(&id).await;
    assert_eq!(log.attempts.len(), 2, "{log:?}");
    assert_eq!(log.attempts[0].account_id, "acc_a");
    assert_eq!(log.attempts[0].status, 200);
    assert_eq!(log.attempts[0].error_class, Some(ErrorClass::Network));
    assert_eq!(log.account_id.as_deref(), Some("acc_b"));
    assert_eq!(log.error_class, None);
    assert!(
        log.input_tokens > 0,
        "usage of the answer that arrived: {log:?}"
    );
    let m = h.metrics().await;
    assert!(
        m.contains("poolgate_gateway_failovers_total{reason=\"network\"} 1"),
        "{m}"
    );
    h.stop().await;
}

#[tokio::test]
async fn connections_go_to_the_least_busy_serving_thread() {
    let h = two_openai().await;
    let gauge = |m: &str, w: u32| -> Option<i64> {
        let needle = format!("poolgate_gateway_worker_connections{{worker=\"{w}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(needle.as_str()))
            .and_then(|v| v.trim().parse().ok())
    };
    let wait_for = |want: (i64, i64)| {
        let h = &h;
        async move {
            let mut seen = (None, None);
            for _ in 0..200 {
                let m = h.metrics().await;
                seen = (gauge(&m, 0), gauge(&m, 1));
                if seen == (Some(want.0), Some(want.1)) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("worker connections {seen:?}, expected {want:?}");
        }
    };
    // One at a time, so each hand-over sees the counts of the ones before it.
    let mut conns = Vec::new();
    for n in 1..=4i64 {
        conns.push(tokio::net::TcpStream::connect(h.addr).await.unwrap());
        wait_for(((n + 1) / 2, n / 2)).await;
    }
    // Worker 0 got the first and the third; closing them leaves it idle, so it takes the
    // next two.
    drop(conns.remove(2));
    drop(conns.remove(0));
    wait_for((0, 2)).await;
    conns.push(tokio::net::TcpStream::connect(h.addr).await.unwrap());
    wait_for((1, 2)).await;
    conns.push(tokio::net::TcpStream::connect(h.addr).await.unwrap());
    wait_for((2, 2)).await;
    // Every connection is served, whichever thread holds it.
    for _ in 0..8 {
        let r = h
            .post(
                "/v1/chat/completions",
                &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    h.stop().await;
}
