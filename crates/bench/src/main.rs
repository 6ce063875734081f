//! `poolgate-bench`: the load generator behind `scripts/bench-gateway.sh`.
//!
//! Written on tokio + a bare hyper HTTP/1.1 client so the rate, the number of connections and
//! the streams are exactly what was asked for: open-loop fixed-rate latency (measured from each
//! request's due time, HdrHistogram), closed-loop maximum throughput, streaming TTFT with frame
//! counting, N concurrent streams, RSS of a PID, bulk creation through the admin API, and the
//! `suite` that runs everything against direct / nginx / poolgate and prints one table.
//! It is a benchmark, not a test: nothing here runs in CI.

mod admin;
mod client;
mod closedloop;
mod hist;
mod openloop;
mod report;
mod rss;
mod streams;
mod suite;
mod table;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::client::Target;
use crate::hist::{Lat, fmt_dur};

#[derive(Debug, Parser)]
#[command(
    name = "poolgate-bench",
    version,
    about = "Load generator and benchmark suite for poolgate"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Everything, against direct / nginx / poolgate, as one table (what the script runs).
    Suite(Box<suite::SuiteArgs>),
    /// Fixed-rate (open-loop) latency against one URL.
    Latency(LatencyArgs),
    /// Maximum throughput (closed loop) against one URL.
    Throughput(ThroughputArgs),
    /// Streaming requests: TTFT, frame counting, gaps.
    Streams(StreamsArgs),
    /// VmRSS / VmHWM of a process.
    Rss { pid: u32 },
    /// Create accounts and platform keys in bulk through the admin API.
    Populate(PopulateArgs),
}

#[derive(Debug, Args)]
struct RequestArgs {
    /// http://host:port/path
    #[arg(long)]
    url: String,
    /// Header `name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// JSON body (POST); without one the request is a GET.
    #[arg(long)]
    body: Option<String>,
}

impl RequestArgs {
    fn target(&self) -> anyhow::Result<Arc<Target>> {
        let mut headers = Vec::new();
        for h in &self.headers {
            let Some((k, v)) = h.split_once(':') else {
                bail!("header {h:?} is not `name: value`");
            };
            headers.push((k.to_string(), v.to_string()));
        }
        let body = self.body.clone().unwrap_or_default();
        Ok(Arc::new(Target::new("target", &self.url, &headers, body)?))
    }
}

#[derive(Debug, Args)]
struct LatencyArgs {
    #[command(flatten)]
    req: RequestArgs,
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    #[arg(long, default_value_t = 16)]
    connections: usize,
}

#[derive(Debug, Args)]
struct ThroughputArgs {
    #[command(flatten)]
    req: RequestArgs,
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
}

#[derive(Debug, Args)]
struct StreamsArgs {
    #[command(flatten)]
    req: RequestArgs,
    #[arg(long, value_enum, default_value_t = streams::StreamKind::Responses)]
    kind: streams::StreamKind,
    #[arg(long, default_value_t = 100)]
    streams: usize,
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Content deltas each stream must carry.
    #[arg(long)]
    deltas: u32,
    /// The text they must reassemble to.
    #[arg(long)]
    text: Option<String>,
    /// The upstream's pause before each delta, in ms.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Delay between the starts of consecutive workers, in µs.
    #[arg(long, default_value_t = 0)]
    stagger_us: u64,
}

#[derive(Debug, Args)]
struct PopulateArgs {
    /// Control-plane gRPC URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    grpc: String,
    #[arg(long)]
    token_file: String,
    #[arg(long, default_value_t = 0)]
    accounts: usize,
    #[arg(long, default_value_t = 0)]
    keys: usize,
    #[arg(long, default_value = "bulk")]
    group: String,
    /// Base URL of the created (OpenAI API-key) accounts.
    #[arg(long)]
    base_url: String,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

fn print_lat(name: &str, l: &Lat) {
    println!(
        "{name}: n={} p50={} p90={} p99={} p99.9={} max={}",
        l.count(),
        fmt_dur(l.q(0.5)),
        fmt_dur(l.q(0.9)),
        fmt_dur(l.q(0.99)),
        fmt_dur(l.q(0.999)),
        fmt_dur(l.max())
    );
}

fn print_failures(o: &client::Outcome) {
    println!(
        "ok={} non_2xx={} errors={}{}",
        o.ok,
        o.non_2xx,
        o.errors,
        o.first_failure
            .as_deref()
            .map(|f| format!(" first_failure={f}"))
            .unwrap_or_default()
    );
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Suite(a) => suite::run(*a).await,
        Cmd::Latency(a) => {
            let r = openloop::run(
                a.req.target()?,
                openloop::OpenLoop {
                    rate: a.rate,
                    duration: Duration::from_secs_f64(a.secs.max(0.0)),
                    warmup: Duration::from_millis(500),
                    connections: a.connections,
                },
            )
            .await?;
            print_lat("latency (from the scheduled send)", &r.latency);
            print_lat("latency (from the ideal due time)", &r.from_due);
            print_lat("service time", &r.service);
            print_lat("generator lateness", &r.lateness);
            println!(
                "achieved {:.0} req/s; in 35–45 ms: {}",
                r.achieved_rate,
                r.service
                    .count_between(Duration::from_millis(35), Duration::from_millis(45))
            );
            print_failures(&r.outcome);
            Ok(())
        }
        Cmd::Throughput(a) => {
            let r = closedloop::run(
                a.req.target()?,
                closedloop::ClosedLoop {
                    connections: a.connections,
                    duration: Duration::from_secs_f64(a.secs.max(0.0)),
                    warmup: Duration::from_secs(1),
                },
            )
            .await?;
            println!("{:.0} req/s", r.rps);
            print_lat("latency", &r.latency);
            print_failures(&r.outcome);
            Ok(())
        }
        Cmd::Streams(a) => {
            let r = streams::run(
                a.req.target()?,
                streams::StreamSpec {
                    kind: a.kind,
                    streams: a.streams,
                    concurrency: a.concurrency,
                    expect_deltas: a.deltas,
                    expect_text: a.text,
                    delta_delay: Duration::from_millis(a.delay_ms),
                    stagger: Duration::from_micros(a.stagger_us),
                    timeout: Duration::from_secs(120),
                },
            )
            .await?;
            print_lat("TTFT", &r.ttft);
            print_lat("headers", &r.ttfb);
            print_lat("whole stream", &r.total);
            println!(
                "exact={} lost={} deltas={}/{} peak_concurrency={} stalls={} max_gap_beyond_pacing={}",
                r.outcome.ok,
                r.lost,
                r.deltas,
                r.expected_deltas,
                r.peak_concurrency,
                r.stalls,
                fmt_dur(r.max_excess_gap)
            );
            print_failures(&r.outcome);
            Ok(())
        }
        Cmd::Rss { pid } => {
            let m = rss::read(pid)?;
            println!(
                "VmRSS {:.1} MB, VmHWM {:.1} MB",
                rss::mb(m.rss_kb),
                rss::mb(m.hwm_kb)
            );
            Ok(())
        }
        Cmd::Populate(a) => {
            let token = admin::read_token(&a.token_file)?;
            let api = admin::admin(&a.grpc, &token).await?;
            for (what, r) in [
                (
                    "accounts",
                    admin::create_accounts(&api, a.accounts, a.concurrency, &a.group, &a.base_url)
                        .await?,
                ),
                (
                    "keys",
                    admin::create_keys(&api, a.keys, a.concurrency, &a.group).await?,
                ),
            ] {
                println!(
                    "{what}: {} created in {:.1} s ({:.0}/s), {} failed{}",
                    r.created,
                    r.elapsed.as_secs_f64(),
                    r.created as f64 / r.elapsed.as_secs_f64().max(1e-9),
                    r.failed,
                    r.first_error
                        .map(|e| format!("; first: {e}"))
                        .unwrap_or_default()
                );
            }
            Ok(())
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(run(cli))
}
