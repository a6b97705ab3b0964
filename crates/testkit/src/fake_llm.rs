//! `FakeLlm`: an OpenAI-compatible chat-completions server on loopback.
//!
//! Answers `POST /v1/chat/completions` from a [`Script`] (status, headers such
//! as `Retry-After`, body, delay; the last reply repeats) and records every
//! request, so tests can check the wire format and the prompt the model got.
//! Any other path answers 404, which catches a client posting to the wrong place.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::http::{FakeReply, RecordedRequest, Script, TestServer};

/// The path an OpenAI-compatible gateway serves.
pub const COMPLETIONS_PATH: &str = "/v1/chat/completions";

/// A running fake LLM gateway; stops on drop.
pub struct FakeLlm {
    server: TestServer,
}

/// The two messages of one recorded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePrompt {
    pub system: String,
    pub user: String,
}

impl FakeLlm {
    pub async fn start(script: Vec<FakeReply>) -> std::io::Result<FakeLlm> {
        let script = Arc::new(Script::new(script));
        let server = TestServer::start(move |request| {
            let reply = if request.method == hyper::Method::POST && request.path == COMPLETIONS_PATH
            {
                script.next_reply()
            } else {
                FakeReply::raw(404, "not found")
            };
            reply.into_response()
        })
        .await?;
        Ok(FakeLlm { server })
    }

    /// Base URL for `LlmConfig::base_url` (the client appends the path).
    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.server.requests()
    }

    /// The system and user message of every request, oldest first.
    pub fn prompts(&self) -> Vec<FakePrompt> {
        let text = |body: &Value, i: usize| {
            body["messages"][i]["content"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        self.requests()
            .iter()
            .filter_map(RecordedRequest::json)
            .map(|body| FakePrompt {
                system: text(&body, 0),
                user: text(&body, 1),
            })
            .collect()
    }

    /// A 200 answer whose `choices[0].message.content` is `content`, with usage.
    pub fn answer(content: &str) -> FakeReply {
        FakeReply::json(200, &Self::completion(content, Some((120, 30))))
    }

    /// A chat-completion body; `usage` is `(prompt_tokens, completion_tokens)`.
    pub fn completion(content: &str, usage: Option<(u64, u64)>) -> Value {
        let mut body = json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        });
        if let Some((prompt, completion)) = usage {
            body["usage"] = json!({
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            });
        }
        body
    }
}
