//! Prometheus metrics of the gateway, served on the admin port at `/metrics`.

use std::cell::RefCell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::thread::LocalKey;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::clock::now_ms;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
    protocol: &'static str,
    /// How the upstream was spoken to: `none`, `chat_to_responses`, `messages_to_responses`.
    translation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    provider: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AccountLabels {
    account: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: u32,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

fn latency_histogram() -> Histogram {
    // 5 ms .. ~160 s: upstream time to response headers.
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// Handles of the series every request touches, kept per thread: found by comparing a few
/// label values in a short list no other thread reads, rather than by hashing the labels
/// (SipHash) under the family's lock, which every serving thread takes. Bounded: a thread
/// that has seen more label sets than this starts over.
const HOT_CACHE: usize = 256;

type Hot<L, M> = RefCell<Vec<(u64, L, M)>>;

thread_local! {
    static HOT_REQUESTS: Hot<RequestLabels, Counter> = const { RefCell::new(Vec::new()) };
    static HOT_ATTEMPTS: Hot<AttemptLabels, Counter> = const { RefCell::new(Vec::new()) };
    static HOT_LATENCY: Hot<ProviderLabels, Histogram> = const { RefCell::new(Vec::new()) };
}

/// Gives each `Metrics` its own entries in the per-thread caches.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Runs `f` on the series of `labels` in metrics `id`, from this thread's cache, or from
/// `make` (the family's lookup) the first time.
fn with_hot<L: PartialEq + Clone + 'static, M: Clone + 'static>(
    cache: &'static LocalKey<Hot<L, M>>,
    id: u64,
    labels: &L,
    make: impl FnOnce() -> M,
    f: impl FnOnce(&M),
) {
    cache.with(|c| {
        let mut c = c.borrow_mut();
        if let Some((_, _, m)) = c.iter().find(|(i, l, _)| *i == id && l == labels) {
            f(m);
            return;
        }
        if c.len() >= HOT_CACHE {
            c.clear();
        }
        let m = make();
        f(&m);
        c.push((id, labels.clone(), m));
    });
}

pub struct Metrics {
    id: u64,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    requests_active: Gauge,
    attempts: Family<AttemptLabels, Counter>,
    failovers: Family<ReasonLabels, Counter>,
    cooldowns: Family<ReasonLabels, Counter>,
    skips: Family<ReasonLabels, Counter>,
    inflight: Family<AccountLabels, Gauge>,
    worker_connections: Family<WorkerLabels, Gauge>,
    upstream_latency: Family<ProviderLabels, Histogram, fn() -> Histogram>,
    snapshot_version: Gauge,
    snapshot_age: Gauge<f64, AtomicU64>,
    snapshot_connected: Gauge,
    snapshot_applied_ms: AtomicI64,
    report_dropped: Counter,
    report_queue: Gauge,
    report_batches: Family<ResultLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("poolgate_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "requests",
            "Client requests by route, HTTP status and protocol",
            requests.clone(),
        );
        let requests_active = Gauge::default();
        r.register(
            "requests_active",
            "Client requests being served (streams included)",
            requests_active.clone(),
        );
        let attempts = Family::<AttemptLabels, Counter>::default();
        r.register(
            "upstream_attempts",
            "Upstream attempts by provider and outcome",
            attempts.clone(),
        );
        let failovers = Family::<ReasonLabels, Counter>::default();
        r.register(
            "failovers",
            "Attempts abandoned for the next candidate, by reason",
            failovers.clone(),
        );
        let cooldowns = Family::<ReasonLabels, Counter>::default();
        r.register(
            "cooldowns",
            "Local account cooldowns started or extended, by reason",
            cooldowns.clone(),
        );
        let skips = Family::<ReasonLabels, Counter>::default();
        r.register(
            "candidate_skips",
            "Accounts passed over for a request, by reason",
            skips.clone(),
        );
        let inflight = Family::<AccountLabels, Gauge>::default();
        r.register(
            "account_inflight",
            "Requests in flight per upstream account",
            inflight.clone(),
        );
        let worker_connections = Family::<WorkerLabels, Gauge>::default();
        r.register(
            "worker_connections",
            "Client connections open on each serving thread",
            worker_connections.clone(),
        );
        let upstream_latency =
            Family::<ProviderLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        r.register(
            "upstream_latency_seconds",
            "Time from sending an attempt to the upstream's response headers",
            upstream_latency.clone(),
        );
        let snapshot_version = Gauge::default();
        r.register(
            "snapshot_version",
            "Version of the applied snapshot (0 = none yet)",
            snapshot_version.clone(),
        );
        let snapshot_age = Gauge::<f64, AtomicU64>::default();
        r.register(
            "snapshot_age_seconds",
            "Seconds since the last snapshot update was applied",
            snapshot_age.clone(),
        );
        let snapshot_connected = Gauge::default();
        r.register(
            "snapshot_stream_connected",
            "1 while the snapshot stream to the control plane is open",
            snapshot_connected.clone(),
        );
        let report_dropped = Counter::default();
        r.register(
            "report_dropped",
            "Report records (logs, observations) dropped because the queue was full",
            report_dropped.clone(),
        );
        let report_queue = Gauge::default();
        r.register(
            "report_queue_depth",
            "Report records waiting to be shipped",
            report_queue.clone(),
        );
        let report_batches = Family::<ResultLabels, Counter>::default();
        r.register(
            "report_batches",
            "Report batches sent to the control plane, by result",
            report_batches.clone(),
        );
        Metrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry: r,
            requests,
            requests_active,
            attempts,
            failovers,
            cooldowns,
            skips,
            inflight,
            worker_connections,
            upstream_latency,
            snapshot_version,
            snapshot_age,
            snapshot_connected,
            snapshot_applied_ms: AtomicI64::new(0),
            report_dropped,
            report_queue,
            report_batches,
        }
    }

    pub(crate) fn request(
        &self,
        route: &'static str,
        status: u16,
        protocol: &'static str,
        translation: &'static str,
    ) {
        let labels = RequestLabels {
            route,
            status,
            protocol,
            translation,
        };
        with_hot(
            &HOT_REQUESTS,
            self.id,
            &labels,
            || self.requests.get_or_create(&labels).clone(),
            |c| {
                c.inc();
            },
        );
    }

    pub(crate) fn active(&self) -> &Gauge {
        &self.requests_active
    }

    pub(crate) fn attempt(&self, provider: &'static str, outcome: &'static str) {
        let labels = AttemptLabels { provider, outcome };
        with_hot(
            &HOT_ATTEMPTS,
            self.id,
            &labels,
            || self.attempts.get_or_create(&labels).clone(),
            |c| {
                c.inc();
            },
        );
    }

    pub(crate) fn failover(&self, reason: &'static str) {
        self.failovers.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub(crate) fn cooldown(&self, reason: &'static str) {
        self.cooldowns.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub(crate) fn skip(&self, reason: &'static str) {
        self.skips.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub(crate) fn skips(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.skips.get_or_create(&ReasonLabels { reason }).inc_by(n);
        }
    }

    /// The gauge of one account, to keep next to its health (one lookup per account, not
    /// per request).
    pub(crate) fn inflight_gauge(&self, account: &str) -> Gauge {
        self.inflight
            .get_or_create(&AccountLabels {
                account: account.to_string(),
            })
            .clone()
    }

    /// The open-connection gauge of serving thread `worker` (the acceptor balances on it).
    pub(crate) fn worker_connections(&self, worker: usize) -> Gauge {
        self.worker_connections
            .get_or_create(&WorkerLabels {
                worker: u32::try_from(worker).unwrap_or(u32::MAX),
            })
            .clone()
    }

    pub(crate) fn forget_account(&self, account: &str) {
        self.inflight.remove(&AccountLabels {
            account: account.to_string(),
        });
    }

    pub(crate) fn upstream_latency(&self, provider: &'static str, secs: f64) {
        let labels = ProviderLabels { provider };
        with_hot(
            &HOT_LATENCY,
            self.id,
            &labels,
            || self.upstream_latency.get_or_create(&labels).clone(),
            |h| h.observe(secs),
        );
    }

    pub(crate) fn snapshot_applied(&self, version: i64) {
        self.snapshot_version.set(version);
        self.snapshot_applied_ms.store(now_ms(), Ordering::Relaxed);
    }

    pub(crate) fn snapshot_connected(&self, connected: bool) {
        self.snapshot_connected.set(i64::from(connected));
    }

    pub(crate) fn report_dropped(&self, n: u64) {
        self.report_dropped.inc_by(n);
    }

    pub(crate) fn report_queue(&self, depth: usize) {
        self.report_queue
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    pub(crate) fn report_batch(&self, ok: bool) {
        self.report_batches
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let applied = self.snapshot_applied_ms.load(Ordering::Relaxed);
        let age = if applied > 0 {
            (now_ms().saturating_sub(applied)) as f64 / 1000.0
        } else {
            0.0
        };
        self.snapshot_age.set(age);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_families() {
        let m = Metrics::new();
        m.request("responses", 200, "openai_responses", "none");
        m.attempt("codex", "success");
        m.failover("rate_limited");
        m.skip("cooldown");
        m.inflight_gauge("acc_1").inc();
        m.worker_connections(1).inc();
        m.upstream_latency("codex", 0.2);
        m.snapshot_applied(7);
        m.report_dropped(3);
        let text = m.encode().unwrap();
        for needle in [
            "poolgate_gateway_requests_total{route=\"responses\",status=\"200\",protocol=\"openai_responses\",translation=\"none\"} 1",
            "poolgate_gateway_upstream_attempts_total{provider=\"codex\",outcome=\"success\"} 1",
            "poolgate_gateway_failovers_total{reason=\"rate_limited\"} 1",
            "poolgate_gateway_candidate_skips_total{reason=\"cooldown\"} 1",
            "poolgate_gateway_account_inflight{account=\"acc_1\"} 1",
            "poolgate_gateway_worker_connections{worker=\"1\"} 1",
            "poolgate_gateway_snapshot_version 7",
            "poolgate_gateway_report_dropped_total 3",
            "poolgate_gateway_upstream_latency_seconds_count{provider=\"codex\"} 1",
            "poolgate_gateway_snapshot_age_seconds",
        ] {
            assert!(text.contains(needle), "missing {needle}\n{text}");
        }
    }
}
