//! The service's RSA key pair for grants (`MANA_AI_PRIVATE_KEY_PEM`).
//!
//! Rules:
//! - The private key is read from PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`),
//!   the form WebCrypto's `exportKey('pkcs8')` and `openssl genpkey` produce.
//! - Load errors say what is wrong (not PEM, PKCS#1 instead of PKCS#8,
//!   encrypted, not RSA, too small, corrupt) and never echo key material, so
//!   they can go into a start-up error message as they are.
//! - `Debug` shows the modulus size only. Neither key type is `Clone`: share a
//!   loaded key by reference or `Arc`, so there is one copy to zero on drop
//!   (`rsa::RsaPrivateKey` zeroes itself).
//! - Keys below 2048 bits are refused: the contract fixes 2048-bit grants and a
//!   smaller key can only be a mistake.

use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_KEY_BITS: usize = 2048;

/// Why a key could not be loaded. Carries no key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no PEM block found (expected -----BEGIN {expected}-----)")]
    NotPem { expected: &'static str },
    #[error(
        "PEM block is PKCS#1 ({found}); convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt`"
    )]
    Pkcs1 { found: &'static str },
    #[error("PEM block is an encrypted private key; provide it unencrypted (PKCS#8 PRIVATE KEY)")]
    Encrypted,
    #[error("PEM block has label {found:?}, expected {expected:?}")]
    WrongLabel {
        found: String,
        expected: &'static str,
    },
    #[error("key is not an RSA key")]
    NotRsa,
    #[error("RSA key has {bits} bits; at least {MIN_KEY_BITS} are required")]
    TooSmall { bits: usize },
    #[error("PEM block does not hold a valid {expected} (corrupt base64 or DER)")]
    Malformed { expected: &'static str },
}

/// RSA-OAEP encryption of an MDK failed (only a failing system RNG can cause it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("RSA-OAEP wrap of the mission data key failed")]
pub struct WrapError;

/// The service's private key: unwraps grants.
pub struct GrantKey {
    key: RsaPrivateKey,
}

/// The service's public key: what the issuer (or `mana-ai grant`) wraps MDKs for.
pub struct GrantPublicKey {
    key: RsaPublicKey,
}

impl GrantKey {
    /// Loads a PKCS#8 PEM private key. Escaped newlines (`\n` as two
    /// characters, common when a PEM is pasted into an environment variable)
    /// are accepted.
    pub fn from_pkcs8_pem(pem: &str) -> Result<GrantKey, KeyError> {
        const EXPECTED: &str = "PRIVATE KEY";
        let pem = normalize_pem(pem);
        match pem_label(&pem) {
            None => return Err(KeyError::NotPem { expected: EXPECTED }),
            Some("PRIVATE KEY") => {}
            Some("RSA PRIVATE KEY") => {
                return Err(KeyError::Pkcs1 {
                    found: "RSA PRIVATE KEY",
                })
            }
            Some("ENCRYPTED PRIVATE KEY") => return Err(KeyError::Encrypted),
            Some(other) => return Err(wrong_label(other, EXPECTED)),
        }
        let key = RsaPrivateKey::from_pkcs8_pem(&pem).map_err(|err| match err {
            // The algorithm OID is checked while decoding: a non-RSA PKCS#8 key
            // (EC, Ed25519) surfaces as a public-key/OID error.
            rsa::pkcs8::Error::PublicKey(rsa::pkcs8::spki::Error::OidUnknown { .. }) => {
                KeyError::NotRsa
            }
            _ => KeyError::Malformed {
                expected: "PKCS#8 RSA private key",
            },
        })?;
        check_size(key.size())?;
        Ok(GrantKey { key })
    }

    /// The matching public key.
    pub fn public_key(&self) -> GrantPublicKey {
        GrantPublicKey {
            key: self.key.to_public_key(),
        }
    }

    /// RSA-OAEP (SHA-256 for OAEP and MGF1, empty label) decryption.
    /// Returns `None` on any failure: callers only need "rejected", and the
    /// reason must not be observable (padding oracles).
    pub(crate) fn unwrap_oaep(&self, wrapped: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        // Blinding narrows the timing side channel of rsa 0.9's private-key
        // operation (RUSTSEC-2023-0071); OsRng is the crate's own rand_core.
        self.key
            .decrypt_blinded(&mut rsa::rand_core::OsRng, Oaep::new::<Sha256>(), wrapped)
            .ok()
            .map(Zeroizing::new)
    }
}

impl GrantPublicKey {
    /// Loads an SPKI PEM public key (`-----BEGIN PUBLIC KEY-----`, WebCrypto's
    /// `exportKey('spki')`, `openssl pkey -pubout`).
    pub fn from_public_pem(pem: &str) -> Result<GrantPublicKey, KeyError> {
        const EXPECTED: &str = "PUBLIC KEY";
        let pem = normalize_pem(pem);
        match pem_label(&pem) {
            None => return Err(KeyError::NotPem { expected: EXPECTED }),
            Some("PUBLIC KEY") => {}
            Some("RSA PUBLIC KEY") => {
                return Err(KeyError::Pkcs1 {
                    found: "RSA PUBLIC KEY",
                })
            }
            Some(other) => return Err(wrong_label(other, EXPECTED)),
        }
        let key = RsaPublicKey::from_public_key_pem(&pem).map_err(|err| match err {
            rsa::pkcs8::spki::Error::OidUnknown { .. } => KeyError::NotRsa,
            _ => KeyError::Malformed {
                expected: "SPKI RSA public key",
            },
        })?;
        check_size(key.size())?;
        Ok(GrantPublicKey { key })
    }

    /// RSA-OAEP (SHA-256 for OAEP and MGF1, empty label) encryption.
    pub(crate) fn wrap_oaep(&self, plain: &[u8]) -> Result<Vec<u8>, WrapError> {
        self.key
            .encrypt(&mut rsa::rand_core::OsRng, Oaep::new::<Sha256>(), plain)
            .map_err(|_| WrapError)
    }
}

impl std::fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantKey")
            .field("bits", &(self.key.size() * 8))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for GrantPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantPublicKey")
            .field("bits", &(self.key.size() * 8))
            .finish_non_exhaustive()
    }
}

fn check_size(size_bytes: usize) -> Result<(), KeyError> {
    let bits = size_bytes * 8;
    if bits < MIN_KEY_BITS {
        return Err(KeyError::TooSmall { bits });
    }
    Ok(())
}

/// Turns literal `\n` escapes into newlines when the text has no real ones.
/// The copy is zeroed on drop because it holds the key.
fn normalize_pem(pem: &str) -> Zeroizing<String> {
    let trimmed = pem.trim();
    if !trimmed.contains('\n') && trimmed.contains("\\n") {
        Zeroizing::new(trimmed.replace("\\n", "\n"))
    } else {
        Zeroizing::new(trimmed.to_owned())
    }
}

/// The label of the first `-----BEGIN <label>-----` line, if any.
fn pem_label(pem: &str) -> Option<&str> {
    let rest = &pem[pem.find("-----BEGIN ")? + "-----BEGIN ".len()..];
    let end = rest.find("-----")?;
    Some(&rest[..end])
}

/// A label is echoed only when it looks like one (short, upper-case ASCII), so
/// a mangled PEM cannot leak base64 body text through the error.
fn wrong_label(found: &str, expected: &'static str) -> KeyError {
    let looks_like_label = found.len() <= 40
        && found
            .chars()
            .all(|c| c.is_ascii_uppercase() || c == ' ' || c.is_ascii_digit());
    KeyError::WrongLabel {
        found: if looks_like_label {
            found.to_owned()
        } else {
            "<unrecognised>".to_owned()
        },
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_pem_block() {
        assert_eq!(
            GrantKey::from_pkcs8_pem("MIIEvQIBADANBgkqhkiG9w0BAQEFAASC").unwrap_err(),
            KeyError::NotPem {
                expected: "PRIVATE KEY"
            }
        );
        assert!(matches!(
            GrantKey::from_pkcs8_pem("").unwrap_err(),
            KeyError::NotPem { .. }
        ));
    }

    #[test]
    fn pkcs1_and_encrypted_are_named() {
        let pkcs1 =
            "-----BEGIN RSA PRIVATE KEY-----\nMIIEsecretbody\n-----END RSA PRIVATE KEY-----";
        let err = GrantKey::from_pkcs8_pem(pkcs1).unwrap_err();
        assert!(matches!(err, KeyError::Pkcs1 { .. }));
        assert!(err.to_string().contains("PKCS#8"));
        assert!(!err.to_string().contains("secretbody"));

        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIE\n-----END ENCRYPTED PRIVATE KEY-----";
        assert_eq!(
            GrantKey::from_pkcs8_pem(encrypted).unwrap_err(),
            KeyError::Encrypted
        );
    }

    #[test]
    fn corrupt_body_does_not_echo_it() {
        let body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDYIy1vf5qGqCuK";
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n");
        let err = GrantKey::from_pkcs8_pem(&pem).unwrap_err();
        assert!(matches!(err, KeyError::Malformed { .. }));
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(body) && !shown.contains("MIIE"));
    }

    #[test]
    fn odd_label_is_not_echoed() {
        let pem = "-----BEGIN MIIEvQIBADANBgkqhkiG9w0B-----\nxx\n-----END X-----";
        let err = GrantKey::from_pkcs8_pem(pem).unwrap_err();
        assert!(!err.to_string().contains("MIIE"));
        let err = GrantKey::from_pkcs8_pem("-----BEGIN CERTIFICATE-----\nxx\n").unwrap_err();
        assert!(err.to_string().contains("CERTIFICATE"));
    }

    #[test]
    fn public_key_errors() {
        assert!(matches!(
            GrantPublicKey::from_public_pem("nope").unwrap_err(),
            KeyError::NotPem { .. }
        ));
        assert!(matches!(
            GrantPublicKey::from_public_pem("-----BEGIN RSA PUBLIC KEY-----\nAA==\n").unwrap_err(),
            KeyError::Pkcs1 { .. }
        ));
        assert!(matches!(
            GrantPublicKey::from_public_pem(
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"
            )
            .unwrap_err(),
            KeyError::Malformed { .. }
        ));
    }

    #[test]
    fn escaped_newlines_are_normalised() {
        assert_eq!(
            &*normalize_pem("  -----BEGIN X-----\\nAB\\n-----END X-----\\n "),
            "-----BEGIN X-----\nAB\n-----END X-----\n"
        );
        // Real newlines win: a literal backslash-n elsewhere is left alone.
        assert_eq!(&*normalize_pem("a\nb\\nc"), "a\nb\\nc");
    }
}
