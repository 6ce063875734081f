//! Versioned schema migrations, embedded in the binary and applied at open.

use crate::sql::{Tx, Val};
use crate::{Result, StoreError, now_ms};

pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub(crate) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/sqlite/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "snapshot",
        sql: include_str!("../migrations/sqlite/0002_snapshot.sql"),
    },
    Migration {
        version: 3,
        name: "refresh",
        sql: include_str!("../migrations/sqlite/0003_refresh.sql"),
    },
    Migration {
        version: 4,
        name: "translation",
        sql: include_str!("../migrations/sqlite/0004_translation.sql"),
    },
    Migration {
        version: 5,
        name: "log_key",
        sql: include_str!("../migrations/sqlite/0005_log_key.sql"),
    },
];

pub(crate) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../migrations/postgres/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "snapshot",
        sql: include_str!("../migrations/postgres/0002_snapshot.sql"),
    },
    Migration {
        version: 3,
        name: "refresh",
        sql: include_str!("../migrations/postgres/0003_refresh.sql"),
    },
    Migration {
        version: 4,
        name: "translation",
        sql: include_str!("../migrations/postgres/0004_translation.sql"),
    },
    Migration {
        version: 5,
        name: "log_key",
        sql: include_str!("../migrations/postgres/0005_log_key.sql"),
    },
];

/// Applies the migrations the database lacks, inside the caller's transaction. Returns how
/// many were applied.
pub(crate) async fn run<T: Tx>(tx: &T, migrations: &[Migration]) -> Result<usize> {
    let fail = |what: String| StoreError::Migration(what);
    tx.lock_migrations()
        .await
        .map_err(|e| fail(format!("cannot take the migration lock: {e}")))?;
    tx.batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at_ms BIGINT NOT NULL
        )",
    )
    .await
    .map_err(|e| fail(format!("cannot create schema_migrations: {e}")))?;
    let applied: Vec<i64> = tx
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.i64(0))
        .collect::<Result<_>>()?;
    let known = migrations.iter().map(|m| m.version).max().unwrap_or(0);
    if let Some(newest) = applied.iter().copied().max().filter(|v| *v > known) {
        return Err(fail(format!(
            "the database has schema version {newest}, newer than this poolgate knows ({known}); \
             upgrade poolgate"
        )));
    }
    let mut count = 0;
    for m in migrations.iter().filter(|m| !applied.contains(&m.version)) {
        tx.batch(m.sql)
            .await
            .map_err(|e| fail(format!("{:04}_{}: {e}", m.version, m.name)))?;
        tx.exec(
            "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES ($1, $2, $3)",
            &[Val::I64(m.version), m.name.into(), now_ms().into()],
        )
        .await?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied schema migration"
        );
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_dense_and_ordered() {
        for set in [SQLITE, POSTGRES] {
            for (i, m) in set.iter().enumerate() {
                assert_eq!(m.version, i as i64 + 1);
                assert!(!m.sql.trim().is_empty());
            }
        }
        assert_eq!(SQLITE.len(), POSTGRES.len());
    }

    #[test]
    fn sqlite_v5_rebuilds_request_logs_keeping_rows_and_dedup() {
        let c = rusqlite::Connection::open_in_memory().unwrap();
        for m in &SQLITE[..4] {
            c.execute_batch(m.sql).unwrap();
        }
        let insert = |id: &str, ts: i64, conflict: &str| {
            c.execute(
                &format!(
                    "INSERT INTO request_logs (id, ts_ms, method, path, protocol, status, \
                     input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, \
                     duration_ms, node, attempts, upstream_model) VALUES (?1, ?2, 'POST', \
                     '/v1/responses', 'openai_responses', 200, 1, 0, 2, 0, 30, 'gw', '[]', \
                     'gpt-5') ON CONFLICT ({conflict}) DO NOTHING"
                ),
                rusqlite::params![id, ts],
            )
            .unwrap()
        };
        assert_eq!(insert("b", 2, "id"), 1);
        assert_eq!(insert("a", 1, "id"), 1);
        c.execute_batch(SQLITE[4].sql).unwrap();

        let rows: Vec<(String, i64, String)> = c
            .prepare("SELECT id, ts_ms, upstream_model FROM request_logs ORDER BY rowid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                ("a".into(), 1, "gpt-5".into()),
                ("b".into(), 2, "gpt-5".into())
            ]
        );
        // A record sent again is dropped by the (ts_ms, id) key; a new one goes in.
        assert_eq!(insert("a", 1, "ts_ms, id"), 0);
        assert_eq!(insert("c", 3, "ts_ms, id"), 1);
        let indexes: Vec<(String, bool)> = c
            .prepare("SELECT name, \"unique\" FROM pragma_index_list('request_logs') ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            indexes,
            [
                ("request_logs_account_idx".into(), false),
                ("request_logs_error_idx".into(), false),
                ("request_logs_key_idx".into(), false),
                ("request_logs_model_idx".into(), false),
                ("request_logs_status_idx".into(), false),
                ("request_logs_ts_idx".into(), true),
            ],
            "one unique index, no primary key's beside it"
        );
    }
}
