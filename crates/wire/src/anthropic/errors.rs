//! Errors in the Anthropic dialect: `{"type":"error","error":{"type","message"}}`, as bodies
//! and as the `event: error` frame of a stream. The Anthropic SDKs pick the exception class
//! from the HTTP status and show `error.message`.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::sse;

/// Codes (from upstream or the gateway) that say more than the status does.
fn type_for_code(code: &str) -> Option<&'static str> {
    Some(match code {
        "usage_limit_reached" | "rate_limit_exceeded" | "rate_limit_error" => "rate_limit_error",
        "overloaded" | "overloaded_error" | "server_is_overloaded" | "slow_down" => {
            "overloaded_error"
        }
        "model_not_found" | "not_found" | "not_found_error" => "not_found_error",
        "invalid_api_key" | "missing_api_key" | "authentication_error" => "authentication_error",
        "request_too_large" | "body_too_large" => "request_too_large",
        _ => return None,
    })
}

/// The Anthropic error `type` for a status, refined by a code when one is known. Statuses
/// follow Anthropic's table: 400 invalid_request_error, 401 authentication_error, 402
/// billing_error, 403 permission_error, 404 not_found_error, 413 request_too_large, 429
/// rate_limit_error, 503/529 overloaded_error, 408/504 timeout_error, other 4xx
/// invalid_request_error, other 5xx api_error.
pub fn anthropic_error_type(status: u16, code: Option<&str>) -> &'static str {
    if let Some(t) = code.and_then(type_for_code) {
        return t;
    }
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        408 | 504 => "timeout_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// `{"type":"error","error":{"type","message"}}`.
pub fn anthropic_error_body(status: u16, message: &str, code: Option<&str>) -> Value {
    json!({
        "type": "error",
        "error": {"type": anthropic_error_type(status, code), "message": message},
    })
}

/// [`anthropic_error_body`] serialised.
pub fn anthropic_error_bytes(status: u16, message: &str, code: Option<&str>) -> Bytes {
    Bytes::from(anthropic_error_body(status, message, code).to_string())
}

/// The `event: error` frame that ends a stream that failed after it started.
pub fn anthropic_stream_error_frame(status: u16, message: &str, code: Option<&str>) -> Bytes {
    sse::encode_json(Some("error"), &anthropic_error_body(status, message, code))
}

/// An upstream error answer (OpenAI `{"error":{message,type,code}}`, Codex `{"detail":…}`,
/// or anything else) restated for an Anthropic client, keeping its status's meaning and its
/// message. A body without a usable message gets a generic one naming the status.
pub fn anthropic_error_from_upstream(status: u16, body: &[u8]) -> Value {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let err = v
        .as_ref()
        .map(|v| v.get("error").filter(|e| e.is_object()).unwrap_or(v));
    let field = |k: &str| {
        err.and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let message = field("message")
        .or_else(|| field("detail"))
        .map(str::to_string)
        .unwrap_or_else(|| format!("upstream answered with HTTP {status}"));
    let code = field("code").or_else(|| field("type"));
    anthropic_error_body(status, &message, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_errors_are_restated() {
        let openai =
            br#"{"error":{"message":"bad input","type":"invalid_request_error","code":null}}"#;
        assert_eq!(
            anthropic_error_from_upstream(400, openai),
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": "bad input"}})
        );
        let codex = br#"{"detail":"Unsupported parameter: temperature"}"#;
        assert_eq!(
            anthropic_error_from_upstream(400, codex)["error"]["message"],
            "Unsupported parameter: temperature"
        );
        let quota = br#"{"error":{"type":"usage_limit_reached","message":"limit"}}"#;
        assert_eq!(
            anthropic_error_from_upstream(429, quota)["error"]["type"],
            "rate_limit_error"
        );
        assert_eq!(
            anthropic_error_from_upstream(502, b"<html>")["error"],
            json!({"type": "api_error", "message": "upstream answered with HTTP 502"})
        );
        let frame = anthropic_stream_error_frame(529, "busy", None);
        let events = sse::decode_all(&frame, 1 << 10).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event.as_deref(), Some("error"));
        assert_eq!(
            events[0].json().unwrap(),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
        );
    }
}
