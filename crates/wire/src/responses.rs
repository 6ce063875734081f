//! Requests bound for the Codex backend's `/responses` (seed spec §10.2, §10.3, §18.3–18.4).
//!
//! The backend is stricter than the public Responses API: it only streams, refuses stored
//! responses and empty instructions, and rejects parameters the official client never sends.
//! [`normalize_codex_request`] rewrites any Responses body into the shape the official Codex
//! client sends; [`adjust_native_codex_request`] only applies per-key overrides and failover
//! stripping to bodies that already come from a Codex client.

use poolgate_core::ReasoningEffort;
use serde_json::{Map, Value, json};

use crate::{WireError, non_empty};

/// Used when neither the client nor a leading system message gave instructions: the backend
/// refuses empty ones, and this says nothing the user did not.
pub const NEUTRAL_INSTRUCTIONS: &str = "Follow the user's instructions.";

/// What `include` must carry whenever `reasoning` is set: with `store: false`, the encrypted
/// reasoning is the only way the next turn can continue the model's reasoning.
pub const ENCRYPTED_REASONING_INCLUDE: &str = "reasoning.encrypted_content";

/// The `client_metadata` key the official client puts its installation id under.
pub const INSTALLATION_ID_METADATA_KEY: &str = "x-codex-installation-id";

/// The fields the backend accepts on `/responses`; everything else is dropped.
pub const RESPONSES_ALLOWED_FIELDS: &[&str] = &[
    "model",
    "instructions",
    "input",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "reasoning",
    "service_tier",
    "store",
    "stream",
    "include",
    "prompt_cache_key",
    "client_metadata",
    "text",
];

/// The fields the backend accepts on `/responses/compact`.
pub const COMPACT_ALLOWED_FIELDS: &[&str] = &[
    "model",
    "instructions",
    "input",
    "tools",
    "parallel_tool_calls",
    "prompt_cache_key",
    "reasoning",
    "service_tier",
    "text",
];

/// Headers only a native Codex client sends; any of them marks the request as native.
pub const NATIVE_CODEX_HEADERS: &[&str] = &[
    "x-client-request-id",
    "x-openai-subagent",
    "x-codex-beta-features",
    "x-codex-window-id",
    "x-codex-turn-metadata",
    "x-codex-turn-state",
    "x-codex-parent-thread-id",
];

/// Client headers forwarded to the Codex backend as they are, when present.
pub const CODEX_PASSTHROUGH_HEADERS: &[&str] = &[
    "x-openai-subagent",
    "x-codex-beta-features",
    "x-codex-turn-metadata",
    "x-codex-parent-thread-id",
    "x-responsesapi-include-timing-metrics",
    "x-codex-inference-call-id",
    "x-oai-attestation",
    "x-openai-internal-codex-responses-lite",
];

/// Input item types that only the account which produced them can use: their payload is
/// encrypted for it, and with `store: false` an item without its payload is looked up by id
/// and fails on any other account.
const ACCOUNT_SCOPED_ITEM_TYPES: &[&str] = &["reasoning", "compaction", "compaction_summary"];

/// How to rewrite one request for one attempt. Build a fresh body per attempt: a rewrite for
/// one account (failover stripping, a different cache key) must not leak into the next.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CodexRequestOptions {
    /// Put into `client_metadata["x-codex-installation-id"]`.
    pub installation_id: Option<String>,
    /// The conversation anchor to use as `prompt_cache_key` when the client sent none.
    pub prompt_cache_key: Option<String>,
    /// Replace the client's own `prompt_cache_key` too (a native `conversation_id` wins).
    pub force_prompt_cache_key: bool,
    /// This attempt follows a failed one on another account: drop account-scoped items.
    pub failover: bool,
    /// The platform key's model override.
    pub model_override: Option<String>,
    /// The platform key's reasoning effort override.
    pub reasoning_effort_override: Option<ReasoningEffort>,
    /// The body goes to `/responses/compact` (its own allow-list, no streaming fields).
    pub compact: bool,
}

/// Rewrites a Responses request body into the shape the Codex backend accepts (§10.3).
/// Fails only on bodies no rewrite can save (not an object, `input` of a wrong type).
pub fn normalize_codex_request(
    body: Value,
    opts: &CodexRequestOptions,
) -> Result<Value, WireError> {
    let Value::Object(mut req) = body else {
        return Err(WireError::invalid("request body must be a JSON object"));
    };
    apply_overrides(&mut req, opts);

    let mut input = normalize_input(req.remove("input"))?;
    let mut instructions = match req.remove("instructions") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s,
        Some(_) => return Err(WireError::invalid("`instructions` must be a string")),
    };
    if instructions.trim().is_empty() {
        instructions = promote_leading_system_messages(&mut input);
    }
    if instructions.trim().is_empty() && !opts.compact {
        instructions = NEUTRAL_INSTRUCTIONS.to_string();
    }
    if !instructions.trim().is_empty() {
        req.insert("instructions".into(), Value::String(instructions));
    }
    req.insert("input".into(), Value::Array(input));

    normalize_tools(&mut req)?;
    if !matches!(req.get("parallel_tool_calls"), Some(Value::Bool(_))) {
        req.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
    if req.get("reasoning").is_some_and(Value::is_null) {
        req.remove("reasoning");
    }
    match req.remove("service_tier") {
        Some(Value::String(t)) if !opts.compact && is_priority_tier(&t) => {
            req.insert("service_tier".into(), Value::String("priority".into()));
        }
        _ => {}
    }
    apply_prompt_cache_key(&mut req, opts);

    if opts.compact {
        req.retain(|k, _| COMPACT_ALLOWED_FIELDS.contains(&k.as_str()));
    } else {
        req.insert("stream".into(), Value::Bool(true));
        req.insert("store".into(), Value::Bool(false));
        if is_blank(req.get("tool_choice")) {
            req.insert("tool_choice".into(), Value::String("auto".into()));
        }
        normalize_include(&mut req);
        if let Some(id) = &opts.installation_id {
            let meta = req.entry("client_metadata").or_insert_with(|| json!({}));
            if !meta.is_object() {
                *meta = json!({});
            }
            if let Some(m) = meta.as_object_mut() {
                m.insert(
                    INSTALLATION_ID_METADATA_KEY.into(),
                    Value::String(id.clone()),
                );
            }
        }
        req.retain(|k, _| RESPONSES_ALLOWED_FIELDS.contains(&k.as_str()));
    }

    let mut out = Value::Object(req);
    if opts.failover {
        strip_account_scoped_items(&mut out);
    }
    Ok(out)
}

/// For bodies from a native Codex client, which already follow the backend's rules: only the
/// key's overrides, a forced cache key and failover stripping are applied.
pub fn adjust_native_codex_request(
    body: Value,
    opts: &CodexRequestOptions,
) -> Result<Value, WireError> {
    let Value::Object(mut req) = body else {
        return Err(WireError::invalid("request body must be a JSON object"));
    };
    apply_overrides(&mut req, opts);
    if opts.force_prompt_cache_key {
        apply_prompt_cache_key(&mut req, opts);
    }
    if req.contains_key("reasoning") && !opts.compact {
        normalize_include(&mut req);
    }
    // Recent Codex CLIs send their base prompt as a leading developer message and no
    // `instructions`; the backend rejects a request without them. Leave the messages alone.
    let blank = req
        .get("instructions")
        .is_none_or(|v| v.as_str().is_none_or(|s| s.trim().is_empty()));
    if blank && !opts.compact {
        req.insert("instructions".into(), Value::from(NEUTRAL_INSTRUCTIONS));
    }
    let mut out = Value::Object(req);
    if opts.failover {
        strip_account_scoped_items(&mut out);
    }
    Ok(out)
}

/// Removes input items another account cannot use: reasoning and compaction items, and any
/// other item carrying `encrypted_content`. Returns how many were removed.
pub fn strip_account_scoped_items(body: &mut Value) -> usize {
    let Some(Value::Array(items)) = body.get_mut("input") else {
        return 0;
    };
    let before = items.len();
    items.retain(|item| {
        let scoped_type = item
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| ACCOUNT_SCOPED_ITEM_TYPES.contains(&t));
        let encrypted = item.get("encrypted_content").is_some_and(|v| !v.is_null());
        !(scoped_type || encrypted)
    });
    before - items.len()
}

/// Whether the request comes from a native Codex client (CLI, exec, app): its user agent or
/// originator names `codex_cli_rs`/`codex_exec`, or it carries a header only Codex sends.
pub fn is_native_codex_client<'a>(get: impl Fn(&str) -> Option<&'a str>) -> bool {
    let names_codex = |h: &str| {
        get(h).is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            v.contains("codex_cli_rs") || v.contains("codex_exec")
        })
    };
    names_codex("user-agent")
        || names_codex("originator")
        || NATIVE_CODEX_HEADERS
            .iter()
            .any(|h| non_empty(&get, h).is_some())
}

/// What the client sent (and what the gateway knows) that decides the Codex session headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionInput<'a> {
    /// Incoming `session-id` (or `session_id`).
    pub session_id: Option<&'a str>,
    /// Incoming `conversation_id`.
    pub conversation_id: Option<&'a str>,
    /// Incoming `x-codex-window-id`.
    pub window_id: Option<&'a str>,
    /// Incoming `x-codex-turn-state`.
    pub turn_state: Option<&'a str>,
    /// Incoming `x-client-request-id`.
    pub client_request_id: Option<&'a str>,
    /// The gateway's conversation anchor (e.g. a sticky id), used when the client sent none.
    pub anchor: Option<&'a str>,
    /// The body's `prompt_cache_key`.
    pub prompt_cache_key: Option<&'a str>,
    /// This attempt is a failover: affinity to the previous account is given up.
    pub failover: bool,
    /// A freshly generated id (UUID) used on failover or when nothing else anchors the
    /// session; the caller generates it so this stays pure.
    pub fresh_id: Option<&'a str>,
}

impl<'a> SessionInput<'a> {
    /// Reads the incoming session headers through a lookup (lower-case names).
    pub fn from_headers(get: impl Fn(&str) -> Option<&'a str>) -> Self {
        SessionInput {
            session_id: non_empty(&get, "session-id").or_else(|| non_empty(&get, "session_id")),
            conversation_id: non_empty(&get, "conversation_id")
                .or_else(|| non_empty(&get, "conversation-id")),
            window_id: non_empty(&get, "x-codex-window-id"),
            turn_state: non_empty(&get, "x-codex-turn-state"),
            client_request_id: non_empty(&get, "x-client-request-id"),
            ..SessionInput::default()
        }
    }
}

/// The session headers for one upstream attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHeaders {
    pub session_id: String,
    pub window_id: String,
    pub thread_id: String,
    pub client_request_id: String,
    /// Echoed only while affinity is kept and the session has a real anchor.
    pub turn_state: Option<String>,
}

impl SessionHeaders {
    /// As `(header name, value)` pairs, in the order the official client sends them.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("x-client-request-id", self.client_request_id.clone()),
            ("session-id", self.session_id.clone()),
            ("thread-id", self.thread_id.clone()),
            ("x-codex-window-id", self.window_id.clone()),
        ];
        if let Some(t) = &self.turn_state {
            out.push(("x-codex-turn-state", t.clone()));
        }
        out
    }
}

/// Derives `session-id`, `x-codex-window-id`, `thread-id`/`x-client-request-id` and whether to
/// echo `x-codex-turn-state` (§10.2 [H] profile). On failover every id becomes `fresh_id` and
/// turn state is dropped: a session or turn state minted for another account makes the backend
/// answer 400. `None` when nothing anchors the session and no fresh id was given.
pub fn codex_session_headers(input: &SessionInput<'_>) -> Option<SessionHeaders> {
    let clean = |v: Option<&str>| {
        v.map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    if input.failover {
        let fresh = clean(input.fresh_id)?;
        return Some(SessionHeaders {
            window_id: format!("{fresh}:0"),
            thread_id: fresh.clone(),
            client_request_id: fresh.clone(),
            session_id: fresh,
            turn_state: None,
        });
    }
    let anchored = clean(input.session_id)
        .or_else(|| clean(input.conversation_id))
        .or_else(|| clean(input.anchor))
        .or_else(|| clean(input.prompt_cache_key));
    let has_anchor = anchored.is_some();
    let session_id = anchored.or_else(|| clean(input.fresh_id))?;
    let window_id = match clean(input.window_id) {
        Some(w)
            if w == session_id
                || w.strip_prefix(session_id.as_str())
                    .is_some_and(|r| r.starts_with(':')) =>
        {
            w
        }
        _ => format!("{session_id}:0"),
    };
    let thread_id = clean(input.client_request_id)
        .or_else(|| clean(input.conversation_id))
        .or_else(|| clean(input.anchor))
        .unwrap_or_else(|| session_id.clone());
    let turn_state = if has_anchor {
        clean(input.turn_state)
    } else {
        None
    };
    Some(SessionHeaders {
        client_request_id: thread_id.clone(),
        thread_id,
        window_id,
        session_id,
        turn_state,
    })
}

fn apply_overrides(req: &mut Map<String, Value>, opts: &CodexRequestOptions) {
    if let Some(model) = &opts.model_override {
        req.insert("model".into(), Value::String(model.clone()));
    }
    if let Some(effort) = opts.reasoning_effort_override {
        let reasoning = req.entry("reasoning").or_insert_with(|| json!({}));
        if !reasoning.is_object() {
            *reasoning = json!({});
        }
        if let Some(r) = reasoning.as_object_mut() {
            r.insert("effort".into(), Value::String(effort.as_str().into()));
        }
    }
}

fn apply_prompt_cache_key(req: &mut Map<String, Value>, opts: &CodexRequestOptions) {
    let client_has_key = req
        .get("prompt_cache_key")
        .and_then(Value::as_str)
        .is_some_and(|k| !k.trim().is_empty());
    match &opts.prompt_cache_key {
        Some(key) if opts.force_prompt_cache_key || !client_has_key => {
            req.insert("prompt_cache_key".into(), Value::String(key.clone()));
        }
        _ if !client_has_key => {
            req.remove("prompt_cache_key");
        }
        _ => {}
    }
}

fn is_priority_tier(tier: &str) -> bool {
    matches!(
        tier.trim().to_ascii_lowercase().as_str(),
        "auto" | "fast" | "priority"
    )
}

fn is_blank(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        Some(Value::Object(m)) => m.is_empty(),
        Some(_) => false,
    }
}

fn normalize_include(req: &mut Map<String, Value>) {
    let mut include: Vec<Value> = match req.remove("include") {
        Some(Value::Array(a)) => a.into_iter().filter(Value::is_string).collect(),
        Some(Value::String(s)) if !s.is_empty() => vec![Value::String(s)],
        _ => Vec::new(),
    };
    if req.contains_key("reasoning")
        && !include
            .iter()
            .any(|v| v.as_str() == Some(ENCRYPTED_REASONING_INCLUDE))
    {
        include.push(Value::String(ENCRYPTED_REASONING_INCLUDE.into()));
    }
    req.insert("include".into(), Value::Array(include));
}

fn normalize_tools(req: &mut Map<String, Value>) -> Result<(), WireError> {
    let mut tools = match req.remove("tools") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.into_iter().map(crate::chat::flatten_tool).collect(),
        Some(_) => return Err(WireError::invalid("`tools` must be an array")),
    };
    for key in ["dynamic_tools", "dynamicTools"] {
        if let Some(Value::Array(dynamic)) = req.remove(key) {
            tools.extend(dynamic.iter().filter_map(dynamic_tool));
        }
    }
    req.insert("tools".into(), Value::Array(tools));
    Ok(())
}

/// A Codex "dynamic tool" `{name, description, inputSchema}` as a function tool.
fn dynamic_tool(t: &Value) -> Option<Value> {
    let name = t.get("name").and_then(Value::as_str)?;
    let parameters = ["inputSchema", "input_schema", "parameters"]
        .iter()
        .find_map(|k| t.get(*k).filter(|v| v.is_object()))
        .cloned()
        .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
    Some(json!({
        "type": "function",
        "name": name,
        "description": t.get("description").and_then(Value::as_str).unwrap_or_default(),
        "parameters": parameters,
        "strict": false,
    }))
}

fn normalize_input(input: Option<Value>) -> Result<Vec<Value>, WireError> {
    let items = match input {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => vec![text_message("user", text)],
        Some(Value::Array(items)) => items,
        Some(obj @ Value::Object(_)) => vec![obj],
        Some(_) => {
            return Err(WireError::invalid(
                "`input` must be a string, an object or an array",
            ));
        }
    };
    items.into_iter().map(normalize_item).collect()
}

fn text_message(role: &str, text: String) -> Value {
    let part = if role == "assistant" {
        "output_text"
    } else {
        "input_text"
    };
    json!({"type": "message", "role": role, "content": [{"type": part, "text": text}]})
}

/// Gives bare `{role, content}` messages a type and typed content parts.
fn normalize_item(item: Value) -> Result<Value, WireError> {
    let mut obj = match item {
        Value::Object(o) => o,
        Value::String(text) => return Ok(text_message("user", text)),
        _ => return Err(WireError::invalid("`input` items must be objects")),
    };
    let Some(role) = obj.get("role").and_then(Value::as_str).map(str::to_string) else {
        return Ok(Value::Object(obj));
    };
    if !obj.contains_key("type") {
        obj.insert("type".into(), Value::String("message".into()));
    }
    if obj.get("type").and_then(Value::as_str) != Some("message") {
        return Ok(Value::Object(obj));
    }
    let text_part = if role == "assistant" {
        "output_text"
    } else {
        "input_text"
    };
    match obj.remove("content") {
        Some(Value::String(text)) => {
            obj.insert("content".into(), json!([{"type": text_part, "text": text}]));
        }
        Some(Value::Array(parts)) => {
            let parts = parts
                .into_iter()
                .map(|p| match p {
                    Value::String(text) => json!({"type": text_part, "text": text}),
                    Value::Object(mut o) => {
                        if o.get("type").and_then(Value::as_str) == Some("text") {
                            o.insert("type".into(), Value::String(text_part.into()));
                        }
                        Value::Object(o)
                    }
                    other => other,
                })
                .collect();
            obj.insert("content".into(), Value::Array(parts));
        }
        Some(other) => {
            obj.insert("content".into(), other);
        }
        None => {
            obj.insert("content".into(), json!([]));
        }
    }
    Ok(Value::Object(obj))
}

/// Moves the run of system/developer messages at the head of `input` into one instructions
/// string, text parts joined with blank lines.
fn promote_leading_system_messages(input: &mut Vec<Value>) -> String {
    let count = input
        .iter()
        .take_while(|item| {
            item.get("type").and_then(Value::as_str) == Some("message")
                && matches!(
                    item.get("role").and_then(Value::as_str),
                    Some("system" | "developer")
                )
        })
        .count();
    let mut texts = Vec::new();
    for item in input.drain(..count) {
        match item.get("content") {
            Some(Value::String(s)) => texts.push(s.clone()),
            Some(Value::Array(parts)) => texts.extend(
                parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .map(str::to_string),
            ),
            _ => {}
        }
    }
    texts.retain(|t| !t.trim().is_empty());
    texts.join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header_lookup;

    #[test]
    fn native_requests_get_instructions_but_keep_their_messages() {
        let dev = serde_json::json!({"type": "message", "role": "developer",
            "content": [{"type": "input_text", "text": "base prompt"}]});
        let body = serde_json::json!({"model": "gpt-5", "input": [dev.clone()], "stream": true});
        let out = adjust_native_codex_request(body, &CodexRequestOptions::default()).unwrap();
        assert_eq!(out["instructions"], NEUTRAL_INSTRUCTIONS);
        assert_eq!(out["input"][0], dev);
        let body = serde_json::json!({"model": "gpt-5", "instructions": "mine", "input": []});
        let out = adjust_native_codex_request(body, &CodexRequestOptions::default()).unwrap();
        assert_eq!(out["instructions"], "mine");
        let compact = CodexRequestOptions {
            compact: true,
            ..Default::default()
        };
        let out = adjust_native_codex_request(serde_json::json!({"input": []}), &compact).unwrap();
        assert!(out.get("instructions").is_none());
    }

    #[test]
    fn native_client_detection() {
        let cli = [(
            "User-Agent",
            "codex_cli_rs/0.130.0 (Mac OS 26.0.1; arm64) iTerm",
        )];
        assert!(is_native_codex_client(header_lookup(&cli)));
        let exec = [("originator", "codex_exec")];
        assert!(is_native_codex_client(header_lookup(&exec)));
        let by_header = [("user-agent", "curl/8"), ("X-Codex-Turn-State", "ts")];
        assert!(is_native_codex_client(header_lookup(&by_header)));
        let sdk = [
            ("user-agent", "OpenAI/Python 1.99"),
            ("x-stainless-lang", "python"),
        ];
        assert!(!is_native_codex_client(header_lookup(&sdk)));
        let blank = [("x-client-request-id", "  ")];
        assert!(!is_native_codex_client(header_lookup(&blank)));
    }

    #[test]
    fn session_headers_keep_affinity() {
        let input = SessionInput {
            session_id: Some("s1"),
            window_id: Some("s1:3"),
            turn_state: Some("ts"),
            client_request_id: Some("c1"),
            fresh_id: Some("new"),
            ..Default::default()
        };
        let h = codex_session_headers(&input).unwrap();
        assert_eq!(
            h.to_pairs(),
            vec![
                ("x-client-request-id", "c1".to_string()),
                ("session-id", "s1".to_string()),
                ("thread-id", "c1".to_string()),
                ("x-codex-window-id", "s1:3".to_string()),
                ("x-codex-turn-state", "ts".to_string()),
            ]
        );
        // A window id minted for another session is replaced; `s10` is not under `s1`.
        let other = SessionInput {
            window_id: Some("s10:1"),
            ..input
        };
        assert_eq!(codex_session_headers(&other).unwrap().window_id, "s1:0");
    }

    #[test]
    fn session_headers_fall_back_and_regenerate() {
        let from_key = SessionInput {
            prompt_cache_key: Some("pck"),
            turn_state: Some("t"),
            ..Default::default()
        };
        let h = codex_session_headers(&from_key).unwrap();
        assert_eq!(
            (
                h.session_id.as_str(),
                h.window_id.as_str(),
                h.thread_id.as_str()
            ),
            ("pck", "pck:0", "pck")
        );
        assert_eq!(h.turn_state.as_deref(), Some("t"));
        // Orphaned turn state (nothing anchors the session) is dropped.
        let orphan = SessionInput {
            turn_state: Some("t"),
            fresh_id: Some("f"),
            ..Default::default()
        };
        let h = codex_session_headers(&orphan).unwrap();
        assert_eq!((h.session_id.as_str(), h.turn_state), ("f", None));
        assert_eq!(codex_session_headers(&SessionInput::default()), None);
        let failover = SessionInput {
            session_id: Some("s1"),
            turn_state: Some("t"),
            conversation_id: Some("c"),
            failover: true,
            fresh_id: Some("f2"),
            ..Default::default()
        };
        let h = codex_session_headers(&failover).unwrap();
        assert_eq!(
            h.to_pairs(),
            vec![
                ("x-client-request-id", "f2".to_string()),
                ("session-id", "f2".to_string()),
                ("thread-id", "f2".to_string()),
                ("x-codex-window-id", "f2:0".to_string()),
            ]
        );
    }

    #[test]
    fn session_input_reads_either_spelling() {
        let pairs = [
            ("Session_id", "a"),
            ("conversation_id", "b"),
            ("x-codex-turn-state", "t"),
        ];
        let input = SessionInput::from_headers(header_lookup(&pairs));
        assert_eq!(
            (input.session_id, input.conversation_id, input.turn_state),
            (Some("a"), Some("b"), Some("t"))
        );
        let pairs = [("session-id", "h"), ("session_id", "u")];
        assert_eq!(
            SessionInput::from_headers(header_lookup(&pairs)).session_id,
            Some("h")
        );
    }

    #[test]
    fn non_object_bodies_and_bad_input_are_refused() {
        let opts = CodexRequestOptions::default();
        assert!(normalize_codex_request(json!([1]), &opts).is_err());
        assert!(normalize_codex_request(json!({"input": 5}), &opts).is_err());
        assert!(normalize_codex_request(json!({"input": [5]}), &opts).is_err());
        assert!(normalize_codex_request(json!({"instructions": 5}), &opts).is_err());
        assert!(normalize_codex_request(json!({"tools": {}}), &opts).is_err());
        assert!(adjust_native_codex_request(json!("x"), &opts).is_err());
    }

    #[test]
    fn native_adjustment_is_minimal() {
        let opts = CodexRequestOptions {
            model_override: Some("gpt-5.4".into()),
            reasoning_effort_override: Some(ReasoningEffort::High),
            failover: true,
            ..Default::default()
        };
        let body = json!({
            "model": "gpt-5", "temperature": 1, "include": [],
            "input": [{"type": "reasoning", "encrypted_content": "x", "summary": []},
                      {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
        });
        let out = adjust_native_codex_request(body, &opts).unwrap();
        assert_eq!(
            out,
            json!({
                "model": "gpt-5.4", "temperature": 1, "include": ["reasoning.encrypted_content"],
                "reasoning": {"effort": "high"}, "instructions": NEUTRAL_INSTRUCTIONS,
                "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
            })
        );
    }
}
