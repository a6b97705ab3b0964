//! The chat-completion wire format: the request body mana-ai sends and the
//! parts of the answer it reads.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::planner::tool_calls::ToolCall;
use crate::planner::AnswerShape;

/// Token counts as the gateway reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    /// The sum of two rounds' counts.
    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.saturating_add(other.prompt_tokens),
            completion_tokens: self
                .completion_tokens
                .saturating_add(other.completion_tokens),
            total_tokens: self.total_tokens.saturating_add(other.total_tokens),
        }
    }

    /// Tokens to charge: the total, else prompt plus completion.
    pub fn charged(self) -> u64 {
        if self.total_tokens > 0 {
            self.total_tokens
        } else {
            self.prompt_tokens.saturating_add(self.completion_tokens)
        }
    }
}

/// A successful completion.
#[derive(Debug, Clone)]
pub struct LlmAnswer {
    /// `choices[0].message.content`, unparsed (native tool calling: the
    /// closing reply's text, which is the plan's summary).
    pub content: String,
    /// Whether the request that was answered asked for JSON (structured
    /// output) or free text: the parser reads the two differently.
    pub shape: AnswerShape,
    /// Summed over the rounds of a tool-calling plan.
    pub usage: Option<Usage>,
    /// Attempts this call took (1 = no retry).
    pub attempts: u32,
    /// Whole call, retries and backoff included.
    pub elapsed: Duration,
    /// The model mana-llm resolved the alias to (`X-Mana-LLM-Resolved`), clipped.
    pub resolved_model: Option<String>,
    /// Native tool calling: the plan its rounds built (already judged; the
    /// parser is not asked), with each call's outcome and the rounds taken.
    pub tool_plan: Option<ToolRounds>,
}

/// What the rounds of a tool-calling plan produced.
#[derive(Debug, Clone)]
pub struct ToolRounds {
    pub plan: crate::planner::PlannedIteration,
    pub calls: Vec<crate::planner::tool_calls::CallRecord>,
    pub rounds: u32,
}

#[derive(Serialize)]
pub(super) struct ChatRequest<'a> {
    pub model: &'a str,
    pub temperature: f64,
    pub messages: &'a [Value],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<&'static str>,
}

/// A chat message of `role` with text `content`.
pub(super) fn message(role: &str, content: &str) -> Value {
    serde_json::json!({"role": role, "content": content})
}

/// The parts of an answer the planner reads.
#[derive(Debug, Clone, Default)]
pub(super) struct Reply {
    /// `choices[0].message.content`; `None` when null or absent.
    pub content: Option<String>,
    /// `choices[0].message.tool_calls`, in order.
    pub tool_calls: Vec<ToolCall>,
    /// The message as sent, for the next round's history.
    pub message: Value,
    pub usage: Option<Usage>,
    pub resolved_model: Option<String>,
}

/// `choices[0].message` and `usage` of a chat-completion body. A message
/// with neither text nor tool calls is unusable.
pub(super) fn parse_answer(bytes: &[u8]) -> Result<Reply, String> {
    let body: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let choice = body
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or("no choices")?;
    let message = choice.get("message").cloned().unwrap_or(Value::Null);
    let content = message
        .get("content")
        .and_then(Value::as_str)
        .map(String::from);
    let tool_calls = match message.get("tool_calls") {
        Some(Value::Array(calls)) => calls.iter().map(tool_call).collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    if content.is_none() && tool_calls.is_empty() {
        return Err("choices[0].message.content is not a string".into());
    }
    // Usage is informational: a malformed one is dropped, not fatal.
    let usage = body.get("usage").and_then(|u| Usage::deserialize(u).ok());
    Ok(Reply {
        content,
        tool_calls,
        message,
        usage,
        resolved_model: None,
    })
}

/// One entry of `tool_calls`: `{id, type: function, function: {name, arguments}}`.
fn tool_call(call: &Value) -> Result<ToolCall, String> {
    let function = call.get("function").ok_or("a tool call has no function")?;
    let name = function.get("name").and_then(Value::as_str);
    let name = name.ok_or("a tool call has no function name")?;
    let arguments = match function.get("arguments") {
        Some(Value::String(text)) => text.clone(),
        // Some servers send the object itself.
        Some(value @ Value::Object(_)) => value.to_string(),
        _ => String::new(),
    };
    let id = call.get("id").and_then(Value::as_str).unwrap_or_default();
    Ok(ToolCall {
        id: id.to_string(),
        name: name.to_string(),
        arguments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_strictly_and_usage_leniently() {
        let ok = br#"{"choices":[{"message":{"content":"hi"}}],"usage":{"total_tokens":"x"}}"#;
        let reply = parse_answer(ok).unwrap();
        assert_eq!((reply.content.as_deref(), reply.usage), (Some("hi"), None));
        let calls = br#"{"choices":[{"message":{"content":null,"tool_calls":[{"id":"a","type":"function","function":{"name":"t","arguments":"{}"}}]}}]}"#;
        let reply = parse_answer(calls).unwrap();
        assert_eq!((reply.content, reply.tool_calls.len()), (None, 1));
        assert_eq!(reply.tool_calls[0].arguments, "{}");
        assert_eq!(
            parse_answer(br#"{"choices":[]}"#).unwrap_err(),
            "no choices"
        );
        assert!(parse_answer(b"<html>").unwrap_err().starts_with("not JSON"));
        assert!(parse_answer(br#"{"choices":[{"message":{"content":null}}]}"#).is_err());
    }
}
