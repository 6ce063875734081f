//! Platform keys (what clients present to the gateway) and admin tokens (what operators
//! present to the control plane). Both are stored only as SHA-256 hashes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::account::{string_enum, validate_label, validate_name};
use crate::{Error, ManagedBy, UnixMillis, glob};

/// Recognisable prefixes, so secret scanners and people can tell what leaked.
pub const PLATFORM_KEY_PREFIX: &str = "pgk_";
pub const ADMIN_TOKEN_PREFIX: &str = "pga_";
/// Characters of the plaintext kept for display (prefix + 8).
const VISIBLE_LEN: usize = 12;

/// Formats 32 random bytes (256 bits) as a secret with the given prefix.
pub fn format_secret(prefix: &str, random: &[u8; 32]) -> String {
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(random))
}

/// Lowercase hex SHA-256 of a secret: the only form poolgate stores.
pub fn hash_secret(plaintext: &str) -> String {
    hex::encode(Sha256::digest(plaintext.as_bytes()))
}

/// The part of a secret safe to show again.
pub fn visible_prefix(plaintext: &str) -> String {
    plaintext.chars().take(VISIBLE_LEN).collect()
}

/// Compares two hashes without leaking where they differ.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

string_enum!(
    KeyStatus, "status" {
        Active => "active",
        Disabled => "disabled",
    }
);

string_enum!(
    /// Reasoning effort a key may force; `extra_high` and `ultra` are client spellings.
    ReasoningEffort, "reasoning_effort" {
        Minimal => "minimal",
        Low => "low",
        Medium => "medium",
        High => "high",
        Xhigh => "xhigh" | "extra_high",
        Max => "max" | "ultra",
    }
);

string_enum!(
    AdminRole, "role" {
        Admin => "admin",
        Viewer => "viewer",
    }
);

/// What a person specifies for a platform key.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct KeySpec {
    pub name: String,
    pub expires_at_ms: Option<UnixMillis>,
    /// Model patterns the key may use; empty allows all.
    pub allowed_models: Vec<String>,
    /// Replaces the model of every request made with the key.
    pub model_override: Option<String>,
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Account groups the key may route to; empty allows all.
    pub account_groups: Vec<String>,
}

impl KeySpec {
    pub fn validate(mut self) -> Result<Self, Error> {
        self.name = self.name.trim().to_string();
        validate_name("name", &self.name)?;
        glob::validate_patterns("allowed_models", &self.allowed_models)?;
        if let Some(m) = &self.model_override {
            if m.is_empty()
                || m.len() > 128
                || m.contains('*')
                || m.chars().any(char::is_whitespace)
            {
                return Err(Error::invalid(
                    "model_override",
                    "must be a model name of 1 to 128 characters without '*' or spaces",
                ));
            }
            if !glob::allowed(&self.allowed_models, m) {
                return Err(Error::invalid(
                    "model_override",
                    format!("{m:?} is not among the key's allowed models"),
                ));
            }
        }
        if self.account_groups.len() > 64 {
            return Err(Error::invalid("account_groups", "at most 64 groups"));
        }
        for g in &self.account_groups {
            validate_label("account_groups", g)?;
        }
        Ok(self)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlatformKey {
    pub id: String,
    pub spec: KeySpec,
    /// First characters of the plaintext, e.g. `pgk_AbCd1234`.
    pub prefix: String,
    pub hash: String,
    pub status: KeyStatus,
    pub managed_by: ManagedBy,
    pub managed_ref: Option<String>,
    pub created_at_ms: UnixMillis,
    pub updated_at_ms: UnixMillis,
}

impl PlatformKey {
    /// Usable now: active and not expired.
    pub fn usable_at(&self, now_ms: UnixMillis) -> bool {
        self.status == KeyStatus::Active && self.spec.expires_at_ms.is_none_or(|e| e > now_ms)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub expires_at_ms: Option<Option<UnixMillis>>,
    pub allowed_models: Option<Vec<String>>,
    pub model_override: Option<Option<String>>,
    pub reasoning_effort: Option<Option<ReasoningEffort>>,
    pub account_groups: Option<Vec<String>>,
    pub status: Option<KeyStatus>,
}

impl KeyPatch {
    pub fn is_empty(&self) -> bool {
        *self == KeyPatch::default()
    }

    pub fn apply(&self, key: &PlatformKey) -> Result<PlatformKey, Error> {
        let mut k = key.clone();
        let s = &mut k.spec;
        if let Some(v) = &self.name {
            s.name = v.clone();
        }
        if let Some(v) = self.expires_at_ms {
            s.expires_at_ms = v;
        }
        if let Some(v) = &self.allowed_models {
            s.allowed_models = v.clone();
        }
        if let Some(v) = &self.model_override {
            s.model_override = v.clone();
        }
        if let Some(v) = self.reasoning_effort {
            s.reasoning_effort = v;
        }
        if let Some(v) = &self.account_groups {
            s.account_groups = v.clone();
        }
        if let Some(v) = self.status {
            k.status = v;
        }
        k.spec = k.spec.validate()?;
        Ok(k)
    }
}

/// A stored admin token (the bootstrap token from a file is not stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminToken {
    pub id: String,
    pub name: String,
    pub role: AdminRole,
    pub prefix: String,
    pub hash: String,
    pub created_at_ms: UnixMillis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets() {
        let k = format_secret(PLATFORM_KEY_PREFIX, &[7u8; 32]);
        assert!(k.starts_with("pgk_"));
        assert_eq!(k.len(), 4 + 43);
        assert_eq!(visible_prefix(&k).len(), 12);
        let h = hash_secret(&k);
        assert_eq!(h.len(), 64);
        assert!(hashes_equal(&h, &hash_secret(&k)));
        assert!(!hashes_equal(&h, &hash_secret("other")));
        assert!(!hashes_equal(&h, "short"));
    }

    #[test]
    fn effort_aliases() {
        assert_eq!(
            "extra_high".parse::<ReasoningEffort>().unwrap(),
            ReasoningEffort::Xhigh
        );
        assert_eq!(
            "ULTRA".parse::<ReasoningEffort>().unwrap(),
            ReasoningEffort::Max
        );
        assert!("huge".parse::<ReasoningEffort>().is_err());
    }

    #[test]
    fn key_spec_rules() {
        let s = KeySpec {
            name: "ci".into(),
            allowed_models: vec!["gpt-5*".into()],
            model_override: Some("gpt-4o".into()),
            ..Default::default()
        };
        assert!(matches!(
            s.validate(),
            Err(Error::Invalid {
                field: "model_override",
                ..
            })
        ));
        let s = KeySpec {
            name: "ci".into(),
            account_groups: vec!["bad group".into()],
            ..Default::default()
        };
        assert!(s.validate().is_err());
        let k = PlatformKey {
            id: "key_1".into(),
            spec: KeySpec {
                name: "a".into(),
                expires_at_ms: Some(100),
                ..Default::default()
            },
            prefix: "pgk_".into(),
            hash: "h".into(),
            status: KeyStatus::Active,
            managed_by: ManagedBy::Api,
            managed_ref: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        assert!(k.usable_at(99));
        assert!(!k.usable_at(100));
    }
}
