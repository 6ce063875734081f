//! The request pipeline: authenticate, read the body, resolve the model, plan the
//! candidates, and walk them (the attempt loop) until one answers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response};
use hyper::body::Incoming;
use poolgate_core::report::{Observation, ObservationKind};
use poolgate_core::snapshot::AccountState;
use poolgate_core::snapshot::KeyGrant;
use poolgate_core::{Attempt, ErrorClass, Provider, Translation, glob};
use poolgate_routing::{Cooldown, NoRoute, ProviderSet, RouteRequest, SplitMix64, Translated};
use poolgate_upstream::{BodyStream, Endpoint, UpstreamClient, UpstreamError, UpstreamRequest};
use poolgate_wire::anthropic::{
    MessagesConversion, MessagesReplyOptions, MessagesStreamTranslator,
    anthropic_error_from_upstream, claude_anchor, count_tokens_body, messages_to_responses_request,
    parse_messages_request, responses_to_messages,
};
use poolgate_wire::chat::{
    ChatConversion, ChatStreamOptions, ChatStreamTranslator, chat_to_responses_request,
    responses_to_chat_completion,
};
use poolgate_wire::classify::{
    Outcome, StreamFailure, classify_response, parse_codex_usage_headers,
};
use poolgate_wire::responses::{
    CodexRequestOptions, SessionInput, adjust_native_codex_request, is_native_codex_client,
    normalize_codex_request,
};
use serde_json::Value;
use tracing::Instrument;

use crate::auth::authenticate;
use crate::body::{Peek, read_body};
use crate::clock::now_ms;
use crate::config::GatewayConfig;
use crate::finish::{Finish, new_log};
use crate::ids::{random_u64, request_id, request_id_at, uuid_v4};
use crate::metrics::Metrics;
use crate::models::models_body;
use crate::relay::{
    Aggregated, Dialect, Mode, Preflight, StreamFailureHook, aggregate, preflight, read_whole,
    relay_body,
};
use crate::report::Reporter;
use crate::respond::{self, Body, EVENT_STREAM, ErrorDialect, JSON};
use crate::state::{Cells, HealthCell, InflightGuard, Shared, View};
use crate::telemetry;

/// Everything a request needs from the gateway.
pub(crate) struct Gw {
    pub cfg: GatewayConfig,
    pub shared: Arc<Shared>,
    pub upstream: Arc<UpstreamClient>,
    pub reporter: Arc<Reporter>,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Health,
    Options,
    Models,
    Responses,
    Compact,
    Chat,
    /// Anthropic Messages (`/v1/messages`, also `?beta=true`), served by Codex accounts.
    Messages,
    /// `/v1/messages/count_tokens`, answered locally.
    CountTokens,
    NotFound,
    MethodNotAllowed,
}

impl Route {
    fn of(method: &Method, path: &str) -> Route {
        let p = path.strip_prefix("/v1").unwrap_or(path);
        let p = p.strip_suffix('/').filter(|s| !s.is_empty()).unwrap_or(p);
        let route = match (path, p) {
            ("/health" | "/healthz", _) => Route::Health,
            (_, "/responses") => Route::Responses,
            (_, "/responses/compact") => Route::Compact,
            (_, "/chat/completions") => Route::Chat,
            (_, "/messages") => Route::Messages,
            (_, "/messages/count_tokens") => Route::CountTokens,
            (_, "/models") => Route::Models,
            _ => return Route::NotFound,
        };
        if method == Method::OPTIONS {
            return Route::Options;
        }
        let allowed = match route {
            Route::Health | Route::Models => method == Method::GET || method == Method::HEAD,
            _ => method == Method::POST,
        };
        if allowed {
            route
        } else {
            Route::MethodNotAllowed
        }
    }

    fn label(self) -> &'static str {
        match self {
            Route::Responses => "responses",
            Route::Compact => "responses_compact",
            Route::Chat => "chat_completions",
            Route::Messages => "messages",
            Route::CountTokens => "messages_count_tokens",
            Route::Models => "models",
            Route::Health => "health",
            Route::Options | Route::NotFound | Route::MethodNotAllowed => "other",
        }
    }

    fn protocol(self) -> &'static str {
        match self {
            Route::Responses => "openai_responses",
            Route::Compact => "openai_compact",
            Route::Chat => "openai_chat",
            Route::Models => "openai_models",
            Route::Messages => "anthropic_messages",
            Route::CountTokens => "anthropic_count_tokens",
            _ => "other",
        }
    }

    /// The providers whose accounts can serve the route, natively or by translation.
    fn providers(self) -> ProviderSet {
        match self {
            // Codex by translation to Responses; Anthropic natively.
            Route::Messages => ProviderSet::of(&[Provider::Codex, Provider::Anthropic]),
            // Azure OpenAI has no compact endpoint.
            Route::Compact => ProviderSet::of(&[Provider::Codex, Provider::OpenAi]),
            _ => ProviderSet::of(&[Provider::Codex, Provider::OpenAi, Provider::AzureOpenAi]),
        }
    }

    /// The error shape of the route's clients.
    fn dialect(self) -> ErrorDialect {
        match self {
            Route::Messages | Route::CountTokens => ErrorDialect::Anthropic,
            _ => ErrorDialect::OpenAi,
        }
    }
}

/// The error shape for a path that matched no route (or not with this method): Anthropic
/// under `/v1/messages`, where only Anthropic clients go, else OpenAI.
fn path_dialect(path: &str) -> ErrorDialect {
    let p = path.strip_prefix("/v1").unwrap_or(path);
    if p == "/messages" || p.starts_with("/messages/") {
        ErrorDialect::Anthropic
    } else {
        ErrorDialect::OpenAi
    }
}

/// The hyper service function.
pub(crate) async fn handle(
    gw: Arc<Gw>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let route = Route::of(req.method(), req.uri().path());
    Ok(match route {
        Route::Health => {
            let mut r = respond::with_status(200, respond::full("ok"));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            r
        }
        Route::Options => {
            let mut r = respond::with_status(204, respond::full(Bytes::new()));
            r.headers_mut().insert(
                http::header::ALLOW,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            r
        }
        Route::NotFound => {
            let id = request_id();
            respond::error_in(
                path_dialect(req.uri().path()),
                404,
                &format!("Unknown path {}", req.uri().path()),
                Some("not_found"),
                &id,
            )
        }
        Route::MethodNotAllowed => {
            let id = request_id();
            respond::error_in(
                path_dialect(req.uri().path()),
                405,
                &format!("{} is not allowed on {}", req.method(), req.uri().path()),
                Some("method_not_allowed"),
                &id,
            )
        }
        _ => api(gw, req, route).await,
    })
}

async fn api(gw: Arc<Gw>, req: Request<Incoming>, route: Route) -> Response<Body> {
    // One clock read serves the id, the log's timestamp, the key's expiry and the plan.
    let ts = now_ms();
    let id = request_id_at(ts);
    let span = telemetry::request_span(req.method().as_str(), route.label(), &id);
    telemetry::set_parent(&span, req.headers());
    let log = new_log(
        &id,
        ts,
        req.method().as_str(),
        req.uri().path(),
        route.protocol(),
        &gw.cfg.node_id,
    );
    let mut fin = Finish::new(
        log,
        route.label(),
        span.clone(),
        gw.reporter.clone(),
        gw.metrics.clone(),
    );
    fin.dialect = route.dialect();
    api_inner(gw, req, route, fin).instrument(span).await
}

/// Answers with an error in the request's dialect and completes the request log.
fn fail(
    mut fin: Finish,
    status: u16,
    message: &str,
    code: Option<&str>,
    class: Option<ErrorClass>,
) -> Response<Body> {
    fin.first_byte(status);
    let r = respond::error_in(fin.dialect, status, message, code, &fin.log.id);
    fin.complete(None, class);
    r
}

fn header_lookup<'a>(h: &'a HeaderMap) -> impl Fn(&str) -> Option<&'a str> + 'a {
    move |name: &str| h.get(name).and_then(|v| v.to_str().ok())
}

/// The upstream's announced body length, when it announced one.
fn content_length(h: &HeaderMap) -> Option<usize> {
    h.get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

async fn api_inner(
    gw: Arc<Gw>,
    req: Request<Incoming>,
    route: Route,
    mut fin: Finish,
) -> Response<Body> {
    let Some(view) = gw.shared.view() else {
        return fail(
            fin,
            503,
            "The gateway has not received its configuration from the control plane yet; retry shortly.",
            Some("gateway_not_ready"),
            Some(ErrorClass::Internal),
        );
    };
    let (parts, body) = req.into_parts();
    let key = match authenticate(&view, &parts.headers, fin.log.ts_ms) {
        Ok(k) => k,
        Err(e) => {
            return fail(
                fin,
                e.status(),
                e.message(),
                Some(e.code()),
                Some(ErrorClass::Auth),
            );
        }
    };
    fin.log.key_id = Some(key.id.to_string());
    if route == Route::Models {
        return models(&view, &key, &parts.headers, fin);
    }
    let body = match read_body(&parts.headers, body, gw.cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => {
            let code = match e.status() {
                413 => "request_too_large",
                415 => "unsupported_content_encoding",
                _ => "invalid_body",
            };
            return fail(
                fin,
                e.status(),
                &e.to_string(),
                Some(code),
                Some(ErrorClass::ClientError),
            );
        }
    };
    if matches!(route, Route::Messages | Route::CountTokens) {
        // Boxed: its future is large, and every request's future is sized for its largest
        // branch (hyper moves the whole of it into the connection per request).
        return Box::pin(messages(gw, view, key, parts.headers, body, route, fin)).await;
    }
    let Some(peek) = Peek::parse(&body) else {
        return fail(
            fin,
            400,
            "The request body must be a JSON object.",
            Some("invalid_json"),
            Some(ErrorClass::ClientError),
        );
    };
    let model = match key
        .model_override
        .clone()
        .or_else(|| peek.model.clone().filter(|m| !m.trim().is_empty()))
    {
        Some(m) => m,
        None => {
            return fail(
                fin,
                400,
                "You must provide a model parameter.",
                Some("missing_model"),
                Some(ErrorClass::ClientError),
            );
        }
    };
    if !glob::allowed(&key.allowed_models, &model) {
        return fail(
            fin,
            403,
            &format!("The model {model:?} is not allowed for this API key."),
            Some("model_not_allowed"),
            Some(ErrorClass::ClientError),
        );
    }
    fin.log.model = Some(model.clone());
    fin.span.record("gen_ai.request.model", model.as_str());
    let stream = route != Route::Compact && peek.stream.unwrap_or(false);
    let extra_headers = telemetry::propagation_headers(&fin.span);
    // A policy alias names the model Codex accounts are asked for instead (a key's override
    // is final and has none).
    let codex_model = key
        .model_override
        .is_none()
        .then(|| view.router.policy().resolve_alias(&model))
        .flatten()
        .filter(|m| *m != model)
        .map(str::to_string);
    let call = Call {
        gw,
        view,
        key,
        route,
        providers: route.providers(),
        headers: parts.headers,
        body,
        peek,
        model,
        codex_model,
        stream,
        json: None,
        chat: None,
        messages: None,
        openai_body: None,
        extra_headers,
    };
    call.run(fin).await
}

/// The Codex model a Messages request is served with: the key's override; else the routing
/// policy's first matching alias; else, for a Claude model name, the gateway's configured
/// default (`--anthropic-default-model`); else the name as given (a client may ask for a
/// Codex model through the Messages API).
fn messages_codex_model(
    requested: &str,
    key: &KeyGrant,
    policy: &poolgate_core::RoutingPolicy,
    default_model: &str,
) -> String {
    if let Some(m) = &key.model_override {
        return m.clone();
    }
    if let Some(m) = policy.resolve_alias(requested) {
        return m.to_string();
    }
    let is_claude = requested
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("claude"));
    if is_claude {
        default_model.to_string()
    } else {
        requested.to_string()
    }
}

/// `POST /v1/messages` and `/v1/messages/count_tokens` after the key is known: parse, count
/// locally, or resolve the model, convert to Responses and run the attempt loop.
async fn messages(
    gw: Arc<Gw>,
    view: Arc<View>,
    key: Arc<KeyGrant>,
    headers: HeaderMap,
    body: Bytes,
    route: Route,
    mut fin: Finish,
) -> Response<Body> {
    let req = match parse_messages_request(&body) {
        Ok(r) => r,
        Err(e) => {
            return fail(
                fin,
                400,
                &e.to_string(),
                Some("invalid_request"),
                Some(ErrorClass::ClientError),
            );
        }
    };
    let requested = req.model.trim().to_string();
    if route == Route::CountTokens {
        if !requested.is_empty() {
            fin.log.model = Some(requested);
        }
        fin.first_byte(200);
        let r = respond::json(200, count_tokens_body(&req).to_string(), &fin.log.id);
        fin.complete(None, None);
        return r;
    }
    if requested.is_empty() && key.model_override.is_none() {
        return fail(
            fin,
            400,
            "model: Field required",
            Some("missing_model"),
            Some(ErrorClass::ClientError),
        );
    }
    // Anthropic accounts get the client's model (or the key's override); Codex accounts the
    // model it maps to.
    let native = key
        .model_override
        .clone()
        .unwrap_or_else(|| requested.clone());
    let codex = messages_codex_model(
        &requested,
        &key,
        view.router.policy(),
        &gw.cfg.anthropic_default_model,
    );
    // The key's allowed models apply to what each provider is asked for: a key that allows
    // only the Codex model never reaches an Anthropic account with the Claude name, and the
    // other way round.
    let mut providers = ProviderSet::empty();
    if glob::allowed(&key.allowed_models, &native) {
        providers = providers.with(Provider::Anthropic);
    }
    if glob::allowed(&key.allowed_models, &codex)
        || (key.model_override.is_none() && glob::allowed(&key.allowed_models, &requested))
    {
        providers = providers.with(Provider::Codex);
    }
    if providers == ProviderSet::empty() {
        return fail(
            fin,
            403,
            &format!("The model {requested:?} is not allowed for this API key."),
            Some("model_not_allowed"),
            Some(ErrorClass::ClientError),
        );
    }
    // Claude-style clients send no conversation anchor: derive one per key, user and model.
    let anchor = claude_anchor(&key.id, req.user_id(), &requested);
    let conv = match messages_to_responses_request(&req, &codex, Some(&anchor)) {
        Ok(c) => c,
        Err(e) => {
            return fail(
                fin,
                400,
                &e.to_string(),
                Some("invalid_request"),
                Some(ErrorClass::ClientError),
            );
        }
    };
    fin.log.model = Some(native.clone());
    fin.span.record("gen_ai.request.model", native.as_str());
    let extra_headers = telemetry::propagation_headers(&fin.span);
    let peek = Peek {
        model: Some(requested),
        ..Peek::default()
    };
    let codex_model = (codex != native).then_some(codex);
    let call = Call {
        gw,
        view,
        key,
        route,
        providers,
        headers,
        // Codex attempts build from the conversion, Anthropic ones send these bytes.
        body,
        peek,
        model: native,
        codex_model,
        stream: conv.stream,
        json: None,
        chat: None,
        messages: Some(MessagesCall { conv, anchor }),
        openai_body: None,
        extra_headers,
    };
    call.run(fin).await
}

fn models(view: &View, key: &KeyGrant, headers: &HeaderMap, mut fin: Finish) -> Response<Body> {
    let (body, etag) = models_body(view, key);
    let not_modified = header_str(headers, IF_NONE_MATCH.as_str()).is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().trim_start_matches("W/") == etag)
    });
    let mut r = if not_modified {
        fin.first_byte(304);
        let mut r = respond::with_status(304, respond::full(Bytes::new()));
        respond::set_request_id(r.headers_mut(), &fin.log.id);
        r
    } else {
        fin.first_byte(200);
        respond::json(200, body, &fin.log.id)
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert(ETAG, v);
    }
    fin.complete(None, None);
    r
}

/// Why an attempt was abandoned for the next candidate.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// An HTTP answer or an in-stream failure, classified.
    Upstream(Outcome),
    Network,
}

impl Failure {
    fn reason(self) -> &'static str {
        match self {
            Failure::Network => "network",
            Failure::Upstream(o) => outcome_label(o),
        }
    }
}

fn outcome_label(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "success",
        Outcome::ClientError => "client_error",
        Outcome::RateLimited { .. } => "rate_limited",
        Outcome::QuotaExhausted { .. } => "quota_exhausted",
        Outcome::AuthFailed => "auth_failed",
        Outcome::Forbidden => "forbidden",
        Outcome::Deactivated => "deactivated",
        Outcome::Challenge => "challenge",
        Outcome::Upstream5xx => "upstream_5xx",
    }
}

/// What the control plane is told about an account after `failure`, given the local
/// cooldown it started; `None` for failures that stay local (5xx, network, challenge).
fn observation_kind(
    failure: Failure,
    cooldown: Option<Cooldown>,
    now: i64,
) -> Option<ObservationKind> {
    match failure {
        Failure::Upstream(Outcome::RateLimited { resets_at_ms, .. }) => {
            Some(ObservationKind::RateLimited {
                until_ms: cooldown
                    .map(|c| c.until_ms)
                    .or(resets_at_ms)
                    .unwrap_or(now + 45_000),
            })
        }
        Failure::Upstream(Outcome::QuotaExhausted { resets_at_ms }) => {
            Some(ObservationKind::QuotaExhausted {
                until_ms: resets_at_ms
                    .or(cooldown.map(|c| c.until_ms))
                    .unwrap_or(now + 3_600_000),
            })
        }
        Failure::Upstream(Outcome::AuthFailed) => Some(ObservationKind::AuthFailed),
        Failure::Upstream(Outcome::Deactivated) => Some(ObservationKind::Deactivated),
        _ => None,
    }
}

/// What routing's health learns from a classified upstream outcome.
fn health_outcome(o: Outcome, latency: Duration, now: i64) -> poolgate_routing::Outcome {
    use poolgate_routing::Outcome as H;
    match o {
        Outcome::Success => H::Success { latency },
        Outcome::ClientError => H::ClientError,
        Outcome::RateLimited {
            retry_after_secs,
            resets_at_ms,
        } => H::RateLimited {
            retry_after: retry_after_secs.map(Duration::from_secs).or_else(|| {
                resets_at_ms
                    .filter(|r| *r > now)
                    .map(|r| Duration::from_millis(u64::try_from(r - now).unwrap_or(0)))
            }),
        },
        Outcome::QuotaExhausted { resets_at_ms } => H::QuotaExhausted {
            until_ms: resets_at_ms,
        },
        Outcome::AuthFailed | Outcome::Forbidden => H::AuthFailed,
        Outcome::Deactivated => H::Deactivated,
        // A challenge is transient trouble on the path to the upstream, like a 5xx.
        Outcome::Challenge | Outcome::Upstream5xx => H::Upstream5xx,
    }
}

fn ms_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// One attempt's request body and where it goes.
struct Built {
    endpoint: Endpoint,
    body: Bytes,
    stream: bool,
}

/// What an aggregated Codex stream is turned into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AggregateAs {
    Responses,
    Chat,
    Messages,
}

/// How a successful upstream answer reaches the client.
enum Delivery {
    /// Preflight, then relay in this mode.
    Stream(Mode),
    /// Aggregate the Codex stream into one response.
    Aggregate(AggregateAs),
    /// Pass the body through.
    Raw,
}

enum Step {
    Done(Response<Body>),
    Next(Failure, Box<Finish>),
}

/// A Messages request converted to Responses, with its derived conversation anchor.
struct MessagesCall {
    conv: MessagesConversion,
    anchor: String,
}

struct Call {
    gw: Arc<Gw>,
    view: Arc<View>,
    key: Arc<KeyGrant>,
    route: Route,
    /// The providers that may serve this request (the route's, narrowed by the key).
    providers: ProviderSet,
    headers: HeaderMap,
    body: Bytes,
    peek: Peek,
    /// The client's model after the key's override: what native providers are asked for.
    model: String,
    /// What Codex accounts are asked for instead, when it differs (an alias or the Claude
    /// default).
    codex_model: Option<String>,
    stream: bool,
    /// The body as JSON, parsed once on the first Codex attempt.
    json: Option<Value>,
    /// The chat request as a Responses request, converted once.
    chat: Option<ChatConversion>,
    /// A Messages request: converted before routing (the model and anchor depend on it).
    messages: Option<MessagesCall>,
    /// The body for OpenAI accounts (the original bytes unless an override applies).
    openai_body: Option<Bytes>,
    extra_headers: Vec<(HeaderName, HeaderValue)>,
}

impl Call {
    /// The conversation anchor: what keeps a conversation on one account.
    fn anchor(&self) -> Option<String> {
        if let Some(m) = &self.messages {
            return Some(m.anchor.clone());
        }
        let h = &self.headers;
        header_str(h, "session-id")
            .or_else(|| header_str(h, "session_id"))
            .or_else(|| header_str(h, "conversation_id"))
            .or_else(|| header_str(h, "conversation-id"))
            .or_else(|| self.peek.conversation())
            .or_else(|| {
                self.peek
                    .prompt_cache_key
                    .as_deref()
                    .filter(|k| !k.trim().is_empty())
            })
            .or_else(|| header_str(h, "x-codex-turn-state"))
            .map(str::to_string)
    }

    /// A session anchor the Codex backend can use as `prompt_cache_key` when the client
    /// sent none.
    fn session_anchor(&self) -> Option<String> {
        if let Some(m) = &self.messages {
            return Some(m.anchor.clone());
        }
        let h = &self.headers;
        header_str(h, "session-id")
            .or_else(|| header_str(h, "session_id"))
            .or_else(|| header_str(h, "conversation_id"))
            .or_else(|| self.peek.conversation())
            .map(str::to_string)
    }

    fn json(&mut self) -> Result<Value, String> {
        if self.json.is_none() {
            let v: Value = serde_json::from_slice(&self.body)
                .map_err(|e| format!("The request body is not valid JSON: {e}"))?;
            self.json = Some(v);
        }
        self.json
            .clone()
            .ok_or_else(|| "The request body is missing.".to_string())
    }

    fn chat(&mut self) -> Result<&ChatConversion, String> {
        if self.chat.is_none() {
            let v = self.json()?;
            self.chat = Some(chat_to_responses_request(&v).map_err(|e| e.to_string())?);
        }
        self.chat
            .as_ref()
            .ok_or_else(|| "The request could not be converted.".to_string())
    }

    /// The original bytes, unless the key overrides the model or the reasoning effort;
    /// only then is the body parsed and written again. Cached: OpenAI and Anthropic
    /// attempts all send the same bytes.
    fn openai_body(&mut self) -> Result<Bytes, String> {
        if let Some(b) = &self.openai_body {
            return Ok(b.clone());
        }
        let body = self.body_with_model(self.key.model_override.clone())?;
        self.openai_body = Some(body.clone());
        Ok(body)
    }

    /// The client's body with `model` (when given and different) and the key's reasoning
    /// effort (on the OpenAI routes) written in.
    fn body_with_model(&mut self, model: Option<String>) -> Result<Bytes, String> {
        let override_model = model.filter(|m| self.peek.model.as_ref() != Some(m));
        let effort = self
            .key
            .reasoning_effort
            .filter(|_| self.route != Route::Messages);
        if override_model.is_none() && effort.is_none() {
            Ok(self.body.clone())
        } else {
            let mut v = self.json()?;
            if let Some(obj) = v.as_object_mut() {
                if let Some(m) = override_model {
                    obj.insert("model".into(), Value::String(m));
                }
                if let Some(e) = effort {
                    if self.route == Route::Chat {
                        obj.insert("reasoning_effort".into(), Value::String(e.as_str().into()));
                    } else {
                        let r = obj
                            .entry("reasoning")
                            .or_insert_with(|| Value::Object(Default::default()));
                        if !r.is_object() {
                            *r = Value::Object(Default::default());
                        }
                        if let Some(r) = r.as_object_mut() {
                            r.insert("effort".into(), Value::String(e.as_str().into()));
                        }
                    }
                }
            }
            Ok(Bytes::from(
                serde_json::to_vec(&v).map_err(|e| e.to_string())?,
            ))
        }
    }

    /// The model an account of `provider` is asked for.
    fn upstream_model<'s>(&'s self, state: &'s AccountState) -> &'s str {
        match state.account.spec.provider {
            Provider::Codex => self
                .key
                .model_override
                .as_deref()
                .or(self.codex_model.as_deref())
                .unwrap_or(&self.model),
            Provider::AzureOpenAi => state
                .account
                .spec
                .azure
                .as_ref()
                .map_or(self.model.as_str(), |a| a.deployment.as_str()),
            Provider::OpenAi | Provider::Anthropic => &self.model,
        }
    }

    fn codex_options(&self, account_id: &str, failover: bool) -> CodexRequestOptions {
        CodexRequestOptions {
            installation_id: Some(poolgate_upstream::installation_id_for(account_id)),
            prompt_cache_key: self.session_anchor(),
            force_prompt_cache_key: false,
            failover,
            model_override: self
                .key
                .model_override
                .clone()
                .or_else(|| self.codex_model.clone()),
            reasoning_effort_override: self.key.reasoning_effort,
            compact: self.route == Route::Compact,
        }
    }

    /// The request for one attempt, built fresh so one account's rewrite never leaks into
    /// the next attempt. Errors are the client's (answered with 400).
    fn build(&mut self, state: &AccountState, failover: bool) -> Result<Built, String> {
        let provider = state.account.spec.provider;
        let to_bytes = |v: &Value| {
            serde_json::to_vec(v)
                .map(Bytes::from)
                .map_err(|e| e.to_string())
        };
        match (provider, self.route) {
            (Provider::Codex, Route::Responses | Route::Compact) => {
                let opts = self.codex_options(&state.account.id, failover);
                let v = self.json()?;
                let native = is_native_codex_client(header_lookup(&self.headers));
                let mut out = if native && self.route == Route::Responses {
                    adjust_native_codex_request(v, &opts)
                } else {
                    normalize_codex_request(v, &opts)
                }
                .map_err(|e| e.to_string())?;
                if native
                    && self.route == Route::Responses
                    && let Some(obj) = out.as_object_mut()
                {
                    // The backend only streams and never stores; a native client that asked
                    // otherwise gets an aggregated answer all the same.
                    obj.insert("stream".into(), Value::Bool(true));
                    obj.insert("store".into(), Value::Bool(false));
                }
                Ok(Built {
                    endpoint: if self.route == Route::Compact {
                        Endpoint::ResponsesCompact
                    } else {
                        Endpoint::Responses
                    },
                    body: to_bytes(&out)?,
                    stream: self.route == Route::Responses,
                })
            }
            (Provider::Codex, Route::Chat) => {
                let opts = self.codex_options(&state.account.id, failover);
                let body = self.chat()?.body.clone();
                let out = normalize_codex_request(body, &opts).map_err(|e| e.to_string())?;
                Ok(Built {
                    endpoint: Endpoint::Responses,
                    body: to_bytes(&out)?,
                    stream: true,
                })
            }
            (Provider::Codex, Route::Messages) => {
                let opts = self.codex_options(&state.account.id, failover);
                let body = self
                    .messages
                    .as_ref()
                    .map(|m| m.conv.body.clone())
                    .ok_or_else(|| "The request could not be converted.".to_string())?;
                let out = normalize_codex_request(body, &opts).map_err(|e| e.to_string())?;
                Ok(Built {
                    endpoint: Endpoint::Responses,
                    body: to_bytes(&out)?,
                    stream: true,
                })
            }
            (Provider::OpenAi, r) if r != Route::Messages => {
                let endpoint = match r {
                    Route::Chat => Endpoint::ChatCompletions,
                    Route::Compact => Endpoint::ResponsesCompact,
                    _ => Endpoint::Responses,
                };
                Ok(Built {
                    endpoint,
                    body: self.openai_body()?,
                    stream: self.stream,
                })
            }
            // Chat names the deployment in the URL; the body's model is left as sent.
            (Provider::AzureOpenAi, Route::Chat) => Ok(Built {
                endpoint: Endpoint::ChatCompletions,
                body: self.openai_body()?,
                stream: self.stream,
            }),
            // The Responses API reads the deployment from the body's `model`.
            (Provider::AzureOpenAi, Route::Responses) => {
                let deployment = self.upstream_model(state).to_string();
                Ok(Built {
                    endpoint: Endpoint::Responses,
                    body: self.body_with_model(Some(deployment))?,
                    stream: self.stream,
                })
            }
            (Provider::Anthropic, Route::Messages) => Ok(Built {
                endpoint: Endpoint::Messages,
                body: self.openai_body()?,
                stream: self.stream,
            }),
            (p, _) => Err(format!("{p} accounts cannot serve this endpoint")),
        }
    }

    fn delivery(
        &mut self,
        provider: Provider,
        upstream_headers: &HeaderMap,
        request_id: &str,
    ) -> Delivery {
        match (provider, self.route) {
            (Provider::Codex, Route::Responses) if self.stream => {
                Delivery::Stream(Mode::Sse(Dialect::Responses))
            }
            (Provider::Codex, Route::Responses) => Delivery::Aggregate(AggregateAs::Responses),
            (Provider::Codex, Route::Chat) if self.stream => {
                let conv = self.chat.as_ref();
                let opts = ChatStreamOptions {
                    id: format!("chatcmpl-{request_id}"),
                    model: self.model.clone(),
                    created: now_ms() / 1000,
                    include_usage: conv.is_some_and(|c| c.include_usage),
                    tool_names: conv.map(|c| c.tool_names.clone()).unwrap_or_default(),
                };
                Delivery::Stream(Mode::Translate(Box::new(ChatStreamTranslator::new(opts))))
            }
            (Provider::Codex, Route::Chat) => Delivery::Aggregate(AggregateAs::Chat),
            (Provider::Codex, Route::Messages) if self.stream => {
                Delivery::Stream(Mode::Translate(Box::new(MessagesStreamTranslator::new(
                    self.reply_options(request_id),
                ))))
            }
            (Provider::Codex, Route::Messages) => Delivery::Aggregate(AggregateAs::Messages),
            (_, route) => {
                let sse = upstream_headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|c| c.to_ascii_lowercase().starts_with(EVENT_STREAM));
                if sse {
                    let dialect = match route {
                        Route::Chat => Dialect::Chat,
                        Route::Messages => Dialect::Anthropic,
                        _ => Dialect::Responses,
                    };
                    Delivery::Stream(Mode::Sse(dialect))
                } else {
                    Delivery::Raw
                }
            }
        }
    }

    /// How answers to a Messages request speak Anthropic (`msg_<request id>` until the
    /// upstream names its response).
    fn reply_options(&self, request_id: &str) -> MessagesReplyOptions {
        let mut opts = self
            .messages
            .as_ref()
            .map(|m| m.conv.reply_options())
            .unwrap_or_default();
        opts.id = format!("msg_{request_id}");
        opts
    }

    async fn run(mut self, fin: Finish) -> Response<Body> {
        let view = self.view.clone();
        let anchor = self.anchor().map(|a| format!("{}:{a}", self.key.id));
        let req = RouteRequest {
            model: &self.model,
            translated: self.codex_model.as_deref().map(|m| Translated {
                providers: ProviderSet::of(&[Provider::Codex]),
                model: m,
            }),
            allowed_groups: &self.key.account_groups,
            providers: self.providers,
            anchor: anchor.as_deref(),
            key_id: &self.key.id,
        };
        let now = fin.log.ts_ms;
        let rotation = self.gw.shared.rotation(&view.router, &req);
        let mut rng = SplitMix64::new(random_u64());
        let plan = view.plan(&req, &Cells(&view.cells), now, rotation, &mut rng);
        // Counted by reason, not per account: a large pool skips thousands per request.
        let skipped = plan.summary();
        for (reason, n) in [
            ("disabled", skipped.disabled),
            ("unavailable", skipped.unavailable),
            ("group_not_allowed", skipped.group_not_allowed),
            ("model_not_allowed", skipped.model_not_allowed),
            ("protocol_unsupported", skipped.protocol_unsupported),
            ("quota_exhausted", skipped.quota_exhausted),
            ("quota_guard", skipped.quota_guard),
        ] {
            self.gw.metrics.skips(reason, u64::from(n));
        }
        let plan = match plan.into_result() {
            Ok(p) => p,
            Err(NoRoute::QuotaExhausted { retry_at_ms, .. }) => {
                return usage_limit(fin, retry_at_ms, now);
            }
            Err(e @ NoRoute::NoEligibleAccount { .. }) => {
                return fail(
                    fin,
                    503,
                    &format!("{e}."),
                    Some("no_available_account"),
                    Some(ErrorClass::NoAccount),
                );
            }
        };
        let n = plan.candidates.len();
        let mut fin = fin;
        let mut failures: Vec<Failure> = Vec::new();
        let mut tried = 0usize;
        for (pos, cand) in plan.candidates.iter().enumerate() {
            let i = cand.index;
            let (Some(acc), Some(state), Some(cell)) =
                (view.accounts.get(i), view.states.get(i), view.cells.get(i))
            else {
                continue;
            };
            let is_last = pos + 1 == n;
            // The plan's clock for the first candidate; after a failed attempt, time moved.
            let at = if tried == 0 { now } else { now_ms() };
            let guard = match cell.try_acquire(&view.router, acc, at, is_last) {
                Ok(g) => g,
                Err(skip) => {
                    self.gw.metrics.skip(skip.as_str());
                    continue;
                }
            };
            let failover = tried > 0;
            tried += 1;
            match self.attempt(state, cell, guard, failover, fin).await {
                Step::Done(r) => return r,
                Step::Next(f, back) => {
                    fin = *back;
                    if !is_last {
                        self.gw.metrics.failover(f.reason());
                    }
                    failures.push(f);
                }
            }
        }
        final_failure(fin, &failures)
    }

    /// An in-stream failure before anything reached the client: noted, then the next
    /// candidate.
    fn fail_over(
        &self,
        state: &AccountState,
        cell: &HealthCell,
        f: &StreamFailure,
        status: u16,
        elapsed: Duration,
        mut fin: Finish,
    ) -> Step {
        let failure = Failure::Upstream(f.outcome);
        self.note_failure(state, cell, failure, status, elapsed, &mut fin, &f.detail());
        Step::Next(failure, Box::new(fin))
    }

    /// An attempt that broke (no answer, or an answer cut short) before anything reached the
    /// client: noted as a network failure, then the next candidate.
    #[allow(clippy::too_many_arguments)]
    fn network_failure(
        &self,
        state: &AccountState,
        cell: &HealthCell,
        status: u16,
        elapsed: Duration,
        e: &UpstreamError,
        mut fin: Finish,
    ) -> Step {
        let detail = e.to_string();
        self.note_failure(
            state,
            cell,
            Failure::Network,
            status,
            elapsed,
            &mut fin,
            &detail,
        );
        Step::Next(Failure::Network, Box::new(fin))
    }

    /// Notes a failed attempt: health, cooldown, observation for the control plane, log.
    #[allow(clippy::too_many_arguments)]
    fn note_failure(
        &self,
        state: &AccountState,
        cell: &HealthCell,
        failure: Failure,
        status: u16,
        elapsed: Duration,
        fin: &mut Finish,
        detail: &str,
    ) {
        let now = now_ms();
        let account_id = &state.account.id;
        let provider = state.account.spec.provider.as_str();
        let (health, class) = match failure {
            Failure::Network => (
                poolgate_routing::Outcome::Network,
                Some(ErrorClass::Network),
            ),
            Failure::Upstream(o) => (health_outcome(o, elapsed, now), o.error_class()),
        };
        let cooldown = cell.record(&self.view.router, health, now);
        if let Some(c) = cooldown {
            self.gw.metrics.cooldown(c.reason.as_str());
        }
        fin.log.attempts.push(Attempt {
            account_id: account_id.clone(),
            status,
            error_class: class,
            duration_ms: ms_u32(elapsed),
        });
        fin.log.account_id = Some(account_id.clone());
        self.gw.metrics.attempt(provider, failure.reason());
        if let Some(kind) = observation_kind(failure, cooldown, now) {
            self.gw.reporter.observe(Observation {
                account_id: account_id.clone(),
                ts_ms: now,
                kind,
                detail: detail.chars().take(200).collect(),
            });
        }
        tracing::info!(
            request_id = %fin.log.id,
            account = %account_id,
            status,
            outcome = failure.reason(),
            detail,
            "upstream attempt failed"
        );
    }

    /// The relay's hook for an account-level failure reported inside the stream after the
    /// first byte: the same local cooldown and observation as before the first byte (the
    /// attempt itself stays logged as the success it looked like when it was relayed).
    fn stream_failure_hook(
        &self,
        state: &Arc<AccountState>,
        cell: &Arc<HealthCell>,
    ) -> StreamFailureHook {
        let (gw, view, state, cell) = (
            self.gw.clone(),
            self.view.clone(),
            state.clone(),
            cell.clone(),
        );
        Box::new(move |f: &StreamFailure| {
            let now = now_ms();
            let health = health_outcome(f.outcome, Duration::ZERO, now);
            let cooldown = cell.record(&view.router, health, now);
            if let Some(c) = cooldown {
                gw.metrics.cooldown(c.reason.as_str());
            }
            let detail = f.detail();
            if let Some(kind) = observation_kind(Failure::Upstream(f.outcome), cooldown, now) {
                gw.reporter.observe(Observation {
                    account_id: state.account.id.clone(),
                    ts_ms: now,
                    kind,
                    detail: detail.chars().take(200).collect(),
                });
            }
            tracing::info!(
                account = %state.account.id,
                outcome = outcome_label(f.outcome),
                detail,
                "upstream failed inside the stream after the first byte"
            );
        })
    }

    fn note_success(
        &self,
        state: &AccountState,
        cell: &HealthCell,
        status: u16,
        latency: Duration,
        fin: &mut Finish,
    ) {
        cell.record(
            &self.view.router,
            poolgate_routing::Outcome::Success { latency },
            now_ms(),
        );
        self.note_success_logged(state, status, latency, fin);
    }

    /// [`Call::note_success`] for an attempt whose answer is complete: the outcome is
    /// recorded and the in-flight slot freed under one lock of the account's health.
    fn note_success_released(
        &self,
        state: &AccountState,
        guard: InflightGuard,
        status: u16,
        latency: Duration,
        fin: &mut Finish,
    ) {
        guard.record_and_release(
            &self.view.router,
            poolgate_routing::Outcome::Success { latency },
            now_ms(),
        );
        self.note_success_logged(state, status, latency, fin);
    }

    /// The log and metrics of a successful attempt whose outcome the health cell has.
    fn note_success_logged(
        &self,
        state: &AccountState,
        status: u16,
        latency: Duration,
        fin: &mut Finish,
    ) {
        fin.log.attempts.push(Attempt {
            account_id: state.account.id.clone(),
            status,
            error_class: None,
            duration_ms: ms_u32(latency),
        });
        fin.log.account_id = Some(state.account.id.clone());
        self.gw
            .metrics
            .attempt(state.account.spec.provider.as_str(), "success");
    }

    /// A non-streamed answer of known, bounded length: read whole, then sent with its
    /// Content-Length in one piece. Nothing has reached the client while it is read, so a
    /// body that breaks off fails over like a network error.
    #[allow(clippy::too_many_arguments)]
    async fn deliver_whole(
        &self,
        state: &AccountState,
        cell: &HealthCell,
        guard: InflightGuard,
        status: u16,
        resp: poolgate_upstream::UpstreamResponse,
        len: usize,
        (started, latency): (Instant, Duration),
        mut fin: Finish,
    ) -> Step {
        match read_whole(resp.body, len, self.gw.cfg.stream_idle_timeout).await {
            Ok((body, usage)) => {
                self.note_success_released(state, guard, status, latency, &mut fin);
                fin.first_byte(status);
                let mut r = respond::with_status(status, respond::full(body));
                *r.headers_mut() = respond::relay_headers(&resp.headers, &fin.log.id);
                fin.complete(usage, None);
                Step::Done(r)
            }
            Err(e) => {
                drop(guard);
                self.network_failure(state, cell, status, started.elapsed(), &e, fin)
            }
        }
    }

    async fn attempt(
        &mut self,
        state: &Arc<AccountState>,
        cell: &Arc<HealthCell>,
        guard: InflightGuard,
        failover: bool,
        mut fin: Finish,
    ) -> Step {
        let provider = state.account.spec.provider;
        let built = match self.build(state, failover) {
            Ok(b) => b,
            Err(msg) => {
                drop(guard);
                return Step::Done(fail(
                    fin,
                    400,
                    &msg,
                    Some("invalid_request"),
                    Some(ErrorClass::ClientError),
                ));
            }
        };
        // The final attempt's figures stay in the request log.
        fin.log.translation = match (provider, self.route) {
            (Provider::Codex, Route::Chat) => Translation::ChatToResponses,
            (Provider::Codex, Route::Messages) => Translation::MessagesToResponses,
            _ => Translation::None,
        };
        let upstream_model = self.upstream_model(state);
        fin.log.upstream_model = (upstream_model != self.model).then(|| upstream_model.to_string());
        // Only Codex requests carry session ids; other attempts skip the allocation.
        let fresh_id = if provider == Provider::Codex {
            uuid_v4()
        } else {
            String::new()
        };
        let session = (provider == Provider::Codex).then(|| {
            let mut s = SessionInput::from_headers(header_lookup(&self.headers));
            s.anchor = match &self.messages {
                Some(m) => Some(m.anchor.as_str()),
                None => self.peek.conversation(),
            };
            s.prompt_cache_key = self.peek.prompt_cache_key.as_deref();
            s.failover = failover;
            s.fresh_id = Some(&fresh_id);
            s
        });
        let started = Instant::now();
        let limit = self.gw.cfg.first_byte_timeout;
        let send = self.gw.upstream.send(
            state,
            UpstreamRequest {
                endpoint: built.endpoint,
                body: built.body,
                stream: built.stream,
                client_headers: &self.headers,
                session,
                extra_headers: &self.extra_headers,
            },
        );
        // Nothing has reached the client yet, so a slow head fails over like a network error.
        let sent = tokio::time::timeout(limit, send).await.unwrap_or_else(|_| {
            Err(UpstreamError::Timeout(format!(
                "no response head within {:.1} s",
                limit.as_secs_f64()
            )))
        });
        let latency = started.elapsed();
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return self.network_failure(state, cell, 0, latency, &e, fin),
        };
        self.gw
            .metrics
            .upstream_latency(provider.as_str(), latency.as_secs_f64());
        let status = resp.status.as_u16();
        if provider == Provider::Codex {
            let u = parse_codex_usage_headers(header_lookup(&resp.headers), now_ms());
            self.gw
                .reporter
                .usage(&state.account.id, now_ms(), u.primary, u.secondary);
        }
        if !(200..300).contains(&status) {
            // Boxed: the error path's future would otherwise size every attempt's.
            return Box::pin(self.upstream_error(
                state,
                cell,
                guard,
                status,
                resp.headers,
                resp.body,
                latency,
                fin,
            ))
            .await;
        }
        let request_id = fin.log.id.clone();
        let delivery = self.delivery(provider, &resp.headers, &request_id);
        match delivery {
            Delivery::Raw => {
                if let Some(len) = content_length(&resp.headers)
                    .filter(|n| *n <= self.gw.cfg.max_buffered_body_bytes)
                {
                    return self
                        .deliver_whole(
                            state,
                            cell,
                            guard,
                            status,
                            resp,
                            len,
                            (started, latency),
                            fin,
                        )
                        .await;
                }
                self.note_success(state, cell, status, latency, &mut fin);
                fin.hold(guard);
                fin.first_byte(status);
                let headers = respond::relay_headers(&resp.headers, &request_id);
                let body = relay_body(
                    resp.body,
                    Mode::Raw,
                    None,
                    None,
                    self.gw.cfg.stream_idle_timeout,
                    None,
                    fin,
                );
                let mut r = respond::with_status(status, body);
                *r.headers_mut() = headers;
                Step::Done(r)
            }
            Delivery::Stream(mode) => {
                let mut body = resp.body;
                match preflight(
                    &mut body,
                    self.gw.cfg.preflight_max_bytes,
                    self.gw.cfg.preflight_max_wait,
                )
                .await
                {
                    Preflight::Release(held) => {
                        self.note_success(state, cell, status, latency, &mut fin);
                        fin.hold(guard);
                        fin.first_byte(status);
                        let mut headers = respond::relay_headers(&resp.headers, &request_id);
                        headers.insert(
                            CONTENT_TYPE,
                            HeaderValue::from_static("text/event-stream; charset=utf-8"),
                        );
                        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                        let body = relay_body(
                            body,
                            mode,
                            Some(held),
                            Some(self.gw.cfg.keepalive_interval),
                            self.gw.cfg.stream_idle_timeout,
                            Some(self.stream_failure_hook(state, cell)),
                            fin,
                        );
                        let mut r = respond::with_status(status, body);
                        *r.headers_mut() = headers;
                        Step::Done(r)
                    }
                    Preflight::Failed(f) => {
                        self.fail_over(state, cell, &f, status, started.elapsed(), fin)
                    }
                    Preflight::Broken(e) => {
                        self.network_failure(state, cell, status, started.elapsed(), &e, fin)
                    }
                }
            }
            Delivery::Aggregate(kind) => {
                match Box::pin(aggregate(resp.body, self.gw.cfg.max_aggregate_bytes)).await {
                    Aggregated::Done { response, usage } => {
                        self.note_success_released(state, guard, status, latency, &mut fin);
                        let out = match kind {
                            AggregateAs::Chat => {
                                let names = self
                                    .chat
                                    .as_ref()
                                    .map(|c| c.tool_names.clone())
                                    .unwrap_or_default();
                                responses_to_chat_completion(&response, &names)
                            }
                            AggregateAs::Messages => {
                                responses_to_messages(&response, &self.reply_options(&request_id))
                            }
                            AggregateAs::Responses => response,
                        };
                        fin.first_byte(200);
                        let mut headers = respond::relay_headers(&resp.headers, &request_id);
                        headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
                        let mut r = respond::with_status(200, respond::full(out.to_string()));
                        *r.headers_mut() = headers;
                        fin.complete(usage, None);
                        Step::Done(r)
                    }
                    Aggregated::Failed(f) if f.outcome.should_failover() => {
                        self.fail_over(state, cell, &f, status, started.elapsed(), fin)
                    }
                    Aggregated::Failed(f) => {
                        // The upstream refused the request itself: the client's to fix.
                        self.note_success_client_error(state, cell, started.elapsed(), &mut fin);
                        drop(guard);
                        let code = f.code.clone();
                        Step::Done(fail(
                            fin,
                            400,
                            &f.message,
                            code.as_deref(),
                            Some(ErrorClass::ClientError),
                        ))
                    }
                    Aggregated::Broken(e) => {
                        self.network_failure(state, cell, status, started.elapsed(), &e, fin)
                    }
                    Aggregated::TooLarge(limit) => {
                        self.note_success_released(state, guard, status, latency, &mut fin);
                        Step::Done(fail(
                            fin,
                            502,
                            &format!("The upstream response is larger than {limit} bytes."),
                            Some("response_too_large"),
                            Some(ErrorClass::Internal),
                        ))
                    }
                }
            }
        }
    }

    fn note_success_client_error(
        &self,
        state: &AccountState,
        cell: &HealthCell,
        elapsed: Duration,
        fin: &mut Finish,
    ) {
        cell.record(
            &self.view.router,
            poolgate_routing::Outcome::ClientError,
            now_ms(),
        );
        fin.log.attempts.push(Attempt {
            account_id: state.account.id.clone(),
            status: 400,
            error_class: Some(ErrorClass::ClientError),
            duration_ms: ms_u32(elapsed),
        });
        fin.log.account_id = Some(state.account.id.clone());
        self.gw
            .metrics
            .attempt(state.account.spec.provider.as_str(), "client_error");
    }

    /// A non-2xx answer: fail over when the account is the problem, else relay it as is.
    #[allow(clippy::too_many_arguments)]
    async fn upstream_error(
        &self,
        state: &AccountState,
        cell: &HealthCell,
        guard: InflightGuard,
        status: u16,
        headers: HeaderMap,
        body: BodyStream,
        latency: Duration,
        mut fin: Finish,
    ) -> Step {
        let limit = self.gw.cfg.max_error_body_bytes;
        let bytes = read_prefix(body, limit).await;
        let outcome = classify_response(status, header_lookup(&headers), &bytes, now_ms());
        if outcome.should_failover() {
            let detail = format!("HTTP {status}: {}", error_summary(&bytes));
            self.note_failure(
                state,
                cell,
                Failure::Upstream(outcome),
                status,
                latency,
                &mut fin,
                &detail,
            );
            return Step::Next(Failure::Upstream(outcome), Box::new(fin));
        }
        cell.record(
            &self.view.router,
            poolgate_routing::Outcome::ClientError,
            now_ms(),
        );
        fin.log.attempts.push(Attempt {
            account_id: state.account.id.clone(),
            status,
            error_class: Some(ErrorClass::ClientError),
            duration_ms: ms_u32(latency),
        });
        fin.log.account_id = Some(state.account.id.clone());
        self.gw
            .metrics
            .attempt(state.account.spec.provider.as_str(), "client_error");
        drop(guard);
        fin.first_byte(status);
        let r = match fin.dialect {
            ErrorDialect::OpenAi => {
                let mut r = respond::with_status(status, respond::full(bytes));
                *r.headers_mut() = respond::relay_headers(&headers, &fin.log.id);
                r
            }
            ErrorDialect::Anthropic if state.account.spec.provider == Provider::Anthropic => {
                // Already the Anthropic shape: as it came.
                let mut r = respond::with_status(status, respond::full(bytes));
                *r.headers_mut() = respond::relay_headers(&headers, &fin.log.id);
                r
            }
            ErrorDialect::Anthropic => {
                // Restated, keeping the status and the message: Anthropic clients read
                // `error.type` and `error.message`.
                let body = anthropic_error_from_upstream(status, &bytes).to_string();
                let mut r = respond::with_status(status, respond::full(body));
                *r.headers_mut() = respond::relay_headers(&headers, &fin.log.id);
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
                r
            }
        };
        fin.complete(None, Some(ErrorClass::ClientError));
        Step::Done(r)
    }
}

/// The first `limit` bytes of an error body (the rest is dropped with the connection).
async fn read_prefix(mut body: BodyStream, limit: usize) -> Bytes {
    use futures::StreamExt;
    let mut buf = bytes::BytesMut::new();
    while buf.len() < limit {
        match body.next().await {
            Some(Ok(chunk)) => {
                let take = chunk.len().min(limit - buf.len());
                buf.extend_from_slice(&chunk[..take]);
            }
            _ => break,
        }
    }
    buf.freeze()
}

/// A short, secret-free description of an upstream error body for logs and observations.
fn error_summary(body: &[u8]) -> String {
    let v: Option<Value> = serde_json::from_slice(body).ok();
    let err = v.as_ref().map(|v| v.get("error").unwrap_or(v));
    let field = |k: &str| {
        err.and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    match (field("code").or_else(|| field("type")), field("message")) {
        (Some(c), Some(m)) => format!("{c}: {}", m.chars().take(120).collect::<String>()),
        (Some(c), None) => c,
        (None, Some(m)) => m.chars().take(120).collect(),
        (None, None) => String::from_utf8_lossy(&body[..body.len().min(80)])
            .chars()
            .filter(|c| !c.is_control())
            .collect(),
    }
}

fn retry_secs(at_ms: Option<i64>, now: i64) -> Option<u64> {
    at_ms.map(|at| {
        u64::try_from((at - now).max(0))
            .unwrap_or(0)
            .div_ceil(1000)
            .max(1)
    })
}

/// 429 `usage_limit_reached` with Retry-After at the earliest reset: what Codex treats as
/// "out of quota, come back later" (never a vague 503).
fn usage_limit(mut fin: Finish, retry_at_ms: Option<i64>, now: i64) -> Response<Body> {
    let secs = retry_secs(retry_at_ms, now).unwrap_or(300);
    let openai =
        poolgate_wire::errors::usage_limit_reached_body(secs, retry_at_ms.map(|ms| ms / 1000));
    let body = match fin.dialect {
        ErrorDialect::OpenAi => openai.to_string(),
        ErrorDialect::Anthropic => poolgate_wire::anthropic::anthropic_error_body(
            429,
            openai["error"]["message"]
                .as_str()
                .unwrap_or("Usage limit reached."),
            Some("usage_limit_reached"),
        )
        .to_string(),
    };
    fin.first_byte(429);
    let mut r = respond::json(429, body, &fin.log.id);
    respond::retry_after(&mut r, secs);
    fin.complete(None, Some(ErrorClass::QuotaExhausted));
    r
}

/// Every candidate failed: answer with what the failures have in common.
fn final_failure(fin: Finish, failures: &[Failure]) -> Response<Body> {
    let now = now_ms();
    let quota_resets: Vec<Option<i64>> = failures
        .iter()
        .filter_map(|f| match f {
            Failure::Upstream(Outcome::QuotaExhausted { resets_at_ms }) => Some(*resets_at_ms),
            _ => None,
        })
        .collect();
    if failures.is_empty() {
        return fail(
            fin,
            503,
            "No account could take the request.",
            Some("no_available_account"),
            Some(ErrorClass::NoAccount),
        );
    }
    if quota_resets.len() == failures.len() {
        let earliest = quota_resets.iter().flatten().min().copied();
        return usage_limit(fin, earliest, now);
    }
    let limited: Vec<Option<u64>> = failures
        .iter()
        .filter_map(|f| match f {
            Failure::Upstream(Outcome::RateLimited {
                retry_after_secs,
                resets_at_ms,
            }) => Some(retry_after_secs.or_else(|| retry_secs(*resets_at_ms, now))),
            Failure::Upstream(Outcome::QuotaExhausted { resets_at_ms }) => {
                Some(retry_secs(*resets_at_ms, now))
            }
            _ => None,
        })
        .collect();
    if !limited.is_empty() {
        let secs = limited.iter().flatten().min().copied().unwrap_or(30);
        let mut fin = fin;
        fin.first_byte(429);
        let mut r = respond::error_in(
            fin.dialect,
            429,
            "Every account that could serve this request is rate limited; retry later.",
            Some("rate_limit_exceeded"),
            &fin.log.id,
        );
        respond::retry_after(&mut r, secs);
        fin.complete(None, Some(ErrorClass::RateLimited));
        return r;
    }
    let transient = failures.iter().any(|f| {
        matches!(
            f,
            Failure::Network | Failure::Upstream(Outcome::Upstream5xx | Outcome::Challenge)
        )
    });
    let last_class = match failures.last() {
        Some(Failure::Network) => Some(ErrorClass::Network),
        Some(Failure::Upstream(o)) => o.error_class(),
        None => None,
    };
    if transient {
        fail(
            fin,
            502,
            &format!(
                "The upstream failed on every account tried ({} attempts).",
                failures.len()
            ),
            Some("upstream_error"),
            last_class,
        )
    } else {
        fail(
            fin,
            503,
            "Every account tried was refused by the upstream (authentication or deactivation).",
            Some("no_available_account"),
            last_class,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::of(&Method::POST, "/v1/responses"), Route::Responses);
        assert_eq!(Route::of(&Method::POST, "/responses"), Route::Responses);
        assert_eq!(
            Route::of(&Method::POST, "/v1/responses/compact"),
            Route::Compact
        );
        assert_eq!(
            Route::of(&Method::POST, "/v1/chat/completions"),
            Route::Chat
        );
        assert_eq!(Route::of(&Method::GET, "/v1/models"), Route::Models);
        assert_eq!(Route::of(&Method::GET, "/health"), Route::Health);
        assert_eq!(
            Route::of(&Method::GET, "/v1/responses"),
            Route::MethodNotAllowed
        );
        assert_eq!(Route::of(&Method::OPTIONS, "/v1/responses"), Route::Options);
        assert_eq!(Route::of(&Method::POST, "/v2/x"), Route::NotFound);
        assert_eq!(Route::of(&Method::POST, "/v1/messages"), Route::Messages);
        assert_eq!(Route::of(&Method::POST, "/v1/messages/"), Route::Messages);
        assert_eq!(
            Route::of(&Method::POST, "/v1/messages/count_tokens"),
            Route::CountTokens
        );
        assert_eq!(
            Route::of(&Method::GET, "/v1/messages"),
            Route::MethodNotAllowed
        );
        assert_eq!(Route::Messages.dialect(), ErrorDialect::Anthropic);
        assert_eq!(Route::CountTokens.dialect(), ErrorDialect::Anthropic);
        assert_eq!(Route::Chat.dialect(), ErrorDialect::OpenAi);
        assert_eq!(path_dialect("/v1/messages"), ErrorDialect::Anthropic);
        assert_eq!(
            path_dialect("/v1/messages/batches"),
            ErrorDialect::Anthropic
        );
        assert_eq!(path_dialect("/v1/messagesx"), ErrorDialect::OpenAi);
        assert_eq!(path_dialect("/v1/responses"), ErrorDialect::OpenAi);
    }

    #[test]
    fn claude_names_map_to_the_codex_model() {
        let mut key = KeyGrant {
            id: "k".into(),
            status: poolgate_core::KeyStatus::Active,
            expires_at_ms: None,
            allowed_models: Arc::from(Vec::new()),
            model_override: None,
            reasoning_effort: None,
            account_groups: Arc::from(Vec::new()),
        };
        let none = poolgate_core::RoutingPolicy::default();
        let m = |model: &str, key: &KeyGrant, p: &poolgate_core::RoutingPolicy, d: &str| {
            messages_codex_model(model, key, p, d)
        };
        assert_eq!(m("claude-sonnet-4-5", &key, &none, "gpt-5"), "gpt-5");
        assert_eq!(m("Claude-Opus-4-1", &key, &none, "gpt-5.4"), "gpt-5.4");
        assert_eq!(m("gpt-5.4-mini", &key, &none, "gpt-5"), "gpt-5.4-mini");
        assert_eq!(m("cla", &key, &none, "gpt-5"), "cla");
        // A policy alias comes before the default.
        let aliased = poolgate_core::RoutingPolicy {
            model_aliases: vec![poolgate_core::ModelAlias {
                from: "claude-haiku-*".into(),
                to: "gpt-5-mini".into(),
            }],
            ..poolgate_core::RoutingPolicy::default()
        };
        assert_eq!(m("claude-haiku-4-5", &key, &aliased, "gpt-5"), "gpt-5-mini");
        assert_eq!(m("claude-opus-4-1", &key, &aliased, "gpt-5"), "gpt-5");
        // The key's override comes before both.
        key.model_override = Some("gpt-5.3-codex".into());
        assert_eq!(
            m("claude-haiku-4-5", &key, &aliased, "gpt-5"),
            "gpt-5.3-codex"
        );
        assert_eq!(m("gpt-5.4", &key, &none, "gpt-5"), "gpt-5.3-codex");
    }

    #[test]
    fn error_summaries_stay_short_and_plain() {
        assert_eq!(
            error_summary(br#"{"error":{"code":"usage_limit_reached","message":"You've hit your usage limit"}}"#),
            "usage_limit_reached: You've hit your usage limit"
        );
        assert_eq!(error_summary(b"<html>\n</html>"), "<html></html>");
        assert_eq!(retry_secs(Some(10_500), 10_000), Some(1));
        assert_eq!(retry_secs(Some(70_000), 10_000), Some(60));
        assert_eq!(retry_secs(None, 0), None);
    }
}
