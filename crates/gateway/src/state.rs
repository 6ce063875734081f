//! What the gateway holds between requests: the applied snapshot (swapped atomically; a
//! request keeps the view it started with) and this gateway's health of every account
//! (kept across snapshots, so a new snapshot does not forget in-flight counts or local
//! cooldowns).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures::StreamExt;
use poolgate_core::snapshot::{AccountState, Delta, Snapshot};
use poolgate_core::{AccountStatus, Provider, StatusReason, UnixMillis};
use poolgate_routing::{
    AccountHealth, AttemptSkip, BalancedCursor, Cooldown, HealthSource, Load, Outcome, Plan,
    Prefilter, ProviderSet, Rng, RouteAccount, RouteRequest, Router, routing_order,
};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::source::SnapshotSource;

/// Rotation counters kept for `balanced` (key, model) pairs.
const CURSOR_CAPACITY: usize = 4096;

/// Prefilters a view keeps, one per (model, allowed groups, providers) seen. Each holds at
/// most one index or skip per account; past the cap the cache starts over, which costs one
/// full eligibility scan per request shape.
const PREFILTER_CAPACITY: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks cannot leave the data half-written
    // (every critical section is a copy or a single update), so a poisoned lock is usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One account's health on this gateway. `Load` (read for every eligible account on every
/// request) is mirrored in atomics; the rest sits behind a short lock.
pub(crate) struct HealthCell {
    health: Mutex<AccountHealth>,
    inflight: AtomicU32,
    /// 0 = none.
    cooldown_until: AtomicI64,
    gauge: Gauge,
}

impl HealthCell {
    fn new(account_id: &str, metrics: &Metrics) -> Self {
        HealthCell {
            health: Mutex::new(AccountHealth::default()),
            inflight: AtomicU32::new(0),
            cooldown_until: AtomicI64::new(0),
            gauge: metrics.inflight_gauge(account_id),
        }
    }

    pub fn health(&self) -> AccountHealth {
        *lock(&self.health)
    }

    pub fn load(&self) -> Load {
        let until = self.cooldown_until.load(Ordering::Relaxed);
        Load {
            inflight: self.inflight.load(Ordering::Relaxed),
            cooldown_until_ms: (until != 0).then_some(until),
        }
    }

    fn mirror(&self, h: &AccountHealth) {
        self.inflight.store(h.inflight(), Ordering::Relaxed);
        let until = h.cooldown().map_or(0, |c| c.until_ms);
        self.cooldown_until.store(until, Ordering::Relaxed);
    }

    /// Checks whether the account should be passed over and, if not, counts the attempt in
    /// flight, under one lock so concurrent requests cannot both take the last slot.
    pub fn try_acquire(
        self: &Arc<Self>,
        router: &Router,
        account: &RouteAccount,
        now_ms: UnixMillis,
        is_last: bool,
    ) -> Result<InflightGuard, AttemptSkip> {
        let mut h = lock(&self.health);
        if let Some(skip) = router.should_skip(account, &h, now_ms, is_last) {
            return Err(skip);
        }
        h.acquire();
        self.mirror(&h);
        drop(h);
        self.gauge.inc();
        Ok(InflightGuard {
            cell: Some(self.clone()),
        })
    }

    pub fn record(
        &self,
        router: &Router,
        outcome: Outcome,
        now_ms: UnixMillis,
    ) -> Option<Cooldown> {
        let mut h = lock(&self.health);
        let c = router.record(&mut h, outcome, now_ms);
        self.mirror(&h);
        c
    }

    #[cfg(test)]
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }
}

/// Counts one attempt in flight until dropped (when the response has been fully streamed,
/// the client went away, or the attempt failed over).
pub(crate) struct InflightGuard {
    /// `None` once released by [`InflightGuard::record_and_release`].
    cell: Option<Arc<HealthCell>>,
}

impl InflightGuard {
    /// Records the attempt's outcome and frees its slot under one lock of the account's
    /// health: an answer read whole ends both at once, and every serving thread takes that
    /// lock for the same busy account.
    pub fn record_and_release(
        mut self,
        router: &Router,
        outcome: Outcome,
        now_ms: UnixMillis,
    ) -> Option<Cooldown> {
        let cell = self.cell.take()?;
        let mut h = lock(&cell.health);
        let c = router.record(&mut h, outcome, now_ms);
        h.release();
        cell.mirror(&h);
        drop(h);
        cell.gauge.dec();
        c
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        let Some(cell) = self.cell.take() else {
            return;
        };
        let mut h = lock(&cell.health);
        h.release();
        cell.mirror(&h);
        drop(h);
        cell.gauge.dec();
    }
}

/// One applied snapshot, prepared for routing: the accounts sorted once by
/// [`routing_order`], with their state and health cells at the same positions. The routing
/// side sits behind `Arc`s so a delta that changes only keys shares it with the previous
/// view instead of rebuilding it (key churn must not cost a pass over every account).
pub(crate) struct View {
    pub snapshot: Snapshot,
    pub accounts: Arc<Vec<RouteAccount>>,
    pub states: Arc<Vec<Arc<AccountState>>>,
    pub cells: Arc<Vec<Arc<HealthCell>>>,
    pub router: Arc<Router>,
    /// The time-independent part of eligibility per request shape, for this view's accounts
    /// only: a snapshot that changes accounts or the policy starts with an empty cache.
    prefilters: Arc<Mutex<PrefilterCache>>,
}

/// What a prefilter depends on, besides the accounts.
#[derive(Debug, PartialEq, Eq)]
struct PrefilterKey {
    model: String,
    translated: Option<(ProviderSet, String)>,
    groups: Vec<String>,
    providers: ProviderSet,
}

impl PrefilterKey {
    fn matches(&self, req: &RouteRequest<'_>) -> bool {
        self.model == req.model
            && self.translated.as_ref().map(|(p, m)| (*p, m.as_str()))
                == req.translated.map(|t| (t.providers, t.model))
            && self.groups.as_slice() == req.allowed_groups
            && self.providers == req.providers
    }
}

/// Keyed by a hash of the request shape so a lookup allocates nothing; the stored key
/// settles collisions.
#[derive(Default)]
struct PrefilterCache {
    hasher: RandomState,
    entries: HashMap<u64, (PrefilterKey, Arc<Prefilter>)>,
}

impl View {
    fn new(
        snapshot: Snapshot,
        accounts: Vec<RouteAccount>,
        states: Vec<Arc<AccountState>>,
        cells: Vec<Arc<HealthCell>>,
        router: Router,
    ) -> Self {
        View {
            snapshot,
            accounts: Arc::new(accounts),
            states: Arc::new(states),
            cells: Arc::new(cells),
            router: Arc::new(router),
            prefilters: Arc::new(Mutex::new(PrefilterCache::default())),
        }
    }

    /// This view's routing side over a snapshot whose accounts and policy are the same.
    fn with_snapshot(&self, snapshot: Snapshot) -> Self {
        View {
            snapshot,
            accounts: self.accounts.clone(),
            states: self.states.clone(),
            cells: self.cells.clone(),
            router: self.router.clone(),
            prefilters: self.prefilters.clone(),
        }
    }

    pub fn version(&self) -> i64 {
        self.snapshot.version
    }

    /// [`Router::plan`] over this view's accounts, with the time-independent eligibility
    /// rules taken from the cache: the same plan, without rescanning the whole pool for
    /// every request.
    pub fn plan<H: HealthSource + ?Sized>(
        &self,
        req: &RouteRequest<'_>,
        health: &H,
        now_ms: UnixMillis,
        rotation: u64,
        rng: &mut impl Rng,
    ) -> Plan {
        let pre = self.prefilter(req);
        self.router
            .plan_prefiltered(&self.accounts, &pre, req, health, now_ms, rotation, rng)
    }

    fn prefilter(&self, req: &RouteRequest<'_>) -> Arc<Prefilter> {
        let hash = {
            let cache = lock(&self.prefilters);
            let hash = cache.hasher.hash_one((
                req.model,
                req.translated,
                req.allowed_groups,
                req.providers,
            ));
            if let Some((key, pre)) = cache.entries.get(&hash)
                && key.matches(req)
            {
                return pre.clone();
            }
            hash
        };
        // Built outside the lock: other requests keep using the cache meanwhile.
        let pre = Arc::new(Prefilter::new(&self.accounts, req));
        let mut cache = lock(&self.prefilters);
        if cache.entries.len() >= PREFILTER_CAPACITY && !cache.entries.contains_key(&hash) {
            cache.entries.clear();
        }
        let key = PrefilterKey {
            model: req.model.to_string(),
            translated: req.translated.map(|t| (t.providers, t.model.to_string())),
            groups: req.allowed_groups.to_vec(),
            providers: req.providers,
        };
        cache.entries.insert(hash, (key, pre.clone()));
        pre
    }

    #[cfg(test)]
    fn cached_prefilters(&self) -> usize {
        lock(&self.prefilters).entries.len()
    }
}

/// [`HealthSource`] over a view's cells: `load` from atomics, `health` under the lock.
pub(crate) struct Cells<'a>(pub &'a [Arc<HealthCell>]);

impl HealthSource for Cells<'_> {
    fn health(&self, index: usize, _: &RouteAccount) -> AccountHealth {
        self.0.get(index).map(|c| c.health()).unwrap_or_default()
    }

    fn load(&self, index: usize, _: &RouteAccount) -> Load {
        self.0.get(index).map(|c| c.load()).unwrap_or_default()
    }
}

/// The routing fields of an account. One without credentials cannot be sent anything: it
/// routes as unavailable (auth invalid) so the skip summary says why.
/// The models an account serves: its filter, or when it sets none, what its provider can
/// serve at all. An Azure deployment is one model (named like the deployment unless the
/// filter says otherwise); an Anthropic key serves Claude models. Codex and OpenAI accounts
/// without a filter take any model.
fn served_models(spec: &poolgate_core::AccountSpec) -> Vec<String> {
    if !spec.model_filter.is_empty() {
        return spec.model_filter.clone();
    }
    match (spec.provider, &spec.azure) {
        (Provider::AzureOpenAi, Some(az)) => vec![az.deployment.clone()],
        (Provider::Anthropic, _) => vec!["claude-*".to_string()],
        _ => Vec::new(),
    }
}

pub(crate) fn route_account(s: &AccountState) -> RouteAccount {
    let a = &s.account;
    let (status, status_reason) = if s.credentials.is_none() {
        (AccountStatus::Unavailable, Some(StatusReason::AuthInvalid))
    } else {
        (a.status, a.status_reason)
    };
    RouteAccount {
        id: a.id.clone(),
        provider: a.spec.provider,
        group: a.spec.group.clone(),
        priority: a.spec.priority,
        enabled: a.spec.enabled,
        status,
        status_reason,
        max_inflight: a.spec.max_inflight,
        model_filter: served_models(&a.spec),
        usage: s.usage.clone(),
        cooldown_until_ms: s.cooldown_until_ms,
    }
}

pub(crate) struct Shared {
    view: ArcSwapOption<View>,
    cells: Mutex<HashMap<String, Arc<HealthCell>>>,
    cursor: Mutex<BalancedCursor>,
    pub metrics: Arc<Metrics>,
}

impl Shared {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Shared {
            view: ArcSwapOption::empty(),
            cells: Mutex::new(HashMap::new()),
            cursor: Mutex::new(BalancedCursor::new(CURSOR_CAPACITY)),
            metrics,
        }
    }

    /// The current view; `None` until the first snapshot arrived.
    pub fn view(&self) -> Option<Arc<View>> {
        self.view.load_full()
    }

    pub fn version(&self) -> i64 {
        self.view.load().as_ref().map_or(0, |v| v.version())
    }

    pub fn rotation(&self, router: &Router, req: &poolgate_routing::RouteRequest<'_>) -> u64 {
        // Only `balanced` keeps counters; `ordered` needs no lock.
        if router.policy().strategy != poolgate_core::Strategy::Balanced {
            return 0;
        }
        router.rotation(&mut lock(&self.cursor), req)
    }

    /// Applies a delta on top of the current snapshot and swaps the new view in.
    pub fn apply(&self, delta: Delta) -> Result<i64, poolgate_core::Error> {
        let current = self.view();
        let keys_only = !delta.full
            && delta.upsert_accounts.is_empty()
            && delta.remove_accounts.is_empty()
            && delta.policy.is_none();
        let view = match current.as_deref() {
            Some(cur) if keys_only => cur.with_snapshot(cur.snapshot.apply(delta)?),
            Some(cur) => self.build_view(cur.snapshot.apply(delta)?),
            None => self.build_view(Snapshot::default().apply(Delta {
                full: true,
                ..delta
            })?),
        };
        let version = view.version();
        self.view.store(Some(Arc::new(view)));
        self.metrics.snapshot_applied(version);
        Ok(version)
    }

    fn build_view(&self, snapshot: Snapshot) -> View {
        let mut states: Vec<Arc<AccountState>> = snapshot.accounts.values().cloned().collect();
        let mut accounts: Vec<(RouteAccount, Arc<AccountState>)> =
            states.drain(..).map(|s| (route_account(&s), s)).collect();
        accounts.sort_by(|a, b| routing_order(&a.0, &b.0));
        let mut cells_by_id = lock(&self.cells);
        // Accounts gone from the snapshot lose their cell (in-flight requests keep theirs
        // through the guard); the rest keep health across snapshots.
        let removed: Vec<String> = cells_by_id
            .keys()
            .filter(|id| !snapshot.accounts.contains_key(*id))
            .cloned()
            .collect();
        for id in &removed {
            cells_by_id.remove(id);
            self.metrics.forget_account(id);
        }
        let cells = accounts
            .iter()
            .map(|(a, _)| {
                cells_by_id
                    .entry(a.id.clone())
                    .or_insert_with(|| Arc::new(HealthCell::new(&a.id, &self.metrics)))
                    .clone()
            })
            .collect();
        drop(cells_by_id);
        let router = Router::new((*snapshot.policy).clone());
        let (accounts, states) = accounts.into_iter().unzip();
        View::new(snapshot, accounts, states, cells, router)
    }
}

/// Follows the snapshot source until shutdown: applies each delta, reconnects with backoff
/// (resuming from the applied version) when the stream ends or fails, and keeps serving the
/// last snapshot meanwhile.
pub(crate) async fn follow_snapshots(
    shared: Arc<Shared>,
    source: Arc<dyn SnapshotSource>,
    backoff_max: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let min_backoff = Duration::from_millis(200);
    let mut backoff = min_backoff;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let have = shared.version();
        let watched = tokio::select! {
            r = source.watch(have) => r,
            _ = shutdown.changed() => return,
        };
        match watched {
            Ok(mut stream) => {
                shared.metrics.snapshot_connected(true);
                tracing::info!(have_version = have, "snapshot stream connected");
                loop {
                    let item = tokio::select! {
                        i = stream.next() => i,
                        _ = shutdown.changed() => {
                            shared.metrics.snapshot_connected(false);
                            return;
                        }
                    };
                    match item {
                        Some(Ok(delta)) => {
                            let (v, full) = (delta.version, delta.full);
                            match shared.apply(delta) {
                                Ok(_) => {
                                    backoff = min_backoff;
                                    tracing::debug!(version = v, full, "snapshot applied");
                                }
                                Err(e) => {
                                    // A delta that does not fit means our version is off:
                                    // reconnect, which resumes from what is applied.
                                    tracing::warn!(version = v, error = %e, "snapshot delta rejected; reconnecting");
                                    break;
                                }
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "snapshot stream failed");
                            break;
                        }
                        None => {
                            tracing::warn!("snapshot stream ended");
                            break;
                        }
                    }
                }
                shared.metrics.snapshot_connected(false);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot watch snapshots; serving the last one");
            }
        }
        let jitter = Duration::from_millis(crate::ids::random_u64() % 100);
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(backoff_max.max(min_backoff));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poolgate_core::{Account, AccountSpec, Credentials, ManagedBy, Provider, Secret};

    pub(crate) fn state(id: &str, priority: i32) -> AccountState {
        let mut spec = AccountSpec::new(Provider::OpenAi, id);
        spec.priority = priority;
        AccountState {
            account: Account {
                id: id.into(),
                spec,
                status: AccountStatus::Active,
                status_reason: None,
                identity: None,
                managed_by: ManagedBy::Api,
                managed_ref: None,
                has_credentials: true,
                created_at_ms: 0,
                updated_at_ms: 0,
            },
            credentials: Some(Credentials::ApiKey {
                key: Secret::new("sk"),
            }),
            usage: None,
            cooldown_until_ms: None,
        }
    }

    #[test]
    fn a_key_only_delta_keeps_the_routing_side() {
        let shared = Shared::new(Arc::new(Metrics::new()));
        shared
            .apply(Delta {
                version: 1,
                full: true,
                upsert_accounts: vec![state("a", 0), state("b", 0)],
                ..Default::default()
            })
            .unwrap();
        let v1 = shared.view().unwrap();
        let req = RouteRequest::new("m", "k");
        let _ = v1.prefilter(&req);
        let mut key = poolgate_core::PlatformKey {
            id: "k1".into(),
            spec: Default::default(),
            prefix: "pgk_".into(),
            hash: poolgate_core::key::hash_secret("secret"),
            status: poolgate_core::KeyStatus::Active,
            managed_by: ManagedBy::Api,
            managed_ref: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        key.spec.name = "k1".into();
        shared
            .apply(Delta {
                version: 2,
                upsert_keys: vec![key],
                ..Default::default()
            })
            .unwrap();
        let v2 = shared.view().unwrap();
        assert_eq!(v2.version(), 2);
        assert!(
            v2.snapshot
                .key(&poolgate_core::snapshot::key_digest("secret"))
                .is_some()
        );
        assert!(Arc::ptr_eq(&v1.accounts, &v2.accounts));
        assert!(Arc::ptr_eq(&v1.cells, &v2.cells));
        assert_eq!(
            v2.cached_prefilters(),
            1,
            "the eligibility cache carries over"
        );
        // An account change rebuilds the routing side.
        shared
            .apply(Delta {
                version: 3,
                upsert_accounts: vec![state("c", 0)],
                ..Default::default()
            })
            .unwrap();
        let v3 = shared.view().unwrap();
        assert!(!Arc::ptr_eq(&v2.accounts, &v3.accounts));
        assert_eq!(v3.accounts.len(), 3);
        assert_eq!(v3.cached_prefilters(), 0);
    }

    #[test]
    fn views_sort_accounts_and_keep_health_across_snapshots() {
        let shared = Shared::new(Arc::new(Metrics::new()));
        assert!(shared.view().is_none());
        shared
            .apply(Delta {
                version: 1,
                full: true,
                upsert_accounts: vec![state("b", 0), state("a", 0), state("c", -1)],
                ..Default::default()
            })
            .unwrap();
        let v1 = shared.view().unwrap();
        let ids: Vec<&str> = v1.accounts.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["c", "a", "b"]);
        let guard = v1.cells[1]
            .try_acquire(&v1.router, &v1.accounts[1], 0, false)
            .unwrap();
        let mut no_creds = state("d", 5);
        no_creds.credentials = None;
        shared
            .apply(Delta {
                version: 2,
                remove_accounts: vec!["c".into()],
                upsert_accounts: vec![no_creds],
                ..Default::default()
            })
            .unwrap();
        let v2 = shared.view().unwrap();
        assert_eq!(v2.version(), 2);
        assert_eq!(v2.accounts[0].id, "a");
        assert_eq!(v2.cells[0].inflight(), 1, "in-flight survives the swap");
        assert_eq!(v2.accounts[2].status, AccountStatus::Unavailable);
        // The old view is untouched: a request keeps what it started with.
        assert_eq!(v1.accounts.len(), 3);
        drop(guard);
        assert_eq!(v2.cells[0].inflight(), 0);
        assert!(
            shared
                .apply(Delta {
                    version: 2,
                    ..Default::default()
                })
                .is_err()
        );
    }

    #[test]
    fn cached_prefilters_plan_like_the_router_and_start_over_per_snapshot() {
        use poolgate_routing::SplitMix64;
        let shared = Shared::new(Arc::new(Metrics::new()));
        let mut filtered = state("f", 0);
        filtered.account.spec.model_filter = vec!["gpt-5*".into()];
        let mut batch = state("g", 0);
        batch.account.spec.group = "batch".into();
        let mut limited = state("q", 2);
        limited.usage = Some(poolgate_core::UsageSnapshot {
            primary: Some(poolgate_core::UsageWindow {
                used_percent: 100.0,
                window_minutes: 300,
                resets_at_ms: Some(5_000),
            }),
            secondary: None,
            extra: vec![],
            captured_at_ms: 0,
        });
        shared
            .apply(Delta {
                version: 1,
                full: true,
                upsert_accounts: vec![state("b", 1), filtered, state("a", 0), batch, limited],
                ..Default::default()
            })
            .unwrap();
        let v1 = shared.view().unwrap();
        let groups = vec!["default".to_string()];
        let requests = [
            RouteRequest::new("gpt-5", "k"),
            RouteRequest::new("o3", "k"),
            RouteRequest {
                allowed_groups: &groups,
                anchor: Some("k:conv"),
                ..RouteRequest::new("gpt-5", "k")
            },
            RouteRequest {
                providers: ProviderSet::of(&[Provider::Anthropic]),
                ..RouteRequest::new("gpt-5", "k")
            },
        ];
        let plan = |v: &View, req: &RouteRequest<'_>, now: UnixMillis| {
            let cached = v.plan(req, &Cells(&v.cells), now, 3, &mut SplitMix64::new(9));
            let full = v.router.plan(
                &v.accounts,
                req,
                &Cells(&v.cells),
                now,
                3,
                &mut SplitMix64::new(9),
            );
            assert_eq!(cached, full, "{req:?} at {now}");
            cached
        };
        // Twice each (a miss then a hit), before and after the quota window resets.
        for now in [1_000, 1_000, 6_000] {
            for req in &requests {
                plan(&v1, req, now);
            }
        }
        assert_eq!(v1.cached_prefilters(), requests.len());
        assert!(Arc::ptr_eq(
            &v1.prefilter(&requests[0]),
            &v1.prefilter(&requests[0])
        ));
        let q = v1.accounts.iter().position(|a| a.id == "q").unwrap();
        let p = plan(&v1, &requests[0], 1_000);
        assert!(
            p.candidates.iter().all(|c| c.index != q),
            "exhausted until 5s"
        );
        let p = plan(&v1, &requests[0], 6_000);
        assert!(p.candidates.iter().any(|c| c.index == q), "reset since");

        // A new snapshot disables `a`: the new view starts empty and plans without it.
        let mut disabled = state("a", 0);
        disabled.account.spec.enabled = false;
        shared
            .apply(Delta {
                version: 2,
                upsert_accounts: vec![disabled],
                ..Default::default()
            })
            .unwrap();
        let v2 = shared.view().unwrap();
        assert_eq!(v2.cached_prefilters(), 0);
        let p = plan(&v2, &requests[0], 1_000);
        let a = v2.accounts.iter().position(|x| x.id == "a").unwrap();
        assert!(p.candidates.iter().all(|c| c.index != a));
        assert_eq!(p.summary().disabled, 1);
        assert_eq!(v2.cached_prefilters(), 1);
        // The old view keeps its own cache for requests still using it.
        assert_eq!(v1.cached_prefilters(), requests.len());
    }

    #[test]
    fn the_prefilter_cache_is_bounded() {
        let shared = Shared::new(Arc::new(Metrics::new()));
        shared
            .apply(Delta {
                version: 1,
                full: true,
                upsert_accounts: vec![state("a", 0)],
                ..Default::default()
            })
            .unwrap();
        let v = shared.view().unwrap();
        for i in 0..(PREFILTER_CAPACITY * 2 + 1) {
            let model = format!("m{i}");
            v.prefilter(&RouteRequest::new(&model, "k"));
            assert!(v.cached_prefilters() <= PREFILTER_CAPACITY);
        }
        assert!(v.cached_prefilters() >= 1);
    }

    #[test]
    fn acquire_respects_the_cap_unless_last() {
        let shared = Shared::new(Arc::new(Metrics::new()));
        let mut s = state("a", 0);
        s.account.spec.max_inflight = 1;
        shared
            .apply(Delta {
                version: 1,
                full: true,
                upsert_accounts: vec![s],
                ..Default::default()
            })
            .unwrap();
        let v = shared.view().unwrap();
        let (cell, acc) = (&v.cells[0], &v.accounts[0]);
        let g1 = cell.try_acquire(&v.router, acc, 0, false).unwrap();
        assert!(matches!(
            cell.try_acquire(&v.router, acc, 0, false),
            Err(AttemptSkip::InflightCap {
                inflight: 1,
                cap: 1
            })
        ));
        let g2 = cell.try_acquire(&v.router, acc, 0, true).unwrap();
        assert_eq!(cell.load().inflight, 2);
        drop((g1, g2));
        assert_eq!(cell.load().inflight, 0);
        let c = cell.record(&v.router, Outcome::Upstream5xx, 1_000).unwrap();
        assert_eq!(c.until_ms, 31_000);
        assert_eq!(cell.load().cooldown_until_ms, Some(31_000));

        // Recording and releasing at once does both, and the guard's drop adds nothing.
        let g = cell.try_acquire(&v.router, acc, 40_000, true).unwrap();
        assert_eq!(cell.load().inflight, 1);
        let before = cell.health();
        let latency = Duration::from_millis(250);
        assert!(
            g.record_and_release(&v.router, Outcome::Success { latency }, 40_000)
                .is_none()
        );
        assert_eq!(cell.load().inflight, 0);
        assert_ne!(cell.health(), before, "the success was recorded");
        let g = cell.try_acquire(&v.router, acc, 40_000, true).unwrap();
        let f = cell.try_acquire(&v.router, acc, 40_000, true).unwrap();
        let c = g.record_and_release(&v.router, Outcome::Upstream5xx, 41_000);
        assert_eq!(c.map(|c| c.until_ms), Some(71_000));
        assert_eq!(cell.load().inflight, 1);
        drop(f);
        assert_eq!(cell.load().inflight, 0);
    }
}
