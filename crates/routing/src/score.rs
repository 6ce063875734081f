//! Load scores for power-of-two-choices: peak-EWMA latency × (in-flight + 1) × (1 + a
//! decaying failure penalty) × a quota-headroom factor. Lower is better.

use poolgate_core::UnixMillis;

use crate::rng::Rng;

/// Knobs of the score. The defaults suit LLM traffic, where the latency fed in is the time
/// to the upstream's first byte (hundreds of ms to seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// Latency assumed when no account in the P2C window has been observed yet.
    pub default_latency_ms: f64,
    /// Decay time constant of the latency EWMA between observations.
    pub ewma_tau_ms: f64,
    /// An estimate not refreshed for this long has drifted ~63% back to neutral, so an
    /// account that was slow once gets tried again.
    pub idle_tau_ms: f64,
    /// Penalty added by a 429 or an exhausted quota (score × (1 + penalty)).
    pub rate_limit_penalty: f64,
    /// Penalty added by a 5xx, a network error or an auth failure.
    pub failure_penalty: f64,
    /// Penalties accumulate up to this.
    pub max_penalty: f64,
    /// Shortest decay time constant of a penalty; a longer cooldown (or Retry-After)
    /// decays more slowly.
    pub min_penalty_tau_ms: f64,
    /// Score multiplier of an account whose tightest quota window is full; an untouched one
    /// gets 1. In between it grows with the square of the used share.
    pub max_headroom_factor: f64,
    /// A plan stops looking once it has this many ready accounts (at least the P2C window
    /// and one more): a request fails over at most this far, and routing over 10,000
    /// accounts costs what routing over a few dozen does.
    pub plan_head: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            default_latency_ms: 1_000.0,
            ewma_tau_ms: 10_000.0,
            idle_tau_ms: 300_000.0,
            rate_limit_penalty: 10.0,
            failure_penalty: 2.0,
            max_penalty: 100.0,
            min_penalty_tau_ms: 30_000.0,
            max_headroom_factor: 4.0,
            plan_head: 16,
        }
    }
}

/// Elapsed milliseconds as f64, 0 when the clock went backwards.
fn elapsed(now_ms: UnixMillis, since: UnixMillis) -> f64 {
    now_ms.saturating_sub(since).max(0) as f64
}

/// `exp(-dt/tau)`, 0 for a degenerate tau.
fn decay(dt: f64, tau: f64) -> f64 {
    if tau.is_finite() && tau > 0.0 {
        (-dt / tau).exp()
    } else {
        0.0
    }
}

fn sane(x: f64) -> f64 {
    if x.is_finite() { x.max(0.0) } else { 0.0 }
}

/// Peak-sensitive EWMA of latency: a slower sample takes over at once (react fast to an
/// account getting slow), a faster one is blended in with weight `1 - exp(-elapsed/tau)`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PeakEwma {
    value_ms: f64,
    at_ms: UnixMillis,
    observed: bool,
}

impl PeakEwma {
    pub fn observe(&mut self, sample_ms: f64, now_ms: UnixMillis, tau_ms: f64) {
        let sample = sane(sample_ms);
        if !self.observed || sample > self.value_ms {
            self.value_ms = sample;
        } else {
            let w = decay(elapsed(now_ms, self.at_ms), tau_ms);
            self.value_ms = self.value_ms * w + sample * (1.0 - w);
        }
        self.observed = true;
        self.at_ms = now_ms;
    }

    /// The last estimate, `None` before the first observation.
    pub fn raw_ms(&self) -> Option<f64> {
        self.observed.then_some(self.value_ms)
    }

    /// The estimate at `now_ms`, drifting toward `neutral_ms` while no new sample arrives;
    /// `neutral_ms` itself when never observed.
    pub fn estimate_ms(&self, now_ms: UnixMillis, neutral_ms: f64, idle_tau_ms: f64) -> f64 {
        match self.raw_ms() {
            None => neutral_ms,
            Some(v) => {
                let w = decay(elapsed(now_ms, self.at_ms), idle_tau_ms);
                neutral_ms + (v - neutral_ms) * w
            }
        }
    }
}

/// A penalty that decays exponentially from the last failure.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Penalty {
    value: f64,
    at_ms: UnixMillis,
    tau_ms: f64,
}

impl Penalty {
    pub fn value_at(&self, now_ms: UnixMillis) -> f64 {
        self.value * decay(elapsed(now_ms, self.at_ms), self.tau_ms)
    }

    /// Adds `amount` to what is left of the current penalty (capped at `max`); the slower of
    /// the two decay rates is kept.
    pub fn add(&mut self, amount: f64, tau_ms: f64, max: f64, now_ms: UnixMillis) {
        let left = self.value_at(now_ms);
        let tau = if left > 0.0 {
            sane(tau_ms).max(self.tau_ms)
        } else {
            sane(tau_ms)
        };
        self.value = (left + sane(amount)).min(sane(max));
        self.tau_ms = tau;
        self.at_ms = now_ms;
    }
}

/// `1 + (max - 1) × used²`, with `used` the share of the tightest quota window used
/// (clamped to `[0, 1]`). Bounded to `[1, max]` (`max` itself clamped to `[1, 100]`): mild
/// while an account has plenty left, strong as it nears its limit.
pub fn headroom_factor(used_fraction: f64, max_factor: f64) -> f64 {
    let max = if max_factor.is_finite() {
        max_factor.clamp(1.0, 100.0)
    } else {
        1.0
    };
    let u = if used_fraction.is_nan() {
        0.0
    } else {
        used_fraction.clamp(0.0, 1.0)
    };
    1.0 + (max - 1.0) * u * u
}

/// What a score is made of, for diagnostics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreInputs {
    pub latency_ms: f64,
    pub inflight: u32,
    pub penalty: f64,
    pub headroom: f64,
}

impl ScoreInputs {
    pub fn score(&self) -> f64 {
        let s = sane(self.latency_ms).max(1.0)
            * (f64::from(self.inflight) + 1.0)
            * (1.0 + sane(self.penalty))
            * sane(self.headroom).max(1.0);
        if s.is_finite() { s } else { f64::MAX }
    }
}

/// Power of two choices over the first `window` of `len` candidates: two distinct random
/// picks, the lower cost wins (ties go to the earlier one, which the strategy preferred).
/// Returns an index below `min(window, len)`, `None` when `len` or `window` is 0.
pub fn power_of_two(
    len: usize,
    window: usize,
    rng: &mut impl Rng,
    mut cost: impl FnMut(usize) -> f64,
) -> Option<usize> {
    let w = window.min(len);
    match w {
        0 => None,
        1 => Some(0),
        _ => {
            let a = rng.below(w);
            let mut b = rng.below(w - 1);
            if b >= a {
                b += 1;
            }
            let (first, second) = (a.min(b), a.max(b));
            let (cf, cs) = (cost(first), cost(second));
            Some(if cs.total_cmp(&cf).is_lt() {
                second
            } else {
                first
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let mut e = PeakEwma::default();
        assert_eq!(e.raw_ms(), None);
        assert_eq!(e.estimate_ms(0, 700.0, 1.0), 700.0, "unobserved is neutral");
        e.observe(100.0, 0, 10_000.0);
        assert_eq!(e.raw_ms(), Some(100.0), "first sample taken as is");
        e.observe(900.0, 1, 10_000.0);
        assert_eq!(e.raw_ms(), Some(900.0), "a peak takes over immediately");
        e.observe(100.0, 10_001, 10_000.0);
        let v = e.raw_ms().unwrap();
        let expected = 900.0 * (-1.0f64).exp() + 100.0 * (1.0 - (-1.0f64).exp());
        assert!((v - expected).abs() < 1e-9, "{v} vs {expected}");
        // A sample right after barely moves it.
        e.observe(100.0, 10_001, 10_000.0);
        assert!((e.raw_ms().unwrap() - expected).abs() < 1e-9);
        // Clock going backwards counts as no time passing.
        e.observe(100.0, 0, 10_000.0);
        assert!((e.raw_ms().unwrap() - expected).abs() < 1e-9);
    }

    #[test]
    fn idle_estimates_drift_to_neutral() {
        let mut e = PeakEwma::default();
        e.observe(5_000.0, 0, 10_000.0);
        assert_eq!(e.estimate_ms(0, 1_000.0, 300_000.0), 5_000.0);
        let later = e.estimate_ms(300_000, 1_000.0, 300_000.0);
        assert!((later - (1_000.0 + 4_000.0 * (-1.0f64).exp())).abs() < 1e-6);
        assert!((e.estimate_ms(i64::MAX, 1_000.0, 300_000.0) - 1_000.0).abs() < 1e-6);
    }

    #[test]
    fn penalty_decays_accumulates_and_caps() {
        let mut p = Penalty::default();
        assert_eq!(p.value_at(0), 0.0);
        p.add(10.0, 60_000.0, 100.0, 0);
        assert_eq!(p.value_at(0), 10.0);
        let half_way = p.value_at(60_000);
        assert!((half_way - 10.0 * (-1.0f64).exp()).abs() < 1e-9);
        p.add(10.0, 1_000.0, 100.0, 60_000);
        assert!((p.value_at(60_000) - (half_way + 10.0)).abs() < 1e-9);
        // The slower decay of the two is kept.
        assert!(p.value_at(120_000) > (half_way + 10.0) * 0.3);
        for _ in 0..50 {
            p.add(10.0, 1_000.0, 100.0, 60_000);
        }
        assert_eq!(p.value_at(60_000), 100.0);
        assert!(
            p.value_at(60_000 + 10_000_000) < 1e-6,
            "fades out completely"
        );
        let mut q = Penalty::default();
        q.add(f64::NAN, f64::INFINITY, 5.0, 0);
        assert_eq!(q.value_at(10), 0.0);
    }

    #[test]
    fn headroom_is_bounded_and_monotonic() {
        assert_eq!(headroom_factor(0.0, 4.0), 1.0);
        assert_eq!(headroom_factor(1.0, 4.0), 4.0);
        assert_eq!(headroom_factor(0.5, 4.0), 1.75);
        assert_eq!(headroom_factor(7.0, 4.0), 4.0);
        assert_eq!(headroom_factor(-1.0, 4.0), 1.0);
        assert_eq!(headroom_factor(f64::NAN, 4.0), 1.0);
        assert_eq!(headroom_factor(1.0, 0.5), 1.0);
        assert_eq!(headroom_factor(1.0, f64::INFINITY), 1.0);
        assert_eq!(headroom_factor(1.0, 1e9), 100.0);
        let mut last = 0.0;
        for i in 0..=100 {
            let f = headroom_factor(f64::from(i) / 100.0, 4.0);
            assert!(f >= last);
            last = f;
        }
    }

    #[test]
    fn score_combines_its_factors() {
        let base = ScoreInputs {
            latency_ms: 500.0,
            inflight: 0,
            penalty: 0.0,
            headroom: 1.0,
        };
        assert_eq!(base.score(), 500.0);
        assert_eq!(
            ScoreInputs {
                inflight: 3,
                ..base
            }
            .score(),
            2_000.0
        );
        assert_eq!(
            ScoreInputs {
                penalty: 1.0,
                ..base
            }
            .score(),
            1_000.0
        );
        assert_eq!(
            ScoreInputs {
                headroom: 2.0,
                ..base
            }
            .score(),
            1_000.0
        );
        // A fast account hit by 429s loses to a slower healthy one.
        let fast_limited = ScoreInputs {
            latency_ms: 50.0,
            penalty: 10.0,
            ..base
        };
        let slow_ok = ScoreInputs {
            latency_ms: 400.0,
            ..base
        };
        assert!(slow_ok.score() < fast_limited.score());
        let weird = ScoreInputs {
            latency_ms: f64::INFINITY,
            inflight: u32::MAX,
            penalty: f64::NAN,
            headroom: -3.0,
        };
        assert!(weird.score().is_finite());
    }

    #[test]
    fn p2c_picks_two_distinct_and_prefers_lower_cost() {
        let mut rng = SplitMix64::new(1);
        assert_eq!(power_of_two(0, 3, &mut rng, |_| 0.0), None);
        assert_eq!(power_of_two(5, 0, &mut rng, |_| 0.0), None);
        assert_eq!(power_of_two(5, 1, &mut rng, |_| 0.0), Some(0));
        // With two candidates both are always compared: the cheaper one always wins.
        for _ in 0..100 {
            let costs = [5.0, 1.0];
            assert_eq!(power_of_two(2, 3, &mut rng, |i| costs[i]), Some(1));
        }
        // The most expensive of the window never wins; every other one sometimes does.
        let costs = [3.0, 1.0, 2.0, 4.0, 0.0];
        let mut wins = [0u32; 5];
        for _ in 0..3000 {
            let mut compared = Vec::new();
            let i = power_of_two(5, 4, &mut rng, |i| {
                compared.push(i);
                costs[i]
            })
            .unwrap();
            assert_eq!(compared.len(), 2);
            assert_ne!(compared[0], compared[1]);
            wins[i] += 1;
        }
        assert_eq!(wins[3], 0);
        assert_eq!(wins[4], 0, "outside the window");
        assert!(wins[0] > 0 && wins[1] > 0 && wins[2] > 0);
        assert!(wins[1] > wins[2] && wins[2] > wins[0]);
        // Ties go to the earlier candidate.
        for _ in 0..50 {
            assert_eq!(power_of_two(2, 2, &mut rng, |_| 1.0), Some(0));
        }
    }
}
