//! Retention, at start and then periodically: request logs older than the configured age,
//! the oldest change-log rows (keeping a day and at least the newest 10,000 by default, so
//! reconnecting gateways can resume from the log), and gateways not seen for a week.

use std::sync::Arc;
use std::time::Duration;

use poolgate_store::{Store, StoreError, now_ms};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Gateways not seen for this long are forgotten.
pub const GATEWAY_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// What the retention job keeps.
#[derive(Debug, Clone)]
pub struct Retention {
    pub request_logs: Duration,
    pub change_log: Duration,
    /// Change-log rows always kept, whatever their age.
    pub change_log_keep: u64,
}

fn ago(d: Duration) -> i64 {
    now_ms().saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Deletes request logs older than `retention`; returns how many.
pub async fn prune_once(store: &dyn Store, retention: Duration) -> Result<u64, StoreError> {
    store.prune_request_logs(ago(retention)).await
}

async fn run_once(store: &dyn Store, metrics: &Metrics, r: &Retention) {
    match prune_once(store, r.request_logs).await {
        Ok(n) => {
            metrics.retention_pruned(n);
            if n > 0 {
                tracing::info!(
                    rows = n,
                    retention = %humantime::format_duration(r.request_logs),
                    "pruned old request logs"
                );
            }
        }
        Err(e) => {
            metrics.store_error("retention");
            tracing::warn!(error = %e, "request-log retention failed; retrying at the next run");
        }
    }
    match store
        .prune_changes(ago(r.change_log), r.change_log_keep)
        .await
    {
        Ok(n) => {
            metrics.changes_pruned(n);
            if n > 0 {
                tracing::info!(rows = n, "pruned old change-log rows");
            }
        }
        Err(e) => {
            metrics.store_error("retention");
            tracing::warn!(error = %e, "change-log retention failed; retrying at the next run");
        }
    }
    if let Err(e) = store.prune_gateways(ago(GATEWAY_RETENTION)).await {
        metrics.store_error("retention");
        tracing::warn!(error = %e, "gateway retention failed; retrying at the next run");
    }
}

pub(crate) async fn run(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    retention: Retention,
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
        tokio::select! {
            _ = run_once(store.as_ref(), &metrics, &retention) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}
