//! Missions that cannot advance, made visible: `missions_stalled_total
//! {reason}`, a warning with the reason, and `blocked` in
//! `GET /internal/missions/{userId}`.

use std::collections::HashMap;

use serde_json::{json, Value};
use tokio_postgres::GenericClient;

use super::claim::Slot;
use super::Runner;

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
}

impl Stall {
    pub fn as_str(self) -> &'static str {
        match self {
            Stall::WriteBackSetAside => "write-back-set-aside",
            Stall::NoNextRun => "no-next-run",
            Stall::MissingAgent => "missing-agent",
            Stall::BadPolicy => "bad-policy",
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
        let found = client
            .query_opt(
                "SELECT d.reason FROM mana_ai.mission_runs r
                 JOIN mana_ai.dead_changes d ON d.change_id = r.change_id
                 WHERE r.user_id = $1 AND r.mission_id = $2 AND r.slot = $3",
                &[&slot.user_id, &slot.mission_id, &slot.slot],
            )
            .await;
        match found {
            Ok(Some(row)) => {
                let reason: String = row.get(0);
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
    let rows = client
        .query(
            "SELECT DISTINCT ON (r.mission_id) r.mission_id, r.state, r.outcome, d.reason,
                    s.next_run_at = r.slot,
                    s.next_run_at IS NULL AND s.state = 'active' AND NOT s.deleted
                      AND coalesce(s.record->'cadence'->>'kind', '') <> 'manual'
             FROM mana_ai.mission_runs r
             LEFT JOIN mana_ai.dead_changes d ON d.change_id = r.change_id
             LEFT JOIN mana_ai.mission_snapshots s
               ON s.user_id = r.user_id AND s.mission_id = r.mission_id
             WHERE r.user_id = $1
             ORDER BY r.mission_id, r.claimed_at DESC",
            &[&user_id],
        )
        .await?;
    let mut out = HashMap::new();
    for row in &rows {
        let (state, outcome): (String, Option<String>) = (row.try_get(1)?, row.try_get(2)?);
        let dead: Option<String> = row.try_get(3)?;
        let at_slot: Option<bool> = row.try_get(4)?;
        let no_next: Option<bool> = row.try_get(5)?;
        let stall = match (state.as_str(), outcome.as_deref(), dead) {
            ("done", _, Some(poison)) if at_slot == Some(true) => {
                Some((Stall::WriteBackSetAside, Some(poison)))
            }
            ("done", _, None) if no_next == Some(true) => Some((Stall::NoNextRun, None)),
            ("retry", Some("skipped-missing-agent"), _) => Some((Stall::MissingAgent, None)),
            ("retry", Some("skipped-bad-policy"), _) => Some((Stall::BadPolicy, None)),
            _ => None,
        };
        if let Some((stall, detail)) = stall {
            let value = json!({"reason": stall.as_str(), "detail": detail});
            out.insert(row.try_get(0)?, value);
        }
    }
    Ok(out)
}
