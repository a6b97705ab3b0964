//! Field-level last-writer-wins fold (contract section 2).
//!
//! # The rule
//!
//! A record's value is the fold of its change rows in order. The first row
//! seeds `{id: record_id, ...data}`; its `field_timestamps` seed the stamps of
//! its fields (a field without a string entry there has no stamp). For each
//! later row and each key in its `data`, the stamp is `field_timestamps[key]`
//! when that is a string, else the row's `created_at` as JavaScript's
//! `toISOString()` writes it ([`iso_millis`]); the value wins when
//! `stamp >= current stamp` (strings compare bytewise; a field with no stamp
//! loses to any stamp). A row with op `delete`, or whose `data` carries a
//! non-empty `deletedAt` (anything but `null`, `""`, `false`), deletes the
//! record, and a deleted record stays deleted whatever arrives later.
//!
//! # Order
//!
//! Rows of one transaction share `created_at`, so "created_at order" is made
//! total as `(created_at, id)`: `created_at` in microseconds (Postgres'
//! precision), then the change id compared as 16 bytes, which is how Postgres
//! orders `uuid`, so `ORDER BY created_at, id` reads rows in fold order.
//!
//! # Incremental fold
//!
//! Rows reach the reactor in any order and any batch split, so it cannot
//! replay. It keeps a [`FoldState`] beside the record instead, built on this
//! invariant: in a sequential replay a field ends with the value of the row
//! that maximises the rank `(stamp, created_at, id)`, where the first row's
//! unstamped fields have stamp `None` (below every string) and every other
//! row's fields have a string stamp. (By induction: a later row's
//! `(created_at, id)` is greater, so `stamp >= current` is exactly
//! `rank > current rank`.) Taking a maximum does not care about arrival order;
//! the one thing that does is which row is first, so the state remembers the
//! first row and, when an earlier row displaces it, re-ranks its unstamped
//! fields with their now-real stamp `iso(created_at)`. [`replay`] is the
//! plain sequential fold; the property tests in `fold_props.rs` check that
//! any permutation and batching of rows through [`FoldState::apply`] (state
//! round-tripped through JSON between batches) gives what [`replay`] gives.
//!
//! Ambiguities settled here: a `field_timestamps` entry for a key absent from
//! `data` is ignored, also on the first row; `data.id` overrides the seeded
//! `id` like any field (a JS spread does the same); a delete row's `data` is
//! folded like any other, and the record value keeps folding after deletion;
//! a row's non-empty `deletedAt` deletes even if that value loses the field
//! (deletion is a property of rows, which keeps it independent of order).

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

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
    fn order_key(&self) -> (i64, Uuid) {
        (self.created_at.timestamp_micros(), self.id)
    }

    fn explicit_stamp(&self, key: &str) -> Option<&str> {
        self.field_timestamps.get(key).and_then(Value::as_str)
    }

    fn deletes(&self) -> bool {
        self.op == Op::Delete || self.data.get("deletedAt").is_some_and(is_non_empty)
    }
}

fn is_non_empty(value: &Value) -> bool {
    !matches!(value, Value::Null | Value::Bool(false)) && value.as_str() != Some("")
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
/// `(created_at, id)` order (a row given twice counts once), the first seeds,
/// each later field wins on `stamp >= current`. `None` when there are no rows.
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
    let mut deleted = first.deletes();

    let derived: Vec<String> = later.iter().map(|row| iso_millis(row.created_at)).collect();
    for (row, derived) in later.iter().zip(&derived) {
        for (key, value) in &row.data {
            let stamp = row.explicit_stamp(key).unwrap_or(derived);
            if stamps
                .get(key.as_str())
                .map_or(true, |current| stamp >= *current)
            {
                record.insert(key.clone(), value.clone());
                stamps.insert(key, stamp);
            }
        }
        deleted |= row.deletes();
    }
    Some(Folded { record, deleted })
}

/// Where a field's value came from, ordered as LWW orders it: the derived
/// `Ord` compares `stamp`, then `at`, then `change` (`None` below any stamp).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Rank {
    /// The stamp the value won with; `None` only for unstamped fields of the
    /// current first row (a displaced first row's fields are raised).
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    stamp: Option<String>,
    /// The row's `created_at` in microseconds since the epoch.
    #[serde(rename = "t")]
    at: i64,
    /// The row's change id: breaks ties and identifies the row.
    #[serde(rename = "c")]
    change: Uuid,
}

/// The earliest row applied so far: the only row whose fields can be
/// unstamped, until an earlier row arrives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct FirstRow {
    #[serde(rename = "t")]
    at: i64,
    #[serde(rename = "c")]
    change: Uuid,
    /// Values of its unstamped fields that it does NOT hold (it lost them).
    /// Held ones are in the record; these would be lost for good, yet when an
    /// earlier row displaces this one they get the stamp `iso(created_at)`
    /// and may win back what they lost while unstamped.
    #[serde(rename = "u", default, skip_serializing_if = "Map::is_empty")]
    lost: Map<String, Value>,
}

/// What the incremental fold keeps beside a record (persisted as JSON with
/// the snapshot, hence the one-letter names). The values themselves live only
/// in the record map, except `FirstRow::lost`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FoldState {
    /// Per field, the rank of the row whose value the record holds. A field
    /// missing here has no winner (for `id`: the seeded record id).
    #[serde(rename = "f", default, skip_serializing_if = "BTreeMap::is_empty")]
    fields: BTreeMap<String, Rank>,
    /// The earliest row so far; `None` before the first apply.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    first: Option<FirstRow>,
    /// Sticky: set by any deleting row, whatever its position.
    #[serde(rename = "d", default, skip_serializing_if = "is_false")]
    deleted: bool,
    /// Rows applied. The queue applies each change once; a row applied again
    /// is recognised and not counted when it is the first row or holds a
    /// field. One that is neither is counted again (telling it apart would
    /// mean keeping every id), though it changes nothing else.
    #[serde(rename = "n", default)]
    rows: u64,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl FoldState {
    /// Folds one row into `record`, in any order relative to other rows.
    /// `record` is the map persisted with this state (empty before the first
    /// apply). Returns whether the record value or the deleted flag changed,
    /// so a caller can skip re-arming a timer. Re-applying a row changes
    /// neither (see `rows_applied` for the counter).
    pub fn apply(
        &mut self,
        record_id: &str,
        record: &mut Map<String, Value>,
        row: &ChangeRow,
    ) -> bool {
        let (at, change) = row.order_key();
        if self.already_applied(row) {
            return false;
        }
        self.rows += 1;
        let mut changed = false;
        let is_later = self
            .first
            .as_ref()
            .is_some_and(|first| (at, change) > (first.at, first.change));
        if is_later {
            let derived = iso_millis(row.created_at);
            for (key, value) in &row.data {
                let stamp = row.explicit_stamp(key).unwrap_or(&derived);
                let rank = Rank {
                    stamp: Some(stamp.to_owned()),
                    at,
                    change,
                };
                changed |= self.merge(record, key, value, rank);
            }
        } else {
            changed |= self.displace_first(record);
            self.first = Some(FirstRow {
                at,
                change,
                lost: Map::new(),
            });
            for (key, value) in &row.data {
                let stamp = row.explicit_stamp(key).map(str::to_owned);
                changed |= self.merge(record, key, value, Rank { stamp, at, change });
            }
        }
        if row.deletes() && !self.deleted {
            self.deleted = true;
            changed = true;
        }
        if !self.fields.contains_key("id")
            && record.get("id").and_then(Value::as_str) != Some(record_id)
        {
            record.insert("id".to_owned(), Value::String(record_id.to_owned()));
            changed = true;
        }
        changed
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted
    }

    pub fn rows_applied(&self) -> u64 {
        self.rows
    }

    /// Cheap duplicate check: the row is the first row, or holds a field.
    fn already_applied(&self, row: &ChangeRow) -> bool {
        let (at, change) = row.order_key();
        let same = |rank_at: i64, rank_change: Uuid| rank_at == at && rank_change == change;
        self.first
            .as_ref()
            .is_some_and(|first| same(first.at, first.change))
            || row.data.keys().any(|key| {
                self.fields
                    .get(key)
                    .is_some_and(|rank| same(rank.at, rank.change))
            })
    }

    /// Offers `value` for `key` with `rank`; it replaces the held value iff
    /// its rank is greater (or nothing is held). Keeps `FirstRow::lost`
    /// current: an unstamped value of the first row that loses, now or later,
    /// moves there. Returns whether the record value changed.
    fn merge(
        &mut self,
        record: &mut Map<String, Value>,
        key: &str,
        value: &Value,
        rank: Rank,
    ) -> bool {
        match self.fields.get_mut(key) {
            Some(held) if rank <= *held => {
                if rank.stamp.is_none() {
                    self.remember_lost(key, value.clone());
                }
                false
            }
            held => {
                let unstamped_loses = held.as_ref().is_some_and(|held| held.stamp.is_none());
                match held {
                    Some(held) => *held = rank,
                    None => {
                        self.fields.insert(key.to_owned(), rank);
                    }
                }
                let previous = record.insert(key.to_owned(), value.clone());
                let changed = previous.as_ref() != Some(value);
                if let (true, Some(previous)) = (unstamped_loses, previous) {
                    self.remember_lost(key, previous);
                }
                changed
            }
        }
    }

    fn remember_lost(&mut self, key: &str, value: Value) {
        if let Some(first) = &mut self.first {
            first.lost.insert(key.to_owned(), value);
        }
    }

    /// The first row stops being first: its unstamped fields now carry
    /// `iso(created_at)` like any later row's. The ones it holds just get the
    /// stamp; the ones it lost compete again and may win. Leaves `first` empty.
    fn displace_first(&mut self, record: &mut Map<String, Value>) -> bool {
        let Some(old) = self.first.take() else {
            return false;
        };
        // `at` came from a DateTime, so only a corrupted state falls back.
        let created_at =
            DateTime::from_timestamp_micros(old.at).unwrap_or(DateTime::<Utc>::MIN_UTC);
        let stamp = iso_millis(created_at);
        // Only the first row's fields are unstamped, so no need to match ids.
        for held in self.fields.values_mut().filter(|held| held.stamp.is_none()) {
            held.stamp = Some(stamp.clone());
        }
        let mut changed = false;
        for (key, value) in &old.lost {
            let rank = Rank {
                stamp: Some(stamp.clone()),
                at: old.at,
                change: old.change,
            };
            changed |= self.merge(record, key, value, rank);
        }
        changed
    }
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
        assert_eq!(
            replayed,
            Folded {
                record,
                deleted: state.is_deleted()
            }
        );
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
    fn deleted_stays_deleted_when_older_rows_arrive_later() {
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
        assert!(state.is_deleted());
        state.apply(ID, &mut record, &undelete);
        state.apply(ID, &mut record, &insert);
        assert!(state.is_deleted());
        assert!(fold(&[delete, undelete, insert]).deleted);
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
        state.rows = 3;
        assert_eq!(state, before.0);
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
            r#"{"f":{"x":{"s":"2025-01-01T00:00:00.000Z","t":1735689600000000,"c":"00000000-0000-0000-0000-000000000007"}},"r":{"t":1735689600000000,"c":"00000000-0000-0000-0000-000000000007"},"n":1}"#
        );
        assert_eq!(serde_json::from_str::<FoldState>(&text).unwrap(), state);
        assert_eq!(
            serde_json::from_str::<FoldState>("{}").unwrap(),
            FoldState::default()
        );
    }
}
