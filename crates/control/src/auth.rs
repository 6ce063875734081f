//! Admin authentication: `authorization: Bearer <token>` on every admin call.
//!
//! The bootstrap token (from a file) is kept only as its SHA-256 hash and compared in constant
//! time; other tokens are looked up by hash in the store. Plaintext tokens are never kept.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use poolgate_core::AdminRole;
use poolgate_core::key::{format_secret, hash_secret, hashes_equal};
use poolgate_store::Store;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::error::{ApiError, ControlError};

/// The audit actor of calls made with the bootstrap token.
pub const BOOTSTRAP_ACTOR: &str = "bootstrap-admin";
/// Longer tokens cannot be ours; refusing them early keeps hashing bounded.
const MAX_TOKEN_LEN: usize = 512;

/// The bootstrap admin token, as a hash.
#[derive(Clone)]
pub struct BootstrapToken {
    hash: String,
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BootstrapToken(***)")
    }
}

impl BootstrapToken {
    /// Reads the token from a file (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self, ControlError> {
        let err = |reason: String| ControlError::AdminTokenFile {
            path: path.to_path_buf(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
        let mut text = String::new();
        // Bounded read: a token file is a few dozen bytes.
        file.take(4096)
            .read_to_string(&mut text)
            .map_err(|e| err(format!("cannot read as UTF-8 text: {e}")))?;
        Self::from_plaintext(&text).map_err(|reason| err(reason.to_string()))
    }

    pub fn from_plaintext(token: &str) -> Result<Self, &'static str> {
        let t = token.trim();
        if t.is_empty() {
            return Err("the token is empty");
        }
        if t.len() > MAX_TOKEN_LEN || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the token must be one line of at most 512 characters without spaces");
        }
        Ok(BootstrapToken {
            hash: hash_secret(t),
        })
    }
}

/// A new secret: `prefix` followed by 256 random bits.
pub fn generate_secret(prefix: &str) -> Result<String, ControlError> {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| ControlError::Random(e.to_string()))?;
    Ok(format_secret(prefix, &random))
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: AdminRole,
}

#[derive(Clone)]
pub(crate) struct Authenticator {
    bootstrap: Option<BootstrapToken>,
    store: Arc<dyn Store>,
}

impl Authenticator {
    pub(crate) fn new(bootstrap: Option<BootstrapToken>, store: Arc<dyn Store>) -> Self {
        Authenticator { bootstrap, store }
    }

    pub(crate) async fn authenticate(&self, md: &MetadataMap) -> Result<Caller, ApiError> {
        let Some(value) = md.get("authorization") else {
            return Err(Status::unauthenticated(
                "missing admin token: send the header `authorization: Bearer <token>` \
                 (poolctl: --token-file or POOLGATE_TOKEN_FILE; standalone writes one to \
                 DATA_DIR/admin.token)",
            )
            .into());
        };
        let value = value.to_str().map_err(|_| {
            Status::unauthenticated("the authorization header is not printable ASCII")
        })?;
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => {
                return Err(Status::unauthenticated(
                    "the authorization header must be `Bearer <token>`",
                )
                .into());
            }
        };
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(unknown_token());
        }
        let hash = hash_secret(token);
        if let Some(b) = &self.bootstrap
            && hashes_equal(&b.hash, &hash)
        {
            return Ok(Caller {
                name: BOOTSTRAP_ACTOR.to_string(),
                role: AdminRole::Admin,
            });
        }
        match self.store.find_admin_token(&hash).await? {
            Some(t) if hashes_equal(&t.hash, &hash) => Ok(Caller {
                name: t.name,
                role: t.role,
            }),
            _ => Err(unknown_token()),
        }
    }
}

fn unknown_token() -> ApiError {
    Status::unauthenticated("unknown admin token (check the token, or whether it was deleted)")
        .into()
}

impl Caller {
    /// Viewers may only read.
    pub(crate) fn authorize(&self, method: &str, mutating: bool) -> Result<(), ApiError> {
        if mutating && self.role != AdminRole::Admin {
            return Err(Status::permission_denied(format!(
                "{method} changes state and needs role admin; token {:?} has role {}",
                self.name, self.role
            ))
            .into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_token_rules() {
        assert!(BootstrapToken::from_plaintext("  \n").is_err());
        assert!(BootstrapToken::from_plaintext("a b").is_err());
        let t = BootstrapToken::from_plaintext(" pga_x\n").unwrap();
        assert_eq!(t.hash, hash_secret("pga_x"));
        assert_eq!(format!("{t:?}"), "BootstrapToken(***)");
        let s = generate_secret("pga_").unwrap();
        assert!(s.starts_with("pga_") && s.len() == 47);
        assert_ne!(s, generate_secret("pga_").unwrap());
    }

    #[test]
    fn viewer_cannot_mutate() {
        let v = Caller {
            name: "ro".into(),
            role: AdminRole::Viewer,
        };
        assert!(v.authorize("ListAccounts", false).is_ok());
        let e = v
            .authorize("DeleteAccount", true)
            .unwrap_err()
            .into_status("DeleteAccount");
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(e.message().contains("DeleteAccount") && e.message().contains("viewer"));
    }
}
