//! The parsers every group of [`super::Config`] shares: numbers in a range,
//! booleans, http(s) URLs, Postgres URLs, the retry back-off list. Every
//! error names its variable.

use std::fmt;
use std::time::Duration;

use super::ConfigError;

pub(super) fn err(var: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        problem: problem.into(),
    }
}

/// An http(s) base URL without a trailing slash.
pub(super) fn parse_http_url(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: &str,
) -> Result<String, ConfigError> {
    let raw = get(var).unwrap_or_else(|| default.to_string());
    let url = raw.trim().trim_end_matches('/').to_string();
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| err(var, format!("{raw:?} is not an http(s) URL")))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(err(var, format!("{raw:?} has no host")));
    }
    Ok(url)
}

pub(super) fn parse_backoff(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<Duration>, ConfigError> {
    const VAR: &str = "MANA_AI_RETRY_BACKOFF_SECS";
    let raw = get(VAR).unwrap_or_else(|| "60,300,900".into());
    raw.split(',')
        .map(|part| match part.trim().parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 86_400.0 => {
                Ok(Duration::from_secs_f64(secs))
            }
            _ => Err(err(
                VAR,
                format!("{part:?} is not a number of seconds in (0, 86400]"),
            )),
        })
        .collect()
}

/// Whether a (valid) connection string says `sslmode=require`.
pub(super) fn asks_for_tls(url: &str) -> bool {
    url.parse::<tokio_postgres::Config>()
        .is_ok_and(|c| c.get_ssl_mode() == tokio_postgres::config::SslMode::Require)
}

pub(super) fn check_pg_url(var: &'static str, url: &str) -> Result<(), ConfigError> {
    if url.contains("sslmode=verify-") {
        return Err(err(
            var,
            "sslmode=verify-ca/verify-full are not accepted: use sslmode=require, which here \
             verifies the certificate chain and host name (CA file: MANA_AI_PG_ROOT_CERT)",
        ));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        if !matches!(scheme, "postgres" | "postgresql") {
            return Err(err(
                var,
                format!(
                    "is a {scheme:?} URL; mana-ai needs Postgres: postgres://USER:PASSWORD@HOST:5432/mana_sync"
                ),
            ));
        }
    }
    url.parse::<tokio_postgres::Config>()
        .map(|_| ())
        // The parser's messages name options, never values; the URL itself
        // (with its password) is not echoed.
        .map_err(|e| {
            let mut problem = format!("is not a valid Postgres connection string: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                problem.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            err(var, problem)
        })
}

pub(super) fn parse_num<T>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let Some(raw) = get(var) else {
        return Ok(default);
    };
    let value: T = raw.trim().parse().map_err(|_| {
        // "70000" for a port is a number, just not one that fits.
        let problem = match raw.trim().parse::<f64>() {
            Ok(_) => "is out of range",
            Err(_) => "is not a number",
        };
        err(
            var,
            format!(
                "{raw:?} {problem} (allowed: {}..={})",
                range.start(),
                range.end()
            ),
        )
    })?;
    if !range.contains(&value) {
        return Err(err(
            var,
            format!(
                "{value} is out of range {}..={}",
                range.start(),
                range.end()
            ),
        ));
    }
    Ok(value)
}

pub(super) fn parse_planner(get: &impl Fn(&str) -> Option<String>) -> Result<bool, ConfigError> {
    match get("MANA_AI_PLANNER").as_deref().map(str::trim) {
        None | Some("") | Some("llm") => Ok(false),
        Some("offline") => Ok(true),
        Some(other) => Err(err(
            "MANA_AI_PLANNER",
            format!("{other:?} is not one of llm, offline"),
        )),
    }
}

pub(super) fn parse_bool(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(var).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => Ok(true),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => Ok(false),
        Some(v) => Err(err(var, format!("{v:?} is not true or false"))),
    }
}
