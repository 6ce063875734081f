//! OAuth login with the ChatGPT issuer (seed spec §3.1): PKCE, the authorize URL, the
//! authorization-code exchange and the device-code flow.
//!
//! Secrets (verifiers, codes, device ids, tokens) travel as [`Secret`] and never appear in an
//! error: issuer messages are scrubbed of every secret the request carried before they are
//! kept, and transport errors are stripped of URLs.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use http::StatusCode;
use http::header::{ACCEPT, CONTENT_TYPE, USER_AGENT};
use poolgate_core::{OAuthTokens, Secret};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::chain;

pub const DEFAULT_ISSUER: &str = "https://auth.openai.com";
/// The Codex CLI's public client id.
pub const DEFAULT_CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";
pub const DEFAULT_ORIGINATOR: &str = "codex_cli_rs";
/// Where the issuer sends the browser back; the Codex CLI's own callback address.
pub const DEFAULT_REDIRECT_URI: &str = "http://localhost:1455/auth/callback";
pub const SCOPE: &str = "openid profile email offline_access";
/// RFC 8628 §3.5: each `slow_down` adds this much to the polling interval.
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Issuer answers are small JSON documents; anything bigger is refused.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Issuer text kept in errors is cut to this many characters.
const MAX_DESCRIPTION_CHARS: usize = 300;
/// Consecutive transport failures tolerated while polling for a device login.
const MAX_POLL_FAILURES: u32 = 5;

/// Where the issuer is and who we are to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConfig {
    /// Base URL, e.g. `https://auth.openai.com` (no trailing path needed).
    pub issuer: String,
    pub client_id: String,
    /// The `originator` authorize parameter.
    pub originator: String,
    pub connect_timeout: Duration,
    /// Whole-request deadline for each call to the issuer.
    pub request_timeout: Duration,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            issuer: DEFAULT_ISSUER.into(),
            client_id: DEFAULT_CLIENT_ID.into(),
            originator: DEFAULT_ORIGINATOR.into(),
            connect_timeout: Duration::from_secs(15),
            request_timeout: Duration::from_secs(60),
        }
    }
}

impl OAuthConfig {
    /// Checks the issuer URL and the client id.
    pub fn validate(&self) -> Result<(), OAuthError> {
        check_base_url("the OAuth issuer", &self.issuer)?;
        let id = self.client_id.trim();
        if id.is_empty() || id.len() > 256 || !id.chars().all(|c| c.is_ascii_graphic()) {
            return Err(OAuthError::Config(
                "the OAuth client id must be 1 to 256 printable ASCII characters".into(),
            ));
        }
        if self.originator.is_empty() || !self.originator.chars().all(|c| c.is_ascii_graphic()) {
            return Err(OAuthError::Config(
                "the OAuth originator must be printable ASCII".into(),
            ));
        }
        Ok(())
    }

    fn base(&self) -> &str {
        self.issuer.trim().trim_end_matches('/')
    }

    pub fn authorize_endpoint(&self) -> String {
        format!("{}/oauth/authorize", self.base())
    }

    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.base())
    }

    pub fn device_usercode_url(&self) -> String {
        format!("{}/api/accounts/deviceauth/usercode", self.base())
    }

    pub fn device_token_url(&self) -> String {
        format!("{}/api/accounts/deviceauth/token", self.base())
    }

    /// Where a person enters the user code.
    pub fn device_verification_url(&self) -> String {
        format!("{}/codex/device", self.base())
    }

    /// The redirect URI a device login's code is exchanged with.
    pub fn device_redirect_uri(&self) -> String {
        format!("{}/deviceauth/callback", self.base())
    }
}

/// Checks that `url` is an absolute http(s) URL without query or fragment.
pub fn check_base_url(what: &str, url: &str) -> Result<(), OAuthError> {
    let u = url.trim();
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"));
    let ok = match rest {
        Some(r) => {
            let host = r.split('/').next().unwrap_or_default();
            !host.is_empty()
                && !u.contains(['?', '#'])
                && !u.chars().any(|c| c.is_whitespace() || c.is_control())
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(OAuthError::Config(format!(
            "{what} must be an absolute http:// or https:// URL without query, got {u:?}"
        )))
    }
}

/// Checks a redirect URI: an absolute http(s) URL with a path, no fragment.
pub fn check_redirect_uri(url: &str) -> Result<(), OAuthError> {
    check_base_url("the OAuth redirect URI", url)
}

/// A PKCE pair (RFC 7636, S256): the verifier stays with whoever exchanges the code.
#[derive(Clone)]
pub struct Pkce {
    verifier: Secret,
    challenge: String,
}

impl fmt::Debug for Pkce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkce")
            .field("challenge", &self.challenge)
            .finish_non_exhaustive()
    }
}

fn random_b64(bytes: usize) -> Result<String, OAuthError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| OAuthError::Random(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

/// `base64url(SHA-256(verifier))`, no padding.
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl Pkce {
    /// A verifier of 64 random bytes (86 characters, within RFC 7636's 43–128).
    pub fn generate() -> Result<Pkce, OAuthError> {
        Ok(Pkce::from_verifier(random_b64(64)?))
    }

    pub fn from_verifier(verifier: impl Into<String>) -> Pkce {
        let verifier = verifier.into();
        let challenge = s256_challenge(&verifier);
        Pkce {
            verifier: Secret::new(verifier),
            challenge,
        }
    }

    pub fn verifier(&self) -> &Secret {
        &self.verifier
    }

    pub fn challenge(&self) -> &str {
        &self.challenge
    }
}

/// A fresh `state`: 32 random bytes, base64url.
pub fn random_state() -> Result<String, OAuthError> {
    random_b64(32)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space; a malformed
/// escape stays as it is).
pub fn decode_component(s: &str) -> String {
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

fn form(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The browser's first stop (seed spec §3.1 step 6).
pub fn authorize_url(
    cfg: &OAuthConfig,
    redirect_uri: &str,
    challenge: &str,
    state: &str,
    allowed_workspace_id: Option<&str>,
) -> String {
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", cfg.client_id.as_str()),
        ("redirect_uri", redirect_uri),
        ("scope", SCOPE),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("id_token_add_organizations", "true"),
        ("codex_cli_simplified_flow", "true"),
        ("state", state),
        ("originator", cfg.originator.as_str()),
    ];
    if let Some(ws) = allowed_workspace_id.filter(|w| !w.is_empty()) {
        pairs.push(("allowed_workspace_id", ws));
    }
    format!("{}?{}", cfg.authorize_endpoint(), form(&pairs))
}

/// What the issuer's redirect carried.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CallbackParams {
    pub code: Option<Secret>,
    pub state: Option<String>,
    /// An OAuth error code (`access_denied`, …) instead of a code.
    pub error: Option<String>,
    pub error_description: Option<String>,
}

impl fmt::Debug for CallbackParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallbackParams")
            .field("has_code", &self.code.is_some())
            .field("has_state", &self.state.is_some())
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Longest callback URL accepted (real ones are well under 2 KiB).
pub const MAX_CALLBACK_BYTES: usize = 16 * 1024;

/// Reads `code`, `state` and `error` from a pasted redirect URL: a full URL with or without
/// scheme, a path with a query, or the bare query.
pub fn parse_callback(input: &str) -> Result<CallbackParams, OAuthError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(OAuthError::Callback("the callback URL is empty".into()));
    }
    if s.len() > MAX_CALLBACK_BYTES {
        return Err(OAuthError::Callback(format!(
            "the callback URL is longer than {MAX_CALLBACK_BYTES} bytes"
        )));
    }
    let without_fragment = s.split('#').next().unwrap_or_default();
    let query = match without_fragment.split_once('?') {
        Some((_, q)) => q,
        None if without_fragment.contains('=') && !without_fragment.contains('/') => {
            without_fragment
        }
        None => {
            return Err(OAuthError::Callback(
                "the callback URL has no query: paste the whole address the browser shows \
                 after the login (…/auth/callback?code=…&state=…)"
                    .into(),
            ));
        }
    };
    let mut p = CallbackParams::default();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = decode_component(v);
        if v.is_empty() {
            continue;
        }
        match decode_component(k).as_str() {
            "code" => p.code = Some(Secret::new(v)),
            "state" => p.state = Some(v),
            "error" => p.error = Some(clean_code(&v)),
            "error_description" => p.error_description = Some(clip(&v)),
            _ => {}
        }
    }
    Ok(p)
}

/// Keeps an OAuth error code readable and harmless: `[A-Za-z0-9_.-]`, at most 64 chars.
fn clean_code(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect()
}

fn clip(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_DESCRIPTION_CHARS)
        .collect()
}

/// Removes every secret from issuer text before it is kept in an error.
fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = clip(text);
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s, "***");
    }
    out
}

/// A started device login (seed spec §3.1, device code flow).
#[derive(Clone)]
pub struct DeviceCode {
    /// Identifies the login when polling; kept secret like a code.
    pub device_auth_id: Secret,
    /// What the person types at [`DeviceCode::verification_url`].
    pub user_code: String,
    pub verification_url: String,
    pub interval: Duration,
}

impl fmt::Debug for DeviceCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCode")
            .field("user_code", &self.user_code)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// The answer to one poll of a device login.
#[derive(Debug)]
pub enum DevicePoll {
    /// Not approved yet.
    Pending,
    /// Polled too fast: wait [`SLOW_DOWN_STEP`] longer from now on.
    SlowDown,
    /// Approved: exchange this code (with its verifier) for tokens.
    Authorized { code: Secret, verifier: Secret },
}

#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("invalid OAuth configuration: {0}")]
    Config(String),
    #[error("no randomness available: {0}")]
    Random(String),
    #[error("invalid callback: {0}")]
    Callback(String),
    #[error("cannot reach the OAuth issuer: {0}")]
    Transport(String),
    /// The issuer refused the request with an OAuth error code.
    #[error("the OAuth issuer refused the request (HTTP {status}, {code}){}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Rejected {
        status: u16,
        code: String,
        description: Option<String>,
    },
    /// Any other non-success answer.
    #[error("the OAuth issuer answered HTTP {status}")]
    Status { status: u16 },
    #[error("unexpected answer from the OAuth issuer: {0}")]
    Response(String),
    #[error("device-code login is not enabled at the OAuth issuer")]
    DeviceNotEnabled,
    #[error("the device code expired before the login was approved")]
    DeviceExpired,
    #[error("the device login was denied at the OAuth issuer")]
    DeviceDenied,
}

impl OAuthError {
    /// The issuer refused the code itself (used, expired, wrong verifier or redirect).
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, OAuthError::Rejected { code, .. } if code == "invalid_grant")
    }

    /// The issuer could not be reached or failed; trying again later may work.
    pub fn is_transient(&self) -> bool {
        match self {
            OAuthError::Transport(_) => true,
            OAuthError::Status { status } => *status >= 500 || *status == 429,
            OAuthError::Rejected { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// Talks to one issuer.
#[derive(Clone)]
pub struct OAuthClient {
    cfg: OAuthConfig,
    http: reqwest::Client,
}

impl fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClient")
            .field("issuer", &self.cfg.issuer)
            .finish_non_exhaustive()
    }
}

/// A decoded issuer answer.
struct Answer {
    status: StatusCode,
    body: Value,
}

impl OAuthClient {
    pub fn new(cfg: OAuthConfig) -> Result<OAuthClient, OAuthError> {
        cfg.validate()?;
        let http = crate::credential_client(cfg.connect_timeout, cfg.request_timeout)
            .map_err(OAuthError::Config)?;
        Ok(OAuthClient { cfg, http })
    }

    pub fn config(&self) -> &OAuthConfig {
        &self.cfg
    }

    async fn post(
        &self,
        url: &str,
        content_type: &'static str,
        body: String,
        secrets: &[&str],
    ) -> Result<Answer, OAuthError> {
        let resp = self
            .http
            .post(url)
            .header(CONTENT_TYPE, content_type)
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("poolgate/", env!("CARGO_PKG_VERSION")))
            .body(body)
            .send()
            .await
            .map_err(|e| OAuthError::Transport(scrub(&chain(&e.without_url()), secrets)))?;
        let status = resp.status();
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| OAuthError::Transport(scrub(&chain(&e.without_url()), secrets)))?;
            if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(OAuthError::Response(format!(
                    "the answer is larger than {MAX_RESPONSE_BYTES} bytes"
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        let body = serde_json::from_slice(&buf).unwrap_or(Value::Null);
        Ok(Answer { status, body })
    }

    /// The OAuth error of a refused request, scrubbed of `secrets`.
    fn refusal(answer: &Answer, secrets: &[&str]) -> OAuthError {
        let status = answer.status.as_u16();
        let (code, description) = error_fields(&answer.body);
        match code {
            Some(code) => OAuthError::Rejected {
                status,
                code: clean_code(&code),
                description: description.map(|d| scrub(&d, secrets)),
            },
            None => OAuthError::Status { status },
        }
    }

    /// Exchanges an authorization code (seed spec §3.1 step 8). The answer must hold all
    /// three tokens.
    pub async fn exchange_code(
        &self,
        code: &Secret,
        verifier: &Secret,
        redirect_uri: &str,
    ) -> Result<OAuthTokens, OAuthError> {
        let body = form(&[
            ("grant_type", "authorization_code"),
            ("code", code.expose()),
            ("redirect_uri", redirect_uri),
            ("client_id", &self.cfg.client_id),
            ("code_verifier", verifier.expose()),
        ]);
        let secrets = [code.expose(), verifier.expose()];
        let answer = self
            .post(
                &self.cfg.token_url(),
                "application/x-www-form-urlencoded",
                body,
                &secrets,
            )
            .await?;
        if !answer.status.is_success() {
            return Err(Self::refusal(&answer, &secrets));
        }
        tokens_from(&answer.body)
    }

    /// Starts a device login.
    pub async fn request_device_code(&self) -> Result<DeviceCode, OAuthError> {
        let body = serde_json::json!({ "client_id": self.cfg.client_id }).to_string();
        let answer = self
            .post(
                &self.cfg.device_usercode_url(),
                "application/json",
                body,
                &[],
            )
            .await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Err(OAuthError::DeviceNotEnabled);
        }
        if !answer.status.is_success() {
            return Err(Self::refusal(&answer, &[]));
        }
        let b = &answer.body;
        let device_auth_id = str_field(b, &["device_auth_id"])
            .ok_or_else(|| OAuthError::Response("no device_auth_id".into()))?;
        let user_code = str_field(b, &["user_code", "usercode"])
            .ok_or_else(|| OAuthError::Response("no user_code".into()))?;
        if user_code.len() > 64 || user_code.chars().any(char::is_control) {
            return Err(OAuthError::Response("the user code is malformed".into()));
        }
        let interval = match b.get("interval") {
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        .unwrap_or(5)
        .clamp(1, 60);
        Ok(DeviceCode {
            device_auth_id: Secret::new(device_auth_id),
            user_code,
            verification_url: self.cfg.device_verification_url(),
            interval: Duration::from_secs(interval),
        })
    }

    /// Polls a device login once. 403/404 (and `authorization_pending`) mean pending.
    pub async fn poll_device(&self, device: &DeviceCode) -> Result<DevicePoll, OAuthError> {
        let body = serde_json::json!({
            "device_auth_id": device.device_auth_id.expose(),
            "user_code": device.user_code,
        })
        .to_string();
        let secrets = [device.device_auth_id.expose()];
        let answer = self
            .post(
                &self.cfg.device_token_url(),
                "application/json",
                body,
                &secrets,
            )
            .await?;
        if answer.status.is_success() {
            let b = &answer.body;
            let code = str_field(b, &["authorization_code"])
                .ok_or_else(|| OAuthError::Response("no authorization_code".into()))?;
            let verifier = str_field(b, &["code_verifier"])
                .ok_or_else(|| OAuthError::Response("no code_verifier".into()))?;
            return Ok(DevicePoll::Authorized {
                code: Secret::new(code),
                verifier: Secret::new(verifier),
            });
        }
        let (code, _) = error_fields(&answer.body);
        match code.as_deref() {
            Some("slow_down") => return Ok(DevicePoll::SlowDown),
            Some("authorization_pending") => return Ok(DevicePoll::Pending),
            Some("expired_token" | "deviceauth_expired") => return Err(OAuthError::DeviceExpired),
            Some("access_denied" | "authorization_declined") => {
                return Err(OAuthError::DeviceDenied);
            }
            _ => {}
        }
        if matches!(answer.status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND) {
            return Ok(DevicePoll::Pending);
        }
        Err(Self::refusal(&answer, &secrets))
    }

    /// Polls a device login every interval (longer after each `slow_down`, riding out a few
    /// transport failures) until it is approved, then exchanges the code. Gives up with
    /// [`OAuthError::DeviceExpired`] at `deadline`.
    pub async fn wait_for_device(
        &self,
        device: &DeviceCode,
        deadline: tokio::time::Instant,
    ) -> Result<OAuthTokens, OAuthError> {
        let mut interval = device.interval;
        let mut failures = 0u32;
        loop {
            let next = tokio::time::Instant::now() + interval;
            if next > deadline {
                return Err(OAuthError::DeviceExpired);
            }
            tokio::time::sleep_until(next).await;
            match self.poll_device(device).await {
                Ok(DevicePoll::Pending) => failures = 0,
                Ok(DevicePoll::SlowDown) => {
                    failures = 0;
                    interval += SLOW_DOWN_STEP;
                }
                Ok(DevicePoll::Authorized { code, verifier }) => {
                    return self
                        .exchange_code(&code, &verifier, &self.cfg.device_redirect_uri())
                        .await;
                }
                Err(e) if e.is_transient() && failures + 1 < MAX_POLL_FAILURES => {
                    failures += 1;
                    tracing::debug!(error = %e, failures, "device login poll failed; retrying");
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn str_field(v: &Value, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| v.get(*n).and_then(Value::as_str))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// `{"error": "code", "error_description": "…"}` or `{"error": {"code", "message"}}`.
fn error_fields(v: &Value) -> (Option<String>, Option<String>) {
    match v.get("error") {
        Some(Value::String(code)) => (
            Some(code.clone()),
            str_field(v, &["error_description", "message"]),
        ),
        Some(obj @ Value::Object(_)) => (
            str_field(obj, &["code", "type"]),
            str_field(obj, &["message"]),
        ),
        _ => (None, None),
    }
}

/// The three tokens of a token-endpoint answer, with the access token's expiry.
fn tokens_from(body: &Value) -> Result<OAuthTokens, OAuthError> {
    let get = |name: &str| {
        str_field(body, &[name])
            .ok_or_else(|| OAuthError::Response(format!("the token answer has no {name}")))
    };
    let id_token = get("id_token")?;
    let access_token = get("access_token")?;
    let refresh_token = get("refresh_token")?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let exp = poolgate_core::jwt::openai_claims(&access_token)
        .ok()
        .and_then(|c| c.exp)
        .or_else(|| {
            body.get("expires_in")
                .and_then(Value::as_i64)
                .map(|s| now_ms / 1000 + s)
        });
    Ok(OAuthTokens {
        id_token: Secret::new(id_token),
        access_token: Secret::new(access_token),
        refresh_token: Secret::new(refresh_token),
        expires_at_ms: exp.map(|s| s.saturating_mul(1000)),
        last_refresh_ms: Some(now_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc7636_appendix_b() {
        let p = Pkce::from_verifier("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
        assert_eq!(p.challenge(), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert!(!format!("{p:?}").contains("dBjftJeZ"));
        let g = Pkce::generate().unwrap();
        assert_eq!(g.verifier().expose().len(), 86);
        assert_eq!(g.challenge(), s256_challenge(g.verifier().expose()));
        assert_ne!(g.verifier(), Pkce::generate().unwrap().verifier());
        assert_eq!(random_state().unwrap().len(), 43);
    }

    #[test]
    fn authorize_url_has_every_parameter() {
        let cfg = OAuthConfig {
            issuer: "https://auth.example.test/".into(),
            ..OAuthConfig::default()
        };
        let u = authorize_url(&cfg, DEFAULT_REDIRECT_URI, "chal", "st+/=", Some("ws-1"));
        let (base, query) = u.split_once('?').unwrap();
        assert_eq!(base, "https://auth.example.test/oauth/authorize");
        let p: Vec<(String, String)> = query
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), decode_component(v))
            })
            .collect();
        let get = |k: &str| p.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("response_type"), Some("code"));
        assert_eq!(get("client_id"), Some(DEFAULT_CLIENT_ID));
        assert_eq!(get("redirect_uri"), Some(DEFAULT_REDIRECT_URI));
        assert_eq!(get("scope"), Some(SCOPE));
        assert_eq!(get("code_challenge"), Some("chal"));
        assert_eq!(get("code_challenge_method"), Some("S256"));
        assert_eq!(get("id_token_add_organizations"), Some("true"));
        assert_eq!(get("codex_cli_simplified_flow"), Some("true"));
        assert_eq!(get("state"), Some("st+/="));
        assert_eq!(get("originator"), Some("codex_cli_rs"));
        assert_eq!(get("allowed_workspace_id"), Some("ws-1"));
        assert!(query.contains("scope=openid%20profile%20email%20offline_access"));
        assert!(!authorize_url(&cfg, "r", "c", "s", None).contains("allowed_workspace_id"));
    }

    #[test]
    fn callbacks_are_parsed_in_every_pasted_shape() {
        for input in [
            "http://localhost:1455/auth/callback?code=ac%2B1&state=s1",
            "localhost:1455/auth/callback?state=s1&code=ac%2B1#frag",
            "/auth/callback?code=ac%2B1&state=s1",
            "code=ac%2B1&state=s1",
            "  ?code=ac%2B1&state=s1\n",
        ] {
            let p = parse_callback(input).unwrap();
            assert_eq!(p.code.as_ref().map(Secret::expose), Some("ac+1"), "{input}");
            assert_eq!(p.state.as_deref(), Some("s1"), "{input}");
            assert!(!format!("{p:?}").contains("ac+1"));
        }
        let p =
            parse_callback("http://h/cb?error=access_denied%3Cx%3E&error_description=User+said+no")
                .unwrap();
        assert_eq!(p.error.as_deref(), Some("access_deniedx"));
        assert_eq!(p.error_description.as_deref(), Some("User said no"));
        assert!(p.code.is_none());
        assert!(parse_callback("").is_err());
        let e = parse_callback("http://localhost:1455/auth/callback").unwrap_err();
        assert!(e.to_string().contains("no query"), "{e}");
        assert!(parse_callback(&"a".repeat(MAX_CALLBACK_BYTES + 1)).is_err());
    }

    #[test]
    fn component_codec_round_trips() {
        let s = "a b+c/d?e=f&g~h_i.j-k%ü";
        assert_eq!(decode_component(&encode_component(s)), s);
        assert_eq!(decode_component("100%"), "100%");
        assert_eq!(decode_component("%zz%4"), "%zz%4");
    }

    #[test]
    fn config_checks() {
        assert!(OAuthConfig::default().validate().is_ok());
        for bad in [
            "auth.openai.com",
            "ftp://x",
            "https://",
            "https://x/?a=b",
            "https://a b",
        ] {
            let cfg = OAuthConfig {
                issuer: bad.into(),
                ..OAuthConfig::default()
            };
            assert!(cfg.validate().is_err(), "{bad}");
        }
        let cfg = OAuthConfig {
            client_id: "has space".into(),
            ..OAuthConfig::default()
        };
        assert!(cfg.validate().is_err());
        let cfg = OAuthConfig {
            issuer: "http://127.0.0.1:9/".into(),
            ..OAuthConfig::default()
        };
        assert_eq!(cfg.token_url(), "http://127.0.0.1:9/oauth/token");
        assert_eq!(
            cfg.device_usercode_url(),
            "http://127.0.0.1:9/api/accounts/deviceauth/usercode"
        );
        assert_eq!(
            cfg.device_verification_url(),
            "http://127.0.0.1:9/codex/device"
        );
        assert_eq!(
            cfg.device_redirect_uri(),
            "http://127.0.0.1:9/deviceauth/callback"
        );
        assert!(check_redirect_uri("http://localhost:1455/auth/callback").is_ok());
        assert!(check_redirect_uri("localhost:1455/auth/callback").is_err());
    }

    #[test]
    fn issuer_errors_are_scrubbed() {
        let answer = Answer {
            status: StatusCode::BAD_REQUEST,
            body: serde_json::json!({"error": "invalid_grant",
                "error_description": "code SECRETCODE is not valid for verifier SECRETVER"}),
        };
        let e = OAuthClient::refusal(&answer, &["SECRETCODE", "SECRETVER"]);
        assert!(e.is_invalid_grant());
        let msg = e.to_string();
        assert!(
            !msg.contains("SECRETCODE") && !msg.contains("SECRETVER"),
            "{msg}"
        );
        assert!(msg.starts_with("the OAuth issuer refused the request (HTTP 400, invalid_grant)"));
        let nested = Answer {
            status: StatusCode::UNAUTHORIZED,
            body: serde_json::json!({"error": {"code": "refresh_token_reused", "message": "m"}}),
        };
        assert!(matches!(
            OAuthClient::refusal(&nested, &[]),
            OAuthError::Rejected { ref code, .. } if code == "refresh_token_reused"
        ));
        let bare = Answer {
            status: StatusCode::BAD_GATEWAY,
            body: Value::Null,
        };
        let e = OAuthClient::refusal(&bare, &[]);
        assert!(e.is_transient());
        assert_eq!(e.to_string(), "the OAuth issuer answered HTTP 502");
    }

    #[test]
    fn token_answers_need_all_three_tokens() {
        let at = poolgate_core::jwt::unsigned(&serde_json::json!({"exp": 2_000_000_000}));
        let t = tokens_from(&serde_json::json!({
            "id_token": "i", "access_token": at, "refresh_token": "r"
        }))
        .unwrap();
        assert_eq!(t.expires_at_ms, Some(2_000_000_000_000));
        assert!(t.last_refresh_ms.is_some());
        let e =
            tokens_from(&serde_json::json!({"id_token": "i", "access_token": "a"})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unexpected answer from the OAuth issuer: the token answer has no refresh_token"
        );
    }
}
