//! The ChatGPT Codex backend: `/backend-api/codex/{responses,responses/compact,models}` and
//! the usage endpoint. Requests are checked the way the real backend refuses them, so a
//! gateway that forgets a Codex rule (seed spec §10.3, §18) fails loudly.

use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use serde_json::{Value, json};

use super::body::{Aborted, MockBody};
use super::fault::{Fault, Surface};
use super::responses::{Answer, Failure, encrypted_content, encrypted_owner};
use super::server::Cx;
use super::state::Scope;
use super::turn::{Reply, responses_turn};
use super::usage::UsageNow;
use super::util::{
    detail, fnv64, header_str, json_response, json_value, now_secs, set_header, set_header_str,
    sse_response,
};

/// Top-level parameters the Codex backend refuses (the gateway's allow-list drops them).
const UNSUPPORTED: &[&str] = &[
    "temperature",
    "top_p",
    "max_output_tokens",
    "max_tokens",
    "metadata",
    "user",
    "truncation",
    "previous_response_id",
    "messages",
    "frequency_penalty",
    "presence_penalty",
    "stop",
    "n",
    "seed",
    "logprobs",
    "top_logprobs",
    "stream_options",
    "background",
];

const TURN_STATE: HeaderName = HeaderName::from_static("x-codex-turn-state");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const MODELS_ETAG: HeaderName = HeaderName::from_static("x-models-etag");
const ETAG_VALUE: &str = "\"mock-models-1\"";

/// The account a request acts for: the `chatgpt-account-id` header (reasoning items and turn
/// state belong to the account, and survive a token refresh).
fn account_tag(cx: &Cx) -> u64 {
    fnv64(
        header_str(&cx.headers, "chatgpt-account-id")
            .unwrap_or_default()
            .as_bytes(),
    )
}

fn turn_state_owner(v: &str) -> Option<u64> {
    let rest = v.strip_prefix("ts_")?;
    let (tag, _) = rest.split_once('_')?;
    u64::from_str_radix(tag, 16).ok()
}

/// Adds the Codex answer headers: usage windows and a request id.
fn codex_headers(r: &mut Response<MockBody>, usage: &UsageNow, id: u64) {
    usage.add_headers(r);
    set_header_str(r, REQUEST_ID, &format!("req_{id:016x}"));
}

/// `POST /backend-api/codex/responses` (stream) and `/responses/compact` (JSON).
pub(crate) async fn responses(cx: &Cx, compact: bool) -> Result<Response<MockBody>, Aborted> {
    let id = cx.inner.state.next_id();
    let Some(token) = cx.token() else {
        cx.intake(None, None, None);
        return Ok(detail(StatusCode::UNAUTHORIZED, "Unauthorized"));
    };
    let body: Option<Value> = serde_json::from_slice(&cx.body).ok();
    let cache_key = body
        .as_ref()
        .and_then(|b| b.get("prompt_cache_key"))
        .and_then(Value::as_str)
        .map(|k| fnv64(k.as_bytes()));
    let scope = if compact { Scope::Json } else { Scope::Stream };
    let intake = cx.intake(Some(token), Some(scope), cache_key);
    let now = now_secs();
    let exhausted = match &intake.fault {
        Some(Fault::UsageLimit { resets_in_secs }) => Some(*resets_in_secs),
        _ => None,
    };
    let usage = UsageNow::compute(intake.usage.as_deref(), exhausted, now);
    let shaping = match cx.shape(intake.fault.clone(), Surface::Api).await {
        Ok(s) => s,
        Err(mut r) => {
            codex_headers(&mut r, &usage, id);
            return Ok(r);
        }
    };
    let body = match validate(cx, body, compact) {
        Ok(b) => b,
        Err(mut r) => {
            codex_headers(&mut r, &usage, id);
            return Ok(*r);
        }
    };
    let turn = responses_turn(&body);
    let (deltas, delay) = cx.pacing(&intake);
    let tag = account_tag(cx);
    if compact {
        let summary = match &turn.reply {
            Reply::Text(t) => t.clone(),
            Reply::ToolCall { name, .. } => format!("tool call {name}"),
        };
        let out = json!({
            "output": [
                {"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": format!("compacted: {summary}")}]},
                {"type": "compaction", "encrypted_content": encrypted_content(tag, id)},
            ],
            "usage": {"input_tokens": turn.input_tokens, "output_tokens": 1,
                      "total_tokens": turn.input_tokens.saturating_add(1)},
        });
        let mut r = json_value(StatusCode::OK, &out);
        codex_headers(&mut r, &usage, id);
        return shaping.json(r);
    }
    let answer = Answer {
        turn: &turn,
        id,
        created_at: now,
        deltas,
        cached: intake.cache_hit,
        store: false,
        account_tag: tag,
    };
    let failure = shaping.failure.as_ref().map(|(code, resets)| Failure {
        code,
        resets_in_secs: *resets,
        after_content: shaping.failure_after_content,
    });
    let frames = answer.stream(failure);
    let mut r = sse_response(frames.into_body(shaping.plan(delay)));
    codex_headers(&mut r, &usage, id);
    let turn_state = header_str(&cx.headers, "x-codex-turn-state")
        .map(str::to_string)
        .unwrap_or_else(|| format!("ts_{tag:016x}_{id:x}"));
    set_header_str(&mut r, TURN_STATE, &turn_state);
    set_header(&mut r, MODELS_ETAG, HeaderValue::from_static(ETAG_VALUE));
    Ok(r)
}

/// The Codex rules a request must follow; the parsed body when it does.
/// Boxed: a refusal is the rare path, and keeps the `Result` small.
type Refusal = Box<Response<MockBody>>;

fn validate(cx: &Cx, body: Option<Value>, compact: bool) -> Result<Value, Refusal> {
    let bad = |msg: &str| Box::new(detail(StatusCode::BAD_REQUEST, msg));
    if let Some(enc) = header_str(&cx.headers, "content-encoding")
        && !enc.eq_ignore_ascii_case("identity")
    {
        return Err(Box::new(detail(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("Unsupported content-encoding: {enc}"),
        )));
    }
    if header_str(&cx.headers, "chatgpt-account-id").is_none() {
        return Err(bad("Missing chatgpt-account-id header"));
    }
    let Some(body) = body.filter(Value::is_object) else {
        return Err(bad("Request body must be a JSON object"));
    };
    if body
        .get("model")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(bad("Model is required"));
    }
    if let Some(p) = UNSUPPORTED.iter().find(|p| body.get(**p).is_some()) {
        return Err(bad(&format!("Unsupported parameter: {p}")));
    }
    if compact {
        if body.get("stream").is_some_and(|s| s != &Value::Bool(false)) {
            return Err(bad("Unsupported parameter: stream"));
        }
    } else {
        if body
            .get("instructions")
            .and_then(Value::as_str)
            .is_none_or(|s| s.trim().is_empty())
        {
            return Err(bad("Instructions are required"));
        }
        if body.get("store") != Some(&Value::Bool(false)) {
            return Err(bad("Store must be set to false"));
        }
        if body.get("stream") != Some(&Value::Bool(true)) {
            return Err(bad("Stream must be set to true"));
        }
    }
    let Some(items) = body.get("input").and_then(Value::as_array) else {
        return Err(bad("Input must be a list"));
    };
    let tag = account_tag(cx);
    for item in items {
        let foreign = item
            .get("encrypted_content")
            .and_then(Value::as_str)
            .and_then(encrypted_owner)
            .is_some_and(|owner| owner != tag);
        if foreign {
            let item_id = item.get("id").and_then(Value::as_str).unwrap_or("item");
            return Err(Box::new(json_value(
                StatusCode::BAD_REQUEST,
                &json!({"error": {
                    "message": format!("The encrypted content for item {item_id} could not be verified."),
                    "type": "invalid_request_error",
                    "param": null,
                    "code": "invalid_encrypted_content",
                }}),
            )));
        }
    }
    if let Some(ts) = header_str(&cx.headers, "x-codex-turn-state")
        && turn_state_owner(ts).is_some_and(|owner| owner != tag)
    {
        return Err(bad("Invalid x-codex-turn-state for this account"));
    }
    Ok(body)
}

/// `GET /backend-api/codex/models`: the Codex catalog (`{"models":[…]}`).
pub(crate) async fn models(cx: &Cx) -> Result<Response<MockBody>, Aborted> {
    let Some(token) = cx.token() else {
        cx.intake(None, None, None);
        return Ok(detail(StatusCode::UNAUTHORIZED, "Unauthorized"));
    };
    let intake = cx.intake(Some(token), Some(Scope::Json), None);
    let shaping = match cx.shape(intake.fault, Surface::Api).await {
        Ok(s) => s,
        Err(r) => return Ok(r),
    };
    let mut r = json_response(StatusCode::OK, CODEX_MODELS.clone());
    set_header(
        &mut r,
        http::header::ETAG,
        HeaderValue::from_static(ETAG_VALUE),
    );
    set_header(&mut r, MODELS_ETAG, HeaderValue::from_static(ETAG_VALUE));
    shaping.json(r)
}

/// `GET /backend-api/wham/usage` (and `/api/codex/usage`).
pub(crate) async fn usage(cx: &Cx) -> Result<Response<MockBody>, Aborted> {
    let Some(token) = cx.token() else {
        cx.intake(None, None, None);
        return Ok(detail(StatusCode::UNAUTHORIZED, "Unauthorized"));
    };
    let intake = cx.intake(Some(token), Some(Scope::Usage), None);
    let shaping = match cx.shape(intake.fault, Surface::Api).await {
        Ok(s) => s,
        Err(r) => return Ok(r),
    };
    if header_str(&cx.headers, "chatgpt-account-id").is_none() {
        return Ok(detail(
            StatusCode::BAD_REQUEST,
            "Missing chatgpt-account-id header",
        ));
    }
    let usage = UsageNow::compute(
        intake.usage.as_deref(),
        intake.usage_exhausted_for,
        now_secs(),
    );
    shaping.json(json_value(StatusCode::OK, &usage.body()))
}

/// Model slugs the mock's Codex catalog lists.
pub const CODEX_MODELS_LIST: &[(&str, &str)] = &[
    ("gpt-5.3-codex", "GPT-5.3 Codex"),
    ("gpt-5.4-mini", "GPT-5.4 Mini"),
];

static CODEX_MODELS: LazyLock<Bytes> = LazyLock::new(|| {
    let models: Vec<Value> = CODEX_MODELS_LIST
        .iter()
        .enumerate()
        .map(|(i, (slug, name))| {
            json!({
                "slug": slug,
                "display_name": name,
                "description": format!("{name} (mock upstream)"),
                "default_reasoning_level": "medium",
                "supported_reasoning_levels": [
                    {"effort": "low", "description": "Fast responses with lighter reasoning"},
                    {"effort": "medium", "description": "Balances speed and reasoning depth"},
                    {"effort": "high", "description": "Greater reasoning depth for complex problems"},
                ],
                "shell_type": "shell_command",
                "visibility": "list",
                "supported_in_api": true,
                "priority": i,
                "availability_nux": null,
                "upgrade": null,
                "base_instructions": "You are a coding agent answering through a mock upstream.",
                "supports_reasoning_summaries": true,
                "default_reasoning_summary": "auto",
                "support_verbosity": false,
                "default_verbosity": null,
                "apply_patch_tool_type": "freeform",
                "truncation_policy": {"mode": "tokens", "limit": 10_000},
                "supports_parallel_tool_calls": true,
                "context_window": 272_000,
                "experimental_supported_tools": [],
                "input_modalities": ["text", "image"],
            })
        })
        .collect();
    Bytes::from(json!({ "models": models }).to_string())
});
