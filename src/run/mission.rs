//! One mission run, start to end (see the module header of `run`).

use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tracing::Instrument;
use uuid::Uuid;

use super::admit::Admission;
use super::claim::{self, Claim, ClaimGuard, Slot};
use super::gates::Decision;
use super::phase::Phase;
use super::stall::Stall;
use super::writeback::{self, Author, WriteBack};
use super::{offline, Outcome, Planner, Runner};
use crate::planner::llm::LlmAnswer;
use crate::planner::{
    build_prompt, filter_tools, parse_plan, AgentContext, MissionView, PromptInput, ToolSpec,
};
use crate::schedule::cadence::Cadence;

/// Why an attempt failed: the `errorDetails` of a final failed iteration.
struct Failure {
    name: &'static str,
    message: String,
    phase: Phase,
}

/// The snapshot as a run reads it: `iterations` cut to the last three (all
/// the prompt shows), so a run's memory does not grow with the history.
const LOAD_DUE: &str = "SELECT CASE WHEN jsonb_typeof(record->'iterations') = 'array'
            THEN record || jsonb_build_object('iterations',
                   jsonb_path_query_array(record->'iterations', '$[last-2 to last]'))
            ELSE record END,
        next_run_at, next_run_ts,
        CASE WHEN jsonb_typeof(record->'iterations') = 'array'
            THEN jsonb_array_length(record->'iterations') ELSE 0 END
     FROM mana_ai.mission_snapshots
     WHERE user_id = $1 AND mission_id = $2 AND NOT deleted AND state = 'active'";

impl Runner {
    pub(super) async fn execute(
        self: &Arc<Self>,
        user_id: &str,
        mission_id: &str,
    ) -> anyhow::Result<Outcome> {
        let deps = &self.deps;
        let started = deps.clock.now();
        let mut client = deps.pool.get().await.context("connecting")?;
        let row = client.query_opt(LOAD_DUE, &[&user_id, &mission_id]).await?;
        let Some(row) = row else {
            return Ok(Outcome::NotDue);
        };
        let (record_value, slot_text, slot_at): (Value, Option<String>, Option<DateTime<Utc>>) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let (Some(slot_text), Some(slot_at), Some(record)) =
            (slot_text, slot_at, record_value.as_object())
        else {
            return Ok(Outcome::NotDue);
        };
        if slot_at > started {
            self.rearm(user_id, mission_id, slot_at).await;
            return Ok(Outcome::NotDue);
        }
        tracing::Span::current().record("slot", slot_text.as_str());
        let slot = Slot {
            user_id: user_id.into(),
            mission_id: mission_id.into(),
            slot: slot_text,
        };
        let (token, failures) = match claim::claim(&mut client, &slot, deps.instance_id)
            .instrument(tracing::info_span!("claim"))
            .await?
        {
            Claim::Claimed { token, failures } => (token, failures.max(0) as u32),
            Claim::Done => {
                self.check_done_slot(&**client, &slot).await;
                return Ok(Outcome::AlreadyDone);
            }
            Claim::Running => return Ok(Outcome::InFlight),
            Claim::RetryAt(at) => {
                self.rearm(user_id, mission_id, at).await;
                return Ok(Outcome::BackingOff);
            }
        };
        let mut guard = ClaimGuard {
            pool: deps.pool.clone(),
            slot: slot.clone(),
            token,
            retry_at: started + self.backoff_after(failures),
            phase: Phase::ResolvingInputs,
            armed: true,
        };
        let admitted = match self
            .admit(&**client, user_id, record, started)
            .instrument(tracing::info_span!("gate"))
            .await?
        {
            Admission::Run(admitted) => admitted,
            Admission::Skip { decision, retry_at } => {
                claim::release(&**client, &slot, token, retry_at, decision.as_str()).await?;
                guard.armed = false;
                return Ok(self.skipped(&slot, decision, retry_at).await);
            }
        };
        self.decided(Decision::Ran);
        let agent = &admitted.agent;

        let iteration_id = Uuid::new_v4().to_string();
        let mut mission_view = MissionView::from_record(&record_value);
        // The record holds the last three; the prompt numbers them in the whole history.
        let count: i32 = row.try_get(3)?;
        mission_view.iteration_count = usize::try_from(count).unwrap_or_default();
        let resolved_inputs = self
            .gather_inputs(
                &mut client,
                &slot,
                record,
                &iteration_id,
                &mission_view,
                started,
            )
            .instrument(tracing::info_span!("inputs"))
            .await?;

        // Prompt, plan, parse.
        guard.phase = Phase::CallingLlm;
        let tools: Vec<&ToolSpec> = filter_tools(&deps.catalog, admitted.policy.as_ref());
        let prompt = build_prompt(&PromptInput {
            mission: mission_view,
            inputs: &resolved_inputs,
            agent: agent.as_ref().map(|a| AgentContext::from_record(&a.record)),
            catalog: deps.catalog.tools(),
            tools: &tools,
            now: Some(started),
        });
        self.observe_prompt(mission_id, &prompt, tools.len(), &resolved_inputs);
        drop(resolved_inputs);
        // No pooled connection is held while the model thinks.
        drop(client);
        let answer = match &deps.planner {
            Planner::Llm(llm) => {
                llm.complete_plan(&prompt.system, &prompt.user, prompt.schema.as_ref())
                    .instrument(tracing::info_span!("llm_call"))
                    .await
            }
            Planner::Offline => Ok(LlmAnswer {
                content: offline::offline_answer(&mission_view, &tools),
                usage: None,
                attempts: 1,
                elapsed: std::time::Duration::ZERO,
            }),
        };
        let author = match agent {
            Some(a) => Author {
                agent_id: Some(a.id.clone()),
                display_name: a.name.clone(),
            },
            None => Author::legacy(),
        };
        let mut write = WriteBack {
            slot,
            token,
            iteration: Value::Null,
            iteration_id: iteration_id.clone(),
            next_run_at: self.next_run(record, slot_at),
            author,
            objective: mission_view.objective.to_string(),
            now: deps.clock.now(),
            tokens_used: 0,
            outcome: "written",
            max_field_bytes: deps.max_field_bytes,
        };
        let mut client = deps.pool.get().await.context("connecting")?;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                let failure = Failure {
                    name: "PlannerError",
                    message: e.to_string(),
                    phase: Phase::CallingLlm,
                };
                let final_ = self
                    .fail(
                        &mut client,
                        &mut guard,
                        &mut write,
                        failures,
                        started,
                        failure,
                    )
                    .await?;
                return Ok(Outcome::PlannerFailed { final_ });
            }
        };
        if deps.failpoint.as_deref() == Some("after-llm") {
            tracing::error!("failpoint after-llm: aborting the process");
            std::process::abort();
        }
        guard.phase = Phase::ParsingResponse;
        write.tokens_used = tokens(&answer, &prompt.system, &prompt.user);
        let plan = match parse_plan(&answer.content, |name| tools.iter().any(|t| t.name == name)) {
            Ok(plan) => plan,
            Err(e) => {
                deps.metrics.parse_failures.inc();
                let failure = Failure {
                    name: "ParseError",
                    message: e.to_string(),
                    phase: Phase::ParsingResponse,
                };
                let final_ = self
                    .fail(
                        &mut client,
                        &mut guard,
                        &mut write,
                        failures,
                        started,
                        failure,
                    )
                    .await?;
                return Ok(Outcome::ParseFailed { final_ });
            }
        };
        guard.phase = Phase::Finalizing;
        deps.metrics.plans_produced.inc();
        write.now = deps.clock.now();
        write.iteration = writeback::planned_iteration(
            &iteration_id,
            started,
            write.now,
            &plan.summary,
            &plan.steps,
        );
        let written = writeback::commit(&mut client, &write)
            .instrument(tracing::info_span!("write_back"))
            .await?;
        guard.armed = false;
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
            .tokens_used
            .with_label_values(&[agent_label])
            .inc_by(write.tokens_used.max(0) as u64);
        Ok(Outcome::Written)
    }

    fn decided(&self, decision: Decision) {
        self.deps
            .metrics
            .agent_decisions
            .with_label_values(&[decision.as_str()])
            .inc();
    }

    /// A gate said not now: counted, the slot already given back.
    async fn skipped(
        &self,
        slot: &Slot,
        decision: Decision,
        retry_at: Option<DateTime<Utc>>,
    ) -> Outcome {
        self.decided(decision);
        match decision {
            Decision::SkippedMissingAgent => self.stalled(Stall::MissingAgent),
            Decision::SkippedBadPolicy => self.stalled(Stall::BadPolicy),
            _ => {}
        }
        if let Some(at) = retry_at {
            self.rearm(&slot.user_id, &slot.mission_id, at).await;
        }
        Outcome::Skipped(decision.as_str())
    }

    /// A failed attempt: back off, or after `max_failures` write a failed
    /// iteration and move on to the next slot. Returns whether it was final.
    async fn fail(
        &self,
        client: &mut tokio_postgres::Client,
        guard: &mut ClaimGuard,
        write: &mut WriteBack,
        failures: u32,
        started: DateTime<Utc>,
        failure: Failure,
    ) -> anyhow::Result<bool> {
        let Failure {
            name,
            message,
            phase,
        } = failure;
        let message = message.as_str();
        let deps = &self.deps;
        deps.metrics.mission_errors.inc();
        tracing::warn!(phase = phase.as_str(), error = %message, failures = failures + 1, "mission run failed");
        let now = deps.clock.now();
        if failures + 1 >= deps.max_failures {
            write.now = now;
            write.outcome = "failed";
            write.iteration = writeback::failed_iteration(
                &write.iteration_id,
                started,
                now,
                name,
                message,
                phase,
            );
            writeback::commit(client, write).await?;
            guard.armed = false;
            return Ok(true);
        }
        // Never past the mission's next regular slot.
        let mut retry_at = now + self.backoff_after(failures);
        if let Some(next) = write.next_run_at {
            retry_at = retry_at.min(next.max(now));
        }
        claim::back_off(
            &*client,
            &write.slot,
            write.token,
            retry_at,
            phase.as_str(),
            message,
        )
        .await?;
        guard.armed = false;
        self.rearm(&write.slot.user_id, &write.slot.mission_id, retry_at)
            .await;
        Ok(false)
    }

    /// The slot after this one, from the mission's cadence.
    fn next_run(&self, record: &Map<String, Value>, slot: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let cadence = record.get("cadence")?;
        match Cadence::parse(cadence) {
            Ok(c) => c.next_after_run(slot, self.deps.clock.now(), self.deps.default_tz),
            Err(e) => {
                self.stalled(Stall::NoNextRun);
                tracing::warn!(error = %e, stall = Stall::NoNextRun.as_str(), "mission cadence unreadable; no next run");
                None
            }
        }
    }
}

/// Tokens to charge: the gateway's count, else about four characters a token.
fn tokens(answer: &LlmAnswer, system: &str, user: &str) -> i64 {
    match &answer.usage {
        Some(u) if u.total_tokens > 0 => u.total_tokens as i64,
        Some(u) if u.prompt_tokens + u.completion_tokens > 0 => {
            (u.prompt_tokens + u.completion_tokens) as i64
        }
        _ => ((system.len() + user.len() + answer.content.len()) / 4) as i64,
    }
}
