//! The routing state a gateway holds: accounts (with decrypted credentials, usage and shared
//! cooldowns), platform keys by hash, and the routing policy, at one global version.
//!
//! Snapshots are immutable; [`Snapshot::apply`] builds the next one from a delta, so a gateway
//! can swap them atomically and a request keeps the snapshot it started with.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::{
    Account, Credentials, Error, KeyStatus, PlatformKey, ReasoningEffort, RoutingPolicy,
    UnixMillis, UsageSnapshot,
};

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

/// SHA-256 of a platform key's plaintext: how a gateway finds the key a request presents.
pub type KeyDigest = [u8; 32];

/// The digest of a plaintext key (the raw bytes of [`crate::key::hash_secret`]).
pub fn key_digest(plaintext: &str) -> KeyDigest {
    Sha256::digest(plaintext.as_bytes()).into()
}

/// A stored key hash (64 hex digits) as a digest; `None` when it is not one.
pub fn digest_from_hex(hash: &str) -> Option<KeyDigest> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hash, &mut out).ok()?;
    Some(out)
}

/// What a gateway keeps of a platform key: what authorises and shapes a request. The name,
/// prefix, timestamps and the hash (it is the map key, as bytes) stay with the control plane,
/// so 100,000 keys cost a few hundred bytes each.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyGrant {
    pub id: Arc<str>,
    pub status: KeyStatus,
    pub expires_at_ms: Option<UnixMillis>,
    /// Model patterns the key may use; empty allows all. Shared between keys with the same
    /// list (see [`Interner`]).
    pub allowed_models: Arc<[String]>,
    /// Replaces the model of every request made with the key.
    pub model_override: Option<String>,
    pub reasoning_effort: Option<ReasoningEffort>,
    /// Account groups the key may route to; empty allows all. Shared like `allowed_models`.
    pub account_groups: Arc<[String]>,
}

/// Shares equal string lists between the keys of one delta: 100,000 keys usually name a
/// handful of group and model lists, and one copy each is enough.
#[derive(Debug, Default)]
pub struct Interner {
    lists: HashMap<Vec<String>, Arc<[String]>>,
}

impl Interner {
    pub fn list(&mut self, v: Vec<String>) -> Arc<[String]> {
        if let Some(l) = self.lists.get(&v) {
            return l.clone();
        }
        let l: Arc<[String]> = Arc::from(v.clone());
        self.lists.insert(v, l.clone());
        l
    }
}

impl KeyGrant {
    pub fn of(key: PlatformKey, interner: &mut Interner) -> Self {
        KeyGrant {
            id: Arc::from(key.id),
            status: key.status,
            expires_at_ms: key.spec.expires_at_ms,
            allowed_models: interner.list(key.spec.allowed_models),
            model_override: key.spec.model_override,
            reasoning_effort: key.spec.reasoning_effort,
            account_groups: interner.list(key.spec.account_groups),
        }
    }

    /// Usable now: active and not expired.
    pub fn usable_at(&self, now_ms: UnixMillis) -> bool {
        self.status == KeyStatus::Active && self.expires_at_ms.is_none_or(|e| e > now_ms)
    }
}

/// Shards of a [`CowMap`]: a change copies one shard of about `len / SHARDS` entries.
const SHARDS: usize = 256;

/// A map whose clone costs O(shards), not O(entries): entries live in shards behind `Arc`
/// and a change copies only the shard it touches. A snapshot is rebuilt for every delta;
/// with 100,000 keys, cloning plain maps for each one cost tens of milliseconds and doubled
/// the memory while both snapshots were alive.
#[derive(Debug, Clone)]
pub struct CowMap<K, V> {
    shards: Vec<Arc<HashMap<K, V>>>,
    len: usize,
}

impl<K, V> Default for CowMap<K, V> {
    fn default() -> Self {
        CowMap {
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(),
            len: 0,
        }
    }
}

fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
    // A fixed hasher: only the spread matters here (each shard's map has its own keys).
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    usize::try_from(h.finish() % SHARDS as u64).unwrap_or(0)
}

impl<K: Hash + Eq + Clone, V: Clone> CowMap<K, V> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards.get(shard_of(key))?.get(key)
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.get(key).is_some()
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let shard = self.shards.get_mut(shard_of(&key))?;
        let old = Arc::make_mut(shard).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shards.get_mut(shard_of(key))?;
        if !shard.contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(shard).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

/// An immutable routing state at one version; [`Snapshot::apply`] makes the next one and
/// shares every unchanged shard with this one.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub version: i64,
    pub accounts: CowMap<String, Arc<AccountState>>,
    keys: CowMap<KeyDigest, Arc<KeyGrant>>,
    key_digest_by_id: CowMap<Arc<str>, KeyDigest>,
    pub policy: Arc<RoutingPolicy>,
}

impl Snapshot {
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
            next.accounts.remove(id.as_str());
        }
        for a in delta.upsert_accounts {
            next.accounts.insert(a.account.id.clone(), Arc::new(a));
        }
        for id in delta.remove_keys {
            if let Some(d) = next.key_digest_by_id.remove(id.as_str()) {
                next.keys.remove(&d);
            }
        }
        let mut interner = Interner::default();
        for k in delta.upsert_keys {
            let digest = digest_from_hex(&k.hash).ok_or_else(|| {
                Error::invalid("keys", format!("key {} has a malformed hash", k.id))
            })?;
            let grant = KeyGrant::of(k, &mut interner);
            if let Some(old) = next.key_digest_by_id.insert(grant.id.clone(), digest)
                && old != digest
            {
                next.keys.remove(&old);
            }
            next.keys.insert(digest, Arc::new(grant));
        }
        if let Some(p) = delta.policy {
            next.policy = Arc::new(p);
        }
        Ok(next)
    }

    /// The key whose plaintext has this digest.
    pub fn key(&self, digest: &KeyDigest) -> Option<&Arc<KeyGrant>> {
        self.keys.get(digest)
    }

    /// The key whose stored hash (hex) is `hash`.
    pub fn key_by_hash(&self, hash: &str) -> Option<&Arc<KeyGrant>> {
        self.key(&digest_from_hex(hash)?)
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
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

    /// A key whose plaintext is `plain`.
    fn key(id: &str, plain: &str) -> PlatformKey {
        PlatformKey {
            id: id.into(),
            spec: KeySpec {
                name: id.into(),
                ..Default::default()
            },
            prefix: "pgk_".into(),
            hash: crate::key::hash_secret(plain),
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
        assert!(s1.key(&key_digest("h1")).is_some());
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
        assert!(s2.key(&key_digest("h1")).is_none());
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

    #[test]
    fn keys_are_found_by_digest_and_follow_their_id() {
        let s1 = Snapshot::default()
            .apply(Delta {
                version: 1,
                full: true,
                upsert_keys: vec![key("k1", "old"), key("k2", "two")],
                ..Default::default()
            })
            .unwrap();
        let k = s1.key(&key_digest("old")).unwrap();
        assert_eq!(&*k.id, "k1");
        assert!(s1.key_by_hash(&crate::key::hash_secret("two")).is_some());
        assert!(s1.key_by_hash("not hex").is_none());
        // The same id with a new secret replaces the old digest.
        let s2 = s1
            .apply(Delta {
                version: 2,
                upsert_keys: vec![key("k1", "new")],
                ..Default::default()
            })
            .unwrap();
        assert!(s2.key(&key_digest("old")).is_none());
        assert_eq!(&*s2.key(&key_digest("new")).unwrap().id, "k1");
        assert_eq!(s2.key_count(), 2);
        assert!(
            s1.key(&key_digest("old")).is_some(),
            "the old snapshot is untouched"
        );
        let mut bad = key("k3", "x");
        bad.hash = "zz".into();
        assert!(
            s2.apply(Delta {
                version: 3,
                upsert_keys: vec![bad],
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn cow_maps_share_untouched_shards() {
        let mut a: CowMap<String, u32> = CowMap::default();
        for i in 0..10_000 {
            a.insert(format!("k{i}"), i);
        }
        assert_eq!(a.len(), 10_000);
        let mut b = a.clone();
        assert_eq!(b.insert("k1".into(), 7), Some(1));
        assert_eq!(b.remove("k2"), Some(2));
        assert_eq!(b.remove("absent"), None);
        assert_eq!((a.len(), b.len()), (10_000, 9_999));
        assert_eq!((a.get("k1"), b.get("k1")), (Some(&1), Some(&7)));
        assert!(a.contains_key("k2") && !b.contains_key("k2"));
        let shared = a
            .shards
            .iter()
            .zip(&b.shards)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(
            shared >= SHARDS - 2,
            "only the touched shards were copied: {shared}"
        );
        let mut seen: Vec<u32> = b.values().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen.len(), 9_999);
        assert_eq!(b.keys().count(), 9_999);
    }

    #[test]
    fn keys_share_equal_lists() {
        let mut a = key("k1", "one");
        a.spec.account_groups = vec!["bulk".into()];
        let mut b = key("k2", "two");
        b.spec.account_groups = vec!["bulk".into()];
        let mut c = key("k3", "three");
        c.spec.account_groups = vec!["other".into()];
        let s = Snapshot::default()
            .apply(Delta {
                version: 1,
                full: true,
                upsert_keys: vec![a, b, c],
                ..Default::default()
            })
            .unwrap();
        let (a, b, c) = (
            s.key(&key_digest("one")).unwrap(),
            s.key(&key_digest("two")).unwrap(),
            s.key(&key_digest("three")).unwrap(),
        );
        assert!(Arc::ptr_eq(&a.account_groups, &b.account_groups));
        assert!(!Arc::ptr_eq(&a.account_groups, &c.account_groups));
        assert_eq!(&*c.account_groups, ["other".to_string()]);
        assert!(
            Arc::ptr_eq(&a.allowed_models, &c.allowed_models),
            "empty lists too"
        );
    }
}
