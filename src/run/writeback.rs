//! Writing an iteration back (contract section 5): one `sync_changes` row
//! inside the user's RLS transaction, committed together with the slot's
//! completion and the tokens it used.
//!
//! The mission's `iterations` are re-read inside that transaction (snapshot
//! plus every change still queued for it), so an iteration a browser added
//! since the run started is kept, not overwritten.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tokio_postgres::Transaction;

use super::claim::{self, Slot};
use crate::reactor::store;
use crate::sync::change::{self, Kind};
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
    phase: &str,
) -> Value {
    json!({
        "id": iteration_id,
        "startedAt": iso_millis(started_at),
        "finishedAt": iso_millis(finished_at),
        "summary": "Die Planung ist wiederholt fehlgeschlagen; die Mission läuft zum nächsten Termin weiter.",
        "source": "server",
        "overallStatus": "failed",
        "plan": [],
        "errorDetails": {"name": error_name, "message": message, "phase": phase},
    })
}

/// The mission as it is now: its snapshot plus every change still queued.
/// The queue is read first, so a change applied in between is folded twice,
/// which the fold ignores, rather than missed.
pub async fn current_mission(
    tx: &Transaction<'_>,
    user_id: &str,
    mission_id: &str,
) -> anyhow::Result<Map<String, Value>> {
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
    let queued: Vec<uuid::Uuid> = seqs.keys().copied().collect();
    let key = (user_id.to_string(), mission_id.to_string());
    let mut snapshot = store::load_snapshots(tx, Kind::Mission, std::slice::from_ref(&key))
        .await?
        .remove(&key)
        .unwrap_or_default();
    if queued.is_empty() {
        return Ok(snapshot.record);
    }
    let rows = tx.query(store::READ_CHANGES, &[&queued]).await?;
    let mut pending = Vec::new();
    for row in &rows {
        let mut raw = store::raw_change(row)?;
        if raw.record_id != mission_id {
            continue;
        }
        raw.seq = seqs.get(&raw.id).copied().unwrap_or_default();
        if let Ok(valid) = change::validate(raw, usize::MAX) {
            pending.push(valid.row);
        }
    }
    pending.sort_by_key(|row| (row.created_at, row.seq));
    let mut fold: FoldState = snapshot.fold;
    for row in &pending {
        fold.apply(mission_id, &mut snapshot.record, row);
    }
    Ok(snapshot.record)
}

/// Commits the write-back; false when the claim was taken over (nothing written).
pub async fn commit(
    client: &mut tokio_postgres::Client,
    write: &WriteBack,
) -> anyhow::Result<bool> {
    let tx = crate::db::begin_user(client, &write.slot.user_id).await?;
    let mission = current_mission(&tx, &write.slot.user_id, &write.slot.mission_id)
        .await
        .context("re-reading the mission")?;
    let mut iterations = match mission.get("iterations") {
        Some(Value::Array(list)) => list.clone(),
        _ => Vec::new(),
    };
    let already = iterations
        .iter()
        .any(|it| it.get("id").and_then(Value::as_str) == Some(write.iteration_id.as_str()));
    if !already {
        iterations.push(write.iteration.clone());
    }
    if !claim::complete(
        &tx,
        &write.slot,
        write.token,
        &write.iteration_id,
        write.outcome,
    )
    .await?
    {
        return Ok(false);
    }
    let now = iso_millis(write.now);
    let next = write.next_run_at.map(iso_millis);
    let data = json!({"iterations": iterations, "updatedAt": now, "nextRunAt": next});
    let stamps = json!({"iterations": now, "updatedAt": now, "nextRunAt": now});
    let actor = json!({
        "kind": "ai",
        "principalId": write.author.principal_id(),
        "displayName": write.author.display_name,
        "missionId": write.slot.mission_id,
        "iterationId": write.iteration_id,
        "rationale": write.objective,
    });
    tx.execute(
        "INSERT INTO public.sync_changes
           (app_id, table_name, record_id, user_id, op, data, field_timestamps, client_id, schema_version, actor)
         VALUES ('ai', 'aiMissions', $1, $2, 'update', $3, $4, $5, 1, $6)",
        &[&write.slot.mission_id, &write.slot.user_id, &data, &stamps, &CLIENT_ID, &actor],
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
