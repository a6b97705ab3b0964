//! The Prometheus registry and every metric mana-ai exports.
//!
//! Names and HELP texts live here and nowhere else: the table of
//! `metrics!` below declares each field with its name and help. The
//! contract's names (prefix `mana_ai_`) are what dashboards scrape; the
//! reactor adds its own. Values that are cheaper to read than to track
//! (queue depth, notification queue usage) are refreshed every few seconds
//! by the backend's own task, never per scrape; seconds since the last
//! notification is computed at render time.
//!
//! Label hygiene: every labelled family whose values are known in advance
//! has each series at 0 from the start ([`labels`]), so an `increase()` sees
//! the first event; a value taken from user data (an input's `table`) goes
//! through a method here that maps it to the known set or `other`.

pub mod labels;
pub mod planner;
pub mod research;

use planner::planner_metrics;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use research::research_jobs;

const NAMESPACE: &str = "mana_ai";

/// Declares [`Metrics`] and its registration from one table of
/// `field: Type = constructor(name, help, ...)`; each constructor is called
/// with the registry first.
macro_rules! metrics {
    ($( $(#[$doc:meta])* $field:ident : $ty:ty = $ctor:ident ( $($arg:expr),* $(,)? ) ),* $(,)?) => {
        /// Every metric of the process, registered in one [`Registry`].
        pub struct Metrics {
            pub registry: Registry,
            $( $(#[$doc])* pub $field: $ty, )*
            /// Unix milliseconds of the last notification (0 = none yet); turned
            /// into `seconds_since_notification` at scrape time.
            last_notification_ms: AtomicI64,
            /// The `agent_id` values `tokens_used_total` has a series of.
            agent_labels: labels::Bounded,
        }

        impl Metrics {
            /// Every metric of the table, registered in `registry`.
            fn register(registry: Registry) -> Metrics {
                let r = &registry;
                Metrics {
                    $( $field: $ctor(r, $($arg),*), )*
                    last_notification_ms: AtomicI64::new(0),
                    agent_labels: labels::Bounded::new(labels::MAX_AGENT_SERIES),
                    registry,
                }
            }
        }
    };
}

metrics! {
    // -- reactor: listener and queue --
    notifications_received: IntCounter = counter("notifications_received_total", "NOTIFY messages received on the listen channel"),
    listener_reconnects: IntCounter = counter("listener_reconnects_total", "Times the LISTEN connection was lost or failed and is being re-established"),
    listener_connected: IntGauge = int_gauge("listener_connected", "1 while the LISTEN connection is up and registered"),
    queue_depth: IntGauge = int_gauge("queue_depth", "Rows waiting in mana_ai.change_queue (refreshed every few seconds)"),
    notification_queue_usage: prometheus::Gauge = gauge("notification_queue_usage_ratio", "pg_notification_queue_usage() (refreshed every few seconds): 0..1 of the database's 8 GB NOTIFY queue"),
    seconds_since_notification: prometheus::Gauge = gauge("seconds_since_last_notification", "Seconds since the listener last received a notification (-1 before the first)"),
    sweep_rows_found: IntCounter = counter("sweep_rows_found_total", "Queue rows found by the periodic safety sweep rather than a notification (should stay 0)"),
    sync_log_info: IntGaugeVec = int_gauge_vec("sync_log_info", "1 for the generation of public.sync_changes found at start (v0.6: field_timestamps; current: field_meta)", &["generation"]),
    changes_recovered: IntCounter = counter("changes_recovered_total", "Queue rows the backstop found below the claim's low-water mark and applied (should stay 0: each is a change the claim would have lost)"),
    poison_changes: IntCounterVec = counter_vec("poison_changes_total", "Changes set aside in mana_ai.dead_changes, by reason", &["reason"]),
    apply_errors: IntCounter = counter("apply_errors_total", "Applier transactions that failed and were retried"),
    change_to_snapshot: Histogram = histogram("change_to_snapshot_seconds", "From a change being queued by the trigger (database clock) to its snapshot committed and its timer re-armed"),
    clock_offset_seconds: prometheus::Gauge = gauge("clock_offset_seconds", "Database clock minus local clock, as measured by the listener"),
    // -- reactor: snapshots (contract names) --
    snapshots_new: IntCounter = counter("snapshots_new_total", "Snapshot rows created (missions and agents)"),
    snapshots_updated: IntCounter = counter("snapshots_updated_total", "Snapshot rows updated (missions and agents)"),
    snapshot_rows_applied: IntCounter = counter("snapshot_rows_applied_total", "Change rows folded into snapshots"),
    fold_replays: IntCounter = counter("fold_replays_total", "Records folded anew from their history because a change arrived out of order (a late row)"),
    fold_replays_over_limit: IntCounter = counter("fold_replays_over_limit_total", "Late rows folded in arrival order because their record's history is over the replay limit (10000 rows)"),
    // -- timer wheel --
    armed_missions: IntGauge = int_gauge("armed_missions", "Missions armed in the timer wheel"),
    missions_due: IntCounter = counter("missions_due_total", "Timers fired: missions handed to the runner"),
    wheel_unparseable: IntCounter = counter("wheel_unparseable_next_run_total", "Missions not armed because nextRunAt is not an ISO-8601 time"),
    due_to_start: Histogram = histogram("due_to_start_seconds", "From a mission's nextRunAt to its run starting (timer-triggered runs)"),
    // -- fair queue of due runs --
    run_queue_depth: IntGaugeVec = int_gauge_vec("run_queue_depth", "Due runs waiting in the fair queue for their turn, by tier (on-time, catch-up)", &["tier"]),
    run_queue_wait: Histogram = histogram("run_queue_wait_seconds", "From a run entering the fair queue to its turn (each turn: a run its agent sent back waits again)"),
    missed_slots: IntCounter = counter("missed_slots_total", "Slots skipped because a mission ran once for several missed slots (after downtime, or a run longer than its interval)"),
    // -- mission runs (contract names) --
    ticks: IntCounter = counter("ticks_total", "Runs of every due mission requested through /internal/tick"),
    tick_duration: Histogram = histogram("tick_duration_seconds", "Duration of /internal/tick runs"),
    plans_produced: IntCounter = counter("plans_produced_total", "Planner answers parsed into a plan"),
    plans_written_back: IntCounter = counter("plans_written_back_total", "Iterations written back to sync_changes"),
    parse_failures: IntCounter = counter("parse_failures_total", "Planner answers that failed the strict parser"),
    duplicate_steps: IntCounter = counter("duplicate_steps_dropped_total", "Planned steps dropped because an earlier step of the same plan had the same tool and equal params"),
    mission_errors: IntCounter = counter("mission_errors_total", "Mission runs that failed (LLM, database, panic)"),
    planner_request_duration: Histogram = histogram("planner_request_duration_seconds", "Duration of one LLM call including retries"),
    agent_decisions: IntCounterVec = counter_vec("agent_decisions_total", "Agent gate decisions per run", &["decision"]),
    tokens_used: IntCounterVec = counter_vec("tokens_used_total", "LLM tokens used, by agent", &["agent_id"]),
    runs_in_flight: IntGauge = int_gauge("runs_in_flight", "Mission runs currently executing"),
    run_panics: IntCounter = counter("run_panics_total", "Mission runs that panicked (caught; the reactor went on)"),
    run_outcomes: IntCounterVec = counter_vec("run_outcomes_total", "Finished mission runs by outcome", &["outcome"]),
    runs_abandoned: IntCounter = counter("runs_abandoned_total", "Runs stopped unfinished (shutdown past its grace, or leadership lost); their slots go to the next leader"),
    research_failures: IntCounter = counter("research_failures_total", "Research pre-steps that failed (planning went on without them)"),
    /// `research_jobs_*` (deep research; see `metrics/research.rs`).
    research_jobs: research::ResearchJobMetrics = research_jobs(),
    missions_stalled: IntCounterVec = counter_vec("missions_stalled_total", "Runs that found their mission unable to advance, by reason", &["reason"]),
    // -- LLM gateway and cost bounds --
    llm_concurrency_limit: IntGauge = int_gauge("llm_concurrency_limit", "LLM requests allowed in flight at once (adaptive, 1..MANA_AI_MAX_CONCURRENT_RUNS)"),
    llm_limiter_wait: Histogram = histogram("llm_limiter_wait_seconds", "Time an LLM request waited for room under the adaptive limit (and any Retry-After)"),
    llm_overloads: IntCounter = counter("llm_overloads_total", "LLM gateway answers 429 or 503 (waited out, not failed attempts)"),
    interval_floored: IntCounter = counter("interval_floored_total", "Next runs of interval missions moved up to MANA_AI_MIN_INTERVAL_MINUTES"),
    // -- grants (contract names); `table` is mapped by `labels::table` --
    decrypts: IntCounterVec = counter_vec("decrypts_total", "Records decrypted under a key-grant, by table (unknown tables as other)", &["table"]),
    grant_scope_violations: IntCounterVec = counter_vec("grant_scope_violations_total", "Inputs outside their grant's allowlist, by table (unknown tables as other; alert above 0)", &["table"]),
    grant_skips: IntCounterVec = counter_vec("grant_skips_total", "Grants not used, by reason", &["reason"]),
    decrypt_failures: IntCounterVec = counter_vec("decrypt_failures_total", "Granted inputs that did not decrypt (left out of the prompt), by decrypt_audit reason", &["reason"]),
    audit_write_failures: IntCounter = counter("audit_write_failures_total", "decrypt_audit rows that could not be written"),
    // -- HTTP (contract names; `path` is the route template) --
    http_requests: IntCounterVec = counter_vec("http_requests_total", "HTTP requests by method, route template and status", &["method", "path", "status"]),
    http_request_duration: HistogramVec = histogram_vec("http_request_duration_seconds", "HTTP request duration by method, route template and status", &["method", "path", "status"]),
    http_connections_open: IntGauge = int_gauge("http_connections_open", "HTTP connections open (at most MANA_AI_HTTP_MAX_CONNECTIONS)"),
    http_connections_refused: IntCounter = counter("http_connections_refused_total", "HTTP connections refused with 503 because MANA_AI_HTTP_MAX_CONNECTIONS were open"),
    // -- leadership --
    is_leader: IntGauge = int_gauge("is_leader", "1 while this instance holds the leader lock"),
    leader_lock_lost: IntCounter = counter("leader_lock_lost_total", "Times the leader lock connection was lost and this instance stepped down"),
    // -- retention --
    rows_pruned: IntCounterVec = counter_vec("rows_pruned_total", "Rows deleted by retention (token_usage past the budget window, mission_runs and dead_changes past MANA_AI_RETENTION_DAYS), by table", &["table"]),
    // -- reactor supervision and statistics --
    task_restarts: IntCounterVec = counter_vec("task_restarts_total", "Leader tasks (listener, applier, wheel, retention) restarted after they ended or panicked", &["task"]),
    task_up: IntGaugeVec = int_gauge_vec("task_up", "1 while the supervised task runs on this instance (the leader)", &["task"]),
    snapshot_analyzes: IntCounter = counter("snapshot_analyzes_total", "ANALYZEs of the snapshot tables after the applier wrote many rows"),
    // -- planner: tool calls, rounds, gateway errors (metrics/planner.rs) --
    planner: planner::PlannerMetrics = planner_metrics(),
}

/// Registers `metric` in `registry`; the table above names each once.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

const VALID: &str = "static metric definition is valid";

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(
        registry,
        IntCounter::with_opts(opts(name, help)).expect(VALID),
    )
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(
        registry,
        IntCounterVec::new(opts(name, help), labels).expect(VALID),
    )
}

fn int_gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(
        registry,
        IntGaugeVec::new(opts(name, help), labels).expect(VALID),
    )
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    registered(
        registry,
        IntGauge::with_opts(opts(name, help)).expect(VALID),
    )
}

fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Gauge {
    registered(
        registry,
        prometheus::Gauge::with_opts(opts(name, help)).expect(VALID),
    )
}

fn histogram_opts(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace(NAMESPACE)
        .buckets(latency_buckets())
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    registered(
        registry,
        Histogram::with_opts(histogram_opts(name, help)).expect(VALID),
    )
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    registered(
        registry,
        HistogramVec::new(histogram_opts(name, help), labels).expect(VALID),
    )
}

/// Latency buckets from 0.1 ms to 10 s: the reactor's targets are in
/// milliseconds, the planner's in seconds.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ]
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
        let metrics = Metrics::register(registry);
        metrics.zero_known_series();
        Arc::new(metrics)
    }

    /// Creates every series whose label values are known in advance at 0,
    /// so each family shows on the first scrape.
    fn zero_known_series(&self) {
        let families = [
            (&self.decrypts, labels::tables()),
            (&self.grant_scope_violations, labels::tables()),
            (&self.grant_skips, labels::grant_skips()),
            (
                &self.decrypt_failures,
                crate::crypto::ValueError::AUDIT_REASONS.to_vec(),
            ),
            (&self.agent_decisions, labels::DECISIONS.to_vec()),
            (&self.run_outcomes, labels::OUTCOMES.to_vec()),
            (&self.poison_changes, labels::POISON_REASONS.to_vec()),
            (&self.missions_stalled, labels::STALLS.to_vec()),
            (&self.task_restarts, labels::TASKS.to_vec()),
            (&self.rows_pruned, labels::PRUNED_TABLES.to_vec()),
        ];
        for (family, values) in families {
            for value in values {
                family.with_label_values(&[value]).inc_by(0);
            }
        }
        for task in labels::TASKS {
            self.task_up.with_label_values(&[task]).set(0);
        }
        for tier in labels::TIERS {
            self.run_queue_depth.with_label_values(&[tier]).set(0);
        }
    }

    /// Counts `tokens` used by a run of `agent_id` (a user's id for their
    /// agent: the first [`labels::MAX_AGENT_SERIES`] seen get a series of
    /// their own, every later one counts as `other`, so one user creating
    /// agents cannot grow the scrape without bound).
    pub fn count_tokens(&self, agent_id: &str, tokens: u64) {
        self.tokens_used
            .with_label_values(&[self.agent_labels.label(agent_id)])
            .inc_by(tokens);
    }

    /// Counts a record decrypted from `table` (an input's, i.e. user data:
    /// mapped to the known tables or `other`).
    pub fn count_decrypt(&self, table: &str) {
        self.decrypts
            .with_label_values(&[labels::table(table)])
            .inc();
    }

    /// Counts an input of `table` refused by its grant's allowlist (`table`
    /// mapped as in [`Metrics::count_decrypt`]).
    pub fn count_scope_violation(&self, table: &str) {
        self.grant_scope_violations
            .with_label_values(&[labels::table(table)])
            .inc();
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
    fn tokens_by_agent_keep_a_bounded_number_of_series() {
        let m = Metrics::new();
        for i in 0..labels::MAX_AGENT_SERIES + 50 {
            m.count_tokens(&format!("agent-{i}"), 10);
        }
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("mana_ai_tokens_used_total{"))
            .count();
        assert_eq!(series, labels::MAX_AGENT_SERIES + 1);
        assert!(text.contains("mana_ai_tokens_used_total{agent_id=\"other\"} 500"));
    }

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

    #[test]
    fn every_known_series_is_zero_on_the_first_render() {
        let text = Metrics::new().render();
        let mut expected = Vec::new();
        for table in labels::tables() {
            expected.push(format!("mana_ai_decrypts_total{{table=\"{table}\"}} 0"));
            expected.push(format!(
                "mana_ai_grant_scope_violations_total{{table=\"{table}\"}} 0"
            ));
        }
        for (family, label, values) in [
            ("grant_skips_total", "reason", labels::grant_skips()),
            (
                "agent_decisions_total",
                "decision",
                labels::DECISIONS.to_vec(),
            ),
            ("run_outcomes_total", "outcome", labels::OUTCOMES.to_vec()),
            (
                "poison_changes_total",
                "reason",
                labels::POISON_REASONS.to_vec(),
            ),
            ("missions_stalled_total", "reason", labels::STALLS.to_vec()),
            ("task_restarts_total", "task", labels::TASKS.to_vec()),
            ("task_up", "task", labels::TASKS.to_vec()),
            ("run_queue_depth", "tier", labels::TIERS.to_vec()),
            ("rows_pruned_total", "table", labels::PRUNED_TABLES.to_vec()),
        ] {
            for value in values {
                expected.push(format!("mana_ai_{family}{{{label}=\"{value}\"}} 0"));
            }
        }
        for line in expected {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn user_tables_are_counted_under_the_known_set_or_other() {
        let m = Metrics::new();
        m.count_decrypt("notes");
        m.count_decrypt("made-up-table");
        m.count_scope_violation("also/made-up");
        assert_eq!(m.decrypts.with_label_values(&["notes"]).get(), 1);
        assert_eq!(m.decrypts.with_label_values(&["other"]).get(), 1);
        assert_eq!(
            m.grant_scope_violations.with_label_values(&["other"]).get(),
            1
        );
        let text = m.render();
        assert!(!text.contains("made-up"), "{text}");
    }
}
