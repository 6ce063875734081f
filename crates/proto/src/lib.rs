//! The `poolgate.v1` protocol: generated code, and the conversions between its messages and
//! the domain types ([`convert`]).

/// Generated code for the `poolgate.v1` package.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("poolgate.v1");
}

pub mod convert;

/// The encoded file descriptor set, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("poolgate_descriptor");

/// The largest message a snapshot stream may carry. A full snapshot of a big pool (10,000
/// Codex accounts and 100,000 keys is about 34 MB) is one message, far above tonic's 4 MiB
/// default: clients of `SnapshotService.Watch` must raise their decoding limit to this.
pub const MAX_SNAPSHOT_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// The largest report the control plane accepts (10,000 logs and 10,000 observations fit).
pub const MAX_REPORT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
