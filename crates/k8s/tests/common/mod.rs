//! Test support for the controller: a scripted Kubernetes API server on kube's tower-test
//! mock service (each request is asserted and answered by the test, in order), a SQLite store
//! in a temporary directory, and builders for the objects the API server returns.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use poolgate_k8s::controller::{Config, Context};
use poolgate_store::{Cipher, SqliteStore, Store};
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

pub const NS: &str = "pool";
pub const SECRETS: &str = "/api/v1/namespaces/pool/secrets";

/// How long a test waits for the controller's next request before failing.
const WAIT: Duration = Duration::from_secs(10);

/// The API server side of a mock [`Client`].
pub struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
}

/// A [`Client`] whose requests the returned [`ApiServer`] receives.
pub fn mock_client() -> (Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, NS), ApiServer { handle })
}

/// One request the controller made, to assert on and answer.
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    /// The JSON body (`Null` when empty).
    pub body: Value,
    respond: SendResponse<Response<Body>>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {:?}", self.method, self.path, self.query)
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

impl Call {
    /// Answers with `status` and a JSON body.
    pub fn respond(self, status: u16, body: &Value) {
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap();
        self.respond.send_response(response);
    }

    pub fn ok(self, body: &Value) {
        self.respond(200, body);
    }

    /// Answers a create with the object it was sent.
    pub fn created(self) {
        let body = self.body.clone();
        self.respond(201, &body);
    }

    pub fn not_found(self) {
        let name = self.path.rsplit('/').next().unwrap_or_default().to_string();
        self.respond(
            404,
            &json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": format!("\"{name}\" not found"), "reason": "NotFound", "code": 404
            }),
        );
    }

    /// A query parameter, or `None`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

impl ApiServer {
    /// The controller's next request; fails the test if none comes.
    pub async fn next(&mut self) -> Call {
        let (request, respond) = tokio::time::timeout(WAIT, self.handle.next_request())
            .await
            .expect("the controller made no further request")
            .expect("the client is gone");
        Self::call(request, respond).await
    }

    async fn call(request: Request<Body>, respond: SendResponse<Response<Body>>) -> Call {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let query = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (percent_decode(k), percent_decode(v))
            })
            .collect();
        Call {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query,
            content_type: parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            body,
            respond,
        }
    }

    /// The next request if one comes within `wait`.
    pub async fn try_next(&mut self, wait: Duration) -> Option<Call> {
        match tokio::time::timeout(wait, self.handle.next_request()).await {
            Ok(Some((request, respond))) => Some(Self::call(request, respond).await),
            Ok(None) | Err(_) => None,
        }
    }

    /// The next request, asserted to be `method path`.
    pub async fn expect(&mut self, method: &str, path: &str) -> Call {
        let call = self.next().await;
        assert_eq!(
            (call.method.as_str(), call.path.as_str()),
            (method, path),
            "unexpected request {call:?}"
        );
        call
    }

    /// The next request, asserted to read Secret `name`.
    pub async fn expect_secret(&mut self, name: &str) -> Call {
        self.expect("GET", &format!("{SECRETS}/{name}")).await
    }

    /// The next request must read Secret `name`; answered with
    /// `secret(name, data, owner_uid)`.
    pub async fn serve_secret(
        &mut self,
        name: &str,
        data: &[(&str, &str)],
        owner_uid: Option<&str>,
    ) {
        self.expect_secret(name)
            .await
            .ok(&secret(name, data, owner_uid));
    }

    /// The next request must be an Event about `name` with this reason and type; answered.
    /// A repeat of an event the recorder already sent is a PATCH of that event (a series).
    pub async fn expect_event(&mut self, name: &str, type_: &str, reason: &str) -> Value {
        let events = format!("/apis/events.k8s.io/v1/namespaces/{NS}/events");
        let call = self.next().await;
        let is_event = match call.method.as_str() {
            "POST" => call.path == events,
            "PATCH" => call
                .path
                .strip_prefix(&events)
                .is_some_and(|rest| rest.starts_with('/')),
            _ => false,
        };
        assert!(is_event, "expected an event, got {call:?}");
        let body = call.body.clone();
        assert_eq!(body["reason"], reason, "event {body}");
        assert_eq!(body["type"], type_, "event {body}");
        assert_eq!(body["regarding"]["name"], name, "event {body}");
        assert_eq!(body["reportingController"], "poolgate-controller");
        if call.method == "POST" {
            call.created();
        } else {
            call.ok(&body);
        }
        body
    }
}

/// A SQLite store in a temporary directory (kept as long as the fixture lives).
pub struct TestStore {
    pub store: Arc<dyn Store>,
    dir: tempfile::TempDir,
}

impl TestStore {
    /// Breaks the database under the store (its accounts table is dropped through a second
    /// connection), so every account query fails from now on.
    pub fn break_accounts(&self) {
        let conn = rusqlite::Connection::open(self.dir.path().join("poolgate.db")).unwrap();
        conn.execute_batch("PRAGMA foreign_keys = OFF; DROP TABLE accounts;")
            .unwrap();
    }
}

/// A reconcile fixture: a SQLite store, a mock API server and a controller context on both.
pub fn setup() -> (TestStore, ApiServer, Arc<Context>) {
    let store = sqlite_store();
    let (client, api) = mock_client();
    let ctx = Arc::new(Context::new(client, store.store.clone(), Config::default()));
    (store, api, ctx)
}

pub fn sqlite_store() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let store =
        SqliteStore::open(&dir.path().join("poolgate.db"), Cipher::new(&[7u8; 32])).unwrap();
    TestStore {
        store: Arc::new(store),
        dir,
    }
}

/// A Secret as the API server returns it (`data` base64-encoded).
pub fn secret(name: &str, data: &[(&str, &str)], owner_uid: Option<&str>) -> Value {
    let data: BTreeMap<String, k8s_openapi::ByteString> = data
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                k8s_openapi::ByteString(v.as_bytes().to_vec()),
            )
        })
        .collect();
    let mut s = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-secret-{name}"), "resourceVersion": "7"},
        "type": "Opaque",
        "data": serde_json::to_value(data).unwrap(),
    });
    if let Some(uid) = owner_uid {
        s["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "poolgate.dev/v1alpha1", "kind": "PlatformKey", "name": "owner",
            "uid": uid, "controller": true, "blockOwnerDeletion": true
        }]);
    }
    s
}

/// The object as the API server holds it after a status apply: `obj` with the applied
/// status.
pub fn with_status(obj: &Value, apply_body: &Value) -> Value {
    let mut o = obj.clone();
    o["status"] = apply_body["status"].clone();
    o
}

/// The condition of `type_` in a status (JSON).
pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// Asserts the status (`True`, `False`, `Unknown`) and reason of condition `type_`; returns it.
pub fn assert_condition<'a>(status: &'a Value, type_: &str, want: &str, reason: &str) -> &'a Value {
    let c = condition(status, type_);
    assert_eq!(
        (&c["status"], &c["reason"]),
        (&json!(want), &json!(reason)),
        "{type_} condition"
    );
    c
}

/// Asserts that a condition's message starts with `prefix`.
pub fn assert_message_starts(cond: &Value, prefix: &str) {
    assert!(
        cond["message"].as_str().unwrap().starts_with(prefix),
        "{cond}"
    );
}
