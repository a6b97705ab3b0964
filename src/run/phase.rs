//! Where a run is, in the webapp's words: a failed iteration's
//! `errorDetails.phase` (contract section 3) and `mission_runs.outcome` of
//! an attempt that failed. The strings live here and nowhere else.

/// The webapp's iteration phases a run of mana-ai goes through
/// (`staging-proposals` is the webapp's own step after a write-back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Agent, grant, inputs and research: everything before the prompt.
    ResolvingInputs,
    /// The prompt and the LLM request with its retries.
    CallingLlm,
    /// The strict parse of the answer.
    ParsingResponse,
    /// The write-back of the iteration.
    Finalizing,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::ResolvingInputs => "resolving-inputs",
            Phase::CallingLlm => "calling-llm",
            Phase::ParsingResponse => "parsing-response",
            Phase::Finalizing => "finalizing",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Phase;

    #[test]
    fn phases_are_the_webapps() {
        let webapp = [
            "resolving-inputs",
            "calling-llm",
            "parsing-response",
            "staging-proposals",
            "finalizing",
        ];
        for p in [
            Phase::ResolvingInputs,
            Phase::CallingLlm,
            Phase::ParsingResponse,
            Phase::Finalizing,
        ] {
            assert!(webapp.contains(&p.as_str()), "{p:?}");
        }
    }
}
