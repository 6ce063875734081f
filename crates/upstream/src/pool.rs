//! The keep-alive pool of the accounts without a proxy: HTTP/1.1 connections made with
//! hyper's connection API, checked out for one request and put back when its response body
//! has been read to the end.
//!
//! It replaces hyper-util's general-purpose pool on the hot path (every request of most
//! deployments). That one keys, locks and signals for any executor and protocol; this one
//! knows that a gateway builds one [`crate::UpstreamClient`] per serving thread, so its lock
//! is never contended, and it does only what HTTP/1.1 keep-alive needs:
//!
//! - the most recently used idle connection first (a few hot connections per upstream, the
//!   rest age out);
//! - a connection whose upstream closed it while idle is dropped at checkout, and a request
//!   that could not even be written on a pooled connection is sent again on another one
//!   (nothing reached the upstream, so this is safe for any method);
//! - a connection whose response body was dropped before its end is closed, never reused
//!   with unread bytes in it;
//! - idle connections are closed after `idle_timeout`, at most `max_idle_per_host` are kept
//!   per scheme and authority.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::Service;

use crate::UpstreamError;
use crate::error::chain;

type Sender = http1::SendRequest<Full<Bytes>>;

/// Where a pooled connection goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    https: bool,
    authority: Authority,
}

struct Idle {
    tx: Sender,
    since: Instant,
}

/// Times a request may meet a pooled connection that closed under it before it is sent on a
/// fresh one.
const STALE_RETRIES: usize = 3;
/// How often every idle entry is looked at, so that entries of upstreams nothing goes to any
/// more do not stay in the map after their connections closed.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

struct Idles {
    by_key: HashMap<Key, Vec<Idle>>,
    swept: Instant,
}

pub(crate) struct Pool {
    connector: HttpsConnector<HttpConnector>,
    idle: Mutex<Idles>,
    idle_timeout: Duration,
    max_idle_per_host: usize,
    sweep_every: Duration,
}

impl Pool {
    pub(crate) fn new(
        connector: HttpsConnector<HttpConnector>,
        idle_timeout: Duration,
        max_idle_per_host: usize,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            connector,
            idle: Mutex::new(Idles {
                by_key: HashMap::new(),
                swept: Instant::now(),
            }),
            idle_timeout,
            max_idle_per_host,
            sweep_every: SWEEP_EVERY,
        })
    }

    /// Idle connections held (all upstreams).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.lock().by_key.values().map(Vec::len).sum()
    }

    fn lock(&self) -> MutexGuard<'_, Idles> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fresh(&self, c: &Idle, now: Instant) -> bool {
        now.duration_since(c.since) < self.idle_timeout
    }

    /// The most recently used live idle connection to `key`; closed and expired ones found
    /// on the way are dropped.
    fn checkout(&self, key: &Key) -> Option<Sender> {
        let mut idle = self.lock();
        let now = Instant::now();
        let list = idle.by_key.get_mut(key)?;
        while let Some(c) = list.pop() {
            if !c.tx.is_closed() && self.fresh(&c, now) {
                return Some(c.tx);
            }
        }
        None
    }

    fn put_back(&self, key: Key, tx: Sender) {
        if tx.is_closed() || self.max_idle_per_host == 0 {
            return;
        }
        let mut idle = self.lock();
        let now = Instant::now();
        if now.duration_since(idle.swept) >= self.sweep_every {
            idle.swept = now;
            idle.by_key.retain(|_, list| {
                list.retain(|c| {
                    !c.tx.is_closed() && now.duration_since(c.since) < self.idle_timeout
                });
                !list.is_empty()
            });
        }
        let list = idle.by_key.entry(key).or_default();
        // The oldest are at the front: expired ones go first, then any beyond the bound.
        let expired = list.iter().take_while(|c| !self.fresh(c, now)).count();
        list.drain(..expired);
        if list.len() >= self.max_idle_per_host {
            list.remove(0);
        }
        list.push(Idle { tx, since: now });
    }

    async fn connect(&self, uri: &Uri) -> Result<Sender, UpstreamError> {
        let mut connector = self.connector.clone();
        let io = connector
            .call(uri.clone())
            .await
            .map_err(|e| UpstreamError::Connect(chain(e.as_ref())))?;
        let (tx, conn) = http1::Builder::new()
            // Head and body in one write (requests are small JSON documents).
            .writev(false)
            .handshake(io)
            .await
            .map_err(|e| UpstreamError::Connect(chain(&e)))?;
        // The connection task lives on the caller's runtime: a gateway worker's own thread.
        // (Driving it from the request's own task instead measured slower: every look at an
        // idle connection then tried a read.)
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    /// Sends `req` (absolute URI) on a pooled or new connection. The body of the answer puts
    /// the connection back when it has been read to its end.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let uri = req.uri().clone();
        let https = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => true,
            Some(s) if *s == Scheme::HTTP => false,
            _ => {
                return Err(UpstreamError::Config(
                    "the account's base URL must be http:// or https://".into(),
                ));
            }
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| UpstreamError::Config("the account's base URL has no host".into()))?;
        // HTTP/1.1 origin form on the wire, the authority in Host.
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| UpstreamError::Config("the account's host is not a valid Host".into()))?;
        req.headers_mut().insert(HOST, host);
        *req.uri_mut() = Uri::from(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        let key = Key { https, authority };
        let mut req = req;
        for _ in 0..STALE_RETRIES {
            let Some(mut tx) = self.checkout(&key) else {
                break;
            };
            // Ready as soon as its connection task has seen the previous answer's end.
            if tx.ready().await.is_err() {
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(self.pooled(resp, key, tx)),
                Err(mut e) => match e.take_message() {
                    // Never written: the upstream closed this connection while it was idle.
                    Some(r) => req = r,
                    None => return Err(UpstreamError::Request(chain(e.error()))),
                },
            }
        }
        // Boxed: connecting is rare, and its future would otherwise size every request's.
        Box::pin(self.send_fresh(&uri, key, req)).await
    }

    /// Sends `req` on a new connection, which then joins the pool.
    async fn send_fresh(
        self: &Arc<Self>,
        uri: &Uri,
        key: Key,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let mut tx = self.connect(uri).await?;
        tx.ready()
            .await
            .map_err(|e| UpstreamError::Connect(chain(&e)))?;
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| UpstreamError::Request(chain(&e)))?;
        Ok(self.pooled(resp, key, tx))
    }

    fn pooled(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        key: Key,
        tx: Sender,
    ) -> Response<PooledBody> {
        resp.map(|body| {
            let mut b = PooledBody {
                body,
                home: Some((self.clone(), key, tx)),
            };
            b.done_if_ended();
            b
        })
    }
}

/// An upstream response body that returns its connection to the pool at its end.
pub(crate) struct PooledBody {
    body: Incoming,
    home: Option<(Arc<Pool>, Key, Sender)>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("pooled", &self.home.is_some())
            .finish_non_exhaustive()
    }
}

impl PooledBody {
    fn done_if_ended(&mut self) {
        if self.body.is_end_stream()
            && let Some((pool, key, tx)) = self.home.take()
        {
            pool.put_back(key, tx);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.body).poll_frame(cx);
        match &r {
            Poll::Ready(None) => {
                if let Some((pool, key, tx)) = this.home.take() {
                    pool.put_back(key, tx);
                }
            }
            Poll::Ready(Some(Ok(_))) => this.done_if_ended(),
            // A broken body leaves its connection unusable: it is dropped with the sender.
            Poll::Ready(Some(Err(_))) => this.home = None,
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;

    /// How the test upstream treats its connections.
    #[derive(Clone, Copy)]
    enum Upstream {
        KeepAlive,
        /// Answers, then closes the connection without saying so.
        CloseAfterEach,
    }

    /// An HTTP/1.1 server on loopback answering `/big` with 1 MiB and anything else with
    /// its path; counts the connections it accepted.
    async fn upstream(kind: Upstream) -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                if let Upstream::CloseAfterEach = kind {
                    tokio::spawn(answer_once_and_close(s));
                    continue;
                }
                tokio::spawn(async move {
                    let svc = service_fn(|req: Request<Incoming>| async move {
                        let body = if req.uri().path() == "/big" {
                            Bytes::from(vec![b'x'; 1 << 20])
                        } else {
                            Bytes::from(req.uri().path().to_string())
                        };
                        Ok::<_, Infallible>(Response::new(Full::new(body)))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (base, accepted)
    }

    /// Reads one request head, answers its path as a keep-alive response (no
    /// `Connection: close`) and closes the socket: an upstream dropping idle connections.
    async fn answer_once_and_close(mut s: tokio::net::TcpStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let head = String::from_utf8_lossy(&buf);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let path = path.split('?').next().unwrap_or("/").to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}",
            path.len()
        );
        let _ = s.write_all(resp.as_bytes()).await;
        let _ = s.shutdown().await;
    }

    fn pool(idle_timeout: Duration) -> Arc<Pool> {
        crate::install_crypto_provider();
        let cfg = crate::UpstreamConfig::default();
        Pool::new(crate::build_connector(&cfg).unwrap(), idle_timeout, 4)
    }

    fn get(url: &str) -> Request<Full<Bytes>> {
        let mut r = Request::new(Full::new(Bytes::new()));
        *r.uri_mut() = url.parse().unwrap();
        r
    }

    async fn text(p: &Arc<Pool>, url: &str) -> String {
        let resp = p.send(get(url)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn one_connection_serves_requests_one_after_another() {
        let (base, accepted) = upstream(Upstream::KeepAlive).await;
        let p = pool(Duration::from_secs(90));
        for i in 0..20 {
            assert_eq!(
                text(&p, &format!("{base}/r{i}?q=1")).await,
                format!("/r{i}")
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        // Concurrent requests each get a connection; afterwards they are all reused.
        let all = futures::future::join_all((0..4).map(|i| {
            let (p, url) = (p.clone(), format!("{base}/c{i}"));
            async move { text(&p, &url).await }
        }))
        .await;
        assert_eq!(all.len(), 4);
        let opened = accepted.load(Ordering::SeqCst);
        assert!((2..=4).contains(&opened), "{opened}");
        for _ in 0..8 {
            text(&p, &format!("{base}/again")).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), opened);
    }

    #[tokio::test]
    async fn connections_the_upstream_closed_are_never_used_again() {
        let (base, accepted) = upstream(Upstream::CloseAfterEach).await;
        let p = pool(Duration::from_secs(90));
        for i in 0..10 {
            assert_eq!(text(&p, &format!("{base}/n{i}")).await, format!("/n{i}"));
            // Sometimes the next request comes before the close is seen, sometimes after.
            if i % 2 == 0 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 10);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_closes_its_connection() {
        let (base, accepted) = upstream(Upstream::KeepAlive).await;
        let p = pool(Duration::from_secs(90));
        let resp = p.send(get(&format!("{base}/big"))).await.unwrap();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
        drop(body);
        assert_eq!(text(&p, &format!("{base}/after")).await, "/after");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // Read to the end, the connection is reused.
        let resp = p.send(get(&format!("{base}/big"))).await.unwrap();
        let b = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(b.len(), 1 << 20);
        text(&p, &format!("{base}/reused")).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let (base, accepted) = upstream(Upstream::KeepAlive).await;
        let p = pool(Duration::from_millis(50));
        text(&p, &format!("{base}/a")).await;
        text(&p, &format!("{base}/b")).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(120)).await;
        text(&p, &format!("{base}/c")).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_the_upstream_closed_are_swept() {
        let (closing, _) = upstream(Upstream::CloseAfterEach).await;
        let (other, _) = upstream(Upstream::KeepAlive).await;
        let mut p = pool(Duration::from_secs(90));
        Arc::get_mut(&mut p).unwrap().sweep_every = Duration::from_millis(50);
        text(&p, &format!("{closing}/x")).await;
        text(&p, &format!("{other}/y")).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Traffic to another upstream sweeps the closed one's entry away.
        text(&p, &format!("{other}/z")).await;
        assert_eq!(p.idle_count(), 1);
    }

    #[tokio::test]
    async fn bad_targets_are_precise_errors() {
        let p = pool(Duration::from_secs(1));
        let e = p.send(get("ftp://example.test/x")).await.unwrap_err();
        assert!(matches!(e, UpstreamError::Config(_)), "{e}");
        // Nothing listens there.
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/x", dead.local_addr().unwrap());
        drop(dead);
        let e = p.send(get(&url)).await.unwrap_err();
        assert!(matches!(e, UpstreamError::Connect(_)), "{e}");
    }
}
