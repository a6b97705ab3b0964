//! The incremental fold: what the reactor keeps beside each record so that
//! rows folded in any order and any batch split give what a full replay
//! gives (the invariant is in the header of `fold.rs`).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::fold::{deleted_at_set, iso_millis, ChangeRow, Op};

/// Where a field's value came from, ordered as LWW orders it: the derived
/// `Ord` compares `stamp`, then `at`, then `seq`, then `change` (`None`
/// below any stamp).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Rank {
    /// The stamp the value won with; `None` only for unstamped fields of the
    /// current first row (a displaced first row's fields are raised).
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    stamp: Option<String>,
    /// The row's `created_at` in microseconds since the epoch.
    #[serde(rename = "t")]
    at: i64,
    /// The row's insertion order among rows of the same `created_at`.
    #[serde(rename = "q", default)]
    seq: i64,
    /// The row's change id: identifies the row.
    #[serde(rename = "c")]
    change: Uuid,
    /// A stamp without a value: the current first row's `field_timestamps`
    /// for a key it does not carry. The record holds no value for the key
    /// (for `id`: the seeded record id).
    #[serde(rename = "p", default, skip_serializing_if = "is_false")]
    stamp_only: bool,
}

/// The earliest row applied so far: the only row whose fields can be
/// unstamped or stamp-only, until an earlier row arrives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct FirstRow {
    #[serde(rename = "t")]
    at: i64,
    #[serde(rename = "q", default)]
    seq: i64,
    #[serde(rename = "c")]
    change: Uuid,
    /// Values of its unstamped fields that it does NOT hold (it lost them).
    /// Held ones are in the record; these would be lost for good, yet when an
    /// earlier row displaces this one they get the stamp `iso(created_at)`
    /// and may win back what they lost while unstamped.
    #[serde(rename = "u", default, skip_serializing_if = "Map::is_empty")]
    lost: Map<String, Value>,
    /// Per key it holds stamp-only: the best offer that lost to that stamp.
    /// When an earlier row displaces this one, its stamps stop counting and
    /// these take their place.
    #[serde(rename = "h", default, skip_serializing_if = "BTreeMap::is_empty")]
    shadowed: BTreeMap<String, (Rank, Value)>,
}

/// What the incremental fold keeps beside a record (persisted as JSON with
/// the snapshot, hence the one-letter names). The values themselves live
/// only in the record map, except `FirstRow::lost` and `FirstRow::shadowed`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FoldState {
    /// Per field, the rank of the offer the record holds. A field missing
    /// here has no winner (for `id`: the seeded record id).
    #[serde(rename = "f", default, skip_serializing_if = "BTreeMap::is_empty")]
    fields: BTreeMap<String, Rank>,
    /// The earliest row so far; `None` before the first apply.
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    first: Option<FirstRow>,
    /// Sticky: a row with op `delete` was applied, whatever its position.
    #[serde(rename = "d", default, skip_serializing_if = "is_false")]
    delete_op: bool,
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
    /// apply). Returns whether the record value or the op-delete flag
    /// changed, so a caller can skip re-arming a timer. Re-applying a row
    /// changes neither (see `rows_applied` for the counter).
    pub fn apply(
        &mut self,
        record_id: &str,
        record: &mut Map<String, Value>,
        row: &ChangeRow,
    ) -> bool {
        let (at, seq, change) = row.order_key();
        if self.already_applied(row) {
            return false;
        }
        self.rows += 1;
        let mut changed = false;
        let rank = |stamp: Option<&str>, stamp_only: bool| Rank {
            stamp: stamp.map(str::to_owned),
            at,
            seq,
            change,
            stamp_only,
        };
        let is_later = self
            .first
            .as_ref()
            .is_some_and(|first| (at, seq, change) > (first.at, first.seq, first.change));
        if is_later {
            let derived = iso_millis(row.created_at);
            for (key, value) in &row.data {
                let stamp = row.explicit_stamp(key).unwrap_or(&derived);
                changed |= self.merge(record, key, value, rank(Some(stamp), false));
            }
        } else {
            changed |= self.displace_first(record);
            self.first = Some(FirstRow {
                at,
                seq,
                change,
                lost: Map::new(),
                shadowed: BTreeMap::new(),
            });
            for (key, value) in &row.data {
                changed |= self.merge(record, key, value, rank(row.explicit_stamp(key), false));
            }
            for (key, stamp) in row.stamp_only() {
                changed |= self.merge_stamp_only(record_id, record, key, rank(Some(stamp), true));
            }
        }
        if row.op == Op::Delete && !self.delete_op {
            self.delete_op = true;
            changed = true;
        }
        let id_has_value = self.fields.get("id").is_some_and(|rank| !rank.stamp_only);
        if !id_has_value && record.get("id").and_then(Value::as_str) != Some(record_id) {
            record.insert("id".to_owned(), Value::String(record_id.to_owned()));
            changed = true;
        }
        changed
    }

    /// Deleted by an op `delete`, or while the folded `deletedAt` is set.
    pub fn is_deleted(&self, record: &Map<String, Value>) -> bool {
        self.delete_op || deleted_at_set(record)
    }

    pub fn rows_applied(&self) -> u64 {
        self.rows
    }

    /// Cheap duplicate check: the row is the first row, or holds a field.
    fn already_applied(&self, row: &ChangeRow) -> bool {
        let (at, _, change) = row.order_key();
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
    /// its rank is greater (or nothing is held). Keeps `FirstRow::lost` and
    /// `FirstRow::shadowed` current. Returns whether the record changed.
    fn merge(
        &mut self,
        record: &mut Map<String, Value>,
        key: &str,
        value: &Value,
        rank: Rank,
    ) -> bool {
        match self.fields.get_mut(key) {
            Some(held) if rank <= *held => {
                if held.stamp_only {
                    self.shadow(key, rank, value.clone());
                } else if rank.stamp.is_none() {
                    self.remember_lost(key, value.clone());
                }
                false
            }
            held => {
                let unstamped_loses = held.as_ref().is_some_and(|held| held.stamp.is_none());
                let stamp_only_loses = held.as_ref().is_some_and(|held| held.stamp_only);
                match held {
                    Some(held) => *held = rank,
                    None => {
                        self.fields.insert(key.to_owned(), rank);
                    }
                }
                if stamp_only_loses {
                    if let Some(first) = &mut self.first {
                        first.shadowed.remove(key);
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

    /// Offers "no value, but this stamp" for `key` (the first row's stamp of
    /// a key it does not carry). When it wins, the record drops the key (for
    /// `id`: back to the record id) and the offer it beat is shadowed.
    fn merge_stamp_only(
        &mut self,
        record_id: &str,
        record: &mut Map<String, Value>,
        key: &str,
        rank: Rank,
    ) -> bool {
        let beaten = match self.fields.get(key) {
            Some(held) if rank <= *held => return false,
            held => held.cloned(),
        };
        self.fields.insert(key.to_owned(), rank);
        let previous = if key == "id" {
            record.insert(key.to_owned(), Value::String(record_id.to_owned()))
        } else {
            record.remove(key)
        };
        let changed = match (key, &previous) {
            ("id", Some(Value::String(id))) => id != record_id,
            (_, previous) => previous.is_some(),
        };
        if let (Some(beaten), Some(previous)) = (beaten, previous) {
            self.shadow(key, beaten, previous);
        }
        changed
    }

    fn remember_lost(&mut self, key: &str, value: Value) {
        if let Some(first) = &mut self.first {
            first.lost.insert(key.to_owned(), value);
        }
    }

    /// Keeps the best offer that lost to the first row's stamp for `key`.
    fn shadow(&mut self, key: &str, rank: Rank, value: Value) {
        let Some(first) = &mut self.first else {
            return;
        };
        match first.shadowed.get(key) {
            Some((best, _)) if *best >= rank => {}
            _ => {
                first.shadowed.insert(key.to_owned(), (rank, value));
            }
        }
    }

    /// The first row stops being first. Its stamp-only offers are withdrawn
    /// (the best offer each beat takes its place); its unstamped fields now
    /// carry `iso(created_at)` like any later row's: the ones it holds just
    /// get the stamp, the ones it lost compete again and may win. Leaves
    /// `first` empty.
    fn displace_first(&mut self, record: &mut Map<String, Value>) -> bool {
        let Some(mut old) = self.first.take() else {
            return false;
        };
        let mut changed = false;
        let stamp_only: Vec<String> = (self.fields.iter())
            .filter(|(_, held)| held.stamp_only)
            .map(|(key, _)| key.clone())
            .collect();
        for key in stamp_only {
            match old.shadowed.remove(&key) {
                Some((rank, value)) => {
                    self.fields.insert(key.clone(), rank);
                    changed |= record.insert(key, value.clone()).as_ref() != Some(&value);
                }
                None => {
                    // Nothing else offered a value: the field has none.
                    self.fields.remove(&key);
                }
            }
        }
        // `at` came from a DateTime, so only a corrupted state falls back.
        let created_at =
            DateTime::from_timestamp_micros(old.at).unwrap_or(DateTime::<Utc>::MIN_UTC);
        let stamp = iso_millis(created_at);
        // Only the first row's fields are unstamped, so no need to match ids.
        for held in self.fields.values_mut().filter(|held| held.stamp.is_none()) {
            held.stamp = Some(stamp.clone());
        }
        for (key, value) in &old.lost {
            let rank = Rank {
                stamp: Some(stamp.clone()),
                at: old.at,
                seq: old.seq,
                change: old.change,
                stamp_only: false,
            };
            changed |= self.merge(record, key, value, rank);
        }
        changed
    }
}
