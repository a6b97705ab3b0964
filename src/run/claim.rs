//! The durable claim of a due slot (`mana_ai.mission_runs`).
//!
//! A slot is (mission, the `nextRunAt` it was due at). Claiming inserts or
//! takes over its row with a fresh token; the write-back marks it `done` in
//! the same transaction as the iteration, and only while the token is still
//! ours. So:
//! - a slot that was written is never run again (`done` is never claimed);
//! - a run that died (crash, SIGKILL, lost leadership) leaves `running`
//!   under another term's id (`claimed_by`), which the next leader takes over;
//! - a zombie whose slot was taken over cannot write (its token is stale);
//! - a failed run leaves `retry` with a time before which it is not retried;
//! - a run that ended in an error gives its claim back as it drops its
//!   `Claimed` (`claimed.rs`), retrying until the database answers; a row
//!   still `running` under this term's own id is a leftover of such a run
//!   (the runner never claims a mission it is running), so claiming takes
//!   it over.

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;
use uuid::Uuid;

pub use crate::run_record::Slot;
use crate::run_record::{RunOutcome, RunState};
pub use crate::store::runs::RecentRun;
use crate::store::runs::{self, ClaimRow};

/// What claiming a slot found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Ours: run it. `failures` counts earlier failed attempts of this slot.
    Claimed { token: Uuid, failures: i32 },
    /// The slot already has its iteration.
    Done,
    /// Backing off after a failure until this time.
    RetryAt(DateTime<Utc>),
    /// Another claim holds it (kept for callers; [`claim`] takes over every
    /// `running` row, since its caller is the only run of this mission here).
    Running,
}

/// The claim commits without waiting for its WAL flush: a claim lost in a
/// database crash only means the slot is claimed again, and the write-back
/// that marks it done commits synchronously with the iteration.
///
/// A `running` row is taken over whoever claimed it: another instance or an
/// earlier term is gone (we lead), and a run of this term cannot be in
/// flight, because the caller holds the mission's in-flight guard. A run that
/// somehow went on could not write anyway: its token is stale.
pub async fn claim(
    client: &mut tokio_postgres::Client,
    slot: &Slot,
    term: Uuid,
) -> Result<Claim, tokio_postgres::Error> {
    let token = Uuid::new_v4();
    Ok(match runs::claim(client, slot, token, term).await? {
        ClaimRow::Claimed { failures } => Claim::Claimed { token, failures },
        ClaimRow::Held { state, retry_at } => match (state, retry_at) {
            (RunState::Done, _) => Claim::Done,
            (RunState::Retry, Some(at)) => Claim::RetryAt(at),
            _ => Claim::Running,
        },
    })
}

/// Gives a claim back without counting a failure (an agent gate said not now).
pub async fn release(
    client: &impl GenericClient,
    slot: &Slot,
    token: Uuid,
    retry_at: Option<DateTime<Utc>>,
    outcome: RunOutcome,
) -> Result<(), tokio_postgres::Error> {
    runs::release(client, slot, token, retry_at, outcome).await
}

/// Records a failed attempt and when to try again.
pub async fn back_off(
    client: &impl GenericClient,
    slot: &Slot,
    token: Uuid,
    retry_at: DateTime<Utc>,
    outcome: RunOutcome,
    error: &str,
) -> Result<(), tokio_postgres::Error> {
    runs::back_off(client, slot, token, retry_at, outcome, error).await
}

/// Marks the slot done; false if the claim was taken over meanwhile (then the
/// caller must roll back its write).
pub async fn complete(
    client: &impl GenericClient,
    slot: &Slot,
    token: Uuid,
    iteration_id: &str,
    outcome: RunOutcome,
    change_id: Uuid,
) -> Result<bool, tokio_postgres::Error> {
    let done = runs::Completion {
        token,
        iteration_id,
        outcome,
        change_id,
    };
    runs::complete(client, slot, &done).await
}

/// Recent runs of one user's missions, newest first (operators' view).
pub async fn recent(
    client: &impl GenericClient,
    user_id: &str,
    per_mission: i64,
) -> Result<Vec<RecentRun>, tokio_postgres::Error> {
    runs::recent_runs(client, user_id, per_mission).await
}

/// Gives back every slot an earlier term left `running` when this term
/// starts to lead. A due mission would take such a claim over anyway; one
/// that is no longer due (deleted, paused, moved) would otherwise keep it
/// `running` for ever, out of retention's reach.
pub async fn release_other_terms(
    client: &impl GenericClient,
    term: Uuid,
) -> Result<u64, tokio_postgres::Error> {
    runs::release_other_terms(client, term).await
}

/// Gives back every slot this term still has `running` (shutdown past
/// its grace): the next leader may run them at once. A run of ours that is
/// still going cannot write afterwards: completing requires `running`.
pub async fn release_term(
    client: &impl GenericClient,
    term: Uuid,
) -> Result<u64, tokio_postgres::Error> {
    runs::release_term(client, term).await
}
