//! The timer wheel: every armed mission fires once at its `nextRunAt`.
//!
//! [`TimerWheel`] is the core (tokio-util's `DelayQueue` plus an index by
//! mission, in `timers.rs`); it is driven by tokio time, so tests pause time
//! and advance it. [`spawn_wheel`] runs it as a task that takes
//! [`WheelCmd`]s from the applier and hands each due mission to the
//! runner's channel.
//!
//! Rules:
//! - one timer per mission; arming again re-keys it;
//! - a `nextRunAt` in the past fires at once; one beyond [`HORIZON`] is held
//!   at the horizon and re-armed from there (DelayQueue holds ~2 years);
//! - the wheel takes times, not text: `nextRunAt` is parsed once
//!   ([`parse_next_run`]) where it is read; one that does not parse arrives
//!   as [`WheelUpdate::Unparseable`], disarms the mission, is counted and
//!   logged;
//! - a fired mission leaves the wheel: the runner's write-back (a new
//!   `nextRunAt`) comes round through the change queue and arms it again.

mod timers;

use std::fmt;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
pub use timers::{ArmOutcome, TimerWheel, HORIZON};

use super::clock::Clock;

/// Identifies a mission: (user id, mission id). Only commands carry keys;
/// the wheel keeps each armed mission's ids in its arena (user ids
/// interned), so a key costs nothing per armed mission.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MissionKey {
    user_id: Box<str>,
    mission_id: Box<str>,
}

impl MissionKey {
    pub fn new(user_id: &str, mission_id: &str) -> Self {
        MissionKey {
            user_id: user_id.into(),
            mission_id: mission_id.into(),
        }
    }

    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    pub fn mission_id(&self) -> &str {
        &self.mission_id
    }
}

impl fmt::Debug for MissionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.user_id(), self.mission_id())
    }
}

/// A mission whose time has come, handed to the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueMission {
    pub user_id: String,
    pub mission_id: String,
    /// The `nextRunAt` the timer was armed for.
    pub due_at: DateTime<Utc>,
    /// When the wheel handed it over (scheduler clock).
    pub fired_at: DateTime<Utc>,
}

/// Where `nextRunAt` is parsed (re-exported for the wheel's callers).
pub use crate::sync::row::parse_next_run;

/// One change to the wheel. `nextRunAt` arrives parsed: it is parsed once,
/// where it is read (the fold, a snapshot row), never by the wheel.
#[derive(Debug, Clone)]
pub enum WheelUpdate {
    Arm {
        key: MissionKey,
        next_run_at: DateTime<Utc>,
    },
    /// An armable mission whose `nextRunAt` is not an ISO-8601 time: it is
    /// disarmed, counted (`wheel_unparseable`) and logged.
    Unparseable(MissionKey),
    Disarm(MissionKey),
}

impl WheelUpdate {
    /// Arms `key` at a parsed `nextRunAt` (None: it did not parse).
    pub fn arm(key: MissionKey, next_run_at: Option<DateTime<Utc>>) -> WheelUpdate {
        match next_run_at {
            Some(next_run_at) => WheelUpdate::Arm { key, next_run_at },
            None => WheelUpdate::Unparseable(key),
        }
    }
}

/// Commands to the wheel task.
pub enum WheelCmd {
    /// Apply updates in order; the sender (if any) learns when they are in.
    Apply(Vec<WheelUpdate>, Option<oneshot::Sender<()>>),
    /// When is this mission armed to fire?
    Query(MissionKey, oneshot::Sender<Option<DateTime<Utc>>>),
    /// Make room for this many more missions (see [`TimerWheel::reserve`]).
    Reserve(usize),
}

/// A cheap, cloneable handle to the wheel task.
#[derive(Clone)]
pub struct WheelHandle {
    tx: mpsc::UnboundedSender<WheelCmd>,
}

impl WheelHandle {
    /// Applies updates and waits until the wheel has them.
    pub async fn apply(&self, updates: Vec<WheelUpdate>) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(WheelCmd::Apply(updates, Some(ack))).is_ok() {
            let _ = done.await;
        }
    }

    /// Makes room for `additional` more missions before a rebuild arms them.
    pub fn reserve(&self, additional: usize) {
        let _ = self.tx.send(WheelCmd::Reserve(additional));
    }

    /// When `key` is armed to fire (None if not armed or the wheel stopped).
    pub async fn armed_at(&self, user_id: &str, mission_id: &str) -> Option<DateTime<Utc>> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(WheelCmd::Query(MissionKey::new(user_id, mission_id), tx))
            .ok()?;
        rx.await.ok().flatten()
    }
}

/// Runs the wheel as a task until `shutdown`; due missions go to `due_tx`.
pub fn spawn_wheel(
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    due_tx: mpsc::UnboundedSender<DueMission>,
    shutdown: CancellationToken,
) -> (WheelHandle, tokio::task::JoinHandle<()>) {
    let (handle, mut rx) = wheel_channel();
    let task = tokio::spawn(async move {
        run_wheel(
            TimerWheel::new(clock),
            &mut rx,
            &metrics,
            &due_tx,
            &shutdown,
        )
        .await;
    });
    (handle, task)
}

/// A handle and the command stream [`run_wheel`] reads.
pub fn wheel_channel() -> (WheelHandle, mpsc::UnboundedReceiver<WheelCmd>) {
    let (tx, rx) = mpsc::unbounded_channel::<WheelCmd>();
    (WheelHandle { tx }, rx)
}

/// The wheel task: serves `rx` and fires due missions into `due_tx` until
/// `shutdown` or until every handle is gone. A supervisor that restarts it
/// passes the same `rx` (commands sent meanwhile wait there) and a wheel
/// rebuilt from the snapshots.
pub async fn run_wheel(
    mut wheel: TimerWheel,
    rx: &mut mpsc::UnboundedReceiver<WheelCmd>,
    metrics: &Metrics,
    due_tx: &mpsc::UnboundedSender<DueMission>,
    shutdown: &CancellationToken,
) {
    enum Event {
        Due(DueMission),
        Cmd(Option<WheelCmd>),
    }
    metrics.armed_missions.set(wheel.len() as i64);
    loop {
        // Due missions first: they are the time-critical path.
        let next = poll_fn(|cx| {
            if let Poll::Ready(Some(due)) = wheel.poll_due(cx) {
                return Poll::Ready(Event::Due(due));
            }
            rx.poll_recv(cx).map(Event::Cmd)
        });
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            event = next => event,
        };
        match event {
            Event::Due(due) => {
                metrics.missions_due.inc();
                tracing::debug!(user_id = %due.user_id, mission_id = %due.mission_id, due_at = %due.due_at, "mission due");
                let _ = due_tx.send(due);
            }
            Event::Cmd(None) => break,
            Event::Cmd(Some(WheelCmd::Apply(updates, ack))) => {
                for update in updates {
                    apply_update(&mut wheel, metrics, update);
                }
                if let Some(ack) = ack {
                    let _ = ack.send(());
                }
            }
            Event::Cmd(Some(WheelCmd::Query(key, reply))) => {
                let _ = reply.send(wheel.armed_at(&key));
            }
            Event::Cmd(Some(WheelCmd::Reserve(additional))) => wheel.reserve(additional),
        }
        metrics.armed_missions.set(wheel.len() as i64);
    }
}

/// Applies one update, counting a nextRunAt that did not parse.
pub fn apply_update(wheel: &mut TimerWheel, metrics: &Metrics, update: WheelUpdate) {
    match update {
        WheelUpdate::Arm { key, next_run_at } => {
            wheel.arm(key, next_run_at);
        }
        WheelUpdate::Unparseable(key) => {
            wheel.arm_parsed(key.clone(), None);
            metrics.wheel_unparseable.inc();
            tracing::warn!(user_id = %key.user_id(), mission_id = %key.mission_id(), "nextRunAt is not an ISO-8601 time; mission not armed");
        }
        WheelUpdate::Disarm(key) => {
            wheel.disarm(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::clock::TokioClock;

    fn start() -> DateTime<Utc> {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn key_round_trips_awkward_ids() {
        for (u, m) in [("u1", "m1"), ("12:3", "4:5"), ("", "x"), ("ü:ß", "")] {
            let k = MissionKey::new(u, m);
            assert_eq!((k.user_id(), k.mission_id()), (u, m));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_hands_due_missions_to_the_runner() {
        let (due_tx, mut due_rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let metrics = Metrics::new();
        let clock = Arc::new(TokioClock::starting_at(start()));
        let (handle, task) = spawn_wheel(clock, metrics.clone(), due_tx, shutdown.clone());
        handle
            .apply(vec![
                WheelUpdate::Arm {
                    key: MissionKey::new("u", "a"),
                    next_run_at: start() + chrono::Duration::seconds(2),
                },
                WheelUpdate::arm(MissionKey::new("u", "b"), parse_next_run("garbage")),
            ])
            .await;
        assert_eq!(metrics.armed_missions.get(), 1);
        assert_eq!(metrics.wheel_unparseable.get(), 1);
        let due = due_rx.recv().await.expect("fires");
        assert_eq!(due.mission_id, "a");
        assert_eq!(metrics.missions_due.get(), 1);
        shutdown.cancel();
        task.await.unwrap();
    }
}
