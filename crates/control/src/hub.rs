//! The snapshot hub: follows the store's change log and serves every gateway the same
//! versioned deltas.
//!
//! One builder task per control plane reads the change log after the version it has built,
//! loads the current state of each changed resource and publishes the result as one shared
//! `Arc<Delta>`, computed once per version range whatever the number of subscribers. It wakes
//! on writes made through this process (the store's local feed), on writes of other replicas
//! (PostgreSQL `LISTEN`), and on a periodic poll that catches anything a notification missed;
//! it waits ~20 ms after a wake so a burst of writes becomes one delta.
//!
//! The hub also keeps the state it has built in memory, with the version at which each
//! resource last changed. A subscriber's first message is built from that state at exactly
//! the version the following deltas continue from: nothing newer, nothing missing.
//! - `have_version` equal to the hub's: no first message (the subscriber is up to date);
//! - within the change log: a catch-up holding the current state of every resource changed
//!   since (removed ones as removals);
//! - 0, older than the change log, or newer than the store: a full snapshot.
//!
//! Deltas go to subscribers through a bounded broadcast buffer. A subscriber that falls
//! further behind than the buffer (a slow gateway) is caught up afresh as above, so it never
//! misses a change and never applies one out of order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::Duration;

use futures::Stream;
use poolgate_core::snapshot::{AccountState, Delta};
use poolgate_core::{PlatformKey, RoutingPolicy};
use poolgate_proto::convert::wire_account_state;
use poolgate_store::{ResourceKind, Store, StoreError};
use tokio::sync::{Mutex, Notify, broadcast, watch};

use crate::metrics::Metrics;

/// Changes read per builder step (the store's cap per call).
const STEP_CHANGES: u32 = 10_000;
/// Removed resources remembered for in-memory catch-ups; beyond this the oldest are dropped
/// and older subscribers catch up from the store's change log instead.
const MAX_TOMBSTONES: usize = 100_000;
/// Longest a subscriber waits for the first snapshot after the control plane starts.
const READY_WAIT: Duration = Duration::from_secs(30);
/// Longest a subscriber ahead of this replica waits for the hub to catch up with the store.
const AHEAD_WAIT: Duration = Duration::from_secs(5);
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Tuning of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// How often the change log is read without a notification.
    pub poll_interval: Duration,
    /// How long to gather a burst of changes into one delta.
    pub coalesce: Duration,
    /// Deltas buffered per subscriber before it counts as lagging.
    pub buffer: usize,
    /// A catch-up that needs more change-log rows than this sends a full snapshot instead.
    pub max_catch_up_changes: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            poll_interval: Duration::from_secs(2),
            coalesce: Duration::from_millis(20),
            buffer: 256,
            max_catch_up_changes: 200_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("the control plane has not loaded its first snapshot yet; retry shortly")]
    NotReady,
    #[error("the control plane is shutting down")]
    Closed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Deltas for one subscriber, in order. It ends (after an error item) when the hub stops.
pub type DeltaStream = Pin<Box<dyn Stream<Item = Result<Arc<Delta>, HubError>> + Send>>;

/// What the hub has built: the gateway view of every resource at `version`.
#[derive(Default)]
struct State {
    loaded: bool,
    version: i64,
    accounts: HashMap<String, Arc<AccountState>>,
    keys: HashMap<String, Arc<PlatformKey>>,
    policy: Arc<RoutingPolicy>,
    /// Version of each resource's newest change seen by the builder, removed ones included.
    account_changed: HashMap<String, i64>,
    key_changed: HashMap<String, i64>,
    policy_changed: i64,
    /// The in-memory change versions are complete for subscribers at or above this version;
    /// older ones need the store's change log for the part below it.
    floor: i64,
    tx: Option<broadcast::Sender<Arc<Delta>>>,
}

struct Inner {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    config: HubConfig,
    state: RwLock<State>,
    version: watch::Sender<i64>,
    kick: Notify,
    /// The full snapshot of the current version while some subscriber still holds it, so
    /// gateways connecting together share one copy.
    full: Mutex<Option<(i64, Weak<Delta>)>>,
}

/// The snapshot hub. Cloning shares it.
#[derive(Clone)]
pub struct SnapshotHub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SnapshotHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotHub")
            .field("version", &self.version())
            .finish_non_exhaustive()
    }
}

/// Resources a first message must carry.
#[derive(Default)]
struct Changed {
    accounts: BTreeSet<String>,
    keys: BTreeSet<String>,
    policy: bool,
}

/// A subscriber attached to the broadcast at `version`, with its first message if any.
struct Attached {
    first: Option<(Arc<Delta>, &'static str)>,
    rx: broadcast::Receiver<Arc<Delta>>,
    version: i64,
}

fn read(lock: &RwLock<State>) -> std::sync::RwLockReadGuard<'_, State> {
    // The state is replaced wholesale under the lock; a panic cannot leave it half-written.
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(lock: &RwLock<State>) -> std::sync::RwLockWriteGuard<'_, State> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn sorted<T>(mut v: Vec<T>, id: impl Fn(&T) -> &str) -> Vec<T> {
    v.sort_unstable_by(|a, b| id(a).cmp(id(b)));
    v
}

/// Keeps the subscriber gauge right however the stream ends.
struct SubscriberGuard(Arc<Metrics>);

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.0.snapshot_unsubscribed();
    }
}

/// What a new subscriber needs first.
enum First {
    Nothing,
    Full,
    CatchUp(CatchUp),
}

/// The shared values of a catch-up, taken under the state lock and copied outside it.
struct CatchUp {
    accounts: Vec<(String, Option<Arc<AccountState>>)>,
    keys: Vec<(String, Option<Arc<PlatformKey>>)>,
    policy: Option<Arc<RoutingPolicy>>,
}

/// Everything changed after `have`: `changed` (from the store's change log, for versions below
/// the in-memory floor) plus what the hub saw change itself.
fn catch_up_parts(st: &State, mut changed: Changed, have: i64) -> CatchUp {
    let newer = |m: &HashMap<String, i64>| -> Vec<String> {
        m.iter()
            .filter(|(_, v)| **v > have)
            .map(|(id, _)| id.clone())
            .collect()
    };
    changed.accounts.extend(newer(&st.account_changed));
    changed.keys.extend(newer(&st.key_changed));
    changed.policy |= st.policy_changed > have;
    CatchUp {
        accounts: changed
            .accounts
            .into_iter()
            .map(|id| {
                let s = st.accounts.get(&id).cloned();
                (id, s)
            })
            .collect(),
        keys: changed
            .keys
            .into_iter()
            .map(|id| {
                let k = st.keys.get(&id).cloned();
                (id, k)
            })
            .collect(),
        policy: changed.policy.then(|| st.policy.clone()),
    }
}

impl CatchUp {
    fn into_delta(self, version: i64) -> Delta {
        let mut d = Delta {
            version,
            full: false,
            policy: self.policy.map(|p| (*p).clone()),
            ..Default::default()
        };
        for (id, s) in self.accounts {
            match s {
                Some(s) => d.upsert_accounts.push((*s).clone()),
                None => d.remove_accounts.push(id),
            }
        }
        for (id, k) in self.keys {
            match k {
                Some(k) => d.upsert_keys.push((*k).clone()),
                None => d.remove_keys.push(id),
            }
        }
        d
    }
}

impl SnapshotHub {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>, config: HubConfig) -> Self {
        SnapshotHub {
            inner: Arc::new(Inner {
                store,
                metrics,
                config,
                state: RwLock::new(State::default()),
                version: watch::channel(0).0,
                kick: Notify::new(),
                full: Mutex::new(None),
            }),
        }
    }

    /// The newest version the hub has built (0 before the first load).
    pub fn version(&self) -> i64 {
        *self.inner.version.borrow()
    }

    /// Wakes the builder now (it also wakes on its own on every store write).
    pub fn wake(&self) {
        self.inner.kick.notify_one();
    }

    /// A stream of deltas for a subscriber that has applied `have_version` (0: nothing). The
    /// first item brings it up to date (none when it already is); each later one is the
    /// next delta. Items are shared with every other subscriber: clone to own one.
    pub async fn subscribe(&self, have_version: i64) -> Result<DeltaStream, HubError> {
        self.wait_loaded().await?;
        let attached = self.attach(have_version.max(0)).await?;
        let metrics = self.inner.metrics.clone();
        metrics.snapshot_subscribed();
        let guard = SubscriberGuard(metrics);
        let hub = self.clone();
        Ok(Box::pin(futures::stream::unfold(
            Some((hub, attached, guard)),
            |st| async move {
                let (hub, mut a, guard) = st?;
                match hub.next_for(&mut a).await {
                    Ok(d) => Some((Ok(d), Some((hub, a, guard)))),
                    Err(e) => Some((Err(e), None)),
                }
            },
        )))
    }

    async fn wait_loaded(&self) -> Result<(), HubError> {
        let mut rx = self.inner.version.subscribe();
        let loaded = tokio::time::timeout(READY_WAIT, async {
            loop {
                if read(&self.inner.state).loaded {
                    return true;
                }
                if rx.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        match loaded {
            Ok(true) => Ok(()),
            Ok(false) => Err(HubError::Closed),
            Err(_) => Err(HubError::NotReady),
        }
    }

    /// The subscriber's next message.
    async fn next_for(&self, a: &mut Attached) -> Result<Arc<Delta>, HubError> {
        loop {
            if let Some((d, kind)) = a.first.take() {
                a.version = d.version;
                self.inner.metrics.snapshot_message(kind);
                return Ok(d);
            }
            match a.rx.recv().await {
                // Already covered by the first message; a full one (a store restored to an
                // older version) always applies.
                Ok(d) if !d.full && d.version <= a.version => {}
                Ok(d) => {
                    a.version = d.version;
                    self.inner
                        .metrics
                        .snapshot_message(if d.full { "full" } else { "delta" });
                    return Ok(d);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.inner.metrics.snapshot_lagged();
                    *a = self.attach(a.version).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Err(HubError::Closed),
            }
        }
    }

    /// Attaches a subscriber at the hub's current version with the first message it needs.
    async fn attach(&self, mut have: i64) -> Result<Attached, HubError> {
        if have > self.version() {
            // Another replica may have built further than this one: wait for ours to catch
            // up with the store, unless the store itself is behind (restored from a backup).
            let current = self.inner.store.current_version().await?;
            if have <= current {
                self.wait_for(have).await;
            }
            if have > self.version() {
                have = 0;
            }
        }
        // Two tries: the in-memory floor only moves when tombstones are dropped.
        for _ in 0..2 {
            let floor = read(&self.inner.state).floor;
            let from_log = if have > 0 && have < floor {
                self.changed_in_log(have, floor).await?
            } else if have > 0 {
                self.log_reaches(have).await
            } else {
                None
            };
            let (rx, version, first) = {
                let st = read(&self.inner.state);
                if st.floor != floor {
                    continue;
                }
                let rx = st.tx.as_ref().ok_or(HubError::Closed)?.subscribe();
                let first = match from_log.filter(|_| have > 0 && have <= st.version) {
                    None => First::Full,
                    Some(_) if have == st.version => First::Nothing,
                    Some(changed) => First::CatchUp(catch_up_parts(&st, changed, have)),
                };
                (rx, st.version, first)
            };
            let first = match first {
                First::Nothing => None,
                First::Full => Some((self.full_snapshot().await, "full")),
                First::CatchUp(parts) => Some((Arc::new(parts.into_delta(version)), "catch_up")),
            };
            return Ok(Attached { first, rx, version });
        }
        Err(HubError::NotReady)
    }

    /// Resources changed in `(have, through]` according to the store's change log, or `None`
    /// when the log no longer reaches back to `have` (or the catch-up would be too large).
    async fn changed_in_log(&self, have: i64, through: i64) -> Result<Option<Changed>, HubError> {
        let store = &self.inner.store;
        let mut changed = Changed::default();
        let (mut after, mut rows) = (have, 0usize);
        while after < through {
            let batch = store.changes_since(after, STEP_CHANGES).await?;
            let Some(last) = batch.last().map(|c| c.version) else {
                break;
            };
            rows += batch.len();
            if rows > self.inner.config.max_catch_up_changes {
                return Ok(None);
            }
            for c in batch.into_iter().take_while(|c| c.version <= through) {
                match c.kind {
                    ResourceKind::Account => {
                        changed.accounts.insert(c.id);
                    }
                    ResourceKind::Key => {
                        changed.keys.insert(c.id);
                    }
                    ResourceKind::Policy => changed.policy = true,
                }
            }
            after = last;
        }
        // Checked after reading: retention only ever removes the oldest rows, so if the log
        // still starts at or before `have + 1`, nothing needed was gone when it was read.
        let oldest = store.oldest_change_version().await?;
        Ok((oldest > 0 && oldest <= have + 1).then_some(changed))
    }

    /// Whether the store's change log still reaches back to `have`. The hub remembers more,
    /// but every replica must answer alike, whether it just started or not. When the store
    /// cannot say, the hub's memory (which is complete above the floor) decides.
    async fn log_reaches(&self, have: i64) -> Option<Changed> {
        match self.inner.store.oldest_change_version().await {
            Ok(oldest) if oldest > 0 && oldest > have + 1 => None,
            Ok(_) => Some(Changed::default()),
            Err(e) => {
                tracing::debug!(
                    error = %e,
                    "cannot read the change log's start; catching up from memory"
                );
                Some(Changed::default())
            }
        }
    }

    /// The full snapshot of the current version, built once and shared while in use.
    async fn full_snapshot(&self) -> Arc<Delta> {
        let mut cache = self.inner.full.lock().await;
        let (version, accounts, keys, policy) = {
            let st = read(&self.inner.state);
            if let Some((v, weak)) = cache.as_ref()
                && *v == st.version
                && let Some(full) = weak.upgrade()
            {
                return full;
            }
            let accounts: Vec<Arc<AccountState>> = st.accounts.values().cloned().collect();
            let keys: Vec<Arc<PlatformKey>> = st.keys.values().cloned().collect();
            (st.version, accounts, keys, st.policy.clone())
        };
        // Built once per version (tens of milliseconds for a large pool), then shared.
        let full = Arc::new(Delta {
            version,
            full: true,
            upsert_accounts: sorted(
                accounts.iter().map(|a| (**a).clone()).collect(),
                |a: &AccountState| &a.account.id,
            ),
            remove_accounts: Vec::new(),
            upsert_keys: sorted(keys.iter().map(|k| (**k).clone()).collect(), |k| &k.id),
            remove_keys: Vec::new(),
            policy: Some((*policy).clone()),
        });
        *cache = Some((version, Arc::downgrade(&full)));
        full
    }

    async fn wait_for(&self, version: i64) {
        let mut rx = self.inner.version.subscribe();
        self.wake();
        let _ = tokio::time::timeout(AHEAD_WAIT, rx.wait_for(|v| *v >= version)).await;
    }

    // --------------------------------------------------------------------------- builder

    /// The builder: loads the state, then follows the change log until `stop` turns true.
    /// Subscribers' streams end when it returns.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let inner = &self.inner;
        let mut local = inner.store.local_changes();
        let mut remote = inner.store.remote_changes();
        let mut backoff = RETRY_MIN;
        loop {
            match self.load_full().await {
                Ok(()) => break,
                Err(e) => {
                    inner.metrics.store_error("snapshot");
                    tracing::warn!(
                        error = %e,
                        retry_in = ?backoff,
                        "cannot load the snapshot state; retrying"
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = crate::stopped(&mut stop) => return self.close(),
            }
            backoff = (backoff * 2).min(RETRY_MAX);
        }
        let mut poll = tokio::time::interval(inner.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            let mut polled = false;
            tokio::select! {
                _ = crate::stopped(&mut stop) => break,
                r = local.changed() => if r.is_err() {
                    // The store outlives the hub; should it not, polling still works.
                    local = watch::channel(0).1;
                },
                alive = changed_opt(remote.as_mut()) => if !alive {
                    remote = None;
                },
                _ = poll.tick() => polled = true,
                _ = inner.kick.notified() => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(inner.config.coalesce) => {}
                _ = crate::stopped(&mut stop) => break,
            }
            local.borrow_and_update();
            if let Some(r) = remote.as_mut() {
                r.borrow_and_update();
            }
            if let Err(e) = self.catch_up(polled).await {
                inner.metrics.store_error("snapshot");
                tracing::warn!(error = %e, "cannot read the change log; retrying at the next poll");
            }
        }
        self.close();
    }

    /// Ends every subscriber's stream.
    fn close(&self) {
        write(&self.inner.state).tx = None;
    }

    async fn catch_up(&self, polled: bool) -> Result<(), StoreError> {
        if polled {
            let current = self.inner.store.current_version().await?;
            if current < read(&self.inner.state).version {
                tracing::warn!(
                    store = current,
                    hub = self.version(),
                    "the store's change log is behind the snapshot (restored from a backup?); \
                     sending every gateway a full snapshot"
                );
                return self.load_full().await;
            }
        }
        while self.step().await? {}
        Ok(())
    }

    /// Loads everything and (after the first load) sends it to every subscriber as a full
    /// snapshot.
    async fn load_full(&self) -> Result<(), StoreError> {
        let full = self.inner.store.load_all_states().await?;
        let accounts: HashMap<String, Arc<AccountState>> = full
            .accounts
            .into_iter()
            .map(|s| (s.account.id.clone(), Arc::new(wire_account_state(s))))
            .collect();
        let keys: HashMap<String, Arc<PlatformKey>> = full
            .keys
            .into_iter()
            .map(|k| (k.id.clone(), Arc::new(k)))
            .collect();
        let (n_accounts, n_keys) = (accounts.len(), keys.len());
        let was_loaded = {
            let mut st = write(&self.inner.state);
            let was_loaded = st.loaded;
            let tx = match st.tx.take() {
                Some(tx) => tx,
                None if !was_loaded => broadcast::channel(self.inner.config.buffer.max(1)).0,
                // Closed: the hub is stopping.
                None => return Ok(()),
            };
            *st = State {
                loaded: true,
                version: full.version,
                accounts,
                keys,
                policy: Arc::new(full.policy),
                account_changed: HashMap::new(),
                key_changed: HashMap::new(),
                policy_changed: 0,
                floor: full.version,
                tx: Some(tx),
            };
            was_loaded
        };
        if was_loaded {
            let d = self.full_snapshot().await;
            if let Some(tx) = &read(&self.inner.state).tx {
                let _ = tx.send(d);
            }
        }
        self.publish_version(full.version);
        tracing::info!(
            version = full.version,
            accounts = n_accounts,
            keys = n_keys,
            "snapshot state loaded"
        );
        Ok(())
    }

    fn publish_version(&self, version: i64) {
        self.inner.version.send_replace(version);
        self.inner.metrics.snapshot_version(version);
    }

    /// Builds and publishes one delta; returns whether more changes may be waiting.
    async fn step(&self) -> Result<bool, StoreError> {
        let store = &self.inner.store;
        let from = read(&self.inner.state).version;
        let changes = store.changes_since(from, STEP_CHANGES).await?;
        let Some(to) = changes.last().map(|c| c.version) else {
            return Ok(false);
        };
        let more = changes.len() >= STEP_CHANGES as usize;
        let mut account_ids: BTreeMap<String, i64> = BTreeMap::new();
        let mut key_ids: BTreeMap<String, i64> = BTreeMap::new();
        let mut policy_version = None;
        for c in changes {
            match c.kind {
                ResourceKind::Account => {
                    account_ids.insert(c.id, c.version);
                }
                ResourceKind::Key => {
                    key_ids.insert(c.id, c.version);
                }
                ResourceKind::Policy => policy_version = Some(c.version),
            }
        }
        let ids: Vec<String> = account_ids.keys().cloned().collect();
        let accounts: Vec<AccountState> = store
            .load_account_states(&ids)
            .await?
            .into_iter()
            .map(wire_account_state)
            .collect();
        let ids: Vec<String> = key_ids.keys().cloned().collect();
        let keys = store.load_keys(&ids).await?;
        let policy = match policy_version {
            Some(_) => Some(store.get_policy().await?),
            None => None,
        };

        let mut d = Delta {
            version: to,
            full: false,
            policy,
            ..Default::default()
        };
        let present: BTreeSet<&str> = accounts.iter().map(|a| a.account.id.as_str()).collect();
        d.remove_accounts = account_ids
            .keys()
            .filter(|id| !present.contains(id.as_str()))
            .cloned()
            .collect();
        let present: BTreeSet<&str> = keys.iter().map(|k| k.id.as_str()).collect();
        d.remove_keys = key_ids
            .keys()
            .filter(|id| !present.contains(id.as_str()))
            .cloned()
            .collect();
        d.upsert_accounts = accounts;
        d.upsert_keys = keys;

        let mut st = write(&self.inner.state);
        if st.version != from || st.tx.is_none() {
            // Reloaded or closed meanwhile: this delta is stale.
            return Ok(false);
        }
        for id in &d.remove_accounts {
            st.accounts.remove(id);
        }
        for a in &d.upsert_accounts {
            st.accounts
                .insert(a.account.id.clone(), Arc::new(a.clone()));
        }
        for id in &d.remove_keys {
            st.keys.remove(id);
        }
        for k in &d.upsert_keys {
            st.keys.insert(k.id.clone(), Arc::new(k.clone()));
        }
        if let Some(p) = &d.policy {
            st.policy = Arc::new(p.clone());
        }
        st.account_changed.extend(account_ids);
        st.key_changed.extend(key_ids);
        if let Some(v) = policy_version {
            st.policy_changed = v;
        }
        st.version = to;
        drop_old_tombstones(&mut st);
        let (n_accounts, n_keys) = (d.upsert_accounts.len(), d.upsert_keys.len());
        let (r_accounts, r_keys) = (d.remove_accounts.len(), d.remove_keys.len());
        if let Some(tx) = &st.tx {
            // No receiver is fine: nobody is watching right now.
            let _ = tx.send(Arc::new(d));
        }
        drop(st);
        self.publish_version(to);
        tracing::debug!(
            from,
            to,
            accounts = n_accounts,
            keys = n_keys,
            removed_accounts = r_accounts,
            removed_keys = r_keys,
            "snapshot delta built"
        );
        Ok(more)
    }
}

/// Forgets removed resources once there are too many; subscribers older than the newest
/// forgotten removal then catch up through the store's change log.
fn drop_old_tombstones(st: &mut State) {
    let tombstones = st.account_changed.len().saturating_sub(st.accounts.len())
        + st.key_changed.len().saturating_sub(st.keys.len());
    if tombstones <= MAX_TOMBSTONES {
        return;
    }
    let State {
        accounts,
        keys,
        account_changed,
        key_changed,
        floor,
        ..
    } = st;
    let mut newest_dropped = *floor;
    account_changed.retain(|id, v| {
        let keep = accounts.contains_key(id);
        if !keep {
            newest_dropped = newest_dropped.max(*v);
        }
        keep
    });
    key_changed.retain(|id, v| {
        let keep = keys.contains_key(id);
        if !keep {
            newest_dropped = newest_dropped.max(*v);
        }
        keep
    });
    *floor = newest_dropped;
}

/// Whether the feed is still alive after it changed; pending forever without a feed.
async fn changed_opt(rx: Option<&mut watch::Receiver<i64>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tombstones_are_dropped_past_the_limit_and_raise_the_floor() {
        let mut st = State {
            floor: 5,
            ..Default::default()
        };
        let live = Arc::new(PlatformKey {
            id: "key_live".into(),
            spec: Default::default(),
            prefix: "pgk_".into(),
            hash: "h".into(),
            status: poolgate_core::KeyStatus::Active,
            managed_by: poolgate_core::ManagedBy::Api,
            managed_ref: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        });
        st.keys.insert("key_live".into(), live);
        st.key_changed.insert("key_live".into(), 7);
        for i in 0..MAX_TOMBSTONES {
            st.key_changed.insert(format!("key_{i}"), 10 + i as i64);
        }
        drop_old_tombstones(&mut st);
        assert_eq!(st.floor, 5, "at the limit nothing is dropped");
        assert_eq!(st.key_changed.len(), MAX_TOMBSTONES + 1);
        st.account_changed.insert("acc_gone".into(), 3);
        drop_old_tombstones(&mut st);
        assert_eq!(st.key_changed.len(), 1);
        assert!(st.account_changed.is_empty());
        assert_eq!(st.key_changed["key_live"], 7);
        assert_eq!(st.floor, 10 + MAX_TOMBSTONES as i64 - 1);
    }
}
