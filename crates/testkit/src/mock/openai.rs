//! The OpenAI API: `/v1/chat/completions`, `/v1/responses`, `/v1/models`; and the same two
//! inference routes as Azure OpenAI serves them (see [`Api::Azure`]).

use std::sync::LazyLock;

use bytes::Bytes;
use http::{HeaderName, Response, StatusCode};
use serde_json::{Value, json};

use super::body::{Aborted, Frames, MockBody};
use super::fault::{AZURE_ACCESS_DENIED, Surface, in_stream_message};
use super::responses::{Answer, Failure};
use super::server::Cx;
use super::state::Scope;
use super::turn::{Reply, Turn, chat_turn, responses_turn};
use super::util::{
    azure_error, fnv64, header_str, json_response, json_value, now_secs, openai_error, query_param,
    set_header_str, sse_response,
};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const APIM_REQUEST_ID: HeaderName = HeaderName::from_static("apim-request-id");

/// Which API serves the OpenAI-shaped routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api<'a> {
    /// `api.openai.com/v1`: a bearer key (or `x-api-key`/`api-key`).
    OpenAi,
    /// Azure OpenAI under `/openai/…?api-version=V`: the `api-key` header; chat completions
    /// name the deployment in the path (`None` for `/openai/responses`, whose body `model` is
    /// the deployment).
    Azure { deployment: Option<&'a str> },
}

/// The deployment name Azure answers `DeploymentNotFound` for.
pub(crate) const MISSING_DEPLOYMENT: &str = "missing";

impl Api<'_> {
    fn token<'c>(&self, cx: &'c Cx) -> Option<&'c str> {
        match self {
            Api::OpenAi => cx.token(),
            Api::Azure { .. } => header_str(&cx.headers, "api-key"),
        }
    }

    fn missing_key(&self) -> Response<MockBody> {
        match self {
            Api::OpenAi => missing_key(),
            Api::Azure { .. } => azure_error(StatusCode::UNAUTHORIZED, "401", AZURE_ACCESS_DENIED),
        }
    }

    fn surface(&self) -> Surface {
        match self {
            Api::OpenAi => Surface::Api,
            Api::Azure { .. } => Surface::Azure,
        }
    }

    /// Azure's routing refusals: no `api-version` (404, as Azure answers), or the deployment
    /// named [`MISSING_DEPLOYMENT`] (the path's, else the body's `model`).
    fn refusal(&self, cx: &Cx, body: Option<&Value>) -> Option<Response<MockBody>> {
        let Api::Azure { deployment } = self else {
            return None;
        };
        if query_param(cx.uri.query(), "api-version").is_none_or(str::is_empty) {
            return Some(azure_error(
                StatusCode::NOT_FOUND,
                "404",
                "Resource not found",
            ));
        }
        let deployment =
            deployment.or_else(|| body.and_then(|b| b.get("model")).and_then(Value::as_str));
        (deployment == Some(MISSING_DEPLOYMENT)).then(|| {
            azure_error(
                StatusCode::NOT_FOUND,
                "DeploymentNotFound",
                "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again.",
            )
        })
    }

    fn request_ids(&self, r: &mut Response<MockBody>, id: u64) {
        let rid = format!("req_{id:016x}");
        set_header_str(r, REQUEST_ID, &rid);
        if let Api::Azure { .. } = self {
            set_header_str(r, APIM_REQUEST_ID, &rid);
        }
    }
}

fn missing_key() -> Response<MockBody> {
    openai_error(
        StatusCode::UNAUTHORIZED,
        "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth.",
        "invalid_request_error",
        None,
        None,
    )
}

fn invalid(message: &str, param: Option<&str>) -> Response<MockBody> {
    openai_error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        param,
        None,
    )
}

fn unsupported_encoding(cx: &Cx) -> Option<Response<MockBody>> {
    let enc = header_str(&cx.headers, "content-encoding")?;
    (!enc.eq_ignore_ascii_case("identity")).then(|| {
        openai_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("Unsupported content-encoding: {enc}"),
            "invalid_request_error",
            None,
            None,
        )
    })
}

/// The parsed body, its stream flag and its prompt-cache key fingerprint.
fn read_body(cx: &Cx) -> (Option<Value>, bool, Option<u64>) {
    let body: Option<Value> = serde_json::from_slice(&cx.body).ok();
    let stream = body
        .as_ref()
        .and_then(|b| b.get("stream"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let cache_key = body
        .as_ref()
        .and_then(|b| b.get("prompt_cache_key"))
        .and_then(Value::as_str)
        .map(|k| fnv64(k.as_bytes()));
    (body, stream, cache_key)
}

fn has_model(body: &Value) -> bool {
    body.get("model")
        .and_then(Value::as_str)
        .is_some_and(|m| !m.is_empty())
}

/// `POST /v1/chat/completions`, and Azure's
/// `POST /openai/deployments/{deployment}/chat/completions` (no `model` needed: the answer
/// names the deployment).
pub(crate) async fn chat(cx: &Cx, api: Api<'_>) -> Result<Response<MockBody>, Aborted> {
    let id = cx.inner.state.next_id();
    let Some(token) = api.token(cx) else {
        cx.intake(None, None, None);
        return Ok(api.missing_key());
    };
    let (body, stream, cache_key) = read_body(cx);
    let scope = if stream { Scope::Stream } else { Scope::Json };
    let intake = cx.intake(Some(token), Some(scope), cache_key);
    let shaping = match cx.shape(intake.fault.clone(), api.surface()).await {
        Ok(s) => s,
        Err(r) => return Ok(r),
    };
    if let Some(r) = api.refusal(cx, body.as_ref()) {
        return Ok(r);
    }
    if let Some(r) = unsupported_encoding(cx) {
        return Ok(r);
    }
    let Some(body) = body.filter(Value::is_object) else {
        return Ok(invalid(
            "We could not parse the JSON body of your request.",
            None,
        ));
    };
    let deployment = match api {
        Api::Azure { deployment } => deployment,
        Api::OpenAi => None,
    };
    if deployment.is_none() && !has_model(&body) {
        return Ok(invalid("you must provide a model parameter", Some("model")));
    }
    if body
        .get("messages")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        return Ok(invalid(
            "'messages' must be a non-empty array",
            Some("messages"),
        ));
    }
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut turn = chat_turn(&body);
    if let Some(d) = deployment {
        turn.model = d.to_string();
    }
    let (deltas, delay) = cx.pacing(&intake);
    let chat = Chat {
        turn: &turn,
        id,
        created: now_secs(),
        deltas,
        cached: intake.cache_hit,
    };
    let mut r = if stream {
        let failure = shaping
            .failure
            .as_ref()
            .map(|(code, _)| (code.as_str(), shaping.failure_after_content));
        let frames = chat.stream(include_usage, failure);
        sse_response(frames.into_body(shaping.plan(delay)))
    } else {
        let r = json_value(StatusCode::OK, &chat.completion());
        shaping.json(r)?
    };
    api.request_ids(&mut r, id);
    Ok(r)
}

struct Chat<'a> {
    turn: &'a Turn,
    id: u64,
    created: i64,
    deltas: usize,
    cached: bool,
}

impl Chat<'_> {
    fn pieces(&self) -> Vec<String> {
        self.turn.pieces(self.deltas)
    }

    fn call_id(&self) -> String {
        format!("call_{:016x}", self.id)
    }

    fn usage(&self, pieces: usize) -> Value {
        let prompt = self.turn.input_tokens;
        let completion = u64::try_from(pieces).unwrap_or(u64::MAX);
        let cached = if self.cached { prompt * 3 / 4 } else { 0 };
        json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt.saturating_add(completion),
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        })
    }

    fn completion(&self) -> Value {
        let pieces = self.pieces();
        let (message, finish) = match &self.turn.reply {
            Reply::Text(_) => (
                json!({"role": "assistant", "content": pieces.concat(), "refusal": null, "annotations": []}),
                "stop",
            ),
            Reply::ToolCall { name, arguments } => (
                json!({"role": "assistant", "content": null, "refusal": null, "annotations": [],
                       "tool_calls": [{"id": self.call_id(), "type": "function",
                                       "function": {"name": name, "arguments": arguments}}]}),
                "tool_calls",
            ),
        };
        json!({
            "id": format!("chatcmpl-{:016x}", self.id),
            "object": "chat.completion",
            "created": self.created,
            "model": self.turn.model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
            "usage": self.usage(pieces.len()),
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
        })
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, include_usage: bool) -> Value {
        let mut c = json!({
            "id": format!("chatcmpl-{:016x}", self.id),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.turn.model,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if let (true, Some(o)) = (include_usage, c.as_object_mut()) {
            o.insert("usage".into(), Value::Null);
        }
        c
    }

    /// `failure`: the error code, and whether it comes after the content chunks.
    fn stream(&self, include_usage: bool, failure: Option<(&str, bool)>) -> Frames {
        let pieces = self.pieces();
        let mut f =
            Frames::with_capacity(1024 + pieces.iter().map(|p| p.len() + 300).sum::<usize>());
        let first = match &self.turn.reply {
            Reply::Text(_) => json!({"role": "assistant", "content": "", "refusal": null}),
            Reply::ToolCall { name, .. } => json!({"role": "assistant", "content": null,
                "tool_calls": [{"index": 0, "id": self.call_id(), "type": "function",
                                "function": {"name": name, "arguments": ""}}]}),
        };
        f.data(&self.chunk(first, None, include_usage), false);
        let error_frame = |f: &mut Frames, code: &str| {
            let err = json!({"error": {"message": in_stream_message(code), "type": code,
                                       "param": null, "code": code}});
            f.data(&err, false);
        };
        if let Some((code, false)) = failure {
            error_frame(&mut f, code);
            return f;
        }
        for p in &pieces {
            let delta = match &self.turn.reply {
                Reply::Text(_) => json!({"content": p}),
                Reply::ToolCall { .. } => {
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": p}}]})
                }
            };
            f.data(&self.chunk(delta, None, include_usage), true);
        }
        if let Some((code, true)) = failure {
            error_frame(&mut f, code);
            return f;
        }
        let finish = match &self.turn.reply {
            Reply::Text(_) => "stop",
            Reply::ToolCall { .. } => "tool_calls",
        };
        f.data(&self.chunk(json!({}), Some(finish), include_usage), false);
        if include_usage {
            let mut last = self.chunk(json!({}), None, false);
            if let Some(o) = last.as_object_mut() {
                o.insert("choices".into(), json!([]));
                o.insert("usage".into(), self.usage(pieces.len()));
            }
            f.data(&last, false);
        }
        f.raw(b"data: [DONE]\n\n");
        f
    }
}

/// `POST /v1/responses` and Azure's `POST /openai/responses` (streaming or not; no Codex
/// rules).
pub(crate) async fn responses(cx: &Cx, api: Api<'_>) -> Result<Response<MockBody>, Aborted> {
    let id = cx.inner.state.next_id();
    let Some(token) = api.token(cx) else {
        cx.intake(None, None, None);
        return Ok(api.missing_key());
    };
    let (body, stream, cache_key) = read_body(cx);
    let scope = if stream { Scope::Stream } else { Scope::Json };
    let intake = cx.intake(Some(token), Some(scope), cache_key);
    let shaping = match cx.shape(intake.fault.clone(), api.surface()).await {
        Ok(s) => s,
        Err(r) => return Ok(r),
    };
    if let Some(r) = api.refusal(cx, body.as_ref()) {
        return Ok(r);
    }
    if let Some(r) = unsupported_encoding(cx) {
        return Ok(r);
    }
    let Some(body) = body.filter(Value::is_object) else {
        return Ok(invalid(
            "We could not parse the JSON body of your request.",
            None,
        ));
    };
    if !has_model(&body) {
        return Ok(invalid(
            "Missing required parameter: 'model'.",
            Some("model"),
        ));
    }
    if body.get("input").is_none_or(Value::is_null) {
        return Ok(invalid(
            "Missing required parameter: 'input'.",
            Some("input"),
        ));
    }
    let turn = responses_turn(&body);
    let (deltas, delay) = cx.pacing(&intake);
    let answer = Answer {
        turn: &turn,
        id,
        created_at: now_secs(),
        deltas,
        cached: intake.cache_hit,
        store: body.get("store").and_then(Value::as_bool).unwrap_or(true),
        account_tag: fnv64(token.as_bytes()),
    };
    let mut r = if stream {
        let failure = shaping.failure.as_ref().map(|(code, resets)| Failure {
            code,
            resets_in_secs: *resets,
            after_content: shaping.failure_after_content,
        });
        sse_response(answer.stream(failure).into_body(shaping.plan(delay)))
    } else {
        shaping.json(json_value(StatusCode::OK, &answer.completed()))?
    };
    api.request_ids(&mut r, id);
    Ok(r)
}

/// Azure OpenAI routes under `/openai/`: `POST deployments/{deployment}/chat/completions` and
/// `POST responses`, each with `?api-version=V`; anything else is Azure's 404.
pub(crate) async fn azure(cx: &Cx, path: &str) -> Result<Response<MockBody>, Aborted> {
    let deployment = path
        .strip_prefix("/openai/deployments/")
        .and_then(|rest| rest.strip_suffix("/chat/completions"))
        .filter(|d| !d.is_empty() && !d.contains('/'));
    let api = match (path, deployment) {
        (_, Some(d)) => Api::Azure {
            deployment: Some(d),
        },
        ("/openai/responses", None) => Api::Azure { deployment: None },
        _ => {
            cx.intake(header_str(&cx.headers, "api-key"), None, None);
            return Ok(azure_error(
                StatusCode::NOT_FOUND,
                "404",
                "Resource not found",
            ));
        }
    };
    if cx.method != http::Method::POST {
        cx.intake(header_str(&cx.headers, "api-key"), None, None);
        return Ok(azure_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "405",
            "Method not allowed",
        ));
    }
    match api {
        Api::Azure {
            deployment: Some(_),
        } => chat(cx, api).await,
        Api::Azure { deployment: None } | Api::OpenAi => responses(cx, api).await,
    }
}

/// Model ids the mock's `/v1/models` lists.
pub const OPENAI_MODELS_LIST: &[&str] =
    &["gpt-4.1", "gpt-4.1-mini", "gpt-5.3-codex", "gpt-5.4-mini"];

static OPENAI_MODELS: LazyLock<Bytes> = LazyLock::new(|| {
    let data: Vec<Value> = OPENAI_MODELS_LIST
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 1_700_000_000, "owned_by": "openai"}))
        .collect();
    Bytes::from(json!({"object": "list", "data": data}).to_string())
});

/// `GET /v1/models`.
pub(crate) async fn models(cx: &Cx) -> Result<Response<MockBody>, Aborted> {
    let Some(token) = cx.token() else {
        cx.intake(None, None, None);
        return Ok(missing_key());
    };
    let intake = cx.intake(Some(token), Some(Scope::Json), None);
    match cx.shape(intake.fault, Surface::Api).await {
        Ok(s) => s.json(json_response(StatusCode::OK, OPENAI_MODELS.clone())),
        Err(r) => Ok(r),
    }
}
