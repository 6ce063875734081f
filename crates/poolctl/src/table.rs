//! kubectl-style tables (UPPERCASE headers, columns aligned with spaces, no borders) and the
//! human formats of ages, durations and times they use.

use poolgate_proto::v1;

use crate::parse::civil_from_days;

/// A table of rows under UPPERCASE headers.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

const GAP: &str = "   ";

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_uppercase()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| clean(&c)).collect());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, each line ending in a newline.
    pub fn render(&self) -> String {
        let cols = self
            .headers
            .len()
            .max(self.rows.iter().map(Vec::len).max().unwrap_or(0));
        let mut widths = vec![0usize; cols];
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, cell) in line.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = line.get(i).map_or("", String::as_str);
                if i > 0 {
                    text.push_str(GAP);
                }
                text.push_str(cell);
                let pad = w - cell.chars().count();
                text.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Keeps a cell on one line and keeps terminal control sequences from the server out of the
/// user's terminal.
fn clean(s: &str) -> String {
    if s.is_empty() {
        return "-".into();
    }
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A whole number of seconds in the largest unit that keeps it readable: `45s`, `5m`, `3h`,
/// `2d`, `3y`.
pub fn human_secs(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s if s < 365 * 86_400 => format!("{}d", s / 86_400),
        s => format!("{}y", s / (365 * 86_400)),
    }
}

/// How long ago `then_ms` was; `-` when unknown.
pub fn age(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "-".into();
    }
    human_secs(u64::try_from(now_ms.saturating_sub(then_ms) / 1000).unwrap_or(0))
}

/// How long until `at_ms`: `-` when unknown, `now` when already past.
pub fn until(now_ms: i64, at_ms: i64) -> String {
    if at_ms <= 0 {
        return "-".into();
    }
    if at_ms <= now_ms {
        return "now".into();
    }
    // Round up, so a reset 30 s away does not read as 0s.
    let secs = (at_ms - now_ms).saturating_add(999) / 1000;
    human_secs(u64::try_from(secs).unwrap_or(0))
}

/// A key's expiry: `never`, `expired`, or the time left.
pub fn expiry(now_ms: i64, at_ms: i64) -> String {
    match at_ms {
        0 => "never".into(),
        t if t <= now_ms => "expired".into(),
        t => until(now_ms, t),
    }
}

/// Milliseconds as `350ms`, `1.2s` or, past a minute, `2m`.
pub fn millis(ms: u32) -> String {
    match ms {
        m if m < 1000 => format!("{m}ms"),
        m if m < 60_000 => format!("{:.1}s", f64::from(m) / 1000.0),
        m => human_secs(u64::from(m) / 1000),
    }
}

/// Seconds in the largest unit that divides them exactly, so the text parses back to the same
/// value: 45 → `45s`, 300 → `5m`, 90 → `90s`.
pub fn exact_secs(secs: u32) -> String {
    match secs {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Unix milliseconds as an RFC 3339 UTC time to the second.
pub fn timestamp(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let secs = ms.div_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

fn percent(w: Option<&v1::UsageWindow>) -> String {
    w.map_or("-".into(), |w| format!("{:.0}%", w.used_percent))
}

fn reset(now_ms: i64, w: Option<&v1::UsageWindow>) -> String {
    w.map_or("-".into(), |w| until(now_ms, w.resets_at_ms))
}

pub fn accounts(now_ms: i64, list: &[v1::Account]) -> Table {
    let mut t = Table::new(&[
        "ID", "NAME", "PROVIDER", "GROUP", "PRIORITY", "ENABLED", "STATUS", "REASON", "AGE",
    ]);
    for a in list {
        t.row(vec![
            a.id.clone(),
            a.name.clone(),
            a.provider.clone(),
            a.group.clone(),
            a.priority.to_string(),
            a.enabled.to_string(),
            a.status.clone(),
            a.status_reason.clone(),
            age(now_ms, a.created_at_ms),
        ]);
    }
    t
}

fn key_models(k: &v1::PlatformKey) -> String {
    let allowed = if k.allowed_models.is_empty() {
        "*".into()
    } else {
        k.allowed_models.join(",")
    };
    if k.model_override.is_empty() {
        allowed
    } else {
        format!("{allowed} (as {})", k.model_override)
    }
}

pub fn keys(now_ms: i64, list: &[v1::PlatformKey]) -> Table {
    let mut t = Table::new(&["ID", "NAME", "PREFIX", "STATUS", "MODELS", "EXPIRES", "AGE"]);
    for k in list {
        t.row(vec![
            k.id.clone(),
            k.name.clone(),
            k.prefix.clone(),
            k.status.clone(),
            key_models(k),
            expiry(now_ms, k.expires_at_ms),
            age(now_ms, k.created_at_ms),
        ]);
    }
    t
}

pub fn usage(now_ms: i64, list: &[v1::AccountUsage]) -> Table {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "5H%",
        "5H-RESET",
        "7D%",
        "7D-RESET",
        "AVAILABILITY",
        "STATUS",
        "REASON",
    ]);
    for u in list {
        let (five, week) = (u.five_hour.as_ref(), u.weekly.as_ref());
        t.row(vec![
            u.account_id.clone(),
            u.name.clone(),
            percent(five),
            reset(now_ms, five),
            percent(week),
            reset(now_ms, week),
            u.availability.clone(),
            u.status.clone(),
            u.status_reason.clone(),
        ]);
    }
    t
}

pub fn logs(list: &[v1::RequestLog]) -> Table {
    let mut t = Table::new(&[
        "TIME",
        "ID",
        "KEY",
        "ACCOUNT",
        "MODEL",
        "VIA",
        "STATUS",
        "ERROR",
        "TOKENS(in/out)",
        "TTFB",
        "DURATION",
        "ATTEMPTS",
    ]);
    for l in list {
        t.row(vec![
            timestamp(l.ts_ms),
            l.id.clone(),
            l.key_id.clone(),
            l.account_id.clone(),
            log_model(l),
            via(&l.translation),
            l.status.to_string(),
            l.error_class.clone(),
            format!("{}/{}", l.input_tokens, l.output_tokens),
            if l.ttfb_ms == 0 {
                "-".into()
            } else {
                millis(l.ttfb_ms)
            },
            millis(l.duration_ms),
            l.attempts.len().to_string(),
        ]);
    }
    t
}

/// The summary as one table: the total first, then a row per model and per account.
pub fn summary(s: &v1::LogSummary) -> Table {
    let mut t = Table::new(&[
        "BY",
        "KEY",
        "REQUESTS",
        "ERRORS",
        "INPUT",
        "CACHED",
        "OUTPUT",
        "REASONING",
    ]);
    let mut add = |by: &str, r: &v1::SummaryRow, key: &str| {
        t.row(vec![
            by.into(),
            key.into(),
            r.requests.to_string(),
            r.errors.to_string(),
            r.input_tokens.to_string(),
            r.cached_input_tokens.to_string(),
            r.output_tokens.to_string(),
            r.reasoning_tokens.to_string(),
        ]);
    };
    let empty = v1::SummaryRow::default();
    add("total", s.total.as_ref().unwrap_or(&empty), "*");
    for r in &s.by_model {
        add("model", r, &r.key);
    }
    for r in &s.by_account {
        add("account", r, &r.key);
    }
    t
}

pub fn policy(p: &v1::RoutingPolicy) -> Table {
    let mut t = Table::new(&["SETTING", "VALUE"]);
    let g = p.quota_guard.unwrap_or_default();
    let ladder: Vec<String> = p.cooldown_429_secs.iter().map(|s| exact_secs(*s)).collect();
    let rows: [(&str, String); 10] = [
        ("strategy", p.strategy.clone()),
        ("p2c-window", p.p2c_window.to_string()),
        ("cooldown-429", ladder.join(",")),
        ("cooldown-5xx", exact_secs(p.cooldown_5xx_secs)),
        ("cooldown-network", exact_secs(p.cooldown_network_secs)),
        ("cooldown-auth", exact_secs(p.cooldown_auth_secs)),
        (
            "quota-guard",
            if g.enabled { "on".into() } else { "off".into() },
        ),
        (
            "min-5h-remaining",
            format!("{}%", g.min_five_hour_remaining_percent),
        ),
        (
            "min-weekly-remaining",
            format!("{}%", g.min_weekly_remaining_percent),
        ),
        (
            "default-max-inflight",
            match p.default_max_inflight {
                0 => "unlimited".into(),
                n => n.to_string(),
            },
        ),
    ];
    for (k, v) in rows {
        t.row(vec![k.into(), v]);
    }
    // One row per alias, in the order they are tried, each written as `--model-alias` takes it.
    if p.model_aliases.is_empty() {
        t.row(vec!["model-aliases".into(), "none".into()]);
    }
    for a in &p.model_aliases {
        t.row(vec!["model-alias".into(), format!("{}={}", a.from, a.to)]);
    }
    t
}

/// How the upstream was spoken to, short: `-` when directly.
fn via(translation: &str) -> String {
    match translation {
        "" | "none" => "-".into(),
        "chat_to_responses" => "chat->resp".into(),
        "messages_to_responses" => "msg->resp".into(),
        other => other.into(),
    }
}

/// The client's model, and the upstream's when it differs.
fn log_model(l: &v1::RequestLog) -> String {
    if l.upstream_model.is_empty() || l.upstream_model == l.model {
        l.model.clone()
    } else {
        format!("{} (as {})", l.model, l.upstream_model)
    }
}

pub fn tokens(now_ms: i64, list: &[v1::AdminToken]) -> Table {
    let mut t = Table::new(&["ID", "NAME", "ROLE", "PREFIX", "AGE"]);
    for k in list {
        t.row(vec![
            k.id.clone(),
            k.name.clone(),
            k.role.clone(),
            k.prefix.clone(),
            age(now_ms, k.created_at_ms),
        ]);
    }
    t
}

pub fn gateways(now_ms: i64, list: &[v1::Gateway]) -> Table {
    let mut t = Table::new(&[
        "NODE",
        "VERSION",
        "LAG",
        "CONTROL",
        "CONNECTED",
        "LAST-REPORT",
    ]);
    for g in list {
        t.row(vec![
            g.node_id.clone(),
            g.applied_version.to_string(),
            g.lag.to_string(),
            g.control_node.clone(),
            age(now_ms, g.connected_at_ms),
            age(now_ms, g.last_report_at_ms),
        ]);
    }
    t
}

pub fn audit(list: &[v1::AuditEvent]) -> Table {
    let mut t = Table::new(&["TIME", "ACTOR", "ACTION", "KIND", "TARGET", "DETAIL"]);
    for e in list {
        t.row(vec![
            timestamp(e.ts_ms),
            e.actor.clone(),
            e.action.clone(),
            e.target_kind.clone(),
            e.target_id.clone(),
            e.detail.clone(),
        ]);
    }
    t
}

pub fn whoami(w: &v1::WhoAmIResponse) -> Table {
    let mut t = Table::new(&["NAME", "ROLE"]);
    t.row(vec![w.name.clone(), w.role.clone()]);
    t
}

/// One import result with the file it came from.
pub struct ImportRow<'a> {
    pub source: &'a str,
    pub result: &'a v1::ImportItemResult,
}

pub fn import(rows: &[ImportRow<'_>]) -> Table {
    let mut t = Table::new(&["SOURCE", "ITEM", "OUTCOME", "ID", "NAME", "ERROR"]);
    for r in rows {
        t.row(vec![
            r.source.into(),
            r.result.index.to_string(),
            r.result.outcome.clone(),
            r.result.account_id.clone(),
            r.result.name.clone(),
            r.result.error.clone(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn aligns_columns_without_trailing_spaces() {
        let mut t = Table::new(&["id", "name", "note"]);
        t.row(vec!["acc_1".into(), "a".into(), String::new()]);
        t.row(vec!["acc_22".into(), "longer name".into(), "x".into()]);
        assert_eq!(
            t.render(),
            "ID       NAME          NOTE\n\
             acc_1    a             -\n\
             acc_22   longer name   x\n"
        );
    }

    #[test]
    fn cells_stay_on_one_line() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["x\ny".into(), "\u{1b}[31mred".into()]);
        let out = t.render();
        assert_eq!(out.lines().count(), 2);
        assert!(!out.contains('\u{1b}'));
        // Width counts characters, not bytes.
        let mut t = Table::new(&["N", "X"]);
        t.row(vec!["é".into(), "1".into()]);
        t.row(vec!["ab".into(), "2".into()]);
        assert_eq!(t.render(), "N    X\né    1\nab   2\n");
    }

    #[test]
    fn human_times() {
        assert_eq!(human_secs(45), "45s");
        assert_eq!(human_secs(300), "5m");
        assert_eq!(human_secs(3 * 3600 + 59), "3h");
        assert_eq!(human_secs(2 * 86_400 + 5), "2d");
        assert_eq!(human_secs(800 * 86_400), "2y");
        assert_eq!(age(NOW, NOW - 300_000), "5m");
        assert_eq!(age(NOW, 0), "-");
        assert_eq!(age(NOW, NOW + 5000), "0s");
        assert_eq!(until(NOW, NOW + 30_500), "31s");
        assert_eq!(until(NOW, NOW - 1), "now");
        assert_eq!(until(NOW, 0), "-");
        assert_eq!(expiry(NOW, 0), "never");
        assert_eq!(expiry(NOW, NOW - 1), "expired");
        assert_eq!(expiry(NOW, NOW + 30 * 86_400_000), "30d");
        assert_eq!(millis(350), "350ms");
        assert_eq!(millis(1250), "1.2s");
        assert_eq!(millis(125_000), "2m");
        assert_eq!(exact_secs(45), "45s");
        assert_eq!(exact_secs(90), "90s");
        assert_eq!(exact_secs(7200), "2h");
        assert_eq!(exact_secs(86_400), "1d");
        assert_eq!(timestamp(1_709_209_815_250), "2024-02-29T12:30:15Z");
        assert_eq!(timestamp(0), "-");
    }

    #[test]
    fn exact_secs_round_trips_through_the_parser() {
        for s in [0, 1, 45, 59, 60, 90, 300, 3599, 3600, 5400, 86_400, 90_000] {
            assert_eq!(crate::parse::seconds(&exact_secs(s)).unwrap(), s);
        }
    }

    #[test]
    fn resource_tables() {
        let a = v1::Account {
            id: "acc_1".into(),
            name: "alice@example.com".into(),
            provider: "codex".into(),
            group: "default".into(),
            priority: 5,
            enabled: true,
            status: "unavailable".into(),
            status_reason: "auth_invalid".into(),
            created_at_ms: NOW - 2 * 86_400_000,
            ..Default::default()
        };
        let out = accounts(NOW, &[a]).render();
        let mut lines = out.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            header,
            [
                "ID", "NAME", "PROVIDER", "GROUP", "PRIORITY", "ENABLED", "STATUS", "REASON", "AGE"
            ]
        );
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            [
                "acc_1",
                "alice@example.com",
                "codex",
                "default",
                "5",
                "true",
                "unavailable",
                "auth_invalid",
                "2d"
            ]
        );

        let k = v1::PlatformKey {
            id: "key_1".into(),
            name: "ci".into(),
            prefix: "pgk_AbCd1234".into(),
            status: "active".into(),
            allowed_models: vec!["gpt-5*".into(), "o3".into()],
            model_override: "gpt-5".into(),
            created_at_ms: NOW - 3_600_000,
            ..Default::default()
        };
        let out = keys(NOW, &[k]).render();
        let row = out.lines().nth(1).unwrap();
        assert!(row.contains("gpt-5*,o3 (as gpt-5)"), "{row}");
        assert!(row.contains("never"), "{row}");
        assert!(row.ends_with("1h"), "{row}");

        let u = v1::AccountUsage {
            account_id: "acc_1".into(),
            name: "a".into(),
            availability: "available".into(),
            status: "active".into(),
            five_hour: Some(v1::UsageWindow {
                used_percent: 12.4,
                window_minutes: 300,
                resets_at_ms: NOW + 2 * 3_600_000,
            }),
            ..Default::default()
        };
        let out = usage(NOW, &[u]).render();
        let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            [
                "acc_1",
                "a",
                "12%",
                "2h",
                "-",
                "-",
                "available",
                "active",
                "-"
            ]
        );

        let l = v1::RequestLog {
            id: "req_1".into(),
            ts_ms: 1_709_209_815_250,
            key_id: "key_1".into(),
            account_id: "acc_1".into(),
            model: "gpt-5".into(),
            status: 200,
            input_tokens: 1200,
            output_tokens: 350,
            ttfb_ms: 420,
            duration_ms: 2300,
            attempts: vec![v1::Attempt::default(), v1::Attempt::default()],
            ..Default::default()
        };
        let out = logs(&[l]).render();
        let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(
            row,
            [
                "2024-02-29T12:30:15Z",
                "req_1",
                "key_1",
                "acc_1",
                "gpt-5",
                "-",
                "200",
                "-",
                "1200/350",
                "420ms",
                "2.3s",
                "2"
            ]
        );
        let translated = v1::RequestLog {
            model: "claude-opus-4-1".into(),
            translation: "messages_to_responses".into(),
            upstream_model: "gpt-5".into(),
            ..Default::default()
        };
        let chat = v1::RequestLog {
            model: "gpt-5".into(),
            translation: "chat_to_responses".into(),
            upstream_model: "gpt-5".into(),
            ..Default::default()
        };
        let out = logs(&[translated, chat]).render();
        // Cells are separated by at least the gap; the model cell holds single spaces.
        let cells: Vec<Vec<&str>> = out
            .lines()
            .map(|l| {
                l.split(GAP)
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .collect()
            })
            .collect();
        assert_eq!(cells[0][4..6], ["MODEL", "VIA"], "{out}");
        assert_eq!(
            cells[1][4..6],
            ["claude-opus-4-1 (as gpt-5)", "msg->resp"],
            "{out}"
        );
        // The same model upstream is not repeated.
        assert_eq!(cells[2][4..6], ["gpt-5", "chat->resp"], "{out}");
    }

    #[test]
    fn gateways_table() {
        let list = vec![
            v1::Gateway {
                node_id: "gw-0".into(),
                applied_version: 40,
                lag: 2,
                connected_at_ms: NOW - 3 * 3_600_000,
                last_report_at_ms: NOW - 5_000,
                control_node: "control-1".into(),
            },
            v1::Gateway {
                node_id: "gw-1".into(),
                applied_version: 42,
                control_node: "control-0".into(),
                connected_at_ms: NOW - 60_000,
                ..Default::default()
            },
        ];
        let out = gateways(NOW, &list).render();
        let rows: Vec<Vec<&str>> = out
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            rows,
            vec![
                vec![
                    "NODE",
                    "VERSION",
                    "LAG",
                    "CONTROL",
                    "CONNECTED",
                    "LAST-REPORT"
                ],
                vec!["gw-0", "40", "2", "control-1", "3h", "5s"],
                vec!["gw-1", "42", "0", "control-0", "1m", "-"],
            ]
        );
    }

    #[test]
    fn policy_table_uses_parseable_values() {
        let p = v1::RoutingPolicy {
            strategy: "ordered".into(),
            p2c_window: 3,
            cooldown_429_secs: vec![45, 300, 1800, 7200],
            cooldown_5xx_secs: 30,
            cooldown_network_secs: 20,
            cooldown_auth_secs: 60,
            quota_guard: Some(v1::QuotaGuard {
                enabled: true,
                min_five_hour_remaining_percent: 5.0,
                min_weekly_remaining_percent: 10.0,
            }),
            default_max_inflight: 0,
            model_aliases: vec![],
        };
        let out = policy(&p).render();
        assert!(out.contains("model-aliases          none\n"), "{out}");
        assert!(
            out.contains("cooldown-429           45s,5m,30m,2h\n"),
            "{out}"
        );
        assert!(out.contains("cooldown-auth          1m\n"), "{out}");
        assert!(out.contains("quota-guard            on\n"), "{out}");
        assert!(out.contains("min-5h-remaining       5%\n"), "{out}");
        assert!(out.contains("default-max-inflight   unlimited\n"), "{out}");
        let aliased = v1::RoutingPolicy {
            model_aliases: vec![
                v1::ModelAlias {
                    from: "claude-haiku-*".into(),
                    to: "gpt-5-mini".into(),
                },
                v1::ModelAlias {
                    from: "claude-*".into(),
                    to: "gpt-5".into(),
                },
            ],
            ..p
        };
        let out = policy(&aliased).render();
        assert!(
            out.ends_with(
                "model-alias            claude-haiku-*=gpt-5-mini\n\
                 model-alias            claude-*=gpt-5\n"
            ),
            "{out}"
        );
        // Each value is what `--model-alias` accepts back.
        for line in out.lines().filter(|l| l.starts_with("model-alias ")) {
            let value = line.split_whitespace().nth(1).unwrap();
            assert!(crate::parse::model_alias(value).is_ok(), "{value}");
        }
    }
}
