//! Errors: [`ControlError`] for the library's callers, and the mapping of every failure inside
//! an RPC to one gRPC status (the only place store and domain errors become `tonic::Status`).

use std::path::PathBuf;

use poolgate_store::StoreError;
use tonic::{Code, Status};

/// Failures starting or running the control plane.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("admin token file {}: {reason}", path.display())]
    AdminTokenFile { path: PathBuf, reason: String },
    #[error("node token file {}: {reason}", path.display())]
    NodeTokenFile { path: PathBuf, reason: String },
    #[error("no randomness available: {0}")]
    Random(String),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("control-plane task failed: {0}")]
    Task(String),
}

/// A failed RPC before it becomes a `Status`.
#[derive(Debug)]
pub(crate) enum ApiError {
    Status(Status),
    Store(StoreError),
}

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        ApiError::Status(s)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Store(e)
    }
}

impl From<poolgate_core::Error> for ApiError {
    fn from(e: poolgate_core::Error) -> Self {
        ApiError::Status(Status::invalid_argument(e.to_string()))
    }
}

impl ApiError {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        ApiError::Status(Status::invalid_argument(msg))
    }
    pub(crate) fn precondition(msg: impl Into<String>) -> Self {
        ApiError::Status(Status::failed_precondition(msg))
    }

    /// Whether this is a failure of the store itself (counted as a store error).
    pub(crate) fn is_store_fault(&self) -> bool {
        matches!(self, ApiError::Store(e) if store_fault(e))
    }

    /// The status the client sees. Store faults are logged here with their details and reach
    /// the client only as a generic message: database errors can name tables and values.
    pub(crate) fn into_status(self, method: &str) -> Status {
        match self {
            ApiError::Status(s) => s,
            ApiError::Store(e) => store_status(method, e),
        }
    }
}

/// NotFound, AlreadyExists and Invalid are the caller's problem; the rest are ours.
pub(crate) fn store_fault(e: &StoreError) -> bool {
    !matches!(
        e,
        StoreError::NotFound { .. } | StoreError::AlreadyExists { .. } | StoreError::Invalid(_)
    )
}

pub(crate) fn store_status(method: &str, e: StoreError) -> Status {
    match e {
        StoreError::NotFound { .. } => Status::not_found(e.to_string()),
        StoreError::AlreadyExists { .. } => Status::already_exists(e.to_string()),
        StoreError::Invalid(inner) => Status::invalid_argument(inner.to_string()),
        StoreError::Unavailable(detail) => {
            tracing::warn!(method, error = %detail, "store unavailable");
            Status::unavailable("the database is unavailable; try again shortly")
        }
        other => {
            tracing::error!(method, error = %other, "store failure");
            Status::new(
                Code::Internal,
                "internal error; the control plane log has details",
            )
        }
    }
}
