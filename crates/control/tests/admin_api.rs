//! The admin gRPC API driven through the generated tonic client over loopback, on a real
//! SQLite store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Harness, admin, auth_json, authed};
use poolgate_core::{
    Attempt, ErrorClass, ManagedBy, RequestLog, Translation, UsageSnapshot, UsageWindow,
};
use poolgate_proto::v1 as pb;
use tonic::Code;

fn openai(name: &str, key: &str) -> pb::CreateAccountRequest {
    pb::CreateAccountRequest {
        provider: "openai".into(),
        name: name.into(),
        api_key: key.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn auth_missing_wrong_viewer_and_admin() {
    let h = Harness::start().await;
    let mut c = h.client().await;

    let e = c
        .list_accounts(pb::ListAccountsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains("authorization: Bearer <token>"),
        "{}",
        e.message()
    );

    let e = c
        .list_accounts(authed("pga_wrong", pb::ListAccountsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains("unknown admin token"),
        "{}",
        e.message()
    );

    let mut basic = tonic::Request::new(pb::WhoAmIRequest {});
    basic
        .metadata_mut()
        .insert("authorization", "Basic abc".parse().unwrap());
    let e = c.who_am_i(basic).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(e.message().contains("Bearer"), "{}", e.message());

    let me = c
        .who_am_i(admin(pb::WhoAmIRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (me.name.as_str(), me.role.as_str()),
        ("bootstrap-admin", "admin")
    );

    // A viewer token: shown once, stored hashed, read-only.
    let created = c
        .create_admin_token(admin(pb::CreateAdminTokenRequest {
            name: "ro".into(),
            role: "viewer".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let viewer = created.token.clone();
    assert!(viewer.starts_with("pga_") && viewer.len() >= 47);
    let meta = created.admin_token.unwrap();
    assert!(viewer.starts_with(&meta.prefix));
    let listed = c
        .list_admin_tokens(admin(pb::ListAdminTokensRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tokens.len(), 1);
    assert!(!format!("{listed:?}").contains(&viewer));

    let me = c
        .who_am_i(authed(&viewer, pb::WhoAmIRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((me.name.as_str(), me.role.as_str()), ("ro", "viewer"));
    c.list_accounts(authed(&viewer, pb::ListAccountsRequest::default()))
        .await
        .unwrap();
    c.get_routing_policy(authed(&viewer, pb::GetRoutingPolicyRequest {}))
        .await
        .unwrap();
    c.list_keys(authed(&viewer, pb::ListKeysRequest::default()))
        .await
        .unwrap();

    let e = c
        .create_account(authed(&viewer, openai("x", "sk-x")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("CreateAccount") && e.message().contains("viewer"),
        "{}",
        e.message()
    );
    let e = c
        .create_key(authed(
            &viewer,
            pb::CreateKeyRequest {
                name: "k".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = c
        .import_accounts(authed(
            &viewer,
            pb::ImportAccountsRequest {
                documents: vec![auth_json("u", "w")],
                group: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    // Denied calls wrote nothing.
    assert!(
        h.store
            .list_accounts(
                &Default::default(),
                &poolgate_core::page::PageRequest::first(10)
            )
            .await
            .unwrap()
            .items
            .is_empty()
    );

    let bad_role = c
        .create_admin_token(admin(pb::CreateAdminTokenRequest {
            name: "x".into(),
            role: "root".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(bad_role.code(), Code::InvalidArgument);
    assert!(
        bad_role.message().contains("admin, viewer"),
        "{}",
        bad_role.message()
    );

    // A deleted token stops working.
    c.delete_admin_token(admin(pb::DeleteAdminTokenRequest {
        id: meta.id.clone(),
    }))
    .await
    .unwrap();
    let e = c
        .who_am_i(authed(&viewer, pb::WhoAmIRequest {}))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = c
        .delete_admin_token(admin(pb::DeleteAdminTokenRequest { id: meta.id }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // An admin token created through the API is the audit actor of its calls.
    let ops = c
        .create_admin_token(admin(pb::CreateAdminTokenRequest {
            name: "ops".into(),
            role: "admin".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .token;
    c.create_account(authed(&ops, openai("by-ops", "sk-ops")))
        .await
        .unwrap();
    let audit = c
        .list_audit_events(admin(pb::ListAuditEventsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(audit.events.iter().any(|e| e.actor == "ops"), "{audit:?}");
    assert!(
        audit.events.iter().any(|e| e.actor == "bootstrap-admin"),
        "{audit:?}"
    );
    assert!(!format!("{audit:?}").contains("sk-ops"));
}

#[tokio::test]
async fn account_lifecycle() {
    let h = Harness::start().await;
    let mut c = h.client().await;

    let a = c
        .create_account(admin(openai("main", "sk-live-SECRET-1")))
        .await
        .unwrap()
        .into_inner();
    assert!(a.id.starts_with("acc_"));
    assert_eq!(
        (a.provider.as_str(), a.group.as_str(), a.status.as_str()),
        ("openai", "default", "active")
    );
    assert!(a.enabled && a.has_credentials);
    assert_eq!(a.managed_by, "api");
    assert_eq!(a.effective_base_url, "https://api.openai.com/v1");
    assert!(!format!("{a:?}").contains("SECRET"));

    // Input errors name the field and change nothing.
    let e = c
        .create_account(admin(openai("nokey", "")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("api_key is required"),
        "{}",
        e.message()
    );
    let e = c
        .create_account(admin(pb::CreateAccountRequest {
            provider: "".into(),
            name: "x".into(),
            api_key: "k".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .contains("codex, openai, azure_openai, anthropic"),
        "{}",
        e.message()
    );
    let e = c
        .create_account(admin(pb::CreateAccountRequest {
            group: "bad group".into(),
            ..openai("x", "k")
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("group"), "{}", e.message());
    let e = c
        .create_account(admin(pb::CreateAccountRequest {
            provider: "codex".into(),
            name: "c".into(),
            api_key: "sk".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .create_account(admin(pb::CreateAccountRequest {
            provider: "codex".into(),
            auth_json: "{oops".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("auth_json: invalid JSON"),
        "{}",
        e.message()
    );

    // Codex from an auth.json: identity from the id_token, name from the e-mail.
    let codex = c
        .create_account(admin(pb::CreateAccountRequest {
            provider: "codex".into(),
            group: "team".into(),
            auth_json: auth_json("u1", "ws1"),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(codex.name, "u1@example.test");
    let ident = codex.identity.clone().unwrap();
    assert_eq!(
        (ident.subject.as_str(), ident.chatgpt_account_id.as_str()),
        ("u1", "ws1")
    );
    assert_eq!(
        codex.effective_base_url,
        "https://chatgpt.com/backend-api/codex"
    );
    assert!(!format!("{codex:?}").contains("SECRET"));
    let e = c
        .create_account(admin(pb::CreateAccountRequest {
            provider: "codex".into(),
            auth_json: auth_json("u1", "ws1"),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);

    // Get and list with filters.
    let got = c
        .get_account(admin(pb::GetAccountRequest { id: a.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, a);
    let e = c
        .get_account(admin(pb::GetAccountRequest {
            id: "acc_missing".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .get_account(admin(pb::GetAccountRequest { id: "".into() }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let l = c
        .list_accounts(admin(pb::ListAccountsRequest {
            provider: "codex".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.accounts.len(), 1);
    assert_eq!(l.accounts[0].id, codex.id);
    let l = c
        .list_accounts(admin(pb::ListAccountsRequest {
            group: "team".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.accounts.len(), 1);
    let l = c
        .list_accounts(admin(pb::ListAccountsRequest {
            status: "unavailable".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(l.accounts.is_empty());

    // Update: fields, status, credentials.
    let u = c
        .update_account(admin(pb::UpdateAccountRequest {
            id: a.id.clone(),
            priority: Some(7),
            base_url: Some("http://127.0.0.1:9/v1".into()),
            tags: Some(pb::StringList {
                values: vec!["fast".into()],
            }),
            status: Some("unavailable".into()),
            status_reason: Some("quota_exhausted".into()),
            api_key: Some("sk-live-SECRET-2".into()),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.priority, 7);
    assert_eq!(u.effective_base_url, "http://127.0.0.1:9/v1");
    assert_eq!(u.tags, vec!["fast".to_string()]);
    assert_eq!(
        (u.status.as_str(), u.status_reason.as_str()),
        ("unavailable", "quota_exhausted")
    );
    assert_eq!(u.name, "main");
    match h.store.get_credentials(&a.id).await.unwrap().unwrap() {
        poolgate_core::Credentials::ApiKey { key } => assert_eq!(key.expose(), "sk-live-SECRET-2"),
        other => panic!("unexpected credentials {}", other.kind()),
    }
    let u = c
        .update_account(admin(pb::UpdateAccountRequest {
            id: a.id.clone(),
            base_url: Some(String::new()),
            status: Some("active".into()),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.base_url, "");
    assert_eq!(u.status_reason, "");

    let e = c
        .update_account(admin(pb::UpdateAccountRequest {
            id: a.id.clone(),
            status: Some("sleepy".into()),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("active, unavailable"),
        "{}",
        e.message()
    );
    let e = c
        .update_account(admin(pb::UpdateAccountRequest {
            id: a.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("nothing to update"), "{}", e.message());
    // A bad field next to a good one changes nothing at all.
    let e = c
        .update_account(admin(pb::UpdateAccountRequest {
            id: a.id.clone(),
            priority: Some(1),
            proxy_url: Some("ftp://x".into()),
            api_key: Some("sk-never".into()),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("proxy_url"), "{}", e.message());
    let still = c
        .get_account(admin(pb::GetAccountRequest { id: a.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.priority, 7);
    match h.store.get_credentials(&a.id).await.unwrap().unwrap() {
        poolgate_core::Credentials::ApiKey { key } => assert_eq!(key.expose(), "sk-live-SECRET-2"),
        other => panic!("unexpected credentials {}", other.kind()),
    }
    let e = c
        .update_account(admin(pb::UpdateAccountRequest {
            id: "acc_nope".into(),
            priority: Some(1),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Codex credentials: same login only.
    c.update_account(admin(pb::UpdateAccountRequest {
        id: codex.id.clone(),
        auth_json: Some(auth_json("u1", "ws1")),
        ..Default::default()
    }))
    .await
    .unwrap();
    let e = c
        .update_account(admin(pb::UpdateAccountRequest {
            id: codex.id.clone(),
            auth_json: Some(auth_json("u2", "ws1")),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("another login"), "{}", e.message());
    assert!(!e.message().contains("SECRET"));
    let e = c
        .update_account(admin(pb::UpdateAccountRequest {
            id: codex.id.clone(),
            api_key: Some("sk".into()),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Delete.
    c.delete_account(admin(pb::DeleteAccountRequest { id: a.id.clone() }))
        .await
        .unwrap();
    let e = c
        .get_account(admin(pb::GetAccountRequest { id: a.id.clone() }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .delete_account(admin(pb::DeleteAccountRequest { id: a.id }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn pagination_tokens_and_filters() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    for i in 0..5 {
        c.create_account(admin(openai(&format!("a{i}"), "sk")))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_accounts(admin(pb::ListAccountsRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(page.accounts.len() <= 2);
        seen.extend(page.accounts.into_iter().map(|a| a.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 5);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, seen);

    for bad in ["garbage", "!!!", "e30"] {
        let e = c
            .list_accounts(admin(pb::ListAccountsRequest {
                page_token: bad.into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.message(), "invalid page token");
    }
    // A token from one listing is refused by another.
    let first = c
        .list_accounts(admin(pb::ListAccountsRequest {
            page_size: 1,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let e = c
        .list_keys(admin(pb::ListKeysRequest {
            page_size: 1,
            page_token: first.next_page_token.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .query_logs(admin(pb::QueryLogsRequest {
            filter: None,
            page_size: 1,
            page_token: first.next_page_token,
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .list_accounts(admin(pb::ListAccountsRequest {
            page_size: 5000,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("page_size"), "{}", e.message());

    let e = c
        .list_accounts(admin(pb::ListAccountsRequest {
            provider: "gemini".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message()
            .contains("codex, openai, azure_openai, anthropic"),
        "{}",
        e.message()
    );
    let e = c
        .get_usage(admin(pb::GetUsageRequest {
            status: "broken".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("active, unavailable"),
        "{}",
        e.message()
    );
    for (f, needle) in [
        (
            pb::LogFilter {
                status_class: "9xx".into(),
                ..Default::default()
            },
            "status_class",
        ),
        (
            pb::LogFilter {
                status_class: "two".into(),
                ..Default::default()
            },
            "status_class",
        ),
        (
            pb::LogFilter {
                error_class: "boom".into(),
                ..Default::default()
            },
            "rate_limited",
        ),
        (
            pb::LogFilter {
                since_ms: 10,
                until_ms: 5,
                ..Default::default()
            },
            "since",
        ),
    ] {
        let e = c
            .query_logs(admin(pb::QueryLogsRequest {
                filter: Some(f.clone()),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains(needle), "{}", e.message());
        let e = c
            .summarize_logs(admin(pb::SummarizeLogsRequest { filter: Some(f) }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
}

#[tokio::test]
async fn platform_keys() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let created = c
        .create_key(admin(pb::CreateKeyRequest {
            name: "ci".into(),
            allowed_models: vec!["gpt-5*".into()],
            reasoning_effort: "high".into(),
            account_groups: vec!["team".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let plaintext = created.key.clone();
    assert!(
        plaintext.starts_with("pgk_") && plaintext.len() >= 47,
        "{plaintext}"
    );
    let k = created.platform_key.unwrap();
    assert_eq!(k.prefix.len(), 12);
    assert!(plaintext.starts_with(&k.prefix));
    assert_eq!(
        (k.status.as_str(), k.reasoning_effort.as_str()),
        ("active", "high")
    );
    // Stored as a hash only; never shown again.
    let stored = h.store.get_key(&k.id).await.unwrap();
    assert_eq!(stored.hash, poolgate_core::key::hash_secret(&plaintext));
    let got = c
        .get_key(admin(pb::GetKeyRequest { id: k.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, k);
    let listed = c
        .list_keys(admin(pb::ListKeysRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.keys.len(), 1);
    let shown = format!("{got:?} {listed:?}");
    assert!(!shown.contains(&plaintext[12..]));
    assert!(!shown.contains(&stored.hash));
    let second = c
        .create_key(admin(pb::CreateKeyRequest {
            name: "other".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(second.key, plaintext);

    let d = c
        .disable_key(admin(pb::KeyIdRequest { id: k.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.status, "disabled");
    let e = c
        .enable_key(admin(pb::KeyIdRequest { id: k.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.status, "active");
    let u = c
        .update_key(admin(pb::UpdateKeyRequest {
            id: k.id.clone(),
            name: Some("ci-2".into()),
            reasoning_effort: Some(String::new()),
            allowed_models: Some(pb::StringList { values: vec![] }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((u.name.as_str(), u.reasoning_effort.as_str()), ("ci-2", ""));
    assert!(u.allowed_models.is_empty());

    let e = c
        .update_key(admin(pb::UpdateKeyRequest {
            id: k.id.clone(),
            reasoning_effort: Some("huge".into()),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("minimal, low, medium, high"),
        "{}",
        e.message()
    );
    let e = c
        .create_key(admin(pb::CreateKeyRequest {
            name: "".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .create_key(admin(pb::CreateKeyRequest {
            name: "old".into(),
            expires_at_ms: 1000,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("expires_at_ms"), "{}", e.message());
    let e = c
        .disable_key(admin(pb::KeyIdRequest {
            id: "key_nope".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    c.delete_key(admin(pb::KeyIdRequest { id: k.id.clone() }))
        .await
        .unwrap();
    let e = c
        .get_key(admin(pb::GetKeyRequest { id: k.id }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test]
async fn import_created_updated_failed() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let ndjson = format!(
        "{}\n{}\n",
        auth_json("u1", "team-ws"),
        auth_json("u2", "team-ws")
    );
    let array = format!(
        "[{}, {{\"tokens\": {{\"access_token\": \"SECRET-LONELY\"}}}}, {}]",
        auth_json("u3", "solo"),
        auth_json("u1", "team-ws")
    );
    let broken = format!("{}\n{{\"tokens\": oops", auth_json("u4", "solo"));
    let r = c
        .import_accounts(admin(pb::ImportAccountsRequest {
            documents: vec![ndjson, array, broken, "  ".into()],
            group: "imported".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.total, r.created, r.updated, r.failed),
        (8, 4, 0, 4),
        "{r:#?}"
    );
    let at = |d: u32, i: u32| {
        r.results
            .iter()
            .find(|x| x.document == d && x.index == i)
            .unwrap()
    };
    assert_eq!(at(0, 0).outcome, "created");
    assert_eq!(at(0, 0).name, "u1@example.test");
    assert!(at(0, 0).account_id.starts_with("acc_"));
    assert_eq!(at(1, 1).outcome, "failed");
    assert_eq!(at(1, 1).error, "tokens.id_token is missing");
    assert_eq!(
        at(1, 2).error,
        "duplicate of document 0 item 0: same subject and chatgpt_account_id"
    );
    assert_eq!(at(2, 0).outcome, "created");
    assert!(
        at(2, 1).error.starts_with("invalid JSON at line 2"),
        "{}",
        at(2, 1).error
    );
    assert_eq!(at(3, 0).error, "document is empty");
    assert!(!format!("{r:?}").contains("SECRET"));

    // Team members sharing a workspace are distinct accounts, in the requested group.
    let l = c
        .list_accounts(admin(pb::ListAccountsRequest {
            group: "imported".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.accounts.len(), 4);

    // Re-importing a login updates it (keeping its name and group).
    c.update_account(admin(pb::UpdateAccountRequest {
        id: at(0, 0).account_id.clone(),
        name: Some("renamed".into()),
        status: Some("unavailable".into()),
        status_reason: Some("auth_invalid".into()),
        ..Default::default()
    }))
    .await
    .unwrap();
    let again = c
        .import_accounts(admin(pb::ImportAccountsRequest {
            documents: vec![auth_json("u1", "team-ws"), auth_json("u9", "x")],
            group: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (again.total, again.created, again.updated, again.failed),
        (2, 1, 1, 0)
    );
    assert_eq!(again.results[0].outcome, "updated");
    assert_eq!(again.results[0].account_id, at(0, 0).account_id);
    assert_eq!(again.results[0].name, "renamed");
    let a = c
        .get_account(admin(pb::GetAccountRequest {
            id: at(0, 0).account_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (a.status.as_str(), a.group.as_str()),
        ("active", "imported")
    );
    let new = c
        .get_account(admin(pb::GetAccountRequest {
            id: again.results[1].account_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(new.group, "default");
}

#[tokio::test]
async fn import_rejects_whole_requests() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let before = h.store.current_version().await.unwrap();

    let e = c
        .import_accounts(admin(pb::ImportAccountsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("no documents"), "{}", e.message());

    let big = format!("{}{}", auth_json("u1", "w"), " ".repeat(8 * 1024 * 1024));
    let e = c
        .import_accounts(admin(pb::ImportAccountsRequest {
            documents: vec![auth_json("u0", "w"), big],
            group: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().starts_with("document 1 is"), "{}", e.message());
    assert!(e.message().contains("8 MiB"), "{}", e.message());

    let chunk = " ".repeat(7 * 1024 * 1024);
    let e = c
        .import_accounts(admin(pb::ImportAccountsRequest {
            documents: vec![chunk; 5],
            group: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("32 MiB"), "{}", e.message());

    let many = format!("{}\n", auth_json("u1", "w")).repeat(10_001);
    let e = c
        .import_accounts(admin(pb::ImportAccountsRequest {
            documents: vec![many],
            group: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("10001 items"), "{}", e.message());

    let e = c
        .import_accounts(admin(pb::ImportAccountsRequest {
            documents: vec![auth_json("u1", "w")],
            group: "no spaces".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("group"), "{}", e.message());

    // Nothing was written by any of them.
    assert_eq!(h.store.current_version().await.unwrap(), before);
}

#[tokio::test]
async fn kubernetes_managed_accounts_are_read_only() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let plain = c
        .create_account(admin(openai("plain", "sk")))
        .await
        .unwrap()
        .into_inner();
    let codex = c
        .create_account(admin(pb::CreateAccountRequest {
            provider: "codex".into(),
            auth_json: auth_json("k1", "ws"),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    for id in [&plain.id, &codex.id] {
        h.store
            .set_account_managed_by(
                id,
                ManagedBy::Kubernetes,
                Some("UpstreamAccount pool/acct-1"),
                "controller",
            )
            .await
            .unwrap();
    }
    let got = c
        .get_account(admin(pb::GetAccountRequest {
            id: plain.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (got.managed_by.as_str(), got.managed_ref.as_str()),
        ("kubernetes", "UpstreamAccount pool/acct-1")
    );

    let check = |e: tonic::Status| {
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().contains("UpstreamAccount pool/acct-1"),
            "{}",
            e.message()
        );
        assert!(
            e.message().contains("edit or delete that resource"),
            "{}",
            e.message()
        );
    };
    check(
        c.update_account(admin(pb::UpdateAccountRequest {
            id: plain.id.clone(),
            priority: Some(3),
            ..Default::default()
        }))
        .await
        .unwrap_err(),
    );
    check(
        c.update_account(admin(pb::UpdateAccountRequest {
            id: plain.id.clone(),
            api_key: Some("sk-new".into()),
            ..Default::default()
        }))
        .await
        .unwrap_err(),
    );
    check(
        c.delete_account(admin(pb::DeleteAccountRequest {
            id: plain.id.clone(),
        }))
        .await
        .unwrap_err(),
    );
    check(
        c.update_account(admin(pb::UpdateAccountRequest {
            id: codex.id.clone(),
            auth_json: Some(auth_json("k1", "ws")),
            ..Default::default()
        }))
        .await
        .unwrap_err(),
    );

    let r = c
        .import_accounts(admin(pb::ImportAccountsRequest {
            documents: vec![auth_json("k1", "ws"), auth_json("k2", "ws")],
            group: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.created, r.updated, r.failed), (1, 0, 1), "{r:#?}");
    assert!(
        r.results[0].error.contains("UpstreamAccount pool/acct-1"),
        "{}",
        r.results[0].error
    );
    let still = c
        .get_account(admin(pb::GetAccountRequest { id: plain.id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(still.priority, 0);
}

fn log(
    id: &str,
    ts: i64,
    account: &str,
    model: &str,
    status: u16,
    class: Option<ErrorClass>,
) -> RequestLog {
    RequestLog {
        id: id.into(),
        ts_ms: ts,
        key_id: Some("key_a".into()),
        account_id: Some(account.into()),
        attempts: vec![Attempt {
            account_id: account.into(),
            status,
            error_class: class,
            duration_ms: 5,
        }],
        method: "POST".into(),
        path: "/v1/responses".into(),
        model: Some(model.into()),
        protocol: "openai_responses".into(),
        status,
        error_class: class,
        input_tokens: 10,
        cached_input_tokens: 2,
        output_tokens: 5,
        reasoning_tokens: 1,
        ttfb_ms: Some(3),
        duration_ms: 9,
        node: "gw-1".into(),
        translation: Translation::None,
        upstream_model: None,
    }
}

#[tokio::test]
async fn logs_usage_and_policy() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    let now = poolgate_store::now_ms();
    h.store
        .insert_request_logs(&[
            log("r1", now - 3000, "acc_a", "gpt-5", 200, None),
            log(
                "r2",
                now - 2000,
                "acc_a",
                "gpt-5",
                429,
                Some(ErrorClass::RateLimited),
            ),
            RequestLog {
                protocol: "anthropic_messages".into(),
                translation: Translation::MessagesToResponses,
                upstream_model: Some("gpt-5-mini".into()),
                ..log(
                    "r3",
                    now - 1000,
                    "acc_b",
                    "claude-haiku-4-5",
                    502,
                    Some(ErrorClass::Upstream5xx),
                )
            },
        ])
        .await
        .unwrap();
    let all = c
        .query_logs(admin(pb::QueryLogsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        all.logs.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
        ["r3", "r2", "r1"]
    );
    assert_eq!(all.logs[1].attempts[0].error_class, "rate_limited");
    let translated = &all.logs[0];
    assert_eq!(
        (
            translated.model.as_str(),
            translated.translation.as_str(),
            translated.upstream_model.as_str()
        ),
        ("claude-haiku-4-5", "messages_to_responses", "gpt-5-mini")
    );
    assert_eq!(
        (
            all.logs[1].translation.as_str(),
            all.logs[1].upstream_model.as_str()
        ),
        ("none", "")
    );
    let f = pb::LogFilter {
        status_class: "4xx".into(),
        ..Default::default()
    };
    let some = c
        .query_logs(admin(pb::QueryLogsRequest {
            filter: Some(f),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(some.logs.len(), 1);
    assert_eq!(some.logs[0].id, "r2");
    let f = pb::LogFilter {
        account_id: "acc_a".into(),
        since_ms: now - 2500,
        ..Default::default()
    };
    let some = c
        .query_logs(admin(pb::QueryLogsRequest {
            filter: Some(f),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(some.logs.len(), 1);
    let paged = c
        .query_logs(admin(pb::QueryLogsRequest {
            filter: None,
            page_size: 2,
            page_token: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(paged.logs.len(), 2);
    let rest = c
        .query_logs(admin(pb::QueryLogsRequest {
            filter: None,
            page_size: 2,
            page_token: paged.next_page_token,
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.logs.len(), 1);
    assert_eq!(rest.logs[0].id, "r1");

    let s = c
        .summarize_logs(admin(pb::SummarizeLogsRequest { filter: None }))
        .await
        .unwrap()
        .into_inner();
    let total = s.total.unwrap();
    assert_eq!(
        (total.requests, total.errors, total.input_tokens),
        (3, 2, 30)
    );
    assert_eq!(s.by_model.len(), 2);
    assert_eq!(
        s.by_account
            .iter()
            .find(|r| r.key == "acc_a")
            .unwrap()
            .requests,
        2
    );

    // Usage: availability and windows picked by length.
    let a = c
        .create_account(admin(openai("u", "sk")))
        .await
        .unwrap()
        .into_inner();
    let b = c
        .create_account(admin(openai("v", "sk")))
        .await
        .unwrap()
        .into_inner();
    let snap = UsageSnapshot {
        primary: Some(UsageWindow {
            used_percent: 100.0,
            window_minutes: 300,
            resets_at_ms: Some(now + 60_000),
        }),
        secondary: Some(UsageWindow {
            used_percent: 40.0,
            window_minutes: 10_080,
            resets_at_ms: None,
        }),
        extra: vec![],
        captured_at_ms: now,
    };
    h.store.set_usage(&a.id, &snap).await.unwrap();
    let u = c
        .get_usage(admin(pb::GetUsageRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(u.accounts.len(), 2);
    let ua = u.accounts.iter().find(|x| x.account_id == a.id).unwrap();
    assert_eq!(ua.availability, "unavailable");
    assert_eq!(ua.five_hour.unwrap().resets_at_ms, now + 60_000);
    assert_eq!(ua.weekly.unwrap().used_percent, 40.0);
    assert_eq!(ua.captured_at_ms, now);
    let ub = u.accounts.iter().find(|x| x.account_id == b.id).unwrap();
    assert_eq!(
        (ub.availability.as_str(), ub.captured_at_ms),
        ("unknown", 0)
    );
    assert!(ub.primary.is_none());

    // Routing policy: get, change, set; bad values rejected and nothing changed.
    let mut p = c
        .get_routing_policy(admin(pb::GetRoutingPolicyRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.strategy, "ordered");
    assert!(p.model_aliases.is_empty());
    p.strategy = "balanced".into();
    p.p2c_window = 4;
    p.model_aliases = vec![
        pb::ModelAlias {
            from: "claude-*haiku*".into(),
            to: "gpt-5-mini".into(),
        },
        pb::ModelAlias {
            from: "claude-*".into(),
            to: "gpt-5".into(),
        },
    ];
    let set = c
        .set_routing_policy(admin(pb::SetRoutingPolicyRequest {
            policy: Some(p.clone()),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set, p);
    let mut bad = p.clone();
    bad.cooldown_429_secs = vec![300, 10];
    let e = c
        .set_routing_policy(admin(pb::SetRoutingPolicyRequest { policy: Some(bad) }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("cooldown_429_secs"), "{}", e.message());
    let mut bad = p.clone();
    bad.strategy = "".into();
    let e = c
        .set_routing_policy(admin(pb::SetRoutingPolicyRequest { policy: Some(bad) }))
        .await
        .unwrap_err();
    assert!(e.message().contains("ordered, balanced"), "{}", e.message());
    let mut bad = p.clone();
    bad.model_aliases[1].to = "gpt 5".into();
    let e = c
        .set_routing_policy(admin(pb::SetRoutingPolicyRequest { policy: Some(bad) }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("model_aliases") && e.message().contains("[1].to"),
        "{}",
        e.message()
    );
    let e = c
        .set_routing_policy(admin(pb::SetRoutingPolicyRequest { policy: None }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let now_p = c
        .get_routing_policy(admin(pb::GetRoutingPolicyRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now_p, p);
}

#[tokio::test]
async fn kubernetes_managed_keys_are_read_only() {
    use poolgate_core::key::{PLATFORM_KEY_PREFIX, format_secret, hash_secret, visible_prefix};
    let h = Harness::start().await;
    let mut c = h.client().await;
    // As the controller stores a PlatformKey resource's key.
    let plaintext = format_secret(PLATFORM_KEY_PREFIX, &[9u8; 32]);
    let key = h
        .store
        .create_key(
            poolgate_core::PlatformKey {
                id: String::new(),
                spec: poolgate_core::KeySpec {
                    name: "ci".into(),
                    ..Default::default()
                },
                prefix: visible_prefix(&plaintext),
                hash: hash_secret(&plaintext),
                status: poolgate_core::KeyStatus::Active,
                managed_by: ManagedBy::Kubernetes,
                managed_ref: Some("PlatformKey pool/ci".into()),
                created_at_ms: 0,
                updated_at_ms: 0,
            },
            "kubernetes-controller",
        )
        .await
        .unwrap();
    let before = h.store.current_version().await.unwrap();

    let check = |e: tonic::Status| {
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(
            e.message().contains("PlatformKey pool/ci"),
            "{}",
            e.message()
        );
    };
    check(
        c.update_key(admin(pb::UpdateKeyRequest {
            id: key.id.clone(),
            name: Some("renamed".into()),
            ..Default::default()
        }))
        .await
        .unwrap_err(),
    );
    check(
        c.disable_key(admin(pb::KeyIdRequest { id: key.id.clone() }))
            .await
            .unwrap_err(),
    );
    check(
        c.delete_key(admin(pb::KeyIdRequest { id: key.id.clone() }))
            .await
            .unwrap_err(),
    );
    assert_eq!(h.store.current_version().await.unwrap(), before);
    assert_eq!(h.store.get_key(&key.id).await.unwrap(), key);
}
