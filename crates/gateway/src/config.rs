//! Gateway settings. Defaults follow DESIGN.md and the seed spec's timeouts (§12).

use std::time::Duration;

use poolgate_upstream::UpstreamConfig;

/// 16 MiB: the default request body limit (larger bodies get 413).
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Client-facing listener (`host:port`; port 0 picks a free port).
    pub listen: String,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin_listen: String,
    /// Names this gateway in request logs and reports.
    pub node_id: String,
    /// Threads serving client connections, each with its own runtime and upstream pool;
    /// 0 means one per CPU the process may use (cgroup limits included).
    pub workers: usize,
    /// Request bodies above this (after zstd decoding) get 413.
    pub max_body_bytes: usize,
    /// A `: keep-alive` comment goes to SSE clients after this long without upstream bytes.
    pub keepalive_interval: Duration,
    /// Longest wait for an upstream's response head. Nothing has reached the client then, so
    /// an attempt that takes longer fails over like a network error.
    pub first_byte_timeout: Duration,
    /// A relayed body whose upstream sends nothing for this long is ended with an error
    /// frame (streams) or cut (other bodies), freeing its in-flight slot. Not a total
    /// timeout: a stream that keeps sending may last as long as it likes.
    pub stream_idle_timeout: Duration,
    /// Stream preflight: content-free events are held back up to this many bytes...
    pub preflight_max_bytes: usize,
    /// ...or this long, so an early in-stream quota error can still fail over.
    pub preflight_max_wait: Duration,
    /// A non-streamed upstream answer announcing a Content-Length up to this is read whole
    /// and sent with its length in one write (a break in it can still fail over); larger
    /// ones are relayed as they arrive.
    pub max_buffered_body_bytes: usize,
    /// Bound on an upstream error body read to classify it (and relay it).
    pub max_error_body_bytes: usize,
    /// Bound on a streamed response aggregated for a non-streaming client.
    pub max_aggregate_bytes: usize,
    pub report: ReportConfig,
    pub upstream: UpstreamConfig,
    /// Longest wait between snapshot stream reconnects.
    pub snapshot_backoff_max: Duration,
    /// The Codex model that serves Anthropic Messages requests naming a Claude model
    /// (`claude-*`), unless the key overrides the model.
    pub anthropic_default_model: String,
}

impl GatewayConfig {
    /// [`GatewayConfig::workers`] with 0 resolved to the CPUs available.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }
}

/// The default for [`GatewayConfig::anthropic_default_model`].
pub const DEFAULT_ANTHROPIC_MODEL: &str = "gpt-5";

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: "0.0.0.0:8080".into(),
            admin_listen: "0.0.0.0:9090".into(),
            node_id: "gateway".into(),
            workers: 0,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            keepalive_interval: Duration::from_secs(15),
            // The per-send stream timeout of seed spec §12 (300 000 ms); the Codex CLI gives
            // up on an idle stream after the same time.
            first_byte_timeout: Duration::from_secs(300),
            stream_idle_timeout: Duration::from_secs(300),
            preflight_max_bytes: 64 * 1024,
            preflight_max_wait: Duration::from_secs(10),
            max_buffered_body_bytes: 256 * 1024,
            max_error_body_bytes: 1024 * 1024,
            max_aggregate_bytes: poolgate_wire::aggregate::DEFAULT_MAX_AGGREGATE_BYTES,
            report: ReportConfig::default(),
            upstream: UpstreamConfig::default(),
            snapshot_backoff_max: Duration::from_secs(30),
            anthropic_default_model: DEFAULT_ANTHROPIC_MODEL.into(),
        }
    }
}

/// The report path: a bounded queue shipped in batches.
#[derive(Debug, Clone)]
pub struct ReportConfig {
    /// Records (logs + observations) held while the control plane is away; the oldest are
    /// dropped (and counted) beyond this.
    pub queue_capacity: usize,
    /// A batch is sent once this many records are waiting...
    pub batch_max: usize,
    /// ...or, with what is waiting, this long after the previous one. Short, so that at a
    /// moderate rate batches stay small: encoding and storing a second's worth of logs at once
    /// is a latency burst for the requests next to it.
    pub interval: Duration,
    /// Longest wait between retries while the control plane refuses batches.
    pub backoff_max: Duration,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            queue_capacity: 20_000,
            batch_max: 1_000,
            interval: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
        }
    }
}
