//! Deep research jobs (`planner::deep_research`, `run::deep`): off unless
//! `MANA_AI_DEEP_RESEARCH_ENABLED=true`; then mana-research at
//! `MANA_RESEARCH_URL`, asked with the service key of `MANA_SERVICE_KEY`.

use std::time::Duration;

use super::parse::{err, parse_bool, parse_http_url, parse_num};
use super::ConfigError;

/// The provider asked for when `MANA_AI_RESEARCH_PROVIDER` is unset. The
/// async providers mana-research knows today: `openai-deep-research`,
/// `gemini-deep-research`, `gemini-deep-research-max` (it refuses others
/// with 400, and the run falls back to the news research).
pub const DEFAULT_RESEARCH_PROVIDER: &str = "openai-deep-research";

/// Longest provider name accepted (it is a metric label value).
const MAX_PROVIDER_CHARS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeepResearchConfig {
    /// `MANA_AI_DEEP_RESEARCH_ENABLED`: submit deep research jobs at all.
    pub enabled: bool,
    /// `MANA_RESEARCH_URL`: mana-research's base URL.
    pub url: String,
    /// `MANA_AI_RESEARCH_PROVIDER`: the `provider` of every submit, and the
    /// `provider` label of the research job metrics.
    pub provider: String,
    /// `MANA_AI_RESEARCH_POLL_SECS`: while a job is pending, the mission is
    /// re-armed this far ahead and polled then.
    pub poll_interval: Duration,
    /// `MANA_AI_RESEARCH_JOB_MAX_HOURS`: a job pending longer is dropped and
    /// the run falls back to the news research.
    pub max_age: Duration,
}

impl DeepResearchConfig {
    pub(super) fn from_lookup(
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<DeepResearchConfig, ConfigError> {
        let enabled = parse_bool(get, "MANA_AI_DEEP_RESEARCH_ENABLED", false)?;
        if enabled && get("MANA_SERVICE_KEY").is_none() {
            return Err(err(
                "MANA_AI_DEEP_RESEARCH_ENABLED",
                "is true but MANA_SERVICE_KEY is not set: mana-research needs the service key (X-Service-Key)",
            ));
        }
        let provider = get("MANA_AI_RESEARCH_PROVIDER")
            .map(|p| p.trim().to_string())
            .unwrap_or_else(|| DEFAULT_RESEARCH_PROVIDER.into());
        if !valid_provider(&provider) {
            return Err(err(
                "MANA_AI_RESEARCH_PROVIDER",
                format!("{provider:?} must be 1 to {MAX_PROVIDER_CHARS} characters of [a-z0-9._-]"),
            ));
        }
        let hours = parse_num(get, "MANA_AI_RESEARCH_JOB_MAX_HOURS", 6u64, 1..=168)?;
        Ok(DeepResearchConfig {
            enabled,
            url: parse_http_url(get, "MANA_RESEARCH_URL", "http://localhost:3068")?,
            provider,
            poll_interval: Duration::from_secs(parse_num(
                get,
                "MANA_AI_RESEARCH_POLL_SECS",
                30u64,
                1..=3_600,
            )?),
            max_age: Duration::from_secs(hours * 3_600),
        })
    }
}

fn valid_provider(name: &str) -> bool {
    (1..=MAX_PROVIDER_CHARS).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{config, URL};
    use super::*;

    #[test]
    fn off_by_default_with_the_documented_defaults() {
        let r = config(&[URL]).unwrap().research;
        assert!(!r.enabled);
        assert_eq!(r.url, "http://localhost:3068");
        assert_eq!(r.provider, DEFAULT_RESEARCH_PROVIDER);
        assert_eq!(r.poll_interval, Duration::from_secs(30));
        assert_eq!(r.max_age, Duration::from_secs(6 * 3_600));
    }

    #[test]
    fn enabled_needs_the_service_key() {
        let on = ("MANA_AI_DEEP_RESEARCH_ENABLED", "true");
        let e = config(&[URL, on]).unwrap_err();
        assert_eq!(e.var, "MANA_AI_DEEP_RESEARCH_ENABLED");
        assert!(e.problem.contains("MANA_SERVICE_KEY"), "{e}");
        let c = config(&[URL, on, ("MANA_SERVICE_KEY", "sk")]).unwrap();
        assert!(c.research.enabled);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("MANA_AI_RESEARCH_POLL_SECS", "0"),
            ("MANA_AI_RESEARCH_JOB_MAX_HOURS", "0"),
            ("MANA_AI_RESEARCH_JOB_MAX_HOURS", "1000"),
            ("MANA_RESEARCH_URL", "ftp://x"),
            ("MANA_AI_RESEARCH_PROVIDER", "Open AI"),
            ("MANA_AI_DEEP_RESEARCH_ENABLED", "maybe"),
        ] {
            let e = config(&[URL, (var, value)]).unwrap_err();
            assert_eq!(e.var, var, "{e}");
        }
        let long = "p".repeat(MAX_PROVIDER_CHARS + 1);
        assert!(config(&[URL, ("MANA_AI_RESEARCH_PROVIDER", &long)]).is_err());
    }
}
