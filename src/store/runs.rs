//! `mana_ai.mission_runs` (claims of due slots, back-off, release), the
//! stall queries over it, the due-tick query and the snapshots a run reads
//! (its mission and its agent).

use chrono::{DateTime, Utc};
use tokio_postgres::{Client, GenericClient, Row};
use uuid::Uuid;

use crate::run_record::{RunOutcome, RunState, Slot};

/// What claiming a slot found in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimRow {
    /// Inserted or taken over; `failures` of earlier attempts.
    Claimed { failures: i32 },
    /// Held otherwise: the row's state and back-off.
    Held {
        state: RunState,
        retry_at: Option<DateTime<Utc>>,
    },
}

/// `$6` is `running`, `$7` is `retry` ([`RunState`]).
const CLAIM: &str =
    "INSERT INTO mana_ai.mission_runs AS r (user_id, mission_id, slot, state, token, claimed_by)
     VALUES ($1, $2, $3, $6, $4, $5)
     ON CONFLICT (user_id, mission_id, slot) DO UPDATE
       SET state = $6, token = EXCLUDED.token, claimed_by = EXCLUDED.claimed_by,
           claimed_at = now(), attempts = r.attempts + 1, retry_at = NULL
       WHERE (r.state = $7 AND (r.retry_at IS NULL OR r.retry_at <= now()))
          OR r.state = $6
     RETURNING failures";

/// Inserts or takes over the slot's row with `token` (see `run::claim`),
/// committed without waiting for its WAL flush.
pub(crate) async fn claim(
    client: &mut Client,
    slot: &Slot,
    token: Uuid,
    term: Uuid,
) -> Result<ClaimRow, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await?;
    let (user_id, mission_id, slot) = (&slot.user_id, &slot.mission_id, &slot.due_at);
    let (running, retry) = (RunState::Running, RunState::Retry);
    let claimed = tx
        .query_opt(
            CLAIM,
            &[user_id, mission_id, slot, &token, &term, &running, &retry],
        )
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
    Ok(ClaimRow::Held {
        state: row.try_get("state")?,
        retry_at: row.try_get("retry_at")?,
    })
}

/// Gives a claim back without counting a failure.
pub(crate) async fn release(
    client: &impl GenericClient,
    slot: &Slot,
    token: Uuid,
    retry_at: Option<DateTime<Utc>>,
    outcome: RunOutcome,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE mana_ai.mission_runs
             SET state = $7, retry_at = $5, outcome = $6
             WHERE user_id = $1 AND mission_id = $2 AND slot = $3 AND token = $4 AND state = $8",
            &[
                &slot.user_id,
                &slot.mission_id,
                &slot.due_at,
                &token,
                &retry_at,
                &outcome,
                &RunState::Retry,
                &RunState::Running,
            ],
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
             WHERE user_id = $1 AND mission_id = $2 AND slot = $3 AND token = $4 AND state = $6",
            &[
                &slot.user_id,
                &slot.mission_id,
                &slot.due_at,
                &token,
                &model,
                &RunState::Running,
            ],
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
    outcome: RunOutcome,
    error: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE mana_ai.mission_runs
             SET state = $8, failures = failures + 1, retry_at = $5, outcome = $6, last_error = $7
             WHERE user_id = $1 AND mission_id = $2 AND slot = $3 AND token = $4 AND state = $9",
            &[
                &slot.user_id,
                &slot.mission_id,
                &slot.due_at,
                &token,
                &retry_at,
                &outcome,
                &error,
                &RunState::Retry,
                &RunState::Running,
            ],
        )
        .await?;
    Ok(())
}

/// What completing a slot records.
pub(crate) struct Completion<'a> {
    pub token: Uuid,
    pub iteration_id: &'a str,
    pub outcome: RunOutcome,
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
             SET state = $8, iteration_id = $5, outcome = $6, finished_at = now(), retry_at = NULL,
                 change_id = $7
             WHERE user_id = $1 AND mission_id = $2 AND slot = $3 AND token = $4 AND state = $9",
            &[
                &slot.user_id,
                &slot.mission_id,
                &slot.due_at,
                &done.token,
                &done.iteration_id,
                &done.outcome,
                &done.change_id,
                &RunState::Done,
                &RunState::Running,
            ],
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
    pub state: RunState,
    pub attempts: i32,
    pub failures: i32,
    pub outcome: Option<RunOutcome>,
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

/// Gives back every slot the term `term` still has `running`.
pub(crate) async fn release_term(
    client: &impl GenericClient,
    term: Uuid,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute(
            "UPDATE mana_ai.mission_runs SET state = $2, retry_at = now(), outcome = $3
             WHERE claimed_by = $1 AND state = $4",
            &[
                &term,
                &RunState::Retry,
                &RunOutcome::Abandoned,
                &RunState::Running,
            ],
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
            "UPDATE mana_ai.mission_runs SET state = $2, retry_at = now(), outcome = $3
             WHERE state = $4 AND claimed_by <> $1",
            &[
                &term,
                &RunState::Retry,
                &RunOutcome::Abandoned,
                &RunState::Running,
            ],
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
            &[&slot.user_id, &slot.mission_id, &slot.due_at],
        )
        .await?;
    row.map(|r| r.try_get("reason")).transpose()
}

/// The newest claim of one mission, as the stall view reads it.
#[derive(Debug, Clone)]
pub(crate) struct NewestClaim {
    pub mission_id: String,
    pub state: RunState,
    pub outcome: Option<RunOutcome>,
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
            Ok(NewestClaim {
                mission_id: row.try_get("mission_id")?,
                state: row.try_get("state")?,
                outcome: row.try_get("outcome")?,
                dead_reason: row.try_get("dead_reason")?,
                at_slot: row.try_get("at_slot")?,
                no_next_run: row.try_get("no_next_run")?,
            })
        })
        .collect()
}
