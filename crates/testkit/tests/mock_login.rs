//! The mock issuer's login endpoints through its HTTP surface (what the binary's users see):
//! authorize validation and redirect, and the `/__mock/` controls of device logins.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use poolgate_testkit::mock::MockUpstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn call(mock: &MockUpstream, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(mock.addr()).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, text)
}

const GOOD: &str = "/oauth/authorize?response_type=code&client_id=c&redirect_uri=http%3A%2F%2F\
                    localhost%3A1455%2Fauth%2Fcallback&scope=openid%20profile%20email%20\
                    offline_access&code_challenge=abc&code_challenge_method=S256&state=s%2B1";

#[tokio::test]
async fn authorize_redirects_or_says_what_is_wrong() {
    let mock = MockUpstream::start().await.unwrap();
    let (code, raw) = call(&mock, "GET", GOOD, "").await;
    assert_eq!(code, 302, "{raw}");
    assert!(
        raw.contains("location: http://localhost:1455/auth/callback?code=ac_mock_"),
        "{raw}"
    );
    assert!(raw.contains("&state=s%2B1"), "{raw}");
    let (code, raw) = call(&mock, "GET", &GOOD.replace("&state=s%2B1", ""), "").await;
    assert_eq!(code, 400);
    assert!(raw.contains("state is required"), "{raw}");
    let (code, raw) = call(&mock, "GET", &GOOD.replace("S256", "plain"), "").await;
    assert_eq!(code, 400);
    assert!(raw.contains("S256"), "{raw}");
    let (code, _) = call(&mock, "GET", &GOOD.replace("%20offline_access", ""), "").await;
    assert_eq!(code, 400);
    let (code, _) = call(&mock, "POST", "/oauth/authorize", "").await;
    assert_eq!(code, 405);
}

#[tokio::test]
async fn device_login_controls() {
    let mock = MockUpstream::start().await.unwrap();
    let (code, _) = call(&mock, "POST", "/__mock/device", r#"{"interval_secs": 3}"#).await;
    assert_eq!(code, 204);
    let (code, _) = call(
        &mock,
        "POST",
        "/__mock/login-identity",
        r#"{"email": "e@x.test", "account_id": "ws-e"}"#,
    )
    .await;
    assert_eq!(code, 204);
    let (code, raw) = call(
        &mock,
        "POST",
        "/api/accounts/deviceauth/usercode",
        r#"{"client_id": "c"}"#,
    )
    .await;
    assert_eq!(code, 200, "{raw}");
    let body: serde_json::Value =
        serde_json::from_str(raw.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["interval"], "3");
    let (id, user_code) = (
        body["device_auth_id"].as_str().unwrap(),
        body["user_code"].as_str().unwrap(),
    );
    let poll = serde_json::json!({"device_auth_id": id, "user_code": user_code}).to_string();
    let (code, _) = call(&mock, "POST", "/api/accounts/deviceauth/token", &poll).await;
    assert_eq!(code, 403);
    let (code, _) = call(
        &mock,
        "POST",
        "/__mock/device/approve",
        r#"{"user_code": "NOPE"}"#,
    )
    .await;
    assert_eq!(code, 404);
    let approve = serde_json::json!({ "user_code": user_code }).to_string();
    let (code, _) = call(&mock, "POST", "/__mock/device/approve", &approve).await;
    assert_eq!(code, 204);
    let (code, raw) = call(&mock, "POST", "/api/accounts/deviceauth/token", &poll).await;
    assert_eq!(code, 200, "{raw}");
    assert!(
        raw.contains("authorization_code") && raw.contains("code_verifier"),
        "{raw}"
    );
    // Handed out once.
    let (code, raw) = call(&mock, "POST", "/api/accounts/deviceauth/token", &poll).await;
    assert_eq!(code, 400);
    assert!(raw.contains("expired_token"), "{raw}");
    let (code, _) = call(&mock, "POST", "/api/accounts/deviceauth/usercode", "{}").await;
    assert_eq!(code, 400);
}
