//! The routing state a gateway holds: accounts (with decrypted credentials, usage and shared
//! cooldowns), platform keys by hash, and the routing policy, at one global version.
//!
//! Snapshots are immutable; [`Snapshot::apply`] builds the next one from a delta, so a gateway
//! can swap them atomically and a request keeps the snapshot it started with.

use std::collections::HashMap;
use std::sync::Arc;

use crate::{Account, Credentials, Error, PlatformKey, RoutingPolicy, UnixMillis, UsageSnapshot};

/// Everything a gateway knows about one account.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountState {
    pub account: Account,
    pub credentials: Option<Credentials>,
    pub usage: Option<UsageSnapshot>,
    /// Set by the control plane from what any gateway observed (429s, quota); every replica
    /// honours it.
    pub cooldown_until_ms: Option<UnixMillis>,
}

/// A change to apply: upserts and removals by id, and the policy when it changed. A `full`
/// delta replaces everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub version: i64,
    pub full: bool,
    pub upsert_accounts: Vec<AccountState>,
    pub remove_accounts: Vec<String>,
    pub upsert_keys: Vec<PlatformKey>,
    /// Key ids.
    pub remove_keys: Vec<String>,
    pub policy: Option<RoutingPolicy>,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub version: i64,
    pub accounts: HashMap<String, Arc<AccountState>>,
    /// Platform keys by SHA-256 hex hash of the plaintext.
    pub keys_by_hash: HashMap<String, Arc<PlatformKey>>,
    key_hash_by_id: HashMap<String, String>,
    pub policy: Arc<RoutingPolicy>,
}

impl Snapshot {
    /// The next snapshot. An incremental delta must be newer than this snapshot; a full one
    /// may have any version (a control plane restored from backup may go back in time).
    pub fn apply(&self, delta: Delta) -> Result<Snapshot, Error> {
        if !delta.full && delta.version <= self.version {
            return Err(Error::invalid(
                "version",
                format!(
                    "delta {} is not newer than snapshot {}",
                    delta.version, self.version
                ),
            ));
        }
        let mut next = if delta.full {
            Snapshot {
                policy: Arc::new(RoutingPolicy::default()),
                ..Snapshot::default()
            }
        } else {
            self.clone()
        };
        next.version = delta.version;
        for id in delta.remove_accounts {
            next.accounts.remove(&id);
        }
        for a in delta.upsert_accounts {
            next.accounts.insert(a.account.id.clone(), Arc::new(a));
        }
        for id in delta.remove_keys {
            if let Some(h) = next.key_hash_by_id.remove(&id) {
                next.keys_by_hash.remove(&h);
            }
        }
        for k in delta.upsert_keys {
            // A key's hash never changes, but drop a stale entry defensively.
            if let Some(old) = next.key_hash_by_id.insert(k.id.clone(), k.hash.clone()) {
                next.keys_by_hash.remove(&old);
            }
            next.keys_by_hash.insert(k.hash.clone(), Arc::new(k));
        }
        if let Some(p) = delta.policy {
            next.policy = Arc::new(p);
        }
        Ok(next)
    }

    pub fn key_by_hash(&self, hash: &str) -> Option<&Arc<PlatformKey>> {
        self.keys_by_hash.get(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AccountSpec, AccountStatus, KeySpec, KeyStatus, ManagedBy, Provider};

    fn acc(id: &str) -> AccountState {
        AccountState {
            account: Account {
                id: id.into(),
                spec: AccountSpec::new(Provider::OpenAi, id),
                status: AccountStatus::Active,
                status_reason: None,
                identity: None,
                managed_by: ManagedBy::Api,
                managed_ref: None,
                has_credentials: true,
                created_at_ms: 0,
                updated_at_ms: 0,
            },
            credentials: None,
            usage: None,
            cooldown_until_ms: None,
        }
    }

    fn key(id: &str, hash: &str) -> PlatformKey {
        PlatformKey {
            id: id.into(),
            spec: KeySpec {
                name: id.into(),
                ..Default::default()
            },
            prefix: "pgk_".into(),
            hash: hash.into(),
            status: KeyStatus::Active,
            managed_by: ManagedBy::Api,
            managed_ref: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn deltas_apply_in_order() {
        let s0 = Snapshot::default();
        let s1 = s0
            .apply(Delta {
                version: 3,
                full: true,
                upsert_accounts: vec![acc("a"), acc("b")],
                upsert_keys: vec![key("k1", "h1")],
                ..Default::default()
            })
            .unwrap();
        assert_eq!(s1.accounts.len(), 2);
        assert!(s1.key_by_hash("h1").is_some());
        let s2 = s1
            .apply(Delta {
                version: 4,
                remove_accounts: vec!["a".into()],
                remove_keys: vec!["k1".into()],
                policy: Some(RoutingPolicy {
                    p2c_window: 5,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(s2.accounts.len(), 1);
        assert!(s2.key_by_hash("h1").is_none());
        assert_eq!(s2.policy.p2c_window, 5);
        // The old snapshot is untouched.
        assert_eq!(s1.accounts.len(), 2);
        assert!(
            s2.apply(Delta {
                version: 4,
                ..Default::default()
            })
            .is_err()
        );
        let s3 = s2
            .apply(Delta {
                version: 1,
                full: true,
                ..Default::default()
            })
            .unwrap();
        assert!(s3.accounts.is_empty());
        assert_eq!(s3.policy.p2c_window, 3);
    }
}
