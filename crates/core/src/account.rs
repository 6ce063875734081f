//! Upstream accounts: who poolgate sends traffic to, and with what settings.

use serde::{Deserialize, Serialize};

use crate::{Error, UnixMillis, glob};

/// Default Codex backend; every account may override its base URL.
pub const CODEX_DEFAULT_BASE_URL: &str = "https://chatgpt.com/backend-api/codex";
pub const DEFAULT_GROUP: &str = "default";

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident, $field:literal { $($(#[$vm:meta])* $variant:ident => $s:literal $(| $alias:literal)*),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        // Serialised as the same strings the API and the database use.
        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <::std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(::serde::de::Error::custom)
            }
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result { f.write_str(self.as_str()) }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::Error;
            fn from_str(s: &str) -> Result<Self, $crate::Error> {
                let norm = s.trim().to_ascii_lowercase().replace('-', "_");
                match norm.as_str() {
                    $($s $(| $alias)* => Ok($name::$variant),)+
                    _ => Err($crate::Error::invalid($field, format!(
                        "{s:?} is not one of {}",
                        [$($s),+].join(", ")
                    ))),
                }
            }
        }
    };
}
pub(crate) use string_enum;

string_enum!(
    /// The kind of upstream an account talks to.
    Provider, "provider" {
        Codex => "codex" | "chatgpt",
        OpenAi => "openai",
        AzureOpenAi => "azure_openai" | "azure",
        Anthropic => "anthropic",
    }
);

impl Provider {
    /// Codex accounts log in with OAuth; every other provider takes an API key.
    pub fn uses_oauth(self) -> bool {
        self == Provider::Codex
    }
}

string_enum!(
    /// Health as the control plane sees it. `enabled` (set by a person) is kept apart from this.
    AccountStatus, "status" {
        Active => "active",
        Unavailable => "unavailable",
    }
);

string_enum!(
    /// Why an account is unavailable.
    StatusReason, "status_reason" {
        AuthInvalid => "auth_invalid",
        Deactivated => "deactivated",
        QuotaExhausted => "quota_exhausted",
        RegionBlocked => "region_blocked",
        UsageUnreachable => "usage_unreachable",
    }
);

string_enum!(
    /// Who owns an object's spec: the admin API, or a Kubernetes custom resource.
    ManagedBy, "managed_by" {
        Api => "api",
        Kubernetes => "kubernetes",
    }
);

/// Azure OpenAI needs a deployment and an API version on top of its endpoint (the base URL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzureConfig {
    pub deployment: String,
    pub api_version: String,
}

/// Who a Codex login belongs to, from the id_token claims. The pair (subject,
/// chatgpt_account_id) identifies an account: members of one Team workspace share the
/// chatgpt_account_id, so it alone would make them overwrite each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodexIdentity {
    pub subject: String,
    pub chatgpt_account_id: String,
    pub chatgpt_user_id: Option<String>,
    pub email: Option<String>,
    pub plan_type: Option<String>,
}

impl CodexIdentity {
    /// The unique key the store indexes on.
    pub fn key(&self) -> String {
        format!("{}::{}", self.subject, self.chatgpt_account_id)
    }
}

/// What a person (or the controller) specifies when creating an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountSpec {
    pub provider: Provider,
    pub name: String,
    pub group: String,
    pub tags: Vec<String>,
    pub priority: i32,
    pub note: String,
    pub enabled: bool,
    /// 0 means the routing policy's default cap.
    pub max_inflight: u32,
    pub proxy_url: Option<String>,
    /// Model patterns the account serves. Empty: any model for Codex and OpenAI accounts, the
    /// model named like the deployment for Azure, `claude-*` for Anthropic (the gateway's
    /// `served_models`).
    pub model_filter: Vec<String>,
    pub base_url: Option<String>,
    pub azure: Option<AzureConfig>,
}

impl AccountSpec {
    pub fn new(provider: Provider, name: impl Into<String>) -> Self {
        AccountSpec {
            provider,
            name: name.into(),
            group: DEFAULT_GROUP.to_string(),
            tags: Vec::new(),
            priority: 0,
            note: String::new(),
            enabled: true,
            max_inflight: 0,
            proxy_url: None,
            model_filter: Vec::new(),
            base_url: None,
            azure: None,
        }
    }

    /// Normalises (empty group → `default`) and checks every field.
    pub fn validate(mut self) -> Result<Self, Error> {
        self.name = self.name.trim().to_string();
        validate_name("name", &self.name)?;
        if self.group.trim().is_empty() {
            self.group = DEFAULT_GROUP.to_string();
        }
        validate_label("group", &self.group)?;
        validate_tags(&self.tags)?;
        if !(-1_000_000..=1_000_000).contains(&self.priority) {
            return Err(Error::invalid(
                "priority",
                "must be between -1000000 and 1000000",
            ));
        }
        if self.note.chars().count() > 1024 {
            return Err(Error::invalid("note", "at most 1024 characters"));
        }
        if self.max_inflight > 100_000 {
            return Err(Error::invalid("max_inflight", "at most 100000"));
        }
        if let Some(p) = &self.proxy_url {
            validate_url("proxy_url", p, &["http", "https", "socks5", "socks5h"])?;
        }
        glob::validate_patterns("model_filter", &self.model_filter)?;
        if let Some(u) = &self.base_url {
            validate_url("base_url", u, &["http", "https"])?;
        }
        match (self.provider, &self.azure) {
            (Provider::AzureOpenAi, None) => {
                return Err(Error::invalid(
                    "azure",
                    "azure_openai accounts need a deployment and an api_version",
                ));
            }
            (Provider::AzureOpenAi, Some(az)) => {
                if self.base_url.is_none() {
                    return Err(Error::invalid(
                        "base_url",
                        "azure_openai accounts need their endpoint as base_url",
                    ));
                }
                validate_label("azure.deployment", &az.deployment)?;
                validate_label("azure.api_version", &az.api_version)?;
            }
            (_, Some(_)) => {
                return Err(Error::invalid(
                    "azure",
                    "only azure_openai accounts take azure settings",
                ));
            }
            (_, None) => {}
        }
        Ok(self)
    }
}

/// A stored account. Credentials live apart (encrypted) and are never part of this type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub spec: AccountSpec,
    pub status: AccountStatus,
    pub status_reason: Option<StatusReason>,
    pub identity: Option<CodexIdentity>,
    pub managed_by: ManagedBy,
    /// For Kubernetes-managed objects, `Kind namespace/name` of the owning resource.
    pub managed_ref: Option<String>,
    pub has_credentials: bool,
    pub created_at_ms: UnixMillis,
    pub updated_at_ms: UnixMillis,
}

impl Account {
    /// The URL requests are sent to: the override, or the provider's default.
    pub fn effective_base_url(&self) -> Option<&str> {
        match (&self.spec.base_url, self.spec.provider) {
            (Some(u), _) => Some(u.as_str()),
            (None, Provider::Codex) => Some(CODEX_DEFAULT_BASE_URL),
            (None, Provider::OpenAi) => Some("https://api.openai.com/v1"),
            (None, Provider::Anthropic) => Some("https://api.anthropic.com"),
            (None, Provider::AzureOpenAi) => None,
        }
    }
}

/// A partial update; `None` leaves a field as it is. Nested options clear a field with
/// `Some(None)`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccountPatch {
    pub name: Option<String>,
    pub group: Option<String>,
    pub tags: Option<Vec<String>>,
    pub priority: Option<i32>,
    pub note: Option<String>,
    pub enabled: Option<bool>,
    pub max_inflight: Option<u32>,
    pub proxy_url: Option<Option<String>>,
    pub model_filter: Option<Vec<String>>,
    pub base_url: Option<Option<String>>,
    pub azure: Option<Option<AzureConfig>>,
    pub status: Option<(AccountStatus, Option<StatusReason>)>,
}

impl AccountPatch {
    pub fn is_empty(&self) -> bool {
        *self == AccountPatch::default()
    }

    /// Applies the patch to a copy of `account` and validates the result, so a bad patch
    /// changes nothing.
    pub fn apply(&self, account: &Account) -> Result<Account, Error> {
        let mut a = account.clone();
        let s = &mut a.spec;
        if let Some(v) = &self.name {
            s.name = v.clone();
        }
        if let Some(v) = &self.group {
            s.group = v.clone();
        }
        if let Some(v) = &self.tags {
            s.tags = v.clone();
        }
        if let Some(v) = self.priority {
            s.priority = v;
        }
        if let Some(v) = &self.note {
            s.note = v.clone();
        }
        if let Some(v) = self.enabled {
            s.enabled = v;
        }
        if let Some(v) = self.max_inflight {
            s.max_inflight = v;
        }
        if let Some(v) = &self.proxy_url {
            s.proxy_url = v.clone();
        }
        if let Some(v) = &self.model_filter {
            s.model_filter = v.clone();
        }
        if let Some(v) = &self.base_url {
            s.base_url = v.clone();
        }
        if let Some(v) = &self.azure {
            s.azure = v.clone();
        }
        if let Some((st, reason)) = self.status {
            if st == AccountStatus::Active && reason.is_some() {
                return Err(Error::invalid(
                    "status_reason",
                    "an active account has no reason",
                ));
            }
            a.status = st;
            a.status_reason = reason;
        }
        a.spec = a.spec.validate()?;
        Ok(a)
    }
}

pub(crate) fn validate_name(field: &'static str, v: &str) -> Result<(), Error> {
    let n = v.chars().count();
    if n == 0 || n > 128 {
        return Err(Error::invalid(field, "must be 1 to 128 characters"));
    }
    if v.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Groups, tags, deployments: short identifiers that end up in URLs and label selectors.
pub(crate) fn validate_label(field: &'static str, v: &str) -> Result<(), Error> {
    if v.is_empty() || v.len() > 63 {
        return Err(Error::invalid(
            field,
            format!("{v:?} must be 1 to 63 characters"),
        ));
    }
    if !v
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Error::invalid(
            field,
            format!("{v:?} may only contain letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(())
}

fn validate_tags(tags: &[String]) -> Result<(), Error> {
    if tags.len() > 32 {
        return Err(Error::invalid("tags", "at most 32 tags"));
    }
    for t in tags {
        validate_label("tags", t)?;
    }
    Ok(())
}

/// A URL with one of `schemes` and a non-empty host; no userinfo (credentials belong in the
/// encrypted credential store, not in a plaintext column).
pub(crate) fn validate_url(field: &'static str, v: &str, schemes: &[&str]) -> Result<(), Error> {
    let Some((scheme, rest)) = v.split_once("://") else {
        return Err(Error::invalid(
            field,
            format!("{v:?} is not an absolute URL"),
        ));
    };
    if !schemes.contains(&scheme.to_ascii_lowercase().as_str()) {
        return Err(Error::invalid(
            field,
            format!("scheme must be one of {}", schemes.join(", ")),
        ));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(Error::invalid(field, "URL has no host"));
    }
    if authority.contains('@') && field != "proxy_url" {
        return Err(Error::invalid(field, "URL must not carry credentials"));
    }
    if v.len() > 2048 || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Error::invalid(
            field,
            "URL is too long or contains whitespace",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_parsing() {
        assert_eq!(
            "Azure-OpenAI".parse::<Provider>().unwrap(),
            Provider::AzureOpenAi
        );
        assert_eq!("codex".parse::<Provider>().unwrap(), Provider::Codex);
        let err = "gemini".parse::<Provider>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid provider: \"gemini\" is not one of codex, openai, azure_openai, anthropic"
        );
    }

    #[test]
    fn spec_validation() {
        let ok = AccountSpec::new(Provider::OpenAi, " main ")
            .validate()
            .unwrap();
        assert_eq!(ok.name, "main");
        assert_eq!(ok.group, "default");

        let mut s = AccountSpec::new(Provider::AzureOpenAi, "az");
        assert!(s.clone().validate().is_err());
        s.azure = Some(AzureConfig {
            deployment: "gpt4o".into(),
            api_version: "2024-10-21".into(),
        });
        assert!(matches!(
            s.clone().validate(),
            Err(Error::Invalid {
                field: "base_url",
                ..
            })
        ));
        s.base_url = Some("https://x.openai.azure.com".into());
        assert!(s.validate().is_ok());

        let mut s = AccountSpec::new(Provider::Codex, "c");
        s.base_url = Some("ftp://x".into());
        assert!(s.clone().validate().is_err());
        s.base_url = Some("https://user:pw@x".into());
        assert!(s.clone().validate().is_err());
        s.base_url = Some("http://127.0.0.1:9/backend-api/codex".into());
        s.group = "team a".into();
        assert!(matches!(
            s.validate(),
            Err(Error::Invalid { field: "group", .. })
        ));
    }

    #[test]
    fn patch_is_all_or_nothing() {
        let acc = Account {
            id: "acc_1".into(),
            spec: AccountSpec::new(Provider::OpenAi, "a").validate().unwrap(),
            status: AccountStatus::Active,
            status_reason: None,
            identity: None,
            managed_by: ManagedBy::Api,
            managed_ref: None,
            has_credentials: true,
            created_at_ms: 1,
            updated_at_ms: 1,
        };
        let p = AccountPatch {
            priority: Some(5),
            name: Some(String::new()),
            ..Default::default()
        };
        assert!(p.apply(&acc).is_err());
        let p = AccountPatch {
            priority: Some(5),
            base_url: Some(Some("http://h".into())),
            ..Default::default()
        };
        let b = p.apply(&acc).unwrap();
        assert_eq!(b.spec.priority, 5);
        assert_eq!(b.effective_base_url(), Some("http://h"));
        let p = AccountPatch {
            status: Some((AccountStatus::Unavailable, Some(StatusReason::AuthInvalid))),
            ..Default::default()
        };
        assert_eq!(
            p.apply(&acc).unwrap().status_reason,
            Some(StatusReason::AuthInvalid)
        );
    }
}

#[cfg(test)]
mod serde_tests {
    use super::*;

    #[test]
    fn enums_serialise_as_their_api_strings() {
        assert_eq!(
            serde_json::to_string(&Provider::OpenAi).unwrap(),
            "\"openai\""
        );
        assert_eq!(
            serde_json::from_str::<Provider>("\"azure\"").unwrap(),
            Provider::AzureOpenAi
        );
        assert!(serde_json::from_str::<Provider>("\"x\"").is_err());
    }
}
