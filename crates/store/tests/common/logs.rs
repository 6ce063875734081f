//! Deterministic request-log records for tests and the ingest benchmark.

use poolgate_core::{Attempt, ErrorClass, RequestLog, Translation};

/// SplitMix64: tiny, deterministic, good enough to spread test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

pub const KEYS: u64 = 20;
pub const ACCOUNTS: u64 = 30;
pub const MODELS: &[&str] = &[
    "gpt-5",
    "gpt-5-codex",
    "gpt-5-mini",
    "claude-sonnet-4",
    "o3",
];
pub const START_MS: i64 = 1_760_000_000_000;

/// `n` records with ids `{prefix}-{i}`, one every 10 ms or so from [`START_MS`].
pub fn generate(prefix: &str, n: usize, seed: u64) -> Vec<RequestLog> {
    let mut rng = Rng::new(seed);
    let mut ts = START_MS;
    (0..n)
        .map(|i| {
            ts += rng.below(20) as i64;
            let (status, error_class) = match rng.below(20) {
                0 => (429, Some(ErrorClass::RateLimited)),
                1 => (502, Some(ErrorClass::Upstream5xx)),
                2 => (400, Some(ErrorClass::ClientError)),
                3 => (503, Some(ErrorClass::NoAccount)),
                _ => (200, None),
            };
            let account = (rng.below(ACCOUNTS + 1) < ACCOUNTS)
                .then(|| format!("acc_{:02}", rng.below(ACCOUNTS)));
            let key = (rng.below(50) != 0).then(|| format!("key_{:02}", rng.below(KEYS)));
            let model = (rng.below(40) != 0)
                .then(|| MODELS[rng.below(MODELS.len() as u64) as usize].to_string());
            // Claude names come in over Messages and are served as a Codex model.
            let claude = model.as_deref().is_some_and(|m| m.starts_with("claude"));
            let (protocol, translation, upstream_model) = if claude {
                (
                    "anthropic_messages",
                    Translation::MessagesToResponses,
                    Some("gpt-5".to_string()),
                )
            } else if rng.below(10) == 0 {
                ("openai_chat", Translation::ChatToResponses, None)
            } else {
                ("openai_responses", Translation::None, None)
            };
            let attempts = match &account {
                Some(a) if rng.below(5) == 0 => vec![
                    Attempt {
                        account_id: "acc_backup".into(),
                        status: 429,
                        error_class: Some(ErrorClass::RateLimited),
                        duration_ms: 12,
                    },
                    Attempt {
                        account_id: a.clone(),
                        status,
                        error_class,
                        duration_ms: 80,
                    },
                ],
                Some(a) => vec![Attempt {
                    account_id: a.clone(),
                    status,
                    error_class,
                    duration_ms: 75,
                }],
                None => vec![],
            };
            RequestLog {
                id: format!("{prefix}-{i:07}"),
                ts_ms: ts,
                key_id: key,
                account_id: account,
                attempts,
                method: "POST".into(),
                path: "/v1/responses".into(),
                model,
                protocol: protocol.into(),
                status,
                error_class,
                input_tokens: rng.below(5000),
                cached_input_tokens: rng.below(2000),
                output_tokens: rng.below(3000),
                reasoning_tokens: rng.below(1000),
                ttfb_ms: (status == 200).then(|| rng.below(900) as u32),
                duration_ms: rng.below(20_000) as u32,
                node: format!("gw-{}", rng.below(3)),
                translation,
                upstream_model,
            }
        })
        .collect()
}
