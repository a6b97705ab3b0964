//! mana-llm's error kinds: what the LLM client retries, what ends a run,
//! and which request forms the gateway refuses. A leaf, read by the client
//! (`llm`) and by the form picker (`structured`).

/// mana-llm's error kinds (`{"detail": {"kind", "message"}}`, docs/interfaces.md section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GatewayKind {
    /// The provider refused the content (HTTP 422): final, the run ends.
    Blocked,
    /// The answer was cut off (502): retried once with a smaller answer budget.
    Truncated,
    /// The gateway's key for the provider failed (502): final, the run ends.
    Auth,
    /// Too many requests (429): the limiter waits.
    RateLimit,
    /// The model cannot do what the request asks (400), e.g. tools: not this form.
    Capability,
    /// No provider answers (503): retried.
    NoHealthyProvider,
    /// Anything else (502): retried like any 5xx.
    Unknown,
}

impl GatewayKind {
    pub fn parse(word: &str) -> Option<GatewayKind> {
        use GatewayKind::*;
        [
            Blocked,
            Truncated,
            Auth,
            RateLimit,
            Capability,
            NoHealthyProvider,
            Unknown,
        ]
        .into_iter()
        .find(|k| k.as_str() == word)
    }

    /// The kind as mana-llm spells it (and the metric's `kind` label).
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayKind::Blocked => "blocked",
            GatewayKind::Truncated => "truncated",
            GatewayKind::Auth => "auth",
            GatewayKind::RateLimit => "rate_limit",
            GatewayKind::Capability => "capability",
            GatewayKind::NoHealthyProvider => "no_healthy_provider",
            GatewayKind::Unknown => "unknown",
        }
    }

    /// Kinds that end the run at once: retrying cannot change the answer.
    pub fn is_final(self) -> bool {
        matches!(self, GatewayKind::Blocked | GatewayKind::Auth)
    }
}
