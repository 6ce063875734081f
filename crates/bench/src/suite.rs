//! The whole benchmark in one run: the same requests sent straight to the mock upstream
//! ("direct"), through nginx (the reference proxy hop) and through poolgate, interleaved in
//! rounds so drift on a shared machine hits all three alike; then the large-snapshot phase;
//! then one table of figures, ratios and verdicts against the targets.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use crate::admin;
use crate::client::{Target, once};
use crate::closedloop::{self, ClosedLoop, ClosedLoopResult};
use crate::openloop::{self, OpenLoop, OpenLoopResult};
use crate::report::{Results, render};
use crate::rss::{self, CpuWatch, Mem, Sampler};
use crate::streams::{self, StreamKind, StreamResult, StreamSpec};

const CHAT_MODEL: &str = "gpt-4.1-mini";
const CODEX_MODEL: &str = "gpt-5.4-mini";
/// Longer than any delta count used, so the mock never pads the reply.
const PROMPT: &str =
    "poolgate benchmark: the quick brown fox jumps over the lazy dog again and again";

pub(crate) const DIRECT: usize = 0;
pub(crate) const NGINX: usize = 1;
pub(crate) const POOLGATE: usize = 2;
/// The dedicated `poolgate gateway` in the unary runs.
pub(crate) const DEDICATED: usize = 3;
const NAMES: [&str; 3] = ["direct", "nginx", "poolgate"];

#[derive(Debug, clap::Args)]
pub struct SuiteArgs {
    /// Mock upstream base URL (http://127.0.0.1:PORT).
    #[arg(long)]
    pub mock: String,
    /// nginx base URL (proxy_pass to the mock).
    #[arg(long)]
    pub nginx: String,
    /// poolgate gateway base URL.
    #[arg(long)]
    pub gateway: String,
    /// PID of the poolgate process (RSS from /proc/PID/status).
    #[arg(long)]
    pub gateway_pid: u32,
    /// The OpenAI account's upstream API key (direct and nginx calls use it).
    #[arg(long)]
    pub openai_key_file: PathBuf,
    /// The Codex account's auth.json (direct and nginx calls use its access token).
    #[arg(long)]
    pub codex_auth_file: PathBuf,
    /// poolgate platform key routed to the OpenAI account.
    #[arg(long)]
    pub platform_key_file: PathBuf,
    /// poolgate platform key routed to the Codex account.
    #[arg(long)]
    pub codex_platform_key_file: PathBuf,
    /// Control-plane gRPC URL (admin API; snapshot stream).
    #[arg(long)]
    pub grpc: String,
    #[arg(long)]
    pub admin_token_file: PathBuf,
    /// A separate `poolgate gateway` following the same control plane over gRPC: the
    /// large-snapshot load goes through it, and its RSS is the gateway's alone.
    #[arg(long, requires = "dedicated_gateway_pid")]
    pub dedicated_gateway: Option<String>,
    #[arg(long, requires = "dedicated_gateway")]
    pub dedicated_gateway_pid: Option<u32>,
    /// Other processes of the benchmark (mock, nginx master): their CPU time (and their
    /// children's) is not counted as interference from the rest of the machine.
    #[arg(long = "own-pid")]
    pub own_pids: Vec<u32>,
    /// Node token: when given, the snapshot stream is watched to weigh a one-account delta.
    #[arg(long)]
    pub node_token_file: Option<PathBuf>,
    /// Fixed rate of the latency runs (req/s).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Measured seconds per target at the fixed rate (split over the rounds).
    #[arg(long, default_value_t = 15.0)]
    pub latency_secs: f64,
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Connections of the fixed-rate runs.
    #[arg(long, default_value_t = 16)]
    pub latency_connections: usize,
    /// Connections of the maximum-throughput runs.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Measured seconds per target and round of the throughput runs.
    #[arg(long, default_value_t = 4.0)]
    pub throughput_secs: f64,
    #[arg(long, default_value_t = 2)]
    pub throughput_rounds: u32,
    /// Streams per target for TTFT (4 at a time).
    #[arg(long, default_value_t = 400)]
    pub ttft_streams: usize,
    #[arg(long, default_value_t = 8)]
    pub ttft_deltas: u32,
    #[arg(long, default_value_t = 5)]
    pub ttft_delay_ms: u64,
    /// Concurrent streams per target.
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    #[arg(long, default_value_t = 10)]
    pub stream_deltas: u32,
    #[arg(long, default_value_t = 100)]
    pub stream_delay_ms: u64,
    /// Accounts and keys of the large snapshot (0 skips that phase).
    #[arg(long, default_value_t = 10_000)]
    pub bulk_accounts: usize,
    #[arg(long, default_value_t = 100_000)]
    pub bulk_keys: usize,
    /// Admin calls in flight while creating them.
    #[arg(long, default_value_t = 32)]
    pub bulk_concurrency: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn progress(started: Instant, msg: &str) {
    eprintln!("[{:6.1}s] {msg}", started.elapsed().as_secs_f64());
}

fn bearer(token: &str) -> (String, String) {
    ("authorization".into(), format!("Bearer {token}"))
}

/// (access token, ChatGPT account id) from a Codex auth.json.
fn read_codex_auth(path: &std::path::Path) -> anyhow::Result<(String, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let tokens = v.get("tokens").unwrap_or(&v);
    let get = |k: &str| {
        tokens
            .get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{} has no tokens.{k}", path.display()))
    };
    Ok((get("access_token")?, get("account_id")?))
}

fn key_file(path: &std::path::Path) -> anyhow::Result<String> {
    admin::read_token(&path.to_string_lossy())
}

type Trio = [Arc<Target>; 3];

struct Targets {
    /// Direct, nginx, standalone poolgate, then the dedicated gateway when there is one
    /// (index [`DEDICATED`]).
    unary: Vec<Arc<Target>>,
    chat_stream: Trio,
    codex_stream: Trio,
}

fn build_targets(a: &SuiteArgs) -> anyhow::Result<(Targets, String, String)> {
    let openai_key = key_file(&a.openai_key_file)?;
    let (codex_token, codex_account) = read_codex_auth(&a.codex_auth_file)?;
    let pk = key_file(&a.platform_key_file)?;
    let cpk = key_file(&a.codex_platform_key_file)?;
    let chat = |stream: bool| {
        json!({"model": CHAT_MODEL, "messages": [{"role": "user", "content": PROMPT}],
               "stream": stream})
        .to_string()
    };
    let codex = json!({
        "model": CODEX_MODEL,
        "instructions": "You are the benchmark.",
        "input": [{"type": "message", "role": "user",
                   "content": [{"type": "input_text", "text": PROMPT}]}],
        "store": false,
        "stream": true,
    })
    .to_string();
    let upstream = |label: &str, base: &str, path: &str, body: &str| {
        Target::new(
            label,
            &format!("{base}{path}"),
            &[bearer(&openai_key)],
            body.to_string(),
        )
        .map(Arc::new)
    };
    let gw = |path: &str, key: &str, body: &str| {
        Target::new(
            NAMES[POOLGATE],
            &format!("{}{path}", a.gateway),
            &[bearer(key)],
            body.to_string(),
        )
        .map(Arc::new)
    };
    let codex_up = |label: &str, base: &str| {
        Target::new(
            label,
            &format!("{base}/backend-api/codex/responses"),
            &[
                bearer(&codex_token),
                ("chatgpt-account-id".into(), codex_account.clone()),
            ],
            codex.clone(),
        )
        .map(Arc::new)
    };
    let chat_path = "/v1/chat/completions";
    let targets = Targets {
        unary: {
            let mut v = vec![
                upstream(NAMES[DIRECT], &a.mock, chat_path, &chat(false))?,
                upstream(NAMES[NGINX], &a.nginx, chat_path, &chat(false))?,
                gw(chat_path, &pk, &chat(false))?,
            ];
            if let Some(base) = &a.dedicated_gateway {
                v.push(Arc::new(Target::new(
                    "poolgate gateway",
                    &format!("{base}{chat_path}"),
                    &[bearer(&pk)],
                    chat(false),
                )?));
            }
            v
        },
        chat_stream: [
            upstream(NAMES[DIRECT], &a.mock, chat_path, &chat(true))?,
            upstream(NAMES[NGINX], &a.nginx, chat_path, &chat(true))?,
            gw(chat_path, &pk, &chat(true))?,
        ],
        codex_stream: [
            codex_up(NAMES[DIRECT], &a.mock)?,
            codex_up(NAMES[NGINX], &a.nginx)?,
            gw("/v1/responses", &cpk, &codex)?,
        ],
    };
    Ok((targets, openai_key, codex_token))
}

/// Sets the mock's pacing for one upstream token (the gateway does not forward `x-mock-*`
/// headers, so pacing is keyed on the credential every path uses).
async fn set_pacing(mock: &str, token: &str, deltas: u32, delay_ms: u64) -> anyhow::Result<()> {
    let body = json!({"token": token, "pacing": {"deltas": deltas, "delta_delay_ms": delay_ms}});
    let t = Target::new(
        "mock-control",
        &format!("{mock}/__mock/pacing"),
        &[],
        body.to_string(),
    )?;
    let (status, body) = once(&t).await?;
    if !status.is_success() {
        bail!(
            "the mock refused the pacing change: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// Polls until the target answers 2xx (the gateway may still be loading its snapshot).
async fn wait_ok(t: &Target, timeout: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut last = String::from("no answer");
    while started.elapsed() < timeout {
        match once(t).await {
            Ok((s, _)) if s.is_success() => return Ok(started.elapsed()),
            Ok((s, b)) => {
                last = format!(
                    "HTTP {s}: {}",
                    String::from_utf8_lossy(b.get(..300).unwrap_or(&b))
                )
            }
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{} did not answer 2xx within {timeout:?}: {last}", t.label)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

/// Round `r` visits the targets in a rotated order, so none always runs first.
fn order(r: u32, n: usize) -> Vec<usize> {
    (0..n).map(|i| (i + r as usize) % n).collect()
}

struct Latencies {
    runs: Vec<OpenLoopResult>,
}

async fn latency_rounds(
    targets: &[Arc<Target>],
    rate: f64,
    per_target: Duration,
    rounds: u32,
    connections: usize,
    started: Instant,
) -> anyhow::Result<Latencies> {
    let rounds = rounds.max(1);
    let mut runs: Vec<Option<OpenLoopResult>> = vec![None; targets.len()];
    for r in 0..rounds {
        for i in order(r, targets.len()) {
            let Some(t) = targets.get(i) else { continue };
            progress(
                started,
                &format!("  {rate:.0} req/s → {} (round {}/{rounds})", t.label, r + 1),
            );
            let res = openloop::run(
                t.clone(),
                OpenLoop {
                    rate,
                    duration: per_target / rounds,
                    warmup: Duration::from_millis(500),
                    connections,
                },
            )
            .await?;
            let slot = runs
                .get_mut(i)
                .ok_or_else(|| anyhow!("target index out of range"))?;
            match slot {
                None => *slot = Some(res),
                Some(acc) => {
                    acc.latency.merge(&res.latency)?;
                    acc.from_due.merge(&res.from_due)?;
                    acc.service.merge(&res.service)?;
                    acc.lateness.merge(&res.lateness)?;
                    acc.achieved_rate =
                        (acc.achieved_rate * f64::from(r) + res.achieved_rate) / f64::from(r + 1);
                    acc.outcome.merge(res.outcome);
                }
            }
        }
    }
    Ok(Latencies {
        runs: runs.into_iter().flatten().collect(),
    })
}

async fn throughput_rounds(
    targets: &[Arc<Target>],
    cfg: ClosedLoop,
    rounds: u32,
    rss_of: Option<(usize, u32)>,
    started: Instant,
) -> anyhow::Result<(Vec<ClosedLoopResult>, Option<Mem>)> {
    let rounds = rounds.max(1);
    let mut acc: Vec<Option<ClosedLoopResult>> = vec![None; targets.len()];
    let mut peak: Option<Mem> = None;
    for r in 0..rounds {
        for i in order(r, targets.len()) {
            let Some(t) = targets.get(i) else { continue };
            progress(
                started,
                &format!(
                    "  closed loop, {} connections → {} (round {}/{rounds})",
                    cfg.connections,
                    t.label,
                    r + 1
                ),
            );
            let sampler = rss_of
                .filter(|(idx, _)| *idx == i)
                .map(|(_, pid)| (Sampler::start(pid), pid));
            let res = closedloop::run(t.clone(), cfg).await?;
            if let Some((s, pid)) = sampler {
                let m = s.finish(pid).await?;
                peak = Some(match peak {
                    Some(p) if p.rss_kb >= m.rss_kb => Mem {
                        hwm_kb: m.hwm_kb,
                        ..p
                    },
                    _ => m,
                });
            }
            let slot = acc
                .get_mut(i)
                .ok_or_else(|| anyhow!("target index out of range"))?;
            match slot {
                None => *slot = Some(res),
                Some(a) => {
                    a.latency.merge(&res.latency)?;
                    a.rps = (a.rps * f64::from(r) + res.rps) / f64::from(r + 1);
                    a.outcome.merge(res.outcome);
                }
            }
        }
    }
    Ok((acc.into_iter().flatten().collect(), peak))
}

async fn stream_runs(
    targets: &Trio,
    spec: &StreamSpec,
    rss_pid: Option<u32>,
    started: Instant,
) -> anyhow::Result<(Vec<StreamResult>, Option<Mem>)> {
    let mut out = Vec::new();
    let mut mem = None;
    for t in targets {
        progress(
            started,
            &format!(
                "  {} streams ({} at a time, {} deltas, {} ms apart) → {}",
                spec.streams,
                spec.concurrency,
                spec.expect_deltas,
                spec.delta_delay.as_millis(),
                t.label
            ),
        );
        let sampler = (t.label == NAMES[POOLGATE])
            .then_some(rss_pid)
            .flatten()
            .map(|pid| (Sampler::start(pid), pid));
        out.push(streams::run(t.clone(), spec.clone()).await?);
        if let Some((s, pid)) = sampler {
            mem = Some(s.finish(pid).await?);
        }
    }
    Ok((out, mem))
}

pub(crate) struct Large {
    pub(crate) accounts: admin::BulkResult,
    pub(crate) keys: admin::BulkResult,
    /// From the last key's creation until standalone / the dedicated gateway accepts it.
    pub(crate) propagation: Duration,
    pub(crate) propagation_dedicated: Option<Duration>,
    pub(crate) idle: Mem,
    pub(crate) idle_dedicated: Option<Mem>,
    /// Direct, then the process under load (the dedicated gateway when there is one).
    pub(crate) latency: Vec<OpenLoopResult>,
    pub(crate) load: Mem,
    pub(crate) load_dedicated: Option<Mem>,
    pub(crate) throughput: ClosedLoopResult,
}

pub async fn run(a: SuiteArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let (targets, openai_key, codex_token) = build_targets(&a)?;
    let pid = a.gateway_pid;
    let mut notes: Vec<String> = Vec::new();

    progress(started, "checking that every path answers");
    set_pacing(&a.mock, &openai_key, 4, 0).await?;
    set_pacing(&a.mock, &codex_token, 4, 0).await?;
    for t in targets.unary.iter().chain(targets.codex_stream.iter()) {
        wait_ok(t, Duration::from_secs(60)).await?;
    }
    let idle_small = rss::read(pid)?;
    let dedicated_pid = a.dedicated_gateway_pid;
    let idle_small_dedicated = dedicated_pid.map(rss::read).transpose()?;
    let mut own = a.own_pids.clone();
    own.push(pid);
    own.extend(dedicated_pid);
    let before = CpuWatch::start(&own);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu_before = before.finish();
    let whole_run = CpuWatch::start(&own);

    // ---- fixed-rate latency
    progress(
        started,
        "fixed-rate latency (open loop, measured from the scheduled send)",
    );
    let latency_watch = CpuWatch::start(&own);
    let lat = latency_rounds(
        &targets.unary,
        a.rate,
        secs(a.latency_secs),
        a.rounds,
        a.latency_connections,
        started,
    )
    .await?;
    let cpu_latency = latency_watch.finish();

    // ---- maximum throughput
    progress(started, "maximum throughput (closed loop)");
    let tp_cfg = ClosedLoop {
        connections: a.connections,
        duration: secs(a.throughput_secs),
        warmup: Duration::from_secs(1),
    };
    let (tp, tp_mem) = throughput_rounds(
        &targets.unary,
        tp_cfg,
        a.throughput_rounds,
        Some((POOLGATE, pid)),
        started,
    )
    .await?;

    // ---- TTFT and Nagle on lightly loaded streams
    progress(started, "time to first token (4 streams at a time)");
    let ttft_spec = |kind: StreamKind| StreamSpec {
        kind,
        streams: a.ttft_streams,
        concurrency: 4,
        expect_deltas: a.ttft_deltas,
        expect_text: Some(format!("echo: {PROMPT}")),
        delta_delay: Duration::from_millis(a.ttft_delay_ms),
        stagger: Duration::ZERO,
        timeout: Duration::from_secs(30),
    };
    set_pacing(&a.mock, &codex_token, a.ttft_deltas, a.ttft_delay_ms).await?;
    set_pacing(&a.mock, &openai_key, a.ttft_deltas, a.ttft_delay_ms).await?;
    let (ttft_codex, _) = stream_runs(
        &targets.codex_stream,
        &ttft_spec(StreamKind::Responses),
        None,
        started,
    )
    .await?;
    let (ttft_chat, _) = stream_runs(
        &targets.chat_stream,
        &ttft_spec(StreamKind::Chat),
        None,
        started,
    )
    .await?;

    // ---- many concurrent streams
    progress(started, "concurrent streams");
    set_pacing(&a.mock, &codex_token, a.stream_deltas, a.stream_delay_ms).await?;
    let many_spec = StreamSpec {
        kind: StreamKind::Responses,
        streams: a.streams,
        concurrency: a.streams,
        expect_deltas: a.stream_deltas,
        expect_text: Some(format!("echo: {PROMPT}")),
        delta_delay: Duration::from_millis(a.stream_delay_ms),
        // Spread the connects over half a stream's length: all are still open together.
        stagger: Duration::from_micros(
            (a.stream_delay_ms * u64::from(a.stream_deltas) * 500)
                .checked_div(a.streams.max(1) as u64)
                .unwrap_or(0),
        ),
        timeout: Duration::from_secs(120),
    };
    let (many, many_mem) =
        stream_runs(&targets.codex_stream, &many_spec, Some(pid), started).await?;
    set_pacing(&a.mock, &codex_token, 4, 0).await?;
    set_pacing(&a.mock, &openai_key, 4, 0).await?;
    let after_small = rss::read(pid)?;

    // ---- large snapshot
    let mut weights: Option<Result<admin::SnapshotWeights, String>> = None;
    let mut large: Option<Large> = None;
    if a.bulk_accounts > 0 || a.bulk_keys > 0 {
        let token = key_file(&a.admin_token_file)?;
        let api = admin::admin(&a.grpc, &token).await?;
        progress(
            started,
            &format!(
                "large snapshot: creating {} accounts and {} keys through the admin API ({} calls in flight)",
                a.bulk_accounts, a.bulk_keys, a.bulk_concurrency
            ),
        );
        let base = format!("{}/v1", a.mock);
        let accounts =
            admin::create_accounts(&api, a.bulk_accounts, a.bulk_concurrency, "bulk", &base)
                .await?;
        progress(
            started,
            &format!(
                "  {} accounts in {:.1} s ({:.0}/s), {} failed",
                accounts.created,
                accounts.elapsed.as_secs_f64(),
                accounts.created as f64 / accounts.elapsed.as_secs_f64().max(1e-9),
                accounts.failed
            ),
        );
        let keys = admin::create_keys(&api, a.bulk_keys, a.bulk_concurrency, "bulk").await?;
        progress(
            started,
            &format!(
                "  {} keys in {:.1} s ({:.0}/s), {} failed",
                keys.created,
                keys.elapsed.as_secs_f64(),
                keys.created as f64 / keys.elapsed.as_secs_f64().max(1e-9),
                keys.failed
            ),
        );
        for (what, r) in [("accounts", &accounts), ("keys", &keys)] {
            if let Some(e) = &r.first_error {
                notes.push(format!("bulk {what}: {} failed; first: {e}", r.failed));
            }
        }
        let bulk_key = admin::create_key(&api, "bench-bulk", "bulk").await?;
        let bulk_body =
            json!({"model": CHAT_MODEL, "messages": [{"role": "user", "content": PROMPT}]})
                .to_string();
        let bulk_target = |label: &str, base: &str| {
            Target::new(
                label,
                &format!("{base}/v1/chat/completions"),
                &[bearer(&bulk_key)],
                bulk_body.clone(),
            )
            .map(Arc::new)
        };
        let bulk_standalone = bulk_target(NAMES[POOLGATE], &a.gateway)?;
        let propagation = wait_ok(&bulk_standalone, Duration::from_secs(180)).await?;
        progress(
            started,
            &format!(
                "  standalone serves the newest key {:.2} s after its creation",
                propagation.as_secs_f64()
            ),
        );
        let dedicated = match (&a.dedicated_gateway, dedicated_pid) {
            (Some(url), Some(dpid)) => Some((bulk_target("poolgate gateway", url)?, dpid)),
            _ => None,
        };
        let propagation_dedicated = match &dedicated {
            Some((t, _)) => {
                let d = wait_ok(t, Duration::from_secs(180)).await? + propagation;
                progress(
                    started,
                    &format!(
                        "  the dedicated gateway serves it {:.2} s after its creation",
                        d.as_secs_f64()
                    ),
                );
                Some(d)
            }
            None => None,
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        let idle = rss::read(pid)?;
        let idle_dedicated = dedicated_pid.map(rss::read).transpose()?;

        if let Some(node_file) = &a.node_token_file {
            progress(
                started,
                "weighing the snapshot stream (full, then one-account delta)",
            );
            let r = async {
                let node = key_file(node_file)?;
                let id = admin::some_account(&api, "bulk").await?;
                admin::weigh_snapshot(&a.grpc, &node, &api, &id).await
            }
            .await;
            weights = Some(r.map_err(|e| format!("{e:#}")));
        }

        let load_target = dedicated
            .as_ref()
            .map_or_else(|| bulk_standalone.clone(), |(t, _)| t.clone());
        progress(
            started,
            &format!(
                "large snapshot under load through {} (accounts of group bulk)",
                load_target.label
            ),
        );
        let direct = targets
            .unary
            .get(DIRECT)
            .ok_or_else(|| anyhow!("no direct target"))?
            .clone();
        let both = [direct, load_target.clone()];
        let sampler = Sampler::start(pid);
        let sampler_dedicated = dedicated_pid.map(|p| (Sampler::start(p), p));
        let latency = latency_rounds(
            &both,
            a.rate,
            secs(a.latency_secs * 2.0 / 3.0),
            2,
            a.latency_connections,
            started,
        )
        .await?
        .runs;
        progress(
            started,
            &format!(
                "  closed loop, {} connections → {}",
                tp_cfg.connections, load_target.label
            ),
        );
        let throughput = closedloop::run(load_target.clone(), tp_cfg).await?;
        let load = sampler.finish(pid).await?;
        let load_dedicated = match sampler_dedicated {
            Some((s, p)) => Some(s.finish(p).await?),
            None => None,
        };
        large = Some(Large {
            accounts,
            keys,
            propagation,
            propagation_dedicated,
            idle,
            idle_dedicated,
            latency,
            load,
            load_dedicated,
            throughput,
        });
    }

    let cpu_run = whole_run.finish();
    render(
        &a,
        Results {
            started,
            cpu_before,
            cpu_latency,
            cpu_run,
            idle_small,
            idle_small_dedicated,
            lat: lat.runs,
            tp,
            tp_mem,
            ttft_codex,
            ttft_chat,
            many,
            many_mem,
            after_small,
            large,
            weights,
            notes,
        },
    )
}
