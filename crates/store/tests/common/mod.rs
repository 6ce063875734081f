//! Fixtures shared by the store's integration tests: one store per backend, raw access to
//! what it wrote, and domain data builders.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod logs;

use std::path::PathBuf;
use std::sync::Arc;

use poolgate_core::authjson::ImportedCodexAuth;
use poolgate_core::jwt::unsigned;
use poolgate_core::key::{PLATFORM_KEY_PREFIX, format_secret, hash_secret, visible_prefix};
use poolgate_core::{
    AccountSpec, AzureConfig, CodexIdentity, Credentials, KeySpec, KeyStatus, ManagedBy,
    OAuthTokens, PlatformKey, Provider, Secret,
};
use poolgate_store::{Cipher, PgStore, SqliteStore, Store};
use serde_json::json;

pub const KEY: [u8; 32] = [7u8; 32];

pub enum Backend {
    Sqlite {
        dir: tempfile::TempDir,
        path: PathBuf,
    },
    Postgres {
        url: String,
    },
}

pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub backend: Backend,
}

impl Fixture {
    pub async fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("poolgate.db");
        let store = SqliteStore::open(&path, Cipher::new(&KEY)).unwrap();
        Fixture {
            store: Arc::new(store),
            backend: Backend::Sqlite { dir, path },
        }
    }

    pub async fn postgres() -> Fixture {
        let url = poolgate_testkit::pg::fresh_database().await.unwrap();
        let store = PgStore::connect(&url, Cipher::new(&KEY)).await.unwrap();
        Fixture {
            store: Arc::new(store),
            backend: Backend::Postgres { url },
        }
    }

    /// A second store on the same database (e.g. another replica, or a restart).
    pub async fn reopen(&self, cipher: Cipher) -> Arc<dyn Store> {
        match &self.backend {
            Backend::Sqlite { path, .. } => Arc::new(SqliteStore::open(path, cipher).unwrap()),
            Backend::Postgres { url } => Arc::new(PgStore::connect(url, cipher).await.unwrap()),
        }
    }

    /// Every byte the backend persisted: the SQLite files, or every PostgreSQL row as text
    /// plus the raw credential column.
    pub async fn raw_bytes(&self) -> Vec<u8> {
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                let mut out = Vec::new();
                for suffix in ["", "-wal", "-journal"] {
                    let p = PathBuf::from(format!("{}{suffix}", path.display()));
                    if let Ok(b) = std::fs::read(&p) {
                        out.extend(b);
                    }
                }
                assert!(!out.is_empty());
                out
            }
            Backend::Postgres { url } => {
                let client = pg_client(url).await;
                let mut out = Vec::new();
                for table in TABLES {
                    for row in client
                        .query(&format!("SELECT CAST(t AS TEXT) FROM {table} t"), &[])
                        .await
                        .unwrap()
                    {
                        out.extend(row.get::<_, String>(0).into_bytes());
                    }
                }
                for row in client
                    .query("SELECT sealed FROM credentials", &[])
                    .await
                    .unwrap()
                {
                    out.extend(row.get::<_, Vec<u8>>(0));
                }
                out
            }
        }
    }

    /// Rows in `table`, read behind the store's back.
    pub async fn count(&self, table: &str) -> i64 {
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                let c = rusqlite::Connection::open(path).unwrap();
                c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
                    .unwrap()
            }
            Backend::Postgres { url } => {
                let client = pg_client(url).await;
                client
                    .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
                    .await
                    .unwrap()
                    .get(0)
            }
        }
    }
}

impl Fixture {
    /// The first column of the first row of `sql` as text (NULL as `None`), read behind the
    /// store's back.
    pub async fn text(&self, sql: &str) -> Option<String> {
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                let c = rusqlite::Connection::open(path).unwrap();
                c.query_row(sql, [], |r| r.get::<_, Option<String>>(0))
                    .unwrap()
            }
            Backend::Postgres { url } => pg_client(url)
                .await
                .query_one(sql, &[])
                .await
                .unwrap()
                .get::<_, Option<String>>(0),
        }
    }
}

impl Fixture {
    /// Runs `sql` behind the store's back (rows as an older poolgate wrote them).
    pub async fn exec(&self, sql: &str) {
        match &self.backend {
            Backend::Sqlite { path, .. } => {
                rusqlite::Connection::open(path)
                    .unwrap()
                    .execute_batch(sql)
                    .unwrap();
            }
            Backend::Postgres { url } => pg_client(url).await.batch_execute(sql).await.unwrap(),
        }
    }
}

pub const TABLES: &[&str] = &[
    "accounts",
    "credentials",
    "usage",
    "platform_keys",
    "admin_tokens",
    "request_logs",
    "audit_events",
    "changes",
    "routing_policy",
    "gateways",
];

pub async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

pub fn api_key(secret: &str) -> Credentials {
    Credentials::ApiKey {
        key: Secret::new(secret),
    }
}

pub fn openai(name: &str) -> AccountSpec {
    AccountSpec::new(Provider::OpenAi, name)
}

pub fn azure(name: &str) -> AccountSpec {
    let mut s = AccountSpec::new(Provider::AzureOpenAi, name);
    s.base_url = Some("https://example.openai.azure.com".into());
    s.azure = Some(AzureConfig {
        deployment: "gpt-5".into(),
        api_version: "2025-04-01-preview".into(),
    });
    s
}

/// A Codex login of user `sub` in workspace `ws`; `gen` varies the tokens between logins.
pub fn codex_login(sub: &str, ws: &str, generation: u32) -> ImportedCodexAuth {
    let email = format!("{sub}@example.test");
    let id_token = unsigned(&json!({
        "sub": sub, "email": email, "exp": 2_000_000_000,
        "https://api.openai.com/auth": {"chatgpt_account_id": ws, "chatgpt_plan_type": "team", "generation": generation}
    }));
    ImportedCodexAuth {
        identity: CodexIdentity {
            subject: sub.into(),
            chatgpt_account_id: ws.into(),
            chatgpt_user_id: Some(format!("user-{sub}")),
            email: Some(email.clone()),
            plan_type: Some(format!("team-g{generation}")),
        },
        tokens: OAuthTokens {
            id_token: Secret::new(id_token),
            access_token: Secret::new(format!("access-SECRET-{sub}-{generation}")),
            refresh_token: Secret::new(format!("refresh-SECRET-{sub}-{generation}")),
            expires_at_ms: Some(2_000_000_000_000),
            last_refresh_ms: None,
        },
        label: email,
    }
}

/// Every secret string inside a credential.
pub fn secrets_of(c: &Credentials) -> Vec<String> {
    match c {
        Credentials::OAuth(t) => vec![
            t.id_token.expose().to_string(),
            t.access_token.expose().to_string(),
            t.refresh_token.expose().to_string(),
        ],
        Credentials::ApiKey { key } => vec![key.expose().to_string()],
    }
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// A platform key as the control plane would build it; returns it with its plaintext.
pub fn new_key(name: &str, seed: u8) -> (PlatformKey, String) {
    let plaintext = format_secret(PLATFORM_KEY_PREFIX, &[seed; 32]);
    let key = PlatformKey {
        id: String::new(),
        spec: KeySpec {
            name: name.into(),
            ..Default::default()
        },
        prefix: visible_prefix(&plaintext),
        hash: hash_secret(&plaintext),
        status: KeyStatus::Active,
        managed_by: ManagedBy::Api,
        managed_ref: None,
        created_at_ms: 0,
        updated_at_ms: 0,
    };
    (key, plaintext)
}
