//! Real PostgreSQL for tests and benchmarks.
//!
//! Tests share one throwaway server (started by `scripts/test.sh`, its superuser URL in
//! `POOLGATE_TEST_DATABASE_URL`) and take a fresh database each with [`fresh_database`].
//! Benchmarks start their own cluster with [`PgServer`].

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{Context, anyhow, bail};

/// The variable naming a running server's superuser URL.
pub const DATABASE_URL_ENV: &str = "POOLGATE_TEST_DATABASE_URL";

/// Creates an empty database named `pgt_<hex>` on the server named by
/// `POOLGATE_TEST_DATABASE_URL` and returns a URL to it. Fails (never skips) when the
/// variable is missing.
pub async fn fresh_database() -> anyhow::Result<String> {
    let url = std::env::var(DATABASE_URL_ENV).map_err(|_| {
        anyhow!(
            "{DATABASE_URL_ENV} is not set: these tests need a real PostgreSQL. Run them through \
             scripts/test.sh (which starts a throwaway server), or start one yourself and export \
             {DATABASE_URL_ENV}=postgres://postgres@127.0.0.1:PORT/postgres"
        )
    })?;
    create_database(&url).await
}

/// Creates a new randomly named database on the server at `superuser_url`; returns its URL.
pub async fn create_database(superuser_url: &str) -> anyhow::Result<String> {
    let (client, conn) = tokio_postgres::connect(superuser_url, tokio_postgres::NoTls)
        .await
        .with_context(|| {
            format!(
                "cannot connect to the test PostgreSQL ({})",
                redact(superuser_url)
            )
        })?;
    let driver = tokio::spawn(conn);
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| anyhow!("no randomness: {e}"))?;
    let name = format!("pgt_{}", hex::encode(b));
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .with_context(|| format!("cannot create database {name}"))?;
    drop(client);
    // The connection ends once the client is gone; its result no longer matters.
    let _ = driver.await;
    with_database(superuser_url, &name)
}

/// `url` with its database (the path) replaced by `db`, keeping any query string.
pub fn with_database(url: &str, db: &str) -> anyhow::Result<String> {
    let scheme_end = url
        .find("://")
        .ok_or_else(|| anyhow!("expected a postgres:// URL, got {}", redact(url)))?
        + 3;
    let (head, rest) = url.split_at(scheme_end);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let query = tail.find('?').map(|i| &tail[i..]).unwrap_or("");
    Ok(format!("{head}{authority}/{db}{query}"))
}

/// The URL without a password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// A throwaway PostgreSQL cluster in a temporary directory, stopped and removed on drop.
/// Runs as the `postgres` user when started by root (initdb refuses root).
#[derive(Debug)]
pub struct PgServer {
    bindir: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres: bool,
    // Dropped last: removes the cluster's files after it stopped.
    dir: tempfile::TempDir,
}

impl PgServer {
    pub fn start() -> anyhow::Result<PgServer> {
        let bindir = find_bindir()?;
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new().prefix("poolgate-pg-").tempdir()?;
        if as_postgres {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres")
                .arg(dir.path()))
            .context("cannot hand the temporary directory to the postgres user")?;
        }
        let data = dir.path().join("data");
        let port = free_port()?;
        let server = PgServer {
            bindir,
            data,
            port,
            as_postgres,
            dir,
        };
        run(server.tool("initdb").arg("-D").arg(&server.data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]))
        .context("initdb failed")?;
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200",
            server.dir.path().display()
        );
        let log = server.dir.path().join("server.log");
        let started = run(server
            .tool("pg_ctl")
            .arg("-D")
            .arg(&server.data)
            .args(["-w", "-t", "60", "-l"])
            .arg(&log)
            .args(["-o", &opts, "start"]));
        if let Err(e) = started {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "pg_ctl start failed: {e:#}\nserver log:\n{}",
                tail.join("\n")
            );
        }
        Ok(server)
    }

    /// The superuser URL.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory holding the cluster, its socket and its log.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn tool(&self, name: &str) -> Command {
        let exe = self.bindir.join(name);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let stopped = run(self.tool("pg_ctl").arg("-D").arg(&self.data).args([
            "-m",
            "immediate",
            "-w",
            "stop",
        ]));
        if let Err(e) = stopped {
            tracing::warn!(error = %format!("{e:#}"), "could not stop the throwaway PostgreSQL");
        }
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} exited with {}: {}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// The newest `/usr/lib/postgresql/<version>/bin`, else `pg_config --bindir`.
fn find_bindir() -> anyhow::Result<PathBuf> {
    let mut best: Option<(u32, PathBuf)> = None;
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        for e in entries.flatten() {
            let bin = e.path().join("bin");
            let version = e
                .file_name()
                .to_string_lossy()
                .split('.')
                .next()
                .and_then(|v| v.parse().ok());
            if let Some(v) = version
                && bin.join("initdb").exists()
                && best.as_ref().is_none_or(|(b, _)| v > *b)
            {
                best = Some((v, bin));
            }
        }
    }
    if let Some((_, bin)) = best {
        return Ok(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output();
    if let Ok(out) = out {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    bail!(
        "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin and \
         `pg_config --bindir`); install them, e.g. `apt-get install postgresql`"
    )
}

fn running_as_root() -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the process's effective user.
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        false
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_in_url_is_replaced() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "pgt_1").unwrap(),
            "postgres://postgres@127.0.0.1:5432/pgt_1"
        );
        assert_eq!(
            with_database("postgresql://u:p@h:1?sslmode=disable", "x").unwrap(),
            "postgresql://u:p@h:1/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h/db?a=b", "y").unwrap(),
            "postgres://h/y?a=b"
        );
        assert!(with_database("host=h dbname=x", "y").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h:1/db"), "postgres://u@h:1/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
