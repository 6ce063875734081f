//! OpenAI-shaped error bodies (seed spec §7.2 [H]) and the 429 `usage_limit_reached` body the
//! Codex client recognises as "out of quota, retry after the reset" (§9.2).

use bytes::Bytes;
use serde_json::{Value, json};

/// The error type Codex treats as a usage limit (anything else on 429 is retried blindly).
pub const USAGE_LIMIT_REACHED: &str = "usage_limit_reached";

/// The OpenAI error `type` for an HTTP status.
pub fn error_type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "insufficient_quota",
        403 => "permission_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

/// `{"error":{"message","type","code","param":null}}`, the type derived from the status.
pub fn error_body(status: u16, message: &str, code: Option<&str>) -> Value {
    json!({
        "error": {
            "message": message,
            "type": error_type_for_status(status),
            "code": code,
            "param": null,
        }
    })
}

/// [`error_body`] serialised.
pub fn error_bytes(status: u16, message: &str, code: Option<&str>) -> Bytes {
    Bytes::from(error_body(status, message, code).to_string())
}

/// The 429 body for a pool whose every account is out of quota. `resets_in_seconds` is also
/// what the Retry-After header should say; `resets_at` is the same instant in Unix seconds.
pub fn usage_limit_reached_body(resets_in_seconds: u64, resets_at_secs: Option<i64>) -> Value {
    let message = format!(
        "The usage limit has been reached for every account in the pool; try again in {}.",
        human_duration(resets_in_seconds)
    );
    let mut error = json!({
        "message": message,
        "type": USAGE_LIMIT_REACHED,
        "code": USAGE_LIMIT_REACHED,
        "param": null,
        "resets_in_seconds": resets_in_seconds,
    });
    if let (Some(at), Some(obj)) = (resets_at_secs, error.as_object_mut()) {
        obj.insert("resets_at".into(), json!(at));
    }
    json!({ "error": error })
}

fn human_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s}s"),
        _ => format!("{h}h {m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_status() {
        let table = [
            (400, "invalid_request_error"),
            (404, "invalid_request_error"),
            (413, "invalid_request_error"),
            (401, "authentication_error"),
            (402, "insufficient_quota"),
            (403, "permission_error"),
            (429, "rate_limit_error"),
            (500, "server_error"),
            (502, "server_error"),
            (503, "server_error"),
        ];
        for (status, ty) in table {
            assert_eq!(error_type_for_status(status), ty, "{status}");
        }
        assert_eq!(
            error_body(401, "missing api key", Some("missing_api_key")),
            json!({"error": {"message": "missing api key", "type": "authentication_error", "code": "missing_api_key", "param": null}})
        );
        let parsed: Value = serde_json::from_slice(&error_bytes(502, "x", None)).unwrap();
        assert_eq!(parsed["error"]["code"], Value::Null);
    }

    #[test]
    fn usage_limit_body() {
        let b = usage_limit_reached_body(3725, Some(1_800_000_000));
        assert_eq!(b["error"]["type"], "usage_limit_reached");
        assert_eq!(b["error"]["code"], "usage_limit_reached");
        assert_eq!(b["error"]["resets_in_seconds"], 3725);
        assert_eq!(b["error"]["resets_at"], 1_800_000_000);
        assert!(b["error"]["message"].as_str().unwrap().contains("1h 2m"));
        assert!(
            usage_limit_reached_body(5, None)["error"]
                .get("resets_at")
                .is_none()
        );
    }
}
