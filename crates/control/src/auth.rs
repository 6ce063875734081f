//! Authentication: `authorization: Bearer <token>` on every call.
//!
//! Two kinds of caller, two kinds of token, never interchangeable:
//! - operators on the admin API: the bootstrap admin token (from a file) or admin tokens
//!   looked up by hash in the store;
//! - gateways on the snapshot and report services: the node token (from a file).
//!
//! File tokens are kept only as SHA-256 hashes and compared in constant time. Plaintext
//! tokens are never kept.

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
/// Prefix of generated node tokens (what gateways present).
pub const NODE_TOKEN_PREFIX: &str = "pgn_";
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

/// Reads a token file (bounded: a token file is a few dozen bytes) and hashes its token.
fn hash_token_file(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut text = String::new();
    file.take(4096)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read as UTF-8 text: {e}"))?;
    hash_plaintext(&text).map_err(str::to_string)
}

/// The hash of a token given as text (surrounding whitespace ignored).
fn hash_plaintext(token: &str) -> Result<String, &'static str> {
    let t = token.trim();
    if t.is_empty() {
        return Err("the token is empty");
    }
    if t.len() > MAX_TOKEN_LEN || t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the token must be one line of at most 512 characters without spaces");
    }
    Ok(hash_secret(t))
}

impl BootstrapToken {
    /// Reads the token from a file (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self, ControlError> {
        let hash = hash_token_file(path).map_err(|reason| ControlError::AdminTokenFile {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(BootstrapToken { hash })
    }

    pub fn from_plaintext(token: &str) -> Result<Self, &'static str> {
        Ok(BootstrapToken {
            hash: hash_plaintext(token)?,
        })
    }
}

/// The token gateways present on the snapshot and report services, as a hash.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeToken {
    hash: String,
}

impl fmt::Debug for NodeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeToken(***)")
    }
}

impl NodeToken {
    /// Reads the token from a file (surrounding whitespace ignored).
    pub fn from_file(path: &Path) -> Result<Self, ControlError> {
        let hash = hash_token_file(path).map_err(|reason| ControlError::NodeTokenFile {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(NodeToken { hash })
    }

    pub fn from_plaintext(token: &str) -> Result<Self, &'static str> {
        Ok(NodeToken {
            hash: hash_plaintext(token)?,
        })
    }

    /// Whether this is the same secret as the bootstrap admin token (a configuration error:
    /// gateways would hold admin rights).
    pub fn same_as(&self, admin: &BootstrapToken) -> bool {
        hashes_equal(&self.hash, &admin.hash)
    }
}

/// The bearer token of a request; the messages say what to send, never what was sent.
fn bearer<'a>(md: &'a MetadataMap, missing: &'static str) -> Result<&'a str, Status> {
    let Some(value) = md.get("authorization") else {
        return Err(Status::unauthenticated(missing));
    };
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not printable ASCII"))?;
    match value.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => Ok(rest.trim()),
        _ => Err(Status::unauthenticated(
            "the authorization header must be `Bearer <token>`",
        )),
    }
}

/// Checks the node token of a gateway's call. Admin tokens are not node tokens.
pub(crate) fn authenticate_node(
    expected: Option<&NodeToken>,
    md: &MetadataMap,
) -> Result<(), Status> {
    let token = bearer(
        md,
        "missing node token: send the header `authorization: Bearer <node token>` (the \
         gateway's POOLGATE_NODE_TOKEN_FILE)",
    )?;
    let Some(expected) = expected else {
        return Err(Status::unauthenticated(
            "this control plane has no node token configured (POOLGATE_NODE_TOKEN_FILE), so it \
             serves no gateways",
        ));
    };
    if token.is_empty()
        || token.len() > MAX_TOKEN_LEN
        || !hashes_equal(&expected.hash, &hash_secret(token))
    {
        return Err(Status::unauthenticated(
            "unknown node token: gateways must present the control plane's node token \
             (POOLGATE_NODE_TOKEN_FILE); admin tokens are not accepted here",
        ));
    }
    Ok(())
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
    /// Refused on the admin API: it belongs to gateways.
    node: Option<NodeToken>,
    store: Arc<dyn Store>,
}

impl Authenticator {
    pub(crate) fn new(
        bootstrap: Option<BootstrapToken>,
        node: Option<NodeToken>,
        store: Arc<dyn Store>,
    ) -> Self {
        Authenticator {
            bootstrap,
            node,
            store,
        }
    }

    pub(crate) async fn authenticate(&self, md: &MetadataMap) -> Result<Caller, ApiError> {
        let token = bearer(
            md,
            "missing admin token: send the header `authorization: Bearer <token>` \
             (poolctl: --token-file or POOLGATE_TOKEN_FILE; standalone writes one to \
             DATA_DIR/admin.token)",
        )?;
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(unknown_token());
        }
        let hash = hash_secret(token);
        if let Some(n) = &self.node
            && hashes_equal(&n.hash, &hash)
        {
            return Err(Status::unauthenticated(
                "this is the node token, which only gateways use; the admin API takes an admin \
                 token (standalone writes one to DATA_DIR/admin.token)",
            )
            .into());
        }
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

    fn with_bearer(value: &str) -> MetadataMap {
        let mut md = MetadataMap::new();
        md.insert("authorization", value.parse().unwrap());
        md
    }

    #[test]
    fn node_tokens() {
        let node = NodeToken::from_plaintext("pgn_node\n").unwrap();
        assert_eq!(format!("{node:?}"), "NodeToken(***)");
        assert!(authenticate_node(Some(&node), &with_bearer("Bearer pgn_node")).is_ok());
        assert!(authenticate_node(Some(&node), &with_bearer("bearer  pgn_node ")).is_ok());
        for (md, needle) in [
            (MetadataMap::new(), "missing node token"),
            (with_bearer("Bearer pgn_other"), "unknown node token"),
            (with_bearer("Basic pgn_node"), "Bearer"),
            (with_bearer("Bearer "), "unknown node token"),
        ] {
            let e = authenticate_node(Some(&node), &md).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
            assert!(e.message().contains(needle), "{}", e.message());
            assert!(!e.message().contains("pgn_"), "{}", e.message());
        }
        let e = authenticate_node(None, &with_bearer("Bearer pgn_node")).unwrap_err();
        assert!(e.message().contains("no node token configured"));
        let admin = BootstrapToken::from_plaintext("pgn_node").unwrap();
        assert!(node.same_as(&admin));
        assert!(!node.same_as(&BootstrapToken::from_plaintext("pga_x").unwrap()));
    }
}
