//! The OAuth token endpoint (seed spec §3.1 step 8, §4.1): refresh tokens rotate and are
//! single-use, like the real issuer's.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use http::{Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::body::{Aborted, MockBody};
use super::fault::Surface;
use super::server::Cx;
use super::state::Scope;
use super::util::{fnv64, json_value, now_secs, parse_form};

/// The Codex CLI's public OAuth client id, used when a request names none.
pub const DEFAULT_CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";

/// Bound on the refresh tokens and codes remembered.
const MAX_REMEMBERED: usize = 200_000;

/// Who a set of tokens belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub email: String,
    /// `chatgpt_account_id`.
    pub account_id: String,
    /// `chatgpt_user_id`.
    pub user_id: String,
    pub plan_type: String,
}

impl Identity {
    pub fn new(email: &str, account_id: &str) -> Self {
        Identity {
            email: email.to_string(),
            account_id: account_id.to_string(),
            user_id: format!("user-{:016x}", fnv64(email.as_bytes())),
            plan_type: "plus".into(),
        }
    }

    /// A stable identity for a refresh token or code the mock never issued.
    pub(crate) fn derived(seed: &str) -> Self {
        let a = fnv64(seed.as_bytes());
        let b = fnv64(format!("{seed}#").as_bytes());
        let account_id = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 52) & 0xfff,
            b & 0xffff_ffff_ffff
        );
        Identity::new(&format!("user-{:08x}@mock.test", a >> 32), &account_id)
    }
}

/// Tokens as issued: unsigned JWTs for the access and id tokens, an opaque refresh token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedTokens {
    pub access_token: String,
    pub refresh_token: String,
    pub id_token: String,
    pub account_id: String,
    pub expires_in: u64,
}

#[derive(Debug)]
struct RefreshEntry {
    identity: Arc<Identity>,
    used: bool,
}

#[derive(Debug, Default)]
pub(crate) struct OAuthState {
    refresh: HashMap<String, RefreshEntry>,
    codes: HashSet<String>,
    /// Codes from the authorize page and device logins (see `login.rs`).
    pub(crate) login: super::login::LoginState,
}

impl OAuthState {
    fn remember(&mut self, refresh_token: &str, identity: Arc<Identity>, used: bool) {
        if self.refresh.len() >= MAX_REMEMBERED {
            self.refresh.retain(|_, e| !e.used);
        }
        if self.refresh.len() < MAX_REMEMBERED {
            self.refresh
                .insert(refresh_token.to_string(), RefreshEntry { identity, used });
        }
    }
}

/// Mints a token set for `identity` and remembers its refresh token as unused.
pub(crate) fn issue(
    cx_state: &super::server::Inner,
    identity: Arc<Identity>,
    client_id: &str,
) -> IssuedTokens {
    let n = cx_state.state.next_id();
    let now = now_secs();
    let ttl = cx_state.config.access_token_ttl_secs;
    let exp = now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX / 2));
    let auth = json!({
        "chatgpt_account_id": identity.account_id,
        "chatgpt_plan_type": identity.plan_type,
        "chatgpt_user_id": identity.user_id,
        "user_id": identity.user_id,
    });
    let mut id_auth = auth.clone();
    if let Some(o) = id_auth.as_object_mut() {
        o.insert(
            "organizations".into(),
            json!([{"id": format!("org-{:016x}", fnv64(identity.account_id.as_bytes())),
                    "is_default": true, "role": "owner", "title": "Personal"}]),
        );
    }
    let sub = format!("auth0|{}", identity.user_id);
    let id_token = poolgate_core::jwt::unsigned(&json!({
        "iss": cx_state.url,
        "aud": [client_id],
        "sub": sub,
        "email": identity.email,
        "email_verified": true,
        "iat": now,
        "auth_time": now,
        "exp": exp,
        "https://api.openai.com/auth": id_auth,
    }));
    let access_token = poolgate_core::jwt::unsigned(&json!({
        "iss": cx_state.url,
        "aud": ["https://api.openai.com/v1"],
        "sub": sub,
        "iat": now,
        "nbf": now,
        "exp": exp,
        "jti": format!("{:08x}-{n:x}", cx_state.nonce),
        "scp": ["openid", "profile", "email", "offline_access"],
        "client_id": client_id,
        "https://api.openai.com/auth": auth,
        "https://api.openai.com/profile": {"email": identity.email, "email_verified": true},
    }));
    let refresh_token = format!("rt_mock_{:08x}{n:08x}", cx_state.nonce);
    let account_id = identity.account_id.clone();
    cx_state
        .state
        .lock()
        .oauth
        .remember(&refresh_token, identity, false);
    IssuedTokens {
        access_token,
        refresh_token,
        id_token,
        account_id,
        expires_in: ttl,
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<MockBody> {
    json_value(
        status,
        &json!({"error": error, "error_description": description}),
    )
}

/// `POST /oauth/token`, form-encoded (or JSON, as the Codex CLI sends refreshes).
pub(crate) async fn token(cx: &Cx) -> Result<Response<MockBody>, Aborted> {
    let is_json = cx
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.to_ascii_lowercase().contains("json"));
    let params: Vec<(String, String)> = if is_json {
        serde_json::from_slice::<serde_json::Map<String, Value>>(&cx.body)
            .map(|m| {
                m.into_iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        parse_form(&cx.body)
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let grant = param("grant_type").unwrap_or_default();
    let key = match grant {
        "refresh_token" => param("refresh_token"),
        "authorization_code" => param("code"),
        _ => None,
    };
    let intake = cx.intake(key, Some(Scope::Json), None);
    let shaping = match cx.shape(intake.fault, Surface::OAuth).await {
        Ok(s) => s,
        Err(r) => return Ok(r),
    };
    let client_id = param("client_id").unwrap_or(DEFAULT_CLIENT_ID).to_string();
    let resp = match (grant, key) {
        ("refresh_token", None) => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token is required",
        ),
        ("refresh_token", Some(rt)) => {
            let identity = {
                let mut g = cx.inner.state.lock();
                match g.oauth.refresh.get_mut(rt) {
                    Some(e) if e.used => None,
                    Some(e) => {
                        e.used = true;
                        Some(e.identity.clone())
                    }
                    None => {
                        let id = Arc::new(Identity::derived(rt));
                        g.oauth.remember(rt, id.clone(), true);
                        Some(id)
                    }
                }
            };
            match identity {
                Some(id) => tokens_response(&issue(&cx.inner, id, &client_id)),
                None => json_value(
                    StatusCode::UNAUTHORIZED,
                    &json!({"error": {
                        "message": "Your refresh token has already been used to generate a new access token. Please try signing in again.",
                        "type": "invalid_request_error",
                        "param": null,
                        "code": "refresh_token_reused",
                    }}),
                ),
            }
        }
        ("authorization_code", None) => oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code is required",
        ),
        ("authorization_code", Some(code)) => {
            let fresh = {
                let mut g = cx.inner.state.lock();
                if g.oauth.codes.len() >= MAX_REMEMBERED {
                    g.oauth.codes.clear();
                }
                g.oauth.codes.insert(code.to_string())
            };
            let grant = cx.inner.state.lock().oauth.login.take_grant(code);
            if !fresh {
                oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "The authorization code has already been used.",
                )
            } else if let Some(grant) = grant {
                match check_grant(&grant, param("code_verifier"), param("redirect_uri")) {
                    Ok(()) => tokens_response(&issue(&cx.inner, grant.identity, &client_id)),
                    Err(why) => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", why),
                }
            } else {
                // A code the mock never issued: any one works once, for a derived login.
                let id = Arc::new(Identity::derived(code));
                tokens_response(&issue(&cx.inner, id, &client_id))
            }
        }
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be refresh_token or authorization_code",
        ),
    };
    shaping.json(resp)
}

/// A code from the authorize page or a device login is good only with the verifier of its
/// challenge and the redirect URI it was issued for.
fn check_grant(
    grant: &super::login::CodeGrant,
    verifier: Option<&str>,
    redirect_uri: Option<&str>,
) -> Result<(), &'static str> {
    match verifier {
        None => return Err("code_verifier is required for this code"),
        Some(v) if super::login::s256(v) != grant.challenge => {
            return Err("code_verifier does not match the code_challenge");
        }
        Some(_) => {}
    }
    if redirect_uri != Some(grant.redirect_uri.as_str()) {
        return Err("redirect_uri does not match the one the code was issued for");
    }
    Ok(())
}

fn tokens_response(t: &IssuedTokens) -> Response<MockBody> {
    json_value(
        StatusCode::OK,
        &json!({
            "access_token": t.access_token,
            "refresh_token": t.refresh_token,
            "id_token": t.id_token,
            "token_type": "Bearer",
            "expires_in": t.expires_in,
            "scope": "openid profile email offline_access",
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_identities_are_stable_and_uuid_shaped() {
        let a = Identity::derived("rt-1");
        assert_eq!(a, Identity::derived("rt-1"));
        assert_ne!(a.account_id, Identity::derived("rt-2").account_id);
        let parts: Vec<usize> = a.account_id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert!(a.email.ends_with("@mock.test"));
    }
}
