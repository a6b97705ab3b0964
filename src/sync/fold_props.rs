//! Property tests: random logs of one record (inserts, updates and deletes,
//! with and without stamps and `deletedAt`, ties in `created_at`, the
//! record removed and re-created) folded three ways agree:
//!
//! - [`browser`]: contract section 2 transcribed here as plainly as it is
//!   worded, sharing no code with the fold;
//! - [`replay`];
//! - the incremental fold as the applier drives it: rows arriving in a
//!   random order and random batches, each batch sorted and folded onto the
//!   state (state and record round-tripped through JSON between batches),
//!   and, when a row is refused as late, the record replayed from every row
//!   arrived so far (what the applier's replay reads from `sync_changes`).

use super::*;
use chrono::{DateTime, TimeZone, Utc};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::json;
use uuid::Uuid;

const ID: &str = "rec-1";
const KEYS: [&str; 6] = ["a", "b", "id", "updatedAt", "createdAt", "deletedAt"];

/// Section 2 of the contract, transcribed rule by rule.
mod browser {
    use std::collections::HashMap;

    use serde_json::{Map, Value};

    use super::super::{iso_millis, ChangeRow, Op};

    /// A record a browser holds: its values and its per-field stamps.
    pub struct Held {
        values: Map<String, Value>,
        stamps: HashMap<String, String>,
    }

    fn string<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
        map.get(key).and_then(Value::as_str)
    }

    /// "A delivered field wins when at >= the field's current stamp; a
    /// field with no stamp of its own compares against the record's
    /// updatedAt value, or '' when it has none."
    fn merge(held: &mut Held, fields: Vec<(String, Value, String)>) {
        let updated_at = string(&held.values, "updatedAt").unwrap_or("").to_string();
        for (key, value, at) in fields {
            let current = held.stamps.get(&key).cloned().unwrap_or(updated_at.clone());
            if at >= current {
                held.values.insert(key.clone(), value);
                held.stamps.insert(key, at);
            }
        }
    }

    /// "If the record does not exist yet, it is created from the fields."
    fn create(fields: Vec<(String, Value, String)>) -> Held {
        let mut held = Held {
            values: Map::new(),
            stamps: HashMap::new(),
        };
        for (key, value, at) in fields {
            held.values.insert(key.clone(), value);
            held.stamps.insert(key, at);
        }
        held
    }

    fn apply(record: Option<Held>, row: &ChangeRow) -> Option<Held> {
        // The record's id is its own; `data.id` is never a field.
        let data = row.data.iter().filter(|(key, _)| key.as_str() != "id");
        let fields: Vec<_> = match row.op {
            Op::Delete => return delete(record?, row),
            // Only keys present in both data and the stamp map (with a
            // string stamp) are delivered.
            Op::Update => data
                .filter_map(|(key, value)| {
                    let at = row.field_timestamps.get(key)?.as_str()?;
                    Some((key.clone(), value.clone(), at.to_string()))
                })
                .collect(),
            // data.updatedAt, else data.createdAt, else the row's time.
            Op::Insert => {
                let time = string(&row.data, "updatedAt")
                    .or(string(&row.data, "createdAt"))
                    .map(str::to_string)
                    .unwrap_or_else(|| iso_millis(row.created_at));
                data.map(|(key, value)| (key.clone(), value.clone(), time.clone()))
                    .collect()
            }
        };
        if row.op == Op::Update && fields.is_empty() {
            return record;
        }
        match record {
            None => Some(create(fields)),
            Some(mut held) => {
                merge(&mut held, fields);
                Some(held)
            }
        }
    }

    /// A delete: without a `deletedAt` the browser drops the record; with
    /// one, it is stamped deleted when the time is not older.
    fn delete(mut held: Held, row: &ChangeRow) -> Option<Held> {
        let at = string(&row.data, "deletedAt").filter(|at| !at.is_empty())?;
        let current = match held.stamps.get("deletedAt") {
            Some(stamp) => stamp.clone(),
            None => string(&held.values, "deletedAt").unwrap_or("").to_string(),
        };
        if at >= current.as_str() {
            for key in ["deletedAt", "updatedAt"] {
                held.values.insert(key.into(), Value::String(at.into()));
                held.stamps.insert(key.into(), at.into());
            }
        }
        Some(held)
    }

    /// The rows in created_at order, ties in insertion order, each applied
    /// once; the record (empty when no browser holds it) and whether it is
    /// deleted.
    pub fn fold(record_id: &str, rows: &[ChangeRow]) -> (Map<String, Value>, bool) {
        let mut rows: Vec<&ChangeRow> = rows.iter().collect();
        rows.sort_by_key(|row| (row.created_at, row.seq, row.id));
        rows.dedup_by_key(|row| row.id);
        let mut record = None;
        for row in rows {
            record = apply(record, row);
        }
        let Some(held) = record else {
            return (Map::new(), true);
        };
        let mut out = held.values;
        out.insert("id".into(), Value::String(record_id.into()));
        let deleted = string(&out, "deletedAt").is_some_and(|at| !at.is_empty());
        (out, deleted)
    }
}

fn at_millis(millis: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::milliseconds(millis)
}

/// A stamp or time among few, so that they tie with each other and with
/// the rows' own times.
fn stamp() -> impl Strategy<Value = String> {
    (0i64..6).prop_map(|ms| iso_millis(at_millis(ms)))
}

/// A field's value; the time-like keys mostly get stamps, sometimes not.
fn value(key: &'static str) -> BoxedStrategy<Value> {
    let plain = prop_oneof![
        4 => (0..3i64).prop_map(Value::from),
        1 => Just(Value::Null),
        1 => Just(json!("")),
    ];
    match key {
        "updatedAt" | "createdAt" | "deletedAt" => {
            prop_oneof![3 => stamp().prop_map(Value::String), 1 => plain].boxed()
        }
        _ => plain.boxed(),
    }
}

/// How a key is stamped: not at all, with a string, or with a non-string.
fn stamp_entry() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        2 => Just(None),
        6 => stamp().prop_map(|s| Some(Value::String(s))),
        1 => Just(Some(json!(12))),
    ]
}

/// One row: op, data (each key present or not), stamps (also for keys
/// absent from data), time within a few milliseconds, insertion order.
fn row() -> impl Strategy<Value = (Op, Vec<Option<Value>>, Vec<Option<Value>>, i64, u16)> {
    let op = prop_oneof![2 => Just(Op::Insert), 5 => Just(Op::Update), 2 => Just(Op::Delete)];
    let data = KEYS
        .iter()
        .map(|key| {
            proptest::option::weighted(
                if *key == "a" || *key == "b" { 0.6 } else { 0.2 },
                value(key),
            )
        })
        .collect::<Vec<_>>();
    let stamps = vec(stamp_entry(), KEYS.len());
    (op, data, stamps, 0i64..8, any::<u16>())
}

fn rows() -> impl Strategy<Value = Vec<ChangeRow>> {
    vec(row(), 1..14).prop_map(|rows| {
        rows.into_iter()
            .enumerate()
            .map(|(i, (op, data, stamps, half_ms, order))| ChangeRow {
                // Ids in an order unrelated to time and insertion order.
                id: Uuid::from_u128((u128::from(order) << 64) | i as u128),
                seq: (i64::from(order) << 8) | i as i64,
                op,
                data: KEYS
                    .iter()
                    .zip(data)
                    .filter_map(|(k, v)| Some((k.to_string(), v?)))
                    .collect(),
                field_timestamps: KEYS
                    .iter()
                    .zip(stamps)
                    .filter_map(|(k, s)| Some((k.to_string(), s?)))
                    .collect(),
                created_at: at_millis(0) + chrono::Duration::microseconds(half_ms * 500),
            })
            .collect()
    })
}

/// The incremental fold as the applier drives it (see the module header).
fn fold_as_applier(
    rows: &[ChangeRow],
    arrival: &[Index],
    cuts: &[bool],
) -> (Map<String, Value>, bool) {
    let mut left: Vec<usize> = (0..rows.len()).collect();
    let order: Vec<usize> = arrival
        .iter()
        .take(rows.len())
        .map(|ix| left.remove(ix.index(left.len())))
        .collect();
    // No snapshot before the first batch.
    let mut stored: Option<(Value, Value)> = None;
    let mut arrived: Vec<ChangeRow> = Vec::new();
    let mut batch: Vec<ChangeRow> = Vec::new();
    for (pos, &i) in order.iter().enumerate() {
        batch.push(rows[i].clone());
        if !(cuts[pos] || pos + 1 == order.len()) {
            continue;
        }
        arrived.extend(batch.iter().cloned());
        batch.sort_by_key(ChangeRow::order_key);
        let (mut state, mut record) = match stored.take() {
            None => (FoldState::default(), Map::new()),
            Some((state, record)) => (
                FoldState::decode(state),
                serde_json::from_value(record).unwrap(),
            ),
        };
        let late = batch
            .drain(..)
            .any(|row| state.apply(ID, &mut record, &row).is_err());
        if late {
            (state, record) = replay_state(ID, &arrived).unwrap();
        }
        stored = Some((serde_json::to_value(&state).unwrap(), Value::Object(record)));
    }
    let (state, record) = stored.expect("at least one row");
    let state = FoldState::decode(state);
    let record: Map<String, Value> = serde_json::from_value(record).unwrap();
    let deleted = state.is_deleted(&record);
    (record, deleted)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn the_fold_agrees_with_the_contracts_words(
        rows in rows(),
        arrival in vec(any::<Index>(), 14),
        cuts in vec(any::<bool>(), 14),
    ) {
        let expected = browser::fold(ID, &rows);
        let replayed = replay(ID, &rows).unwrap();
        prop_assert_eq!((&replayed.record, replayed.deleted), (&expected.0, expected.1));
        prop_assert_eq!(fold_as_applier(&rows, &arrival, &cuts), expected);
    }

    #[test]
    fn replay_ignores_input_order(rows in rows(), arrival in vec(any::<Index>(), 14)) {
        let mut left: Vec<usize> = (0..rows.len()).collect();
        let shuffled: Vec<ChangeRow> =
            arrival.iter().take(rows.len()).map(|ix| rows[left.remove(ix.index(left.len()))].clone()).collect();
        prop_assert_eq!(replay(ID, &shuffled), replay(ID, &rows));
    }

    /// A row given twice counts once, in the replay and when it comes
    /// again to the incremental fold (which asks for a replay).
    #[test]
    fn a_row_given_twice_counts_once(rows in rows(), again in any::<Index>()) {
        let twice = rows[again.index(rows.len())].clone();
        let mut more = rows.clone();
        more.push(twice.clone());
        prop_assert_eq!(replay(ID, &more), replay(ID, &rows));
        let (mut state, mut record) = replay_state(ID, &rows).unwrap();
        prop_assert_eq!(state.apply(ID, &mut record, &twice), Err(ReplayNeeded::Late));
    }
}
