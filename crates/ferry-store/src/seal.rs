//! Secrets at rest. Environment values whose names mark them as secret
//! (`ferry_core::redact::is_secret_name`: `SECRET`, `TOKEN`, `PASSWORD`,
//! `KEY`), in a revision's `env` and in its `--set` overrides, are stored
//! sealed with XChaCha20-Poly1305 under a 256-bit key that is not in the
//! database: a copy of `ferry.db` (or its WAL) without the key reveals no
//! secret. Each sealed value is bound to its place (service, revision,
//! table, name) as associated data, so it cannot be moved to another
//! variable or revision and still open.
//!
//! A sealed value is `ferry-sealed:v1:<hex of nonce (24 bytes) and
//! ciphertext>`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ferry_core::redact::is_secret_name;
use ferry_core::revision::Revision;
use std::collections::BTreeMap;

const PREFIX: &str = "ferry-sealed:v1:";
const NONCE_LEN: usize = 24;

/// A 256-bit key. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey([u8; 32]);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(
        "a secret key is 64 hexadecimal characters (32 bytes), e.g. the output of `openssl rand -hex 32`"
    )]
    BadKey,
    #[error("cannot read random bytes from /dev/urandom: {0}")]
    Random(std::io::Error),
    #[error(
        "cannot open the sealed value of {what}: this is not the key it was sealed with, or the value was altered"
    )]
    Open { what: String },
}

impl SecretKey {
    /// A new random key.
    pub fn generate() -> Result<SecretKey, SealError> {
        let mut k = [0u8; 32];
        random(&mut k)?;
        Ok(SecretKey(k))
    }

    /// Parse 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<SecretKey, SealError> {
        let bytes = from_hex(text.trim()).ok_or(SealError::BadKey)?;
        let k: [u8; 32] = bytes.try_into().map_err(|_| SealError::BadKey)?;
        Ok(SecretKey(k))
    }

    pub fn to_hex(&self) -> String {
        to_hex(&self.0)
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&self.0).into())
    }

    /// Seal `plain`, bound to `place`.
    pub fn seal(&self, place: &str, plain: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        random(&mut nonce)?;
        let sealed = self
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: place.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encrypts any message that fits in memory");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(format!("{PREFIX}{}", to_hex(&bytes)))
    }

    /// Open a value sealed for `place`; a value that is not sealed is
    /// returned as it is (stores written before sealing existed).
    pub fn open(&self, place: &str, value: &str) -> Result<String, SealError> {
        let Some(hex) = value.strip_prefix(PREFIX) else {
            return Ok(value.to_string());
        };
        let fail = || SealError::Open {
            what: place.to_string(),
        };
        let bytes = from_hex(hex).ok_or_else(fail)?;
        if bytes.len() < NONCE_LEN {
            return Err(fail());
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let plain = self
            .cipher()
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: place.as_bytes(),
                },
            )
            .map_err(|_| fail())?;
        String::from_utf8(plain).map_err(|_| fail())
    }
}

/// Is `value` sealed?
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(PREFIX)
}

/// The secret variables of a revision, as (table, map) pairs.
fn secret_tables(rev: &mut Revision) -> [(&'static str, &mut BTreeMap<String, String>); 2] {
    [
        ("env", &mut rev.spec.env),
        ("overrides", &mut rev.overrides),
    ]
}

fn place(service: &str, number: u64, table: &str, name: &str) -> String {
    format!("{service}/{number}/{table}/{name}")
}

/// A copy of `rev` with every secret value sealed (values already sealed
/// stay as they are).
pub fn seal_revision(key: &SecretKey, rev: &Revision) -> Result<Revision, SealError> {
    let mut out = rev.clone();
    let (service, number) = (rev.service.clone(), rev.number);
    for (table, vars) in secret_tables(&mut out) {
        for (name, value) in vars.iter_mut() {
            if is_secret_name(name) && !is_sealed(value) {
                *value = key.seal(&place(&service, number, table, name), value)?;
            }
        }
    }
    Ok(out)
}

/// Open every sealed value of a stored revision in place.
pub fn open_revision(key: &SecretKey, rev: &mut Revision) -> Result<(), SealError> {
    let (service, number) = (rev.service.clone(), rev.number);
    for (table, vars) in secret_tables(rev) {
        for (name, value) in vars.iter_mut() {
            if is_sealed(value) {
                *value = key.open(&place(&service, number, table, name), value)?;
            }
        }
    }
    Ok(())
}

fn random(buf: &mut [u8]) -> Result<(), SealError> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(SealError::Random)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_in_their_place() {
        let key = SecretKey::generate().unwrap();
        let sealed = key.seal("web/1/env/DB_PASSWORD", "hunter2").unwrap();
        assert!(is_sealed(&sealed) && !sealed.contains("hunter2"));
        assert_eq!(
            key.open("web/1/env/DB_PASSWORD", &sealed).unwrap(),
            "hunter2"
        );
        // Moved to another variable or revision: refused.
        assert!(key.open("web/2/env/DB_PASSWORD", &sealed).is_err());
        assert!(key.open("web/1/env/OTHER_KEY", &sealed).is_err());
        // Another key: refused.
        let other = SecretKey::generate().unwrap();
        assert!(other.open("web/1/env/DB_PASSWORD", &sealed).is_err());
        // Tampered: refused.
        let mut bad = sealed.clone();
        bad.pop();
        bad.push(if sealed.ends_with('0') { '1' } else { '0' });
        assert!(key.open("web/1/env/DB_PASSWORD", &bad).is_err());
        // The same value sealed twice differs (random nonces).
        assert_ne!(
            sealed,
            key.seal("web/1/env/DB_PASSWORD", "hunter2").unwrap()
        );
        // Plain values pass through.
        assert_eq!(key.open("x", "plain").unwrap(), "plain");
    }

    #[test]
    fn keys_round_trip_as_hex_and_bad_ones_are_refused() {
        let key = SecretKey::generate().unwrap();
        assert_eq!(SecretKey::from_hex(&key.to_hex()).unwrap(), key);
        for bad in [
            "",
            "abc",
            &"zz".repeat(32),
            &"00".repeat(31),
            &"00".repeat(33),
        ] {
            assert!(SecretKey::from_hex(bad).is_err(), "{bad}");
        }
        assert_eq!(format!("{key:?}"), "SecretKey(..)");
    }
}
