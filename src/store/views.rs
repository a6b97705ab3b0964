//! The operator's read-only views (`GET /internal/missions/{userId}`): typed
//! rows, read by column name.

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::{GenericClient, Row};

/// One mission of a user, as the operator's view shows it: the snapshot's
/// columns and what is read out of its folded record (never grant material
/// or content).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MissionOverview {
    pub mission_id: String,
    pub deleted: bool,
    pub state: Option<String>,
    pub next_run_at: Option<String>,
    pub agent_id: Option<String>,
    pub cadence: Option<Value>,
    /// Length of `iterations` (0 when it is not an array).
    pub iteration_count: i32,
    /// `overallStatus` of the last iteration.
    pub last_iteration_status: Option<String>,
    pub change_count: i64,
    pub updated_at: DateTime<Utc>,
}

impl MissionOverview {
    fn from_row(row: &Row) -> Result<MissionOverview, tokio_postgres::Error> {
        Ok(MissionOverview {
            mission_id: row.try_get("mission_id")?,
            deleted: row.try_get("deleted")?,
            state: row.try_get("state")?,
            next_run_at: row.try_get("next_run_at")?,
            agent_id: row.try_get("agent_id")?,
            cadence: row.try_get("cadence")?,
            iteration_count: row.try_get("iteration_count")?,
            last_iteration_status: row.try_get("last_iteration_status")?,
            change_count: row.try_get("change_count")?,
            updated_at: row.try_get("updated_at")?,
        })
    }
}

/// Every mission snapshot of `user_id`, by mission id.
pub(crate) async fn user_missions(
    client: &impl GenericClient,
    user_id: &str,
) -> Result<Vec<MissionOverview>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT mission_id, deleted, state, next_run_at, agent_id,
                    record->'cadence' AS cadence,
                    coalesce(jsonb_array_length(CASE WHEN jsonb_typeof(record->'iterations') = 'array'
                                                     THEN record->'iterations' END), 0) AS iteration_count,
                    CASE WHEN jsonb_typeof(record->'iterations') = 'array'
                         THEN record->'iterations'->-1->>'overallStatus' END AS last_iteration_status,
                    change_count, updated_at
             FROM mana_ai.mission_snapshots WHERE user_id = $1 ORDER BY mission_id",
            &[&user_id],
        )
        .await?;
    rows.iter().map(MissionOverview::from_row).collect()
}
