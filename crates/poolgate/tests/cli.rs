//! The binary as a process: standalone start-up (data directory, logged addresses, reused
//! admin token), clean exit on SIGTERM and SIGINT, and one-line errors for bad configuration.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_poolgate");

/// Starts standalone on free ports; returns the child, its gRPC and admin addresses and a
/// channel carrying the rest of its log lines.
fn start_standalone(data: &std::path::Path) -> (Child, String, String, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args([
            "standalone",
            "--grpc-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--gateway-listen",
            "127.0.0.1:0",
            "--gateway-admin-listen",
            "127.0.0.1:0",
        ])
        .env("POOLGATE_DATA_DIR", data)
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
    let (mut grpc, mut admin) = (None, None);
    while grpc.is_none() || admin.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("start-up log lines");
        assert!(
            !line.contains("pga_"),
            "a log line shows the admin token: {line}"
        );
        if let Some(a) = line.split("grpc_listen=").nth(1) {
            grpc = Some(a.split_whitespace().next().unwrap().to_string());
        }
        // The in-process gateway logs its own admin address too.
        if let Some(a) = line
            .split("admin_listen=")
            .nth(1)
            .filter(|_| !line.contains("gateway"))
        {
            admin = Some(a.split_whitespace().next().unwrap().to_string());
        }
    }
    (child, grpc.unwrap(), admin.unwrap(), rx)
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn wait_exit(child: &mut Child) -> i32 {
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().expect("exited, not killed by a signal");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("poolgate did not exit within 10s");
}

#[test]
fn standalone_starts_serves_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("state");
    let (mut child, grpc, admin, _logs) = start_standalone(&data);
    assert!(
        grpc.starts_with("127.0.0.1:") && !grpc.ends_with(":0"),
        "{grpc}"
    );
    let health = http_get(&admin, "/healthz");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok"),
        "{health}"
    );
    assert!(http_get(&admin, "/readyz").starts_with("HTTP/1.1 200"));

    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for f in ["admin.token", "node.token", "encryption.key", "poolgate.db"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    assert!(token.trim().starts_with("pga_"));
    let node_token = std::fs::read_to_string(data.join("node.token")).unwrap();
    assert!(node_token.trim().starts_with("pgn_"));

    signal(&child, "-TERM");
    assert_eq!(wait_exit(&mut child), 0);

    // A restart reuses the token and the data; SIGINT also exits cleanly.
    let (mut child, _, admin, _logs) = start_standalone(&data);
    assert_eq!(
        std::fs::read_to_string(data.join("admin.token")).unwrap(),
        token
    );
    assert_eq!(
        std::fs::read_to_string(data.join("node.token")).unwrap(),
        node_token
    );
    assert!(http_get(&admin, "/readyz").starts_with("HTTP/1.1 200"));
    signal(&child, "-INT");
    assert_eq!(wait_exit(&mut child), 0);
}

/// Environment, expected exit code, and a piece of the expected error line.
type Case<'a> = (Vec<(&'a str, &'a str)>, i32, &'a str);

fn run_control(env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("control");
    for k in [
        "POOLGATE_DATABASE_URL",
        "POOLGATE_ENCRYPTION_KEY_FILE",
        "POOLGATE_ADMIN_TOKEN_FILE",
        "POOLGATE_NODE_TOKEN_FILE",
        "POOLGATE_LEADER_ELECTION",
        "POOLGATE_KUBERNETES_CONTROLLER",
        "POOLGATE_LEASE_NAME",
        "POOLGATE_NAMESPACE",
        "POOLGATE_ROUTING_POLICY_FILE",
        "KUBERNETES_SERVICE_HOST",
    ] {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn control_rejects_bad_configuration_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "11".repeat(32)).unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "pga_t\n").unwrap();
    let node = dir.path().join("node");
    std::fs::write(&node, "pgn_n\n").unwrap();
    let missing = dir.path().join("missing").display().to_string();
    let (key, token) = (key.display().to_string(), token.display().to_string());
    let node = node.display().to_string();
    let url = "postgres://app:hunter2@127.0.0.1:1/db";
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "strategy: balanced\np2c_window: 0\n").unwrap();
    let policy = policy.display().to_string();

    let cases: [Case<'_>; 10] = [
        (
            vec![],
            2,
            "--database-url / POOLGATE_DATABASE_URL is required",
        ),
        (
            vec![
                ("POOLGATE_DATABASE_URL", url),
                ("POOLGATE_ADMIN_TOKEN_FILE", &token),
                ("POOLGATE_NODE_TOKEN_FILE", &node),
                ("POOLGATE_ENCRYPTION_KEY_FILE", &missing),
            ],
            2,
            "--encryption-key-file / POOLGATE_ENCRYPTION_KEY_FILE: cannot read encryption key file",
        ),
        (
            vec![
                ("POOLGATE_DATABASE_URL", url),
                ("POOLGATE_ADMIN_TOKEN_FILE", &missing),
                ("POOLGATE_NODE_TOKEN_FILE", &node),
                ("POOLGATE_ENCRYPTION_KEY_FILE", &key),
            ],
            2,
            "--admin-token-file / POOLGATE_ADMIN_TOKEN_FILE",
        ),
        (
            vec![
                ("POOLGATE_DATABASE_URL", "postgres://app:hunter2@h:port/db"),
                ("POOLGATE_ADMIN_TOKEN_FILE", &token),
                ("POOLGATE_NODE_TOKEN_FILE", &node),
                ("POOLGATE_ENCRYPTION_KEY_FILE", &key),
            ],
            2,
            "--database-url / POOLGATE_DATABASE_URL is not a valid PostgreSQL URL",
        ),
        (
            vec![
                ("POOLGATE_DATABASE_URL", url),
                ("POOLGATE_ADMIN_TOKEN_FILE", &token),
                ("POOLGATE_ENCRYPTION_KEY_FILE", &key),
            ],
            2,
            "--node-token-file / POOLGATE_NODE_TOKEN_FILE is required",
        ),
        (
            vec![
                ("POOLGATE_DATABASE_URL", url),
                ("POOLGATE_ADMIN_TOKEN_FILE", &token),
                ("POOLGATE_NODE_TOKEN_FILE", &missing),
                ("POOLGATE_ENCRYPTION_KEY_FILE", &key),
            ],
            2,
            "--node-token-file / POOLGATE_NODE_TOKEN_FILE: node token file",
        ),
        (
            vec![
                ("POOLGATE_DATABASE_URL", url),
                ("POOLGATE_ADMIN_TOKEN_FILE", &token),
                ("POOLGATE_NODE_TOKEN_FILE", &token),
                ("POOLGATE_ENCRYPTION_KEY_FILE", &key),
            ],
            2,
            "holds the admin token",
        ),
        (
            vec![
                ("POOLGATE_DATABASE_URL", url),
                ("POOLGATE_ADMIN_TOKEN_FILE", &token),
                ("POOLGATE_NODE_TOKEN_FILE", &node),
                ("POOLGATE_ENCRYPTION_KEY_FILE", &key),
            ],
            1,
            "cannot use PostgreSQL (host=127.0.0.1 port=1 dbname=db user=app)",
        ),
        // Checked before connecting: a bad policy file or Lease name is exit 2, not 1.
        (
            vec![
                ("POOLGATE_DATABASE_URL", url),
                ("POOLGATE_ADMIN_TOKEN_FILE", &token),
                ("POOLGATE_NODE_TOKEN_FILE", &node),
                ("POOLGATE_ENCRYPTION_KEY_FILE", &key),
                ("POOLGATE_ROUTING_POLICY_FILE", &policy),
            ],
            2,
            "--routing-policy-file / POOLGATE_ROUTING_POLICY_FILE",
        ),
        (
            vec![
                ("POOLGATE_DATABASE_URL", url),
                ("POOLGATE_ADMIN_TOKEN_FILE", &token),
                ("POOLGATE_NODE_TOKEN_FILE", &node),
                ("POOLGATE_ENCRYPTION_KEY_FILE", &key),
                ("POOLGATE_LEADER_ELECTION", "kubernetes"),
                ("POOLGATE_LEASE_NAME", "Not_A_Lease"),
            ],
            2,
            "--lease-name / POOLGATE_LEASE_NAME",
        ),
    ];
    for (env, code, needle) in cases {
        let (got, stderr) = run_control(&env);
        assert_eq!(got, code, "{stderr}");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("poolgate: error: "))
            .collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(errors[0].contains(needle), "{stderr}");
        assert!(!stderr.contains("hunter2"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
