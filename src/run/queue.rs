//! The runner's side of the fair queue (`schedule::fair`): every run, from
//! the wheel, a tick or a direct call, waits in one [`FairQueue`] for its
//! turn. A run's task pushes its entry and waits on a oneshot; whoever
//! changes the queue (a push, a run's end, a run sent back by its agent)
//! dispatches: pops what may start now and hands each its turn. There is no
//! dispatcher task, so nothing is left to stop or to wake on a timer.
//!
//! A [`Ticket`] holds a mission's place from its push to the end of its last
//! turn, whatever ends it (an outcome, an error, a panic caught in the run's
//! task, or the whole run future dropped at shutdown): its `Drop` takes the
//! entry out of the queue or finishes it there, then dispatches again.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::Runner;
use crate::config::FairLimits;
use crate::schedule::cadence::Cadence;
use crate::schedule::fair::Tier;
use crate::schedule::fair::{AgentLimit, Attached, Entry, FairConfig, FairQueue, Pushed, Ready};
use crate::schedule::wheel::MissionKey;

/// A run's turn: the entry as the queue handed it out.
pub(super) type Turn = oneshot::Receiver<Ready>;

/// The fair queue and the run tasks waiting on it, under one lock.
pub(super) struct Turns {
    queue: FairQueue,
    /// The task waiting for each queued entry's turn.
    waiters: HashMap<MissionKey, oneshot::Sender<Ready>>,
    /// Runs their agent sent back to the queue: the receiver of their next turn.
    parked: HashMap<MissionKey, Turn>,
    /// Shutting down: no turn is handed out any more.
    closed: bool,
}

impl Turns {
    pub(super) fn new(total: usize, limits: FairLimits) -> Mutex<Turns> {
        let grace = chrono::Duration::from_std(limits.catch_up_grace)
            .unwrap_or(chrono::Duration::minutes(5));
        Mutex::new(Turns {
            queue: FairQueue::new(FairConfig {
                total,
                per_user: limits.max_runs_per_user,
                catch_up_grace: grace,
            }),
            waiters: HashMap::new(),
            parked: HashMap::new(),
            closed: false,
        })
    }
}

/// A mission's place in the queue (queued or in flight) while it lives.
pub(super) struct Ticket<'a> {
    runner: &'a Runner,
    key: MissionKey,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut turns = self.runner.turns();
        turns.waiters.remove(&self.key);
        turns.parked.remove(&self.key);
        if !turns.queue.withdraw(&self.key) {
            turns.queue.finish(&self.key);
        }
        self.runner.dispatch_locked(&mut turns);
    }
}

impl Runner {
    fn turns(&self) -> MutexGuard<'_, Turns> {
        self.turns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a run of `key` (`due_at`: its slot; None for a tick) and
    /// dispatches; None when the mission is already queued or running.
    pub(super) fn enqueue(
        &self,
        key: MissionKey,
        due_at: Option<DateTime<Utc>>,
    ) -> Option<(Ticket<'_>, Turn)> {
        let now = self.deps.clock.now();
        let mut turns = self.turns();
        if turns.closed {
            return None;
        }
        let entry = Entry {
            key: key.clone(),
            due_at,
            agent: None,
        };
        match turns.queue.push(entry, now) {
            Pushed::Queued(_) => {}
            Pushed::AlreadyQueued | Pushed::InFlight => return None,
        }
        let (tx, rx) = oneshot::channel();
        turns.waiters.insert(key.clone(), tx);
        self.dispatch_locked(&mut turns);
        Some((Ticket { runner: self, key }, rx))
    }

    /// Hands a turn to every entry that may start now.
    fn dispatch_locked(&self, turns: &mut Turns) {
        while !turns.closed {
            let Some(ready) = turns.queue.pop_ready() else {
                break;
            };
            let key = ready.entry.key.clone();
            let sent = turns.waiters.remove(&key).map(|tx| tx.send(ready));
            if !matches!(sent, Some(Ok(()))) {
                // Its task is gone (its ticket finishes it too): free the room.
                turns.queue.finish(&key);
            }
        }
        let (on_time, catch_up) = turns.queue.queued_by_tier();
        let depth = &self.deps.metrics.run_queue_depth;
        depth
            .with_label_values(&[Tier::OnTime.as_str()])
            .set(on_time as i64);
        depth
            .with_label_values(&[Tier::CatchUp.as_str()])
            .set(catch_up as i64);
    }

    /// A run learnt its mission's agent: true when it may go on; false when
    /// the agent is at `maxConcurrentMissions` and the entry went back to
    /// the queue (the run must give back its claim and end; its task waits
    /// for the next turn, see [`Runner::next_turn`]).
    pub(super) fn attach_agent(&self, key: &MissionKey, agent: AgentLimit) -> bool {
        let mut turns = self.turns();
        match turns.queue.attach_agent(key, agent) {
            Attached::Run | Attached::NotInFlight => true,
            Attached::Requeued => {
                let (tx, rx) = oneshot::channel();
                turns.waiters.insert(key.clone(), tx);
                turns.parked.insert(key.clone(), rx);
                self.dispatch_locked(&mut turns);
                false
            }
        }
    }

    /// Stops handing out turns (shutdown): the runs still waiting end at
    /// once, without a claim.
    pub(super) fn close_queue(&self) {
        let mut turns = self.turns();
        turns.closed = true;
        turns.waiters.clear();
    }

    /// Runs that have their turn and have not ended.
    pub(super) fn runs_started(&self) -> usize {
        self.turns().queue.in_flight()
    }

    /// The next turn of a run its agent sent back to the queue, if it was.
    pub(super) fn next_turn(&self, key: &MissionKey) -> Option<Turn> {
        self.turns().parked.remove(key)
    }

    /// Records a turn starting: the wait in the queue, and on the first turn
    /// the lag from the slot.
    pub(super) fn started(&self, ready: &Ready, first: bool) {
        let now = self.deps.clock.now();
        let secs =
            |from: DateTime<Utc>| (now - from).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
        let metrics = &self.deps.metrics;
        metrics.run_queue_wait.observe(secs(ready.queued_at));
        if let (true, Some(due)) = (first, ready.entry.due_at) {
            metrics.due_to_start.observe(secs(due));
        }
    }

    /// Counts the slots a run for `slot_at` at `now` skips (see
    /// [`missed_slots`]) in `missed_slots_total`.
    pub(super) fn count_missed(
        &self,
        record: &serde_json::Value,
        slot_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) {
        let Ok(cadence) = Cadence::parse(&record["cadence"]) else {
            return;
        };
        let missed = missed_slots(&cadence, slot_at, now, self.deps.default_tz);
        self.deps.metrics.missed_slots.inc_by(missed);
    }
}

/// Cron, daily and weekly cadences are walked slot by slot up to this many.
const MAX_WALKED_SLOTS: u64 = 10_000;

/// The slots strictly after `slot_at` and at or before `now`: the ones a
/// single run for `slot_at` stands in for (a mission runs once for all its
/// missed slots, then goes on from now). Intervals are divided out; other
/// cadences are walked, at most [`MAX_WALKED_SLOTS`] (over 27 years daily).
pub fn missed_slots(
    cadence: &Cadence,
    slot_at: DateTime<Utc>,
    now: DateTime<Utc>,
    default_tz: chrono_tz::Tz,
) -> u64 {
    if let Cadence::Interval { every } = cadence {
        let (span, step) = ((now - slot_at).num_milliseconds(), every.num_milliseconds());
        return u64::try_from(span.checked_div(step).unwrap_or(0)).unwrap_or(0);
    }
    let mut count = 0;
    let mut at = slot_at;
    while count < MAX_WALKED_SLOTS {
        match cadence.next_after(at, default_tz) {
            Some(next) if next <= now => {
                count += 1;
                at = next;
            }
            _ => break,
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn missed(cadence: serde_json::Value, slot: &str, now: &str) -> u64 {
        let cadence = Cadence::parse(&cadence).unwrap();
        missed_slots(&cadence, at(slot), at(now), chrono_tz::UTC)
    }

    #[test]
    fn missed_slots_of_an_interval_are_divided_out() {
        let every_minute = json!({"kind": "interval", "everyMinutes": 1});
        let (slot, two_hours_later) = ("2026-03-02T07:00:00Z", "2026-03-02T09:00:30Z");
        assert_eq!(missed(every_minute.clone(), slot, two_hours_later), 120);
        assert_eq!(
            missed(every_minute.clone(), slot, "2026-03-02T07:00:59Z"),
            0
        );
        assert_eq!(missed(every_minute, slot, "2026-03-02T06:00:00Z"), 0);
    }

    #[test]
    fn missed_slots_of_wall_clock_cadences_are_walked() {
        let daily = json!({"kind": "daily", "atHour": 8});
        assert_eq!(
            missed(
                daily.clone(),
                "2026-03-02T08:00:00Z",
                "2026-03-05T09:00:00Z"
            ),
            3
        );
        assert_eq!(
            missed(daily, "2026-03-02T08:00:00Z", "2026-03-02T09:00:00Z"),
            0
        );
        let cron = json!({"kind": "cron", "expression": "*/15 * * * *"});
        assert_eq!(
            missed(cron, "2026-03-02T08:00:00Z", "2026-03-02T09:00:00Z"),
            4
        );
        assert_eq!(
            missed(
                json!({"kind": "manual"}),
                "2026-03-02T08:00:00Z",
                "2026-03-09T08:00:00Z"
            ),
            0
        );
    }
}
