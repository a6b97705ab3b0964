//! Where plans come from: the LLM gateway, or the offline planner. A run
//! asks [`Planner::plan`] and does not care which one answers.

use std::future::Future;
use std::time::Duration;

use tracing::Instrument;

use super::llm::{LlmAnswer, LlmClient, LlmError, PlanRequest};
use super::{offline, AnswerShape, MissionView};

/// Where plans come from.
pub enum Planner {
    /// An OpenAI-compatible gateway.
    Llm(Box<LlmClient>),
    /// No LLM configured: a fixed, honest example plan (the demo, `mana-ai-demo`).
    Offline,
}

impl Planner {
    /// The answer to one prompt: the model's, or the offline planner's fixed
    /// plan for `mission` with the first suitable of `tools`. `check(spent)`
    /// is asked before each request to the model with the tokens the call
    /// used so far (see [`LlmClient::complete_prompt`]); the offline planner
    /// sends none.
    pub async fn plan<C, F>(
        &self,
        request: &PlanRequest<'_>,
        mission: &MissionView<'_>,
        check: C,
    ) -> Result<LlmAnswer, LlmError>
    where
        C: Fn(u64) -> F,
        F: Future<Output = Result<(), LlmError>>,
    {
        let tools = request.tools;
        match self {
            Planner::Llm(llm) => {
                llm.complete_prompt(request, check)
                    .instrument(tracing::info_span!("llm_call"))
                    .await
            }
            Planner::Offline => Ok(LlmAnswer {
                content: offline::offline_answer(mission, tools),
                shape: AnswerShape::FreeText,
                usage: None,
                attempts: 1,
                elapsed: Duration::ZERO,
                resolved_model: None,
                tool_plan: None,
            }),
        }
    }

    /// Whether this is the offline planner (the demo says so).
    pub fn is_offline(&self) -> bool {
        matches!(self, Planner::Offline)
    }
}
