//! Codex `auth.json` documents, as the Codex CLI writes them and other tools export them.
//!
//! A document is one JSON object, a JSON array of objects, or a stream of objects (NDJSON or
//! simply concatenated). Token fields may sit under `tokens`, under `credentials` or at the top
//! level, in snake_case or camelCase.

use serde_json::Value;

use crate::jwt::openai_claims;
use crate::{CodexIdentity, Error, OAuthTokens, Secret};

/// One account taken from a document.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedCodexAuth {
    pub identity: CodexIdentity,
    pub tokens: OAuthTokens,
    /// A human label: the e-mail when known, else the subject.
    pub label: String,
}

/// Splits a document into items. A syntax error ends the document: the items before it are
/// returned, followed by one error naming the line and column.
pub fn split_document(doc: &str) -> Vec<Result<Value, Error>> {
    let trimmed = doc.trim_start_matches('\u{feff}').trim();
    if trimmed.is_empty() {
        return vec![Err(Error::AuthJson("document is empty".into()))];
    }
    if trimmed.starts_with('[') {
        return match serde_json::from_str::<Vec<Value>>(trimmed) {
            Ok(items) if items.is_empty() => vec![Err(Error::AuthJson("array is empty".into()))],
            Ok(items) => items.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(Error::AuthJson(format!(
                "invalid JSON at line {} column {}: {}",
                e.line(),
                e.column(),
                short_json_error(&e)
            )))],
        };
    }
    let mut out = Vec::new();
    for item in serde_json::Deserializer::from_str(trimmed).into_iter::<Value>() {
        match item {
            Ok(v) => out.push(Ok(v)),
            Err(e) => {
                out.push(Err(Error::AuthJson(format!(
                    "invalid JSON at line {} column {}: {}",
                    e.line(),
                    e.column(),
                    short_json_error(&e)
                ))));
                break;
            }
        }
    }
    out
}

// serde_json's Display repeats the position; keep only the classification.
fn short_json_error(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn field<'a>(obj: &'a Value, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .find_map(|n| obj.get(*n))
        .filter(|v| !v.is_null())
}

fn string_field(obj: &Value, names: &[&str], what: &str) -> Result<Option<String>, Error> {
    match field(obj, names) {
        None => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(_) => Err(Error::AuthJson(format!("{what} must be a string"))),
    }
}

/// Reads one item into an account identity and its tokens.
pub fn parse_item(item: &Value) -> Result<ImportedCodexAuth, Error> {
    if !item.is_object() {
        return Err(Error::AuthJson("item is not a JSON object".into()));
    }
    let tokens = field(item, &["tokens", "credentials"]).unwrap_or(item);
    if !tokens.is_object() {
        return Err(Error::AuthJson("`tokens` is not an object".into()));
    }
    let id_token = string_field(tokens, &["id_token", "idToken"], "tokens.id_token")?
        .ok_or_else(|| Error::AuthJson("tokens.id_token is missing".into()))?;
    let access_token = string_field(
        tokens,
        &["access_token", "accessToken"],
        "tokens.access_token",
    )?
    .ok_or_else(|| Error::AuthJson("tokens.access_token is missing".into()))?;
    let refresh_token = string_field(
        tokens,
        &["refresh_token", "refreshToken"],
        "tokens.refresh_token",
    )?
    .unwrap_or_default();
    let account_id_field = string_field(
        tokens,
        &[
            "account_id",
            "accountId",
            "chatgpt_account_id",
            "chatgptAccountId",
        ],
        "tokens.account_id",
    )?;

    let id =
        openai_claims(&id_token).map_err(|e| Error::AuthJson(format!("tokens.id_token: {e}")))?;
    // The access token is opaque for some issuers; its claims are a fallback only.
    let access = openai_claims(&access_token).unwrap_or_default();
    let subject = id
        .sub
        .clone()
        .ok_or_else(|| Error::AuthJson("tokens.id_token has no `sub` claim".into()))?;
    let chatgpt_account_id = id
        .chatgpt_account_id
        .clone()
        .or(account_id_field)
        .or(access.chatgpt_account_id.clone())
        .ok_or_else(|| {
            Error::AuthJson("no chatgpt_account_id in tokens.account_id or the token claims".into())
        })?;
    if subject.len() > 256 || chatgpt_account_id.len() > 256 {
        return Err(Error::AuthJson(
            "subject or chatgpt_account_id longer than 256 bytes".into(),
        ));
    }
    let email = string_field(item, &["email"], "email")?.or(id.email.clone());
    let label = email.clone().unwrap_or_else(|| subject.clone());
    Ok(ImportedCodexAuth {
        identity: CodexIdentity {
            subject,
            chatgpt_account_id,
            chatgpt_user_id: id.chatgpt_user_id.or(access.chatgpt_user_id),
            email,
            plan_type: id.plan_type.or(access.plan_type),
        },
        tokens: OAuthTokens {
            id_token: Secret::new(id_token),
            access_token: Secret::new(access_token),
            refresh_token: Secret::new(refresh_token),
            expires_at_ms: access.exp.or(id.exp).map(|s| s.saturating_mul(1000)),
            last_refresh_ms: None,
        },
        label,
    })
}

/// Parses a whole document: one result per item, in order.
pub fn parse_document(doc: &str) -> Vec<Result<ImportedCodexAuth, Error>> {
    split_document(doc)
        .into_iter()
        .map(|r| r.and_then(|v| parse_item(&v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::unsigned;
    use serde_json::json;

    fn id_token(sub: &str, acct: &str) -> String {
        unsigned(&json!({"sub": sub, "email": format!("{sub}@x.test"),
            "https://api.openai.com/auth": {"chatgpt_account_id": acct, "chatgpt_plan_type": "plus"}}))
    }

    #[test]
    fn codex_cli_shape() {
        let doc = json!({"OPENAI_API_KEY": null, "tokens": {"id_token": id_token("u1", "ws1"),
            "access_token": unsigned(&json!({"exp": 2_000_000_000})), "refresh_token": "rt", "account_id": "ws1"},
            "last_refresh": "2026-01-01T00:00:00Z"}).to_string();
        let items = parse_document(&doc);
        assert_eq!(items.len(), 1);
        let a = items[0].as_ref().unwrap();
        assert_eq!(a.identity.key(), "u1::ws1");
        assert_eq!(a.label, "u1@x.test");
        assert_eq!(a.tokens.expires_at_ms, Some(2_000_000_000_000));
        assert_eq!(a.tokens.refresh_token.expose(), "rt");
    }

    #[test]
    fn camel_case_array_and_ndjson() {
        let one =
            json!({"credentials": {"idToken": id_token("u2", "ws"), "accessToken": "opaque"}});
        let two =
            json!({"idToken": id_token("u3", "ws"), "accessToken": "opaque", "refreshToken": "r"});
        let arr = json!([one, two]).to_string();
        let r = parse_document(&arr);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(Result::is_ok));
        let nd = format!("{one}\n{two}\n");
        let r = parse_document(&nd);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].as_ref().unwrap().identity.subject, "u3");
        // Same workspace, different members: different identities.
        assert_ne!(
            r[0].as_ref().unwrap().identity.key(),
            r[1].as_ref().unwrap().identity.key()
        );
    }

    #[test]
    fn precise_errors() {
        let r = parse_document("{\"tokens\": {}}\n{oops");
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0].as_ref().unwrap_err().to_string(),
            "tokens.id_token is missing"
        );
        assert!(
            r[1].as_ref()
                .unwrap_err()
                .to_string()
                .starts_with("invalid JSON at line 2")
        );
        let r = parse_document("[1]");
        assert_eq!(
            r[0].as_ref().unwrap_err().to_string(),
            "item is not a JSON object"
        );
        let r = parse_document(
            &json!({"tokens": {"id_token": "x.y.z", "access_token": "a"}}).to_string(),
        );
        assert!(
            r[0].as_ref()
                .unwrap_err()
                .to_string()
                .starts_with("tokens.id_token: malformed token")
        );
        let r = parse_document(
            &json!({"tokens": {"id_token": unsigned(&json!({"sub": "s"})), "access_token": "a"}})
                .to_string(),
        );
        assert!(
            r[0].as_ref()
                .unwrap_err()
                .to_string()
                .contains("no chatgpt_account_id")
        );
        assert_eq!(parse_document("  ").len(), 1);
        assert_eq!(
            parse_document("[]")[0].as_ref().unwrap_err().to_string(),
            "array is empty"
        );
    }

    #[test]
    fn error_messages_never_echo_tokens() {
        let r = parse_document(
            &json!({"tokens": {"id_token": 5, "access_token": "secret-access"}}).to_string(),
        );
        let msg = r[0].as_ref().unwrap_err().to_string();
        assert!(!msg.contains("secret-access"), "{msg}");
    }
}
