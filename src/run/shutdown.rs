//! The runner's loop over due missions and how it ends: runs still waiting
//! in the fair queue end at once, runs in flight get a grace period; what
//! is left is abandoned and its claims given back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{claim, Runner};
use crate::schedule::wheel::DueMission;

/// How long giving back abandoned claims may take before we step down anyway.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

impl Runner {
    /// Runs due missions from the wheel until `stop`; then lets runs in
    /// flight finish for up to `grace` (cut short by `abandon`, when
    /// leadership is lost and another instance may already run them) and
    /// abandons the rest: their claims go back, so the next leader takes them.
    pub async fn run_loop(
        self: Arc<Self>,
        due: &mut mpsc::UnboundedReceiver<DueMission>,
        stop: CancellationToken,
        abandon: CancellationToken,
        grace: Duration,
    ) {
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                next = due.recv() => match next {
                    Some(mission) => {
                        let runner = self.clone();
                        tasks.spawn(async move { runner.run_one(&mission.user_id, &mission.mission_id, Some(mission.due_at)).await; });
                    }
                    None => break,
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        self.close_queue();
        self.wind_down(tasks, abandon, grace).await;
    }

    /// Waits for the runs in flight for up to `grace`, then abandons the rest.
    async fn wind_down<T: 'static>(
        &self,
        mut tasks: JoinSet<T>,
        abandon: CancellationToken,
        grace: Duration,
    ) {
        let in_flight = self.runs_started();
        if in_flight > 0 {
            tracing::info!(
                in_flight,
                grace_secs = grace.as_secs(),
                "waiting for runs in flight"
            );
        }
        let left_because = tokio::select! {
            _ = async { while tasks.join_next().await.is_some() {} } => None,
            _ = tokio::time::sleep(grace) => Some("at the shutdown deadline"),
            _ = abandon.cancelled() => Some("when leadership was lost"),
        };
        let Some(why) = left_because else {
            return;
        };
        let abandoned = self.runs_started();
        self.deps.metrics.runs_abandoned.inc_by(abandoned as u64);
        tracing::warn!(
            abandoned,
            "runs still in flight {why}; their slots are released"
        );
        tasks.shutdown().await;
        self.release_abandoned().await;
    }

    /// Gives this term's unfinished slots back. Bounded: with the database
    /// gone (often why leadership was lost) this must not hold up stepping
    /// down; the claims are taken over anyway, only a little later.
    async fn release_abandoned(&self) {
        let release = async {
            let client = self.deps.pool.get().await?;
            anyhow::Ok(claim::release_term(&**client, self.deps.term_id).await?)
        };
        let released = tokio::time::timeout(RELEASE_TIMEOUT, release)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {RELEASE_TIMEOUT:?}")));
        match released {
            Ok(n) => tracing::info!(
                released = n,
                "unfinished slots released for the next leader"
            ),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not release unfinished slots; the next leader takes them over")
            }
        }
    }
}
