//! The Codex usage endpoint (seed spec §5): `GET {usage base}/wham/usage` with the account's
//! access token and `ChatGPT-Account-Id`, parsed into a [`UsageSnapshot`].
//!
//! Parsing is lenient about what is missing and strict about types: a window without a
//! numeric `used_percent` is absent, a missing `secondary_window` is a valid single-window
//! (Free) account, and every `*_rate_limit` object and `additional_rate_limits[]` entry
//! becomes an [`ExtraLimit`]. No token ever appears in an error.

use std::time::Duration;

use futures::StreamExt;
use http::header::{ACCEPT, AUTHORIZATION, USER_AGENT};
use poolgate_core::{ExtraLimit, UsageSnapshot, UsageWindow};
use serde_json::Value;

use crate::error::chain;

/// The default usage base (seed spec §5.1); `/wham/usage` is appended.
pub const DEFAULT_USAGE_BASE_URL: &str = "https://chatgpt.com/backend-api";
/// Usage answers are small JSON documents.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Extra limits kept per account.
const MAX_EXTRA: usize = 32;

/// The usage URL of a base (seed spec §5.1): a `…/backend-api` base gets `/wham/usage`, a
/// bare ChatGPT origin gets `/backend-api/wham/usage`, any other base `/api/codex/usage`.
pub fn usage_url(base: &str) -> String {
    let base = base.trim().trim_end_matches('/');
    let base = if base.is_empty() {
        DEFAULT_USAGE_BASE_URL
    } else {
        base
    };
    if base.ends_with("/backend-api") {
        format!("{base}/wham/usage")
    } else if ["https://chatgpt.com", "https://chat.openai.com"]
        .iter()
        .any(|o| base.eq_ignore_ascii_case(o))
    {
        format!("{base}/backend-api/wham/usage")
    } else {
        format!("{base}/api/codex/usage")
    }
}

/// Why no usage came back. Never holds a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// 401, or a 403 that is not a region block: the access token was refused.
    #[error("the usage endpoint refused the access token (HTTP {status})")]
    Unauthorized { status: u16 },
    #[error("the usage endpoint refuses this region (HTTP {status})")]
    RegionBlocked { status: u16 },
    #[error("the account is deactivated (HTTP {status})")]
    Deactivated { status: u16 },
    /// 5xx, 429, network failures and timeouts: worth retrying with backoff.
    #[error("the usage endpoint is unavailable: {0}")]
    Transient(String),
    /// Any other status.
    #[error("usage endpoint status {status}")]
    Status { status: u16 },
    #[error("unreadable usage answer: {0}")]
    Parse(String),
    #[error("invalid usage configuration: {0}")]
    Config(String),
}

impl UsageError {
    /// A short label for metrics.
    pub fn class(&self) -> &'static str {
        match self {
            UsageError::Unauthorized { .. } => "unauthorized",
            UsageError::RegionBlocked { .. } => "region_blocked",
            UsageError::Deactivated { .. } => "deactivated",
            UsageError::Transient(_) => "transient",
            UsageError::Status { .. } => "status",
            UsageError::Parse(_) => "parse",
            UsageError::Config(_) => "config",
        }
    }
}

/// Fetches usage from one usage base.
#[derive(Clone)]
pub struct UsageClient {
    url: String,
    user_agent: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for UsageClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsageClient")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl UsageClient {
    /// A client for `{base}` (see [`usage_url`]) with a 15 s connect and 60 s total timeout.
    pub fn new(base: &str) -> Result<UsageClient, UsageError> {
        crate::oauth::check_base_url("the usage base URL", base)
            .map_err(|e| UsageError::Config(e.to_string()))?;
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(8)
            .tcp_nodelay(true)
            // A redirect would send the bearer elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                UsageError::Config(format!("cannot build the HTTP client: {}", chain(&e)))
            })?;
        Ok(UsageClient {
            url: usage_url(base),
            user_agent: crate::codex_user_agent(crate::DEFAULT_CODEX_VERSION),
            http,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The account's usage now.
    pub async fn fetch(
        &self,
        access_token: &str,
        chatgpt_account_id: Option<&str>,
    ) -> Result<UsageSnapshot, UsageError> {
        let bearer = crate::bearer(access_token).map_err(|_| {
            UsageError::Config("the access token cannot be sent in a header".into())
        })?;
        let mut req = self
            .http
            .get(&self.url)
            .header(AUTHORIZATION, bearer)
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, &self.user_agent)
            .header("originator", crate::CODEX_ORIGINATOR);
        if let Some(id) = chatgpt_account_id.filter(|i| !i.is_empty()) {
            req = req.header("chatgpt-account-id", id);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| UsageError::Transient(chain(&e.without_url())))?;
        let status = resp.status().as_u16();
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| UsageError::Transient(chain(&e.without_url())))?;
            if buf.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(UsageError::Parse(format!(
                    "the answer is larger than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        if (200..300).contains(&status) {
            return parse_usage(&buf, now_ms());
        }
        Err(classify_status(status, &buf))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What a non-success answer of the usage endpoint means.
pub fn classify_status(status: u16, body: &[u8]) -> UsageError {
    let text = String::from_utf8_lossy(&body[..body.len().min(4096)]);
    if text.contains("unsupported_country_region_territory") {
        return UsageError::RegionBlocked { status };
    }
    if text.contains("account_deactivated") || text.contains("workspace_deactivated") {
        return UsageError::Deactivated { status };
    }
    // A challenge page (Cloudflare answers 403 with HTML) says nothing about the token.
    let html = text.trim_start().starts_with('<');
    match status {
        401 => UsageError::Unauthorized { status },
        403 if !html => UsageError::Unauthorized { status },
        408 | 429 | 500..=599 => UsageError::Transient(format!("HTTP {status}")),
        _ => UsageError::Status { status },
    }
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key)
        .and_then(|x| x.as_f64().or_else(|| x.as_str()?.trim().parse().ok()))
        .filter(|x| x.is_finite())
}

/// One window, or `None` without a numeric `used_percent`. `default_minutes` stands in for a
/// missing length (5 h for a primary window, 7 d for a secondary one).
fn window(v: Option<&Value>, default_minutes: u32, now_ms: i64) -> Option<UsageWindow> {
    let v = v.filter(|v| v.is_object())?;
    let used = num(v, "used_percent")?;
    let window_minutes = num(v, "limit_window_seconds")
        .filter(|s| *s > 0.0)
        // Ceil-divided, as the seed does: 18000 s → 300, 604800 s → 10080.
        .map(|s| (s / 60.0).ceil().min(f64::from(366 * 24 * 60)) as u32)
        .unwrap_or(default_minutes);
    let resets_at_ms = num(v, "reset_at")
        .filter(|s| *s > 0.0)
        .map(|s| (s * 1000.0).min(i64::MAX as f64) as i64)
        .or_else(|| {
            num(v, "reset_after_seconds")
                .filter(|s| *s >= 0.0)
                .map(|s| now_ms.saturating_add((s * 1000.0).min(1e15) as i64))
        });
    Some(UsageWindow {
        used_percent: used.clamp(0.0, 1000.0),
        window_minutes,
        resets_at_ms,
    })
}

/// The two windows of a rate-limit object (`{primary_window, secondary_window}`).
fn windows(rl: Option<&Value>, now_ms: i64) -> (Option<UsageWindow>, Option<UsageWindow>) {
    match rl {
        Some(rl) => (
            window(rl.get("primary_window"), 300, now_ms),
            window(rl.get("secondary_window"), 7 * 24 * 60, now_ms),
        ),
        None => (None, None),
    }
}

fn extra(name: &str, entry: &Value, now_ms: i64) -> Option<ExtraLimit> {
    // Windows sit on the entry itself or under its `rate_limit`.
    let rl = match entry.get("rate_limit") {
        Some(r) if r.is_object() => r,
        _ => entry,
    };
    let (primary, secondary) = windows(Some(rl), now_ms);
    let reached = [entry, rl]
        .iter()
        .any(|v| v.get("limit_reached").and_then(Value::as_bool) == Some(true))
        || [entry, rl]
            .iter()
            .any(|v| v.get("allowed").and_then(Value::as_bool) == Some(false))
        || primary
            .iter()
            .chain(secondary.iter())
            .any(UsageWindow::exhausted);
    if primary.is_none() && secondary.is_none() && !reached {
        return None;
    }
    let name: String = name.chars().filter(|c| !c.is_control()).take(128).collect();
    Some(ExtraLimit {
        name,
        primary,
        secondary,
        limit_reached: reached,
    })
}

/// Parses a `wham/usage` answer (seed spec §5.2).
pub fn parse_usage(body: &[u8], now_ms: i64) -> Result<UsageSnapshot, UsageError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| UsageError::Parse(format!("not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| UsageError::Parse("not a JSON object".into()))?;
    let (primary, secondary) = windows(obj.get("rate_limit"), now_ms);
    let mut extra_limits = Vec::new();
    // Every top-level `*_rate_limit` object (e.g. `code_review_rate_limit`).
    for (k, val) in obj {
        if let Some(name) = k.strip_suffix("_rate_limit")
            && val.is_object()
            && let Some(x) = extra(name, val, now_ms)
        {
            extra_limits.push(x);
        }
    }
    if let Some(list) = obj.get("additional_rate_limits").and_then(Value::as_array) {
        for entry in list.iter().filter(|e| e.is_object()) {
            let name = ["limit_name", "metered_feature", "limit_id"]
                .iter()
                .find_map(|k| {
                    entry
                        .get(*k)
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                })
                .unwrap_or("additional");
            if let Some(x) = extra(name, entry, now_ms) {
                extra_limits.push(x);
            }
        }
    }
    extra_limits.truncate(MAX_EXTRA);
    Ok(UsageSnapshot {
        primary,
        secondary,
        extra: extra_limits,
        captured_at_ms: now_ms,
    })
}

#[cfg(test)]
mod tests {
    use poolgate_core::Availability;
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn parse(v: Value) -> UsageSnapshot {
        parse_usage(v.to_string().as_bytes(), NOW).unwrap()
    }

    #[test]
    fn urls_follow_the_base() {
        assert_eq!(
            usage_url("https://chatgpt.com/backend-api/"),
            "https://chatgpt.com/backend-api/wham/usage"
        );
        assert_eq!(
            usage_url("https://chatgpt.com"),
            "https://chatgpt.com/backend-api/wham/usage"
        );
        assert_eq!(
            usage_url("http://127.0.0.1:9/proxy"),
            "http://127.0.0.1:9/proxy/api/codex/usage"
        );
        assert_eq!(usage_url(""), "https://chatgpt.com/backend-api/wham/usage");
    }

    #[test]
    fn two_windows() {
        let s = parse(json!({
            "plan_type": "plus",
            "rate_limit": {
                "allowed": true, "limit_reached": false,
                "primary_window": {"used_percent": 42.5, "limit_window_seconds": 18000,
                                   "reset_after_seconds": 100, "reset_at": 1_700_000_100},
                "secondary_window": {"used_percent": 7, "limit_window_seconds": 604800,
                                     "reset_at": 1_700_500_000}
            },
            "credits": {"has_credits": false}
        }));
        let p = s.primary.unwrap();
        assert_eq!((p.used_percent, p.window_minutes), (42.5, 300));
        assert_eq!(p.resets_at_ms, Some(1_700_000_100_000));
        let w = s.secondary.unwrap();
        assert_eq!((w.used_percent, w.window_minutes), (7.0, 10_080));
        assert_eq!(s.availability(), Availability::Available);
        assert_eq!(s.five_hour().unwrap().used_percent, 42.5);
        assert_eq!(s.weekly().unwrap().used_percent, 7.0);
        assert!(s.extra.is_empty());
        assert_eq!(s.captured_at_ms, NOW);
    }

    #[test]
    fn a_single_weekly_window_is_a_valid_account() {
        let s = parse(json!({
            "plan_type": "free",
            "rate_limit": {
                "primary_window": {"used_percent": 12, "limit_window_seconds": 604800,
                                   "reset_after_seconds": 3600},
                "secondary_window": null
            }
        }));
        assert!(s.secondary.is_none());
        let p = s.primary.unwrap();
        assert!(p.is_weekly());
        assert_eq!(p.resets_at_ms, Some(NOW + 3_600_000));
        assert_eq!(s.availability(), Availability::PrimaryWindowAvailableOnly);
        assert!(s.availability().is_routable());
        assert!(s.five_hour().is_none());
        assert_eq!(s.weekly().unwrap().used_percent, 12.0);
    }

    #[test]
    fn extra_limits_both_shapes() {
        let s = parse(json!({
            "rate_limit": {"primary_window": {"used_percent": 1, "limit_window_seconds": 18000}},
            "code_review_rate_limit": {
                "allowed": true, "limit_reached": false,
                "primary_window": {"used_percent": 30, "limit_window_seconds": 604800}
            },
            "additional_rate_limits": [
                {"limit_name": "Spark", "metered_feature": "codex_spark",
                 "rate_limit": {"allowed": false, "limit_reached": true,
                                "primary_window": {"used_percent": 100, "limit_window_seconds": 18000, "reset_at": 1_700_000_500}}},
                {"limit_id": "lim-2", "limit_reached": false,
                 "primary_window": {"used_percent": 5}},
                {"limit_name": "empty"},
                "junk"
            ]
        }));
        let names: Vec<&str> = s.extra.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["code_review", "Spark", "lim-2"]);
        assert_eq!(s.extra[0].primary.unwrap().window_minutes, 10_080);
        assert!(!s.extra[0].limit_reached);
        assert!(s.extra[1].limit_reached);
        assert_eq!(
            s.extra[1].primary.unwrap().resets_at_ms,
            Some(1_700_000_500_000)
        );
        assert_eq!(s.extra[2].primary.unwrap().window_minutes, 300);
        // An exhausted extra limit does not make the account unavailable.
        assert_eq!(s.availability(), Availability::PrimaryWindowAvailableOnly);
    }

    #[test]
    fn missing_and_odd_fields() {
        // No rate_limit at all: nothing known (routable).
        let s = parse(json!({"plan_type": "plus"}));
        assert_eq!((s.primary, s.secondary), (None, None));
        assert_eq!(s.availability(), Availability::Unknown);
        // A window without used_percent is absent; missing lengths default by position;
        // numbers as strings are read; negative resets ignored.
        let s = parse(json!({"rate_limit": {
            "primary_window": {"limit_window_seconds": 18000},
            "secondary_window": {"used_percent": "55.5", "reset_at": -1}
        }}));
        assert!(s.primary.is_none());
        let w = s.secondary.unwrap();
        assert_eq!(
            (w.used_percent, w.window_minutes, w.resets_at_ms),
            (55.5, 10_080, None)
        );
        assert_eq!(s.availability(), Availability::Unknown);
        // Exhausted.
        let s = parse(json!({"rate_limit": {
            "primary_window": {"used_percent": 100, "limit_window_seconds": 18000},
            "secondary_window": {"used_percent": 10, "limit_window_seconds": 604800}
        }}));
        assert_eq!(s.availability(), Availability::Unavailable);
        // Garbage.
        assert!(parse_usage(b"nope", NOW).is_err());
        assert!(parse_usage(b"[1]", NOW).is_err());
        assert!(parse_usage(b"{\"rate_limit\": 5}", NOW).is_ok());
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify_status(401, b"").class(), "unauthorized");
        assert_eq!(classify_status(403, b"{}").class(), "unauthorized");
        assert_eq!(
            classify_status(
                403,
                br#"{"error":{"code":"unsupported_country_region_territory"}}"#
            )
            .class(),
            "region_blocked"
        );
        assert_eq!(
            classify_status(401, br#"{"error":{"code":"account_deactivated"}}"#).class(),
            "deactivated"
        );
        assert_eq!(
            classify_status(403, b"<!DOCTYPE html><title>Just a moment...</title>").class(),
            "status"
        );
        assert_eq!(classify_status(503, b"").class(), "transient");
        assert_eq!(classify_status(429, b"").class(), "transient");
        assert_eq!(classify_status(404, b"").class(), "status");
    }
}
