//! The chat-completion wire format: the request body mana-ai sends and the
//! parts of the answer it reads.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::planner::AnswerShape;

/// Token counts as the gateway reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// A successful completion.
#[derive(Debug, Clone)]
pub struct LlmAnswer {
    /// `choices[0].message.content`, unparsed.
    pub content: String,
    /// Whether the request that was answered asked for JSON (structured
    /// output) or free text: the parser reads the two differently.
    pub shape: AnswerShape,
    pub usage: Option<Usage>,
    /// Attempts this call took (1 = no retry).
    pub attempts: u32,
    /// Whole call, retries and backoff included.
    pub elapsed: Duration,
}

#[derive(Serialize)]
pub(super) struct ChatRequest<'a> {
    pub model: &'a str,
    pub temperature: f64,
    pub messages: [ChatMessage<'a>; 2],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_format: Option<Value>,
}

#[derive(Serialize)]
pub(super) struct ChatMessage<'a> {
    pub role: &'static str,
    pub content: &'a str,
}

/// `choices[0].message.content` and `usage` of a chat-completion body.
pub(super) fn parse_answer(bytes: &[u8]) -> Result<(String, Option<Usage>), String> {
    let body: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let choice = body
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or("no choices")?;
    let content = choice
        .get("message")
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .ok_or("choices[0].message.content is not a string")?;
    // Usage is informational: a malformed one is dropped, not fatal.
    let usage = body.get("usage").and_then(|u| Usage::deserialize(u).ok());
    Ok((content.to_string(), usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_strictly_and_usage_leniently() {
        let ok = br#"{"choices":[{"message":{"content":"hi"}}],"usage":{"total_tokens":"x"}}"#;
        assert_eq!(parse_answer(ok).unwrap(), ("hi".to_string(), None));
        assert_eq!(
            parse_answer(br#"{"choices":[]}"#).unwrap_err(),
            "no choices"
        );
        assert!(parse_answer(b"<html>").unwrap_err().starts_with("not JSON"));
        assert!(parse_answer(br#"{"choices":[{"message":{"content":null}}]}"#).is_err());
    }
}
