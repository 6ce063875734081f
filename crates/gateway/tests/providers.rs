#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Azure OpenAI and Anthropic API-key accounts through a real gateway to the mock upstream:
//! URLs, key headers, model → deployment mapping, native Messages passthrough, routing by
//! protocol, failover across providers, model aliases, and what the request log records.

mod common;

use common::*;
use poolgate_core::snapshot::{AccountState, Delta};
use poolgate_core::{ModelAlias, RoutingPolicy, Translation};
use poolgate_testkit::mock::{Fault, Pacing};
use serde_json::{Value, json};

const MESSAGES_PATH: &str = "/v1/messages";
const CODEX_PATH: &str = "/backend-api/codex/responses";

fn chat_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "hello azure"}],
        "stream": stream,
    })
}

fn claude_body(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "hello claude"}],
        "metadata": {"user_id": "user-1"},
        "stream": stream,
    })
}

fn claude_post(h: &Harness, body: &Value) -> reqwest::RequestBuilder {
    h.http
        .post(h.url("/v1/messages?beta=true"))
        .header("x-api-key", KEY)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "claude-code-20250219")
        .header("content-type", "application/json")
        .body(body.to_string())
}

/// `(account, status)` of each attempt, in order.
fn attempt_chain(log: &poolgate_core::RequestLog) -> Vec<(&str, u16)> {
    log.attempts
        .iter()
        .map(|a| (a.account_id.as_str(), a.status))
        .collect()
}

/// A Claude-style Messages request for `model`, sent.
async fn send_claude(h: &Harness, model: &str, stream: bool) -> reqwest::Response {
    claude_post(h, &claude_body(model, stream))
        .send()
        .await
        .unwrap()
}

async fn pool(accounts: impl FnOnce(&str) -> Vec<AccountState>) -> Harness {
    pool_with(RoutingPolicy::default(), accounts).await
}

async fn pool_with(
    policy: RoutingPolicy,
    accounts: impl FnOnce(&str) -> Vec<AccountState>,
) -> Harness {
    Harness::start(test_config(), move |m| {
        let base = m.url();
        let mut accs = accounts(&base);
        for a in &mut accs {
            // Codex accounts live under the backend path of the same mock.
            if a.account.spec.provider == poolgate_core::Provider::Codex {
                a.account.spec.base_url = Some(m.codex_base_url());
            }
        }
        let mut d: Delta = full(1, accs, vec![platform_key("key_1", KEY)]);
        d.policy = Some(policy);
        d
    })
    .await
}

#[tokio::test]
async fn azure_chat_goes_to_the_deployment_with_the_api_key_header() {
    let h = pool(|base| vec![azure_account("az_0", "az-key-0", base, "gpt-4o", 0)]).await;
    let r = h
        .post("/v1/chat/completions", &chat_body("gpt-4o", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"], "echo: hello azure",
        "{v}"
    );
    let reqs = h
        .mock
        .requests_to("/openai/deployments/gpt-4o/chat/completions");
    assert_eq!(reqs.len(), 1);
    let up = &reqs[0];
    assert!(
        up.path.ends_with("?api-version=2025-04-01-preview"),
        "{}",
        up.path
    );
    assert_eq!(up.header("api-key"), Some("az-key-0"));
    assert!(up.header("authorization").is_none(), "no bearer to Azure");
    let log = h.log(&id).await;
    assert_eq!(log.account_id.as_deref(), Some("az_0"));
    assert_eq!(log.translation, Translation::None);
    assert_eq!(
        log.upstream_model, None,
        "the deployment is named like the model"
    );
    assert!(log.input_tokens > 0 && log.output_tokens > 0, "{log:?}");

    // Streaming is relayed as it comes.
    let r = h
        .post("/v1/chat/completions", &chat_body("gpt-4o", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = text_of(r).await;
    let chunks = sse_data(&text);
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "echo: hello azure");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    h.stop().await;
}

#[tokio::test]
async fn azure_maps_models_to_its_deployment() {
    let h = pool(|base| {
        let mut a = azure_account("az_0", "az-key-0", base, "prod-4o", 0);
        a.account.spec.model_filter = vec!["gpt-4o".into(), "gpt-4o-2024-*".into()];
        vec![a]
    })
    .await;
    // Responses: the deployment goes in the body's `model`.
    let r = h
        .post(
            "/v1/responses",
            &json!({"model": "gpt-4o", "input": "hello azure"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "response", "{v}");
    let reqs = h.mock.requests_to("/openai/responses");
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].json().unwrap()["model"], "prod-4o");
    assert!(reqs[0].path.contains("api-version="), "{}", reqs[0].path);
    let log = h.log(&id).await;
    assert_eq!(log.model.as_deref(), Some("gpt-4o"));
    assert_eq!(log.upstream_model.as_deref(), Some("prod-4o"));

    // Chat: the deployment goes in the URL.
    let r = h
        .post(
            "/v1/chat/completions",
            &chat_body("gpt-4o-2024-08-06", false),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        h.mock
            .requests_to("/openai/deployments/prod-4o/chat/completions")
            .len(),
        1
    );

    // A model the deployment does not serve finds no account, and nothing goes upstream.
    h.mock.clear_requests();
    let r = h
        .post("/v1/chat/completions", &chat_body("gpt-5", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_available_account", "{v}");
    assert!(h.mock.requests().is_empty());

    // Azure has no compact endpoint: the route skips it.
    let r = h
        .post(
            "/v1/responses/compact",
            &json!({"model": "gpt-4o", "input": "x"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    h.stop().await;
}

#[tokio::test]
async fn azure_throttling_fails_over_to_the_next_deployment() {
    let h = pool(|base| {
        vec![
            azure_account("az_0", "az-key-0", base, "gpt-4o", 0),
            azure_account("az_1", "az-key-1", base, "gpt-4o", 1),
        ]
    })
    .await;
    h.mock.set_fault(
        "az-key-0",
        Fault::RateLimited {
            retry_after_secs: 30,
        },
    );
    let r = h
        .post("/v1/chat/completions", &chat_body("gpt-4o", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let log = h.log(&request_id(&r)).await;
    let chain = attempt_chain(&log);
    assert_eq!(chain, vec![("az_0", 429), ("az_1", 200)]);
    assert_eq!(log.account_id.as_deref(), Some("az_1"));
    h.stop().await;
}

#[tokio::test]
async fn anthropic_accounts_serve_messages_natively() {
    let h = pool(|base| vec![anthropic_account("an_0", "sk-ant-0", base, 0)]).await;
    let body = claude_body("claude-sonnet-4-5", false);
    let r = claude_post(&h, &body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(v["model"], "claude-sonnet-4-5");
    assert_eq!(v["content"][0]["text"], "echo: hello claude", "{v}");

    let reqs = h.mock.requests_to(MESSAGES_PATH);
    assert_eq!(reqs.len(), 1);
    let up = &reqs[0];
    assert_eq!(
        up.header("x-api-key"),
        Some("sk-ant-0"),
        "the account's key"
    );
    assert_eq!(up.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(up.header("anthropic-beta"), Some("claude-code-20250219"));
    assert!(up.header("authorization").is_none());
    assert_eq!(up.json().unwrap(), body, "the body goes through unchanged");
    let log = h.log(&id).await;
    assert_eq!(log.protocol, "anthropic_messages");
    assert_eq!(log.translation, Translation::None);
    assert_eq!(log.model.as_deref(), Some("claude-sonnet-4-5"));
    assert_eq!(log.upstream_model, None);
    assert!(log.input_tokens > 0 && log.output_tokens > 0, "{log:?}");
    let m = h.metrics().await;
    assert!(
        m.contains("poolgate_gateway_requests_total{route=\"messages\",status=\"200\",protocol=\"anthropic_messages\",translation=\"none\"} 1"),
        "{m}"
    );

    // Streaming: the API's own events, in order, relayed as they come.
    let r = send_claude(&h, "claude-sonnet-4-5", true).await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let text = text_of(r).await;
    let events = sse_events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{text}");
    assert_eq!(names.last(), Some(&"message_stop"), "{text}");
    assert!(names.contains(&"message_delta"), "{text}");
    let streamed: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(streamed, "echo: hello claude");
    let log = h.log(&id).await;
    assert_eq!(log.status, 200);
    assert!(log.output_tokens > 0, "{log:?}");
    assert_eq!(log.error_class, None);

    // count_tokens stays local.
    h.mock.clear_requests();
    let r = h
        .http
        .post(h.url("/v1/messages/count_tokens"))
        .header("x-api-key", KEY)
        .body(claude_body("claude-sonnet-4-5", false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["input_tokens"].as_u64().unwrap() > 0, "{v}");
    assert!(h.mock.requests().is_empty());
    h.stop().await;
}

#[tokio::test]
async fn anthropic_client_errors_come_back_as_the_api_sent_them() {
    let h = pool(|base| vec![anthropic_account("an_0", "sk-ant-0", base, 0)]).await;
    // The mock refuses a body without max_tokens, as the API does.
    let mut body = claude_body("claude-sonnet-4-5", false);
    body.as_object_mut().unwrap().remove("max_tokens");
    let r = claude_post(&h, &body).send().await.unwrap();
    // Our own parser accepts it (max_tokens is the upstream's rule), so the upstream's 400
    // is what the client sees.
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    h.stop().await;
}

#[tokio::test]
async fn overloaded_anthropic_fails_over_to_a_codex_account_by_translation() {
    let h = pool(|base| {
        vec![
            anthropic_account("an_0", "sk-ant-0", base, 0),
            codex_account("cx_1", "tok-1", base, 1),
        ]
    })
    .await;
    h.mock
        .set_fault("sk-ant-0", Fault::ServerError { status: 529 });
    let r = send_claude(&h, "claude-sonnet-4-5", false).await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(v["content"][0]["text"], "echo: hello claude", "{v}");
    let log = h.log(&id).await;
    let chain = attempt_chain(&log);
    assert_eq!(chain, vec![("an_0", 529), ("cx_1", 200)]);
    assert_eq!(log.translation, Translation::MessagesToResponses);
    assert_eq!(log.upstream_model.as_deref(), Some("gpt-5"));
    let up = h.mock.requests_to(CODEX_PATH);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].json().unwrap()["model"], "gpt-5");
    h.stop().await;
}

#[tokio::test]
async fn an_in_stream_error_before_content_fails_over() {
    let h = pool(|base| {
        vec![
            anthropic_account("an_0", "sk-ant-0", base, 0),
            anthropic_account("an_1", "sk-ant-1", base, 1),
        ]
    })
    .await;
    h.mock.set_fault(
        "sk-ant-0",
        Fault::InStreamFailure {
            code: "overloaded_error".into(),
            resets_in_secs: None,
        },
    );
    let r = send_claude(&h, "claude-sonnet-4-5", true).await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let text = text_of(r).await;
    assert!(!text.contains("overloaded_error"), "{text}");
    let events = sse_events(&text);
    assert_eq!(
        events.iter().filter(|(n, _)| n == "message_start").count(),
        1,
        "{text}"
    );
    assert_eq!(events.last().map(|(n, _)| n.as_str()), Some("message_stop"));
    let log = h.log(&id).await;
    let ids: Vec<&str> = log.attempts.iter().map(|a| a.account_id.as_str()).collect();
    assert_eq!(ids, vec!["an_0", "an_1"]);
    h.stop().await;
}

#[tokio::test]
async fn an_in_stream_error_after_content_ends_the_stream_with_an_error_event() {
    let h = pool(|base| vec![anthropic_account("an_0", "sk-ant-0", base, 0)]).await;
    // Paced, so the content reaches the client before the failure arrives (held together,
    // the failure would still fail over).
    h.mock.set_pacing(
        "sk-ant-0",
        Pacing {
            deltas: Some(3),
            delta_delay_ms: Some(50),
        },
    );
    h.mock.set_fault(
        "sk-ant-0",
        Fault::FailureAfterContent {
            code: "overloaded_error".into(),
            resets_in_secs: None,
        },
    );
    let r = send_claude(&h, "claude-sonnet-4-5", true).await;
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let text = text_of(r).await;
    let events = sse_events(&text);
    let streamed: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(streamed, "echo: hello claude", "the content went out first");
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error", "{text}");
    assert_eq!(data["error"]["type"], "overloaded_error", "{text}");
    let log = h.log(&id).await;
    assert_eq!(
        log.error_class,
        Some(poolgate_core::ErrorClass::Upstream5xx),
        "{log:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn routing_by_protocol_and_by_model() {
    // Anthropic accounts serve only Messages, and by default only Claude models.
    let h = pool(|base| vec![anthropic_account("an_0", "sk-ant-0", base, 0)]).await;
    let r = h
        .post(
            "/v1/chat/completions",
            &chat_body("claude-sonnet-4-5", false),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "no_available_account", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("protocol"),
        "{v}"
    );
    let r = send_claude(&h, "gpt-5", false).await;
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error", "Anthropic-shaped: {v}");
    assert!(h.mock.requests_to(MESSAGES_PATH).is_empty());
    h.stop().await;

    // Codex and Azure accounts never see a Messages request natively: Azure is skipped,
    // Codex serves by translation.
    let h = pool(|base| {
        vec![
            azure_account("az_0", "az-key-0", base, "claude-sonnet-4-5", 0),
            codex_account("cx_1", "tok-1", base, 1),
        ]
    })
    .await;
    let r = send_claude(&h, "claude-sonnet-4-5", false).await;
    assert_eq!(r.status(), 200);
    let log = h.log(&request_id(&r)).await;
    assert_eq!(log.account_id.as_deref(), Some("cx_1"));
    assert_eq!(log.attempts.len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn policy_aliases_choose_the_codex_model() {
    let policy = RoutingPolicy {
        model_aliases: vec![
            ModelAlias {
                from: "claude-haiku-*".into(),
                to: "gpt-5-mini".into(),
            },
            ModelAlias {
                from: "claude-*".into(),
                to: "gpt-5.1".into(),
            },
            ModelAlias {
                from: "fast".into(),
                to: "gpt-5-mini".into(),
            },
        ],
        ..RoutingPolicy::default()
    };
    let h = pool_with(policy, |base| {
        vec![
            codex_account("cx_0", "tok-0", base, 0),
            anthropic_account("an_1", "sk-ant-1", base, 1),
        ]
    })
    .await;
    for (asked, served) in [
        ("claude-haiku-4-5", "gpt-5-mini"),
        ("claude-opus-4-1", "gpt-5.1"),
    ] {
        h.mock.clear_requests();
        let r = send_claude(&h, asked, false).await;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["model"], asked, "the client sees its own model name: {v}");
        let up = h.mock.requests_to(CODEX_PATH);
        assert_eq!(up.len(), 1, "{asked}");
        assert_eq!(up[0].json().unwrap()["model"], served, "{asked}");
    }
    // Aliases apply to Codex accounts on the OpenAI routes too.
    h.mock.clear_requests();
    let r = h
        .post("/v1/chat/completions", &chat_body("fast", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = request_id(&r);
    let up = h.mock.requests_to(CODEX_PATH);
    assert_eq!(up[0].json().unwrap()["model"], "gpt-5-mini");
    let log = h.log(&id).await;
    assert_eq!(log.model.as_deref(), Some("fast"));
    assert_eq!(log.upstream_model.as_deref(), Some("gpt-5-mini"));
    assert_eq!(log.translation, Translation::ChatToResponses);
    h.stop().await;
}

#[tokio::test]
async fn a_key_allowed_only_the_codex_model_never_reaches_anthropic() {
    let h = Harness::start(test_config(), |m| {
        let mut key = platform_key("key_1", KEY);
        key.spec.allowed_models = vec!["gpt-5".into()];
        full(
            1,
            vec![
                anthropic_account("an_0", "sk-ant-0", &m.url(), 0),
                codex_account("cx_1", "tok-1", &m.codex_base_url(), 1),
            ],
            vec![key],
        )
    })
    .await;
    let r = send_claude(&h, "claude-sonnet-4-5", false).await;
    assert_eq!(r.status(), 200);
    let log = h.log(&request_id(&r)).await;
    assert_eq!(log.account_id.as_deref(), Some("cx_1"));
    assert!(h.mock.requests_to(MESSAGES_PATH).is_empty());
    h.stop().await;
}
