//! The HTTP group: the port, the keys of `/internal/*`, the audit API's
//! tokens and the server's limits.

use std::time::Duration;

use super::jwt::{self, JwtVars};
use super::parse::{err, parse_num};
use super::{ConfigError, HttpLimits, Lookup, Secret};

/// HTTP: the port, the internal routes' key, the audit API's tokens.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `PORT`: HTTP port.
    pub port: u16,
    /// `MANA_SERVICE_KEY`: Bearer key for mana-llm; also the `X-Service-Key`
    /// of `/internal/*` while `MANA_AI_INTERNAL_KEY` is unset.
    pub service_key: Secret,
    /// `MANA_AI_INTERNAL_KEY`: when set, the only `X-Service-Key`
    /// `/internal/*` accepts (see [`HttpConfig::internal_routes_key`]).
    pub internal_key: Option<Secret>,
    /// `MANA_AI_METRICS_TOKEN`: when set, `/metrics` requires
    /// `Authorization: Bearer <token>`; unset, it is open.
    pub metrics_token: Option<Secret>,
    /// `MANA_AUTH_JWKS_URL`: mana-auth's JWKS for the audit API (https, or
    /// http to a loopback host).
    pub jwks_url: Option<String>,
    /// `MANA_AUTH_ISSUER`: required `iss` of user tokens; always set with a
    /// JWKS URL unless `jwt_allow_any_audience`.
    pub jwt_issuer: Option<String>,
    /// `MANA_AUTH_AUDIENCE`: required `aud` of user tokens; always set with
    /// a JWKS URL unless `jwt_allow_any_audience`.
    pub jwt_audience: Option<String>,
    /// `MANA_AUTH_ALLOW_ANY_AUDIENCE`: development only, start the audit API
    /// without `MANA_AUTH_ISSUER`/`MANA_AUTH_AUDIENCE` (with a warning).
    pub jwt_allow_any_audience: bool,
    /// `MANA_AUTH_JWKS_MAX_STALE_SECS`: while JWKS refreshes fail, keys are
    /// used up to this long after the last successful fetch; past it the
    /// audit API answers 503.
    pub jwks_max_stale: Duration,
    /// `MANA_AI_HTTP_MAX_CONNECTIONS` and `MANA_AI_HTTP_REQUEST_TIMEOUT_SECS`.
    pub limits: HttpLimits,
}

impl HttpConfig {
    pub(super) fn parse(get: &impl Lookup) -> Result<HttpConfig, ConfigError> {
        let service_key = Secret::new(get("MANA_SERVICE_KEY").unwrap_or_default());
        let internal_key = get("MANA_AI_INTERNAL_KEY").map(Secret::new);
        if internal_key.as_ref() == Some(&service_key) {
            return Err(err(
                "MANA_AI_INTERNAL_KEY",
                "is the same as MANA_SERVICE_KEY, which the LLM gateway sees: \
                 give /internal/* a key of its own",
            ));
        }
        let jwt = JwtVars::parse(get)?;
        Ok(HttpConfig {
            port: parse_num(get, "PORT", 3067u16, 0..=u16::MAX)?,
            service_key,
            internal_key,
            metrics_token: get("MANA_AI_METRICS_TOKEN").map(Secret::new),
            jwks_url: jwt.jwks_url,
            jwt_issuer: jwt.issuer,
            jwt_audience: jwt.audience,
            jwt_allow_any_audience: jwt.allow_any_audience,
            jwks_max_stale: Duration::from_secs(parse_num(
                get,
                "MANA_AUTH_JWKS_MAX_STALE_SECS",
                3600u64,
                1..=86_400,
            )?),
            limits: HttpLimits::from_lookup(&get)?,
        })
    }

    /// The key `/internal/*` accepts in `X-Service-Key`:
    /// `MANA_AI_INTERNAL_KEY`, else `MANA_SERVICE_KEY` (empty: none).
    pub fn internal_routes_key(&self) -> &Secret {
        self.internal_key.as_ref().unwrap_or(&self.service_key)
    }

    /// What the service warns about at start; never a key's value.
    pub fn startup_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        warnings.extend(jwt::opt_out_warning(self));
        if self.internal_key.is_none() && !self.service_key.is_empty() {
            warnings.push(
                "MANA_AI_INTERNAL_KEY is not set: /internal/* accepts MANA_SERVICE_KEY, \
                 the key the LLM gateway receives; set MANA_AI_INTERNAL_KEY to a key of its own"
                    .to_string(),
            );
        }
        warnings
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::test_support::{config, URL};
    use crate::config::Secret;

    #[test]
    fn http_limits_have_defaults_and_ranges() {
        let limits = config(&[URL]).unwrap().http.limits;
        assert_eq!(limits.max_connections, 256);
        assert_eq!(limits.request_timeout, Duration::from_secs(10));
        let set = config(&[
            URL,
            ("MANA_AI_HTTP_MAX_CONNECTIONS", "8"),
            ("MANA_AI_HTTP_REQUEST_TIMEOUT_SECS", "3"),
        ])
        .unwrap()
        .http
        .limits;
        assert_eq!((set.max_connections, set.request_timeout.as_secs()), (8, 3));
        for (var, bad) in [
            ("MANA_AI_HTTP_MAX_CONNECTIONS", "0"),
            ("MANA_AI_HTTP_REQUEST_TIMEOUT_SECS", "0"),
        ] {
            assert_eq!(config(&[URL, (var, bad)]).unwrap_err().var, var);
        }
    }

    #[test]
    fn internal_routes_use_their_own_key_when_one_is_set() {
        let both = config(&[
            URL,
            ("MANA_SERVICE_KEY", "gateway"),
            ("MANA_AI_INTERNAL_KEY", "operators"),
        ])
        .unwrap()
        .http;
        assert_eq!(both.internal_routes_key(), &Secret::new("operators"));
        assert_eq!(
            both.service_key,
            Secret::new("gateway"),
            "still sent to mana-llm"
        );
        assert!(both.startup_warnings().is_empty());
        let shared = config(&[URL, ("MANA_SERVICE_KEY", "sk-gw-7f3a")])
            .unwrap()
            .http;
        assert_eq!(shared.internal_routes_key(), &Secret::new("sk-gw-7f3a"));
        let warnings = shared.startup_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("MANA_AI_INTERNAL_KEY is not set"));
        assert!(!warnings[0].contains("sk-gw-7f3a"), "no key in a warning");
        let neither = config(&[URL]).unwrap().http;
        assert!(neither.internal_routes_key().is_empty());
        assert!(
            neither.startup_warnings().is_empty(),
            "nothing to warn about"
        );
    }

    #[test]
    fn the_internal_key_may_not_be_the_service_key() {
        let e = config(&[
            URL,
            ("MANA_SERVICE_KEY", "k-9d2e"),
            ("MANA_AI_INTERNAL_KEY", "k-9d2e"),
        ])
        .unwrap_err();
        assert_eq!(e.var, "MANA_AI_INTERNAL_KEY");
        assert!(!e.to_string().contains("k-9d2e"), "{e}");
    }

    #[test]
    fn debug_never_prints_a_key() {
        let c = config(&[
            URL,
            ("MANA_SERVICE_KEY", "sk-gateway-secret"),
            ("MANA_AI_INTERNAL_KEY", "sk-internal-secret"),
            ("MANA_AI_METRICS_TOKEN", "scrape-secret"),
        ])
        .unwrap();
        let debug = format!("{:?}", c.http);
        assert!(!debug.contains("secret"), "{debug}");
    }
}
