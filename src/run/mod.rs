//! Mission runs: what happens when a mission's timer fires.

use serde::Serialize;

/// What one "run every due mission now" did (`POST /internal/tick`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TickStats {
    pub due_mission_count: u64,
    pub plans_produced: u64,
    pub plans_written_back: u64,
    pub parse_failures: u64,
    pub errors: u64,
}
