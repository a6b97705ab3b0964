//! The timer wheel: every armed mission fires once at its `nextRunAt`.
//!
//! [`TimerWheel`] is the core (tokio-util's `DelayQueue` plus an index by
//! mission); it is driven by tokio time, so tests pause time and advance it.
//! [`spawn_wheel`] runs it as a task that takes [`WheelCmd`]s from the applier
//! and hands each due mission to the runner's channel.
//!
//! Rules:
//! - one timer per mission; arming again re-keys it;
//! - a `nextRunAt` in the past fires at once; one beyond [`HORIZON`] is held
//!   at the horizon and re-armed from there (DelayQueue holds ~2 years);
//! - an unparseable `nextRunAt` disarms the mission, is counted and logged;
//! - a fired mission leaves the wheel: the runner's write-back (a new
//!   `nextRunAt`) comes round through the change queue and arms it again.

use std::collections::HashMap;
use std::fmt;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::time::delay_queue::{DelayQueue, Key};

use super::clock::Clock;
use crate::metrics::Metrics;

/// The furthest a timer is set; later times are re-armed when it fires.
pub const HORIZON: Duration = Duration::from_secs(365 * 24 * 3600);

/// Identifies a mission: (user id, mission id) in one allocation, shared by
/// the index and the queue (memory per armed mission is a target).
/// Stored as `"<user byte length>:<user id><mission id>"`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MissionKey(Arc<str>);

impl MissionKey {
    pub fn new(user_id: &str, mission_id: &str) -> Self {
        MissionKey(format!("{}:{user_id}{mission_id}", user_id.len()).into())
    }

    fn split(&self) -> (&str, &str) {
        let (len, rest) = self
            .0
            .split_once(':')
            .expect("MissionKey::new always writes a length prefix");
        let len: usize = len.parse().expect("the prefix is a decimal length");
        rest.split_at(len)
    }

    pub fn user_id(&self) -> &str {
        self.split().0
    }

    pub fn mission_id(&self) -> &str {
        self.split().1
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

/// What arming a mission did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArmOutcome {
    /// Set to fire at its time.
    Armed,
    /// Its time is past: fires at once.
    FireNow,
    /// `nextRunAt` is not an ISO-8601 time: disarmed.
    Unparseable,
}

/// Parses a `nextRunAt` value (ISO-8601 / RFC 3339 with an offset or `Z`).
pub fn parse_next_run(value: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Where a mission sits in the queue and the time it is armed for.
struct Slot {
    key: Key,
    /// Unix milliseconds of `nextRunAt`.
    due_ms: i64,
}

/// The wheel itself, without a task around it.
pub struct TimerWheel {
    queue: DelayQueue<MissionKey>,
    index: HashMap<MissionKey, Slot>,
    clock: Arc<dyn Clock>,
}

impl TimerWheel {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        TimerWheel {
            queue: DelayQueue::new(),
            index: HashMap::new(),
            clock,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// When `key` is armed to fire, if it is.
    pub fn armed_at(&self, key: &MissionKey) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp_millis(self.index.get(key)?.due_ms)
    }

    /// Arms (or re-arms) `key` for `next_run_at`.
    pub fn arm(&mut self, key: MissionKey, next_run_at: &str) -> ArmOutcome {
        let Some(due) = parse_next_run(next_run_at) else {
            self.disarm(&key);
            return ArmOutcome::Unparseable;
        };
        let wait = (due - self.clock.now()).to_std().unwrap_or(Duration::ZERO);
        let outcome = if wait.is_zero() {
            ArmOutcome::FireNow
        } else {
            ArmOutcome::Armed
        };
        let deadline = tokio::time::Instant::now() + wait.min(HORIZON);
        let due_ms = due.timestamp_millis();
        match self.index.get_mut(&key) {
            Some(slot) => {
                self.queue.reset_at(&slot.key, deadline);
                slot.due_ms = due_ms;
            }
            None => {
                let k = self.queue.insert_at(key.clone(), deadline);
                self.index.insert(key, Slot { key: k, due_ms });
            }
        }
        outcome
    }

    /// Removes `key`'s timer; true if it was armed.
    pub fn disarm(&mut self, key: &MissionKey) -> bool {
        match self.index.remove(key) {
            Some(slot) => {
                self.queue.remove(&slot.key);
                true
            }
            None => false,
        }
    }

    /// The next mission whose time has come; `Ready(None)` when nothing is armed.
    pub fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<Option<DueMission>> {
        loop {
            let Some(expired) = std::task::ready!(self.queue.poll_expired(cx)) else {
                return Poll::Ready(None);
            };
            let key = expired.into_inner();
            let Some(slot) = self.index.get_mut(&key) else {
                continue;
            };
            let now = self.clock.now();
            let due = DateTime::from_timestamp_millis(slot.due_ms).unwrap_or(now);
            if due > now {
                // Held at the horizon, or the clock offset moved: not yet.
                let wait = (due - now).to_std().unwrap_or(Duration::ZERO).min(HORIZON);
                slot.key = self.queue.insert(key, wait);
                continue;
            }
            self.index.remove(&key);
            return Poll::Ready(Some(DueMission {
                user_id: key.user_id().to_string(),
                mission_id: key.mission_id().to_string(),
                due_at: due,
                fired_at: now,
            }));
        }
    }

    /// Waits for the next due mission; pending forever while empty.
    pub async fn next_due(&mut self) -> DueMission {
        poll_fn(|cx| match self.poll_due(cx) {
            Poll::Ready(Some(due)) => Poll::Ready(due),
            _ => Poll::Pending,
        })
        .await
    }
}

/// One change to the wheel.
#[derive(Debug, Clone)]
pub enum WheelUpdate {
    Arm {
        key: MissionKey,
        next_run_at: String,
    },
    Disarm(MissionKey),
}

/// Commands to the wheel task.
pub enum WheelCmd {
    /// Apply updates in order; the sender (if any) learns when they are in.
    Apply(Vec<WheelUpdate>, Option<oneshot::Sender<()>>),
    /// When is this mission armed to fire?
    Query(MissionKey, oneshot::Sender<Option<DateTime<Utc>>>),
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
    let (tx, mut rx) = mpsc::unbounded_channel::<WheelCmd>();
    let task = tokio::spawn(async move {
        let mut wheel = TimerWheel::new(clock);
        enum Event {
            Due(DueMission),
            Cmd(Option<WheelCmd>),
        }
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
                        apply_update(&mut wheel, &metrics, update);
                    }
                    if let Some(ack) = ack {
                        let _ = ack.send(());
                    }
                }
                Event::Cmd(Some(WheelCmd::Query(key, reply))) => {
                    let _ = reply.send(wheel.armed_at(&key));
                }
            }
            metrics.armed_missions.set(wheel.len() as i64);
        }
    });
    (WheelHandle { tx }, task)
}

fn apply_update(wheel: &mut TimerWheel, metrics: &Metrics, update: WheelUpdate) {
    match update {
        WheelUpdate::Arm { key, next_run_at } => {
            if wheel.arm(key.clone(), &next_run_at) == ArmOutcome::Unparseable {
                metrics.wheel_unparseable.inc();
                tracing::warn!(user_id = %key.user_id(), mission_id = %key.mission_id(), "nextRunAt is not an ISO-8601 time; mission not armed");
            }
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
    use futures_util::FutureExt;

    fn start() -> DateTime<Utc> {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    fn wheel() -> TimerWheel {
        TimerWheel::new(Arc::new(TokioClock::starting_at(start())))
    }

    fn iso(t: DateTime<Utc>) -> String {
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    async fn advance(d: Duration) {
        tokio::time::advance(d).await;
    }

    #[test]
    fn key_round_trips_awkward_ids() {
        for (u, m) in [("u1", "m1"), ("12:3", "4:5"), ("", "x"), ("ü:ß", "")] {
            let k = MissionKey::new(u, m);
            assert_eq!((k.user_id(), k.mission_id()), (u, m));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fires_at_next_run_and_not_before() {
        let mut w = wheel();
        let due = start() + chrono::Duration::seconds(60);
        assert_eq!(
            w.arm(MissionKey::new("u", "m"), &iso(due)),
            ArmOutcome::Armed
        );
        assert_eq!(w.armed_at(&MissionKey::new("u", "m")), Some(due));
        advance(Duration::from_millis(59_990)).await;
        assert!(w.next_due().now_or_never().is_none());
        advance(Duration::from_millis(20)).await;
        let fired = w.next_due().now_or_never().expect("due now");
        assert_eq!(
            (fired.user_id.as_str(), fired.mission_id.as_str()),
            ("u", "m")
        );
        assert_eq!(fired.due_at, due);
        assert!(w.is_empty(), "a fired mission leaves the wheel");
    }

    #[tokio::test(start_paused = true)]
    async fn past_times_fire_at_once() {
        let mut w = wheel();
        let past = iso(start() - chrono::Duration::days(30));
        assert_eq!(w.arm(MissionKey::new("u", "m"), &past), ArmOutcome::FireNow);
        advance(Duration::from_millis(1)).await;
        assert!(w.next_due().now_or_never().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn unparseable_next_run_disarms() {
        let mut w = wheel();
        let k = MissionKey::new("u", "m");
        w.arm(k.clone(), &iso(start() + chrono::Duration::seconds(5)));
        assert_eq!(w.arm(k.clone(), "next tuesday"), ArmOutcome::Unparseable);
        assert_eq!(w.armed_at(&k), None);
        advance(Duration::from_secs(10)).await;
        assert!(w.next_due().now_or_never().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn rearm_moves_the_timer_and_disarm_removes_it() {
        let mut w = wheel();
        let k = MissionKey::new("u", "m");
        w.arm(k.clone(), &iso(start() + chrono::Duration::seconds(5)));
        w.arm(k.clone(), &iso(start() + chrono::Duration::seconds(50)));
        assert_eq!(w.len(), 1);
        advance(Duration::from_secs(10)).await;
        assert!(
            w.next_due().now_or_never().is_none(),
            "old time no longer fires"
        );
        advance(Duration::from_secs(41)).await;
        assert!(w.next_due().now_or_never().is_some());
        w.arm(k.clone(), &iso(start() + chrono::Duration::seconds(100)));
        assert!(w.disarm(&k));
        assert!(!w.disarm(&k));
        advance(Duration::from_secs(100)).await;
        assert!(w.next_due().now_or_never().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn times_beyond_the_horizon_are_held_and_fire_on_time() {
        let mut w = wheel();
        let far = start() + chrono::Duration::days(800);
        assert_eq!(
            w.arm(MissionKey::new("u", "m"), &iso(far)),
            ArmOutcome::Armed
        );
        advance(HORIZON + Duration::from_secs(1)).await;
        assert!(w.next_due().now_or_never().is_none(), "held at the horizon");
        assert_eq!(w.armed_at(&MissionKey::new("u", "m")), Some(far));
        advance(Duration::from_secs(435 * 24 * 3600)).await;
        let fired = w.next_due().now_or_never().expect("fires at its time");
        assert_eq!(fired.due_at, far);
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
                    next_run_at: iso(start() + chrono::Duration::seconds(2)),
                },
                WheelUpdate::Arm {
                    key: MissionKey::new("u", "b"),
                    next_run_at: "garbage".into(),
                },
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
