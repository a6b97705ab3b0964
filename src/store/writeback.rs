//! The write-back's statements: re-reading where a mission's `iterations`
//! live now (its snapshot and its queued changes, with markers in place of
//! the values) and inserting the write-back row into `public.sync_changes`.
//! All of them run inside the user's RLS transaction.

use std::collections::HashMap;

use serde_json::Value;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use crate::sync::generation::Generation;

/// Queued `aiMissions` changes of a user: change id -> queue id (the rows'
/// insertion order for the fold).
pub(crate) async fn queued_mission_changes(
    client: &impl GenericClient,
    user_id: &str,
) -> Result<HashMap<Uuid, i64>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT change_id, id FROM mana_ai.change_queue WHERE user_id = $1 AND table_name = 'aiMissions'",
            &[&user_id],
        )
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("change_id")?, r.try_get("id")?)))
        .collect()
}

/// The snapshot, locked, with its `iterations` replaced by a marker.
const SNAPSHOT_MARKED: &str = "SELECT CASE WHEN record ? 'iterations'
            THEN jsonb_set(record, '{iterations}', jsonb_build_object('mana-ai-source', $3::text, 'from', 'snapshot'))
            ELSE record END AS record,
        fold_state
     FROM mana_ai.mission_snapshots WHERE user_id = $1 AND mission_id = $2 FOR UPDATE";

/// A mission snapshot with its `iterations` marked.
pub(crate) struct MarkedSnapshot {
    pub record: Value,
    pub fold_state: Value,
}

/// The mission's snapshot, locked for the write-back, `iterations` marked.
pub(crate) async fn snapshot_marked(
    client: &impl GenericClient,
    user_id: &str,
    mission_id: &str,
    marker: &str,
) -> Result<Option<MarkedSnapshot>, tokio_postgres::Error> {
    let row = client
        .query_opt(SNAPSHOT_MARKED, &[&user_id, &mission_id, &marker])
        .await?;
    row.map(|row| {
        Ok(MarkedSnapshot {
            record: row.try_get("record")?,
            fold_state: row.try_get("fold_state")?,
        })
    })
    .transpose()
}

/// Change rows with their `iterations` replaced by a marker naming the row:
/// the columns `store::history::raw_change` reads, then the length of the
/// iterations as jsonb text (never shorter than the compact JSON the field
/// limit counts). `$2` is the record, `$3` the marker, `$4` the user; the
/// rows are chosen by `$where` (with `$1`).
macro_rules! changes_marked_sql {
    ($stamps:literal, $where:expr) => {
        concat!(
            "SELECT c.id, c.app_id, c.table_name, c.record_id, c.op,
        CASE WHEN jsonb_typeof(c.data) = 'object' AND c.data ? 'iterations'
             THEN jsonb_set(c.data, '{iterations}', jsonb_build_object('mana-ai-source', $3::text, 'from', c.id::text))
             ELSE c.data END AS data,
        c.",
            $stamps,
            " AS field_timestamps, c.created_at,
        EXISTS (SELECT 1 FROM mana_ai.mission_runs r WHERE r.change_id = c.id) AS own_writeback,
        CASE WHEN jsonb_typeof(c.data) = 'object' THEN octet_length((c.data->'iterations')::text) END
          AS iterations_len
     FROM public.sync_changes c WHERE c.record_id = $2 AND c.user_id = $4 AND ",
            $where
        )
    };
}

/// Every row of the mission not set aside, in `store::history::REPLAY_ORDER`
/// (spelled out: a macro takes literals only), at most `$1`.
macro_rules! history_where {
    () => {
        "c.app_id = 'ai' AND c.table_name = 'aiMissions'
       AND NOT EXISTS (SELECT 1 FROM mana_ai.dead_changes d WHERE d.change_id = c.id)
     ORDER BY created_at, cmin::text::bigint, ctid LIMIT $1"
    };
}
/// A queued change row with its `iterations` marked.
pub(crate) struct MarkedChange {
    /// With the columns `store::history::raw_change` reads.
    pub row: Row,
    /// The row is a write-back of this service.
    pub own_writeback: bool,
    /// Length of its `iterations` as jsonb text, if it has an object `data`.
    pub iterations_len: Option<i32>,
}

pub(crate) async fn changes_marked(
    client: &impl GenericClient,
    generation: Generation,
    user_id: &str,
    change_ids: &[Uuid],
    mission_id: &str,
    marker: &str,
) -> Result<Vec<MarkedChange>, tokio_postgres::Error> {
    let rows = client
        .query(
            match generation {
                Generation::V06 => changes_marked_sql!("field_timestamps", "c.id = ANY($1)"),
                Generation::Current => changes_marked_sql!("field_meta", "c.id = ANY($1)"),
            },
            &[&change_ids, &mission_id, &marker, &user_id],
        )
        .await?;
    rows.into_iter().map(MarkedChange::from_row).collect()
}

impl MarkedChange {
    fn from_row(row: Row) -> Result<MarkedChange, tokio_postgres::Error> {
        Ok(MarkedChange {
            own_writeback: row.try_get("own_writeback")?,
            iterations_len: row.try_get("iterations_len")?,
            row,
        })
    }
}

/// Every row of a mission that is not set aside (queued ones too), in
/// replay order, at most `limit`, `iterations` marked: the write-back's
/// replay when a queued row is late for the snapshot's fold state.
pub(crate) async fn history_marked(
    client: &impl GenericClient,
    generation: Generation,
    user_id: &str,
    mission_id: &str,
    marker: &str,
    limit: i64,
) -> Result<Vec<MarkedChange>, tokio_postgres::Error> {
    let rows = client
        .query(
            match generation {
                Generation::V06 => changes_marked_sql!("field_timestamps", history_where!()),
                Generation::Current => changes_marked_sql!("field_meta", history_where!()),
            },
            &[&limit, &mission_id, &marker, &user_id],
        )
        .await?;
    rows.into_iter().map(MarkedChange::from_row).collect()
}

/// `data.iterations` of one change row of `user_id` (None when it has none,
/// or the row is not that user's).
pub(crate) async fn change_iterations(
    client: &impl GenericClient,
    user_id: &str,
    change_id: Uuid,
) -> Result<Option<Value>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT data->'iterations' AS iterations FROM public.sync_changes
             WHERE id = $1 AND user_id = $2",
            &[&change_id, &user_id],
        )
        .await?;
    match row {
        Some(row) => row.try_get("iterations"),
        None => Ok(None),
    }
}

/// The write-back row: `data.iterations` is the current iterations with the
/// new one appended, built by the database (an iteration already there by id
/// is not added twice); a non-array current value starts a new list.
/// `$13` is the write-back's `updatedAt` (v0.6) or its Space id (current):
/// the current generation stores no `updatedAt`, stamps in `field_meta`,
/// and says `origin = 'agent'`.
macro_rules! insert_writeback_sql {
    ($columns:literal, $updated_at:literal, $extra:literal) => {
        concat!(
            "INSERT INTO public.sync_changes
       (id, app_id, table_name, record_id, user_id, op, data, ",
            $columns,
            ")
     SELECT $1, 'ai', 'aiMissions', $2, $3, 'update',
            jsonb_build_object(
              'iterations',
              CASE WHEN coalesce(jsonb_typeof(src.it), '') <> 'array' THEN jsonb_build_array($4::jsonb)
                   WHEN src.it @> jsonb_build_array(jsonb_build_object('id', $5::text)) THEN src.it
                   ELSE src.it || jsonb_build_array($4::jsonb) END,
              ",
            $updated_at,
            "'nextRunAt', $6::text),
            $7, $8, 1, $9",
            $extra,
            "
     FROM (SELECT CASE $10::text
             WHEN 'snapshot' THEN (SELECT record->'iterations' FROM mana_ai.mission_snapshots
                                   WHERE user_id = $3 AND mission_id = $2)
             WHEN 'change' THEN (SELECT data->'iterations' FROM public.sync_changes
                                 WHERE id = $11 AND user_id = $3)
             ELSE $12::jsonb END AS it) src"
        )
    };
}
const INSERT_WRITEBACK_V06: &str = insert_writeback_sql!(
    "field_timestamps, client_id, schema_version, actor",
    "'updatedAt', $13::text, ",
    ""
);
const INSERT_WRITEBACK_CURRENT: &str = insert_writeback_sql!(
    "field_meta, client_id, schema_version, actor, origin, space_id",
    "",
    ", 'agent', $13::text"
);

/// Where the appended-to `iterations` come from (see `INSERT_WRITEBACK`).
pub(crate) enum Base<'a> {
    None,
    Snapshot,
    Change(Uuid),
    Value(&'a Value),
}

/// The write-back row to insert.
pub(crate) struct WriteBackRow<'a> {
    pub generation: Generation,
    pub change_id: Uuid,
    pub user_id: &'a str,
    pub mission_id: &'a str,
    pub iteration: &'a Value,
    pub iteration_id: &'a str,
    pub updated_at: &'a str,
    /// The mission's Space (the current generation's `space_id`).
    pub space_id: Option<&'a str>,
    pub next_run_at: Option<&'a str>,
    pub field_timestamps: &'a Value,
    pub client_id: &'a str,
    pub actor: &'a Value,
    pub base: Base<'a>,
}

pub(crate) async fn insert_writeback(
    client: &impl GenericClient,
    w: &WriteBackRow<'_>,
) -> Result<(), tokio_postgres::Error> {
    let (kind, from_change, value) = match w.base {
        Base::None => ("none", None, None),
        Base::Snapshot => ("snapshot", None, None),
        Base::Change(id) => ("change", Some(id), None),
        Base::Value(v) => ("value", None, Some(v)),
    };
    let (sql, last): (&str, &(dyn tokio_postgres::types::ToSql + Sync)) = match w.generation {
        Generation::V06 => (INSERT_WRITEBACK_V06, &w.updated_at),
        Generation::Current => (INSERT_WRITEBACK_CURRENT, &w.space_id),
    };
    client
        .execute(
            sql,
            &[
                &w.change_id,
                &w.mission_id,
                &w.user_id,
                w.iteration,
                &w.iteration_id,
                &w.next_run_at,
                w.field_timestamps,
                &w.client_id,
                w.actor,
                &kind,
                &from_change,
                &value,
                last,
            ],
        )
        .await?;
    Ok(())
}
