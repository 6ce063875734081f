//! The store contract: every test runs against SQLite and against a real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use common::logs::{self, START_MS};
use common::*;
use poolgate_core::page::{Cursor, PageRequest};
use poolgate_core::report::{Observation, ObservationKind};
use poolgate_core::snapshot::AccountState;
use poolgate_core::{
    AccountPatch, AccountStatus, AdminRole, AdminToken, Credentials, ErrorClass, KeyPatch,
    KeyStatus, LogFilter, ModelAlias, OAuthTokens, Provider, ReasoningEffort, RequestLog,
    RoutingPolicy, Secret, StatusClass, StatusReason, Strategy, SummaryRow, Translation,
    UsageSnapshot, UsageWindow,
};
use poolgate_store::{
    AccountFilter, GatewayEvent, GatewayRecord, GatewaySeen, ImportOutcome, ObservationOutcome,
    Page, ResourceKind, Store, StoreError, listing, now_ms,
};

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::Fixture::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::Fixture::postgres().await).await;
                }
            )*
        }
    };
}

contract!(
    account_crud,
    account_filters,
    account_pagination_and_bad_tokens,
    invalid_input_changes_nothing,
    provider_credential_rules,
    delete_cascades_credentials_and_usage,
    not_found_errors,
    codex_identity_collision_and_team_members,
    codex_import_creates_then_updates,
    credentials_round_trip_encrypted_at_rest,
    usage_round_trip,
    keys_crud,
    admin_tokens,
    request_logs_filters_pagination_summary_prune,
    policy_default_set_invalid,
    policy_seed_only_when_none_saved,
    rows_written_before_aliases_and_translation_still_read,
    audit_events_per_mutation_without_secrets,
    change_log_versions,
    reopen_keeps_data_and_migrations_are_idempotent,
    managed_by_handover,
    kubernetes_managed_create_and_find,
    text_a_database_cannot_hold,
    cooldowns_fold_to_the_latest,
    quota_exhaustion_marks_its_window,
    auth_failures_and_deactivation,
    usage_observations_are_coalesced,
    snapshot_loads,
    change_log_pruning,
    gateways_seen_and_listed,
    local_change_feed,
);

fn not_found(e: StoreError) -> (&'static str, String) {
    match e {
        StoreError::NotFound { kind, id } => (kind, id),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

fn is_invalid(r: Result<impl std::fmt::Debug, StoreError>) -> poolgate_core::Error {
    match r {
        Err(StoreError::Invalid(e)) => e,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

async fn all_audit(store: &dyn Store) -> Vec<poolgate_core::AuditEvent> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = store
            .list_audit(&PageRequest::parse(listing::AUDIT, 1000, &token).unwrap())
            .await
            .unwrap();
        out.extend(page.items);
        match page.next {
            Some(t) => token = t,
            None => return out,
        }
    }
}

async fn account_crud(f: &Fixture) {
    let s = &*f.store;
    assert!(s.backend() == "sqlite" || s.backend() == "postgres");
    let mut spec = openai("primary");
    spec.tags = vec!["eu".into(), "fast".into()];
    spec.priority = 5;
    spec.note = "main key".into();
    spec.max_inflight = 8;
    spec.proxy_url = Some("socks5://proxy.internal:1080".into());
    spec.model_filter = vec!["gpt-5*".into()];
    spec.base_url = Some("https://llm-proxy.internal/v1".into());
    let a = s
        .create_account(spec.clone(), Some(api_key("sk-one")), None, "alice")
        .await
        .unwrap();
    assert!(a.id.starts_with("acc_"));
    assert_eq!(a.spec, spec);
    assert_eq!(a.status, AccountStatus::Active);
    assert_eq!(a.status_reason, None);
    assert_eq!(a.managed_by, poolgate_core::ManagedBy::Api);
    assert!(a.has_credentials);
    assert_eq!(a.created_at_ms, a.updated_at_ms);
    assert_eq!(s.get_account(&a.id).await.unwrap(), a);

    let az = s
        .create_account(azure("west"), Some(api_key("az-key")), None, "alice")
        .await
        .unwrap();
    assert_eq!(
        s.get_account(&az.id).await.unwrap().spec.azure,
        azure("west").azure
    );

    let patch = AccountPatch {
        name: Some("renamed".into()),
        priority: Some(-3),
        enabled: Some(false),
        proxy_url: Some(None),
        tags: Some(vec![]),
        status: Some((
            AccountStatus::Unavailable,
            Some(StatusReason::QuotaExhausted),
        )),
        ..Default::default()
    };
    let u = s.update_account(&a.id, &patch, "bob").await.unwrap();
    assert_eq!(u.spec.name, "renamed");
    assert_eq!(u.spec.priority, -3);
    assert!(!u.spec.enabled);
    assert_eq!(u.spec.proxy_url, None);
    assert!(u.spec.tags.is_empty());
    assert_eq!(u.spec.model_filter, spec.model_filter);
    assert_eq!(u.status, AccountStatus::Unavailable);
    assert_eq!(u.status_reason, Some(StatusReason::QuotaExhausted));
    assert!(u.updated_at_ms >= a.updated_at_ms);
    assert_eq!(s.get_account(&a.id).await.unwrap(), u);

    // An empty patch is a no-op, not an error.
    let v = s.current_version().await.unwrap();
    assert_eq!(
        s.update_account(&a.id, &AccountPatch::default(), "bob")
            .await
            .unwrap(),
        u
    );
    assert_eq!(s.current_version().await.unwrap(), v);

    let page = s
        .list_accounts(&AccountFilter::default(), &PageRequest::first(0))
        .await
        .unwrap();
    let mut ids = vec![a.id.clone(), az.id.clone()];
    ids.sort();
    assert_eq!(
        page.items.iter().map(|x| x.id.clone()).collect::<Vec<_>>(),
        ids
    );
    assert_eq!(page.next, None);

    s.delete_account(&a.id, "bob").await.unwrap();
    assert_eq!(
        not_found(s.get_account(&a.id).await.unwrap_err()),
        ("account", a.id.clone())
    );
    let page = s
        .list_accounts(&AccountFilter::default(), &PageRequest::first(0))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
}

async fn account_filters(f: &Fixture) {
    let s = &*f.store;
    let mut made = Vec::new();
    for (i, (group, provider)) in [
        ("alpha", Provider::OpenAi),
        ("alpha", Provider::Anthropic),
        ("beta", Provider::OpenAi),
        ("beta", Provider::Anthropic),
        ("beta", Provider::OpenAi),
    ]
    .into_iter()
    .enumerate()
    {
        let mut spec = poolgate_core::AccountSpec::new(provider, format!("a{i}"));
        spec.group = group.into();
        made.push(
            s.create_account(spec, Some(api_key(&format!("k{i}"))), None, "t")
                .await
                .unwrap(),
        );
    }
    let codex = s
        .create_account(
            {
                let mut sp = poolgate_core::AccountSpec::new(Provider::Codex, "cx");
                sp.group = "beta".into();
                sp
            },
            Some(Credentials::OAuth(codex_login("u9", "ws9", 0).tokens)),
            Some(codex_login("u9", "ws9", 0).identity),
            "t",
        )
        .await
        .unwrap();
    let down = AccountPatch {
        status: Some((AccountStatus::Unavailable, Some(StatusReason::AuthInvalid))),
        ..Default::default()
    };
    s.update_account(&made[4].id, &down, "t").await.unwrap();
    s.update_account(&made[1].id, &down, "t").await.unwrap();

    let list = |filter: AccountFilter| async move {
        let p = s
            .list_accounts(&filter, &PageRequest::first(100))
            .await
            .unwrap();
        p.items.into_iter().map(|a| a.spec.name).collect::<Vec<_>>()
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let names = |ns: &[&str]| ns.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(
        sorted(
            list(AccountFilter {
                group: Some("alpha".into()),
                ..Default::default()
            })
            .await
        ),
        names(&["a0", "a1"])
    );
    assert_eq!(
        sorted(
            list(AccountFilter {
                provider: Some(Provider::OpenAi),
                ..Default::default()
            })
            .await
        ),
        names(&["a0", "a2", "a4"])
    );
    assert_eq!(
        sorted(
            list(AccountFilter {
                provider: Some(Provider::Codex),
                ..Default::default()
            })
            .await
        ),
        names(&["cx"])
    );
    assert_eq!(
        sorted(
            list(AccountFilter {
                status: Some(AccountStatus::Unavailable),
                ..Default::default()
            })
            .await
        ),
        names(&["a1", "a4"])
    );
    assert_eq!(
        sorted(
            list(AccountFilter {
                group: Some("beta".into()),
                provider: Some(Provider::OpenAi),
                status: Some(AccountStatus::Active)
            })
            .await
        ),
        names(&["a2"])
    );
    assert!(
        list(AccountFilter {
            group: Some("nobody".into()),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    let all = s
        .list_accounts(&AccountFilter::default(), &PageRequest::first(100))
        .await
        .unwrap();
    assert_eq!(all.items.len(), 6);
    assert!(
        all.items
            .iter()
            .any(|a| a.id == codex.id && a.identity.is_some())
    );
}

async fn account_pagination_and_bad_tokens(f: &Fixture) {
    let s = &*f.store;
    let mut ids = Vec::new();
    for i in 0..23 {
        ids.push(
            s.create_account(openai(&format!("n{i}")), Some(api_key("k")), None, "t")
                .await
                .unwrap()
                .id,
        );
    }
    ids.sort();
    let filter = AccountFilter::default();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let req = PageRequest::parse(listing::ACCOUNTS, 10, &token).unwrap();
        let page: Page<_> = s.list_accounts(&filter, &req).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= 10);
        seen.extend(page.items.into_iter().map(|a| a.id));
        match page.next {
            Some(t) => token = t,
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, ids);

    // Exactly one page: no next token.
    let p = s
        .list_accounts(&filter, &PageRequest::first(23))
        .await
        .unwrap();
    assert_eq!(p.items.len(), 23);
    assert_eq!(p.next, None);

    // A token from page one, used on another listing or mangled, is refused.
    let first = s
        .list_accounts(&filter, &PageRequest::first(5))
        .await
        .unwrap();
    let tok = first.next.unwrap();
    assert_eq!(
        PageRequest::parse(listing::KEYS, 5, &tok),
        Err(poolgate_core::Error::PageToken)
    );
    assert_eq!(
        PageRequest::parse(listing::ACCOUNTS, 5, "garbage!"),
        Err(poolgate_core::Error::PageToken)
    );
    assert!(matches!(
        s.list_accounts(
            &filter,
            &PageRequest {
                size: 5,
                after: Some(Cursor::TimeId(1, "x".into()))
            }
        )
        .await,
        Err(StoreError::Invalid(poolgate_core::Error::PageToken))
    ));
    assert!(matches!(
        s.list_keys(&PageRequest {
            size: 5,
            after: Some(Cursor::TimeId(1, "x".into()))
        })
        .await,
        Err(StoreError::Invalid(poolgate_core::Error::PageToken))
    ));
    assert!(matches!(
        s.query_request_logs(
            &LogFilter::default(),
            &PageRequest {
                size: 5,
                after: Some(Cursor::Id("x".into()))
            }
        )
        .await,
        Err(StoreError::Invalid(poolgate_core::Error::PageToken))
    ));
    assert!(matches!(
        s.list_audit(&PageRequest {
            size: 5,
            after: Some(Cursor::TimeId(1, "not-a-number".into()))
        })
        .await,
        Err(StoreError::Invalid(poolgate_core::Error::PageToken))
    ));
    let e = is_invalid(s.list_accounts(&filter, &PageRequest::first(5000)).await);
    assert!(matches!(
        e,
        poolgate_core::Error::Invalid {
            field: "page_size",
            ..
        }
    ));
}

async fn invalid_input_changes_nothing(f: &Fixture) {
    let s = &*f.store;
    let a = s
        .create_account(openai("keep"), Some(api_key("sk-keep")), None, "t")
        .await
        .unwrap();
    let version = s.current_version().await.unwrap();
    let audits = f.count("audit_events").await;

    let bad = [
        AccountPatch {
            group: Some("bad group".into()),
            priority: Some(1),
            ..Default::default()
        },
        AccountPatch {
            name: Some(String::new()),
            ..Default::default()
        },
        AccountPatch {
            base_url: Some(Some("ftp://x".into())),
            ..Default::default()
        },
        AccountPatch {
            status: Some((AccountStatus::Active, Some(StatusReason::AuthInvalid))),
            ..Default::default()
        },
        AccountPatch {
            azure: Some(Some(poolgate_core::AzureConfig {
                deployment: "d".into(),
                api_version: "v".into(),
            })),
            ..Default::default()
        },
    ];
    for p in &bad {
        is_invalid(s.update_account(&a.id, p, "t").await);
    }
    assert_eq!(s.get_account(&a.id).await.unwrap(), a);

    let mut spec = openai("x");
    spec.tags = vec!["no spaces".into()];
    is_invalid(s.create_account(spec, Some(api_key("k")), None, "t").await);
    is_invalid(
        s.create_account(openai("  "), Some(api_key("k")), None, "t")
            .await,
    );
    is_invalid(
        s.create_account(openai("x"), Some(api_key("   ")), None, "t")
            .await,
    );
    let mut az = azure("az");
    az.azure = None;
    is_invalid(s.create_account(az, Some(api_key("k")), None, "t").await);

    is_invalid(
        s.set_credentials(
            &a.id,
            &Credentials::OAuth(codex_login("u", "w", 0).tokens),
            "t",
        )
        .await,
    );
    assert_eq!(
        s.get_credentials(&a.id).await.unwrap(),
        Some(api_key("sk-keep"))
    );

    let (mut key, _) = new_key("k", 1);
    key.hash = "not-a-hash".into();
    is_invalid(s.create_key(key, "t").await);
    let bad_policy = RoutingPolicy {
        p2c_window: 0,
        ..Default::default()
    };
    is_invalid(s.set_policy(&bad_policy, "t").await);
    is_invalid(
        s.summarize_request_logs(&LogFilter {
            since_ms: Some(10),
            until_ms: Some(5),
            ..Default::default()
        })
        .await,
    );

    assert_eq!(s.current_version().await.unwrap(), version);
    assert_eq!(f.count("audit_events").await, audits);
    assert_eq!(f.count("accounts").await, 1);
    assert_eq!(f.count("platform_keys").await, 0);
    assert_eq!(f.count("routing_policy").await, 0);
}

async fn provider_credential_rules(f: &Fixture) {
    let s = &*f.store;
    let login = codex_login("u1", "ws1", 0);
    let oauth = Credentials::OAuth(login.tokens.clone());
    let codex = || poolgate_core::AccountSpec::new(Provider::Codex, "cx");
    // API-key providers need an API key, and no identity.
    is_invalid(s.create_account(openai("o"), None, None, "t").await);
    is_invalid(
        s.create_account(openai("o"), Some(oauth.clone()), None, "t")
            .await,
    );
    is_invalid(
        s.create_account(
            openai("o"),
            Some(api_key("k")),
            Some(login.identity.clone()),
            "t",
        )
        .await,
    );
    // Codex needs OAuth tokens and the login identity.
    is_invalid(
        s.create_account(
            codex(),
            Some(api_key("k")),
            Some(login.identity.clone()),
            "t",
        )
        .await,
    );
    is_invalid(
        s.create_account(codex(), None, Some(login.identity.clone()), "t")
            .await,
    );
    is_invalid(
        s.create_account(codex(), Some(oauth.clone()), None, "t")
            .await,
    );
    let mut empty_access = login.tokens.clone();
    empty_access.access_token = Secret::new("");
    is_invalid(
        s.create_account(
            codex(),
            Some(Credentials::OAuth(empty_access)),
            Some(login.identity.clone()),
            "t",
        )
        .await,
    );
    let mut no_subject = login.identity.clone();
    no_subject.subject = " ".into();
    is_invalid(
        s.create_account(codex(), Some(oauth.clone()), Some(no_subject), "t")
            .await,
    );
    assert_eq!(f.count("accounts").await, 0);

    let a = s
        .create_account(
            codex(),
            Some(oauth.clone()),
            Some(login.identity.clone()),
            "t",
        )
        .await
        .unwrap();
    assert_eq!(a.identity.as_ref(), Some(&login.identity));
    assert_eq!(s.get_credentials(&a.id).await.unwrap(), Some(oauth));
    // Codex credentials stay OAuth.
    is_invalid(s.set_credentials(&a.id, &api_key("sk"), "t").await);
}

async fn delete_cascades_credentials_and_usage(f: &Fixture) {
    let s = &*f.store;
    let a = s
        .create_account(openai("gone"), Some(api_key("sk-gone")), None, "t")
        .await
        .unwrap();
    let b = s
        .create_account(openai("stays"), Some(api_key("sk-stays")), None, "t")
        .await
        .unwrap();
    for id in [&a.id, &b.id] {
        s.set_usage(id, &usage(10.0)).await.unwrap();
    }
    assert_eq!(f.count("credentials").await, 2);
    assert_eq!(f.count("usage").await, 2);
    s.delete_account(&a.id, "t").await.unwrap();
    assert_eq!(f.count("credentials").await, 1);
    assert_eq!(f.count("usage").await, 1);
    assert_eq!(
        not_found(s.get_credentials(&a.id).await.unwrap_err()).0,
        "account"
    );
    let u = s.get_usage(&[a.id.clone(), b.id.clone()]).await.unwrap();
    assert_eq!(
        u.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
        vec![b.id.clone()]
    );
    assert_eq!(
        s.get_credentials(&b.id).await.unwrap(),
        Some(api_key("sk-stays"))
    );
}

async fn not_found_errors(f: &Fixture) {
    let s = &*f.store;
    let id = "acc_missing";
    let acc = ("account", id.to_string());
    assert_eq!(not_found(s.get_account(id).await.unwrap_err()), acc);
    assert_eq!(
        not_found(
            s.update_account(
                id,
                &AccountPatch {
                    priority: Some(1),
                    ..Default::default()
                },
                "t"
            )
            .await
            .unwrap_err()
        ),
        acc
    );
    assert_eq!(not_found(s.delete_account(id, "t").await.unwrap_err()), acc);
    assert_eq!(
        not_found(s.set_credentials(id, &api_key("k"), "t").await.unwrap_err()),
        acc
    );
    assert_eq!(not_found(s.get_credentials(id).await.unwrap_err()), acc);
    assert_eq!(
        not_found(s.set_usage(id, &usage(1.0)).await.unwrap_err()),
        acc
    );
    let key = ("key", "key_missing".to_string());
    assert_eq!(not_found(s.get_key("key_missing").await.unwrap_err()), key);
    assert_eq!(
        not_found(
            s.update_key(
                "key_missing",
                &KeyPatch {
                    name: Some("n".into()),
                    ..Default::default()
                },
                "t"
            )
            .await
            .unwrap_err()
        ),
        key
    );
    assert_eq!(
        not_found(s.delete_key("key_missing", "t").await.unwrap_err()),
        key
    );
    assert_eq!(
        not_found(s.delete_admin_token("adm_missing", "t").await.unwrap_err()),
        ("admin token", "adm_missing".to_string())
    );
    let msg = s.get_account(id).await.unwrap_err().to_string();
    assert!(msg.contains("account") && msg.contains(id), "{msg}");
    assert_eq!(s.current_version().await.unwrap(), 0);
    assert_eq!(f.count("audit_events").await, 0);
}

async fn codex_identity_collision_and_team_members(f: &Fixture) {
    let s = &*f.store;
    let codex = |n: &str| poolgate_core::AccountSpec::new(Provider::Codex, n);
    let alice = codex_login("alice", "team-ws", 0);
    let bob = codex_login("bob", "team-ws", 0);
    let a = s
        .create_account(
            codex("alice"),
            Some(Credentials::OAuth(alice.tokens.clone())),
            Some(alice.identity.clone()),
            "t",
        )
        .await
        .unwrap();
    // Same workspace, another member: a separate account.
    let b = s
        .create_account(
            codex("bob"),
            Some(Credentials::OAuth(bob.tokens.clone())),
            Some(bob.identity.clone()),
            "t",
        )
        .await
        .unwrap();
    assert_ne!(a.id, b.id);
    // Same login again: refused, naming the account that has it.
    let again = codex_login("alice", "team-ws", 1);
    match s
        .create_account(
            codex("dup"),
            Some(Credentials::OAuth(again.tokens)),
            Some(again.identity),
            "t",
        )
        .await
    {
        Err(e @ StoreError::AlreadyExists { .. }) => assert!(e.to_string().contains(&a.id), "{e}"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    // The same subject in another workspace is another account too.
    let other_ws = codex_login("alice", "personal-ws", 0);
    s.create_account(
        codex("alice personal"),
        Some(Credentials::OAuth(other_ws.tokens)),
        Some(other_ws.identity),
        "t",
    )
    .await
    .unwrap();
    assert_eq!(f.count("accounts").await, 3);
    assert_eq!(
        s.get_credentials(&a.id).await.unwrap(),
        Some(Credentials::OAuth(alice.tokens))
    );
    assert_eq!(
        s.get_credentials(&b.id).await.unwrap(),
        Some(Credentials::OAuth(bob.tokens))
    );
}

async fn codex_import_creates_then_updates(f: &Fixture) {
    let s = &*f.store;
    let out = s
        .import_codex(
            vec![codex_login("alice", "ws", 0), codex_login("bob", "ws", 0)],
            "team",
            "importer",
        )
        .await
        .unwrap();
    let created: Vec<_> = out
        .into_iter()
        .map(|o| match o {
            ImportOutcome::Created(a) => a,
            other => panic!("expected Created, got {other:?}"),
        })
        .collect();
    assert_eq!(created.len(), 2);
    assert_ne!(created[0].id, created[1].id);
    let alice = &created[0];
    assert_eq!(alice.spec.name, "alice@example.test");
    assert_eq!(alice.spec.group, "team");
    assert_eq!(alice.spec.provider, Provider::Codex);
    assert!(alice.has_credentials);

    // Someone renames and reprioritises it; later the login breaks.
    s.update_account(
        &alice.id,
        &AccountPatch {
            name: Some("Alice".into()),
            priority: Some(7),
            group: Some("vip".into()),
            ..Default::default()
        },
        "t",
    )
    .await
    .unwrap();
    s.update_account(
        &alice.id,
        &AccountPatch {
            status: Some((AccountStatus::Unavailable, Some(StatusReason::AuthInvalid))),
            ..Default::default()
        },
        "t",
    )
    .await
    .unwrap();

    // Re-import with fresh tokens: updated in place, active again, name/group/priority kept.
    let fresh = codex_login("alice", "ws", 1);
    let bad = {
        let mut b = codex_login("carol", "ws", 0);
        b.tokens.access_token = Secret::new("");
        b
    };
    let long = {
        let mut l = codex_login("dave", "ws", 0);
        l.label = "d".repeat(300);
        l
    };
    let out = s
        .import_codex(vec![fresh.clone(), bad, long], "team", "importer")
        .await
        .unwrap();
    assert_eq!(out.len(), 3);
    let updated = match &out[0] {
        ImportOutcome::Updated(a) => a.clone(),
        other => panic!("expected Updated, got {other:?}"),
    };
    assert_eq!(updated.id, alice.id);
    assert_eq!(updated.spec.name, "Alice");
    assert_eq!(updated.spec.group, "vip");
    assert_eq!(updated.spec.priority, 7);
    assert_eq!(updated.status, AccountStatus::Active);
    assert_eq!(updated.status_reason, None);
    assert_eq!(
        updated.identity.as_ref().unwrap().plan_type.as_deref(),
        Some("team-g1")
    );
    assert_eq!(s.get_account(&alice.id).await.unwrap(), updated);
    assert_eq!(
        s.get_credentials(&alice.id).await.unwrap(),
        Some(Credentials::OAuth(fresh.tokens))
    );
    match &out[1] {
        ImportOutcome::Failed(msg) => {
            assert!(msg.contains("access token"), "{msg}");
            assert!(!msg.contains("SECRET"), "{msg}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    // An over-long label is cut to fit the name limit rather than failing the item.
    match &out[2] {
        ImportOutcome::Created(a) => assert_eq!(a.spec.name.chars().count(), 128),
        other => panic!("expected Created, got {other:?}"),
    }
    // Bob is untouched.
    assert_eq!(s.get_account(&created[1].id).await.unwrap(), created[1]);
    assert_eq!(f.count("accounts").await, 3);

    // A bad group fails every item and writes nothing.
    let before = f.count("audit_events").await;
    let out = s
        .import_codex(vec![codex_login("erin", "ws", 0)], "bad group", "importer")
        .await
        .unwrap();
    assert!(matches!(&out[0], ImportOutcome::Failed(m) if m.contains("group")));
    assert_eq!(f.count("accounts").await, 3);
    assert_eq!(f.count("audit_events").await, before);
}

async fn credentials_round_trip_encrypted_at_rest(f: &Fixture) {
    let s = &*f.store;
    let key = api_key("sk-live-TOPSECRET-0123456789");
    let a = s
        .create_account(openai("o"), Some(key.clone()), None, "t")
        .await
        .unwrap();
    let login = codex_login("zed", "ws-z", 0);
    let oauth = Credentials::OAuth(login.tokens.clone());
    let c = s
        .create_account(
            poolgate_core::AccountSpec::new(Provider::Codex, "c"),
            Some(oauth.clone()),
            Some(login.identity.clone()),
            "t",
        )
        .await
        .unwrap();
    assert_eq!(s.get_credentials(&a.id).await.unwrap(), Some(key.clone()));
    assert_eq!(s.get_credentials(&c.id).await.unwrap(), Some(oauth.clone()));

    let rotated = Credentials::OAuth(OAuthTokens {
        access_token: Secret::new("access-ROTATED-SECRET"),
        refresh_token: Secret::new("refresh-ROTATED-SECRET"),
        last_refresh_ms: Some(START_MS),
        ..login.tokens.clone()
    });
    s.set_credentials(&c.id, &rotated, "refresher")
        .await
        .unwrap();
    assert_eq!(
        s.get_credentials(&c.id).await.unwrap(),
        Some(rotated.clone())
    );
    assert!(s.get_account(&c.id).await.unwrap().has_credentials);

    let raw = f.raw_bytes().await;
    let mut secrets = secrets_of(&key);
    secrets.extend(secrets_of(&oauth));
    secrets.extend(secrets_of(&rotated));
    for secret in &secrets {
        assert!(
            !contains(&raw, secret),
            "a credential is stored in plaintext"
        );
    }
    // The identity is plain data (it is what the unique index is on).
    assert!(contains(&raw, "ws-z"));

    // Another key cannot read them; the row ids are bound in as associated data.
    let other = f.reopen(poolgate_store::Cipher::new(&[9u8; 32])).await;
    assert!(matches!(
        other.get_credentials(&a.id).await,
        Err(StoreError::Crypto(_))
    ));
    let same = f.reopen(poolgate_store::Cipher::new(&KEY)).await;
    assert_eq!(same.get_credentials(&a.id).await.unwrap(), Some(key));
}

fn usage(pct: f64) -> UsageSnapshot {
    UsageSnapshot {
        primary: Some(UsageWindow {
            used_percent: pct,
            window_minutes: 300,
            resets_at_ms: Some(START_MS + 1000),
        }),
        secondary: Some(UsageWindow {
            used_percent: pct / 2.0,
            window_minutes: 10080,
            resets_at_ms: None,
        }),
        extra: vec![],
        captured_at_ms: START_MS,
    }
}

async fn usage_round_trip(f: &Fixture) {
    let s = &*f.store;
    let a = s
        .create_account(openai("a"), Some(api_key("k")), None, "t")
        .await
        .unwrap();
    let b = s
        .create_account(openai("b"), Some(api_key("k")), None, "t")
        .await
        .unwrap();
    assert!(
        s.get_usage(std::slice::from_ref(&a.id))
            .await
            .unwrap()
            .is_empty()
    );
    s.set_usage(&a.id, &usage(10.0)).await.unwrap();
    s.set_usage(&a.id, &usage(42.5)).await.unwrap();
    let got = s
        .get_usage(&[a.id.clone(), b.id.clone(), "acc_nope".into()])
        .await
        .unwrap();
    assert_eq!(got, vec![(a.id.clone(), usage(42.5))]);
    assert!(s.get_usage(&[]).await.unwrap().is_empty());
    // Many ids at once (more than one statement's worth).
    let many: Vec<String> = (0..1200)
        .map(|i| format!("acc_{i}"))
        .chain([a.id.clone()])
        .collect();
    assert_eq!(s.get_usage(&many).await.unwrap().len(), 1);
}

async fn keys_crud(f: &Fixture) {
    let s = &*f.store;
    let (mut key, plaintext) = new_key("ci", 1);
    key.spec.allowed_models = vec!["gpt-5*".into()];
    key.spec.model_override = Some("gpt-5-codex".into());
    key.spec.reasoning_effort = Some(ReasoningEffort::High);
    key.spec.account_groups = vec!["team".into()];
    key.spec.expires_at_ms = Some(START_MS * 2);
    let k = s.create_key(key.clone(), "alice").await.unwrap();
    assert!(k.id.starts_with("key_"));
    assert_eq!(k.spec, key.spec);
    assert_eq!(k.hash, key.hash);
    assert!(k.created_at_ms > 0);
    assert_eq!(s.get_key(&k.id).await.unwrap(), k);
    assert!(!contains(&f.raw_bytes().await, &plaintext));

    // Same hash again: refused.
    let (mut dup, _) = new_key("dup", 1);
    dup.id = String::new();
    assert!(matches!(
        s.create_key(dup, "t").await,
        Err(StoreError::AlreadyExists { kind: "key", .. })
    ));
    // A caller-chosen id is kept; the same id twice is refused.
    let (mut named, _) = new_key("named", 2);
    named.id = "key_named".into();
    assert_eq!(
        s.create_key(named.clone(), "t").await.unwrap().id,
        "key_named"
    );
    let (mut again, _) = new_key("again", 3);
    again.id = "key_named".into();
    assert!(matches!(
        s.create_key(again, "t").await,
        Err(StoreError::AlreadyExists { .. })
    ));

    let disabled = s
        .update_key(
            &k.id,
            &KeyPatch {
                status: Some(KeyStatus::Disabled),
                ..Default::default()
            },
            "bob",
        )
        .await
        .unwrap();
    assert_eq!(disabled.status, KeyStatus::Disabled);
    assert_eq!(s.get_key(&k.id).await.unwrap(), disabled);
    // The override must stay within the allowed models: refused, unchanged.
    is_invalid(
        s.update_key(
            &k.id,
            &KeyPatch {
                allowed_models: Some(vec!["claude-*".into()]),
                ..Default::default()
            },
            "bob",
        )
        .await,
    );
    assert_eq!(s.get_key(&k.id).await.unwrap(), disabled);
    let cleared = s
        .update_key(
            &k.id,
            &KeyPatch {
                model_override: Some(None),
                expires_at_ms: Some(None),
                reasoning_effort: Some(None),
                status: Some(KeyStatus::Active),
                ..Default::default()
            },
            "bob",
        )
        .await
        .unwrap();
    assert_eq!(cleared.spec.model_override, None);
    assert_eq!(cleared.spec.expires_at_ms, None);
    assert_eq!(cleared.spec.reasoning_effort, None);
    assert_eq!(cleared.status, KeyStatus::Active);

    for i in 10..15 {
        s.create_key(new_key(&format!("k{i}"), i).0, "t")
            .await
            .unwrap();
    }
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = s
            .list_keys(&PageRequest::parse(listing::KEYS, 2, &token).unwrap())
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        all.extend(page.items);
        match page.next {
            Some(t) => token = t,
            None => break,
        }
    }
    assert_eq!(all.len(), 7);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));

    s.delete_key(&k.id, "bob").await.unwrap();
    assert_eq!(not_found(s.get_key(&k.id).await.unwrap_err()).0, "key");
    // The hash is free again.
    s.create_key(key, "alice").await.unwrap();
}

async fn admin_tokens(f: &Fixture) {
    let s = &*f.store;
    let token = |name: &str, role: AdminRole, seed: u8| {
        let plain =
            poolgate_core::key::format_secret(poolgate_core::key::ADMIN_TOKEN_PREFIX, &[seed; 32]);
        (
            AdminToken {
                id: String::new(),
                name: name.into(),
                role,
                prefix: poolgate_core::key::visible_prefix(&plain),
                hash: poolgate_core::key::hash_secret(&plain),
                created_at_ms: 0,
            },
            plain,
        )
    };
    let (admin, admin_plain) = token("ops", AdminRole::Admin, 1);
    let (viewer, _) = token("dash", AdminRole::Viewer, 2);
    let a = s
        .create_admin_token(admin.clone(), "bootstrap")
        .await
        .unwrap();
    let v = s
        .create_admin_token(viewer.clone(), "bootstrap")
        .await
        .unwrap();
    assert!(a.id.starts_with("adm_"));
    assert_eq!(a.role, AdminRole::Admin);
    assert!(a.created_at_ms > 0);
    let found = s.find_admin_token(&admin.hash).await.unwrap().unwrap();
    assert_eq!(found, a);
    assert_eq!(
        s.find_admin_token(&viewer.hash)
            .await
            .unwrap()
            .unwrap()
            .role,
        AdminRole::Viewer
    );
    assert_eq!(s.find_admin_token(&"0".repeat(64)).await.unwrap(), None);
    let mut list = s.list_admin_tokens().await.unwrap();
    list.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(list, vec![v.clone(), a.clone()]);
    assert!(matches!(
        s.create_admin_token(admin.clone(), "bootstrap").await,
        Err(StoreError::AlreadyExists {
            kind: "admin token",
            ..
        })
    ));
    is_invalid(
        s.create_admin_token(
            AdminToken {
                name: String::new(),
                ..viewer.clone()
            },
            "t",
        )
        .await,
    );
    assert!(!contains(&f.raw_bytes().await, &admin_plain));

    s.delete_admin_token(&a.id, "bootstrap").await.unwrap();
    assert_eq!(s.find_admin_token(&admin.hash).await.unwrap(), None);
    assert_eq!(
        not_found(s.delete_admin_token(&a.id, "bootstrap").await.unwrap_err()),
        ("admin token", a.id.clone())
    );
    assert_eq!(s.list_admin_tokens().await.unwrap(), vec![v]);
    // Admin tokens are not part of the snapshot gateways follow.
    assert_eq!(s.current_version().await.unwrap(), 0);
}

fn reference_summary(
    records: &[RequestLog],
    filter: &LogFilter,
) -> (SummaryRow, Vec<SummaryRow>, Vec<SummaryRow>) {
    let mut total = SummaryRow::default();
    let mut by_model: BTreeMap<String, SummaryRow> = BTreeMap::new();
    let mut by_account: BTreeMap<String, SummaryRow> = BTreeMap::new();
    for r in records.iter().filter(|r| filter.matches(r)) {
        total.add(r);
        let m = r.model.clone().unwrap_or_default();
        by_model
            .entry(m.clone())
            .or_insert_with(|| SummaryRow {
                key: m,
                ..Default::default()
            })
            .add(r);
        let a = r.account_id.clone().unwrap_or_default();
        by_account
            .entry(a.clone())
            .or_insert_with(|| SummaryRow {
                key: a,
                ..Default::default()
            })
            .add(r);
    }
    (
        total,
        by_model.into_values().collect(),
        by_account.into_values().collect(),
    )
}

/// The reference order: newest first by (ts, id).
fn newest_first(records: &[RequestLog], filter: &LogFilter) -> Vec<RequestLog> {
    let mut v: Vec<RequestLog> = records
        .iter()
        .filter(|r| filter.matches(r))
        .cloned()
        .collect();
    v.sort_by(|a, b| (b.ts_ms, &b.id).cmp(&(a.ts_ms, &a.id)));
    v
}

async fn query_all(s: &dyn Store, filter: &LogFilter, size: u32) -> Vec<RequestLog> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = s
            .query_request_logs(
                filter,
                &PageRequest::parse(listing::LOGS, size, &token).unwrap(),
            )
            .await
            .unwrap();
        assert!(page.items.len() <= size as usize);
        out.extend(page.items);
        match page.next {
            Some(t) => token = t,
            None => return out,
        }
    }
}

async fn request_logs_filters_pagination_summary_prune(f: &Fixture) {
    let s = &*f.store;
    let mut records = logs::generate("r", 600, 42);
    // Same timestamp on several records: the id breaks the tie.
    for r in records.iter_mut().take(5) {
        r.ts_ms = START_MS;
    }
    assert_eq!(s.insert_request_logs(&[]).await.unwrap(), 0);
    assert_eq!(s.insert_request_logs(&records[..400]).await.unwrap(), 400);
    // Re-sent batch: skipped. Overlapping batch with a duplicate inside it: only new rows.
    assert_eq!(s.insert_request_logs(&records[..400]).await.unwrap(), 0);
    let mut overlapping = records[350..600].to_vec();
    overlapping.push(records[599].clone());
    assert_eq!(s.insert_request_logs(&overlapping).await.unwrap(), 200);
    assert_eq!(f.count("request_logs").await, 600);

    let everything = LogFilter::default();
    let got = query_all(s, &everything, 128).await;
    assert_eq!(got, newest_first(&records, &everything));
    // Every translation kind, with and without an upstream model, reads back as written.
    for t in Translation::ALL {
        assert!(
            got.iter().any(|r| r.translation == *t),
            "the generated data should hold {t}"
        );
    }
    assert!(
        got.iter()
            .any(|r| r.upstream_model.as_deref() == Some("gpt-5")
                && r.translation == Translation::MessagesToResponses)
    );

    let mid = records[300].ts_ms;
    let filters = vec![
        LogFilter {
            key_id: Some("key_03".into()),
            ..Default::default()
        },
        LogFilter {
            account_id: Some("acc_07".into()),
            ..Default::default()
        },
        LogFilter {
            model: Some("gpt-5-codex".into()),
            ..Default::default()
        },
        LogFilter {
            status_class: Some(StatusClass::parse("5xx").unwrap()),
            ..Default::default()
        },
        LogFilter {
            status_class: Some(StatusClass::parse("2xx").unwrap()),
            ..Default::default()
        },
        LogFilter {
            error_class: Some(ErrorClass::RateLimited),
            ..Default::default()
        },
        LogFilter {
            since_ms: Some(mid),
            ..Default::default()
        },
        LogFilter {
            until_ms: Some(mid),
            ..Default::default()
        },
        LogFilter {
            since_ms: Some(records[100].ts_ms),
            until_ms: Some(mid),
            model: Some("gpt-5".into()),
            ..Default::default()
        },
        LogFilter {
            key_id: Some("key_01".into()),
            status_class: Some(StatusClass::parse("4xx").unwrap()),
            ..Default::default()
        },
        LogFilter {
            key_id: Some("nobody".into()),
            ..Default::default()
        },
    ];
    for filter in &filters {
        let want = newest_first(&records, filter);
        let got = query_all(s, filter, 7).await;
        assert_eq!(got.len(), want.len(), "{filter:?}");
        assert_eq!(got, want, "{filter:?}");
        let (total, by_model, by_account) = reference_summary(&records, filter);
        let summary = s.summarize_request_logs(filter).await.unwrap();
        assert_eq!(summary.total, total, "{filter:?}");
        assert_eq!(summary.by_model, by_model, "{filter:?}");
        assert_eq!(summary.by_account, by_account, "{filter:?}");
    }
    let summary = s.summarize_request_logs(&everything).await.unwrap();
    assert_eq!(summary.total.requests, 600);
    assert!(summary.total.errors > 0);
    assert!(
        summary.by_model.iter().any(|r| r.key.is_empty()),
        "records without a model group under \"\""
    );

    let cutoff = records[200].ts_ms;
    let expected = records.iter().filter(|r| r.ts_ms < cutoff).count() as u64;
    assert!(expected > 0);
    assert_eq!(s.prune_request_logs(cutoff).await.unwrap(), expected);
    assert_eq!(s.prune_request_logs(cutoff).await.unwrap(), 0);
    let remaining: Vec<RequestLog> = records
        .iter()
        .filter(|r| r.ts_ms >= cutoff)
        .cloned()
        .collect();
    assert_eq!(
        query_all(s, &everything, 1000).await,
        newest_first(&remaining, &everything)
    );
    is_invalid(
        s.query_request_logs(
            &LogFilter {
                since_ms: Some(5),
                until_ms: Some(5),
                ..Default::default()
            },
            &PageRequest::first(10),
        )
        .await,
    );
}

async fn policy_default_set_invalid(f: &Fixture) {
    let s = &*f.store;
    assert_eq!(s.get_policy().await.unwrap(), RoutingPolicy::default());
    let mut p = RoutingPolicy {
        strategy: Strategy::Balanced,
        p2c_window: 5,
        cooldown_429_secs: vec![10, 60],
        default_max_inflight: 4,
        ..Default::default()
    };
    p.quota_guard.min_weekly_remaining_percent = 2.5;
    p.model_aliases = vec![
        ModelAlias {
            from: "claude-*haiku*".into(),
            to: "gpt-5-mini".into(),
        },
        ModelAlias {
            from: "claude-*".into(),
            to: "gpt-5".into(),
        },
    ];
    s.set_policy(&p, "alice").await.unwrap();
    assert_eq!(s.get_policy().await.unwrap(), p);
    let mut bad_alias = p.clone();
    bad_alias.model_aliases[0].to = "gpt-*".into();
    is_invalid(s.set_policy(&bad_alias, "alice").await);
    assert_eq!(s.get_policy().await.unwrap(), p);
    let bad = RoutingPolicy {
        cooldown_429_secs: vec![60, 10],
        ..p.clone()
    };
    is_invalid(s.set_policy(&bad, "alice").await);
    assert_eq!(s.get_policy().await.unwrap(), p);
    s.set_policy(&RoutingPolicy::default(), "alice")
        .await
        .unwrap();
    assert_eq!(s.get_policy().await.unwrap(), RoutingPolicy::default());
    assert_eq!(f.count("routing_policy").await, 1);
    let changes = s.changes_since(0, 100).await.unwrap();
    assert_eq!(changes.len(), 2);
    assert!(
        changes
            .iter()
            .all(|c| c.kind == ResourceKind::Policy && !c.deleted)
    );
}

async fn policy_seed_only_when_none_saved(f: &Fixture) {
    let s = &*f.store;
    let bad = RoutingPolicy {
        p2c_window: 0,
        ..Default::default()
    };
    is_invalid(s.seed_policy(&bad, "boot").await);
    assert_eq!(f.count("routing_policy").await, 0);

    let seeded = RoutingPolicy {
        strategy: Strategy::Balanced,
        p2c_window: 4,
        ..Default::default()
    };
    assert!(s.seed_policy(&seeded, "boot").await.unwrap());
    assert_eq!(s.get_policy().await.unwrap(), seeded);
    // Seeding again (another replica, a restart) changes nothing...
    let other = RoutingPolicy {
        p2c_window: 9,
        ..Default::default()
    };
    assert!(!s.seed_policy(&other, "boot").await.unwrap());
    assert_eq!(s.get_policy().await.unwrap(), seeded);
    // ...and never overwrites a policy set through the API.
    s.set_policy(&other, "alice").await.unwrap();
    assert!(!s.seed_policy(&seeded, "boot").await.unwrap());
    assert_eq!(s.get_policy().await.unwrap(), other);

    let changes = s.changes_since(0, 100).await.unwrap();
    assert_eq!(changes.len(), 2, "one change for the seed, one for the set");
    let actions: Vec<_> = all_audit(s)
        .await
        .into_iter()
        .map(|e| (e.actor, e.action))
        .collect();
    assert!(
        actions.contains(&("boot".into(), "policy.seed".into())),
        "{actions:?}"
    );
    assert_eq!(actions.iter().filter(|(a, _)| a == "boot").count(), 1);
}

async fn rows_written_before_aliases_and_translation_still_read(f: &Fixture) {
    let s = &*f.store;
    // A policy and a request log as a poolgate before schema v4 wrote them: no aliases in the
    // policy JSON, no translation columns in the insert.
    let old_policy = r#"{"strategy":"balanced","p2c_window":4,"cooldown_429_secs":[45,300],"cooldown_5xx_secs":30,"cooldown_network_secs":20,"cooldown_auth_secs":60,"quota_guard":{"enabled":true,"min_five_hour_remaining_percent":5.0,"min_weekly_remaining_percent":10.0},"default_max_inflight":0}"#;
    f.exec(&format!(
        "INSERT INTO routing_policy (id, policy, updated_at_ms) VALUES (1, '{old_policy}', 1); \
         INSERT INTO request_logs (id, ts_ms, key_id, account_id, method, path, model, \
         protocol, status, error_class, input_tokens, cached_input_tokens, output_tokens, \
         reasoning_tokens, ttfb_ms, duration_ms, node, attempts) VALUES ('old-1', {START_MS}, \
         NULL, NULL, 'POST', '/v1/responses', 'gpt-5', 'openai_responses', 200, NULL, 1, 0, \
         2, 0, NULL, 30, 'gw-0', '[]');"
    ))
    .await;
    let p = s.get_policy().await.unwrap();
    assert_eq!((p.strategy, p.p2c_window), (Strategy::Balanced, 4));
    assert!(p.model_aliases.is_empty());
    let got = s
        .query_request_logs(&LogFilter::default(), &PageRequest::first(10))
        .await
        .unwrap()
        .items;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].translation, Translation::None);
    assert_eq!(got[0].upstream_model, None);

    // New records keep what the gateway said, in the columns an operator would query.
    let mut r = logs::generate("new", 1, 3);
    r[0].protocol = "anthropic_messages".into();
    r[0].model = Some("claude-opus-4-1".into());
    r[0].translation = Translation::MessagesToResponses;
    r[0].upstream_model = Some("gpt-5".into());
    assert_eq!(s.insert_request_logs(&r).await.unwrap(), 1);
    let sql = format!(
        "SELECT translation || ' ' || upstream_model FROM request_logs WHERE id = '{}'",
        r[0].id
    );
    assert_eq!(
        f.text(&sql).await.as_deref(),
        Some("messages_to_responses gpt-5")
    );
    let back = s
        .query_request_logs(
            &LogFilter {
                model: Some("claude-opus-4-1".into()),
                ..Default::default()
            },
            &PageRequest::first(10),
        )
        .await
        .unwrap()
        .items;
    assert_eq!(back, r);
}

async fn audit_events_per_mutation_without_secrets(f: &Fixture) {
    let s = &*f.store;
    let key_secret = api_key("sk-AUDIT-SECRET-1");
    let a = s
        .create_account(openai("audited"), Some(key_secret.clone()), None, "alice")
        .await
        .unwrap();
    s.update_account(
        &a.id,
        &AccountPatch {
            priority: Some(3),
            note: Some("n".into()),
            ..Default::default()
        },
        "bob",
    )
    .await
    .unwrap();
    let new_secret = api_key("sk-AUDIT-SECRET-2");
    s.set_credentials(&a.id, &new_secret, "carol")
        .await
        .unwrap();
    let login = codex_login("auditee", "ws", 0);
    let imported = s
        .import_codex(vec![login.clone()], "default", "importer")
        .await
        .unwrap();
    let ImportOutcome::Created(cx) = &imported[0] else {
        panic!("{imported:?}")
    };
    let (key, key_plain) = new_key("k", 5);
    let k = s.create_key(key, "dave").await.unwrap();
    s.update_key(
        &k.id,
        &KeyPatch {
            status: Some(KeyStatus::Disabled),
            ..Default::default()
        },
        "dave",
    )
    .await
    .unwrap();
    s.delete_key(&k.id, "dave").await.unwrap();
    let (tok, _) = new_key("t", 6);
    let t = s
        .create_admin_token(
            AdminToken {
                id: String::new(),
                name: "tok".into(),
                role: AdminRole::Viewer,
                prefix: tok.prefix,
                hash: tok.hash,
                created_at_ms: 0,
            },
            "erin",
        )
        .await
        .unwrap();
    s.delete_admin_token(&t.id, "erin").await.unwrap();
    s.set_policy(&RoutingPolicy::default(), "frank")
        .await
        .unwrap();
    s.delete_account(&a.id, "gina").await.unwrap();

    let events = all_audit(s).await;
    let got: Vec<(&str, &str, &str, &str)> = events
        .iter()
        .map(|e| {
            (
                e.actor.as_str(),
                e.action.as_str(),
                e.target_kind.as_str(),
                e.target_id.as_str(),
            )
        })
        .collect();
    let want = vec![
        ("gina", "account.delete", "account", a.id.as_str()),
        ("frank", "policy.set", "policy", "default"),
        ("erin", "admin_token.delete", "admin_token", t.id.as_str()),
        ("erin", "admin_token.create", "admin_token", t.id.as_str()),
        ("dave", "key.delete", "key", k.id.as_str()),
        ("dave", "key.update", "key", k.id.as_str()),
        ("dave", "key.create", "key", k.id.as_str()),
        ("importer", "account.import", "account", cx.id.as_str()),
        ("carol", "account.credentials", "account", a.id.as_str()),
        ("bob", "account.update", "account", a.id.as_str()),
        ("alice", "account.create", "account", a.id.as_str()),
    ];
    assert_eq!(got, want);
    assert!(
        events
            .windows(2)
            .all(|w| (w[0].ts_ms, w[0].id) > (w[1].ts_ms, w[1].id))
    );
    let update = &events[9];
    assert!(
        update.detail.contains("priority") && update.detail.contains("note"),
        "{}",
        update.detail
    );
    assert!(!update.detail.contains("name"), "{}", update.detail);
    assert!(events[5].detail.contains("status"), "{}", events[5].detail);

    let mut secrets = secrets_of(&key_secret);
    secrets.extend(secrets_of(&new_secret));
    secrets.extend(secrets_of(&Credentials::OAuth(login.tokens)));
    secrets.push(key_plain);
    for e in &events {
        for secret in &secrets {
            assert!(
                !e.detail.contains(secret.as_str()) && !e.target_id.contains(secret.as_str()),
                "secret in audit: {}",
                e.action
            );
        }
        assert!(e.ts_ms > 0);
    }

    // Pages of three walk the same events.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = s
            .list_audit(&PageRequest::parse(listing::AUDIT, 3, &token).unwrap())
            .await
            .unwrap();
        paged.extend(page.items);
        match page.next {
            Some(t) => token = t,
            None => break,
        }
    }
    assert_eq!(paged, events);
}

async fn change_log_versions(f: &Fixture) {
    let s = &*f.store;
    assert_eq!(s.current_version().await.unwrap(), 0);
    assert!(s.changes_since(0, 10).await.unwrap().is_empty());
    let a = s
        .create_account(openai("a"), Some(api_key("k")), None, "t")
        .await
        .unwrap();
    let v1 = s.current_version().await.unwrap();
    s.update_account(
        &a.id,
        &AccountPatch {
            priority: Some(1),
            ..Default::default()
        },
        "t",
    )
    .await
    .unwrap();
    s.set_credentials(&a.id, &api_key("k2"), "t").await.unwrap();
    s.set_usage(&a.id, &usage(5.0)).await.unwrap();
    let k = s.create_key(new_key("k", 1).0, "t").await.unwrap();
    s.update_key(
        &k.id,
        &KeyPatch {
            name: Some("k2".into()),
            ..Default::default()
        },
        "t",
    )
    .await
    .unwrap();
    let (tok, _) = new_key("adm", 2);
    s.create_admin_token(
        AdminToken {
            id: String::new(),
            name: "x".into(),
            role: AdminRole::Admin,
            prefix: tok.prefix,
            hash: tok.hash,
            created_at_ms: 0,
        },
        "t",
    )
    .await
    .unwrap();
    s.set_policy(&RoutingPolicy::default(), "t").await.unwrap();
    s.delete_key(&k.id, "t").await.unwrap();
    s.delete_account(&a.id, "t").await.unwrap();
    let imported = s
        .import_codex(vec![codex_login("u", "w", 0)], "default", "t")
        .await
        .unwrap();
    let ImportOutcome::Created(cx) = &imported[0] else {
        panic!("{imported:?}")
    };

    let changes = s.changes_since(0, 1000).await.unwrap();
    let got: Vec<(ResourceKind, &str, bool)> = changes
        .iter()
        .map(|c| (c.kind, c.id.as_str(), c.deleted))
        .collect();
    let want = vec![
        (ResourceKind::Account, a.id.as_str(), false),
        (ResourceKind::Account, a.id.as_str(), false),
        (ResourceKind::Account, a.id.as_str(), false),
        (ResourceKind::Account, a.id.as_str(), false),
        (ResourceKind::Key, k.id.as_str(), false),
        (ResourceKind::Key, k.id.as_str(), false),
        (ResourceKind::Policy, "default", false),
        (ResourceKind::Key, k.id.as_str(), true),
        (ResourceKind::Account, a.id.as_str(), true),
        (ResourceKind::Account, cx.id.as_str(), false),
    ];
    assert_eq!(got, want);
    assert!(changes.windows(2).all(|w| w[0].version < w[1].version));
    assert_eq!(changes[0].version, v1);
    let last = changes.last().unwrap().version;
    assert_eq!(s.current_version().await.unwrap(), last);
    assert_eq!(
        s.changes_since(changes[6].version, 1000).await.unwrap(),
        changes[7..].to_vec()
    );
    assert_eq!(s.changes_since(0, 3).await.unwrap(), changes[..3].to_vec());
    assert!(s.changes_since(last, 10).await.unwrap().is_empty());
    assert!(s.changes_since(0, 0).await.unwrap().is_empty());

    // Concurrent writers still produce distinct, increasing versions with no gaps in what
    // readers see afterwards.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = f.store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .create_account(openai(&format!("c{i}")), Some(api_key("k")), None, "t")
                .await
                .unwrap()
                .id
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let more = s.changes_since(last, 1000).await.unwrap();
    assert_eq!(more.len(), 8);
    assert!(more.windows(2).all(|w| w[0].version < w[1].version));
    let mut changed: Vec<String> = more.iter().map(|c| c.id.clone()).collect();
    changed.sort();
    ids.sort();
    assert_eq!(changed, ids);
}

async fn reopen_keeps_data_and_migrations_are_idempotent(f: &Fixture) {
    let s = &*f.store;
    let a = s
        .create_account(openai("persist"), Some(api_key("sk-persist")), None, "t")
        .await
        .unwrap();
    s.set_policy(
        &RoutingPolicy {
            p2c_window: 9,
            ..Default::default()
        },
        "t",
    )
    .await
    .unwrap();
    // Two more stores open the same database at once (replicas starting together).
    let (x, y) = tokio::join!(
        f.reopen(poolgate_store::Cipher::new(&KEY)),
        f.reopen(poolgate_store::Cipher::new(&KEY))
    );
    for other in [x, y] {
        assert_eq!(other.get_account(&a.id).await.unwrap(), a);
        assert_eq!(
            other.get_credentials(&a.id).await.unwrap(),
            Some(api_key("sk-persist"))
        );
        assert_eq!(other.get_policy().await.unwrap().p2c_window, 9);
    }
    assert_eq!(f.count("schema_migrations").await, 5);
}

async fn managed_by_handover(f: &Fixture) {
    use poolgate_core::ManagedBy;
    let s = &*f.store;
    let login = codex_login("kube", "ws-k", 0);
    let imported = s
        .import_codex(vec![login.clone()], "default", "t")
        .await
        .unwrap();
    let ImportOutcome::Created(a) = &imported[0] else {
        panic!("{imported:?}")
    };
    let version = s.current_version().await.unwrap();
    is_invalid(
        s.set_account_managed_by(&a.id, ManagedBy::Kubernetes, None, "ctl")
            .await,
    );
    is_invalid(
        s.set_account_managed_by(&a.id, ManagedBy::Kubernetes, Some("  "), "ctl")
            .await,
    );
    is_invalid(
        s.set_account_managed_by(&a.id, ManagedBy::Api, Some("UpstreamAccount x/y"), "ctl")
            .await,
    );
    assert_eq!(s.current_version().await.unwrap(), version);
    assert_eq!(
        not_found(
            s.set_account_managed_by("acc_nope", ManagedBy::Api, None, "ctl")
                .await
                .unwrap_err()
        ),
        ("account", "acc_nope".to_string())
    );

    let owned = s
        .set_account_managed_by(
            &a.id,
            ManagedBy::Kubernetes,
            Some("UpstreamAccount pool/kube"),
            "controller",
        )
        .await
        .unwrap();
    assert_eq!(owned.managed_by, ManagedBy::Kubernetes);
    assert_eq!(
        owned.managed_ref.as_deref(),
        Some("UpstreamAccount pool/kube")
    );
    assert_eq!(s.get_account(&a.id).await.unwrap(), owned);
    let changes = s.changes_since(version, 10).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(
        (changes[0].kind, changes[0].id.as_str()),
        (ResourceKind::Account, a.id.as_str())
    );
    let last = &all_audit(s).await[0];
    assert_eq!(
        (last.action.as_str(), last.actor.as_str()),
        ("account.managed_by", "controller")
    );

    // A re-import cannot take over tokens the Kubernetes resource owns.
    let out = s
        .import_codex(vec![codex_login("kube", "ws-k", 1)], "default", "t")
        .await
        .unwrap();
    match &out[0] {
        ImportOutcome::Failed(m) => assert!(
            m.contains("Kubernetes") && m.contains("UpstreamAccount pool/kube"),
            "{m}"
        ),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(
        s.get_credentials(&a.id).await.unwrap(),
        Some(Credentials::OAuth(login.tokens))
    );

    let back = s
        .set_account_managed_by(&a.id, ManagedBy::Api, None, "controller")
        .await
        .unwrap();
    assert_eq!((back.managed_by, back.managed_ref), (ManagedBy::Api, None));
}

async fn kubernetes_managed_create_and_find(f: &Fixture) {
    let s = &*f.store;
    const REF: &str = "UpstreamAccount pool/main";
    assert_eq!(s.find_managed_account(REF).await.unwrap(), None);

    // A bad reference writes nothing, not even the account.
    let version = s.current_version().await.unwrap();
    is_invalid(
        s.create_managed_account(openai("x"), Some(api_key("sk-x")), None, " ", "controller")
            .await,
    );
    assert_eq!(s.current_version().await.unwrap(), version);
    assert_eq!(f.count("accounts").await, 0);

    let a = s
        .create_managed_account(
            openai("main"),
            Some(api_key("sk-main")),
            None,
            REF,
            "controller",
        )
        .await
        .unwrap();
    assert_eq!(a.managed_by, poolgate_core::ManagedBy::Kubernetes);
    assert_eq!(a.managed_ref.as_deref(), Some(REF));
    assert!(a.has_credentials);
    assert_eq!(s.get_account(&a.id).await.unwrap(), a);
    assert_eq!(s.find_managed_account(REF).await.unwrap(), Some(a.clone()));
    assert_eq!(
        s.get_credentials(&a.id).await.unwrap(),
        Some(api_key("sk-main"))
    );

    // Only Kubernetes-managed objects with exactly that reference are found.
    s.create_account(openai("api"), Some(api_key("sk-api")), None, "alice")
        .await
        .unwrap();
    assert_eq!(
        s.find_managed_account("UpstreamAccount pool/other")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.find_managed_account("upstreamaccount pool/main")
            .await
            .unwrap(),
        None
    );

    // Codex identities stay unique across owners.
    let login = codex_login("kube-owner", "ws-ko", 1);
    s.create_managed_account(
        poolgate_core::AccountSpec::new(Provider::Codex, "c1"),
        Some(Credentials::OAuth(login.tokens.clone())),
        Some(login.identity.clone()),
        "UpstreamAccount pool/c1",
        "controller",
    )
    .await
    .unwrap();
    assert!(matches!(
        s.create_managed_account(
            poolgate_core::AccountSpec::new(Provider::Codex, "c2"),
            Some(Credentials::OAuth(login.tokens)),
            Some(login.identity),
            "UpstreamAccount pool/c2",
            "controller",
        )
        .await,
        Err(StoreError::AlreadyExists {
            kind: "account",
            ..
        })
    ));
    assert_eq!(
        s.find_managed_account("UpstreamAccount pool/c2")
            .await
            .unwrap(),
        None
    );

    const KEY_REF: &str = "PlatformKey pool/ci";
    assert_eq!(s.find_managed_key(KEY_REF).await.unwrap(), None);
    let (mut key, _) = new_key("ci", 41);
    key.managed_by = poolgate_core::ManagedBy::Kubernetes;
    key.managed_ref = Some(KEY_REF.into());
    let k = s.create_key(key, "controller").await.unwrap();
    let (api_key_row, _) = new_key("api", 42);
    s.create_key(api_key_row, "alice").await.unwrap();
    assert_eq!(s.find_managed_key(KEY_REF).await.unwrap(), Some(k.clone()));
    assert_eq!(
        s.find_managed_key("PlatformKey pool/x").await.unwrap(),
        None
    );
    s.delete_key(&k.id, "controller").await.unwrap();
    assert_eq!(s.find_managed_key(KEY_REF).await.unwrap(), None);
}

// --- backend-specific ------------------------------------------------------------------------

#[cfg(unix)]
#[tokio::test]
async fn sqlite_file_is_private_and_wal() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::sqlite().await;
    f.store
        .create_account(openai("a"), Some(api_key("k")), None, "t")
        .await
        .unwrap();
    let Backend::Sqlite { path, .. } = &f.backend else {
        unreachable!()
    };
    assert_eq!(
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let conn = rusqlite::Connection::open(path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let page: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    assert_eq!(page, 16384, "a new database gets 16 KiB pages");
    let every: i64 = conn
        .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
        .unwrap();
    // Per connection: ours is not this one, which has SQLite's default.
    assert_eq!(every, 1000);
}

#[tokio::test]
async fn sqlite_keeps_the_page_size_of_an_existing_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("poolgate.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "page_size", 4096).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE older (x INTEGER)")
            .unwrap();
    }
    let store =
        poolgate_store::SqliteStore::open(&path, poolgate_store::Cipher::new(&KEY)).unwrap();
    let a = store
        .create_account(openai("a"), Some(api_key("k")), None, "t")
        .await
        .unwrap();
    assert_eq!(store.get_account(&a.id).await.unwrap().id, a.id);
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let page: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    assert_eq!(page, 4096);
}

#[tokio::test]
async fn sqlite_open_fails_clearly_on_a_bad_path() {
    let err = poolgate_store::SqliteStore::open(
        std::path::Path::new("/nonexistent-dir/poolgate.db"),
        poolgate_store::Cipher::new(&KEY),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent-dir/poolgate.db"),
        "{err}"
    );
}

#[tokio::test]
async fn postgres_replicas_migrate_a_new_database_together() {
    let url = poolgate_testkit::pg::fresh_database().await.unwrap();
    let connect = || poolgate_store::PgStore::connect(&url, poolgate_store::Cipher::new(&KEY));
    let (a, b, c) = tokio::join!(connect(), connect(), connect());
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let acc = a
        .create_account(openai("x"), Some(api_key("k")), None, "t")
        .await
        .unwrap();
    assert_eq!(b.get_account(&acc.id).await.unwrap(), acc);
    assert_eq!(
        c.current_version().await.unwrap(),
        a.current_version().await.unwrap()
    );
    let client = pg_client(&url).await;
    let n: i64 = client
        .query_one("SELECT COUNT(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
}

#[tokio::test]
async fn postgres_unreachable_server_is_reported_as_unavailable() {
    // Port 1 on loopback: nothing listens there.
    let err = poolgate_store::PgStore::connect(
        "postgres://u:pw-SECRET@127.0.0.1:1/db",
        poolgate_store::Cipher::new(&KEY),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(msg.contains("127.0.0.1:1"), "{msg}");
    assert!(!msg.contains("pw-SECRET"), "{msg}");
}

async fn text_a_database_cannot_hold(f: &Fixture) {
    let s = &*f.store;
    // Gateway-supplied log text with NUL or of absurd length is cleaned, never a failed batch.
    let mut r = logs::generate("nul", 2, 9);
    r[0].model = Some("gpt\0-5".into());
    r[0].path = format!("/v1/{}", "x".repeat(10_000));
    r[1].node = "gw\0".into();
    assert_eq!(s.insert_request_logs(&r).await.unwrap(), 2);
    let got = s
        .query_request_logs(&LogFilter::default(), &PageRequest::first(10))
        .await
        .unwrap()
        .items;
    let first = got.iter().find(|x| x.id == r[0].id).unwrap();
    assert_eq!(first.model.as_deref(), Some("gpt\u{FFFD}-5"));
    assert_eq!(first.path.chars().count(), 2048);
    assert_eq!(
        got.iter().find(|x| x.id == r[1].id).unwrap().node,
        "gw\u{FFFD}"
    );
    // The next batch on the same connection is fine.
    assert_eq!(
        s.insert_request_logs(&logs::generate("after", 3, 10))
            .await
            .unwrap(),
        3
    );

    // Admin input with NUL is refused precisely and writes nothing.
    let mut spec = openai("n");
    spec.note = "a\0b".into();
    is_invalid(s.create_account(spec, Some(api_key("k")), None, "t").await);
    let a = s
        .create_account(openai("n"), Some(api_key("k")), None, "t\0actor")
        .await
        .unwrap();
    is_invalid(
        s.update_account(
            &a.id,
            &AccountPatch {
                note: Some("\0".into()),
                ..Default::default()
            },
            "t",
        )
        .await,
    );
    let (mut key, _) = new_key("k", 1);
    key.spec.model_override = Some("gpt\0".into());
    is_invalid(s.create_key(key, "t").await);
    let mut login = codex_login("nul", "ws", 0);
    login.identity.email = Some("a\0@b".into());
    let out = s.import_codex(vec![login], "default", "t").await.unwrap();
    assert!(
        matches!(&out[0], ImportOutcome::Failed(m) if m.contains("identity.email")),
        "{out:?}"
    );
    assert_eq!(f.count("accounts").await, 1);
    assert_eq!(all_audit(s).await[0].actor, "t\u{FFFD}actor");
}

// --- snapshot support ------------------------------------------------------------------------

fn obs(account: &str, ts_ms: i64, kind: ObservationKind) -> Observation {
    Observation {
        account_id: account.into(),
        ts_ms,
        kind,
        detail: "seen by test".into(),
    }
}

fn window(pct: f64, minutes: u32, resets_at_ms: i64) -> UsageWindow {
    UsageWindow {
        used_percent: pct,
        window_minutes: minutes,
        resets_at_ms: Some(resets_at_ms),
    }
}

async fn state_of(s: &dyn Store, id: &str) -> AccountState {
    let mut v = s.load_account_states(&[id.to_string()]).await.unwrap();
    assert_eq!(v.len(), 1);
    v.remove(0)
}

/// Records `o` and returns what it did and how many change-log rows it added.
async fn record(s: &dyn Store, o: Vec<Observation>) -> (ObservationOutcome, usize) {
    let before = s.current_version().await.unwrap();
    let out = s.record_observations(&o, "gateway:gw-1").await.unwrap();
    let rows = s.changes_since(before, 1000).await.unwrap();
    assert!(
        rows.iter()
            .all(|c| c.kind == ResourceKind::Account && !c.deleted)
    );
    (out, rows.len())
}

async fn cooldowns_fold_to_the_latest(f: &Fixture) {
    let s = &*f.store;
    let a = s
        .create_account(openai("a"), Some(api_key("k")), None, "t")
        .await
        .unwrap();
    let now = now_ms();
    let until = now + 60_000;
    let (out, rows) = record(
        s,
        vec![obs(
            &a.id,
            now,
            ObservationKind::RateLimited { until_ms: until },
        )],
    )
    .await;
    assert_eq!(out.changed_accounts, vec![a.id.clone()]);
    assert_eq!(rows, 1);
    assert_eq!(state_of(s, &a.id).await.cooldown_until_ms, Some(until));
    let reason_sql = format!("SELECT cooldown_reason FROM accounts WHERE id = '{}'", a.id);
    assert_eq!(f.text(&reason_sql).await.as_deref(), Some("rate_limited"));

    // An earlier end, one already past, and a repeat change nothing and log nothing.
    for until_ms in [now + 30_000, now - 1_000, until] {
        let (out, rows) = record(
            s,
            vec![obs(&a.id, now, ObservationKind::RateLimited { until_ms })],
        )
        .await;
        assert!(out.changed_accounts.is_empty(), "{until_ms}");
        assert_eq!(rows, 0);
    }
    assert_eq!(state_of(s, &a.id).await.cooldown_until_ms, Some(until));

    // Several observations of one account in one batch: one change row, the latest end wins,
    // and an absurd end is clamped to a bit over a week.
    let far = now + 365 * 86_400_000;
    let (out, rows) = record(
        s,
        vec![
            obs(
                &a.id,
                now,
                ObservationKind::RateLimited {
                    until_ms: until + 5,
                },
            ),
            obs(
                &a.id,
                now + 1,
                ObservationKind::RateLimited { until_ms: far },
            ),
            obs(
                &a.id,
                now + 2,
                ObservationKind::RateLimited {
                    until_ms: until + 9,
                },
            ),
        ],
    )
    .await;
    assert_eq!((out.changed_accounts.len(), rows), (1, 1));
    let c = state_of(s, &a.id).await.cooldown_until_ms.unwrap();
    assert!(
        c > now + 7 * 86_400_000 && c <= now_ms() + 8 * 86_400_000,
        "{c}"
    );

    // Unknown and unusable account ids are counted, not errors.
    let (out, rows) = record(
        s,
        vec![
            obs("acc_gone", now, ObservationKind::Deactivated),
            obs("", now, ObservationKind::Deactivated),
            obs(&"x".repeat(300), now, ObservationKind::AuthFailed),
        ],
    )
    .await;
    assert_eq!((out.unknown, out.changed_accounts.len(), rows), (3, 0, 0));
    assert_eq!(
        s.record_observations(&[], "g").await.unwrap(),
        ObservationOutcome::default()
    );
}

async fn quota_exhaustion_marks_its_window(f: &Fixture) {
    let s = &*f.store;
    let a = s
        .create_account(openai("a"), Some(api_key("k")), None, "t")
        .await
        .unwrap();
    let now = now_ms();
    let five_h_reset = now + 3_600_000;
    let week_reset = now + 3 * 86_400_000;
    s.set_usage(
        &a.id,
        &UsageSnapshot {
            primary: Some(window(97.0, 300, five_h_reset)),
            secondary: Some(window(40.0, 10080, week_reset)),
            extra: vec![],
            captured_at_ms: now - 10_000,
        },
    )
    .await
    .unwrap();
    let (out, rows) = record(
        s,
        vec![obs(
            &a.id,
            now,
            ObservationKind::QuotaExhausted {
                until_ms: five_h_reset + 2_000,
            },
        )],
    )
    .await;
    assert_eq!((out.changed_accounts.len(), rows), (1, 1));
    let st = state_of(s, &a.id).await;
    assert_eq!(st.cooldown_until_ms, Some(five_h_reset + 2_000));
    let u = st.usage.unwrap();
    assert_eq!(u.primary, Some(window(100.0, 300, five_h_reset + 2_000)));
    assert_eq!(u.secondary, Some(window(40.0, 10080, week_reset)));
    assert!(u.exhausted_until().is_some());
    let reason_sql = format!("SELECT cooldown_reason FROM accounts WHERE id = '{}'", a.id);
    assert_eq!(
        f.text(&reason_sql).await.as_deref(),
        Some("quota_exhausted")
    );

    // Without usage, the window is created, its length guessed from the reset distance.
    let b = s
        .create_account(openai("b"), Some(api_key("k")), None, "t")
        .await
        .unwrap();
    record(
        s,
        vec![obs(
            &b.id,
            now,
            ObservationKind::QuotaExhausted {
                until_ms: week_reset,
            },
        )],
    )
    .await;
    let u = state_of(s, &b.id).await.usage.unwrap();
    assert_eq!(u.primary, Some(window(100.0, 10080, week_reset)));
    assert_eq!(u.secondary, None);
    assert_eq!(u.weekly().unwrap().resets_at_ms, Some(week_reset));
}

async fn auth_failures_and_deactivation(f: &Fixture) {
    let s = &*f.store;
    let imported = s
        .import_codex(
            vec![codex_login("u1", "w", 0), {
                let mut l = codex_login("u2", "w", 0);
                l.tokens.refresh_token = Secret::new("");
                l
            }],
            "default",
            "t",
        )
        .await
        .unwrap();
    let ids: Vec<String> = imported
        .iter()
        .map(|o| match o {
            ImportOutcome::Created(a) => a.id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    let (refreshable, access_only) = (&ids[0], &ids[1]);
    let key_acc = s
        .create_account(openai("k"), Some(api_key("k")), None, "t")
        .await
        .unwrap();
    let now = now_ms();

    // A refreshable login is marked for the refresh job and cooled for the policy's
    // `cooldown_auth_secs` on every gateway (one change-log row).
    let (out, rows) = record(s, vec![obs(refreshable, now, ObservationKind::AuthFailed)]).await;
    assert_eq!(out.refresh_requested, 1);
    assert_eq!((out.changed_accounts.len(), rows), (1, 1));
    let st = s
        .load_account_states(std::slice::from_ref(refreshable))
        .await
        .unwrap();
    let until = st[0].cooldown_until_ms.unwrap();
    let auth_secs = i64::from(s.get_policy().await.unwrap().cooldown_auth_secs);
    assert!(
        until > now && until <= now_ms() + auth_secs * 1000,
        "cooldown {until} vs now {now}"
    );
    assert_eq!(
        s.accounts_needing_refresh().await.unwrap(),
        vec![refreshable.clone()]
    );
    assert_eq!(
        s.get_account(refreshable).await.unwrap().status,
        AccountStatus::Active
    );
    let (out, rows) = record(s, vec![obs(refreshable, now, ObservationKind::AuthFailed)]).await;
    assert_eq!(out.refresh_requested, 0);
    assert_eq!(
        rows, 0,
        "a second refusal during the cooldown changes nothing"
    );
    // New credentials answer the request.
    s.import_codex(vec![codex_login("u1", "w", 1)], "default", "t")
        .await
        .unwrap();
    assert!(s.accounts_needing_refresh().await.unwrap().is_empty());
    let st = s
        .load_account_states(std::slice::from_ref(refreshable))
        .await
        .unwrap();
    assert_eq!(
        st[0].cooldown_until_ms, None,
        "new tokens lift the auth cooldown"
    );

    // Without a refresh token (or with an API key) the account is unusable.
    let (out, rows) = record(
        s,
        vec![
            obs(access_only, now, ObservationKind::AuthFailed),
            obs(&key_acc.id, now, ObservationKind::AuthFailed),
        ],
    )
    .await;
    assert_eq!((out.changed_accounts.len(), rows), (2, 2));
    for id in [access_only, &key_acc.id] {
        let a = s.get_account(id).await.unwrap();
        assert_eq!(
            (a.status, a.status_reason),
            (AccountStatus::Unavailable, Some(StatusReason::AuthInvalid))
        );
    }
    let (out, rows) = record(s, vec![obs(&key_acc.id, now, ObservationKind::Deactivated)]).await;
    assert_eq!((out.changed_accounts.len(), rows), (1, 1));
    assert_eq!(
        s.get_account(&key_acc.id).await.unwrap().status_reason,
        Some(StatusReason::Deactivated)
    );
    let (out, rows) = record(s, vec![obs(&key_acc.id, now, ObservationKind::Deactivated)]).await;
    assert_eq!((out.changed_accounts.len(), rows), (0, 0));

    let events = all_audit(s).await;
    let observed: Vec<_> = events
        .iter()
        .filter(|e| e.action == "account.observed")
        .collect();
    assert_eq!(observed.len(), 3);
    assert!(observed.iter().all(|e| e.actor == "gateway:gw-1"));
    assert!(observed.iter().any(|e| e.target_id == key_acc.id
        && e.detail.contains("deactivated")
        && e.detail.contains("seen by test")));
}

async fn usage_observations_are_coalesced(f: &Fixture) {
    let s = &*f.store;
    let a = s
        .create_account(openai("a"), Some(api_key("k")), None, "t")
        .await
        .unwrap();
    let now = now_ms();
    let reset = now + 3_600_000;
    let usage = |ts: i64, pct: f64, reset: i64| {
        obs(
            &a.id,
            ts,
            ObservationKind::Usage {
                primary: Some(window(pct, 300, reset)),
                secondary: None,
            },
        )
    };
    let (out, rows) = record(s, vec![usage(now - 5000, 20.0, reset)]).await;
    assert_eq!((out.changed_accounts.len(), rows), (1, 1));
    let u = state_of(s, &a.id).await.usage.unwrap();
    assert_eq!(u.primary, Some(window(20.0, 300, reset)));
    assert_eq!(u.captured_at_ms, now - 5000);

    // Small moves and reset jitter are not worth a delta.
    for o in [
        usage(now - 4000, 20.3, reset),
        usage(now - 3000, 19.8, reset + 30_000),
    ] {
        let (out, rows) = record(s, vec![o]).await;
        assert_eq!((out.changed_accounts.len(), rows), (0, 0));
    }
    assert_eq!(
        state_of(s, &a.id).await.usage.unwrap().primary,
        Some(window(20.0, 300, reset))
    );
    // Half a point, a new reset, a second window: each is one delta.
    let (_, rows) = record(s, vec![usage(now - 2000, 20.5, reset)]).await;
    assert_eq!(rows, 1);
    let (_, rows) = record(s, vec![usage(now - 1000, 20.5, reset + 5 * 3_600_000)]).await;
    assert_eq!(rows, 1);
    let (_, rows) = record(
        s,
        vec![obs(
            &a.id,
            now,
            ObservationKind::Usage {
                primary: None,
                secondary: Some(window(3.0, 10080, now + 86_400_000)),
            },
        )],
    )
    .await;
    assert_eq!(rows, 1);
    let u = state_of(s, &a.id).await.usage.unwrap();
    assert_eq!(u.primary, Some(window(20.5, 300, reset + 5 * 3_600_000)));
    assert_eq!(u.secondary, Some(window(3.0, 10080, now + 86_400_000)));
    assert_eq!(u.captured_at_ms, now);

    // An older reading (another gateway's, delivered late), an empty one and a NaN are ignored.
    let nan = obs(
        &a.id,
        now + 10,
        ObservationKind::Usage {
            primary: Some(window(f64::NAN, 300, reset)),
            secondary: None,
        },
    );
    let empty = obs(
        &a.id,
        now + 20,
        ObservationKind::Usage {
            primary: None,
            secondary: None,
        },
    );
    let (out, rows) = record(s, vec![usage(now - 60_000, 90.0, reset), nan, empty]).await;
    assert_eq!((out.changed_accounts.len(), rows), (0, 0));
    // Crossing into exhaustion counts even when the move is small.
    let (_, rows) = record(s, vec![usage(now + 30, 99.8, reset + 5 * 3_600_000)]).await;
    assert_eq!(rows, 1);
    let (_, rows) = record(s, vec![usage(now + 40, 100.0, reset + 5 * 3_600_000)]).await;
    assert_eq!(rows, 1);
    assert!(
        state_of(s, &a.id)
            .await
            .usage
            .unwrap()
            .primary
            .unwrap()
            .exhausted()
    );
}

async fn snapshot_loads(f: &Fixture) {
    let s = &*f.store;
    let a = s
        .create_account(openai("a"), Some(api_key("sk-a")), None, "t")
        .await
        .unwrap();
    let imported = s
        .import_codex(vec![codex_login("u", "w", 0)], "default", "t")
        .await
        .unwrap();
    let ImportOutcome::Created(c) = &imported[0] else {
        panic!("{imported:?}")
    };
    s.set_usage(&a.id, &usage(12.0)).await.unwrap();
    let until = now_ms() + 60_000;
    s.record_observations(
        &[obs(
            &c.id,
            0,
            ObservationKind::RateLimited { until_ms: until },
        )],
        "g",
    )
    .await
    .unwrap();
    let k1 = s.create_key(new_key("k1", 1).0, "t").await.unwrap();
    let k2 = s.create_key(new_key("k2", 2).0, "t").await.unwrap();

    assert!(s.load_account_states(&[]).await.unwrap().is_empty());
    assert!(s.load_keys(&[]).await.unwrap().is_empty());
    let got = s
        .load_account_states(&[
            c.id.clone(),
            "acc_missing".into(),
            a.id.clone(),
            a.id.clone(),
        ])
        .await
        .unwrap();
    let mut ids = vec![a.id.clone(), c.id.clone()];
    ids.sort();
    assert_eq!(
        got.iter().map(|x| x.account.id.clone()).collect::<Vec<_>>(),
        ids
    );
    let sa = got.iter().find(|x| x.account.id == a.id).unwrap();
    assert_eq!(sa.account, s.get_account(&a.id).await.unwrap());
    assert_eq!(sa.credentials, Some(api_key("sk-a")));
    assert_eq!(sa.usage, Some(usage(12.0)));
    assert_eq!(sa.cooldown_until_ms, None);
    let sc = got.iter().find(|x| x.account.id == c.id).unwrap();
    assert_eq!(sc.cooldown_until_ms, Some(until));
    assert_eq!(sc.usage, None);
    assert_eq!(
        sc.credentials,
        Some(Credentials::OAuth(codex_login("u", "w", 0).tokens))
    );
    assert_eq!(
        sc.account.identity.as_ref().unwrap().chatgpt_account_id,
        "w"
    );

    let keys = s
        .load_keys(&[k2.id.clone(), "key_missing".into(), k1.id.clone()])
        .await
        .unwrap();
    let mut want = vec![k1.clone(), k2.clone()];
    want.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(keys, want);

    // Many ids at once (more than one statement's worth).
    let many: Vec<String> = (0..1200)
        .map(|i| format!("acc_{i}"))
        .chain([a.id.clone()])
        .collect();
    assert_eq!(s.load_account_states(&many).await.unwrap().len(), 1);

    s.set_policy(
        &RoutingPolicy {
            p2c_window: 7,
            ..Default::default()
        },
        "t",
    )
    .await
    .unwrap();
    let full = s.load_all_states().await.unwrap();
    assert_eq!(full.version, s.current_version().await.unwrap());
    assert_eq!(full.accounts, got);
    assert_eq!(full.keys, want);
    assert_eq!(full.policy.p2c_window, 7);
}

async fn change_log_pruning(f: &Fixture) {
    let s = &*f.store;
    assert_eq!(s.oldest_change_version().await.unwrap(), 0);
    assert_eq!(s.prune_changes(now_ms() + 1000, 0).await.unwrap(), 0);
    let a = s
        .create_account(openai("a"), Some(api_key("k")), None, "t")
        .await
        .unwrap();
    for p in 0..29 {
        s.update_account(
            &a.id,
            &AccountPatch {
                priority: Some(p + 1),
                ..Default::default()
            },
            "t",
        )
        .await
        .unwrap();
    }
    let all = s.changes_since(0, 1000).await.unwrap();
    assert_eq!(all.len(), 30);
    let newest = all[29].version;
    assert_eq!(s.oldest_change_version().await.unwrap(), all[0].version);

    // Nothing is old enough yet.
    assert_eq!(s.prune_changes(0, 10).await.unwrap(), 0);
    // Old enough, but the newest 10 are kept.
    assert_eq!(s.prune_changes(now_ms() + 1000, 10).await.unwrap(), 20);
    assert_eq!(s.oldest_change_version().await.unwrap(), all[20].version);
    assert_eq!(s.changes_since(0, 1000).await.unwrap(), all[20..].to_vec());
    assert_eq!(s.current_version().await.unwrap(), newest);
    // The newest change always stays, so the version never goes back.
    assert_eq!(s.prune_changes(now_ms() + 1000, 0).await.unwrap(), 9);
    assert_eq!(s.oldest_change_version().await.unwrap(), newest);
    assert_eq!(s.current_version().await.unwrap(), newest);
    s.delete_account(&a.id, "t").await.unwrap();
    assert!(s.current_version().await.unwrap() > newest);
}

async fn gateways_seen_and_listed(f: &Fixture) {
    let s = &*f.store;
    let seen = |node: &str, event: GatewayEvent, v: i64, at: i64| GatewaySeen {
        node_id: node.into(),
        control_node: "cp-0".into(),
        applied_version: v,
        event,
        at_ms: at,
    };
    s.upsert_gateway_seen(&seen("gw-a", GatewayEvent::Connected, 5, 1000))
        .await
        .unwrap();
    s.upsert_gateway_seen(&seen("gw-a", GatewayEvent::Reported, 7, 2000))
        .await
        .unwrap();
    let mut hb = seen("gw-a", GatewayEvent::Heartbeat, 0, 3000);
    hb.control_node = "cp-1".into();
    s.upsert_gateway_seen(&hb).await.unwrap();
    s.upsert_gateway_seen(&seen("gw-b", GatewayEvent::Reported, 3, 2500))
        .await
        .unwrap();
    let list = s.list_gateways(0).await.unwrap();
    assert_eq!(
        list,
        vec![
            GatewayRecord {
                node_id: "gw-a".into(),
                control_node: "cp-1".into(),
                applied_version: 7,
                connected_at_ms: Some(1000),
                last_report_at_ms: Some(2000),
                last_seen_at_ms: 3000,
            },
            GatewayRecord {
                node_id: "gw-b".into(),
                control_node: "cp-0".into(),
                applied_version: 3,
                connected_at_ms: None,
                last_report_at_ms: Some(2500),
                last_seen_at_ms: 2500,
            },
        ]
    );
    let recent = s.list_gateways(2800).await.unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].node_id, "gw-a");
    // A reconnect resets the connection time and the applied version.
    s.upsert_gateway_seen(&seen("gw-a", GatewayEvent::Connected, 2, 4000))
        .await
        .unwrap();
    let a = &s.list_gateways(3500).await.unwrap()[0];
    assert_eq!(
        (a.applied_version, a.connected_at_ms, a.last_report_at_ms),
        (2, Some(4000), Some(2000))
    );

    for bad in [
        seen("", GatewayEvent::Connected, 1, 1),
        seen("gw a", GatewayEvent::Connected, 1, 1),
        seen(&"g".repeat(254), GatewayEvent::Connected, 1, 1),
        seen("gw-c", GatewayEvent::Connected, -1, 1),
    ] {
        is_invalid(s.upsert_gateway_seen(&bad).await);
    }
    assert_eq!(s.prune_gateways(3000).await.unwrap(), 1);
    assert_eq!(s.list_gateways(0).await.unwrap().len(), 1);
}

async fn local_change_feed(f: &Fixture) {
    let s = &*f.store;
    let mut rx = s.local_changes();
    assert_eq!(*rx.borrow_and_update(), 0);
    let a = s
        .create_account(openai("a"), Some(api_key("k")), None, "t")
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*rx.borrow_and_update(), s.current_version().await.unwrap());
    // Writes that log no change and failed writes announce nothing.
    s.insert_request_logs(&logs::generate("feed", 3, 1))
        .await
        .unwrap();
    assert!(
        s.update_account(
            &a.id,
            &AccountPatch {
                name: Some(String::new()),
                ..Default::default()
            },
            "t"
        )
        .await
        .is_err()
    );
    assert!(!rx.has_changed().unwrap());
    s.record_observations(&[obs(&a.id, 0, ObservationKind::Deactivated)], "g")
        .await
        .unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), s.current_version().await.unwrap());
}

#[tokio::test]
async fn sqlite_has_no_remote_feed() {
    let f = Fixture::sqlite().await;
    assert!(f.store.remote_changes().is_none());
}

#[tokio::test]
async fn postgres_remote_feed_carries_other_replicas_writes() {
    let f = Fixture::postgres().await;
    let other = f.reopen(poolgate_store::Cipher::new(&KEY)).await;
    let mut rx = f.store.remote_changes().unwrap();
    // The first signal says the listener is up (and that changes may have been missed).
    tokio::time::timeout(std::time::Duration::from_secs(10), rx.changed())
        .await
        .unwrap()
        .unwrap();
    rx.borrow_and_update();
    let a = other
        .create_account(openai("a"), Some(api_key("k")), None, "t")
        .await
        .unwrap();
    let version = other.current_version().await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while *rx.borrow_and_update() < version {
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    other.delete_account(&a.id, "t").await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*rx.borrow(), other.current_version().await.unwrap());
}
