//! Mission key-grants: parse, unwrap to the MDK, mint (contract section 7).
//!
//! Rules:
//! - A grant comes from a user-writable mission record, so parsing is lenient
//!   about what does not matter (unknown fields, missing or null `issuedAt`,
//!   `tables`, `recordIds`) and every other bad shape is `malformed`, never a
//!   panic or an error that stops the reactor.
//! - Unwrap checks in this order: key configured, not expired, version `v1`,
//!   base64, RSA-OAEP, 32 bytes. Expiry comes before any RSA work so an expired
//!   grant costs nothing; an unparseable `expiresAt` counts as expired because
//!   a grant whose end cannot be read must not be trusted forever.
//! - A grant is expired at its `expiresAt` instant (`expiresAt <= now`).
//! - The allowlist is `derivation.recordIds` (`"<table>:<id>"`), matched
//!   exactly; nothing outside it is decrypted.
//! - `derivation.missionId` is not compared with the mission here; the caller
//!   knows the mission.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use super::hkdf::derive_mdk;
use super::keys::{GrantKey, GrantPublicKey, WrapError};
use super::mdk::Mdk;

/// The only derivation version the issuer produces today.
pub const DERIVATION_V1: &str = "v1";

/// A mission's `grant` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MissionGrant {
    /// Base64 of the RSA-OAEP-wrapped MDK.
    pub wrapped_key: String,
    pub derivation: GrantDerivation,
    /// ISO-8601; informational only.
    #[serde(default, deserialize_with = "null_as_default")]
    pub issued_at: String,
    /// ISO-8601; kept as text so an unparseable value is reported as
    /// `expired` at unwrap time instead of failing the whole parse.
    #[serde(default, deserialize_with = "null_as_default")]
    pub expires_at: String,
}

/// The scope the MDK was derived for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantDerivation {
    pub version: String,
    pub mission_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tables: Vec<String>,
    /// `"<table>:<id>"` entries: the allowlist of records this grant opens.
    #[serde(default, deserialize_with = "null_as_default")]
    pub record_ids: Vec<String>,
}

/// Why a grant was not used. `as_str` is the `grant_skips_total{reason}` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum GrantSkip {
    #[error("no grant private key is configured")]
    NotConfigured,
    #[error("grant expired or its expiresAt is unreadable")]
    Expired,
    #[error("grant is malformed")]
    Malformed,
    #[error("grant's wrapped key was rejected by RSA-OAEP decryption")]
    WrapRejected,
}

impl GrantSkip {
    /// Every variant, for pre-registering metric labels.
    pub const ALL: [GrantSkip; 4] = [
        GrantSkip::NotConfigured,
        GrantSkip::Expired,
        GrantSkip::Malformed,
        GrantSkip::WrapRejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GrantSkip::NotConfigured => "not-configured",
            GrantSkip::Expired => "expired",
            GrantSkip::Malformed => "malformed",
            GrantSkip::WrapRejected => "wrap-rejected",
        }
    }
}

impl MissionGrant {
    /// Parses a `grant` value. Any shape that is not a grant is `Malformed`.
    pub fn from_value(value: &serde_json::Value) -> Result<MissionGrant, GrantSkip> {
        MissionGrant::deserialize(value).map_err(|_| GrantSkip::Malformed)
    }

    /// Reads the `grant` field of a folded mission record: `None` when the
    /// mission has no grant (field absent or null).
    pub fn from_mission(mission: &serde_json::Value) -> Option<Result<MissionGrant, GrantSkip>> {
        match mission.get("grant") {
            None | Some(serde_json::Value::Null) => None,
            Some(grant) => Some(MissionGrant::from_value(grant)),
        }
    }

    /// Whether `"<table>:<id>"` is in the grant's `recordIds`.
    pub fn allows(&self, table: &str, id: &str) -> bool {
        self.derivation.record_ids.iter().any(|entry| {
            entry
                .strip_prefix(table)
                .and_then(|rest| rest.strip_prefix(':'))
                == Some(id)
        })
    }

    /// Whether the grant is expired at `now` (unparseable `expiresAt` is).
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        match DateTime::parse_from_rfc3339(self.expires_at.trim()) {
            Ok(expires_at) => expires_at <= now,
            Err(_) => true,
        }
    }
}

/// Unwraps a grant to its mission data key.
pub fn unwrap_grant(
    key: Option<&GrantKey>,
    grant: &MissionGrant,
    now: DateTime<Utc>,
) -> Result<Mdk, GrantSkip> {
    let key = key.ok_or(GrantSkip::NotConfigured)?;
    if grant.is_expired(now) {
        return Err(GrantSkip::Expired);
    }
    // Another version may mean another scope rule; reading it as v1 could
    // decrypt records the user did not intend to share.
    if grant.derivation.version != DERIVATION_V1 {
        return Err(GrantSkip::Malformed);
    }
    let wrapped = BASE64
        .decode(grant.wrapped_key.trim())
        .map_err(|_| GrantSkip::Malformed)?;
    let plain = key.unwrap_oaep(&wrapped).ok_or(GrantSkip::WrapRejected)?;
    Mdk::from_slice(&plain).ok_or(GrantSkip::Malformed)
}

/// Issues a grant the way mana-auth does: derive the MDK from the master key
/// and scope, wrap it for `key`. For the `mana-ai grant` helper and the demo.
pub fn mint_grant<T: AsRef<str>, R: AsRef<str>>(
    key: &GrantPublicKey,
    master: &[u8; 32],
    mission_id: &str,
    tables: &[T],
    record_ids: &[R],
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<MissionGrant, WrapError> {
    let mdk = derive_mdk(master, mission_id, tables, record_ids);
    let wrapped = key.wrap_oaep(mdk.bytes())?;
    Ok(MissionGrant {
        wrapped_key: BASE64.encode(wrapped),
        derivation: GrantDerivation {
            version: DERIVATION_V1.to_owned(),
            mission_id: mission_id.to_owned(),
            tables: tables.iter().map(|t| t.as_ref().to_owned()).collect(),
            record_ids: record_ids.iter().map(|r| r.as_ref().to_owned()).collect(),
        },
        issued_at: js_iso(issued_at),
        expires_at: js_iso(expires_at),
    })
}

/// `Date.prototype.toISOString()` format: UTC, milliseconds, `Z`.
fn js_iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    fn sample() -> serde_json::Value {
        json!({
            "wrappedKey": "AAAA",
            "derivation": {
                "version": "v1",
                "missionId": "m-1",
                "tables": ["notes"],
                "recordIds": ["notes:n-1", "tasks:t:2"]
            },
            "issuedAt": "2025-01-01T00:00:00.000Z",
            "expiresAt": "2025-06-01T00:00:00.000Z",
            "futureField": 1
        })
    }

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap()
    }

    #[test]
    fn parses_camel_case_and_ignores_unknown_fields() {
        let grant = MissionGrant::from_value(&sample()).unwrap();
        assert_eq!(grant.wrapped_key, "AAAA");
        assert_eq!(grant.derivation.mission_id, "m-1");
        assert_eq!(grant.derivation.record_ids, ["notes:n-1", "tasks:t:2"]);
        // Round trip keeps the wire names.
        let back = serde_json::to_value(&grant).unwrap();
        assert_eq!(back["derivation"]["recordIds"][0], "notes:n-1");
        assert!(back.get("expiresAt").is_some());
    }

    #[test]
    fn optional_fields_may_be_missing_or_null() {
        let grant = MissionGrant::from_value(&json!({
            "wrappedKey": "AAAA",
            "derivation": {"version": "v1", "missionId": "m", "tables": null},
            "issuedAt": null
        }))
        .unwrap();
        assert!(grant.derivation.tables.is_empty() && grant.derivation.record_ids.is_empty());
        assert_eq!(grant.expires_at, "");
        assert!(grant.is_expired(at(2000, 1, 1)));
    }

    #[test]
    fn bad_shapes_are_malformed() {
        for bad in [
            json!(null),
            json!("grant"),
            json!([]),
            json!({}),
            json!({"wrappedKey": 5, "derivation": {"version": "v1", "missionId": "m"}}),
            json!({"wrappedKey": "A", "derivation": {"missionId": "m"}}),
            json!({"wrappedKey": "A", "derivation": {"version": "v1", "missionId": "m", "recordIds": [1]}}),
            json!({"wrappedKey": "A", "derivation": "v1"}),
        ] {
            assert_eq!(
                MissionGrant::from_value(&bad),
                Err(GrantSkip::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn from_mission_distinguishes_absent_from_bad() {
        assert!(MissionGrant::from_mission(&json!({"title": "x"})).is_none());
        assert!(MissionGrant::from_mission(&json!({"grant": null})).is_none());
        assert_eq!(
            MissionGrant::from_mission(&json!({"grant": 3})),
            Some(Err(GrantSkip::Malformed))
        );
        assert!(matches!(
            MissionGrant::from_mission(&json!({"grant": sample()})),
            Some(Ok(_))
        ));
    }

    #[test]
    fn allowlist_is_exact() {
        let grant = MissionGrant::from_value(&sample()).unwrap();
        assert!(grant.allows("notes", "n-1"));
        assert!(grant.allows("tasks", "t:2"));
        assert!(!grant.allows("notes", "n-"));
        assert!(!grant.allows("notes", "n-10"));
        assert!(!grant.allows("note", "s:n-1"));
        assert!(!grant.allows("tasks", "t"));
        assert!(!grant.allows("", "notes:n-1"));
    }

    #[test]
    fn expiry_boundaries() {
        let grant = MissionGrant::from_value(&sample()).unwrap();
        assert!(!grant.is_expired(at(2025, 5, 31)));
        assert!(grant.is_expired(at(2025, 6, 1)));
        assert!(grant.is_expired(at(2026, 1, 1)));
        let offset = MissionGrant {
            expires_at: "2025-06-01T02:00:00+02:00".into(),
            ..grant.clone()
        };
        assert!(offset.is_expired(at(2025, 6, 1)));
        for bad in ["", "tomorrow", "2025-06-01", "1717200000000"] {
            let g = MissionGrant {
                expires_at: bad.into(),
                ..grant.clone()
            };
            assert!(g.is_expired(at(2000, 1, 1)), "{bad}");
        }
    }

    #[test]
    fn not_configured_comes_first() {
        let grant = MissionGrant {
            expires_at: "garbage".into(),
            ..MissionGrant::from_value(&sample()).unwrap()
        };
        assert_eq!(
            unwrap_grant(None, &grant, at(2025, 1, 1)).unwrap_err(),
            GrantSkip::NotConfigured
        );
    }

    #[test]
    fn labels() {
        let labels: Vec<_> = GrantSkip::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            labels,
            ["not-configured", "expired", "malformed", "wrap-rejected"]
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_expiry_text_never_panics(text in proptest::prelude::any::<String>()) {
            let grant = MissionGrant {
                expires_at: text,
                ..MissionGrant::from_value(&sample()).unwrap()
            };
            let _ = grant.is_expired(at(2025, 1, 1));
        }

        #[test]
        fn arbitrary_grant_fields_parse_or_are_malformed(
            wrapped in proptest::prelude::any::<Option<String>>(),
            version in proptest::prelude::any::<Option<String>>(),
            ids in proptest::collection::vec(proptest::prelude::any::<String>(), 0..4),
        ) {
            let value = json!({
                "wrappedKey": wrapped,
                "derivation": {"version": version, "missionId": "m", "recordIds": ids},
            });
            let parsed = MissionGrant::from_value(&value);
            proptest::prop_assert_eq!(parsed.is_ok(), wrapped.is_some() && version.is_some());
        }
    }

    #[test]
    fn js_iso_format() {
        assert_eq!(js_iso(at(2099, 12, 31)), "2099-12-31T00:00:00.000Z");
    }
}
