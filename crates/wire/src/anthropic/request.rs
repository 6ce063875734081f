//! Messages request → Responses request (seed spec §11.4, [H] behaviour).

use serde_json::{Map, Value, json};

use super::types::{
    ContentBlock, MediaSource, Message, MessageContent, MessagesRequest, Thinking, Tool, ToolChoice,
};
use super::{CODEX_SIGNATURE_PREFIX, MessagesReplyOptions};
use crate::WireError;
use crate::chat::ToolNameMap;
use crate::responses::NEUTRAL_INSTRUCTIONS;

/// Thinking budgets below this ask for `low` effort (Claude Code's "think" is 4,000).
const LOW_BUDGET_BELOW: u64 = 8_000;
/// Budgets below this ask for `medium` ("think hard" is 10,000); above is `high`
/// ("ultrathink" is 31,999).
const MEDIUM_BUDGET_BELOW: u64 = 24_000;

/// Said before the text of a failed tool's result, so the model knows it failed (the
/// Responses API has no error flag on tool output).
const TOOL_ERROR_PREFIX: &str = "[tool_error] ";

/// A Messages request converted to a Responses request, with what the way back needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagesConversion {
    /// The Responses request body (not yet normalised for the Codex backend).
    pub body: Value,
    pub tool_names: ToolNameMap,
    /// The model the client asked for; answers name it, whatever model served them.
    pub requested_model: String,
    pub stream: bool,
    /// The client asked for thinking blocks.
    pub thinking: bool,
    pub stop_sequences: Vec<String>,
    /// The client's `max_tokens`. The Codex backend refuses `max_output_tokens` (§10.3), so
    /// it is not sent; an answer cut short upstream still ends with `max_tokens`.
    pub max_tokens: Option<u64>,
}

impl MessagesConversion {
    /// What [`super::responses_to_messages`] and [`super::MessagesStreamTranslator`] need.
    pub fn reply_options(&self) -> MessagesReplyOptions {
        MessagesReplyOptions {
            id: String::new(),
            model: self.requested_model.clone(),
            tool_names: self.tool_names.clone(),
            thinking: self.thinking,
            stop_sequences: self.stop_sequences.clone(),
        }
    }
}

/// Parses a Messages request body. Not JSON is [`WireError::Json`]; JSON of the wrong shape
/// is [`WireError::InvalidRequest`] naming the field.
pub fn parse_messages_request(body: &[u8]) -> Result<MessagesRequest, WireError> {
    let v: Value = serde_json::from_slice(body)?;
    if !v.is_object() {
        return Err(WireError::invalid("request body must be a JSON object"));
    }
    serde_json::from_value(v).map_err(|e| WireError::invalid(e.to_string()))
}

/// The Responses reasoning effort for a Messages request: `output_config.effort` when it is
/// one the backend knows, else by thinking budget (below 8,000 `low`, below 24,000 `medium`,
/// else `high`), `medium` for adaptive or unstated thinking ([H] default), `low` when the
/// client turned thinking off.
pub fn effort_for_thinking(req: &MessagesRequest) -> &'static str {
    let stated = req
        .output_config
        .as_ref()
        .and_then(|o| o.effort.as_deref())
        .map(str::trim);
    match stated {
        Some(e) if e.eq_ignore_ascii_case("low") => return "low",
        Some(e) if e.eq_ignore_ascii_case("medium") => return "medium",
        Some(e) if e.eq_ignore_ascii_case("high") || e.eq_ignore_ascii_case("max") => {
            return "high";
        }
        _ => {}
    }
    match &req.thinking {
        Some(Thinking::Enabled {
            budget_tokens: Some(b),
        }) if *b < LOW_BUDGET_BELOW => "low",
        Some(Thinking::Enabled {
            budget_tokens: Some(b),
        }) if *b < MEDIUM_BUDGET_BELOW => "medium",
        Some(Thinking::Enabled {
            budget_tokens: Some(_),
        }) => "high",
        Some(Thinking::Disabled) => "low",
        _ => "medium",
    }
}

/// Converts a Messages request to a Responses request for `model` (the gateway's alias
/// decision). `prompt_cache_key` is the conversation anchor (see [`super::claude_anchor`]).
///
/// - `system` becomes a leading `developer` message and `instructions` the neutral text, so
///   the backend's instructions never carry a client's prompt ([H]).
/// - user text, images and documents become `input_text` / `input_image` / `input_file`;
///   assistant text becomes output message items; `tool_use` → `function_call`,
///   `tool_result` → `function_call_output` (text, images, and errors marked as such);
///   thinking blocks this gateway produced become reasoning items again.
/// - tools become function tools (every one; names over 64 characters shortened);
///   `tool_choice` and `disable_parallel_tool_use` map to their Responses forms.
/// - `temperature`, `top_p`, `top_k`, `max_tokens` and `metadata` are not sent: the backend
///   refuses them.
pub fn messages_to_responses_request(
    req: &MessagesRequest,
    model: &str,
    prompt_cache_key: Option<&str>,
) -> Result<MessagesConversion, WireError> {
    let names = ToolNameMap::build(tool_names_in(req));
    let mut input = Vec::new();
    if let Some(system) = &req.system {
        let parts: Vec<Value> = system
            .texts()
            .into_iter()
            .map(|t| json!({"type": "input_text", "text": t}))
            .collect();
        if !parts.is_empty() {
            input.push(json!({"type": "message", "role": "developer", "content": parts}));
        }
    }
    for (i, m) in req.messages.iter().enumerate() {
        convert_message(m, &names, &mut input).map_err(|e| match e {
            WireError::InvalidRequest(r) => WireError::invalid(format!("messages[{i}]: {r}")),
            other => other,
        })?;
    }

    let mut out = Map::new();
    out.insert("model".into(), Value::String(model.to_string()));
    out.insert(
        "instructions".into(),
        Value::String(NEUTRAL_INSTRUCTIONS.into()),
    );
    out.insert("input".into(), Value::Array(input));
    let mut tools = Vec::new();
    for (i, t) in req.tools.iter().flatten().enumerate() {
        tools.push(
            convert_tool(t, &names).map_err(|r| WireError::invalid(format!("tools[{i}]: {r}")))?,
        );
    }
    out.insert("tools".into(), Value::Array(tools));
    let choice = req.tool_choice.as_ref();
    out.insert(
        "tool_choice".into(),
        match choice {
            None | Some(ToolChoice::Auto { .. }) => json!("auto"),
            Some(ToolChoice::Any { .. }) => json!("required"),
            Some(ToolChoice::None) => json!("none"),
            Some(ToolChoice::Tool { name, .. }) => {
                json!({"type": "function", "name": names.shorten(name)})
            }
        },
    );
    out.insert(
        "parallel_tool_calls".into(),
        Value::Bool(!choice.is_some_and(ToolChoice::disable_parallel_tool_use)),
    );
    out.insert(
        "reasoning".into(),
        json!({"effort": effort_for_thinking(req), "summary": "auto"}),
    );
    out.insert("stream".into(), Value::Bool(req.is_stream()));
    if let Some(key) = prompt_cache_key.filter(|k| !k.trim().is_empty()) {
        out.insert("prompt_cache_key".into(), Value::String(key.to_string()));
    }
    Ok(MessagesConversion {
        body: Value::Object(out),
        tool_names: names,
        requested_model: req.model.clone(),
        stream: req.is_stream(),
        thinking: req.wants_thinking(),
        stop_sequences: req
            .stop_sequences
            .iter()
            .flatten()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect(),
        max_tokens: req.max_tokens,
    })
}

fn tool_names_in(req: &MessagesRequest) -> Vec<&str> {
    let mut names: Vec<&str> = req
        .tools
        .iter()
        .flatten()
        .map(|t| t.name.as_str())
        .collect();
    if let Some(ToolChoice::Tool { name, .. }) = &req.tool_choice {
        names.push(name);
    }
    for m in &req.messages {
        if let MessageContent::Blocks(blocks) = &m.content {
            for b in blocks {
                if let ContentBlock::ToolUse { name, .. } = b {
                    names.push(name);
                }
            }
        }
    }
    names
}

fn convert_tool(t: &Tool, names: &ToolNameMap) -> Result<Value, String> {
    match t.kind.as_deref() {
        Some(k) if k.starts_with("web_search") => return Ok(json!({"type": "web_search"})),
        // Any other typed tool is usable as a function only when it describes its input.
        Some(k) if k != "custom" && t.input_schema.is_none() => {
            return Err(format!(
                "tool type {k:?} is not supported; define it with an `input_schema`"
            ));
        }
        _ => {}
    }
    if t.name.trim().is_empty() {
        return Err("a tool needs a `name`".into());
    }
    let mut tool = json!({
        "type": "function",
        "name": names.shorten(&t.name),
        "parameters": complete_schema(t.input_schema.as_ref()),
        "strict": false,
    });
    if let (Some(d), Some(o)) = (
        t.description.as_ref().filter(|d| !d.is_empty()),
        tool.as_object_mut(),
    ) {
        o.insert("description".into(), Value::String(d.clone()));
    }
    Ok(tool)
}

/// The backend refuses a function schema that is not an object schema with `properties`
/// (the Claude Code 400s of [H]); fill in what is missing, keep everything else.
fn complete_schema(schema: Option<&Value>) -> Value {
    let mut s = match schema {
        Some(Value::Object(o)) => o.clone(),
        _ => Map::new(),
    };
    s.entry("type")
        .or_insert_with(|| Value::String("object".into()));
    if s.get("type").and_then(Value::as_str) == Some("object") {
        let props = s.entry("properties").or_insert_with(|| json!({}));
        if !props.is_object() {
            *props = json!({});
        }
    }
    Value::Object(s)
}

/// Appends the input items of one message, keeping the order of its blocks: parts collect
/// into a message item until a block that is an item of its own (a tool call or result, a
/// reasoning item) comes, which flushes them first.
fn convert_message(
    m: &Message,
    names: &ToolNameMap,
    input: &mut Vec<Value>,
) -> Result<(), WireError> {
    let role = match m.role.as_str() {
        "user" => "user",
        "assistant" => "assistant",
        // Not in the Messages API, but some clients send mid-conversation system messages.
        "system" | "developer" => "developer",
        other => return Err(WireError::invalid(format!("unsupported role {other:?}"))),
    };
    let mut parts: Vec<Value> = Vec::new();
    let flush = |parts: &mut Vec<Value>, input: &mut Vec<Value>| {
        if !parts.is_empty() {
            input.push(json!({"type": "message", "role": role, "content": std::mem::take(parts)}));
        }
    };
    for (i, block) in m.content.blocks().iter().enumerate() {
        let at = |r: String| WireError::invalid(format!("content[{i}]: {r}"));
        match block {
            ContentBlock::Text { text } => {
                if !text.is_empty() {
                    let ty = if role == "assistant" {
                        "output_text"
                    } else {
                        "input_text"
                    };
                    parts.push(json!({"type": ty, "text": text}));
                }
            }
            ContentBlock::Image { source } if role != "assistant" => {
                parts.push(image_part(source).map_err(at)?);
            }
            ContentBlock::Document { source, title } if role != "assistant" => {
                parts.extend(document_parts(source, title.as_deref()).map_err(at)?);
            }
            ContentBlock::Image { .. } | ContentBlock::Document { .. } => {
                return Err(at(
                    "an assistant message cannot carry images or documents".into()
                ));
            }
            ContentBlock::ToolUse {
                id,
                name,
                input: args,
            } => {
                if role != "assistant" {
                    return Err(at("`tool_use` belongs in an assistant message".into()));
                }
                flush(&mut parts, input);
                input.push(json!({
                    "type": "function_call",
                    "call_id": id,
                    "name": names.shorten(name),
                    "arguments": arguments_json(args),
                }));
            }
            ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                if role != "user" {
                    return Err(at("`tool_result` belongs in a user message".into()));
                }
                flush(&mut parts, input);
                let output =
                    tool_output(content.as_ref(), is_error.unwrap_or(false)).map_err(at)?;
                input.push(json!({
                    "type": "function_call_output",
                    "call_id": tool_use_id,
                    "output": output,
                }));
            }
            ContentBlock::Thinking {
                thinking,
                signature,
            } => {
                // Only reasoning this gateway produced can be given back to a Codex model;
                // Anthropic's own signatures mean nothing to it.
                let encrypted = signature
                    .as_deref()
                    .and_then(|s| s.strip_prefix(CODEX_SIGNATURE_PREFIX))
                    .filter(|e| !e.is_empty());
                if let (Some(encrypted), "assistant") = (encrypted, role) {
                    flush(&mut parts, input);
                    let summary: Vec<Value> = if thinking.is_empty() {
                        Vec::new()
                    } else {
                        vec![json!({"type": "summary_text", "text": thinking})]
                    };
                    input.push(json!({
                        "type": "reasoning",
                        "summary": summary,
                        "encrypted_content": encrypted,
                    }));
                }
            }
            ContentBlock::RedactedThinking { .. } | ContentBlock::Unsupported => {}
        }
    }
    flush(&mut parts, input);
    Ok(())
}

/// Tool input as the JSON text of the arguments; an absent input is no arguments.
fn arguments_json(input: &Value) -> String {
    match input {
        Value::Null => "{}".to_string(),
        other => other.to_string(),
    }
}

fn image_part(source: &MediaSource) -> Result<Value, String> {
    match source {
        MediaSource::Base64 { media_type, data } => {
            let media_type = if media_type.is_empty() {
                "image/png"
            } else {
                media_type
            };
            Ok(
                json!({"type": "input_image", "image_url": format!("data:{media_type};base64,{data}")}),
            )
        }
        MediaSource::Url { url } => Ok(json!({"type": "input_image", "image_url": url})),
        MediaSource::File { .. } => {
            Err("images from Anthropic's Files API cannot be served by this account".into())
        }
        _ => Err("an image needs a `base64` or `url` source".into()),
    }
}

fn document_parts(source: &MediaSource, title: Option<&str>) -> Result<Vec<Value>, String> {
    let filename = title.filter(|t| !t.trim().is_empty()).unwrap_or("document");
    Ok(match source {
        MediaSource::Base64 { media_type, data } => {
            let media_type = if media_type.is_empty() {
                "application/pdf"
            } else {
                media_type
            };
            vec![json!({
                "type": "input_file",
                "filename": filename,
                "file_data": format!("data:{media_type};base64,{data}"),
            })]
        }
        MediaSource::Url { url } => {
            vec![json!({"type": "input_file", "file_url": url})]
        }
        MediaSource::Text { data, .. } => vec![json!({"type": "input_text", "text": data})],
        MediaSource::Content { content } => content
            .blocks()
            .iter()
            .map(|b| match b {
                ContentBlock::Text { text } => Ok(json!({"type": "input_text", "text": text})),
                ContentBlock::Image { source } => image_part(source),
                _ => Err("a document's content may only hold text and images".to_string()),
            })
            .collect::<Result<_, _>>()?,
        MediaSource::File { .. } => {
            return Err(
                "documents from Anthropic's Files API cannot be served by this account".into(),
            );
        }
        MediaSource::Unsupported => return Err("unsupported document source".into()),
    })
}

/// A tool result's output: plain text when it is only text (what tools mostly return), else
/// a list of `input_text` / `input_image` parts. An error says so in its text.
fn tool_output(content: Option<&MessageContent>, is_error: bool) -> Result<Value, String> {
    let blocks = content.map(MessageContent::blocks).unwrap_or_default();
    let mut parts = Vec::new();
    let mut only_text = true;
    for b in &blocks {
        match b {
            ContentBlock::Text { text } => parts.push(json!({"type": "input_text", "text": text})),
            ContentBlock::Image { source } => {
                only_text = false;
                parts.push(image_part(source)?);
            }
            ContentBlock::Document { source, title } => {
                let doc = document_parts(source, title.as_deref())?;
                only_text &= doc.iter().all(|p| p["type"] == "input_text");
                parts.extend(doc);
            }
            // Search results and other rich blocks carry text the model can still use.
            _ => {}
        }
    }
    if only_text {
        let text: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        let mut text = text.join("\n");
        if is_error {
            text.insert_str(0, TOOL_ERROR_PREFIX);
        }
        return Ok(Value::String(text));
    }
    if is_error {
        parts.insert(
            0,
            json!({"type": "input_text", "text": TOOL_ERROR_PREFIX.trim_end()}),
        );
    }
    Ok(Value::Array(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<MessagesRequest, WireError> {
        parse_messages_request(v.to_string().as_bytes())
    }

    #[test]
    fn effort_tiers() {
        let cases = [
            (json!({"type": "enabled", "budget_tokens": 1024}), "low"),
            (json!({"type": "enabled", "budget_tokens": 4000}), "low"),
            (json!({"type": "enabled", "budget_tokens": 10000}), "medium"),
            (json!({"type": "enabled", "budget_tokens": 31999}), "high"),
            (json!({"type": "enabled"}), "medium"),
            (json!({"type": "adaptive"}), "medium"),
            (json!({"type": "disabled"}), "low"),
            (json!({"type": "something_new"}), "medium"),
        ];
        for (thinking, effort) in cases {
            let req = parse(json!({"model": "m", "messages": [], "thinking": thinking})).unwrap();
            assert_eq!(effort_for_thinking(&req), effort, "{thinking}");
        }
        let req = parse(
            json!({"messages": [], "thinking": {"type": "enabled", "budget_tokens": 1024},
            "output_config": {"effort": "high"}}),
        )
        .unwrap();
        assert_eq!(effort_for_thinking(&req), "high", "a stated effort wins");
        let req = parse(json!({"messages": []})).unwrap();
        assert_eq!(effort_for_thinking(&req), "medium");
    }

    #[test]
    fn bad_requests_are_refused_with_the_field() {
        let err = |v: Value| match parse(v.clone()) {
            Ok(req) => messages_to_responses_request(&req, "m", None)
                .unwrap_err()
                .to_string(),
            Err(e) => e.to_string(),
        };
        assert!(matches!(
            parse_messages_request(b"{not json"),
            Err(WireError::Json(_))
        ));
        assert_eq!(err(json!([])), "request body must be a JSON object");
        assert!(err(json!({"model": "m"})).contains("messages"));
        assert!(err(json!({"messages": [{"role": "user", "content": 5}]})).contains("content"));
        assert_eq!(
            err(json!({"messages": [{"role": "wizard", "content": "x"}]})),
            "messages[0]: unsupported role \"wizard\""
        );
        assert!(
            err(json!({"messages": [{"role": "user", "content": [{"type": "text"}]}]}))
                .contains("content[0]")
        );
        assert_eq!(
            err(
                json!({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "f", "input": {}}]}]})
            ),
            "messages[0]: content[0]: `tool_use` belongs in an assistant message"
        );
        assert!(
            err(json!({"messages": [], "tools": [{"type": "bash_20250124", "name": "bash"}]}))
                .starts_with("tools[0]: tool type \"bash_20250124\"")
        );
        assert!(
            err(
                json!({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]})
            )
            .contains("Files API")
        );
        assert!(err(json!({"messages": [], "tool_choice": {"type": "weird"}})).contains("weird"));
    }

    #[test]
    fn unknown_fields_and_blocks_are_tolerated() {
        let req = parse(json!({
            "model": "claude-x", "messages": [{"role": "user", "content": [
                {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}, "citations": null},
                {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}},
                {"type": "redacted_thinking", "data": "zzz"},
            ]}],
            "container": "c", "mcp_servers": [], "betas": ["x"], "stream": null, "tools": null,
        }))
        .unwrap();
        let conv = messages_to_responses_request(&req, "gpt-5.4", None).unwrap();
        assert_eq!(
            conv.body["input"],
            json!([{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}])
        );
        assert!(!conv.stream);
        assert_eq!(conv.body["model"], "gpt-5.4");
        assert_eq!(conv.requested_model, "claude-x");
        assert!(conv.body.get("prompt_cache_key").is_none());
    }

    #[test]
    fn foreign_thinking_is_dropped_and_ours_comes_back() {
        let req = parse(json!({"messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "anthropic's", "signature": "EqQBCkYIBxgCKkBx"},
                {"type": "thinking", "thinking": "mine", "signature": format!("{CODEX_SIGNATURE_PREFIX}gAAAA")},
                {"type": "text", "text": "a"},
            ]},
        ]}))
        .unwrap();
        let conv = messages_to_responses_request(&req, "m", Some("anchor")).unwrap();
        assert_eq!(
            conv.body["input"][1],
            json!({"type": "reasoning", "summary": [{"type": "summary_text", "text": "mine"}], "encrypted_content": "gAAAA"})
        );
        assert_eq!(conv.body["input"].as_array().unwrap().len(), 3);
        assert_eq!(conv.body["prompt_cache_key"], "anchor");
    }
}
