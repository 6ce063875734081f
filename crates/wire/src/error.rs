/// Everything that can go wrong while decoding or translating a wire format. Messages never
/// carry request bodies or credentials, only what was wrong with their shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// An SSE event (or a single line of one) grew beyond the decoder's bound; it was dropped.
    #[error("server-sent event larger than {limit} bytes")]
    EventTooLarge { limit: usize },
    /// A body that had to be JSON was not.
    #[error("invalid JSON body: {0}")]
    Json(String),
    /// A request that cannot be translated or normalised, in terms a client can act on.
    #[error("{0}")]
    InvalidRequest(String),
}

impl WireError {
    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        WireError::InvalidRequest(reason.into())
    }
}

impl From<serde_json::Error> for WireError {
    fn from(e: serde_json::Error) -> Self {
        WireError::Json(e.to_string())
    }
}
