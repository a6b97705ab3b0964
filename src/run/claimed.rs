//! A slot this run holds, and the only ways to let it go.
//!
//! [`Claimed`] is made by claiming (`mission.rs`) and ends in one of three
//! consuming methods, each of which settles the slot's `mission_runs` row in
//! the database before it lets the value go:
//! - [`Claimed::release`]: a gate said not now; the slot goes back uncounted;
//! - [`Claimed::back_off`]: a failed attempt, retried after its back-off;
//! - [`Claimed::write_back`]: the iteration (planned, or failed for good)
//!   and the slot marked done, in one transaction.
//!
//! A method whose statement fails, or a `Claimed` dropped any other way (an
//! error returned with `?`, a panic, an abort at shutdown), gives the slot
//! back from its `Drop` as a failed attempt in the phase the run was in, from
//! a task that retries until the database answers or the pool closes. So no
//! path leaves the slot `running` under a live term without a tested reason.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

use super::claim;
use super::gates::GateDecision;
use super::writeback::{self, WriteBack};
use crate::backoff::Backoff;
use crate::run_record::{Phase, RunOutcome, Slot};

/// Tokens a failed answer cost, counted against the budgets as it backs off.
pub(super) struct Spent<'a> {
    pub agent_id: Option<&'a str>,
    pub tokens: i64,
}

/// A claimed slot not yet settled (see the module's comment).
pub(super) struct Claimed {
    pool: deadpool_postgres::Pool,
    slot: Slot,
    token: Uuid,
    /// Earlier failed attempts of this slot.
    failures: u32,
    /// When an unsettled run's slot may be tried again.
    retry_at: DateTime<Utc>,
    /// Where the run is: `mission_runs.outcome` if it does not settle.
    phase: Phase,
    /// False once a consuming method settled the slot.
    unsettled: bool,
}

impl Claimed {
    /// A slot just claimed with `token`, in the phase of resolving inputs.
    pub fn new(
        pool: deadpool_postgres::Pool,
        slot: Slot,
        token: Uuid,
        failures: u32,
        retry_at: DateTime<Utc>,
    ) -> Self {
        Self {
            pool,
            slot,
            token,
            failures,
            retry_at,
            phase: Phase::ResolvingInputs,
            unsettled: true,
        }
    }

    /// The claim's token: only a write carrying it can settle the slot.
    pub fn token(&self) -> Uuid {
        self.token
    }

    /// Earlier failed attempts of this slot.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The run moved on to `phase` (recorded if it does not settle).
    pub fn enter(&mut self, phase: Phase) {
        self.phase = phase;
    }

    /// Gives the slot back without counting a failure (a gate said not now),
    /// to be claimed again from `retry_at`, or at its next timer.
    pub async fn release(
        mut self,
        client: &impl GenericClient,
        retry_at: Option<DateTime<Utc>>,
        decision: GateDecision,
    ) -> Result<(), tokio_postgres::Error> {
        let outcome = RunOutcome::Skipped(decision);
        claim::release(client, &self.slot, self.token, retry_at, outcome).await?;
        self.unsettled = false;
        Ok(())
    }

    /// Records a failed attempt in `phase`, retried from `retry_at`; the
    /// answer's tokens (if any) count against the budgets in the same
    /// transaction.
    pub async fn back_off(
        mut self,
        client: &mut tokio_postgres::Client,
        retry_at: DateTime<Utc>,
        phase: Phase,
        error: &str,
        spent: Spent<'_>,
    ) -> anyhow::Result<()> {
        let (slot, token) = (&self.slot, self.token);
        let tx = client.transaction().await?;
        let outcome = RunOutcome::FailedIn(phase);
        claim::back_off(&tx, slot, token, retry_at, outcome, error).await?;
        if spent.tokens > 0 {
            let (user, mission) = (&slot.user_id, &slot.mission_id);
            let agent = spent.agent_id;
            crate::store::usage::record(&tx, user, agent, mission, spent.tokens).await?;
        }
        tx.commit().await?;
        self.unsettled = false;
        Ok(())
    }

    /// Commits the iteration with the slot marked done; false when the claim
    /// was taken over meanwhile (nothing written, and the slot is the other
    /// claim's to settle).
    pub async fn write_back(
        mut self,
        client: &mut tokio_postgres::Client,
        write: &WriteBack,
    ) -> anyhow::Result<bool> {
        debug_assert_eq!((&write.slot, write.token), (&self.slot, self.token));
        let written = writeback::commit(client, write).await?;
        self.unsettled = false;
        Ok(written)
    }
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if !self.unsettled {
            return;
        }
        let (pool, slot) = (self.pool.clone(), self.slot.clone());
        let (token, retry_at, phase) = (self.token, self.retry_at, self.phase);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(give_back(pool, slot, token, retry_at, phase));
        }
    }
}

/// Waits between attempts to give a claim back.
const GIVE_BACK: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Records a failed attempt of an unsettled run, until the database takes
/// it or the pool is closed (the service stops: the next leader releases
/// what this term left `running`, see [`claim::release_other_terms`]). Once
/// the database takes it, the update either lands or finds the claim taken
/// over (done, or claimed again): either way the slot is not left `running`.
async fn give_back(
    pool: deadpool_postgres::Pool,
    slot: Slot,
    token: Uuid,
    retry_at: DateTime<Utc>,
    phase: Phase,
) {
    let mut retries = GIVE_BACK.attempts();
    let message = format!("run did not finish ({})", phase.as_str());
    for attempt in 1u32.. {
        if pool.is_closed() {
            tracing::warn!(attempt, slot = %slot.due_at, "pool closed; an unfinished run's slot is left to the next term");
            return;
        }
        let result = async {
            let client = pool.get().await?;
            let outcome = RunOutcome::Unfinished;
            claim::back_off(&**client, &slot, token, retry_at, outcome, &message).await?;
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                if attempt > 1 {
                    tracing::info!(attempt, slot = %slot.due_at, "unfinished run's slot given back");
                }
                return;
            }
            Err(e) if attempt == 1 || attempt % 20 == 0 => tracing::warn!(
                attempt, slot = %slot.due_at, error = %format!("{e:#}"),
                "giving an unfinished run's slot back failed; retrying until the database answers"
            ),
            Err(_) => {}
        }
        tokio::time::sleep(retries.failed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed_pool() -> deadpool_postgres::Pool {
        // Nothing answers there: every attempt would fail.
        let pool =
            crate::db::pool("postgresql://nobody@127.0.0.1:9/none", 1, "test", None).unwrap();
        pool.close();
        pool
    }

    fn claimed(pool: deadpool_postgres::Pool) -> Claimed {
        let slot = Slot {
            user_id: "u".into(),
            mission_id: "m".into(),
            due_at: "2026-12-05T08:00:00.000Z".into(),
        };
        Claimed::new(pool, slot, Uuid::new_v4(), 0, Utc::now())
    }

    fn alive() -> usize {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    }

    /// A slot dropped unsettled after the pool closed (the service stopped)
    /// gives up at once instead of retrying for ever: nothing outlives the pool.
    #[tokio::test(start_paused = true)]
    async fn a_give_back_ends_when_the_pool_is_closed() {
        let mut held = claimed(closed_pool());
        held.enter(Phase::CallingLlm);
        assert_eq!(alive(), 0);
        drop(held);
        assert_eq!(alive(), 1, "the give-back started");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(alive(), 0, "the give-back still runs after the pool closed");
    }
}
