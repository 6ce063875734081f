//! The OAuth refresh call (seed spec §4.1) with classified failures.
//!
//! `POST {issuer}/oauth/token`, form-encoded `grant_type=refresh_token&refresh_token&client_id
//! &scope=openid profile email`. Refresh tokens rotate and are single-use, so what a failure
//! means decides what the caller may do next:
//!
//! - [`RefreshFailure::Permanent`]: the refresh token is dead (`refresh_token_reused`,
//!   `refresh_token_expired`, `refresh_token_invalidated`, `invalid_grant`); only a new login
//!   helps.
//! - [`RefreshFailure::RegionBlocked`]: 403 `unsupported_country_region_territory`; retrying
//!   from here burns tokens (seed issue #257), so the caller pauses.
//! - [`RefreshFailure::Transient`]: 5xx, 429, network, timeouts; retry with backoff.
//! - [`RefreshFailure::Rejected`]: any other refusal; retry much later.
//!
//! No token ever appears in an error: messages carry the HTTP status and the issuer's error
//! code (filtered to a short identifier), never its free text or the request.

use std::time::Duration;

use futures::StreamExt;
use http::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use poolgate_core::{OAuthTokens, Secret};
use serde_json::Value;

use crate::error::chain;
use crate::oauth::encode_component;

/// The scope a refresh asks for (seed spec §4.1).
pub const REFRESH_SCOPE: &str = "openid profile email";
/// Token answers are small JSON documents.
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// OAuth error codes meaning the refresh token itself is dead.
const PERMANENT_CODES: &[&str] = &[
    "refresh_token_reused",
    "refresh_token_expired",
    "refresh_token_invalidated",
    "invalid_grant",
];
/// The issuer's answer to a request from a region it does not serve.
pub const REGION_BLOCKED_CODE: &str = "unsupported_country_region_territory";

/// Why a refresh produced no tokens. Never holds a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefreshFailure {
    #[error("the refresh token is no longer valid (HTTP {status}, {code}); a new login is needed")]
    Permanent { status: u16, code: String },
    #[error("the OAuth issuer refuses this region (HTTP {status}, {code})")]
    RegionBlocked { status: u16, code: String },
    #[error("the OAuth issuer is unavailable: {0}")]
    Transient(String),
    #[error("the OAuth issuer refused the refresh (HTTP {status}, {code})")]
    Rejected { status: u16, code: String },
    #[error("invalid refresh configuration: {0}")]
    Config(String),
}

impl RefreshFailure {
    /// A short label for metrics and audit (`permanent`, `region_blocked`, …).
    pub fn class(&self) -> &'static str {
        match self {
            RefreshFailure::Permanent { .. } => "permanent",
            RefreshFailure::RegionBlocked { .. } => "region_blocked",
            RefreshFailure::Transient(_) => "transient",
            RefreshFailure::Rejected { .. } => "rejected",
            RefreshFailure::Config(_) => "config",
        }
    }
}

/// Where refreshes go and who we are to the issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshConfig {
    /// `https://auth.openai.com` (the token endpoint is `{issuer}/oauth/token`).
    pub issuer: String,
    pub client_id: String,
    pub connect_timeout: Duration,
    /// Deadline of the whole call; a refresh claim must outlive it.
    pub request_timeout: Duration,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        RefreshConfig {
            issuer: crate::oauth::DEFAULT_ISSUER.into(),
            client_id: crate::oauth::DEFAULT_CLIENT_ID.into(),
            connect_timeout: Duration::from_secs(15),
            request_timeout: Duration::from_secs(60),
        }
    }
}

impl RefreshConfig {
    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.issuer.trim().trim_end_matches('/'))
    }
}

/// Sends refresh requests to one issuer.
#[derive(Clone)]
pub struct TokenRefresher {
    cfg: RefreshConfig,
    http: reqwest::Client,
}

impl std::fmt::Debug for TokenRefresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRefresher")
            .field("issuer", &self.cfg.issuer)
            .finish_non_exhaustive()
    }
}

impl TokenRefresher {
    pub fn new(cfg: RefreshConfig) -> Result<TokenRefresher, RefreshFailure> {
        crate::oauth::check_base_url("the OAuth issuer", &cfg.issuer)
            .map_err(|e| RefreshFailure::Config(e.to_string()))?;
        if cfg.client_id.trim().is_empty() || !cfg.client_id.chars().all(|c| c.is_ascii_graphic()) {
            return Err(RefreshFailure::Config(
                "the OAuth client id must be printable ASCII".into(),
            ));
        }
        let http = crate::credential_client(cfg.connect_timeout, cfg.request_timeout)
            .map_err(RefreshFailure::Config)?;
        Ok(TokenRefresher { cfg, http })
    }

    pub fn config(&self) -> &RefreshConfig {
        &self.cfg
    }

    /// Exchanges `current.refresh_token` for new tokens. What the answer omits (a refresh or
    /// id token) is kept from `current`.
    pub async fn refresh(&self, current: &OAuthTokens) -> Result<OAuthTokens, RefreshFailure> {
        if current.refresh_token.is_empty() {
            return Err(RefreshFailure::Config(
                "the login has no refresh token".into(),
            ));
        }
        let body = format!(
            "grant_type=refresh_token&refresh_token={}&client_id={}&scope={}",
            encode_component(current.refresh_token.expose()),
            encode_component(&self.cfg.client_id),
            encode_component(REFRESH_SCOPE),
        );
        let resp = self
            .http
            .post(self.cfg.token_url())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("poolgate/", env!("CARGO_PKG_VERSION")))
            .body(body)
            .send()
            .await
            // Transport errors never echo the request body; the URL is dropped anyway.
            .map_err(|e| RefreshFailure::Transient(chain(&e.without_url())))?;
        let status = resp.status().as_u16();
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| RefreshFailure::Transient(chain(&e.without_url())))?;
            if buf.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(RefreshFailure::Transient(format!(
                    "HTTP {status}: the answer is larger than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        let body: Value = serde_json::from_slice(&buf).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return tokens_from(&body, current, now_ms());
        }
        Err(classify(status, &body))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Keeps an issuer error code printable and short: it ends up in logs and audit events.
fn clean_code(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect()
}

/// The OAuth error code of an answer: `{"error": "code"}` or `{"error": {"code": …}}`.
fn error_code(body: &Value) -> Option<String> {
    match body.get("error") {
        Some(Value::String(code)) => Some(code.clone()),
        Some(obj @ Value::Object(_)) => text(obj, "code")
            .or_else(|| text(obj, "type"))
            .map(str::to_string),
        _ => None,
    }
    .map(|c| clean_code(&c))
    .filter(|c| !c.is_empty())
}

/// What a non-success answer of the token endpoint means (see the module docs).
pub fn classify(status: u16, body: &Value) -> RefreshFailure {
    let code = error_code(body);
    let region = code.as_deref() == Some(REGION_BLOCKED_CODE)
        || body
            .get("error")
            .and_then(|e| text(e, "message"))
            .is_some_and(|m| m.contains(REGION_BLOCKED_CODE));
    let code_or = |fallback: &str| code.clone().unwrap_or_else(|| fallback.to_string());
    if status == 403 && region {
        return RefreshFailure::RegionBlocked {
            status,
            code: REGION_BLOCKED_CODE.into(),
        };
    }
    if status >= 500 || status == 429 || status == 408 {
        return RefreshFailure::Transient(format!("HTTP {status} ({})", code_or("no error code")));
    }
    match code {
        Some(c) if PERMANENT_CODES.contains(&c.as_str()) => {
            RefreshFailure::Permanent { status, code: c }
        }
        _ => RefreshFailure::Rejected {
            status,
            code: code_or("no error code"),
        },
    }
}

/// The tokens of a successful answer; what it omits is kept from `current`.
fn tokens_from(
    body: &Value,
    current: &OAuthTokens,
    now_ms: i64,
) -> Result<OAuthTokens, RefreshFailure> {
    let Some(access) = text(body, "access_token") else {
        // Odd but not a verdict on the refresh token; the rotation may still have happened,
        // which the next attempt's answer will tell.
        return Err(RefreshFailure::Transient(
            "the token answer has no access_token".into(),
        ));
    };
    let exp = poolgate_core::jwt::openai_claims(access)
        .ok()
        .and_then(|c| c.exp)
        .map(|s| s.saturating_mul(1000))
        .or_else(|| {
            body.get("expires_in")
                .and_then(Value::as_i64)
                .map(|s| now_ms.saturating_add(s.saturating_mul(1000)))
        });
    let keep = |key: &str, old: &Secret| text(body, key).map_or_else(|| old.clone(), Secret::new);
    Ok(OAuthTokens {
        id_token: keep("id_token", &current.id_token),
        access_token: Secret::new(access),
        refresh_token: keep("refresh_token", &current.refresh_token),
        expires_at_ms: exp,
        last_refresh_ms: Some(now_ms),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn tokens() -> OAuthTokens {
        OAuthTokens {
            id_token: Secret::new("id-old"),
            access_token: Secret::new("access-old"),
            refresh_token: Secret::new("rt-old-SECRET"),
            expires_at_ms: Some(1),
            last_refresh_ms: None,
        }
    }

    #[test]
    fn classifies_the_issuers_refusals() {
        for (status, body, class) in [
            (
                401,
                json!({"error": {"code": "refresh_token_reused", "message": "already used"}}),
                "permanent",
            ),
            (
                401,
                json!({"error": {"code": "refresh_token_expired"}}),
                "permanent",
            ),
            (
                401,
                json!({"error": {"code": "refresh_token_invalidated"}}),
                "permanent",
            ),
            (
                400,
                json!({"error": "invalid_grant", "error_description": "bad"}),
                "permanent",
            ),
            (
                403,
                json!({"error": {"code": "unsupported_country_region_territory"}}),
                "region_blocked",
            ),
            (
                403,
                json!({"error": {"message": "unsupported_country_region_territory: no"}}),
                "region_blocked",
            ),
            (
                502,
                json!({"error": {"code": "invalid_grant"}}),
                "transient",
            ),
            (429, Value::Null, "transient"),
            (400, json!({"error": "invalid_request"}), "rejected"),
            (403, Value::Null, "rejected"),
        ] {
            assert_eq!(classify(status, &body).class(), class, "{status} {body}");
        }
        // Codes are filtered to identifier characters before they reach logs.
        let e = classify(
            401,
            &json!({"error": {"code": "refresh_token_reused\n<b>"}}),
        );
        assert_eq!(
            e,
            RefreshFailure::Rejected {
                status: 401,
                code: "refresh_token_reusedb".into()
            }
        );
    }

    #[test]
    fn answers_replace_what_they_carry() {
        let exp = 1_900_000_000;
        let access = poolgate_core::jwt::unsigned(&json!({"exp": exp}));
        let t = tokens_from(
            &json!({"access_token": access, "refresh_token": "rt-new"}),
            &tokens(),
            5,
        )
        .unwrap();
        assert_eq!(t.access_token.expose(), access);
        assert_eq!(t.refresh_token.expose(), "rt-new");
        assert_eq!(
            t.id_token.expose(),
            "id-old",
            "kept when the answer omits it"
        );
        assert_eq!(t.expires_at_ms, Some(exp * 1000));
        assert_eq!(t.last_refresh_ms, Some(5));
        let t = tokens_from(
            &json!({"access_token": "opaque", "expires_in": 60}),
            &tokens(),
            1000,
        )
        .unwrap();
        assert_eq!(t.expires_at_ms, Some(61_000));
        assert_eq!(t.refresh_token.expose(), "rt-old-SECRET");
        assert_eq!(
            tokens_from(&json!({}), &tokens(), 0).unwrap_err().class(),
            "transient"
        );
    }

    #[test]
    fn errors_never_show_tokens() {
        let e = classify(
            401,
            &json!({"error": {"code": "refresh_token_reused", "message": "rt-old-SECRET"}}),
        );
        assert!(!e.to_string().contains("SECRET"));
        assert!(!format!("{e:?}").contains("SECRET"));
    }
}
