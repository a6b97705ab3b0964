//! Reading one row's columns so that its content can fail only that row.
//!
//! tokio-postgres decodes `json`/`jsonb` straight into `serde_json::Value`,
//! which refuses documents nested deeper than serde_json's recursion limit
//! (127 levels: the 128th container fails) and numbers outside `f64`
//! (`1e400` is valid jsonb). A failed decode is an error of the whole
//! statement's row set, so the applier could not tell one user's bad row
//! from a broken database. Here JSON columns arrive as bytes
//! ([`JsonBytes`]), their depth is measured before serde_json sees them,
//! and every failure is a [`Poison`] of that row alone. Only a column of
//! another type than expected ([`WrongType`]: someone altered the table) is
//! systemic, because it would fail for every row.
//!
//! # The nesting limit
//!
//! A change's `data` and `field_timestamps` may be at most
//! [`MAX_CHANGE_DEPTH`] = 100 levels deep (the document itself is level 1).
//! The fold stores a value at the depth it sits in `data` (in the record;
//! `fold_state` holds stamps, never values), so stored snapshots are at most
//! 100 deep, well inside the 127 that every reader of the snapshot tables
//! can decode: the applier ([`MAX_STORED_DEPTH`]),
//! and the runner, the write-back and the HTTP routes, which read them with
//! tokio-postgres' own decoder. Real mission and agent records are a few
//! levels deep.

use postgres_types::{FromSql, Type, WrongType};
use serde_json::Value;
use std::fmt;

use tokio_postgres::row::RowIndex;
use tokio_postgres::Row;

use crate::sync::change::{clip_bytes, Poison};

/// Deepest `data` / `field_timestamps` a change may have (see the module
/// header for why 100).
pub const MAX_CHANGE_DEPTH: usize = 100;

/// Deepest stored document the reactor reads back: what serde_json (and so
/// tokio-postgres) decodes.
pub const MAX_STORED_DEPTH: usize = 127;

// A change's value sits at the same depth in the snapshot (with room to spare).
const _: () = assert!(MAX_CHANGE_DEPTH + 2 <= MAX_STORED_DEPTH);

/// A `json` or `jsonb` value as its JSON text.
pub struct JsonBytes(pub Vec<u8>);

impl<'a> FromSql<'a> for JsonBytes {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = if *ty == Type::JSONB {
            match raw.split_first() {
                Some((1, rest)) => rest,
                _ => return Err("unsupported jsonb encoding version".into()),
            }
        } else {
            raw
        };
        Ok(JsonBytes(text.to_vec()))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON || *ty == Type::JSONB
    }
}

/// Why a row could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// Fails for every row (a column of another type): retry, not poison.
    #[error(transparent)]
    Systemic(#[from] tokio_postgres::Error),
    /// Something in this row only.
    #[error("{0}")]
    Poison(Poison),
}

/// Nesting depth of JSON text: containers open at once, at most.
/// Stops counting once past `limit` (returns `limit + 1`).
pub fn json_depth(text: &[u8], limit: usize) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
                if max > limit {
                    return max;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// How a JSON document failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    TooDeep,
    /// serde_json's message (positions, never the text).
    Undecodable(String),
}

/// Decodes JSON text at most `limit` levels deep.
pub fn decode_json(text: &[u8], limit: usize) -> Result<Value, JsonError> {
    if json_depth(text, limit) > limit {
        return Err(JsonError::TooDeep);
    }
    serde_json::from_slice(text)
        .map_err(|e| JsonError::Undecodable(clip_bytes(&e.to_string(), 200).into()))
}

/// Column `idx` (a name, or a position for a query whose columns are not
/// named) of `row`; a value that does not convert is `poison(detail)`.
pub fn column<'a, T: FromSql<'a>, I: RowIndex + fmt::Display>(
    row: &'a Row,
    idx: I,
    poison: impl FnOnce(String) -> Poison,
) -> Result<T, RowError> {
    row.try_get(idx).map_err(|e| {
        let wrong_type = std::error::Error::source(&e).is_some_and(|s| s.is::<WrongType>());
        if wrong_type {
            RowError::Systemic(e)
        } else {
            RowError::Poison(poison(clip_bytes(&e.to_string(), 200).to_string()))
        }
    })
}

/// A change row's JSON column (`None` for SQL NULL), at most
/// [`MAX_CHANGE_DEPTH`] deep.
pub fn change_json<I: RowIndex + fmt::Display>(
    row: &Row,
    idx: I,
    name: &'static str,
) -> Result<Option<Value>, RowError> {
    let undecodable = |detail| Poison::JsonUndecodable {
        column: name,
        detail,
    };
    let Some(JsonBytes(text)) = column::<Option<JsonBytes>, _>(row, idx, undecodable)? else {
        return Ok(None);
    };
    match decode_json(&text, MAX_CHANGE_DEPTH) {
        Ok(value) => Ok(Some(value)),
        Err(JsonError::TooDeep) => Err(RowError::Poison(Poison::JsonTooDeep {
            column: name,
            limit: MAX_CHANGE_DEPTH,
        })),
        Err(JsonError::Undecodable(detail)) => Err(RowError::Poison(undecodable(detail))),
    }
}

/// A snapshot's JSON column, at most [`MAX_STORED_DEPTH`] deep.
pub fn stored_json(row: &Row, name: &'static str) -> Result<Value, RowError> {
    let unreadable = |detail| Poison::SnapshotUnreadable {
        column: name,
        detail,
    };
    let JsonBytes(text) = column::<JsonBytes, _>(row, name, unreadable)?;
    decode_json(&text, MAX_STORED_DEPTH).map_err(|e| {
        RowError::Poison(unreadable(match e {
            JsonError::TooDeep => format!("nested deeper than {MAX_STORED_DEPTH} levels"),
            JsonError::Undecodable(detail) => detail,
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn depth_counts_containers_and_ignores_strings() {
        assert_eq!(json_depth(b"1", 10), 0);
        assert_eq!(json_depth(br#"{"a": [1, {"b": []}]}"#, 10), 4);
        assert_eq!(json_depth(br#"{"a": "[[[[\"{{"}"#, 10), 1);
        assert_eq!(json_depth(br#"["\\", [[]]]"#, 10), 3);
        assert_eq!(json_depth(nested(500).as_bytes(), 100), 101);
    }

    /// MAX_STORED_DEPTH is exactly what serde_json decodes, and a change at
    /// MAX_CHANGE_DEPTH stays decodable two levels deeper.
    #[test]
    fn the_limits_match_serde_json() {
        let at = nested(MAX_STORED_DEPTH);
        assert!(serde_json::from_str::<Value>(&at).is_ok());
        assert!(serde_json::from_str::<Value>(&nested(MAX_STORED_DEPTH + 1)).is_err());
        assert!(decode_json(at.as_bytes(), MAX_STORED_DEPTH).is_ok());
        assert_eq!(
            decode_json(nested(MAX_CHANGE_DEPTH + 1).as_bytes(), MAX_CHANGE_DEPTH),
            Err(JsonError::TooDeep)
        );
        assert!(matches!(
            decode_json(br#"{"n": 1e400}"#, 10),
            Err(JsonError::Undecodable(_))
        ));
    }
}
