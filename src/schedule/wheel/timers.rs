//! [`TimerWheel`]: the wheel itself, without a task around it (the task
//! and its commands are in the parent module).

use std::future::poll_fn;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hashbrown::HashTable;
use tokio_util::time::delay_queue::{DelayQueue, Key};

use super::{DueMission, MissionKey};
use crate::schedule::clock::Clock;

/// The furthest a timer is set; later times are re-armed when it fires.
pub const HORIZON: Duration = Duration::from_secs(365 * 24 * 3600);

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

/// A mission id as the wheel keeps it: a canonical UUID (lowercase,
/// hyphenated: what `crypto.randomUUID()` writes) in 16 bytes, any other id
/// as its text. `parse` is exact, so an id and its text round-trip.
enum MissionId {
    Uuid([u8; 16]),
    Text(Box<str>),
}

/// A mission id to look up, borrowed from a [`MissionKey`]; hashed and
/// compared in this form so a stored id never needs its text rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum MissionIdRef<'a> {
    Uuid([u8; 16]),
    Text(&'a str),
}

impl<'a> MissionIdRef<'a> {
    fn parse(id: &'a str) -> Self {
        if id.len() == 36 {
            if let Ok(uuid) = uuid::Uuid::try_parse(id) {
                let mut buf = [0u8; 36];
                if uuid.hyphenated().encode_lower(&mut buf) == id {
                    return MissionIdRef::Uuid(*uuid.as_bytes());
                }
            }
        }
        MissionIdRef::Text(id)
    }
}

impl MissionId {
    fn new(id: MissionIdRef<'_>) -> Self {
        match id {
            MissionIdRef::Uuid(bytes) => MissionId::Uuid(bytes),
            MissionIdRef::Text(text) => MissionId::Text(text.into()),
        }
    }

    fn as_ref(&self) -> MissionIdRef<'_> {
        match self {
            MissionId::Uuid(bytes) => MissionIdRef::Uuid(*bytes),
            MissionId::Text(text) => MissionIdRef::Text(text),
        }
    }

    fn to_text(&self) -> String {
        match self {
            MissionId::Uuid(bytes) => uuid::Uuid::from_bytes(*bytes).hyphenated().to_string(),
            MissionId::Text(text) => text.to_string(),
        }
    }
}

/// An armed mission: its ids, the time it is armed for and where it sits in
/// the queue. 56 bytes; the user id is shared by the user's missions.
struct Armed {
    user: Arc<str>,
    mission: MissionId,
    /// Unix milliseconds of `nextRunAt`.
    due_ms: i64,
    key: Key,
}

/// A place in the arena: an armed mission or a link in the free list.
enum Slot {
    Armed(Armed),
    Free(Option<u32>),
}

impl Slot {
    fn armed(&self) -> &Armed {
        match self {
            Slot::Armed(armed) => armed,
            Slot::Free(_) => unreachable!("the index and the queue hold armed slots only"),
        }
    }

    fn armed_mut(&mut self) -> &mut Armed {
        match self {
            Slot::Armed(armed) => armed,
            Slot::Free(_) => unreachable!("the index and the queue hold armed slots only"),
        }
    }
}

/// The wheel itself, without a task around it.
///
/// Memory per armed mission is a target (<= 200 bytes at 10^6), so each
/// mission is kept once, in an arena slot (56 bytes), and everything else
/// refers to it by its u32 index: the queue (`DelayQueue<u32>`, ~48 bytes a
/// timer), the index by mission (a `hashbrown::HashTable<u32>` hashed by the
/// slot's ids, ~10 bytes), and freed slots form a list threaded through the
/// arena. User ids are interned: one allocation per user, not per mission.
/// Invariants: a slot is armed iff the index and the queue hold its number
/// once each; a user is interned iff one of its missions is armed.
pub struct TimerWheel {
    queue: DelayQueue<u32>,
    arena: Vec<Slot>,
    /// First free slot.
    free: Option<u32>,
    index: HashTable<u32>,
    users: HashTable<Arc<str>>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
}

impl TimerWheel {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        TimerWheel {
            queue: DelayQueue::new(),
            arena: Vec::new(),
            free: None,
            index: HashTable::new(),
            users: HashTable::new(),
            hasher: RandomState::new(),
            clock,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Makes room for `additional` more armed missions at once (a rebuild
    /// that knows its count), so the arena and the queue are not left up to
    /// twice as large as needed by growing one doubling at a time.
    pub fn reserve(&mut self, additional: usize) {
        let free = self.arena.len() - self.len();
        let more = additional.saturating_sub(free);
        self.arena.reserve_exact(more);
        self.queue.reserve(more);
        let (arena, hasher) = (&self.arena, &self.hasher);
        self.index
            .reserve(additional, |&i| slot_hash(hasher, arena, i));
    }

    fn find(&self, key: &MissionKey) -> Option<u32> {
        let (user, mission) = (key.user_id(), MissionIdRef::parse(key.mission_id()));
        self.find_hashed(user, mission, self.hasher.hash_one((user, mission)))
    }

    fn find_hashed(&self, user: &str, mission: MissionIdRef<'_>, hash: u64) -> Option<u32> {
        let arena = &self.arena;
        self.index
            .find(hash, |&i| {
                let armed = arena[i as usize].armed();
                *armed.user == *user && armed.mission.as_ref() == mission
            })
            .copied()
    }

    /// When `key` is armed to fire, if it is.
    pub fn armed_at(&self, key: &MissionKey) -> Option<DateTime<Utc>> {
        let i = self.find(key)?;
        DateTime::from_timestamp_millis(self.arena[i as usize].armed().due_ms)
    }

    /// Arms (or re-arms) `key` to fire at `due`.
    pub fn arm(&mut self, key: MissionKey, due: DateTime<Utc>) -> ArmOutcome {
        let wait = (due - self.clock.now()).to_std().unwrap_or(Duration::ZERO);
        let outcome = if wait.is_zero() {
            ArmOutcome::FireNow
        } else {
            ArmOutcome::Armed
        };
        let deadline = tokio::time::Instant::now() + wait.min(HORIZON);
        let due_ms = due.timestamp_millis();
        let (user, mission) = (key.user_id(), MissionIdRef::parse(key.mission_id()));
        // Hashed once: the lookup and the insertion share it.
        let hash = self.hasher.hash_one((user, mission));
        if let Some(i) = self.find_hashed(user, mission, hash) {
            let armed = self.arena[i as usize].armed_mut();
            self.queue.reset_at(&armed.key, deadline);
            armed.due_ms = due_ms;
            return outcome;
        }
        let user = self.intern(user);
        let i = self.take_slot();
        let queue_key = self.queue.insert_at(i, deadline);
        self.arena[i as usize] = Slot::Armed(Armed {
            user,
            mission: MissionId::new(mission),
            due_ms,
            key: queue_key,
        });
        let (arena, hasher) = (&self.arena, &self.hasher);
        self.index
            .insert_unique(hash, i, |&j| slot_hash(hasher, arena, j));
        outcome
    }

    /// Arms `key` at a parsed `nextRunAt`; one that did not parse (None)
    /// disarms it.
    pub fn arm_parsed(&mut self, key: MissionKey, due: Option<DateTime<Utc>>) -> ArmOutcome {
        match due {
            Some(due) => self.arm(key, due),
            None => {
                self.disarm(&key);
                ArmOutcome::Unparseable
            }
        }
    }

    /// Removes `key`'s timer; true if it was armed.
    pub fn disarm(&mut self, key: &MissionKey) -> bool {
        let Some(i) = self.find(key) else {
            return false;
        };
        let key = self.arena[i as usize].armed().key;
        self.queue.remove(&key);
        self.release(i);
        true
    }

    /// The next mission whose time has come; `Ready(None)` when nothing is armed.
    pub fn poll_due(&mut self, cx: &mut Context<'_>) -> Poll<Option<DueMission>> {
        loop {
            let Some(expired) = std::task::ready!(self.queue.poll_expired(cx)) else {
                return Poll::Ready(None);
            };
            let i = expired.into_inner();
            let now = self.clock.now();
            let armed = self.arena[i as usize].armed_mut();
            let due = DateTime::from_timestamp_millis(armed.due_ms).unwrap_or(now);
            if due > now {
                // Held at the horizon, or the clock offset moved: not yet.
                let wait = (due - now).to_std().unwrap_or(Duration::ZERO).min(HORIZON);
                armed.key = self.queue.insert(i, wait);
                continue;
            }
            let due_mission = DueMission {
                user_id: armed.user.to_string(),
                mission_id: armed.mission.to_text(),
                due_at: due,
                fired_at: now,
            };
            self.release(i);
            return Poll::Ready(Some(due_mission));
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

    /// The shared copy of `user`, interned if new.
    fn intern(&mut self, user: &str) -> Arc<str> {
        let hash = self.hasher.hash_one(user);
        let hasher = &self.hasher;
        self.users
            .entry(hash, |u| **u == *user, |u| hasher.hash_one(&**u))
            .or_insert_with(|| user.into())
            .get()
            .clone()
    }

    /// A free slot's number (reused before the arena grows).
    fn take_slot(&mut self) -> u32 {
        match self.free {
            Some(i) => {
                let Slot::Free(next) = self.arena[i as usize] else {
                    unreachable!("the free list links free slots only");
                };
                self.free = next;
                i
            }
            None => {
                let i = u32::try_from(self.arena.len()).expect("fewer than 2^32 armed missions");
                self.arena.push(Slot::Free(None));
                i
            }
        }
    }

    /// Takes slot `i` (already out of the queue) out of the index, frees it
    /// and lets its user go if it was the user's last armed mission.
    fn release(&mut self, i: u32) {
        let hash = slot_hash(&self.hasher, &self.arena, i);
        if let Ok(entry) = self.index.find_entry(hash, |&j| j == i) {
            entry.remove();
        }
        let slot = std::mem::replace(&mut self.arena[i as usize], Slot::Free(self.free));
        self.free = Some(i);
        let Slot::Armed(armed) = slot else {
            unreachable!("released slots are armed");
        };
        // The interner's copy and this one: the user's last mission.
        if Arc::strong_count(&armed.user) == 2 {
            let hash = self.hasher.hash_one(&*armed.user);
            if let Ok(entry) = self.users.find_entry(hash, |u| Arc::ptr_eq(u, &armed.user)) {
                entry.remove();
            }
        }
    }
}

/// The index's hash of armed slot `i`: of (user id, mission id), as
/// [`TimerWheel::find`] hashes a key.
fn slot_hash(hasher: &RandomState, arena: &[Slot], i: u32) -> u64 {
    let armed = arena[i as usize].armed();
    hasher.hash_one((&*armed.user, armed.mission.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::clock::TokioClock;
    use crate::schedule::wheel::parse_next_run;
    use futures_util::FutureExt;

    fn start() -> DateTime<Utc> {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    fn wheel() -> TimerWheel {
        TimerWheel::new(Arc::new(TokioClock::starting_at(start())))
    }

    /// A time as the wheel takes it (parsed where it was read).
    fn iso(t: DateTime<Utc>) -> DateTime<Utc> {
        t
    }

    async fn advance(d: Duration) {
        tokio::time::advance(d).await;
    }

    #[tokio::test(start_paused = true)]
    async fn fires_at_next_run_and_not_before() {
        let mut w = wheel();
        let due = start() + chrono::Duration::seconds(60);
        assert_eq!(
            w.arm(MissionKey::new("u", "m"), iso(due)),
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
        assert_eq!(w.arm(MissionKey::new("u", "m"), past), ArmOutcome::FireNow);
        advance(Duration::from_millis(1)).await;
        assert!(w.next_due().now_or_never().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn unparseable_next_run_disarms() {
        let mut w = wheel();
        let k = MissionKey::new("u", "m");
        w.arm(k.clone(), iso(start() + chrono::Duration::seconds(5)));
        assert_eq!(
            w.arm_parsed(k.clone(), parse_next_run("next tuesday")),
            ArmOutcome::Unparseable
        );
        assert_eq!(w.armed_at(&k), None);
        advance(Duration::from_secs(10)).await;
        assert!(w.next_due().now_or_never().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn rearm_moves_the_timer_and_disarm_removes_it() {
        let mut w = wheel();
        let k = MissionKey::new("u", "m");
        w.arm(k.clone(), iso(start() + chrono::Duration::seconds(5)));
        w.arm(k.clone(), iso(start() + chrono::Duration::seconds(50)));
        assert_eq!(w.len(), 1);
        advance(Duration::from_secs(10)).await;
        assert!(
            w.next_due().now_or_never().is_none(),
            "old time no longer fires"
        );
        advance(Duration::from_secs(41)).await;
        assert!(w.next_due().now_or_never().is_some());
        w.arm(k.clone(), iso(start() + chrono::Duration::seconds(100)));
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
            w.arm(MissionKey::new("u", "m"), iso(far)),
            ArmOutcome::Armed
        );
        advance(HORIZON + Duration::from_secs(1)).await;
        assert!(w.next_due().now_or_never().is_none(), "held at the horizon");
        assert_eq!(w.armed_at(&MissionKey::new("u", "m")), Some(far));
        advance(Duration::from_secs(435 * 24 * 3600)).await;
        let fired = w.next_due().now_or_never().expect("fires at its time");
        assert_eq!(fired.due_at, far);
    }

    #[test]
    fn an_armed_mission_costs_one_56_byte_slot() {
        assert!(std::mem::size_of::<Slot>() <= 56);
        assert_eq!(std::mem::size_of::<MissionId>(), 24);
    }

    #[test]
    fn only_canonical_uuids_are_stored_as_bytes() {
        let id = "0b9c3f7e-1d2a-4c5b-8e6f-7a8b9c0d1e2f";
        assert!(matches!(MissionIdRef::parse(id), MissionIdRef::Uuid(_)));
        for other in [
            "0B9C3F7E-1D2A-4C5B-8E6F-7A8B9C0D1E2F",
            "0b9c3f7e1d2a4c5b8e6f7a8b9c0d1e2f",
            "{0b9c3f7e-1d2a-4c5b-8e6f-7a8b9c0d1e2}",
            "urn:uuid:0b9c3f7e-1d2a-4c5b-8e6f-7a8b",
            "mission-1",
            "",
        ] {
            assert_eq!(MissionIdRef::parse(other), MissionIdRef::Text(other));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_id_form_fires_with_its_exact_text() {
        let mut w = wheel();
        let due = iso(start() + chrono::Duration::seconds(1));
        let ids = [
            ("u", "0b9c3f7e-1d2a-4c5b-8e6f-7a8b9c0d1e2f"),
            ("u", "0B9C3F7E-1D2A-4C5B-8E6F-7A8B9C0D1E2F"),
            ("u", "0b9c3f7e1d2a4c5b8e6f7a8b9c0d1e2f"),
            ("12:3", "4:5"),
            ("ü:ß", ""),
            ("", "x"),
        ];
        for (u, m) in ids {
            assert_eq!(w.arm(MissionKey::new(u, m), due), ArmOutcome::Armed);
        }
        assert_eq!(w.len(), ids.len(), "upper and lower case are different ids");
        for (u, m) in ids {
            assert!(w.armed_at(&MissionKey::new(u, m)).is_some(), "{u}/{m}");
        }
        advance(Duration::from_secs(2)).await;
        let mut fired = Vec::new();
        while let Some(d) = w.next_due().now_or_never() {
            fired.push((d.user_id, d.mission_id));
        }
        fired.sort();
        let mut expected: Vec<_> = ids
            .iter()
            .map(|(u, m)| (u.to_string(), m.to_string()))
            .collect();
        expected.sort();
        assert_eq!(fired, expected);
        assert!(w.is_empty());
        assert_eq!(w.users.len(), 0, "users are let go with their last mission");
    }

    #[tokio::test(start_paused = true)]
    async fn freed_slots_are_reused_and_users_shared_until_their_last_mission() {
        let mut w = wheel();
        let due = iso(start() + chrono::Duration::seconds(60));
        for m in 0..10 {
            w.arm(MissionKey::new("alice", &format!("m{m}")), due);
        }
        w.arm(MissionKey::new("bob", "m0"), due);
        assert_eq!((w.len(), w.arena.len(), w.users.len()), (11, 11, 2));
        for m in 0..5 {
            assert!(w.disarm(&MissionKey::new("alice", &format!("m{m}"))));
        }
        assert_eq!((w.len(), w.users.len()), (6, 2));
        // Re-arming, even other missions, takes the freed slots first.
        for m in 10..15 {
            w.arm(MissionKey::new("carol", &format!("m{m}")), due);
        }
        assert_eq!((w.len(), w.arena.len(), w.users.len()), (11, 11, 3));
        for m in 5..10 {
            w.disarm(&MissionKey::new("alice", &format!("m{m}")));
        }
        assert_eq!(w.users.len(), 2, "alice's last mission let her go");
        // Everything still armed fires, once, at its time.
        advance(Duration::from_secs(61)).await;
        let mut fired = 0;
        while let Some(d) = w.next_due().now_or_never() {
            assert_ne!(d.user_id, "alice");
            fired += 1;
        }
        assert_eq!((fired, w.len(), w.users.len()), (6, 0, 0));
        w.arm(MissionKey::new("dave", "m"), due);
        assert_eq!(
            w.arena.len(),
            11,
            "the arena does not grow while slots are free"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reserve_sizes_the_arena_for_a_rebuild() {
        let mut w = wheel();
        w.reserve(1000);
        assert!(w.arena.capacity() >= 1000);
        let due = iso(start() + chrono::Duration::seconds(60));
        for m in 0..1000 {
            w.arm(MissionKey::new("u", &format!("m{m}")), due);
        }
        assert_eq!(w.arena.capacity(), 1000, "no doubling past the count");
    }
}
