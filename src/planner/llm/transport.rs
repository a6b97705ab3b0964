//! HTTP plumbing shared by the LLM and research clients: bounded body
//! reads, `Retry-After`, the retry backoff, endpoint paths and transport
//! errors described without their URL.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// Why a body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    TooLarge(usize),
    Transport(reqwest::Error),
}

/// Reads a body of at most `limit` bytes: refused up front when the declared
/// length is larger, and dropped mid-stream once a chunked body passes the limit.
pub(crate) async fn read_body_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let declared = response.content_length().unwrap_or(0);
    if declared > limit as u64 {
        return Err(BodyError::TooLarge(limit));
    }
    let mut body = Vec::with_capacity(declared as usize);
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `Retry-After` in seconds; the HTTP-date form falls back to the backoff.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// `base` with `path` appended below its own path (keeps a `/llm` prefix).
pub(crate) fn join_path(base: &reqwest::Url, path: &str) -> reqwest::Url {
    let mut url = base.clone();
    let joined = format!(
        "{}/{}",
        base.path().trim_end_matches('/'),
        path.trim_start_matches('/')
    );
    url.set_path(&joined);
    url
}

/// A transport error with its causes, without the URL.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut text = if e.is_connect() {
        "connect failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_only() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, " 7 ".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn endpoint_keeps_a_path_prefix() {
        let url = |base: &str| {
            join_path(&reqwest::Url::parse(base).unwrap(), "v1/chat/completions").to_string()
        };
        assert_eq!(url("http://h:3020"), "http://h:3020/v1/chat/completions");
        assert_eq!(url("http://h/llm/"), "http://h/llm/v1/chat/completions");
    }
}
