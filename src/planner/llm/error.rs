//! Why a completion, or one attempt of it, failed.

use std::time::Duration;

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

/// How one attempt ended, short of success.
pub(super) enum AttemptError {
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
    pub(super) fn status(&self) -> Option<u16> {
        match self {
            AttemptError::Final(LlmError::Rejected { status }) => Some(*status),
            AttemptError::Retryable { status, .. } => *status,
            AttemptError::Final(_) => None,
        }
    }
}
