//! The crate's one error type.

/// Failures of the controller, crdgen and leader election.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The store failed (retried with backoff).
    #[error("store: {0}")]
    Store(#[from] poolgate_store::StoreError),
    /// Adding or removing the cleanup finalizer, or the reconcile inside it, failed.
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// A resource without a name or namespace (never sent by a real API server).
    #[error("resource has no {0}")]
    MissingField(&'static str),
    #[error("cannot generate a platform key: {0}")]
    Random(String),
    #[error("cannot serialise YAML: {0}")]
    Yaml(String),
    #[error("cannot write {0}")]
    Io(String),
    /// Leader-election settings that cannot work (timings, Lease name, identity).
    #[error("invalid leader-election settings: {0}")]
    LeaseConfig(String),
}
