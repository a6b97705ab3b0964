//! Writing an iteration back (contract section 5): one `sync_changes` row
//! inside the user's RLS transaction, committed together with the slot's
//! completion and the tokens it used.
//!
//! The mission's `iterations` are re-read inside that transaction (snapshot
//! plus every change still queued for it), so an iteration a browser added
//! since the run started is kept, not overwritten. The fold only decides
//! which row holds the newest value; the database appends the new iteration
//! to it, so however long the history, the run never holds it in memory.
//! The row's id is recorded with the slot (`mission_runs.change_id`): that
//! is how the applier knows its own write-back, whose `iterations` may
//! outgrow `MANA_AI_MAX_FIELD_BYTES` (the whole history is kept).

use crate::run_record::RunOutcome;
use crate::sync::generation::Generation;
use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tokio_postgres::Transaction;

use super::claim::{self, Slot};
use crate::store::decode::RowError;
use crate::store::{
    self,
    writeback::{Base, MarkedChange, MarkedSnapshot, WriteBackRow},
};
use crate::sync::change;
use crate::sync::fold::{iso_millis, ChangeRow, FoldState};

/// The client id every write-back carries.
pub const CLIENT_ID: &str = "mana-ai-runner";

/// Who the webapp shows as the author.
#[derive(Debug, Clone)]
pub struct Author {
    pub agent_id: Option<String>,
    pub display_name: String,
}

impl Author {
    pub fn legacy() -> Author {
        Author {
            agent_id: None,
            display_name: "Mana".into(),
        }
    }

    fn principal_id(&self) -> &str {
        self.agent_id.as_deref().unwrap_or("legacy:ai-default")
    }
}

/// One write-back, ready to commit.
#[derive(Debug, Clone)]
pub struct WriteBack {
    pub slot: Slot,
    pub token: uuid::Uuid,
    pub iteration: Value,
    pub iteration_id: String,
    pub next_run_at: Option<DateTime<Utc>>,
    pub author: Author,
    /// The mission's objective: the actor's rationale.
    pub objective: String,
    pub now: DateTime<Utc>,
    pub tokens_used: i64,
    /// `run_outcomes_total` label and `mission_runs.outcome`.
    pub outcome: RunOutcome,
    /// The applier's `MANA_AI_MAX_FIELD_BYTES`: a queued row over it is
    /// never what the write-back extends.
    pub max_field_bytes: usize,
    /// The generation of `sync_changes` the row is written in.
    pub generation: Generation,
    /// The mission's `spaceId` (written as `space_id` in the current
    /// generation, so the other members of a shared Space receive it).
    pub space_id: Option<String>,
}

/// A planned iteration as the webapp expects it.
pub fn planned_iteration(
    iteration_id: &str,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    summary: &str,
    steps: &[crate::planner::PlannedStep],
) -> Value {
    let plan: Vec<Value> = steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            // The contract's PlanStep has no rationale field; the user reads
            // the summary, so an empty summary falls back to the rationale.
            let summary = if step.summary.trim().is_empty() {
                &step.rationale
            } else {
                &step.summary
            };
            json!({
                "id": format!("{iteration_id}-{i}"),
                "summary": summary,
                "intent": {"kind": "toolCall", "toolName": step.tool_name, "params": step.params},
                "status": "planned",
            })
        })
        .collect();
    json!({
        "id": iteration_id,
        "startedAt": iso_millis(started_at),
        "finishedAt": iso_millis(finished_at),
        "summary": summary,
        "source": "server",
        "overallStatus": if plan.is_empty() { "approved" } else { "awaiting-review" },
        "plan": plan,
    })
}

/// The iteration recorded when a slot failed for good.
pub fn failed_iteration(
    iteration_id: &str,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    error_name: &str,
    message: &str,
    phase: super::phase::Phase,
) -> Value {
    json!({
        "id": iteration_id,
        "startedAt": iso_millis(started_at),
        "finishedAt": iso_millis(finished_at),
        "summary": "Die Planung ist wiederholt fehlgeschlagen; die Mission läuft zum nächsten Termin weiter.",
        "source": "server",
        "overallStatus": "failed",
        "plan": [],
        "errorDetails": {"name": error_name, "message": message, "phase": phase.as_str()},
    })
}

/// Where the `iterations` a write-back extends come from: the mission as it
/// is now (its snapshot plus every change still queued for it), decided
/// without reading the iterations themselves, so a run's memory does not
/// grow with the mission's history.
#[derive(Debug, Clone, PartialEq)]
pub enum IterationsSource {
    /// The mission has no `iterations` yet.
    None,
    /// The snapshot's value is the newest.
    Snapshot,
    /// A queued change row (a browser's edit) holds the newest value.
    Change(uuid::Uuid),
    /// The fold state kept the winning value itself (rare: a value the first
    /// row lost while unstamped and won back).
    Value(Value),
}

/// Whether a queued row's `iterations` is over the field limit, so the
/// applier will set the row aside: then it must not be what the write-back
/// extends (that would carry a browser's oversized value past the limit).
/// Only rows whose jsonb text is over the limit are read.
async fn iterations_over_limit(
    tx: &Transaction<'_>,
    user_id: &str,
    change: &MarkedChange,
    max_field_bytes: usize,
) -> anyhow::Result<bool> {
    let text_len = change.iterations_len;
    if change.own_writeback || text_len.is_none_or(|n| n as usize <= max_field_bytes) {
        return Ok(false);
    }
    let id: uuid::Uuid = change.row.try_get("id")?;
    let value = store::writeback::change_iterations(tx, user_id, id).await?;
    Ok(value.is_some_and(|v| change::json_len(&v) > max_field_bytes))
}

/// Folds the snapshot and the queued changes with markers in place of the
/// iterations (the fold decides by stamps, never by value) and says which
/// marker won. The snapshot is locked first, then the queue read: a batch
/// that committed before the lock is in the snapshot and off the queue, one
/// still running waits for this transaction, so no row is folded twice. A
/// queued row that comes at or before the snapshot's last row (or a stale
/// fold state) makes it replay the mission from `sync_changes`.
pub async fn iterations_source(
    tx: &Transaction<'_>,
    generation: Generation,
    user_id: &str,
    mission_id: &str,
    max_field_bytes: usize,
) -> anyhow::Result<IterationsSource> {
    let marker = uuid::Uuid::new_v4().to_string();
    let snapshot = store::writeback::snapshot_marked(tx, user_id, mission_id, &marker).await?;
    // change id -> queue id, the rows' insertion order for the fold.
    let seqs = store::writeback::queued_mission_changes(tx, user_id).await?;
    let (mut record, mut fold) = match snapshot {
        Some(MarkedSnapshot {
            record: Value::Object(map),
            fold_state,
        }) => (map, FoldState::decode(fold_state)),
        _ => (Map::new(), FoldState::default()),
    };
    if !seqs.is_empty() {
        let ids: Vec<uuid::Uuid> = seqs.keys().copied().collect();
        let changes =
            store::writeback::changes_marked(tx, generation, user_id, &ids, mission_id, &marker)
                .await?;
        let mut pending = Vec::new();
        for marked in &changes {
            if let Some(mut row) = foldable(tx, user_id, marked, max_field_bytes).await? {
                row.seq = seqs.get(&row.id).copied().unwrap_or_default();
                pending.push(row);
            }
        }
        pending.sort_by_key(ChangeRow::order_key);
        for (i, row) in pending.iter().enumerate() {
            if fold.apply(mission_id, &mut record, row).is_err() {
                let ctx = (tx, generation, user_id, mission_id, max_field_bytes);
                return replayed_source(ctx, &marker, &mut fold, &mut record, &pending[i..]).await;
            }
        }
    }
    marker_source(record.remove("iterations"), &marker)
}

/// [`iterations_source`] by a replay of every row of the mission not set
/// aside; over the replay limit, `rest` folded on top as if it came last.
async fn replayed_source(
    (tx, generation, user_id, mission_id, max_field_bytes): (
        &Transaction<'_>,
        Generation,
        &str,
        &str,
        usize,
    ),
    marker: &str,
    fold: &mut FoldState,
    record: &mut Map<String, Value>,
    rest: &[ChangeRow],
) -> anyhow::Result<IterationsSource> {
    let limit = crate::reactor::MAX_REPLAY_ROWS;
    let history =
        store::writeback::history_marked(tx, generation, user_id, mission_id, marker, limit + 1)
            .await?;
    if history.len() as i64 > limit {
        for row in rest {
            fold.apply_as_last(mission_id, record, row);
        }
        return marker_source(record.remove("iterations"), marker);
    }
    let mut rows = Vec::with_capacity(history.len());
    for (seq, marked) in (0..).zip(&history) {
        if let Some(mut row) = foldable(tx, user_id, marked, max_field_bytes).await? {
            row.seq = seq;
            rows.push(row);
        }
    }
    let mut replayed = crate::sync::fold::replay_state(mission_id, &rows)
        .map(|(_, record)| record)
        .unwrap_or_default();
    marker_source(replayed.remove("iterations"), marker)
}

/// A change row as the fold takes it (`seq` left 0), or None when the
/// applier will set it aside (then it is not folded here either).
async fn foldable(
    tx: &Transaction<'_>,
    user_id: &str,
    marked: &MarkedChange,
    max_field_bytes: usize,
) -> anyhow::Result<Option<ChangeRow>> {
    if iterations_over_limit(tx, user_id, marked, max_field_bytes).await? {
        return Ok(None);
    }
    let raw = match crate::store::history::raw_change(&marked.row) {
        Ok(raw) => raw,
        Err(RowError::Poison(_)) => return Ok(None),
        Err(RowError::Systemic(e)) => return Err(e.into()),
    };
    Ok(change::validate(raw, max_field_bytes).ok().map(|v| v.row))
}

/// Which marker the fold kept, if any.
fn marker_source(iterations: Option<Value>, marker: &str) -> anyhow::Result<IterationsSource> {
    let Some(value) = iterations else {
        return Ok(IterationsSource::None);
    };
    if value.get("mana-ai-source").and_then(Value::as_str) != Some(marker) {
        return Ok(IterationsSource::Value(value));
    }
    Ok(match value.get("from").and_then(Value::as_str) {
        Some("snapshot") => IterationsSource::Snapshot,
        Some(id) => id
            .parse()
            .map(IterationsSource::Change)
            .context("a marker without a change id")?,
        None => anyhow::bail!("a marker without its source"),
    })
}

/// Commits the write-back; false when the claim was taken over (nothing written).
pub async fn commit(
    client: &mut tokio_postgres::Client,
    write: &WriteBack,
) -> anyhow::Result<bool> {
    let tx = crate::db::begin_user(client, &write.slot.user_id).await?;
    let (user_id, mission_id) = (&write.slot.user_id, &write.slot.mission_id);
    let source = iterations_source(
        &tx,
        write.generation,
        user_id,
        mission_id,
        write.max_field_bytes,
    )
    .await
    .context("re-reading the mission")?;
    let change_id = uuid::Uuid::new_v4();
    if !claim::complete(
        &tx,
        &write.slot,
        write.token,
        &write.iteration_id,
        write.outcome,
        change_id,
    )
    .await?
    {
        return Ok(false);
    }
    insert_row(&tx, write, change_id, &source)
        .await
        .context("inserting the write-back row")?;
    if write.tokens_used > 0 {
        let agent = write.author.agent_id.as_deref();
        store::usage::record(&tx, user_id, agent, mission_id, write.tokens_used).await?;
    }
    tx.commit().await.context("committing the write-back")?;
    Ok(true)
}

/// Inserts the write-back row: the iteration appended to `source`.
async fn insert_row(
    tx: &Transaction<'_>,
    write: &WriteBack,
    change_id: uuid::Uuid,
    source: &IterationsSource,
) -> Result<(), tokio_postgres::Error> {
    let now = iso_millis(write.now);
    let next = write.next_run_at.map(iso_millis);
    // Every field written is stamped, as strings (the sync server's reader
    // of today's `field_meta` takes nothing else); today's records derive
    // `updatedAt` and store none.
    let stamps = match write.generation {
        Generation::V06 => json!({"iterations": now, "updatedAt": now, "nextRunAt": now}),
        Generation::Current => json!({"iterations": now, "nextRunAt": now}),
    };
    let actor = json!({
        "kind": "ai",
        "principalId": write.author.principal_id(),
        "displayName": write.author.display_name,
        "missionId": write.slot.mission_id,
        "iterationId": write.iteration_id,
        "rationale": write.objective,
    });
    let base = match source {
        IterationsSource::None => Base::None,
        IterationsSource::Snapshot => Base::Snapshot,
        IterationsSource::Change(id) => Base::Change(*id),
        IterationsSource::Value(v) => Base::Value(v),
    };
    let row = WriteBackRow {
        generation: write.generation,
        space_id: write.space_id.as_deref(),
        change_id,
        user_id: &write.slot.user_id,
        mission_id: &write.slot.mission_id,
        iteration: &write.iteration,
        iteration_id: &write.iteration_id,
        updated_at: &now,
        next_run_at: next.as_deref(),
        field_timestamps: &stamps,
        client_id: CLIENT_ID,
        actor: &actor,
        base,
    };
    store::writeback::insert_writeback(tx, &row).await
}
