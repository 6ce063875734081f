//! Usage windows (5-hour and 7-day quota) and the availability derived from them.

use serde::{Deserialize, Serialize};

use crate::UnixMillis;
use crate::account::string_enum;

/// Windows longer than a day and a bit are weekly; deciding by length is more robust than by
/// position, since Free plans report a weekly window as their only (primary) one.
pub const WEEKLY_THRESHOLD_MINUTES: u32 = 24 * 60 + 3;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UsageWindow {
    pub used_percent: f64,
    pub window_minutes: u32,
    pub resets_at_ms: Option<UnixMillis>,
}

impl UsageWindow {
    pub fn is_weekly(&self) -> bool {
        self.window_minutes > WEEKLY_THRESHOLD_MINUTES
    }
    pub fn exhausted(&self) -> bool {
        self.used_percent >= 100.0
    }
    pub fn remaining_percent(&self) -> f64 {
        (100.0 - self.used_percent).clamp(0.0, 100.0)
    }
}

/// An additional named limit (e.g. code review), reported beside the main windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtraLimit {
    pub name: String,
    pub primary: Option<UsageWindow>,
    pub secondary: Option<UsageWindow>,
    pub limit_reached: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageSnapshot {
    pub primary: Option<UsageWindow>,
    pub secondary: Option<UsageWindow>,
    pub extra: Vec<ExtraLimit>,
    pub captured_at_ms: UnixMillis,
}

string_enum!(
    /// Whether an account's quota lets it take traffic.
    Availability, "availability" {
        Available => "available",
        PrimaryWindowAvailableOnly => "primary_window_available_only",
        Unavailable => "unavailable",
        Unknown => "unknown",
    }
);

impl Availability {
    /// Unknown (no usage seen yet) is routable: a new account must be able to take traffic.
    pub fn is_routable(self) -> bool {
        self != Availability::Unavailable
    }
}

impl UsageSnapshot {
    pub fn availability(&self) -> Availability {
        let windows = self.primary.iter().chain(self.secondary.iter());
        if windows.clone().any(UsageWindow::exhausted) {
            return Availability::Unavailable;
        }
        match (&self.primary, &self.secondary) {
            (None, _) => Availability::Unknown,
            (Some(_), None) => Availability::PrimaryWindowAvailableOnly,
            (Some(_), Some(_)) => Availability::Available,
        }
    }

    /// The short (5-hour) window, by length.
    pub fn five_hour(&self) -> Option<&UsageWindow> {
        self.primary
            .iter()
            .chain(self.secondary.iter())
            .find(|w| !w.is_weekly())
    }

    /// The weekly window, by length.
    pub fn weekly(&self) -> Option<&UsageWindow> {
        self.primary
            .iter()
            .chain(self.secondary.iter())
            .find(|w| w.is_weekly())
    }

    /// The earliest reset among exhausted windows: when the account comes back.
    pub fn exhausted_until(&self) -> Option<UnixMillis> {
        self.primary
            .iter()
            .chain(self.secondary.iter())
            .filter(|w| w.exhausted())
            .filter_map(|w| w.resets_at_ms)
            .max()
    }
}

pub fn availability_of(snapshot: Option<&UsageSnapshot>) -> Availability {
    snapshot.map_or(Availability::Unknown, UsageSnapshot::availability)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(p: f64, m: u32) -> Option<UsageWindow> {
        Some(UsageWindow {
            used_percent: p,
            window_minutes: m,
            resets_at_ms: Some(m as i64),
        })
    }
    fn snap(primary: Option<UsageWindow>, secondary: Option<UsageWindow>) -> UsageSnapshot {
        UsageSnapshot {
            primary,
            secondary,
            extra: vec![],
            captured_at_ms: 0,
        }
    }

    #[test]
    fn availability_rules() {
        assert_eq!(
            snap(w(10.0, 300), w(20.0, 10080)).availability(),
            Availability::Available
        );
        assert_eq!(
            snap(w(10.0, 10080), None).availability(),
            Availability::PrimaryWindowAvailableOnly
        );
        assert_eq!(
            snap(w(100.0, 300), w(2.0, 10080)).availability(),
            Availability::Unavailable
        );
        assert_eq!(
            snap(w(1.0, 300), w(100.5, 10080)).availability(),
            Availability::Unavailable
        );
        assert_eq!(
            snap(None, w(5.0, 10080)).availability(),
            Availability::Unknown
        );
        assert_eq!(availability_of(None), Availability::Unknown);
        assert!(Availability::Unknown.is_routable());
        assert!(!Availability::Unavailable.is_routable());
    }

    #[test]
    fn windows_by_length() {
        let s = snap(w(10.0, 10080), None);
        assert!(s.five_hour().is_none());
        assert_eq!(s.weekly().unwrap().used_percent, 10.0);
        let s = snap(w(100.0, 300), w(100.0, 10080));
        assert_eq!(s.five_hour().unwrap().window_minutes, 300);
        assert_eq!(s.exhausted_until(), Some(10080));
    }
}
