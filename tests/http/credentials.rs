//! Credentials as the service configures them from its environment
//! (`Config` -> `HttpSettings::from_config`, as `serve` gets them), over
//! loopback: the internal routes' own key and the `/metrics` token.

use std::collections::HashMap;

use mana_ai::config::Config;

use super::*;

/// The HTTP settings the service builds from `pairs` (plus a database URL,
/// which is only parsed here).
pub(crate) fn from_env(pairs: &[(&str, &str)]) -> HttpSettings {
    let mut env: HashMap<&str, &str> = pairs.iter().copied().collect();
    env.insert("SYNC_DATABASE_URL", "postgres://svc@localhost/mana_sync");
    let config = Config::from_lookup(|k| env.get(k).map(|v| v.to_string())).expect("config");
    HttpSettings::from_config(&config)
}

const INTERNAL: [(&str, &str); 3] = [
    ("POST", "/internal/tick"),
    ("GET", "/internal/missions/u1"),
    ("GET", "/internal/dead-changes"),
];

/// The status of every internal route called with `key`.
async fn internal_statuses(app: &App, key: &str) -> Vec<u16> {
    let mut statuses = Vec::new();
    for (method, path) in INTERNAL {
        let r = app.call(method, path, &[("x-service-key", key)]).await;
        statuses.push(r.status);
    }
    statuses
}

#[tokio::test]
async fn with_an_internal_key_the_gateway_key_opens_no_internal_route() {
    let app = spawn(from_env(&[
        ("MANA_SERVICE_KEY", "key-the-llm-gateway-sees"),
        ("MANA_AI_INTERNAL_KEY", "operators-only-key"),
    ]))
    .await;
    let gateway = internal_statuses(&app, "key-the-llm-gateway-sees").await;
    assert_eq!(gateway, [401, 401, 401], "MANA_SERVICE_KEY on /internal/*");
    assert!(app.fake.calls().is_empty(), "{:?}", app.fake.calls());
    let operator = internal_statuses(&app, "operators-only-key").await;
    assert_eq!(
        operator,
        [200, 200, 200],
        "MANA_AI_INTERNAL_KEY on /internal/*"
    );
    assert_eq!(app.fake.calls().len(), 3);
}

#[tokio::test]
async fn without_an_internal_key_the_service_key_opens_internal_routes() {
    let app = spawn(from_env(&[("MANA_SERVICE_KEY", "shared-key")])).await;
    assert_eq!(internal_statuses(&app, "shared-key").await, [200, 200, 200]);
    assert_eq!(internal_statuses(&app, "other").await, [401, 401, 401]);
}
#[tokio::test]
async fn a_metrics_token_is_required_when_configured() {
    let app = spawn(from_env(&[("MANA_AI_METRICS_TOKEN", "scrape-token")])).await;
    for headers in [
        &[][..],
        &[("authorization", "Bearer wrong")],
        &[("authorization", "Bearer scrape-token-and-more")],
        &[("authorization", "Bearer scrape-toke")],
        &[("authorization", "Basic c2NyYXBlLXRva2Vu")],
        &[("x-service-key", "scrape-token")],
    ] {
        let r = app.call("GET", "/metrics", headers).await;
        assert_eq!(
            (r.status, r.ct.as_str()),
            (401, "application/json"),
            "{headers:?}"
        );
        assert_eq!(r.headers["www-authenticate"], "Bearer", "{headers:?}");
        assert!(!r.text.contains("mana_ai_"), "{headers:?}: {}", r.text);
    }
    let bearer = [("authorization", "Bearer scrape-token")];
    let r = app.call("GET", "/metrics", &bearer).await;
    assert_eq!(
        (r.status, r.ct.as_str()),
        (200, "text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(
        r.text.contains("# TYPE mana_ai_ticks_total counter"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn without_a_metrics_token_metrics_stay_open() {
    let app = spawn(from_env(&[])).await;
    let r = app.call("GET", "/metrics", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("# TYPE mana_ai_ticks_total counter"));
}
