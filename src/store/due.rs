//! What a run and `/internal/tick` read to start: the missions due now,
//! a due mission's snapshot and its agent's.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::GenericClient;

use crate::run_record::RunState;

/// A mission due now, for `/internal/tick`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DueNow {
    pub user_id: String,
    pub mission_id: String,
}

/// Active missions due at `now`. A slot already written whose write-back
/// the applier has not folded yet is not due: it would only end as done.
pub(crate) async fn due_missions(
    client: &impl GenericClient,
    now: DateTime<Utc>,
) -> Result<Vec<DueNow>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT s.user_id, s.mission_id FROM mana_ai.mission_snapshots s
             WHERE s.armable AND s.next_run_ts <= $1
               AND NOT EXISTS (
                 SELECT 1 FROM mana_ai.mission_runs r
                 WHERE r.user_id = s.user_id AND r.mission_id = s.mission_id
                   AND r.slot = s.next_run_at AND r.state = $2)",
            &[&now, &RunState::Done],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(DueNow {
                user_id: row.try_get("user_id")?,
                mission_id: row.try_get("mission_id")?,
            })
        })
        .collect()
}

/// An active mission's snapshot as a run reads it.
#[derive(Debug, Clone)]
pub(crate) struct MissionSnapshot {
    /// The record, its `iterations` cut to the last three.
    pub record: Value,
    pub next_run_at: Option<String>,
    pub next_run_ts: Option<DateTime<Utc>>,
    /// How many iterations the whole history holds.
    pub iteration_count: i32,
}

/// The snapshot as a run reads it: `iterations` cut to the last three (all
/// the prompt shows), so a run's memory does not grow with the history.
const LOAD_DUE: &str = "SELECT CASE WHEN jsonb_typeof(record->'iterations') = 'array'
            THEN record || jsonb_build_object('iterations',
                   jsonb_path_query_array(record->'iterations', '$[last-2 to last]'))
            ELSE record END AS record,
        next_run_at, next_run_ts,
        CASE WHEN jsonb_typeof(record->'iterations') = 'array'
            THEN jsonb_array_length(record->'iterations') ELSE 0 END AS iteration_count
     FROM mana_ai.mission_snapshots
     WHERE user_id = $1 AND mission_id = $2 AND NOT deleted AND state = 'active'";

/// The mission's active snapshot; None if deleted or not active.
pub(crate) async fn load_due(
    client: &impl GenericClient,
    user_id: &str,
    mission_id: &str,
) -> Result<Option<MissionSnapshot>, tokio_postgres::Error> {
    let row = client.query_opt(LOAD_DUE, &[&user_id, &mission_id]).await?;
    row.map(|row| {
        Ok(MissionSnapshot {
            record: row.try_get("record")?,
            next_run_at: row.try_get("next_run_at")?,
            next_run_ts: row.try_get("next_run_ts")?,
            iteration_count: row.try_get("iteration_count")?,
        })
    })
    .transpose()
}

/// A live agent's snapshot record; None if absent or deleted.
pub(crate) async fn agent_record(
    client: &impl GenericClient,
    user_id: &str,
    agent_id: &str,
) -> Result<Option<Value>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT record FROM mana_ai.agent_snapshots WHERE user_id = $1 AND agent_id = $2 AND NOT deleted",
            &[&user_id, &agent_id],
        )
        .await?;
    row.map(|r| r.try_get("record")).transpose()
}
