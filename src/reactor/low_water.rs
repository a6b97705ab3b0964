//! Where the applier's claim starts reading `change_queue`: a low-water
//! mark, so a claim never walks the index entries of rows it already
//! deleted.
//!
//! The applier deletes every row it claims. Until (auto)vacuum runs, the
//! primary-key index still holds an entry for each deleted row, and a claim
//! that reads "the oldest rows" walks them all: after a backfill of 10^6
//! changes that is about 2,700 index pages, some 5 ms, for every batch. The
//! service cannot VACUUM the queue (the DBA's kit owns it, on purpose), so
//! the claim reads `id >= bound` instead, and this module decides the bound.
//!
//! Queue ids come from an identity sequence: they are allocated in order but
//! committed in any order, so a claim can see id 11 while id 10 belongs to a
//! transaction that has not committed yet. Such an id is a *hole*. The
//! bound is the smallest hole still open, else one past the largest id
//! claimed. A hole closes when its row is claimed, or when every transaction
//! that could have allocated it has ended: each hole records the snapshot
//! `xmax` seen right after the claim that found it (the allocating
//! transaction's xid is below it), and it is dropped once the database's
//! `xmin` has passed that value, i.e. once that transaction committed (its
//! row is then visible and claimed, and the hole was closed by that claim)
//! or rolled back (the id will never appear). A minimum age guards the
//! microseconds between a sequence value being drawn and its transaction's
//! xid being assigned.
//!
//! Holes are kept as ranges; past [`MAX_RANGES`] the bound stops advancing
//! (correct, only slower) until they close.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Open hole ranges tracked at most.
pub const MAX_RANGES: usize = 4_096;
/// A hole younger than this is kept whatever the transaction horizon says.
pub const MIN_HOLE_AGE: Duration = Duration::from_secs(1);

/// The transaction horizon read right after a claim
/// (`pg_current_snapshot()`): every xid below `xmin` has ended; every xid
/// assigned so far is below `xmax`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    pub xmin: i64,
    pub xmax: i64,
}

/// One run of ids `start..=end` that a claim passed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hole {
    end: i64,
    seen: Instant,
    /// `xmax` when first seen: the hole's transaction has an xid below it.
    tag: i64,
}

/// The applier's low-water mark (in memory; a restarted applier starts at
/// the beginning of the queue once).
#[derive(Debug, Clone, Default)]
pub struct LowWater {
    /// One past the largest id ever claimed.
    floor: i64,
    /// Open holes by first id.
    holes: BTreeMap<i64, Hole>,
}

impl LowWater {
    /// The smallest id a claim must read from.
    pub fn bound(&self) -> i64 {
        self.holes
            .keys()
            .next()
            .map_or(self.floor, |&first| first.min(self.floor))
    }

    /// Open hole ranges (for tests and logs).
    pub fn open_holes(&self) -> usize {
        self.holes.len()
    }

    /// Takes in a committed claim: `claimed` are the ids it deleted (any
    /// order), `horizon` what the database said right after it.
    pub fn observe(&mut self, claimed: &[i64], horizon: Horizon, now: Instant) {
        let mut ids = claimed.to_vec();
        ids.sort_unstable();
        for &id in &ids {
            self.close(id);
        }
        if let Some(&max) = ids.last() {
            if self.open_gaps(&ids, horizon.xmax, now) && max >= self.floor {
                self.floor = max + 1;
            }
        }
        self.holes.retain(|_, hole| {
            now.duration_since(hole.seen) < MIN_HOLE_AGE || horizon.xmin < hole.tag
        });
    }

    /// Removes `id` from the hole that holds it (splitting the range).
    fn close(&mut self, id: i64) {
        let Some((&start, &hole)) = self.holes.range(..=id).next_back() else {
            return;
        };
        if id > hole.end {
            return;
        }
        self.holes.remove(&start);
        if start < id {
            self.holes.insert(
                start,
                Hole {
                    end: id - 1,
                    ..hole
                },
            );
        }
        if id < hole.end {
            self.holes.insert(id + 1, hole);
        }
    }

    /// Records the ids at or past the floor that the claim skipped; false
    /// when there were too many to track (the floor then stays at the first
    /// untracked one, and claims read from there until the holes close).
    fn open_gaps(&mut self, sorted: &[i64], tag: i64, now: Instant) -> bool {
        let floor = self.floor;
        let mut next = floor;
        for &id in sorted.iter().filter(|&&id| id >= floor) {
            if id > next && !self.add_hole(next, id - 1, tag, now) {
                self.floor = next;
                return false;
            }
            next = id + 1;
        }
        true
    }

    fn add_hole(&mut self, start: i64, end: i64, tag: i64, now: Instant) -> bool {
        if self.holes.len() >= MAX_RANGES {
            return false;
        }
        self.holes.insert(
            start,
            Hole {
                end,
                seen: now,
                tag,
            },
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LATER: Duration = Duration::from_secs(2);

    fn horizon(xmin: i64, xmax: i64) -> Horizon {
        Horizon { xmin, xmax }
    }

    /// A mark that has claimed id 0 (the ids of the tests start at 1).
    fn primed(now: Instant) -> LowWater {
        let mut lw = LowWater::default();
        lw.observe(&[0], horizon(100, 100), now);
        lw
    }

    #[test]
    fn a_fresh_mark_reads_from_the_start_and_keeps_what_it_skipped_open() {
        let mut lw = LowWater::default();
        assert_eq!(lw.bound(), 0);
        let now = Instant::now();
        lw.observe(&[5], horizon(90, 100), now);
        assert_eq!(lw.bound(), 0, "ids 0..=4 may still be in flight");
        lw.observe(&[], horizon(101, 101), now + LATER);
        assert_eq!(lw.bound(), 6);
    }

    #[test]
    fn contiguous_claims_move_the_bound_past_them() {
        let now = Instant::now();
        let mut lw = primed(now);
        assert_eq!(lw.bound(), 1);
        lw.observe(&[3, 1, 2], horizon(100, 100), now);
        assert_eq!(lw.bound(), 4);
        lw.observe(&[], horizon(100, 100), now);
        assert_eq!(lw.bound(), 4, "an empty claim changes nothing");
    }

    #[test]
    fn a_hole_holds_the_bound_until_its_row_is_claimed() {
        let now = Instant::now();
        let mut lw = primed(now);
        lw.observe(&[1, 2, 5], horizon(90, 100), now);
        assert_eq!(lw.bound(), 3);
        assert_eq!(lw.open_holes(), 1);
        lw.observe(&[4], horizon(90, 100), now + LATER);
        assert_eq!(lw.bound(), 3, "3 is still open");
        lw.observe(&[3], horizon(90, 100), now + LATER);
        assert_eq!(lw.bound(), 6);
        assert_eq!(lw.open_holes(), 0);
    }

    #[test]
    fn a_hole_closes_once_every_transaction_that_could_fill_it_has_ended() {
        let now = Instant::now();
        let mut lw = primed(now);
        lw.observe(&[1, 3], horizon(90, 100), now);
        assert_eq!(lw.bound(), 2);
        lw.observe(&[], horizon(99, 105), now + LATER);
        assert_eq!(lw.bound(), 2, "xid 99 may have drawn id 2 and not ended");
        lw.observe(&[], horizon(101, 105), now + Duration::from_millis(10));
        assert_eq!(lw.bound(), 2, "too young, whatever the horizon");
        lw.observe(&[], horizon(101, 105), now + LATER);
        assert_eq!(lw.bound(), 4, "rolled back or filled: gone");
    }

    #[test]
    fn too_many_holes_stop_the_bound_at_the_first_untracked_one() {
        let mut lw = LowWater::default();
        let now = Instant::now();
        let ids: Vec<i64> = (0..=(MAX_RANGES as i64 + 10)).map(|i| i * 2 + 1).collect();
        lw.observe(&ids, horizon(1, 2), now);
        assert_eq!(lw.open_holes(), MAX_RANGES);
        assert_eq!(lw.bound(), 0, "the first hole, id 0");
        let untracked = 2 * MAX_RANGES as i64;
        lw.observe(&[], horizon(3, 3), now + LATER);
        assert_eq!(
            lw.bound(),
            untracked,
            "tracked holes closed, reads resume there"
        );
    }

    proptest! {
        /// Whatever order ids commit and are claimed in, no id that may
        /// still appear is ever below the bound: a visible id below the
        /// bound was claimed, and an id still in flight is a hole.
        #[test]
        fn no_pending_id_is_ever_skipped(
            commits in proptest::collection::vec(0usize..40, 1..60),
            batch in 1usize..8,
        ) {
            // Ids 0..n are allocated at once; `commits` decides which id
            // commits at each step (a permutation prefix, built below).
            let n = 40i64;
            let mut order: Vec<i64> = Vec::new();
            for c in commits {
                let id = c as i64;
                if !order.contains(&id) { order.push(id); }
            }
            let mut lw = LowWater::default();
            let mut visible: Vec<i64> = Vec::new();
            let mut claimed: Vec<i64> = Vec::new();
            let now = Instant::now();
            for (step, &id) in order.iter().enumerate() {
                visible.push(id);
                let bound = lw.bound();
                let mut take: Vec<i64> = visible.iter().copied()
                    .filter(|v| *v >= bound && !claimed.contains(v)).collect();
                take.sort_unstable();
                take.truncate(batch);
                claimed.extend(&take);
                // Every id allocated and not committed is in flight: the
                // horizon never passes the tags while any is pending.
                lw.observe(&take, horizon(1, 2), now + LATER * step as u32);
                let pending_or_unclaimed = (0..n)
                    .filter(|i| !claimed.contains(i))
                    .min();
                if let Some(first) = pending_or_unclaimed {
                    prop_assert!(lw.bound() <= first, "bound {} passed {}", lw.bound(), first);
                }
            }
        }
    }
}
