//! The attempts of one call and of its current request.

/// Attempts, absorbed overloads and the answer budget of one call.
#[derive(Debug, Default)]
pub(super) struct Tries {
    /// Attempts of the whole call (all rounds), for `LlmAnswer::attempts`.
    pub attempts: u32,
    /// Attempts of the current request: `MANA_LLM_MAX_ATTEMPTS` bounds
    /// each request, so a later round has its retries too.
    pub request: u32,
    pub overloads: u32,
    /// A `truncated` answer was sent again already.
    pub truncated: bool,
    pub max_tokens: Option<u32>,
}

impl Tries {
    pub(super) fn begin_request(&mut self) {
        self.request = 0;
        self.overloads = 0;
    }

    pub(super) fn count(&mut self) {
        self.attempts += 1;
        self.request += 1;
    }

    /// The last attempt does not count (a refused form, an overload, the
    /// one resend of a truncated answer).
    pub(super) fn uncount(&mut self) {
        self.attempts -= 1;
        self.request -= 1;
    }
}
