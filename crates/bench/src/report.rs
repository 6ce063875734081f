//! The suite's report: one table of figures, ratios and verdicts against the targets, the
//! notes on anything that failed, and optionally the figures as JSON.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::admin::SnapshotWeights;
use crate::client::Outcome;
use crate::closedloop::ClosedLoopResult;
use crate::hist::{Lat, fmt_delta, fmt_dur};
use crate::openloop::OpenLoopResult;
use crate::rss::{CpuShare, Mem, mb};
use crate::streams::{STALL, StreamResult};
use crate::suite::{DEDICATED, DIRECT, Large, NGINX, POOLGATE, SuiteArgs};
use crate::table::Table;

const TARGET_ADDED_P99: Duration = Duration::from_micros(500);
const TARGET_THROUGHPUT_RATIO: f64 = 0.80;
const TARGET_RSS_MB: f64 = 100.0;
const TARGET_DELTA_BYTES: usize = 2048;
/// The band a Nagle / delayed-ACK stall lands in.
const NAGLE_LO: Duration = Duration::from_millis(35);
const NAGLE_HI: Duration = Duration::from_millis(45);

/// Everything the suite measured. Per-target vectors are indexed direct, nginx, poolgate.
pub struct Results {
    pub started: Instant,
    /// CPU shares over 1 s of idle servers before the runs, during the fixed-rate runs and
    /// over the whole suite.
    pub cpu_before: Option<CpuShare>,
    pub cpu_latency: Option<CpuShare>,
    pub cpu_run: Option<CpuShare>,
    pub idle_small: Mem,
    pub idle_small_dedicated: Option<Mem>,
    pub lat: Vec<OpenLoopResult>,
    pub tp: Vec<ClosedLoopResult>,
    pub tp_mem: Option<Mem>,
    pub ttft_codex: Vec<StreamResult>,
    pub ttft_chat: Vec<StreamResult>,
    pub many: Vec<StreamResult>,
    pub many_mem: Option<Mem>,
    pub after_small: Mem,
    pub large: Option<Large>,
    pub weights: Option<Result<SnapshotWeights, String>>,
    pub notes: Vec<String>,
}

fn pass(ok: bool) -> String {
    if ok { "PASS" } else { "FAIL" }.to_string()
}

fn lat_json(l: &Lat) -> Value {
    json!({"count": l.count(), "p50_us": l.q(0.5).as_secs_f64() * 1e6,
           "p90_us": l.q(0.9).as_secs_f64() * 1e6, "p99_us": l.q(0.99).as_secs_f64() * 1e6,
           "p999_us": l.q(0.999).as_secs_f64() * 1e6, "max_us": l.max().as_secs_f64() * 1e6})
}

fn failures_note(label: &str, o: &Outcome) -> Option<String> {
    (o.failures() > 0).then(|| {
        format!(
            "{label}: {} failed ({} non-2xx, {} errors); first: {}",
            o.failures(),
            o.non_2xx,
            o.errors,
            o.first_failure.as_deref().unwrap_or("?")
        )
    })
}

pub fn render(a: &SuiteArgs, r: Results) -> anyhow::Result<()> {
    let Results {
        started,
        cpu_before,
        cpu_latency,
        cpu_run,
        idle_small,
        idle_small_dedicated,
        lat,
        tp,
        tp_mem,
        ttft_codex,
        ttft_chat,
        many,
        many_mem,
        after_small,
        large,
        weights,
        mut notes,
    } = r;
    let mut t = Table::new(&[
        "metric",
        "direct",
        "nginx",
        "poolgate",
        "poolgate vs ref",
        "target",
        "verdict",
    ]);
    let [ld, ln, lp] = match lat.as_slice() {
        [d, n, p, ..] => [d, n, p],
        _ => bail!("latency runs missing"),
    };
    t.section(&format!(
        "fixed rate {:.0} req/s, {} conns, {:.0} s per target in {} rounds; latency from the scheduled send",
        a.rate, a.latency_connections, a.latency_secs, a.rounds
    ));
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        t.row(vec![
            format!("latency {name}"),
            fmt_dur(ld.latency.q(q)),
            fmt_dur(ln.latency.q(q)),
            fmt_dur(lp.latency.q(q)),
        ]);
    }
    let added = |r: &OpenLoopResult, q: f64| fmt_delta(r.latency.q(q), ld.latency.q(q));
    t.row(vec![
        "added p50 (vs direct)".into(),
        "-".into(),
        added(ln, 0.5),
        added(lp, 0.5),
        format!(
            "{} vs nginx",
            fmt_delta(lp.latency.q(0.5), ln.latency.q(0.5))
        ),
    ]);
    let added_p99 = lp.latency.q(0.99).saturating_sub(ld.latency.q(0.99));
    t.row(vec![
        "added p99 (vs direct)".into(),
        "-".into(),
        added(ln, 0.99),
        added(lp, 0.99),
        format!(
            "{} vs nginx",
            fmt_delta(lp.latency.q(0.99), ln.latency.q(0.99))
        ),
        "≤ 0.5 ms".into(),
        pass(added_p99 <= TARGET_ADDED_P99),
    ]);
    let added_due = |r: &OpenLoopResult| fmt_delta(r.from_due.q(0.99), ld.from_due.q(0.99));
    t.row(vec![
        "added p99 from the ideal due time".into(),
        "-".into(),
        added_due(ln),
        added_due(lp),
        "adds the generator's wake-up lateness".into(),
    ]);
    let added_svc = |r: &OpenLoopResult| fmt_delta(r.service.q(0.99), ld.service.q(0.99));
    t.row(vec![
        "added p99 of service time".into(),
        "-".into(),
        added_svc(ln),
        added_svc(lp),
        "from the write (what closed-loop tools show)".into(),
    ]);
    if let Some(g) = lat.get(DEDICATED) {
        t.row(vec![
            "dedicated gateway p50 / p99".into(),
            String::new(),
            String::new(),
            format!(
                "{} / {}",
                fmt_dur(g.latency.q(0.5)),
                fmt_dur(g.latency.q(0.99))
            ),
            format!("added {} / {}", added(g, 0.5), added(g, 0.99)),
        ]);
    }
    t.row(vec![
        "achieved rate / failures".into(),
        format!("{:.0}/s, {}", ld.achieved_rate, ld.outcome.failures()),
        format!("{:.0}/s, {}", ln.achieved_rate, ln.outcome.failures()),
        format!("{:.0}/s, {}", lp.achieved_rate, lp.outcome.failures()),
    ]);
    t.row(vec![
        "generator lateness p99 / max".into(),
        format!(
            "{} / {}",
            fmt_dur(ld.lateness.q(0.99)),
            fmt_dur(ld.lateness.max())
        ),
        format!(
            "{} / {}",
            fmt_dur(ln.lateness.q(0.99)),
            fmt_dur(ln.lateness.max())
        ),
        format!(
            "{} / {}",
            fmt_dur(lp.lateness.q(0.99)),
            fmt_dur(lp.lateness.max())
        ),
    ]);

    let [td, tn, tpg] = match tp.as_slice() {
        [d, n, p, ..] => [d, n, p],
        _ => bail!("throughput runs missing"),
    };
    let ratio = if tn.rps > 0.0 { tpg.rps / tn.rps } else { 0.0 };
    t.section(&format!(
        "maximum throughput, closed loop, {} connections, {:.0} s × {} rounds per target",
        a.connections, a.throughput_secs, a.throughput_rounds
    ));
    t.row(vec![
        "requests/s".into(),
        format!("{:.0}", td.rps),
        format!("{:.0}", tn.rps),
        format!("{:.0}", tpg.rps),
        format!(
            "{ratio:.2} × nginx, {:.2} × direct",
            tpg.rps / td.rps.max(1e-9)
        ),
        "≥ 0.80 × nginx".into(),
        pass(ratio >= TARGET_THROUGHPUT_RATIO),
    ]);
    if let Some(g) = tp.get(DEDICATED) {
        t.row(vec![
            "dedicated gateway requests/s".into(),
            String::new(),
            String::new(),
            format!("{:.0}", g.rps),
            format!("{:.2} × nginx", g.rps / tn.rps.max(1e-9)),
        ]);
    }
    t.row(vec![
        "latency p50 / p99 at max".into(),
        format!(
            "{} / {}",
            fmt_dur(td.latency.q(0.5)),
            fmt_dur(td.latency.q(0.99))
        ),
        format!(
            "{} / {}",
            fmt_dur(tn.latency.q(0.5)),
            fmt_dur(tn.latency.q(0.99))
        ),
        format!(
            "{} / {}",
            fmt_dur(tpg.latency.q(0.5)),
            fmt_dur(tpg.latency.q(0.99))
        ),
    ]);
    t.row(vec![
        "failed requests".into(),
        td.outcome.failures().to_string(),
        tn.outcome.failures().to_string(),
        tpg.outcome.failures().to_string(),
    ]);

    for (title, runs) in [
        ("Codex /responses via a Codex account", &ttft_codex),
        ("chat completions via an OpenAI key", &ttft_chat),
    ] {
        let [sd, sn, sp] = match runs.as_slice() {
            [d, n, p] => [d, n, p],
            _ => bail!("stream runs missing"),
        };
        t.section(&format!(
            "TTFT, {title}: {} streams × {} deltas {} ms apart, 4 at a time",
            a.ttft_streams, a.ttft_deltas, a.ttft_delay_ms
        ));
        for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
            t.row(vec![
                format!("TTFT {name}"),
                fmt_dur(sd.ttft.q(q)),
                fmt_dur(sn.ttft.q(q)),
                fmt_dur(sp.ttft.q(q)),
                format!("{} vs direct", fmt_delta(sp.ttft.q(q), sd.ttft.q(q))),
            ]);
        }
        t.row(vec![
            "exact streams / lost / failed".into(),
            format!(
                "{} / {} / {}",
                sd.outcome.ok,
                sd.lost,
                sd.outcome.failures()
            ),
            format!(
                "{} / {} / {}",
                sn.outcome.ok,
                sn.lost,
                sn.outcome.failures()
            ),
            format!(
                "{} / {} / {}",
                sp.outcome.ok,
                sp.lost,
                sp.outcome.failures()
            ),
        ]);
    }

    let [md, mn, mp] = match many.as_slice() {
        [d, n, p] => [d, n, p],
        _ => bail!("concurrent stream runs missing"),
    };
    t.section(&format!(
        "{} concurrent Codex streams × {} deltas {} ms apart",
        a.streams, a.stream_deltas, a.stream_delay_ms
    ));
    let many_cell = |r: &StreamResult| {
        format!(
            "{}/{} exact, {} lost, {} failed",
            r.outcome.ok,
            a.streams,
            r.lost,
            r.outcome.failures()
        )
    };
    let many_ok =
        mp.outcome.ok == a.streams as u64 && mp.lost == 0 && mp.deltas == mp.expected_deltas;
    t.row(vec![
        "streams".into(),
        many_cell(md),
        many_cell(mn),
        many_cell(mp),
        format!("{}/{} deltas", mp.deltas, mp.expected_deltas),
        "all exact, 0 lost".into(),
        pass(many_ok),
    ]);
    t.row(vec![
        "peak concurrent".into(),
        md.peak_concurrency.to_string(),
        mn.peak_concurrency.to_string(),
        mp.peak_concurrency.to_string(),
    ]);
    t.row(vec![
        "TTFT p50 / p99".into(),
        format!("{} / {}", fmt_dur(md.ttft.q(0.5)), fmt_dur(md.ttft.q(0.99))),
        format!("{} / {}", fmt_dur(mn.ttft.q(0.5)), fmt_dur(mn.ttft.q(0.99))),
        format!("{} / {}", fmt_dur(mp.ttft.q(0.5)), fmt_dur(mp.ttft.q(0.99))),
    ]);
    t.row(vec![
        "largest gap beyond pacing".into(),
        fmt_dur(md.max_excess_gap),
        fmt_dur(mn.max_excess_gap),
        fmt_dur(mp.max_excess_gap),
        format!("{} gaps ≥ {} ms", mp.stalls, STALL.as_millis()),
    ]);

    // Nagle: unary service times in the 35–45 ms band, and stalls on lightly loaded streams.
    t.section("Nagle / delayed-ACK check (TCP_NODELAY everywhere)");
    let band = |r: &OpenLoopResult| r.service.count_between(NAGLE_LO, NAGLE_HI);
    let stalls = |i: usize| -> u64 {
        ttft_codex.get(i).map_or(0, |r| r.stalls) + ttft_chat.get(i).map_or(0, |r| r.stalls)
    };
    t.row(vec![
        "requests in 35–45 ms".into(),
        band(ld).to_string(),
        band(ln).to_string(),
        band(lp).to_string(),
        format!("of {} poolgate requests", lp.service.count()),
        "0".into(),
        pass(band(lp) == 0),
    ]);
    t.row(vec![
        format!("stream gaps ≥ {} ms beyond pacing", STALL.as_millis()),
        stalls(DIRECT).to_string(),
        stalls(NGINX).to_string(),
        stalls(POOLGATE).to_string(),
        format!("over {} poolgate streams", 2 * a.ttft_streams),
        "0".into(),
        pass(stalls(POOLGATE) == 0),
    ]);

    t.section(
        "poolgate memory: VmRSS (HWM = peak since start); standalone = control plane + gateway \
         in one process, each holding the state",
    );
    let mem_row = |t: &mut Table, what: &str, m: u64, extra: String, judged: bool| {
        let mut row = vec![
            what.to_string(),
            String::new(),
            String::new(),
            format!("{:.1} MB", mb(m)),
            extra,
        ];
        if judged {
            row.push("≤ 100 MB".into());
            row.push(pass(mb(m) <= TARGET_RSS_MB));
        }
        t.row(row);
    };
    mem_row(
        &mut t,
        "standalone RSS idle, small snapshot",
        idle_small.rss_kb,
        String::new(),
        false,
    );
    if let Some(m) = idle_small_dedicated {
        mem_row(
            &mut t,
            "gateway RSS idle, small snapshot",
            m.rss_kb,
            "dedicated `poolgate gateway`".into(),
            false,
        );
    }
    let small_peak = [tp_mem, many_mem]
        .into_iter()
        .flatten()
        .map(|m| m.rss_kb)
        .max()
        .unwrap_or(0);
    mem_row(
        &mut t,
        "standalone RSS under load, small snapshot",
        small_peak,
        format!(
            "HWM {:.1} MB; {:.1} MB after",
            mb(after_small.hwm_kb),
            mb(after_small.rss_kb)
        ),
        false,
    );

    if let Some(l) = &large {
        t.section(&format!(
            "large snapshot: {} accounts + {} keys created in {:.1} s + {:.1} s; the newest key \
             served {:.2} s later by standalone{}",
            l.accounts.created,
            l.keys.created,
            l.accounts.elapsed.as_secs_f64(),
            l.keys.elapsed.as_secs_f64(),
            l.propagation.as_secs_f64(),
            l.propagation_dedicated
                .map(|d| format!(", {:.2} s by the dedicated gateway", d.as_secs_f64()))
                .unwrap_or_default()
        ));
        // The target is the gateway's: judged on the dedicated gateway when there is one.
        let has_dedicated = l.idle_dedicated.is_some();
        mem_row(
            &mut t,
            "standalone RSS idle",
            l.idle.rss_kb,
            "after the small-snapshot load".into(),
            !has_dedicated,
        );
        mem_row(
            &mut t,
            "standalone RSS under load",
            l.load.rss_kb,
            format!(
                "HWM {:.1} MB{}",
                mb(l.load.hwm_kb),
                if has_dedicated {
                    "; load went to the dedicated gateway"
                } else {
                    ""
                }
            ),
            !has_dedicated,
        );
        if let Some(m) = l.idle_dedicated {
            mem_row(&mut t, "gateway RSS idle", m.rss_kb, String::new(), true);
        }
        if let Some(m) = l.load_dedicated {
            mem_row(
                &mut t,
                "gateway RSS under load",
                m.rss_kb,
                format!("HWM {:.1} MB", mb(m.hwm_kb)),
                true,
            );
        }
        if let [d, p] = l.latency.as_slice() {
            let added = p.latency.q(0.99).saturating_sub(d.latency.q(0.99));
            t.row(vec![
                format!("latency p50 / p99 @{:.0}/s", a.rate),
                format!(
                    "{} / {}",
                    fmt_dur(d.latency.q(0.5)),
                    fmt_dur(d.latency.q(0.99))
                ),
                String::new(),
                format!(
                    "{} / {}",
                    fmt_dur(p.latency.q(0.5)),
                    fmt_dur(p.latency.q(0.99))
                ),
                format!(
                    "added {} / {} ({})",
                    fmt_delta(p.latency.q(0.5), d.latency.q(0.5)),
                    fmt_delta(p.latency.q(0.99), d.latency.q(0.99)),
                    p.outcome.ok
                ),
                "p99 ≤ +0.5 ms".into(),
                pass(added <= TARGET_ADDED_P99),
            ]);
            if let Some(n) = failures_note("large-snapshot latency run", &p.outcome) {
                notes.push(n);
            }
        }
        let r = &l.throughput;
        t.row(vec![
            "requests/s (closed loop)".into(),
            String::new(),
            String::new(),
            format!("{:.0}", r.rps),
            format!("{:.2} × nginx above", r.rps / tn.rps.max(1e-9)),
        ]);
        if let Some(n) = failures_note("large-snapshot throughput run", &r.outcome) {
            notes.push(n);
        }
    }

    t.section("snapshot stream");
    match &weights {
        Some(Ok(w)) => {
            t.row(vec![
                "full snapshot message".into(),
                String::new(),
                String::new(),
                format!("{} B", w.full_bytes),
                format!("{} accounts, {} keys", w.full_accounts, w.full_keys),
            ]);
            t.row(vec![
                "one-account change".into(),
                String::new(),
                String::new(),
                format!("{} B", w.delta_bytes),
                format!(
                    "{} account(s), {} key(s) in the message",
                    w.delta_accounts, w.delta_keys
                ),
                "≤ 2 KB".into(),
                pass(w.delta_bytes <= TARGET_DELTA_BYTES),
            ]);
        }
        Some(Err(e)) => t.row(vec![
            "one-account change".into(),
            String::new(),
            String::new(),
            "n/a".into(),
            format!("watch failed: {e}"),
            "≤ 2 KB".into(),
            "n/a".into(),
        ]),
        None => t.row(vec![
            "one-account change".into(),
            String::new(),
            String::new(),
            "n/a".into(),
            "no node token given (--node-token-file)".into(),
            "≤ 2 KB".into(),
            "n/a".into(),
        ]),
    }

    for (label, o) in [
        ("latency/direct", &ld.outcome),
        ("latency/nginx", &ln.outcome),
        ("latency/poolgate", &lp.outcome),
        ("throughput/direct", &td.outcome),
        ("throughput/nginx", &tn.outcome),
        ("throughput/poolgate", &tpg.outcome),
    ] {
        notes.extend(failures_note(label, o));
    }
    if let Some(g) = lat.get(DEDICATED) {
        notes.extend(failures_note("latency/dedicated gateway", &g.outcome));
    }
    if let Some(g) = tp.get(DEDICATED) {
        notes.extend(failures_note("throughput/dedicated gateway", &g.outcome));
    }
    for (label, runs) in [
        ("TTFT codex", &ttft_codex),
        ("TTFT chat", &ttft_chat),
        ("concurrent streams", &many),
    ] {
        for r in runs.iter() {
            if r.outcome.failures() > 0 || r.lost > 0 {
                notes.push(format!(
                    "{label}: {} lost, {} failed; first: {}",
                    r.lost,
                    r.outcome.failures(),
                    r.outcome.first_failure.as_deref().unwrap_or("?")
                ));
            }
        }
    }

    println!();
    println!(
        "poolgate benchmark — loopback only; the load generator, the mock upstream, nginx and \
         poolgate share {} CPU cores (nothing pinned), so absolute figures include the \
         generator's own cost; ratios and differences are what to read.",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let pct = |c: Option<CpuShare>, f: fn(&CpuShare) -> f64| {
        c.map_or_else(|| "?".to_string(), |c| format!("{:.0}%", f(&c) * 100.0))
    };
    println!(
        "CPU (share of all cores) taken by processes outside the benchmark: {} before the runs, \
         {} during the fixed-rate runs, {} over the whole suite; the benchmark's own processes \
         used {} over the suite.",
        pct(cpu_before, CpuShare::foreign),
        pct(cpu_latency, CpuShare::foreign),
        pct(cpu_run, CpuShare::foreign),
        pct(cpu_run, |c| c.own),
    );
    if [cpu_before, cpu_latency, cpu_run]
        .iter()
        .flatten()
        .any(|c| c.foreign() > 0.05)
    {
        notes.push(
            "other processes took more than 5% of the CPU during the benchmark: tails (p99, \
             max gaps) and throughput are noisier than on a quiet machine; rerun when it is idle"
                .into(),
        );
    }
    println!("{}", t.render());
    for n in &notes {
        println!("note: {n}");
    }
    println!(
        "total benchmark time {:.0} s",
        started.elapsed().as_secs_f64()
    );

    if let Some(path) = &a.json {
        let trio = |f: &dyn Fn(usize) -> Value| json!({"direct": f(DIRECT), "nginx": f(NGINX), "poolgate": f(POOLGATE)});
        let out = json!({
            "latency": trio(&|i| lat.get(i).map_or(Value::Null, |r| json!({
                "latency": lat_json(&r.latency), "from_due": lat_json(&r.from_due),
                "service": lat_json(&r.service), "lateness": lat_json(&r.lateness),
                "ok": r.outcome.ok, "failed": r.outcome.failures(),
                "nagle_band": band(r)}))),
            "throughput_rps": trio(&|i| tp.get(i).map_or(Value::Null, |r| json!(r.rps))),
            "dedicated_gateway": {
                "latency": lat.get(DEDICATED).map(|r| lat_json(&r.latency)),
                "throughput_rps": tp.get(DEDICATED).map(|r| r.rps)},
            "ttft_codex": trio(&|i| ttft_codex.get(i).map_or(Value::Null, |r| lat_json(&r.ttft))),
            "ttft_chat": trio(&|i| ttft_chat.get(i).map_or(Value::Null, |r| lat_json(&r.ttft))),
            "concurrent_streams": trio(&|i| many.get(i).map_or(Value::Null, |r| json!({
                "exact": r.outcome.ok, "lost": r.lost, "failed": r.outcome.failures(),
                "deltas": r.deltas, "expected_deltas": r.expected_deltas,
                "peak": r.peak_concurrency, "stalls": r.stalls}))),
            "rss_kb": {"standalone": {"idle_small": idle_small.rss_kb, "load_small": small_peak,
                           "idle_large": large.as_ref().map(|l| l.idle.rss_kb),
                           "load_large": large.as_ref().map(|l| l.load.rss_kb)},
                       "gateway": {"idle_small": idle_small_dedicated.map(|m| m.rss_kb),
                           "idle_large": large.as_ref().and_then(|l| l.idle_dedicated).map(|m| m.rss_kb),
                           "load_large": large.as_ref().and_then(|l| l.load_dedicated).map(|m| m.rss_kb)}},
            "cpu_foreign": {"before": cpu_before.map(|c| c.foreign()),
                            "latency": cpu_latency.map(|c| c.foreign()),
                            "run": cpu_run.map(|c| c.foreign())},
            "cpu_own_run": cpu_run.map(|c| c.own),
            "snapshot": weights.as_ref().map(|w| match w {
                Ok(w) => json!({"full_bytes": w.full_bytes, "delta_bytes": w.delta_bytes}),
                Err(e) => json!({"error": e}),
            }),
            "notes": notes,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&out)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
