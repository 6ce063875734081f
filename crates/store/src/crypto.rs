//! AES-256-GCM encryption of upstream credentials at rest.
//!
//! A sealed value is `version(1) || nonce(12) || ciphertext+tag`, with the owning row's id as
//! associated data, so a ciphertext copied onto another row fails to decrypt.

use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

use crate::StoreError;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

#[derive(Clone)]
pub struct Cipher {
    aead: Aes256Gcm,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cipher(***)")
    }
}

impl Cipher {
    pub fn new(key: &[u8; 32]) -> Self {
        Cipher {
            aead: Aes256Gcm::new(key.into()),
        }
    }

    /// Reads a key file: 64 hex characters (surrounding whitespace ignored) or 32 raw bytes.
    pub fn from_key_file(path: &Path) -> Result<Self, StoreError> {
        let bytes = std::fs::read(path).map_err(|e| {
            StoreError::Crypto(format!(
                "cannot read encryption key file {}: {e}",
                path.display()
            ))
        })?;
        Self::from_key_material(&bytes)
            .map_err(|e| StoreError::Crypto(format!("encryption key file {}: {e}", path.display())))
    }

    fn from_key_material(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).ok().map(str::trim);
        let key: Vec<u8> = match text {
            Some(t) if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) => {
                hex::decode(t).map_err(|e| e.to_string())?
            }
            _ if bytes.len() == 32 => bytes.to_vec(),
            _ => return Err("expected 64 hex characters (32 bytes)".into()),
        };
        let arr: [u8; 32] = key
            .try_into()
            .map_err(|_| "expected 32 bytes".to_string())?;
        Ok(Cipher::new(&arr))
    }

    /// Loads the key file, creating it (mode 0600, 32 random bytes as hex) when it does not
    /// exist. Used by standalone, which owns its data directory.
    pub fn load_or_create(path: &Path) -> Result<Self, StoreError> {
        if !path.exists() {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key)
                .map_err(|e| StoreError::Crypto(format!("no randomness: {e}")))?;
            write_private_file(path, hex::encode(key).as_bytes()).map_err(|e| {
                StoreError::Crypto(format!("cannot create {}: {e}", path.display()))
            })?;
        }
        Self::from_key_file(path)
    }

    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce)
            .map_err(|e| StoreError::Crypto(format!("no randomness: {e}")))?;
        let ct = self
            .aead
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Crypto("encryption failed".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, aad: &str, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != VERSION {
            return Err(StoreError::Crypto("unknown ciphertext format".into()));
        }
        let (nonce, ct) = sealed[1..].split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce)
            .map_err(|_| StoreError::Crypto("unknown ciphertext format".into()))?;
        self.aead
            .decrypt(
                &nonce,
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| {
                StoreError::Crypto(
                    "authentication failed (wrong encryption key or tampered row)".into(),
                )
            })
    }
}

/// Writes a file readable only by its owner, failing if it already exists.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let c = Cipher::new(&[1u8; 32]);
        let s = c.seal("acc_1", b"secret").unwrap();
        assert!(!s.windows(6).any(|w| w == b"secret"));
        assert_eq!(c.open("acc_1", &s).unwrap(), b"secret");
        assert!(c.open("acc_2", &s).is_err());
        assert!(Cipher::new(&[2u8; 32]).open("acc_1", &s).is_err());
        assert!(c.open("acc_1", &s[..5]).is_err());
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        let a = Cipher::load_or_create(&p).unwrap();
        let b = Cipher::load_or_create(&p).unwrap();
        let s = a.seal("x", b"y").unwrap();
        assert_eq!(b.open("x", &s).unwrap(), b"y");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        std::fs::write(dir.path().join("bad"), "short").unwrap();
        assert!(Cipher::from_key_file(&dir.path().join("bad")).is_err());
    }
}
