//! Mission runs: what happens when a mission's timer fires.
//!
//! The [`Runner`] takes due missions from the wheel (or every due mission at
//! once for `/internal/tick`), runs each under a global concurrency limit and
//! at most once at a time per mission, and catches a panicking run so the
//! reactor goes on. One run: claim the slot durably, gate on the agent,
//! unwrap the grant, resolve inputs, research, prompt, plan, parse, write
//! back with the next `nextRunAt`, record tokens (see `mission.rs`).

mod admit;
pub mod claim;
pub mod gates;
pub mod inputs;
mod mission;
pub mod offline;
pub mod phase;
mod prepare;
pub mod stall;
pub mod writeback;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::crypto::GrantKey;
use crate::metrics::Metrics;
use crate::planner::llm::LlmClient;
use crate::planner::research::ResearchClient;
use crate::planner::ToolCatalog;
use crate::schedule::clock::Clock;
use crate::schedule::wheel::{DueMission, MissionKey, WheelHandle};

/// How long giving back abandoned claims may take before we step down anyway.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// What one "run every due mission now" did (`POST /internal/tick`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TickStats {
    pub due_mission_count: u64,
    pub plans_produced: u64,
    pub plans_written_back: u64,
    pub parse_failures: u64,
    pub errors: u64,
}

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

/// Where plans come from.
pub enum Planner {
    /// An OpenAI-compatible gateway.
    Llm(Box<LlmClient>),
    /// No LLM configured: a fixed, honest example plan (`mana-ai demo`).
    Offline,
}

/// How one run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An iteration was written back.
    Written,
    /// A plan was produced but another instance had taken the slot over.
    Fenced,
    /// The answer failed the parser; `final_` when a failed iteration was written.
    ParseFailed { final_: bool },
    /// The LLM failed (after its retries); `final_` as above.
    PlannerFailed { final_: bool },
    /// An agent gate said not now (decision label).
    Skipped(&'static str),
    /// Not due (any more): paused, deleted, moved to the future.
    NotDue,
    /// The slot already has its iteration.
    AlreadyDone,
    /// Waiting out a back-off from an earlier failure.
    BackingOff,
    /// Already running here.
    InFlight,
    /// The run failed unexpectedly (database, panic); retried later.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Written => "written",
            Outcome::Fenced => "fenced",
            Outcome::ParseFailed { .. } => "parse-failed",
            Outcome::PlannerFailed { .. } => "planner-failed",
            Outcome::Skipped(_) => "skipped",
            Outcome::NotDue => "not-due",
            Outcome::AlreadyDone => "already-done",
            Outcome::BackingOff => "backing-off",
            Outcome::InFlight => "in-flight",
            Outcome::Error => "error",
        }
    }
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
    /// `MANA_AI_MAX_FIELD_BYTES`, as the applier applies it.
    pub max_field_bytes: usize,
    /// Waits after the 1st, 2nd, ... consecutive failure (the last repeats).
    pub backoff: Vec<Duration>,
    /// This leadership term (fresh each time an instance becomes leader):
    /// claims by any other id, including this process's earlier terms, are
    /// stale once we lead.
    pub instance_id: uuid::Uuid,
    /// Told what each run asked the planner (sizes and names, never content):
    /// `mana-ai demo` prints it.
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

/// The back-off after failures: 1, 5, 15 minutes.
pub fn default_backoff() -> Vec<Duration> {
    [60, 300, 900].map(Duration::from_secs).to_vec()
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

    /// Runs due missions from the wheel until `stop`; then lets runs in
    /// flight finish for up to `grace` (cut short by `abandon`, when
    /// leadership is lost and another instance may already run them) and
    /// abandons the rest: their claims go back, so the next leader takes them.
    pub async fn run_loop(
        self: Arc<Self>,
        mut due: mpsc::UnboundedReceiver<DueMission>,
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
        let in_flight = tasks.len();
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
        if let Some(why) = left_because {
            self.deps.metrics.runs_abandoned.inc_by(tasks.len() as u64);
            tracing::warn!(
                abandoned = tasks.len(),
                "runs still in flight {why}; their slots are released"
            );
            tasks.shutdown().await;
            // Bounded: with the database gone (often why leadership was
            // lost) this must not hold up stepping down; the claims are
            // taken over anyway, only a little later.
            let release = async {
                let client = self.deps.pool.get().await?;
                anyhow::Ok(claim::release_instance(&**client, self.deps.instance_id).await?)
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

    /// Runs every mission due now (through the same slot claim) and waits.
    pub async fn run_due_now(self: &Arc<Self>) -> anyhow::Result<TickStats> {
        let started = std::time::Instant::now();
        self.deps.metrics.ticks.inc();
        let client = self.deps.pool.get().await?;
        let due = client
            .query(
                // A slot already written whose write-back the applier has
                // not folded yet is not due: it would only end as done.
                "SELECT s.user_id, s.mission_id FROM mana_ai.mission_snapshots s
                 WHERE NOT s.deleted AND s.state = 'active' AND s.next_run_ts <= $1
                   AND NOT EXISTS (
                     SELECT 1 FROM mana_ai.mission_runs r
                     WHERE r.user_id = s.user_id AND r.mission_id = s.mission_id
                       AND r.slot = s.next_run_at AND r.state = 'done')",
                &[&self.deps.clock.now()],
            )
            .await?;
        drop(client);
        let mut runs = JoinSet::new();
        for row in &due {
            let (user, mission): (String, String) = (row.get(0), row.get(1));
            let runner = self.clone();
            runs.spawn(async move { runner.run_one(&user, &mission, None).await });
        }
        let mut stats = TickStats {
            due_mission_count: due.len() as u64,
            ..TickStats::default()
        };
        while let Some(done) = runs.join_next().await {
            match done.unwrap_or(Outcome::Error) {
                Outcome::Written => {
                    stats.plans_produced += 1;
                    stats.plans_written_back += 1;
                }
                Outcome::Fenced => stats.plans_produced += 1,
                Outcome::ParseFailed { .. } => stats.parse_failures += 1,
                Outcome::PlannerFailed { .. } | Outcome::Error => stats.errors += 1,
                _ => {}
            }
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
                tracing::error!(parent: &span, error = %format!("{e:#}"), "mission run failed");
                Outcome::Error
            }
            Err(join) => {
                if join.is_panic() {
                    metrics.run_panics.inc();
                    tracing::error!(parent: &span, "mission run panicked");
                }
                Outcome::Error
            }
        };
        if outcome == Outcome::Error {
            metrics.mission_errors.inc();
            // The claim guard recorded the failure; try again after the back-off.
            let retry = self.deps.clock.now() + self.backoff_after(0);
            self.rearm(user_id, mission_id, retry).await;
        }
        span.record("outcome", outcome.as_str());
        tracing::info!(parent: &span, outcome = outcome.as_str(), "mission run finished");
        // Counted before the run leaves the in-flight gauge, so whoever sees
        // `runs_in_flight` drop sees the run's outcome counted.
        self.finish(outcome);
        metrics.runs_in_flight.dec();
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
