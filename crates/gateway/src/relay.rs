//! Upstream bodies on their way to the client: stream preflight (hold content-free events
//! while failover is still possible), SSE relay (raw chunks forwarded as they arrive, events
//! decoded on the side for usage and failures), chat and Anthropic Messages translation,
//! aggregation for non-streaming clients, keep-alives during upstream silence, and a clean
//! error frame when the upstream breaks after the first byte.
//!
//! The relay is the response body itself: when the client goes away hyper drops it, which
//! drops the upstream request and the in-flight slot with it.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use poolgate_core::ErrorClass;
use poolgate_upstream::{BodyStream, UpstreamError, collect_body};
use poolgate_wire::StreamTranslator;
use poolgate_wire::aggregate::{AggregateError, ResponsesAggregator};
use poolgate_wire::chat::chat_stream_error_frame;
use poolgate_wire::classify::{Outcome, StreamEventClass, StreamFailure, classify_stream_json};
use poolgate_wire::sse::{SseDecoder, SseEvent, event_type};
use poolgate_wire::usage::{TokenUsage, UsageAccumulator, usage_from_usage_slice};
use serde_json::Value;

use crate::clock::now_ms;
use crate::finish::Finish;
use crate::respond::{Body, BoxError};

/// Bound on one decoded event while relaying.
const MAX_EVENT_BYTES: usize = poolgate_wire::sse::DEFAULT_MAX_EVENT_BYTES;
/// How much of a raw body's end is kept to find its `usage`.
const USAGE_TAIL_BYTES: usize = 16 * 1024;

/// Which error frame a broken stream ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Responses,
    Chat,
    /// Anthropic Messages events from an Anthropic-key account.
    Anthropic,
}

/// What the relay does with the upstream body.
pub(crate) enum Mode {
    /// Bytes as they come; `usage` read from the tail of a JSON body.
    Raw,
    /// Server-sent events passed through unchanged.
    Sse(Dialect),
    /// Codex Responses events translated to another dialect's frames
    /// (`chat.completion.chunk`s, Anthropic Messages events).
    Translate(Box<dyn StreamTranslator>),
}

/// Events seen before the stream is released to the client.
pub(crate) struct Held {
    pub chunks: Vec<Bytes>,
    pub events: Vec<SseEvent>,
    pub decoder: SseDecoder,
    /// The upstream ended (cleanly) within the preflight.
    pub ended: bool,
}

pub(crate) enum Preflight {
    /// Deliver what is held and stream on.
    Release(Held),
    /// An in-stream failure before any content: try the next account.
    Failed(StreamFailure),
    /// The upstream broke (or ended without content) before any content: try the next one.
    Broken(UpstreamError),
}

fn is_content_free(class: StreamEventClass) -> bool {
    matches!(class, StreamEventClass::Lifecycle)
}

/// Reads the stream's opening until real content (or a terminal event) arrives, holding up
/// to `max_bytes` or `max_wait` of content-free events (seed spec §9.2 stream preflight).
pub(crate) async fn preflight(
    body: &mut BodyStream,
    max_bytes: usize,
    max_wait: Duration,
) -> Preflight {
    let deadline = tokio::time::Instant::now() + max_wait;
    let mut held = Held {
        chunks: Vec::new(),
        events: Vec::new(),
        decoder: SseDecoder::new(MAX_EVENT_BYTES),
        ended: false,
    };
    let mut held_bytes = 0usize;
    let mut fresh = Vec::new();
    loop {
        let next = match tokio::time::timeout_at(deadline, body.next()).await {
            Ok(n) => n,
            // Silence past the preflight window: let the client see what there is.
            Err(_) => return Preflight::Release(held),
        };
        match next {
            Some(Ok(chunk)) => {
                held_bytes += chunk.len();
                // An oversized event is dropped by the decoder; the raw bytes still go out.
                let _ = held.decoder.push(&chunk, &mut fresh);
                held.chunks.push(chunk);
                let mut release = false;
                for ev in fresh.drain(..) {
                    let json = ev.json();
                    match classify_stream_json(&ev, json.as_ref(), now_ms()) {
                        StreamEventClass::Failed(outcome) if outcome.should_failover() => {
                            let ty = event_type(&ev, json.as_ref())
                                .unwrap_or("error")
                                .to_string();
                            return Preflight::Failed(StreamFailure::from_event(
                                &ty,
                                json.as_ref(),
                                now_ms(),
                            ));
                        }
                        c if is_content_free(c) => {}
                        _ => release = true,
                    }
                    held.events.push(ev);
                }
                if release || held_bytes >= max_bytes {
                    return Preflight::Release(held);
                }
            }
            Some(Err(e)) => return Preflight::Broken(e),
            None => {
                let _ = held.decoder.finish(&mut fresh);
                let mut content = false;
                for ev in fresh.drain(..) {
                    let json = ev.json();
                    match classify_stream_json(&ev, json.as_ref(), now_ms()) {
                        StreamEventClass::Failed(outcome) if outcome.should_failover() => {
                            let ty = event_type(&ev, json.as_ref())
                                .unwrap_or("error")
                                .to_string();
                            return Preflight::Failed(StreamFailure::from_event(
                                &ty,
                                json.as_ref(),
                                now_ms(),
                            ));
                        }
                        c if is_content_free(c) => {}
                        _ => content = true,
                    }
                    held.events.push(ev);
                }
                if !content {
                    return Preflight::Broken(UpstreamError::Body(
                        "the upstream stream ended before any content".into(),
                    ));
                }
                held.ended = true;
                return Preflight::Release(held);
            }
        }
    }
}

/// The outcome of folding a whole Responses stream into one response.
pub(crate) enum Aggregated {
    Done {
        response: Value,
        usage: Option<TokenUsage>,
    },
    Failed(StreamFailure),
    Broken(UpstreamError),
    TooLarge(usize),
}

/// Reads the whole stream into one Responses object (for clients that did not stream).
pub(crate) async fn aggregate(mut body: BodyStream, max_bytes: usize) -> Aggregated {
    let mut agg = ResponsesAggregator::new(max_bytes);
    let mut decoder = SseDecoder::new(MAX_EVENT_BYTES.min(max_bytes.max(1)));
    let mut events = Vec::new();
    loop {
        match body.next().await {
            Some(Ok(chunk)) => {
                let _ = decoder.push(&chunk, &mut events);
                for ev in events.drain(..) {
                    agg.push(&ev, now_ms());
                }
                if agg.is_done() {
                    break;
                }
            }
            Some(Err(e)) => return Aggregated::Broken(e),
            None => {
                let _ = decoder.finish(&mut events);
                for ev in events.drain(..) {
                    agg.push(&ev, now_ms());
                }
                break;
            }
        }
    }
    let usage = agg.usage();
    match agg.finish() {
        Ok(response) => Aggregated::Done { response, usage },
        Err(AggregateError::Failed(f)) => Aggregated::Failed(f),
        Err(AggregateError::Truncated) => Aggregated::Broken(UpstreamError::Body(
            "the upstream stream ended before the response completed".into(),
        )),
        Err(AggregateError::TooLarge { limit }) => Aggregated::TooLarge(limit),
    }
}

/// What the side decoder learns from a passed-through event stream.
#[derive(Default)]
struct Tap {
    usage: UsageAccumulator,
    terminal: bool,
    failure: Option<StreamFailure>,
}

/// Told once about an account-level failure (quota, rate limit, auth, deactivation) that
/// the upstream reported inside a stream after its first byte reached the client. Failover
/// is over by then, but the account must still cool down and the control plane hear of it,
/// as for the same failure before the first byte.
pub(crate) type StreamFailureHook = Box<dyn FnOnce(&StreamFailure) + Send>;

/// Failures that say something about the account rather than about this one response.
fn is_account_failure(o: Outcome) -> bool {
    matches!(
        o,
        Outcome::RateLimited { .. }
            | Outcome::QuotaExhausted { .. }
            | Outcome::AuthFailed
            | Outcome::Deactivated
    )
}

/// Event names whose data may carry usage or end the stream; other named events (deltas)
/// are passed without parsing.
fn worth_parsing(ev: &SseEvent) -> bool {
    match ev.event.as_deref() {
        Some(name) => matches!(
            name,
            "response.completed"
                | "response.done"
                | "response.incomplete"
                | "response.failed"
                | "error"
                | "message_start"
                | "message_delta"
                | "message_stop"
        ),
        None => [
            "\"usage\"",
            "\"error\"",
            "response.completed",
            "response.done",
            "response.failed",
            "response.incomplete",
        ]
        .iter()
        .any(|n| ev.data.contains(n)),
    }
}

impl Tap {
    fn observe(&mut self, ev: &SseEvent, dialect: Dialect) {
        if ev.is_done() {
            self.terminal = true;
            return;
        }
        if !worth_parsing(ev) {
            return;
        }
        let json = ev.json();
        if let Some(v) = &json {
            self.usage.push_json(v);
        }
        match dialect {
            Dialect::Responses | Dialect::Anthropic => {
                match classify_stream_json(ev, json.as_ref(), now_ms()) {
                    StreamEventClass::Terminal => self.terminal = true,
                    StreamEventClass::Failed(_) => {
                        self.terminal = true;
                        let ty = event_type(ev, json.as_ref()).unwrap_or("error");
                        self.failure = Some(StreamFailure::from_event(ty, json.as_ref(), now_ms()));
                    }
                    _ => {}
                }
            }
            Dialect::Chat => {
                if json
                    .as_ref()
                    .and_then(|v| v.get("error"))
                    .is_some_and(|e| e.is_object())
                {
                    self.failure =
                        Some(StreamFailure::from_event("error", json.as_ref(), now_ms()));
                }
            }
        }
    }

    fn error_class(&self) -> Option<ErrorClass> {
        self.failure
            .as_ref()
            .map(|f| f.outcome.error_class().unwrap_or(ErrorClass::Upstream5xx))
    }
}

/// The error frame a client of `dialect` understands.
fn error_frame(dialect: Dialect, message: &str) -> Bytes {
    match dialect {
        Dialect::Chat => chat_stream_error_frame(502, message, Some("upstream_stream_error")),
        Dialect::Responses => {
            let data = serde_json::json!({
                "type": "error",
                "code": "upstream_stream_error",
                "message": message,
                "param": null,
            });
            poolgate_wire::sse::encode(Some("error"), &data.to_string())
        }
        Dialect::Anthropic => {
            let data = poolgate_wire::anthropic::anthropic_error_body(
                502,
                message,
                Some("upstream_stream_error"),
            );
            poolgate_wire::sse::encode(Some("error"), &data.to_string())
        }
    }
}

/// `usage` near the end of a JSON body, parsed on its own (the body is not parsed).
fn usage_from_tail(tail: &[u8]) -> Option<TokenUsage> {
    let needle = b"\"usage\"";
    let pos = memchr::memmem::rfind(tail, needle)?;
    let rest = tail.get(pos + needle.len()..)?;
    let colon = rest.iter().position(|b| *b == b':')?;
    usage_from_usage_slice(rest.get(colon + 1..)?)
}

/// Reads a non-streamed body the upstream announced as `len` bytes, whole, within
/// `timeout`; it must be exactly `len` bytes long. The request's usage is read from its tail.
pub(crate) async fn read_whole(
    upstream: BodyStream,
    len: usize,
    timeout: Duration,
) -> Result<(Bytes, Option<TokenUsage>), UpstreamError> {
    let body = match tokio::time::timeout(timeout, collect_body(upstream, len)).await {
        Ok(Ok(b)) => b,
        Ok(Err(UpstreamError::TooLarge { .. })) => {
            return Err(UpstreamError::Body(format!(
                "the upstream announced {len} bytes and sent more"
            )));
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(UpstreamError::Body(format!(
                "the body did not arrive within {:.1} s",
                timeout.as_secs_f64()
            )));
        }
    };
    if body.len() != len {
        return Err(UpstreamError::Body(format!(
            "the upstream announced {len} bytes and sent {}",
            body.len()
        )));
    }
    let usage = usage_from_tail(&body[body.len().saturating_sub(USAGE_TAIL_BYTES)..]);
    Ok((body, usage))
}

struct Relay {
    upstream: BodyStream,
    mode: Mode,
    decoder: SseDecoder,
    scratch: Vec<SseEvent>,
    out: VecDeque<Bytes>,
    tap: Tap,
    tail: BytesMut,
    keepalive: Option<Duration>,
    idle_timeout: Duration,
    /// Upstream silence so far, counted in whole timer ticks (so never more than the truth).
    silent: Duration,
    on_failure: Option<StreamFailureHook>,
    ended: bool,
    /// Set once a chunk failed to arrive; `Raw` bodies then abort instead of ending.
    abort: Option<UpstreamError>,
    error: Option<ErrorClass>,
    finish: Option<Finish>,
}

impl Relay {
    fn dialect(&self) -> Dialect {
        match &self.mode {
            Mode::Sse(d) => *d,
            Mode::Translate(_) | Mode::Raw => Dialect::Chat,
        }
    }

    fn on_events(&mut self, events: Vec<SseEvent>) {
        match &mut self.mode {
            Mode::Raw => {}
            Mode::Sse(d) => {
                let d = *d;
                for ev in &events {
                    self.tap.observe(ev, d);
                }
            }
            Mode::Translate(t) => {
                let mut frames = Vec::new();
                for ev in &events {
                    t.push(ev, now_ms(), &mut frames);
                }
                self.out.extend(frames);
            }
        }
        self.scratch = events;
        self.scratch.clear();
        self.report_failure();
    }

    /// Hands an account-level in-stream failure to the hook, once.
    fn report_failure(&mut self) {
        if self.on_failure.is_none() {
            return;
        }
        let failure = match &self.mode {
            Mode::Sse(_) => self.tap.failure.as_ref(),
            Mode::Translate(t) => t.failure(),
            Mode::Raw => None,
        };
        if let Some(f) = failure.filter(|f| is_account_failure(f.outcome))
            && let Some(hook) = self.on_failure.take()
        {
            hook(f);
        }
    }

    fn on_chunk(&mut self, chunk: Bytes) {
        match &self.mode {
            Mode::Raw => {
                self.tail.extend_from_slice(&chunk);
                if self.tail.len() > 2 * USAGE_TAIL_BYTES {
                    let cut = self.tail.len() - USAGE_TAIL_BYTES;
                    let _ = self.tail.split_to(cut);
                }
                self.out.push_back(chunk);
            }
            Mode::Sse(_) | Mode::Translate(_) => {
                let mut events = std::mem::take(&mut self.scratch);
                let _ = self.decoder.push(&chunk, &mut events);
                if matches!(self.mode, Mode::Sse(_)) {
                    self.out.push_back(chunk);
                }
                self.on_events(events);
            }
        }
    }

    /// The upstream ended (cleanly or not): flush the decoder and close the stream in the
    /// client's dialect.
    fn on_end(&mut self, failure: Option<UpstreamError>) {
        self.ended = true;
        let mut events = std::mem::take(&mut self.scratch);
        let _ = self.decoder.finish(&mut events);
        self.on_events(events);
        let dialect = self.dialect();
        match &mut self.mode {
            Mode::Raw => {
                if let Some(e) = failure {
                    self.error = Some(ErrorClass::Network);
                    self.abort = Some(e);
                }
            }
            Mode::Sse(_) => {
                if let Some(e) = &failure {
                    self.error = Some(ErrorClass::Network);
                    self.out
                        .push_back(error_frame(dialect, &format!("upstream stream broke: {e}")));
                } else if !self.tap.terminal && dialect != Dialect::Chat {
                    self.error = Some(ErrorClass::Network);
                    self.out.push_back(error_frame(
                        dialect,
                        "the upstream stream ended before the response completed",
                    ));
                } else if let Some(f) = self.tap.error_class() {
                    self.error = Some(f);
                }
            }
            Mode::Translate(t) => {
                if !t.is_finished() {
                    // Ends with the dialect's error frame.
                    let mut frames = Vec::new();
                    t.finish(&mut frames);
                    self.out.extend(frames);
                    self.error = Some(ErrorClass::Network);
                } else if let Some(f) = t.failure() {
                    self.error = f.outcome.error_class().or(Some(ErrorClass::Upstream5xx));
                }
            }
        }
    }

    fn at_frame_boundary(&self) -> bool {
        match self.mode {
            Mode::Sse(_) => self.decoder.buffered_len() == 0,
            Mode::Translate(_) => true,
            Mode::Raw => false,
        }
    }

    fn usage(&self) -> Option<TokenUsage> {
        match &self.mode {
            Mode::Raw => usage_from_tail(&self.tail),
            Mode::Sse(_) => self.tap.usage.usage(),
            Mode::Translate(t) => t.usage(),
        }
    }

    /// A frame the client ignores: the translated dialect's own keep-alive, else an SSE
    /// comment.
    fn keepalive_frame(&self) -> Bytes {
        match &self.mode {
            Mode::Translate(t) => t.keepalive_frame(),
            _ => poolgate_wire::sse::keep_alive(),
        }
    }

    fn complete(&mut self) {
        if let Some(f) = self.finish.take() {
            f.complete(self.usage(), self.error);
        }
    }

    async fn next(&mut self) -> Option<Result<Bytes, BoxError>> {
        loop {
            if let Some(b) = self.out.pop_front() {
                return Some(Ok(b));
            }
            if self.ended {
                self.complete();
                return self.abort.take().map(|e| Err(Box::new(e) as BoxError));
            }
            // Wake at the keep-alive interval, or at the idle limit for bodies without
            // keep-alives.
            let tick = self
                .keepalive
                .map_or(self.idle_timeout, |k| k.min(self.idle_timeout));
            let next = match tokio::time::timeout(tick, self.upstream.next()).await {
                Ok(n) => {
                    self.silent = Duration::ZERO;
                    n
                }
                Err(_) => {
                    self.silent = self.silent.saturating_add(tick);
                    if self.silent >= self.idle_timeout {
                        // A silent upstream would otherwise hold the client and the account's
                        // in-flight slot forever; end it the way a broken stream ends.
                        let secs = self.idle_timeout.as_secs_f64();
                        self.on_end(Some(UpstreamError::Body(format!(
                            "no data from the upstream for {secs:.1} s"
                        ))));
                    } else if self.keepalive.is_some() && self.at_frame_boundary() {
                        return Some(Ok(self.keepalive_frame()));
                    }
                    continue;
                }
            };
            match next {
                Some(Ok(chunk)) => self.on_chunk(chunk),
                Some(Err(e)) => self.on_end(Some(e)),
                None => self.on_end(None),
            }
        }
    }
}

impl Drop for Relay {
    /// Clients close as soon as they have the terminal event, often before the upstream's end
    /// of stream is read: a response whose terminal event went out is complete, not cancelled.
    fn drop(&mut self) {
        let Some(finish) = self.finish.take() else {
            return;
        };
        let delivered = self.out.is_empty();
        let terminal = match &self.mode {
            Mode::Sse(_) => self.tap.terminal,
            Mode::Translate(t) => t.is_finished(),
            Mode::Raw => self.tail.trim_ascii_end().ends_with(b"[DONE]"),
        };
        if delivered && terminal {
            finish.complete(self.usage(), self.error);
        } else {
            // Dropping it logs the request as cancelled.
            drop(finish);
        }
    }
}

/// The response body relaying `upstream` in `mode`, starting with what the preflight held.
/// `finish` completes the request log when the body ends or is dropped; `on_failure` hears
/// of an account-level failure inside the stream.
pub(crate) fn relay_body(
    upstream: BodyStream,
    mode: Mode,
    held: Option<Held>,
    keepalive: Option<Duration>,
    idle_timeout: Duration,
    on_failure: Option<StreamFailureHook>,
    finish: Finish,
) -> Body {
    let mut relay = Relay {
        upstream,
        mode,
        decoder: SseDecoder::new(MAX_EVENT_BYTES),
        scratch: Vec::new(),
        out: VecDeque::new(),
        tap: Tap::default(),
        tail: BytesMut::new(),
        keepalive,
        idle_timeout: idle_timeout.max(Duration::from_millis(1)),
        silent: Duration::ZERO,
        on_failure,
        ended: false,
        abort: None,
        error: None,
        finish: Some(finish),
    };
    if let Some(h) = held {
        relay.decoder = h.decoder;
        if matches!(relay.mode, Mode::Sse(_) | Mode::Raw) {
            relay.out.extend(h.chunks);
        }
        relay.on_events(h.events);
        if h.ended {
            relay.on_end(None);
        }
    }
    let stream = futures::stream::unfold(relay, |mut r| async move {
        r.next().await.map(|item| (item, r))
    });
    let body = http_body_util::StreamBody::new(stream.map(|r| r.map(hyper::body::Frame::data)));
    http_body_util::BodyExt::boxed_unsync(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_from_the_tail_of_a_json_body() {
        let body = br#"{"id":"x","choices":[{"message":{"content":"the \"usage\" word"}}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;
        let u = usage_from_tail(body).unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (7, 3));
        assert!(usage_from_tail(b"{\"a\":1}").is_none());
        assert!(usage_from_tail(b"\"usage\":").is_none());
    }

    #[test]
    fn tap_reads_usage_and_terminal_events() {
        let mut t = Tap::default();
        t.observe(
            &SseEvent::new(
                Some("response.output_text.delta"),
                r#"{"type":"response.output_text.delta","delta":"hi"}"#,
            ),
            Dialect::Responses,
        );
        assert!(!t.terminal);
        t.observe(
            &SseEvent::new(
                Some("response.completed"),
                r#"{"type":"response.completed","response":{"status":"completed","usage":{"input_tokens":5,"output_tokens":2,"total_tokens":7}}}"#,
            ),
            Dialect::Responses,
        );
        assert!(t.terminal);
        assert_eq!(t.usage.usage().unwrap().input_tokens, 5);
        let mut c = Tap::default();
        c.observe(&SseEvent::new(None, "[DONE]"), Dialect::Chat);
        assert!(c.terminal);
    }
}
