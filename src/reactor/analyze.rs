//! Statistics of the snapshot tables after a large drain.
//!
//! The applier's statements are prepared once per connection, and Postgres
//! keeps a generic plan for them once it stops re-planning. Planned while
//! the snapshot tables were empty (a new install, `install.sql` on a long
//! history, a burst of 10^5 changes), those plans stay until the tables'
//! statistics change, and autovacuum analyzes only after 10% of a table
//! changed and on its own schedule: change-to-snapshot was measured about
//! 5x slower until then. The service owns the snapshot tables (its
//! migrations created them), so it ANALYZEs them itself: within one drain,
//! after [`ANALYZE_AFTER_ROWS`] applied changes, again each time the drain
//! has doubled that count (so a drain of 10^6 changes analyzes 7 times in
//! its course, at 10^4 .. 6.4 x 10^5), and once more at its end if at least
//! the threshold was applied since. An ANALYZE (a 30,000-row sample per
//! table, tens of milliseconds) replaces the tables' statistics and with
//! them every cached plan on them.
//!
//! Why 10,000: a drain that size is about half a second of applier work
//! (some 40 us a change), so an ANALYZE costs a few percent of it; below
//! that the tables are too small for a plan to matter much and autovacuum
//! catches up soon (its threshold is 50 rows + 10% of the table). Steady
//! traffic drains a few rows at a time and never triggers it.

/// Changes applied in one drain before its first ANALYZE
/// (`MANA_AI_ANALYZE_AFTER_ROWS`; 0 turns it off).
pub const ANALYZE_AFTER_ROWS: u64 = 10_000;

/// When, within one drain, the snapshot tables are due an ANALYZE.
#[derive(Debug, Clone)]
pub struct AnalyzeSchedule {
    /// 0: never.
    threshold: u64,
    /// Changes applied in this drain before the last ANALYZE.
    before: u64,
    /// Changes applied since.
    since: u64,
}

impl AnalyzeSchedule {
    pub fn new(threshold: u64) -> Self {
        AnalyzeSchedule {
            threshold,
            before: 0,
            since: 0,
        }
    }

    /// Notes `applied` changes; true when an ANALYZE is due now: the
    /// threshold reached, then each doubling of the drain's total.
    pub fn note(&mut self, applied: usize) -> bool {
        self.since += applied as u64;
        self.threshold > 0 && self.since >= self.threshold.max(self.before)
    }

    /// At the end of the drain: true when at least the threshold was
    /// applied since the last ANALYZE.
    pub fn due_at_end(&self) -> bool {
        self.threshold > 0 && self.since >= self.threshold
    }

    /// Records an ANALYZE.
    pub fn analyzed(&mut self) {
        self.before += self.since;
        self.since = 0;
    }
}

/// ANALYZEs both snapshot tables; a failure is logged (the next large
/// drain or autovacuum will do it), never an error of the drain.
pub async fn analyze_snapshots(pool: &deadpool_postgres::Pool, metrics: &crate::metrics::Metrics) {
    let started = std::time::Instant::now();
    let result = async {
        let client = pool.get().await?;
        client
            .batch_execute("ANALYZE mana_ai.mission_snapshots, mana_ai.agent_snapshots")
            .await?;
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            metrics.snapshot_analyzes.inc();
            tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "analyzed the snapshot tables after a large drain"
            );
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "ANALYZE of the snapshot tables failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds a drain of `batches` x `size`; returns after which total
    /// each ANALYZE came, and whether one is due at the end.
    fn run(threshold: u64, batches: usize, size: usize) -> (Vec<u64>, bool) {
        let mut schedule = AnalyzeSchedule::new(threshold);
        let (mut total, mut at) = (0, Vec::new());
        for _ in 0..batches {
            total += size as u64;
            if schedule.note(size) {
                schedule.analyzed();
                at.push(total);
            }
        }
        (at, schedule.due_at_end())
    }

    #[test]
    fn a_large_drain_analyzes_at_each_doubling_and_at_its_end() {
        let (at, end) = run(10_000, 2_000, 500);
        assert_eq!(
            at,
            [10_000, 20_000, 40_000, 80_000, 160_000, 320_000, 640_000]
        );
        assert!(end, "360,000 since the last one");
        let (at, end) = run(10_000, 2_560, 500);
        assert_eq!(at.len(), 8);
        assert!(!end);
    }

    #[test]
    fn small_drains_and_a_zero_threshold_never_analyze() {
        assert_eq!(run(10_000, 19, 500), (vec![], false));
        assert_eq!(run(10_000, 1, 9_999), (vec![], false));
        assert_eq!(run(0, 10_000, 500), (vec![], false));
    }
}
