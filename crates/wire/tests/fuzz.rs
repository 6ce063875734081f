//! Property-based fuzzing: no input makes the decoder, the aggregator, the translators or the
//! classifiers panic, and the decoder keeps its bounds and its chunking independence.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use poolgate_wire::StreamTranslator;
use poolgate_wire::aggregate::ResponsesAggregator;
use poolgate_wire::anthropic::{
    CODEX_SIGNATURE_PREFIX, MessagesReplyOptions, MessagesStreamTranslator, anthropic_error_body,
    anthropic_error_from_upstream, anthropic_stream_error_frame, claude_anchor, count_tokens,
    messages_to_responses_request, parse_messages_request, responses_to_messages,
};
use poolgate_wire::chat::{
    ChatStreamOptions, ChatStreamTranslator, ToolNameMap, chat_to_responses_request,
    responses_to_chat_completion,
};
use poolgate_wire::classify::{
    classify_response, classify_stream_event, parse_codex_usage_headers,
};
use poolgate_wire::responses::{
    CodexRequestOptions, NEUTRAL_INSTRUCTIONS, SessionInput, adjust_native_codex_request,
    codex_session_headers, normalize_codex_request,
};
use poolgate_wire::sse::{SseDecoder, SseEvent, decode_all, encode};
use poolgate_wire::usage::{
    UsageAccumulator, usage_from_body, usage_from_usage_object, usage_from_usage_slice,
};
use poolgate_wire::{WireError, header_lookup};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

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

const LONG_TOOL: &str = "mcp__a_very_long_server_name_that_keeps_going_and_going__tool_name_x";

fn tool_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(&["Read", "Bash", "f", "", LONG_TOOL][..]).prop_map(str::to_string),
        Just(format!("{LONG_TOOL}_and_more_to_make_it_longer")),
        Just(format!("mcp__{}__tool_name_x", "s".repeat(70))),
        ".{0,8}",
    ]
}

fn media_source() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(
            &[
                "base64", "base64", "base64", "url", "url", "text", "file", "content", "x",
            ][..],
        ),
        ".{0,6}",
        prop::option::of(json_value()),
    )
        .prop_map(|(ty, s, content)| {
            json!({"type": ty, "media_type": "image/png", "data": s, "url": s, "file_id": s,
                   "content": content.unwrap_or_else(|| json!(s))})
        })
}

/// An Anthropic message: mostly the blocks its role may carry, sometimes not at all.
fn anthropic_message() -> impl Strategy<Value = Value> {
    let text = ".{0,12}".prop_map(|t| json!({"type": "text", "text": t}));
    let image = media_source().prop_map(|s| json!({"type": "image", "source": s}));
    let document = (media_source(), prop::option::of(".{0,4}"))
        .prop_map(|(s, t)| json!({"type": "document", "source": s, "title": t}));
    let tool_use = (".{0,4}", tool_name(), json_value()).prop_map(
        |(id, name, input)| json!({"type": "tool_use", "id": id, "name": name, "input": input}),
    );
    let result_content = prop_oneof![
        3 => ".{0,8}".prop_map(Value::String),
        3 => prop::collection::vec(
            prop_oneof![
                ".{0,8}".prop_map(|t| json!({"type": "text", "text": t})),
                media_source().prop_map(|s| json!({"type": "image", "source": s})),
            ],
            0..3
        )
        .prop_map(Value::Array),
        1 => json_value(),
    ];
    let tool_result = (".{0,4}", result_content, prop::option::of(any::<bool>())).prop_map(
        |(id, content, is_error)| {
            json!({"type": "tool_result", "tool_use_id": id, "content": content, "is_error": is_error})
        },
    );
    let thinking = (".{0,8}", any::<bool>(), ".{0,6}").prop_map(|(t, ours, sig)| {
        let signature = if ours {
            format!("{CODEX_SIGNATURE_PREFIX}{sig}")
        } else {
            sig
        };
        json!({"type": "thinking", "thinking": t, "signature": signature})
    });
    let user = prop_oneof![
        4 => text.clone(),
        1 => image,
        1 => document,
        3 => tool_result,
    ];
    let assistant = prop_oneof![
        3 => text,
        3 => tool_use,
        1 => thinking,
        1 => Just(json!({"type": "redacted_thinking", "data": "x"})),
    ];
    (
        prop_oneof![
            8 => Just("user"),
            8 => Just("assistant"),
            1 => Just("system"),
            1 => Just("x"),
        ],
        any::<bool>(),
        prop::collection::vec((user, assistant, json_value(), 0u8..40), 0..5),
    )
        .prop_map(|(role, mixed, blocks)| {
            // Mostly the blocks a role may carry; sometimes the other role's, or anything.
            let blocks: Vec<Value> = blocks
                .into_iter()
                .map(|(u, a, any, dice)| match (dice, role) {
                    (0, _) => any,
                    (1, "user") if mixed => a,
                    (1, _) if mixed => u,
                    (_, "assistant") => a,
                    _ => u,
                })
                .collect();
            json!({"role": role, "content": blocks})
        })
}

/// Messages requests shaped enough to get past parsing, so the translation runs deep.
fn anthropic_request() -> impl Strategy<Value = Value> {
    let message = prop_oneof![
        6 => anthropic_message(),
        1 => ".{0,10}".prop_map(|t| json!({"role": "user", "content": t})),
    ];
    let tool = (
        tool_name(),
        prop::option::of(prop::sample::select(
            &["custom", "custom", "custom", "web_search_20250305", "bash_20250124"][..],
        )),
        prop::option::of(json_value()),
    )
        .prop_map(|(name, ty, schema)| {
            json!({"name": name, "type": ty, "description": "d", "input_schema": schema})
        });
    let tool_choice = prop_oneof![
        3 => Just(Value::Null),
        1 => Just(json!({"type": "auto"})),
        1 => Just(json!({"type": "any", "disable_parallel_tool_use": true})),
        1 => Just(json!({"type": "none"})),
        1 => tool_name().prop_map(|n| json!({"type": "tool", "name": n})),
        1 => json_value(),
    ];
    let thinking = prop_oneof![
        3 => Just(Value::Null),
        2 => any::<u64>().prop_map(|b| json!({"type": "enabled", "budget_tokens": b})),
        1 => Just(json!({"type": "disabled"})),
        1 => Just(json!({"type": "adaptive"})),
        1 => json_value(),
    ];
    let system = prop_oneof![
        Just(Value::Null),
        ".{0,10}".prop_map(Value::String),
        prop::collection::vec(
            ".{0,6}".prop_map(|t| json!({"type": "text", "text": t})),
            0..3
        )
        .prop_map(Value::Array),
    ];
    (
        prop::collection::vec(message, 0..6),
        prop::option::of(prop::collection::vec(tool, 0..5)),
        tool_choice,
        thinking,
        system,
        any::<bool>(),
        prop::collection::vec(".{0,3}", 0..3),
    )
        .prop_map(
            |(messages, tools, tool_choice, thinking, system, stream, stops)| {
                json!({
                    "model": "claude-x", "max_tokens": 100, "messages": messages, "tools": tools,
                    "tool_choice": tool_choice, "thinking": thinking, "system": system,
                    "stream": stream, "stop_sequences": stops, "metadata": {"user_id": "u"},
                })
            },
        )
}

/// Checks the structure of a translated Anthropic stream (see the golden test of the same
/// name): message_start + ping first unless it failed at once, blocks one at a time with
/// indices from 0, deltas of their block's kind, and message_stop or error last.
fn anthropic_stream_shape(frames: &[SseEvent]) -> Result<(), String> {
    let data: Vec<Value> = frames
        .iter()
        .map(|f| f.json().ok_or_else(|| format!("not JSON: {:?}", f.data)))
        .collect::<Result<_, _>>()?;
    let Some(last) = data.len().checked_sub(1) else {
        return Err("no frames".into());
    };
    let ty = |d: &Value| d["type"].as_str().unwrap_or_default().to_string();
    for (f, d) in frames.iter().zip(&data) {
        if f.event.as_deref() != Some(ty(d).as_str()) {
            return Err(format!("event name {:?} for {d}", f.event));
        }
    }
    let failed = ty(&data[last]) == "error";
    if !failed && ty(&data[last]) != "message_stop" {
        return Err(format!("ends with {}", data[last]));
    }
    if !(failed && last == 0) && (ty(&data[0]) != "message_start" || ty(&data[1]) != "ping") {
        return Err("does not open with message_start and ping".into());
    }
    let mut open: Option<(u64, String)> = None;
    let mut next = 0u64;
    for (i, d) in data.iter().enumerate() {
        match ty(d).as_str() {
            "message_start" if i == 0 => {}
            "ping" => {}
            "content_block_start" => {
                if open.is_some() || d["index"] != next {
                    return Err(format!("bad start {d} at {i}"));
                }
                open = Some((
                    next,
                    d["content_block"]["type"]
                        .as_str()
                        .unwrap_or_default()
                        .into(),
                ));
                next += 1;
            }
            "content_block_delta" => {
                let Some((index, kind)) = &open else {
                    return Err(format!("delta outside a block: {d}"));
                };
                let delta = d["delta"]["type"].as_str().unwrap_or_default();
                let ok = match kind.as_str() {
                    "text" => delta == "text_delta",
                    "thinking" => delta == "thinking_delta" || delta == "signature_delta",
                    "tool_use" => delta == "input_json_delta",
                    _ => false,
                };
                if d["index"] != *index || !ok {
                    return Err(format!("bad delta {d} in {kind} block {index}"));
                }
            }
            "content_block_stop" => match open.take() {
                Some((index, _)) if d["index"] == index => {}
                _ => return Err(format!("bad stop {d}")),
            },
            "message_delta" if open.is_none() && i + 2 == data.len() => {}
            "message_stop" | "error" if i == last && open.is_none() => {}
            _ => return Err(format!("unexpected {d} at {i}")),
        }
    }
    Ok(())
}

/// The count fields a usage object may carry, in any provider's naming.
const COUNT_KEYS: &[&str] = &[
    "input_tokens",
    "prompt_tokens",
    "output_tokens",
    "completion_tokens",
    "total_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
];

const DETAILS_KEYS: &[&str] = &[
    "input_tokens_details",
    "prompt_tokens_details",
    "output_tokens_details",
    "completion_tokens_details",
];

/// A usage object of other keys, then counts, then `*_details` objects (later keys win).
fn usage_object(
    other: Vec<(String, Value)>,
    flat: Vec<(&str, Value)>,
    nested: Vec<(&str, Vec<(&str, Value)>)>,
) -> Value {
    let mut m: Map<String, Value> = other.into_iter().collect();
    for (k, v) in flat {
        m.insert(k.into(), v);
    }
    for (k, fields) in nested {
        let d: Map<String, Value> = fields.into_iter().map(|(f, v)| (f.into(), v)).collect();
        m.insert(k.into(), Value::Object(d));
    }
    Value::Object(m)
}

fn usage_value() -> impl Strategy<Value = Value> {
    let count = prop_oneof![
        any::<u32>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        Just(json!(-3)),
        Just(json!("7")),
        Just(Value::Null),
        Just(json!({"n": 1})),
    ];
    let key = prop_oneof![prop::sample::select(COUNT_KEYS), Just("unrelated"),];
    let details = prop::sample::select(DETAILS_KEYS);
    let inner = prop_oneof![Just("cached_tokens"), Just("reasoning_tokens"), Just("x")];
    (
        prop::collection::vec((key, count.clone()), 0..6),
        prop::collection::vec((details, prop::collection::vec((inner, count), 0..3)), 0..3),
        json_value(),
    )
        .prop_map(|(flat, nested, other)| usage_object(vec![("other".into(), other)], flat, nested))
}

/// Usage objects of the shapes providers actually send: integer (or null) counts, flat
/// details, plain scalars beside them; what the fast path in `usage_from_usage_slice` reads.
fn plain_usage_value() -> impl Strategy<Value = Value> {
    let count = prop_oneof![
        any::<u64>().prop_map(|n| json!(n)),
        (0u64..100_000).prop_map(|n| json!(n)),
        Just(Value::Null),
    ];
    let scalar = prop_oneof![
        Just(json!(0)),
        Just(json!("standard")),
        Just(json!(true)),
        Just(Value::Null),
        (0u64..10).prop_map(|n| json!(n)),
    ];
    let key = prop::sample::select(COUNT_KEYS);
    let details = prop::sample::select(DETAILS_KEYS);
    let inner = prop_oneof![
        Just("cached_tokens"),
        Just("reasoning_tokens"),
        Just("audio_tokens")
    ];
    (
        prop::collection::vec((key, count.clone()), 0..7),
        prop::collection::vec((details, prop::collection::vec((inner, count), 0..3)), 0..3),
        prop::collection::vec(("[a-z_]{1,12}", scalar), 0..3),
    )
        .prop_map(|(flat, nested, other)| usage_object(other, flat, nested))
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
    fn typed_usage_reads_like_the_tree(u in usage_value(), junk in prop::collection::vec(any::<u8>(), 0..16)) {
        let text = u.to_string();
        // The tree is read back from the same text: serde_json's fast float parser may land
        // one ulp away from the generated f64, and both readers must see the same number.
        let tree: Value = serde_json::from_str(&text).expect("serialized JSON parses");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(b" ,");
        bytes.extend_from_slice(&junk);
        prop_assert_eq!(usage_from_usage_slice(&bytes), usage_from_usage_object(&tree));
    }

    #[test]
    fn plain_usage_reads_like_the_tree(u in plain_usage_value(), pretty in any::<bool>(), junk in prop::collection::vec(any::<u8>(), 0..16)) {
        let text = if pretty {
            serde_json::to_string_pretty(&u).expect("serializes")
        } else {
            u.to_string()
        };
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(b"}\n");
        bytes.extend_from_slice(&junk);
        prop_assert_eq!(usage_from_usage_slice(&bytes), usage_from_usage_object(&u));
    }

    #[test]
    fn typed_usage_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = usage_from_usage_slice(&bytes);
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn anthropic_parser_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256), body in json_value()) {
        let _ = parse_messages_request(&bytes);
        if let Ok(req) = parse_messages_request(body.to_string().as_bytes()) {
            prop_assert!(count_tokens(&req) >= 1);
            let _ = messages_to_responses_request(&req, "gpt-5.4", Some("a"));
        }
    }

    #[test]
    fn anthropic_translation_never_panics(body in anthropic_request()) {
        let Ok(req) = parse_messages_request(body.to_string().as_bytes()) else {
            return Ok(());
        };
        prop_assert!(count_tokens(&req) >= 1);
        let anchor = claude_anchor("key", req.user_id(), &req.model);
        prop_assert_eq!(anchor.len(), 36);
        let Ok(conv) = messages_to_responses_request(&req, "gpt-5.4", Some(&anchor)) else {
            return Ok(());
        };
        let originals: Vec<&str> = req.tools.iter().flatten().map(|t| t.name.as_str()).collect();
        for tool in conv.body["tools"].as_array().into_iter().flatten() {
            if let Some(name) = tool["name"].as_str() {
                prop_assert!(name.len() <= 64, "tool name {name:?} sent upstream");
                prop_assert!(originals.contains(&conv.tool_names.restore(name)));
            }
        }
        for item in conv.body["input"].as_array().into_iter().flatten() {
            if let Some(name) = item["name"].as_str() {
                prop_assert!(name.len() <= 64 || item["type"] != "function_call");
            }
            let ty = item["type"].as_str().unwrap_or_default();
            prop_assert!(["message", "function_call", "function_call_output", "reasoning"].contains(&ty), "{item}");
        }
        // What the translation produces is always a body the Codex rules accept as it is.
        let codex = normalize_codex_request(conv.body.clone(), &CodexRequestOptions::default()).unwrap();
        prop_assert_eq!(&codex["instructions"], &Value::from(NEUTRAL_INSTRUCTIONS));
        prop_assert_eq!(&codex["prompt_cache_key"], &Value::from(anchor));
        let _ = responses_to_messages(&body, &conv.reply_options());
    }

    #[test]
    fn anthropic_stream_translator_keeps_its_structure(
        events in prop::collection::vec(event(), 0..24),
        thinking: bool,
        stops in prop::collection::vec(prop::sample::select(&["", "a", "STOP", "{", "\n", "é"][..]), 0..3),
    ) {
        let opts = MessagesReplyOptions {
            id: "msg_x".into(),
            model: "claude-x".into(),
            tool_names: poolgate_wire::chat::ToolNameMap::build([LONG_TOOL.repeat(2)]),
            thinking,
            stop_sequences: stops.iter().map(|s| s.to_string()).collect(),
        };
        let mut t = MessagesStreamTranslator::new(opts.clone());
        let mut agg = ResponsesAggregator::new(1 << 16);
        let mut out = Vec::new();
        for ev in &events {
            t.push(ev, 0, &mut out);
            agg.push(ev, 0);
        }
        t.finish(&mut out);
        prop_assert!(t.is_finished());
        let n = out.len();
        t.finish(&mut out);
        prop_assert_eq!(out.len(), n, "finish is idempotent");
        let bytes: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        let frames = decode_all(&bytes, 1 << 24).unwrap();
        if let Err(e) = anthropic_stream_shape(&frames) {
            prop_assert!(false, "{e}\n{}", String::from_utf8_lossy(&bytes));
        }
        if let Ok(resp) = agg.finish() {
            let m = responses_to_messages(&resp, &opts);
            prop_assert!(m["content"].is_array() && m["stop_reason"].is_string());
        }
    }

    #[test]
    fn anthropic_error_frames_round_trip(status in any::<u16>(), message in "(?s).{0,40}", code in prop::option::of(".{0,10}"), body in prop::collection::vec(any::<u8>(), 0..64)) {
        let frame = anthropic_stream_error_frame(status, &message, code.as_deref());
        let events = decode_all(&frame, 1 << 20).unwrap();
        prop_assert_eq!(events.len(), 1);
        prop_assert_eq!(events[0].event.as_deref(), Some("error"));
        prop_assert_eq!(events[0].json().unwrap(), anthropic_error_body(status, &message, code.as_deref()));
        let restated = anthropic_error_from_upstream(status, &body);
        prop_assert_eq!(&restated["type"], &Value::from("error"));
        prop_assert!(restated["error"]["type"].is_string() && restated["error"]["message"].is_string());
    }
}
