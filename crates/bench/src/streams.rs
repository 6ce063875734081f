//! Streaming runs: time to first content frame (TTFT), frame counting (every stream must carry
//! exactly the expected number of content deltas, reassemble to the expected text and end with
//! its terminal event), and gaps between frames beyond the upstream's own pacing (a Nagle /
//! delayed-ACK interaction shows up as a ~40 ms stall).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::client::{Conn, Outcome, Target};
use crate::hist::Lat;

/// Bound on one SSE event (and on what is buffered while looking for its end).
const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;
/// A gap this much longer than the upstream's pacing counts as a stall.
pub const STALL: Duration = Duration::from_millis(35);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamKind {
    /// Chat Completions chunks, `data: [DONE]` at the end.
    Chat,
    /// Responses events, `response.completed` at the end.
    Responses,
}

#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub kind: StreamKind,
    pub streams: usize,
    /// Streams in flight at once (each on its own connection).
    pub concurrency: usize,
    pub expect_deltas: u32,
    /// The text the deltas must reassemble to, when known.
    pub expect_text: Option<String>,
    /// The upstream's pause before each delta (subtracted before judging a gap).
    pub delta_delay: Duration,
    /// Worker `i` starts `i * stagger` after the first, so a thousand connections do not all
    /// hit the listen backlog in the same millisecond.
    pub stagger: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct StreamResult {
    /// Request written → first content delta.
    pub ttft: Lat,
    /// Request written → response headers.
    pub ttfb: Lat,
    /// Request written → terminal event.
    pub total: Lat,
    /// `ok` = streams complete and exact; failures = refused or broken requests.
    pub outcome: Outcome,
    /// Streams answered 200 whose frames were wrong: missing/extra deltas, no terminal event,
    /// text that does not match, or an in-stream error.
    pub lost: u64,
    pub deltas: u64,
    pub expected_deltas: u64,
    pub stalls: u64,
    pub max_excess_gap: Duration,
    pub peak_concurrency: usize,
}

/// One parsed SSE event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub name: Option<String>,
    pub data: String,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Class {
    Content(String),
    Terminal,
    Failed(String),
    Other,
}

/// Splits a byte stream into SSE events (blank-line separated; `\r` dropped; comment lines
/// such as `: keep-alive` ignored).
#[derive(Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
}

impl Splitter {
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Event>) -> anyhow::Result<()> {
        self.buf
            .extend(chunk.iter().copied().filter(|&b| b != b'\r'));
        let mut start = 0;
        while let Some(pos) = find_blank_line(self.buf.get(start..).unwrap_or_default()) {
            let block = self.buf.get(start..start + pos).unwrap_or_default();
            if let Some(ev) = parse_event(block) {
                out.push(ev);
            }
            start += pos + 2;
        }
        self.buf.drain(..start.min(self.buf.len()));
        if self.buf.len() > MAX_EVENT_BYTES {
            bail!("an SSE event exceeds {MAX_EVENT_BYTES} bytes");
        }
        Ok(())
    }

    /// Bytes left after the last complete event.
    pub fn rest(&self) -> usize {
        self.buf.iter().filter(|b| !b.is_ascii_whitespace()).count()
    }
}

fn find_blank_line(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\n\n")
}

fn parse_event(block: &[u8]) -> Option<Event> {
    let text = String::from_utf8_lossy(block);
    let mut ev = Event::default();
    let mut has_data = false;
    for line in text.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => ev.name = Some(value.to_string()),
            "data" => {
                if has_data {
                    ev.data.push('\n');
                }
                ev.data.push_str(value);
                has_data = true;
            }
            _ => {}
        }
    }
    (has_data || ev.name.is_some()).then_some(ev)
}

pub fn classify(kind: StreamKind, ev: &Event) -> Class {
    let data = ev.data.trim();
    if kind == StreamKind::Chat && data == "[DONE]" {
        return Class::Terminal;
    }
    let json: Option<Value> = serde_json::from_str(data).ok();
    let json = json.as_ref();
    match kind {
        StreamKind::Chat => {
            let Some(v) = json else {
                return Class::Other;
            };
            if let Some(e) = v.get("error") {
                return Class::Failed(e.to_string());
            }
            match v
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
            {
                Some(s) if !s.is_empty() => Class::Content(s.to_string()),
                _ => Class::Other,
            }
        }
        StreamKind::Responses => {
            let ty = ev
                .name
                .as_deref()
                .or_else(|| json.and_then(|v| v.get("type")).and_then(Value::as_str))
                .unwrap_or_default();
            match ty {
                "response.output_text.delta" => Class::Content(
                    json.and_then(|v| v.get("delta"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                ),
                "response.completed" => Class::Terminal,
                "response.failed" | "response.incomplete" | "error" => {
                    Class::Failed(format!("{ty}: {}", data.get(..300).unwrap_or(data)))
                }
                _ => Class::Other,
            }
        }
    }
}

/// What one stream delivered.
#[derive(Debug)]
struct Tracker {
    kind: StreamKind,
    delay: Duration,
    sent: Instant,
    first_content: Option<Instant>,
    terminal_at: Option<Instant>,
    last_frame: Option<Instant>,
    deltas: u32,
    text: String,
    failed: Option<String>,
    after_terminal: u32,
    stalls: u32,
    max_excess: Duration,
}

impl Tracker {
    fn new(kind: StreamKind, delay: Duration, sent: Instant) -> Tracker {
        Tracker {
            kind,
            delay,
            sent,
            first_content: None,
            terminal_at: None,
            last_frame: None,
            deltas: 0,
            text: String::new(),
            failed: None,
            after_terminal: 0,
            stalls: 0,
            max_excess: Duration::ZERO,
        }
    }

    fn on_event(&mut self, ev: &Event, now: Instant) {
        let class = classify(self.kind, ev);
        let expected_pause = match class {
            Class::Content(_) => self.delay,
            _ => Duration::ZERO,
        };
        // Gaps are judged from the first byte of the body on: the head may legitimately wait
        // for the gateway's stream preflight.
        if let Some(prev) = self.last_frame {
            let excess = now
                .saturating_duration_since(prev)
                .saturating_sub(expected_pause);
            self.max_excess = self.max_excess.max(excess);
            if excess >= STALL {
                self.stalls += 1;
            }
        }
        self.last_frame = Some(now);
        if self.terminal_at.is_some() {
            if !matches!(class, Class::Other) {
                self.after_terminal += 1;
            }
            return;
        }
        match class {
            Class::Content(s) => {
                self.deltas += 1;
                self.first_content.get_or_insert(now);
                if self.text.len() < MAX_EVENT_BYTES {
                    self.text.push_str(&s);
                }
            }
            Class::Terminal => self.terminal_at = Some(now),
            Class::Failed(msg) => {
                self.failed.get_or_insert(msg);
            }
            Class::Other => {}
        }
    }

    /// Why the stream is not exact, if it is not.
    fn verdict(&self, spec: &StreamSpec) -> Option<String> {
        if let Some(f) = &self.failed {
            return Some(format!("in-stream error: {f}"));
        }
        if self.terminal_at.is_none() {
            return Some(format!(
                "no terminal event after {} of {} deltas",
                self.deltas, spec.expect_deltas
            ));
        }
        if self.deltas != spec.expect_deltas {
            return Some(format!(
                "{} deltas, expected {}",
                self.deltas, spec.expect_deltas
            ));
        }
        if self.after_terminal > 0 {
            return Some(format!(
                "{} events after the terminal one",
                self.after_terminal
            ));
        }
        if let Some(t) = &spec.expect_text
            && &self.text != t
        {
            return Some(format!(
                "text {:?} differs from {:?}",
                self.text.get(..80).unwrap_or(&self.text),
                t.get(..80).unwrap_or(t)
            ));
        }
        None
    }
}

/// Raw samples: a thousand workers with three histograms each would take a gigabyte.
struct WorkerResult {
    ttft: Vec<Duration>,
    ttfb: Vec<Duration>,
    total: Vec<Duration>,
    outcome: Outcome,
    lost: u64,
    deltas: u64,
    stalls: u64,
    max_excess: Duration,
}

pub async fn run(target: Arc<Target>, spec: StreamSpec) -> anyhow::Result<StreamResult> {
    let spec = Arc::new(spec);
    let next = Arc::new(AtomicUsize::new(0));
    let active = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let workers = spec.concurrency.clamp(1, spec.streams.max(1));
    let mut tasks = Vec::with_capacity(workers);
    for i in 0..workers {
        let (target, spec, next, active, peak) = (
            target.clone(),
            spec.clone(),
            next.clone(),
            active.clone(),
            peak.clone(),
        );
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(spec.stagger * u32::try_from(i).unwrap_or(u32::MAX)).await;
            let mut conn = Conn::new(target.addr);
            let mut r = WorkerResult {
                ttft: Vec::new(),
                ttfb: Vec::new(),
                total: Vec::new(),
                outcome: Outcome::default(),
                lost: 0,
                deltas: 0,
                stalls: 0,
                max_excess: Duration::ZERO,
            };
            while next.fetch_add(1, Ordering::Relaxed) < spec.streams {
                let now_active = active.fetch_add(1, Ordering::Relaxed) + 1;
                peak.fetch_max(now_active, Ordering::Relaxed);
                let one = tokio::time::timeout(spec.timeout, one_stream(&mut conn, &target, &spec))
                    .await
                    .unwrap_or_else(|_| Err(anyhow!("stream timed out after {:?}", spec.timeout)));
                active.fetch_sub(1, Ordering::Relaxed);
                match one {
                    Ok(Done::Status(status, body)) => r.outcome.status(status, &body),
                    Ok(Done::Stream(t, ttfb)) => {
                        r.ttfb.push(ttfb);
                        r.deltas += u64::from(t.deltas);
                        r.stalls += u64::from(t.stalls);
                        r.max_excess = r.max_excess.max(t.max_excess);
                        match t.verdict(&spec) {
                            None => {
                                r.outcome.ok += 1;
                                if let Some(f) = t.first_content {
                                    r.ttft.push(f - t.sent);
                                }
                                if let Some(e) = t.terminal_at {
                                    r.total.push(e - t.sent);
                                }
                            }
                            Some(why) => {
                                r.lost += 1;
                                r.outcome.failed(why);
                            }
                        }
                    }
                    Err(e) => {
                        conn.reset();
                        r.outcome.error(&e);
                    }
                }
            }
            anyhow::Ok(r)
        }));
    }
    let mut out = StreamResult {
        ttft: Lat::new()?,
        ttfb: Lat::new()?,
        total: Lat::new()?,
        outcome: Outcome::default(),
        lost: 0,
        deltas: 0,
        expected_deltas: u64::from(spec.expect_deltas) * spec.streams as u64,
        stalls: 0,
        max_excess_gap: Duration::ZERO,
        peak_concurrency: 0,
    };
    for t in tasks {
        let r = t
            .await
            .map_err(|e| anyhow!("stream worker failed: {e}"))??;
        r.ttft.iter().for_each(|d| out.ttft.record(*d));
        r.ttfb.iter().for_each(|d| out.ttfb.record(*d));
        r.total.iter().for_each(|d| out.total.record(*d));
        out.outcome.merge(r.outcome);
        out.lost += r.lost;
        out.deltas += r.deltas;
        out.stalls += r.stalls;
        out.max_excess_gap = out.max_excess_gap.max(r.max_excess);
    }
    out.peak_concurrency = peak.load(Ordering::Relaxed);
    Ok(out)
}

enum Done {
    Status(http::StatusCode, bytes::Bytes),
    Stream(Box<Tracker>, Duration),
}

async fn one_stream(conn: &mut Conn, target: &Target, spec: &StreamSpec) -> anyhow::Result<Done> {
    let req = target.request()?;
    let sender = conn.ready().await?;
    let sent = Instant::now();
    let resp = sender
        .send_request(req)
        .await
        .context("stream request failed")?;
    let ttfb = sent.elapsed();
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let limited = http_body_util::Limited::new(body, 64 * 1024);
        let bytes = limited
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return Ok(Done::Status(status, bytes));
    }
    let mut tracker = Box::new(Tracker::new(spec.kind, spec.delta_delay, sent));
    let mut splitter = Splitter::default();
    let mut events = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the stream broke")?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let now = Instant::now();
        splitter.push(&data, &mut events)?;
        for ev in events.drain(..) {
            tracker.on_event(&ev, now);
        }
    }
    if splitter.rest() > 0 && tracker.failed.is_none() {
        tracker.failed = Some("the stream ended inside an event".into());
    }
    Ok(Done::Stream(tracker, ttfb))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&str]) -> Vec<Event> {
        let mut s = Splitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c.as_bytes(), &mut out).unwrap();
        }
        assert_eq!(s.rest(), 0);
        out
    }

    #[test]
    fn splits_events_across_chunks_and_skips_comments() {
        let ev = events(&[
            "event: response.created\ndata: {\"type\":\"response.created\"}\n",
            "\n: keep-alive\n\nevent: response.output_text.delta\r\ndata: {\"delta\":\"he\"}\r\n\r\n",
            "data: a\ndata: b\n\n",
        ]);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].name.as_deref(), Some("response.created"));
        assert_eq!(
            classify(StreamKind::Responses, &ev[1]),
            Class::Content("he".into())
        );
        assert_eq!(ev[2].data, "a\nb");
        let mut s = Splitter::default();
        s.push(b"data: cut", &mut Vec::new()).unwrap();
        assert!(s.rest() > 0);
    }

    #[test]
    fn classifies_chat_and_responses() {
        let chat = |d: &str| {
            classify(
                StreamKind::Chat,
                &Event {
                    name: None,
                    data: d.into(),
                },
            )
        };
        assert_eq!(chat("[DONE]"), Class::Terminal);
        assert_eq!(
            chat(r#"{"choices":[{"delta":{"content":"x"}}]}"#),
            Class::Content("x".into())
        );
        assert_eq!(
            chat(r#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#),
            Class::Other
        );
        assert!(matches!(
            chat(r#"{"error":{"message":"m"}}"#),
            Class::Failed(_)
        ));
        let resp = |name: &str| Event {
            name: Some(name.into()),
            data: "{}".into(),
        };
        assert_eq!(
            classify(StreamKind::Responses, &resp("response.completed")),
            Class::Terminal
        );
        assert!(matches!(
            classify(StreamKind::Responses, &resp("response.failed")),
            Class::Failed(_)
        ));
        // The type may come from the data alone.
        let typed = Event {
            name: None,
            data: r#"{"type":"response.output_text.delta","delta":"y"}"#.into(),
        };
        assert_eq!(
            classify(StreamKind::Responses, &typed),
            Class::Content("y".into())
        );
    }

    #[test]
    fn verdict_needs_exact_deltas_text_and_terminal() {
        let spec = StreamSpec {
            kind: StreamKind::Chat,
            streams: 1,
            concurrency: 1,
            expect_deltas: 2,
            expect_text: Some("ab".into()),
            delta_delay: Duration::from_millis(10),
            stagger: Duration::ZERO,
            timeout: Duration::from_secs(1),
        };
        let t0 = Instant::now();
        let content = |s: &str| Event {
            name: None,
            data: format!(r#"{{"choices":[{{"delta":{{"content":"{s}"}}}}]}}"#),
        };
        let done = Event {
            name: None,
            data: "[DONE]".into(),
        };
        let mut t = Tracker::new(StreamKind::Chat, spec.delta_delay, t0);
        t.on_event(&content("a"), t0);
        assert!(t.verdict(&spec).unwrap().contains("no terminal"));
        t.on_event(&content("b"), t0 + Duration::from_millis(10));
        t.on_event(&done, t0 + Duration::from_millis(11));
        assert_eq!(t.verdict(&spec), None);
        assert_eq!(t.stalls, 0);

        // A 40 ms hole beyond the 10 ms pacing is a stall; a missing delta is a loss.
        let mut t = Tracker::new(StreamKind::Chat, spec.delta_delay, t0);
        t.on_event(&content("a"), t0);
        t.on_event(&content("b"), t0 + Duration::from_millis(52));
        t.on_event(&done, t0 + Duration::from_millis(53));
        assert_eq!(t.stalls, 1);
        assert!(t.max_excess >= Duration::from_millis(42));
        let mut t = Tracker::new(StreamKind::Chat, spec.delta_delay, t0);
        t.on_event(&content("ab"), t0);
        t.on_event(&done, t0);
        assert!(t.verdict(&spec).unwrap().contains("1 deltas"));
    }
}
