//! OpenTelemetry traces over OTLP (HTTP/protobuf), on only when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set: one span per client request with `gen_ai.*` attributes, the caller's W3C trace
//! context as parent, and `traceparent` sent upstream.
//!
//! Off (the default), the request span is an ordinary `tracing` span and no header is added.

use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::Subscriber;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt};
use tracing_subscriber::registry::LookupSpan;

static ENABLED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP trace exporter: {0}")]
pub struct TelemetryError(String);

/// Flushes and stops the exporter when dropped. Drop it outside the async runtime (the
/// exporter's HTTP client blocks).
pub struct OtelGuard {
    provider: SdkTracerProvider,
}

impl std::fmt::Debug for OtelGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtelGuard")
    }
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        ENABLED.store(false, Ordering::SeqCst);
        if let Err(e) = self.provider.shutdown() {
            eprintln!("poolgate: flushing traces failed: {e}");
        }
    }
}

/// The layer to add to the subscriber, and the guard to keep until exit.
pub struct Otel<S> {
    pub layer: OpenTelemetryLayer<S, SdkTracer>,
    pub guard: OtelGuard,
}

impl<S> std::fmt::Debug for Otel<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Otel")
    }
}

/// The tracing layer that exports spans over OTLP, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; `OTEL_SERVICE_NAME` and
/// `OTEL_RESOURCE_ATTRIBUTES` are honoured too. Call it before the async runtime starts.
pub fn otel_layer<S>(default_service_name: &str) -> Result<Option<Otel<S>>, TelemetryError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if !env_set("OTEL_EXPORTER_OTLP_ENDPOINT") && !env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(None);
    }
    build(default_service_name, None).map(Some)
}

/// [`otel_layer`] with the OTLP/HTTP base URL given (`{endpoint}/v1/traces` receives spans)
/// instead of read from the environment.
pub fn otel_layer_to<S>(
    default_service_name: &str,
    endpoint: &str,
) -> Result<Otel<S>, TelemetryError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    build(default_service_name, Some(endpoint))
}

fn env_set(k: &str) -> bool {
    std::env::var(k).ok().is_some_and(|v| !v.trim().is_empty())
}

fn build<S>(default_service_name: &str, endpoint: Option<&str>) -> Result<Otel<S>, TelemetryError>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    use opentelemetry_otlp::WithExportConfig;
    poolgate_upstream::install_crypto_provider();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Some(e) = endpoint {
        exporter = exporter.with_endpoint(format!("{}/v1/traces", e.trim_end_matches('/')));
    }
    let exporter = exporter
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    let mut resource = Resource::builder();
    if !env_set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(default_service_name.to_string());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("poolgate");
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    ENABLED.store(true, Ordering::SeqCst);
    Ok(Otel {
        layer: tracing_opentelemetry::layer().with_tracer(tracer),
        guard: OtelGuard { provider },
    })
}

pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The span of one client request; usage and status are recorded when it ends.
///
/// An INFO span when traces are exported; otherwise DEBUG, so at the usual log levels the
/// hot path neither creates it nor has the log formatter render its fields for every
/// request (request-path log events name the request id themselves).
pub(crate) fn request_span(method: &str, route: &str, request_id: &str) -> tracing::Span {
    macro_rules! span {
        ($level:expr) => {
            tracing::span!(
                $level,
                "gateway_request",
                otel.name = %format_args!("{method} {route}"),
                otel.kind = "server",
                request_id = %request_id,
                gen_ai.system = "openai",
                gen_ai.operation.name = "chat",
                gen_ai.request.model = tracing::field::Empty,
                gen_ai.usage.input_tokens = tracing::field::Empty,
                gen_ai.usage.output_tokens = tracing::field::Empty,
                http.response.status_code = tracing::field::Empty,
                error.type = tracing::field::Empty,
            )
        };
    }
    if enabled() {
        span!(tracing::Level::INFO)
    } else {
        span!(tracing::Level::DEBUG)
    }
}

struct HeaderIo<'a>(&'a HeaderMap);

impl Extractor for HeaderIo<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct Pairs(Vec<(HeaderName, HeaderValue)>);

impl Injector for Pairs {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.push((n, v));
        }
    }
}

/// Makes the caller's W3C trace context the parent of the request span.
pub(crate) fn set_parent(span: &tracing::Span, headers: &HeaderMap) {
    if !enabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderIo(headers)));
    let _ = span.set_parent(cx);
}

/// `traceparent` (and `tracestate`) for the upstream request, continuing the span's trace.
pub(crate) fn propagation_headers(span: &tracing::Span) -> Vec<(HeaderName, HeaderValue)> {
    if !enabled() {
        return Vec::new();
    }
    let cx = span.context();
    let mut out = Pairs(Vec::new());
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut out));
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_injected_when_off() {
        let span = request_span("POST", "responses", "rid");
        assert!(propagation_headers(&span).is_empty());
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                .parse()
                .unwrap(),
        );
        set_parent(&span, &h);
        let io = HeaderIo(&h);
        assert_eq!(io.keys(), vec!["traceparent"]);
        let mut p = Pairs(Vec::new());
        p.set("traceparent", "00-x".into());
        p.set("bad key", "v".into());
        assert_eq!(p.0.len(), 1);
    }
}
