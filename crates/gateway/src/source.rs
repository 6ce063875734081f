//! Where a gateway gets its snapshots and where it sends its reports: two small traits with
//! gRPC implementations ([`crate::grpc`]) for the cluster, in-process adapters for
//! standalone, and in-memory ones ([`MemorySnapshotSource`], [`MemoryReportSink`]) for tests
//! and harnesses.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use poolgate_core::RequestLog;
use poolgate_core::report::{Observation, ReportBatch};
use poolgate_core::snapshot::Delta;
use tokio::sync::{Notify, broadcast, watch};

/// Why the snapshot stream failed; the gateway keeps serving its last snapshot and retries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    #[error("control plane refused the node token: {0}")]
    Unauthenticated(String),
    #[error("invalid snapshot update: {0}")]
    Invalid(String),
}

/// Why a report batch was not accepted; the gateway keeps it queued (bounded) and retries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    #[error("control plane rejected the report: {0}")]
    Rejected(String),
}

/// A stream of deltas: the first brings the gateway from `have_version` to the current
/// version (full or incremental), then one per change.
pub type DeltaStream = BoxStream<'static, Result<Delta, SourceError>>;

#[async_trait]
pub trait SnapshotSource: Send + Sync + 'static {
    async fn watch(&self, have_version: i64) -> Result<DeltaStream, SourceError>;
}

#[async_trait]
pub trait ReportSink: Send + Sync + 'static {
    /// Delivers one batch. Borrowed, so a failed batch goes back into the queue without a
    /// copy of every record having been made for the attempt; a sink may normalise it (e.g.
    /// truncate over-long details) on the way.
    async fn report(&self, batch: &mut ReportBatch) -> Result<(), SinkError>;
}

const LIVE_CAPACITY: usize = 1024;

/// An in-process snapshot source fed with [`MemorySnapshotSource::push`]. A watcher gets
/// every pushed delta newer than its version, then the live ones. It can be made
/// unavailable to play a control plane that is away.
pub struct MemorySnapshotSource {
    history: Mutex<Vec<Delta>>,
    live: broadcast::Sender<Delta>,
    available: AtomicBool,
    watches: Mutex<Vec<i64>>,
    /// Bumped to end every open stream.
    generation: watch::Sender<u64>,
}

impl std::fmt::Debug for MemorySnapshotSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemorySnapshotSource")
    }
}

impl Default for MemorySnapshotSource {
    fn default() -> Self {
        MemorySnapshotSource::new()
    }
}

impl MemorySnapshotSource {
    pub fn new() -> Self {
        MemorySnapshotSource {
            history: Mutex::new(Vec::new()),
            live: broadcast::channel(LIVE_CAPACITY).0,
            available: AtomicBool::new(true),
            watches: Mutex::new(Vec::new()),
            generation: watch::channel(0).0,
        }
    }

    /// Publishes a delta to current and future watchers.
    pub fn push(&self, delta: Delta) {
        if let Ok(mut h) = self.history.lock() {
            h.push(delta.clone());
            // Nobody may be watching yet; the history serves them later.
            let _ = self.live.send(delta);
        }
    }

    /// While unavailable, `watch` fails and open streams end (as when the control plane is
    /// down).
    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::SeqCst);
        if !available {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    /// The `have_version` of every `watch` call so far.
    pub fn watch_calls(&self) -> Vec<i64> {
        self.watches.lock().map(|w| w.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl SnapshotSource for MemorySnapshotSource {
    async fn watch(&self, have_version: i64) -> Result<DeltaStream, SourceError> {
        if let Ok(mut w) = self.watches.lock() {
            w.push(have_version);
        }
        if !self.available.load(Ordering::SeqCst) {
            return Err(SourceError::Unavailable(
                "memory source switched off".into(),
            ));
        }
        let (backlog, rx) = {
            let h = self
                .history
                .lock()
                .map_err(|_| SourceError::Unavailable("history poisoned".into()))?;
            let backlog: VecDeque<Delta> = h
                .iter()
                .filter(|d| d.version > have_version)
                .cloned()
                .collect();
            (backlog, self.live.subscribe())
        };
        let last = backlog.back().map_or(have_version, |d| d.version);
        let mut generation = self.generation.subscribe();
        let closed = async move {
            let _ = generation.changed().await;
        };
        let live = futures::stream::unfold((rx, last), |(mut rx, last)| async move {
            loop {
                match rx.recv().await {
                    Ok(d) if d.version <= last => continue,
                    Ok(d) => {
                        let v = d.version;
                        return Some((Ok(d), (rx, v)));
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Some((
                            Err(SourceError::Unavailable("watcher lagged".into())),
                            (rx, last),
                        ));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        let stream = futures::stream::iter(backlog.into_iter().map(Ok)).chain(live);
        Ok(stream.take_until(closed).boxed())
    }
}

/// An in-process report sink that keeps every batch, for tests and harnesses. It can be
/// made to fail to play a control plane that is away.
#[derive(Default)]
pub struct MemoryReportSink {
    batches: Mutex<Vec<ReportBatch>>,
    failing: AtomicBool,
    changed: Notify,
}

impl std::fmt::Debug for MemoryReportSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryReportSink")
    }
}

impl MemoryReportSink {
    pub fn new() -> Self {
        MemoryReportSink::default()
    }

    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    pub fn batches(&self) -> Vec<ReportBatch> {
        self.batches.lock().map(|b| b.clone()).unwrap_or_default()
    }

    pub fn logs(&self) -> Vec<RequestLog> {
        self.batches().into_iter().flat_map(|b| b.logs).collect()
    }

    pub fn observations(&self) -> Vec<Observation> {
        self.batches()
            .into_iter()
            .flat_map(|b| b.observations)
            .collect()
    }

    /// Waits until `pred` holds over the batches received so far, up to `timeout`.
    pub async fn wait_for(
        &self,
        timeout: std::time::Duration,
        pred: impl Fn(&[ReportBatch]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if pred(&self.batches()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pred(&self.batches());
            }
        }
    }
}

#[async_trait]
impl ReportSink for MemoryReportSink {
    async fn report(&self, batch: &mut ReportBatch) -> Result<(), SinkError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(SinkError::Unavailable("memory sink switched off".into()));
        }
        if let Ok(mut b) = self.batches.lock() {
            b.push(batch.clone());
        }
        self.changed.notify_waiters();
        Ok(())
    }
}
