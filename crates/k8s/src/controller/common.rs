//! The reconcile steps both kinds share: the finalizer around apply and cleanup, finding the
//! store row a resource owns, the status write and the reporting of problems.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use kube::core::NamespaceResourceScope;
use kube::core::object::HasStatus;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource, ResourceExt};
use poolgate_core::{Account, ManagedBy, PlatformKey as StoredKey};
use poolgate_store::StoreError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::status::{self, Cond, Problem, Reason, reason_of};
use super::{Context, FINALIZER, obj_key};
use crate::Error;
use crate::crd::{Condition, PlatformKeyStatus, UpstreamAccountStatus, condition};

/// The `.status` of a managed kind: what the shared steps read and write of it.
pub(crate) trait Conditions: Serialize + Clone + Default + PartialEq + Send + Sync {
    fn conditions(&self) -> &[Condition];
    fn conditions_mut(&mut self) -> &mut Vec<Condition>;
}

impl Conditions for UpstreamAccountStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

impl Conditions for PlatformKeyStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
    fn conditions_mut(&mut self) -> &mut Vec<Condition> {
        &mut self.conditions
    }
}

/// A kind the controller reconciles into the store: what differs between the kinds.
pub(crate) trait Managed:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + HasStatus<Status: Conditions>
    + Clone
    + DeserializeOwned
    + Serialize
    + Debug
    + Send
    + Sync
    + 'static
{
    /// Brings the store and the status in step with the object.
    fn apply(&self, api: &Api<Self>, ctx: &Context) -> impl Future<Output = ActionResult> + Send;
    /// Removes what the object owns from the store (it is being deleted).
    fn cleanup(&self, ctx: &Context) -> impl Future<Output = ActionResult> + Send;
}

pub(crate) type ActionResult = Result<Action, Error>;

/// One reconcile under the cleanup finalizer; a success resets the object's error backoff.
pub(crate) async fn reconcile<K: Managed>(obj: Arc<K>, ctx: Arc<Context>) -> ActionResult {
    let ns = obj.namespace().ok_or(Error::MissingField("namespace"))?;
    let key = obj_key(obj.as_ref());
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(obj) => obj.apply(&api, &ctx).await,
            Finalizer::Cleanup(obj) => obj.cleanup(&ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.succeeded(&key);
    }
    result
}

/// A store row a resource can own.
pub(crate) trait Owned {
    fn managed(&self) -> (ManagedBy, Option<&str>);
}

impl Owned for Account {
    fn managed(&self) -> (ManagedBy, Option<&str>) {
        (self.managed_by, self.managed_ref.as_deref())
    }
}

impl Owned for StoredKey {
    fn managed(&self) -> (ManagedBy, Option<&str>) {
        (self.managed_by, self.managed_ref.as_deref())
    }
}

/// The row a status names, if it still exists and really belongs to the resource `mref`
/// (a status can be stale or copied from another object).
pub(crate) fn ours<T: Owned>(got: Result<T, StoreError>, mref: &str) -> Result<Option<T>, Error> {
    match got {
        Ok(row) if row.managed() == (ManagedBy::Kubernetes, Some(mref)) => Ok(Some(row)),
        Ok(_) | Err(StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A store delete, where a row already gone counts as deleted.
pub(crate) fn deleted(result: Result<(), StoreError>) -> Result<(), Error> {
    match result {
        Ok(()) | Err(StoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Returns `error`, first saying in `Ready` (best effort) why nothing changes while the store
/// is away.
pub(crate) async fn failed<K: Managed>(api: &Api<K>, obj: &K, error: Error) -> Error {
    if let Error::Store(se) = &error {
        let old = obj.status().cloned().unwrap_or_default();
        let mut st = old.clone();
        let ready = Cond::new(
            condition::READY,
            Some(false),
            Reason::StoreError,
            format!("poolgate's store failed: {se}; retrying"),
        );
        status::replace_condition(st.conditions_mut(), ready, obj.meta().generation);
        if st != old
            && let Err(pe) = status::apply(api, &obj.name_any(), &st).await
        {
            tracing::debug!(error = %pe, "cannot write the StoreError status");
        }
    }
    error
}

/// The end of an apply: writes `new` if it differs from the object's status, reports a new
/// problem once (log and Warning event), and picks when to look again.
pub(crate) async fn conclude<K: Managed>(
    api: &Api<K>,
    obj: &K,
    ctx: &Context,
    new: K::Status,
    problem: Option<Problem>,
) -> ActionResult {
    if Some(&new) != obj.status() {
        status::apply(api, &obj.name_any(), &new).await?;
    }
    match problem {
        Some(p) => {
            let old = obj.status().map_or(&[][..], |s| s.conditions());
            if reason_of(old, condition::READY) != Some(p.reason.as_str()) {
                tracing::info!(object = %obj_key(obj), reason = %p.reason, message = %p.message, "not reconciled");
                ctx.event(obj, EventType::Warning, p.reason.as_str(), p.message)
                    .await;
            }
            Ok(Action::requeue(ctx.config.invalid_retry))
        }
        None => Ok(Action::requeue(ctx.config.refresh_interval)),
    }
}

/// `want` if it differs from `have`: one field of a store patch.
pub(crate) fn changed<T: PartialEq + Clone>(have: &T, want: &T) -> Option<T> {
    (have != want).then(|| want.clone())
}

/// The store's name for a resource: at most 128 characters, resource names may be longer.
pub(crate) fn store_name<K: Resource>(obj: &K) -> String {
    obj.name_any().chars().take(128).collect()
}
