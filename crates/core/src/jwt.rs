//! Reading JWT claims. Signatures are not checked: the claims only label and identify an
//! account locally; the upstream validates the token itself.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::Error;

/// The claims of a JWT's payload as JSON.
pub fn claims(token: &str) -> Result<Value, Error> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Error::Jwt(
            "not a JWT (expected three dot-separated parts)".into(),
        ));
    };
    if payload.len() > 64 * 1024 {
        return Err(Error::Jwt("payload larger than 64 KiB".into()));
    }
    // Tolerate padded payloads, which some issuers emit.
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| Error::Jwt("payload is not base64url".into()))?;
    let v: Value =
        serde_json::from_slice(&bytes).map_err(|_| Error::Jwt("payload is not JSON".into()))?;
    if !v.is_object() {
        return Err(Error::Jwt("payload is not a JSON object".into()));
    }
    Ok(v)
}

/// The claims poolgate uses from an OpenAI id_token or access token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenAiClaims {
    pub sub: Option<String>,
    pub email: Option<String>,
    pub exp: Option<i64>,
    pub chatgpt_account_id: Option<String>,
    pub chatgpt_user_id: Option<String>,
    pub plan_type: Option<String>,
}

const AUTH_CLAIM: &str = "https://api.openai.com/auth";

pub fn openai_claims(token: &str) -> Result<OpenAiClaims, Error> {
    let v = claims(token)?;
    let s = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let auth = v.get(AUTH_CLAIM).cloned().unwrap_or(Value::Null);
    let email = s(&v, "email").or_else(|| {
        v.get("https://api.openai.com/profile")
            .and_then(|p| s(p, "email"))
    });
    Ok(OpenAiClaims {
        sub: s(&v, "sub"),
        email,
        exp: v.get("exp").and_then(Value::as_i64),
        chatgpt_account_id: s(&auth, "chatgpt_account_id"),
        chatgpt_user_id: s(&auth, "chatgpt_user_id").or_else(|| s(&auth, "user_id")),
        plan_type: s(&auth, "chatgpt_plan_type"),
    })
}

/// Builds an unsigned JWT with the given claims (tests and the mock issuer use it).
pub fn unsigned(claims: &Value) -> String {
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.sig",
        enc(&serde_json::json!({"alg": "none", "typ": "JWT"})),
        enc(claims)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_openai_claims() {
        let t = unsigned(&json!({
            "sub": "auth0|u1", "email": "a@b.c", "exp": 1_900_000_000,
            AUTH_CLAIM: {"chatgpt_account_id": "ws-1", "chatgpt_user_id": "user-1", "chatgpt_plan_type": "team"}
        }));
        let c = openai_claims(&t).unwrap();
        assert_eq!(c.sub.as_deref(), Some("auth0|u1"));
        assert_eq!(c.chatgpt_account_id.as_deref(), Some("ws-1"));
        assert_eq!(c.chatgpt_user_id.as_deref(), Some("user-1"));
        assert_eq!(c.plan_type.as_deref(), Some("team"));
        assert_eq!(c.exp, Some(1_900_000_000));
    }

    #[test]
    fn rejects_garbage() {
        assert!(claims("abc").is_err());
        assert!(claims("a.!!!.c").is_err());
        assert!(claims(&format!("a.{}.c", URL_SAFE_NO_PAD.encode("[1]"))).is_err());
    }
}
