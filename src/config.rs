//! Environment -> typed [`Config`], grouped by concern.
//!
//! Every variable is read in one place, validated at start, and every error
//! names the variable and what is wrong with it. Each group (database,
//! reactor, runner, planner, HTTP, grants) is parsed by its own function;
//! the shared parsers live in `config/parse.rs`. Secrets are wrapped in
//! [`Secret`] so that `Debug` of the config never prints them.

mod http;
mod jwt;
mod limits;
mod parse;
mod research;

pub use http::HttpConfig;
pub use limits::{CostLimits, FairLimits, HttpLimits};
pub use research::DeepResearchConfig;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use parse::{
    asks_for_tls, check_pg_url, err, parse_backoff, parse_bool, parse_http_url, parse_num,
    parse_planner,
};

/// A configuration error: always names the environment variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

/// A value that must never be printed (database passwords, service keys).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        })
    }
}

/// `MANA_LLM_MAX_TOKENS` default: a plan of five steps is a few hundred
/// tokens; this leaves room for a verbose model and stops a looping one.
pub const DEFAULT_LLM_MAX_TOKENS: u32 = 1024;

/// `MANA_LLM_TIMEOUT_SECS` default: a small model on two CPU cores takes
/// about 25 s to read the planner's 3,100-token prompt the first time, and a
/// few-billion-parameter one several times that.
pub const DEFAULT_LLM_TIMEOUT_SECS: u64 = 180;

/// The channel the DBA trigger notifies (see `triggers/install.sql`).
pub const DEFAULT_CHANNEL: &str = "mana_ai_changes";

/// Typed configuration of one mana-ai process, one group per concern.
#[derive(Debug, Clone)]
pub struct Config {
    pub db: DatabaseConfig,
    pub reactor: ReactorConfig,
    pub runner: RunnerConfig,
    pub planner: PlannerConfig,
    pub http: HttpConfig,
    pub grants: GrantConfig,
    /// Deep research jobs (`MANA_AI_DEEP_RESEARCH_ENABLED` and friends).
    pub research: DeepResearchConfig,
    /// Variables of the original service that are set here but mean
    /// nothing to this one (see [`NO_LONGER_READ`]).
    pub no_longer_read: Vec<&'static str>,
    /// The generation of `public.sync_changes`: never read from a variable;
    /// `serve` sets it from the catalog at start (`sync::generation`).
    pub generation: crate::sync::generation::Generation,
}

/// Settings of the original mana-ai that this service does not read, and
/// what to do instead: set, each is named in a warning at start rather than
/// silently ignored.
pub const NO_LONGER_READ: &[(&str, &str)] = &[(
    "TICK_INTERVAL_MS",
    "mana-ai no longer polls on a tick: each mission runs at its nextRunAt \
     (the timer wheel); remove the variable",
)];

/// The database: connections, TLS, the role's privileges, the leader lock.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// `SYNC_DATABASE_URL`: the mana_sync database, as the service role.
    pub url: Secret,
    /// `MANA_AI_LISTEN_DATABASE_URL`: a direct connection for LISTEN when the
    /// pool sits behind a transaction pooler (which breaks LISTEN).
    pub listen_url: Secret,
    /// `MANA_AI_PG_ROOT_CERT`: PEM file of the CA certificates that sign the
    /// database server's certificate (URLs with `sslmode=require`; without
    /// it the web PKI roots are used). See `db::tls`.
    pub root_cert: Option<PathBuf>,
    /// `MANA_AI_DB_POOL_SIZE`: connections in the pool (the listener has its own).
    pub pool_size: usize,
    /// `MANA_AI_ALLOW_PRIVILEGED`: start even when the database role is
    /// SUPERUSER or BYPASSRLS (development only; a loud warning is logged).
    pub allow_privileged: bool,
    /// `MANA_AI_LEADER_RETRY_SECS`: how often a standby tries to become leader.
    pub leader_retry: Duration,
}

/// The reactor: listener, applier, safety sweep, retention.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    /// `MANA_AI_SWEEP_INTERVAL_SECS`: the safety sweep that drains what a lost
    /// notification left behind.
    pub sweep_interval: Duration,
    /// `MANA_AI_LISTEN_HEARTBEAT_SECS`: how often the listener checks its
    /// registration and measures the database clock.
    pub listen_heartbeat: Duration,
    /// `MANA_AI_LISTEN_CHANNEL`: the NOTIFY channel (tests point it elsewhere
    /// to prove the safety sweep works without notifications).
    pub listen_channel: String,
    /// `MANA_AI_APPLY_BATCH`: queue rows claimed per applier transaction.
    pub apply_batch: i64,
    /// `MANA_AI_ANALYZE_AFTER_ROWS`: changes applied before the snapshot
    /// tables are analyzed (`reactor::analyze`); 0 turns it off.
    pub analyze_after_rows: u64,
    /// `MANA_AI_MAX_FIELD_BYTES`: a change with a field larger than this (as
    /// JSON text) is set aside as poison.
    pub max_field_bytes: usize,
    /// `MANA_AI_RETENTION_DAYS`: how long finished `mission_runs` rows and
    /// `dead_changes` rows are kept before the leader prunes them.
    pub retention_days: u32,
    /// `MANA_AI_AUDIT_RETENTION_DAYS`: how long `decrypt_audit` rows are
    /// kept (at least 30 days, default a year).
    pub audit_retention_days: u32,
}

/// The runner: whether, how many and how often missions run.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// `TICK_ENABLED`: false boots without running missions.
    pub tick_enabled: bool,
    /// `MANA_AI_DEFAULT_TIMEZONE`: IANA zone for daily/weekly cadences.
    pub default_timezone: chrono_tz::Tz,
    /// `MANA_AI_MAX_CONCURRENT_RUNS`: mission runs in flight at once.
    pub max_concurrent_runs: usize,
    /// `MANA_AI_MAX_FAILURES`: consecutive failed runs before a `failed` iteration.
    pub max_failures: u32,
    /// `MANA_AI_RETRY_BACKOFF_SECS`: waits after the 1st, 2nd, ... failed
    /// run of a slot, comma-separated (the last repeats).
    pub retry_backoff: Vec<Duration>,
    /// `MANA_AI_SHUTDOWN_GRACE_SECS`: how long runs in flight may finish on SIGTERM.
    pub shutdown_grace: Duration,
    /// `MANA_AI_MIN_INTERVAL_MINUTES` and `MANA_AI_USER_TOKENS_PER_DAY`.
    pub cost: CostLimits,
    /// `MANA_AI_MAX_RUNS_PER_USER` and `MANA_AI_CATCH_UP_GRACE_SECS`.
    pub fair: FairLimits,
}

/// The planner: the LLM gateway, the research pre-step, the tool catalog.
#[derive(Debug, Clone)]
pub struct PlannerConfig {
    /// `MANA_LLM_URL`: OpenAI-compatible gateway (mana-llm).
    pub llm_url: String,
    /// `MANA_LLM_MODEL`: model name sent to the gateway.
    pub llm_model: String,
    /// `MANA_LLM_TIMEOUT_SECS`: per request.
    pub llm_timeout: Duration,
    /// `MANA_LLM_STRUCTURED`: auto|json_schema|json_object|off, how the plan's
    /// JSON schema is sent (see `planner::structured`).
    pub llm_structured: crate::planner::structured::StructuredMode,
    /// `MANA_LLM_MAX_ATTEMPTS`: tries per run for retryable failures.
    pub llm_max_attempts: u32,
    /// `MANA_LLM_MAX_TOKENS`: `max_tokens` of every request (0: not sent).
    pub llm_max_tokens: u32,
    /// `MANA_AI_PLANNER`: `llm` (the default) or `offline`, a fixed example
    /// plan for trying `serve` without a model (never chosen silently).
    pub offline: bool,
    /// `MANA_API_URL`: mana-api, for the research pre-step.
    pub api_url: String,
    /// `MANA_AI_TOOL_CATALOG`: a webapp-exported tool catalog instead of the built-in one.
    pub tool_catalog: Option<PathBuf>,
}

/// Key-grants: the key that unwraps them.
#[derive(Debug, Clone)]
pub struct GrantConfig {
    /// `MANA_AI_PRIVATE_KEY_PEM`: PKCS#8 PEM that unwraps mission key-grants.
    pub private_key_pem: Secret,
    /// `MANA_AI_REQUIRE_GRANTS`: refuse to start when the key is missing or bad.
    pub require_grants: bool,
}
/// How every group reads a variable: unset and blank are the same.
trait Lookup: Fn(&str) -> Option<String> {}
impl<F: Fn(&str) -> Option<String>> Lookup for F {}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        Ok(Config {
            db: DatabaseConfig::parse(&get)?,
            reactor: ReactorConfig::parse(&get)?,
            runner: RunnerConfig::parse(&get)?,
            planner: PlannerConfig::parse(&get)?,
            http: HttpConfig::parse(&get)?,
            grants: GrantConfig::parse(&get)?,
            research: DeepResearchConfig::from_lookup(&get)?,
            no_longer_read: NO_LONGER_READ
                .iter()
                .map(|(var, _)| *var)
                .filter(|var| get(var).is_some())
                .collect(),
            generation: Default::default(),
        })
    }

    /// What the service warns about at start (never a value of a variable).
    pub fn startup_warnings(&self) -> Vec<String> {
        let mut warnings = self.http.startup_warnings();
        for (var, why) in NO_LONGER_READ {
            if self.no_longer_read.contains(var) {
                warnings.push(format!("{var} is set but not read: {why}"));
            }
        }
        warnings
    }
}

impl DatabaseConfig {
    fn parse(get: &impl Lookup) -> Result<DatabaseConfig, ConfigError> {
        let url = get("SYNC_DATABASE_URL").ok_or_else(|| {
            err(
                "SYNC_DATABASE_URL",
                "is not set: give the mana_sync database URL, e.g. postgres://mana_ai@localhost/mana_sync",
            )
        })?;
        check_pg_url("SYNC_DATABASE_URL", &url)?;
        let listen_url = match get("MANA_AI_LISTEN_DATABASE_URL") {
            Some(listen) => {
                check_pg_url("MANA_AI_LISTEN_DATABASE_URL", &listen)?;
                listen
            }
            None => url.clone(),
        };
        let root_cert = get("MANA_AI_PG_ROOT_CERT").map(PathBuf::from);
        if root_cert.is_some() && !asks_for_tls(&url) && !asks_for_tls(&listen_url) {
            return Err(err(
                "MANA_AI_PG_ROOT_CERT",
                "is set but no database URL asks for TLS: add sslmode=require to SYNC_DATABASE_URL",
            ));
        }
        Ok(DatabaseConfig {
            url: Secret::new(url),
            listen_url: Secret::new(listen_url),
            root_cert,
            pool_size: parse_num(get, "MANA_AI_DB_POOL_SIZE", 8usize, 2..=256)?,
            allow_privileged: parse_bool(get, "MANA_AI_ALLOW_PRIVILEGED", false)?,
            leader_retry: secs(get, "MANA_AI_LEADER_RETRY_SECS", 3, 1..=60)?,
        })
    }
}

impl ReactorConfig {
    fn parse(get: &impl Lookup) -> Result<ReactorConfig, ConfigError> {
        let listen_channel =
            get("MANA_AI_LISTEN_CHANNEL").unwrap_or_else(|| DEFAULT_CHANNEL.into());
        if listen_channel.len() > 63
            || !listen_channel
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(err(
                "MANA_AI_LISTEN_CHANNEL",
                "must be 1 to 63 characters of [A-Za-z0-9_]",
            ));
        }
        Ok(ReactorConfig {
            sweep_interval: secs(get, "MANA_AI_SWEEP_INTERVAL_SECS", 300, 1..=86_400)?,
            listen_heartbeat: secs(get, "MANA_AI_LISTEN_HEARTBEAT_SECS", 30, 1..=3_600)?,
            listen_channel,
            apply_batch: parse_num(get, "MANA_AI_APPLY_BATCH", 500i64, 1..=10_000)?,
            analyze_after_rows: parse_num(
                get,
                "MANA_AI_ANALYZE_AFTER_ROWS",
                crate::reactor::analyze::ANALYZE_AFTER_ROWS,
                0..=u64::MAX,
            )?,
            max_field_bytes: parse_num(
                get,
                "MANA_AI_MAX_FIELD_BYTES",
                1024 * 1024usize,
                1024..=64 * 1024 * 1024,
            )?,
            retention_days: parse_num(get, "MANA_AI_RETENTION_DAYS", 30u32, 1..=3_650)?,
            audit_retention_days: parse_num(
                get,
                "MANA_AI_AUDIT_RETENTION_DAYS",
                365u32,
                30..=36_500,
            )?,
        })
    }
}

impl RunnerConfig {
    fn parse(get: &impl Lookup) -> Result<RunnerConfig, ConfigError> {
        let timezone_name =
            get("MANA_AI_DEFAULT_TIMEZONE").unwrap_or_else(|| "Europe/Berlin".into());
        let default_timezone = timezone_name.parse::<chrono_tz::Tz>().map_err(|_| {
            err(
                "MANA_AI_DEFAULT_TIMEZONE",
                format!("{timezone_name:?} is not an IANA time zone name"),
            )
        })?;
        Ok(RunnerConfig {
            tick_enabled: parse_bool(get, "TICK_ENABLED", true)?,
            default_timezone,
            max_concurrent_runs: parse_num(get, "MANA_AI_MAX_CONCURRENT_RUNS", 8usize, 1..=1024)?,
            max_failures: parse_num(get, "MANA_AI_MAX_FAILURES", 3u32, 1..=100)?,
            retry_backoff: parse_backoff(get)?,
            shutdown_grace: secs(get, "MANA_AI_SHUTDOWN_GRACE_SECS", 30, 0..=3_600)?,
            cost: CostLimits::from_lookup(get)?,
            fair: FairLimits::from_lookup(get)?,
        })
    }
}

impl PlannerConfig {
    fn parse(get: &impl Lookup) -> Result<PlannerConfig, ConfigError> {
        Ok(PlannerConfig {
            llm_url: parse_http_url(get, "MANA_LLM_URL", "http://localhost:3020")?,
            llm_model: get("MANA_LLM_MODEL").unwrap_or_else(|| "default".into()),
            llm_timeout: secs(
                get,
                "MANA_LLM_TIMEOUT_SECS",
                DEFAULT_LLM_TIMEOUT_SECS,
                1..=3_600,
            )?,
            llm_structured: match get("MANA_LLM_STRUCTURED") {
                Some(raw) => raw.parse().map_err(|e| err("MANA_LLM_STRUCTURED", e))?,
                None => Default::default(),
            },
            llm_max_attempts: parse_num(get, "MANA_LLM_MAX_ATTEMPTS", 3u32, 1..=10)?,
            llm_max_tokens: parse_num(
                get,
                "MANA_LLM_MAX_TOKENS",
                DEFAULT_LLM_MAX_TOKENS,
                0..=1_000_000,
            )?,
            offline: parse_planner(get)?,
            api_url: parse_http_url(get, "MANA_API_URL", "http://localhost:3060")?,
            tool_catalog: get("MANA_AI_TOOL_CATALOG").map(PathBuf::from),
        })
    }
}

impl GrantConfig {
    fn parse(get: &impl Lookup) -> Result<GrantConfig, ConfigError> {
        Ok(GrantConfig {
            private_key_pem: Secret::new(get("MANA_AI_PRIVATE_KEY_PEM").unwrap_or_default()),
            require_grants: parse_bool(get, "MANA_AI_REQUIRE_GRANTS", false)?,
        })
    }
}

/// A whole number of seconds in `range`, as a duration.
fn secs(
    get: &impl Lookup,
    var: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    parse_num(get, var, default, range).map(Duration::from_secs)
}

/// What the config tests of every group share.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{Config, ConfigError};
    use std::collections::HashMap;

    /// The config of exactly these variables.
    pub(crate) fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    pub(crate) const URL: (&str, &str) =
        ("SYNC_DATABASE_URL", "postgres://svc:pw@localhost/mana_sync");
}

#[cfg(test)]
mod tests {
    use super::test_support::{config, URL};
    use super::*;

    #[test]
    fn a_setting_of_the_original_that_no_longer_applies_is_named_in_a_warning() {
        assert!(config(&[URL])
            .unwrap()
            .startup_warnings()
            .iter()
            .all(|w| !w.contains("TICK_INTERVAL_MS")));
        let old = config(&[URL, ("TICK_INTERVAL_MS", "60000")]).unwrap();
        let warnings = old.startup_warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("TICK_INTERVAL_MS is set but not read: ")
                    && w.contains("nextRunAt")
                    && !w.contains("60000")),
            "{warnings:?}"
        );
    }

    #[test]
    fn defaults_apply() {
        let c = config(&[URL]).unwrap();
        assert_eq!(c.http.port, 3067);
        assert!(c.runner.tick_enabled);
        assert_eq!(c.runner.default_timezone, chrono_tz::Europe::Berlin);
        assert_eq!(c.db.listen_url, c.db.url);
        assert_eq!(c.reactor.listen_channel, DEFAULT_CHANNEL);
        assert_eq!(c.planner.llm_url, "http://localhost:3020");
        assert_eq!(c.planner.api_url, "http://localhost:3060");
        assert!(c.http.service_key.is_empty());
        assert!(!c.db.allow_privileged);
        assert_eq!(c.reactor.retention_days, 30);
        assert_eq!(
            c.planner.llm_timeout,
            Duration::from_secs(DEFAULT_LLM_TIMEOUT_SECS)
        );
        assert_eq!(
            c.planner.llm_structured,
            crate::planner::structured::StructuredMode::Auto
        );
        let off = config(&[URL, ("MANA_LLM_STRUCTURED", "off")]).unwrap();
        assert_eq!(
            off.planner.llm_structured,
            crate::planner::structured::StructuredMode::Off
        );
    }

    #[test]
    fn missing_url_names_the_variable() {
        let e = config(&[]).unwrap_err();
        assert_eq!(e.var, "SYNC_DATABASE_URL");
        assert!(e.to_string().starts_with("SYNC_DATABASE_URL: is not set"));
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("PORT", "http"),
            ("PORT", "70000"),
            ("TICK_ENABLED", "maybe"),
            ("MANA_AI_DEFAULT_TIMEZONE", "Mars/Olympus"),
            ("MANA_AI_APPLY_BATCH", "0"),
            ("MANA_AI_LISTEN_CHANNEL", "bad channel; drop"),
            ("MANA_AI_LISTEN_DATABASE_URL", "postgres://host:notaport/db"),
            ("MANA_LLM_URL", "localhost:3020"),
            ("MANA_AUTH_JWKS_URL", "ftp://auth/jwks"),
            ("MANA_AI_MAX_CONCURRENT_RUNS", "0"),
            ("MANA_AI_RETRY_BACKOFF_SECS", "60,,900"),
            ("MANA_AI_ALLOW_PRIVILEGED", "sometimes"),
            ("MANA_AI_RETENTION_DAYS", "0"),
            ("MANA_LLM_STRUCTURED", "strict"),
            ("MANA_LLM_TIMEOUT_SECS", "0"),
        ] {
            let e = config(&[URL, (var, value)]).unwrap_err();
            assert_eq!(e.var, var, "{e}");
        }
    }

    #[test]
    fn bad_database_urls_say_what_is_wrong_and_never_echo_the_password() {
        for (url, says) in [
            (
                "postgres://svc:pw@h/db?sslmode=verify-full",
                "use sslmode=require",
            ),
            ("postgres://svc:pw@h/db?sslmode=bogus", "sslmode"),
            ("postgres://svc:pw@h/db?colour=blue", "colour"),
        ] {
            let e = config(&[("SYNC_DATABASE_URL", url)]).unwrap_err();
            let text = e.to_string();
            assert!(text.starts_with("SYNC_DATABASE_URL: "), "{text}");
            assert!(text.contains(says), "{url}: {text}");
            assert!(!text.contains("pw"), "{text}");
        }
        let ca = ("MANA_AI_PG_ROOT_CERT", "/etc/ssl/db-ca.pem");
        let e = config(&[URL, ca]).unwrap_err();
        assert_eq!(e.var, "MANA_AI_PG_ROOT_CERT");
        assert!(e.to_string().contains("sslmode=require"), "{e}");
        let tls_url = (
            "SYNC_DATABASE_URL",
            "postgres://svc:pw@db/mana_sync?sslmode=require",
        );
        let c = config(&[tls_url, ca]).unwrap();
        assert_eq!(
            c.db.root_cert.as_deref(),
            Some(std::path::Path::new("/etc/ssl/db-ca.pem"))
        );
        // A direct LISTEN URL may go without TLS while the pooler's has it.
        let listen = (
            "MANA_AI_LISTEN_DATABASE_URL",
            "postgres://svc:pw@localhost/mana_sync",
        );
        assert!(config(&[tls_url, listen, ca]).is_ok());
    }

    #[test]
    fn tick_can_be_disabled() {
        assert!(
            !config(&[URL, ("TICK_ENABLED", "false")])
                .unwrap()
                .runner
                .tick_enabled
        );
    }

    #[test]
    fn debug_never_prints_the_password() {
        let c = config(&[URL, ("MANA_SERVICE_KEY", "sk-very-secret")]).unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("pw@") && !debug.contains("sk-very-secret"));
    }

    #[test]
    fn cost_limits_have_defaults_and_ranges() {
        let limits = config(&[URL]).unwrap().runner.cost;
        assert_eq!(limits, CostLimits::default());
        assert_eq!(limits.min_interval, chrono::Duration::minutes(1));
        assert_eq!(limits.user_tokens_per_day, None);
        let set = config(&[
            URL,
            ("MANA_AI_MIN_INTERVAL_MINUTES", "0"),
            ("MANA_AI_USER_TOKENS_PER_DAY", "50000"),
        ])
        .unwrap()
        .runner
        .cost;
        assert_eq!(set.min_interval, chrono::Duration::zero());
        assert_eq!(set.user_tokens_per_day, Some(50_000));
        for (var, bad) in [
            ("MANA_AI_MIN_INTERVAL_MINUTES", "-1"),
            ("MANA_AI_MIN_INTERVAL_MINUTES", "1441"),
            ("MANA_AI_USER_TOKENS_PER_DAY", "0"),
            ("MANA_AI_USER_TOKENS_PER_DAY", "lots"),
        ] {
            assert_eq!(config(&[URL, (var, bad)]).unwrap_err().var, var);
        }
    }

    #[test]
    fn fair_limits_have_defaults_and_ranges() {
        let limits = config(&[URL]).unwrap().runner.fair;
        assert_eq!(limits.max_runs_per_user, 4);
        assert_eq!(limits.catch_up_grace, Duration::from_secs(300));
        let set = config(&[
            URL,
            ("MANA_AI_MAX_RUNS_PER_USER", "2"),
            ("MANA_AI_CATCH_UP_GRACE_SECS", "60"),
        ])
        .unwrap()
        .runner
        .fair;
        assert_eq!(
            (set.max_runs_per_user, set.catch_up_grace.as_secs()),
            (2, 60)
        );
        for var in ["MANA_AI_MAX_RUNS_PER_USER", "MANA_AI_CATCH_UP_GRACE_SECS"] {
            assert_eq!(config(&[URL, (var, "0")]).unwrap_err().var, var);
        }
    }
}
