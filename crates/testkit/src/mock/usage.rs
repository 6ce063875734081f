//! Usage windows per token: the `wham/usage` answer (seed spec §5) and the `x-codex-*` usage
//! headers on Codex answers.

use http::{HeaderName, HeaderValue, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::body::MockBody;
use super::util::set_header;

/// One quota window as the account sees it when set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MockWindow {
    pub used_percent: f64,
    pub window_minutes: u32,
    /// Seconds until the window resets, counted from when the usage is set.
    pub reset_after_secs: u64,
}

impl MockWindow {
    pub fn new(used_percent: f64, window_minutes: u32, reset_after_secs: u64) -> Self {
        MockWindow {
            used_percent,
            window_minutes,
            reset_after_secs,
        }
    }

    /// A 5-hour window resetting in 5 hours.
    pub fn five_hour(used_percent: f64) -> Self {
        MockWindow::new(used_percent, 300, 5 * 3600)
    }

    /// A 7-day window resetting in 7 days.
    pub fn weekly(used_percent: f64) -> Self {
        MockWindow::new(used_percent, 10_080, 7 * 86_400)
    }
}

/// A named extra limit (`additional_rate_limits[]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MockLimit {
    pub limit_name: String,
    pub metered_feature: String,
    #[serde(default)]
    pub primary: Option<MockWindow>,
    #[serde(default)]
    pub secondary: Option<MockWindow>,
}

/// What the usage endpoint and the usage headers report for one token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MockUsage {
    pub plan_type: String,
    #[serde(default)]
    pub primary: Option<MockWindow>,
    #[serde(default)]
    pub secondary: Option<MockWindow>,
    #[serde(default)]
    pub additional: Vec<MockLimit>,
}

impl Default for MockUsage {
    /// A Plus account with both windows empty.
    fn default() -> Self {
        MockUsage {
            plan_type: "plus".into(),
            primary: Some(MockWindow::five_hour(0.0)),
            secondary: Some(MockWindow::weekly(0.0)),
            additional: Vec::new(),
        }
    }
}

/// Usage as set, with the instant it was set (resets are relative to it).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredUsage {
    pub usage: MockUsage,
    pub set_at_secs: i64,
}

/// A window made absolute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct WindowNow {
    pub used_percent: f64,
    pub window_minutes: u32,
    pub reset_after_secs: i64,
    pub reset_at: i64,
}

impl WindowNow {
    fn of(w: &MockWindow, set_at: i64, now: i64) -> Self {
        let reset_at =
            set_at.saturating_add(i64::try_from(w.reset_after_secs).unwrap_or(i64::MAX / 2));
        WindowNow {
            used_percent: w.used_percent,
            window_minutes: w.window_minutes,
            reset_after_secs: reset_at.saturating_sub(now).max(0),
            reset_at,
        }
    }

    fn json(&self) -> Value {
        json!({
            "used_percent": self.used_percent,
            "limit_window_seconds": u64::from(self.window_minutes) * 60,
            "reset_after_seconds": self.reset_after_secs,
            "reset_at": self.reset_at,
        })
    }
}

/// The windows a token reports now; `exhausted_for` (a pending usage-limit fault) forces the
/// primary window to 100 % resetting in that many seconds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UsageNow {
    pub plan_type: String,
    pub primary: Option<WindowNow>,
    pub secondary: Option<WindowNow>,
    pub additional: Vec<(String, String, Option<WindowNow>, Option<WindowNow>)>,
}

impl UsageNow {
    pub(crate) fn compute(
        stored: Option<&StoredUsage>,
        exhausted_for: Option<u64>,
        now: i64,
    ) -> Self {
        let default;
        let (usage, set_at) = match stored {
            Some(s) => (&s.usage, s.set_at_secs),
            None => {
                default = MockUsage::default();
                (&default, now)
            }
        };
        let mut primary = usage
            .primary
            .as_ref()
            .map(|w| WindowNow::of(w, set_at, now));
        if let Some(secs) = exhausted_for {
            let after = i64::try_from(secs).unwrap_or(i64::MAX / 2);
            primary = Some(WindowNow {
                used_percent: 100.0,
                window_minutes: primary.map_or(300, |p| p.window_minutes),
                reset_after_secs: after,
                reset_at: now.saturating_add(after),
            });
        }
        UsageNow {
            plan_type: usage.plan_type.clone(),
            primary,
            secondary: usage
                .secondary
                .as_ref()
                .map(|w| WindowNow::of(w, set_at, now)),
            additional: usage
                .additional
                .iter()
                .map(|l| {
                    (
                        l.limit_name.clone(),
                        l.metered_feature.clone(),
                        l.primary.as_ref().map(|w| WindowNow::of(w, set_at, now)),
                        l.secondary.as_ref().map(|w| WindowNow::of(w, set_at, now)),
                    )
                })
                .collect(),
        }
    }

    fn rate_limit(primary: Option<&WindowNow>, secondary: Option<&WindowNow>) -> Value {
        let reached = primary
            .into_iter()
            .chain(secondary)
            .any(|w| w.used_percent >= 100.0);
        json!({
            "allowed": !reached,
            "limit_reached": reached,
            "primary_window": primary.map(WindowNow::json),
            "secondary_window": secondary.map(WindowNow::json),
        })
    }

    /// The `wham/usage` body.
    pub(crate) fn body(&self) -> Value {
        let additional: Vec<Value> = self
            .additional
            .iter()
            .map(|(name, feature, p, s)| {
                json!({
                    "limit_name": name,
                    "metered_feature": feature,
                    "rate_limit": UsageNow::rate_limit(p.as_ref(), s.as_ref()),
                })
            })
            .collect();
        json!({
            "plan_type": self.plan_type,
            "rate_limit": UsageNow::rate_limit(self.primary.as_ref(), self.secondary.as_ref()),
            "credits": {"has_credits": false, "unlimited": false, "balance": "0"},
            "additional_rate_limits": additional,
        })
    }

    /// Adds `x-codex-{primary,secondary}-{used-percent,window-minutes,reset-after-seconds,
    /// reset-at}`.
    pub(crate) fn add_headers(&self, r: &mut Response<MockBody>) {
        for (names, w) in [(&PRIMARY, &self.primary), (&SECONDARY, &self.secondary)] {
            let Some(w) = w else { continue };
            if let Ok(v) = HeaderValue::from_str(&format_percent(w.used_percent)) {
                set_header(r, names[0].clone(), v);
            }
            set_header(r, names[1].clone(), HeaderValue::from(w.window_minutes));
            set_header(r, names[2].clone(), HeaderValue::from(w.reset_after_secs));
            set_header(r, names[3].clone(), HeaderValue::from(w.reset_at));
        }
    }
}

fn format_percent(p: f64) -> String {
    if p.is_finite() {
        format!("{p}")
    } else {
        "0".into()
    }
}

const PRIMARY: [HeaderName; 4] = [
    HeaderName::from_static("x-codex-primary-used-percent"),
    HeaderName::from_static("x-codex-primary-window-minutes"),
    HeaderName::from_static("x-codex-primary-reset-after-seconds"),
    HeaderName::from_static("x-codex-primary-reset-at"),
];
const SECONDARY: [HeaderName; 4] = [
    HeaderName::from_static("x-codex-secondary-used-percent"),
    HeaderName::from_static("x-codex-secondary-window-minutes"),
    HeaderName::from_static("x-codex-secondary-reset-after-seconds"),
    HeaderName::from_static("x-codex-secondary-reset-at"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_count_down_from_when_set() {
        let stored = StoredUsage {
            usage: MockUsage {
                plan_type: "pro".into(),
                primary: Some(MockWindow::new(42.5, 300, 1000)),
                secondary: None,
                additional: vec![MockLimit {
                    limit_name: "Spark".into(),
                    metered_feature: "codex_spark".into(),
                    primary: Some(MockWindow::new(100.0, 300, 50)),
                    secondary: None,
                }],
            },
            set_at_secs: 10_000,
        };
        let now = UsageNow::compute(Some(&stored), None, 10_400);
        let p = now.primary.unwrap();
        assert_eq!((p.reset_after_secs, p.reset_at), (600, 11_000));
        let body = now.body();
        assert_eq!(body["plan_type"], "pro");
        assert_eq!(
            body["rate_limit"]["primary_window"]["limit_window_seconds"],
            18_000
        );
        assert_eq!(body["rate_limit"]["secondary_window"], Value::Null);
        assert_eq!(body["rate_limit"]["allowed"], true);
        let extra = &body["additional_rate_limits"][0];
        assert_eq!(extra["rate_limit"]["limit_reached"], true);
        assert_eq!(
            extra["rate_limit"]["primary_window"]["reset_after_seconds"],
            0
        );

        let exhausted = UsageNow::compute(Some(&stored), Some(60), 10_400);
        assert_eq!(exhausted.primary.unwrap().used_percent, 100.0);
        assert_eq!(exhausted.primary.unwrap().reset_at, 10_460);
        assert_eq!(exhausted.body()["rate_limit"]["limit_reached"], true);
    }
}
