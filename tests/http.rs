//! The HTTP surface over real TCP: the server on a port-0 listener with a
//! fake backend that records what reached it, and a local JWKS endpoint
//! serving the public halves of the test-only keys in tests/fixtures/jwt/.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, get_current_timestamp, Algorithm, EncodingKey, Header};
use mana_ai::audit::AuditEntry;
use mana_ai::config::Secret;
use mana_ai::http::{serve, Backend, Health, HttpSettings, JwksSettings, Role, TickError};
use mana_ai::metrics::Metrics;
use mana_ai::run::TickStats;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[path = "http/credentials.rs"]
mod credentials;
#[path = "http/jwks_fetch.rs"]
mod jwks_fetch;

const KEY: &str = "test-service-key";

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Tick,
    Missions(String),
    DeadChanges(Option<String>, i64),
    Audit(String, Option<String>, i64),
}

#[derive(Default)]
struct Fake {
    unhealthy: AtomicBool,
    tick_fails: AtomicBool,
    /// 1: answer as a standby, 2: as an instance with TICK_ENABLED=false.
    tick_refusal: AtomicU8,
    /// When set, `tick` announces itself on `tick_started` and waits for
    /// the gate: a request held in flight.
    tick_gate: Option<Arc<Notify>>,
    tick_started: Notify,
    calls: Mutex<Vec<Call>>,
    metrics: Option<Arc<Metrics>>,
}

impl Fake {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }
}

impl Backend for Fake {
    async fn health(&self) -> Health {
        let mut h = Health::new(Role::Leader);
        h.ok = !self.unhealthy.load(Ordering::SeqCst);
        h.queue_depth = Some(3);
        h
    }
    async fn metrics_text(&self) -> String {
        self.metrics
            .as_ref()
            .map(|m| m.render())
            .unwrap_or_default()
    }
    async fn tick(&self) -> Result<TickStats, TickError> {
        self.record(Call::Tick);
        if let Some(gate) = &self.tick_gate {
            self.tick_started.notify_one();
            gate.notified().await;
        }
        match self.tick_refusal.load(Ordering::SeqCst) {
            1 => return Err(TickError::Standby),
            2 => return Err(TickError::Disabled),
            _ => {}
        }
        if self.tick_fails.load(Ordering::SeqCst) {
            return Err(anyhow::anyhow!("db password=hunter2 rejected").into());
        }
        Ok(TickStats {
            due_mission_count: 2,
            plans_produced: 1,
            ..TickStats::default()
        })
    }
    async fn user_missions(&self, user_id: &str) -> anyhow::Result<Value> {
        self.record(Call::Missions(user_id.into()));
        Ok(json!({ "userId": user_id, "missions": [] }))
    }
    async fn dead_changes(&self, user_id: Option<&str>, limit: i64) -> anyhow::Result<Value> {
        self.record(Call::DeadChanges(user_id.map(String::from), limit));
        Ok(json!({ "total": 0, "deadChanges": [] }))
    }
    async fn audit(
        &self,
        user_id: &str,
        mission_id: Option<&str>,
        limit: i64,
    ) -> anyhow::Result<Vec<AuditEntry>> {
        self.record(Call::Audit(
            user_id.into(),
            mission_id.map(Into::into),
            limit,
        ));
        Ok(vec![AuditEntry {
            id: 1,
            mission_id: mission_id.unwrap_or("m1").into(),
            iteration_id: None,
            table_name: "notes".into(),
            record_id: "r1".into(),
            status: "ok".into(),
            reason: None,
            ts: chrono::Utc::now(),
        }])
    }
}

struct App {
    base: String,
    addr: SocketAddr,
    fake: Arc<Fake>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

fn settings(key: &str, jwks: Option<JwksSettings>) -> HttpSettings {
    HttpSettings {
        internal_key: Secret::new(key),
        metrics_token: None,
        jwks,
        max_body_bytes: 1024,
        header_read_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_secs(10),
        max_connections: 64,
        shutdown_grace: Duration::from_secs(10),
    }
}

async fn spawn_with(settings: HttpSettings, mut fake: Fake) -> App {
    let metrics = Metrics::new();
    fake.metrics = Some(metrics.clone());
    let fake = Arc::new(fake);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        fake.clone(),
        settings,
        metrics.clone(),
        shutdown.clone(),
    ));
    App {
        base: format!("http://{addr}"),
        addr,
        fake,
        metrics,
        shutdown,
        server,
    }
}

async fn spawn(settings: HttpSettings) -> App {
    spawn_with(settings, Fake::default()).await
}

/// What came back: status, content type, the body as JSON (Null if it
/// isn't) and the headers.
struct Reply {
    status: u16,
    ct: String,
    json: Value,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl App {
    /// `method path` with `headers`, over a fresh client (no shared pool).
    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = client.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let r = req.send().await.unwrap();
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        let ct = headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = r.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            ct: ct.unwrap_or_default(),
            json,
            headers,
            text,
        }
    }

    async fn keyed(&self, method: &str, path: &str) -> Reply {
        self.call(method, path, &[("x-service-key", KEY)]).await
    }

    async fn audit(&self, query: &str, token: Option<&str>) -> Reply {
        let path = format!("/api/v1/me/ai-audit{query}");
        match token {
            Some(t) => {
                self.call("GET", &path, &[("authorization", &format!("Bearer {t}"))])
                    .await
            }
            None => self.call("GET", &path, &[]).await,
        }
    }
}

// ---- JWKS: test-only keys and a local endpoint serving their public halves ----

fn ed_key() -> EncodingKey {
    EncodingKey::from_ed_pem(include_bytes!("fixtures/jwt/test-only-ed25519.pem")).unwrap()
}
fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(include_bytes!("fixtures/jwt/test-only-rsa2048.pem")).unwrap()
}
fn stranger_key() -> EncodingKey {
    EncodingKey::from_ed_pem(include_bytes!(
        "fixtures/jwt/test-only-ed25519-not-in-jwks.pem"
    ))
    .unwrap()
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).unwrap()
}

fn token(key: &EncodingKey, alg: Algorithm, kid: &str, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    encode(&header, &claims, key).unwrap()
}

fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "exp": get_current_timestamp() + 600 })
}

struct JwksServer {
    url: String,
    fetches: Arc<AtomicUsize>,
    keys: Arc<Mutex<Vec<Value>>>,
    /// While set, every request is answered 503 (mana-auth is down).
    down: Arc<AtomicBool>,
}

/// A one-route HTTP server answering every request with the current key set
/// (or 503 while `down`).
async fn jwks_server() -> JwksServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    let fetches = Arc::new(AtomicUsize::new(0));
    let keys = Arc::new(Mutex::new(vec![
        jwk(&ed_key(), Algorithm::EdDSA, "ed-1"),
        jwk(&rsa_key(), Algorithm::RS256, "rsa-1"),
    ]));
    let down = Arc::new(AtomicBool::new(false));
    let (f, k, d) = (fetches.clone(), keys.clone(), down.clone());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            f.fetch_add(1, Ordering::SeqCst);
            let (status, body) = match d.load(Ordering::SeqCst) {
                true => ("503 Service Unavailable", "{}".to_owned()),
                false => ("200 OK", json!({ "keys": *k.lock().unwrap() }).to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }
    });
    JwksServer {
        url,
        fetches,
        keys,
        down,
    }
}

// ---- health, metrics, internal routes ----

#[tokio::test]
async fn health_answers_200_then_503_with_the_same_document() {
    let app = spawn(settings(KEY, None)).await;
    let r = app.call("GET", "/health", &[]).await;
    assert_eq!((r.status, r.ct.as_str()), (200, "application/json"));
    let doc = r.json;
    assert_eq!(
        (doc["ok"].clone(), doc["service"].clone()),
        (json!(true), json!("mana-ai"))
    );
    assert_eq!(
        (doc["role"].clone(), doc["queueDepth"].clone()),
        (json!("leader"), json!(3))
    );
    assert_eq!(doc["listener"]["secondsSinceNotification"], Value::Null);
    assert_eq!(doc["tick"], json!({ "enabled": false, "running": false }));
    app.fake.unhealthy.store(true, Ordering::SeqCst);
    let r = app.call("GET", "/health", &[]).await;
    assert_eq!((r.status, r.json["ok"].clone()), (503, json!(false)));
    assert_eq!(r.json["service"], "mana-ai", "the same document");
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let app = spawn(settings(KEY, None)).await;
    let r = app.call("GET", "/metrics", &[]).await;
    assert_eq!(
        (r.status, r.ct.as_str()),
        (200, "text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(r.text.contains("# TYPE mana_ai_ticks_total counter"));
}

#[tokio::test]
async fn tick_needs_the_service_key() {
    let app = spawn(settings(KEY, None)).await;
    for key in ["wrong", "", "test-service-ke", "TEST-SERVICE-KEY"] {
        let r = app
            .call("POST", "/internal/tick", &[("x-service-key", key)])
            .await;
        assert_eq!(
            (r.status, r.ct.as_str()),
            (401, "application/json"),
            "key {key:?}"
        );
        assert!(r.json["error"].is_string());
    }
    assert_eq!(app.call("POST", "/internal/tick", &[]).await.status, 401);
    assert!(app.fake.calls().is_empty(), "no tick without the key");
    let r = app.keyed("POST", "/internal/tick").await;
    let stats = json!({ "dueMissionCount": 2, "plansProduced": 1, "plansWrittenBack": 0, "parseFailures": 0, "errors": 0 });
    assert_eq!((r.status, r.json), (200, stats));
    assert_eq!(app.fake.calls(), vec![Call::Tick]);

    app.fake.tick_fails.store(true, Ordering::SeqCst);
    let r = app.keyed("POST", "/internal/tick").await;
    assert_eq!(
        (r.status, r.json),
        (500, json!({ "error": "tick failed" })),
        "no internals"
    );

    app.fake.tick_refusal.store(1, Ordering::SeqCst);
    let r = app.keyed("POST", "/internal/tick").await;
    assert_eq!(r.status, 503, "a standby: try the leader");
    assert!(
        r.json["error"].as_str().unwrap().contains("standby"),
        "{}",
        r.json
    );
    app.fake.tick_refusal.store(2, Ordering::SeqCst);
    let r = app.keyed("POST", "/internal/tick").await;
    assert_eq!(r.status, 409, "ticks are off here");
    assert!(
        r.json["error"]
            .as_str()
            .unwrap()
            .contains("TICK_ENABLED=false"),
        "{}",
        r.json
    );
}

#[tokio::test]
async fn an_empty_configured_key_refuses_every_request() {
    let app = spawn(settings("", None)).await;
    for headers in [
        &[][..],
        &[("x-service-key", "")],
        &[("x-service-key", "anything")],
    ] {
        assert_eq!(
            app.call("POST", "/internal/tick", headers).await.status,
            401
        );
        assert_eq!(
            app.call("GET", "/internal/missions/u1", headers)
                .await
                .status,
            401
        );
    }
    assert!(app.fake.calls().is_empty());
}

#[tokio::test]
async fn user_missions_are_gated_and_get_the_decoded_id() {
    let app = spawn(settings(KEY, None)).await;
    let path = "/internal/missions/user%20a%2Fb%C3%A4";
    assert_eq!(app.call("GET", path, &[]).await.status, 401);
    assert_eq!(
        app.call("GET", path, &[("x-service-key", "nope")])
            .await
            .status,
        401
    );
    let r = app.keyed("GET", path).await;
    assert_eq!(
        (r.status, r.json["userId"].clone()),
        (200, json!("user a/bä"))
    );
    assert_eq!(app.fake.calls(), vec![Call::Missions("user a/bä".into())]);
    assert_eq!(
        app.keyed("GET", "/internal/missions/").await.status,
        400,
        "empty id"
    );
    assert_eq!(
        app.keyed("GET", "/internal/missions/%zz").await.status,
        400,
        "bad escape"
    );
    assert_eq!(app.fake.calls().len(), 1);
}

#[tokio::test]
async fn dead_changes_are_gated_filtered_and_clamped() {
    let app = spawn(settings(KEY, None)).await;
    assert_eq!(
        app.call("GET", "/internal/dead-changes", &[]).await.status,
        401
    );
    let r = app.keyed("GET", "/internal/dead-changes").await;
    assert_eq!(
        (r.status, r.json),
        (200, json!({ "total": 0, "deadChanges": [] }))
    );
    let r = app
        .keyed("GET", "/internal/dead-changes?userId=u%201&limit=5000")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        app.keyed("GET", "/internal/dead-changes?limit=many")
            .await
            .status,
        400
    );
    assert_eq!(
        app.keyed("POST", "/internal/dead-changes").await.status,
        405
    );
    assert_eq!(
        app.fake.calls(),
        vec![
            Call::DeadChanges(None, 200),
            Call::DeadChanges(Some("u 1".into()), 1000)
        ]
    );
}

// ---- the audit API ----

fn jwks_for(server: &JwksServer) -> Option<JwksSettings> {
    Some(JwksSettings::new(server.url.clone()))
}

fn fetches(server: &JwksServer) -> usize {
    server.fetches.load(Ordering::SeqCst)
}

#[tokio::test]
async fn audit_accepts_eddsa_and_rs256_tokens_and_clamps_the_limit() {
    let jwks = jwks_server().await;
    let app = spawn(settings(KEY, jwks_for(&jwks))).await;
    let ed = token(&ed_key(), Algorithm::EdDSA, "ed-1", claims("user-ed"));
    let r = app.audit("?missionId=m%201&limit=5", Some(&ed)).await;
    assert_eq!((r.status, r.ct.as_str()), (200, "application/json"));
    assert_eq!(r.json["entries"][0]["missionId"], "m 1");
    assert_eq!(r.headers["cache-control"], "no-store");
    let rs = token(&rsa_key(), Algorithm::RS256, "rsa-1", claims("user-rsa"));
    for query in ["", "?limit=0", "?limit=5000", "?limit=-3&missionId="] {
        assert_eq!(app.audit(query, Some(&rs)).await.status, 200, "{query}");
    }
    let r = app.audit("?limit=ten", Some(&rs)).await;
    assert_eq!((r.status, r.json["error"].is_string()), (400, true));
    let rsa = |limit| Call::Audit("user-rsa".into(), None, limit);
    let expected = vec![
        Call::Audit("user-ed".into(), Some("m 1".into()), 5),
        rsa(200),
        rsa(1),
        rsa(1000),
        rsa(1),
    ];
    assert_eq!(app.fake.calls(), expected);
    assert_eq!(fetches(&jwks), 1, "keys are cached");
}

#[tokio::test]
async fn audit_refuses_bad_tokens_with_401() {
    let jwks = jwks_server().await;
    let app = spawn(settings(KEY, jwks_for(&jwks))).await;
    let now = get_current_timestamp();
    let ed = |claims: Value| token(&ed_key(), Algorithm::EdDSA, "ed-1", claims);
    let stranger = |kid| token(&stranger_key(), Algorithm::EdDSA, kid, claims("u"));
    let cases = [
        ("malformed", "not.a.jwt".to_owned()),
        ("expired", ed(json!({ "sub": "u", "exp": now - 3600 }))),
        (
            "not yet valid",
            ed(json!({ "sub": "u", "exp": now + 7200, "nbf": now + 3600 })),
        ),
        ("no exp", ed(json!({ "sub": "u" }))),
        ("no sub", ed(json!({ "exp": now + 600 }))),
        ("empty sub", ed(json!({ "sub": "", "exp": now + 600 }))),
        (
            "no kid",
            encode(&Header::new(Algorithm::EdDSA), &claims("u"), &ed_key()).unwrap(),
        ),
        ("signed by a key not in the JWKS", stranger("ed-1")),
        (
            "EdDSA token naming the RSA key",
            token(&ed_key(), Algorithm::EdDSA, "rsa-1", claims("u")),
        ),
        ("unknown kid", stranger("ed-9")),
    ];
    for (case, token) in &cases {
        let r = app.audit("", Some(token)).await;
        assert_eq!(
            (r.status, r.ct.as_str()),
            (401, "application/json"),
            "{case}"
        );
        assert_eq!(r.json, json!({ "error": "invalid token" }), "{case}");
    }
    assert_eq!(app.audit("", None).await.status, 401, "missing token");
    let r = app
        .call(
            "GET",
            "/api/v1/me/ai-audit",
            &[("authorization", "Basic dTpw")],
        )
        .await;
    assert_eq!(
        (r.status, r.headers["www-authenticate"].to_str().unwrap()),
        (401, "Bearer")
    );
    assert!(
        app.fake.calls().is_empty(),
        "no bad token reached the backend"
    );
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_but_at_most_once_per_interval() {
    let jwks = jwks_server().await;
    let app = spawn(settings(KEY, jwks_for(&jwks))).await;
    let valid = token(&ed_key(), Algorithm::EdDSA, "ed-1", claims("u"));
    assert_eq!(app.audit("", Some(&valid)).await.status, 200);
    assert_eq!(fetches(&jwks), 1);
    for kid in ["garbage-1", "garbage-2", "garbage-3"] {
        let bogus = token(&stranger_key(), Algorithm::EdDSA, kid, claims("u"));
        assert_eq!(app.audit("", Some(&bogus)).await.status, 401, "{kid}");
        // The first unknown kid re-fetched; the rest fall in the 30 s window.
        assert_eq!(fetches(&jwks), 2, "after {kid}");
    }
    assert_eq!(app.audit("", Some(&valid)).await.status, 200);
    assert_eq!(fetches(&jwks), 2);
}

#[tokio::test]
async fn a_rotated_key_is_accepted_on_its_first_token() {
    let jwks = jwks_server().await;
    let app = spawn(settings(KEY, jwks_for(&jwks))).await;
    let old = token(&ed_key(), Algorithm::EdDSA, "ed-1", claims("u"));
    assert_eq!(app.audit("", Some(&old)).await.status, 200);
    let rotated = jwk(&stranger_key(), Algorithm::EdDSA, "ed-2");
    jwks.keys.lock().unwrap().push(rotated);
    let new = token(&stranger_key(), Algorithm::EdDSA, "ed-2", claims("u"));
    assert_eq!(app.audit("", Some(&new)).await.status, 200);
    assert_eq!(fetches(&jwks), 2);
}

#[tokio::test]
async fn the_user_id_comes_only_from_sub() {
    let jwks = jwks_server().await;
    let app = spawn(settings(KEY, jwks_for(&jwks))).await;
    let alice = token(&ed_key(), Algorithm::EdDSA, "ed-1", claims("alice"));
    let path = "/api/v1/me/ai-audit?userId=bob&user_id=bob&sub=bob&missionId=m";
    let bearer = format!("Bearer {alice}");
    let headers = [("authorization", bearer.as_str()), ("x-user-id", "bob")];
    assert_eq!(app.call("GET", path, &headers).await.status, 200);
    let bob = token(&rsa_key(), Algorithm::RS256, "rsa-1", claims("bob"));
    assert_eq!(app.audit("?missionId=m", Some(&bob)).await.status, 200);
    let call = |user: &str| Call::Audit(user.into(), Some("m".into()), 200);
    assert_eq!(app.fake.calls(), vec![call("alice"), call("bob")]);
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let jwks = jwks_server().await;
    let configured = JwksSettings {
        issuer: Some("https://auth.mana.test".into()),
        audience: Some("mana-ai".into()),
        ..JwksSettings::new(jwks.url.clone())
    };
    let app = spawn(settings(KEY, Some(configured))).await;
    let (exp, iss) = (get_current_timestamp() + 600, "https://auth.mana.test");
    for (case, claims, expected) in [
        (
            "right",
            json!({ "sub": "u", "exp": exp, "iss": iss, "aud": "mana-ai" }),
            200,
        ),
        (
            "aud list",
            json!({ "sub": "u", "exp": exp, "iss": iss, "aud": ["x", "mana-ai"] }),
            200,
        ),
        (
            "wrong iss",
            json!({ "sub": "u", "exp": exp, "iss": "https://evil", "aud": "mana-ai" }),
            401,
        ),
        (
            "wrong aud",
            json!({ "sub": "u", "exp": exp, "iss": iss, "aud": "mana-web" }),
            401,
        ),
        (
            "no iss",
            json!({ "sub": "u", "exp": exp, "aud": "mana-ai" }),
            401,
        ),
        ("no aud", json!({ "sub": "u", "exp": exp, "iss": iss }), 401),
    ] {
        let t = token(&ed_key(), Algorithm::EdDSA, "ed-1", claims);
        assert_eq!(app.audit("", Some(&t)).await.status, expected, "{case}");
    }
}

#[tokio::test]
async fn audit_is_503_without_a_usable_jwks() {
    let app = spawn(settings(KEY, None)).await;
    let t = token(&ed_key(), Algorithm::EdDSA, "ed-1", claims("u"));
    let r = app.audit("", Some(&t)).await;
    assert_eq!((r.status, r.ct.as_str()), (503, "application/json"));
    assert!(r.json["error"].is_string());

    // A port nothing listens on: the keys can't be fetched.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let unreachable = JwksSettings::new(format!("http://{closed}/jwks"));
    let app = spawn(settings(KEY, Some(unreachable))).await;
    assert_eq!(app.audit("", Some(&t)).await.status, 503);
    assert!(app.fake.calls().is_empty());
}

// ---- protocol edges ----

/// Sends raw bytes and reads until the server closes (or 10 s, so a broken
/// server fails the test instead of hanging it).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn unknown_paths_404_and_wrong_methods_405_with_allow() {
    let app = spawn(settings(KEY, None)).await;
    let r = app.call("GET", "/nope", &[]).await;
    assert_eq!((r.status, r.ct.as_str()), (404, "application/json"));
    assert_eq!(r.json, json!({ "error": "not found" }));
    for (method, path, allow) in [
        ("POST", "/health", "GET"),
        ("DELETE", "/metrics", "GET"),
        ("GET", "/internal/tick", "POST"),
        ("PUT", "/internal/missions/u1", "GET"),
        ("POST", "/api/v1/me/ai-audit", "GET"),
    ] {
        let r = app.keyed(method, path).await;
        assert_eq!(
            (r.status, r.ct.as_str()),
            (405, "application/json"),
            "{method} {path}"
        );
        assert_eq!(r.headers["allow"], allow, "{method} {path}");
    }
    assert!(app.fake.calls().is_empty());
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let app = spawn(settings(KEY, None)).await;
    let head = "POST /internal/tick HTTP/1.1\r\nhost: x\r\nx-service-key: test-service-key\r\n";
    // Declared too large: refused before a byte of it is read.
    let declared = raw(
        app.addr,
        format!("{head}content-length: 5000\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(declared.starts_with("HTTP/1.1 413"), "{declared}");
    assert!(declared.contains("application/json"), "{declared}");
    // Chunked declares nothing: cut off while streaming. The chunk is one
    // byte over the 1024-byte limit and the last thing sent.
    let mut chunked = format!("{head}transfer-encoding: chunked\r\n\r\n401\r\n").into_bytes();
    chunked.extend(vec![b'a'; 1025]);
    let streamed = raw(app.addr, &chunked).await;
    assert!(streamed.starts_with("HTTP/1.1 413"), "{streamed}");
    assert!(
        app.fake.calls().is_empty(),
        "an oversized request never ran a tick"
    );
    // At the limit is fine.
    let at_limit = format!(
        "{head}content-length: 1024\r\nconnection: close\r\n\r\n{}",
        "a".repeat(1024)
    );
    let ok = raw(app.addr, at_limit.as_bytes()).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[tokio::test]
async fn clients_that_never_finish_their_headers_are_disconnected() {
    let app = spawn(settings(KEY, None)).await;
    let mut half = TcpStream::connect(app.addr).await.unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    for (name, stream) in [("half a request", &mut half), ("nothing", &mut silent)] {
        let mut out = Vec::new();
        // The guard (below hyper's 30 s default) only keeps a broken server
        // from hanging the test; the assertion is that the server hung up.
        let read =
            tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out)).await;
        assert!(
            read.is_ok(),
            "the server kept a client that sent {name} connected"
        );
        assert!(!String::from_utf8_lossy(&out).contains("200 OK"), "{name}");
    }
}

#[tokio::test]
async fn http_metrics_are_labelled_by_route_template() {
    let app = spawn(settings(KEY, None)).await;
    assert_eq!(
        app.keyed("GET", "/internal/missions/secret-user-42")
            .await
            .status,
        200
    );
    assert_eq!(
        app.call("GET", "/internal/missions/secret-user-42", &[])
            .await
            .status,
        401
    );
    assert_eq!(
        app.call("GET", "/users/secret-user-42", &[]).await.status,
        404
    );
    assert_eq!(app.call("BREW", "/health", &[]).await.status, 405);
    let text = app.call("GET", "/metrics", &[]).await.text;
    let missions = r#"method="GET",path="/internal/missions/{userId}""#;
    for line in [
        format!(r#"mana_ai_http_requests_total{{{missions},status="200"}} 1"#),
        format!(r#"mana_ai_http_requests_total{{{missions},status="401"}} 1"#),
        r#"mana_ai_http_requests_total{method="GET",path="other",status="404"} 1"#.to_owned(),
        r#"mana_ai_http_requests_total{method="other",path="/health",status="405"} 1"#.to_owned(),
        format!(r#"mana_ai_http_request_duration_seconds_count{{{missions},status="200"}} 1"#),
    ] {
        assert!(text.contains(&line), "missing {line}");
    }
    assert!(
        !text.contains("secret-user-42"),
        "a raw path leaked into a label"
    );
    assert!(!text.contains("BREW"), "a raw method leaked into a label");
    // The scrape itself is counted once its response is built.
    let scrape = r#"mana_ai_http_requests_total{method="GET",path="/metrics",status="200"} 1"#;
    assert!(app.metrics.render().contains(scrape));
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish() {
    let gate = Arc::new(Notify::new());
    let fake = Fake {
        tick_gate: Some(gate.clone()),
        ..Fake::default()
    };
    let app = Arc::new(spawn_with(settings(KEY, None), fake).await);
    let in_flight = tokio::spawn({
        let app = app.clone();
        async move { app.keyed("POST", "/internal/tick").await }
    });
    app.fake.tick_started.notified().await;
    app.shutdown.cancel();
    gate.notify_one();
    let r = in_flight.await.unwrap();
    assert_eq!(
        (r.status, r.json["dueMissionCount"].clone()),
        (200, json!(2))
    );
    let app = Arc::into_inner(app).unwrap();
    app.server.await.unwrap().unwrap();
    assert!(
        TcpStream::connect(app.addr).await.is_err(),
        "the listener is closed after shutdown"
    );
}

// ---- hardening: request deadline, credentials before the body, connection cap ----

/// Reads what the server sends until it closes, resets or `wait` passes;
/// whatever arrived before an error counts.
async fn read_answer(stream: &mut tokio::net::tcp::OwnedReadHalf, wait: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `head` and then one body byte every 200 ms (until the server stops
/// taking them); the read half stays with the caller.
async fn trickle(addr: SocketAddr, head: String) -> tokio::net::tcp::OwnedReadHalf {
    let (read, mut write) = TcpStream::connect(addr).await.unwrap().into_split();
    write.write_all(head.as_bytes()).await.unwrap();
    tokio::spawn(async move {
        for _ in 0..200 {
            if write.write_all(b"a").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    read
}

#[tokio::test]
async fn a_trickled_body_is_cut_off_at_the_deadline_while_health_stays_fast() {
    let deadline = Duration::from_secs(2);
    let app = spawn(HttpSettings {
        request_timeout: deadline,
        ..settings(KEY, None)
    })
    .await;
    let started = std::time::Instant::now();
    let head = format!(
        "POST /internal/tick HTTP/1.1\r\nhost: x\r\nx-service-key: {KEY}\r\ncontent-length: 1000\r\n\r\n"
    );
    let mut slow = trickle(app.addr, head).await;
    let answer = tokio::spawn(async move { read_answer(&mut slow, Duration::from_secs(8)).await });
    // While the body trickles in, /health answers at once, again and again.
    let mut probes = 0;
    while started.elapsed() < deadline - Duration::from_millis(500) {
        let probe = std::time::Instant::now();
        assert_eq!(app.call("GET", "/health", &[]).await.status, 200);
        assert!(
            probe.elapsed() < Duration::from_secs(1),
            "{:?}",
            probe.elapsed()
        );
        probes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(probes >= 3, "{probes} probes");
    let answer = answer.await.unwrap();
    let cut_after = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(
        cut_after >= deadline - Duration::from_millis(300) && cut_after < deadline * 3,
        "cut off after {cut_after:?}"
    );
    assert!(
        app.fake.calls().is_empty(),
        "no tick from a request never read whole"
    );
}

#[tokio::test]
async fn a_refused_request_is_answered_before_its_body_is_read() {
    let jwks = JwksSettings::new("http://127.0.0.1:9/jwks.json");
    let app = spawn(settings(KEY, Some(jwks))).await;
    for (head, status) in [
        (
            "POST /internal/tick HTTP/1.1\r\nhost: x\r\nx-service-key: wrong\r\ncontent-length: 1000\r\n\r\n",
            "401",
        ),
        (
            "GET /internal/dead-changes HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3e8\r\n",
            "401",
        ),
        (
            "GET /api/v1/me/ai-audit HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n",
            "401",
        ),
        // Far over the size cap, but the key is checked first.
        (
            "POST /internal/tick HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n",
            "401",
        ),
    ] {
        let started = std::time::Instant::now();
        let mut slow = trickle(app.addr, head.to_owned()).await;
        let answer = read_answer(&mut slow, Duration::from_secs(5)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{head:?}: {answer:?}"
        );
        assert!(answer.contains("connection: close"), "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{head:?} answered after {:?}",
            started.elapsed()
        );
    }
    assert!(app.fake.calls().is_empty());
}

/// Polls `check` every 20 ms for up to 5 s.
async fn soon(what: &str, check: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !check() {
        assert!(started.elapsed() < Duration::from_secs(5), "not {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn connections_over_the_cap_are_answered_503_and_closed() {
    let app = spawn(HttpSettings {
        max_connections: 2,
        ..settings(KEY, None)
    })
    .await;
    // Two connections held open by requests whose bodies never come.
    let head = format!(
        "POST /internal/tick HTTP/1.1\r\nhost: x\r\nx-service-key: {KEY}\r\ncontent-length: 10\r\n\r\n"
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        held.push(stream);
    }
    soon("two connections open", || {
        app.metrics.http_connections_open.get() == 2
    })
    .await;
    let refused = raw(app.addr, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused:?}");
    assert!(
        refused.contains(r#"{"error":"too many connections"}"#),
        "{refused}"
    );
    assert_eq!(app.metrics.http_connections_refused.get(), 1);
    let text = app.call("GET", "/metrics", &[]).await;
    assert_eq!(text.status, 503, "still full");
    // Once the held connections go, new ones are served again.
    drop(held);
    soon("the held connections closed", || {
        app.metrics.http_connections_open.get() == 0
    })
    .await;
    let r = app.call("GET", "/metrics", &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.text.contains("mana_ai_http_connections_refused_total 2"),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn every_labelled_family_is_on_the_first_scrape_and_user_tables_map_to_other() {
    let app = spawn(settings(KEY, None)).await;
    let first = app.call("GET", "/metrics", &[]).await.text;
    for line in [
        r#"mana_ai_decrypts_total{table="notes"} 0"#,
        r#"mana_ai_decrypts_total{table="other"} 0"#,
        r#"mana_ai_grant_scope_violations_total{table="notes"} 0"#,
        r#"mana_ai_grant_skips_total{reason="wrap-rejected"} 0"#,
        r#"mana_ai_agent_decisions_total{decision="ran"} 0"#,
        r#"mana_ai_agent_decisions_total{decision="skipped-budget"} 0"#,
        r#"mana_ai_run_outcomes_total{outcome="written"} 0"#,
        r#"mana_ai_poison_changes_total{reason="apply-failed"} 0"#,
        r#"mana_ai_missions_stalled_total{reason="no-next-run"} 0"#,
        r#"mana_ai_task_up{task="applier"} 0"#,
        r#"mana_ai_rows_pruned_total{table="mission_runs"} 0"#,
    ] {
        assert!(
            first.lines().any(|l| l == line),
            "missing {line} in\n{first}"
        );
    }
    app.metrics.count_decrypt("notes");
    app.metrics.count_decrypt("made-up-table");
    app.metrics.count_scope_violation("another\"made-up");
    let text = app.call("GET", "/metrics", &[]).await.text;
    for line in [
        r#"mana_ai_decrypts_total{table="notes"} 1"#,
        r#"mana_ai_decrypts_total{table="other"} 1"#,
        r#"mana_ai_grant_scope_violations_total{table="other"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
    assert!(
        !text.contains("made-up"),
        "a user's table name became a label"
    );
}
