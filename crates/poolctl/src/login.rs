//! `poolctl login`: drives a login session of the control plane's LoginService.
//!
//! - browser (default): listens where the control plane's redirect URI points (or
//!   `--listen`), opens the authorize URL (and always prints it), and forwards the browser's
//!   redirect to CompleteLogin; the browser gets a short page saying how it went.
//! - `--manual`: prints the URL and reads the address the browser ended on from stdin.
//! - `--device`: shows the user code and polls until the control plane has the tokens.
//!
//! Ctrl-C and the session's expiry end every mode; Ctrl-C also cancels the session.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail};
use poolgate_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::{Code, Status};

use crate::cli::LoginArgs;
use crate::client::{Client, Ctx};

/// Longest request head accepted on the callback listener.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// A browser that connects must send its request within this time.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

fn note(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// A failed login call: the server's own words for an expired session (DEADLINE_EXCEEDED is
/// otherwise read as a slow server).
fn status(ctx: &Ctx, s: &Status) -> anyhow::Error {
    if s.code() == Code::DeadlineExceeded && s.message().contains("expired") {
        return anyhow!("{}", s.message());
    }
    ctx.status(s)
}

fn mode(args: &LoginArgs) -> &'static str {
    if args.device {
        "device"
    } else if args.manual {
        "manual"
    } else {
        "browser"
    }
}

/// Runs the login; returns the created or updated account.
pub async fn run(c: &mut Client, args: LoginArgs) -> anyhow::Result<v1::LoginResult> {
    let ctx = c.ctx.clone();
    let start = c
        .login
        .start_login(v1::StartLoginRequest {
            mode: mode(&args).into(),
            group: args.group.clone().unwrap_or_default(),
            name: args.name.clone().unwrap_or_default(),
            workspace_id: args.workspace.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| status(&ctx, &s))?
        .into_inner();
    let remaining = Duration::from_millis(
        u64::try_from(start.expires_at_ms.saturating_sub(crate::run::now_ms())).unwrap_or(0),
    ) + Duration::from_secs(2);
    let session = start.session_id.clone();
    let work = async {
        match mode(&args) {
            "device" => device(c, &ctx, &start).await,
            "manual" => manual(c, &ctx, &start).await,
            _ => browser(c, &ctx, &start, &args).await,
        }
    };
    let outcome = tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("login cancelled")),
        _ = tokio::time::sleep(remaining) => Err(anyhow!(
            "the login was not completed in time (the session expired); start again"
        )),
    };
    if outcome.is_err() {
        // Best effort: frees the session (and stops a device poller) on the control plane.
        let _ = c
            .login
            .cancel_login(v1::CancelLoginRequest {
                session_id: session,
            })
            .await;
    }
    outcome
}

async fn manual(
    c: &mut Client,
    ctx: &Ctx,
    start: &v1::StartLoginResponse,
) -> anyhow::Result<v1::LoginResult> {
    note(&format!(
        "Open this URL in a browser and log in:\n\n  {}\n\nThe browser then goes to {}… (the \
         page may fail to load; that is fine).\nPaste that whole address here and press Enter:",
        start.authorize_url, start.redirect_uri
    ));
    // A plain thread: a blocked read must not keep the process alive after Ctrl-C.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        use std::io::{BufRead, Read};
        let mut line = String::new();
        let r = std::io::stdin()
            .lock()
            .take(MAX_HEAD_BYTES as u64)
            .read_line(&mut line)
            .map(|n| (n, line));
        let _ = tx.send(r);
    });
    let (n, line) = rx.await.map_err(|_| anyhow!("cannot read stdin"))??;
    if n == 0 {
        bail!("no callback address on stdin: paste the address the browser was sent back to");
    }
    if line.trim().is_empty() {
        bail!("the pasted callback address is empty");
    }
    let r = c
        .login
        .complete_login(v1::CompleteLoginRequest {
            session_id: start.session_id.clone(),
            callback_url: line.trim().to_string(),
            ..Default::default()
        })
        .await
        .map_err(|s| status(ctx, &s))?;
    Ok(r.into_inner())
}

async fn device(
    c: &mut Client,
    ctx: &Ctx,
    start: &v1::StartLoginResponse,
) -> anyhow::Result<v1::LoginResult> {
    note(&format!(
        "On any device, open\n\n  {}\n\nand enter the code\n\n  {}\n\nWaiting for the login \
         to be approved (Ctrl-C to cancel)…",
        start.verification_url, start.user_code
    ));
    let mut interval = Duration::from_secs(u64::from(start.interval_secs.clamp(1, 60)));
    loop {
        tokio::time::sleep(interval).await;
        let r = c
            .login
            .poll_device_login(v1::PollDeviceLoginRequest {
                session_id: start.session_id.clone(),
            })
            .await
            .map_err(|s| status(ctx, &s))?
            .into_inner();
        if r.status == "complete" {
            return r
                .result
                .ok_or_else(|| anyhow!("the control plane reported a login without its account"));
        }
        interval = Duration::from_secs(u64::from(r.interval_secs.clamp(1, 60)));
    }
}

/// The addresses to listen on for the redirect: `--listen`, or the redirect URI's own host
/// and port (`localhost` means both loopback addresses, like the Codex CLI).
fn listen_addrs(listen: Option<&str>, redirect_uri: &str) -> anyhow::Result<Vec<SocketAddr>> {
    if let Some(l) = listen {
        let addr = l.trim().parse::<SocketAddr>().map_err(|_| {
            anyhow!("invalid --listen {l:?}: expected host:port, e.g. 127.0.0.1:1455")
        })?;
        return Ok(vec![addr]);
    }
    let rest = redirect_uri.strip_prefix("http://").ok_or_else(|| {
        anyhow!(
            "the control plane's redirect URI {redirect_uri} is not a local http:// address; \
                 use --manual (or --listen HOST:PORT)"
        )
    })?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| anyhow!("bad port in {redirect_uri}"))?,
        ),
        None => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(vec![
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ]);
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(vec![SocketAddr::new(ip, port)]),
        _ => bail!(
            "the control plane's redirect URI {redirect_uri} does not point at this machine; \
             use --manual, or --listen HOST:PORT if it reaches this machine"
        ),
    }
}

/// The path part of the redirect URI (`/auth/callback`).
fn callback_path(redirect_uri: &str) -> String {
    let rest = redirect_uri
        .split_once("://")
        .map_or(redirect_uri, |(_, r)| r);
    match rest.find('/') {
        Some(i) => rest[i..]
            .split(['?', '#'])
            .next()
            .unwrap_or("/")
            .to_string(),
        None => "/".into(),
    }
}

async fn browser(
    c: &mut Client,
    ctx: &Ctx,
    start: &v1::StartLoginResponse,
    args: &LoginArgs,
) -> anyhow::Result<v1::LoginResult> {
    let addrs = listen_addrs(args.listen.as_deref(), &start.redirect_uri)?;
    let mut listeners = Vec::new();
    let mut first_error = None;
    for a in &addrs {
        match TcpListener::bind(a).await {
            Ok(l) => listeners.push(l),
            Err(e) => {
                first_error.get_or_insert((*a, e));
            }
        }
    }
    if listeners.is_empty() {
        let (a, e) = first_error.ok_or_else(|| anyhow!("nowhere to listen"))?;
        bail!(
            "cannot listen on {a} for the browser's redirect: {e} (another login, e.g. the Codex \
             CLI's, may be using the port); use --manual or --listen HOST:PORT"
        );
    }
    let path = callback_path(&start.redirect_uri);
    note(&format!(
        "Open this URL in a browser to log in:\n\n  {}\n\nWaiting for the browser at {} (Ctrl-C \
         to cancel)…",
        start.authorize_url, start.redirect_uri
    ));
    if !args.no_browser {
        open_browser(&start.authorize_url);
    }
    loop {
        let stream = accept_any(&listeners).await?;
        let Some((target, mut stream)) = read_target(stream).await else {
            continue;
        };
        if target.split('?').next() != Some(path.as_str()) {
            answer(
                &mut stream,
                404,
                "Not found. This is poolctl waiting for a login.",
            )
            .await;
            continue;
        }
        let r = c
            .login
            .complete_login(v1::CompleteLoginRequest {
                session_id: start.session_id.clone(),
                callback_url: target,
                ..Default::default()
            })
            .await;
        return match r {
            Ok(r) => {
                answer(
                    &mut stream,
                    200,
                    "Login complete: poolgate has the account. You can close this window.",
                )
                .await;
                Ok(r.into_inner())
            }
            Err(s) => {
                let e = status(ctx, &s);
                answer(&mut stream, 400, &format!("Login failed: {e}")).await;
                Err(e)
            }
        };
    }
}

async fn accept_any(listeners: &[TcpListener]) -> std::io::Result<TcpStream> {
    match listeners {
        [a] => a.accept().await.map(|(s, _)| s),
        [a, b, ..] => tokio::select! {
            r = a.accept() => r.map(|(s, _)| s),
            r = b.accept() => r.map(|(s, _)| s),
        },
        [] => Err(std::io::Error::other("no listener")),
    }
}

/// Reads a request head; returns the request target of a GET (None: not one, or too slow).
async fn read_target(mut stream: TcpStream) -> Option<(String, TcpStream)> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 || buf.len() + n > MAX_HEAD_BYTES {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(())
    };
    tokio::time::timeout(HEAD_TIMEOUT, read).await.ok()??;
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next()?.split_whitespace();
    let (method, target) = (parts.next()?, parts.next()?);
    if method != "GET" {
        answer(&mut stream, 405, "Only GET is served here.").await;
        return None;
    }
    Some((target.to_string(), stream))
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn answer(stream: &mut TcpStream, code: u16, text: &str) {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>poolgate login</title></head>\
         <body><p>{}</p></body></html>\n",
        escape_html(text)
    );
    let resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: \
         {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Tries `xdg-open` (or `open` on macOS) without waiting for it; the URL is printed anyway.
fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let spawned = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Ok(mut child) = spawned {
        // Reap it in the background so it does not linger as a zombie.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_follow_the_redirect_uri() {
        let a = listen_addrs(None, "http://localhost:1455/auth/callback").unwrap();
        assert_eq!(a[0], "127.0.0.1:1455".parse().unwrap());
        assert_eq!(a[1], "[::1]:1455".parse().unwrap());
        let a = listen_addrs(None, "http://127.0.0.1:7001/cb").unwrap();
        assert_eq!(a, vec!["127.0.0.1:7001".parse().unwrap()]);
        let a = listen_addrs(Some("127.0.0.1:9"), "https://login.example.test/cb").unwrap();
        assert_eq!(a, vec!["127.0.0.1:9".parse().unwrap()]);
        let e = listen_addrs(None, "https://login.example.test/cb").unwrap_err();
        assert!(e.to_string().contains("--manual"), "{e}");
        let e = listen_addrs(None, "http://10.0.0.1:1455/cb").unwrap_err();
        assert!(
            e.to_string().contains("does not point at this machine"),
            "{e}"
        );
        assert!(listen_addrs(Some("nope"), "http://localhost:1/").is_err());
        assert_eq!(
            callback_path("http://localhost:1455/auth/callback"),
            "/auth/callback"
        );
        assert_eq!(callback_path("http://localhost:1455"), "/");
    }

    #[test]
    fn expired_sessions_read_as_such() {
        let ctx = Ctx {
            server: "http://x".into(),
            has_token: true,
            timeout: Duration::from_secs(1),
        };
        let e = status(
            &ctx,
            &Status::deadline_exceeded("login session lgn_1 expired (10m)"),
        );
        assert_eq!(e.to_string(), "login session lgn_1 expired (10m)");
        let e = status(&ctx, &Status::deadline_exceeded(""));
        assert!(e.to_string().contains("raise --timeout"), "{e}");
        assert_eq!(escape_html("<a&\"b\">"), "&lt;a&amp;&quot;b&quot;&gt;");
    }
}
