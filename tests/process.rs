//! The `mana-ai serve` binary as an operator runs it: real processes on one
//! test database, talked to over real HTTP, killed with real signals.
//!
//! Each process gets its own free port, `RUST_LOG`, and its output in a file
//! that is printed when a test fails. Nothing waits with a bare sleep: every
//! wait polls a condition against a deadline.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{mission_data, plan_answer, setup, write, Change, TestDb};
use pgtemp::SERVICE_ROLE;
use serde_json::{json, Value};
use testkit::fake_llm::FakeLlm;
use testkit::http::{FakeReply, TestServer};

const KEY: &str = "process-test-key";

// ---- a service process ----

/// One `mana-ai serve` process; SIGKILLed on drop, its log printed if the
/// test is failing.
struct Service {
    name: &'static str,
    child: tokio::process::Child,
    base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl Service {
    async fn start(name: &'static str, t: &TestDb, llm: &FakeLlm, extra: &[(&str, &str)]) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join(format!("{name}.log"));
        // Logs go to stderr, anything else to stdout: both into the one file.
        let stderr = std::fs::File::create(&log).unwrap();
        let stdout = stderr.try_clone().unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_mana-ai"));
        cmd.arg("serve")
            .env_clear()
            .env("RUST_LOG", "info,mana_ai=debug")
            .env("SYNC_DATABASE_URL", t.db.url_as(SERVICE_ROLE))
            .env("PORT", port.to_string())
            .env("MANA_LLM_URL", llm.url())
            .env("MANA_LLM_TIMEOUT_SECS", "20")
            .env("MANA_SERVICE_KEY", KEY)
            .env("MANA_API_URL", "http://127.0.0.1:9")
            .env("MANA_AI_LEADER_RETRY_SECS", "1")
            .env("MANA_AI_LISTEN_HEARTBEAT_SECS", "1")
            .env("MANA_AI_RETRY_BACKOFF_SECS", "0.5")
            .env("MANA_AI_SHUTDOWN_GRACE_SECS", "10");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("the mana-ai binary starts");
        Service {
            name,
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str, key: Option<&str>) -> Option<(u16, String)> {
        self.call(reqwest::Method::GET, path, key).await
    }

    /// `None` while nothing answers (starting, or gone).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
    ) -> Option<(u16, String)> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut req = client.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.header("x-service-key", key);
        }
        let r = req.send().await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.ok()?))
    }

    async fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path, Some(KEY)).await.expect("answers");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The health document, once it answers.
    async fn health(&self) -> Option<Value> {
        let (_, body) = self.get("/health", None).await?;
        serde_json::from_str(&body).ok()
    }

    async fn role(&self) -> Option<String> {
        Some(self.health().await?["role"].as_str()?.to_string())
    }

    async fn tick(&self) -> Value {
        let (status, body) = self
            .call(reqwest::Method::POST, "/internal/tick", Some(KEY))
            .await
            .expect("answers");
        assert_eq!(status, 200, "tick: {body}");
        serde_json::from_str(&body).unwrap()
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("{} still running after {limit:?}", self.name),
        }
    }

    /// Waits until it leads with its listener up and its wheel rebuilt.
    async fn leading(&self, limit: Duration) -> Duration {
        within(limit, &format!("{} leads", self.name), || async {
            self.health().await.is_some_and(|h| {
                h["role"] == "leader" && h["listener"]["connected"] == true && h["ok"] == true
            })
        })
        .await
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} ({}) stderr ----\n{}",
                self.name,
                self.base,
                self.logs()
            );
        }
    }
}

/// Polls `check` until it holds; panics after `limit`. Returns how long it took.
async fn within<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    start.elapsed()
}

// ---- database helpers ----

async fn seed(t: &TestDb, user: &str, id: &str, extra: Value) {
    let mut sync = t.sync_client().await;
    write(
        &mut sync,
        &[Change::mission(user, id, "insert", mission_data(extra))],
    )
    .await;
}

async fn iterations(t: &TestDb, user: &str, id: &str) -> Vec<Value> {
    match t.folded_mission(user, id).await.get("iterations") {
        Some(Value::Array(list)) => list.clone(),
        _ => Vec::new(),
    }
}

/// (slot, state, attempts) of every claim row of a mission.
async fn runs_of(t: &TestDb, user: &str, id: &str) -> Vec<(String, String, i32)> {
    t.pool
        .get()
        .await
        .unwrap()
        .query(
            "SELECT slot, state, attempts FROM mana_ai.mission_runs
             WHERE user_id = $1 AND mission_id = $2 ORDER BY claimed_at",
            &[&user, &id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Waits until the write-back came round: the snapshot holds the folded
/// `nextRunAt` and the queue is empty, so a tick sees the next slot.
async fn caught_up(t: &TestDb, user: &str, id: &str) {
    let folded = t.folded_mission(user, id).await["nextRunAt"].clone();
    assert!(folded.is_string(), "{user}/{id} has a next slot");
    common::eventually("the snapshot caught up with the write-back", || async {
        let queued: i64 = t
            .pool
            .get()
            .await
            .unwrap()
            .query_one("SELECT count(*) FROM mana_ai.change_queue", &[])
            .await
            .unwrap()
            .get(0);
        queued == 0
            && t.mission(user, id)
                .await
                .is_some_and(|m| m.0["nextRunAt"] == folded)
    })
    .await;
}

fn slow_llm(delay: Duration) -> FakeReply {
    FakeLlm::answer(&plan_answer()).delay(delay)
}

/// Waits (30 s at most) until the fake LLM received its first request.
async fn llm_asked(llm: &FakeLlm) {
    within(
        Duration::from_secs(30),
        "the LLM got the request",
        || async { !llm.requests().is_empty() },
    )
    .await;
}

// ---- Prometheus text format 0.0.4 ----

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_value(v: &str) -> bool {
    matches!(v, "NaN" | "+Inf" | "-Inf") || v.parse::<f64>().is_ok_and(|x| x.is_finite())
}

/// A series' labels, sorted by name.
type Labels = Vec<(String, String)>;

/// One sample line: metric name, labels, value as written.
type Sample = (String, Labels, String);

/// Parses `{k="v",...}` (with `\\`, `\"`, `\n` escapes); returns the labels
/// sorted and the rest of the line.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            labels.sort();
            return Ok((labels, after));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        let ok_name = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok_name {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value must be quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = &rest[end + 1..];
    }
}

/// Checks the exposition format; returns every family with its type and
/// the samples (name, labels, value).
fn check_exposition(text: &str) -> Result<(HashMap<String, String>, Vec<Sample>), String> {
    let mut help: HashSet<String> = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut sampled: HashSet<String> = HashSet::new();
    let mut series = HashSet::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("HELP"), Some(name), _) => {
                    if !valid_metric_name(name) || !help.insert(name.into()) {
                        return Err(at("bad or repeated HELP".into()));
                    }
                    if sampled.contains(name) {
                        return Err(at("HELP after samples".into()));
                    }
                }
                (Some("TYPE"), Some(name), Some(kind)) => {
                    let known = ["counter", "gauge", "histogram", "summary", "untyped"];
                    if !valid_metric_name(name) || !known.contains(&kind) {
                        return Err(at("bad TYPE".into()));
                    }
                    if types.insert(name.into(), kind.into()).is_some() || sampled.contains(name) {
                        return Err(at("TYPE repeated or after samples".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return Err(at("bad metric name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (Vec::new(), &line[name_end..])
        };
        let mut fields = rest.split_whitespace();
        let value = fields.next().ok_or_else(|| at("no value".into()))?;
        if !valid_value(value) {
            return Err(at("value is not a float".into()));
        }
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| at("bad timestamp".into()))?;
        }
        // The family: the name itself, or a histogram's/summary's base.
        let family = if types.contains_key(name) {
            name.to_string()
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| name.strip_suffix(s))
                .find(|base| {
                    matches!(
                        types.get(*base).map(String::as_str),
                        Some("histogram" | "summary")
                    )
                })
                .ok_or_else(|| at("sample before its TYPE".into()))?
                .to_string()
        };
        if !help.contains(&family) {
            return Err(at("sample before its HELP".into()));
        }
        sampled.insert(family);
        if !series.insert((name.to_string(), labels.clone())) {
            return Err(at("duplicate series".into()));
        }
        samples.push((name.to_string(), labels, value.to_string()));
    }
    Ok((types, samples))
}

#[test]
fn the_exposition_checker_rejects_what_prometheus_rejects() {
    let good = "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v \\\"q\\\"\"} 1\n\
                # HELP h y\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n";
    assert!(
        check_exposition(good).is_ok(),
        "{:?}",
        check_exposition(good)
    );
    for bad in [
        "a_total 1\n",
        "# HELP a x\na 1\n",
        "# HELP a x\na 1\n# TYPE a gauge\n",
        "# HELP a x\n# TYPE a gauge\na 1\na 2\n",
        "# HELP a x\n# TYPE a gauge\na one\n",
        "# HELP 1a x\n# TYPE 1a gauge\n1a 1\n",
        "# HELP a x\n# TYPE a gauge\na{k=v} 1\n",
    ] {
        assert!(check_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

/// The names contract section 9 lists (prefix `mana_ai_`).
const CONTRACT_METRICS: [&str; 17] = [
    "ticks_total",
    "tick_duration_seconds",
    "plans_produced_total",
    "plans_written_back_total",
    "parse_failures_total",
    "mission_errors_total",
    "planner_request_duration_seconds",
    "snapshots_new_total",
    "snapshots_updated_total",
    "snapshot_rows_applied_total",
    "decrypts_total",
    "grant_scope_violations_total",
    "grant_skips_total",
    "agent_decisions_total",
    "tokens_used_total",
    "http_requests_total",
    "http_request_duration_seconds",
];

// ---- a mission with a real grant: one note in scope, one out of it ----

struct Granted {
    pem: String,
    mission: Value,
    wrapped_key: String,
    note: Value,
}

fn granted_mission(mission_id: &str) -> Granted {
    use mana_ai::crypto::{derive_mdk, encrypt_value, mint_grant, GrantKey};
    let vectors: Value = serde_json::from_str(include_str!("vectors/grant_vectors.json")).unwrap();
    let pem = vectors["privateKeyPem"].as_str().unwrap().to_string();
    let public = GrantKey::from_pkcs8_pem(&pem).unwrap().public_key();
    let master = [7u8; 32];
    let (tables, ids) = (["notes"], ["notes:n-in"]);
    let now = chrono::Utc::now();
    let grant = mint_grant(
        &public,
        &master,
        mission_id,
        &tables,
        &ids,
        now,
        now + chrono::Duration::hours(1),
    )
    .unwrap();
    let mdk = derive_mdk(&master, mission_id, &tables, &ids);
    let note = json!({
        "title": encrypt_value(&mdk, &json!("Geheime Notiz"), [1; 12]),
        "content": encrypt_value(&mdk, &json!("Nur für die Mission"), [2; 12]),
    });
    let wrapped_key = grant.wrapped_key.clone();
    let mission = mission_data(json!({
        "grant": serde_json::to_value(&grant).unwrap(),
        "inputs": [
            {"module": "notes", "table": "notes", "id": "n-in"},
            {"module": "notes", "table": "notes", "id": "n-out"},
        ],
    }));
    Granted {
        pem,
        mission,
        wrapped_key,
        note,
    }
}

async fn write_note(t: &TestDb, user: &str, id: &str, data: &Value) {
    let mut client = t.sync_client().await;
    let tx = mana_ai::db::begin_user(&mut client, user).await.unwrap();
    tx.execute(
        "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, field_timestamps, client_id)
         VALUES ('notes', 'notes', $1, $2, 'insert', $3, '{}'::jsonb, 'test-browser')",
        &[&id, &user, data],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

// ---- 1. HTTP smoke against the binary ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_health_metrics_tick_and_the_missions_view() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let granted = granted_mission("m-granted");
    write_note(&t, "uma", "n-in", &granted.note).await;
    write_note(&t, "uma", "n-out", &granted.note).await;
    let svc = Service::start(
        "smoke",
        &t,
        &llm,
        &[("MANA_AI_PRIVATE_KEY_PEM", granted.pem.as_str())],
    )
    .await;
    svc.leading(Duration::from_secs(30)).await;
    let health = svc.health().await.unwrap();
    assert_eq!(health["ok"], true, "{health}");
    assert_eq!(health["service"], "mana-ai");
    assert_eq!(health["tick"], json!({"enabled": true, "running": true}));
    assert_eq!(health["queueDepth"], 0);

    // Two due missions: one with a real grant, one with a broken grant.
    let mut sync = t.sync_client().await;
    write(
        &mut sync,
        &[
            Change::mission("uma", "m-granted", "insert", granted.mission.clone()),
            Change::mission(
                "uma",
                "m-broken",
                "insert",
                mission_data(json!({"grant": {"wrappedKey": 42}})),
            ),
        ],
    )
    .await;
    common::eventually("both missions written back", || async {
        t.writebacks("uma", "m-granted").await.len() == 1
            && t.writebacks("uma", "m-broken").await.len() == 1
    })
    .await;
    let prompt = &llm.prompts()[..];
    assert!(
        prompt.iter().any(|p| p.user.contains("Geheime Notiz")),
        "the in-scope note reached the planner decrypted"
    );

    // The internal routes: 401 without or with a wrong key, 200 with it.
    for key in [None, Some("wrong")] {
        let (status, body) = svc
            .call(reqwest::Method::POST, "/internal/tick", key)
            .await
            .unwrap();
        assert_eq!(status, 401, "{body}");
        assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
        let (status, _) = svc.get("/internal/missions/uma", key).await.unwrap();
        assert_eq!(status, 401);
        let (status, _) = svc.get("/internal/dead-changes", key).await.unwrap();
        assert_eq!(status, 401);
    }
    caught_up(&t, "uma", "m-granted").await;
    caught_up(&t, "uma", "m-broken").await;
    let stats = svc.tick().await;
    for field in [
        "dueMissionCount",
        "plansProduced",
        "plansWrittenBack",
        "parseFailures",
        "errors",
    ] {
        assert!(stats[field].is_u64(), "{field} in {stats}");
    }
    assert_eq!(stats["dueMissionCount"], 0, "both slots moved on: {stats}");

    // The operators' view: state and the next slot, no content or key material.
    let folded = t.folded_mission("uma", "m-granted").await;
    let next = folded["nextRunAt"].as_str().unwrap().to_string();
    common::eventually("the view shows the next slot", || async {
        let view = svc.json("/internal/missions/uma").await;
        view["missions"].as_array().unwrap().iter().any(|m| {
            m["missionId"] == "m-granted"
                && m["nextRunAt"] == next.as_str()
                && m["armedAt"].is_string()
        })
    })
    .await;
    let view = svc.json("/internal/missions/uma").await;
    let m = view["missions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["missionId"] == "m-granted")
        .unwrap();
    assert_eq!(m["state"], "active", "{m}");
    assert_eq!(m["iterationCount"], 1, "{m}");
    assert_eq!(m["lastIterationStatus"], "awaiting-review", "{m}");
    assert!(m["armedAt"].is_string(), "armed for its next slot: {m}");
    assert_eq!(m["recentRuns"][0]["state"], "done", "{m}");
    let text = view.to_string();
    for secret in [
        "Wochenplanung",
        "Plane die Woche",
        "Geheime Notiz",
        "wrappedKey",
        granted.wrapped_key.as_str(),
        "enc:1:",
    ] {
        assert!(!text.contains(secret), "the view shows {secret:?}: {text}");
    }
    let other = svc.json("/internal/missions/nobody").await;
    assert_eq!(other, json!({"userId": "nobody", "missions": []}));

    // A poison change: set aside, and shown to operators without its data.
    write(
        &mut sync,
        &[Change::mission(
            "uma",
            "m-poison",
            "insert",
            json!("Geheimer Text statt eines Objekts"),
        )],
    )
    .await;
    common::eventually("the poison change is listed", || async {
        svc.json("/internal/dead-changes?userId=uma").await["total"] == 1
    })
    .await;
    let dead = svc.json("/internal/dead-changes?userId=uma&limit=10").await;
    let row = &dead["deadChanges"][0];
    assert_eq!(
        (
            &row["userId"],
            &row["tableName"],
            &row["recordId"],
            &row["reason"]
        ),
        (
            &json!("uma"),
            &json!("aiMissions"),
            &json!("m-poison"),
            &json!("data-not-object")
        ),
        "{dead}"
    );
    assert!(
        row["changeId"].is_string() && row["deadAt"].is_string(),
        "{dead}"
    );
    assert!(!dead.to_string().contains("Geheimer"), "{dead}");
    let none = svc.json("/internal/dead-changes?userId=nobody").await;
    assert_eq!(none, json!({"total": 0, "deadChanges": []}));

    // Metrics: valid text format with every contract name.
    let (status, metrics) = svc.get("/metrics", None).await.unwrap();
    assert_eq!(status, 200);
    let (families, samples) = check_exposition(&metrics).unwrap_or_else(|e| panic!("{e}"));
    for name in CONTRACT_METRICS {
        let full = format!("mana_ai_{name}");
        assert!(families.contains_key(&full), "{full} missing:\n{metrics}");
    }
    assert!(
        families.keys().any(|f| f.starts_with("mana_ai_process_")),
        "process metrics"
    );
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort();
        samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| v.parse().unwrap())
    };
    assert_eq!(value("mana_ai_plans_written_back_total", &[]), Some(2.0));
    assert_eq!(value("mana_ai_ticks_total", &[]), Some(1.0));
    assert_eq!(value("mana_ai_is_leader", &[]), Some(1.0));
    assert_eq!(
        value("mana_ai_decrypts_total", &[("table", "notes")]),
        Some(1.0)
    );
    assert_eq!(
        value(
            "mana_ai_grant_scope_violations_total",
            &[("table", "notes")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value("mana_ai_grant_skips_total", &[("reason", "malformed")]),
        Some(1.0)
    );
    assert_eq!(
        value("mana_ai_agent_decisions_total", &[("decision", "ran")]),
        Some(2.0)
    );
    let tick_401 = [
        ("method", "POST"),
        ("path", "/internal/tick"),
        ("status", "401"),
    ];
    assert_eq!(value("mana_ai_http_requests_total", &tick_401), Some(2.0));
    let view_200 = [
        ("method", "GET"),
        ("path", "/internal/missions/{userId}"),
        ("status", "200"),
    ];
    assert!(value("mana_ai_http_requests_total", &view_200).is_some_and(|v| v >= 2.0));
    assert!(!metrics.contains("uma"), "a user id in a label");
    promtool_check(&metrics);
}

/// `promtool check metrics` on the text, when promtool is installed.
fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!(
            "promtool not on PATH: skipping `promtool check metrics` (the built-in checker ran)"
        );
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- 2. failover ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_a_killed_leader_and_its_slot_runs_once() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![slow_llm(Duration::from_secs(3))])
        .await
        .unwrap();
    let a = Service::start("a", &t, &llm, &[]).await;
    let b = Service::start("b", &t, &llm, &[]).await;
    // Both answer, exactly one leads; never two at once.
    let start = Instant::now();
    let a_leads = loop {
        let roles = (a.role().await, b.role().await);
        match (roles.0.as_deref(), roles.1.as_deref()) {
            (Some("leader"), Some("standby")) => break true,
            (Some("standby"), Some("leader")) => break false,
            (Some("leader"), Some("leader")) => panic!("two leaders at once"),
            _ => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no single leader within 10 s: {roles:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let (mut leader, standby) = if a_leads { (a, b) } else { (b, a) };
    leader.leading(Duration::from_secs(30)).await;
    let standby_health = standby.health().await.unwrap();
    assert_eq!(standby_health["tick"]["running"], false, "{standby_health}");
    let (status, _) = standby
        .call(reqwest::Method::POST, "/internal/tick", Some(KEY))
        .await
        .unwrap();
    assert_eq!(status, 503, "a standby runs nothing");

    seed(&t, "fay", "m-fail", json!({})).await;
    llm_asked(&llm).await;
    assert_eq!(runs_of(&t, "fay", "m-fail").await[0].1, "running");
    leader.child.start_kill().unwrap();
    let killed = Instant::now();
    assert!(!leader.exit_within(Duration::from_secs(10)).await.success());
    // A change committed while nobody leads waits in the queue.
    seed(
        &t,
        "fay",
        "m-later",
        json!({"nextRunAt": common::iso_in(3600)}),
    )
    .await;

    standby.leading(Duration::from_secs(10)).await;
    let failover = killed.elapsed();
    eprintln!("failover: standby led {failover:?} after SIGKILL");
    assert!(failover < Duration::from_secs(10), "{failover:?}");

    common::eventually("the slot written by the new leader", || async {
        t.writebacks("fay", "m-fail").await.len() == 1
    })
    .await;
    let written = killed.elapsed();
    eprintln!("failover: slot written {written:?} after SIGKILL");
    common::eventually("queue drained, both missions armed", || async {
        let h = standby.health().await.unwrap();
        h["queueDepth"] == 0 && h["armedMissions"] == 2
    })
    .await;
    assert!(
        t.mission("fay", "m-later").await.is_some(),
        "queued change applied"
    );
    let its = iterations(&t, "fay", "m-fail").await;
    assert_eq!(its.len(), 1, "exactly one iteration: {its:?}");
    let runs = runs_of(&t, "fay", "m-fail").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(
        (runs[0].1.as_str(), runs[0].2),
        ("done", 2),
        "the dead claim was taken over"
    );
    assert_eq!(llm.requests().len(), 2, "once per leader");
    caught_up(&t, "fay", "m-fail").await;
    let stats = standby.tick().await;
    assert_eq!(stats["dueMissionCount"], 0, "{stats}");
    assert_eq!(t.writebacks("fay", "m-fail").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lock_connection_is_cut_steps_down_at_once_and_leads_again() {
    let t = setup().await;
    // The first answer would come after a minute, past any test deadline:
    // only abandoning that run and claiming the slot again gets it written.
    let llm = FakeLlm::start(vec![
        slow_llm(Duration::from_secs(60)),
        FakeLlm::answer(&plan_answer()),
    ])
    .await
    .unwrap();
    let mut only = Service::start(
        "only",
        &t,
        &llm,
        &[
            ("MANA_AI_SHUTDOWN_GRACE_SECS", "120"),
            ("MANA_LLM_TIMEOUT_SECS", "120"),
        ],
    )
    .await;
    only.leading(Duration::from_secs(30)).await;
    seed(&t, "hal", "m-cut", json!({})).await;
    llm_asked(&llm).await;
    let cut: i64 = t
        .admin()
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'mana-ai-leader'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cut, 1, "one leader lock connection");
    common::eventually("the slot written by the next term", || async {
        t.writebacks("hal", "m-cut").await.len() == 1
    })
    .await;
    only.leading(Duration::from_secs(10)).await;
    assert_eq!(llm.requests().len(), 2, "the abandoned run and its retry");
    assert_eq!(iterations(&t, "hal", "m-cut").await.len(), 1);
    let runs = runs_of(&t, "hal", "m-cut").await;
    assert_eq!(
        runs.iter().map(|r| (r.1.as_str(), r.2)).collect::<Vec<_>>(),
        [("done", 2)],
        "claimed by the first term, taken over by the second"
    );
    let logs = only.logs();
    assert!(logs.contains("stepping down now"), "{logs}");
    assert!(
        logs.contains("runs still in flight when leadership was lost"),
        "{logs}"
    );
    let (_, metrics) = only.get("/metrics", None).await.unwrap();
    for line in [
        "mana_ai_leader_lock_lost_total 1",
        "mana_ai_runs_abandoned_total 1",
        "mana_ai_is_leader 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    only.signal("TERM");
    assert_eq!(
        only.exit_within(Duration::from_secs(15)).await.code(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_cuts_every_connection_and_nothing_is_lost() {
    // Its own cluster: restarting the shared server would break other tests.
    let server =
        pgtemp::PgServer::start_throwaway().expect("a throwaway cluster (needs initdb and pg_ctl)");
    let t = common::setup_on(&server).await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let only = Service::start("only", &t, &llm, &[]).await;
    only.leading(Duration::from_secs(30)).await;
    seed(&t, "ivo", "m-before", json!({})).await;
    common::eventually("written before the restart", || async {
        t.writebacks("ivo", "m-before").await.len() == 1
    })
    .await;

    let server_for_restart = server.clone();
    tokio::task::spawn_blocking(move || server_for_restart.restart())
        .await
        .unwrap()
        .expect("pg_ctl restart");
    let restarted = Instant::now();
    // A change committed as soon as the database is back; the service may
    // not have reconnected yet: the queue keeps it.
    seed(&t, "ivo", "m-after", json!({})).await;
    only.leading(Duration::from_secs(30)).await;
    eprintln!(
        "restart: leading again {:?} after the restart",
        restarted.elapsed()
    );
    common::eventually("written after the restart", || async {
        t.writebacks("ivo", "m-after").await.len() == 1
    })
    .await;
    assert_eq!(t.writebacks("ivo", "m-before").await.len(), 1);
    assert_eq!(llm.requests().len(), 2, "one run per mission");
    let logs = only.logs();
    assert!(logs.contains("stepping down now"), "lost its lock: {logs}");
}

// ---- 3. SIGTERM during a slow run ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_run_in_flight_finish_and_exits_zero() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![slow_llm(Duration::from_secs(2))])
        .await
        .unwrap();
    let mut first =
        Service::start("first", &t, &llm, &[("MANA_AI_SHUTDOWN_GRACE_SECS", "10")]).await;
    first.leading(Duration::from_secs(30)).await;
    seed(&t, "gus", "m-term", json!({})).await;
    llm_asked(&llm).await;
    first.signal("TERM");
    let sent = Instant::now();
    let status = first.exit_within(Duration::from_secs(15)).await;
    let took = sent.elapsed();
    eprintln!("SIGTERM: exited {status} after {took:?}");
    assert_eq!(status.code(), Some(0), "clean exit");
    assert!(took < Duration::from_secs(12), "within the grace: {took:?}");
    assert!(first.logs().contains("stopped"), "logged its stop");
    let written = t.writebacks("gus", "m-term").await.len();
    assert_eq!(written, 1, "the run in flight finished before the exit");

    // The next start finds the slot done and nothing due.
    let second = Service::start("second", &t, &llm, &[]).await;
    second.leading(Duration::from_secs(30)).await;
    common::eventually("the wheel rebuilt with the next slot", || async {
        second.health().await.unwrap()["armedMissions"] == 1
    })
    .await;
    caught_up(&t, "gus", "m-term").await;
    let stats = second.tick().await;
    assert_eq!(stats["dueMissionCount"], 0, "{stats}");
    assert_eq!(iterations(&t, "gus", "m-term").await.len(), 1);
    assert_eq!(t.writebacks("gus", "m-term").await.len(), 1);
    let runs = runs_of(&t, "gus", "m-term").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].1, "done");
    assert_eq!(llm.requests().len(), 1);
}

// ---- 4. a crash between the LLM answer and the write-back ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_llm_answered_is_run_again_once() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let mut crashing =
        Service::start("crashing", &t, &llm, &[("MANA_AI_FAILPOINT", "after-llm")]).await;
    crashing.leading(Duration::from_secs(30)).await;
    seed(&t, "hal", "m-crash", json!({})).await;
    let status = crashing.exit_within(Duration::from_secs(30)).await;
    assert!(!status.success(), "aborted: {status}");
    assert!(crashing.logs().contains("failpoint after-llm"));
    assert_eq!(llm.requests().len(), 1);
    assert!(t.writebacks("hal", "m-crash").await.is_empty());
    assert_eq!(runs_of(&t, "hal", "m-crash").await[0].1, "running");

    let again = Service::start("again", &t, &llm, &[]).await;
    again.leading(Duration::from_secs(30)).await;
    common::eventually("the slot written after the restart", || async {
        t.writebacks("hal", "m-crash").await.len() == 1
    })
    .await;
    common::eventually("re-armed at the next slot", || async {
        again.health().await.unwrap()["armedMissions"] == 1
    })
    .await;
    caught_up(&t, "hal", "m-crash").await;
    let stats = again.tick().await;
    assert_eq!(stats["dueMissionCount"], 0, "{stats}");
    assert_eq!(iterations(&t, "hal", "m-crash").await.len(), 1);
    assert_eq!(t.writebacks("hal", "m-crash").await.len(), 1);
    let runs = runs_of(&t, "hal", "m-crash").await;
    assert_eq!(
        runs.iter().map(|r| (r.1.as_str(), r.2)).collect::<Vec<_>>(),
        [("done", 2)]
    );
    assert_eq!(llm.requests().len(), 2, "once per process, never more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_the_shutdown_grace_is_abandoned_and_taken_by_the_next_start() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![
        slow_llm(Duration::from_secs(8)),
        FakeLlm::answer(&plan_answer()),
    ])
    .await
    .unwrap();
    let mut first =
        Service::start("first", &t, &llm, &[("MANA_AI_SHUTDOWN_GRACE_SECS", "1")]).await;
    first.leading(Duration::from_secs(30)).await;
    seed(&t, "ida", "m-grace", json!({})).await;
    llm_asked(&llm).await;
    first.signal("TERM");
    let sent = Instant::now();
    let status = first.exit_within(Duration::from_secs(6)).await;
    eprintln!(
        "SIGTERM past the grace: exited {status} after {:?}",
        sent.elapsed()
    );
    assert_eq!(status.code(), Some(0), "clean exit at the deadline");
    assert!(first
        .logs()
        .contains("runs still in flight at the shutdown deadline"));
    assert!(t.writebacks("ida", "m-grace").await.is_empty(), "abandoned");
    // Left for the next leader: `running` under the old instance (taken
    // over by any other) or `retry`; never `done`.
    let left = runs_of(&t, "ida", "m-grace").await;
    assert!(
        matches!(left[0].1.as_str(), "running" | "retry"),
        "{left:?}"
    );

    let second = Service::start("second", &t, &llm, &[]).await;
    second.leading(Duration::from_secs(30)).await;
    common::eventually("the next start ran the slot", || async {
        t.writebacks("ida", "m-grace").await.len() == 1
    })
    .await;
    caught_up(&t, "ida", "m-grace").await;
    let stats = second.tick().await;
    assert_eq!(stats["dueMissionCount"], 0, "{stats}");
    assert_eq!(iterations(&t, "ida", "m-grace").await.len(), 1);
    let runs = runs_of(&t, "ida", "m-grace").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].1, "done");
    assert_eq!(llm.requests().len(), 2, "once per process");
}

// ---- 6. trying serve without a model ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_the_offline_planner_writes_a_plan_without_any_llm_and_says_so() {
    let t = setup().await;
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let service = Service::start("offline", &t, &llm, &[("MANA_AI_PLANNER", "offline")]).await;
    service.leading(Duration::from_secs(30)).await;
    seed(&t, "olga", "m-offline", json!({})).await;
    common::eventually("the offline plan was written back", || async {
        t.writebacks("olga", "m-offline").await.len() == 1
    })
    .await;
    let iterations = iterations(&t, "olga", "m-offline").await;
    assert_eq!(iterations.len(), 1, "{iterations:?}");
    assert!(
        iterations[0]["plan"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{}",
        iterations[0]
    );
    assert!(llm.requests().is_empty(), "no LLM was asked");
    assert!(
        service.logs().contains("MANA_AI_PLANNER=offline"),
        "the start says the planner is offline"
    );
}

// ---- 7. OpenTelemetry traces ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_reach_an_otlp_receiver_with_ids_and_without_content() {
    let t = setup().await;
    let collector = TestServer::start(|_| async {
        FakeReply::raw(200, "")
            .header("content-type", "application/x-protobuf")
            .into_response()
            .await
    })
    .await
    .unwrap();
    let llm = FakeLlm::start(vec![FakeLlm::answer(&plan_answer())])
        .await
        .unwrap();
    let endpoint = collector.url();
    let service = Service::start(
        "traced",
        &t,
        &llm,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    service.leading(Duration::from_secs(30)).await;
    const CONTENT: &str = "INHALT-DER-MISSION-5521";
    seed(&t, "tara", "m-traced", json!({"conceptMarkdown": CONTENT})).await;
    common::eventually("the mission was written back", || async {
        t.writebacks("tara", "m-traced").await.len() == 1
    })
    .await;
    let exported = |needle: &[u8]| {
        collector
            .requests()
            .iter()
            .any(|r| r.path == "/v1/traces" && r.body.windows(needle.len()).any(|w| w == needle))
    };
    within(
        Duration::from_secs(20),
        "the run's span reached the receiver",
        || async { exported(b"mission_run") && exported(b"m-traced") && exported(b"mana-ai") },
    )
    .await;
    assert!(!exported(CONTENT.as_bytes()), "no content in any span");
    let request = &collector.requests()[0];
    assert_eq!(
        request.header("content-type"),
        Some("application/x-protobuf")
    );
}
