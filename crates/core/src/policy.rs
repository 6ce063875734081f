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

/// Which model a Codex account is asked for instead of the client's: a request for a model
/// matching `from` is served as `to` by Codex accounts, on every route (chiefly Claude names
/// arriving on Anthropic Messages, e.g. `claude-opus-*` → `gpt-5`, `claude-haiku-*` →
/// `gpt-5-mini`). Other providers get the client's model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelAlias {
    /// A model-name pattern ([`crate::glob`]: `*` matches any run, case-insensitive).
    pub from: String,
    /// A concrete model name (no `*`).
    pub to: String,
}

/// Most aliases a policy holds; a handful is typical, and each request scans them in order.
pub const MAX_MODEL_ALIASES: usize = 64;
const MAX_MODEL_NAME: usize = 128;

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
    /// Ordered, first match wins. Empty: the gateway falls back to its configured default
    /// model for Claude names. Defaulted so policies stored before the field existed load.
    #[serde(default)]
    pub model_aliases: Vec<ModelAlias>,
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
            model_aliases: Vec::new(),
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
        self.validate_aliases()
    }

    fn validate_aliases(&self) -> Result<(), Error> {
        const FIELD: &str = "model_aliases";
        if self.model_aliases.len() > MAX_MODEL_ALIASES {
            return Err(Error::invalid(
                FIELD,
                format!("at most {MAX_MODEL_ALIASES} aliases"),
            ));
        }
        // `Error` names a static field, so the entry's index and part lead the reason.
        let bad = |i: usize, part: &str, why: String| {
            Error::invalid(FIELD, format!("[{i}].{part}: {why}"))
        };
        for (i, a) in self.model_aliases.iter().enumerate() {
            crate::glob::validate_patterns(FIELD, std::slice::from_ref(&a.from)).map_err(|e| {
                match e {
                    Error::Invalid { reason, .. } => bad(i, "from", reason),
                    other => other,
                }
            })?;
            if a.to.is_empty() || a.to.len() > MAX_MODEL_NAME {
                return Err(bad(
                    i,
                    "to",
                    format!("model {:?} must be 1 to {MAX_MODEL_NAME} characters", a.to),
                ));
            }
            if a.to.contains('*') {
                return Err(bad(
                    i,
                    "to",
                    format!("{:?} must be a model name, not a pattern", a.to),
                ));
            }
            if a.to.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(bad(
                    i,
                    "to",
                    format!("{:?} contains whitespace or control characters", a.to),
                ));
            }
        }
        Ok(())
    }

    /// The model a Codex account is asked for instead of `model`: the first alias whose
    /// `from` matches (case-insensitively), or `None` when none does.
    pub fn resolve_alias(&self, model: &str) -> Option<&str> {
        self.model_aliases
            .iter()
            .find(|a| crate::glob::matches(&a.from, model))
            .map(|a| a.to.as_str())
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

    fn alias(from: &str, to: &str) -> ModelAlias {
        ModelAlias {
            from: from.into(),
            to: to.into(),
        }
    }

    #[test]
    fn aliases_resolve_first_match_case_insensitively() {
        let p = RoutingPolicy {
            model_aliases: vec![
                alias("claude-3-5-haiku*", "gpt-5-nano"),
                alias("claude-*haiku*", "gpt-5-mini"),
                alias("claude-*", "gpt-5"),
            ],
            ..Default::default()
        };
        p.validate().unwrap();
        assert_eq!(
            p.resolve_alias("claude-3-5-haiku-latest"),
            Some("gpt-5-nano")
        );
        assert_eq!(p.resolve_alias("claude-haiku-4-5"), Some("gpt-5-mini"));
        assert_eq!(p.resolve_alias("Claude-Opus-4-1"), Some("gpt-5"));
        assert_eq!(p.resolve_alias("gpt-5-codex"), None);
        // Order decides: the broad pattern first shadows the narrower ones.
        let mut reversed = p.clone();
        reversed.model_aliases.reverse();
        assert_eq!(
            reversed.resolve_alias("claude-3-5-haiku-latest"),
            Some("gpt-5")
        );
        assert_eq!(
            RoutingPolicy::default().resolve_alias("claude-opus-4"),
            None
        );
    }

    #[test]
    fn bad_aliases_name_the_entry() {
        let cases = [
            (alias("", "gpt-5"), "[1].from"),
            (alias("claude *", "gpt-5"), "[1].from"),
            (alias(&"c".repeat(129), "gpt-5"), "[1].from"),
            (alias("claude-*", ""), "[1].to"),
            (alias("claude-*", "gpt-*"), "[1].to"),
            (alias("claude-*", "gpt 5"), "[1].to"),
            (alias("claude-*", "gpt\u{7}5"), "[1].to"),
            (alias("claude-*", &"g".repeat(129)), "[1].to"),
        ];
        for (bad, at) in cases {
            let p = RoutingPolicy {
                model_aliases: vec![alias("claude-opus-*", "gpt-5"), bad.clone()],
                ..Default::default()
            };
            let e = p.validate().unwrap_err();
            let Error::Invalid { field, reason } = &e else {
                panic!("{e:?}")
            };
            assert_eq!(*field, "model_aliases");
            assert!(reason.starts_with(at), "{bad:?}: {e}");
        }
        let many = RoutingPolicy {
            model_aliases: vec![alias("a*", "b"); MAX_MODEL_ALIASES + 1],
            ..Default::default()
        };
        assert!(
            many.validate()
                .unwrap_err()
                .to_string()
                .contains("at most 64")
        );
        let full = RoutingPolicy {
            model_aliases: vec![alias("a*", "b"); MAX_MODEL_ALIASES],
            ..Default::default()
        };
        full.validate().unwrap();
    }

    #[test]
    fn policies_stored_without_aliases_still_load() {
        let old = r#"{"strategy":"balanced","p2c_window":3,"cooldown_429_secs":[45],
            "cooldown_5xx_secs":30,"cooldown_network_secs":20,"cooldown_auth_secs":60,
            "quota_guard":{"enabled":true,"min_five_hour_remaining_percent":5.0,
            "min_weekly_remaining_percent":10.0},"default_max_inflight":0}"#;
        let p: RoutingPolicy = serde_json::from_str(old).unwrap();
        assert!(p.model_aliases.is_empty());
        assert_eq!(p.strategy, Strategy::Balanced);
        let with = RoutingPolicy {
            model_aliases: vec![alias("claude-*", "gpt-5")],
            ..Default::default()
        };
        let json = serde_json::to_string(&with).unwrap();
        assert_eq!(serde_json::from_str::<RoutingPolicy>(&json).unwrap(), with);
        // A typo inside an alias is refused rather than silently dropped.
        let typo = json.replace("\"to\"", "\"too\"");
        assert!(serde_json::from_str::<RoutingPolicy>(&typo).is_err());
    }
}
