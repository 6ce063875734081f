//! The Responses answer to a turn: the event stream the Codex backend sends (seed spec §18)
//! and the same response as one JSON object (OpenAI `/v1/responses` without streaming).

use serde_json::{Value, json};

use super::body::Frames;
use super::fault::in_stream_message;
use super::turn::{REASONING_TOKENS, Reply, Turn};

/// Everything that decides one answer.
pub(crate) struct Answer<'a> {
    pub turn: &'a Turn,
    /// Unique number the ids derive from.
    pub id: u64,
    pub created_at: i64,
    pub deltas: usize,
    /// The prompt-cache key was warm on this account.
    pub cached: bool,
    pub store: bool,
    /// Fingerprint of the account that may decrypt the reasoning items.
    pub account_tag: u64,
}

/// An in-stream failure to report instead of output.
pub(crate) struct Failure<'a> {
    pub code: &'a str,
    pub resets_in_secs: Option<u64>,
    /// After the content deltas (else before any output).
    pub after_content: bool,
}

/// Prefix of the encrypted reasoning content the mock issues: `mockenc:<account>:<n>`.
pub(crate) const ENC_PREFIX: &str = "mockenc:";

pub(crate) fn encrypted_content(account_tag: u64, id: u64) -> String {
    format!("{ENC_PREFIX}{account_tag:016x}:{id:x}")
}

/// The account fingerprint of mock-issued encrypted content, if it is ours.
pub(crate) fn encrypted_owner(content: &str) -> Option<u64> {
    let rest = content.strip_prefix(ENC_PREFIX)?;
    let (tag, _) = rest.split_once(':')?;
    u64::from_str_radix(tag, 16).ok()
}

impl Answer<'_> {
    fn resp_id(&self) -> String {
        format!("resp_{:016x}", self.id)
    }

    fn pieces(&self) -> Vec<String> {
        self.turn.pieces(self.deltas)
    }

    fn reasoning_tokens(&self) -> u64 {
        if self.turn.reasoning {
            REASONING_TOKENS
        } else {
            0
        }
    }

    fn usage(&self, pieces: usize) -> Value {
        let input = self.turn.input_tokens;
        let cached = if self.cached { input * 3 / 4 } else { 0 };
        let reasoning = self.reasoning_tokens();
        let output = u64::try_from(pieces)
            .unwrap_or(u64::MAX)
            .saturating_add(reasoning);
        json!({
            "input_tokens": input,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input.saturating_add(output),
        })
    }

    fn object(&self, status: &str, output: Value, usage: Value) -> Value {
        json!({
            "id": self.resp_id(),
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": false,
            "error": null,
            "incomplete_details": null,
            "instructions": null,
            "max_output_tokens": null,
            "model": self.turn.model,
            "output": output,
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "reasoning": {"effort": null, "summary": null},
            "store": self.store,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": {},
        })
    }

    fn reasoning_item(&self, done: bool) -> Value {
        let mut item =
            json!({"id": format!("rs_{:016x}", self.id), "type": "reasoning", "summary": []});
        if done
            && self.turn.encrypted_reasoning
            && let Some(obj) = item.as_object_mut()
        {
            obj.insert(
                "encrypted_content".into(),
                Value::String(encrypted_content(self.account_tag, self.id)),
            );
        }
        item
    }

    fn message_item(&self, text: Option<&str>) -> Value {
        let (status, content) = match text {
            Some(t) => (
                "completed",
                json!([{"type": "output_text", "annotations": [], "logprobs": [], "text": t}]),
            ),
            None => ("in_progress", json!([])),
        };
        json!({"id": format!("msg_{:016x}", self.id), "type": "message", "status": status,
               "content": content, "role": "assistant"})
    }

    fn call_item(&self, name: &str, arguments: Option<&str>) -> Value {
        json!({
            "id": format!("fc_{:016x}", self.id),
            "type": "function_call",
            "status": if arguments.is_some() { "completed" } else { "in_progress" },
            "arguments": arguments.unwrap_or_default(),
            "call_id": format!("call_{:016x}", self.id),
            "name": name,
        })
    }

    /// The final output items.
    fn output(&self, pieces: &[String]) -> Vec<Value> {
        let mut out = Vec::with_capacity(2);
        if self.turn.reasoning {
            out.push(self.reasoning_item(true));
        }
        match &self.turn.reply {
            Reply::Text(_) => out.push(self.message_item(Some(&pieces.concat()))),
            Reply::ToolCall { name, arguments } => out.push(self.call_item(name, Some(arguments))),
        }
        out
    }

    /// The data of a `response.failed` event carrying `fail`'s error.
    fn failed(&self, fail: &Failure<'_>) -> Value {
        let mut error = json!({"code": fail.code, "message": in_stream_message(fail.code)});
        if let (Some(secs), Some(o)) = (fail.resets_in_secs, error.as_object_mut()) {
            o.insert("resets_in_seconds".into(), Value::from(secs));
        }
        let mut failed = self.object("failed", json!([]), Value::Null);
        if let Some(o) = failed.as_object_mut() {
            o.insert("error".into(), error);
        }
        json!({"response": failed})
    }

    /// The completed response as one JSON object.
    pub(crate) fn completed(&self) -> Value {
        let pieces = self.pieces();
        self.object(
            "completed",
            Value::Array(self.output(&pieces)),
            self.usage(pieces.len()),
        )
    }

    /// The event stream, ending in `response.completed` (or `response.failed`).
    pub(crate) fn stream(&self, failure: Option<Failure<'_>>) -> Frames {
        let pieces = self.pieces();
        let size = 2048 + pieces.iter().map(|p| p.len() + 160).sum::<usize>() * 2;
        let mut f = Frames::with_capacity(size);
        // Both lifecycle events carry the same snapshot: build it once.
        let pending = json!({"response": self.object("in_progress", json!([]), Value::Null)});
        f.typed_event("response.created", 0, &pending, false);
        f.typed_event("response.in_progress", 1, &pending, false);
        let mut seq = 2u64;
        let mut ev = |f: &mut Frames, ty: &str, v: Value, delta: bool| {
            f.typed_event(ty, seq, &v, delta);
            seq += 1;
        };
        // A failure either replaces the output or cuts it short after the deltas.
        let (failure, late_failure) = match failure {
            Some(fail) if fail.after_content => (None, Some(fail)),
            other => (other, None),
        };
        if let Some(fail) = failure {
            ev(&mut f, "response.failed", self.failed(&fail), false);
            return f;
        }
        let mut index = 0u64;
        if self.turn.reasoning {
            let added = json!({"output_index": index, "item": self.reasoning_item(false)});
            ev(&mut f, "response.output_item.added", added, false);
            let done = json!({"output_index": index, "item": self.reasoning_item(true)});
            ev(&mut f, "response.output_item.done", done, false);
            index += 1;
        }
        match &self.turn.reply {
            Reply::Text(_) => {
                let item_id = format!("msg_{:016x}", self.id);
                let text = pieces.concat();
                let part = |t: &str| json!({"type": "output_text", "annotations": [], "logprobs": [], "text": t});
                ev(
                    &mut f,
                    "response.output_item.added",
                    json!({"output_index": index, "item": self.message_item(None)}),
                    false,
                );
                ev(
                    &mut f,
                    "response.content_part.added",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": part("")}),
                    false,
                );
                for p in &pieces {
                    ev(
                        &mut f,
                        "response.output_text.delta",
                        json!({"item_id": item_id, "output_index": index, "content_index": 0, "delta": p, "logprobs": []}),
                        true,
                    );
                }
                if let Some(fail) = &late_failure {
                    ev(&mut f, "response.failed", self.failed(fail), false);
                    return f;
                }
                ev(
                    &mut f,
                    "response.output_text.done",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
                    false,
                );
                ev(
                    &mut f,
                    "response.content_part.done",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": part(&text)}),
                    false,
                );
                ev(
                    &mut f,
                    "response.output_item.done",
                    json!({"output_index": index, "item": self.message_item(Some(&text))}),
                    false,
                );
            }
            Reply::ToolCall { name, arguments } => {
                let item_id = format!("fc_{:016x}", self.id);
                ev(
                    &mut f,
                    "response.output_item.added",
                    json!({"output_index": index, "item": self.call_item(name, None)}),
                    false,
                );
                for p in &pieces {
                    ev(
                        &mut f,
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id, "output_index": index, "delta": p}),
                        true,
                    );
                }
                if let Some(fail) = &late_failure {
                    ev(&mut f, "response.failed", self.failed(fail), false);
                    return f;
                }
                ev(
                    &mut f,
                    "response.function_call_arguments.done",
                    json!({"item_id": item_id, "output_index": index, "arguments": arguments}),
                    false,
                );
                ev(
                    &mut f,
                    "response.output_item.done",
                    json!({"output_index": index, "item": self.call_item(name, Some(arguments))}),
                    false,
                );
            }
        }
        let done = self.object(
            "completed",
            Value::Array(self.output(&pieces)),
            self.usage(pieces.len()),
        );
        ev(
            &mut f,
            "response.completed",
            json!({"response": done}),
            false,
        );
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_content_names_its_account() {
        let c = encrypted_content(0xabc, 7);
        assert_eq!(encrypted_owner(&c), Some(0xabc));
        assert_eq!(encrypted_owner("gAAAA-foreign"), None);
        assert_eq!(encrypted_owner("mockenc:zz:1"), None);
    }

    #[test]
    fn usage_counts_pieces_reasoning_and_cache() {
        let turn = Turn {
            model: "m".into(),
            reply: Reply::Text("echo: hi".into()),
            input_tokens: 8,
            reasoning: true,
            encrypted_reasoning: true,
        };
        let a = Answer {
            turn: &turn,
            id: 1,
            created_at: 0,
            deltas: 4,
            cached: true,
            store: false,
            account_tag: 5,
        };
        let r = a.completed();
        assert_eq!(r["usage"]["output_tokens"], 4 + REASONING_TOKENS);
        assert_eq!(r["usage"]["input_tokens_details"]["cached_tokens"], 6);
        assert_eq!(r["usage"]["total_tokens"], 8 + 4 + REASONING_TOKENS);
        assert_eq!(r["output"][0]["type"], "reasoning");
        assert_eq!(r["output"][0]["encrypted_content"], encrypted_content(5, 1));
        assert_eq!(r["output"][1]["content"][0]["text"], "echo: hi");
        assert_eq!(a.stream(None).len(), 2 + 2 + 2 + 4 + 3 + 1);
        let failed = a.stream(Some(Failure {
            code: "usage_limit_reached",
            resets_in_secs: Some(9),
            after_content: false,
        }));
        assert_eq!(failed.len(), 3);
        // After content: lifecycle, reasoning added/done, message and part added, the
        // deltas, then the failure.
        let late = a.stream(Some(Failure {
            code: "usage_limit_reached",
            resets_in_secs: Some(9),
            after_content: true,
        }));
        assert_eq!(late.len(), 2 + 2 + 2 + 4 + 1);
    }
}
