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

/// An Anthropic-shaped error: `{"type":"error","error":{"type":TY,"message":…},"request_id":…}`
/// with the `request-id` header the real API sends.
pub(crate) fn anthropic_error(
    status: StatusCode,
    ty: &str,
    message: &str,
    request_id: &str,
) -> Response<MockBody> {
    let mut r = json_value(
        status,
        &json!({"type": "error", "error": {"type": ty, "message": message}, "request_id": request_id}),
    );
    set_header_str(&mut r, HeaderName::from_static("request-id"), request_id);
    r
}

/// The `request-id` of an Anthropic answer.
pub(crate) fn anthropic_request_id(id: u64) -> String {
    format!("req_mock{id:016x}")
}

/// An Azure OpenAI gateway error: `{"error":{"code":CODE,"message":…}}` (the code is a string,
/// often the status itself).
pub(crate) fn azure_error(status: StatusCode, code: &str, message: &str) -> Response<MockBody> {
    json_value(
        status,
        &json!({"error": {"code": code, "message": message}}),
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

/// `secs` since the epoch as RFC 3339 UTC (`2025-01-02T03:04:05Z`), the format of Anthropic's
/// `anthropic-ratelimit-*-reset` headers.
pub(crate) fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian, eras of 400 years).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
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
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_735_787_045), "2025-01-02T03:04:05Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
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
