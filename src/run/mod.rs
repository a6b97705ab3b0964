//! Mission runs: what happens when a mission's timer fires.
//!
//! The [`Runner`] takes due missions from the wheel (or every due mission at
//! once for `/internal/tick`), queues each in a fair queue that serves users
//! in turn under the global, per-user and per-agent limits (`queue.rs`,
//! `schedule::fair`), runs a mission at most once at a time, and catches a
//! panicking run so the reactor goes on. One run is a short sequence of phases
//! (see `mission.rs`): load the due slot, claim it durably, gate on the
//! agent, gather inputs (grant, decryption, research), plan (prompt, planner,
//! strict parse), write back with the next `nextRunAt` and the tokens used.

mod admit;
pub mod claim;
mod claimed;
pub mod deep;
mod due;
mod finish;
pub mod gates;
pub mod inputs;
mod mission;
mod outcome;
pub mod phase;
mod plan;
mod prepare;
mod queue;
mod shutdown;
pub mod stall;
mod tool_counts;
pub mod writeback;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

pub use self::outcome::{Outcome, TickStats};
pub use self::queue::missed_slots;
use crate::crypto::GrantKey;
use crate::metrics::Metrics;
use crate::planner::research::ResearchClient;
/// Where plans come from (it lives in `planner`; the runner holds one).
pub use crate::planner::Planner;
use crate::planner::ToolCatalog;
use crate::schedule::clock::Clock;
use crate::schedule::wheel::{MissionKey, WheelHandle};

/// What a run sent the planner, without the content.
#[derive(Debug, Clone)]
pub struct PromptSummary {
    pub mission_id: String,
    pub system_chars: usize,
    pub user_chars: usize,
    pub tools: usize,
    /// `module/table: title` of each resolved input.
    pub inputs: Vec<String>,
    pub offline: bool,
}

/// Everything a runner needs.
pub struct RunnerDeps {
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub wheel: WheelHandle,
    pub planner: Planner,
    pub research: Option<ResearchClient>,
    /// Deep research jobs (`MANA_AI_DEEP_RESEARCH_ENABLED`); None: off.
    pub deep_research: Option<deep::DeepResearch>,
    pub catalog: ToolCatalog,
    pub grant_key: Option<GrantKey>,
    pub default_tz: chrono_tz::Tz,
    pub max_concurrent: usize,
    /// Runs per user in flight, and the catch-up grace (see `queue.rs`).
    pub fair_limits: crate::config::FairLimits,
    pub max_failures: u32,
    /// The interval floor and the users' token budget.
    pub cost: crate::config::CostLimits,
    /// `MANA_AI_MAX_FIELD_BYTES`, as the applier applies it.
    pub max_field_bytes: usize,
    /// Waits after the 1st, 2nd, ... consecutive failure (the last repeats).
    pub backoff: Vec<Duration>,
    /// This leadership term (fresh each time an instance becomes leader):
    /// claims by any other id, including this process's earlier terms, are
    /// stale once we lead.
    pub term_id: uuid::Uuid,
    /// Told what each run asked the planner (sizes and names, never content):
    /// the demo (`mana-ai-demo`) prints it.
    pub prompt_observer: Option<mpsc::UnboundedSender<PromptSummary>>,
    /// The generation of `sync_changes` (stamp column, write-back shape).
    pub generation: crate::sync::generation::Generation,
    /// `MANA_AI_PLAN_PARAM_MAX_CHARS`: the plan schema's bound on string parameters.
    pub param_max_chars: usize,
    /// Test hook (`MANA_AI_FAILPOINT=after-llm`, read only in builds with
    /// the `test-hooks` feature): abort the process right after the planner
    /// answered, to prove a crash there loses nothing.
    pub failpoint: Option<String>,
}

pub struct Runner {
    deps: RunnerDeps,
    /// Due runs waiting for their turn, and the runs in flight.
    turns: Mutex<queue::Turns>,
}

impl Runner {
    pub fn new(deps: RunnerDeps) -> Arc<Runner> {
        Arc::new(Runner {
            turns: queue::Turns::new(deps.max_concurrent, deps.fair_limits),
            deps,
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.deps.metrics
    }

    /// Runs every mission due now (through the same slot claim) and waits.
    pub async fn run_due_now(self: &Arc<Self>) -> anyhow::Result<TickStats> {
        let started = std::time::Instant::now();
        self.deps.metrics.ticks.inc();
        let client = self.deps.pool.get().await?;
        let due = crate::store::due::due_missions(&**client, self.deps.clock.now()).await?;
        drop(client);
        let mut stats = TickStats {
            due_mission_count: due.len() as u64,
            ..TickStats::default()
        };
        let mut runs = JoinSet::new();
        for mission in due {
            let runner = self.clone();
            runs.spawn(async move {
                runner
                    .run_one(&mission.user_id, &mission.mission_id, None)
                    .await
            });
        }
        while let Some(done) = runs.join_next().await {
            stats.count(done.unwrap_or(Outcome::Error));
        }
        self.deps
            .metrics
            .tick_duration
            .observe(started.elapsed().as_secs_f64());
        Ok(stats)
    }

    /// One run of one mission: waits in the fair queue for its turn (the
    /// global, per-user and per-agent limits; see `queue.rs`), then runs
    /// behind a panic boundary. `due_at` is the timer's slot (None for
    /// ticks). A mission already queued or running here is not run twice.
    pub async fn run_one(
        self: &Arc<Self>,
        user_id: &str,
        mission_id: &str,
        due_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Outcome {
        let key = MissionKey::new(user_id, mission_id);
        let Some((ticket, mut turn)) = self.enqueue(key.clone(), due_at) else {
            count_outcome(&self.deps.metrics, Outcome::InFlight);
            return Outcome::InFlight;
        };
        let mut first = true;
        loop {
            let Ok(ready) = turn.await else {
                return Outcome::Error;
            };
            self.started(&ready, first);
            let running = RunningTurn::start(&self.deps.metrics);
            let outcome = self.run_turn(user_id, mission_id).await;
            // Sent back to the queue by its agent: wait for the next turn.
            if let Some(next) = self.next_turn(&key) {
                drop(running);
                (turn, first) = (next, false);
                continue;
            }
            // Counted before the run leaves the in-flight gauge and the
            // queue, so whoever sees either drop sees the outcome counted.
            running.end(outcome);
            drop(ticket);
            return outcome;
        }
    }

    /// One turn of a run, in its span.
    async fn run_turn(self: &Arc<Self>, user_id: &str, mission_id: &str) -> Outcome {
        let span = tracing::info_span!(
            "mission_run",
            user_id = %user_id,
            mission_id = %mission_id,
            agent_id = tracing::field::Empty,
            slot = tracing::field::Empty,
            resolved_model = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let outcome = self.run_guarded(user_id, mission_id, &span).await;
        span.record("outcome", outcome.as_str());
        tracing::info!(parent: &span, outcome = outcome.as_str(), "mission run finished");
        outcome
    }

    /// Runs the mission in its own task (a panic ends only the run) and, when
    /// it ended in an error, schedules the retry after the back-off.
    async fn run_guarded(
        self: &Arc<Self>,
        user_id: &str,
        mission_id: &str,
        span: &tracing::Span,
    ) -> Outcome {
        let runner = self.clone();
        let (user, mission) = (user_id.to_string(), mission_id.to_string());
        let task = tokio::spawn(
            async move { runner.execute(&user, &mission).await }.instrument(span.clone()),
        );
        // Aborting this run (shutdown past its grace) aborts the run's task too.
        let mut task = AbortOnDrop(task);
        let outcome = match (&mut task.0).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                tracing::error!(parent: span, error = %format!("{e:#}"), "mission run failed");
                Outcome::Error
            }
            Err(join) => {
                if join.is_panic() {
                    self.deps.metrics.run_panics.inc();
                    tracing::error!(parent: span, "mission run panicked");
                }
                Outcome::Error
            }
        };
        if outcome == Outcome::Error {
            self.deps.metrics.mission_errors.inc();
            // The dropped `Claimed` gave the slot back as a failed attempt with
            // its back-off; the wheel tries at the first step, and a claim
            // still backing off then re-arms it for its own retry time.
            let retry = self.deps.clock.now() + self.backoff_after(0);
            self.rearm(user_id, mission_id, retry).await;
        }
        outcome
    }

    fn backoff_after(&self, failures: u32) -> chrono::Duration {
        let table = &self.deps.backoff;
        let wait = table
            .get(failures as usize)
            .or(table.last())
            .copied()
            .unwrap_or(Duration::from_secs(60));
        chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::minutes(15))
    }

    async fn rearm(&self, user_id: &str, mission_id: &str, at: chrono::DateTime<chrono::Utc>) {
        self.deps
            .wheel
            .apply(vec![crate::schedule::wheel::WheelUpdate::Arm {
                key: MissionKey::new(user_id, mission_id),
                next_run_at: at,
            }])
            .await;
    }
}

/// Counts a run's outcome in `run_outcomes_total`.
fn count_outcome(metrics: &Metrics, outcome: Outcome) {
    metrics
        .run_outcomes
        .with_label_values(&[outcome.as_str()])
        .inc();
}

/// A turn of a run, in `runs_in_flight` while it lives. It ends with
/// [`RunningTurn::end`], which counts the outcome before the gauge drops,
/// or is dropped (sent back to the queue, or aborted at shutdown): then only
/// the gauge drops.
struct RunningTurn<'a> {
    metrics: &'a Metrics,
}

impl<'a> RunningTurn<'a> {
    fn start(metrics: &'a Metrics) -> Self {
        metrics.runs_in_flight.inc();
        Self { metrics }
    }

    fn end(self, outcome: Outcome) {
        count_outcome(self.metrics, outcome);
    }
}

impl Drop for RunningTurn<'_> {
    fn drop(&mut self) {
        self.metrics.runs_in_flight.dec();
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A turn is in the gauge while it lives; ended, its outcome is counted
    /// before it leaves the gauge; dropped (requeued, aborted), it only
    /// leaves the gauge.
    #[test]
    fn a_running_turn_leaves_the_gauge_however_it_ends() {
        let metrics = Metrics::new();
        let written = || {
            let outcome = Outcome::Written.as_str();
            metrics.run_outcomes.with_label_values(&[outcome]).get()
        };
        let turn = RunningTurn::start(&metrics);
        let second = RunningTurn::start(&metrics);
        assert_eq!(metrics.runs_in_flight.get(), 2);
        turn.end(Outcome::Written);
        assert_eq!((metrics.runs_in_flight.get(), written()), (1, 1));
        drop(second);
        assert_eq!((metrics.runs_in_flight.get(), written()), (0, 1));
    }
}
