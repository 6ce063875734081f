//! Lease leader election against a fake API server built on kube's tower-test mock: one Lease
//! object with resourceVersion checks, shared by several electors, each request recorded and
//! asserted. Time is paused, so the 15 s / 10 s / 2 s timings run exactly and fast.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::coordination::v1::Lease;
use kube::client::Body;
use poolgate_k8s::lease::{DEFAULT_LEASE_NAME, LeaseConfig, LeaseElector};
use serde_json::json;
use tokio::time::Instant;
use tower_test::mock;

const NS: &str = "poolgate";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/poolgate/leases";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answers normally.
    Up,
    /// Answers 500 to everything.
    Failing,
    /// Never answers.
    Hanging,
}

#[derive(Debug, Clone)]
struct Call {
    who: &'static str,
    method: Method,
    path: String,
    status: u16,
    at: Instant,
    body: Option<Lease>,
}

/// The API server: a single Lease (or none), with resourceVersion checks like the real one.
#[derive(Default)]
struct Server {
    lease: Option<Lease>,
    rv: u64,
    modes: HashMap<&'static str, Mode>,
    calls: Vec<Call>,
    /// Answers never sent (hanging clients); kept so the requests stay open.
    parked: Vec<mock::SendResponse<Response<Body>>>,
}

fn status(code: StatusCode, reason: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": reason, "reason": reason, "code": code.as_u16(),
    });
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&body).unwrap()))
        .unwrap()
}

fn ok(code: StatusCode, lease: &Lease) -> Response<Body> {
    let mut v = serde_json::to_value(lease).unwrap();
    v["apiVersion"] = json!("coordination.k8s.io/v1");
    v["kind"] = json!("Lease");
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&v).unwrap()))
        .unwrap()
}

impl Server {
    /// The answer to one request; `None` to leave it hanging.
    fn answer(
        &mut self,
        who: &'static str,
        method: Method,
        path: String,
        body: &[u8],
    ) -> Option<Response<Body>> {
        let mode = self.modes.get(who).copied().unwrap_or(Mode::Up);
        let sent: Option<Lease> = if body.is_empty() {
            None
        } else {
            Some(serde_json::from_slice(body).expect("a Lease body"))
        };
        let named = format!("{LEASES}/{DEFAULT_LEASE_NAME}");
        let resp = match mode {
            Mode::Hanging => None,
            Mode::Failing => Some(status(StatusCode::INTERNAL_SERVER_ERROR, "InternalError")),
            Mode::Up => Some(match (&method, path.as_str()) {
                (&Method::GET, p) if p == named => match &self.lease {
                    Some(l) => ok(StatusCode::OK, l),
                    None => status(StatusCode::NOT_FOUND, "NotFound"),
                },
                (&Method::POST, p) if p == LEASES => {
                    if self.lease.is_some() {
                        status(StatusCode::CONFLICT, "AlreadyExists")
                    } else {
                        let mut l = sent.clone().expect("a body");
                        assert_eq!(l.metadata.name.as_deref(), Some(DEFAULT_LEASE_NAME));
                        self.rv += 1;
                        l.metadata.resource_version = Some(self.rv.to_string());
                        l.metadata.namespace = Some(NS.into());
                        self.lease = Some(l.clone());
                        ok(StatusCode::CREATED, &l)
                    }
                }
                (&Method::PUT, p) if p == named => {
                    let mut l = sent.clone().expect("a body");
                    let current = self
                        .lease
                        .as_ref()
                        .and_then(|c| c.metadata.resource_version.clone());
                    if current.is_none() {
                        status(StatusCode::NOT_FOUND, "NotFound")
                    } else if l.metadata.resource_version != current {
                        status(StatusCode::CONFLICT, "Conflict")
                    } else {
                        self.rv += 1;
                        l.metadata.resource_version = Some(self.rv.to_string());
                        self.lease = Some(l.clone());
                        ok(StatusCode::OK, &l)
                    }
                }
                _ => status(StatusCode::BAD_REQUEST, "BadRequest"),
            }),
        };
        self.calls.push(Call {
            who,
            method,
            path,
            status: resp.as_ref().map_or(0, |r| r.status().as_u16()),
            at: Instant::now(),
            body: sent,
        });
        resp
    }
}

type Shared = Arc<Mutex<Server>>;

/// A kube client whose requests `server` answers as `who`.
fn client(server: &Shared, who: &'static str) -> kube::Client {
    let (svc, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = server.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let mut s = server.lock().unwrap();
            match s.answer(who, parts.method, parts.uri.path().to_string(), &bytes) {
                Some(resp) => send.send_response(resp),
                None => s.parked.push(send),
            }
        }
    });
    kube::Client::new(svc, NS)
}

fn elector(server: &Shared, who: &'static str) -> LeaseElector {
    LeaseElector::spawn(
        client(server, who),
        NS,
        DEFAULT_LEASE_NAME,
        who,
        LeaseConfig::default(),
    )
    .unwrap()
}

async fn leads(e: &LeaseElector) -> Instant {
    e.leadership().wait_for(|l| *l).await.unwrap();
    Instant::now()
}

/// When `e` stops leading (the flag turns false or its elector ends).
fn lost_at(e: &LeaseElector) -> tokio::task::JoinHandle<Instant> {
    let mut rx = e.leadership();
    tokio::spawn(async move {
        let _ = rx.wait_for(|l| !*l).await;
        Instant::now()
    })
}

fn spec(l: &Lease) -> k8s_openapi::api::coordination::v1::LeaseSpec {
    l.spec.clone().unwrap()
}

fn calls(server: &Shared) -> Vec<Call> {
    server.lock().unwrap().calls.clone()
}

/// When `who` last renewed the Lease successfully.
fn last_renewal(server: &Shared, who: &str) -> Instant {
    calls(server)
        .iter()
        .rev()
        .find(|c| c.who == who && c.method == Method::PUT && c.status == 200)
        .unwrap()
        .at
}

fn stored(server: &Shared) -> Lease {
    server.lock().unwrap().lease.clone().unwrap()
}

/// (who, method, status) of each call, for compact assertions.
fn shape(calls: &[Call]) -> Vec<(&'static str, Method, u16)> {
    calls
        .iter()
        .map(|c| (c.who, c.method.clone(), c.status))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn creates_an_absent_lease_renews_it_and_releases_it() {
    let server = Shared::default();
    let a = elector(&server, "a");
    let t0 = Instant::now();
    assert_eq!(leads(&a).await, t0, "an absent Lease is taken at once");
    let c = calls(&server);
    assert_eq!(
        shape(&c),
        [("a", Method::GET, 404), ("a", Method::POST, 201)]
    );
    let named = format!("{LEASES}/{DEFAULT_LEASE_NAME}");
    assert_eq!(c[0].path, named);
    assert_eq!(c[1].path, LEASES);
    let created = spec(c[1].body.as_ref().unwrap());
    assert_eq!(created.holder_identity.as_deref(), Some("a"));
    assert_eq!(created.lease_duration_seconds, Some(15));
    assert_eq!(created.lease_transitions, Some(0));
    assert!(created.acquire_time.is_some() && created.renew_time.is_some());

    // Renewed every 2 s: a read, then a replace carrying the resourceVersion read.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let c = calls(&server);
    assert_eq!(
        shape(&c[2..]),
        [
            ("a", Method::GET, 200),
            ("a", Method::PUT, 200),
            ("a", Method::GET, 200),
            ("a", Method::PUT, 200),
        ]
    );
    assert_eq!(c[2].at - t0, Duration::from_secs(2));
    assert_eq!(c[4].at - t0, Duration::from_secs(4));
    for (put, rv) in [(&c[3], "1"), (&c[5], "2")] {
        assert_eq!(put.path, named);
        let l = put.body.as_ref().unwrap();
        assert_eq!(l.metadata.resource_version.as_deref(), Some(rv));
        let s = spec(l);
        assert_eq!(s.holder_identity.as_deref(), Some("a"));
        assert_eq!(s.lease_transitions, Some(0), "renewing is no transition");
        assert_eq!(
            s.acquire_time, created.acquire_time,
            "renewing keeps acquireTime"
        );
    }
    assert!(a.is_leader());

    // A clean shutdown clears the holder.
    let lost = lost_at(&a);
    a.shutdown().await;
    let c = calls(&server);
    assert_eq!(shape(&c[6..]), [("a", Method::PUT, 200)]);
    let released = spec(&stored(&server));
    assert_eq!(released.holder_identity, None);
    assert_eq!(released.lease_duration_seconds, Some(1));
    assert_eq!(released.lease_transitions, Some(0));
    lost.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn two_electors_on_one_lease_only_one_leads() {
    let server = Shared::default();
    let a = elector(&server, "a");
    let b = elector(&server, "b");
    let mut leader = None;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (la, lb) = (a.is_leader(), b.is_leader());
        assert!(!(la && lb), "two leaders");
        assert!(la || lb, "no leader");
        let now = if la { "a" } else { "b" };
        assert_eq!(*leader.get_or_insert(now), now, "leadership moved");
        assert_eq!(spec(&stored(&server)).holder_identity.as_deref(), Some(now));
    }
    let leader = leader.unwrap();
    // Both raced to create the Lease; the loser got 409 and from then on only read it.
    let c = calls(&server);
    let conflicts = c.iter().filter(|c| c.status == 409).count();
    assert_eq!(conflicts, 1, "{:?}", shape(&c));
    let follower_writes = c
        .iter()
        .filter(|c| c.who != leader && c.method != Method::GET)
        .count();
    assert_eq!(follower_writes, 1, "only the lost create: {:?}", shape(&c));
    assert!(c.iter().all(|c| matches!(c.status, 200 | 201 | 404 | 409)));
    assert_eq!(spec(&stored(&server)).lease_transitions, Some(0));
}

#[tokio::test(start_paused = true)]
async fn handover_when_the_holder_stops_renewing_and_on_release() {
    let server = Shared::default();
    let a = elector(&server, "a");
    leads(&a).await;
    let b = elector(&server, "b");
    let c = elector(&server, "c");
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(a.is_leader() && !b.is_leader() && !c.is_leader());
    let first_acquire = spec(&stored(&server)).acquire_time;

    // `a` dies without releasing: it simply stops renewing.
    drop(a);
    let last_renewal = last_renewal(&server, "a");
    let next = tokio::select! {
        t = leads(&b) => ("b", t),
        t = leads(&c) => ("c", t),
    };
    let waited = next.1 - last_renewal;
    // Not before the Lease expired (15 s after the renewal others saw), and not much later:
    // they noticed the last renewal within one retry period and retry every 2 s.
    assert!(waited >= Duration::from_secs(15), "{waited:?}");
    assert!(waited <= Duration::from_secs(19), "{waited:?}");
    let s = spec(&stored(&server));
    assert_eq!(s.holder_identity.as_deref(), Some(next.0));
    assert_eq!(s.lease_transitions, Some(1), "a takeover is a transition");
    assert_ne!(s.acquire_time, first_acquire);
    let (new, other) = if next.0 == "b" { (b, c) } else { (c, b) };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(new.is_leader() && !other.is_leader());

    // A clean shutdown releases: the other takes over at its next try, not after 15 s.
    let t = Instant::now();
    new.shutdown().await;
    let took = leads(&other).await - t;
    assert!(took <= Duration::from_secs(2), "{took:?}");
    assert_eq!(spec(&stored(&server)).lease_transitions, Some(2));
}

#[tokio::test(start_paused = true)]
async fn renew_failure_past_the_deadline_is_lost_before_the_lease_expires() {
    for mode in [Mode::Failing, Mode::Hanging] {
        let server = Shared::default();
        let a = elector(&server, "a");
        leads(&a).await;
        let b = elector(&server, "b");
        tokio::time::sleep(Duration::from_millis(5_100)).await;
        assert!(a.is_leader() && !b.is_leader());
        let lost = lost_at(&a);

        server.lock().unwrap().modes.insert("a", mode);
        let last_renewal = last_renewal(&server, "a");
        let lost = lost.await.unwrap();
        // Lost exactly at the renew deadline, while the Lease is still valid for the others...
        assert_eq!(lost - last_renewal, Duration::from_secs(10), "{mode:?}");
        assert!(!b.is_leader(), "{mode:?}");
        // ...who take over only once it expired: never two leaders at once.
        let took = leads(&b).await;
        assert!(took - last_renewal >= Duration::from_secs(15), "{mode:?}");
        assert!(!a.is_leader());
        let failed_after = calls(&server)
            .iter()
            .filter(|c| c.who == "a" && c.at > last_renewal)
            .all(|c| c.status == if mode == Mode::Hanging { 0 } else { 500 });
        assert!(failed_after, "{mode:?}");
        assert_eq!(spec(&stored(&server)).holder_identity.as_deref(), Some("b"));
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_abandoned_long_ago_is_taken_at_once() {
    let server = Shared::default();
    let old: Lease = serde_json::from_value(json!({
        "metadata": {"name": DEFAULT_LEASE_NAME, "namespace": NS, "resourceVersion": "7"},
        "spec": {
            "holderIdentity": "gone",
            "leaseDurationSeconds": 15,
            "leaseTransitions": 3,
            "acquireTime": "2020-01-01T00:00:00.000000Z",
            "renewTime": "2020-01-01T00:00:00.000000Z",
        }
    }))
    .unwrap();
    {
        let mut s = server.lock().unwrap();
        s.lease = Some(old);
        s.rv = 7;
    }
    let a = elector(&server, "a");
    let t = Instant::now();
    assert_eq!(leads(&a).await, t);
    assert_eq!(
        shape(&calls(&server)),
        [("a", Method::GET, 200), ("a", Method::PUT, 200)]
    );
    let s = spec(&stored(&server));
    assert_eq!(s.holder_identity.as_deref(), Some("a"));
    assert_eq!(s.lease_transitions, Some(4));
}

#[tokio::test]
async fn bad_settings_are_refused() {
    let server = Shared::default();
    let bad = LeaseConfig {
        renew_deadline: Duration::from_secs(20),
        ..LeaseConfig::default()
    };
    let e = LeaseElector::spawn(client(&server, "a"), NS, DEFAULT_LEASE_NAME, "a", bad);
    assert!(e.unwrap_err().to_string().contains("renew deadline"));
    let e = LeaseElector::spawn(
        client(&server, "a"),
        NS,
        "Not_A_Name",
        "a",
        LeaseConfig::default(),
    );
    assert!(e.unwrap_err().to_string().contains("Lease name"));
    let e = LeaseElector::spawn(
        client(&server, "a"),
        NS,
        DEFAULT_LEASE_NAME,
        " ",
        LeaseConfig::default(),
    );
    assert!(e.is_err());
    assert!(calls(&server).is_empty());
}
