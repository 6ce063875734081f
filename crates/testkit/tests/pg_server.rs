#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use poolgate_testkit::pg::{PgServer, create_database};

#[test]
fn throwaway_server_starts_serves_and_cleans_up() {
    let server = PgServer::start().unwrap();
    let (port, dir) = (server.port(), server.dir().to_path_buf());
    assert!(dir.exists());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let url = create_database(&server.url()).await.unwrap();
        let name = url.rsplit('/').next().unwrap().to_string();
        assert!(name.starts_with("pgt_"), "{url}");
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let row = client
            .query_one("SELECT current_database(), current_setting('fsync')", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), name);
        assert_eq!(row.get::<_, String>(1), "off");
        // A second database on the same server is a different one.
        assert_ne!(create_database(&server.url()).await.unwrap(), url);
    });
    drop(server);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "server still listening"
    );
    assert!(!dir.exists(), "temporary directory left behind");
}
