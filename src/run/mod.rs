//! Mission runs: what happens when a mission's timer fires.
//!
//! The [`Runner`] takes due missions from the wheel (or every due mission at
//! once for `/internal/tick`), runs each under a global concurrency limit and
//! at most once at a time per mission, and catches a panicking run so the
//! reactor goes on. One run is a short sequence of phases
//! (see `mission.rs`): load the due slot, claim it durably, gate on the
//! agent, gather inputs (grant, decryption, research), plan (prompt, planner,
//! strict parse), write back with the next `nextRunAt` and the tokens used.

mod admit;
pub mod claim;
mod finish;
pub mod gates;
pub mod inputs;
mod mission;
mod outcome;
pub mod phase;
mod plan;
mod prepare;
mod shutdown;
pub mod stall;
pub mod writeback;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

pub use self::outcome::{Outcome, TickStats};
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
    pub catalog: ToolCatalog,
    pub grant_key: Option<GrantKey>,
    pub default_tz: chrono_tz::Tz,
    pub max_concurrent: usize,
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
    pub instance_id: uuid::Uuid,
    /// Told what each run asked the planner (sizes and names, never content):
    /// the demo (`mana-ai-demo`) prints it.
    pub prompt_observer: Option<mpsc::UnboundedSender<PromptSummary>>,
    /// Test hook (`MANA_AI_FAILPOINT=after-llm`): abort the process right
    /// after the planner answered, to prove a crash there loses nothing.
    pub failpoint: Option<String>,
}

pub struct Runner {
    deps: RunnerDeps,
    permits: Semaphore,
    in_flight: Mutex<HashSet<MissionKey>>,
    /// Runs in flight per (user, agent), for `maxConcurrentMissions`.
    agents_in_flight: Mutex<HashMap<(String, String), usize>>,
}

impl Runner {
    pub fn new(deps: RunnerDeps) -> Arc<Runner> {
        Arc::new(Runner {
            permits: Semaphore::new(deps.max_concurrent),
            deps,
            in_flight: Mutex::new(HashSet::new()),
            agents_in_flight: Mutex::new(HashMap::new()),
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
        let due = crate::store::runs::due_missions(&**client, self.deps.clock.now()).await?;
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

    /// One run of one mission, with the per-mission and global limits and a
    /// panic boundary. `due_at` is the timer's time (None for ticks).
    pub async fn run_one(
        self: &Arc<Self>,
        user_id: &str,
        mission_id: &str,
        due_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Outcome {
        let key = MissionKey::new(user_id, mission_id);
        let Some(_in_flight) = InFlightGuard::enter(self, key) else {
            self.finish(Outcome::InFlight);
            return Outcome::InFlight;
        };
        let Ok(_permit) = self.permits.acquire().await else {
            return Outcome::Error;
        };
        if let Some(due) = due_at {
            let lag = (self.deps.clock.now() - due)
                .num_microseconds()
                .unwrap_or(0)
                .max(0);
            self.deps.metrics.due_to_start.observe(lag as f64 / 1e6);
        }
        let metrics = &self.deps.metrics;
        metrics.runs_in_flight.inc();
        let span = tracing::info_span!(
            "mission_run",
            user_id = %user_id,
            mission_id = %mission_id,
            agent_id = tracing::field::Empty,
            slot = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let outcome = self.run_guarded(user_id, mission_id, &span).await;
        span.record("outcome", outcome.as_str());
        tracing::info!(parent: &span, outcome = outcome.as_str(), "mission run finished");
        // Counted before the run leaves the in-flight gauge, so whoever sees
        // `runs_in_flight` drop sees the run's outcome counted.
        self.finish(outcome);
        metrics.runs_in_flight.dec();
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
            // The claim guard recorded the failure; try again after the back-off.
            let retry = self.deps.clock.now() + self.backoff_after(0);
            self.rearm(user_id, mission_id, retry).await;
        }
        outcome
    }

    fn finish(&self, outcome: Outcome) {
        self.deps
            .metrics
            .run_outcomes
            .with_label_values(&[outcome.as_str()])
            .inc();
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

/// Holds a mission in the in-flight set for the life of its run.
struct InFlightGuard<'a> {
    runner: &'a Runner,
    key: MissionKey,
}

impl<'a> InFlightGuard<'a> {
    fn enter(runner: &'a Runner, key: MissionKey) -> Option<Self> {
        let inserted = runner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        // Built only after the lock is released: its Drop takes the lock.
        inserted.then(|| InFlightGuard { runner, key })
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        let mut set = self
            .runner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        set.remove(&self.key);
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
