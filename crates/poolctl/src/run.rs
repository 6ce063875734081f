//! Carries out one command: builds the requests, pages through listings, prints the result.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use poolgate_proto::v1;
use serde::Serialize;
use tonic::Code;

use crate::cli::{
    Cli, Command, CreateAccountArgs, CreateCmd, CreateKeyArgs, DeleteCmd, Expiry, GetAccountsArgs,
    GetCmd, ImportCmd, LoginArgs, LogsArgs, Output, SetCmd, SetPolicyArgs, Strategy, ToggleCmd,
    UpdateAccountArgs, UpdateCmd, UpdateKeyArgs, UsageArgs,
};
use crate::client::{self, Client};
use crate::parse;
use crate::table::{self, ImportRow, Table};

/// Largest page the API serves.
const PAGE: u32 = 1000;
/// Per file of an import; the server enforces its own (smaller) limits per document.
const MAX_IMPORT_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Per import request, below the server's default 4 MiB message limit.
const MAX_IMPORT_REQUEST_BYTES: usize = 3 * 1024 * 1024;
const MAX_IMPORT_REQUEST_DOCS: usize = 100;
const MAX_SECRET_FILE_BYTES: u64 = 1024 * 1024;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn later_ms(now: i64, d: Duration) -> i64 {
    now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Writes to stdout; a closed pipe (`poolctl get logs | head`) ends quietly.
pub fn out(text: &str) -> anyhow::Result<()> {
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

struct Printer {
    format: Output,
    now: i64,
}

impl Printer {
    /// Prints `value` as JSON/YAML, or the table; an empty table prints `empty` to stderr.
    fn print<T: Serialize + ?Sized>(
        &self,
        value: &T,
        table: impl FnOnce(i64) -> Table,
        empty: &str,
    ) -> anyhow::Result<()> {
        match self.format {
            Output::Json => out(&(serde_json::to_string_pretty(value)? + "\n")),
            Output::Yaml => out(&serde_yaml_ng::to_string(value)?),
            Output::Table => {
                let t = table(self.now);
                if t.is_empty() {
                    note(empty);
                    Ok(())
                } else {
                    out(&t.render())
                }
            }
        }
    }

    /// A confirmation for a mutation that returns nothing.
    fn done(&self, kind: &str, id: &str, verb: &str) -> anyhow::Result<()> {
        #[derive(Serialize)]
        struct Done<'a> {
            kind: &'a str,
            id: &'a str,
            result: &'a str,
        }
        let v = Done {
            kind,
            id,
            result: verb,
        };
        match self.format {
            Output::Table => out(&format!("{kind} {id} {verb}\n")),
            _ => self.print(&v, |_| Table::default(), ""),
        }
    }
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let p = Printer {
        format: cli.global.output,
        now: now_ms(),
    };
    // Arguments are checked before connecting, so a typo never waits on the network.
    let plan = Plan::from(cli.command, p.now)?;
    let mut c = client::connect(&cli.global).await?;
    plan.execute(&mut c, &p).await
}

/// A command with its local input (files, times) already read and checked.
enum Plan {
    Whoami,
    ListAccounts(GetAccountsArgs),
    GetAccount(String),
    ListKeys,
    GetKey(String),
    Usage(UsageArgs),
    Logs {
        filter: v1::LogFilter,
        limit: u32,
        summary: bool,
    },
    Policy,
    SetPolicy(SetPolicyArgs),
    Tokens,
    Gateways,
    Audit(u32),
    CreateAccount(Box<v1::CreateAccountRequest>),
    CreateKey(v1::CreateKeyRequest),
    CreateToken(v1::CreateAdminTokenRequest),
    UpdateAccount(Box<v1::UpdateAccountRequest>),
    UpdateKey(v1::UpdateKeyRequest),
    ToggleAccount(String, bool),
    ToggleKey(String, bool),
    DeleteAccount(String),
    DeleteKey(String),
    DeleteToken(String),
    Import {
        docs: Vec<Doc>,
        group: String,
    },
    Login(LoginArgs),
}

struct Doc {
    source: String,
    text: String,
}

impl Plan {
    fn from(cmd: Command, now: i64) -> anyhow::Result<Plan> {
        Ok(match cmd {
            Command::Whoami => Plan::Whoami,
            Command::Login(l) => Plan::Login(l),
            Command::Usage(u) | Command::Get(GetCmd::Usage(u)) => Plan::Usage(u),
            Command::Logs(l) | Command::Get(GetCmd::Logs(l)) => logs_plan(l, now)?,
            Command::Get(GetCmd::Accounts(a)) => match a.id {
                Some(id) => Plan::GetAccount(id),
                None => Plan::ListAccounts(a),
            },
            Command::Get(GetCmd::Keys { id: Some(id) }) => Plan::GetKey(id),
            Command::Get(GetCmd::Keys { id: None }) => Plan::ListKeys,
            Command::Get(GetCmd::Policy) => Plan::Policy,
            Command::Get(GetCmd::Tokens) => Plan::Tokens,
            Command::Get(GetCmd::Gateways) => Plan::Gateways,
            Command::Get(GetCmd::Audit { limit }) => Plan::Audit(limit),
            Command::Set(SetCmd::Policy(s)) => Plan::SetPolicy(s),
            Command::Create(CreateCmd::Account(a)) => {
                Plan::CreateAccount(Box::new(create_account(a)?))
            }
            Command::Create(CreateCmd::Key(k)) => Plan::CreateKey(create_key(k, now)),
            Command::Create(CreateCmd::Token { name, role }) => {
                Plan::CreateToken(v1::CreateAdminTokenRequest {
                    name,
                    role: role.as_str().into(),
                })
            }
            Command::Update(UpdateCmd::Account(u)) => {
                Plan::UpdateAccount(Box::new(update_account(u)?))
            }
            Command::Update(UpdateCmd::Key(u)) => Plan::UpdateKey(update_key(u, now)),
            Command::Disable(ToggleCmd::Account { id }) => Plan::ToggleAccount(id, false),
            Command::Enable(ToggleCmd::Account { id }) => Plan::ToggleAccount(id, true),
            Command::Disable(ToggleCmd::Key { id }) => Plan::ToggleKey(id, false),
            Command::Enable(ToggleCmd::Key { id }) => Plan::ToggleKey(id, true),
            Command::Delete(DeleteCmd::Account { id }) => Plan::DeleteAccount(id),
            Command::Delete(DeleteCmd::Key { id }) => Plan::DeleteKey(id),
            Command::Delete(DeleteCmd::Token { id }) => Plan::DeleteToken(id),
            Command::Import(ImportCmd::Accounts { files, group }) => Plan::Import {
                docs: collect_docs(&files)?,
                group: opt(&group),
            },
        })
    }

    async fn execute(self, c: &mut Client, p: &Printer) -> anyhow::Result<ExitCode> {
        let ctx = c.ctx.clone();
        let api = &mut c.api;
        let e = |s: tonic::Status| ctx.status(&s);
        match self {
            Plan::Whoami => {
                let w = api
                    .who_am_i(v1::WhoAmIRequest {})
                    .await
                    .map_err(e)?
                    .into_inner();
                p.print(&w, |_| table::whoami(&w), "")?;
            }
            Plan::ListAccounts(a) => {
                let mut all = Vec::new();
                let mut token = String::new();
                loop {
                    let req = v1::ListAccountsRequest {
                        group: opt(&a.group),
                        provider: opt(&a.provider),
                        status: opt(&a.status),
                        page_size: PAGE,
                        page_token: token.clone(),
                    };
                    let r = api.list_accounts(req).await.map_err(e)?.into_inner();
                    all.extend(r.accounts);
                    if !next_page(&mut token, r.next_page_token) {
                        break;
                    }
                }
                p.print(&all, |now| table::accounts(now, &all), "No accounts found.")?;
            }
            Plan::GetAccount(id) => {
                let a = api
                    .get_account(v1::GetAccountRequest { id })
                    .await
                    .map_err(e)?
                    .into_inner();
                p.print(&a, |now| table::accounts(now, std::slice::from_ref(&a)), "")?;
            }
            Plan::ListKeys => {
                let mut all = Vec::new();
                let mut token = String::new();
                loop {
                    let req = v1::ListKeysRequest {
                        page_size: PAGE,
                        page_token: token.clone(),
                    };
                    let r = api.list_keys(req).await.map_err(e)?.into_inner();
                    all.extend(r.keys);
                    if !next_page(&mut token, r.next_page_token) {
                        break;
                    }
                }
                p.print(
                    &all,
                    |now| table::keys(now, &all),
                    "No platform keys found.",
                )?;
            }
            Plan::GetKey(id) => {
                let k = api
                    .get_key(v1::GetKeyRequest { id })
                    .await
                    .map_err(e)?
                    .into_inner();
                p.print(&k, |now| table::keys(now, std::slice::from_ref(&k)), "")?;
            }
            Plan::Usage(u) => {
                let mut all = Vec::new();
                let mut token = String::new();
                loop {
                    let req = v1::GetUsageRequest {
                        group: opt(&u.group),
                        provider: opt(&u.provider),
                        status: opt(&u.status),
                        page_size: PAGE,
                        page_token: token.clone(),
                    };
                    let r = api.get_usage(req).await.map_err(e)?.into_inner();
                    all.extend(r.accounts);
                    if !next_page(&mut token, r.next_page_token) {
                        break;
                    }
                }
                p.print(&all, |now| table::usage(now, &all), "No accounts found.")?;
            }
            Plan::Logs {
                filter,
                summary: true,
                ..
            } => {
                let req = v1::SummarizeLogsRequest {
                    filter: Some(filter),
                };
                let s = api.summarize_logs(req).await.map_err(e)?.into_inner();
                p.print(&s, |_| table::summary(&s), "")?;
            }
            Plan::Logs {
                filter,
                limit,
                summary: false,
            } => {
                let mut all = Vec::new();
                let mut token = String::new();
                loop {
                    let want = limit.saturating_sub(u32::try_from(all.len()).unwrap_or(u32::MAX));
                    let req = v1::QueryLogsRequest {
                        filter: Some(filter.clone()),
                        page_size: want.min(PAGE),
                        page_token: token.clone(),
                    };
                    let r = api.query_logs(req).await.map_err(e)?.into_inner();
                    all.extend(r.logs);
                    all.truncate(limit as usize);
                    if all.len() >= limit as usize || !next_page(&mut token, r.next_page_token) {
                        break;
                    }
                }
                p.print(&all, |_| table::logs(&all), "No request logs found.")?;
            }
            Plan::Policy => {
                let req = v1::GetRoutingPolicyRequest {};
                let pol = api.get_routing_policy(req).await.map_err(e)?.into_inner();
                p.print(&pol, |_| table::policy(&pol), "")?;
            }
            Plan::SetPolicy(s) => {
                let req = v1::GetRoutingPolicyRequest {};
                let mut pol = api.get_routing_policy(req).await.map_err(e)?.into_inner();
                apply_policy(&mut pol, &s);
                let req = v1::SetRoutingPolicyRequest { policy: Some(pol) };
                let pol = api.set_routing_policy(req).await.map_err(e)?.into_inner();
                p.print(&pol, |_| table::policy(&pol), "")?;
            }
            Plan::Tokens => {
                let req = v1::ListAdminTokensRequest {};
                let r = api.list_admin_tokens(req).await.map_err(e)?.into_inner();
                p.print(
                    &r.tokens,
                    |now| table::tokens(now, &r.tokens),
                    "No admin tokens found.",
                )?;
            }
            Plan::Gateways => {
                let req = v1::ListGatewaysRequest {};
                let r = api.list_gateways(req).await.map_err(e)?.into_inner();
                p.print(
                    &r.gateways,
                    |now| table::gateways(now, &r.gateways),
                    "No gateways seen in the last 5 minutes.",
                )?;
            }
            Plan::Audit(limit) => {
                let mut all = Vec::new();
                let mut token = String::new();
                loop {
                    let want = limit.saturating_sub(u32::try_from(all.len()).unwrap_or(u32::MAX));
                    let req = v1::ListAuditEventsRequest {
                        page_size: want.clamp(1, PAGE),
                        page_token: token.clone(),
                    };
                    let r = api.list_audit_events(req).await.map_err(e)?.into_inner();
                    all.extend(r.events);
                    all.truncate(limit as usize);
                    if all.len() >= limit as usize || !next_page(&mut token, r.next_page_token) {
                        break;
                    }
                }
                p.print(&all, |_| table::audit(&all), "No audit events found.")?;
            }
            Plan::CreateAccount(req) => {
                let a = api.create_account(*req).await.map_err(e)?.into_inner();
                p.print(&a, |now| table::accounts(now, std::slice::from_ref(&a)), "")?;
            }
            Plan::CreateKey(req) => {
                let r = api.create_key(req).await.map_err(e)?.into_inner();
                let key = r.platform_key.clone().unwrap_or_default();
                p.print(&r, |now| table::keys(now, std::slice::from_ref(&key)), "")?;
                if p.format == Output::Table {
                    out(&format!("\nkey: {}\n", r.key))?;
                    note("Save this key now: it is not shown again (only its hash is stored).");
                }
            }
            Plan::CreateToken(req) => {
                let r = api.create_admin_token(req).await.map_err(e)?.into_inner();
                let tok = r.admin_token.clone().unwrap_or_default();
                p.print(&r, |now| table::tokens(now, std::slice::from_ref(&tok)), "")?;
                if p.format == Output::Table {
                    out(&format!("\ntoken: {}\n", r.token))?;
                    note("Save this token now: it is not shown again (only its hash is stored).");
                }
            }
            Plan::UpdateAccount(req) => {
                let a = api.update_account(*req).await.map_err(e)?.into_inner();
                p.print(&a, |now| table::accounts(now, std::slice::from_ref(&a)), "")?;
            }
            Plan::ToggleAccount(id, enabled) => {
                let req = v1::UpdateAccountRequest {
                    id,
                    enabled: Some(enabled),
                    ..Default::default()
                };
                let a = api.update_account(req).await.map_err(e)?.into_inner();
                p.print(&a, |now| table::accounts(now, std::slice::from_ref(&a)), "")?;
            }
            Plan::UpdateKey(req) => {
                let k = api.update_key(req).await.map_err(e)?.into_inner();
                p.print(&k, |now| table::keys(now, std::slice::from_ref(&k)), "")?;
            }
            Plan::ToggleKey(id, enable) => {
                let req = v1::KeyIdRequest { id };
                let k = if enable {
                    api.enable_key(req).await
                } else {
                    api.disable_key(req).await
                };
                let k = k.map_err(e)?.into_inner();
                p.print(&k, |now| table::keys(now, std::slice::from_ref(&k)), "")?;
            }
            Plan::DeleteAccount(id) => {
                api.delete_account(v1::DeleteAccountRequest { id: id.clone() })
                    .await
                    .map_err(e)?;
                p.done("account", &id, "deleted")?;
            }
            Plan::DeleteKey(id) => {
                api.delete_key(v1::KeyIdRequest { id: id.clone() })
                    .await
                    .map_err(e)?;
                p.done("key", &id, "deleted")?;
            }
            Plan::DeleteToken(id) => {
                api.delete_admin_token(v1::DeleteAdminTokenRequest { id: id.clone() })
                    .await
                    .map_err(e)?;
                p.done("token", &id, "deleted")?;
            }
            Plan::Import { docs, group } => return import(c, p, docs, group).await,
            Plan::Login(args) => {
                let r = crate::login::run(c, args).await?;
                let a = r.account.clone().unwrap_or_default();
                if p.format == Output::Table {
                    note(&format!("Logged in: account {} {}.", a.id, r.outcome));
                }
                p.print(&r, |now| table::accounts(now, std::slice::from_ref(&a)), "")?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Moves to the next page; false at the end (or if a server repeats a token, which would
/// otherwise loop forever).
fn next_page(token: &mut String, next: String) -> bool {
    if next.is_empty() || next == *token {
        return false;
    }
    *token = next;
    true
}

fn logs_plan(l: LogsArgs, now: i64) -> anyhow::Result<Plan> {
    let (since_ms, until_ms) =
        parse::time_range(l.since.as_deref(), l.until.as_deref(), now).map_err(|e| anyhow!(e))?;
    let filter = v1::LogFilter {
        key_id: opt(&l.key),
        account_id: opt(&l.account),
        model: opt(&l.model),
        status_class: opt(&l.status),
        error_class: opt(&l.error_class),
        since_ms,
        until_ms,
    };
    Ok(Plan::Logs {
        filter,
        limit: l.limit,
        summary: l.summary,
    })
}

fn read_secret(path: &Path, what: &str) -> anyhow::Result<String> {
    let text = client::read_limited(path, MAX_SECRET_FILE_BYTES)
        .with_context(|| format!("cannot read {what} from {}", path.display()))?;
    if text.trim().is_empty() {
        bail!("{} holds no {what}", path.display());
    }
    Ok(text)
}

fn create_account(a: CreateAccountArgs) -> anyhow::Result<v1::CreateAccountRequest> {
    let api_key = a
        .api_key_file
        .as_deref()
        .map(|p| read_secret(p, "API key").map(|k| k.trim().to_string()))
        .transpose()?;
    let auth_json = a
        .auth_json_file
        .as_deref()
        .map(|p| read_secret(p, "auth.json"))
        .transpose()?;
    if a.provider == "codex" && api_key.is_some() {
        bail!("codex accounts log in with OAuth: pass --auth-json-file instead of --api-key-file");
    }
    if a.provider != "codex" && auth_json.is_some() {
        bail!(
            "{} accounts take an API key: pass --api-key-file instead of --auth-json-file",
            a.provider
        );
    }
    Ok(v1::CreateAccountRequest {
        provider: a.provider,
        name: a.name,
        group: opt(&a.group),
        tags: a.tags,
        priority: a.priority.unwrap_or(0),
        note: opt(&a.note),
        disabled: a.disabled,
        max_inflight: a.max_inflight.unwrap_or(0),
        proxy_url: opt(&a.proxy_url),
        model_filter: a.model_filter,
        base_url: opt(&a.base_url),
        azure_deployment: opt(&a.azure_deployment),
        azure_api_version: opt(&a.azure_api_version),
        api_key: api_key.unwrap_or_default(),
        auth_json: auth_json.unwrap_or_default(),
    })
}

fn create_key(k: CreateKeyArgs, now: i64) -> v1::CreateKeyRequest {
    v1::CreateKeyRequest {
        name: k.name,
        allowed_models: k.allow_models,
        model_override: opt(&k.model),
        reasoning_effort: opt(&k.reasoning_effort),
        account_groups: k.groups,
        expires_at_ms: k.expires_in.map_or(0, |d| later_ms(now, d)),
    }
}

/// A repeatable flag given as a whole new list; a lone empty value means "none".
fn list(values: Option<Vec<String>>) -> Option<v1::StringList> {
    values.map(|v| v1::StringList {
        values: v.into_iter().filter(|s| !s.is_empty()).collect(),
    })
}

fn update_account(u: UpdateAccountArgs) -> anyhow::Result<v1::UpdateAccountRequest> {
    let c = u.changes;
    let api_key = c
        .api_key_file
        .as_deref()
        .map(|p| read_secret(p, "API key").map(|k| k.trim().to_string()))
        .transpose()?;
    let auth_json = c
        .auth_json_file
        .as_deref()
        .map(|p| read_secret(p, "auth.json"))
        .transpose()?;
    Ok(v1::UpdateAccountRequest {
        id: u.id,
        name: c.name,
        group: c.group,
        tags: list(c.tags),
        priority: c.priority,
        note: c.note,
        enabled: None,
        max_inflight: c.max_inflight,
        proxy_url: c.proxy_url,
        model_filter: list(c.model_filter),
        base_url: c.base_url,
        azure_deployment: c.azure_deployment,
        azure_api_version: c.azure_api_version,
        api_key,
        auth_json,
        status: c.status,
        status_reason: c.status_reason,
    })
}

fn update_key(u: UpdateKeyArgs, now: i64) -> v1::UpdateKeyRequest {
    let c = u.changes;
    v1::UpdateKeyRequest {
        id: u.id,
        name: c.name,
        allowed_models: list(c.allow_models),
        model_override: c.model,
        reasoning_effort: c.reasoning_effort,
        account_groups: list(c.groups),
        expires_at_ms: c.expires_in.map(|e| match e {
            Expiry::Never => 0,
            Expiry::In(d) => later_ms(now, d),
        }),
    }
}

fn apply_policy(p: &mut v1::RoutingPolicy, s: &SetPolicyArgs) {
    if let Some(st) = s.strategy {
        p.strategy = match st {
            Strategy::Ordered => "ordered",
            Strategy::Balanced => "balanced",
        }
        .into();
    }
    if let Some(v) = s.p2c_window {
        p.p2c_window = v;
    }
    if let Some(v) = &s.cooldown_429 {
        p.cooldown_429_secs.clone_from(&v.0);
    }
    if let Some(v) = s.cooldown_5xx {
        p.cooldown_5xx_secs = v;
    }
    if let Some(v) = s.cooldown_network {
        p.cooldown_network_secs = v;
    }
    if let Some(v) = s.cooldown_auth {
        p.cooldown_auth_secs = v;
    }
    let g = p.quota_guard.get_or_insert_with(Default::default);
    if let Some(v) = s.quota_guard {
        g.enabled = v;
    }
    if let Some(v) = s.min_5h_remaining {
        g.min_five_hour_remaining_percent = v;
    }
    if let Some(v) = s.min_weekly_remaining {
        g.min_weekly_remaining_percent = v;
    }
    if let Some(v) = s.default_max_inflight {
        p.default_max_inflight = v;
    }
    if s.clear_model_aliases {
        p.model_aliases.clear();
    }
    if let Some(list) = &s.model_aliases {
        p.model_aliases = list
            .iter()
            .map(|a| v1::ModelAlias {
                from: a.from.clone(),
                to: a.to.clone(),
            })
            .collect();
    }
}

/// Expands files, directories (their `*.json` files, sorted) and `-` (stdin) into documents.
fn collect_docs(paths: &[PathBuf]) -> anyhow::Result<Vec<Doc>> {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut stdin_seen = false;
    for p in paths {
        if p.as_os_str() == "-" {
            if stdin_seen {
                bail!("`-` (stdin) may be given only once");
            }
            stdin_seen = true;
            files.push(p.clone());
        } else if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot read directory {}", p.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| {
                    f.is_file()
                        && f.extension()
                            .is_some_and(|x| x.eq_ignore_ascii_case("json"))
                })
                .collect();
            if found.is_empty() {
                bail!("no *.json file in directory {}", p.display());
            }
            found.sort();
            files.extend(found);
        } else {
            files.push(p.clone());
        }
    }
    files
        .into_iter()
        .map(|f| {
            let source = if f.as_os_str() == "-" {
                "-".into()
            } else {
                f.display().to_string()
            };
            let text = client::read_limited(&f, MAX_IMPORT_FILE_BYTES)
                .with_context(|| format!("cannot read {source}"))?;
            Ok(Doc { source, text })
        })
        .collect()
}

/// Splits documents into requests that stay under the message size limit.
fn chunks(docs: &[Doc]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, d) in docs.iter().enumerate() {
        let full = i > start
            && (size + d.text.len() > MAX_IMPORT_REQUEST_BYTES
                || i - start >= MAX_IMPORT_REQUEST_DOCS);
        if full {
            out.push(start..i);
            start = i;
            size = 0;
        }
        size += d.text.len();
    }
    if start < docs.len() {
        out.push(start..docs.len());
    }
    out
}

/// Whether a failed import request is about its documents (reported per document, the rest
/// goes on) rather than about the connection or the caller (which ends the import).
fn document_error(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::ResourceExhausted
            | Code::OutOfRange
            | Code::AlreadyExists
            | Code::FailedPrecondition
    )
}

async fn import(
    c: &mut Client,
    p: &Printer,
    docs: Vec<Doc>,
    group: String,
) -> anyhow::Result<ExitCode> {
    let mut total = v1::ImportAccountsResponse::default();
    for range in chunks(&docs) {
        let req = v1::ImportAccountsRequest {
            documents: docs[range.clone()].iter().map(|d| d.text.clone()).collect(),
            group: group.clone(),
        };
        let offset = u32::try_from(range.start).unwrap_or(u32::MAX);
        match c.api.import_accounts(req).await {
            Ok(r) => {
                let r = r.into_inner();
                total.total += r.total;
                total.created += r.created;
                total.updated += r.updated;
                total.failed += r.failed;
                total.results.extend(r.results.into_iter().map(|mut item| {
                    item.document = item.document.saturating_add(offset);
                    item
                }));
            }
            Err(s) if document_error(s.code()) => {
                for i in range {
                    total.total += 1;
                    total.failed += 1;
                    total.results.push(v1::ImportItemResult {
                        document: u32::try_from(i).unwrap_or(u32::MAX),
                        outcome: "failed".into(),
                        error: c.ctx.status(&s).to_string(),
                        ..Default::default()
                    });
                }
            }
            Err(s) => return Err(c.ctx.status(&s)),
        }
    }
    let rows: Vec<ImportRow<'_>> = total
        .results
        .iter()
        .map(|r| ImportRow {
            source: docs
                .get(r.document as usize)
                .map_or("?", |d| d.source.as_str()),
            result: r,
        })
        .collect();
    p.print(&total, |_| table::import(&rows), "Nothing to import.")?;
    if p.format == Output::Table {
        out(&format!(
            "\n{} created, {} updated, {} failed\n",
            total.created, total.updated, total.failed
        ))?;
    }
    Ok(if total.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(n: usize) -> Doc {
        Doc {
            source: String::new(),
            text: "x".repeat(n),
        }
    }

    #[test]
    fn import_chunks_respect_limits() {
        let mb = 1024 * 1024;
        let docs = vec![doc(mb), doc(mb), doc(2 * mb), doc(5 * mb), doc(10)];
        assert_eq!(chunks(&docs), vec![0..2, 2..3, 3..4, 4..5]);
        let many: Vec<Doc> = (0..250).map(|_| doc(10)).collect();
        assert_eq!(chunks(&many), vec![0..100, 100..200, 200..250]);
        assert!(chunks(&[]).is_empty());
    }

    #[test]
    fn collects_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.json"), "{}").unwrap();
        std::fs::write(dir.path().join("a.JSON"), "[]").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "no").unwrap();
        let single = dir.path().join("notes.txt");
        let docs = collect_docs(&[dir.path().to_path_buf(), single]).unwrap();
        let names: Vec<String> = docs
            .iter()
            .map(|d| {
                Path::new(&d.source)
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(names, ["a.JSON", "b.json", "notes.txt"]);
        assert_eq!(docs[0].text, "[]");
        let empty = tempfile::tempdir().unwrap();
        let e = collect_docs(&[empty.path().to_path_buf()])
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("no *.json file in directory"), "{e}");
        let e = collect_docs(&[dir.path().join("missing.json")])
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("cannot read"), "{e}");
        let e = collect_docs(&["-".into(), "-".into()])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("only once"), "{e}");
    }

    #[test]
    fn policy_changes_only_what_is_given() {
        let mut p = v1::RoutingPolicy {
            strategy: "ordered".into(),
            p2c_window: 3,
            cooldown_429_secs: vec![45],
            cooldown_5xx_secs: 30,
            cooldown_network_secs: 20,
            cooldown_auth_secs: 60,
            quota_guard: None,
            default_max_inflight: 0,
            model_aliases: vec![v1::ModelAlias {
                from: "claude-*".into(),
                to: "gpt-5".into(),
            }],
        };
        let s = SetPolicyArgs {
            strategy: Some(Strategy::Balanced),
            p2c_window: None,
            cooldown_429: Some(crate::cli::Ladder(vec![10, 20])),
            cooldown_5xx: None,
            cooldown_network: None,
            cooldown_auth: Some(5),
            quota_guard: Some(false),
            min_5h_remaining: None,
            min_weekly_remaining: Some(20.0),
            default_max_inflight: None,
            model_aliases: None,
            clear_model_aliases: false,
        };
        apply_policy(&mut p, &s);
        // Aliases not given are kept.
        assert_eq!(p.model_aliases.len(), 1);
        assert_eq!(p.strategy, "balanced");
        assert_eq!(p.p2c_window, 3);
        assert_eq!(p.cooldown_429_secs, vec![10, 20]);
        assert_eq!(p.cooldown_5xx_secs, 30);
        assert_eq!(p.cooldown_auth_secs, 5);
        let g = p.quota_guard.unwrap();
        assert!(!g.enabled);
        assert_eq!(g.min_weekly_remaining_percent, 20.0);

        let mut p = v1::RoutingPolicy {
            model_aliases: vec![v1::ModelAlias {
                from: "claude-*".into(),
                to: "gpt-5".into(),
            }],
            ..Default::default()
        };
        let only = |model_aliases, clear_model_aliases| SetPolicyArgs {
            strategy: None,
            p2c_window: None,
            cooldown_429: None,
            cooldown_5xx: None,
            cooldown_network: None,
            cooldown_auth: None,
            quota_guard: None,
            min_5h_remaining: None,
            min_weekly_remaining: None,
            default_max_inflight: None,
            model_aliases,
            clear_model_aliases,
        };
        // Given aliases replace the list, in the order given.
        let given = vec![
            crate::cli::ModelAliasArg {
                from: "claude-*haiku*".into(),
                to: "gpt-5-mini".into(),
            },
            crate::cli::ModelAliasArg {
                from: "claude-*".into(),
                to: "gpt-5-codex".into(),
            },
        ];
        apply_policy(&mut p, &only(Some(given), false));
        let pairs: Vec<(&str, &str)> = p
            .model_aliases
            .iter()
            .map(|a| (a.from.as_str(), a.to.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("claude-*haiku*", "gpt-5-mini"),
                ("claude-*", "gpt-5-codex")
            ]
        );
        apply_policy(&mut p, &only(None, true));
        assert!(p.model_aliases.is_empty());
    }

    #[test]
    fn request_building() {
        let now = 1_000_000;
        let k = create_key(
            CreateKeyArgs {
                name: "ci".into(),
                model: Some("gpt-5".into()),
                allow_models: vec!["gpt-5*".into()],
                groups: vec![],
                reasoning_effort: None,
                expires_in: Some(Duration::from_secs(60)),
            },
            now,
        );
        assert_eq!(k.expires_at_ms, now + 60_000);
        assert_eq!(k.model_override, "gpt-5");
        assert_eq!(
            list(Some(vec![String::new()])).unwrap().values,
            Vec::<String>::new()
        );
        assert!(list(None).is_none());
        let (s, u) = match logs_plan(
            LogsArgs {
                key: None,
                account: None,
                model: None,
                status: Some("5xx".into()),
                error_class: None,
                since: Some("1h".into()),
                until: None,
                limit: 10,
                summary: false,
            },
            now + 3_600_000,
        )
        .unwrap()
        {
            Plan::Logs { filter, .. } => (filter.since_ms, filter.until_ms),
            _ => panic!("not a logs plan"),
        };
        assert_eq!((s, u), (now, 0));
    }

    #[test]
    fn api_key_files_are_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "sk-test-123\n").unwrap();
        let args = |api: Option<PathBuf>, provider: &str| CreateAccountArgs {
            provider: provider.into(),
            name: "n".into(),
            base_url: None,
            api_key_file: api,
            auth_json_file: None,
            group: None,
            priority: None,
            max_inflight: None,
            model_filter: vec![],
            tags: vec![],
            azure_deployment: None,
            azure_api_version: None,
            proxy_url: None,
            note: None,
            disabled: false,
        };
        let r = create_account(args(Some(f.clone()), "openai")).unwrap();
        assert_eq!(r.api_key, "sk-test-123");
        let e = create_account(args(Some(f.clone()), "codex"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--auth-json-file"), "{e}");
        std::fs::write(&f, "\n").unwrap();
        let e = create_account(args(Some(f), "openai"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no API key"), "{e}");
        // Errors name the file, never its content.
        let e = format!(
            "{:#}",
            create_account(args(Some(dir.path().join("none")), "openai")).unwrap_err()
        );
        assert!(e.starts_with("cannot read API key from"), "{e}");
    }
}
