//! The snapshot tables `mana_ai.mission_snapshots` and
//! `mana_ai.agent_snapshots`: loaded (and locked) and upserted by the
//! applier and the rebuild, and read for the armable missions the timer
//! wheel holds.
//!
//! "Armable" (active, not deleted, with a nextRunAt) is the generated
//! column `mission_snapshots.armable` (sql/0006_armable.sql) in SQL and
//! [`armable`] in Rust; nothing else spells the predicate out.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures_util::{Stream, TryStreamExt};
use serde_json::{Map, Value};
use tokio_postgres::{GenericClient, Row, Transaction};

use super::queue::ApplierStatements;
use crate::store::decode::{self, RowError};
use crate::sync::change::{Kind, Poison};
use crate::sync::fold::FoldState;
use crate::sync::row::parse_next_run;

/// Whether a mission is armable: active, not deleted, with a nextRunAt.
/// The same as the generated column `mission_snapshots.armable`.
pub(crate) fn armable(deleted: bool, state: Option<&str>, next_run_at: Option<&str>) -> bool {
    !deleted && state == Some("active") && next_run_at.is_some()
}

pub(super) const UPSERT_MISSIONS: &str = "INSERT INTO mana_ai.mission_snapshots
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

pub(super) const UPSERT_AGENTS: &str = "INSERT INTO mana_ai.agent_snapshots
       (user_id, agent_id, record, fold_state, deleted, change_count, last_applied_at, updated_at)
     SELECT u, a, r, f, d, c, l, now()
     FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::jsonb[], $5::bool[],
                 $6::int8[], $7::timestamptz[])
          AS t(u, a, r, f, d, c, l)
     ON CONFLICT (user_id, agent_id) DO UPDATE SET
       record = EXCLUDED.record, fold_state = EXCLUDED.fold_state,
       deleted = EXCLUDED.deleted, change_count = EXCLUDED.change_count,
       last_applied_at = EXCLUDED.last_applied_at, updated_at = now()";

/// Armable missions of some agents, by (user id, agent id) pairs: re-armed
/// when an agent changes, so a mission skipped while its agent was paused
/// runs once it is active again.
pub(super) const ARMABLE_OF_AGENTS: &str = "SELECT s.user_id, s.mission_id, s.next_run_at
     FROM mana_ai.mission_snapshots s
     JOIN unnest($1::text[], $2::text[]) AS k(u, a) ON s.user_id = k.u AND s.agent_id = k.a
     WHERE s.armable";

/// A snapshot as stored.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    pub record: Map<String, Value>,
    pub fold: FoldState,
    pub change_count: i64,
    pub last_applied_at: Option<DateTime<Utc>>,
}

/// (user id, record id)
pub(crate) type SnapshotKey = (String, String);

/// Snapshots as loaded: each readable, or why not.
pub(crate) type Loaded = HashMap<SnapshotKey, Result<Snapshot, Poison>>;

/// A snapshot row's stored columns (`record`, `fold_state`, `change_count`,
/// `last_applied_at`); one that cannot be read back is
/// [`Poison::SnapshotUnreadable`] of its record alone.
pub(crate) fn snapshot_from_row(row: &Row) -> Result<Snapshot, RowError> {
    let unreadable = |column| move |detail| Poison::SnapshotUnreadable { column, detail };
    let record = match decode::stored_json(row, "record")? {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    // A fold state of another version's shape is stale: the next row folded
    // into it replays the record from its history. One that is not
    // decodable JSON at all is unreadable.
    let fold = FoldState::decode(decode::stored_json(row, "fold_state")?);
    Ok(Snapshot {
        record,
        fold,
        change_count: decode::column(row, "change_count", unreadable("change_count"))?,
        last_applied_at: Some(decode::column(
            row,
            "last_applied_at",
            unreadable("last_applied_at"),
        )?),
    })
}

/// One snapshot row to write.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotWrite {
    pub user_id: String,
    pub record_id: String,
    pub record: Value,
    pub fold: Value,
    pub deleted: bool,
    pub state: Option<String>,
    pub next_run_at: Option<String>,
    /// `next_run_at` parsed (once, here); None when absent or not ISO-8601.
    pub next_run_ts: Option<DateTime<Utc>>,
    pub agent_id: Option<String>,
    pub change_count: i64,
    pub last_applied_at: DateTime<Utc>,
}

impl SnapshotWrite {
    /// Whether this mission snapshot is armable (see [`armable`]).
    pub(crate) fn armable(&self) -> bool {
        armable(
            self.deleted,
            self.state.as_deref(),
            self.next_run_at.as_deref(),
        )
    }
}

/// Inserts or updates snapshot rows in one statement; no query when `rows`
/// is empty.
pub(crate) async fn upsert(
    client: &impl GenericClient,
    statements: &ApplierStatements,
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
                    &statements.upsert_missions,
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
                    &statements.upsert_agents,
                    &[&users, &ids, &records, &folds, &deleted, &counts, &applied],
                )
                .await?;
        }
    }
    Ok(())
}

/// Deletes every snapshot of `users` (the rebuild folds them anew).
pub(crate) async fn delete_of_users(
    tx: &Transaction<'_>,
    users: &[String],
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "DELETE FROM mana_ai.mission_snapshots WHERE user_id = ANY($1)",
        &[&users],
    )
    .await?;
    tx.execute(
        "DELETE FROM mana_ai.agent_snapshots WHERE user_id = ANY($1)",
        &[&users],
    )
    .await?;
    Ok(())
}

/// An armable mission as stored, its `nextRunAt` parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArmableMission {
    pub user_id: String,
    pub mission_id: String,
    /// None: the stored `nextRunAt` is not an ISO-8601 time.
    pub next_run_at: Option<DateTime<Utc>>,
}

impl ArmableMission {
    fn from_row(r: &Row) -> Result<Self, tokio_postgres::Error> {
        let next: String = r.try_get("next_run_at")?;
        Ok(ArmableMission {
            user_id: r.try_get("user_id")?,
            mission_id: r.try_get("mission_id")?,
            next_run_at: parse_next_run(&next),
        })
    }
}

/// Every armable mission, streamed: the wheel rebuild reads a million rows
/// without holding them all.
pub(crate) async fn armable_missions(
    client: &impl GenericClient,
) -> Result<impl Stream<Item = Result<ArmableMission, tokio_postgres::Error>>, tokio_postgres::Error>
{
    let params: [&str; 0] = [];
    let rows = client
        .query_raw(
            "SELECT user_id, mission_id, next_run_at FROM mana_ai.mission_snapshots
             WHERE armable",
            params,
        )
        .await?;
    Ok(rows.and_then(|r| async move { ArmableMission::from_row(&r) }))
}

/// How many missions [`armable_missions`] will stream (the same partial
/// index, an index-only count), so the wheel can be sized once.
pub(crate) async fn count_armable_missions(
    client: &impl GenericClient,
) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT count(*) AS armable FROM mana_ai.mission_snapshots WHERE armable",
            &[],
        )
        .await?;
    row.try_get("armable")
}

/// Armable missions of the agents in `agents` (user id, agent id); no query
/// when `agents` is empty. Read after the batch's mission upsert, so it
/// sees the batch's own mission changes.
pub(crate) async fn armable_missions_of_agents(
    client: &impl GenericClient,
    statements: &ApplierStatements,
    agents: &[(&str, &str)],
) -> Result<Vec<ArmableMission>, tokio_postgres::Error> {
    if agents.is_empty() {
        return Ok(Vec::new());
    }
    let users: Vec<&str> = agents.iter().map(|a| a.0).collect();
    let ids: Vec<&str> = agents.iter().map(|a| a.1).collect();
    let rows = client
        .query(&statements.armable_of_agents, &[&users, &ids])
        .await?;
    rows.iter().map(ArmableMission::from_row).collect()
}

#[cfg(test)]
mod tests {
    use super::armable;

    #[test]
    fn armable_is_active_not_deleted_with_a_next_run() {
        assert!(armable(false, Some("active"), Some("2026-01-01T00:00:00Z")));
        assert!(!armable(true, Some("active"), Some("2026-01-01T00:00:00Z")));
        assert!(!armable(
            false,
            Some("paused"),
            Some("2026-01-01T00:00:00Z")
        ));
        assert!(!armable(false, None, Some("2026-01-01T00:00:00Z")));
        assert!(!armable(false, Some("active"), None));
    }
}
