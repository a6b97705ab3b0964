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
//! Queue ids come from an identity sequence: drawn in order, committed in
//! any order, so a claim can see id 11 while id 10 belongs to a transaction
//! that has not committed yet. Such an id is a *hole*. The bound is the
//! smallest hole still open, else one past the largest id claimed. Why a
//! hole may close, and why nothing committed is ever below the bound, is
//! argued in docs/design.md ("Why the claim cannot skip a change"); in
//! short:
//!
//! * the transaction that drew a hole's id already had its xid (the
//!   trigger fires after its `sync_changes` insert), before the claim's
//!   snapshot was taken, so that xid is below the claim's own xid, which
//!   its DELETE took after the snapshot: each hole is tagged with the
//!   claim's xid;
//! * a later claim whose own snapshot has `xmin` above a hole's tag saw
//!   every transaction that could have drawn it ended: a committed one's
//!   row was visible to that claim and taken (if the claim covered it), an
//!   aborted one's id never appears. So the hole closes.
//!
//! The `xmin` is the claim statement's own snapshot's, read in the same
//! statement, never a later one's; and a change of the queue's identity (a
//! reinstalled kit, `RESTART IDENTITY`) or of the server (a restart, or a
//! crash of any server process, which keeps the start time but empties the
//! unlogged incarnation of migration 0013: either may lose asynchronously
//! committed claims) starts the mark afresh.
//!
//! Holes are kept as ranges; past [`MAX_RANGES`] the bound stops advancing
//! (correct, only slower) until they close.

use std::collections::BTreeMap;

/// Open hole ranges tracked at most.
pub const MAX_RANGES: usize = 4_096;

/// What a claim statement returns besides its rows lives with the
/// statement (`store::queue`), plain data this core reads.
pub use crate::store::queue::{Horizon, QueueEpoch};

/// One run of ids `start..=end` that a claim passed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hole {
    end: i64,
    /// The xid of the claim that found it: every transaction that could
    /// have drawn these ids has a smaller one.
    tag: i64,
}

/// What [`LowWater::observe`] made of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// The mark moved (or stayed) as usual.
    Kept,
    /// The claim read another queue than the last one: the mark starts
    /// from the beginning, and the caller should claim again at once.
    Restarted,
}

/// The applier's low-water mark (in memory; a restarted applier starts at
/// the beginning of the queue once).
#[derive(Debug, Clone, Default)]
pub struct LowWater {
    /// One past the largest id ever claimed.
    floor: i64,
    /// Open holes by first id.
    holes: BTreeMap<i64, Hole>,
    /// The queue the mark belongs to (None before the first claim).
    epoch: Option<QueueEpoch>,
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

    /// Takes in a committed claim that read from [`Self::bound`]: `claimed`
    /// are the ids it deleted (any order), `full` whether it returned as
    /// many rows as its limit, `horizon` what its statement saw.
    pub fn observe(&mut self, claimed: &[i64], full: bool, horizon: Horizon) -> Observed {
        if self.epoch.is_some_and(|e| e != horizon.epoch) {
            *self = LowWater {
                epoch: Some(horizon.epoch),
                ..LowWater::default()
            };
            return Observed::Restarted;
        }
        self.epoch = Some(horizon.epoch);
        let mut ids = claimed.to_vec();
        ids.sort_unstable();
        // Rows up to here that were visible to the claim were all taken.
        let covered_end = if full {
            ids.last().copied().unwrap_or(i64::MIN)
        } else {
            i64::MAX
        };
        self.holes
            .retain(|_, hole| hole.end > covered_end || hole.tag >= horizon.xmin);
        for &id in &ids {
            self.close(id);
        }
        if let Some(&max) = ids.last() {
            // No xid cannot happen for a claim that deleted rows; tagged
            // with the largest, such holes close only when their ids come.
            let tag = horizon.xid.unwrap_or(i64::MAX);
            if self.open_gaps(&ids, tag) && max >= self.floor {
                self.floor = max + 1;
            }
        }
        Observed::Kept
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
    fn open_gaps(&mut self, sorted: &[i64], tag: i64) -> bool {
        let floor = self.floor;
        let mut next = floor;
        for &id in sorted.iter().filter(|&&id| id >= floor) {
            if id > next && !self.add_hole(next, id - 1, tag) {
                self.floor = next;
                return false;
            }
            next = id + 1;
        }
        true
    }

    fn add_hole(&mut self, start: i64, end: i64, tag: i64) -> bool {
        if self.holes.len() >= MAX_RANGES {
            return false;
        }
        self.holes.insert(start, Hole { end, tag });
        true
    }
}

#[cfg(test)]
#[path = "low_water_tests.rs"]
mod tests;
