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
use crate::schedule::fair::AgentLimit;
use crate::schedule::wheel::MissionKey;

/// Retry an over-budget run this much later (the window moves continuously).
pub(super) const BUDGET_RETRY: chrono::Duration = chrono::Duration::minutes(15);

/// A run the gates let through; the fair queue counts it against its
/// agent's `maxConcurrentMissions` until the run ends.
pub(super) struct Admitted {
    pub agent: Option<Agent>,
    pub policy: Option<AgentPolicy>,
}

impl Admitted {
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

pub(super) enum Admission {
    Run(Box<Admitted>),
    /// Not now; `retry_at` None waits for a change of the mission or agent,
    /// or (skipped-concurrency) for the run's next turn in the fair queue.
    Skip {
        decision: GateDecision,
        retry_at: Option<DateTime<Utc>>,
    },
}

impl Runner {
    pub(super) async fn admit(
        &self,
        client: &impl GenericClient,
        key: &MissionKey,
        record: &Map<String, Value>,
        started: DateTime<Utc>,
    ) -> anyhow::Result<Admission> {
        let user_id = key.user_id();
        let skip = |decision, retry_at| Ok(Admission::Skip { decision, retry_at });
        // Before anything reads the mission's text: ciphertext never goes
        // further (no prompt, research query, actor or log sees it).
        if gates::has_encrypted_text(record) {
            return skip(GateDecision::SkippedEncrypted, None);
        }
        let agent_id = record.get("agentId").and_then(Value::as_str);
        let user_per_day = self.deps.cost.user_tokens_per_day;
        let Some(agent_id) = agent_id.filter(|s| !s.is_empty()) else {
            if let Some(budget) = gates::Budget::of(user_id, None, user_per_day) {
                if budget.spent(client).await?.is_some() {
                    return skip(GateDecision::SkippedBudget, Some(started + BUDGET_RETRY));
                }
            }
            let legacy = Admitted {
                agent: None,
                policy: None,
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
        let limit = AgentLimit {
            agent_id: agent.id.clone(),
            max_concurrent: agent.max_concurrent,
        };
        // At its max, the agent sends the run back to the fair queue: it
        // gives back its claim now and runs again when a run of the agent ends.
        if !self.attach_agent(key, limit) {
            return skip(GateDecision::SkippedConcurrency, None);
        }
        if let Some(budget) = gates::Budget::of(user_id, Some(&agent), user_per_day) {
            if budget.spent(client).await?.is_some() {
                return skip(GateDecision::SkippedBudget, Some(started + BUDGET_RETRY));
            }
        }
        let agent = Some(agent);
        Ok(Admission::Run(Box::new(Admitted { agent, policy })))
    }
}
