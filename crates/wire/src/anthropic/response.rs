//! A final Responses object → a Messages response, and what the stream translator shares
//! with it: stop reasons, usage, tool input, thinking signatures, stop sequences.

use serde_json::{Map, Value, json};

use super::CODEX_SIGNATURE_PREFIX;
use crate::chat::{ToolNameMap, message_text, reasoning_summary};
use crate::usage::{TokenUsage, usage_from_json};

/// What the answer side needs to speak Anthropic to this client.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MessagesReplyOptions {
    /// The message id to use until (or unless) upstream names its response.
    pub id: String,
    /// The model the client asked for, echoed in every answer.
    pub model: String,
    pub tool_names: ToolNameMap,
    /// Emit thinking blocks (the client enabled thinking); otherwise reasoning is not shown.
    pub thinking: bool,
    /// Text stops before the first of these; the answer then ends with `stop_sequence`.
    pub stop_sequences: Vec<String>,
}

/// Why a message ended, in Anthropic's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
    Refusal,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndTurn => "end_turn",
            StopReason::MaxTokens => "max_tokens",
            StopReason::StopSequence => "stop_sequence",
            StopReason::ToolUse => "tool_use",
            StopReason::Refusal => "refusal",
        }
    }

    /// From a final Responses object: a tool call wins (the client must run it), then an
    /// incomplete answer's reason.
    pub(crate) fn of_response(has_tool_use: bool, response: Option<&Value>) -> Self {
        if has_tool_use {
            return StopReason::ToolUse;
        }
        let reason = response
            .and_then(|r| r.get("incomplete_details"))
            .and_then(|d| d.get("reason"))
            .and_then(Value::as_str);
        match reason {
            Some("max_output_tokens" | "max_tokens") => StopReason::MaxTokens,
            Some("content_filter") => StopReason::Refusal,
            _ => StopReason::EndTurn,
        }
    }
}

/// Usage in the Anthropic shape. Anthropic counts cache reads apart from `input_tokens`
/// (clients add them up for the context size), Responses counts them inside.
pub fn messages_usage_json(u: &TokenUsage) -> Value {
    json!({
        "input_tokens": u.input_tokens.saturating_sub(u.cached_input_tokens),
        "output_tokens": u.output_tokens,
        "cache_read_input_tokens": u.cached_input_tokens,
        "cache_creation_input_tokens": 0,
    })
}

/// A message id in Anthropic's form, from the upstream response id.
pub(crate) fn message_id(upstream: Option<&str>, fallback: &str) -> String {
    match upstream.filter(|s| !s.is_empty()) {
        Some(id) => format!("msg_{}", id.strip_prefix("resp_").unwrap_or(id)),
        None if !fallback.is_empty() => fallback.to_string(),
        None => "msg_poolgate".to_string(),
    }
}

/// Tool input from the arguments text: an object as it is, nothing as `{}`; anything else
/// (not JSON, not an object) kept under `arguments`, so it reaches the client visibly instead
/// of being lost.
pub(crate) fn tool_input(arguments: Option<&Value>) -> Value {
    let text = match arguments {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Object(o)) => return Value::Object(o.clone()),
        None | Some(Value::Null) => "",
        Some(other) => return json!({"arguments": other}),
    };
    if text.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => Value::Object(o),
        _ => json!({"arguments": text}),
    }
}

/// The thinking block signature for a reasoning item: its encrypted content, marked as ours.
pub(crate) fn thinking_signature(item: &Value) -> String {
    item.get("encrypted_content")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
        .map(|e| format!("{CODEX_SIGNATURE_PREFIX}{e}"))
        .unwrap_or_default()
}

/// The earliest stop sequence in `text`: `(byte offset, sequence)`.
pub(crate) fn find_stop<'a>(text: &str, stops: &'a [String]) -> Option<(usize, &'a str)> {
    stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()).map(|i| (i, s.as_str())))
        .min_by_key(|(i, s)| (*i, std::cmp::Reverse(s.len())))
}

/// A final Responses object as a Messages response: text, thinking (when asked for) and
/// tool_use blocks in output order, tool names restored, the stop reason and usage.
pub fn responses_to_messages(resp: &Value, opts: &MessagesReplyOptions) -> Value {
    let mut content = Vec::new();
    let mut stop: Option<String> = None;
    for item in resp
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                let (text, refusal) = message_text(item);
                let mut text = text + &refusal;
                if let Some((at, seq)) = find_stop(&text, &opts.stop_sequences) {
                    text.truncate(at);
                    stop = Some(seq.to_string());
                }
                if !text.is_empty() {
                    content.push(json!({"type": "text", "text": text}));
                }
                if stop.is_some() {
                    break;
                }
            }
            Some("reasoning") if opts.thinking => {
                let thinking = reasoning_summary(item);
                let signature = thinking_signature(item);
                if !thinking.is_empty() || !signature.is_empty() {
                    content.push(
                        json!({"type": "thinking", "thinking": thinking, "signature": signature}),
                    );
                }
            }
            Some("function_call") => {
                let id = item
                    .get("call_id")
                    .or_else(|| item.get("id"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
                content.push(json!({
                    "type": "tool_use",
                    "id": id,
                    "name": opts.tool_names.restore(name),
                    "input": tool_input(item.get("arguments")),
                }));
            }
            _ => {}
        }
    }
    let has_tool_use = content.iter().any(|b| b["type"] == "tool_use");
    let reason = if stop.is_some() {
        StopReason::StopSequence
    } else {
        StopReason::of_response(has_tool_use, Some(resp))
    };
    let usage = usage_from_json(resp)
        .or_else(|| usage_from_json(&json!({"usage": resp.get("usage")})))
        .unwrap_or_default();
    let mut out = Map::new();
    out.insert(
        "id".into(),
        Value::String(message_id(resp.get("id").and_then(Value::as_str), &opts.id)),
    );
    out.insert("type".into(), json!("message"));
    out.insert("role".into(), json!("assistant"));
    out.insert("model".into(), Value::String(opts.model.clone()));
    out.insert("content".into(), Value::Array(content));
    out.insert("stop_reason".into(), json!(reason.as_str()));
    out.insert("stop_sequence".into(), json!(stop));
    out.insert("usage".into(), messages_usage_json(&usage));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_input_forms() {
        assert_eq!(tool_input(Some(&json!("{\"a\":1}"))), json!({"a": 1}));
        assert_eq!(tool_input(Some(&json!(""))), json!({}));
        assert_eq!(tool_input(None), json!({}));
        assert_eq!(tool_input(Some(&json!("[1]"))), json!({"arguments": "[1]"}));
        assert_eq!(
            tool_input(Some(&json!("{bad"))),
            json!({"arguments": "{bad"})
        );
        assert_eq!(tool_input(Some(&json!({"b": 2}))), json!({"b": 2}));
    }

    #[test]
    fn earliest_stop_sequence_wins() {
        let stops = vec!["END".to_string(), "\n\n".to_string(), "EN".to_string()];
        assert_eq!(find_stop("a\n\nbEND", &stops), Some((1, "\n\n")));
        assert_eq!(
            find_stop("abEND", &stops),
            Some((2, "END")),
            "longest at a tie"
        );
        assert_eq!(find_stop("abc", &stops), None);
        assert_eq!(find_stop("abc", &[String::new()]), None);
    }

    #[test]
    fn usage_moves_cache_reads_out_of_input() {
        let u = TokenUsage {
            input_tokens: 100,
            cached_input_tokens: 60,
            output_tokens: 7,
            reasoning_tokens: 2,
            total_tokens: 107,
        };
        assert_eq!(
            messages_usage_json(&u),
            json!({"input_tokens": 40, "output_tokens": 7, "cache_read_input_tokens": 60, "cache_creation_input_tokens": 0})
        );
        assert_eq!(message_id(Some("resp_abc"), "x"), "msg_abc");
        assert_eq!(message_id(None, "msg_f"), "msg_f");
        assert_eq!(message_id(Some(""), ""), "msg_poolgate");
    }
}
