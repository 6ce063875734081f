//! The end of a client request: its request log goes to the report queue, its metrics and
//! span get the final figures, and its in-flight slot is freed. Runs exactly once, when the
//! response is complete, or when it is dropped unfinished (the client went away).

use std::sync::Arc;
use std::time::Instant;

use poolgate_core::{ErrorClass, RequestLog};
use poolgate_wire::usage::TokenUsage;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;
use crate::report::Reporter;
use crate::respond::ErrorDialect;
use crate::state::InflightGuard;

/// Counts a client request as active while it lives.
pub(crate) struct ActiveGuard(Gauge);

impl ActiveGuard {
    pub fn new(metrics: &Metrics) -> Self {
        let g = metrics.active().clone();
        g.inc();
        ActiveGuard(g)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn ms_u32(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

pub(crate) struct Finish {
    pub log: RequestLog,
    pub started: Instant,
    pub route: &'static str,
    pub span: tracing::Span,
    /// The shape of the errors this request answers with.
    pub dialect: ErrorDialect,
    reporter: Arc<Reporter>,
    metrics: Arc<Metrics>,
    guard: Option<InflightGuard>,
    _active: ActiveGuard,
    done: bool,
}

impl Finish {
    pub fn new(
        log: RequestLog,
        route: &'static str,
        span: tracing::Span,
        reporter: Arc<Reporter>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let active = ActiveGuard::new(&metrics);
        Finish {
            log,
            started: Instant::now(),
            route,
            span,
            dialect: ErrorDialect::default(),
            reporter,
            metrics,
            guard: None,
            _active: active,
            done: false,
        }
    }

    /// Holds the final attempt's in-flight slot until the response is complete.
    pub fn hold(&mut self, guard: InflightGuard) {
        self.guard = Some(guard);
    }

    /// The response head is about to go out.
    pub fn first_byte(&mut self, status: u16) {
        self.log.status = status;
        // Rounded up: 0 means "no first byte" in the report protocol.
        let us = self.started.elapsed().as_micros().div_ceil(1000).max(1);
        self.log.ttfb_ms = Some(u32::try_from(us).unwrap_or(u32::MAX));
    }

    pub fn complete(mut self, usage: Option<TokenUsage>, error: Option<ErrorClass>) {
        self.finalize(usage, error);
    }

    fn finalize(&mut self, usage: Option<TokenUsage>, error: Option<ErrorClass>) {
        if self.done {
            return;
        }
        self.done = true;
        self.guard = None;
        let log = &mut self.log;
        if let Some(u) = usage {
            log.input_tokens = u.input_tokens;
            log.cached_input_tokens = u.cached_input_tokens;
            log.output_tokens = u.output_tokens;
            log.reasoning_tokens = u.reasoning_tokens;
            self.span
                .record("gen_ai.usage.input_tokens", u.input_tokens);
            self.span
                .record("gen_ai.usage.output_tokens", u.output_tokens);
        }
        if error.is_some() {
            log.error_class = error;
        }
        log.duration_ms = ms_u32(self.started.elapsed());
        self.span
            .record("http.response.status_code", u64::from(log.status));
        if let Some(e) = log.error_class {
            self.span.record("error.type", e.as_str());
        }
        let protocol = protocol_label(&log.protocol);
        self.metrics
            .request(self.route, log.status, protocol, log.translation.as_str());
        tracing::debug!(
            request_id = %log.id,
            status = log.status,
            attempts = log.attempts.len(),
            duration_ms = log.duration_ms,
            "request finished"
        );
        self.reporter.log(std::mem::replace(log, empty_log()));
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        // Dropped before the response ended: the client went away (or the stream was
        // abandoned); the log says so.
        self.finalize(None, Some(ErrorClass::Cancelled));
    }
}

fn protocol_label(p: &str) -> &'static str {
    match p {
        "openai_responses" => "openai_responses",
        "openai_chat" => "openai_chat",
        "openai_models" => "openai_models",
        "openai_compact" => "openai_compact",
        "anthropic_messages" => "anthropic_messages",
        "anthropic_count_tokens" => "anthropic_count_tokens",
        _ => "other",
    }
}

fn empty_log() -> RequestLog {
    RequestLog {
        id: String::new(),
        ts_ms: 0,
        key_id: None,
        account_id: None,
        attempts: Vec::new(),
        method: String::new(),
        path: String::new(),
        model: None,
        protocol: String::new(),
        status: 0,
        error_class: None,
        input_tokens: 0,
        cached_input_tokens: 0,
        output_tokens: 0,
        reasoning_tokens: 0,
        ttfb_ms: None,
        duration_ms: 0,
        translation: poolgate_core::Translation::None,
        upstream_model: None,
        node: String::new(),
    }
}

pub(crate) fn new_log(
    id: &str,
    ts_ms: i64,
    method: &str,
    path: &str,
    protocol: &str,
    node: &str,
) -> RequestLog {
    RequestLog {
        id: id.to_string(),
        ts_ms,
        method: method.to_string(),
        path: path.to_string(),
        protocol: protocol.to_string(),
        node: node.to_string(),
        ..empty_log()
    }
}
