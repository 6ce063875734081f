//! OAuth token refresh, on the leader only (started through `run_while_leading`).
//!
//! Every pass asks the store for accounts that are due: the access token expires within the
//! lead time, or a gateway saw the account fail authentication (`needs_refresh`). Each is
//! claimed in the store first ([`Store::begin_refresh`]: a lease on the credential row), so no
//! other replica, and no other task here, ever sends the same refresh token; the new tokens are
//! stored with a compare-and-set on that claim before anything uses them, and the change-log
//! row puts the new access token into the next snapshot delta.
//!
//! Failures are classified ([`RefreshFailure`]): a dead refresh token (`reused`, `expired`,
//! `invalidated`, `invalid_grant`) makes the account unavailable (`auth_invalid`, needs a new
//! login); a region block pauses refreshing that account (retrying from a blocked region burns
//! tokens); anything transient backs off exponentially. A refresher that crashes between
//! sending the token and storing the answer leaves a claim that lapses; the next attempt sends
//! the old token once more, and if the issuer had rotated it, its `refresh_token_reused` answer
//! marks the account `auth_invalid` — visible, never a silent loop.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use poolgate_store::{RefreshCommit, RefreshRelease, RefreshStart, Store, StoreError, now_ms};
use poolgate_upstream::refresh::{RefreshFailure, TokenRefresher};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// The actor of refresh audit events.
pub const REFRESH_ACTOR: &str = "token-refresher";

/// Tuning of the refresh job.
#[derive(Debug, Clone)]
pub struct RefreshJobConfig {
    /// Refresh when the access token expires within this (`POOLGATE_TOKEN_REFRESH_LEAD`).
    pub lead: Duration,
    /// How often the job looks for due accounts (randomised by ±20 %).
    pub interval: Duration,
    /// A gateway-reported auth failure refreshes at most once per this per account (counted
    /// from the last refresh), so a login that keeps failing does not rotate in a loop.
    pub reactive_debounce: Duration,
    /// Refreshes in flight at once.
    pub concurrency: usize,
    /// How long a claim holds; must exceed the issuer call's timeout by a margin.
    pub lease: Duration,
    /// Backoff after a transient failure: doubling from `retry_min` up to `retry_max`.
    pub retry_min: Duration,
    pub retry_max: Duration,
    /// How long a region block pauses refreshing the account.
    pub region_pause: Duration,
    /// Accounts looked at per pass.
    pub batch: u32,
}

impl Default for RefreshJobConfig {
    fn default() -> Self {
        RefreshJobConfig {
            lead: Duration::from_secs(600),
            interval: Duration::from_secs(30),
            reactive_debounce: Duration::from_secs(30),
            concurrency: 4,
            lease: Duration::from_secs(300),
            retry_min: Duration::from_secs(30),
            retry_max: Duration::from_secs(1800),
            region_pause: Duration::from_secs(6 * 3600),
            batch: 256,
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What one refresh attempt came to (also the metric's `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefreshOutcome {
    Refreshed,
    /// The claim no longer held when the tokens came back (a new login won).
    Conflict,
    NotDue,
    /// Another refresher holds the claim.
    Busy,
    Paused,
    /// Deferred by the reactive debounce.
    Debounced,
    NotRefreshable,
    Invalid,
    RegionBlocked,
    Transient,
    Rejected,
    StoreError,
}

impl RefreshOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshOutcome::Refreshed => "refreshed",
            RefreshOutcome::Conflict => "conflict",
            RefreshOutcome::NotDue => "not_due",
            RefreshOutcome::Busy => "busy",
            RefreshOutcome::Paused => "paused",
            RefreshOutcome::Debounced => "debounced",
            RefreshOutcome::NotRefreshable => "not_refreshable",
            RefreshOutcome::Invalid => "invalid",
            RefreshOutcome::RegionBlocked => "region_blocked",
            RefreshOutcome::Transient => "transient",
            RefreshOutcome::Rejected => "rejected",
            RefreshOutcome::StoreError => "store_error",
        }
    }
}

/// The refresh job's state: in-process single flight and per-account failure counts.
pub struct Refresher {
    store: Arc<dyn Store>,
    client: TokenRefresher,
    metrics: Arc<Metrics>,
    cfg: RefreshJobConfig,
    in_flight: Mutex<HashSet<String>>,
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

/// Removes an account from the in-flight set when its attempt ends, however it ends.
struct Flight<'a>(&'a Refresher, String);

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.1);
    }
}

impl Refresher {
    pub fn new(
        store: Arc<dyn Store>,
        client: TokenRefresher,
        metrics: Arc<Metrics>,
        cfg: RefreshJobConfig,
    ) -> Self {
        Refresher {
            store,
            client,
            metrics,
            cfg,
            in_flight: Mutex::new(HashSet::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// One pass: every due account, `concurrency` at a time. Returns each attempt's outcome.
    pub async fn run_once(&self) -> Vec<(String, RefreshOutcome)> {
        let now = now_ms();
        let due = match self
            .store
            .accounts_due_for_refresh(now.saturating_add(ms(self.cfg.lead)), now, self.cfg.batch)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                self.metrics.store_error("token_refresh");
                tracing::warn!(error = %e, "cannot list accounts due for a token refresh");
                return Vec::new();
            }
        };
        futures::stream::iter(due)
            .map(|id| async move {
                let outcome = self.refresh_account(&id).await;
                (id, outcome)
            })
            .buffer_unordered(self.cfg.concurrency.max(1))
            .collect()
            .await
    }

    /// Refreshes one account if it is due and nobody else is at it.
    pub async fn refresh_account(&self, id: &str) -> RefreshOutcome {
        {
            let mut f = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if !f.insert(id.to_string()) {
                return RefreshOutcome::Busy;
            }
        }
        let _flight = Flight(self, id.to_string());
        let outcome = self.attempt(id).await;
        self.metrics.refresh(outcome.as_str());
        outcome
    }

    fn backoff(&self, id: &str, rejected: bool) -> i64 {
        let mut f = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let n = f.entry(id.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        if rejected {
            return ms(self.cfg.retry_max);
        }
        let exp = 1u32 << (*n - 1).min(16);
        ms(self
            .cfg
            .retry_min
            .saturating_mul(exp)
            .min(self.cfg.retry_max))
    }

    async fn release(&self, claim: &poolgate_store::RefreshClaim, r: RefreshRelease) {
        if let Err(e) = self.store.release_refresh(claim, &r, REFRESH_ACTOR).await {
            // The claim lapses by itself after its lease.
            self.metrics.store_error("token_refresh");
            tracing::warn!(account = %claim.account_id, error = %e, "cannot release a refresh claim");
        }
    }

    async fn attempt(&self, id: &str) -> RefreshOutcome {
        let claim = match self.store.begin_refresh(id, ms(self.cfg.lease)).await {
            Ok(RefreshStart::Claimed(c)) => c,
            Ok(RefreshStart::Busy { .. }) => return RefreshOutcome::Busy,
            Ok(RefreshStart::Paused { .. }) => return RefreshOutcome::Paused,
            Ok(RefreshStart::NotRefreshable) | Err(StoreError::NotFound { .. }) => {
                return RefreshOutcome::NotRefreshable;
            }
            Err(e) => {
                self.metrics.store_error("token_refresh");
                tracing::warn!(account = %id, error = %e, "cannot claim a token refresh");
                return RefreshOutcome::StoreError;
            }
        };
        let now = now_ms();
        let expires = claim.tokens.access_expires_at_ms();
        let expiring = expires.is_none_or(|e| e <= now.saturating_add(ms(self.cfg.lead)));
        if !expiring && !claim.requested {
            self.release(
                &claim,
                RefreshRelease::NotDue {
                    access_expires_at_ms: expires,
                },
            )
            .await;
            return RefreshOutcome::NotDue;
        }
        if !expiring
            && let Some(last) = claim.tokens.last_refresh_ms
            && now < last.saturating_add(ms(self.cfg.reactive_debounce))
        {
            let not_before_ms = last.saturating_add(ms(self.cfg.reactive_debounce));
            self.release(&claim, RefreshRelease::Retry { not_before_ms })
                .await;
            return RefreshOutcome::Debounced;
        }
        if claim.recovered {
            tracing::warn!(
                account = %id,
                "an earlier token refresh did not complete; trying its refresh token again \
                 (the issuer answers refresh_token_reused if it had been used)"
            );
        }
        match self.client.refresh(&claim.tokens).await {
            Ok(tokens) => self.store_tokens(&claim, &tokens).await,
            Err(e) => self.failed(&claim, e).await,
        }
    }

    /// Stores new tokens, retrying store failures for a few seconds: the old refresh token is
    /// spent, so losing these would cost the login.
    async fn store_tokens(
        &self,
        claim: &poolgate_store::RefreshClaim,
        tokens: &poolgate_core::OAuthTokens,
    ) -> RefreshOutcome {
        let id = claim.account_id.as_str();
        let mut delay = Duration::from_millis(200);
        for attempt in 0..6 {
            match self
                .store
                .complete_refresh(claim, tokens, REFRESH_ACTOR)
                .await
            {
                Ok(RefreshCommit::Committed) => {
                    self.failures
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(id);
                    tracing::info!(
                        account = %id,
                        reactive = claim.requested,
                        expires_at_ms = ?tokens.access_expires_at_ms(),
                        "OAuth tokens refreshed"
                    );
                    return RefreshOutcome::Refreshed;
                }
                Ok(RefreshCommit::Conflict) => {
                    tracing::warn!(
                        account = %id,
                        "the account's tokens were replaced while refreshing; the refreshed \
                         ones are discarded"
                    );
                    return RefreshOutcome::Conflict;
                }
                Err(e) => {
                    self.metrics.store_error("token_refresh");
                    tracing::warn!(account = %id, attempt, error = %e, "cannot store refreshed tokens; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        tracing::error!(
            account = %id,
            "refreshed tokens could not be stored; the login will need a new refresh or login"
        );
        RefreshOutcome::StoreError
    }

    async fn failed(
        &self,
        claim: &poolgate_store::RefreshClaim,
        e: RefreshFailure,
    ) -> RefreshOutcome {
        let id = claim.account_id.as_str();
        let now = now_ms();
        match &e {
            RefreshFailure::Permanent { .. } => {
                tracing::warn!(account = %id, error = %e, "refresh token refused: the account needs a new login");
                self.release(
                    claim,
                    RefreshRelease::Invalid {
                        detail: e.to_string(),
                    },
                )
                .await;
                RefreshOutcome::Invalid
            }
            RefreshFailure::RegionBlocked { .. } => {
                let until_ms = now.saturating_add(ms(self.cfg.region_pause));
                tracing::warn!(
                    account = %id,
                    error = %e,
                    pause = %humantime::format_duration(self.cfg.region_pause),
                    "the issuer refuses this region: token refresh paused"
                );
                self.release(
                    claim,
                    RefreshRelease::Paused {
                        until_ms,
                        detail: e.to_string(),
                    },
                )
                .await;
                RefreshOutcome::RegionBlocked
            }
            RefreshFailure::Transient(_) | RefreshFailure::Config(_) => {
                let wait = self.backoff(id, false);
                tracing::warn!(account = %id, error = %e, retry_in_ms = wait, "token refresh failed; retrying later");
                self.release(
                    claim,
                    RefreshRelease::Retry {
                        not_before_ms: now.saturating_add(wait),
                    },
                )
                .await;
                RefreshOutcome::Transient
            }
            RefreshFailure::Rejected { .. } => {
                let wait = self.backoff(id, true);
                tracing::warn!(account = %id, error = %e, retry_in_ms = wait, "the issuer refused the token refresh; retrying much later");
                self.release(
                    claim,
                    RefreshRelease::Retry {
                        not_before_ms: now.saturating_add(wait),
                    },
                )
                .await;
                RefreshOutcome::Rejected
            }
        }
    }
}

/// `base` ± 20 %.
pub(crate) fn jittered(base: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if getrandom::fill(&mut b).is_ok() {
        f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX)
    } else {
        0.5
    };
    base.mul_f64(0.8 + 0.4 * r)
}

/// Runs passes until `shutdown` (or until the leadership supervisor aborts it).
pub(crate) async fn run(refresher: Arc<Refresher>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = refresher.run_once() => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(jittered(refresher.cfg.interval)) => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}
