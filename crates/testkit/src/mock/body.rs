//! The response body: one buffer, or a paced sequence of chunks with pauses and an optional
//! abort (which makes hyper close the connection mid-body).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

/// The body error that aborts a response: hyper then closes the connection without finishing
/// the message (HTTP/1) or resets the stream (HTTP/2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aborted;

impl std::fmt::Display for Aborted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock upstream dropped the connection")
    }
}

impl std::error::Error for Aborted {}

#[derive(Debug)]
pub(crate) enum Step {
    Data(Bytes),
    Pause(Duration),
    /// Yield once so hyper flushes what it has buffered (the head and earlier chunks) before
    /// an abort closes the connection.
    Flush,
    Abort,
}

pub(crate) enum MockBody {
    Full(Option<Bytes>),
    Paced(Box<Paced>),
}

pub(crate) struct Paced {
    steps: VecDeque<Step>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl MockBody {
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        MockBody::Full(Some(b.into()))
    }

    pub(crate) fn empty() -> Self {
        MockBody::Full(None)
    }

    /// A chunked body (no content length, like a real event stream).
    pub(crate) fn paced(steps: VecDeque<Step>) -> Self {
        MockBody::Paced(Box::new(Paced { steps, sleep: None }))
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Paced(p) => loop {
                if let Some(sleep) = p.sleep.as_mut() {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    p.sleep = None;
                }
                match p.steps.pop_front() {
                    None => return Poll::Ready(None),
                    Some(Step::Data(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                    Some(Step::Pause(d)) => p.sleep = Some(Box::pin(tokio::time::sleep(d))),
                    Some(Step::Flush) => {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    Some(Step::Abort) => return Poll::Ready(Some(Err(Aborted))),
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MockBody::Full(b) => b.is_none(),
            MockBody::Paced(p) => p.steps.is_empty() && p.sleep.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Paced(_) => SizeHint::default(),
        }
    }
}

/// An event stream being assembled: every frame is appended to one buffer and its end
/// remembered, so an unpaced stream goes out as a single chunk without copies.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    buf: Vec<u8>,
    /// (end offset, whether the frame carries generated content).
    ends: Vec<(usize, bool)>,
}

/// How a stream is paced and broken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Pause before each content delta.
    pub delta_delay: Duration,
    /// Pause after this many frames.
    pub stall: Option<(u32, Duration)>,
    /// Close the connection after this many frames.
    pub drop_after: Option<u32>,
}

impl Frames {
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Frames {
            buf: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(16),
        }
    }

    /// Appends a Responses event whose data is `{"type":NAME,"sequence_number":SEQ,…}` with the
    /// fields of `data` (an object) after those two, as the real backend orders them.
    pub(crate) fn typed_event(
        &mut self,
        name: &str,
        seq: u64,
        data: &serde_json::Value,
        delta: bool,
    ) {
        self.event_with_type(name, Some(seq), data, delta);
    }

    /// Appends an Anthropic event: `event: NAME` and data `{"type":NAME,…}` with the fields of
    /// `data` (an object) after the type, as the real API orders them.
    pub(crate) fn named_event(&mut self, name: &str, data: &serde_json::Value, delta: bool) {
        self.event_with_type(name, None, data, delta);
    }

    fn event_with_type(
        &mut self,
        name: &str,
        seq: Option<u64>,
        data: &serde_json::Value,
        delta: bool,
    ) {
        self.buf.extend_from_slice(b"event: ");
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.extend_from_slice(b"\ndata: {\"type\":");
        let _ = serde_json::to_writer(&mut self.buf, name);
        if let Some(seq) = seq {
            self.buf.extend_from_slice(b",\"sequence_number\":");
            self.buf.extend_from_slice(seq.to_string().as_bytes());
        }
        let start = self.buf.len();
        let _ = serde_json::to_writer(&mut self.buf, data);
        match self.buf.get(start..) {
            Some(b"{}") => {
                self.buf.truncate(start);
                self.buf.push(b'}');
            }
            Some([b'{', ..]) => self.buf[start] = b',',
            // Not an object: keep the frame valid JSON by dropping the data.
            _ => {
                self.buf.truncate(start);
                self.buf.push(b'}');
            }
        }
        self.buf.extend_from_slice(b"\n\n");
        self.ends.push((self.buf.len(), delta));
    }

    /// Appends `data: JSON\n\n` (Chat Completions frames).
    pub(crate) fn data(&mut self, data: &impl serde::Serialize, delta: bool) {
        self.buf.extend_from_slice(b"data: ");
        self.data_line(data, delta);
    }

    /// Appends a raw, complete frame.
    pub(crate) fn raw(&mut self, frame: &[u8]) {
        self.buf.extend_from_slice(frame);
        self.ends.push((self.buf.len(), false));
    }

    fn data_line(&mut self, data: &impl serde::Serialize, delta: bool) {
        // Serialising plain JSON values into a Vec cannot fail; a failure would only cut the
        // frame short, which the terminator below still closes.
        let _ = serde_json::to_writer(&mut self.buf, data);
        self.buf.extend_from_slice(b"\n\n");
        self.ends.push((self.buf.len(), delta));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The stream as a body following `plan`.
    pub(crate) fn into_body(self, plan: Plan) -> MockBody {
        let all = Bytes::from(self.buf);
        let mut steps = VecDeque::new();
        let mut start = 0usize;
        let flush = |steps: &mut VecDeque<Step>, start: &mut usize, end: usize| {
            if end > *start {
                steps.push_back(Step::Data(all.slice(*start..end)));
                *start = end;
            }
        };
        let mut prev_end = 0usize;
        for (i, &(end, delta)) in self.ends.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            if plan.drop_after == Some(i) {
                flush(&mut steps, &mut start, prev_end);
                steps.extend([Step::Flush, Step::Abort]);
                return MockBody::paced(steps);
            }
            if let Some((after, d)) = plan.stall
                && after == i
            {
                flush(&mut steps, &mut start, prev_end);
                steps.push_back(Step::Pause(d));
            }
            if delta && !plan.delta_delay.is_zero() {
                flush(&mut steps, &mut start, prev_end);
                steps.push_back(Step::Pause(plan.delta_delay));
            }
            prev_end = end;
        }
        flush(&mut steps, &mut start, prev_end);
        let n = u32::try_from(self.ends.len()).unwrap_or(u32::MAX);
        if let Some((after, d)) = plan.stall
            && after >= n
        {
            steps.push_back(Step::Pause(d));
        }
        if plan.drop_after.is_some_and(|after| after >= n) {
            steps.extend([Step::Flush, Step::Abort]);
        }
        MockBody::paced(steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn steps(body: MockBody) -> Vec<String> {
        let MockBody::Paced(p) = body else {
            panic!("expected a paced body")
        };
        p.steps
            .iter()
            .map(|s| match s {
                Step::Data(b) => format!("data:{}", b.len()),
                Step::Pause(d) => format!("pause:{}", d.as_millis()),
                Step::Flush => "flush".into(),
                Step::Abort => "abort".into(),
            })
            .collect()
    }

    fn frames() -> Frames {
        let mut f = Frames::default();
        let n = json!(123_456_789_012u64); // "data: " + 12 digits + "\n\n" = 20 bytes
        f.data(&n, false);
        f.data(&n, true);
        f.data(&n, true);
        f.data(&n, false);
        f
    }

    #[test]
    fn typed_events_put_type_first() {
        let mut f = Frames::default();
        f.typed_event("x.y", 3, &json!({"a": 1}), false);
        f.typed_event("z", 4, &json!({}), false);
        f.named_event("ping", &json!({}), false);
        f.named_event("message_stop", &json!({"b": [2]}), false);
        let text = String::from_utf8(f.buf).unwrap();
        assert_eq!(
            text,
            "event: x.y\ndata: {\"type\":\"x.y\",\"sequence_number\":3,\"a\":1}\n\n\
             event: z\ndata: {\"type\":\"z\",\"sequence_number\":4}\n\n\
             event: ping\ndata: {\"type\":\"ping\"}\n\n\
             event: message_stop\ndata: {\"type\":\"message_stop\",\"b\":[2]}\n\n"
        );
    }

    #[test]
    fn unpaced_is_one_chunk() {
        assert_eq!(steps(frames().into_body(Plan::default())), ["data:80"]);
    }

    #[test]
    fn pauses_before_deltas_and_stall() {
        let plan = Plan {
            delta_delay: Duration::from_millis(5),
            stall: Some((3, Duration::from_millis(100))),
            drop_after: None,
        };
        assert_eq!(
            steps(frames().into_body(plan)),
            [
                "data:20",
                "pause:5",
                "data:20",
                "pause:5",
                "data:20",
                "pause:100",
                "data:20"
            ]
        );
    }

    #[test]
    fn drop_cuts_the_stream() {
        let plan = Plan {
            drop_after: Some(2),
            ..Plan::default()
        };
        assert_eq!(
            steps(frames().into_body(plan)),
            ["data:40", "flush", "abort"]
        );
        let plan = Plan {
            drop_after: Some(0),
            ..Plan::default()
        };
        assert_eq!(steps(frames().into_body(plan)), ["flush", "abort"]);
        let plan = Plan {
            drop_after: Some(9),
            ..Plan::default()
        };
        assert_eq!(
            steps(frames().into_body(plan)),
            ["data:80", "flush", "abort"]
        );
    }
}
