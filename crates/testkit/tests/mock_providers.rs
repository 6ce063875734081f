#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The mock's Anthropic Messages and Azure OpenAI routes over real sockets: answers, event
//! streams, refusals and every fault as those providers render them.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use http_body_util::BodyExt;
mod common;

use common::*;
use poolgate_testkit::mock::{Fault, MockConfig, MockUpstream, Pacing};
use serde_json::{Value, json};

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl Answer {
    /// The body as Anthropic frames, checking each is exactly `event: T\ndata: JSON\n\n`
    /// with `"type": T` in the data.
    fn frames(&self) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(&self.body).unwrap();
        assert!(text.ends_with("\n\n"), "unterminated stream: {text:?}");
        text.trim_end_matches('\n')
            .split("\n\n")
            .map(|frame| {
                let (ev, data) = frame
                    .split_once('\n')
                    .unwrap_or_else(|| panic!("frame without data: {frame:?}"));
                let ev = ev.strip_prefix("event: ").unwrap().to_string();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(data["type"], ev.as_str(), "{frame}");
                (ev, data)
            })
            .collect()
    }
}

// ---- Anthropic ----

fn claude_body(text: &str, stream: bool) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "You are a test."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": text}]}],
        "stream": stream,
    })
}

async fn claude(
    c: &HttpClient,
    mock: &MockUpstream,
    key: &str,
    body: &Value,
    extra: &[(&str, &str)],
) -> Answer {
    let mut h = vec![
        ("x-api-key", key),
        ("anthropic-version", "2023-06-01"),
        ("content-type", "application/json"),
    ];
    h.extend_from_slice(extra);
    send(
        c,
        Method::POST,
        &format!("{}/v1/messages", mock.anthropic_base_url()),
        &h,
        body.to_string(),
    )
    .await
}

fn types(frames: &[(String, Value)]) -> Vec<&str> {
    frames.iter().map(|(t, _)| t.as_str()).collect()
}

fn streamed_text(frames: &[(String, Value)]) -> String {
    frames
        .iter()
        .filter(|(t, _)| t == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp (`YYYY-MM-DDTHH:MM:SSZ`).
fn parse_rfc3339(s: &str) -> i64 {
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    assert_eq!((s.len(), &s[10..11], &s[19..]), (20, "T", "Z"), "{s}");
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (the inverse of the mock's conversion, written independently).
    let (y, m) = if m <= 2 { (y - 1, m + 12) } else { (y, m) };
    let days = 365 * y + y / 4 - y / 100 + y / 400 + (153 * (m - 3) + 2) / 5 + d - 719_469;
    days * 86_400 + n(11..13) * 3600 + n(14..16) * 60 + n(17..19)
}

#[tokio::test]
async fn anthropic_message_json() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    assert_eq!(mock.anthropic_base_url(), mock.url());
    let a = claude(
        &c,
        &mock,
        "sk-ant-1",
        &claude_body("hello there", false),
        &[],
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert!(a.header("request-id").unwrap().starts_with("req_"));
    let v = a.json();
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-sonnet-4-5");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "echo: hello there"}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["stop_sequence"], Value::Null);
    let u = &v["usage"];
    // "You are a test." + "hello there" = 26 characters, about 7 tokens.
    assert_eq!(u["input_tokens"], 7);
    assert_eq!(u["output_tokens"], 4);
    assert_eq!(u["cache_read_input_tokens"], 0);
    assert_eq!(u["cache_creation_input_tokens"], 0);

    // The request is recorded under its key, with headers and body.
    let rec = mock.requests_to("/v1/messages");
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].token.as_deref(), Some("sk-ant-1"));
    assert_eq!(rec[0].header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(rec[0].json().unwrap()["max_tokens"], 1024);

    // `?beta=true`, a string content and a bearer key (what the Python SDK sends).
    let body = json!({"model": "claude-haiku-4-5", "max_tokens": 5,
                      "messages": [{"role": "user", "content": "plain"}]});
    let a = send(
        &c,
        Method::POST,
        &format!("{}/v1/messages?beta=true", mock.url()),
        &[
            ("authorization", "Bearer sk-ant-2"),
            ("anthropic-version", "2023-06-01"),
            (
                "anthropic-beta",
                "claude-code-20250219,interleaved-thinking-2025-05-14",
            ),
        ],
        body.to_string(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.json()["content"][0]["text"], "echo: plain");
    assert_eq!(mock.request_count("sk-ant-2"), 1);
    let rec = mock.requests_to("/v1/messages");
    assert_eq!(rec[1].path, "/v1/messages?beta=true");
    assert!(
        rec[1]
            .header("anthropic-beta")
            .unwrap()
            .contains("claude-code")
    );
    // x-api-key wins over a bearer token.
    let a = claude(
        &c,
        &mock,
        "sk-ant-3",
        &body,
        &[("authorization", "Bearer other")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        (mock.request_count("sk-ant-3"), mock.request_count("other")),
        (1, 0)
    );
}

#[tokio::test]
async fn anthropic_stream_event_order() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let a = claude(
        &c,
        &mock,
        "k",
        &claude_body("stream me", true),
        &[("x-mock-deltas", "3")],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    assert!(a.header("request-id").is_some());
    let frames = a.frames();
    assert_eq!(
        types(&frames),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    assert_eq!(streamed_text(&frames), "echo: stream me");
    let start = &frames[0].1["message"];
    assert_eq!(start["type"], "message");
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["model"], "claude-sonnet-4-5");
    assert_eq!(start["content"], json!([]));
    assert_eq!(start["stop_reason"], Value::Null);
    // "You are a test." + "stream me" = 24 characters, 6 tokens.
    assert_eq!(start["usage"]["input_tokens"], 6);
    assert_eq!(start["usage"]["output_tokens"], 1);
    assert_eq!(
        frames[1].1["content_block"],
        json!({"type": "text", "text": ""})
    );
    assert!(frames[3..6].iter().all(|(_, d)| d["index"] == 0));
    assert_eq!(frames[6].1["index"], 0);
    let delta = &frames[7].1;
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["delta"]["stop_sequence"], Value::Null);
    assert_eq!(delta["usage"]["output_tokens"], 3);

    // Paced like the other routes: the token's pacing spaces the deltas.
    mock.set_pacing(
        "p",
        Pacing {
            deltas: Some(4),
            delta_delay_ms: Some(50),
        },
    );
    let started = Instant::now();
    let a = claude(&c, &mock, "p", &claude_body("paced", true), &[]).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    let frames = a.frames();
    assert_eq!(
        frames
            .iter()
            .filter(|(t, _)| t == "content_block_delta")
            .count(),
        4
    );
    assert_eq!(streamed_text(&frames), "echo: paced");
}

#[tokio::test]
async fn anthropic_tool_use_and_results() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let tools = json!([
        {"name": "read_file", "description": "reads", "input_schema": {"type": "object",
            "properties": {"path": {"type": "string"}, "limit": {"type": "integer"}}}},
        {"name": "bash", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}},
    ]);
    let mut body = claude_body("please use tool bash", false);
    body["tools"] = tools.clone();
    let v = claude(&c, &mock, "k", &body, &[]).await.json();
    assert_eq!(v["stop_reason"], "tool_use");
    let block = &v["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(block["name"], "bash");
    assert_eq!(block["input"], json!({"command": "mock"}));

    // Streaming: the block starts with empty input, then input_json_delta pieces.
    body["stream"] = json!(true);
    let a = claude(&c, &mock, "k", &body, &[("x-mock-deltas", "3")]).await;
    let frames = a.frames();
    assert_eq!(
        types(&frames),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
    );
    let started = &frames[1].1["content_block"];
    assert_eq!(started["type"], "tool_use");
    assert_eq!(started["name"], "bash");
    assert_eq!(started["input"], json!({}));
    let json_text: String = frames
        .iter()
        .filter(|(t, _)| t == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "input_json_delta");
            d["delta"]["partial_json"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&json_text).unwrap(),
        json!({"command": "mock"})
    );
    assert_eq!(frames[7].1["delta"]["stop_reason"], "tool_use");

    // "call the tool" picks the first tool; the schema fills its input.
    let mut body = claude_body("call the tool", false);
    body["tools"] = tools.clone();
    let v = claude(&c, &mock, "k", &body, &[]).await.json();
    assert_eq!(v["content"][0]["name"], "read_file");
    assert_eq!(
        v["content"][0]["input"],
        json!({"path": "mock", "limit": 1})
    );

    // The tool's result comes back quoted.
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "tools": tools, "messages": [
        {"role": "user", "content": "call the tool"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "a"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "file body"}]},
    ]});
    let v = claude(&c, &mock, "k", &body, &[]).await.json();
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["content"][0]["text"], "tool result: file body");
}

#[tokio::test]
async fn anthropic_refusals_have_the_real_shape() {
    let mock = MockUpstream::start_with(MockConfig {
        max_body_bytes: 4096,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let c = client();
    let url = format!("{}/v1/messages", mock.url());
    let error = |a: &Answer, status: StatusCode, ty: &str, msg: &str| {
        assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
        let v = a.json();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], ty);
        assert!(v["error"]["message"].as_str().unwrap().contains(msg), "{v}");
        let rid = a.header("request-id").unwrap();
        assert!(rid.starts_with("req_"));
        assert_eq!(v["request_id"], rid);
    };
    let body = claude_body("x", false).to_string();
    // No key.
    let a = send(
        &c,
        Method::POST,
        &url,
        &[("anthropic-version", "2023-06-01")],
        body.clone(),
    )
    .await;
    error(
        &a,
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "x-api-key",
    );
    // No version.
    let a = send(&c, Method::POST, &url, &[("x-api-key", "k")], body.clone()).await;
    error(
        &a,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "anthropic-version",
    );
    // Bodies missing a required field, or not JSON.
    for (field, msg) in [
        ("model", "model: Field required"),
        ("max_tokens", "max_tokens: Field required"),
        ("messages", "messages: Field required"),
    ] {
        let mut b = claude_body("x", false);
        b.as_object_mut().unwrap().remove(field);
        let a = claude(&c, &mock, "k", &b, &[]).await;
        error(&a, StatusCode::BAD_REQUEST, "invalid_request_error", msg);
    }
    let mut b = claude_body("x", false);
    b["messages"] = json!([]);
    let a = claude(&c, &mock, "k", &b, &[]).await;
    error(
        &a,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "at least one message",
    );
    let a = send(
        &c,
        Method::POST,
        &url,
        &[("x-api-key", "k"), ("anthropic-version", "2023-06-01")],
        "{not json",
    )
    .await;
    error(
        &a,
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        "parsing the body",
    );
    // GET is not a route; an oversized body is refused before it is read in full.
    let a = send(&c, Method::GET, &url, &[("x-api-key", "k")], "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let mut big = claude_body("x", false);
    big["messages"][0]["content"][0]["text"] = json!("y".repeat(8192));
    let a = claude(&c, &mock, "k", &big, &[]).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn anthropic_http_faults() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let body = claude_body("x", false);
    let error_type = |a: &Answer| a.json()["error"]["type"].as_str().unwrap().to_string();

    let before = now_secs();
    mock.set_fault(
        "k",
        Fault::RateLimited {
            retry_after_secs: 30,
        }
        .times(1),
    );
    let a = claude(&c, &mock, "k", &body, &[]).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_type(&a), "rate_limit_error");
    assert_eq!(a.json()["type"], "error");
    assert_eq!(a.header("retry-after"), Some("30"));
    assert_eq!(
        a.header("anthropic-ratelimit-requests-remaining"),
        Some("0")
    );
    let reset = parse_rfc3339(a.header("anthropic-ratelimit-requests-reset").unwrap());
    assert!(
        (before + 29..=now_secs() + 31).contains(&reset),
        "{reset} vs {before}"
    );
    assert!(a.header("request-id").unwrap().starts_with("req_"));
    // The fault ran out.
    assert_eq!(
        claude(&c, &mock, "k", &body, &[]).await.status,
        StatusCode::OK
    );

    mock.set_fault(
        "k",
        Fault::UsageLimit {
            resets_in_secs: 7200,
        }
        .times(1),
    );
    let a = claude(&c, &mock, "k", &body, &[]).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_type(&a), "rate_limit_error");
    assert_eq!(a.header("retry-after"), Some("7200"));
    let reset = parse_rfc3339(a.header("anthropic-ratelimit-requests-reset").unwrap());
    assert!((before + 7199..=now_secs() + 7201).contains(&reset));

    for (fault, status, ty) in [
        (
            Fault::Unauthorized,
            StatusCode::UNAUTHORIZED,
            "authentication_error",
        ),
        (
            Fault::Deactivated,
            StatusCode::FORBIDDEN,
            "permission_error",
        ),
        (
            Fault::ServerError { status: 502 },
            StatusCode::BAD_GATEWAY,
            "api_error",
        ),
        (
            Fault::ServerError { status: 529 },
            StatusCode::from_u16(529).unwrap(),
            "overloaded_error",
        ),
        (
            Fault::ServerError { status: 200 },
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
        ),
    ] {
        mock.set_fault("k", fault.clone().times(1));
        let a = claude(&c, &mock, "k", &body, &[]).await;
        assert_eq!(a.status, status, "{fault:?}");
        assert_eq!(error_type(&a), ty, "{fault:?}");
        assert!(a.header("request-id").is_some());
    }

    mock.set_fault("k", Fault::Challenge.times(1));
    let a = claude(&c, &mock, "k", &body, &[]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.header("cf-mitigated"), Some("challenge"));
    assert!(a.header("content-type").unwrap().starts_with("text/html"));
    mock.set_fault("k", Fault::RegionBlocked.times(1));
    let a = claude(&c, &mock, "k", &body, &[]).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    // A streaming request gets the same HTTP answer.
    mock.set_fault("k", Fault::ServerError { status: 529 }.times(1));
    let a = claude(&c, &mock, "k", &claude_body("x", true), &[]).await;
    assert_eq!(a.status.as_u16(), 529);
    assert_eq!(error_type(&a), "overloaded_error");

    // A fault keys on a bearer key too.
    mock.set_fault("b", Fault::Unauthorized.times(1));
    let a = send(
        &c,
        Method::POST,
        &format!("{}/v1/messages", mock.url()),
        &[
            ("authorization", "Bearer b"),
            ("anthropic-version", "2023-06-01"),
        ],
        body.to_string(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn anthropic_stream_faults() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let body = claude_body("fail", true);

    mock.set_fault(
        "k",
        Fault::InStreamFailure {
            code: "overloaded_error".into(),
            resets_in_secs: None,
        }
        .times(1),
    );
    // A JSON request does not take a stream-only fault.
    let a = claude(&c, &mock, "k", &claude_body("fail", false), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = claude(&c, &mock, "k", &body, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let frames = a.frames();
    assert_eq!(types(&frames), ["message_start", "ping", "error"]);
    assert_eq!(
        frames[2].1["error"],
        json!({"type": "overloaded_error", "message": "Overloaded"})
    );

    mock.set_fault(
        "k",
        Fault::FailureAfterContent {
            code: "api_error".into(),
            resets_in_secs: None,
        }
        .times(1),
    );
    let a = claude(&c, &mock, "k", &body, &[("x-mock-deltas", "2")]).await;
    let frames = a.frames();
    assert_eq!(
        types(&frames),
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "error",
        ]
    );
    assert_eq!(streamed_text(&frames), "echo: fail");
    assert_eq!(frames[5].1["error"]["type"], "api_error");

    // Slow first byte: the head waits.
    mock.set_fault("k", Fault::SlowFirstByte { delay_ms: 250 }.times(1));
    let started = Instant::now();
    let a = claude(&c, &mock, "k", &body, &[]).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(streamed_text(&a.frames()), "echo: fail");

    // Stall after the third frame: the gap shows between ping and the first delta.
    mock.set_fault(
        "k",
        Fault::StallMidStream {
            after_events: 3,
            stall_ms: 300,
        }
        .times(1),
    );
    let resp = c
        .request(request(
            Method::POST,
            &format!("{}/v1/messages", mock.url()),
            &[("x-api-key", "k"), ("anthropic-version", "2023-06-01")],
            body.to_string(),
        ))
        .await
        .unwrap();
    let mut stream = resp.into_body();
    let mut seen = String::new();
    let mut ping_at = None;
    let mut delta_at = None;
    while let Some(frame) = stream.frame().await {
        let Ok(data) = frame.unwrap().into_data() else {
            continue;
        };
        seen.push_str(std::str::from_utf8(&data).unwrap());
        if ping_at.is_none() && seen.contains("event: ping") {
            ping_at = Some(Instant::now());
        }
        if delta_at.is_none() && seen.contains("event: content_block_delta") {
            delta_at = Some(Instant::now());
        }
    }
    let gap = delta_at.unwrap() - ping_at.unwrap();
    assert!(gap >= Duration::from_millis(250), "gap {gap:?}");
    assert!(seen.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));

    // Dropped after two frames: the body ends in an error, without message_stop.
    mock.set_fault("k", Fault::DropConnection { after_events: 2 }.times(1));
    let resp = c
        .request(request(
            Method::POST,
            &format!("{}/v1/messages", mock.url()),
            &[("x-api-key", "k"), ("anthropic-version", "2023-06-01")],
            body.to_string(),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut stream = resp.into_body();
    let mut seen = String::new();
    let mut failed = false;
    while let Some(frame) = stream.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    seen.push_str(std::str::from_utf8(&d).unwrap());
                }
            }
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the body must end in an error");
    assert_eq!(seen.matches("event: ").count(), 2);
    assert!(!seen.contains("message_stop"));

    // A JSON request under a drop gets no answer at all.
    mock.set_fault("k", Fault::DropConnection { after_events: 0 }.times(1));
    let r = c
        .request(request(
            Method::POST,
            &format!("{}/v1/messages", mock.url()),
            &[("x-api-key", "k"), ("anthropic-version", "2023-06-01")],
            claude_body("x", false).to_string(),
        ))
        .await;
    assert!(r.is_err());
}

// ---- Azure OpenAI ----

const API_VERSION: &str = "2024-10-21";

async fn azure(
    c: &HttpClient,
    mock: &MockUpstream,
    path_and_query: &str,
    key: Option<&str>,
    body: &Value,
) -> Answer {
    let mut h = vec![("content-type", "application/json")];
    if let Some(k) = key {
        h.push(("api-key", k));
    }
    send(
        c,
        Method::POST,
        &format!("{}{path_and_query}", mock.azure_endpoint()),
        &h,
        body.to_string(),
    )
    .await
}

fn chat_path(deployment: &str) -> String {
    format!("/openai/deployments/{deployment}/chat/completions?api-version={API_VERSION}")
}

fn azure_error(a: &Answer, status: StatusCode, code: &str, msg: &str) {
    assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
    let v = a.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains(msg), "{v}");
}

/// `data:` payloads of a Chat Completions stream, `[DONE]` last.
fn data_lines(body: &[u8]) -> Vec<String> {
    std::str::from_utf8(body)
        .unwrap()
        .split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|f| f.strip_prefix("data: ").unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn azure_chat_completions() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    assert_eq!(mock.azure_endpoint(), mock.url());
    // Azure needs no model in the body: the deployment names it.
    let body = json!({"messages": [{"role": "user", "content": "hi azure"}]});
    let a = azure(&c, &mock, &chat_path("gpt4o-prod"), Some("az-1"), &body).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert!(a.header("apim-request-id").is_some());
    let v = a.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt4o-prod");
    assert_eq!(v["choices"][0]["message"]["content"], "echo: hi azure");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    let rec = mock.requests();
    let rec = rec.last().unwrap();
    assert_eq!(rec.token.as_deref(), Some("az-1"));
    assert_eq!(rec.path, chat_path("gpt4o-prod"));
    assert_eq!(mock.request_count("az-1"), 1);

    // A body model does not override the deployment.
    let mut sbody = body.clone();
    sbody["model"] = json!("gpt-4o");
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let a = azure(&c, &mock, &chat_path("dep-a"), Some("az-1"), &sbody).await;
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    let lines = data_lines(&a.body);
    assert_eq!(lines.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = lines[..lines.len() - 1]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(chunks.iter().all(|c| c["model"] == "dep-a"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "echo: hi azure");
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 4);

    // Tools.
    let tbody = json!({"messages": [{"role": "user", "content": "call the tool"}],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]});
    let v = azure(&c, &mock, &chat_path("dep-a"), Some("az-1"), &tbody)
        .await
        .json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        r#"{"q":"mock"}"#
    );

    // Refusals: no key (a bearer token is not Azure's key), no api-version, the deployment
    // named "missing", unknown paths and methods.
    let a = azure(&c, &mock, &chat_path("dep-a"), None, &body).await;
    azure_error(&a, StatusCode::UNAUTHORIZED, "401", "Access denied");
    let a = send(
        &c,
        Method::POST,
        &format!("{}{}", mock.azure_endpoint(), chat_path("dep-a")),
        &[("authorization", "Bearer az-1")],
        body.to_string(),
    )
    .await;
    azure_error(
        &a,
        StatusCode::UNAUTHORIZED,
        "401",
        "invalid subscription key",
    );
    let a = azure(
        &c,
        &mock,
        "/openai/deployments/dep-a/chat/completions",
        Some("az-1"),
        &body,
    )
    .await;
    azure_error(&a, StatusCode::NOT_FOUND, "404", "Resource not found");
    let a = azure(&c, &mock, &chat_path("missing"), Some("az-1"), &body).await;
    azure_error(
        &a,
        StatusCode::NOT_FOUND,
        "DeploymentNotFound",
        "does not exist",
    );
    let a = azure(
        &c,
        &mock,
        &format!("/openai/deployments/dep-a/embeddings?api-version={API_VERSION}"),
        Some("az-1"),
        &body,
    )
    .await;
    azure_error(&a, StatusCode::NOT_FOUND, "404", "Resource not found");
    let a = send(
        &c,
        Method::GET,
        &format!("{}{}", mock.azure_endpoint(), chat_path("dep-a")),
        &[("api-key", "az-1")],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let a = azure(
        &c,
        &mock,
        &chat_path("dep-a"),
        Some("az-1"),
        &json!({"messages": []}),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["error"]["param"], "messages");
}

#[tokio::test]
async fn azure_responses() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let path = format!("/openai/responses?api-version={API_VERSION}");
    let body = json!({"model": "resp-dep", "input": "hello responses"});
    let a = azure(&c, &mock, &path, Some("az-2"), &body).await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["model"], "resp-dep");
    assert_eq!(v["status"], "completed");
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "echo: hello responses"
    );

    let mut s = body.clone();
    s["stream"] = json!(true);
    let a = azure(&c, &mock, &path, Some("az-2"), &s).await;
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    let text = std::str::from_utf8(&a.body).unwrap();
    let deltas: String = text
        .split("\n\n")
        .filter(|f| f.starts_with("event: response.output_text.delta\n"))
        .map(|f| {
            let data: Value = serde_json::from_str(f.split_once("\ndata: ").unwrap().1).unwrap();
            data["delta"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(deltas, "echo: hello responses");
    assert!(text.contains("event: response.completed\n"));

    let a = azure(&c, &mock, "/openai/responses", Some("az-2"), &body).await;
    azure_error(&a, StatusCode::NOT_FOUND, "404", "Resource not found");
    let a = azure(
        &c,
        &mock,
        &path,
        Some("az-2"),
        &json!({"model": "missing", "input": "x"}),
    )
    .await;
    azure_error(
        &a,
        StatusCode::NOT_FOUND,
        "DeploymentNotFound",
        "deployment",
    );
    let a = azure(&c, &mock, &path, Some("az-2"), &json!({"input": "x"})).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = azure(&c, &mock, &path, None, &body).await;
    azure_error(&a, StatusCode::UNAUTHORIZED, "401", "Access denied");
}

#[tokio::test]
async fn azure_faults() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let body = json!({"messages": [{"role": "user", "content": "x"}]});
    let path = chat_path("dep");

    mock.set_fault(
        "az",
        Fault::RateLimited {
            retry_after_secs: 12,
        }
        .times(1),
    );
    let a = azure(&c, &mock, &path, Some("az"), &body).await;
    azure_error(
        &a,
        StatusCode::TOO_MANY_REQUESTS,
        "429",
        "retry after 12 seconds",
    );
    assert_eq!(a.header("retry-after"), Some("12"));
    assert_eq!(a.header("retry-after-ms"), Some("12000"));
    assert_eq!(
        azure(&c, &mock, &path, Some("az"), &body).await.status,
        StatusCode::OK
    );

    mock.set_fault(
        "az",
        Fault::UsageLimit {
            resets_in_secs: 600,
        }
        .times(1),
    );
    let a = azure(&c, &mock, &path, Some("az"), &body).await;
    azure_error(&a, StatusCode::TOO_MANY_REQUESTS, "429", "token rate limit");
    assert_eq!(a.header("retry-after"), Some("600"));
    assert_eq!(a.header("retry-after-ms"), Some("600000"));

    mock.set_fault("az", Fault::Unauthorized.times(1));
    let a = azure(&c, &mock, &path, Some("az"), &body).await;
    azure_error(&a, StatusCode::UNAUTHORIZED, "401", "Access denied");
    mock.set_fault("az", Fault::Deactivated.times(1));
    let a = azure(&c, &mock, &path, Some("az"), &body).await;
    azure_error(&a, StatusCode::FORBIDDEN, "403", "disabled");

    // 5xx relays the model service's OpenAI-shaped error.
    mock.set_fault("az", Fault::ServerError { status: 503 }.times(1));
    let a = azure(&c, &mock, &path, Some("az"), &body).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json()["error"]["type"], "server_error");

    // The responses route takes the same faults.
    mock.set_fault(
        "az",
        Fault::RateLimited {
            retry_after_secs: 3,
        }
        .times(1),
    );
    let a = azure(
        &c,
        &mock,
        &format!("/openai/responses?api-version={API_VERSION}"),
        Some("az"),
        &json!({"model": "dep", "input": "x"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.header("retry-after-ms"), Some("3000"));

    // In-stream failures, as on the OpenAI chat route: an error frame instead of content.
    mock.set_fault(
        "az",
        Fault::InStreamFailure {
            code: "rate_limit_exceeded".into(),
            resets_in_secs: None,
        }
        .times(1),
    );
    let mut s = body.clone();
    s["stream"] = json!(true);
    let a = azure(&c, &mock, &path, Some("az"), &s).await;
    assert_eq!(a.status, StatusCode::OK);
    let lines = data_lines(&a.body);
    assert_eq!(lines.len(), 2);
    let err: Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(err["error"]["code"], "rate_limit_exceeded");

    mock.set_fault("az", Fault::SlowFirstByte { delay_ms: 200 }.times(1));
    let started = Instant::now();
    let a = azure(&c, &mock, &path, Some("az"), &body).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(a.status, StatusCode::OK);

    mock.set_fault("az", Fault::DropConnection { after_events: 0 }.times(1));
    let r = c
        .request(request(
            Method::POST,
            &format!("{}{path}", mock.azure_endpoint()),
            &[("api-key", "az")],
            body.to_string(),
        ))
        .await;
    assert!(r.is_err());
}
