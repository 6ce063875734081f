//! `poolgate-mock-upstream`: the mock upstream (Codex backend, OpenAI, Anthropic Messages,
//! Azure OpenAI, OAuth; routes in `poolgate_testkit::mock`) as a process, for benchmarks,
//! black-box tests and the README demo. Prints `listening on http://ADDR` once ready and
//! serves until SIGTERM or SIGINT. Faults and usage are set through `/__mock/…` (see
//! `poolgate_testkit::mock::control`).

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use poolgate_testkit::mock::{MockConfig, MockUpstream};

#[derive(Debug, Parser)]
#[command(name = "poolgate-mock-upstream", version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "POOLGATE_MOCK_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Recent requests kept for `GET /__mock/requests` (0 disables recording).
    #[arg(long, env = "POOLGATE_MOCK_RECORD", default_value_t = 1000)]
    record: usize,
    /// Default number of text deltas per answer.
    #[arg(long, env = "POOLGATE_MOCK_DELTAS", default_value_t = 4)]
    deltas: u32,
    /// Default pause before each delta, in milliseconds.
    #[arg(long, env = "POOLGATE_MOCK_DELTA_DELAY_MS", default_value_t = 0)]
    delta_delay_ms: u64,
    /// Worker threads (default: one per core).
    #[arg(long, env = "POOLGATE_MOCK_THREADS")]
    threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    rt.build()
        .context("cannot start the runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let config = MockConfig {
        listen: args.listen,
        record_capacity: args.record,
        deltas: args.deltas.max(1),
        delta_delay_ms: args.delta_delay_ms,
        ..MockConfig::default()
    };
    use tokio::signal::unix::{SignalKind, signal};
    // Handlers first: whoever reads the address below may signal at once, and a signal that
    // arrives before they exist kills the process instead of stopping it cleanly.
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let mock = MockUpstream::start_with(config).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", mock.url()).context("cannot write to stdout")?;
        out.flush().context("cannot write to stdout")?;
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    mock.shutdown().await;
    Ok(())
}
