//! Usage polling, on the leader only: every Codex account's `wham/usage` (seed spec §5),
//! `concurrency` at a time, each pass `interval` ± 20 % apart, with exponential backoff per
//! account after a failure.
//!
//! A reading is stored (`Store::set_usage`, one change-log row, so gateways route on it) only
//! when it says something new: a window moved by half a point or more, changed length or reset,
//! crossed into or out of exhaustion, or an extra limit changed; or when it has room while the
//! account still sits in a quota cooldown or a quota status, which the write ends (an exhausted
//! account comes back by itself once its window resets, never held by a stale cooldown).
//!
//! A refused access token is reported like a gateway's 401 (the refresh job then refreshes it),
//! a deactivated account like a gateway's deactivation; region blocks and transient failures
//! only back off.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use poolgate_core::page::PageRequest;
use poolgate_core::report::{Observation, ObservationKind};
use poolgate_core::snapshot::AccountState;
use poolgate_core::{
    AccountStatus, Availability, Credentials, Provider, StatusReason, UsageSnapshot, UsageWindow,
};
use poolgate_store::{AccountFilter, Store, listing, now_ms};
use poolgate_upstream::usage::{UsageClient, UsageError};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// The actor of observations and audit events the poller writes.
pub const USAGE_ACTOR: &str = "usage-poller";
/// Moves smaller than this many percentage points are not worth a write.
const EPSILON: f64 = 0.5;
/// Reset times jitter by a second or two between readings.
const RESET_TOLERANCE_MS: i64 = 60_000;
const PAGE: u32 = 500;

/// Tuning of the usage poller.
#[derive(Debug, Clone)]
pub struct UsagePollConfig {
    /// Time between passes (`POOLGATE_USAGE_POLL_INTERVAL`), randomised by ±20 %.
    pub interval: Duration,
    /// Polls in flight at once.
    pub concurrency: usize,
    /// Backoff of an account after a failure: `interval` × 2^(n−1), at most this.
    pub backoff_max: Duration,
}

impl Default for UsagePollConfig {
    fn default() -> Self {
        UsagePollConfig {
            interval: Duration::from_secs(300),
            concurrency: 4,
            backoff_max: Duration::from_secs(1800),
        }
    }
}

/// What one poll of one account came to (also the metric's `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PollOutcome {
    /// Stored: something changed.
    Changed,
    Unchanged,
    /// Skipped: the account is backing off after a failure.
    BackingOff,
    /// Skipped: disabled, without an access token, or dead (auth_invalid, deactivated).
    Skipped,
    Unauthorized,
    Deactivated,
    RegionBlocked,
    Transient,
    Error,
}

impl PollOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            PollOutcome::Changed => "changed",
            PollOutcome::Unchanged => "unchanged",
            PollOutcome::BackingOff => "backing_off",
            PollOutcome::Skipped => "skipped",
            PollOutcome::Unauthorized => "unauthorized",
            PollOutcome::Deactivated => "deactivated",
            PollOutcome::RegionBlocked => "region_blocked",
            PollOutcome::Transient => "transient",
            PollOutcome::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Backoff {
    failures: u32,
    until_ms: i64,
}

/// The poller's state: per-account backoff and the accounts with a gauge.
pub struct UsagePoller {
    store: Arc<dyn Store>,
    client: UsageClient,
    metrics: Arc<Metrics>,
    cfg: UsagePollConfig,
    backoff: Mutex<HashMap<String, Backoff>>,
    gauged: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for UsagePoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsagePoller")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn window_moved(old: Option<&UsageWindow>, new: Option<&UsageWindow>) -> bool {
    match (old, new) {
        (None, None) => false,
        (Some(o), Some(n)) => {
            let reset_moved = match (o.resets_at_ms, n.resets_at_ms) {
                (Some(a), Some(b)) => (a - b).abs() > RESET_TOLERANCE_MS,
                (a, b) => a.is_some() != b.is_some(),
            };
            (o.used_percent - n.used_percent).abs() >= EPSILON
                || o.window_minutes != n.window_minutes
                || reset_moved
                || o.exhausted() != n.exhausted()
        }
        _ => true,
    }
}

/// Whether `new` says something `old` does not (see the module docs).
pub fn changed_meaningfully(old: Option<&UsageSnapshot>, new: &UsageSnapshot) -> bool {
    let Some(old) = old else {
        return true;
    };
    if window_moved(old.primary.as_ref(), new.primary.as_ref())
        || window_moved(old.secondary.as_ref(), new.secondary.as_ref())
        || old.extra.len() != new.extra.len()
    {
        return true;
    }
    old.extra.iter().zip(&new.extra).any(|(a, b)| {
        a.name != b.name
            || a.limit_reached != b.limit_reached
            || window_moved(a.primary.as_ref(), b.primary.as_ref())
            || window_moved(a.secondary.as_ref(), b.secondary.as_ref())
    })
}

/// Whether a reading with room must be stored to end quota state the account still carries.
fn ends_quota_state(state: &AccountState, new: &UsageSnapshot, now: i64) -> bool {
    if new.primary.is_none() || new.availability() == Availability::Unavailable {
        return false;
    }
    let quota_status = state.account.status == AccountStatus::Unavailable
        && state.account.status_reason == Some(StatusReason::QuotaExhausted);
    let stored_exhausted = state
        .usage
        .as_ref()
        .is_some_and(|u| u.availability() == Availability::Unavailable);
    let cooling = state.cooldown_until_ms.is_some_and(|c| c > now);
    quota_status || (cooling && stored_exhausted)
}

impl UsagePoller {
    pub fn new(
        store: Arc<dyn Store>,
        client: UsageClient,
        metrics: Arc<Metrics>,
        cfg: UsagePollConfig,
    ) -> Self {
        UsagePoller {
            store,
            client,
            metrics,
            cfg,
            backoff: Mutex::new(HashMap::new()),
            gauged: Mutex::new(HashSet::new()),
        }
    }

    /// Every Codex account, in pages.
    async fn codex_accounts(&self) -> Result<Vec<String>, poolgate_store::StoreError> {
        let filter = AccountFilter {
            provider: Some(Provider::Codex),
            ..AccountFilter::default()
        };
        let mut page = PageRequest::first(PAGE);
        let mut ids = Vec::new();
        loop {
            let p = self.store.list_accounts(&filter, &page).await?;
            ids.extend(p.items.into_iter().map(|a| a.id));
            match p.next {
                Some(token) => page = PageRequest::parse(listing::ACCOUNTS, PAGE, &token)?,
                None => return Ok(ids),
            }
        }
    }

    /// One pass over every Codex account. Returns each account's outcome.
    pub async fn run_once(&self) -> Vec<(String, PollOutcome)> {
        let ids = match self.codex_accounts().await {
            Ok(ids) => ids,
            Err(e) => {
                self.metrics.store_error("usage_poll");
                tracing::warn!(error = %e, "cannot list accounts to poll usage");
                return Vec::new();
            }
        };
        self.forget_gone(&ids);
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(PAGE as usize) {
            let states = match self.store.load_account_states(chunk).await {
                Ok(s) => s,
                Err(e) => {
                    self.metrics.store_error("usage_poll");
                    tracing::warn!(error = %e, "cannot load accounts to poll usage");
                    continue;
                }
            };
            let polled: Vec<(String, PollOutcome)> = futures::stream::iter(states)
                .map(|st| async move {
                    let outcome = self.poll(&st).await;
                    self.metrics.usage_poll(outcome.as_str());
                    (st.account.id, outcome)
                })
                .buffer_unordered(self.cfg.concurrency.max(1))
                .collect()
                .await;
            out.extend(polled);
        }
        out
    }

    /// Drops gauges and backoff of accounts that no longer exist.
    fn forget_gone(&self, ids: &[String]) {
        let live: HashSet<&String> = ids.iter().collect();
        let mut g = self.gauged.lock().unwrap_or_else(PoisonError::into_inner);
        g.retain(|id| {
            let keep = live.contains(id);
            if !keep {
                self.metrics.usage_used_percent(id, "5h", None);
                self.metrics.usage_used_percent(id, "7d", None);
            }
            keep
        });
        self.backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|id, _| live.contains(id));
    }

    fn backing_off(&self, id: &str, now: i64) -> bool {
        self.backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .is_some_and(|b| b.until_ms > now)
    }

    /// Records a failure; returns the backoff in milliseconds.
    fn fail(&self, id: &str, now: i64) -> i64 {
        let mut m = self.backoff.lock().unwrap_or_else(PoisonError::into_inner);
        let b = m.entry(id.to_string()).or_default();
        b.failures = b.failures.saturating_add(1);
        let wait = ms(self
            .cfg
            .interval
            .saturating_mul(1u32 << (b.failures - 1).min(16))
            .min(self.cfg.backoff_max));
        b.until_ms = now.saturating_add(wait);
        wait
    }

    fn gauge(&self, id: &str, u: &UsageSnapshot) {
        self.metrics
            .usage_used_percent(id, "5h", u.five_hour().map(|w| w.used_percent));
        self.metrics
            .usage_used_percent(id, "7d", u.weekly().map(|w| w.used_percent));
        self.gauged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string());
    }

    async fn observe(&self, id: &str, kind: ObservationKind, detail: &str) {
        let o = Observation {
            account_id: id.to_string(),
            ts_ms: now_ms(),
            kind,
            detail: detail.to_string(),
        };
        if let Err(e) = self.store.record_observations(&[o], USAGE_ACTOR).await {
            self.metrics.store_error("usage_poll");
            tracing::warn!(account = %id, error = %e, "cannot record what the usage poll saw");
        }
    }

    /// Polls one account (unless it is backing off or cannot be polled).
    pub async fn poll(&self, st: &AccountState) -> PollOutcome {
        let a = &st.account;
        let now = now_ms();
        let dead = a.status == AccountStatus::Unavailable
            && matches!(
                a.status_reason,
                Some(StatusReason::AuthInvalid | StatusReason::Deactivated)
            );
        let token = match &st.credentials {
            Some(Credentials::OAuth(t)) if !t.access_token.is_empty() => t.access_token.clone(),
            _ => return PollOutcome::Skipped,
        };
        if !a.spec.enabled || dead {
            return PollOutcome::Skipped;
        }
        if self.backing_off(&a.id, now) {
            return PollOutcome::BackingOff;
        }
        let account_id = a.identity.as_ref().map(|i| i.chatgpt_account_id.as_str());
        match self.client.fetch(token.expose(), account_id).await {
            Ok(usage) => {
                self.backoff
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&a.id);
                self.gauge(&a.id, &usage);
                if !changed_meaningfully(st.usage.as_ref(), &usage)
                    && !ends_quota_state(st, &usage, now)
                {
                    return PollOutcome::Unchanged;
                }
                match self.store.set_usage(&a.id, &usage).await {
                    Ok(()) => PollOutcome::Changed,
                    Err(e) => {
                        self.metrics.store_error("usage_poll");
                        tracing::warn!(account = %a.id, error = %e, "cannot store usage");
                        PollOutcome::Error
                    }
                }
            }
            Err(e) => {
                let wait = self.fail(&a.id, now);
                tracing::debug!(account = %a.id, error = %e, retry_in_ms = wait, "usage poll failed");
                match e {
                    UsageError::Unauthorized { status } => {
                        self.observe(
                            &a.id,
                            ObservationKind::AuthFailed,
                            &format!("usage endpoint status {status}"),
                        )
                        .await;
                        PollOutcome::Unauthorized
                    }
                    UsageError::Deactivated { status } => {
                        self.observe(
                            &a.id,
                            ObservationKind::Deactivated,
                            &format!("usage endpoint status {status}: account_deactivated"),
                        )
                        .await;
                        PollOutcome::Deactivated
                    }
                    UsageError::RegionBlocked { .. } => PollOutcome::RegionBlocked,
                    UsageError::Transient(_) => PollOutcome::Transient,
                    UsageError::Status { .. } | UsageError::Parse(_) | UsageError::Config(_) => {
                        tracing::warn!(account = %a.id, error = %e, "usage poll failed");
                        PollOutcome::Error
                    }
                }
            }
        }
    }
}

/// Runs passes until `shutdown` (or until the leadership supervisor aborts it).
pub(crate) async fn run(poller: Arc<UsagePoller>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = poller.run_once() => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(crate::refresh::jittered(poller.cfg.interval)) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}
