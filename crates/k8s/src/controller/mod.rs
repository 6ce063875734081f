//! Reconciles `UpstreamAccount` and `PlatformKey` resources into the store.
//!
//! The store stays the system of record: each resource owns one account or key there
//! (`managed_by=kubernetes`, `managed_ref` = `Kind namespace/name`), guarded by the
//! `poolgate.dev/cleanup` finalizer so deleting the resource removes it from the store. Status
//! is written by server-side apply on the status subresource, only when it changed, so the
//! watch event a status write causes settles after one more (no-op) reconcile.
//!
//! Failure policy, so nothing ever hot-loops:
//! - a problem a person must fix (missing Secret, bad auth.json, invalid spec) is reported as
//!   `Ready=False` with a reason and retried slowly ([`Config::invalid_retry`]) or when a
//!   watched object changes;
//! - a failing store or Kubernetes API is retried with a doubling delay per object
//!   ([`Config::error_backoff`] up to [`Config::max_backoff`]);
//! - a healthy object is revisited every [`Config::refresh_interval`] to refresh usage and
//!   cooldown in its status.

mod account;
mod common;
mod key;
mod status;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use poolgate_store::Store;
use tokio::sync::watch;

use crate::Error;
use crate::crd::{PlatformKey, UpstreamAccount};

pub use account::reconcile as reconcile_account;
pub use key::reconcile as reconcile_key;
pub use status::Reason;

/// The finalizer guarding the store rows of a resource.
pub const FINALIZER: &str = "poolgate.dev/cleanup";
/// Field manager of the controller's server-side applies.
pub const FIELD_MANAGER: &str = "poolgate-controller";
/// Who the store's audit log names for the controller's writes.
pub const ACTOR: &str = "kubernetes-controller";
/// Label on the Secrets the controller creates for platform keys.
pub const PLATFORM_KEY_SECRET_LABEL: &str = "poolgate.dev/platform-key";

/// Timing of the controller.
#[derive(Debug, Clone)]
pub struct Config {
    /// How often a healthy object's status is refreshed (usage, cooldown, availability).
    pub refresh_interval: Duration,
    /// When an object a person must fix is looked at again (sooner if a watched object
    /// changes).
    pub invalid_retry: Duration,
    /// First retry delay after a store or API failure; doubles per consecutive failure.
    pub error_backoff: Duration,
    pub max_backoff: Duration,
    /// Reconciles running at once (per kind).
    pub concurrency: u16,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            refresh_interval: Duration::from_secs(60),
            invalid_retry: Duration::from_secs(300),
            error_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            concurrency: 8,
        }
    }
}

/// What every reconcile shares.
pub struct Context {
    pub(crate) client: Client,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) config: Config,
    recorder: Recorder,
    /// Consecutive failures per object (`Kind ns/name`), for the error backoff. An entry
    /// lives only between a failure and the next success, so the map stays as small as the
    /// set of failing objects.
    failures: Mutex<HashMap<String, u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("store", &self.store.backend())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(client: Client, store: Arc<dyn Store>, config: Config) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: std::env::var("POOLGATE_NODE_NAME")
                .or_else(|_| std::env::var("HOSTNAME"))
                .ok()
                .filter(|s| !s.is_empty()),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            store,
            config,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes an Event about `obj`. Events are best effort: a failure is logged, never
    /// allowed to fail the reconcile.
    pub(crate) async fn event<K>(&self, obj: &K, type_: EventType, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(
                object = %obj_key(obj),
                reason,
                error = %e,
                "cannot publish a Kubernetes event"
            );
        }
    }

    /// A Normal event: something the controller did.
    pub(crate) async fn normal<K>(&self, obj: &K, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        self.event(obj, EventType::Normal, reason, note).await;
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        // A poisoned map only holds retry counters; keep using it.
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn succeeded(&self, key: &str) {
        self.lock_failures().remove(key);
    }

    /// Records one more failure of `key` and returns the delay before its retry.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.lock_failures();
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let factor = 1u32 << (*n - 1).min(16);
        self.config
            .error_backoff
            .saturating_mul(factor)
            .min(self.config.max_backoff)
    }
}

/// `Kind namespace/name`: how the store and the logs name a resource.
pub fn obj_key<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// The error policy of both controllers: a doubling, capped delay per object, so a failing
/// store or API server is never hammered.
pub fn error_policy<K>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let key = obj_key(obj.as_ref());
    let delay = ctx.backoff(&key);
    tracing::warn!(object = %key, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Runs both controllers on `namespace` until `shutdown` resolves, then stops at once
/// (reconciles in flight are cancelled; each store write is one transaction, so a cancelled
/// one leaves nothing half-done).
pub async fn run(
    client: Client,
    namespace: String,
    store: Arc<dyn Store>,
    shutdown: impl Future<Output = ()>,
) {
    run_with(client, namespace, store, Config::default(), shutdown).await;
}

/// [`run`] with explicit timing.
pub async fn run_with(
    client: Client,
    namespace: String,
    store: Arc<dyn Store>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) {
    let controller_config = kube::runtime::controller::Config::default()
        .concurrency(config.concurrency)
        .debounce(Duration::from_millis(500));
    let ctx = Arc::new(Context::new(client.clone(), store, config));

    let accounts_api: Api<UpstreamAccount> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let accounts = Controller::new(accounts_api, watcher::Config::default())
        .with_config(controller_config.clone());
    let referencing = accounts.store();
    // A Secret change (e.g. a rotated API key or a new auth.json) re-reconciles every
    // account that references it.
    let accounts = accounts
        .watches(
            secrets,
            watcher::Config::default(),
            move |secret: Secret| {
                let name = secret.name_any();
                referencing
                    .state()
                    .into_iter()
                    .filter(|ua| ua.spec.credentials_secret_ref.name == name)
                    .map(|ua| ObjectRef::from_obj(ua.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile_account, error_policy, ctx.clone())
        .for_each(|r| async move { log_result(r) });

    let keys_api: Api<PlatformKey> = Api::namespaced(client.clone(), &namespace);
    let key_secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let keys = Controller::new(keys_api, watcher::Config::default())
        .with_config(controller_config)
        // The Secrets holding generated keys: deleting or editing one re-creates it.
        .owns(
            key_secrets,
            watcher::Config::default().labels(PLATFORM_KEY_SECRET_LABEL),
        )
        .run(reconcile_key, error_policy, ctx)
        .for_each(|r| async move { log_result(r) });

    tracing::info!(%namespace, "Kubernetes controller started (UpstreamAccount, PlatformKey)");
    tokio::select! {
        () = shutdown => {}
        _ = futures::future::join(accounts, keys) => {}
    }
    tracing::info!(%namespace, "Kubernetes controller stopped");
}

fn log_result<K, E1, E2>(
    result: Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<E1, E2>>,
) where
    K: Resource,
    E1: std::error::Error + 'static,
    E2: std::error::Error + 'static,
{
    use kube::runtime::controller::Error as CtrlError;
    match result {
        Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
        // Already logged with its retry delay by the error policy.
        Err(CtrlError::ReconcilerFailed(..)) => {}
        Err(CtrlError::ObjectNotFound(obj)) => {
            tracing::debug!(object = %obj, "object gone before its reconcile")
        }
        Err(e) => tracing::warn!(
            error = %e,
            "Kubernetes watch failed (are the poolgate CRDs installed and the RBAC rules in place?)"
        ),
    }
}

/// Runs the controller while `leadership` is true: starts it when this replica becomes the
/// leader, stops it at once when leadership is lost, and returns when the sender is dropped
/// (the process is shutting down).
pub async fn run_while_leading(
    client: Client,
    namespace: String,
    store: Arc<dyn Store>,
    leadership: watch::Receiver<bool>,
) {
    run_while_leading_with(client, namespace, store, Config::default(), leadership).await;
}

/// [`run_while_leading`] with explicit timing.
pub async fn run_while_leading_with(
    client: Client,
    namespace: String,
    store: Arc<dyn Store>,
    config: Config,
    mut leadership: watch::Receiver<bool>,
) {
    loop {
        if leadership.wait_for(|leading| *leading).await.is_err() {
            return;
        }
        let mut lost = leadership.clone();
        let lost = async move {
            // Resolves when leadership is lost or its sender is gone.
            let _ = lost.wait_for(|leading| !*leading).await;
        };
        run_with(
            client.clone(),
            namespace.clone(),
            store.clone(),
            config.clone(),
            lost,
        )
        .await;
        if leadership.has_changed().is_err() {
            return;
        }
    }
}
