//! What the writers write: missions due a few seconds ahead on an interval
//! cadence of 6 to 18 s, edits of their other fields (sometimes stamped a
//! little in the past or future), agents, values that are odd but valid
//! (nested 90 deep, 40 KB, long numbers, any Unicode), and poison (nested
//! 150 deep, a 100 KB field over the 64 KiB limit).
//!
//! Edits never touch `nextRunAt`, `cadence`, `state` or `iterations`: the
//! slots a mission comes due at are then only the ones the service's own
//! write-backs set, which the oracle follows.

use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::rng::Rng;

/// An ISO timestamp `offset_ms` from now, as the webapp writes them.
pub fn iso_in_ms(offset_ms: i64) -> String {
    (Utc::now() + chrono::Duration::milliseconds(offset_ms))
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A new mission: due in 2 to 8 s, then every 0.1 to 0.3 minutes.
pub fn new_mission(rng: &mut Rng, n: u64) -> Value {
    let every = rng.range(10, 31) as f64 / 100.0;
    json!({
        "title": format!("Mission {n}"),
        "conceptMarkdown": "Plane den nächsten Schritt.",
        "objective": format!("Ziel {n}"),
        "state": "active",
        "nextRunAt": iso_in_ms(rng.range(2000, 8000) as i64),
        "cadence": {"kind": "interval", "everyMinutes": every},
        "iterations": [],
        "inputs": [],
    })
}

/// An edit of a mission's free fields, with stamps for them at times.
pub fn mission_edit(rng: &mut Rng, n: u64) -> (Value, Value) {
    let mut data = serde_json::Map::new();
    if rng.chance(0.6) {
        data.insert("title".into(), json!(format!("Mission edit {n}")));
    }
    if rng.chance(0.5) {
        data.insert("objective".into(), json!(format!("Objective {n}")));
    }
    if data.is_empty() || rng.chance(0.3) {
        data.insert("notes".into(), json!({"n": n, "tags": ["a", n % 7]}));
    }
    (Value::Object(data.clone()), stamps(rng, &data))
}

/// An agent record (insert or edit).
pub fn agent(rng: &mut Rng, n: u64) -> (Value, Value) {
    let mut data = serde_json::Map::new();
    data.insert("name".into(), json!(format!("Agent {n}")));
    if rng.chance(0.5) {
        data.insert("role".into(), json!(format!("Rolle {}", n % 5)));
    }
    if rng.chance(0.3) {
        data.insert(
            "state".into(),
            json!(if n.is_multiple_of(2) {
                "active"
            } else {
                "paused"
            }),
        );
    }
    (Value::Object(data.clone()), stamps(rng, &data))
}

/// Field stamps as a browser writes them, one per key: now, or 30 % of the
/// time a device's clock a little in the past or future; one edit in twenty
/// leaves a key unstamped (which changes nothing, contract section 2).
fn stamps(rng: &mut Rng, data: &serde_json::Map<String, Value>) -> Value {
    let skewed = rng.chance(0.3);
    let mut out = serde_json::Map::new();
    for key in data.keys() {
        let offset = if skewed {
            rng.range(0, 120_000) as i64 - 60_000
        } else {
            0
        };
        out.insert(key.clone(), json!(iso_in_ms(offset)));
    }
    if rng.chance(0.05) {
        let first = out.keys().next().cloned();
        first.map(|key| out.remove(&key));
    }
    Value::Object(out)
}

/// Odd but valid: must fold like anything else.
pub fn odd_edit(rng: &mut Rng, n: u64) -> Value {
    match rng.index(4) {
        0 => json!({"notes": nested(90)}),
        1 => json!({"notes": "x".repeat(40_000)}),
        2 => serde_json::from_str(&format!(
            "{{\"notes\": 12345678901234567890123.0{n}, \"score\": -0.000000000000000000001{n}}}"
        ))
        .unwrap_or_else(|_| json!({"notes": n})),
        _ => json!({"title": format!("Ünïcødé ✓ \u{1F600} \\ \" \u{7f} {n}")}),
    }
}

/// Poison kinds: the record ids start with `poison-` and hold nothing else.
pub fn poison(rng: &mut Rng) -> (&'static str, Value) {
    if rng.chance(0.5) {
        ("deep", json!({"title": "deep", "notes": nested(150)}))
    } else {
        (
            "huge",
            json!({"title": "huge", "notes": "y".repeat(100_000)}),
        )
    }
}

/// An array nested `depth` levels deep (the outer object adds one).
/// Built, not parsed: serde_json's parser stops at 128 levels.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| Value::Array(vec![inner]))
}
