//! Property-based fuzzing: no input makes the decoder, the aggregator, the translators or the
//! classifiers panic, and the decoder keeps its bounds and its chunking independence.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use poolgate_wire::aggregate::ResponsesAggregator;
use poolgate_wire::chat::{
    ChatStreamOptions, ChatStreamTranslator, ToolNameMap, chat_to_responses_request,
    responses_to_chat_completion,
};
use poolgate_wire::classify::{
    classify_response, classify_stream_event, parse_codex_usage_headers,
};
use poolgate_wire::responses::{
    CodexRequestOptions, SessionInput, adjust_native_codex_request, codex_session_headers,
    normalize_codex_request,
};
use poolgate_wire::sse::{SseDecoder, SseEvent, decode_all, encode};
use poolgate_wire::usage::{UsageAccumulator, usage_from_body};
use poolgate_wire::{WireError, header_lookup};
use proptest::prelude::*;
use serde_json::{Map, Value};

const KEYS: &[&str] = &[
    "type",
    "role",
    "content",
    "text",
    "input",
    "messages",
    "tools",
    "function",
    "name",
    "arguments",
    "call_id",
    "id",
    "output",
    "response",
    "error",
    "code",
    "message",
    "delta",
    "item",
    "item_id",
    "output_index",
    "content_index",
    "usage",
    "input_tokens",
    "output_tokens",
    "status",
    "instructions",
    "tool_calls",
    "tool_call_id",
    "image_url",
    "url",
    "reasoning",
    "include",
    "tool_choice",
    "response_format",
    "json_schema",
    "schema",
    "stream",
    "stream_options",
    "include_usage",
    "incomplete_details",
    "reason",
    "encrypted_content",
    "service_tier",
    "resets_at",
    "resets_in_seconds",
    "status_details",
    "summary",
    "parameters",
];

const WORDS: &[&str] = &[
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.output_item.done",
    "response.output_text.delta",
    "response.output_text.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.completed",
    "response.done",
    "response.failed",
    "response.incomplete",
    "error",
    "response.reasoning_summary_text.delta",
    "message",
    "function_call",
    "function",
    "reasoning",
    "compaction",
    "user",
    "assistant",
    "system",
    "developer",
    "tool",
    "text",
    "image_url",
    "input_text",
    "output_text",
    "refusal",
    "usage_limit_reached",
    "account_deactivated",
    "max_output_tokens",
    "json_schema",
    "json_object",
    "auto",
    "fast",
    "",
    "{",
    "{\"a\":",
    "mcp__a_very_long_server_name_that_keeps_going_and_going__tool_name_x",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (0u64..200).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(WORDS).prop_map(|w| Value::String(w.to_string())),
        ".{0,12}".prop_map(Value::String),
    ]
}

/// JSON biased towards the shapes the translators look at.
fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|kv| {
                Value::Object(
                    kv.into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

fn event() -> impl Strategy<Value = SseEvent> {
    prop_oneof![
        (prop::sample::select(WORDS), json_value()).prop_map(|(ty, mut v)| {
            if let Some(o) = v.as_object_mut() {
                o.insert("type".into(), Value::String(ty.to_string()));
            }
            SseEvent {
                event: Some(ty.to_string()),
                data: v.to_string(),
                id: None,
            }
        }),
        json_value().prop_map(|v| SseEvent {
            event: None,
            data: v.to_string(),
            id: None
        }),
        ".{0,40}".prop_map(|d| SseEvent {
            event: None,
            data: d,
            id: None
        }),
    ]
}

/// Chat requests shaped enough to get past the first checks, so conversion paths run deep.
fn chat_request() -> impl Strategy<Value = Value> {
    let message = (
        prop::sample::select(
            &[
                "system",
                "developer",
                "user",
                "assistant",
                "tool",
                "function",
                "x",
            ][..],
        ),
        json_value(),
        prop::option::of(json_value()),
        prop::option::of(".{0,6}"),
    )
        .prop_map(|(role, content, tool_calls, id)| {
            let mut m = serde_json::json!({"role": role, "content": content});
            if let (Some(calls), Some(o)) = (tool_calls, m.as_object_mut()) {
                let calls = match calls {
                    Value::Array(a) => a,
                    other => vec![serde_json::json!({"id": "c", "function": other})],
                };
                o.insert("tool_calls".into(), Value::Array(calls));
            }
            if let (Some(id), Some(o)) = (id, m.as_object_mut()) {
                o.insert("tool_call_id".into(), Value::String(id));
            }
            m
        });
    (
        prop::collection::vec(message, 0..6),
        json_value(),
        json_value(),
        json_value(),
    )
        .prop_map(|(messages, tools, tool_choice, response_format)| {
            serde_json::json!({
                "model": "m", "messages": messages, "tools": tools, "tool_choice": tool_choice,
                "response_format": response_format, "stream": true,
            })
        })
}

fn decode_chunked(bytes: &[u8], cuts: &[usize], max: usize) -> (Vec<SseEvent>, bool) {
    let mut d = SseDecoder::new(max);
    let mut out = Vec::new();
    let mut overflow = false;
    let mut start = 0;
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.sort_unstable();
    for cut in cuts.into_iter().chain([bytes.len()]) {
        let chunk = &bytes[start..cut.max(start)];
        start = cut.max(start);
        overflow |= d.push(chunk, &mut out).is_err();
        assert!(
            d.buffered_len() <= max + 1,
            "decoder buffer above its bound"
        );
    }
    overflow |= d.finish(&mut out).is_err();
    (out, overflow)
}

fn sse_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"event: x".to_vec()),
        Just(b"id: 1".to_vec()),
        Just(b": c".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n\n".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        prop::collection::vec(any::<u8>(), 0..12),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn sse_decoder_never_panics_and_is_chunking_independent(
        bytes in sse_bytes(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        max in 1usize..64,
    ) {
        let (whole, _) = decode_chunked(&bytes, &[], 1 << 20);
        let (chunked, overflow) = decode_chunked(&bytes, &cuts, 1 << 20);
        prop_assert!(!overflow);
        prop_assert_eq!(&whole, &chunked);
        // With a small bound, events may be dropped but every kept one fits the bound.
        let (bounded, _) = decode_chunked(&bytes, &cuts, max);
        for ev in &bounded {
            prop_assert!(ev.data.len() <= max);
        }
    }

    #[test]
    fn sse_decoder_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
        let _ = decode_chunked(&bytes, &cuts, 32);
        let _ = decode_all(&bytes, 1 << 16);
    }

    #[test]
    fn sse_encoding_round_trips(name in "[a-z._]{0,20}", data in ".{0,80}") {
        let frame = encode(Some(&name), &data);
        let events = decode_all(&frame, 1 << 20).unwrap();
        let expected = data.replace("\r\n", "\n").replace('\r', "\n");
        prop_assert_eq!(events.len(), 1);
        prop_assert_eq!(&events[0].data, &expected);
        prop_assert_eq!(events[0].event.as_deref(), if name.is_empty() { None } else { Some(name.as_str()) });
    }

    #[test]
    fn aggregator_and_stream_translator_never_panic(events in prop::collection::vec(event(), 0..24), include_usage: bool) {
        let mut agg = ResponsesAggregator::new(1 << 16);
        let names = ToolNameMap::build([WORDS[WORDS.len() - 1].repeat(2)]);
        let mut t = ChatStreamTranslator::new(ChatStreamOptions { include_usage, tool_names: names, ..Default::default() });
        let mut usage = UsageAccumulator::new();
        let mut out = Vec::new();
        for ev in &events {
            agg.push(ev, 0);
            t.push(ev, 0, &mut out);
            usage.push_event(ev);
            let _ = classify_stream_event(ev, i64::MAX);
        }
        t.finish(&mut out);
        if let Ok(resp) = agg.finish() {
            let _ = responses_to_chat_completion(&resp, &ToolNameMap::default());
        }
        // Every translated stream is well-formed SSE that ends with exactly one [DONE].
        let bytes: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        let frames = decode_all(&bytes, 1 << 24).unwrap();
        prop_assert!(frames.last().is_some_and(SseEvent::is_done));
        prop_assert_eq!(frames.iter().filter(|f| f.is_done()).count(), 1);
    }

    #[test]
    fn request_translators_never_panic(body in json_value(), failover: bool, compact: bool) {
        if let Ok(conv) = chat_to_responses_request(&body) {
            let opts = CodexRequestOptions { failover, compact, ..Default::default() };
            let out = normalize_codex_request(conv.body, &opts);
            if let Ok(v) = out {
                prop_assert!(v.is_object());
            }
        }
        let opts = CodexRequestOptions {
            failover,
            compact,
            installation_id: Some("i".into()),
            prompt_cache_key: Some("k".into()),
            ..Default::default()
        };
        match normalize_codex_request(body.clone(), &opts) {
            Ok(v) if !compact => {
                // The backend's hard rules hold for every accepted body.
                prop_assert_eq!(&v["stream"], &Value::Bool(true));
                prop_assert_eq!(&v["store"], &Value::Bool(false));
                prop_assert!(v["instructions"].as_str().is_some_and(|s| !s.trim().is_empty()));
                prop_assert!(v["input"].is_array() && v["tools"].is_array() && v["parallel_tool_calls"].is_boolean());
            }
            Ok(_) => {}
            Err(e) => prop_assert!(matches!(e, WireError::InvalidRequest(_))),
        }
        let _ = adjust_native_codex_request(body.clone(), &opts);
        let _ = responses_to_chat_completion(&body, &ToolNameMap::default());
        let _ = usage_from_body(body.to_string().as_bytes());
    }

    #[test]
    fn chat_conversion_never_panics(body in chat_request()) {
        if let Ok(conv) = chat_to_responses_request(&body) {
            // Names sent upstream always fit the backend's limit and map back.
            for tool in conv.body["tools"].as_array().into_iter().flatten() {
                if let Some(name) = tool["name"].as_str() {
                    prop_assert!(name.len() <= 64, "tool name {name:?} sent upstream");
                }
            }
            let _ = normalize_codex_request(conv.body, &CodexRequestOptions::default());
        }
    }

    #[test]
    fn classifiers_never_panic(
        status in any::<u16>(),
        headers in prop::collection::vec((prop::sample::select(&[
            "retry-after", "cf-ray", "cf-mitigated", "content-type", "server",
            "x-codex-primary-used-percent", "x-codex-primary-window-minutes",
            "x-codex-primary-reset-after-seconds", "x-codex-primary-reset-at",
            "x-codex-secondary-used-percent", "x-codex-secondary-reset-after-seconds",
        ][..]), ".{0,30}"), 0..6),
        body in prop_oneof![json_value().prop_map(|v| v.to_string().into_bytes()), prop::collection::vec(any::<u8>(), 0..128)],
        now in any::<i64>(),
    ) {
        let _ = classify_response(status, header_lookup(&headers), &body, now);
        let _ = parse_codex_usage_headers(header_lookup(&headers), now);
    }

    #[test]
    fn session_headers_never_panic(
        vals in prop::collection::vec(prop::option::of(".{0,8}"), 8),
        failover: bool,
    ) {
        let v = |i: usize| vals[i].as_deref();
        let input = SessionInput {
            session_id: v(0), conversation_id: v(1), window_id: v(2), turn_state: v(3),
            client_request_id: v(4), anchor: v(5), prompt_cache_key: v(6), failover, fresh_id: v(7),
        };
        if let Some(h) = codex_session_headers(&input) {
            prop_assert!(!h.session_id.is_empty());
            prop_assert!(h.window_id.starts_with(h.session_id.as_str()));
            if failover {
                prop_assert!(h.turn_state.is_none());
            }
        }
    }
}
