//! `FakeLlm`: an OpenAI-compatible chat-completions server on loopback.
//!
//! Answers `POST /v1/chat/completions` from a [`Script`] (status, headers such
//! as `Retry-After`, body, delay; the last reply repeats) and records every
//! request, so tests can check the wire format and the prompt the model got.
//! Any other path answers 404, which catches a client posting to the wrong place.
//!
//! It also speaks as mana-llm, the gateway mana runs in production: answers
//! with tool calls ([`FakeLlm::tool_calls`], for native tool calling over
//! several rounds), typed errors with the gateway's HTTP statuses
//! ([`FakeLlm::error`]), string-`detail` errors ([`FakeLlm::plain_error`]),
//! and the `X-Mana-LLM-Resolved` header naming the model an alias resolved
//! to ([`FakeLlm::resolved`]). A server that ignores `tools` is a plain
//! [`FakeLlm::answer`] script: it answers with content whatever was asked.

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

    /// The header mana-llm names the resolved model in.
    pub const RESOLVED_HEADER: &'static str = "X-Mana-LLM-Resolved";

    /// `reply` as mana-llm sends it: with the resolved model's header.
    pub fn resolved(reply: FakeReply, model: &str) -> FakeReply {
        reply.header(Self::RESOLVED_HEADER, model)
    }

    /// A 200 answer whose message calls tools: `(id, name, arguments)`,
    /// `arguments` sent as the JSON text OpenAI's wire format carries; the
    /// message's content is `content` (`None`: null, as most servers send).
    pub fn tool_calls(calls: &[(&str, &str, &str)], content: Option<&str>) -> FakeReply {
        let calls: Vec<Value> = calls
            .iter()
            .map(|(id, name, arguments)| {
                json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}})
            })
            .collect();
        let mut body = Self::completion("", Some((100, 20)));
        body["choices"][0]["message"] =
            json!({"role": "assistant", "content": content, "tool_calls": calls});
        body["choices"][0]["finish_reason"] = json!("tool_calls");
        FakeReply::json(200, &body)
    }

    /// mana-llm's typed error `{"detail": {"kind", "message"}}` with the
    /// status the gateway uses for `kind` (docs/interfaces.md section 6).
    pub fn error(kind: &str, message: &str) -> FakeReply {
        let status = match kind {
            "blocked" => 422,
            "rate_limit" => 429,
            "capability" => 400,
            "no_healthy_provider" => 503,
            _ => 502, // truncated, auth, unknown
        };
        FakeReply::json(
            status,
            &json!({"detail": {"kind": kind, "message": message}}),
        )
    }

    /// mana-llm's error with a plain string `detail` (bad requests, 500s).
    pub fn plain_error(status: u16, detail: &str) -> FakeReply {
        FakeReply::json(status, &json!({"detail": detail}))
    }

    /// The JSON bodies of every request, oldest first.
    pub fn bodies(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter_map(RecordedRequest::json)
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
