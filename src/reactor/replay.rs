//! Replaying a record a late row reached (see "Incremental fold, and
//! replays" in `sync/fold.rs`): a row that comes at or before the last row
//! folded into a snapshot cannot be folded on, so the record is folded anew
//! from its history, in the batch's transaction and the user's RLS scope.
//!
//! The history is every row of the record that is neither still queued nor
//! set aside (the batch's claim has already taken its own rows off the
//! queue, so they are in it), numbered with negative `seq`s in replay order:
//! a row still queued (a positive queue id) folds after them, when its turn
//! comes, as the rebuild does.
//!
//! A record's history is its user's to grow, so a replay bounds what it
//! reads. A mission's `iterations`, which every write-back repeats whole
//! (the history's bytes grow with the square of its iterations), are read
//! as markers naming their row, and only the winning row's value is read
//! at the end; every other field is read, at most [`MAX_REPLAY_ROWS`] rows.
//! Past that, the batch's rows are folded on top as if they came last (a
//! late row then lands where it arrived, not where it belongs: that record
//! alone may differ from a browser until its rows stop arriving out of
//! order), counted in `mana_ai_fold_replays_over_limit_total` and logged
//! with the record's id. Measured (debug build, loopback): 10,000 rows of
//! ~350 bytes replay in about a second, 1,000 in 60 ms.

use serde_json::{Map, Value};
use tokio_postgres::Client;
use uuid::Uuid;

use super::fold_batch::{self, PendingReplay};
use crate::store::decode::RowError;
use crate::store::history;
use crate::store::queue::ApplierStatements;
use crate::store::snapshots::{Snapshot, SnapshotWrite};
use crate::sync::change::{self, Kind, OWN_UNLIMITED_FIELD};
use crate::sync::fold::{replay_state, ChangeRow};

/// The most rows one replay reads.
pub const MAX_REPLAY_ROWS: i64 = 10_000;

/// How a pending replay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replayed {
    /// Folded anew from its history.
    FromHistory,
    /// The history is over [`MAX_REPLAY_ROWS`]: the rows were folded on top.
    OverLimit,
}

/// Replays one record in the batch's transaction; its snapshot write.
/// `set_aside` are the batch's rows it sets aside (not in
/// `mana_ai.dead_changes` yet).
pub(crate) async fn replay(
    tx: &Client,
    statements: &ApplierStatements,
    settings: &super::Settings,
    pending: PendingReplay,
    set_aside: &[Uuid],
) -> Result<(SnapshotWrite, Replayed), tokio_postgres::Error> {
    let PendingReplay {
        kind,
        key,
        rows,
        at,
        mut snapshot,
        ..
    } = pending;
    let table = match kind {
        Kind::Mission => "aiMissions",
        Kind::Agent => "agents",
    };
    tx.execute(&statements.set_user, &[&key.0]).await?;
    let sql = history::record_replay_sql(settings.generation);
    let limit = MAX_REPLAY_ROWS + 1;
    let marker = Uuid::new_v4().to_string();
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
        [&key.0, &table, &key.1, &limit, &marker, &set_aside];
    let found = tx.query(&sql, &params).await?;
    if found.len() as i64 > MAX_REPLAY_ROWS {
        tracing::warn!(
            record_id = %key.1,
            limit = MAX_REPLAY_ROWS,
            "a late change reached a record whose history is over the replay limit; \
             its changes are folded in arrival order"
        );
        fold_batch::fold_rows_as_last(&key.1, &mut snapshot, &rows[at..]);
        return Ok((
            fold_batch::snapshot_write(key, snapshot),
            Replayed::OverLimit,
        ));
    }
    let valid = valid_rows(&found, settings.max_field_bytes)?;
    let mut rebuilt = Snapshot::default();
    if let Some((fold, record)) = replay_state(&key.1, &valid) {
        (rebuilt.fold, rebuilt.record) = (fold, record);
    }
    unmark(tx, &key.0, &mut rebuilt.record, &marker).await?;
    for row in &valid {
        fold_batch::count(&mut rebuilt, row);
    }
    Ok((
        fold_batch::snapshot_write(key, rebuilt),
        Replayed::FromHistory,
    ))
}

/// The history's rows in replay order (negative `seq`s, so still-queued
/// rows fold after them), without the rows the applier would set aside, as
/// it did then.
fn valid_rows(
    found: &[tokio_postgres::Row],
    max_field_bytes: usize,
) -> Result<Vec<ChangeRow>, tokio_postgres::Error> {
    let mut valid = Vec::with_capacity(found.len());
    for (seq, row) in (i64::MIN..).zip(found) {
        let raw = match history::raw_change(row) {
            Ok(raw) => raw,
            Err(RowError::Systemic(e)) => return Err(e),
            Err(RowError::Poison(_)) => continue,
        };
        if let Ok(v) = change::validate(change::RawChange { seq, ..raw }, max_field_bytes) {
            valid.push(v.row);
        }
    }
    Ok(valid)
}

/// Puts the winning row's `iterations` in place of its marker.
async fn unmark(
    tx: &Client,
    user_id: &str,
    record: &mut Map<String, Value>,
    marker: &str,
) -> Result<(), tokio_postgres::Error> {
    let Some(held) = record.get(OWN_UNLIMITED_FIELD) else {
        return Ok(());
    };
    if held.get("mana-ai-source").and_then(Value::as_str) != Some(marker) {
        return Ok(());
    }
    let from = held
        .get("from")
        .and_then(Value::as_str)
        .and_then(|id| id.parse().ok());
    let value = match from {
        Some(id) => crate::store::writeback::change_iterations(tx, user_id, id).await?,
        None => None,
    };
    match value {
        Some(value) => record.insert(OWN_UNLIMITED_FIELD.to_owned(), value),
        None => record.remove(OWN_UNLIMITED_FIELD),
    };
    Ok(())
}
