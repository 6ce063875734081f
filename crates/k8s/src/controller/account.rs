//! `UpstreamAccount` → one store account, credentials from the referenced Secret.

use std::future::Future;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use poolgate_core::authjson::parse_document;
use poolgate_core::snapshot::AccountState;
use poolgate_core::usage::availability_of;
use poolgate_core::{
    Account, AccountPatch, AccountSpec, AccountStatus, Availability, AzureConfig, CodexIdentity,
    Credentials, Provider, StatusReason, UsageWindow,
};
use poolgate_store::StoreError;

use super::common::{self, ActionResult, Managed, changed, deleted, ours, store_name};
use super::status::{self, Cond, Problem, Reason, not_stored};
use super::{ACTOR, Context, obj_key};
use crate::Error;
use crate::crd::{
    UpstreamAccount, UpstreamAccountStatus, UsageStatus, UsageWindowStatus, condition,
};

/// Reconciles one `UpstreamAccount`: adds the finalizer, keeps the store account in step with
/// the spec and the Secret, writes the status; on deletion removes the account from the store.
pub async fn reconcile(ua: Arc<UpstreamAccount>, ctx: Arc<Context>) -> Result<Action, Error> {
    common::reconcile(ua, ctx).await
}

impl Managed for UpstreamAccount {
    fn apply(&self, api: &Api<Self>, ctx: &Context) -> impl Future<Output = ActionResult> + Send {
        apply(api, self, ctx)
    }
    fn cleanup(&self, ctx: &Context) -> impl Future<Output = ActionResult> + Send {
        cleanup(self, ctx)
    }
}

/// The store's name for the resource, e.g. `UpstreamAccount pool/main`.
fn managed_ref(ua: &UpstreamAccount) -> String {
    obj_key(ua)
}

async fn apply(
    api: &Api<UpstreamAccount>,
    ua: &UpstreamAccount,
    ctx: &Context,
) -> Result<Action, Error> {
    let outcome = match sync(ua, ctx).await {
        Ok(outcome) => outcome,
        Err(e) => return Err(common::failed(api, ua, e).await),
    };
    let (state, problem) = match outcome {
        Ok(account) => (load_state(ctx, &account.id).await?, None),
        Err((problem, existing)) => {
            let state = match existing {
                Some(a) => load_state(ctx, &a.id).await?,
                None => None,
            };
            (state, Some(problem))
        }
    };
    let new = build_status(
        ua,
        state.as_ref(),
        problem.as_ref(),
        poolgate_store::now_ms(),
    );
    common::conclude(api, ua, ctx, new, problem).await
}

async fn load_state(ctx: &Context, id: &str) -> Result<Option<AccountState>, Error> {
    Ok(ctx
        .store
        .load_account_states(&[id.to_string()])
        .await?
        .pop())
}

/// Brings the store in step with the resource. `Ok(Err(..))` is a problem a person must fix,
/// with the account as it stays in the store (if any).
async fn sync(
    ua: &UpstreamAccount,
    ctx: &Context,
) -> Result<Result<Account, (Problem, Option<Account>)>, Error> {
    let mref = managed_ref(ua);
    let existing = find_account(ctx, ua, &mref).await?;
    let spec = match desired_spec(ua) {
        Ok(s) => s,
        Err(p) => return Ok(Err((p, existing))),
    };
    let loaded = match read_credentials(ctx, ua, spec.provider).await? {
        Ok(l) => l,
        Err(p) => return Ok(Err((p, existing))),
    };
    match existing {
        None => create(ctx, ua, spec, loaded, &mref).await,
        Some(account) => update(ctx, ua, account, spec, loaded).await,
    }
}

/// The account this resource owns: the one its status names (checked to really be ours), or
/// the one the store lists under its reference (after a lost status write).
async fn find_account(
    ctx: &Context,
    ua: &UpstreamAccount,
    mref: &str,
) -> Result<Option<Account>, Error> {
    if let Some(id) = ua.status.as_ref().and_then(|s| s.account_id.as_deref())
        && let Some(a) = ours(ctx.store.get_account(id).await, mref)?
    {
        return Ok(Some(a));
    }
    Ok(ctx.store.find_managed_account(mref).await?)
}

/// Core's field names the resource spells differently.
const SPEC_FIELDS: &[(&str, &str)] = &[
    ("max_inflight", "maxInFlight"),
    ("proxy_url", "proxyUrl"),
    ("model_filter", "models"),
    ("base_url", "baseUrl"),
    ("azure.api_version", "azure.apiVersion"),
];

fn invalid_spec(e: &poolgate_core::Error) -> Problem {
    status::invalid_spec(e, SPEC_FIELDS)
}

fn desired_spec(ua: &UpstreamAccount) -> Result<AccountSpec, Problem> {
    let s = &ua.spec;
    let provider: Provider = s.provider.parse().map_err(|e| invalid_spec(&e))?;
    let mut spec = AccountSpec::new(provider, store_name(ua));
    spec.group = s.group.clone().unwrap_or_default();
    spec.tags = s.tags.clone();
    spec.priority = s.priority.unwrap_or(0);
    spec.note = s.note.clone().unwrap_or_default();
    spec.enabled = s.enabled.unwrap_or(true);
    spec.max_inflight = s.max_in_flight.unwrap_or(0);
    spec.proxy_url = s.proxy_url.clone();
    spec.model_filter = s.models.clone();
    spec.base_url = s.base_url.clone();
    spec.azure = s.azure.as_ref().map(|a| AzureConfig {
        deployment: a.deployment.clone(),
        api_version: a.api_version.clone(),
    });
    spec.validate().map_err(|e| invalid_spec(&e))
}

/// Credentials read from the Secret.
struct Loaded {
    credentials: Credentials,
    identity: Option<CodexIdentity>,
}

async fn read_credentials(
    ctx: &Context,
    ua: &UpstreamAccount,
    provider: Provider,
) -> Result<Result<Loaded, Problem>, Error> {
    let ns = ua.namespace().unwrap_or_default();
    let r = &ua.spec.credentials_secret_ref;
    let key = r.key_or_default(provider.as_str());
    let (what, bad) = if provider.uses_oauth() {
        ("a Codex auth.json", Reason::InvalidAuthJson)
    } else {
        ("an API key", Reason::InvalidApiKey)
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(secret) = secrets.get_opt(&r.name).await? else {
        return Ok(Err(Problem::new(
            Reason::SecretNotFound,
            format!(
                "Secret {ns}/{} not found; create it with {what} under key {key:?}",
                r.name
            ),
        )));
    };
    let data = secret.data.unwrap_or_default();
    let Some(bytes) = data.get(key) else {
        let have: Vec<&str> = data.keys().map(String::as_str).collect();
        return Ok(Err(Problem::new(
            Reason::SecretKeyMissing,
            format!(
                "Secret {ns}/{} has no key {key:?} (it has: {}); add {what} under that key or \
                 set spec.credentialsSecretRef.key",
                r.name,
                if have.is_empty() {
                    "none".to_string()
                } else {
                    have.join(", ")
                }
            ),
        )));
    };
    let place = format!("Secret {ns}/{} key {key:?}", r.name);
    let Ok(text) = std::str::from_utf8(&bytes.0) else {
        return Ok(Err(Problem::new(bad, format!("{place} is not UTF-8 text"))));
    };
    let loaded = if provider.uses_oauth() {
        let mut items = parse_document(text);
        if items.len() != 1 {
            return Ok(Err(Problem::new(
                bad,
                format!(
                    "{place} holds {} logins; an UpstreamAccount takes exactly one",
                    items.len()
                ),
            )));
        }
        match items.pop() {
            Some(Ok(auth)) => Loaded {
                credentials: Credentials::OAuth(auth.tokens),
                identity: Some(auth.identity),
            },
            Some(Err(e)) => return Ok(Err(Problem::new(bad, format!("{place}: {e}")))),
            None => return Ok(Err(Problem::new(bad, format!("{place} is empty")))),
        }
    } else {
        Loaded {
            credentials: Credentials::ApiKey {
                key: poolgate_core::Secret::new(text.trim()),
            },
            identity: None,
        }
    };
    if let Err(e) = loaded.credentials.check_for(provider) {
        return Ok(Err(Problem::new(bad, format!("{place}: {e}"))));
    }
    Ok(Ok(loaded))
}

/// A store rejection of what the resource asks for, as a problem to report.
fn rejected(e: StoreError) -> Result<Problem, Error> {
    match e {
        StoreError::AlreadyExists { .. } => Ok(Problem::new(
            Reason::DuplicateLogin,
            format!(
                "{e}; one Codex login can back one account only: delete the other account \
                 (poolctl delete account ID, or its UpstreamAccount) or point \
                 spec.credentialsSecretRef at another login"
            ),
        )),
        StoreError::Invalid(poolgate_core::Error::Invalid {
            field: "credentials",
            reason,
        }) => Ok(Problem::new(
            Reason::InvalidApiKey,
            format!("credentials: {reason}"),
        )),
        StoreError::Invalid(e) => Ok(invalid_spec(&e)),
        other => Err(other.into()),
    }
}

async fn create(
    ctx: &Context,
    ua: &UpstreamAccount,
    spec: AccountSpec,
    loaded: Loaded,
    mref: &str,
) -> Result<Result<Account, (Problem, Option<Account>)>, Error> {
    match ctx
        .store
        .create_managed_account(spec, Some(loaded.credentials), loaded.identity, mref, ACTOR)
        .await
    {
        Ok(account) => {
            tracing::info!(object = %mref, account = %account.id, "created account in the store");
            ctx.normal(
                ua,
                "Created",
                format!("created account {} in poolgate's store", account.id),
            )
            .await;
            Ok(Ok(account))
        }
        Err(e) => Ok(Err((rejected(e)?, None))),
    }
}

async fn update(
    ctx: &Context,
    ua: &UpstreamAccount,
    account: Account,
    spec: AccountSpec,
    loaded: Loaded,
) -> Result<Result<Account, (Problem, Option<Account>)>, Error> {
    if account.spec.provider != spec.provider {
        return Ok(Err((
            Problem::new(
                Reason::InvalidSpec,
                format!(
                    "spec.provider cannot change from {} to {} (account {}); create a new \
                     UpstreamAccount instead",
                    account.spec.provider, spec.provider, account.id
                ),
            ),
            Some(account),
        )));
    }
    if let (Some(have), Some(want)) = (&account.identity, &loaded.identity)
        && have.key() != want.key()
    {
        return Ok(Err((
            Problem::new(
                Reason::IdentityMismatch,
                format!(
                    "the Secret now holds another Codex login than account {} was created with \
                     (its subject and chatgpt_account_id differ); restore the Secret, or create \
                     a new UpstreamAccount for the other login",
                    account.id
                ),
            ),
            Some(account),
        )));
    }
    let mut patch = spec_patch(&account.spec, &spec);
    let spec_changed = !patch.is_empty();
    let stored = ctx.store.get_credentials(&account.id).await?;
    if needs_write(stored.as_ref(), &loaded.credentials) {
        if let Err(e) = ctx
            .store
            .set_credentials(&account.id, &loaded.credentials, ACTOR)
            .await
        {
            return Ok(Err((rejected(e)?, Some(account))));
        }
        // New credentials deserve a new chance, as a re-imported login gets.
        if account.status == AccountStatus::Unavailable
            && matches!(
                account.status_reason,
                Some(StatusReason::AuthInvalid | StatusReason::Deactivated)
            )
        {
            patch.status = Some((AccountStatus::Active, None));
        }
        tracing::info!(object = %obj_key(ua), account = %account.id, "credentials rotated from the Secret");
        ctx.normal(
            ua,
            "CredentialsRotated",
            format!(
                "new credentials from Secret {} reached account {}",
                ua.spec.credentials_secret_ref.name, account.id
            ),
        )
        .await;
    }
    if patch.is_empty() {
        return Ok(Ok(account));
    }
    match ctx.store.update_account(&account.id, &patch, ACTOR).await {
        Ok(updated) => {
            if spec_changed {
                ctx.normal(
                    ua,
                    "Updated",
                    format!("applied the spec to account {}", updated.id),
                )
                .await;
            }
            Ok(Ok(updated))
        }
        Err(e) => Ok(Err((rejected(e)?, Some(account)))),
    }
}

/// The fields of `want` that differ from `have`.
fn spec_patch(have: &AccountSpec, want: &AccountSpec) -> AccountPatch {
    AccountPatch {
        name: changed(&have.name, &want.name),
        group: changed(&have.group, &want.group),
        tags: changed(&have.tags, &want.tags),
        priority: changed(&have.priority, &want.priority),
        note: changed(&have.note, &want.note),
        enabled: changed(&have.enabled, &want.enabled),
        max_inflight: changed(&have.max_inflight, &want.max_inflight),
        proxy_url: changed(&have.proxy_url, &want.proxy_url),
        model_filter: changed(&have.model_filter, &want.model_filter),
        base_url: changed(&have.base_url, &want.base_url),
        azure: changed(&have.azure, &want.azure),
        status: None,
    }
}

/// Whether the Secret's credentials must replace the stored ones. API keys follow the
/// Secret. OAuth tokens move on in the store without it (the leader refreshes them, and a
/// refresh token works once), so only a login newer than the stored tokens replaces them:
/// re-applying the Secret's stale tokens would break the account.
fn needs_write(stored: Option<&Credentials>, from_secret: &Credentials) -> bool {
    match (stored, from_secret) {
        (None, _) => true,
        (Some(Credentials::OAuth(have)), Credentials::OAuth(want)) => {
            let same = have.access_token == want.access_token
                && have.refresh_token == want.refresh_token
                && have.id_token == want.id_token;
            let newer = match (want.expires_at_ms, have.expires_at_ms) {
                (Some(w), Some(h)) => w > h,
                (Some(_), None) => true,
                (None, _) => false,
            };
            !same && newer
        }
        (Some(have), want) => have != want,
    }
}

fn window(w: &UsageWindow) -> Option<UsageWindowStatus> {
    w.used_percent.is_finite().then(|| UsageWindowStatus {
        used_percent: (w.used_percent * 10.0).round() / 10.0,
        window_minutes: Some(w.window_minutes),
        resets_at: w.resets_at_ms.and_then(status::rfc3339),
    })
}

fn unavailable_reason(r: Option<StatusReason>) -> Reason {
    match r {
        Some(StatusReason::AuthInvalid) => Reason::AuthInvalid,
        Some(StatusReason::Deactivated) => Reason::Deactivated,
        Some(StatusReason::QuotaExhausted) => Reason::QuotaExhausted,
        Some(StatusReason::RegionBlocked) => Reason::RegionBlocked,
        Some(StatusReason::UsageUnreachable) => Reason::UsageUnreachable,
        None => Reason::Unavailable,
    }
}

fn available_condition(s: &AccountState, now_ms: i64) -> Cond {
    let a = &s.account;
    let cond = |ok: bool, reason: Reason, message: String| {
        Cond::new(condition::AVAILABLE, Some(ok), reason, message)
    };
    if !a.spec.enabled {
        return cond(
            false,
            Reason::Disabled,
            "spec.enabled is false: the account takes no traffic".into(),
        );
    }
    if a.status == AccountStatus::Unavailable {
        let reason = unavailable_reason(a.status_reason);
        return cond(
            false,
            reason,
            format!(
                "poolgate marked the account unavailable ({})",
                a.status_reason.map_or("no reason given", |r| r.as_str())
            ),
        );
    }
    if let Some(until) = s.cooldown_until_ms.filter(|u| *u > now_ms) {
        return cond(
            false,
            Reason::CoolingDown,
            format!(
                "cooling down until {} after rate-limit or quota errors",
                status::rfc3339(until).unwrap_or_default()
            ),
        );
    }
    match availability_of(s.usage.as_ref()) {
        Availability::Unavailable => {
            let reset = s
                .usage
                .as_ref()
                .and_then(|u| u.exhausted_until())
                .and_then(status::rfc3339)
                .map(|t| format!("; it resets at {t}"))
                .unwrap_or_default();
            cond(
                false,
                Reason::QuotaExhausted,
                format!("a usage window is used up{reset}"),
            )
        }
        Availability::Available => cond(
            true,
            Reason::Available,
            "quota left in both usage windows".into(),
        ),
        Availability::PrimaryWindowAvailableOnly => cond(
            true,
            Reason::PrimaryWindowOnly,
            "quota left in the only usage window reported".into(),
        ),
        Availability::Unknown => cond(
            true,
            Reason::NoUsageYet,
            "no usage seen yet; the account takes traffic".into(),
        ),
    }
}

/// The status for what the store holds (`state`) and the problem, if any, that stopped the
/// reconcile. Pure, so an unchanged object yields an identical status.
fn build_status(
    ua: &UpstreamAccount,
    state: Option<&AccountState>,
    problem: Option<&Problem>,
    now_ms: i64,
) -> UpstreamAccountStatus {
    let old = ua.status.clone().unwrap_or_default();
    let generation = ua.metadata.generation;
    let secret = format!(
        "Secret {}/{}",
        ua.namespace().unwrap_or_default(),
        ua.spec.credentials_secret_ref.name
    );
    let stored = state.map(|s| {
        let id = &s.account.id;
        (
            format!("account {id} keeps its last applied settings and credentials"),
            format!("account {id} matches this resource"),
        )
    });
    let ready = status::ready(problem, stored, "account");
    let auth = match (problem, state) {
        (Some(p), _) if p.reason.is_credential_problem() => Cond::new(
            condition::AUTH_VALID,
            Some(false),
            p.reason,
            p.message.clone(),
        ),
        (_, Some(s)) => match (s.account.status, s.account.status_reason) {
            (AccountStatus::Unavailable, Some(StatusReason::AuthInvalid)) => Cond::new(
                condition::AUTH_VALID,
                Some(false),
                Reason::AuthInvalid,
                format!(
                    "the upstream rejected the credentials; put a fresh login or key into {secret}"
                ),
            ),
            (AccountStatus::Unavailable, Some(StatusReason::Deactivated)) => Cond::new(
                condition::AUTH_VALID,
                Some(false),
                Reason::Deactivated,
                "the upstream deactivated this account".into(),
            ),
            _ => Cond::new(
                condition::AUTH_VALID,
                Some(true),
                Reason::CredentialsLoaded,
                format!("credentials from {secret}"),
            ),
        },
        (_, None) => not_stored(condition::AUTH_VALID, None, "account"),
    };
    let available = match state {
        Some(s) => available_condition(s, now_ms),
        None => not_stored(condition::AVAILABLE, Some(false), "account"),
    };
    let conditions = status::settle(
        &old.conditions,
        vec![ready, available, auth],
        generation,
        &status::now_rfc3339(),
    );
    let usage = state.and_then(|s| s.usage.as_ref());
    UpstreamAccountStatus {
        observed_generation: generation,
        conditions,
        account_id: state.map(|s| s.account.id.clone()),
        availability: state.map(|s| availability_of(s.usage.as_ref()).as_str().to_string()),
        usage: usage.map(|u| UsageStatus {
            five_hour: u.five_hour().and_then(window),
            seven_day: u.weekly().and_then(window),
        }),
        cooldown_until: state
            .and_then(|s| s.cooldown_until_ms)
            .filter(|u| *u > now_ms)
            .and_then(status::rfc3339),
        last_refresh: usage.and_then(|u| status::rfc3339(u.captured_at_ms)),
    }
}

async fn cleanup(ua: &UpstreamAccount, ctx: &Context) -> Result<Action, Error> {
    let mref = managed_ref(ua);
    if let Some(account) = find_account(ctx, ua, &mref).await? {
        deleted(ctx.store.delete_account(&account.id, ACTOR).await)?;
        tracing::info!(object = %mref, account = %account.id, "removed account from the store");
        ctx.normal(
            ua,
            "Deleted",
            format!("removed account {} from poolgate's store", account.id),
        )
        .await;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use poolgate_core::{OAuthTokens, Secret as Plain};

    fn oauth(access: &str, exp: Option<i64>) -> Credentials {
        Credentials::OAuth(OAuthTokens {
            id_token: Plain::new("id"),
            access_token: Plain::new(access),
            refresh_token: Plain::new(format!("r-{access}")),
            expires_at_ms: exp,
            last_refresh_ms: None,
        })
    }

    #[test]
    fn stale_secret_tokens_never_overwrite_refreshed_ones() {
        let stored = oauth("refreshed", Some(2_000));
        // The Secret still holds the login the account started from.
        assert!(!needs_write(Some(&stored), &oauth("original", Some(1_000))));
        assert!(!needs_write(
            Some(&stored),
            &oauth("refreshed", Some(2_000))
        ));
        // A new login (later expiry) replaces them.
        assert!(needs_write(Some(&stored), &oauth("fresh", Some(3_000))));
        assert!(needs_write(None, &oauth("any", None)));
        let key = |k: &str| Credentials::ApiKey { key: Plain::new(k) };
        assert!(!needs_write(Some(&key("sk-1")), &key("sk-1")));
        assert!(needs_write(Some(&key("sk-1")), &key("sk-2")));
    }

    fn spec_field(field: &str) -> String {
        status::spec_field(field, SPEC_FIELDS)
    }

    #[test]
    fn core_fields_are_named_as_the_resource_spells_them() {
        assert_eq!(spec_field("max_inflight"), "spec.maxInFlight");
        assert_eq!(spec_field("model_filter"), "spec.models");
        assert_eq!(spec_field("azure.api_version"), "spec.azure.apiVersion");
        assert_eq!(spec_field("group"), "spec.group");
        let p = invalid_spec(&poolgate_core::Error::invalid(
            "base_url",
            "URL has no host",
        ));
        assert_eq!(p.reason, Reason::InvalidSpec);
        assert_eq!(p.message, "spec.baseUrl: URL has no host");
    }
}
