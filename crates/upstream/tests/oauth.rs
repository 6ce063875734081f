//! The OAuth client against the mock issuer over real sockets: the browser flow's code
//! exchange (PKCE and redirect checked, codes single-use) and the device-code flow (pending,
//! slow_down, approval, expiry, denial).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use poolgate_core::Secret;
use poolgate_testkit::mock::{Identity, MockDeviceLogin, MockUpstream};
use poolgate_upstream::oauth::{
    DEFAULT_REDIRECT_URI, DevicePoll, OAuthClient, OAuthConfig, OAuthError, Pkce, authorize_url,
    parse_callback, random_state,
};

fn client(mock: &MockUpstream) -> OAuthClient {
    OAuthClient::new(OAuthConfig {
        issuer: mock.oauth_issuer(),
        ..OAuthConfig::default()
    })
    .unwrap()
}

/// Follows the authorize URL like a browser whose user approves at once; returns the
/// redirect target.
async fn approve_in_browser(url: &str) -> String {
    poolgate_upstream::install_crypto_provider();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 302, "{:?}", resp.text().await);
    resp.headers()["location"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn browser_code_exchange_checks_pkce_redirect_and_reuse() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_login_identity(Some(Identity::new("ana@example.test", "ws-ana")));
    let c = client(&mock);
    let pkce = Pkce::generate().unwrap();
    let state = random_state().unwrap();
    let url = authorize_url(
        c.config(),
        DEFAULT_REDIRECT_URI,
        pkce.challenge(),
        &state,
        None,
    );
    let location = approve_in_browser(&url).await;
    assert!(location.starts_with(DEFAULT_REDIRECT_URI), "{location}");
    let cb = parse_callback(&location).unwrap();
    assert_eq!(cb.state.as_deref(), Some(state.as_str()));
    let code = cb.code.unwrap();

    let tokens = c
        .exchange_code(&code, pkce.verifier(), DEFAULT_REDIRECT_URI)
        .await
        .unwrap();
    let claims = poolgate_core::jwt::openai_claims(tokens.id_token.expose()).unwrap();
    assert_eq!(claims.email.as_deref(), Some("ana@example.test"));
    assert_eq!(claims.chatgpt_account_id.as_deref(), Some("ws-ana"));
    assert!(!tokens.refresh_token.is_empty());
    assert!(tokens.expires_at_ms.is_some());

    // The same code again: refused, and the error carries neither code nor verifier.
    let e = c
        .exchange_code(&code, pkce.verifier(), DEFAULT_REDIRECT_URI)
        .await
        .unwrap_err();
    assert!(e.is_invalid_grant(), "{e}");
    let msg = e.to_string();
    assert!(!msg.contains(code.expose()) && !msg.contains(pkce.verifier().expose()));

    // A wrong verifier and a wrong redirect URI are refused too.
    for (verifier, redirect) in [
        (
            Pkce::generate().unwrap().verifier().clone(),
            DEFAULT_REDIRECT_URI,
        ),
        (pkce.verifier().clone(), "http://localhost:9999/other"),
    ] {
        let loc = approve_in_browser(&url).await;
        let code = parse_callback(&loc).unwrap().code.unwrap();
        let e = c
            .exchange_code(&code, &verifier, redirect)
            .await
            .unwrap_err();
        assert!(e.is_invalid_grant(), "{e}");
    }
    // The exchange sent what seed spec §3.1 step 8 lists.
    let sent = mock.requests_to("/oauth/token");
    let body = String::from_utf8(sent[0].body.to_vec()).unwrap();
    for part in [
        "grant_type=authorization_code",
        "code=",
        "redirect_uri=http%3A%2F%2Flocalhost%3A1455%2Fauth%2Fcallback",
        "client_id=app_EMoamEEZ73f0CkXaXp7hrann",
        "code_verifier=",
    ] {
        assert!(body.contains(part), "{part} missing in the exchange");
    }
    assert_eq!(
        sent[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
}

#[tokio::test]
async fn unreachable_issuer_is_a_transport_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let c = OAuthClient::new(OAuthConfig {
        issuer: format!("http://{addr}"),
        ..OAuthConfig::default()
    })
    .unwrap();
    let e = c
        .exchange_code(
            &Secret::new("SECRET-CODE"),
            &Secret::new("SECRET-VERIFIER"),
            DEFAULT_REDIRECT_URI,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, OAuthError::Transport(_)), "{e}");
    assert!(e.is_transient());
    assert!(!e.to_string().contains("SECRET"), "{e}");
}

#[tokio::test]
async fn device_flow_slow_down_then_approval() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_login_identity(Some(Identity::new("dev@example.test", "ws-dev")));
    mock.set_device_login(MockDeviceLogin {
        interval_secs: 1,
        approve_after_polls: Some(2),
        slow_down_polls: 1,
        expire_after_polls: None,
    });
    let c = client(&mock);
    let d = c.request_device_code().await.unwrap();
    assert_eq!(d.interval, Duration::from_secs(1));
    assert_eq!(d.verification_url, format!("{}/codex/device", mock.url()));
    assert!(!format!("{d:?}").contains(d.device_auth_id.expose()));

    // One poll by hand: the first answer is slow_down.
    assert!(matches!(
        c.poll_device(&d).await.unwrap(),
        DevicePoll::SlowDown
    ));
    assert!(matches!(
        c.poll_device(&d).await.unwrap(),
        DevicePoll::Pending
    ));
    let started = tokio::time::Instant::now();
    let tokens = c
        .wait_for_device(&d, started + Duration::from_secs(30))
        .await
        .unwrap();
    let claims = poolgate_core::jwt::openai_claims(tokens.id_token.expose()).unwrap();
    assert_eq!(claims.email.as_deref(), Some("dev@example.test"));
    // The device code's exchange used the device redirect URI and the issued verifier.
    let sent = mock.requests_to("/oauth/token");
    assert_eq!(sent.len(), 1);
    let body = String::from_utf8(sent[0].body.to_vec()).unwrap();
    assert!(
        body.contains("redirect_uri=http%3A%2F%2F127.0.0.1"),
        "{body}"
    );
    assert!(body.contains("%2Fdeviceauth%2Fcallback"), "{body}");
    // The polls sent JSON with the device id and user code.
    let poll = &mock.requests_to("/api/accounts/deviceauth/token")[0];
    let json = poll.json().unwrap();
    assert_eq!(json["user_code"], d.user_code.as_str());
    assert_eq!(json["device_auth_id"], d.device_auth_id.expose());
}

#[tokio::test]
async fn device_flow_slow_down_widens_the_interval() {
    let mock = MockUpstream::start().await.unwrap();
    mock.set_device_login(MockDeviceLogin {
        interval_secs: 1,
        approve_after_polls: Some(1),
        slow_down_polls: 1,
        expire_after_polls: None,
    });
    let c = client(&mock);
    let d = c.request_device_code().await.unwrap();
    let start = tokio::time::Instant::now();
    c.wait_for_device(&d, start + Duration::from_secs(30))
        .await
        .unwrap();
    // Poll 1 at 1 s (slow_down), poll 2 (approved) 1 + 5 s later, not 1 s later.
    let polls = mock.requests_to("/api/accounts/deviceauth/token");
    assert_eq!(polls.len(), 2);
    assert!(start.elapsed() >= Duration::from_secs(7));
}

#[tokio::test]
async fn device_flow_expiry_denial_and_deadline() {
    let mock = MockUpstream::start().await.unwrap();
    let c = client(&mock);
    mock.set_device_login(MockDeviceLogin {
        expire_after_polls: Some(2),
        ..MockDeviceLogin::default()
    });
    let d = c.request_device_code().await.unwrap();
    let now = tokio::time::Instant::now();
    let e = c
        .wait_for_device(&d, now + Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(e, OAuthError::DeviceExpired), "{e}");

    mock.set_device_login(MockDeviceLogin::default());
    let d = c.request_device_code().await.unwrap();
    assert!(mock.deny_device(&d.user_code));
    let e = c
        .wait_for_device(&d, now + Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(matches!(e, OAuthError::DeviceDenied), "{e}");
    assert!(!mock.approve_device("NOPE-NOPE"));

    // Never approved: the deadline ends the wait without another poll past it.
    let d = c.request_device_code().await.unwrap();
    let e = c
        .wait_for_device(
            &d,
            tokio::time::Instant::now() + Duration::from_millis(1500),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, OAuthError::DeviceExpired), "{e}");
    // Approving afterwards works for a new poll by hand.
    assert!(mock.approve_device(&d.user_code));
    assert!(matches!(
        c.poll_device(&d).await.unwrap(),
        DevicePoll::Authorized { .. }
    ));
}
