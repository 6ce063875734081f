//! Which accounts may serve a request, and why each other one may not.

use std::fmt;
use std::sync::Arc;

use poolgate_core::{
    AccountStatus, QuotaGuard, StatusReason, UnixMillis, UsageSnapshot, UsageWindow, glob,
};

use crate::input::{RouteAccount, RouteRequest};

/// Why an account was left out. Checked in this order, so the reason is the first rule that
/// failed; `QuotaExhausted` and `BelowQuotaGuard` therefore mean "would otherwise serve".
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SkipReason {
    Disabled,
    /// The control plane marked the account unavailable (auth broken, deactivated, …).
    Unavailable {
        reason: Option<StatusReason>,
    },
    GroupNotAllowed,
    ModelNotAllowed,
    /// No provider of this kind can speak the request's protocol.
    ProtocolUnsupported,
    /// A usage window is at 100%; `until_ms` is when it resets, if known.
    QuotaExhausted {
        until_ms: Option<UnixMillis>,
    },
    /// Under the quota guard's remaining-percent threshold while other accounts are not.
    BelowQuotaGuard {
        five_hour_remaining: Option<f64>,
        weekly_remaining: Option<f64>,
    },
}

impl SkipReason {
    /// A stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Disabled => "disabled",
            SkipReason::Unavailable { .. } => "unavailable",
            SkipReason::GroupNotAllowed => "group_not_allowed",
            SkipReason::ModelNotAllowed => "model_not_allowed",
            SkipReason::ProtocolUnsupported => "protocol_unsupported",
            SkipReason::QuotaExhausted { .. } => "quota_exhausted",
            SkipReason::BelowQuotaGuard { .. } => "quota_guard",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Unavailable { reason: Some(r) } => write!(f, "unavailable ({r})"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// An account that may serve the request; `index` points into the input slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eligible {
    pub index: usize,
    /// Below the quota guard, kept only because every eligible account is.
    pub low_quota: bool,
}

/// An account left out, with the reason (for diagnostics and skip metrics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Skipped {
    pub index: usize,
    pub reason: SkipReason,
}

/// A pool exhausted by quota: the gateway answers 429 `usage_limit_reached` with
/// `Retry-After` at `retry_at_ms` (when known).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaExhausted {
    /// The earliest reset among the exhausted accounts.
    pub retry_at_ms: Option<UnixMillis>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Eligibility {
    /// In input order, accounts under the quota guard last.
    pub eligible: Vec<Eligible>,
    /// In input order.
    pub skipped: Vec<Skipped>,
}

impl Eligibility {
    /// `Some` when nothing is eligible and quota is why: at least one account would serve
    /// the request but for an exhausted window.
    pub fn quota_exhausted(&self) -> Option<QuotaExhausted> {
        quota_exhausted(!self.eligible.is_empty(), &self.skipped)
    }

    pub fn summary(&self) -> SkipSummary {
        SkipSummary::of(&self.skipped)
    }
}

pub(crate) fn quota_exhausted<'a>(
    any_eligible: bool,
    skipped: impl IntoIterator<Item = &'a Skipped>,
) -> Option<QuotaExhausted> {
    if any_eligible {
        return None;
    }
    let mut any = false;
    let mut earliest: Option<UnixMillis> = None;
    for s in skipped {
        if let SkipReason::QuotaExhausted { until_ms } = s.reason {
            any = true;
            if let Some(t) = until_ms {
                earliest = Some(earliest.map_or(t, |e| e.min(t)));
            }
        }
    }
    any.then_some(QuotaExhausted {
        retry_at_ms: earliest,
    })
}

/// Counts of skips by reason, for a one-line explanation ("2 disabled, 1 quota_exhausted").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkipSummary {
    pub disabled: u32,
    pub unavailable: u32,
    pub group_not_allowed: u32,
    pub model_not_allowed: u32,
    pub protocol_unsupported: u32,
    pub quota_exhausted: u32,
    pub quota_guard: u32,
}

impl SkipSummary {
    pub fn of(skipped: &[Skipped]) -> Self {
        let mut s = SkipSummary::default();
        for k in skipped {
            let c = match k.reason {
                SkipReason::Disabled => &mut s.disabled,
                SkipReason::Unavailable { .. } => &mut s.unavailable,
                SkipReason::GroupNotAllowed => &mut s.group_not_allowed,
                SkipReason::ModelNotAllowed => &mut s.model_not_allowed,
                SkipReason::ProtocolUnsupported => &mut s.protocol_unsupported,
                SkipReason::QuotaExhausted { .. } => &mut s.quota_exhausted,
                SkipReason::BelowQuotaGuard { .. } => &mut s.quota_guard,
            };
            *c = c.saturating_add(1);
        }
        s
    }

    /// Both counts, reason by reason.
    pub fn plus(self, o: SkipSummary) -> SkipSummary {
        SkipSummary {
            disabled: self.disabled.saturating_add(o.disabled),
            unavailable: self.unavailable.saturating_add(o.unavailable),
            group_not_allowed: self.group_not_allowed.saturating_add(o.group_not_allowed),
            model_not_allowed: self.model_not_allowed.saturating_add(o.model_not_allowed),
            protocol_unsupported: self
                .protocol_unsupported
                .saturating_add(o.protocol_unsupported),
            quota_exhausted: self.quota_exhausted.saturating_add(o.quota_exhausted),
            quota_guard: self.quota_guard.saturating_add(o.quota_guard),
        }
    }

    pub fn total(&self) -> u32 {
        [
            self.disabled,
            self.unavailable,
            self.group_not_allowed,
            self.model_not_allowed,
            self.protocol_unsupported,
            self.quota_exhausted,
            self.quota_guard,
        ]
        .iter()
        .fold(0u32, |a, b| a.saturating_add(*b))
    }
}

impl fmt::Display for SkipSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            (self.disabled, "disabled"),
            (self.unavailable, "unavailable"),
            (self.group_not_allowed, "not in the key's account groups"),
            (self.model_not_allowed, "not serving this model"),
            (self.protocol_unsupported, "unable to serve this protocol"),
            (self.quota_exhausted, "out of quota"),
            (self.quota_guard, "below the quota guard"),
        ];
        let mut first = true;
        for (n, what) in parts {
            if n == 0 {
                continue;
            }
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{n} {what}")?;
        }
        if first {
            f.write_str("no accounts configured")?;
        }
        Ok(())
    }
}

/// A window still counts only until its reset time: after that the snapshot is stale and
/// the window has started over, even if the control plane has not polled it again yet.
fn live(w: &UsageWindow, now_ms: UnixMillis) -> bool {
    w.resets_at_ms.is_none_or(|r| r > now_ms)
}

fn windows(u: &UsageSnapshot) -> impl Iterator<Item = &UsageWindow> {
    u.primary.iter().chain(u.secondary.iter())
}

/// How used the tightest live window is, as a fraction in `[0, 1]` (0 without data).
pub(crate) fn tightest_used_fraction(usage: Option<&UsageSnapshot>, now_ms: UnixMillis) -> f64 {
    let Some(u) = usage else { return 0.0 };
    windows(u)
        .filter(|w| live(w, now_ms))
        .map(|w| w.used_percent / 100.0)
        .filter(|f| !f.is_nan())
        .fold(0.0f64, f64::max)
        .clamp(0.0, 1.0)
}

/// `glob::allowed` without its allocations for the usual all-ASCII case (model names are);
/// anything else goes to the core implementation, so the semantics stay the same.
pub(crate) fn model_allowed(patterns: &[String], model: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| {
            if p.is_ascii() && model.is_ascii() {
                ascii_glob(p.as_bytes(), model.as_bytes())
            } else {
                glob::matches(p, model)
            }
        })
}

/// The same single-backtrack wildcard match as `glob::matches`, on ASCII bytes.
fn ascii_glob(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if c.eq_ignore_ascii_case(&t[ti]) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|c| *c == b'*')
}

pub(crate) enum Verdict {
    Skip(SkipReason),
    /// Eligible; `guard` says it is below the quota guard (skipped unless all are).
    Pass {
        guard: Option<SkipReason>,
    },
}

fn judge(
    a: &RouteAccount,
    req: &RouteRequest<'_>,
    guard: &QuotaGuard,
    now_ms: UnixMillis,
) -> Verdict {
    match judge_static(a, req) {
        Some(reason) => Verdict::Skip(reason),
        None => judge_quota(a, guard, now_ms),
    }
}

/// The rules that depend only on the account and the request's model, groups and
/// providers, not on the time: what a [`Prefilter`] remembers.
fn judge_static(a: &RouteAccount, req: &RouteRequest<'_>) -> Option<SkipReason> {
    if !a.enabled {
        return Some(SkipReason::Disabled);
    }
    if a.status == AccountStatus::Unavailable && !quota_status(a) {
        return Some(SkipReason::Unavailable {
            reason: a.status_reason,
        });
    }
    if !req.allowed_groups.is_empty() && !req.allowed_groups.contains(&a.group) {
        return Some(SkipReason::GroupNotAllowed);
    }
    if !model_allowed(&a.model_filter, req.model_for(a.provider)) {
        return Some(SkipReason::ModelNotAllowed);
    }
    if !req.providers.contains(a.provider) {
        return Some(SkipReason::ProtocolUnsupported);
    }
    None
}

fn quota_status(a: &RouteAccount) -> bool {
    a.status == AccountStatus::Unavailable && a.status_reason == Some(StatusReason::QuotaExhausted)
}

/// The time-dependent rules (quota windows and their resets, the quota guard), for an
/// account that passed [`judge_static`].
pub(crate) fn judge_quota(a: &RouteAccount, guard: &QuotaGuard, now_ms: UnixMillis) -> Verdict {
    let quota_status = quota_status(a);
    let Some(usage) = a.usage.as_ref() else {
        return if quota_status {
            Verdict::Skip(SkipReason::QuotaExhausted { until_ms: None })
        } else {
            Verdict::Pass { guard: None }
        };
    };
    let q = QuotaView::of(usage, now_ms);
    if q.exhausted {
        return Verdict::Skip(SkipReason::QuotaExhausted {
            until_ms: q.until_ms,
        });
    }
    // The control plane says exhausted; believe it unless the usage shows the exhausted
    // window has reset since (its next poll will flip the status back).
    if quota_status && !q.reset_since {
        return Verdict::Skip(SkipReason::QuotaExhausted { until_ms: None });
    }
    let low = guard.enabled
        && (q
            .five
            .is_some_and(|r| r < guard.min_five_hour_remaining_percent)
            || q.week
                .is_some_and(|r| r < guard.min_weekly_remaining_percent));
    Verdict::Pass {
        guard: low.then_some(SkipReason::BelowQuotaGuard {
            five_hour_remaining: q.five,
            weekly_remaining: q.week,
        }),
    }
}

/// The time-independent part of eligibility for one account list and one (model, allowed
/// groups, providers): which accounts pass it, and why each other one does not. Build it
/// once per snapshot and request shape, then [`Router::plan_prefiltered`] runs only the
/// time-dependent checks over [`Prefilter::passed`].
///
/// Valid only for the account slice it was built from (same order) and a request with the
/// same model, allowed groups and providers.
///
/// [`Router::plan_prefiltered`]: crate::Router::plan_prefiltered
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prefilter {
    /// In routing order ([`crate::routing_order`]).
    passed: Vec<usize>,
    /// `account_hash` of each passed account's id (same positions as `passed`).
    hashes: Vec<u64>,
    /// Each passed account's priority (same positions): a plan reads a tier's extent here
    /// rather than from thousands of account records.
    priorities: Vec<i32>,
    /// Shared with every plan made from this prefilter, never copied into one: a key
    /// limited to one small group of a 10,000-account pool skips thousands per request.
    skipped: Arc<[Skipped]>,
    summary: SkipSummary,
}

impl Prefilter {
    /// For `accounts` kept in routing order ([`crate::routing_order`], once per snapshot),
    /// as the gateway keeps them.
    pub fn new(accounts: &[RouteAccount], req: &RouteRequest<'_>) -> Self {
        Self::build(accounts, req, false)
    }

    /// For `accounts` in any order: the survivors are put in routing order here.
    pub fn in_routing_order(accounts: &[RouteAccount], req: &RouteRequest<'_>) -> Self {
        Self::build(accounts, req, true)
    }

    fn build(accounts: &[RouteAccount], req: &RouteRequest<'_>, sort: bool) -> Self {
        let mut p = Prefilter::default();
        let mut skipped = Vec::new();
        for (index, a) in accounts.iter().enumerate() {
            match judge_static(a, req) {
                Some(reason) => skipped.push(Skipped { index, reason }),
                None => p.passed.push(index),
            }
        }
        if sort {
            p.passed
                .sort_by(|x, y| crate::routing_order(&accounts[*x], &accounts[*y]).then(x.cmp(y)));
        }
        p.hashes = p
            .passed
            .iter()
            .map(|i| crate::affinity::account_hash(&accounts[*i].id))
            .collect();
        p.priorities = p.passed.iter().map(|i| accounts[*i].priority).collect();
        p.summary = SkipSummary::of(&skipped);
        p.skipped = skipped.into();
        p
    }

    /// The skips by reason ([`Prefilter::skipped`] counted once, when it was built).
    pub fn summary(&self) -> SkipSummary {
        self.summary
    }

    pub(crate) fn shared_skips(&self) -> Arc<[Skipped]> {
        Arc::clone(&self.skipped)
    }

    /// Indices of the accounts that passed the time-independent rules, in routing order.
    pub fn passed(&self) -> &[usize] {
        &self.passed
    }

    /// The id hashes (for affinity) of the [`Prefilter::passed`] accounts, at the same
    /// positions.
    pub fn hashes(&self) -> &[u64] {
        &self.hashes
    }

    /// The priorities of the [`Prefilter::passed`] accounts, at the same positions.
    pub fn priorities(&self) -> &[i32] {
        &self.priorities
    }

    /// The accounts left out by the time-independent rules, in input order.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }
}

/// Everything eligibility needs from a usage snapshot, in one pass over its two windows.
struct QuotaView {
    /// A live window is exhausted; `until_ms` is the latest known reset among such windows.
    exhausted: bool,
    until_ms: Option<UnixMillis>,
    /// An exhausted window's reset time has passed.
    reset_since: bool,
    /// Remaining percent of the 5-hour and weekly windows (chosen by length, as
    /// `UsageSnapshot::five_hour` / `weekly` do), while live.
    five: Option<f64>,
    week: Option<f64>,
}

impl QuotaView {
    fn of(u: &UsageSnapshot, now_ms: UnixMillis) -> Self {
        let mut q = QuotaView {
            exhausted: false,
            until_ms: None,
            reset_since: false,
            five: None,
            week: None,
        };
        let (mut five_seen, mut week_seen) = (false, false);
        for w in [u.primary.as_ref(), u.secondary.as_ref()]
            .into_iter()
            .flatten()
        {
            let is_live = live(w, now_ms);
            if w.exhausted() {
                if is_live {
                    q.exhausted = true;
                    if let Some(r) = w.resets_at_ms {
                        q.until_ms = Some(q.until_ms.map_or(r, |u| u.max(r)));
                    }
                } else {
                    q.reset_since = true;
                }
            }
            let (seen, slot) = if w.is_weekly() {
                (&mut week_seen, &mut q.week)
            } else {
                (&mut five_seen, &mut q.five)
            };
            if !*seen {
                *seen = true;
                *slot = is_live.then(|| w.remaining_percent());
            }
        }
        q
    }
}

/// Splits `accounts` into those that may serve `req` and those that may not (with reasons).
///
/// The quota guard skips accounts low on quota only while some eligible account is not; when
/// every one is low they are all kept (flagged `low_quota`), since a low account beats none.
pub fn eligibility(
    accounts: &[RouteAccount],
    req: &RouteRequest<'_>,
    guard: &QuotaGuard,
    now_ms: UnixMillis,
) -> Eligibility {
    let mut out = Eligibility::default();
    let mut eligible = Vec::new();
    scan(
        accounts,
        req,
        guard,
        now_ms,
        &mut out.skipped,
        |index, low_quota| {
            eligible.push(Eligible { index, low_quota });
        },
    );
    out.eligible = eligible;
    out
}

/// [`eligibility`] without building the eligible list: `keep(index, low_quota)` is called
/// for each eligible account (those under the quota guard last, and only when every
/// eligible account is), skips are appended to `skipped` in input order.
pub(crate) fn scan(
    accounts: &[RouteAccount],
    req: &RouteRequest<'_>,
    guard: &QuotaGuard,
    now_ms: UnixMillis,
    skipped: &mut Vec<Skipped>,
    keep: impl FnMut(usize, bool),
) {
    scan_with(
        accounts.iter().enumerate(),
        |a| judge(a, req, guard, now_ms),
        skipped,
        keep,
    );
}

/// Two skip lists, each in input order, merged into one in input order.
pub(crate) fn merge_skips(a: &[Skipped], b: &[Skipped]) -> Vec<Skipped> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut x, mut y) = (a.iter().peekable(), b.iter().peekable());
    loop {
        let next = match (x.peek(), y.peek()) {
            (Some(p), Some(q)) if p.index <= q.index => x.next(),
            (Some(_), Some(_)) | (None, Some(_)) => y.next(),
            (Some(_), None) => x.next(),
            (None, None) => break,
        };
        out.extend(next.copied());
    }
    out
}

fn scan_with<'a>(
    accounts: impl Iterator<Item = (usize, &'a RouteAccount)>,
    judge: impl Fn(&RouteAccount) -> Verdict,
    skipped: &mut Vec<Skipped>,
    mut keep: impl FnMut(usize, bool),
) {
    let first_skip = skipped.len();
    let mut any_kept = false;
    let mut low: Vec<Skipped> = Vec::new();
    for (index, a) in accounts {
        match judge(a) {
            Verdict::Skip(reason) => skipped.push(Skipped { index, reason }),
            Verdict::Pass { guard: None } => {
                any_kept = true;
                keep(index, false);
            }
            Verdict::Pass {
                guard: Some(reason),
            } => low.push(Skipped { index, reason }),
        }
    }
    if !any_kept {
        for s in &low {
            keep(s.index, true);
        }
    } else if !low.is_empty() {
        skipped.extend(low);
        skipped[first_skip..].sort_unstable_by_key(|s| s.index);
    }
}
#[cfg(test)]
mod tests {
    use poolgate_core::Provider;

    use super::*;
    use crate::input::ProviderSet;

    fn w(used: f64, minutes: u32, reset: Option<i64>) -> Option<UsageWindow> {
        Some(UsageWindow {
            used_percent: used,
            window_minutes: minutes,
            resets_at_ms: reset,
        })
    }
    fn usage(five: Option<UsageWindow>, week: Option<UsageWindow>) -> Option<UsageSnapshot> {
        Some(UsageSnapshot {
            primary: five,
            secondary: week,
            extra: vec![],
            captured_at_ms: 0,
        })
    }
    fn acc(id: &str) -> RouteAccount {
        RouteAccount::new(id, Provider::Codex)
    }
    fn run(accounts: &[RouteAccount], req: &RouteRequest<'_>) -> Eligibility {
        eligibility(accounts, req, &QuotaGuard::default(), 1_000)
    }
    fn reason_of(e: &Eligibility, index: usize) -> Option<SkipReason> {
        e.skipped
            .iter()
            .find(|s| s.index == index)
            .map(|s| s.reason)
    }

    #[test]
    fn translated_providers_are_judged_by_the_translated_model() {
        // A Claude name: Anthropic accounts serve it as is, Codex accounts as gpt-5.
        let req = RouteRequest {
            providers: ProviderSet::of(&[Provider::Codex, Provider::Anthropic]),
            translated: Some(crate::Translated {
                providers: ProviderSet::of(&[Provider::Codex]),
                model: "gpt-5",
            }),
            ..RouteRequest::new("claude-sonnet-4-5", "k")
        };
        let mut accounts = vec![acc("codex-gpt"), acc("codex-claude"), acc("anthropic")];
        accounts[0].model_filter = vec!["gpt-5*".into()];
        accounts[1].model_filter = vec!["claude-*".into()];
        accounts[2].provider = Provider::Anthropic;
        accounts[2].model_filter = vec!["claude-*".into()];
        let e = run(&accounts, &req);
        let ids: Vec<usize> = e.eligible.iter().map(|x| x.index).collect();
        assert_eq!(ids, vec![0, 2]);
        assert_eq!(reason_of(&e, 1), Some(SkipReason::ModelNotAllowed));
        // The prefilter agrees.
        let pre = Prefilter::new(&accounts, &req);
        assert_eq!(pre.passed(), &[0, 2]);
    }

    #[test]
    fn each_rule_has_its_reason() {
        let groups = vec!["team".to_string()];
        let req = RouteRequest {
            allowed_groups: &groups,
            providers: ProviderSet::of(&[Provider::Codex]),
            ..RouteRequest::new("gpt-5", "k")
        };
        let mut accounts = vec![acc("ok"); 7];
        for a in &mut accounts {
            a.group = "team".into();
        }
        accounts[1].enabled = false;
        accounts[2].status = AccountStatus::Unavailable;
        accounts[2].status_reason = Some(StatusReason::AuthInvalid);
        accounts[3].group = "other".into();
        accounts[4].model_filter = vec!["claude-*".into()];
        accounts[5].provider = Provider::Anthropic;
        accounts[6].usage = usage(w(100.0, 300, Some(5_000)), w(10.0, 10080, Some(9_000)));
        let e = run(&accounts, &req);
        assert_eq!(
            e.eligible,
            vec![Eligible {
                index: 0,
                low_quota: false
            }]
        );
        assert_eq!(reason_of(&e, 1), Some(SkipReason::Disabled));
        assert_eq!(
            reason_of(&e, 2),
            Some(SkipReason::Unavailable {
                reason: Some(StatusReason::AuthInvalid)
            })
        );
        assert_eq!(reason_of(&e, 3), Some(SkipReason::GroupNotAllowed));
        assert_eq!(reason_of(&e, 4), Some(SkipReason::ModelNotAllowed));
        assert_eq!(reason_of(&e, 5), Some(SkipReason::ProtocolUnsupported));
        assert_eq!(
            reason_of(&e, 6),
            Some(SkipReason::QuotaExhausted {
                until_ms: Some(5_000)
            })
        );
        assert_eq!(e.quota_exhausted(), None, "one account is still eligible");
        let s = e.summary();
        assert_eq!(s.total(), 6);
        assert_eq!(
            s.to_string(),
            "1 disabled, 1 unavailable, 1 not in the key's account groups, 1 not serving this model, \
             1 unable to serve this protocol, 1 out of quota"
        );
        assert_eq!(
            reason_of(&e, 2).unwrap().to_string(),
            "unavailable (auth_invalid)"
        );
    }

    #[test]
    fn first_failing_rule_wins() {
        let mut a = acc("a");
        a.enabled = false;
        a.model_filter = vec!["x".into()];
        let e = run(&[a], &RouteRequest::new("gpt-5", "k"));
        assert_eq!(e.skipped[0].reason, SkipReason::Disabled);
    }

    #[test]
    fn empty_groups_and_filters_allow_everything() {
        let mut a = acc("a");
        a.group = "anything".into();
        a.model_filter = vec!["gpt-*".into()];
        let e = run(&[a], &RouteRequest::new("GPT-5-codex", "k"));
        assert_eq!(e.eligible.len(), 1);
    }

    #[test]
    fn quota_guard_skips_low_accounts_while_others_remain() {
        let mut accounts = vec![acc("a"), acc("b"), acc("c")];
        accounts[0].usage = usage(w(97.0, 300, Some(50_000)), w(10.0, 10080, Some(90_000)));
        accounts[1].usage = usage(w(10.0, 300, Some(50_000)), w(95.0, 10080, Some(90_000)));
        accounts[2].usage = usage(w(50.0, 300, Some(50_000)), w(50.0, 10080, Some(90_000)));
        let e = run(&accounts, &RouteRequest::new("m", "k"));
        assert_eq!(
            e.eligible,
            vec![Eligible {
                index: 2,
                low_quota: false
            }]
        );
        assert_eq!(
            reason_of(&e, 0),
            Some(SkipReason::BelowQuotaGuard {
                five_hour_remaining: Some(3.0),
                weekly_remaining: Some(90.0)
            })
        );
        assert!(matches!(
            reason_of(&e, 1),
            Some(SkipReason::BelowQuotaGuard { .. })
        ));
        assert_eq!(
            e.skipped.iter().map(|s| s.index).collect::<Vec<_>>(),
            vec![0, 1]
        );
    }

    #[test]
    fn quota_guard_keeps_everyone_when_all_are_low() {
        let mut accounts = vec![acc("a"), acc("b"), acc("c")];
        accounts[0].usage = usage(w(97.0, 300, Some(50_000)), None);
        accounts[1].usage = usage(w(99.0, 300, Some(50_000)), None);
        accounts[2].enabled = false;
        let e = run(&accounts, &RouteRequest::new("m", "k"));
        assert_eq!(
            e.eligible,
            vec![
                Eligible {
                    index: 0,
                    low_quota: true
                },
                Eligible {
                    index: 1,
                    low_quota: true
                }
            ]
        );
        assert_eq!(e.skipped.len(), 1);
    }

    #[test]
    fn quota_guard_can_be_disabled_and_unknown_usage_is_not_low() {
        let mut accounts = vec![acc("a"), acc("b")];
        accounts[0].usage = usage(w(99.0, 300, Some(50_000)), None);
        let guard = QuotaGuard {
            enabled: false,
            ..QuotaGuard::default()
        };
        let e = eligibility(&accounts, &RouteRequest::new("m", "k"), &guard, 0);
        assert_eq!(e.eligible.len(), 2);
        assert!(e.eligible.iter().all(|x| !x.low_quota));
        // With the guard on, the account without usage data carries the traffic.
        let e = run(&accounts, &RouteRequest::new("m", "k"));
        assert_eq!(
            e.eligible,
            vec![Eligible {
                index: 1,
                low_quota: false
            }]
        );
    }

    #[test]
    fn windows_past_their_reset_no_longer_count() {
        let mut a = acc("a");
        a.usage = usage(w(100.0, 300, Some(500)), w(99.0, 10080, Some(800)));
        let e = eligibility(
            std::slice::from_ref(&a),
            &RouteRequest::new("m", "k"),
            &QuotaGuard::default(),
            1_000,
        );
        assert_eq!(
            e.eligible,
            vec![Eligible {
                index: 0,
                low_quota: false
            }]
        );
        // A status set by the control plane is believed until the usage shows a reset.
        a.status = AccountStatus::Unavailable;
        a.status_reason = Some(StatusReason::QuotaExhausted);
        let e = eligibility(
            std::slice::from_ref(&a),
            &RouteRequest::new("m", "k"),
            &QuotaGuard::default(),
            1_000,
        );
        assert_eq!(e.eligible.len(), 1, "the exhausted window reset at 500");
        a.usage = None;
        let e = eligibility(
            &[a],
            &RouteRequest::new("m", "k"),
            &QuotaGuard::default(),
            1_000,
        );
        assert_eq!(
            e.skipped[0].reason,
            SkipReason::QuotaExhausted { until_ms: None }
        );
    }

    #[test]
    fn exhausted_pool_reports_the_earliest_reset() {
        let mut accounts = vec![acc("a"), acc("b"), acc("c"), acc("d")];
        // a: both windows exhausted, back when the later one resets.
        accounts[0].usage = usage(w(100.0, 300, Some(7_000)), w(100.0, 10080, Some(60_000)));
        accounts[1].usage = usage(w(100.0, 300, Some(20_000)), w(40.0, 10080, Some(90_000)));
        accounts[2].usage = usage(w(100.0, 300, None), None);
        accounts[3].enabled = false;
        let e = run(&accounts, &RouteRequest::new("m", "k"));
        assert!(e.eligible.is_empty());
        assert_eq!(
            reason_of(&e, 0),
            Some(SkipReason::QuotaExhausted {
                until_ms: Some(60_000)
            })
        );
        assert_eq!(
            e.quota_exhausted(),
            Some(QuotaExhausted {
                retry_at_ms: Some(20_000)
            })
        );

        let mut only_unknown = accounts.clone();
        only_unknown.truncate(1);
        only_unknown[0].usage = usage(w(100.0, 300, None), None);
        let e = run(&only_unknown, &RouteRequest::new("m", "k"));
        assert_eq!(
            e.quota_exhausted(),
            Some(QuotaExhausted { retry_at_ms: None })
        );

        // Nothing eligible for other reasons is not a quota problem.
        let e = run(&accounts[3..], &RouteRequest::new("m", "k"));
        assert_eq!(e.quota_exhausted(), None);
        assert_eq!(e.summary().to_string(), "1 disabled");
        assert_eq!(SkipSummary::default().to_string(), "no accounts configured");
    }

    #[test]
    fn ascii_fast_path_matches_core_glob() {
        let patterns = [
            "gpt-5*",
            "*codex*",
            "claude-*-4",
            "gpt-4*",
            "*",
            "a",
            "a*b*c",
            "",
            "**",
            "GPT-5",
        ];
        let texts = [
            "gpt-5.1-codex",
            "GPT-5-Codex-mini",
            "claude-opus-4",
            "gpt-5",
            "",
            "axxbyyc",
            "axxbyy",
            "a",
        ];
        for p in patterns {
            for t in texts {
                assert_eq!(
                    ascii_glob(p.as_bytes(), t.as_bytes()),
                    glob::matches(p, t),
                    "{p:?} ~ {t:?}"
                );
            }
        }
        assert!(
            model_allowed(&["modèle-*".into()], "MODÈLE-1"),
            "non-ASCII falls back to core"
        );
        assert!(model_allowed(&[], "x"));
        assert!(!model_allowed(&["y".into()], "x"));
    }

    proptest::proptest! {
        /// The one-pass view agrees with core's window accessors.
        #[test]
        fn quota_view_agrees_with_core(
            used in proptest::collection::vec(0.0f64..120.0, 2),
            minutes in proptest::collection::vec(prop_oneof_minutes(), 2),
            resets in proptest::collection::vec(proptest::option::of(0i64..2_000), 2),
            present in proptest::collection::vec(proptest::bool::ANY, 2),
        ) {
            let win = |i: usize| present[i].then_some(UsageWindow {
                used_percent: used[i],
                window_minutes: minutes[i],
                resets_at_ms: resets[i],
            });
            let u = UsageSnapshot { primary: win(0), secondary: win(1), extra: vec![], captured_at_ms: 0 };
            let now = 1_000;
            let q = QuotaView::of(&u, now);
            let rem = |w: Option<&UsageWindow>| w.filter(|w| live(w, now)).map(UsageWindow::remaining_percent);
            proptest::prop_assert_eq!(q.five, rem(u.five_hour()));
            proptest::prop_assert_eq!(q.week, rem(u.weekly()));
            let live_exhausted: Vec<&UsageWindow> = windows(&u).filter(|w| w.exhausted() && live(w, now)).collect();
            proptest::prop_assert_eq!(q.exhausted, !live_exhausted.is_empty());
            proptest::prop_assert_eq!(q.until_ms, live_exhausted.iter().filter_map(|w| w.resets_at_ms).max());
            proptest::prop_assert_eq!(q.reset_since, windows(&u).any(|w| w.exhausted() && !live(w, now)));
        }
    }

    fn prop_oneof_minutes() -> impl proptest::strategy::Strategy<Value = u32> {
        proptest::sample::select(vec![60u32, 300, 1440, 1443, 1444, 10_080])
    }

    #[test]
    fn tightest_window_fraction() {
        let u = usage(w(30.0, 300, Some(5_000)), w(70.0, 10080, Some(500)));
        assert_eq!(
            tightest_used_fraction(u.as_ref(), 1_000),
            0.3,
            "the weekly window reset"
        );
        assert_eq!(tightest_used_fraction(u.as_ref(), 0), 0.7);
        assert_eq!(tightest_used_fraction(None, 0), 0.0);
        let odd = usage(w(f64::NAN, 300, None), w(250.0, 10080, None));
        assert_eq!(tightest_used_fraction(odd.as_ref(), 0), 1.0);
    }
}
