//! The reactor: listener -> applier -> snapshots -> timer wheel.
//!
//! [`start`] measures the database clock, rebuilds the snapshots migrations
//! 0003 and 0008 listed (once, see `rebuild.rs`), rebuilds the wheel from
//! `mission_snapshots`, then starts the applier (which drains at once) and
//! the listener (which wakes the applier on every notification and after
//! every successful LISTEN). Due missions go to the channel the caller gives.
//! What the tasks share is one [`ReactorContext`], built once by `start`.

pub mod analyze;
pub mod applier;
mod backstop;
mod batch;
mod batch_tx;
mod claim;
pub mod fold_batch;
pub mod listener;
pub mod low_water;
pub mod outcome;
mod read;
pub mod rebuild;
mod replay;
pub use replay::MAX_REPLAY_ROWS;
mod set_aside;
pub mod supervisor;
mod wheel_task;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::Pool;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::schedule::clock::{Clock, DbClock};
use crate::schedule::wheel::{self, DueMission, WheelHandle};
use supervisor::{supervise, Restart, Supervision, TaskName, TaskStates};
pub use wheel_task::arm_from_snapshots;

/// Folds one record of `user_id` from its change rows (full replay,
/// contract section 2), inside that user's scope in `client`'s transaction;
/// None when the record has no rows. For tests and tools; the service reads
/// through `crate::store::history`.
pub async fn fold_record(
    client: &impl tokio_postgres::GenericClient,
    generation: crate::sync::generation::Generation,
    user_id: &str,
    app_id: &str,
    table_name: &str,
    record_id: &str,
) -> Result<Option<crate::sync::fold::Folded>, tokio_postgres::Error> {
    let record = crate::store::history::RecordRef {
        generation,
        user_id,
        app_id,
        table_name,
        record_id,
    };
    match crate::store::history::fold_record(client, &record, i64::MAX - 1).await? {
        crate::store::history::Replayed::Folded(folded) => Ok(Some(folded)),
        _ => Ok(None),
    }
}

/// The reactor's settings (read from [`Config`] once).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Queue rows claimed per batch.
    pub apply_batch: i64,
    /// Largest field a change may carry.
    pub max_field_bytes: usize,
    /// Changes applied before the snapshot tables are analyzed (0: never).
    pub analyze_after_rows: u64,
    /// How often the applier drains without a notification.
    pub sweep_interval: Duration,
    /// The generation of `sync_changes` (which column holds the stamps).
    pub generation: crate::sync::generation::Generation,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Settings {
            apply_batch: config.reactor.apply_batch,
            max_field_bytes: config.reactor.max_field_bytes,
            analyze_after_rows: config.reactor.analyze_after_rows,
            sweep_interval: config.reactor.sweep_interval,
            generation: config.generation,
        }
    }
}

/// What the reactor's tasks share: built once by [`start`].
#[derive(Clone)]
pub struct ReactorContext {
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
    /// The scheduler's clock (the database's, measured).
    pub clock: Arc<dyn Clock>,
    pub wheel: WheelHandle,
    pub settings: Settings,
}

/// A running reactor.
pub struct Reactor {
    pub wheel: WheelHandle,
    /// Queue rows processed so far (applied or set aside).
    pub processed: watch::Receiver<u64>,
    /// True while the listener's LISTEN is registered.
    pub listening: watch::Receiver<bool>,
    /// Which of its supervised tasks are up.
    pub task_states: TaskStates,
    supervision: Supervision,
    /// Missions armed by the start-up rebuild.
    pub rebuilt: usize,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Reactor {
    /// Stops every task and waits for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
    }

    /// Supervises one more of the leader's tasks beside the reactor's own
    /// (retention): restarted when it ends or panics, shown in
    /// `task_states`, stopped with the reactor.
    pub fn supervise<F, Fut>(&mut self, name: TaskName, make: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let task = supervised(name, make, &self.supervision, &self.shutdown);
        self.tasks.push(task);
    }

    /// Supervises a leader's task that stops on its own `shutdown`, not with
    /// the reactor (the runner's loop, whose runs wind down while the
    /// reactor still runs); shown in `task_states`. The caller awaits it.
    pub fn supervise_apart<F, Fut>(
        &self,
        name: TaskName,
        make: F,
        shutdown: &CancellationToken,
    ) -> JoinHandle<()>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        supervised(name, make, &self.supervision, shutdown)
    }

    /// Waits until the listener is registered.
    pub async fn wait_listening(&mut self) {
        let _ = self.listening.wait_for(|up| *up).await;
    }

    /// Waits until at least `n` queue rows have been processed.
    pub async fn wait_processed(&mut self, n: u64) {
        let _ = self.processed.wait_for(|done| *done >= n).await;
    }
}

/// Measures the database clock against the local one through the pool.
pub async fn measure_clock(pool: &Pool, clock: &DbClock) -> anyhow::Result<chrono::Duration> {
    let client = pool.get().await.context("connecting to the database")?;
    let sent = chrono::Utc::now();
    let db_now = crate::store::maintenance::clock_timestamp(&**client).await?;
    Ok(clock.record_sample(sent, db_now, chrono::Utc::now()))
}

/// A failpoint awaited by the applier right after each claim statement.
#[cfg(feature = "test-hooks")]
pub type AfterClaim = Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// Optional observers of the reactor's work (benchmarks, tests).
#[derive(Default)]
pub struct Hooks {
    pub applied: Option<mpsc::UnboundedSender<applier::Applied>>,
    /// Called before every drain (tests make the applier panic with it).
    pub before_drain: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Awaited after each claim, before the batch goes on (tests commit a
    /// transaction there). Only in builds with the `test-hooks` feature.
    #[cfg(feature = "test-hooks")]
    pub after_claim: Option<AfterClaim>,
}

fn supervised<F, Fut>(
    name: TaskName,
    make: F,
    supervision: &Supervision,
    shutdown: &CancellationToken,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    supervise(
        name,
        make,
        Restart::TASK,
        supervision.clone(),
        shutdown.clone(),
    )
}

/// Starts the reactor; it runs until `shutdown` is cancelled. The
/// listener, the applier and the wheel run supervised: restarted after a
/// back-off whenever one ends or panics (see [`supervisor`]).
pub async fn start(
    config: &Config,
    pool: Pool,
    metrics: Arc<Metrics>,
    clock: Arc<DbClock>,
    due_tx: mpsc::UnboundedSender<DueMission>,
    shutdown: CancellationToken,
    hooks: Hooks,
) -> anyhow::Result<Reactor> {
    let offset = measure_clock(&pool, &clock).await?;
    metrics
        .clock_offset_seconds
        .set(offset.num_microseconds().unwrap_or(0) as f64 / 1e6);
    let (wheel, wheel_rx) = wheel::wheel_channel();
    let ctx = ReactorContext {
        pool,
        metrics,
        clock: clock.clone(),
        wheel,
        settings: Settings::from_config(config),
    };
    let supervision = Supervision {
        states: TaskStates::default(),
        metrics: ctx.metrics.clone(),
    };
    let make_wheel = wheel_task::wheel_task(&ctx, due_tx, wheel_rx, shutdown.clone());
    let wheel_task = supervised(TaskName::Wheel, make_wheel, &supervision, &shutdown);
    let rebuilt = rebuild(&ctx).await?;
    let wake = Arc::new(Notify::new());
    let (applier_task, processed) =
        spawn_applier(&ctx, wake.clone(), hooks, &supervision, &shutdown);
    let listener = listener::Listener::new(config, wake, ctx.metrics.clone(), clock);
    let (listener_task, listening) = spawn_listener(listener, &supervision, &shutdown);
    Ok(Reactor {
        wheel: ctx.wheel,
        processed,
        listening,
        task_states: supervision.states.clone(),
        supervision,
        rebuilt,
        shutdown,
        tasks: vec![listener_task, applier_task, wheel_task],
    })
}

/// Rebuilds the snapshots migration 0003 listed, then the wheel; returns
/// the missions armed.
async fn rebuild(ctx: &ReactorContext) -> anyhow::Result<usize> {
    let started = std::time::Instant::now();
    let (users, records) = rebuild::rebuild_listed(&ctx.pool, &ctx.settings).await?;
    if users > 0 {
        let elapsed_ms = started.elapsed().as_millis() as u64;
        tracing::info!(
            users,
            records,
            elapsed_ms,
            "snapshots rebuilt by the new fold"
        );
    }
    let started = std::time::Instant::now();
    let rebuilt = arm_from_snapshots(&ctx.pool, &ctx.wheel).await?;
    tracing::info!(
        missions = rebuilt,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "timer wheel rebuilt"
    );
    Ok(rebuilt)
}

/// The applier, supervised; with its count of processed rows.
fn spawn_applier(
    ctx: &ReactorContext,
    wake: Arc<Notify>,
    hooks: Hooks,
    supervision: &Supervision,
    shutdown: &CancellationToken,
) -> (JoinHandle<()>, watch::Receiver<u64>) {
    let mut applier = applier::Applier::new(ctx.clone());
    applier.observer = hooks.applied;
    applier.before_drain = hooks.before_drain;
    #[cfg(feature = "test-hooks")]
    {
        applier.after_claim = hooks.after_claim;
    }
    let processed = applier.processed.subscribe();
    let stop = shutdown.clone();
    let make = move || applier.clone().run(wake.clone(), stop.clone());
    let task = supervised(TaskName::Applier, make, supervision, shutdown);
    (task, processed)
}

/// The listener, supervised; with whether it is registered.
fn spawn_listener(
    mut listener: listener::Listener,
    supervision: &Supervision,
    shutdown: &CancellationToken,
) -> (JoinHandle<()>, watch::Receiver<bool>) {
    let (connected, listening) = watch::channel(false);
    listener.connected = connected;
    let stop = shutdown.clone();
    let make = move || {
        let listener = listener.clone();
        listener.metrics.listener_connected.set(0);
        listener.connected.send_replace(false);
        listener.run(stop.clone())
    };
    (
        supervised(TaskName::Listener, make, supervision, shutdown),
        listening,
    )
}
