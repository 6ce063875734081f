//! Golden tests: every `*.in.*` fixture under `tests/golden/<suite>/` is run through the code
//! and compared structurally (as JSON values, SSE frames as lists of events) with its
//! `*.out.*` twin. `GOLDEN_UPDATE=1 cargo test -p poolgate-wire --test golden` rewrites the
//! expected files; review the diff before keeping it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use poolgate_wire::StreamTranslator;
use std::path::{Path, PathBuf};

use poolgate_core::ReasoningEffort;
use poolgate_wire::aggregate::{AggregateError, ResponsesAggregator};
use poolgate_wire::anthropic::{
    MessagesReplyOptions, MessagesStreamTranslator, anthropic_error_body,
    anthropic_error_from_upstream, count_tokens_body, messages_to_responses_request,
    parse_messages_request, responses_to_messages,
};
use poolgate_wire::chat::{
    ChatStreamOptions, ChatStreamTranslator, ToolNameMap, chat_to_responses_request,
    responses_to_chat_completion,
};
use poolgate_wire::classify::{
    Outcome, StreamEventClass, classify_response, classify_stream_event, parse_codex_usage_headers,
};
use poolgate_wire::responses::{
    CodexRequestOptions, NEUTRAL_INSTRUCTIONS, normalize_codex_request,
};
use poolgate_wire::sse::{SseEvent, decode_all};
use poolgate_wire::usage::{UsageAccumulator, usage_from_body};
use poolgate_wire::{header_lookup, sse};
use serde_json::{Value, json};

/// A fixed "now" for every case: 2026-01-01T00:00:00Z.
const NOW_MS: i64 = 1_767_225_600_000;

fn golden_dir(suite: &str) -> PathBuf {
    // Read when the test runs (see crates/proto/build.rs).
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("tests/golden")
    .join(suite)
}

/// The `(case name, input path)` pairs of a suite, sorted.
fn cases(suite: &str, in_ext: &str) -> Vec<(String, PathBuf)> {
    let suffix = format!(".in.{in_ext}");
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(golden_dir(suite))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.strip_suffix(&suffix)?.to_string();
            Some((name, p))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "suite {suite} has no cases");
    out
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn updating() -> bool {
    std::env::var_os("GOLDEN_UPDATE").is_some()
}

/// Compares with the expected JSON file (or writes it in update mode).
fn check_json(suite: &str, case: &str, actual: &Value) {
    let path = golden_dir(suite).join(format!("{case}.out.json"));
    if updating() {
        std::fs::write(&path, serde_json::to_string_pretty(actual).unwrap() + "\n").unwrap();
        return;
    }
    let expected = read_json(&path);
    assert_eq!(
        actual,
        &expected,
        "{suite}/{case}: actual output differs from {}\nactual:\n{}",
        path.display(),
        serde_json::to_string_pretty(actual).unwrap()
    );
}

/// SSE frames as comparable values: `{event?, data}` with `data` parsed when it is JSON.
fn frames_as_json(bytes: &[u8]) -> Value {
    let events = decode_all(bytes, 1 << 24).unwrap();
    Value::Array(
        events
            .iter()
            .map(|e| {
                let data = e.json().unwrap_or_else(|| Value::String(e.data.clone()));
                match &e.event {
                    Some(name) => json!({"event": name, "data": data}),
                    None => json!({"data": data}),
                }
            })
            .collect(),
    )
}

fn check_sse(suite: &str, case: &str, actual: &[u8]) {
    let path = golden_dir(suite).join(format!("{case}.out.sse"));
    if updating() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        frames_as_json(actual),
        frames_as_json(&expected),
        "{suite}/{case}: frames differ from {}\nactual:\n{}",
        path.display(),
        String::from_utf8_lossy(actual)
    );
}

fn read_events(path: &Path) -> Vec<SseEvent> {
    decode_all(&std::fs::read(path).unwrap(), 1 << 24).unwrap()
}

fn tool_map_json(map: &ToolNameMap) -> Value {
    Value::Object(
        map.pairs()
            .into_iter()
            .map(|(o, s)| (s.to_string(), Value::String(o.into())))
            .collect(),
    )
}

fn codex_options(v: &Value) -> CodexRequestOptions {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let b = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    CodexRequestOptions {
        installation_id: s("installation_id"),
        prompt_cache_key: s("prompt_cache_key"),
        force_prompt_cache_key: b("force_prompt_cache_key"),
        failover: b("failover"),
        model_override: s("model_override"),
        reasoning_effort_override: s("reasoning_effort_override")
            .map(|e| e.parse::<ReasoningEffort>().unwrap()),
        compact: b("compact"),
    }
}

#[test]
fn codex_request_normalisation() {
    for (case, path) in cases("codex_request", "json") {
        let input = read_json(&path);
        let opts = codex_options(&input["options"]);
        let out = normalize_codex_request(input["body"].clone(), &opts).unwrap();
        check_json("codex_request", &case, &out);
    }
}

#[test]
fn chat_request_to_responses() {
    let opts = CodexRequestOptions {
        installation_id: Some("install-1".into()),
        ..Default::default()
    };
    for (case, path) in cases("chat_request", "json") {
        let conv = chat_to_responses_request(&read_json(&path)).unwrap();
        let codex = normalize_codex_request(conv.body.clone(), &opts).unwrap();
        let actual = json!({
            "body": conv.body,
            "stream": conv.stream,
            "include_usage": conv.include_usage,
            "tool_names": tool_map_json(&conv.tool_names),
            "codex": codex,
        });
        check_json("chat_request", &case, &actual);
        // Every name sent upstream fits the backend's limit.
        for tool in actual["codex"]["tools"].as_array().unwrap() {
            assert!(
                tool["name"].as_str().map_or(0, str::len) <= 64,
                "{case}: {tool}"
            );
        }
    }
}

#[test]
fn responses_to_chat_non_stream() {
    for (case, path) in cases("chat_response", "json") {
        let input = read_json(&path);
        let names: Vec<&str> = input["tool_names"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let map = ToolNameMap::build(names);
        check_json(
            "chat_response",
            &case,
            &responses_to_chat_completion(&input["response"], &map),
        );
    }
}

#[test]
fn responses_to_chat_stream() {
    for (case, path) in cases("chat_stream", "sse") {
        let opts_path = golden_dir("chat_stream").join(format!("{case}.opts.json"));
        let o = if opts_path.exists() {
            read_json(&opts_path)
        } else {
            json!({})
        };
        let names: Vec<&str> = o["tool_names"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut t = ChatStreamTranslator::new(ChatStreamOptions {
            id: "chatcmpl-fallback".into(),
            model: o["model"].as_str().unwrap_or("gpt-5.4").into(),
            created: 1_767_225_600,
            include_usage: o["include_usage"].as_bool().unwrap_or(false),
            tool_names: ToolNameMap::build(names),
        });
        let mut out = Vec::new();
        for ev in read_events(&path) {
            t.push(&ev, NOW_MS, &mut out);
        }
        t.finish(&mut out);
        let bytes: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        check_sse("chat_stream", &case, &bytes);
        // Invariants of every translated stream: it ends with [DONE] exactly once.
        let frames = decode_all(&bytes, 1 << 24).unwrap();
        assert!(frames.last().unwrap().is_done(), "{case}");
        assert_eq!(frames.iter().filter(|f| f.is_done()).count(), 1, "{case}");
    }
}

#[test]
fn aggregation() {
    for (case, path) in cases("aggregate", "sse") {
        let mut agg = ResponsesAggregator::default();
        for ev in read_events(&path) {
            agg.push(&ev, NOW_MS);
        }
        let actual = match agg.finish() {
            Ok(v) => v,
            Err(AggregateError::Failed(f)) => json!({"failed": {
                "outcome": outcome_json(&f.outcome),
                "event_type": f.event_type,
                "code": f.code,
                "message": f.message,
            }}),
            Err(AggregateError::Truncated) => json!({"truncated": true}),
            Err(AggregateError::TooLarge { limit }) => json!({"too_large": limit}),
        };
        check_json("aggregate", &case, &actual);
    }
}

fn outcome_json(o: &Outcome) -> Value {
    match o {
        Outcome::Success => json!("success"),
        Outcome::ClientError => json!("client_error"),
        Outcome::RateLimited {
            retry_after_secs,
            resets_at_ms,
        } => {
            json!({"rate_limited": {"retry_after_secs": retry_after_secs, "resets_at_ms": resets_at_ms}})
        }
        Outcome::QuotaExhausted { resets_at_ms } => {
            json!({"quota_exhausted": {"resets_at_ms": resets_at_ms}})
        }
        Outcome::AuthFailed => json!("auth_failed"),
        Outcome::Forbidden => json!("forbidden"),
        Outcome::Deactivated => json!("deactivated"),
        Outcome::Challenge => json!("challenge"),
        Outcome::Upstream5xx => json!("upstream_5xx"),
    }
}

fn header_pairs(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().map_or_else(|| v.to_string(), str::to_string),
            )
        })
        .collect()
}

/// Table-driven: each row of `tables/*.json` carries its own expectation.
#[test]
fn classification_tables() {
    let responses = read_json(&golden_dir("classify").join("responses.json"));
    for row in responses.as_array().unwrap() {
        let headers = header_pairs(&row["headers"]);
        let body = match &row["body"] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        let status = u16::try_from(row["status"].as_u64().unwrap()).unwrap();
        let outcome = classify_response(status, header_lookup(&headers), body.as_bytes(), NOW_MS);
        assert_eq!(
            outcome_json(&outcome),
            row["expected"],
            "response row {}",
            row["name"]
        );
    }

    let events = read_json(&golden_dir("classify").join("stream_events.json"));
    for row in events.as_array().unwrap() {
        let data = match &row["data"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let ev = SseEvent {
            event: row["event"].as_str().map(str::to_string),
            data,
            id: None,
        };
        let class = match classify_stream_event(&ev, NOW_MS) {
            StreamEventClass::Lifecycle => json!("lifecycle"),
            StreamEventClass::Content => json!("content"),
            StreamEventClass::Terminal => json!("terminal"),
            StreamEventClass::Failed(o) => json!({"failed": outcome_json(&o)}),
        };
        assert_eq!(class, row["expected"], "stream row {}", row["name"]);
    }
}

#[test]
fn usage_header_table() {
    let rows = read_json(&golden_dir("classify").join("usage_headers.json"));
    for row in rows.as_array().unwrap() {
        let headers = header_pairs(&row["headers"]);
        let parsed = parse_codex_usage_headers(header_lookup(&headers), NOW_MS);
        let actual = json!({
            "primary": serde_json::to_value(parsed.primary).unwrap(),
            "secondary": serde_json::to_value(parsed.secondary).unwrap(),
        });
        assert_eq!(actual, row["expected"], "usage headers row {}", row["name"]);
    }
}

#[test]
fn usage_extraction_table() {
    let rows = read_json(&golden_dir("usage").join("cases.json"));
    for row in rows.as_array().unwrap() {
        let actual = if let Some(sse_text) = row["sse"].as_str() {
            let mut acc = UsageAccumulator::new();
            for ev in decode_all(sse_text.as_bytes(), 1 << 20).unwrap() {
                acc.push_event(&ev);
            }
            acc.usage()
        } else {
            usage_from_body(row["body"].to_string().as_bytes())
        };
        assert_eq!(
            serde_json::to_value(actual).unwrap(),
            row["expected"],
            "usage row {}",
            row["name"]
        );
    }
}

/// The aggregator and the stream translator agree with the non-stream converter: translating
/// the aggregated response gives the same text and tool calls as concatenating the stream.
#[test]
fn stream_and_aggregate_agree() {
    for (case, path) in cases("chat_stream", "sse") {
        let events = read_events(&path);
        let mut agg = ResponsesAggregator::default();
        let mut t = ChatStreamTranslator::new(ChatStreamOptions::default());
        let mut out = Vec::new();
        for ev in &events {
            agg.push(ev, NOW_MS);
            t.push(ev, NOW_MS, &mut out);
        }
        let Ok(resp) = agg.finish() else { continue };
        let chat = responses_to_chat_completion(&resp, &ToolNameMap::default());
        let bytes: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        let mut text = String::new();
        let mut args: Vec<String> = Vec::new();
        for f in sse::decode_all(&bytes, 1 << 24).unwrap() {
            let Some(v) = f.json() else { continue };
            let delta = &v["choices"][0]["delta"];
            text.push_str(delta["content"].as_str().unwrap_or_default());
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let i = usize::try_from(call["index"].as_u64().unwrap()).unwrap();
                if args.len() <= i {
                    args.resize(i + 1, String::new());
                }
                args[i].push_str(call["function"]["arguments"].as_str().unwrap_or_default());
            }
        }
        let message = &chat["choices"][0]["message"];
        assert_eq!(
            text,
            message["content"].as_str().unwrap_or_default(),
            "{case}: text"
        );
        let expected_args: Vec<String> = message["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| c["function"]["arguments"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(args, expected_args, "{case}: tool arguments");
    }
}

fn names_in(v: &Value) -> ToolNameMap {
    ToolNameMap::build(v.as_array().into_iter().flatten().filter_map(Value::as_str))
}

fn reply_options(o: &Value) -> MessagesReplyOptions {
    MessagesReplyOptions {
        id: "msg_fallback".into(),
        model: o["model"].as_str().unwrap_or("claude-sonnet-4-5").into(),
        tool_names: names_in(&o["tool_names"]),
        thinking: o["thinking"].as_bool().unwrap_or(false),
        stop_sequences: o["stop_sequences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
    }
}

#[test]
fn anthropic_request_to_responses() {
    let opts = CodexRequestOptions {
        installation_id: Some("install-1".into()),
        prompt_cache_key: Some("gateway-anchor".into()),
        ..Default::default()
    };
    for (case, path) in cases("anthropic_request", "json") {
        let input = read_json(&path);
        let req = parse_messages_request(input["request"].to_string().as_bytes()).unwrap();
        let conv = messages_to_responses_request(
            &req,
            input["model"].as_str().unwrap(),
            input["prompt_cache_key"].as_str(),
        )
        .unwrap();
        let codex = normalize_codex_request(conv.body.clone(), &opts).unwrap();
        let actual = json!({
            "body": conv.body,
            "tool_names": tool_map_json(&conv.tool_names),
            "requested_model": conv.requested_model,
            "stream": conv.stream,
            "thinking": conv.thinking,
            "stop_sequences": conv.stop_sequences,
            "max_tokens": conv.max_tokens,
            "codex": codex,
        });
        check_json("anthropic_request", &case, &actual);
        // The system prompt stays a developer message; the backend's instructions stay neutral.
        assert_eq!(
            actual["codex"]["instructions"], NEUTRAL_INSTRUCTIONS,
            "{case}"
        );
        if req.system.is_some() {
            assert_eq!(actual["codex"]["input"][0]["role"], "developer", "{case}");
        }
        // Every tool is sent (no cap), every name fits the backend's limit and maps back.
        let sent = actual["codex"]["tools"].as_array().unwrap();
        assert_eq!(sent.len(), req.tools.iter().flatten().count(), "{case}");
        for (tool, original) in sent.iter().zip(req.tools.iter().flatten()) {
            let Some(name) = tool["name"].as_str() else {
                continue;
            };
            assert!(name.len() <= 64, "{case}: {name}");
            assert_eq!(conv.tool_names.restore(name), original.name, "{case}");
        }
    }
}

#[test]
fn responses_to_anthropic_non_stream() {
    for (case, path) in cases("anthropic_response", "json") {
        let input = read_json(&path);
        let actual = responses_to_messages(&input["response"], &reply_options(&input["options"]));
        check_json("anthropic_response", &case, &actual);
    }
}

fn anthropic_stream(case: &str, path: &Path) -> (Vec<u8>, MessagesReplyOptions) {
    let opts_path = golden_dir("anthropic_stream").join(format!("{case}.opts.json"));
    let o = if opts_path.exists() {
        read_json(&opts_path)
    } else {
        json!({})
    };
    let opts = reply_options(&o);
    let mut t = MessagesStreamTranslator::new(opts.clone());
    let mut out = Vec::new();
    for ev in read_events(path) {
        t.push(&ev, NOW_MS, &mut out);
    }
    t.finish(&mut out);
    (out.iter().flat_map(|b| b.iter().copied()).collect(), opts)
}

/// The structure every Anthropic stream must have: `message_start` and `ping` first (unless it
/// failed before anything was sent); blocks started, fed and stopped one at a time with indices
/// counting from 0 and deltas of their own kind; then `message_delta` + `message_stop`, or one
/// `error` frame last.
fn assert_anthropic_stream_shape(case: &str, frames: &[SseEvent]) {
    assert!(!frames.is_empty(), "{case}: no frames");
    let data: Vec<Value> = frames.iter().map(|f| f.json().unwrap()).collect();
    for (f, d) in frames.iter().zip(&data) {
        assert_eq!(f.event.as_deref(), d["type"].as_str(), "{case}: event name");
    }
    let last = data.len() - 1;
    let failed = data[last]["type"] == "error";
    if !(failed && last == 0) {
        assert_eq!(data[0]["type"], "message_start", "{case}");
        assert_eq!(data[1]["type"], "ping", "{case}");
    }
    let mut open: Option<(u64, String)> = None;
    let mut next = 0u64;
    let mut saw_delta = false;
    for (i, d) in data.iter().enumerate() {
        let ty = d["type"].as_str().unwrap();
        match ty {
            "message_start" => assert_eq!(i, 0, "{case}"),
            "ping" => {}
            "content_block_start" => {
                assert!(open.is_none(), "{case}: block {i} starts inside another");
                assert_eq!(d["index"], next, "{case}: index");
                let kind = d["content_block"]["type"].as_str().unwrap().to_string();
                open = Some((next, kind));
                next += 1;
            }
            "content_block_delta" => {
                let (index, kind) = open.clone().expect("delta outside a block");
                assert_eq!(d["index"], index, "{case}");
                let allowed: &[&str] = match kind.as_str() {
                    "text" => &["text_delta"],
                    "thinking" => &["thinking_delta", "signature_delta"],
                    "tool_use" => &["input_json_delta"],
                    other => panic!("{case}: block type {other}"),
                };
                assert!(
                    allowed.contains(&d["delta"]["type"].as_str().unwrap()),
                    "{case}: {d}"
                );
            }
            "content_block_stop" => {
                let (index, _) = open.take().expect("stop outside a block");
                assert_eq!(d["index"], index, "{case}");
            }
            "message_delta" => {
                assert!(open.is_none(), "{case}");
                assert!(!saw_delta, "{case}: two message_delta");
                saw_delta = true;
                let reason = d["delta"]["stop_reason"].as_str().unwrap();
                assert!(
                    [
                        "end_turn",
                        "max_tokens",
                        "stop_sequence",
                        "tool_use",
                        "refusal"
                    ]
                    .contains(&reason),
                    "{case}: {reason}"
                );
            }
            "message_stop" => {
                assert_eq!(i, last, "{case}: message_stop is last");
                assert!(saw_delta, "{case}");
            }
            "error" => {
                assert_eq!(i, last, "{case}: error is last");
                assert!(open.is_none(), "{case}");
                assert!(d["error"]["type"].is_string() && d["error"]["message"].is_string());
            }
            other => panic!("{case}: unexpected event {other}"),
        }
    }
}

#[test]
fn responses_to_anthropic_stream() {
    for (case, path) in cases("anthropic_stream", "sse") {
        let (bytes, _) = anthropic_stream(&case, &path);
        check_sse("anthropic_stream", &case, &bytes);
        assert_anthropic_stream_shape(&case, &decode_all(&bytes, 1 << 24).unwrap());
    }
}

/// The content an Anthropic SDK builds from a stream.
fn accumulate_anthropic(frames: &[SseEvent]) -> Value {
    let mut message = json!({});
    let mut blocks: Vec<Value> = Vec::new();
    let mut json_parts: Vec<String> = Vec::new();
    for f in frames {
        let d = f.json().unwrap();
        match d["type"].as_str().unwrap() {
            "message_start" => message = d["message"].clone(),
            "content_block_start" => {
                blocks.push(d["content_block"].clone());
                json_parts.push(String::new());
            }
            "content_block_delta" => {
                let i = usize::try_from(d["index"].as_u64().unwrap()).unwrap();
                let delta = &d["delta"];
                let b = &mut blocks[i];
                match delta["type"].as_str().unwrap() {
                    "text_delta" => {
                        b["text"] = json!(format!(
                            "{}{}",
                            b["text"].as_str().unwrap(),
                            delta["text"].as_str().unwrap()
                        ));
                    }
                    "thinking_delta" => {
                        b["thinking"] = json!(format!(
                            "{}{}",
                            b["thinking"].as_str().unwrap(),
                            delta["thinking"].as_str().unwrap()
                        ));
                    }
                    "signature_delta" => b["signature"] = delta["signature"].clone(),
                    "input_json_delta" => {
                        json_parts[i].push_str(delta["partial_json"].as_str().unwrap())
                    }
                    other => panic!("delta {other}"),
                }
            }
            "content_block_stop" => {
                let i = usize::try_from(d["index"].as_u64().unwrap()).unwrap();
                if blocks[i]["type"] == "tool_use" && !json_parts[i].is_empty() {
                    blocks[i]["input"] = serde_json::from_str(&json_parts[i]).unwrap();
                }
            }
            "message_delta" => {
                message["stop_reason"] = d["delta"]["stop_reason"].clone();
                message["stop_sequence"] = d["delta"]["stop_sequence"].clone();
                message["usage"] = d["usage"].clone();
            }
            _ => {}
        }
    }
    message["content"] = Value::Array(blocks);
    message
}

/// Streaming and non-streaming agree: the message an SDK builds from the stream equals the
/// translation of the aggregated response.
#[test]
fn anthropic_stream_and_non_stream_agree() {
    let mut compared = 0;
    for (case, path) in cases("anthropic_stream", "sse") {
        let (bytes, opts) = anthropic_stream(&case, &path);
        let frames = decode_all(&bytes, 1 << 24).unwrap();
        if frames.last().unwrap().event.as_deref() == Some("error") {
            continue;
        }
        let mut agg = ResponsesAggregator::default();
        for ev in read_events(&path) {
            agg.push(&ev, NOW_MS);
        }
        let resp = agg.finish().unwrap();
        let mut expected = responses_to_messages(&resp, &opts);
        let mut actual = accumulate_anthropic(&frames);
        if actual["stop_reason"] == "stop_sequence" {
            // A stop sequence ends the client's stream before upstream reports usage.
            actual["usage"] = Value::Null;
            expected["usage"] = Value::Null;
        }
        assert_eq!(actual, expected, "{case}");
        compared += 1;
    }
    assert!(compared >= 5, "only {compared} streams compared");
}

#[test]
fn anthropic_error_tables() {
    let rows = read_json(&golden_dir("anthropic_tables").join("errors.json"));
    for row in rows.as_array().unwrap() {
        let status = u16::try_from(row["status"].as_u64().unwrap()).unwrap();
        let message = row["message"].as_str().unwrap();
        let body = anthropic_error_body(status, message, row["code"].as_str());
        assert_eq!(
            body,
            json!({"type": "error", "error": {"type": row["expected"], "message": message}}),
            "error row {}",
            row["name"]
        );
    }
    let rows = read_json(&golden_dir("anthropic_tables").join("upstream_errors.json"));
    for row in rows.as_array().unwrap() {
        let status = u16::try_from(row["status"].as_u64().unwrap()).unwrap();
        let body = match &row["body"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        assert_eq!(
            anthropic_error_from_upstream(status, body.as_bytes()),
            row["expected"],
            "upstream error row {}",
            row["name"]
        );
    }
}

#[test]
fn anthropic_count_tokens_table() {
    let rows = read_json(&golden_dir("anthropic_tables").join("count_tokens.json"));
    for row in rows.as_array().unwrap() {
        let req = parse_messages_request(row["request"].to_string().as_bytes()).unwrap();
        assert_eq!(
            count_tokens_body(&req),
            json!({"input_tokens": row["expected"]}),
            "count_tokens row {}",
            row["name"]
        );
    }
}
