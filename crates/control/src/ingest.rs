//! Report ingestion: what gateways send back. Observations are folded into the shared account
//! state first (they change routing everywhere: the store's change feed wakes the snapshot
//! hub, which sends the next delta to every gateway), then the gateway is recorded, then the
//! request logs are written. A batch that fails part-way can be re-sent whole: folding is
//! idempotent and log records already written are skipped by id.

use std::sync::Arc;

use poolgate_core::report::{ObservationKind, ReportBatch};
use poolgate_store::{GatewayEvent, GatewaySeen, Store, StoreError, now_ms};

use crate::hub::SnapshotHub;
use crate::metrics::Metrics;

/// Most request-log records one report may carry.
pub const MAX_REPORT_LOGS: usize = 10_000;
/// Most observations one report may carry.
pub const MAX_REPORT_OBSERVATIONS: usize = 10_000;
/// Longest observation detail kept (it is a short code such as `usage_limit_reached`).
const MAX_DETAIL: usize = 256;
/// Longest request id accepted.
const MAX_LOG_ID: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The batch is malformed or too large; re-sending it will not help.
    #[error("invalid report: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for IngestError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(inner) => IngestError::Invalid(inner.to_string()),
            other => IngestError::Store(other),
        }
    }
}

/// Refuses oversized batches before anything else is done with them.
pub fn check_batch_size(logs: usize, observations: usize) -> Result<(), IngestError> {
    if logs > MAX_REPORT_LOGS {
        return Err(IngestError::Invalid(format!(
            "{logs} request logs in one report; send at most {MAX_REPORT_LOGS} per batch"
        )));
    }
    if observations > MAX_REPORT_OBSERVATIONS {
        return Err(IngestError::Invalid(format!(
            "{observations} observations in one report; send at most \
             {MAX_REPORT_OBSERVATIONS} per batch"
        )));
    }
    Ok(())
}

/// The name a gateway goes by: a pod or host name.
pub(crate) fn check_node_id(node_id: &str) -> Result<(), String> {
    if node_id.is_empty()
        || node_id.len() > 253
        || node_id.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(
            "node_id must be 1 to 253 bytes without spaces or control characters (use the pod \
             or host name)"
                .into(),
        );
    }
    Ok(())
}

fn check(batch: &mut ReportBatch) -> Result<(), IngestError> {
    check_batch_size(batch.logs.len(), batch.observations.len())?;
    check_node_id(&batch.node_id).map_err(IngestError::Invalid)?;
    if batch.applied_version < 0 {
        return Err(IngestError::Invalid(
            "applied_version must not be negative".into(),
        ));
    }
    for (i, r) in batch.logs.iter().enumerate() {
        if r.id.is_empty() || r.id.len() > MAX_LOG_ID {
            return Err(IngestError::Invalid(format!(
                "request log {i}: id must be 1 to {MAX_LOG_ID} bytes"
            )));
        }
    }
    for (i, o) in batch.observations.iter_mut().enumerate() {
        if o.account_id.is_empty() {
            return Err(IngestError::Invalid(format!(
                "observation {i}: account_id is required"
            )));
        }
        if o.detail.len() > MAX_DETAIL {
            let mut end = MAX_DETAIL;
            while !o.detail.is_char_boundary(end) {
                end -= 1;
            }
            o.detail.truncate(end);
        }
    }
    Ok(())
}

fn kind_name(k: &ObservationKind) -> &'static str {
    match k {
        ObservationKind::RateLimited { .. } => "rate_limited",
        ObservationKind::QuotaExhausted { .. } => "quota_exhausted",
        ObservationKind::AuthFailed => "auth_failed",
        ObservationKind::Deactivated => "deactivated",
        ObservationKind::Usage { .. } => "usage",
    }
}

/// Takes gateway reports. Cloning shares it.
#[derive(Clone)]
pub struct ReportIngest {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    hub: SnapshotHub,
    /// This control-plane replica, recorded as the one the gateway talked to.
    control_node: String,
}

impl std::fmt::Debug for ReportIngest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportIngest")
            .field("control_node", &self.control_node)
            .finish_non_exhaustive()
    }
}

impl ReportIngest {
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        hub: SnapshotHub,
        control_node: impl Into<String>,
    ) -> Self {
        ReportIngest {
            store,
            metrics,
            hub,
            control_node: control_node.into(),
        }
    }

    /// Validates and applies one report; returns the snapshot version the hub has built.
    pub async fn ingest(&self, mut batch: ReportBatch) -> Result<i64, IngestError> {
        self.ingest_mut(&mut batch).await
    }

    /// [`ReportIngest::ingest`] on a borrowed batch (normalised in place), so an in-process
    /// caller keeps it for a retry without copying it first.
    pub async fn ingest_mut(&self, batch: &mut ReportBatch) -> Result<i64, IngestError> {
        let r = self.ingest_inner(batch).await;
        self.metrics.report(match &r {
            Ok(_) => "ok",
            Err(IngestError::Invalid(_)) => "invalid",
            Err(IngestError::Store(_)) => "error",
        });
        if let Err(IngestError::Store(_)) = &r {
            self.metrics.store_error("Report");
        }
        r
    }

    async fn ingest_inner(&self, batch: &mut ReportBatch) -> Result<i64, IngestError> {
        check(batch)?;
        if !batch.observations.is_empty() {
            for o in &batch.observations {
                self.metrics.observation(kind_name(&o.kind));
            }
            let actor = format!("gateway:{}", batch.node_id);
            let outcome = self
                .store
                .record_observations(&batch.observations, &actor)
                .await?;
            self.metrics
                .observed_changes(outcome.changed_accounts.len() as u64);
            if outcome.refresh_requested > 0 {
                tracing::info!(
                    node = %batch.node_id,
                    accounts = outcome.refresh_requested,
                    "gateway saw authentication failures; accounts marked for a token refresh"
                );
            }
        }
        self.store
            .upsert_gateway_seen(&GatewaySeen {
                node_id: batch.node_id.clone(),
                control_node: self.control_node.clone(),
                applied_version: batch.applied_version,
                event: GatewayEvent::Reported,
                at_ms: now_ms(),
            })
            .await?;
        if batch.dropped > 0 {
            self.metrics.gateway_dropped(batch.dropped);
            tracing::warn!(
                node = %batch.node_id,
                dropped = batch.dropped,
                "a gateway dropped report records while the control plane was unreachable"
            );
        }
        if !batch.logs.is_empty() {
            let written = self.store.insert_request_logs(&batch.logs).await?;
            self.metrics.logs_ingested(written);
        }
        Ok(self.hub.version())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poolgate_core::report::Observation;

    #[test]
    fn batches_are_checked() {
        assert!(check_batch_size(MAX_REPORT_LOGS, MAX_REPORT_OBSERVATIONS).is_ok());
        let e = check_batch_size(MAX_REPORT_LOGS + 1, 0).unwrap_err();
        assert!(e.to_string().contains("at most 10000"), "{e}");
        assert!(check_batch_size(0, MAX_REPORT_OBSERVATIONS + 1).is_err());

        let mut b = ReportBatch {
            node_id: "gw-0".into(),
            observations: vec![Observation {
                account_id: "acc_1".into(),
                ts_ms: 1,
                kind: ObservationKind::AuthFailed,
                detail: "é".repeat(200),
            }],
            ..Default::default()
        };
        check(&mut b).unwrap();
        assert!(b.observations[0].detail.len() <= MAX_DETAIL);
        b.node_id = "gw 0".into();
        assert!(matches!(check(&mut b), Err(IngestError::Invalid(_))));
        b.node_id = "gw-0".into();
        b.applied_version = -1;
        assert!(check(&mut b).is_err());
        b.applied_version = 0;
        b.observations[0].account_id.clear();
        assert!(
            check(&mut b)
                .unwrap_err()
                .to_string()
                .contains("observation 0")
        );
    }
}
