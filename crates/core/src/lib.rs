//! Domain types and pure logic for poolgate.
//!
//! Nothing in this crate does IO, talks protobuf or SQL: the store, the control plane and the
//! gateway all share these types and map them to their own wire formats at the edges.

pub mod account;
pub mod authjson;
pub mod credentials;
pub mod error;
pub mod glob;
pub mod jwt;
pub mod key;
pub mod log;
pub mod page;
pub mod policy;
pub mod report;
pub mod secret;
pub mod snapshot;
pub mod usage;

pub use account::{
    Account, AccountPatch, AccountSpec, AccountStatus, AzureConfig, CodexIdentity, ManagedBy,
    Provider, StatusReason,
};
pub use credentials::{Credentials, OAuthTokens};
pub use error::Error;
pub use key::{AdminRole, AdminToken, KeyPatch, KeySpec, KeyStatus, PlatformKey, ReasoningEffort};
pub use log::{
    Attempt, AuditEvent, ErrorClass, LogFilter, LogSummary, RequestLog, StatusClass, SummaryRow,
    Translation,
};
pub use policy::{ModelAlias, QuotaGuard, RoutingPolicy, Strategy};
pub use secret::Secret;
pub use usage::{Availability, ExtraLimit, UsageSnapshot, UsageWindow};

/// Milliseconds since the Unix epoch; every timestamp in poolgate uses this unit.
pub type UnixMillis = i64;
