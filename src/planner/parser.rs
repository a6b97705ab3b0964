//! Strict parsing of the model's answer into a plan (contract section 6).
//!
//! The JSON is the first fenced block (```` ```json ```` or a bare
//! ```` ``` ````), else the whole answer if, trimmed, it is a bare `{...}`.
//! An answer to a structured-output request ([`AnswerShape::Json`]) is read
//! the other way round: the whole answer first when it is a bare `{...}`,
//! because the server was asked for JSON and a string inside it may quote a
//! fence (seen: a rationale holding ```` ``` ```` failed as an unclosed block).
//! It must be an object with a `steps` array; every step an object whose
//! `toolName` is allowed and whose `rationale` is a non-empty string;
//! `params` defaults to `{}` and `summary` to `""`; a declared parameter
//! that is present has its declared type (`array`, `object`, ...) and, with
//! an enumeration, one of its values. Everything else fails
//! with a reason that names the step (`steps[i]`, 0-based).
//!
//! Decisions beyond the contract, each because the plan becomes proposals
//! the user has to review:
//! - more than [`MAX_STEPS`] steps is a failure, not a silent cut: the prompt
//!   promises 1 to 5, and a model that ignores that has ignored the other
//!   rules too; dropping steps could also drop what later steps rely on;
//! - zero steps is allowed (the iteration is then `approved` with nothing
//!   to review);
//! - a `summary` or `params` that is present but of the wrong type fails
//!   (`null` reads as absent);
//! - a raw control character (a line break, a tab) inside a JSON string is
//!   read as if it were escaped, as Python's `json.loads(strict=False)`
//!   does: the text is unambiguous, and llama-cpp-python's JSON grammar
//!   (0.3.x) lets a model write raw line breaks into strings, so under
//!   structured output most failed answers were only that;
//! - an answer over [`MAX_ANSWER_BYTES`] is refused before any scanning;
//!   all work below is linear in the answer's length;
//! - a reason never quotes the answer, not even a tool name the model made
//!   up: the answer may repeat decrypted input, and the reason goes to logs
//!   and to the user's `errorDetails`. It names what was wrong and where.

use std::borrow::Cow;
use std::fmt::Write;

use serde::Serialize;
use serde_json::{Map, Value};

use super::params::{check_types, ParamProblem};
use super::tools::ToolSpec;

/// Five steps of generous notes fit in a few KiB; 256 KiB means runaway output.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// The prompt asks for 1 to 5 steps.
pub const MAX_STEPS: usize = 5;
/// Deepest `params` a step may have (contract section 6): the write-back
/// wraps them six levels deeper and must stay foldable.
pub const MAX_PARAMS_DEPTH: usize = 16;

const FENCE: &str = "```";

/// What the model was asked to answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerShape {
    /// Free text with a fenced json block (contract section 6).
    FreeText,
    /// JSON, through structured output: a bare object comes first.
    Json,
}

/// A plan the model proposed, validated against the allowed tools.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedIteration {
    pub summary: String,
    pub steps: Vec<PlannedStep>,
    /// Later copies of a step (same tool, equal params) that were dropped.
    #[serde(skip)]
    pub duplicates_dropped: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedStep {
    pub summary: String,
    pub tool_name: String,
    pub params: Map<String, Value>,
    /// Trimmed; never empty.
    pub rationale: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("answer is {bytes} bytes, over the limit of {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("answer opens a ``` block that is never closed (cut off?)")]
    UnclosedFence,
    #[error("answer has neither a ```json block nor a bare {{...}} object")]
    NoJson,
    /// Where and what kind (`syntax`, `eof`, `data`), never the text.
    #[error("plan is not valid JSON ({kind} error at line {line}, column {column})")]
    NotJson {
        kind: &'static str,
        line: usize,
        column: usize,
    },
    #[error("plan is not a JSON object")]
    NotAnObject,
    #[error("plan has no `steps`")]
    StepsMissing,
    #[error("plan `steps` is not an array")]
    StepsNotArray,
    #[error("plan has {count} steps, more than the {limit} allowed")]
    TooManySteps { count: usize, limit: usize },
    #[error("plan `summary` is not a string")]
    SummaryNotString,
    #[error("steps[{0}] is not an object")]
    StepNotObject(usize),
    #[error("steps[{0}] has no string `toolName`")]
    MissingToolName(usize),
    #[error("steps[{0}] names a tool that is not available")]
    UnknownTool(usize),
    #[error("steps[{0}] has no non-empty string `rationale`")]
    MissingRationale(usize),
    #[error("steps[{0}] `params` is not an object")]
    ParamsNotObject(usize),
    #[error("steps[{0}] `summary` is not a string")]
    StepSummaryNotString(usize),
    #[error("steps[{0}] `params` is nested deeper than {MAX_PARAMS_DEPTH} levels")]
    ParamsTooDeep(usize),
    /// A declared parameter of the wrong type (an `array` that is a string).
    #[error("steps[{0}]: {1}")]
    BadParam(usize, ParamProblem),
}

/// Parses the model's answer. `allowed` finds a tool the planner offered
/// (after the agent's policy) by name; its declared parameters' types are
/// checked ([`check_types`]).
pub fn parse_plan<'t>(
    text: &str,
    shape: AnswerShape,
    allowed: impl Fn(&str) -> Option<&'t ToolSpec>,
) -> Result<PlannedIteration, ParseError> {
    if text.len() > MAX_ANSWER_BYTES {
        return Err(ParseError::TooLarge {
            bytes: text.len(),
            limit: MAX_ANSWER_BYTES,
        });
    }
    let json = escape_raw_controls(extract_json(text, shape)?);
    let value: Value = serde_json::from_str(&json).map_err(|e| ParseError::NotJson {
        kind: match e.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "data",
            serde_json::error::Category::Eof => "eof",
        },
        line: e.line(),
        column: e.column(),
    })?;
    let plan = value.as_object().ok_or(ParseError::NotAnObject)?;
    let summary = optional_string(plan.get("summary")).ok_or(ParseError::SummaryNotString)?;
    let steps = match plan.get("steps") {
        None => return Err(ParseError::StepsMissing),
        Some(Value::Array(steps)) => steps,
        Some(_) => return Err(ParseError::StepsNotArray),
    };
    if steps.len() > MAX_STEPS {
        return Err(ParseError::TooManySteps {
            count: steps.len(),
            limit: MAX_STEPS,
        });
    }
    let parsed = steps
        .iter()
        .enumerate()
        .map(|(i, step)| parse_step(i, step, &allowed))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(collapse(summary, parsed))
}

/// The plan of `steps` in order, later copies of a step (same tool, equal
/// params) dropped and counted.
pub fn collapse(summary: String, steps: Vec<PlannedStep>) -> PlannedIteration {
    let count = steps.len();
    let mut kept: Vec<PlannedStep> = Vec::with_capacity(count);
    for step in steps {
        if !kept.iter().any(|s| s.same_call(&step)) {
            kept.push(step);
        }
    }
    PlannedIteration {
        summary,
        duplicates_dropped: count - kept.len(),
        steps: kept,
    }
}

impl PlannedStep {
    /// Same tool, equal params: one proposal (contract section 6).
    pub fn same_call(&self, other: &PlannedStep) -> bool {
        self.tool_name == other.tool_name && self.params == other.params
    }
}

/// Levels of nested arrays and objects in `value` (a scalar is 0, `{}` 1).
pub(super) fn depth(value: &Value) -> usize {
    let children: Box<dyn Iterator<Item = &Value>> = match value {
        Value::Array(items) => Box::new(items.iter()),
        Value::Object(map) => Box::new(map.values()),
        _ => return 0,
    };
    1 + children.map(depth).max().unwrap_or(0)
}

fn parse_step<'t>(
    i: usize,
    step: &Value,
    allowed: &impl Fn(&str) -> Option<&'t ToolSpec>,
) -> Result<PlannedStep, ParseError> {
    let step = step.as_object().ok_or(ParseError::StepNotObject(i))?;
    let tool_name = step
        .get("toolName")
        .and_then(Value::as_str)
        .ok_or(ParseError::MissingToolName(i))?;
    let tool = allowed(tool_name).ok_or(ParseError::UnknownTool(i))?;
    let rationale = step.get("rationale").and_then(Value::as_str).map(str::trim);
    let rationale = rationale
        .filter(|r| !r.is_empty())
        .ok_or(ParseError::MissingRationale(i))?;
    let params = match step.get("params") {
        None | Some(Value::Null) => Map::new(),
        Some(value @ Value::Object(params)) if depth(value) <= MAX_PARAMS_DEPTH => params.clone(),
        Some(Value::Object(_)) => return Err(ParseError::ParamsTooDeep(i)),
        Some(_) => return Err(ParseError::ParamsNotObject(i)),
    };
    check_types(tool, &params).map_err(|e| ParseError::BadParam(i, e))?;
    let summary =
        optional_string(step.get("summary")).ok_or(ParseError::StepSummaryNotString(i))?;
    Ok(PlannedStep {
        summary,
        tool_name: tool_name.to_owned(),
        params,
        rationale: rationale.to_owned(),
    })
}

/// `Some("")` for absent or null, `Some(s)` for a string, `None` otherwise.
fn optional_string(value: Option<&Value>) -> Option<String> {
    match value {
        None | Some(Value::Null) => Some(String::new()),
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => None,
    }
}

/// The JSON text: the body of the first ```` ``` ```` or ```` ```json ````
/// block, else the whole answer when it is a bare object. Blocks tagged with
/// another language (```` ```text ````) are skipped, so prose that quotes
/// an example before the real answer does not hide it. For
/// [`AnswerShape::Json`] a bare object wins over any fence.
fn extract_json(text: &str, shape: AnswerShape) -> Result<&str, ParseError> {
    let bare = bare_object(text);
    if let (AnswerShape::Json, Some(bare)) = (shape, bare) {
        return Ok(bare);
    }
    let mut rest = text;
    while let Some(open) = rest.find(FENCE) {
        let after = &rest[open + FENCE.len()..];
        // The info string is the run of ASCII letters and digits right after
        // the fence; ASCII keeps the slice on a character boundary.
        let tag_len = after
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(after.len());
        let (tag, body) = after.split_at(tag_len);
        let close = body.find(FENCE).ok_or(ParseError::UnclosedFence)?;
        if tag.is_empty() || tag.eq_ignore_ascii_case("json") {
            return Ok(body[..close].trim());
        }
        rest = &body[close + FENCE.len()..];
    }
    bare.ok_or(ParseError::NoJson)
}

/// The trimmed answer when it is a bare `{...}`.
fn bare_object(text: &str) -> Option<&str> {
    let trimmed = text.trim();
    (trimmed.starts_with('{') && trimmed.ends_with('}')).then_some(trimmed)
}

/// `json` with every raw control character (U+0000 to U+001F) inside a
/// string literal replaced by its escape; borrowed when there is none.
/// Outside strings such characters are whitespace or errors, and stay. A
/// `NotJson` position then counts in the escaped text.
fn escape_raw_controls(json: &str) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    let mut copied = 0;
    let (mut in_string, mut escaped) = (false, false);
    for (i, c) in json.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            c if in_string && c < ' ' => {
                let out = out.get_or_insert_with(|| String::with_capacity(json.len() + 16));
                out.push_str(&json[copied..i]);
                let _ = match c {
                    '\n' => out.write_str("\\n"),
                    '\r' => out.write_str("\\r"),
                    '\t' => out.write_str("\\t"),
                    c => write!(out, "\\u{:04x}", u32::from(c)),
                };
                copied = i + 1;
            }
            _ => {}
        }
    }
    match out {
        None => Cow::Borrowed(json),
        Some(mut out) => {
            out.push_str(&json[copied..]);
            Cow::Owned(out)
        }
    }
}

#[cfg(test)]
#[path = "parser_tests.rs"]
mod tests;
