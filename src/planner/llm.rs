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
//! - with a limiter ([`LlmClient::with_limiter`], as the service builds it)
//!   every request waits for room under one adaptive limit, and a 429 or 503
//!   is not a failed attempt: the request waits (for the `Retry-After`, else
//!   a backoff) and is sent again, up to `max_overloads` times;
//! - [`LlmClient::complete_checked`] asks a check (the token budgets) before
//!   each request, retries included;
//! - any other non-2xx is final ([`LlmError::Rejected`]): retrying a bad
//!   request or a bad key only burns quota;
//! - the timeout covers one attempt from connect to the last body byte;
//! - bodies over `max_body_bytes` are refused before or while reading, never
//!   buffered whole;
//! - the service key never appears in `Debug` output or error messages, and
//!   neither do URLs (a base URL may carry credentials).

mod error;
mod limited;
mod transport;
mod wire;

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::header::CONTENT_TYPE;
use serde_json::Value;

use super::limiter::{GatewayLimiter, LimitConfig};
use super::structured::{Form, FormPicker, StructuredMode};
use crate::config::Secret;
use error::AttemptError;
pub use error::LlmError;
use limited::Limited;
pub use limited::LimiterMetrics;
pub use transport::backoff_delay;
use transport::retry_after;
pub(crate) use transport::{describe, join_path, read_body_limited, BodyError};
use wire::{parse_answer, ChatMessage, ChatRequest};
pub use wire::{LlmAnswer, Usage};

/// Settings of an [`LlmClient`]. [`LlmConfig::new`] fills in production defaults.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// `MANA_LLM_URL`, e.g. `http://localhost:3020`; the client appends the path.
    pub base_url: String,
    pub service_key: Secret,
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
        service_key: Secret,
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

/// Client for one gateway; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct LlmClient {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    config: LlmConfig,
    duration: Option<prometheus::Histogram>,
    limited: Option<Limited>,
}

/// Attempts and absorbed overloads of one call.
#[derive(Debug, Default)]
struct Tries {
    attempts: u32,
    overloads: u32,
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
            limited: None,
        })
    }

    /// Observes each call's duration (seconds, retries included), success or not.
    pub fn with_duration_histogram(mut self, histogram: prometheus::Histogram) -> LlmClient {
        self.duration = Some(histogram);
        self
    }

    /// Sends every request under one adaptive limiter (see
    /// [`super::limiter`]); `config.max` is `MANA_AI_MAX_CONCURRENT_RUNS`.
    /// The limiter honours `Retry-After` up to this client's cap.
    pub fn with_limiter(
        mut self,
        config: LimitConfig,
        metrics: Option<LimiterMetrics>,
    ) -> LlmClient {
        let config = LimitConfig {
            retry_after_cap: self.config.retry_after_cap,
            ..config
        };
        self.limited = Some(Limited::new(config, metrics));
        self
    }

    /// The limiter requests go through, if there is one.
    pub fn limiter(&self) -> Option<&GatewayLimiter> {
        self.limited.as_ref().map(|l| &l.limiter)
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
        let unchecked = || std::future::ready(Ok(()));
        self.complete_checked(system, user, schema, unchecked).await
    }

    /// [`LlmClient::complete_plan`] that asks `check` before each request,
    /// retries included: an error from it ends the call unsent (a token
    /// budget spent meanwhile). With a limiter, a 429 or 503 waits for room
    /// and is sent again without counting an attempt.
    pub async fn complete_checked<C, F>(
        &self,
        system: &str,
        user: &str,
        schema: Option<&Value>,
        check: C,
    ) -> Result<LlmAnswer, LlmError>
    where
        C: Fn() -> F,
        F: Future<Output = Result<(), LlmError>>,
    {
        let mut picker = FormPicker::new(
            self.config.structured,
            self.endpoint.as_str(),
            schema.is_some(),
        );
        let started = Instant::now();
        let mut tries = Tries::default();
        let outcome = loop {
            tries.attempts += 1;
            let body = self.request_body(system, user, picker.form(), schema)?;
            let error = match self.send(body, &check).await {
                Ok(answer) => {
                    picker.accepted();
                    break Ok((answer, picker.form()));
                }
                Err(error) => error,
            };
            if error.status().is_some_and(|status| picker.refused(status)) {
                tries.attempts -= 1;
                continue;
            }
            match self.after_failure(error, &mut tries) {
                Ok(wait) => tokio::time::sleep(wait).await,
                Err(error) => break Err(error),
            }
        };
        let elapsed = started.elapsed();
        if let Some(histogram) = &self.duration {
            histogram.observe(elapsed.as_secs_f64());
        }
        outcome.map(|((content, usage), form)| LlmAnswer {
            content,
            shape: form.answer_shape(),
            usage,
            attempts: tries.attempts,
            elapsed,
        })
    }

    /// After a failed attempt: how long to wait before the next, or the
    /// call's error. An overload under the limiter is not an attempt.
    fn after_failure(&self, error: AttemptError, tries: &mut Tries) -> Result<Duration, LlmError> {
        let overload = error.is_overload();
        let (reason, retry_after) = match error {
            AttemptError::Final(error) => return Err(error),
            AttemptError::Retryable {
                reason,
                retry_after,
                ..
            } => (reason, retry_after),
        };
        if let Some(limited) = self.limited.as_ref().filter(|_| overload) {
            if tries.overloads < limited.max_overloads {
                tries.overloads += 1;
                tries.attempts -= 1;
                // The refused request waits its Retry-After (the limiter
                // pauses everyone only when it was sent alone); without
                // one, it backs off.
                let wait = match retry_after {
                    Some(asked) => asked.min(self.config.retry_after_cap),
                    None => self.backoff(tries.overloads),
                };
                tracing::debug!(overloads = tries.overloads, %reason, "LLM gateway full, waiting for room");
                return Ok(wait);
            }
        }
        if tries.attempts >= self.config.max_attempts.max(1) {
            return Err(LlmError::Exhausted {
                attempts: tries.attempts,
                last: reason,
            });
        }
        let wait = match retry_after {
            Some(asked) => asked.min(self.config.retry_after_cap),
            None => self.backoff(tries.attempts),
        };
        tracing::warn!(attempt = tries.attempts, wait_ms = wait.as_millis() as u64, %reason, "LLM attempt failed, retrying");
        Ok(wait)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let jitter = rand::rng().random::<f64>();
        backoff_delay(
            attempt,
            self.config.backoff_base,
            self.config.backoff_cap,
            jitter,
        )
    }

    /// One attempt, under the limiter when there is one: `check` is asked
    /// once there is room, right before sending.
    async fn send<C, F>(
        &self,
        body: Vec<u8>,
        check: &C,
    ) -> Result<(String, Option<Usage>), AttemptError>
    where
        C: Fn() -> F,
        F: Future<Output = Result<(), LlmError>>,
    {
        let attempt = async {
            check().await.map_err(AttemptError::Final)?;
            self.attempt(body).await
        };
        match &self.limited {
            Some(limited) => limited.send(attempt).await,
            None => attempt.await,
        }
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
                timed_out: false,
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
            timed_out: e.is_timeout(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_prints_the_key() {
        let config = LlmConfig::new("http://x", Secret::new("sk-very-secret"), "m");
        assert!(!format!("{config:?}").contains("sk-very-secret"));
        let client = LlmClient::new(config).unwrap();
        assert!(!format!("{client:?}").contains("sk-very-secret"));
    }
}
