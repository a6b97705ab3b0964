//! Missions that cannot advance, made visible: `missions_stalled_total
//! {reason}`, a warning with the reason, and `blocked` in
//! `GET /internal/missions/{userId}`.

use std::collections::HashMap;

use serde_json::{json, Value};
use tokio_postgres::GenericClient;

use super::claim::Slot;
use super::gates::GateDecision;
use super::Runner;
use crate::run_record::{RunOutcome, RunState};
use crate::store::runs::{self, NewestClaim};

/// Why a mission cannot advance (the metric label and `blocked.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// Its slot is written, but the write-back was set aside as poison, so
    /// the snapshot keeps the old slot.
    WriteBackSetAside,
    /// The cadence gave no next run (it does not parse): the run wrote
    /// `nextRunAt: null` although the mission is not manual.
    NoNextRun,
    /// `agentId` names no live agent.
    MissingAgent,
    /// The agent's policy does not parse.
    BadPolicy,
    /// The mission's title, concept or objective is `enc:1:` ciphertext
    /// (today's webapp encrypts them in a personal Space): nothing can read
    /// them, so nothing is planned until a plaintext copy exists.
    EncryptedText,
}

impl Stall {
    pub fn as_str(self) -> &'static str {
        match self {
            Stall::WriteBackSetAside => "write-back-set-aside",
            Stall::NoNextRun => "no-next-run",
            Stall::MissingAgent => "missing-agent",
            Stall::BadPolicy => "bad-policy",
            Stall::EncryptedText => "encrypted-text",
        }
    }
}

impl Runner {
    pub(super) fn stalled(&self, stall: Stall) {
        self.deps
            .metrics
            .missions_stalled
            .with_label_values(&[stall.as_str()])
            .inc();
    }

    /// A run found its slot done while the snapshot still holds it: normal
    /// while the write-back is queued, a stall once it was set aside.
    pub(super) async fn check_done_slot(&self, client: &impl GenericClient, slot: &Slot) {
        match runs::set_aside_reason(client, slot).await {
            Ok(Some(reason)) => {
                self.stalled(Stall::WriteBackSetAside);
                tracing::warn!(stall = Stall::WriteBackSetAside.as_str(), poison = %reason,
                    "the mission cannot advance: its write-back was set aside (see /internal/dead-changes)");
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "checking a done slot's write-back failed"),
        }
    }
}

/// Per mission of one user that cannot advance now: `{reason, detail?}`.
/// Read from the newest claim of each mission, so a fixed mission stops
/// showing up with its next run.
pub async fn blocked(
    client: &impl GenericClient,
    user_id: &str,
) -> Result<HashMap<String, Value>, tokio_postgres::Error> {
    let mut out = HashMap::new();
    for claim in runs::newest_claims(client, user_id).await? {
        if let Some((stall, detail)) = stall_of(&claim) {
            let value = json!({"reason": stall.as_str(), "detail": detail});
            out.insert(claim.mission_id, value);
        }
    }
    Ok(out)
}

/// Why the mission of this newest claim cannot advance, with a detail.
fn stall_of(claim: &NewestClaim) -> Option<(Stall, Option<String>)> {
    let skipped = claim.outcome.and_then(RunOutcome::skipped);
    match (claim.state, skipped, &claim.dead_reason) {
        (RunState::Done, _, Some(poison)) if claim.at_slot == Some(true) => {
            Some((Stall::WriteBackSetAside, Some(poison.clone())))
        }
        (RunState::Done, _, None) if claim.no_next_run == Some(true) => {
            Some((Stall::NoNextRun, None))
        }
        (RunState::Retry, Some(GateDecision::SkippedMissingAgent), _) => {
            Some((Stall::MissingAgent, None))
        }
        (RunState::Retry, Some(GateDecision::SkippedBadPolicy), _) => {
            Some((Stall::BadPolicy, None))
        }
        (RunState::Retry, Some(GateDecision::SkippedEncrypted), _) => {
            Some((Stall::EncryptedText, None))
        }
        _ => None,
    }
}
