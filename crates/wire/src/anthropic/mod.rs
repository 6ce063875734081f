//! Anthropic Messages ↔ Responses (seed spec §11.4 with the [H] fixes), for Claude-style
//! clients (Claude Code, the Anthropic SDKs) served by Codex accounts.
//!
//! - [`parse_messages_request`] / [`MessagesRequest`]: the request, typed and tolerant of
//!   fields it does not know.
//! - [`messages_to_responses_request`]: a Messages request as a Responses request (apply
//!   [`crate::responses::normalize_codex_request`] afterwards), with what the way back needs.
//! - [`responses_to_messages`]: a final Responses object as a Messages response.
//! - [`MessagesStreamTranslator`]: Responses SSE events in, Anthropic SSE events out.
//! - [`anthropic_error_body`] and friends: errors in the Anthropic dialect.
//! - [`count_tokens`]: the local `/v1/messages/count_tokens` estimate.
//! - [`claude_anchor`]: the stable conversation anchor Claude-style clients do not send (§15).

mod count;
mod errors;
mod request;
mod response;
mod stream;
mod types;

pub use count::{count_tokens, count_tokens_body};
pub use errors::{
    anthropic_error_body, anthropic_error_bytes, anthropic_error_from_upstream,
    anthropic_error_type, anthropic_stream_error_frame,
};
pub use request::{
    MessagesConversion, effort_for_thinking, messages_to_responses_request, parse_messages_request,
};
pub use response::{MessagesReplyOptions, StopReason, messages_usage_json, responses_to_messages};
pub use stream::MessagesStreamTranslator;
pub use types::{
    ContentBlock, MediaSource, Message, MessageContent, MessagesRequest, Metadata, OutputConfig,
    SystemPrompt, Thinking, Tool, ToolChoice,
};

use sha2::{Digest, Sha256};

/// Marks a thinking block's `signature` as carrying a Codex reasoning item's encrypted content
/// (`reasoning.encrypted_content`). Clients send thinking blocks back unchanged, so the next
/// turn can hand the model its own reasoning again although the backend stores nothing; a
/// signature without this mark came from elsewhere and cannot be used by a Codex account.
pub const CODEX_SIGNATURE_PREFIX: &str = "poolgate.codex.v1:";

/// The conversation anchor for a client that sends none (seed spec §15): the same platform
/// key, `metadata.user_id` and model always give the same anchor, anything else a different
/// one. Claude Code's `user_id` names its session, so each session keeps its own account and
/// prompt cache. The result is UUID-shaped (the form Codex's own session ids have), fit for
/// `prompt_cache_key`, the `session-id` header and the rendezvous affinity key alike; it is a
/// hash, so it reveals neither the key id nor the user id.
pub fn claude_anchor(key_id: &str, user_id: Option<&str>, model: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"poolgate.anthropic.anchor.v1");
    let user = user_id.map(str::trim).filter(|u| !u.is_empty());
    // Length-prefixed parts, so ("ab", "c") and ("a", "bc") never collide; an absent user id
    // is distinct from every present one.
    for part in [Some(key_id), user, Some(model)] {
        match part {
            Some(p) => {
                h.update([1u8]);
                h.update((p.len() as u64).to_be_bytes());
                h.update(p.as_bytes());
            }
            None => h.update([0u8]),
        }
    }
    let digest = h.finalize();
    let mut b = [0u8; 16];
    for (dst, src) in b.iter_mut().zip(digest.iter()) {
        *dst = *src;
    }
    // Version 4 and RFC 4122 variant bits, like the sticky ids of the seed (§10.2).
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        hex.get(0..8).unwrap_or_default(),
        hex.get(8..12).unwrap_or_default(),
        hex.get(12..16).unwrap_or_default(),
        hex.get(16..20).unwrap_or_default(),
        hex.get(20..32).unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_is_stable_distinct_and_uuid_shaped() {
        let a = claude_anchor("key1", Some("user_x_session_1"), "claude-sonnet-4-5");
        assert_eq!(
            a,
            claude_anchor("key1", Some("user_x_session_1"), "claude-sonnet-4-5")
        );
        let others = [
            claude_anchor("key2", Some("user_x_session_1"), "claude-sonnet-4-5"),
            claude_anchor("key1", Some("user_x_session_2"), "claude-sonnet-4-5"),
            claude_anchor("key1", Some("user_x_session_1"), "claude-opus-4-1"),
            claude_anchor("key1", None, "claude-sonnet-4-5"),
            claude_anchor("key1u", Some("ser_x_session_1"), "claude-sonnet-4-5"),
        ];
        for o in &others {
            assert_ne!(&a, o);
        }
        assert_eq!(
            claude_anchor("k", None, "m"),
            claude_anchor("k", Some("  "), "m"),
            "a blank user id is no user id"
        );
        assert_eq!(a.len(), 36);
        let groups: Vec<&str> = a.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(groups[2].starts_with('4'));
        assert!(matches!(
            groups[3].chars().next(),
            Some('8' | '9' | 'a' | 'b')
        ));
        assert!(!a.contains("key1") && !a.contains("user"));
    }
}
