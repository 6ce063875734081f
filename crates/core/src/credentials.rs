use serde::{Deserialize, Serialize};

use crate::{Secret, UnixMillis};

/// OAuth tokens of a Codex login. Refresh tokens rotate and are single-use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthTokens {
    pub id_token: Secret,
    pub access_token: Secret,
    /// May be empty for access-token-only imports; such accounts cannot be refreshed.
    pub refresh_token: Secret,
    /// From the access token's `exp` claim when it has one.
    pub expires_at_ms: Option<UnixMillis>,
    pub last_refresh_ms: Option<UnixMillis>,
}

impl OAuthTokens {
    /// When the access token expires: its JWT `exp` claim, else the stored expiry.
    pub fn access_expires_at_ms(&self) -> Option<UnixMillis> {
        crate::jwt::openai_claims(self.access_token.expose())
            .ok()
            .and_then(|c| c.exp)
            .map(|s| s.saturating_mul(1000))
            .or(self.expires_at_ms)
    }
}

/// What the gateway needs to authenticate upstream. Stored encrypted; never in a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Credentials {
    #[serde(rename = "oauth")]
    OAuth(OAuthTokens),
    ApiKey {
        key: Secret,
    },
}

impl Credentials {
    pub fn kind(&self) -> &'static str {
        match self {
            Credentials::OAuth(_) => "oauth",
            Credentials::ApiKey { .. } => "api_key",
        }
    }

    /// Checks the credential suits the provider.
    pub fn check_for(&self, provider: crate::Provider) -> Result<(), crate::Error> {
        match (provider.uses_oauth(), self) {
            (true, Credentials::OAuth(t)) if t.access_token.is_empty() => Err(
                crate::Error::invalid("credentials", "access token is empty"),
            ),
            (true, Credentials::OAuth(_)) => Ok(()),
            (true, Credentials::ApiKey { .. }) => Err(crate::Error::invalid(
                "credentials",
                "codex accounts log in with OAuth (import an auth.json or use `poolctl login`), not an API key",
            )),
            (false, Credentials::ApiKey { key }) if key.expose().trim().is_empty() => {
                Err(crate::Error::invalid("credentials", "API key is empty"))
            }
            (false, Credentials::ApiKey { key }) if key.expose().len() > 4096 => Err(
                crate::Error::invalid("credentials", "API key is longer than 4096 bytes"),
            ),
            (false, Credentials::ApiKey { .. }) => Ok(()),
            (false, Credentials::OAuth(_)) => Err(crate::Error::invalid(
                "credentials",
                format!("{provider} accounts take an API key"),
            )),
        }
    }
}
