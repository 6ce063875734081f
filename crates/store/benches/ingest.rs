//! Request-log ingest throughput: poolgate's `insert_request_logs` against a reference in the
//! same run, on PostgreSQL and on SQLite.
//!
//! Reference, PostgreSQL: raw binary COPY of the same rows into a plain table (no primary key,
//! no indexes, no dedupe). Reference, SQLite: a prepared INSERT loop into a plain table.
//! Both sides write the same batches of 1,000 rows, one transaction per batch.
//!
//! `cargo bench -p poolgate-store --bench ingest`. Uses POOLGATE_TEST_DATABASE_URL when set,
//! otherwise starts its own throwaway PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/logs.rs"]
mod logs;

use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use poolgate_core::RequestLog;
use poolgate_store::{Cipher, PgStore, SqliteStore, Store};
use poolgate_testkit::pg::{self, PgServer};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

const ROWS: usize = 200_000;
const BATCH: usize = 1_000;
/// Concurrent writers in the second PostgreSQL measurement.
const WRITERS: usize = 4;

const PLAIN_TABLE: &str = "ref_logs (
    id TEXT NOT NULL, ts_ms BIGINT NOT NULL, key_id TEXT, account_id TEXT, method TEXT NOT NULL,
    path TEXT NOT NULL, model TEXT, protocol TEXT NOT NULL, status BIGINT NOT NULL,
    error_class TEXT, input_tokens BIGINT NOT NULL, cached_input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL, reasoning_tokens BIGINT NOT NULL, ttfb_ms BIGINT,
    duration_ms BIGINT NOT NULL, node TEXT NOT NULL, attempts TEXT NOT NULL)";

fn rate(rows: usize, d: Duration) -> f64 {
    rows as f64 / d.as_secs_f64()
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

async fn poolgate(store: &dyn Store, records: &[RequestLog]) -> Duration {
    // Warm-up batch (connections, prepared statements), not timed; distinct ids.
    let warm = logs::generate("warm", BATCH, 1);
    store.insert_request_logs(&warm).await.unwrap();
    let t = Instant::now();
    let mut written = 0;
    for batch in records.chunks(BATCH) {
        written += store.insert_request_logs(batch).await.unwrap();
    }
    let d = t.elapsed();
    assert_eq!(written, records.len() as u64);
    d
}

async fn reference_postgres(url: &str, records: &[RequestLog], writers: usize) -> Duration {
    let admin = connect(url).await;
    admin
        .batch_execute(&format!("CREATE TABLE {PLAIN_TABLE}"))
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..writers {
        clients.push(connect(url).await);
    }
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (w, mut client) in clients.into_iter().enumerate() {
        let mine: Vec<Vec<RequestLog>> = records
            .chunks(BATCH)
            .skip(w)
            .step_by(writers)
            .map(<[RequestLog]>::to_vec)
            .collect();
        tasks.push(tokio::spawn(async move {
            for batch in &mine {
                copy_plain(&mut client, batch).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let d = t.elapsed();
    let n: i64 = admin
        .query_one("SELECT COUNT(*) FROM ref_logs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as usize, records.len());
    d
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

async fn copy_plain(client: &mut tokio_postgres::Client, batch: &[RequestLog]) {
    let types = [
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
    ];
    let tx = client.transaction().await.unwrap();
    let sink = tx
        .copy_in("COPY ref_logs FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    let mut w = pin!(BinaryCopyInWriter::new(sink, &types));
    for r in batch {
        let attempts = serde_json::to_string(&r.attempts).unwrap();
        let row: [&(dyn ToSql + Sync); 18] = [
            &r.id,
            &r.ts_ms,
            &r.key_id,
            &r.account_id,
            &r.method,
            &r.path,
            &r.model,
            &r.protocol,
            &i64::from(r.status),
            &r.error_class.map(|e| e.as_str()),
            &i(r.input_tokens),
            &i(r.cached_input_tokens),
            &i(r.output_tokens),
            &i(r.reasoning_tokens),
            &r.ttfb_ms.map(i64::from),
            &i64::from(r.duration_ms),
            &r.node,
            &attempts,
        ];
        w.as_mut().write(&row).await.unwrap();
    }
    w.as_mut().finish().await.unwrap();
    tx.commit().await.unwrap();
}

/// `writers` tasks share the batches round-robin, as several gateways' report streams would.
async fn poolgate_concurrent(
    store: Arc<dyn Store>,
    records: &[RequestLog],
    writers: usize,
) -> Duration {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mine: Vec<Vec<RequestLog>> = records
            .chunks(BATCH)
            .skip(w)
            .step_by(writers)
            .map(<[RequestLog]>::to_vec)
            .collect();
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            for batch in &mine {
                n += store.insert_request_logs(batch).await.unwrap();
            }
            n
        }));
    }
    let mut written = 0;
    for task in tasks {
        written += task.await.unwrap();
    }
    let d = t.elapsed();
    assert_eq!(written, records.len() as u64);
    d
}

fn reference_sqlite(path: &std::path::Path, records: &[RequestLog]) -> Duration {
    let mut c = rusqlite::Connection::open(path).unwrap();
    c.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
        .unwrap();
    c.pragma_update(None, "synchronous", "NORMAL").unwrap();
    c.execute_batch(&format!("CREATE TABLE {PLAIN_TABLE}"))
        .unwrap();
    let t = Instant::now();
    for batch in records.chunks(BATCH) {
        let tx = c.transaction().unwrap();
        {
            let mut st = tx
                .prepare_cached(
                    "INSERT INTO ref_logs VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, \
                     ?13, ?14, ?15, ?16, ?17, ?18)",
                )
                .unwrap();
            for r in batch {
                let attempts = serde_json::to_string(&r.attempts).unwrap();
                st.execute(rusqlite::params![
                    r.id,
                    r.ts_ms,
                    r.key_id,
                    r.account_id,
                    r.method,
                    r.path,
                    r.model,
                    r.protocol,
                    i64::from(r.status),
                    r.error_class.map(|e| e.as_str()),
                    i(r.input_tokens),
                    i(r.cached_input_tokens),
                    i(r.output_tokens),
                    i(r.reasoning_tokens),
                    r.ttfb_ms.map(i64::from),
                    i64::from(r.duration_ms),
                    r.node,
                    attempts,
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    t.elapsed()
}

fn report(backend: &str, ours: Duration, reference: Duration, what: &str) {
    let (a, b) = (rate(ROWS, ours), rate(ROWS, reference));
    println!(
        "{backend:<12} poolgate {a:>10.0} rows/s ({:>6.2} s)   reference {b:>10.0} rows/s ({:>6.2} s)   ratio {:.2}   [{what}]",
        ours.as_secs_f64(),
        reference.as_secs_f64(),
        a / b
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let records = logs::generate("bench", ROWS, 0xbe7c);
    let key = Cipher::new(&[3u8; 32]);
    println!("request-log ingest: {ROWS} rows in batches of {BATCH}, one transaction per batch");

    // PostgreSQL: an external server when configured, else one of our own.
    let server;
    let superuser = match std::env::var(pg::DATABASE_URL_ENV) {
        Ok(url) => url,
        Err(_) => {
            server = PgServer::start().expect("start a throwaway PostgreSQL");
            server.url()
        }
    };
    let (ours, reference, ours4, reference4) = rt.block_on(async {
        let db = pg::create_database(&superuser).await.unwrap();
        let store = PgStore::connect(&db, key.clone()).await.unwrap();
        let ours = poolgate(&store, &records).await;
        let reference =
            reference_postgres(&pg::create_database(&superuser).await.unwrap(), &records, 1).await;
        let db = pg::create_database(&superuser).await.unwrap();
        let store: Arc<dyn Store> = Arc::new(PgStore::connect(&db, key.clone()).await.unwrap());
        let ours4 = poolgate_concurrent(store, &records, WRITERS).await;
        let reference4 = reference_postgres(
            &pg::create_database(&superuser).await.unwrap(),
            &records,
            WRITERS,
        )
        .await;
        (ours, reference, ours4, reference4)
    });
    report(
        "postgres",
        ours,
        reference,
        "1 writer: binary COPY (staging + ON CONFLICT only for a re-sent batch), PK + 6 indexes (2 partial) vs raw COPY into a plain table",
    );
    report(
        &format!("postgres x{WRITERS}"),
        ours4,
        reference4,
        "concurrent writers, same comparison",
    );

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("poolgate.db"), key).unwrap();
    let ours = rt.block_on(poolgate(&store, &records));
    let reference = reference_sqlite(&dir.path().join("reference.db"), &records);
    report(
        "sqlite",
        ours,
        reference,
        "INSERT … ON CONFLICT, PK + 6 indexes (2 partial) vs prepared INSERT into a plain table",
    );
}
