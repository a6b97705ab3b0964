//! Native tool calling over rounds (docs/interfaces.md section 6): the request
//! carries `tools` (the allowed tools) and `tool_choice: auto`; each round's
//! calls are judged ([`crate::planner::tool_calls`]) and answered with
//! `role: tool` messages; the loop ends at a reply without calls (its text
//! is the summary), at `MANA_AI_PLANNER_ROUNDS`, at a full plan, or at a
//! budget: every round's tokens count before the next round is sent.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

use super::call::{Done, Exchange, Failure, PlanRequest, Tries};
use super::wire::{message, LlmAnswer, Reply, ToolRounds, Usage};
use super::{LlmClient, LlmError};
use crate::planner::structured::{note_tool_support, Form, FormPicker, ToolSupport};
use crate::planner::tool_calls::{tools_array, ToolPlan};
use crate::planner::{AnswerShape, ToolSpec};

/// What the rounds so far gathered.
#[derive(Default)]
struct Gathered {
    plan: ToolPlan,
    usage: Option<Usage>,
    spent: u64,
    resolved: Option<String>,
    /// The last text the model wrote beside its calls.
    last_text: String,
    rounds: u32,
}

impl LlmClient {
    /// The rounds of one tool-calling plan.
    pub(super) async fn tool_rounds<C, F>(
        &self,
        request: &PlanRequest<'_>,
        check: &C,
        tries: &mut Tries,
        picker: &mut FormPicker<'_>,
    ) -> Result<Done, Failure>
    where
        C: Fn(u64) -> F,
        F: Future<Output = Result<(), LlmError>>,
    {
        let tools = tools_array(request.tools, request.param_max_chars);
        let prompt = request.prompt;
        let mut messages = vec![
            message("system", &prompt.system_tools),
            message("user", &prompt.user_for_tools()),
        ];
        let mut got = Gathered::default();
        let closing = loop {
            got.rounds += 1;
            let exchange = Exchange {
                messages: &messages,
                form: Form::Tools,
                schema: None,
                tools: Some(&tools),
                spent: got.spent,
            };
            let reply = match self.exchange(&exchange, check, tries, picker).await {
                Ok(reply) => reply,
                Err(failure) if got.rounds > 1 && got.plan.has_steps() && !is_refusal(&failure) => {
                    got.rounds -= 1;
                    end_early(&failure);
                    break got.last_text.clone();
                }
                Err(failure) => return Err(failure),
            };
            got.take_usage(&reply, &messages);
            if reply.tool_calls.is_empty() {
                if got.rounds == 1 && picker.tools_ignored() {
                    return Ok(Done::ToolsIgnored);
                }
                break reply.content.unwrap_or_default();
            }
            if got.rounds == 1 {
                note_tool_support(self.endpoint.as_str(), ToolSupport::Works);
            }
            got.take_calls(reply, &mut messages, request.tools);
            if got.plan.is_full() || got.rounds >= self.config.rounds.max(1) {
                break got.last_text.clone();
            }
        };
        if let Some(m) = &self.planner_metrics {
            m.rounds.observe(f64::from(got.rounds));
        }
        Ok(Done::Answer(got.finish(closing)))
    }
}

impl Gathered {
    /// Takes a round's calls into the plan and the conversation: the
    /// model's message, then one tool message answering each call.
    fn take_calls(&mut self, reply: Reply, messages: &mut Vec<Value>, allowed: &[&ToolSpec]) {
        if let Some(text) = reply.content.as_deref().filter(|t| !t.trim().is_empty()) {
            self.last_text = text.to_string();
        }
        let answers = self.plan.take_round(&reply.tool_calls, allowed);
        messages.push(assistant(reply.message));
        messages.extend(answers);
    }

    /// Adds a round's usage (or, without one, about four characters a token
    /// of what was sent and answered) to the call's count.
    fn take_usage(&mut self, reply: &Reply, sent: &[Value]) {
        self.resolved = reply.resolved_model.clone().or(self.resolved.take());
        match reply.usage {
            Some(usage) => {
                self.usage = Some(self.usage.map_or(usage, |u| u.plus(usage)));
                self.spent = self.spent.saturating_add(usage.charged());
            }
            None => {
                let chars = serde_json::to_string(sent).map_or(0, |s| s.len())
                    + reply.message.to_string().len();
                self.spent = self.spent.saturating_add((chars / 4) as u64);
            }
        }
    }

    fn finish(self, closing: String) -> LlmAnswer {
        let mut plan = self.plan;
        let calls = std::mem::take(&mut plan.calls);
        LlmAnswer {
            tool_plan: Some(ToolRounds {
                plan: plan.finish(&closing),
                calls,
                rounds: self.rounds,
            }),
            content: closing,
            shape: AnswerShape::Json,
            usage: self.usage,
            attempts: 0,
            elapsed: Duration::ZERO,
            resolved_model: self.resolved,
        }
    }
}

/// The assistant's message as the next round's history carries it.
fn assistant(mut message: Value) -> Value {
    if let Some(object) = message.as_object_mut() {
        object.insert("role".into(), Value::from("assistant"));
    }
    message
}

/// `blocked` or `auth`: the run ends, whatever earlier rounds planned.
fn is_refusal(failure: &Failure) -> bool {
    matches!(failure, Failure::Error(LlmError::Refused { .. }))
}

/// A later round failed or was not sent: the steps so far stand.
fn end_early(failure: &Failure) {
    match failure {
        Failure::Error(LlmError::OverBudget(owner)) => {
            tracing::info!(
                budget = owner,
                "token budget spent; tool-calling rounds end here"
            );
        }
        Failure::Error(e) => {
            tracing::warn!(error = %e, "tool-calling round failed; the plan keeps the steps so far")
        }
        Failure::Refused { status, .. } => tracing::warn!(
            status,
            "tool-calling round refused; the plan keeps the steps so far"
        ),
    }
}
