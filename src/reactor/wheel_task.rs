//! The wheel as the reactor runs it: rebuilt from `mission_snapshots` at
//! start (through the handle) and after a crash of its task (before the
//! task serves any queued command).

use std::sync::Arc;

use anyhow::Context;
use deadpool_postgres::Pool;
use futures_util::TryStreamExt;
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use super::ReactorContext;
use crate::metrics::Metrics;
use crate::schedule::clock::Clock;
use crate::schedule::wheel::{
    self, DueMission, MissionKey, TimerWheel, WheelCmd, WheelHandle, WheelUpdate,
};
use crate::store::snapshots::{self, ArmableMission};

/// Arms rebuilt in one command.
const CHUNK: usize = 10_000;

/// The wheel's update for an armable mission as stored.
fn arm(mission: ArmableMission) -> WheelUpdate {
    let key = MissionKey::new(&mission.user_id, &mission.mission_id);
    WheelUpdate::arm(key, mission.next_run_at)
}

/// Arms every armable mission from `mission_snapshots`; returns how many.
pub async fn arm_from_snapshots(pool: &Pool, wheel: &WheelHandle) -> anyhow::Result<usize> {
    let client = pool.get().await.context("connecting to the database")?;
    // Sized once for the count: growing by doublings would leave the wheel
    // up to twice as large as needed, and rehash it on every doubling.
    let count = snapshots::count_armable_missions(&**client)
        .await
        .context("counting armable missions")?;
    wheel.reserve(usize::try_from(count).unwrap_or(0));
    let rows = snapshots::armable_missions(&**client)
        .await
        .context("reading armable missions")?;
    futures_util::pin_mut!(rows);
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut total = 0;
    while let Some(mission) = rows.try_next().await? {
        chunk.push(arm(mission));
        if chunk.len() == CHUNK {
            total += chunk.len();
            wheel
                .apply(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK)))
                .await;
        }
    }
    total += chunk.len();
    wheel.apply(chunk).await;
    Ok(total)
}

/// A wheel rebuilt from `mission_snapshots` (a restarted wheel task's).
async fn wheel_from_snapshots(
    pool: &Pool,
    clock: Arc<dyn Clock>,
    metrics: &Metrics,
) -> anyhow::Result<TimerWheel> {
    let client = pool.get().await.context("connecting to the database")?;
    let count = snapshots::count_armable_missions(&**client)
        .await
        .context("counting armable missions")?;
    let mut timers = TimerWheel::new(clock);
    timers.reserve(usize::try_from(count).unwrap_or(0));
    let rows = snapshots::armable_missions(&**client)
        .await
        .context("reading armable missions")?;
    futures_util::pin_mut!(rows);
    while let Some(mission) = rows.try_next().await? {
        wheel::apply_update(&mut timers, metrics, arm(mission));
    }
    Ok(timers)
}

/// The wheel task as the supervisor starts it: the first time with the
/// (empty) wheel `start` rebuilds through the handle; after a crash with
/// a wheel rebuilt from the snapshots before any queued command is served,
/// so commands sent meanwhile (newer than the rebuild's read, or replays of
/// what it read) apply on top in order.
pub(super) fn wheel_task(
    ctx: &ReactorContext,
    due_tx: mpsc::UnboundedSender<DueMission>,
    rx: mpsc::UnboundedReceiver<WheelCmd>,
    shutdown: CancellationToken,
) -> impl FnMut() -> futures_util::future::BoxFuture<'static, ()> + Send + 'static {
    let rx = Arc::new(Mutex::new(rx));
    let (pool, clock, metrics) = (ctx.pool.clone(), ctx.clock.clone(), ctx.metrics.clone());
    let mut first = Some(TimerWheel::new(clock.clone()));
    move || {
        let (initial, rx, pool, clock) = (first.take(), rx.clone(), pool.clone(), clock.clone());
        let (metrics, due_tx, shutdown) = (metrics.clone(), due_tx.clone(), shutdown.clone());
        Box::pin(async move {
            let mut rx = rx.lock().await;
            let timers = match initial {
                Some(timers) => timers,
                None => match wheel_from_snapshots(&pool, clock, &metrics).await {
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

#[cfg(test)]
mod tests {
    //! A restarted wheel task against a real Postgres.
    use super::*;
    use crate::reactor::Settings;
    use crate::schedule::clock::DbClock;
    use crate::schedule::wheel::parse_next_run;
    use pgtemp::{PgServer, TempDb, SERVICE_ROLE};

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
        let ctx = ReactorContext {
            pool,
            metrics: Metrics::new(),
            clock,
            wheel: handle.clone(),
            settings: Settings {
                apply_batch: 500,
                max_field_bytes: 1 << 20,
                analyze_after_rows: 0,
                sweep_interval: std::time::Duration::from_secs(30),
                generation: Default::default(),
            },
        };
        let mut make = wheel_task(&ctx, due_tx, rx, shutdown.clone());
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
            next_run_at: parse_next_run(&next).unwrap(),
        };
        let sent = tokio::spawn({
            let handle = handle.clone();
            async move { handle.apply(vec![queued]).await }
        });
        let second = tokio::spawn(make());
        sent.await.unwrap();
        let due = parse_next_run(&next);
        assert_eq!(handle.armed_at("u", "m1").await, due, "rebuilt");
        assert_eq!(handle.armed_at("u", "m2").await, due, "queued meanwhile");
        shutdown.cancel();
        second.await.unwrap();
    }
}
