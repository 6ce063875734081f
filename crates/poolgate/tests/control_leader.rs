//! Two `poolgate control` processes on one real PostgreSQL: exactly one leads (the
//! `poolgate_control_leader` gauge), the routing-policy file seeds the store once, and when the
//! leader stops the other takes over.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_poolgate");

struct Replica {
    child: Child,
    admin: String,
    _logs: mpsc::Receiver<String>,
}

fn start(dir: &Path, url: &str, name: &str) -> Replica {
    let mut child = Command::new(BIN)
        .args(["control", "--grpc-listen", "127.0.0.1:0", "--admin-listen"])
        .arg("127.0.0.1:0")
        .env("POOLGATE_DATABASE_URL", url)
        .env("POOLGATE_ENCRYPTION_KEY_FILE", dir.join("key"))
        .env("POOLGATE_ADMIN_TOKEN_FILE", dir.join("admin"))
        .env("POOLGATE_NODE_TOKEN_FILE", dir.join("node"))
        .env("POOLGATE_ROUTING_POLICY_FILE", dir.join("policy.yaml"))
        .env("POOLGATE_LEADER_ELECTION", "postgres")
        .env("POOLGATE_NODE_NAME", name)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("POOLGATE_KUBERNETES_CONTROLLER")
        .env_remove("RUST_LOG")
        .env_remove("POOLGATE_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let admin = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("start-up log lines");
        if let Some(a) = line.split("admin_listen=").nth(1) {
            break a.split_whitespace().next().unwrap().to_string();
        }
    };
    Replica {
        child,
        admin,
        _logs: rx,
    }
}

/// The `poolgate_control_leader` gauge of a replica.
fn leader_gauge(admin: &str) -> Option<u8> {
    let mut s = std::net::TcpStream::connect(admin).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .find_map(|l| l.strip_prefix("poolgate_control_leader "))
        .and_then(|v| v.trim().parse().ok())
}

fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(r: &mut Replica) -> i32 {
    let ok = Command::new("kill")
        .args(["-TERM", &r.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    for _ in 0..400 {
        if let Some(status) = r.child.try_wait().unwrap() {
            return status.code().expect("exited, not killed by a signal");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    r.child.kill().unwrap();
    panic!("poolgate control did not exit within 20s");
}

#[test]
fn two_replicas_one_leader_and_handover_on_shutdown() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = rt.block_on(poolgate_testkit::pg::fresh_database()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), "22".repeat(32)).unwrap();
    std::fs::write(dir.path().join("admin"), "pga_leader-test-admin\n").unwrap();
    std::fs::write(dir.path().join("node"), "pgn_leader-test-node\n").unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        "strategy: balanced\np2c_window: 4\n",
    )
    .unwrap();

    let mut a = start(dir.path(), &url, "cp-a");
    let mut b = start(dir.path(), &url, "cp-b");
    let gauges = |a: &Replica, b: &Replica| (leader_gauge(&a.admin), leader_gauge(&b.admin));
    wait_until("one leader", Duration::from_secs(15), || {
        matches!(gauges(&a, &b), (Some(1), Some(0)) | (Some(0), Some(1)))
    });
    // And it stays that way.
    let first = gauges(&a, &b);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(gauges(&a, &b), first);
    }

    // The policy file was saved once (both replicas tried).
    let policy: String = rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .query_one("SELECT policy FROM routing_policy WHERE id = 1", &[])
            .await
            .unwrap()
            .get(0)
    });
    let policy: serde_json::Value = serde_json::from_str(&policy).unwrap();
    assert_eq!(policy["strategy"], "balanced");
    assert_eq!(policy["p2c_window"], 4);

    // The leader stops cleanly and releases the lock: the other takes over at its next try.
    let (leader, follower) = if first.0 == Some(1) {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let t = Instant::now();
    assert_eq!(stop(leader), 0);
    wait_until("the follower to lead", Duration::from_secs(10), || {
        leader_gauge(&follower.admin) == Some(1)
    });
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert_eq!(stop(follower), 0);
}
