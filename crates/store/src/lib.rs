//! The system of record: one [`Store`] trait, a PostgreSQL backend for clusters and an
//! embedded SQLite backend for `poolgate standalone`. Both run the same contract tests.
//!
//! Upstream credentials are encrypted at rest with AES-256-GCM ([`crypto::Cipher`]); platform
//! keys and admin tokens are stored only as SHA-256 hashes.

pub mod crypto;
pub mod error;
mod migrate;
mod ops;
pub mod postgres;
mod sql;
pub mod sqlite;

use async_trait::async_trait;
use poolgate_core::authjson::ImportedCodexAuth;
use poolgate_core::page::PageRequest;
use poolgate_core::report::Observation;
use poolgate_core::snapshot::AccountState;
use poolgate_core::{
    Account, AccountPatch, AccountSpec, AccountStatus, AdminToken, AuditEvent, CodexIdentity,
    Credentials, KeyPatch, LogFilter, LogSummary, ManagedBy, OAuthTokens, PlatformKey, Provider,
    RequestLog, RoutingPolicy, UsageSnapshot,
};

use tokio::sync::watch;

pub use crypto::Cipher;
pub use error::StoreError;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One page of a listing; `next` is the opaque token for the following page.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Filters for account listings; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountFilter {
    pub group: Option<String>,
    pub provider: Option<Provider>,
    pub status: Option<AccountStatus>,
}

/// What happened to one imported auth.json item.
#[derive(Debug, Clone, PartialEq)]
pub enum ImportOutcome {
    Created(Account),
    Updated(Account),
    /// The item was not written; the message says why.
    Failed(String),
}

/// Kinds of resources whose changes gateways follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    Account,
    Key,
    Policy,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Account => "account",
            ResourceKind::Key => "key",
            ResourceKind::Policy => "policy",
        }
    }
}

/// One entry of the change log: resource `id` of `kind` changed (or was removed) at `version`.
/// Versions are global and strictly increasing, so every control-plane replica computes the
/// same deltas from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub version: i64,
    pub kind: ResourceKind,
    pub id: String,
    pub deleted: bool,
}

/// Everything gateways follow, read for a full snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct FullState {
    /// The newest change-log version when the read began. The state holds every change up to
    /// it and possibly newer ones (which the following deltas send again).
    pub version: i64,
    /// Ordered by id, with decrypted credentials.
    pub accounts: Vec<AccountState>,
    /// Ordered by id.
    pub keys: Vec<PlatformKey>,
    pub policy: RoutingPolicy,
}

/// What [`Store::record_observations`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservationOutcome {
    /// Accounts whose routing state changed (status, cooldown or usage), each with one new
    /// change-log row. Ordered by id.
    pub changed_accounts: Vec<String>,
    /// Observations of accounts that do not exist (deleted since the gateway saw them).
    pub unknown: u64,
    /// Accounts newly marked for an OAuth token refresh.
    pub refresh_requested: u64,
}

/// A claim on one account's OAuth refresh: while it holds, no other refresher gets the refresh
/// token (see [`Store::begin_refresh`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshClaim {
    pub account_id: String,
    /// Names this claim; completing or releasing it checks it still holds.
    pub lease: String,
    pub lease_until_ms: i64,
    /// The tokens as stored when claimed; their refresh token is the one to send.
    pub tokens: OAuthTokens,
    /// A gateway saw the account fail authentication (a reactive refresh).
    pub requested: bool,
    /// An earlier claim lapsed without completing: its holder may have sent this refresh
    /// token already, in which case the issuer now answers `refresh_token_reused`.
    pub recovered: bool,
}

/// What [`Store::begin_refresh`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum RefreshStart {
    Claimed(RefreshClaim),
    /// Another refresher holds a live claim until then.
    Busy {
        until_ms: i64,
    },
    /// Refreshing waits until then (backoff after a transient failure, or a region block).
    Paused {
        until_ms: i64,
    },
    /// Nothing to refresh: no refresh token, or the login is dead (auth_invalid,
    /// deactivated) and needs a new one.
    NotRefreshable,
}

/// How a claim ends without new tokens ([`Store::release_refresh`]).
#[derive(Debug, Clone, PartialEq)]
pub enum RefreshRelease {
    /// Nothing was sent: the access token is not due. Records its expiry for
    /// [`Store::accounts_due_for_refresh`].
    NotDue { access_expires_at_ms: Option<i64> },
    /// A transient failure: no attempt before `not_before_ms`.
    Retry { not_before_ms: i64 },
    /// The issuer refuses this region: no attempt before `until_ms` (audited).
    Paused { until_ms: i64, detail: String },
    /// The refresh token is dead (reused, expired, invalidated): the account becomes
    /// unavailable (`auth_invalid`) until a new login, and gateways learn it at once.
    Invalid { detail: String },
}

/// What [`Store::complete_refresh`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshCommit {
    /// The new tokens replaced the claimed ones.
    Committed,
    /// The claim no longer held (another refresher, a new login or an import replaced the
    /// tokens): nothing was written.
    Conflict,
}

/// Why a gateway was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayEvent {
    /// It opened a snapshot stream.
    Connected,
    /// It sent a report.
    Reported,
    /// Its snapshot stream is still open.
    Heartbeat,
}

/// One sighting of a gateway, recorded with [`Store::upsert_gateway_seen`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySeen {
    pub node_id: String,
    /// The control-plane replica it talked to.
    pub control_node: String,
    /// The snapshot version it says it has applied (ignored for heartbeats).
    pub applied_version: i64,
    pub event: GatewayEvent,
    pub at_ms: i64,
}

/// A gateway as the control plane last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRecord {
    pub node_id: String,
    pub control_node: String,
    pub applied_version: i64,
    /// When it last opened a snapshot stream.
    pub connected_at_ms: Option<i64>,
    pub last_report_at_ms: Option<i64>,
    pub last_seen_at_ms: i64,
}

/// Listing names used in page tokens.
pub mod listing {
    pub const ACCOUNTS: &str = "accounts";
    pub const KEYS: &str = "keys";
    pub const LOGS: &str = "logs";
    pub const AUDIT: &str = "audit";
}

/// The system of record. Every mutation is one transaction that also writes its audit event
/// (`actor` names who made it) and, for accounts, keys and the policy, a change-log entry.
/// Invalid input is rejected before anything is written.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend this is (`postgres` or `sqlite`), for logs and metrics.
    fn backend(&self) -> &'static str;

    // --- accounts ---------------------------------------------------------------------------
    /// Creates an account (`managed_by=api`). API-key providers need an API key; Codex
    /// accounts need OAuth credentials and their identity, which must not exist yet
    /// (`AlreadyExists` names the account that has it).
    async fn create_account(
        &self,
        spec: AccountSpec,
        credentials: Option<Credentials>,
        identity: Option<CodexIdentity>,
        actor: &str,
    ) -> Result<Account>;
    async fn get_account(&self, id: &str) -> Result<Account>;
    /// Ordered by id.
    async fn list_accounts(
        &self,
        filter: &AccountFilter,
        page: &PageRequest,
    ) -> Result<Page<Account>>;
    async fn update_account(&self, id: &str, patch: &AccountPatch, actor: &str) -> Result<Account>;
    /// Removes the account, its credentials and usage.
    async fn delete_account(&self, id: &str, actor: &str) -> Result<()>;
    /// Replaces an account's credentials (checked against its provider).
    async fn set_credentials(&self, id: &str, credentials: &Credentials, actor: &str)
    -> Result<()>;
    /// Decrypted credentials, for the control plane's own use (snapshots, refresh).
    async fn get_credentials(&self, id: &str) -> Result<Option<Credentials>>;
    /// Imports Codex logins: an item whose identity (subject, chatgpt_account_id) exists
    /// updates that account's tokens and identity details and makes it active again (name,
    /// group and priority are kept); otherwise a new account is created in `group`. Each item
    /// is its own transaction; a failed item writes nothing.
    async fn import_codex(
        &self,
        items: Vec<ImportedCodexAuth>,
        group: &str,
        actor: &str,
    ) -> Result<Vec<ImportOutcome>>;
    /// Hands an account to its owner: `Kubernetes` with `managed_ref` naming the custom
    /// resource (e.g. `UpstreamAccount ns/name`), or back to the API (`managed_ref` None).
    /// The admin API and imports refuse to change Kubernetes-managed accounts.
    async fn set_account_managed_by(
        &self,
        id: &str,
        managed_by: ManagedBy,
        managed_ref: Option<&str>,
        actor: &str,
    ) -> Result<Account>;
    /// Creates an account owned by a Kubernetes resource, in one transaction: as
    /// `create_account`, then `managed_by=kubernetes` with `managed_ref` naming the resource
    /// (e.g. `UpstreamAccount ns/name`).
    async fn create_managed_account(
        &self,
        spec: AccountSpec,
        credentials: Option<Credentials>,
        identity: Option<CodexIdentity>,
        managed_ref: &str,
        actor: &str,
    ) -> Result<Account>;
    /// The Kubernetes-managed account whose `managed_ref` is exactly this, if any.
    async fn find_managed_account(&self, managed_ref: &str) -> Result<Option<Account>>;

    // --- usage ------------------------------------------------------------------------------
    async fn set_usage(&self, account_id: &str, usage: &UsageSnapshot) -> Result<()>;
    /// The latest usage of each listed account (accounts without usage are omitted).
    async fn get_usage(&self, account_ids: &[String]) -> Result<Vec<(String, UsageSnapshot)>>;

    // --- platform keys ----------------------------------------------------------------------
    /// Stores a key whose `hash` the caller computed; the plaintext never reaches the store.
    async fn create_key(&self, key: PlatformKey, actor: &str) -> Result<PlatformKey>;
    async fn get_key(&self, id: &str) -> Result<PlatformKey>;
    async fn list_keys(&self, page: &PageRequest) -> Result<Page<PlatformKey>>;
    async fn update_key(&self, id: &str, patch: &KeyPatch, actor: &str) -> Result<PlatformKey>;
    async fn delete_key(&self, id: &str, actor: &str) -> Result<()>;
    /// The Kubernetes-managed key whose `managed_ref` is exactly this (e.g.
    /// `PlatformKey ns/name`), if any.
    async fn find_managed_key(&self, managed_ref: &str) -> Result<Option<PlatformKey>>;

    // --- admin tokens -----------------------------------------------------------------------
    async fn create_admin_token(&self, token: AdminToken, actor: &str) -> Result<AdminToken>;
    async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>>;
    async fn find_admin_token(&self, hash: &str) -> Result<Option<AdminToken>>;
    async fn delete_admin_token(&self, id: &str, actor: &str) -> Result<()>;

    // --- request logs -----------------------------------------------------------------------
    /// Writes a batch (COPY on PostgreSQL, one transaction on SQLite). Records whose id
    /// already exists are skipped, so a re-sent batch is harmless. Returns rows written.
    async fn insert_request_logs(&self, logs: &[RequestLog]) -> Result<u64>;
    /// Newest first (by time, then id).
    async fn query_request_logs(
        &self,
        filter: &LogFilter,
        page: &PageRequest,
    ) -> Result<Page<RequestLog>>;
    async fn summarize_request_logs(&self, filter: &LogFilter) -> Result<LogSummary>;
    /// Deletes records older than `before_ms`; returns how many.
    async fn prune_request_logs(&self, before_ms: i64) -> Result<u64>;

    // --- routing policy ---------------------------------------------------------------------
    /// The stored policy, or the default when none was set.
    async fn get_policy(&self) -> Result<RoutingPolicy>;
    async fn set_policy(&self, policy: &RoutingPolicy, actor: &str) -> Result<()>;
    /// Saves `policy` only when none was ever saved (seeding defaults at start); returns
    /// whether it did. Never overwrites a policy set through the API.
    async fn seed_policy(&self, policy: &RoutingPolicy, actor: &str) -> Result<bool>;

    // --- audit and change log ---------------------------------------------------------------
    /// Newest first.
    async fn list_audit(&self, page: &PageRequest) -> Result<Page<AuditEvent>>;
    /// The newest change-log version (0 when empty).
    async fn current_version(&self) -> Result<i64>;
    /// Changes with a version greater than `after`, oldest first, at most `limit` (at most
    /// 10,000 per call).
    async fn changes_since(&self, after: i64, limit: u32) -> Result<Vec<Change>>;
    /// The oldest change-log version still retained (0 when the log is empty). A reader that
    /// has applied version `v` can catch up from the log alone when `v + 1 >= oldest`.
    async fn oldest_change_version(&self) -> Result<i64>;
    /// Deletes the oldest changes: those older than `older_than_ms`, keeping at least the
    /// newest `keep_last` (and always the newest one). Only ever a prefix of the log is
    /// removed, so the log never has holes. Returns how many rows were deleted.
    async fn prune_changes(&self, older_than_ms: i64, keep_last: u64) -> Result<u64>;
    /// Versions committed through this store object, as they commit (both backends). The
    /// value is the newest such version.
    fn local_changes(&self) -> watch::Receiver<i64>;
    /// Versions committed by other processes on the same database: PostgreSQL `LISTEN` on a
    /// dedicated connection that reconnects by itself (and then signals a change, since some
    /// may have been missed). The listener stops when the receiver is dropped. `None` where
    /// no other process can write (SQLite) or outside a tokio runtime.
    fn remote_changes(&self) -> Option<watch::Receiver<i64>>;

    // --- snapshot support -------------------------------------------------------------------
    /// The state gateways need for each listed account that exists (ordered by id): the
    /// account, its decrypted credentials, usage and shared cooldown.
    async fn load_account_states(&self, ids: &[String]) -> Result<Vec<AccountState>>;
    /// The listed keys that exist, ordered by id.
    async fn load_keys(&self, ids: &[String]) -> Result<Vec<PlatformKey>>;
    /// Every account state, key and the policy, one query each.
    async fn load_all_states(&self) -> Result<FullState>;
    /// Folds what gateways observed into the shared account state, in one transaction:
    /// 429s and exhausted quota extend the cooldown (to the later of old and new; exhausted
    /// quota also marks its usage window full), deactivation and a 401 on an account that
    /// cannot be refreshed make it unavailable, a 401 on a refreshable OAuth account marks it
    /// for the refresh job, and usage headers update the usage windows (skipped when they
    /// moved by less than half a percentage point with the same reset). Each account whose
    /// routing state changed gets one change-log row; observations of unknown accounts are
    /// counted and skipped. `actor` names the reporter in audit events of status changes.
    async fn record_observations(
        &self,
        observations: &[Observation],
        actor: &str,
    ) -> Result<ObservationOutcome>;
    /// Accounts a gateway saw fail authentication that still have a refresh token, for the
    /// leader's token refresh job. New credentials clear the mark.
    async fn accounts_needing_refresh(&self) -> Result<Vec<String>>;
    /// OAuth accounts whose tokens a refresher should look at now, most urgent first, at most
    /// `limit`: those a gateway asked to refresh and those whose access token expires before
    /// `expiring_before_ms` (or whose expiry is not yet known), without a live claim or a
    /// pause at `now_ms`, with a refresh token and a login not known to be dead.
    async fn accounts_due_for_refresh(
        &self,
        expiring_before_ms: i64,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<String>>;
    /// Claims the account's refresh for `lease_ms`, with its credential row locked: at most
    /// one live claim exists per account, so only its holder ever sends the refresh token.
    /// `NotFound` when the account does not exist.
    async fn begin_refresh(&self, account_id: &str, lease_ms: i64) -> Result<RefreshStart>;
    /// Stores the refreshed tokens, with the credential row locked, only if `claim` still
    /// holds and the stored refresh token is still the claimed one (compare-and-set). Clears
    /// the refresh request and an `auth_failed` cooldown, and writes a change-log row, so
    /// gateways get the new access token with the next delta.
    async fn complete_refresh(
        &self,
        claim: &RefreshClaim,
        tokens: &OAuthTokens,
        actor: &str,
    ) -> Result<RefreshCommit>;
    /// Ends a claim without new tokens; a no-op (`false`) when it no longer holds.
    async fn release_refresh(
        &self,
        claim: &RefreshClaim,
        release: &RefreshRelease,
        actor: &str,
    ) -> Result<bool>;

    // --- gateways ---------------------------------------------------------------------------
    async fn upsert_gateway_seen(&self, seen: &GatewaySeen) -> Result<()>;
    /// Gateways seen at or after `active_since_ms`, ordered by node id.
    async fn list_gateways(&self, active_since_ms: i64) -> Result<Vec<GatewayRecord>>;
    /// Forgets gateways not seen since `seen_before_ms`; returns how many.
    async fn prune_gateways(&self, seen_before_ms: i64) -> Result<u64>;
}

/// Milliseconds since the epoch, from the system clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A new random id such as `acc_5f1c0e9a8b7d6c4e2f10`.
pub fn new_id(prefix: &str) -> Result<String> {
    let mut b = [0u8; 10];
    getrandom::fill(&mut b).map_err(|e| StoreError::Internal(format!("no randomness: {e}")))?;
    Ok(format!("{prefix}_{}", hex::encode(b)))
}
