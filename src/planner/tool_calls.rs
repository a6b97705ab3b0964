//! Native tool calling (docs/interfaces.md section 6), the pure part: the request's
//! `tools` array and the judging of each call a model
//! makes over the rounds of one plan.
//!
//! - `tools` lists exactly the allowed tools, each with its declared
//!   parameters (descriptions, enumerations, `array` and `object` types) and
//!   one more, `rationale` (required, at least one character): the reason
//!   the user reads, which a step must have in every form;
//! - the system message (`prompt_tool_system.rs`) has no tool list (the `tools`
//!   array is one) and no instructions about the answer's format;
//! - each call is checked against the allowed set and the tool's parameters
//!   ([`check_call`]); a valid one becomes a step and is answered that it was
//!   recorded for the user's app, an invalid one is answered with what was
//!   wrong (so the model can correct it) and never becomes a step; a repeat
//!   of a recorded call (same tool, equal params) is answered as such and
//!   counted, not staged twice. mana-ai executes nothing.

use std::fmt::Write;

use serde_json::{json, Map, Value};

use super::params::{self, ParamProblem};
use super::parser::{collapse, depth, PlannedIteration, PlannedStep, MAX_PARAMS_DEPTH, MAX_STEPS};
use super::schema::{params_schema, MAX_RATIONALE_CHARS};
use super::text::clip;
use super::tools::ToolSpec;

/// The argument that carries a step's rationale.
pub const RATIONALE: &str = "rationale";
/// Longest summary kept from the model's closing reply.
pub const MAX_REPLY_SUMMARY_CHARS: usize = 500;

/// The request's `tools`: one function per allowed tool, in order.
pub fn tools_array(allowed: &[&ToolSpec], param_max_chars: usize) -> Value {
    Value::Array(
        allowed
            .iter()
            .map(|tool| tool_function(tool, param_max_chars))
            .collect(),
    )
}

fn tool_function(tool: &ToolSpec, param_max_chars: usize) -> Value {
    let mut parameters = params_schema(tool, param_max_chars);
    if let Some(properties) = parameters["properties"].as_object_mut() {
        for p in &tool.parameters {
            let described = p.description.as_deref().filter(|d| !d.is_empty());
            if let (Some(d), Some(schema)) = (described, properties.get_mut(&p.name)) {
                schema["description"] = json!(d);
            }
        }
        let reason =
            "Warum dieser Schritt der Mission dient (ein bis zwei Sätze, der Nutzer liest sie)";
        properties.insert(
            RATIONALE.into(),
            json!({"type": "string", "minLength": 1, "maxLength": MAX_RATIONALE_CHARS, "description": reason}),
        );
    }
    if let Some(required) = parameters["required"].as_array_mut() {
        required.push(json!(RATIONALE));
    }
    json!({
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": parameters},
    })
}

/// One call as the model made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments' JSON text, unparsed.
    pub arguments: String,
}

/// Why a call did not become a step. Never quotes the model's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallProblem {
    #[error("this tool does not exist or is not allowed in this run")]
    UnknownTool,
    #[error("the arguments are not a JSON object")]
    NotAnObject,
    #[error("the arguments are nested deeper than {MAX_PARAMS_DEPTH} levels")]
    TooDeep,
    #[error("the argument `rationale` is missing or empty")]
    NoRationale,
    #[error("{0}")]
    Param(ParamProblem),
    #[error("the plan already has {MAX_STEPS} steps")]
    TooManySteps,
}

/// How a call ended: the label of `tool_calls_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallOutcome {
    Planned,
    Duplicate,
    Invalid,
}

impl CallOutcome {
    pub const ALL: [CallOutcome; 3] = [
        CallOutcome::Planned,
        CallOutcome::Duplicate,
        CallOutcome::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Planned => "planned",
            CallOutcome::Duplicate => "duplicate",
            CallOutcome::Invalid => "invalid",
        }
    }
}

/// A call's step: an allowed tool, an object of arguments holding a
/// rationale, the rest the tool's parameters ([`params::check_call`]).
pub fn check_call(call: &ToolCall, allowed: &[&ToolSpec]) -> Result<PlannedStep, CallProblem> {
    let tool = allowed
        .iter()
        .find(|t| t.name == call.name)
        .ok_or(CallProblem::UnknownTool)?;
    let text = call.arguments.trim();
    let value: Value = match text {
        "" => Value::Object(Map::new()),
        _ => serde_json::from_str(text).map_err(|_| CallProblem::NotAnObject)?,
    };
    if depth(&value) > MAX_PARAMS_DEPTH {
        return Err(CallProblem::TooDeep);
    }
    let Value::Object(mut args) = value else {
        return Err(CallProblem::NotAnObject);
    };
    let rationale = match args.remove(RATIONALE) {
        Some(Value::String(r)) if !r.trim().is_empty() => r.trim().to_string(),
        _ => return Err(CallProblem::NoRationale),
    };
    params::check_call(tool, &args).map_err(CallProblem::Param)?;
    Ok(PlannedStep {
        summary: String::new(),
        tool_name: tool.name.clone(),
        params: args,
        rationale,
    })
}

/// One judged call: for the metrics (the name as the model wrote it, to be
/// bounded to the catalog by the caller) and nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub name: String,
    pub outcome: CallOutcome,
}

/// The plan as the rounds build it.
#[derive(Debug, Default)]
pub struct ToolPlan {
    steps: Vec<PlannedStep>,
    duplicates: usize,
    pub calls: Vec<CallRecord>,
}

impl ToolPlan {
    /// Judges one round's calls; returns the `role: tool` message of each.
    pub fn take_round(&mut self, calls: &[ToolCall], allowed: &[&ToolSpec]) -> Vec<Value> {
        calls
            .iter()
            .map(|call| {
                let (outcome, text) = self.judge(call, allowed);
                self.calls.push(CallRecord {
                    name: call.name.clone(),
                    outcome,
                });
                json!({"role": "tool", "tool_call_id": call.id, "content": text})
            })
            .collect()
    }

    fn judge(&mut self, call: &ToolCall, allowed: &[&ToolSpec]) -> (CallOutcome, String) {
        let step = check_call(call, allowed).and_then(|step| {
            let full = self.steps.len() >= MAX_STEPS;
            let repeat = self.steps.iter().any(|s| s.same_call(&step));
            if full && !repeat {
                return Err(CallProblem::TooManySteps);
            }
            Ok(step)
        });
        match step {
            Ok(step) if self.steps.iter().any(|s| s.same_call(&step)) => {
                self.duplicates += 1;
                let text = "Schon vorgemerkt: derselbe Aufruf steht bereits im Plan; er wird nicht doppelt übernommen.";
                (CallOutcome::Duplicate, text.to_string())
            }
            Ok(step) => {
                self.steps.push(step);
                let text = "Aufruf vorgemerkt: er wurde für die App des Nutzers aufgezeichnet, \
                            die ihn ausführt oder vorlegt. Hier wird nichts ausgeführt.";
                (CallOutcome::Planned, text.to_string())
            }
            Err(problem) => (CallOutcome::Invalid, problem_text(&problem, allowed)),
        }
    }

    /// Whether a call became a step yet.
    pub fn has_steps(&self) -> bool {
        !self.steps.is_empty()
    }

    /// Whether no further call can become a step.
    pub fn is_full(&self) -> bool {
        self.steps.len() >= MAX_STEPS
    }

    /// The plan, its summary the model's closing reply (clipped).
    pub fn finish(self, reply: &str) -> PlannedIteration {
        let summary = clip(reply.trim(), MAX_REPLY_SUMMARY_CHARS).into_owned();
        let mut plan = collapse(summary, self.steps);
        plan.duplicates_dropped += self.duplicates;
        plan
    }
}

/// What the model is told about a call that did not become a step.
fn problem_text(problem: &CallProblem, allowed: &[&ToolSpec]) -> String {
    let mut text = format!("Fehler: {problem}. Der Aufruf wurde nicht übernommen.");
    if matches!(problem, CallProblem::UnknownTool) {
        let names: Vec<&str> = allowed.iter().map(|t| t.name.as_str()).collect();
        let _ = write!(text, " Erlaubt sind: {}.", names.join(", "));
    }
    text
}

#[cfg(test)]
#[path = "tool_calls_tests.rs"]
mod tests;
