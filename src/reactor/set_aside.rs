//! A row that fails alone: the applier sets exactly that row aside in
//! `mana_ai.dead_changes`, with its SQLSTATE, so it never blocks the rows
//! behind it (and never another user's row in its place).

use anyhow::Context;

use super::applier::Applier;
use super::outcome::ApplyError;
use crate::store::queue::{self, ApplierStatements, DeadChange};
use crate::sync::change::{self, Poison};

impl Applier {
    /// Sets aside by itself the row of the batch of one that just failed
    /// (that row and no other: a row committed below it meanwhile is
    /// innocent).
    pub(super) async fn set_aside(
        &mut self,
        code: &str,
        message: &str,
    ) -> Result<usize, ApplyError> {
        let [id] = self.in_batch[..] else {
            return Err(ApplyError::Transient(anyhow::anyhow!(
                "a data error ({code}) before a single row was claimed: {message}"
            )));
        };
        let mut client = self
            .ctx
            .pool
            .get()
            .await
            .context("getting a pooled connection")?;
        let statements = ApplierStatements::get(&client, self.ctx.settings.generation).await?;
        let tx = client.transaction().await?;
        let Some(row) = queue::claim_ids(&*tx, &statements, &[id]).await?.pop() else {
            return Ok(0);
        };
        let dead = DeadChange {
            queue: row,
            record_id: None,
            poison: Poison::ApplyFailed(format!("{code}: {message}")),
        };
        queue::insert_dead(&*tx, &statements, std::slice::from_ref(&dead)).await?;
        tx.commit().await?;
        self.in_batch.clear();
        self.note_poison(&dead);
        self.isolate = self.isolate.saturating_sub(1);
        self.processed.send_modify(|n| *n += 1);
        Ok(1)
    }

    pub(super) fn note_poison(&self, d: &DeadChange) {
        self.ctx
            .metrics
            .poison_changes
            .with_label_values(&[d.poison.reason()])
            .inc();
        tracing::warn!(
            queue_id = d.queue.id,
            change_id = %d.queue.change_id,
            user_id = %change::clip_bytes(&d.queue.user_id, 64),
            reason = d.poison.reason(),
            detail = %d.poison,
            "change set aside in mana_ai.dead_changes"
        );
    }
}
