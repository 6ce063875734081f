//! Request logs (one record per client request) and audit events (one per admin mutation).

use serde::{Deserialize, Serialize};

use crate::UnixMillis;
use crate::account::string_enum;

string_enum!(
    /// Why a request or an attempt failed, coarse enough to filter and alert on.
    ErrorClass, "error_class" {
        RateLimited => "rate_limited",
        QuotaExhausted => "quota_exhausted",
        Auth => "auth",
        Deactivated => "deactivated",
        Upstream5xx => "upstream_5xx",
        Network => "network",
        Timeout => "timeout",
        ClientError => "client_error",
        NoAccount => "no_account",
        Cancelled => "cancelled",
        Internal => "internal",
    }
);

string_enum!(
    /// How the gateway spoke to the upstream that answered: the client's protocol as is, or
    /// translated into the upstream's.
    #[derive(Default)]
    Translation, "translation" {
        #[default]
        None => "none",
        ChatToResponses => "chat_to_responses",
        MessagesToResponses => "messages_to_responses",
    }
);

/// One try against one upstream account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub account_id: String,
    /// HTTP status, or 0 when no response came back.
    pub status: u16,
    pub error_class: Option<ErrorClass>,
    pub duration_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLog {
    /// Unique per request; also the request id returned to the client.
    pub id: String,
    pub ts_ms: UnixMillis,
    pub key_id: Option<String>,
    /// The account that produced the final answer (the last attempt's).
    pub account_id: Option<String>,
    pub attempts: Vec<Attempt>,
    pub method: String,
    pub path: String,
    pub model: Option<String>,
    /// Inbound protocol, e.g. `openai_responses`, `openai_chat`, `anthropic_messages`.
    pub protocol: String,
    /// How the final attempt's upstream was spoken to. Defaulted (as are the fields below)
    /// so records written before it existed still read.
    #[serde(default)]
    pub translation: Translation,
    /// The model the upstream was asked for, when it differs from `model` (a Claude name
    /// served as `gpt-5`, an alias, a key's model override).
    #[serde(default)]
    pub upstream_model: Option<String>,
    pub status: u16,
    pub error_class: Option<ErrorClass>,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
    pub ttfb_ms: Option<u32>,
    pub duration_ms: u32,
    /// The gateway node that served it.
    pub node: String,
}

/// HTTP status class `1xx`..`5xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusClass(u8);

impl StatusClass {
    pub fn new(class: u8) -> Result<Self, crate::Error> {
        if (1..=5).contains(&class) {
            Ok(StatusClass(class))
        } else {
            Err(crate::Error::invalid(
                "status_class",
                "must be 1xx, 2xx, 3xx, 4xx or 5xx",
            ))
        }
    }
    /// Parses `2xx`, `4XX` or a bare digit.
    pub fn parse(s: &str) -> Result<Self, crate::Error> {
        let t = s.trim().to_ascii_lowercase();
        let digit = t.strip_suffix("xx").unwrap_or(&t);
        match digit.parse::<u8>() {
            Ok(d) => StatusClass::new(d),
            Err(_) => Err(crate::Error::invalid(
                "status_class",
                format!("{s:?} is not like 2xx or 5xx"),
            )),
        }
    }
    pub fn digit(self) -> u8 {
        self.0
    }
    /// The half-open status range `[lo, hi)`.
    pub fn range(self) -> (u16, u16) {
        let lo = u16::from(self.0) * 100;
        (lo, lo + 100)
    }
}

/// Filters for request-log queries; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFilter {
    pub key_id: Option<String>,
    pub account_id: Option<String>,
    pub model: Option<String>,
    pub status_class: Option<StatusClass>,
    pub error_class: Option<ErrorClass>,
    /// Inclusive lower bound.
    pub since_ms: Option<UnixMillis>,
    /// Exclusive upper bound.
    pub until_ms: Option<UnixMillis>,
}

impl LogFilter {
    pub fn validate(&self) -> Result<(), crate::Error> {
        if let (Some(s), Some(u)) = (self.since_ms, self.until_ms)
            && s >= u
        {
            return Err(crate::Error::invalid(
                "time range",
                "`since` must be before `until`",
            ));
        }
        Ok(())
    }

    /// Whether a record passes the filter (the reference the stores are tested against).
    pub fn matches(&self, r: &RequestLog) -> bool {
        self.key_id
            .as_ref()
            .is_none_or(|k| r.key_id.as_ref() == Some(k))
            && self
                .account_id
                .as_ref()
                .is_none_or(|a| r.account_id.as_ref() == Some(a))
            && self
                .model
                .as_ref()
                .is_none_or(|m| r.model.as_ref() == Some(m))
            && self.status_class.is_none_or(|c| {
                let (lo, hi) = c.range();
                (lo..hi).contains(&r.status)
            })
            && self.error_class.is_none_or(|e| r.error_class == Some(e))
            && self.since_ms.is_none_or(|s| r.ts_ms >= s)
            && self.until_ms.is_none_or(|u| r.ts_ms < u)
    }
}

/// Totals for one group of request logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryRow {
    /// The model or account id the row groups by; empty for the total.
    pub key: String,
    pub requests: u64,
    /// Requests with a status of 400 or more.
    pub errors: u64,
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub reasoning_tokens: u64,
}

impl SummaryRow {
    pub fn add(&mut self, r: &RequestLog) {
        self.requests += 1;
        self.errors += u64::from(r.status >= 400);
        self.input_tokens += r.input_tokens;
        self.cached_input_tokens += r.cached_input_tokens;
        self.output_tokens += r.output_tokens;
        self.reasoning_tokens += r.reasoning_tokens;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSummary {
    pub total: SummaryRow,
    /// Sorted by key.
    pub by_model: Vec<SummaryRow>,
    /// Sorted by key.
    pub by_account: Vec<SummaryRow>,
}

/// Who did what to which object, and when. `detail` never carries secrets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: i64,
    pub ts_ms: UnixMillis,
    pub actor: String,
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_class_parsing() {
        assert_eq!(StatusClass::parse("5xx").unwrap().range(), (500, 600));
        assert_eq!(StatusClass::parse("2").unwrap().digit(), 2);
        assert!(StatusClass::parse("7xx").is_err());
        assert!(StatusClass::parse("oops").is_err());
    }

    #[test]
    fn translation_names_and_old_records() {
        assert_eq!(Translation::default(), Translation::None);
        for t in Translation::ALL {
            assert_eq!(t.as_str().parse::<Translation>().unwrap(), *t);
        }
        assert_eq!(
            "messages-to-responses".parse::<Translation>().unwrap(),
            Translation::MessagesToResponses
        );
        assert!("smoke_signals".parse::<Translation>().is_err());
        // A record serialised before the fields existed reads with their defaults.
        let old = r#"{"id":"req_1","ts_ms":1,"key_id":null,"account_id":null,"attempts":[],
            "method":"POST","path":"/v1/responses","model":"gpt-5","protocol":"openai_responses",
            "status":200,"error_class":null,"input_tokens":0,"cached_input_tokens":0,
            "output_tokens":0,"reasoning_tokens":0,"ttfb_ms":null,"duration_ms":5,"node":"gw"}"#;
        let r: RequestLog = serde_json::from_str(old).unwrap();
        assert_eq!(r.translation, Translation::None);
        assert_eq!(r.upstream_model, None);
        let new = RequestLog {
            translation: Translation::MessagesToResponses,
            upstream_model: Some("gpt-5".into()),
            model: Some("claude-opus-4-1".into()),
            ..r
        };
        let json = serde_json::to_string(&new).unwrap();
        assert!(
            json.contains(r#""translation":"messages_to_responses""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<RequestLog>(&json).unwrap(), new);
    }

    #[test]
    fn filter_bounds() {
        let f = LogFilter {
            since_ms: Some(5),
            until_ms: Some(5),
            ..Default::default()
        };
        assert!(f.validate().is_err());
    }
}
