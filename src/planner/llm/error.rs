//! Why a completion, or one attempt of it, failed.

use std::time::Duration;

use crate::planner::limiter::Response;

pub use crate::planner::gateway_kind::GatewayKind;

/// Why a completion failed; the runner branches on the kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// Every attempt hit a retryable failure; `last` describes the final one.
    #[error("LLM unavailable after {attempts} attempt(s): {last}")]
    Exhausted { attempts: u32, last: String },
    /// The gateway refused the request (4xx other than 429, or another non-2xx).
    #[error("LLM gateway rejected the request with HTTP {status}")]
    Rejected { status: u16 },
    /// As [`LlmError::Rejected`], with the body's `detail` (clipped): its
    /// kind when mana-llm sent one, and its message.
    #[error("LLM gateway rejected the request with HTTP {status}: {}", describe_detail(*kind, message))]
    RejectedWith {
        status: u16,
        kind: Option<GatewayKind>,
        message: String,
    },
    /// mana-llm answered `blocked` or `auth`: the run ends without retries.
    #[error("LLM gateway refused ({}): {message}", kind.as_str())]
    Refused { kind: GatewayKind, message: String },
    /// A 2xx whose body is unusable: too large, not JSON, no content.
    #[error("LLM answer unusable: {0}")]
    BadAnswer(String),
    /// The client could not be built (bad base URL, TLS setup).
    #[error("LLM client misconfigured: {0}")]
    Config(String),
    /// Not sent: the check before the request found a token budget spent
    /// (which one: `agent` or `user`).
    #[error("LLM request not sent: the {0} token budget is spent")]
    OverBudget(&'static str),
    /// Not sent: the check before the request could not be made.
    #[error("LLM request not sent: {0}")]
    NotChecked(String),
}

/// `kind: message`, or the message alone.
fn describe_detail(kind: Option<GatewayKind>, message: &str) -> String {
    match kind {
        Some(kind) => format!("{}: {message}", kind.as_str()),
        None => message.to_string(),
    }
}

/// How one attempt ended, short of success.
pub(super) enum AttemptError {
    Final(LlmError),
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
        /// The HTTP status, when the server answered.
        status: Option<u16>,
        /// No answer within the timeout.
        timed_out: bool,
        /// mana-llm's kind, when the body named one.
        kind: Option<GatewayKind>,
    },
}

impl AttemptError {
    /// The HTTP status the server answered, if it did.
    pub(super) fn status(&self) -> Option<u16> {
        match self {
            AttemptError::Final(LlmError::Rejected { status }) => Some(*status),
            AttemptError::Final(LlmError::RejectedWith { status, .. }) => Some(*status),
            AttemptError::Retryable { status, .. } => *status,
            AttemptError::Final(_) => None,
        }
    }

    /// mana-llm's kind of the failure, if the body named one.
    pub(super) fn kind(&self) -> Option<GatewayKind> {
        match self {
            AttemptError::Final(LlmError::RejectedWith { kind, .. }) => *kind,
            AttemptError::Final(LlmError::Refused { kind, .. }) => Some(*kind),
            AttemptError::Retryable { kind, .. } => *kind,
            AttemptError::Final(_) => None,
        }
    }

    /// What the attempt says about the gateway's capacity (for the limiter):
    /// `rate_limit` is an overload whatever the status, `no_healthy_provider`
    /// is not (the providers behind the gateway are down, not the gateway full).
    pub(super) fn response(&self) -> Response {
        match self {
            // A 2xx whose body is unusable: the gateway did answer.
            AttemptError::Final(LlmError::BadAnswer(_)) => Response::Success,
            AttemptError::Retryable {
                timed_out: true, ..
            } => Response::Timeout,
            AttemptError::Retryable {
                kind: Some(GatewayKind::RateLimit),
                retry_after,
                ..
            } => Response::Overload {
                retry_after: *retry_after,
            },
            AttemptError::Retryable {
                kind: Some(GatewayKind::NoHealthyProvider),
                ..
            } => Response::Other,
            AttemptError::Retryable {
                status: Some(status),
                retry_after,
                ..
            } => Response::from_status(*status, *retry_after),
            _ => Response::Other,
        }
    }

    /// A 429 or 503: the gateway is full.
    pub(super) fn is_overload(&self) -> bool {
        self.response().is_overload()
    }
}
