//! Folds a Responses event stream into the final non-streaming response JSON.
//!
//! The Codex backend only streams, so a client that asked for one JSON answer gets the
//! `response` of `response.completed` (or `response.done`). When that event is missing or its
//! `output` is empty, the output is rebuilt from `response.output_item.done` items and, failing
//! those, from text and argument deltas.

use std::collections::{BTreeMap, BTreeSet};

use poolgate_core::UnixMillis;
use serde_json::{Map, Value, json};

use crate::classify::{StreamEventClass, StreamFailure, classify_stream_json};
use crate::sse::{SseEvent, event_type};
use crate::usage::{TokenUsage, UsageAccumulator};

/// Default bound on the event data one aggregation keeps.
pub const DEFAULT_MAX_AGGREGATE_BYTES: usize = 64 * 1024 * 1024;

/// Why no response could be produced.
#[derive(Debug, Clone, PartialEq)]
pub enum AggregateError {
    /// The stream reported a failure (classified for failover).
    Failed(StreamFailure),
    /// The stream ended before any terminal event or output.
    Truncated,
    /// The response grew beyond the aggregation bound.
    TooLarge { limit: usize },
}

#[derive(Debug, Clone)]
pub struct ResponsesAggregator {
    max_bytes: usize,
    bytes: usize,
    base: Option<Value>,
    terminal: Option<Value>,
    error: Option<AggregateError>,
    added: BTreeMap<u64, Value>,
    done_items: BTreeMap<u64, Value>,
    item_index: BTreeMap<String, u64>,
    text: BTreeMap<(u64, u64), String>,
    args: BTreeMap<u64, String>,
    usage: UsageAccumulator,
}

impl Default for ResponsesAggregator {
    fn default() -> Self {
        ResponsesAggregator::new(DEFAULT_MAX_AGGREGATE_BYTES)
    }
}

impl ResponsesAggregator {
    pub fn new(max_bytes: usize) -> Self {
        ResponsesAggregator {
            max_bytes,
            bytes: 0,
            base: None,
            terminal: None,
            error: None,
            added: BTreeMap::new(),
            done_items: BTreeMap::new(),
            item_index: BTreeMap::new(),
            text: BTreeMap::new(),
            args: BTreeMap::new(),
            usage: UsageAccumulator::new(),
        }
    }

    /// A terminal event or a failure was seen; later events are ignored.
    pub fn is_done(&self) -> bool {
        self.terminal.is_some() || self.error.is_some()
    }

    /// The failure reported so far, if any.
    pub fn failure(&self) -> Option<&StreamFailure> {
        match &self.error {
            Some(AggregateError::Failed(f)) => Some(f),
            _ => None,
        }
    }

    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage.usage()
    }

    pub fn push(&mut self, ev: &SseEvent, now_ms: UnixMillis) {
        if self.is_done() {
            return;
        }
        self.bytes = self.bytes.saturating_add(ev.data.len());
        if self.bytes > self.max_bytes {
            self.error = Some(AggregateError::TooLarge {
                limit: self.max_bytes,
            });
            self.reset_buffers();
            return;
        }
        let Some(v) = ev.json() else { return };
        self.usage.push_json(&v);
        let Some(ty) = event_type(ev, Some(&v)).map(str::to_string) else {
            return;
        };
        match classify_stream_json(ev, Some(&v), now_ms) {
            StreamEventClass::Failed(_) => {
                self.error = Some(AggregateError::Failed(StreamFailure::from_event(
                    &ty,
                    Some(&v),
                    now_ms,
                )));
                self.reset_buffers();
                return;
            }
            StreamEventClass::Terminal => {
                self.terminal = Some(
                    v.get("response")
                        .filter(|r| r.is_object())
                        .cloned()
                        .unwrap_or_else(|| json!({})),
                );
                return;
            }
            StreamEventClass::Lifecycle | StreamEventClass::Content => {}
        }
        let str_field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
        match ty.as_str() {
            "response.created" | "response.in_progress" | "response.queued" => {
                if let Some(r) = v.get("response").filter(|r| r.is_object()) {
                    self.base = Some(r.clone());
                }
            }
            "response.output_item.added" | "response.output_item.done" => {
                let Some(item) = v.get("item").filter(|i| i.is_object()) else {
                    return;
                };
                let index = self.index_of(&v, item.get("id").and_then(Value::as_str));
                if let Some(id) = item.get("id").and_then(Value::as_str) {
                    self.item_index.insert(id.to_string(), index);
                }
                let target = if ty == "response.output_item.added" {
                    &mut self.added
                } else {
                    &mut self.done_items
                };
                target.insert(index, item.clone());
            }
            "response.output_text.delta" => {
                let key = (
                    self.index_of(&v, v.get("item_id").and_then(Value::as_str)),
                    content_index(&v),
                );
                self.text
                    .entry(key)
                    .or_default()
                    .push_str(str_field("delta"));
            }
            "response.output_text.done" => {
                let key = (
                    self.index_of(&v, v.get("item_id").and_then(Value::as_str)),
                    content_index(&v),
                );
                self.text.insert(key, str_field("text").to_string());
            }
            "response.function_call_arguments.delta" => {
                let index = self.index_of(&v, v.get("item_id").and_then(Value::as_str));
                self.args
                    .entry(index)
                    .or_default()
                    .push_str(str_field("delta"));
            }
            "response.function_call_arguments.done" => {
                let index = self.index_of(&v, v.get("item_id").and_then(Value::as_str));
                self.args.insert(index, str_field("arguments").to_string());
            }
            _ => {}
        }
    }

    /// The final response, or why there is none.
    pub fn finish(self) -> Result<Value, AggregateError> {
        if let Some(e) = self.error.clone() {
            return Err(e);
        }
        let output = self.rebuilt_output();
        let usage = self.usage.usage();
        if let Some(mut response) = self.terminal {
            if let Some(obj) = response.as_object_mut() {
                let empty = obj
                    .get("output")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty);
                if empty && !output.is_empty() {
                    obj.insert("output".into(), Value::Array(output));
                }
                fill_defaults(obj, self.base.as_ref(), usage, "completed");
            }
            return Ok(response);
        }
        if output.is_empty() {
            return Err(AggregateError::Truncated);
        }
        let mut obj = Map::new();
        obj.insert("output".into(), Value::Array(output));
        obj.insert(
            "incomplete_details".into(),
            json!({"reason": "stream_ended"}),
        );
        obj.insert("status".into(), Value::String("incomplete".into()));
        fill_defaults(&mut obj, self.base.as_ref(), usage, "incomplete");
        Ok(Value::Object(obj))
    }

    fn reset_buffers(&mut self) {
        self.added.clear();
        self.done_items.clear();
        self.text.clear();
        self.args.clear();
        self.item_index.clear();
    }

    fn index_of(&self, v: &Value, item_id: Option<&str>) -> u64 {
        v.get("output_index")
            .and_then(Value::as_u64)
            .or_else(|| item_id.and_then(|id| self.item_index.get(id).copied()))
            .unwrap_or(0)
    }

    fn rebuilt_output(&self) -> Vec<Value> {
        let indexes: BTreeSet<u64> = self
            .done_items
            .keys()
            .chain(self.added.keys())
            .chain(self.args.keys())
            .copied()
            .chain(self.text.keys().map(|(i, _)| *i))
            .collect();
        indexes
            .into_iter()
            .filter_map(|i| self.rebuilt_item(i))
            .collect()
    }

    fn rebuilt_item(&self, index: u64) -> Option<Value> {
        if let Some(item) = self.done_items.get(&index) {
            return Some(item.clone());
        }
        let added = self.added.get(&index);
        let kind = added.and_then(|a| a.get("type")).and_then(Value::as_str);
        if kind == Some("function_call") || (kind.is_none() && self.args.contains_key(&index)) {
            let mut item = added
                .cloned()
                .unwrap_or_else(|| json!({"type": "function_call"}));
            if let Some(obj) = item.as_object_mut() {
                let args = self.args.get(&index).cloned().unwrap_or_default();
                obj.insert("arguments".into(), Value::String(args));
                obj.insert("status".into(), Value::String("completed".into()));
            }
            return Some(item);
        }
        let parts: Vec<Value> = self
            .text
            .range((index, 0)..=(index, u64::MAX))
            .map(|(_, t)| json!({"type": "output_text", "text": t, "annotations": []}))
            .collect();
        if kind == Some("message") || (kind.is_none() && !parts.is_empty()) {
            let mut item = added.cloned().unwrap_or_else(
                || json!({"type": "message", "id": format!("msg_{index}"), "role": "assistant"}),
            );
            if let Some(obj) = item.as_object_mut() {
                obj.insert("content".into(), Value::Array(parts));
                obj.insert("status".into(), Value::String("completed".into()));
            }
            return Some(item);
        }
        added.cloned()
    }
}

fn content_index(v: &Value) -> u64 {
    v.get("content_index").and_then(Value::as_u64).unwrap_or(0)
}

/// Fields a Responses object always has, taken from the stream's first snapshot when the
/// terminal event lacks them.
fn fill_defaults(
    obj: &mut Map<String, Value>,
    base: Option<&Value>,
    usage: Option<TokenUsage>,
    status: &str,
) {
    if let Some(Value::Object(base)) = base {
        for (k, v) in base {
            let missing =
                !obj.contains_key(k) || (obj.get(k).is_some_and(Value::is_null) && !v.is_null());
            if missing && !matches!(k.as_str(), "status" | "output" | "usage") {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    obj.entry("object")
        .or_insert_with(|| Value::String("response".into()));
    obj.entry("status")
        .or_insert_with(|| Value::String(status.into()));
    obj.entry("output").or_insert_with(|| json!([]));
    let missing_usage = obj.get("usage").is_none_or(Value::is_null);
    if let (true, Some(u)) = (missing_usage, usage) {
        obj.insert("usage".into(), responses_usage_json(&u));
    }
}

/// Usage in the Responses shape.
pub fn responses_usage_json(u: &TokenUsage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_input_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_tokens,
    })
}

/// Aggregates a list of already-decoded events.
pub fn aggregate_events(events: &[SseEvent], now_ms: UnixMillis) -> Result<Value, AggregateError> {
    let mut agg = ResponsesAggregator::default();
    for ev in events {
        agg.push(ev, now_ms);
    }
    agg.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::Outcome;

    fn ev(v: Value) -> SseEvent {
        let ty = v.get("type").and_then(Value::as_str).map(str::to_string);
        SseEvent {
            event: ty,
            data: v.to_string(),
            id: None,
        }
    }

    #[test]
    fn completed_response_is_returned() {
        let events = [
            ev(
                json!({"type": "response.created", "response": {"id": "r1", "status": "in_progress", "output": []}}),
            ),
            ev(
                json!({"type": "response.completed", "response": {"id": "r1", "status": "completed",
                "output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}]}}),
            ),
            ev(json!({"type": "response.output_text.delta", "delta": "ignored after terminal"})),
        ];
        let out = aggregate_events(&events, 0).unwrap();
        assert_eq!(out["output"][0]["content"][0]["text"], "hi");
        assert_eq!(out["object"], "response");
    }

    #[test]
    fn failure_is_reported_with_its_class() {
        let events = [
            ev(json!({"type": "response.created", "response": {"id": "r1"}})),
            ev(
                json!({"type": "response.failed", "response": {"id": "r1", "status": "failed",
                "error": {"code": "usage_limit_reached", "message": "The usage limit has been reached", "resets_in_seconds": 60}}}),
            ),
        ];
        let Err(AggregateError::Failed(f)) = aggregate_events(&events, 1_000) else {
            panic!("expected failure")
        };
        assert_eq!(
            f.outcome,
            Outcome::QuotaExhausted {
                resets_at_ms: Some(61_000)
            }
        );
        assert_eq!(f.code.as_deref(), Some("usage_limit_reached"));
        assert_eq!(f.event_type, "response.failed");
    }

    #[test]
    fn truncated_and_too_large() {
        assert_eq!(aggregate_events(&[], 0), Err(AggregateError::Truncated));
        let mut agg = ResponsesAggregator::new(10);
        agg.push(
            &ev(json!({"type": "response.output_text.delta", "delta": "0123456789"})),
            0,
        );
        assert!(agg.is_done());
        assert_eq!(agg.finish(), Err(AggregateError::TooLarge { limit: 10 }));
    }
}
