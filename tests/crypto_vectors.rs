//! The Rust crypto core against vectors WebCrypto produced
//! (`tests/vectors/make_vectors.mjs` -> `tests/vectors/grant_vectors.json`).
//!
//! The vectors fix the key pair, so no test generates an RSA key (slow in
//! debug builds) and the browser/issuer side is the reference, not our own code.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};

use mana_ai::crypto::{
    decrypt_record_fields, decrypt_value, derive_mdk, grant_info, mint_grant, unwrap_grant,
    GrantKey, GrantPublicKey, GrantSkip, KeyError, Mdk, MissionGrant,
};

const VECTORS: &str = include_str!("vectors/grant_vectors.json");

fn vectors() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    V.get_or_init(|| serde_json::from_str(VECTORS).expect("vectors are JSON"))
}

fn text(key: &str) -> &'static str {
    vectors()[key]
        .as_str()
        .unwrap_or_else(|| panic!("vector {key}"))
}

fn strings(key: &str) -> Vec<String> {
    serde_json::from_value(vectors()[key].clone()).unwrap()
}

fn key() -> &'static GrantKey {
    static K: OnceLock<GrantKey> = OnceLock::new();
    K.get_or_init(|| GrantKey::from_pkcs8_pem(text("privateKeyPem")).unwrap())
}

fn master() -> [u8; 32] {
    BASE64
        .decode(text("masterKey"))
        .unwrap()
        .try_into()
        .unwrap()
}

fn expected_mdk() -> Mdk {
    Mdk::from_bytes(BASE64.decode(text("mdk")).unwrap().try_into().unwrap())
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap()
}

fn grant() -> MissionGrant {
    MissionGrant::from_value(&vectors()["grant"]).unwrap()
}

#[test]
fn info_string_sorts_like_javascript() {
    let info = grant_info(&strings("tables"), &strings("recordIds"));
    assert_eq!(info, text("info"));
    // The vector really exercises the difference: Rust's own order would
    // produce another string.
    let mut rust_sorted = strings("recordIds");
    rust_sorted.sort();
    assert!(!info.ends_with(&rust_sorted.join(",")));
}

#[test]
fn hkdf_matches_webcrypto() {
    let mdk = derive_mdk(
        &master(),
        text("missionId"),
        &strings("tables"),
        &strings("recordIds"),
    );
    assert_eq!(mdk, expected_mdk());
}

#[test]
fn grant_unwraps_to_the_derived_mdk() {
    let mdk = unwrap_grant(Some(key()), &grant(), now()).unwrap();
    assert_eq!(mdk, expected_mdk());
    let derivation = &grant().derivation;
    let derived = derive_mdk(
        &master(),
        &derivation.mission_id,
        &derivation.tables,
        &derivation.record_ids,
    );
    assert_eq!(mdk, derived);
}

#[test]
fn grant_parses_from_a_mission_record() {
    let mission = json!({"id": "m", "title": "t", "grant": vectors()["grant"].clone()});
    let parsed = MissionGrant::from_mission(&mission).unwrap().unwrap();
    assert_eq!(parsed, grant());
    for id in strings("recordIds") {
        let (table, record) = id.split_once(':').unwrap();
        assert!(parsed.allows(table, record), "{id}");
    }
    assert!(!parsed.allows("notes", "not-listed"));
}

#[test]
fn every_value_decrypts_to_the_expected_json() {
    let mdk = expected_mdk();
    let values = vectors()["values"].as_array().unwrap();
    assert!(values.len() >= 4);
    for v in values {
        let decrypted = decrypt_value(&mdk, v["ciphertext"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", v["name"]));
        assert_eq!(decrypted, v["expected"], "{}", v["name"]);
    }
}

#[test]
fn a_record_decrypts_field_by_field() {
    let mdk = expected_mdk();
    let mut record = serde_json::Map::new();
    record.insert("id".into(), json!("n-1"));
    for v in vectors()["values"].as_array().unwrap() {
        record.insert(v["name"].as_str().unwrap().into(), v["ciphertext"].clone());
    }
    let count = decrypt_record_fields(&mdk, &mut record).unwrap();
    assert_eq!(count, record.len() - 1);
    for v in vectors()["values"].as_array().unwrap() {
        assert_eq!(record[v["name"].as_str().unwrap()], v["expected"]);
    }
}

#[test]
fn bad_values_fail_with_the_right_reason() {
    let mdk = expected_mdk();
    for v in vectors()["badValues"].as_array().unwrap() {
        let name = v["name"].as_str().unwrap();
        let input = v["ciphertext"].as_str().unwrap();
        let err = decrypt_value(&mdk, input).unwrap_err();
        assert_eq!(err.as_str(), v["error"].as_str().unwrap(), "{name}");
        let expected_reason = match err.as_str() {
            "tag-mismatch" => "record-not-under-grant-key",
            "not-json" => "decrypt-failed",
            _ => "ciphertext-malformed",
        };
        assert_eq!(err.audit_reason(), expected_reason, "{name}");
        let shown = format!("{err} {err:?}");
        if let Some((_, ct)) = input.split_once('.') {
            assert!(ct.is_empty() || !shown.contains(ct), "{name}: {shown}");
        }
        assert!(!shown.contains(input), "{name}");
    }
}

#[test]
fn failing_grants_give_the_right_skip() {
    for case in vectors()["failingGrants"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let grant = MissionGrant::from_value(&case["grant"]).unwrap();
        let skip = unwrap_grant(Some(key()), &grant, now()).unwrap_err();
        assert_eq!(skip.as_str(), case["reason"].as_str().unwrap(), "{name}");
    }
}

#[test]
fn wrong_private_key_is_wrap_rejected() {
    let other = GrantKey::from_pkcs8_pem(text("otherPrivateKeyPem")).unwrap();
    assert_eq!(
        unwrap_grant(Some(&other), &grant(), now()).unwrap_err(),
        GrantSkip::WrapRejected
    );
}

#[test]
fn no_key_is_not_configured_and_late_is_expired() {
    assert_eq!(
        unwrap_grant(None, &grant(), now()).unwrap_err(),
        GrantSkip::NotConfigured
    );
    let after = Utc.with_ymd_and_hms(2100, 1, 1, 0, 0, 0).unwrap();
    assert_eq!(
        unwrap_grant(Some(key()), &grant(), after).unwrap_err(),
        GrantSkip::Expired
    );
}

#[test]
fn unknown_derivation_version_is_malformed() {
    let mut grant = grant();
    grant.derivation.version = "v2".into();
    assert_eq!(
        unwrap_grant(Some(key()), &grant, now()).unwrap_err(),
        GrantSkip::Malformed
    );
}

#[test]
fn minted_grant_round_trips_through_both_public_keys() {
    let issued = Utc.with_ymd_and_hms(2025, 5, 1, 8, 0, 0).unwrap();
    let expires = Utc.with_ymd_and_hms(2099, 1, 1, 0, 0, 0).unwrap();
    let from_pem = GrantPublicKey::from_public_pem(text("publicKeyPem")).unwrap();
    for public in [from_pem, key().public_key()] {
        let minted = mint_grant(
            &public,
            &master(),
            text("missionId"),
            &strings("tables"),
            &strings("recordIds"),
            issued,
            expires,
        )
        .unwrap();
        // Same wire shape as the issuer's grant, so the webapp can store it.
        let wire = serde_json::to_value(&minted).unwrap();
        assert_eq!(wire["derivation"], vectors()["grant"]["derivation"]);
        assert_eq!(wire["issuedAt"], "2025-05-01T08:00:00.000Z");
        assert_eq!(wire["expiresAt"], "2099-01-01T00:00:00.000Z");
        let parsed = MissionGrant::from_value(&wire).unwrap();
        assert_eq!(
            unwrap_grant(Some(key()), &parsed, now()).unwrap(),
            expected_mdk()
        );
    }
}

#[test]
fn key_loading_errors_are_specific() {
    assert!(matches!(
        GrantKey::from_pkcs8_pem(text("weakPrivateKeyPem")).unwrap_err(),
        KeyError::TooSmall { bits: 1024 }
    ));
    assert_eq!(
        GrantKey::from_pkcs8_pem(text("ecdsaPrivateKeyPem")).unwrap_err(),
        KeyError::NotRsa
    );
    assert!(matches!(
        GrantKey::from_pkcs8_pem(text("publicKeyPem")).unwrap_err(),
        KeyError::WrongLabel { .. }
    ));
    assert!(matches!(
        GrantPublicKey::from_public_pem(text("privateKeyPem")).unwrap_err(),
        KeyError::WrongLabel { .. }
    ));
}

#[test]
fn key_errors_and_debug_never_show_key_material() {
    let pem = text("privateKeyPem");
    let body_line = pem.lines().nth(1).unwrap();
    let mut corrupt = pem.to_owned();
    corrupt.insert_str(pem.find('\n').unwrap() + 10, "!!");
    let err = GrantKey::from_pkcs8_pem(&corrupt).unwrap_err();
    assert!(matches!(err, KeyError::Malformed { .. }));
    for shown in [format!("{err}"), format!("{err:?}"), format!("{:?}", key())] {
        assert!(!shown.contains(&body_line[..16]), "{shown}");
    }
    assert_eq!(format!("{:?}", key()), "GrantKey { bits: 2048, .. }");
    assert!(!format!("{:?}", expected_mdk()).contains(text("mdk")));
}

#[test]
fn pem_with_escaped_newlines_loads() {
    // How a PEM often arrives through an environment variable.
    let escaped = text("privateKeyPem").replace('\n', "\\n");
    let loaded = GrantKey::from_pkcs8_pem(&escaped).unwrap();
    assert_eq!(
        unwrap_grant(Some(&loaded), &grant(), now()).unwrap(),
        expected_mdk()
    );
}
