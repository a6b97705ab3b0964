//! Retention: the leader prunes rows nobody needs any more.
//!
//! - `token_usage` rows older than the 24 h budget window (the gate sums
//!   `ts > now() - 24 h`, so an older row can never count again);
//! - `mission_runs` rows older than `MANA_AI_RETENTION_DAYS` (by their latest
//!   claim, finish or retry time), never a slot still `running`: that claim
//!   is what the next leader takes over;
//! - `dead_changes` rows older than `MANA_AI_RETENTION_DAYS`;
//! - `decrypt_audit` rows older than `MANA_AI_AUDIT_RETENTION_DAYS` (default
//!   a year), every user's: the table forces row-level security, and
//!   migration 0007's policies let this delete, and only it, through;
//! - `research_jobs` rows not submitted or polled for
//!   `MANA_AI_RETENTION_DAYS` (a mission deleted or paused with its job,
//!   or a job whose slot is long past), every user's, through migration
//!   0012's policies in the same way.
//!
//! It runs on the leader only, once when it starts leading and then on
//! every safety sweep (`MANA_AI_SWEEP_INTERVAL_SECS`), in batches of
//! [`BATCH`] rows, each its own short statement, so it never holds many
//! locks or a long transaction. `mana_ai_rows_pruned_total{table}` counts it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::maintenance::PruneSql;

/// Rows deleted per statement.
pub const BATCH: i64 = 1_000;

/// A table retention prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pruned {
    TokenUsage,
    MissionRuns,
    DeadChanges,
    DecryptAudit,
    ResearchJobs,
}

/// How long rows are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Days {
    /// `mission_runs`, `dead_changes` and `research_jobs`
    /// (`MANA_AI_RETENTION_DAYS`).
    pub rows: u32,
    /// `decrypt_audit` (`MANA_AI_AUDIT_RETENTION_DAYS`).
    pub audit: u32,
}

impl Pruned {
    pub const ALL: [Pruned; 5] = [
        Pruned::TokenUsage,
        Pruned::MissionRuns,
        Pruned::DeadChanges,
        Pruned::DecryptAudit,
        Pruned::ResearchJobs,
    ];

    /// The `table` label of `mana_ai_rows_pruned_total`.
    pub fn label(self) -> &'static str {
        match self {
            Pruned::TokenUsage => "token_usage",
            Pruned::MissionRuns => "mission_runs",
            Pruned::DeadChanges => "dead_changes",
            Pruned::DecryptAudit => "decrypt_audit",
            Pruned::ResearchJobs => "research_jobs",
        }
    }

    /// The retention that applies to it.
    fn days(self, days: Days) -> i32 {
        let n = match self {
            Pruned::DecryptAudit => days.audit,
            _ => days.rows,
        };
        i32::try_from(n).unwrap_or(i32::MAX)
    }

    /// Its batched delete (see `store::maintenance::PruneSql`).
    fn statement(self) -> PruneSql {
        match self {
            Pruned::TokenUsage => PruneSql::TokenUsage,
            Pruned::MissionRuns => PruneSql::MissionRuns,
            Pruned::DeadChanges => PruneSql::DeadChanges,
            Pruned::DecryptAudit => PruneSql::DecryptAudit,
            Pruned::ResearchJobs => PruneSql::ResearchJobs,
        }
    }
}

/// Prunes one table in batches until a batch comes back short or `stop`
/// is cancelled; returns the rows deleted.
pub async fn prune_table(
    pool: &Pool,
    table: Pruned,
    retention: Days,
    metrics: &Metrics,
    stop: &CancellationToken,
) -> anyhow::Result<u64> {
    let days = table.days(retention);
    let mut client = pool.get().await.context("connecting to the database")?;
    let prune = table.statement();
    let statement = prune
        .prepare(&client)
        .await
        .with_context(|| format!("preparing the prune of {}", table.label()))?;
    let counter = metrics.rows_pruned.with_label_values(&[table.label()]);
    let mut total = 0;
    loop {
        let n = prune
            .delete_batch(&mut client, &statement, BATCH, days)
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
pub async fn prune_all(pool: &Pool, retention: Days, metrics: &Metrics, stop: &CancellationToken) {
    for table in Pruned::ALL {
        if stop.is_cancelled() {
            return;
        }
        match prune_table(pool, table, retention, metrics, stop).await {
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

/// The leader's retention task, for `Reactor::supervise`: each start makes
/// a pass now, then one per `every`, until `stop`.
pub fn task(
    pool: Pool,
    metrics: Arc<Metrics>,
    every: Duration,
    retention: Days,
    stop: CancellationToken,
) -> impl FnMut() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    move || {
        let (pool, metrics, stop) = (pool.clone(), metrics.clone(), stop.clone());
        Box::pin(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => prune_all(&pool, retention, &metrics, &stop).await,
                }
            }
        })
    }
}
