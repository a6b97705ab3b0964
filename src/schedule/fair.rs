//! Fair queue of due runs across users (issue 9).
//!
//! Pure (no clock, no I/O, no locks): the runner keeps one behind its mutex,
//! [`FairQueue::push`]es due missions, starts what [`FairQueue::pop_ready`]
//! hands out, and on each run's end calls [`FairQueue::finish`] and pops again.
//!
//! Rules, in the order `pop_ready` applies them:
//! 1. **Caps.** At most `total` in flight; `per_user` per user while another
//!    user's entry of the tier may start (work-conserving: a lone backlog uses
//!    the room nobody else wants); an agent's `maxConcurrentMissions` per
//!    (user, agent): a held-back entry waits, eligible when that agent's run
//!    ends (nothing is retried on a timer).
//! 2. **On time before catch-up.** An entry whose slot was more than
//!    `catch_up_grace` old when pushed is catch-up; no catch-up entry starts
//!    while any on-time entry is eligible. The tier is fixed at push: an
//!    on-time entry that waits behind a backlog does not become catch-up.
//! 3. **Users in turn: round robin.** Users with queued entries stand in a
//!    ring (joining at the back); the first one with an eligible entry of the
//!    best tier is served and goes to the back; users skipped at a cap keep
//!    their place. So between two runs of user A, every user B eligible all
//!    along gets exactly one run: a due run waits at most one round.
//! 4. **Within a user, first in first out** among eligible entries; one lane
//!    per agent, so an agent at its max holds up none of the user's others.
//!
//! Why round robin, not deficit or weighted fair queuing: a run's cost (LLM
//! latency, tokens) is unknown when it starts and varies tenfold, so there is
//! nothing to weigh; with unit cost DRR is exactly this round robin. The
//! per-user cap bounds what one user's long runs hold.
//!
//! A mission queued or in flight is not queued again ([`Pushed`]). An agent
//! known only once the run has loaded it: [`FairQueue::attach_agent`].

use std::collections::{HashMap, HashSet, VecDeque};

use chrono::{DateTime, Duration, Utc};

use super::wheel::MissionKey;

mod counts;
pub use counts::UserCounts;

/// An agent's concurrency limit, as a mission's agent names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLimit {
    pub agent_id: String,
    /// `maxConcurrentMissions` (at least 1; 0 is read as 1).
    pub max_concurrent: usize,
}

/// One due run.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: MissionKey,
    /// The slot (`nextRunAt`) it runs for; `None` (a tick) counts as on time.
    pub due_at: Option<DateTime<Utc>>,
    /// The mission's agent, when known at push time.
    pub agent: Option<AgentLimit>,
}

/// Limits of a [`FairQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FairConfig {
    /// Runs in flight at most (`MANA_AI_MAX_CONCURRENT_RUNS`); at least 1.
    pub total: usize,
    /// Runs in flight per user at most; at least 1.
    pub per_user: usize,
    /// A slot older than this at push time is caught up, after on-time slots.
    pub catch_up_grace: Duration,
}

/// Whether an entry runs on time or catches up a slot missed long ago.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    OnTime,
    CatchUp,
}

impl Tier {
    /// Both tiers, in serving order.
    pub const ALL: [Tier; 2] = [Tier::OnTime, Tier::CatchUp];

    /// The `tier` label of `run_queue_depth`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::OnTime => "on-time",
            Tier::CatchUp => "catch-up",
        }
    }
}

/// What [`FairQueue::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued(Tier),
    /// The mission was already waiting; the new entry was dropped.
    AlreadyQueued,
    /// The mission is running; the new entry was dropped.
    InFlight,
}

/// An entry [`FairQueue::pop_ready`] handed out: it is in flight now.
#[derive(Debug, Clone, PartialEq)]
pub struct Ready {
    pub entry: Entry,
    pub tier: Tier,
    /// The `now` it was pushed with: the wait is `start - queued_at`.
    pub queued_at: DateTime<Utc>,
}

/// What [`FairQueue::attach_agent`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// The run counts against the agent and goes on.
    Run,
    /// The agent is full: the run must stop; its entry is queued again.
    Requeued,
    /// The key is not in flight (or already has an agent): nothing changed.
    NotInFlight,
}

/// See the module documentation.
#[derive(Debug)]
pub struct FairQueue {
    config: FairConfig,
    users: HashMap<String, UserQueue>,
    /// Users with queued entries, in serving order.
    ring: VecDeque<String>,
    /// Runs in flight per (user, agent).
    agents: HashMap<(String, String), usize>,
    queued: HashSet<MissionKey>,
    in_flight: HashMap<MissionKey, Waiting>,
    next_seq: u64,
}

#[derive(Debug, Default)]
struct UserQueue {
    in_flight: usize,
    queued: usize,
    lanes: Vec<Lane>,
}

/// A user's entries of one agent (or of none), per tier, oldest first.
#[derive(Debug)]
struct Lane {
    agent: Option<AgentLimit>,
    tiers: [VecDeque<Waiting>; 2],
}

/// A queued or running entry; `seq` is its place in line.
#[derive(Debug)]
struct Waiting {
    seq: u64,
    ready: Ready,
    /// Running only: the run counts against `ready.entry.agent`.
    agent_counted: bool,
}

impl FairQueue {
    pub fn new(config: FairConfig) -> FairQueue {
        FairQueue {
            config: FairConfig {
                total: config.total.max(1),
                per_user: config.per_user.max(1),
                ..config
            },
            users: HashMap::new(),
            ring: VecDeque::new(),
            agents: HashMap::new(),
            queued: HashSet::new(),
            in_flight: HashMap::new(),
            next_seq: 0,
        }
    }

    /// Queues a due run; `now` decides its tier and is its `queued_at`.
    pub fn push(&mut self, entry: Entry, now: DateTime<Utc>) -> Pushed {
        if self.in_flight.contains_key(&entry.key) {
            return Pushed::InFlight;
        }
        if self.queued.contains(&entry.key) {
            return Pushed::AlreadyQueued;
        }
        let late = entry
            .due_at
            .is_some_and(|due| now - due > self.config.catch_up_grace);
        let tier = if late { Tier::CatchUp } else { Tier::OnTime };
        let seq = self.next_seq;
        self.next_seq += 1;
        let ready = Ready {
            entry,
            tier,
            queued_at: now,
        };
        self.enqueue(Waiting {
            seq,
            ready,
            agent_counted: false,
        });
        Pushed::Queued(tier)
    }

    /// The next entry to start by the module's rules, now in flight; `None`
    /// when nothing queued may start yet.
    pub fn pop_ready(&mut self) -> Option<Ready> {
        if self.in_flight.len() >= self.config.total {
            return None;
        }
        for tier in [Tier::OnTime, Tier::CatchUp] {
            for capped in [true, false] {
                for pos in 0..self.ring.len() {
                    if let Some(lane) = self.eligible_lane(&self.ring[pos], tier, capped) {
                        return Some(self.take(pos, lane, tier));
                    }
                }
            }
        }
        None
    }

    /// A run ended: its user's (and agent's) room is free again. Returns
    /// false for a key that was not in flight.
    pub fn finish(&mut self, key: &MissionKey) -> bool {
        let Some(running) = self.in_flight.remove(key) else {
            return false;
        };
        let user = key.user_id();
        if running.agent_counted {
            if let Some(agent) = &running.ready.entry.agent {
                self.release_agent(user, &agent.agent_id);
            }
        }
        if let Some(queue) = self.users.get_mut(user) {
            queue.in_flight = queue.in_flight.saturating_sub(1);
            if queue.in_flight == 0 && queue.queued == 0 {
                self.users.remove(user);
            }
        }
        true
    }

    /// Names the agent of a run popped without one: counts the run against
    /// it, or, when the agent is at `max_concurrent`, ends the run here and
    /// queues the entry again where it was (same tier, same place in line).
    pub fn attach_agent(&mut self, key: &MissionKey, agent: AgentLimit) -> Attached {
        let user = key.user_id().to_string();
        let Some(running) = self.in_flight.get_mut(key) else {
            return Attached::NotInFlight;
        };
        if running.ready.entry.agent.is_some() {
            return Attached::NotInFlight;
        }
        let agent_key = (user.clone(), agent.agent_id.clone());
        let count = self.agents.get(&agent_key).copied().unwrap_or(0);
        let room = count < agent.max_concurrent.max(1);
        running.ready.entry.agent = Some(agent);
        if room {
            running.agent_counted = true;
            *self.agents.entry(agent_key).or_insert(0) += 1;
            return Attached::Run;
        }
        if let Some(running) = self.in_flight.remove(key) {
            if let Some(queue) = self.users.get_mut(&user) {
                queue.in_flight = queue.in_flight.saturating_sub(1);
            }
            self.enqueue(Waiting {
                agent_counted: false,
                ..running
            });
        }
        Attached::Requeued
    }

    /// Takes a queued entry out (its run was given up before it started).
    /// Returns false for a key that is not queued.
    pub fn withdraw(&mut self, key: &MissionKey) -> bool {
        if !self.queued.remove(key) {
            return false;
        }
        let user = key.user_id();
        let Some(queue) = self.users.get_mut(user) else {
            return true;
        };
        for index in 0..queue.lanes.len() {
            let lane = &mut queue.lanes[index];
            for tier in &mut lane.tiers {
                tier.retain(|w| &w.ready.entry.key != key);
            }
            if lane.tiers.iter().all(VecDeque::is_empty) {
                queue.lanes.swap_remove(index);
                break;
            }
        }
        queue.queued = queue.queued.saturating_sub(1);
        if queue.queued == 0 {
            self.ring.retain(|u| u != user);
            if queue.in_flight == 0 {
                self.users.remove(user);
            }
        }
        true
    }

    fn enqueue(&mut self, waiting: Waiting) {
        let user = waiting.ready.entry.key.user_id().to_string();
        self.queued.insert(waiting.ready.entry.key.clone());
        let queue = self.users.entry(user.clone()).or_default();
        if queue.queued == 0 {
            self.ring.push_back(user);
        }
        queue.queued += 1;
        let agent = waiting.ready.entry.agent.clone();
        let id = |a: &Option<AgentLimit>| a.as_ref().map(|a| a.agent_id.clone());
        let found = queue.lanes.iter().position(|l| id(&l.agent) == id(&agent));
        let index = found.unwrap_or_else(|| {
            let tiers = [VecDeque::new(), VecDeque::new()];
            queue.lanes.push(Lane { agent: None, tiers });
            queue.lanes.len() - 1
        });
        let lane = &mut queue.lanes[index];
        // The latest limit wins: an agent's `maxConcurrentMissions` may change.
        lane.agent = agent;
        let tier = &mut lane.tiers[waiting.ready.tier as usize];
        // Pushes arrive in order; a requeued entry goes back to its place.
        let at = tier.partition_point(|w| w.seq < waiting.seq);
        tier.insert(at, waiting);
    }

    /// The user's lane whose `tier` head may start now, oldest head first;
    /// `capped`: within the per-user cap.
    fn eligible_lane(&self, user: &str, tier: Tier, capped: bool) -> Option<usize> {
        let queue = self.users.get(user)?;
        if capped && queue.in_flight >= self.config.per_user {
            return None;
        }
        let mut best: Option<(u64, usize)> = None;
        for (index, lane) in queue.lanes.iter().enumerate() {
            let Some(head) = lane.tiers[tier as usize].front() else {
                continue;
            };
            let agent_full = lane.agent.as_ref().is_some_and(|a| {
                self.agent_in_flight(user, &a.agent_id) >= a.max_concurrent.max(1)
            });
            if !agent_full && best.is_none_or(|(seq, _)| head.seq < seq) {
                best = Some((head.seq, index));
            }
        }
        best.map(|(_, index)| index)
    }

    /// Moves the head of a lane in flight; its user goes to the ring's back.
    fn take(&mut self, pos: usize, lane_index: usize, tier: Tier) -> Ready {
        let user = self
            .ring
            .remove(pos)
            .expect("pop_ready passes a ring position");
        let queue = self
            .users
            .get_mut(&user)
            .expect("a user in the ring has a queue");
        let lane = &mut queue.lanes[lane_index];
        let waiting = lane.tiers[tier as usize]
            .pop_front()
            .expect("eligible_lane picked a lane with a head");
        if lane.tiers.iter().all(VecDeque::is_empty) {
            queue.lanes.swap_remove(lane_index);
        }
        queue.queued -= 1;
        queue.in_flight += 1;
        if queue.queued > 0 {
            self.ring.push_back(user.clone());
        }
        let key = waiting.ready.entry.key.clone();
        self.queued.remove(&key);
        let agent_counted = waiting.ready.entry.agent.is_some();
        if let Some(agent) = &waiting.ready.entry.agent {
            *self
                .agents
                .entry((user, agent.agent_id.clone()))
                .or_insert(0) += 1;
        }
        let ready = waiting.ready.clone();
        let running = Waiting {
            agent_counted,
            ..waiting
        };
        self.in_flight.insert(key, running);
        ready
    }

    fn release_agent(&mut self, user: &str, agent_id: &str) {
        let key = (user.to_string(), agent_id.to_string());
        if let Some(count) = self.agents.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.agents.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-02T07:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn config(total: usize, per_user: usize) -> FairConfig {
        FairConfig {
            total,
            per_user,
            catch_up_grace: Duration::minutes(10),
        }
    }

    fn entry(user: &str, mission: &str, agent: Option<(&str, usize)>) -> Entry {
        Entry {
            key: MissionKey::new(user, mission),
            due_at: Some(t0()),
            agent: agent.map(|(id, max)| AgentLimit {
                agent_id: id.into(),
                max_concurrent: max,
            }),
        }
    }

    fn popped_user(q: &mut FairQueue) -> Option<String> {
        q.pop_ready().map(|r| r.entry.key.user_id().to_string())
    }

    #[test]
    fn a_heavy_backlog_delays_light_users_by_one_round_at_most() {
        let mut q = FairQueue::new(config(1000, 1000));
        for m in 0..200 {
            q.push(entry("heavy", &format!("m{m}"), None), t0());
        }
        for u in 0..20 {
            q.push(entry(&format!("light{u}"), "m", None), t0());
        }
        let order: Vec<String> = std::iter::from_fn(|| popped_user(&mut q)).collect();
        assert_eq!(order.len(), 220);
        let last_light = order.iter().rposition(|u| u.starts_with("light"));
        // heavy, light0, ..., light19: every light user within the first round.
        assert_eq!(last_light, Some(20));
        assert_eq!(order.iter().take(21).filter(|u| *u == "heavy").count(), 1);
    }

    #[test]
    fn the_per_user_cap_holds_while_another_user_waits() {
        let mut q = FairQueue::new(config(10, 2));
        for m in 0..5 {
            q.push(entry("u", &format!("m{m}"), None), t0());
        }
        q.push(entry("v", "n0", Some(("A", 1))), t0());
        q.push(entry("v", "n1", Some(("A", 1))), t0());
        let first = q.pop_ready().unwrap();
        assert_eq!(q.pop_ready().unwrap().entry.key, MissionKey::new("v", "n0"));
        assert!(q.pop_ready().is_some());
        // u is at its cap; v's n1 waits for its agent, so nobody else may
        // start: u uses the room (work-conserving).
        assert_eq!(q.pop_ready().unwrap().entry.key, MissionKey::new("u", "m2"));
        assert_eq!(q.pop_ready().unwrap().entry.key, MissionKey::new("u", "m3"));
        assert_eq!(
            q.user_counts("u"),
            UserCounts {
                queued: 1,
                in_flight: 4
            }
        );
        assert!(q.finish(&MissionKey::new("v", "n0")));
        assert_eq!(q.pop_ready().unwrap().entry.key, MissionKey::new("v", "n1"));
        assert!(q.finish(&first.entry.key));
        assert!(!q.finish(&first.entry.key));
        assert_eq!(q.pop_ready().unwrap().entry.key, MissionKey::new("u", "m4"));
    }

    #[test]
    fn an_agent_at_its_max_waits_in_the_queue_and_starts_when_a_run_ends() {
        let mut q = FairQueue::new(config(10, 10));
        for m in 0..3 {
            q.push(entry("u", &format!("a{m}"), Some(("A", 1))), t0());
        }
        q.push(entry("u", "b0", Some(("B", 1))), t0());
        let a0 = q.pop_ready().unwrap();
        assert_eq!(a0.entry.key, MissionKey::new("u", "a0"));
        // A is full; B's mission is not held up behind A's.
        assert_eq!(q.pop_ready().unwrap().entry.key, MissionKey::new("u", "b0"));
        assert_eq!(q.pop_ready(), None);
        assert_eq!(q.agent_in_flight("u", "A"), 1);
        q.finish(&a0.entry.key);
        assert_eq!(q.pop_ready().unwrap().entry.key, MissionKey::new("u", "a1"));
        assert_eq!(q.pop_ready(), None);
    }

    #[test]
    fn on_time_slots_go_before_catch_up_ones() {
        let mut q = FairQueue::new(config(10, 10));
        let mut old = entry("late", "m", None);
        old.due_at = Some(t0() - Duration::hours(2));
        assert_eq!(q.push(old, t0()), Pushed::Queued(Tier::CatchUp));
        let mut tick = entry("tick", "m", None);
        tick.due_at = None;
        assert_eq!(q.push(tick, t0()), Pushed::Queued(Tier::OnTime));
        let soon = t0() + Duration::minutes(5);
        assert_eq!(
            q.push(entry("fresh", "m", None), soon),
            Pushed::Queued(Tier::OnTime)
        );
        assert_eq!(q.queued_by_tier(), (2, 1));
        let order: Vec<String> = std::iter::from_fn(|| popped_user(&mut q)).collect();
        assert_eq!(order, ["tick", "fresh", "late"]);
    }

    #[test]
    fn a_withdrawn_entry_is_gone_and_its_user_leaves_the_ring() {
        let mut q = FairQueue::new(config(4, 4));
        q.push(entry("u1", "m1", None), t0());
        q.push(entry("u1", "m2", None), t0());
        q.push(entry("u2", "m1", None), t0());
        assert!(q.withdraw(&MissionKey::new("u1", "m1")));
        assert!(!q.withdraw(&MissionKey::new("u1", "m1")));
        assert_eq!((q.len(), q.users_waiting()), (2, 2));
        assert!(q.withdraw(&MissionKey::new("u1", "m2")));
        assert_eq!((q.len(), q.users_waiting()), (1, 1));
        assert_eq!(q.user_counts("u1"), UserCounts::default());
        assert_eq!(popped_user(&mut q).as_deref(), Some("u2"));
        assert_eq!(q.pop_ready(), None);
        let again = q.push(entry("u1", "m1", None), t0());
        assert_eq!(again, Pushed::Queued(Tier::OnTime));
    }

    #[test]
    fn a_mission_is_never_queued_twice() {
        let mut q = FairQueue::new(config(10, 10));
        let e = entry("u", "m", None);
        assert_eq!(q.push(e.clone(), t0()), Pushed::Queued(Tier::OnTime));
        assert_eq!(q.push(e.clone(), t0()), Pushed::AlreadyQueued);
        assert_eq!(q.len(), 1);
        let ready = q.pop_ready().unwrap();
        assert_eq!(ready.queued_at, t0());
        assert_eq!(q.push(e.clone(), t0()), Pushed::InFlight);
        assert!(q.is_empty());
        q.finish(&e.key);
        assert_eq!(q.push(e, t0()), Pushed::Queued(Tier::OnTime));
    }

    #[test]
    fn an_agent_learnt_late_requeues_the_run_in_its_place() {
        let mut q = FairQueue::new(config(10, 10));
        for m in ["m0", "m1", "m2"] {
            q.push(entry("u", m, None), t0());
        }
        let (m0, m1) = (q.pop_ready().unwrap(), q.pop_ready().unwrap());
        let agent = AgentLimit {
            agent_id: "A".into(),
            max_concurrent: 1,
        };
        assert_eq!(q.attach_agent(&m0.entry.key, agent.clone()), Attached::Run);
        assert_eq!(
            q.attach_agent(&m0.entry.key, agent.clone()),
            Attached::NotInFlight
        );
        assert_eq!(q.attach_agent(&m1.entry.key, agent), Attached::Requeued);
        assert_eq!(
            q.user_counts("u"),
            UserCounts {
                queued: 2,
                in_flight: 1
            }
        );
        // m2 has no agent and may run; m1 waits for A.
        assert_eq!(q.pop_ready().unwrap().entry.key, MissionKey::new("u", "m2"));
        assert_eq!(q.pop_ready(), None);
        q.finish(&m0.entry.key);
        let again = q.pop_ready().unwrap();
        assert_eq!((again.entry.key, again.queued_at), (m1.entry.key, t0()));
        assert_eq!(q.agent_in_flight("u", "A"), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push {
            user: u8,
            mission: u8,
            agent: Option<u8>,
            late: bool,
        },
        Pop,
        Finish(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..4, 0u8..5, proptest::option::of(0u8..2), any::<bool>())
                .prop_map(|(user, mission, agent, late)| Op::Push { user, mission, agent, late }),
            3 => Just(Op::Pop),
            2 => any::<usize>().prop_map(Op::Finish),
        ]
    }

    const TOTAL: usize = 5;
    const PER_USER: usize = 2;

    fn agent_max(agent: u8) -> usize {
        1 + agent as usize % 2
    }

    /// What the queue should hold, kept independently of its implementation.
    #[derive(Default)]
    struct Model {
        /// (user, mission, agent, tier), in push order.
        queued: Vec<(u8, u8, Option<u8>, Tier)>,
        in_flight: Vec<(u8, u8, Option<u8>)>,
        /// Ring order: when the user joined or was last served.
        ring_pos: HashMap<u8, u64>,
        clock: u64,
        pops: usize,
        accepted: usize,
    }

    impl Model {
        fn user_in_flight(&self, user: u8) -> usize {
            self.in_flight.iter().filter(|e| e.0 == user).count()
        }
        fn agent_in_flight(&self, user: u8, agent: u8) -> usize {
            self.in_flight
                .iter()
                .filter(|e| e.0 == user && e.2 == Some(agent))
                .count()
        }
        fn eligible(&self, e: &(u8, u8, Option<u8>, Tier), capped: bool) -> bool {
            self.in_flight.len() < TOTAL
                && (!capped || self.user_in_flight(e.0) < PER_USER)
                && e.2
                    .is_none_or(|a| self.agent_in_flight(e.0, a) < agent_max(a))
        }
        fn tick(&mut self) -> u64 {
            self.clock += 1;
            self.clock
        }
    }

    fn key(user: u8, mission: u8) -> MissionKey {
        MissionKey::new(&format!("u{user}"), &format!("m{mission}"))
    }

    fn push(
        q: &mut FairQueue,
        m: &mut Model,
        user: u8,
        mission: u8,
        agent: Option<u8>,
        late: bool,
    ) -> Result<(), TestCaseError> {
        let mut e = entry(&format!("u{user}"), &format!("m{mission}"), None);
        e.agent = agent.map(|a| AgentLimit {
            agent_id: format!("a{a}"),
            max_concurrent: agent_max(a),
        });
        e.due_at = Some(if late {
            t0() - Duration::hours(1)
        } else {
            t0() - Duration::minutes(1)
        });
        let tier = if late { Tier::CatchUp } else { Tier::OnTime };
        let expected = if m.in_flight.iter().any(|e| (e.0, e.1) == (user, mission)) {
            Pushed::InFlight
        } else if m.queued.iter().any(|e| (e.0, e.1) == (user, mission)) {
            Pushed::AlreadyQueued
        } else {
            if !m.queued.iter().any(|e| e.0 == user) {
                let at = m.tick();
                m.ring_pos.insert(user, at);
            }
            m.queued.push((user, mission, agent, tier));
            m.accepted += 1;
            Pushed::Queued(tier)
        };
        prop_assert_eq!(q.push(e, t0()), expected);
        Ok(())
    }

    fn pop(q: &mut FairQueue, m: &mut Model) -> Result<bool, TestCaseError> {
        let got = q.pop_ready();
        let eligible: Vec<usize> = (0..m.queued.len())
            .filter(|&i| m.eligible(&m.queued[i], false))
            .collect();
        let Some(best_tier) = eligible.iter().map(|&i| m.queued[i].3).min() else {
            prop_assert!(got.is_none(), "nothing was eligible, got {:?}", got);
            return Ok(false);
        };
        let Some(got) = got else {
            return Err(TestCaseError::fail("an entry was eligible, pop gave none"));
        };
        // On time before catch-up.
        prop_assert_eq!(got.tier, best_tier);
        let in_tier: Vec<usize> = eligible
            .into_iter()
            .filter(|&i| m.queued[i].3 == best_tier)
            .collect();
        // Within the cap first; over it only when nobody within it may start.
        let within: Vec<usize> = in_tier
            .iter()
            .copied()
            .filter(|&i| m.eligible(&m.queued[i], true))
            .collect();
        let in_tier = if within.is_empty() { in_tier } else { within };
        // Round robin: the eligible user first in the ring; FIFO within the user.
        let user = in_tier
            .iter()
            .map(|&i| m.queued[i].0)
            .min_by_key(|u| m.ring_pos[u])
            .unwrap();
        let index = *in_tier.iter().find(|&&i| m.queued[i].0 == user).unwrap();
        let (u, mission, agent, _) = m.queued.remove(index);
        prop_assert_eq!(&got.entry.key, &key(u, mission));
        m.in_flight.push((u, mission, agent));
        m.pops += 1;
        if m.queued.iter().any(|e| e.0 == u) {
            let at = m.tick();
            m.ring_pos.insert(u, at);
        } else {
            m.ring_pos.remove(&u);
        }
        Ok(true)
    }

    fn check_counts(q: &FairQueue, m: &Model) -> Result<(), TestCaseError> {
        prop_assert_eq!(q.len(), m.queued.len());
        prop_assert_eq!(q.in_flight(), m.in_flight.len());
        prop_assert!(q.in_flight() <= TOTAL);
        for user in 0..4u8 {
            let counts = q.user_counts(&format!("u{user}"));
            prop_assert_eq!(counts.in_flight, m.user_in_flight(user));
            for agent in 0..2u8 {
                let running = q.agent_in_flight(&format!("u{user}"), &format!("a{agent}"));
                prop_assert!(running <= agent_max(agent));
                prop_assert_eq!(running, m.agent_in_flight(user, agent));
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn caps_order_and_fairness_hold_and_nothing_is_lost(ops in proptest::collection::vec(op(), 1..120)) {
            let mut q = FairQueue::new(config(TOTAL, PER_USER));
            let mut m = Model::default();
            for op in ops {
                match op {
                    Op::Push { user, mission, agent, late } => push(&mut q, &mut m, user, mission, agent, late)?,
                    Op::Pop => { pop(&mut q, &mut m)?; }
                    Op::Finish(i) if !m.in_flight.is_empty() => {
                        let (u, mission, _) = m.in_flight.remove(i % m.in_flight.len());
                        prop_assert!(q.finish(&key(u, mission)));
                    }
                    Op::Finish(_) => {}
                }
                check_counts(&q, &m)?;
            }
            // Drain: every accepted entry comes out exactly once.
            loop {
                while pop(&mut q, &mut m)? {}
                let Some((u, mission, _)) = m.in_flight.pop() else { break };
                prop_assert!(q.finish(&key(u, mission)));
                check_counts(&q, &m)?;
            }
            prop_assert_eq!(m.pops, m.accepted);
            prop_assert!(q.is_empty());
            prop_assert_eq!(q.users_waiting(), 0);
        }
    }
}
