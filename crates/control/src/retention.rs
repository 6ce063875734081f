//! Request-log retention: deletes records older than the configured age, at start and then
//! periodically.

use std::sync::Arc;
use std::time::Duration;

use poolgate_store::{Store, StoreError, now_ms};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Deletes request logs older than `retention`; returns how many.
pub async fn prune_once(store: &dyn Store, retention: Duration) -> Result<u64, StoreError> {
    let age_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    store
        .prune_request_logs(now_ms().saturating_sub(age_ms))
        .await
}

pub(crate) async fn run(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    retention: Duration,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // The first tick completes at once: prune at start.
            _ = tick.tick() => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
        let pruned = tokio::select! {
            r = prune_once(store.as_ref(), retention) => r,
            _ = crate::stopped(&mut shutdown) => return,
        };
        match pruned {
            Ok(n) => {
                metrics.retention_pruned(n);
                if n > 0 {
                    tracing::info!(rows = n, retention = %humantime::format_duration(retention), "pruned old request logs");
                }
            }
            Err(e) => {
                metrics.store_error("retention");
                tracing::warn!(error = %e, "request-log retention failed; retrying at the next run");
            }
        }
    }
}
