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
//! A record's history is its user's to grow, so a replay reads at most
//! [`MAX_REPLAY_ROWS`]. Past that, the batch's rows are folded on top as if
//! they came last (a late row then lands where it arrived, not where it
//! belongs: that record alone may differ from a browser until its rows
//! stop arriving out of order), counted in
//! `mana_ai_fold_replays_over_limit_total` and logged with the record's id.

use tokio_postgres::Client;

use super::decode::RowError;
use super::fold_batch::{self, PendingReplay};
use crate::store::history;
use crate::store::queue::Prepared;
use crate::store::snapshots::{Snapshot, SnapshotWrite};
use crate::sync::change::{self, Kind};
use crate::sync::fold::replay_state;

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
pub(crate) async fn replay(
    tx: &Client,
    st: &Prepared,
    settings: &super::Settings,
    pending: PendingReplay,
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
    tx.execute(&st.set_user, &[&key.0]).await?;
    let sql = history::record_replay_sql(settings.generation);
    let limit = MAX_REPLAY_ROWS + 1;
    let found = tx.query(&sql, &[&key.0, &table, &key.1, &limit]).await?;
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
    let mut valid = Vec::with_capacity(found.len());
    for (seq, row) in (i64::MIN..).zip(&found) {
        // A row the applier would set aside is left out, as it was then.
        let raw = match history::raw_change(row) {
            Ok(raw) => raw,
            Err(RowError::Systemic(e)) => return Err(e),
            Err(RowError::Poison(_)) => continue,
        };
        if let Ok(v) = change::validate(change::RawChange { seq, ..raw }, settings.max_field_bytes)
        {
            valid.push(v.row);
        }
    }
    let mut rebuilt = Snapshot::default();
    if let Some((fold, record)) = replay_state(&key.1, &valid) {
        (rebuilt.fold, rebuilt.record) = (fold, record);
    }
    for row in &valid {
        fold_batch::count(&mut rebuilt, row);
    }
    Ok((
        fold_batch::snapshot_write(key, rebuilt),
        Replayed::FromHistory,
    ))
}
