//! Conversions between the `poolgate.v1` messages and the domain types of `poolgate-core`,
//! shared by the control plane, the gateway and poolctl.
//!
//! Proto3 has no "unset" for scalars: an empty string or a zero means "none" (`None`) both
//! ways. Enum-like strings go through the domain type's `FromStr`, whose error names the field
//! and the allowed values. Conversions from messages only check what the types need; they do
//! not validate specs (the control plane did that before storing them), except for the
//! routing policy, which is validated wherever it is read.

use poolgate_core::report::{Observation, ObservationKind, ReportBatch};
use poolgate_core::snapshot::{AccountState, Delta};
use poolgate_core::{
    Account, AccountSpec, AdminToken, Attempt, AuditEvent, AzureConfig, CodexIdentity, Credentials,
    Error, ExtraLimit, KeySpec, LogSummary, ManagedBy, ModelAlias, OAuthTokens, PlatformKey,
    QuotaGuard, RequestLog, RoutingPolicy, Secret, Strategy, SummaryRow, Translation,
    UsageSnapshot, UsageWindow, usage,
};

use crate::v1 as pb;

// ------------------------------------------------------------------------------- helpers

/// A trimmed string, or `None` when it is blank (for request fields people type).
pub fn non_empty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Parses an enum-like field that may be left empty.
pub fn optional_enum<T: std::str::FromStr<Err = Error>>(s: &str) -> Result<Option<T>, Error> {
    if s.trim().is_empty() {
        Ok(None)
    } else {
        s.parse().map(Some)
    }
}

/// An output field as it was written: empty means `None`, anything else is kept exactly.
fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// A time or count where 0 means "none".
fn positive(v: i64) -> Option<i64> {
    (v > 0).then_some(v)
}

// ------------------------------------------------------------------------------- accounts

pub fn identity_to_pb(i: &CodexIdentity) -> pb::CodexIdentity {
    pb::CodexIdentity {
        subject: i.subject.clone(),
        chatgpt_account_id: i.chatgpt_account_id.clone(),
        chatgpt_user_id: i.chatgpt_user_id.clone().unwrap_or_default(),
        email: i.email.clone().unwrap_or_default(),
        plan_type: i.plan_type.clone().unwrap_or_default(),
    }
}

pub fn identity_from_pb(i: pb::CodexIdentity) -> CodexIdentity {
    CodexIdentity {
        subject: i.subject,
        chatgpt_account_id: i.chatgpt_account_id,
        chatgpt_user_id: opt(i.chatgpt_user_id),
        email: opt(i.email),
        plan_type: opt(i.plan_type),
    }
}

pub fn account_to_pb(a: &Account) -> pb::Account {
    let s = &a.spec;
    pb::Account {
        id: a.id.clone(),
        provider: s.provider.to_string(),
        name: s.name.clone(),
        group: s.group.clone(),
        tags: s.tags.clone(),
        priority: s.priority,
        note: s.note.clone(),
        enabled: s.enabled,
        status: a.status.to_string(),
        status_reason: a.status_reason.map(|r| r.to_string()).unwrap_or_default(),
        max_inflight: s.max_inflight,
        proxy_url: s.proxy_url.clone().unwrap_or_default(),
        model_filter: s.model_filter.clone(),
        base_url: s.base_url.clone().unwrap_or_default(),
        azure_deployment: s
            .azure
            .as_ref()
            .map(|z| z.deployment.clone())
            .unwrap_or_default(),
        azure_api_version: s
            .azure
            .as_ref()
            .map(|z| z.api_version.clone())
            .unwrap_or_default(),
        identity: a.identity.as_ref().map(identity_to_pb),
        managed_by: a.managed_by.to_string(),
        managed_ref: a.managed_ref.clone().unwrap_or_default(),
        has_credentials: a.has_credentials,
        created_at_ms: a.created_at_ms,
        updated_at_ms: a.updated_at_ms,
        effective_base_url: a.effective_base_url().unwrap_or_default().to_string(),
    }
}

/// An account as the control plane sent it (`effective_base_url` is derived, so ignored).
pub fn account_from_pb(a: pb::Account) -> Result<Account, Error> {
    let azure = if a.azure_deployment.is_empty() && a.azure_api_version.is_empty() {
        None
    } else {
        Some(AzureConfig {
            deployment: a.azure_deployment,
            api_version: a.azure_api_version,
        })
    };
    Ok(Account {
        spec: AccountSpec {
            provider: a.provider.parse()?,
            name: a.name,
            group: a.group,
            tags: a.tags,
            priority: a.priority,
            note: a.note,
            enabled: a.enabled,
            max_inflight: a.max_inflight,
            proxy_url: opt(a.proxy_url),
            model_filter: a.model_filter,
            base_url: opt(a.base_url),
            azure,
        },
        status: a.status.parse()?,
        status_reason: optional_enum(&a.status_reason)?,
        identity: a.identity.map(identity_from_pb),
        managed_by: a.managed_by.parse()?,
        managed_ref: opt(a.managed_ref),
        has_credentials: a.has_credentials,
        created_at_ms: a.created_at_ms,
        updated_at_ms: a.updated_at_ms,
        id: a.id,
    })
}

// ------------------------------------------------------------------------------- keys

pub fn key_to_pb(k: &PlatformKey) -> pb::PlatformKey {
    let s = &k.spec;
    pb::PlatformKey {
        id: k.id.clone(),
        name: s.name.clone(),
        prefix: k.prefix.clone(),
        status: k.status.to_string(),
        expires_at_ms: s.expires_at_ms.unwrap_or(0),
        allowed_models: s.allowed_models.clone(),
        model_override: s.model_override.clone().unwrap_or_default(),
        reasoning_effort: s
            .reasoning_effort
            .map(|e| e.to_string())
            .unwrap_or_default(),
        account_groups: s.account_groups.clone(),
        managed_by: k.managed_by.to_string(),
        managed_ref: k.managed_ref.clone().unwrap_or_default(),
        created_at_ms: k.created_at_ms,
        updated_at_ms: k.updated_at_ms,
    }
}

/// A key as the admin API or a snapshot shows it; the hash travels beside it (snapshots only).
pub fn key_from_pb(k: pb::PlatformKey, hash: String) -> Result<PlatformKey, Error> {
    Ok(PlatformKey {
        spec: KeySpec {
            name: k.name,
            expires_at_ms: positive(k.expires_at_ms),
            allowed_models: k.allowed_models,
            model_override: opt(k.model_override),
            reasoning_effort: optional_enum(&k.reasoning_effort)?,
            account_groups: k.account_groups,
        },
        prefix: k.prefix,
        hash,
        status: k.status.parse()?,
        managed_by: k.managed_by.parse()?,
        managed_ref: opt(k.managed_ref),
        created_at_ms: k.created_at_ms,
        updated_at_ms: k.updated_at_ms,
        id: k.id,
    })
}

/// A key as snapshots carry it: what a gateway authorises and shapes requests with, and the
/// hash. Name, prefix, ownership and timestamps stay with the control plane (with 100,000 keys
/// they were a third of a full snapshot and as many allocations on every gateway).
pub fn wire_key(k: PlatformKey) -> PlatformKey {
    PlatformKey {
        spec: KeySpec {
            name: String::new(),
            ..k.spec
        },
        prefix: String::new(),
        managed_by: ManagedBy::Api,
        managed_ref: None,
        created_at_ms: 0,
        updated_at_ms: 0,
        ..k
    }
}

pub fn key_state_to_pb(k: &PlatformKey) -> pb::KeyState {
    let s = &k.spec;
    pb::KeyState {
        key: Some(pb::PlatformKey {
            id: k.id.clone(),
            status: k.status.to_string(),
            expires_at_ms: s.expires_at_ms.unwrap_or(0),
            allowed_models: s.allowed_models.clone(),
            model_override: s.model_override.clone().unwrap_or_default(),
            reasoning_effort: s
                .reasoning_effort
                .map(|e| e.to_string())
                .unwrap_or_default(),
            account_groups: s.account_groups.clone(),
            ..Default::default()
        }),
        hash: k.hash.clone(),
    }
}

/// The snapshot form of a key (see [`wire_key`]).
pub fn key_state_from_pb(k: pb::KeyState) -> Result<PlatformKey, Error> {
    if k.hash.is_empty() {
        return Err(Error::invalid("key.hash", "is required"));
    }
    let key = k
        .key
        .ok_or_else(|| Error::invalid("key", "is required in a key state"))?;
    Ok(PlatformKey {
        spec: KeySpec {
            name: String::new(),
            expires_at_ms: positive(key.expires_at_ms),
            allowed_models: key.allowed_models,
            model_override: opt(key.model_override),
            reasoning_effort: optional_enum(&key.reasoning_effort)?,
            account_groups: key.account_groups,
        },
        prefix: String::new(),
        hash: k.hash,
        status: key.status.parse()?,
        managed_by: ManagedBy::Api,
        managed_ref: None,
        created_at_ms: 0,
        updated_at_ms: 0,
        id: key.id,
    })
}

// ------------------------------------------------------------------------------- usage

pub fn window_to_pb(w: &UsageWindow) -> pb::UsageWindow {
    pb::UsageWindow {
        used_percent: w.used_percent,
        window_minutes: w.window_minutes,
        resets_at_ms: w.resets_at_ms.unwrap_or(0),
    }
}

pub fn window_from_pb(w: &pb::UsageWindow) -> UsageWindow {
    UsageWindow {
        used_percent: w.used_percent,
        window_minutes: w.window_minutes,
        resets_at_ms: positive(w.resets_at_ms),
    }
}

fn extra_to_pb(e: &ExtraLimit) -> pb::ExtraLimit {
    pb::ExtraLimit {
        name: e.name.clone(),
        primary: e.primary.as_ref().map(window_to_pb),
        secondary: e.secondary.as_ref().map(window_to_pb),
        limit_reached: e.limit_reached,
    }
}

pub fn usage_to_pb(a: &Account, u: Option<&UsageSnapshot>) -> pb::AccountUsage {
    pb::AccountUsage {
        account_id: a.id.clone(),
        name: a.spec.name.clone(),
        provider: a.spec.provider.to_string(),
        status: a.status.to_string(),
        status_reason: a.status_reason.map(|r| r.to_string()).unwrap_or_default(),
        availability: usage::availability_of(u).to_string(),
        primary: u.and_then(|u| u.primary.as_ref()).map(window_to_pb),
        secondary: u.and_then(|u| u.secondary.as_ref()).map(window_to_pb),
        five_hour: u.and_then(UsageSnapshot::five_hour).map(window_to_pb),
        weekly: u.and_then(UsageSnapshot::weekly).map(window_to_pb),
        extra: u
            .map(|u| u.extra.iter().map(extra_to_pb).collect())
            .unwrap_or_default(),
        captured_at_ms: u.map_or(0, |u| u.captured_at_ms),
    }
}

// ------------------------------------------------------------------------------- snapshots

/// The part of an account state the snapshot protocol carries: the credential reduced to
/// what a gateway authenticates with (the API key, or only the OAuth access token: refresh
/// and id tokens never leave the control plane), usage without the extra limits, and "none"
/// for zero times. `account_state_from_pb(account_state_to_pb(&s))` equals
/// `wire_account_state(s)`; the control plane hands in-process gateways this same form.
pub fn wire_account_state(s: AccountState) -> AccountState {
    let credentials = s.credentials.map(|c| match c {
        Credentials::OAuth(t) => Credentials::OAuth(OAuthTokens {
            id_token: Secret::default(),
            access_token: t.access_token,
            refresh_token: Secret::default(),
            expires_at_ms: None,
            last_refresh_ms: None,
        }),
        key @ Credentials::ApiKey { .. } => key,
    });
    let window = |w: Option<UsageWindow>| {
        w.map(|w| UsageWindow {
            resets_at_ms: w.resets_at_ms.filter(|r| *r > 0),
            ..w
        })
    };
    let usage = s
        .usage
        .map(|u| UsageSnapshot {
            primary: window(u.primary),
            secondary: window(u.secondary),
            extra: Vec::new(),
            captured_at_ms: u.captured_at_ms,
        })
        .filter(|u| u.primary.is_some() || u.secondary.is_some() || u.captured_at_ms != 0);
    AccountState {
        account: s.account,
        credentials,
        usage,
        cooldown_until_ms: s.cooldown_until_ms.filter(|c| *c > 0),
    }
}

pub fn account_state_to_pb(s: &AccountState) -> pb::AccountState {
    use pb::account_state::Credential;
    let credential = s.credentials.as_ref().map(|c| match c {
        Credentials::ApiKey { key } => Credential::ApiKey(key.expose().to_string()),
        Credentials::OAuth(t) => Credential::AccessToken(t.access_token.expose().to_string()),
    });
    let u = s.usage.as_ref();
    pb::AccountState {
        account: Some(account_to_pb(&s.account)),
        credential,
        primary: u.and_then(|u| u.primary.as_ref()).map(window_to_pb),
        secondary: u.and_then(|u| u.secondary.as_ref()).map(window_to_pb),
        usage_captured_at_ms: u.map_or(0, |u| u.captured_at_ms),
        cooldown_until_ms: s.cooldown_until_ms.unwrap_or(0),
    }
}

pub fn account_state_from_pb(s: pb::AccountState) -> Result<AccountState, Error> {
    use pb::account_state::Credential;
    let account = s
        .account
        .ok_or_else(|| Error::invalid("account", "is required in an account state"))?;
    let credentials = s.credential.map(|c| match c {
        Credential::ApiKey(key) => Credentials::ApiKey {
            key: Secret::new(key),
        },
        Credential::AccessToken(token) => Credentials::OAuth(OAuthTokens {
            id_token: Secret::default(),
            access_token: Secret::new(token),
            refresh_token: Secret::default(),
            expires_at_ms: None,
            last_refresh_ms: None,
        }),
    });
    let (primary, secondary) = (
        s.primary.as_ref().map(window_from_pb),
        s.secondary.as_ref().map(window_from_pb),
    );
    let usage =
        (primary.is_some() || secondary.is_some() || s.usage_captured_at_ms != 0).then(|| {
            UsageSnapshot {
                primary,
                secondary,
                extra: Vec::new(),
                captured_at_ms: s.usage_captured_at_ms,
            }
        });
    Ok(AccountState {
        account: account_from_pb(account)?,
        credentials,
        usage,
        cooldown_until_ms: positive(s.cooldown_until_ms),
    })
}

pub fn delta_to_pb(d: &Delta) -> pb::SnapshotUpdate {
    pb::SnapshotUpdate {
        version: d.version,
        full: d.full,
        upsert_accounts: d.upsert_accounts.iter().map(account_state_to_pb).collect(),
        remove_accounts: d.remove_accounts.clone(),
        upsert_keys: d.upsert_keys.iter().map(key_state_to_pb).collect(),
        remove_keys: d.remove_keys.clone(),
        policy: d.policy.as_ref().map(policy_to_pb),
    }
}

pub fn delta_from_pb(u: pb::SnapshotUpdate) -> Result<Delta, Error> {
    let policy = match &u.policy {
        Some(p) => Some(policy_from_pb(Some(p))?),
        None => None,
    };
    Ok(Delta {
        version: u.version,
        full: u.full,
        upsert_accounts: u
            .upsert_accounts
            .into_iter()
            .map(account_state_from_pb)
            .collect::<Result<_, _>>()?,
        remove_accounts: u.remove_accounts,
        upsert_keys: u
            .upsert_keys
            .into_iter()
            .map(key_state_from_pb)
            .collect::<Result<_, _>>()?,
        remove_keys: u.remove_keys,
        policy,
    })
}

// ------------------------------------------------------------------------------- logs

fn attempt_to_pb(a: &Attempt) -> pb::Attempt {
    pb::Attempt {
        account_id: a.account_id.clone(),
        status: u32::from(a.status),
        error_class: a.error_class.map(|c| c.to_string()).unwrap_or_default(),
        duration_ms: a.duration_ms,
    }
}

fn http_status(v: u32) -> Result<u16, Error> {
    u16::try_from(v)
        .ok()
        .filter(|s| *s <= 999)
        .ok_or_else(|| Error::invalid("status", format!("{v} is not an HTTP status")))
}

fn attempt_from_pb(a: pb::Attempt) -> Result<Attempt, Error> {
    Ok(Attempt {
        status: http_status(a.status)?,
        error_class: optional_enum(&a.error_class)?,
        duration_ms: a.duration_ms,
        account_id: a.account_id,
    })
}

pub fn log_to_pb(r: &RequestLog) -> pb::RequestLog {
    pb::RequestLog {
        id: r.id.clone(),
        ts_ms: r.ts_ms,
        key_id: r.key_id.clone().unwrap_or_default(),
        account_id: r.account_id.clone().unwrap_or_default(),
        attempts: r.attempts.iter().map(attempt_to_pb).collect(),
        method: r.method.clone(),
        path: r.path.clone(),
        model: r.model.clone().unwrap_or_default(),
        protocol: r.protocol.clone(),
        status: u32::from(r.status),
        error_class: r.error_class.map(|c| c.to_string()).unwrap_or_default(),
        input_tokens: r.input_tokens,
        cached_input_tokens: r.cached_input_tokens,
        output_tokens: r.output_tokens,
        reasoning_tokens: r.reasoning_tokens,
        ttfb_ms: r.ttfb_ms.unwrap_or(0),
        duration_ms: r.duration_ms,
        node: r.node.clone(),
        translation: r.translation.to_string(),
        upstream_model: r.upstream_model.clone().unwrap_or_default(),
    }
}

/// A record as a gateway sent it (a zero `ttfb_ms` means no first byte).
pub fn log_from_pb(r: pb::RequestLog) -> Result<RequestLog, Error> {
    Ok(RequestLog {
        attempts: r
            .attempts
            .into_iter()
            .map(attempt_from_pb)
            .collect::<Result<_, _>>()?,
        status: http_status(r.status)?,
        error_class: optional_enum(&r.error_class)?,
        // Empty: a gateway from before the field, which never translated.
        translation: optional_enum::<Translation>(&r.translation)?.unwrap_or_default(),
        upstream_model: opt(r.upstream_model),
        id: r.id,
        ts_ms: r.ts_ms,
        key_id: opt(r.key_id),
        account_id: opt(r.account_id),
        method: r.method,
        path: r.path,
        model: opt(r.model),
        protocol: r.protocol,
        input_tokens: r.input_tokens,
        cached_input_tokens: r.cached_input_tokens,
        output_tokens: r.output_tokens,
        reasoning_tokens: r.reasoning_tokens,
        ttfb_ms: (r.ttfb_ms > 0).then_some(r.ttfb_ms),
        duration_ms: r.duration_ms,
        node: r.node,
    })
}

fn summary_row_to_pb(r: &SummaryRow) -> pb::SummaryRow {
    pb::SummaryRow {
        key: r.key.clone(),
        requests: r.requests,
        errors: r.errors,
        input_tokens: r.input_tokens,
        cached_input_tokens: r.cached_input_tokens,
        output_tokens: r.output_tokens,
        reasoning_tokens: r.reasoning_tokens,
    }
}

pub fn summary_to_pb(s: &LogSummary) -> pb::LogSummary {
    pb::LogSummary {
        total: Some(summary_row_to_pb(&s.total)),
        by_model: s.by_model.iter().map(summary_row_to_pb).collect(),
        by_account: s.by_account.iter().map(summary_row_to_pb).collect(),
    }
}

// ------------------------------------------------------------------------------- reports

pub fn observation_to_pb(o: &Observation) -> pb::Observation {
    use pb::observation::Kind;
    let cooldown = |until_ms: i64| pb::Cooldown {
        until_ms,
        detail: o.detail.clone(),
    };
    let kind = match &o.kind {
        ObservationKind::RateLimited { until_ms } => Kind::RateLimited(cooldown(*until_ms)),
        ObservationKind::QuotaExhausted { until_ms } => Kind::QuotaExhausted(cooldown(*until_ms)),
        ObservationKind::AuthFailed => Kind::AuthFailed(pb::AuthFailed {
            detail: o.detail.clone(),
        }),
        ObservationKind::Deactivated => Kind::Deactivated(pb::Deactivated {
            detail: o.detail.clone(),
        }),
        ObservationKind::Usage { primary, secondary } => Kind::Usage(pb::UsageSeen {
            primary: primary.as_ref().map(window_to_pb),
            secondary: secondary.as_ref().map(window_to_pb),
        }),
    };
    pb::Observation {
        account_id: o.account_id.clone(),
        ts_ms: o.ts_ms,
        kind: Some(kind),
    }
}

/// An observation as a gateway sent it (usage observations carry no detail).
pub fn observation_from_pb(o: pb::Observation) -> Result<Observation, Error> {
    use pb::observation::Kind;
    let (kind, detail) = match o.kind {
        Some(Kind::RateLimited(c)) => (
            ObservationKind::RateLimited {
                until_ms: c.until_ms,
            },
            c.detail,
        ),
        Some(Kind::QuotaExhausted(c)) => (
            ObservationKind::QuotaExhausted {
                until_ms: c.until_ms,
            },
            c.detail,
        ),
        Some(Kind::AuthFailed(a)) => (ObservationKind::AuthFailed, a.detail),
        Some(Kind::Deactivated(d)) => (ObservationKind::Deactivated, d.detail),
        Some(Kind::Usage(u)) => (
            ObservationKind::Usage {
                primary: u.primary.as_ref().map(window_from_pb),
                secondary: u.secondary.as_ref().map(window_from_pb),
            },
            String::new(),
        ),
        None => {
            return Err(Error::invalid(
                "observation.kind",
                "is required (rate_limited, quota_exhausted, auth_failed, deactivated or usage)",
            ));
        }
    };
    Ok(Observation {
        account_id: o.account_id,
        ts_ms: o.ts_ms,
        kind,
        detail,
    })
}

pub fn report_batch_to_pb(b: &ReportBatch) -> pb::ReportBatch {
    pb::ReportBatch {
        node_id: b.node_id.clone(),
        applied_version: b.applied_version,
        logs: b.logs.iter().map(log_to_pb).collect(),
        observations: b.observations.iter().map(observation_to_pb).collect(),
        dropped: b.dropped,
    }
}

/// A report; an error names the offending record by its position.
pub fn report_batch_from_pb(b: pb::ReportBatch) -> Result<ReportBatch, Error> {
    let logs = b
        .logs
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            log_from_pb(r).map_err(|e| Error::invalid("logs", format!("record {i}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let observations = b
        .observations
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            observation_from_pb(o)
                .map_err(|e| Error::invalid("observations", format!("observation {i}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    Ok(ReportBatch {
        node_id: b.node_id,
        applied_version: b.applied_version,
        logs,
        observations,
        dropped: b.dropped,
    })
}

// ------------------------------------------------------------------------------- policy

pub fn policy_to_pb(p: &RoutingPolicy) -> pb::RoutingPolicy {
    pb::RoutingPolicy {
        strategy: p.strategy.to_string(),
        p2c_window: p.p2c_window,
        cooldown_429_secs: p.cooldown_429_secs.clone(),
        cooldown_5xx_secs: p.cooldown_5xx_secs,
        cooldown_network_secs: p.cooldown_network_secs,
        cooldown_auth_secs: p.cooldown_auth_secs,
        quota_guard: Some(pb::QuotaGuard {
            enabled: p.quota_guard.enabled,
            min_five_hour_remaining_percent: p.quota_guard.min_five_hour_remaining_percent,
            min_weekly_remaining_percent: p.quota_guard.min_weekly_remaining_percent,
        }),
        default_max_inflight: p.default_max_inflight,
        model_aliases: p
            .model_aliases
            .iter()
            .map(|a| pb::ModelAlias {
                from: a.from.clone(),
                to: a.to.clone(),
            })
            .collect(),
    }
}

/// A whole policy (validated).
pub fn policy_from_pb(p: Option<&pb::RoutingPolicy>) -> Result<RoutingPolicy, Error> {
    let Some(p) = p else {
        return Err(Error::invalid(
            "policy",
            "is required (get the policy, change it, set it)",
        ));
    };
    let Some(g) = &p.quota_guard else {
        return Err(Error::invalid(
            "policy.quota_guard",
            "is required (get the policy, change it, set it)",
        ));
    };
    let policy = RoutingPolicy {
        strategy: p.strategy.parse::<Strategy>()?,
        p2c_window: p.p2c_window,
        cooldown_429_secs: p.cooldown_429_secs.clone(),
        cooldown_5xx_secs: p.cooldown_5xx_secs,
        cooldown_network_secs: p.cooldown_network_secs,
        cooldown_auth_secs: p.cooldown_auth_secs,
        quota_guard: QuotaGuard {
            enabled: g.enabled,
            min_five_hour_remaining_percent: g.min_five_hour_remaining_percent,
            min_weekly_remaining_percent: g.min_weekly_remaining_percent,
        },
        default_max_inflight: p.default_max_inflight,
        model_aliases: p
            .model_aliases
            .iter()
            .map(|a| ModelAlias {
                from: a.from.clone(),
                to: a.to.clone(),
            })
            .collect(),
    };
    policy.validate()?;
    Ok(policy)
}

// ------------------------------------------------------------------------------- admin

pub fn admin_token_to_pb(t: &AdminToken) -> pb::AdminToken {
    pb::AdminToken {
        id: t.id.clone(),
        name: t.name.clone(),
        role: t.role.to_string(),
        prefix: t.prefix.clone(),
        created_at_ms: t.created_at_ms,
    }
}

pub fn audit_to_pb(e: &AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        id: e.id,
        ts_ms: e.ts_ms,
        actor: e.actor.clone(),
        action: e.action.clone(),
        target_kind: e.target_kind.clone(),
        target_id: e.target_id.clone(),
        detail: e.detail.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poolgate_core::{
        AccountStatus, ErrorClass, KeyStatus, ManagedBy, Provider, ReasoningEffort, StatusReason,
    };
    use prost::Message;

    fn codex_account() -> Account {
        let mut spec = AccountSpec::new(Provider::Codex, "alice@example.com");
        spec.group = "team-a".into();
        spec.tags = vec!["eu".into(), "fast".into()];
        spec.priority = -5;
        spec.note = "primary seat".into();
        spec.max_inflight = 8;
        spec.proxy_url = Some("socks5://proxy:1080".into());
        spec.model_filter = vec!["gpt-5*".into()];
        spec.base_url = Some("http://127.0.0.1:9/backend-api/codex".into());
        Account {
            id: "acc_0123456789abcdef0123".into(),
            spec,
            status: AccountStatus::Unavailable,
            status_reason: Some(StatusReason::AuthInvalid),
            identity: Some(CodexIdentity {
                subject: "auth0|user-123".into(),
                chatgpt_account_id: "9f1c2d3e-4b5a-6978-8a9b-0c1d2e3f4a5b".into(),
                chatgpt_user_id: Some("user-abc".into()),
                email: Some("alice@example.com".into()),
                plan_type: None,
            }),
            managed_by: ManagedBy::Kubernetes,
            managed_ref: Some("UpstreamAccount ns/alice".into()),
            has_credentials: true,
            created_at_ms: 1_760_000_000_000,
            updated_at_ms: 1_760_000_100_000,
        }
    }

    fn azure_account() -> Account {
        let mut spec = AccountSpec::new(Provider::AzureOpenAi, "west");
        spec.base_url = Some("https://west.openai.azure.com".into());
        spec.azure = Some(AzureConfig {
            deployment: "gpt-5".into(),
            api_version: "2025-04-01-preview".into(),
        });
        Account {
            id: "acc_2".into(),
            spec,
            status: AccountStatus::Active,
            status_reason: None,
            identity: None,
            managed_by: ManagedBy::Api,
            managed_ref: None,
            has_credentials: true,
            created_at_ms: 1,
            updated_at_ms: 2,
        }
    }

    fn key() -> PlatformKey {
        PlatformKey {
            id: "key_1".into(),
            spec: KeySpec {
                name: "ci".into(),
                expires_at_ms: Some(1_900_000_000_000),
                allowed_models: vec!["gpt-5*".into(), "o3".into()],
                model_override: Some("gpt-5".into()),
                reasoning_effort: Some(ReasoningEffort::High),
                account_groups: vec!["team-a".into()],
            },
            prefix: "pgk_AbCd1234".into(),
            hash: "ab".repeat(32),
            status: KeyStatus::Disabled,
            managed_by: ManagedBy::Api,
            managed_ref: None,
            created_at_ms: 5,
            updated_at_ms: 6,
        }
    }

    fn usage() -> UsageSnapshot {
        UsageSnapshot {
            primary: Some(UsageWindow {
                used_percent: 42.5,
                window_minutes: 300,
                resets_at_ms: Some(1_760_000_300_000),
            }),
            secondary: Some(UsageWindow {
                used_percent: 7.0,
                window_minutes: 10080,
                resets_at_ms: None,
            }),
            extra: vec![ExtraLimit {
                name: "code_review".into(),
                primary: None,
                secondary: None,
                limit_reached: false,
            }],
            captured_at_ms: 1_760_000_000_500,
        }
    }

    fn oauth() -> Credentials {
        Credentials::OAuth(OAuthTokens {
            id_token: Secret::new("id-SECRET"),
            access_token: Secret::new("access-SECRET"),
            refresh_token: Secret::new("refresh-SECRET"),
            expires_at_ms: Some(1_900_000_000_000),
            last_refresh_ms: Some(1_760_000_000_000),
        })
    }

    #[test]
    fn accounts_round_trip() {
        for a in [codex_account(), azure_account()] {
            let m = account_to_pb(&a);
            assert_eq!(m.effective_base_url, a.effective_base_url().unwrap());
            assert_eq!(account_from_pb(m).unwrap(), a);
        }
        let mut bad = account_to_pb(&azure_account());
        bad.status = "sleeping".into();
        let e = account_from_pb(bad).unwrap_err().to_string();
        assert!(
            e.contains("status") && e.contains("active, unavailable"),
            "{e}"
        );
    }

    #[test]
    fn keys_round_trip_with_their_hash() {
        let k = key();
        let back = key_state_from_pb(key_state_to_pb(&k)).unwrap();
        assert_eq!(back, wire_key(k.clone()));
        // Everything routing needs survives; the control plane's bookkeeping does not travel.
        assert_eq!(
            (&back.id, &back.hash, back.status),
            (&k.id, &k.hash, k.status)
        );
        assert_eq!(back.spec.allowed_models, k.spec.allowed_models);
        assert_eq!(back.spec.account_groups, k.spec.account_groups);
        assert_eq!(back.spec.model_override, k.spec.model_override);
        assert_eq!(back.spec.reasoning_effort, k.spec.reasoning_effort);
        assert_eq!(back.spec.expires_at_ms, k.spec.expires_at_ms);
        assert!(back.spec.name.is_empty() && back.prefix.is_empty());
        let encoded = key_state_to_pb(&k).encode_to_vec();
        assert!(!String::from_utf8_lossy(&encoded).contains(&k.spec.name));
        let bare = PlatformKey {
            spec: KeySpec {
                name: "n".into(),
                ..Default::default()
            },
            status: KeyStatus::Active,
            ..k.clone()
        };
        assert_eq!(
            key_state_from_pb(key_state_to_pb(&bare)).unwrap(),
            wire_key(bare)
        );
        let mut no_hash = key_state_to_pb(&k);
        no_hash.hash.clear();
        assert!(key_state_from_pb(no_hash).is_err());
        assert!(
            key_state_from_pb(pb::KeyState {
                key: None,
                hash: "h".into()
            })
            .is_err()
        );
    }

    #[test]
    fn account_states_carry_only_the_gateway_credential() {
        let full = AccountState {
            account: codex_account(),
            credentials: Some(oauth()),
            usage: Some(usage()),
            cooldown_until_ms: Some(1_760_000_045_000),
        };
        let m = account_state_to_pb(&full);
        let encoded = m.encode_to_vec();
        let text = String::from_utf8_lossy(&encoded);
        assert!(text.contains("access-SECRET"));
        assert!(!text.contains("refresh-SECRET") && !text.contains("id-SECRET"));
        let back = account_state_from_pb(m).unwrap();
        let wire = wire_account_state(full);
        assert_eq!(back, wire);
        let Some(Credentials::OAuth(t)) = &wire.credentials else {
            panic!("{wire:?}")
        };
        assert_eq!(t.access_token.expose(), "access-SECRET");
        assert!(t.refresh_token.is_empty() && t.id_token.is_empty());
        assert!(wire.usage.as_ref().unwrap().extra.is_empty());
        // The view is stable: applying it twice changes nothing.
        assert_eq!(wire_account_state(wire.clone()), wire);

        let key_acc = AccountState {
            account: azure_account(),
            credentials: Some(Credentials::ApiKey {
                key: Secret::new("az-key"),
            }),
            usage: None,
            cooldown_until_ms: None,
        };
        let back = account_state_from_pb(account_state_to_pb(&key_acc)).unwrap();
        assert_eq!(back, key_acc);
        assert_eq!(wire_account_state(key_acc.clone()), key_acc);
        let none = AccountState {
            credentials: None,
            ..key_acc
        };
        assert_eq!(
            account_state_from_pb(account_state_to_pb(&none)).unwrap(),
            none
        );
        assert!(account_state_from_pb(pb::AccountState::default()).is_err());
    }

    #[test]
    fn deltas_round_trip() {
        let d = Delta {
            version: 42,
            full: false,
            upsert_accounts: vec![wire_account_state(AccountState {
                account: codex_account(),
                credentials: Some(oauth()),
                usage: Some(usage()),
                cooldown_until_ms: None,
            })],
            remove_accounts: vec!["acc_gone".into()],
            upsert_keys: vec![wire_key(key())],
            remove_keys: vec!["key_gone".into()],
            policy: Some(RoutingPolicy {
                p2c_window: 5,
                // Gateways resolve aliases from the snapshot's copy of the policy.
                model_aliases: vec![ModelAlias {
                    from: "claude-*".into(),
                    to: "gpt-5".into(),
                }],
                ..Default::default()
            }),
        };
        let bytes = delta_to_pb(&d).encode_to_vec();
        let back = delta_from_pb(pb::SnapshotUpdate::decode(bytes.as_slice()).unwrap()).unwrap();
        assert_eq!(back, d);
        let empty = Delta {
            version: 1,
            full: true,
            ..Default::default()
        };
        assert_eq!(delta_from_pb(delta_to_pb(&empty)).unwrap(), empty);
        let mut bad = delta_to_pb(&d);
        if let Some(p) = bad.policy.as_mut() {
            p.p2c_window = 0;
        }
        assert!(delta_from_pb(bad).is_err());
    }

    fn log() -> RequestLog {
        RequestLog {
            id: "req_1".into(),
            ts_ms: 1_760_000_000_000,
            key_id: Some("key_1".into()),
            account_id: Some("acc_2".into()),
            attempts: vec![
                Attempt {
                    account_id: "acc_1".into(),
                    status: 429,
                    error_class: Some(ErrorClass::RateLimited),
                    duration_ms: 120,
                },
                Attempt {
                    account_id: "acc_2".into(),
                    status: 200,
                    error_class: None,
                    duration_ms: 900,
                },
            ],
            method: "POST".into(),
            path: "/v1/responses".into(),
            model: Some("gpt-5".into()),
            protocol: "openai_responses".into(),
            status: 200,
            error_class: None,
            input_tokens: 1200,
            cached_input_tokens: 1000,
            output_tokens: 350,
            reasoning_tokens: 64,
            ttfb_ms: Some(420),
            duration_ms: 2300,
            node: "gw-0".into(),
            translation: Translation::None,
            upstream_model: None,
        }
    }

    #[test]
    fn logs_round_trip() {
        let r = log();
        assert_eq!(log_from_pb(log_to_pb(&r)).unwrap(), r);
        let sparse = RequestLog {
            key_id: None,
            account_id: None,
            model: None,
            attempts: vec![],
            ttfb_ms: None,
            status: 401,
            error_class: Some(ErrorClass::Auth),
            ..r
        };
        assert_eq!(log_from_pb(log_to_pb(&sparse)).unwrap(), sparse);
        assert_eq!(log_to_pb(&sparse).translation, "none");
        assert_eq!(log_to_pb(&sparse).upstream_model, "");
        let translated = RequestLog {
            model: Some("claude-opus-4-1".into()),
            protocol: "anthropic_messages".into(),
            translation: Translation::MessagesToResponses,
            upstream_model: Some("gpt-5".into()),
            ..log()
        };
        let wire = log_to_pb(&translated);
        assert_eq!(
            (wire.translation.as_str(), wire.upstream_model.as_str()),
            ("messages_to_responses", "gpt-5")
        );
        assert_eq!(log_from_pb(wire).unwrap(), translated);
        // A record from a gateway that predates the fields: no translation, same model.
        let mut old = log_to_pb(&translated);
        old.translation.clear();
        old.upstream_model.clear();
        let back = log_from_pb(old).unwrap();
        assert_eq!(
            (back.translation, back.upstream_model),
            (Translation::None, None)
        );
        let mut bad = log_to_pb(&sparse);
        bad.translation = "pigeon".into();
        assert!(
            log_from_pb(bad)
                .unwrap_err()
                .to_string()
                .contains("translation")
        );
        let mut bad = log_to_pb(&sparse);
        bad.status = 70_000;
        assert!(log_from_pb(bad).is_err());
        let mut bad = log_to_pb(&sparse);
        bad.error_class = "weird".into();
        assert!(
            log_from_pb(bad)
                .unwrap_err()
                .to_string()
                .contains("error_class")
        );
    }

    #[test]
    fn reports_round_trip() {
        let w = UsageWindow {
            used_percent: 99.5,
            window_minutes: 300,
            resets_at_ms: Some(7),
        };
        let kinds = [
            (ObservationKind::RateLimited { until_ms: 10 }, "usage_limit"),
            (
                ObservationKind::QuotaExhausted { until_ms: 20 },
                "usage_limit_reached",
            ),
            (ObservationKind::AuthFailed, "401"),
            (ObservationKind::Deactivated, "account_deactivated"),
            (
                ObservationKind::Usage {
                    primary: Some(w),
                    secondary: None,
                },
                "",
            ),
        ];
        let batch = ReportBatch {
            node_id: "gw-0".into(),
            applied_version: 9,
            logs: vec![log()],
            observations: kinds
                .into_iter()
                .enumerate()
                .map(|(i, (kind, detail))| Observation {
                    account_id: format!("acc_{i}"),
                    ts_ms: i as i64,
                    kind,
                    detail: detail.into(),
                })
                .collect(),
            dropped: 3,
        };
        let bytes = report_batch_to_pb(&batch).encode_to_vec();
        let back =
            report_batch_from_pb(pb::ReportBatch::decode(bytes.as_slice()).unwrap()).unwrap();
        assert_eq!(back, batch);

        let mut bad = report_batch_to_pb(&batch);
        bad.observations[3].kind = None;
        let e = report_batch_from_pb(bad).unwrap_err().to_string();
        assert!(e.contains("observation 3") && e.contains("kind"), "{e}");
        let mut bad = report_batch_to_pb(&batch);
        bad.logs[0].status = 1000;
        let e = report_batch_from_pb(bad).unwrap_err().to_string();
        assert!(e.contains("record 0"), "{e}");
    }

    #[test]
    fn policy_round_trip_and_rejection() {
        let p = RoutingPolicy::default();
        assert_eq!(policy_from_pb(Some(&policy_to_pb(&p))).unwrap(), p);
        assert!(policy_from_pb(None).is_err());
        let mut bad = policy_to_pb(&p);
        bad.strategy = "random".into();
        assert!(
            policy_from_pb(Some(&bad))
                .unwrap_err()
                .to_string()
                .contains("ordered, balanced")
        );
        let mut bad = policy_to_pb(&p);
        bad.p2c_window = 0;
        assert!(
            policy_from_pb(Some(&bad))
                .unwrap_err()
                .to_string()
                .contains("p2c_window")
        );
        let mut bad = policy_to_pb(&p);
        bad.quota_guard = None;
        assert!(policy_from_pb(Some(&bad)).is_err());

        let aliased = RoutingPolicy {
            model_aliases: vec![
                ModelAlias {
                    from: "claude-*haiku*".into(),
                    to: "gpt-5-mini".into(),
                },
                ModelAlias {
                    from: "claude-*".into(),
                    to: "gpt-5".into(),
                },
            ],
            ..Default::default()
        };
        let wire = policy_to_pb(&aliased);
        assert_eq!(wire.model_aliases.len(), 2);
        assert_eq!(wire.model_aliases[0].from, "claude-*haiku*");
        assert_eq!(policy_from_pb(Some(&wire)).unwrap(), aliased);
        let mut bad = wire;
        bad.model_aliases[1].to = "gpt-*".into();
        let e = policy_from_pb(Some(&bad)).unwrap_err().to_string();
        assert!(e.contains("model_aliases") && e.contains("[1].to"), "{e}");
    }

    #[test]
    fn usage_view_picks_windows_by_length() {
        let a = azure_account();
        let u = usage();
        let m = usage_to_pb(&a, Some(&u));
        assert_eq!(m.five_hour.unwrap().window_minutes, 300);
        assert_eq!(m.weekly.unwrap().window_minutes, 10080);
        assert_eq!(m.extra.len(), 1);
        assert_eq!(m.availability, "available");
        let none = usage_to_pb(&a, None);
        assert_eq!(
            (none.availability.as_str(), none.captured_at_ms),
            ("unknown", 0)
        );
    }
}
