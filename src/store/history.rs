//! The change log, `public.sync_changes` (the sync server's table), as the
//! reactor reads it (a batch's claimed changes are read with their
//! snapshots, `batch_read`): a record's full history for a replay
//! ([`fold_record`], and the applier's replay of a record a late row
//! reached), a user's history for the start-up rebuild, and the rebuild's
//! to-do list `mana_ai.fold_rebuild`.
//!
//! `sync_changes` is read only after the transaction has been scoped to the
//! change's user ([`SET_USER`]): row-level security limits it to that user.

use tokio_postgres::{GenericClient, Row, Transaction};

use crate::store::decode::{self, RowError};
use crate::sync::change::{Poison, RawChange};
use crate::sync::fold::Folded;
use crate::sync::generation::Generation;

/// Sets the RLS scope for the statements that follow in the transaction.
pub(crate) const SET_USER: &str = "SELECT set_config('app.current_user_id', $1, true)";

/// A record's rows in fold order when there is no queue id to go by:
/// `created_at`, then the inserting command's number within its transaction
/// (`cmin`, exact for separate INSERT statements), then physical position
/// (`ctid`, which is NOT insertion order once VACUUM has recorded free
/// space; see the header of `sync/fold.rs`). `cid` has no ordering operator,
/// hence the cast.
pub(crate) const REPLAY_ORDER: &str = "created_at, cmin::text::bigint, ctid";

/// A `sync_changes` row as read by `batch_read::read_scoped` (or any
/// query with its column names). The table is the sync server's, not ours: a column of
/// another type than the contract's is a [`RowError::Systemic`] naming the
/// column, never a panic; a value of this row that does not convert (JSON
/// too deep, a number out of range, a time out of chrono's range) is
/// [`RowError::Poison`] of this row alone. `seq` is left 0 for the caller.
pub(crate) fn raw_change(row: &Row) -> Result<RawChange, RowError> {
    let undecodable = |column| move |detail| Poison::ColumnUndecodable { column, detail };
    Ok(RawChange {
        id: decode::column(row, "id", undecodable("id"))?,
        app_id: decode::column(row, "app_id", undecodable("app_id"))?,
        table_name: decode::column(row, "table_name", undecodable("table_name"))?,
        record_id: decode::column(row, "record_id", undecodable("record_id"))?,
        op: decode::column(row, "op", undecodable("op"))?,
        data: decode::change_json(row, "data", "data")?,
        field_timestamps: decode::change_json(row, "field_timestamps", "field_timestamps")?,
        created_at: decode::column(row, "created_at", undecodable("created_at"))?,
        seq: 0,
        own_writeback: decode::column(row, "own_writeback", undecodable("own_writeback"))?,
    })
}

/// One record's history in [`REPLAY_ORDER`]. The user is named as well as
/// set for row-level security, so a record id a user chose never reads
/// another user's rows even where RLS is off; `$5` bounds the rows read.
macro_rules! record_history_sql {
    ($stamps:literal) => {
        concat!(
            "SELECT id, op, data, ",
            $stamps,
            " AS field_timestamps, created_at
     FROM public.sync_changes
     WHERE user_id = $4 AND app_id = $1 AND table_name = $2 AND record_id = $3
     ORDER BY created_at, cmin::text::bigint, ctid
     LIMIT $5"
        )
    };
}
const RECORD_HISTORY_V06: &str = record_history_sql!("field_timestamps");
const RECORD_HISTORY_CURRENT: &str = record_history_sql!("field_meta");

// The record history spells REPLAY_ORDER out (a const cannot be formatted).
const _: () = assert!(contains(RECORD_HISTORY_V06, REPLAY_ORDER));
const _: () = assert!(contains(RECORD_HISTORY_CURRENT, REPLAY_ORDER));

const fn contains(s: &str, part: &str) -> bool {
    let (s, part) = (s.as_bytes(), part.as_bytes());
    let mut start = 0;
    while start + part.len() <= s.len() {
        let mut i = 0;
        while i < part.len() && s[start + i] == part[i] {
            i += 1;
        }
        if i == part.len() {
            return true;
        }
        start += 1;
    }
    false
}

/// A record of a user's app, as a mission input names it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordRef<'a> {
    pub generation: Generation,
    pub user_id: &'a str,
    pub app_id: &'a str,
    pub table_name: &'a str,
    pub record_id: &'a str,
}

/// What replaying a record's history gave.
#[derive(Debug)]
pub(crate) enum Replayed {
    /// The record has no rows.
    Missing,
    /// It has more rows than the caller reads.
    TooLong,
    Folded(Folded),
}

/// Folds one record from its change rows (full replay, contract section 2),
/// inside the user scope the caller's transaction has (and of that user
/// only). Malformed rows are left out, as the webapp would fail to apply
/// them too. Reads at most `max_rows` + 1 rows.
pub(crate) async fn fold_record(
    client: &impl GenericClient,
    record: &RecordRef<'_>,
    max_rows: i64,
) -> Result<Replayed, tokio_postgres::Error> {
    let limit = max_rows.saturating_add(1);
    let history = match record.generation {
        Generation::V06 => RECORD_HISTORY_V06,
        Generation::Current => RECORD_HISTORY_CURRENT,
    };
    let RecordRef {
        generation: _,
        user_id,
        app_id,
        table_name,
        record_id,
    } = *record;
    let rows = client
        .query(
            history,
            &[&app_id, &table_name, &record_id, &user_id, &limit],
        )
        .await?;
    if rows.len() as i64 > max_rows {
        return Ok(Replayed::TooLong);
    }
    let mut changes = Vec::with_capacity(rows.len());
    for (seq, r) in (0i64..).zip(&rows) {
        // A row the applier would set aside as poison is skipped here too.
        let raw = match history_row(r, app_id, table_name, record_id, seq) {
            Ok(raw) => raw,
            Err(RowError::Systemic(e)) => return Err(e),
            Err(RowError::Poison(_)) => continue,
        };
        if let Ok(row) = crate::sync::change::to_row(raw) {
            changes.push(row);
        }
    }
    Ok(crate::sync::fold::replay(record_id, &changes).map_or(Replayed::Missing, Replayed::Folded))
}

/// A row of [`RECORD_HISTORY`], completed with the record it belongs to.
fn history_row(
    r: &Row,
    app_id: &str,
    table_name: &str,
    record_id: &str,
    seq: i64,
) -> Result<RawChange, RowError> {
    let undecodable = |column| move |detail| Poison::ColumnUndecodable { column, detail };
    Ok(RawChange {
        id: decode::column(r, "id", undecodable("id"))?,
        app_id: app_id.to_string(),
        table_name: table_name.to_string(),
        record_id: record_id.to_string(),
        op: decode::column(r, "op", undecodable("op"))?,
        data: decode::change_json(r, "data", "data")?,
        field_timestamps: decode::change_json(r, "field_timestamps", "field_timestamps")?,
        created_at: decode::column(r, "created_at", undecodable("created_at"))?,
        seq,
        own_writeback: false,
    })
}

/// One user's mission/agent rows in fold order, record by record, without
/// the rows still queued or set aside (the start-up rebuild's read; its
/// columns are `batch_read::read_scoped`'s, for [`raw_change`]).
pub(crate) fn user_history_sql(generation: Generation) -> String {
    let stamps = generation.stamps_column();
    format!(
        "SELECT c.id, c.app_id, c.table_name, c.record_id, c.op, c.data,
                c.{stamps} AS field_timestamps, c.created_at,
                EXISTS (SELECT 1 FROM mana_ai.mission_runs r WHERE r.change_id = c.id)
                  AS own_writeback
         FROM public.sync_changes c
         WHERE c.user_id = $1 AND c.app_id = 'ai' AND c.table_name IN ('aiMissions', 'agents')
           AND NOT EXISTS (SELECT 1 FROM mana_ai.change_queue q WHERE q.change_id = c.id)
           AND NOT EXISTS (SELECT 1 FROM mana_ai.dead_changes d WHERE d.change_id = c.id)
         ORDER BY c.table_name, c.record_id, {REPLAY_ORDER}"
    )
}

/// One mission's or agent's rows in fold order (`$1` user, `$2` table,
/// `$3` record), without the rows still queued or set aside (also `$6`, the
/// batch's own rows it sets aside), at most `$4`: the applier's replay of a
/// record a late row reached, in the batch's transaction (whose claim has
/// taken its own rows off the queue) and the user's scope. A mission's
/// `iterations`, which every write-back repeats whole, come as the marker
/// `{"mana-ai-source": $5, "from": <change id>}` (the fold decides by
/// stamps, never by that value), so a replay reads each row's other fields
/// only. The columns are `batch_read::read_scoped`'s, for [`raw_change`].
pub(crate) fn record_replay_sql(generation: Generation) -> String {
    let stamps = generation.stamps_column();
    format!(
        "SELECT c.id, c.app_id, c.table_name, c.record_id, c.op,
                CASE WHEN jsonb_typeof(c.data) = 'object' AND c.data ? 'iterations'
                     THEN jsonb_set(c.data, '{{iterations}}',
                                    jsonb_build_object('mana-ai-source', $5::text, 'from', c.id::text))
                     ELSE c.data END AS data,
                c.{stamps} AS field_timestamps, c.created_at,
                EXISTS (SELECT 1 FROM mana_ai.mission_runs r WHERE r.change_id = c.id)
                  AS own_writeback
         FROM public.sync_changes c
         WHERE c.user_id = $1 AND c.app_id = 'ai' AND c.table_name = $2 AND c.record_id = $3
           AND c.id <> ALL($6::uuid[])
           AND NOT EXISTS (SELECT 1 FROM mana_ai.change_queue q WHERE q.change_id = c.id)
           AND NOT EXISTS (SELECT 1 FROM mana_ai.dead_changes d WHERE d.change_id = c.id)
         ORDER BY {REPLAY_ORDER}
         LIMIT $4"
    )
}

/// The first `limit` users listed in `mana_ai.fold_rebuild`, in order.
pub(crate) async fn users_to_rebuild(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Vec<String>, tokio_postgres::Error> {
    client
        .query(
            "SELECT user_id FROM mana_ai.fold_rebuild ORDER BY user_id LIMIT $1",
            &[&limit],
        )
        .await?
        .iter()
        .map(|r| r.try_get("user_id"))
        .collect()
}

/// Takes rebuilt users off `mana_ai.fold_rebuild` (in the rebuild's commit).
pub(crate) async fn users_rebuilt(
    tx: &Transaction<'_>,
    users: &[String],
) -> Result<u64, tokio_postgres::Error> {
    tx.execute(
        "DELETE FROM mana_ai.fold_rebuild WHERE user_id = ANY($1)",
        &[&users],
    )
    .await
}
