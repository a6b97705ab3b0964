//! The label values known in advance, and the mapping of label values that
//! come from user data onto a known set.
//!
//! A leaf: the modules that record into `Metrics` own the enums these
//! values come from, so the values are listed here (importing those modules
//! would make an import circle), and the tests below check, variant by
//! variant, that each list matches its enum's `as_str`/`reason`/`label`
//! (and fail to compile when a variant is added). Only the crypto core,
//! which records nothing, is read directly (`GrantSkip::ALL`).

use crate::crypto::GrantSkip;

/// The label of every value outside a known set.
pub const OTHER: &str = "other";

/// The tables whose records are decrypted under a grant (contract section
/// 7: the modules notes, tasks/todo, calendar, journal, kontext, profile,
/// see `run::inputs::storage`): the `table` values of `decrypts_total` and
/// `grant_scope_violations_total`. Any other table is counted as `other`.
pub const ENCRYPTED_TABLES: &[&str] = &[
    "notes", "tasks", "todo", "calendar", "journal", "kontext", "profile",
];

/// `run_outcomes_total{outcome}`: every `run::Outcome`.
pub const OUTCOMES: &[&str] = &[
    "written",
    "fenced",
    "parse-failed",
    "planner-failed",
    "skipped",
    "not-due",
    "already-done",
    "backing-off",
    "in-flight",
    "error",
];

/// `poison_changes_total{reason}`: every `sync::change::Poison`.
pub const POISON_REASONS: &[&str] = &[
    "empty-user-id",
    "user-id-too-long",
    "change-not-visible",
    "unknown-table",
    "unknown-op",
    "record-id-too-long",
    "data-not-object",
    "field-timestamps-not-object",
    "field-too-large",
    "next-run-at-not-string",
    "apply-failed",
    "json-too-deep",
    "json-undecodable",
    "column-undecodable",
    "snapshot-unreadable",
    "fold-panicked",
    "check-panicked",
];

/// `missions_stalled_total{reason}`: every `run::stall::Stall`.
pub const STALLS: &[&str] = &[
    "write-back-set-aside",
    "no-next-run",
    "missing-agent",
    "bad-policy",
    "encrypted-text",
];

/// `table` as a label: itself when it is one of [`ENCRYPTED_TABLES`], else
/// [`OTHER`], so user data can't mint series.
pub fn table(table: &str) -> &'static str {
    ENCRYPTED_TABLES
        .iter()
        .find(|known| **known == table)
        .copied()
        .unwrap_or(OTHER)
}

/// [`ENCRYPTED_TABLES`] and [`OTHER`].
pub fn tables() -> Vec<&'static str> {
    ENCRYPTED_TABLES.iter().copied().chain([OTHER]).collect()
}

/// `agent_decisions_total{decision}`: every `run::gates::GateDecision`.
pub const DECISIONS: &[&str] = &[
    "ran",
    "skipped-paused",
    "skipped-archived",
    "skipped-concurrency",
    "skipped-budget",
    "skipped-missing-agent",
    "skipped-bad-policy",
    "skipped-encrypted",
    "skipped-research-pending",
];

/// `task_restarts_total{task}` and `task_up{task}`: every
/// `reactor::supervisor::TaskName`.
pub const TASKS: &[&str] = &[
    "listener",
    "applier",
    "wheel",
    "retention",
    "runner",
    "http",
    "queue-gauges",
];

/// `run_queue_depth{tier}`: every `schedule::fair::Tier`.
pub const TIERS: &[&str] = &["on-time", "catch-up"];

/// `rows_pruned_total{table}`: every `retention::Pruned`.
pub const PRUNED_TABLES: &[&str] = &[
    "token_usage",
    "mission_runs",
    "dead_changes",
    "decrypt_audit",
    "research_jobs",
];

/// `grant_skips_total{reason}`.
pub fn grant_skips() -> Vec<&'static str> {
    GrantSkip::ALL.iter().map(|s| s.as_str()).collect()
}

/// `agent_id` values of `tokens_used_total` with a series of their own.
pub const MAX_AGENT_SERIES: usize = 1_000;

/// A label whose values come from user data and are not known in advance:
/// the first `cap` distinct values keep their own series, every later one
/// is [`OTHER`].
#[derive(Debug)]
pub struct Bounded {
    cap: usize,
    seen: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Bounded {
    pub fn new(cap: usize) -> Bounded {
        Bounded {
            cap,
            seen: Default::default(),
        }
    }

    /// `value` if it has (or may still get) a series of its own, else
    /// [`OTHER`].
    pub fn label<'a>(&self, value: &'a str) -> &'a str {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(value) {
            return value;
        }
        if seen.len() < self.cap && value != OTHER {
            seen.insert(value.to_string());
            return value;
        }
        OTHER
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::stall::Stall;
    use crate::run::Outcome;
    use crate::sync::change::Poison;

    fn sorted(mut v: Vec<&'static str>) -> Vec<&'static str> {
        v.sort_unstable();
        v
    }

    #[test]
    fn outcomes_match_the_enum() {
        use Outcome::*;
        let all = [
            Written,
            Fenced,
            ParseFailed { final_: false },
            PlannerFailed { final_: false },
            Skipped("ran"),
            NotDue,
            AlreadyDone,
            BackingOff,
            InFlight,
            Error,
        ];
        for o in all {
            match o {
                Written
                | Fenced
                | ParseFailed { .. }
                | PlannerFailed { .. }
                | Skipped(_)
                | NotDue
                | AlreadyDone
                | BackingOff
                | InFlight
                | Error => {}
            }
        }
        let labels = all.iter().map(|o| o.as_str()).collect();
        assert_eq!(sorted(labels), sorted(OUTCOMES.to_vec()));
    }

    #[test]
    fn poison_reasons_match_the_enum() {
        use Poison::*;
        let detail = || String::from("d");
        let all = [
            EmptyUserId,
            UserIdTooLong(1),
            ChangeNotVisible,
            UnknownTable(detail()),
            UnknownOp(detail()),
            RecordIdTooLong(1),
            DataNotObject("array"),
            FieldTimestampsNotObject("array"),
            FieldTooLarge {
                field: detail(),
                bytes: 2,
                limit: 1,
            },
            NextRunAtNotString("number"),
            ApplyFailed(detail()),
            JsonTooDeep {
                column: "data",
                limit: 1,
            },
            JsonUndecodable {
                column: "data",
                detail: detail(),
            },
            ColumnUndecodable {
                column: "data",
                detail: detail(),
            },
            SnapshotUnreadable {
                column: "record",
                detail: detail(),
            },
            FoldPanicked,
            CheckPanicked,
        ];
        for p in &all {
            match p {
                EmptyUserId
                | UserIdTooLong(_)
                | ChangeNotVisible
                | UnknownTable(_)
                | UnknownOp(_)
                | RecordIdTooLong(_)
                | DataNotObject(_)
                | FieldTimestampsNotObject(_)
                | FieldTooLarge { .. }
                | NextRunAtNotString(_)
                | ApplyFailed(_)
                | JsonTooDeep { .. }
                | JsonUndecodable { .. }
                | ColumnUndecodable { .. }
                | SnapshotUnreadable { .. }
                | FoldPanicked
                | CheckPanicked => {}
            }
        }
        let labels = all.iter().map(|p| p.reason()).collect();
        assert_eq!(sorted(labels), sorted(POISON_REASONS.to_vec()));
    }

    #[test]
    fn stalls_match_the_enum() {
        use Stall::*;
        let all = [
            WriteBackSetAside,
            NoNextRun,
            MissingAgent,
            BadPolicy,
            EncryptedText,
        ];
        for s in all {
            match s {
                WriteBackSetAside | NoNextRun | MissingAgent | BadPolicy | EncryptedText => {}
            }
        }
        let labels = all.iter().map(|s| s.as_str()).collect();
        assert_eq!(sorted(labels), sorted(STALLS.to_vec()));
    }

    #[test]
    fn decisions_match_the_enum() {
        use crate::run::gates::GateDecision::{self, *};
        for d in GateDecision::ALL {
            match d {
                Ran
                | SkippedPaused
                | SkippedArchived
                | SkippedConcurrency
                | SkippedBudget
                | SkippedMissingAgent
                | SkippedBadPolicy
                | SkippedEncrypted
                | SkippedResearchPending => {}
            }
        }
        let labels = GateDecision::ALL.iter().map(|d| d.as_str()).collect();
        assert_eq!(sorted(labels), sorted(DECISIONS.to_vec()));
    }

    #[test]
    fn tasks_tiers_and_pruned_tables_match_their_enums() {
        use crate::reactor::supervisor::{TaskName, TASKS as ALL_TASKS};
        use crate::retention::Pruned;
        use crate::schedule::fair::Tier;
        for t in ALL_TASKS {
            match t {
                TaskName::Listener
                | TaskName::Applier
                | TaskName::Wheel
                | TaskName::Retention
                | TaskName::Runner
                | TaskName::Http
                | TaskName::QueueGauges => {}
            }
        }
        let tasks = ALL_TASKS.iter().map(|t| t.as_str()).collect();
        assert_eq!(sorted(tasks), sorted(TASKS.to_vec()));
        for t in Tier::ALL {
            match t {
                Tier::OnTime | Tier::CatchUp => {}
            }
        }
        let tiers = Tier::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(sorted(tiers), sorted(TIERS.to_vec()));
        for p in Pruned::ALL {
            match p {
                Pruned::TokenUsage
                | Pruned::MissionRuns
                | Pruned::DeadChanges
                | Pruned::DecryptAudit
                | Pruned::ResearchJobs => {}
            }
        }
        let pruned = Pruned::ALL.iter().map(|p| p.label()).collect();
        assert_eq!(sorted(pruned), sorted(PRUNED_TABLES.to_vec()));
    }

    #[test]
    fn user_tables_map_to_the_known_set_or_other() {
        assert_eq!(table("notes"), "notes");
        assert_eq!(table("tasks"), "tasks");
        assert_eq!(table("Notes"), OTHER);
        assert_eq!(table("../../etc"), OTHER);
        assert_eq!(table(""), OTHER);
        assert!(tables().contains(&OTHER));
    }

    #[test]
    fn a_bounded_label_keeps_the_first_values_and_maps_the_rest_to_other() {
        let labels = Bounded::new(2);
        assert_eq!(labels.label("a1"), "a1");
        assert_eq!(labels.label("a2"), "a2");
        assert_eq!(labels.label("a3"), OTHER);
        assert_eq!(labels.label("a1"), "a1", "a value seen keeps its series");
        assert_eq!(Bounded::new(5).label(OTHER), OTHER);
    }
}
