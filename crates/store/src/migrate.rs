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
}
