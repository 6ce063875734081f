//! A mock of the upstream providers poolgate fronts, for tests, benchmarks and the README
//! demo: the ChatGPT Codex backend (SSE `/responses`, compact, models), the usage endpoint,
//! the OAuth token endpoint, the OpenAI API (chat completions, responses, models), the
//! Anthropic Messages API and Azure OpenAI (chat completions per deployment, responses),
//! with fault injection per account.
//!
//! Accounts are told apart by the token they carry (OAuth access token or API key: the bearer
//! token, Anthropic's `x-api-key`, Azure's `api-key`); any token is accepted unless a
//! [`Fault`] says otherwise. Answers are deterministic: the text is
//! `echo: <last user text>` (or `tool result: <output>` after a tool call, or a function call
//! when the last user message says "call the tool" / "use tool NAME" and function tools are
//! offered), split into `x-mock-deltas` deltas (default 4) with `x-mock-delta-delay-ms`
//! between them.
//!
//! | Route | |
//! |---|---|
//! | `POST /backend-api/codex/responses` | Codex SSE; refuses what the real backend refuses |
//! | `POST /backend-api/codex/responses/compact` | JSON `{"output":[…]}` |
//! | `GET /backend-api/codex/models` | `{"models":[…]}` |
//! | `GET /backend-api/wham/usage`, `GET /api/codex/usage` | usage windows per token |
//! | `POST /oauth/token` | `refresh_token` (rotating, single use) and `authorization_code` |
//! | `GET /oauth/authorize`, `POST /api/accounts/deviceauth/{usercode,token}` | logins, see `login.rs` |
//! | `POST /v1/chat/completions`, `POST /v1/responses`, `GET /v1/models` | OpenAI API |
//! | `POST /v1/messages` (also `?beta=true`) | Anthropic Messages, JSON or SSE; key in `x-api-key` (or bearer); needs `anthropic-version` |
//! | `POST /openai/deployments/{d}/chat/completions?api-version=V` | Azure chat completions; key in `api-key`; `model` in the answer is `{d}` |
//! | `POST /openai/responses?api-version=V` | Azure responses; the body's `model` is the deployment |
//! | `/__mock/…` | control API, see [`control`] |
//!
//! Azure answers 404 `Resource not found` without `api-version` and 404 `DeploymentNotFound`
//! for the deployment named `missing`; any other deployment name is served.
//!
//! The server speaks HTTP/1.1 (keep-alive) and HTTP/2 with prior knowledge, sets `TCP_NODELAY`
//! on every connection, and sends an unpaced stream as one chunk.

mod anthropic;
mod body;
mod codex;
pub mod control;
mod fault;
mod login;
mod oauth;
mod openai;
mod responses;
mod server;
mod state;
mod turn;
mod usage;
mod util;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use codex::CODEX_MODELS_LIST;
pub use fault::{Fault, FaultRule};
pub use login::MockDeviceLogin;
pub use oauth::{DEFAULT_CLIENT_ID, Identity, IssuedTokens};
pub use openai::OPENAI_MODELS_LIST;
pub use state::{Pacing, RecordedRequest};
pub use usage::{MockLimit, MockUsage, MockWindow};

use server::Inner;

/// How a mock upstream is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockConfig {
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// How many recent requests to keep for [`MockUpstream::requests`] (0 disables recording,
    /// which is what a benchmark wants).
    pub record_capacity: usize,
    /// Default number of text deltas per answer.
    pub deltas: u32,
    /// Default pause before each delta, in milliseconds.
    pub delta_delay_ms: u64,
    /// Lifetime of issued access tokens (the `exp` claim and `expires_in`).
    pub access_token_ttl_secs: u64,
    /// Larger request bodies get 413.
    pub max_body_bytes: usize,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            record_capacity: 1000,
            deltas: 4,
            delta_delay_ms: 0,
            access_token_ttl_secs: 10 * 86_400,
            max_body_bytes: 64 * 1024 * 1024,
        }
    }
}

/// A running mock upstream. Dropping it stops the server.
pub struct MockUpstream {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MockUpstream {
    /// Starts a mock on 127.0.0.1 with a free port and the default settings.
    pub async fn start() -> anyhow::Result<MockUpstream> {
        MockUpstream::start_with(MockConfig::default()).await
    }

    pub async fn start_with(config: MockConfig) -> anyhow::Result<MockUpstream> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr().context("no local address")?;
        let mut nonce = [0u8; 4];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let inner = Arc::new(Inner {
            state: state::State::new(config.record_capacity),
            config,
            url: format!("http://{addr}"),
            nonce: u32::from_le_bytes(nonce),
        });
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(server::serve(listener, inner.clone(), stop_rx));
        Ok(MockUpstream {
            inner,
            addr,
            stop,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        self.inner.url.clone()
    }

    /// The Codex backend base (`{url}/backend-api/codex`), an account's base URL override.
    pub fn codex_base_url(&self) -> String {
        format!("{}/backend-api/codex", self.inner.url)
    }

    /// The usage base (`{url}/backend-api`; the poller appends `/wham/usage`).
    pub fn usage_base_url(&self) -> String {
        format!("{}/backend-api", self.inner.url)
    }

    /// The OpenAI API base (`{url}/v1`).
    pub fn openai_base_url(&self) -> String {
        format!("{}/v1", self.inner.url)
    }

    /// The Anthropic API base (`{url}`; the client appends `/v1/messages`), as
    /// `ANTHROPIC_BASE_URL` or an Anthropic account's base URL.
    pub fn anthropic_base_url(&self) -> String {
        self.inner.url.clone()
    }

    /// The Azure OpenAI resource endpoint (`{url}`; requests go to
    /// `{url}/openai/deployments/{deployment}/chat/completions?api-version=V` and
    /// `{url}/openai/responses?api-version=V`).
    pub fn azure_endpoint(&self) -> String {
        self.inner.url.clone()
    }

    /// The OAuth issuer (`{url}`; the token endpoint is `{url}/oauth/token`).
    pub fn oauth_issuer(&self) -> String {
        self.inner.url.clone()
    }

    /// Replaces the faults of `token` with this one: `Fault::Unauthorized` applies until
    /// cleared, `Fault::Unauthorized.times(2)` to the next two requests only.
    pub fn set_fault(&self, token: &str, fault: impl Into<FaultRule>) {
        self.inner.state.set_fault(token, fault.into(), false);
    }

    /// Queues a fault after the ones `token` already has (each applies in turn once the
    /// previous has run out).
    pub fn add_fault(&self, token: &str, fault: impl Into<FaultRule>) {
        self.inner.state.set_fault(token, fault.into(), true);
    }

    /// Removes the faults of one token.
    pub fn clear_fault(&self, token: &str) {
        self.inner.state.clear_faults(Some(token));
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.inner.state.clear_faults(None);
    }

    /// What the usage endpoint and the `x-codex-*` headers report for `token`; resets count
    /// from now.
    pub fn set_usage(&self, token: &str, usage: MockUsage) {
        self.inner.state.set_usage(token, usage, util::now_secs());
    }

    /// Stream pacing for `token` (request headers still win).
    pub fn set_pacing(&self, token: &str, pacing: Pacing) {
        self.inner.state.set_pacing(token, pacing);
    }

    /// The most recent requests (oldest first), control API calls excluded.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.state.requests()
    }

    /// The recorded requests to one path (without query).
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.split('?').next() == Some(path))
            .collect()
    }

    pub fn clear_requests(&self) {
        self.inner.state.clear_requests();
    }

    /// Requests that carried `token` as their bearer (or refresh token/code on the OAuth
    /// endpoint), including refused ones.
    pub fn request_count(&self, token: &str) -> u64 {
        self.inner.state.request_count(token)
    }

    /// Mints a token set for an account, as a completed login would, and remembers its
    /// refresh token (single use) for the token endpoint.
    pub fn issue_tokens(&self, email: &str, account_id: &str) -> IssuedTokens {
        oauth::issue(
            &self.inner,
            Arc::new(Identity::new(email, account_id)),
            DEFAULT_CLIENT_ID,
        )
    }

    /// Who the next logins (authorize page, device approvals) are; `None` derives a new
    /// identity per code.
    pub fn set_login_identity(&self, identity: Option<Identity>) {
        login::set_identity(&self.inner, identity);
    }

    /// How device logins started from now on behave.
    pub fn set_device_login(&self, settings: MockDeviceLogin) {
        login::set_device(&self.inner, settings);
    }

    /// Approves the pending device login with this user code (false: there is none).
    pub fn approve_device(&self, user_code: &str) -> bool {
        login::decide_device(&self.inner, user_code, true)
    }

    /// Declines the pending device login with this user code (false: there is none).
    pub fn deny_device(&self, user_code: &str) -> bool {
        login::decide_device(&self.inner, user_code, false)
    }

    /// Stops accepting, closes every connection and waits for the accept loop to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
