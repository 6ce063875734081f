/// Validation and parsing failures of domain input. Each variant names what was wrong so the
/// edges (gRPC, HTTP, CRD status) can pass a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("malformed token: {0}")]
    Jwt(String),
    #[error("{0}")]
    AuthJson(String),
    #[error("invalid page token")]
    PageToken,
}

impl Error {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
