//! Credentials on a request: the internal key (`X-Service-Key`) of
//! `/internal/*`, the bearer token of `/metrics` and that of the audit API.
//!
//! Rules: the internal key and the metrics token are compared in constant
//! time (digests of equal length, folded without an early exit), so response
//! timing reveals neither their length nor a matching prefix; an empty
//! configured key matches nothing; no credential is ever logged.

use hyper::header::{HeaderMap, AUTHORIZATION};
use sha2::{Digest, Sha256};

use crate::config::Secret;

/// The header operators send with `/internal/*` requests.
pub(crate) const SERVICE_KEY_HEADER: &str = "x-service-key";

/// Whether the request's `X-Service-Key` is the configured internal key.
pub(crate) fn service_key_matches(configured: &Secret, headers: &HeaderMap) -> bool {
    if configured.is_empty() {
        // An unset key must not turn into "any empty header is fine".
        return false;
    }
    let Some(presented) = headers.get(SERVICE_KEY_HEADER) else {
        return false;
    };
    constant_time_eq(configured.expose().as_bytes(), presented.as_bytes())
}

/// Whether the request's bearer token is `configured` (the metrics token);
/// an empty configured token matches nothing.
pub(crate) fn bearer_matches(configured: &Secret, headers: &HeaderMap) -> bool {
    if configured.is_empty() {
        return false;
    }
    let Some(presented) = bearer_token(headers) else {
        return false;
    };
    constant_time_eq(configured.expose().as_bytes(), presented.as_bytes())
}

/// Compares SHA-256 digests so both sides have the same length whatever the
/// inputs, then ORs every byte difference: no branch depends on where the
/// first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (da, db) = (Sha256::digest(a), Sha256::digest(b));
    let diff = da
        .iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer <token>` header (scheme
/// case-insensitive), or `None` when absent, of another scheme or empty.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn service_key_must_match_exactly() {
        let key = Secret::new("s3cret");
        assert!(service_key_matches(
            &key,
            &with(SERVICE_KEY_HEADER, "s3cret")
        ));
        assert!(!service_key_matches(
            &key,
            &with(SERVICE_KEY_HEADER, "s3cre")
        ));
        assert!(!service_key_matches(
            &key,
            &with(SERVICE_KEY_HEADER, "s3cret ")
        ));
        assert!(!service_key_matches(&key, &with(SERVICE_KEY_HEADER, "")));
        assert!(!service_key_matches(&key, &HeaderMap::new()));
    }

    #[test]
    fn empty_configured_key_refuses_everything() {
        let key = Secret::new("");
        assert!(!service_key_matches(&key, &with(SERVICE_KEY_HEADER, "")));
        assert!(!service_key_matches(&key, &HeaderMap::new()));
    }

    #[test]
    fn bearer_must_match_exactly() {
        let token = Secret::new("t0ken");
        assert!(bearer_matches(
            &token,
            &with("authorization", "Bearer t0ken")
        ));
        assert!(bearer_matches(
            &token,
            &with("authorization", "bearer t0ken")
        ));
        for wrong in [
            "Bearer t0ke",
            "Bearer t0ken2",
            "Basic t0ken",
            "t0ken",
            "Bearer ",
        ] {
            assert!(
                !bearer_matches(&token, &with("authorization", wrong)),
                "{wrong}"
            );
        }
        assert!(!bearer_matches(&token, &HeaderMap::new()));
        let empty = Secret::new("");
        assert!(!bearer_matches(&empty, &with("authorization", "Bearer ")));
    }

    #[test]
    fn bearer_token_parsing() {
        assert_eq!(
            bearer_token(&with("authorization", "Bearer abc")),
            Some("abc")
        );
        assert_eq!(
            bearer_token(&with("authorization", "bearer  abc ")),
            Some("abc")
        );
        assert_eq!(bearer_token(&with("authorization", "Basic abc")), None);
        assert_eq!(bearer_token(&with("authorization", "Bearer ")), None);
        assert_eq!(bearer_token(&with("authorization", "Bearer")), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
