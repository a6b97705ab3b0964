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

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tokio_postgres::Transaction;

use super::claim::{self, Slot};
use crate::reactor::store;
use crate::sync::change;
use crate::sync::fold::{iso_millis, FoldState};

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
    pub outcome: &'static str,
    /// The applier's `MANA_AI_MAX_FIELD_BYTES`: a queued row over it is
    /// never what the write-back extends.
    pub max_field_bytes: usize,
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

/// The snapshot, locked, with its `iterations` replaced by a marker.
const SNAPSHOT_MARKED: &str = "SELECT CASE WHEN record ? 'iterations'
            THEN jsonb_set(record, '{iterations}', jsonb_build_object('mana-ai-source', $3::text, 'from', 'snapshot'))
            ELSE record END,
        fold_state
     FROM mana_ai.mission_snapshots WHERE user_id = $1 AND mission_id = $2 FOR UPDATE";

/// Queued change rows of one record with their `iterations` replaced by a
/// marker naming the row: the columns of `store::READ_CHANGES`, then the
/// length of the iterations as jsonb text (never shorter than the compact
/// JSON the field limit counts).
const CHANGES_MARKED: &str = "SELECT c.id, c.app_id, c.table_name, c.record_id, c.op,
        CASE WHEN jsonb_typeof(c.data) = 'object' AND c.data ? 'iterations'
             THEN jsonb_set(c.data, '{iterations}', jsonb_build_object('mana-ai-source', $3::text, 'from', c.id::text))
             ELSE c.data END,
        c.field_timestamps, c.created_at,
        EXISTS (SELECT 1 FROM mana_ai.mission_runs r WHERE r.change_id = c.id),
        CASE WHEN jsonb_typeof(c.data) = 'object' THEN octet_length((c.data->'iterations')::text) END
     FROM public.sync_changes c WHERE c.id = ANY($1) AND c.record_id = $2";

/// Whether a queued row's `iterations` is over the field limit, so the
/// applier will set the row aside: then it must not be what the write-back
/// extends (that would carry a browser's oversized value past the limit).
/// Only rows whose jsonb text is over the limit are read.
async fn iterations_over_limit(
    tx: &Transaction<'_>,
    row: &tokio_postgres::Row,
    max_field_bytes: usize,
) -> anyhow::Result<bool> {
    let (own, text_len): (bool, Option<i32>) = (row.try_get(8)?, row.try_get(9)?);
    if own || text_len.is_none_or(|n| n as usize <= max_field_bytes) {
        return Ok(false);
    }
    let id: uuid::Uuid = row.try_get(0)?;
    let value: Option<Value> = tx
        .query_one(
            "SELECT data->'iterations' FROM public.sync_changes WHERE id = $1",
            &[&id],
        )
        .await?
        .try_get(0)?;
    Ok(value.is_some_and(|v| change::json_len(&v) > max_field_bytes))
}

/// Folds the snapshot and the queued changes with markers in place of the
/// iterations (the fold decides by stamps, never by value) and says which
/// marker won. The queue is read first, so a change applied in between is
/// folded twice, which the fold ignores, rather than missed.
pub async fn iterations_source(
    tx: &Transaction<'_>,
    user_id: &str,
    mission_id: &str,
    max_field_bytes: usize,
) -> anyhow::Result<IterationsSource> {
    let marker = uuid::Uuid::new_v4().to_string();
    // change id -> queue id, the rows' insertion order for the fold.
    let seqs: std::collections::HashMap<uuid::Uuid, i64> = tx
        .query(
            "SELECT change_id, id FROM mana_ai.change_queue WHERE user_id = $1 AND table_name = 'aiMissions'",
            &[&user_id],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let snapshot = tx
        .query_opt(SNAPSHOT_MARKED, &[&user_id, &mission_id, &marker])
        .await?;
    let (mut record, mut fold) = match snapshot {
        Some(row) => match row.try_get::<_, Value>(0)? {
            Value::Object(map) => (
                map,
                serde_json::from_value(row.try_get(1)?).unwrap_or_default(),
            ),
            _ => (Map::new(), FoldState::default()),
        },
        None => (Map::new(), FoldState::default()),
    };
    let queued: Vec<uuid::Uuid> = seqs.keys().copied().collect();
    if !queued.is_empty() {
        let rows = tx
            .query(CHANGES_MARKED, &[&queued, &mission_id, &marker])
            .await?;
        let mut pending = Vec::new();
        for row in &rows {
            if iterations_over_limit(tx, row, max_field_bytes).await? {
                continue;
            }
            // Rows the applier will set aside are not folded here either.
            // A row the applier will set aside is skipped here too.
            let mut raw = match store::raw_change(row) {
                Ok(raw) => raw,
                Err(crate::reactor::decode::RowError::Poison(_)) => continue,
                Err(crate::reactor::decode::RowError::Systemic(e)) => return Err(e.into()),
            };
            raw.seq = seqs.get(&raw.id).copied().unwrap_or_default();
            if let Ok(valid) = change::validate(raw, max_field_bytes) {
                pending.push(valid.row);
            }
        }
        pending.sort_by_key(|row| (row.created_at, row.seq));
        for row in &pending {
            fold.apply(mission_id, &mut record, row);
        }
    }
    Ok(match record.remove("iterations") {
        None => IterationsSource::None,
        Some(value) => match value.get("mana-ai-source").and_then(Value::as_str) {
            Some(m) if m == marker => match value.get("from").and_then(Value::as_str) {
                Some("snapshot") => IterationsSource::Snapshot,
                Some(id) => id
                    .parse()
                    .map(IterationsSource::Change)
                    .context("a marker without a change id")?,
                None => anyhow::bail!("a marker without its source"),
            },
            _ => IterationsSource::Value(value),
        },
    })
}

/// The write-back row: `data.iterations` is the current iterations with the
/// new one appended, built by the database (an iteration already there by id
/// is not added twice); a non-array current value starts a new list.
const INSERT_WRITEBACK: &str = "INSERT INTO public.sync_changes
       (id, app_id, table_name, record_id, user_id, op, data, field_timestamps, client_id, schema_version, actor)
     SELECT $1, 'ai', 'aiMissions', $2, $3, 'update',
            jsonb_build_object(
              'iterations',
              CASE WHEN coalesce(jsonb_typeof(src.it), '') <> 'array' THEN jsonb_build_array($4::jsonb)
                   WHEN src.it @> jsonb_build_array(jsonb_build_object('id', $5::text)) THEN src.it
                   ELSE src.it || jsonb_build_array($4::jsonb) END,
              'updatedAt', $6::text, 'nextRunAt', $7::text),
            $8, $9, 1, $10
     FROM (SELECT CASE $11::text
             WHEN 'snapshot' THEN (SELECT record->'iterations' FROM mana_ai.mission_snapshots
                                   WHERE user_id = $3 AND mission_id = $2)
             WHEN 'change' THEN (SELECT data->'iterations' FROM public.sync_changes WHERE id = $12)
             ELSE $13::jsonb END AS it) src";

/// Commits the write-back; false when the claim was taken over (nothing written).
pub async fn commit(
    client: &mut tokio_postgres::Client,
    write: &WriteBack,
) -> anyhow::Result<bool> {
    let tx = crate::db::begin_user(client, &write.slot.user_id).await?;
    let (user_id, mission_id) = (&write.slot.user_id, &write.slot.mission_id);
    let source = iterations_source(&tx, user_id, mission_id, write.max_field_bytes)
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
    let now = iso_millis(write.now);
    let next = write.next_run_at.map(iso_millis);
    let stamps = json!({"iterations": now, "updatedAt": now, "nextRunAt": now});
    let actor = json!({
        "kind": "ai",
        "principalId": write.author.principal_id(),
        "displayName": write.author.display_name,
        "missionId": write.slot.mission_id,
        "iterationId": write.iteration_id,
        "rationale": write.objective,
    });
    let (kind, from_change, value) = match source {
        IterationsSource::None => ("none", None, None),
        IterationsSource::Snapshot => ("snapshot", None, None),
        IterationsSource::Change(id) => ("change", Some(id), None),
        IterationsSource::Value(v) => ("value", None, Some(v)),
    };
    tx.execute(
        INSERT_WRITEBACK,
        &[
            &change_id,
            &write.slot.mission_id,
            &write.slot.user_id,
            &write.iteration,
            &write.iteration_id,
            &now,
            &next,
            &stamps,
            &CLIENT_ID,
            &actor,
            &kind,
            &from_change,
            &value,
        ],
    )
    .await
    .context("inserting the write-back row")?;
    if write.tokens_used > 0 {
        tx.execute(
            "INSERT INTO mana_ai.token_usage (user_id, agent_id, mission_id, tokens_used) VALUES ($1, $2, $3, $4)",
            &[&write.slot.user_id, &write.author.agent_id, &write.slot.mission_id, &write.tokens_used],
        )
        .await?;
    }
    tx.commit().await.context("committing the write-back")?;
    Ok(true)
}
