//! The Anthropic Messages API: `POST /v1/messages` (also `?beta=true`), JSON or SSE.
//!
//! The account is the `x-api-key` header (`Authorization: Bearer` when there is none, as the
//! anthropic SDKs may send). Requests are checked the way the real API refuses them
//! (`anthropic-version`, `model`, `max_tokens`, `messages`), and errors have its shape:
//! `{"type":"error","error":{"type":…,"message":…},"request_id":…}` with a `request-id` header.

use http::{HeaderMap, HeaderName, Response, StatusCode, header};
use serde_json::{Value, json};

use super::body::{Aborted, Frames, MockBody};
use super::fault::{Surface, in_stream_message};
use super::server::Cx;
use super::state::Scope;
use super::turn::{Reply, Turn, messages_turn};
use super::util::{
    anthropic_error, anthropic_request_id, header_str, json_value, set_header_str, sse_response,
};

const REQUEST_ID: HeaderName = HeaderName::from_static("request-id");

/// The API key: `x-api-key`, else a bearer token.
fn api_key(headers: &HeaderMap) -> Option<&str> {
    header_str(headers, "x-api-key").or_else(|| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| !t.is_empty())
    })
}

/// The body's problem, in the real API's words, if it is not a Messages request.
fn invalid_body(body: Option<&Value>) -> Option<String> {
    let Some(body) = body.filter(|b| b.is_object()) else {
        return Some("There was an error parsing the body of your request.".into());
    };
    if body
        .get("model")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Some("model: Field required".into());
    }
    match body.get("max_tokens") {
        None => return Some("max_tokens: Field required".into()),
        Some(v) if v.as_u64().is_none_or(|n| n == 0) => {
            return Some("max_tokens: Input should be a valid positive integer".into());
        }
        Some(_) => {}
    }
    match body.get("messages").and_then(Value::as_array) {
        None => return Some("messages: Field required".into()),
        Some(m) if m.is_empty() => {
            return Some("messages: at least one message is required".into());
        }
        Some(_) => {}
    }
    if body.get("stream").is_some_and(|s| !s.is_boolean()) {
        return Some("stream: Input should be a valid boolean".into());
    }
    None
}

/// `POST /v1/messages`.
pub(crate) async fn messages(cx: &Cx) -> Result<Response<MockBody>, Aborted> {
    let id = cx.inner.state.next_id();
    let rid = anthropic_request_id(id);
    let Some(key) = api_key(&cx.headers) else {
        cx.intake(None, None, None);
        return Ok(anthropic_error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "x-api-key header is required",
            &rid,
        ));
    };
    let body: Option<Value> = serde_json::from_slice(&cx.body).ok();
    let stream = body
        .as_ref()
        .and_then(|b| b.get("stream"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let scope = if stream { Scope::Stream } else { Scope::Json };
    let intake = cx.intake(Some(key), Some(scope), None);
    let shaping = match cx.shape(intake.fault.clone(), Surface::Anthropic(id)).await {
        Ok(s) => s,
        Err(mut r) => {
            set_header_str(&mut r, REQUEST_ID, &rid);
            return Ok(r);
        }
    };
    let bad = |message: &str| {
        anthropic_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            message,
            &rid,
        )
    };
    if header_str(&cx.headers, "anthropic-version").is_none() {
        return Ok(bad("anthropic-version: header is required"));
    }
    if let Some(message) = invalid_body(body.as_ref()) {
        return Ok(bad(&message));
    }
    let body = body.unwrap_or_default();
    let turn = messages_turn(&body);
    let (deltas, delay) = cx.pacing(&intake);
    let msg = Message {
        turn: &turn,
        id,
        deltas,
    };
    let mut r = if stream {
        let failure = shaping
            .failure
            .as_ref()
            .map(|(code, _)| (code.as_str(), shaping.failure_after_content));
        sse_response(msg.stream(failure).into_body(shaping.plan(delay)))
    } else {
        shaping.json(json_value(StatusCode::OK, &msg.message()))?
    };
    set_header_str(&mut r, REQUEST_ID, &rid);
    Ok(r)
}

/// The answer to one Messages request.
struct Message<'a> {
    turn: &'a Turn,
    id: u64,
    deltas: usize,
}

impl Message<'_> {
    fn pieces(&self) -> Vec<String> {
        self.turn.pieces(self.deltas)
    }

    fn stop_reason(&self) -> &'static str {
        match self.turn.reply {
            Reply::Text(_) => "end_turn",
            Reply::ToolCall { .. } => "tool_use",
        }
    }

    fn tool_use_id(&self) -> String {
        format!("toolu_mock{:016x}", self.id)
    }

    /// The content block: whole, or as `content_block_start` announces it (empty text, empty
    /// input).
    fn block(&self, whole: bool) -> Value {
        match &self.turn.reply {
            Reply::Text(t) => json!({"type": "text", "text": if whole { t.as_str() } else { "" }}),
            Reply::ToolCall { name, arguments } => {
                let input = if whole {
                    serde_json::from_str(arguments).unwrap_or_else(|_| json!({}))
                } else {
                    json!({})
                };
                json!({"type": "tool_use", "id": self.tool_use_id(), "name": name, "input": input})
            }
        }
    }

    fn usage(&self, output_tokens: usize) -> Value {
        json!({
            "input_tokens": self.turn.input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
            "service_tier": "standard",
        })
    }

    fn object(&self, content: Value, stop_reason: Value, output_tokens: usize) -> Value {
        json!({
            "id": format!("msg_mock{:016x}", self.id),
            "type": "message",
            "role": "assistant",
            "model": self.turn.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": self.usage(output_tokens),
        })
    }

    /// The whole message (a non-streaming answer).
    fn message(&self) -> Value {
        let pieces = self.pieces().len();
        self.object(json!([self.block(true)]), json!(self.stop_reason()), pieces)
    }

    /// The event stream. `failure`: the error type, and whether it comes after the content
    /// deltas (else right after `message_start` and `ping`).
    fn stream(&self, failure: Option<(&str, bool)>) -> Frames {
        let pieces = self.pieces();
        let mut f =
            Frames::with_capacity(1024 + pieces.iter().map(|p| p.len() + 120).sum::<usize>());
        let start = self.object(json!([]), Value::Null, 1);
        f.named_event("message_start", &json!({"message": start}), false);
        let error = |f: &mut Frames, code: &str| {
            let message = match code {
                "overloaded_error" => "Overloaded",
                "api_error" => "Internal server error",
                other => in_stream_message(other),
            };
            f.named_event(
                "error",
                &json!({"error": {"type": code, "message": message}}),
                false,
            );
        };
        if let Some((code, false)) = failure {
            f.named_event("ping", &json!({}), false);
            error(&mut f, code);
            return f;
        }
        f.named_event(
            "content_block_start",
            &json!({"index": 0, "content_block": self.block(false)}),
            false,
        );
        f.named_event("ping", &json!({}), false);
        for p in &pieces {
            let delta = match self.turn.reply {
                Reply::Text(_) => json!({"type": "text_delta", "text": p}),
                Reply::ToolCall { .. } => json!({"type": "input_json_delta", "partial_json": p}),
            };
            f.named_event(
                "content_block_delta",
                &json!({"index": 0, "delta": delta}),
                true,
            );
        }
        if let Some((code, true)) = failure {
            error(&mut f, code);
            return f;
        }
        f.named_event("content_block_stop", &json!({"index": 0}), false);
        f.named_event(
            "message_delta",
            &json!({"delta": {"stop_reason": self.stop_reason(), "stop_sequence": null},
                    "usage": {"output_tokens": pieces.len()}}),
            false,
        );
        f.named_event("message_stop", &json!({}), false);
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn key_sources() {
        let mut h = HeaderMap::new();
        assert_eq!(api_key(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer b1"));
        assert_eq!(api_key(&h), Some("b1"));
        h.insert("x-api-key", HeaderValue::from_static("k1"));
        assert_eq!(api_key(&h), Some("k1"));
    }

    #[test]
    fn body_checks() {
        let ok =
            json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]});
        assert_eq!(invalid_body(Some(&ok)), None);
        assert_eq!(
            invalid_body(None).as_deref(),
            Some("There was an error parsing the body of your request.")
        );
        let without = |k: &str| {
            let mut b = ok.clone();
            b.as_object_mut().unwrap().remove(k);
            invalid_body(Some(&b))
        };
        assert_eq!(without("model").as_deref(), Some("model: Field required"));
        assert_eq!(
            without("max_tokens").as_deref(),
            Some("max_tokens: Field required")
        );
        assert_eq!(
            without("messages").as_deref(),
            Some("messages: Field required")
        );
        let mut b = ok.clone();
        b["max_tokens"] = json!(0);
        assert!(invalid_body(Some(&b)).is_some());
        b["max_tokens"] = json!(5);
        b["messages"] = json!([]);
        assert!(invalid_body(Some(&b)).is_some());
    }

    #[test]
    fn stream_frame_counts() {
        let turn = Turn {
            model: "m".into(),
            reply: Reply::Text("echo: hi".into()),
            input_tokens: 3,
            reasoning: false,
            encrypted_reasoning: false,
        };
        let m = Message {
            turn: &turn,
            id: 1,
            deltas: 4,
        };
        // start, block start, ping, 4 deltas, block stop, message delta, stop
        assert_eq!(m.stream(None).len(), 3 + 4 + 3);
        assert_eq!(m.stream(Some(("overloaded_error", false))).len(), 3);
        assert_eq!(m.stream(Some(("overloaded_error", true))).len(), 3 + 4 + 1);
        let v = m.message();
        assert_eq!(v["content"][0]["text"], "echo: hi");
        assert_eq!(v["usage"]["output_tokens"], 4);
        assert_eq!(v["stop_reason"], "end_turn");
    }
}
