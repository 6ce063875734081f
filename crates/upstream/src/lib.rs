//! HTTP clients to the upstream providers poolgate fronts: the ChatGPT Codex backend (OAuth
//! accounts), OpenAI-compatible APIs, Azure OpenAI deployments and the Anthropic API (API-key
//! accounts). No routing here: the gateway picks
//! the account and builds the body; this crate turns one attempt into one HTTP request with
//! the provider's URL and header profile, and hands back the status, headers and a body
//! stream.
//!
//! - An HTTP/1.1 keep-alive pool per client (`TCP_NODELAY`, 15 s connect timeout, no total
//!   timeout: streams last as long as the upstream keeps them open; see `pool`), plus one
//!   reqwest client per account proxy (`http`, `https`, `socks5`, `socks5h`).
//! - Codex: `{base}/responses`, `{base}/responses/compact`, `{base}/models?client_version=`,
//!   with the official client's headers (seed spec §10.2 [H], §18.1–18.2).
//! - OpenAI: `{base}{path}` with `Authorization: Bearer <api key>`, the body as given.
//! - Azure OpenAI: `{endpoint}/openai/deployments/{deployment}/chat/completions` and
//!   `{endpoint}/openai/responses`, both with `?api-version=`, and the key in `api-key`.
//! - Anthropic: `{base}/v1/messages` with `x-api-key`, `anthropic-version` (the client's, else
//!   [`ANTHROPIC_VERSION`]) and the client's `anthropic-beta`.
//!
//! Dropping an [`UpstreamResponse`] (or its body) closes the upstream request.

mod codex;
mod error;
pub mod oauth;
mod pool;
pub mod refresh;
pub mod usage;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use poolgate_core::snapshot::AccountState;
use poolgate_core::{Credentials, Provider};
use poolgate_wire::responses::SessionInput;

pub use codex::{
    CODEX_ORIGINATOR, DEFAULT_CODEX_VERSION, codex_base_url, codex_user_agent, installation_id_for,
};
pub use error::UpstreamError;

/// The OpenAI API base used when an API-key account sets none.
pub const OPENAI_DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// The Anthropic API base used when an Anthropic account sets none.
pub const ANTHROPIC_DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The `anthropic-version` sent when the client sent none (the API requires one).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Settings of the HTTP clients.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub tcp_keepalive: Duration,
    /// The Codex CLI version the header profile claims (keep it recent).
    pub codex_version: String,
    /// Bound on the per-proxy client cache (one client per distinct proxy URL).
    pub max_proxy_clients: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: Duration::from_secs(15),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 256,
            tcp_keepalive: Duration::from_secs(30),
            codex_version: DEFAULT_CODEX_VERSION.to_string(),
            max_proxy_clients: 256,
        }
    }
}

/// What the client asked for, in provider-neutral terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /v1/responses` (the Codex backend always streams).
    Responses,
    /// `POST /v1/responses/compact`.
    ResponsesCompact,
    /// `POST /v1/chat/completions` (OpenAI accounts only; Codex needs a translation).
    ChatCompletions,
    /// `GET /v1/models`.
    Models,
    /// `POST /v1/messages` (Anthropic accounts only; Codex needs a translation).
    Messages,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Responses => "responses",
            Endpoint::ResponsesCompact => "responses_compact",
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Models => "models",
            Endpoint::Messages => "messages",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Endpoint::Responses => "/responses",
            Endpoint::ResponsesCompact => "/responses/compact",
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Models => "/models",
            Endpoint::Messages => "/messages",
        }
    }

    fn method(self) -> Method {
        match self {
            Endpoint::Models => Method::GET,
            _ => Method::POST,
        }
    }
}

/// One attempt's request.
#[derive(Debug, Clone)]
pub struct UpstreamRequest<'a> {
    pub endpoint: Endpoint,
    /// The body exactly as it goes upstream (already normalised for Codex).
    pub body: Bytes,
    /// The client wants a stream (sets `Accept` for OpenAI; Codex `/responses` always streams).
    pub stream: bool,
    /// The inbound request's headers: Codex passthrough headers and client identity are
    /// read from here. Nothing else of the client's is forwarded.
    pub client_headers: &'a HeaderMap,
    /// Codex session inputs (ids, anchor, failover); `None` sends no session headers.
    pub session: Option<SessionInput<'a>>,
    /// Added as they are (e.g. W3C `traceparent`).
    pub extra_headers: &'a [(HeaderName, HeaderValue)],
}

/// A body chunk stream; dropping it closes the upstream request.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// The upstream answer: status and headers are in, the body streams.
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: BodyStream,
}

impl std::fmt::Debug for UpstreamResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamResponse")
            .field("status", &self.status)
            .field("headers", &self.headers.len())
            .finish_non_exhaustive()
    }
}

impl UpstreamResponse {
    /// Reads the whole body, failing once it grows beyond `limit` bytes.
    pub async fn collect(self, limit: usize) -> Result<Bytes, UpstreamError> {
        collect_body(self.body, limit).await
    }
}

/// Reads a body stream to its end, bounded.
pub async fn collect_body(mut body: BodyStream, limit: usize) -> Result<Bytes, UpstreamError> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > limit {
            return Err(UpstreamError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The HTTP clients. Cheap to share (`Arc`); a gateway builds one per serving thread, so
/// each thread keeps its own upstream connections.
pub struct UpstreamClient {
    cfg: UpstreamConfig,
    /// Accounts without a proxy (the hot path): hyper's HTTP/1.1 connections over rustls,
    /// pooled by [`pool::Pool`]. A gateway builds one client per serving thread.
    direct: Arc<pool::Pool>,
    /// Accounts with a proxy go through reqwest, which speaks HTTP CONNECT and SOCKS.
    proxied: Mutex<HashMap<String, reqwest::Client>>,
    codex_user_agent: HeaderValue,
    own_user_agent: HeaderValue,
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("codex_version", &self.cfg.codex_version)
            .finish_non_exhaustive()
    }
}

/// Makes ring the process's rustls provider (reqwest is built without one). Idempotent; a
/// provider installed earlier by the host stays.
pub fn install_crypto_provider() {
    // Err only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl UpstreamClient {
    pub fn new(cfg: UpstreamConfig) -> Result<Arc<Self>, UpstreamError> {
        install_crypto_provider();
        let direct = pool::Pool::new(
            build_connector(&cfg)?,
            cfg.pool_idle_timeout,
            cfg.pool_max_idle_per_host,
        );
        let codex_user_agent = HeaderValue::from_str(&codex_user_agent(&cfg.codex_version))
            .map_err(|_| UpstreamError::Config("codex_version has invalid characters".into()))?;
        let own_user_agent =
            HeaderValue::from_static(concat!("poolgate/", env!("CARGO_PKG_VERSION")));
        Ok(Arc::new(UpstreamClient {
            cfg,
            direct,
            proxied: Mutex::new(HashMap::new()),
            codex_user_agent,
            own_user_agent,
        }))
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    /// The reqwest client of a proxy (one per distinct proxy URL).
    fn proxied_client(&self, url: &str) -> Result<reqwest::Client, UpstreamError> {
        let mut cache = self
            .proxied
            .lock()
            .map_err(|_| UpstreamError::Config("proxy client cache poisoned".into()))?;
        if let Some(c) = cache.get(url) {
            return Ok(c.clone());
        }
        let client = build_client(&self.cfg, url)?;
        if cache.len() >= self.cfg.max_proxy_clients.max(1) {
            // Proxies rarely change; starting over keeps the cache bounded without LRU state.
            cache.clear();
        }
        cache.insert(url.to_string(), client.clone());
        Ok(client)
    }

    /// The URL an endpoint maps to for an account.
    pub fn url_for(
        &self,
        account: &AccountState,
        endpoint: Endpoint,
    ) -> Result<String, UpstreamError> {
        request_url(account, endpoint, &self.cfg.codex_version)
    }

    /// Sends one attempt to the account's provider.
    pub async fn send(
        &self,
        account: &AccountState,
        req: UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let url = self.url_for(account, req.endpoint)?;
        let headers = match account.account.spec.provider {
            Provider::Codex => self.codex_request_headers(account, &req)?,
            Provider::OpenAi => self.key_request_headers(account, &req, KeyHeader::Bearer)?,
            Provider::AzureOpenAi => self.key_request_headers(account, &req, KeyHeader::Azure)?,
            Provider::Anthropic => self.key_request_headers(account, &req, KeyHeader::Anthropic)?,
        };
        let proxy = account
            .account
            .spec
            .proxy_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty());
        let Some(proxy) = proxy else {
            return self.send_direct(url, req, headers).await;
        };
        // Boxed: few accounts go through a proxy, and reqwest's future is large.
        Box::pin(self.send_proxied(proxy, url, req, headers)).await
    }

    async fn send_proxied(
        &self,
        proxy: &str,
        url: String,
        req: UpstreamRequest<'_>,
        headers: HeaderMap,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let client = self.proxied_client(proxy)?;
        let mut builder = client.request(req.endpoint.method(), url).headers(headers);
        if req.endpoint.method() == Method::POST {
            builder = builder.body(req.body);
        }
        let resp = builder.send().await.map_err(UpstreamError::from_reqwest)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes_stream()
            .map(|r| r.map_err(UpstreamError::from_reqwest_body));
        Ok(UpstreamResponse {
            status,
            headers,
            body: Box::pin(body),
        })
    }

    async fn send_direct(
        &self,
        url: String,
        req: UpstreamRequest<'_>,
        headers: HeaderMap,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let uri = http::Uri::try_from(url).map_err(|_| {
            UpstreamError::Config("the account's base URL is not a valid URL".into())
        })?;
        let method = req.endpoint.method();
        let body = if method == Method::POST {
            req.body
        } else {
            Bytes::new()
        };
        let mut request = http::Request::new(http_body_util::Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let resp = self.direct.send(request).await?;
        let (parts, body) = resp.into_parts();
        let body = http_body_util::BodyDataStream::new(body)
            .map(|r| r.map_err(|e| UpstreamError::Body(error::chain(&e))));
        Ok(UpstreamResponse {
            status: parts.status,
            headers: parts.headers,
            body: Box::pin(body),
        })
    }

    fn codex_request_headers(
        &self,
        account: &AccountState,
        req: &UpstreamRequest<'_>,
    ) -> Result<HeaderMap, UpstreamError> {
        let token = match &account.credentials {
            Some(Credentials::OAuth(t)) if !t.access_token.is_empty() => &t.access_token,
            _ => {
                return Err(UpstreamError::MissingCredentials {
                    account: account.account.id.clone(),
                });
            }
        };
        if matches!(req.endpoint, Endpoint::ChatCompletions | Endpoint::Messages) {
            return Err(UpstreamError::Unsupported {
                provider: Provider::Codex.as_str(),
                endpoint: req.endpoint.as_str(),
            });
        }
        let account_id = account
            .account
            .identity
            .as_ref()
            .map(|i| i.chatgpt_account_id.as_str());
        let installation = installation_id_for(&account.account.id);
        codex::codex_headers(&codex::CodexHeaderInput {
            endpoint: req.endpoint,
            access_token: token.expose(),
            chatgpt_account_id: account_id,
            client_headers: req.client_headers,
            session: req.session.as_ref(),
            default_user_agent: &self.codex_user_agent,
            installation_id: &installation,
            has_body: req.endpoint.method() == Method::POST,
            extra: req.extra_headers,
        })
    }

    /// Headers for the API-key providers: the key where the provider reads it, JSON, the
    /// stream preference, our user agent and (Anthropic) the API version and beta flags.
    fn key_request_headers(
        &self,
        account: &AccountState,
        req: &UpstreamRequest<'_>,
        scheme: KeyHeader,
    ) -> Result<HeaderMap, UpstreamError> {
        let key = match &account.credentials {
            Some(Credentials::ApiKey { key }) if !key.is_empty() => key,
            _ => {
                return Err(UpstreamError::MissingCredentials {
                    account: account.account.id.clone(),
                });
            }
        };
        let mut h = HeaderMap::with_capacity(8);
        match scheme {
            KeyHeader::Bearer => {
                h.insert(AUTHORIZATION, bearer(key.expose())?);
            }
            KeyHeader::Azure => {
                h.insert(
                    HeaderName::from_static("api-key"),
                    secret_value(key.expose())?,
                );
            }
            KeyHeader::Anthropic => {
                h.insert(
                    HeaderName::from_static("x-api-key"),
                    secret_value(key.expose())?,
                );
                let version = req
                    .client_headers
                    .get("anthropic-version")
                    .filter(|v| !v.is_empty())
                    .cloned()
                    .unwrap_or(HeaderValue::from_static(ANTHROPIC_VERSION));
                h.insert(HeaderName::from_static("anthropic-version"), version);
                // Beta flags change what the API accepts (e.g. newer tool types); without
                // them the client's request may be refused.
                for v in req.client_headers.get_all("anthropic-beta") {
                    h.append(HeaderName::from_static("anthropic-beta"), v.clone());
                }
            }
        }
        if req.endpoint.method() == Method::POST {
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        h.insert(
            ACCEPT,
            HeaderValue::from_static(if req.stream {
                "text/event-stream"
            } else {
                "application/json"
            }),
        );
        h.insert(USER_AGENT, self.own_user_agent.clone());
        for (n, v) in req.extra_headers {
            h.insert(n.clone(), v.clone());
        }
        Ok(h)
    }
}

/// Where an API-key provider reads its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyHeader {
    /// `Authorization: Bearer` (OpenAI and compatibles).
    Bearer,
    /// `api-key` (Azure OpenAI).
    Azure,
    /// `x-api-key` (Anthropic).
    Anthropic,
}

/// A secret as a header value, marked sensitive so it never shows in debug output.
fn secret_value(secret: &str) -> Result<HeaderValue, UpstreamError> {
    let mut v = HeaderValue::from_str(secret).map_err(|_| {
        UpstreamError::Config(
            "the account's credential contains characters not allowed in a header".into(),
        )
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// `Bearer <secret>`, marked sensitive so it never shows in debug output.
pub(crate) fn bearer(secret: &str) -> Result<HeaderValue, UpstreamError> {
    let mut v = HeaderValue::from_str(&format!("Bearer {secret}")).map_err(|_| {
        UpstreamError::Config(
            "the account's credential contains characters not allowed in a header".into(),
        )
    })?;
    v.set_sensitive(true);
    Ok(v)
}

/// The URL an endpoint maps to for an account (see the crate docs).
pub fn request_url(
    account: &AccountState,
    endpoint: Endpoint,
    codex_version: &str,
) -> Result<String, UpstreamError> {
    let a = &account.account;
    let provider = a.spec.provider;
    // Only Anthropic speaks Messages natively; the others get it by translation.
    if (endpoint == Endpoint::Messages) != (provider == Provider::Anthropic) {
        return Err(UpstreamError::Unsupported {
            provider: provider.as_str(),
            endpoint: endpoint.as_str(),
        });
    }
    match provider {
        Provider::Codex => {
            let base = codex_base_url(a.spec.base_url.as_deref());
            Ok(match endpoint {
                Endpoint::Models => format!("{base}/models?client_version={codex_version}"),
                e => format!("{base}{}", e.path()),
            })
        }
        Provider::OpenAi => {
            let base = a
                .spec
                .base_url
                .as_deref()
                .unwrap_or(OPENAI_DEFAULT_BASE_URL)
                .trim_end_matches('/');
            Ok(format!("{base}{}", endpoint.path()))
        }
        Provider::AzureOpenAi => {
            let unsupported = || UpstreamError::Unsupported {
                provider: Provider::AzureOpenAi.as_str(),
                endpoint: endpoint.as_str(),
            };
            let (Some(base), Some(az)) = (a.spec.base_url.as_deref(), a.spec.azure.as_ref()) else {
                return Err(UpstreamError::Config(
                    "the Azure OpenAI account has no endpoint or deployment".into(),
                ));
            };
            // People paste the endpoint with or without the `/openai` suffix.
            let base = base.trim_end_matches('/');
            let base = base.strip_suffix("/openai").unwrap_or(base);
            let version = &az.api_version;
            match endpoint {
                Endpoint::ChatCompletions => Ok(format!(
                    "{base}/openai/deployments/{}/chat/completions?api-version={version}",
                    az.deployment
                )),
                // The Responses API takes the deployment as the body's `model`.
                Endpoint::Responses => Ok(format!("{base}/openai/responses?api-version={version}")),
                _ => Err(unsupported()),
            }
        }
        Provider::Anthropic => {
            let base = a
                .spec
                .base_url
                .as_deref()
                .unwrap_or(ANTHROPIC_DEFAULT_BASE_URL)
                .trim_end_matches('/');
            // Accept the base with or without the API's `/v1`.
            let base = base.strip_suffix("/v1").unwrap_or(base);
            Ok(format!("{base}/v1/messages"))
        }
    }
}

/// The dialer of the direct pool: TCP (`TCP_NODELAY`, keep-alive, connect timeout) and
/// rustls with the platform's certificate verifier for https.
fn build_connector(
    cfg: &UpstreamConfig,
) -> Result<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    UpstreamError,
> {
    use hyper_util::client::legacy::connect::HttpConnector;

    let mut http = HttpConnector::new();
    // https URLs are handed to the TLS layer above.
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_keepalive(Some(cfg.tcp_keepalive));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_platform_verifier(rustls::crypto::ring::default_provider())
        .map_err(|e| {
            UpstreamError::Config(format!("cannot set up TLS certificate verification: {e}"))
        })?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http))
}

/// The client of the control plane's one-off calls (OAuth token exchange, refresh, usage):
/// bounded in time, never following a redirect (one would carry a code, refresh token or
/// bearer to another host). The error is already the message callers wrap.
pub(crate) fn credential_client(
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(request_timeout)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {}", error::chain(&e)))
}

/// A client whose every connection goes through `proxy` (`http`, `https`, `socks5`,
/// `socks5h`); environment proxies are never used, so routing never depends on the process
/// environment.
fn build_client(cfg: &UpstreamConfig, proxy: &str) -> Result<reqwest::Client, UpstreamError> {
    let proxy = reqwest::Proxy::all(proxy).map_err(|_| {
        UpstreamError::Config("the account's proxy_url is not a valid proxy URL".into())
    })?;
    reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .connect_timeout(cfg.connect_timeout)
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
        .tcp_keepalive(cfg.tcp_keepalive)
        // Upstream redirects are never part of these APIs; following one could leak the
        // bearer to another host.
        .redirect(reqwest::redirect::Policy::none())
        .proxy(proxy)
        .build()
        .map_err(|e| {
            UpstreamError::Config(format!(
                "cannot build the HTTP client: {}",
                error::chain(&e)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use poolgate_core::{Account, AccountSpec, AccountStatus, ManagedBy, Secret};

    fn account(provider: Provider, base: Option<&str>) -> AccountState {
        let mut spec = AccountSpec::new(provider, "a");
        spec.base_url = base.map(str::to_string);
        AccountState {
            account: Account {
                id: "acc_1".into(),
                spec,
                status: AccountStatus::Active,
                status_reason: None,
                identity: None,
                managed_by: ManagedBy::Api,
                managed_ref: None,
                has_credentials: true,
                created_at_ms: 0,
                updated_at_ms: 0,
            },
            credentials: Some(Credentials::ApiKey {
                key: Secret::new("sk-test"),
            }),
            usage: None,
            cooldown_until_ms: None,
        }
    }

    #[test]
    fn url_mapping() {
        let c = account(Provider::Codex, None);
        assert_eq!(
            request_url(&c, Endpoint::Responses, "0.130.0").unwrap(),
            "https://chatgpt.com/backend-api/codex/responses"
        );
        assert_eq!(
            request_url(&c, Endpoint::ResponsesCompact, "0.130.0").unwrap(),
            "https://chatgpt.com/backend-api/codex/responses/compact"
        );
        assert_eq!(
            request_url(&c, Endpoint::Models, "0.130.0").unwrap(),
            "https://chatgpt.com/backend-api/codex/models?client_version=0.130.0"
        );
        let bare = account(Provider::Codex, Some("https://chatgpt.com/"));
        assert_eq!(
            request_url(&bare, Endpoint::Responses, "1").unwrap(),
            "https://chatgpt.com/backend-api/codex/responses"
        );
        let mock = account(Provider::Codex, Some("http://127.0.0.1:9/codex/"));
        assert_eq!(
            request_url(&mock, Endpoint::Responses, "1").unwrap(),
            "http://127.0.0.1:9/codex/responses"
        );
        let o = account(Provider::OpenAi, None);
        assert_eq!(
            request_url(&o, Endpoint::ChatCompletions, "1").unwrap(),
            "https://api.openai.com/v1/chat/completions"
        );
        let o = account(Provider::OpenAi, Some("http://127.0.0.1:9/v1/"));
        assert_eq!(
            request_url(&o, Endpoint::Responses, "1").unwrap(),
            "http://127.0.0.1:9/v1/responses"
        );
        assert!(matches!(
            request_url(
                &account(Provider::Anthropic, None),
                Endpoint::Responses,
                "1"
            ),
            Err(UpstreamError::Unsupported { .. })
        ));
        for p in [Provider::Codex, Provider::OpenAi] {
            assert!(matches!(
                request_url(&account(p, None), Endpoint::Messages, "1"),
                Err(UpstreamError::Unsupported { .. })
            ));
        }
        assert_eq!(
            request_url(&account(Provider::Anthropic, None), Endpoint::Messages, "1").unwrap(),
            "https://api.anthropic.com/v1/messages"
        );
        for base in ["http://127.0.0.1:9", "http://127.0.0.1:9/v1/"] {
            assert_eq!(
                request_url(
                    &account(Provider::Anthropic, Some(base)),
                    Endpoint::Messages,
                    "1"
                )
                .unwrap(),
                "http://127.0.0.1:9/v1/messages"
            );
        }
    }

    fn azure(base: &str) -> AccountState {
        let mut a = account(Provider::AzureOpenAi, Some(base));
        a.account.spec.azure = Some(poolgate_core::AzureConfig {
            deployment: "gpt4o-prod".into(),
            api_version: "2025-04-01-preview".into(),
        });
        a
    }

    #[test]
    fn azure_urls() {
        for base in [
            "https://res.openai.azure.com",
            "https://res.openai.azure.com/",
            "https://res.openai.azure.com/openai/",
        ] {
            let a = azure(base);
            assert_eq!(
                request_url(&a, Endpoint::ChatCompletions, "1").unwrap(),
                "https://res.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2025-04-01-preview"
            );
            assert_eq!(
                request_url(&a, Endpoint::Responses, "1").unwrap(),
                "https://res.openai.azure.com/openai/responses?api-version=2025-04-01-preview"
            );
        }
        let a = azure("https://res.openai.azure.com");
        for e in [Endpoint::ResponsesCompact, Endpoint::Messages] {
            assert!(matches!(
                request_url(&a, e, "1"),
                Err(UpstreamError::Unsupported { .. })
            ));
        }
        let mut bare = account(Provider::AzureOpenAi, None);
        bare.account.spec.azure = None;
        assert!(matches!(
            request_url(&bare, Endpoint::Responses, "1"),
            Err(UpstreamError::Config(_))
        ));
    }

    fn request<'a>(endpoint: Endpoint, client: &'a HeaderMap) -> UpstreamRequest<'a> {
        UpstreamRequest {
            endpoint,
            body: Bytes::from_static(b"{}"),
            stream: true,
            client_headers: client,
            session: None,
            extra_headers: &[],
        }
    }

    #[test]
    fn key_headers_per_provider() {
        let c = UpstreamClient::new(UpstreamConfig::default()).unwrap();
        let none = HeaderMap::new();
        let a = azure("https://res.openai.azure.com");
        let h = c
            .key_request_headers(&a, &request(Endpoint::Responses, &none), KeyHeader::Azure)
            .unwrap();
        assert_eq!(h.get("api-key").unwrap(), "sk-test");
        assert!(h.get("api-key").unwrap().is_sensitive());
        assert!(h.get(AUTHORIZATION).is_none());
        assert_eq!(h.get(ACCEPT).unwrap(), "text/event-stream");

        let an = account(Provider::Anthropic, None);
        let h = c
            .key_request_headers(
                &an,
                &request(Endpoint::Messages, &none),
                KeyHeader::Anthropic,
            )
            .unwrap();
        assert_eq!(h.get("x-api-key").unwrap(), "sk-test");
        assert!(h.get("x-api-key").unwrap().is_sensitive());
        assert_eq!(h.get("anthropic-version").unwrap(), ANTHROPIC_VERSION);
        assert!(h.get("anthropic-beta").is_none());
        assert!(h.get(AUTHORIZATION).is_none());

        // The client's version and beta flags go along; its own key never does.
        let mut client = HeaderMap::new();
        client.insert("anthropic-version", HeaderValue::from_static("2099-01-01"));
        client.append("anthropic-beta", HeaderValue::from_static("a-2025"));
        client.append("anthropic-beta", HeaderValue::from_static("b-2025"));
        client.insert("x-api-key", HeaderValue::from_static("pk-platform"));
        let h = c
            .key_request_headers(
                &an,
                &request(Endpoint::Messages, &client),
                KeyHeader::Anthropic,
            )
            .unwrap();
        assert_eq!(h.get("anthropic-version").unwrap(), "2099-01-01");
        let betas: Vec<_> = h.get_all("anthropic-beta").iter().collect();
        assert_eq!(betas, ["a-2025", "b-2025"]);
        assert_eq!(h.get("x-api-key").unwrap(), "sk-test");

        let mut bad = account(Provider::Anthropic, None);
        bad.credentials = Some(Credentials::ApiKey {
            key: Secret::new("bad\nkey"),
        });
        let e = c
            .key_request_headers(
                &bad,
                &request(Endpoint::Messages, &none),
                KeyHeader::Anthropic,
            )
            .unwrap_err();
        assert!(!e.to_string().contains("bad"));
    }

    #[test]
    fn bearer_is_sensitive_and_rejects_bad_bytes() {
        let v = bearer("tok").unwrap();
        assert!(v.is_sensitive());
        assert_eq!(v.to_str().unwrap(), "Bearer tok");
        let e = bearer("bad\nvalue").unwrap_err();
        assert!(!e.to_string().contains("bad"));
    }
}
