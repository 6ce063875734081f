//! Reconcile tests against kube's mock API server: every request the controller makes is
//! asserted (method, path, query, body) and answered in order, and the store is a real SQLite
//! store, so each test checks both sides of the reconcile.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use kube::runtime::controller::Action;
use poolgate_core::jwt::unsigned;
use poolgate_core::key::{hash_secret, visible_prefix};
use poolgate_core::page::PageRequest;
use poolgate_core::{Credentials, KeyStatus, ManagedBy, Provider, Secret as Plain};
use poolgate_k8s::Error;
use poolgate_k8s::controller::{Context, error_policy, reconcile_account, reconcile_key};
use poolgate_k8s::crd::{PlatformKey, UpstreamAccount};
use poolgate_store::{AccountFilter, Store, listing};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const UA_PATH: &str = "/apis/poolgate.dev/v1alpha1/namespaces/pool/upstreamaccounts";
const PK_PATH: &str = "/apis/poolgate.dev/v1alpha1/namespaces/pool/platformkeys";

fn object(kind: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "poolgate.dev/v1alpha1",
        "kind": kind,
        "metadata": {
            "name": name, "namespace": NS, "uid": format!("uid-{name}"),
            "generation": 1, "resourceVersion": "10",
            "finalizers": ["poolgate.dev/cleanup"],
        },
        "spec": spec,
    })
}

fn deleting(obj: &Value) -> Value {
    let mut o = obj.clone();
    o["metadata"]["deletionTimestamp"] = json!("2025-06-01T00:00:00Z");
    o["metadata"]["generation"] = json!(2);
    o
}

fn start_account(obj: &Value, ctx: &Arc<Context>) -> JoinHandle<Result<Action, Error>> {
    let ua: UpstreamAccount = serde_json::from_value(obj.clone()).unwrap();
    tokio::spawn(reconcile_account(Arc::new(ua), ctx.clone()))
}

fn start_key(obj: &Value, ctx: &Arc<Context>) -> JoinHandle<Result<Action, Error>> {
    let pk: PlatformKey = serde_json::from_value(obj.clone()).unwrap();
    tokio::spawn(reconcile_key(Arc::new(pk), ctx.clone()))
}

/// Waits for the reconcile to end, failing on any request it makes that the test did not
/// expect (instead of hanging on it).
async fn finish(
    task: JoinHandle<Result<Action, Error>>,
    api: &mut ApiServer,
) -> Result<Action, Error> {
    tokio::select! {
        r = task => r.unwrap(),
        call = api.next() => panic!("unexpected request {call:?}"),
    }
}

/// Answers the status apply of `path/name`, checking it is a forced server-side apply by the
/// controller's field manager; returns the applied body.
async fn expect_status_apply(api: &mut ApiServer, base: &str, obj: &Value) -> Value {
    let name = obj["metadata"]["name"].as_str().unwrap();
    let call = api.expect("PATCH", &format!("{base}/{name}/status")).await;
    assert_eq!(call.param("fieldManager"), Some("poolgate-controller"));
    assert_eq!(call.param("force"), Some("true"));
    assert_eq!(
        call.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert_eq!(call.body["apiVersion"], "poolgate.dev/v1alpha1");
    assert_eq!(call.body["kind"], obj["kind"]);
    // Only the status is applied: the controller never claims spec or metadata fields.
    let keys: Vec<&String> = call.body.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["apiVersion", "kind", "status"]);
    let body = call.body.clone();
    call.ok(&with_status(obj, &body));
    body
}

/// A reconcile stopped by a problem a person must fix: its status is applied, a Warning event
/// with `reason` is published once, and it is retried slowly. Returns the applied body.
async fn expect_problem(
    api: &mut ApiServer,
    task: JoinHandle<Result<Action, Error>>,
    base: &str,
    obj: &Value,
    reason: &str,
) -> Value {
    let applied = expect_status_apply(api, base, obj).await;
    let name = obj["metadata"]["name"].as_str().unwrap();
    api.expect_event(name, "Warning", reason).await;
    assert_eq!(finish(task, api).await.unwrap(), slow_retry());
    applied
}

async fn accounts(store: &dyn Store) -> Vec<poolgate_core::Account> {
    store
        .list_accounts(
            &AccountFilter::default(),
            &PageRequest::parse(listing::ACCOUNTS, 100, "").unwrap(),
        )
        .await
        .unwrap()
        .items
}

async fn keys(store: &dyn Store) -> Vec<poolgate_core::PlatformKey> {
    store
        .list_keys(&PageRequest::parse(listing::KEYS, 100, "").unwrap())
        .await
        .unwrap()
        .items
}

fn openai_spec() -> Value {
    json!({
        "provider": "openai",
        "credentialsSecretRef": {"name": "openai-key"},
        "group": "team-a",
        "priority": 5,
        "models": ["gpt-5*"],
        "tags": ["eu"],
    })
}

fn refresh() -> Action {
    Action::requeue(Duration::from_secs(60))
}

fn slow_retry() -> Action {
    Action::requeue(Duration::from_secs(300))
}

#[tokio::test]
async fn the_finalizer_comes_before_anything_else() {
    let (store, mut api, ctx) = setup();
    let mut obj = object("UpstreamAccount", "openai-main", openai_spec());
    obj["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("finalizers");
    let task = start_account(&obj, &ctx);

    let call = api.expect("PATCH", &format!("{UA_PATH}/openai-main")).await;
    assert_eq!(
        call.content_type.as_deref(),
        Some("application/json-patch+json")
    );
    assert_eq!(
        call.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["poolgate.dev/cleanup"]},
        ])
    );
    let mut added = obj.clone();
    added["metadata"]["finalizers"] = json!(["poolgate.dev/cleanup"]);
    call.ok(&added);

    // The finalizer's own watch event brings the object back; nothing else happens now.
    assert_eq!(
        finish(task, &mut api).await.unwrap(),
        Action::await_change()
    );
    assert!(accounts(&*store.store).await.is_empty());
    assert_eq!(store.store.current_version().await.unwrap(), 0);
}

/// Creates the account of `openai_spec()` through one reconcile; returns the object with the
/// status the controller applied.
async fn create_openai(api: &mut ApiServer, ctx: &Arc<Context>, key: &str) -> (Value, Value) {
    let obj = object("UpstreamAccount", "openai-main", openai_spec());
    let task = start_account(&obj, ctx);
    api.serve_secret("openai-key", &[("api-key", key)], None)
        .await;
    api.expect_event("openai-main", "Normal", "Created").await;
    let applied = expect_status_apply(api, UA_PATH, &obj).await;
    assert_eq!(finish(task, api).await.unwrap(), refresh());
    (with_status(&obj, &applied), applied)
}

#[tokio::test]
async fn an_account_is_created_from_its_secret_then_left_alone() {
    let (store, mut api, ctx) = setup();
    let (obj, applied) = create_openai(&mut api, &ctx, "  sk-live-one\n").await;

    let all = accounts(&*store.store).await;
    assert_eq!(all.len(), 1);
    let a = &all[0];
    assert_eq!(a.managed_by, ManagedBy::Kubernetes);
    assert_eq!(
        a.managed_ref.as_deref(),
        Some("UpstreamAccount pool/openai-main")
    );
    assert_eq!(a.spec.provider, Provider::OpenAi);
    assert_eq!(a.spec.name, "openai-main");
    assert_eq!(a.spec.group, "team-a");
    assert_eq!(a.spec.priority, 5);
    assert_eq!(a.spec.model_filter, ["gpt-5*"]);
    assert_eq!(a.spec.tags, ["eu"]);
    // The API key is stored trimmed.
    assert_eq!(
        store.store.get_credentials(&a.id).await.unwrap(),
        Some(Credentials::ApiKey {
            key: Plain::new("sk-live-one")
        })
    );

    let st = &applied["status"];
    assert_eq!(st["accountId"], a.id.as_str());
    assert_eq!(st["observedGeneration"], 1);
    assert_eq!(st["availability"], "unknown");
    let ready = assert_condition(st, "Ready", "True", "Reconciled");
    assert_eq!(ready["observedGeneration"], 1);
    assert_condition(st, "AuthValid", "True", "CredentialsLoaded");
    assert_condition(st, "Available", "True", "NoUsageYet");
    // No secret ever reaches the status.
    assert!(!applied.to_string().contains("sk-live-one"));

    // The same object again: one Secret read, no store write, no status write.
    let version = store.store.current_version().await.unwrap();
    let task = start_account(&obj, &ctx);
    api.serve_secret("openai-key", &[("api-key", "sk-live-one")], None)
        .await;
    assert_eq!(finish(task, &mut api).await.unwrap(), refresh());
    assert_eq!(store.store.current_version().await.unwrap(), version);
}

#[tokio::test]
async fn a_rotated_secret_reaches_the_store() {
    let (store, mut api, ctx) = setup();
    let (obj, _) = create_openai(&mut api, &ctx, "sk-old").await;
    let id = accounts(&*store.store).await[0].id.clone();
    let version = store.store.current_version().await.unwrap();

    let task = start_account(&obj, &ctx);
    api.serve_secret("openai-key", &[("api-key", "sk-new")], None)
        .await;
    let event = api
        .expect_event("openai-main", "Normal", "CredentialsRotated")
        .await;
    assert!(!event.to_string().contains("sk-new"));
    // The status does not change with the credentials: no status write.
    assert_eq!(finish(task, &mut api).await.unwrap(), refresh());

    assert_eq!(
        store.store.get_credentials(&id).await.unwrap(),
        Some(Credentials::ApiKey {
            key: Plain::new("sk-new")
        })
    );
    assert!(store.store.current_version().await.unwrap() > version);
}

#[tokio::test]
async fn a_missing_secret_is_reported_and_retried_slowly() {
    let (store, mut api, ctx) = setup();
    let obj = object("UpstreamAccount", "openai-main", openai_spec());

    let task = start_account(&obj, &ctx);
    api.expect_secret("openai-key").await.not_found();
    let applied = expect_problem(&mut api, task, UA_PATH, &obj, "SecretNotFound").await;

    let st = &applied["status"];
    let ready = assert_condition(st, "Ready", "False", "SecretNotFound");
    assert_eq!(
        ready["message"],
        "Secret pool/openai-key not found; create it with an API key under key \"api-key\""
    );
    assert_eq!(condition(st, "AuthValid")["reason"], "SecretNotFound");
    assert_eq!(condition(st, "Available")["status"], "False");
    assert!(st.get("accountId").is_none());
    assert!(accounts(&*store.store).await.is_empty());
    assert_eq!(store.store.current_version().await.unwrap(), 0);

    // Still missing: the same status, so neither a status write nor another event.
    let obj = with_status(&obj, &applied);
    let task = start_account(&obj, &ctx);
    api.expect_secret("openai-key").await.not_found();
    assert_eq!(finish(task, &mut api).await.unwrap(), slow_retry());
}

#[tokio::test]
async fn a_secret_without_the_key_names_the_keys_it_has() {
    let (store, mut api, ctx) = setup();
    let mut spec = openai_spec();
    spec["credentialsSecretRef"]["key"] = json!("token");
    let obj = object("UpstreamAccount", "openai-main", spec);

    let task = start_account(&obj, &ctx);
    api.serve_secret("openai-key", &[("api-key", "sk-x"), ("other", "y")], None)
        .await;
    let applied = expect_problem(&mut api, task, UA_PATH, &obj, "SecretKeyMissing").await;
    let ready = condition(&applied["status"], "Ready");
    assert_eq!(ready["reason"], "SecretKeyMissing");
    let msg = ready["message"].as_str().unwrap();
    assert!(
        msg.contains("has no key \"token\" (it has: api-key, other)"),
        "{msg}"
    );
    assert!(!msg.contains("sk-x"));
    assert!(accounts(&*store.store).await.is_empty());
}

#[tokio::test]
async fn an_invalid_spec_is_reported_without_reading_the_secret() {
    let (store, mut api, ctx) = setup();
    // Azure needs its deployment settings (the CRD's CEL rule says so too).
    let obj = object(
        "UpstreamAccount",
        "azure-eu",
        json!({"provider": "azure_openai", "credentialsSecretRef": {"name": "az"}}),
    );
    let task = start_account(&obj, &ctx);
    let applied = expect_problem(&mut api, task, UA_PATH, &obj, "InvalidSpec").await;
    let ready = condition(&applied["status"], "Ready");
    assert_eq!(ready["reason"], "InvalidSpec");
    assert_message_starts(ready, "spec.azure: ");
    // Not a credentials problem.
    assert_eq!(
        condition(&applied["status"], "AuthValid")["status"],
        "Unknown"
    );
    assert!(accounts(&*store.store).await.is_empty());
}

fn auth_json(sub: &str, ws: &str, exp: i64, access: &str) -> String {
    let id_token = unsigned(&json!({
        "sub": sub, "email": format!("{sub}@example.test"), "exp": exp,
        "https://api.openai.com/auth": {"chatgpt_account_id": ws, "chatgpt_plan_type": "plus"}
    }));
    let access_token = unsigned(&json!({"sub": sub, "exp": exp, "n": access}));
    json!({
        "tokens": {
            "id_token": id_token, "access_token": access_token,
            "refresh_token": format!("rt-{access}"), "account_id": ws
        }
    })
    .to_string()
}

#[tokio::test]
async fn a_codex_login_comes_from_an_auth_json_secret() {
    let (store, mut api, ctx) = setup();
    let spec = json!({"provider": "codex", "credentialsSecretRef": {"name": "codex-login"}});
    let obj = object("UpstreamAccount", "codex-alice", spec);

    let first = auth_json("alice", "ws-1", 2_000_000_000, "a1");
    let task = start_account(&obj, &ctx);
    api.serve_secret("codex-login", &[("auth.json", &first)], None)
        .await;
    api.expect_event("codex-alice", "Normal", "Created").await;
    let applied = expect_status_apply(&mut api, UA_PATH, &obj).await;
    assert_eq!(finish(task, &mut api).await.unwrap(), refresh());
    let a = accounts(&*store.store).await.pop().unwrap();
    assert_eq!(a.spec.provider, Provider::Codex);
    let identity = a.identity.unwrap();
    assert_eq!(
        (
            identity.subject.as_str(),
            identity.chatgpt_account_id.as_str()
        ),
        ("alice", "ws-1")
    );
    let Some(Credentials::OAuth(tokens)) = store.store.get_credentials(&a.id).await.unwrap() else {
        panic!("no OAuth credentials")
    };
    assert_eq!(tokens.refresh_token.expose(), "rt-a1");

    // A later login of the same user (newer tokens) replaces the stored ones.
    let obj = with_status(&obj, &applied);
    let newer = auth_json("alice", "ws-1", 2_100_000_000, "a2");
    let task = start_account(&obj, &ctx);
    api.serve_secret("codex-login", &[("auth.json", &newer)], None)
        .await;
    api.expect_event("codex-alice", "Normal", "CredentialsRotated")
        .await;
    assert_eq!(finish(task, &mut api).await.unwrap(), refresh());
    let Some(Credentials::OAuth(tokens)) = store.store.get_credentials(&a.id).await.unwrap() else {
        panic!("no OAuth credentials")
    };
    assert_eq!(tokens.refresh_token.expose(), "rt-a2");

    // Going back to the older login changes nothing: stored tokens are never rolled back.
    let version = store.store.current_version().await.unwrap();
    let task = start_account(&obj, &ctx);
    api.serve_secret("codex-login", &[("auth.json", &first)], None)
        .await;
    assert_eq!(finish(task, &mut api).await.unwrap(), refresh());
    assert_eq!(store.store.current_version().await.unwrap(), version);

    // Another user's login in the same Secret is refused; the account keeps its tokens.
    let bob = auth_json("bob", "ws-1", 2_200_000_000, "b1");
    let task = start_account(&obj, &ctx);
    api.serve_secret("codex-login", &[("auth.json", &bob)], None)
        .await;
    let applied = expect_problem(&mut api, task, UA_PATH, &obj, "IdentityMismatch").await;
    assert_eq!(
        condition(&applied["status"], "AuthValid")["reason"],
        "IdentityMismatch"
    );
    assert_eq!(applied["status"]["accountId"], a.id.as_str());
    assert_eq!(store.store.current_version().await.unwrap(), version);
}

#[tokio::test]
async fn a_malformed_auth_json_is_reported() {
    let (store, mut api, ctx) = setup();
    let spec = json!({"provider": "codex", "credentialsSecretRef": {"name": "codex-login"}});
    let obj = object("UpstreamAccount", "codex-bad", spec);
    let task = start_account(&obj, &ctx);
    api.serve_secret("codex-login", &[("auth.json", "{\"tokens\": ")], None)
        .await;
    let applied = expect_problem(&mut api, task, UA_PATH, &obj, "InvalidAuthJson").await;
    let ready = condition(&applied["status"], "Ready");
    assert_eq!(ready["reason"], "InvalidAuthJson");
    assert_message_starts(
        ready,
        "Secret pool/codex-login key \"auth.json\": invalid JSON",
    );
    assert!(accounts(&*store.store).await.is_empty());
}

#[tokio::test]
async fn deleting_an_account_removes_it_from_the_store_then_the_finalizer() {
    let (store, mut api, ctx) = setup();
    let (obj, _) = create_openai(&mut api, &ctx, "sk-1").await;
    let id = accounts(&*store.store).await[0].id.clone();

    let obj = deleting(&obj);
    let task = start_account(&obj, &ctx);
    api.expect_event("openai-main", "Normal", "Deleted").await;
    let call = api.expect("PATCH", &format!("{UA_PATH}/openai-main")).await;
    assert_eq!(
        call.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": "poolgate.dev/cleanup"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
    let mut gone = obj.clone();
    gone["metadata"]["finalizers"] = json!([]);
    call.ok(&gone);
    assert_eq!(
        finish(task, &mut api).await.unwrap(),
        Action::await_change()
    );
    assert!(matches!(
        store.store.get_account(&id).await,
        Err(poolgate_store::StoreError::NotFound { .. })
    ));
    assert_eq!(store.store.get_credentials(&id).await.ok(), None);
}

#[tokio::test]
async fn an_account_found_by_its_reference_when_the_status_was_lost() {
    let (store, mut api, ctx) = setup();
    create_openai(&mut api, &ctx, "sk-1").await;
    // The first status write never landed: the object has no status, the store has the row.
    let obj = object("UpstreamAccount", "openai-main", openai_spec());
    let version = store.store.current_version().await.unwrap();
    let task = start_account(&obj, &ctx);
    api.serve_secret("openai-key", &[("api-key", "sk-1")], None)
        .await;
    let applied = expect_status_apply(&mut api, UA_PATH, &obj).await;
    assert_eq!(finish(task, &mut api).await.unwrap(), refresh());
    assert_eq!(accounts(&*store.store).await.len(), 1);
    assert_eq!(store.store.current_version().await.unwrap(), version);
    assert_eq!(
        applied["status"]["accountId"],
        accounts(&*store.store).await[0].id.as_str()
    );
}

// --- platform keys --------------------------------------------------------------------------

fn key_spec() -> Value {
    json!({"allowedModels": ["gpt-5*"], "modelOverride": "gpt-5-codex", "reasoningEffort": "high",
           "accountGroups": ["team-a"], "expiresAt": "2099-01-01T00:00:00+02:00"})
}

/// Generates the key of PlatformKey `ci`; returns the object with its status and the
/// plaintext the controller wrote into the Secret.
async fn generate_ci_key(api: &mut ApiServer, ctx: &Arc<Context>) -> (Value, String) {
    let obj = object("PlatformKey", "ci", key_spec());
    let task = start_key(&obj, ctx);
    api.expect_secret("ci-platform-key").await.not_found();
    let create = api.expect("POST", SECRETS).await;
    assert_eq!(create.param("fieldManager"), Some("poolgate-controller"));
    let written: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(create.body.clone()).unwrap();
    let meta = &written.metadata;
    assert_eq!(meta.name.as_deref(), Some("ci-platform-key"));
    let owner = &meta.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
        ("PlatformKey", "ci", "uid-ci")
    );
    assert_eq!(owner.controller, Some(true));
    assert_eq!(
        meta.labels.as_ref().unwrap()["poolgate.dev/platform-key"],
        "true"
    );
    let data = written.data.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["api-key"]);
    let plaintext = String::from_utf8(data["api-key"].0.clone()).unwrap();
    assert!(plaintext.starts_with("pgk_") && plaintext.len() == 47);
    create.created();
    api.expect_event("ci", "Normal", "KeyGenerated").await;
    api.expect_event("ci", "Normal", "Created").await;
    let applied = expect_status_apply(api, PK_PATH, &obj).await;
    assert_eq!(finish(task, api).await.unwrap(), refresh());
    (with_status(&obj, &applied), plaintext)
}

#[tokio::test]
async fn a_platform_key_is_generated_into_an_owned_secret_and_only_its_hash_stored() {
    let (store, mut api, ctx) = setup();
    let (obj, plaintext) = generate_ci_key(&mut api, &ctx).await;

    let all = keys(&*store.store).await;
    assert_eq!(all.len(), 1);
    let k = &all[0];
    assert_eq!(k.hash, hash_secret(&plaintext));
    assert_eq!(k.prefix, visible_prefix(&plaintext));
    assert_eq!(k.managed_by, ManagedBy::Kubernetes);
    assert_eq!(k.managed_ref.as_deref(), Some("PlatformKey pool/ci"));
    assert_eq!(k.status, KeyStatus::Active);
    assert_eq!(k.spec.name, "ci");
    assert_eq!(k.spec.allowed_models, ["gpt-5*"]);
    assert_eq!(k.spec.model_override.as_deref(), Some("gpt-5-codex"));
    assert_eq!(k.spec.account_groups, ["team-a"]);
    assert_eq!(k.spec.expires_at_ms, Some(4_070_901_600_000));
    assert_eq!(
        k.spec.reasoning_effort,
        Some(poolgate_core::ReasoningEffort::High)
    );

    let st = &obj["status"];
    assert_eq!(st["keyId"], k.id.as_str());
    assert_eq!(st["secretName"], "ci-platform-key");
    assert_eq!(st["keyPrefix"], k.prefix.as_str());
    assert_eq!(condition(st, "Ready")["reason"], "Reconciled");
    assert_eq!(condition(st, "Available")["reason"], "Active");
    assert!(!obj.to_string().contains(&plaintext));

    // Again (e.g. after a restart): the Secret's key is kept, nothing is written.
    let version = store.store.current_version().await.unwrap();
    let task = start_key(&obj, &ctx);
    api.serve_secret(
        "ci-platform-key",
        &[("api-key", &plaintext)],
        Some("uid-ci"),
    )
    .await;
    assert_eq!(finish(task, &mut api).await.unwrap(), refresh());
    assert_eq!(store.store.current_version().await.unwrap(), version);
    assert_eq!(keys(&*store.store).await, all);
}

#[tokio::test]
async fn a_lost_key_secret_gets_a_new_key_and_the_old_one_is_revoked() {
    let (store, mut api, ctx) = setup();
    let (obj, old_plaintext) = generate_ci_key(&mut api, &ctx).await;
    let old_id = keys(&*store.store).await[0].id.clone();

    let task = start_key(&obj, &ctx);
    api.expect_secret("ci-platform-key").await.not_found();
    let create = api.expect("POST", SECRETS).await;
    let written: k8s_openapi::api::core::v1::Secret =
        serde_json::from_value(create.body.clone()).unwrap();
    let plaintext = String::from_utf8(written.data.unwrap()["api-key"].0.clone()).unwrap();
    assert_ne!(plaintext, old_plaintext);
    create.created();
    api.expect_event("ci", "Normal", "KeyGenerated").await;
    api.expect_event("ci", "Normal", "KeyRotated").await;
    let applied = expect_status_apply(&mut api, PK_PATH, &obj).await;
    assert_eq!(finish(task, &mut api).await.unwrap(), refresh());

    let all = keys(&*store.store).await;
    assert_eq!(all.len(), 1);
    assert_ne!(all[0].id, old_id);
    assert_eq!(all[0].hash, hash_secret(&plaintext));
    assert_eq!(applied["status"]["keyId"], all[0].id.as_str());
}

#[tokio::test]
async fn a_spec_change_updates_the_stored_key() {
    let (store, mut api, ctx) = setup();
    let (mut obj, plaintext) = generate_ci_key(&mut api, &ctx).await;
    obj["spec"]["disabled"] = json!(true);
    obj["metadata"]["generation"] = json!(2);

    let task = start_key(&obj, &ctx);
    api.serve_secret(
        "ci-platform-key",
        &[("api-key", &plaintext)],
        Some("uid-ci"),
    )
    .await;
    api.expect_event("ci", "Normal", "Updated").await;
    let applied = expect_status_apply(&mut api, PK_PATH, &obj).await;
    assert_eq!(finish(task, &mut api).await.unwrap(), refresh());
    assert_eq!(keys(&*store.store).await[0].status, KeyStatus::Disabled);
    let st = &applied["status"];
    assert_eq!(st["observedGeneration"], 2);
    assert_condition(st, "Available", "False", "Disabled");
    // Ready did not change status, so it keeps its transition time.
    assert_eq!(
        condition(st, "Ready")["lastTransitionTime"],
        condition(&obj["status"], "Ready")["lastTransitionTime"]
    );
}

#[tokio::test]
async fn a_secret_owned_by_someone_else_is_never_overwritten() {
    let (store, mut api, ctx) = setup();
    let mut spec = key_spec();
    spec["secretName"] = json!("shared");
    let obj = object("PlatformKey", "ci", spec);
    let task = start_key(&obj, &ctx);
    api.serve_secret("shared", &[("api-key", "something")], None)
        .await;
    let applied = expect_problem(&mut api, task, PK_PATH, &obj, "SecretConflict").await;
    assert_eq!(
        condition(&applied["status"], "Ready")["reason"],
        "SecretConflict"
    );
    assert_eq!(applied["status"]["secretName"], "shared");
    assert!(keys(&*store.store).await.is_empty());
}

#[tokio::test]
async fn an_invalid_key_spec_is_reported() {
    let (store, mut api, ctx) = setup();
    let obj = object(
        "PlatformKey",
        "ci",
        json!({"allowedModels": ["gpt-5*"], "modelOverride": "claude-4"}),
    );
    let task = start_key(&obj, &ctx);
    let applied = expect_problem(&mut api, task, PK_PATH, &obj, "InvalidSpec").await;
    let ready = condition(&applied["status"], "Ready");
    assert_message_starts(ready, "spec.modelOverride: ");
    assert!(keys(&*store.store).await.is_empty());
}

#[tokio::test]
async fn deleting_a_platform_key_revokes_it() {
    let (store, mut api, ctx) = setup();
    let (obj, _) = generate_ci_key(&mut api, &ctx).await;
    let obj = deleting(&obj);
    let task = start_key(&obj, &ctx);
    api.expect_event("ci", "Normal", "Revoked").await;
    let call = api.expect("PATCH", &format!("{PK_PATH}/ci")).await;
    assert_eq!(
        call.body[1],
        json!({"op": "remove", "path": "/metadata/finalizers/0"})
    );
    call.ok(&obj);
    assert_eq!(
        finish(task, &mut api).await.unwrap(),
        Action::await_change()
    );
    assert!(keys(&*store.store).await.is_empty());
}

// --- error policy ---------------------------------------------------------------------------

#[tokio::test]
async fn failures_back_off_per_object_and_reset_on_success() {
    let (_store, mut api, ctx) = setup();
    let obj = object("UpstreamAccount", "openai-main", openai_spec());
    let ua: Arc<UpstreamAccount> = Arc::new(serde_json::from_value(obj.clone()).unwrap());
    let err = Error::MissingField("namespace");
    let delays: Vec<Action> = (0..9)
        .map(|_| error_policy(ua.clone(), &err, ctx.clone()))
        .collect();
    let secs = |s| Action::requeue(Duration::from_secs(s));
    assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300].map(secs));
    // Another object has its own count.
    let mut other = obj.clone();
    other["metadata"]["name"] = json!("other");
    let other: Arc<UpstreamAccount> = Arc::new(serde_json::from_value(other).unwrap());
    assert_eq!(error_policy(other, &err, ctx.clone()), secs(5));

    // A reconcile that succeeds starts the count again.
    create_openai(&mut api, &ctx, "sk-1").await;
    assert_eq!(error_policy(ua, &err, ctx.clone()), secs(5));
}

#[tokio::test]
async fn a_failing_secret_read_is_an_error_for_the_backoff() {
    let (store, mut api, ctx) = setup();
    let obj = object("UpstreamAccount", "openai-main", openai_spec());
    let task = start_account(&obj, &ctx);
    api.expect_secret("openai-key").await.respond(
        500,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": "etcd is sad", "reason": "InternalError", "code": 500}),
    );
    let err = finish(task, &mut api).await.unwrap_err();
    assert!(err.to_string().contains("etcd is sad"), "{err}");
    assert!(accounts(&*store.store).await.is_empty());
}

#[tokio::test]
async fn a_store_failure_is_reported_and_left_to_the_backoff() {
    let (store, mut api, ctx) = setup();
    let (obj, _) = create_openai(&mut api, &ctx, "sk-1").await;
    store.break_accounts();

    let task = start_account(&obj, &ctx);
    let applied = expect_status_apply(&mut api, UA_PATH, &obj).await;
    let err = finish(task, &mut api).await.unwrap_err();
    assert!(err.to_string().contains("store: "), "{err}");
    let st = &applied["status"];
    let ready = assert_condition(st, "Ready", "False", "StoreError");
    assert_message_starts(ready, "poolgate's store failed: ");
    // What the store said last is kept.
    assert_eq!(st["accountId"], obj["status"]["accountId"]);
    assert_eq!(condition(st, "AuthValid")["reason"], "CredentialsLoaded");

    // While it stays down, the same status is not written again.
    let obj = with_status(&obj, &applied);
    let task = start_account(&obj, &ctx);
    let result = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the reconcile waits for an API request nobody expected");
    assert!(result.unwrap().is_err());
    assert!(api.try_next(Duration::from_millis(100)).await.is_none());
}
