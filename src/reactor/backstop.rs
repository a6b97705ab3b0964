//! The backstop: on every safety sweep, queue rows below the claim's
//! low-water mark, which no claim will ever read, are found, applied and
//! counted (`mana_ai_changes_recovered_total`, an alert pages on it).
//!
//! By the claim's argument (docs/design.md, "Why the claim cannot skip a
//! change") it finds nothing. It exists for what the argument does not
//! cover: a DBA who sets the queue's identity back by hand, a bug. A row
//! must be older than one sweep interval, so a claim that is about to see a
//! new queue (a reinstalled kit) gets there first.

use super::applier::Applier;
use super::outcome::ApplyError;
use crate::store::queue;

/// Rows the backstop takes per sweep at most (it runs again next sweep).
const MAX_PER_SWEEP: i64 = 1_000;

impl Applier {
    /// Applies (or sets aside) every row the claim has passed over; returns
    /// how many.
    pub(super) async fn recover_skipped(&mut self) -> Result<usize, ApplyError> {
        let bound = self.low_water.bound();
        let min_age = self.ctx.settings.sweep_interval.as_secs_f64();
        let ids = {
            let client = self.ctx.pool.get().await.map_err(anyhow::Error::from)?;
            queue::below_bound(&**client, bound, min_age, MAX_PER_SWEEP).await?
        };
        let mut recovered = 0;
        for id in ids {
            recovered += match self.apply_ids(vec![id]).await {
                Ok(stats) => stats.claimed,
                Err(ApplyError::Data { code, message }) => self.set_aside(&code, &message).await?,
                Err(e) => return Err(e),
            };
        }
        if recovered > 0 {
            self.ctx.metrics.changes_recovered.inc_by(recovered as u64);
            tracing::error!(
                rows = recovered,
                bound,
                "the backstop applied queued changes the claim had passed over"
            );
        }
        Ok(recovered)
    }
}
