//! The label values known in advance, and the mapping of label values that
//! come from user data onto a known set.
//!
//! Where the defining enum has a list of its values (`GrantSkip::ALL`,
//! `GateDecision::ALL`, `Pruned::ALL`, `supervisor::TASKS`) it is used directly; otherwise the
//! values are listed here and the tests below check, variant by variant,
//! that each list matches its enum's `as_str`/`reason` (and fail to compile
//! when a variant is added).

use crate::crypto::GrantSkip;
use crate::reactor::supervisor::TASKS;
use crate::retention::Pruned;
use crate::run::gates::GateDecision;
use crate::schedule::fair::Tier;

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
pub fn decisions() -> Vec<&'static str> {
    GateDecision::ALL.iter().map(|d| d.as_str()).collect()
}

/// `grant_skips_total{reason}`.
pub fn grant_skips() -> Vec<&'static str> {
    GrantSkip::ALL.iter().map(|s| s.as_str()).collect()
}

/// `task_restarts_total{task}` and `task_up{task}`.
pub fn tasks() -> Vec<&'static str> {
    TASKS.iter().map(|t| t.as_str()).collect()
}

/// `run_queue_depth{tier}`.
pub fn tiers() -> Vec<&'static str> {
    Tier::ALL.iter().map(|t| t.as_str()).collect()
}

/// `rows_pruned_total{table}`.
pub fn pruned_tables() -> Vec<&'static str> {
    Pruned::ALL.iter().map(|t| t.label()).collect()
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
