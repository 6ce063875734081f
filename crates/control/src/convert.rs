//! Conversions between the admin API's request messages and the domain types. The plain
//! message <-> domain conversions live in [`poolgate_proto::convert`] (shared with gateways
//! and poolctl) and are re-exported here.
//!
//! Proto3 has no "unset" for scalars: an empty string or a zero means "not given" on input and
//! "none" on output. Every enum-like string goes through the domain type's `FromStr`, whose
//! error names the field and the allowed values.

use poolgate_core::{
    Account, AccountPatch, AccountSpec, AccountStatus, AzureConfig, Error, ErrorClass, KeyPatch,
    KeySpec, LogFilter, ManagedBy, Provider, ReasoningEffort, StatusClass, StatusReason,
};
use poolgate_proto::v1 as pb;
use poolgate_store::AccountFilter;

pub use poolgate_proto::convert::*;

// ------------------------------------------------------------------------------- accounts

/// The account spec of a create request (validated). Credentials are handled by the caller.
pub fn account_spec_from_create(r: &pb::CreateAccountRequest) -> Result<AccountSpec, Error> {
    let provider: Provider = r.provider.parse()?;
    let azure = if r.azure_deployment.trim().is_empty() && r.azure_api_version.trim().is_empty() {
        None
    } else {
        Some(AzureConfig {
            deployment: r.azure_deployment.trim().to_string(),
            api_version: r.azure_api_version.trim().to_string(),
        })
    };
    AccountSpec {
        provider,
        name: r.name.clone(),
        group: r.group.trim().to_string(),
        tags: r.tags.clone(),
        priority: r.priority,
        note: r.note.clone(),
        enabled: !r.disabled,
        max_inflight: r.max_inflight,
        proxy_url: non_empty(&r.proxy_url),
        model_filter: r.model_filter.clone(),
        base_url: non_empty(&r.base_url),
        azure,
    }
    .validate()
}

/// The spec part of an update request. Azure settings are replaced as a whole in the domain,
/// so a request that sets only one of them is merged with the account's current values.
pub fn account_patch_from_update(
    r: &pb::UpdateAccountRequest,
    current: &Account,
) -> Result<AccountPatch, Error> {
    let azure = if r.azure_deployment.is_some() || r.azure_api_version.is_some() {
        let cur = current.spec.azure.as_ref();
        let deployment = r
            .azure_deployment
            .clone()
            .or_else(|| cur.map(|z| z.deployment.clone()))
            .unwrap_or_default();
        let api_version = r
            .azure_api_version
            .clone()
            .or_else(|| cur.map(|z| z.api_version.clone()))
            .unwrap_or_default();
        if deployment.trim().is_empty() && api_version.trim().is_empty() {
            Some(None)
        } else {
            Some(Some(AzureConfig {
                deployment: deployment.trim().to_string(),
                api_version: api_version.trim().to_string(),
            }))
        }
    } else {
        None
    };
    let status = match (r.status.as_deref(), r.status_reason.as_deref()) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(Error::invalid(
                "status_reason",
                "set status too (active, or unavailable with a reason)",
            ));
        }
        (Some(st), reason) => {
            let st: AccountStatus = st.parse()?;
            let reason: Option<StatusReason> = optional_enum(reason.unwrap_or_default())?;
            Some((st, reason))
        }
    };
    Ok(AccountPatch {
        name: r.name.clone(),
        group: r.group.as_ref().map(|g| g.trim().to_string()),
        tags: r.tags.as_ref().map(|l| l.values.clone()),
        priority: r.priority,
        note: r.note.clone(),
        enabled: r.enabled,
        max_inflight: r.max_inflight,
        proxy_url: r.proxy_url.as_deref().map(non_empty),
        model_filter: r.model_filter.as_ref().map(|l| l.values.clone()),
        base_url: r.base_url.as_deref().map(non_empty),
        azure,
        status,
    })
}

pub fn account_filter(group: &str, provider: &str, status: &str) -> Result<AccountFilter, Error> {
    Ok(AccountFilter {
        group: non_empty(group),
        provider: optional_enum(provider)?,
        status: optional_enum(status)?,
    })
}

// ------------------------------------------------------------------------------- keys

fn expiry(ms: i64, now_ms: i64) -> Result<Option<i64>, Error> {
    match ms {
        0 => Ok(None),
        n if n < 0 => Err(Error::invalid(
            "expires_at_ms",
            "must be a Unix time in milliseconds",
        )),
        n if n <= now_ms => Err(Error::invalid("expires_at_ms", "is in the past")),
        n => Ok(Some(n)),
    }
}

pub fn key_spec_from_create(r: &pb::CreateKeyRequest, now_ms: i64) -> Result<KeySpec, Error> {
    KeySpec {
        name: r.name.clone(),
        expires_at_ms: expiry(r.expires_at_ms, now_ms)?,
        allowed_models: r.allowed_models.clone(),
        model_override: non_empty(&r.model_override),
        reasoning_effort: optional_enum::<ReasoningEffort>(&r.reasoning_effort)?,
        account_groups: r.account_groups.clone(),
    }
    .validate()
}

pub fn key_patch_from_update(r: &pb::UpdateKeyRequest, now_ms: i64) -> Result<KeyPatch, Error> {
    Ok(KeyPatch {
        name: r.name.clone(),
        expires_at_ms: r.expires_at_ms.map(|ms| expiry(ms, now_ms)).transpose()?,
        allowed_models: r.allowed_models.as_ref().map(|l| l.values.clone()),
        model_override: r.model_override.as_deref().map(non_empty),
        reasoning_effort: r
            .reasoning_effort
            .as_deref()
            .map(optional_enum::<ReasoningEffort>)
            .transpose()?,
        account_groups: r.account_groups.as_ref().map(|l| l.values.clone()),
        status: None,
    })
}

// ------------------------------------------------------------------------------- logs

pub fn log_filter_from_pb(f: Option<&pb::LogFilter>) -> Result<LogFilter, Error> {
    let Some(f) = f else {
        return Ok(LogFilter::default());
    };
    let time = |field: &'static str, v: i64| match v {
        0 => Ok(None),
        n if n < 0 => Err(Error::invalid(field, "must be a Unix time in milliseconds")),
        n => Ok(Some(n)),
    };
    let filter = LogFilter {
        key_id: non_empty(&f.key_id),
        account_id: non_empty(&f.account_id),
        model: non_empty(&f.model),
        status_class: match f.status_class.trim() {
            "" => None,
            s => Some(StatusClass::parse(s)?),
        },
        error_class: optional_enum::<ErrorClass>(&f.error_class)?,
        since_ms: time("since_ms", f.since_ms)?,
        until_ms: time("until_ms", f.until_ms)?,
    };
    filter.validate()?;
    Ok(filter)
}

/// Describes who owns a Kubernetes-managed object, for FailedPrecondition messages.
pub fn managed_elsewhere(
    kind: &str,
    id: &str,
    managed_by: ManagedBy,
    managed_ref: Option<&str>,
) -> Option<String> {
    (managed_by == ManagedBy::Kubernetes).then(|| {
        let owner = managed_ref.unwrap_or("a Kubernetes resource");
        format!(
            "{kind} {id} is managed by Kubernetes ({owner}); edit or delete that resource \
             instead (kubectl edit/delete), the API cannot change it"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_account_spec() {
        let r = pb::CreateAccountRequest {
            provider: "openai".into(),
            name: " main ".into(),
            proxy_url: "".into(),
            ..Default::default()
        };
        let s = account_spec_from_create(&r).unwrap();
        assert_eq!(s.name, "main");
        assert_eq!(s.group, "default");
        assert!(s.enabled);
        assert!(s.proxy_url.is_none());

        let r = pb::CreateAccountRequest {
            provider: "".into(),
            name: "x".into(),
            ..Default::default()
        };
        let e = account_spec_from_create(&r).unwrap_err().to_string();
        assert!(e.contains("codex, openai, azure_openai, anthropic"), "{e}");

        let r = pb::CreateAccountRequest {
            provider: "openai".into(),
            name: "x".into(),
            azure_deployment: "d".into(),
            ..Default::default()
        };
        assert!(
            account_spec_from_create(&r)
                .unwrap_err()
                .to_string()
                .contains("azure")
        );
    }

    #[test]
    fn update_patch_merges_azure_and_status() {
        let mut spec = AccountSpec::new(Provider::AzureOpenAi, "az");
        spec.base_url = Some("https://x.openai.azure.com".into());
        spec.azure = Some(AzureConfig {
            deployment: "d1".into(),
            api_version: "v1".into(),
        });
        let acc = Account {
            id: "acc_1".into(),
            spec,
            status: AccountStatus::Active,
            status_reason: None,
            identity: None,
            managed_by: ManagedBy::Api,
            managed_ref: None,
            has_credentials: true,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let r = pb::UpdateAccountRequest {
            id: "acc_1".into(),
            azure_deployment: Some("d2".into()),
            proxy_url: Some("".into()),
            status: Some("unavailable".into()),
            status_reason: Some("deactivated".into()),
            ..Default::default()
        };
        let p = account_patch_from_update(&r, &acc).unwrap();
        assert_eq!(
            p.azure,
            Some(Some(AzureConfig {
                deployment: "d2".into(),
                api_version: "v1".into()
            }))
        );
        assert_eq!(p.proxy_url, Some(None));
        assert_eq!(
            p.status,
            Some((AccountStatus::Unavailable, Some(StatusReason::Deactivated)))
        );
        assert!(p.name.is_none());

        let r = pb::UpdateAccountRequest {
            status_reason: Some("x".into()),
            ..Default::default()
        };
        assert!(account_patch_from_update(&r, &acc).is_err());
        let r = pb::UpdateAccountRequest {
            status: Some("broken".into()),
            ..Default::default()
        };
        let e = account_patch_from_update(&r, &acc).unwrap_err().to_string();
        assert!(e.contains("active, unavailable"), "{e}");
    }

    #[test]
    fn log_filters() {
        assert_eq!(log_filter_from_pb(None).unwrap(), LogFilter::default());
        let f = pb::LogFilter {
            status_class: "5xx".into(),
            error_class: "network".into(),
            ..Default::default()
        };
        let f = log_filter_from_pb(Some(&f)).unwrap();
        assert_eq!(f.status_class.unwrap().digit(), 5);
        assert_eq!(f.error_class, Some(ErrorClass::Network));
        let bad = pb::LogFilter {
            status_class: "9xx".into(),
            ..Default::default()
        };
        assert!(
            log_filter_from_pb(Some(&bad))
                .unwrap_err()
                .to_string()
                .contains("status_class")
        );
        let bad = pb::LogFilter {
            error_class: "weird".into(),
            ..Default::default()
        };
        assert!(
            log_filter_from_pb(Some(&bad))
                .unwrap_err()
                .to_string()
                .contains("rate_limited")
        );
        let bad = pb::LogFilter {
            since_ms: 10,
            until_ms: 5,
            ..Default::default()
        };
        assert!(log_filter_from_pb(Some(&bad)).is_err());
    }

    #[test]
    fn key_specs() {
        let r = pb::CreateKeyRequest {
            name: "ci".into(),
            reasoning_effort: "high".into(),
            ..Default::default()
        };
        let s = key_spec_from_create(&r, 1000).unwrap();
        assert_eq!(s.reasoning_effort, Some(ReasoningEffort::High));
        let r = pb::CreateKeyRequest {
            name: "ci".into(),
            expires_at_ms: 500,
            ..Default::default()
        };
        assert!(
            key_spec_from_create(&r, 1000)
                .unwrap_err()
                .to_string()
                .contains("past")
        );
        let r = pb::UpdateKeyRequest {
            reasoning_effort: Some("".into()),
            expires_at_ms: Some(0),
            ..Default::default()
        };
        let p = key_patch_from_update(&r, 1000).unwrap();
        assert_eq!(p.reasoning_effort, Some(None));
        assert_eq!(p.expires_at_ms, Some(None));
    }
}
