//! The routing policy: one document, set through the admin API, shipped to every gateway.

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::account::string_enum;

string_enum!(
    Strategy, "strategy" {
        Ordered => "ordered" | "order" | "priority" | "sequential",
        Balanced => "balanced" | "round_robin" | "rr",
    }
);

/// Keeps traffic off accounts close to a quota limit unless every account is that low.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuotaGuard {
    pub enabled: bool,
    /// Skip an account with less than this share of its 5-hour window left.
    pub min_five_hour_remaining_percent: f64,
    /// Skip an account with less than this share of its weekly window left.
    pub min_weekly_remaining_percent: f64,
}

impl Default for QuotaGuard {
    fn default() -> Self {
        QuotaGuard {
            enabled: true,
            min_five_hour_remaining_percent: 5.0,
            min_weekly_remaining_percent: 10.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingPolicy {
    pub strategy: Strategy,
    /// Power-of-two-choices picks among the first N candidates.
    pub p2c_window: u32,
    /// Cooldowns after successive 429s on one account; the last step repeats.
    pub cooldown_429_secs: Vec<u32>,
    pub cooldown_5xx_secs: u32,
    pub cooldown_network_secs: u32,
    pub cooldown_auth_secs: u32,
    pub quota_guard: QuotaGuard,
    /// In-flight cap for accounts that set none; 0 means unlimited.
    pub default_max_inflight: u32,
}

impl Default for RoutingPolicy {
    fn default() -> Self {
        RoutingPolicy {
            strategy: Strategy::Ordered,
            p2c_window: 3,
            cooldown_429_secs: vec![45, 300, 1800, 7200],
            cooldown_5xx_secs: 30,
            cooldown_network_secs: 20,
            cooldown_auth_secs: 60,
            quota_guard: QuotaGuard::default(),
            default_max_inflight: 0,
        }
    }
}

const DAY_SECS: u32 = 86_400;

impl RoutingPolicy {
    pub fn validate(&self) -> Result<(), Error> {
        if !(1..=64).contains(&self.p2c_window) {
            return Err(Error::invalid("p2c_window", "must be between 1 and 64"));
        }
        if self.cooldown_429_secs.is_empty() || self.cooldown_429_secs.len() > 16 {
            return Err(Error::invalid("cooldown_429_secs", "needs 1 to 16 steps"));
        }
        if self.cooldown_429_secs.windows(2).any(|w| w[0] > w[1]) {
            return Err(Error::invalid(
                "cooldown_429_secs",
                "steps must not decrease",
            ));
        }
        let all = self.cooldown_429_secs.iter().chain([
            &self.cooldown_5xx_secs,
            &self.cooldown_network_secs,
            &self.cooldown_auth_secs,
        ]);
        for c in all {
            if *c > DAY_SECS {
                return Err(Error::invalid(
                    "cooldown",
                    "cooldowns are at most 86400 seconds (one day)",
                ));
            }
        }
        let g = &self.quota_guard;
        for (field, v) in [
            (
                "quota_guard.min_five_hour_remaining_percent",
                g.min_five_hour_remaining_percent,
            ),
            (
                "quota_guard.min_weekly_remaining_percent",
                g.min_weekly_remaining_percent,
            ),
        ] {
            if !(0.0..=100.0).contains(&v) {
                return Err(Error::invalid(field, "must be between 0 and 100"));
            }
        }
        if self.default_max_inflight > 100_000 {
            return Err(Error::invalid("default_max_inflight", "at most 100000"));
        }
        Ok(())
    }

    /// Cooldown for the n-th consecutive 429 (1-based).
    pub fn cooldown_for_429(&self, offense: u32) -> u32 {
        let i = (offense.max(1) - 1) as usize;
        self.cooldown_429_secs
            .get(i)
            .or(self.cooldown_429_secs.last())
            .copied()
            .unwrap_or(45)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_ladder_repeats() {
        let p = RoutingPolicy::default();
        p.validate().unwrap();
        assert_eq!(p.cooldown_for_429(1), 45);
        assert_eq!(p.cooldown_for_429(4), 7200);
        assert_eq!(p.cooldown_for_429(9), 7200);
    }

    #[test]
    fn rejects_bad_values() {
        let p = RoutingPolicy {
            cooldown_429_secs: vec![300, 45],
            ..Default::default()
        };
        assert!(p.validate().is_err());
        let p = RoutingPolicy {
            p2c_window: 0,
            ..Default::default()
        };
        assert!(p.validate().is_err());
        let mut p = RoutingPolicy::default();
        p.quota_guard.min_weekly_remaining_percent = 120.0;
        assert!(p.validate().is_err());
    }
}
