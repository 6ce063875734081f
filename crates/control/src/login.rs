//! `poolgate.v1.LoginService`: ChatGPT/Codex OAuth login driven by `poolctl login` (seed spec
//! §3.1), so a laptop can add accounts to a remote cluster.
//!
//! The control plane creates the PKCE verifier and the state and keeps them in memory, in a
//! session on the replica that started the login; the client only opens the authorize URL and
//! carries the redirect back (browser and manual modes), or shows the device code while the
//! control plane polls the issuer (device mode). Tokens become an account through
//! `Store::import_codex`, like an auth.json import, so a login the pool already has updates
//! that account.
//!
//! Sessions expire after `LoginConfig::session_ttl` and stay known for as long again, so a
//! late call gets DEADLINE_EXCEEDED (or FAILED_PRECONDITION for a completed session) instead
//! of NOT_FOUND. At most `LoginConfig::max_sessions` are in progress at once. The verifier,
//! the codes and the tokens never reach a log line, an audit event or a status message.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use poolgate_core::authjson::{ImportedCodexAuth, parse_item};
use poolgate_core::key::{hash_secret, hashes_equal};
use poolgate_core::{AccountSpec, OAuthTokens, Provider, Secret};
use poolgate_proto::v1 as pb;
use poolgate_proto::v1::login_service_server::{LoginService, LoginServiceServer};
use poolgate_store::{ImportOutcome, Store, now_ms};
use poolgate_upstream::oauth::{
    DEFAULT_REDIRECT_URI, DeviceCode, OAuthClient, OAuthError, Pkce, authorize_url, parse_callback,
    random_state,
};
use tonic::{Code, Request, Response, Status};

use crate::auth::{Authenticator, BootstrapToken, Caller, NodeToken, generate_secret};
use crate::convert;
use crate::error::ApiError;
use crate::import::{OUTCOME_CREATED, OUTCOME_UPDATED};
use crate::metrics::Metrics;

pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(10 * 60);
pub const DEFAULT_MAX_SESSIONS: usize = 100;

pub const MODE_BROWSER: &str = "browser";
pub const MODE_MANUAL: &str = "manual";
pub const MODE_DEVICE: &str = "device";

/// Settings of the login sessions (the issuer itself is `ControlConfig::oauth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginConfig {
    /// Where the issuer sends the browser back (`POOLGATE_OAUTH_REDIRECT_URI`).
    pub redirect_uri: String,
    /// How long a session may take from start to completion.
    pub session_ttl: Duration,
    /// Sessions in progress at once on this replica.
    pub max_sessions: usize,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig {
            redirect_uri: DEFAULT_REDIRECT_URI.into(),
            session_ttl: DEFAULT_SESSION_TTL,
            max_sessions: DEFAULT_MAX_SESSIONS,
        }
    }
}

type RpcResult<T> = Result<Response<T>, Status>;

enum Kind {
    Browser {
        pkce: Pkce,
        /// Kept as a hash: compared in constant time, never shown.
        state_hash: String,
        redirect_uri: String,
    },
    Device {
        interval_secs: u32,
        task: tokio::task::AbortHandle,
    },
}

enum Phase {
    Pending,
    /// A CompleteLogin is exchanging the code.
    Completing,
    Done(Box<pb::LoginResult>),
    Failed(Code, String),
}

struct Session {
    owner: String,
    group: String,
    name: Option<String>,
    expires_at: Instant,
    kind: Kind,
    phase: Phase,
}

impl Session {
    fn in_progress(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Pending | Phase::Completing) && now < self.expires_at
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Kind::Device { task, .. } = &self.kind {
            task.abort();
        }
    }
}

#[derive(Clone)]
pub struct LoginApi {
    store: Arc<dyn Store>,
    auth: Authenticator,
    metrics: Arc<Metrics>,
    oauth: OAuthClient,
    cfg: LoginConfig,
    sessions: Arc<Mutex<HashMap<String, Session>>>,
}

impl std::fmt::Debug for LoginApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginApi")
            .field("issuer", &self.oauth.config().issuer)
            .field("redirect_uri", &self.cfg.redirect_uri)
            .finish_non_exhaustive()
    }
}

fn unknown(id: &str) -> Status {
    Status::not_found(format!(
        "no login session {id:?} on this control-plane replica: it was never started here, was \
         cancelled, or expired a while ago (send every call of a login to the replica that \
         started it)"
    ))
}

fn expired(id: &str, ttl: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "login session {id} expired (sessions last {}); start a new login",
        humantime::format_duration(ttl)
    ))
}

/// An issuer failure as a status; the error texts are already free of secrets.
fn oauth_status(issuer: &str, e: &OAuthError) -> Status {
    if e.is_invalid_grant() {
        return Status::failed_precondition(format!(
            "the issuer refused the authorization code: it was already used, has expired or \
             was issued for another login; start a new login ({e})"
        ));
    }
    match e {
        OAuthError::DeviceExpired => {
            Status::deadline_exceeded(format!("{e}; start a new login (poolctl login --device)"))
        }
        OAuthError::DeviceDenied | OAuthError::DeviceNotEnabled | OAuthError::Rejected { .. }
            if !e.is_transient() =>
        {
            Status::failed_precondition(e.to_string())
        }
        e if e.is_transient() => {
            Status::unavailable(format!("OAuth issuer {issuer}: {e}; try again shortly"))
        }
        OAuthError::Callback(_) => Status::invalid_argument(e.to_string()),
        OAuthError::Status { .. } => {
            Status::failed_precondition(format!("OAuth issuer {issuer}: {e}"))
        }
        _ => {
            tracing::error!(error = %e, "OAuth login failed");
            Status::internal(format!("OAuth login failed: {e}"))
        }
    }
}

fn mode_of(s: &str) -> Result<&'static str, Status> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | MODE_BROWSER => Ok(MODE_BROWSER),
        MODE_MANUAL => Ok(MODE_MANUAL),
        MODE_DEVICE => Ok(MODE_DEVICE),
        other => Err(Status::invalid_argument(format!(
            "invalid mode {other:?}: expected browser, manual or device"
        ))),
    }
}

fn ms_from_now(d: Duration) -> i64 {
    now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Turns issued tokens into what an auth.json import produces, so identity, labels and
/// dedupe follow the same rules.
fn imported(tokens: OAuthTokens, name: Option<&str>) -> Result<ImportedCodexAuth, Status> {
    let doc = serde_json::json!({"tokens": {
        "id_token": tokens.id_token.expose(),
        "access_token": tokens.access_token.expose(),
        "refresh_token": tokens.refresh_token.expose(),
    }});
    let mut auth = parse_item(&doc).map_err(|e| {
        tracing::error!(error = %e, "the issuer's tokens do not describe a ChatGPT login");
        Status::internal(format!(
            "the issuer returned tokens poolgate cannot use: {e}"
        ))
    })?;
    auth.tokens = tokens;
    if let Some(n) = name {
        auth.label = n.to_string();
    }
    Ok(auth)
}

impl LoginApi {
    pub fn new(
        store: Arc<dyn Store>,
        bootstrap: Option<BootstrapToken>,
        node_token: Option<NodeToken>,
        metrics: Arc<Metrics>,
        oauth: OAuthClient,
        cfg: LoginConfig,
    ) -> Self {
        let auth = Authenticator::new(bootstrap, node_token, store.clone());
        LoginApi {
            store,
            auth,
            metrics,
            oauth,
            cfg,
            sessions: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn into_server(self) -> LoginServiceServer<Self> {
        LoginServiceServer::new(self)
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // Nothing here can be left half-updated by a panic; keep serving.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn call<T, R, F, Fut>(
        &self,
        method: &'static str,
        request: Request<T>,
        f: F,
    ) -> RpcResult<R>
    where
        F: FnOnce(Caller, T) -> Fut,
        Fut: Future<Output = Result<R, ApiError>>,
    {
        // Every login call changes state or carries secrets: admin role only.
        crate::service::rpc(&self.auth, &self.metrics, method, true, request, f).await
    }

    /// Drops sessions past their grace period and checks there is room for one more.
    fn make_room(&self, sessions: &mut HashMap<String, Session>) -> Result<(), Status> {
        let now = Instant::now();
        let ttl = self.cfg.session_ttl;
        sessions.retain(|_, s| now < s.expires_at + ttl);
        let busy = sessions.values().filter(|s| s.in_progress(now)).count();
        if busy >= self.cfg.max_sessions {
            return Err(Status::resource_exhausted(format!(
                "{busy} logins are in progress on this replica (at most {}); finish or cancel one, \
                 or wait for them to expire",
                self.cfg.max_sessions
            )));
        }
        Ok(())
    }

    async fn start(
        &self,
        caller: Caller,
        r: pb::StartLoginRequest,
    ) -> Result<pb::StartLoginResponse, ApiError> {
        let mode = mode_of(&r.mode)?;
        let name = Some(r.name.trim()).filter(|n| !n.is_empty());
        let mut probe = AccountSpec::new(Provider::Codex, name.unwrap_or("login"));
        probe.group = r.group.trim().to_string();
        let probe = probe.validate()?;
        let workspace = r.workspace_id.trim();
        if workspace.len() > 256
            || workspace
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ApiError::invalid("invalid workspace_id"));
        }
        self.make_room(&mut self.sessions())?;
        let id = generate_secret("lgn_").map_err(|e| Status::internal(e.to_string()))?;
        let ttl = self.cfg.session_ttl;
        let expires_at = Instant::now() + ttl;
        let mut response = pb::StartLoginResponse {
            session_id: id.clone(),
            mode: mode.into(),
            expires_at_ms: ms_from_now(ttl),
            ..Default::default()
        };
        let kind = if mode == MODE_DEVICE {
            let device = self
                .oauth
                .request_device_code()
                .await
                .map_err(|e| oauth_status(&self.oauth.config().issuer, &e))?;
            response.user_code.clone_from(&device.user_code);
            response
                .verification_url
                .clone_from(&device.verification_url);
            let interval_secs = u32::try_from(device.interval.as_secs()).unwrap_or(u32::MAX);
            response.interval_secs = interval_secs;
            let task = tokio::spawn(self.clone().run_device(
                id.clone(),
                device,
                tokio::time::Instant::now() + ttl,
            ));
            Kind::Device {
                interval_secs,
                task: task.abort_handle(),
            }
        } else {
            let pkce = Pkce::generate().map_err(|e| Status::internal(e.to_string()))?;
            let state = random_state().map_err(|e| Status::internal(e.to_string()))?;
            let redirect_uri = self.cfg.redirect_uri.clone();
            response.authorize_url = authorize_url(
                self.oauth.config(),
                &redirect_uri,
                pkce.challenge(),
                &state,
                Some(workspace),
            );
            response.redirect_uri.clone_from(&redirect_uri);
            Kind::Browser {
                pkce,
                state_hash: hash_secret(&state),
                redirect_uri,
            }
        };
        let session = Session {
            owner: caller.name.clone(),
            group: probe.group,
            name: name.map(|_| probe.name),
            expires_at,
            kind,
            phase: Phase::Pending,
        };
        {
            let mut sessions = self.sessions();
            // Another start may have taken the last slot while the issuer answered.
            if let Err(e) = self.make_room(&mut sessions) {
                drop(session);
                return Err(e.into());
            }
            sessions.insert(id.clone(), session);
        }
        tracing::info!(session = %id, mode, actor = %caller.name, "login started");
        Ok(response)
    }

    /// Checks that `id` names a live session of `caller`; runs `f` on it under the lock.
    fn with_session<T>(
        &self,
        caller: &Caller,
        id: &str,
        f: impl FnOnce(&mut Session) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let id = id.trim();
        if id.is_empty() {
            return Err(Status::invalid_argument("session_id is required"));
        }
        let mut sessions = self.sessions();
        let Some(s) = sessions.get_mut(id) else {
            return Err(unknown(id));
        };
        if s.owner != caller.name {
            return Err(Status::permission_denied(format!(
                "login session {id} was started with another admin token; finish it with that \
                 token"
            )));
        }
        if matches!(s.phase, Phase::Pending) && Instant::now() >= s.expires_at {
            s.phase = Phase::Failed(
                Code::DeadlineExceeded,
                expired(id, self.cfg.session_ttl).message().into(),
            );
        }
        f(s)
    }

    async fn complete(
        &self,
        caller: Caller,
        r: pb::CompleteLoginRequest,
    ) -> Result<pb::LoginResult, ApiError> {
        let id = r.session_id.trim().to_string();
        let cb = if r.callback_url.trim().is_empty() {
            poolgate_upstream::oauth::CallbackParams {
                code: Some(r.code.trim())
                    .filter(|c| !c.is_empty())
                    .map(Secret::new),
                state: Some(r.state.trim().to_string()).filter(|s| !s.is_empty()),
                ..Default::default()
            }
        } else {
            parse_callback(&r.callback_url).map_err(|e| Status::invalid_argument(e.to_string()))?
        };
        let (code, verifier, redirect_uri, group, name) = self.with_session(&caller, &id, |s| {
            let Kind::Browser {
                pkce,
                state_hash,
                redirect_uri,
            } = &s.kind
            else {
                return Err(Status::failed_precondition(format!(
                    "login session {id} is a device login: call PollDeviceLogin"
                )));
            };
            match &s.phase {
                Phase::Pending => {}
                Phase::Completing => {
                    return Err(Status::failed_precondition(format!(
                        "login session {id} is being completed by another call"
                    )));
                }
                Phase::Done(_) => {
                    return Err(Status::failed_precondition(format!(
                        "login session {id} already completed: its authorization code has been \
                         used; start a new login"
                    )));
                }
                Phase::Failed(code, msg) => return Err(Status::new(*code, msg.clone())),
            }
            if let Some(error) = &cb.error {
                let detail = cb
                    .error_description
                    .as_deref()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default();
                return Err(Status::failed_precondition(format!(
                    "the issuer refused the login ({error}{detail}); start a new login"
                )));
            }
            let Some(state) = &cb.state else {
                return Err(Status::invalid_argument(
                    "the callback has no state: pass the whole address the browser was sent back \
                     to (…/auth/callback?code=…&state=…)",
                ));
            };
            if !hashes_equal(&hash_secret(state), state_hash) {
                return Err(Status::invalid_argument(format!(
                    "the callback's state does not match login session {id}: it belongs to \
                     another login (or was altered); use the URL of this session's login"
                )));
            }
            let Some(code) = cb.code.clone() else {
                return Err(Status::invalid_argument(
                    "the callback has no code: pass the whole address the browser was sent back \
                     to (…/auth/callback?code=…&state=…)",
                ));
            };
            s.phase = Phase::Completing;
            Ok((
                code,
                pkce.verifier().clone(),
                redirect_uri.clone(),
                s.group.clone(),
                s.name.clone(),
            ))
        })?;
        let outcome = match self
            .oauth
            .exchange_code(&code, &verifier, &redirect_uri)
            .await
        {
            Ok(tokens) => {
                self.store_login(tokens, &group, name.as_deref(), &caller.name)
                    .await
            }
            Err(e) => Err(ApiError::Status(oauth_status(
                &self.oauth.config().issuer,
                &e,
            ))),
        };
        let mut sessions = self.sessions();
        let Some(s) = sessions.get_mut(&id) else {
            // Cancelled meanwhile: the account (if any) stays, the session is gone.
            return outcome;
        };
        match &outcome {
            Ok(result) => {
                s.phase = Phase::Done(Box::new(result.clone()));
                tracing::info!(session = %id, outcome = %result.outcome,
                    account = result.account.as_ref().map_or("", |a| a.id.as_str()),
                    "login completed");
            }
            Err(_) => {
                // The person may try again with a fresh code (open the URL again).
                s.phase = Phase::Pending;
            }
        }
        outcome
    }

    /// Creates or updates the account of a completed login.
    async fn store_login(
        &self,
        tokens: OAuthTokens,
        group: &str,
        name: Option<&str>,
        actor: &str,
    ) -> Result<pb::LoginResult, ApiError> {
        let auth = imported(tokens, name)?;
        let mut outcomes = self.store.import_codex(vec![auth], group, actor).await?;
        let (outcome, account) = match outcomes.pop() {
            Some(ImportOutcome::Created(a)) => (OUTCOME_CREATED, a),
            Some(ImportOutcome::Updated(a)) => (OUTCOME_UPDATED, a),
            Some(ImportOutcome::Failed(msg)) => return Err(ApiError::precondition(msg)),
            None => {
                return Err(
                    Status::internal("the store answered the login with no outcome").into(),
                );
            }
        };
        Ok(pb::LoginResult {
            outcome: outcome.into(),
            account: Some(convert::account_to_pb(&account)),
        })
    }

    /// Polls the issuer for a device login until it is approved, fails or expires, and
    /// records the outcome in the session.
    async fn run_device(self, id: String, device: DeviceCode, deadline: tokio::time::Instant) {
        let issuer = self.oauth.config().issuer.clone();
        let tokens = self.oauth.wait_for_device(&device, deadline).await;
        let (group, name, owner) = {
            let sessions = self.sessions();
            match sessions.get(&id) {
                Some(s) => (s.group.clone(), s.name.clone(), s.owner.clone()),
                None => return,
            }
        };
        let outcome = match tokens {
            Ok(t) => self
                .store_login(t, &group, name.as_deref(), &owner)
                .await
                .map_err(|e| e.into_status("PollDeviceLogin")),
            Err(e) => Err(oauth_status(&issuer, &e)),
        };
        let mut sessions = self.sessions();
        let Some(s) = sessions.get_mut(&id) else {
            return;
        };
        match outcome {
            Ok(result) => {
                tracing::info!(session = %id, outcome = %result.outcome,
                    account = result.account.as_ref().map_or("", |a| a.id.as_str()),
                    "device login completed");
                s.phase = Phase::Done(Box::new(result));
            }
            Err(status) => {
                tracing::warn!(session = %id, error = %status.message(), "device login failed");
                s.phase = Phase::Failed(status.code(), status.message().to_string());
            }
        }
    }

    fn poll(
        &self,
        caller: &Caller,
        r: &pb::PollDeviceLoginRequest,
    ) -> Result<pb::PollDeviceLoginResponse, Status> {
        let id = r.session_id.trim();
        self.with_session(caller, id, |s| {
            let Kind::Device { interval_secs, .. } = &s.kind else {
                return Err(Status::failed_precondition(format!(
                    "login session {id} is a browser login: call CompleteLogin with the callback"
                )));
            };
            match &s.phase {
                Phase::Pending | Phase::Completing => Ok(pb::PollDeviceLoginResponse {
                    status: "pending".into(),
                    result: None,
                    interval_secs: *interval_secs,
                }),
                Phase::Done(result) => Ok(pb::PollDeviceLoginResponse {
                    status: "complete".into(),
                    result: Some(pb::LoginResult::clone(result)),
                    interval_secs: *interval_secs,
                }),
                Phase::Failed(code, msg) => Err(Status::new(*code, msg.clone())),
            }
        })
    }

    fn cancel(&self, caller: &Caller, r: &pb::CancelLoginRequest) -> Result<(), Status> {
        let id = r.session_id.trim();
        self.with_session(caller, id, |_| Ok(()))?;
        // Dropping the session stops its device poller.
        self.sessions().remove(id);
        tracing::info!(session = %id, actor = %caller.name, "login cancelled");
        Ok(())
    }
}

#[tonic::async_trait]
impl LoginService for LoginApi {
    async fn start_login(
        &self,
        req: Request<pb::StartLoginRequest>,
    ) -> RpcResult<pb::StartLoginResponse> {
        self.call("StartLogin", req, |c, r| self.start(c, r)).await
    }

    async fn complete_login(
        &self,
        req: Request<pb::CompleteLoginRequest>,
    ) -> RpcResult<pb::LoginResult> {
        self.call("CompleteLogin", req, |c, r| self.complete(c, r))
            .await
    }

    async fn poll_device_login(
        &self,
        req: Request<pb::PollDeviceLoginRequest>,
    ) -> RpcResult<pb::PollDeviceLoginResponse> {
        self.call("PollDeviceLogin", req, |c, r| async move {
            Ok(self.poll(&c, &r)?)
        })
        .await
    }

    async fn cancel_login(
        &self,
        req: Request<pb::CancelLoginRequest>,
    ) -> RpcResult<pb::CancelLoginResponse> {
        self.call("CancelLogin", req, |c, r| async move {
            self.cancel(&c, &r)?;
            Ok(pb::CancelLoginResponse {})
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_statuses() {
        assert_eq!(mode_of("").unwrap(), MODE_BROWSER);
        assert_eq!(mode_of(" Device ").unwrap(), MODE_DEVICE);
        assert_eq!(mode_of("manual").unwrap(), MODE_MANUAL);
        assert_eq!(mode_of("fax").unwrap_err().code(), Code::InvalidArgument);
        let s = oauth_status("http://i", &OAuthError::DeviceExpired);
        assert_eq!(s.code(), Code::DeadlineExceeded);
        let s = oauth_status("http://i", &OAuthError::Transport("refused".into()));
        assert_eq!(s.code(), Code::Unavailable);
        assert!(s.message().contains("http://i"), "{}", s.message());
        let s = oauth_status(
            "http://i",
            &OAuthError::Rejected {
                status: 400,
                code: "invalid_grant".into(),
                description: None,
            },
        );
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().contains("already used"), "{}", s.message());
        assert_eq!(
            oauth_status("http://i", &OAuthError::DeviceDenied).code(),
            Code::FailedPrecondition
        );
        assert_eq!(
            oauth_status("http://i", &OAuthError::Status { status: 418 }).code(),
            Code::FailedPrecondition
        );
        assert_eq!(
            oauth_status("http://i", &OAuthError::Status { status: 503 }).code(),
            Code::Unavailable
        );
    }

    #[test]
    fn tokens_become_an_import_item() {
        let id = poolgate_core::jwt::unsigned(&serde_json::json!({
            "sub": "auth0|u1", "email": "u1@example.test",
            "https://api.openai.com/auth": {"chatgpt_account_id": "ws1"}
        }));
        let tokens = OAuthTokens {
            id_token: Secret::new(id),
            access_token: Secret::new("at-opaque"),
            refresh_token: Secret::new("rt"),
            expires_at_ms: Some(5),
            last_refresh_ms: Some(7),
        };
        let a = imported(tokens.clone(), None).unwrap();
        assert_eq!(a.identity.key(), "auth0|u1::ws1");
        assert_eq!(a.label, "u1@example.test");
        assert_eq!(a.tokens, tokens);
        assert_eq!(imported(tokens, Some("named")).unwrap().label, "named");
        let bad = OAuthTokens {
            id_token: Secret::new("SECRET.not.jwt"),
            access_token: Secret::new("a"),
            refresh_token: Secret::new("r"),
            expires_at_ms: None,
            last_refresh_ms: None,
        };
        let e = imported(bad, None).unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        assert!(!e.message().contains("SECRET"), "{}", e.message());
    }
}
