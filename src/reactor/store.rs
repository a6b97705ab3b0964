//! Every SQL statement of the reactor, in one place.
//!
//! The queue and the snapshot tables belong to schema `mana_ai` and carry no
//! row-level security; `sync_changes` is read only after the transaction has
//! been scoped to the change's user (`db::set_user`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures_util::{Stream, TryStreamExt};
use serde_json::{Map, Value};
use tokio_postgres::{GenericClient, Row, Statement, Transaction};
use uuid::Uuid;

use super::decode::{self, RowError};
use crate::sync::change::{clip_bytes, Kind, Poison, RawChange};
use crate::sync::fold::FoldState;

/// One row of `mana_ai.change_queue`, claimed by the applier.
#[derive(Debug, Clone)]
pub struct QueueRow {
    pub id: i64,
    pub change_id: Uuid,
    pub user_id: String,
    pub table_name: String,
    /// When the trigger queued it (database clock).
    pub queued_at: DateTime<Utc>,
}

/// Claims (deletes and returns) the oldest `$1` queue rows.
///
/// `= ANY(ARRAY(subquery))` rather than `IN (subquery)`: with `IN` the
/// planner hashes the subquery and seq-scans the whole queue (about 20 ms at
/// a depth of 10^5, per batch); the array makes it an index scan of the
/// claimed ids whatever the depth.
pub const CLAIM: &str = "DELETE FROM mana_ai.change_queue
     WHERE id = ANY(ARRAY(SELECT id FROM mana_ai.change_queue ORDER BY id LIMIT $1))
     RETURNING id, change_id, user_id, table_name, queued_at";

/// Claims (deletes and returns) the oldest `limit` queue rows. The deletion
/// commits with the snapshot writes or not at all, so each change is applied
/// exactly once. Only the leader applies; a second applier would block on the
/// row locks and then find the rows gone, never apply them twice.
pub async fn claim(
    client: &impl GenericClient,
    st: &Prepared,
    limit: i64,
) -> Result<Vec<QueueRow>, tokio_postgres::Error> {
    let rows = client.query(&st.claim, &[&limit]).await?;
    let mut claimed: Vec<QueueRow> = rows
        .iter()
        .map(|r| {
            Ok(QueueRow {
                id: r.try_get(0)?,
                change_id: r.try_get(1)?,
                user_id: r.try_get(2)?,
                table_name: r.try_get(3)?,
                queued_at: r.try_get(4)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    claimed.sort_by_key(|q| q.id);
    Ok(claimed)
}

/// Reads change rows by id; run after `set_user` so RLS limits it to one user.
/// The last column says whether the row is one of the service's own
/// write-backs (recorded in `mission_runs`, which only the service writes).
pub const READ_CHANGES: &str =
    "SELECT c.id, c.app_id, c.table_name, c.record_id, c.op, c.data, c.field_timestamps, c.created_at,
            EXISTS (SELECT 1 FROM mana_ai.mission_runs r WHERE r.change_id = c.id)
     FROM public.sync_changes c WHERE c.id = ANY($1)";

/// Sets the RLS scope for the statements that follow in the transaction.
pub const SET_USER: &str = "SELECT set_config('app.current_user_id', $1, true)";

/// A `sync_changes` row as read by [`READ_CHANGES`]. The table is the sync
/// server's, not ours: a column of another type than the contract's is a
/// [`RowError::Systemic`] naming the column, never a panic; a value of this
/// row that does not convert (JSON too deep, a number out of range, a time
/// out of chrono's range) is [`RowError::Poison`] of this row alone.
pub fn raw_change(row: &Row) -> Result<RawChange, RowError> {
    let undecodable = |column| move |detail| Poison::ColumnUndecodable { column, detail };
    Ok(RawChange {
        id: decode::column(row, 0, undecodable("id"))?,
        app_id: decode::column(row, 1, undecodable("app_id"))?,
        table_name: decode::column(row, 2, undecodable("table_name"))?,
        record_id: decode::column(row, 3, undecodable("record_id"))?,
        op: decode::column(row, 4, undecodable("op"))?,
        data: decode::change_json(row, 5, "data")?,
        field_timestamps: decode::change_json(row, 6, "field_timestamps")?,
        created_at: decode::column(row, 7, undecodable("created_at"))?,
        seq: 0,
        own_writeback: decode::column(row, 8, undecodable("own_writeback"))?,
    })
}

/// Loads and locks snapshots by (user id, record id) pairs.
const LOAD_MISSIONS: &str =
    "SELECT s.user_id, s.mission_id, s.record, s.fold_state, s.change_count, s.last_applied_at
     FROM mana_ai.mission_snapshots s
     JOIN unnest($1::text[], $2::text[]) AS k(u, r) ON s.user_id = k.u AND s.mission_id = k.r
     FOR UPDATE OF s";
const LOAD_AGENTS: &str =
    "SELECT s.user_id, s.agent_id, s.record, s.fold_state, s.change_count, s.last_applied_at
     FROM mana_ai.agent_snapshots s
     JOIN unnest($1::text[], $2::text[]) AS k(u, r) ON s.user_id = k.u AND s.agent_id = k.r
     FOR UPDATE OF s";

fn load_sql(kind: Kind) -> &'static str {
    match kind {
        Kind::Mission => LOAD_MISSIONS,
        Kind::Agent => LOAD_AGENTS,
    }
}

const UPSERT_MISSIONS: &str = "INSERT INTO mana_ai.mission_snapshots
       (user_id, mission_id, record, fold_state, deleted, state, next_run_at, agent_id,
        change_count, last_applied_at, next_run_ts, updated_at)
     SELECT u, m, r, f, d, st, n, a, c, l, nt, now()
     FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::jsonb[], $5::bool[],
                 $6::text[], $7::text[], $8::text[], $9::int8[], $10::timestamptz[],
                 $11::timestamptz[])
          AS t(u, m, r, f, d, st, n, a, c, l, nt)
     ON CONFLICT (user_id, mission_id) DO UPDATE SET
       record = EXCLUDED.record, fold_state = EXCLUDED.fold_state,
       deleted = EXCLUDED.deleted, state = EXCLUDED.state,
       next_run_at = EXCLUDED.next_run_at, agent_id = EXCLUDED.agent_id,
       change_count = EXCLUDED.change_count, next_run_ts = EXCLUDED.next_run_ts,
       last_applied_at = EXCLUDED.last_applied_at, updated_at = now()";

const UPSERT_AGENTS: &str = "INSERT INTO mana_ai.agent_snapshots
       (user_id, agent_id, record, fold_state, deleted, change_count, last_applied_at, updated_at)
     SELECT u, a, r, f, d, c, l, now()
     FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::jsonb[], $5::bool[],
                 $6::int8[], $7::timestamptz[])
          AS t(u, a, r, f, d, c, l)
     ON CONFLICT (user_id, agent_id) DO UPDATE SET
       record = EXCLUDED.record, fold_state = EXCLUDED.fold_state,
       deleted = EXCLUDED.deleted, change_count = EXCLUDED.change_count,
       last_applied_at = EXCLUDED.last_applied_at, updated_at = now()";

const INSERT_DEAD: &str = "INSERT INTO mana_ai.dead_changes
       (queue_id, change_id, user_id, table_name, record_id, record_id_length, reason, detail)
     SELECT * FROM unnest($1::int8[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                          $6::int4[], $7::text[], $8::text[])";

/// Armable missions of some agents, by (user id, agent id) pairs: re-armed
/// when an agent changes, so a mission skipped while its agent was paused
/// runs once it is active again.
const ARMABLE_OF_AGENTS: &str = "SELECT s.user_id, s.mission_id, s.next_run_at
     FROM mana_ai.mission_snapshots s
     JOIN unnest($1::text[], $2::text[]) AS k(u, a) ON s.user_id = k.u AND s.agent_id = k.a
     WHERE NOT s.deleted AND s.state = 'active' AND s.next_run_at IS NOT NULL";

/// The applier's statements, prepared once per pooled connection (deadpool
/// caches them, so after the first batch this costs no round trip). Holding
/// them all before a batch starts keeps pipelined statements in the order
/// they were issued: a cache miss can never hold back an earlier statement
/// while a later one is sent.
#[derive(Clone)]
pub struct Prepared {
    pub claim: Statement,
    pub set_user: Statement,
    pub read: Statement,
    load_missions: Statement,
    load_agents: Statement,
    upsert_missions: Statement,
    upsert_agents: Statement,
    insert_dead: Statement,
    armable_of_agents: Statement,
}

impl Prepared {
    /// Prepares (or takes from the connection's cache) every statement;
    /// the misses are prepared in one pipelined round trip.
    pub async fn get(
        client: &deadpool_postgres::ClientWrapper,
    ) -> Result<Prepared, tokio_postgres::Error> {
        let sql = [
            CLAIM,
            SET_USER,
            READ_CHANGES,
            LOAD_MISSIONS,
            LOAD_AGENTS,
            UPSERT_MISSIONS,
            UPSERT_AGENTS,
            INSERT_DEAD,
            ARMABLE_OF_AGENTS,
        ];
        let stmts =
            futures_util::future::try_join_all(sql.iter().map(|q| client.prepare_cached(q)))
                .await?;
        let [claim, set_user, read, load_missions, load_agents, upsert_missions, upsert_agents, insert_dead, armable_of_agents] =
            <[Statement; 9]>::try_from(stmts).expect("nine statements");
        Ok(Prepared {
            claim,
            set_user,
            read,
            load_missions,
            load_agents,
            upsert_missions,
            upsert_agents,
            insert_dead,
            armable_of_agents,
        })
    }

    fn load(&self, kind: Kind) -> &Statement {
        match kind {
            Kind::Mission => &self.load_missions,
            Kind::Agent => &self.load_agents,
        }
    }
}

/// A snapshot as stored.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub record: Map<String, Value>,
    pub fold: FoldState,
    pub change_count: i64,
    pub last_applied_at: Option<DateTime<Utc>>,
}

/// (user id, record id)
pub type SnapshotKey = (String, String);

/// Loads (and locks) the snapshots of `keys`; one that cannot be read is an
/// error naming the column.
pub async fn load_snapshots(
    tx: &Transaction<'_>,
    kind: Kind,
    keys: &[SnapshotKey],
) -> anyhow::Result<HashMap<SnapshotKey, Snapshot>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let users: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let rows = tx.query(load_sql(kind), &[&users, &ids]).await?;
    snapshots_from_rows(&rows)?
        .into_iter()
        .map(|(key, snapshot)| Ok((key, snapshot?)))
        .collect::<Result<_, Poison>>()
        .map_err(anyhow::Error::from)
}

/// Snapshots as loaded: each readable, or why not.
pub type Loaded = HashMap<SnapshotKey, Result<Snapshot, Poison>>;

/// [`load_snapshots`] with the applier's prepared statements; no query
/// (and no round trip) when `keys` is empty. A snapshot that cannot be read
/// is [`Poison::SnapshotUnreadable`] of its record alone.
pub async fn load_snapshots_prepared(
    client: &impl GenericClient,
    st: &Prepared,
    kind: Kind,
    keys: &[SnapshotKey],
) -> Result<Loaded, tokio_postgres::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let users: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let rows = client.query(st.load(kind), &[&users, &ids]).await?;
    snapshots_from_rows(&rows)
}

/// The key columns must read (they are our own text columns); the rest may
/// fail for one row.
fn snapshots_from_rows(rows: &[Row]) -> Result<Loaded, tokio_postgres::Error> {
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let key: SnapshotKey = (row.try_get(0)?, row.try_get(1)?);
        let snapshot = match snapshot_from_row(row) {
            Ok(snapshot) => Ok(snapshot),
            Err(RowError::Poison(poison)) => Err(poison),
            Err(RowError::Systemic(e)) => return Err(e),
        };
        out.insert(key, snapshot);
    }
    Ok(out)
}

fn snapshot_from_row(row: &Row) -> Result<Snapshot, RowError> {
    let unreadable = |column| move |detail| Poison::SnapshotUnreadable { column, detail };
    let record = match decode::stored_json(row, 2, "record")? {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    // A fold state of another shape (another version's) is rebuilt from the
    // record's current values; it only costs tie-break precision on that
    // record. One that is not decodable JSON at all is unreadable.
    let fold = decode::stored_json(row, 3, "fold_state")?;
    let fold: FoldState = serde_json::from_value(fold).unwrap_or_default();
    Ok(Snapshot {
        record,
        fold,
        change_count: decode::column(row, 4, unreadable("change_count"))?,
        last_applied_at: Some(decode::column(row, 5, unreadable("last_applied_at"))?),
    })
}

/// One snapshot row to write.
#[derive(Debug, Clone)]
pub struct SnapshotWrite {
    pub user_id: String,
    pub record_id: String,
    pub record: Value,
    pub fold: Value,
    pub deleted: bool,
    pub state: Option<String>,
    pub next_run_at: Option<String>,
    /// `next_run_at` parsed; None when absent or not ISO-8601.
    pub next_run_ts: Option<DateTime<Utc>>,
    pub agent_id: Option<String>,
    pub change_count: i64,
    pub last_applied_at: DateTime<Utc>,
}

/// Inserts or updates snapshot rows in one statement; no query when `rows`
/// is empty.
pub async fn upsert_snapshots(
    client: &impl GenericClient,
    st: &Prepared,
    kind: Kind,
    rows: &[SnapshotWrite],
) -> Result<(), tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let users: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.record_id.as_str()).collect();
    let records: Vec<&Value> = rows.iter().map(|r| &r.record).collect();
    let folds: Vec<&Value> = rows.iter().map(|r| &r.fold).collect();
    let deleted: Vec<bool> = rows.iter().map(|r| r.deleted).collect();
    let counts: Vec<i64> = rows.iter().map(|r| r.change_count).collect();
    let applied: Vec<DateTime<Utc>> = rows.iter().map(|r| r.last_applied_at).collect();
    match kind {
        Kind::Mission => {
            let states: Vec<Option<&str>> = rows.iter().map(|r| r.state.as_deref()).collect();
            let next: Vec<Option<&str>> = rows.iter().map(|r| r.next_run_at.as_deref()).collect();
            let agents: Vec<Option<&str>> = rows.iter().map(|r| r.agent_id.as_deref()).collect();
            let next_ts: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.next_run_ts).collect();
            client
                .execute(
                    &st.upsert_missions,
                    &[
                        &users, &ids, &records, &folds, &deleted, &states, &next, &agents, &counts,
                        &applied, &next_ts,
                    ],
                )
                .await?;
        }
        Kind::Agent => {
            client
                .execute(
                    &st.upsert_agents,
                    &[&users, &ids, &records, &folds, &deleted, &counts, &applied],
                )
                .await?;
        }
    }
    Ok(())
}

/// A queue row set aside, with why.
#[derive(Debug, Clone)]
pub struct DeadChange {
    pub queue: QueueRow,
    pub record_id: Option<String>,
    pub poison: Poison,
}

/// Records poison rows in `mana_ai.dead_changes`; no query when `dead` is
/// empty.
pub async fn insert_dead(
    client: &impl GenericClient,
    st: &Prepared,
    dead: &[DeadChange],
) -> Result<(), tokio_postgres::Error> {
    if dead.is_empty() {
        return Ok(());
    }
    let queue_ids: Vec<i64> = dead.iter().map(|d| d.queue.id).collect();
    let change_ids: Vec<Uuid> = dead.iter().map(|d| d.queue.change_id).collect();
    let users: Vec<&str> = dead.iter().map(|d| clip_bytes(&d.queue.user_id, 512)).collect();
    let tables: Vec<&str> = dead
        .iter()
        .map(|d| clip_bytes(&d.queue.table_name, 200))
        .collect();
    let records: Vec<Option<&str>> = dead
        .iter()
        .map(|d| d.record_id.as_deref().map(|r| clip_bytes(r, 200)))
        .collect();
    let lengths: Vec<Option<i32>> = dead
        .iter()
        .map(|d| d.record_id.as_ref().map(|r| r.len() as i32))
        .collect();
    let reasons: Vec<&str> = dead.iter().map(|d| d.poison.reason()).collect();
    let details: Vec<String> = dead.iter().map(|d| d.poison.to_string()).collect();
    client
        .execute(
            &st.insert_dead,
            &[
                &queue_ids,
                &change_ids,
                &users,
                &tables,
                &records,
                &lengths,
                &reasons,
                &details,
            ],
        )
        .await?;
    Ok(())
}

/// One row of `mana_ai.dead_changes` as operators see it (ids, reason and a
/// detail that never carries field values).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadChangeRow {
    pub id: i64,
    pub change_id: Uuid,
    pub user_id: String,
    pub table_name: String,
    pub record_id: Option<String>,
    pub reason: String,
    pub detail: String,
    pub dead_at: chrono::DateTime<chrono::Utc>,
}

/// Set-aside changes, newest first, optionally of one user; with how many
/// there are in all (of that user).
pub async fn dead_changes(
    client: &impl GenericClient,
    user_id: Option<&str>,
    limit: i64,
) -> Result<(i64, Vec<DeadChangeRow>), tokio_postgres::Error> {
    let total: i64 = client
        .query_one(
            "SELECT count(*) FROM mana_ai.dead_changes WHERE $1::text IS NULL OR user_id = $1",
            &[&user_id],
        )
        .await?
        .try_get(0)?;
    let rows = client
        .query(
            "SELECT id, change_id, user_id, table_name, record_id, reason, detail, dead_at
             FROM mana_ai.dead_changes WHERE $1::text IS NULL OR user_id = $1
             ORDER BY id DESC LIMIT $2",
            &[&user_id, &limit],
        )
        .await?;
    let rows = rows
        .iter()
        .map(|r| {
            Ok(DeadChangeRow {
                id: r.try_get(0)?,
                change_id: r.try_get(1)?,
                user_id: r.try_get(2)?,
                table_name: r.try_get(3)?,
                record_id: r.try_get(4)?,
                reason: r.try_get(5)?,
                detail: r.try_get(6)?,
                dead_at: r.try_get(7)?,
            })
        })
        .collect::<Result<_, tokio_postgres::Error>>()?;
    Ok((total, rows))
}

/// Deletes one queue row outside a batch (used when a change could not be
/// applied at all and is set aside by itself).
pub async fn delete_queue_row(tx: &Transaction<'_>, id: i64) -> Result<u64, tokio_postgres::Error> {
    tx.execute("DELETE FROM mana_ai.change_queue WHERE id = $1", &[&id])
        .await
}

/// Every armable mission (active, not deleted, with a nextRunAt), streamed:
/// the wheel rebuild reads a million rows without holding them all.
pub async fn armable_missions(
    client: &impl GenericClient,
) -> Result<
    impl Stream<Item = Result<(String, String, String), tokio_postgres::Error>>,
    tokio_postgres::Error,
> {
    let params: [&str; 0] = [];
    let rows = client
        .query_raw(
            "SELECT user_id, mission_id, next_run_at FROM mana_ai.mission_snapshots
             WHERE NOT deleted AND state = 'active' AND next_run_at IS NOT NULL",
            params,
        )
        .await?;
    Ok(rows.and_then(|r| async move { Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)) }))
}

/// How many missions [`armable_missions`] will stream (the same partial
/// index, an index-only count), so the wheel can be sized once.
pub async fn count_armable_missions(
    client: &impl GenericClient,
) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*) FROM mana_ai.mission_snapshots
             WHERE NOT deleted AND state = 'active' AND next_run_at IS NOT NULL",
            &[],
        )
        .await?;
    row.try_get(0)
}

/// Queue depth and NOTIFY queue usage, read at scrape time.
pub async fn queue_gauges(
    client: &impl GenericClient,
) -> Result<(i64, f64), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM mana_ai.change_queue), pg_notification_queue_usage()",
            &[],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Armable missions (user id, mission id, nextRunAt) of the agents in
/// `agents` (user id, agent id); no query when `agents` is empty. Read after
/// the batch's mission upsert, so it sees the batch's own mission changes.
pub async fn armable_missions_of_agents(
    client: &impl GenericClient,
    st: &Prepared,
    agents: &[(&str, &str)],
) -> Result<Vec<(String, String, String)>, tokio_postgres::Error> {
    if agents.is_empty() {
        return Ok(Vec::new());
    }
    let users: Vec<&str> = agents.iter().map(|a| a.0).collect();
    let ids: Vec<&str> = agents.iter().map(|a| a.1).collect();
    let rows = client.query(&st.armable_of_agents, &[&users, &ids]).await?;
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect()
}

/// A record's rows in fold order when there is no queue id to go by:
/// `created_at`, then the inserting command's number within its transaction
/// (`cmin`, exact for separate INSERT statements), then physical position
/// (`ctid`, which is NOT insertion order once VACUUM has recorded free
/// space; see the header of `sync/fold.rs`). `cid` has no ordering operator,
/// hence the cast.
pub const REPLAY_ORDER: &str = "created_at, cmin::text::bigint, ctid";

/// Folds one record from its change rows (full replay, contract section 2),
/// inside whatever user scope the caller's transaction has. Malformed rows
/// are left out, as the webapp would fail to apply them too. None when the
/// record has no rows.
pub async fn fold_record(
    client: &impl GenericClient,
    app_id: &str,
    table_name: &str,
    record_id: &str,
) -> Result<Option<crate::sync::fold::Folded>, tokio_postgres::Error> {
    let rows = client
        .query(
            &format!(
                "SELECT id, op, data, field_timestamps, created_at FROM public.sync_changes
                 WHERE app_id = $1 AND table_name = $2 AND record_id = $3
                 ORDER BY {REPLAY_ORDER}"
            ),
            &[&app_id, &table_name, &record_id],
        )
        .await?;
    let mut changes = Vec::with_capacity(rows.len());
    for (seq, r) in (0i64..).zip(&rows) {
        let undecodable = |column| move |detail| Poison::ColumnUndecodable { column, detail };
        let read = || -> Result<RawChange, RowError> {
            Ok(RawChange {
                id: decode::column(r, 0, undecodable("id"))?,
                app_id: app_id.to_string(),
                table_name: table_name.to_string(),
                record_id: record_id.to_string(),
                op: decode::column(r, 1, undecodable("op"))?,
                data: decode::change_json(r, 2, "data")?,
                field_timestamps: decode::change_json(r, 3, "field_timestamps")?,
                created_at: decode::column(r, 4, undecodable("created_at"))?,
                seq,
                own_writeback: false,
            })
        };
        // A row the applier would set aside as poison is skipped here too.
        let raw = match read() {
            Ok(raw) => raw,
            Err(RowError::Systemic(e)) => return Err(e),
            Err(RowError::Poison(_)) => continue,
        };
        if let Ok(row) = crate::sync::change::to_row(raw) {
            changes.push(row);
        }
    }
    Ok(crate::sync::fold::replay(record_id, &changes))
}
