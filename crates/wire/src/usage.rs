//! Token usage from JSON bodies and SSE events (seed spec §11.2).
//!
//! Reads the Responses names (`input_tokens`, `output_tokens`, `*_tokens_details`), the Chat
//! Completions aliases (`prompt_tokens`, `completion_tokens`) and Anthropic's cache reads, from
//! `usage`, `response.usage` or `message.usage`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sse::SseEvent;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    /// As reported, else input + output.
    pub total_tokens: u64,
}

impl TokenUsage {
    pub fn is_zero(&self) -> bool {
        *self == TokenUsage::default()
    }
}

/// Fields seen so far; `None` means never reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Partial {
    input: Option<u64>,
    cached: Option<u64>,
    output: Option<u64>,
    reasoning: Option<u64>,
    total: Option<u64>,
}

impl Partial {
    fn is_empty(&self) -> bool {
        *self == Partial::default()
    }

    fn overlay(&mut self, newer: Partial) {
        self.input = newer.input.or(self.input);
        self.cached = newer.cached.or(self.cached);
        self.output = newer.output.or(self.output);
        self.reasoning = newer.reasoning.or(self.reasoning);
        self.total = newer.total.or(self.total);
    }

    fn finish(self) -> Option<TokenUsage> {
        if self.is_empty() {
            return None;
        }
        let input = self.input.unwrap_or(0);
        let output = self.output.unwrap_or(0);
        Some(TokenUsage {
            input_tokens: input,
            cached_input_tokens: self.cached.unwrap_or(0),
            output_tokens: output,
            reasoning_tokens: self.reasoning.unwrap_or(0),
            total_tokens: self.total.unwrap_or_else(|| input.saturating_add(output)),
        })
    }
}

fn count(v: Option<&Value>) -> Option<u64> {
    let v = v?;
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

fn first(obj: &Value, paths: &[&[&str]]) -> Option<u64> {
    paths
        .iter()
        .find_map(|path| count(path.iter().try_fold(obj, |v, k| v.get(k))))
}

fn usage_object(v: &Value) -> Option<&Value> {
    [
        v.get("usage"),
        v.get("response").and_then(|r| r.get("usage")),
        v.get("message").and_then(|m| m.get("usage")),
    ]
    .into_iter()
    .flatten()
    .find(|u| u.is_object())
}

fn partial(v: &Value) -> Partial {
    usage_object(v).map(partial_of_usage).unwrap_or_default()
}

/// Anthropic counts cache reads and cache writes apart from `input_tokens`; the other APIs
/// (and our logs) count them in. Without either cache field the input is as reported.
fn anthropic_input(input: Option<u64>, read: Option<u64>, written: Option<u64>) -> Option<u64> {
    if read.is_none() && written.is_none() {
        return input;
    }
    Some(
        input
            .unwrap_or(0)
            .saturating_add(read.unwrap_or(0))
            .saturating_add(written.unwrap_or(0)),
    )
}

fn partial_of_usage(u: &Value) -> Partial {
    if !u.is_object() {
        return Partial::default();
    }
    let reported = first(u, &[&["input_tokens"], &["prompt_tokens"]]);
    let details = first(
        u,
        &[
            &["input_tokens_details", "cached_tokens"],
            &["prompt_tokens_details", "cached_tokens"],
        ],
    );
    let read = count(u.get("cache_read_input_tokens"));
    let written = count(u.get("cache_creation_input_tokens"));
    let input = if details.is_some() {
        reported
    } else {
        anthropic_input(reported, read, written)
    };
    Partial {
        input,
        output: first(u, &[&["output_tokens"], &["completion_tokens"]]),
        total: first(u, &[&["total_tokens"]]),
        cached: details.or(read),
        reasoning: first(
            u,
            &[
                &["output_tokens_details", "reasoning_tokens"],
                &["completion_tokens_details", "reasoning_tokens"],
            ],
        ),
    }
}

/// Usage in one JSON document (a response, a chunk, an event's data); `None` without any.
pub fn usage_from_json(v: &Value) -> Option<TokenUsage> {
    partial(v).finish()
}

/// Usage from a `usage` object itself (the value of a `usage` key); `None` without any.
pub fn usage_from_usage_object(u: &Value) -> Option<TokenUsage> {
    partial_of_usage(u).finish()
}

/// A usage count as providers send it: a non-negative integer, or a float (truncated).
/// Anything else counts as absent, like in [`usage_from_json`].
enum RawCount {
    Int(u64),
    Float(f64),
    Other,
}

/// By hand rather than `#[serde(untagged)]`, which buffers every value into an owned tree
/// before trying each variant: this runs for every relayed response.
impl<'de> Deserialize<'de> for RawCount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

        struct CountVisitor;

        impl<'de> Visitor<'de> for CountVisitor {
            type Value = RawCount;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a token count")
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawCount, E> {
                Ok(RawCount::Int(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawCount, E> {
                Ok(u64::try_from(v).map_or(RawCount::Other, RawCount::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<RawCount, E> {
                Ok(RawCount::Float(v))
            }
            fn visit_bool<E>(self, _: bool) -> Result<RawCount, E> {
                Ok(RawCount::Other)
            }
            fn visit_str<E>(self, _: &str) -> Result<RawCount, E> {
                Ok(RawCount::Other)
            }
            fn visit_unit<E>(self) -> Result<RawCount, E> {
                Ok(RawCount::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<RawCount, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(RawCount::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<RawCount, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(RawCount::Other)
            }
        }

        d.deserialize_any(CountVisitor)
    }
}

impl RawCount {
    fn get(c: &Option<RawCount>) -> Option<u64> {
        match c {
            Some(RawCount::Int(n)) => Some(*n),
            Some(RawCount::Float(f)) if f.is_finite() && *f >= 0.0 => Some(*f as u64),
            _ => None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawDetails {
    cached_tokens: Option<RawCount>,
    reasoning_tokens: Option<RawCount>,
}

/// A `usage` object read without building a JSON tree: the non-streamed responses of
/// OpenAI-key accounts are relayed as they are and only this part of them is parsed.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawUsage {
    input_tokens: Option<RawCount>,
    prompt_tokens: Option<RawCount>,
    output_tokens: Option<RawCount>,
    completion_tokens: Option<RawCount>,
    total_tokens: Option<RawCount>,
    input_tokens_details: Option<RawDetails>,
    prompt_tokens_details: Option<RawDetails>,
    output_tokens_details: Option<RawDetails>,
    completion_tokens_details: Option<RawDetails>,
    cache_read_input_tokens: Option<RawCount>,
    cache_creation_input_tokens: Option<RawCount>,
}

impl RawUsage {
    fn partial(&self) -> Partial {
        let detail = |d: &Option<RawDetails>, f: fn(&RawDetails) -> &Option<RawCount>| {
            d.as_ref().and_then(|d| RawCount::get(f(d)))
        };
        let reported = RawCount::get(&self.input_tokens).or(RawCount::get(&self.prompt_tokens));
        let details = detail(&self.input_tokens_details, |d| &d.cached_tokens)
            .or_else(|| detail(&self.prompt_tokens_details, |d| &d.cached_tokens));
        let read = RawCount::get(&self.cache_read_input_tokens);
        let written = RawCount::get(&self.cache_creation_input_tokens);
        Partial {
            input: if details.is_some() {
                reported
            } else {
                anthropic_input(reported, read, written)
            },
            output: RawCount::get(&self.output_tokens).or(RawCount::get(&self.completion_tokens)),
            total: RawCount::get(&self.total_tokens),
            cached: details.or(read),
            reasoning: detail(&self.output_tokens_details, |d| &d.reasoning_tokens)
                .or_else(|| detail(&self.completion_tokens_details, |d| &d.reasoning_tokens)),
        }
    }
}

/// Usage from the bytes of a `usage` value (what follows `"usage":`; trailing bytes are
/// ignored). Reads the counts without building a JSON tree and falls back to the tree for
/// shapes the typed reader refuses, so the answer is always [`usage_from_usage_object`]'s.
pub fn usage_from_usage_slice(bytes: &[u8]) -> Option<TokenUsage> {
    // Only an object is a usage object (a derived struct would also read an array).
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        let mut tree = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
        return usage_from_usage_object(&tree.next()?.ok()?);
    }
    if let Some(u) = scan::usage(bytes) {
        return u.partial().finish();
    }
    let mut typed = serde_json::Deserializer::from_slice(bytes).into_iter::<RawUsage>();
    match typed.next()? {
        Ok(u) => u.partial().finish(),
        Err(_) => {
            let mut tree = serde_json::Deserializer::from_slice(bytes).into_iter::<Value>();
            usage_from_usage_object(&tree.next()?.ok()?)
        }
    }
}

/// A fast path for the common shape of a `usage` object: flat keys with non-negative integer
/// counts and `*_details` objects of the same kind. It reads into the same [`RawUsage`] the
/// typed reader fills, and gives up (`None`) on anything else (floats, negative numbers,
/// escapes, arrays, deeper nesting, a key twice), leaving those to the serde readers; so
/// its answers are theirs, at about a third of their cost on a chat answer's usage.
mod scan {
    use super::{RawCount, RawDetails, RawUsage};

    struct Cursor<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl<'a> Cursor<'a> {
        fn ws(&mut self) {
            while let Some(c) = self.b.get(self.i) {
                if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                self.i += 1;
            }
        }

        fn peek(&mut self) -> Option<u8> {
            self.ws();
            self.b.get(self.i).copied()
        }

        fn eat(&mut self, c: u8) -> Option<()> {
            (self.peek()? == c).then(|| self.i += 1)
        }

        /// A string without escapes, as bytes.
        fn string(&mut self) -> Option<&'a [u8]> {
            self.eat(b'"')?;
            let rest = self.b.get(self.i..)?;
            let end = memchr::memchr2(b'"', b'\\', rest)?;
            if rest.get(end) != Some(&b'"') {
                return None;
            }
            self.i += end + 1;
            rest.get(..end)
        }

        /// A non-negative integer that fits a u64 (a fraction or exponent gives up).
        fn count(&mut self) -> Option<u64> {
            self.ws();
            let start = self.i;
            let mut n: u64 = 0;
            while let Some(d) = self.b.get(self.i).filter(|c| c.is_ascii_digit()) {
                n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
                self.i += 1;
            }
            let digits = self.i - start;
            // JSON has no leading zeros; `.`, `e` and `E` would make it a float.
            if digits == 0
                || (digits > 1 && self.b.get(start) == Some(&b'0'))
                || matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E'))
            {
                return None;
            }
            Some(n)
        }

        fn literal(&mut self, word: &[u8]) -> Option<()> {
            self.ws();
            let end = self.i.checked_add(word.len())?;
            (self.b.get(self.i..end)? == word).then(|| self.i = end)
        }

        /// `null` (read as absent, like `Option`), or a count.
        fn opt_count(&mut self) -> Option<Option<RawCount>> {
            if self.peek()? == b'n' {
                self.literal(b"null")?;
                return Some(None);
            }
            self.count().map(|n| Some(RawCount::Int(n)))
        }

        /// A value of a key nobody reads: a plain scalar; anything nested gives up.
        fn skip_scalar(&mut self) -> Option<()> {
            match self.peek()? {
                b'"' => self.string().map(|_| ()),
                b'n' => self.literal(b"null"),
                b't' => self.literal(b"true"),
                b'f' => self.literal(b"false"),
                _ => self.count().map(|_| ()),
            }
        }

        /// `{ "key": value, ... }`, calling `field` with each key; it reads the value.
        fn object(&mut self, mut field: impl FnMut(&mut Self, &[u8]) -> Option<()>) -> Option<()> {
            self.eat(b'{')?;
            if self.peek()? == b'}' {
                self.i += 1;
                return Some(());
            }
            loop {
                let key = self.string()?;
                self.eat(b':')?;
                field(self, key)?;
                match self.peek()? {
                    b',' => self.i += 1,
                    b'}' => {
                        self.i += 1;
                        return Some(());
                    }
                    _ => return None,
                }
            }
        }

        fn details(&mut self) -> Option<Option<RawDetails>> {
            if self.peek()? == b'n' {
                self.literal(b"null")?;
                return Some(None);
            }
            let mut d = RawDetails::default();
            let (mut cached, mut reasoning) = (false, false);
            self.object(|c, key| match key {
                b"cached_tokens" => set(&mut cached, &mut d.cached_tokens, c.opt_count()?),
                b"reasoning_tokens" => set(&mut reasoning, &mut d.reasoning_tokens, c.opt_count()?),
                _ => c.skip_scalar(),
            })?;
            Some(Some(d))
        }
    }

    /// Stores a field's value; a key seen twice gives up (serde's derive refuses it too).
    fn set<T>(seen: &mut bool, slot: &mut T, v: T) -> Option<()> {
        if std::mem::replace(seen, true) {
            return None;
        }
        *slot = v;
        Some(())
    }

    pub(super) fn usage(bytes: &[u8]) -> Option<RawUsage> {
        let mut c = Cursor { b: bytes, i: 0 };
        let mut u = RawUsage::default();
        let mut seen = [false; 11];
        c.object(|c, key| {
            let (i, slot) = match key {
                b"input_tokens" => (0, &mut u.input_tokens),
                b"prompt_tokens" => (1, &mut u.prompt_tokens),
                b"output_tokens" => (2, &mut u.output_tokens),
                b"completion_tokens" => (3, &mut u.completion_tokens),
                b"total_tokens" => (4, &mut u.total_tokens),
                b"cache_read_input_tokens" => (5, &mut u.cache_read_input_tokens),
                b"cache_creation_input_tokens" => (6, &mut u.cache_creation_input_tokens),
                _ => {
                    let (i, slot) = match key {
                        b"input_tokens_details" => (7, &mut u.input_tokens_details),
                        b"prompt_tokens_details" => (8, &mut u.prompt_tokens_details),
                        b"output_tokens_details" => (9, &mut u.output_tokens_details),
                        b"completion_tokens_details" => (10, &mut u.completion_tokens_details),
                        _ => return c.skip_scalar(),
                    };
                    let d = c.details()?;
                    return set(seen.get_mut(i)?, slot, d);
                }
            };
            let v = c.opt_count()?;
            set(seen.get_mut(i)?, slot, v)
        })?;
        Some(u)
    }
}

/// Usage in a JSON body; `None` when the body is not JSON or reports none.
pub fn usage_from_body(body: &[u8]) -> Option<TokenUsage> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .as_ref()
        .and_then(usage_from_json)
}

/// Usage over a stream: each field keeps the last value any event reported.
#[derive(Debug, Clone, Default)]
pub struct UsageAccumulator {
    seen: Partial,
}

impl UsageAccumulator {
    pub fn new() -> Self {
        UsageAccumulator::default()
    }

    pub fn push_json(&mut self, v: &Value) {
        self.seen.overlay(partial(v));
    }

    /// Parses the event's data; cheap for events whose data cannot hold usage.
    pub fn push_event(&mut self, ev: &SseEvent) {
        if let Some(v) = ev.data.contains("usage").then(|| ev.json()).flatten() {
            self.push_json(&v);
        }
    }

    pub fn usage(&self) -> Option<TokenUsage> {
        self.seen.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn responses_chat_and_anthropic_names() {
        let r = json!({"response": {"usage": {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4},
            "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 15}}});
        assert_eq!(
            usage_from_json(&r),
            Some(TokenUsage {
                input_tokens: 10,
                cached_input_tokens: 4,
                output_tokens: 5,
                reasoning_tokens: 2,
                total_tokens: 15
            })
        );
        let c = json!({"usage": {"prompt_tokens": 3, "completion_tokens": 4,
            "prompt_tokens_details": {"cached_tokens": 1}, "completion_tokens_details": {"reasoning_tokens": 2}}});
        assert_eq!(
            usage_from_json(&c),
            Some(TokenUsage {
                input_tokens: 3,
                cached_input_tokens: 1,
                output_tokens: 4,
                reasoning_tokens: 2,
                total_tokens: 7
            })
        );
        assert_eq!(
            usage_from_usage_object(&c["usage"]),
            usage_from_json(&c),
            "the usage object alone reads the same"
        );
        assert_eq!(usage_from_usage_object(&json!([1, 2])), None);
        // The typed reader agrees with the tree on every shape, odd ones included.
        for u in [
            c["usage"].clone(),
            r["response"]["usage"].clone(),
            json!({"input_tokens": 9, "cache_read_input_tokens": 8, "output_tokens": 1}),
            json!({"input_tokens": 9, "cache_creation_input_tokens": 3, "output_tokens": 1}),
            json!({"cache_read_input_tokens": 2, "input_tokens_details": {"cached_tokens": 1}}),
            json!({"prompt_tokens": 2.9, "completion_tokens": "x", "total_tokens": -1}),
            json!({"prompt_tokens_details": null, "input_tokens_details": {"cached_tokens": 1}}),
            json!({"input_tokens_details": "odd", "prompt_tokens": 4}),
            json!({"other": {"deep": [1, {"x": 2}]}, "output_tokens": 3}),
            json!({}),
            json!(null),
            json!([1, 2]),
            json!("text"),
        ] {
            let bytes = format!("{u} , \"after\": 1}}");
            assert_eq!(
                usage_from_usage_slice(bytes.as_bytes()),
                usage_from_usage_object(&u),
                "{u}"
            );
        }
        assert_eq!(usage_from_usage_slice(b""), None);
        assert_eq!(usage_from_usage_slice(b"{\"prompt_tokens\": 1"), None);
        assert_eq!(usage_from_usage_object(&json!({})), None);
        let a = json!({"message": {"usage": {"input_tokens": 9, "cache_read_input_tokens": 8, "output_tokens": 1}}});
        assert_eq!(usage_from_json(&a).map(|u| u.cached_input_tokens), Some(8));
        // Anthropic's input_tokens leaves out cache reads and writes; ours counts them in.
        let w = json!({"usage": {"input_tokens": 9, "cache_read_input_tokens": 8,
            "cache_creation_input_tokens": 5, "output_tokens": 1}});
        let u = usage_from_json(&w).unwrap();
        assert_eq!(
            (u.input_tokens, u.cached_input_tokens, u.total_tokens),
            (22, 8, 23)
        );
        assert_eq!(usage_from_json(&a).map(|u| u.input_tokens), Some(17));
        assert_eq!(usage_from_json(&json!({"usage": null})), None);
        assert_eq!(usage_from_body(b"not json"), None);
        assert_eq!(
            usage_from_body(br#"{"usage":{"total_tokens":2}}"#).map(|u| u.total_tokens),
            Some(2)
        );
    }

    #[test]
    fn the_fast_reader_takes_the_common_shapes_and_declines_the_rest() {
        let chat = br#"{"completion_tokens":4,"completion_tokens_details":{"accepted_prediction_tokens":0,"audio_tokens":0,"reasoning_tokens":2,"rejected_prediction_tokens":0},"prompt_tokens":11,"prompt_tokens_details":{"audio_tokens":0,"cached_tokens":3},"total_tokens":15}}"#;
        let u = scan::usage(chat).expect("a chat answer's usage takes the fast path");
        assert_eq!(
            u.partial().finish(),
            Some(TokenUsage {
                input_tokens: 11,
                cached_input_tokens: 3,
                output_tokens: 4,
                reasoning_tokens: 2,
                total_tokens: 15
            })
        );
        let spaced = b" {\n  \"input_tokens\" : 7 ,\r\n \"service_tier\": \"default\", \"x\": null, \"ok\": true,\t\"output_tokens\": 0, \"input_tokens_details\": null }";
        let u = scan::usage(spaced).expect("whitespace and plain scalars are read");
        assert_eq!(
            u.partial()
                .finish()
                .map(|u| (u.input_tokens, u.total_tokens)),
            Some((7, 7))
        );
        assert!(scan::usage(b"{}").is_some());
        // Everything else goes to the serde readers, which then decide.
        for declined in [
            &br#"{"input_tokens": 1.5}"#[..],
            br#"{"input_tokens": -1}"#,
            br#"{"input_tokens": 1e3}"#,
            br#"{"input_tokens": 01}"#,
            br#"{"input_tokens": 18446744073709551616}"#,
            br#"{"input_tokens": 1, "input_tokens": 2}"#,
            br#"{"input_tokens_details": {"cached_tokens": 1, "cached_tokens": 1}}"#,
            br#"{"server_tool_use": {"web_search_requests": 0}}"#,
            br#"{"in\u0070ut_tokens": 1}"#,
            br#"{"input_tokens": "1"}"#,
            br#"{"input_tokens_details": 3}"#,
            br#"{"a": [1]}"#,
            br#"{"input_tokens": 1"#,
            br#"{"input_tokens" 1}"#,
            b"[1]",
            b"",
        ] {
            assert!(
                scan::usage(declined).is_none(),
                "{}",
                String::from_utf8_lossy(declined)
            );
        }
    }

    #[test]
    fn last_reported_value_wins_per_field() {
        let mut acc = UsageAccumulator::new();
        assert_eq!(acc.usage(), None);
        acc.push_event(&SseEvent::new(
            None,
            r#"{"usage":{"prompt_tokens":5,"completion_tokens":1}}"#,
        ));
        acc.push_event(&SseEvent::new(None, r#"{"usage":null}"#));
        acc.push_event(&SseEvent::new(None, r#"{"usage":{"completion_tokens":9}}"#));
        acc.push_event(&SseEvent::new(None, "[DONE]"));
        assert_eq!(
            acc.usage(),
            Some(TokenUsage {
                input_tokens: 5,
                output_tokens: 9,
                total_tokens: 14,
                ..Default::default()
            })
        );
    }
}
