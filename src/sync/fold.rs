//! Field-level last-writer-wins fold (contract section 2): a record's value
//! is what a browser holds after pulling the whole log.
//!
//! # The rule
//!
//! Rows in order (below), each applied the way the webapp's
//! `applyServerChanges` applies what the sync server's `changeFromRow`
//! makes of the row (the same at v0.6 and today; the stamps come from
//! `field_timestamps` or today's `field_meta`, whichever the database has).
//! The record either exists or not, and keeps a stamp per field:
//!
//! - **update**: only the keys present in both `data` and the stamp map
//!   with a string stamp are delivered; a key without a stamp never reaches
//!   a browser and changes nothing. No key delivered: nothing happens (the
//!   server omits an empty field map, and the browser skips the change). A
//!   delivered field wins when `at >=` the field's stamp; a field with no
//!   stamp compares against the record's `updatedAt` value (a string, as it
//!   was before the row), else ''. A record that does not exist is created
//!   from the delivered fields, each with its stamp.
//! - **insert**: the stamp map is not used. The insert's time is
//!   `data.updatedAt`, else `data.createdAt` (strings), else
//!   [`iso_millis`]`(created_at)` (the browser uses its clock at pull time;
//!   the row's time is the deterministic stand-in). A new record takes every
//!   key of `data`, each stamped with that time; on an existing record every
//!   key is an update field with that time.
//! - **delete**: nothing when the record does not exist. With a non-empty
//!   string `data.deletedAt`, an LWW write: when it is `>=` the stamp of
//!   `deletedAt` (else its value, else ''), `deletedAt` and `updatedAt`
//!   both take that value and that stamp (as the v0.6 webapp does). Without
//!   one, the record is removed with its stamps; a later row re-creates it
//!   from its own fields only.
//! - Deleted: while the record does not exist, or its `deletedAt` is a
//!   non-empty string; a newer row clearing `deletedAt` restores it.
//! - Stamps are compared as strings, bytewise.
//!
//! Settled where the browser's code and the contract's words part: an
//! empty-string `deletedAt` on a delete removes the record (the browser
//! tests it for truth); the key `id` is never taken from `data` (the
//! browser keys records by the change's id; its insert skips `id`); an
//! insert without `data` creates the record with no fields (the browser
//! would read the change's envelope as data); a non-string `updatedAt` or
//! `createdAt` of an insert is passed over (the contract names strings).
//!
//! Values pass through unchanged: serde_json is built with `float_roundtrip`,
//! so a number parses to the nearest `f64` and prints back as the shortest
//! text of that `f64`, which is the text a browser's `JSON.stringify` wrote.
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
//! - replaying a record (`store::history`, the rebuild): the position in
//!   `ORDER BY created_at, cmin, ctid`. Physical order (`ctid`) alone is NOT
//!   insertion order, not even in an append-only table: once VACUUM has
//!   recorded free space, a row that does not fit the current page goes to
//!   an earlier page with room. `cmin`, the inserting command's number
//!   within its transaction, orders rows of separate INSERT statements
//!   exactly; only rows of one multi-row INSERT fall back to `ctid`.
//!
//! `id` only breaks a tie of `(created_at, seq)`, which the readers never
//! produce, and identifies a row given twice.
//!
//! # Incremental fold, and replays
//!
//! Under this rule the result depends on order (a removing delete wipes
//! everything before it; an insert on a missing record takes every field
//! whatever its stamp), so no bounded state folds rows in any order. The
//! [`FoldState`] beside a record keeps the per-field stamps, whether the
//! record exists, and the order key of the last row folded. A row after
//! that key folds on ([`FoldState::apply`]); a row at or before it (a late
//! row: concurrent transactions of one record committed out of `created_at`
//! order, or a row given twice) is refused with [`ReplayNeeded`], and the
//! caller replays the record from its history (the applier: from
//! `sync_changes` in the batch's transaction, `reactor::replay`). [`replay`]
//! and the incremental fold share one step ([`FoldState::step`]).
//!
//! # Stored states of an older rule
//!
//! The state carries a version ([`FOLD_VERSION`]); a stored state of
//! another version, or one that does not decode, is stale
//! ([`FoldState::decode`]): folding into it asks for a replay, never reads
//! it as this shape. Migration 0008 lists every user with a snapshot in
//! `mana_ai.fold_rebuild`, so the leader rebuilds them all from history at
//! its next start (`reactor::rebuild`), before the applier runs.

use serde_json::{Map, Value};

pub use super::fold_state::{FoldState, ReplayNeeded, FOLD_VERSION};
pub use super::row::{deleted_at_set, iso_millis, ChangeRow, Op, OrderKey, UnknownOp};

/// A record as a full replay of its rows leaves it: `record` is empty when
/// no browser would hold it (then `deleted`).
#[derive(Clone, Debug, PartialEq)]
pub struct Folded {
    pub record: Map<String, Value>,
    pub deleted: bool,
}

/// Full sequential replay: rows in `(created_at, seq, id)` order (a row
/// given twice counts once), each through the one step of the rule. `None`
/// when there are no rows.
///
/// How the applier rebuilds a record a late row reached, the start-up
/// rebuild folds, and other apps' records are read, one at a time, when a
/// mission lists them as inputs.
pub fn replay(record_id: &str, rows: &[ChangeRow]) -> Option<Folded> {
    let (state, record) = replay_state(record_id, rows)?;
    let deleted = state.is_deleted(&record);
    Some(Folded { record, deleted })
}

/// [`replay`], with the state to keep beside the record.
pub fn replay_state(
    record_id: &str,
    rows: &[ChangeRow],
) -> Option<(FoldState, Map<String, Value>)> {
    let mut ordered: Vec<&ChangeRow> = rows.iter().collect();
    ordered.sort_by_key(|row| row.order_key());
    ordered.dedup_by_key(|row| row.id);
    if ordered.is_empty() {
        return None;
    }
    let (mut state, mut record) = (FoldState::default(), Map::new());
    for row in ordered {
        state.step(record_id, &mut record, row);
    }
    Some((state, record))
}

#[cfg(test)]
#[path = "fold_props.rs"]
mod props;

#[cfg(test)]
#[path = "fold_tests.rs"]
mod tests;
