//! What the demo reads back to show: the snapshot, the written iteration,
//! the audit rows; and a bounded poll for each.

use std::time::Duration;

use anyhow::bail;
use pgtemp::{TempDb, SYNC_ROLE};
use serde_json::{json, Value};

use crate::say;
use crate::seed::{MISSION, USER};

pub async fn wait_for<T, F, Fut>(limit: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(found) = probe().await? {
            return Ok(found);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("gave up after {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn snapshot_line(pool: &deadpool_postgres::Pool) -> anyhow::Result<Option<String>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT state, next_run_at, agent_id, change_count FROM mana_ai.mission_snapshots WHERE user_id = $1 AND mission_id = $2",
            &[&USER, &MISSION],
        )
        .await?;
    let Some(r) = row else { return Ok(None) };
    Ok(Some(format!(
        "state {}, nextRunAt {}, agent {}, {} change(s) folded",
        r.try_get::<_, Option<String>>(0)?.unwrap_or_default(),
        r.try_get::<_, Option<String>>(1)?.unwrap_or_default(),
        r.try_get::<_, Option<String>>(2)?.unwrap_or_default(),
        r.try_get::<_, i64>(3)?
    )))
}

pub async fn written_iteration(db: &TempDb) -> anyhow::Result<Option<Value>> {
    let mut client = db.connect_as(SYNC_ROLE).await?;
    let tx = mana_ai::db::begin_user(&mut client, USER).await?;
    let row = tx
        .query_opt(
            "SELECT data, actor FROM sync_changes WHERE record_id = $1 AND client_id = 'mana-ai-runner' ORDER BY created_at DESC LIMIT 1",
            &[&MISSION],
        )
        .await?;
    let Some(r) = row else { return Ok(None) };
    let (data, actor): (Value, Value) = (r.try_get(0)?, r.try_get(1)?);
    Ok(Some(
        json!({"nextRunAt": data["nextRunAt"], "iteration": data["iterations"].as_array().and_then(|a| a.last()).cloned(), "actor": actor}),
    ))
}

pub async fn audit_lines(pool: &deadpool_postgres::Pool) -> anyhow::Result<Vec<String>> {
    let mut client = pool.get().await?;
    let entries = mana_ai::audit::read(&mut client, USER, Some(MISSION), 10).await?;
    Ok(entries
        .iter()
        .map(|e| {
            format!(
                "{} {}:{} {}",
                e.status,
                e.table_name,
                e.record_id,
                e.reason.as_deref().unwrap_or("")
            )
        })
        .collect())
}

pub fn say_prompt(summary: &mana_ai::run::PromptSummary) {
    say(format!(
        "6. Prompt: system {} chars, user {} chars, {} tools{}",
        summary.system_chars,
        summary.user_chars,
        summary.tools,
        if summary.offline {
            " (offline planner)"
        } else {
            ""
        }
    ));
    for input in &summary.inputs {
        say(format!("   input {input}"));
    }
}
