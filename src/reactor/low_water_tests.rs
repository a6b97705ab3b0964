use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;

const EPOCH: QueueEpoch = QueueEpoch {
    sequence_filenode: 1,
    server_started_micros: 1,
    incarnation: None,
};

fn seen(xmin: i64, xid: i64) -> Horizon {
    Horizon {
        xmin,
        xid: Some(xid),
        epoch: EPOCH,
    }
}

/// A mark that has claimed id 0 (the ids of the tests start at 1).
fn primed() -> LowWater {
    let mut lw = LowWater::default();
    lw.observe(&[0], false, seen(100, 100));
    lw
}

#[test]
fn a_fresh_mark_reads_from_the_start_and_keeps_what_it_skipped_open() {
    let mut lw = LowWater::default();
    assert_eq!(lw.bound(), 0);
    lw.observe(&[5], false, seen(90, 100));
    assert_eq!(lw.bound(), 0, "ids 0..=4 may still be in flight");
    lw.observe(&[], false, seen(100, 0));
    assert_eq!(lw.bound(), 0, "the claim of xid 100 itself may be running");
    lw.observe(&[], false, seen(101, 0));
    assert_eq!(lw.bound(), 6);
}

#[test]
fn contiguous_claims_move_the_bound_past_them() {
    let mut lw = primed();
    assert_eq!(lw.bound(), 1);
    lw.observe(&[3, 1, 2], false, seen(100, 101));
    assert_eq!(lw.bound(), 4);
    lw.observe(&[], false, seen(100, 0));
    assert_eq!(lw.bound(), 4, "an empty claim changes nothing");
}

#[test]
fn a_hole_holds_the_bound_until_its_row_is_claimed() {
    let mut lw = primed();
    lw.observe(&[1, 2, 5], false, seen(90, 101));
    assert_eq!(lw.bound(), 3);
    assert_eq!(lw.open_holes(), 1);
    lw.observe(&[4], false, seen(90, 102));
    assert_eq!(lw.bound(), 3, "3 is still open");
    lw.observe(&[3], false, seen(90, 103));
    assert_eq!(lw.bound(), 6);
    assert_eq!(lw.open_holes(), 0);
}

#[test]
fn a_hole_closes_once_the_claim_that_found_it_and_every_older_xid_ended() {
    let mut lw = primed();
    lw.observe(&[1, 3], false, seen(90, 110));
    assert_eq!(lw.bound(), 2);
    lw.observe(&[], false, seen(105, 0));
    assert_eq!(lw.bound(), 2, "xid 105 may have drawn id 2 and not ended");
    lw.observe(&[], false, seen(110, 0));
    assert_eq!(lw.bound(), 2, "xmin equal to the tag: xid 110 still runs");
    lw.observe(&[], false, seen(111, 0));
    assert_eq!(lw.bound(), 4, "rolled back or filled: gone");
}

#[test]
fn a_full_claim_closes_only_the_holes_it_covered() {
    let mut lw = primed();
    lw.observe(&[1, 3, 8], false, seen(90, 110));
    assert_eq!(lw.open_holes(), 2, "2 and 4..=7");
    // Limit 1, xmin past the tag, 5 committed meanwhile: 2 was covered
    // (nothing visible below 5 was left), 4..=7 reaches past the claim's
    // last row, where rows may be visible still.
    lw.observe(&[5], true, seen(120, 121));
    assert_eq!(lw.bound(), 4);
    lw.observe(&[], false, seen(122, 0));
    assert_eq!(lw.bound(), 9);
}

#[test]
fn another_queue_starts_the_mark_afresh() {
    let mut lw = primed();
    lw.observe(&[1, 2, 3], false, seen(100, 101));
    assert_eq!(lw.bound(), 4);
    let reinstalled = Horizon {
        epoch: QueueEpoch {
            sequence_filenode: 2,
            ..EPOCH
        },
        ..seen(102, 103)
    };
    assert_eq!(lw.observe(&[7], false, reinstalled), Observed::Restarted);
    assert_eq!(lw.bound(), 0);
    assert_eq!(lw.observe(&[1], false, reinstalled), Observed::Kept);
    assert_eq!(lw.bound(), 0, "id 0 was not seen in the new queue");
}

/// A crash restart empties the incarnation (migration 0013) and keeps the
/// start time: the batches it lost are below the mark, which starts again.
#[test]
fn a_crash_restart_starts_the_mark_afresh() {
    let before = Horizon {
        epoch: QueueEpoch {
            incarnation: Some(uuid::Uuid::from_u128(1)),
            ..EPOCH
        },
        ..seen(100, 101)
    };
    let mut lw = LowWater::default();
    lw.observe(&[0, 1, 2], false, before);
    assert_eq!(lw.bound(), 3);
    let crashed = Horizon {
        epoch: EPOCH,
        ..seen(102, 103)
    };
    assert_eq!(lw.observe(&[], false, crashed), Observed::Restarted);
    assert_eq!(lw.bound(), 0, "the lost batches' rows are read again");
}

#[test]
fn too_many_holes_stop_the_bound_at_the_first_untracked_one() {
    let mut lw = LowWater::default();
    let ids: Vec<i64> = (0..=(MAX_RANGES as i64 + 10)).map(|i| i * 2 + 1).collect();
    lw.observe(&ids, false, seen(1, 2));
    assert_eq!(lw.open_holes(), MAX_RANGES);
    assert_eq!(lw.bound(), 0, "the first hole, id 0");
    let untracked = 2 * MAX_RANGES as i64;
    lw.observe(&[], false, seen(3, 0));
    assert_eq!(
        lw.bound(),
        untracked,
        "tracked holes closed, reads resume there"
    );
}

/// What happens next in the model of Postgres below.
#[derive(Debug, Clone)]
enum Op {
    /// A sync transaction takes its xid (its `sync_changes` insert) and
    /// draws a queue id.
    Begin,
    /// The n-th running transaction draws another queue id.
    Draw(usize),
    Commit(usize),
    Abort(usize),
    /// The applier claims up to this many rows.
    Claim(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Begin),
        2 => (0usize..8).prop_map(Op::Draw),
        2 => (0usize..8).prop_map(Op::Commit),
        1 => (0usize..8).prop_map(Op::Abort),
        3 => (1usize..5).prop_map(Op::Claim),
    ]
}

/// Postgres as the claim's argument needs it: xids and queue ids drawn in
/// order, transactions that end in any order, a claim that sees what had
/// committed when its statement began and takes its xid after that.
#[derive(Default)]
struct Model {
    next_xid: i64,
    next_id: i64,
    /// Running transactions: xid and the ids they drew.
    running: Vec<(i64, Vec<i64>)>,
    committed: BTreeSet<i64>,
    claimed: BTreeSet<i64>,
    mark: LowWater,
}

impl Model {
    fn xid(&mut self) -> i64 {
        self.next_xid += 1;
        self.next_xid
    }

    fn draw(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    fn apply(&mut self, op: Op) {
        let n = self.running.len();
        match op {
            Op::Begin => {
                let xid = self.xid();
                let id = self.draw();
                self.running.push((xid, vec![id]));
            }
            Op::Draw(i) if n > 0 => {
                let id = self.draw();
                self.running[i % n].1.push(id);
            }
            Op::Commit(i) if n > 0 => {
                let (_, ids) = self.running.remove(i % n);
                self.committed.extend(ids);
            }
            Op::Abort(i) if n > 0 => {
                self.running.remove(i % n);
            }
            Op::Claim(limit) => self.claim(limit),
            _ => {}
        }
    }

    fn claim(&mut self, limit: usize) {
        let xmin = self
            .running
            .iter()
            .map(|(xid, _)| *xid)
            .min()
            .unwrap_or(self.next_xid + 1);
        let bound = self.mark.bound();
        let take: Vec<i64> = self
            .committed
            .difference(&self.claimed)
            .copied()
            .filter(|&id| id >= bound)
            .take(limit)
            .collect();
        let xid = (!take.is_empty()).then(|| self.xid());
        self.claimed.extend(&take);
        let horizon = Horizon {
            xmin,
            xid,
            epoch: EPOCH,
        };
        self.mark.observe(&take, take.len() == limit, horizon);
    }

    /// The smallest id that is or may still become visible and is not
    /// claimed yet.
    fn first_pending(&self) -> Option<i64> {
        let in_flight = self.running.iter().flat_map(|(_, ids)| ids.iter().copied());
        let unclaimed = self.committed.difference(&self.claimed).copied();
        in_flight.chain(unclaimed).min()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Whatever order transactions take ids, draw queue ids, end and are
    /// claimed in, no id that is or may become visible is ever below the
    /// bound, and once all have ended every committed id is claimed.
    #[test]
    fn no_committed_id_is_ever_skipped(ops in proptest::collection::vec(op(), 1..120)) {
        let mut m = Model::default();
        for op in ops {
            m.apply(op);
            if let Some(first) = m.first_pending() {
                prop_assert!(m.mark.bound() <= first, "bound {} passed {first}", m.mark.bound());
            }
        }
        while !m.running.is_empty() {
            m.apply(Op::Commit(0));
        }
        for _ in 0..=m.next_id {
            m.apply(Op::Claim(3));
        }
        prop_assert_eq!(&m.claimed, &m.committed);
    }
}
