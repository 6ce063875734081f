//! Leadership: background jobs only on the leader, and leader election on a PostgreSQL
//! advisory lock against a real server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Harness, http_get};
use poolgate_control::Leadership;
use poolgate_control::leader::postgres::{PgElector, PgElectorConfig};
use poolgate_core::RequestLog;
use poolgate_store::Store;

fn old_log(id: &str, ts_ms: i64) -> RequestLog {
    RequestLog {
        id: id.into(),
        ts_ms,
        key_id: None,
        account_id: None,
        attempts: vec![],
        method: "POST".into(),
        path: "/v1/responses".into(),
        model: None,
        protocol: "openai_responses".into(),
        status: 200,
        error_class: None,
        input_tokens: 0,
        cached_input_tokens: 0,
        output_tokens: 0,
        reasoning_tokens: 0,
        ttfb_ms: None,
        duration_ms: 1,
        node: "gw".into(),
        translation: Default::default(),
        upstream_model: None,
    }
}

async fn eventually(what: &str, within: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn retention_runs_only_while_leading() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        poolgate_store::SqliteStore::open(
            &dir.path().join("db"),
            poolgate_store::Cipher::new(&[4u8; 32]),
        )
        .unwrap(),
    );
    let now = poolgate_store::now_ms();
    let day = 86_400_000;
    let (flag, leadership) = Leadership::channel();
    let h = Harness::start_on(Some(dir), store.clone(), |c| {
        c.leadership = leadership;
    })
    .await;
    store
        .insert_request_logs(&[old_log("old", now - 40 * day), old_log("new", now - day)])
        .await
        .unwrap();
    let gauge = async |v: u8| {
        let (_, m) = http_get(h.admin, "/metrics").await;
        m.lines()
            .any(|l| l == format!("poolgate_control_leader {v}"))
    };
    let count = async || {
        store
            .summarize_request_logs(&Default::default())
            .await
            .unwrap()
            .total
            .requests
    };

    // Not leading: retention (which runs at start) does not run.
    eventually("gauge 0", Duration::from_secs(5), async || gauge(0).await).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count().await, 2);

    flag.set(true);
    eventually("the old log pruned", Duration::from_secs(5), async || {
        count().await == 1
    })
    .await;
    eventually("gauge 1", Duration::from_secs(5), async || gauge(1).await).await;

    flag.set(false);
    eventually("gauge 0 again", Duration::from_secs(5), async || {
        gauge(0).await
    })
    .await;
}

fn fast() -> PgElectorConfig {
    PgElectorConfig {
        retry_interval: Duration::from_millis(100),
        health_interval: Duration::from_millis(200),
        query_timeout: Duration::from_secs(2),
        idle_session_timeout: Duration::from_secs(10),
    }
}

async fn pg_config() -> (String, tokio_postgres::Config) {
    let url = poolgate_testkit::pg::fresh_database().await.unwrap();
    let cfg = url.parse().unwrap();
    (url, cfg)
}

/// Waits until exactly one of `electors` leads and returns its index.
async fn one_leader(electors: &[&PgElector], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let leading: Vec<usize> = electors
            .iter()
            .enumerate()
            .filter(|(_, e)| e.leadership().is_leader())
            .map(|(i, _)| i)
            .collect();
        assert!(leading.len() <= 1, "two leaders at once: {leading:?}");
        if let [i] = leading[..] {
            return i;
        }
        assert!(Instant::now() < deadline, "no leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Asserts for `d` that `electors[leader]` keeps leading and no other does.
async fn stays(electors: &[&PgElector], leader: usize, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        for (i, e) in electors.iter().enumerate() {
            assert_eq!(e.leadership().is_leader(), i == leader, "elector {i}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn postgres_two_electors_one_leader_and_handover() {
    let (_, cfg) = pg_config().await;
    let a = PgElector::spawn(&cfg, "a", fast()).unwrap();
    let b = PgElector::spawn(&cfg, "b", fast()).unwrap();
    let first = one_leader(&[&a, &b], Duration::from_secs(10)).await;
    // Several health checks and lock attempts later, still exactly that one.
    stays(&[&a, &b], first, Duration::from_secs(1)).await;

    let (leader, follower) = if first == 0 { (a, b) } else { (b, a) };
    let follows = follower.leadership();
    // A clean shutdown releases the lock: the other takes over at its next try.
    let t = Instant::now();
    leader.shutdown().await;
    tokio::time::timeout(Duration::from_secs(5), follows.wait_until_leading())
        .await
        .expect("the follower takes over");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // Dropping a leader (a crash, as far as the database is concerned) closes its session,
    // which frees the lock as well.
    let c = PgElector::spawn(&cfg, "c", fast()).unwrap();
    stays(&[&follower, &c], 0, Duration::from_millis(500)).await;
    let c_leads = c.leadership();
    drop(follower);
    tokio::time::timeout(Duration::from_secs(5), c_leads.wait_until_leading())
        .await
        .expect("c takes over after the leader is dropped");
    c.shutdown().await;
}

#[tokio::test]
async fn postgres_terminated_backend_is_lost_at_once() {
    let (url, cfg) = pg_config().await;
    // Health checks far apart: only noticing the broken connection can report the loss fast.
    let slow_health = PgElectorConfig {
        health_interval: Duration::from_secs(30),
        idle_session_timeout: Duration::from_secs(60),
        ..fast()
    };
    let a = PgElector::spawn(&cfg, "a", slow_health.clone()).unwrap();
    let b = PgElector::spawn(&cfg, "b", slow_health).unwrap();
    let first = one_leader(&[&a, &b], Duration::from_secs(10)).await;
    let electors = [&a, &b];
    let leader = electors[first].leadership();
    let other = electors[1 - first].leadership();

    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // The backend holding our advisory lock in this (fresh) database.
    let row = admin
        .query_one(
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    let pid: i32 = row.get(0);
    let app: String = admin
        .query_one(
            "SELECT application_name FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(app, "poolgate-leader-election");

    let t = Instant::now();
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    tokio::time::timeout(Duration::from_secs(2), leader.lost())
        .await
        .expect("the leader notices at once, not at its next health check");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The lock went with the session: the other replica takes over.
    tokio::time::timeout(Duration::from_secs(5), other.wait_until_leading())
        .await
        .expect("the other elector takes over");
    // The old leader reconnects and follows; it does not lead alongside.
    stays(&electors, 1 - first, Duration::from_millis(500)).await;
}

#[tokio::test]
async fn postgres_unreachable_never_leads_and_bad_timings_are_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let cfg: tokio_postgres::Config = format!("postgres://postgres@127.0.0.1:{port}/x")
        .parse()
        .unwrap();
    let e = PgElector::spawn(&cfg, "a", fast()).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!e.leadership().is_leader());
    e.shutdown().await;

    let bad = PgElectorConfig {
        idle_session_timeout: Duration::from_secs(1),
        ..fast()
    };
    assert!(PgElector::spawn(&cfg, "a", bad).is_err());
}

/// A TCP proxy to `target` that can be frozen: it then stops passing bytes either way but
/// keeps both sockets open, like a network partition (no reset, no FIN).
async fn freezable_proxy(target: std::net::SocketAddr) -> (u16, tokio::sync::watch::Sender<bool>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (frozen, _) = tokio::sync::watch::channel(false);
    let frozen_rx = frozen.subscribe();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(target).await.unwrap();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut to) in [(cr, sw), (sr, cw)] {
                let mut frozen = frozen_rx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if *frozen.borrow_and_update() {
                            // Hold everything; never forward again.
                            std::future::pending::<()>().await;
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    (port, frozen)
}

#[tokio::test]
async fn postgres_partitioned_leader_gives_up_and_the_server_frees_the_lock() {
    let (_, direct) = pg_config().await;
    let tokio_postgres::config::Host::Tcp(host) = &direct.get_hosts()[0] else {
        panic!("the test server is reached over TCP")
    };
    let addr = tokio::net::lookup_host((host.as_str(), direct.get_ports()[0]))
        .await
        .unwrap()
        .next()
        .unwrap();
    let (port, frozen) = freezable_proxy(addr).await;
    let mut via_proxy = tokio_postgres::Config::new();
    via_proxy
        .host("127.0.0.1")
        .port(port)
        .user(direct.get_user().unwrap())
        .dbname(direct.get_dbname().unwrap());
    if let Some(pw) = direct.get_password() {
        via_proxy.password(pw);
    }
    let timing = PgElectorConfig {
        retry_interval: Duration::from_millis(100),
        health_interval: Duration::from_millis(200),
        query_timeout: Duration::from_millis(500),
        idle_session_timeout: Duration::from_secs(2),
    };
    let a = PgElector::spawn(&via_proxy, "a", timing.clone()).unwrap();
    let a_leads = a.leadership();
    tokio::time::timeout(Duration::from_secs(10), a_leads.wait_until_leading())
        .await
        .expect("a leads");
    let b = PgElector::spawn(&direct, "b", timing).unwrap();
    stays(&[&a, &b], 0, Duration::from_millis(500)).await;

    // Partition: a's health query goes unanswered.
    let t = Instant::now();
    frozen.send_replace(true);
    tokio::time::timeout(Duration::from_secs(3), a_leads.lost())
        .await
        .expect("a gives up when its health query is late");
    let gave_up = t.elapsed();
    assert!(gave_up < Duration::from_millis(1_500), "{gave_up:?}");
    assert!(
        !b.leadership().is_leader(),
        "b cannot lead before the server frees the lock"
    );
    // The server ends a's idle session after idle_session_timeout, freeing the lock.
    tokio::time::timeout(Duration::from_secs(10), b.leadership().wait_until_leading())
        .await
        .expect("b takes over once the server dropped a's session");
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(!a.leadership().is_leader());
}
