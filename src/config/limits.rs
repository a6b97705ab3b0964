//! The limits groups: how the runner shares itself between users, what a
//! mission may cost, and what the HTTP server accepts. Each group parses its
//! own variables.

use std::time::Duration;

use super::parse::parse_num;
use super::ConfigError;

/// How the runner shares itself between users (see `schedule::fair`); the
/// total is `MANA_AI_MAX_CONCURRENT_RUNS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FairLimits {
    /// `MANA_AI_MAX_RUNS_PER_USER`: runs of one user in flight at most.
    pub max_runs_per_user: usize,
    /// `MANA_AI_CATCH_UP_GRACE_SECS`: a slot older than this when it falls
    /// due is caught up after every on-time slot.
    pub catch_up_grace: Duration,
}

impl FairLimits {
    pub(super) fn from_lookup(
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<FairLimits, ConfigError> {
        Ok(FairLimits {
            max_runs_per_user: parse_num(get, "MANA_AI_MAX_RUNS_PER_USER", 4usize, 1..=1024)?,
            catch_up_grace: Duration::from_secs(parse_num(
                get,
                "MANA_AI_CATCH_UP_GRACE_SECS",
                300u64,
                1..=604_800,
            )?),
        })
    }
}

/// Limits of the HTTP server (see `http::HttpSettings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// `MANA_AI_HTTP_MAX_CONNECTIONS`: connections open at once; more are
    /// answered 503 and closed.
    pub max_connections: usize,
    /// `MANA_AI_HTTP_REQUEST_TIMEOUT_SECS`: a whole request (head and body)
    /// must arrive within this.
    pub request_timeout: Duration,
}

impl HttpLimits {
    pub(super) fn from_lookup(
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<HttpLimits, ConfigError> {
        Ok(HttpLimits {
            max_connections: parse_num(get, "MANA_AI_HTTP_MAX_CONNECTIONS", 256usize, 1..=65_536)?,
            request_timeout: Duration::from_secs(parse_num(
                get,
                "MANA_AI_HTTP_REQUEST_TIMEOUT_SECS",
                10u64,
                1..=600,
            )?),
        })
    }
}

/// Bounds on what missions cost: how often an interval mission may run, a
/// daily token budget of each user, and how many inputs a run reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostLimits {
    /// `MANA_AI_MIN_INTERVAL_MINUTES` (default 1, 0 turns it off): an
    /// interval cadence shorter than this runs at this interval.
    pub min_interval: chrono::Duration,
    /// `MANA_AI_USER_TOKENS_PER_DAY` (default off): tokens all of a user's
    /// runs, with an agent or without, may use in a rolling 24 hours.
    pub user_tokens_per_day: Option<i64>,
    /// `MANA_AI_MAX_INPUTS` (default 50): a mission's inputs a run reads,
    /// the first ones in its list; the rest are left out (and logged).
    pub max_inputs: usize,
}

impl Default for CostLimits {
    fn default() -> CostLimits {
        CostLimits {
            min_interval: crate::schedule::cadence::DEFAULT_MIN_INTERVAL,
            user_tokens_per_day: None,
            max_inputs: 50,
        }
    }
}

impl CostLimits {
    pub(super) fn from_lookup(
        get: &impl Fn(&str) -> Option<String>,
    ) -> Result<CostLimits, ConfigError> {
        let default_minutes = CostLimits::default().min_interval.num_minutes();
        let minutes = parse_num(
            get,
            "MANA_AI_MIN_INTERVAL_MINUTES",
            default_minutes,
            0..=1440,
        )?;
        let budget = match get("MANA_AI_USER_TOKENS_PER_DAY") {
            Some(_) => Some(parse_num(
                get,
                "MANA_AI_USER_TOKENS_PER_DAY",
                0i64,
                1..=i64::MAX,
            )?),
            None => None,
        };
        let max_inputs = parse_num(get, "MANA_AI_MAX_INPUTS", 50usize, 0..=1_000)?;
        Ok(CostLimits {
            min_interval: chrono::Duration::minutes(minutes),
            user_tokens_per_day: budget,
            max_inputs,
        })
    }
}
