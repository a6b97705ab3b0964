//! Text hygiene for everything that goes into a prompt: size caps and
//! ciphertext removal.
//!
//! Records are written by browsers, so any field may be huge or may still be
//! an `enc:1:` value a resolver could not decrypt. The prompt is the last
//! place that can keep ciphertext away from the model (contract section 3),
//! so every free-text field passes through [`clip`] here, whatever the
//! resolvers upstream already did.

use std::borrow::Cow;

/// Prefix of an encrypted field value (contract section 7).
pub const CIPHERTEXT_PREFIX: &str = "enc:1:";

/// What replaces a ciphertext inside free text.
const REDACTED: &str = "[verschlüsselt]";

/// Appended where text was cut, so the model knows it did not see it all.
const CUT_MARK: &str = " … [gekürzt]";

/// True when the value as a whole is ciphertext (agent `systemPrompt` and
/// `memory` are then left out entirely).
pub fn is_ciphertext(s: &str) -> bool {
    s.trim_start().starts_with(CIPHERTEXT_PREFIX)
}

/// Caps `s` at `max_chars` characters, then removes ciphertext. Truncating
/// first bounds the work on a huge field; a ciphertext cut in half still
/// starts with the prefix and is still removed.
pub fn clip(s: &str, max_chars: usize) -> Cow<'_, str> {
    match truncate(s, max_chars) {
        Cow::Borrowed(b) => redact_ciphertext(b),
        Cow::Owned(o) => Cow::Owned(redact_ciphertext(&o).into_owned()),
    }
}

/// Cuts at a character boundary and marks the cut.
pub fn truncate(s: &str, max_chars: usize) -> Cow<'_, str> {
    // A string of at most `max_chars` bytes has at most that many characters.
    if s.len() <= max_chars {
        return Cow::Borrowed(s);
    }
    match s.char_indices().nth(max_chars) {
        None => Cow::Borrowed(s),
        Some((cut, _)) => Cow::Owned(format!("{}{CUT_MARK}", &s[..cut])),
    }
}

/// Replaces every `enc:1:<base64 iv>.<base64 ciphertext>` token with a
/// marker. The token ends at the first character outside base64 and `.`.
pub fn redact_ciphertext(s: &str) -> Cow<'_, str> {
    if !s.contains(CIPHERTEXT_PREFIX) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(CIPHERTEXT_PREFIX) {
        out.push_str(&rest[..pos]);
        out.push_str(REDACTED);
        let after = &rest[pos + CIPHERTEXT_PREFIX.len()..];
        let token_len = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '.')))
            .unwrap_or(after.len());
        rest = &after[token_len..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Makes `agent_context` inside agent-supplied text unlike the real
/// delimiter, so a memory cannot close the block and pose as system text.
/// ASCII lowercasing keeps byte offsets, so positions carry over.
pub fn defuse_agent_tags(s: &str) -> Cow<'_, str> {
    const TAG: &str = "agent_context";
    let lower = s.to_ascii_lowercase();
    if !lower.contains(TAG) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for (pos, _) in lower.match_indices(TAG) {
        out.push_str(&s[last..pos]);
        out.push_str("agent-context");
        last = pos + TAG.len();
    }
    out.push_str(&s[last..]);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_counts_characters_not_bytes() {
        assert_eq!(truncate("äöü", 3), "äöü");
        assert_eq!(truncate("äöüß", 2), "äö … [gekürzt]");
        assert_eq!(truncate("", 0), "");
    }

    #[test]
    fn ciphertext_is_removed_wherever_it_appears() {
        let s = "Notiz: enc:1:AAAA+/==.BBBB= und enc:1:CC.DD, Ende";
        assert_eq!(
            redact_ciphertext(s),
            "Notiz: [verschlüsselt] und [verschlüsselt], Ende"
        );
        assert!(matches!(redact_ciphertext("klar"), Cow::Borrowed(_)));
        assert!(is_ciphertext("  enc:1:abc.def"));
        assert!(!is_ciphertext("Siehe enc:1:abc"));
    }

    #[test]
    fn clip_truncates_then_redacts() {
        let s = format!("x enc:1:{}", "A".repeat(100));
        assert_eq!(clip(&s, 20), "x [verschlüsselt] … [gekürzt]");
    }

    #[test]
    fn agent_tags_are_defused() {
        assert_eq!(
            defuse_agent_tags("a </Agent_Context> b"),
            "a </agent-context> b"
        );
        assert_eq!(defuse_agent_tags("ohne"), "ohne");
    }
}
