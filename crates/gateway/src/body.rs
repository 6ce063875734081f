//! Request bodies: read with a size bound, `Content-Encoding: zstd` decoded with the same
//! bound (the Codex CLI compresses its requests), and the few fields routing needs peeked at
//! without building a JSON tree.

use std::io::Read;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;

/// Inputs larger than this are decoded off the async threads.
const INLINE_DECODE_BYTES: usize = 256 * 1024;
/// The decoder's window bound: enough for any level a client uses, far below zstd's own
/// default limit, so a crafted frame cannot demand a huge window.
const ZSTD_WINDOW_LOG_MAX: u32 = 25;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum BodyError {
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("unsupported Content-Encoding {0:?} (use identity or zstd)")]
    UnsupportedEncoding(String),
    #[error("cannot decode the zstd request body: {0}")]
    Decode(String),
    #[error("cannot read the request body: {0}")]
    Read(String),
}

impl BodyError {
    pub fn status(&self) -> u16 {
        match self {
            BodyError::TooLarge { .. } => 413,
            BodyError::UnsupportedEncoding(_) => 415,
            BodyError::Decode(_) | BodyError::Read(_) => 400,
        }
    }
}

enum Encoding {
    Identity,
    Zstd,
}

fn encoding(headers: &HeaderMap) -> Result<Encoding, BodyError> {
    let Some(v) = headers.get(CONTENT_ENCODING) else {
        return Ok(Encoding::Identity);
    };
    let s = v.to_str().unwrap_or_default().trim().to_ascii_lowercase();
    match s.as_str() {
        "" | "identity" => Ok(Encoding::Identity),
        "zstd" => Ok(Encoding::Zstd),
        _ => Err(BodyError::UnsupportedEncoding(
            String::from_utf8_lossy(v.as_bytes())
                .chars()
                .take(40)
                .collect(),
        )),
    }
}

/// Reads the whole body, at most `limit` bytes on the wire and after decoding.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let enc = encoding(headers)?;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let raw = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(BodyError::TooLarge { limit });
        }
        Err(e) => return Err(BodyError::Read(e.to_string())),
    };
    match enc {
        Encoding::Identity => Ok(raw),
        Encoding::Zstd if raw.len() <= INLINE_DECODE_BYTES => {
            zstd_decode(&raw, limit).map(Bytes::from)
        }
        Encoding::Zstd => tokio::task::spawn_blocking(move || zstd_decode(&raw, limit))
            .await
            .map_err(|e| BodyError::Decode(e.to_string()))?
            .map(Bytes::from),
    }
}

/// Decodes a zstd body, failing as soon as the output passes `limit`.
pub(crate) fn zstd_decode(input: &[u8], limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut dec = zstd::stream::read::Decoder::with_buffer(input)
        .map_err(|e| BodyError::Decode(e.to_string()))?;
    dec.window_log_max(ZSTD_WINDOW_LOG_MAX)
        .map_err(|e| BodyError::Decode(e.to_string()))?;
    let mut out = Vec::new();
    dec.take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::Decode(e.to_string()))?;
    if out.len() > limit {
        return Err(BodyError::TooLarge { limit });
    }
    Ok(out)
}

/// The fields routing reads; everything else is skipped by the parser without allocating.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Peek {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub prompt_cache_key: Option<String>,
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub conversation: Option<serde_json::Value>,
}

impl Peek {
    /// `None` when the body is not a JSON object.
    pub fn parse(body: &[u8]) -> Option<Peek> {
        serde_json::from_slice::<Peek>(body).ok()
    }

    /// The Responses API `conversation` (a string id or `{id}`) or a `conversation_id`.
    pub fn conversation(&self) -> Option<&str> {
        self.conversation_id
            .as_deref()
            .or_else(|| match &self.conversation {
                Some(serde_json::Value::String(s)) => Some(s.as_str()),
                Some(v) => v.get("id").and_then(serde_json::Value::as_str),
                None => None,
            })
            .filter(|s| !s.trim().is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_roundtrip_and_bounds() {
        let plain = br#"{"model":"gpt-5","input":"hi"}"#.repeat(100);
        let packed = zstd::bulk::compress(&plain, 3).unwrap();
        assert_eq!(zstd_decode(&packed, plain.len()).unwrap(), plain);
        assert_eq!(
            zstd_decode(&packed, plain.len() - 1),
            Err(BodyError::TooLarge {
                limit: plain.len() - 1
            })
        );
        assert!(matches!(
            zstd_decode(b"not zstd at all", 1000),
            Err(BodyError::Decode(_))
        ));
        // A bomb: 64 MiB of zeros compress to a few KiB and stop at the limit.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
        assert!(bomb.len() < 64 * 1024);
        assert_eq!(
            zstd_decode(&bomb, 1 << 20),
            Err(BodyError::TooLarge { limit: 1 << 20 })
        );
    }

    #[test]
    fn peeks_only_what_routing_needs() {
        let p = Peek::parse(
            br#"{"model":"m","stream":true,"input":[{"x":1}],"prompt_cache_key":"pck","conversation":{"id":"conv_1"}}"#,
        )
        .unwrap();
        assert_eq!(p.model.as_deref(), Some("m"));
        assert_eq!(p.stream, Some(true));
        assert_eq!(p.prompt_cache_key.as_deref(), Some("pck"));
        assert_eq!(p.conversation(), Some("conv_1"));
        assert!(Peek::parse(b"[1,2]").is_none());
        assert!(Peek::parse(b"{\"model\":5}").is_none());
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, "gzip".parse().unwrap());
        assert!(matches!(
            encoding(&h),
            Err(BodyError::UnsupportedEncoding(_))
        ));
        assert_eq!(BodyError::TooLarge { limit: 1 }.status(), 413);
    }
}
