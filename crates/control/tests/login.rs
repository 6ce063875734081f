//! `LoginService` over real sockets, on a SQLite control plane whose OAuth issuer is the mock:
//! the browser flow completed with the callback URL (and with code + state), identity dedupe,
//! the device flow, and every error path (wrong state, reused code, expired, unknown, wrong
//! mode, other token's session, viewer token, too many sessions), with no code, verifier or
//! token in any status message, audit event or log line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{Harness, admin, authed};
use poolgate_core::Credentials;
use poolgate_proto::v1 as pb;
use poolgate_proto::v1::login_service_client::LoginServiceClient;
use poolgate_testkit::mock::{Identity, MockDeviceLogin, MockUpstream};
use tonic::Code;
use tonic::transport::Channel;

const REDIRECT: &str = "http://localhost:1455/auth/callback";

/// Every log line of this test binary, at debug level.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

struct Env {
    mock: MockUpstream,
    cp: Harness,
}

impl Env {
    async fn start(tweak: impl FnOnce(&mut poolgate_control::ControlConfig)) -> Env {
        logs();
        let mock = MockUpstream::start().await.unwrap();
        let issuer = mock.oauth_issuer();
        let cp = Harness::start_with(|c| {
            c.oauth.issuer = issuer;
            tweak(c);
        })
        .await;
        Env { mock, cp }
    }

    async fn login(&self) -> LoginServiceClient<Channel> {
        LoginServiceClient::new(self.cp.channel().await)
    }

    async fn start_login(&self, mode: &str) -> pb::StartLoginResponse {
        self.login()
            .await
            .start_login(admin(pb::StartLoginRequest {
                mode: mode.into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
    }

    /// Every secret the login touched: codes sent back, verifiers and tokens the mock saw or
    /// issued, and the credentials now stored.
    async fn secrets(&self, extra: &[String]) -> Vec<String> {
        let mut out: Vec<String> = extra.to_vec();
        for r in self.mock.requests_to("/oauth/token") {
            let body = String::from_utf8(r.body.to_vec()).unwrap();
            for kv in body.split('&') {
                if let Some(v) = kv
                    .strip_prefix("code=")
                    .or_else(|| kv.strip_prefix("code_verifier="))
                {
                    out.push(v.to_string());
                }
            }
        }
        let accounts = self
            .cp
            .store
            .list_accounts(
                &Default::default(),
                &poolgate_core::page::PageRequest::parse(
                    poolgate_store::listing::ACCOUNTS,
                    1000,
                    "",
                )
                .unwrap(),
            )
            .await
            .unwrap();
        for a in accounts.items {
            if let Some(Credentials::OAuth(t)) = self.cp.store.get_credentials(&a.id).await.unwrap()
            {
                out.push(t.access_token.expose().to_string());
                out.push(t.refresh_token.expose().to_string());
                out.push(t.id_token.expose().to_string());
            }
        }
        out.retain(|s| s.len() >= 8);
        out
    }

    /// No secret in the audit trail or the log.
    async fn assert_no_leaks(&self, extra: &[String]) {
        let secrets = self.secrets(extra).await;
        assert!(!secrets.is_empty());
        let mut c = self.cp.client().await;
        let audit = c
            .list_audit_events(admin(pb::ListAuditEventsRequest {
                page_size: 1000,
                page_token: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        let audit_text = format!("{:?}", audit.events);
        let log = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
        assert!(
            log.contains("login started"),
            "the log capture is not working"
        );
        for s in &secrets {
            assert!(
                !audit_text.contains(s.as_str()),
                "a secret is in the audit trail"
            );
            assert!(!log.contains(s.as_str()), "a secret is in the log");
        }
    }
}

/// Follows an authorize URL as a browser whose user approves at once; the redirect target.
async fn browser(url: &str) -> String {
    let (addr, path) = split_url(url);
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    assert!(text.starts_with("HTTP/1.1 302"), "{text}");
    text.lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .unwrap()
        .trim()
        .to_string()
}

/// `http://ADDR/PATH?Q` → (ADDR, /PATH?Q).
fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let i = rest.find('/').unwrap();
    (rest[..i].to_string(), rest[i..].to_string())
}

fn complete_req(session: &str, callback: &str) -> pb::CompleteLoginRequest {
    pb::CompleteLoginRequest {
        session_id: session.into(),
        callback_url: callback.into(),
        ..Default::default()
    }
}

fn query_param(url: &str, name: &str) -> String {
    let q = url.split_once('?').unwrap().1;
    q.split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn browser_login_creates_then_updates_the_same_account() {
    let env = Env::start(|_| {}).await;
    env.mock
        .set_login_identity(Some(Identity::new("ana@example.test", "ws-ana")));
    let mut login = env.login().await;
    let started = env.start_login("browser").await;
    assert!(started.session_id.starts_with("lgn_"));
    assert_eq!(started.redirect_uri, REDIRECT);
    assert!(
        started
            .authorize_url
            .starts_with(&format!("{}/oauth/authorize?", env.mock.url()))
    );
    assert!(started.expires_at_ms > 0);
    let callback = browser(&started.authorize_url).await;
    assert!(callback.starts_with(REDIRECT), "{callback}");

    let r = login
        .complete_login(admin(complete_req(&started.session_id, &callback)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, "created");
    let a = r.account.unwrap();
    assert_eq!(a.name, "ana@example.test");
    assert_eq!(a.provider, "codex");
    assert_eq!(a.group, "default");
    assert!(a.has_credentials);
    assert_eq!(a.identity.as_ref().unwrap().chatgpt_account_id, "ws-ana");
    assert_eq!(a.identity.as_ref().unwrap().email, "ana@example.test");
    let Some(Credentials::OAuth(t)) = env.cp.store.get_credentials(&a.id).await.unwrap() else {
        panic!("no OAuth credentials stored")
    };
    assert!(t.refresh_token.expose().starts_with("rt_mock_"));
    assert!(t.last_refresh_ms.is_some());

    // The same callback again: the session is done and the code spent.
    let e = login
        .complete_login(admin(complete_req(&started.session_id, &callback)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("already completed"), "{}", e.message());

    // Logging in again as the same person (manual mode, code + state fields) updates the
    // account instead of adding one; a name for new accounts does not rename it.
    let again = login
        .start_login(admin(pb::StartLoginRequest {
            mode: "manual".into(),
            group: "team".into(),
            name: "ignored for existing".into(),
            workspace_id: "ws-ana".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.mode, "manual");
    assert!(again.authorize_url.contains("allowed_workspace_id=ws-ana"));
    let cb = browser(&again.authorize_url).await;
    let r = login
        .complete_login(admin(pb::CompleteLoginRequest {
            session_id: again.session_id.clone(),
            callback_url: String::new(),
            code: query_param(&cb, "code"),
            state: query_param(&cb, "state"),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, "updated");
    let b = r.account.unwrap();
    assert_eq!(
        (b.id.as_str(), b.name.as_str()),
        (a.id.as_str(), a.name.as_str())
    );

    // A different person with a name and a group gets a new account.
    env.mock
        .set_login_identity(Some(Identity::new("bo@example.test", "ws-bo")));
    let third = login
        .start_login(admin(pb::StartLoginRequest {
            mode: "browser".into(),
            group: "team".into(),
            name: "Bo's plus".into(),
            workspace_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    let cb = browser(&third.authorize_url).await;
    let r = login
        .complete_login(admin(complete_req(&third.session_id, &cb)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, "created");
    let c = r.account.unwrap();
    assert_eq!((c.name.as_str(), c.group.as_str()), ("Bo's plus", "team"));

    env.assert_no_leaks(&[query_param(&callback, "code")]).await;
}

#[tokio::test]
async fn wrong_state_reused_code_and_missing_parts() {
    let env = Env::start(|_| {}).await;
    let mut login = env.login().await;
    let a = env.start_login("browser").await;
    let b = env.start_login("manual").await;
    let cb_a = browser(&a.authorize_url).await;
    let mut errors = Vec::new();

    // Session b with session a's callback: wrong state, and b stays usable.
    let e = login
        .complete_login(admin(complete_req(&b.session_id, &cb_a)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("state does not match"),
        "{}",
        e.message()
    );
    errors.push(e.message().to_string());

    // No code, no state, garbage.
    for (input, want) in [
        (
            format!("{REDIRECT}?state={}", query_param(&cb_a, "state")),
            "no code",
        ),
        (format!("{REDIRECT}?code=abc"), "no state"),
        (REDIRECT.to_string(), "no query"),
    ] {
        let e = login
            .complete_login(admin(complete_req(&a.session_id, &input)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{input}");
        assert!(e.message().contains(want), "{}", e.message());
        errors.push(e.message().to_string());
    }

    // The issuer refusing the login.
    let e = login
        .complete_login(admin(complete_req(
            &a.session_id,
            &format!(
                "{REDIRECT}?error=access_denied&error_description=User+cancelled&state={}",
                query_param(&cb_a, "state")
            ),
        )))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("access_denied: User cancelled"),
        "{}",
        e.message()
    );

    // The code already redeemed by someone else: the issuer says invalid_grant.
    let code = query_param(&cb_a, "code");
    let stolen = post_form(
        &format!("{}/oauth/token", env.mock.url()),
        &format!("grant_type=authorization_code&code={code}&code_verifier=x&redirect_uri=y"),
    )
    .await;
    assert_eq!(stolen, 400);
    let e = login
        .complete_login(admin(complete_req(&a.session_id, &cb_a)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("already used"), "{}", e.message());
    errors.push(e.message().to_string());

    // The session survives: the person opens the URL again and gets a fresh code.
    let fresh = browser(&a.authorize_url).await;
    let r = login
        .complete_login(admin(complete_req(&a.session_id, &fresh)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, "created");

    // Unknown and empty session ids; the wrong mode's call.
    let e = login
        .complete_login(admin(complete_req("lgn_nope", &fresh)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("lgn_nope"), "{}", e.message());
    let e = login
        .complete_login(admin(complete_req(" ", &fresh)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = login
        .poll_device_login(admin(pb::PollDeviceLoginRequest {
            session_id: b.session_id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("browser login"), "{}", e.message());
    let e = login
        .start_login(admin(pb::StartLoginRequest {
            mode: "carrier-pigeon".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = login
        .start_login(admin(pb::StartLoginRequest {
            group: "Not A Label!".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Cancelled sessions are gone.
    login
        .cancel_login(admin(pb::CancelLoginRequest {
            session_id: b.session_id.clone(),
        }))
        .await
        .unwrap();
    let e = login
        .complete_login(admin(complete_req(&b.session_id, &fresh)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    let secrets = env.secrets(&[code, query_param(&fresh, "code")]).await;
    for msg in &errors {
        for s in &secrets {
            assert!(!msg.contains(s.as_str()), "a secret is in an error: {msg}");
        }
    }
    env.assert_no_leaks(&[query_param(&fresh, "code")]).await;
}

/// POSTs a form; returns the status.
async fn post_form(url: &str, body: &str) -> u16 {
    let (addr, path) = split_url(url);
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: \
         application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    String::from_utf8_lossy(&raw)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn expired_sessions_and_the_session_bound() {
    let env = Env::start(|c| {
        c.login.session_ttl = Duration::from_secs(1);
        c.login.max_sessions = 2;
    })
    .await;
    let mut login = env.login().await;
    let a = env.start_login("browser").await;
    let cb = browser(&a.authorize_url).await;
    let _b = env.start_login("browser").await;
    let e = login
        .start_login(admin(pb::StartLoginRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("at most 2"), "{}", e.message());

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let e = login
        .complete_login(admin(complete_req(&a.session_id, &cb)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert!(e.message().contains("expired"), "{}", e.message());
    // Expired sessions no longer count against the bound.
    env.start_login("browser").await;
    // Nothing reached the issuer.
    assert!(env.mock.requests_to("/oauth/token").is_empty());
}

#[tokio::test]
async fn viewer_tokens_and_other_admins_are_refused() {
    let env = Env::start(|_| {}).await;
    let mut admin_api = env.cp.client().await;
    let mut tokens = Vec::new();
    for role in ["viewer", "admin"] {
        let t = admin_api
            .create_admin_token(admin(pb::CreateAdminTokenRequest {
                name: format!("{role}-1"),
                role: role.into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .token;
        tokens.push(t);
    }
    let mut login = env.login().await;
    let e = login
        .start_login(authed(&tokens[0], pb::StartLoginRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("viewer"), "{}", e.message());
    let e = login
        .start_login(pb::StartLoginRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // A session belongs to the token that started it.
    let mine = env.start_login("browser").await;
    let cb = browser(&mine.authorize_url).await;
    let e = login
        .complete_login(authed(&tokens[1], complete_req(&mine.session_id, &cb)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = login
        .complete_login(authed(&tokens[0], complete_req(&mine.session_id, &cb)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Still completable by its owner.
    login
        .complete_login(admin(complete_req(&mine.session_id, &cb)))
        .await
        .unwrap();
}

#[tokio::test]
async fn device_login_polls_until_approved() {
    let env = Env::start(|_| {}).await;
    env.mock
        .set_login_identity(Some(Identity::new("dev@example.test", "ws-dev")));
    env.mock.set_device_login(MockDeviceLogin::default());
    let mut login = env.login().await;
    let started = login
        .start_login(admin(pb::StartLoginRequest {
            mode: "device".into(),
            group: "devices".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(started.mode, "device");
    assert_eq!(started.interval_secs, 1);
    assert_eq!(
        started.verification_url,
        format!("{}/codex/device", env.mock.url())
    );
    assert!(started.authorize_url.is_empty());
    let poll = || pb::PollDeviceLoginRequest {
        session_id: started.session_id.clone(),
    };
    let r = login
        .poll_device_login(admin(poll()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, "pending");
    // The browser-mode call is refused for a device session.
    let e = login
        .complete_login(admin(complete_req(&started.session_id, "code=a&state=b")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);

    // Pending until the person approves.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = login
        .poll_device_login(admin(poll()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, "pending");
    assert!(env.mock.approve_device(&started.user_code));
    let mut done = None;
    for _ in 0..50 {
        let r = login
            .poll_device_login(admin(poll()))
            .await
            .unwrap()
            .into_inner();
        if r.status == "complete" {
            done = r.result;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let result = done.expect("the device login did not complete");
    assert_eq!(result.outcome, "created");
    let a = result.account.unwrap();
    assert_eq!(
        (a.name.as_str(), a.group.as_str()),
        ("dev@example.test", "devices")
    );
    // Polling again keeps answering complete.
    let r = login
        .poll_device_login(admin(poll()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, "complete");
    env.assert_no_leaks(&[]).await;
}

#[tokio::test]
async fn device_login_denied_and_expired() {
    let env = Env::start(|c| c.login.session_ttl = Duration::from_secs(3)).await;
    let mut login = env.login().await;
    env.mock.set_device_login(MockDeviceLogin::default());
    let denied = env.start_login("device").await;
    assert!(env.mock.deny_device(&denied.user_code));
    let expired = env.start_login("device").await;
    let wait_error = |id: String| {
        let mut login = login.clone();
        async move {
            for _ in 0..50 {
                match login
                    .poll_device_login(admin(pb::PollDeviceLoginRequest {
                        session_id: id.clone(),
                    }))
                    .await
                {
                    Ok(r) => assert_eq!(r.into_inner().status, "pending"),
                    Err(e) => return e,
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            panic!("no error")
        }
    };
    let e = wait_error(denied.session_id.clone()).await;
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("denied"), "{}", e.message());
    let e = wait_error(expired.session_id.clone()).await;
    assert_eq!(e.code(), Code::DeadlineExceeded);
    assert!(e.message().contains("expired"), "{}", e.message());
    // Cancelling a device login stops its poller.
    let c = env.start_login("device").await;
    login
        .cancel_login(admin(pb::CancelLoginRequest {
            session_id: c.session_id.clone(),
        }))
        .await
        .unwrap();
    let before = env.mock.requests_to("/api/accounts/deviceauth/token").len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = env.mock.requests_to("/api/accounts/deviceauth/token").len();
    assert_eq!(before, after, "a cancelled device login kept polling");
}

#[tokio::test]
async fn unreachable_issuer_and_bad_config() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let env = Env::start(|c| c.oauth.issuer = dead.clone()).await;
    let mut login = env.login().await;
    let e = login
        .start_login(admin(pb::StartLoginRequest {
            mode: "device".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains(&dead), "{}", e.message());
    // A browser start needs no issuer call; the exchange does.
    let s = env.start_login("browser").await;
    let state = query_param(&s.authorize_url, "state");
    let e = login
        .complete_login(admin(pb::CompleteLoginRequest {
            session_id: s.session_id.clone(),
            code: "SECRET-CODE-123".into(),
            state: poolgate_upstream::oauth::decode_component(&state),
            callback_url: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(!e.message().contains("SECRET-CODE-123"), "{}", e.message());

    for bad in [
        |c: &mut poolgate_control::ControlConfig| c.oauth.issuer = "auth.openai.com".into(),
        |c: &mut poolgate_control::ControlConfig| c.login.redirect_uri = "nope".into(),
        |c: &mut poolgate_control::ControlConfig| c.login.max_sessions = 0,
    ] {
        let mut cfg = poolgate_control::ControlConfig::new("127.0.0.1:0", "127.0.0.1:0");
        bad(&mut cfg);
        let store = Arc::new(
            poolgate_store::SqliteStore::open(
                &env.cp.dir.as_ref().unwrap().path().join("other.db"),
                poolgate_store::Cipher::new(&common::KEY),
            )
            .unwrap(),
        );
        let e = poolgate_control::bind(cfg, store).await.unwrap_err();
        assert!(
            matches!(e, poolgate_control::ControlError::Config(_)),
            "{e}"
        );
    }
}
