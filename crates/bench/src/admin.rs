//! The control plane's gRPC APIs as the benchmark uses them: bulk creation of accounts and
//! platform keys through the admin API (many calls in flight on one HTTP/2 connection), and a
//! node-token `SnapshotService.Watch` client that weighs snapshot messages.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use poolgate_proto::v1 as pb;
use poolgate_proto::v1::admin_service_client::AdminServiceClient;
use poolgate_proto::v1::snapshot_service_client::SnapshotServiceClient;
use prost::Message;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// A large snapshot (100,000 keys) is one message of tens of MB.
const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;
/// Stop a bulk run after this many failed calls: something is wrong, not slow.
const MAX_BULK_FAILURES: u64 = 50;
/// gRPC frames each message with a 5-byte prefix (compression flag + length).
pub const GRPC_FRAME_BYTES: usize = 5;

#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

type Admin = AdminServiceClient<InterceptedService<Channel, Bearer>>;

pub fn read_token(path: &str) -> anyhow::Result<String> {
    let t = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let t = t.trim();
    if t.is_empty() {
        bail!("{path} is empty");
    }
    Ok(t.to_string())
}

async fn channel(url: &str) -> anyhow::Result<Channel> {
    Endpoint::from_shared(url.to_string())
        .with_context(|| format!("invalid gRPC URL {url}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to the control plane at {url}"))
}

fn bearer(token: &str) -> anyhow::Result<Bearer> {
    let v: MetadataValue<Ascii> = format!("Bearer {token}")
        .parse()
        .map_err(|_| anyhow!("the token is not a valid header value"))?;
    Ok(Bearer(v))
}

pub async fn admin(url: &str, token: &str) -> anyhow::Result<Admin> {
    Ok(
        AdminServiceClient::with_interceptor(channel(url).await?, bearer(token)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
}

#[derive(Debug, Clone)]
pub struct BulkResult {
    pub created: u64,
    pub failed: u64,
    pub elapsed: Duration,
    pub first_error: Option<String>,
}

/// Runs `make(i)` for i in 0..count with `concurrency` calls in flight.
async fn bulk<F, Fut>(count: usize, concurrency: usize, make: F) -> anyhow::Result<BulkResult>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
{
    let started = Instant::now();
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let created = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (make, next, created, failed, first_error) = (
            make.clone(),
            next.clone(),
            created.clone(),
            failed.clone(),
            first_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || failed.load(Ordering::Relaxed) >= MAX_BULK_FAILURES {
                    break;
                }
                match make(i).await {
                    Ok(()) => {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut g) = first_error.lock() {
                            g.get_or_insert_with(|| {
                                format!("{:?}: {}", status.code(), status.message())
                            });
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| anyhow!("bulk worker failed: {e}"))?;
    }
    let first_error = first_error.lock().ok().and_then(|mut g| g.take());
    Ok(BulkResult {
        created: created.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        first_error,
    })
}

/// `count` OpenAI API-key accounts in `group`, all pointing at `base_url`.
pub async fn create_accounts(
    api: &Admin,
    count: usize,
    concurrency: usize,
    group: &str,
    base_url: &str,
) -> anyhow::Result<BulkResult> {
    let (api, group, base_url) = (api.clone(), group.to_string(), base_url.to_string());
    bulk(count, concurrency, move |i| {
        let mut api = api.clone();
        let req = pb::CreateAccountRequest {
            provider: "openai".into(),
            name: format!("{group}-{i:06}"),
            group: group.clone(),
            base_url: base_url.clone(),
            api_key: format!("sk-bench-{group}-{i:06}"),
            ..Default::default()
        };
        async move { api.create_account(req).await.map(|_| ()) }
    })
    .await
}

/// `count` platform keys allowed on `group`.
pub async fn create_keys(
    api: &Admin,
    count: usize,
    concurrency: usize,
    group: &str,
) -> anyhow::Result<BulkResult> {
    let (api, group) = (api.clone(), group.to_string());
    bulk(count, concurrency, move |i| {
        let mut api = api.clone();
        let req = pb::CreateKeyRequest {
            name: format!("{group}-key-{i:06}"),
            account_groups: vec![group.clone()],
            ..Default::default()
        };
        async move { api.create_key(req).await.map(|_| ()) }
    })
    .await
}

/// A new platform key for `group`; returns its plaintext.
pub async fn create_key(api: &Admin, name: &str, group: &str) -> anyhow::Result<String> {
    let resp = api
        .clone()
        .create_key(pb::CreateKeyRequest {
            name: name.into(),
            account_groups: vec![group.into()],
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("CreateKey failed: {:?}: {}", s.code(), s.message()))?;
    Ok(resp.into_inner().key)
}

/// The id of one account of `group`.
pub async fn some_account(api: &Admin, group: &str) -> anyhow::Result<String> {
    let resp = api
        .clone()
        .list_accounts(pb::ListAccountsRequest {
            group: group.into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("ListAccounts failed: {:?}: {}", s.code(), s.message()))?;
    resp.into_inner()
        .accounts
        .into_iter()
        .next()
        .map(|a| a.id)
        .ok_or_else(|| anyhow!("no account in group {group}"))
}

/// Sets one routing field of an account (its priority; bulk accounts are created with 0).
pub async fn touch_account(api: &Admin, id: &str, priority: i32) -> anyhow::Result<()> {
    api.clone()
        .update_account(pb::UpdateAccountRequest {
            id: id.into(),
            priority: Some(priority),
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow!("UpdateAccount failed: {:?}: {}", s.code(), s.message()))?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct SnapshotWeights {
    /// The first message of a fresh watch (the whole snapshot).
    pub full_bytes: usize,
    pub full_accounts: usize,
    pub full_keys: usize,
    /// The message caused by changing one account.
    pub delta_bytes: usize,
    pub delta_accounts: usize,
    pub delta_keys: usize,
}

fn weigh(u: &pb::SnapshotUpdate) -> usize {
    u.encoded_len() + GRPC_FRAME_BYTES
}

/// Watches as a gateway from version 0, weighs the full snapshot, then changes one account
/// and weighs the delta that follows (gRPC payload + frame prefix; HTTP/2 framing excluded).
pub async fn weigh_snapshot(
    url: &str,
    node_token: &str,
    api: &Admin,
    account_id: &str,
) -> anyhow::Result<SnapshotWeights> {
    let mut client =
        SnapshotServiceClient::with_interceptor(channel(url).await?, bearer(node_token)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut stream = client
        .watch(pb::WatchRequest {
            node_id: "poolgate-bench".into(),
            have_version: 0,
        })
        .await
        .map_err(|s| anyhow!("Watch failed: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(60), stream.next())
        .await
        .map_err(|_| anyhow!("no snapshot within 60 s"))?
        .ok_or_else(|| anyhow!("the watch ended"))?
        .map_err(|s| anyhow!("Watch: {:?}: {}", s.code(), s.message()))?;
    if !first.full {
        bail!("the first message of a watch from version 0 is not a full snapshot");
    }
    let (full_bytes, full_accounts, full_keys) = (
        weigh(&first),
        first.upsert_accounts.len(),
        first.upsert_keys.len(),
    );
    // Let changes still being coalesced (gateway reports, usage polls) pass first.
    let quiet = Duration::from_millis(700);
    let settle_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < settle_until {
        match tokio::time::timeout(quiet, stream.next()).await {
            Err(_) => break,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(s))) => bail!("Watch: {:?}: {}", s.code(), s.message()),
            Ok(None) => bail!("the watch ended"),
        }
    }
    touch_account(api, account_id, 7).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let u = tokio::time::timeout(left, stream.next())
            .await
            .map_err(|_| anyhow!("no delta within 10 s of the change"))?
            .ok_or_else(|| anyhow!("the watch ended"))?
            .map_err(|s| anyhow!("Watch: {:?}: {}", s.code(), s.message()))?;
        if u.upsert_accounts
            .iter()
            .any(|a| a.account.as_ref().is_some_and(|acc| acc.id == account_id))
        {
            // Put the priority back so the change does not steer the routing of later runs.
            touch_account(api, account_id, 0).await?;
            return Ok(SnapshotWeights {
                full_bytes,
                full_accounts,
                full_keys,
                delta_bytes: weigh(&u),
                delta_accounts: u.upsert_accounts.len(),
                delta_keys: u.upsert_keys.len(),
            });
        }
    }
}
