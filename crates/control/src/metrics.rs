//! Prometheus metrics of the control plane, served on the admin HTTP port at `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
            "poolgate_control_request_log_rows_ingested",
            "Request-log rows written to the store",
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
        Metrics {
            registry,
            grpc_requests,
            grpc_duration,
            logs_ingested,
            retention_pruned,
            store_errors,
        }
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

    pub fn store_error(&self, operation: &'static str) {
        self.store_errors
            .get_or_create(&OperationLabels { operation })
            .inc();
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
        assert!(text.contains("poolgate_control_request_log_rows_ingested_total 0"));
    }
}
