//! Shared test support: a Postgres per test binary, a database per test,
//! the reactor started against it as the unprivileged service role.
#![allow(dead_code)]

pub mod logs;
pub mod research;
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
    log_if_asked();
    from_template(Generation::Current).await
}

/// [`setup`] or [`setup_current`]: a test database of `generation`.
pub async fn setup_in(generation: Generation) -> TestDb {
    match generation {
        Generation::V06 => setup().await,
        Generation::Current => setup_current().await,
    }
}

/// Runs each named test body (`async fn name(t: TestDb)`) once against a
/// database of each generation of `sync_changes`: the test matrix of
/// issue 18. Each body `name` becomes the tests `name::v0_6` and
/// `name::current` (`cargo test name` runs both).
///
/// `both_generations!(bare: name, ...)` passes the `Generation` instead, for
/// bodies that need a database without the kit ([`bare_db`]).
#[macro_export]
macro_rules! both_generations {
    (bare: $($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v0_6() {
                super::$name(mana_ai::sync::generation::Generation::V06).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn current() {
                super::$name(mana_ai::sync::generation::Generation::Current).await
            }
        }
    )+};
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn v0_6() {
                let generation = mana_ai::sync::generation::Generation::V06;
                super::$name(super::common::setup_in(generation).await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn current() {
                let generation = mana_ai::sync::generation::Generation::Current;
                super::$name(super::common::setup_in(generation).await).await
            }
        }
    )+};
}

/// A test database with `sync_changes` of `generation` and nothing of
/// mana-ai's installed (what a DBA finds before `install.sql`).
pub async fn bare_db(generation: Generation) -> TempDb {
    let db = TempDb::create(server(), "mana_ai_t").await.unwrap();
    if generation == Generation::Current {
        db.use_current_generation().await.unwrap();
    }
    db
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
    log_if_asked();
    from_template(Generation::V06).await
}

/// RUST_LOG=mana_ai=debug cargo test -- --nocapture shows the service's logs.
fn log_if_asked() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// A clone of the generation's template ([`template`]).
async fn from_template(generation: Generation) -> TestDb {
    let template = template(generation).await;
    let db = TempDb::from_template(server(), template, "mana_ai_t")
        .await
        .expect("test database");
    TestDb::on(db, generation)
}

/// The template of `generation` on [`server`]: the fixture, the kit
/// installed and the migrations applied once, not once per test. Named
/// after a hash of all the SQL that made it, so it is never stale.
async fn template(generation: Generation) -> &'static str {
    static V06: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    static CURRENT: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    let cell = match generation {
        Generation::V06 => &V06,
        Generation::Current => &CURRENT,
    };
    cell.get_or_init(|| async move {
        let name = template_name(generation);
        server()
            .template(&name, |db| async move {
                if generation == Generation::Current {
                    db.use_current_generation().await?;
                }
                kit_and_migrations(&db).await?;
                Ok(db)
            })
            .await
            .expect("the test template");
        name
    })
    .await
}

fn template_name(generation: Generation) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(pgtemp::SYNC_FIXTURE);
    hash.update(pgtemp::SYNC_FIXTURE_CURRENT);
    hash.update(mana_ai::triggers::INSTALL_SQL);
    for (_, _, sql) in mana_ai::db::migrate::MIGRATIONS {
        hash.update(sql);
    }
    let hex: String = hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let generation = match generation {
        Generation::V06 => "v06",
        Generation::Current => "cur",
    };
    format!("{}{generation}_{hex}", pgtemp::TEMPLATE_PREFIX)
}

/// The kit installed as a DBA does and the migrations applied as the
/// service does; every connection closed again.
async fn kit_and_migrations(db: &TempDb) -> anyhow::Result<()> {
    let admin = db.admin().await?;
    mana_ai::triggers::install(&admin, SERVICE_ROLE).await?;
    drop(admin);
    let mut service = db.connect_as(SERVICE_ROLE).await?;
    mana_ai::db::migrate::migrate(&mut service).await?;
    Ok(())
}

/// [`setup`] on a given server (the TLS tests start their own), made the
/// long way: no template there.
pub async fn setup_on(server: &PgServer) -> TestDb {
    let db = TempDb::create(server, "mana_ai_t")
        .await
        .expect("test database");
    kit_and_migrations(&db)
        .await
        .expect("install.sql and the migrations");
    TestDb::on(db, Generation::V06)
}

impl TestDb {
    fn on(db: TempDb, generation: Generation) -> TestDb {
        let pool = mana_ai::db::pool(&db.url_as(SERVICE_ROLE), 4, "mana-ai-test", None).unwrap();
        TestDb {
            db,
            pool,
            generation,
        }
    }

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
        let read = std::cell::RefCell::new(std::collections::HashSet::new());
        let mut config = Config::from_lookup(|k| {
            read.borrow_mut().insert(k.to_string());
            env.get(k).cloned()
        })
        .expect("test config");
        // A misspelled or retired setting would be silently ignored.
        for (k, _) in overrides {
            assert!(
                read.borrow().contains(*k),
                "test override {k} is not a setting the config reads"
            );
        }
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
/// an ordinary role inside that user's RLS scope.
/// The stamp column goes with the database's generation (read from the
/// catalog, as the service does), so one test body writes to either. A
/// change whose `stamps` are `{}` gets every key of its `data` stamped now,
/// as a browser stamps what it writes (an update key without a stamp never
/// applies).
pub async fn write(client: &mut tokio_postgres::Client, changes: &[Change<'_>]) {
    let user = changes[0].user;
    let tx = mana_ai::db::begin_user(client, user).await.unwrap();
    let stamps = stamps_column(&tx).await;
    let insert = format!(
        "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, {stamps}, client_id)
         VALUES ('ai', $1, $2, $3, $4, $5, $6, 'test-browser')"
    );
    for c in changes {
        assert_eq!(c.user, user, "one user per transaction");
        let row_stamps = stamped(&c.data, &c.stamps);
        tx.execute(
            &insert,
            &[&c.table, &c.record, &c.user, &c.op, &c.data, &row_stamps],
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
}

/// Inserts one mission change as today's sync server writes it: every key
/// stamped now in `field_meta`, `origin = 'user'`, Space `space-1`.
pub async fn write_today(t: &TestDb, user: &str, mission: &str, op: &str, data: &Value) {
    let mut client = t.sync_client().await;
    let tx = mana_ai::db::begin_user(&mut client, user).await.unwrap();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let stamps: serde_json::Map<String, Value> = data
        .as_object()
        .unwrap()
        .keys()
        .map(|k| (k.clone(), Value::from(now.as_str())))
        .collect();
    tx.execute(
        "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, field_meta, client_id, origin, space_id)
         VALUES ('ai', 'aiMissions', $1, $2, $5, $3, $4, 'browser', 'user', 'space-1')",
        &[&mission, &user, data, &Value::Object(stamps), &op],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

/// `field_meta` (today's generation) or `field_timestamps` (v0.6's).
pub async fn stamps_column(client: &impl tokio_postgres::GenericClient) -> &'static str {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT FROM information_schema.columns
                            WHERE table_schema = 'public' AND table_name = 'sync_changes'
                              AND column_name = 'field_meta')",
            &[],
        )
        .await
        .unwrap();
    if row.get(0) {
        "field_meta"
    } else {
        "field_timestamps"
    }
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

    /// The write-back rows mana-ai wrote for a mission, oldest first:
    /// `data`, the stamps (from either generation's column), `actor`,
    /// `client_id`, `op`, `schema_version`.
    pub async fn writebacks(&self, user: &str, id: &str) -> Vec<tokio_postgres::Row> {
        let mut client = self.sync_client().await;
        let tx = mana_ai::db::begin_user(&mut client, user).await.unwrap();
        let stamps = self.generation.stamps_column();
        let sql = format!(
            "SELECT data, {stamps}, actor, client_id, op, schema_version FROM sync_changes
             WHERE record_id = $1 AND client_id = 'mana-ai-runner' ORDER BY created_at"
        );
        tx.query(&sql, &[&id]).await.unwrap()
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
