//! Opaque page tokens. A token is base64url of a small JSON array naming the listing it
//! belongs to and the sort key of the last item returned, so a token from one listing is
//! rejected by another instead of silently returning the wrong page.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::Error;

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// A cursor position: the last item's sort key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// Listings ordered by id.
    Id(String),
    /// Listings ordered by time then id, newest first.
    TimeId(i64, String),
}

pub fn encode(listing: &str, cursor: &Cursor) -> String {
    let v = match cursor {
        Cursor::Id(id) => serde_json::json!([listing, id]),
        Cursor::TimeId(t, id) => serde_json::json!([listing, t, id]),
    };
    URL_SAFE_NO_PAD.encode(v.to_string())
}

pub fn decode(listing: &str, token: &str) -> Result<Cursor, Error> {
    if token.len() > 1024 {
        return Err(Error::PageToken);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| Error::PageToken)?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| Error::PageToken)?;
    let arr = v.as_array().ok_or(Error::PageToken)?;
    if arr.first().and_then(Value::as_str) != Some(listing) {
        return Err(Error::PageToken);
    }
    match arr.as_slice() {
        [_, Value::String(id)] => Ok(Cursor::Id(id.clone())),
        [_, Value::Number(t), Value::String(id)] => Ok(Cursor::TimeId(
            t.as_i64().ok_or(Error::PageToken)?,
            id.clone(),
        )),
        _ => Err(Error::PageToken),
    }
}

/// Clamps a requested page size: 0 means the default.
pub fn page_size(requested: u32) -> Result<u32, Error> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n <= MAX_PAGE_SIZE => Ok(n),
        _ => Err(Error::invalid(
            "page_size",
            format!("at most {MAX_PAGE_SIZE}"),
        )),
    }
}

/// A page request: size and optional cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub size: u32,
    pub after: Option<Cursor>,
}

impl PageRequest {
    pub fn first(size: u32) -> Self {
        PageRequest { size, after: None }
    }
    pub fn parse(listing: &str, size: u32, token: &str) -> Result<Self, Error> {
        let size = page_size(size)?;
        let after = if token.is_empty() {
            None
        } else {
            Some(decode(listing, token)?)
        };
        Ok(PageRequest { size, after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejection() {
        let t = encode("accounts", &Cursor::Id("acc_1".into()));
        assert_eq!(decode("accounts", &t).unwrap(), Cursor::Id("acc_1".into()));
        assert_eq!(decode("keys", &t), Err(Error::PageToken));
        let t = encode("logs", &Cursor::TimeId(5, "r".into()));
        assert_eq!(decode("logs", &t).unwrap(), Cursor::TimeId(5, "r".into()));
        assert!(decode("logs", "!!").is_err());
        assert!(decode("logs", "e30").is_err());
        assert_eq!(page_size(0).unwrap(), DEFAULT_PAGE_SIZE);
        assert!(page_size(5000).is_err());
    }
}
