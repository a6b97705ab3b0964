//! How runs end: one run's [`Outcome`] (`run_outcomes_total{outcome}`) and
//! what a tick of every due mission did ([`TickStats`]).

use serde::Serialize;

/// How one run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An iteration was written back.
    Written,
    /// A plan was produced but another instance had taken the slot over.
    Fenced,
    /// The answer failed the parser; `final_` when a failed iteration was written.
    ParseFailed { final_: bool },
    /// The LLM failed (after its retries); `final_` as above.
    PlannerFailed { final_: bool },
    /// An agent gate said not now (decision label).
    Skipped(&'static str),
    /// Not due (any more): paused, deleted, moved to the future.
    NotDue,
    /// The slot already has its iteration.
    AlreadyDone,
    /// Waiting out a back-off from an earlier failure.
    BackingOff,
    /// Already running here.
    InFlight,
    /// The run failed unexpectedly (database, panic); retried later.
    Error,
}

impl Outcome {
    /// The metric label. The strings live here and nowhere else.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Written => "written",
            Outcome::Fenced => "fenced",
            Outcome::ParseFailed { .. } => "parse-failed",
            Outcome::PlannerFailed { .. } => "planner-failed",
            Outcome::Skipped(_) => "skipped",
            Outcome::NotDue => "not-due",
            Outcome::AlreadyDone => "already-done",
            Outcome::BackingOff => "backing-off",
            Outcome::InFlight => "in-flight",
            Outcome::Error => "error",
        }
    }
}

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

impl TickStats {
    /// Counts one run's outcome.
    pub fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Written => {
                self.plans_produced += 1;
                self.plans_written_back += 1;
            }
            Outcome::Fenced => self.plans_produced += 1,
            Outcome::ParseFailed { .. } => self.parse_failures += 1,
            Outcome::PlannerFailed { .. } | Outcome::Error => self.errors += 1,
            _ => {}
        }
    }
}
