//! `mana_ai.mission_runs` (claims of due slots, back-off, release), the
//! stall queries over it, the due-tick query and the snapshots a run reads
//! (its mission and its agent).

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::{Client, GenericClient, Row};
use uuid::Uuid;

/// Identifies a slot: a mission's run due at one `nextRunAt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub user_id: String,
    pub mission_id: String,
    /// The `nextRunAt` string exactly as the snapshot holds it.
    pub slot: String,
}

/// `mission_runs.state`: the strings live here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunState {
    /// Claimed by a run (of this or another instance).
    Running,
    /// Backing off or given back; claimable from `retry_at`.
    Retry,
    /// The slot has its iteration.
    Done,
}

impl RunState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Retry => "retry",
            RunState::Done => "done",
        }
    }

    /// A state read back from the database; None for one this build does not know.
    pub(crate) fn parse(text: &str) -> Option<RunState> {
        [RunState::Running, RunState::Retry, RunState::Done]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// What claiming a slot found in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimRow {
    /// Inserted or taken over; `failures` of earlier attempts.
    Claimed { failures: i32 },
    /// Held otherwise: the row's state and back-off.
    Held {
        state: Option<RunState>,
        retry_at: Option<DateTime<Utc>>,
    },
}

const CLAIM: &str =
    "INSERT INTO mana_ai.mission_runs AS r (user_id, mission_id, slot, state, token, claimed_by)
     VALUES ($1, $2, $3, 'running', $4, $5)
     ON CONFLICT (user_id, mission_id, slot) DO UPDATE
       SET state = 'running', token = EXCLUDED.token, claimed_by = EXCLUDED.claimed_by,
           claimed_at = now(), attempts = r.attempts + 1, retry_at = NULL
       WHERE (r.state = 'retry' AND (r.retry_at IS NULL OR r.retry_at <= now()))
          OR r.state = 'running'
     RETURNING failures";

/// Inserts or takes over the slot's row with `token` (see `run::claim`),
/// committed without waiting for its WAL flush.
pub(crate) async fn claim(
    client: &mut Client,
    slot: &Slot,
    token: Uuid,
    instance: Uuid,
) -> Result<ClaimRow, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await?;
    let (user_id, mission_id, slot) = (&slot.user_id, &slot.mission_id, &slot.slot);
    let claimed = tx
        .query_opt(CLAIM, &[user_id, mission_id, slot, &token, &instance])
        .await?;
    if let Some(row) = claimed {
        tx.commit().await?;
        return Ok(ClaimRow::Claimed {
            failures: row.try_get("failures")?,
        });
    }
    let row = tx
        .query_one(
            "SELECT state, retry_at FROM mana_ai.mission_runs
             WHERE user_id = $1 AND mission_id = $2 AND slot = $3",
            &[user_id, mission_id, slot],
        )
        .await?;
    tx.commit().await?;
    let state: String = row.try_get("state")?;
    Ok(ClaimRow::Held {
        state: RunState::parse(&state),
        retry_at: row.try_get("retry_at")?,
    })
}

/// Gives a claim back without counting a failure.
pub(crate) async fn release(
    client: &impl GenericClient,
    slot: &Slot,
    token: Uuid,
    retry_at: Option<DateTime<Utc>>,
    outcome: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE mana_ai.mission_runs
             SET state = 'retry', retry_at = $5, outcome = $6
             WHERE user_id = $1 AND mission_id = $2 AND slot = $3 AND token = $4 AND state = 'running'",
            &[&slot.user_id, &slot.mission_id, &slot.slot, &token, &retry_at, &outcome],
        )
        .await?;
    Ok(())
}

/// Records the model the gateway resolved the planner's alias to, on the
/// running claim (kept whatever the run's end).
pub(crate) async fn record_resolved_model(
    client: &impl GenericClient,
    slot: &Slot,
    token: Uuid,
    model: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE mana_ai.mission_runs SET resolved_model = $5
             WHERE user_id = $1 AND mission_id = $2 AND slot = $3 AND token = $4 AND state = 'running'",
            &[&slot.user_id, &slot.mission_id, &slot.slot, &token, &model],
        )
        .await?;
    Ok(())
}

/// Records a failed attempt and when to try again.
pub(crate) async fn back_off(
    client: &impl GenericClient,
    slot: &Slot,
    token: Uuid,
    retry_at: DateTime<Utc>,
    outcome: &str,
    error: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE mana_ai.mission_runs
             SET state = 'retry', failures = failures + 1, retry_at = $5, outcome = $6, last_error = $7
             WHERE user_id = $1 AND mission_id = $2 AND slot = $3 AND token = $4 AND state = 'running'",
            &[&slot.user_id, &slot.mission_id, &slot.slot, &token, &retry_at, &outcome, &error],
        )
        .await?;
    Ok(())
}

/// What completing a slot records.
pub(crate) struct Completion<'a> {
    pub token: Uuid,
    pub iteration_id: &'a str,
    pub outcome: &'a str,
    pub change_id: Uuid,
}

/// Marks the slot done while the claim is still ours; false if it was taken over.
pub(crate) async fn complete(
    client: &impl GenericClient,
    slot: &Slot,
    done: &Completion<'_>,
) -> Result<bool, tokio_postgres::Error> {
    let n = client
        .execute(
            "UPDATE mana_ai.mission_runs
             SET state = 'done', iteration_id = $5, outcome = $6, finished_at = now(), retry_at = NULL,
                 change_id = $7
             WHERE user_id = $1 AND mission_id = $2 AND slot = $3 AND token = $4 AND state = 'running'",
            &[&slot.user_id, &slot.mission_id, &slot.slot, &done.token, &done.iteration_id, &done.outcome, &done.change_id],
        )
        .await?;
    Ok(n == 1)
}

/// One recent run of a mission (`mission_runs`), as the operators' view shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecentRun {
    #[serde(skip)]
    pub mission_id: String,
    pub slot: String,
    /// `running`, `retry` or `done`.
    pub state: String,
    pub attempts: i32,
    pub failures: i32,
    pub outcome: Option<String>,
    pub claimed_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub retry_at: Option<DateTime<Utc>>,
}

impl RecentRun {
    fn from_row(row: &Row) -> Result<RecentRun, tokio_postgres::Error> {
        Ok(RecentRun {
            mission_id: row.try_get("mission_id")?,
            slot: row.try_get("slot")?,
            state: row.try_get("state")?,
            attempts: row.try_get("attempts")?,
            failures: row.try_get("failures")?,
            outcome: row.try_get("outcome")?,
            claimed_at: row.try_get("claimed_at")?,
            finished_at: row.try_get("finished_at")?,
            retry_at: row.try_get("retry_at")?,
        })
    }
}

/// Recent runs of one user's missions, newest first, at most `per_mission`
/// each.
pub(crate) async fn recent_runs(
    client: &impl GenericClient,
    user_id: &str,
    per_mission: i64,
) -> Result<Vec<RecentRun>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT mission_id, slot, state, attempts, failures, outcome, claimed_at, finished_at, retry_at
             FROM (SELECT r.*, row_number() OVER (PARTITION BY mission_id ORDER BY claimed_at DESC) AS n
                   FROM mana_ai.mission_runs r WHERE user_id = $1) recent
             WHERE n <= $2
             ORDER BY mission_id, claimed_at DESC",
            &[&user_id, &per_mission],
        )
        .await?;
    rows.iter().map(RecentRun::from_row).collect()
}

/// Gives back every slot `instance` still has `running`.
pub(crate) async fn release_instance(
    client: &impl GenericClient,
    instance: Uuid,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE mana_ai.mission_runs SET state = 'retry', retry_at = now(), outcome = 'abandoned'
             WHERE claimed_by = $1 AND state = 'running'",
            &[&instance],
        )
        .await
}

/// Gives back every slot another term left `running` (a leader that was
/// SIGKILLed or lost its session): once this term leads, their claims are
/// stale, and completing requires `running`, so a late write-back of theirs
/// is fenced.
pub(crate) async fn release_other_terms(
    client: &impl GenericClient,
    term: Uuid,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE mana_ai.mission_runs SET state = 'retry', retry_at = now(), outcome = 'abandoned'
             WHERE state = 'running' AND claimed_by <> $1",
            &[&term],
        )
        .await
}

/// Why a done slot's write-back was set aside, if it was.
pub(crate) async fn set_aside_reason(
    client: &impl GenericClient,
    slot: &Slot,
) -> Result<Option<String>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT d.reason FROM mana_ai.mission_runs r
             JOIN mana_ai.dead_changes d ON d.change_id = r.change_id
             WHERE r.user_id = $1 AND r.mission_id = $2 AND r.slot = $3",
            &[&slot.user_id, &slot.mission_id, &slot.slot],
        )
        .await?;
    row.map(|r| r.try_get("reason")).transpose()
}

/// The newest claim of one mission, as the stall view reads it.
#[derive(Debug, Clone)]
pub(crate) struct NewestClaim {
    pub mission_id: String,
    pub state: Option<RunState>,
    pub outcome: Option<String>,
    /// The poison reason, when the slot's write-back was set aside.
    pub dead_reason: Option<String>,
    /// The snapshot still holds this claim's slot.
    pub at_slot: Option<bool>,
    /// The snapshot is active, not manual, and has no next run.
    pub no_next_run: Option<bool>,
}

const NEWEST_CLAIMS: &str = "SELECT DISTINCT ON (r.mission_id) r.mission_id, r.state, r.outcome,
        d.reason AS dead_reason,
        s.next_run_at = r.slot AS at_slot,
        s.next_run_at IS NULL AND s.state = 'active' AND NOT s.deleted
          AND coalesce(s.record->'cadence'->>'kind', '') <> 'manual' AS no_next_run
     FROM mana_ai.mission_runs r
     LEFT JOIN mana_ai.dead_changes d ON d.change_id = r.change_id
     LEFT JOIN mana_ai.mission_snapshots s
       ON s.user_id = r.user_id AND s.mission_id = r.mission_id
     WHERE r.user_id = $1
     ORDER BY r.mission_id, r.claimed_at DESC";

/// The newest claim of each of one user's missions.
pub(crate) async fn newest_claims(
    client: &impl GenericClient,
    user_id: &str,
) -> Result<Vec<NewestClaim>, tokio_postgres::Error> {
    let rows = client.query(NEWEST_CLAIMS, &[&user_id]).await?;
    rows.iter()
        .map(|row| {
            let state: String = row.try_get("state")?;
            Ok(NewestClaim {
                mission_id: row.try_get("mission_id")?,
                state: RunState::parse(&state),
                outcome: row.try_get("outcome")?,
                dead_reason: row.try_get("dead_reason")?,
                at_slot: row.try_get("at_slot")?,
                no_next_run: row.try_get("no_next_run")?,
            })
        })
        .collect()
}

/// A mission due now, for `/internal/tick`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DueMission {
    pub user_id: String,
    pub mission_id: String,
}

/// Active missions due at `now`. A slot already written whose write-back
/// the applier has not folded yet is not due: it would only end as done.
pub(crate) async fn due_missions(
    client: &impl GenericClient,
    now: DateTime<Utc>,
) -> Result<Vec<DueMission>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT s.user_id, s.mission_id FROM mana_ai.mission_snapshots s
             WHERE s.armable AND s.next_run_ts <= $1
               AND NOT EXISTS (
                 SELECT 1 FROM mana_ai.mission_runs r
                 WHERE r.user_id = s.user_id AND r.mission_id = s.mission_id
                   AND r.slot = s.next_run_at AND r.state = 'done')",
            &[&now],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(DueMission {
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

#[cfg(test)]
mod tests {
    use super::RunState;

    #[test]
    fn run_states_round_trip() {
        for s in [RunState::Running, RunState::Retry, RunState::Done] {
            assert_eq!(RunState::parse(s.as_str()), Some(s));
        }
        assert_eq!(RunState::parse("odd"), None);
    }
}
