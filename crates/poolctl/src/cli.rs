//! The command line: global flags and kubectl-like verbs.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::parse;

#[derive(Debug, Parser)]
#[command(
    name = "poolctl",
    version,
    about = "Administer a poolgate control plane over gRPC",
    after_help = "Examples:\n  poolctl --token-file ./poolgate-data/admin.token get accounts\n  \
                  poolctl import accounts ~/.codex/auth.json exports/\n  \
                  poolctl create key --name ci --allow-model 'gpt-5*' -o json"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Control-plane gRPC address.
    #[arg(
        long,
        global = true,
        env = "POOLGATE_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// Admin token (prefer --token-file: argv is visible to other users of the machine).
    #[arg(long, global = true, env = "POOLGATE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the admin token (`poolgate standalone` writes DATA_DIR/admin.token).
    /// (An empty value, like an empty POOLGATE_TOKEN, counts as unset.)
    #[arg(long, global = true, env = "POOLGATE_TOKEN_FILE", value_parser = clap::value_parser!(OsString))]
    pub token_file: Option<OsString>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Deadline for connecting and for each call (e.g. 10s, 2m).
    #[arg(long, global = true, default_value = "30s", value_parser = parse::duration)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List or show resources.
    #[command(subcommand)]
    Get(GetCmd),
    /// Create an account, a platform key or an admin token.
    #[command(subcommand)]
    Create(CreateCmd),
    /// Change an account or a platform key.
    #[command(subcommand)]
    Update(UpdateCmd),
    /// Delete an account, a platform key or an admin token.
    #[command(subcommand)]
    Delete(DeleteCmd),
    /// Disable an account or a platform key.
    #[command(subcommand)]
    Disable(ToggleCmd),
    /// Enable an account or a platform key.
    #[command(subcommand)]
    Enable(ToggleCmd),
    /// Change settings.
    #[command(subcommand)]
    Set(SetCmd),
    /// Import Codex auth.json documents.
    #[command(subcommand)]
    Import(ImportCmd),
    /// Usage windows and availability per account (same as `get usage`).
    Usage(UsageArgs),
    /// Request logs (same as `get logs`).
    Logs(LogsArgs),
    /// Show who the token belongs to.
    Whoami,
    /// Add (or renew) a ChatGPT/Codex account by logging in through the control plane.
    Login(LoginArgs),
}

/// `poolctl login`: the control plane keeps the PKCE verifier; poolctl opens the authorize
/// URL and carries the browser's redirect back.
#[derive(Debug, Args)]
#[command(
    after_help = "Modes:\n  (default)  open the browser and catch its redirect on the control plane's redirect \
                        URI (http://localhost:1455/auth/callback unless configured otherwise)\n  \
                        --manual   print the URL; paste the address the browser ends on\n  \
                        --device   show a code to enter on another device"
)]
pub struct LoginArgs {
    /// Print the URL and read the redirected address from stdin (no local listener).
    #[arg(long, conflicts_with = "device")]
    pub manual: bool,
    /// Device-code login: enter a code at the issuer's page on any device.
    #[arg(long)]
    pub device: bool,
    /// Where to listen for the browser's redirect (host:port; default: the host and port of
    /// the control plane's redirect URI).
    #[arg(long, conflicts_with_all = ["manual", "device"])]
    pub listen: Option<String>,
    /// Do not try to open a browser (the URL is always printed).
    #[arg(long)]
    pub no_browser: bool,
    /// Group of a newly created account.
    #[arg(long)]
    pub group: Option<String>,
    /// Name of a newly created account (default: the login's e-mail).
    #[arg(long)]
    pub name: Option<String>,
    /// Restrict the login to this ChatGPT workspace id.
    #[arg(long)]
    pub workspace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum GetCmd {
    /// Upstream accounts (all of them, or one by ID).
    #[command(visible_alias = "account", alias = "acc")]
    Accounts(GetAccountsArgs),
    /// Platform keys (all of them, or one by ID).
    #[command(visible_alias = "key")]
    Keys {
        /// Show only this key.
        id: Option<String>,
    },
    /// Usage windows and availability per account.
    Usage(UsageArgs),
    /// Request logs, newest first.
    #[command(visible_alias = "log")]
    Logs(LogsArgs),
    /// The routing policy.
    Policy,
    /// Admin tokens.
    #[command(visible_alias = "token")]
    Tokens,
    /// Gateways seen in the last few minutes, with the snapshot version each has applied.
    #[command(visible_alias = "gateway", alias = "gw")]
    Gateways,
    /// Audit events, newest first.
    Audit {
        /// At most this many events.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        limit: u32,
    },
}

#[derive(Debug, Args)]
pub struct GetAccountsArgs {
    /// Show only this account.
    pub id: Option<String>,
    #[arg(long)]
    pub group: Option<String>,
    /// codex | openai | azure_openai | anthropic
    #[arg(long)]
    pub provider: Option<String>,
    /// active | unavailable
    #[arg(long)]
    pub status: Option<String>,
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    #[arg(long)]
    pub group: Option<String>,
    #[arg(long)]
    pub provider: Option<String>,
    #[arg(long)]
    pub status: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Platform key ID.
    #[arg(long)]
    pub key: Option<String>,
    /// Account ID.
    #[arg(long)]
    pub account: Option<String>,
    #[arg(long)]
    pub model: Option<String>,
    /// Status class, e.g. 2xx, 4xx, 5xx.
    #[arg(long)]
    pub status: Option<String>,
    /// e.g. rate_limited, quota_exhausted, auth, upstream_5xx, network.
    #[arg(long)]
    pub error_class: Option<String>,
    /// Start of the range: a duration ago (1h, 7d) or an RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// End of the range (exclusive): a duration ago or an RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// At most this many records.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
    /// Totals per model and per account instead of records.
    #[arg(long)]
    pub summary: bool,
}

#[derive(Debug, Subcommand)]
pub enum CreateCmd {
    /// An upstream account.
    #[command(visible_alias = "accounts")]
    Account(CreateAccountArgs),
    /// A platform key; its plaintext is shown once.
    #[command(visible_alias = "keys")]
    Key(CreateKeyArgs),
    /// An admin token; its plaintext is shown once.
    #[command(visible_alias = "tokens")]
    Token {
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: Role,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Role {
    Admin,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
        }
    }
}

#[derive(Debug, Args)]
pub struct CreateAccountArgs {
    /// codex | openai | azure_openai | anthropic
    #[arg(long, value_parser = provider)]
    pub provider: String,
    #[arg(long)]
    pub name: String,
    /// Override of the provider's base URL (Azure: the resource endpoint).
    #[arg(long)]
    pub base_url: Option<String>,
    /// File holding the API key (openai, azure_openai, anthropic); `-` reads stdin.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Codex auth.json file (codex); `-` reads stdin.
    #[arg(long)]
    pub auth_json_file: Option<PathBuf>,
    #[arg(long)]
    pub group: Option<String>,
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Concurrent requests cap (0 = the routing policy's default).
    #[arg(long)]
    pub max_inflight: Option<u32>,
    /// Model pattern the account serves (repeatable; `*` wildcards).
    #[arg(long = "model-filter")]
    pub model_filter: Vec<String>,
    /// Tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    #[arg(long, requires = "azure_api_version")]
    pub azure_deployment: Option<String>,
    #[arg(long, requires = "azure_deployment")]
    pub azure_api_version: Option<String>,
    #[arg(long)]
    pub proxy_url: Option<String>,
    #[arg(long)]
    pub note: Option<String>,
    /// Create the account disabled.
    #[arg(long)]
    pub disabled: bool,
}

#[derive(Debug, Args)]
pub struct CreateKeyArgs {
    #[arg(long)]
    pub name: String,
    /// Model that replaces the one of every request made with the key.
    #[arg(long)]
    pub model: Option<String>,
    /// Model pattern the key may use (repeatable; default: all).
    #[arg(long = "allow-model")]
    pub allow_models: Vec<String>,
    /// Account group the key may route to (repeatable; default: all).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// minimal | low | medium | high | xhigh | max
    #[arg(long, value_parser = effort)]
    pub reasoning_effort: Option<String>,
    /// Lifetime, e.g. 30d, 12h (default: never expires).
    #[arg(long, value_parser = parse::duration)]
    pub expires_in: Option<Duration>,
}

#[derive(Debug, Subcommand)]
pub enum UpdateCmd {
    #[command(visible_alias = "accounts")]
    Account(UpdateAccountArgs),
    #[command(visible_alias = "keys")]
    Key(UpdateKeyArgs),
}

#[derive(Debug, Args)]
pub struct UpdateAccountArgs {
    pub id: String,
    #[command(flatten)]
    pub changes: AccountChanges,
}

/// At least one change is required: an update that changes nothing is a usage error.
#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct AccountChanges {
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long)]
    pub group: Option<String>,
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Base URL override; an empty value clears it.
    #[arg(long)]
    pub base_url: Option<String>,
    /// Proxy URL; an empty value clears it.
    #[arg(long)]
    pub proxy_url: Option<String>,
    /// Replace the API key from this file; `-` reads stdin.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Replace the OAuth tokens from this auth.json (same login only); `-` reads stdin.
    #[arg(long)]
    pub auth_json_file: Option<PathBuf>,
    #[arg(long)]
    pub max_inflight: Option<u32>,
    /// Replace the model filter (repeatable); a single empty value clears it.
    #[arg(long = "model-filter")]
    pub model_filter: Option<Vec<String>>,
    /// Replace the tags (repeatable); a single empty value clears them.
    #[arg(long = "tag")]
    pub tags: Option<Vec<String>>,
    #[arg(long)]
    pub note: Option<String>,
    #[arg(long)]
    pub azure_deployment: Option<String>,
    #[arg(long)]
    pub azure_api_version: Option<String>,
    /// active (clears the reason) or unavailable (with --status-reason).
    #[arg(long, value_parser = account_status)]
    pub status: Option<String>,
    /// auth_invalid | deactivated | quota_exhausted | region_blocked | usage_unreachable
    #[arg(long, requires = "status", value_parser = status_reason)]
    pub status_reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct UpdateKeyArgs {
    pub id: String,
    #[command(flatten)]
    pub changes: KeyChanges,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct KeyChanges {
    #[arg(long)]
    pub name: Option<String>,
    /// Model override; an empty value clears it.
    #[arg(long)]
    pub model: Option<String>,
    /// Replace the allowed models (repeatable); a single empty value allows all.
    #[arg(long = "allow-model")]
    pub allow_models: Option<Vec<String>>,
    /// Replace the account groups (repeatable); a single empty value allows all.
    #[arg(long = "group")]
    pub groups: Option<Vec<String>>,
    /// Reasoning-effort override; an empty value clears it.
    #[arg(long, value_parser = effort_or_empty)]
    pub reasoning_effort: Option<String>,
    /// New lifetime from now (e.g. 30d), or `never`.
    #[arg(long, value_parser = expiry)]
    pub expires_in: Option<Expiry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Never,
    In(Duration),
}

#[derive(Debug, Subcommand)]
pub enum ToggleCmd {
    #[command(visible_alias = "accounts")]
    Account { id: String },
    #[command(visible_alias = "keys")]
    Key { id: String },
}

#[derive(Debug, Subcommand)]
pub enum DeleteCmd {
    #[command(visible_alias = "accounts")]
    Account { id: String },
    #[command(visible_alias = "keys")]
    Key { id: String },
    #[command(visible_alias = "tokens")]
    Token { id: String },
}

#[derive(Debug, Subcommand)]
pub enum SetCmd {
    /// Change the routing policy (the fields given; the rest stays).
    Policy(SetPolicyArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Strategy {
    Ordered,
    Balanced,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct SetPolicyArgs {
    #[arg(long, value_enum)]
    pub strategy: Option<Strategy>,
    /// Power-of-two-choices picks among the first N candidates.
    #[arg(long)]
    pub p2c_window: Option<u32>,
    /// Cooldowns after successive 429s, e.g. 45s,5m,30m,2h (the last repeats).
    #[arg(long = "cooldown-429", value_parser = ladder)]
    pub cooldown_429: Option<Ladder>,
    #[arg(long = "cooldown-5xx", value_parser = parse::seconds)]
    pub cooldown_5xx: Option<u32>,
    #[arg(long, value_parser = parse::seconds)]
    pub cooldown_network: Option<u32>,
    #[arg(long, value_parser = parse::seconds)]
    pub cooldown_auth: Option<u32>,
    /// on | off
    #[arg(long, value_parser = parse::on_off)]
    pub quota_guard: Option<bool>,
    /// Percent of the 5-hour window an account must have left.
    #[arg(long = "min-5h-remaining", value_parser = parse::percent)]
    pub min_5h_remaining: Option<f64>,
    /// Percent of the weekly window an account must have left.
    #[arg(long, value_parser = parse::percent)]
    pub min_weekly_remaining: Option<f64>,
    /// In-flight cap for accounts that set none (0 = unlimited).
    #[arg(long)]
    pub default_max_inflight: Option<u32>,
    /// Replace the model aliases (repeatable, in order, first match wins): FROM=TO asks
    /// Codex accounts for model TO when a client sends a model matching FROM over a
    /// translated protocol, e.g. 'claude-opus-*=gpt-5'.
    #[arg(long = "model-alias", value_name = "FROM=TO", value_parser = model_alias)]
    pub model_aliases: Option<Vec<ModelAliasArg>>,
    /// Remove every model alias.
    #[arg(long, conflicts_with = "model_aliases")]
    pub clear_model_aliases: bool,
}

/// One `--model-alias FROM=TO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelAliasArg {
    pub from: String,
    pub to: String,
}

fn model_alias(s: &str) -> Result<ModelAliasArg, String> {
    parse::model_alias(s).map(|(from, to)| ModelAliasArg { from, to })
}

#[derive(Debug, Subcommand)]
pub enum ImportCmd {
    /// Codex auth.json documents: files, directories of *.json, or `-` for stdin. Each may
    /// hold one object, a JSON array or NDJSON.
    #[command(visible_alias = "account")]
    Accounts {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Group for newly created accounts.
        #[arg(long)]
        group: Option<String>,
    },
}

/// A cooldown ladder in seconds (a newtype: clap would read `Vec` as a repeatable flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ladder(pub Vec<u32>);

fn ladder(s: &str) -> Result<Ladder, String> {
    parse::cooldown_list(s).map(Ladder)
}

fn provider(s: &str) -> Result<String, String> {
    s.parse::<poolgate_core::Provider>()
        .map(|p| p.as_str().to_string())
        .map_err(|e| e.to_string())
}

fn effort(s: &str) -> Result<String, String> {
    s.parse::<poolgate_core::ReasoningEffort>()
        .map(|p| p.as_str().to_string())
        .map_err(|e| e.to_string())
}

fn effort_or_empty(s: &str) -> Result<String, String> {
    if s.is_empty() {
        Ok(String::new())
    } else {
        effort(s)
    }
}

fn account_status(s: &str) -> Result<String, String> {
    s.parse::<poolgate_core::AccountStatus>()
        .map(|p| p.as_str().to_string())
        .map_err(|e| e.to_string())
}

fn status_reason(s: &str) -> Result<String, String> {
    s.parse::<poolgate_core::StatusReason>()
        .map(|p| p.as_str().to_string())
        .map_err(|e| e.to_string())
}

fn expiry(s: &str) -> Result<Expiry, String> {
    if s.trim().eq_ignore_ascii_case("never") {
        return Ok(Expiry::Never);
    }
    parse::duration(s).map(Expiry::In)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("poolctl").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_anywhere() {
        let c = parse(&["get", "accounts", "-o", "json", "--server", "http://h:1"]).unwrap();
        assert_eq!(c.global.output, Output::Json);
        assert_eq!(c.global.server, "http://h:1");
        assert!(matches!(
            c.command,
            Command::Get(GetCmd::Accounts(GetAccountsArgs { id: None, .. }))
        ));
        let c = parse(&["--timeout", "5s", "get", "account", "acc_1"]).unwrap();
        assert_eq!(c.global.timeout, Duration::from_secs(5));
        assert!(matches!(
            c.command,
            Command::Get(GetCmd::Accounts(GetAccountsArgs { id: Some(ref i), .. })) if i == "acc_1"
        ));
    }

    #[test]
    fn verbs_and_aliases() {
        assert!(matches!(
            parse(&["usage"]).unwrap().command,
            Command::Usage(_)
        ));
        assert!(matches!(
            parse(&["get", "usage"]).unwrap().command,
            Command::Get(GetCmd::Usage(_))
        ));
        let c = parse(&["logs", "--summary", "--since", "1h", "--status", "5xx"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Logs(LogsArgs { summary: true, .. })
        ));
        assert!(matches!(
            parse(&["disable", "key", "k"]).unwrap().command,
            Command::Disable(ToggleCmd::Key { .. })
        ));
        assert!(matches!(
            parse(&["delete", "token", "t"]).unwrap().command,
            Command::Delete(DeleteCmd::Token { .. })
        ));
        for g in ["gateways", "gateway", "gw"] {
            assert!(matches!(
                parse(&["get", g, "-o", "yaml"]).unwrap().command,
                Command::Get(GetCmd::Gateways)
            ));
        }
        let c = parse(&[
            "create",
            "account",
            "--provider",
            "Azure",
            "--name",
            "n",
            "--priority",
            "-3",
        ])
        .unwrap();
        let Command::Create(CreateCmd::Account(a)) = c.command else {
            panic!()
        };
        assert_eq!(a.provider, "azure_openai");
        assert_eq!(a.priority, Some(-3));
    }

    #[test]
    fn login_flags() {
        let c = parse(&["login"]).unwrap();
        let Command::Login(l) = c.command else {
            panic!()
        };
        assert!(!l.manual && !l.device && l.listen.is_none());
        let c = parse(&["login", "--device", "--group", "g", "-o", "json"]).unwrap();
        assert!(matches!(
            c.command,
            Command::Login(LoginArgs { device: true, .. })
        ));
        assert!(parse(&["login", "--manual", "--device"]).is_err());
        assert!(parse(&["login", "--manual", "--listen", "127.0.0.1:1"]).is_err());
    }

    #[test]
    fn usage_errors() {
        let e = parse(&["create", "account", "--provider", "gemini", "--name", "x"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        assert_eq!(e.exit_code(), 2);
        // An update that changes nothing is refused before any call is made.
        assert!(parse(&["update", "account", "acc_1"]).is_err());
        assert!(parse(&["update", "key", "key_1"]).is_err());
        assert!(parse(&["set", "policy"]).is_err());
        assert!(parse(&["set", "policy", "--cooldown-429", "5m,oops"]).is_err());
        let e = parse(&["set", "policy", "--model-alias", "claude-*"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        assert!(e.to_string().contains("expected FROM=TO"), "{e}");
        assert!(
            parse(&[
                "set",
                "policy",
                "--model-alias",
                "a*=b",
                "--clear-model-aliases"
            ])
            .is_err()
        );
        assert!(parse(&["create", "key", "--name", "k", "--expires-in", "soon"]).is_err());
        assert!(parse(&["logs", "--limit", "0"]).is_err());
        assert!(parse(&["import", "accounts"]).is_err());
        assert!(
            parse(&[
                "create",
                "account",
                "--provider",
                "azure",
                "--name",
                "a",
                "--azure-deployment",
                "d"
            ])
            .is_err()
        );
    }

    #[test]
    fn update_flags() {
        let c = parse(&[
            "update",
            "account",
            "acc_1",
            "--base-url",
            "",
            "--model-filter",
            "a",
            "--model-filter",
            "b",
        ])
        .unwrap();
        let Command::Update(UpdateCmd::Account(u)) = c.command else {
            panic!()
        };
        assert_eq!(u.id, "acc_1");
        let u = u.changes;
        assert_eq!(u.base_url.as_deref(), Some(""));
        assert_eq!(u.model_filter, Some(vec!["a".to_string(), "b".to_string()]));
        let c = parse(&["update", "key", "key_1", "--expires-in", "never"]).unwrap();
        let Command::Update(UpdateCmd::Key(k)) = c.command else {
            panic!()
        };
        assert_eq!(k.changes.expires_in, Some(Expiry::Never));
        let c = parse(&[
            "set",
            "policy",
            "--cooldown-429",
            "45s,5m",
            "--quota-guard",
            "off",
            "--min-5h-remaining",
            "7%",
        ])
        .unwrap();
        let Command::Set(SetCmd::Policy(p)) = c.command else {
            panic!()
        };
        assert_eq!(p.cooldown_429, Some(Ladder(vec![45, 300])));
        assert_eq!(p.quota_guard, Some(false));
        assert_eq!(p.min_5h_remaining, Some(7.0));
        assert_eq!(p.model_aliases, None);
        assert!(!p.clear_model_aliases);
        let c = parse(&[
            "set",
            "policy",
            "--model-alias",
            "claude-opus-*=gpt-5",
            "--model-alias",
            "claude-haiku-*=gpt-5-mini",
        ])
        .unwrap();
        let Command::Set(SetCmd::Policy(p)) = c.command else {
            panic!()
        };
        let alias = |from: &str, to: &str| ModelAliasArg {
            from: from.into(),
            to: to.into(),
        };
        assert_eq!(
            p.model_aliases,
            Some(vec![
                alias("claude-opus-*", "gpt-5"),
                alias("claude-haiku-*", "gpt-5-mini")
            ])
        );
        // Clearing alone is a change of its own.
        let c = parse(&["set", "policy", "--clear-model-aliases"]).unwrap();
        let Command::Set(SetCmd::Policy(p)) = c.command else {
            panic!()
        };
        assert!(p.clear_model_aliases && p.model_aliases.is_none());
    }
}
