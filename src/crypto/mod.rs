//! Key-grants: RSA-OAEP unwrap, HKDF derivation, `enc:1:` values (contract section 7).
//!
//! Pure code: no I/O, no clock (callers pass `now`), no logging.
//!
//! Rules every item here keeps:
//! - Secrets (the RSA private key, the mission data key, decrypted plaintext)
//!   never reach `Debug`, `Display`, an error value or a log line. Error types
//!   carry only a kind and, at most, a length; tests check that their text does
//!   not contain the input.
//! - Every failure is a typed value with a stable label (`GrantSkip::as_str`
//!   for `grant_skips_total{reason}`, `ValueError::audit_reason` for
//!   `decrypt_audit.reason`), never a panic: grants and ciphertext come from
//!   user-writable records.
//! - Byte-for-byte compatibility with the browser and the issuer (WebCrypto) is
//!   proven by `tests/crypto_vectors.rs` against vectors WebCrypto produced.

pub mod grant;
pub mod hkdf;
pub mod keys;
pub mod mdk;
pub mod value;

pub use grant::{mint_grant, unwrap_grant, GrantDerivation, GrantSkip, MissionGrant};
pub use hkdf::{derive_mdk, grant_info, js_sort};
pub use keys::{GrantKey, GrantPublicKey, KeyError, WrapError};
pub use mdk::Mdk;
pub use value::{
    decrypt_record_fields, decrypt_value, encrypt_value, is_encrypted, ValueError, ENC_PREFIX,
};
