//! The fold's state beside a record, and the one step that applies a row
//! the way a browser applies a pulled change (the rule is in the header of
//! `fold.rs`). [`FoldState::step`] is the only place the rule lives: the
//! incremental [`FoldState::apply`] and the full [`super::fold::replay`]
//! both take it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::row::{deleted_at_set, iso_millis, ChangeRow, Op, OrderKey};

/// The shape of the stored state this code writes. A stored state of
/// another version (the rule before issue 18 stored none, and decodes as 0)
/// is never folded into: it asks for a replay.
pub const FOLD_VERSION: u32 = 2;

/// The key a record's own id is kept under; never taken from `data`.
const ID: &str = "id";

/// Why a row cannot be folded onto the state as it is: the record must be
/// replayed from its history instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayNeeded {
    /// The row comes at or before the last row folded (rows of concurrent
    /// transactions committed out of `created_at` order, or a row given
    /// twice): the result depends on where it falls.
    #[error("the row comes at or before the last row folded")]
    Late,
    /// The stored state is of another version (or unreadable).
    #[error("the stored fold state is of another version")]
    Stale,
}

/// What the fold keeps beside a record (persisted as JSON with the
/// snapshot, hence the one-letter names); the values live in the record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FoldState {
    /// [`FOLD_VERSION`]; absent (0) in every state stored before it.
    #[serde(rename = "v", default)]
    version: u32,
    /// Whether a browser would hold the record at all.
    #[serde(rename = "e", default)]
    exists: bool,
    /// Per field, the stamp its value won with.
    #[serde(rename = "s", default, skip_serializing_if = "BTreeMap::is_empty")]
    stamps: BTreeMap<String, String>,
    /// The last row folded; a row at or before it needs a replay.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    last: Option<OrderKey>,
    /// Rows folded.
    #[serde(rename = "n", default)]
    rows: u64,
}

impl Default for FoldState {
    /// The state of a record no row has reached yet.
    fn default() -> Self {
        FoldState {
            version: FOLD_VERSION,
            exists: false,
            stamps: BTreeMap::new(),
            last: None,
            rows: 0,
        }
    }
}

impl FoldState {
    /// A stored state as JSON; one of another version, or one that does not
    /// decode, is stale (every [`Self::apply`] asks for a replay), never
    /// read as a state of this shape.
    pub fn decode(stored: Value) -> FoldState {
        match serde_json::from_value::<FoldState>(stored) {
            Ok(state) if state.version == FOLD_VERSION => state,
            _ => FoldState::stale(),
        }
    }

    /// A state that asks for a replay before anything is folded into it.
    pub fn stale() -> FoldState {
        FoldState {
            version: 0,
            ..FoldState::default()
        }
    }

    pub fn is_stale(&self) -> bool {
        self.version != FOLD_VERSION
    }

    /// Folds `row` after every row folded so far. `record` is the map
    /// persisted with this state (empty before the first row). Returns
    /// whether the record changed, or that the record must be replayed
    /// (nothing is changed then).
    pub fn apply(
        &mut self,
        record_id: &str,
        record: &mut Map<String, Value>,
        row: &ChangeRow,
    ) -> Result<bool, ReplayNeeded> {
        if self.is_stale() {
            return Err(ReplayNeeded::Stale);
        }
        let key = row.order_key();
        if self.last.is_some_and(|last| key <= last) {
            return Err(ReplayNeeded::Late);
        }
        Ok(self.step(record_id, record, row))
    }

    /// Folds `row` as if it came after every row folded so far, whatever
    /// its place: the fallback when a replay is refused (a history over the
    /// replay limit). A stale state is taken as it is: the record's fields
    /// without stamps, existing when it holds anything.
    pub fn apply_as_last(
        &mut self,
        record_id: &str,
        record: &mut Map<String, Value>,
        row: &ChangeRow,
    ) -> bool {
        if self.is_stale() {
            *self = FoldState {
                exists: !record.is_empty(),
                last: self.last,
                rows: self.rows,
                ..FoldState::default()
            };
        }
        self.step(record_id, record, row)
    }

    /// Deleted while the record does not exist or its `deletedAt` is a
    /// non-empty string.
    pub fn is_deleted(&self, record: &Map<String, Value>) -> bool {
        !self.exists || deleted_at_set(record)
    }

    pub fn rows_applied(&self) -> u64 {
        self.rows
    }

    /// The one step of the rule: `row` applied as a browser applies it.
    pub(super) fn step(
        &mut self,
        record_id: &str,
        record: &mut Map<String, Value>,
        row: &ChangeRow,
    ) -> bool {
        let key = row.order_key();
        self.last = Some(self.last.map_or(key, |last| last.max(key)));
        self.rows += 1;
        match row.op {
            Op::Update => {
                let delivered = row
                    .data
                    .iter()
                    .filter(|(key, _)| key.as_str() != ID)
                    .filter_map(|(key, value)| Some((key, value, row.explicit_stamp(key)?)));
                self.put_fields(record_id, record, delivered.collect())
            }
            Op::Insert => {
                let time = insert_time(row);
                let fields = (row.data.iter())
                    .filter(|(key, _)| key.as_str() != ID)
                    .map(|(key, value)| (key, value, time.as_str()));
                let fields: Vec<_> = fields.collect();
                // Even without fields, an insert creates the record.
                let created = !self.exists && self.create(record_id, record);
                self.put_fields(record_id, record, fields) || created
            }
            Op::Delete => self.delete(record, row),
        }
    }

    /// Update fields `(key, value, at)`: a field wins when `at >=` its
    /// current stamp (as the record was before this row). No fields:
    /// nothing (the sync server sends none, and a browser ignores the
    /// change). A record that does not exist is created from the fields.
    fn put_fields(
        &mut self,
        record_id: &str,
        record: &mut Map<String, Value>,
        fields: Vec<(&String, &Value, &str)>,
    ) -> bool {
        if fields.is_empty() {
            return false;
        }
        if !self.exists {
            self.create(record_id, record);
            for (key, value, at) in fields {
                record.insert(key.clone(), value.clone());
                self.stamps.insert(key.clone(), at.to_owned());
            }
            return true;
        }
        // A field without a stamp of its own compares against the record's
        // `updatedAt` (a string) as it was before this row, else ''.
        let fallback = text(record, "updatedAt").unwrap_or_default().to_owned();
        let mut changed = false;
        for (key, value, at) in fields {
            let current = self.stamps.get(key.as_str()).unwrap_or(&fallback);
            if at >= current.as_str() {
                changed |= record.insert(key.clone(), value.clone()).as_ref() != Some(value);
                self.stamps.insert(key.clone(), at.to_owned());
            }
        }
        changed
    }

    /// Starts an empty record `{id}`.
    fn create(&mut self, record_id: &str, record: &mut Map<String, Value>) -> bool {
        self.exists = true;
        self.stamps.clear();
        record.clear();
        record.insert(ID.to_owned(), Value::String(record_id.to_owned()));
        true
    }

    /// A delete: with a non-empty string `data.deletedAt`, an LWW write of
    /// `deletedAt` and `updatedAt`; without one, the record is removed.
    fn delete(&mut self, record: &mut Map<String, Value>, row: &ChangeRow) -> bool {
        if !self.exists {
            return false;
        }
        let Some(at) = text(&row.data, "deletedAt").filter(|at| !at.is_empty()) else {
            self.exists = false;
            self.stamps.clear();
            record.clear();
            return true;
        };
        let current = match self.stamps.get("deletedAt") {
            Some(stamp) => stamp.as_str(),
            None => text(record, "deletedAt").unwrap_or_default(),
        };
        if at < current {
            return false;
        }
        let mut changed = false;
        for key in ["deletedAt", "updatedAt"] {
            let value = Value::String(at.to_owned());
            changed |= record.insert(key.to_owned(), value.clone()) != Some(value);
            self.stamps.insert(key.to_owned(), at.to_owned());
        }
        changed
    }
}

/// An insert's time: `data.updatedAt`, else `data.createdAt` (strings),
/// else the row's `created_at` as `toISOString()` writes it.
fn insert_time(row: &ChangeRow) -> String {
    text(&row.data, "updatedAt")
        .or_else(|| text(&row.data, "createdAt"))
        .map_or_else(|| iso_millis(row.created_at), str::to_owned)
}

fn text<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}
