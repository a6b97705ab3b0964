//! One row of the change log as the fold reads it, its place in fold
//! order, and the record values the contract defines (`deletedAt`,
//! `nextRunAt`, JavaScript's ISO time). A leaf: the fold, its state, the
//! store and the wheel all read these, and it reads none of them.

use std::str::FromStr;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// A row's place in fold order: `created_at` in microseconds, then its
/// insertion order, then its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OrderKey {
    #[serde(rename = "t")]
    pub at: i64,
    #[serde(rename = "q")]
    pub seq: i64,
    #[serde(rename = "c")]
    pub id: Uuid,
}

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
    /// `{field: ISO string}` (`field_timestamps` or `field_meta`): an
    /// update's keys without a string stamp here are not delivered.
    pub field_timestamps: Map<String, Value>,
    pub created_at: DateTime<Utc>,
}

impl ChangeRow {
    /// This row's position in fold order.
    pub fn order_key(&self) -> OrderKey {
        OrderKey {
            at: self.created_at.timestamp_micros(),
            seq: self.seq,
            id: self.id,
        }
    }

    pub(crate) fn explicit_stamp(&self, key: &str) -> Option<&str> {
        self.field_timestamps.get(key).and_then(Value::as_str)
    }
}

/// Whether a record's `deletedAt` is a non-empty string.
pub fn deleted_at_set(record: &Map<String, Value>) -> bool {
    record
        .get("deletedAt")
        .and_then(Value::as_str)
        .is_some_and(|at| !at.is_empty())
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

/// Parses a `nextRunAt` value (ISO-8601 / RFC 3339 with an offset or `Z`).
/// The one place the text becomes a time: the fold and the snapshot reads
/// call it, and hand the wheel the result.
pub fn parse_next_run(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}
