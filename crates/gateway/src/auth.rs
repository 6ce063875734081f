//! Platform-key authentication: the key from `Authorization: Bearer`, `x-api-key` or
//! `api-key`, hashed (SHA-256) and looked up in the snapshot. Nothing leaves the process.

use std::sync::Arc;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use poolgate_core::snapshot::{KeyGrant, key_digest};
use poolgate_core::{KeyStatus, UnixMillis};

use crate::state::View;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuthError {
    Missing,
    Unknown,
    Disabled,
    Expired,
}

impl AuthError {
    pub fn status(self) -> u16 {
        match self {
            AuthError::Missing | AuthError::Unknown => 401,
            AuthError::Disabled | AuthError::Expired => 403,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            AuthError::Missing => "missing_api_key",
            AuthError::Unknown => "invalid_api_key",
            AuthError::Disabled => "api_key_disabled",
            AuthError::Expired => "api_key_expired",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            AuthError::Missing => {
                "Missing API key: send your poolgate key as `Authorization: Bearer <key>`, `x-api-key` or `api-key`."
            }
            AuthError::Unknown => "Invalid API key.",
            AuthError::Disabled => "This API key is disabled.",
            AuthError::Expired => "This API key has expired.",
        }
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .find(|v| !v.is_empty())
}

/// The presented key: a `Bearer` credential first, then `x-api-key`, then `api-key`.
pub(crate) fn presented_key(h: &HeaderMap) -> Option<&str> {
    let bearer = header(h, AUTHORIZATION.as_str()).and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim())
            .filter(|k| !k.is_empty())
    });
    bearer
        .or_else(|| header(h, "x-api-key"))
        .or_else(|| header(h, "api-key"))
}

pub(crate) fn authenticate(
    view: &View,
    headers: &HeaderMap,
    now_ms: UnixMillis,
) -> Result<Arc<KeyGrant>, AuthError> {
    let key = presented_key(headers).ok_or(AuthError::Missing)?;
    let found = view
        .snapshot
        .key(&key_digest(key))
        .ok_or(AuthError::Unknown)?;
    if found.status != KeyStatus::Active {
        return Err(AuthError::Disabled);
    }
    if !found.usable_at(now_ms) {
        return Err(AuthError::Expired);
    }
    Ok(found.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn key_sources_in_order() {
        assert_eq!(
            presented_key(&headers(&[
                ("authorization", "Bearer pgk_a"),
                ("x-api-key", "pgk_b")
            ])),
            Some("pgk_a")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "bearer  pgk_a ")])),
            Some("pgk_a")
        );
        assert_eq!(
            presented_key(&headers(&[
                ("authorization", "Basic abc"),
                ("x-api-key", "pgk_b")
            ])),
            Some("pgk_b")
        );
        assert_eq!(
            presented_key(&headers(&[("x-api-key", ""), ("api-key", "pgk_c")])),
            Some("pgk_c")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer ")])),
            None
        );
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }
}
