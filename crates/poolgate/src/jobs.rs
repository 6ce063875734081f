//! Flags of the leader's account jobs: OAuth token refresh (against `POOLGATE_OAUTH_ISSUER`,
//! see `login.rs`) and usage polling. Both always run on the leader of `poolgate control` and
//! in `poolgate standalone` (always the leader).

use std::time::Duration;

use clap::Args;
use poolgate_control::{ControlConfig, RefreshJobConfig, UsagePollConfig};
use poolgate_upstream::usage::DEFAULT_USAGE_BASE_URL;

#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// Usage endpoint base: `{base}/wham/usage` is polled for every Codex account.
    #[arg(long, env = "POOLGATE_USAGE_BASE_URL", default_value = DEFAULT_USAGE_BASE_URL)]
    pub usage_base_url: String,
    /// Time between usage polls of each account (±20 % jitter; failures back off up to 30m).
    #[arg(long, env = "POOLGATE_USAGE_POLL_INTERVAL", default_value = "5m", value_parser = poll_interval)]
    pub usage_poll_interval: Duration,
    /// Refresh OAuth tokens this long before their access token expires.
    #[arg(long, env = "POOLGATE_TOKEN_REFRESH_LEAD", default_value = "10m", value_parser = refresh_lead)]
    pub token_refresh_lead: Duration,
}

fn bounded(s: &str, min: Duration, max: Duration, what: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 30s, 5m)"))?;
    if d < min || d > max {
        return Err(format!(
            "{what} must be between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

fn poll_interval(s: &str) -> Result<Duration, String> {
    bounded(
        s,
        Duration::from_secs(1),
        Duration::from_secs(24 * 3600),
        "the usage poll interval",
    )
}

fn refresh_lead(s: &str) -> Result<Duration, String> {
    bounded(
        s,
        Duration::from_secs(1),
        Duration::from_secs(7 * 24 * 3600),
        "the token refresh lead",
    )
}

impl JobArgs {
    /// Turns on token refresh and usage polling in `config` (checked when it binds).
    pub fn apply(&self, config: &mut ControlConfig) {
        config.usage_base_url = self.usage_base_url.trim().to_string();
        config.usage_poll = Some(UsagePollConfig {
            interval: self.usage_poll_interval,
            // Failures back off to at least the interval, and never past 30 minutes unless
            // the interval itself is longer.
            backoff_max: Duration::from_secs(1800).max(self.usage_poll_interval),
            ..UsagePollConfig::default()
        });
        config.token_refresh = Some(RefreshJobConfig {
            lead: self.token_refresh_lead,
            ..RefreshJobConfig::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        jobs: JobArgs,
    }

    #[test]
    fn defaults_and_overrides() {
        let mut cfg = ControlConfig::new("a", "b");
        assert!(cfg.token_refresh.is_none() && cfg.usage_poll.is_none());
        Cli::try_parse_from(["t"]).unwrap().jobs.apply(&mut cfg);
        assert_eq!(cfg.usage_base_url, "https://chatgpt.com/backend-api");
        assert_eq!(
            cfg.usage_poll.as_ref().unwrap().interval,
            Duration::from_secs(300)
        );
        assert_eq!(
            cfg.token_refresh.as_ref().unwrap().lead,
            Duration::from_secs(600)
        );
        let cli = Cli::try_parse_from([
            "t",
            "--usage-base-url",
            " http://127.0.0.1:9/backend-api ",
            "--usage-poll-interval",
            "2h",
            "--token-refresh-lead",
            "30m",
        ])
        .unwrap();
        cli.jobs.apply(&mut cfg);
        assert_eq!(cfg.usage_base_url, "http://127.0.0.1:9/backend-api");
        let poll = cfg.usage_poll.unwrap();
        assert_eq!(poll.interval, Duration::from_secs(7200));
        assert_eq!(poll.backoff_max, Duration::from_secs(7200));
        assert_eq!(cfg.token_refresh.unwrap().lead, Duration::from_secs(1800));
        assert!(Cli::try_parse_from(["t", "--usage-poll-interval", "0s"]).is_err());
        assert!(Cli::try_parse_from(["t", "--token-refresh-lead", "soon"]).is_err());
    }
}
