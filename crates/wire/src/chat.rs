//! Chat Completions ↔ Responses (seed spec §11.3), for Chat clients served by Codex accounts.
//!
//! - [`chat_to_responses_request`]: a Chat request as a Responses request (apply
//!   [`crate::responses::normalize_codex_request`] afterwards).
//! - [`responses_to_chat_completion`]: a final Responses object as a `chat.completion`.
//! - [`ChatStreamTranslator`]: Responses SSE events in, `chat.completion.chunk` frames out.
//!
//! The backend refuses tool names over 64 characters, so long names are shortened on the way
//! in ([`ToolNameMap`]) and restored on the way out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use poolgate_core::UnixMillis;
use serde_json::{Map, Value, json};

use crate::WireError;
use crate::classify::{StreamEventClass, StreamFailure, classify_stream_json};
use crate::errors::error_body;
use crate::sse::{self, SseEvent, event_type};
use crate::usage::{TokenUsage, UsageAccumulator, usage_from_json};

/// The longest tool name the backend accepts.
pub const MAX_TOOL_NAME_LEN: usize = 64;

/// Long tool names and their shortened forms, both ways.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolNameMap {
    to_short: HashMap<String, String>,
    to_original: HashMap<String, String>,
}

impl ToolNameMap {
    /// Shortens every name above [`MAX_TOOL_NAME_LEN`]: `mcp__server__tool` becomes
    /// `mcp__tool`, anything else is truncated, and a clash with another name gets `_N`.
    /// Names within the limit are kept and reserved first, so they never change.
    pub fn build<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut seen = HashSet::new();
        let unique: Vec<String> = names
            .into_iter()
            .map(|n| n.as_ref().to_string())
            .filter(|n| seen.insert(n.clone()))
            .collect();
        let mut used: HashSet<String> = unique
            .iter()
            .filter(|n| n.len() <= MAX_TOOL_NAME_LEN)
            .cloned()
            .collect();
        let mut map = ToolNameMap::default();
        for name in unique.iter().filter(|n| n.len() > MAX_TOOL_NAME_LEN) {
            let base = shortened_base(name);
            let mut candidate = truncate(&base, MAX_TOOL_NAME_LEN).to_string();
            let mut n = 1u32;
            while used.contains(&candidate) {
                let suffix = format!("_{n}");
                candidate = format!(
                    "{}{suffix}",
                    truncate(&base, MAX_TOOL_NAME_LEN - suffix.len())
                );
                n = n.saturating_add(1);
            }
            used.insert(candidate.clone());
            map.to_short.insert(name.clone(), candidate.clone());
            map.to_original.insert(candidate, name.clone());
        }
        map
    }

    pub fn is_empty(&self) -> bool {
        self.to_short.is_empty()
    }

    /// `(original, short)` for every shortened name, sorted by the short name.
    pub fn pairs(&self) -> Vec<(&str, &str)> {
        let mut v: Vec<(&str, &str)> = self
            .to_short
            .iter()
            .map(|(o, s)| (o.as_str(), s.as_str()))
            .collect();
        v.sort_by(|a, b| a.1.cmp(b.1));
        v
    }

    /// The name to send upstream.
    pub fn shorten<'a>(&'a self, original: &'a str) -> &'a str {
        self.to_short.get(original).map_or(original, String::as_str)
    }

    /// The client's name for a name that came back from upstream.
    pub fn restore<'a>(&'a self, short: &'a str) -> &'a str {
        self.to_original.get(short).map_or(short, String::as_str)
    }
}

fn shortened_base(name: &str) -> String {
    let tool = name
        .strip_prefix("mcp__")
        .and_then(|rest| rest.rfind("__").and_then(|i| rest.get(i + 2..)));
    match tool {
        Some(tool) if !tool.is_empty() => format!("mcp__{tool}"),
        _ => name.to_string(),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

/// A Chat request converted to a Responses request, with what the way back needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatConversion {
    /// The Responses request body (not yet normalised for the Codex backend).
    pub body: Value,
    pub tool_names: ToolNameMap,
    pub stream: bool,
    /// `stream_options.include_usage`: the stream ends with a usage chunk.
    pub include_usage: bool,
    pub model: Option<String>,
}

/// A chat-style tool `{type:function, function:{…}}` as a flat Responses function tool, with
/// `strict: false` unless given (the Responses API defaults to strict, Chat does not). Other
/// tools are returned unchanged.
pub fn flatten_tool(tool: Value) -> Value {
    let Value::Object(mut obj) = tool else {
        return tool;
    };
    let is_function = obj
        .get("type")
        .is_none_or(|t| t.as_str() == Some("function"));
    match obj.remove("function") {
        Some(Value::Object(f)) if is_function => function_tool(&f, None),
        Some(other) => {
            obj.insert("function".into(), other);
            Value::Object(obj)
        }
        None => Value::Object(obj),
    }
}

fn function_tool(f: &Map<String, Value>, names: Option<&ToolNameMap>) -> Value {
    let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
    let name = names.map_or(name, |m| m.shorten(name));
    let mut out = json!({
        "type": "function",
        "name": name,
        "parameters": f.get("parameters").filter(|p| p.is_object()).cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        "strict": f.get("strict").and_then(Value::as_bool).unwrap_or(false),
    });
    if let (Some(d), Some(o)) = (
        f.get("description").filter(|d| d.is_string()),
        out.as_object_mut(),
    ) {
        o.insert("description".into(), d.clone());
    }
    out
}

/// Converts a Chat Completions request to a Responses request (§11.3).
pub fn chat_to_responses_request(chat: &Value) -> Result<ChatConversion, WireError> {
    let obj = chat
        .as_object()
        .ok_or_else(|| WireError::invalid("request body must be a JSON object"))?;
    let messages = obj
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| WireError::invalid("`messages` must be an array"))?;
    if obj.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(WireError::invalid("`n` greater than 1 is not supported"));
    }
    let names = ToolNameMap::build(tool_names_in(obj, messages));

    let mut input = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        convert_message(m, &names, &mut input).map_err(|e| match e {
            WireError::InvalidRequest(r) => WireError::invalid(format!("messages[{i}]: {r}")),
            other => other,
        })?;
    }

    let mut out = Map::new();
    let model = obj.get("model").and_then(Value::as_str).map(str::to_string);
    if let Some(m) = &model {
        out.insert("model".into(), Value::String(m.clone()));
    }
    out.insert("input".into(), Value::Array(input));

    let mut tools = Vec::new();
    if let Some(list) = obj.get("tools").and_then(Value::as_array) {
        for t in list {
            tools.push(match t.get("function").and_then(Value::as_object) {
                Some(f)
                    if t.get("type")
                        .is_none_or(|ty| ty.as_str() == Some("function")) =>
                {
                    function_tool(f, Some(&names))
                }
                _ => {
                    // Already flat (Responses style): only the name may need shortening.
                    let mut tool = t.clone();
                    let short = t
                        .get("name")
                        .and_then(Value::as_str)
                        .map(|n| names.shorten(n));
                    if let (Some(short), Some(o)) = (short, tool.as_object_mut()) {
                        o.insert("name".into(), Value::String(short.to_string()));
                    }
                    tool
                }
            });
        }
    }
    if let Some(list) = obj.get("functions").and_then(Value::as_array) {
        tools.extend(
            list.iter()
                .filter_map(Value::as_object)
                .map(|f| function_tool(f, Some(&names))),
        );
    }
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = obj.get("tool_choice").or_else(|| obj.get("function_call")) {
        out.insert("tool_choice".into(), convert_tool_choice(choice, &names));
    }
    if let Some(rf) = obj.get("response_format").filter(|v| !v.is_null()) {
        out.insert(
            "text".into(),
            json!({"format": convert_response_format(rf)?}),
        );
    }
    let effort = obj
        .get("reasoning_effort")
        .and_then(Value::as_str)
        .or_else(|| {
            obj.get("reasoning")
                .and_then(|r| r.get("effort"))
                .and_then(Value::as_str)
        })
        .unwrap_or("medium");
    out.insert(
        "reasoning".into(),
        json!({"effort": effort, "summary": "auto"}),
    );
    let stream = obj.get("stream").and_then(Value::as_bool).unwrap_or(false);
    out.insert("stream".into(), Value::Bool(stream));
    for key in [
        "parallel_tool_calls",
        "service_tier",
        "metadata",
        "prompt_cache_key",
        "user",
        "temperature",
        "top_p",
        "store",
    ] {
        if let Some(v) = obj.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(max) = obj
        .get("max_completion_tokens")
        .or_else(|| obj.get("max_tokens"))
        .filter(|v| v.is_u64())
    {
        out.insert("max_output_tokens".into(), max.clone());
    }
    let include_usage = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(ChatConversion {
        body: Value::Object(out),
        tool_names: names,
        stream,
        include_usage,
        model,
    })
}

fn tool_names_in<'a>(obj: &'a Map<String, Value>, messages: &'a [Value]) -> Vec<&'a str> {
    let mut names = Vec::new();
    let fname = |v: &'a Value| {
        v.get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
    };
    for t in obj
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        names.extend(fname(t).or_else(|| t.get("name").and_then(Value::as_str)));
    }
    for f in obj
        .get("functions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        names.extend(f.get("name").and_then(Value::as_str));
    }
    if let Some(choice) = obj.get("tool_choice") {
        names.extend(fname(choice).or_else(|| choice.get("name").and_then(Value::as_str)));
    }
    if let Some(choice) = obj.get("function_call") {
        names.extend(choice.get("name").and_then(Value::as_str));
    }
    for m in messages {
        for call in m
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            names.extend(fname(call));
        }
        if let Some(call) = m.get("function_call") {
            names.extend(call.get("name").and_then(Value::as_str));
        }
    }
    names
}

fn convert_tool_choice(choice: &Value, names: &ToolNameMap) -> Value {
    match choice {
        Value::Object(o) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| o.get("name"))
                .and_then(Value::as_str);
            match name {
                Some(n) if o.get("type").is_none_or(|t| t.as_str() == Some("function")) => {
                    json!({"type": "function", "name": names.shorten(n)})
                }
                _ => choice.clone(),
            }
        }
        other => other.clone(),
    }
}

fn convert_response_format(rf: &Value) -> Result<Value, WireError> {
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(json!({"type": "text"})),
        Some("json_object") => Ok(json!({"type": "json_object"})),
        Some("json_schema") => {
            let js = rf.get("json_schema").and_then(Value::as_object);
            let mut out = Map::new();
            out.insert("type".into(), Value::String("json_schema".into()));
            let name = js
                .and_then(|j| j.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("response");
            out.insert("name".into(), Value::String(name.into()));
            let schema = js.and_then(|j| j.get("schema")).filter(|s| s.is_object());
            out.insert(
                "schema".into(),
                schema.cloned().unwrap_or_else(|| json!({"type": "object"})),
            );
            for key in ["strict", "description"] {
                if let Some(v) = js.and_then(|j| j.get(key)).filter(|v| !v.is_null()) {
                    out.insert(key.into(), v.clone());
                }
            }
            Ok(Value::Object(out))
        }
        _ => Err(WireError::invalid(
            "`response_format.type` must be text, json_object or json_schema",
        )),
    }
}

/// Text of a Chat content value: a string, or the `text` of its parts joined by newlines.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.as_str().or_else(|| p.get("text").and_then(Value::as_str)))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn convert_message(
    m: &Value,
    names: &ToolNameMap,
    input: &mut Vec<Value>,
) -> Result<(), WireError> {
    let role = m
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| WireError::invalid("`role` is missing"))?;
    let content = m.get("content");
    match role {
        "system" | "developer" => {
            let text = content_text(content);
            if !text.is_empty() {
                input.push(json!({"type": "message", "role": "developer", "content": [{"type": "input_text", "text": text}]}));
            }
        }
        "user" => {
            let parts = user_parts(content)?;
            if !parts.is_empty() {
                input.push(json!({"type": "message", "role": "user", "content": parts}));
            }
        }
        "assistant" => {
            let mut parts = Vec::new();
            match content {
                Some(Value::String(s)) if !s.is_empty() => {
                    parts.push(json!({"type": "output_text", "text": s}))
                }
                Some(Value::Array(list)) => {
                    for p in list {
                        let text = p.as_str().or_else(|| p.get("text").and_then(Value::as_str));
                        let text = text.or_else(|| p.get("refusal").and_then(Value::as_str));
                        if let Some(t) = text.filter(|t| !t.is_empty()) {
                            parts.push(json!({"type": "output_text", "text": t}));
                        }
                    }
                }
                _ => {}
            }
            if !parts.is_empty() {
                input.push(json!({"type": "message", "role": "assistant", "content": parts}));
            }
            for call in m
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let id = call
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| WireError::invalid("a tool call has no `id`"))?;
                let f = call.get("function");
                let name = f
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                input.push(json!({
                    "type": "function_call",
                    "call_id": id,
                    "name": names.shorten(name),
                    "arguments": arguments_string(f.and_then(|f| f.get("arguments"))),
                }));
            }
            if let Some(call) = m.get("function_call").filter(|c| c.is_object()) {
                let name = call.get("name").and_then(Value::as_str).unwrap_or_default();
                input.push(json!({
                    "type": "function_call",
                    "call_id": format!("call_{name}"),
                    "name": names.shorten(name),
                    "arguments": arguments_string(call.get("arguments")),
                }));
            }
        }
        "tool" => {
            let id = m
                .get("tool_call_id")
                .and_then(Value::as_str)
                .ok_or_else(|| WireError::invalid("a tool message needs `tool_call_id`"))?;
            input.push(json!({"type": "function_call_output", "call_id": id, "output": content_text(content)}));
        }
        "function" => {
            let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
            input.push(json!({"type": "function_call_output", "call_id": format!("call_{name}"), "output": content_text(content)}));
        }
        other => return Err(WireError::invalid(format!("unsupported role {other:?}"))),
    }
    Ok(())
}

/// Function arguments as the JSON text both APIs carry; absent or blank means no arguments.
pub(crate) fn arguments_string(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        None | Some(Value::Null | Value::String(_)) => "{}".to_string(),
        Some(other) => other.to_string(),
    }
}

fn user_parts(content: Option<&Value>) -> Result<Vec<Value>, WireError> {
    let list = match content {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => return Ok(vec![json!({"type": "input_text", "text": s})]),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(WireError::invalid(
                "`content` must be a string or an array of parts",
            ));
        }
    };
    let mut parts = Vec::new();
    for p in list {
        if let Some(s) = p.as_str() {
            parts.push(json!({"type": "input_text", "text": s}));
            continue;
        }
        match p.get("type").and_then(Value::as_str) {
            Some("text" | "input_text") => {
                let text = p.get("text").and_then(Value::as_str).unwrap_or_default();
                parts.push(json!({"type": "input_text", "text": text}));
            }
            Some("image_url") => {
                let image = p.get("image_url");
                let url = image
                    .and_then(|i| i.get("url").or(Some(i)))
                    .and_then(Value::as_str)
                    .ok_or_else(|| WireError::invalid("an image part needs `image_url.url`"))?;
                let mut part = json!({"type": "input_image", "image_url": url});
                if let (Some(d), Some(o)) = (
                    image
                        .and_then(|i| i.get("detail"))
                        .filter(|d| d.is_string()),
                    part.as_object_mut(),
                ) {
                    o.insert("detail".into(), d.clone());
                }
                parts.push(part);
            }
            Some("input_image" | "input_file") => parts.push(p.clone()),
            Some("file") => {
                let mut part = Map::new();
                part.insert("type".into(), Value::String("input_file".into()));
                if let Some(f) = p.get("file").and_then(Value::as_object) {
                    for key in ["file_data", "file_id", "filename"] {
                        if let Some(v) = f.get(key).filter(|v| v.is_string()) {
                            part.insert(key.into(), v.clone());
                        }
                    }
                }
                parts.push(Value::Object(part));
            }
            Some(other) => {
                return Err(WireError::invalid(format!(
                    "unsupported content part type {other:?}"
                )));
            }
            None => return Err(WireError::invalid("a content part has no `type`")),
        }
    }
    Ok(parts)
}

/// Usage in the Chat shape, with the Responses names as aliases (some clients read those).
pub fn chat_usage_json(u: &TokenUsage) -> Value {
    json!({
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
    })
}

fn finish_reason(has_tool_calls: bool, response: Option<&Value>) -> &'static str {
    if has_tool_calls {
        return "tool_calls";
    }
    let reason = response
        .and_then(|r| r.get("incomplete_details"))
        .and_then(|d| d.get("reason"))
        .and_then(Value::as_str);
    match reason {
        Some("max_output_tokens" | "max_tokens") => "length",
        Some("content_filter") => "content_filter",
        _ => "stop",
    }
}

pub(crate) fn reasoning_summary(item: &Value) -> String {
    item.get("summary")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n\n")
}

pub(crate) fn message_text(item: &Value) -> (String, String) {
    let (mut text, mut refusal) = (String::new(), String::new());
    for part in item
        .get("content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match part.get("type").and_then(Value::as_str) {
            Some("output_text") => {
                text.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default())
            }
            Some("refusal") => refusal.push_str(
                part.get("refusal")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
            ),
            _ => {}
        }
    }
    (text, refusal)
}

/// A final Responses object as a `chat.completion` (tool names restored).
pub fn responses_to_chat_completion(resp: &Value, names: &ToolNameMap) -> Value {
    let (mut text, mut refusal, mut reasoning) = (String::new(), String::new(), Vec::new());
    let mut tool_calls = Vec::new();
    for item in resp
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                let (t, r) = message_text(item);
                text.push_str(&t);
                refusal.push_str(&r);
            }
            Some("function_call") => {
                let id = item
                    .get("call_id")
                    .or_else(|| item.get("id"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
                tool_calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": names.restore(name), "arguments": arguments_string(item.get("arguments"))},
                }));
            }
            Some("reasoning") => {
                let s = reasoning_summary(item);
                if !s.is_empty() {
                    reasoning.push(s);
                }
            }
            _ => {}
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), Value::String("assistant".into()));
    let content = if text.is_empty() && (!tool_calls.is_empty() || !refusal.is_empty()) {
        Value::Null
    } else {
        Value::String(text)
    };
    message.insert("content".into(), content);
    message.insert(
        "refusal".into(),
        if refusal.is_empty() {
            Value::Null
        } else {
            Value::String(refusal)
        },
    );
    if !reasoning.is_empty() {
        message.insert(
            "reasoning_content".into(),
            Value::String(reasoning.join("\n\n")),
        );
    }
    let finish = finish_reason(!tool_calls.is_empty(), Some(resp));
    if !tool_calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(tool_calls));
    }
    let mut out = json!({
        "id": resp.get("id").and_then(Value::as_str).unwrap_or("chatcmpl"),
        "object": "chat.completion",
        "created": resp.get("created_at").and_then(Value::as_i64).unwrap_or(0),
        "model": resp.get("model").and_then(Value::as_str).unwrap_or_default(),
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
    });
    if let (Some(u), Some(o)) = (
        usage_from_json(resp).or_else(|| usage_from_json(&json!({"usage": resp.get("usage")}))),
        out.as_object_mut(),
    ) {
        o.insert("usage".into(), chat_usage_json(&u));
    }
    out
}

/// A `data: {"error":…}` frame: the OpenAI SDKs raise it as an API error mid-stream.
pub fn chat_stream_error_frame(status: u16, message: &str, code: Option<&str>) -> Bytes {
    sse::encode_json(None, &error_body(status, message, code))
}

/// How a translated stream identifies itself until upstream says otherwise.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatStreamOptions {
    /// Used for chunks sent before `response.created` named the response.
    pub id: String,
    /// The client's model, used until upstream names its own.
    pub model: String,
    /// Unix seconds.
    pub created: i64,
    pub include_usage: bool,
    pub tool_names: ToolNameMap,
}

#[derive(Debug, Clone)]
struct ToolCallState {
    chat_index: usize,
    call_id: String,
    name: String,
    announced: bool,
    /// Arguments already sent (when announced) or buffered (when not).
    args: String,
}

/// Turns decoded Responses SSE events into `chat.completion.chunk` frames: the role first,
/// then content, reasoning and tool call deltas, a finish chunk, an optional usage chunk and
/// `data: [DONE]`.
#[derive(Debug, Clone)]
pub struct ChatStreamTranslator {
    opts: ChatStreamOptions,
    started: bool,
    finished: bool,
    tool_calls: BTreeMap<u64, ToolCallState>,
    call_ids: HashSet<String>,
    item_index: HashMap<String, u64>,
    text_items: BTreeSet<u64>,
    usage: UsageAccumulator,
    failure: Option<StreamFailure>,
}

impl crate::StreamTranslator for ChatStreamTranslator {
    /// `[DONE]` was emitted; later events are ignored.
    fn is_finished(&self) -> bool {
        self.finished
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.usage.usage()
    }

    fn failure(&self) -> Option<&StreamFailure> {
        self.failure.as_ref()
    }

    /// Feeds one upstream event, appending the frames it produces to `out`.
    fn push(&mut self, ev: &SseEvent, now_ms: UnixMillis, out: &mut Vec<Bytes>) {
        if self.finished {
            return;
        }
        let Some(v) = ev.json() else { return };
        self.usage.push_json(&v);
        let Some(ty) = event_type(ev, Some(&v)).map(str::to_string) else {
            return;
        };
        match classify_stream_json(ev, Some(&v), now_ms) {
            StreamEventClass::Failed(_) => {
                let failure = StreamFailure::from_event(&ty, Some(&v), now_ms);
                self.fail(failure, out);
                return;
            }
            StreamEventClass::Terminal => {
                self.complete(v.get("response"), out);
                return;
            }
            StreamEventClass::Lifecycle | StreamEventClass::Content => {}
        }
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
        match ty.as_str() {
            "response.created" | "response.in_progress" => self.adopt_identity(v.get("response")),
            "response.output_text.delta" => {
                let index = self.index_of(&v, v.get("item_id").and_then(Value::as_str));
                self.text_items.insert(index);
                let delta = s("delta");
                if !delta.is_empty() {
                    self.emit(json!({"content": delta}), out);
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                let delta = s("delta");
                if !delta.is_empty() {
                    self.emit(json!({"reasoning_content": delta}), out);
                }
            }
            "response.output_item.added" => {
                let Some(item) = v.get("item") else { return };
                let index = self.index_of(&v, item.get("id").and_then(Value::as_str));
                if let Some(id) = item.get("id").and_then(Value::as_str) {
                    self.item_index.insert(id.to_string(), index);
                }
                if item.get("type").and_then(Value::as_str) == Some("function_call") {
                    let state = self.tool_state(index, item);
                    if !state.announced {
                        self.announce(index, out);
                    }
                }
            }
            "response.function_call_arguments.delta" => {
                let index = self.index_of(&v, v.get("item_id").and_then(Value::as_str));
                let delta = s("delta").to_string();
                self.tool_args(index, &delta, false, out);
            }
            "response.function_call_arguments.done" => {
                let index = self.index_of(&v, v.get("item_id").and_then(Value::as_str));
                let args = s("arguments").to_string();
                self.tool_args(index, &args, true, out);
            }
            "response.output_item.done" => {
                let Some(item) = v.get("item") else { return };
                let index = self.index_of(&v, item.get("id").and_then(Value::as_str));
                self.item_done(index, item, out);
            }
            _ => {}
        }
    }

    /// Upstream ended. Without a terminal event that is an error for the client.
    fn finish(&mut self, out: &mut Vec<Bytes>) {
        if self.finished {
            return;
        }
        let failure = StreamFailure {
            outcome: crate::classify::Outcome::Upstream5xx,
            event_type: String::new(),
            code: Some("stream_truncated".into()),
            message: "upstream stream ended before the response completed".into(),
        };
        self.fail(failure, out);
    }
}

impl ChatStreamTranslator {
    pub fn new(opts: ChatStreamOptions) -> Self {
        ChatStreamTranslator {
            opts,
            started: false,
            finished: false,
            tool_calls: BTreeMap::new(),
            call_ids: HashSet::new(),
            item_index: HashMap::new(),
            text_items: BTreeSet::new(),
            usage: UsageAccumulator::new(),
            failure: None,
        }
    }

    fn adopt_identity(&mut self, response: Option<&Value>) {
        if self.started {
            return;
        }
        let Some(r) = response else { return };
        if let Some(id) = r
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            self.opts.id = id.to_string();
        }
        if let Some(m) = r
            .get("model")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            self.opts.model = m.to_string();
        }
        if let Some(c) = r.get("created_at").and_then(Value::as_i64) {
            self.opts.created = c;
        }
    }

    fn index_of(&self, v: &Value, item_id: Option<&str>) -> u64 {
        v.get("output_index")
            .and_then(Value::as_u64)
            .or_else(|| item_id.and_then(|id| self.item_index.get(id).copied()))
            .unwrap_or(0)
    }

    fn tool_state(&mut self, index: u64, item: &Value) -> &mut ToolCallState {
        let next = self.tool_calls.len();
        let state = self
            .tool_calls
            .entry(index)
            .or_insert_with(|| ToolCallState {
                chat_index: next,
                call_id: String::new(),
                name: String::new(),
                announced: false,
                args: String::new(),
            });
        if state.call_id.is_empty() {
            let id = item
                .get("call_id")
                .or_else(|| item.get("id"))
                .and_then(Value::as_str);
            state.call_id = id.unwrap_or_default().to_string();
        }
        if state.name.is_empty() {
            state.name = item
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
        }
        if !state.call_id.is_empty() {
            self.call_ids.insert(state.call_id.clone());
        }
        state
    }

    /// Sends the first chunk of a tool call: id, name and whatever arguments are buffered.
    fn announce(&mut self, index: u64, out: &mut Vec<Bytes>) {
        let Some(state) = self.tool_calls.get_mut(&index) else {
            return;
        };
        state.announced = true;
        let delta = json!({"tool_calls": [{
            "index": state.chat_index,
            "id": state.call_id,
            "type": "function",
            "function": {"name": self.opts.tool_names.restore(&state.name), "arguments": state.args},
        }]});
        self.emit(delta, out);
    }

    /// Arguments: a delta is appended; a full value (`done`) only sends what is missing.
    fn tool_args(&mut self, index: u64, args: &str, full: bool, out: &mut Vec<Bytes>) {
        let state = self.tool_state(index, &Value::Null);
        let piece = if full {
            match args.strip_prefix(state.args.as_str()) {
                Some(rest) => rest.to_string(),
                None if !state.announced => {
                    state.args.clear();
                    args.to_string()
                }
                None => String::new(),
            }
        } else {
            args.to_string()
        };
        if piece.is_empty() {
            return;
        }
        state.args.push_str(&piece);
        if state.announced {
            let delta = json!({"tool_calls": [{"index": state.chat_index, "function": {"arguments": piece}}]});
            self.emit(delta, out);
        }
    }

    fn item_done(&mut self, index: u64, item: &Value, out: &mut Vec<Bytes>) {
        match item.get("type").and_then(Value::as_str) {
            Some("function_call") => {
                let call_id = item
                    .get("call_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let known = self.tool_calls.contains_key(&index) || self.call_ids.contains(call_id);
                if known && !self.tool_calls.contains_key(&index) {
                    return;
                }
                let announced = self.tool_state(index, item).announced;
                let args = arguments_string(item.get("arguments"));
                if announced {
                    self.tool_args(index, &args, true, out);
                } else {
                    self.tool_args(index, &args, true, out);
                    self.announce(index, out);
                }
            }
            Some("message") if !self.text_items.contains(&index) => {
                self.text_items.insert(index);
                let (text, refusal) = message_text(item);
                if !text.is_empty() {
                    self.emit(json!({"content": text}), out);
                }
                if !refusal.is_empty() {
                    self.emit(json!({"refusal": refusal}), out);
                }
            }
            _ => {}
        }
    }

    fn complete(&mut self, response: Option<&Value>, out: &mut Vec<Bytes>) {
        // Output that only the final snapshot carries (no deltas, no item events) is sent now;
        // anything already streamed is not repeated.
        if let Some(items) = response
            .and_then(|r| r.get("output"))
            .and_then(Value::as_array)
        {
            for (i, item) in items.iter().enumerate() {
                self.item_done(i as u64, item, out);
            }
        }
        self.ensure_role(out);
        let reason = finish_reason(!self.tool_calls.is_empty(), response);
        out.push(self.chunk(json!({}), Value::String(reason.into())));
        if self.opts.include_usage {
            let usage = self.usage.usage().unwrap_or_default();
            out.push(sse::encode_json(
                None,
                &json!({
                    "id": self.opts.id,
                    "object": "chat.completion.chunk",
                    "created": self.opts.created,
                    "model": self.opts.model,
                    "choices": [],
                    "usage": chat_usage_json(&usage),
                }),
            ));
        }
        out.push(sse::done());
        self.finished = true;
    }

    fn fail(&mut self, failure: StreamFailure, out: &mut Vec<Bytes>) {
        out.push(chat_stream_error_frame(
            failure.outcome.status_hint(),
            &failure.message,
            failure.code.as_deref(),
        ));
        out.push(sse::done());
        self.failure = Some(failure);
        self.finished = true;
    }

    fn ensure_role(&mut self, out: &mut Vec<Bytes>) {
        if !self.started {
            self.started = true;
            out.push(self.chunk(json!({"role": "assistant", "content": ""}), Value::Null));
        }
    }

    fn emit(&mut self, delta: Value, out: &mut Vec<Bytes>) {
        self.ensure_role(out);
        out.push(self.chunk(delta, Value::Null));
    }

    fn chunk(&self, delta: Value, finish_reason: Value) -> Bytes {
        sse::encode_json(
            None,
            &json!({
                "id": self.opts.id,
                "object": "chat.completion.chunk",
                "created": self.opts.created,
                "model": self.opts.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StreamTranslator;

    #[test]
    fn long_names_are_shortened_uniquely_and_restored() {
        let long_mcp = format!("mcp__{}__read_file", "s".repeat(70));
        let long_mcp2 = format!("mcp__{}__read_file", "t".repeat(70));
        let long_plain = "x".repeat(80);
        let short = "mcp__read_file";
        let map = ToolNameMap::build([
            long_mcp.as_str(),
            long_mcp2.as_str(),
            long_plain.as_str(),
            short,
            long_mcp.as_str(),
        ]);
        assert_eq!(map.shorten(short), short);
        assert_eq!(map.shorten(&long_mcp), "mcp__read_file_1");
        assert_eq!(map.shorten(&long_mcp2), "mcp__read_file_2");
        assert_eq!(map.shorten(&long_plain), "x".repeat(64));
        for name in [&long_mcp, &long_mcp2, &long_plain] {
            assert!(map.shorten(name).len() <= MAX_TOOL_NAME_LEN);
            assert_eq!(map.restore(map.shorten(name)), name.as_str());
        }
        assert_eq!(map.restore("other"), "other");
        // Truncated names that collide get suffixes within the limit.
        let a = format!("{}a", "y".repeat(70));
        let b = format!("{}b", "y".repeat(70));
        let map = ToolNameMap::build([&a, &b]);
        assert_eq!(map.shorten(&a), "y".repeat(64));
        assert_eq!(map.shorten(&b), format!("{}_1", "y".repeat(62)));
        assert!(ToolNameMap::build(["f"]).is_empty());
        // Flat (Responses-style) function tools in a Chat request are shortened too.
        let req = json!({"messages": [], "tools": [{"type": "function", "name": long_plain, "parameters": {}}]});
        let conv = chat_to_responses_request(&req).unwrap();
        assert_eq!(conv.body["tools"][0]["name"], "x".repeat(64));
        assert_eq!(conv.tool_names.restore(&"x".repeat(64)), long_plain);
    }

    #[test]
    fn bad_requests_are_refused() {
        assert!(chat_to_responses_request(&json!([])).is_err());
        assert!(chat_to_responses_request(&json!({"model": "m"})).is_err());
        assert!(
            chat_to_responses_request(&json!({"messages": [{"role": "wizard", "content": "x"}]}))
                .is_err()
        );
        assert!(
            chat_to_responses_request(&json!({"messages": [{"role": "tool", "content": "x"}]}))
                .is_err()
        );
        assert!(chat_to_responses_request(&json!({"messages": [], "n": 2})).is_err());
        let err = chat_to_responses_request(
            &json!({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
        );
        assert_eq!(
            err.unwrap_err().to_string(),
            "messages[0]: unsupported content part type \"input_audio\""
        );
        assert!(
            chat_to_responses_request(&json!({"messages": [], "response_format": {"type": "xml"}}))
                .is_err()
        );
    }

    #[test]
    fn stream_that_ends_early_reports_an_error() {
        let mut t = ChatStreamTranslator::new(ChatStreamOptions {
            id: "c".into(),
            model: "m".into(),
            ..Default::default()
        });
        let mut out = Vec::new();
        t.push(
            &SseEvent::new(
                None,
                r#"{"type":"response.output_text.delta","delta":"hi"}"#,
            ),
            0,
            &mut out,
        );
        t.finish(&mut out);
        t.finish(&mut out);
        let frames: Vec<SseEvent> = out
            .iter()
            .flat_map(|b| sse::decode_all(b, 1 << 20).unwrap())
            .collect();
        assert_eq!(frames.len(), 4);
        assert_eq!(
            frames[2].json().unwrap()["error"]["code"],
            "stream_truncated"
        );
        assert!(frames[3].is_done());
        assert!(t.is_finished());
    }
}
