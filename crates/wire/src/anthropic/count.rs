//! `POST /v1/messages/count_tokens`, answered locally with an estimate: no account is spent
//! on it, and Codex has no counting endpoint anyway.
//!
//! The heuristic (deterministic, and rather high than low, since clients use the count to
//! decide when to compact a conversation):
//! - text: one token per 4 ASCII characters (rounded up), plus one per non-ASCII character
//!   (CJK and other scripts tokenize to about one token per character);
//! - each message adds 4 tokens of framing, each tool definition 8;
//! - tool calls count their name and input JSON, tool results their content, thinking blocks
//!   their text, tool definitions their name, description and schema JSON;
//! - an image counts 1,600 tokens (what Anthropic bills for a 1.15-megapixel image, the
//!   largest it keeps unscaled), a URL document likewise, a base64 document one token per 8
//!   base64 characters (about 6 bytes), at least 1,600;
//! - the result is at least 1.

use serde_json::{Value, json};

use super::types::{ContentBlock, MediaSource, MessageContent, MessagesRequest};

const IMAGE_TOKENS: u64 = 1_600;
const MESSAGE_OVERHEAD: u64 = 4;
const TOOL_OVERHEAD: u64 = 8;
const BASE64_CHARS_PER_TOKEN: u64 = 8;

fn text_tokens(text: &str) -> u64 {
    let (mut ascii, mut other) = (0u64, 0u64);
    for c in text.chars() {
        if c.is_ascii() {
            ascii += 1;
        } else {
            other += 1;
        }
    }
    ascii.div_ceil(4).saturating_add(other)
}

fn source_tokens(source: &MediaSource, document: bool) -> u64 {
    match source {
        MediaSource::Base64 { data, .. } if document => {
            (data.len() as u64 / BASE64_CHARS_PER_TOKEN).max(IMAGE_TOKENS)
        }
        MediaSource::Text { data, .. } => text_tokens(data),
        MediaSource::Content { content } => content_tokens(content),
        _ => IMAGE_TOKENS,
    }
}

fn block_tokens(b: &ContentBlock) -> u64 {
    match b {
        ContentBlock::Text { text } => text_tokens(text),
        ContentBlock::Image { source } => source_tokens(source, false),
        ContentBlock::Document { source, title } => {
            source_tokens(source, true).saturating_add(title.as_deref().map_or(0, text_tokens))
        }
        ContentBlock::ToolUse { name, input, .. } => {
            text_tokens(name).saturating_add(text_tokens(&input.to_string()))
        }
        ContentBlock::ToolResult { content, .. } => content.as_ref().map_or(0, content_tokens),
        ContentBlock::Thinking { thinking, .. } => text_tokens(thinking),
        ContentBlock::RedactedThinking { data } => text_tokens(data),
        ContentBlock::Unsupported => 0,
    }
}

fn content_tokens(c: &MessageContent) -> u64 {
    match c {
        MessageContent::Text(t) => text_tokens(t),
        MessageContent::Blocks(blocks) => blocks
            .iter()
            .fold(0u64, |n, b| n.saturating_add(block_tokens(b))),
    }
}

/// The estimated input tokens of a Messages request (see the module docs for the heuristic).
pub fn count_tokens(req: &MessagesRequest) -> u64 {
    let mut n = 0u64;
    if let Some(system) = &req.system {
        for t in system.texts() {
            n = n.saturating_add(text_tokens(t));
        }
    }
    for m in &req.messages {
        n = n
            .saturating_add(MESSAGE_OVERHEAD)
            .saturating_add(content_tokens(&m.content));
    }
    for t in req.tools.iter().flatten() {
        let schema = t
            .input_schema
            .as_ref()
            .map_or(0, |s| text_tokens(&s.to_string()));
        n = n
            .saturating_add(TOOL_OVERHEAD)
            .saturating_add(text_tokens(&t.name))
            .saturating_add(t.description.as_deref().map_or(0, text_tokens))
            .saturating_add(schema);
    }
    n.max(1)
}

/// The `count_tokens` answer: `{"input_tokens": N}`.
pub fn count_tokens_body(req: &MessagesRequest) -> Value {
    json!({"input_tokens": count_tokens(req)})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::anthropic::parse_messages_request;

    fn count(v: Value) -> u64 {
        count_tokens(&parse_messages_request(v.to_string().as_bytes()).unwrap())
    }

    #[test]
    fn heuristic() {
        assert_eq!(text_tokens(""), 0);
        assert_eq!(text_tokens("abcd"), 1);
        assert_eq!(text_tokens("abcde"), 2);
        assert_eq!(text_tokens("日本語"), 3);
        assert_eq!(count(json!({"messages": []})), 1, "never zero");
        // 4 framing + 3 ("hello world!" is 12 chars).
        assert_eq!(
            count(json!({"messages": [{"role": "user", "content": "hello world!"}]})),
            7
        );
        let with_system = count(
            json!({"system": "abcdabcd", "messages": [{"role": "user", "content": "hello world!"}]}),
        );
        assert_eq!(with_system, 9);
        let image = count(json!({"messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]}));
        assert_eq!(image, 4 + 1_600);
        let tool = count(
            json!({"messages": [], "tools": [{"name": "abcd", "description": "abcd", "input_schema": {}}]}),
        );
        assert_eq!(tool, 8 + 1 + 1 + 1);
        assert_eq!(
            count_tokens_body(&parse_messages_request(br#"{"messages":[]}"#).unwrap()),
            json!({"input_tokens": 1})
        );
    }
}
