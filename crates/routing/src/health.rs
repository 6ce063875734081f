//! What one gateway has seen of one account: requests in flight, cooldown, 429 offenses,
//! latency and a failure penalty. The gateway keeps one per account and feeds it outcomes.

use std::time::Duration;

use poolgate_core::{RoutingPolicy, UnixMillis};

use crate::input::RouteAccount;
use crate::score::{PeakEwma, Penalty, Tuning};

/// The 429 offense count is forgotten after this long without a 429.
pub const OFFENSE_MEMORY_MS: i64 = 30 * 60 * 1000;
/// Offense counts stop growing here (well past any ladder's last step).
const MAX_OFFENSES: u32 = 64;
/// Upper bound of a cooldown asked for by a Retry-After header.
const MAX_RETRY_AFTER_MS: i64 = 24 * 3600 * 1000;
/// Upper bound of a quota cooldown (a weekly window plus a day of slack).
const MAX_QUOTA_COOLDOWN_MS: i64 = 8 * 24 * 3600 * 1000;

/// How an attempt on an account ended, as the gateway classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `latency` is the time to the upstream's first byte.
    Success {
        latency: Duration,
    },
    RateLimited {
        retry_after: Option<Duration>,
    },
    /// The usage limit is reached; `until_ms` is the reset time when the upstream said.
    QuotaExhausted {
        until_ms: Option<UnixMillis>,
    },
    Upstream5xx,
    Network,
    AuthFailed,
    Deactivated,
    /// The request itself was bad: says nothing about the account.
    ClientError,
}

/// Why an account is cooling down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CooldownReason {
    RateLimited,
    QuotaExhausted,
    Upstream5xx,
    Network,
    Auth,
    Deactivated,
}

impl CooldownReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CooldownReason::RateLimited => "rate_limited",
            CooldownReason::QuotaExhausted => "quota_exhausted",
            CooldownReason::Upstream5xx => "upstream_5xx",
            CooldownReason::Network => "network",
            CooldownReason::Auth => "auth",
            CooldownReason::Deactivated => "deactivated",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cooldown {
    pub until_ms: UnixMillis,
    pub reason: CooldownReason,
}

/// Per-account health as one gateway sees it. Small and `Copy`, so the gateway can keep it
/// behind a short lock and hand copies to the router.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AccountHealth {
    inflight: u32,
    cooldown: Option<Cooldown>,
    offenses: u32,
    last_429_ms: Option<UnixMillis>,
    latency: PeakEwma,
    penalty: Penalty,
}

/// The part of an account's health every plan reads for every eligible account: whether it
/// can take a request right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub inflight: u32,
    /// The local cooldown's expiry (the control plane's is on the account).
    pub cooldown_until_ms: Option<UnixMillis>,
}

/// Where [`Router::plan`](crate::Router::plan) gets this gateway's view of each account.
///
/// `load` is called for every eligible account and `health` only for the few the P2C step
/// scores, so a gateway can serve `load` from atomics without locking every account. Both
/// get the position in the accounts slice and the account itself, and may be called more
/// than once for an account. Implemented for closures returning an [`AccountHealth`] (write
/// the argument types out: `&|i: usize, a: &RouteAccount| …`) and for a slice parallel to
/// the accounts.
pub trait HealthSource {
    fn health(&self, index: usize, account: &RouteAccount) -> AccountHealth;

    fn load(&self, index: usize, account: &RouteAccount) -> Load {
        self.health(index, account).load()
    }
}

impl<F: Fn(usize, &RouteAccount) -> AccountHealth> HealthSource for F {
    fn health(&self, index: usize, account: &RouteAccount) -> AccountHealth {
        self(index, account)
    }
}

/// Index-parallel to the accounts; an account past the end has a default (fresh) health.
impl HealthSource for [AccountHealth] {
    fn health(&self, index: usize, _: &RouteAccount) -> AccountHealth {
        self.get(index).copied().unwrap_or_default()
    }

    fn load(&self, index: usize, _: &RouteAccount) -> Load {
        self.get(index).map(AccountHealth::load).unwrap_or_default()
    }
}

fn secs_ms(secs: u32) -> i64 {
    i64::from(secs).saturating_mul(1000)
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl AccountHealth {
    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    pub fn load(&self) -> Load {
        Load {
            inflight: self.inflight,
            cooldown_until_ms: self.cooldown.map(|c| c.until_ms),
        }
    }

    /// Counts a request from attempt start until its response is fully streamed.
    pub fn acquire(&mut self) {
        self.inflight = self.inflight.saturating_add(1);
    }

    pub fn release(&mut self) {
        self.inflight = self.inflight.saturating_sub(1);
    }

    /// Whether `cap` requests are already in flight (0 = no cap).
    pub fn at_cap(&self, cap: u32) -> bool {
        cap != 0 && self.inflight >= cap
    }

    /// The local cooldown, whether or not it has expired.
    pub fn cooldown(&self) -> Option<Cooldown> {
        self.cooldown
    }

    /// The local cooldown still running at `now_ms`.
    pub fn cooling(&self, now_ms: UnixMillis) -> Option<Cooldown> {
        self.cooldown.filter(|c| c.until_ms > now_ms)
    }

    /// Current 429 offense count (what the next 429's ladder step builds on).
    pub fn offenses(&self, now_ms: UnixMillis) -> u32 {
        match self.last_429_ms {
            Some(t) if now_ms.saturating_sub(t) >= OFFENSE_MEMORY_MS => 0,
            _ => self.offenses,
        }
    }

    pub fn latency(&self) -> &PeakEwma {
        &self.latency
    }

    pub fn penalty_at(&self, now_ms: UnixMillis) -> f64 {
        self.penalty.value_at(now_ms)
    }

    fn cool(&mut self, for_ms: i64, reason: CooldownReason, now_ms: UnixMillis) -> Cooldown {
        let until_ms = now_ms.saturating_add(for_ms.max(0));
        self.cool_until(until_ms, reason)
    }

    /// A later expiry wins; an earlier one never shortens a running cooldown.
    fn cool_until(&mut self, until_ms: UnixMillis, reason: CooldownReason) -> Cooldown {
        let new = Cooldown { until_ms, reason };
        let merged = match self.cooldown {
            Some(c) if c.until_ms >= until_ms => c,
            _ => new,
        };
        self.cooldown = Some(merged);
        merged
    }

    /// Feeds one attempt's outcome in; returns the cooldown now in force, if the outcome
    /// started or extended one (for metrics and the report to the control plane).
    pub fn record(
        &mut self,
        outcome: Outcome,
        policy: &RoutingPolicy,
        tuning: &Tuning,
        now_ms: UnixMillis,
    ) -> Option<Cooldown> {
        let penalise = |h: &mut Self, amount: f64, c: Cooldown| {
            let tau = (c.until_ms.saturating_sub(now_ms) as f64).max(tuning.min_penalty_tau_ms);
            h.penalty.add(amount, tau, tuning.max_penalty, now_ms);
            Some(c)
        };
        match outcome {
            Outcome::Success { latency } => {
                self.latency
                    .observe(duration_ms(latency) as f64, now_ms, tuning.ewma_tau_ms);
                self.offenses = self.offenses(now_ms).saturating_sub(1);
                self.cooldown = None;
                None
            }
            Outcome::ClientError => None,
            Outcome::RateLimited { retry_after } => {
                self.offenses = self.offenses(now_ms).saturating_add(1).min(MAX_OFFENSES);
                self.last_429_ms = Some(now_ms);
                let ladder = secs_ms(policy.cooldown_for_429(self.offenses));
                let asked = retry_after.map_or(0, |d| duration_ms(d).min(MAX_RETRY_AFTER_MS));
                let c = self.cool(ladder.max(asked), CooldownReason::RateLimited, now_ms);
                penalise(self, tuning.rate_limit_penalty, c)
            }
            Outcome::QuotaExhausted { until_ms } => {
                let cap = now_ms.saturating_add(MAX_QUOTA_COOLDOWN_MS);
                let c = match until_ms.filter(|u| *u > now_ms) {
                    Some(u) => self.cool_until(u.min(cap), CooldownReason::QuotaExhausted),
                    // No reset time: wait as long as the longest 429 step.
                    None => {
                        let longest = policy.cooldown_429_secs.iter().copied().max().unwrap_or(0);
                        let d = secs_ms(longest.max(policy.cooldown_for_429(1)));
                        self.cool(d, CooldownReason::QuotaExhausted, now_ms)
                    }
                };
                penalise(self, tuning.rate_limit_penalty, c)
            }
            Outcome::Upstream5xx => {
                let c = self.cool(
                    secs_ms(policy.cooldown_5xx_secs),
                    CooldownReason::Upstream5xx,
                    now_ms,
                );
                penalise(self, tuning.failure_penalty, c)
            }
            Outcome::Network => {
                let c = self.cool(
                    secs_ms(policy.cooldown_network_secs),
                    CooldownReason::Network,
                    now_ms,
                );
                penalise(self, tuning.failure_penalty, c)
            }
            Outcome::AuthFailed => {
                let c = self.cool(
                    secs_ms(policy.cooldown_auth_secs),
                    CooldownReason::Auth,
                    now_ms,
                );
                penalise(self, tuning.failure_penalty, c)
            }
            // The control plane marks the account unavailable in its next delta; until then
            // keep it out like an auth failure.
            Outcome::Deactivated => {
                let c = self.cool(
                    secs_ms(policy.cooldown_auth_secs),
                    CooldownReason::Deactivated,
                    now_ms,
                );
                penalise(self, tuning.failure_penalty, c)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn rec(h: &mut AccountHealth, o: Outcome, now: i64) -> Option<Cooldown> {
        h.record(o, &RoutingPolicy::default(), &Tuning::default(), now)
    }
    fn limited() -> Outcome {
        Outcome::RateLimited { retry_after: None }
    }
    fn ok() -> Outcome {
        Outcome::Success {
            latency: Duration::from_millis(300),
        }
    }

    #[test]
    fn inflight_counts_and_caps() {
        let mut h = AccountHealth::default();
        h.release();
        assert_eq!(h.inflight(), 0, "never underflows");
        h.acquire();
        h.acquire();
        assert_eq!(h.inflight(), 2);
        assert!(h.at_cap(2));
        assert!(!h.at_cap(3));
        assert!(!h.at_cap(0), "0 is unlimited");
        h.release();
        assert_eq!(h.inflight(), 1);
    }

    #[test]
    fn ladder_climbs_repeats_and_is_forgotten() {
        let mut h = AccountHealth::default();
        let t0 = 1_000_000;
        let steps: Vec<i64> = (0..5)
            .map(|i| {
                let now = t0 + i * MIN;
                rec(&mut h, limited(), now).unwrap().until_ms - now
            })
            .collect();
        assert_eq!(
            steps,
            vec![45_000, 300_000, 1_800_000, 7_200_000, 7_200_000]
        );
        assert_eq!(h.cooling(t0).unwrap().reason, CooldownReason::RateLimited);
        // 30 minutes without a 429: the count starts over (the long cooldown still runs).
        let later = t0 + 4 * MIN + OFFENSE_MEMORY_MS;
        assert_eq!(h.offenses(later), 0);
        let c = rec(&mut h, limited(), later).unwrap();
        assert_eq!(
            c.until_ms,
            t0 + 4 * MIN + 7_200_000,
            "the later expiry wins"
        );
        assert_eq!(h.offenses(later), 1);
    }

    #[test]
    fn success_decrements_offenses_and_clears_cooldown() {
        let mut h = AccountHealth::default();
        rec(&mut h, limited(), 0);
        rec(&mut h, limited(), 1);
        rec(&mut h, limited(), 2);
        assert_eq!(h.offenses(3), 3);
        assert!(h.cooling(3).is_some());
        assert_eq!(rec(&mut h, ok(), 3), None);
        assert_eq!(h.cooldown(), None);
        assert_eq!(h.offenses(3), 2);
        // The next 429 is the third offense again, not the first.
        assert_eq!(rec(&mut h, limited(), 4).unwrap().until_ms, 4 + 1_800_000);
        for t in 5..20 {
            rec(&mut h, ok(), t);
        }
        assert_eq!(h.offenses(20), 0, "never below zero");
    }

    #[test]
    fn retry_after_longer_than_the_step_wins() {
        let mut h = AccountHealth::default();
        let c = rec(
            &mut h,
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(600)),
            },
            0,
        );
        assert_eq!(c.unwrap().until_ms, 600_000);
        let mut h = AccountHealth::default();
        let c = rec(
            &mut h,
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(5)),
            },
            0,
        );
        assert_eq!(c.unwrap().until_ms, 45_000);
        let mut h = AccountHealth::default();
        let c = rec(
            &mut h,
            Outcome::RateLimited {
                retry_after: Some(Duration::MAX),
            },
            0,
        );
        assert_eq!(
            c.unwrap().until_ms,
            MAX_RETRY_AFTER_MS,
            "absurd values are capped"
        );
    }

    #[test]
    fn other_failures_use_the_policy_cooldowns() {
        let p = RoutingPolicy::default();
        let cases = [
            (
                Outcome::Upstream5xx,
                p.cooldown_5xx_secs,
                CooldownReason::Upstream5xx,
            ),
            (
                Outcome::Network,
                p.cooldown_network_secs,
                CooldownReason::Network,
            ),
            (
                Outcome::AuthFailed,
                p.cooldown_auth_secs,
                CooldownReason::Auth,
            ),
            (
                Outcome::Deactivated,
                p.cooldown_auth_secs,
                CooldownReason::Deactivated,
            ),
        ];
        for (o, secs, reason) in cases {
            let mut h = AccountHealth::default();
            let c = rec(&mut h, o, 10).unwrap();
            assert_eq!(
                c,
                Cooldown {
                    until_ms: 10 + i64::from(secs) * 1000,
                    reason
                }
            );
            assert!(h.penalty_at(10) > 0.0);
            assert_eq!(h.offenses(10), 0, "only 429s count as offenses");
        }
    }

    #[test]
    fn later_expiry_wins_across_reasons() {
        let mut h = AccountHealth::default();
        let long = rec(
            &mut h,
            Outcome::RateLimited {
                retry_after: Some(Duration::from_secs(300)),
            },
            0,
        )
        .unwrap();
        let after_5xx = rec(&mut h, Outcome::Upstream5xx, 1_000).unwrap();
        assert_eq!(
            after_5xx, long,
            "a 30 s cooldown does not shorten a 5 min one"
        );
        let net = rec(&mut h, Outcome::Network, 290_000).unwrap();
        assert_eq!(
            net,
            Cooldown {
                until_ms: 310_000,
                reason: CooldownReason::Network
            }
        );
    }

    #[test]
    fn quota_exhaustion_cools_until_the_reset() {
        let mut h = AccountHealth::default();
        let c = rec(
            &mut h,
            Outcome::QuotaExhausted {
                until_ms: Some(5_000_000),
            },
            1_000,
        )
        .unwrap();
        assert_eq!(
            c,
            Cooldown {
                until_ms: 5_000_000,
                reason: CooldownReason::QuotaExhausted
            }
        );
        let mut h = AccountHealth::default();
        let c = rec(&mut h, Outcome::QuotaExhausted { until_ms: None }, 1_000).unwrap();
        assert_eq!(c.until_ms, 1_000 + 7_200_000);
        let mut h = AccountHealth::default();
        let c = rec(
            &mut h,
            Outcome::QuotaExhausted {
                until_ms: Some(i64::MAX),
            },
            0,
        )
        .unwrap();
        assert_eq!(c.until_ms, MAX_QUOTA_COOLDOWN_MS);
        // A reset time already past falls back to the default.
        let mut h = AccountHealth::default();
        let c = rec(
            &mut h,
            Outcome::QuotaExhausted { until_ms: Some(10) },
            1_000,
        )
        .unwrap();
        assert_eq!(c.until_ms, 1_000 + 7_200_000);
    }

    #[test]
    fn health_sources() {
        let mut h = AccountHealth::default();
        h.acquire();
        rec(&mut h, Outcome::Network, 0);
        let load = Load {
            inflight: 1,
            cooldown_until_ms: Some(20_000),
        };
        assert_eq!(h.load(), load);
        let a = RouteAccount::new("a", poolgate_core::Provider::Codex);
        let slice = [h];
        assert_eq!(HealthSource::load(&slice[..], 0, &a), load);
        assert_eq!(HealthSource::health(&slice[..], 0, &a), h);
        assert_eq!(
            HealthSource::load(&slice[..], 5, &a),
            Load::default(),
            "past the end: fresh"
        );
        let f = |i: usize, _: &RouteAccount| if i == 0 { h } else { AccountHealth::default() };
        assert_eq!(HealthSource::load(&f, 0, &a), load);
        assert_eq!(HealthSource::health(&f, 1, &a), AccountHealth::default());
    }

    #[test]
    fn client_errors_change_nothing() {
        let mut h = AccountHealth::default();
        rec(&mut h, limited(), 0);
        let before = h;
        assert_eq!(rec(&mut h, Outcome::ClientError, 5), None);
        assert_eq!(h, before);
    }

    #[test]
    fn success_feeds_latency_and_a_429_penalty_fades() {
        let mut h = AccountHealth::default();
        rec(
            &mut h,
            Outcome::Success {
                latency: Duration::from_millis(250),
            },
            0,
        );
        assert_eq!(h.latency().raw_ms(), Some(250.0));
        rec(&mut h, limited(), 1_000);
        let fresh = h.penalty_at(1_000);
        assert_eq!(fresh, Tuning::default().rate_limit_penalty);
        assert!(h.penalty_at(1_000 + 45_000) < fresh);
        assert!(h.penalty_at(1_000 + 3_600_000) < 0.01);
    }
}
