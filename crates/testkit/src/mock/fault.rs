//! Faults injected per bearer token, and the answers they produce.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::body::MockBody;
use super::util::{
    anthropic_error, anthropic_request_id, azure_error, json_response, rfc3339, set_header,
    set_header_str,
};

/// Something going wrong for one account. Faults are keyed by the bearer token the request
/// carries (the refresh token or code on the OAuth endpoint) and apply to the inference, models
/// and usage endpoints.
///
/// The documented answers are the OpenAI/Codex ones. The Anthropic Messages API renders them
/// its way: `RateLimited` and `UsageLimit` → 429 `rate_limit_error` with `retry-after` and
/// `anthropic-ratelimit-requests-reset` (RFC 3339); `Unauthorized` → 401
/// `authentication_error`; `Deactivated` → 403 `permission_error`; `ServerError` → that
/// status with `api_error` (529: `overloaded_error`); in-stream failures → an `event: error`
/// frame whose `error.type` is the code. Azure OpenAI: 429s carry `retry-after` and
/// `retry-after-ms` with body `{"error":{"code":"429",…}}`; `Unauthorized` → 401 and
/// `Deactivated` → 403, both `{"error":{"code":"401"|"403",…}}`; the rest as OpenAI.
///
/// JSON form (control API): `{"kind":"usage_limit","resets_in_secs":3600}`, kinds in snake_case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// 429 with `Retry-After` and a `rate_limit_exceeded` body.
    RateLimited { retry_after_secs: u64 },
    /// 429 `usage_limit_reached` with `resets_in_seconds`/`resets_at` and the primary window
    /// at 100 % in the `x-codex-primary-*` headers. The usage endpoint reports the same
    /// exhausted window (without consuming the fault).
    UsageLimit { resets_in_secs: u64 },
    /// 401 `token_expired` (`refresh_token_invalidated` on the OAuth endpoint).
    Unauthorized,
    /// 401 `account_deactivated`.
    Deactivated,
    /// A 5xx status (anything outside 500..=599 becomes 500); on the Anthropic API 529 is
    /// `overloaded_error`, any other status `api_error`.
    ServerError { status: u16 },
    /// The response head is delayed, then the request is served normally.
    SlowFirstByte { delay_ms: u64 },
    /// A stream pauses for `stall_ms` after `after_events` SSE events (a JSON answer pauses
    /// after its head).
    StallMidStream { after_events: u32, stall_ms: u64 },
    /// A stream's connection is closed after `after_events` events, without a terminal event;
    /// a JSON request's connection is closed without any answer.
    DropConnection { after_events: u32 },
    /// A JSON answer announces its whole `Content-Length`, sends the first half of its body
    /// and closes the connection (a stream is cut after its first event, like
    /// `DropConnection`).
    TruncatedBody,
    /// A stream fails inside: `response.created`, `response.in_progress`, then
    /// `response.failed` whose `response.error` carries `code` (a Chat Completions stream
    /// gets an `error` frame instead). Only streaming answers take this fault.
    InStreamFailure {
        code: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resets_in_secs: Option<u64>,
    },
    /// Like `InStreamFailure`, but the failure comes after the answer's content deltas
    /// (paced like any answer), when a gateway has already relayed content and can no
    /// longer fail over. A Chat Completions stream gets its content chunks, then an `error`
    /// frame. Only streaming answers take this fault.
    FailureAfterContent {
        code: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resets_in_secs: Option<u64>,
    },
    /// 403 Cloudflare challenge page (`cf-mitigated: challenge`, HTML body).
    Challenge,
    /// 403 `unsupported_country_region_territory`: the issuer or backend refuses the
    /// caller's region.
    RegionBlocked,
    /// 401 `refresh_token_expired` on the OAuth endpoint (`token_expired` elsewhere).
    RefreshTokenExpired,
}

impl Fault {
    /// This fault for the next `n` requests only.
    pub fn times(self, n: u32) -> FaultRule {
        FaultRule {
            fault: self,
            remaining: Some(n),
        }
    }

    /// Applies to streaming answers only.
    pub(crate) fn stream_only(&self) -> bool {
        matches!(
            self,
            Fault::InStreamFailure { .. } | Fault::FailureAfterContent { .. }
        )
    }
}

/// A fault and how many more requests it applies to (`None`: until cleared).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    pub fault: Fault,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<u32>,
}

impl From<Fault> for FaultRule {
    fn from(fault: Fault) -> Self {
        FaultRule {
            fault,
            remaining: None,
        }
    }
}

/// Where the answer to the faulted request goes, which decides how a fault is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Surface {
    /// Inference, models and usage endpoints.
    Api,
    /// The OAuth token endpoint: auth failures use OAuth refresh error codes.
    OAuth,
    /// The Anthropic Messages API: Anthropic error types and rate-limit headers; the number
    /// is the request's id (`request-id` header and body field).
    Anthropic(u64),
    /// Azure OpenAI: the gateway's `{"error":{"code":"429",…}}` shapes and `retry-after-ms`.
    Azure,
}

/// The immediate HTTP answer of an HTTP-level fault; `None` for faults that shape the normal
/// answer instead (slow first byte, stalls, drops, in-stream failures).
pub(crate) fn http_answer(
    fault: &Fault,
    surface: Surface,
    now_secs: i64,
) -> Option<Response<MockBody>> {
    match surface {
        Surface::Anthropic(id) => {
            if let Some(r) = anthropic_answer(fault, id, now_secs) {
                return Some(r);
            }
        }
        Surface::Azure => {
            if let Some(r) = azure_answer(fault) {
                return Some(r);
            }
        }
        Surface::Api | Surface::OAuth => {}
    }
    let resp = match fault {
        Fault::RateLimited { retry_after_secs } => {
            let body = json!({"error": {
                "message": format!("Rate limit reached for requests. Please try again in {retry_after_secs}s."),
                "type": "requests",
                "param": null,
                "code": "rate_limit_exceeded",
            }});
            let mut r = json_response(StatusCode::TOO_MANY_REQUESTS, body.to_string());
            set_header(
                &mut r,
                header::RETRY_AFTER,
                HeaderValue::from(*retry_after_secs),
            );
            r
        }
        Fault::UsageLimit { resets_in_secs } => {
            let resets_at =
                now_secs.saturating_add(i64::try_from(*resets_in_secs).unwrap_or(i64::MAX / 2));
            let body = json!({"error": {
                "type": "usage_limit_reached",
                "message": "The usage limit has been reached",
                "plan_type": "plus",
                "resets_at": resets_at,
                "resets_in_seconds": resets_in_secs,
            }});
            json_response(StatusCode::TOO_MANY_REQUESTS, body.to_string())
        }
        Fault::Unauthorized => match surface {
            Surface::Api | Surface::Anthropic(_) | Surface::Azure => openai_error(
                StatusCode::UNAUTHORIZED,
                "Provided authentication token is expired. Please try signing in again.",
                "token_expired",
            ),
            Surface::OAuth => openai_error(
                StatusCode::UNAUTHORIZED,
                "Your refresh token has been invalidated. Please try signing in again.",
                "refresh_token_invalidated",
            ),
        },
        Fault::Deactivated => openai_error(
            StatusCode::UNAUTHORIZED,
            "Your OpenAI account has been deactivated, please check your email for more information.",
            "account_deactivated",
        ),
        Fault::ServerError { status } => {
            let status = server_status(*status);
            let body = json!({"error": {
                "message": "The server had an error while processing your request. Sorry about that!",
                "type": "server_error",
                "param": null,
                "code": null,
            }});
            json_response(status, body.to_string())
        }
        Fault::Challenge => {
            let mut r = Response::new(MockBody::full(Bytes::from_static(CHALLENGE_PAGE)));
            *r.status_mut() = StatusCode::FORBIDDEN;
            set_header(
                &mut r,
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=UTF-8"),
            );
            set_header(&mut r, CF_MITIGATED, HeaderValue::from_static("challenge"));
            set_header(
                &mut r,
                CF_RAY,
                HeaderValue::from_static("8f0000000mock-SJC"),
            );
            set_header(
                &mut r,
                header::SERVER,
                HeaderValue::from_static("cloudflare"),
            );
            r
        }
        Fault::RegionBlocked => openai_error(
            StatusCode::FORBIDDEN,
            "Country, region, or territory not supported",
            "unsupported_country_region_territory",
        ),
        Fault::RefreshTokenExpired => match surface {
            Surface::Api | Surface::Anthropic(_) | Surface::Azure => openai_error(
                StatusCode::UNAUTHORIZED,
                "Provided authentication token is expired. Please try signing in again.",
                "token_expired",
            ),
            Surface::OAuth => openai_error(
                StatusCode::UNAUTHORIZED,
                "Your refresh token has expired. Please try signing in again.",
                "refresh_token_expired",
            ),
        },
        Fault::SlowFirstByte { .. }
        | Fault::StallMidStream { .. }
        | Fault::DropConnection { .. }
        | Fault::TruncatedBody
        | Fault::InStreamFailure { .. }
        | Fault::FailureAfterContent { .. } => return None,
    };
    Some(resp)
}

/// Reset headers of an Anthropic 429: `retry-after` in seconds and the `anthropic-ratelimit-*`
/// family with the reset as RFC 3339.
fn anthropic_limited(message: &str, id: u64, reset_in: u64, now_secs: i64) -> Response<MockBody> {
    let mut r = anthropic_error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        message,
        &anthropic_request_id(id),
    );
    let reset = rfc3339(now_secs.saturating_add(i64::try_from(reset_in).unwrap_or(i64::MAX / 2)));
    set_header(&mut r, header::RETRY_AFTER, HeaderValue::from(reset_in));
    for (name, value) in [
        ("anthropic-ratelimit-requests-limit", "50"),
        ("anthropic-ratelimit-requests-remaining", "0"),
        ("anthropic-ratelimit-requests-reset", reset.as_str()),
    ] {
        set_header_str(&mut r, http::HeaderName::from_static(name), value);
    }
    r
}

/// The Anthropic rendering of HTTP-level faults; `None` where the generic answer fits
/// (Challenge, RegionBlocked) or the fault shapes the normal answer.
fn anthropic_answer(fault: &Fault, id: u64, now_secs: i64) -> Option<Response<MockBody>> {
    let rid = anthropic_request_id(id);
    let r = match fault {
        Fault::RateLimited { retry_after_secs } => anthropic_limited(
            "This request would exceed the rate limit for your organization of 50 requests per minute. Please try again later.",
            id,
            *retry_after_secs,
            now_secs,
        ),
        // Anthropic has no usage windows: a spent limit is a 429 with a far reset.
        Fault::UsageLimit { resets_in_secs } => anthropic_limited(
            "You have reached your specified API usage limits. You will regain access when the limit resets.",
            id,
            *resets_in_secs,
            now_secs,
        ),
        Fault::Unauthorized | Fault::RefreshTokenExpired => anthropic_error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid x-api-key",
            &rid,
        ),
        Fault::Deactivated => anthropic_error(
            StatusCode::FORBIDDEN,
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
            &rid,
        ),
        Fault::ServerError { status } => {
            let status = server_status(*status);
            if status.as_u16() == 529 {
                anthropic_error(status, "overloaded_error", "Overloaded", &rid)
            } else {
                anthropic_error(status, "api_error", "Internal server error", &rid)
            }
        }
        Fault::Challenge
        | Fault::RegionBlocked
        | Fault::SlowFirstByte { .. }
        | Fault::StallMidStream { .. }
        | Fault::DropConnection { .. }
        | Fault::TruncatedBody
        | Fault::InStreamFailure { .. }
        | Fault::FailureAfterContent { .. } => return None,
    };
    Some(r)
}

/// The Azure OpenAI rendering of auth and rate-limit faults; `None` where Azure relays the
/// model service's OpenAI-shaped answer (5xx) or the generic answer fits.
fn azure_answer(fault: &Fault) -> Option<Response<MockBody>> {
    let limited = |secs: u64, what: &str| {
        let mut r = azure_error(
            StatusCode::TOO_MANY_REQUESTS,
            "429",
            &format!(
                "Requests to the ChatCompletions_Create Operation under Azure OpenAI API have exceeded {what} of your current OpenAI S0 pricing tier. Please retry after {secs} seconds."
            ),
        );
        set_header(&mut r, header::RETRY_AFTER, HeaderValue::from(secs));
        set_header(
            &mut r,
            http::HeaderName::from_static("retry-after-ms"),
            HeaderValue::from(secs.saturating_mul(1000)),
        );
        r
    };
    let r = match fault {
        Fault::RateLimited { retry_after_secs } => limited(*retry_after_secs, "call rate limit"),
        Fault::UsageLimit { resets_in_secs } => limited(*resets_in_secs, "token rate limit"),
        Fault::Unauthorized | Fault::RefreshTokenExpired => {
            azure_error(StatusCode::UNAUTHORIZED, "401", AZURE_ACCESS_DENIED)
        }
        Fault::Deactivated => azure_error(
            StatusCode::FORBIDDEN,
            "403",
            "Access denied: the Azure OpenAI resource is disabled.",
        ),
        Fault::ServerError { .. }
        | Fault::Challenge
        | Fault::RegionBlocked
        | Fault::SlowFirstByte { .. }
        | Fault::StallMidStream { .. }
        | Fault::DropConnection { .. }
        | Fault::TruncatedBody
        | Fault::InStreamFailure { .. }
        | Fault::FailureAfterContent { .. } => return None,
    };
    Some(r)
}

/// Azure's answer to a missing or wrong `api-key`.
pub(crate) const AZURE_ACCESS_DENIED: &str = "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource.";

/// A fault's 5xx status (anything outside 500..=599 becomes 500).
fn server_status(status: u16) -> StatusCode {
    StatusCode::from_u16(status)
        .ok()
        .filter(StatusCode::is_server_error)
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

const CF_MITIGATED: http::HeaderName = http::HeaderName::from_static("cf-mitigated");
const CF_RAY: http::HeaderName = http::HeaderName::from_static("cf-ray");

const CHALLENGE_PAGE: &[u8] = b"<!DOCTYPE html><html lang=\"en-US\"><head><title>Just a moment...</title>\
<meta http-equiv=\"refresh\" content=\"390\"></head><body><noscript>Enable JavaScript and cookies to continue</noscript>\
</body></html>";

fn openai_error(status: StatusCode, message: &str, code: &str) -> Response<MockBody> {
    let body = json!({"error": {
        "message": message,
        "type": "invalid_request_error",
        "param": null,
        "code": code,
    }});
    json_response(status, body.to_string())
}

/// The message of an in-stream failure with this code.
pub(crate) fn in_stream_message(code: &str) -> &'static str {
    match code {
        "usage_limit_reached" | "usage_limit_exceeded" => "The usage limit has been reached",
        "insufficient_quota" => {
            "You exceeded your current quota, please check your plan and billing details."
        }
        "rate_limit_exceeded" => "Rate limit reached for requests. Please try again in 20s.",
        "account_deactivated" | "workspace_deactivated" => "This account has been deactivated.",
        "context_length_exceeded" => "Your input exceeds the context window of this model.",
        _ => "An error occurred while processing your request.",
    }
}
