//! `poolgate standalone` as a process, driven by `poolctl` and by grpcurl through server
//! reflection: import, list, keys, viewer tokens, restart, and no secret at rest or in logs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use poolgate_e2e::{
    Output, Poolctl, Poolgate, Secret, file_names, grpcurl, leaked_in, leaks_in_dir, random_b64,
    run, unsigned_jwt,
};
use serde_json::{Value, json};

/// One ChatGPT login as the Codex CLI stores it.
#[derive(Clone)]
struct Login {
    name: &'static str,
    sub: String,
    email: String,
    workspace: String,
    plan: &'static str,
    id_token: String,
    access_token: String,
    refresh_token: String,
    secrets: Vec<Secret>,
}

impl Login {
    fn new(name: &'static str, workspace: &str, plan: &'static str) -> Login {
        let sub = format!("auth0|{name}-{}", random_b64(9).unwrap());
        let email = format!("{name}@example.test");
        let mut l = Login {
            name,
            sub,
            email,
            workspace: workspace.to_string(),
            plan,
            id_token: String::new(),
            access_token: String::new(),
            refresh_token: String::new(),
            secrets: Vec::new(),
        };
        l.rotate();
        l
    }

    /// New tokens for the same identity, as after a fresh login.
    fn rotate(&mut self) {
        let id_sig = random_b64(32).unwrap();
        self.id_token = unsigned_jwt(
            &json!({
                "sub": self.sub,
                "email": self.email,
                "exp": 4_000_000_000u64,
                "https://api.openai.com/auth": {
                    "chatgpt_account_id": self.workspace,
                    "chatgpt_plan_type": self.plan,
                },
            }),
            &id_sig,
        );
        let access_core = random_b64(32).unwrap();
        self.access_token = format!("at-{access_core}");
        let refresh_core = random_b64(32).unwrap();
        self.refresh_token = format!("rt-{refresh_core}");
        let n = self.name;
        self.secrets = vec![
            Secret {
                label: format!("{n} id_token"),
                value: self.id_token.clone(),
            },
            Secret {
                label: format!("{n} id_token signature"),
                value: id_sig,
            },
            Secret {
                label: format!("{n} access token"),
                value: self.access_token.clone(),
            },
            Secret {
                label: format!("{n} access token (random part)"),
                value: access_core,
            },
            Secret {
                label: format!("{n} refresh token"),
                value: self.refresh_token.clone(),
            },
            Secret {
                label: format!("{n} refresh token (random part)"),
                value: refresh_core,
            },
        ];
    }

    /// The Codex CLI's auth.json (snake_case under `tokens`).
    fn codex_cli(&self) -> Value {
        json!({
            "OPENAI_API_KEY": null,
            "tokens": {
                "id_token": self.id_token,
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "account_id": self.workspace,
            },
            "last_refresh": "2026-01-01T00:00:00Z",
        })
    }

    /// An export with camelCase fields at the top level.
    fn camel(&self) -> Value {
        json!({
            "email": self.email,
            "idToken": self.id_token,
            "accessToken": self.access_token,
            "refreshToken": self.refresh_token,
        })
    }
}

fn accounts_by_name(list: &Value) -> std::collections::BTreeMap<String, Value> {
    list.as_array()
        .expect("accounts as an array")
        .iter()
        .map(|a| (a["name"].as_str().unwrap().to_string(), a.clone()))
        .collect()
}

fn ids(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .expect("an array")
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

fn assert_no_secret(what: &str, text: &str, secrets: &[Secret]) {
    let leaks = leaked_in(text.as_bytes(), secrets);
    assert!(leaks.is_empty(), "{what} contains secrets: {leaks:?}");
}

fn assert_data_dir_clean(data: &Path, secrets: &[Secret]) {
    // Control: the scan does read the stored data (an account name is kept in plaintext).
    let name = [Secret {
        label: "account name".into(),
        value: "openai-main".into(),
    }];
    assert!(
        !leaks_in_dir(data, &["admin.token"], &name)
            .unwrap()
            .is_empty(),
        "the scan found no stored data at all in {} (files: {:?})",
        data.display(),
        file_names(data).unwrap()
    );
    let leaks = leaks_in_dir(data, &["admin.token"], secrets).unwrap();
    assert!(
        leaks.is_empty(),
        "plaintext secrets at rest in {} (files: {:?}): {leaks:?}",
        data.display(),
        file_names(data).unwrap()
    );
}

/// The import outcome of (document, index) in a poolctl `-o json` import response.
fn outcome(resp: &Value, doc: u64, index: u64) -> Value {
    resp["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["document"] == doc && r["index"] == index)
        .unwrap_or_else(|| panic!("no result for document {doc} item {index} in {resp:#}"))
        .clone()
}

fn grpc(args: &[&str]) -> Output {
    let bin = grpcurl().unwrap();
    run(std::process::Command::new(bin).args(args), None).unwrap()
}

#[test]
fn standalone_admin_flow_survives_restart_without_leaking_secrets() {
    // Fail early and clearly if a prerequisite is missing.
    grpcurl().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let files = tmp.path().join("input");
    std::fs::create_dir_all(files.join("exports")).unwrap();

    let mut pg = Poolgate::standalone(&data).unwrap();

    // The bootstrap admin token: a 0600 file in the data dir.
    let token_file = data.join("admin.token");
    let admin_token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        admin_token.starts_with("pga_"),
        "admin.token does not hold a pga_ token"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "admin.token mode is {mode:o}");
    }
    let admin = Poolctl::new(pg.url(), Some(&token_file)).unwrap();
    let who = admin.json(&["whoami"]).unwrap();
    assert_eq!(who["role"], "admin", "{who}");

    let mut secrets: Vec<Secret> = Vec::new();

    // ------------------------------------------------------------------ import
    let solo = format!("ws-solo-{}", random_b64(6).unwrap());
    let team = format!("ws-team-{}", random_b64(6).unwrap());
    let mut alice = Login::new("alice", &solo, "plus");
    let bob = Login::new("bob", &team, "team");
    let carol = Login::new("carol", &team, "team");
    let dave = Login::new(
        "dave",
        &format!("ws-dave-{}", random_b64(6).unwrap()),
        "pro",
    );
    let erin = Login::new(
        "erin",
        &format!("ws-erin-{}", random_b64(6).unwrap()),
        "plus",
    );
    let frank = Login::new(
        "frank",
        &format!("ws-frank-{}", random_b64(6).unwrap()),
        "free",
    );
    for l in [&alice, &bob, &carol, &dave, &erin, &frank] {
        secrets.extend_from_slice(&l.secrets);
    }
    let stray_access = format!("at-{}", random_b64(32).unwrap());
    secrets.extend_from_slice(&[Secret {
        label: "access token of a malformed item".into(),
        value: stray_access.clone(),
    }]);

    let single = files.join("alice.json");
    std::fs::write(
        &single,
        serde_json::to_string_pretty(&alice.codex_cli()).unwrap(),
    )
    .unwrap();
    let array = files.join("team.json");
    std::fs::write(
        &array,
        json!([bob.codex_cli(), carol.codex_cli()]).to_string(),
    )
    .unwrap();
    // A directory: its *.json files are imported, anything else is ignored.
    std::fs::write(
        files.join("exports/more.json"),
        format!("{}\n{}\n", dave.camel(), erin.codex_cli()),
    )
    .unwrap();
    std::fs::write(files.join("exports/README.txt"), "not a document").unwrap();
    let bad = files.join("bad.json");
    std::fs::write(
        &bad,
        format!(
            "{}\n{}\n{{oops\n",
            frank.codex_cli(),
            json!({"tokens": {"access_token": stray_access}})
        ),
    )
    .unwrap();

    let out = admin
        .run(&[
            "import",
            "accounts",
            single.to_str().unwrap(),
            array.to_str().unwrap(),
            files.join("exports").to_str().unwrap(),
            bad.to_str().unwrap(),
            "-o",
            "json",
        ])
        .unwrap();
    assert_eq!(
        out.code,
        Some(1),
        "an import with failed items exits 1: {out}"
    );
    let resp = out.json().unwrap();
    assert_eq!(
        (
            resp["created"].as_u64(),
            resp["updated"].as_u64(),
            resp["failed"].as_u64()
        ),
        (Some(6), Some(0), Some(2)),
        "{resp:#}"
    );
    for (doc, index) in [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0)] {
        assert_eq!(outcome(&resp, doc, index)["outcome"], "created", "{resp:#}");
    }
    let missing = outcome(&resp, 3, 1);
    assert_eq!(missing["outcome"], "failed");
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("id_token is missing"),
        "{missing}"
    );
    let broken = outcome(&resp, 3, 2);
    assert_eq!(broken["outcome"], "failed");
    assert!(
        broken["error"]
            .as_str()
            .unwrap()
            .contains("invalid JSON at line 3"),
        "{broken}"
    );
    assert_no_secret("the import response", &out.stdout, &secrets);
    let alice_id = outcome(&resp, 0, 0)["account_id"]
        .as_str()
        .unwrap()
        .to_string();

    // Re-importing the same logins (alice with fresh tokens) updates them, in table form.
    alice.rotate();
    secrets.extend_from_slice(&alice.secrets);
    let rotated = files.join("alice-rotated.json");
    std::fs::write(&rotated, alice.codex_cli().to_string()).unwrap();
    let out = admin
        .ok(&[
            "import",
            "accounts",
            rotated.to_str().unwrap(),
            array.to_str().unwrap(),
        ])
        .unwrap();
    let header: Vec<&str> = out
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["SOURCE", "ITEM", "OUTCOME", "ID", "NAME", "ERROR"],
        "{out}"
    );
    let updated_rows = out
        .stdout
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("updated"))
        .count();
    assert_eq!(updated_rows, 3, "{out}");
    assert!(out.stdout.contains(&alice_id), "{out}");
    assert!(
        out.stdout.contains("0 created, 3 updated, 0 failed"),
        "{out}"
    );

    // stdin works as a document source.
    let gina = Login::new("gina", &team, "team");
    secrets.extend_from_slice(&gina.secrets);
    let out = admin
        .run_stdin(
            &["import", "accounts", "-", "-o", "json"],
            gina.codex_cli().to_string().as_bytes(),
        )
        .unwrap();
    assert!(out.success(), "{out}");
    assert_eq!(out.json().unwrap()["created"], 1);

    // ------------------------------------------------------------------ list
    let list = admin.json(&["get", "accounts"]).unwrap();
    assert_no_secret("`get accounts -o json`", &list.to_string(), &secrets);
    let by_name = accounts_by_name(&list);
    assert_eq!(by_name.len(), 7, "{list:#}");
    for l in [&alice, &bob, &carol, &dave, &erin, &frank, &gina] {
        let a = by_name
            .get(&l.email)
            .unwrap_or_else(|| panic!("{} is not listed: {list:#}", l.email));
        assert_eq!(a["provider"], "codex");
        assert_eq!(a["identity"]["subject"], l.sub.as_str());
        assert_eq!(a["identity"]["chatgpt_account_id"], l.workspace.as_str());
        assert_eq!(a["has_credentials"], true);
    }
    assert_eq!(by_name[&alice.email]["id"], alice_id.as_str());
    // Team members sharing one workspace are separate accounts.
    let (b, c) = (&by_name[&bob.email], &by_name[&carol.email]);
    assert_ne!(b["id"], c["id"]);
    assert_eq!(
        b["identity"]["chatgpt_account_id"],
        c["identity"]["chatgpt_account_id"]
    );

    // An API-key account; the key comes from a file.
    let api_key = format!("sk-proj-{}", random_b64(36).unwrap());
    secrets.extend_from_slice(&[Secret {
        label: "OpenAI API key".into(),
        value: api_key.clone(),
    }]);
    let key_file = files.join("openai.key");
    std::fs::write(&key_file, format!("{api_key}\n")).unwrap();
    let out = admin
        .ok(&[
            "create",
            "account",
            "--provider",
            "openai",
            "--name",
            "openai-main",
            "--api-key-file",
            key_file.to_str().unwrap(),
            "--group",
            "paid",
            "--priority",
            "5",
            "-o",
            "json",
        ])
        .unwrap();
    assert_no_secret("`create account` output", &out.stdout, &secrets);
    let openai = out.json().unwrap();
    assert_eq!(openai["provider"], "openai");
    assert_eq!(openai["group"], "paid");
    assert_eq!(openai["priority"], 5);
    assert_eq!(openai["has_credentials"], true);
    let openai_id = openai["id"].as_str().unwrap().to_string();
    let only = admin
        .json(&["get", "accounts", "--provider", "openai"])
        .unwrap();
    assert_eq!(ids(&only), BTreeSet::from([openai_id.clone()]));
    let paid = admin.json(&["get", "accounts", "--group", "paid"]).unwrap();
    assert_eq!(ids(&paid), BTreeSet::from([openai_id.clone()]));
    assert_eq!(
        admin.json(&["get", "account", &openai_id]).unwrap()["name"],
        "openai-main"
    );

    let table = admin.ok(&["get", "accounts"]).unwrap().stdout;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ID", "NAME", "PROVIDER", "GROUP", "PRIORITY", "ENABLED", "STATUS", "REASON", "AGE"
        ]
    );
    assert_eq!(lines.count(), 8, "{table}");
    assert_no_secret("`get accounts`", &table, &secrets);
    let all_accounts = ids(&admin.json(&["get", "accounts"]).unwrap());
    assert_eq!(all_accounts.len(), 8);

    // ------------------------------------------------------------------ keys
    let created = admin
        .json(&["create", "key", "--name", "ci", "--allow-model", "gpt-5*"])
        .unwrap();
    let key1 = created["key"].as_str().unwrap().to_string();
    let random_part = key1
        .strip_prefix("pgk_")
        .unwrap_or_else(|| panic!("key lacks pgk_: {created}"));
    let raw = URL_SAFE_NO_PAD
        .decode(random_part)
        .expect("the key body is base64url");
    assert!(
        raw.len() >= 32,
        "only {} random bytes in a platform key",
        raw.len()
    );
    let pk = &created["platform_key"];
    assert!(key1.starts_with(pk["prefix"].as_str().unwrap()), "{pk}");
    assert_eq!(pk["allowed_models"], json!(["gpt-5*"]));
    let key1_id = pk["id"].as_str().unwrap().to_string();

    let out = admin
        .ok(&["create", "key", "--name", "laptop", "--expires-in", "30d"])
        .unwrap();
    let key2 = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .unwrap_or_else(|| panic!("no `key:` line: {out}"))
        .to_string();
    assert!(key2.starts_with("pgk_") && key2 != key1, "{out}");
    assert!(out.stderr.contains("not shown again"), "{out}");
    for (label, k) in [("platform key ci", &key1), ("platform key laptop", &key2)] {
        let core = k.trim_start_matches("pgk_").to_string();
        secrets.extend_from_slice(&[
            Secret {
                label: label.into(),
                value: k.clone(),
            },
            Secret {
                label: format!("{label} (random part)"),
                value: core,
            },
        ]);
    }
    let keys = admin.json(&["get", "keys"]).unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 2, "{keys:#}");
    assert_no_secret("`get keys -o json`", &keys.to_string(), &secrets);
    let key_ids = ids(&keys);
    assert!(key_ids.contains(&key1_id));
    let table = admin.ok(&["get", "keys"]).unwrap().stdout;
    assert_no_secret("`get keys`", &table, &secrets);
    assert!(table.contains(pk["prefix"].as_str().unwrap()), "{table}");
    assert!(table.starts_with("ID "), "{table}");

    // ------------------------------------------------------------------ viewer
    let created = admin
        .json(&["create", "token", "--name", "ops", "--role", "viewer"])
        .unwrap();
    let viewer_token = created["token"].as_str().unwrap().to_string();
    let viewer_id = created["admin_token"]["id"].as_str().unwrap().to_string();
    secrets.extend_from_slice(&[Secret {
        label: "viewer token".into(),
        value: viewer_token.clone(),
    }]);
    let viewer_file = tmp.path().join("viewer.token");
    std::fs::write(&viewer_file, &viewer_token).unwrap();
    let viewer = admin.with_token_file(Some(&viewer_file));
    assert_eq!(viewer.json(&["whoami"]).unwrap()["role"], "viewer");
    assert_eq!(
        ids(&viewer.json(&["get", "accounts"]).unwrap()),
        all_accounts
    );
    let out = viewer.run(&["create", "key", "--name", "sneaky"]).unwrap();
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.starts_with("error: permission denied"), "{out}");
    let out = viewer.run(&["delete", "account", &openai_id]).unwrap();
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("permission denied"), "{out}");
    let out = viewer
        .run(&["import", "accounts", single.to_str().unwrap()])
        .unwrap();
    assert!(out.stderr.contains("permission denied"), "{out}");
    // Nothing changed.
    assert_eq!(ids(&admin.json(&["get", "keys"]).unwrap()), key_ids);
    assert_eq!(
        ids(&admin.json(&["get", "accounts"]).unwrap()),
        all_accounts
    );

    // Missing and wrong tokens say how to pass one.
    let anonymous = admin.with_token_file(None);
    let out = anonymous.run(&["get", "accounts"]).unwrap();
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains("unauthenticated") && out.stderr.contains("--token-file"),
        "{out}"
    );
    let wrong_file = tmp.path().join("wrong.token");
    std::fs::write(&wrong_file, "pga_not-a-real-token").unwrap();
    let out = admin
        .with_token_file(Some(&wrong_file))
        .run(&["get", "keys"])
        .unwrap();
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("unauthenticated"), "{out}");

    // ------------------------------------------------------------------ other views
    let policy = admin
        .json(&[
            "set",
            "policy",
            "--strategy",
            "balanced",
            "--cooldown-429",
            "30s,2m,1h",
        ])
        .unwrap();
    assert_eq!(policy["strategy"], "balanced");
    assert_eq!(policy["cooldown_429_secs"], json!([30, 120, 3600]));
    // Model aliases: replaced in the order given, shown as the flag takes them, cleared.
    let policy = admin
        .json(&[
            "set",
            "policy",
            "--model-alias",
            "claude-*haiku*=gpt-5-mini",
            "--model-alias",
            "claude-*=gpt-5",
        ])
        .unwrap();
    assert_eq!(
        policy["model_aliases"],
        json!([
            {"from": "claude-*haiku*", "to": "gpt-5-mini"},
            {"from": "claude-*", "to": "gpt-5"}
        ])
    );
    assert_eq!(policy["strategy"], "balanced", "other fields stay");
    let table = admin.ok(&["get", "policy"]).unwrap();
    assert!(
        table
            .stdout
            .contains("model-alias            claude-*haiku*=gpt-5-mini\n"),
        "{table}"
    );
    let out = admin
        .run(&["set", "policy", "--model-alias", "claude-*=gpt 5"])
        .unwrap();
    assert_eq!(out.code, Some(1), "{out}");
    assert!(out.stderr.contains("model_aliases"), "{out}");
    let policy = admin
        .json(&["set", "policy", "--clear-model-aliases"])
        .unwrap();
    assert_eq!(policy["model_aliases"], json!([]));
    let usage = admin.json(&["get", "usage"]).unwrap();
    assert_eq!(ids_of(&usage, "account_id"), all_accounts);
    assert_eq!(admin.json(&["logs", "--since", "1h"]).unwrap(), json!([]));
    let summary = admin.json(&["logs", "--summary"]).unwrap();
    assert_eq!(summary["total"]["requests"], 0, "{summary}");
    let audit = admin
        .ok(&["get", "audit", "--limit", "1000", "-o", "json"])
        .unwrap();
    assert!(
        audit.json().unwrap().as_array().unwrap().len() >= 5,
        "{audit}"
    );
    assert_no_secret("the audit log", &audit.stdout, &secrets);

    // ------------------------------------------------------------------ grpcurl
    let addr = pg.grpc.to_string();
    let out = grpc(&["-plaintext", &addr, "list"]);
    assert!(out.success(), "{out}");
    assert!(
        out.stdout.lines().any(|l| l == "poolgate.v1.AdminService"),
        "{out}"
    );
    assert!(out.stdout.contains("grpc.health.v1.Health"), "{out}");
    let out = grpc(&["-plaintext", &addr, "describe", "poolgate.v1.AdminService"]);
    assert!(
        out.success() && out.stdout.contains("rpc ListAccounts"),
        "{out}"
    );
    assert!(out.stdout.contains("rpc ImportAccounts"), "{out}");
    let bearer = format!("authorization: Bearer {admin_token}");
    let out = grpc(&[
        "-plaintext",
        "-H",
        &bearer,
        "-d",
        r#"{"page_size": 1000}"#,
        &addr,
        "poolgate.v1.AdminService/ListAccounts",
    ]);
    assert!(out.success(), "{out}");
    let listed = out.json().unwrap();
    assert_eq!(ids(&listed["accounts"]), all_accounts);
    assert_no_secret("grpcurl ListAccounts", &out.stdout, &secrets);
    let out = grpc(&[
        "-plaintext",
        "-d",
        "{}",
        &addr,
        "poolgate.v1.AdminService/ListAccounts",
    ]);
    assert!(!out.success(), "{out}");
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("Unauthenticated"),
        "{out}"
    );
    let out = grpc(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert!(out.success() && out.stdout.contains("SERVING"), "{out}");

    // ------------------------------------------------------------------ at rest, restart
    assert_data_dir_clean(&data, &secrets);
    let status = pg.terminate().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM must shut down cleanly: {status}"
    );
    let first_logs = pg.logs();
    assert_data_dir_clean(&data, &secrets);

    let pg2 = Poolgate::standalone(&data).unwrap();
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap().trim(),
        admin_token,
        "admin.token changed"
    );
    let admin = Poolctl::new(pg2.url(), Some(&token_file)).unwrap();
    assert_eq!(
        ids(&admin.json(&["get", "accounts"]).unwrap()),
        all_accounts
    );
    assert_eq!(ids(&admin.json(&["get", "keys"]).unwrap()), key_ids);
    let tokens = admin.json(&["get", "tokens"]).unwrap();
    assert!(ids(&tokens).contains(&viewer_id), "{tokens:#}");
    assert_no_secret("`get tokens`", &tokens.to_string(), &secrets);
    assert_eq!(
        admin.json(&["get", "policy"]).unwrap()["strategy"],
        "balanced"
    );
    let viewer = admin.with_token_file(Some(&viewer_file));
    assert_eq!(viewer.json(&["whoami"]).unwrap()["role"], "viewer");
    // The stored identity still matches: the same login updates its account.
    let out = admin
        .ok(&[
            "import",
            "accounts",
            rotated.to_str().unwrap(),
            "-o",
            "json",
        ])
        .unwrap();
    let again = outcome(&out.json().unwrap(), 0, 0);
    assert_eq!(
        (again["outcome"].as_str(), again["account_id"].as_str()),
        (Some("updated"), Some(alice_id.as_str()))
    );

    let mut pg2 = pg2;
    assert_eq!(pg2.terminate().unwrap().code(), Some(0));
    assert_data_dir_clean(&data, &secrets);

    // The processes' own logs never carry a credential, not even the admin tokens.
    let mut log_secrets = secrets.clone();
    log_secrets.push(Secret {
        label: "bootstrap admin token".into(),
        value: admin_token.clone(),
    });
    for (which, logs) in [("first run", first_logs), ("second run", pg2.logs())] {
        assert!(
            logs.contains("grpc_listen="),
            "{which} log looks empty:\n{logs}"
        );
        assert_no_secret(&format!("the poolgate log ({which})"), &logs, &log_secrets);
    }
}

fn ids_of(list: &Value, field: &str) -> BTreeSet<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|a| a[field].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn poolctl_names_the_address_it_cannot_reach() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let server = format!("http://{addr}");
    let out = Poolctl::new(&server, None)
        .unwrap()
        .run(&["get", "accounts"])
        .unwrap();
    assert_eq!(out.code, Some(1), "{out}");
    assert!(
        out.stderr.contains(&format!(
            "cannot reach the poolgate control plane at {server}"
        )),
        "{out}"
    );
    assert!(out.stderr.contains("POOLGATE_SERVER"), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
}

#[test]
fn poolctl_usage_errors_exit_2_without_calling_the_server() {
    // The server address is unreachable: a usage error must be reported before any call.
    let ctl = Poolctl::new("http://127.0.0.1:9", None).unwrap();
    for args in [
        &["get", "gateways-and-more"][..],
        &["update", "account", "acc_1"],
        &["create", "account", "--provider", "gemini", "--name", "x"],
        &["set", "policy", "--cooldown-429", "5m,soon"],
        &["set", "policy", "--model-alias", "claude-*"],
        &["logs", "--limit", "0"],
    ] {
        let out = ctl.run(args).unwrap();
        assert_eq!(out.code, Some(2), "poolctl {args:?}: {out}");
        assert!(!out.stderr.contains("cannot reach"), "{out}");
    }
    let out = ctl.run(&["--help"]).unwrap();
    assert!(out.success() && out.stdout.contains("import"), "{out}");
}
