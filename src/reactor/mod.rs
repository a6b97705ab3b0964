//! The reactor: listener -> applier -> snapshots -> timer wheel.
//!
//! [`start`] measures the database clock, rebuilds the snapshots migration
//! 0003 listed (once, see `rebuild.rs`), rebuilds the wheel from
//! `mission_snapshots`, then starts the applier (which drains at once) and
//! the listener (which wakes the applier on every notification and after
//! every successful LISTEN). Due missions go to the channel the caller gives.

pub mod analyze;
pub mod applier;
pub mod decode;
pub mod fold_batch;
pub mod listener;
pub mod rebuild;
pub mod store;
pub mod supervisor;

use std::sync::Arc;

use anyhow::Context;
use deadpool_postgres::Pool;
use futures_util::TryStreamExt;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::schedule::clock::{Clock, DbClock};
use crate::schedule::wheel::{
    self, DueMission, MissionKey, TimerWheel, WheelCmd, WheelHandle, WheelUpdate,
};
use supervisor::{supervise, Backoff, TaskName};

/// A running reactor.
pub struct Reactor {
    pub wheel: WheelHandle,
    /// Queue rows processed so far (applied or set aside).
    pub processed: watch::Receiver<u64>,
    /// True while the listener's LISTEN is registered.
    pub listening: watch::Receiver<bool>,
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
    let row = client.query_one("SELECT clock_timestamp()", &[]).await?;
    Ok(clock.record_sample(sent, row.get(0), chrono::Utc::now()))
}

/// Arms every armable mission from `mission_snapshots`; returns how many.
pub async fn rebuild_wheel(pool: &Pool, wheel: &WheelHandle) -> anyhow::Result<usize> {
    let client = pool.get().await.context("connecting to the database")?;
    // Sized once for the count: growing by doublings would leave the wheel
    // up to twice as large as needed, and rehash it on every doubling.
    let count = store::count_armable_missions(&**client)
        .await
        .context("counting armable missions")?;
    wheel.reserve(usize::try_from(count).unwrap_or(0));
    let rows = store::armable_missions(&**client)
        .await
        .context("reading armable missions")?;
    futures_util::pin_mut!(rows);
    let mut chunk = Vec::with_capacity(10_000);
    let mut total = 0;
    while let Some((user, mission, next)) = rows.try_next().await? {
        chunk.push(WheelUpdate::Arm {
            key: MissionKey::new(&user, &mission),
            next_run_at: next,
        });
        if chunk.len() == chunk.capacity() {
            total += chunk.len();
            wheel
                .apply(std::mem::replace(&mut chunk, Vec::with_capacity(10_000)))
                .await;
        }
    }
    total += chunk.len();
    wheel.apply(chunk).await;
    Ok(total)
}

/// A wheel rebuilt from `mission_snapshots` (a restarted wheel task's).
async fn rebuilt_wheel(
    pool: &Pool,
    clock: Arc<dyn Clock>,
    metrics: &Metrics,
) -> anyhow::Result<TimerWheel> {
    let client = pool.get().await.context("connecting to the database")?;
    let count = store::count_armable_missions(&**client)
        .await
        .context("counting armable missions")?;
    let mut timers = TimerWheel::new(clock);
    timers.reserve(usize::try_from(count).unwrap_or(0));
    let rows = store::armable_missions(&**client)
        .await
        .context("reading armable missions")?;
    futures_util::pin_mut!(rows);
    while let Some((user, mission, next)) = rows.try_next().await? {
        let key = MissionKey::new(&user, &mission);
        let arm = WheelUpdate::Arm {
            key,
            next_run_at: next,
        };
        wheel::apply_update(&mut timers, metrics, arm);
    }
    Ok(timers)
}

/// The wheel task as the supervisor starts it: the first time with the
/// (empty) wheel [`start`] rebuilds through the handle; after a crash with
/// a wheel rebuilt from the snapshots before any queued command is served,
/// so commands sent meanwhile (newer than the rebuild's read, or replays of
/// what it read) apply on top in order.
fn wheel_task(
    pool: Pool,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    due_tx: mpsc::UnboundedSender<DueMission>,
    rx: mpsc::UnboundedReceiver<WheelCmd>,
    shutdown: CancellationToken,
) -> impl FnMut() -> futures_util::future::BoxFuture<'static, ()> + Send + 'static {
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut first = Some(TimerWheel::new(clock.clone()));
    move || {
        let (initial, rx, pool, clock) = (first.take(), rx.clone(), pool.clone(), clock.clone());
        let (metrics, due_tx, shutdown) = (metrics.clone(), due_tx.clone(), shutdown.clone());
        Box::pin(async move {
            let mut rx = rx.lock().await;
            let timers = match initial {
                Some(timers) => timers,
                None => match rebuilt_wheel(&pool, clock, &metrics).await {
                    Ok(timers) => timers,
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "rebuilding the timer wheel failed");
                        return;
                    }
                },
            };
            wheel::run_wheel(timers, &mut rx, &metrics, &due_tx, &shutdown).await;
        })
    }
}

/// Optional observers of the reactor's work (benchmarks, tests).
#[derive(Default)]
pub struct Hooks {
    pub applied: Option<mpsc::UnboundedSender<applier::Applied>>,
    /// Called before every drain (tests make the applier panic with it).
    pub before_drain: Option<Arc<dyn Fn() + Send + Sync>>,
}

fn supervised<F, Fut>(
    name: TaskName,
    make: F,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    supervise(
        name,
        make,
        Backoff::REACTOR,
        metrics.clone(),
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
    let scheduler_clock: Arc<dyn Clock> = clock.clone();
    let (wheel, wheel_rx) = wheel::wheel_channel();
    let make_wheel = wheel_task(
        pool.clone(),
        scheduler_clock.clone(),
        metrics.clone(),
        due_tx,
        wheel_rx,
        shutdown.clone(),
    );
    let wheel_task = supervised(TaskName::Wheel, make_wheel, &metrics, &shutdown);
    let started = std::time::Instant::now();
    let (users, records) = rebuild::rebuild_listed(&pool, config.reactor.max_field_bytes).await?;
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
    let rebuilt = rebuild_wheel(&pool, &wheel).await?;
    tracing::info!(
        missions = rebuilt,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "timer wheel rebuilt"
    );

    let wake = Arc::new(Notify::new());
    let mut applier = applier::Applier::new(
        pool,
        wheel.clone(),
        metrics.clone(),
        scheduler_clock,
        config.reactor.apply_batch,
        config.reactor.max_field_bytes,
    );
    applier.observer = hooks.applied;
    applier.before_drain = hooks.before_drain;
    applier.analyze = analyze::AnalyzeSchedule::new(config.reactor.analyze_after_rows);
    let processed = applier.processed.subscribe();
    let (applier_wake, sweep, stop) = (
        wake.clone(),
        config.reactor.sweep_interval,
        shutdown.clone(),
    );
    let make_applier = move || {
        applier
            .clone()
            .run(applier_wake.clone(), sweep, stop.clone())
    };
    let applier_task = supervised(TaskName::Applier, make_applier, &metrics, &shutdown);
    let (connected, listening) = watch::channel(false);
    let listener = listener::Listener {
        url: config.db.listen_url.clone(),
        root_cert: config.db.root_cert.clone(),
        channel: config.reactor.listen_channel.clone(),
        heartbeat: config.reactor.listen_heartbeat,
        wake,
        metrics: metrics.clone(),
        clock,
        connected,
    };
    let stop = shutdown.clone();
    let make_listener = move || {
        let listener = listener.clone();
        listener.metrics.listener_connected.set(0);
        listener.connected.send_replace(false);
        listener.run(stop.clone())
    };
    let listener_task = supervised(TaskName::Listener, make_listener, &metrics, &shutdown);
    Ok(Reactor {
        wheel,
        processed,
        listening,
        rebuilt,
        shutdown,
        tasks: vec![listener_task, applier_task, wheel_task],
    })
}

#[cfg(test)]
mod tests {
    //! A restarted wheel task against a real Postgres.
    use super::*;
    use crate::pgenv::{PgServer, TempDb, SERVICE_ROLE};

    /// The first wheel task dies (aborted here, as a panic would end it);
    /// the next one is rebuilt from `mission_snapshots` and then serves the
    /// command sent while none ran.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_wheel_is_rebuilt_from_the_snapshots() {
        let server = PgServer::discover().expect("a Postgres for the tests");
        let db = TempDb::create(&server, "mana_ai_t").await.unwrap();
        crate::triggers::install(&db.admin().await.unwrap(), SERVICE_ROLE)
            .await
            .unwrap();
        let pool = crate::db::pool(&db.url_as(SERVICE_ROLE), 2, "mana-ai-test", None).unwrap();
        crate::db::migrate::migrate(&mut pool.get().await.unwrap())
            .await
            .unwrap();
        let next = (chrono::Utc::now() + chrono::Duration::days(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        pool.get()
            .await
            .unwrap()
            .execute(
                "INSERT INTO mana_ai.mission_snapshots
                   (user_id, mission_id, record, fold_state, state, next_run_at, last_applied_at)
                 VALUES ('u', 'm1', '{}', '{}', 'active', $1, now())",
                &[&next],
            )
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let (handle, rx) = wheel::wheel_channel();
        let (due_tx, _due_rx) = mpsc::unbounded_channel();
        let clock: Arc<dyn Clock> = Arc::new(DbClock::new());
        let mut make = wheel_task(pool, clock, Metrics::new(), due_tx, rx, shutdown.clone());
        let first = tokio::spawn(make());
        assert_eq!(
            handle.armed_at("u", "m1").await,
            None,
            "the first starts empty"
        );
        first.abort();
        let _ = first.await;
        let queued = WheelUpdate::Arm {
            key: MissionKey::new("u", "m2"),
            next_run_at: next.clone(),
        };
        let sent = tokio::spawn({
            let handle = handle.clone();
            async move { handle.apply(vec![queued]).await }
        });
        let second = tokio::spawn(make());
        sent.await.unwrap();
        let due = wheel::parse_next_run(&next);
        assert_eq!(handle.armed_at("u", "m1").await, due, "rebuilt");
        assert_eq!(handle.armed_at("u", "m2").await, due, "queued meanwhile");
        shutdown.cancel();
        second.await.unwrap();
    }
}
