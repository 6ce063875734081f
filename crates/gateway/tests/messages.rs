#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! `POST /v1/messages` and `/v1/messages/count_tokens` through a real gateway to the mock
//! Codex upstream: translation both ways, streaming event order, tools, Anthropic-shaped
//! errors, failover, affinity by `metadata.user_id`.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use poolgate_core::report::ObservationKind;
use poolgate_core::{ErrorClass, UsageSnapshot, UsageWindow};
use poolgate_testkit::mock::{Fault, Pacing};
use poolgate_wire::anthropic::claude_anchor;
use serde_json::{Value, json};

const CODEX_PATH: &str = "/backend-api/codex/responses";

fn message_body(text: &str, stream: bool, user: &str) -> Value {
    json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [{"role": "user", "content": text}],
        "metadata": {"user_id": user},
        "stream": stream,
    })
}

/// A request the way Claude Code sends it: key in `x-api-key`, `?beta=true`, Anthropic
/// headers that must never reach the upstream.
/// Sends a Messages request the way Claude Code does and returns the answer.
async fn send_claude(h: &Harness, path: &str, body: &Value) -> reqwest::Response {
    claude_post(h, path, body).send().await.unwrap()
}

fn assert_content_type(r: &reqwest::Response, prefix: &str) {
    let ct = r.headers()["content-type"].to_str().unwrap();
    assert!(ct.starts_with(prefix), "content-type {ct}");
}

fn claude_post(h: &Harness, path: &str, body: &Value) -> reqwest::RequestBuilder {
    h.http
        .post(h.url(path))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "claude-code-20250219,interleaved-thinking-2025-05-14",
        )
        .header("content-type", "application/json")
        .body(body.to_string())
}

async fn codex_pool(n: usize, cfg: poolgate_gateway::GatewayConfig) -> Harness {
    Harness::start(cfg, |m| {
        full(
            1,
            (0..n)
                .map(|i| {
                    codex_account(
                        &format!("acc_{i}"),
                        &format!("tok-{i}"),
                        &m.codex_base_url(),
                        i32::try_from(i).unwrap(),
                    )
                })
                .collect(),
            vec![platform_key("key_1", KEY)],
        )
    })
    .await
}

fn assert_anthropic_error(v: &Value, ty: &str) {
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], ty, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

#[tokio::test]
async fn a_message_is_translated_to_codex_and_back() {
    let h = codex_pool(1, test_config()).await;
    let r = send_claude(
        &h,
        "/v1/messages?beta=true",
        &message_body("hello claude", false, "user-1"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_content_type(&r, "application/json");
    let id = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(v["role"], "assistant");
    assert_eq!(
        v["model"], "claude-sonnet-4-5",
        "answers name the requested model"
    );
    assert!(v["id"].as_str().unwrap().starts_with("msg_"), "{v}");
    let texts: Vec<&Value> = v["content"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "text")
        .collect();
    assert_eq!(texts.len(), 1, "{v}");
    assert_eq!(texts[0]["text"], "echo: hello claude");
    assert!(
        v["content"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["type"] != "thinking"),
        "no thinking blocks unless asked for: {v}"
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0, "{v}");
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0, "{v}");

    let reqs = h.mock.requests_to(CODEX_PATH);
    assert_eq!(reqs.len(), 1);
    let up = &reqs[0];
    let anchor = claude_anchor("key_1", Some("user-1"), "claude-sonnet-4-5");
    let body = up.json().unwrap();
    assert_eq!(body["model"], "gpt-5", "the default model for Claude names");
    assert_eq!(body["stream"], true);
    assert_eq!(body["store"], false);
    assert_eq!(body["prompt_cache_key"], anchor.as_str());
    assert_eq!(body["input"][0]["role"], "developer", "{body}");
    assert_eq!(body["input"][0]["content"][0]["text"], "Be brief.");
    assert!(body.get("max_tokens").is_none() && body.get("max_output_tokens").is_none());
    assert!(body.get("metadata").is_none());
    assert_eq!(up.header("session-id"), Some(anchor.as_str()));
    assert_eq!(up.header("authorization"), Some("Bearer tok-0"));
    for h in ["x-api-key", "anthropic-version", "anthropic-beta"] {
        assert!(up.header(h).is_none(), "{h} leaked upstream");
    }

    let log = h.log(&id).await;
    assert_eq!(log.protocol, "anthropic_messages");
    assert_eq!(log.path, "/v1/messages");
    assert_eq!(log.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(log.upstream_model.as_deref(), Some("gpt-5"));
    assert_eq!(
        log.translation,
        poolgate_core::Translation::MessagesToResponses
    );
    assert_eq!(log.status, 200);
    assert_eq!(log.key_id.as_deref(), Some("key_1"));
    assert_eq!(log.account_id.as_deref(), Some("acc_0"));
    assert!(log.input_tokens > 0 && log.output_tokens > 0, "{log:?}");
    let m = h.metrics().await;
    let family = "poolgate_gateway_requests_total{route=\"messages\",status=\"200\",protocol=\"anthropic_messages\",translation=\"messages_to_responses\"} 1";
    assert!(m.contains(family), "{m}");
    h.stop().await;

    // The served model is configurable; the SDK's `Authorization: Bearer` works as well, and
    // a Codex model name passes through unchanged.
    let mut cfg = test_config();
    cfg.anthropic_default_model = "gpt-5.3-codex".into();
    let h = codex_pool(1, cfg).await;
    let r = h
        .post("/v1/messages", &message_body("configured", false, "u"))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut codex_named = message_body("direct", false, "u");
    codex_named["model"] = json!("gpt-5.4-mini");
    let r = h.post("/v1/messages", &codex_named).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "gpt-5.4-mini");
    let models: Vec<Value> = h
        .mock
        .requests_to(CODEX_PATH)
        .iter()
        .map(|r| r.json().unwrap()["model"].clone())
        .collect();
    assert_eq!(models, [json!("gpt-5.3-codex"), json!("gpt-5.4-mini")]);
    h.stop().await;
}

#[tokio::test]
async fn a_streamed_message_follows_the_anthropic_event_order() {
    let h = codex_pool(1, test_config()).await;
    let r = send_claude(
        &h,
        "/v1/messages?beta=true",
        &message_body("stream me", true, "user-1"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_content_type(&r, "text/event-stream");
    let id = request_id(&r);
    let body = text_of(r).await;
    let events = sse_events(&body);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    // Every frame's event name matches its data's type.
    for (n, d) in &events {
        assert_eq!(d["type"], n.as_str(), "{body}");
    }
    assert_eq!(names.first(), Some(&"message_start"), "{names:?}");
    assert_eq!(names.last(), Some(&"message_stop"), "{names:?}");
    assert_eq!(names[names.len() - 2], "message_delta", "{names:?}");
    let start = names
        .iter()
        .position(|n| *n == "content_block_start")
        .unwrap();
    let stop = names
        .iter()
        .position(|n| *n == "content_block_stop")
        .unwrap();
    assert!(start < stop);
    assert!(
        names[start + 1..stop]
            .iter()
            .all(|n| *n == "content_block_delta"),
        "{names:?}"
    );
    assert_eq!(
        names
            .iter()
            .filter(|n| **n == "content_block_start")
            .count(),
        1,
        "one text block: {names:?}"
    );
    let (_, first) = &events[0];
    assert_eq!(first["message"]["model"], "claude-sonnet-4-5");
    assert_eq!(first["message"]["role"], "assistant");
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| {
            assert_eq!(d["delta"]["type"], "text_delta");
            d["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(text, "echo: stream me");
    let (_, delta) = &events[events.len() - 2];
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
    let log = h.log(&id).await;
    assert_eq!(log.protocol, "anthropic_messages");
    assert_eq!(log.status, 200);
    assert_eq!(log.error_class, None);
    assert!(log.output_tokens > 0, "{log:?}");
    h.stop().await;
}

#[tokio::test]
async fn tool_use_round_trips_with_long_names_restored() {
    let h = codex_pool(1, test_config()).await;
    // Over the backend's 64 characters: shortened upstream, restored for the client.
    let long = format!("mcp__workspace_server__{}", "lookup_".repeat(8));
    assert!(long.len() > 64);
    let tools = json!([{
        "name": long,
        "description": "Look something up.",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    }]);
    for stream in [false, true] {
        let mut first = message_body("please call the tool", stream, "tools");
        first["tools"] = tools.clone();
        let r = send_claude(&h, "/v1/messages", &first).await;
        assert_eq!(r.status(), 200);
        let (tool_id, input) = if stream {
            let body = text_of(r).await;
            let events = sse_events(&body);
            let (_, start) = events
                .iter()
                .find(|(n, d)| {
                    n == "content_block_start" && d["content_block"]["type"] == "tool_use"
                })
                .unwrap_or_else(|| panic!("{body}"));
            assert_eq!(start["content_block"]["name"], long.as_str());
            let args: String = events
                .iter()
                .filter(|(_, d)| d["delta"]["type"] == "input_json_delta")
                .map(|(_, d)| d["delta"]["partial_json"].as_str().unwrap().to_string())
                .collect();
            let (_, delta) = events.iter().find(|(n, _)| n == "message_delta").unwrap();
            assert_eq!(delta["delta"]["stop_reason"], "tool_use");
            assert_eq!(events.last().unwrap().0, "message_stop");
            (
                start["content_block"]["id"].as_str().unwrap().to_string(),
                serde_json::from_str::<Value>(&args).unwrap(),
            )
        } else {
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["stop_reason"], "tool_use", "{v}");
            let block = v["content"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["type"] == "tool_use")
                .unwrap_or_else(|| panic!("{v}"))
                .clone();
            assert_eq!(block["name"], long.as_str());
            (
                block["id"].as_str().unwrap().to_string(),
                block["input"].clone(),
            )
        };
        assert!(input["query"].is_string(), "{input}");
        let up = h
            .mock
            .requests_to(CODEX_PATH)
            .pop()
            .unwrap()
            .json()
            .unwrap();
        let upstream_name = up["tools"][0]["name"].as_str().unwrap().to_string();
        assert!(upstream_name.len() <= 64, "{upstream_name}");

        // The result goes back as a function_call_output for the same call.
        let mut second = message_body("unused", stream, "tools");
        second["tools"] = tools.clone();
        second["messages"] = json!([
            {"role": "user", "content": "please call the tool"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": tool_id, "name": long, "input": input}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": tool_id, "content": "sunny and warm"}]},
        ]);
        let r = send_claude(&h, "/v1/messages", &second).await;
        assert_eq!(r.status(), 200);
        let text = if stream {
            let body = text_of(r).await;
            sse_events(&body)
                .iter()
                .filter(|(_, d)| d["delta"]["type"] == "text_delta")
                .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_string())
                .collect::<String>()
        } else {
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["stop_reason"], "end_turn");
            v["content"][0]["text"].as_str().unwrap().to_string()
        };
        assert_eq!(text, "tool result: sunny and warm");
        let up = h
            .mock
            .requests_to(CODEX_PATH)
            .pop()
            .unwrap()
            .json()
            .unwrap();
        let items = up["input"].as_array().unwrap();
        let call = items.iter().find(|i| i["type"] == "function_call").unwrap();
        let output = items
            .iter()
            .find(|i| i["type"] == "function_call_output")
            .unwrap();
        assert_eq!(call["name"], upstream_name.as_str());
        assert_eq!(call["call_id"], output["call_id"]);
        assert_eq!(call["call_id"], tool_id.as_str());
    }
    h.stop().await;
}

#[tokio::test]
async fn count_tokens_is_answered_locally() {
    let h = codex_pool(1, test_config()).await;
    let body = json!({
        "model": "claude-sonnet-4-5",
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "How many tokens is this sentence?"}],
    });
    let r = send_claude(&h, "/v1/messages/count_tokens?beta=true", &body).await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let v: Value = r.json().await.unwrap();
    let n = v["input_tokens"].as_u64().unwrap();
    assert!((5..100).contains(&n), "{v}");
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    // More text, more tokens.
    let mut longer = body.clone();
    longer["messages"][0]["content"] = json!("How many tokens is this sentence? ".repeat(20));
    let r = h
        .post("/v1/messages/count_tokens", &longer)
        .send()
        .await
        .unwrap();
    let m: Value = r.json().await.unwrap();
    assert!(m["input_tokens"].as_u64().unwrap() > n, "{m}");
    assert!(h.mock.requests().is_empty(), "never sent upstream");
    let log = h.log(&id).await;
    assert_eq!(log.protocol, "anthropic_count_tokens");
    assert_eq!(log.status, 200);
    assert!(log.attempts.is_empty());
    // Still behind the key.
    let r = h
        .http
        .post(h.url("/v1/messages/count_tokens"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_anthropic_error(&r.json().await.unwrap(), "authentication_error");
    h.stop().await;
}

#[tokio::test]
async fn errors_on_messages_routes_are_anthropic_shaped() {
    let h = Harness::start(test_config(), |m| {
        let mut narrow = platform_key("key_narrow", "pgk_narrow_key");
        narrow.spec.allowed_models = vec!["gpt-5.4-mini".into()];
        let mut claude_only = platform_key("key_claude", "pgk_claude_key");
        claude_only.spec.allowed_models = vec!["claude-*".into()];
        full(
            1,
            vec![codex_account("acc_a", "tok-a", &m.codex_base_url(), 0)],
            vec![platform_key("key_1", KEY), narrow, claude_only],
        )
    })
    .await;
    let good = message_body("hi", false, "u");
    // No key.
    let r = h
        .http
        .post(h.url("/v1/messages"))
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let id = request_id(&r);
    assert_anthropic_error(&r.json().await.unwrap(), "authentication_error");
    let log = h.log(&id).await;
    assert_eq!(log.error_class, Some(ErrorClass::Auth));
    assert_eq!(log.protocol, "anthropic_messages");
    // A wrong key.
    let r = h
        .http
        .post(h.url("/v1/messages"))
        .header("x-api-key", "pgk_nope")
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_anthropic_error(&r.json().await.unwrap(), "authentication_error");
    // Not JSON, and JSON of the wrong shape.
    for (bad, what) in [
        ("{not json".to_string(), "not JSON"),
        (
            json!({"model": "claude-x", "messages": "hi"}).to_string(),
            "messages not a list",
        ),
        (json!({"model": "claude-x"}).to_string(), "no messages"),
        (json!({"messages": []}).to_string(), "no model"),
    ] {
        let r = h
            .http
            .post(h.url("/v1/messages"))
            .header("x-api-key", KEY)
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{what}");
        request_id(&r);
        assert_anthropic_error(&r.json().await.unwrap(), "invalid_request_error");
    }
    // A key limited to another model.
    let r = h
        .http
        .post(h.url("/v1/messages"))
        .header("x-api-key", "pgk_narrow_key")
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let id = request_id(&r);
    assert_anthropic_error(&r.json().await.unwrap(), "permission_error");
    assert_eq!(h.log(&id).await.error_class, Some(ErrorClass::ClientError));
    // A key that allows Claude names is served by the mapped model.
    let r = h
        .http
        .post(h.url("/v1/messages"))
        .header("x-api-key", "pgk_claude_key")
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Wrong method.
    let r = h
        .http
        .get(h.url("/v1/messages"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_anthropic_error(&r.json().await.unwrap(), "invalid_request_error");
    // An Anthropic endpoint the gateway does not serve.
    let r = h
        .http
        .post(h.url("/v1/messages/batches"))
        .header("x-api-key", KEY)
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    request_id(&r);
    assert_anthropic_error(&r.json().await.unwrap(), "not_found_error");
    assert_eq!(h.mock.requests_to(CODEX_PATH).len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn an_exhausted_pool_answers_rate_limit_error_with_retry_after() {
    let h = Harness::start(test_config(), |m| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let mut a = codex_account("acc_a", "tok-a", &m.codex_base_url(), 0);
        a.usage = Some(UsageSnapshot {
            primary: Some(UsageWindow {
                used_percent: 100.0,
                window_minutes: 300,
                resets_at_ms: Some(now + 3_600_000),
            }),
            secondary: None,
            extra: vec![],
            captured_at_ms: now,
        });
        full(1, vec![a], vec![platform_key("key_1", KEY)])
    })
    .await;
    for stream in [false, true] {
        let r = send_claude(&h, "/v1/messages", &message_body("hi", stream, "u")).await;
        assert_eq!(r.status(), 429);
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((3590..=3600).contains(&retry), "{retry}");
        let id = request_id(&r);
        assert_anthropic_error(&r.json().await.unwrap(), "rate_limit_error");
        assert_eq!(
            h.log(&id).await.error_class,
            Some(ErrorClass::QuotaExhausted)
        );
    }
    assert!(h.mock.requests().is_empty());
    h.stop().await;

    // Accounts that answer usage_limit_reached end the same way, after trying each.
    let h = codex_pool(2, test_config()).await;
    for tok in ["tok-0", "tok-1"] {
        h.mock.set_fault(
            tok,
            Fault::UsageLimit {
                resets_in_secs: 600,
            },
        );
    }
    let r = send_claude(&h, "/v1/messages", &message_body("hi", false, "u")).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((590..=600).contains(&retry), "{retry}");
    let id = request_id(&r);
    assert_anthropic_error(&r.json().await.unwrap(), "rate_limit_error");
    assert_eq!(h.log(&id).await.attempts.len(), 2);
    h.stop().await;
}

#[tokio::test]
async fn only_codex_accounts_serve_messages() {
    // An OpenAI-key account first in line is skipped for Messages, used for Responses.
    let h = Harness::start(test_config(), |m| {
        full(
            1,
            vec![
                openai_account("acc_openai", "sk-test", &m.openai_base_url(), 0),
                codex_account("acc_codex", "tok-c", &m.codex_base_url(), 1),
            ],
            vec![platform_key("key_1", KEY)],
        )
    })
    .await;
    let r = send_claude(&h, "/v1/messages", &message_body("who serves", false, "u")).await;
    assert_eq!(r.status(), 200);
    let log = h.log(&request_id(&r)).await;
    assert_eq!(log.account_id.as_deref(), Some("acc_codex"));
    assert_eq!(log.attempts.len(), 1);
    assert_eq!(h.mock.request_count("sk-test"), 0);
    h.stop().await;

    let h = Harness::start(test_config(), |m| {
        full(
            1,
            vec![openai_account(
                "acc_openai",
                "sk-test",
                &m.openai_base_url(),
                0,
            )],
            vec![platform_key("key_1", KEY)],
        )
    })
    .await;
    let r = send_claude(&h, "/v1/messages", &message_body("nobody", true, "u")).await;
    assert_eq!(r.status(), 503);
    let id = request_id(&r);
    assert_anthropic_error(&r.json().await.unwrap(), "overloaded_error");
    assert_eq!(h.log(&id).await.error_class, Some(ErrorClass::NoAccount));
    assert_eq!(h.mock.request_count("sk-test"), 0);
    h.stop().await;
}

#[tokio::test]
async fn messages_fail_over_before_the_first_byte() {
    let h = codex_pool(2, test_config()).await;
    // In-stream quota failure before any content: the client never sees it.
    h.mock.set_fault(
        "tok-0",
        Fault::InStreamFailure {
            code: "usage_limit_reached".into(),
            resets_in_secs: Some(600),
        }
        .times(1),
    );
    let r = send_claude(&h, "/v1/messages", &message_body("fail over", true, "u")).await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let body = text_of(r).await;
    assert!(!body.contains("event: error"), "{body}");
    assert_eq!(
        sse_events(&body).last().unwrap().0,
        "message_stop",
        "{body}"
    );
    let log = h.log(&id).await;
    assert_eq!(log.attempts.len(), 2, "{log:?}");
    assert_eq!(log.attempts[0].account_id, "acc_0");
    assert_eq!(log.account_id.as_deref(), Some("acc_1"));
    // The retry is a failover: a fresh session, the same cache key.
    let reqs = h.mock.requests_to(CODEX_PATH);
    assert_ne!(reqs[0].header("session-id"), reqs[1].header("session-id"));
    assert_eq!(
        reqs[0].json().unwrap()["prompt_cache_key"],
        reqs[1].json().unwrap()["prompt_cache_key"]
    );

    // A rate limit on a non-streamed message.
    let h2 = codex_pool(2, test_config()).await;
    h2.mock.set_fault(
        "tok-0",
        Fault::RateLimited {
            retry_after_secs: 60,
        }
        .times(1),
    );
    let r = send_claude(&h2, "/v1/messages", &message_body("again", false, "u")).await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], "echo: again");
    let log = h2.log(&id).await;
    assert_eq!(log.attempts.len(), 2);
    assert_eq!(log.attempts[0].status, 429);
    assert_eq!(log.attempts[0].error_class, Some(ErrorClass::RateLimited));
    h.stop().await;
    h2.stop().await;
}

#[tokio::test]
async fn a_failure_after_content_ends_with_an_error_event_and_cools_the_account() {
    let h = codex_pool(2, test_config()).await;
    h.mock.set_pacing(
        "tok-0",
        Pacing {
            deltas: Some(3),
            delta_delay_ms: Some(50),
        },
    );
    h.mock.set_fault(
        "tok-0",
        Fault::FailureAfterContent {
            code: "usage_limit_reached".into(),
            resets_in_secs: Some(1800),
        }
        .times(1),
    );
    let r = send_claude(&h, "/v1/messages", &message_body("partial", true, "u")).await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let body = text_of(r).await;
    let events = sse_events(&body);
    assert!(
        events.iter().any(|(n, _)| n == "content_block_delta"),
        "{body}"
    );
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "error", "{body}");
    assert_eq!(data["error"]["type"], "rate_limit_error", "{body}");
    assert!(!events.iter().any(|(n, _)| n == "message_stop"), "{body}");
    let log = h.log(&id).await;
    assert_eq!(log.attempts.len(), 1, "no failover after the first byte");
    assert_eq!(log.error_class, Some(ErrorClass::QuotaExhausted));
    let found = h
        .sink
        .wait_for(Duration::from_secs(5), |b| {
            b.iter().flat_map(|b| &b.observations).any(|o| {
                o.account_id == "acc_0" && matches!(o.kind, ObservationKind::QuotaExhausted { .. })
            })
        })
        .await;
    assert!(found, "{:?}", h.sink.observations());
    // Cooled at once: the next message goes to acc_1.
    let r = send_claude(&h, "/v1/messages", &message_body("next", false, "u")).await;
    let log = h.log(&request_id(&r)).await;
    assert_eq!(log.account_id.as_deref(), Some("acc_1"));
    h.stop().await;
}

#[tokio::test]
async fn silence_mid_stream_is_filled_with_pings() {
    let mut cfg = test_config();
    cfg.keepalive_interval = Duration::from_millis(100);
    let h = codex_pool(1, cfg).await;
    // Stalls after the first text delta, when message_start is out.
    h.mock.set_fault(
        "tok-0",
        Fault::StallMidStream {
            after_events: 7,
            stall_ms: 700,
        }
        .times(1),
    );
    let r = send_claude(&h, "/v1/messages", &message_body("slow", true, "u")).await;
    assert_eq!(r.status(), 200);
    let body = text_of(r).await;
    let events = sse_events(&body);
    let pings = events.iter().filter(|(n, _)| n == "ping").count();
    assert!(pings >= 3, "{body}");
    let first_ping = events.iter().position(|(n, _)| n == "ping").unwrap();
    assert!(first_ping > 0, "message_start comes first: {body}");
    assert_eq!(events.last().unwrap().0, "message_stop", "{body}");
    h.stop().await;
}

#[tokio::test]
async fn the_same_user_id_keeps_to_one_account() {
    // Equal priorities: only the anchor decides.
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
    let mut picked = HashMap::new();
    for user in 0..6 {
        let mut accounts = HashSet::new();
        let mut keys = HashSet::new();
        for turn in 0..3 {
            let r = send_claude(
                &h,
                "/v1/messages",
                &message_body(
                    &format!("turn {turn}"),
                    turn % 2 == 0,
                    &format!("session-{user}"),
                ),
            )
            .await;
            assert_eq!(r.status(), 200);
            let id = request_id(&r);
            let _ = text_of(r).await;
            let log = h.log(&id).await;
            accounts.insert(log.account_id.unwrap());
            let up = h.mock.requests_to(CODEX_PATH).pop().unwrap();
            keys.insert(up.json().unwrap()["prompt_cache_key"].clone());
        }
        assert_eq!(accounts.len(), 1, "user {user} moved: {accounts:?}");
        assert_eq!(keys.len(), 1, "one cache key per conversation: {keys:?}");
        picked.insert(user, accounts.into_iter().next().unwrap());
    }
    let distinct: HashSet<_> = picked.values().collect();
    assert!(
        distinct.len() >= 2,
        "anchors spread over the pool: {picked:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn thinking_blocks_carry_reasoning_to_the_next_turn_and_not_across_accounts() {
    let h = codex_pool(2, test_config()).await;
    let mut first = message_body("think about it", false, "thinker");
    first["thinking"] = json!({"type": "enabled", "budget_tokens": 10000});
    let r = send_claude(&h, "/v1/messages", &first).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let blocks = v["content"].as_array().unwrap().clone();
    let thinking = blocks
        .iter()
        .find(|b| b["type"] == "thinking")
        .unwrap_or_else(|| panic!("no thinking block: {v}"));
    assert!(
        thinking["signature"]
            .as_str()
            .unwrap()
            .starts_with(poolgate_wire::anthropic::CODEX_SIGNATURE_PREFIX),
        "{thinking}"
    );
    let up = h
        .mock
        .requests_to(CODEX_PATH)
        .pop()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(up["reasoning"]["effort"], "medium", "a 10,000 budget: {up}");
    assert!(
        up["include"]
            .as_array()
            .unwrap()
            .contains(&json!("reasoning.encrypted_content")),
        "{up}"
    );

    // The next turn hands the model its reasoning back, on the same account.
    let mut second = first.clone();
    second["messages"] = json!([
        {"role": "user", "content": "think about it"},
        {"role": "assistant", "content": blocks},
        {"role": "user", "content": "and now?"},
    ]);
    let r = send_claude(&h, "/v1/messages", &second).await;
    assert_eq!(r.status(), 200);
    let log = h.log(&request_id(&r)).await;
    assert_eq!(log.account_id.as_deref(), Some("acc_0"));
    let up = h
        .mock
        .requests_to(CODEX_PATH)
        .pop()
        .unwrap()
        .json()
        .unwrap();
    let reasoning: Vec<&Value> = up["input"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "reasoning")
        .collect();
    assert_eq!(reasoning.len(), 1, "{up}");
    assert!(reasoning[0]["encrypted_content"].is_string(), "{up}");

    // On failover the other account never sees reasoning it cannot decrypt.
    h.mock.set_fault(
        "tok-0",
        Fault::RateLimited {
            retry_after_secs: 30,
        }
        .times(1),
    );
    let r = send_claude(&h, "/v1/messages", &second).await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["content"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["text"] == "echo: and now?"),
        "{v}"
    );
    let log = h.log(&id).await;
    assert_eq!(log.attempts.len(), 2, "{log:?}");
    assert_eq!(log.account_id.as_deref(), Some("acc_1"));
    let up = h.mock.requests_to(CODEX_PATH).pop().unwrap();
    assert_eq!(up.header("authorization"), Some("Bearer tok-1"));
    let body = up.json().unwrap();
    assert!(
        body["input"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["type"] != "reasoning"),
        "{body}"
    );
    h.stop().await;
}

#[tokio::test]
async fn an_upstream_refusal_is_restated_for_anthropic_clients() {
    // Without its workspace id the mock backend refuses every request with a 400: the
    // client's kind of error, relayed (no failover), in the Anthropic shape.
    let h = Harness::start(test_config(), |m| {
        let mut a = codex_account("acc_a", "tok-a", &m.codex_base_url(), 0);
        a.account.identity = None;
        full(1, vec![a], vec![platform_key("key_1", KEY)])
    })
    .await;
    for stream in [false, true] {
        let r = send_claude(&h, "/v1/messages", &message_body("refused", stream, "u")).await;
        assert_eq!(r.status(), 400);
        assert_content_type(&r, "application/json");
        let id = request_id(&r);
        let v: Value = r.json().await.unwrap();
        assert_anthropic_error(&v, "invalid_request_error");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("chatgpt-account-id"),
            "{v}"
        );
        let log = h.log(&id).await;
        assert_eq!(log.error_class, Some(ErrorClass::ClientError));
        assert_eq!(log.attempts.len(), 1);
    }
    h.stop().await;
}
