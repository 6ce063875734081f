/// Why an attempt produced no upstream answer. Messages never carry credentials: URLs are
/// stripped from transport errors (a proxy URL may hold a password) and credentials are only
/// ever named by account id.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("account {account} has no usable credentials")]
    MissingCredentials { account: String },
    #[error("{provider} accounts cannot serve {endpoint}")]
    Unsupported {
        provider: &'static str,
        endpoint: &'static str,
    },
    #[error("invalid upstream configuration: {0}")]
    Config(String),
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream timed out: {0}")]
    Timeout(String),
    #[error("the upstream request failed: {0}")]
    Request(String),
    #[error("the upstream response body failed: {0}")]
    Body(String),
    #[error("the upstream response is larger than {limit} bytes")]
    TooLarge { limit: usize },
}

impl UpstreamError {
    /// A transport failure (the account may be fine; the network or the host is not).
    pub fn is_network(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect(_)
                | UpstreamError::Timeout(_)
                | UpstreamError::Request(_)
                | UpstreamError::Body(_)
        )
    }

    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        let e = e.without_url();
        let msg = chain(&e);
        if e.is_connect() {
            UpstreamError::Connect(msg)
        } else if e.is_timeout() {
            UpstreamError::Timeout(msg)
        } else if e.is_builder() {
            UpstreamError::Config(msg)
        } else {
            UpstreamError::Request(msg)
        }
    }

    pub(crate) fn from_reqwest_body(e: reqwest::Error) -> Self {
        let e = e.without_url();
        if e.is_timeout() {
            UpstreamError::Timeout(chain(&e))
        } else {
            UpstreamError::Body(chain(&e))
        }
    }
}

/// An error and its sources on one line (reqwest's own message is often just "error
/// sending request").
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    let mut depth = 0;
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
        depth += 1;
        if depth > 8 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn network_classes() {
        assert!(UpstreamError::Connect("x".into()).is_network());
        assert!(UpstreamError::Body("x".into()).is_network());
        assert!(!UpstreamError::Config("x".into()).is_network());
        assert!(!UpstreamError::TooLarge { limit: 1 }.is_network());
        let _ = UpstreamError::Timeout(String::new()).source();
    }
}
