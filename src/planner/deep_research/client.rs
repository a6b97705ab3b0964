//! The HTTP client of mana-research's async research (docs/interfaces.md section 6):
//! submit `POST /api/v1/internal/research/async` `{query, provider}` (30 s)
//! and poll `GET /api/v1/internal/research/async/{taskId}` (15 s), with the
//! service key, the user id and `X-App-Id: mana-ai`. Errors say which call
//! failed and how, never the answer; the caller branches on 404 and 401.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{Answer, Citation};
use crate::config::Secret;
use crate::planner::llm::{describe, join_path, read_body_limited, BodyError};

pub const SUBMIT_TIMEOUT: Duration = Duration::from_secs(30);
pub const POLL_TIMEOUT: Duration = Duration::from_secs(15);
const ASYNC_PATH: &str = "api/v1/internal/research/async";
/// A research answer with its citations is tens of KiB; this is not one.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Longest task or provider id kept (they go into the database and URLs).
const MAX_ID_BYTES: usize = 256;

/// Which call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Submit,
    Poll,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Call::Submit => "submit",
            Call::Poll => "poll",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeepResearchError {
    #[error("mana-research {call} timed out after {} ms", after.as_millis())]
    Timeout { call: Call, after: Duration },
    #[error("mana-research {call} unreachable: {reason}")]
    Unreachable { call: Call, reason: String },
    #[error("mana-research {call} answered HTTP {status}")]
    Status { call: Call, status: u16 },
    #[error("mana-research {call} answer unusable: {reason}")]
    BadAnswer { call: Call, reason: String },
    #[error("mana-research client misconfigured: {0}")]
    Config(String),
}

impl DeepResearchError {
    /// mana-research does not know the task (404) or refuses us (401):
    /// polling it again cannot help.
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            DeepResearchError::Status {
                status: 404 | 401,
                ..
            }
        )
    }
}

/// A job mana-research accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub task_id: String,
    pub provider_id: String,
}

/// A poll's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum PollStatus {
    Queued,
    Running,
    Completed(Answer),
    Failed,
    Cancelled,
}

/// mana-research's async research; cheap to clone.
#[derive(Debug, Clone)]
pub struct DeepResearchClient {
    http: reqwest::Client,
    async_url: reqwest::Url,
    service_key: Secret,
    provider: String,
    submit_timeout: Duration,
    poll_timeout: Duration,
}

impl DeepResearchClient {
    /// `base_url` is `MANA_RESEARCH_URL`; production uses the `*_TIMEOUT`s.
    pub fn new(
        base_url: &str,
        service_key: Secret,
        provider: &str,
        timeouts: (Duration, Duration),
    ) -> Result<DeepResearchClient, DeepResearchError> {
        let base = reqwest::Url::parse(base_url).map_err(|e| {
            DeepResearchError::Config(format!("MANA_RESEARCH_URL is not a URL: {e}"))
        })?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| DeepResearchError::Config(describe(&e)))?;
        Ok(DeepResearchClient {
            http,
            async_url: join_path(&base, ASYNC_PATH),
            service_key,
            provider: provider.to_string(),
            submit_timeout: timeouts.0,
            poll_timeout: timeouts.1,
        })
    }

    /// Submits `query` for `user_id`.
    pub async fn submit(&self, user_id: &str, query: &str) -> Result<Submitted, DeepResearchError> {
        let call = Call::Submit;
        let body = json!({ "query": query, "provider": self.provider });
        let request = self.http.post(self.async_url.clone()).json(&body);
        let answer = self
            .send(call, request, user_id, self.submit_timeout)
            .await?;
        let bad = |reason: &str| DeepResearchError::BadAnswer {
            call,
            reason: reason.into(),
        };
        let task_id = id(&answer, "taskId").ok_or_else(|| bad("no usable taskId"))?;
        let provider_id = id(&answer, "providerId").unwrap_or_else(|| self.provider.clone());
        Ok(Submitted {
            task_id,
            provider_id,
        })
    }

    /// Where task `task_id` stands.
    pub async fn poll(
        &self,
        user_id: &str,
        task_id: &str,
    ) -> Result<PollStatus, DeepResearchError> {
        let call = Call::Poll;
        let mut url = self.async_url.clone();
        url.path_segments_mut()
            .map_err(|()| DeepResearchError::Config("MANA_RESEARCH_URL cannot have a path".into()))?
            .push(task_id);
        let answer = self
            .send(call, self.http.get(url), user_id, self.poll_timeout)
            .await?;
        poll_status(&answer).map_err(|reason| DeepResearchError::BadAnswer { call, reason })
    }

    async fn send(
        &self,
        call: Call,
        request: reqwest::RequestBuilder,
        user_id: &str,
        timeout: Duration,
    ) -> Result<Value, DeepResearchError> {
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                DeepResearchError::Timeout {
                    call,
                    after: timeout,
                }
            } else {
                DeepResearchError::Unreachable {
                    call,
                    reason: describe(&e),
                }
            }
        };
        let response = request
            .timeout(timeout)
            .header("X-Service-Key", self.service_key.expose())
            .header("X-User-Id", user_id)
            .header("X-App-Id", "mana-ai")
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            let status = status.as_u16();
            return Err(DeepResearchError::Status { call, status });
        }
        let bytes = read_body_limited(response, MAX_BODY_BYTES)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge(limit) => DeepResearchError::BadAnswer {
                    call,
                    reason: format!("body larger than {limit} bytes"),
                },
                BodyError::Transport(e) => transport(e),
            })?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(value) if value.is_object() => Ok(value),
            Ok(_) => Err(DeepResearchError::BadAnswer {
                call,
                reason: "not a JSON object".into(),
            }),
            Err(e) => Err(DeepResearchError::BadAnswer {
                call,
                reason: format!("not JSON: {e}"),
            }),
        }
    }
}

/// A non-empty id of at most [`MAX_ID_BYTES`] visible ASCII characters.
fn id(answer: &Value, key: &str) -> Option<String> {
    let text = answer.get(key)?.as_str()?;
    let ok = !text.is_empty()
        && text.len() <= MAX_ID_BYTES
        && text.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| text.to_string())
}

/// Reads a poll answer; an unknown status is an unusable answer.
pub(super) fn poll_status(answer: &Value) -> Result<PollStatus, String> {
    let status = answer.get("status").and_then(Value::as_str);
    Ok(match status {
        Some("queued") => PollStatus::Queued,
        Some("running") => PollStatus::Running,
        Some("failed") => PollStatus::Failed,
        Some("cancelled") => PollStatus::Cancelled,
        Some("completed") => PollStatus::Completed(completed_answer(answer)?),
        Some(other) => return Err(format!("unknown status {:?}", clip_id(other))),
        None => return Err("no status".into()),
    })
}

/// `result.answer.{answer, citations}` of a completed task, read leniently:
/// a citation that is not an object with a URL is skipped.
fn completed_answer(answer: &Value) -> Result<Answer, String> {
    let inner = &answer["result"]["answer"];
    let text = inner
        .get("answer")
        .and_then(Value::as_str)
        .ok_or("a completed task without result.answer.answer")?;
    let citations = inner
        .get("citations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| Citation::deserialize(c).ok())
        .collect();
    Ok(Answer {
        answer: text.to_string(),
        citations,
    })
}

/// An unknown status shown in an error, cut short.
fn clip_id(text: &str) -> String {
    text.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_answers_are_read_by_status() {
        let read = |v: Value| poll_status(&v);
        assert_eq!(read(json!({"status": "queued"})), Ok(PollStatus::Queued));
        assert_eq!(read(json!({"status": "running"})), Ok(PollStatus::Running));
        assert_eq!(
            read(json!({"status": "failed", "error": "x"})),
            Ok(PollStatus::Failed)
        );
        assert_eq!(
            read(json!({"status": "cancelled"})),
            Ok(PollStatus::Cancelled)
        );
        assert!(read(json!({"status": "done"})).is_err());
        assert!(read(json!({})).is_err());
        assert!(read(json!({"status": "completed"})).is_err(), "no answer");
        let done = read(json!({"status": "completed", "result": {"answer": {
        "answer": "A", "citations": [
            {"url": "https://a.example", "title": "T", "snippet": "s"},
            {"title": "no url"}, "junk",
            {"url": "https://b.example", "title": null}
        ]}}}))
        .unwrap();
        let PollStatus::Completed(answer) = done else {
            panic!("completed")
        };
        assert_eq!(answer.answer, "A");
        let urls: Vec<&str> = answer.citations.iter().map(|c| c.url.as_str()).collect();
        assert_eq!(urls, ["https://a.example", "https://b.example"]);
        assert_eq!(answer.citations[0].snippet.as_deref(), Some("s"));
    }

    #[test]
    fn ids_are_short_visible_ascii() {
        assert_eq!(id(&json!({"t": "task-1"}), "t").as_deref(), Some("task-1"));
        for bad in [
            json!({"t": ""}),
            json!({"t": "a b"}),
            json!({"t": 7}),
            json!({}),
        ] {
            assert_eq!(id(&bad, "t"), None, "{bad}");
        }
        assert_eq!(id(&json!({"t": "x".repeat(MAX_ID_BYTES + 1)}), "t"), None);
    }

    #[test]
    fn only_404_and_401_mean_gone() {
        let status = |s| DeepResearchError::Status {
            call: Call::Poll,
            status: s,
        };
        assert!(status(404).is_gone() && status(401).is_gone());
        assert!(!status(500).is_gone() && !status(403).is_gone());
        let timeout = DeepResearchError::Timeout {
            call: Call::Poll,
            after: POLL_TIMEOUT,
        };
        assert!(!timeout.is_gone());
    }
}
