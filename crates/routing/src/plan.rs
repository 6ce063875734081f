//! The attempt plan: the ordered candidates the gateway's attempt loop walks, and the check
//! it makes before each attempt.

use std::sync::Arc;

use poolgate_core::{RoutingPolicy, Strategy, UnixMillis};

use crate::affinity::{anchor_hash, weight};
use crate::cursor::BalancedCursor;
use crate::eligibility::{
    Eligibility, Prefilter, QuotaExhausted, SkipReason, SkipSummary, Skipped, Verdict, eligibility,
    judge_quota, merge_skips, quota_exhausted, tightest_used_fraction,
};
use crate::health::{AccountHealth, Cooldown, HealthSource, Load, Outcome};
use crate::input::{RouteAccount, RouteRequest};
use crate::rng::Rng;
use crate::score::{ScoreInputs, Tuning, headroom_factor, power_of_two};

/// How a candidate got its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The conversation anchor's rendezvous choice.
    Affinity,
    /// The winner of power-of-two-choices.
    PowerOfTwo,
    /// Strategy order (`ordered` or `balanced`).
    Order,
}

impl Pick {
    pub fn as_str(self) -> &'static str {
        match self {
            Pick::Affinity => "affinity",
            Pick::PowerOfTwo => "p2c",
            Pick::Order => "order",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Position in the accounts slice given to [`Router::plan`].
    pub index: usize,
    pub pick: Pick,
    /// Below the quota guard (kept because every eligible account is).
    pub low_quota: bool,
}

/// Candidates in attempt order, and every account left out with its reason.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub candidates: Vec<Candidate>,
    /// Skips judged for this plan (all of them without a prefilter).
    skipped: Vec<Skipped>,
    /// A prefilter's time-independent skips, shared rather than copied per request.
    fixed: Arc<[Skipped]>,
    fixed_summary: SkipSummary,
    truncated: bool,
}

/// Equal when they pick the same candidates and skip the same accounts for the same
/// reasons, however the skips are held.
impl PartialEq for Plan {
    fn eq(&self, o: &Plan) -> bool {
        self.candidates == o.candidates && self.skipped() == o.skipped()
    }
}

/// Why a request cannot be routed at all; the message is safe to show a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRoute {
    /// Answer 429 `usage_limit_reached`, with `Retry-After` at `retry_at_ms` when known.
    #[error("every account that could serve this request has reached its usage limit")]
    QuotaExhausted {
        retry_at_ms: Option<UnixMillis>,
        skipped: SkipSummary,
    },
    #[error("no account can serve this request: {skipped}")]
    NoEligibleAccount { skipped: SkipSummary },
}

impl Plan {
    /// `Some` when there is no candidate and quota is why (see
    /// [`Eligibility::quota_exhausted`]).
    pub fn quota_exhausted(&self) -> Option<QuotaExhausted> {
        quota_exhausted(
            !self.candidates.is_empty(),
            self.skipped.iter().chain(self.fixed.iter()),
        )
    }

    /// The plan stopped after [`Tuning::plan_head`] ready accounts: its candidates are the
    /// first ones of the full plan, and accounts it never looked at are neither candidates
    /// nor skips (a request that fails on all of them gives up rather than try more).
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Skips by reason; costs only the skips judged for this plan.
    pub fn summary(&self) -> SkipSummary {
        self.fixed_summary.plus(SkipSummary::of(&self.skipped))
    }

    /// Every account left out, in input order (for diagnostics: linear in the pool).
    pub fn skipped(&self) -> Vec<Skipped> {
        merge_skips(&self.fixed, &self.skipped)
    }

    /// The plan when it has a candidate, else why not.
    pub fn into_result(self) -> Result<Plan, NoRoute> {
        if !self.candidates.is_empty() {
            return Ok(self);
        }
        let skipped = self.summary();
        Err(match self.quota_exhausted() {
            Some(q) => NoRoute::QuotaExhausted {
                retry_at_ms: q.retry_at_ms,
                skipped,
            },
            None => NoRoute::NoEligibleAccount { skipped },
        })
    }
}

/// Why the attempt loop passes over a candidate (never the last one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptSkip {
    /// `shared` when the cooldown came from the control plane (another gateway's report).
    Cooldown {
        until_ms: UnixMillis,
        shared: bool,
    },
    InflightCap {
        inflight: u32,
        cap: u32,
    },
}

impl AttemptSkip {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptSkip::Cooldown { .. } => "cooldown",
            AttemptSkip::InflightCap { .. } => "inflight",
        }
    }
}

/// The cooldown in force at `now_ms`: the later of the local and the shared one.
fn cooling_until(a: &RouteAccount, load: Load, now_ms: UnixMillis) -> Option<(UnixMillis, bool)> {
    let local = load.cooldown_until_ms.filter(|u| *u > now_ms);
    let shared = a.cooldown_until_ms.filter(|u| *u > now_ms);
    match (local, shared) {
        (Some(l), Some(s)) if s > l => Some((s, true)),
        (Some(l), _) => Some((l, false)),
        (None, Some(s)) => Some((s, true)),
        (None, None) => None,
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    index: usize,
    /// Position in the prefilter's routing order (`Prefilter::passed`).
    pos: usize,
    /// [`account_hash`] of the id, for affinity.
    hash: u64,
    low: bool,
    ready: bool,
}

impl Entry {
    /// Ready before not ready (cooling or at cap), low quota after the rest.
    fn class(&self) -> u8 {
        (u8::from(!self.ready) << 1) | u8::from(self.low)
    }
}

/// A stable partition by class: class 0 (ready, not low) stays in place in one pass; the
/// rest, usually few, is stably sorted behind it.
fn stable_by_class(order: Vec<Entry>) -> Vec<Entry> {
    if order.windows(2).all(|w| w[0].class() <= w[1].class()) {
        return order;
    }
    let mut out: Vec<Entry> = Vec::with_capacity(order.len());
    let mut deferred: Vec<Entry> = Vec::new();
    for e in order {
        if e.class() == 0 {
            out.push(e)
        } else {
            deferred.push(e)
        }
    }
    deferred.sort_by_key(Entry::class);
    out.append(&mut deferred);
    out
}

/// The affinity pick: its account, and its position in the plan's order when it is there.
#[derive(Debug, Clone, Copy)]
struct AffinityPick {
    index: usize,
    low: bool,
    in_order: Option<usize>,
}

/// Rendezvous candidates kept while sweeping the weights of a truncated plan: the best one
/// is almost always ready; if none of these is, the plan is made in full instead.
const AFFINITY_RESERVE: usize = 8;

/// The `ordered` strategy's order: priority ascending (lower first), then id. A gateway that
/// keeps its account list sorted this way (once per snapshot) makes every plan linear in
/// the pool size, as sorting an already sorted list is.
pub fn routing_order(a: &RouteAccount, b: &RouteAccount) -> std::cmp::Ordering {
    a.priority.cmp(&b.priority).then_with(|| a.id.cmp(&b.id))
}

/// Routing for one snapshot's policy. Cheap to build; pure, so one can be shared by every
/// request that sees the same policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Router {
    policy: RoutingPolicy,
    tuning: Tuning,
}

impl Router {
    pub fn new(policy: RoutingPolicy) -> Self {
        Router {
            policy,
            tuning: Tuning::default(),
        }
    }

    pub fn with_tuning(policy: RoutingPolicy, tuning: Tuning) -> Self {
        Router { policy, tuning }
    }

    pub fn policy(&self) -> &RoutingPolicy {
        &self.policy
    }

    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// The account's in-flight cap, else the policy's default; 0 is unlimited.
    pub fn max_inflight(&self, account: &RouteAccount) -> u32 {
        if account.max_inflight > 0 {
            account.max_inflight
        } else {
            self.policy.default_max_inflight
        }
    }

    /// The rotation to pass to [`Router::plan`]: advances the (key, model) counter under
    /// `balanced`, 0 (and no state touched) under `ordered`.
    pub fn rotation(&self, cursor: &mut BalancedCursor, req: &RouteRequest<'_>) -> u64 {
        match self.policy.strategy {
            Strategy::Balanced => cursor.advance(req.key_id, req.model),
            Strategy::Ordered => 0,
        }
    }

    pub fn eligibility(
        &self,
        accounts: &[RouteAccount],
        req: &RouteRequest<'_>,
        now_ms: UnixMillis,
    ) -> Eligibility {
        eligibility(accounts, req, &self.policy.quota_guard, now_ms)
    }

    /// Feeds an attempt's outcome into the account's health (see [`AccountHealth::record`]).
    pub fn record(
        &self,
        health: &mut AccountHealth,
        outcome: Outcome,
        now_ms: UnixMillis,
    ) -> Option<Cooldown> {
        health.record(outcome, &self.policy, &self.tuning, now_ms)
    }

    /// The parts of an account's P2C score; `neutral_latency_ms` stands in for an account
    /// never observed. Lower [`ScoreInputs::score`] is better.
    pub fn score(
        &self,
        account: &RouteAccount,
        health: &AccountHealth,
        neutral_latency_ms: f64,
        now_ms: UnixMillis,
    ) -> ScoreInputs {
        ScoreInputs {
            latency_ms: health.latency().estimate_ms(
                now_ms,
                neutral_latency_ms,
                self.tuning.idle_tau_ms,
            ),
            inflight: health.inflight(),
            penalty: health.penalty_at(now_ms),
            headroom: headroom_factor(
                tightest_used_fraction(account.usage.as_ref(), now_ms),
                self.tuning.max_headroom_factor,
            ),
        }
    }

    /// The candidates for one request, in attempt order: the anchor's rendezvous pick (if
    /// an anchor is given), then the P2C winner among the first `p2c_window` of the rest,
    /// then the rest in strategy order. Within the strategy order, accounts cooling down or
    /// at their in-flight cap go last, and so do accounts below the quota guard.
    ///
    /// `health` is this gateway's view of each account (see [`HealthSource`]); `rotation`
    /// comes from [`Router::rotation`]: under `balanced` the strategy order starts at that
    /// position (modulo the accounts that pass the time-independent rules) and wraps around.
    ///
    /// When more than [`Tuning::plan_head`] accounts are ready, the plan stops there (see
    /// [`Plan::truncated`]): its candidates are the first ones of the full plan, and the
    /// accounts it never looked at are neither candidates nor skips.
    pub fn plan<H: HealthSource + ?Sized>(
        &self,
        accounts: &[RouteAccount],
        req: &RouteRequest<'_>,
        health: &H,
        now_ms: UnixMillis,
        rotation: u64,
        rng: &mut impl Rng,
    ) -> Plan {
        let pre = Prefilter::in_routing_order(accounts, req);
        self.plan_prefiltered(accounts, &pre, req, health, now_ms, rotation, rng)
    }

    /// [`Router::plan`] with the time-independent rules already applied: `pre` must come
    /// from [`Prefilter::new`] (accounts kept in [`routing_order`]) or
    /// [`Prefilter::in_routing_order`] over the same `accounts`, for a request with the same
    /// model, allowed groups and providers as `req`. Its cost grows with the accounts looked
    /// at: until [`Tuning::plan_head`] ready ones are found, plus one pass over the
    /// precomputed id hashes when the request has an anchor.
    #[allow(clippy::too_many_arguments)]
    pub fn plan_prefiltered<H: HealthSource + ?Sized>(
        &self,
        accounts: &[RouteAccount],
        pre: &Prefilter,
        req: &RouteRequest<'_>,
        health: &H,
        now_ms: UnixMillis,
        rotation: u64,
        rng: &mut impl Rng,
    ) -> Plan {
        let window = self.policy.p2c_window.max(1) as usize;
        let head = self.tuning.plan_head.max(window + 1);
        if let Some(plan) =
            self.plan_with_head(accounts, pre, req, health, now_ms, rotation, rng, head)
        {
            return plan;
        }
        // A truncated plan could not settle the affinity pick cheaply: look at everything.
        self.plan_with_head(
            accounts,
            pre,
            req,
            health,
            now_ms,
            rotation,
            rng,
            usize::MAX,
        )
        .unwrap_or_default()
    }

    /// The plan, looking at accounts in strategy order until `head` ready ones are found;
    /// `None` when it stopped early and could not settle the affinity pick.
    #[allow(clippy::too_many_arguments)]
    fn plan_with_head<H: HealthSource + ?Sized>(
        &self,
        accounts: &[RouteAccount],
        pre: &Prefilter,
        req: &RouteRequest<'_>,
        health: &H,
        now_ms: UnixMillis,
        rotation: u64,
        rng: &mut impl Rng,
        head: usize,
    ) -> Option<Plan> {
        let (passed, hashes) = (pre.passed(), pre.hashes());
        let n = passed.len();
        let start = match self.policy.strategy {
            Strategy::Balanced if n > 0 => (rotation % n as u64) as usize,
            _ => 0,
        };
        let guard = &self.policy.quota_guard;
        let mut skipped = Vec::new();
        let mut below_guard: Vec<(usize, usize, SkipReason)> = Vec::new();
        let mut order: Vec<Entry> = Vec::with_capacity(n.min(head.saturating_mul(2)));
        let mut ready = 0usize;
        let mut truncated = false;
        for k in 0..n {
            let pos = if start + k < n {
                start + k
            } else {
                start + k - n
            };
            let (Some(&index), Some(&hash)) = (passed.get(pos), hashes.get(pos)) else {
                continue;
            };
            let Some(a) = accounts.get(index) else {
                continue;
            };
            match judge_quota(a, guard, now_ms) {
                Verdict::Skip(reason) => skipped.push(Skipped { index, reason }),
                Verdict::Pass {
                    guard: Some(reason),
                } => below_guard.push((index, pos, reason)),
                Verdict::Pass { guard: None } => {
                    let e = Entry {
                        index,
                        pos,
                        hash,
                        low: false,
                        ready: self.is_ready(a, health.load(index, a), now_ms),
                    };
                    ready += usize::from(e.ready);
                    order.push(e);
                    if ready >= head && k + 1 < n {
                        truncated = true;
                        break;
                    }
                }
            }
        }
        if order.is_empty() {
            // Every eligible account is below the quota guard: keep them all, flagged.
            for (index, pos, _) in below_guard {
                let (Some(a), Some(&hash)) = (accounts.get(index), hashes.get(pos)) else {
                    continue;
                };
                order.push(Entry {
                    index,
                    pos,
                    hash,
                    low: true,
                    ready: self.is_ready(a, health.load(index, a), now_ms),
                });
            }
        } else {
            skipped.extend(
                below_guard
                    .into_iter()
                    .map(|(index, _, reason)| Skipped { index, reason }),
            );
        }
        skipped.sort_unstable_by_key(|s| s.index);
        let order = if truncated {
            // Everything not ready stands behind every ready account in the full plan, so
            // beyond the first `head` ready ones it is not in this one.
            let mut order = order;
            order.retain(|e| e.class() == 0);
            order
        } else {
            stable_by_class(order)
        };
        let affinity = match req.anchor {
            None => None,
            Some(anchor) if truncated => {
                Some(self.affinity_sweep(accounts, pre, health, now_ms, anchor, &order)?)
            }
            Some(anchor) => self.affinity_pick(accounts, &order, anchor),
        };
        let mut plan = self.order_candidates(accounts, health, now_ms, rng, &order, affinity);
        plan.skipped = skipped;
        plan.fixed = pre.shared_skips();
        plan.fixed_summary = pre.summary();
        plan.truncated = truncated;
        Some(plan)
    }

    /// Not cooling down (locally or per the control plane) and under its in-flight cap.
    fn is_ready(&self, a: &RouteAccount, load: Load, now_ms: UnixMillis) -> bool {
        let cap = self.max_inflight(a);
        cooling_until(a, load, now_ms).is_none() && (cap == 0 || load.inflight < cap)
    }

    /// Everything after eligibility and affinity: the P2C winner, then the strategy order.
    fn order_candidates<H: HealthSource + ?Sized>(
        &self,
        accounts: &[RouteAccount],
        health: &H,
        now_ms: UnixMillis,
        rng: &mut impl Rng,
        order: &[Entry],
        affinity: Option<AffinityPick>,
    ) -> Plan {
        let account = |e: &Entry| &accounts[e.index];
        let mut candidates = Vec::with_capacity(order.len() + 1);
        let in_order = affinity.and_then(|a| a.in_order);
        if let Some(a) = affinity {
            candidates.push(Candidate {
                index: a.index,
                pick: Pick::Affinity,
                low_quota: a.low,
            });
        }
        // Positions in `order` of what is left after the affinity pick, without moving it.
        let rest = |i: usize| match in_order {
            Some(p) if i >= p => i + 1,
            _ => i,
        };
        let rest_len = order.len() - usize::from(in_order.is_some());

        let window = (self.policy.p2c_window.max(1) as usize).min(rest_len);
        let mut p2c = None;
        if window >= 2 {
            // Health again for the few accounts in the window, rather than a copy for all.
            let healths: Vec<AccountHealth> = (0..window)
                .map(|i| {
                    let e = &order[rest(i)];
                    health.health(e.index, account(e))
                })
                .collect();
            let neutral = neutral_latency(&healths, self.tuning.default_latency_ms);
            let cost = |i: usize| {
                let e = &order[rest(i)];
                if !e.ready {
                    return f64::INFINITY;
                }
                self.score(account(e), &healths[i], neutral, now_ms).score()
            };
            if let Some(w) = power_of_two(rest_len, window, rng, cost) {
                let e = order[rest(w)];
                candidates.push(Candidate {
                    index: e.index,
                    pick: Pick::PowerOfTwo,
                    low_quota: e.low,
                });
                p2c = Some(rest(w));
            }
        }
        candidates.extend(
            order
                .iter()
                .enumerate()
                .filter(|(pos, _)| Some(*pos) != in_order && Some(*pos) != p2c)
                .map(|(_, e)| Candidate {
                    index: e.index,
                    pick: Pick::Order,
                    low_quota: e.low,
                }),
        );
        Plan {
            candidates,
            ..Plan::default()
        }
    }

    /// Rendezvous over the best-placed accounts: the first class of the order (ready ones
    /// when any is ready) and, under `ordered`, its best priority, so affinity never sends a
    /// conversation to a backup tier while the primary tier can serve.
    fn affinity_pick(
        &self,
        accounts: &[RouteAccount],
        order: &[Entry],
        anchor: &str,
    ) -> Option<AffinityPick> {
        let first = order.first()?;
        let class = first.class();
        let priority = accounts[first.index].priority;
        let ordered = self.policy.strategy == Strategy::Ordered;
        let h = anchor_hash(anchor);
        let mut best: Option<(usize, u64, &str)> = None;
        // Equal weights (astronomically rare) go to the smaller id: only then is one read.
        for (pos, e) in order.iter().enumerate() {
            let a = &accounts[e.index];
            if e.class() != class {
                break;
            }
            if ordered && a.priority != priority {
                // Sorted by priority within a class under `ordered`: the tier has ended.
                break;
            }
            let w = weight(h, e.hash);
            let better = match best {
                None => true,
                Some((_, bw, bid)) => w > bw || (w == bw && a.id.as_str() < bid),
            };
            if better {
                best = Some((pos, w, a.id.as_str()));
            }
        }
        best.map(|(pos, _, _)| AffinityPick {
            index: order[pos].index,
            low: order[pos].low,
            in_order: Some(pos),
        })
    }

    /// [`Router::affinity_pick`] for a truncated plan, whose order holds only the first ready
    /// accounts: the rendezvous weights of every account in the tier come from the
    /// prefilter's id hashes in one pass, and only the best few are judged. `None` when none
    /// of those is eligible and ready (the caller then makes the full plan).
    fn affinity_sweep<H: HealthSource + ?Sized>(
        &self,
        accounts: &[RouteAccount],
        pre: &Prefilter,
        health: &H,
        now_ms: UnixMillis,
        anchor: &str,
        order: &[Entry],
    ) -> Option<AffinityPick> {
        let (passed, hashes, priorities) = (pre.passed(), pre.hashes(), pre.priorities());
        let first = order.first()?;
        // The tier: every position with the first ready account's priority (contiguous in
        // routing order); under `balanced`, every position.
        let (lo, hi) = if self.policy.strategy == Strategy::Ordered {
            let p = priorities.get(first.pos).copied()?;
            let mut lo = first.pos;
            while lo > 0 && priorities.get(lo - 1) == Some(&p) {
                lo -= 1;
            }
            let mut hi = first.pos + 1;
            while priorities.get(hi) == Some(&p) {
                hi += 1;
            }
            (lo, hi)
        } else {
            (0, passed.len())
        };
        let h = anchor_hash(anchor);
        let id = |pos: usize| {
            passed
                .get(pos)
                .and_then(|i| accounts.get(*i))
                .map(|a| a.id.as_str())
        };
        // Best first; equal weights go to the smaller id, as in the full plan.
        let better = |(w1, p1): (u64, usize), (w2, p2): (u64, usize)| {
            w1 > w2 || (w1 == w2 && id(p1) < id(p2))
        };
        let mut top: Vec<(u64, usize)> = Vec::with_capacity(AFFINITY_RESERVE + 1);
        for (pos, hash) in hashes.iter().enumerate().take(hi).skip(lo) {
            let c = (weight(h, *hash), pos);
            if top.len() == AFFINITY_RESERVE && !better(c, top[AFFINITY_RESERVE - 1]) {
                continue;
            }
            let at = top.iter().position(|t| better(c, *t)).unwrap_or(top.len());
            top.insert(at, c);
            top.truncate(AFFINITY_RESERVE);
        }
        let guard = &self.policy.quota_guard;
        for (_, pos) in top {
            let Some(&index) = passed.get(pos) else {
                continue;
            };
            let Some(a) = accounts.get(index) else {
                continue;
            };
            if !matches!(judge_quota(a, guard, now_ms), Verdict::Pass { guard: None }) {
                continue;
            }
            if self.is_ready(a, health.load(index, a), now_ms) {
                return Some(AffinityPick {
                    index,
                    low: false,
                    in_order: order.iter().position(|e| e.pos == pos),
                });
            }
        }
        None
    }

    /// Whether the attempt loop should pass over `account` now: it is cooling down (locally
    /// or per the control plane) or at its in-flight cap. The last remaining candidate is
    /// always tried (`is_last`), as a slow answer beats none.
    pub fn should_skip(
        &self,
        account: &RouteAccount,
        health: &AccountHealth,
        now_ms: UnixMillis,
        is_last: bool,
    ) -> Option<AttemptSkip> {
        if is_last {
            return None;
        }
        if let Some((until_ms, shared)) = cooling_until(account, health.load(), now_ms) {
            return Some(AttemptSkip::Cooldown { until_ms, shared });
        }
        let cap = self.max_inflight(account);
        health.at_cap(cap).then_some(AttemptSkip::InflightCap {
            inflight: health.inflight(),
            cap,
        })
    }
}

/// The mean latency of the observed accounts in the window, so an unobserved account
/// competes as an average one: tried whenever it is less loaded, not flooded, not starved.
fn neutral_latency(window: &[AccountHealth], default_ms: f64) -> f64 {
    let (sum, n) = window
        .iter()
        .filter_map(|h| h.latency().raw_ms())
        .fold((0.0, 0u32), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        default_ms
    } else {
        sum / f64::from(n)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use poolgate_core::{Provider, UsageSnapshot, UsageWindow};

    use super::*;
    use crate::affinity::{account_hash, rendezvous_pick};
    use crate::rng::SplitMix64;
    use crate::{ProviderSet, SkipReason};

    const NOW: i64 = 1_000_000_000;

    fn acc(id: &str, priority: i32) -> RouteAccount {
        RouteAccount {
            priority,
            ..RouteAccount::new(id, Provider::Codex)
        }
    }
    fn router(strategy: Strategy, p2c_window: u32) -> Router {
        Router::new(RoutingPolicy {
            strategy,
            p2c_window,
            ..RoutingPolicy::default()
        })
    }
    fn ids(accounts: &[RouteAccount], plan: &Plan) -> Vec<String> {
        plan.candidates
            .iter()
            .map(|c| accounts[c.index].id.clone())
            .collect()
    }
    fn fresh(_: usize, _: &RouteAccount) -> AccountHealth {
        AccountHealth::default()
    }
    fn observed(ms: u64) -> AccountHealth {
        let mut h = AccountHealth::default();
        Router::default().record(
            &mut h,
            Outcome::Success {
                latency: Duration::from_millis(ms),
            },
            NOW - 1_000,
        );
        h
    }
    fn usage(five_used: f64) -> Option<UsageSnapshot> {
        Some(UsageSnapshot {
            primary: Some(UsageWindow {
                used_percent: five_used,
                window_minutes: 300,
                resets_at_ms: Some(NOW + 3_600_000),
            }),
            secondary: None,
            extra: vec![],
            captured_at_ms: NOW,
        })
    }

    #[test]
    fn ordered_is_priority_then_id() {
        let accounts = vec![acc("c", 1), acc("b", 0), acc("a", 1), acc("d", -5)];
        let r = router(Strategy::Ordered, 1);
        let plan = r.plan(
            &accounts,
            &RouteRequest::new("m", "k"),
            &fresh,
            NOW,
            0,
            &mut SplitMix64::new(1),
        );
        assert_eq!(ids(&accounts, &plan), ["d", "b", "a", "c"]);
        assert!(plan.candidates.iter().all(|c| c.pick == Pick::Order));
        assert!(plan.skipped().is_empty());
    }

    #[test]
    fn balanced_rotates_per_key_and_model() {
        let accounts = vec![acc("a", 0), acc("b", 0), acc("c", 0)];
        let r = router(Strategy::Balanced, 1);
        let mut cursor = BalancedCursor::new(16);
        let req = RouteRequest::new("m", "k");
        let mut firsts = Vec::new();
        for _ in 0..4 {
            let rot = r.rotation(&mut cursor, &req);
            let plan = r.plan(&accounts, &req, &fresh, NOW, rot, &mut SplitMix64::new(1));
            firsts.push(ids(&accounts, &plan).join(""));
        }
        assert_eq!(firsts, ["abc", "bca", "cab", "abc"]);
        // Another model has its own counter; ordered never touches the cursor.
        assert_eq!(r.rotation(&mut cursor, &RouteRequest::new("other", "k")), 0);
        let before = cursor.len();
        assert_eq!(
            router(Strategy::Ordered, 1).rotation(&mut cursor, &RouteRequest::new("x", "y")),
            0
        );
        assert_eq!(cursor.len(), before);
    }

    #[test]
    fn affinity_comes_first_and_agrees_with_rendezvous() {
        let accounts: Vec<RouteAccount> = (0..8).map(|i| acc(&format!("acc{i}"), 0)).collect();
        let r = router(Strategy::Ordered, 3);
        for n in 0..50 {
            let anchor = format!("session-{n}");
            let req = RouteRequest {
                anchor: Some(&anchor),
                ..RouteRequest::new("m", "k")
            };
            let plan = r.plan(&accounts, &req, &fresh, NOW, 0, &mut SplitMix64::new(n));
            let expected =
                rendezvous_pick(&anchor, accounts.iter().map(|a| a.id.as_str())).unwrap();
            assert_eq!(
                plan.candidates[0],
                Candidate {
                    index: expected,
                    pick: Pick::Affinity,
                    low_quota: false
                }
            );
            assert_eq!(plan.candidates[1].pick, Pick::PowerOfTwo);
            assert_eq!(plan.candidates.len(), 8);
            // A different random source (another replica) gives the same first choice.
            let again = r.plan(
                &accounts,
                &req,
                &fresh,
                NOW,
                7,
                &mut SplitMix64::new(n + 1000),
            );
            assert_eq!(again.candidates[0].index, expected);
        }
    }

    #[test]
    fn affinity_stays_in_the_best_priority_tier_under_ordered() {
        let accounts = vec![acc("primary", 0), acc("backup1", 5), acc("backup2", 5)];
        let r = router(Strategy::Ordered, 1);
        let bal = router(Strategy::Balanced, 1);
        let mut spread = std::collections::HashSet::new();
        for n in 0..64 {
            let anchor = format!("c{n}");
            let req = RouteRequest {
                anchor: Some(&anchor),
                ..RouteRequest::new("m", "k")
            };
            let plan = r.plan(&accounts, &req, &fresh, NOW, 0, &mut SplitMix64::new(0));
            assert_eq!(plan.candidates[0].index, 0);
            let plan = bal.plan(&accounts, &req, &fresh, NOW, 0, &mut SplitMix64::new(0));
            spread.insert(plan.candidates[0].index);
        }
        assert_eq!(
            spread.len(),
            3,
            "balanced spreads anchors over every account"
        );
    }

    #[test]
    fn cooling_and_capped_accounts_go_last_and_lose_affinity() {
        let mut accounts: Vec<RouteAccount> = (0..4).map(|i| acc(&format!("acc{i}"), 0)).collect();
        accounts[1].cooldown_until_ms = Some(NOW + 10_000); // shared cooldown
        accounts[2].max_inflight = 1;
        let health = |i: usize, _: &RouteAccount| {
            let mut h = AccountHealth::default();
            if i == 0 {
                Router::default().record(&mut h, Outcome::Upstream5xx, NOW);
            }
            if i == 2 {
                h.acquire();
            }
            h
        };
        let r = router(Strategy::Ordered, 1);
        let plan = r.plan(
            &accounts,
            &RouteRequest::new("m", "k"),
            &health,
            NOW,
            0,
            &mut SplitMix64::new(0),
        );
        assert_eq!(ids(&accounts, &plan), ["acc3", "acc0", "acc1", "acc2"]);
        // Whatever the anchor, the only ready account takes the conversation for now.
        for n in 0..20 {
            let anchor = format!("a{n}");
            let req = RouteRequest {
                anchor: Some(&anchor),
                ..RouteRequest::new("m", "k")
            };
            let plan = r.plan(&accounts, &req, &health, NOW, 0, &mut SplitMix64::new(0));
            assert_eq!(plan.candidates[0].index, 3);
        }
        // Once the cooldowns are over, the order is back to normal.
        let plan = r.plan(
            &accounts,
            &RouteRequest::new("m", "k"),
            &fresh,
            NOW + 60_000,
            0,
            &mut SplitMix64::new(0),
        );
        assert_eq!(ids(&accounts, &plan), ["acc0", "acc1", "acc2", "acc3"]);
    }

    fn full_router(strategy: Strategy, p2c_window: u32) -> Router {
        Router::with_tuning(
            router(strategy, p2c_window).policy().clone(),
            Tuning {
                plan_head: usize::MAX,
                ..Tuning::default()
            },
        )
    }

    #[test]
    fn large_pools_are_planned_as_far_as_the_head() {
        let accounts: Vec<RouteAccount> =
            (0..1000).map(|i| acc(&format!("acc{i:04}"), 0)).collect();
        for strategy in [Strategy::Ordered, Strategy::Balanced] {
            let (short, full) = (router(strategy, 3), full_router(strategy, 3));
            for rotation in [0, 7, 999, 1000, 123_456] {
                let req = RouteRequest::new("m", "k");
                let plan = |r: &Router| {
                    r.plan(
                        &accounts,
                        &req,
                        &fresh,
                        NOW,
                        rotation,
                        &mut SplitMix64::new(1),
                    )
                };
                let (a, b) = (plan(&short), plan(&full));
                assert!(a.truncated() && !b.truncated());
                assert_eq!(a.candidates.len(), 16);
                assert_eq!(b.candidates.len(), 1000);
                assert_eq!(a.candidates[..], b.candidates[..16]);
                // Under balanced the order starts at the rotation and wraps around.
                let start = match strategy {
                    Strategy::Balanced => (rotation % 1000) as usize,
                    Strategy::Ordered => 0,
                };
                let order: Vec<usize> = b.candidates.iter().skip(1).map(|c| c.index).collect();
                assert!(
                    order
                        .windows(2)
                        .all(|w| w[1] == (w[0] + 1) % 1000 || w[1] == (w[0] + 2) % 1000)
                );
                assert!(b.candidates.iter().take(4).any(|c| c.index == start));
            }
        }
        // Fewer ready accounts than the head: everything is looked at.
        let mut some_cooling = accounts[..20].to_vec();
        for a in &mut some_cooling[..10] {
            a.cooldown_until_ms = Some(NOW + 60_000);
        }
        let plan = router(Strategy::Ordered, 3).plan(
            &some_cooling,
            &RouteRequest::new("m", "k"),
            &fresh,
            NOW,
            0,
            &mut SplitMix64::new(1),
        );
        assert!(!plan.truncated());
        assert_eq!(plan.candidates.len(), 20);
        assert_eq!(
            plan.candidates[10].index, 0,
            "cooling accounts follow the ready ones"
        );
    }

    #[test]
    fn truncated_plans_keep_the_rendezvous_pick_of_the_whole_pool() {
        let mut accounts: Vec<RouteAccount> = (0..500)
            .map(|i| acc(&format!("acc{i:04}"), i / 250))
            .collect();
        let mut cooling = 0;
        for strategy in [Strategy::Ordered, Strategy::Balanced] {
            for n in 0..200 {
                let anchor = format!("conversation-{n}");
                let req = RouteRequest {
                    anchor: Some(&anchor),
                    ..RouteRequest::new("m", "k")
                };
                // The same request planned with the default head and in full.
                let both = |accounts: &[RouteAccount]| {
                    let plan =
                        |r: Router| r.plan(accounts, &req, &fresh, NOW, n, &mut SplitMix64::new(n));
                    (plan(router(strategy, 3)), plan(full_router(strategy, 3)))
                };
                let (a, b) = both(&accounts);
                assert_eq!(a.candidates[0].pick, Pick::Affinity);
                assert_eq!(a.candidates[..], b.candidates[..a.candidates.len()]);
                let pick = &accounts[a.candidates[0].index];
                if strategy == Strategy::Ordered {
                    assert_eq!(pick.priority, 0, "never the backup tier");
                }
                // The winner cools down: the conversation moves to the runner-up, the same
                // one the full plan picks.
                if n % 20 == 0 {
                    let i = a.candidates[0].index;
                    accounts[i].cooldown_until_ms = Some(NOW + 60_000);
                    cooling += 1;
                    let (c, d) = both(&accounts);
                    assert_ne!(c.candidates[0].index, i);
                    assert_eq!(c.candidates[..], d.candidates[..c.candidates.len()]);
                }
            }
        }
        assert!(cooling > 0);
        // The best few of an anchor all cooling: the full plan decides, and agrees.
        let anchor = "all-best-cooling";
        let req = RouteRequest {
            anchor: Some(anchor),
            ..RouteRequest::new("m", "k")
        };
        let h = anchor_hash(anchor);
        let mut by_weight: Vec<usize> = (0..accounts.len()).collect();
        by_weight.sort_by_key(|i| std::cmp::Reverse(weight(h, account_hash(&accounts[*i].id))));
        for a in &mut accounts {
            a.cooldown_until_ms = None;
        }
        let best: Vec<usize> = by_weight
            .into_iter()
            .filter(|i| accounts[*i].priority == 0)
            .take(AFFINITY_RESERVE + 2)
            .collect();
        for i in best {
            accounts[i].cooldown_until_ms = Some(NOW + 60_000);
        }
        let r = router(Strategy::Ordered, 3);
        let a = r.plan(&accounts, &req, &fresh, NOW, 0, &mut SplitMix64::new(3));
        let b = full_router(Strategy::Ordered, 3).plan(
            &accounts,
            &req,
            &fresh,
            NOW,
            0,
            &mut SplitMix64::new(3),
        );
        assert!(!a.truncated(), "fell back to the full plan");
        assert_eq!(a, b);
    }

    #[test]
    fn p2c_prefers_faster_less_loaded_unpenalised_accounts() {
        let accounts = vec![acc("slow", 0), acc("fast", 0)];
        let r = router(Strategy::Ordered, 2);
        let req = RouteRequest::new("m", "k");
        let mut rng = SplitMix64::new(3);
        let first = |h: &dyn Fn(usize) -> AccountHealth, rng: &mut SplitMix64| {
            let plan = r.plan(&accounts, &req, &|i, _: &RouteAccount| h(i), NOW, 0, rng);
            assert_eq!(plan.candidates[0].pick, Pick::PowerOfTwo);
            accounts[plan.candidates[0].index].id.clone()
        };
        let lat = |i: usize| observed(if i == 0 { 1_000 } else { 300 });
        assert_eq!(first(&lat, &mut rng), "fast");
        // Loaded enough, the fast one loses: 300 × 8 > 1000 × 1.
        let loaded = |i: usize| {
            let mut h = lat(i);
            if i == 1 {
                for _ in 0..7 {
                    h.acquire();
                }
            }
            h
        };
        assert_eq!(first(&loaded, &mut rng), "slow");
        // A recent 429 penalty keeps the fast account unattractive after its cooldown ends:
        // 300 × (1 + 10 e^(-46/45)) > 1000.
        let limited = |i: usize| {
            let mut h = lat(i);
            if i == 1 {
                Router::default().record(
                    &mut h,
                    Outcome::RateLimited { retry_after: None },
                    NOW - 46_000,
                );
            }
            h
        };
        assert!(limited(1).cooling(NOW).is_none());
        assert_eq!(first(&limited, &mut rng), "slow");
        // An unobserved account competes at the window's mean latency, so it wins as soon as
        // it is less loaded.
        let unobserved = |i: usize| {
            if i == 0 {
                let mut h = observed(1_000);
                h.acquire();
                h
            } else {
                AccountHealth::default()
            }
        };
        assert_eq!(first(&unobserved, &mut rng), "fast");
        let idle_slow = |i: usize| {
            if i == 0 {
                observed(1_000)
            } else {
                AccountHealth::default()
            }
        };
        let swapped = [acc("z_seen", 0), acc("a_new", 0)];
        let plan = r.plan(
            &swapped,
            &req,
            &|i, _: &RouteAccount| idle_slow(i),
            NOW,
            0,
            &mut rng,
        );
        assert_eq!(
            plan.candidates[0].index, 1,
            "a tie goes to the strategy order"
        );
    }

    #[test]
    fn p2c_prefers_quota_headroom() {
        let mut accounts = vec![acc("nearly_full", 0), acc("roomy", 0)];
        accounts[0].usage = usage(90.0);
        accounts[1].usage = usage(10.0);
        let r = router(Strategy::Ordered, 2);
        let same = |_: usize, _: &RouteAccount| observed(500);
        for seed in 0..20 {
            let plan = r.plan(
                &accounts,
                &RouteRequest::new("m", "k"),
                &same,
                NOW,
                0,
                &mut SplitMix64::new(seed),
            );
            assert_eq!(plan.candidates[0].index, 1);
            assert_eq!(
                plan.candidates[1],
                Candidate {
                    index: 0,
                    pick: Pick::Order,
                    low_quota: false
                }
            );
        }
        let s = r.score(&accounts[0], &observed(500), 1_000.0, NOW);
        assert_eq!(
            s.headroom,
            headroom_factor(0.9, r.tuning().max_headroom_factor)
        );
        assert_eq!(
            s.latency_ms,
            500.0 + (1_000.0 - 500.0) * (1.0 - (-1_000.0f64 / 300_000.0).exp())
        );
    }

    /// A usage poll that moves the windows moves the pick: the tightest window counts, the
    /// weekly one included, and a window whose reset passed no longer weighs.
    #[test]
    fn p2c_follows_headroom_as_usage_changes() {
        let weekly = |five: f64, week: f64, week_reset: i64| {
            let mut u = usage(five);
            if let Some(u) = u.as_mut() {
                u.secondary = Some(UsageWindow {
                    used_percent: week,
                    window_minutes: 10_080,
                    resets_at_ms: Some(week_reset),
                });
            }
            u
        };
        let mut accounts = vec![acc("a", 0), acc("b", 0)];
        let r = router(Strategy::Ordered, 2);
        let same = |_: usize, _: &RouteAccount| observed(500);
        let first = |accounts: &[RouteAccount], seed: u64| {
            r.plan(
                accounts,
                &RouteRequest::new("m", "k"),
                &same,
                NOW,
                0,
                &mut SplitMix64::new(seed),
            )
            .candidates[0]
                .index
        };
        // a: little 5h use but a weekly window at 85 %; b: 40 % / 10 %.
        accounts[0].usage = weekly(5.0, 85.0, NOW + 86_400_000);
        accounts[1].usage = weekly(40.0, 10.0, NOW + 86_400_000);
        assert!((0..20).all(|seed| first(&accounts, seed) == 1));
        // a's weekly window reset: its 5 % now decides, and it wins.
        accounts[0].usage = weekly(5.0, 85.0, NOW - 1);
        assert!((0..20).all(|seed| first(&accounts, seed) == 0));
        // b is polled again with room: equal headroom, the tie goes to the strategy order.
        accounts[1].usage = weekly(5.0, 5.0, NOW + 86_400_000);
        assert!((0..20).all(|seed| first(&accounts, seed) == 0));
        let (sa, sb) = (
            r.score(&accounts[0], &observed(500), 1_000.0, NOW),
            r.score(&accounts[1], &observed(500), 1_000.0, NOW),
        );
        assert_eq!(sa.headroom, sb.headroom);
    }

    #[test]
    fn low_quota_accounts_are_flagged_when_all_are_low() {
        let mut accounts = vec![acc("a", 0), acc("b", 0)];
        accounts[0].usage = usage(99.0);
        accounts[1].usage = usage(97.0);
        let r = router(Strategy::Ordered, 1);
        let plan = r.plan(
            &accounts,
            &RouteRequest::new("m", "k"),
            &fresh,
            NOW,
            0,
            &mut SplitMix64::new(0),
        );
        assert_eq!(plan.candidates.len(), 2);
        assert!(plan.candidates.iter().all(|c| c.low_quota));
    }

    #[test]
    fn should_skip_rules() {
        let r = Router::new(RoutingPolicy {
            default_max_inflight: 2,
            ..RoutingPolicy::default()
        });
        let mut a = acc("a", 0);
        let mut h = AccountHealth::default();
        assert_eq!(r.should_skip(&a, &h, NOW, false), None);
        h.acquire();
        h.acquire();
        assert_eq!(
            r.should_skip(&a, &h, NOW, false),
            Some(AttemptSkip::InflightCap {
                inflight: 2,
                cap: 2
            })
        );
        assert_eq!(
            r.should_skip(&a, &h, NOW, true),
            None,
            "the last candidate is always tried"
        );
        a.max_inflight = 5;
        assert_eq!(
            r.should_skip(&a, &h, NOW, false),
            None,
            "the account's own cap wins"
        );
        let unlimited = Router::default();
        a.max_inflight = 0;
        assert_eq!(
            unlimited.should_skip(&a, &h, NOW, false),
            None,
            "0 is unlimited"
        );

        let c = unlimited.record(&mut h, Outcome::Network, NOW).unwrap();
        let skip = unlimited.should_skip(&a, &h, NOW, false);
        assert_eq!(
            skip,
            Some(AttemptSkip::Cooldown {
                until_ms: c.until_ms,
                shared: false
            })
        );
        assert_eq!(skip.unwrap().as_str(), "cooldown");
        a.cooldown_until_ms = Some(c.until_ms + 1);
        assert_eq!(
            unlimited.should_skip(&a, &h, NOW, false),
            Some(AttemptSkip::Cooldown {
                until_ms: c.until_ms + 1,
                shared: true
            })
        );
        assert_eq!(unlimited.should_skip(&a, &h, NOW, true), None);
        assert_eq!(
            unlimited.should_skip(&a, &h, c.until_ms + 1, false),
            None,
            "expired"
        );
    }

    #[test]
    fn empty_plans_explain_themselves() {
        let mut accounts = vec![acc("a", 0), acc("b", 0)];
        accounts[0].usage = Some(UsageSnapshot {
            primary: Some(UsageWindow {
                used_percent: 100.0,
                window_minutes: 300,
                resets_at_ms: Some(NOW + 5_000),
            }),
            secondary: None,
            extra: vec![],
            captured_at_ms: NOW,
        });
        accounts[1].enabled = false;
        let r = Router::default();
        let plan = r.plan(
            &accounts,
            &RouteRequest::new("m", "k"),
            &fresh,
            NOW,
            0,
            &mut SplitMix64::new(0),
        );
        assert_eq!(
            plan.quota_exhausted(),
            Some(QuotaExhausted {
                retry_at_ms: Some(NOW + 5_000)
            })
        );
        let err = plan.into_result().unwrap_err();
        assert!(
            matches!(err, NoRoute::QuotaExhausted { retry_at_ms: Some(t), .. } if t == NOW + 5_000)
        );
        assert_eq!(
            err.to_string(),
            "every account that could serve this request has reached its usage limit"
        );

        let plan = r.plan(
            &accounts[1..],
            &RouteRequest::new("m", "k"),
            &fresh,
            NOW,
            0,
            &mut SplitMix64::new(0),
        );
        let err = plan.into_result().unwrap_err();
        assert_eq!(
            err.to_string(),
            "no account can serve this request: 1 disabled"
        );
        let plan = r.plan(
            &[],
            &RouteRequest::new("m", "k"),
            &fresh,
            NOW,
            0,
            &mut SplitMix64::new(0),
        );
        assert_eq!(
            plan.into_result().unwrap_err().to_string(),
            "no account can serve this request: no accounts configured"
        );
        let ok = r.plan(
            &accounts[..1],
            &RouteRequest::new("m", "k"),
            &fresh,
            NOW + 5_000,
            0,
            &mut SplitMix64::new(0),
        );
        assert_eq!(
            ok.into_result().unwrap().candidates.len(),
            1,
            "the window reset at NOW + 5 s"
        );
    }

    /// A pool touching every eligibility rule, with quota windows that reset between the
    /// times the tests route at.
    fn mixed_pool(n: usize, min_used: f64) -> (Vec<RouteAccount>, Vec<AccountHealth>) {
        use poolgate_core::{AccountStatus, StatusReason};
        let mut accounts = Vec::new();
        let mut healths = Vec::new();
        for i in 0..n {
            let mut a = acc(&format!("acc_{:04}", (i * 7919) % 10_000), (i % 3) as i32);
            a.enabled = i % 13 != 5;
            if i % 11 == 3 {
                a.status = AccountStatus::Unavailable;
                a.status_reason = Some(if i % 2 == 0 {
                    StatusReason::QuotaExhausted
                } else {
                    StatusReason::AuthInvalid
                });
            }
            a.group = if i % 4 == 1 { "batch" } else { "default" }.into();
            if i % 5 == 2 {
                a.model_filter = vec!["gpt-5*".into()];
            }
            if i % 6 == 4 {
                a.provider = Provider::Anthropic;
            }
            if i % 9 == 7 {
                a.cooldown_until_ms = Some(NOW + 500);
            }
            let used = (min_used + (i * 37 % 100) as f64).min(100.0);
            a.usage = (i % 8 != 0).then(|| UsageSnapshot {
                primary: Some(UsageWindow {
                    used_percent: used,
                    window_minutes: 300,
                    resets_at_ms: Some(NOW + (i as i64 % 4) * 1_000),
                }),
                secondary: Some(UsageWindow {
                    used_percent: (i * 13 % 100) as f64,
                    window_minutes: 10_080,
                    resets_at_ms: Some(NOW + 86_400_000),
                }),
                extra: vec![],
                captured_at_ms: NOW,
            });
            let mut h = observed(100 + (i as u64 * 31) % 400);
            for _ in 0..(i % 3) {
                h.acquire();
            }
            accounts.push(a);
            healths.push(h);
        }
        accounts.sort_by(routing_order);
        (accounts, healths)
    }

    #[test]
    fn prefiltered_plans_equal_full_plans() {
        let team = ["default".to_string()];
        let both = ["default".to_string(), "batch".to_string()];
        let none = ["nobody".to_string()];
        let providers = [
            ProviderSet::all(),
            ProviderSet::of(&[Provider::Codex, Provider::OpenAi]),
            ProviderSet::of(&[Provider::Anthropic]),
        ];
        let mut compared = 0;
        for (n, min_used) in [(0, 0.0), (1, 0.0), (120, 0.0), (40, 95.0), (40, 100.0)] {
            let (accounts, healths) = mixed_pool(n, min_used);
            for strategy in [Strategy::Ordered, Strategy::Balanced] {
                let r = router(strategy, 3);
                for (model, groups) in [
                    ("gpt-5-codex", &[][..]),
                    ("o3", &team[..]),
                    ("gpt-5", &both[..]),
                    ("gpt-5", &none[..]),
                ] {
                    for providers in providers {
                        let req = RouteRequest {
                            model,
                            translated: None,
                            allowed_groups: groups,
                            providers,
                            anchor: Some("conv-1"),
                            key_id: "k",
                        };
                        let pre = Prefilter::new(&accounts, &req);
                        for now in [NOW - 1, NOW + 1_500, NOW + 3_500] {
                            for rotation in [0, 5] {
                                let full = r.plan(
                                    &accounts,
                                    &req,
                                    &healths[..],
                                    now,
                                    rotation,
                                    &mut SplitMix64::new(rotation),
                                );
                                let fast = r.plan_prefiltered(
                                    &accounts,
                                    &pre,
                                    &req,
                                    &healths[..],
                                    now,
                                    rotation,
                                    &mut SplitMix64::new(rotation),
                                );
                                assert_eq!(full, fast, "n={n} {model} {groups:?} at {now}");
                                compared += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(compared, 5 * 2 * 4 * 3 * 3 * 2);
    }

    #[test]
    fn prefiltered_plans_share_the_prefilter_skips() {
        let (accounts, healths) = mixed_pool(400, 0.0);
        let req = RouteRequest::new("o3", "k");
        let pre = Prefilter::new(&accounts, &req);
        assert!(!pre.skipped().is_empty());
        let r = router(Strategy::Balanced, 3);
        let plan = r.plan_prefiltered(
            &accounts,
            &pre,
            &req,
            &healths[..],
            NOW,
            0,
            &mut SplitMix64::new(5),
        );
        // No per-request copy of the time-independent skips, yet they are all counted.
        assert!(Arc::ptr_eq(&plan.fixed, &pre.shared_skips()));
        assert!(plan.skipped.len() < pre.skipped().len());
        let full = r.plan(
            &accounts,
            &req,
            &healths[..],
            NOW,
            0,
            &mut SplitMix64::new(5),
        );
        assert_eq!(plan.summary(), full.summary());
        assert_eq!(plan.summary().total() as usize, plan.skipped().len());
        assert_eq!(plan.quota_exhausted(), full.quota_exhausted());
    }

    #[test]
    fn prefilter_keeps_only_time_independent_skips() {
        let (accounts, _) = mixed_pool(120, 0.0);
        let req = RouteRequest::new("o3", "k");
        let pre = Prefilter::new(&accounts, &req);
        assert_eq!(pre.passed().len() + pre.skipped().len(), accounts.len());
        assert!(pre.passed().windows(2).all(|w| w[0] < w[1]));
        assert!(pre.skipped().windows(2).all(|w| w[0].index < w[1].index));
        assert!(pre.skipped().iter().all(|s| !matches!(
            s.reason,
            SkipReason::QuotaExhausted { .. } | SkipReason::BelowQuotaGuard { .. }
        )));
        assert!(
            pre.skipped()
                .iter()
                .any(|s| s.reason == SkipReason::ModelNotAllowed)
        );
    }

    #[test]
    fn labels() {
        assert_eq!(Pick::PowerOfTwo.as_str(), "p2c");
        assert_eq!(
            AttemptSkip::InflightCap {
                inflight: 1,
                cap: 1
            }
            .as_str(),
            "inflight"
        );
    }
}
