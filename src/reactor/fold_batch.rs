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
    /// Records a late row reached: to be replayed from their history.
    pub replays: Vec<PendingReplay>,
    pub created: u64,
    pub changed: u64,
}

/// A record whose batch rows could not all be folded on: `rows[..at]` are
/// folded into `snapshot`, `rows[at]` came at or before its last row (or
/// the stored state is stale).
#[derive(Debug)]
pub(crate) struct PendingReplay {
    pub kind: Kind,
    pub key: SnapshotKey,
    pub queue: Vec<QueueRow>,
    pub rows: Vec<ChangeRow>,
    pub at: usize,
    pub snapshot: Snapshot,
    pub is_new: bool,
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
/// snapshot with `fold`, its rows in fold order; a record `fold` refuses
/// (the index of the first row it could not fold) goes to `replays`.
pub(crate) fn fold_records(
    groups: &mut Groups,
    kind: Kind,
    keys: Vec<SnapshotKey>,
    mut existing: Loaded,
    fold: impl Fn(&str, &mut Snapshot, &[ChangeRow]) -> Result<(), usize>,
) -> Folded {
    let mut out = Folded::default();
    for key in keys {
        let mut group = groups.remove(&(kind, key.clone())).unwrap_or_default();
        let (mut snapshot, is_new) = match existing.remove(&key) {
            Some(Ok(snapshot)) => (snapshot, false),
            None => (Snapshot::default(), true),
            Some(Err(poison)) => {
                set_aside(&mut out.dead, group.queue, &key.1, poison);
                continue;
            }
        };
        group.rows.sort_by_key(ChangeRow::order_key);
        let folded = catch_unwind(AssertUnwindSafe(|| {
            fold(&key.1, &mut snapshot, &group.rows)
        }));
        match folded {
            Ok(Ok(())) => {
                out.writes.push(snapshot_write(key, snapshot));
                out.applied.extend(group.queue);
                if is_new {
                    out.created += 1;
                } else {
                    out.changed += 1;
                }
            }
            Ok(Err(at)) => out.replays.push(PendingReplay {
                kind,
                key,
                queue: group.queue,
                rows: group.rows,
                at,
                snapshot,
                is_new,
            }),
            Err(panic) => {
                let message = super::supervisor::panic_message(&*panic);
                tracing::error!(panic = %message, "the fold panicked; the record's changes of this batch are set aside");
                set_aside(&mut out.dead, group.queue, &key.1, Poison::FoldPanicked);
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

/// Folds `rows` (in fold order) onto a snapshot; the index of the first
/// row that needs a replay of the record, the rows before it folded.
pub(crate) fn fold_rows(
    record_id: &str,
    snapshot: &mut Snapshot,
    rows: &[ChangeRow],
) -> Result<(), usize> {
    for (i, row) in rows.iter().enumerate() {
        if snapshot
            .fold
            .apply(record_id, &mut snapshot.record, row)
            .is_err()
        {
            return Err(i);
        }
        count(snapshot, row);
    }
    Ok(())
}

/// Folds `rows` onto a snapshot as if each came last (a replay refused).
pub(crate) fn fold_rows_as_last(record_id: &str, snapshot: &mut Snapshot, rows: &[ChangeRow]) {
    for row in rows {
        snapshot
            .fold
            .apply_as_last(record_id, &mut snapshot.record, row);
        count(snapshot, row);
    }
}

/// One more row in a snapshot's counters.
pub(crate) fn count(snapshot: &mut Snapshot, row: &ChangeRow) {
    snapshot.change_count += 1;
    if snapshot.last_applied_at.is_none_or(|t| t < row.created_at) {
        snapshot.last_applied_at = Some(row.created_at);
    }
}

/// A folded snapshot's write.
pub(crate) fn snapshot_write(key: SnapshotKey, snapshot: Snapshot) -> SnapshotWrite {
    let (user_id, record_id) = key;
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

    /// A record whose fold panics, one whose snapshot is unreadable, two
    /// that fold, one that needs a replay: only the first two records' rows
    /// are set aside, the last one's wait for its replay.
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
        groups
            .entry((Kind::Mission, ("e".into(), "m5".into())))
            .or_default()
            .queue
            .push(queue(6, "e"));
        let mut existing = Loaded::new();
        let unreadable = Poison::SnapshotUnreadable {
            column: "fold_state",
            detail: "nested deeper than 127 levels".into(),
        };
        existing.insert(("c".into(), "m3".into()), Err(unreadable.clone()));
        existing.insert(("b".into(), "m2".into()), Ok(Snapshot::default()));
        let keys = keys_of(&groups, Kind::Mission);
        let folded = fold_records(&mut groups, Kind::Mission, keys, existing, |id, _, _| {
            if id == "m1" {
                panic!("a bug in the fold");
            }
            if id == "m5" {
                return Err(0);
            }
            Ok(())
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
        let replays: Vec<(&str, usize, Vec<i64>)> = (folded.replays.iter())
            .map(|r| {
                (
                    r.key.1.as_str(),
                    r.at,
                    r.queue.iter().map(|q| q.id).collect(),
                )
            })
            .collect();
        assert_eq!(replays, [("m5", 0, vec![6])]);
    }
}
