//! A batch's first round trip, the claim (`store::queue::claim`, with the
//! first user's read behind it), and what the low-water mark learns from
//! each claim.

use super::applier::Applier;
use super::batch_tx::BatchTx;
use super::low_water::{Horizon, Observed};
use super::outcome::ApplyError;
use super::read::FirstRead;
use crate::store::queue::{self, ApplierStatements, QueueRow};

/// What a batch's first round trip took and read.
pub(super) struct Claimed {
    pub(super) rows: Vec<QueueRow>,
    pub(super) horizon: Option<Horizon>,
    /// The first user's read, pipelined behind the claim.
    pub(super) first: Option<FirstRead>,
}

/// Which queue rows a batch takes.
#[derive(Debug, Clone)]
pub(super) enum Take {
    /// Up to this many of the oldest, from the low-water mark on.
    Next(i64),
    /// These (the backstop's finds).
    Ids(Vec<i64>),
}

impl Take {
    pub(super) fn limit(&self) -> i64 {
        match self {
            Take::Next(limit) => *limit,
            Take::Ids(ids) => ids.len() as i64,
        }
    }
}

impl Applier {
    /// BEGIN pipelined with the claim and, for a claim from the low-water
    /// mark, with the read of the first user's changes and snapshots under
    /// the scope the claim set; the horizon only for such a claim.
    pub(super) async fn claim(
        &self,
        tx: &BatchTx<'_>,
        statements: &ApplierStatements,
        take: &Take,
    ) -> Result<Claimed, ApplyError> {
        let claimed = match take {
            Take::Next(limit) => {
                let from = self.low_water.bound();
                let claim = queue::claim(tx.client, statements, *limit, from);
                let first = tx.client.query(&statements.read_scoped, &[]);
                let (begun, claimed, first) = futures_util::join!(tx.begin(), claim, first);
                begun?;
                let claim = claimed?;
                let first = first?;
                Claimed {
                    rows: claim.rows,
                    horizon: Some(claim.horizon),
                    first: claim
                        .scoped_user
                        .map(|user| FirstRead { user, rows: first }),
                }
            }
            Take::Ids(ids) => {
                let claim = queue::claim_ids(tx.client, statements, ids);
                let (begun, claimed) = futures_util::join!(tx.begin(), claim);
                begun?;
                Claimed {
                    rows: claimed?,
                    horizon: None,
                    first: None,
                }
            }
        };
        #[cfg(feature = "test-hooks")]
        if let Some(hook) = &self.after_claim {
            hook().await;
        }
        Ok(claimed)
    }

    /// Takes a committed claim into the low-water mark.
    pub(super) fn observe(&mut self, take: &Take, ids: &[i64], horizon: Option<Horizon>) {
        let Some(horizon) = horizon else { return };
        self.incarnation_lost = horizon.epoch.incarnation.is_none();
        let full = ids.len() as i64 >= take.limit();
        if self.low_water.observe(ids, full, horizon) == Observed::Restarted {
            self.restarted = true;
            tracing::warn!(
                "the change queue's identity or the database server changed \
                 (a reinstalled kit, a restart, a crash): claims read the queue from its start again"
            );
        }
    }

    /// Writes the server's incarnation anew after a crash emptied it, so
    /// that the next crash is seen too; retried after the next claim if it
    /// fails.
    pub(super) async fn renew_incarnation(&mut self, client: &deadpool_postgres::ClientWrapper) {
        match queue::renew_incarnation(&**client).await {
            Ok(()) => {
                self.incarnation_lost = false;
                tracing::warn!(
                    "the database server recovered from a crash; a new incarnation is recorded"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "recording the server's incarnation failed; retried after the next claim")
            }
        }
    }
}
