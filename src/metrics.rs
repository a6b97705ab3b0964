//! The Prometheus registry and every metric mana-ai exports.
//!
//! Names and HELP texts live here and nowhere else. The contract's names
//! (prefix `mana_ai_`) are what dashboards scrape; the reactor adds its own.
//! Values that are cheaper to read than to track (queue depth, notification
//! queue usage, seconds since the last notification) are set at scrape time
//! by the HTTP layer through [`Metrics::gather_with`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

const NAMESPACE: &str = "mana_ai";

/// Every metric of the process, registered in one [`Registry`].
pub struct Metrics {
    pub registry: Registry,
    // -- reactor: listener and queue --
    pub notifications_received: IntCounter,
    pub listener_reconnects: IntCounter,
    pub listener_connected: IntGauge,
    pub queue_depth: IntGauge,
    pub notification_queue_usage: prometheus::Gauge,
    pub seconds_since_notification: prometheus::Gauge,
    pub sweep_rows_found: IntCounter,
    pub poison_changes: IntCounterVec,
    pub apply_errors: IntCounter,
    pub change_to_snapshot: Histogram,
    pub clock_offset_seconds: prometheus::Gauge,
    // -- reactor: snapshots (contract names) --
    pub snapshots_new: IntCounter,
    pub snapshots_updated: IntCounter,
    pub snapshot_rows_applied: IntCounter,
    // -- timer wheel --
    pub armed_missions: IntGauge,
    pub missions_due: IntCounter,
    pub wheel_unparseable: IntCounter,
    pub due_to_start: Histogram,
    // -- mission runs (contract names) --
    pub ticks: IntCounter,
    pub tick_duration: Histogram,
    pub plans_produced: IntCounter,
    pub plans_written_back: IntCounter,
    pub parse_failures: IntCounter,
    pub mission_errors: IntCounter,
    pub planner_request_duration: Histogram,
    pub agent_decisions: IntCounterVec,
    pub tokens_used: IntCounterVec,
    pub runs_in_flight: IntGauge,
    pub run_panics: IntCounter,
    pub run_outcomes: IntCounterVec,
    pub runs_abandoned: IntCounter,
    pub research_failures: IntCounter,
    pub missions_stalled: IntCounterVec,
    // -- grants (contract names) --
    pub decrypts: IntCounterVec,
    pub grant_scope_violations: IntCounterVec,
    pub grant_skips: IntCounterVec,
    pub audit_write_failures: IntCounter,
    // -- HTTP (contract names; `path` is the route template) --
    pub http_requests: IntCounterVec,
    pub http_request_duration: HistogramVec,
    // -- leadership --
    pub is_leader: IntGauge,
    pub leader_lock_lost: IntCounter,
    // -- retention --
    pub rows_pruned: IntCounterVec,
    // -- reactor supervision and statistics --
    pub task_restarts: IntCounterVec,
    pub task_up: prometheus::IntGaugeVec,
    pub snapshot_analyzes: IntCounter,
    /// Unix milliseconds of the last notification (0 = none yet); turned
    /// into `seconds_since_notification` at scrape time.
    last_notification_ms: AtomicI64,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help).namespace(NAMESPACE))
        .expect("static metric definition is valid");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace(NAMESPACE), labels)
        .expect("static metric definition is valid");
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

fn int_gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::IntGaugeVec {
    let g = prometheus::IntGaugeVec::new(Opts::new(name, help).namespace(NAMESPACE), labels)
        .expect("static metric definition is valid");
    registry
        .register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help).namespace(NAMESPACE))
        .expect("static metric definition is valid");
    registry
        .register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Gauge {
    let g = prometheus::Gauge::with_opts(Opts::new(name, help).namespace(NAMESPACE))
        .expect("static metric definition is valid");
    registry
        .register(Box::new(g.clone()))
        .expect("metric names are unique");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let h = Histogram::with_opts(
        HistogramOpts::new(name, help)
            .namespace(NAMESPACE)
            .buckets(latency_buckets()),
    )
    .expect("static metric definition is valid");
    registry
        .register(Box::new(h.clone()))
        .expect("metric names are unique");
    h
}

/// Latency buckets from 0.1 ms to 10 s: the reactor's targets are in
/// milliseconds, the planner's in seconds.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ]
}

/// `rows_pruned_total{table}`, every table's series present (at 0) from the start.
fn rows_pruned(registry: &Registry) -> IntCounterVec {
    let c = counter_vec(
        registry,
        "rows_pruned_total",
        "Rows deleted by retention (token_usage past the budget window, mission_runs and dead_changes past MANA_AI_RETENTION_DAYS), by table",
        &["table"],
    );
    for table in crate::retention::Pruned::ALL {
        c.with_label_values(&[table.label()]);
    }
    c
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::new(
                    std::process::id() as i32,
                    NAMESPACE,
                ),
            ))
            .expect("process collector registers once");
        let r = &registry;
        let change_to_snapshot = histogram(
            r,
            "change_to_snapshot_seconds",
            "From a change being queued by the trigger (database clock) to its snapshot committed and its timer re-armed",
        );
        let due_to_start = histogram(
            r,
            "due_to_start_seconds",
            "From a mission's nextRunAt to its run starting (timer-triggered runs)",
        );
        let http_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request duration by method, route template and status",
            )
            .namespace(NAMESPACE)
            .buckets(latency_buckets()),
            &["method", "path", "status"],
        )
        .expect("static metric definition is valid");
        r.register(Box::new(http_request_duration.clone()))
            .expect("metric names are unique");
        let metrics = Arc::new(Metrics {
            notifications_received: counter(r, "notifications_received_total", "NOTIFY messages received on the listen channel"),
            listener_reconnects: counter(r, "listener_reconnects_total", "Times the LISTEN connection was lost or failed and is being re-established"),
            listener_connected: int_gauge(r, "listener_connected", "1 while the LISTEN connection is up and registered"),
            queue_depth: int_gauge(r, "queue_depth", "Rows waiting in mana_ai.change_queue (read at scrape time)"),
            notification_queue_usage: gauge(r, "notification_queue_usage_ratio", "pg_notification_queue_usage() at scrape time: 0..1 of the database's 8 GB NOTIFY queue"),
            seconds_since_notification: gauge(r, "seconds_since_last_notification", "Seconds since the listener last received a notification (-1 before the first)"),
            sweep_rows_found: counter(r, "sweep_rows_found_total", "Queue rows found by the periodic safety sweep rather than a notification (should stay 0)"),
            poison_changes: counter_vec(r, "poison_changes_total", "Changes set aside in mana_ai.dead_changes, by reason", &["reason"]),
            apply_errors: counter(r, "apply_errors_total", "Applier transactions that failed and were retried"),
            change_to_snapshot,
            clock_offset_seconds: gauge(r, "clock_offset_seconds", "Database clock minus local clock, as measured by the listener"),
            snapshots_new: counter(r, "snapshots_new_total", "Snapshot rows created (missions and agents)"),
            snapshots_updated: counter(r, "snapshots_updated_total", "Snapshot rows updated (missions and agents)"),
            snapshot_rows_applied: counter(r, "snapshot_rows_applied_total", "Change rows folded into snapshots"),
            armed_missions: int_gauge(r, "armed_missions", "Missions armed in the timer wheel"),
            missions_due: counter(r, "missions_due_total", "Timers fired: missions handed to the runner"),
            wheel_unparseable: counter(r, "wheel_unparseable_next_run_total", "Missions not armed because nextRunAt is not an ISO-8601 time"),
            due_to_start,
            ticks: counter(r, "ticks_total", "Runs of every due mission requested through /internal/tick"),
            tick_duration: histogram(r, "tick_duration_seconds", "Duration of /internal/tick runs"),
            plans_produced: counter(r, "plans_produced_total", "Planner answers parsed into a plan"),
            plans_written_back: counter(r, "plans_written_back_total", "Iterations written back to sync_changes"),
            parse_failures: counter(r, "parse_failures_total", "Planner answers that failed the strict parser"),
            mission_errors: counter(r, "mission_errors_total", "Mission runs that failed (LLM, database, panic)"),
            planner_request_duration: histogram(r, "planner_request_duration_seconds", "Duration of one LLM call including retries"),
            agent_decisions: counter_vec(r, "agent_decisions_total", "Agent gate decisions per run", &["decision"]),
            tokens_used: counter_vec(r, "tokens_used_total", "LLM tokens used, by agent", &["agent_id"]),
            runs_in_flight: int_gauge(r, "runs_in_flight", "Mission runs currently executing"),
            run_panics: counter(r, "run_panics_total", "Mission runs that panicked (caught; the reactor went on)"),
            run_outcomes: counter_vec(r, "run_outcomes_total", "Finished mission runs by outcome", &["outcome"]),
            runs_abandoned: counter(r, "runs_abandoned_total", "Runs stopped unfinished (shutdown past its grace, or leadership lost); their slots go to the next leader"),
            research_failures: counter(r, "research_failures_total", "Research pre-steps that failed (planning went on without them)"),
            missions_stalled: counter_vec(r, "missions_stalled_total", "Runs that found their mission unable to advance, by reason", &["reason"]),
            decrypts: counter_vec(r, "decrypts_total", "Records decrypted under a key-grant, by table", &["table"]),
            grant_scope_violations: counter_vec(r, "grant_scope_violations_total", "Inputs outside their grant's allowlist (alert above 0)", &["table"]),
            grant_skips: counter_vec(r, "grant_skips_total", "Grants not used, by reason", &["reason"]),
            audit_write_failures: counter(r, "audit_write_failures_total", "decrypt_audit rows that could not be written"),
            http_requests: counter_vec(r, "http_requests_total", "HTTP requests by method, route template and status", &["method", "path", "status"]),
            http_request_duration,
            is_leader: int_gauge(r, "is_leader", "1 while this instance holds the leader lock"),
            leader_lock_lost: counter(r, "leader_lock_lost_total", "Times the leader lock connection was lost and this instance stepped down"),
            rows_pruned: rows_pruned(r),
            task_restarts: counter_vec(r, "task_restarts_total", "Reactor tasks (listener, applier, wheel) restarted after they ended or panicked", &["task"]),
            task_up: int_gauge_vec(r, "task_up", "1 while the reactor task runs on this instance (the leader)", &["task"]),
            snapshot_analyzes: counter(r, "snapshot_analyzes_total", "ANALYZEs of the snapshot tables after the applier wrote many rows"),
            last_notification_ms: AtomicI64::new(0),
            registry,
        });
        for task in crate::reactor::supervisor::TASKS {
            metrics
                .task_restarts
                .with_label_values(&[task.as_str()])
                .inc_by(0);
            metrics.task_up.with_label_values(&[task.as_str()]).set(0);
        }
        metrics
    }

    /// Records that a notification arrived now.
    pub fn note_notification(&self) {
        self.notifications_received.inc();
        self.last_notification_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Seconds since the last notification, or `None` before the first.
    pub fn seconds_since_notification(&self) -> Option<f64> {
        match self.last_notification_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some((chrono::Utc::now().timestamp_millis() - ms).max(0) as f64 / 1000.0),
        }
    }

    /// Prometheus text format (0.0.4) of every metric.
    pub fn render(&self) -> String {
        self.seconds_since_notification
            .set(self.seconds_since_notification().unwrap_or(-1.0));
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text encoder writes UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_reactor_metrics_with_prefix() {
        let m = Metrics::new();
        m.poison_changes
            .with_label_values(&["data-not-object"])
            .inc();
        m.note_notification();
        let text = m.render();
        for name in [
            "mana_ai_notifications_received_total 1",
            "mana_ai_poison_changes_total{reason=\"data-not-object\"} 1",
            "mana_ai_snapshot_rows_applied_total 0",
            "mana_ai_armed_missions 0",
            "# TYPE mana_ai_change_to_snapshot_seconds histogram",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
