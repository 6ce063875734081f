//! `poolctl login` as a person runs it, against `poolgate standalone` whose OAuth issuer is the
//! mock: the manual flow (URL printed, callback pasted on stdin), the browser flow (a browser
//! stand-in follows the authorize URL and lands on poolctl's callback listener), the device
//! flow, a wrong pasted state, and no code or verifier in any output, log or file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use poolgate_e2e::{Poolctl, Poolgate, Secret, http_request, leaked_in, leaks_in_dir};
use poolgate_testkit::mock::{Identity, MockDeviceLogin, MockUpstream};

/// A running `poolctl login`, its stderr lines streamed.
struct Login {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: Vec<String>,
}

impl Login {
    fn spawn(ctl: &Poolctl, args: &[&str]) -> Login {
        let mut child = ctl
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Login {
            child,
            lines,
            stderr: Vec::new(),
        }
    }

    /// The first stderr line (trimmed) that starts with `prefix`.
    fn line_starting(&mut self, prefix: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no {prefix:?} line; stderr so far: {:?}", self.stderr));
            self.stderr.push(line.clone());
            if line.trim().starts_with(prefix) {
                return line.trim().to_string();
            }
        }
    }

    fn type_line(&mut self, text: &str) {
        let mut stdin = self.child.stdin.take().unwrap();
        writeln!(stdin, "{text}").unwrap();
    }

    /// Waits for exit; (exit code, stdout, all of stderr).
    fn finish(mut self) -> (Option<i32>, String, String) {
        let out = self.child.wait_with_output().unwrap();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stderr.push(l);
        }
        (
            out.status.code(),
            String::from_utf8(out.stdout).unwrap(),
            self.stderr.join("\n"),
        )
    }
}

/// Follows an authorize URL like a browser whose user approves at once: the redirect target.
fn approve(url: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let i = rest.find('/').unwrap();
    let addr: SocketAddr = rest[..i].parse().unwrap();
    let (code, raw) = http_request(addr, "GET", &rest[i..], &[]).unwrap();
    assert_eq!(code, 302, "{raw}");
    raw.lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .unwrap()
        .trim()
        .to_string()
}

fn param(url: &str, name: &str) -> String {
    url.split_once('?')
        .unwrap()
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap()
        .to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poolctl_login_manual_browser_and_device() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_login_identity(Some(Identity::new("carol@example.test", "ws-carol")));
    let port = free_port();
    let redirect = format!("http://127.0.0.1:{port}/auth/callback");
    let issuer = mock.oauth_issuer();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let redirect2 = redirect.clone();
    let data2 = data.clone();
    let mut pg = tokio::task::spawn_blocking(move || {
        Poolgate::standalone_with_env(
            &data2,
            &[
                ("POOLGATE_OAUTH_ISSUER", issuer.as_str()),
                ("POOLGATE_OAUTH_REDIRECT_URI", redirect2.as_str()),
            ],
        )
        .unwrap()
    })
    .await
    .unwrap();
    let ctl = Poolctl::new(pg.url(), Some(&data.join("admin.token"))).unwrap();

    let mut codes = Vec::new();
    let mut outputs = String::new();

    // --manual: the URL on stderr, the callback pasted on stdin.
    let ctl1 = ctl.clone();
    let (code, stdout, stderr, callback) = tokio::task::spawn_blocking(move || {
        let mut login = Login::spawn(&ctl1, &["login", "--manual", "-o", "json"]);
        let url = login.line_starting("http://");
        let callback = approve(&url);
        login.line_starting("Paste");
        login.type_line(&callback);
        let (code, stdout, stderr) = login.finish();
        (code, stdout, stderr, callback)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["outcome"], "created");
    assert_eq!(r["account"]["name"], "carol@example.test");
    assert_eq!(r["account"]["identity"]["chatgpt_account_id"], "ws-carol");
    let account_id = r["account"]["id"].as_str().unwrap().to_string();
    codes.push(param(&callback, "code"));
    outputs.push_str(&format!("{stdout}\n{stderr}\n"));

    // Browser mode: a browser stand-in follows the URL and lands on poolctl's listener.
    let ctl2 = ctl.clone();
    let (code, stdout, stderr, page, callback) = tokio::task::spawn_blocking(move || {
        let mut login = Login::spawn(&ctl2, &["login", "--no-browser", "-o", "json"]);
        let url = login.line_starting("http://");
        let callback = approve(&url);
        assert!(callback.starts_with(&format!("http://127.0.0.1:{port}/auth/callback?")));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Other paths get 404 and the login keeps waiting.
        let (c404, _) = http_request(addr, "GET", "/favicon.ico", &[]).unwrap();
        assert_eq!(c404, 404);
        let path = &callback[callback.find("/auth/").unwrap()..];
        let (status, page) = http_request(addr, "GET", path, &[]).unwrap();
        assert_eq!(status, 200, "{page}");
        let (code, stdout, stderr) = login.finish();
        (code, stdout, stderr, page, callback)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(page.contains("Login complete"), "{page}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // Same person: the same account, renewed.
    assert_eq!(r["outcome"], "updated");
    assert_eq!(r["account"]["id"], account_id.as_str());
    codes.push(param(&callback, "code"));
    outputs.push_str(&format!("{stdout}\n{stderr}\n{page}\n"));

    // A pasted callback of another login: a precise error, exit 1.
    let ctl3 = ctl.clone();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let mut login = Login::spawn(&ctl3, &["login", "--manual"]);
        let url = login.line_starting("http://");
        let callback = approve(&url);
        let state = param(&callback, "state");
        login.line_starting("Paste");
        login.type_line(&callback.replace(&state, "forged-state"));
        login.finish()
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr
            .contains("error: invalid argument: the callback's state does not match login session"),
        "{stderr}"
    );
    outputs.push_str(&format!("{stdout}\n{stderr}\n"));

    // --device: the code shown, approved at the issuer, the account printed as a table.
    mock.set_login_identity(Some(Identity::new("dave@example.test", "ws-dave")));
    mock.set_device_login(MockDeviceLogin {
        approve_after_polls: Some(1),
        ..MockDeviceLogin::default()
    });
    let ctl4 = ctl.clone();
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let mut login = Login::spawn(&ctl4, &["login", "--device", "--group", "devices"]);
        let url = login.line_starting("http://");
        assert!(url.ends_with("/codex/device"), "{url}");
        login.finish()
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("dave@example.test") && stdout.contains("devices"),
        "{stdout}"
    );
    assert!(stderr.contains("Logged in: account"), "{stderr}");
    outputs.push_str(&format!("{stdout}\n{stderr}\n"));

    // Codes and verifiers appear nowhere: not in poolctl's output, the server's log or the
    // data directory.
    let mut secrets: Vec<Secret> = codes
        .iter()
        .map(|c| Secret {
            label: "authorization code".into(),
            value: c.clone(),
        })
        .collect();
    for r in mock.requests_to("/oauth/token") {
        let body = String::from_utf8(r.body.to_vec()).unwrap();
        for kv in body.split('&') {
            if let Some(v) = kv.strip_prefix("code_verifier=") {
                secrets.push(Secret {
                    label: "PKCE verifier".into(),
                    value: v.to_string(),
                });
            }
            if let Some(v) = kv.strip_prefix("code=") {
                secrets.push(Secret {
                    label: "authorization code (device)".into(),
                    value: v.to_string(),
                });
            }
        }
    }
    assert!(secrets.len() >= 6, "{}", secrets.len());
    assert_eq!(
        leaked_in(outputs.as_bytes(), &secrets),
        Vec::<String>::new()
    );
    let status = pg.terminate().unwrap();
    assert!(status.success(), "{status}");
    let log = pg.logs();
    assert!(log.contains("login completed"), "{log}");
    assert_eq!(leaked_in(log.as_bytes(), &secrets), Vec::<String>::new());
    assert_eq!(
        leaks_in_dir(&data, &[], &secrets).unwrap(),
        Vec::<String>::new()
    );
}
