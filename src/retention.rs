//! Retention: the leader prunes rows nobody needs any more.
//!
//! - `token_usage` rows older than the 24 h budget window (the gate sums
//!   `ts > now() - 24 h`, so an older row can never count again);
//! - `mission_runs` rows older than `MANA_AI_RETENTION_DAYS` (by their latest
//!   claim, finish or retry time), never a slot still `running`: that claim
//!   is what the next leader takes over;
//! - `dead_changes` rows older than `MANA_AI_RETENTION_DAYS`.
//!
//! It runs on the leader only, once when it starts leading and then on
//! every safety sweep (`MANA_AI_SWEEP_INTERVAL_SECS`), in batches of
//! [`BATCH`] rows, each its own short statement, so it never holds many
//! locks or a long transaction. `mana_ai_rows_pruned_total{table}` counts it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Rows deleted per statement.
pub const BATCH: i64 = 1_000;

/// A table retention prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pruned {
    TokenUsage,
    MissionRuns,
    DeadChanges,
}

impl Pruned {
    pub const ALL: [Pruned; 3] = [Pruned::TokenUsage, Pruned::MissionRuns, Pruned::DeadChanges];

    /// The `table` label of `mana_ai_rows_pruned_total`.
    pub fn label(self) -> &'static str {
        match self {
            Pruned::TokenUsage => "token_usage",
            Pruned::MissionRuns => "mission_runs",
            Pruned::DeadChanges => "dead_changes",
        }
    }

    /// Deletes up to `$1` rows; `$2` is the retention in days (not a
    /// parameter of `token_usage`, whose horizon is the budget window).
    /// Each batch walks an index in age order (`token_usage_ts`,
    /// `mission_runs_prunable`, `dead_changes_dead_at`) and deletes by key:
    /// a batch costs the rows it deletes, not the size of the table.
    fn delete_batch_sql(self) -> &'static str {
        match self {
            Pruned::TokenUsage => {
                "DELETE FROM mana_ai.token_usage WHERE id = ANY (ARRAY(
                     SELECT id FROM mana_ai.token_usage
                     WHERE ts < now() - interval '24 hours'
                     ORDER BY ts LIMIT $1))"
            }
            // FOR UPDATE SKIP LOCKED passes over a row a claim is updating,
            // and the DELETE re-checks `state` on the row's latest version.
            Pruned::MissionRuns => {
                "WITH old AS (
                     SELECT user_id, mission_id, slot FROM mana_ai.mission_runs
                     WHERE state <> 'running'
                       AND greatest(claimed_at, finished_at, retry_at) < now() - make_interval(days => $2::int4)
                     ORDER BY greatest(claimed_at, finished_at, retry_at)
                     LIMIT $1
                     FOR UPDATE SKIP LOCKED)
                 DELETE FROM mana_ai.mission_runs r USING old
                 WHERE (r.user_id, r.mission_id, r.slot) = (old.user_id, old.mission_id, old.slot)
                   AND r.state <> 'running'"
            }
            Pruned::DeadChanges => {
                "DELETE FROM mana_ai.dead_changes WHERE id = ANY (ARRAY(
                     SELECT id FROM mana_ai.dead_changes
                     WHERE dead_at < now() - make_interval(days => $2::int4)
                     ORDER BY dead_at LIMIT $1))"
            }
        }
    }
}

/// Prunes one table in batches until a batch comes back short or `stop`
/// is cancelled; returns the rows deleted.
pub async fn prune_table(
    pool: &Pool,
    table: Pruned,
    retention_days: u32,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> anyhow::Result<u64> {
    let days = i32::try_from(retention_days).unwrap_or(i32::MAX);
    let client = pool.get().await.context("connecting to the database")?;
    let statement = client
        .prepare_cached(table.delete_batch_sql())
        .await
        .with_context(|| format!("preparing the prune of {}", table.label()))?;
    let counter = metrics.rows_pruned.with_label_values(&[table.label()]);
    let params: &[&(dyn tokio_postgres::types::ToSql + Sync)] = match table {
        Pruned::TokenUsage => &[&BATCH],
        Pruned::MissionRuns | Pruned::DeadChanges => &[&BATCH, &days],
    };
    let mut total = 0;
    loop {
        let n = client
            .execute(&statement, params)
            .await
            .with_context(|| format!("pruning {}", table.label()))?;
        counter.inc_by(n);
        total += n;
        if n < BATCH as u64 || stop.is_cancelled() {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// One retention pass over every table; a failing table does not stop the others.
pub async fn prune_all(
    pool: &Pool,
    retention_days: u32,
    metrics: &Metrics,
    stop: &CancellationToken,
) {
    for table in Pruned::ALL {
        if stop.is_cancelled() {
            return;
        }
        match prune_table(pool, table, retention_days, metrics, stop).await {
            Ok(0) => {}
            Ok(rows) => tracing::info!(table = table.label(), rows, "retention pruned old rows"),
            Err(e) => tracing::warn!(
                table = table.label(),
                error = %format!("{e:#}"),
                "retention failed; retrying on the next sweep"
            ),
        }
    }
}

/// Starts the leader's retention task: a pass now, then one per `every`.
pub fn spawn(
    pool: Pool,
    metrics: Arc<Metrics>,
    every: Duration,
    retention_days: u32,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => prune_all(&pool, retention_days, &metrics, &stop).await,
            }
        }
    })
}
