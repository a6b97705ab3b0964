//! One batch's fold, record by record, each record on its own: a snapshot
//! that cannot be read, or a fold that panics, sets aside that record's
//! changes of the batch (with the reason) and nothing else.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde_json::Value;

use crate::schedule::wheel::{parse_next_run, MissionKey, WheelUpdate};
use crate::store::queue::{DeadChange, QueueRow};
use crate::store::snapshots::{Loaded, Snapshot, SnapshotKey, SnapshotWrite};
use crate::sync::change::{Kind, Poison};
use crate::sync::fold::ChangeRow;

/// The changes of one record in a batch, queue rows beside their change rows.
#[derive(Debug, Default)]
pub(crate) struct Group {
    pub queue: Vec<QueueRow>,
    pub rows: Vec<ChangeRow>,
}

/// A batch's changes by record.
pub(crate) type Groups = BTreeMap<(Kind, SnapshotKey), Group>;

/// What folding one kind's records gave.
#[derive(Debug, Default)]
pub(crate) struct Folded {
    pub writes: Vec<SnapshotWrite>,
    /// Queue rows whose change is in `writes`.
    pub applied: Vec<QueueRow>,
    pub dead: Vec<DeadChange>,
    pub created: u64,
    pub changed: u64,
}

/// The snapshot keys of `kind` in `groups`, in order.
pub(crate) fn keys_of(groups: &Groups, kind: Kind) -> Vec<SnapshotKey> {
    groups
        .keys()
        .filter(|(k, _)| *k == kind)
        .map(|(_, key)| key.clone())
        .collect()
}

/// Folds every record of `kind` in `groups` (removing them) into its loaded
/// snapshot with `fold`.
pub(crate) fn fold_records(
    groups: &mut Groups,
    kind: Kind,
    keys: Vec<SnapshotKey>,
    mut existing: Loaded,
    fold: impl Fn(SnapshotKey, Snapshot, &[ChangeRow]) -> SnapshotWrite,
) -> Folded {
    let mut out = Folded::default();
    for key in keys {
        let group = groups.remove(&(kind, key.clone())).unwrap_or_default();
        let (snapshot, is_new) = match existing.remove(&key) {
            Some(Ok(snapshot)) => (snapshot, false),
            None => (Snapshot::default(), true),
            Some(Err(poison)) => {
                set_aside(&mut out.dead, group.queue, &key.1, poison);
                continue;
            }
        };
        let record_id = key.1.clone();
        let folded = catch_unwind(AssertUnwindSafe(|| fold(key, snapshot, &group.rows)));
        match folded {
            Ok(write) => {
                out.writes.push(write);
                out.applied.extend(group.queue);
                if is_new {
                    out.created += 1;
                } else {
                    out.changed += 1;
                }
            }
            Err(panic) => {
                let message = super::supervisor::panic_message(&*panic);
                tracing::error!(panic = %message, "the fold panicked; the record's changes of this batch are set aside");
                set_aside(&mut out.dead, group.queue, &record_id, Poison::FoldPanicked);
            }
        }
    }
    out
}

fn set_aside(dead: &mut Vec<DeadChange>, queue: Vec<QueueRow>, record_id: &str, poison: Poison) {
    dead.extend(queue.into_iter().map(|queue| DeadChange {
        queue,
        record_id: Some(record_id.to_string()),
        poison: poison.clone(),
    }));
}

/// Folds `rows` into a snapshot and prepares its write.
pub(crate) fn fold_into(
    key: SnapshotKey,
    mut snapshot: Snapshot,
    rows: &[ChangeRow],
) -> SnapshotWrite {
    let (user_id, record_id) = key;
    for row in rows {
        snapshot.fold.apply(&record_id, &mut snapshot.record, row);
        snapshot.change_count += 1;
        snapshot.last_applied_at = Some(match snapshot.last_applied_at {
            Some(t) if t > row.created_at => t,
            _ => row.created_at,
        });
    }
    let text = |field: &str| match snapshot.record.get(field) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    SnapshotWrite {
        state: text("state"),
        next_run_at: text("nextRunAt"),
        next_run_ts: text("nextRunAt").as_deref().and_then(parse_next_run),
        agent_id: text("agentId"),
        deleted: snapshot.fold.is_deleted(&snapshot.record),
        fold: serde_json::to_value(&snapshot.fold).unwrap_or(Value::Null),
        record: Value::Object(snapshot.record),
        change_count: snapshot.change_count,
        last_applied_at: snapshot.last_applied_at.unwrap_or_else(chrono::Utc::now),
        user_id,
        record_id,
    }
}

/// The wheel's update for a mission snapshot just written: armed at its
/// parsed nextRunAt while it is armable, disarmed otherwise.
pub(crate) fn wheel_update(write: &SnapshotWrite) -> WheelUpdate {
    let key = MissionKey::new(&write.user_id, &write.record_id);
    if write.armable() {
        WheelUpdate::arm(key, write.next_run_ts)
    } else {
        WheelUpdate::Disarm(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(id: i64, user: &str) -> QueueRow {
        QueueRow {
            id,
            change_id: uuid::Uuid::from_u128(id as u128),
            user_id: user.into(),
            table_name: "aiMissions".into(),
            queued_at: chrono::Utc::now(),
        }
    }

    fn write(key: SnapshotKey) -> SnapshotWrite {
        SnapshotWrite {
            user_id: key.0,
            record_id: key.1,
            record: serde_json::json!({}),
            fold: serde_json::json!({}),
            deleted: false,
            state: None,
            next_run_at: None,
            next_run_ts: None,
            agent_id: None,
            change_count: 1,
            last_applied_at: chrono::Utc::now(),
        }
    }

    /// A record whose fold panics, one whose snapshot is unreadable, two
    /// that fold: only the first two records' rows are set aside.
    #[test]
    fn a_panicking_fold_and_an_unreadable_snapshot_set_aside_their_record_only() {
        let mut groups = Groups::new();
        for (id, user, record) in [
            (1, "a", "m1"),
            (2, "b", "m2"),
            (3, "a", "m1"),
            (4, "c", "m3"),
        ] {
            let group = groups
                .entry((Kind::Mission, (user.into(), record.into())))
                .or_default();
            // The rows themselves do not matter here (the fold is a stub).
            group.queue.push(queue(id, user));
        }
        groups
            .entry((Kind::Mission, ("d".into(), "m4".into())))
            .or_default()
            .queue
            .push(queue(5, "d"));
        let mut existing = Loaded::new();
        let unreadable = Poison::SnapshotUnreadable {
            column: "fold_state",
            detail: "nested deeper than 127 levels".into(),
        };
        existing.insert(("c".into(), "m3".into()), Err(unreadable.clone()));
        existing.insert(("b".into(), "m2".into()), Ok(Snapshot::default()));
        let keys = keys_of(&groups, Kind::Mission);
        let folded = fold_records(&mut groups, Kind::Mission, keys, existing, |key, _, _| {
            if key.0 == "a" {
                panic!("a bug in the fold");
            }
            write(key)
        });
        assert!(groups.is_empty());
        let dead: Vec<(i64, Poison)> = folded
            .dead
            .iter()
            .map(|d| (d.queue.id, d.poison.clone()))
            .collect();
        assert_eq!(
            dead,
            [
                (1, Poison::FoldPanicked),
                (3, Poison::FoldPanicked),
                (4, unreadable)
            ]
        );
        let applied: Vec<i64> = folded.applied.iter().map(|q| q.id).collect();
        assert_eq!(applied, [2, 5]);
        assert_eq!((folded.created, folded.changed), (1, 1));
        assert_eq!(folded.writes.len(), 2);
    }
}
