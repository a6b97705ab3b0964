//! LLM client: one OpenAI-compatible chat completion (contract section 6).
//!
//! `POST {base}/v1/chat/completions` with `Authorization: Bearer <service key>`
//! and the same key as `X-API-Key` (mana-llm checks that header), and
//! `{model, temperature: 0.3, messages: [system, user]}`; the answer is
//! `choices[0].message.content` plus `usage` when the gateway sends it.
//! [`LlmClient::complete_plan`] adds a `response_format` with the plan's JSON
//! schema, in the form [`super::structured`] picks (and learns in auto mode);
//! [`LlmClient::complete_prompt`] also speaks native tool calling over
//! several rounds (`rounds.rs`).
//!
//! mana-llm's errors by kind (`detail.rs`): `blocked` and `auth` end the call
//! at once ([`LlmError::Refused`]); `capability` means "not this form" (auto
//! moves on); `truncated` is sent once more with half the answer budget;
//! `rate_limit` is an overload for the limiter; `no_healthy_provider` and
//! `unknown` are retried like a 5xx. The model the gateway resolved its alias
//! to (`X-Mana-LLM-Resolved`) comes back in [`LlmAnswer::resolved_model`].
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

mod call;
mod detail;
mod error;
mod limited;
mod rounds;
mod transport;
mod tries;
mod wire;

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

use super::limiter::{GatewayLimiter, LimitConfig};
use super::structured::StructuredMode;
use super::Prompt;
use crate::config::Secret;
pub use call::PlanRequest;
pub use error::{GatewayKind, LlmError};
use limited::Limited;
pub use limited::LimiterMetrics;
pub(crate) use transport::{describe, join_path, read_body_limited, BodyError};
pub use wire::{LlmAnswer, ToolRounds, Usage};

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
    /// `MANA_AI_PLANNER_ROUNDS`: rounds of one tool-calling plan (at least 1).
    pub rounds: u32,
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
            rounds: 5,
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
    planner_metrics: Option<crate::metrics::planner::PlannerMetrics>,
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
            planner_metrics: None,
        })
    }

    /// Observes each call's duration (seconds, retries included), success or not.
    pub fn with_duration_histogram(mut self, histogram: prometheus::Histogram) -> LlmClient {
        self.duration = Some(histogram);
        self
    }

    /// Counts failed attempts by provider and kind, and the rounds of
    /// tool-calling plans.
    pub fn with_planner_metrics(
        mut self,
        metrics: crate::metrics::planner::PlannerMetrics,
    ) -> LlmClient {
        self.planner_metrics = Some(metrics);
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
    /// and is sent again without counting an attempt. One system message
    /// for every form, and no tools to call.
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
        let prompt = Prompt {
            system: system.to_string(),
            system_text: system.to_string(),
            system_tools: system.to_string(),
            user: user.to_string(),
            schema: schema.cloned(),
        };
        let request = PlanRequest {
            prompt: &prompt,
            tools: &[],
            param_max_chars: crate::config::DEFAULT_PARAM_MAX_CHARS,
        };
        self.complete_prompt(&request, |_| check()).await
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
