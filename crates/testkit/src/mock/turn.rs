//! What the mock "model" answers: a deterministic function of the request.
//!
//! - The last input item is a tool result → text `tool result: <output>`.
//! - The last user message mentions a tool ("call the tool", "use the tool", or
//!   "use tool NAME") and the request has function tools → a function call to that tool
//!   (or the first), with arguments filled from its JSON schema.
//! - Otherwise → text `echo: <last user text>`.

use serde_json::{Map, Value};

/// Longest tool output quoted back.
const MAX_QUOTED_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Text(String),
    ToolCall { name: String, arguments: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Turn {
    pub model: String,
    pub reply: Reply,
    pub input_tokens: u64,
    /// The request asked for reasoning.
    pub reasoning: bool,
    /// ... and for its encrypted content (`include: ["reasoning.encrypted_content"]`).
    pub encrypted_reasoning: bool,
}

impl Turn {
    /// The reply cut into `deltas` stream pieces: the text, or a tool call's arguments.
    pub(crate) fn pieces(&self, deltas: usize) -> Vec<String> {
        match &self.reply {
            Reply::Text(t) => split_text(t, deltas),
            Reply::ToolCall { arguments, .. } => split_exact(arguments, deltas),
        }
    }
}

/// Reasoning tokens reported when a request asked for reasoning.
pub(crate) const REASONING_TOKENS: u64 = 16;

struct Tool<'a> {
    name: &'a str,
    parameters: Option<&'a Value>,
}

/// The turn of a Responses request (`input`, `instructions`, `tools`).
pub(crate) fn responses_turn(body: &Value) -> Turn {
    let mut chars = str_len(body.get("instructions"));
    let tools: Vec<Tool<'_>> = tool_list(body.get("tools"), |t| {
        Some(Tool {
            name: t.get("name")?.as_str()?,
            parameters: t.get("parameters"),
        })
    });
    let (last_user, tool_output) = match body.get("input") {
        Some(Value::String(s)) => {
            chars += s.chars().count();
            (s.clone(), None)
        }
        Some(Value::Array(items)) => {
            chars += items.iter().map(text_chars).sum::<usize>();
            let tool_output = items
                .last()
                .filter(|i| i.get("type").and_then(Value::as_str) == Some("function_call_output"))
                .map(|i| content_text(i.get("output")));
            let user = items
                .iter()
                .rev()
                .find(|i| {
                    i.get("role").and_then(Value::as_str) == Some("user")
                        && i.get("type")
                            .and_then(Value::as_str)
                            .is_none_or(|t| t == "message")
                })
                .map(|i| content_text(i.get("content")))
                .unwrap_or_default();
            (user, tool_output)
        }
        _ => (String::new(), None),
    };
    let include_encrypted = body
        .get("include")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|v| v.as_str() == Some("reasoning.encrypted_content"))
        });
    let reasoning = body.get("reasoning").is_some_and(|r| !r.is_null());
    Turn {
        model: model_of(body),
        reply: reply(&last_user, tool_output, &tools),
        input_tokens: tokens_for(chars),
        reasoning,
        encrypted_reasoning: reasoning && include_encrypted,
    }
}

/// The turn of a Chat Completions request (`messages`, `tools`).
pub(crate) fn chat_turn(body: &Value) -> Turn {
    let tools: Vec<Tool<'_>> = tool_list(body.get("tools"), |t| {
        let f = t.get("function")?;
        Some(Tool {
            name: f.get("name")?.as_str()?,
            parameters: f.get("parameters"),
        })
    });
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let chars = messages.iter().map(text_chars).sum::<usize>();
    let role = |m: &Value| m.get("role").and_then(Value::as_str).map(str::to_string);
    let tool_output = messages
        .last()
        .filter(|m| role(m).as_deref() == Some("tool"))
        .map(|m| content_text(m.get("content")));
    let last_user = messages
        .iter()
        .rev()
        .find(|m| role(m).as_deref() == Some("user"))
        .map(|m| content_text(m.get("content")))
        .unwrap_or_default();
    Turn {
        model: model_of(body),
        reply: reply(&last_user, tool_output, &tools),
        input_tokens: tokens_for(chars),
        reasoning: false,
        encrypted_reasoning: false,
    }
}

/// The turn of an Anthropic Messages request (`system`, `messages`, `tools`): the last user
/// message's text (its string content, or its last text block), or the content of its last
/// `tool_result` block.
pub(crate) fn messages_turn(body: &Value) -> Turn {
    // Custom tools carry no type (or "custom"); server tools (web search, …) are not called.
    let tools: Vec<Tool<'_>> = body
        .get("tools")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|t| {
                    t.get("type")
                        .and_then(Value::as_str)
                        .is_none_or(|ty| ty == "custom")
                })
                .filter_map(|t| {
                    Some(Tool {
                        name: t.get("name")?.as_str()?,
                        parameters: t.get("input_schema"),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let system_chars = match body.get("system") {
        Some(Value::String(s)) => s.chars().count(),
        Some(Value::Array(blocks)) => blocks.iter().map(|b| str_len(b.get("text"))).sum(),
        _ => 0,
    };
    let chars = system_chars + messages.iter().map(text_chars).sum::<usize>();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
    let blocks = last_user
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let block_type = |b: &Value| b.get("type").and_then(Value::as_str).map(str::to_string);
    let tool_output = blocks
        .iter()
        .rev()
        .find(|b| block_type(b).as_deref() == Some("tool_result"))
        .map(|b| content_text(b.get("content")));
    let text = match last_user.and_then(|m| m.get("content")) {
        Some(Value::String(s)) => s.clone(),
        _ => blocks
            .iter()
            .rev()
            .find(|b| block_type(b).as_deref() == Some("text"))
            .map(|b| str_text(b.get("text")))
            .unwrap_or_default(),
    };
    Turn {
        model: model_of(body),
        reply: reply(&text, tool_output, &tools),
        input_tokens: tokens_for(chars),
        reasoning: false,
        encrypted_reasoning: false,
    }
}

fn str_text(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or_default().to_string()
}

fn model_of(body: &Value) -> String {
    body.get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn tool_list<'a>(
    tools: Option<&'a Value>,
    read: impl Fn(&'a Value) -> Option<Tool<'a>>,
) -> Vec<Tool<'a>> {
    tools
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|t| t.get("type").and_then(Value::as_str) == Some("function"))
                .filter_map(read)
                .collect()
        })
        .unwrap_or_default()
}

fn reply(last_user: &str, tool_output: Option<String>, tools: &[Tool<'_>]) -> Reply {
    if let Some(out) = tool_output {
        let quoted: String = out.chars().take(MAX_QUOTED_CHARS).collect();
        return Reply::Text(format!("tool result: {quoted}"));
    }
    match pick_tool(last_user, tools) {
        Some(t) => Reply::ToolCall {
            name: t.name.to_string(),
            arguments: arguments_for(t.parameters),
        },
        None => Reply::Text(format!("echo: {last_user}")),
    }
}

fn pick_tool<'a, 'b>(text: &str, tools: &'b [Tool<'a>]) -> Option<&'b Tool<'a>> {
    if tools.is_empty() {
        return None;
    }
    // ASCII lower-casing keeps byte offsets, so positions map back to `text`.
    let lower = text.to_ascii_lowercase();
    if let Some(pos) = lower.find("use tool ") {
        let word: String = text
            .get(pos + "use tool ".len()..)
            .unwrap_or_default()
            .chars()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
            .collect();
        return tools
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(&word))
            .or(tools.first());
    }
    (lower.contains("call the tool") || lower.contains("use the tool")).then(|| tools.first())?
}

/// Arguments that satisfy a simple JSON schema: strings "mock", numbers 1, booleans true,
/// arrays empty, objects empty.
fn arguments_for(parameters: Option<&Value>) -> String {
    let mut args = Map::new();
    if let Some(props) = parameters
        .and_then(|p| p.get("properties"))
        .and_then(Value::as_object)
    {
        for (name, schema) in props {
            let ty = match schema.get("type") {
                Some(Value::String(t)) => t.as_str(),
                Some(Value::Array(ts)) => ts.iter().find_map(Value::as_str).unwrap_or("string"),
                _ => "string",
            };
            let v = match ty {
                "integer" | "number" => Value::from(1),
                "boolean" => Value::Bool(true),
                "array" => Value::Array(Vec::new()),
                "object" => Value::Object(Map::new()),
                "null" => Value::Null,
                _ => Value::String("mock".into()),
            };
            args.insert(name.clone(), v);
        }
    }
    Value::Object(args).to_string()
}

/// The text of a message `content` (a string or typed parts) or a tool `output`.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str).or_else(|| p.as_str()))
            .collect::<Vec<_>>()
            .join("\n"),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Characters of the text-bearing fields of an input item or message.
fn text_chars(item: &Value) -> usize {
    let mut n = 0;
    for key in ["content", "output", "arguments", "text"] {
        match item.get(key) {
            Some(Value::String(s)) => n += s.chars().count(),
            Some(Value::Array(parts)) => {
                n += parts.iter().map(|p| str_len(p.get("text"))).sum::<usize>();
            }
            _ => {}
        }
    }
    n
}

fn str_len(v: Option<&Value>) -> usize {
    v.and_then(Value::as_str).map_or(0, |s| s.chars().count())
}

/// About four characters per token, at least one.
fn tokens_for(chars: usize) -> u64 {
    u64::try_from(chars.div_ceil(4)).unwrap_or(u64::MAX).max(1)
}

/// Splits `s` into `n` pieces of nearly equal character counts; text shorter than `n`
/// characters is first padded with '.'. `n` is at least 1.
pub(crate) fn split_text(s: &str, n: usize) -> Vec<String> {
    let n = n.max(1);
    let mut chars: Vec<char> = s.chars().collect();
    if chars.len() < n {
        chars.resize(n, '.');
    }
    pieces(&chars, n)
}

/// Splits `s` into at most `n` non-empty pieces (never pads: used for JSON arguments).
pub(crate) fn split_exact(s: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = s.chars().collect();
    let n = n.clamp(1, chars.len().max(1));
    pieces(&chars, n)
}

fn pieces(chars: &[char], n: usize) -> Vec<String> {
    let len = chars.len();
    (0..n)
        .map(|i| chars[i * len / n..(i + 1) * len / n].iter().collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn echoes_the_last_user_message() {
        let t = responses_turn(&json!({
            "model": "m", "instructions": "be brief",
            "input": [
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "dev"}]},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]},
                {"role": "user", "content": "second"},
            ],
        }));
        assert_eq!(t.reply, Reply::Text("echo: second".into()));
        assert_eq!(t.model, "m");
        // 8 + 3 + 5 + 2 + 6 = 24 characters
        assert_eq!(t.input_tokens, 6);
        assert!(!t.reasoning);
        let s = responses_turn(
            &json!({"model": "m", "input": "plain", "reasoning": {"effort": "low"},
            "include": ["reasoning.encrypted_content"]}),
        );
        assert_eq!(s.reply, Reply::Text("echo: plain".into()));
        assert!(s.reasoning && s.encrypted_reasoning);
    }

    #[test]
    fn calls_a_mentioned_tool_then_reads_its_result() {
        let tools = json!([
            {"type": "web_search"},
            {"type": "function", "name": "first", "parameters": {}},
            {"type": "function", "name": "get_weather", "parameters": {"type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": ["boolean", "null"]}}}},
        ]);
        let t =
            responses_turn(&json!({"input": "please use tool get_weather now", "tools": tools}));
        assert_eq!(
            t.reply,
            Reply::ToolCall {
                name: "get_weather".into(),
                arguments: r#"{"city":"mock","days":1,"metric":true}"#.into()
            }
        );
        let t = responses_turn(&json!({"input": "Call the tool", "tools": tools}));
        assert!(matches!(t.reply, Reply::ToolCall { ref name, .. } if name == "first"));
        let t = responses_turn(&json!({"input": "call the tool", "tools": []}));
        assert_eq!(t.reply, Reply::Text("echo: call the tool".into()));
        let t = responses_turn(&json!({"tools": tools, "input": [
            {"type": "message", "role": "user", "content": "call the tool"},
            {"type": "function_call", "call_id": "c1", "name": "first", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        ]}));
        assert_eq!(t.reply, Reply::Text("tool result: sunny".into()));
    }

    #[test]
    fn chat_turns() {
        let tools = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"properties": {"q": {"type": "string"}}}}}]);
        let t = chat_turn(&json!({"model": "gpt", "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "use the tool please"}]},
        ], "tools": tools}));
        assert_eq!(
            t.reply,
            Reply::ToolCall {
                name: "lookup".into(),
                arguments: r#"{"q":"mock"}"#.into()
            }
        );
        let t = chat_turn(&json!({"messages": [
            {"role": "user", "content": "use the tool"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "42"},
        ], "tools": tools}));
        assert_eq!(t.reply, Reply::Text("tool result: 42".into()));
        assert_eq!(chat_turn(&json!({})).reply, Reply::Text("echo: ".into()));
    }

    #[test]
    fn messages_turns() {
        let tools = json!([
            {"type": "web_search_20250305", "name": "web_search"},
            {"name": "get_weather", "description": "w", "input_schema": {"type": "object",
                "properties": {"city": {"type": "string"}}}},
        ]);
        let t = messages_turn(&json!({"model": "claude-x", "max_tokens": 10,
        "system": [{"type": "text", "text": "sys"}],
        "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [
                {"type": "text", "text": "<reminder>"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA"}},
                {"type": "text", "text": "second"},
            ]},
        ]}));
        assert_eq!(t.reply, Reply::Text("echo: second".into()));
        assert_eq!(t.model, "claude-x");
        // 3 + 5 + 2 + 10 + 6 = 26 characters
        assert_eq!(t.input_tokens, 7);
        let t = messages_turn(&json!({"tools": tools, "messages": [
            {"role": "user", "content": "please use tool get_weather"}]}));
        assert_eq!(
            t.reply,
            Reply::ToolCall {
                name: "get_weather".into(),
                arguments: r#"{"city":"mock"}"#.into()
            }
        );
        let t = messages_turn(&json!({"tools": tools, "messages": [
            {"role": "user", "content": "call the tool"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                "content": [{"type": "text", "text": "rainy"}]}]},
        ]}));
        assert_eq!(t.reply, Reply::Text("tool result: rainy".into()));
        // Server tools alone are never called.
        let t = messages_turn(
            &json!({"tools": [{"type": "web_search_20250305", "name": "web_search"}],
            "messages": [{"role": "user", "content": "call the tool"}]}),
        );
        assert_eq!(t.reply, Reply::Text("echo: call the tool".into()));
        assert_eq!(
            messages_turn(&json!({})).reply,
            Reply::Text("echo: ".into())
        );
    }

    #[test]
    fn splitting() {
        assert_eq!(split_text("abcdefgh", 3), ["ab", "cde", "fgh"]);
        assert_eq!(split_text("ab", 4), ["a", "b", ".", "."]);
        assert_eq!(split_text("héllo", 1), ["héllo"]);
        assert_eq!(split_exact("{}", 5), ["{", "}"]);
        assert_eq!(split_exact("", 5), [""]);
        assert_eq!(split_text("", 0), ["."]);
    }
}
