//! The audit API's token settings (`MANA_AUTH_*`): where mana-auth's JWKS
//! lives and which `iss`/`aud` a user token must carry.
//!
//! Rules: with a JWKS URL, `MANA_AUTH_ISSUER` and `MANA_AUTH_AUDIENCE` are
//! required, or else any token mana-auth signed for any service would read
//! audit rows; `MANA_AUTH_ALLOW_ANY_AUDIENCE` waives that for development
//! (a warning at start names what goes unchecked). The JWKS is fetched over
//! https, or plain http to a loopback host only (127.0.0.0/8, ::1,
//! `localhost`), decided by the same URL parser the HTTP client uses.

use std::net::IpAddr;

use reqwest::Url;

use super::parse::{err, parse_bool, parse_http_url};
use super::{ConfigError, HttpConfig, Lookup};

const JWKS_URL: &str = "MANA_AUTH_JWKS_URL";
const ISSUER: &str = "MANA_AUTH_ISSUER";
const AUDIENCE: &str = "MANA_AUTH_AUDIENCE";
const ALLOW_ANY: &str = "MANA_AUTH_ALLOW_ANY_AUDIENCE";

/// The `MANA_AUTH_*` variables, checked against each other.
pub(super) struct JwtVars {
    pub(super) jwks_url: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) audience: Option<String>,
    pub(super) allow_any_audience: bool,
}

impl JwtVars {
    pub(super) fn parse(get: &impl Lookup) -> Result<JwtVars, ConfigError> {
        let vars = JwtVars {
            jwks_url: parse_jwks_url(get)?,
            issuer: get(ISSUER),
            audience: get(AUDIENCE),
            allow_any_audience: parse_bool(get, ALLOW_ANY, false)?,
        };
        let missing = unchecked(&vars.jwks_url, &vars.issuer, &vars.audience);
        match missing.first() {
            Some(&first) if !vars.allow_any_audience => Err(err(
                first,
                format!(
                    "is not set: with {JWKS_URL} set, {ISSUER} and {AUDIENCE} are required \
                     (missing: {}), or any token mana-auth signed for any service would read \
                     audit rows; for development only, {ALLOW_ANY}=1 starts without them",
                    missing.join(", ")
                ),
            )),
            _ => Ok(vars),
        }
    }
}

/// The start-up warning of the opt-out, when it leaves a claim unchecked
/// (the parse refused that without the opt-out).
pub(super) fn opt_out_warning(http: &HttpConfig) -> Option<String> {
    let unchecked = unchecked(&http.jwks_url, &http.jwt_issuer, &http.jwt_audience);
    let claims = match unchecked[..] {
        [] => return None,
        [ISSUER] => "iss",
        [AUDIENCE] => "aud",
        _ => "iss or aud",
    };
    Some(format!(
        "{ALLOW_ANY} is set: the audit API accepts user tokens without checking {claims} \
         ({} unset); development only",
        unchecked.join(" and ")
    ))
}

/// The claims left unchecked: `MANA_AUTH_ISSUER`/`MANA_AUTH_AUDIENCE`
/// unset while the audit API is on.
fn unchecked(
    jwks_url: &Option<String>,
    issuer: &Option<String>,
    audience: &Option<String>,
) -> Vec<&'static str> {
    if jwks_url.is_none() {
        return Vec::new();
    }
    [(ISSUER, issuer), (AUDIENCE, audience)]
        .into_iter()
        .filter(|(_, value)| value.is_none())
        .map(|(name, _)| name)
        .collect()
}

/// `MANA_AUTH_JWKS_URL`: https, or http to a loopback host.
fn parse_jwks_url(get: &impl Lookup) -> Result<Option<String>, ConfigError> {
    if get(JWKS_URL).is_none() {
        return Ok(None);
    }
    let url = parse_http_url(get, JWKS_URL, "")?;
    let parsed = Url::parse(&url).map_err(|e| err(JWKS_URL, format!("is not a valid URL: {e}")))?;
    if parsed.scheme() == "http" && !is_loopback(&parsed) {
        let host = parsed.host_str().unwrap_or_default();
        return Err(err(
            JWKS_URL,
            format!(
                "uses plain http to {host:?}, where the keys could be swapped on the way: \
                 use https (plain http is allowed only to 127.0.0.0/8, ::1 or localhost)"
            ),
        ));
    }
    Ok(Some(url))
}

/// Whether `url`'s host is loopback: 127.0.0.0/8, ::1 or `localhost`.
/// The parser has already normalised the host: IPv4 in dotted quads
/// (`127.1` is `127.0.0.1`), IPv6 in brackets.
fn is_loopback(url: &Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {

    use crate::config::test_support::{config, URL};
    use crate::config::{Config, ConfigError};

    const JWKS: (&str, &str) = ("MANA_AUTH_JWKS_URL", "https://auth.mana.test/jwks.json");
    const ISS: (&str, &str) = ("MANA_AUTH_ISSUER", "https://auth.mana.test");
    const AUD: (&str, &str) = ("MANA_AUTH_AUDIENCE", "mana-ai");
    const ANY: (&str, &str) = ("MANA_AUTH_ALLOW_ANY_AUDIENCE", "1");

    fn with(extra: &[(&'static str, &'static str)]) -> Result<Config, ConfigError> {
        let mut pairs = vec![URL];
        pairs.extend_from_slice(extra);
        config(&pairs)
    }

    #[test]
    fn a_jwks_url_requires_issuer_and_audience() {
        for (given, first_missing) in [
            (&[][..], "MANA_AUTH_ISSUER"),
            (&[ISS], "MANA_AUTH_AUDIENCE"),
            (&[AUD], "MANA_AUTH_ISSUER"),
        ] {
            let mut pairs = vec![JWKS];
            pairs.extend_from_slice(given);
            let e = with(&pairs).unwrap_err();
            assert_eq!(e.var, first_missing, "{e}");
            assert!(
                e.to_string().contains("MANA_AUTH_ALLOW_ANY_AUDIENCE=1"),
                "{e}"
            );
        }
        let neither = with(&[JWKS]).unwrap_err().to_string();
        assert!(
            neither.contains("missing: MANA_AUTH_ISSUER, MANA_AUTH_AUDIENCE"),
            "{neither}"
        );
        let http = with(&[JWKS, ISS, AUD]).unwrap().http;
        assert_eq!(http.jwt_issuer.as_deref(), Some(ISS.1));
        assert_eq!(http.jwt_audience.as_deref(), Some(AUD.1));
        assert!(http.startup_warnings().is_empty());
        // Without a JWKS URL the audit API is off, and nothing is required.
        assert!(with(&[]).unwrap().http.jwks_url.is_none());
    }

    #[test]
    fn the_development_opt_out_starts_without_them_and_warns() {
        let http = with(&[JWKS, ANY]).unwrap().http;
        assert_eq!((http.jwt_issuer, http.jwt_audience), (None, None));
        let http = with(&[JWKS, ANY]).unwrap().http;
        let warnings = http.startup_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        for name in [
            "MANA_AUTH_ALLOW_ANY_AUDIENCE",
            "MANA_AUTH_ISSUER",
            "MANA_AUTH_AUDIENCE",
        ] {
            assert!(warnings[0].contains(name), "{name}: {warnings:?}");
        }
        // What is set is still checked; only the missing one is named.
        let http = with(&[JWKS, ANY, ISS]).unwrap().http;
        assert_eq!(http.jwt_issuer.as_deref(), Some(ISS.1));
        let warnings = http.startup_warnings();
        assert!(!warnings[0].contains("MANA_AUTH_ISSUER"), "{warnings:?}");
        // Off, or set without a JWKS URL, it changes nothing.
        let off = ("MANA_AUTH_ALLOW_ANY_AUDIENCE", "0");
        assert_eq!(with(&[JWKS, off]).unwrap_err().var, "MANA_AUTH_ISSUER");
        assert!(with(&[ANY]).unwrap().http.startup_warnings().is_empty());
        let bad = ("MANA_AUTH_ALLOW_ANY_AUDIENCE", "perhaps");
        assert_eq!(with(&[bad]).unwrap_err().var, bad.0);
    }

    #[test]
    fn a_plain_http_jwks_url_must_point_at_loopback() {
        for url in [
            "http://auth.mana.test/jwks.json",
            "http://10.0.0.7:3001/jwks",
            "http://localhost.evil.test/jwks",
            "http://127.0.0.1.nip.io/jwks",
            "http://127.0.0.1@auth.mana.test/jwks",
            "http://[::ffff:127.0.0.1]/jwks",
            "http://[2001:db8::1]/jwks",
        ] {
            let e = with(&[("MANA_AUTH_JWKS_URL", url), ISS, AUD]).unwrap_err();
            assert_eq!(e.var, "MANA_AUTH_JWKS_URL", "{url}: {e}");
            assert!(e.to_string().contains("https"), "{url}: {e}");
        }
        for url in [
            "https://auth.mana.test/jwks.json",
            "https://10.0.0.7/jwks",
            "http://127.0.0.1:3001/jwks",
            "http://127.8.9.10/jwks",
            "http://[::1]:3001/jwks",
            "http://localhost:3001/jwks",
            "http://LOCALHOST/jwks",
        ] {
            let http = with(&[("MANA_AUTH_JWKS_URL", url), ISS, AUD]).unwrap().http;
            assert_eq!(http.jwks_url.as_deref(), Some(url), "{url}");
        }
    }

    #[test]
    fn keys_serve_an_hour_past_the_last_fetch_by_default() {
        let http = with(&[]).unwrap().http;
        assert_eq!(http.jwks_max_stale, std::time::Duration::from_secs(3600));
        let var = "MANA_AUTH_JWKS_MAX_STALE_SECS";
        let set = with(&[(var, "60")]).unwrap().http;
        assert_eq!(set.jwks_max_stale.as_secs(), 60);
        for bad in ["0", "86401", "soon", "-5"] {
            assert_eq!(with(&[(var, bad)]).unwrap_err().var, var, "{bad}");
        }
    }
}
