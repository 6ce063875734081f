//! What a routing decision looks at: the accounts (built by the gateway from its snapshot) and
//! the request.

use poolgate_core::{AccountStatus, Provider, StatusReason, UnixMillis, UsageSnapshot};

/// One account as routing sees it: the routing fields of the snapshot, nothing secret.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteAccount {
    pub id: String,
    pub provider: Provider,
    pub group: String,
    /// Lower numbers are tried first under the `ordered` strategy.
    pub priority: i32,
    /// Set by a person; a disabled account never takes traffic.
    pub enabled: bool,
    pub status: AccountStatus,
    pub status_reason: Option<StatusReason>,
    /// 0 means the policy's `default_max_inflight`.
    pub max_inflight: u32,
    /// Model patterns the account serves; empty serves every model.
    pub model_filter: Vec<String>,
    pub usage: Option<UsageSnapshot>,
    /// A cooldown the control plane shares with every gateway (what another replica saw).
    pub cooldown_until_ms: Option<UnixMillis>,
}

impl RouteAccount {
    /// A routable account with no usage data, for building inputs by hand.
    pub fn new(id: impl Into<String>, provider: Provider) -> Self {
        RouteAccount {
            id: id.into(),
            provider,
            group: poolgate_core::account::DEFAULT_GROUP.to_string(),
            priority: 0,
            enabled: true,
            status: AccountStatus::Active,
            status_reason: None,
            max_inflight: 0,
            model_filter: Vec::new(),
            usage: None,
            cooldown_until_ms: None,
        }
    }
}

/// The providers able to serve a request's protocol (e.g. Anthropic Messages needs a
/// translator a provider may lack). A bit set over [`Provider::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProviderSet(u8);

impl ProviderSet {
    pub const fn empty() -> Self {
        ProviderSet(0)
    }

    pub fn all() -> Self {
        Self::of(Provider::ALL)
    }

    pub fn of(providers: &[Provider]) -> Self {
        providers.iter().fold(Self::empty(), |s, p| s.with(*p))
    }

    #[must_use]
    pub fn with(self, p: Provider) -> Self {
        ProviderSet(self.0 | bit(p))
    }

    pub fn contains(self, p: Provider) -> bool {
        self.0 & bit(p) != 0
    }
}

fn bit(p: Provider) -> u8 {
    // Four providers today; the position in ALL is stable and below 8.
    let i = Provider::ALL.iter().position(|x| *x == p).unwrap_or(0);
    1u8 << (i % 8)
}

/// A different model for some providers: those that serve the request by translation may be
/// asked for another model than the client named (a Claude name served by a Codex model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Translated<'a> {
    pub providers: ProviderSet,
    pub model: &'a str,
}

/// The request being routed.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// The resolved model (after the key's override).
    pub model: &'a str,
    /// The model `providers` in it are asked for instead of `model`, when it differs; model
    /// filters of those accounts are checked against it.
    pub translated: Option<Translated<'a>>,
    /// Account groups the platform key may use; empty allows every group.
    pub allowed_groups: &'a [String],
    /// Providers that can serve the request's protocol.
    pub providers: ProviderSet,
    /// Conversation anchor (session id, conversation id, prompt cache key, turn state). The
    /// gateway chooses the string; prefixing it with the key id keeps keys apart.
    pub anchor: Option<&'a str>,
    /// Platform key id: with the model, it keys the `balanced` rotation.
    pub key_id: &'a str,
}

impl<'a> RouteRequest<'a> {
    /// A request any provider can serve, in every group, without an anchor.
    pub fn new(model: &'a str, key_id: &'a str) -> Self {
        RouteRequest {
            model,
            translated: None,
            allowed_groups: &[],
            providers: ProviderSet::all(),
            anchor: None,
            key_id,
        }
    }
}

impl RouteRequest<'_> {
    /// The model an account of `provider` is asked for.
    pub fn model_for(&self, provider: Provider) -> &str {
        match self.translated {
            Some(t) if t.providers.contains(provider) => t.model,
            _ => self.model,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translated_model_applies_to_its_providers_only() {
        let mut r = RouteRequest::new("claude-sonnet-4-5", "k");
        assert_eq!(r.model_for(Provider::Codex), "claude-sonnet-4-5");
        r.translated = Some(Translated {
            providers: ProviderSet::of(&[Provider::Codex]),
            model: "gpt-5",
        });
        assert_eq!(r.model_for(Provider::Codex), "gpt-5");
        assert_eq!(r.model_for(Provider::Anthropic), "claude-sonnet-4-5");
    }

    #[test]
    fn provider_sets() {
        let s = ProviderSet::of(&[Provider::Codex, Provider::OpenAi]);
        assert!(s.contains(Provider::Codex));
        assert!(s.contains(Provider::OpenAi));
        assert!(!s.contains(Provider::Anthropic));
        assert!(!s.contains(Provider::AzureOpenAi));
        assert!(!ProviderSet::empty().contains(Provider::Codex));
        assert!(
            Provider::ALL
                .iter()
                .all(|p| ProviderSet::all().contains(*p))
        );
        assert_eq!(
            ProviderSet::empty().with(Provider::Anthropic),
            ProviderSet::of(&[Provider::Anthropic])
        );
    }
}
