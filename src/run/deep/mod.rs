//! Phase 3b of a run: the mission's deep research job (docs/interfaces.md
//! section 6), right after the agent gates and before any input is
//! resolved, so a mission waiting for its job decrypts nothing and writes no audit row.
//!
//! A mission whose objective or concept asks for deep research submits one
//! job for its slot and is skipped (`skipped-research-pending`) while the job
//! is queued or running: the slot is given back with a retry time
//! `MANA_AI_RESEARCH_POLL_SECS` ahead and the wheel re-arms the mission
//! then, so each poll happens inside the mission's own run, under the run's
//! fair-queue turn and the client's timeouts. A completed job becomes the
//! `__web-research__` input; a failed or cancelled one, one mana-research no
//! longer knows (404) or refuses to show (401), and one pending longer than
//! `MANA_AI_RESEARCH_JOB_MAX_HOURS` are dropped, and the run falls back to
//! the ordinary news research. The decisions are pure (`decide.rs`).

mod decide;

use anyhow::Context;
use chrono::{DateTime, Utc};

use self::decide::{after_poll, first, First, Seen, Verdict};
pub use self::decide::{Job, JobState};
use super::claim::Slot;
use super::claimed::Claimed;
use super::due::DueRun;
use super::gates::GateDecision;
use super::{Outcome, Runner};
use crate::planner::deep_research::{
    deep_research_input, research_query, wants_deep_research, DeepResearchClient, PollStatus,
};
use crate::planner::ResolvedInput;
use crate::store::research_jobs;

/// Deep research as a runner holds it (`RunnerDeps::deep_research`; None: off).
pub struct DeepResearch {
    pub client: DeepResearchClient,
    /// `MANA_AI_RESEARCH_PROVIDER`: the metrics' `provider` label.
    pub provider: String,
    pub poll_interval: std::time::Duration,
    pub max_age: std::time::Duration,
}

/// What the deep research step found.
pub(super) enum Researched {
    /// The run goes on with this research.
    Ready(WebResearch),
    /// The mission's job is pending: the run ends, tried again at `retry_at`.
    Pending { retry_at: DateTime<Utc> },
}

/// The web research a run's inputs get.
pub(super) enum WebResearch {
    /// The news research pre-step, when the mission's words ask for it.
    Usual,
    /// The news research pre-step whatever the words: deep research fell back.
    FallBack,
    /// A completed deep research job's answer.
    Deep(ResolvedInput),
}

impl Runner {
    /// Phase 3b: the deep research job, when configured and asked for.
    pub(super) async fn deep_research(&self, due: &DueRun) -> anyhow::Result<Researched> {
        let Some(deep) = self.deps.deep_research.as_ref() else {
            return Ok(Researched::Ready(WebResearch::Usual));
        };
        let view = due.view();
        if !wants_deep_research(view.objective, view.concept) {
            return Ok(Researched::Ready(WebResearch::Usual));
        }
        let now = self.deps.clock.now();
        let job = self.load_job(&due.slot).await?;
        let max_age = chrono::Duration::from_std(deep.max_age).unwrap_or(chrono::Duration::MAX);
        match (first(job.as_ref(), &due.slot.due_at, now, max_age), job) {
            (First::Poll, Some(job)) => self.poll_job(deep, due, job, now).await,
            (First::DropTooOld, Some(job)) => {
                self.save_job(&due.slot, &job.task_id, JobState::Dropped, now)
                    .await?;
                self.count(deep, Counted::Failed);
                tracing::warn!(task_id = %job.task_id, "deep research job pending past MANA_AI_RESEARCH_JOB_MAX_HOURS; dropped, falling back to the news research");
                Ok(Researched::Ready(WebResearch::FallBack))
            }
            (First::FallBack, _) => Ok(Researched::Ready(WebResearch::FallBack)),
            (First::Submit | First::Poll | First::DropTooOld, _) => {
                let query = research_query(view.objective, view.concept);
                self.submit_job(deep, due, &query, now).await
            }
        }
    }

    /// Submits the mission's job for this slot, then waits for it.
    async fn submit_job(
        &self,
        deep: &DeepResearch,
        due: &DueRun,
        query: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Researched> {
        let submitted = match deep.client.submit(&due.slot.user_id, query).await {
            Ok(submitted) => submitted,
            Err(e) => {
                self.count(deep, Counted::Failed);
                tracing::warn!(error = %e, "deep research submit failed; falling back to the news research");
                return Ok(Researched::Ready(WebResearch::FallBack));
            }
        };
        let job = Job {
            slot: due.slot.due_at.clone(),
            task_id: submitted.task_id,
            provider_id: submitted.provider_id,
            state: JobState::Pending,
            submitted_at: now,
        };
        let mut client = self.deps.pool.get().await.context("connecting")?;
        let tx = crate::db::begin_user(&mut client, &due.slot.user_id).await?;
        research_jobs::put(&tx, &due.slot.user_id, &due.slot.mission_id, &job).await?;
        tx.commit().await?;
        self.count(deep, Counted::Submitted);
        tracing::info!(task_id = %job.task_id, provider = %job.provider_id, "deep research job submitted");
        self.wait_for_job(deep)
    }

    /// Polls the job and acts on the verdict.
    async fn poll_job(
        &self,
        deep: &DeepResearch,
        due: &DueRun,
        job: Job,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Researched> {
        let (seen, answer) = match deep.client.poll(&due.slot.user_id, &job.task_id).await {
            Ok(PollStatus::Queued | PollStatus::Running) => (Seen::Pending, None),
            Ok(PollStatus::Completed(answer)) => (Seen::Completed, Some(answer)),
            Ok(PollStatus::Failed | PollStatus::Cancelled) => (Seen::Ended, None),
            Err(e) if e.is_gone() => {
                tracing::warn!(error = %e, task_id = %job.task_id, "deep research job gone");
                (Seen::Gone, None)
            }
            Err(e) => {
                tracing::warn!(error = %e, task_id = %job.task_id, "deep research poll failed");
                (Seen::Unavailable, None)
            }
        };
        let verdict = after_poll(job.state, seen);
        self.save_job(&due.slot, &job.task_id, verdict.state(), now)
            .await?;
        match (verdict, answer) {
            (Verdict::Wait, _) => self.wait_for_job(deep),
            (Verdict::Use { first_time }, Some(answer)) => {
                if first_time {
                    self.count(deep, Counted::Completed);
                }
                Ok(Researched::Ready(WebResearch::Deep(deep_research_input(
                    &answer,
                ))))
            }
            (Verdict::Drop { counted }, _) => {
                if counted {
                    self.count(deep, Counted::Failed);
                }
                tracing::info!(task_id = %job.task_id, "deep research job ended without an answer; falling back to the news research");
                Ok(Researched::Ready(WebResearch::FallBack))
            }
            (Verdict::Use { .. }, None) => Ok(Researched::Ready(WebResearch::FallBack)),
        }
    }

    /// The job is pending: the run waits one poll interval.
    fn wait_for_job(&self, deep: &DeepResearch) -> anyhow::Result<Researched> {
        let poll = chrono::Duration::from_std(deep.poll_interval)
            .context("MANA_AI_RESEARCH_POLL_SECS out of range")?;
        let retry_at = self.deps.clock.now() + poll;
        Ok(Researched::Pending { retry_at })
    }

    /// The job is pending: the slot goes back uncounted with a retry time
    /// one poll interval ahead, and the wheel re-arms the mission then.
    pub(super) async fn research_pending(
        &self,
        due: &DueRun,
        claimed: Claimed,
        retry_at: DateTime<Utc>,
    ) -> anyhow::Result<Outcome> {
        let decision = GateDecision::SkippedResearchPending;
        let client = self.deps.pool.get().await.context("connecting")?;
        claimed.release(&**client, Some(retry_at), decision).await?;
        drop(client);
        self.deps.metrics.research_jobs.pending_skips.inc();
        Ok(self.skipped(&due.slot, decision, Some(retry_at)).await)
    }

    async fn load_job(&self, slot: &Slot) -> anyhow::Result<Option<Job>> {
        let mut client = self.deps.pool.get().await.context("connecting")?;
        let tx = crate::db::begin_user(&mut client, &slot.user_id).await?;
        let job = research_jobs::load(&tx, &slot.user_id, &slot.mission_id).await?;
        tx.commit().await?;
        Ok(job)
    }

    /// Records a poll's outcome; the job now answers for this slot.
    async fn save_job(
        &self,
        slot: &Slot,
        task_id: &str,
        state: JobState,
        at: DateTime<Utc>,
    ) -> anyhow::Result<()> {
        let mut client = self.deps.pool.get().await.context("connecting")?;
        let tx = crate::db::begin_user(&mut client, &slot.user_id).await?;
        let (user, mission) = (&slot.user_id, &slot.mission_id);
        research_jobs::polled(&tx, user, mission, task_id, (state, &slot.due_at), at).await?;
        tx.commit().await?;
        Ok(())
    }

    fn count(&self, deep: &DeepResearch, what: Counted) {
        let m = &self.deps.metrics.research_jobs;
        let family = match what {
            Counted::Submitted => &m.submitted,
            Counted::Completed => &m.completed,
            Counted::Failed => &m.failed,
        };
        family.with_label_values(&[deep.provider.as_str()]).inc();
    }
}

/// Which `research_jobs_*_total{provider}` a job event counts in.
#[derive(Debug, Clone, Copy)]
enum Counted {
    Submitted,
    Completed,
    Failed,
}
