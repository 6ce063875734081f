//! `PlatformKey` → a generated key in a Secret the resource owns, and its hash in the store.
//!
//! The Secret is the only place the plaintext lives. It is written before the store row, so
//! whatever fails in between, the next reconcile finds the key in the Secret and stores its
//! hash: a restart never generates a second key, and no stored hash lacks its plaintext.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use poolgate_core::key::{PLATFORM_KEY_PREFIX, format_secret, hash_secret, visible_prefix};
use poolgate_core::{KeyPatch, KeySpec, KeyStatus, ManagedBy, PlatformKey as StoredKey};
use poolgate_store::StoreError;

use super::common::{self, ActionResult, Managed, changed, deleted, ours, store_name};
use super::status::{self, Cond, Problem, Reason, not_stored};
use super::{ACTOR, Context, FIELD_MANAGER, PLATFORM_KEY_SECRET_LABEL, obj_key};
use crate::Error;
use crate::crd::{DEFAULT_API_KEY_KEY, PlatformKey, PlatformKeyStatus, condition};

/// Reconciles one `PlatformKey`: adds the finalizer, makes sure its Secret holds a key and the
/// store holds that key's hash with the spec's policy, writes the status; on deletion revokes
/// the key (the Secret goes with the resource through its owner reference).
pub async fn reconcile(pk: Arc<PlatformKey>, ctx: Arc<Context>) -> Result<Action, Error> {
    common::reconcile(pk, ctx).await
}

impl Managed for PlatformKey {
    fn apply(&self, api: &Api<Self>, ctx: &Context) -> impl Future<Output = ActionResult> + Send {
        apply(api, self, ctx)
    }
    fn cleanup(&self, ctx: &Context) -> impl Future<Output = ActionResult> + Send {
        cleanup(self, ctx)
    }
}

/// Whether `text` is a key as poolgate generates them: `pgk_` and 43 URL-safe base64
/// characters (256 random bits).
fn is_platform_key(text: &str) -> bool {
    text.strip_prefix(PLATFORM_KEY_PREFIX).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

fn generate_key() -> Result<String, Error> {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| Error::Random(e.to_string()))?;
    Ok(format_secret(PLATFORM_KEY_PREFIX, &random))
}

/// Whether the Secret names this resource (by uid) as its owner.
fn owned_by(secret: &Secret, uid: &str) -> bool {
    secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid)
}

/// Core's field names the resource spells differently.
const SPEC_FIELDS: &[(&str, &str)] = &[
    ("allowed_models", "allowedModels"),
    ("model_override", "modelOverride"),
    ("reasoning_effort", "reasoningEffort"),
    ("account_groups", "accountGroups"),
];

fn invalid_spec(e: &poolgate_core::Error) -> Problem {
    status::invalid_spec(e, SPEC_FIELDS)
}

fn desired_spec(pk: &PlatformKey) -> Result<(KeySpec, KeyStatus), Problem> {
    let s = &pk.spec;
    let expires_at_ms = match &s.expires_at {
        Some(t) => Some(
            t.parse::<Timestamp>()
                .map_err(|e| {
                    Problem::new(
                        Reason::InvalidSpec,
                        format!("spec.expiresAt: {t:?} is not an RFC 3339 time ({e})"),
                    )
                })?
                .as_millisecond(),
        ),
        None => None,
    };
    let reasoning_effort = s
        .reasoning_effort
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| invalid_spec(&e))?;
    let spec = KeySpec {
        name: store_name(pk),
        expires_at_ms,
        allowed_models: s.allowed_models.clone(),
        model_override: s.model_override.clone(),
        reasoning_effort,
        account_groups: s.account_groups.clone(),
    }
    .validate()
    .map_err(|e| invalid_spec(&e))?;
    let status = if s.disabled.unwrap_or(false) {
        KeyStatus::Disabled
    } else {
        KeyStatus::Active
    };
    Ok((spec, status))
}

/// A DNS subdomain name of at most 253 characters, as Secret names must be.
fn valid_secret_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

async fn apply(api: &Api<PlatformKey>, pk: &PlatformKey, ctx: &Context) -> Result<Action, Error> {
    let secret_name = pk.spec.secret_name_for(&pk.name_any());
    let (key, problem) = match sync(pk, ctx, &secret_name).await {
        Ok(Ok(key)) => (Some(key), None),
        Ok(Err((problem, existing))) => (existing, Some(problem)),
        Err(e) => return Err(common::failed(api, pk, e).await),
    };
    let new = build_status(
        pk,
        key.as_ref(),
        problem.as_ref(),
        &secret_name,
        poolgate_store::now_ms(),
    );
    common::conclude(api, pk, ctx, new, problem).await
}

/// The key this resource owns: the one its status names (checked to really be ours), or the
/// one the store lists under its reference.
async fn find_key(ctx: &Context, pk: &PlatformKey, mref: &str) -> Result<Option<StoredKey>, Error> {
    if let Some(id) = pk.status.as_ref().and_then(|s| s.key_id.as_deref())
        && let Some(k) = ours(ctx.store.get_key(id).await, mref)?
    {
        return Ok(Some(k));
    }
    Ok(ctx.store.find_managed_key(mref).await?)
}

type Synced = Result<StoredKey, (Problem, Option<StoredKey>)>;

async fn sync(pk: &PlatformKey, ctx: &Context, secret_name: &str) -> Result<Synced, Error> {
    let mref = obj_key(pk);
    let existing = find_key(ctx, pk, &mref).await?;
    let (spec, key_status) = match desired_spec(pk) {
        Ok(s) => s,
        Err(p) => return Ok(Err((p, existing))),
    };
    if !valid_secret_name(secret_name) {
        return Ok(Err((
            Problem::new(
                Reason::InvalidSpec,
                format!(
                    "the Secret name {secret_name:?} is not a valid name (at most 253 lowercase \
                     letters, digits, '-' and '.'); set spec.secretName"
                ),
            ),
            existing,
        )));
    }
    let uid = pk.uid().ok_or(Error::MissingField("uid"))?;
    let ns = pk.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let current = secrets.get_opt(secret_name).await?;
    let in_secret = match &current {
        Some(s) if !owned_by(s, &uid) => {
            return Ok(Err((
                Problem::new(
                    Reason::SecretConflict,
                    format!(
                        "Secret {ns}/{secret_name} exists and is not owned by this PlatformKey; \
                         the controller never overwrites it: delete that Secret or create the \
                         PlatformKey under another spec.secretName"
                    ),
                ),
                existing,
            )));
        }
        Some(s) => s
            .data
            .as_ref()
            .and_then(|d| d.get(DEFAULT_API_KEY_KEY))
            .and_then(|b| std::str::from_utf8(&b.0).ok())
            .filter(|t| is_platform_key(t))
            .map(str::to_string),
        None => None,
    };
    let plaintext =
        match in_secret {
            Some(p) => p,
            None => {
                let p = generate_key()?;
                write_secret(&secrets, pk, secret_name, current, &p).await?;
                tracing::info!(object = %mref, secret = %secret_name, "generated a platform key");
                ctx.normal(pk, "KeyGenerated", format!(
                    "wrote a new platform key to Secret {secret_name} (key {DEFAULT_API_KEY_KEY:?})"
                )).await;
                p
            }
        };
    let hash = hash_secret(&plaintext);
    let wanted = StoredKey {
        id: String::new(),
        spec,
        prefix: visible_prefix(&plaintext),
        hash,
        status: key_status,
        managed_by: ManagedBy::Kubernetes,
        managed_ref: Some(mref),
        created_at_ms: 0,
        updated_at_ms: 0,
    };
    match existing {
        None => create(ctx, pk, wanted, secret_name, None).await,
        Some(k) if k.hash == wanted.hash => update(ctx, pk, k, wanted).await,
        Some(k) => {
            // The Secret holds another key than the stored one (it was deleted or edited):
            // revoke the old key first, so no two stored keys ever share a reference.
            deleted(ctx.store.delete_key(&k.id, ACTOR).await)?;
            create(ctx, pk, wanted, secret_name, Some(&k.id)).await
        }
    }
}

async fn write_secret(
    secrets: &Api<Secret>,
    pk: &PlatformKey,
    name: &str,
    current: Option<Secret>,
    plaintext: &str,
) -> Result<(), Error> {
    let owner = pk
        .controller_owner_ref(&())
        .ok_or(Error::MissingField("uid"))?;
    let params = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.to_string()),
    };
    let value = ByteString(plaintext.as_bytes().to_vec());
    match current {
        // Our own Secret without a usable key: put one in, keeping what else it holds.
        // `replace` carries the resourceVersion read, so a concurrent edit is not lost.
        Some(mut secret) => {
            secret
                .data
                .get_or_insert_with(BTreeMap::new)
                .insert(DEFAULT_API_KEY_KEY.to_string(), value);
            secret
                .metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(PLATFORM_KEY_SECRET_LABEL.to_string(), "true".to_string());
            secrets.replace(name, &params, &secret).await?;
        }
        None => {
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: pk.namespace(),
                    labels: Some(BTreeMap::from([
                        (
                            "app.kubernetes.io/managed-by".to_string(),
                            "poolgate".to_string(),
                        ),
                        (PLATFORM_KEY_SECRET_LABEL.to_string(), "true".to_string()),
                    ])),
                    owner_references: Some(vec![owner]),
                    ..Default::default()
                },
                type_: Some("Opaque".to_string()),
                data: Some(BTreeMap::from([(DEFAULT_API_KEY_KEY.to_string(), value)])),
                ..Default::default()
            };
            secrets.create(&params, &secret).await?;
        }
    }
    Ok(())
}

fn rejected(e: StoreError, secret_name: &str) -> Result<Problem, Error> {
    match e {
        StoreError::AlreadyExists { .. } => Ok(Problem::new(
            Reason::KeyConflict,
            format!(
                "{e}: the key in Secret {secret_name} is already stored for another platform \
                 key; delete the Secret and the controller generates a new key"
            ),
        )),
        StoreError::Invalid(e) => Ok(invalid_spec(&e)),
        other => Err(other.into()),
    }
}

async fn create(
    ctx: &Context,
    pk: &PlatformKey,
    wanted: StoredKey,
    secret_name: &str,
    replaces: Option<&str>,
) -> Result<Synced, Error> {
    match ctx.store.create_key(wanted, ACTOR).await {
        Ok(key) => {
            let note = match replaces {
                Some(old) => format!(
                    "the key in Secret {secret_name} changed: revoked key {old}, stored key {}",
                    key.id
                ),
                None => format!("stored key {} ({}) in poolgate's store", key.id, key.prefix),
            };
            let reason = if replaces.is_some() {
                "KeyRotated"
            } else {
                "Created"
            };
            tracing::info!(object = %obj_key(pk), key = %key.id, "{note}");
            ctx.normal(pk, reason, note).await;
            Ok(Ok(key))
        }
        Err(e) => Ok(Err((rejected(e, secret_name)?, None))),
    }
}

async fn update(
    ctx: &Context,
    pk: &PlatformKey,
    have: StoredKey,
    want: StoredKey,
) -> Result<Synced, Error> {
    let (h, w) = (&have.spec, &want.spec);
    let patch = KeyPatch {
        name: changed(&h.name, &w.name),
        expires_at_ms: changed(&h.expires_at_ms, &w.expires_at_ms),
        allowed_models: changed(&h.allowed_models, &w.allowed_models),
        model_override: changed(&h.model_override, &w.model_override),
        reasoning_effort: changed(&h.reasoning_effort, &w.reasoning_effort),
        account_groups: changed(&h.account_groups, &w.account_groups),
        status: changed(&have.status, &want.status),
    };
    if patch.is_empty() {
        return Ok(Ok(have));
    }
    match ctx.store.update_key(&have.id, &patch, ACTOR).await {
        Ok(key) => {
            ctx.normal(pk, "Updated", format!("applied the spec to key {}", key.id))
                .await;
            Ok(Ok(key))
        }
        Err(StoreError::Invalid(e)) => Ok(Err((invalid_spec(&e), Some(have)))),
        Err(e) => Err(e.into()),
    }
}

fn build_status(
    pk: &PlatformKey,
    key: Option<&StoredKey>,
    problem: Option<&Problem>,
    secret_name: &str,
    now_ms: i64,
) -> PlatformKeyStatus {
    let old = pk.status.clone().unwrap_or_default();
    let generation = pk.metadata.generation;
    let stored = key.map(|k| {
        let id = &k.id;
        (
            format!("key {id} keeps its last applied settings"),
            format!(
                "key {id} is stored; its plaintext is in Secret {secret_name} under {DEFAULT_API_KEY_KEY:?}"
            ),
        )
    });
    let ready = status::ready(problem, stored, "key");
    let available = match key {
        None => not_stored(condition::AVAILABLE, Some(false), "key"),
        Some(k) if k.status == KeyStatus::Disabled => Cond::new(
            condition::AVAILABLE,
            Some(false),
            Reason::Disabled,
            "spec.disabled is true: the gateway refuses the key".into(),
        ),
        Some(k) if !k.usable_at(now_ms) => Cond::new(
            condition::AVAILABLE,
            Some(false),
            Reason::Expired,
            format!(
                "the key expired at {}",
                k.spec
                    .expires_at_ms
                    .and_then(status::rfc3339)
                    .unwrap_or_default()
            ),
        ),
        Some(_) => Cond::new(
            condition::AVAILABLE,
            Some(true),
            Reason::Active,
            "clients can use the key".into(),
        ),
    };
    PlatformKeyStatus {
        observed_generation: generation,
        conditions: status::settle(
            &old.conditions,
            vec![ready, available],
            generation,
            &status::now_rfc3339(),
        ),
        key_id: key.map(|k| k.id.clone()),
        secret_name: Some(secret_name.to_string()),
        key_prefix: key.map(|k| k.prefix.clone()),
    }
}

async fn cleanup(pk: &PlatformKey, ctx: &Context) -> Result<Action, Error> {
    let mref = obj_key(pk);
    if let Some(key) = find_key(ctx, pk, &mref).await? {
        deleted(ctx.store.delete_key(&key.id, ACTOR).await)?;
        tracing::info!(object = %mref, key = %key.id, "revoked platform key");
        ctx.normal(
            pk,
            "Revoked",
            format!("revoked key {} (deleted from poolgate's store)", key.id),
        )
        .await;
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_generated_keys_only() {
        let k = generate_key().unwrap();
        assert!(is_platform_key(&k));
        assert_ne!(k, generate_key().unwrap());
        assert!(!is_platform_key(&format!("{k}\n")));
        assert!(!is_platform_key("pgk_short"));
        assert!(!is_platform_key(&k.replacen("pgk_", "sk-_", 1)));
        assert!(!is_platform_key(&format!("pgk_{}", "+".repeat(43))));
    }

    #[test]
    fn secret_names() {
        assert!(valid_secret_name("ci-platform-key"));
        assert!(valid_secret_name("a.b-c"));
        assert!(!valid_secret_name("Upper"));
        assert!(!valid_secret_name("-lead"));
        assert!(!valid_secret_name("a..b"));
        assert!(!valid_secret_name(&"a".repeat(254)));
    }
}
