//! Accept loop, per-request context and routing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::MockConfig;
use super::body::{Aborted, MockBody, Plan, Step};
use super::fault::{Fault, Surface, http_answer};
use super::openai::Api;
use super::state::{Intake, RecordedRequest, Scope, State};
use super::util::{bearer, header_str, now_secs, openai_error};
use super::{anthropic, codex, control, login, oauth, openai};

/// Upper bound on generated deltas per answer.
const MAX_DELTAS: u32 = 100_000;
/// Upper bound on a configured pause.
const MAX_DELAY_MS: u64 = 3_600_000;

pub(crate) struct Inner {
    pub state: State,
    pub config: MockConfig,
    /// `http://ADDR`.
    pub url: String,
    /// Per-instance random number, so tokens of two mocks never collide.
    pub nonce: u32,
}

/// One request, its body read.
pub(crate) struct Cx {
    pub inner: Arc<Inner>,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How a fault shapes an otherwise normal answer.
#[derive(Debug, Default)]
pub(crate) struct Shaping {
    pub stall: Option<(u32, Duration)>,
    pub drop_after: Option<u32>,
    pub failure: Option<(String, Option<u64>)>,
    /// The failure comes after the content deltas instead of before them.
    pub failure_after_content: bool,
    /// A JSON answer is cut after half its announced length; a stream after one event.
    pub truncate: bool,
}

impl Shaping {
    /// The stream plan with this shaping and the given delta delay.
    pub(crate) fn plan(&self, delta_delay: Duration) -> Plan {
        Plan {
            delta_delay,
            stall: self.stall,
            drop_after: self.drop_after.or(self.truncate.then_some(1)),
        }
    }

    /// A JSON answer under this shaping: a drop closes the connection without any answer, a
    /// stall holds the body back after the head.
    pub(crate) fn json(&self, resp: Response<MockBody>) -> Result<Response<MockBody>, Aborted> {
        if self.drop_after.is_some() {
            return Err(Aborted);
        }
        if self.truncate {
            let (parts, body) = resp.into_parts();
            let data = match body {
                MockBody::Full(b) => b.unwrap_or_default(),
                MockBody::Paced(_) => return Ok(Response::from_parts(parts, body)),
            };
            let mut parts = parts;
            parts.headers.insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from(data.len()),
            );
            let half = data.slice(..data.len() / 2);
            let steps = VecDeque::from([Step::Data(half), Step::Flush, Step::Abort]);
            return Ok(Response::from_parts(parts, MockBody::paced(steps)));
        }
        let Some((_, stall)) = self.stall else {
            return Ok(resp);
        };
        let (parts, body) = resp.into_parts();
        let data = match body {
            MockBody::Full(b) => b.unwrap_or_default(),
            MockBody::Paced(_) => return Ok(Response::from_parts(parts, body)),
        };
        let steps = VecDeque::from([Step::Pause(stall), Step::Data(data)]);
        let mut parts = parts;
        parts.headers.remove(http::header::CONTENT_LENGTH);
        Ok(Response::from_parts(parts, MockBody::paced(steps)))
    }
}

impl Cx {
    pub(crate) fn token(&self) -> Option<&str> {
        bearer(&self.headers)
    }

    /// Records this request under `token`, counts it and takes its fault (see
    /// [`State::intake`]).
    pub(crate) fn intake(
        &self,
        token: Option<&str>,
        scope: Option<Scope>,
        cache_key: Option<u64>,
    ) -> Intake {
        let rec = self.inner.state.recording().then(|| RecordedRequest {
            method: self.method.clone(),
            path: self
                .uri
                .path_and_query()
                .map_or_else(|| self.uri.path().to_string(), |p| p.as_str().to_string()),
            headers: self.headers.clone(),
            // A copy: a slice would pin hyper's whole read buffer while it sits in the ring.
            body: Bytes::copy_from_slice(&self.body),
            token: token.map(str::to_string),
        });
        self.inner.state.intake(rec, token, scope, cache_key)
    }

    /// Applies a taken fault: an immediate answer for HTTP-level faults, a pause for a slow
    /// first byte, or the shaping of the normal answer.
    pub(crate) async fn shape(
        &self,
        fault: Option<Fault>,
        surface: Surface,
    ) -> Result<Shaping, Response<MockBody>> {
        let Some(fault) = fault else {
            return Ok(Shaping::default());
        };
        if let Some(r) = http_answer(&fault, surface, now_secs()) {
            return Err(r);
        }
        let mut s = Shaping::default();
        match fault {
            Fault::SlowFirstByte { delay_ms } => {
                tokio::time::sleep(Duration::from_millis(delay_ms.min(MAX_DELAY_MS))).await;
            }
            Fault::StallMidStream {
                after_events,
                stall_ms,
            } => {
                s.stall = Some((
                    after_events,
                    Duration::from_millis(stall_ms.min(MAX_DELAY_MS)),
                ))
            }
            Fault::DropConnection { after_events } => s.drop_after = Some(after_events),
            Fault::TruncatedBody => s.truncate = true,
            Fault::InStreamFailure {
                code,
                resets_in_secs,
            } => s.failure = Some((code, resets_in_secs)),
            Fault::FailureAfterContent {
                code,
                resets_in_secs,
            } => {
                s.failure = Some((code, resets_in_secs));
                s.failure_after_content = true;
            }
            Fault::RateLimited { .. }
            | Fault::UsageLimit { .. }
            | Fault::Unauthorized
            | Fault::Deactivated
            | Fault::ServerError { .. }
            | Fault::Challenge
            | Fault::RegionBlocked
            | Fault::RefreshTokenExpired => {}
        }
        Ok(s)
    }

    /// Deltas per answer and the pause before each: request headers (`x-mock-deltas`,
    /// `x-mock-delta-delay-ms`) win over the token's settings, which win over the defaults.
    pub(crate) fn pacing(&self, intake: &Intake) -> (usize, Duration) {
        let num = |name: &str| header_str(&self.headers, name).and_then(|v| v.parse::<u64>().ok());
        let deltas = num("x-mock-deltas")
            .or(intake.pacing.deltas.map(u64::from))
            .unwrap_or(u64::from(self.inner.config.deltas))
            .clamp(1, u64::from(MAX_DELTAS));
        let delay = num("x-mock-delta-delay-ms")
            .or(intake.pacing.delta_delay_ms)
            .unwrap_or(self.inner.config.delta_delay_ms)
            .min(MAX_DELAY_MS);
        (
            usize::try_from(deltas).unwrap_or(1),
            Duration::from_millis(delay),
        )
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    inner: Arc<Inner>,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(true).header_read_timeout(None);
    let builder = Arc::new(builder);
    let conn_stop = stop.clone();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, builder.clone(), inner.clone(), conn_stop.clone()));
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "mock upstream accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
        }
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

async fn connection(
    stream: TcpStream,
    builder: Arc<auto::Builder<TokioExecutor>>,
    inner: Arc<Inner>,
    mut stop: watch::Receiver<bool>,
) {
    // Nagle would hold small SSE frames for up to 40 ms.
    let _ = stream.set_nodelay(true);
    let svc = service_fn(move |req| handle(inner.clone(), req));
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    tokio::select! {
        // Errors here are the peer's (resets, malformed requests) or our deliberate drops.
        _ = conn.as_mut() => {}
        _ = stopped(&mut stop) => {}
    }
}

async fn handle(inner: Arc<Inner>, req: Request<Incoming>) -> Result<Response<MockBody>, Aborted> {
    let (parts, incoming) = req.into_parts();
    let body = match Limited::new(incoming, inner.config.max_body_bytes)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Ok(openai_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request body too large",
                "invalid_request_error",
                None,
                None,
            ));
        }
        Err(_) => return Err(Aborted),
    };
    let cx = Cx {
        inner,
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
    };
    let path = cx.uri.path().to_string();
    if let Some(rest) = path.strip_prefix("/__mock/") {
        return Ok(control::handle(&cx, rest));
    }
    let m = &cx.method;
    match path.as_str() {
        "/backend-api/codex/responses" if m == Method::POST => codex::responses(&cx, false).await,
        "/backend-api/codex/responses/compact" if m == Method::POST => {
            codex::responses(&cx, true).await
        }
        "/backend-api/codex/models" if m == Method::GET => codex::models(&cx).await,
        "/backend-api/wham/usage" | "/api/codex/usage" if m == Method::GET => {
            codex::usage(&cx).await
        }
        "/v1/chat/completions" if m == Method::POST => openai::chat(&cx, Api::OpenAi).await,
        "/v1/responses" if m == Method::POST => openai::responses(&cx, Api::OpenAi).await,
        "/v1/messages" if m == Method::POST => anthropic::messages(&cx).await,
        p if p.starts_with("/openai/") => openai::azure(&cx, p).await,
        "/v1/models" if m == Method::GET => openai::models(&cx).await,
        "/oauth/token" if m == Method::POST => oauth::token(&cx).await,
        "/oauth/authorize" if m == Method::GET => login::authorize(&cx),
        "/api/accounts/deviceauth/usercode" if m == Method::POST => login::device_usercode(&cx),
        "/api/accounts/deviceauth/token" if m == Method::POST => login::device_token(&cx),
        "/backend-api/codex/responses"
        | "/backend-api/codex/responses/compact"
        | "/backend-api/codex/models"
        | "/backend-api/wham/usage"
        | "/api/codex/usage"
        | "/v1/chat/completions"
        | "/v1/responses"
        | "/v1/messages"
        | "/v1/models"
        | "/oauth/token"
        | "/oauth/authorize"
        | "/api/accounts/deviceauth/usercode"
        | "/api/accounts/deviceauth/token" => {
            cx.intake(cx.token(), None, None);
            Ok(openai_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                "invalid_request_error",
                None,
                None,
            ))
        }
        _ => {
            cx.intake(cx.token(), None, None);
            Ok(openai_error(
                StatusCode::NOT_FOUND,
                &format!("Unknown path {path}"),
                "invalid_request_error",
                None,
                Some("not_found"),
            ))
        }
    }
}
