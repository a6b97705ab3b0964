//! Why a completion, or one attempt of it, failed.

use std::time::Duration;

use crate::planner::limiter::Response;

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
    /// Not sent: the check before the request found a token budget spent
    /// (which one: `agent` or `user`).
    #[error("LLM request not sent: the {0} token budget is spent")]
    OverBudget(&'static str),
    /// Not sent: the check before the request could not be made.
    #[error("LLM request not sent: {0}")]
    NotChecked(String),
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
    },
}

impl AttemptError {
    /// The HTTP status the server answered, if it did.
    pub(super) fn status(&self) -> Option<u16> {
        match self {
            AttemptError::Final(LlmError::Rejected { status }) => Some(*status),
            AttemptError::Retryable { status, .. } => *status,
            AttemptError::Final(_) => None,
        }
    }

    /// What the attempt says about the gateway's capacity (for the limiter).
    pub(super) fn response(&self) -> Response {
        match self {
            // A 2xx whose body is unusable: the gateway did answer.
            AttemptError::Final(LlmError::BadAnswer(_)) => Response::Success,
            AttemptError::Retryable {
                timed_out: true, ..
            } => Response::Timeout,
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
