//! Key-grants: RSA-OAEP unwrap, HKDF derivation, `enc:1:` values (contract section 7).
