//! Shared test support: a Postgres per test binary, a database per test,
//! the reactor started against it as the unprivileged service role.
#![allow(dead_code)]

pub mod logs;
pub mod serve;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_postgres::Pool;
use mana_ai::config::Config;
use mana_ai::metrics::Metrics;
use mana_ai::reactor::{self, Reactor};
use mana_ai::schedule::clock::DbClock;
use mana_ai::schedule::wheel::DueMission;
use mana_ai::sync::generation::Generation;
use pgtemp::{PgServer, TempDb, SERVICE_ROLE, SYNC_ROLE};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// [`setup`], with `sync_changes` of today's generation
/// (fixtures/mana_sync_current.sql: `field_meta`, `origin`, `space_id`, the
/// Space read policy) in place of v0.6's, and the kit installed on it.
pub async fn setup_current() -> TestDb {
    let mut t = setup().await;
    t.db.use_current_generation().await.unwrap();
    let admin = t.admin().await;
    mana_ai::triggers::install(&admin, SERVICE_ROLE)
        .await
        .expect("install.sql on today's generation");
    t.generation = Generation::Current;
    t
}

pub fn server() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(|| PgServer::discover().expect("a Postgres for the tests"))
}

/// A database with sync_changes, the trigger kit installed for the service
/// role, and mana-ai's migrations applied as that role.
pub struct TestDb {
    pub db: TempDb,
    pub pool: Pool,
    /// The generation of its `sync_changes` ([`setup_current`] makes it today's).
    pub generation: Generation,
}

pub async fn setup() -> TestDb {
    // RUST_LOG=mana_ai=debug cargo test -- --nocapture shows the service's logs.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    setup_on(server()).await
}

/// [`setup`] on a given server (the TLS tests start their own).
pub async fn setup_on(server: &PgServer) -> TestDb {
    let db = TempDb::create(server, "mana_ai_t")
        .await
        .expect("test database");
    let admin = db.admin().await.unwrap();
    mana_ai::triggers::install(&admin, SERVICE_ROLE)
        .await
        .expect("install.sql");
    let pool = mana_ai::db::pool(&db.url_as(SERVICE_ROLE), 4, "mana-ai-test", None).unwrap();
    let mut client = pool.get().await.unwrap();
    mana_ai::db::migrate::migrate(&mut client)
        .await
        .expect("migrations");
    drop(client);
    TestDb {
        db,
        pool,
        generation: Generation::V06,
    }
}

impl TestDb {
    /// Config as the service role. The safety sweep is an hour away unless a
    /// test overrides it, so whatever gets applied was announced by NOTIFY.
    pub fn config(&self, overrides: &[(&str, &str)]) -> Config {
        let mut env: HashMap<String, String> = HashMap::from([
            ("SYNC_DATABASE_URL".into(), self.db.url_as(SERVICE_ROLE)),
            ("MANA_AI_SWEEP_INTERVAL_SECS".into(), "3600".into()),
            ("MANA_AI_LISTEN_HEARTBEAT_SECS".into(), "1".into()),
            ("MANA_AI_MAX_FIELD_BYTES".into(), "1048576".into()),
        ]);
        for (k, v) in overrides {
            env.insert(k.to_string(), v.to_string());
        }
        let mut config = Config::from_lookup(|k| env.get(k).cloned()).expect("test config");
        config.generation = self.generation;
        config
    }

    pub async fn start(&self, overrides: &[(&str, &str)]) -> Running {
        self.start_with(overrides, reactor::Hooks::default()).await
    }

    /// [`TestDb::start`] with the reactor's `hooks` (observers, failpoints).
    pub async fn start_with(&self, overrides: &[(&str, &str)], hooks: reactor::Hooks) -> Running {
        let config = self.config(overrides);
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let (due_tx, due_rx) = mpsc::unbounded_channel();
        let reactor = reactor::start(
            &config,
            self.pool.clone(),
            metrics.clone(),
            Arc::new(DbClock::new()),
            due_tx,
            shutdown,
            hooks,
        )
        .await
        .expect("reactor starts");
        let mut reactor = reactor;
        tokio::time::timeout(Duration::from_secs(30), reactor.wait_listening())
            .await
            .expect("the listener registers within 30 s");
        Running {
            reactor,
            metrics,
            due: due_rx,
        }
    }

    pub async fn sync_client(&self) -> tokio_postgres::Client {
        self.db.connect_as(SYNC_ROLE).await.unwrap()
    }

    pub async fn admin(&self) -> tokio_postgres::Client {
        self.db.admin().await.unwrap()
    }

    /// A single `int8` the service role reads with `sql` (a count, a sum).
    pub async fn count(&self, sql: &str) -> i64 {
        self.pool
            .get()
            .await
            .unwrap()
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    /// A single `int8` the superuser reads with `sql` (past row-level security).
    pub async fn count_as_admin(&self, sql: &str) -> i64 {
        self.admin().await.query_one(sql, &[]).await.unwrap().get(0)
    }

    /// The snapshot record of a mission, if any.
    pub async fn mission(&self, user: &str, id: &str) -> Option<(Value, bool, i64)> {
        let c = self.pool.get().await.unwrap();
        c.query_opt(
            "SELECT record, deleted, change_count FROM mana_ai.mission_snapshots WHERE user_id = $1 AND mission_id = $2",
            &[&user, &id],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
    }
}

pub struct Running {
    pub reactor: Reactor,
    pub metrics: Arc<Metrics>,
    pub due: mpsc::UnboundedReceiver<DueMission>,
}

impl Running {
    /// Waits (bounded) until `n` queue rows have been processed.
    pub async fn processed(&mut self, n: u64) {
        tokio::time::timeout(Duration::from_secs(60), self.reactor.wait_processed(n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {n} changes processed in 60 s",
                    *self.reactor.processed.borrow()
                )
            });
    }
}

/// One change as the sync server writes it.
pub struct Change<'a> {
    pub user: &'a str,
    pub table: &'a str,
    pub record: &'a str,
    pub op: &'a str,
    pub data: Value,
    pub stamps: Value,
}

impl<'a> Change<'a> {
    pub fn mission(user: &'a str, record: &'a str, op: &'a str, data: Value) -> Self {
        Change {
            user,
            table: "aiMissions",
            record,
            op,
            data,
            stamps: serde_json::json!({}),
        }
    }
}

/// Inserts changes of one user in one transaction, as the sync server does:
/// an ordinary role inside that user's RLS scope. A change whose `stamps`
/// are `{}` gets every key of its `data` stamped now, as a browser stamps
/// what it writes (an update key without a stamp never applies).
pub async fn write(client: &mut tokio_postgres::Client, changes: &[Change<'_>]) {
    let user = changes[0].user;
    let tx = mana_ai::db::begin_user(client, user).await.unwrap();
    for c in changes {
        assert_eq!(c.user, user, "one user per transaction");
        let stamps = stamped(&c.data, &c.stamps);
        tx.execute(
            "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, field_timestamps, client_id)
             VALUES ('ai', $1, $2, $3, $4, $5, $6, 'test-browser')",
            &[&c.table, &c.record, &c.user, &c.op, &c.data, &stamps],
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

/// `stamps`, or when that is `{}`, every key of `data` stamped now (the
/// test's clock, as `toISOString()` writes it).
pub fn stamped(data: &Value, stamps: &Value) -> Value {
    if stamps != &serde_json::json!({}) {
        return stamps.clone();
    }
    let now = iso_in(0);
    let keys = data.as_object().into_iter().flat_map(|map| map.keys());
    Value::Object(
        keys.map(|key| (key.clone(), Value::String(now.clone())))
            .collect(),
    )
}

pub fn iso_in(seconds: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(seconds))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A leader (reactor + runner) started in-process against the test database.
pub struct Leading {
    pub lead: mana_ai::service::Leadership,
    pub metrics: Arc<Metrics>,
}

impl Leading {
    pub fn runner(&self) -> &Arc<mana_ai::run::Runner> {
        self.lead.runner.as_ref().expect("TICK_ENABLED")
    }

    pub async fn stop(self) {
        self.lead.stop().await;
    }

    /// Waits until no run is in flight. A run counts its metrics before it
    /// leaves the gauge, so after a write-back was seen this makes the
    /// run's counters safe to read.
    pub async fn settled(&self) {
        eventually("no run in flight", || async {
            self.metrics.runs_in_flight.get() == 0
        })
        .await;
    }
}

impl TestDb {
    /// Starts reactor and runner with `overrides` on top of the test config
    /// (point MANA_LLM_URL at a fake; retries are fast by default here).
    pub async fn lead(&self, overrides: &[(&str, &str)]) -> Leading {
        let mut all: Vec<(&str, &str)> = vec![
            ("MANA_AI_RETRY_BACKOFF_SECS", "0.2"),
            ("MANA_API_URL", "http://127.0.0.1:9"),
            ("MANA_SERVICE_KEY", "test-service-key"),
            ("MANA_LLM_TIMEOUT_SECS", "5"),
        ];
        all.extend_from_slice(overrides);
        let config = self.config(&all);
        let metrics = Metrics::new();
        let setup =
            mana_ai::service::RunnerSetup::from_config(&config, &metrics).expect("runner setup");
        let ctx = mana_ai::service::ServiceContext {
            config,
            pool: self.pool.clone(),
            metrics: metrics.clone(),
        };
        let mut lead = mana_ai::service::Leadership::start(
            &ctx,
            setup,
            uuid::Uuid::new_v4(),
            reactor::Hooks::default(),
        )
        .await
        .expect("leadership starts");
        tokio::time::timeout(Duration::from_secs(30), lead.reactor.wait_listening())
            .await
            .expect("the listener registers within 30 s");
        Leading { lead, metrics }
    }

    /// Every row of a mission, folded as the webapp folds it.
    pub async fn folded_mission(&self, user: &str, id: &str) -> serde_json::Map<String, Value> {
        let mut client = self.sync_client().await;
        let tx = mana_ai::db::begin_user(&mut client, user).await.unwrap();
        mana_ai::reactor::fold_record(&tx, self.generation, user, "ai", "aiMissions", id)
            .await
            .unwrap()
            .expect("mission rows")
            .record
    }

    /// How many write-back rows mana-ai wrote for a mission (any generation).
    pub async fn writebacks_current(&self, user: &str, id: &str) -> i64 {
        let sql = format!(
            "SELECT count(*) FROM sync_changes WHERE user_id = '{user}' AND record_id = '{id}'
             AND client_id = 'mana-ai-runner'"
        );
        self.count_as_admin(&sql).await
    }

    /// The write-back rows mana-ai wrote for a mission, oldest first.
    pub async fn writebacks(&self, user: &str, id: &str) -> Vec<tokio_postgres::Row> {
        let mut client = self.sync_client().await;
        let tx = mana_ai::db::begin_user(&mut client, user).await.unwrap();
        tx.query(
            "SELECT data, field_timestamps, actor, client_id, op, schema_version FROM sync_changes
             WHERE record_id = $1 AND client_id = 'mana-ai-runner' ORDER BY created_at",
            &[&id],
        )
        .await
        .unwrap()
    }
}

/// Waits (bounded, 30 s) until `check` holds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A due mission as the webapp creates it.
pub fn mission_data(extra: Value) -> Value {
    let mut base = serde_json::json!({
        "title": "Wochenplanung",
        "conceptMarkdown": "Plane die Woche.",
        "objective": "Eine ruhige Woche planen",
        "state": "active",
        "nextRunAt": iso_in(-5),
        "cadence": {"kind": "interval", "everyMinutes": 60},
        "iterations": [],
        "inputs": [],
    });
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

/// A valid planner answer with one create_task step.
pub fn plan_answer() -> String {
    "Hier ist der Plan:\n```json\n{\"summary\": \"Woche geplant\", \"steps\": [{\"summary\": \"Aufgabe anlegen\", \"toolName\": \"create_task\", \"params\": {\"title\": \"Montag planen\"}, \"rationale\": \"Ein Anfang hilft.\"}]}\n```".into()
}

/// A file of the DBA kit (`triggers/`).
pub fn kit(file: &str) -> String {
    format!("{}/triggers/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs a kit file with psql as the superuser, as a DBA would; returns
/// (success, stderr).
pub fn psql(db: &TempDb, file: &str, role: Option<&str>) -> (bool, String) {
    let mut cmd = std::process::Command::new("psql");
    cmd.arg("-X").arg("-q").args(["-v", "ON_ERROR_STOP=1"]);
    if let Some(role) = role {
        cmd.arg("-v").arg(format!("service_role={role}"));
    }
    let out = cmd
        .arg("-d")
        .arg(db.admin_url())
        .arg("-f")
        .arg(kit(file))
        .output()
        .expect("psql is installed (Debian: postgresql-client)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
