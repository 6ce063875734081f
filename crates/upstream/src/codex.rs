//! The Codex backend's URL and header profile (seed spec §10.1, §10.2 [H], §18.1–18.2).

use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue};
use poolgate_core::account::CODEX_DEFAULT_BASE_URL;
use poolgate_wire::responses::{CODEX_PASSTHROUGH_HEADERS, SessionInput, codex_session_headers};
use sha2::{Digest, Sha256};

use crate::{Endpoint, UpstreamError, bearer};

/// What the official client sends as `originator`.
pub const CODEX_ORIGINATOR: &str = "codex_cli_rs";
/// The Codex CLI version the default header profile claims.
pub const DEFAULT_CODEX_VERSION: &str = "0.130.0";

const ORIGINATOR: HeaderName = HeaderName::from_static("originator");
const CHATGPT_ACCOUNT_ID: HeaderName = HeaderName::from_static("chatgpt-account-id");
const INSTALLATION_ID: HeaderName = HeaderName::from_static("x-codex-installation-id");

/// The account's Codex base without a trailing slash. A bare ChatGPT origin gets the
/// backend path appended, as people often paste just the host.
pub fn codex_base_url(base: Option<&str>) -> String {
    let base = base
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .unwrap_or(CODEX_DEFAULT_BASE_URL)
        .trim_end_matches('/');
    let bare_chatgpt = ["https://chatgpt.com", "https://chat.openai.com"]
        .iter()
        .any(|o| base.eq_ignore_ascii_case(o));
    if bare_chatgpt {
        format!("{base}/backend-api/codex")
    } else {
        base.to_string()
    }
}

/// `codex_cli_rs/<version> (<os>; <arch>) poolgate/<version>`: the official client's shape.
pub fn codex_user_agent(version: &str) -> String {
    let os = match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Mac OS",
        "windows" => "Windows",
        other => other,
    };
    format!(
        "{CODEX_ORIGINATOR}/{version} ({os}; {}) poolgate/{}",
        std::env::consts::ARCH,
        env!("CARGO_PKG_VERSION")
    )
}

/// A stable UUID-shaped installation id per account: each account looks like one Codex
/// installation to the backend, across gateway replicas and restarts.
pub fn installation_id_for(account_id: &str) -> String {
    let d = Sha256::digest(format!("poolgate-installation:{account_id}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

pub(crate) struct CodexHeaderInput<'a> {
    pub endpoint: Endpoint,
    pub access_token: &'a str,
    pub chatgpt_account_id: Option<&'a str>,
    pub client_headers: &'a HeaderMap,
    pub session: Option<&'a SessionInput<'a>>,
    pub default_user_agent: &'a HeaderValue,
    pub installation_id: &'a str,
    pub has_body: bool,
    pub extra: &'a [(HeaderName, HeaderValue)],
}

fn names_codex(v: &HeaderValue) -> bool {
    v.to_str()
        .is_ok_and(|s| s.to_ascii_lowercase().contains("codex"))
}

/// The request headers for one Codex attempt. The client's own headers are not forwarded,
/// except the Codex ones listed in [`CODEX_PASSTHROUGH_HEADERS`] and a Codex client's own
/// user agent and originator; its `Authorization`, `x-api-key`, `anthropic-*`,
/// `x-stainless-*` and `chatgpt-account-id` never are.
pub(crate) fn codex_headers(input: &CodexHeaderInput<'_>) -> Result<HeaderMap, UpstreamError> {
    let mut h = HeaderMap::with_capacity(20);
    h.insert(AUTHORIZATION, bearer(input.access_token)?);
    if let Some(id) = input.chatgpt_account_id.filter(|s| !s.trim().is_empty()) {
        let v = HeaderValue::from_str(id.trim()).map_err(|_| {
            UpstreamError::Config("the account's chatgpt_account_id is not a valid header".into())
        })?;
        h.insert(CHATGPT_ACCOUNT_ID, v);
    }
    if input.has_body {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    h.insert(
        ACCEPT,
        HeaderValue::from_static(match input.endpoint {
            Endpoint::Responses => "text/event-stream",
            _ => "application/json",
        }),
    );
    let client = input.client_headers;
    let ua = client
        .get(USER_AGENT)
        .filter(|v| names_codex(v))
        .unwrap_or(input.default_user_agent);
    h.insert(USER_AGENT, ua.clone());
    let originator = client
        .get(&ORIGINATOR)
        .filter(|v| names_codex(v))
        .cloned()
        .unwrap_or(HeaderValue::from_static(CODEX_ORIGINATOR));
    h.insert(ORIGINATOR, originator);
    for name in CODEX_PASSTHROUGH_HEADERS {
        if let Some(v) = client.get(*name).filter(|v| !v.is_empty()) {
            h.insert(HeaderName::from_static(name), v.clone());
        }
    }
    if let Some(session) = input.session.and_then(codex_session_headers) {
        for (name, value) in session.to_pairs() {
            // Ids come from client headers or UUIDs; one that is not a valid header value
            // is left out rather than failing the request.
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(HeaderName::from_static(name), v);
            }
        }
    }
    if input.endpoint == Endpoint::ResponsesCompact
        && let Ok(v) = HeaderValue::from_str(input.installation_id)
    {
        h.insert(INSTALLATION_ID, v);
    }
    for (n, v) in input.extra {
        h.insert(n.clone(), v.clone());
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_static(n),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn input<'a>(
        endpoint: Endpoint,
        client: &'a HeaderMap,
        session: Option<&'a SessionInput<'a>>,
        ua: &'a HeaderValue,
    ) -> CodexHeaderInput<'a> {
        CodexHeaderInput {
            endpoint,
            access_token: "at-123",
            chatgpt_account_id: Some("ws-1"),
            client_headers: client,
            session,
            default_user_agent: ua,
            installation_id: "inst",
            has_body: true,
            extra: &[],
        }
    }

    #[test]
    fn profile_and_forbidden_client_headers() {
        let c = client(&[
            ("authorization", "Bearer pgk_client"),
            ("x-api-key", "pgk_client"),
            ("anthropic-version", "2023-06-01"),
            ("x-stainless-os", "Linux"),
            ("chatgpt-account-id", "someone-else"),
            ("x-codex-turn-metadata", "{\"a\":1}"),
            ("x-openai-subagent", "review"),
            ("user-agent", "OpenAI/Python 1.0"),
        ]);
        let ua = HeaderValue::from_str(&codex_user_agent("0.130.0")).unwrap();
        let session = SessionInput {
            session_id: Some("sess-1"),
            ..SessionInput::default()
        };
        let h = codex_headers(&input(Endpoint::Responses, &c, Some(&session), &ua)).unwrap();
        assert_eq!(h["authorization"], "Bearer at-123");
        assert_eq!(h["chatgpt-account-id"], "ws-1");
        assert_eq!(h["originator"], "codex_cli_rs");
        assert_eq!(h["accept"], "text/event-stream");
        assert_eq!(h["content-type"], "application/json");
        assert!(
            h["user-agent"]
                .to_str()
                .unwrap()
                .starts_with("codex_cli_rs/0.130.0 (")
        );
        assert_eq!(h["x-codex-turn-metadata"], "{\"a\":1}");
        assert_eq!(h["x-openai-subagent"], "review");
        assert_eq!(h["session-id"], "sess-1");
        assert_eq!(h["x-codex-window-id"], "sess-1:0");
        assert!(h.get("x-api-key").is_none());
        assert!(h.get("anthropic-version").is_none());
        assert!(h.get("x-stainless-os").is_none());
        assert!(h.get("x-codex-installation-id").is_none());
        assert_eq!(h.get_all("chatgpt-account-id").iter().count(), 1);
    }

    #[test]
    fn codex_clients_keep_their_identity_and_compact_gets_installation() {
        let c = client(&[
            (
                "user-agent",
                "codex_cli_rs/0.140.0 (Mac OS 26.0; arm64) iTerm",
            ),
            ("originator", "codex_exec"),
        ]);
        let ua = HeaderValue::from_static("codex_cli_rs/1");
        let h = codex_headers(&input(Endpoint::ResponsesCompact, &c, None, &ua)).unwrap();
        assert!(
            h["user-agent"]
                .to_str()
                .unwrap()
                .starts_with("codex_cli_rs/0.140.0")
        );
        assert_eq!(h["originator"], "codex_exec");
        assert_eq!(h["accept"], "application/json");
        assert_eq!(h["x-codex-installation-id"], "inst");
        assert!(h.get("session-id").is_none());
    }

    #[test]
    fn non_ascii_turn_metadata_passes_through() {
        let mut c = HeaderMap::new();
        c.insert(
            "x-codex-turn-metadata",
            HeaderValue::from_bytes("cwd=/home/jos\u{e9}".as_bytes()).unwrap(),
        );
        let ua = HeaderValue::from_static("codex_cli_rs/1");
        let h = codex_headers(&input(Endpoint::Responses, &c, None, &ua)).unwrap();
        assert_eq!(
            h["x-codex-turn-metadata"].as_bytes(),
            "cwd=/home/jos\u{e9}".as_bytes()
        );
    }

    #[test]
    fn base_urls_and_installation_ids() {
        assert_eq!(codex_base_url(None), CODEX_DEFAULT_BASE_URL);
        assert_eq!(
            codex_base_url(Some("https://chat.openai.com")),
            "https://chat.openai.com/backend-api/codex"
        );
        let a = installation_id_for("acc_1");
        assert_eq!(a, installation_id_for("acc_1"));
        assert_ne!(a, installation_id_for("acc_2"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }
}
