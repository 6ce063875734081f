//! The mock's shared state: per-token counters, faults, usage and pacing, and the ring of
//! recorded requests. Everything a request needs is read and updated under one short lock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::fault::{Fault, FaultRule};
use super::oauth::OAuthState;
use super::usage::{MockUsage, StoredUsage};

/// Bound on the tokens tracked (counters, settings); requests with further new tokens are
/// still served, just not counted.
const MAX_TOKENS: usize = 200_000;
/// Bound on the prompt-cache keys remembered per token.
const MAX_CACHE_KEYS: usize = 4096;
/// Bound on the faults queued per token.
const MAX_FAULTS: usize = 64;

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The bearer token (or API key) it carried.
    pub token: Option<String>,
}

impl RecordedRequest {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON, when it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub(crate) fn to_json(&self) -> Value {
        let headers: Vec<Value> = self
            .headers
            .iter()
            .map(|(n, v)| json!([n.as_str(), String::from_utf8_lossy(v.as_bytes())]))
            .collect();
        json!({
            "method": self.method.as_str(),
            "path": self.path,
            "token": self.token,
            "headers": headers,
            "body": String::from_utf8_lossy(&self.body),
        })
    }
}

/// Per-token stream pacing; `None` fields fall back to the request headers
/// (`x-mock-deltas`, `x-mock-delta-delay-ms`) and then to the mock's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pacing {
    #[serde(default)]
    pub deltas: Option<u32>,
    #[serde(default)]
    pub delta_delay_ms: Option<u64>,
}

#[derive(Debug, Default)]
struct TokenState {
    count: u64,
    faults: VecDeque<FaultRule>,
    usage: Option<Arc<StoredUsage>>,
    pacing: Pacing,
    cache_keys: HashSet<u64>,
}

/// Which faults may apply to an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// A streaming answer: every fault.
    Stream,
    /// A JSON answer: every fault but in-stream failures.
    Json,
    /// The usage endpoint: a usage-limit fault is reported in the body, not consumed.
    Usage,
}

/// What a request learned from the shared state.
#[derive(Debug, Default)]
pub(crate) struct Intake {
    /// The fault to apply (already consumed).
    pub fault: Option<Fault>,
    /// A pending usage-limit fault seen by the usage endpoint (not consumed).
    pub usage_exhausted_for: Option<u64>,
    pub usage: Option<Arc<StoredUsage>>,
    pub pacing: Pacing,
    /// The prompt-cache key was seen before on this token.
    pub cache_hit: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    tokens: HashMap<String, TokenState>,
    ring: VecDeque<RecordedRequest>,
    pub(crate) oauth: OAuthState,
}

pub(crate) struct State {
    shared: Mutex<Shared>,
    record_capacity: usize,
    seq: AtomicU64,
}

impl State {
    pub(crate) fn new(record_capacity: usize) -> Self {
        State {
            shared: Mutex::new(Shared::default()),
            record_capacity,
            seq: AtomicU64::new(1),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic elsewhere cannot leave this state inconsistent in a way that matters to a
        // mock; keep serving.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A process-unique number for ids.
    pub(crate) fn next_id(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn recording(&self) -> bool {
        self.record_capacity > 0
    }

    /// Records the request, counts it for its token, takes the fault that applies (when
    /// `scope` is given) and reads the token's settings.
    pub(crate) fn intake(
        &self,
        rec: Option<RecordedRequest>,
        token: Option<&str>,
        scope: Option<Scope>,
        cache_key: Option<u64>,
    ) -> Intake {
        let mut g = self.lock();
        if let Some(rec) = rec.filter(|_| self.record_capacity > 0) {
            if g.ring.len() >= self.record_capacity {
                g.ring.pop_front();
            }
            g.ring.push_back(rec);
        }
        let Some(token) = token else {
            return Intake::default();
        };
        let Some(st) = tracked(&mut g.tokens, token) else {
            return Intake::default();
        };
        st.count = st.count.saturating_add(1);
        let mut intake = Intake {
            usage: st.usage.clone(),
            pacing: st.pacing,
            ..Intake::default()
        };
        if let Some(key) = cache_key {
            intake.cache_hit = st.cache_keys.contains(&key);
            if !intake.cache_hit {
                if st.cache_keys.len() >= MAX_CACHE_KEYS {
                    st.cache_keys.clear();
                }
                st.cache_keys.insert(key);
            }
        }
        if let (Some(scope), Some(front)) = (scope, st.faults.front_mut()) {
            let fault = front.fault.clone();
            match (scope, &fault) {
                (Scope::Usage, Fault::UsageLimit { resets_in_secs }) => {
                    intake.usage_exhausted_for = Some(*resets_in_secs);
                }
                (Scope::Usage | Scope::Json, f) if f.stream_only() => {}
                _ => {
                    intake.fault = Some(fault);
                    if let Some(n) = front.remaining.as_mut() {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            st.faults.pop_front();
                        }
                    }
                }
            }
        }
        intake
    }

    pub(crate) fn set_fault(&self, token: &str, rule: FaultRule, append: bool) {
        let mut g = self.lock();
        if let Some(st) = tracked(&mut g.tokens, token) {
            if !append {
                st.faults.clear();
            }
            if rule.remaining != Some(0) && st.faults.len() < MAX_FAULTS {
                st.faults.push_back(rule);
            }
        }
    }

    pub(crate) fn clear_faults(&self, token: Option<&str>) {
        let mut g = self.lock();
        match token {
            Some(t) => {
                if let Some(st) = g.tokens.get_mut(t) {
                    st.faults.clear();
                }
            }
            None => g.tokens.values_mut().for_each(|st| st.faults.clear()),
        }
    }

    pub(crate) fn set_usage(&self, token: &str, usage: MockUsage, now: i64) {
        let mut g = self.lock();
        if let Some(st) = tracked(&mut g.tokens, token) {
            st.usage = Some(Arc::new(StoredUsage {
                usage,
                set_at_secs: now,
            }));
        }
    }

    pub(crate) fn set_pacing(&self, token: &str, pacing: Pacing) {
        let mut g = self.lock();
        if let Some(st) = tracked(&mut g.tokens, token) {
            st.pacing = pacing;
        }
    }

    pub(crate) fn request_count(&self, token: &str) -> u64 {
        self.lock().tokens.get(token).map_or(0, |st| st.count)
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().ring.iter().cloned().collect()
    }

    pub(crate) fn clear_requests(&self) {
        self.lock().ring.clear();
    }
}

fn tracked<'a>(
    tokens: &'a mut HashMap<String, TokenState>,
    token: &str,
) -> Option<&'a mut TokenState> {
    if !tokens.contains_key(token) {
        if tokens.len() >= MAX_TOKENS {
            return None;
        }
        tokens.insert(token.to_string(), TokenState::default());
    }
    tokens.get_mut(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_faults_run_out_and_queue() {
        let s = State::new(2);
        s.set_fault("t", Fault::Unauthorized.times(2), false);
        s.set_fault("t", Fault::ServerError { status: 502 }.times(1), true);
        let take = |scope| s.intake(None, Some("t"), Some(scope), None).fault;
        assert_eq!(take(Scope::Json), Some(Fault::Unauthorized));
        assert_eq!(take(Scope::Stream), Some(Fault::Unauthorized));
        assert_eq!(take(Scope::Json), Some(Fault::ServerError { status: 502 }));
        assert_eq!(take(Scope::Json), None);
        assert_eq!(s.request_count("t"), 4);
        assert_eq!(s.request_count("other"), 0);
    }

    #[test]
    fn stream_only_faults_wait_for_a_stream() {
        let s = State::new(0);
        let f = Fault::InStreamFailure {
            code: "usage_limit_reached".into(),
            resets_in_secs: None,
        };
        s.set_fault("t", f.clone().times(1), false);
        assert_eq!(
            s.intake(None, Some("t"), Some(Scope::Json), None).fault,
            None
        );
        assert_eq!(
            s.intake(None, Some("t"), Some(Scope::Stream), None).fault,
            Some(f)
        );
        assert_eq!(
            s.intake(None, Some("t"), Some(Scope::Stream), None).fault,
            None
        );
    }

    #[test]
    fn usage_endpoint_peeks_usage_limit() {
        let s = State::new(0);
        s.set_fault(
            "t",
            Fault::UsageLimit { resets_in_secs: 30 }.times(1),
            false,
        );
        let i = s.intake(None, Some("t"), Some(Scope::Usage), None);
        assert_eq!((i.fault, i.usage_exhausted_for), (None, Some(30)));
        let i = s.intake(None, Some("t"), Some(Scope::Stream), None);
        assert_eq!(i.fault, Some(Fault::UsageLimit { resets_in_secs: 30 }));
    }

    #[test]
    fn ring_is_bounded_and_cache_keys_warm() {
        let s = State::new(2);
        for i in 0..3 {
            let rec = RecordedRequest {
                method: Method::GET,
                path: format!("/{i}"),
                headers: HeaderMap::new(),
                body: Bytes::new(),
                token: None,
            };
            s.intake(Some(rec), None, None, None);
        }
        let paths: Vec<String> = s.requests().into_iter().map(|r| r.path).collect();
        assert_eq!(paths, ["/1", "/2"]);
        assert!(!s.intake(None, Some("t"), None, Some(7)).cache_hit);
        assert!(s.intake(None, Some("t"), None, Some(7)).cache_hit);
        assert!(!s.intake(None, Some("u"), None, Some(7)).cache_hit);
    }
}
