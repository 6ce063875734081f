//! `poolgate gateway` as a process: configuration errors exit 2 with one line; without a
//! reachable control plane it starts, is alive but not ready, and stops cleanly on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_poolgate");

fn http_status(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines().next().unwrap_or_default().to_string()
}

#[test]
fn missing_node_token_is_a_configuration_error() {
    let out = Command::new(BIN)
        .args([
            "gateway",
            "--gateway-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env_remove("POOLGATE_NODE_TOKEN_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("POOLGATE_NODE_TOKEN_FILE"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn starts_without_a_control_plane_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("node.token");
    std::fs::write(&token, "pgn_some_node_token\n").unwrap();
    // Nothing listens on the control URL: the gateway retries in the background.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let control = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut child = Command::new(BIN)
        .args([
            "gateway",
            "--gateway-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--control-url",
            &control,
            "--node-id",
            "gw-cli",
        ])
        .env("POOLGATE_NODE_TOKEN_FILE", &token)
        .env_remove("RUST_LOG")
        .env_remove("POOLGATE_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut gw, mut admin) = (None, None);
    while gw.is_none() || admin.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("start-up lines");
        assert!(
            !line.contains("pgn_some_node_token"),
            "token logged: {line}"
        );
        if let Some(a) = line.split("gateway_listen=").nth(1) {
            gw = Some(a.split_whitespace().next().unwrap().to_string());
        }
        if let Some(a) = line.split("admin_listen=").nth(1) {
            admin = Some(a.split_whitespace().next().unwrap().to_string());
        }
    }
    let admin = admin.unwrap();
    assert!(http_status(&admin, "/healthz").contains("200"));
    assert!(http_status(&admin, "/readyz").contains("503"));
    assert!(http_status(&gw.unwrap(), "/health").contains("200"));
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    for _ in 0..200 {
        if let Some(st) = child.try_wait().unwrap() {
            assert_eq!(st.code(), Some(0));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("the gateway did not stop within 10 s of SIGTERM");
}
