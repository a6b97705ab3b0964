//! Where the audit API's keys come from: keys from a JWKS that stopped
//! answering are honoured for a bounded time after the last successful fetch
//! (`MANA_AUTH_JWKS_MAX_STALE_SECS`), then tokens are refused with 503
//! instead of being verified with stale keys; and the keys come from the
//! configured URL itself, never from where it redirects.

use super::credentials::from_env;
use super::*;

const ISS: &str = "https://auth.mana.test";

fn audit_token(sub: &str) -> String {
    let claims = json!({
        "sub": sub,
        "exp": get_current_timestamp() + 600,
        "iss": ISS,
        "aud": "mana-ai",
    });
    token(&ed_key(), Algorithm::EdDSA, "ed-1", claims)
}

#[tokio::test]
async fn past_the_configured_bound_a_down_jwks_refuses_valid_tokens() {
    let jwks = jwks_server().await;
    let app = spawn(from_env(&[
        ("MANA_AUTH_JWKS_URL", &jwks.url),
        ("MANA_AUTH_ISSUER", ISS),
        ("MANA_AUTH_AUDIENCE", "mana-ai"),
        ("MANA_AUTH_JWKS_MAX_STALE_SECS", "1"),
    ]))
    .await;
    let valid = audit_token("u");
    assert_eq!(app.audit("", Some(&valid)).await.status, 200);
    // While mana-auth answers, the keys are re-fetched in time, again and
    // again (the refresh rate limit never outlasts the bound).
    for round in 1..=2 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let r = app.audit("", Some(&valid)).await;
        assert_eq!(r.status, 200, "round {round}: {}", r.json);
    }
    assert_eq!(fetches(&jwks), 3);
    jwks.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = app.audit("", Some(&valid)).await;
    assert_eq!(
        (r.status, r.json),
        (503, json!({ "error": "token verification unavailable" })),
        "a token verified with keys past the bound"
    );
    assert_eq!(fetches(&jwks), 4, "the refresh was tried");
    let calls = app.fake.calls().len();
    assert_eq!(calls, 3, "the refused request reached no backend");
}

#[tokio::test]
async fn within_the_bound_stale_keys_serve_and_a_recovered_jwks_serves_again() {
    let jwks = jwks_server().await;
    let jwks_settings = JwksSettings {
        // Re-fetched before every use after 100 ms, as often as asked.
        max_age: Duration::from_millis(100),
        refresh_min_interval: Duration::ZERO,
        max_stale: Duration::from_secs(2),
        ..JwksSettings::new(jwks.url.clone())
    };
    let app = spawn(settings(KEY, Some(jwks_settings))).await;
    let valid = token(&ed_key(), Algorithm::EdDSA, "ed-1", claims("u"));
    assert_eq!(app.audit("", Some(&valid)).await.status, 200);
    jwks.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = app.audit("", Some(&valid)).await;
    assert_eq!(
        r.status, 200,
        "a failed refresh within the bound keeps the keys"
    );
    assert_eq!(fetches(&jwks), 2);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = app.audit("", Some(&valid)).await;
    assert_eq!(r.status, 503, "past the bound: {}", r.json);
    jwks.down.store(false, Ordering::SeqCst);
    assert_eq!(
        app.audit("", Some(&valid)).await.status,
        200,
        "mana-auth is back"
    );
    assert_eq!(app.fake.calls().len(), 3);
}

#[tokio::test]
async fn a_jwks_url_that_redirects_is_not_followed() {
    let jwks = jwks_server().await;
    let target = jwks.url.clone();
    let redirecting = testkit::TestServer::start(move |_| {
        let reply = testkit::FakeReply::raw(302, "").header("location", &target);
        reply.into_response()
    })
    .await
    .unwrap();
    let app = spawn(settings(KEY, Some(JwksSettings::new(redirecting.url())))).await;
    let valid = token(&ed_key(), Algorithm::EdDSA, "ed-1", claims("u"));
    let r = app.audit("", Some(&valid)).await;
    assert_eq!(r.status, 503, "{}", r.json);
    assert_eq!(redirecting.requests().len(), 1);
    assert_eq!(fetches(&jwks), 0, "the redirect was followed");
}
