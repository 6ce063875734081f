//! The report path: request logs and account observations go into a bounded queue (the
//! hot path only pushes), and a background task ships them in batches. When the control plane
//! is away the oldest records are dropped and counted, never the request.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use poolgate_core::report::{Observation, ObservationKind, ReportBatch};
use poolgate_core::{RequestLog, UnixMillis, UsageWindow};
use tokio::sync::{Notify, watch};

use crate::config::ReportConfig;
use crate::metrics::Metrics;
use crate::source::ReportSink;
use crate::state::Shared;

/// Accounts whose last reported usage is remembered (for "send only when changed").
const MAX_USAGE_MEMORY: usize = 100_000;
/// Reset instants closer than this count as unchanged (`reset-after-seconds` moves with the
/// clock on every response).
const RESET_SLACK_MS: i64 = 60_000;

/// Primary and secondary window last reported for an account.
type UsagePair = (Option<UsageWindow>, Option<UsageWindow>);

enum Record {
    Log(Box<RequestLog>),
    Obs(Observation),
}

pub(crate) struct Reporter {
    queue: Mutex<VecDeque<Record>>,
    cfg: ReportConfig,
    node_id: String,
    wake: Notify,
    /// Dropped since the last batch that reached the control plane.
    dropped: AtomicU64,
    last_usage: Mutex<HashMap<String, UsagePair>>,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn same_window(a: &Option<UsageWindow>, b: &Option<UsageWindow>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.used_percent == b.used_percent
                && a.window_minutes == b.window_minutes
                && match (a.resets_at_ms, b.resets_at_ms) {
                    (Some(x), Some(y)) => (x - y).abs() < RESET_SLACK_MS,
                    (x, y) => x == y,
                }
        }
        _ => false,
    }
}

impl Reporter {
    pub fn new(cfg: ReportConfig, node_id: String, metrics: Arc<Metrics>) -> Self {
        Reporter {
            queue: Mutex::new(VecDeque::new()),
            cfg,
            node_id,
            wake: Notify::new(),
            dropped: AtomicU64::new(0),
            last_usage: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn push(&self, r: Record) {
        let mut q = lock(&self.queue);
        if q.len() >= self.cfg.queue_capacity.max(1) {
            q.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.metrics.report_dropped(1);
        }
        q.push_back(r);
        let len = q.len();
        drop(q);
        self.metrics.report_queue(len);
        if len >= self.cfg.batch_max.max(1) {
            self.wake.notify_one();
        }
    }

    pub fn log(&self, log: RequestLog) {
        self.push(Record::Log(Box::new(log)));
    }

    pub fn observe(&self, obs: Observation) {
        self.push(Record::Obs(obs));
    }

    /// Usage windows seen in response headers: reported only when they changed since the
    /// last report for the account.
    pub fn usage(
        &self,
        account_id: &str,
        ts_ms: UnixMillis,
        primary: Option<UsageWindow>,
        secondary: Option<UsageWindow>,
    ) {
        if primary.is_none() && secondary.is_none() {
            return;
        }
        {
            let mut last = lock(&self.last_usage);
            if let Some((p, s)) = last.get(account_id)
                && same_window(p, &primary)
                && same_window(s, &secondary)
            {
                return;
            }
            if last.len() >= MAX_USAGE_MEMORY {
                last.clear();
            }
            last.insert(account_id.to_string(), (primary, secondary));
        }
        self.observe(Observation {
            account_id: account_id.to_string(),
            ts_ms,
            kind: ObservationKind::Usage { primary, secondary },
            detail: "response headers".into(),
        });
    }

    fn take(&self, max: usize) -> Vec<Record> {
        let mut q = lock(&self.queue);
        let n = q.len().min(max.max(1));
        let out: Vec<Record> = q.drain(..n).collect();
        self.metrics.report_queue(q.len());
        out
    }

    /// Puts a batch that could not be sent back in front (it is older than what queued
    /// meanwhile), dropping the oldest beyond the capacity.
    fn requeue(&self, records: Vec<Record>) {
        let mut q = lock(&self.queue);
        let room = self.cfg.queue_capacity.max(1).saturating_sub(q.len());
        let skip = records.len().saturating_sub(room);
        if skip > 0 {
            self.dropped.fetch_add(skip as u64, Ordering::Relaxed);
            self.metrics.report_dropped(skip as u64);
        }
        for r in records.into_iter().skip(skip).rev() {
            q.push_front(r);
        }
        self.metrics.report_queue(q.len());
    }

    pub fn queued(&self) -> usize {
        lock(&self.queue).len()
    }

    fn batch(&self, records: Vec<Record>, applied_version: i64, dropped: u64) -> ReportBatch {
        let mut b = ReportBatch {
            node_id: self.node_id.clone(),
            applied_version,
            logs: Vec::new(),
            observations: Vec::new(),
            dropped,
        };
        for r in records {
            match r {
                Record::Log(l) => b.logs.push(*l),
                Record::Obs(o) => b.observations.push(o),
            }
        }
        b
    }

    fn unbatch(b: ReportBatch) -> Vec<Record> {
        b.logs
            .into_iter()
            .map(|l| Record::Log(Box::new(l)))
            .chain(b.observations.into_iter().map(Record::Obs))
            .collect()
    }
}

/// Sends what is queued: a batch whenever `batch_max` records wait or `interval` passed,
/// retrying with backoff while the sink fails. Flushes once more on shutdown.
pub(crate) async fn ship(
    reporter: Arc<Reporter>,
    sink: Arc<dyn ReportSink>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let interval = reporter.cfg.interval.max(Duration::from_millis(10));
    let backoff_max = reporter.cfg.backoff_max.max(interval);
    let mut backoff = interval;
    loop {
        let stop = tokio::select! {
            _ = reporter.wake.notified() => false,
            _ = tokio::time::sleep(interval) => false,
            _ = shutdown.changed() => true,
        };
        let stop = stop || *shutdown.borrow();
        let sent_ok = flush(&reporter, sink.as_ref(), &shared, stop).await;
        if stop {
            return;
        }
        if sent_ok {
            backoff = interval;
        } else {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), flush(&reporter, sink.as_ref(), &shared, true)).await;
                    return;
                }
            }
            backoff = (backoff * 2).min(backoff_max);
        }
    }
}

/// Sends what is queued, at most `batch_max` records a call, going on only while a full
/// batch waits: under load that is one call per `batch_max` records, not one per round trip
/// with whatever trickled in meanwhile. `drain` sends everything (shutdown). False when the
/// sink failed.
async fn flush(reporter: &Reporter, sink: &dyn ReportSink, shared: &Shared, drain: bool) -> bool {
    loop {
        let records = reporter.take(reporter.cfg.batch_max);
        let dropped = reporter.dropped.load(Ordering::Relaxed);
        if records.is_empty() && dropped == 0 {
            return true;
        }
        let mut batch = reporter.batch(records, shared.version(), dropped);
        match sink.report(&mut batch).await {
            Ok(()) => {
                reporter.dropped.fetch_sub(dropped, Ordering::Relaxed);
                reporter.metrics.report_batch(true);
                let more = if drain {
                    1
                } else {
                    reporter.cfg.batch_max.max(1)
                };
                if reporter.queued() < more {
                    return true;
                }
            }
            Err(e) => {
                reporter.metrics.report_batch(false);
                tracing::warn!(error = %e, queued = reporter.queued() + batch.logs.len() + batch.observations.len(), "report batch not accepted; will retry");
                reporter.requeue(Reporter::unbatch(batch));
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemoryReportSink;

    fn log(id: &str) -> RequestLog {
        RequestLog {
            id: id.into(),
            ts_ms: 0,
            key_id: None,
            account_id: None,
            attempts: vec![],
            method: "POST".into(),
            path: "/v1/responses".into(),
            model: None,
            protocol: "openai_responses".into(),
            status: 200,
            error_class: None,
            input_tokens: 0,
            cached_input_tokens: 0,
            output_tokens: 0,
            reasoning_tokens: 0,
            ttfb_ms: None,
            duration_ms: 0,
            translation: poolgate_core::Translation::None,
            upstream_model: None,
            node: "n".into(),
        }
    }

    fn reporter(capacity: usize) -> Reporter {
        Reporter::new(
            ReportConfig {
                queue_capacity: capacity,
                batch_max: 2,
                interval: Duration::from_millis(10),
                backoff_max: Duration::from_millis(20),
            },
            "node-1".into(),
            Arc::new(Metrics::new()),
        )
    }

    #[tokio::test]
    async fn drops_oldest_when_full_and_reports_the_count() {
        let r = reporter(3);
        for i in 0..5 {
            r.log(log(&i.to_string()));
        }
        assert_eq!(r.queued(), 3);
        let sink = MemoryReportSink::new();
        let shared = Shared::new(Arc::new(Metrics::new()));
        assert!(flush(&r, &sink, &shared, true).await);
        let batches = sink.batches();
        assert_eq!(batches.len(), 2, "batch_max is 2");
        assert_eq!(batches[0].dropped, 2);
        assert_eq!(batches[0].node_id, "node-1");
        let ids: Vec<String> = sink.logs().into_iter().map(|l| l.id).collect();
        assert_eq!(ids, ["2", "3", "4"]);
        assert!(
            r.metrics
                .encode()
                .unwrap()
                .contains("poolgate_gateway_report_dropped_total 2")
        );
    }

    #[tokio::test]
    async fn failed_batches_are_requeued_in_order() {
        let r = reporter(10);
        r.log(log("a"));
        r.log(log("b"));
        let sink = MemoryReportSink::new();
        sink.set_failing(true);
        let shared = Shared::new(Arc::new(Metrics::new()));
        assert!(!flush(&r, &sink, &shared, false).await);
        r.log(log("c"));
        sink.set_failing(false);
        assert!(flush(&r, &sink, &shared, true).await);
        let ids: Vec<String> = sink.logs().into_iter().map(|l| l.id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_partial_batch_waits_for_the_interval_unless_draining() {
        let r = reporter(10);
        for i in 0..5 {
            r.log(log(&i.to_string()));
        }
        let sink = MemoryReportSink::new();
        let shared = Shared::new(Arc::new(Metrics::new()));
        // Two full batches go at once; the fifth record waits for more or for the interval.
        assert!(flush(&r, &sink, &shared, false).await);
        assert_eq!(sink.batches().len(), 2);
        assert_eq!(r.queued(), 1);
        assert!(flush(&r, &sink, &shared, false).await);
        assert_eq!(sink.batches().len(), 3, "the next wake-up sends what waits");
        assert_eq!(r.queued(), 0);
        r.log(log("5"));
        r.log(log("6"));
        r.log(log("7"));
        assert!(flush(&r, &sink, &shared, true).await);
        assert_eq!(r.queued(), 0, "draining sends everything");
        let ids: Vec<String> = sink.logs().into_iter().map(|l| l.id).collect();
        assert_eq!(ids, ["0", "1", "2", "3", "4", "5", "6", "7"]);
    }

    #[test]
    fn usage_is_reported_only_when_it_changes() {
        let r = reporter(100);
        let w = |p: f64, reset: i64| {
            Some(UsageWindow {
                used_percent: p,
                window_minutes: 300,
                resets_at_ms: Some(reset),
            })
        };
        r.usage("a", 0, w(10.0, 1_000_000), None);
        r.usage("a", 1, w(10.0, 1_000_500), None);
        r.usage("a", 2, w(11.0, 1_000_500), None);
        r.usage("b", 2, w(11.0, 1_000_500), None);
        r.usage("c", 2, None, None);
        assert_eq!(r.queued(), 3);
    }
}
