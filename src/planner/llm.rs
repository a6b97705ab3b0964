//! LLM client: one OpenAI-compatible chat completion (contract section 6).
//!
//! `POST {base}/v1/chat/completions` with `Authorization: Bearer <service key>`
//! and `{model, temperature: 0.3, messages: [system, user]}`; the answer is
//! `choices[0].message.content` plus `usage` when the gateway sends it.
//! [`LlmClient::complete_plan`] adds a `response_format` with the plan's JSON
//! schema, in the form [`super::structured`] picks (and learns in auto mode).
//!
//! Rules:
//! - one call retries connect errors, timeouts, 5xx and 429 with capped
//!   exponential backoff and jitter; a 429's `Retry-After` (seconds) replaces
//!   the backoff, capped so a gateway cannot park a run for an hour;
//! - any other non-2xx is final ([`LlmError::Rejected`]): retrying a bad
//!   request or a bad key only burns quota;
//! - the timeout covers one attempt from connect to the last body byte;
//! - bodies over `max_body_bytes` are refused before or while reading, never
//!   buffered whole;
//! - the service key never appears in `Debug` output or error messages, and
//!   neither do URLs (a base URL may carry credentials).

use std::fmt;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::structured::{Form, FormPicker, StructuredMode};

/// The mana service key. `Debug` prints a placeholder, so configs can be logged.
#[derive(Clone)]
pub struct ServiceKey(String);

impl ServiceKey {
    pub fn new(key: impl Into<String>) -> ServiceKey {
        ServiceKey(key.into())
    }

    /// The key itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServiceKey(<redacted>)")
    }
}

/// Settings of an [`LlmClient`]. [`LlmConfig::new`] fills in production defaults.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// `MANA_LLM_URL`, e.g. `http://localhost:3020`; the client appends the path.
    pub base_url: String,
    pub service_key: ServiceKey,
    pub model: String,
    /// One attempt, from connect to the last body byte.
    pub timeout: Duration,
    /// Attempts per call, the first included (at least 1).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles per attempt up to `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// Longest `Retry-After` honoured.
    pub retry_after_cap: Duration,
    /// Larger answers are [`LlmError::BadAnswer`]; a plan is a few KiB.
    pub max_body_bytes: usize,
    /// `MANA_LLM_STRUCTURED`: how [`LlmClient::complete_plan`] sends the schema.
    pub structured: StructuredMode,
    /// `MANA_LLM_MAX_TOKENS`: the answer's length cap sent as `max_tokens`
    /// (`None`: not sent). A small model that loops stops there instead of
    /// writing until the timeout while holding the server's only slot.
    pub max_tokens: Option<u32>,
}

impl LlmConfig {
    pub fn new(
        base_url: impl Into<String>,
        service_key: ServiceKey,
        model: impl Into<String>,
    ) -> LlmConfig {
        LlmConfig {
            base_url: base_url.into(),
            service_key,
            model: model.into(),
            // A small local model takes minutes to read a long prompt cold.
            timeout: Duration::from_secs(crate::config::DEFAULT_LLM_TIMEOUT_SECS),
            max_attempts: 3,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(10),
            retry_after_cap: Duration::from_secs(30),
            max_body_bytes: 2 * 1024 * 1024,
            structured: StructuredMode::Auto,
            max_tokens: Some(crate::config::DEFAULT_LLM_MAX_TOKENS),
        }
    }
}

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
    pub usage: Option<Usage>,
    /// Attempts this call took (1 = no retry).
    pub attempts: u32,
    /// Whole call, retries and backoff included.
    pub elapsed: Duration,
}

/// Why a completion failed; the runner branches on the kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// Every attempt hit a retryable failure; `last` describes the final one.
    #[error("LLM unavailable after {attempts} attempt(s): {last}")]
    Exhausted { attempts: u32, last: String },
    /// The gateway refused the request (4xx other than 429, or another non-2xx).
    #[error("LLM gateway rejected the request with HTTP {status}")]
    Rejected { status: u16 },
    /// A 2xx whose body is unusable: too large, not JSON, no content.
    #[error("LLM answer unusable: {0}")]
    BadAnswer(String),
    /// The client could not be built (bad base URL, TLS setup).
    #[error("LLM client misconfigured: {0}")]
    Config(String),
}

/// Client for one gateway; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct LlmClient {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    config: LlmConfig,
    duration: Option<prometheus::Histogram>,
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    temperature: f64,
    messages: [ChatMessage<'a>; 2],
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
}

/// How one attempt ended, short of success.
enum AttemptError {
    Final(LlmError),
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
        /// The HTTP status, when the server answered.
        status: Option<u16>,
    },
}

impl AttemptError {
    /// The HTTP status the server answered, if it did.
    fn status(&self) -> Option<u16> {
        match self {
            AttemptError::Final(LlmError::Rejected { status }) => Some(*status),
            AttemptError::Retryable { status, .. } => *status,
            AttemptError::Final(_) => None,
        }
    }
}

impl LlmClient {
    pub fn new(config: LlmConfig) -> Result<LlmClient, LlmError> {
        let base = reqwest::Url::parse(&config.base_url)
            .map_err(|e| LlmError::Config(format!("MANA_LLM_URL is not a URL: {e}")))?;
        let endpoint = join_path(&base, "v1/chat/completions");
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            // A redirect would resend the bearer token somewhere unexpected.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| LlmError::Config(describe(&e)))?;
        Ok(LlmClient {
            http,
            endpoint,
            config,
            duration: None,
        })
    }

    /// Observes each call's duration (seconds, retries included), success or not.
    pub fn with_duration_histogram(mut self, histogram: prometheus::Histogram) -> LlmClient {
        self.duration = Some(histogram);
        self
    }

    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// Sends one chat completion as free text, retrying as the module header
    /// describes.
    pub async fn complete(&self, system: &str, user: &str) -> Result<LlmAnswer, LlmError> {
        self.complete_plan(system, user, None).await
    }

    /// Like [`LlmClient::complete`], asking for an answer that follows
    /// `schema` (the plan's JSON schema) when one is given, in the form the
    /// configured [`StructuredMode`] picks. In auto mode a server's refusal of
    /// a form sends the request again in the next form without counting an
    /// attempt (see [`super::structured`]).
    pub async fn complete_plan(
        &self,
        system: &str,
        user: &str,
        schema: Option<&Value>,
    ) -> Result<LlmAnswer, LlmError> {
        let mut picker = FormPicker::new(
            self.config.structured,
            self.endpoint.as_str(),
            schema.is_some(),
        );
        let started = Instant::now();
        let max_attempts = self.config.max_attempts.max(1);
        let mut attempt = 0;
        let outcome = loop {
            attempt += 1;
            let body = self.request_body(system, user, picker.form(), schema)?;
            let error = match self.attempt(body).await {
                Ok(answer) => {
                    picker.accepted();
                    break Ok(answer);
                }
                Err(error) => error,
            };
            if error.status().is_some_and(|status| picker.refused(status)) {
                attempt -= 1;
                continue;
            }
            match error {
                AttemptError::Final(error) => break Err(error),
                AttemptError::Retryable {
                    reason,
                    retry_after,
                    ..
                } => {
                    if attempt >= max_attempts {
                        break Err(LlmError::Exhausted {
                            attempts: attempt,
                            last: reason,
                        });
                    }
                    self.wait_before_retry(attempt, retry_after, &reason).await;
                }
            }
        };
        let elapsed = started.elapsed();
        if let Some(histogram) = &self.duration {
            histogram.observe(elapsed.as_secs_f64());
        }
        outcome.map(|(content, usage)| LlmAnswer {
            content,
            usage,
            attempts: attempt,
            elapsed,
        })
    }

    fn request_body(
        &self,
        system: &str,
        user: &str,
        form: Form,
        schema: Option<&Value>,
    ) -> Result<Vec<u8>, LlmError> {
        let request = ChatRequest {
            model: &self.config.model,
            temperature: 0.3,
            messages: [
                ChatMessage {
                    role: "system",
                    content: system,
                },
                ChatMessage {
                    role: "user",
                    content: user,
                },
            ],
            max_tokens: self.config.max_tokens,
            response_format: schema.and_then(|schema| form.response_format(schema)),
        };
        serde_json::to_vec(&request).map_err(|e| LlmError::Config(e.to_string()))
    }

    async fn wait_before_retry(&self, attempt: u32, retry_after: Option<Duration>, reason: &str) {
        let wait = match retry_after {
            Some(asked) => asked.min(self.config.retry_after_cap),
            None => backoff_delay(
                attempt,
                self.config.backoff_base,
                self.config.backoff_cap,
                rand::rng().random::<f64>(),
            ),
        };
        tracing::warn!(attempt, wait_ms = wait.as_millis() as u64, %reason, "LLM attempt failed, retrying");
        tokio::time::sleep(wait).await;
    }

    async fn attempt(&self, body: Vec<u8>) -> Result<(String, Option<Usage>), AttemptError> {
        let response = self
            .http
            .post(self.endpoint.clone())
            .bearer_auth(self.config.service_key.expose())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let retry_after = retry_after(response.headers());
            return Err(AttemptError::Retryable {
                reason: format!("HTTP {}", status.as_u16()),
                retry_after,
                status: Some(status.as_u16()),
            });
        }
        if !status.is_success() {
            return Err(AttemptError::Final(LlmError::Rejected {
                status: status.as_u16(),
            }));
        }
        let bytes = read_body_limited(response, self.config.max_body_bytes)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge(limit) => AttemptError::Final(LlmError::BadAnswer(format!(
                    "body larger than {limit} bytes"
                ))),
                BodyError::Transport(e) => self.transport_error(&e),
            })?;
        parse_answer(&bytes).map_err(|reason| AttemptError::Final(LlmError::BadAnswer(reason)))
    }

    fn transport_error(&self, e: &reqwest::Error) -> AttemptError {
        let reason = if e.is_timeout() {
            format!("timed out after {} ms", self.config.timeout.as_millis())
        } else {
            describe(e)
        };
        AttemptError::Retryable {
            reason,
            retry_after: None,
            status: None,
        }
    }
}

/// `choices[0].message.content` and `usage` of a chat-completion body.
fn parse_answer(bytes: &[u8]) -> Result<(String, Option<Usage>), String> {
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

/// Why a body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    TooLarge(usize),
    Transport(reqwest::Error),
}

/// Reads a body of at most `limit` bytes: refused up front when the declared
/// length is larger, and dropped mid-stream once a chunked body passes the limit.
pub(crate) async fn read_body_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let declared = response.content_length().unwrap_or(0);
    if declared > limit as u64 {
        return Err(BodyError::TooLarge(limit));
    }
    let mut body = Vec::with_capacity(declared as usize);
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Retry-After` in seconds; the HTTP-date form falls back to the backoff.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Wait after failed attempt number `attempt` (1-based): `base * 2^(attempt-1)`
/// capped at `cap`, then "equal jitter": half of it fixed, half scaled by
/// `jitter` in [0, 1), so retries of many missions spread out but never fire at once.
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let full = base.saturating_mul(1u32 << exponent).min(cap);
    full / 2 + (full / 2).mul_f64(jitter.clamp(0.0, 1.0))
}

/// `base` with `path` appended below its own path (keeps a `/llm` prefix).
pub(crate) fn join_path(base: &reqwest::Url, path: &str) -> reqwest::Url {
    let mut url = base.clone();
    let joined = format!(
        "{}/{}",
        base.path().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    url.set_path(&joined);
    url
}

/// A transport error with its causes, without the URL.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "connect failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_within_half() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(backoff_delay(1, base, cap, 0.0), Duration::from_millis(50));
        assert_eq!(backoff_delay(1, base, cap, 1.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(3, base, cap, 1.0), Duration::from_millis(400));
        assert_eq!(backoff_delay(10, base, cap, 1.0), cap);
        assert_eq!(
            backoff_delay(u32::MAX, base, cap, 0.5),
            Duration::from_millis(750)
        );
    }

    #[test]
    fn retry_after_reads_seconds_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, " 7 ".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn debug_never_prints_the_key() {
        let config = LlmConfig::new("http://x", ServiceKey::new("sk-very-secret"), "m");
        assert!(!format!("{config:?}").contains("sk-very-secret"));
        let client = LlmClient::new(config).unwrap();
        assert!(!format!("{client:?}").contains("sk-very-secret"));
    }

    #[test]
    fn endpoint_keeps_a_path_prefix() {
        let url = |base: &str| {
            join_path(&reqwest::Url::parse(base).unwrap(), "v1/chat/completions").to_string()
        };
        assert_eq!(url("http://h:3020"), "http://h:3020/v1/chat/completions");
        assert_eq!(url("http://h/llm/"), "http://h/llm/v1/chat/completions");
    }

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
