//! Server-Sent Events: an incremental, bounded decoder and the matching encoder.
//!
//! The decoder follows the WHATWG event-stream rules (`\n`, `\r\n` and `\r` line endings, a
//! leading BOM, comments, multi-line `data`, single space after the colon) with two deliberate
//! differences that suit a proxy: an event still open when the stream ends is delivered by
//! [`SseDecoder::finish`] (upstreams do drop the final blank line), and an event larger than the
//! configured bound is dropped with [`WireError::EventTooLarge`] instead of growing a buffer
//! without limit. Decoding resumes at the next event after such a drop.

use bytes::Bytes;
use serde_json::Value;

use crate::WireError;

/// Default bound for one decoded event. A `response.completed` event repeats the whole output,
/// so this has to fit the largest response the gateway is willing to relay.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// The comment frame sent while upstream is silent, so clients do not time out idle streams.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// The terminator Chat Completions streams end with.
pub const DONE_FRAME: &[u8] = b"data: [DONE]\n\n";

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event. `event` is `None` for the default (`message`) type; `id` is the `id`
/// field given inside this event's block, if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
}

impl SseEvent {
    pub fn new(event: Option<&str>, data: impl Into<String>) -> Self {
        SseEvent {
            event: event.map(str::to_string),
            data: data.into(),
            id: None,
        }
    }

    /// The data parsed as JSON, when it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.data).ok()
    }

    /// Whether this is the Chat Completions `[DONE]` sentinel.
    pub fn is_done(&self) -> bool {
        self.data.trim() == "[DONE]"
    }

    /// The event re-encoded as a frame (with its id, if any).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.data.len() + 32);
        if let Some(id) = &self.id {
            out.extend_from_slice(b"id: ");
            push_single_line(&mut out, id);
            out.push(b'\n');
        }
        write_frame(&mut out, self.event.as_deref(), &self.data);
        Bytes::from(out)
    }
}

/// The type of a Responses-style event: the JSON `type` field, else the SSE event name.
pub fn event_type<'a>(event: &'a SseEvent, json: Option<&'a Value>) -> Option<&'a str> {
    json.and_then(|j| j.get("type"))
        .and_then(Value::as_str)
        .or(event.event.as_deref())
}

/// Incremental decoder: push byte chunks split anywhere, collect complete events.
#[derive(Debug, Clone)]
pub struct SseDecoder {
    max_event_bytes: usize,
    line: Vec<u8>,
    /// The previous chunk ended in `\r`: a `\n` opening the next chunk ends the same line.
    after_cr: bool,
    first_line: bool,
    event: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
    /// Bytes held by `event`, `data` and `id`.
    pending: usize,
    /// Dropping the rest of an oversized event up to its blank line.
    discarding: bool,
    discard_line_nonempty: bool,
}

impl Default for SseDecoder {
    fn default() -> Self {
        SseDecoder::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseDecoder {
    /// A decoder that refuses events (fields plus the line being read) above `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        SseDecoder {
            max_event_bytes: max_event_bytes.max(1),
            line: Vec::new(),
            after_cr: false,
            first_line: true,
            event: None,
            data: String::new(),
            has_data: false,
            id: None,
            pending: 0,
            discarding: false,
            discard_line_nonempty: false,
        }
    }

    /// Bytes currently held for the incomplete event; never above the bound (plus one line
    /// terminator's worth of bookkeeping).
    pub fn buffered_len(&self) -> usize {
        self.line.len() + self.pending
    }

    /// Feeds a chunk and appends every event it completes to `out`. Returns
    /// [`WireError::EventTooLarge`] when an event had to be dropped; events before and after
    /// the dropped one are still appended, and the decoder stays usable.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), WireError> {
        let mut overflow = false;
        let mut rest = chunk;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let Some((b'\n', tail)) = rest.split_first() {
                rest = tail;
            }
        }
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.append(rest, &mut overflow);
                    break;
                }
                Some(i) => {
                    let (segment, tail) = rest.split_at(i);
                    self.append(segment, &mut overflow);
                    rest = match tail.split_first() {
                        Some((b'\r', after)) => match after.split_first() {
                            Some((b'\n', after_lf)) => after_lf,
                            None => {
                                self.after_cr = true;
                                after
                            }
                            Some(_) => after,
                        },
                        Some((_, after)) => after,
                        None => tail,
                    };
                    self.end_line(out, &mut overflow);
                }
            }
        }
        self.result(overflow)
    }

    /// Ends the stream: a last line without terminator and an event without its final blank
    /// line are delivered. The decoder is reset and can decode a new stream afterwards.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) -> Result<(), WireError> {
        let mut overflow = false;
        if self.discarding {
            self.discarding = false;
            self.discard_line_nonempty = false;
        } else {
            if !self.line.is_empty() {
                self.end_line(out, &mut overflow);
            }
            self.dispatch(out);
        }
        self.line.clear();
        self.after_cr = false;
        self.first_line = true;
        self.result(overflow)
    }

    fn result(&self, overflow: bool) -> Result<(), WireError> {
        if overflow {
            Err(WireError::EventTooLarge {
                limit: self.max_event_bytes,
            })
        } else {
            Ok(())
        }
    }

    fn append(&mut self, bytes: &[u8], overflow: &mut bool) {
        if bytes.is_empty() {
            return;
        }
        if self.discarding {
            self.discard_line_nonempty = true;
            return;
        }
        if self.line.len() + bytes.len() + self.pending > self.max_event_bytes {
            self.start_discarding(overflow);
            self.discard_line_nonempty = true;
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn start_discarding(&mut self, overflow: &mut bool) {
        *overflow = true;
        self.discarding = true;
        self.line = Vec::new();
        self.reset_event();
        self.data = String::new();
    }

    fn reset_event(&mut self) {
        self.event = None;
        self.data.clear();
        self.has_data = false;
        self.id = None;
        self.pending = 0;
    }

    fn end_line(&mut self, out: &mut Vec<SseEvent>, overflow: &mut bool) {
        if self.discarding {
            if !self.discard_line_nonempty {
                self.discarding = false;
            }
            self.discard_line_nonempty = false;
            self.first_line = false;
            return;
        }
        let mut line = std::mem::take(&mut self.line);
        if self.first_line {
            self.first_line = false;
            if line.starts_with(BOM) {
                line.drain(..BOM.len());
            }
        }
        if line.is_empty() {
            self.dispatch(out);
        } else {
            self.field(&line);
            if self.pending > self.max_event_bytes {
                self.start_discarding(overflow);
                // The line that overflowed is complete: the event's blank line ends the drop.
                self.discard_line_nonempty = false;
            }
        }
        // Keep the allocation for the next line unless one huge line inflated it.
        line.clear();
        if line.capacity() <= 64 * 1024 {
            self.line = line;
        }
    }

    fn field(&mut self, line: &[u8]) {
        if line.first() == Some(&b':') {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let (name, rest) = line.split_at(i);
                let value = rest.get(1..).unwrap_or_default();
                (name, value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"event" => {
                self.event = if value.is_empty() {
                    None
                } else {
                    Some(value.into_owned())
                };
            }
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            b"id" if !value.contains('\0') => self.id = Some(value.into_owned()),
            _ => {}
        }
        self.pending = self.event.as_ref().map_or(0, String::len)
            + self.data.len()
            + self.id.as_ref().map_or(0, String::len);
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.has_data {
            out.push(SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data),
                id: self.id.take(),
            });
        }
        self.reset_event();
    }
}

/// Decodes a complete body in one go (for tests and buffered upstream answers).
pub fn decode_all(body: &[u8], max_event_bytes: usize) -> Result<Vec<SseEvent>, WireError> {
    let mut decoder = SseDecoder::new(max_event_bytes);
    let mut out = Vec::new();
    decoder.push(body, &mut out)?;
    decoder.finish(&mut out)?;
    Ok(out)
}

/// One frame: `event: NAME` (when given) and one `data:` line per line of `data`, then a blank
/// line. Line breaks inside the name are removed, since they would end the field early.
pub fn encode(event: Option<&str>, data: &str) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + event.map_or(0, str::len) + 16);
    write_frame(&mut out, event, data);
    Bytes::from(out)
}

/// A data-only frame carrying one JSON value (the Chat Completions chunk shape).
pub fn encode_json(event: Option<&str>, value: &Value) -> Bytes {
    encode(event, &value.to_string())
}

/// The keep-alive comment frame.
pub fn keep_alive() -> Bytes {
    Bytes::from_static(KEEP_ALIVE)
}

/// The `data: [DONE]` frame.
pub fn done() -> Bytes {
    Bytes::from_static(DONE_FRAME)
}

fn write_frame(out: &mut Vec<u8>, event: Option<&str>, data: &str) {
    if let Some(name) = event.filter(|n| !n.is_empty()) {
        out.extend_from_slice(b"event: ");
        push_single_line(out, name);
        out.push(b'\n');
    }
    let mut rest = data;
    loop {
        out.extend_from_slice(b"data: ");
        match rest.find(['\r', '\n']) {
            Some(i) => {
                let (line, tail) = rest.split_at(i);
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
                rest = tail
                    .strip_prefix("\r\n")
                    .or_else(|| tail.get(1..))
                    .unwrap_or_default();
            }
            None => {
                out.extend_from_slice(rest.as_bytes());
                out.push(b'\n');
                break;
            }
        }
    }
    out.push(b'\n');
}

fn push_single_line(out: &mut Vec<u8>, s: &str) {
    out.extend(s.bytes().filter(|&b| b != b'\r' && b != b'\n'));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_chunks(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut d = SseDecoder::new(1024);
        let mut out = Vec::new();
        for c in chunks {
            d.push(c, &mut out).unwrap();
        }
        d.finish(&mut out).unwrap();
        out
    }

    #[test]
    fn line_endings_and_fields() {
        let body =
            b"\xEF\xBB\xBFevent: a\r\ndata: 1\r\ndata:2\r\rid: 7\ndata:  x\n\n: comment\ndata\n\n";
        let all = decode_chunks(&[body]);
        assert_eq!(
            all,
            vec![
                SseEvent {
                    event: Some("a".into()),
                    data: "1\n2".into(),
                    id: None
                },
                SseEvent {
                    event: None,
                    data: " x".into(),
                    id: Some("7".into())
                },
                SseEvent {
                    event: None,
                    data: String::new(),
                    id: None
                },
            ]
        );
        // The same bytes split at every position give the same events.
        for i in 0..body.len() {
            let (a, b) = body.split_at(i);
            assert_eq!(decode_chunks(&[a, b]), all, "split at {i}");
        }
        let singles: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(decode_chunks(&singles), all);
    }

    #[test]
    fn cr_split_across_chunks_is_one_line_break() {
        assert_eq!(
            decode_chunks(&[b"data: a\r", b"\ndata: b\r", b"\r"]).len(),
            1
        );
        assert_eq!(
            decode_chunks(&[b"data: a\r", b"\ndata: b\r", b"\r"])[0].data,
            "a\nb"
        );
    }

    #[test]
    fn event_without_data_is_not_dispatched_and_final_event_is() {
        let events = decode_chunks(&[b"event: ping\n\nevent: last\ndata: {}"]);
        assert_eq!(
            events,
            vec![SseEvent {
                event: Some("last".into()),
                data: "{}".into(),
                id: None
            }]
        );
    }

    #[test]
    fn oversized_event_is_dropped_and_decoding_resumes() {
        let mut d = SseDecoder::new(16);
        let mut out = Vec::new();
        let err = d.push(
            b"data: ok\n\ndata: 0123456789abcdefghij\ndata: more\n\ndata: after\n\n",
            &mut out,
        );
        assert_eq!(err, Err(WireError::EventTooLarge { limit: 16 }));
        assert_eq!(
            out.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
            ["ok", "after"]
        );
        // Split across chunks, a long line never makes the buffer exceed the bound.
        let mut d = SseDecoder::new(16);
        let mut out = Vec::new();
        assert!(d.push(b"data: 0123456789", &mut out).is_ok());
        assert!(d.push(b"abcdefghij", &mut out).is_err());
        assert!(d.buffered_len() <= 16);
        assert!(d.push(b"zzzz\n\ndata: y\n\n", &mut out).is_ok());
        assert_eq!(out, vec![SseEvent::new(None, "y")]);
    }

    #[test]
    fn many_data_lines_are_bounded() {
        let mut d = SseDecoder::new(10);
        let mut out = Vec::new();
        assert!(
            d.push(
                b"data: 1234\ndata: 1234\ndata: 1234\n\ndata: z\n\n",
                &mut out
            )
            .is_err()
        );
        assert_eq!(out, vec![SseEvent::new(None, "z")]);
    }

    #[test]
    fn encoder_round_trips() {
        let frame = encode(Some("response.output_text.delta"), "a\r\nb\rc\nd");
        assert_eq!(
            &frame[..],
            b"event: response.output_text.delta\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
        let decoded = decode_all(&frame, 1024).unwrap();
        assert_eq!(
            decoded,
            vec![SseEvent::new(
                Some("response.output_text.delta"),
                "a\nb\nc\nd"
            )]
        );
        assert_eq!(&encode(None, "")[..], b"data: \n\n");
        assert_eq!(
            &encode(Some("x\ny"), " lead")[..],
            b"event: xy\ndata:  lead\n\n"
        );
        assert_eq!(
            decode_all(&encode(None, " lead"), 64).unwrap()[0].data,
            " lead"
        );
        assert_eq!(&keep_alive()[..], b": keep-alive\n\n");
        assert!(decode_all(&keep_alive(), 64).unwrap().is_empty());
        assert!(decode_all(&done(), 64).unwrap()[0].is_done());
        let mut with_id = SseEvent::new(None, "v");
        with_id.id = Some("9".into());
        assert_eq!(decode_all(&with_id.to_bytes(), 64).unwrap(), vec![with_id]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let events = decode_chunks(&[b"data: \xFF\xFEok\n\n"]);
        assert_eq!(events[0].data, "\u{FFFD}\u{FFFD}ok");
    }
}
