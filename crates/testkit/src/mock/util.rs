//! Small HTTP helpers shared by the endpoints.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::body::MockBody;

pub(crate) fn set_header(r: &mut Response<MockBody>, name: HeaderName, value: HeaderValue) {
    r.headers_mut().insert(name, value);
}

/// Sets a header from a string, skipping values that are not valid header text.
pub(crate) fn set_header_str(r: &mut Response<MockBody>, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

pub(crate) fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<MockBody> {
    let mut r = Response::new(MockBody::full(body));
    *r.status_mut() = status;
    set_header(
        &mut r,
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn json_value(status: StatusCode, v: &Value) -> Response<MockBody> {
    json_response(status, serde_json::to_vec(v).unwrap_or_default())
}

/// The Codex backend's FastAPI-style error: `{"detail": "..."}`.
pub(crate) fn detail(status: StatusCode, message: &str) -> Response<MockBody> {
    json_value(status, &json!({ "detail": message }))
}

/// An OpenAI-shaped error body.
pub(crate) fn openai_error(
    status: StatusCode,
    message: &str,
    ty: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Response<MockBody> {
    json_value(
        status,
        &json!({"error": {"message": message, "type": ty, "param": param, "code": code}}),
    )
}

pub(crate) fn sse_response(body: MockBody) -> Response<MockBody> {
    let mut r = Response::new(body);
    set_header(
        &mut r,
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    set_header(
        &mut r,
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    r
}

pub(crate) fn empty(status: StatusCode) -> Response<MockBody> {
    let mut r = Response::new(MockBody::empty());
    *r.status_mut() = status;
    r
}

/// The credential a request carries: `Authorization: Bearer`, else `x-api-key` / `api-key`.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let from_auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
        });
    from_auth
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .or_else(|| headers.get("api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// A query parameter's raw (still percent-encoded) value.
pub(crate) fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `application/x-www-form-urlencoded` decoding of one component.
pub(crate) fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a form body into (name, value) pairs.
pub(crate) fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// FNV-1a, 64 bit: a stable, non-cryptographic fingerprint (tokens are never echoed).
pub(crate) fn fnv64(s: &[u8]) -> u64 {
    s.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%20c%2Fd"), "a b c/d");
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%zz%4"), "%zz%4");
        assert_eq!(
            parse_form(b"grant_type=refresh_token&refresh_token=r%2B1&x"),
            [
                ("grant_type".to_string(), "refresh_token".to_string()),
                ("refresh_token".to_string(), "r+1".to_string()),
                ("x".to_string(), String::new()),
            ]
        );
    }

    #[test]
    fn bearer_sources() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("x-api-key", HeaderValue::from_static("k1"));
        assert_eq!(bearer(&h), Some("k1"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  t1 "),
        );
        assert_eq!(bearer(&h), Some("t1"));
        assert_eq!(query_param(Some("a=1&token=x%2F"), "token"), Some("x%2F"));
    }
}
