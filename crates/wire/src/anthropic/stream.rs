//! Responses SSE events → Anthropic Messages SSE events.
//!
//! The output is what the Anthropic API streams: `message_start` and a `ping`, then per
//! content block `content_block_start`, deltas (`text_delta`, `thinking_delta` +
//! `signature_delta`, `input_json_delta`) and `content_block_stop`, then `message_delta`
//! (stop reason and usage) and `message_stop`. Blocks never interleave: a block is stopped
//! before the next one starts, and indices count up from 0. A failure ends the stream with
//! `event: error` (after stopping an open block) instead of `message_delta`/`message_stop`.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use poolgate_core::UnixMillis;
use serde_json::{Value, json};

use super::errors::anthropic_stream_error_frame;
use super::response::{
    MessagesReplyOptions, StopReason, find_stop, message_id, messages_usage_json,
    thinking_signature,
};
use crate::chat::{arguments_string, message_text, reasoning_summary};
use crate::classify::{Outcome, StreamEventClass, StreamFailure, classify_stream_json};
use crate::sse::{self, SseEvent, event_type};
use crate::usage::{TokenUsage, UsageAccumulator};

/// The `event: ping` frame the Anthropic API sends; clients ignore it, so a gateway may also
/// use it as its keep-alive on Anthropic streams.
fn ping_frame() -> Bytes {
    sse::encode_json(Some("ping"), &json!({"type": "ping"}))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Thinking,
    ToolUse,
}

#[derive(Debug, Clone)]
struct OpenBlock {
    index: u64,
    kind: Kind,
    /// The upstream output item the block comes from.
    item: u64,
    /// Text held back while it could still be the start of a stop sequence.
    held: String,
    /// The reasoning summary part the last thinking delta belonged to.
    summary_index: Option<u64>,
    has_text: bool,
}

#[derive(Debug, Clone, Default)]
struct ItemState {
    /// Something of this item reached the client (or it was dealt with): the final snapshot
    /// must not repeat it.
    handled: bool,
    call_id: String,
    name: String,
    /// Tool arguments sent (block open) or buffered (block not started yet).
    args: String,
}

/// Turns decoded Responses SSE events into Anthropic Messages SSE frames. Same shape as
/// [`crate::chat::ChatStreamTranslator`]: feed events with [`push`](Self::push), call
/// [`finish`](Self::finish) when upstream ends.
#[derive(Debug, Clone)]
pub struct MessagesStreamTranslator {
    opts: MessagesReplyOptions,
    id: String,
    started: bool,
    finished: bool,
    next_index: u64,
    open: Option<OpenBlock>,
    items: HashMap<u64, ItemState>,
    item_index: HashMap<String, u64>,
    call_ids: HashSet<String>,
    tool_used: bool,
    usage: UsageAccumulator,
    failure: Option<StreamFailure>,
}

impl crate::StreamTranslator for MessagesStreamTranslator {
    /// `event: ping` (the Anthropic API's own keep-alive) once `message_start` is out, as the
    /// API never sends one before it; an SSE comment before that.
    fn keepalive_frame(&self) -> Bytes {
        if self.started {
            ping_frame()
        } else {
            sse::keep_alive()
        }
    }

    /// `message_stop` or `error` was emitted; later events only update usage.
    fn is_finished(&self) -> bool {
        self.finished
    }

    /// Usage reported by upstream so far, also from events after a stop sequence ended the
    /// client's stream (keep feeding them for accurate request logs).
    fn usage(&self) -> Option<TokenUsage> {
        self.usage.usage()
    }

    fn failure(&self) -> Option<&StreamFailure> {
        self.failure.as_ref()
    }

    /// Feeds one upstream event, appending the frames it produces to `out`.
    fn push(&mut self, ev: &SseEvent, now_ms: UnixMillis, out: &mut Vec<Bytes>) {
        let Some(v) = ev.json() else { return };
        self.usage.push_json(&v);
        if self.finished {
            return;
        }
        let Some(ty) = event_type(ev, Some(&v)).map(str::to_string) else {
            return;
        };
        match classify_stream_json(ev, Some(&v), now_ms) {
            StreamEventClass::Failed(_) => {
                self.fail(StreamFailure::from_event(&ty, Some(&v), now_ms), out);
                return;
            }
            StreamEventClass::Terminal => {
                self.complete(v.get("response"), out);
                return;
            }
            StreamEventClass::Lifecycle | StreamEventClass::Content => {}
        }
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
        let item_id = v.get("item_id").and_then(Value::as_str);
        match ty.as_str() {
            "response.created" | "response.in_progress" => self.adopt_identity(v.get("response")),
            "response.output_item.added" => {
                let Some(item) = v.get("item").filter(|i| i.is_object()) else {
                    return;
                };
                let index = self.index_of(&v, item.get("id").and_then(Value::as_str));
                if let Some(id) = item.get("id").and_then(Value::as_str) {
                    self.item_index.insert(id.to_string(), index);
                }
                if item.get("type").and_then(Value::as_str) == Some("function_call") {
                    self.note_tool(index, item);
                    if !self.item(index).handled {
                        self.start_tool(index, out);
                    }
                }
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                let index = self.index_of(&v, item_id);
                self.text(index, s("delta"), out);
            }
            "response.output_text.done" | "response.refusal.done" => {
                let index = self.index_of(&v, item_id);
                if !self.item(index).handled {
                    let text = v
                        .get("text")
                        .or_else(|| v.get("refusal"))
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    self.text(index, text, out);
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta"
                if self.opts.thinking =>
            {
                let index = self.index_of(&v, item_id);
                let part = v
                    .get("summary_index")
                    .or_else(|| v.get("content_index"))
                    .and_then(Value::as_u64);
                self.thinking(index, s("delta"), part, out);
            }
            "response.function_call_arguments.delta" => {
                let index = self.index_of(&v, item_id);
                self.tool_args(index, s("delta"), false, out);
            }
            "response.function_call_arguments.done" => {
                let index = self.index_of(&v, item_id);
                self.tool_args(index, s("arguments"), true, out);
            }
            "response.output_item.done" => {
                let Some(item) = v.get("item").filter(|i| i.is_object()) else {
                    return;
                };
                let index = self.index_of(&v, item.get("id").and_then(Value::as_str));
                self.item_done(index, item, out);
            }
            _ => {}
        }
    }

    /// Upstream ended. Without a terminal event that is an error for the client.
    fn finish(&mut self, out: &mut Vec<Bytes>) {
        if self.finished {
            return;
        }
        let failure = StreamFailure {
            outcome: Outcome::Upstream5xx,
            event_type: String::new(),
            code: Some("stream_truncated".into()),
            message: "upstream stream ended before the response completed".into(),
        };
        self.fail(failure, out);
    }
}

impl MessagesStreamTranslator {
    pub fn new(opts: MessagesReplyOptions) -> Self {
        let id = message_id(None, &opts.id);
        MessagesStreamTranslator {
            opts,
            id,
            started: false,
            finished: false,
            next_index: 0,
            open: None,
            items: HashMap::new(),
            item_index: HashMap::new(),
            call_ids: HashSet::new(),
            tool_used: false,
            usage: UsageAccumulator::new(),
            failure: None,
        }
    }

    fn adopt_identity(&mut self, response: Option<&Value>) {
        if self.started {
            return;
        }
        if let Some(id) = response
            .and_then(|r| r.get("id"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            self.id = message_id(Some(id), &self.opts.id);
        }
    }

    fn index_of(&self, v: &Value, item_id: Option<&str>) -> u64 {
        v.get("output_index")
            .and_then(Value::as_u64)
            .or_else(|| item_id.and_then(|id| self.item_index.get(id).copied()))
            .unwrap_or(0)
    }

    fn item(&mut self, index: u64) -> &mut ItemState {
        self.items.entry(index).or_default()
    }

    fn is_open(&self, index: u64, kind: Kind) -> bool {
        self.open
            .as_ref()
            .is_some_and(|o| o.item == index && o.kind == kind)
    }

    fn frame(out: &mut Vec<Bytes>, v: Value) {
        let name = v
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message")
            .to_string();
        out.push(sse::encode_json(Some(&name), &v));
    }

    fn ensure_started(&mut self, out: &mut Vec<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        Self::frame(
            out,
            json!({"type": "message_start", "message": {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.opts.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": messages_usage_json(&TokenUsage::default()),
            }}),
        );
        out.push(ping_frame());
    }

    /// Makes a block of `kind` for upstream item `item` the open one, stopping any other.
    fn open_block(&mut self, item: u64, kind: Kind, start: Value, out: &mut Vec<Bytes>) {
        if self.is_open(item, kind) {
            return;
        }
        self.close_block(out);
        self.ensure_started(out);
        let index = self.next_index;
        self.next_index += 1;
        Self::frame(
            out,
            json!({"type": "content_block_start", "index": index, "content_block": start}),
        );
        self.open = Some(OpenBlock {
            index,
            kind,
            item,
            held: String::new(),
            summary_index: None,
            has_text: false,
        });
    }

    fn delta(out: &mut Vec<Bytes>, index: u64, delta: Value) {
        Self::frame(
            out,
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }

    /// Stops the open block, first sending text held back for stop sequences.
    fn close_block(&mut self, out: &mut Vec<Bytes>) {
        let Some(open) = self.open.take() else { return };
        if !open.held.is_empty() {
            Self::delta(
                out,
                open.index,
                json!({"type": "text_delta", "text": open.held}),
            );
        }
        Self::frame(
            out,
            json!({"type": "content_block_stop", "index": open.index}),
        );
    }

    fn text(&mut self, item: u64, text: &str, out: &mut Vec<Bytes>) {
        self.item(item).handled = true;
        if text.is_empty() {
            return;
        }
        self.open_block(item, Kind::Text, json!({"type": "text", "text": ""}), out);
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let index = open.index;
        if self.opts.stop_sequences.is_empty() {
            Self::delta(out, index, json!({"type": "text_delta", "text": text}));
            return;
        }
        open.held.push_str(text);
        if let Some((at, seq)) = find_stop(&open.held, &self.opts.stop_sequences) {
            let before = open.held.get(..at).unwrap_or_default().to_string();
            let seq = seq.to_string();
            open.held.clear();
            if !before.is_empty() {
                Self::delta(out, index, json!({"type": "text_delta", "text": before}));
            }
            self.stop_at_sequence(&seq, out);
            return;
        }
        // Keep back just enough to recognise a stop sequence split across deltas.
        let longest = self
            .opts
            .stop_sequences
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0);
        let mut cut = open.held.len().saturating_sub(longest.saturating_sub(1));
        while !open.held.is_char_boundary(cut) {
            cut -= 1;
        }
        if cut > 0 {
            let rest = open.held.split_off(cut);
            let ready = std::mem::replace(&mut open.held, rest);
            Self::delta(out, index, json!({"type": "text_delta", "text": ready}));
        }
    }

    fn thinking(&mut self, item: u64, text: &str, part: Option<u64>, out: &mut Vec<Bytes>) {
        self.item(item).handled = true;
        if text.is_empty() {
            return;
        }
        self.open_block(
            item,
            Kind::Thinking,
            json!({"type": "thinking", "thinking": "", "signature": ""}),
            out,
        );
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let index = open.index;
        // Summary parts are separate paragraphs, as in the non-streaming answer.
        let new_part = part.is_some() && open.summary_index.is_some() && open.summary_index != part;
        if new_part && open.has_text {
            Self::delta(
                out,
                index,
                json!({"type": "thinking_delta", "thinking": "\n\n"}),
            );
        }
        open.summary_index = part.or(open.summary_index);
        open.has_text = true;
        Self::delta(
            out,
            index,
            json!({"type": "thinking_delta", "thinking": text}),
        );
    }

    fn note_tool(&mut self, index: u64, item: &Value) {
        let st = self.item(index);
        if st.call_id.is_empty() {
            st.call_id = item
                .get("call_id")
                .or_else(|| item.get("id"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
        }
        if st.name.is_empty() {
            st.name = item
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
        }
    }

    /// Starts the tool_use block of an item, sending arguments buffered before it.
    fn start_tool(&mut self, index: u64, out: &mut Vec<Bytes>) {
        let st = self.item(index);
        st.handled = true;
        let (call_id, name, buffered) = (st.call_id.clone(), st.name.clone(), st.args.clone());
        let start = json!({
            "type": "tool_use",
            "id": call_id,
            "name": self.opts.tool_names.restore(&name),
            "input": {},
        });
        self.call_ids.insert(call_id);
        self.tool_used = true;
        self.open_block(index, Kind::ToolUse, start, out);
        if let (false, Some(open)) = (buffered.is_empty(), self.open.as_ref()) {
            Self::delta(
                out,
                open.index,
                json!({"type": "input_json_delta", "partial_json": buffered}),
            );
        }
    }

    /// Arguments: a delta is appended; a full value (`done`) only adds what is missing.
    /// Before the block started they are buffered; after it stopped they are ignored.
    fn tool_args(&mut self, index: u64, args: &str, full: bool, out: &mut Vec<Bytes>) {
        let open_here = self.is_open(index, Kind::ToolUse);
        let block = self.open.as_ref().map(|o| o.index);
        let st = self.item(index);
        if st.handled && !open_here {
            return;
        }
        let piece = if full {
            match args.strip_prefix(st.args.as_str()) {
                Some(rest) => rest.to_string(),
                None if !open_here => {
                    st.args.clear();
                    args.to_string()
                }
                None => String::new(),
            }
        } else {
            args.to_string()
        };
        if piece.is_empty() {
            return;
        }
        st.args.push_str(&piece);
        if let (true, Some(block)) = (open_here, block) {
            Self::delta(
                out,
                block,
                json!({"type": "input_json_delta", "partial_json": piece}),
            );
        }
    }

    fn item_done(&mut self, index: u64, item: &Value, out: &mut Vec<Bytes>) {
        match item.get("type").and_then(Value::as_str) {
            Some("function_call") => {
                let call_id = item
                    .get("call_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                // The same call under another index (a snapshot numbering it differently).
                if !self.items.contains_key(&index) && self.call_ids.contains(call_id) {
                    return;
                }
                self.note_tool(index, item);
                let args = arguments_string(item.get("arguments"));
                let args = if args == "{}" && !self.item(index).args.is_empty() {
                    String::new()
                } else {
                    args
                };
                if self.is_open(index, Kind::ToolUse) {
                    self.tool_args(index, &args, true, out);
                    self.close_block(out);
                } else if !self.item(index).handled {
                    self.tool_args(index, &args, true, out);
                    self.start_tool(index, out);
                    self.close_block(out);
                }
            }
            Some("message") => {
                if self.is_open(index, Kind::Text) {
                    self.close_block(out);
                } else if !self.item(index).handled {
                    let (text, refusal) = message_text(item);
                    self.text(index, &(text + &refusal), out);
                    if !self.finished && self.is_open(index, Kind::Text) {
                        self.close_block(out);
                    }
                }
            }
            Some("reasoning") if self.opts.thinking => {
                let signature = thinking_signature(item);
                if !self.is_open(index, Kind::Thinking) && !self.item(index).handled {
                    let summary = reasoning_summary(item);
                    if summary.is_empty() && signature.is_empty() {
                        self.item(index).handled = true;
                        return;
                    }
                    self.open_block(
                        index,
                        Kind::Thinking,
                        json!({"type": "thinking", "thinking": "", "signature": ""}),
                        out,
                    );
                    self.thinking(index, &summary, None, out);
                }
                let block = self
                    .open
                    .as_ref()
                    .filter(|o| o.item == index && o.kind == Kind::Thinking)
                    .map(|o| o.index);
                if let (false, Some(block)) = (signature.is_empty(), block) {
                    Self::delta(
                        out,
                        block,
                        json!({"type": "signature_delta", "signature": signature}),
                    );
                }
                if self.is_open(index, Kind::Thinking) {
                    self.close_block(out);
                }
                self.item(index).handled = true;
            }
            _ => {}
        }
    }

    fn complete(&mut self, response: Option<&Value>, out: &mut Vec<Bytes>) {
        // Output only the final snapshot carries (no deltas, no item events) is sent now;
        // anything already streamed is not repeated.
        if let Some(items) = response
            .and_then(|r| r.get("output"))
            .and_then(Value::as_array)
        {
            for (i, item) in items.iter().enumerate() {
                self.item_done(i as u64, item, out);
                if self.finished {
                    return;
                }
            }
        }
        self.close_block(out);
        let reason = StopReason::of_response(self.tool_used, response);
        self.end(reason, None, out);
    }

    fn stop_at_sequence(&mut self, seq: &str, out: &mut Vec<Bytes>) {
        self.close_block(out);
        self.end(StopReason::StopSequence, Some(seq), out);
    }

    fn end(&mut self, reason: StopReason, seq: Option<&str>, out: &mut Vec<Bytes>) {
        self.ensure_started(out);
        let usage = self.usage.usage().unwrap_or_default();
        Self::frame(
            out,
            json!({
                "type": "message_delta",
                "delta": {"stop_reason": reason.as_str(), "stop_sequence": seq},
                "usage": messages_usage_json(&usage),
            }),
        );
        Self::frame(out, json!({"type": "message_stop"}));
        self.finished = true;
    }

    fn fail(&mut self, failure: StreamFailure, out: &mut Vec<Bytes>) {
        self.close_block(out);
        out.push(anthropic_stream_error_frame(
            failure.outcome.status_hint(),
            &failure.message,
            failure.code.as_deref(),
        ));
        self.failure = Some(failure);
        self.finished = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamTranslator;

    fn ev(v: Value) -> SseEvent {
        SseEvent::new(v.get("type").and_then(Value::as_str), v.to_string())
    }

    fn run(opts: MessagesReplyOptions, events: &[Value]) -> Vec<Value> {
        let mut t = MessagesStreamTranslator::new(opts);
        let mut out = Vec::new();
        for e in events {
            t.push(&ev(e.clone()), 0, &mut out);
        }
        t.finish(&mut out);
        out.iter()
            .flat_map(|b| sse::decode_all(b, 1 << 20).unwrap())
            .map(|e| e.json().unwrap())
            .collect()
    }

    fn text_of(frames: &[Value]) -> String {
        frames
            .iter()
            .filter_map(|f| f["delta"]["text"].as_str())
            .collect()
    }

    #[test]
    fn stop_sequence_split_across_deltas_ends_the_message() {
        let opts = MessagesReplyOptions {
            stop_sequences: vec!["STOP".into()],
            ..Default::default()
        };
        let events = [
            json!({"type": "response.output_text.delta", "output_index": 0, "delta": "héllo ST"}),
            json!({"type": "response.output_text.delta", "output_index": 0, "delta": "OP more"}),
            json!({"type": "response.completed", "response": {"usage": {"input_tokens": 3, "output_tokens": 9}}}),
        ];
        let frames = run(opts.clone(), &events);
        assert_eq!(text_of(&frames), "héllo ");
        let last_two: Vec<&str> = frames[frames.len() - 2..]
            .iter()
            .map(|f| f["type"].as_str().unwrap())
            .collect();
        assert_eq!(last_two, ["message_delta", "message_stop"]);
        assert_eq!(
            frames[frames.len() - 2]["delta"]["stop_reason"],
            "stop_sequence"
        );
        assert_eq!(frames[frames.len() - 2]["delta"]["stop_sequence"], "STOP");
        // Without a match, held-back text is released when the block stops.
        let events = [
            json!({"type": "response.output_text.delta", "output_index": 0, "delta": "ab S"}),
            json!({"type": "response.output_text.delta", "output_index": 0, "delta": "TO"}),
            json!({"type": "response.completed", "response": {}}),
        ];
        let frames = run(opts, &events);
        assert_eq!(text_of(&frames), "ab STO");
        assert_eq!(frames[frames.len() - 2]["delta"]["stop_reason"], "end_turn");
    }

    #[test]
    fn usage_keeps_counting_after_the_client_stream_ended() {
        let mut t = MessagesStreamTranslator::new(MessagesReplyOptions {
            stop_sequences: vec!["x".into()],
            ..Default::default()
        });
        let mut out = Vec::new();
        t.push(
            &ev(json!({"type": "response.output_text.delta", "delta": "x"})),
            0,
            &mut out,
        );
        assert!(t.is_finished());
        let n = out.len();
        t.push(
            &ev(json!({"type": "response.completed", "response": {"usage": {"input_tokens": 5, "output_tokens": 1}}})),
            0,
            &mut out,
        );
        t.finish(&mut out);
        assert_eq!(out.len(), n, "nothing more is sent");
        assert_eq!(t.usage().map(|u| u.input_tokens), Some(5));
        assert!(t.failure().is_none());
    }
}
