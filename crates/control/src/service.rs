//! The `poolgate.v1.AdminService` implementation over a [`Store`].
//!
//! Every RPC goes through [`AdminApi::call`]: authenticate, check the role, run, map the error
//! to a status and count the outcome. The handlers validate all input before the first write,
//! so a rejected request changes nothing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use poolgate_core::authjson::{ImportedCodexAuth, parse_document};
use poolgate_core::key::{ADMIN_TOKEN_PREFIX, PLATFORM_KEY_PREFIX, hash_secret, visible_prefix};
use poolgate_core::page::PageRequest;
use poolgate_core::{
    AccountSpec, AdminRole, AdminToken, Credentials, KeyPatch, KeyStatus, ManagedBy, PlatformKey,
    Provider, Secret,
};
use poolgate_proto::v1 as pb;
use poolgate_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use poolgate_store::{ImportOutcome, Store, listing, new_id, now_ms};
use tonic::{Code, Request, Response, Status};

use crate::auth::{
    Authenticator, BOOTSTRAP_ACTOR, BootstrapToken, Caller, NodeToken, generate_secret,
};
use crate::convert::{self, managed_elsewhere};
use crate::error::ApiError;
use crate::import::{self, OUTCOME_CREATED, OUTCOME_FAILED, OUTCOME_UPDATED};
use crate::metrics::Metrics;

/// Large enough for the biggest import the API accepts (32 MiB of documents), so such a
/// request reaches the handler and gets its precise message instead of a transport error.
pub const MAX_DECODING_MESSAGE_SIZE: usize = 40 * 1024 * 1024;

const READ: bool = false;
const WRITE: bool = true;

/// `ListGateways` shows gateways seen within this window (a watching gateway is seen at least
/// every 30 seconds).
pub const GATEWAY_ACTIVE_WINDOW: std::time::Duration = std::time::Duration::from_secs(5 * 60);

type RpcResult<T> = Result<Response<T>, Status>;

#[derive(Clone)]
pub struct AdminApi {
    store: Arc<dyn Store>,
    auth: Authenticator,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi")
            .field("store", &self.store.backend())
            .finish_non_exhaustive()
    }
}

fn require_id<'a>(field: &'static str, id: &'a str) -> Result<&'a str, ApiError> {
    let id = id.trim();
    if id.is_empty() {
        return Err(ApiError::invalid(format!("{field} is required")));
    }
    Ok(id)
}

/// Parses a single-login auth.json given to CreateAccount or UpdateAccount.
fn one_auth_json(doc: &str) -> Result<ImportedCodexAuth, ApiError> {
    let mut items = parse_document(doc);
    if items.len() != 1 {
        return Err(ApiError::invalid(format!(
            "auth_json must hold exactly one login, found {}; use ImportAccounts for several",
            items.len()
        )));
    }
    match items.pop() {
        Some(Ok(auth)) => Ok(auth),
        Some(Err(e)) => Err(ApiError::invalid(format!("auth_json: {e}"))),
        None => Err(ApiError::invalid("auth_json is empty")),
    }
}

fn validate_token_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    let n = name.chars().count();
    if n == 0 || n > 128 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "invalid name: must be 1 to 128 characters",
        ));
    }
    if name == BOOTSTRAP_ACTOR {
        return Err(ApiError::invalid(format!(
            "invalid name: {BOOTSTRAP_ACTOR:?} is reserved for the bootstrap token"
        )));
    }
    Ok(name.to_string())
}

impl AdminApi {
    /// `node_token` is refused here: it belongs to gateways.
    pub fn new(
        store: Arc<dyn Store>,
        bootstrap: Option<BootstrapToken>,
        node_token: Option<NodeToken>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let auth = Authenticator::new(bootstrap, node_token, store.clone());
        AdminApi {
            store,
            auth,
            metrics,
        }
    }

    /// The tonic service, with the message size limit imports need.
    pub fn into_server(self) -> AdminServiceServer<Self> {
        AdminServiceServer::new(self).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
    }

    async fn call<T, R, F, Fut>(
        &self,
        method: &'static str,
        mutating: bool,
        request: Request<T>,
        handler: F,
    ) -> RpcResult<R>
    where
        F: FnOnce(Caller, T) -> Fut,
        Fut: Future<Output = Result<R, ApiError>>,
    {
        rpc(
            &self.auth,
            &self.metrics,
            method,
            mutating,
            request,
            handler,
        )
        .await
    }

    // --------------------------------------------------------------------------- accounts

    async fn create_account_impl(
        &self,
        caller: Caller,
        mut r: pb::CreateAccountRequest,
    ) -> Result<pb::Account, ApiError> {
        let provider: Provider = r.provider.parse()?;
        let (credentials, identity) = if provider.uses_oauth() {
            if !r.api_key.is_empty() {
                return Err(ApiError::invalid(
                    "api_key: codex accounts log in with OAuth; pass their Codex auth.json as \
                     auth_json instead",
                ));
            }
            if r.auth_json.trim().is_empty() {
                return Err(ApiError::invalid(
                    "auth_json is required for codex accounts (one Codex auth.json object; use \
                     ImportAccounts for many)",
                ));
            }
            let auth = one_auth_json(&r.auth_json)?;
            if r.name.trim().is_empty() {
                // E-mails can exceed the 128-character name limit; keep what fits.
                r.name = auth.label.chars().take(128).collect();
            }
            (Credentials::OAuth(auth.tokens), Some(auth.identity))
        } else {
            if !r.auth_json.is_empty() {
                return Err(ApiError::invalid(format!(
                    "auth_json is only for codex accounts; {provider} accounts take api_key"
                )));
            }
            if r.api_key.trim().is_empty() {
                return Err(ApiError::invalid(format!(
                    "api_key is required for {provider} accounts"
                )));
            }
            (
                Credentials::ApiKey {
                    key: Secret::new(r.api_key.trim()),
                },
                None,
            )
        };
        let spec = convert::account_spec_from_create(&r)?;
        credentials.check_for(provider)?;
        let account = self
            .store
            .create_account(spec, Some(credentials), identity, &caller.name)
            .await?;
        Ok(convert::account_to_pb(&account))
    }

    async fn update_account_impl(
        &self,
        caller: Caller,
        r: pb::UpdateAccountRequest,
    ) -> Result<pb::Account, ApiError> {
        let id = require_id("id", &r.id)?;
        let current = self.store.get_account(id).await?;
        if let Some(msg) = managed_elsewhere(
            "account",
            id,
            current.managed_by,
            current.managed_ref.as_deref(),
        ) {
            return Err(ApiError::precondition(msg));
        }
        let patch = convert::account_patch_from_update(&r, &current)?;
        let provider = current.spec.provider;
        let credentials = match (&r.api_key, &r.auth_json) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid("set api_key or auth_json, not both"));
            }
            (Some(key), None) => {
                if provider.uses_oauth() {
                    return Err(ApiError::invalid(
                        "api_key: codex accounts log in with OAuth; pass a Codex auth.json as \
                         auth_json instead",
                    ));
                }
                Some(Credentials::ApiKey {
                    key: Secret::new(key.trim()),
                })
            }
            (None, Some(doc)) => {
                if !provider.uses_oauth() {
                    return Err(ApiError::invalid(format!(
                        "auth_json is only for codex accounts; {provider} accounts take api_key"
                    )));
                }
                let auth = one_auth_json(doc)?;
                let same = current
                    .identity
                    .as_ref()
                    .is_some_and(|i| i.key() == auth.identity.key());
                if !same {
                    return Err(ApiError::invalid(
                        "auth_json belongs to another login (its subject and chatgpt_account_id \
                         differ from this account's); use ImportAccounts to add it",
                    ));
                }
                Some(Credentials::OAuth(auth.tokens))
            }
            (None, None) => None,
        };
        if patch.is_empty() && credentials.is_none() {
            return Err(ApiError::invalid(
                "nothing to update: set at least one field",
            ));
        }
        // Validate both parts before writing either, so a bad request changes nothing.
        if !patch.is_empty() {
            patch.apply(&current)?;
        }
        if let Some(c) = &credentials {
            c.check_for(provider)?;
        }
        if let Some(c) = &credentials {
            self.store.set_credentials(id, c, &caller.name).await?;
        }
        let account = if patch.is_empty() {
            self.store.get_account(id).await?
        } else {
            self.store.update_account(id, &patch, &caller.name).await?
        };
        Ok(convert::account_to_pb(&account))
    }

    async fn delete_account_impl(&self, caller: Caller, id: &str) -> Result<(), ApiError> {
        let id = require_id("id", id)?;
        let current = self.store.get_account(id).await?;
        if let Some(msg) = managed_elsewhere(
            "account",
            id,
            current.managed_by,
            current.managed_ref.as_deref(),
        ) {
            return Err(ApiError::precondition(msg));
        }
        self.store.delete_account(id, &caller.name).await?;
        Ok(())
    }

    async fn list_accounts_impl(
        &self,
        r: pb::ListAccountsRequest,
    ) -> Result<pb::ListAccountsResponse, ApiError> {
        let filter = convert::account_filter(&r.group, &r.provider, &r.status)?;
        let page = PageRequest::parse(listing::ACCOUNTS, r.page_size, &r.page_token)?;
        let page = self.store.list_accounts(&filter, &page).await?;
        Ok(pb::ListAccountsResponse {
            accounts: page.items.iter().map(convert::account_to_pb).collect(),
            next_page_token: page.next.unwrap_or_default(),
        })
    }

    async fn import_impl(
        &self,
        caller: Caller,
        r: pb::ImportAccountsRequest,
    ) -> Result<pb::ImportAccountsResponse, ApiError> {
        // Check the group the way account specs are checked (empty means the default).
        let mut probe = AccountSpec::new(Provider::Codex, "import");
        probe.group = r.group.trim().to_string();
        let group = probe.validate()?.group;

        let import::ImportPlan {
            mut results,
            to_store,
        } = import::plan(&r.documents)?;
        let (slots, items): (Vec<usize>, Vec<ImportedCodexAuth>) = to_store.into_iter().unzip();
        let outcomes = if items.is_empty() {
            Vec::new()
        } else {
            self.store.import_codex(items, &group, &caller.name).await?
        };
        if outcomes.len() != slots.len() {
            tracing::error!(
                expected = slots.len(),
                got = outcomes.len(),
                "store answered an import with the wrong number of outcomes"
            );
            return Err(
                Status::internal("internal error; the control plane log has details").into(),
            );
        }
        for (slot, outcome) in slots.into_iter().zip(outcomes) {
            let Some(res) = results.get_mut(slot) else {
                continue;
            };
            let (outcome_name, account) = match outcome {
                ImportOutcome::Created(a) => (OUTCOME_CREATED, a),
                ImportOutcome::Updated(a) => (OUTCOME_UPDATED, a),
                ImportOutcome::Failed(msg) => {
                    res.outcome = OUTCOME_FAILED.to_string();
                    res.error = msg;
                    continue;
                }
            };
            res.outcome = outcome_name.to_string();
            res.account_id = account.id;
            res.name = account.spec.name;
        }
        let count = |o: &str| results.iter().filter(|r| r.outcome == o).count();
        let as_u32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let response = pb::ImportAccountsResponse {
            total: as_u32(results.len()),
            created: as_u32(count(OUTCOME_CREATED)),
            updated: as_u32(count(OUTCOME_UPDATED)),
            failed: as_u32(count(OUTCOME_FAILED)),
            results,
        };
        tracing::info!(
            actor = %caller.name,
            total = response.total,
            created = response.created,
            updated = response.updated,
            failed = response.failed,
            "imported Codex accounts"
        );
        Ok(response)
    }

    // --------------------------------------------------------------------------- keys

    async fn create_key_impl(
        &self,
        caller: Caller,
        r: pb::CreateKeyRequest,
    ) -> Result<pb::CreateKeyResponse, ApiError> {
        let now = now_ms();
        let spec = convert::key_spec_from_create(&r, now)?;
        let plaintext = generate_secret(PLATFORM_KEY_PREFIX).map_err(|e| {
            tracing::error!(error = %e, "cannot generate a platform key");
            Status::internal("cannot generate a key; the control plane log has details")
        })?;
        let key = PlatformKey {
            id: new_id("key")?,
            spec,
            prefix: visible_prefix(&plaintext),
            hash: hash_secret(&plaintext),
            status: KeyStatus::Active,
            managed_by: ManagedBy::Api,
            managed_ref: None,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let stored = self.store.create_key(key, &caller.name).await?;
        Ok(pb::CreateKeyResponse {
            key: plaintext,
            platform_key: Some(convert::key_to_pb(&stored)),
        })
    }

    /// Fetches a key and refuses Kubernetes-managed ones.
    async fn key_for_change(&self, id: &str) -> Result<PlatformKey, ApiError> {
        let key = self.store.get_key(id).await?;
        if let Some(msg) = managed_elsewhere("key", id, key.managed_by, key.managed_ref.as_deref())
        {
            return Err(ApiError::precondition(msg));
        }
        Ok(key)
    }

    async fn update_key_impl(
        &self,
        caller: Caller,
        r: pb::UpdateKeyRequest,
    ) -> Result<pb::PlatformKey, ApiError> {
        let id = require_id("id", &r.id)?;
        let current = self.key_for_change(id).await?;
        let patch = convert::key_patch_from_update(&r, now_ms())?;
        if patch.is_empty() {
            return Err(ApiError::invalid(
                "nothing to update: set at least one field",
            ));
        }
        patch.apply(&current)?;
        let key = self.store.update_key(id, &patch, &caller.name).await?;
        Ok(convert::key_to_pb(&key))
    }

    async fn set_key_status(
        &self,
        caller: Caller,
        id: &str,
        status: KeyStatus,
    ) -> Result<pb::PlatformKey, ApiError> {
        let id = require_id("id", id)?;
        self.key_for_change(id).await?;
        let patch = KeyPatch {
            status: Some(status),
            ..Default::default()
        };
        let key = self.store.update_key(id, &patch, &caller.name).await?;
        Ok(convert::key_to_pb(&key))
    }

    // --------------------------------------------------------------------------- usage, logs

    async fn usage_impl(&self, r: pb::GetUsageRequest) -> Result<pb::GetUsageResponse, ApiError> {
        let filter = convert::account_filter(&r.group, &r.provider, &r.status)?;
        let page = PageRequest::parse(listing::ACCOUNTS, r.page_size, &r.page_token)?;
        let page = self.store.list_accounts(&filter, &page).await?;
        let ids: Vec<String> = page.items.iter().map(|a| a.id.clone()).collect();
        let usage: HashMap<String, _> = if ids.is_empty() {
            HashMap::new()
        } else {
            self.store.get_usage(&ids).await?.into_iter().collect()
        };
        Ok(pb::GetUsageResponse {
            accounts: page
                .items
                .iter()
                .map(|a| convert::usage_to_pb(a, usage.get(&a.id)))
                .collect(),
            next_page_token: page.next.unwrap_or_default(),
        })
    }

    async fn query_logs_impl(
        &self,
        r: pb::QueryLogsRequest,
    ) -> Result<pb::QueryLogsResponse, ApiError> {
        let filter = convert::log_filter_from_pb(r.filter.as_ref())?;
        let page = PageRequest::parse(listing::LOGS, r.page_size, &r.page_token)?;
        let page = self.store.query_request_logs(&filter, &page).await?;
        Ok(pb::QueryLogsResponse {
            logs: page.items.iter().map(convert::log_to_pb).collect(),
            next_page_token: page.next.unwrap_or_default(),
        })
    }

    // --------------------------------------------------------------------------- admin tokens

    async fn create_admin_token_impl(
        &self,
        caller: Caller,
        r: pb::CreateAdminTokenRequest,
    ) -> Result<pb::CreateAdminTokenResponse, ApiError> {
        let name = validate_token_name(&r.name)?;
        let role: AdminRole = r.role.parse()?;
        let plaintext = generate_secret(ADMIN_TOKEN_PREFIX).map_err(|e| {
            tracing::error!(error = %e, "cannot generate an admin token");
            Status::internal("cannot generate a token; the control plane log has details")
        })?;
        let token = AdminToken {
            id: new_id("adm")?,
            name,
            role,
            prefix: visible_prefix(&plaintext),
            hash: hash_secret(&plaintext),
            created_at_ms: now_ms(),
        };
        let stored = self.store.create_admin_token(token, &caller.name).await?;
        Ok(pb::CreateAdminTokenResponse {
            token: plaintext,
            admin_token: Some(convert::admin_token_to_pb(&stored)),
        })
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn who_am_i(&self, req: Request<pb::WhoAmIRequest>) -> RpcResult<pb::WhoAmIResponse> {
        self.call("WhoAmI", READ, req, |c, _| async move {
            Ok(pb::WhoAmIResponse {
                name: c.name,
                role: c.role.to_string(),
            })
        })
        .await
    }

    async fn create_account(
        &self,
        req: Request<pb::CreateAccountRequest>,
    ) -> RpcResult<pb::Account> {
        self.call("CreateAccount", WRITE, req, |c, r| {
            self.create_account_impl(c, r)
        })
        .await
    }

    async fn get_account(&self, req: Request<pb::GetAccountRequest>) -> RpcResult<pb::Account> {
        self.call("GetAccount", READ, req, |_, r| async move {
            let a = self.store.get_account(require_id("id", &r.id)?).await?;
            Ok(convert::account_to_pb(&a))
        })
        .await
    }

    async fn list_accounts(
        &self,
        req: Request<pb::ListAccountsRequest>,
    ) -> RpcResult<pb::ListAccountsResponse> {
        self.call("ListAccounts", READ, req, |_, r| self.list_accounts_impl(r))
            .await
    }

    async fn update_account(
        &self,
        req: Request<pb::UpdateAccountRequest>,
    ) -> RpcResult<pb::Account> {
        self.call("UpdateAccount", WRITE, req, |c, r| {
            self.update_account_impl(c, r)
        })
        .await
    }

    async fn delete_account(
        &self,
        req: Request<pb::DeleteAccountRequest>,
    ) -> RpcResult<pb::DeleteAccountResponse> {
        self.call("DeleteAccount", WRITE, req, |c, r| async move {
            self.delete_account_impl(c, &r.id).await?;
            Ok(pb::DeleteAccountResponse {})
        })
        .await
    }

    async fn import_accounts(
        &self,
        req: Request<pb::ImportAccountsRequest>,
    ) -> RpcResult<pb::ImportAccountsResponse> {
        self.call("ImportAccounts", WRITE, req, |c, r| self.import_impl(c, r))
            .await
    }

    async fn create_key(
        &self,
        req: Request<pb::CreateKeyRequest>,
    ) -> RpcResult<pb::CreateKeyResponse> {
        self.call("CreateKey", WRITE, req, |c, r| self.create_key_impl(c, r))
            .await
    }

    async fn get_key(&self, req: Request<pb::GetKeyRequest>) -> RpcResult<pb::PlatformKey> {
        self.call("GetKey", READ, req, |_, r| async move {
            let k = self.store.get_key(require_id("id", &r.id)?).await?;
            Ok(convert::key_to_pb(&k))
        })
        .await
    }

    async fn list_keys(
        &self,
        req: Request<pb::ListKeysRequest>,
    ) -> RpcResult<pb::ListKeysResponse> {
        self.call("ListKeys", READ, req, |_, r| async move {
            let page = PageRequest::parse(listing::KEYS, r.page_size, &r.page_token)?;
            let page = self.store.list_keys(&page).await?;
            Ok(pb::ListKeysResponse {
                keys: page.items.iter().map(convert::key_to_pb).collect(),
                next_page_token: page.next.unwrap_or_default(),
            })
        })
        .await
    }

    async fn update_key(&self, req: Request<pb::UpdateKeyRequest>) -> RpcResult<pb::PlatformKey> {
        self.call("UpdateKey", WRITE, req, |c, r| self.update_key_impl(c, r))
            .await
    }

    async fn disable_key(&self, req: Request<pb::KeyIdRequest>) -> RpcResult<pb::PlatformKey> {
        self.call("DisableKey", WRITE, req, |c, r| async move {
            self.set_key_status(c, &r.id, KeyStatus::Disabled).await
        })
        .await
    }

    async fn enable_key(&self, req: Request<pb::KeyIdRequest>) -> RpcResult<pb::PlatformKey> {
        self.call("EnableKey", WRITE, req, |c, r| async move {
            self.set_key_status(c, &r.id, KeyStatus::Active).await
        })
        .await
    }

    async fn delete_key(&self, req: Request<pb::KeyIdRequest>) -> RpcResult<pb::DeleteKeyResponse> {
        self.call("DeleteKey", WRITE, req, |c, r| async move {
            let id = require_id("id", &r.id)?;
            self.key_for_change(id).await?;
            self.store.delete_key(id, &c.name).await?;
            Ok(pb::DeleteKeyResponse {})
        })
        .await
    }

    async fn get_usage(
        &self,
        req: Request<pb::GetUsageRequest>,
    ) -> RpcResult<pb::GetUsageResponse> {
        self.call("GetUsage", READ, req, |_, r| self.usage_impl(r))
            .await
    }

    async fn query_logs(
        &self,
        req: Request<pb::QueryLogsRequest>,
    ) -> RpcResult<pb::QueryLogsResponse> {
        self.call("QueryLogs", READ, req, |_, r| self.query_logs_impl(r))
            .await
    }

    async fn summarize_logs(
        &self,
        req: Request<pb::SummarizeLogsRequest>,
    ) -> RpcResult<pb::LogSummary> {
        self.call("SummarizeLogs", READ, req, |_, r| async move {
            let filter = convert::log_filter_from_pb(r.filter.as_ref())?;
            let summary = self.store.summarize_request_logs(&filter).await?;
            Ok(convert::summary_to_pb(&summary))
        })
        .await
    }

    async fn get_routing_policy(
        &self,
        req: Request<pb::GetRoutingPolicyRequest>,
    ) -> RpcResult<pb::RoutingPolicy> {
        self.call("GetRoutingPolicy", READ, req, |_, _| async move {
            Ok(convert::policy_to_pb(&self.store.get_policy().await?))
        })
        .await
    }

    async fn set_routing_policy(
        &self,
        req: Request<pb::SetRoutingPolicyRequest>,
    ) -> RpcResult<pb::RoutingPolicy> {
        self.call("SetRoutingPolicy", WRITE, req, |c, r| async move {
            let policy = convert::policy_from_pb(r.policy.as_ref())?;
            self.store.set_policy(&policy, &c.name).await?;
            Ok(convert::policy_to_pb(&self.store.get_policy().await?))
        })
        .await
    }

    async fn create_admin_token(
        &self,
        req: Request<pb::CreateAdminTokenRequest>,
    ) -> RpcResult<pb::CreateAdminTokenResponse> {
        self.call("CreateAdminToken", WRITE, req, |c, r| {
            self.create_admin_token_impl(c, r)
        })
        .await
    }

    async fn list_admin_tokens(
        &self,
        req: Request<pb::ListAdminTokensRequest>,
    ) -> RpcResult<pb::ListAdminTokensResponse> {
        self.call("ListAdminTokens", READ, req, |_, _| async move {
            let tokens = self.store.list_admin_tokens().await?;
            Ok(pb::ListAdminTokensResponse {
                tokens: tokens.iter().map(convert::admin_token_to_pb).collect(),
            })
        })
        .await
    }

    async fn delete_admin_token(
        &self,
        req: Request<pb::DeleteAdminTokenRequest>,
    ) -> RpcResult<pb::DeleteAdminTokenResponse> {
        self.call("DeleteAdminToken", WRITE, req, |c, r| async move {
            self.store
                .delete_admin_token(require_id("id", &r.id)?, &c.name)
                .await?;
            Ok(pb::DeleteAdminTokenResponse {})
        })
        .await
    }

    async fn list_gateways(
        &self,
        req: Request<pb::ListGatewaysRequest>,
    ) -> RpcResult<pb::ListGatewaysResponse> {
        self.call("ListGateways", READ, req, |_, _| async move {
            let version = self.store.current_version().await?;
            let window = i64::try_from(GATEWAY_ACTIVE_WINDOW.as_millis()).unwrap_or(i64::MAX);
            let gateways = self
                .store
                .list_gateways(now_ms().saturating_sub(window))
                .await?;
            Ok(pb::ListGatewaysResponse {
                gateways: gateways
                    .into_iter()
                    .map(|g| pb::Gateway {
                        lag: version.saturating_sub(g.applied_version).max(0),
                        node_id: g.node_id,
                        applied_version: g.applied_version,
                        connected_at_ms: g.connected_at_ms.unwrap_or(0),
                        last_report_at_ms: g.last_report_at_ms.unwrap_or(0),
                        control_node: g.control_node,
                    })
                    .collect(),
                version,
            })
        })
        .await
    }

    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> RpcResult<pb::ListAuditEventsResponse> {
        self.call("ListAuditEvents", READ, req, |_, r| async move {
            let page = PageRequest::parse(listing::AUDIT, r.page_size, &r.page_token)?;
            let page = self.store.list_audit(&page).await?;
            Ok(pb::ListAuditEventsResponse {
                events: page.items.iter().map(convert::audit_to_pb).collect(),
                next_page_token: page.next.unwrap_or_default(),
            })
        })
        .await
    }
}

/// One RPC of the admin-token services: authenticate, authorise (`mutating` needs the admin
/// role), run `handler`, map its error to a status, count it.
pub(crate) async fn rpc<T, R, F, Fut>(
    auth: &Authenticator,
    metrics: &Metrics,
    method: &'static str,
    mutating: bool,
    request: Request<T>,
    handler: F,
) -> RpcResult<R>
where
    F: FnOnce(Caller, T) -> Fut,
    Fut: Future<Output = Result<R, ApiError>>,
{
    let started = Instant::now();
    let (metadata, _, message) = request.into_parts();
    let outcome = match auth.authenticate(&metadata).await {
        Ok(caller) => match caller.authorize(method, mutating) {
            Ok(()) => handler(caller, message).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    if let Err(e) = &outcome
        && e.is_store_fault()
    {
        metrics.store_error(method);
    }
    let result = outcome
        .map(Response::new)
        .map_err(|e| e.into_status(method));
    let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
    metrics.grpc_request(method, code, started.elapsed());
    result
}
