//! `enc:1:` field values: the browser's end-to-end encryption of record fields.
//!
//! Rules:
//! - Format `enc:1:<base64 iv>.<base64 ciphertext ‖ 16-byte tag>`, AES-256-GCM,
//!   12-byte IV, no associated data, standard base64 with padding (WebCrypto's
//!   layout). The plaintext is the JSON text of the field's value.
//! - Every failure is a `ValueError` that maps to a `decrypt_audit.reason`.
//!   Errors carry no plaintext, no key bytes and no ciphertext: they end up in
//!   audit rows and logs.
//! - Decrypted bytes are zeroed once parsed; only the resulting JSON value
//!   lives on, for the run.
//! - A record is decrypted all or nothing: a bad field leaves the record as it
//!   was, so a caller that skips it holds no half-decrypted copy.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::mdk::Mdk;

/// Prefix of an encrypted field value, format version 1.
pub const ENC_PREFIX: &str = "enc:1:";
/// AES-GCM IV length the contract fixes.
pub const IV_LEN: usize = 12;
/// AES-GCM tag length, appended to the ciphertext.
pub const TAG_LEN: usize = 16;

/// Why an `enc:1:` value could not be decrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ValueError {
    #[error("value is not an enc:1: ciphertext")]
    NotEncrypted,
    #[error("enc:1: value has no '.' between IV and ciphertext")]
    MissingSeparator,
    #[error("enc:1: value has invalid base64")]
    BadBase64,
    #[error("enc:1: IV is {len} bytes, expected {IV_LEN}")]
    IvLength { len: usize },
    #[error("enc:1: ciphertext is shorter than the {TAG_LEN}-byte tag")]
    TooShort,
    #[error("enc:1: authentication failed (tampered ciphertext or wrong key)")]
    TagMismatch,
    #[error("enc:1: decrypted plaintext is not JSON")]
    NotJson,
}

impl ValueError {
    /// Every value of [`ValueError::audit_reason`] (the
    /// `decrypt_failures_total{reason}` series that exist from the start).
    pub const AUDIT_REASONS: [&'static str; 3] = [
        "ciphertext-malformed",
        "record-not-under-grant-key",
        "decrypt-failed",
    ];

    /// The `decrypt_audit.reason` for this failure.
    ///
    /// An authentication failure is only ever met under a grant that
    /// unwrapped correctly, and AES-GCM cannot tell a changed ciphertext
    /// from a record encrypted under another key. Against today's webapp
    /// it is the second, every time: records are encrypted under the vault
    /// master key, the grant wraps a key derived from it (docs/interfaces.md,
    /// section 7). Hence the reason names the key, not tampering.
    pub fn audit_reason(self) -> &'static str {
        match self {
            ValueError::NotEncrypted
            | ValueError::MissingSeparator
            | ValueError::BadBase64
            | ValueError::IvLength { .. }
            | ValueError::TooShort => Self::AUDIT_REASONS[0],
            ValueError::TagMismatch => Self::AUDIT_REASONS[1],
            ValueError::NotJson => Self::AUDIT_REASONS[2],
        }
    }

    /// A short, stable name of the failure kind (for logs and tests).
    pub fn as_str(self) -> &'static str {
        match self {
            ValueError::NotEncrypted => "not-encrypted",
            ValueError::MissingSeparator => "missing-separator",
            ValueError::BadBase64 => "bad-base64",
            ValueError::IvLength { .. } => "iv-length",
            ValueError::TooShort => "too-short",
            ValueError::TagMismatch => "tag-mismatch",
            ValueError::NotJson => "not-json",
        }
    }
}

/// Whether a field value is an `enc:1:` ciphertext (by prefix only).
pub fn is_encrypted(value: &str) -> bool {
    value.starts_with(ENC_PREFIX)
}

/// Decrypts one `enc:1:` value to the JSON value it holds.
pub fn decrypt_value(mdk: &Mdk, value: &str) -> Result<Value, ValueError> {
    let body = value
        .strip_prefix(ENC_PREFIX)
        .ok_or(ValueError::NotEncrypted)?;
    let (iv_b64, ct_b64) = body.split_once('.').ok_or(ValueError::MissingSeparator)?;
    let iv = BASE64.decode(iv_b64).map_err(|_| ValueError::BadBase64)?;
    let ciphertext = BASE64.decode(ct_b64).map_err(|_| ValueError::BadBase64)?;
    if iv.len() != IV_LEN {
        return Err(ValueError::IvLength { len: iv.len() });
    }
    if ciphertext.len() < TAG_LEN {
        return Err(ValueError::TooShort);
    }
    let plaintext = Zeroizing::new(
        cipher(mdk)
            .decrypt(Nonce::from_slice(&iv), ciphertext.as_slice())
            .map_err(|_| ValueError::TagMismatch)?,
    );
    // from_slice also rejects invalid UTF-8, which can only mean the writer
    // encrypted something that is not JSON text.
    serde_json::from_slice(&plaintext).map_err(|_| ValueError::NotJson)
}

/// Encrypts a JSON value as the browser does. The caller supplies the IV and
/// must never reuse one with the same MDK (GCM loses confidentiality and
/// integrity on IV reuse); outside tests, use 12 random bytes.
pub fn encrypt_value(mdk: &Mdk, value: &Value, iv: [u8; IV_LEN]) -> String {
    let plaintext = Zeroizing::new(value.to_string());
    let ciphertext = cipher(mdk)
        .encrypt(Nonce::from_slice(&iv), plaintext.as_bytes())
        // AES-GCM only refuses plaintexts over 64 GiB, which no JSON field is.
        .expect("AES-GCM encryption of a field value cannot fail");
    format!(
        "{ENC_PREFIX}{}.{}",
        BASE64.encode(iv),
        BASE64.encode(ciphertext)
    )
}

/// Replaces every top-level `enc:1:` string field of a record with its
/// decrypted value; returns how many were decrypted. On the first failure
/// the record is left unchanged.
pub fn decrypt_record_fields(
    mdk: &Mdk,
    record: &mut Map<String, Value>,
) -> Result<usize, ValueError> {
    let mut decrypted = Vec::new();
    for (field, value) in record.iter() {
        if let Value::String(text) = value {
            if is_encrypted(text) {
                decrypted.push((field.clone(), decrypt_value(mdk, text)?));
            }
        }
    }
    let count = decrypted.len();
    for (field, value) in decrypted {
        record.insert(field, value);
    }
    Ok(count)
}

// The expanded AES key schedule in `Aes256Gcm` is not zeroed on drop unless
// aes-gcm's `zeroize` feature is on; it lives only for one call here.
fn cipher(mdk: &Mdk) -> Aes256Gcm {
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(mdk.bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn mdk() -> Mdk {
        Mdk::from_bytes([0x42; 32])
    }

    const IV: [u8; IV_LEN] = [9; IV_LEN];

    #[test]
    fn round_trip_of_json_values() {
        for value in [
            json!("Grüße 😀"),
            json!(42),
            json!(-0.5),
            json!(null),
            json!(true),
            json!({"a": [1, {"b": "ü"}]}),
        ] {
            let enc = encrypt_value(&mdk(), &value, IV);
            assert!(is_encrypted(&enc));
            assert_eq!(decrypt_value(&mdk(), &enc).unwrap(), value);
        }
    }

    #[test]
    fn layout_is_iv_dot_ciphertext_with_tag() {
        let enc = encrypt_value(&mdk(), &json!("x"), IV);
        let (iv, ct) = enc
            .strip_prefix(ENC_PREFIX)
            .unwrap()
            .split_once('.')
            .unwrap();
        assert_eq!(BASE64.decode(iv).unwrap(), IV);
        // Plaintext `"x"` is 3 bytes; GCM adds the 16-byte tag.
        assert_eq!(BASE64.decode(ct).unwrap().len(), 3 + TAG_LEN);
    }

    #[test]
    fn malformed_forms() {
        // 6 bytes of JSON + 16 of tag = 22 bytes: base64 ends in "==".
        let good = encrypt_value(&mdk(), &json!("abcd"), IV);
        let (iv, ct) = good
            .strip_prefix(ENC_PREFIX)
            .unwrap()
            .split_once('.')
            .unwrap();
        assert!(
            ct.ends_with('='),
            "the padding case below needs a padded ciphertext"
        );
        let cases = [
            ("plain text".to_owned(), ValueError::NotEncrypted),
            ("enc:2:abc.def".to_owned(), ValueError::NotEncrypted),
            (format!("enc:1:{iv}{ct}"), ValueError::MissingSeparator),
            (format!("enc:1:{iv}.{}", &ct[1..]), ValueError::BadBase64),
            (format!("enc:1:@@.{ct}"), ValueError::BadBase64),
            // Padding is required, as WebCrypto/btoa write it.
            (
                format!("enc:1:{iv}.{}", ct.trim_end_matches('=')),
                ValueError::BadBase64,
            ),
            (
                format!("enc:1:{}.{ct}", BASE64.encode([0u8; 16])),
                ValueError::IvLength { len: 16 },
            ),
            (format!("enc:1:.{ct}"), ValueError::IvLength { len: 0 }),
            (
                format!("enc:1:{iv}.{}", BASE64.encode([1u8; 15])),
                ValueError::TooShort,
            ),
            (format!("enc:1:{iv}."), ValueError::TooShort),
        ];
        for (input, expected) in cases {
            let err = decrypt_value(&mdk(), &input).unwrap_err();
            assert_eq!(err, expected, "{input}");
            assert_eq!(err.audit_reason(), "ciphertext-malformed");
        }
    }

    #[test]
    fn tampering_and_wrong_key_fail_authentication() {
        let good = encrypt_value(&mdk(), &json!("secret"), IV);
        let (iv, ct) = good
            .strip_prefix(ENC_PREFIX)
            .unwrap()
            .split_once('.')
            .unwrap();
        let mut bytes = BASE64.decode(ct).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x80;
        let tampered = format!("enc:1:{iv}.{}", BASE64.encode(&bytes));
        let other_iv = format!("enc:1:{}.{ct}", BASE64.encode([8u8; IV_LEN]));
        for input in [tampered, other_iv] {
            assert_eq!(decrypt_value(&mdk(), &input), Err(ValueError::TagMismatch));
        }
        let wrong_key = Mdk::from_bytes([0x43; 32]);
        let err = decrypt_value(&wrong_key, &good).unwrap_err();
        assert_eq!(err, ValueError::TagMismatch);
        assert_eq!(err.audit_reason(), "record-not-under-grant-key");
    }

    #[test]
    fn non_json_plaintext_is_decrypt_failed() {
        for raw in [&b"not json {"[..], &[0xff, 0xfe][..], b""] {
            let ct = cipher(&mdk()).encrypt(Nonce::from_slice(&IV), raw).unwrap();
            let input = format!("enc:1:{}.{}", BASE64.encode(IV), BASE64.encode(ct));
            let err = decrypt_value(&mdk(), &input).unwrap_err();
            assert_eq!(err, ValueError::NotJson);
            assert_eq!(err.audit_reason(), "decrypt-failed");
        }
    }

    #[test]
    fn error_text_never_contains_the_input() {
        let secret = json!("Kontostand 1234 EUR");
        let good = encrypt_value(&mdk(), &secret, IV);
        let (iv, ct) = good
            .strip_prefix(ENC_PREFIX)
            .unwrap()
            .split_once('.')
            .unwrap();
        let inputs = [
            format!("enc:1:{iv}{ct}"),
            format!("enc:1:{iv}.{ct}!"),
            format!("enc:1:{}.{ct}", BASE64.encode([0u8; 13])),
            format!("enc:1:{iv}.{}", &ct[..8]),
        ];
        for input in &inputs {
            let err = decrypt_value(&mdk(), input).unwrap_err();
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(ct) && !shown.contains(iv), "{shown}");
            assert!(!shown.contains("Kontostand"));
        }
        let err = decrypt_value(&Mdk::from_bytes([1; 32]), &good).unwrap_err();
        assert!(!format!("{err} {err:?}").contains(ct));
    }

    #[test]
    fn record_fields_are_replaced_all_or_nothing() {
        let mut record = Map::new();
        record.insert("id".into(), json!("n-1"));
        record.insert(
            "title".into(),
            json!(encrypt_value(&mdk(), &json!("Titel"), IV)),
        );
        record.insert(
            "body".into(),
            json!(encrypt_value(&mdk(), &json!({"x": 1}), [1; 12])),
        );
        record.insert("tags".into(), json!(["enc:1:nested-is-left-alone"]));
        record.insert("count".into(), json!(3));
        let mut ok = record.clone();
        assert_eq!(decrypt_record_fields(&mdk(), &mut ok), Ok(2));
        assert_eq!(ok["title"], json!("Titel"));
        assert_eq!(ok["body"], json!({"x": 1}));
        assert_eq!(ok["tags"], record["tags"]);
        assert_eq!(ok["id"], json!("n-1"));

        let mut bad = record.clone();
        bad.insert("z".into(), json!("enc:1:broken"));
        assert_eq!(
            decrypt_record_fields(&mdk(), &mut bad),
            Err(ValueError::MissingSeparator)
        );
        bad.remove("z");
        assert_eq!(bad, record, "a failed record must stay untouched");

        let mut plain = Map::new();
        plain.insert("title".into(), json!("plain"));
        assert_eq!(decrypt_record_fields(&mdk(), &mut plain), Ok(0));
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(input in any::<String>()) {
            let result = decrypt_value(&mdk(), &input);
            if !input.starts_with(ENC_PREFIX) {
                prop_assert_eq!(result, Err(ValueError::NotEncrypted));
            }
        }

        #[test]
        fn arbitrary_enc_bodies_are_rejected_without_panic(body in any::<String>()) {
            let input = format!("{ENC_PREFIX}{body}");
            prop_assert!(is_encrypted(&input));
            let err = decrypt_value(&mdk(), &input).unwrap_err();
            prop_assert_ne!(err, ValueError::NotEncrypted);
        }

        #[test]
        fn base64_shaped_bodies_are_rejected_without_panic(
            iv in proptest::collection::vec(any::<u8>(), 0..20),
            ct in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let input = format!("enc:1:{}.{}", BASE64.encode(&iv), BASE64.encode(&ct));
            let err = decrypt_value(&mdk(), &input).unwrap_err();
            let expected = if iv.len() != IV_LEN {
                ValueError::IvLength { len: iv.len() }
            } else if ct.len() < TAG_LEN {
                ValueError::TooShort
            } else {
                ValueError::TagMismatch
            };
            prop_assert_eq!(err, expected);
        }

        #[test]
        fn round_trip_of_arbitrary_strings(text in any::<String>(), iv in any::<[u8; 12]>()) {
            let value = Value::String(text);
            let enc = encrypt_value(&mdk(), &value, iv);
            prop_assert_eq!(decrypt_value(&mdk(), &enc), Ok(value));
        }
    }
}
