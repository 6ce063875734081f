//! The store logic, written once against [`Tx`] and run by both backends inside their own
//! transactions. Every mutation validates first, then writes its rows, its audit event and
//! (for accounts, keys and the policy) its change-log entry, the latter last.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::LazyLock;

use poolgate_core::authjson::ImportedCodexAuth;
use poolgate_core::page::{self, Cursor, PageRequest};
use poolgate_core::report::{Observation, ObservationKind};
use poolgate_core::snapshot::AccountState;
use poolgate_core::usage::Availability;
use poolgate_core::usage::WEEKLY_THRESHOLD_MINUTES;
use poolgate_core::{
    Account, AccountPatch, AccountSpec, AccountStatus, AdminToken, AuditEvent, AzureConfig,
    CodexIdentity, Credentials, KeyPatch, KeySpec, LogFilter, LogSummary, ManagedBy, OAuthTokens,
    PlatformKey, Provider, RequestLog, RoutingPolicy, StatusReason, SummaryRow, UsageSnapshot,
    UsageWindow,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::sql::{Row, Tx, Val, Where};
use crate::{
    AccountFilter, Change, Cipher, FullState, GatewayEvent, GatewayRecord, GatewaySeen,
    ImportOutcome, ObservationOutcome, Page, RefreshClaim, RefreshCommit, RefreshRelease,
    RefreshStart, ResourceKind, Result, StoreError, listing, new_id, now_ms,
};

/// The change-log id of the single routing policy.
pub(crate) const POLICY_ID: &str = "default";

// --- helpers ---------------------------------------------------------------------------------

fn invalid(field: &'static str, reason: impl Into<String>) -> StoreError {
    StoreError::Invalid(poolgate_core::Error::invalid(field, reason))
}

fn parse_col<T: FromStr<Err = poolgate_core::Error>>(s: &str) -> Result<T> {
    s.parse()
        .map_err(|e| StoreError::Internal(format!("unreadable stored value: {e}")))
}

fn opt_col<T: FromStr<Err = poolgate_core::Error>>(s: Option<String>) -> Result<Option<T>> {
    s.as_deref().map(parse_col).transpose()
}

fn to_json<T: Serialize + ?Sized>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Internal(format!("cannot encode JSON: {e}")))
}

fn from_json<T: DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s)
        .map_err(|e| StoreError::Internal(format!("unreadable stored JSON: {e}")))
}

/// `$1, $2, …, $n`.
fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `b = $2, c = $3, …` for every column but the first (the id, bound as `$1`).
fn set_list(cols: &str) -> String {
    cols.split(',')
        .map(str::trim)
        .enumerate()
        .skip(1)
        .map(|(i, c)| format!("{c} = ${}", i + 1))
        .collect::<Vec<_>>()
        .join(", ")
}

fn size_of(page: &PageRequest) -> Result<u32> {
    Ok(page::page_size(page.size)?)
}

fn id_cursor(page: &PageRequest) -> Result<Option<&str>> {
    match &page.after {
        None => Ok(None),
        Some(Cursor::Id(id)) => Ok(Some(id)),
        Some(Cursor::TimeId(..)) => Err(poolgate_core::Error::PageToken.into()),
    }
}

fn time_cursor(page: &PageRequest) -> Result<Option<(i64, &str)>> {
    match &page.after {
        None => Ok(None),
        Some(Cursor::TimeId(t, id)) => Ok(Some((*t, id))),
        Some(Cursor::Id(_)) => Err(poolgate_core::Error::PageToken.into()),
    }
}

/// Cuts a `size + 1` result down to a page, with a token when more follow.
fn paginate<T>(
    mut items: Vec<T>,
    size: u32,
    listing: &str,
    cursor: impl Fn(&T) -> Cursor,
) -> Page<T> {
    let size = size as usize;
    let next = if items.len() > size {
        items.truncate(size);
        items
            .last()
            .map(|last| page::encode(listing, &cursor(last)))
    } else {
        None
    };
    Page { items, next }
}

async fn exists<T: Tx>(tx: &T, sql: &str, params: &[Val]) -> Result<bool> {
    Ok(!tx.query(sql, params).await?.is_empty())
}

/// Refuses a key or admin token whose id or hash is already stored. `table` is one of the
/// two fixed table names, never input.
async fn ensure_new_secret_row<T: Tx>(
    tx: &T,
    table: &'static str,
    kind: &'static str,
    id: &str,
    hash: &str,
) -> Result<()> {
    if exists(
        tx,
        &format!("SELECT 1 FROM {table} WHERE id = $1"),
        &[id.into()],
    )
    .await?
    {
        return Err(StoreError::AlreadyExists {
            kind,
            what: id.to_string(),
        });
    }
    if exists(
        tx,
        &format!("SELECT 1 FROM {table} WHERE hash = $1"),
        &[hash.into()],
    )
    .await?
    {
        return Err(StoreError::AlreadyExists {
            kind,
            what: "with the same hash".into(),
        });
    }
    Ok(())
}

fn first_row(rows: Vec<Row>) -> Result<Row> {
    rows.into_iter()
        .next()
        .ok_or_else(|| StoreError::Internal("query returned no row".into()))
}

/// Ids the caller may choose (keys, admin tokens): short and URL-safe.
fn check_id(field: &'static str, id: &str) -> Result<()> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(invalid(
            field,
            "must be 1 to 64 letters, digits, '_', '-' or '.'",
        ));
    }
    Ok(())
}

fn check_hash(hash: &str) -> Result<()> {
    if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(invalid(
            "hash",
            "must be a lowercase hex SHA-256 (64 characters)",
        ));
    }
    Ok(())
}

fn check_display(field: &'static str, v: &str, max: usize) -> Result<()> {
    let n = v.chars().count();
    if n == 0 || n > max || v.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("must be 1 to {max} characters without control characters"),
        ));
    }
    Ok(())
}

fn check_identity(i: &CodexIdentity) -> Result<()> {
    for (field, v) in [
        ("identity.subject", &i.subject),
        ("identity.chatgpt_account_id", &i.chatgpt_account_id),
    ] {
        if v.trim().is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
            return Err(invalid(
                field,
                "must be 1 to 256 bytes without control characters",
            ));
        }
    }
    for (field, v) in [
        ("identity.chatgpt_user_id", &i.chatgpt_user_id),
        ("identity.email", &i.email),
        ("identity.plan_type", &i.plan_type),
    ] {
        if v.as_ref()
            .is_some_and(|v| v.len() > 256 || v.chars().any(char::is_control))
        {
            return Err(invalid(
                field,
                "at most 256 bytes without control characters",
            ));
        }
    }
    Ok(())
}

/// Text the domain validation lets through but a database cannot store (PostgreSQL refuses
/// NUL in text).
fn check_no_nul(field: &'static str, v: Option<&str>) -> Result<()> {
    if v.is_some_and(|v| v.contains('\0')) {
        return Err(invalid(field, "must not contain NUL characters"));
    }
    Ok(())
}

fn check_storable_spec(spec: &AccountSpec) -> Result<()> {
    check_no_nul("note", Some(&spec.note))
}

fn check_storable_key(spec: &KeySpec) -> Result<()> {
    check_no_nul("model_override", spec.model_override.as_deref())
}

// --- audit and change log --------------------------------------------------------------------

async fn audit<T: Tx>(
    tx: &T,
    actor: &str,
    action: &str,
    target_kind: &str,
    target_id: &str,
    detail: &str,
) -> Result<()> {
    tx.exec(
        "INSERT INTO audit_events (ts_ms, actor, action, target_kind, target_id, detail) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            now_ms().into(),
            // The actor names a token or controller; keep a stray NUL from failing the write.
            log_text(actor),
            action.into(),
            target_kind.into(),
            log_text(target_id),
            log_text(detail),
        ],
    )
    .await?;
    Ok(())
}

/// Appends a change-log entry. Called last in a transaction: on PostgreSQL it takes the lock
/// that orders versions, held until commit.
async fn record_change<T: Tx>(tx: &T, kind: ResourceKind, id: &str, deleted: bool) -> Result<i64> {
    tx.lock_change_log().await?;
    let row = first_row(
        tx.query(
            "INSERT INTO changes (kind, resource_id, deleted, ts_ms) VALUES ($1, $2, $3, $4) \
             RETURNING version",
            &[
                kind.as_str().into(),
                id.into(),
                deleted.into(),
                now_ms().into(),
            ],
        )
        .await?,
    )?;
    let version = row.i64(0)?;
    tx.changed(version).await?;
    Ok(version)
}

pub(crate) async fn list_audit<T: Tx>(tx: &T, page: &PageRequest) -> Result<Page<AuditEvent>> {
    let size = size_of(page)?;
    let mut w = Where::default();
    if let Some((ts, id)) = time_cursor(page)? {
        let id: i64 = id.parse().map_err(|_| poolgate_core::Error::PageToken)?;
        w.add("(ts_ms, id) < (?, ?)", vec![ts.into(), id.into()]);
    }
    let sql = format!(
        "SELECT id, ts_ms, actor, action, target_kind, target_id, detail FROM audit_events{} \
         ORDER BY ts_ms DESC, id DESC LIMIT ${}",
        w.clause(),
        w.next_param()
    );
    let mut params = w.params;
    params.push(i64::from(size + 1).into());
    let items = tx
        .query(&sql, &params)
        .await?
        .iter()
        .map(|r| {
            Ok(AuditEvent {
                id: r.i64(0)?,
                ts_ms: r.i64(1)?,
                actor: r.text(2)?,
                action: r.text(3)?,
                target_kind: r.text(4)?,
                target_id: r.text(5)?,
                detail: r.text(6)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(paginate(items, size, listing::AUDIT, |e| {
        Cursor::TimeId(e.ts_ms, e.id.to_string())
    }))
}

pub(crate) async fn current_version<T: Tx>(tx: &T) -> Result<i64> {
    first_row(
        tx.query("SELECT COALESCE(MAX(version), 0) FROM changes", &[])
            .await?,
    )?
    .i64(0)
}

pub(crate) async fn changes_since<T: Tx>(tx: &T, after: i64, limit: u32) -> Result<Vec<Change>> {
    let limit = limit.min(10_000);
    if limit == 0 {
        return Ok(Vec::new());
    }
    tx.query(
        "SELECT version, kind, resource_id, deleted FROM changes WHERE version > $1 \
         ORDER BY version LIMIT $2",
        &[after.into(), limit.into()],
    )
    .await?
    .iter()
    .map(|r| {
        let kind = match r.text(1)?.as_str() {
            "account" => ResourceKind::Account,
            "key" => ResourceKind::Key,
            "policy" => ResourceKind::Policy,
            other => {
                return Err(StoreError::Internal(format!(
                    "unknown change kind {other:?}"
                )));
            }
        };
        Ok(Change {
            version: r.i64(0)?,
            kind,
            id: r.text(2)?,
            deleted: r.bool(3)?,
        })
    })
    .collect()
}

// --- accounts --------------------------------------------------------------------------------

const ACCOUNT_WRITE_COLS: &str = "id, provider, name, group_name, tags, priority, note, enabled, \
    max_inflight, proxy_url, model_filter, base_url, azure_deployment, azure_api_version, \
    identity_key, identity_subject, identity_chatgpt_account_id, identity_chatgpt_user_id, \
    identity_email, identity_plan_type, managed_by, managed_ref, status, status_reason, \
    created_at_ms, updated_at_ms";

const ACCOUNT_READ_COLS: &str = "a.id, a.provider, a.name, a.group_name, a.tags, a.priority, \
    a.note, a.enabled, a.max_inflight, a.proxy_url, a.model_filter, a.base_url, \
    a.azure_deployment, a.azure_api_version, a.identity_subject, a.identity_chatgpt_account_id, \
    a.identity_chatgpt_user_id, a.identity_email, a.identity_plan_type, a.managed_by, \
    a.managed_ref, a.status, a.status_reason, a.created_at_ms, a.updated_at_ms, \
    EXISTS (SELECT 1 FROM credentials c WHERE c.account_id = a.id)";

static INSERT_ACCOUNT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO accounts ({ACCOUNT_WRITE_COLS}) VALUES ({})",
        placeholders(ACCOUNT_WRITE_COLS.split(',').count())
    )
});
static UPDATE_ACCOUNT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE accounts SET {} WHERE id = $1",
        set_list(ACCOUNT_WRITE_COLS)
    )
});

fn account_params(a: &Account) -> Result<Vec<Val>> {
    let s = &a.spec;
    let id = a.identity.as_ref();
    Ok(vec![
        a.id.as_str().into(),
        s.provider.as_str().into(),
        s.name.as_str().into(),
        s.group.as_str().into(),
        to_json(&s.tags)?.into(),
        s.priority.into(),
        s.note.as_str().into(),
        s.enabled.into(),
        s.max_inflight.into(),
        s.proxy_url.clone().into(),
        to_json(&s.model_filter)?.into(),
        s.base_url.clone().into(),
        s.azure.as_ref().map(|z| z.deployment.clone()).into(),
        s.azure.as_ref().map(|z| z.api_version.clone()).into(),
        id.map(CodexIdentity::key).into(),
        id.map(|i| i.subject.clone()).into(),
        id.map(|i| i.chatgpt_account_id.clone()).into(),
        id.and_then(|i| i.chatgpt_user_id.clone()).into(),
        id.and_then(|i| i.email.clone()).into(),
        id.and_then(|i| i.plan_type.clone()).into(),
        a.managed_by.as_str().into(),
        a.managed_ref.clone().into(),
        a.status.as_str().into(),
        a.status_reason.map(|r| r.as_str()).into(),
        a.created_at_ms.into(),
        a.updated_at_ms.into(),
    ])
}

fn account_from_row(r: &Row) -> Result<Account> {
    let azure = match (r.opt_text(12)?, r.opt_text(13)?) {
        (Some(deployment), Some(api_version)) => Some(AzureConfig {
            deployment,
            api_version,
        }),
        _ => None,
    };
    let identity = match (r.opt_text(14)?, r.opt_text(15)?) {
        (Some(subject), Some(chatgpt_account_id)) => Some(CodexIdentity {
            subject,
            chatgpt_account_id,
            chatgpt_user_id: r.opt_text(16)?,
            email: r.opt_text(17)?,
            plan_type: r.opt_text(18)?,
        }),
        _ => None,
    };
    let priority = r.i64(5)?;
    Ok(Account {
        id: r.text(0)?,
        spec: AccountSpec {
            provider: parse_col(&r.text(1)?)?,
            name: r.text(2)?,
            group: r.text(3)?,
            tags: from_json(&r.text(4)?)?,
            priority: i32::try_from(priority).map_err(|_| {
                StoreError::Internal(format!("stored priority {priority} out of range"))
            })?,
            note: r.text(6)?,
            enabled: r.bool(7)?,
            max_inflight: r.u32(8)?,
            proxy_url: r.opt_text(9)?,
            model_filter: from_json(&r.text(10)?)?,
            base_url: r.opt_text(11)?,
            azure,
        },
        identity,
        managed_by: parse_col(&r.text(19)?)?,
        managed_ref: r.opt_text(20)?,
        status: parse_col(&r.text(21)?)?,
        status_reason: opt_col(r.opt_text(22)?)?,
        created_at_ms: r.i64(23)?,
        updated_at_ms: r.i64(24)?,
        has_credentials: r.bool(25)?,
    })
}

async fn find_account<T: Tx>(tx: &T, id: &str) -> Result<Option<Account>> {
    let sql = format!("SELECT {ACCOUNT_READ_COLS} FROM accounts a WHERE a.id = $1");
    tx.query(&sql, &[id.into()])
        .await?
        .first()
        .map(account_from_row)
        .transpose()
}

fn account_not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        kind: "account",
        id: id.to_string(),
    }
}

pub(crate) async fn get_account<T: Tx>(tx: &T, id: &str) -> Result<Account> {
    find_account(tx, id)
        .await?
        .ok_or_else(|| account_not_found(id))
}

async fn account_with_identity<T: Tx>(tx: &T, identity: &CodexIdentity) -> Result<Option<String>> {
    tx.query(
        "SELECT id FROM accounts WHERE identity_key = $1",
        &[identity.key().into()],
    )
    .await?
    .first()
    .map(|r| r.text(0))
    .transpose()
}

async fn put_credentials<T: Tx>(
    tx: &T,
    cipher: &Cipher,
    id: &str,
    creds: &Credentials,
) -> Result<()> {
    let plain = serde_json::to_vec(creds)
        .map_err(|e| StoreError::Internal(format!("cannot encode credentials: {e}")))?;
    let sealed = cipher.seal(id, &plain)?;
    let (expires, refreshable) = match creds {
        Credentials::OAuth(t) => (t.access_expires_at_ms(), !t.refresh_token.is_empty()),
        Credentials::ApiKey { .. } => (None, false),
    };
    // New credentials end any refresh claim and pause: a refresher still holding a claim on
    // the old tokens finds it gone and discards what it got (compare-and-set).
    tx.exec(
        "INSERT INTO credentials (account_id, kind, sealed, updated_at_ms, access_expires_at_ms, \
         refreshable, refresh_lease, refresh_lease_until_ms, refresh_not_before_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, NULL) \
         ON CONFLICT (account_id) DO UPDATE SET kind = excluded.kind, sealed = excluded.sealed, \
         updated_at_ms = excluded.updated_at_ms, \
         access_expires_at_ms = excluded.access_expires_at_ms, \
         refreshable = excluded.refreshable, refresh_lease = NULL, \
         refresh_lease_until_ms = NULL, refresh_not_before_ms = NULL",
        &[
            id.into(),
            creds.kind().into(),
            sealed.into(),
            now_ms().into(),
            expires.into(),
            refreshable.into(),
        ],
    )
    .await?;
    // A login found dead (auth_invalid) is alive again with new credentials.
    tx.exec(
        "UPDATE accounts SET status = $2, status_reason = NULL WHERE id = $1 AND status = $3 \
         AND status_reason = $4",
        &[
            id.into(),
            AccountStatus::Active.as_str().into(),
            AccountStatus::Unavailable.as_str().into(),
            StatusReason::AuthInvalid.as_str().into(),
        ],
    )
    .await?;
    // New credentials answer a pending refresh request and lift the cooldown the refused
    // ones started.
    tx.exec(
        "UPDATE accounts SET needs_refresh = $2 WHERE id = $1 AND needs_refresh = $3",
        &[id.into(), false.into(), true.into()],
    )
    .await?;
    tx.exec(
        "UPDATE accounts SET cooldown_until_ms = NULL, cooldown_reason = NULL \
         WHERE id = $1 AND cooldown_reason = $2",
        &[id.into(), "auth_failed".into()],
    )
    .await?;
    Ok(())
}

/// Validates a new account against its provider's needs (see `Store::create_account`).
fn check_new_account(
    spec: AccountSpec,
    credentials: Option<&Credentials>,
    identity: Option<&CodexIdentity>,
) -> Result<AccountSpec> {
    let spec = spec.validate()?;
    check_storable_spec(&spec)?;
    let provider = spec.provider;
    match credentials {
        Some(c) => c.check_for(provider)?,
        None if provider.uses_oauth() => {
            return Err(invalid(
                "credentials",
                "codex accounts need OAuth tokens (import an auth.json or use `poolctl login`)",
            ));
        }
        None => {
            return Err(invalid(
                "credentials",
                format!("{provider} accounts need an API key"),
            ));
        }
    }
    match identity {
        Some(i) if provider == Provider::Codex => check_identity(i)?,
        Some(_) => {
            return Err(invalid(
                "identity",
                "only codex accounts have a login identity",
            ));
        }
        None if provider == Provider::Codex => {
            return Err(invalid(
                "identity",
                "codex accounts need their login identity (subject and chatgpt_account_id)",
            ));
        }
        None => {}
    }
    Ok(spec)
}

pub(crate) async fn create_account<T: Tx>(
    tx: &T,
    cipher: &Cipher,
    spec: AccountSpec,
    credentials: Option<Credentials>,
    identity: Option<CodexIdentity>,
    actor: &str,
    action: &str,
) -> Result<Account> {
    let spec = check_new_account(spec, credentials.as_ref(), identity.as_ref())?;
    if let Some(i) = &identity
        && let Some(existing) = account_with_identity(tx, i).await?
    {
        return Err(StoreError::AlreadyExists {
            kind: "account",
            what: format!("{existing} with the same Codex login (subject and chatgpt_account_id)"),
        });
    }
    let now = now_ms();
    let account = Account {
        id: new_id("acc")?,
        spec,
        status: AccountStatus::Active,
        status_reason: None,
        identity,
        managed_by: ManagedBy::Api,
        managed_ref: None,
        has_credentials: credentials.is_some(),
        created_at_ms: now,
        updated_at_ms: now,
    };
    tx.exec(&INSERT_ACCOUNT, &account_params(&account)?).await?;
    if let Some(c) = &credentials {
        put_credentials(tx, cipher, &account.id, c).await?;
    }
    let detail = format!(
        "provider={} name={:?} group={}{}",
        account.spec.provider,
        account.spec.name,
        account.spec.group,
        credentials
            .as_ref()
            .map(|c| format!(" credentials={}", c.kind()))
            .unwrap_or_default()
    );
    audit(tx, actor, action, "account", &account.id, &detail).await?;
    record_change(tx, ResourceKind::Account, &account.id, false).await?;
    Ok(account)
}

pub(crate) async fn list_accounts<T: Tx>(
    tx: &T,
    filter: &AccountFilter,
    page: &PageRequest,
) -> Result<Page<Account>> {
    let size = size_of(page)?;
    let mut w = Where::default();
    if let Some(g) = &filter.group {
        w.add("a.group_name = ?", vec![g.into()]);
    }
    if let Some(p) = filter.provider {
        w.add("a.provider = ?", vec![p.as_str().into()]);
    }
    if let Some(s) = filter.status {
        w.add("a.status = ?", vec![s.as_str().into()]);
    }
    if let Some(after) = id_cursor(page)? {
        w.add("a.id > ?", vec![after.into()]);
    }
    let sql = format!(
        "SELECT {ACCOUNT_READ_COLS} FROM accounts a{} ORDER BY a.id LIMIT ${}",
        w.clause(),
        w.next_param()
    );
    let mut params = w.params;
    params.push(i64::from(size + 1).into());
    let items = tx
        .query(&sql, &params)
        .await?
        .iter()
        .map(account_from_row)
        .collect::<Result<Vec<_>>>()?;
    Ok(paginate(items, size, listing::ACCOUNTS, |a| {
        Cursor::Id(a.id.clone())
    }))
}

/// Names of the fields that differ, for audit details.
fn changed_account_fields(a: &Account, b: &Account) -> Vec<&'static str> {
    let (x, y) = (&a.spec, &b.spec);
    let mut out = Vec::new();
    let mut check = |changed: bool, name: &'static str| {
        if changed {
            out.push(name);
        }
    };
    check(x.name != y.name, "name");
    check(x.group != y.group, "group");
    check(x.tags != y.tags, "tags");
    check(x.priority != y.priority, "priority");
    check(x.note != y.note, "note");
    check(x.enabled != y.enabled, "enabled");
    check(x.max_inflight != y.max_inflight, "max_inflight");
    check(x.proxy_url != y.proxy_url, "proxy_url");
    check(x.model_filter != y.model_filter, "model_filter");
    check(x.base_url != y.base_url, "base_url");
    check(x.azure != y.azure, "azure");
    check(a.status != b.status, "status");
    check(a.status_reason != b.status_reason, "status_reason");
    out
}

pub(crate) async fn update_account<T: Tx>(
    tx: &T,
    id: &str,
    patch: &AccountPatch,
    actor: &str,
) -> Result<Account> {
    let current = get_account(tx, id).await?;
    let mut next = patch.apply(&current)?;
    check_storable_spec(&next.spec)?;
    let changed = changed_account_fields(&current, &next);
    if changed.is_empty() {
        return Ok(current);
    }
    next.updated_at_ms = now_ms().max(current.updated_at_ms);
    tx.exec(&UPDATE_ACCOUNT, &account_params(&next)?).await?;
    audit(
        tx,
        actor,
        "account.update",
        "account",
        id,
        &format!("changed: {}", changed.join(", ")),
    )
    .await?;
    record_change(tx, ResourceKind::Account, id, false).await?;
    Ok(next)
}

pub(crate) async fn delete_account<T: Tx>(tx: &T, id: &str, actor: &str) -> Result<()> {
    let current = get_account(tx, id).await?;
    // Credentials and usage go with it (ON DELETE CASCADE).
    tx.exec("DELETE FROM accounts WHERE id = $1", &[id.into()])
        .await?;
    let detail = format!(
        "provider={} name={:?}",
        current.spec.provider, current.spec.name
    );
    audit(tx, actor, "account.delete", "account", id, &detail).await?;
    record_change(tx, ResourceKind::Account, id, true).await?;
    Ok(())
}

pub(crate) async fn set_credentials<T: Tx>(
    tx: &T,
    cipher: &Cipher,
    id: &str,
    credentials: &Credentials,
    actor: &str,
) -> Result<()> {
    let current = get_account(tx, id).await?;
    credentials.check_for(current.spec.provider)?;
    put_credentials(tx, cipher, id, credentials).await?;
    tx.exec(
        "UPDATE accounts SET updated_at_ms = $2 WHERE id = $1",
        &[id.into(), now_ms().into()],
    )
    .await?;
    let detail = format!("credentials replaced (kind={})", credentials.kind());
    audit(tx, actor, "account.credentials", "account", id, &detail).await?;
    record_change(tx, ResourceKind::Account, id, false).await?;
    Ok(())
}

pub(crate) async fn get_credentials<T: Tx>(
    tx: &T,
    cipher: &Cipher,
    id: &str,
) -> Result<Option<Credentials>> {
    let rows = tx
        .query(
            "SELECT c.sealed FROM accounts a LEFT JOIN credentials c ON c.account_id = a.id \
             WHERE a.id = $1",
            &[id.into()],
        )
        .await?;
    let row = rows.first().ok_or_else(|| account_not_found(id))?;
    if row.0.first() == Some(&Val::Null) {
        return Ok(None);
    }
    open_credentials(cipher, id, &row.bytes(0)?).map(Some)
}

/// One auth.json item (see `Store::import_codex`): updates the login's account, or creates one.
pub(crate) async fn import_one<T: Tx>(
    tx: &T,
    cipher: &Cipher,
    item: ImportedCodexAuth,
    group: &str,
    actor: &str,
) -> Result<ImportOutcome> {
    check_identity(&item.identity)?;
    let creds = Credentials::OAuth(item.tokens);
    creds.check_for(Provider::Codex)?;
    if let Some(id) = account_with_identity(tx, &item.identity).await? {
        let mut account = get_account(tx, &id).await?;
        if account.managed_by == ManagedBy::Kubernetes {
            let owner = account
                .managed_ref
                .as_deref()
                .unwrap_or("a Kubernetes resource");
            return Ok(ImportOutcome::Failed(format!(
                "account {id} is managed by Kubernetes ({owner}); update the credentials Secret \
                 of that resource instead"
            )));
        }
        account.identity = Some(item.identity);
        account.status = AccountStatus::Active;
        account.status_reason = None;
        account.has_credentials = true;
        account.updated_at_ms = now_ms().max(account.updated_at_ms);
        tx.exec(&UPDATE_ACCOUNT, &account_params(&account)?).await?;
        put_credentials(tx, cipher, &id, &creds).await?;
        audit(
            tx,
            actor,
            "account.import",
            "account",
            &id,
            "updated tokens and identity of an existing login; status active",
        )
        .await?;
        record_change(tx, ResourceKind::Account, &id, false).await?;
        return Ok(ImportOutcome::Updated(account));
    }
    // E-mails may be longer than an account name; keep the part that fits.
    let mut spec = AccountSpec::new(
        Provider::Codex,
        item.label.chars().take(128).collect::<String>(),
    );
    spec.group = group.to_string();
    let account = create_account(
        tx,
        cipher,
        spec,
        Some(creds),
        Some(item.identity),
        actor,
        "account.import",
    )
    .await?;
    Ok(ImportOutcome::Created(account))
}

/// See `Store::create_managed_account`: the account and its owner in one transaction, so a
/// crash never leaves an API-managed copy of a resource's account behind.
pub(crate) async fn create_managed_account<T: Tx>(
    tx: &T,
    cipher: &Cipher,
    spec: AccountSpec,
    credentials: Option<Credentials>,
    identity: Option<CodexIdentity>,
    managed_ref: &str,
    actor: &str,
) -> Result<Account> {
    let account = create_account(
        tx,
        cipher,
        spec,
        credentials,
        identity,
        actor,
        "account.create",
    )
    .await?;
    set_account_managed_by(
        tx,
        &account.id,
        ManagedBy::Kubernetes,
        Some(managed_ref),
        actor,
    )
    .await
}

/// See `Store::find_managed_account`.
pub(crate) async fn find_managed_account<T: Tx>(
    tx: &T,
    managed_ref: &str,
) -> Result<Option<Account>> {
    let sql = format!(
        "SELECT {ACCOUNT_READ_COLS} FROM accounts a WHERE a.managed_by = $1 \
         AND a.managed_ref = $2 ORDER BY a.id LIMIT 1"
    );
    tx.query(
        &sql,
        &[ManagedBy::Kubernetes.as_str().into(), managed_ref.into()],
    )
    .await?
    .first()
    .map(account_from_row)
    .transpose()
}

/// See `Store::set_account_managed_by`.
pub(crate) async fn set_account_managed_by<T: Tx>(
    tx: &T,
    id: &str,
    managed_by: ManagedBy,
    managed_ref: Option<&str>,
    actor: &str,
) -> Result<Account> {
    let managed_ref = managed_ref.map(str::trim).filter(|r| !r.is_empty());
    match (managed_by, managed_ref) {
        (ManagedBy::Kubernetes, None) => {
            return Err(invalid(
                "managed_ref",
                "Kubernetes-managed accounts name their resource, e.g. \"UpstreamAccount ns/name\"",
            ));
        }
        (ManagedBy::Api, Some(_)) => {
            return Err(invalid(
                "managed_ref",
                "only Kubernetes-managed accounts have one",
            ));
        }
        (_, Some(r)) if r.len() > 512 || r.chars().any(char::is_control) => {
            return Err(invalid(
                "managed_ref",
                "at most 512 characters, no control characters",
            ));
        }
        _ => {}
    }
    let mut account = get_account(tx, id).await?;
    account.managed_by = managed_by;
    account.managed_ref = managed_ref.map(str::to_string);
    account.updated_at_ms = now_ms().max(account.updated_at_ms);
    tx.exec(&UPDATE_ACCOUNT, &account_params(&account)?).await?;
    let detail = match managed_ref {
        Some(r) => format!("managed_by={managed_by} managed_ref={r:?}"),
        None => format!("managed_by={managed_by}"),
    };
    audit(tx, actor, "account.managed_by", "account", id, &detail).await?;
    record_change(tx, ResourceKind::Account, id, false).await?;
    Ok(account)
}

// --- usage -----------------------------------------------------------------------------------

pub(crate) async fn set_usage<T: Tx>(
    tx: &T,
    account_id: &str,
    usage: &UsageSnapshot,
) -> Result<()> {
    get_account(tx, account_id).await?;
    tx.exec(
        "INSERT INTO usage (account_id, snapshot, updated_at_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (account_id) DO UPDATE SET snapshot = excluded.snapshot, \
         updated_at_ms = excluded.updated_at_ms",
        &[account_id.into(), to_json(usage)?.into(), now_ms().into()],
    )
    .await?;
    // A reading with room left ends what an exhausted window started: the quota cooldown
    // and a quota_exhausted status, so the account comes back as soon as its quota does
    // instead of waiting out a stale cooldown.
    if usage.primary.is_some() && usage.availability() != Availability::Unavailable {
        tx.exec(
            "UPDATE accounts SET cooldown_until_ms = NULL, cooldown_reason = NULL \
             WHERE id = $1 AND cooldown_reason = $2",
            &[account_id.into(), "quota_exhausted".into()],
        )
        .await?;
        let n = tx
            .exec(
                "UPDATE accounts SET status = $2, status_reason = NULL, updated_at_ms = $5 \
                 WHERE id = $1 AND status = $3 AND status_reason = $4",
                &[
                    account_id.into(),
                    AccountStatus::Active.as_str().into(),
                    AccountStatus::Unavailable.as_str().into(),
                    StatusReason::QuotaExhausted.as_str().into(),
                    now_ms().into(),
                ],
            )
            .await?;
        if n > 0 {
            audit(
                tx,
                "usage",
                "account.usage",
                "account",
                account_id,
                "status active: the usage endpoint shows quota left",
            )
            .await?;
        }
    }
    record_change(tx, ResourceKind::Account, account_id, false).await?;
    Ok(())
}

pub(crate) async fn get_usage<T: Tx>(
    tx: &T,
    account_ids: &[String],
) -> Result<Vec<(String, UsageSnapshot)>> {
    const CHUNK: usize = 100;
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT account_id, snapshot FROM usage WHERE account_id IN ({}) ORDER BY account_id",
            placeholders(CHUNK)
        )
    });
    let mut out = Vec::new();
    // One statement shape whatever the number of ids (short chunks repeat their ids), so
    // the per-connection statement caches stay small.
    for chunk in account_ids.chunks(CHUNK) {
        let params: Vec<Val> = chunk.iter().cycle().take(CHUNK).map(Val::from).collect();
        for r in tx.query(&SQL, &params).await? {
            out.push((r.text(0)?, from_json(&r.text(1)?)?));
        }
    }
    Ok(out)
}

// --- platform keys ---------------------------------------------------------------------------

const KEY_COLS: &str = "id, name, prefix, hash, status, expires_at_ms, allowed_models, \
    model_override, reasoning_effort, account_groups, managed_by, managed_ref, created_at_ms, \
    updated_at_ms";

static INSERT_KEY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO platform_keys ({KEY_COLS}) VALUES ({})",
        placeholders(KEY_COLS.split(',').count())
    )
});
static UPDATE_KEY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE platform_keys SET {} WHERE id = $1",
        set_list(KEY_COLS)
    )
});

fn key_params(k: &PlatformKey) -> Result<Vec<Val>> {
    let s = &k.spec;
    Ok(vec![
        k.id.as_str().into(),
        s.name.as_str().into(),
        k.prefix.as_str().into(),
        k.hash.as_str().into(),
        k.status.as_str().into(),
        s.expires_at_ms.into(),
        to_json(&s.allowed_models)?.into(),
        s.model_override.clone().into(),
        s.reasoning_effort.map(|e| e.as_str()).into(),
        to_json(&s.account_groups)?.into(),
        k.managed_by.as_str().into(),
        k.managed_ref.clone().into(),
        k.created_at_ms.into(),
        k.updated_at_ms.into(),
    ])
}

fn key_from_row(r: &Row) -> Result<PlatformKey> {
    Ok(PlatformKey {
        id: r.text(0)?,
        spec: KeySpec {
            name: r.text(1)?,
            expires_at_ms: r.opt_i64(5)?,
            allowed_models: from_json(&r.text(6)?)?,
            model_override: r.opt_text(7)?,
            reasoning_effort: opt_col(r.opt_text(8)?)?,
            account_groups: from_json(&r.text(9)?)?,
        },
        prefix: r.text(2)?,
        hash: r.text(3)?,
        status: parse_col(&r.text(4)?)?,
        managed_by: parse_col(&r.text(10)?)?,
        managed_ref: r.opt_text(11)?,
        created_at_ms: r.i64(12)?,
        updated_at_ms: r.i64(13)?,
    })
}

fn key_not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        kind: "key",
        id: id.to_string(),
    }
}

pub(crate) async fn get_key<T: Tx>(tx: &T, id: &str) -> Result<PlatformKey> {
    let sql = format!("SELECT {KEY_COLS} FROM platform_keys WHERE id = $1");
    tx.query(&sql, &[id.into()])
        .await?
        .first()
        .map(key_from_row)
        .transpose()?
        .ok_or_else(|| key_not_found(id))
}

pub(crate) async fn create_key<T: Tx>(
    tx: &T,
    mut key: PlatformKey,
    actor: &str,
) -> Result<PlatformKey> {
    key.spec = key.spec.validate()?;
    check_storable_key(&key.spec)?;
    if key.id.is_empty() {
        key.id = new_id("key")?;
    }
    check_id("id", &key.id)?;
    check_hash(&key.hash)?;
    check_display("prefix", &key.prefix, 64)?;
    ensure_new_secret_row(tx, "platform_keys", "key", &key.id, &key.hash).await?;
    let now = now_ms();
    key.created_at_ms = now;
    key.updated_at_ms = now;
    tx.exec(&INSERT_KEY, &key_params(&key)?).await?;
    let detail = format!(
        "name={:?} prefix={} status={}",
        key.spec.name, key.prefix, key.status
    );
    audit(tx, actor, "key.create", "key", &key.id, &detail).await?;
    record_change(tx, ResourceKind::Key, &key.id, false).await?;
    Ok(key)
}

pub(crate) async fn list_keys<T: Tx>(tx: &T, page: &PageRequest) -> Result<Page<PlatformKey>> {
    let size = size_of(page)?;
    let mut w = Where::default();
    if let Some(after) = id_cursor(page)? {
        w.add("id > ?", vec![after.into()]);
    }
    let sql = format!(
        "SELECT {KEY_COLS} FROM platform_keys{} ORDER BY id LIMIT ${}",
        w.clause(),
        w.next_param()
    );
    let mut params = w.params;
    params.push(i64::from(size + 1).into());
    let items = tx
        .query(&sql, &params)
        .await?
        .iter()
        .map(key_from_row)
        .collect::<Result<Vec<_>>>()?;
    Ok(paginate(items, size, listing::KEYS, |k| {
        Cursor::Id(k.id.clone())
    }))
}

fn changed_key_fields(a: &PlatformKey, b: &PlatformKey) -> Vec<&'static str> {
    let (x, y) = (&a.spec, &b.spec);
    [
        (x.name != y.name, "name"),
        (x.expires_at_ms != y.expires_at_ms, "expires_at"),
        (x.allowed_models != y.allowed_models, "allowed_models"),
        (x.model_override != y.model_override, "model_override"),
        (x.reasoning_effort != y.reasoning_effort, "reasoning_effort"),
        (x.account_groups != y.account_groups, "account_groups"),
        (a.status != b.status, "status"),
    ]
    .into_iter()
    .filter_map(|(changed, name)| changed.then_some(name))
    .collect()
}

pub(crate) async fn update_key<T: Tx>(
    tx: &T,
    id: &str,
    patch: &KeyPatch,
    actor: &str,
) -> Result<PlatformKey> {
    let current = get_key(tx, id).await?;
    let mut next = patch.apply(&current)?;
    check_storable_key(&next.spec)?;
    let changed = changed_key_fields(&current, &next);
    if changed.is_empty() {
        return Ok(current);
    }
    next.updated_at_ms = now_ms().max(current.updated_at_ms);
    tx.exec(&UPDATE_KEY, &key_params(&next)?).await?;
    let mut detail = format!("changed: {}", changed.join(", "));
    if current.status != next.status {
        detail.push_str(&format!(" (status {})", next.status));
    }
    audit(tx, actor, "key.update", "key", id, &detail).await?;
    record_change(tx, ResourceKind::Key, id, false).await?;
    Ok(next)
}

/// See `Store::find_managed_key`.
pub(crate) async fn find_managed_key<T: Tx>(
    tx: &T,
    managed_ref: &str,
) -> Result<Option<PlatformKey>> {
    let sql = format!(
        "SELECT {KEY_COLS} FROM platform_keys WHERE managed_by = $1 AND managed_ref = $2 \
         ORDER BY id LIMIT 1"
    );
    tx.query(
        &sql,
        &[ManagedBy::Kubernetes.as_str().into(), managed_ref.into()],
    )
    .await?
    .first()
    .map(key_from_row)
    .transpose()
}

pub(crate) async fn delete_key<T: Tx>(tx: &T, id: &str, actor: &str) -> Result<()> {
    let current = get_key(tx, id).await?;
    tx.exec("DELETE FROM platform_keys WHERE id = $1", &[id.into()])
        .await?;
    let detail = format!("name={:?} prefix={}", current.spec.name, current.prefix);
    audit(tx, actor, "key.delete", "key", id, &detail).await?;
    record_change(tx, ResourceKind::Key, id, true).await?;
    Ok(())
}

// --- admin tokens ----------------------------------------------------------------------------

const TOKEN_COLS: &str = "id, name, role, prefix, hash, created_at_ms";

fn token_from_row(r: &Row) -> Result<AdminToken> {
    Ok(AdminToken {
        id: r.text(0)?,
        name: r.text(1)?,
        role: parse_col(&r.text(2)?)?,
        prefix: r.text(3)?,
        hash: r.text(4)?,
        created_at_ms: r.i64(5)?,
    })
}

pub(crate) async fn create_admin_token<T: Tx>(
    tx: &T,
    mut token: AdminToken,
    actor: &str,
) -> Result<AdminToken> {
    token.name = token.name.trim().to_string();
    check_display("name", &token.name, 128)?;
    if token.id.is_empty() {
        token.id = new_id("adm")?;
    }
    check_id("id", &token.id)?;
    check_hash(&token.hash)?;
    check_display("prefix", &token.prefix, 64)?;
    ensure_new_secret_row(tx, "admin_tokens", "admin token", &token.id, &token.hash).await?;
    token.created_at_ms = now_ms();
    tx.exec(
        &format!("INSERT INTO admin_tokens ({TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6)"),
        &[
            token.id.as_str().into(),
            token.name.as_str().into(),
            token.role.as_str().into(),
            token.prefix.as_str().into(),
            token.hash.as_str().into(),
            token.created_at_ms.into(),
        ],
    )
    .await?;
    let detail = format!(
        "name={:?} role={} prefix={}",
        token.name, token.role, token.prefix
    );
    audit(
        tx,
        actor,
        "admin_token.create",
        "admin_token",
        &token.id,
        &detail,
    )
    .await?;
    Ok(token)
}

pub(crate) async fn list_admin_tokens<T: Tx>(tx: &T) -> Result<Vec<AdminToken>> {
    tx.query(
        &format!("SELECT {TOKEN_COLS} FROM admin_tokens ORDER BY id"),
        &[],
    )
    .await?
    .iter()
    .map(token_from_row)
    .collect()
}

pub(crate) async fn find_admin_token<T: Tx>(tx: &T, hash: &str) -> Result<Option<AdminToken>> {
    tx.query(
        &format!("SELECT {TOKEN_COLS} FROM admin_tokens WHERE hash = $1"),
        &[hash.into()],
    )
    .await?
    .first()
    .map(token_from_row)
    .transpose()
}

pub(crate) async fn delete_admin_token<T: Tx>(tx: &T, id: &str, actor: &str) -> Result<()> {
    let rows = tx
        .query(
            &format!("SELECT {TOKEN_COLS} FROM admin_tokens WHERE id = $1"),
            &[id.into()],
        )
        .await?;
    let token = rows
        .first()
        .map(token_from_row)
        .transpose()?
        .ok_or_else(|| StoreError::NotFound {
            kind: "admin token",
            id: id.to_string(),
        })?;
    tx.exec("DELETE FROM admin_tokens WHERE id = $1", &[id.into()])
        .await?;
    let detail = format!("name={:?} role={}", token.name, token.role);
    audit(tx, actor, "admin_token.delete", "admin_token", id, &detail).await?;
    Ok(())
}

// --- request logs ----------------------------------------------------------------------------

pub(crate) const LOG_COLS: &str = "id, ts_ms, key_id, account_id, method, path, model, protocol, \
    status, error_class, input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, \
    ttfb_ms, duration_ms, node, attempts, translation, upstream_model";

/// Longest text kept per request-log field.
const LOG_TEXT_MAX: usize = 2048;

/// Log records come from gateways and carry client-chosen text (paths, model names). A NUL
/// (which PostgreSQL text refuses) or an oversized value must not make a whole batch fail and
/// be re-sent forever, so such text is cleaned instead of rejected.
fn log_text(s: &str) -> Val {
    let mut out = String::new();
    push_log_text(&mut out, s);
    Val::Text(out)
}

/// Appends `s` cleaned as [`log_text`] cleans it.
fn push_log_text(out: &mut String, s: &str) {
    if s.len() <= LOG_TEXT_MAX && !s.contains('\0') {
        out.push_str(s);
        return;
    }
    out.extend(
        s.chars()
            .take(LOG_TEXT_MAX)
            .map(|c| if c == '\0' { '\u{FFFD}' } else { c }),
    );
}

/// A batch of request logs encoded for binding field by field: every text in one buffer,
/// so a row costs no allocation of its own (the SQLite store's ingest, the hot path of a
/// standalone under load). The one place a record's column values are made: the PostgreSQL
/// store's COPY rows ([`LogRows::to_vals`]) are read from it too.
pub(crate) struct LogRows {
    text: String,
    rows: Vec<LogRow>,
    /// Where each record's attempts are encoded before they join `text`.
    scratch: Vec<u8>,
}

type Span = std::ops::Range<usize>;

pub(crate) struct LogRow {
    id: Span,
    ts_ms: i64,
    key_id: Option<Span>,
    account_id: Option<Span>,
    method: Span,
    path: Span,
    model: Option<Span>,
    protocol: Span,
    status: i64,
    error_class: Option<&'static str>,
    tokens: [i64; 4],
    ttfb_ms: Option<i64>,
    duration_ms: i64,
    node: Span,
    attempts: Span,
    translation: &'static str,
    upstream_model: Option<Span>,
}

/// One bound value of a [`LogRow`].
pub(crate) enum LogVal<'a> {
    Null,
    Int(i64),
    Text(&'a str),
}

impl LogRows {
    pub(crate) fn encode(logs: &[RequestLog]) -> Result<LogRows> {
        let mut out = LogRows {
            text: String::with_capacity(logs.len() * 256),
            rows: Vec::with_capacity(logs.len()),
            scratch: Vec::new(),
        };
        for r in logs {
            let row = LogRow {
                id: out.push(&r.id),
                ts_ms: r.ts_ms,
                key_id: r.key_id.as_deref().map(|s| out.push(s)),
                account_id: r.account_id.as_deref().map(|s| out.push(s)),
                method: out.push(&r.method),
                path: out.push(&r.path),
                model: r.model.as_deref().map(|s| out.push(s)),
                protocol: out.push(&r.protocol),
                status: i64::from(r.status),
                error_class: r.error_class.map(|e| e.as_str()),
                tokens: [
                    r.input_tokens,
                    r.cached_input_tokens,
                    r.output_tokens,
                    r.reasoning_tokens,
                ]
                .map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
                ttfb_ms: r.ttfb_ms.map(i64::from),
                duration_ms: i64::from(r.duration_ms),
                node: out.push(&r.node),
                attempts: out.push_json(&r.attempts)?,
                translation: r.translation.as_str(),
                upstream_model: r.upstream_model.as_deref().map(|s| out.push(s)),
            };
            out.rows.push(row);
        }
        Ok(out)
    }

    fn push(&mut self, s: &str) -> Span {
        let start = self.text.len();
        push_log_text(&mut self.text, s);
        start..self.text.len()
    }

    fn push_json<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<Span> {
        let start = self.text.len();
        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, v)
            .map_err(|e| StoreError::Internal(format!("cannot encode JSON: {e}")))?;
        let json = std::str::from_utf8(&self.scratch)
            .map_err(|_| StoreError::Internal("JSON encoder wrote non-UTF-8".into()))?;
        self.text.push_str(json);
        Ok(start..self.text.len())
    }

    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Every row as owned values, in [`LOG_COLS`] order (the PostgreSQL store's COPY rows).
    pub(crate) fn to_vals(&self) -> Vec<Vec<Val>> {
        let cols = LOG_COLS.split(',').count();
        (0..self.rows.len())
            .map(|i| {
                let mut out = Vec::with_capacity(cols);
                let Ok(()) = self.bind(i, |_, v| {
                    out.push(match v {
                        LogVal::Null => Val::Null,
                        LogVal::Int(n) => Val::I64(n),
                        LogVal::Text(t) => Val::Text(t.to_string()),
                    });
                    Ok::<(), std::convert::Infallible>(())
                });
                out
            })
            .collect()
    }

    /// The values of row `i`, in [`LOG_COLS`] order, handed to `bind` with their 1-based
    /// parameter index.
    pub(crate) fn bind<E>(
        &self,
        i: usize,
        mut bind: impl FnMut(usize, LogVal<'_>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let Some(r) = self.rows.get(i) else {
            return Ok(());
        };
        let text = |s: &Span| LogVal::Text(self.text.get(s.clone()).unwrap_or_default());
        let opt = |s: &Option<Span>| s.as_ref().map_or(LogVal::Null, text);
        let [input, cached, output, reasoning] = r.tokens;
        let vals = [
            text(&r.id),
            LogVal::Int(r.ts_ms),
            opt(&r.key_id),
            opt(&r.account_id),
            text(&r.method),
            text(&r.path),
            opt(&r.model),
            text(&r.protocol),
            LogVal::Int(r.status),
            r.error_class.map_or(LogVal::Null, LogVal::Text),
            LogVal::Int(input),
            LogVal::Int(cached),
            LogVal::Int(output),
            LogVal::Int(reasoning),
            r.ttfb_ms.map_or(LogVal::Null, LogVal::Int),
            LogVal::Int(r.duration_ms),
            text(&r.node),
            text(&r.attempts),
            LogVal::Text(r.translation),
            opt(&r.upstream_model),
        ];
        for (n, v) in vals.into_iter().enumerate() {
            bind(n + 1, v)?;
        }
        Ok(())
    }
}

fn log_from_row(r: &Row) -> Result<RequestLog> {
    let status = r.i64(8)?;
    Ok(RequestLog {
        id: r.text(0)?,
        ts_ms: r.i64(1)?,
        key_id: r.opt_text(2)?,
        account_id: r.opt_text(3)?,
        method: r.text(4)?,
        path: r.text(5)?,
        model: r.opt_text(6)?,
        protocol: r.text(7)?,
        status: u16::try_from(status)
            .map_err(|_| StoreError::Internal(format!("stored status {status} out of range")))?,
        error_class: opt_col(r.opt_text(9)?)?,
        input_tokens: r.u64(10)?,
        cached_input_tokens: r.u64(11)?,
        output_tokens: r.u64(12)?,
        reasoning_tokens: r.u64(13)?,
        ttfb_ms: r.opt_u32(14)?,
        duration_ms: r.u32(15)?,
        node: r.text(16)?,
        attempts: from_json(&r.text(17)?)?,
        translation: parse_col(&r.text(18)?)?,
        upstream_model: r.opt_text(19)?,
    })
}

fn log_where(f: &LogFilter) -> Result<Where> {
    f.validate()?;
    let mut w = Where::default();
    if let Some(v) = &f.key_id {
        w.add("key_id = ?", vec![v.into()]);
    }
    if let Some(v) = &f.account_id {
        w.add("account_id = ?", vec![v.into()]);
    }
    if let Some(v) = &f.model {
        w.add("model = ?", vec![v.into()]);
    }
    if let Some(c) = f.status_class {
        // Literal bounds (from a validated digit), so the planner can use the partial index
        // on failures, which a bind parameter would hide from it.
        let (lo, hi) = c.range();
        w.add(&format!("status >= {lo} AND status < {hi}"), vec![]);
    }
    if let Some(e) = f.error_class {
        w.add("error_class = ?", vec![e.as_str().into()]);
    }
    if let Some(s) = f.since_ms {
        w.add("ts_ms >= ?", vec![s.into()]);
    }
    if let Some(u) = f.until_ms {
        w.add("ts_ms < ?", vec![u.into()]);
    }
    Ok(w)
}

pub(crate) async fn query_request_logs<T: Tx>(
    tx: &T,
    filter: &LogFilter,
    page: &PageRequest,
) -> Result<Page<RequestLog>> {
    let size = size_of(page)?;
    let mut w = log_where(filter)?;
    if let Some((ts, id)) = time_cursor(page)? {
        w.add("(ts_ms, id) < (?, ?)", vec![ts.into(), id.into()]);
    }
    let sql = format!(
        "SELECT {LOG_COLS} FROM request_logs{} ORDER BY ts_ms DESC, id DESC LIMIT ${}",
        w.clause(),
        w.next_param()
    );
    let mut params = w.params;
    params.push(i64::from(size + 1).into());
    let items = tx
        .query(&sql, &params)
        .await?
        .iter()
        .map(log_from_row)
        .collect::<Result<Vec<_>>>()?;
    Ok(paginate(items, size, listing::LOGS, |r| {
        Cursor::TimeId(r.ts_ms, r.id.clone())
    }))
}

pub(crate) async fn summarize_request_logs<T: Tx>(
    tx: &T,
    filter: &LogFilter,
) -> Result<LogSummary> {
    let w = log_where(filter)?;
    let totals = "COUNT(*), \
        CAST(COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0) AS BIGINT), \
        CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT), \
        CAST(COALESCE(SUM(cached_input_tokens), 0) AS BIGINT), \
        CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT), \
        CAST(COALESCE(SUM(reasoning_tokens), 0) AS BIGINT)";
    let row = |r: &Row| -> Result<SummaryRow> {
        Ok(SummaryRow {
            key: r.text(0)?,
            requests: r.u64(1)?,
            errors: r.u64(2)?,
            input_tokens: r.u64(3)?,
            cached_input_tokens: r.u64(4)?,
            output_tokens: r.u64(5)?,
            reasoning_tokens: r.u64(6)?,
        })
    };
    let total_sql = format!("SELECT '', {totals} FROM request_logs{}", w.clause());
    let total = row(&first_row(tx.query(&total_sql, &w.params).await?)?)?;
    let mut groups = Vec::with_capacity(2);
    for col in ["model", "account_id"] {
        let sql = format!(
            "SELECT COALESCE({col}, ''), {totals} FROM request_logs{} GROUP BY COALESCE({col}, '')",
            w.clause()
        );
        let mut rows = tx
            .query(&sql, &w.params)
            .await?
            .iter()
            .map(row)
            .collect::<Result<Vec<_>>>()?;
        // Sorted here, not in SQL, so both backends agree whatever the server's collation.
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        groups.push(rows);
    }
    let by_account = groups.pop().unwrap_or_default();
    let by_model = groups.pop().unwrap_or_default();
    Ok(LogSummary {
        total,
        by_model,
        by_account,
    })
}

/// Rows one prune statement deletes at most; backends loop, one transaction per chunk, so a
/// large retention run never holds a lock (or SQLite's single connection) for long.
pub(crate) const PRUNE_CHUNK: i64 = 5_000;

/// Deletes up to [`PRUNE_CHUNK`] records older than `before_ms`; returns how many.
pub(crate) async fn prune_request_logs_chunk<T: Tx>(tx: &T, before_ms: i64) -> Result<u64> {
    tx.exec(
        "DELETE FROM request_logs WHERE (ts_ms, id) IN \
         (SELECT ts_ms, id FROM request_logs WHERE ts_ms < $1 ORDER BY ts_ms LIMIT $2)",
        &[before_ms.into(), PRUNE_CHUNK.into()],
    )
    .await
}

// --- routing policy --------------------------------------------------------------------------

pub(crate) async fn get_policy<T: Tx>(tx: &T) -> Result<RoutingPolicy> {
    match tx
        .query("SELECT policy FROM routing_policy WHERE id = 1", &[])
        .await?
        .first()
    {
        Some(r) => from_json(&r.text(0)?),
        None => Ok(RoutingPolicy::default()),
    }
}

pub(crate) async fn set_policy<T: Tx>(tx: &T, policy: &RoutingPolicy, actor: &str) -> Result<()> {
    policy.validate()?;
    tx.exec(
        "INSERT INTO routing_policy (id, policy, updated_at_ms) VALUES (1, $1, $2) \
         ON CONFLICT (id) DO UPDATE SET policy = excluded.policy, \
         updated_at_ms = excluded.updated_at_ms",
        &[to_json(policy)?.into(), now_ms().into()],
    )
    .await?;
    policy_written(tx, policy, actor, "policy.set").await
}

/// Writes `policy` only when none is stored; returns whether it did. One statement, so two
/// replicas seeding at once cannot both write, and neither overwrites an API-set policy.
pub(crate) async fn seed_policy<T: Tx>(
    tx: &T,
    policy: &RoutingPolicy,
    actor: &str,
) -> Result<bool> {
    policy.validate()?;
    let inserted = tx
        .exec(
            "INSERT INTO routing_policy (id, policy, updated_at_ms) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO NOTHING",
            &[to_json(policy)?.into(), now_ms().into()],
        )
        .await?;
    if inserted == 0 {
        return Ok(false);
    }
    policy_written(tx, policy, actor, "policy.seed").await?;
    Ok(true)
}

async fn policy_written<T: Tx>(
    tx: &T,
    policy: &RoutingPolicy,
    actor: &str,
    action: &str,
) -> Result<()> {
    let detail = format!(
        "strategy={} p2c_window={} default_max_inflight={} model_aliases={}",
        policy.strategy,
        policy.p2c_window,
        policy.default_max_inflight,
        policy.model_aliases.len()
    );
    audit(tx, actor, action, "policy", POLICY_ID, &detail).await?;
    record_change(tx, ResourceKind::Policy, POLICY_ID, false).await?;
    Ok(())
}

// --- snapshot support ------------------------------------------------------------------------

/// Ids per statement when loading by id. Short chunks repeat their ids, so every statement has
/// one shape and the per-connection statement caches stay small.
const LOAD_CHUNK: usize = 500;

/// An account's columns, then its sealed credentials, usage and cooldown (26, 27, 28).
fn state_select(filter: &str) -> String {
    format!(
        "SELECT {ACCOUNT_READ_COLS}, cr.sealed, us.snapshot, a.cooldown_until_ms FROM accounts a \
         LEFT JOIN credentials cr ON cr.account_id = a.id \
         LEFT JOIN usage us ON us.account_id = a.id{filter} ORDER BY a.id"
    )
}

static LOAD_STATES: LazyLock<String> =
    LazyLock::new(|| state_select(&format!(" WHERE a.id IN ({})", placeholders(LOAD_CHUNK))));
static ALL_STATES: LazyLock<String> = LazyLock::new(|| state_select(""));
static LOAD_KEYS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {KEY_COLS} FROM platform_keys WHERE id IN ({}) ORDER BY id",
        placeholders(LOAD_CHUNK)
    )
});

fn open_credentials(cipher: &Cipher, id: &str, sealed: &[u8]) -> Result<Credentials> {
    let plain = cipher.open(id, sealed)?;
    serde_json::from_slice(&plain)
        .map_err(|e| StoreError::Crypto(format!("decrypted credentials are not readable: {e}")))
}

fn state_from_row(cipher: &Cipher, r: &Row) -> Result<AccountState> {
    let account = account_from_row(r)?;
    let credentials = r
        .opt_bytes(26)?
        .map(|sealed| open_credentials(cipher, &account.id, &sealed))
        .transpose()?;
    let usage = r.opt_text(27)?.map(|s| from_json(&s)).transpose()?;
    Ok(AccountState {
        account,
        credentials,
        usage,
        cooldown_until_ms: r.opt_i64(28)?,
    })
}

/// Sorted, without duplicates.
fn distinct(ids: &[String]) -> Vec<String> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

async fn query_by_ids<T: Tx>(tx: &T, sql: &str, ids: &[String]) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for chunk in distinct(ids).chunks(LOAD_CHUNK) {
        let params: Vec<Val> = chunk
            .iter()
            .cycle()
            .take(LOAD_CHUNK)
            .map(Val::from)
            .collect();
        out.extend(tx.query(sql, &params).await?);
    }
    Ok(out)
}

pub(crate) async fn load_account_states<T: Tx>(
    tx: &T,
    cipher: &Cipher,
    ids: &[String],
) -> Result<Vec<AccountState>> {
    query_by_ids(tx, &LOAD_STATES, ids)
        .await?
        .iter()
        .map(|r| state_from_row(cipher, r))
        .collect()
}

pub(crate) async fn load_keys<T: Tx>(tx: &T, ids: &[String]) -> Result<Vec<PlatformKey>> {
    query_by_ids(tx, &LOAD_KEYS, ids)
        .await?
        .iter()
        .map(key_from_row)
        .collect()
}

pub(crate) async fn load_all_states<T: Tx>(tx: &T, cipher: &Cipher) -> Result<FullState> {
    let version = current_version(tx).await?;
    let accounts = tx
        .query(&ALL_STATES, &[])
        .await?
        .iter()
        .map(|r| state_from_row(cipher, r))
        .collect::<Result<Vec<_>>>()?;
    let keys = tx
        .query(
            &format!("SELECT {KEY_COLS} FROM platform_keys ORDER BY id"),
            &[],
        )
        .await?
        .iter()
        .map(key_from_row)
        .collect::<Result<Vec<_>>>()?;
    let policy = get_policy(tx).await?;
    Ok(FullState {
        version,
        accounts,
        keys,
        policy,
    })
}

pub(crate) async fn oldest_change_version<T: Tx>(tx: &T) -> Result<i64> {
    first_row(
        tx.query("SELECT COALESCE(MIN(version), 0) FROM changes", &[])
            .await?,
    )?
    .i64(0)
}

/// Deletes up to [`PRUNE_CHUNK`] of the oldest changes (see `Store::prune_changes`); returns
/// how many. Runs under the change-log lock, so no writer holds an uncommitted version below
/// the cut, which would otherwise survive as an island above a hole.
pub(crate) async fn prune_changes_chunk<T: Tx>(
    tx: &T,
    older_than_ms: i64,
    keep_last: u64,
) -> Result<u64> {
    tx.lock_change_log().await?;
    let keep = i64::try_from(keep_last.max(1)).unwrap_or(i64::MAX);
    let by_count = current_version(tx).await?.saturating_sub(keep);
    let by_age = first_row(
        tx.query(
            "SELECT COALESCE(MAX(version), 0) FROM changes WHERE ts_ms < $1",
            &[older_than_ms.into()],
        )
        .await?,
    )?
    .i64(0)?;
    // Everything up to one version goes: always a prefix of the log.
    let through = by_count.min(by_age);
    if through <= 0 {
        return Ok(0);
    }
    tx.exec(
        "DELETE FROM changes WHERE version IN \
         (SELECT version FROM changes WHERE version <= $1 ORDER BY version LIMIT $2)",
        &[through.into(), PRUNE_CHUNK.into()],
    )
    .await
}

// --- gateway observations --------------------------------------------------------------------

/// Observed cooldowns further out are clamped: no quota window is longer than a week.
const MAX_COOLDOWN_MS: i64 = 8 * 86_400_000;
/// Usage moves smaller than this many percentage points are not worth a write and a delta.
const USAGE_EPSILON: f64 = 0.5;
/// Reset times computed from "resets in N seconds" headers jitter by a second or two.
const RESET_TOLERANCE_MS: i64 = 60_000;
/// Longest account id worth looking up.
const MAX_ACCOUNT_ID: usize = 256;

/// The part of an account that observations change.
#[derive(Debug, Clone, PartialEq)]
struct Shared {
    status: AccountStatus,
    status_reason: Option<StatusReason>,
    cooldown_until_ms: Option<i64>,
    cooldown_reason: Option<String>,
    needs_refresh: bool,
    usage: Option<UsageSnapshot>,
}

struct Fold {
    id: String,
    before: Shared,
    after: Shared,
    sealed: Option<Vec<u8>>,
    /// Whether the credentials hold a refresh token; read on the first 401.
    refreshable: Option<bool>,
    /// Secret-free details of the observations that changed the status, for the audit event.
    status_detail: String,
}

impl Fold {
    fn refreshable(&mut self, cipher: &Cipher) -> Result<bool> {
        if let Some(r) = self.refreshable {
            return Ok(r);
        }
        let r = match &self.sealed {
            Some(sealed) => matches!(
                open_credentials(cipher, &self.id, sealed)?,
                Credentials::OAuth(t) if !t.refresh_token.is_empty()
            ),
            None => false,
        };
        self.refreshable = Some(r);
        Ok(r)
    }

    fn make_unavailable(&mut self, reason: StatusReason, detail: &str) {
        let s = &mut self.after;
        if s.status != AccountStatus::Unavailable || s.status_reason != Some(reason) {
            s.status = AccountStatus::Unavailable;
            s.status_reason = Some(reason);
            self.status_detail = detail.to_string();
        }
    }
}

/// Extends the cooldown to `until_ms` (clamped) when that is later; returns the clamped time,
/// or `None` when it is already past.
fn extend_cooldown(s: &mut Shared, until_ms: i64, reason: &str, now: i64) -> Option<i64> {
    let until = until_ms.min(now.saturating_add(MAX_COOLDOWN_MS));
    if until <= now {
        return None;
    }
    if s.cooldown_until_ms.is_none_or(|c| until > c) {
        s.cooldown_until_ms = Some(until);
        s.cooldown_reason = Some(reason.to_string());
    }
    Some(until)
}

/// A window as a gateway reported it, or `None` when it is not a number we can store.
fn sane_window(w: &UsageWindow) -> Option<UsageWindow> {
    w.used_percent.is_finite().then(|| UsageWindow {
        used_percent: w.used_percent.clamp(0.0, 1000.0),
        window_minutes: w.window_minutes.min(366 * 24 * 60),
        resets_at_ms: w.resets_at_ms.filter(|r| *r > 0),
    })
}

/// Whether `new` says something `old` does not: a move of half a point or more, another
/// window length, a different reset, or crossing into or out of exhaustion.
fn window_moved(old: Option<&UsageWindow>, new: &UsageWindow) -> bool {
    let Some(old) = old else {
        return true;
    };
    let reset_moved = match (old.resets_at_ms, new.resets_at_ms) {
        (Some(a), Some(b)) => (a - b).abs() > RESET_TOLERANCE_MS,
        (a, b) => a.is_some() != b.is_some(),
    };
    (old.used_percent - new.used_percent).abs() >= USAGE_EPSILON
        || old.window_minutes != new.window_minutes
        || reset_moved
        || old.exhausted() != new.exhausted()
}

fn empty_usage(ts: i64) -> UsageSnapshot {
    UsageSnapshot {
        primary: None,
        secondary: None,
        extra: Vec::new(),
        captured_at_ms: ts,
    }
}

fn fold_usage(
    usage: &mut Option<UsageSnapshot>,
    primary: Option<&UsageWindow>,
    secondary: Option<&UsageWindow>,
    ts: i64,
) {
    let (primary, secondary) = (
        primary.and_then(sane_window),
        secondary.and_then(sane_window),
    );
    if primary.is_none() && secondary.is_none() {
        return;
    }
    // Reports from several gateways arrive out of order: an older reading never wins.
    if usage.as_ref().is_some_and(|u| ts < u.captured_at_ms) {
        return;
    }
    let u = usage.get_or_insert_with(|| empty_usage(ts));
    let mut moved = false;
    for (slot, new) in [(&mut u.primary, primary), (&mut u.secondary, secondary)] {
        if let Some(new) = new
            && window_moved(slot.as_ref(), &new)
        {
            *slot = Some(new);
            moved = true;
        }
    }
    if moved {
        u.captured_at_ms = u.captured_at_ms.max(ts);
    }
}

/// Marks the window that ran out (the one resetting at `until`, else one of the same length
/// class, else a free slot) as full until `until`.
fn fold_exhausted(usage: &mut Option<UsageSnapshot>, until: i64, ts: i64) {
    let weekly = until.saturating_sub(ts) > i64::from(WEEKLY_THRESHOLD_MINUTES) * 60_000;
    let u = usage.get_or_insert_with(|| empty_usage(ts));
    let resets_near = |w: &Option<UsageWindow>| {
        w.as_ref()
            .and_then(|w| w.resets_at_ms)
            .is_some_and(|r| (r - until).abs() <= 5 * 60_000)
    };
    let same_class = |w: &Option<UsageWindow>| w.as_ref().is_some_and(|w| w.is_weekly() == weekly);
    let use_primary = if resets_near(&u.primary) {
        true
    } else if resets_near(&u.secondary) {
        false
    } else if same_class(&u.primary) {
        true
    } else if same_class(&u.secondary) {
        false
    } else {
        u.primary.is_none() || u.secondary.is_some()
    };
    let slot = if use_primary {
        &mut u.primary
    } else {
        &mut u.secondary
    };
    let full = UsageWindow {
        used_percent: slot.as_ref().map_or(100.0, |w| w.used_percent.max(100.0)),
        window_minutes: slot
            .as_ref()
            .map_or(if weekly { 7 * 24 * 60 } else { 5 * 60 }, |w| {
                w.window_minutes
            }),
        resets_at_ms: Some(until),
    };
    if slot.as_ref() != Some(&full) {
        *slot = Some(full);
        u.captured_at_ms = u.captured_at_ms.max(ts);
    }
}

/// `auth_cooldown_ms`: how long every gateway passes over an account whose credentials an
/// upstream refused while a token refresh is pending (the policy's `cooldown_auth_secs`).
fn fold_one(
    f: &mut Fold,
    o: &Observation,
    cipher: &Cipher,
    now: i64,
    auth_cooldown_ms: i64,
) -> Result<()> {
    match &o.kind {
        ObservationKind::RateLimited { until_ms } => {
            extend_cooldown(&mut f.after, *until_ms, "rate_limited", now);
        }
        ObservationKind::QuotaExhausted { until_ms } => {
            if let Some(until) = extend_cooldown(&mut f.after, *until_ms, "quota_exhausted", now) {
                fold_exhausted(&mut f.after.usage, until, o.ts_ms.min(now));
            }
        }
        ObservationKind::AuthFailed => {
            if f.refreshable(cipher)? {
                f.after.needs_refresh = true;
                // The cooldown is what reaches every gateway (a change-log row); the flag
                // alone would leave the others sending requests with the refused token. More
                // refusals while it runs change nothing.
                if f.after.cooldown_until_ms.is_none_or(|c| c <= now) {
                    extend_cooldown(
                        &mut f.after,
                        now.saturating_add(auth_cooldown_ms),
                        "auth_failed",
                        now,
                    );
                }
            } else {
                f.make_unavailable(StatusReason::AuthInvalid, &o.detail);
            }
        }
        ObservationKind::Deactivated => f.make_unavailable(StatusReason::Deactivated, &o.detail),
        ObservationKind::Usage { primary, secondary } => fold_usage(
            &mut f.after.usage,
            primary.as_ref(),
            secondary.as_ref(),
            o.ts_ms.min(now),
        ),
    }
    Ok(())
}

static LOAD_SHARED: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT a.id, a.status, a.status_reason, a.cooldown_until_ms, a.cooldown_reason, \
         a.needs_refresh, us.snapshot, cr.sealed FROM accounts a \
         LEFT JOIN usage us ON us.account_id = a.id \
         LEFT JOIN credentials cr ON cr.account_id = a.id WHERE a.id IN ({})",
        placeholders(LOAD_CHUNK)
    )
});

fn fold_from_row(r: &Row) -> Result<Fold> {
    let shared = Shared {
        status: parse_col(&r.text(1)?)?,
        status_reason: opt_col(r.opt_text(2)?)?,
        cooldown_until_ms: r.opt_i64(3)?,
        cooldown_reason: r.opt_text(4)?,
        needs_refresh: r.bool(5)?,
        usage: r.opt_text(6)?.map(|s| from_json(&s)).transpose()?,
    };
    Ok(Fold {
        id: r.text(0)?,
        before: shared.clone(),
        after: shared,
        sealed: r.opt_bytes(7)?,
        refreshable: None,
        status_detail: String::new(),
    })
}

/// Writes what changed for one account; returns whether gateways must learn about it.
async fn write_fold<T: Tx>(tx: &T, f: &Fold, actor: &str, now: i64) -> Result<bool> {
    let (b, a) = (&f.before, &f.after);
    if (&b.cooldown_until_ms, &b.cooldown_reason) != (&a.cooldown_until_ms, &a.cooldown_reason) {
        tx.exec(
            "UPDATE accounts SET cooldown_until_ms = $2, cooldown_reason = $3 WHERE id = $1",
            &[
                f.id.as_str().into(),
                a.cooldown_until_ms.into(),
                a.cooldown_reason.clone().into(),
            ],
        )
        .await?;
    }
    if b.needs_refresh != a.needs_refresh {
        tx.exec(
            "UPDATE accounts SET needs_refresh = $2 WHERE id = $1",
            &[f.id.as_str().into(), a.needs_refresh.into()],
        )
        .await?;
    }
    let status_changed = (b.status, b.status_reason) != (a.status, a.status_reason);
    if status_changed {
        tx.exec(
            "UPDATE accounts SET status = $2, status_reason = $3, updated_at_ms = $4 WHERE id = $1",
            &[
                f.id.as_str().into(),
                a.status.as_str().into(),
                a.status_reason.map(|r| r.as_str()).into(),
                now.into(),
            ],
        )
        .await?;
        let reason = a.status_reason.map(|r| r.as_str()).unwrap_or("-");
        let detail = if f.status_detail.is_empty() {
            format!("status {} ({reason}) as a gateway observed", a.status)
        } else {
            format!(
                "status {} ({reason}) as a gateway observed: {}",
                a.status, f.status_detail
            )
        };
        audit(tx, actor, "account.observed", "account", &f.id, &detail).await?;
    }
    if b.usage != a.usage
        && let Some(u) = &a.usage
    {
        tx.exec(
            "INSERT INTO usage (account_id, snapshot, updated_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (account_id) DO UPDATE SET snapshot = excluded.snapshot, \
             updated_at_ms = excluded.updated_at_ms",
            &[f.id.as_str().into(), to_json(u)?.into(), now.into()],
        )
        .await?;
    }
    Ok(status_changed || b.cooldown_until_ms != a.cooldown_until_ms || b.usage != a.usage)
}

pub(crate) async fn record_observations<T: Tx>(
    tx: &T,
    cipher: &Cipher,
    observations: &[Observation],
    actor: &str,
) -> Result<ObservationOutcome> {
    let mut out = ObservationOutcome::default();
    let usable = |o: &Observation| {
        !o.account_id.is_empty()
            && o.account_id.len() <= MAX_ACCOUNT_ID
            && !o.account_id.contains('\0')
    };
    let ids: Vec<String> = observations
        .iter()
        .filter(|o| usable(o))
        .map(|o| o.account_id.clone())
        .collect();
    if ids.is_empty() {
        out.unknown = observations.len() as u64;
        return Ok(out);
    }
    tx.lock_observations().await?;
    let mut folds: BTreeMap<String, Fold> = BTreeMap::new();
    for r in query_by_ids(tx, &LOAD_SHARED, &ids).await? {
        let f = fold_from_row(&r)?;
        folds.insert(f.id.clone(), f);
    }
    // Each account's observations in time order (stable: equal times keep their order).
    let mut ordered: Vec<&Observation> = observations.iter().collect();
    ordered.sort_by_key(|o| o.ts_ms);
    let now = now_ms();
    let auth_cooldown_ms = if ordered
        .iter()
        .any(|o| matches!(o.kind, ObservationKind::AuthFailed))
    {
        i64::from(get_policy(tx).await?.cooldown_auth_secs).saturating_mul(1000)
    } else {
        0
    };
    for o in ordered {
        match folds.get_mut(&o.account_id) {
            Some(f) => fold_one(f, o, cipher, now, auth_cooldown_ms)?,
            None => out.unknown += 1,
        }
    }
    for f in folds.values() {
        if f.after.needs_refresh && !f.before.needs_refresh {
            out.refresh_requested += 1;
        }
        if write_fold(tx, f, actor, now).await? {
            out.changed_accounts.push(f.id.clone());
        }
    }
    // Change-log rows last: they take the lock that orders versions until commit.
    for id in &out.changed_accounts {
        record_change(tx, ResourceKind::Account, id, false).await?;
    }
    Ok(out)
}

pub(crate) async fn accounts_needing_refresh<T: Tx>(tx: &T) -> Result<Vec<String>> {
    tx.query(
        "SELECT id FROM accounts WHERE needs_refresh = $1 ORDER BY id",
        &[true.into()],
    )
    .await?
    .iter()
    .map(|r| r.text(0))
    .collect()
}

// --- token refresh ---------------------------------------------------------------------------

/// See `Store::accounts_due_for_refresh`.
pub(crate) async fn accounts_due_for_refresh<T: Tx>(
    tx: &T,
    expiring_before_ms: i64,
    now: i64,
    limit: u32,
) -> Result<Vec<String>> {
    tx.query(
        "SELECT c.account_id FROM credentials c JOIN accounts a ON a.id = c.account_id \
         WHERE c.kind = $1 AND c.refreshable = $2 \
         AND (a.status_reason IS NULL OR a.status_reason NOT IN ($3, $4)) \
         AND (c.refresh_lease_until_ms IS NULL OR c.refresh_lease_until_ms <= $5) \
         AND (c.refresh_not_before_ms IS NULL OR c.refresh_not_before_ms <= $5) \
         AND (a.needs_refresh = $2 OR c.access_expires_at_ms IS NULL \
              OR c.access_expires_at_ms <= $6) \
         ORDER BY a.needs_refresh DESC, COALESCE(c.access_expires_at_ms, 0), c.account_id \
         LIMIT $7",
        &[
            "oauth".into(),
            true.into(),
            StatusReason::AuthInvalid.as_str().into(),
            StatusReason::Deactivated.as_str().into(),
            now.into(),
            expiring_before_ms.into(),
            limit.min(10_000).into(),
        ],
    )
    .await?
    .iter()
    .map(|r| r.text(0))
    .collect()
}

/// The claimable state of one credential row, read with the row locked.
struct RefreshRow {
    sealed: Vec<u8>,
    lease: Option<String>,
    lease_until_ms: Option<i64>,
    not_before_ms: Option<i64>,
    needs_refresh: bool,
    status: AccountStatus,
    status_reason: Option<StatusReason>,
}

async fn refresh_row<T: Tx>(tx: &T, id: &str) -> Result<Option<RefreshRow>> {
    tx.lock_credentials(id).await?;
    let rows = tx
        .query(
            "SELECT c.sealed, c.refresh_lease, c.refresh_lease_until_ms, \
             c.refresh_not_before_ms, a.needs_refresh, a.status, a.status_reason \
             FROM credentials c JOIN accounts a ON a.id = c.account_id WHERE c.account_id = $1",
            &[id.into()],
        )
        .await?;
    rows.first()
        .map(|r| {
            Ok(RefreshRow {
                sealed: r.bytes(0)?,
                lease: r.opt_text(1)?,
                lease_until_ms: r.opt_i64(2)?,
                not_before_ms: r.opt_i64(3)?,
                needs_refresh: r.bool(4)?,
                status: parse_col(&r.text(5)?)?,
                status_reason: opt_col(r.opt_text(6)?)?,
            })
        })
        .transpose()
}

/// See `Store::begin_refresh`.
pub(crate) async fn begin_refresh<T: Tx>(
    tx: &T,
    cipher: &Cipher,
    id: &str,
    lease_ms: i64,
) -> Result<RefreshStart> {
    let Some(row) = refresh_row(tx, id).await? else {
        get_account(tx, id).await?;
        return Ok(RefreshStart::NotRefreshable);
    };
    let now = now_ms();
    let dead = row.status == AccountStatus::Unavailable
        && matches!(
            row.status_reason,
            Some(StatusReason::AuthInvalid | StatusReason::Deactivated)
        );
    if dead {
        return Ok(RefreshStart::NotRefreshable);
    }
    if let Some(until) = row.lease_until_ms.filter(|u| *u > now) {
        return Ok(RefreshStart::Busy { until_ms: until });
    }
    if let Some(until) = row.not_before_ms.filter(|u| *u > now) {
        return Ok(RefreshStart::Paused { until_ms: until });
    }
    let tokens = match open_credentials(cipher, id, &row.sealed)? {
        Credentials::OAuth(t) if !t.refresh_token.is_empty() => t,
        _ => {
            tx.exec(
                "UPDATE credentials SET refreshable = $2 WHERE account_id = $1",
                &[id.into(), false.into()],
            )
            .await?;
            return Ok(RefreshStart::NotRefreshable);
        }
    };
    let lease = new_id("lease")?;
    let lease_until_ms = now.saturating_add(lease_ms.max(1));
    tx.exec(
        "UPDATE credentials SET refresh_lease = $2, refresh_lease_until_ms = $3 \
         WHERE account_id = $1",
        &[id.into(), lease.as_str().into(), lease_until_ms.into()],
    )
    .await?;
    Ok(RefreshStart::Claimed(RefreshClaim {
        account_id: id.to_string(),
        lease,
        lease_until_ms,
        tokens,
        requested: row.needs_refresh,
        recovered: row.lease.is_some(),
    }))
}

/// See `Store::complete_refresh`.
pub(crate) async fn complete_refresh<T: Tx>(
    tx: &T,
    cipher: &Cipher,
    claim: &RefreshClaim,
    tokens: &OAuthTokens,
    actor: &str,
) -> Result<RefreshCommit> {
    let id = claim.account_id.as_str();
    let Some(row) = refresh_row(tx, id).await? else {
        return Ok(RefreshCommit::Conflict);
    };
    if row.lease.as_deref() != Some(claim.lease.as_str()) {
        return Ok(RefreshCommit::Conflict);
    }
    // The lease is rewritten by every credential write, so this holds whenever the lease
    // does; checked anyway, as it is the invariant that matters.
    match open_credentials(cipher, id, &row.sealed)? {
        Credentials::OAuth(t) if t.refresh_token == claim.tokens.refresh_token => {}
        _ => return Ok(RefreshCommit::Conflict),
    }
    let creds = Credentials::OAuth(tokens.clone());
    creds.check_for(Provider::Codex)?;
    put_credentials(tx, cipher, id, &creds).await?;
    tx.exec(
        "UPDATE accounts SET updated_at_ms = $2 WHERE id = $1",
        &[id.into(), now_ms().into()],
    )
    .await?;
    let detail = if claim.requested {
        "tokens refreshed after a gateway saw an auth failure"
    } else {
        "tokens refreshed before the access token expires"
    };
    audit(tx, actor, "account.refresh", "account", id, detail).await?;
    record_change(tx, ResourceKind::Account, id, false).await?;
    Ok(RefreshCommit::Committed)
}

/// See `Store::release_refresh`.
pub(crate) async fn release_refresh<T: Tx>(
    tx: &T,
    claim: &RefreshClaim,
    release: &RefreshRelease,
    actor: &str,
) -> Result<bool> {
    let id = claim.account_id.as_str();
    let Some(row) = refresh_row(tx, id).await? else {
        return Ok(false);
    };
    if row.lease.as_deref() != Some(claim.lease.as_str()) {
        return Ok(false);
    }
    let end = |extra: &str| {
        format!(
            "UPDATE credentials SET refresh_lease = NULL, refresh_lease_until_ms = NULL{extra} \
             WHERE account_id = $1"
        )
    };
    match release {
        RefreshRelease::NotDue {
            access_expires_at_ms,
        } => {
            tx.exec(
                &end(", access_expires_at_ms = $2"),
                &[id.into(), (*access_expires_at_ms).into()],
            )
            .await?;
        }
        RefreshRelease::Retry { not_before_ms } => {
            tx.exec(
                &end(", refresh_not_before_ms = $2"),
                &[id.into(), (*not_before_ms).into()],
            )
            .await?;
        }
        RefreshRelease::Paused { until_ms, detail } => {
            tx.exec(
                &end(", refresh_not_before_ms = $2"),
                &[id.into(), (*until_ms).into()],
            )
            .await?;
            let detail = format!("token refresh paused: {detail}");
            audit(tx, actor, "account.refresh_paused", "account", id, &detail).await?;
        }
        RefreshRelease::Invalid { detail } => {
            tx.exec(&end(""), &[id.into()]).await?;
            tx.exec(
                "UPDATE accounts SET status = $2, status_reason = $3, needs_refresh = $4, \
                 updated_at_ms = $5 WHERE id = $1",
                &[
                    id.into(),
                    AccountStatus::Unavailable.as_str().into(),
                    StatusReason::AuthInvalid.as_str().into(),
                    false.into(),
                    now_ms().into(),
                ],
            )
            .await?;
            let detail =
                format!("status unavailable (auth_invalid): token refresh refused: {detail}");
            audit(tx, actor, "account.refresh_failed", "account", id, &detail).await?;
            record_change(tx, ResourceKind::Account, id, false).await?;
        }
    }
    Ok(true)
}

// --- gateways --------------------------------------------------------------------------------

const GATEWAY_COLS: &str =
    "node_id, control_node, applied_version, connected_at_ms, last_report_at_ms, last_seen_at_ms";

/// Node names are pod or host names.
fn check_node(field: &'static str, v: &str) -> Result<()> {
    if v.is_empty() || v.len() > 253 || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(
            field,
            "must be 1 to 253 bytes without spaces or control characters",
        ));
    }
    Ok(())
}

pub(crate) async fn upsert_gateway_seen<T: Tx>(tx: &T, seen: &GatewaySeen) -> Result<()> {
    check_node("node_id", &seen.node_id)?;
    check_node("control_node", &seen.control_node)?;
    if seen.applied_version < 0 {
        return Err(invalid("applied_version", "must not be negative"));
    }
    let at = seen.at_ms;
    let (connected, reported, update) = match seen.event {
        GatewayEvent::Connected => (
            at,
            0,
            ", applied_version = excluded.applied_version, \
             connected_at_ms = excluded.connected_at_ms",
        ),
        GatewayEvent::Reported => (
            0,
            at,
            ", applied_version = excluded.applied_version, \
             last_report_at_ms = excluded.last_report_at_ms",
        ),
        GatewayEvent::Heartbeat => (0, 0, ""),
    };
    let sql = format!(
        "INSERT INTO gateways ({GATEWAY_COLS}) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (node_id) DO UPDATE SET control_node = excluded.control_node, \
         last_seen_at_ms = excluded.last_seen_at_ms{update}"
    );
    tx.exec(
        &sql,
        &[
            seen.node_id.as_str().into(),
            seen.control_node.as_str().into(),
            seen.applied_version.into(),
            connected.into(),
            reported.into(),
            at.into(),
        ],
    )
    .await?;
    Ok(())
}

pub(crate) async fn list_gateways<T: Tx>(
    tx: &T,
    active_since_ms: i64,
) -> Result<Vec<GatewayRecord>> {
    let positive = |v: i64| (v > 0).then_some(v);
    tx.query(
        &format!(
            "SELECT {GATEWAY_COLS} FROM gateways WHERE last_seen_at_ms >= $1 ORDER BY node_id"
        ),
        &[active_since_ms.into()],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(GatewayRecord {
            node_id: r.text(0)?,
            control_node: r.text(1)?,
            applied_version: r.i64(2)?,
            connected_at_ms: positive(r.i64(3)?),
            last_report_at_ms: positive(r.i64(4)?),
            last_seen_at_ms: r.i64(5)?,
        })
    })
    .collect()
}

pub(crate) async fn prune_gateways<T: Tx>(tx: &T, seen_before_ms: i64) -> Result<u64> {
    tx.exec(
        "DELETE FROM gateways WHERE last_seen_at_ms < $1",
        &[seen_before_ms.into()],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_builders() {
        assert_eq!(placeholders(3), "$1, $2, $3");
        assert_eq!(set_list("id, a, b"), "a = $2, b = $3");
        assert!(INSERT_ACCOUNT.ends_with("$26)"));
        assert!(UPDATE_ACCOUNT.contains("updated_at_ms = $26"));
        assert!(INSERT_KEY.ends_with("$14)"));
    }

    #[test]
    fn pagination_cuts_and_encodes() {
        let p = paginate(vec![1, 2, 3], 2, listing::KEYS, |i| {
            Cursor::Id(i.to_string())
        });
        assert_eq!(p.items, vec![1, 2]);
        let tok = p.next.unwrap();
        assert_eq!(
            page::decode(listing::KEYS, &tok).unwrap(),
            Cursor::Id("2".into())
        );
        let p = paginate(vec![1, 2], 2, listing::KEYS, |i| Cursor::Id(i.to_string()));
        assert_eq!(p.next, None);
        let wrong = PageRequest {
            size: 1,
            after: Some(Cursor::TimeId(1, "x".into())),
        };
        assert!(matches!(
            id_cursor(&wrong),
            Err(StoreError::Invalid(poolgate_core::Error::PageToken))
        ));
    }

    #[test]
    fn validation_helpers() {
        assert!(check_hash(&"a".repeat(64)).is_ok());
        assert!(check_hash(&"A".repeat(64)).is_err());
        assert!(check_hash("abc").is_err());
        assert!(check_id("id", "key_1").is_ok());
        assert!(check_id("id", "a b").is_err());
        assert!(check_display("prefix", "pgk_abc", 64).is_ok());
        assert!(check_display("prefix", "", 64).is_err());
    }
}
