//! The `poolgate.dev/v1alpha1` custom resources: `UpstreamAccount` and `PlatformKey`.
//!
//! The schemas carry the same limits `poolgate-core` enforces (so `kubectl apply` rejects what
//! the store would refuse), but the controller validates every object again: a CRD installed
//! from an older release, or a rule CEL cannot express, must end as `Ready=False`, never as a
//! write. Enumerations are plain strings in Rust for the same reason: an unknown value must
//! reach the controller as an invalid spec, not break the whole watch with a decode error.

// Each `printcolumn(...)` repeats `type_ = "string"`; clippy mistakes them for one attribute
// given twice.
#![allow(clippy::duplicated_attributes)]

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "poolgate.dev";
pub const VERSION: &str = "v1alpha1";

/// The default key of a Secret holding a Codex login.
pub const DEFAULT_AUTH_JSON_KEY: &str = "auth.json";
/// The default key of a Secret holding an API key, and the key the controller writes a
/// platform key under.
pub const DEFAULT_API_KEY_KEY: &str = "api-key";
/// Suffix of the Secret a `PlatformKey` gets when its spec names none.
pub const PLATFORM_KEY_SECRET_SUFFIX: &str = "-platform-key";

/// Provider strings the schema accepts, as the store spells them.
pub const PROVIDERS: [&str; 4] = ["codex", "openai", "azure_openai", "anthropic"];
/// Reasoning efforts the schema accepts.
pub const REASONING_EFFORTS: [&str; 6] = ["minimal", "low", "medium", "high", "xhigh", "max"];

/// Condition types the controller writes.
pub mod condition {
    pub const READY: &str = "Ready";
    pub const AVAILABLE: &str = "Available";
    pub const AUTH_VALID: &str = "AuthValid";
}

const LABEL_PATTERN: &str = r"^[A-Za-z0-9._-]{1,63}$";
const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
const MODEL_PATTERN: &str = r"^[^\s]{1,128}$";

/// An upstream LLM account poolgate routes to. Its credentials come from a Secret; the
/// controller keeps the account in poolgate's store in step with this object and reports
/// usage, availability and cooldown in `.status`.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "poolgate.dev",
    version = "v1alpha1",
    kind = "UpstreamAccount",
    plural = "upstreamaccounts",
    singular = "upstreamaccount",
    shortname = "ua",
    category = "poolgate",
    namespaced,
    status = "UpstreamAccountStatus",
    derive = "PartialEq",
    doc = "An upstream LLM account (Codex login, OpenAI, Azure OpenAI or Anthropic API key) in poolgate's pool.",
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider"),
    printcolumn(name = "Group", type_ = "string", json_path = ".spec.group"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Availability",
        type_ = "string",
        json_path = ".status.availability"
    ),
    printcolumn(
        name = "5h %",
        type_ = "number",
        json_path = ".status.usage.fiveHour.usedPercent"
    ),
    printcolumn(
        name = "7d %",
        type_ = "number",
        json_path = ".status.usage.sevenDay.usedPercent"
    ),
    printcolumn(
        name = "Cooldown",
        type_ = "string",
        json_path = ".status.cooldownUntil"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.provider != 'azure_openai' || (has(self.azure) && has(self.baseUrl))",
        "message": "azure_openai accounts need azure.deployment, azure.apiVersion and their endpoint as baseUrl",
        "reason": "FieldValueRequired"
    },
    {
        "rule": "self.provider == 'azure_openai' || !has(self.azure)",
        "message": "only azure_openai accounts take azure settings",
        "reason": "FieldValueForbidden"
    },
    {
        "rule": "self.provider == oldSelf.provider",
        "message": "provider is immutable; create a new UpstreamAccount instead",
        "reason": "FieldValueForbidden"
    }
]))]
pub struct UpstreamAccountSpec {
    /// The kind of upstream: `codex` (a ChatGPT/Codex login from an auth.json), `openai`,
    /// `azure_openai` or `anthropic` (an API key).
    #[schemars(length(max = 32), extend("enum" = PROVIDERS))]
    pub provider: String,

    /// The Secret holding the credentials: a Codex `auth.json` (key `auth.json` by default) for
    /// `codex`, an API key (key `api-key` by default) for the others. Never inline.
    pub credentials_secret_ref: SecretKeyRef,

    /// Account group platform keys can be limited to. Default `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(LABEL_PATTERN))]
    pub group: Option<String>,

    /// Free-form labels shown in listings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(pattern(LABEL_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub tags: Vec<String>,

    /// Lower numbers are tried first by the `ordered` strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1_000_000, max = 1_000_000))]
    pub priority: Option<i32>,

    /// A disabled account takes no traffic but keeps its state. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// Most requests in flight at once on this account; 0 or unset uses the routing policy's
    /// default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100_000))]
    pub max_in_flight: Option<u32>,

    /// Proxy for requests to this upstream: `http`, `https`, `socks5` or `socks5h` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 2048),
        pattern(r"^(http|https|socks5|socks5h)://[^\s/?#]+([/?#]\S*)?$")
    )]
    pub proxy_url: Option<String>,

    /// Model patterns (`*` matches any run of characters) this account serves. Empty: any
    /// model for codex and openai, the model named like the deployment for azure_openai,
    /// `claude-*` for anthropic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 128), pattern(MODEL_PATTERN))
    )]
    pub models: Vec<String>,

    /// Overrides the provider's default endpoint (required for `azure_openai`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), pattern(r"^https?://[^\s/?#@]+([/?#]\S*)?$"))]
    pub base_url: Option<String>,

    /// Azure OpenAI deployment settings; only for `azure_openai`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSpec>,

    /// A note for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub note: Option<String>,
}

/// A key in a Secret of the resource's namespace.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), pattern(DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// Key inside the Secret; defaults to `auth.json` for codex and `api-key` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(SECRET_KEY_PATTERN))]
    pub key: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureSpec {
    /// The deployment name.
    #[schemars(pattern(LABEL_PATTERN))]
    pub deployment: String,
    /// The `api-version` query parameter, e.g. `2024-10-21`.
    #[schemars(pattern(LABEL_PATTERN))]
    pub api_version: String,
}

/// What the controller last saw of an `UpstreamAccount`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamAccountStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Available` and `AuthValid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The account's id in poolgate (as `poolctl get accounts` shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Quota availability: `available`, `primary_window_available_only`, `unavailable` or
    /// `unknown` (no usage seen yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability: Option<String>,
    /// The Codex usage windows, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageStatus>,
    /// The account takes no traffic until then (shared cooldown after 429s or quota errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub cooldown_until: Option<String>,
    /// When poolgate last refreshed the usage shown here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub last_refresh: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageStatus {
    /// The short (5-hour) window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub five_hour: Option<UsageWindowStatus>,
    /// The weekly window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seven_day: Option<UsageWindowStatus>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageWindowStatus {
    /// Percent of the window's quota used (0 to 100), rounded to one decimal.
    pub used_percent: f64,
    /// Length of the window in minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_minutes: Option<u32>,
    /// When the window resets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub resets_at: Option<String>,
}

/// A standard Kubernetes condition (the shape of `metav1.Condition`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[schemars(length(min = 1, max = 316))]
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// A CamelCase reason a person or a script can act on.
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
    /// What happened and what to do about it.
    #[serde(default)]
    #[schemars(length(max = 32768))]
    pub message: String,
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
}

/// A platform key clients present to poolgate's gateway. The controller generates the key,
/// writes it into a Secret it owns (key `api-key`) and stores only its hash; deleting this
/// object revokes the key.
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "poolgate.dev",
    version = "v1alpha1",
    kind = "PlatformKey",
    plural = "platformkeys",
    singular = "platformkey",
    shortname = "pk",
    category = "poolgate",
    namespaced,
    status = "PlatformKeyStatus",
    derive = "PartialEq",
    doc = "A poolgate platform key; the controller writes the generated key into a Secret it owns.",
    printcolumn(name = "Secret", type_ = "string", json_path = ".status.secretName"),
    printcolumn(name = "Models", type_ = "string", json_path = ".spec.allowedModels"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.secretName) == has(oldSelf.secretName) && (!has(self.secretName) || self.secretName == oldSelf.secretName)",
        "message": "secretName is immutable; create a new PlatformKey instead",
        "reason": "FieldValueForbidden"
    },
    {
        "rule": "!has(self.modelOverride) || !has(self.allowedModels) || size(self.allowedModels) == 0 || self.allowedModels.exists(p, p.contains('*') || p.lowerAscii() == self.modelOverride.lowerAscii())",
        "message": "modelOverride must be among allowedModels",
        "reason": "FieldValueInvalid"
    }
]))]
pub struct PlatformKeySpec {
    /// Model patterns (`*` matches any run of characters) the key may use; empty allows all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 128), pattern(MODEL_PATTERN))
    )]
    pub allowed_models: Vec<String>,

    /// Replaces the model of every request made with the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(r"^[^*\s]{1,128}$"))]
    pub model_override: Option<String>,

    /// Reasoning effort forced on every request made with the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), extend("enum" = REASONING_EFFORTS))]
    pub reasoning_effort: Option<String>,

    /// Account groups the key may route to; empty allows all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(pattern(LABEL_PATTERN)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub account_groups: Vec<String>,

    /// When the key stops working (RFC 3339, e.g. `2026-01-31T00:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub expires_at: Option<String>,

    /// The Secret the controller writes the key into (key `api-key`); default
    /// `<name>-platform-key`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(DNS_SUBDOMAIN_PATTERN))]
    pub secret_name: Option<String>,

    /// A disabled key is refused by the gateway but keeps its Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

/// What the controller last saw of a `PlatformKey`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformKeyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` and `Available`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The key's id in poolgate (as `poolctl get keys` shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The Secret holding the key (under `api-key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The first characters of the key, safe to show (e.g. `pgk_AbCd1234`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
}

impl PlatformKeySpec {
    /// The Secret this key lives in: the spec's, or `<name>-platform-key`.
    pub fn secret_name_for(&self, resource_name: &str) -> String {
        self.secret_name
            .clone()
            .unwrap_or_else(|| format!("{resource_name}{PLATFORM_KEY_SECRET_SUFFIX}"))
    }
}

impl SecretKeyRef {
    /// The key inside the Secret, with the provider's default.
    pub fn key_or_default(&self, provider: &str) -> &str {
        match &self.key {
            Some(k) => k,
            None if provider == "codex" => DEFAULT_AUTH_JSON_KEY,
            None => DEFAULT_API_KEY_KEY,
        }
    }
}
