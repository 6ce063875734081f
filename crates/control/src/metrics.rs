//! Prometheus metrics of the control plane, served on the admin HTTP port at `/metrics`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GrpcLabels {
    method: &'static str,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UsageLabels {
    account: String,
    /// `5h` or `7d`.
    window: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    grpc_requests: Family<GrpcLabels, Counter>,
    grpc_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    logs_ingested: Counter,
    retention_pruned: Counter,
    store_errors: Family<OperationLabels, Counter>,
    snapshot_version: Gauge,
    snapshot_subscribers: Gauge,
    snapshot_messages: Family<KindLabels, Counter>,
    snapshot_lagged: Counter,
    reports: Family<OutcomeLabels, Counter>,
    observations: Family<KindLabels, Counter>,
    observed_changes: Counter,
    gateway_dropped: Counter,
    changes_pruned: Counter,
    leader: Gauge,
    refreshes: Family<OutcomeLabels, Counter>,
    usage_polls: Family<OutcomeLabels, Counter>,
    usage_used: Family<UsageLabels, Gauge<f64, AtomicU64>>,
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
        let mut registry = Registry::default();
        let grpc_requests = Family::<GrpcLabels, Counter>::default();
        registry.register(
            "poolgate_control_grpc_requests",
            "Admin gRPC requests by method and status code",
            grpc_requests.clone(),
        );
        let grpc_duration =
            Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "poolgate_control_grpc_request_duration_seconds",
            "Admin gRPC request latency by method",
            grpc_duration.clone(),
        );
        let logs_ingested = Counter::default();
        registry.register(
            "poolgate_control_request_log_rows",
            "Request-log rows gateways reported that were written to the store",
            logs_ingested.clone(),
        );
        let retention_pruned = Counter::default();
        registry.register(
            "poolgate_control_retention_pruned_rows",
            "Request-log rows deleted by the retention job",
            retention_pruned.clone(),
        );
        let store_errors = Family::<OperationLabels, Counter>::default();
        registry.register(
            "poolgate_control_store_errors",
            "Store failures (database unavailable or failing) by operation",
            store_errors.clone(),
        );
        let snapshot_version = Gauge::default();
        registry.register(
            "poolgate_control_snapshot_version",
            "The newest change-log version the snapshot hub has built",
            snapshot_version.clone(),
        );
        let snapshot_subscribers = Gauge::default();
        registry.register(
            "poolgate_control_snapshot_subscribers",
            "Open snapshot streams (gateways watching this replica)",
            snapshot_subscribers.clone(),
        );
        let snapshot_messages = Family::<KindLabels, Counter>::default();
        registry.register(
            "poolgate_control_snapshot_messages",
            "Snapshot messages sent to subscribers, by kind (full, catch_up, delta)",
            snapshot_messages.clone(),
        );
        let snapshot_lagged = Counter::default();
        registry.register(
            "poolgate_control_snapshot_lagged",
            "Times a subscriber fell behind the delta buffer and was caught up afresh",
            snapshot_lagged.clone(),
        );
        let reports = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "poolgate_control_reports",
            "Gateway report batches by outcome (ok, invalid, error)",
            reports.clone(),
        );
        let observations = Family::<KindLabels, Counter>::default();
        registry.register(
            "poolgate_control_observations",
            "Account observations gateways reported, by kind",
            observations.clone(),
        );
        let observed_changes = Counter::default();
        registry.register(
            "poolgate_control_observed_account_changes",
            "Account state changes (cooldown, status, usage) folded from observations",
            observed_changes.clone(),
        );
        let gateway_dropped = Counter::default();
        registry.register(
            "poolgate_control_gateway_dropped_records",
            "Records gateways dropped because their report buffer was full",
            gateway_dropped.clone(),
        );
        let changes_pruned = Counter::default();
        registry.register(
            "poolgate_control_change_log_pruned_rows",
            "Change-log rows deleted by the retention job",
            changes_pruned.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "poolgate_control_leader",
            "1 while this replica is the control-plane leader (runs the background jobs), else 0",
            leader.clone(),
        );
        let refreshes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "poolgate_control_token_refreshes",
            "OAuth token refresh attempts by outcome (refreshed, invalid, region_blocked, \
             transient, rejected, conflict, not_due, busy, paused, store_error)",
            refreshes.clone(),
        );
        let usage_polls = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "poolgate_control_usage_polls",
            "Usage endpoint polls by outcome (changed, unchanged, unauthorized, deactivated, \
             region_blocked, transient, error)",
            usage_polls.clone(),
        );
        let usage_used = Family::<UsageLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "poolgate_control_account_usage_used_percent",
            "Used share of each Codex account's quota window (5h, 7d), from the usage endpoint",
            usage_used.clone(),
        );
        Metrics {
            registry,
            refreshes,
            usage_polls,
            usage_used,
            grpc_requests,
            grpc_duration,
            logs_ingested,
            retention_pruned,
            store_errors,
            snapshot_version,
            snapshot_subscribers,
            snapshot_messages,
            snapshot_lagged,
            reports,
            observations,
            observed_changes,
            gateway_dropped,
            changes_pruned,
            leader,
        }
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn grpc_request(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        self.grpc_requests
            .get_or_create(&GrpcLabels {
                method,
                code: format!("{code:?}"),
            })
            .inc();
        self.grpc_duration
            .get_or_create(&MethodLabels { method })
            .observe(elapsed.as_secs_f64());
    }

    pub fn logs_ingested(&self, rows: u64) {
        self.logs_ingested.inc_by(rows);
    }

    pub fn retention_pruned(&self, rows: u64) {
        self.retention_pruned.inc_by(rows);
    }

    pub fn snapshot_version(&self, version: i64) {
        self.snapshot_version.set(version);
    }

    pub fn snapshot_subscribed(&self) {
        self.snapshot_subscribers.inc();
    }

    pub fn snapshot_unsubscribed(&self) {
        self.snapshot_subscribers.dec();
    }

    /// `kind`: `full`, `catch_up` or `delta`.
    pub fn snapshot_message(&self, kind: &'static str) {
        self.snapshot_messages
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    pub fn snapshot_lagged(&self) {
        self.snapshot_lagged.inc();
    }

    /// `outcome`: `ok`, `invalid` or `error`.
    pub fn report(&self, outcome: &'static str) {
        self.reports.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn observation(&self, kind: &'static str) {
        self.observations.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn observed_changes(&self, accounts: u64) {
        self.observed_changes.inc_by(accounts);
    }

    pub fn gateway_dropped(&self, records: u64) {
        self.gateway_dropped.inc_by(records);
    }

    pub fn changes_pruned(&self, rows: u64) {
        self.changes_pruned.inc_by(rows);
    }

    pub fn store_error(&self, operation: &'static str) {
        self.store_errors
            .get_or_create(&OperationLabels { operation })
            .inc();
    }

    /// One token refresh attempt's outcome.
    pub fn refresh(&self, outcome: &'static str) {
        self.refreshes
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// One usage poll's outcome.
    pub fn usage_poll(&self, outcome: &'static str) {
        self.usage_polls
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The used percent of an account's `5h` or `7d` window; `None` removes the series.
    pub fn usage_used_percent(&self, account: &str, window: &'static str, used: Option<f64>) {
        let labels = UsageLabels {
            account: account.to_string(),
            window,
        };
        match used {
            Some(v) => {
                self.usage_used.get_or_create(&labels).set(v);
            }
            None => {
                self.usage_used.remove(&labels);
            }
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_method_and_code() {
        let m = Metrics::new();
        m.grpc_request("ListAccounts", tonic::Code::Ok, Duration::from_millis(3));
        m.grpc_request(
            "ListAccounts",
            tonic::Code::InvalidArgument,
            Duration::from_millis(1),
        );
        m.retention_pruned(7);
        m.store_error("retention");
        let text = m.encode().unwrap();
        assert!(text.contains(
            "poolgate_control_grpc_requests_total{method=\"ListAccounts\",code=\"InvalidArgument\"} 1"
        ));
        assert!(text.contains("poolgate_control_retention_pruned_rows_total 7"));
        assert!(text.contains("poolgate_control_store_errors_total{operation=\"retention\"} 1"));
        assert!(text.contains("poolgate_control_request_log_rows_total 0"));
        assert!(text.contains("poolgate_control_leader 0"));
        m.set_leader(true);
        assert!(m.encode().unwrap().contains("poolgate_control_leader 1"));
        m.snapshot_message("full");
        m.snapshot_subscribed();
        m.snapshot_version(42);
        let text = m.encode().unwrap();
        assert!(text.contains("poolgate_control_snapshot_messages_total{kind=\"full\"} 1"));
        assert!(text.contains("poolgate_control_snapshot_subscribers 1"));
        assert!(text.contains("poolgate_control_snapshot_version 42"));
    }
}
