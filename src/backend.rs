//! The running service as the HTTP surface sees it ([`crate::http::Backend`]).
//!
//! `/health` and `/metrics` cost no query: they read what this backend's
//! refresher task and the running service keep up to date.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool_postgres::Pool;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::audit::{self, AuditEntry};
use crate::http::{Backend, Health, ListenerHealth, Role, TickError, TickHealth};
use crate::metrics::Metrics;
use crate::reactor::supervisor::{supervise, Restart, Supervision, TaskName, TaskStates};
use crate::run::claim::RecentRun;
use crate::run::{claim, Runner, TickStats};
use crate::schedule::wheel::WheelHandle;
use crate::store::queue as store;
use crate::store::views::{self, MissionOverview};

/// How long the listener may be down before `/health` says 503.
pub const LISTENER_GRACE: Duration = Duration::from_secs(30);
/// One refresh of the queue gauges gives up after this.
const QUICK_QUERY: Duration = Duration::from_secs(2);
/// How often the queue gauges behind `/health` and `/metrics` are read.
const GAUGE_REFRESH: Duration = Duration::from_secs(5);
/// A reading older than this (the refresher is stuck) counts as none.
const GAUGE_STALE: Duration = Duration::from_secs(15);

/// The current leadership term as the rest of the process sees it: the one
/// state a leader publishes (`service::leader`), once per term, and what
/// `/health`, `/internal/*` and the tests read.
#[derive(Clone)]
pub struct LeaderView {
    pub term_id: uuid::Uuid,
    pub wheel: WheelHandle,
    /// The runner, with `TICK_ENABLED`.
    pub runner: Option<Arc<Runner>>,
    /// True while the term's listener is registered.
    pub listening: watch::Receiver<bool>,
    /// Which of the term's reactor tasks are up.
    pub tasks: TaskStates,
}

impl LeaderView {
    /// Waits until the term's listener is registered.
    pub async fn wait_listening(&mut self) {
        let _ = self.listening.wait_for(|up| *up).await;
    }
}

/// Who leads, as published: `Some` while this process leads.
pub type Terms = watch::Receiver<Option<LeaderView>>;

/// The last refresh of the queue gauges.
#[derive(Debug, Clone, Copy)]
struct QueueReading {
    /// Rows in `mana_ai.change_queue`; `None` when the database could not
    /// be read.
    depth: Option<i64>,
    at: Instant,
}

/// Shared state of one process.
///
/// `/health` and `/metrics` never query a table: a task of this backend
/// reads the queue gauges (`change_queue` rows, NOTIFY queue usage) every
/// [`GAUGE_REFRESH`] under its own timeout and keeps the last reading, on
/// leaders and standbys alike (a standby's health also says whether the
/// database answers). The task ends when the backend is dropped.
pub struct ServiceBackend {
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
    pub tick_enabled: bool,
    /// The term this process leads, if any.
    terms: Terms,
    /// Unix ms since when the leader's listener has been down (0 = up).
    listener_down_since: AtomicI64,
    /// `None` until the first refresh finished.
    queue: watch::Receiver<Option<QueueReading>>,
    /// The generation of `sync_changes` found at start (`sync::generation`).
    sync_log: std::sync::OnceLock<crate::sync::generation::LogShape>,
    /// The tool catalog in force (`ToolCatalog::origin`).
    tool_catalog: std::sync::OnceLock<String>,
    /// The process's own supervised tasks (the refresher, HTTP).
    supervision: Supervision,
    _refresher: DropGuard,
}

impl ServiceBackend {
    /// The backend, with its gauge refresher started (needs a Tokio runtime).
    pub fn new(
        pool: Pool,
        metrics: Arc<Metrics>,
        tick_enabled: bool,
        terms: Terms,
    ) -> Arc<ServiceBackend> {
        let (tx, queue) = watch::channel(None);
        let stop = CancellationToken::new();
        let supervision = Supervision {
            states: TaskStates::default(),
            metrics: metrics.clone(),
        };
        let refresher = {
            let (pool, metrics, stop) = (pool.clone(), metrics.clone(), stop.clone());
            let tx = Arc::new(tx);
            move || refresh_queue_gauges(pool.clone(), metrics.clone(), tx.clone(), stop.clone())
        };
        let (name, restart) = (TaskName::QueueGauges, Restart::TASK);
        supervise(name, refresher, restart, supervision.clone(), stop.clone());
        Arc::new(ServiceBackend {
            pool,
            metrics,
            tick_enabled,
            terms,
            listener_down_since: AtomicI64::new(0),
            queue,
            sync_log: std::sync::OnceLock::new(),
            tool_catalog: std::sync::OnceLock::new(),
            supervision,
            _refresher: stop.drop_guard(),
        })
    }

    /// Where the process's own long-running tasks report (HTTP supervises
    /// itself with it); `/health` names those that are down.
    pub fn supervision(&self) -> Supervision {
        self.supervision.clone()
    }

    /// Records the generation of `sync_changes` found at start, for `/health`.
    pub fn set_sync_log(&self, shape: crate::sync::generation::LogShape) {
        let _ = self.sync_log.set(shape);
    }

    /// Records the tool catalog in force, for `/health`.
    pub fn set_tool_catalog(&self, origin: String) {
        let _ = self.tool_catalog.set(origin);
    }

    fn leading(&self) -> Option<LeaderView> {
        self.terms.borrow().clone()
    }

    /// The queue depth of the last refresh, or `None` when it failed or is
    /// stale. Right after the start, waits for the first refresh.
    async fn queue_depth(&self) -> Option<i64> {
        let mut queue = self.queue.clone();
        let first = tokio::time::timeout(QUICK_QUERY * 2, queue.wait_for(Option::is_some)).await;
        let reading = match first {
            Ok(Ok(reading)) => *reading,
            _ => None,
        }?;
        reading.depth.filter(|_| reading.at.elapsed() < GAUGE_STALE)
    }

    /// True once the listener has been down longer than the grace period.
    fn listener_down_too_long(&self, connected: bool) -> bool {
        let now = chrono::Utc::now().timestamp_millis();
        if connected {
            self.listener_down_since.store(0, Ordering::Relaxed);
            return false;
        }
        let since = match self.listener_down_since.compare_exchange(
            0,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => now,
            Err(since) => since,
        };
        now - since > LISTENER_GRACE.as_millis() as i64
    }
}

impl Backend for ServiceBackend {
    async fn health(&self) -> Health {
        let leading = self.leading();
        let mut health = Health::new(if leading.is_some() {
            Role::Leader
        } else {
            Role::Standby
        });
        let depth = self.queue_depth().await;
        let connected = leading.as_ref().is_some_and(|l| *l.listening.borrow());
        health.queue_depth = depth;
        health.tick = TickHealth {
            enabled: self.tick_enabled,
            running: leading.as_ref().is_some_and(|l| l.runner.is_some()),
        };
        health.listener = ListenerHealth {
            connected,
            seconds_since_notification: self.metrics.seconds_since_notification(),
        };
        health.sync_log = self.sync_log.get().map(ToString::to_string);
        health.tool_catalog = self.tool_catalog.get().cloned();
        health.armed_missions = self.metrics.armed_missions.get();
        health.runs_in_flight = self.metrics.runs_in_flight.get();
        let listener_failed = leading.is_some() && self.listener_down_too_long(connected);
        if let Some(term) = &leading {
            health.tasks_down = term.tasks.down();
        }
        health.tasks_down.extend(self.supervision.states.down());
        health.ok = depth.is_some() && !listener_failed && health.tasks_down.is_empty();
        health
    }

    async fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    async fn tick(&self) -> Result<TickStats, TickError> {
        match self.leading().and_then(|l| l.runner) {
            Some(runner) => Ok(runner.run_due_now().await?),
            None if !self.tick_enabled => Err(TickError::Disabled),
            None => Err(TickError::Standby),
        }
    }

    async fn user_missions(&self, user_id: &str) -> anyhow::Result<Value> {
        let client = self.pool.get().await.context("connecting")?;
        let missions = views::user_missions(&**client, user_id).await?;
        let runs = claim::recent(&**client, user_id, 5).await?;
        let blocked = crate::run::stall::blocked(&**client, user_id).await?;
        let wheel = self.leading().map(|l| l.wheel);
        let mut out = Vec::with_capacity(missions.len());
        for m in missions {
            let armed_at = match &wheel {
                Some(w) => w
                    .armed_at(user_id, &m.mission_id)
                    .await
                    .map(|t| t.to_rfc3339()),
                None => None,
            };
            let recent: Vec<&RecentRun> = runs
                .iter()
                .filter(|r| r.mission_id == m.mission_id)
                .collect();
            // Why the mission cannot advance now, if it cannot.
            let blocked = blocked.get(&m.mission_id);
            out.push(mission_json(m, armed_at, &recent, blocked));
        }
        Ok(json!({"userId": user_id, "missions": out}))
    }

    async fn dead_changes(&self, user_id: Option<&str>, limit: i64) -> anyhow::Result<Value> {
        let client = self.pool.get().await.context("connecting")?;
        let (total, rows) = store::dead_changes(&**client, user_id, limit).await?;
        Ok(json!({ "total": total, "deadChanges": rows }))
    }

    async fn audit(
        &self,
        user_id: &str,
        mission_id: Option<&str>,
        limit: i64,
    ) -> anyhow::Result<Vec<AuditEntry>> {
        let mut client = self.pool.get().await.context("connecting")?;
        audit::read(&mut client, user_id, mission_id, limit).await
    }
}

/// Reads the queue gauges every [`GAUGE_REFRESH`] into `metrics` and `tx`
/// until `stop` (the backend is dropped).
async fn refresh_queue_gauges(
    pool: Pool,
    metrics: Arc<Metrics>,
    tx: Arc<watch::Sender<Option<QueueReading>>>,
    stop: CancellationToken,
) {
    loop {
        let read = async {
            let client = pool.get().await.ok()?;
            store::queue_gauges(&**client).await.ok()
        };
        let gauges = tokio::time::timeout(QUICK_QUERY, read).await.ok().flatten();
        if let Some((depth, usage)) = gauges {
            metrics.queue_depth.set(depth);
            metrics.notification_queue_usage.set(usage);
        }
        tx.send_replace(Some(QueueReading {
            depth: gauges.map(|g| g.0),
            at: Instant::now(),
        }));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(GAUGE_REFRESH) => {}
        }
    }
}

/// One mission of `GET /internal/missions/{userId}`.
fn mission_json(
    m: MissionOverview,
    armed_at: Option<String>,
    recent: &[&RecentRun],
    blocked: Option<&Value>,
) -> Value {
    json!({
        "missionId": m.mission_id,
        "deleted": m.deleted,
        "state": m.state,
        "nextRunAt": m.next_run_at,
        "agentId": m.agent_id,
        "cadence": m.cadence,
        "iterationCount": m.iteration_count,
        "lastIterationStatus": m.last_iteration_status,
        "changeCount": m.change_count,
        "snapshotUpdatedAt": m.updated_at,
        "armedAt": armed_at,
        "recentRuns": recent,
        "blocked": blocked,
    })
}
