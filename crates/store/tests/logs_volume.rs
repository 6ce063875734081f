//! 100,000 request-log records written in batches of 1,000 and queried back by filter, on
//! both backends, checked against `LogFilter::matches` over the generated data.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Fixture;
use common::logs::{self, START_MS};
use poolgate_core::page::PageRequest;
use poolgate_core::{ErrorClass, LogFilter, RequestLog, StatusClass};
use poolgate_store::{Store, listing};

const TOTAL: usize = 100_000;
const BATCH: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_hundred_thousand_logs() {
    run(&Fixture::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_hundred_thousand_logs() {
    run(&Fixture::postgres().await).await;
}

/// Walks every page; returns the ids seen.
async fn count_pages(s: &dyn Store, filter: &LogFilter) -> Vec<String> {
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = s
            .query_request_logs(
                filter,
                &PageRequest::parse(listing::LOGS, 1000, &token).unwrap(),
            )
            .await
            .unwrap();
        ids.extend(page.items.into_iter().map(|r| r.id));
        match page.next {
            Some(t) => token = t,
            None => return ids,
        }
    }
}

fn reference(records: &[RequestLog], filter: &LogFilter) -> Vec<String> {
    let mut v: Vec<&RequestLog> = records.iter().filter(|r| filter.matches(r)).collect();
    v.sort_by(|a, b| (b.ts_ms, &b.id).cmp(&(a.ts_ms, &a.id)));
    v.into_iter().map(|r| r.id.clone()).collect()
}

async fn run(f: &Fixture) {
    let s = &*f.store;
    let records = logs::generate("vol", TOTAL, 0x5eed);
    let mut written = 0;
    for batch in records.chunks(BATCH) {
        written += s.insert_request_logs(batch).await.unwrap();
    }
    assert_eq!(written, TOTAL as u64);
    // A re-sent batch writes nothing.
    assert_eq!(
        s.insert_request_logs(&records[5_000..6_000]).await.unwrap(),
        0
    );
    assert_eq!(f.count("request_logs").await, TOTAL as i64);

    let span = records.last().unwrap().ts_ms - START_MS;
    let at = |frac: i64| START_MS + span * frac / 10;
    let filters = [
        LogFilter {
            key_id: Some("key_07".into()),
            ..Default::default()
        },
        LogFilter {
            account_id: Some("acc_13".into()),
            ..Default::default()
        },
        LogFilter {
            model: Some("claude-sonnet-4".into()),
            ..Default::default()
        },
        LogFilter {
            status_class: Some(StatusClass::parse("5xx").unwrap()),
            ..Default::default()
        },
        LogFilter {
            error_class: Some(ErrorClass::RateLimited),
            ..Default::default()
        },
        LogFilter {
            since_ms: Some(at(3)),
            until_ms: Some(at(4)),
            ..Default::default()
        },
        LogFilter {
            key_id: Some("key_02".into()),
            model: Some("gpt-5".into()),
            status_class: Some(StatusClass::parse("2xx").unwrap()),
            since_ms: Some(at(2)),
            ..Default::default()
        },
        LogFilter {
            account_id: Some("acc_01".into()),
            error_class: Some(ErrorClass::Upstream5xx),
            until_ms: Some(at(7)),
            ..Default::default()
        },
    ];
    for filter in &filters {
        let want = reference(&records, filter);
        assert!(!want.is_empty(), "the generated data should hit {filter:?}");
        let got = count_pages(s, filter).await;
        assert_eq!(got.len(), want.len(), "{filter:?}");
        assert_eq!(got, want, "{filter:?}");
        let summary = s.summarize_request_logs(filter).await.unwrap();
        assert_eq!(summary.total.requests, want.len() as u64, "{filter:?}");
    }
    let all = s
        .summarize_request_logs(&LogFilter::default())
        .await
        .unwrap();
    assert_eq!(all.total.requests, TOTAL as u64);
    assert_eq!(
        all.total.input_tokens,
        records.iter().map(|r| r.input_tokens).sum::<u64>()
    );
    assert_eq!(
        all.total.errors,
        records.iter().filter(|r| r.status >= 400).count() as u64
    );

    // Retention removes many chunks' worth in one call.
    let cutoff = at(6);
    let old = records.iter().filter(|r| r.ts_ms < cutoff).count();
    assert!(old > 50_000);
    assert_eq!(s.prune_request_logs(cutoff).await.unwrap(), old as u64);
    assert_eq!(f.count("request_logs").await, (TOTAL - old) as i64);
    let rest = s
        .summarize_request_logs(&LogFilter::default())
        .await
        .unwrap();
    assert_eq!(rest.total.requests, (TOTAL - old) as u64);
    // A batch partly sent before writes only what is new, wherever the repeats fall.
    let before = f.count("request_logs").await;
    let extra = logs::generate("extra", 75, 7);
    let resend: Vec<RequestLog> = extra.iter().step_by(3).cloned().collect();
    assert_eq!(
        s.insert_request_logs(&resend).await.unwrap(),
        resend.len() as u64
    );
    assert_eq!(
        s.insert_request_logs(&extra).await.unwrap(),
        (extra.len() - resend.len()) as u64
    );
    assert_eq!(f.count("request_logs").await, before + extra.len() as i64);
}
