//! The embedded backend for `poolgate standalone`: one SQLite file (WAL mode) behind a mutex,
//! used from tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::executor::block_on;
use poolgate_core::authjson::ImportedCodexAuth;
use poolgate_core::page::PageRequest;
use poolgate_core::report::Observation;
use poolgate_core::snapshot::AccountState;
use poolgate_core::{
    Account, AccountPatch, AccountSpec, AdminToken, AuditEvent, CodexIdentity, Credentials,
    KeyPatch, LogFilter, LogSummary, ManagedBy, OAuthTokens, PlatformKey, RequestLog,
    RoutingPolicy, UsageSnapshot,
};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, TransactionBehavior, params_from_iter};
use tokio::sync::watch;

use crate::sql::{Row, Tx, Val};
use crate::{
    AccountFilter, Change, Cipher, FullState, GatewayRecord, GatewaySeen, ImportOutcome,
    ObservationOutcome, Page, RefreshClaim, RefreshCommit, RefreshRelease, RefreshStart, Result,
    Store, StoreError, migrate, ops,
};

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Val::Null => ValueRef::Null,
            Val::I64(v) => ValueRef::Integer(*v),
            Val::Text(s) => ValueRef::Text(s.as_bytes()),
            Val::Bool(b) => ValueRef::Integer(i64::from(*b)),
            Val::Bytes(b) => ValueRef::Blob(b),
        }))
    }
}

fn map_err(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, msg) if f.code == ErrorCode::ConstraintViolation => {
            let msg = msg.as_deref().unwrap_or("constraint violation");
            if msg.starts_with("UNIQUE") {
                StoreError::AlreadyExists {
                    kind: "record",
                    what: format!("({msg})"),
                }
            } else {
                StoreError::Database(msg.to_string())
            }
        }
        _ => StoreError::from(e),
    }
}

/// Statements are written with `$n` placeholders; SQLite spells them `?n`.
fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

/// A connection (or open transaction) seen through the shared [`Tx`] interface. Its futures
/// never wait: each method runs synchronously on the blocking thread that owns the connection.
/// Remembers the newest change-log version it wrote, to announce it after commit.
struct Conn<'a>(&'a Connection, AtomicI64);

impl<'a> Conn<'a> {
    fn new(c: &'a Connection) -> Self {
        Conn(c, AtomicI64::new(0))
    }
}

impl Tx for Conn<'_> {
    async fn exec(&self, sql: &str, params: &[Val]) -> Result<u64> {
        let mut st = self.0.prepare_cached(&sqlite_sql(sql)).map_err(map_err)?;
        let n = st
            .execute(params_from_iter(params.iter()))
            .map_err(map_err)?;
        Ok(n as u64)
    }

    async fn query(&self, sql: &str, params: &[Val]) -> Result<Vec<Row>> {
        let mut st = self.0.prepare_cached(&sqlite_sql(sql)).map_err(map_err)?;
        let ncols = st.column_count();
        let mut rows = st.query(params_from_iter(params.iter())).map_err(map_err)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(map_err)? {
            let mut vals = Vec::with_capacity(ncols);
            for i in 0..ncols {
                vals.push(match r.get_ref(i).map_err(map_err)? {
                    ValueRef::Null => Val::Null,
                    ValueRef::Integer(v) => Val::I64(v),
                    ValueRef::Text(t) => {
                        Val::Text(String::from_utf8(t.to_vec()).map_err(|_| {
                            StoreError::Internal(format!("column {i} is not UTF-8"))
                        })?)
                    }
                    ValueRef::Blob(b) => Val::Bytes(b.to_vec()),
                    ValueRef::Real(_) => {
                        return Err(StoreError::Internal(format!("column {i}: unexpected REAL")));
                    }
                });
            }
            out.push(Row(vals));
        }
        Ok(out)
    }

    async fn batch(&self, sql: &str) -> Result<()> {
        self.0.execute_batch(sql).map_err(map_err)
    }

    // The caller holds an IMMEDIATE transaction: SQLite's write lock already serialises these.
    async fn lock_migrations(&self) -> Result<()> {
        Ok(())
    }

    async fn lock_change_log(&self) -> Result<()> {
        Ok(())
    }

    async fn lock_observations(&self) -> Result<()> {
        Ok(())
    }

    async fn lock_credentials(&self, _account_id: &str) -> Result<()> {
        Ok(())
    }

    async fn changed(&self, version: i64) -> Result<()> {
        self.1.fetch_max(version, Ordering::Relaxed);
        Ok(())
    }
}

static INSERT_LOG: LazyLock<String> = LazyLock::new(|| {
    let n = ops::LOG_COLS.split(',').count();
    let ph: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO request_logs ({}) VALUES ({}) ON CONFLICT (ts_ms, id) DO NOTHING",
        ops::LOG_COLS,
        ph.join(", ")
    )
});

/// The SQLite store. Cloning shares the connection.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    cipher: Cipher,
    path: PathBuf,
    local: Arc<watch::Sender<i64>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Creates the database file readable only by its owner, unless it exists.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs `$body` (which uses `$tx: &Conn`) in a write transaction on the blocking pool; commits
/// when it returns `Ok`, rolls back otherwise.
macro_rules! write_tx {
    ($self:ident, |$tx:ident| $body:expr) => {{
        let local = $self.local.clone();
        $self
            .run(move |conn| {
                let t = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(map_err)?;
                let c = Conn::new(&t);
                let r = {
                    let $tx = &c;
                    block_on(async { $body })
                };
                let version = c.1.load(Ordering::Relaxed);
                if r.is_ok() {
                    t.commit().map_err(map_err)?;
                    announce(&local, version);
                }
                r
            })
            .await
    }};
}

/// Tells local followers that `version` committed (0: nothing was logged).
fn announce(local: &watch::Sender<i64>, version: i64) {
    if version > 0 {
        local.send_if_modified(|v| {
            let newer = version > *v;
            if newer {
                *v = version;
            }
            newer
        });
    }
}

/// Runs `$body` against the connection without a write transaction.
macro_rules! read {
    ($self:ident, |$tx:ident| $body:expr) => {
        $self
            .run(move |conn| {
                let $tx = &Conn::new(conn);
                block_on(async { $body })
            })
            .await
    };
}

/// The page size of a new database.
const PAGE_SIZE: i64 = 16 * 1024;
/// WAL bytes between automatic checkpoints.
const WAL_CHECKPOINT_BYTES: i64 = 64 * 1024 * 1024;

impl SqliteStore {
    /// Opens (creating it with mode 0600 if new) the database at `path` and applies pending
    /// migrations.
    pub fn open(path: &Path, cipher: Cipher) -> Result<Self> {
        let ctx = |e: &dyn std::fmt::Display| {
            StoreError::Database(format!(
                "cannot open SQLite database {}: {e}",
                path.display()
            ))
        };
        create_private(path).map_err(|e| ctx(&e))?;
        let mut conn = Connection::open(path).map_err(|e| ctx(&e))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| ctx(&e))?;
        // 16 KiB pages for a new database (an existing one keeps its size; it cannot change
        // once in WAL mode): request-log rows are a few hundred bytes each and carry five
        // indexes, and bigger pages split less often. The store's ingest of 1,000-row
        // batches took about 15% less CPU per row than with SQLite's 4 KiB.
        conn.pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(|e| ctx(&e))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| ctx(&e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "SQLite did not switch to WAL mode");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| ctx(&e))?;
        // Request logs arrive as a steady stream of small transactions that dirty the same
        // index pages again and again. Checkpointing every 64 MiB of WAL instead of SQLite's
        // 1,000 pages copies each hot page back once per many commits, not once per few;
        // the size limit hands the WAL's disk space back after a checkpoint.
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .map_err(|e| ctx(&e))?;
        conn.pragma_update(
            None,
            "wal_autocheckpoint",
            WAL_CHECKPOINT_BYTES / page_size.clamp(512, 65_536),
        )
        .map_err(|e| ctx(&e))?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(|e| ctx(&e))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| ctx(&e))?;
        conn.set_prepared_statement_cache_capacity(128);
        {
            let t = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let applied = block_on(migrate::run(&Conn::new(&t), migrate::SQLITE))?;
            t.commit().map_err(map_err)?;
            tracing::debug!(path = %path.display(), applied, "SQLite store ready");
        }
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            cipher,
            path: path.to_path_buf(),
            local: Arc::new(watch::channel(0).0),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn run<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock rolled its transaction back on unwind; the
            // connection itself is still sound.
            let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Internal(format!("SQLite worker failed: {e}")))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn create_account(
        &self,
        spec: AccountSpec,
        credentials: Option<Credentials>,
        identity: Option<CodexIdentity>,
        actor: &str,
    ) -> Result<Account> {
        let (cipher, actor) = (self.cipher.clone(), actor.to_string());
        write_tx!(self, |tx| {
            ops::create_account(
                tx,
                &cipher,
                spec,
                credentials,
                identity,
                &actor,
                "account.create",
            )
            .await
        })
    }

    async fn get_account(&self, id: &str) -> Result<Account> {
        let id = id.to_string();
        read!(self, |tx| ops::get_account(tx, &id).await)
    }

    async fn list_accounts(
        &self,
        filter: &AccountFilter,
        page: &PageRequest,
    ) -> Result<Page<Account>> {
        let (filter, page) = (filter.clone(), page.clone());
        read!(self, |tx| ops::list_accounts(tx, &filter, &page).await)
    }

    async fn update_account(&self, id: &str, patch: &AccountPatch, actor: &str) -> Result<Account> {
        let (id, patch, actor) = (id.to_string(), patch.clone(), actor.to_string());
        write_tx!(self, |tx| ops::update_account(tx, &id, &patch, &actor)
            .await)
    }

    async fn delete_account(&self, id: &str, actor: &str) -> Result<()> {
        let (id, actor) = (id.to_string(), actor.to_string());
        write_tx!(self, |tx| ops::delete_account(tx, &id, &actor).await)
    }

    async fn create_managed_account(
        &self,
        spec: AccountSpec,
        credentials: Option<Credentials>,
        identity: Option<CodexIdentity>,
        managed_ref: &str,
        actor: &str,
    ) -> Result<Account> {
        let (cipher, mref, actor) = (
            self.cipher.clone(),
            managed_ref.to_string(),
            actor.to_string(),
        );
        write_tx!(self, |tx| {
            ops::create_managed_account(tx, &cipher, spec, credentials, identity, &mref, &actor)
                .await
        })
    }

    async fn find_managed_account(&self, managed_ref: &str) -> Result<Option<Account>> {
        let mref = managed_ref.to_string();
        read!(self, |tx| ops::find_managed_account(tx, &mref).await)
    }

    async fn set_account_managed_by(
        &self,
        id: &str,
        managed_by: ManagedBy,
        managed_ref: Option<&str>,
        actor: &str,
    ) -> Result<Account> {
        let (id, mref, actor) = (
            id.to_string(),
            managed_ref.map(str::to_string),
            actor.to_string(),
        );
        write_tx!(self, |tx| {
            ops::set_account_managed_by(tx, &id, managed_by, mref.as_deref(), &actor).await
        })
    }

    async fn set_credentials(
        &self,
        id: &str,
        credentials: &Credentials,
        actor: &str,
    ) -> Result<()> {
        let (cipher, id, creds, actor) = (
            self.cipher.clone(),
            id.to_string(),
            credentials.clone(),
            actor.to_string(),
        );
        write_tx!(self, |tx| ops::set_credentials(
            tx, &cipher, &id, &creds, &actor
        )
        .await)
    }

    async fn get_credentials(&self, id: &str) -> Result<Option<Credentials>> {
        let (cipher, id) = (self.cipher.clone(), id.to_string());
        read!(self, |tx| ops::get_credentials(tx, &cipher, &id).await)
    }

    async fn import_codex(
        &self,
        items: Vec<ImportedCodexAuth>,
        group: &str,
        actor: &str,
    ) -> Result<Vec<ImportOutcome>> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let (cipher, group, actor) =
                (self.cipher.clone(), group.to_string(), actor.to_string());
            let r: Result<ImportOutcome> = write_tx!(self, |tx| ops::import_one(
                tx, &cipher, item, &group, &actor
            )
            .await);
            out.push(r.unwrap_or_else(|e| ImportOutcome::Failed(e.to_string())));
        }
        Ok(out)
    }

    async fn set_usage(&self, account_id: &str, usage: &UsageSnapshot) -> Result<()> {
        let (id, usage) = (account_id.to_string(), usage.clone());
        write_tx!(self, |tx| ops::set_usage(tx, &id, &usage).await)
    }

    async fn get_usage(&self, account_ids: &[String]) -> Result<Vec<(String, UsageSnapshot)>> {
        let ids = account_ids.to_vec();
        read!(self, |tx| ops::get_usage(tx, &ids).await)
    }

    async fn create_key(&self, key: PlatformKey, actor: &str) -> Result<PlatformKey> {
        let actor = actor.to_string();
        write_tx!(self, |tx| ops::create_key(tx, key, &actor).await)
    }

    async fn get_key(&self, id: &str) -> Result<PlatformKey> {
        let id = id.to_string();
        read!(self, |tx| ops::get_key(tx, &id).await)
    }

    async fn list_keys(&self, page: &PageRequest) -> Result<Page<PlatformKey>> {
        let page = page.clone();
        read!(self, |tx| ops::list_keys(tx, &page).await)
    }

    async fn update_key(&self, id: &str, patch: &KeyPatch, actor: &str) -> Result<PlatformKey> {
        let (id, patch, actor) = (id.to_string(), patch.clone(), actor.to_string());
        write_tx!(self, |tx| ops::update_key(tx, &id, &patch, &actor).await)
    }

    async fn delete_key(&self, id: &str, actor: &str) -> Result<()> {
        let (id, actor) = (id.to_string(), actor.to_string());
        write_tx!(self, |tx| ops::delete_key(tx, &id, &actor).await)
    }

    async fn find_managed_key(&self, managed_ref: &str) -> Result<Option<PlatformKey>> {
        let mref = managed_ref.to_string();
        read!(self, |tx| ops::find_managed_key(tx, &mref).await)
    }

    async fn create_admin_token(&self, token: AdminToken, actor: &str) -> Result<AdminToken> {
        let actor = actor.to_string();
        write_tx!(self, |tx| ops::create_admin_token(tx, token, &actor).await)
    }

    async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>> {
        read!(self, |tx| ops::list_admin_tokens(tx).await)
    }

    async fn find_admin_token(&self, hash: &str) -> Result<Option<AdminToken>> {
        let hash = hash.to_string();
        read!(self, |tx| ops::find_admin_token(tx, &hash).await)
    }

    async fn delete_admin_token(&self, id: &str, actor: &str) -> Result<()> {
        let (id, actor) = (id.to_string(), actor.to_string());
        write_tx!(self, |tx| ops::delete_admin_token(tx, &id, &actor).await)
    }

    async fn insert_request_logs(&self, logs: &[RequestLog]) -> Result<u64> {
        if logs.is_empty() {
            return Ok(0);
        }
        // Encode before taking the connection, so the lock is held only for the inserts.
        let rows = ops::LogRows::encode(logs)?;
        self.run(move |conn| {
            let t = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            let mut written = 0u64;
            {
                let mut st = t.prepare_cached(&INSERT_LOG).map_err(map_err)?;
                for i in 0..rows.len() {
                    rows.bind(i, |n, v| match v {
                        ops::LogVal::Null => st.raw_bind_parameter(n, rusqlite::types::Null),
                        ops::LogVal::Int(x) => st.raw_bind_parameter(n, x),
                        ops::LogVal::Text(x) => st.raw_bind_parameter(n, x),
                    })
                    .map_err(map_err)?;
                    written += st.raw_execute().map_err(map_err)? as u64;
                }
            }
            t.commit().map_err(map_err)?;
            Ok(written)
        })
        .await
    }

    async fn query_request_logs(
        &self,
        filter: &LogFilter,
        page: &PageRequest,
    ) -> Result<Page<RequestLog>> {
        let (filter, page) = (filter.clone(), page.clone());
        read!(self, |tx| ops::query_request_logs(tx, &filter, &page).await)
    }

    async fn summarize_request_logs(&self, filter: &LogFilter) -> Result<LogSummary> {
        let filter = filter.clone();
        read!(self, |tx| ops::summarize_request_logs(tx, &filter).await)
    }

    async fn prune_request_logs(&self, before_ms: i64) -> Result<u64> {
        let mut total = 0;
        loop {
            let n: u64 = write_tx!(self, |tx| ops::prune_request_logs_chunk(tx, before_ms)
                .await)?;
            total += n;
            if n < ops::PRUNE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    async fn get_policy(&self) -> Result<RoutingPolicy> {
        read!(self, |tx| ops::get_policy(tx).await)
    }

    async fn set_policy(&self, policy: &RoutingPolicy, actor: &str) -> Result<()> {
        let (policy, actor) = (policy.clone(), actor.to_string());
        write_tx!(self, |tx| ops::set_policy(tx, &policy, &actor).await)
    }

    async fn seed_policy(&self, policy: &RoutingPolicy, actor: &str) -> Result<bool> {
        let (policy, actor) = (policy.clone(), actor.to_string());
        write_tx!(self, |tx| ops::seed_policy(tx, &policy, &actor).await)
    }

    async fn list_audit(&self, page: &PageRequest) -> Result<Page<AuditEvent>> {
        let page = page.clone();
        read!(self, |tx| ops::list_audit(tx, &page).await)
    }

    async fn current_version(&self) -> Result<i64> {
        read!(self, |tx| ops::current_version(tx).await)
    }

    async fn changes_since(&self, after: i64, limit: u32) -> Result<Vec<Change>> {
        read!(self, |tx| ops::changes_since(tx, after, limit).await)
    }

    async fn oldest_change_version(&self) -> Result<i64> {
        read!(self, |tx| ops::oldest_change_version(tx).await)
    }

    async fn prune_changes(&self, older_than_ms: i64, keep_last: u64) -> Result<u64> {
        let mut total = 0;
        loop {
            let n: u64 = write_tx!(self, |tx| ops::prune_changes_chunk(
                tx,
                older_than_ms,
                keep_last
            )
            .await)?;
            total += n;
            if n < ops::PRUNE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    fn local_changes(&self) -> watch::Receiver<i64> {
        self.local.subscribe()
    }

    /// One process owns the file: every write goes through `local_changes`.
    fn remote_changes(&self) -> Option<watch::Receiver<i64>> {
        None
    }

    async fn load_account_states(&self, ids: &[String]) -> Result<Vec<AccountState>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (cipher, ids) = (self.cipher.clone(), ids.to_vec());
        read!(self, |tx| ops::load_account_states(tx, &cipher, &ids).await)
    }

    async fn load_keys(&self, ids: &[String]) -> Result<Vec<PlatformKey>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids = ids.to_vec();
        read!(self, |tx| ops::load_keys(tx, &ids).await)
    }

    async fn load_all_states(&self) -> Result<FullState> {
        // The connection lock makes the reads one consistent view.
        let cipher = self.cipher.clone();
        read!(self, |tx| ops::load_all_states(tx, &cipher).await)
    }

    async fn record_observations(
        &self,
        observations: &[Observation],
        actor: &str,
    ) -> Result<ObservationOutcome> {
        if observations.is_empty() {
            return Ok(ObservationOutcome::default());
        }
        let (cipher, obs, actor) = (
            self.cipher.clone(),
            observations.to_vec(),
            actor.to_string(),
        );
        write_tx!(self, |tx| ops::record_observations(
            tx, &cipher, &obs, &actor
        )
        .await)
    }

    async fn accounts_needing_refresh(&self) -> Result<Vec<String>> {
        read!(self, |tx| ops::accounts_needing_refresh(tx).await)
    }

    async fn accounts_due_for_refresh(
        &self,
        expiring_before_ms: i64,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<String>> {
        read!(self, |tx| ops::accounts_due_for_refresh(
            tx,
            expiring_before_ms,
            now_ms,
            limit
        )
        .await)
    }

    async fn begin_refresh(&self, account_id: &str, lease_ms: i64) -> Result<RefreshStart> {
        let (cipher, id) = (self.cipher.clone(), account_id.to_string());
        write_tx!(self, |tx| ops::begin_refresh(tx, &cipher, &id, lease_ms)
            .await)
    }

    async fn complete_refresh(
        &self,
        claim: &RefreshClaim,
        tokens: &OAuthTokens,
        actor: &str,
    ) -> Result<RefreshCommit> {
        let (cipher, claim, tokens, actor) = (
            self.cipher.clone(),
            claim.clone(),
            tokens.clone(),
            actor.to_string(),
        );
        write_tx!(self, |tx| ops::complete_refresh(
            tx, &cipher, &claim, &tokens, &actor
        )
        .await)
    }

    async fn release_refresh(
        &self,
        claim: &RefreshClaim,
        release: &RefreshRelease,
        actor: &str,
    ) -> Result<bool> {
        let (claim, release, actor) = (claim.clone(), release.clone(), actor.to_string());
        write_tx!(self, |tx| ops::release_refresh(
            tx, &claim, &release, &actor
        )
        .await)
    }

    async fn upsert_gateway_seen(&self, seen: &GatewaySeen) -> Result<()> {
        let seen = seen.clone();
        write_tx!(self, |tx| ops::upsert_gateway_seen(tx, &seen).await)
    }

    async fn list_gateways(&self, active_since_ms: i64) -> Result<Vec<GatewayRecord>> {
        read!(self, |tx| ops::list_gateways(tx, active_since_ms).await)
    }

    async fn prune_gateways(&self, seen_before_ms: i64) -> Result<u64> {
        write_tx!(self, |tx| ops::prune_gateways(tx, seen_before_ms).await)
    }
}
