//! JWT verification against mana-auth's JWKS for the audit API.
//!
//! Rules:
//! - Keys are cached by `kid`. A token naming an unknown `kid` re-fetches the
//!   set (mana-auth rotated its key), but such refreshes happen at most once
//!   per `refresh_min_interval`, so a stream of garbage kids costs mana-auth
//!   one request per interval (or per `max_stale`, when that is shorter).
//!   Keys older than `max_age` are re-fetched before use so a withdrawn key
//!   stops being accepted.
//! - While re-fetching fails, the keys in hand serve until `max_stale` after
//!   the last successful fetch; after that every token is answered 503
//!   (unverifiable, not invalid: the client's token may well be good) until
//!   a fetch succeeds again.
//! - A key decides its algorithm, never the token: RSA keys verify RS256,
//!   RS384, RS512 (or only the `alg` the JWK names), Ed25519 keys EdDSA,
//!   P-256/P-384 keys ES256/ES384. Symmetric (`oct`) keys and encryption keys
//!   are ignored, so a public key can't be replayed as an HMAC secret.
//! - `exp` and `sub` are required, `exp`/`nbf` checked with 30 s leeway,
//!   `iss`/`aud` checked when configured (an `aud` is then required; the
//!   configuration requires both unless `MANA_AUTH_ALLOW_ANY_AUDIENCE`).
//! - A token without a `kid` is refused: mana-auth always sets one.
//! - The set is fetched from the configured URL only: a redirect is not
//!   followed (it could lead to plain http), so the fetch fails.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use anyhow::Context;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::JwksSettings;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;
/// A JWKS larger than this is not a JWKS.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    /// 401: the token is malformed, expired, badly signed, of an unknown key...
    #[error("invalid token: {0}")]
    Invalid(String),
    /// 503: the keys could not be fetched.
    #[error("JWKS unavailable: {0:#}")]
    Unavailable(anyhow::Error),
}

/// One verification key and the algorithms it may verify.
struct VerifyKey {
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, Arc<VerifyKey>>,
    /// When the set was last fetched successfully.
    fetched_at: Option<Instant>,
    /// When a fetch was last attempted (cleared after the first successful
    /// load); the refresh rate limit counts from here.
    last_attempt: Option<Instant>,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// Verifies bearer tokens; shared by every connection.
pub(crate) struct JwksVerifier {
    settings: JwksSettings,
    client: reqwest::Client,
    cache: RwLock<Cache>,
    /// Serialises fetches so concurrent requests with a new kid fetch once.
    fetch_lock: tokio::sync::Mutex<()>,
}

impl JwksVerifier {
    pub(crate) fn new(settings: JwksSettings) -> anyhow::Result<JwksVerifier> {
        let client = reqwest::Client::builder()
            .timeout(settings.fetch_timeout)
            // The configuration vetted the URL (https, or http to loopback);
            // a redirect could lead anywhere, plain http included.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the JWKS HTTP client")?;
        Ok(JwksVerifier {
            settings,
            client,
            cache: RwLock::new(Cache::default()),
            fetch_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The verified token's user id (`sub`, non-empty).
    pub(crate) async fn verify(&self, token: &str) -> Result<String, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("malformed: {e}")))?;
        let kid = header
            .kid
            .filter(|k| !k.is_empty())
            .ok_or_else(|| TokenError::Invalid("no kid".into()))?;
        let key = self.key(&kid).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &self.validation(&key))
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        if data.claims.sub.trim().is_empty() {
            return Err(TokenError::Invalid("empty sub".into()));
        }
        Ok(data.claims.sub)
    }

    fn validation(&self, key: &VerifyKey) -> Validation {
        let mut v = Validation::new(key.algorithms[0]);
        v.algorithms = key.algorithms.clone();
        v.leeway = LEEWAY_SECONDS;
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.settings.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.settings.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            // Without a configured audience, a token's `aud` is not ours to judge.
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        v
    }

    /// The key for `kid`, fetching the set when it is unknown or older than
    /// `max_age` and the rate limit allows.
    async fn key(&self, kid: &str) -> Result<Arc<VerifyKey>, TokenError> {
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let _fetching = self.fetch_lock.lock().await;
        // Another request may have fetched while we waited.
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        self.refresh().await?;
        self.usable_key(kid)
    }

    /// Fetches the set if the rate limit allows. Fails only while no set was
    /// ever loaded; a failed refresh keeps the set in hand (see
    /// [`JwksVerifier::usable_key`] for how long it serves).
    async fn refresh(&self) -> Result<(), TokenError> {
        // A bound shorter than the rate limit would otherwise refuse tokens
        // while mana-auth answers, waiting for the next permitted fetch.
        let min_interval = self
            .settings
            .refresh_min_interval
            .min(self.settings.max_stale);
        let (loaded, may_fetch) = {
            let cache = self.cache.read().expect("JWKS cache lock");
            let may_fetch = cache
                .last_attempt
                .is_none_or(|t| t.elapsed() >= min_interval);
            (cache.fetched_at.is_some(), may_fetch)
        };
        if !may_fetch {
            return match loaded {
                true => Ok(()),
                false => Err(TokenError::Unavailable(anyhow::anyhow!(
                    "the last JWKS fetch failed; retrying later"
                ))),
            };
        }
        self.cache.write().expect("JWKS cache lock").last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "JWKS fetched");
                let mut cache = self.cache.write().expect("JWKS cache lock");
                cache.keys = keys;
                cache.fetched_at = Some(Instant::now());
                if !loaded {
                    // The first load doesn't count against the refresh
                    // budget, so a key rotated right after start-up is
                    // picked up at once.
                    cache.last_attempt = None;
                }
                Ok(())
            }
            Err(e) if loaded => {
                tracing::warn!(error = format!("{e:#}"), "JWKS refresh failed");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), "JWKS fetch failed");
                Err(TokenError::Unavailable(e))
            }
        }
    }

    /// `kid` from the set in hand, while that set is younger than
    /// `max_stale`; older (refreshes keep failing), every token is refused
    /// as unverifiable rather than checked against keys mana-auth may have
    /// withdrawn meanwhile.
    fn usable_key(&self, kid: &str) -> Result<Arc<VerifyKey>, TokenError> {
        let cache = self.cache.read().expect("JWKS cache lock");
        let age = cache.fetched_at.map(|t| t.elapsed());
        if age.is_none_or(|age| age >= self.settings.max_stale) {
            return Err(TokenError::Unavailable(anyhow::anyhow!(
                "the JWKS keys are older than {:?} and could not be refreshed",
                self.settings.max_stale
            )));
        }
        cache
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| TokenError::Invalid(format!("unknown kid {kid:?}")))
    }

    /// The cached key if the set is younger than `max_age` (and `max_stale`).
    fn cached(&self, kid: &str) -> Option<Arc<VerifyKey>> {
        let cache = self.cache.read().expect("JWKS cache lock");
        let max_age = self.settings.max_age.min(self.settings.max_stale);
        let fresh = cache.fetched_at.is_some_and(|t| t.elapsed() < max_age);
        fresh.then(|| cache.keys.get(kid).cloned()).flatten()
    }

    async fn fetch(&self) -> anyhow::Result<HashMap<String, Arc<VerifyKey>>> {
        let response = self
            .client
            .get(&self.settings.url)
            .send()
            .await
            .context("requesting the JWKS")?;
        anyhow::ensure!(
            !response.status().is_redirection(),
            "the JWKS URL answered {} (a redirect, not followed): \
             set MANA_AUTH_JWKS_URL to where the keys are",
            response.status()
        );
        let response = response.error_for_status().context("JWKS status")?;
        if response
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            anyhow::bail!("JWKS larger than {MAX_JWKS_BYTES} bytes");
        }
        let body = response.bytes().await.context("reading the JWKS")?;
        anyhow::ensure!(
            body.len() <= MAX_JWKS_BYTES,
            "JWKS larger than {MAX_JWKS_BYTES} bytes"
        );
        parse_jwks(&body)
    }
}

/// Every usable signing key of a JWKS document by kid; keys that don't parse,
/// have no kid or aren't signature keys are skipped (and logged) rather than
/// failing the whole set.
fn parse_jwks(body: &[u8]) -> anyhow::Result<HashMap<String, Arc<VerifyKey>>> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet = serde_json::from_slice(body).context("JWKS is not a JSON key set")?;
    let mut keys = HashMap::new();
    for value in raw.keys {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(e) => {
                tracing::warn!(error = %e, "JWKS key skipped: unparseable");
                continue;
            }
        };
        let Some(kid) = jwk.common.key_id.clone().filter(|k| !k.is_empty()) else {
            tracing::warn!("JWKS key skipped: no kid");
            continue;
        };
        match verify_key(&jwk) {
            Some(key) => {
                keys.insert(kid, Arc::new(key));
            }
            None => tracing::warn!(kid, "JWKS key skipped: not a supported signature key"),
        }
    }
    Ok(keys)
}

fn verify_key(jwk: &Jwk) -> Option<VerifyKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[Algorithm::RS256, Algorithm::RS384, Algorithm::RS512],
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            &[Algorithm::ES256]
        }
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
            &[Algorithm::ES384]
        }
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        // The JWK pins one algorithm: accept only that, and only if the key
        // family can do it (RSA keys may also name a PS* algorithm).
        Some(named) => {
            let alg = Algorithm::from_str(&named.to_string()).ok()?;
            let rsa_pss = matches!(alg, Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512)
                && matches!(jwk.algorithm, AlgorithmParameters::RSA(_));
            (family.contains(&alg) || rsa_pss).then(|| vec![alg])?
        }
        None => family.to_vec(),
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey { key, algorithms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_symmetric_encryption_and_kidless_keys() {
        let set = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "weird", "kid": "w"},
        ]});
        let keys = parse_jwks(set.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ed"]);
        assert_eq!(keys["ed"].algorithms, vec![Algorithm::EdDSA]);
    }

    #[test]
    fn a_named_alg_outside_the_key_family_drops_the_key() {
        let set = serde_json::json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "HS256",
             "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        ]});
        assert!(parse_jwks(set.to_string().as_bytes()).unwrap().is_empty());
    }
}
