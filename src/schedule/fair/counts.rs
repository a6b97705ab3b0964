//! What a [`FairQueue`] holds, for metrics and tests.

use super::FairQueue;

/// One user's share, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserCounts {
    pub queued: usize,
    pub in_flight: usize,
}

impl FairQueue {
    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Runs handed out and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Entries waiting per tier: `(on_time, catch_up)`.
    pub fn queued_by_tier(&self) -> (usize, usize) {
        let mut counts = (0, 0);
        for lane in self.users.values().flat_map(|u| &u.lanes) {
            counts.0 += lane.tiers[0].len();
            counts.1 += lane.tiers[1].len();
        }
        counts
    }

    /// One user's queued and running entries.
    pub fn user_counts(&self, user_id: &str) -> UserCounts {
        self.users
            .get(user_id)
            .map_or_else(UserCounts::default, |u| UserCounts {
                queued: u.queued,
                in_flight: u.in_flight,
            })
    }

    /// Users with queued entries (the ring's length: one round).
    pub fn users_waiting(&self) -> usize {
        self.ring.len()
    }

    /// Runs of one agent in flight.
    pub fn agent_in_flight(&self, user_id: &str, agent_id: &str) -> usize {
        let key = (user_id.to_string(), agent_id.to_string());
        self.agents.get(&key).copied().unwrap_or(0)
    }
}
