//! Leader election on a `coordination.k8s.io/v1` Lease, for the control plane in Kubernetes.
//!
//! Each replica runs a [`LeaseElector`]: every retry period it reads the Lease and, when the
//! Lease is absent, released, expired or already ours, writes itself in as holder with a fresh
//! `renewTime`. Writes are optimistic: a replace carries the `resourceVersion` that was read, so
//! when two replicas race only one write wins and the other gets `409 Conflict`.
//!
//! The holder reports leadership lost *at once* when it has not renewed for the renew deadline
//! (10 s by default), well before the Lease expires for the others (15 s): by the time another
//! replica may take over, the old holder has already stopped its jobs. A Lease counts as
//! expired when nobody has written it for the lease duration as seen on our own clock (so
//! clock skew between nodes does not matter), or when its `renewTime` is older than the lease
//! duration by the wall clock (so a Lease abandoned long ago is taken at once).
//!
//! A clean shutdown clears the holder, so another replica takes over at its next try instead of
//! waiting for the Lease to expire.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Error;

/// The Lease the control plane elects on, unless configured otherwise.
pub const DEFAULT_LEASE_NAME: &str = "poolgate-control-leader";

/// Timing of the Lease elector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long others wait after the holder's last renewal before taking the Lease (written
    /// to the Lease in whole seconds, rounded up).
    pub lease_duration: Duration,
    /// The holder reports leadership lost when it could not renew for this long.
    pub renew_deadline: Duration,
    /// How often the holder renews and the others try to acquire.
    pub retry_period: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        LeaseConfig {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl LeaseConfig {
    /// The retry period must fit in the renew deadline, which must end before the Lease
    /// expires: otherwise a holder could still act after another replica took over.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::LeaseConfig(m.to_string()));
        if self.retry_period < Duration::from_millis(10) {
            return bad("the retry period must be at least 10ms");
        }
        if self.renew_deadline <= self.retry_period {
            return bad("the renew deadline must be longer than the retry period");
        }
        if self.lease_duration <= self.renew_deadline {
            return bad("the lease duration must be longer than the renew deadline");
        }
        if self.lease_duration > Duration::from_secs(3600) {
            return bad("the lease duration must be at most 1h");
        }
        Ok(())
    }

    fn lease_duration_secs(&self) -> i32 {
        let secs = self
            .lease_duration
            .as_secs()
            .saturating_add(u64::from(self.lease_duration.subsec_nanos() > 0));
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// A running Lease elector. Its [`leadership`](LeaseElector::leadership) flag is true while
/// this replica holds the Lease. [`shutdown`](LeaseElector::shutdown) releases the Lease;
/// dropping the elector without that stops it (the flag turns false) and leaves the Lease to
/// expire.
pub struct LeaseElector {
    rx: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LeaseElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseElector")
            .field("leading", &*self.rx.borrow())
            .finish_non_exhaustive()
    }
}

/// Checks a Lease name: a DNS subdomain (what the API server accepts for object names).
pub fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::LeaseConfig(format!(
            "invalid Lease name {name:?}: use lowercase letters, digits, '-' and '.'"
        )))
    }
}

impl LeaseElector {
    /// Starts electing on the Lease `namespace/name`, as `identity` (the pod name: unique per
    /// replica, written to `holderIdentity`).
    pub fn spawn(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        config: LeaseConfig,
    ) -> Result<LeaseElector, Error> {
        config.validate()?;
        check_name(name)?;
        if namespace.is_empty() {
            return Err(Error::LeaseConfig("the namespace is empty".into()));
        }
        if identity.trim().is_empty() || identity.len() > 253 {
            return Err(Error::LeaseConfig(
                "the holder identity must be 1 to 253 characters".into(),
            ));
        }
        let (tx, rx) = watch::channel(false);
        let (stop_tx, stop_rx) = oneshot::channel();
        let elector = Elector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            config,
            flag: Flag(tx),
            observed: None,
            last_holder: None,
        };
        let task = tokio::spawn(elector.run(stop_rx));
        Ok(LeaseElector {
            rx,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    /// True while this replica holds the Lease. Turns false at once when leadership is lost,
    /// and when the elector stops.
    pub fn leadership(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }

    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Stops electing: reports not leading first, then clears the holder (when we hold the
    /// Lease), so another replica takes over at its next try.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for LeaseElector {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The leadership flag; reads false once the elector is gone, however it ended.
struct Flag(watch::Sender<bool>);

impl Flag {
    fn set(&self, leading: bool) {
        self.0
            .send_if_modified(|v| std::mem::replace(v, leading) != leading);
    }
}

impl Drop for Flag {
    fn drop(&mut self) {
        self.0.send_replace(false);
    }
}

/// What a try to acquire or renew found.
enum Attempt {
    /// We hold the Lease; this is the object as the API server stored it.
    Held(Box<Lease>),
    /// Someone else holds a live Lease.
    HeldBy(String),
    /// Our write lost a race (409): someone else wrote the Lease first.
    Conflict,
}

/// The holder and resourceVersion we last saw, and when (on our clock) we first saw them.
/// Every renewal is a write, so an unchanged resourceVersion means nobody renewed.
struct Observed {
    holder: Option<String>,
    version: Option<String>,
    at: Instant,
}

enum Ended {
    Stop,
    Lost,
}

struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    config: LeaseConfig,
    flag: Flag,
    observed: Option<Observed>,
    last_holder: Option<String>,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 || s.is_conflict() || s.is_already_exists())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Elector {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut last_error: Option<String> = None;
        loop {
            let attempt = tokio::time::timeout(self.config.renew_deadline, self.attempt(false));
            let r = tokio::select! {
                biased;
                _ = &mut stop => return,
                r = attempt => r,
            };
            match r {
                Ok(Ok(Attempt::Held(lease))) => {
                    last_error = None;
                    if let Ended::Stop = self.lead(*lease, &mut stop).await {
                        return;
                    }
                }
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    last_error = None;
                    if self.last_holder.as_deref() != Some(holder.as_str()) {
                        tracing::info!(
                            lease = %self.name,
                            leader = %holder,
                            "leader election: another replica leads"
                        );
                        self.last_holder = Some(holder);
                    }
                }
                Ok(Ok(Attempt::Conflict)) => {
                    tracing::debug!(lease = %self.name, "leader election: lost a race for the Lease");
                }
                Ok(Err(e)) => self.failed(&mut last_error, e.to_string()),
                Err(_) => self.failed(&mut last_error, "the Kubernetes API did not answer".into()),
            }
            tokio::select! {
                biased;
                _ = &mut stop => return,
                _ = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
    }

    /// Logs a failed attempt, once per distinct error (the API may be down for a while).
    fn failed(&self, last: &mut Option<String>, error: String) {
        if last.as_deref() != Some(error.as_str()) {
            tracing::warn!(lease = %self.name, %error, "leader election: cannot reach the Lease; retrying");
        } else {
            tracing::debug!(lease = %self.name, %error, "leader election: still failing");
        }
        *last = Some(error);
    }

    /// Holds the Lease: renews every retry period until asked to stop (then releases it),
    /// until someone else wins it, or until the renew deadline passes without a renewal.
    async fn lead(&mut self, mut lease: Lease, stop: &mut oneshot::Receiver<()>) -> Ended {
        // Counted from before the request that acquired it went out: conservative.
        let mut renewed = Instant::now();
        self.flag.set(true);
        self.last_holder = Some(self.identity.clone());
        tracing::info!(
            lease = %self.name,
            identity = %self.identity,
            "leader election: acquired the Lease; leading"
        );
        loop {
            let deadline = renewed + self.config.renew_deadline;
            let retry = self.config.retry_period;
            let step = async {
                tokio::time::sleep(retry).await;
                let sent = Instant::now();
                (sent, self.attempt(true).await)
            };
            let (sent, r) = tokio::select! {
                biased;
                _ = &mut *stop => {
                    self.flag.set(false);
                    self.release(lease).await;
                    return Ended::Stop;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.flag.set(false);
                    tracing::warn!(
                        lease = %self.name,
                        renew_deadline = ?self.config.renew_deadline,
                        "leader election: could not renew the Lease in time; not leading"
                    );
                    return Ended::Lost;
                }
                r = step => r,
            };
            match r {
                Ok(Attempt::Held(l)) => {
                    lease = *l;
                    renewed = sent;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    self.flag.set(false);
                    tracing::warn!(
                        lease = %self.name,
                        leader = %holder,
                        "leader election: another replica took the Lease; not leading"
                    );
                    self.last_holder = Some(holder);
                    return Ended::Lost;
                }
                Ok(Attempt::Conflict) => {
                    self.flag.set(false);
                    tracing::warn!(
                        lease = %self.name,
                        "leader election: the Lease changed under us (409); not leading"
                    );
                    self.last_holder = None;
                    return Ended::Lost;
                }
                // Keep trying until the deadline.
                Err(e) => tracing::warn!(
                    lease = %self.name,
                    error = %e,
                    "leader election: renewing the Lease failed; retrying"
                ),
            }
        }
    }

    /// Reads the Lease and, when it is free or ours, writes us in as holder.
    async fn attempt(&mut self, leading: bool) -> Result<Attempt, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let now = Timestamp::now();
        let Some(current) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.config.lease_duration_secs()),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(l) => Ok(Attempt::Held(Box::new(l))),
                Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if !ours && let Some(h) = &holder {
            let changed_at = self.observe(&holder, &current.metadata.resource_version);
            let duration = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .filter(|s| *s > 0)
                .map(Duration::from_secs)
                .unwrap_or(self.config.lease_duration);
            let stale_here = changed_at.elapsed() >= duration;
            let stale_by_wall = spec.renew_time.as_ref().is_none_or(|t| {
                t.0.as_millisecond().saturating_add(millis(duration)) < now.as_millisecond()
            });
            if !stale_here && !stale_by_wall {
                return Ok(Attempt::HeldBy(h.clone()));
            }
            tracing::info!(
                lease = %self.name,
                previous = %h,
                "leader election: the Lease expired; taking it over"
            );
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        let mut next = current;
        next.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration_secs()),
            acquire_time: if ours && leading {
                spec.acquire_time.clone()
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if ours {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..spec
        });
        // `next` keeps the resourceVersion we read: the write fails if the Lease changed since.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(l) => Ok(Attempt::Held(Box::new(l))),
            Err(e) if is_conflict(&e) => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// When (on our clock) we first saw the Lease as it is now.
    fn observe(&mut self, holder: &Option<String>, version: &Option<String>) -> Instant {
        match &self.observed {
            Some(o) if &o.holder == holder && &o.version == version => o.at,
            _ => {
                let at = Instant::now();
                self.observed = Some(Observed {
                    holder: holder.clone(),
                    version: version.clone(),
                    at,
                });
                at
            }
        }
    }

    /// Clears the holder of the Lease we last wrote, so the next replica need not wait for it
    /// to expire. Best effort: if it fails, the Lease simply expires.
    async fn release(&self, mut lease: Lease) {
        let now = MicroTime(Timestamp::now());
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.acquire_time = None;
            spec.renew_time = Some(now);
            spec.lease_duration_seconds = Some(1);
        }
        let params = PostParams::default();
        let write = self.api.replace(&self.name, &params, &lease);
        match tokio::time::timeout(self.config.retry_period, write).await {
            Ok(Ok(_)) => tracing::info!(lease = %self.name, "leader election: released the Lease"),
            Ok(Err(e)) => tracing::warn!(
                lease = %self.name,
                error = %e,
                "leader election: cannot release the Lease; it expires on its own"
            ),
            Err(_) => tracing::warn!(
                lease = %self.name,
                "leader election: releasing the Lease timed out; it expires on its own"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_validation() {
        let c = LeaseConfig::default();
        assert_eq!(c.lease_duration, Duration::from_secs(15));
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.retry_period, Duration::from_secs(2));
        c.validate().unwrap();
        assert_eq!(c.lease_duration_secs(), 15);
        let rounded = LeaseConfig {
            lease_duration: Duration::from_millis(1500),
            renew_deadline: Duration::from_millis(1000),
            retry_period: Duration::from_millis(100),
        };
        rounded.validate().unwrap();
        assert_eq!(rounded.lease_duration_secs(), 2);
        for bad in [
            LeaseConfig {
                renew_deadline: Duration::from_secs(15),
                ..LeaseConfig::default()
            },
            LeaseConfig {
                retry_period: Duration::from_secs(10),
                ..LeaseConfig::default()
            },
            LeaseConfig {
                retry_period: Duration::ZERO,
                ..LeaseConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lease_names() {
        check_name("poolgate-control-leader").unwrap();
        check_name("a.b-1").unwrap();
        for bad in ["", "Upper", "-a", "a-", "a_b", &"a".repeat(254)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
