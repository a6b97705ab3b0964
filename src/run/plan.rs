//! Phase 5 of a run: the prompt, the planner's answer and its strict parse.

use chrono::{DateTime, Utc};

use super::admit::Admitted;
use super::claimed::Claimed;
use super::due::DueRun;
use super::gates::Budget;
use super::phase::Phase;
use super::tool_counts::ToolCounts;
use super::{Outcome, Runner};
use crate::planner::llm::{LlmAnswer, LlmError, PlanRequest};
use crate::planner::{
    build_prompt, parse_plan, AgentContext, PlannedIteration, Prompt, PromptInput, ResolvedInput,
    ToolSpec,
};
use crate::store;

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FailureKind {
    /// The planner (LLM) failed after its retries.
    Planner,
    /// The answer failed the strict parser.
    Parse,
    /// mana-llm refused the request (`blocked`, `auth`): final at once.
    Refused,
}

impl FailureKind {
    /// `errorDetails.name` of a final failed iteration.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Planner => "PlannerError",
            FailureKind::Parse => "ParseError",
            FailureKind::Refused => "PlannerRefused",
        }
    }

    pub fn phase(self) -> Phase {
        match self {
            FailureKind::Planner | FailureKind::Refused => Phase::CallingLlm,
            FailureKind::Parse => Phase::ParsingResponse,
        }
    }

    /// Whether the first failure of this kind writes the failed iteration.
    pub fn is_final(self) -> bool {
        self == FailureKind::Refused
    }

    /// How the run ended; `final_` when a failed iteration was written.
    pub fn outcome(self, final_: bool) -> Outcome {
        match self {
            FailureKind::Planner | FailureKind::Refused => Outcome::PlannerFailed { final_ },
            FailureKind::Parse => Outcome::ParseFailed { final_ },
        }
    }
}

/// What the planning phase produced.
pub(super) enum Planned {
    /// A plan that passed the parser.
    Plan {
        plan: PlannedIteration,
        tokens_used: i64,
    },
    /// No plan: why, and the tokens the answer cost (0 without one).
    Failed {
        kind: FailureKind,
        message: String,
        tokens_used: i64,
    },
    /// A token budget was spent before a request could be sent (by runs
    /// beside this one): the run is skipped like at admission.
    OverBudget,
}

impl Runner {
    /// Prompts the planner and parses its answer. Holds no pooled connection.
    pub(super) async fn plan(
        &self,
        due: &DueRun,
        admitted: &Admitted,
        tools: &[&ToolSpec],
        inputs: Vec<ResolvedInput>,
        claimed: &mut Claimed,
        started: DateTime<Utc>,
    ) -> Planned {
        let deps = &self.deps;
        let prompt = build_prompt(&PromptInput {
            mission: due.view(),
            inputs: &inputs,
            agent: admitted
                .agent
                .as_ref()
                .map(|a| AgentContext::from_record(&a.record)),
            catalog: deps.catalog.tools(),
            tools,
            now: Some(started),
            param_max_chars: deps.param_max_chars,
        });
        self.observe_prompt(&due.slot.mission_id, &prompt, tools.len(), &inputs);
        drop(inputs);
        let user_budget = deps.cost.user_tokens_per_day;
        let budget = Budget::of(&due.slot.user_id, admitted.agent.as_ref(), user_budget);
        let check = |spent: u64| self.check_budget(budget.as_ref(), spent);
        let request = PlanRequest {
            prompt: &prompt,
            tools,
            param_max_chars: deps.param_max_chars,
        };
        let answer = match deps.planner.plan(&request, &due.view(), check).await {
            Ok(answer) => answer,
            Err(e) => return not_answered(e, &prompt),
        };
        if deps.failpoint.as_deref() == Some("after-llm") {
            tracing::error!("failpoint after-llm: aborting the process");
            std::process::abort();
        }
        if let Some(model) = &answer.resolved_model {
            tracing::Span::current().record("resolved_model", model.as_str());
            self.record_resolved_model(due, claimed, model).await;
        }
        claimed.enter(Phase::ParsingResponse);
        let tokens_used = tokens(&answer, &prompt.system, &prompt.user);
        self.judge(answer, admitted, tools, tokens_used)
    }

    /// The plan of an answer: the one tool-calling rounds built, else the
    /// parser's reading of its text; counted in the planner's metrics.
    fn judge(
        &self,
        answer: LlmAnswer,
        admitted: &Admitted,
        tools: &[&ToolSpec],
        tokens_used: i64,
    ) -> Planned {
        let deps = &self.deps;
        let counts = ToolCounts {
            metrics: &deps.metrics.planner,
            catalog: &deps.catalog,
            policy: admitted.policy.as_ref(),
        };
        if let Some(rounds) = answer.tool_plan {
            counts.calls(&rounds.calls);
            deps.metrics
                .duplicate_steps
                .inc_by(rounds.plan.duplicates_dropped as u64);
            return Planned::Plan {
                plan: rounds.plan,
                tokens_used,
            };
        }
        let allowed = |name: &str| tools.iter().copied().find(|t| t.name == name);
        match parse_plan(&answer.content, answer.shape, allowed) {
            Ok(plan) => {
                counts.steps(&plan);
                deps.metrics
                    .duplicate_steps
                    .inc_by(plan.duplicates_dropped as u64);
                Planned::Plan { plan, tokens_used }
            }
            Err(e) => {
                deps.metrics.parse_failures.inc();
                Planned::Failed {
                    kind: FailureKind::Parse,
                    message: e.to_string(),
                    tokens_used,
                }
            }
        }
    }

    /// Notes the resolved model in `mission_runs`; a failure only loses the note.
    async fn record_resolved_model(&self, due: &DueRun, claimed: &Claimed, model: &str) {
        let token = claimed.token();
        let result = match self.deps.pool.get().await {
            Ok(client) => store::runs::record_resolved_model(&**client, &due.slot, token, model)
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::Error::from(e)),
        };
        if let Err(e) = result {
            tracing::warn!(error = %format!("{e:#}"), "could not record the resolved model");
        }
    }
}

impl Runner {
    /// Asked before each LLM request: is the run's token budget spent,
    /// counting the `spent` tokens of the call's earlier rounds (not yet
    /// recorded)? Takes a pooled connection only for the query.
    async fn check_budget(&self, budget: Option<&Budget>, spent: u64) -> Result<(), LlmError> {
        let Some(budget) = budget else {
            return Ok(());
        };
        let not_checked = |e: &dyn std::fmt::Display| {
            LlmError::NotChecked(format!("the token budget could not be read: {e}"))
        };
        let client = self.deps.pool.get().await.map_err(|e| not_checked(&e))?;
        let pending = i64::try_from(spent).unwrap_or(i64::MAX);
        let over = |used: i64, max: i64| used.saturating_add(pending) >= max;
        if let Some((agent_id, max)) = &budget.agent {
            let used = super::gates::tokens_last_day(&**client, &budget.user_id, agent_id).await;
            if over(used.map_err(|e| not_checked(&e))?, *max) {
                return Err(LlmError::OverBudget("agent"));
            }
        }
        if let Some(max) = budget.user_max {
            let used = store::usage::user_tokens_last_day(&**client, &budget.user_id).await;
            if over(used.map_err(|e| not_checked(&e))?, max) {
                return Err(LlmError::OverBudget("user"));
            }
        }
        Ok(())
    }
}

/// What a run without an answer ends with.
fn not_answered(error: LlmError, prompt: &Prompt) -> Planned {
    if let LlmError::Refused { .. } = &error {
        return Planned::Failed {
            kind: FailureKind::Refused,
            message: error.to_string(),
            tokens_used: 0,
        };
    }
    let tokens_used = match error {
        LlmError::OverBudget(owner) => {
            tracing::info!(
                budget = owner,
                "token budget spent during the run; LLM request not sent"
            );
            return Planned::OverBudget;
        }
        // A 2xx with an unusable body: the model read the prompt.
        LlmError::BadAnswer(_) => estimate(&prompt.system, &prompt.user, ""),
        _ => 0,
    };
    Planned::Failed {
        kind: FailureKind::Planner,
        message: error.to_string(),
        tokens_used,
    }
}

/// Tokens to charge: the gateway's count, else about four characters a token.
/// The gateway's numbers are not trusted to fit: a count past `i64::MAX`
/// charges `i64::MAX` (the budget is then spent), never wraps negative.
fn tokens(answer: &LlmAnswer, system: &str, user: &str) -> i64 {
    let charge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    match &answer.usage {
        Some(u) if u.total_tokens > 0 => charge(u.total_tokens),
        Some(u) if u.prompt_tokens > 0 || u.completion_tokens > 0 => {
            charge(u.prompt_tokens.saturating_add(u.completion_tokens))
        }
        _ => estimate(system, user, &answer.content),
    }
}

/// About four characters a token.
fn estimate(system: &str, user: &str, answer: &str) -> i64 {
    ((system.len() + user.len() + answer.len()) / 4) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::llm::Usage;

    fn answered(usage: Usage) -> LlmAnswer {
        LlmAnswer {
            content: "{}".into(),
            shape: crate::planner::AnswerShape::Json,
            usage: Some(usage),
            attempts: 1,
            elapsed: std::time::Duration::ZERO,
            resolved_model: None,
            tool_plan: None,
        }
    }

    #[test]
    fn token_counts_past_i64_charge_the_most_never_a_negative_number() {
        let huge = |total, prompt, completion| {
            tokens(
                &answered(Usage {
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                    total_tokens: total,
                }),
                "",
                "",
            )
        };
        assert_eq!(huge(u64::MAX, 0, 0), i64::MAX);
        assert_eq!(huge(0, u64::MAX, u64::MAX), i64::MAX);
        assert_eq!(huge(0, 900, 100), 1000);
        assert_eq!(huge(1234, 1, 1), 1234);
    }
}
