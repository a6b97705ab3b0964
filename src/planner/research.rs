//! Research client: the news-research pre-step (contract section 6).
//!
//! Two calls to mana-api: `discover` finds feeds for the query (15 s), then
//! `search` reads articles from those feeds (30 s). No feeds means no articles
//! and no second call. The planner treats every error here as "plan without
//! research", so errors say which step failed and why, and nothing more.
//! Answers are read leniently: missing or null fields default, an article
//! that is not an object is skipped, and at most the requested number is kept.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use super::llm::{describe, join_path, read_body_limited, BodyError};
pub use super::research_trigger::Article;

pub const DEFAULT_DISCOVER_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_SEARCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Feeds asked of `discover`, articles asked of `search` (contract values).
const FEED_LIMIT: usize = 5;
const ARTICLE_LIMIT: usize = 8;
/// Eight articles with excerpts are a few KiB; anything near this is not an answer.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A feed found by `discover`; only `url` is passed on to `search`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Feed {
    #[serde(deserialize_with = "null_as_default")]
    url: String,
}

/// Which of the two calls failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResearchStep {
    Discover,
    Search,
}

impl fmt::Display for ResearchStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ResearchStep::Discover => "discover",
            ResearchStep::Search => "search",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResearchError {
    #[error("news-research {step} timed out after {} ms", after.as_millis())]
    Timeout { step: ResearchStep, after: Duration },
    #[error("news-research {step} unreachable: {reason}")]
    Unreachable { step: ResearchStep, reason: String },
    #[error("news-research {step} answered HTTP {status}")]
    Status { step: ResearchStep, status: u16 },
    #[error("news-research {step} answer unusable: {reason}")]
    BadAnswer { step: ResearchStep, reason: String },
    #[error("news-research client misconfigured: {0}")]
    Config(String),
}

/// Client for mana-api's news research; cheap to share behind an `Arc`.
#[derive(Debug, Clone)]
pub struct ResearchClient {
    http: reqwest::Client,
    discover_url: reqwest::Url,
    search_url: reqwest::Url,
    discover_timeout: Duration,
    search_timeout: Duration,
}

impl ResearchClient {
    /// `base_url` is `MANA_API_URL`; production uses the `DEFAULT_*_TIMEOUT`s.
    pub fn new(
        base_url: &str,
        discover_timeout: Duration,
        search_timeout: Duration,
    ) -> Result<ResearchClient, ResearchError> {
        let base = reqwest::Url::parse(base_url)
            .map_err(|e| ResearchError::Config(format!("MANA_API_URL is not a URL: {e}")))?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ResearchError::Config(describe(&e)))?;
        Ok(ResearchClient {
            http,
            discover_url: join_path(&base, "api/v1/news-research/discover"),
            search_url: join_path(&base, "api/v1/news-research/search"),
            discover_timeout,
            search_timeout,
        })
    }

    /// Articles about `query` (the mission objective), at most eight.
    pub async fn research(&self, query: &str) -> Result<Vec<Article>, ResearchError> {
        let step = ResearchStep::Discover;
        let discover = json!({ "query": query, "language": "de", "limit": FEED_LIMIT });
        let answer = self
            .post(step, &self.discover_url, &discover, self.discover_timeout)
            .await?;
        let feeds: Vec<String> = items(&answer, "feeds")
            .filter_map(|f| Feed::deserialize(f).ok())
            .map(|f| f.url)
            .filter(|url| !url.trim().is_empty())
            .take(FEED_LIMIT)
            .collect();
        if feeds.is_empty() {
            return Ok(Vec::new());
        }

        let step = ResearchStep::Search;
        let search = json!({ "feeds": feeds, "query": query, "limit": ARTICLE_LIMIT });
        let answer = self
            .post(step, &self.search_url, &search, self.search_timeout)
            .await?;
        Ok(items(&answer, "articles")
            .filter_map(|a| Article::deserialize(a).ok())
            .take(ARTICLE_LIMIT)
            .collect())
    }

    async fn post(
        &self,
        step: ResearchStep,
        url: &reqwest::Url,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, ResearchError> {
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                ResearchError::Timeout {
                    step,
                    after: timeout,
                }
            } else {
                ResearchError::Unreachable {
                    step,
                    reason: describe(&e),
                }
            }
        };
        let response = self
            .http
            .post(url.clone())
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            return Err(ResearchError::Status {
                step,
                status: status.as_u16(),
            });
        }
        let bytes = read_body_limited(response, MAX_BODY_BYTES)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge(limit) => ResearchError::BadAnswer {
                    step,
                    reason: format!("body larger than {limit} bytes"),
                },
                BodyError::Transport(e) => transport(e),
            })?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| ResearchError::BadAnswer {
                step,
                reason: format!("not JSON: {e}"),
            })?;
        if !value.is_object() {
            return Err(ResearchError::BadAnswer {
                step,
                reason: "not a JSON object".into(),
            });
        }
        Ok(value)
    }
}

/// The elements of array `key` of `answer`; nothing when absent or not an array.
fn items<'a>(answer: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    answer
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn articles_default_missing_and_null_fields() {
        let a: Article = serde_json::from_value(
            json!({"url": "https://x", "title": null, "publishedAt": "2025-01-01"}),
        )
        .unwrap();
        assert_eq!(a.url, "https://x");
        assert_eq!(a.title, "");
        assert_eq!(a.published_at.as_deref(), Some("2025-01-01"));
        assert_eq!(a.score, None);
    }
}
