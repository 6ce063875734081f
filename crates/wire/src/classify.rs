//! Upstream outcome classification (seed spec §9.2, §18.6): what an answer means for routing.
//!
//! Every function takes `now_ms` instead of reading a clock, so relative hints ("resets in N
//! seconds", Retry-After) become absolute instants the whole cluster can share.

use poolgate_core::{ErrorClass, UnixMillis, UsageWindow};
use serde_json::Value;

use crate::non_empty;
use crate::sse::{SseEvent, event_type};

/// What one upstream answer means for the attempt loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The request itself is wrong: return the upstream answer to the client as it is.
    ClientError,
    /// Throttled; the account comes back soon.
    RateLimited {
        retry_after_secs: Option<u64>,
        resets_at_ms: Option<UnixMillis>,
    },
    /// The account's plan quota is used up until `resets_at_ms`.
    QuotaExhausted {
        resets_at_ms: Option<UnixMillis>,
    },
    /// 401: the access token is not accepted (report it; the control plane refreshes).
    AuthFailed,
    /// 403 without a challenge or deactivation signal: this account is refused; try another,
    /// without declaring its credentials broken.
    Forbidden,
    /// `account_deactivated` / `workspace_deactivated`.
    Deactivated,
    /// A Cloudflare/WAF challenge instead of an API answer.
    Challenge,
    /// 5xx (and 408): transient upstream trouble.
    Upstream5xx,
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }

    /// Whether the next candidate should be tried (while nothing reached the client yet).
    pub fn should_failover(&self) -> bool {
        !matches!(self, Outcome::Success | Outcome::ClientError)
    }

    /// The HTTP status to answer a client with when this outcome is the final word and the
    /// upstream answer itself cannot be relayed (e.g. it came inside a stream).
    pub fn status_hint(&self) -> u16 {
        match self {
            Outcome::Success => 200,
            Outcome::ClientError => 400,
            Outcome::RateLimited { .. } | Outcome::QuotaExhausted { .. } => 429,
            Outcome::AuthFailed => 401,
            Outcome::Forbidden | Outcome::Deactivated => 403,
            Outcome::Challenge | Outcome::Upstream5xx => 502,
        }
    }

    /// The coarse class for request logs and metrics. A challenge is a form of throttling;
    /// a refusal (403) is counted with authentication problems.
    pub fn error_class(&self) -> Option<ErrorClass> {
        Some(match self {
            Outcome::Success => return None,
            Outcome::ClientError => ErrorClass::ClientError,
            Outcome::RateLimited { .. } | Outcome::Challenge => ErrorClass::RateLimited,
            Outcome::QuotaExhausted { .. } => ErrorClass::QuotaExhausted,
            Outcome::AuthFailed | Outcome::Forbidden => ErrorClass::Auth,
            Outcome::Deactivated => ErrorClass::Deactivated,
            Outcome::Upstream5xx => ErrorClass::Upstream5xx,
        })
    }
}

/// Classifies an HTTP answer from its status, headers (lower-case lookup) and the first bytes
/// of its body (a prefix is enough; it may be cut anywhere).
pub fn classify_response<'a>(
    status: u16,
    headers: impl Fn(&str) -> Option<&'a str>,
    body_prefix: &[u8],
    now_ms: UnixMillis,
) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Success;
    }
    let text = String::from_utf8_lossy(body_prefix);
    let json: Option<Value> = serde_json::from_str(&text).ok();
    let signal = match &json {
        Some(v) => error_signal(v),
        None => text_signal(&text),
    };
    let hints = ResetHints::collect(&headers, json.as_ref(), now_ms);
    match signal {
        Some(Signal::Deactivated) => return Outcome::Deactivated,
        Some(Signal::Quota) => {
            return Outcome::QuotaExhausted {
                resets_at_ms: hints.quota_reset(),
            };
        }
        _ => {}
    }
    let cloudflare = non_empty(&headers, "cf-ray").is_some()
        || headers("server").is_some_and(|s| s.to_ascii_lowercase().contains("cloudflare"));
    let html = headers("content-type")
        .is_some_and(|c| c.to_ascii_lowercase().contains("text/html"))
        || text.trim_start().starts_with('<');
    if non_empty(&headers, "cf-mitigated").is_some()
        || ((400..500).contains(&status) && html)
        || (matches!(status, 401 | 403) && cloudflare && json.is_none())
    {
        return Outcome::Challenge;
    }
    match status {
        401 => Outcome::AuthFailed,
        402 => Outcome::QuotaExhausted {
            resets_at_ms: hints.quota_reset(),
        },
        403 => Outcome::Forbidden,
        429 => hints.rate_limited(),
        408 | 500..=599 => Outcome::Upstream5xx,
        _ => Outcome::ClientError,
    }
}

/// What one decoded event of a Responses stream means for stream preflight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEventClass {
    /// `response.created`, `response.in_progress`, `response.queued` and `codex.*` metadata:
    /// nothing the client needs yet, so it can be held while failover is still possible.
    Lifecycle,
    /// Output (or anything unknown): release what was held and stream on.
    Content,
    /// `response.completed` / `response.done`, or `response.incomplete` without an error.
    Terminal,
    /// `error`, `response.failed`, or a terminal event carrying an error.
    Failed(Outcome),
}

/// Classifies one decoded event of a Responses stream.
pub fn classify_stream_event(ev: &SseEvent, now_ms: UnixMillis) -> StreamEventClass {
    classify_stream_json(ev, ev.json().as_ref(), now_ms)
}

/// [`classify_stream_event`] for callers that already parsed the event's data.
pub fn classify_stream_json(
    ev: &SseEvent,
    json: Option<&Value>,
    now_ms: UnixMillis,
) -> StreamEventClass {
    let Some(ty) = event_type(ev, json) else {
        return StreamEventClass::Content;
    };
    match ty {
        "response.created" | "response.in_progress" | "response.queued" => {
            StreamEventClass::Lifecycle
        }
        t if t.starts_with("codex.") => StreamEventClass::Lifecycle,
        // Anthropic Messages streams (Anthropic-key accounts): the opening and keep-alives
        // carry no content; `message_stop` ends the stream.
        "message_start" | "ping" => StreamEventClass::Lifecycle,
        "message_stop" => StreamEventClass::Terminal,
        "error" | "response.failed" => StreamEventClass::Failed(stream_failure(json, now_ms)),
        "response.completed" | "response.done" | "response.incomplete" => {
            let failed = json
                .and_then(|v| v.get("response"))
                .is_some_and(|r| r.get("status").and_then(Value::as_str) == Some("failed"));
            if failed || json.and_then(stream_error_object).is_some() {
                StreamEventClass::Failed(stream_failure(json, now_ms))
            } else {
                StreamEventClass::Terminal
            }
        }
        _ => StreamEventClass::Content,
    }
}

/// The error object of a failure event: `error`, `response.error`,
/// `response.status_details.error`, or the event itself when it is `{type:"error",code,…}`.
pub fn stream_error_object(v: &Value) -> Option<&Value> {
    let response = v.get("response");
    [
        v.get("error"),
        response.and_then(|r| r.get("error")),
        response
            .and_then(|r| r.get("status_details"))
            .and_then(|d| d.get("error")),
    ]
    .into_iter()
    .flatten()
    .find(|e| !e.is_null())
    .or_else(|| {
        let is_error_event = v.get("type").and_then(Value::as_str) == Some("error");
        (is_error_event && (v.get("code").is_some() || v.get("message").is_some())).then_some(v)
    })
}

/// How a failure inside a stream is classified (an unknown failure counts as upstream
/// trouble: the request may well succeed on another account).
pub fn stream_failure(v: Option<&Value>, now_ms: UnixMillis) -> Outcome {
    let Some(err) = v.and_then(stream_error_object) else {
        return Outcome::Upstream5xx;
    };
    let hints = ResetHints::from_body(Some(err), now_ms);
    match error_signal(err) {
        Some(Signal::Deactivated) => Outcome::Deactivated,
        Some(Signal::Quota) => Outcome::QuotaExhausted {
            resets_at_ms: hints.quota_reset(),
        },
        Some(Signal::RateLimit) => hints.rate_limited(),
        Some(Signal::Auth) => Outcome::AuthFailed,
        Some(Signal::Invalid) => Outcome::ClientError,
        None => Outcome::Upstream5xx,
    }
}

/// A failure reported inside a stream, with what the client may be told about it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamFailure {
    pub outcome: Outcome,
    /// `error`, `response.failed`, `response.incomplete`, ...
    pub event_type: String,
    pub code: Option<String>,
    pub message: String,
}

impl StreamFailure {
    /// `code: message` (the event type when there is no code), for logs and reports.
    pub fn detail(&self) -> String {
        format!(
            "{}: {}",
            self.code.as_deref().unwrap_or(&self.event_type),
            self.message
        )
    }

    /// Builds the failure from a failure event's JSON (see [`stream_error_object`]).
    pub fn from_event(event_type: &str, v: Option<&Value>, now_ms: UnixMillis) -> Self {
        let err = v.and_then(stream_error_object);
        let field = |k: &str| {
            err.and_then(|e| e.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let incomplete_reason = v
            .and_then(|v| v.get("response"))
            .and_then(|r| r.get("incomplete_details"))
            .and_then(|d| d.get("reason"))
            .and_then(Value::as_str);
        StreamFailure {
            outcome: stream_failure(v, now_ms),
            event_type: event_type.to_string(),
            code: field("code").or_else(|| field("type")),
            message: field("message")
                .or_else(|| incomplete_reason.map(|r| format!("response incomplete: {r}")))
                .unwrap_or_else(|| format!("upstream reported {event_type}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Deactivated,
    Quota,
    RateLimit,
    Auth,
    Invalid,
}

const QUOTA_CODES: &[&str] = &[
    "usage_limit_reached",
    "usage_limit_exceeded",
    "insufficient_quota",
];
const QUOTA_PHRASES: &[&str] = &[
    // Anthropic: a prepaid organisation out of credits; other accounts may still serve.
    "credit balance is too low",
    "you've hit your usage limit",
    "you\u{2019}ve hit your usage limit",
    "the usage limit has been reached",
];
const DEACTIVATED_CODES: &[&str] = &["account_deactivated", "workspace_deactivated"];
const RATE_LIMIT_CODES: &[&str] = &[
    "rate_limit_exceeded",
    "rate_limit_error",
    "too_many_requests",
];
const AUTH_CODES: &[&str] = &[
    "authentication_error",
    "invalid_api_key",
    "token_expired",
    "unauthorized",
];
const INVALID_CODES: &[&str] = &[
    "invalid_request_error",
    "invalid_prompt",
    "context_length_exceeded",
    "bad_request",
    "invalid_value",
    "unsupported_parameter",
];

/// Reads the codes and message of a JSON error body (or error object) at the usual places.
fn error_signal(v: &Value) -> Option<Signal> {
    let err = v.get("error").filter(|e| e.is_object()).unwrap_or(v);
    let mut codes: Vec<String> = Vec::new();
    let mut messages: Vec<String> = Vec::new();
    for obj in [err, v] {
        for key in ["code", "type", "status"] {
            if let Some(s) = obj.get(key).and_then(Value::as_str) {
                codes.push(s.to_ascii_lowercase());
            }
        }
        for key in ["message", "detail"] {
            match obj.get(key) {
                Some(Value::String(s)) => messages.push(s.to_lowercase()),
                Some(Value::Object(d)) => {
                    if let Some(s) = d.get("code").and_then(Value::as_str) {
                        codes.push(s.to_ascii_lowercase());
                    }
                    if let Some(s) = d.get("message").and_then(Value::as_str) {
                        messages.push(s.to_lowercase());
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(Value::String(s)) = v.get("error") {
        codes.push(s.to_ascii_lowercase());
        messages.push(s.to_lowercase());
    }
    let has_code = |set: &[&str]| codes.iter().any(|c| set.contains(&c.as_str()));
    let has_phrase = |set: &[&str]| messages.iter().any(|m| set.iter().any(|p| m.contains(p)));
    if has_code(DEACTIVATED_CODES) || has_phrase(DEACTIVATED_CODES) {
        Some(Signal::Deactivated)
    } else if has_code(QUOTA_CODES) || has_phrase(QUOTA_PHRASES) {
        Some(Signal::Quota)
    } else if has_code(RATE_LIMIT_CODES) {
        Some(Signal::RateLimit)
    } else if has_code(AUTH_CODES) {
        Some(Signal::Auth)
    } else if has_code(INVALID_CODES) {
        Some(Signal::Invalid)
    } else {
        None
    }
}

/// For bodies cut mid-JSON (or not JSON): look for the same codes and phrases as text.
fn text_signal(text: &str) -> Option<Signal> {
    let lower = text.to_lowercase();
    if DEACTIVATED_CODES.iter().any(|c| lower.contains(c)) {
        Some(Signal::Deactivated)
    } else if QUOTA_CODES
        .iter()
        .chain(QUOTA_PHRASES)
        .any(|c| lower.contains(c))
    {
        Some(Signal::Quota)
    } else {
        None
    }
}

/// Reset hints from the body (`resets_at`, `resets_in_seconds`), Retry-After and the Codex
/// usage headers, all made absolute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ResetHints {
    body_resets_at_ms: Option<UnixMillis>,
    body_resets_in_secs: Option<u64>,
    retry_after_secs: Option<u64>,
    usage_reset_ms: Option<UnixMillis>,
    now_ms: UnixMillis,
}

impl ResetHints {
    fn from_body(err: Option<&Value>, now_ms: UnixMillis) -> Self {
        let mut hints = ResetHints {
            now_ms,
            ..ResetHints::default()
        };
        let Some(v) = err else { return hints };
        for obj in [v.get("error").unwrap_or(&Value::Null), v] {
            if hints.body_resets_at_ms.is_none() {
                hints.body_resets_at_ms =
                    obj.get("resets_at").and_then(as_secs).and_then(secs_to_ms);
            }
            if hints.body_resets_in_secs.is_none() {
                hints.body_resets_in_secs = obj.get("resets_in_seconds").and_then(as_secs);
            }
        }
        hints
    }

    fn collect<'a>(
        headers: &impl Fn(&str) -> Option<&'a str>,
        body: Option<&Value>,
        now_ms: UnixMillis,
    ) -> Self {
        let mut hints = ResetHints::from_body(body, now_ms);
        // Azure OpenAI also sends the finer `retry-after-ms`; it wins when present.
        hints.retry_after_secs = headers("retry-after-ms")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|ms| ms.div_ceil(1000))
            .or_else(|| headers("retry-after").and_then(|v| parse_retry_after(v, now_ms)));
        let usage = parse_codex_usage_headers(headers, now_ms);
        let windows = [usage.primary, usage.secondary];
        let exhausted = windows
            .iter()
            .flatten()
            .filter(|w| w.exhausted())
            .filter_map(|w| w.resets_at_ms)
            .max();
        hints.usage_reset_ms =
            exhausted.or_else(|| windows.iter().flatten().find_map(|w| w.resets_at_ms));
        hints
    }

    fn after(&self, secs: u64) -> UnixMillis {
        self.now_ms
            .saturating_add(i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX))
    }

    fn quota_reset(&self) -> Option<UnixMillis> {
        self.body_resets_at_ms
            .or_else(|| self.body_resets_in_secs.map(|s| self.after(s)))
            .or(self.usage_reset_ms)
            .or_else(|| self.retry_after_secs.map(|s| self.after(s)))
    }

    fn rate_limited(&self) -> Outcome {
        let retry_after_secs = self.retry_after_secs.or(self.body_resets_in_secs);
        let resets_at_ms = self
            .body_resets_at_ms
            .or_else(|| retry_after_secs.map(|s| self.after(s)));
        Outcome::RateLimited {
            retry_after_secs,
            resets_at_ms,
        }
    }
}

fn as_secs(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| {
            v.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f.ceil() as u64)
        })
        .or_else(|| v.as_str().and_then(|s| s.trim().parse::<u64>().ok()))
}

fn secs_to_ms(secs: u64) -> Option<UnixMillis> {
    i64::try_from(secs).ok()?.checked_mul(1000)
}

/// Retry-After as seconds from now: delay-seconds, or an IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`); a date in the past gives 0.
pub fn parse_retry_after(value: &str, now_ms: UnixMillis) -> Option<u64> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs);
    }
    let at = parse_http_date(v)?;
    let now_secs = now_ms.div_euclid(1000);
    Some(u64::try_from(at.saturating_sub(now_secs)).unwrap_or(0))
}

/// Unix seconds of an IMF-fixdate.
fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_weekday, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month =
        i64::try_from(MONTHS.iter().position(|m| m.eq_ignore_ascii_case(month))? + 1).ok()?;
    let day: i64 = day.parse().ok()?;
    let year: i64 = year.parse().ok()?;
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some()
        || !(1..=31).contains(&day)
        || !(1970..=9999).contains(&year)
        || !(0..24).contains(&h)
        || !(0..60).contains(&m)
        || !(0..=60).contains(&sec)
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The usage windows a Codex answer reports in its headers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CodexUsageHeaders {
    pub primary: Option<UsageWindow>,
    pub secondary: Option<UsageWindow>,
}

impl CodexUsageHeaders {
    pub fn is_empty(&self) -> bool {
        self.primary.is_none() && self.secondary.is_none()
    }
}

/// Reads `x-codex-{primary,secondary}-{used-percent,window-minutes,reset-at,
/// reset-after-seconds}`. A window needs its used percent; a missing length defaults to the
/// usual 5 hours (primary) and 7 days (secondary). `reset-at` (Unix seconds) wins over
/// `reset-after-seconds`.
pub fn parse_codex_usage_headers<'a>(
    headers: impl Fn(&str) -> Option<&'a str>,
    now_ms: UnixMillis,
) -> CodexUsageHeaders {
    let window = |which: &str, default_minutes: u32| -> Option<UsageWindow> {
        let get = |field: &str| non_empty(&headers, &format!("x-codex-{which}-{field}"));
        let used_percent = get("used-percent")?
            .parse::<f64>()
            .ok()
            .filter(|p| p.is_finite() && *p >= 0.0)?;
        let window_minutes = get("window-minutes")
            .and_then(|m| m.parse::<f64>().ok())
            .filter(|m| m.is_finite() && *m > 0.0 && *m <= f64::from(u32::MAX))
            .map_or(default_minutes, |m| m.ceil() as u32);
        let reset_at = get("reset-at")
            .and_then(|v| v.parse::<u64>().ok())
            .and_then(secs_to_ms);
        let reset_after = get("reset-after-seconds")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e12)
            .map(|s| now_ms.saturating_add((s * 1000.0) as i64));
        Some(UsageWindow {
            used_percent,
            window_minutes,
            resets_at_ms: reset_at.or(reset_after),
        })
    };
    CodexUsageHeaders {
        primary: window("primary", 300),
        secondary: window("secondary", 10_080),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599)
        );
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 25:49:37 GMT"), None);
        assert_eq!(parse_retry_after("120", 0), Some(120));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:37 GMT", 784_111_777_000),
            Some(60)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", 784_111_777_000),
            Some(0)
        );
        assert_eq!(parse_retry_after("soon", 0), None);
    }

    #[test]
    fn outcome_helpers() {
        assert!(!Outcome::Success.should_failover());
        assert!(!Outcome::ClientError.should_failover());
        assert!(Outcome::Forbidden.should_failover());
        assert_eq!(
            Outcome::Challenge.error_class(),
            Some(ErrorClass::RateLimited)
        );
        assert_eq!(
            Outcome::QuotaExhausted { resets_at_ms: None }.error_class(),
            Some(ErrorClass::QuotaExhausted)
        );
        assert_eq!(Outcome::Success.error_class(), None);
    }

    fn lookup<'a>(h: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
    }

    #[test]
    fn anthropic_answers() {
        let now = 1_000_000;
        let rl = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
        assert_eq!(
            classify_response(429, lookup(&[("retry-after", "7")]), rl, now),
            Outcome::RateLimited {
                retry_after_secs: Some(7),
                resets_at_ms: Some(now + 7000)
            }
        );
        let overloaded =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(
            classify_response(529, lookup(&[]), overloaded, now),
            Outcome::Upstream5xx
        );
        let auth = br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#;
        assert_eq!(
            classify_response(401, lookup(&[]), auth, now),
            Outcome::AuthFailed
        );
        let perm = br#"{"type":"error","error":{"type":"permission_error","message":"no"}}"#;
        assert_eq!(
            classify_response(403, lookup(&[]), perm, now),
            Outcome::Forbidden
        );
        let credits = br#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#;
        assert!(matches!(
            classify_response(400, lookup(&[]), credits, now),
            Outcome::QuotaExhausted { .. }
        ));
        let bad = br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#;
        assert_eq!(
            classify_response(400, lookup(&[]), bad, now),
            Outcome::ClientError
        );
    }

    #[test]
    fn azure_retry_after_ms_wins() {
        let body = br#"{"error":{"code":"429","message":"Requests to the ChatCompletions_Create Operation have exceeded call rate limit."}}"#;
        assert_eq!(
            classify_response(
                429,
                lookup(&[("retry-after", "60"), ("retry-after-ms", "1500")]),
                body,
                0
            ),
            Outcome::RateLimited {
                retry_after_secs: Some(2),
                resets_at_ms: Some(2000)
            }
        );
    }

    #[test]
    fn anthropic_stream_events() {
        let class = |name: &str, data: &str| {
            let ev = SseEvent::new(Some(name), data);
            classify_stream_event(&ev, 0)
        };
        assert_eq!(
            class("message_start", r#"{"type":"message_start","message":{}}"#),
            StreamEventClass::Lifecycle
        );
        assert_eq!(
            class("ping", r#"{"type":"ping"}"#),
            StreamEventClass::Lifecycle
        );
        assert_eq!(
            class(
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#
            ),
            StreamEventClass::Content
        );
        assert_eq!(
            class("message_stop", r#"{"type":"message_stop"}"#),
            StreamEventClass::Terminal
        );
        assert_eq!(
            class(
                "error",
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            StreamEventClass::Failed(Outcome::Upstream5xx)
        );
        assert!(matches!(
            class(
                "error",
                r#"{"type":"error","error":{"type":"rate_limit_error","message":"later"}}"#
            ),
            StreamEventClass::Failed(Outcome::RateLimited { .. })
        ));
    }
}
