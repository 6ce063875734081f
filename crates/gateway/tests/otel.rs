#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Traces over OTLP: one test per binary, since it installs the global subscriber.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::json;
use tracing_subscriber::prelude::*;

/// A minimal OTLP/HTTP collector: keeps every request body it receives.
fn collector() -> (String, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let store = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let l = line.trim_end().to_ascii_lowercase();
                if l.is_empty() {
                    break;
                }
                if let Some(v) = l.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).unwrap();
            store.lock().unwrap().push(body);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, bodies)
}

#[test]
fn spans_carry_gen_ai_attributes_and_the_trace_continues_upstream() {
    let (url, bodies) = collector();
    let otel = poolgate_gateway::telemetry::otel_layer_to("poolgate-test", &url).unwrap();
    tracing_subscriber::registry().with(otel.layer).init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let h = Harness::start(test_config(), |m| {
            full(
                1,
                vec![codex_account("acc_a", "tok-a", &m.codex_base_url(), 0)],
                vec![platform_key("key_1", KEY)],
            )
        })
        .await;
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let r = h
            .post(
                "/v1/responses",
                &json!({"model": "gpt-5.3-codex", "input": "traced", "stream": false}),
            )
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let up = &h.mock.requests_to("/backend-api/codex/responses")[0];
        let tp = up.header("traceparent").expect("traceparent upstream");
        assert!(tp.starts_with(&format!("00-{trace_id}-")), "{tp}");
        assert!(!tp.contains("00f067aa0ba902b7"), "a span of its own: {tp}");
        h.stop().await;
    });
    drop(rt);
    // Flushes the batch exporter.
    drop(otel.guard);
    let bodies = bodies.lock().unwrap();
    let all: Vec<u8> = bodies.iter().flatten().copied().collect();
    let has = |needle: &str| all.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!bodies.is_empty(), "no export reached the collector");
    for needle in [
        "gen_ai.system",
        "gen_ai.request.model",
        "gpt-5.3-codex",
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.output_tokens",
        "poolgate-test",
    ] {
        assert!(has(needle), "{needle} missing from the exported spans");
    }
}
