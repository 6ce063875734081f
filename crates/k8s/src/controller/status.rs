//! Conditions, reasons and the server-side apply of `.status`.

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::FIELD_MANAGER;
use crate::crd::Condition;

/// The `reason` of a condition: CamelCase, one per situation a person (or a script) tells
/// apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The store holds what the resource asks for.
    Reconciled,
    /// The spec breaks a rule (the message names the field).
    InvalidSpec,
    /// The referenced Secret does not exist.
    SecretNotFound,
    /// The Secret exists but lacks the key.
    SecretKeyMissing,
    /// The Secret's auth.json cannot be read as one Codex login.
    InvalidAuthJson,
    /// The Secret's API key is empty, too long or not text.
    InvalidApiKey,
    /// Another account already holds this Codex login.
    DuplicateLogin,
    /// The Secret now holds a different Codex login than the account was created with.
    IdentityMismatch,
    /// The Secret a platform key should be written to belongs to someone else.
    SecretConflict,
    /// The key in the Secret is already stored for another platform key.
    KeyConflict,
    /// The store failed; retried with backoff.
    StoreError,
    /// Credentials were read from the Secret.
    CredentialsLoaded,
    /// The upstream rejected the credentials.
    AuthInvalid,
    /// The upstream deactivated the account.
    Deactivated,
    Available,
    /// Only the short usage window is known.
    PrimaryWindowOnly,
    /// No usage seen yet; the account takes traffic.
    NoUsageYet,
    Disabled,
    CoolingDown,
    QuotaExhausted,
    RegionBlocked,
    UsageUnreachable,
    /// The platform key's expiry has passed.
    Expired,
    /// The platform key works.
    Active,
    /// poolgate marked the account unavailable without a more precise reason.
    Unavailable,
    /// The account is not (yet) in the store.
    NotReconciled,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Reconciled => "Reconciled",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::SecretKeyMissing => "SecretKeyMissing",
            Reason::InvalidAuthJson => "InvalidAuthJson",
            Reason::InvalidApiKey => "InvalidApiKey",
            Reason::DuplicateLogin => "DuplicateLogin",
            Reason::IdentityMismatch => "IdentityMismatch",
            Reason::SecretConflict => "SecretConflict",
            Reason::KeyConflict => "KeyConflict",
            Reason::StoreError => "StoreError",
            Reason::CredentialsLoaded => "CredentialsLoaded",
            Reason::AuthInvalid => "AuthInvalid",
            Reason::Deactivated => "Deactivated",
            Reason::Available => "Available",
            Reason::PrimaryWindowOnly => "PrimaryWindowOnly",
            Reason::NoUsageYet => "NoUsageYet",
            Reason::Disabled => "Disabled",
            Reason::CoolingDown => "CoolingDown",
            Reason::QuotaExhausted => "QuotaExhausted",
            Reason::RegionBlocked => "RegionBlocked",
            Reason::UsageUnreachable => "UsageUnreachable",
            Reason::Expired => "Expired",
            Reason::Active => "Active",
            Reason::Unavailable => "Unavailable",
            Reason::NotReconciled => "NotReconciled",
        }
    }

    /// Problems with the credentials (as opposed to the rest of the spec).
    pub fn is_credential_problem(self) -> bool {
        matches!(
            self,
            Reason::SecretNotFound
                | Reason::SecretKeyMissing
                | Reason::InvalidAuthJson
                | Reason::InvalidApiKey
                | Reason::DuplicateLogin
                | Reason::IdentityMismatch
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something a person must fix; reported as `Ready=False`, never retried quickly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub reason: Reason,
    pub message: String,
}

impl Problem {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
        }
    }
}

/// A condition before its transition time is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cond {
    pub type_: &'static str,
    /// `None` for `Unknown`.
    pub status: Option<bool>,
    pub reason: Reason,
    pub message: String,
}

impl Cond {
    pub fn new(type_: &'static str, status: Option<bool>, reason: Reason, message: String) -> Self {
        Cond {
            type_,
            status,
            reason,
            message,
        }
    }
}

/// The conditions to write: `lastTransitionTime` is kept from `old` while a condition's
/// status stays the same, so an unchanged object produces an identical status (and no write).
pub(crate) fn settle(
    old: &[Condition],
    new: Vec<Cond>,
    generation: Option<i64>,
    now: &str,
) -> Vec<Condition> {
    new.into_iter()
        .map(|c| {
            let status = match c.status {
                Some(true) => "True",
                Some(false) => "False",
                None => "Unknown",
            };
            let since = old
                .iter()
                .find(|o| o.type_ == c.type_ && o.status == status)
                .map_or_else(|| now.to_string(), |o| o.last_transition_time.clone());
            Condition {
                type_: c.type_.to_string(),
                status: status.to_string(),
                reason: c.reason.as_str().to_string(),
                message: c.message,
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect()
}

/// Replaces (or adds) one condition, keeping its transition time when the status is the same.
pub(crate) fn replace_condition(conditions: &mut Vec<Condition>, c: Cond, generation: Option<i64>) {
    let type_ = c.type_;
    let settled = settle(conditions, vec![c], generation, &now_rfc3339());
    conditions.retain(|o| o.type_ != type_);
    conditions.extend(settled);
}

/// A condition while the resource has no row in the store yet (`what`: `account`, `key`).
pub(crate) fn not_stored(type_: &'static str, status: Option<bool>, what: &str) -> Cond {
    Cond::new(
        type_,
        status,
        Reason::NotReconciled,
        format!("the {what} is not in the store yet"),
    )
}

/// `Ready` from the problem that stopped the reconcile, if any, and the resource's row in the
/// store, if any: `stored` is what to say of the row while a problem stands (what it keeps)
/// and once it is reconciled.
pub(crate) fn ready(
    problem: Option<&Problem>,
    stored: Option<(String, String)>,
    what: &str,
) -> Cond {
    use crate::crd::condition::READY;
    match (problem, stored) {
        (Some(p), Some((kept, _))) => Cond::new(
            READY,
            Some(false),
            p.reason,
            format!("{} ({kept})", p.message),
        ),
        (Some(p), None) => Cond::new(READY, Some(false), p.reason, p.message.clone()),
        (None, Some((_, reconciled))) => {
            Cond::new(READY, Some(true), Reason::Reconciled, reconciled)
        }
        (None, None) => not_stored(READY, Some(false), what),
    }
}

/// Core's field `field` as the resource spells it; `renamed` lists the core names the spec
/// spells differently.
pub(crate) fn spec_field(field: &str, renamed: &[(&str, &str)]) -> String {
    if field == "name" {
        return "metadata.name".into();
    }
    let field = renamed
        .iter()
        .find(|(core, _)| *core == field)
        .map_or(field, |(_, spec)| spec);
    format!("spec.{field}")
}

/// A spec core refuses, with the field named as the resource spells it.
pub(crate) fn invalid_spec(e: &poolgate_core::Error, renamed: &[(&str, &str)]) -> Problem {
    let message = match e {
        poolgate_core::Error::Invalid { field, reason } => {
            format!("{}: {reason}", spec_field(field, renamed))
        }
        other => other.to_string(),
    };
    Problem::new(Reason::InvalidSpec, message)
}

/// The reason of condition `type_`, if set.
pub(crate) fn reason_of<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.as_str())
}

/// RFC 3339 at second precision (what `metav1.Time` carries), from Unix milliseconds.
pub(crate) fn rfc3339(ms: i64) -> Option<String> {
    Timestamp::from_second(ms.div_euclid(1000))
        .ok()
        .map(|t| t.to_string())
}

pub(crate) fn now_rfc3339() -> String {
    rfc3339(poolgate_store::now_ms()).unwrap_or_else(|| Timestamp::UNIX_EPOCH.to_string())
}

/// Server-side applies `status` on the object's status subresource as
/// [`FIELD_MANAGER`]. Fields the controller set before and leaves out now are removed.
pub(crate) async fn apply<K>(api: &Api<K>, name: &str, status: &impl Serialize) -> kube::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(type_: &str, status: &str, since: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "X".into(),
            message: String::new(),
            last_transition_time: since.into(),
            observed_generation: Some(1),
        }
    }

    #[test]
    fn transition_time_changes_only_with_the_status() {
        let old = vec![
            cond("Ready", "True", "2025-01-01T00:00:00Z"),
            cond("Available", "True", "2025-01-01T00:00:00Z"),
        ];
        let new = vec![
            Cond::new("Ready", Some(true), Reason::Reconciled, "ok".into()),
            Cond::new("Available", Some(false), Reason::Disabled, "off".into()),
            Cond::new("AuthValid", None, Reason::NotReconciled, String::new()),
        ];
        let out = settle(&old, new, Some(2), "2025-02-02T00:00:00Z");
        assert_eq!(out[0].last_transition_time, "2025-01-01T00:00:00Z");
        assert_eq!(out[0].reason, "Reconciled");
        assert_eq!(out[0].observed_generation, Some(2));
        assert_eq!(out[1].last_transition_time, "2025-02-02T00:00:00Z");
        assert_eq!(out[1].status, "False");
        assert_eq!(out[2].status, "Unknown");
        assert_eq!(reason_of(&out, "Available"), Some("Disabled"));
        assert_eq!(reason_of(&out, "Nope"), None);
    }

    #[test]
    fn timestamps_are_rfc3339_seconds() {
        assert_eq!(
            rfc3339(1_700_000_000_999).as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(rfc3339(i64::MAX), None);
        assert!(now_rfc3339().ends_with('Z'));
    }
}
