//! One batch between its claim and its COMMIT: the claimed changes folded
//! into their records' snapshots, then written (with the set-aside rows and
//! the changed agents' missions read back) in one pipelined round trip.

use super::batch_tx::BatchTx;
use super::fold_batch::{self, fold_rows, Groups};
use super::outcome::ApplyError;
use super::read::BatchRead;
use crate::schedule::wheel::{MissionKey, WheelUpdate};
use crate::store::queue::{self, ApplierStatements, DeadChange, QueueRow};
use crate::store::snapshots::{self, SnapshotWrite};
use crate::sync::change::Kind;

/// A batch folded and ready to write.
pub(super) struct FoldedBatch {
    pub(super) missions: Vec<SnapshotWrite>,
    pub(super) agents: Vec<SnapshotWrite>,
    /// Queue rows whose change is in the writes.
    pub(super) applied: Vec<QueueRow>,
    pub(super) dead: Vec<DeadChange>,
    pub(super) created: u64,
    pub(super) changed: u64,
    /// Records replayed from their history (a late row), and those of them
    /// over the replay limit.
    pub(super) replays: u64,
    pub(super) replays_over_limit: u64,
}

/// Folds each record of the batch on its own into its snapshot (as read
/// with the changes): an unreadable snapshot or a panicking fold sets aside
/// that record's rows, never the batch; a record a late row reached is
/// replayed.
pub(super) async fn fold_claimed(
    tx: &tokio_postgres::Client,
    statements: &ApplierStatements,
    settings: &super::Settings,
    read: BatchRead,
) -> Result<FoldedBatch, ApplyError> {
    let BatchRead {
        valid,
        mut dead,
        missions,
        agents,
    } = read;
    let mut groups = Groups::new();
    for (queue, change) in valid {
        let group = groups
            .entry((change.kind, (queue.user_id.clone(), change.record_id)))
            .or_default();
        group.queue.push(queue);
        group.rows.push(change.row);
    }
    let mission_keys = fold_batch::keys_of(&groups, Kind::Mission);
    let agent_keys = fold_batch::keys_of(&groups, Kind::Agent);
    let missions = fold_batch::fold_records(
        &mut groups,
        Kind::Mission,
        mission_keys,
        missions,
        fold_rows,
    );
    let agents = fold_batch::fold_records(&mut groups, Kind::Agent, agent_keys, agents, fold_rows);
    dead.extend(missions.dead.into_iter().chain(agents.dead));
    let mut batch = FoldedBatch {
        created: missions.created + agents.created,
        changed: missions.changed + agents.changed,
        applied: missions.applied.into_iter().chain(agents.applied).collect(),
        missions: missions.writes,
        agents: agents.writes,
        dead,
        replays: 0,
        replays_over_limit: 0,
    };
    for pending in missions.replays.into_iter().chain(agents.replays) {
        replay_into(tx, statements, settings, &mut batch, pending).await?;
    }
    Ok(batch)
}

/// Replays one record (`replay.rs`) and adds its write to the batch.
async fn replay_into(
    tx: &tokio_postgres::Client,
    statements: &ApplierStatements,
    settings: &super::Settings,
    batch: &mut FoldedBatch,
    mut pending: fold_batch::PendingReplay,
) -> Result<(), ApplyError> {
    let (kind, is_new) = (pending.kind, pending.is_new);
    let queue = std::mem::take(&mut pending.queue);
    let set_aside: Vec<uuid::Uuid> = (batch.dead.iter())
        .filter(|d| d.queue.user_id == pending.key.0)
        .filter(|d| d.record_id.as_deref() == Some(pending.key.1.as_str()))
        .map(|d| d.queue.change_id)
        .collect();
    let (write, how) = super::replay::replay(tx, statements, settings, pending, &set_aside).await?;
    batch.replays += 1;
    if how == super::replay::Replayed::OverLimit {
        batch.replays_over_limit += 1;
    }
    if is_new {
        batch.created += 1;
    } else {
        batch.changed += 1;
    }
    batch.applied.extend(queue);
    match kind {
        Kind::Mission => batch.missions.push(write),
        Kind::Agent => batch.agents.push(write),
    }
    Ok(())
}

/// Writes the batch and commits; returns the wheel's updates: the written
/// missions', then the changed agents' armable missions'.
///
/// Pipelined in this order: the agents' missions are read after the
/// batch's own mission writes, and COMMIT follows them all. Every future
/// runs to the end (join, not try_join), so COMMIT is always sent; after a
/// failed write it ends the aborted transaction (the server answers
/// ROLLBACK) and the write's error is returned.
pub(super) async fn write_and_commit(
    tx: &BatchTx<'_>,
    statements: &ApplierStatements,
    batch: &FoldedBatch,
) -> Result<Vec<WheelUpdate>, ApplyError> {
    let changed_agents: Vec<(&str, &str)> = batch
        .agents
        .iter()
        .map(|w| (w.user_id.as_str(), w.record_id.as_str()))
        .collect();
    let (missions_written, armable, agents_written, dead_written, committed) = futures_util::join!(
        snapshots::upsert(tx.client, statements, Kind::Mission, &batch.missions),
        snapshots::armable_missions_of_agents(tx.client, statements, &changed_agents),
        snapshots::upsert(tx.client, statements, Kind::Agent, &batch.agents),
        queue::insert_dead(tx.client, statements, &batch.dead),
        tx.commit(),
    );
    missions_written?;
    let armable = armable?;
    agents_written?;
    dead_written?;
    committed?;
    let mut updates: Vec<WheelUpdate> = batch
        .missions
        .iter()
        .map(fold_batch::wheel_update)
        .collect();
    updates.extend(
        armable
            .into_iter()
            .map(|m| WheelUpdate::arm(MissionKey::new(&m.user_id, &m.mission_id), m.next_run_at)),
    );
    Ok(updates)
}
