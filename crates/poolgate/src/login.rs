//! Flags of `poolctl login` on the control plane: the OAuth issuer, the client id and the
//! redirect URI (a test double or a proxy can stand in for the issuer).

use std::time::Duration;

use clap::Args;
use poolgate_control::ControlConfig;
use poolgate_upstream::oauth::{DEFAULT_CLIENT_ID, DEFAULT_ISSUER, DEFAULT_REDIRECT_URI};

#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    /// OAuth issuer for `poolctl login` (and token refresh).
    #[arg(long, env = "POOLGATE_OAUTH_ISSUER", default_value = DEFAULT_ISSUER)]
    pub oauth_issuer: String,
    /// OAuth client id.
    #[arg(long, env = "POOLGATE_OAUTH_CLIENT_ID", default_value = DEFAULT_CLIENT_ID)]
    pub oauth_client_id: String,
    /// Where the issuer sends the browser back after a login (poolctl listens there).
    #[arg(long, env = "POOLGATE_OAUTH_REDIRECT_URI", default_value = DEFAULT_REDIRECT_URI)]
    pub oauth_redirect_uri: String,
    /// How long a login may take from start to completion.
    #[arg(long, env = "POOLGATE_LOGIN_SESSION_TTL", default_value = "10m", value_parser = ttl)]
    pub login_session_ttl: Duration,
}

fn ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 10m, 90s)"))?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) {
        return Err("must be between 1s and 24h".into());
    }
    Ok(d)
}

impl LoginArgs {
    /// Sets the OAuth and login fields of `config` (checked when the control plane binds).
    pub fn apply(&self, config: &mut ControlConfig) {
        config.oauth.issuer = self.oauth_issuer.trim().to_string();
        config.oauth.client_id = self.oauth_client_id.trim().to_string();
        config.login.redirect_uri = self.oauth_redirect_uri.trim().to_string();
        config.login.session_ttl = self.login_session_ttl;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        login: LoginArgs,
    }

    #[test]
    fn defaults_and_overrides() {
        let c = Cli::try_parse_from(["x"]).unwrap();
        let mut cfg = ControlConfig::new("a", "b");
        c.login.apply(&mut cfg);
        assert_eq!(cfg.oauth.issuer, "https://auth.openai.com");
        assert_eq!(cfg.oauth.client_id, DEFAULT_CLIENT_ID);
        assert_eq!(
            cfg.login.redirect_uri,
            "http://localhost:1455/auth/callback"
        );
        assert_eq!(cfg.login.session_ttl, Duration::from_secs(600));
        let c = Cli::try_parse_from([
            "x",
            "--oauth-issuer",
            "http://127.0.0.1:9/",
            "--oauth-redirect-uri",
            "http://127.0.0.1:7/cb",
            "--login-session-ttl",
            "90s",
        ])
        .unwrap();
        c.login.apply(&mut cfg);
        assert_eq!(cfg.oauth.issuer, "http://127.0.0.1:9/");
        assert_eq!(cfg.login.redirect_uri, "http://127.0.0.1:7/cb");
        assert_eq!(cfg.login.session_ttl, Duration::from_secs(90));
        assert!(Cli::try_parse_from(["x", "--login-session-ttl", "0s"]).is_err());
    }
}
