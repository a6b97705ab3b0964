//! One plan call: the form loop ([`LlmClient::complete_prompt`]), one
//! request with its retries ([`LlmClient::exchange`]) and one attempt.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::header::CONTENT_TYPE;
use serde_json::Value;

use super::detail::{classify, parse_detail, MAX_ERROR_BODY_BYTES};
use super::error::{AttemptError, GatewayKind};
use super::transport::retry_after;
pub(super) use super::tries::Tries;
use super::wire::{message, parse_answer, ChatRequest, LlmAnswer, Reply};
use super::{describe, read_body_limited, BodyError, LlmClient, LlmError};
use crate::backoff::{Backoff, Jitter};
use crate::metrics::planner::PROVIDERS;
use crate::planner::structured::{Form, FormPicker};
use crate::planner::text::clip;
use crate::planner::{Prompt, ToolSpec};

/// The header mana-llm names the resolved model in.
pub const RESOLVED_HEADER: &str = "x-mana-llm-resolved";
/// Longest resolved-model name kept.
const MAX_MODEL_CHARS: usize = 200;

/// What a plan call sends: the prompt (its system message per form), the
/// allowed tools (for native tool calling) and the schema's string bound.
#[derive(Debug, Clone, Copy)]
pub struct PlanRequest<'a> {
    pub prompt: &'a Prompt,
    pub tools: &'a [&'a ToolSpec],
    pub param_max_chars: usize,
}

/// Why one request did not get an answer.
pub(super) enum Failure {
    /// Not this form ([`FormPicker::would_refuse`]): try the next.
    Refused {
        status: u16,
        kind: Option<GatewayKind>,
    },
    Error(LlmError),
}

impl From<LlmError> for Failure {
    fn from(e: LlmError) -> Failure {
        Failure::Error(e)
    }
}

/// One request's messages, form and extras.
pub(super) struct Exchange<'a> {
    pub messages: &'a [Value],
    pub form: Form,
    pub schema: Option<&'a Value>,
    pub tools: Option<&'a Value>,
    /// Tokens the call's earlier rounds used (for the budget check).
    pub spent: u64,
}

/// How a form's turn of a call ended.
pub(super) enum Done {
    Answer(LlmAnswer),
    /// A tools request answered without a call by a server that may ignore
    /// tools: the picker moved on.
    ToolsIgnored,
}

impl LlmClient {
    /// Asks for a plan in the form the configured mode picks: native tool
    /// calling over rounds, a schema form, or free text (each with its own
    /// system message). `check(spent)` is asked before each request, retries
    /// included, with the tokens the call's earlier rounds used; an error
    /// from it ends the call unsent (or a later round's loop, keeping its steps).
    pub async fn complete_prompt<C, F>(
        &self,
        request: &PlanRequest<'_>,
        check: C,
    ) -> Result<LlmAnswer, LlmError>
    where
        C: Fn(u64) -> F,
        F: Future<Output = Result<(), LlmError>>,
    {
        let endpoint = self.endpoint.as_str();
        let has_schema = request.prompt.schema.is_some();
        let has_tools = !request.tools.is_empty();
        let mut picker = FormPicker::new(self.config.structured, endpoint, has_schema, has_tools);
        let started = Instant::now();
        let mut tries = Tries {
            max_tokens: self.config.max_tokens,
            ..Tries::default()
        };
        let outcome = loop {
            let form = picker.form();
            let turn = match form {
                Form::Tools => {
                    self.tool_rounds(request, &check, &mut tries, &mut picker)
                        .await
                }
                _ => {
                    self.single(request, form, &check, &mut tries, &picker)
                        .await
                }
            };
            match turn {
                Ok(Done::Answer(answer)) => {
                    picker.accepted(answer.resolved_model.is_some());
                    break Ok(answer);
                }
                Ok(Done::ToolsIgnored) => continue,
                Err(Failure::Refused { status, kind }) if picker.refused(status, kind) => continue,
                Err(Failure::Refused { status, .. }) => break Err(LlmError::Rejected { status }),
                Err(Failure::Error(e)) => break Err(e),
            }
        };
        let elapsed = started.elapsed();
        if let Some(histogram) = &self.duration {
            histogram.observe(elapsed.as_secs_f64());
        }
        outcome.map(|mut answer| {
            answer.attempts = tries.attempts;
            answer.elapsed = elapsed;
            answer
        })
    }

    /// One request in a schema form or as free text.
    async fn single<C, F>(
        &self,
        request: &PlanRequest<'_>,
        form: Form,
        check: &C,
        tries: &mut Tries,
        picker: &FormPicker<'_>,
    ) -> Result<Done, Failure>
    where
        C: Fn(u64) -> F,
        F: Future<Output = Result<(), LlmError>>,
    {
        let prompt = request.prompt;
        // Free text enforces no allowed set: its prompt lists only allowed tools.
        let system = match form {
            Form::Text => &prompt.system_text,
            _ => &prompt.system,
        };
        let messages = [message("system", system), message("user", &prompt.user)];
        let exchange = Exchange {
            messages: &messages,
            form,
            schema: prompt.schema.as_ref(),
            tools: None,
            spent: 0,
        };
        let reply = self.exchange(&exchange, check, tries, picker).await?;
        let not_text = || LlmError::BadAnswer("choices[0].message.content is not a string".into());
        let content = reply.content.ok_or_else(not_text)?;
        Ok(Done::Answer(LlmAnswer {
            content,
            shape: form.answer_shape(),
            usage: reply.usage,
            attempts: 0,
            elapsed: Duration::ZERO,
            resolved_model: reply.resolved_model,
            tool_plan: None,
        }))
    }

    /// One request, retried as the module header of `llm.rs` describes.
    pub(super) async fn exchange<C, F>(
        &self,
        exchange: &Exchange<'_>,
        check: &C,
        tries: &mut Tries,
        picker: &FormPicker<'_>,
    ) -> Result<Reply, Failure>
    where
        C: Fn(u64) -> F,
        F: Future<Output = Result<(), LlmError>>,
    {
        tries.begin_request();
        loop {
            tries.count();
            let body = self.request_body(exchange, tries.max_tokens)?;
            let error = match self.send(body, || check(exchange.spent)).await {
                Ok(reply) => return Ok(reply),
                Err(error) => error,
            };
            if let Some(status) = error.status() {
                if picker.would_refuse(status, error.kind()) {
                    tries.uncount();
                    return Err(Failure::Refused {
                        status,
                        kind: error.kind(),
                    });
                }
            }
            let wait = self.after_failure(error, tries)?;
            tokio::time::sleep(wait).await;
        }
    }

    /// After a failed attempt: how long to wait before the next, or the
    /// call's error. An overload under the limiter is not an attempt, nor
    /// the one resend of a `truncated` answer with half the answer budget.
    fn after_failure(&self, error: AttemptError, tries: &mut Tries) -> Result<Duration, LlmError> {
        let overload = error.is_overload();
        let kind = error.kind();
        let (reason, retry_after) = match error {
            AttemptError::Final(error) => return Err(error),
            AttemptError::Retryable {
                reason,
                retry_after,
                ..
            } => (reason, retry_after),
        };
        if kind == Some(GatewayKind::Truncated) {
            if tries.truncated {
                return Err(LlmError::Exhausted {
                    attempts: tries.request,
                    last: reason,
                });
            }
            tries.truncated = true;
            tries.uncount();
            let budget = tries
                .max_tokens
                .unwrap_or(crate::config::DEFAULT_LLM_MAX_TOKENS);
            tries.max_tokens = Some((budget / 2).max(1));
            tracing::warn!(
                max_tokens = tries.max_tokens,
                "LLM answer truncated; sending once more with a smaller answer budget"
            );
            return Ok(Duration::ZERO);
        }
        if let Some(limited) = self.limited.as_ref().filter(|_| overload) {
            if tries.overloads < limited.max_overloads {
                tries.overloads += 1;
                tries.uncount();
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
        if tries.request >= self.config.max_attempts.max(1) {
            return Err(LlmError::Exhausted {
                attempts: tries.request,
                last: reason,
            });
        }
        let wait = match retry_after {
            Some(asked) => asked.min(self.config.retry_after_cap),
            None => self.backoff(tries.request),
        };
        tracing::warn!(attempt = tries.request, wait_ms = wait.as_millis() as u64, %reason, "LLM attempt failed, retrying");
        Ok(wait)
    }

    /// The wait after failed attempt `attempt`, with equal jitter: retries
    /// of many missions spread out but none comes back at once.
    fn backoff(&self, attempt: u32) -> Duration {
        let (first, max) = (self.config.backoff_base, self.config.backoff_cap);
        let backoff = Backoff::new(first, max).with_jitter(Jitter::Equal);
        backoff.delay(attempt, rand::rng().random::<f64>())
    }

    /// One attempt, under the limiter when there is one: `check` is asked
    /// once there is room, right before sending.
    async fn send<C, F>(&self, body: Vec<u8>, check: C) -> Result<Reply, AttemptError>
    where
        C: FnOnce() -> F,
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
        exchange: &Exchange<'_>,
        max_tokens: Option<u32>,
    ) -> Result<Vec<u8>, LlmError> {
        let tools = exchange.tools.filter(|_| exchange.form == Form::Tools);
        let request = ChatRequest {
            model: &self.config.model,
            temperature: 0.3,
            messages: exchange.messages,
            max_tokens,
            response_format: exchange
                .schema
                .and_then(|schema| exchange.form.response_format(schema)),
            tools,
            tool_choice: tools.map(|_| "auto"),
        };
        serde_json::to_vec(&request).map_err(|e| LlmError::Config(e.to_string()))
    }

    async fn attempt(&self, body: Vec<u8>) -> Result<Reply, AttemptError> {
        let key = self.config.service_key.expose();
        let response = self
            .http
            .post(self.endpoint.clone())
            .bearer_auth(key)
            .header("X-API-Key", key)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let resolved = resolved_model(response.headers());
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            let bytes = read_body_limited(response, MAX_ERROR_BODY_BYTES).await;
            let detail = parse_detail(&bytes.unwrap_or_default());
            let provider = PROVIDERS[usize::from(detail.kind.is_none() && resolved.is_none())];
            let kind = detail.kind.map_or("http", GatewayKind::as_str);
            self.count_error(provider, kind);
            return Err(classify(status.as_u16(), retry_after, detail));
        }
        let bytes = read_body_limited(response, self.config.max_body_bytes)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge(limit) => AttemptError::Final(LlmError::BadAnswer(format!(
                    "body larger than {limit} bytes"
                ))),
                BodyError::Transport(e) => self.transport_error(&e),
            })?;
        let mut reply = parse_answer(&bytes)
            .map_err(|reason| AttemptError::Final(LlmError::BadAnswer(reason)))?;
        reply.resolved_model = resolved;
        Ok(reply)
    }

    fn count_error(&self, provider: &str, kind: &str) {
        if let Some(m) = &self.planner_metrics {
            m.provider_errors.with_label_values(&[provider, kind]).inc();
        }
    }

    fn transport_error(&self, e: &reqwest::Error) -> AttemptError {
        self.count_error(PROVIDERS[1], "transport");
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
            kind: None,
        }
    }
}

/// `X-Mana-LLM-Resolved`: printable, clipped; `None` when absent or blank.
fn resolved_model(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let value = headers.get(RESOLVED_HEADER)?.to_str().ok()?.trim();
    let clean: String = value.chars().filter(|c| !c.is_control()).collect();
    (!clean.is_empty()).then(|| clip(&clean, MAX_MODEL_CHARS).into_owned())
}
