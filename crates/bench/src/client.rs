//! The HTTP/1.1 client side: one hyper connection per worker over a `TCP_NODELAY` socket, so
//! the generator controls exactly how many connections exist and never adds a Nagle delay of
//! its own.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Bound on a unary response body (the mock's answers are a few hundred bytes).
const MAX_UNARY_BODY: usize = 4 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One endpoint with the exact request sent to it.
#[derive(Debug, Clone)]
pub struct Target {
    pub label: String,
    pub addr: SocketAddr,
    authority: HeaderValue,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Target {
    /// `url` is `http://host:port/path`; `headers` are `name: value` pairs added to every request.
    pub fn new(
        label: &str,
        url: &str,
        headers: &[(String, String)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Target> {
        let uri: Uri = url.parse().with_context(|| format!("invalid URL {url}"))?;
        if uri.scheme_str() != Some("http") {
            bail!("{url}: only http:// URLs are supported (loopback benchmark)");
        }
        let auth = uri
            .authority()
            .ok_or_else(|| anyhow!("{url}: no host"))?
            .clone();
        let port = auth.port_u16().unwrap_or(80);
        let addr = (auth.host(), port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", auth.host()))?
            .next()
            .ok_or_else(|| anyhow!("{} resolves to no address", auth.host()))?;
        let path = uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            let name = HeaderName::from_bytes(k.trim().as_bytes())
                .with_context(|| format!("invalid header name {k:?}"))?;
            let value = HeaderValue::from_str(v.trim())
                .with_context(|| format!("invalid value for header {name}"))?;
            map.append(name, value);
        }
        Ok(Target {
            label: label.to_string(),
            addr,
            authority: HeaderValue::from_str(auth.as_str())
                .with_context(|| format!("invalid authority in {url}"))?,
            path,
            headers: map,
            body: body.into(),
        })
    }

    /// The request: POST with a JSON body when there is one, else GET.
    pub fn request(&self) -> anyhow::Result<Request<Full<Bytes>>> {
        let method = if self.body.is_empty() {
            Method::GET
        } else {
            Method::POST
        };
        let mut req = Request::builder()
            .method(method)
            .uri(self.path.as_str())
            .body(Full::new(self.body.clone()))
            .context("cannot build the request")?;
        let h = req.headers_mut();
        h.insert(HOST, self.authority.clone());
        if !self.body.is_empty() {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (k, v) in &self.headers {
            h.append(k, v.clone());
        }
        Ok(req)
    }
}

pub type Sender = SendRequest<Full<Bytes>>;

/// Opens a connection with `TCP_NODELAY` set and hands the connection driver to a task.
pub async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connecting to {addr} timed out"))?
        .with_context(|| format!("cannot connect to {addr}"))?;
    tcp.set_nodelay(true)
        .context("cannot set TCP_NODELAY on the client socket")?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(tcp))
        .await
        .context("HTTP/1.1 handshake failed")?;
    tokio::spawn(async move {
        // The connection ends with its sender; an error here shows up on the next request.
        let _ = conn.await;
    });
    Ok(sender)
}

/// A keep-alive connection, reopened after it fails or the server closes it.
pub struct Conn {
    addr: SocketAddr,
    sender: Option<Sender>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn { addr, sender: None }
    }

    pub fn reset(&mut self) {
        self.sender = None;
    }

    /// A sender ready for the next request.
    pub async fn ready(&mut self) -> anyhow::Result<&mut Sender> {
        if self.sender.as_ref().is_none_or(SendRequest::is_closed) {
            self.sender = None;
            self.sender = Some(connect(self.addr).await?);
        }
        let Some(sender) = self.sender.as_mut() else {
            bail!("no connection");
        };
        if let Err(e) = sender.ready().await {
            self.sender = None;
            return Err(anyhow!("connection closed: {e}"));
        }
        self.sender
            .as_mut()
            .ok_or_else(|| anyhow!("connection closed"))
    }

    /// Sends one request and reads the whole response. The connection is dropped on any error
    /// so the next call starts clean.
    pub async fn unary(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let r = self.unary_inner(req).await;
        if r.is_err() {
            self.reset();
        }
        r
    }

    async fn unary_inner(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let sender = self.ready().await?;
        let resp = sender.send_request(req).await.context("request failed")?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_UNARY_BODY);
        let body = limited
            .collect()
            .await
            .map_err(|e| anyhow!("reading the response body failed: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

/// One request on a fresh connection (setup and control calls).
pub async fn once(target: &Target) -> anyhow::Result<(StatusCode, Bytes)> {
    Conn::new(target.addr).unary(target.request()?).await
}

/// What happened to the requests of a run besides their latency.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub ok: u64,
    pub non_2xx: u64,
    pub errors: u64,
    /// The first failure seen, for the report.
    pub first_failure: Option<String>,
}

impl Outcome {
    pub fn failed(&mut self, what: String) {
        if self.first_failure.is_none() {
            self.first_failure = Some(what);
        }
    }

    pub fn status(&mut self, status: StatusCode, body: &[u8]) {
        self.non_2xx += 1;
        if self.first_failure.is_none() {
            let text = String::from_utf8_lossy(body.get(..300).unwrap_or(body));
            self.first_failure = Some(format!("HTTP {status}: {text}"));
        }
    }

    pub fn error(&mut self, e: &anyhow::Error) {
        self.errors += 1;
        self.failed(format!("{e:#}"));
    }

    pub fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
    }

    pub fn failures(&self) -> u64 {
        self.non_2xx + self.errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_builds_the_request() {
        let t = Target::new(
            "x",
            "http://127.0.0.1:8080/v1/chat/completions?a=1",
            &[("Authorization".into(), "Bearer k".into())],
            &b"{}"[..],
        )
        .unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        let req = t.request().unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri().to_string(), "/v1/chat/completions?a=1");
        assert_eq!(req.headers()[HOST], "127.0.0.1:8080");
        assert_eq!(req.headers()["authorization"], "Bearer k");
        assert_eq!(req.headers()[CONTENT_TYPE], "application/json");
        let get = Target::new("g", "http://127.0.0.1:9/healthz", &[], Bytes::new()).unwrap();
        assert_eq!(get.request().unwrap().method(), Method::GET);
        assert!(Target::new("s", "https://127.0.0.1/", &[], Bytes::new()).is_err());
    }
}
