//! Snapshot stream sizes and times with a large pool: 10,000 Codex accounts (access tokens of
//! real size) and 100,000 platform keys, on SQLite and on PostgreSQL. Prints the hub's initial
//! load time, the full snapshot's encoded size and time to arrive over gRPC on loopback, and
//! the encoded size and end-to-end latency (admin write → delta at the watcher) of a
//! one-account change.
//!
//! PostgreSQL: a throwaway cluster (`PgServer`), or `POOLGATE_TEST_DATABASE_URL` when no
//! PostgreSQL binaries are installed. Run: `cargo bench -p poolgate-control --bench snapshot`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use poolgate_control::{BootstrapToken, ControlConfig, NodeToken};
use poolgate_core::authjson::ImportedCodexAuth;
use poolgate_core::key::{PLATFORM_KEY_PREFIX, format_secret, hash_secret, visible_prefix};
use poolgate_core::{
    AccountPatch, CodexIdentity, KeySpec, KeyStatus, ManagedBy, OAuthTokens, PlatformKey, Secret,
};
use poolgate_proto::v1 as pb;
use poolgate_proto::v1::snapshot_service_client::SnapshotServiceClient;
use poolgate_store::{Cipher, PgStore, SqliteStore, Store};
use prost::Message;
use tonic::transport::Channel;

const ACCOUNTS: usize = 10_000;
const KEYS: usize = 100_000;
const WRITERS: usize = 8;
const ADMIN: &str = "pga_bench-admin";
const NODE: &str = "pgn_bench-node";

/// A string of `n` base64url-looking characters, distinct per `seed`.
fn filler(seed: usize, n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut x = (seed as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x % 64) as usize] as char
        })
        .collect()
}

/// A Codex login whose access token has the size of a real one (~1.5 KB JWT).
fn login(i: usize) -> ImportedCodexAuth {
    let email = format!("user{i:05}@example.com");
    ImportedCodexAuth {
        identity: CodexIdentity {
            subject: format!("auth0|{}", filler(i, 24)),
            chatgpt_account_id: format!("{:08x}-4b5a-6978-8a9b-0c1d2e3f4a5b", i),
            chatgpt_user_id: Some(format!("user-{}", filler(i + 1, 24))),
            email: Some(email.clone()),
            plan_type: Some("pro".into()),
        },
        tokens: OAuthTokens {
            id_token: Secret::new(format!(
                "{}.{}.{}",
                filler(i, 36),
                filler(i + 2, 700),
                filler(i + 3, 342)
            )),
            access_token: Secret::new(format!(
                "{}.{}.{}",
                filler(i, 107),
                filler(i + 4, 1088),
                filler(i + 5, 342)
            )),
            refresh_token: Secret::new(format!("rt_{}", filler(i + 6, 60))),
            expires_at_ms: Some(1_900_000_000_000),
            last_refresh_ms: None,
        },
        label: email,
    }
}

fn key(i: usize) -> PlatformKey {
    let mut random = [0u8; 32];
    random[..8].copy_from_slice(&(i as u64).to_le_bytes());
    let plaintext = format_secret(PLATFORM_KEY_PREFIX, &random);
    PlatformKey {
        id: format!("key_{i:06}"),
        spec: KeySpec {
            name: format!("service-{i:06}"),
            allowed_models: vec!["gpt-5*".into()],
            account_groups: vec!["default".into()],
            ..Default::default()
        },
        prefix: visible_prefix(&plaintext),
        hash: hash_secret(&plaintext),
        status: KeyStatus::Active,
        managed_by: ManagedBy::Api,
        managed_ref: None,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

async fn fill(store: Arc<dyn Store>) -> anyhow::Result<()> {
    anyhow::ensure!(
        store.current_version().await? == 0,
        "the database is not empty"
    );
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let items: Vec<ImportedCodexAuth> = (w..ACCOUNTS).step_by(WRITERS).map(login).collect();
            for chunk in items.chunks(250) {
                store
                    .import_codex(chunk.to_vec(), "default", "bench")
                    .await?;
            }
            for i in (w..KEYS).step_by(WRITERS) {
                store.create_key(key(i), "bench").await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn watch_request(have_version: i64) -> anyhow::Result<tonic::Request<pb::WatchRequest>> {
    let mut r = tonic::Request::new(pb::WatchRequest {
        node_id: "bench-gw".into(),
        have_version,
    });
    r.metadata_mut()
        .insert("authorization", format!("Bearer {NODE}").parse()?);
    Ok(r)
}

async fn bench_backend(name: &str, store: Arc<dyn Store>) -> anyhow::Result<()> {
    let t = Instant::now();
    fill(store.clone())
        .await
        .with_context(|| format!("filling {name}"))?;
    println!(
        "{name}: created {ACCOUNTS} Codex accounts and {KEYS} keys in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let full = store.load_all_states().await?;
    println!(
        "{name}: Store::load_all_states (one query each, decrypting every credential): {:.0} ms",
        ms(t.elapsed())
    );
    drop(full);

    let mut config = ControlConfig::new("127.0.0.1:0", "127.0.0.1:0");
    config.bootstrap_token =
        Some(BootstrapToken::from_plaintext(ADMIN).map_err(anyhow::Error::msg)?);
    config.node_token = Some(NodeToken::from_plaintext(NODE).map_err(anyhow::Error::msg)?);
    let cp = poolgate_control::bind(config, store.clone()).await?;
    let (addr, hub) = (cp.grpc_addr(), cp.hub());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let server = tokio::spawn(cp.run(async {
        let _ = stopped.await;
    }));
    // The first subscription waits for the hub's initial load.
    drop(hub.subscribe(0).await?);
    println!(
        "{name}: hub ready (initial load into memory) after {:.0} ms",
        ms(started.elapsed())
    );

    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = SnapshotServiceClient::new(channel)
        .max_decoding_message_size(poolgate_proto::MAX_SNAPSHOT_MESSAGE_BYTES);
    for attempt in [
        "first (builds the shared full snapshot)",
        "second (shared copy)",
    ] {
        let t = Instant::now();
        let mut stream = client.watch(watch_request(0)?).await?.into_inner();
        let msg = stream
            .message()
            .await?
            .context("the stream ended before the full snapshot")?;
        let elapsed = t.elapsed();
        anyhow::ensure!(
            msg.full && msg.upsert_accounts.len() == ACCOUNTS && msg.upsert_keys.len() == KEYS
        );
        println!(
            "{name}: full snapshot over gRPC, {attempt}: {:.1} MB encoded, {:.0} ms to arrive",
            msg.encoded_len() as f64 / 1e6,
            ms(elapsed)
        );
    }

    let mut stream = client
        .watch(watch_request(store.current_version().await?)?)
        .await?
        .into_inner();
    let some_account = store
        .list_accounts(
            &Default::default(),
            &poolgate_core::page::PageRequest::first(1),
        )
        .await?
        .items
        .remove(0);
    let mut sizes = Vec::new();
    let mut latencies = Vec::new();
    for p in 1..=20 {
        let t = Instant::now();
        store
            .update_account(
                &some_account.id,
                &AccountPatch {
                    priority: Some(p),
                    ..Default::default()
                },
                "bench",
            )
            .await?;
        let d = stream
            .message()
            .await?
            .context("the stream ended before the delta")?;
        latencies.push(t.elapsed());
        anyhow::ensure!(d.upsert_accounts.len() == 1 && !d.full);
        sizes.push(d.encoded_len());
    }
    latencies.sort();
    println!(
        "{name}: one-account delta: {} bytes encoded; write → delta at the watcher p50 {:.1} ms, max {:.1} ms (includes the ~20 ms coalescing window)",
        sizes[0],
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() - 1])
    );
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
