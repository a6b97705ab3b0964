//! Agent gates: archived and paused agents skip, `maxConcurrentMissions` is
//! real in-flight concurrency, `maxTokensPerDay` is a rolling 24 h window
//! over `mana_ai.token_usage`. A mission without an agent has the user's
//! budget instead (`MANA_AI_USER_TOKENS_PER_DAY`, when set). A [`Budget`] is
//! checked at admission and again before each LLM request, retries included. They fail closed: a mission whose agent is
//! missing (deleted, or not synced yet) or whose policy does not parse is
//! skipped, never run as the default agent or with every tool.

use serde_json::{Map, Value};
use tokio_postgres::GenericClient;

/// What the gates decided (`agent_decisions_total{decision}`); defined
/// with the other values `mission_runs` records, in `run_record`.
pub use crate::run_record::GateDecision;

/// The owning agent as a run needs it.
#[derive(Debug, Clone)]
pub struct Agent {
    pub id: String,
    pub record: Value,
    pub name: String,
    pub state: String,
    pub max_concurrent: usize,
    pub max_tokens_per_day: Option<i64>,
}

impl Agent {
    pub fn from_record(id: &str, record: Map<String, Value>) -> Agent {
        let text = |k: &str| record.get(k).and_then(Value::as_str).map(str::to_string);
        let positive = |k: &str| {
            record
                .get(k)
                .and_then(Value::as_f64)
                .filter(|n| n.is_finite() && *n >= 0.0)
        };
        Agent {
            id: id.to_string(),
            name: text("name").unwrap_or_else(|| "Agent".into()),
            state: text("state").unwrap_or_else(|| "active".into()),
            max_concurrent: positive("maxConcurrentMissions").map_or(1, |n| (n as usize).max(1)),
            max_tokens_per_day: positive("maxTokensPerDay").map(|n| n as i64),
            record: Value::Object(record),
        }
    }

    /// The decision that needs no database: archived or paused.
    pub fn state_gate(&self) -> Option<GateDecision> {
        match self.state.as_str() {
            "archived" => Some(GateDecision::SkippedArchived),
            "paused" => Some(GateDecision::SkippedPaused),
            _ => None,
        }
    }
}

/// Loads an agent snapshot; None if absent or deleted.
pub async fn load_agent(
    client: &impl GenericClient,
    user_id: &str,
    agent_id: &str,
) -> Result<Option<Agent>, tokio_postgres::Error> {
    let record = crate::store::due::agent_record(client, user_id, agent_id).await?;
    Ok(record.and_then(|r| match r {
        Value::Object(map) => Some(Agent::from_record(agent_id, map)),
        _ => None,
    }))
}

/// The mission fields that are the planner's text, which today's webapp
/// encrypts in a personal Space.
pub const MISSION_TEXT_FIELDS: [&str; 3] = ["title", "conceptMarkdown", "objective"];

/// Whether any of the mission's text fields is `enc:1:` ciphertext (no
/// key-grant decrypts them: they are under the user's vault key).
pub fn has_encrypted_text(record: &Map<String, Value>) -> bool {
    MISSION_TEXT_FIELDS.iter().any(|field| {
        record
            .get(*field)
            .and_then(Value::as_str)
            .is_some_and(|text| text.starts_with(crate::crypto::ENC_PREFIX))
    })
}

/// Tokens the agent used in the last 24 hours.
pub async fn tokens_last_day(
    client: &impl GenericClient,
    user_id: &str,
    agent_id: &str,
) -> Result<i64, tokio_postgres::Error> {
    crate::store::usage::tokens_last_day(client, user_id, agent_id).await
}

/// The token budgets a run is held to: its agent's `maxTokensPerDay` (the
/// agent's runs), and the user's daily budget (`MANA_AI_USER_TOKENS_PER_DAY`,
/// every run of the user, with an agent or without).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub user_id: String,
    /// The agent and its daily maximum.
    pub agent: Option<(String, i64)>,
    /// The user's daily maximum.
    pub user_max: Option<i64>,
}

impl Budget {
    /// The budgets of a run of `agent` (None: no agent); None when unlimited.
    pub fn of(user_id: &str, agent: Option<&Agent>, user_per_day: Option<i64>) -> Option<Budget> {
        let agent = agent.and_then(|a| Some((a.id.clone(), a.max_tokens_per_day?)));
        if agent.is_none() && user_per_day.is_none() {
            return None;
        }
        Some(Budget {
            user_id: user_id.to_string(),
            agent,
            user_max: user_per_day,
        })
    }

    /// Whose budget the last 24 hours used up, if any: `agent` or `user`.
    pub async fn spent(
        &self,
        client: &impl GenericClient,
    ) -> Result<Option<&'static str>, tokio_postgres::Error> {
        if let Some((agent_id, max)) = &self.agent {
            if tokens_last_day(client, &self.user_id, agent_id).await? >= *max {
                return Ok(Some("agent"));
            }
        }
        if let Some(max) = self.user_max {
            if crate::store::usage::user_tokens_last_day(client, &self.user_id).await? >= max {
                return Ok(Some("user"));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agent(v: Value) -> Agent {
        Agent::from_record("a", v.as_object().unwrap().clone())
    }

    #[test]
    fn defaults_follow_the_contract() {
        let a = agent(json!({"name": "R"}));
        assert_eq!(
            (a.state.as_str(), a.max_concurrent, a.max_tokens_per_day),
            ("active", 1, None)
        );
        assert_eq!(a.state_gate(), None);
    }

    #[test]
    fn paused_and_archived_gate() {
        assert_eq!(
            agent(json!({"state": "paused"})).state_gate(),
            Some(GateDecision::SkippedPaused)
        );
        assert_eq!(
            agent(json!({"state": "archived"})).state_gate(),
            Some(GateDecision::SkippedArchived)
        );
    }

    #[test]
    fn odd_numbers_are_read_safely() {
        let a = agent(json!({"maxConcurrentMissions": -3, "maxTokensPerDay": "lots"}));
        assert_eq!((a.max_concurrent, a.max_tokens_per_day), (1, None));
        let b = agent(json!({"maxConcurrentMissions": 4, "maxTokensPerDay": 1000}));
        assert_eq!((b.max_concurrent, b.max_tokens_per_day), (4, Some(1000)));
    }

    #[test]
    fn a_run_is_held_to_its_agents_budget_and_the_users() {
        let capped = agent(json!({"maxTokensPerDay": 500}));
        let open = agent(json!({}));
        let of = |a: Option<&Agent>, user| Budget::of("u", a, user);
        let both = of(Some(&capped), Some(9)).unwrap();
        assert_eq!(both.agent, Some(("a".to_string(), 500)));
        assert_eq!(both.user_max, Some(9));
        // An agent without a cap is still held to the user's budget.
        let uncapped = of(Some(&open), Some(9)).unwrap();
        assert_eq!((uncapped.agent, uncapped.user_max), (None, Some(9)));
        assert_eq!(of(Some(&open), None), None);
        assert_eq!(of(None, Some(9)).unwrap().user_max, Some(9));
        assert_eq!(of(None, None), None);
    }
}
