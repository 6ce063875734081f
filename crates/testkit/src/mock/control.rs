//! The control API under `/__mock/` (for the binary; in-process users call the methods of
//! [`MockUpstream`](super::MockUpstream) directly).
//!
//! - `GET /__mock/health` → `ok`
//! - `POST /__mock/faults` `{"token", "fault": {"kind": …}, "remaining"?: N, "append"?: bool}`
//! - `DELETE /__mock/faults[?token=T]`
//! - `GET /__mock/requests` → recorded requests (oldest first); `DELETE` clears them
//! - `GET /__mock/count?token=T` → `{"token", "count"}`
//! - `POST /__mock/usage` `{"token", "usage": {"plan_type", "primary", "secondary", "additional"}}`
//! - `POST /__mock/pacing` `{"token", "pacing": {"deltas"?, "delta_delay_ms"?}}`
//! - `POST /__mock/tokens` `{"email", "account_id"}` → a fresh token set (see
//!   [`MockUpstream::issue_tokens`](super::MockUpstream::issue_tokens))
//! - `POST /__mock/login-identity` `{"email", "account_id"}` (or `null`) → who the next
//!   logins are
//! - `POST /__mock/device` `{interval_secs?, approve_after_polls?, slow_down_polls?,
//!   expire_after_polls?}`; `POST /__mock/device/approve|deny` `{"user_code"}` (404: none)

use std::sync::Arc;

use http::{Method, Response, StatusCode, header};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::body::MockBody;
use super::fault::{Fault, FaultRule};
use super::oauth::{DEFAULT_CLIENT_ID, Identity, issue};
use super::server::Cx;
use super::state::Pacing;
use super::usage::MockUsage;
use super::util::{empty, form_decode, json_value, now_secs, query_param, set_header};

#[derive(Deserialize)]
struct FaultReq {
    token: String,
    fault: Fault,
    #[serde(default)]
    remaining: Option<u32>,
    #[serde(default)]
    append: bool,
}

#[derive(Deserialize)]
struct UsageReq {
    token: String,
    usage: MockUsage,
}

#[derive(Deserialize)]
struct PacingReq {
    token: String,
    pacing: Pacing,
}

#[derive(Deserialize)]
struct TokensReq {
    email: String,
    account_id: String,
}

#[derive(Deserialize)]
struct UserCodeReq {
    user_code: String,
}

fn bad(msg: &str) -> Response<MockBody> {
    json_value(StatusCode::BAD_REQUEST, &json!({ "error": msg }))
}

fn parse<T: DeserializeOwned>(cx: &Cx) -> Result<T, Box<Response<MockBody>>> {
    serde_json::from_slice(&cx.body).map_err(|e| Box::new(bad(&format!("invalid request: {e}"))))
}

pub(crate) fn handle(cx: &Cx, rest: &str) -> Response<MockBody> {
    let state = &cx.inner.state;
    let token_q = query_param(cx.uri.query(), "token").map(form_decode);
    let result = match (&cx.method, rest) {
        (&Method::GET, "health") => {
            let mut r = Response::new(MockBody::full("ok"));
            set_header(
                &mut r,
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
            Ok(r)
        }
        (&Method::POST, "faults") => parse::<FaultReq>(cx).map(|f| {
            let rule = FaultRule {
                fault: f.fault,
                remaining: f.remaining,
            };
            state.set_fault(&f.token, rule, f.append);
            empty(StatusCode::NO_CONTENT)
        }),
        (&Method::DELETE, "faults") => {
            state.clear_faults(token_q.as_deref());
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&Method::GET, "requests") => {
            let list: Vec<Value> = state.requests().iter().map(|r| r.to_json()).collect();
            Ok(json_value(StatusCode::OK, &Value::Array(list)))
        }
        (&Method::DELETE, "requests") => {
            state.clear_requests();
            Ok(empty(StatusCode::NO_CONTENT))
        }
        (&Method::GET, "count") => match token_q {
            Some(t) => {
                let count = state.request_count(&t);
                Ok(json_value(
                    StatusCode::OK,
                    &json!({"token": t, "count": count}),
                ))
            }
            None => Err(Box::new(bad("token query parameter required"))),
        },
        (&Method::POST, "usage") => parse::<UsageReq>(cx).map(|u| {
            state.set_usage(&u.token, u.usage, now_secs());
            empty(StatusCode::NO_CONTENT)
        }),
        (&Method::POST, "pacing") => parse::<PacingReq>(cx).map(|p| {
            state.set_pacing(&p.token, p.pacing);
            empty(StatusCode::NO_CONTENT)
        }),
        (&Method::POST, "tokens") => parse::<TokensReq>(cx).map(|t| {
            let id = Arc::new(Identity::new(&t.email, &t.account_id));
            let issued = issue(&cx.inner, id, DEFAULT_CLIENT_ID);
            json_value(StatusCode::OK, &json!(issued))
        }),
        (&Method::POST, "login-identity") => parse::<Option<TokensReq>>(cx).map(|t| {
            super::login::set_identity(
                &cx.inner,
                t.map(|t| Identity::new(&t.email, &t.account_id)),
            );
            empty(StatusCode::NO_CONTENT)
        }),
        (&Method::POST, "device") => parse::<super::login::MockDeviceLogin>(cx).map(|d| {
            super::login::set_device(&cx.inner, d);
            empty(StatusCode::NO_CONTENT)
        }),
        (&Method::POST, "device/approve" | "device/deny") => {
            parse::<UserCodeReq>(cx).and_then(|u| {
                let approve = rest == "device/approve";
                if super::login::decide_device(&cx.inner, &u.user_code, approve) {
                    Ok(empty(StatusCode::NO_CONTENT))
                } else {
                    Err(Box::new(json_value(
                        StatusCode::NOT_FOUND,
                        &json!({"error": "no pending device login with this user_code"}),
                    )))
                }
            })
        }
        _ => Err(Box::new(json_value(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("unknown control endpoint {} /__mock/{rest}", cx.method)}),
        ))),
    };
    result.unwrap_or_else(|r| *r)
}
