//! Supervision of every long-running task: a leader's (the reactor's
//! listener, applier and wheel, retention and the runner's loop) and the
//! process's own (the HTTP server and the queue gauges' refresher). A task
//! that ends or panics before shutdown is started again after a back-off
//! (doubling from `first` to `max`, back to `first` once a run lasted
//! `healthy_after`), counted in `mana_ai_task_restarts_total{task}`, and it
//! is down in [`TaskStates`] (which `/health` reads: 503, naming it) and in
//! `mana_ai_task_up{task}` while it is down.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// The supervised tasks; `as_str` is the metric label and the name
/// `/health` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskName {
    Listener,
    Applier,
    Wheel,
    Retention,
    /// The runner's loop over due missions (a leader with `TICK_ENABLED`).
    Runner,
    /// The HTTP server (every process, leading or not).
    Http,
    /// The refresher of the queue gauges `/health` reads (every process).
    QueueGauges,
}

pub const TASKS: [TaskName; 7] = [
    TaskName::Listener,
    TaskName::Applier,
    TaskName::Wheel,
    TaskName::Retention,
    TaskName::Runner,
    TaskName::Http,
    TaskName::QueueGauges,
];

/// A leader's tasks, one set per term; the others are the process's.
pub const TERM_TASKS: [TaskName; 5] = [
    TaskName::Listener,
    TaskName::Applier,
    TaskName::Wheel,
    TaskName::Retention,
    TaskName::Runner,
];

impl TaskName {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskName::Listener => "listener",
            TaskName::Applier => "applier",
            TaskName::Wheel => "wheel",
            TaskName::Retention => "retention",
            TaskName::Runner => "runner",
            TaskName::Http => "http",
            TaskName::QueueGauges => "queue-gauges",
        }
    }

    fn index(self) -> usize {
        match self {
            TaskName::Listener => 0,
            TaskName::Applier => 1,
            TaskName::Wheel => 2,
            TaskName::Retention => 3,
            TaskName::Runner => 4,
            TaskName::Http => 5,
            TaskName::QueueGauges => 6,
        }
    }
}

/// Which supervised tasks of one term are up: the state `/health` reads.
/// [`supervise`] is its only writer and sets the `task_up` gauge with it,
/// so the two never disagree. A task never supervised is neither up nor
/// down (a reactor started without retention, in tests).
#[derive(Clone, Debug, Default)]
pub struct TaskStates(Arc<[AtomicU8; TASKS.len()]>);

// 0 (the default): not supervised.
const UP: u8 = 1;
const DOWN: u8 = 2;

impl TaskStates {
    fn set(&self, task: TaskName, up: bool) {
        let state = if up { UP } else { DOWN };
        self.0[task.index()].store(state, Ordering::Relaxed);
    }

    pub fn is_up(&self, task: TaskName) -> bool {
        self.0[task.index()].load(Ordering::Relaxed) == UP
    }

    /// The names of the supervised tasks that are down, in [`TASKS`] order.
    pub fn down(&self) -> Vec<&'static str> {
        TASKS
            .iter()
            .filter(|task| self.0[task.index()].load(Ordering::Relaxed) == DOWN)
            .map(|task| task.as_str())
            .collect()
    }

    /// Marks every task of a term down (for `/health`'s own test).
    pub fn all_down() -> TaskStates {
        let states = TaskStates::default();
        for task in TERM_TASKS {
            states.set(task, false);
        }
        states
    }
}

/// A caught panic's message (empty when it was not a string), cut to 200
/// bytes.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or_default();
    crate::sync::change::clip_bytes(message, 200).to_string()
}

/// How long to wait before a restart.
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    pub backoff: Backoff,
    /// A run that lasted this long resets the wait to the first.
    pub healthy_after: Duration,
}

impl Restart {
    /// Every supervised task's: 0.5 s doubling to 30 s, reset after a minute up.
    pub const TASK: Restart = Restart {
        backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
        healthy_after: Duration::from_secs(60),
    };
}

/// Where a supervised task's state goes: the reactor's [`TaskStates`] and
/// the metrics.
#[derive(Clone)]
pub struct Supervision {
    pub states: TaskStates,
    pub metrics: Arc<Metrics>,
}

/// Runs `make()` as a task until `shutdown`, starting it again whenever it
/// ends or panics before then. The task is up from this call on (so a
/// health check right after start sees it up) and down while it is down or
/// after shutdown. The returned handle ends after the task has ended
/// following `shutdown`.
pub fn supervise<F, Fut>(
    name: TaskName,
    mut make: F,
    restart: Restart,
    supervision: Supervision,
    shutdown: CancellationToken,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let gauge = supervision
        .metrics
        .task_up
        .with_label_values(&[name.as_str()]);
    let restarts = supervision
        .metrics
        .task_restarts
        .with_label_values(&[name.as_str()]);
    let states = supervision.states;
    let mark = move |up: bool| {
        states.set(name, up);
        gauge.set(i64::from(up));
    };
    mark(true);
    tokio::spawn(async move {
        let mut restarts_in_a_row = restart.backoff.attempts();
        loop {
            let started = tokio::time::Instant::now();
            let ended = tokio::spawn(make()).await;
            mark(false);
            if shutdown.is_cancelled() {
                return;
            }
            if started.elapsed() >= restart.healthy_after {
                restarts_in_a_row.succeeded();
            }
            let wait = restarts_in_a_row.failed();
            match ended {
                Err(e) if e.is_panic() => {
                    let message = panic_message(&*e.into_panic());
                    tracing::error!(task = name.as_str(), panic = %message, retry_in_ms = wait.as_millis() as u64, "supervised task panicked; restarting");
                }
                _ => {
                    tracing::error!(
                        task = name.as_str(),
                        retry_in_ms = wait.as_millis() as u64,
                        "supervised task ended unexpectedly; restarting"
                    )
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            restarts.inc();
            mark(true);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    const FAST: Restart = Restart {
        backoff: Backoff::new(Duration::from_millis(10), Duration::from_millis(40)),
        healthy_after: Duration::from_secs(60),
    };

    fn up(metrics: &Metrics, task: TaskName) -> i64 {
        metrics.task_up.with_label_values(&[task.as_str()]).get()
    }

    fn supervision(metrics: &Arc<Metrics>) -> Supervision {
        Supervision {
            states: TaskStates::default(),
            metrics: metrics.clone(),
        }
    }

    fn restarts(metrics: &Metrics, task: TaskName) -> u64 {
        metrics
            .task_restarts
            .with_label_values(&[task.as_str()])
            .get()
    }

    /// Panics twice, then ends once, then runs until shutdown.
    #[tokio::test]
    async fn a_task_that_panics_or_ends_is_restarted_and_counted() {
        let metrics = Metrics::new();
        assert!(metrics
            .render()
            .contains("mana_ai_task_restarts_total{task=\"applier\"} 0"));
        let shutdown = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let (counted, stop) = (starts.clone(), shutdown.clone());
        let supervision = supervision(&metrics);
        let states = supervision.states.clone();
        let handle = supervise(
            TaskName::Applier,
            move || {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                let stop = stop.clone();
                async move {
                    match n {
                        0 | 1 => panic!("injected failure {n}"),
                        2 => {}
                        _ => stop.cancelled().await,
                    }
                }
            },
            FAST,
            supervision,
            shutdown.clone(),
        );
        assert_eq!(up(&metrics, TaskName::Applier), 1);
        assert!(states.is_up(TaskName::Applier));
        assert!(states.down().is_empty(), "never started is not down");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while starts.load(Ordering::SeqCst) < 4 {
            assert!(tokio::time::Instant::now() < deadline, "not restarted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(restarts(&metrics, TaskName::Applier), 3);
        assert_eq!(up(&metrics, TaskName::Applier), 1);
        assert_eq!(restarts(&metrics, TaskName::Wheel), 0);
        shutdown.cancel();
        handle.await.unwrap();
        assert_eq!(up(&metrics, TaskName::Applier), 0);
        assert!(!states.is_up(TaskName::Applier));
        assert_eq!(states.down(), ["applier"]);
        assert_eq!(
            starts.load(Ordering::SeqCst),
            4,
            "no restart after shutdown"
        );
    }

    /// While the task waits for its restart it is down.
    #[tokio::test(start_paused = true)]
    async fn a_task_is_down_during_its_back_off() {
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let slow = Restart {
            backoff: Backoff::new(Duration::from_secs(10), Duration::from_secs(60)),
            ..FAST
        };
        let supervision = supervision(&metrics);
        let states = supervision.states.clone();
        let handle = supervise(
            TaskName::Wheel,
            || async { panic!("always") },
            slow,
            supervision,
            shutdown.clone(),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(up(&metrics, TaskName::Wheel), 0);
        assert_eq!(states.down(), ["wheel"]);
        assert_eq!(restarts(&metrics, TaskName::Wheel), 0);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(restarts(&metrics, TaskName::Wheel), 1);
        // The second wait is twice as long.
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(restarts(&metrics, TaskName::Wheel), 1);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(restarts(&metrics, TaskName::Wheel), 2);
        shutdown.cancel();
        handle.await.unwrap();
    }
}
