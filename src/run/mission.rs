//! One mission run, start to end (see the module header of `run`).

use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::claim::{self, Claim, Slot};
use super::gates::{self, Agent};
use super::inputs::{self, GrantAccess};
use super::writeback::{self, Author, WriteBack};
use super::{offline, Outcome, Planner, Runner};
use crate::crypto::{unwrap_grant, GrantSkip, MissionGrant};
use crate::planner::llm::LlmAnswer;
use crate::planner::{
    build_prompt, filter_tools, needs_research, parse_plan, research_input, AgentContext,
    AgentPolicy, MissionView, PromptInput, ToolSpec,
};
use crate::schedule::cadence::Cadence;

/// A claimed slot not yet completed. Dropped while still armed (a panic, an
/// error, an abort at shutdown), it gives the slot back as a failed attempt
/// so it is retried and, after enough failures, recorded as failed.
struct ClaimGuard {
    pool: deadpool_postgres::Pool,
    slot: Slot,
    token: Uuid,
    retry_at: DateTime<Utc>,
    armed: bool,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (pool, slot, token, retry_at) = (
            self.pool.clone(),
            self.slot.clone(),
            self.token,
            self.retry_at,
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Ok(client) = pool.get().await {
                    let _ = claim::back_off(
                        &**client,
                        &slot,
                        token,
                        retry_at,
                        "error",
                        "run did not finish",
                    )
                    .await;
                }
            });
        }
    }
}

/// Counts a run against its agent's `maxConcurrentMissions` while alive.
struct AgentSlot<'a> {
    runner: &'a Runner,
    key: (String, String),
}

impl<'a> AgentSlot<'a> {
    fn enter(runner: &'a Runner, user_id: &str, agent: &Agent) -> Option<Self> {
        let key = (user_id.to_string(), agent.id.clone());
        let mut map = runner
            .agents_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let count = map.entry(key.clone()).or_insert(0);
        if *count >= agent.max_concurrent {
            return None;
        }
        *count += 1;
        Some(AgentSlot { runner, key })
    }
}

impl Drop for AgentSlot<'_> {
    fn drop(&mut self) {
        let mut map = self
            .runner
            .agents_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = map.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Why an attempt failed: the `errorDetails` of a final failed iteration.
struct Failure {
    name: &'static str,
    message: String,
    phase: &'static str,
}

/// Retry a skipped-concurrency run this much later.
const CONCURRENCY_RETRY: chrono::Duration = chrono::Duration::seconds(30);
/// Retry an over-budget run this much later (the window moves continuously).
const BUDGET_RETRY: chrono::Duration = chrono::Duration::minutes(15);

impl Runner {
    pub(super) async fn execute(
        self: &Arc<Self>,
        user_id: &str,
        mission_id: &str,
    ) -> anyhow::Result<Outcome> {
        let deps = &self.deps;
        let started = deps.clock.now();
        let mut client = deps.pool.get().await.context("connecting")?;
        let row = client
            .query_opt(
                "SELECT record, next_run_at, next_run_ts FROM mana_ai.mission_snapshots
                 WHERE user_id = $1 AND mission_id = $2 AND NOT deleted AND state = 'active'",
                &[&user_id, &mission_id],
            )
            .await?;
        let Some(row) = row else {
            return Ok(Outcome::NotDue);
        };
        let (record_value, slot_text, slot_at): (Value, Option<String>, Option<DateTime<Utc>>) =
            (row.get(0), row.get(1), row.get(2));
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
        let (token, failures) = match claim::claim(&mut client, &slot, deps.instance_id).await? {
            Claim::Claimed { token, failures } => (token, failures.max(0) as u32),
            Claim::Done => return Ok(Outcome::AlreadyDone),
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
            armed: true,
        };

        // Agent gates.
        let agent_id = record
            .get("agentId")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let agent = match agent_id {
            Some(id) => gates::load_agent(&**client, user_id, id).await?,
            None => None,
        };
        let mut _agent_slot = None;
        if let Some(agent) = &agent {
            tracing::Span::current().record("agent_id", agent.id.as_str());
            let decision = match agent.state_gate() {
                Some(d) => Some((d, None)),
                None => match AgentSlot::enter(self, user_id, agent) {
                    None => Some(("skipped-concurrency", Some(started + CONCURRENCY_RETRY))),
                    Some(s) => {
                        _agent_slot = Some(s);
                        match agent.max_tokens_per_day {
                            Some(max)
                                if gates::tokens_last_day(&**client, user_id, &agent.id)
                                    .await?
                                    >= max =>
                            {
                                Some(("skipped-budget", Some(started + BUDGET_RETRY)))
                            }
                            _ => None,
                        }
                    }
                },
            };
            if let Some((decision, retry_at)) = decision {
                deps.metrics
                    .agent_decisions
                    .with_label_values(&[decision])
                    .inc();
                claim::release(&**client, &slot, token, retry_at, decision).await?;
                guard.armed = false;
                if let Some(at) = retry_at {
                    self.rearm(user_id, mission_id, at).await;
                }
                return Ok(Outcome::Skipped(decision));
            }
        }
        deps.metrics
            .agent_decisions
            .with_label_values(&["ran"])
            .inc();

        // Inputs, under the grant if there is one; the key lives only here.
        let iteration_id = Uuid::new_v4().to_string();
        let refs = inputs::input_refs(record);
        let grant = self.grant_of(record, mission_id);
        let mdk =
            grant.as_ref().and_then(
                |g| match unwrap_grant(deps.grant_key.as_ref(), g, started) {
                    Ok(mdk) => Some(mdk),
                    Err(skip) => {
                        self.skip_grant(skip);
                        None
                    }
                },
            );
        let access = match (&grant, &mdk) {
            (Some(grant), Some(mdk)) => Some(GrantAccess { grant, mdk }),
            _ => None,
        };
        let resolved = if refs.is_empty() {
            inputs::Resolved::default()
        } else {
            let tx = crate::db::begin_user(&mut client, user_id).await?;
            let resolved = inputs::resolve(&tx, &refs, access.as_ref()).await?;
            tx.commit().await?;
            resolved
        };
        drop(mdk);
        for table in &resolved.decrypted {
            deps.metrics.decrypts.with_label_values(&[table]).inc();
        }
        for table in &resolved.scope_violations {
            deps.metrics
                .grant_scope_violations
                .with_label_values(&[table])
                .inc();
            tracing::warn!(table = %table, "mission input outside its grant's allowlist; not decrypted");
        }
        if let Err(e) = inputs::write_audit(
            &mut client,
            user_id,
            mission_id,
            &iteration_id,
            &resolved.audit,
        )
        .await
        {
            deps.metrics.audit_write_failures.inc();
            tracing::warn!(error = %format!("{e:#}"), "writing decrypt_audit rows failed; the run goes on");
        }
        let mut resolved_inputs = resolved.inputs;

        // Research pre-step.
        let mission_view = MissionView::from_record(&record_value);
        if let Some(research) = &deps.research {
            if needs_research(mission_view.objective, mission_view.concept) {
                match research.research(mission_view.objective).await {
                    Ok(articles) => resolved_inputs.push(research_input(&articles)),
                    Err(e) => {
                        deps.metrics.research_failures.inc();
                        tracing::warn!(error = %e, "research pre-step failed; planning without it");
                    }
                }
            }
        }

        // Prompt, plan, parse.
        let policy =
            agent
                .as_ref()
                .and_then(|a| match AgentPolicy::from_record(a.record.get("policy")) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(reason = %e, "agent policy unreadable; using the default");
                        None
                    }
                });
        let tools: Vec<&ToolSpec> = filter_tools(&deps.catalog, policy.as_ref());
        let prompt = build_prompt(&PromptInput {
            mission: mission_view,
            inputs: &resolved_inputs,
            agent: agent.as_ref().map(|a| AgentContext::from_record(&a.record)),
            catalog: deps.catalog.tools(),
            tools: &tools,
            now: Some(started),
        });
        if let Some(observer) = &deps.prompt_observer {
            let _ = observer.send(super::PromptSummary {
                mission_id: mission_id.to_string(),
                system_chars: prompt.system.chars().count(),
                user_chars: prompt.user.chars().count(),
                tools: tools.len(),
                inputs: resolved_inputs
                    .iter()
                    .map(|i| format!("{}/{}: {}", i.module, i.table, i.title))
                    .collect(),
                offline: matches!(deps.planner, Planner::Offline),
            });
        }
        drop(resolved_inputs);
        // No pooled connection is held while the model thinks.
        drop(client);
        let answer = match &deps.planner {
            Planner::Llm(llm) => {
                llm.complete_plan(&prompt.system, &prompt.user, prompt.schema.as_ref())
                    .await
            }
            Planner::Offline => Ok(LlmAnswer {
                content: offline::offline_answer(&mission_view, &tools),
                usage: None,
                attempts: 1,
                elapsed: std::time::Duration::ZERO,
            }),
        };
        let author = match &agent {
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
        };
        let mut client = deps.pool.get().await.context("connecting")?;
        let answer = match answer {
            Ok(a) => a,
            Err(e) => {
                let failure = Failure {
                    name: "PlannerError",
                    message: e.to_string(),
                    phase: "planner",
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
        write.tokens_used = tokens(&answer, &prompt.system, &prompt.user);
        let plan = match parse_plan(&answer.content, |name| tools.iter().any(|t| t.name == name)) {
            Ok(plan) => plan,
            Err(e) => {
                deps.metrics.parse_failures.inc();
                let failure = Failure {
                    name: "ParseError",
                    message: e.to_string(),
                    phase: "parse",
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
        deps.metrics.plans_produced.inc();
        write.now = deps.clock.now();
        write.iteration = writeback::planned_iteration(
            &iteration_id,
            started,
            write.now,
            &plan.summary,
            &plan.steps,
        );
        let written = writeback::commit(&mut client, &write).await?;
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
        tracing::warn!(phase, error = %message, failures = failures + 1, "mission run failed");
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
        claim::back_off(&*client, &write.slot, write.token, retry_at, phase, message).await?;
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
                tracing::warn!(error = %e, "mission cadence unreadable; no next run");
                None
            }
        }
    }

    fn grant_of(&self, record: &Map<String, Value>, mission_id: &str) -> Option<MissionGrant> {
        let value = record.get("grant").filter(|g| !g.is_null())?;
        match MissionGrant::from_value(value) {
            Ok(g) if g.derivation.mission_id == mission_id => Some(g),
            Ok(_) | Err(_) => {
                self.skip_grant(GrantSkip::Malformed);
                None
            }
        }
    }

    fn skip_grant(&self, skip: GrantSkip) {
        self.deps
            .metrics
            .grant_skips
            .with_label_values(&[skip.as_str()])
            .inc();
        tracing::info!(reason = skip.as_str(), "mission grant not used");
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
