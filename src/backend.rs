//! The running service as the HTTP surface sees it ([`crate::http::Backend`]).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use serde_json::{json, Value};

use crate::audit::{self, AuditEntry};
use crate::http::{Backend, Health, ListenerHealth, Role, TickError, TickHealth};
use crate::metrics::Metrics;
use crate::reactor::store;
use crate::run::{claim, Runner, TickStats};
use crate::schedule::wheel::WheelHandle;

/// How long the listener may be down before `/health` says 503.
pub const LISTENER_GRACE: Duration = Duration::from_secs(30);
/// Scrape-time and health queries give up after this.
const QUICK_QUERY: Duration = Duration::from_secs(2);

/// What a leader has running, for the HTTP surface.
#[derive(Clone)]
pub struct Leading {
    pub runner: Option<Arc<Runner>>,
    pub wheel: WheelHandle,
}

/// Shared state of one process.
pub struct ServiceBackend {
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
    pub tick_enabled: bool,
    /// Set while this instance leads.
    pub leading: Mutex<Option<Leading>>,
    /// Unix ms since when the leader's listener has been down (0 = up).
    listener_down_since: AtomicI64,
}

impl ServiceBackend {
    pub fn new(pool: Pool, metrics: Arc<Metrics>, tick_enabled: bool) -> Arc<ServiceBackend> {
        Arc::new(ServiceBackend {
            pool,
            metrics,
            tick_enabled,
            leading: Mutex::new(None),
            listener_down_since: AtomicI64::new(0),
        })
    }

    pub fn set_leading(&self, leading: Option<Leading>) {
        *self.leading.lock().unwrap_or_else(|p| p.into_inner()) = leading;
    }

    fn leading(&self) -> Option<Leading> {
        self.leading
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Queue depth and NOTIFY queue usage, or None if the database is unreachable.
    async fn queue_gauges(&self) -> Option<(i64, f64)> {
        let read = async {
            let client = self.pool.get().await.ok()?;
            store::queue_gauges(&**client).await.ok()
        };
        tokio::time::timeout(QUICK_QUERY, read).await.ok().flatten()
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
        let gauges = self.queue_gauges().await;
        let connected = self.metrics.listener_connected.get() == 1;
        health.queue_depth = gauges.map(|g| g.0);
        health.tick = TickHealth {
            enabled: self.tick_enabled,
            running: leading.as_ref().is_some_and(|l| l.runner.is_some()),
        };
        health.listener = ListenerHealth {
            connected,
            seconds_since_notification: self.metrics.seconds_since_notification(),
        };
        health.armed_missions = self.metrics.armed_missions.get();
        health.runs_in_flight = self.metrics.runs_in_flight.get();
        let listener_failed = leading.is_some() && self.listener_down_too_long(connected);
        if leading.is_some() {
            health.tasks_down = crate::reactor::supervisor::TASKS
                .iter()
                .map(|task| task.as_str())
                .filter(|task| self.metrics.task_up.with_label_values(&[task]).get() == 0)
                .collect();
        }
        health.ok = gauges.is_some() && !listener_failed && health.tasks_down.is_empty();
        health
    }

    async fn metrics_text(&self) -> String {
        if let Some((depth, usage)) = self.queue_gauges().await {
            self.metrics.queue_depth.set(depth);
            self.metrics.notification_queue_usage.set(usage);
        }
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
        let missions = client
            .query(
                "SELECT mission_id, deleted, state, next_run_at, agent_id, record->'cadence',
                        coalesce(jsonb_array_length(CASE WHEN jsonb_typeof(record->'iterations') = 'array'
                                                         THEN record->'iterations' END), 0),
                        CASE WHEN jsonb_typeof(record->'iterations') = 'array'
                             THEN record->'iterations'->-1->>'overallStatus' END,
                        change_count, updated_at
                 FROM mana_ai.mission_snapshots WHERE user_id = $1 ORDER BY mission_id",
                &[&user_id],
            )
            .await?;
        let runs = claim::recent_runs(&**client, user_id, 5).await?;
        let blocked = crate::run::stall::blocked(&**client, user_id).await?;
        let wheel = self.leading().map(|l| l.wheel);
        let mut out = Vec::with_capacity(missions.len());
        for m in &missions {
            let id: String = m.get(0);
            let armed_at = match &wheel {
                Some(w) => w.armed_at(user_id, &id).await.map(|t| t.to_rfc3339()),
                None => None,
            };
            let recent: Vec<Value> = runs
                .iter()
                .filter(|r| r.get::<_, String>(0) == id)
                .map(|r| {
                    json!({
                        "slot": r.get::<_, String>(1), "state": r.get::<_, String>(2),
                        "attempts": r.get::<_, i32>(3), "failures": r.get::<_, i32>(4),
                        "outcome": r.get::<_, Option<String>>(5),
                        "claimedAt": r.get::<_, chrono::DateTime<chrono::Utc>>(6),
                        "finishedAt": r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(7),
                        "retryAt": r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(8),
                    })
                })
                .collect();
            out.push(json!({
                "missionId": id,
                "deleted": m.get::<_, bool>(1),
                "state": m.get::<_, Option<String>>(2),
                "nextRunAt": m.get::<_, Option<String>>(3),
                "agentId": m.get::<_, Option<String>>(4),
                "cadence": m.get::<_, Option<Value>>(5),
                "iterationCount": m.get::<_, i32>(6),
                "lastIterationStatus": m.get::<_, Option<String>>(7),
                "changeCount": m.get::<_, i64>(8),
                "snapshotUpdatedAt": m.get::<_, chrono::DateTime<chrono::Utc>>(9),
                "armedAt": armed_at,
                "recentRuns": recent,
                // Why the mission cannot advance now, if it cannot.
                "blocked": blocked.get(&id),
            }));
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
