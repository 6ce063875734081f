//! Real clients through `poolgate standalone` to the mock upstream:
//! - the openai Python SDK (chat completions and responses, streamed and not) on a Codex
//!   account (chat translated to Responses), an OpenAI API-key account and an Azure OpenAI
//!   account (model mapped to its deployment, key in `api-key`, `api-version` in the query);
//! - the Codex CLI (`codex exec` with a custom Responses provider) on the Codex account;
//! - the anthropic Python SDK and Claude Code (`claude -p`) through `/v1/messages`, on the
//!   Codex account (translated to Responses) and on an Anthropic API-key account (passed
//!   through natively).
//!
//! Each client path is deterministic: every platform key may route only to its own account
//! group (`codex`, `openai`, `azure`, `anthropic`), and each group holds one account. A
//! missing client fails the test with install instructions (`bash scripts/test.sh` installs
//! them all).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use poolgate_e2e::{
    Output, Poolctl, Poolgate, Secret, anthropic_python, claude_code, clean_command, codex_cli,
    http_request, leaked_in, openai_python, random_b64, run_timeout, wait_until,
};
use poolgate_testkit::mock::{MockUpstream, RecordedRequest};
use serde_json::{Value, json};

/// A model both mock catalogs list.
const MODEL: &str = "gpt-5.4-mini";
/// What a client may take for its whole run (first starts of the Codex CLI can be slow).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the gateway may take to see a change, or the control plane to store a log.
const PROPAGATION: Duration = Duration::from_secs(30);
/// The Codex backend path on the mock.
const CODEX_RESPONSES: &str = "/backend-api/codex/responses";

/// The Codex account, as the mock issued its login.
struct CodexRoute {
    account_id: String,
    key_id: String,
    key: String,
    /// `chatgpt_account_id` of the login: the upstream's `chatgpt-account-id` header.
    workspace: String,
    access_token: String,
}

/// The OpenAI API-key account.
struct OpenAiRoute {
    account_id: String,
    key_id: String,
    key: String,
    api_key: String,
}

/// The Azure OpenAI account: it serves [`MODEL`] through the deployment [`AZURE_DEPLOYMENT`].
struct AzureRoute {
    account_id: String,
    key_id: String,
    key: String,
    api_key: String,
}

/// The Anthropic API-key account.
struct AnthropicRoute {
    account_id: String,
    key_id: String,
    key: String,
    api_key: String,
}

/// The Azure deployment [`MODEL`] maps to, and the API version the account is configured with.
const AZURE_DEPLOYMENT: &str = "e2e-deployment";
const AZURE_API_VERSION: &str = "2025-04-01-preview";

/// The mock upstream, `poolgate standalone` wired to it, and one key per account kind.
/// Fields drop in order: the processes and the mock stop before the runtime serving the mock.
struct Stack {
    pg: Poolgate,
    admin: Poolctl,
    mock: MockUpstream,
    codex: CodexRoute,
    openai: OpenAiRoute,
    azure: AzureRoute,
    anthropic: AnthropicRoute,
    /// Everything that must never show in a log or reach the wrong upstream.
    secrets: Vec<Secret>,
    tmp: tempfile::TempDir,
    _rt: tokio::runtime::Runtime,
}

fn created_key(admin: &Poolctl, name: &str, group: &str) -> (String, String) {
    let created = admin
        .json(&["create", "key", "--name", name, "--group", group])
        .unwrap();
    let pk = &created["platform_key"];
    assert_eq!(pk["account_groups"], json!([group]), "{pk}");
    (
        pk["id"].as_str().unwrap().to_string(),
        created["key"].as_str().unwrap().to_string(),
    )
}

impl Stack {
    fn start() -> Stack {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mock = rt.block_on(MockUpstream::start()).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let pg = Poolgate::standalone(&data).unwrap();
        let admin = Poolctl::new(pg.url(), Some(&data.join("admin.token"))).unwrap();

        // A ChatGPT login minted by the mock, imported as the Codex CLI stores it.
        let workspace = format!("ws-e2e-{}", random_b64(6).unwrap());
        let tokens = mock.issue_tokens("codex-e2e@example.test", &workspace);
        let auth_json = tmp.path().join("auth.json");
        let doc = json!({
            "OPENAI_API_KEY": null,
            "tokens": {
                "id_token": tokens.id_token,
                "access_token": tokens.access_token,
                "refresh_token": tokens.refresh_token,
                "account_id": tokens.account_id,
            },
            "last_refresh": "2026-01-01T00:00:00Z",
        });
        std::fs::write(&auth_json, doc.to_string()).unwrap();
        let imported = admin
            .json(&[
                "import",
                "accounts",
                auth_json.to_str().unwrap(),
                "--group",
                "codex",
            ])
            .unwrap();
        let item = &imported["results"][0];
        assert_eq!(item["outcome"], "created", "{imported:#}");
        let codex_account = item["account_id"].as_str().unwrap().to_string();
        let updated = admin
            .json(&[
                "update",
                "account",
                &codex_account,
                "--base-url",
                &mock.codex_base_url(),
            ])
            .unwrap();
        assert_eq!(updated["group"], "codex", "{updated:#}");
        assert_eq!(
            updated["effective_base_url"],
            mock.codex_base_url().as_str(),
            "{updated:#}"
        );

        // An OpenAI API-key account on the mock's /v1.
        let api_key = format!("sk-e2e-{}", random_b64(24).unwrap());
        let key_file = tmp.path().join("openai.key");
        std::fs::write(&key_file, format!("{api_key}\n")).unwrap();
        let openai_account = admin
            .json(&[
                "create",
                "account",
                "--provider",
                "openai",
                "--name",
                "openai-e2e",
                "--api-key-file",
                key_file.to_str().unwrap(),
                "--group",
                "openai",
                "--base-url",
                &mock.openai_base_url(),
            ])
            .unwrap();
        let openai_account_id = openai_account["id"].as_str().unwrap().to_string();

        // An Azure OpenAI account whose model filter names MODEL, so the gateway has to map
        // the client's model to the deployment.
        let azure_api_key = format!("az-e2e-{}", random_b64(24).unwrap());
        let key_file = tmp.path().join("azure.key");
        std::fs::write(&key_file, format!("{azure_api_key}\n")).unwrap();
        let azure_account = admin
            .json(&[
                "create",
                "account",
                "--provider",
                "azure_openai",
                "--name",
                "azure-e2e",
                "--api-key-file",
                key_file.to_str().unwrap(),
                "--group",
                "azure",
                "--base-url",
                &mock.azure_endpoint(),
                "--azure-deployment",
                AZURE_DEPLOYMENT,
                "--azure-api-version",
                AZURE_API_VERSION,
                "--model-filter",
                MODEL,
            ])
            .unwrap();
        let azure_account_id = azure_account["id"].as_str().unwrap().to_string();

        // An Anthropic API-key account (no model filter: it serves claude-* models).
        let anthropic_api_key = format!("sk-ant-e2e-{}", random_b64(24).unwrap());
        let key_file = tmp.path().join("anthropic.key");
        std::fs::write(&key_file, format!("{anthropic_api_key}\n")).unwrap();
        let anthropic_account = admin
            .json(&[
                "create",
                "account",
                "--provider",
                "anthropic",
                "--name",
                "anthropic-e2e",
                "--api-key-file",
                key_file.to_str().unwrap(),
                "--group",
                "anthropic",
                "--base-url",
                &mock.anthropic_base_url(),
            ])
            .unwrap();
        let anthropic_account_id = anthropic_account["id"].as_str().unwrap().to_string();

        let (codex_key_id, codex_key) = created_key(&admin, "codex-clients", "codex");
        let (openai_key_id, openai_key) = created_key(&admin, "openai-clients", "openai");
        let (azure_key_id, azure_key) = created_key(&admin, "azure-clients", "azure");
        let (anthropic_key_id, anthropic_key) =
            created_key(&admin, "anthropic-clients", "anthropic");

        let mut secrets = Vec::new();
        for (label, value) in [
            ("codex access token", &tokens.access_token),
            ("codex refresh token", &tokens.refresh_token),
            ("codex id token", &tokens.id_token),
            ("OpenAI API key", &api_key),
            ("Azure API key", &azure_api_key),
            ("Anthropic API key", &anthropic_api_key),
            ("codex-group platform key", &codex_key),
            ("openai-group platform key", &openai_key),
            ("azure-group platform key", &azure_key),
            ("anthropic-group platform key", &anthropic_key),
        ] {
            secrets.push(Secret {
                label: label.into(),
                value: value.clone(),
            });
        }

        let stack = Stack {
            pg,
            admin,
            mock,
            codex: CodexRoute {
                account_id: codex_account,
                key_id: codex_key_id,
                key: codex_key,
                workspace,
                access_token: tokens.access_token,
            },
            openai: OpenAiRoute {
                account_id: openai_account_id,
                key_id: openai_key_id,
                key: openai_key,
                api_key,
            },
            azure: AzureRoute {
                account_id: azure_account_id,
                key_id: azure_key_id,
                key: azure_key,
                api_key: azure_api_key,
            },
            anthropic: AnthropicRoute {
                account_id: anthropic_account_id,
                key_id: anthropic_key_id,
                key: anthropic_key,
                api_key: anthropic_api_key,
            },
            secrets,
            tmp,
            _rt: rt,
        };
        // Keys were created last: once the gateway knows all of them, its snapshot also has
        // the accounts with their base URLs (deltas apply in order).
        for key in [
            &stack.codex.key,
            &stack.openai.key,
            &stack.azure.key,
            &stack.anthropic.key,
        ] {
            let auth = format!("Bearer {key}");
            wait_until(
                "the gateway accepting a new key",
                PROPAGATION,
                || match http_request(
                    stack.pg.gateway,
                    "GET",
                    "/v1/models",
                    &[("Authorization", &auth)],
                ) {
                    Ok((200, _)) => Ok(()),
                    Ok((status, text)) => Err(format!("{status}: {text}")),
                    Err(e) => Err(e.to_string()),
                },
            )
            .unwrap();
        }
        stack.mock.clear_requests();
        stack
    }

    /// Every secret but `own`: what must not reach the upstream whose credential `own` is.
    fn foreign_to(&self, own: &str) -> Vec<Secret> {
        assert!(
            self.secrets.iter().any(|s| s.label == own),
            "no secret {own:?}"
        );
        self.secrets
            .iter()
            .filter(|s| s.label != own)
            .cloned()
            .collect()
    }

    /// Request-log records by id, once every one of `ids` has been stored.
    fn logs_with(&self, ids: &[String]) -> BTreeMap<String, Value> {
        wait_until("request logs for every request", PROPAGATION, || {
            let logs = self
                .admin
                .json(&["get", "logs", "--limit", "1000"])
                .map_err(|e| e.to_string())?;
            let by_id: BTreeMap<String, Value> = logs
                .as_array()
                .ok_or("logs are not an array")?
                .iter()
                .map(|r| (r["id"].as_str().unwrap_or_default().to_string(), r.clone()))
                .collect();
            let missing: Vec<&String> = ids.iter().filter(|id| !by_id.contains_key(*id)).collect();
            if missing.is_empty() {
                Ok(by_id)
            } else {
                Err(format!("missing {missing:?} among {logs}"))
            }
        })
        .unwrap()
    }

    /// The gateway's own log never carries a credential or a platform key.
    fn assert_logs_clean(&self) {
        let logs = self.pg.logs();
        assert!(
            logs.contains("gateway_listen="),
            "the poolgate log looks empty:\n{logs}"
        );
        let leaks = leaked_in(logs.as_bytes(), &self.secrets);
        assert!(leaks.is_empty(), "the poolgate log carries {leaks:?}");
    }
}

/// A client process: no `POOLGATE_*`, `OPENAI_*`, `CODEX_*`, `ANTHROPIC_*` or `CLAUDE_*`
/// settings from the caller.
fn client_command(program: &Path) -> Command {
    let mut c = clean_command(program);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if ["OPENAI_", "CODEX_", "ANTHROPIC_", "CLAUDE_"]
            .iter()
            .any(|p| k.starts_with(p))
            || k == "RUST_LOG"
        {
            c.env_remove(k);
        }
    }
    c
}

/// Headers and body of a recorded upstream request, as one text to scan for secrets.
fn raw(req: &RecordedRequest) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in &req.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(&req.body);
    out
}

/// The upstream request is what the Codex backend accepts: the account's OAuth token and
/// workspace, `store: false`, `stream: true`, non-empty instructions, and nothing of the
/// client's own credentials or SDK fingerprint.
fn assert_codex_shaped(stack: &Stack, req: &RecordedRequest, what: &str) {
    let body = req
        .json()
        .unwrap_or_else(|| panic!("{what}: the upstream body is not JSON"));
    let summary = format!(
        "{what}: {} {} headers {:?} body keys {:?}",
        req.method,
        req.path,
        req.headers.keys().map(|n| n.as_str()).collect::<Vec<_>>(),
        body.as_object().map(|o| o.keys().collect::<Vec<_>>())
    );
    assert_eq!(
        req.header("authorization"),
        Some(format!("Bearer {}", stack.codex.access_token).as_str()),
        "{summary}: not the account's access token"
    );
    assert_eq!(
        req.header("chatgpt-account-id"),
        Some(stack.codex.workspace.as_str()),
        "{summary}"
    );
    assert_eq!(body["store"], json!(false), "{summary}");
    assert_eq!(body["stream"], json!(true), "{summary}");
    assert!(
        body["instructions"]
            .as_str()
            .is_some_and(|s| !s.trim().is_empty()),
        "{summary}: instructions {:?}",
        body.get("instructions")
    );
    assert!(
        !req.headers
            .keys()
            .any(|n| n.as_str().starts_with("x-stainless")),
        "{summary}: SDK fingerprint headers reached the Codex backend"
    );
    let leaks = leaked_in(&raw(req), &stack.foreign_to("codex access token"));
    assert!(leaks.is_empty(), "{summary}: carries {leaks:?}");
}

/// The last user message text of a Responses body.
fn last_user_text(body: &Value) -> Option<String> {
    body["input"]
        .as_array()?
        .iter()
        .rev()
        .find(|i| i["role"] == "user")
        .map(|i| match &i["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(""),
            _ => String::new(),
        })
}

fn script(name: &str) -> PathBuf {
    // Read when the test runs (see crates/proto/build.rs).
    PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join("clients")
    .join(name)
}

#[test]
fn openai_python_sdk_chat_and_responses_through_every_openai_account_kind() {
    // Before any setup: a missing SDK fails here, saying how to install it.
    let python = openai_python().unwrap();
    let stack = Stack::start();

    let keys = json!({
        "codex": stack.codex.key,
        "openai": stack.openai.key,
        "azure": stack.azure.key,
    });
    let out: Output = run_timeout(
        client_command(&python)
            .arg(script("openai_sdk.py"))
            .env("POOLGATE_BASE_URL", stack.pg.openai_base_url())
            .env("POOLGATE_KEYS", keys.to_string())
            .env("POOLGATE_MODEL", MODEL),
        None,
        CLIENT_TIMEOUT,
    )
    .unwrap();
    assert!(
        out.success(),
        "the openai SDK script failed: {out}\npoolgate log:\n{}",
        stack.pg.logs()
    );
    let report = out.json().unwrap();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 12, "{report:#}");

    let mut ids = Vec::new();
    for r in results {
        let label = r["label"].as_str().unwrap();
        let api = r["api"].as_str().unwrap();
        let stream = r["stream"].as_bool().unwrap();
        let what = format!("{label} {api} stream={stream}: {r}");
        let prompt = r["prompt"].as_str().unwrap();
        assert_eq!(r["text"], format!("echo: {prompt}"), "{what}");
        let (input, output, total) = (
            r["input_tokens"].as_u64().unwrap_or(0),
            r["output_tokens"].as_u64().unwrap_or(0),
            r["total_tokens"].as_u64().unwrap_or(0),
        );
        assert!(input > 0 && output > 0, "{what}: no usage");
        assert_eq!(total, input + output, "{what}");
        match (api, stream) {
            ("chat", false) => assert_eq!(r["finish_reason"], "stop", "{what}"),
            ("chat", true) => {
                assert_eq!(r["finish_reason"], "stop", "{what}");
                // The mock answers in four deltas: a stream, not one aggregated chunk.
                assert!(r["chunks"].as_u64().unwrap() >= 4, "{what}");
            }
            ("responses", false) => assert_eq!(r["status"], "completed", "{what}"),
            ("responses", true) => {
                assert_eq!(r["status"], "completed", "{what}");
                assert_eq!(r["completed_text"], r["text"], "{what}");
                let types: Vec<&str> = r["event_types"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(Value::as_str)
                    .collect();
                assert_eq!(types.first(), Some(&"response.created"), "{what}");
                assert_eq!(types.last(), Some(&"response.completed"), "{what}");
                let deltas = types
                    .iter()
                    .filter(|t| **t == "response.output_text.delta")
                    .count();
                assert!(deltas >= 4, "{what}");
            }
            _ => panic!("unexpected call {what}"),
        }
        let id = r["request_id"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| panic!("{what}: no x-request-id"));
        ids.push(id.to_string());
    }

    // One request-log record per SDK call, on the account its key allows, with the usage
    // the client was told.
    let logs = stack.logs_with(&ids);
    for (r, id) in results.iter().zip(&ids) {
        let rec = &logs[id];
        let what = format!(
            "log of {} {} stream={}: {rec}",
            r["label"], r["api"], r["stream"]
        );
        let label = r["label"].as_str().unwrap();
        let api = r["api"].as_str().unwrap();
        let (account, key) = match label {
            "codex" => (&stack.codex.account_id, &stack.codex.key_id),
            "azure" => (&stack.azure.account_id, &stack.azure.key_id),
            _ => (&stack.openai.account_id, &stack.openai.key_id),
        };
        assert_eq!(rec["status"], 200, "{what}");
        assert_eq!(rec["account_id"], account.as_str(), "{what}");
        assert_eq!(rec["key_id"], key.as_str(), "{what}");
        assert_eq!(rec["model"], MODEL, "{what}");
        let path = match api {
            "chat" => "/v1/chat/completions",
            _ => "/v1/responses",
        };
        assert_eq!(rec["path"], path, "{what}");
        // Only the Codex account needs chat translated; only Azure asks for another model
        // (the deployment). The JSON shows an unchanged model as "".
        let translation = match (label, api) {
            ("codex", "chat") => "chat_to_responses",
            _ => "none",
        };
        assert_eq!(rec["translation"], translation, "{what}");
        let upstream_model = if label == "azure" {
            AZURE_DEPLOYMENT
        } else {
            ""
        };
        assert_eq!(rec["upstream_model"], upstream_model, "{what}");
        let attempts = rec["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "{what}");
        assert_eq!(attempts[0]["status"], 200, "{what}");
        assert_eq!(rec["input_tokens"], r["input_tokens"], "{what}");
        assert_eq!(rec["output_tokens"], r["output_tokens"], "{what}");
    }

    // The upstream side: four requests reached each account, each with that account's own
    // credential, and the Codex ones in the shape the Codex backend requires.
    assert_eq!(stack.mock.requests().len(), 12, "requests to the mock");
    let codex_reqs = stack.mock.requests_to(CODEX_RESPONSES);
    assert_eq!(codex_reqs.len(), 4, "requests to the Codex backend");
    for (i, req) in codex_reqs.iter().enumerate() {
        assert_codex_shaped(&stack, req, &format!("Codex upstream request {i}"));
    }
    let mut openai_reqs = stack.mock.requests_to("/v1/chat/completions");
    assert_eq!(openai_reqs.len(), 2, "chat requests to the OpenAI upstream");
    openai_reqs.extend(stack.mock.requests_to("/v1/responses"));
    assert_eq!(openai_reqs.len(), 4, "requests to the OpenAI upstream");
    let foreign = stack.foreign_to("OpenAI API key");
    for req in &openai_reqs {
        assert_eq!(
            req.header("authorization"),
            Some(format!("Bearer {}", stack.openai.api_key).as_str()),
            "OpenAI upstream {} without the account's API key",
            req.path
        );
        let leaks = leaked_in(&raw(req), &foreign);
        assert!(leaks.is_empty(), "OpenAI upstream {}: {leaks:?}", req.path);
    }

    // Azure: the deployment in the chat URL and in the Responses body's model, the API
    // version in the query, the key in `api-key` and no bearer token.
    let mut azure_reqs = stack.mock.requests_to(&format!(
        "/openai/deployments/{AZURE_DEPLOYMENT}/chat/completions"
    ));
    assert_eq!(azure_reqs.len(), 2, "chat requests to the Azure deployment");
    let azure_responses = stack.mock.requests_to("/openai/responses");
    assert_eq!(azure_responses.len(), 2, "responses requests to Azure");
    for req in &azure_responses {
        let body = req.json().unwrap();
        assert_eq!(
            body["model"], AZURE_DEPLOYMENT,
            "Azure {}: {body}",
            req.path
        );
    }
    azure_reqs.extend(azure_responses);
    let foreign = stack.foreign_to("Azure API key");
    for req in &azure_reqs {
        let query = req.path.split_once('?').map(|(_, q)| q).unwrap_or_default();
        assert!(
            query
                .split('&')
                .any(|p| p == format!("api-version={AZURE_API_VERSION}")),
            "Azure upstream {} without the account's api-version",
            req.path
        );
        assert_eq!(
            req.header("api-key"),
            Some(stack.azure.api_key.as_str()),
            "Azure upstream {} without the account's API key",
            req.path
        );
        assert!(
            req.header("authorization").is_none(),
            "Azure upstream {} carries an Authorization header",
            req.path
        );
        let leaks = leaked_in(&raw(req), &foreign);
        assert!(leaks.is_empty(), "Azure upstream {}: {leaks:?}", req.path);
    }
    stack.assert_logs_clean();
}

#[test]
fn codex_cli_completes_a_turn_through_the_gateway() {
    // Before any setup: a missing CLI fails here, saying how to install it.
    let codex = codex_cli().unwrap();
    let stack = Stack::start();
    let home = stack.tmp.path().join("codex-home");
    let work = stack.tmp.path().join("work");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&work).unwrap();

    let prompt = format!(
        "answer the poolgate end-to-end check {}",
        random_b64(6).unwrap()
    );
    let provider = |field: &str, value: &str| format!("model_providers.poolgate.{field}={value}");
    let out = run_timeout(
        client_command(&codex)
            .current_dir(&work)
            .env("HOME", &home)
            .env("CODEX_HOME", &home)
            .env("POOLGATE_E2E_KEY", &stack.codex.key)
            .args(["exec", "--json", "--skip-git-repo-check", "-s", "read-only"])
            .args(["-c", "model_provider=\"poolgate\""])
            .args(["-c", &provider("name", "\"poolgate\"")])
            .args([
                "-c",
                &provider("base_url", &format!("\"{}\"", stack.pg.openai_base_url())),
            ])
            .args(["-c", &provider("env_key", "\"POOLGATE_E2E_KEY\"")])
            .args(["-c", &provider("wire_api", "\"responses\"")])
            // One request per turn: a failure shows at once instead of after backoffs.
            .args(["-c", &provider("request_max_retries", "0")])
            .args(["-c", &provider("stream_max_retries", "0")])
            .args(["-m", MODEL, &prompt]),
        None,
        CLIENT_TIMEOUT,
    )
    .unwrap();
    let diagnose = || {
        let upstream: Vec<String> = stack
            .mock
            .requests()
            .iter()
            .map(|r| {
                format!(
                    "{} {} instructions={:?}",
                    r.method,
                    r.path,
                    r.json().map(|b| b.get("instructions").is_some())
                )
            })
            .collect();
        format!(
            "codex exec: {out}\nupstream requests: {upstream:?}\npoolgate log:\n{}",
            stack.pg.logs()
        )
    };
    assert!(out.success(), "{}", diagnose());

    // `--json` prints one event per line.
    let events: Vec<Value> = out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{out}")))
        .collect();
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "error" || e["type"] == "turn.failed")
        .collect();
    assert!(failed.is_empty(), "{failed:?}\n{}", diagnose());
    let replies: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "item.completed" && e["item"]["type"] == "agent_message")
        .filter_map(|e| e["item"]["text"].as_str())
        .collect();
    assert_eq!(replies, [format!("echo: {prompt}")], "{}", diagnose());
    let completed = events
        .iter()
        .find(|e| e["type"] == "turn.completed")
        .unwrap_or_else(|| panic!("no turn.completed: {}", diagnose()));
    assert!(
        completed["usage"]["output_tokens"].as_u64().unwrap_or(0) > 0,
        "the mock's usage did not reach the CLI: {completed}"
    );

    // The mock saw a Codex-shaped turn carrying the prompt.
    let turns = stack.mock.requests_to(CODEX_RESPONSES);
    assert!(!turns.is_empty(), "{}", diagnose());
    for (i, req) in turns.iter().enumerate() {
        assert_codex_shaped(&stack, req, &format!("Codex CLI upstream request {i}"));
    }
    let last = turns.last().unwrap().json().unwrap();
    assert_eq!(last_user_text(&last).as_deref(), Some(prompt.as_str()));

    // And the control plane logged each of them as a success on the Codex account.
    let logs = wait_until("request logs of the Codex CLI turn", PROPAGATION, || {
        let logs = stack
            .admin
            .json(&["get", "logs", "--key", &stack.codex.key_id])
            .map_err(|e| e.to_string())?;
        let turns_logged: Vec<Value> = logs
            .as_array()
            .ok_or("logs are not an array")?
            .iter()
            .filter(|r| r["path"] == "/v1/responses")
            .cloned()
            .collect();
        if turns_logged.len() >= turns.len() {
            Ok(turns_logged)
        } else {
            Err(format!(
                "{} of {} turns logged: {logs}",
                turns_logged.len(),
                turns.len()
            ))
        }
    })
    .unwrap();
    assert_eq!(logs.len(), turns.len(), "{logs:?}");
    for rec in &logs {
        assert_eq!(rec["status"], 200, "{rec}");
        assert_eq!(rec["account_id"], stack.codex.account_id.as_str(), "{rec}");
        assert!(rec["output_tokens"].as_u64().unwrap_or(0) > 0, "{rec}");
    }
    stack.assert_logs_clean();
}

/// The Claude model name the Anthropic clients ask for; the gateway serves it with its
/// default Codex model.
const CLAUDE_MODEL: &str = "claude-sonnet-4-5";
/// `--anthropic-default-model`'s default.
const SERVED_MODEL: &str = "gpt-5";

/// Messages requests (translated to Responses) the Codex backend saw.
fn assert_messages_translated(stack: &Stack, reqs: &[RecordedRequest], what: &str) {
    for (i, req) in reqs.iter().enumerate() {
        let what = format!("{what} upstream request {i}");
        assert_codex_shaped(stack, req, &what);
        let body = req.json().unwrap();
        assert_eq!(body["model"], SERVED_MODEL, "{what}");
        let key = body["prompt_cache_key"].as_str().unwrap_or_default();
        assert_eq!(key.len(), 36, "{what}: a UUID-shaped anchor, got {key:?}");
        assert_eq!(req.header("session-id"), Some(key), "{what}");
        for h in ["x-api-key", "anthropic-version", "anthropic-beta"] {
            assert!(
                req.header(h).is_none(),
                "{what}: {h} reached the Codex backend"
            );
        }
    }
}

/// What the anthropic SDK script reports for its streamed, counted and tool calls, the same
/// whichever account kind served them.
fn assert_anthropic_sdk_streams_and_tools(r: &Value) {
    let echo = |name: &str| format!("echo: {}", r[name]["prompt"].as_str().unwrap());
    let helper = &r["helper_stream"];
    assert_eq!(helper["text"], echo("helper_stream"), "{helper}");
    assert_eq!(helper["final_text"], helper["text"], "{helper}");
    assert_eq!(helper["stop_reason"], "end_turn", "{helper}");
    // The mock answers in four deltas: a stream, not one aggregated block.
    assert!(helper["deltas"].as_u64().unwrap() >= 4, "{helper}");

    let raw_stream = &r["raw_stream"];
    assert_eq!(raw_stream["text"], echo("raw_stream"), "{raw_stream}");
    assert_eq!(raw_stream["stop_reason"], "end_turn", "{raw_stream}");
    let types: Vec<&str> = raw_stream["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(types.first(), Some(&"message_start"), "{raw_stream}");
    assert_eq!(
        &types[types.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"],
        "{raw_stream}"
    );
    assert!(raw_stream["output_tokens"].as_u64().unwrap() > 0);

    let counted = &r["count_tokens"];
    assert!(counted["input_tokens"].as_u64().unwrap() > 0, "{counted}");

    let tools = &r["tools"];
    assert_eq!(tools["first_stop_reason"], "tool_use", "{tools}");
    assert_eq!(tools["tool_names"], json!(["lookup_weather"]), "{tools}");
    assert!(tools["tool_inputs"][0]["city"].is_string(), "{tools}");
    assert_eq!(
        tools["text"],
        format!("tool result: {}", tools["prompt"].as_str().unwrap()),
        "{tools}"
    );
    assert_eq!(tools["stop_reason"], "end_turn", "{tools}");
}

/// Runs tests/clients/anthropic_sdk.py against the gateway with `key`; its JSON report.
fn run_anthropic_sdk(stack: &Stack, python: &Path, key: &str) -> Value {
    let out: Output = run_timeout(
        client_command(python)
            .arg(script("anthropic_sdk.py"))
            .env("POOLGATE_BASE_URL", format!("http://{}", stack.pg.gateway))
            .env("POOLGATE_KEY", key)
            .env("POOLGATE_MODEL", CLAUDE_MODEL),
        None,
        CLIENT_TIMEOUT,
    )
    .unwrap();
    assert!(
        out.success(),
        "the anthropic SDK script failed: {out}\npoolgate log:\n{}",
        stack.pg.logs()
    );
    out.json().unwrap()
}

#[test]
fn anthropic_python_sdk_messages_through_a_codex_account() {
    // Before any setup: a missing SDK fails here, saying how to install it.
    let python = anthropic_python().unwrap();
    let stack = Stack::start();
    let key = stack.codex.key.clone();
    let report = run_anthropic_sdk(&stack, &python, &key);
    let r = &report["results"];
    let echo = |name: &str| format!("echo: {}", r[name]["prompt"].as_str().unwrap());

    let plain = &r["plain"];
    assert_eq!(plain["text"], echo("plain"), "{plain}");
    assert_eq!(plain["model"], CLAUDE_MODEL, "{plain}");
    assert_eq!(plain["stop_reason"], "end_turn", "{plain}");
    assert!(plain["id"].as_str().unwrap().starts_with("msg_"), "{plain}");

    assert_anthropic_sdk_streams_and_tools(r);

    // Logged as Anthropic Messages on the Codex account, with the usage the client saw.
    let ids: Vec<String> = ["plain", "helper_stream", "raw_stream", "count_tokens"]
        .iter()
        .map(|n| r[*n]["request_id"].as_str().unwrap().to_string())
        .collect();
    let logs = stack.logs_with(&ids);
    for (name, id) in ["plain", "helper_stream", "raw_stream"].iter().zip(&ids) {
        let rec = &logs[id];
        assert_eq!(rec["status"], 200, "{name}: {rec}");
        assert_eq!(rec["path"], "/v1/messages", "{name}: {rec}");
        assert_eq!(rec["protocol"], "anthropic_messages", "{name}: {rec}");
        assert_eq!(rec["translation"], "messages_to_responses", "{name}: {rec}");
        assert_eq!(rec["account_id"], stack.codex.account_id.as_str(), "{rec}");
        assert_eq!(rec["key_id"], stack.codex.key_id.as_str(), "{rec}");
        // The client's model, and the Codex model the alias chose for it.
        assert_eq!(rec["model"], CLAUDE_MODEL, "{rec}");
        assert_eq!(rec["upstream_model"], SERVED_MODEL, "{rec}");
        assert!(rec["output_tokens"].as_u64().unwrap_or(0) > 0, "{rec}");
    }
    assert_eq!(
        logs[&ids[0]]["output_tokens"], plain["output_tokens"],
        "{plain}"
    );
    let count_log = &logs[&ids[3]];
    assert_eq!(
        count_log["path"], "/v1/messages/count_tokens",
        "{count_log}"
    );
    assert!(count_log["attempts"].as_array().unwrap().is_empty());

    // Five messages reached the Codex backend (count_tokens never does); the plain and
    // helper calls share metadata.user_id and model, hence one anchor.
    let reqs = stack.mock.requests_to(CODEX_RESPONSES);
    assert_eq!(reqs.len(), 5, "requests to the Codex backend");
    assert_messages_translated(&stack, &reqs, "anthropic SDK");
    let anchor = |i: usize| reqs[i].json().unwrap()["prompt_cache_key"].clone();
    assert_eq!(anchor(0), anchor(1));
    assert_ne!(anchor(0), anchor(2), "no user id is another conversation");
    stack.assert_logs_clean();
}

#[test]
fn anthropic_python_sdk_messages_through_an_anthropic_key_account() {
    // Before any setup: a missing SDK fails here, saying how to install it.
    let python = anthropic_python().unwrap();
    let stack = Stack::start();
    let key = stack.anthropic.key.clone();
    let report = run_anthropic_sdk(&stack, &python, &key);
    let r = &report["results"];
    let echo = |name: &str| format!("echo: {}", r[name]["prompt"].as_str().unwrap());

    // The upstream's own answers, passed through: its message ids and the Claude model.
    let plain = &r["plain"];
    assert_eq!(plain["text"], echo("plain"), "{plain}");
    assert_eq!(plain["model"], CLAUDE_MODEL, "{plain}");
    assert_eq!(plain["stop_reason"], "end_turn", "{plain}");
    assert!(
        plain["id"].as_str().unwrap().starts_with("msg_mock"),
        "{plain}"
    );

    assert_eq!(
        r["helper_stream"]["model"], CLAUDE_MODEL,
        "{}",
        r["helper_stream"]
    );
    assert_anthropic_sdk_streams_and_tools(r);

    // Logged as Anthropic Messages on the Anthropic account, untranslated, with the usage
    // the client saw.
    let ids: Vec<String> = ["plain", "helper_stream", "raw_stream", "count_tokens"]
        .iter()
        .map(|n| r[*n]["request_id"].as_str().unwrap().to_string())
        .collect();
    let logs = stack.logs_with(&ids);
    for (name, id) in ["plain", "helper_stream", "raw_stream"].iter().zip(&ids) {
        let rec = &logs[id];
        assert_eq!(rec["status"], 200, "{name}: {rec}");
        assert_eq!(rec["path"], "/v1/messages", "{name}: {rec}");
        assert_eq!(rec["protocol"], "anthropic_messages", "{name}: {rec}");
        assert_eq!(rec["translation"], "none", "{name}: {rec}");
        assert_eq!(rec["upstream_model"], "", "{name}: {rec}");
        assert_eq!(
            rec["account_id"],
            stack.anthropic.account_id.as_str(),
            "{name}: {rec}"
        );
        assert_eq!(rec["key_id"], stack.anthropic.key_id.as_str(), "{rec}");
        assert_eq!(rec["model"], CLAUDE_MODEL, "{rec}");
        assert!(rec["input_tokens"].as_u64().unwrap_or(0) > 0, "{rec}");
        assert!(rec["output_tokens"].as_u64().unwrap_or(0) > 0, "{rec}");
    }
    assert_eq!(
        logs[&ids[0]]["output_tokens"], plain["output_tokens"],
        "{plain}"
    );
    assert_eq!(
        logs[&ids[0]]["input_tokens"], plain["input_tokens"],
        "{plain}"
    );
    let count_log = &logs[&ids[3]];
    assert_eq!(
        count_log["path"], "/v1/messages/count_tokens",
        "{count_log}"
    );
    assert!(count_log["attempts"].as_array().unwrap().is_empty());

    // Five messages reached the Anthropic API natively (count_tokens never does): the
    // account's key in x-api-key, the client's headers and body as sent, no bearer token.
    assert_eq!(stack.mock.requests().len(), 5, "requests to the mock");
    let reqs = stack.mock.requests_to("/v1/messages");
    assert_eq!(reqs.len(), 5, "requests to the Anthropic API");
    let api_version = report["api_version"].as_str().unwrap();
    let foreign = stack.foreign_to("Anthropic API key");
    let mut streamed = 0;
    for (i, req) in reqs.iter().enumerate() {
        let what = format!("Anthropic upstream request {i} {}", req.path);
        assert_eq!(
            req.header("x-api-key"),
            Some(stack.anthropic.api_key.as_str()),
            "{what}: not the account's API key"
        );
        assert!(
            req.header("authorization").is_none(),
            "{what}: carries an Authorization header"
        );
        // The client's version, not the gateway's default.
        assert_eq!(req.header("anthropic-version"), Some(api_version), "{what}");
        let body = req.json().unwrap();
        assert_eq!(body["model"], CLAUDE_MODEL, "{what}");
        assert!(body.get("input").is_none(), "{what}: a Responses body");
        if body["stream"] == json!(true) {
            streamed += 1;
        }
        let leaks = leaked_in(&raw(req), &foreign);
        assert!(leaks.is_empty(), "{what}: carries {leaks:?}");
    }
    assert_eq!(streamed, 2, "the helper and raw streams");
    let first = reqs[0].json().unwrap();
    assert_eq!(first["system"], "Be brief.", "{first}");
    assert_eq!(first["metadata"], json!({"user_id": "sdk-user"}), "{first}");
    // The tool round trip went back with the upstream's own tool_use id.
    let last = reqs[4].json().unwrap();
    let result = &last["messages"][2]["content"][0];
    assert_eq!(result["type"], "tool_result", "{last}");
    assert!(
        result["tool_use_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("toolu_mock")),
        "{last}"
    );
    stack.assert_logs_clean();
}

/// One `claude -p` turn with `key`, and what it printed.
struct ClaudeRun {
    prompt: String,
    out: Output,
}

impl ClaudeRun {
    fn start(claude: &Path, stack: &Stack, key: &str) -> ClaudeRun {
        let home = stack.tmp.path().join("claude-home");
        let work = stack.tmp.path().join("claude-work");
        std::fs::create_dir_all(&home).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let prompt = format!(
            "answer the poolgate claude check {}",
            random_b64(6).unwrap()
        );
        let out = run_timeout(
            client_command(claude)
                .current_dir(&work)
                .env("HOME", &home)
                .env("ANTHROPIC_BASE_URL", format!("http://{}", stack.pg.gateway))
                .env("ANTHROPIC_API_KEY", key)
                .env("DISABLE_TELEMETRY", "1")
                .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
                .args(["--bare", "-p", &prompt, "--model", CLAUDE_MODEL]),
            None,
            CLIENT_TIMEOUT,
        )
        .unwrap();
        let run = ClaudeRun { prompt, out };
        assert!(run.out.success(), "{}", run.diagnose(stack));
        // The mock echoes the last user text, which Claude Code may wrap with context of its
        // own.
        assert!(
            run.out.stdout.contains("echo: ") && run.out.stdout.contains(&run.prompt),
            "{}",
            run.diagnose(stack)
        );
        run
    }

    fn diagnose(&self, stack: &Stack) -> String {
        let upstream: Vec<String> = stack
            .mock
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        format!(
            "claude -p: {}\nupstream requests: {upstream:?}\npoolgate log:\n{}",
            self.out,
            stack.pg.logs()
        )
    }
}

/// The `/v1/messages` request-log records of `key_id`, once there are at least `n`.
fn messages_logged(stack: &Stack, key_id: &str, n: usize) -> Vec<Value> {
    wait_until("request logs of the Claude Code turn", PROPAGATION, || {
        let logs = stack
            .admin
            .json(&["get", "logs", "--key", key_id])
            .map_err(|e| e.to_string())?;
        let turns_logged: Vec<Value> = logs
            .as_array()
            .ok_or("logs are not an array")?
            .iter()
            .filter(|r| r["path"] == "/v1/messages")
            .cloned()
            .collect();
        if turns_logged.len() >= n {
            Ok(turns_logged)
        } else {
            Err(format!(
                "{} of {n} turns logged: {logs}",
                turns_logged.len()
            ))
        }
    })
    .unwrap()
}

#[test]
fn claude_code_completes_a_turn_through_the_gateway() {
    // Before any setup: a missing Claude Code fails here, saying how to install it.
    let claude = claude_code().unwrap();
    let stack = Stack::start();
    let run = ClaudeRun::start(&claude, &stack, &stack.codex.key);

    let turns = stack.mock.requests_to(CODEX_RESPONSES);
    assert!(!turns.is_empty(), "{}", run.diagnose(&stack));
    assert_messages_translated(&stack, &turns, "Claude Code");
    let last = turns.last().unwrap().json().unwrap();
    assert!(
        last_user_text(&last).is_some_and(|t| t.contains(&run.prompt)),
        "{last}"
    );

    // Claude Code's turn is logged as Messages on the Codex account.
    let logs = messages_logged(&stack, &stack.codex.key_id, turns.len());
    for rec in &logs {
        assert_eq!(rec["status"], 200, "{rec}");
        assert_eq!(rec["account_id"], stack.codex.account_id.as_str(), "{rec}");
        assert_eq!(rec["translation"], "messages_to_responses", "{rec}");
        assert!(rec["output_tokens"].as_u64().unwrap_or(0) > 0, "{rec}");
    }
    stack.assert_logs_clean();
}

#[test]
fn claude_code_completes_a_turn_through_an_anthropic_key_account() {
    // Before any setup: a missing Claude Code fails here, saying how to install it.
    let claude = claude_code().unwrap();
    let stack = Stack::start();
    let run = ClaudeRun::start(&claude, &stack, &stack.anthropic.key);

    // Every request went to the Anthropic API natively, with the account's key and Claude
    // Code's own protocol headers; nothing reached another upstream.
    let turns = stack.mock.requests_to("/v1/messages");
    assert!(!turns.is_empty(), "{}", run.diagnose(&stack));
    assert_eq!(
        stack.mock.requests().len(),
        turns.len(),
        "{}",
        run.diagnose(&stack)
    );
    let foreign = stack.foreign_to("Anthropic API key");
    for (i, req) in turns.iter().enumerate() {
        let what = format!("Claude Code upstream request {i} {}", req.path);
        assert_eq!(
            req.header("x-api-key"),
            Some(stack.anthropic.api_key.as_str()),
            "{what}: not the account's API key"
        );
        assert!(req.header("authorization").is_none(), "{what}");
        assert!(req.header("anthropic-version").is_some(), "{what}");
        assert!(
            req.header("anthropic-beta").is_some_and(|b| !b.is_empty()),
            "{what}: Claude Code's anthropic-beta was not forwarded"
        );
        let body = req.json().unwrap();
        assert!(
            body["model"]
                .as_str()
                .is_some_and(|m| m.starts_with("claude-")),
            "{what}: {body}"
        );
        let leaks = leaked_in(&raw(req), &foreign);
        assert!(leaks.is_empty(), "{what}: carries {leaks:?}");
    }
    let last = turns.last().unwrap().json().unwrap();
    assert_eq!(last["model"], CLAUDE_MODEL, "{last}");
    assert!(
        last.to_string().contains(&run.prompt),
        "the prompt is not in the last turn: {last}"
    );

    // Logged as untranslated Messages on the Anthropic account.
    let logs = messages_logged(&stack, &stack.anthropic.key_id, turns.len());
    assert_eq!(logs.len(), turns.len(), "{logs:?}");
    for rec in &logs {
        assert_eq!(rec["status"], 200, "{rec}");
        assert_eq!(
            rec["account_id"],
            stack.anthropic.account_id.as_str(),
            "{rec}"
        );
        assert_eq!(rec["protocol"], "anthropic_messages", "{rec}");
        assert_eq!(rec["translation"], "none", "{rec}");
        assert!(rec["output_tokens"].as_u64().unwrap_or(0) > 0, "{rec}");
    }
    stack.assert_logs_clean();
}
