//! A `sync_changes` row as read from the database, checked before it is
//! folded. Anything the fold cannot take is [`Poison`]: set aside with its
//! reason, counted, and never allowed to block the rows behind it.

use std::io;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::row::{ChangeRow, Op};

/// Longest user or record id the snapshots accept. Postgres refuses btree
/// entries over ~2.7 kB; real ids are UUIDs or short slugs.
pub const MAX_ID_BYTES: usize = 512;

/// The two record kinds the reactor folds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Mission,
    Agent,
}

impl Kind {
    pub fn from_table(table_name: &str) -> Option<Kind> {
        match table_name {
            "aiMissions" => Some(Kind::Mission),
            "agents" => Some(Kind::Agent),
            _ => None,
        }
    }
}

/// A change row exactly as selected from `sync_changes`.
#[derive(Debug, Clone)]
pub struct RawChange {
    pub id: Uuid,
    pub app_id: String,
    pub table_name: String,
    pub record_id: String,
    pub op: String,
    pub data: Option<Value>,
    pub field_timestamps: Option<Value>,
    pub created_at: DateTime<Utc>,
    /// Insertion order among rows of the same `created_at` (the fold's
    /// `ChangeRow::seq`): the queue id when applying, the position in
    /// `(created_at, cmin, ctid)` order when replaying.
    pub seq: i64,
    /// One of the service's own write-backs (its id is recorded in
    /// `mana_ai.mission_runs`; a row that only carries the service's
    /// `client_id` is not).
    pub own_writeback: bool,
}

/// The field of its own write-backs the service lets grow past the field
/// limit: a mission's whole history, which is never cut.
pub const OWN_UNLIMITED_FIELD: &str = "iterations";

/// A change that passed every check, ready for the fold.
#[derive(Debug, Clone)]
pub struct ValidChange {
    pub kind: Kind,
    pub record_id: String,
    pub row: ChangeRow,
}

/// Why a change was set aside. `reason()` is the metric label and the
/// `dead_changes.reason` column; `detail()` never contains field values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Poison {
    #[error("the queue row has an empty user id")]
    EmptyUserId,
    #[error("user id of {0} bytes exceeds {MAX_ID_BYTES}")]
    UserIdTooLong(usize),
    #[error("the change row is not visible under its user's row-level security (deleted, or queued with another user id)")]
    ChangeNotVisible,
    #[error("table {0:?} is not a mission or agent table")]
    UnknownTable(String),
    #[error("unknown op {0:?}")]
    UnknownOp(String),
    #[error("record id of {0} bytes exceeds {MAX_ID_BYTES}")]
    RecordIdTooLong(usize),
    #[error("data is a JSON {0}, not an object")]
    DataNotObject(&'static str),
    #[error("field_timestamps is a JSON {0}, not an object")]
    FieldTimestampsNotObject(&'static str),
    #[error("field {field:?} is {bytes} bytes of JSON, over the limit of {limit}")]
    FieldTooLarge {
        field: String,
        bytes: usize,
        limit: usize,
    },
    #[error("nextRunAt is a JSON {0}, not a string")]
    NextRunAtNotString(&'static str),
    #[error("applying it failed in the database: {0}")]
    ApplyFailed(String),
    #[error("{column} is nested deeper than {limit} levels")]
    JsonTooDeep { column: &'static str, limit: usize },
    #[error("{column} is not JSON this service can decode: {detail}")]
    JsonUndecodable {
        column: &'static str,
        detail: String,
    },
    #[error("column {column} does not convert: {detail}")]
    ColumnUndecodable {
        column: &'static str,
        detail: String,
    },
    #[error("the stored snapshot's {column} cannot be read: {detail}")]
    SnapshotUnreadable {
        column: &'static str,
        detail: String,
    },
    #[error("folding it into its snapshot panicked")]
    FoldPanicked,
    #[error("checking it panicked")]
    CheckPanicked,
}

impl Poison {
    pub fn reason(&self) -> &'static str {
        match self {
            Poison::EmptyUserId => "empty-user-id",
            Poison::UserIdTooLong(_) => "user-id-too-long",
            Poison::ChangeNotVisible => "change-not-visible",
            Poison::UnknownTable(_) => "unknown-table",
            Poison::UnknownOp(_) => "unknown-op",
            Poison::RecordIdTooLong(_) => "record-id-too-long",
            Poison::DataNotObject(_) => "data-not-object",
            Poison::FieldTimestampsNotObject(_) => "field-timestamps-not-object",
            Poison::FieldTooLarge { .. } => "field-too-large",
            Poison::NextRunAtNotString(_) => "next-run-at-not-string",
            Poison::ApplyFailed(_) => "apply-failed",
            Poison::JsonTooDeep { .. } => "json-too-deep",
            Poison::JsonUndecodable { .. } => "json-undecodable",
            Poison::ColumnUndecodable { .. } => "column-undecodable",
            Poison::SnapshotUnreadable { .. } => "snapshot-unreadable",
            Poison::FoldPanicked => "fold-panicked",
            Poison::CheckPanicked => "check-panicked",
        }
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Cuts a string to at most `max` BYTES on a character boundary (unlike
/// `planner::text::clip`, which counts characters).
pub fn clip_bytes(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Counts bytes without keeping them: the size of a value as JSON text.
struct ByteCounter(usize);

impl io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The size of a value as compact JSON text, as the field limit counts it.
pub fn json_len(v: &Value) -> usize {
    let mut counter = ByteCounter(0);
    // Writing a Value into an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut counter, v);
    counter.0
}

/// Checks the ids of a queue row before any database read.
pub fn check_user_id(user_id: &str) -> Result<(), Poison> {
    if user_id.is_empty() {
        return Err(Poison::EmptyUserId);
    }
    if user_id.len() > MAX_ID_BYTES {
        return Err(Poison::UserIdTooLong(user_id.len()));
    }
    Ok(())
}

/// Checks a change row and turns it into the fold's input.
pub fn validate(raw: RawChange, max_field_bytes: usize) -> Result<ValidChange, Poison> {
    let kind = Kind::from_table(&raw.table_name)
        .filter(|_| raw.app_id == "ai")
        .ok_or_else(|| Poison::UnknownTable(clip_bytes(&raw.table_name, 100).to_string()))?;
    if raw.record_id.len() > MAX_ID_BYTES {
        return Err(Poison::RecordIdTooLong(raw.record_id.len()));
    }
    let record_id = raw.record_id.clone();
    let own = raw.own_writeback && kind == Kind::Mission;
    let row = to_row(raw)?;
    for (field, value) in &row.data {
        if own && field == OWN_UNLIMITED_FIELD {
            continue;
        }
        let bytes = json_len(value);
        if bytes > max_field_bytes {
            return Err(Poison::FieldTooLarge {
                field: clip_bytes(field, 100).to_string(),
                bytes,
                limit: max_field_bytes,
            });
        }
    }
    if kind == Kind::Mission {
        match row.data.get("nextRunAt") {
            None | Some(Value::Null) | Some(Value::String(_)) => {}
            Some(other) => return Err(Poison::NextRunAtNotString(json_type(other))),
        }
    }
    Ok(ValidChange {
        kind,
        record_id,
        row,
    })
}

/// The checks every change row needs before any fold (op, data and
/// field_timestamps shapes), whatever app it belongs to.
pub fn to_row(raw: RawChange) -> Result<ChangeRow, Poison> {
    let op: Op = raw
        .op
        .parse()
        .map_err(|_| Poison::UnknownOp(clip_bytes(&raw.op, 40).to_string()))?;
    let data = match raw.data {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(other) => return Err(Poison::DataNotObject(json_type(&other))),
    };
    let field_timestamps = match raw.field_timestamps {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(other) => return Err(Poison::FieldTimestampsNotObject(json_type(&other))),
    };
    Ok(ChangeRow {
        id: raw.id,
        seq: raw.seq,
        op,
        data,
        field_timestamps,
        created_at: raw.created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(data: Value) -> RawChange {
        RawChange {
            id: Uuid::new_v4(),
            app_id: "ai".into(),
            table_name: "aiMissions".into(),
            record_id: "m1".into(),
            op: "insert".into(),
            data: Some(data),
            field_timestamps: Some(json!({})),
            created_at: Utc::now(),
            seq: 0,
            own_writeback: false,
        }
    }

    #[test]
    fn only_an_own_writeback_may_carry_iterations_over_the_limit() {
        let big = json!({"iterations": [{"summary": "x".repeat(2000)}]});
        let mut r = raw(big.clone());
        assert_eq!(
            validate(r.clone(), 1024).unwrap_err().reason(),
            "field-too-large",
            "a row that is not recorded as the service's own"
        );
        r.own_writeback = true;
        assert!(validate(r.clone(), 1024).is_ok());
        r.data = Some(json!({"title": "x".repeat(2000)}));
        assert_eq!(
            validate(r.clone(), 1024).unwrap_err().reason(),
            "field-too-large",
            "every other field keeps the limit"
        );
        r.data = Some(big);
        r.table_name = "agents".into();
        assert!(validate(r, 1024).is_err(), "only missions");
    }

    #[test]
    fn a_good_change_passes() {
        let v = validate(
            raw(json!({"title": "x", "nextRunAt": "2026-01-01T00:00:00.000Z"})),
            1024,
        )
        .unwrap();
        assert_eq!(v.kind, Kind::Mission);
        assert_eq!(v.row.data["title"], "x");
    }

    #[test]
    fn each_poison_has_its_reason() {
        let mut r = raw(json!([1, 2]));
        assert_eq!(
            validate(r.clone(), 1024).unwrap_err().reason(),
            "data-not-object"
        );
        r.data = Some(json!({"nextRunAt": 5}));
        assert_eq!(
            validate(r.clone(), 1024).unwrap_err().reason(),
            "next-run-at-not-string"
        );
        r.data = Some(json!({"big": "x".repeat(2000)}));
        assert_eq!(
            validate(r.clone(), 1024).unwrap_err().reason(),
            "field-too-large"
        );
        r.data = Some(json!({}));
        r.op = "upsert".into();
        assert_eq!(
            validate(r.clone(), 1024).unwrap_err().reason(),
            "unknown-op"
        );
        r.op = "update".into();
        r.record_id = "r".repeat(10_000);
        assert_eq!(
            validate(r.clone(), 1024).unwrap_err().reason(),
            "record-id-too-long"
        );
        r.record_id = "m1".into();
        r.field_timestamps = Some(json!("yesterday"));
        assert_eq!(
            validate(r.clone(), 1024).unwrap_err().reason(),
            "field-timestamps-not-object"
        );
        assert_eq!(check_user_id("").unwrap_err().reason(), "empty-user-id");
    }

    #[test]
    fn delete_without_data_is_fine() {
        let mut r = raw(Value::Null);
        r.op = "delete".into();
        assert!(validate(r, 1024).is_ok());
    }

    #[test]
    fn details_never_carry_values() {
        let e = validate(raw(json!({"secret": "s3cr3t-".repeat(500)})), 1024).unwrap_err();
        assert!(!e.to_string().contains("s3cr3t"));
    }

    #[test]
    fn clip_bytes_respects_char_boundaries() {
        assert_eq!(clip_bytes("äöü", 3), "ä");
        assert_eq!(clip_bytes("abc", 10), "abc");
    }
}
