//! Phase 6 of a run: the write-back of a planned iteration, or of a failed
//! one after `max_failures`, or the back-off after a failed attempt.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tracing::Instrument;

use super::admit::BUDGET_RETRY;
use super::claimed::Claimed;
use super::claimed::Spent;
use super::due::DueRun;
use super::gates::GateDecision;
use super::phase::Phase;
use super::plan::{FailureKind, Planned};
use super::stall::Stall;
use super::writeback::{self, Author, WriteBack};
use super::{Outcome, Runner};
use crate::planner::PlannedIteration;
use crate::run_record::RunOutcome;
use crate::schedule::cadence::Cadence;

/// The summary of a failed iteration the gateway's refusal (`blocked`,
/// `auth`) wrote at once; `errorDetails` carries the reason.
const REFUSED_SUMMARY: &str =
    "Das LLM-Gateway hat die Planung abgelehnt; die Mission läuft zum nächsten Termin weiter.";

impl Runner {
    /// Writes the plan back, or records the failed attempt.
    pub(super) async fn write_back(
        &self,
        due: &DueRun,
        claimed: Claimed,
        author: Author,
        iteration_id: String,
        planned: Planned,
        started: DateTime<Utc>,
    ) -> anyhow::Result<Outcome> {
        let mut write = WriteBack {
            slot: due.slot.clone(),
            token: claimed.token(),
            iteration: Value::Null,
            iteration_id,
            next_run_at: self.next_run(due.fields(), due.slot_at),
            author,
            objective: due.view().objective.to_string(),
            now: self.deps.clock.now(),
            tokens_used: 0,
            outcome: RunOutcome::Written,
            max_field_bytes: self.deps.max_field_bytes,
            generation: self.deps.generation,
            space_id: due
                .fields()
                .get("spaceId")
                .and_then(Value::as_str)
                .map(str::to_string),
        };
        let mut client = self.deps.pool.get().await.context("connecting")?;
        match planned {
            Planned::Plan { plan, tokens_used } => {
                write.tokens_used = tokens_used;
                self.commit_plan(&mut client, claimed, write, &plan, started)
                    .await
            }
            Planned::Failed {
                kind,
                message,
                tokens_used,
            } => {
                write.tokens_used = tokens_used;
                let final_ = self
                    .fail(&mut client, claimed, &mut write, started, kind, &message)
                    .await?;
                Ok(kind.outcome(final_))
            }
            Planned::OverBudget => self.over_budget(&client, due, claimed).await,
        }
    }

    /// A token budget ran out before the run's request was sent: the slot
    /// goes back uncounted and is tried again later, as at admission.
    async fn over_budget(
        &self,
        client: &tokio_postgres::Client,
        due: &DueRun,
        claimed: Claimed,
    ) -> anyhow::Result<Outcome> {
        let decision = GateDecision::SkippedBudget;
        let retry_at = self.deps.clock.now() + BUDGET_RETRY;
        let slot = &due.slot;
        claimed.release(client, Some(retry_at), decision).await?;
        self.deps
            .metrics
            .agent_decisions
            .with_label_values(&[decision.as_str()])
            .inc();
        self.rearm(&slot.user_id, &slot.mission_id, retry_at).await;
        Ok(Outcome::Skipped(decision.as_str()))
    }

    /// Commits the planned iteration with the slot's completion.
    async fn commit_plan(
        &self,
        client: &mut tokio_postgres::Client,
        mut claimed: Claimed,
        mut write: WriteBack,
        plan: &PlannedIteration,
        started: DateTime<Utc>,
    ) -> anyhow::Result<Outcome> {
        let deps = &self.deps;
        claimed.enter(Phase::Finalizing);
        deps.metrics.plans_produced.inc();
        write.now = deps.clock.now();
        write.iteration = writeback::planned_iteration(
            &write.iteration_id,
            started,
            write.now,
            &plan.summary,
            &plan.steps,
        );
        let written = claimed
            .write_back(client, &write)
            .instrument(tracing::info_span!("write_back"))
            .await?;
        if !written {
            return Ok(Outcome::Fenced);
        }
        deps.metrics.plans_written_back.inc();
        let agent_label = write
            .author
            .agent_id
            .as_deref()
            .unwrap_or("legacy:ai-default");
        deps.metrics
            .count_tokens(agent_label, write.tokens_used.max(0) as u64);
        Ok(Outcome::Written)
    }

    /// A failed attempt: back off, or after `max_failures` write a failed
    /// iteration and move on to the next slot. Returns whether it was final.
    async fn fail(
        &self,
        client: &mut tokio_postgres::Client,
        claimed: Claimed,
        write: &mut WriteBack,
        started: DateTime<Utc>,
        kind: FailureKind,
        message: &str,
    ) -> anyhow::Result<bool> {
        let (deps, failures, phase) = (&self.deps, claimed.failures(), kind.phase());
        deps.metrics.mission_errors.inc();
        tracing::warn!(phase = phase.as_str(), error = %message, failures = failures + 1, "mission run failed");
        let now = deps.clock.now();
        // A refusal (blocked, auth) ends the run at once: retrying cannot help.
        if failures + 1 >= deps.max_failures || kind.is_final() {
            write.now = now;
            write.outcome = RunOutcome::Failed;
            write.iteration = writeback::failed_iteration(
                &write.iteration_id,
                started,
                now,
                kind.name(),
                message,
                phase,
            );
            if kind.is_final() {
                write.iteration["summary"] = serde_json::json!(REFUSED_SUMMARY);
            }
            claimed.write_back(client, write).await?;
            return Ok(true);
        }
        // Never past the mission's next regular slot.
        let mut retry_at = now + self.backoff_after(failures);
        if let Some(next) = write.next_run_at {
            retry_at = retry_at.min(next.max(now));
        }
        // The failed answer's tokens count against the budgets as well.
        let spent = Spent {
            agent_id: write.author.agent_id.as_deref(),
            tokens: write.tokens_used,
        };
        claimed
            .back_off(client, retry_at, phase, message, spent)
            .await?;
        let slot = &write.slot;
        self.rearm(&slot.user_id, &slot.mission_id, retry_at).await;
        Ok(false)
    }

    /// The slot after this one, from the mission's cadence.
    fn next_run(&self, record: &Map<String, Value>, slot: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let cadence = record.get("cadence")?;
        match Cadence::parse(cadence) {
            Ok(c) => {
                let (now, tz, floor) = (
                    self.deps.clock.now(),
                    self.deps.default_tz,
                    self.deps.cost.min_interval,
                );
                let next = c.next_after_run_floored(slot, now, tz, floor)?;
                if next.floored {
                    self.deps.metrics.interval_floored.inc();
                }
                Some(next.at)
            }
            Err(e) => {
                self.stalled(Stall::NoNextRun);
                tracing::warn!(error = %e, stall = Stall::NoNextRun.as_str(), "mission cadence unreadable; no next run");
                None
            }
        }
    }
}
