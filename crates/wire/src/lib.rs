//! Wire formats of poolgate, as pure functions and small state machines: no IO, no runtime.
//!
//! - [`sse`]: bounded incremental Server-Sent Events decoder and encoder.
//! - [`responses`]: Codex backend request normalisation, native-client detection, session headers.
//! - [`aggregate`]: a Responses event stream folded into the final non-streaming response.
//! - [`chat`]: Chat Completions ↔ Responses, requests, responses and streams.
//! - [`anthropic`]: Anthropic Messages ↔ Responses, errors, local token counts, the anchor for
//!   Claude-style clients.
//! - [`usage`]: token usage from JSON bodies and SSE events.
//! - [`classify`]: upstream outcome classification, stream preflight, Codex usage headers.
//! - [`errors`]: OpenAI-shaped error bodies, including Codex's `usage_limit_reached`.
//!
//! Header lookups are closures `Fn(&str) -> Option<&str>` called with lower-case names, so the
//! gateway can pass its header map directly; [`header_lookup`] adapts a slice of pairs.

pub mod aggregate;
pub mod anthropic;
pub mod chat;
pub mod classify;
mod error;
pub mod errors;
pub mod responses;
pub mod sse;
pub mod usage;

pub use error::WireError;

use bytes::Bytes;
use poolgate_core::UnixMillis;

/// A Responses event stream translated, event by event, into another dialect's frames (Chat
/// Completions chunks, Anthropic Messages events): what the gateway's relay drives.
pub trait StreamTranslator: Send {
    /// Feeds one upstream event, appending the frames it produces to `out`.
    fn push(&mut self, ev: &sse::SseEvent, now_ms: UnixMillis, out: &mut Vec<Bytes>);
    /// The upstream ended: closes the client's stream (an error frame when it ended early).
    fn finish(&mut self, out: &mut Vec<Bytes>);
    /// The client's stream is closed; later events only update usage.
    fn is_finished(&self) -> bool;
    fn usage(&self) -> Option<usage::TokenUsage>;
    fn failure(&self) -> Option<&classify::StreamFailure>;
    /// A frame the client ignores, sent during upstream silence: an SSE comment unless the
    /// dialect has its own keep-alive event.
    fn keepalive_frame(&self) -> Bytes {
        sse::keep_alive()
    }
}

/// A case-insensitive header lookup over `(name, value)` pairs; the first match wins.
pub fn header_lookup<'a, N, V>(pairs: &'a [(N, V)]) -> impl Fn(&str) -> Option<&'a str> + 'a
where
    N: AsRef<str>,
    V: AsRef<str>,
{
    move |name: &str| {
        pairs
            .iter()
            .find(|(n, _)| n.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_ref())
    }
}

/// The lookup's value, trimmed, when it is not blank.
pub(crate) fn non_empty<'a>(get: &impl Fn(&str) -> Option<&'a str>, name: &str) -> Option<&'a str> {
    get(name).map(str::trim).filter(|v| !v.is_empty())
}
