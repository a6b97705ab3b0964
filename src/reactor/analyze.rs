//! Statistics of the snapshot tables after many changes.
//!
//! The applier's statements are prepared once per connection, and Postgres
//! keeps a generic plan for them once it stops re-planning. Planned while
//! the snapshot tables were empty (a new install, `install.sql` on a long
//! history, a burst of 10^5 changes), those plans stay until the tables'
//! statistics change, and autovacuum analyzes only after 10% of a table
//! changed and on its own schedule: change-to-snapshot was measured about
//! 5x slower until then.
//! The service owns the snapshot tables (its migrations created them), so it
//! ANALYZEs them itself: once it has applied [`ANALYZE_AFTER_ROWS`] changes
//! since its last ANALYZE, and at least as many changes as the tables then
//! held rows (so their statistics are never more than about a doubling
//! behind: a backfill of 10^6 changes over 10^5 missions analyzes some 30
//! times). An ANALYZE (a 30,000-row sample per table) replaces the tables'
//! statistics and with them every cached plan on them. It runs beside the
//! applier ([`Analyzing`]): on large tables one took 0.3 to 0.5 s, which
//! every user's next change waited for while it ran inline. The count
//! runs across drains, because a burst arrives as many drains when the
//! applier keeps up with the writers.
//!
//! Why 10,000: that is about half a second of applier work (some 40 us a
//! change), so an ANALYZE costs a few percent of it; below that the tables
//! are too small for a plan to matter much. Steady traffic over large tables
//! analyzes rarely (every as many changes as the tables have rows), and
//! autovacuum keeps doing its own.

use futures_util::FutureExt;
use tokio_util::task::AbortOnDropHandle;

/// Changes applied before the first ANALYZE
/// (`MANA_AI_ANALYZE_AFTER_ROWS`; 0 turns it off).
pub const ANALYZE_AFTER_ROWS: u64 = 10_000;

/// When the snapshot tables are due an ANALYZE.
#[derive(Debug, Clone)]
pub struct AnalyzeSchedule {
    /// 0: never.
    threshold: u64,
    /// Changes applied since the last ANALYZE.
    since: u64,
    /// Rows the snapshot tables held at the last ANALYZE.
    rows: u64,
}

impl AnalyzeSchedule {
    pub fn new(threshold: u64) -> Self {
        AnalyzeSchedule {
            threshold,
            since: 0,
            rows: 0,
        }
    }

    /// Notes `applied` changes; true when an ANALYZE is due now.
    pub fn note(&mut self, applied: usize) -> bool {
        self.since += applied as u64;
        self.threshold > 0 && self.since >= self.threshold.max(self.rows)
    }

    /// Records an ANALYZE that found `rows` rows in the tables.
    pub fn analyzed(&mut self, rows: u64) {
        self.since = 0;
        self.rows = rows;
    }
}

/// The ANALYZE the applier started, running beside it on its own pooled
/// connection: a batch never waits for it. ANALYZE takes SHARE UPDATE
/// EXCLUSIVE on the tables, which the applier's reads, row locks and writes
/// do not conflict with; an ANALYZE of large snapshot tables took 0.3 to
/// 0.5 s, every change of every user waiting behind it while it ran inline.
/// One at a time; aborted when dropped (the applier's term ended), and a
/// clone (a restarted applier) starts with none in flight.
#[derive(Default)]
pub struct Analyzing(Option<AbortOnDropHandle<Option<u64>>>);

impl Clone for Analyzing {
    fn clone(&self) -> Self {
        Analyzing(None)
    }
}

impl Analyzing {
    /// Starts an ANALYZE unless one is in flight.
    pub fn start(
        &mut self,
        pool: &deadpool_postgres::Pool,
        metrics: &std::sync::Arc<crate::metrics::Metrics>,
    ) {
        if self.0.is_none() {
            let (pool, metrics) = (pool.clone(), metrics.clone());
            let task = tokio::spawn(async move { analyze_snapshots(&pool, &metrics).await });
            self.0 = Some(AbortOnDropHandle::new(task));
        }
    }

    /// The rows the tables held when the ANALYZE in flight ended, once it
    /// has ended well; frees the slot however it ended.
    pub fn finished(&mut self) -> Option<u64> {
        let handle = self.0.as_mut()?;
        let ended = handle
            .is_finished()
            .then(|| handle.now_or_never())
            .flatten()?;
        self.0 = None;
        ended.ok().flatten()
    }
}

/// ANALYZEs both snapshot tables; returns the rows they hold, or None
/// when it failed (logged: the next one or autovacuum will do it; never an
/// error of the drain).
pub async fn analyze_snapshots(
    pool: &deadpool_postgres::Pool,
    metrics: &crate::metrics::Metrics,
) -> Option<u64> {
    let started = std::time::Instant::now();
    let result = async {
        let client = pool.get().await?;
        anyhow::Ok(crate::store::maintenance::analyze_snapshots(&**client).await?)
    }
    .await;
    match result {
        Ok(rows) => {
            metrics.snapshot_analyzes.inc();
            tracing::info!(
                rows,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "analyzed the snapshot tables after many changes"
            );
            Some(rows)
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "ANALYZE of the snapshot tables failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `batches` x `size` changes, ten per new record, so the tables
    /// grow by a tenth of them; returns after which totals an ANALYZE came.
    fn run(threshold: u64, batches: usize, size: usize) -> Vec<u64> {
        let mut schedule = AnalyzeSchedule::new(threshold);
        let (mut total, mut at) = (0, Vec::new());
        for _ in 0..batches {
            total += size as u64;
            if schedule.note(size) {
                schedule.analyzed(total / 10);
                at.push(total);
            }
        }
        at
    }

    #[test]
    fn a_backfill_analyzes_every_threshold_then_as_the_tables_double() {
        let at = run(10_000, 2_000, 500);
        assert_eq!(at[..3], [10_000, 20_000, 30_000]);
        assert!((25..=40).contains(&at.len()), "{at:?}");
        // Once the tables are large, only when they could have doubled.
        let last = &at[at.len() - 2..];
        assert!(last[1] - last[0] >= last[0] / 10, "{at:?}");
    }

    #[test]
    fn few_changes_and_a_zero_threshold_never_analyze() {
        assert!(run(10_000, 19, 500).is_empty());
        assert!(run(10_000, 1, 9_999).is_empty());
        assert!(run(0, 10_000, 500).is_empty());
    }
}
