//! Admission: the agent gates as a run applies them, right after the claim.
//! A mission without `agentId` (legacy) runs as the default agent; one whose
//! agent is missing, or whose agent's policy does not parse, is skipped.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio_postgres::GenericClient;

use super::gates::{self, Agent, GateDecision};
use super::writeback::Author;
use super::Runner;
use crate::planner::AgentPolicy;

/// Retry a skipped-concurrency run this much later.
const CONCURRENCY_RETRY: chrono::Duration = chrono::Duration::seconds(30);
/// Retry an over-budget run this much later (the window moves continuously).
pub(super) const BUDGET_RETRY: chrono::Duration = chrono::Duration::minutes(15);

/// A run the gates let through, holding its agent's concurrency slot.
pub(super) struct Admitted<'a> {
    pub agent: Option<Agent>,
    pub policy: Option<AgentPolicy>,
    _slot: Option<AgentSlot<'a>>,
}

impl Admitted<'_> {
    /// Who the webapp shows as the iteration's author.
    pub fn author(&self) -> Author {
        match &self.agent {
            Some(a) => Author {
                agent_id: Some(a.id.clone()),
                display_name: a.name.clone(),
            },
            None => Author::legacy(),
        }
    }
}

pub(super) enum Admission<'a> {
    Run(Box<Admitted<'a>>),
    /// Not now; `retry_at` None waits for a change of the mission or agent.
    Skip {
        decision: GateDecision,
        retry_at: Option<DateTime<Utc>>,
    },
}

impl Runner {
    pub(super) async fn admit<'a>(
        &'a self,
        client: &impl GenericClient,
        user_id: &str,
        record: &Map<String, Value>,
        started: DateTime<Utc>,
    ) -> anyhow::Result<Admission<'a>> {
        let skip = |decision, retry_at| Ok(Admission::Skip { decision, retry_at });
        let agent_id = record.get("agentId").and_then(Value::as_str);
        let Some(agent_id) = agent_id.filter(|s| !s.is_empty()) else {
            let budget = gates::Budget::of(user_id, None, self.deps.cost.user_tokens_per_day);
            if let Some(budget) = budget {
                if budget.spent(client).await? {
                    return skip(GateDecision::SkippedBudget, Some(started + BUDGET_RETRY));
                }
            }
            let legacy = Admitted {
                agent: None,
                policy: None,
                _slot: None,
            };
            return Ok(Admission::Run(Box::new(legacy)));
        };
        tracing::Span::current().record("agent_id", agent_id);
        let Some(agent) = gates::load_agent(client, user_id, agent_id).await? else {
            tracing::warn!("the mission's agent does not exist (deleted, or not synced yet); skipped until it does");
            return skip(GateDecision::SkippedMissingAgent, None);
        };
        let policy = match AgentPolicy::from_record(agent.record.get("policy")) {
            Ok(policy) => policy,
            Err(e) => {
                tracing::warn!(reason = %e, "the agent's policy does not parse; skipped until it is fixed");
                return skip(GateDecision::SkippedBadPolicy, None);
            }
        };
        if let Some(decision) = agent.state_gate() {
            return skip(decision, None);
        }
        let Some(slot) = AgentSlot::enter(self, user_id, &agent) else {
            return skip(
                GateDecision::SkippedConcurrency,
                Some(started + CONCURRENCY_RETRY),
            );
        };
        if let Some(max) = agent.max_tokens_per_day {
            if gates::tokens_last_day(client, user_id, &agent.id).await? >= max {
                return skip(GateDecision::SkippedBudget, Some(started + BUDGET_RETRY));
            }
        }
        let agent = Some(agent);
        Ok(Admission::Run(Box::new(Admitted {
            agent,
            policy,
            _slot: Some(slot),
        })))
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
