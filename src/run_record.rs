//! What `mana_ai.mission_runs` records of a run, as types: the slot, its
//! state, how its latest attempt ended, and the vocabulary of both (the
//! gates' decisions, the phases of a run). Each column has one type, and
//! its strings live here and nowhere else: the store binds and reads these
//! types (`ToSql`/`FromSql` as text), and migration 0011's CHECK lists the
//! same strings (a test below compares them), so the database refuses a
//! string this code does not know.
//!
//! Below both `run` (which decides) and `store` (which writes): neither
//! imports the other for these.

use std::error::Error;

use bytes::BytesMut;
use postgres_types::{accepts, to_sql_checked, FromSql, IsNull, ToSql, Type};

/// Identifies a slot: a mission's run due at one `nextRunAt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub user_id: String,
    pub mission_id: String,
    /// The `nextRunAt` string exactly as the snapshot holds it.
    pub due_at: String,
}

/// `mission_runs.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Claimed by a run (of this or another instance).
    Running,
    /// Backing off or given back; claimable from `retry_at`.
    Retry,
    /// The slot has its iteration.
    Done,
}

impl RunState {
    pub const ALL: [RunState; 3] = [RunState::Running, RunState::Retry, RunState::Done];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Retry => "retry",
            RunState::Done => "done",
        }
    }
}

/// The webapp's iteration phases a run of mana-ai goes through (a failed
/// iteration's `errorDetails.phase`; `staging-proposals` is the webapp's
/// own step after a write-back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Agent, grant, inputs and research: everything before the prompt.
    ResolvingInputs,
    /// The prompt and the LLM request with its retries.
    CallingLlm,
    /// The strict parse of the answer.
    ParsingResponse,
    /// The write-back of the iteration.
    Finalizing,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Phase::ResolvingInputs,
        Phase::CallingLlm,
        Phase::ParsingResponse,
        Phase::Finalizing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::ResolvingInputs => "resolving-inputs",
            Phase::CallingLlm => "calling-llm",
            Phase::ParsingResponse => "parsing-response",
            Phase::Finalizing => "finalizing",
        }
    }
}

/// What the gates decided (`agent_decisions_total{decision}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateDecision {
    Ran,
    SkippedPaused,
    SkippedArchived,
    SkippedConcurrency,
    SkippedBudget,
    /// `agentId` names no live agent snapshot; runs once the agent appears
    /// (the applier re-arms an agent's missions when the agent changes).
    SkippedMissingAgent,
    /// The agent's `policy` does not parse; runs once the agent is fixed.
    SkippedBadPolicy,
    /// The mission's text is `enc:1:` ciphertext; runs once it is not.
    SkippedEncrypted,
    /// The mission's deep research job is still pending; polled again after
    /// `MANA_AI_RESEARCH_POLL_SECS` (see `run::deep`).
    SkippedResearchPending,
}

impl GateDecision {
    /// Every decision (the metric's label values start from this list).
    pub const ALL: [GateDecision; 9] = [
        GateDecision::Ran,
        GateDecision::SkippedPaused,
        GateDecision::SkippedArchived,
        GateDecision::SkippedConcurrency,
        GateDecision::SkippedBudget,
        GateDecision::SkippedMissingAgent,
        GateDecision::SkippedBadPolicy,
        GateDecision::SkippedEncrypted,
        GateDecision::SkippedResearchPending,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GateDecision::Ran => "ran",
            GateDecision::SkippedPaused => "skipped-paused",
            GateDecision::SkippedArchived => "skipped-archived",
            GateDecision::SkippedConcurrency => "skipped-concurrency",
            GateDecision::SkippedBudget => "skipped-budget",
            GateDecision::SkippedMissingAgent => "skipped-missing-agent",
            GateDecision::SkippedBadPolicy => "skipped-bad-policy",
            GateDecision::SkippedEncrypted => "skipped-encrypted",
            GateDecision::SkippedResearchPending => "skipped-research-pending",
        }
    }
}

/// `mission_runs.outcome`: how the slot's latest attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Done: the planned iteration was written back.
    Written,
    /// Done: a failed iteration was written back (out of attempts, or the
    /// gateway refused the request).
    Failed,
    /// Given back: a gate skipped the run (never `Ran`).
    Skipped(GateDecision),
    /// Backing off: the attempt failed in this phase.
    FailedIn(Phase),
    /// Backing off: the run ended unfinished (an error, a panic, an abort)
    /// and its claimed slot, dropped unsettled, was given back.
    Unfinished,
    /// Given back by a term that stopped, or by the next term for one that
    /// died.
    Abandoned,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Written => "written",
            RunOutcome::Failed => "failed",
            RunOutcome::Skipped(decision) => decision.as_str(),
            RunOutcome::FailedIn(phase) => phase.as_str(),
            RunOutcome::Unfinished => "error",
            RunOutcome::Abandoned => "abandoned",
        }
    }

    /// Every outcome there is (a gate's `Ran` is no outcome).
    pub fn all() -> impl Iterator<Item = RunOutcome> {
        let fixed = [
            RunOutcome::Written,
            RunOutcome::Failed,
            RunOutcome::Unfinished,
            RunOutcome::Abandoned,
        ];
        let skips = GateDecision::ALL
            .into_iter()
            .filter(|d| *d != GateDecision::Ran)
            .map(RunOutcome::Skipped);
        let phases = Phase::ALL.into_iter().map(RunOutcome::FailedIn);
        fixed.into_iter().chain(skips).chain(phases)
    }

    pub fn parse(text: &str) -> Option<RunOutcome> {
        RunOutcome::all().find(|o| o.as_str() == text)
    }

    /// The decision of a skipped run.
    pub fn skipped(self) -> Option<GateDecision> {
        match self {
            RunOutcome::Skipped(decision) => Some(decision),
            _ => None,
        }
    }
}

impl serde::Serialize for RunOutcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl serde::Serialize for RunState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A column value this build does not know.
#[derive(Debug, thiserror::Error)]
#[error("mission_runs.{column} holds {value:?}, which this build does not know")]
pub struct UnknownValue {
    pub column: &'static str,
    pub value: String,
}

/// `ToSql`/`FromSql` as text through `as_str`/`parse`.
macro_rules! text_column {
    ($type:ty, $column:literal, $parse:expr) => {
        impl ToSql for $type {
            fn to_sql(
                &self,
                ty: &Type,
                out: &mut BytesMut,
            ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
                self.as_str().to_sql(ty, out)
            }
            accepts!(TEXT, VARCHAR);
            to_sql_checked!();
        }

        impl<'a> FromSql<'a> for $type {
            fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
                let text = <&str as FromSql>::from_sql(ty, raw)?;
                let parse: fn(&str) -> Option<$type> = $parse;
                parse(text).ok_or_else(|| {
                    let value = text.chars().take(64).collect();
                    Box::new(UnknownValue {
                        column: $column,
                        value,
                    }) as _
                })
            }
            accepts!(TEXT, VARCHAR);
        }
    };
}

text_column!(RunState, "state", |text| RunState::ALL
    .into_iter()
    .find(|s| s.as_str() == text));
text_column!(RunOutcome, "outcome", RunOutcome::parse);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The strings between the parentheses of `column IN (...)` in `sql`.
    fn in_list(sql: &str, column: &str) -> BTreeSet<String> {
        let start = sql.find(&format!("{column} IN (")).expect("an IN list") + column.len() + 5;
        let end = start + sql[start..].find(')').expect("its end");
        sql[start..end]
            .split(',')
            .map(|s| s.trim().trim_matches('\'').to_string())
            .collect()
    }

    #[test]
    fn every_outcome_round_trips_and_is_distinct() {
        let all: Vec<RunOutcome> = RunOutcome::all().collect();
        let strings: BTreeSet<&str> = all.iter().map(|o| o.as_str()).collect();
        assert_eq!(strings.len(), all.len());
        for o in all {
            assert_eq!(RunOutcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(RunOutcome::parse("ran"), None, "running is no outcome");
        assert_eq!(RunOutcome::parse("maybe"), None);
    }

    #[test]
    fn states_are_distinct() {
        let strings: BTreeSet<&str> = RunState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(strings.len(), RunState::ALL.len());
    }

    #[test]
    fn the_migrations_check_lists_exactly_these_strings() {
        let sql = include_str!("../sql/0011_run_outcomes.sql");
        let outcomes: BTreeSet<String> = RunOutcome::all().map(|o| o.as_str().into()).collect();
        assert_eq!(in_list(sql, "outcome"), outcomes);
        let states = include_str!("../sql/0002_runs.sql");
        let known: BTreeSet<String> = RunState::ALL.iter().map(|s| s.as_str().into()).collect();
        assert_eq!(in_list(states, "state"), known);
    }

    #[test]
    fn phases_are_the_webapps() {
        let webapp = [
            "resolving-inputs",
            "calling-llm",
            "parsing-response",
            "staging-proposals",
            "finalizing",
        ];
        for p in Phase::ALL {
            assert!(webapp.contains(&p.as_str()), "{p:?}");
        }
    }
}
