//! The HTTP group: the port, the keys of `/internal/*`, the audit API's
//! tokens and the server's limits.

use super::parse::{parse_http_url, parse_num};
use super::{ConfigError, HttpLimits, Lookup, Secret};

/// HTTP: the port, the internal routes' key, the audit API's tokens.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `PORT`: HTTP port.
    pub port: u16,
    /// `MANA_SERVICE_KEY`: Bearer key for mana-llm and the `X-Service-Key` of
    /// `/internal/*`. Empty: internal routes refuse every request.
    pub service_key: Secret,
    /// `MANA_AUTH_JWKS_URL`: mana-auth's JWKS for the audit API.
    pub jwks_url: Option<String>,
    /// `MANA_AUTH_ISSUER`: required `iss` of user tokens, when set.
    pub jwt_issuer: Option<String>,
    /// `MANA_AUTH_AUDIENCE`: required `aud` of user tokens, when set.
    pub jwt_audience: Option<String>,
    /// `MANA_AI_HTTP_MAX_CONNECTIONS` and `MANA_AI_HTTP_REQUEST_TIMEOUT_SECS`.
    pub limits: HttpLimits,
}

impl HttpConfig {
    pub(super) fn parse(get: &impl Lookup) -> Result<HttpConfig, ConfigError> {
        Ok(HttpConfig {
            port: parse_num(get, "PORT", 3067u16, 0..=u16::MAX)?,
            service_key: Secret::new(get("MANA_SERVICE_KEY").unwrap_or_default()),
            jwks_url: match get("MANA_AUTH_JWKS_URL") {
                Some(_) => Some(parse_http_url(get, "MANA_AUTH_JWKS_URL", "")?),
                None => None,
            },
            jwt_issuer: get("MANA_AUTH_ISSUER"),
            jwt_audience: get("MANA_AUTH_AUDIENCE"),
            limits: HttpLimits::from_lookup(&get)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use crate::config::{Config, ConfigError};

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    const URL: (&str, &str) = ("SYNC_DATABASE_URL", "postgres://svc:pw@localhost/mana_sync");

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
}
