//! Error answers: mana-llm's `{"detail": {"kind", "message"}}`, a plain
//! string `detail` (its bad requests and 500s), or anything else, turned
//! into how the attempt failed. Messages are clipped: a gateway may echo
//! the prompt (user content) in them, and they reach logs and the user's
//! `errorDetails`.

use std::time::Duration;

use serde_json::Value;

use super::error::{AttemptError, GatewayKind, LlmError};
use crate::planner::text::clip;

/// Longest error message kept from a body.
pub const MAX_DETAIL_CHARS: usize = 300;
/// Longest error body read.
pub(super) const MAX_ERROR_BODY_BYTES: usize = 16 * 1024;

/// What an error body said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Detail {
    pub kind: Option<GatewayKind>,
    pub message: Option<String>,
}

/// Reads `detail` of a JSON error body; anything else says nothing.
pub(super) fn parse_detail(bytes: &[u8]) -> Detail {
    let Ok(body) = serde_json::from_slice::<Value>(bytes) else {
        return Detail::default();
    };
    match body.get("detail") {
        Some(Value::String(message)) => Detail {
            kind: None,
            message: Some(tidy(message)),
        },
        Some(Value::Object(detail)) => Detail {
            kind: detail
                .get("kind")
                .and_then(Value::as_str)
                .map(|k| GatewayKind::parse(k).unwrap_or(GatewayKind::Unknown)),
            message: detail.get("message").and_then(Value::as_str).map(tidy),
        },
        _ => Detail::default(),
    }
}

/// One line, clipped.
fn tidy(message: &str) -> String {
    let line: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    clip(line.trim(), MAX_DETAIL_CHARS).into_owned()
}

/// How an attempt answered with `status` (not 2xx) and `detail` failed.
pub(super) fn classify(status: u16, retry_after: Option<Duration>, detail: Detail) -> AttemptError {
    let Detail { kind, message } = detail;
    let text = message.clone().unwrap_or_default();
    match kind {
        Some(kind) if kind.is_final() => {
            return AttemptError::Final(LlmError::Refused {
                kind,
                message: text,
            })
        }
        Some(GatewayKind::Capability) => {
            return AttemptError::Final(LlmError::RejectedWith {
                status,
                kind,
                message: text,
            })
        }
        _ => {}
    }
    if kind.is_some() || status == 429 || (500..=599).contains(&status) {
        let mut reason = format!("HTTP {status}");
        if let Some(kind) = kind {
            reason = format!("{reason} {}", kind.as_str());
        }
        if !text.is_empty() {
            reason = format!("{reason}: {text}");
        }
        return AttemptError::Retryable {
            reason,
            retry_after,
            status: Some(status),
            timed_out: false,
            kind,
        };
    }
    AttemptError::Final(match message {
        Some(message) => LlmError::RejectedWith {
            status,
            kind: None,
            message,
        },
        None => LlmError::Rejected { status },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_and_string_details_are_read_and_clipped() {
        let typed = parse_detail(br#"{"detail": {"kind": "blocked", "message": "no\nway"}}"#);
        assert_eq!(typed.kind, Some(GatewayKind::Blocked));
        assert_eq!(typed.message.as_deref(), Some("no way"));
        let odd = parse_detail(br#"{"detail": {"kind": "meteor"}}"#);
        assert_eq!(odd.kind, Some(GatewayKind::Unknown));
        let plain = parse_detail(br#"{"detail": "messages: field required"}"#);
        assert_eq!(
            (plain.kind, plain.message.as_deref()),
            (None, Some("messages: field required"))
        );
        assert_eq!(parse_detail(b"<html>"), Detail::default());
        let long = format!(r#"{{"detail": "{}"}}"#, "x".repeat(5000));
        let clipped = parse_detail(long.as_bytes()).message.unwrap();
        assert!(
            clipped.chars().count() < MAX_DETAIL_CHARS + 20,
            "{}",
            clipped.len()
        );
    }

    #[test]
    fn kinds_decide_final_retryable_and_not_this_form() {
        let detail = |kind: &str| {
            parse_detail(
                format!(r#"{{"detail": {{"kind": "{kind}", "message": "m"}}}}"#).as_bytes(),
            )
        };
        for kind in ["blocked", "auth"] {
            let e = classify(422, None, detail(kind));
            assert!(
                matches!(e, AttemptError::Final(LlmError::Refused { .. })),
                "{kind}"
            );
        }
        let e = classify(400, None, detail("capability"));
        assert_eq!(e.kind(), Some(GatewayKind::Capability));
        assert!(matches!(
            e,
            AttemptError::Final(LlmError::RejectedWith { status: 400, .. })
        ));
        for kind in ["truncated", "rate_limit", "no_healthy_provider", "unknown"] {
            let e = classify(502, None, detail(kind));
            assert!(matches!(e, AttemptError::Retryable { .. }), "{kind}");
        }
        assert!(
            classify(503, None, detail("no_healthy_provider")).response()
                == crate::planner::limiter::Response::Other
        );
        assert!(classify(429, None, detail("rate_limit")).is_overload());
        assert!(matches!(
            classify(400, None, Detail::default()),
            AttemptError::Final(LlmError::Rejected { status: 400 })
        ));
    }
}
