//! A control plane on a SQLite store in a temporary directory, served on loopback ports, and
//! helpers to talk to it over real sockets.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use poolgate_control::{
    BootstrapToken, ControlConfig, ControlError, NodeToken, ReportIngest, SnapshotHub,
};
use poolgate_core::jwt::unsigned;
use poolgate_proto::v1::admin_service_client::AdminServiceClient;
use poolgate_proto::v1::report_service_client::ReportServiceClient;
use poolgate_proto::v1::snapshot_service_client::SnapshotServiceClient;
use poolgate_store::{Cipher, PgStore, SqliteStore, Store};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub const BOOTSTRAP: &str = "pga_test-bootstrap-token-0123456789";
pub const NODE: &str = "pgn_test-node-token-0123456789";
pub const KEY: [u8; 32] = [7u8; 32];

pub struct Harness {
    pub dir: Option<tempfile::TempDir>,
    pub store: Arc<dyn Store>,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub hub: SnapshotHub,
    pub ingest: ReportIngest,
    pub node_name: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ControlError>>>,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ControlConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            SqliteStore::open(&dir.path().join("poolgate.db"), Cipher::new(&KEY)).unwrap(),
        );
        Self::start_on(Some(dir), store, tweak).await
    }

    /// A replica on the PostgreSQL database at `url`.
    pub async fn postgres(url: &str, tweak: impl FnOnce(&mut ControlConfig)) -> Harness {
        let store = Arc::new(PgStore::connect(url, Cipher::new(&KEY)).await.unwrap());
        Self::start_on(None, store, tweak).await
    }

    /// Serves `store`; `dir` (if any) is kept until the harness is dropped.
    pub async fn start_on(
        dir: Option<tempfile::TempDir>,
        store: Arc<dyn Store>,
        tweak: impl FnOnce(&mut ControlConfig),
    ) -> Harness {
        let mut config = ControlConfig::new("127.0.0.1:0", "127.0.0.1:0");
        config.bootstrap_token = Some(BootstrapToken::from_plaintext(BOOTSTRAP).unwrap());
        config.node_token = Some(NodeToken::from_plaintext(NODE).unwrap());
        tweak(&mut config);
        let cp = poolgate_control::bind(config, store.clone()).await.unwrap();
        let (grpc, admin) = (cp.grpc_addr(), cp.admin_addr());
        let (hub, ingest, node_name) = (cp.hub(), cp.ingest(), cp.node_name().to_string());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(cp.run(async {
            let _ = rx.await;
        }));
        Harness {
            dir,
            store,
            grpc,
            admin,
            hub,
            ingest,
            node_name,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> AdminServiceClient<Channel> {
        let ch = Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap();
        AdminServiceClient::new(ch).max_encoding_message_size(64 << 20)
    }

    pub async fn snapshots(&self) -> SnapshotServiceClient<Channel> {
        SnapshotServiceClient::new(self.channel().await)
            .max_decoding_message_size(poolgate_proto::MAX_SNAPSHOT_MESSAGE_BYTES)
    }

    pub async fn reports(&self) -> ReportServiceClient<Channel> {
        ReportServiceClient::new(self.channel().await)
            .max_encoding_message_size(poolgate_proto::MAX_REPORT_MESSAGE_BYTES)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Stops the control plane and waits for it to return.
    pub async fn stop(&mut self) -> Result<(), ControlError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(t) => tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .unwrap()
                .unwrap(),
            None => Ok(()),
        }
    }
}

/// A request carrying `token` as a bearer token.
pub fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

pub fn admin<T>(msg: T) -> tonic::Request<T> {
    authed(BOOTSTRAP, msg)
}

/// A request carrying the node token, as gateways send it.
pub fn node<T>(msg: T) -> tonic::Request<T> {
    authed(NODE, msg)
}

/// A Codex auth.json for login `sub` in workspace `ws`, with recognisable token values.
pub fn auth_json(sub: &str, ws: &str) -> String {
    let id_token = unsigned(&json!({
        "sub": sub,
        "email": format!("{sub}@example.test"),
        "https://api.openai.com/auth": {"chatgpt_account_id": ws, "chatgpt_plan_type": "team"}
    }));
    let access = unsigned(&json!({"exp": 2_000_000_000, "secret": format!("SECRET-ACCESS-{sub}")}));
    json!({
        "tokens": {"id_token": id_token, "access_token": access, "refresh_token": format!("SECRET-REFRESH-{sub}")},
        "last_refresh": "2026-01-01T00:00:00Z"
    })
    .to_string()
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}
