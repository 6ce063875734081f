#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The mock upstream over real sockets: every endpoint and every fault, checked against the
//! parsers the gateway uses on the real upstream (crates/wire).

use poolgate_wire::StreamTranslator;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
mod common;

use common::*;
use poolgate_testkit::mock::{
    Fault, MockConfig, MockLimit, MockUpstream, MockUsage, MockWindow, Pacing,
};
use poolgate_wire::aggregate::{AggregateError, ResponsesAggregator};
use poolgate_wire::chat::{ChatStreamOptions, ChatStreamTranslator, chat_to_responses_request};
use poolgate_wire::classify::{
    Outcome, StreamEventClass, classify_response, classify_stream_event, parse_codex_usage_headers,
};
use poolgate_wire::responses::{CodexRequestOptions, normalize_codex_request};
use poolgate_wire::sse::{SseDecoder, SseEvent};
use serde_json::{Value, json};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

impl Answer {
    fn outcome(&self, now: i64) -> Outcome {
        classify_response(self.status.as_u16(), |n| self.header(n), &self.body, now)
    }

    fn events(&self) -> Vec<SseEvent> {
        decode(&self.body)
    }
}

fn decode(body: &[u8]) -> Vec<SseEvent> {
    let mut d = SseDecoder::default();
    let mut out = Vec::new();
    d.push(body, &mut out).unwrap();
    d.finish(&mut out).unwrap();
    out
}

async fn send_raw(c: &HttpClient, req: Request<Full<Bytes>>) -> hyper::Response<Incoming> {
    c.request(req).await.unwrap()
}

fn codex_body(text: &str) -> Value {
    json!({
        "model": "gpt-5.3-codex",
        "instructions": "You are a test.",
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}],
        "tools": [],
        "tool_choice": "auto",
        "parallel_tool_calls": false,
        "store": false,
        "stream": true,
        "include": [],
    })
}

fn codex_headers<'a>(token: &'a str, account: &'a str) -> Vec<(&'a str, String)> {
    vec![
        ("authorization", format!("Bearer {token}")),
        ("chatgpt-account-id", account.to_string()),
        ("content-type", "application/json".to_string()),
        ("originator", "codex_cli_rs".to_string()),
    ]
}

async fn codex(
    c: &HttpClient,
    mock: &MockUpstream,
    token: &str,
    body: &Value,
    extra: &[(&str, &str)],
) -> Answer {
    let owned = codex_headers(token, "acct-1");
    let mut headers: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (*n, v.as_str())).collect();
    headers.extend_from_slice(extra);
    send(
        c,
        Method::POST,
        &format!("{}/responses", mock.codex_base_url()),
        &headers,
        body.to_string(),
    )
    .await
}

fn aggregate(events: &[SseEvent]) -> Result<Value, AggregateError> {
    let mut agg = ResponsesAggregator::default();
    for ev in events {
        agg.push(ev, now_ms());
    }
    agg.finish()
}

fn output_text(resp: &Value) -> String {
    resp["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap().iter())
        .map(|p| p["text"].as_str().unwrap().to_string())
        .collect()
}

fn event_types(events: &[SseEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.event.clone().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn codex_stream_decodes_aggregates_and_classifies() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    mock.set_usage(
        "tok-a",
        MockUsage {
            plan_type: "pro".into(),
            primary: Some(MockWindow::new(42.5, 300, 600)),
            secondary: Some(MockWindow::new(7.0, 10_080, 86_400)),
            additional: vec![],
        },
    );
    let before = now_ms();
    let a = codex(&c, &mock, "tok-a", &codex_body("hello world"), &[]).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    assert!(a.header("x-codex-turn-state").unwrap().starts_with("ts_"));
    assert!(a.header("x-request-id").is_some());

    let usage = parse_codex_usage_headers(|n| a.header(n), before);
    let p = usage.primary.unwrap();
    assert_eq!((p.used_percent, p.window_minutes), (42.5, 300));
    let reset = p.resets_at_ms.unwrap();
    assert!(
        (before + 590_000..=before + 610_000).contains(&reset),
        "{reset} vs {before}"
    );
    let s = usage.secondary.unwrap();
    assert_eq!((s.used_percent, s.window_minutes), (7.0, 10_080));

    let events = a.events();
    let types = event_types(&events);
    assert_eq!(
        types,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let classes: Vec<StreamEventClass> = events
        .iter()
        .map(|e| classify_stream_event(e, before))
        .collect();
    assert_eq!(classes[0], StreamEventClass::Lifecycle);
    assert_eq!(classes[1], StreamEventClass::Lifecycle);
    assert!(
        classes[2..11]
            .iter()
            .all(|c| *c == StreamEventClass::Content)
    );
    assert_eq!(classes[11], StreamEventClass::Terminal);
    // Data carries `type` first, as the real backend sends it.
    assert!(
        events[0]
            .data
            .starts_with(r#"{"type":"response.created","sequence_number":0,"#)
    );

    let resp = aggregate(&events).unwrap();
    assert_eq!(output_text(&resp), "echo: hello world");
    assert_eq!(resp["status"], "completed");
    let u = &resp["usage"];
    assert_eq!(u["output_tokens"], 4);
    assert_eq!(u["output_tokens_details"]["reasoning_tokens"], 0);
    assert_eq!(u["input_tokens_details"]["cached_tokens"], 0);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["input_tokens"].as_u64().unwrap() + 4
    );

    let rec = mock.requests_to("/backend-api/codex/responses");
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].token.as_deref(), Some("tok-a"));
    assert_eq!(rec[0].header("chatgpt-account-id"), Some("acct-1"));
    assert_eq!(rec[0].json().unwrap()["model"], "gpt-5.3-codex");
    assert_eq!(mock.request_count("tok-a"), 1);
    mock.shutdown().await;
}

#[tokio::test]
async fn codex_refuses_what_the_real_backend_refuses() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let now = now_ms();
    let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut b = codex_body("hi");
        f(b.as_object_mut().unwrap());
        b
    };
    let cases: Vec<(Value, &str)> = vec![
        (
            with(&|b| {
                b.remove("instructions");
            }),
            "Instructions are required",
        ),
        (
            with(&|b| {
                b.insert("instructions".into(), json!("  "));
            }),
            "Instructions are required",
        ),
        (
            with(&|b| {
                b.insert("store".into(), json!(true));
            }),
            "Store must be set to false",
        ),
        (
            with(&|b| {
                b.remove("store");
            }),
            "Store must be set to false",
        ),
        (
            with(&|b| {
                b.insert("stream".into(), json!(false));
            }),
            "Stream must be set to true",
        ),
        (
            with(&|b| {
                b.insert("temperature".into(), json!(0.2));
            }),
            "Unsupported parameter: temperature",
        ),
        (
            with(&|b| {
                b.insert("max_output_tokens".into(), json!(10));
            }),
            "Unsupported parameter: max_output_tokens",
        ),
        (
            with(&|b| {
                b.insert("input".into(), json!("plain"));
            }),
            "Input must be a list",
        ),
        (
            with(&|b| {
                b.remove("model");
            }),
            "Model is required",
        ),
    ];
    for (body, detail) in cases {
        let a = codex(&c, &mock, "tok", &body, &[]).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{detail}");
        assert_eq!(a.json()["detail"], detail);
        assert_eq!(a.outcome(now), Outcome::ClientError, "{detail}");
    }
    // The account header is required.
    let a = send(
        &c,
        Method::POST,
        &format!("{}/responses", mock.codex_base_url()),
        &[("authorization", "Bearer tok")],
        codex_body("hi").to_string(),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["detail"], "Missing chatgpt-account-id header");
    // No bearer at all.
    let a = send(
        &c,
        Method::POST,
        &format!("{}/responses", mock.codex_base_url()),
        &[("chatgpt-account-id", "a")],
        codex_body("hi").to_string(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.outcome(now), Outcome::AuthFailed);
    // zstd bodies are not decoded by the mock: refused clearly.
    let a = codex(
        &c,
        &mock,
        "tok",
        &codex_body("hi"),
        &[("content-encoding", "zstd")],
    )
    .await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn wire_normalised_chat_requests_are_accepted_and_translate_back() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let chat = json!({
        "model": "gpt-5.3-codex",
        "messages": [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "ping"},
        ],
        "temperature": 0.3,
        "max_tokens": 50,
        "stream": true,
        "stream_options": {"include_usage": true},
        "reasoning_effort": "low",
    });
    let conv = chat_to_responses_request(&chat).unwrap();
    let body = normalize_codex_request(conv.body, &CodexRequestOptions::default()).unwrap();
    let a = codex(&c, &mock, "tok", &body, &[("x-mock-deltas", "3")]).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    let mut tr = ChatStreamTranslator::new(ChatStreamOptions {
        id: "chatcmpl-1".into(),
        model: "gpt-5.3-codex".into(),
        created: 0,
        include_usage: true,
        tool_names: conv.tool_names,
    });
    let mut frames = Vec::new();
    for ev in a.events() {
        tr.push(&ev, now_ms(), &mut frames);
    }
    tr.finish(&mut frames);
    let chunks: Vec<Value> = frames
        .iter()
        .flat_map(|f| decode(f))
        .filter(|e| !e.is_done())
        .map(|e| e.json().unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "echo: ping");
    let usage = chunks.iter().find(|c| c["usage"].is_object()).unwrap();
    // Reasoning was requested: 3 deltas plus the reasoning tokens.
    assert_eq!(usage["usage"]["completion_tokens"], 3 + 16);
}

#[tokio::test]
async fn codex_function_calls() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let mut body = codex_body("please use tool get_weather for Paris");
    body["tools"] = json!([
        {"type": "function", "name": "other", "parameters": {"type": "object", "properties": {}}},
        {"type": "function", "name": "get_weather", "parameters": {"type": "object",
            "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    ]);
    let a = codex(&c, &mock, "tok", &body, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let events = a.events();
    let types = event_types(&events);
    assert!(types.contains(&"response.function_call_arguments.delta".to_string()));
    assert!(types.contains(&"response.function_call_arguments.done".to_string()));
    assert!(!types.iter().any(|t| t.starts_with("response.output_text")));
    assert_eq!(types.last().unwrap(), "response.completed");
    let resp = aggregate(&events).unwrap();
    let call = &resp["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["arguments"], r#"{"city":"mock"}"#);
    let call_id = call["call_id"].as_str().unwrap().to_string();

    // The tool's result comes back: the model answers with text.
    body["input"].as_array_mut().unwrap().extend([
        json!({"type": "function_call", "call_id": call_id, "name": "get_weather", "arguments": "{\"city\":\"mock\"}"}),
        json!({"type": "function_call_output", "call_id": call_id, "output": "sunny"}),
    ]);
    let a = codex(&c, &mock, "tok", &body, &[]).await;
    assert_eq!(
        output_text(&aggregate(&a.events()).unwrap()),
        "tool result: sunny"
    );
}

#[tokio::test]
async fn account_scoped_state_is_refused_on_another_account() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let url = format!("{}/responses", mock.codex_base_url());
    let post = |account: &'static str, body: Value, turn_state: Option<String>| {
        let c = c.clone();
        let url = url.clone();
        async move {
            let mut h = vec![
                ("authorization", "Bearer tok".to_string()),
                ("chatgpt-account-id", account.to_string()),
            ];
            if let Some(ts) = turn_state {
                h.push(("x-codex-turn-state", ts));
            }
            let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (*n, v.as_str())).collect();
            send(&c, Method::POST, &url, &h, body.to_string()).await
        }
    };
    let mut body = codex_body("think");
    body["reasoning"] = json!({"effort": "low", "summary": "auto"});
    body["include"] = json!(["reasoning.encrypted_content"]);
    let first = post("acct-A", body.clone(), None).await;
    assert_eq!(first.status, StatusCode::OK);
    let turn_state = first.header("x-codex-turn-state").unwrap().to_string();
    let resp = aggregate(&first.events()).unwrap();
    let reasoning = resp["output"][0].clone();
    assert_eq!(reasoning["type"], "reasoning");
    assert!(
        reasoning["encrypted_content"]
            .as_str()
            .unwrap()
            .starts_with("mockenc:")
    );
    assert_eq!(
        resp["usage"]["output_tokens_details"]["reasoning_tokens"],
        16
    );

    let mut next = body.clone();
    next["input"].as_array_mut().unwrap().push(reasoning);
    next["input"]
        .as_array_mut()
        .unwrap()
        .push(json!({"role": "user", "content": "more"}));
    // Same account (another token after a refresh is fine): accepted, turn state echoed.
    let same = post("acct-A", next.clone(), Some(turn_state.clone())).await;
    assert_eq!(same.status, StatusCode::OK);
    assert_eq!(same.header("x-codex-turn-state"), Some(turn_state.as_str()));
    // Another account cannot decrypt it.
    let other = post("acct-B", next.clone(), None).await;
    assert_eq!(other.status, StatusCode::BAD_REQUEST);
    assert_eq!(other.json()["error"]["code"], "invalid_encrypted_content");
    assert_eq!(other.outcome(now_ms()), Outcome::ClientError);
    // Nor use its turn state.
    let other = post("acct-B", body, Some(turn_state)).await;
    assert_eq!(other.status, StatusCode::BAD_REQUEST);
    // What wire strips on failover is accepted anywhere.
    let mut stripped = next;
    poolgate_wire::responses::strip_account_scoped_items(&mut stripped);
    assert_eq!(post("acct-B", stripped, None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn prompt_cache_is_warm_per_account() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let mut body = codex_body("a fairly long prompt to get several input tokens counted");
    body["prompt_cache_key"] = json!("conv-1");
    let cached = |a: &Answer| {
        aggregate(&a.events()).unwrap()["usage"]["input_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(cached(&codex(&c, &mock, "tok-1", &body, &[]).await), 0);
    assert!(cached(&codex(&c, &mock, "tok-1", &body, &[]).await) > 0);
    assert_eq!(cached(&codex(&c, &mock, "tok-2", &body, &[]).await), 0);
}

#[tokio::test]
async fn compact_and_models() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let owned = codex_headers("tok", "acct-1");
    let h: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let body =
        json!({"model": "gpt-5.3-codex", "input": [{"role": "user", "content": "long history"}]});
    let a = send(
        &c,
        Method::POST,
        &format!("{}/responses/compact", mock.codex_base_url()),
        &h,
        body.to_string(),
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    let out = a.json();
    assert_eq!(
        out["output"][0]["content"][0]["text"],
        "compacted: echo: long history"
    );
    assert_eq!(out["output"][1]["type"], "compaction");
    let bad = json!({"model": "m", "input": [], "stream": true});
    let a = send(
        &c,
        Method::POST,
        &format!("{}/responses/compact", mock.codex_base_url()),
        &h,
        bad.to_string(),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    let a = send(
        &c,
        Method::GET,
        &format!("{}/models?client_version=0.130.0", mock.codex_base_url()),
        &h,
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.header("etag").is_some());
    let models = a.json();
    let first = &models["models"][0];
    assert_eq!(first["slug"], "gpt-5.3-codex");
    for field in [
        "display_name",
        "supported_reasoning_levels",
        "shell_type",
        "visibility",
        "base_instructions",
        "truncation_policy",
    ] {
        assert!(!first[field].is_null(), "{field}");
    }
    let a = send(
        &c,
        Method::GET,
        &format!("{}/models", mock.openai_base_url()),
        &h,
        "",
    )
    .await;
    let v = a.json();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"gpt-4.1-mini"));
}

fn openai_headers(key: &str) -> Vec<(&'static str, String)> {
    vec![
        ("authorization", format!("Bearer {key}")),
        ("content-type", "application/json".into()),
    ]
}

async fn openai(
    c: &HttpClient,
    mock: &MockUpstream,
    path: &str,
    key: &str,
    body: &Value,
    extra: &[(&str, &str)],
) -> Answer {
    let owned = openai_headers(key);
    let mut h: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (*n, v.as_str())).collect();
    h.extend_from_slice(extra);
    send(
        c,
        Method::POST,
        &format!("{}{path}", mock.openai_base_url()),
        &h,
        body.to_string(),
    )
    .await
}

#[tokio::test]
async fn openai_chat_completions() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let body =
        json!({"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hi there"}]});
    let a = openai(&c, &mock, "/chat/completions", "sk-1", &body, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "echo: hi there");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(
        v["usage"]["total_tokens"].as_u64().unwrap(),
        v["usage"]["prompt_tokens"].as_u64().unwrap() + 4
    );

    // Tool calls.
    let tools = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}]);
    let tool_body = json!({"model": "gpt-4.1-mini", "tools": tools, "messages": [{"role": "user", "content": "call the tool"}]});
    let v = openai(&c, &mock, "/chat/completions", "sk-1", &tool_body, &[])
        .await
        .json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "lookup"
    );
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
        r#"{"q":"mock"}"#
    );

    // Streaming with usage and a chosen number of deltas.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let a = openai(
        &c,
        &mock,
        "/chat/completions",
        "sk-1",
        &sbody,
        &[("x-mock-deltas", "7")],
    )
    .await;
    assert_eq!(a.header("content-type"), Some("text/event-stream"));
    let events = a.events();
    assert!(events.last().unwrap().is_done());
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| !e.is_done())
        .map(|e| e.json().unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let contents: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(contents.len(), 7);
    assert_eq!(contents.concat(), "echo: hi there");
    let finish = chunks
        .iter()
        .find(|c| c["choices"][0]["finish_reason"] == "stop");
    assert!(finish.is_some());
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 7);
    assert_eq!(
        poolgate_wire::usage::usage_from_json(last)
            .unwrap()
            .output_tokens,
        7
    );

    // Without include_usage: no usage chunk.
    sbody["stream_options"] = json!({"include_usage": false});
    let a = openai(&c, &mock, "/chat/completions", "sk-1", &sbody, &[]).await;
    assert!(
        a.events().iter().filter(|e| !e.is_done()).all(|e| e
            .json()
            .unwrap()
            .get("usage")
            .is_none())
    );

    // Streaming tool call.
    let mut stool = tool_body.clone();
    stool["stream"] = json!(true);
    let a = openai(&c, &mock, "/chat/completions", "sk-1", &stool, &[]).await;
    let chunks: Vec<Value> = a
        .events()
        .iter()
        .filter(|e| !e.is_done())
        .map(|e| e.json().unwrap())
        .collect();
    assert_eq!(
        chunks[0]["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "lookup"
    );
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, r#"{"q":"mock"}"#);
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );

    // Bad requests are OpenAI-shaped 400s.
    let a = openai(
        &c,
        &mock,
        "/chat/completions",
        "sk-1",
        &json!({"model": "m", "messages": []}),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.json()["error"]["param"], "messages");
    let a = send(
        &c,
        Method::POST,
        &format!("{}/chat/completions", mock.openai_base_url()),
        &[],
        body.to_string(),
    )
    .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn openai_responses_stream_and_not() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let body = json!({"model": "gpt-4.1", "input": "hello", "temperature": 0.5});
    let a = openai(&c, &mock, "/responses", "sk-2", &body, &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let v = a.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["store"], true);
    assert_eq!(output_text(&v), "echo: hello");
    let mut s = body.clone();
    s["stream"] = json!(true);
    let a = openai(&c, &mock, "/responses", "sk-2", &s, &[]).await;
    let resp = aggregate(&a.events()).unwrap();
    assert_eq!(output_text(&resp), "echo: hello");
    assert_eq!(resp["usage"], v["usage"]);
    let a = openai(
        &c,
        &mock,
        "/responses",
        "sk-2",
        &json!({"model": "gpt-4.1"}),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn usage_endpoint() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let url = format!("{}/wham/usage", mock.usage_base_url());
    let h = [
        ("authorization", "Bearer tok-u"),
        ("chatgpt-account-id", "acct-u"),
    ];
    let v = send(&c, Method::GET, &url, &h, "").await.json();
    assert_eq!(v["plan_type"], "plus");
    assert_eq!(v["rate_limit"]["allowed"], true);
    assert_eq!(
        v["rate_limit"]["primary_window"]["limit_window_seconds"],
        18_000
    );
    assert_eq!(
        v["rate_limit"]["secondary_window"]["limit_window_seconds"],
        604_800
    );

    mock.set_usage(
        "tok-u",
        MockUsage {
            plan_type: "free".into(),
            primary: Some(MockWindow::new(100.0, 10_080, 3600)),
            secondary: None,
            additional: vec![MockLimit {
                limit_name: "GPT-5.3-Codex-Spark".into(),
                metered_feature: "codex_spark".into(),
                primary: Some(MockWindow::five_hour(12.0)),
                secondary: None,
            }],
        },
    );
    let now = now_ms() / 1000;
    let v = send(&c, Method::GET, &url, &h, "").await.json();
    assert_eq!(v["plan_type"], "free");
    let rl = &v["rate_limit"];
    assert_eq!(
        (rl["allowed"].clone(), rl["limit_reached"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(rl["primary_window"]["used_percent"], 100.0);
    let reset_at = rl["primary_window"]["reset_at"].as_i64().unwrap();
    assert!((now + 3595..=now + 3605).contains(&reset_at));
    assert_eq!(rl["secondary_window"], Value::Null);
    let extra = &v["additional_rate_limits"][0];
    assert_eq!(extra["limit_name"], "GPT-5.3-Codex-Spark");
    assert_eq!(extra["rate_limit"]["primary_window"]["used_percent"], 12.0);

    // A pending usage-limit fault shows as an exhausted window, and is not used up.
    mock.set_fault(
        "tok-v",
        Fault::UsageLimit {
            resets_in_secs: 900,
        }
        .times(1),
    );
    let hv = [
        ("authorization", "Bearer tok-v"),
        ("chatgpt-account-id", "acct-v"),
    ];
    let v = send(&c, Method::GET, &url, &hv, "").await.json();
    assert_eq!(v["rate_limit"]["limit_reached"], true);
    assert_eq!(
        v["rate_limit"]["primary_window"]["reset_after_seconds"],
        900
    );
    let a = codex(&c, &mock, "tok-v", &codex_body("x"), &[]).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);

    // The account header is required; faults apply.
    let a = send(
        &c,
        Method::GET,
        &url,
        &[("authorization", "Bearer tok-u")],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    mock.set_fault("tok-u", Fault::Unauthorized.times(1));
    let a = send(&c, Method::GET, &url, &h, "").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(&c, Method::GET, &url, &h, "").await.status,
        StatusCode::OK
    );
    let a = send(
        &c,
        Method::GET,
        &format!("{}/api/codex/usage", mock.url()),
        &h,
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
}

async fn token_request(c: &HttpClient, mock: &MockUpstream, form: &str) -> Answer {
    send(
        c,
        Method::POST,
        &format!("{}/oauth/token", mock.oauth_issuer()),
        &[("content-type", "application/x-www-form-urlencoded")],
        form.to_string(),
    )
    .await
}

#[tokio::test]
async fn oauth_refresh_rotates_and_refuses_reuse() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let issued = mock.issue_tokens("dev@example.com", "ws-123");
    let claims = poolgate_core::jwt::openai_claims(&issued.id_token).unwrap();
    assert_eq!(claims.chatgpt_account_id.as_deref(), Some("ws-123"));
    assert_eq!(claims.email.as_deref(), Some("dev@example.com"));
    let access = poolgate_core::jwt::openai_claims(&issued.access_token).unwrap();
    assert_eq!(access.chatgpt_account_id.as_deref(), Some("ws-123"));
    assert!(access.exp.unwrap() > now_ms() / 1000 + 86_400);

    let form = format!(
        "grant_type=refresh_token&refresh_token={}&client_id=app_EMoamEEZ73f0CkXaXp7hrann&scope=openid+profile+email",
        issued.refresh_token
    );
    let a = token_request(&c, &mock, &form).await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    let v = a.json();
    let new_refresh = v["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(new_refresh, issued.refresh_token);
    assert_ne!(v["access_token"], issued.access_token.as_str());
    assert_eq!(v["token_type"], "Bearer");
    let claims = poolgate_core::jwt::openai_claims(v["id_token"].as_str().unwrap()).unwrap();
    assert_eq!(claims.chatgpt_account_id.as_deref(), Some("ws-123"));

    // The old refresh token is spent.
    let a = token_request(&c, &mock, &form).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["error"]["code"], "refresh_token_reused");

    // The new one works once, also as JSON (how the Codex CLI refreshes).
    let json_body = json!({"client_id": "app_EMoamEEZ73f0CkXaXp7hrann", "grant_type": "refresh_token", "refresh_token": new_refresh});
    let token_url = format!("{}/oauth/token", mock.oauth_issuer());
    let post_json = || {
        send(
            &c,
            Method::POST,
            &token_url,
            &[("content-type", "application/json")],
            json_body.to_string(),
        )
    };
    assert_eq!(post_json().await.status, StatusCode::OK);
    assert_eq!(post_json().await.status, StatusCode::UNAUTHORIZED);

    // Unknown refresh tokens (imported accounts) are accepted once.
    let unknown = token_request(
        &c,
        &mock,
        "grant_type=refresh_token&refresh_token=imported-rt",
    )
    .await;
    assert_eq!(unknown.status, StatusCode::OK);
    let again = token_request(
        &c,
        &mock,
        "grant_type=refresh_token&refresh_token=imported-rt",
    )
    .await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);

    // Authorization codes: single use too.
    let code = "grant_type=authorization_code&code=abc&redirect_uri=http%3A%2F%2Flocalhost%3A1455%2Fauth%2Fcallback&code_verifier=v";
    let a = token_request(&c, &mock, code).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.json()["id_token"].as_str().unwrap().split('.').count() == 3);
    assert_eq!(
        token_request(&c, &mock, code).await.json()["error"],
        "invalid_grant"
    );
    assert_eq!(
        token_request(&c, &mock, "grant_type=password").await.json()["error"],
        "unsupported_grant_type"
    );
    assert_eq!(
        token_request(&c, &mock, "grant_type=refresh_token")
            .await
            .status,
        StatusCode::BAD_REQUEST
    );

    // Faults keyed by the refresh token.
    let t = mock.issue_tokens("x@example.com", "ws-9");
    mock.set_fault(&t.refresh_token, Fault::Unauthorized.times(1));
    let f = format!("grant_type=refresh_token&refresh_token={}", t.refresh_token);
    let a = token_request(&c, &mock, &f).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["error"]["code"], "refresh_token_invalidated");
    assert_eq!(token_request(&c, &mock, &f).await.status, StatusCode::OK);
}

#[tokio::test]
async fn http_faults_classify_as_intended() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let body = codex_body("x");

    mock.set_fault(
        "t",
        Fault::RateLimited {
            retry_after_secs: 30,
        }
        .times(1),
    );
    let now = now_ms();
    let a = codex(&c, &mock, "t", &body, &[]).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.header("retry-after"), Some("30"));
    assert_eq!(
        a.outcome(now),
        Outcome::RateLimited {
            retry_after_secs: Some(30),
            resets_at_ms: Some(now + 30_000)
        }
    );
    // Ran out after one request.
    assert_eq!(
        codex(&c, &mock, "t", &body, &[]).await.status,
        StatusCode::OK
    );

    mock.set_fault(
        "t",
        Fault::UsageLimit {
            resets_in_secs: 3600,
        },
    );
    let now = now_ms();
    let a = codex(&c, &mock, "t", &body, &[]).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    let err = &a.json()["error"];
    assert_eq!(err["type"], "usage_limit_reached");
    assert_eq!(err["message"], "The usage limit has been reached");
    assert_eq!(err["resets_in_seconds"], 3600);
    let resets_at = err["resets_at"].as_i64().unwrap();
    assert!((now / 1000 + 3595..=now / 1000 + 3605).contains(&resets_at));
    assert_eq!(
        a.outcome(now),
        Outcome::QuotaExhausted {
            resets_at_ms: Some(resets_at * 1000)
        }
    );
    let usage = parse_codex_usage_headers(|n| a.header(n), now);
    assert_eq!(usage.primary.unwrap().used_percent, 100.0);
    assert!(usage.primary.unwrap().exhausted());
    // No count: it stays until cleared.
    assert_eq!(
        codex(&c, &mock, "t", &body, &[]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    mock.clear_fault("t");
    assert_eq!(
        codex(&c, &mock, "t", &body, &[]).await.status,
        StatusCode::OK
    );

    let cases: Vec<(Fault, StatusCode, Outcome)> = vec![
        (
            Fault::Unauthorized,
            StatusCode::UNAUTHORIZED,
            Outcome::AuthFailed,
        ),
        (
            Fault::Deactivated,
            StatusCode::UNAUTHORIZED,
            Outcome::Deactivated,
        ),
        (
            Fault::ServerError { status: 503 },
            StatusCode::SERVICE_UNAVAILABLE,
            Outcome::Upstream5xx,
        ),
        (
            Fault::ServerError { status: 200 },
            StatusCode::INTERNAL_SERVER_ERROR,
            Outcome::Upstream5xx,
        ),
        (Fault::Challenge, StatusCode::FORBIDDEN, Outcome::Challenge),
    ];
    for (fault, status, outcome) in cases {
        mock.set_fault("t", fault.clone().times(1));
        let a = codex(&c, &mock, "t", &body, &[]).await;
        assert_eq!(a.status, status, "{fault:?}");
        assert_eq!(a.outcome(now_ms()), outcome, "{fault:?}");
        assert!(outcome.should_failover());
        // Same faults on the OpenAI side.
        mock.set_fault("k", fault.clone().times(1));
        let chat = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let a = openai(&c, &mock, "/chat/completions", "k", &chat, &[]).await;
        assert_eq!(a.outcome(now_ms()), outcome, "openai {fault:?}");
    }
    let a = {
        mock.set_fault("t", Fault::Challenge.times(1));
        codex(&c, &mock, "t", &body, &[]).await
    };
    assert_eq!(a.header("cf-mitigated"), Some("challenge"));
    assert!(a.header("content-type").unwrap().starts_with("text/html"));

    // Queued faults apply in turn; other tokens are untouched.
    mock.set_fault("q", Fault::ServerError { status: 502 }.times(1));
    mock.add_fault("q", Fault::Unauthorized.times(1));
    assert_eq!(
        codex(&c, &mock, "other", &body, &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        codex(&c, &mock, "q", &body, &[]).await.status,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        codex(&c, &mock, "q", &body, &[]).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        codex(&c, &mock, "q", &body, &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(mock.request_count("q"), 3);

    mock.set_fault("q", Fault::Unauthorized);
    mock.set_fault("q2", Fault::Unauthorized);
    mock.clear_faults();
    assert_eq!(
        codex(&c, &mock, "q", &body, &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        codex(&c, &mock, "q2", &body, &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn slow_first_byte_delays_the_head() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    mock.set_fault("t", Fault::SlowFirstByte { delay_ms: 300 }.times(1));
    let start = Instant::now();
    let a = codex(&c, &mock, "t", &codex_body("slow"), &[]).await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(output_text(&aggregate(&a.events()).unwrap()), "echo: slow");
}

/// Reads a streaming answer frame by frame, noting when each event was decoded.
async fn timed_events(
    resp: hyper::Response<Incoming>,
) -> (Vec<(SseEvent, Instant)>, Option<hyper::Error>) {
    let mut body = resp.into_body();
    let mut d = SseDecoder::default();
    let mut out = Vec::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return (out, Some(e)),
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    let mut evs = Vec::new();
                    d.push(&data, &mut evs).unwrap();
                    let at = Instant::now();
                    out.extend(evs.into_iter().map(|e| (e, at)));
                }
            }
        }
    }
    let mut evs = Vec::new();
    d.finish(&mut evs).unwrap();
    out.extend(evs.into_iter().map(|e| (e, Instant::now())));
    (out, None)
}

fn codex_request(
    mock: &MockUpstream,
    token: &str,
    body: &Value,
    extra: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let owned = codex_headers(token, "acct-1");
    let mut h: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (*n, v.as_str())).collect();
    h.extend_from_slice(extra);
    request(
        Method::POST,
        &format!("{}/responses", mock.codex_base_url()),
        &h,
        body.to_string(),
    )
}

#[tokio::test]
async fn stall_mid_stream_and_paced_deltas() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    mock.set_fault(
        "t",
        Fault::StallMidStream {
            after_events: 3,
            stall_ms: 400,
        }
        .times(1),
    );
    let resp = send_raw(&c, codex_request(&mock, "t", &codex_body("stall"), &[])).await;
    let (events, err) = timed_events(resp).await;
    assert!(err.is_none());
    assert_eq!(events.len(), 12);
    let gap = events[3].1 - events[2].1;
    assert!(gap >= Duration::from_millis(350), "gap {gap:?}");
    let evs: Vec<SseEvent> = events.into_iter().map(|(e, _)| e).collect();
    assert_eq!(output_text(&aggregate(&evs).unwrap()), "echo: stall");

    // Paced deltas: each delta waits; the whole stream takes at least deltas × delay.
    mock.set_pacing(
        "p",
        Pacing {
            deltas: Some(5),
            delta_delay_ms: Some(40),
        },
    );
    let start = Instant::now();
    let resp = send_raw(&c, codex_request(&mock, "p", &codex_body("paced"), &[])).await;
    let (events, _) = timed_events(resp).await;
    assert!(start.elapsed() >= Duration::from_millis(200));
    let deltas: Vec<&(SseEvent, Instant)> = events
        .iter()
        .filter(|(e, _)| e.event.as_deref() == Some("response.output_text.delta"))
        .collect();
    assert_eq!(deltas.len(), 5);
    for w in deltas.windows(2) {
        assert!(w[1].1 - w[0].1 >= Duration::from_millis(30));
    }
    // Headers override the token's pacing.
    let a = codex(
        &c,
        &mock,
        "p",
        &codex_body("paced"),
        &[("x-mock-deltas", "2"), ("x-mock-delta-delay-ms", "0")],
    )
    .await;
    let n = a
        .events()
        .iter()
        .filter(|e| e.event.as_deref() == Some("response.output_text.delta"))
        .count();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn dropped_connections() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    mock.set_fault("t", Fault::DropConnection { after_events: 5 }.times(1));
    let resp = send_raw(&c, codex_request(&mock, "t", &codex_body("drop"), &[])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (events, err) = timed_events(resp).await;
    assert!(err.is_some(), "the body must end in an error, not cleanly");
    assert_eq!(events.len(), 5);
    let evs: Vec<SseEvent> = events.into_iter().map(|(e, _)| e).collect();
    assert!(
        evs.iter()
            .all(|e| classify_stream_event(e, 0) != StreamEventClass::Terminal)
    );
    // Output started but never finished: an incomplete response, not a completed one.
    let resp = aggregate(&evs).unwrap();
    assert_eq!(resp["status"], "incomplete");

    // Before any event: the aggregator sees nothing.
    mock.set_fault("t", Fault::DropConnection { after_events: 0 }.times(1));
    let resp = send_raw(&c, codex_request(&mock, "t", &codex_body("drop"), &[])).await;
    let (events, err) = timed_events(resp).await;
    assert!(err.is_some() && events.is_empty());
    assert_eq!(aggregate(&[]), Err(AggregateError::Truncated));

    // A JSON request gets no answer at all.
    mock.set_fault("k", Fault::DropConnection { after_events: 0 }.times(1));
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
    let owned = openai_headers("k");
    let h: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let r = c
        .request(request(
            Method::POST,
            &format!("{}/chat/completions", mock.openai_base_url()),
            &h,
            chat.to_string(),
        ))
        .await;
    assert!(r.is_err());
    assert_eq!(
        openai(&c, &mock, "/chat/completions", "k", &chat, &[])
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn truncated_bodies_announce_more_than_they_send() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    mock.set_fault("k", Fault::TruncatedBody.times(1));
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "cut"}]});
    let owned = openai_headers("k");
    let h: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let resp = send_raw(
        &c,
        request(
            Method::POST,
            &format!("{}/chat/completions", mock.openai_base_url()),
            &h,
            chat.to_string(),
        ),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let announced: usize = resp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut body = resp.into_body();
    let mut got = 0;
    let mut failed = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => got += f.data_ref().map_or(0, |d| d.len()),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the body must end in an error");
    assert_eq!(got, announced / 2);
    // Taken once: the next answer is whole.
    assert_eq!(
        openai(&c, &mock, "/chat/completions", "k", &chat, &[])
            .await
            .status,
        StatusCode::OK
    );
    // A stream is cut after its first event.
    mock.set_fault("t", Fault::TruncatedBody.times(1));
    let resp = send_raw(&c, codex_request(&mock, "t", &codex_body("cut"), &[])).await;
    let (events, err) = timed_events(resp).await;
    assert!(err.is_some());
    assert_eq!(events.len(), 1);
}

#[tokio::test]
async fn in_stream_failures_classify_for_failover() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    mock.set_fault(
        "t",
        Fault::InStreamFailure {
            code: "usage_limit_reached".into(),
            resets_in_secs: Some(120),
        }
        .times(1),
    );
    let now = now_ms();
    let a = codex(&c, &mock, "t", &codex_body("x"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    let events = a.events();
    assert_eq!(
        event_types(&events),
        [
            "response.created",
            "response.in_progress",
            "response.failed"
        ]
    );
    assert_eq!(
        classify_stream_event(&events[0], now),
        StreamEventClass::Lifecycle
    );
    assert_eq!(
        classify_stream_event(&events[2], now),
        StreamEventClass::Failed(Outcome::QuotaExhausted {
            resets_at_ms: Some(now + 120_000)
        })
    );
    let Err(AggregateError::Failed(f)) = aggregate(&events) else {
        panic!("expected a failure")
    };
    assert_eq!(f.code.as_deref(), Some("usage_limit_reached"));
    assert_eq!(f.event_type, "response.failed");

    for (code, outcome) in [
        (
            "rate_limit_exceeded",
            Outcome::RateLimited {
                retry_after_secs: None,
                resets_at_ms: None,
            },
        ),
        ("account_deactivated", Outcome::Deactivated),
        ("server_error", Outcome::Upstream5xx),
    ] {
        mock.set_fault(
            "t",
            Fault::InStreamFailure {
                code: code.into(),
                resets_in_secs: None,
            }
            .times(1),
        );
        let events = codex(&c, &mock, "t", &codex_body("x"), &[]).await.events();
        assert_eq!(
            classify_stream_event(&events[2], now),
            StreamEventClass::Failed(outcome),
            "{code}"
        );
    }

    // A non-streaming request does not use the fault up; the next stream does.
    mock.set_fault(
        "k",
        Fault::InStreamFailure {
            code: "usage_limit_reached".into(),
            resets_in_secs: None,
        }
        .times(1),
    );
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
    assert_eq!(
        openai(&c, &mock, "/chat/completions", "k", &chat, &[])
            .await
            .status,
        StatusCode::OK
    );
    let mut s = chat.clone();
    s["stream"] = json!(true);
    let events = openai(&c, &mock, "/chat/completions", "k", &s, &[])
        .await
        .events();
    assert!(!events.iter().any(SseEvent::is_done));
    let err = events.last().unwrap().json().unwrap();
    assert_eq!(err["error"]["code"], "usage_limit_reached");
    let events = openai(&c, &mock, "/chat/completions", "k", &s, &[])
        .await
        .events();
    assert!(events.last().unwrap().is_done());
}

#[tokio::test]
async fn failures_after_content_come_after_the_deltas() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    mock.set_fault(
        "t",
        Fault::FailureAfterContent {
            code: "usage_limit_reached".into(),
            resets_in_secs: Some(60),
        }
        .times(1),
    );
    let now = now_ms();
    let events = codex(&c, &mock, "t", &codex_body("x"), &[]).await.events();
    let types = event_types(&events);
    let first_delta = types
        .iter()
        .position(|t| t == "response.output_text.delta")
        .expect("content before the failure");
    assert_eq!(types.last().map(String::as_str), Some("response.failed"));
    assert!(first_delta < types.len() - 1);
    assert!(!types.iter().any(|t| t == "response.completed"));
    assert_eq!(
        classify_stream_event(events.last().unwrap(), now),
        StreamEventClass::Failed(Outcome::QuotaExhausted {
            resets_at_ms: Some(now + 60_000)
        })
    );
    // Used up: the next stream completes.
    let events = codex(&c, &mock, "t", &codex_body("x"), &[]).await.events();
    assert_eq!(
        event_types(&events).last().map(String::as_str),
        Some("response.completed")
    );

    mock.set_fault(
        "k",
        Fault::FailureAfterContent {
            code: "rate_limit_exceeded".into(),
            resets_in_secs: None,
        }
        .times(1),
    );
    let chat = json!({"model": "m", "stream": true,
                      "messages": [{"role": "user", "content": "hello"}]});
    let events = openai(&c, &mock, "/chat/completions", "k", &chat, &[])
        .await
        .events();
    let data: Vec<Value> = events.iter().filter_map(SseEvent::json).collect();
    let content: String = data
        .iter()
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "echo: hello");
    assert_eq!(data.last().unwrap()["error"]["code"], "rate_limit_exceeded");
    assert!(!events.iter().any(SseEvent::is_done));
}

#[tokio::test]
async fn control_api_over_http() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client();
    let ctl = |p: &str| format!("{}/__mock/{p}", mock.url());
    assert_eq!(
        send(&c, Method::GET, &ctl("health"), &[], "").await.body,
        "ok"
    );
    let fault =
        json!({"token": "t", "fault": {"kind": "server_error", "status": 502}, "remaining": 1});
    let a = send(&c, Method::POST, &ctl("faults"), &[], fault.to_string()).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(
        codex(&c, &mock, "t", &codex_body("x"), &[]).await.status,
        StatusCode::BAD_GATEWAY
    );
    assert_eq!(
        codex(&c, &mock, "t", &codex_body("x"), &[]).await.status,
        StatusCode::OK
    );

    let fault = json!({"token": "t", "fault": {"kind": "in_stream_failure", "code": "usage_limit_reached"}});
    send(&c, Method::POST, &ctl("faults"), &[], fault.to_string()).await;
    let ev = codex(&c, &mock, "t", &codex_body("x"), &[]).await.events();
    assert_eq!(ev.last().unwrap().event.as_deref(), Some("response.failed"));
    let a = send(&c, Method::DELETE, &ctl("faults?token=t"), &[], "").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(
        codex(&c, &mock, "t", &codex_body("x"), &[]).await.status,
        StatusCode::OK
    );
    send(
        &c,
        Method::POST,
        &ctl("faults"),
        &[],
        json!({"token": "t", "fault": {"kind": "unauthorized"}}).to_string(),
    )
    .await;
    send(&c, Method::DELETE, &ctl("faults"), &[], "").await;
    assert_eq!(
        codex(&c, &mock, "t", &codex_body("x"), &[]).await.status,
        StatusCode::OK
    );

    let bad = send(
        &c,
        Method::POST,
        &ctl("faults"),
        &[],
        r#"{"token":"t","fault":{"kind":"nope"}}"#,
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    let usage = json!({"token": "t", "usage": {"plan_type": "team", "primary": {"used_percent": 55.0, "window_minutes": 300, "reset_after_secs": 60}}});
    assert_eq!(
        send(&c, Method::POST, &ctl("usage"), &[], usage.to_string())
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let a = codex(&c, &mock, "t", &codex_body("x"), &[]).await;
    assert_eq!(a.header("x-codex-primary-used-percent"), Some("55"));
    assert!(a.header("x-codex-secondary-used-percent").is_none());

    let pacing = json!({"token": "t", "pacing": {"deltas": 9}});
    send(&c, Method::POST, &ctl("pacing"), &[], pacing.to_string()).await;
    let n = codex(&c, &mock, "t", &codex_body("x"), &[])
        .await
        .events()
        .len();
    assert_eq!(n, 8 + 9);

    let count = send(&c, Method::GET, &ctl("count?token=t"), &[], "")
        .await
        .json();
    assert_eq!(count["count"], 7);
    let reqs = send(&c, Method::GET, &ctl("requests"), &[], "")
        .await
        .json();
    let reqs = reqs.as_array().unwrap();
    assert_eq!(reqs.len(), 7);
    assert_eq!(reqs[0]["method"], "POST");
    assert_eq!(reqs[0]["path"], "/backend-api/codex/responses");
    assert_eq!(reqs[0]["token"], "t");
    assert!(
        reqs[0]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "chatgpt-account-id")
    );
    assert_eq!(
        send(&c, Method::DELETE, &ctl("requests"), &[], "")
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert!(mock.requests().is_empty());

    let t = send(
        &c,
        Method::POST,
        &ctl("tokens"),
        &[],
        json!({"email": "a@b.c", "account_id": "ws-7"}).to_string(),
    )
    .await
    .json();
    let claims = poolgate_core::jwt::openai_claims(t["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(claims.chatgpt_account_id.as_deref(), Some("ws-7"));
    assert_eq!(
        send(&c, Method::GET, &ctl("nope"), &[], "").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn routing_limits_and_recording() {
    let mock = MockUpstream::start_with(MockConfig {
        record_capacity: 3,
        max_body_bytes: 1024,
        ..MockConfig::default()
    })
    .await
    .unwrap();
    let c = client();
    let a = send(
        &c,
        Method::GET,
        &format!("{}/nowhere", mock.url()),
        &[("authorization", "Bearer z")],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = send(
        &c,
        Method::GET,
        &format!("{}/chat/completions", mock.openai_base_url()),
        &[],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    let big = "x".repeat(4096);
    let a = openai(
        &c,
        &mock,
        "/chat/completions",
        "k",
        &json!({"model": "m", "messages": [{"role": "user", "content": big}]}),
        &[],
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    for i in 0..5 {
        codex(&c, &mock, &format!("r{i}"), &codex_body("x"), &[]).await;
    }
    let tokens: Vec<String> = mock
        .requests()
        .into_iter()
        .map(|r| r.token.unwrap())
        .collect();
    assert_eq!(tokens, ["r2", "r3", "r4"]);
    assert_eq!(mock.request_count("z"), 1);
}

#[tokio::test]
async fn speaks_h2c_and_shuts_down() {
    let mock = MockUpstream::start().await.unwrap();
    let h2: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let resp = send_raw(&h2, codex_request(&mock, "t", &codex_body("over h2"), &[])).await;
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        output_text(&aggregate(&decode(&body)).unwrap()),
        "echo: over h2"
    );
    let addr = mock.addr();
    mock.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[test]
fn binary_serves_until_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_poolgate-mock-upstream"))
        .args(["--listen", "127.0.0.1:0", "--threads", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = client();
        let a = send(
            &c,
            Method::POST,
            &format!("{url}/v1/chat/completions"),
            &[("authorization", "Bearer k")],
            json!({"model": "m", "messages": [{"role": "user", "content": "bin"}]}).to_string(),
        )
        .await;
        assert_eq!(a.json()["choices"][0]["message"]["content"], "echo: bin");
    });
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}
