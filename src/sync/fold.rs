//! Field-level last-writer-wins fold (contract section 2), as the webapp
//! folds.
//!
//! # The rule
//!
//! A record's value is the fold of its change rows in order. The first row
//! seeds `{id: record_id, ...data}`, and its `field_timestamps` seed the
//! stamp of every field they name with a string, also of a field that row
//! does not carry in `data` (that field then has a stamp and no value: a
//! later row must reach the stamp to set it). A first-row field without a
//! string stamp has no stamp. For each later row and each key in its `data`,
//! the stamp is `field_timestamps[key]` when that is a string, else the row's
//! `created_at` as JavaScript's `toISOString()` writes it ([`iso_millis`]);
//! the value wins when `stamp >= current stamp` (strings compare bytewise; a
//! field with no stamp loses to any stamp). A later row's stamps for keys it
//! does not carry are ignored.
//!
//! Deletion: a row with op `delete` deletes the record for good, whatever
//! arrives later or earlier. `deletedAt` is a field like any other: the
//! record counts as deleted while its folded `deletedAt` is non-empty
//! (anything but absent, `null`, `""`, `false`), so a newer row clearing it
//! (an undo, a restore from the trash) makes the record live again.
//!
//! Values pass through unchanged: serde_json is built with `float_roundtrip`,
//! so a number parses to the nearest `f64` and prints back as the shortest
//! text of that `f64`, which is the text a browser's `JSON.stringify` wrote
//! (no browser writes more digits than an `f64` holds).
//!
//! # Order
//!
//! Rows in `created_at` order; rows with the same `created_at` (one
//! transaction's) in the order they were inserted, never by their random
//! `id`. `created_at` counts in microseconds (Postgres' precision); the
//! insertion order is [`ChangeRow::seq`], which the reader supplies:
//!
//! - applying queued changes: the `mana_ai.change_queue` id, an identity the
//!   trigger assigns row by row as the rows are inserted, so it is exactly
//!   the insertion order;
//! - replaying a record (`store::fold_record`, the rebuild): the position in
//!   `ORDER BY created_at, cmin, ctid`. Physical order (`ctid`) alone is NOT
//!   insertion order, not even in an append-only table: once VACUUM (which
//!   since Postgres 13 also runs on insert-only tables) has recorded free
//!   space, a row that does not fit the current page goes to an earlier page
//!   with room, so a transaction that inserts a large row and then a small
//!   one can store the small one first (seen on Postgres 15). `cmin`, the
//!   inserting command's number within its transaction, orders rows of
//!   separate INSERT statements exactly (and survives VACUUM FULL); only
//!   rows of one multi-row INSERT fall back to `ctid`. The original runner's
//!   index scan returned ties in `ctid` order, so this is never worse.
//!
//! `id` only breaks a tie of `(created_at, seq)`, which the readers never
//! produce, and identifies a row given twice.
//!
//! # Incremental fold
//!
//! Rows reach the reactor in any order and any batch split, so it cannot
//! replay. It keeps a [`FoldState`] beside the record instead, built on this
//! invariant: in a sequential replay a field ends with the value of the offer
//! that maximises the rank `(stamp, created_at, seq, id)`, where the offers
//! are every row's `data[key]` and the first row's stamps for keys it does
//! not carry (an offer of "no value"); the first row's unstamped fields rank
//! with stamp `None`, below every string. (By induction: a later row's
//! `(created_at, seq, id)` is greater, so `stamp >= current` is exactly
//! `rank > current rank`.) Taking a maximum does not care about arrival
//! order; the one thing that does is which row is first, so the state
//! remembers the first row and, when an earlier row displaces it, re-ranks
//! its unstamped fields with their now-real stamp `iso(created_at)` and
//! withdraws its stamp-only offers. [`replay`] is the plain sequential fold;
//! the property tests in `fold_props.rs` check that any permutation and
//! batching of rows through [`FoldState::apply`] (state round-tripped through
//! JSON between batches) gives what [`replay`] gives.
//!
//! # Stored states from before this rule
//!
//! The state persisted in `fold_state` changed shape (ranks carry `seq`,
//! the first row keeps the offers its stamp-only fields beat, the flag `d`
//! now means "an op delete was seen"), and the records stored by the old
//! rule are wrong in the ways issue 8 measured (a restored mission stays
//! deleted, digits lost, ties broken by uuid), which no decoding can repair:
//! the rows they came from are needed. So they are rebuilt, not decoded:
//! migration 0003 lists every user with a snapshot in
//! `mana_ai.fold_rebuild`, and the leader replays those users' histories
//! before it rebuilds the wheel (`reactor::rebuild`). The service role may
//! not insert into `change_queue`, so re-queueing was not an option.
//!
//! Ambiguities settled here: `data.id` overrides the seeded `id` like any
//! field (a JS spread does the same), and a stamp-only `id` offer that wins
//! leaves the seeded record id; a delete row's `data` is folded like any
//! other, and the record value keeps folding after deletion.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

pub use super::fold_state::FoldState;

/// The `op` column of `sync_changes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Insert,
    Update,
    Delete,
}

/// An `op` outside `insert | update | delete`: the row is bad input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown change op {0:?}")]
pub struct UnknownOp(pub String);

impl FromStr for Op {
    type Err = UnknownOp;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "insert" => Ok(Op::Insert),
            "update" => Ok(Op::Update),
            "delete" => Ok(Op::Delete),
            other => Err(UnknownOp(other.to_owned())),
        }
    }
}

/// One `sync_changes` row, reduced to what the fold reads.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeRow {
    pub id: Uuid,
    /// Insertion order among rows with the same `created_at` (see "Order"):
    /// the queue id when applying, the position in `(created_at, cmin,
    /// ctid)` order when replaying. Only compared between rows of one reader.
    pub seq: i64,
    pub op: Op,
    /// The changed fields; a SQL `NULL` is an empty map.
    pub data: Map<String, Value>,
    /// `{field: ISO string}`; missing, partial or non-string entries fall back
    /// to `created_at` (or to no stamp on the first row).
    pub field_timestamps: Map<String, Value>,
    pub created_at: DateTime<Utc>,
}

impl ChangeRow {
    /// This row's position in fold order.
    pub(super) fn order_key(&self) -> (i64, i64, Uuid) {
        (self.created_at.timestamp_micros(), self.seq, self.id)
    }

    pub(super) fn explicit_stamp(&self, key: &str) -> Option<&str> {
        self.field_timestamps.get(key).and_then(Value::as_str)
    }

    /// Stamps of keys this row does not carry: they count on the first row
    /// only, as stamps without a value.
    pub(super) fn stamp_only(&self) -> impl Iterator<Item = (&String, &str)> {
        self.field_timestamps
            .iter()
            .filter(|(key, _)| !self.data.contains_key(*key))
            .filter_map(|(key, stamp)| Some((key, stamp.as_str()?)))
    }
}

/// Whether a folded record counts as deleted by its `deletedAt` field.
pub fn deleted_at_set(record: &Map<String, Value>) -> bool {
    record.get("deletedAt").is_some_and(|value| {
        !matches!(value, Value::Null | Value::Bool(false)) && value.as_str() != Some("")
    })
}

/// `created_at` as JavaScript's `Date.prototype.toISOString()` writes it:
/// UTC, milliseconds truncated (never rounded), `YYYY-MM-DDTHH:MM:SS.sssZ`,
/// and `±YYYYYY` for years outside 0..=9999 as JavaScript does.
pub fn iso_millis(t: DateTime<Utc>) -> String {
    let year = t.year();
    let year = if (0..=9999).contains(&year) {
        format!("{year:04}")
    } else {
        format!("{year:+07}")
    };
    format!(
        "{year}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        // A leap second shows as 1000..=1999 ms; JavaScript has none.
        t.timestamp_subsec_millis().min(999)
    )
}

/// A record as a full replay of its rows leaves it.
#[derive(Clone, Debug, PartialEq)]
pub struct Folded {
    pub record: Map<String, Value>,
    pub deleted: bool,
}

/// Full sequential replay, worded as the contract words it: rows in
/// `(created_at, seq, id)` order (a row given twice counts once), the first
/// seeds values and stamps, each later field wins on `stamp >= current`.
/// `None` when there are no rows.
///
/// The reference for [`FoldState`], and the way other apps' records are read,
/// one at a time, when a mission lists them as inputs.
pub fn replay(record_id: &str, rows: &[ChangeRow]) -> Option<Folded> {
    let mut ordered: Vec<&ChangeRow> = rows.iter().collect();
    ordered.sort_by_key(|row| row.order_key());
    ordered.dedup_by_key(|row| row.id);
    let (first, later) = ordered.split_first()?;

    let mut record = Map::new();
    record.insert("id".to_owned(), Value::String(record_id.to_owned()));
    let mut stamps: HashMap<&str, &str> = HashMap::new();
    for (key, value) in &first.data {
        record.insert(key.clone(), value.clone());
        if let Some(stamp) = first.explicit_stamp(key) {
            stamps.insert(key, stamp);
        }
    }
    stamps.extend(first.stamp_only().map(|(key, stamp)| (key.as_str(), stamp)));
    let mut delete_op = first.op == Op::Delete;

    let derived: Vec<String> = later.iter().map(|row| iso_millis(row.created_at)).collect();
    for (row, derived) in later.iter().zip(&derived) {
        for (key, value) in &row.data {
            let stamp = row.explicit_stamp(key).unwrap_or(derived);
            if stamps
                .get(key.as_str())
                .is_none_or(|current| stamp >= *current)
            {
                record.insert(key.clone(), value.clone());
                stamps.insert(key, stamp);
            }
        }
        delete_op |= row.op == Op::Delete;
    }
    let deleted = delete_op || deleted_at_set(&record);
    Some(Folded { record, deleted })
}

#[cfg(test)]
#[path = "fold_props.rs"]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    const ID: &str = "mission-1";

    /// A row at `2025-01-01T00:00:00Z` plus `micros`, with id `n`.
    fn row(n: u128, micros: i64, op: Op, data: Value, stamps: Value) -> ChangeRow {
        let base = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let as_map = |v: Value| match v {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        ChangeRow {
            id: Uuid::from_u128(n),
            seq: n as i64,
            op,
            data: as_map(data),
            field_timestamps: as_map(stamps),
            created_at: base + chrono::Duration::microseconds(micros),
        }
    }

    fn upd(n: u128, micros: i64, data: Value, stamps: Value) -> ChangeRow {
        row(n, micros, Op::Update, data, stamps)
    }

    /// Folds `rows` in the given order incrementally and checks it against
    /// the replay; returns the replay.
    fn fold(rows: &[ChangeRow]) -> Folded {
        let (mut state, mut record) = (FoldState::default(), Map::new());
        for r in rows {
            state.apply(ID, &mut record, r);
        }
        let replayed = replay(ID, rows).unwrap();
        let deleted = state.is_deleted(&record);
        assert_eq!(replayed, Folded { record, deleted });
        replayed
    }

    #[test]
    fn iso_millis_truncates_like_to_iso_string() {
        let t = Utc.with_ymd_and_hms(2025, 3, 9, 7, 5, 3).unwrap()
            + chrono::Duration::microseconds(123_999);
        assert_eq!(iso_millis(t), "2025-03-09T07:05:03.123Z");
        assert_eq!(
            iso_millis(Utc.with_ymd_and_hms(12345, 1, 1, 0, 0, 0).unwrap()),
            "+012345-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn op_parses_the_three_ops_only() {
        assert_eq!("delete".parse::<Op>(), Ok(Op::Delete));
        assert_eq!("insert".parse::<Op>(), Ok(Op::Insert));
        assert_eq!("update".parse::<Op>(), Ok(Op::Update));
        assert_eq!("upsert".parse::<Op>(), Err(UnknownOp("upsert".into())));
    }

    #[test]
    fn first_row_seeds_id_data_and_stamps() {
        let first = row(
            1,
            0,
            Op::Insert,
            json!({"title": "a", "state": "active"}),
            json!({"title": "2030-01-01T00:00:00.000Z"}),
        );
        let later = upd(
            2,
            1_000,
            json!({"title": "b", "state": "paused"}),
            json!({}),
        );
        let folded = fold(&[first, later]);
        // title's seeded stamp is newer than the later row's created_at; state had none.
        assert_eq!(
            folded.record,
            json!({"id": ID, "title": "a", "state": "paused"})
                .as_object()
                .unwrap()
                .clone()
        );
        assert_eq!(replay(ID, &[]), None);
    }

    #[test]
    fn later_row_wins_on_equal_stamp_and_explicit_older_stamp_loses() {
        let s = "2025-01-01T00:00:00.500Z";
        let a = upd(1, 0, json!({"x": 1, "y": 1}), json!({"x": s, "y": s}));
        let b = upd(
            2,
            1,
            json!({"x": 2, "y": 2}),
            json!({"x": s, "y": "2025-01-01T00:00:00.499Z"}),
        );
        let folded = fold(&[b, a]);
        assert_eq!(
            (&folded.record["x"], &folded.record["y"]),
            (&json!(2), &json!(1))
        );
    }

    #[test]
    fn missing_stamp_falls_back_to_truncated_created_at() {
        let a = upd(
            1,
            0,
            json!({"x": 1}),
            json!({"x": "2025-01-01T00:00:00.124Z"}),
        );
        // Rounded, .123999 would be .124 and win by >=; truncated it is .123 and loses.
        let b = upd(2, 123_999, json!({"x": 2}), json!({}));
        assert_eq!(fold(&[a.clone(), b.clone()]).record["x"], json!(1));
        let c = upd(3, 124_000, json!({"x": 3}), json!({}));
        assert_eq!(fold(&[c, b, a]).record["x"], json!(3));
    }

    #[test]
    fn non_string_stamp_is_ignored() {
        let a = upd(
            1,
            0,
            json!({"x": 1}),
            json!({"x": "2025-01-01T00:00:00.002Z"}),
        );
        let b = upd(
            2,
            1_000,
            json!({"x": 2}),
            json!({"x": 99_999_999_999_999_u64}),
        );
        assert_eq!(fold(&[a.clone(), b]).record["x"], json!(1));
        let c = upd(3, 3_000, json!({"x": 3}), json!({"x": null}));
        assert_eq!(fold(&[a, c]).record["x"], json!(3));
    }

    #[test]
    fn delete_op_and_non_empty_deleted_at_delete() {
        let a = row(1, 0, Op::Insert, json!({"x": 1}), json!({}));
        assert!(fold(&[a.clone(), row(2, 1, Op::Delete, json!(null), json!({}))]).deleted);
        assert!(
            fold(&[
                a.clone(),
                upd(2, 1, json!({"deletedAt": "2025-01-02"}), json!({}))
            ])
            .deleted
        );
        assert!(fold(&[a.clone(), upd(2, 1, json!({"deletedAt": 0}), json!({}))]).deleted);
        for empty in [json!(null), json!(""), json!(false)] {
            assert!(!fold(&[a.clone(), upd(2, 1, json!({"deletedAt": empty}), json!({}))]).deleted);
        }
    }

    #[test]
    fn op_delete_is_final_even_against_older_rows_arriving_later() {
        let delete = row(3, 5_000, Op::Delete, json!({}), json!({}));
        let undelete = upd(
            2,
            1_000,
            json!({"deletedAt": null}),
            json!({"deletedAt": "2030-01-01T00:00:00.000Z"}),
        );
        let insert = row(1, 0, Op::Insert, json!({"x": 1}), json!({}));
        let (mut state, mut record) = (FoldState::default(), Map::new());
        assert!(state.apply(ID, &mut record, &delete));
        assert!(state.is_deleted(&record));
        state.apply(ID, &mut record, &undelete);
        state.apply(ID, &mut record, &insert);
        assert!(state.is_deleted(&record));
        assert!(fold(&[delete, undelete, insert]).deleted);
    }

    /// Issue 8 (b): `deletedAt` is a field; a newer row clearing it (an
    /// undo, a restore from the trash) makes the record live again.
    #[test]
    fn deleted_at_cleared_by_a_newer_row_restores_the_record() {
        let insert = row(1, 0, Op::Insert, json!({"state": "active"}), json!({}));
        let trash = upd(
            2,
            1_000,
            json!({"deletedAt": "2025-01-01T00:00:00.001Z"}),
            json!({}),
        );
        let restore = upd(3, 2_000, json!({"deletedAt": null}), json!({}));
        assert!(fold(&[insert.clone(), trash.clone()]).deleted);
        let restored = fold(&[restore.clone(), insert.clone(), trash.clone()]);
        assert!(!restored.deleted);
        assert_eq!(restored.record["deletedAt"], Value::Null);
        // A restore stamped before the trashing loses: still deleted.
        let mut stale = restore;
        stale.field_timestamps = json!({"deletedAt": "2024-12-31T00:00:00.000Z"})
            .as_object()
            .unwrap()
            .clone();
        assert!(fold(&[insert, stale, trash]).deleted);
    }

    /// Issue 8 (a): rows of one transaction share `created_at` and fold in
    /// insertion order (`seq`), not by their random ids.
    #[test]
    fn same_created_at_folds_in_insertion_order_not_id_order() {
        // Inserted first, but with the larger id.
        let mut done = upd(9, 0, json!({"state": "done"}), json!({}));
        done.seq = 1;
        let mut active = upd(2, 0, json!({"state": "active"}), json!({}));
        active.seq = 2;
        let mut first = row(5, -1_000, Op::Insert, json!({"title": "t"}), json!({}));
        first.seq = 0;
        assert_eq!(
            fold(&[active.clone(), done.clone(), first.clone()]).record["state"],
            json!("active")
        );
        (done.seq, active.seq) = (2, 1);
        assert_eq!(fold(&[active, done, first]).record["state"], json!("done"));
    }

    /// Issue 8 (c): the first row's stamps seed fields it does not carry.
    #[test]
    fn first_row_stamps_seed_fields_it_does_not_carry() {
        let first = row(
            1,
            0,
            Op::Insert,
            json!({"title": "a"}),
            json!({"title": "2025-01-01T00:00:00.000Z", "state": "2030-01-01T00:00:00.000Z"}),
        );
        let later = upd(2, 5_000, json!({"state": "active"}), json!({}));
        let folded = fold(&[later.clone(), first.clone()]);
        assert_eq!(folded.record.get("state"), None, "{:?}", folded.record);
        let newer = upd(
            3,
            6_000,
            json!({"state": "paused"}),
            json!({"state": "2030-01-01T00:00:00.000Z"}),
        );
        assert_eq!(
            fold(&[newer.clone(), first.clone(), later.clone()]).record["state"],
            json!("paused")
        );
        // Only the first row's stamps count: once an earlier row comes, the
        // stamp is withdrawn and the best value it held off comes back.
        let earlier = row(4, -1_000, Op::Insert, json!({}), json!({}));
        let (mut state, mut record) = (FoldState::default(), Map::new());
        for r in [&first, &later] {
            state.apply(ID, &mut record, r);
        }
        assert_eq!(record.get("state"), None);
        assert!(state.apply(ID, &mut record, &earlier));
        assert_eq!(record["state"], json!("active"));
        assert_eq!(
            fold(&[first, later, earlier]).record["state"],
            json!("active")
        );
        // A stamp-only `id` keeps the record id against an older data.id.
        let id_first = row(
            5,
            0,
            Op::Insert,
            json!({}),
            json!({"id": "2030-01-01T00:00:00.000Z"}),
        );
        let id_later = upd(6, 1_000, json!({"id": "other"}), json!({}));
        assert_eq!(fold(&[id_later, id_first]).record["id"], json!(ID));
    }

    /// Issue 8 (d): numbers keep every digit an f64 holds (serde_json's
    /// `float_roundtrip`), as the browser's JSON.parse/JSON.stringify do.
    #[test]
    fn numbers_round_trip_exactly() {
        for text in [
            "0.024451889831603846",
            "1.7976931348623157e308",
            "5e-324",
            "0.1",
            "123456789.12345679",
        ] {
            let value: Value = serde_json::from_str(text).unwrap();
            let parsed: f64 = text.parse().unwrap();
            assert_eq!(value.as_f64(), Some(parsed), "{text}");
            let back: Value = serde_json::from_str(&value.to_string()).unwrap();
            assert_eq!(back, value, "{text}");
        }
        let text = r#"{"x":0.024451889831603846}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v.to_string(), text);
    }

    /// The first row's unstamped fields rank lowest only while it is first.
    #[test]
    fn displaced_first_row_reranks_its_unstamped_fields() {
        // `a` is first: x and y unstamped. `b` (later) stamps x and y at .005,
        // older than a's own created_at (.010), and beats them while a is first.
        let a = row(
            1,
            10_000,
            Op::Insert,
            json!({"x": "a", "y": "a"}),
            json!({}),
        );
        let b = upd(
            2,
            20_000,
            json!({"x": "b"}),
            json!({"x": "2025-01-01T00:00:00.005Z"}),
        );
        let c = upd(3, 1_000, json!({"z": "c"}), json!({}));
        let d = upd(
            4,
            30_000,
            json!({"y": "d"}),
            json!({"y": "2025-01-01T00:00:00.008Z"}),
        );
        let (mut state, mut record) = (FoldState::default(), Map::new());
        for r in [&a, &b] {
            state.apply(ID, &mut record, r);
        }
        assert_eq!(record["x"], json!("b"));
        // `c` is earlier: a stops being first, x (lost) comes back at .010.
        assert!(state.apply(ID, &mut record, &c));
        assert_eq!(record["x"], json!("a"));
        // y (held) was raised to .010, so d's .008 no longer beats it.
        assert!(!state.apply(ID, &mut record, &d));
        assert_eq!(record["y"], json!("a"));
        assert_eq!(
            Some(Folded {
                record,
                deleted: false
            }),
            replay(ID, &[d, c, b, a])
        );
    }

    #[test]
    fn reapplying_rows_is_a_no_op() {
        let rows = [
            row(1, 10_000, Op::Insert, json!({"x": 1, "y": 1}), json!({})),
            upd(
                2,
                20_000,
                json!({"x": 2}),
                json!({"x": "2025-01-01T00:00:00.005Z"}),
            ),
            upd(3, 1_000, json!({"z": 3}), json!({})),
        ];
        let (mut state, mut record) = (FoldState::default(), Map::new());
        for r in &rows {
            state.apply(ID, &mut record, r);
        }
        let before = (state.clone(), record.clone());
        assert_eq!(state.rows_applied(), 3);
        // Row 3 is first, row 1 holds x and y: recognised, nothing moves.
        for r in [&rows[2], &rows[0]] {
            assert!(!state.apply(ID, &mut record, r));
        }
        assert_eq!((&state, &record), (&before.0, &before.1));
        // Row 2 holds nothing, so only the counter can tell it came again.
        assert!(!state.apply(ID, &mut record, &rows[1]));
        assert_eq!(record, before.1);
        assert_eq!(state.rows_applied(), 4);
        let without_counter = |state: &FoldState| {
            let mut v = serde_json::to_value(state).unwrap();
            v.as_object_mut().unwrap().remove("n");
            v
        };
        assert_eq!(without_counter(&state), without_counter(&before.0));
    }

    #[test]
    fn state_serializes_compactly_and_round_trips() {
        let (mut state, mut record) = (FoldState::default(), Map::new());
        state.apply(
            ID,
            &mut record,
            &upd(
                7,
                0,
                json!({"x": 1}),
                json!({"x": "2025-01-01T00:00:00.000Z"}),
            ),
        );
        let text = serde_json::to_string(&state).unwrap();
        assert_eq!(
            text,
            r#"{"f":{"x":{"s":"2025-01-01T00:00:00.000Z","t":1735689600000000,"q":7,"c":"00000000-0000-0000-0000-000000000007"}},"r":{"t":1735689600000000,"q":7,"c":"00000000-0000-0000-0000-000000000007"},"n":1}"#
        );
        assert_eq!(serde_json::from_str::<FoldState>(&text).unwrap(), state);
        assert_eq!(
            serde_json::from_str::<FoldState>("{}").unwrap(),
            FoldState::default()
        );
    }
}
