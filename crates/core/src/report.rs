//! What gateways send back to the control plane: request logs and account observations.

use crate::{RequestLog, UnixMillis, UsageWindow};

/// Something a gateway saw about an account that every other gateway should learn.
#[derive(Debug, Clone, PartialEq)]
pub enum ObservationKind {
    /// 429: cool the account down until then on every gateway.
    RateLimited { until_ms: UnixMillis },
    /// Out of quota (usage_limit_reached and friends) until the reset.
    QuotaExhausted { until_ms: UnixMillis },
    /// The upstream refused the credentials (401): the control plane refreshes them.
    AuthFailed,
    /// account_deactivated / workspace_deactivated.
    Deactivated,
    /// Usage headers that came back on a response.
    Usage {
        primary: Option<UsageWindow>,
        secondary: Option<UsageWindow>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub account_id: String,
    pub ts_ms: UnixMillis,
    pub kind: ObservationKind,
    /// A short, secret-free description (e.g. the upstream error code).
    pub detail: String,
}

/// One report from one gateway.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportBatch {
    pub node_id: String,
    /// The snapshot version the gateway has applied.
    pub applied_version: i64,
    pub logs: Vec<RequestLog>,
    pub observations: Vec<Observation>,
    /// Records the gateway dropped since its last successful report (buffer full).
    pub dropped: u64,
}
