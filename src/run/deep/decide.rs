//! The pure core of a mission's deep research job: what a run does with the
//! job it finds (submit, poll, fall back) and with what a poll said (wait,
//! use the answer, drop the job). No I/O; `super` does the calls.

use chrono::{DateTime, Duration, Utc};

/// `research_jobs.state`: the strings live here and nowhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Submitted; mana-research has not finished it (as last seen).
    Pending,
    /// Finished with an answer, for the job's slot.
    Completed,
    /// Ended without an answer (or given up on): the job's slot falls back.
    Dropped,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Completed => "completed",
            JobState::Dropped => "dropped",
        }
    }

    pub fn parse(text: &str) -> Option<JobState> {
        [JobState::Pending, JobState::Completed, JobState::Dropped]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A mission's job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The slot (`nextRunAt`) the job answers for.
    pub slot: String,
    pub task_id: String,
    pub provider_id: String,
    pub state: JobState,
    pub submitted_at: DateTime<Utc>,
}

/// What a run does first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    /// No job for this slot: submit one (and wait for it).
    Submit,
    /// Ask mana-research where the job stands (or for its answer again).
    Poll,
    /// The job has been pending longer than allowed: drop it, fall back.
    DropTooOld,
    /// This slot's job ended without an answer: fall back.
    FallBack,
}

/// The first step, from the mission's job. A pending job is followed
/// whatever slot it was submitted for (the mission's `nextRunAt` may have
/// been moved while it ran); a finished one answers only for its slot.
pub fn first(job: Option<&Job>, slot: &str, now: DateTime<Utc>, max_age: Duration) -> First {
    let Some(job) = job else {
        return First::Submit;
    };
    match job.state {
        JobState::Pending if now - job.submitted_at > max_age => First::DropTooOld,
        JobState::Pending => First::Poll,
        _ if job.slot != slot => First::Submit,
        JobState::Completed => First::Poll,
        JobState::Dropped => First::FallBack,
    }
}

/// What a poll said, without the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// `queued` or `running`.
    Pending,
    Completed,
    /// `failed` or `cancelled`.
    Ended,
    /// HTTP 404 (the task is unknown) or 401 (we are refused).
    Gone,
    /// No usable answer this time (timeout, refused connection, 5xx, junk).
    Unavailable,
}

/// What the run does after the poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still pending: skip the run, poll again after the poll interval.
    Wait,
    /// Plan with the answer; `first_time` when the job just completed.
    Use { first_time: bool },
    /// Give the job up and fall back; `counted` as a failed job.
    Drop { counted: bool },
}

impl Verdict {
    /// The job's state after this verdict.
    pub fn state(self) -> JobState {
        match self {
            Verdict::Wait => JobState::Pending,
            Verdict::Use { .. } => JobState::Completed,
            Verdict::Drop { .. } => JobState::Dropped,
        }
    }
}

/// The verdict on a poll of a job in `state`. A pending job waits through
/// an unavailable service (its age bounds the wait); a completed one whose
/// answer cannot be read again falls back rather than hold the run.
pub fn after_poll(state: JobState, seen: Seen) -> Verdict {
    let pending = state == JobState::Pending;
    match seen {
        Seen::Completed => Verdict::Use {
            first_time: pending,
        },
        Seen::Pending | Seen::Unavailable if pending => Verdict::Wait,
        Seen::Ended | Seen::Gone if pending => Verdict::Drop { counted: true },
        _ => Verdict::Drop { counted: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: i64 = 3_600;

    fn job(state: JobState, slot: &str, age_secs: i64, now: DateTime<Utc>) -> Job {
        Job {
            slot: slot.into(),
            task_id: "t".into(),
            provider_id: "p".into(),
            state,
            submitted_at: now - Duration::seconds(age_secs),
        }
    }

    #[test]
    fn the_first_step_follows_the_job() {
        let now = Utc::now();
        let max = Duration::hours(6);
        let at = |state, slot, age| first(Some(&job(state, slot, age, now)), "s1", now, max);
        assert_eq!(first(None, "s1", now, max), First::Submit);
        assert_eq!(at(JobState::Pending, "s1", HOUR), First::Poll);
        assert_eq!(at(JobState::Pending, "s0", HOUR), First::Poll);
        assert_eq!(at(JobState::Pending, "s1", 6 * HOUR + 1), First::DropTooOld);
        assert_eq!(at(JobState::Completed, "s1", 9 * HOUR), First::Poll);
        assert_eq!(at(JobState::Completed, "s0", HOUR), First::Submit);
        assert_eq!(at(JobState::Dropped, "s1", HOUR), First::FallBack);
        assert_eq!(at(JobState::Dropped, "s0", HOUR), First::Submit);
    }

    #[test]
    fn polls_of_a_pending_job() {
        let p = JobState::Pending;
        assert_eq!(after_poll(p, Seen::Pending), Verdict::Wait);
        assert_eq!(after_poll(p, Seen::Unavailable), Verdict::Wait);
        assert_eq!(
            after_poll(p, Seen::Completed),
            Verdict::Use { first_time: true }
        );
        assert_eq!(after_poll(p, Seen::Ended), Verdict::Drop { counted: true });
        assert_eq!(after_poll(p, Seen::Gone), Verdict::Drop { counted: true });
    }

    #[test]
    fn rereading_a_completed_job_never_waits_or_counts_twice() {
        let c = JobState::Completed;
        assert_eq!(
            after_poll(c, Seen::Completed),
            Verdict::Use { first_time: false }
        );
        for seen in [Seen::Pending, Seen::Unavailable, Seen::Ended, Seen::Gone] {
            assert_eq!(after_poll(c, seen), Verdict::Drop { counted: false });
        }
    }

    #[test]
    fn states_round_trip() {
        for s in [JobState::Pending, JobState::Completed, JobState::Dropped] {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("running"), None);
    }

    fn any_state() -> impl Strategy<Value = JobState> {
        prop_oneof![
            Just(JobState::Pending),
            Just(JobState::Completed),
            Just(JobState::Dropped)
        ]
    }

    fn any_seen() -> impl Strategy<Value = Seen> {
        prop_oneof![
            Just(Seen::Pending),
            Just(Seen::Completed),
            Just(Seen::Ended),
            Just(Seen::Gone),
            Just(Seen::Unavailable)
        ]
    }

    proptest! {
        /// A job pending past the maximum age is never polled (never waited
        /// on again), and a finished job never answers for another slot.
        #[test]
        fn no_job_is_waited_on_past_its_age_or_reused_for_another_slot(
            state in any_state(),
            same_slot in any::<bool>(),
            age in 0i64..(48 * HOUR),
            max_hours in 1i64..=168,
        ) {
            let now = Utc::now();
            let max = Duration::hours(max_hours);
            let slot = if same_slot { "s1" } else { "s0" };
            let step = first(Some(&job(state, slot, age, now)), "s1", now, max);
            if state == JobState::Pending && age > max_hours * HOUR {
                prop_assert_eq!(step, First::DropTooOld);
            }
            if state != JobState::Pending && !same_slot {
                prop_assert_eq!(step, First::Submit);
            }
        }

        /// Only a pending job can make a run wait, and only a completed
        /// poll yields an answer.
        #[test]
        fn only_pending_jobs_wait_and_only_completions_are_used(
            state in any_state(),
            seen in any_seen(),
        ) {
            let verdict = after_poll(state, seen);
            if verdict == Verdict::Wait {
                prop_assert_eq!(state, JobState::Pending);
            }
            prop_assert_eq!(matches!(verdict, Verdict::Use { .. }), seen == Seen::Completed);
        }
    }
}
