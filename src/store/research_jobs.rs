//! `mana_ai.research_jobs`: the one deep research job of a mission (see
//! `run::deep`). The table forces row-level security, so every statement
//! runs in a transaction scoped to the job's user (`db::begin_user`).

use chrono::{DateTime, Utc};
use tokio_postgres::{GenericClient, Row};

use crate::run::deep::{Job, JobState};

/// The mission's job, if it has one.
pub(crate) async fn load(
    client: &impl GenericClient,
    user_id: &str,
    mission_id: &str,
) -> anyhow::Result<Option<Job>> {
    let row = client
        .query_opt(
            "SELECT slot, task_id, provider_id, state, submitted_at FROM mana_ai.research_jobs
             WHERE user_id = $1 AND mission_id = $2",
            &[&user_id, &mission_id],
        )
        .await?;
    row.map(|r| job(&r)).transpose()
}

fn job(row: &Row) -> anyhow::Result<Job> {
    let state: String = row.try_get("state")?;
    Ok(Job {
        slot: row.try_get("slot")?,
        task_id: row.try_get("task_id")?,
        provider_id: row.try_get("provider_id")?,
        state: JobState::parse(&state)
            .ok_or_else(|| anyhow::anyhow!("research_jobs.state {state:?} is not known"))?,
        submitted_at: row.try_get("submitted_at")?,
    })
}

/// Records a newly submitted job, replacing the mission's earlier one.
pub(crate) async fn put(
    client: &impl GenericClient,
    user_id: &str,
    mission_id: &str,
    job: &Job,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO mana_ai.research_jobs
                 (user_id, mission_id, slot, task_id, provider_id, state, submitted_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (user_id, mission_id) DO UPDATE
               SET slot = EXCLUDED.slot, task_id = EXCLUDED.task_id,
                   provider_id = EXCLUDED.provider_id, state = EXCLUDED.state,
                   submitted_at = EXCLUDED.submitted_at, last_polled_at = NULL",
            &[
                &user_id,
                &mission_id,
                &job.slot,
                &job.task_id,
                &job.provider_id,
                &job.state.as_str(),
                &job.submitted_at,
            ],
        )
        .await?;
    Ok(())
}

/// After a poll of task `task_id`: its state now, the slot it answers for,
/// and when it was polled. A job replaced meanwhile is left alone.
pub(crate) async fn polled(
    client: &impl GenericClient,
    user_id: &str,
    mission_id: &str,
    task_id: &str,
    (state, slot): (JobState, &str),
    at: DateTime<Utc>,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE mana_ai.research_jobs SET state = $4, slot = $5, last_polled_at = $6
             WHERE user_id = $1 AND mission_id = $2 AND task_id = $3",
            &[&user_id, &mission_id, &task_id, &state.as_str(), &slot, &at],
        )
        .await?;
    Ok(())
}
