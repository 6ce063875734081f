//! The cluster transport: `SnapshotService.Watch` and `ReportService.Report` on the control
//! plane, authenticated with the node token (`authorization: Bearer <token>`).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use poolgate_core::report::ReportBatch;
use poolgate_proto::convert::{delta_from_pb, report_batch_to_pb};
use poolgate_proto::v1::WatchRequest;
use poolgate_proto::v1::report_service_client::ReportServiceClient;
use poolgate_proto::v1::snapshot_service_client::SnapshotServiceClient;
use poolgate_proto::{MAX_REPORT_MESSAGE_BYTES, MAX_SNAPSHOT_MESSAGE_BYTES};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::source::{DeltaStream, ReportSink, SinkError, SnapshotSource, SourceError};

const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the node token comes from. A file is read again on every connection, so a rotated
/// Secret takes effect without a restart.
#[derive(Clone)]
pub enum NodeToken {
    File(PathBuf),
    Value(String),
}

impl std::fmt::Debug for NodeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeToken::File(p) => write!(f, "NodeToken::File({})", p.display()),
            NodeToken::Value(_) => f.write_str("NodeToken::Value(***)"),
        }
    }
}

impl NodeToken {
    /// `authorization: Bearer <token>`.
    fn header(&self) -> Result<MetadataValue<tonic::metadata::Ascii>, String> {
        let token = match self {
            NodeToken::Value(v) => v.trim().to_string(),
            NodeToken::File(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read the node token file {}: {e}", p.display()))?
                .trim()
                .to_string(),
        };
        if token.is_empty() {
            return Err("the node token is empty".into());
        }
        let mut v = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
            "the node token contains characters not allowed in a header".to_string()
        })?;
        v.set_sensitive(true);
        Ok(v)
    }
}

/// A lazily connected channel to the control plane.
pub fn control_channel(url: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("invalid control-plane URL {url:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

fn status_to_source(s: &tonic::Status) -> SourceError {
    match s.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
            SourceError::Unauthenticated(s.message().to_string())
        }
        tonic::Code::InvalidArgument => SourceError::Invalid(s.message().to_string()),
        _ => SourceError::Unavailable(format!("{}: {}", s.code(), s.message())),
    }
}

/// Follows `SnapshotService.Watch`.
#[derive(Debug, Clone)]
pub struct GrpcSnapshotSource {
    channel: Channel,
    node_id: String,
    token: NodeToken,
}

impl GrpcSnapshotSource {
    pub fn new(channel: Channel, node_id: impl Into<String>, token: NodeToken) -> Self {
        GrpcSnapshotSource {
            channel,
            node_id: node_id.into(),
            token,
        }
    }
}

#[async_trait]
impl SnapshotSource for GrpcSnapshotSource {
    async fn watch(&self, have_version: i64) -> Result<DeltaStream, SourceError> {
        let auth = self.token.header().map_err(SourceError::Unauthenticated)?;
        let mut client = SnapshotServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_SNAPSHOT_MESSAGE_BYTES);
        let mut req = tonic::Request::new(WatchRequest {
            node_id: self.node_id.clone(),
            have_version,
        });
        req.metadata_mut().insert("authorization", auth);
        let stream = client
            .watch(req)
            .await
            .map_err(|s| status_to_source(&s))?
            .into_inner();
        Ok(stream
            .map(|item| match item {
                Ok(update) => {
                    delta_from_pb(update).map_err(|e| SourceError::Invalid(e.to_string()))
                }
                Err(s) => Err(status_to_source(&s)),
            })
            .boxed())
    }
}

/// Sends batches with `ReportService.Report`.
#[derive(Debug, Clone)]
pub struct GrpcReportSink {
    channel: Channel,
    token: NodeToken,
}

impl GrpcReportSink {
    pub fn new(channel: Channel, token: NodeToken) -> Self {
        GrpcReportSink { channel, token }
    }
}

#[async_trait]
impl ReportSink for GrpcReportSink {
    async fn report(&self, batch: &mut ReportBatch) -> Result<(), SinkError> {
        let auth = self.token.header().map_err(SinkError::Rejected)?;
        let mut client = ReportServiceClient::new(self.channel.clone())
            .max_encoding_message_size(MAX_REPORT_MESSAGE_BYTES);
        let mut req = tonic::Request::new(report_batch_to_pb(batch));
        req.set_timeout(REPORT_TIMEOUT);
        req.metadata_mut().insert("authorization", auth);
        match client.report(req).await {
            Ok(_) => Ok(()),
            Err(s) => Err(match s.code() {
                tonic::Code::Unauthenticated
                | tonic::Code::PermissionDenied
                | tonic::Code::InvalidArgument => {
                    SinkError::Rejected(format!("{}: {}", s.code(), s.message()))
                }
                _ => SinkError::Unavailable(format!("{}: {}", s.code(), s.message())),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_values_and_files() {
        let dir = std::env::temp_dir().join(format!("pg-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "pgn_secret\n").unwrap();
        let h = NodeToken::File(f.clone()).header().unwrap();
        assert_eq!(h.to_str().unwrap(), "Bearer pgn_secret");
        assert!(h.is_sensitive());
        assert!(NodeToken::Value("  ".into()).header().is_err());
        let err = NodeToken::File(dir.join("missing")).header().unwrap_err();
        assert!(err.contains("cannot read"));
        assert_eq!(
            format!("{:?}", NodeToken::Value("pgn_secret".into())),
            "NodeToken::Value(***)"
        );
        assert!(control_channel("not a url").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
