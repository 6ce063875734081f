//! Admin list latency with 10,000 accounts: ListAccounts paged over gRPC on loopback (page
//! sizes 100 and 1000) against the same listing through the Store directly, on SQLite and on
//! PostgreSQL. Prints p50/p99 per call and the gRPC/Store ratio.
//!
//! PostgreSQL: a throwaway cluster (`PgServer`), or `POOLGATE_TEST_DATABASE_URL` when no
//! PostgreSQL binaries are installed. Run: `cargo bench -p poolgate-control --bench admin_list`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use poolgate_control::{BootstrapToken, ControlConfig};
use poolgate_core::page::PageRequest;
use poolgate_core::{AccountSpec, Credentials, Provider, Secret};
use poolgate_proto::v1 as pb;
use poolgate_proto::v1::admin_service_client::AdminServiceClient;
use poolgate_store::{AccountFilter, Cipher, PgStore, SqliteStore, Store, listing};
use tonic::transport::Channel;

const ACCOUNTS: usize = 10_000;
const TOKEN: &str = "pga_bench-token";
/// Full passes over the 10,000 accounts per page size.
const PASSES: [(u32, usize); 2] = [(100, 5), (1000, 20)];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn fill(store: Arc<dyn Store>) -> anyhow::Result<()> {
    if store
        .list_accounts(&AccountFilter::default(), &PageRequest::first(1))
        .await?
        .items
        .len()
        == 1
    {
        anyhow::bail!("the database is not empty");
    }
    // A few writers at once: PostgreSQL takes them in parallel, SQLite serialises them.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..ACCOUNTS).step_by(8) {
                let mut spec = AccountSpec::new(Provider::OpenAi, format!("bench-{i:05}"));
                spec.group = format!("g{}", i % 10);
                spec.tags = vec!["bench".into()];
                let creds = Credentials::ApiKey {
                    key: Secret::new(format!("sk-bench-{i}")),
                };
                store
                    .create_account(spec, Some(creds), None, "bench")
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Pages through every account `passes` times; returns each call's latency.
async fn via_grpc(
    client: &mut AdminServiceClient<Channel>,
    page_size: u32,
    passes: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut calls = Vec::new();
    for _ in 0..passes {
        let (mut token, mut seen) = (String::new(), 0usize);
        loop {
            let mut req = tonic::Request::new(pb::ListAccountsRequest {
                page_size,
                page_token: token.clone(),
                ..Default::default()
            });
            req.metadata_mut()
                .insert("authorization", format!("Bearer {TOKEN}").parse()?);
            let t = Instant::now();
            let page = client.list_accounts(req).await?.into_inner();
            calls.push(t.elapsed());
            seen += page.accounts.len();
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        anyhow::ensure!(
            seen == ACCOUNTS,
            "listed {seen} accounts, expected {ACCOUNTS}"
        );
    }
    Ok(calls)
}

async fn via_store(
    store: &dyn Store,
    page_size: u32,
    passes: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut calls = Vec::new();
    for _ in 0..passes {
        let (mut token, mut seen) = (String::new(), 0usize);
        loop {
            let t = Instant::now();
            let req = PageRequest::parse(listing::ACCOUNTS, page_size, &token)?;
            let page = store.list_accounts(&AccountFilter::default(), &req).await?;
            calls.push(t.elapsed());
            seen += page.items.len();
            match page.next {
                Some(next) => token = next,
                None => break,
            }
        }
        anyhow::ensure!(
            seen == ACCOUNTS,
            "listed {seen} accounts, expected {ACCOUNTS}"
        );
    }
    Ok(calls)
}

async fn bench_backend(name: &str, store: Arc<dyn Store>) -> anyhow::Result<()> {
    let t = Instant::now();
    fill(store.clone())
        .await
        .with_context(|| format!("filling {name}"))?;
    println!(
        "{name}: created {ACCOUNTS} accounts in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let mut config = ControlConfig::new("127.0.0.1:0", "127.0.0.1:0");
    config.bootstrap_token =
        Some(BootstrapToken::from_plaintext(TOKEN).map_err(anyhow::Error::msg)?);
    let cp = poolgate_control::bind(config, store.clone()).await?;
    let addr = cp.grpc_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(cp.run(async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = AdminServiceClient::new(channel).max_decoding_message_size(64 << 20);

    // Warm both paths (statement caches, connections) before measuring.
    via_grpc(&mut client, 1000, 1).await?;
    via_store(store.as_ref(), 1000, 1).await?;

    for (size, passes) in PASSES {
        let mut grpc = via_grpc(&mut client, size, passes).await?;
        let mut direct = via_store(store.as_ref(), size, passes).await?;
        grpc.sort();
        direct.sort();
        let (g50, g99) = (percentile(&grpc, 0.50), percentile(&grpc, 0.99));
        let (d50, d99) = (percentile(&direct, 0.50), percentile(&direct, 0.99));
        println!(
            "{name:<8} page_size={size:<5} calls={:<4} gRPC p50={:>8.2}ms p99={:>8.2}ms | Store p50={:>8.2}ms p99={:>8.2}ms | ratio p50={:.2}x p99={:.2}x",
            grpc.len(),
            ms(g50),
            ms(g99),
            ms(d50),
            ms(d99),
            g50.as_secs_f64() / d50.as_secs_f64().max(1e-9),
            g99.as_secs_f64() / d99.as_secs_f64().max(1e-9),
        );
    }
    let _ = stop.send(());
    server.await??;
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let sqlite = SqliteStore::open(&dir.path().join("bench.db"), Cipher::new(&[9u8; 32]))?;
    bench_backend("sqlite", Arc::new(sqlite)).await?;

    // Prefer a private cluster; fall back to the server the test scripts provide.
    let (_server, admin_url) = match poolgate_testkit::pg::PgServer::start() {
        Ok(s) => {
            let url = s.url();
            (Some(s), url)
        }
        Err(e) => match std::env::var(poolgate_testkit::pg::DATABASE_URL_ENV) {
            Ok(url) => (None, url),
            Err(_) => {
                println!(
                    "postgres: skipped ({e:#}; set {} to use a running server)",
                    poolgate_testkit::pg::DATABASE_URL_ENV
                );
                return Ok(());
            }
        },
    };
    let url = poolgate_testkit::pg::create_database(&admin_url).await?;
    let pg = PgStore::connect(&url, Cipher::new(&[9u8; 32])).await?;
    bench_backend("postgres", Arc::new(pg)).await
}
