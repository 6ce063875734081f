//! Latency histograms (HdrHistogram, nanoseconds, 3 significant digits: 0.1% resolution, so a
//! 0.5 ms difference is visible on a 5 ms value).

use std::time::Duration;

use hdrhistogram::Histogram;

/// One hour, in nanoseconds: the largest latency recorded exactly (longer ones saturate).
const MAX_NS: u64 = 3_600_000_000_000;

#[derive(Debug, Clone)]
pub struct Lat(Histogram<u64>);

impl Lat {
    pub fn new() -> anyhow::Result<Lat> {
        Histogram::new_with_bounds(1, MAX_NS, 3)
            .map(Lat)
            .map_err(|e| anyhow::anyhow!("cannot create a histogram: {e:?}"))
    }

    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(MAX_NS).max(1);
        self.0.saturating_record(ns);
    }

    pub fn merge(&mut self, other: &Lat) -> anyhow::Result<()> {
        self.0
            .add(&other.0)
            .map_err(|e| anyhow::anyhow!("cannot merge histograms: {e:?}"))
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The latency at quantile `q` (0..=1); zero when empty.
    pub fn q(&self, q: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.0.value_at_quantile(q))
    }

    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.0.max())
    }

    /// How many recorded values fall in `[lo, hi)`.
    pub fn count_between(&self, lo: Duration, hi: Duration) -> u64 {
        let lo = u64::try_from(lo.as_nanos()).unwrap_or(MAX_NS);
        let hi = u64::try_from(hi.as_nanos()).unwrap_or(MAX_NS);
        self.0
            .iter_recorded()
            .filter(|v| {
                let x = v.value_iterated_to();
                x >= lo && x < hi
            })
            .map(|v| v.count_at_value())
            .sum()
    }
}

/// `1.234 ms` / `456 µs` style.
pub fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 10_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else if us < 1_000_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// Signed difference `a - b`, formatted with its sign.
pub fn fmt_delta(a: Duration, b: Duration) -> String {
    if a >= b {
        format!("+{}", fmt_dur(a - b))
    } else {
        format!("-{}", fmt_dur(b - a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_merge_and_bands() {
        let mut a = Lat::new().unwrap();
        for ms in 1..=100u64 {
            a.record(Duration::from_millis(ms));
        }
        let mut b = Lat::new().unwrap();
        b.record(Duration::from_millis(40));
        a.merge(&b).unwrap();
        assert_eq!(a.count(), 101);
        let p50 = a.q(0.5).as_secs_f64();
        assert!((p50 - 0.050).abs() < 0.001, "{p50}");
        assert!(a.max() >= Duration::from_millis(100));
        // 35..45 ms: 35..=44 and the extra 40 = 11.
        assert_eq!(
            a.count_between(Duration::from_millis(35), Duration::from_millis(45)),
            11
        );
        assert_eq!(Lat::new().unwrap().q(0.99), Duration::ZERO);
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_dur(Duration::from_micros(456)), "456 µs");
        assert_eq!(fmt_dur(Duration::from_micros(1234)), "1.23 ms");
        assert_eq!(fmt_dur(Duration::from_millis(45)), "45.0 ms");
        assert_eq!(
            fmt_delta(Duration::from_micros(100), Duration::from_micros(300)),
            "-200 µs"
        );
        assert_eq!(
            fmt_delta(Duration::from_micros(300), Duration::from_micros(100)),
            "+200 µs"
        );
    }
}
