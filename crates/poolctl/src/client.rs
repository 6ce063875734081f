//! The connection to the control plane: address, bearer token, deadline, and the translation
//! of gRPC failures into messages a person can act on.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use poolgate_proto::v1::admin_service_client::AdminServiceClient;
use poolgate_proto::v1::login_service_client::LoginServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::cli::Global;

/// Large listings (thousands of accounts) exceed tonic's 4 MiB default.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// An admin token is short; anything bigger is the wrong file.
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

pub type Admin = AdminServiceClient<InterceptedService<Channel, Auth>>;
pub type Login = LoginServiceClient<InterceptedService<Channel, Auth>>;

/// What the error messages need to know about the connection.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub server: String,
    pub has_token: bool,
    pub timeout: Duration,
}

pub struct Client {
    pub api: Admin,
    pub login: Login,
    pub ctx: Ctx,
}

/// Accepts `host:port` as shorthand for `http://host:port`.
pub fn normalize_server(server: &str) -> String {
    let s = server.trim();
    if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    }
}

pub fn load_token(g: &Global) -> anyhow::Result<Option<String>> {
    // Empty values count as unset, so `POOLGATE_TOKEN_FILE= poolctl …` switches a variable off.
    if let Some(t) = g.token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(Some(t.to_string()));
    }
    let Some(path) = g
        .token_file
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(Path::new)
    else {
        return Ok(None);
    };
    let text = read_limited(path, MAX_TOKEN_FILE_BYTES)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let t = text.trim();
    if t.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(Some(t.to_string()))
}

/// Reads a UTF-8 file (or stdin for `-`) of at most `limit` bytes. Errors never quote the
/// content: these files hold secrets.
pub fn read_limited(path: &Path, limit: u64) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .take(limit + 1)
            .read_to_end(&mut buf)?;
    } else {
        std::fs::File::open(path)?
            .take(limit + 1)
            .read_to_end(&mut buf)?;
    }
    if buf.len() as u64 > limit {
        bail!("larger than {} KiB", limit / 1024);
    }
    String::from_utf8(buf).map_err(|_| anyhow!("not UTF-8 text"))
}

pub async fn connect(g: &Global) -> anyhow::Result<Client> {
    let token = load_token(g)?;
    let header = token
        .map(|t| {
            MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| {
                anyhow!("the token contains characters that cannot be sent in a header")
            })
        })
        .transpose()?;
    let ctx = Ctx {
        server: normalize_server(&g.server),
        has_token: header.is_some(),
        timeout: g.timeout,
    };
    let endpoint = Endpoint::from_shared(ctx.server.clone())
        .map_err(|_| {
            anyhow!(
                "invalid --server {:?}: expected a URL such as http://127.0.0.1:50051",
                g.server
            )
        })?
        .connect_timeout(g.timeout)
        .timeout(g.timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| ctx.unreachable(&deepest(&e)))?;
    let login = LoginServiceClient::with_interceptor(channel.clone(), Auth(header.clone()));
    let api = AdminServiceClient::with_interceptor(channel, Auth(header))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    Ok(Client { api, login, ctx })
}

/// The innermost cause, which names what actually failed ("Connection refused", a DNS error).
fn deepest(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl Ctx {
    pub fn unreachable(&self, reason: &str) -> anyhow::Error {
        anyhow!(
            "cannot reach the poolgate control plane at {}: {reason} (is it running? set --server \
             or POOLGATE_SERVER)",
            self.server
        )
    }

    fn timed_out(&self) -> anyhow::Error {
        anyhow!(
            "no answer from the poolgate control plane at {} within {:?} (raise --timeout)",
            self.server,
            self.timeout
        )
    }

    /// A failed call as a message: the server's text behind a short label, plus what to do
    /// where there is something to do.
    pub fn status(&self, s: &Status) -> anyhow::Error {
        let msg = s.message();
        match s.code() {
            Code::Unauthenticated if self.has_token => anyhow!(
                "unauthenticated: {msg}\nThe token was not accepted: pass a valid admin token with \
                 --token-file FILE or POOLGATE_TOKEN_FILE (`poolgate standalone` writes \
                 DATA_DIR/admin.token), or --token / POOLGATE_TOKEN."
            ),
            Code::Unauthenticated => anyhow!(
                "unauthenticated: {msg}\nNo token was given: pass --token-file DATA_DIR/admin.token \
                 (written by `poolgate standalone`) or set POOLGATE_TOKEN_FILE; --token / \
                 POOLGATE_TOKEN also work."
            ),
            Code::PermissionDenied => anyhow!("permission denied: {msg}"),
            Code::NotFound => anyhow!("not found: {msg}"),
            Code::InvalidArgument => anyhow!("invalid argument: {msg}"),
            Code::AlreadyExists => anyhow!("already exists: {msg}"),
            Code::FailedPrecondition => anyhow!("failed precondition: {msg}"),
            Code::OutOfRange => anyhow!("out of range: {msg}"),
            Code::ResourceExhausted => anyhow!("too large or too many: {msg}"),
            Code::DeadlineExceeded => self.timed_out(),
            Code::Cancelled if msg.to_ascii_lowercase().contains("timeout") => self.timed_out(),
            Code::Unavailable => {
                let reason = std::error::Error::source(s).map_or_else(|| msg.to_string(), deepest);
                self.unreachable(&reason)
            }
            Code::Unimplemented => anyhow!(
                "the control plane at {} does not support this call ({msg}); is poolctl newer \
                 than the server?",
                self.server
            ),
            code => anyhow!("{}: {msg}", code.description()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(has_token: bool) -> Ctx {
        Ctx {
            server: "http://127.0.0.1:1".into(),
            has_token,
            timeout: Duration::from_secs(3),
        }
    }

    #[test]
    fn server_shorthand() {
        assert_eq!(
            normalize_server("127.0.0.1:50051"),
            "http://127.0.0.1:50051"
        );
        assert_eq!(normalize_server(" https://cp:443 "), "https://cp:443");
    }

    #[test]
    fn status_messages() {
        let c = ctx(false);
        let m = c
            .status(&Status::unauthenticated("missing bearer token"))
            .to_string();
        assert!(
            m.starts_with("unauthenticated: missing bearer token\n"),
            "{m}"
        );
        assert!(m.contains("--token-file DATA_DIR/admin.token"), "{m}");
        let m = ctx(true)
            .status(&Status::unauthenticated("unknown token"))
            .to_string();
        assert!(m.contains("was not accepted"), "{m}");
        assert_eq!(
            c.status(&Status::permission_denied("viewer tokens are read-only"))
                .to_string(),
            "permission denied: viewer tokens are read-only"
        );
        assert_eq!(
            c.status(&Status::not_found("no account acc_9")).to_string(),
            "not found: no account acc_9"
        );
        assert_eq!(
            c.status(&Status::invalid_argument("invalid group"))
                .to_string(),
            "invalid argument: invalid group"
        );
        assert_eq!(
            c.status(&Status::already_exists("x")).to_string(),
            "already exists: x"
        );
        assert_eq!(
            c.status(&Status::failed_precondition(
                "managed by UpstreamAccount ns/a"
            ))
            .to_string(),
            "failed precondition: managed by UpstreamAccount ns/a"
        );
        let m = c
            .status(&Status::unavailable("tcp connect error"))
            .to_string();
        assert!(
            m.starts_with(
                "cannot reach the poolgate control plane at http://127.0.0.1:1: tcp connect error"
            ),
            "{m}"
        );
        assert!(m.contains("POOLGATE_SERVER"), "{m}");
        let m = c.status(&Status::deadline_exceeded("")).to_string();
        assert!(m.contains("within 3s"), "{m}");
        let m = c.status(&Status::cancelled("Timeout expired")).to_string();
        assert!(m.contains("raise --timeout"), "{m}");
    }

    #[test]
    fn token_sources() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("admin.token");
        std::fs::write(&f, "pga_secret\n").unwrap();
        let cli = crate::cli::Cli::try_parse_from([
            "poolctl",
            "--token-file",
            f.to_str().unwrap(),
            "whoami",
        ])
        .unwrap();
        assert_eq!(
            load_token(&cli.global).unwrap().as_deref(),
            Some("pga_secret")
        );
        let none = crate::cli::Cli::try_parse_from(["poolctl", "--token-file", "", "whoami"]);
        assert_eq!(load_token(&none.unwrap().global).unwrap(), None);
        std::fs::write(&f, "  \n").unwrap();
        let e = load_token(&cli.global).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        std::fs::write(&f, vec![b'a'; 70 * 1024]).unwrap();
        let e = format!("{:#}", load_token(&cli.global).unwrap_err());
        assert!(e.contains("larger than"), "{e}");
        let missing = dir.path().join("nope");
        let cli = crate::cli::Cli::try_parse_from([
            "poolctl",
            "--token-file",
            missing.to_str().unwrap(),
            "whoami",
        ])
        .unwrap();
        let e = format!("{:#}", load_token(&cli.global).unwrap_err());
        assert!(e.starts_with("cannot read the token file"), "{e}");
    }

    #[tokio::test]
    async fn closed_port_names_the_address() {
        use clap::Parser;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let server = format!("http://{addr}");
        let cli =
            crate::cli::Cli::try_parse_from(["poolctl", "--server", &server, "whoami"]).unwrap();
        let e = connect(&cli.global).await.err().unwrap().to_string();
        assert!(
            e.starts_with(&format!(
                "cannot reach the poolgate control plane at {server}: "
            )),
            "{e}"
        );
        assert!(e.to_lowercase().contains("refused"), "{e}");
    }
}
