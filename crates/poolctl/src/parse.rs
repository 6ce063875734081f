//! Parsing of human input: durations (`30s`, `1h30m`, `30d`), cooldown ladders
//! (`45s,5m,30m,2h`), percentages and time bounds (`1h` ago or RFC 3339).

use std::time::Duration;

/// Longest accepted duration: about 100 years, far beyond any sensible flag value, and small
/// enough that adding it to "now" in milliseconds never overflows.
const MAX_DURATION_SECS: u64 = 100 * 366 * 86_400;

/// Parses `500ms`, `30s`, `5m`, `2h`, `30d`, `1w`, combinations such as `1h30m`, or a bare
/// number of seconds.
pub fn duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty duration (expected e.g. 30s, 5m, 2h, 30d)".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = s.parse().map_err(|_| format!("{input:?} is too large"))?;
        return checked(Duration::from_secs(secs), input);
    }
    let mut total_ms: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "{input:?} is not a duration (expected e.g. 30s, 5m, 2h, 30d or 1h30m)"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{input:?} is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" | "sec" | "secs" => 1_000,
            "m" | "min" | "mins" => 60_000,
            "h" | "hr" | "hrs" => 3_600_000,
            "d" | "day" | "days" => 86_400_000,
            "w" | "week" | "weeks" => 604_800_000,
            "" => {
                return Err(format!(
                    "{input:?}: a number inside a duration needs a unit"
                ));
            }
            other => {
                return Err(format!(
                    "{input:?}: unknown unit {other:?} (use ms, s, m, h, d or w)"
                ));
            }
        };
        let part = n
            .checked_mul(unit_ms)
            .ok_or_else(|| format!("{input:?} is too large"))?;
        total_ms = total_ms
            .checked_add(part)
            .ok_or_else(|| format!("{input:?} is too large"))?;
    }
    checked(Duration::from_millis(total_ms), input)
}

fn checked(d: Duration, input: &str) -> Result<Duration, String> {
    if d.as_secs() > MAX_DURATION_SECS {
        return Err(format!("{input:?} is too large"));
    }
    Ok(d)
}

/// A duration in whole seconds that fits the API's `uint32` fields.
pub fn seconds(input: &str) -> Result<u32, String> {
    let d = duration(input)?;
    if d.subsec_nanos() != 0 {
        return Err(format!("{input:?}: cooldowns are whole seconds"));
    }
    u32::try_from(d.as_secs()).map_err(|_| format!("{input:?} is too large"))
}

/// A comma-separated cooldown ladder such as `45s,5m,30m,2h`.
pub fn cooldown_list(input: &str) -> Result<Vec<u32>, String> {
    let steps: Vec<u32> = input.split(',').map(seconds).collect::<Result<_, _>>()?;
    if steps.len() > 16 {
        return Err("a cooldown ladder has at most 16 steps".into());
    }
    Ok(steps)
}

/// A percentage between 0 and 100, with or without `%`.
pub fn percent(input: &str) -> Result<f64, String> {
    let s = input.trim();
    let n = s.strip_suffix('%').unwrap_or(s).trim();
    let v: f64 = n
        .parse()
        .map_err(|_| format!("{input:?} is not a percentage"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("{input:?} is not between 0 and 100"));
    }
    Ok(v)
}

/// `on|off` (also `true|false`, `yes|no`, `1|0`).
pub fn on_off(input: &str) -> Result<bool, String> {
    match input.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" | "enabled" => Ok(true),
        "off" | "false" | "no" | "0" | "disabled" => Ok(false),
        _ => Err(format!("{input:?} is not on or off")),
    }
}

/// A model alias `FROM=TO` (`claude-opus-*=gpt-5`): split at the first `=`, both sides
/// non-empty. The control plane checks the rest (pattern syntax, lengths).
pub fn model_alias(input: &str) -> Result<(String, String), String> {
    let expected = || format!("{input:?}: expected FROM=TO (e.g. 'claude-opus-*=gpt-5')");
    let (from, to) = input.split_once('=').ok_or_else(expected)?;
    let (from, to) = (from.trim(), to.trim());
    if from.is_empty() || to.is_empty() {
        return Err(expected());
    }
    Ok((from.to_string(), to.to_string()))
}

/// A time bound for log queries: a duration means that long before `now_ms`, anything else
/// must be an RFC 3339 timestamp. Returns Unix milliseconds.
pub fn time_bound(input: &str, now_ms: i64) -> Result<i64, String> {
    let s = input.trim();
    if s.eq_ignore_ascii_case("now") {
        return Ok(now_ms);
    }
    if s.starts_with(|c: char| c.is_ascii_digit()) && !s.contains('-') {
        let d = duration(s)?;
        let ms = i64::try_from(d.as_millis()).map_err(|_| format!("{input:?} is too large"))?;
        return Ok(now_ms.saturating_sub(ms));
    }
    rfc3339(s).map_err(|e| {
        format!("{input:?} is neither a duration (e.g. 1h, 30m, 7d) nor an RFC 3339 time ({e})")
    })
}

/// Parses a `--since`/`--until` pair and checks that it is a non-empty range.
pub fn time_range(
    since: Option<&str>,
    until: Option<&str>,
    now_ms: i64,
) -> Result<(i64, i64), String> {
    let s = since
        .map(|v| time_bound(v, now_ms).map_err(|e| format!("--since: {e}")))
        .transpose()?;
    let u = until
        .map(|v| time_bound(v, now_ms).map_err(|e| format!("--until: {e}")))
        .transpose()?;
    if let (Some(s), Some(u)) = (s, u)
        && s >= u
    {
        return Err("--since must be before --until".into());
    }
    // 0 = unbounded in the API; a bound at or before the epoch cannot match anything newer.
    Ok((s.map_or(0, |v| v.max(1)), u.map_or(0, |v| v.max(1))))
}

/// Parses `YYYY-MM-DD`, `YYYY-MM-DDTHH:MM[:SS[.frac]]` with `Z` or `±HH:MM` (a missing
/// offset means UTC). Returns Unix milliseconds.
pub fn rfc3339(input: &str) -> Result<i64, String> {
    let s = input.trim();
    if !s.is_ascii() {
        return Err("unexpected characters".into());
    }
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Result<i64, String> {
        let part = b.get(from..from + len).ok_or("too short")?;
        if !part.iter().all(u8::is_ascii_digit) {
            return Err(format!("expected digits at position {}", from + 1));
        }
        part.iter()
            .try_fold(0i64, |acc, d| Ok(acc * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, allowed: &[u8]| -> Result<(), String> {
        match b.get(at) {
            Some(c) if allowed.contains(c) => Ok(()),
            _ => Err(format!(
                "expected {:?} at position {}",
                allowed[0] as char,
                at + 1
            )),
        }
    };
    let year = num(0, 4)?;
    sep(4, b"-")?;
    let month = num(5, 2)?;
    sep(7, b"-")?;
    let day = num(8, 2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err("no such date".into());
    }
    let (mut hour, mut minute, mut second, mut millis) = (0, 0, 0, 0);
    let mut pos = 10;
    if pos < b.len() {
        sep(pos, b"Tt ")?;
        hour = num(11, 2)?;
        sep(13, b":")?;
        minute = num(14, 2)?;
        pos = 16;
        if b.get(pos) == Some(&b':') {
            second = num(17, 2)?;
            pos = 19;
            if b.get(pos) == Some(&b'.') {
                pos += 1;
                let digits = b[pos..].iter().take_while(|c| c.is_ascii_digit()).count();
                if digits == 0 || digits > 9 {
                    return Err("bad fractional seconds".into());
                }
                let frac = num(pos, digits.min(3))?;
                millis = frac * 10i64.pow(3 - digits.min(3) as u32);
                pos += digits;
            }
        }
        if hour > 23 || minute > 59 || second > 60 {
            return Err("no such time of day".into());
        }
    }
    let offset_secs = match b.get(pos) {
        None => 0,
        Some(b'Z' | b'z') if pos + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if pos + 6 == b.len() => {
            let h = num(pos + 1, 2)?;
            sep(pos + 3, b":")?;
            let m = num(pos + 4, 2)?;
            if h > 23 || m > 59 {
                return Err("bad UTC offset".into());
            }
            let o = h * 3600 + m * 60;
            if *sign == b'-' { -o } else { o }
        }
        Some(_) => return Err(format!("unexpected text at position {}", pos + 1)),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_secs;
    Ok(secs * 1000 + millis)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01: (year, month, day).
pub(crate) fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_aliases() {
        assert_eq!(
            model_alias("claude-opus-*=gpt-5").unwrap(),
            ("claude-opus-*".to_string(), "gpt-5".to_string())
        );
        assert_eq!(
            model_alias(" claude-* = gpt-5-mini ").unwrap(),
            ("claude-*".to_string(), "gpt-5-mini".to_string())
        );
        // Only the first `=` splits; the server refuses what is not a model name.
        assert_eq!(model_alias("a=b=c").unwrap().1, "b=c");
        for bad in ["claude-*", "=gpt-5", "claude-*=", "=", ""] {
            let e = model_alias(bad).unwrap_err();
            assert!(e.contains("expected FROM=TO"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(duration("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(duration("1w").unwrap(), Duration::from_secs(604_800));
        assert_eq!(duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(duration(" 45 ").unwrap(), Duration::from_secs(45));
        assert_eq!(duration("0").unwrap(), Duration::ZERO);
        for bad in [
            "",
            "s",
            "5x",
            "-5s",
            "1.5h",
            "5 m",
            "h5",
            "99999999999999999999s",
        ] {
            assert!(duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(duration("999999999w").is_err());
        assert!(duration("5mm").unwrap_err().contains("unknown unit"));
        assert!(duration("5m3").unwrap_err().contains("needs a unit"));
    }

    #[test]
    fn cooldowns() {
        assert_eq!(
            cooldown_list("45s,5m,30m,2h").unwrap(),
            vec![45, 300, 1800, 7200]
        );
        assert_eq!(cooldown_list("30").unwrap(), vec![30]);
        assert_eq!(cooldown_list(" 10s , 1m ").unwrap(), vec![10, 60]);
        assert!(cooldown_list("").is_err());
        assert!(cooldown_list("45s,,5m").is_err());
        assert!(
            cooldown_list("1500ms")
                .unwrap_err()
                .contains("whole seconds")
        );
        assert!(cooldown_list(&vec!["1s"; 17].join(",")).is_err());
        assert_eq!(seconds("20s").unwrap(), 20);
        assert!(seconds("200000w").is_err());
    }

    #[test]
    fn percents_and_switches() {
        assert_eq!(percent("5").unwrap(), 5.0);
        assert_eq!(percent("7.5%").unwrap(), 7.5);
        assert!(percent("101").is_err());
        assert!(percent("-1").is_err());
        assert!(percent("lots").is_err());
        assert!(on_off("ON").unwrap());
        assert!(!on_off("off").unwrap());
        assert!(on_off("maybe").is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(rfc3339("2024-02-29T12:30:15Z").unwrap(), 1_709_209_815_000);
        assert_eq!(
            rfc3339("2024-02-29T12:30:15.25Z").unwrap(),
            1_709_209_815_250
        );
        assert_eq!(
            rfc3339("2024-02-29T14:30:15+02:00").unwrap(),
            1_709_209_815_000
        );
        assert_eq!(
            rfc3339("2024-02-29t07:30:15-05:00").unwrap(),
            1_709_209_815_000
        );
        assert_eq!(rfc3339("2024-02-29 12:30").unwrap(), 1_709_209_800_000);
        assert_eq!(rfc3339("2024-03-01").unwrap(), 1_709_251_200_000);
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-01-01T25:00Z",
            "2024-01-01T10:00:00+2",
            "2024-01-01T10:00:00Zx",
            "yesterday",
            "2024-01-01T10:00:00.Z",
            "２０２４-01-01",
            "2024",
        ] {
            assert!(rfc3339(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn civil_round_trip() {
        for days in [-800_000, -1, 0, 1, 59, 365, 11_016, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn time_ranges() {
        let now = 1_700_000_000_000;
        assert_eq!(time_bound("1h", now).unwrap(), now - 3_600_000);
        assert_eq!(time_bound("now", now).unwrap(), now);
        assert_eq!(time_bound("2023-11-14T22:13:20Z", now).unwrap(), now);
        assert!(
            time_bound("soon", now)
                .unwrap_err()
                .contains("neither a duration")
        );
        assert_eq!(
            time_range(Some("2h"), Some("1h"), now).unwrap(),
            (now - 7_200_000, now - 3_600_000)
        );
        assert_eq!(time_range(None, None, now).unwrap(), (0, 0));
        assert_eq!(
            time_range(Some("1d"), None, now).unwrap(),
            (now - 86_400_000, 0)
        );
        assert!(
            time_range(Some("1h"), Some("2h"), now)
                .unwrap_err()
                .contains("before --until")
        );
        assert!(
            time_range(Some("x"), None, now)
                .unwrap_err()
                .starts_with("--since")
        );
    }
}
