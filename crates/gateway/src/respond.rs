//! Response helpers: the body type, errors (OpenAI- or Anthropic-shaped) with the request id,
//! and which upstream headers reach the client.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");
pub(crate) const JSON: &str = "application/json";
pub(crate) const EVENT_STREAM: &str = "text/event-stream";

pub(crate) fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn with_status(status: u16, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    r
}

pub(crate) fn set_request_id(h: &mut HeaderMap, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(X_REQUEST_ID, v);
    }
}

pub(crate) fn json(status: u16, body: impl Into<Bytes>, request_id: &str) -> Response<Body> {
    let mut r = with_status(status, full(body));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    set_request_id(r.headers_mut(), request_id);
    r
}

/// The error shape a route's clients understand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum ErrorDialect {
    /// `{"error":{"message","type","code","param"}}` (OpenAI SDKs, the Codex CLI).
    #[default]
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}` (Anthropic SDKs, Claude Code).
    Anthropic,
}

/// An error in `dialect` with the request id header; `code` refines the Anthropic `type`.
pub(crate) fn error_in(
    dialect: ErrorDialect,
    status: u16,
    message: &str,
    code: Option<&str>,
    request_id: &str,
) -> Response<Body> {
    let body = match dialect {
        ErrorDialect::OpenAi => poolgate_wire::errors::error_bytes(status, message, code),
        ErrorDialect::Anthropic => {
            poolgate_wire::anthropic::anthropic_error_bytes(status, message, code)
        }
    };
    json(status, body, request_id)
}

pub(crate) fn retry_after(r: &mut Response<Body>, secs: u64) {
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
}

/// Upstream headers that describe the connection or the body encoding, not the answer:
/// never copied to the client (the gateway re-frames bodies). `set-cookie` stays with the
/// upstream session it belongs to.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "set-cookie"
            | "alt-svc"
            | "strict-transport-security"
            | "x-request-id"
    )
}

/// The upstream headers a client may see (turn state, rate-limit and usage headers, model,
/// content type), with the gateway's request id.
pub(crate) fn relay_headers(upstream: &HeaderMap, request_id: &str) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(upstream.len() + 1);
    for (n, v) in upstream {
        if !hop_by_hop(n) {
            h.append(n.clone(), v.clone());
        }
    }
    // The upstream's own id stays available for support requests to the provider.
    if let Some(v) = upstream.get(X_REQUEST_ID) {
        h.insert(X_UPSTREAM_REQUEST_ID, v.clone());
    }
    set_request_id(&mut h, request_id);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_drops_framing_and_cookies() {
        let mut up = HeaderMap::new();
        up.insert("content-length", "10".parse().unwrap());
        up.insert("transfer-encoding", "chunked".parse().unwrap());
        up.insert("set-cookie", "cf=1".parse().unwrap());
        up.insert("x-codex-turn-state", "ts".parse().unwrap());
        up.insert("x-codex-primary-used-percent", "12".parse().unwrap());
        up.insert("x-request-id", "req_up".parse().unwrap());
        let h = relay_headers(&up, "rid");
        assert_eq!(h["x-upstream-request-id"], "req_up");
        assert_eq!(h["x-codex-turn-state"], "ts");
        assert_eq!(h["x-codex-primary-used-percent"], "12");
        assert_eq!(h["x-request-id"], "rid");
        assert!(h.get("content-length").is_none());
        assert!(h.get("set-cookie").is_none());
        assert!(h.get("transfer-encoding").is_none());
        let r = error_in(
            ErrorDialect::OpenAi,
            413,
            "too big",
            Some("body_too_large"),
            "rid",
        );
        assert_eq!(r.status(), 413);
        assert_eq!(r.headers()["x-request-id"], "rid");
    }

    #[tokio::test]
    async fn errors_in_both_dialects() {
        use http_body_util::BodyExt;
        let read = |r: Response<Body>| async move {
            let b = r.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<serde_json::Value>(&b).unwrap()
        };
        let r = error_in(ErrorDialect::Anthropic, 429, "later", None, "rid");
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["x-request-id"], "rid");
        assert_eq!(r.headers()["content-type"], JSON);
        assert_eq!(
            read(r).await,
            serde_json::json!({"type": "error", "error": {"type": "rate_limit_error", "message": "later"}})
        );
        let r = error_in(
            ErrorDialect::OpenAi,
            400,
            "bad",
            Some("invalid_json"),
            "rid",
        );
        let v = read(r).await;
        assert_eq!(v["error"]["code"], "invalid_json");
        assert_eq!(v["error"]["message"], "bad");
    }
}
