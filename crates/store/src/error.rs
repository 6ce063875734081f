/// Store failures, each mapped to one gRPC code by the control plane.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {what} already exists")]
    AlreadyExists { kind: &'static str, what: String },
    #[error(transparent)]
    Invalid(#[from] poolgate_core::Error),
    #[error("cannot decrypt stored credentials: {0}")]
    Crypto(String),
    /// The database cannot be reached or is busy right now (connection refused or lost, pool
    /// exhausted, SQLite locked): worth retrying, unlike `Database`.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
        match e.sqlite_error_code() {
            Some(DatabaseBusy | DatabaseLocked) => StoreError::Unavailable(e.to_string()),
            _ => StoreError::Database(e.to_string()),
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The Display of a DbError carries the server's message; never the statement's values.
        match e.as_db_error() {
            Some(db) => {
                let code = db.code().code();
                let msg = format!("{} ({code})", db.message());
                // Class 08: connection exception; 57P0x: server shutting down or starting;
                // 53300: too many connections.
                if code.starts_with("08") || code.starts_with("57P") || code == "53300" {
                    StoreError::Unavailable(msg)
                } else {
                    StoreError::Database(msg)
                }
            }
            None if e.is_closed()
                || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>()) =>
            {
                StoreError::Unavailable(e.to_string())
            }
            None => StoreError::Database(e.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(format!("connection pool: {e}"))
    }
}
