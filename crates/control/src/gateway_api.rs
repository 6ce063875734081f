//! The gRPC services gateways use: `SnapshotService.Watch` over the [`SnapshotHub`] and
//! `ReportService.Report` over [`ReportIngest`], both authenticated with the node token.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use poolgate_proto::v1 as pb;
use poolgate_proto::v1::report_service_server::{ReportService, ReportServiceServer};
use poolgate_proto::v1::snapshot_service_server::{SnapshotService, SnapshotServiceServer};
use poolgate_proto::{MAX_REPORT_MESSAGE_BYTES, MAX_SNAPSHOT_MESSAGE_BYTES, convert};
use poolgate_store::{GatewayEvent, GatewaySeen, Store, now_ms};
use tokio::sync::oneshot;
use tonic::{Code, Request, Response, Status};

use crate::auth::{NodeToken, authenticate_node};
use crate::error::store_status;
use crate::hub::{HubError, SnapshotHub};
use crate::ingest::{IngestError, ReportIngest, check_batch_size, check_node_id};
use crate::metrics::Metrics;

/// While a gateway watches, it is marked as seen this often (so `poolctl get gateways` lists
/// gateways that have nothing to report).
const HEARTBEAT: Duration = Duration::from_secs(30);

fn hub_status(method: &str, e: HubError) -> Status {
    match e {
        HubError::NotReady | HubError::Closed => Status::unavailable(e.to_string()),
        HubError::Store(e) => store_status(method, e),
    }
}

/// `SnapshotService` and `ReportService`.
#[derive(Clone)]
pub struct GatewayApi {
    hub: SnapshotHub,
    ingest: ReportIngest,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    node_token: Option<NodeToken>,
    control_node: String,
}

impl std::fmt::Debug for GatewayApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayApi")
            .field("control_node", &self.control_node)
            .finish_non_exhaustive()
    }
}

impl GatewayApi {
    pub fn new(
        hub: SnapshotHub,
        ingest: ReportIngest,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        node_token: Option<NodeToken>,
        control_node: impl Into<String>,
    ) -> Self {
        GatewayApi {
            hub,
            ingest,
            store,
            metrics,
            node_token,
            control_node: control_node.into(),
        }
    }

    pub fn snapshot_server(self) -> SnapshotServiceServer<Self> {
        SnapshotServiceServer::new(self).max_encoding_message_size(MAX_SNAPSHOT_MESSAGE_BYTES)
    }

    pub fn report_server(self) -> ReportServiceServer<Self> {
        ReportServiceServer::new(self).max_decoding_message_size(MAX_REPORT_MESSAGE_BYTES)
    }

    fn finish<T>(&self, method: &'static str, started: Instant, r: &Result<T, Status>) {
        let code = r.as_ref().map_or_else(Status::code, |_| Code::Ok);
        self.metrics.grpc_request(method, code, started.elapsed());
    }

    async fn watch_impl(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        authenticate_node(self.node_token.as_ref(), req.metadata())?;
        let r = req.into_inner();
        check_node_id(&r.node_id).map_err(Status::invalid_argument)?;
        if r.have_version < 0 {
            return Err(Status::invalid_argument(
                "have_version must not be negative (0 = no snapshot yet)",
            ));
        }
        let seen = GatewaySeen {
            node_id: r.node_id.clone(),
            control_node: self.control_node.clone(),
            applied_version: r.have_version,
            event: GatewayEvent::Connected,
            at_ms: now_ms(),
        };
        // The stream is served from memory: a store hiccup must not turn gateways away.
        if let Err(e) = self.store.upsert_gateway_seen(&seen).await {
            self.metrics.store_error("Watch");
            tracing::warn!(node = %r.node_id, error = %e, "cannot record a gateway's connection");
        }
        let deltas = self
            .hub
            .subscribe(r.have_version)
            .await
            .map_err(|e| hub_status("Watch", e))?;
        tracing::info!(
            node = %r.node_id,
            have_version = r.have_version,
            version = self.hub.version(),
            "gateway watching snapshots"
        );
        let (alive, gone) = oneshot::channel::<()>();
        tokio::spawn(heartbeat(self.store.clone(), seen, gone));
        let node = r.node_id;
        let stream = deltas.map(move |item| {
            // Dropped with the stream: the heartbeat stops when the gateway goes.
            let _alive = &alive;
            item.map(|d| convert::delta_to_pb(&d)).map_err(|e| {
                tracing::debug!(node = %node, error = %e, "snapshot stream ends");
                hub_status("Watch", e)
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_impl(&self, req: Request<pb::ReportBatch>) -> Result<pb::ReportAck, Status> {
        authenticate_node(self.node_token.as_ref(), req.metadata())?;
        let m = req.into_inner();
        let invalid = |e: IngestError| Status::invalid_argument(e.to_string());
        check_batch_size(m.logs.len(), m.observations.len()).map_err(|e| {
            self.metrics.report("invalid");
            invalid(e)
        })?;
        let batch = convert::report_batch_from_pb(m).map_err(|e| {
            self.metrics.report("invalid");
            Status::invalid_argument(format!("invalid report: {e}"))
        })?;
        match self.ingest.ingest(batch).await {
            Ok(version) => Ok(pb::ReportAck { version }),
            Err(e @ IngestError::Invalid(_)) => Err(invalid(e)),
            Err(IngestError::Store(e)) => Err(store_status("Report", e)),
        }
    }
}

/// Marks the gateway as seen every [`HEARTBEAT`] until `gone` fires (its stream was dropped).
async fn heartbeat(store: Arc<dyn Store>, mut seen: GatewaySeen, mut gone: oneshot::Receiver<()>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    seen.event = GatewayEvent::Heartbeat;
    loop {
        tokio::select! {
            _ = &mut gone => return,
            _ = tick.tick() => {}
        }
        seen.at_ms = now_ms();
        if let Err(e) = store.upsert_gateway_seen(&seen).await {
            tracing::debug!(node = %seen.node_id, error = %e, "cannot record a gateway heartbeat");
        }
    }
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl SnapshotService for GatewayApi {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let started = Instant::now();
        let r = self.watch_impl(req).await;
        self.finish("Watch", started, &r);
        r
    }
}

#[tonic::async_trait]
impl ReportService for GatewayApi {
    async fn report(
        &self,
        req: Request<pb::ReportBatch>,
    ) -> Result<Response<pb::ReportAck>, Status> {
        let started = Instant::now();
        let r = self.report_impl(req).await.map(Response::new);
        self.finish("Report", started, &r);
        r
    }
}
