//! The interactive half of the mock issuer (seed spec §3.1): the browser's authorize page and
//! the device-code endpoints. Codes issued here remember their PKCE challenge and redirect
//! URI, and the token endpoint checks both (once: codes are single-use).
//!
//! - `GET /oauth/authorize?…` answers as if the person had logged in and consented at once:
//!   `302` to `redirect_uri?code=…&state=…`. Missing or wrong parameters get `400` JSON.
//! - `POST /api/accounts/deviceauth/usercode` `{client_id}` → `{device_auth_id, user_code,
//!   interval}` (interval as a string, like the real issuer).
//! - `POST /api/accounts/deviceauth/token` `{device_auth_id, user_code}` → `403` while pending,
//!   `400 {"error":"slow_down"}` for the first [`MockDeviceLogin::slow_down_polls`] polls,
//!   `400 {"error":"expired_token"}` after [`MockDeviceLogin::expire_after_polls`], then
//!   `{authorization_code, code_challenge, code_verifier}` once approved (by the control API
//!   or after [`MockDeviceLogin::approve_after_polls`]).

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::body::{Aborted, MockBody};
use super::oauth::Identity;
use super::server::{Cx, Inner};
use super::util::{fnv64, form_decode, json_value};

/// Bound on the codes and device logins remembered.
const MAX_ENTRIES: usize = 100_000;

/// How device logins started from now on behave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MockDeviceLogin {
    /// The polling interval announced, in seconds.
    pub interval_secs: u64,
    /// Approve by itself once this many polls were answered "pending" (`None`: wait for
    /// [`MockUpstream::approve_device`](super::MockUpstream::approve_device)).
    pub approve_after_polls: Option<u32>,
    /// Answer the first N polls with `slow_down`.
    pub slow_down_polls: u32,
    /// Answer `expired_token` from this poll on (1-based), unless approved before.
    pub expire_after_polls: Option<u32>,
}

impl Default for MockDeviceLogin {
    fn default() -> Self {
        MockDeviceLogin {
            interval_secs: 1,
            approve_after_polls: None,
            slow_down_polls: 0,
            expire_after_polls: None,
        }
    }
}

/// What an issued authorization code is bound to.
#[derive(Debug)]
pub(crate) struct CodeGrant {
    pub challenge: String,
    pub redirect_uri: String,
    pub identity: Arc<Identity>,
}

#[derive(Debug)]
struct Device {
    user_code: String,
    settings: MockDeviceLogin,
    polls: u32,
    approved: Option<Arc<Identity>>,
    denied: bool,
    /// The code was handed out; further polls are refused.
    done: bool,
}

#[derive(Debug, Default)]
pub(crate) struct LoginState {
    grants: HashMap<String, CodeGrant>,
    devices: HashMap<String, Device>,
    /// Who the next logins are (authorize and device approvals); `None` derives an identity
    /// from the code.
    identity: Option<Arc<Identity>>,
    device: MockDeviceLogin,
}

impl LoginState {
    /// The grant a code was issued with, if it came from this module.
    pub(crate) fn take_grant(&mut self, code: &str) -> Option<CodeGrant> {
        self.grants.remove(code)
    }

    fn add_grant(&mut self, code: String, grant: CodeGrant) {
        if self.grants.len() >= MAX_ENTRIES {
            self.grants.clear();
        }
        self.grants.insert(code, grant);
    }
}

pub(crate) fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn bad(status: StatusCode, error: &str, description: &str) -> Response<MockBody> {
    json_value(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

fn encode(s: &str) -> String {
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

fn new_code(inner: &Inner, prefix: &str) -> String {
    format!("{prefix}{:08x}{:08x}", inner.nonce, inner.state.next_id())
}

fn identity_for(inner: &Inner, code: &str) -> Arc<Identity> {
    let configured = inner.state.lock().oauth.login.identity.clone();
    configured.unwrap_or_else(|| Arc::new(Identity::derived(code)))
}

/// `GET /oauth/authorize`.
pub(crate) fn authorize(cx: &Cx) -> Result<Response<MockBody>, Aborted> {
    cx.intake(None, None, None);
    let params: Vec<(String, String)> = cx
        .uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (form_decode(k), form_decode(v))
        })
        .collect();
    let get = |n: &str| {
        params
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let required = [
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "code_challenge",
        "code_challenge_method",
        "state",
    ];
    if let Some(missing) = required.iter().find(|n| get(n).is_none()) {
        return Ok(bad(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("{missing} is required"),
        ));
    }
    if get("response_type") != Some("code") || get("code_challenge_method") != Some("S256") {
        return Ok(bad(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "response_type must be code and code_challenge_method S256",
        ));
    }
    let scope = get("scope").unwrap_or_default();
    if !scope.split(' ').any(|s| s == "openid") || !scope.split(' ').any(|s| s == "offline_access")
    {
        return Ok(bad(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "scope must include openid and offline_access",
        ));
    }
    let redirect = get("redirect_uri").unwrap_or_default().to_string();
    if !(redirect.starts_with("http://") || redirect.starts_with("https://")) {
        return Ok(bad(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "redirect_uri must be an http(s) URL",
        ));
    }
    let code = new_code(&cx.inner, "ac_mock_");
    let grant = CodeGrant {
        challenge: get("code_challenge").unwrap_or_default().to_string(),
        redirect_uri: redirect.clone(),
        identity: identity_for(&cx.inner, &code),
    };
    let state = get("state").unwrap_or_default().to_string();
    cx.inner
        .state
        .lock()
        .oauth
        .login
        .add_grant(code.clone(), grant);
    let sep = if redirect.contains('?') { '&' } else { '?' };
    let location = format!(
        "{redirect}{sep}code={}&state={}",
        encode(&code),
        encode(&state)
    );
    let mut r = Response::new(MockBody::full(format!("Redirecting to {redirect}")));
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = http::HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

fn json_body(cx: &Cx) -> serde_json::Map<String, Value> {
    serde_json::from_slice(&cx.body).unwrap_or_default()
}

/// `POST /api/accounts/deviceauth/usercode`.
pub(crate) fn device_usercode(cx: &Cx) -> Result<Response<MockBody>, Aborted> {
    cx.intake(None, None, None);
    let body = json_body(cx);
    let client_id = body
        .get("client_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if client_id.is_empty() {
        return Ok(bad(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_id is required",
        ));
    }
    let id = new_code(&cx.inner, "dev_mock_");
    let h = fnv64(id.as_bytes());
    let user_code = format!("{:04X}-{:04X}", (h >> 16) & 0xffff, h & 0xffff);
    let mut g = cx.inner.state.lock();
    let login = &mut g.oauth.login;
    if login.devices.len() >= MAX_ENTRIES {
        login.devices.clear();
    }
    let settings = login.device.clone();
    let interval = settings.interval_secs;
    login.devices.insert(
        id.clone(),
        Device {
            user_code: user_code.clone(),
            settings,
            polls: 0,
            approved: None,
            denied: false,
            done: false,
        },
    );
    Ok(json_value(
        StatusCode::OK,
        &json!({"device_auth_id": id, "user_code": user_code, "interval": interval.to_string()}),
    ))
}

/// `POST /api/accounts/deviceauth/token`.
pub(crate) fn device_token(cx: &Cx) -> Result<Response<MockBody>, Aborted> {
    let body = json_body(cx);
    let str_of = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default();
    let (id, user_code) = (str_of("device_auth_id"), str_of("user_code"));
    cx.intake(Some(id).filter(|i| !i.is_empty()), None, None);
    let mut g = cx.inner.state.lock();
    let login = &mut g.oauth.login;
    let Some(dev) = login
        .devices
        .get_mut(id)
        .filter(|d| d.user_code == user_code)
    else {
        return Ok(bad(
            StatusCode::NOT_FOUND,
            "deviceauth_not_found",
            "unknown device_auth_id or user_code",
        ));
    };
    if dev.done {
        return Ok(bad(
            StatusCode::BAD_REQUEST,
            "expired_token",
            "this device login was already completed",
        ));
    }
    dev.polls += 1;
    if dev.denied {
        return Ok(bad(
            StatusCode::BAD_REQUEST,
            "access_denied",
            "the login was declined",
        ));
    }
    if dev.polls <= dev.settings.slow_down_polls {
        return Ok(bad(
            StatusCode::BAD_REQUEST,
            "slow_down",
            "polling too fast",
        ));
    }
    if dev.approved.is_none()
        && let Some(n) = dev.settings.approve_after_polls
        && dev.polls > n
    {
        dev.approved = Some(Arc::new(Identity::derived(id)));
        if let Some(configured) = login.identity.clone() {
            dev.approved = Some(configured);
        }
    }
    let Some(identity) = dev.approved.clone() else {
        if dev
            .settings
            .expire_after_polls
            .is_some_and(|n| dev.polls >= n)
        {
            return Ok(bad(
                StatusCode::BAD_REQUEST,
                "expired_token",
                "the device code expired",
            ));
        }
        return Ok(bad(
            StatusCode::FORBIDDEN,
            "authorization_pending",
            "the user has not approved the login yet",
        ));
    };
    dev.done = true;
    let n = cx.inner.state.next_id();
    let code = format!("ac_dev_{:08x}{n:08x}", cx.inner.nonce);
    let verifier = format!(
        "ver_dev_{:08x}{n:016x}_{}",
        cx.inner.nonce,
        fnv64(id.as_bytes())
    );
    let challenge = s256(&verifier);
    let redirect_uri = format!("{}/deviceauth/callback", cx.inner.url);
    login.add_grant(
        code.clone(),
        CodeGrant {
            challenge: challenge.clone(),
            redirect_uri,
            identity,
        },
    );
    Ok(json_value(
        StatusCode::OK,
        &json!({"authorization_code": code, "code_challenge": challenge, "code_verifier": verifier}),
    ))
}

/// Sets who the next logins are.
pub(crate) fn set_identity(inner: &Inner, identity: Option<Identity>) {
    inner.state.lock().oauth.login.identity = identity.map(Arc::new);
}

pub(crate) fn set_device(inner: &Inner, settings: MockDeviceLogin) {
    inner.state.lock().oauth.login.device = settings;
}

/// Approves (or declines) the pending device login with this user code; false when there is
/// none.
pub(crate) fn decide_device(inner: &Inner, user_code: &str, approve: bool) -> bool {
    let mut g = inner.state.lock();
    let login = &mut g.oauth.login;
    let configured = login.identity.clone();
    let Some((id, dev)) = login
        .devices
        .iter_mut()
        .find(|(_, d)| d.user_code == user_code && !d.done)
    else {
        return false;
    };
    if approve {
        dev.approved = Some(configured.unwrap_or_else(|| Arc::new(Identity::derived(id))));
    } else {
        dev.denied = true;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_is_rfc7636() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert_eq!(encode("a b/+"), "a%20b%2F%2B");
    }
}
