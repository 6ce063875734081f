//! The cluster backend: PostgreSQL through a deadpool connection pool.
//!
//! Request logs arrive in batches and go in with binary COPY into a per-connection temporary
//! staging table, then `INSERT … SELECT … ON CONFLICT (id) DO NOTHING`, so a re-sent batch is
//! skipped row by row without giving up COPY's speed.

use std::pin::pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures::StreamExt;
use poolgate_core::authjson::ImportedCodexAuth;
use poolgate_core::page::PageRequest;
use poolgate_core::report::Observation;
use poolgate_core::snapshot::AccountState;
use poolgate_core::{
    Account, AccountPatch, AccountSpec, AdminToken, AuditEvent, CodexIdentity, Credentials,
    KeyPatch, LogFilter, LogSummary, ManagedBy, OAuthTokens, PlatformKey, RequestLog,
    RoutingPolicy, UsageSnapshot,
};
use tokio::sync::watch;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{AsyncMessage, IsolationLevel, NoTls};

use crate::sql::{Row, Tx, Val};
use crate::{
    AccountFilter, Change, Cipher, FullState, GatewayRecord, GatewaySeen, ImportOutcome,
    ObservationOutcome, Page, RefreshClaim, RefreshCommit, RefreshRelease, RefreshStart, Result,
    Store, StoreError, migrate, ops,
};

/// `NOTIFY` channel that carries each new change-log version, so other control-plane replicas
/// learn about a write without polling.
pub const CHANGE_CHANNEL: &str = "poolgate_changes";

/// Connections in the pool.
pub const POOL_SIZE: usize = 16;

// Advisory lock keys: the ASCII of a short name, so they are recognisable in pg_locks.
const MIGRATION_LOCK: i64 = i64::from_be_bytes(*b"pg_migra");
const CHANGE_LOG_LOCK: i64 = i64::from_be_bytes(*b"pg_chlog");
const OBSERVATION_LOCK: i64 = i64::from_be_bytes(*b"pg_obsrv");

/// How long the change listener waits before reconnecting, at first and at most.
const LISTEN_RETRY_MIN: Duration = Duration::from_millis(200);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Sync + Send>;

impl ToSql for Val {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        let mismatch = || -> BoxError { format!("cannot send {self:?} as {ty}").into() };
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::I64(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                _ => Err(mismatch()),
            },
            Val::Text(s) if <String as ToSql>::accepts(ty) => s.to_sql(ty, out),
            Val::Bool(b) if <bool as ToSql>::accepts(ty) => b.to_sql(ty, out),
            Val::Bytes(b) if <Vec<u8> as ToSql>::accepts(ty) => b.to_sql(ty, out),
            _ => Err(mismatch()),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn map_err(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) if *db.code() == SqlState::UNIQUE_VIOLATION => StoreError::AlreadyExists {
            kind: "record",
            what: format!(
                "violating {}",
                db.constraint().unwrap_or("a unique constraint")
            ),
        },
        _ => StoreError::from(e),
    }
}

fn pg_row(r: &tokio_postgres::Row) -> Result<Row> {
    let mut vals = Vec::with_capacity(r.len());
    for (i, col) in r.columns().iter().enumerate() {
        let ty = col.type_();
        let v = match *ty {
            Type::INT8 => r
                .try_get::<_, Option<i64>>(i)
                .map_err(map_err)?
                .map(Val::I64),
            Type::INT4 => r
                .try_get::<_, Option<i32>>(i)
                .map_err(map_err)?
                .map(Val::from),
            Type::INT2 => r
                .try_get::<_, Option<i16>>(i)
                .map_err(map_err)?
                .map(|v| Val::I64(v.into())),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => r
                .try_get::<_, Option<String>>(i)
                .map_err(map_err)?
                .map(Val::Text),
            Type::BOOL => r
                .try_get::<_, Option<bool>>(i)
                .map_err(map_err)?
                .map(Val::Bool),
            Type::BYTEA => r
                .try_get::<_, Option<Vec<u8>>>(i)
                .map_err(map_err)?
                .map(Val::Bytes),
            _ => {
                return Err(StoreError::Internal(format!(
                    "column {} has unexpected type {ty}",
                    col.name()
                )));
            }
        };
        vals.push(v.unwrap_or(Val::Null));
    }
    Ok(Row(vals))
}

/// A pooled connection or one of its transactions, seen through the shared [`Tx`] interface.
/// Remembers the newest change-log version it wrote, to announce it after commit.
struct PgConn<'a, C: GenericClient> {
    client: &'a C,
    last_change: AtomicI64,
}

impl<'a, C: GenericClient> PgConn<'a, C> {
    fn new(client: &'a C) -> Self {
        PgConn {
            client,
            last_change: AtomicI64::new(0),
        }
    }

    fn last_change(&self) -> i64 {
        self.last_change.load(Ordering::Relaxed)
    }
}

fn refs(params: &[Val]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

impl<C: GenericClient> Tx for PgConn<'_, C> {
    async fn exec(&self, sql: &str, params: &[Val]) -> Result<u64> {
        let st = self.client.prepare_cached(sql).await.map_err(map_err)?;
        self.client
            .execute(&st, &refs(params))
            .await
            .map_err(map_err)
    }

    async fn query(&self, sql: &str, params: &[Val]) -> Result<Vec<Row>> {
        let st = self.client.prepare_cached(sql).await.map_err(map_err)?;
        let rows = self
            .client
            .query(&st, &refs(params))
            .await
            .map_err(map_err)?;
        rows.iter().map(pg_row).collect()
    }

    async fn batch(&self, sql: &str) -> Result<()> {
        self.client.batch_execute(sql).await.map_err(map_err)
    }

    async fn lock_migrations(&self) -> Result<()> {
        self.exec("SELECT pg_advisory_xact_lock($1)", &[MIGRATION_LOCK.into()])
            .await
            .map(drop)
    }

    async fn lock_change_log(&self) -> Result<()> {
        self.exec(
            "SELECT pg_advisory_xact_lock($1)",
            &[CHANGE_LOG_LOCK.into()],
        )
        .await
        .map(drop)
    }

    async fn lock_observations(&self) -> Result<()> {
        self.exec(
            "SELECT pg_advisory_xact_lock($1)",
            &[OBSERVATION_LOCK.into()],
        )
        .await
        .map(drop)
    }

    async fn lock_credentials(&self, account_id: &str) -> Result<()> {
        self.exec(
            "SELECT 1 FROM credentials WHERE account_id = $1 FOR UPDATE",
            &[account_id.into()],
        )
        .await
        .map(drop)
    }

    async fn changed(&self, version: i64) -> Result<()> {
        self.last_change.fetch_max(version, Ordering::Relaxed);
        // Delivered at commit, and only if the transaction commits.
        self.exec(
            "SELECT pg_notify($1, $2)",
            &[CHANGE_CHANNEL.into(), version.to_string().into()],
        )
        .await
        .map(drop)
    }
}

const LOG_TYPES: [Type; 20] = [
    Type::TEXT, // id
    Type::INT8, // ts_ms
    Type::TEXT, // key_id
    Type::TEXT, // account_id
    Type::TEXT, // method
    Type::TEXT, // path
    Type::TEXT, // model
    Type::TEXT, // protocol
    Type::INT8, // status
    Type::TEXT, // error_class
    Type::INT8, // input_tokens
    Type::INT8, // cached_input_tokens
    Type::INT8, // output_tokens
    Type::INT8, // reasoning_tokens
    Type::INT8, // ttfb_ms
    Type::INT8, // duration_ms
    Type::TEXT, // node
    Type::TEXT, // attempts
    Type::TEXT, // translation
    Type::TEXT, // upstream_model
];

static COPY_DIRECT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "COPY request_logs ({}) FROM STDIN (FORMAT binary)",
        ops::LOG_COLS
    )
});
static COPY_STAGING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "COPY request_logs_staging ({}) FROM STDIN (FORMAT binary)",
        ops::LOG_COLS
    )
});
static INSERT_FROM_STAGING: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO request_logs ({cols}) SELECT {cols} FROM request_logs_staging \
         ON CONFLICT (ts_ms, id) DO NOTHING",
        cols = ops::LOG_COLS
    )
});

/// Streams rows through a binary COPY; returns how many were written.
async fn copy_logs(
    t: &deadpool_postgres::Transaction<'_>,
    statement: &str,
    rows: &[Vec<Val>],
) -> std::result::Result<u64, tokio_postgres::Error> {
    let sink = t.copy_in(statement).await?;
    let mut writer = pin!(BinaryCopyInWriter::new(sink, &LOG_TYPES));
    for r in rows {
        writer.as_mut().write(&refs(r)).await?;
    }
    writer.as_mut().finish().await
}

/// The PostgreSQL store. Cloning shares the pool and the local change feed.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    cipher: Cipher,
    /// For the dedicated `LISTEN` connections of [`Store::remote_changes`].
    config: tokio_postgres::Config,
    local: Arc<watch::Sender<i64>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

/// Where a URL points, without its password, for error messages.
fn describe(cfg: &tokio_postgres::Config) -> String {
    // One port applies to every host; otherwise ports pair with hosts.
    let ports = cfg.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| match h {
            tokio_postgres::config::Host::Tcp(h) => format!("{h}:{}", port(i)),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => format!("{}:{}", path.display(), port(i)),
        })
        .collect();
    format!(
        "{} database {:?}",
        hosts.join(","),
        cfg.get_dbname().unwrap_or("(default)")
    )
}

/// Runs `$body` (which uses `$tx: &PgConn`) in a transaction; commits when it returns `Ok`.
macro_rules! write_tx {
    ($self:ident, |$tx:ident| $body:expr) => {{
        let mut client = $self.pool.get().await?;
        let t = client.transaction().await.map_err(map_err)?;
        let conn = PgConn::new(&t);
        let r = {
            let $tx = &conn;
            $body
        };
        let version = conn.last_change();
        match r {
            Ok(v) => {
                t.commit().await.map_err(map_err)?;
                $self.announce(version);
                Ok(v)
            }
            Err(e) => {
                if let Err(re) = t.rollback().await {
                    tracing::debug!(error = %re, "rollback failed; the connection drops the transaction");
                }
                Err(e)
            }
        }
    }};
}

/// Runs `$body` on a pooled connection outside an explicit transaction.
macro_rules! read {
    ($self:ident, |$tx:ident| $body:expr) => {{
        let client = $self.pool.get().await?;
        let $tx = &PgConn::new(&client);
        $body
    }};
}

impl PgStore {
    /// Connects (pool of [`POOL_SIZE`]) and applies pending migrations under an advisory lock,
    /// so replicas starting together apply each migration once.
    pub async fn connect(url: &str, cipher: Cipher) -> Result<Self> {
        let cfg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Database(format!("invalid PostgreSQL URL: {e}")))?;
        let target = describe(&cfg);
        let mgr = Manager::from_config(
            cfg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(15)))
            .wait_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| StoreError::Database(format!("cannot build connection pool: {e}")))?;
        let mut client = pool.get().await.map_err(|e| {
            StoreError::Unavailable(format!("cannot connect to PostgreSQL at {target}: {e}"))
        })?;
        let t = client.transaction().await.map_err(map_err)?;
        let applied = migrate::run(&PgConn::new(&t), migrate::POSTGRES).await?;
        t.commit().await.map_err(map_err)?;
        tracing::debug!(%target, applied, "PostgreSQL store ready");
        Ok(PgStore {
            pool,
            cipher,
            config: cfg,
            local: Arc::new(watch::channel(0).0),
        })
    }

    /// Tells local followers that `version` committed (0: nothing was logged).
    fn announce(&self, version: i64) {
        if version > 0 {
            self.local.send_if_modified(|v| {
                let newer = version > *v;
                if newer {
                    *v = version;
                }
                newer
            });
        }
    }
}

/// Follows `NOTIFY poolgate_changes` on its own connection until `tx` has no receiver,
/// reconnecting with backoff. After each (re)connect it signals a change: notifications sent
/// while it was away are lost, so followers must look at the log.
async fn listen_changes(mut config: tokio_postgres::Config, tx: watch::Sender<i64>) {
    // A half-open connection would otherwise go unnoticed for hours.
    config
        .connect_timeout(Duration::from_secs(10))
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3);
    let target = describe(&config);
    let mut backoff = LISTEN_RETRY_MIN;
    loop {
        let outcome = tokio::select! {
            r = listen_once(&config, &tx, &mut backoff) => r,
            _ = tx.closed() => return,
        };
        match outcome {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(
                    %target,
                    error = %e,
                    retry_in = ?backoff,
                    "change listener lost its connection; reconnecting"
                );
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = tx.closed() => return,
        }
        backoff = (backoff * 2).min(LISTEN_RETRY_MAX);
    }
}

/// One connection's worth of [`listen_changes`]; `Ok` when the feed is no longer wanted.
async fn listen_once(
    config: &tokio_postgres::Config,
    tx: &watch::Sender<i64>,
    backoff: &mut Duration,
) -> std::result::Result<(), String> {
    let (client, mut conn) = config.connect(NoTls).await.map_err(|e| e.to_string())?;
    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
    let statement = format!("LISTEN {CHANGE_CHANNEL}");
    let mut listen = pin!(client.batch_execute(&statement));
    let mut listening = false;
    loop {
        tokio::select! {
            r = &mut listen, if !listening => {
                r.map_err(|e| e.to_string())?;
                listening = true;
                *backoff = LISTEN_RETRY_MIN;
                tracing::debug!("listening for changes of other replicas");
                tx.send_modify(|_| {});
            }
            m = messages.next() => match m {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if let Ok(version) = n.payload().parse::<i64>() {
                        tx.send_if_modified(|v| {
                            let newer = version > *v;
                            if newer {
                                *v = version;
                            }
                            newer
                        });
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the server closed the connection".into()),
            },
            _ = tx.closed() => return Ok(()),
        }
    }
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn create_account(
        &self,
        spec: AccountSpec,
        credentials: Option<Credentials>,
        identity: Option<CodexIdentity>,
        actor: &str,
    ) -> Result<Account> {
        write_tx!(self, |tx| {
            ops::create_account(
                tx,
                &self.cipher,
                spec,
                credentials,
                identity,
                actor,
                "account.create",
            )
            .await
        })
    }

    async fn get_account(&self, id: &str) -> Result<Account> {
        read!(self, |tx| ops::get_account(tx, id).await)
    }

    async fn list_accounts(
        &self,
        filter: &AccountFilter,
        page: &PageRequest,
    ) -> Result<Page<Account>> {
        read!(self, |tx| ops::list_accounts(tx, filter, page).await)
    }

    async fn update_account(&self, id: &str, patch: &AccountPatch, actor: &str) -> Result<Account> {
        write_tx!(self, |tx| ops::update_account(tx, id, patch, actor).await)
    }

    async fn delete_account(&self, id: &str, actor: &str) -> Result<()> {
        write_tx!(self, |tx| ops::delete_account(tx, id, actor).await)
    }

    async fn create_managed_account(
        &self,
        spec: AccountSpec,
        credentials: Option<Credentials>,
        identity: Option<CodexIdentity>,
        managed_ref: &str,
        actor: &str,
    ) -> Result<Account> {
        write_tx!(self, |tx| {
            ops::create_managed_account(
                tx,
                &self.cipher,
                spec,
                credentials,
                identity,
                managed_ref,
                actor,
            )
            .await
        })
    }

    async fn find_managed_account(&self, managed_ref: &str) -> Result<Option<Account>> {
        read!(self, |tx| ops::find_managed_account(tx, managed_ref).await)
    }

    async fn set_account_managed_by(
        &self,
        id: &str,
        managed_by: ManagedBy,
        managed_ref: Option<&str>,
        actor: &str,
    ) -> Result<Account> {
        write_tx!(self, |tx| {
            ops::set_account_managed_by(tx, id, managed_by, managed_ref, actor).await
        })
    }

    async fn set_credentials(
        &self,
        id: &str,
        credentials: &Credentials,
        actor: &str,
    ) -> Result<()> {
        write_tx!(self, |tx| ops::set_credentials(
            tx,
            &self.cipher,
            id,
            credentials,
            actor
        )
        .await)
    }

    async fn get_credentials(&self, id: &str) -> Result<Option<Credentials>> {
        read!(self, |tx| ops::get_credentials(tx, &self.cipher, id).await)
    }

    async fn import_codex(
        &self,
        items: Vec<ImportedCodexAuth>,
        group: &str,
        actor: &str,
    ) -> Result<Vec<ImportOutcome>> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let r: Result<ImportOutcome> = write_tx!(self, |tx| ops::import_one(
                tx,
                &self.cipher,
                item,
                group,
                actor
            )
            .await);
            out.push(r.unwrap_or_else(|e| ImportOutcome::Failed(e.to_string())));
        }
        Ok(out)
    }

    async fn set_usage(&self, account_id: &str, usage: &UsageSnapshot) -> Result<()> {
        write_tx!(self, |tx| ops::set_usage(tx, account_id, usage).await)
    }

    async fn get_usage(&self, account_ids: &[String]) -> Result<Vec<(String, UsageSnapshot)>> {
        read!(self, |tx| ops::get_usage(tx, account_ids).await)
    }

    async fn create_key(&self, key: PlatformKey, actor: &str) -> Result<PlatformKey> {
        write_tx!(self, |tx| ops::create_key(tx, key, actor).await)
    }

    async fn get_key(&self, id: &str) -> Result<PlatformKey> {
        read!(self, |tx| ops::get_key(tx, id).await)
    }

    async fn list_keys(&self, page: &PageRequest) -> Result<Page<PlatformKey>> {
        read!(self, |tx| ops::list_keys(tx, page).await)
    }

    async fn update_key(&self, id: &str, patch: &KeyPatch, actor: &str) -> Result<PlatformKey> {
        write_tx!(self, |tx| ops::update_key(tx, id, patch, actor).await)
    }

    async fn delete_key(&self, id: &str, actor: &str) -> Result<()> {
        write_tx!(self, |tx| ops::delete_key(tx, id, actor).await)
    }

    async fn find_managed_key(&self, managed_ref: &str) -> Result<Option<PlatformKey>> {
        read!(self, |tx| ops::find_managed_key(tx, managed_ref).await)
    }

    async fn create_admin_token(&self, token: AdminToken, actor: &str) -> Result<AdminToken> {
        write_tx!(self, |tx| ops::create_admin_token(tx, token, actor).await)
    }

    async fn list_admin_tokens(&self) -> Result<Vec<AdminToken>> {
        read!(self, |tx| ops::list_admin_tokens(tx).await)
    }

    async fn find_admin_token(&self, hash: &str) -> Result<Option<AdminToken>> {
        read!(self, |tx| ops::find_admin_token(tx, hash).await)
    }

    async fn delete_admin_token(&self, id: &str, actor: &str) -> Result<()> {
        write_tx!(self, |tx| ops::delete_admin_token(tx, id, actor).await)
    }

    async fn insert_request_logs(&self, logs: &[RequestLog]) -> Result<u64> {
        if logs.is_empty() {
            return Ok(0);
        }
        let rows = ops::LogRows::encode(logs)?.to_vals();
        let mut client = self.pool.get().await?;
        let mut t = client.transaction().await.map_err(map_err)?;
        // Request logs are telemetry: not waiting for the WAL flush at commit trades the last
        // few hundred milliseconds of logs on a server crash for throughput (no corruption).
        t.batch_execute("SET LOCAL synchronous_commit = off")
            .await
            .map_err(map_err)?;
        // Fast path: COPY straight into the table. A duplicate id only comes from a re-sent
        // batch; then roll back to the savepoint and dedupe through a staging table.
        let direct = t.savepoint("direct_copy").await.map_err(map_err)?;
        match copy_logs(&direct, COPY_DIRECT.as_str(), &rows).await {
            Ok(n) => {
                direct.commit().await.map_err(map_err)?;
                t.commit().await.map_err(map_err)?;
                return Ok(n);
            }
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                direct.rollback().await.map_err(map_err)?;
            }
            Err(e) => return Err(map_err(e)),
        }
        // The staging table lives as long as the pooled connection; its rows only until commit.
        t.batch_execute(
            "SET LOCAL client_min_messages = warning; \
             CREATE TEMP TABLE IF NOT EXISTS request_logs_staging \
             (LIKE request_logs) ON COMMIT DELETE ROWS",
        )
        .await
        .map_err(map_err)?;
        copy_logs(&t, COPY_STAGING.as_str(), &rows)
            .await
            .map_err(map_err)?;
        let insert = t
            .prepare_cached(&INSERT_FROM_STAGING)
            .await
            .map_err(map_err)?;
        let written = t.execute(&insert, &[]).await.map_err(map_err)?;
        t.commit().await.map_err(map_err)?;
        Ok(written)
    }

    async fn query_request_logs(
        &self,
        filter: &LogFilter,
        page: &PageRequest,
    ) -> Result<Page<RequestLog>> {
        read!(self, |tx| ops::query_request_logs(tx, filter, page).await)
    }

    async fn summarize_request_logs(&self, filter: &LogFilter) -> Result<LogSummary> {
        read!(self, |tx| ops::summarize_request_logs(tx, filter).await)
    }

    async fn prune_request_logs(&self, before_ms: i64) -> Result<u64> {
        let mut total = 0;
        loop {
            // Each statement commits on its own.
            let n: u64 = read!(self, |tx| ops::prune_request_logs_chunk(tx, before_ms)
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
        write_tx!(self, |tx| ops::set_policy(tx, policy, actor).await)
    }

    async fn seed_policy(&self, policy: &RoutingPolicy, actor: &str) -> Result<bool> {
        write_tx!(self, |tx| ops::seed_policy(tx, policy, actor).await)
    }

    async fn list_audit(&self, page: &PageRequest) -> Result<Page<AuditEvent>> {
        read!(self, |tx| ops::list_audit(tx, page).await)
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

    fn remote_changes(&self) -> Option<watch::Receiver<i64>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = watch::channel(0);
        runtime.spawn(listen_changes(self.config.clone(), tx));
        Some(rx)
    }

    async fn load_account_states(&self, ids: &[String]) -> Result<Vec<AccountState>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        read!(self, |tx| ops::load_account_states(tx, &self.cipher, ids)
            .await)
    }

    async fn load_keys(&self, ids: &[String]) -> Result<Vec<PlatformKey>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        read!(self, |tx| ops::load_keys(tx, ids).await)
    }

    async fn load_all_states(&self) -> Result<FullState> {
        let mut client = self.pool.get().await?;
        // One consistent view of everything, as of the version it reports.
        let t = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(map_err)?;
        let state = ops::load_all_states(&PgConn::new(&t), &self.cipher).await?;
        t.commit().await.map_err(map_err)?;
        Ok(state)
    }

    async fn record_observations(
        &self,
        observations: &[Observation],
        actor: &str,
    ) -> Result<ObservationOutcome> {
        if observations.is_empty() {
            return Ok(ObservationOutcome::default());
        }
        write_tx!(self, |tx| ops::record_observations(
            tx,
            &self.cipher,
            observations,
            actor
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
        write_tx!(self, |tx| ops::begin_refresh(
            tx,
            &self.cipher,
            account_id,
            lease_ms
        )
        .await)
    }

    async fn complete_refresh(
        &self,
        claim: &RefreshClaim,
        tokens: &OAuthTokens,
        actor: &str,
    ) -> Result<RefreshCommit> {
        write_tx!(self, |tx| ops::complete_refresh(
            tx,
            &self.cipher,
            claim,
            tokens,
            actor
        )
        .await)
    }

    async fn release_refresh(
        &self,
        claim: &RefreshClaim,
        release: &RefreshRelease,
        actor: &str,
    ) -> Result<bool> {
        write_tx!(self, |tx| ops::release_refresh(tx, claim, release, actor)
            .await)
    }

    async fn upsert_gateway_seen(&self, seen: &GatewaySeen) -> Result<()> {
        read!(self, |tx| ops::upsert_gateway_seen(tx, seen).await)
    }

    async fn list_gateways(&self, active_since_ms: i64) -> Result<Vec<GatewayRecord>> {
        read!(self, |tx| ops::list_gateways(tx, active_since_ms).await)
    }

    async fn prune_gateways(&self, seen_before_ms: i64) -> Result<u64> {
        read!(self, |tx| ops::prune_gateways(tx, seen_before_ms).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_names_hosts_without_password() {
        let cfg: tokio_postgres::Config = "postgres://u:secret@a:6000,b:6001/db".parse().unwrap();
        let d = describe(&cfg);
        assert_eq!(d, "a:6000,b:6001 database \"db\"");
        assert!(!d.contains("secret"));
        let cfg: tokio_postgres::Config = "host=x,z port=7 dbname=y".parse().unwrap();
        assert_eq!(describe(&cfg), "x:7,z:7 database \"y\"");
    }

    #[test]
    fn values_refuse_mismatched_types() {
        let mut buf = BytesMut::new();
        assert!(Val::Text("x".into()).to_sql(&Type::INT8, &mut buf).is_err());
        assert!(Val::I64(1 << 40).to_sql(&Type::INT4, &mut buf).is_err());
        assert!(Val::I64(7).to_sql(&Type::INT4, &mut buf).is_ok());
        assert!(matches!(
            Val::Null.to_sql(&Type::BYTEA, &mut buf),
            Ok(IsNull::Yes)
        ));
    }
}
