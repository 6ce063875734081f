//! The serving surface around the admin API: reflection, health, the admin HTTP endpoints,
//! the retention job and shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{Harness, admin, http_get};
use poolgate_core::RequestLog;
use poolgate_proto::v1 as pb;
use poolgate_store::Store;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_the_admin_service() {
    let h = Harness::start().await;
    let ch = h.channel().await;

    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut c = ServerReflectionClient::new(ch.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = c
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let msg = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("unexpected reflection answer {msg:?}")
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        assert!(names.contains(&"poolgate.v1.AdminService"), "{names:?}");
        assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

        // Symbols resolve to their file, as grpcurl needs to describe and call methods.
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "poolgate.v1.AdminService".into(),
            )),
        };
        let mut stream = c
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let msg = stream.message().await.unwrap().unwrap();
        assert!(
            matches!(msg.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
            "{msg:?}"
        );
    }
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut c = ServerReflectionClient::new(ch);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = c
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let msg = stream.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
            panic!("unexpected reflection answer {msg:?}")
        };
        assert!(
            list.service
                .iter()
                .any(|s| s.name == "poolgate.v1.AdminService"),
            "{list:?}"
        );
    }
}

#[tokio::test]
async fn health_serving_without_auth_then_not_after_shutdown() {
    let mut h = Harness::start().await;
    let mut c = HealthClient::new(h.channel().await);
    for service in ["", "poolgate.v1.AdminService"] {
        let r = c
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "service {service:?}");
    }
    let e = c
        .check(HealthCheckRequest {
            service: "nope.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    h.stop().await.unwrap();
    // Both listeners are closed once run() returned.
    assert!(tokio::net::TcpStream::connect(h.grpc).await.is_err());
    assert!(tokio::net::TcpStream::connect(h.admin).await.is_err());
}

#[tokio::test]
async fn admin_http_endpoints() {
    let h = Harness::start().await;
    let mut c = h.client().await;
    c.list_accounts(admin(pb::ListAccountsRequest::default()))
        .await
        .unwrap();
    c.list_accounts(admin(pb::ListAccountsRequest {
        provider: "nope".into(),
        ..Default::default()
    }))
    .await
    .unwrap_err();
    c.list_accounts(pb::ListAccountsRequest::default())
        .await
        .unwrap_err();

    assert_eq!(http_get(h.admin, "/healthz").await, (200, "ok".to_string()));
    assert_eq!(http_get(h.admin, "/readyz").await.0, 200);
    assert_eq!(http_get(h.admin, "/nope").await.0, 404);
    let (code, body) = http_get(h.admin, "/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "poolgate_control_grpc_requests_total{method=\"ListAccounts\",code=\"Ok\"} 1",
        "poolgate_control_grpc_requests_total{method=\"ListAccounts\",code=\"InvalidArgument\"} 1",
        "poolgate_control_grpc_requests_total{method=\"ListAccounts\",code=\"Unauthenticated\"} 1",
        "poolgate_control_request_log_rows_total 0",
    ] {
        assert!(body.contains(line), "missing {line:?} in\n{body}");
    }
    assert!(
        body.contains("poolgate_control_retention_pruned_rows_total"),
        "{body}"
    );
}

/// On a real PostgreSQL that goes away: calls fail with Unavailable and /readyz turns 503.
#[tokio::test]
async fn postgres_backend_and_database_outage() {
    let server = poolgate_testkit::pg::PgServer::start().unwrap();
    let url = poolgate_testkit::pg::create_database(&server.url())
        .await
        .unwrap();
    let store = poolgate_store::PgStore::connect(&url, poolgate_store::Cipher::new(&[1u8; 32]))
        .await
        .unwrap();
    let h = Harness::start_on(None, std::sync::Arc::new(store), |_| {}).await;
    let mut c = h.client().await;

    // The same API on PostgreSQL.
    let a = c
        .create_account(admin(pb::CreateAccountRequest {
            provider: "anthropic".into(),
            name: "claude".into(),
            api_key: "sk-ant-SECRET".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let r = c
        .import_accounts(admin(pb::ImportAccountsRequest {
            documents: vec![common::auth_json("p1", "ws"), common::auth_json("p1", "ws")],
            group: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.created, r.failed), (1, 1));
    let l = c
        .list_accounts(admin(pb::ListAccountsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.accounts.len(), 2);
    assert!(l.accounts.iter().any(|x| x.id == a.id));
    assert_eq!(http_get(h.admin, "/readyz").await.0, 200);

    drop(server);
    let (code, body) = http_get(h.admin, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    let e = c
        .list_accounts(admin(pb::ListAccountsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("database is unavailable"),
        "{}",
        e.message()
    );
    assert!(!e.message().contains("127.0.0.1"), "{}", e.message());
    let (_, metrics) = http_get(h.admin, "/metrics").await;
    assert!(
        metrics.contains("poolgate_control_store_errors_total{operation=\"readyz\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("poolgate_control_store_errors_total{operation=\"ListAccounts\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "poolgate_control_grpc_requests_total{method=\"ListAccounts\",code=\"Unavailable\"} 1"
        ),
        "{metrics}"
    );
}

fn old_log(id: &str, ts: i64) -> RequestLog {
    RequestLog {
        id: id.into(),
        ts_ms: ts,
        key_id: None,
        account_id: None,
        attempts: vec![],
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        model: None,
        protocol: "openai_chat".into(),
        status: 200,
        error_class: None,
        input_tokens: 0,
        cached_input_tokens: 0,
        output_tokens: 0,
        reasoning_tokens: 0,
        ttfb_ms: None,
        duration_ms: 1,
        node: "gw".into(),
        translation: Default::default(),
        upstream_model: None,
    }
}

#[tokio::test]
async fn retention_prunes_old_logs_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        poolgate_store::SqliteStore::open(
            &dir.path().join("db"),
            poolgate_store::Cipher::new(&[2u8; 32]),
        )
        .unwrap(),
    );
    let now = poolgate_store::now_ms();
    let day = 86_400_000;
    store
        .insert_request_logs(&[
            old_log("old", now - 40 * day),
            old_log("older", now - 90 * day),
            old_log("new", now - day),
        ])
        .await
        .unwrap();
    let h = Harness::start_on(Some(dir), store, |c| {
        c.request_log_retention = Duration::from_secs(30 * 86_400)
    })
    .await;
    let mut c = h.client().await;
    let mut left = Vec::new();
    for _ in 0..100 {
        let r = c
            .query_logs(admin(pb::QueryLogsRequest::default()))
            .await
            .unwrap()
            .into_inner();
        left = r.logs.into_iter().map(|l| l.id).collect::<Vec<_>>();
        if left.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, ["new"]);
    let (_, metrics) = http_get(h.admin, "/metrics").await;
    assert!(
        metrics.contains("poolgate_control_retention_pruned_rows_total 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn bind_errors_and_config_validation() {
    let h = Harness::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(
        poolgate_store::SqliteStore::open(
            &dir.path().join("db"),
            poolgate_store::Cipher::new(&[3u8; 32]),
        )
        .unwrap(),
    );
    let taken = poolgate_control::ControlConfig::new(h.grpc.to_string(), "127.0.0.1:0");
    let e = poolgate_control::bind(taken, store.clone())
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("cannot listen on gRPC address {}", h.grpc)),
        "{e}"
    );
    let mut short = poolgate_control::ControlConfig::new("127.0.0.1:0", "127.0.0.1:0");
    short.request_log_retention = Duration::from_secs(1);
    let e = poolgate_control::bind(short, store).await.unwrap_err();
    assert!(
        matches!(e, poolgate_control::ControlError::Config(_)),
        "{e}"
    );
}
