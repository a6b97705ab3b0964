//! `mana-ai demo`: the whole path on a throwaway database, in one command.
//!
//! Finds or starts a Postgres (see `pgenv`), creates a fresh database with
//! the mana_sync side, installs the trigger kit and migrations, seeds a user
//! with an agent, a goal, an end-to-end-encrypted note under a grant minted
//! on the spot, and a mission due in a few seconds, then shows the run:
//! snapshot, timer, prompt summary, the written iteration, `nextRunAt` and
//! the audit trail. Without `MANA_LLM_URL` the planner is the offline one,
//! and says so. The database is dropped on exit (a cluster it started is
//! stopped and removed).

use std::time::Duration;

use anyhow::{bail, Context};
use chrono::Utc;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::crypto::{derive_mdk, encrypt_value, mint_grant, GrantKey};
use crate::metrics::Metrics;
use crate::pgenv::{PgServer, TempDb, SERVICE_ROLE, SYNC_ROLE};
use crate::service::{Leadership, RunnerSetup};
use crate::sync::fold::iso_millis;

/// The demo's grant key: a fixed, public, test-only RSA key (generating one
/// takes long in a debug build). Never use it outside the demo.
const DEMO_KEY_PEM: &str = include_str!("../fixtures/demo-grant-key.pem");

const USER: &str = "demo-user";
const AGENT: &str = "agent-recherche";
const MISSION: &str = "mission-wochenplan";

fn say(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
}

/// Runs the demo; with `keep_running` it then serves HTTP until `shutdown`.
/// `shutdown` (SIGTERM or SIGINT from `main`) at any step ends it the same
/// way: the service stopped, the database dropped, exit 0.
pub async fn run(
    keep_running: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if std::env::var_os("SYNC_DATABASE_URL").is_some() {
        bail!("mana-ai demo makes its own throwaway database; unset SYNC_DATABASE_URL (use DATABASE_URL to point it at a Postgres superuser URL)");
    }
    let stop = CancellationToken::new();
    let signalled = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        signalled.cancel();
    });
    say("mana-ai demo");
    let server = tokio::select! {
        found = tokio::task::spawn_blocking(PgServer::discover) => found??,
        _ = stop.cancelled() => {
            say("Stopped by a signal before a database was made.");
            return Ok(());
        }
    };
    match &server.cluster_dir {
        Some(dir) => say(format!(
            "1. Postgres: started a throwaway cluster in {} (removed on exit)",
            dir.display()
        )),
        None => say("1. Postgres: using the server from DATABASE_URL, the libpq environment or 127.0.0.1:5432"),
    }
    let db = TempDb::create(&server, "mana_ai_demo").await?;
    say(format!(
        "   database {} with sync_changes (row-level security forced); dropped on exit",
        db.name
    ));
    let pool = crate::db::pool(&db.url_as(SERVICE_ROLE), 8, "mana-ai-demo", None)?;
    let outcome = show(&db, &pool, keep_running, &stop).await;
    pool.close();
    drop(db);
    say("Done: database dropped.");
    outcome
}

/// Steps 2 to 8, then serving until `stop` when `keep_running`.
async fn show(
    db: &TempDb,
    pool: &deadpool_postgres::Pool,
    keep_running: bool,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let admin = db.admin().await?;
    crate::triggers::install(&admin, SERVICE_ROLE).await?;
    crate::db::migrate::migrate(&mut *pool.get().await?).await?;
    say(format!("2. Installed triggers/install.sql for role {SERVICE_ROLE} (NOSUPERUSER NOBYPASSRLS) and the migrations"));

    let key = GrantKey::from_pkcs8_pem(DEMO_KEY_PEM).context("the demo key")?;
    let due_at = Utc::now() + chrono::Duration::seconds(3);
    seed(db, &key, due_at).await?;
    say(format!("3. Seeded {USER}: agent \"Recherche-Assistentin\", a goal, an encrypted note under a grant, and mission {MISSION} due at {}", iso_millis(due_at)));

    let (config, setup, mut prompts) = service_setup(db)?;
    let metrics = Metrics::new();
    let mut lead = Leadership::start(
        &config,
        pool.clone(),
        metrics.clone(),
        setup.build(&config, &metrics)?,
        uuid::Uuid::new_v4(),
        Default::default(),
    )
    .await?;
    let walked = tokio::select! {
        walked = walk_through(db, pool, &mut lead, &mut prompts, &metrics, llm_wait(&config)) => walked,
        _ = stop.cancelled() => {
            say("Stopped by a signal.");
            Ok(())
        }
    };
    if walked.is_ok() && keep_running && !stop.is_cancelled() {
        serve_until(stop, &config, pool, &lead, metrics).await?;
    }
    lead.stop().await;
    walked
}

/// The demo's service configuration: its database, its key, and the
/// caller's LLM settings; the offline planner without `MANA_LLM_URL`.
fn service_setup(db: &TempDb) -> anyhow::Result<(Config, DemoSetup, PromptReceiver)> {
    let llm = std::env::var("MANA_LLM_URL")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let mut env: Vec<(&str, String)> = vec![
        ("SYNC_DATABASE_URL", db.url_as(SERVICE_ROLE)),
        ("MANA_AI_PRIVATE_KEY_PEM", DEMO_KEY_PEM.to_string()),
    ];
    if llm.is_none() {
        env.push(("MANA_AI_PLANNER", "offline".into()));
    }
    for var in [
        "MANA_LLM_URL",
        "MANA_LLM_MODEL",
        "MANA_LLM_TIMEOUT_SECS",
        "MANA_LLM_MAX_ATTEMPTS",
        "MANA_LLM_STRUCTURED",
        "MANA_SERVICE_KEY",
        "PORT",
        "MANA_API_URL",
    ] {
        if let Ok(v) = std::env::var(var) {
            env.push((var, v));
        }
    }
    let config =
        Config::from_lookup(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))?;
    match &llm {
        Some(url) => say(format!("4. Planner: the LLM at {url}")),
        None => {
            say("4. Planner: OFFLINE (no MANA_LLM_URL): a fixed example plan, not a model's answer")
        }
    }
    let (prompt_tx, prompts) = mpsc::unbounded_channel();
    let setup = DemoSetup {
        research: std::env::var_os("MANA_API_URL").is_some(),
        prompt_tx,
    };
    Ok((config, setup, prompts))
}

type PromptReceiver = mpsc::UnboundedReceiver<crate::run::PromptSummary>;

/// What the demo changes in the service's runner set-up.
struct DemoSetup {
    research: bool,
    prompt_tx: mpsc::UnboundedSender<crate::run::PromptSummary>,
}

impl DemoSetup {
    fn build(self, config: &Config, metrics: &Metrics) -> anyhow::Result<RunnerSetup> {
        let mut setup = RunnerSetup::from_config(config, metrics)?;
        if !self.research {
            setup.research = None;
        }
        setup.prompt_observer = Some(self.prompt_tx);
        Ok(setup)
    }
}

/// Steps 5 to 8: the snapshot, the timer, the prompt, the write-back, the audit.
async fn walk_through(
    db: &TempDb,
    pool: &deadpool_postgres::Pool,
    lead: &mut Leadership,
    prompts: &mut PromptReceiver,
    metrics: &Metrics,
    llm_wait: Duration,
) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(30), lead.reactor.wait_listening())
        .await
        .context("the listener did not register within 30 s")?;
    let snapshot = wait_for(Duration::from_secs(30), || snapshot_line(pool))
        .await
        .context("the mission never reached its snapshot")?;
    say(format!("5. Snapshot: {snapshot}"));
    match lead.reactor.wheel.armed_at(USER, MISSION).await {
        Some(at) => say(format!(
            "   timer armed for {} (in {:.1} s)",
            iso_millis(at),
            (at - Utc::now()).num_milliseconds() as f64 / 1000.0
        )),
        None => say("   timer: fired already"),
    }
    let summary = tokio::time::timeout(Duration::from_secs(60), prompts.recv())
        .await
        .context("the mission did not run within 60 s")?
        .context("the runner stopped")?;
    say_prompt(&summary);
    let written = wait_for(llm_wait, || written_iteration(db))
        .await
        .with_context(|| format!("no iteration was written within {} s", llm_wait.as_secs()))?;
    say("7. Written back to sync_changes (client mana-ai-runner):");
    say(serde_json::to_string_pretty(&written).unwrap_or_default());
    for line in audit_lines(pool).await? {
        say(format!("8. Audit: {line}"));
    }
    say(format!(
        "   plans written: {}, decrypts: {}",
        metrics.plans_written_back.get(),
        metrics.decrypts.with_label_values(&["notes"]).get()
    ));
    Ok(())
}

fn say_prompt(summary: &crate::run::PromptSummary) {
    say(format!(
        "6. Prompt: system {} chars, user {} chars, {} tools{}",
        summary.system_chars,
        summary.user_chars,
        summary.tools,
        if summary.offline {
            " (offline planner)"
        } else {
            ""
        }
    ));
    for input in &summary.inputs {
        say(format!("   input {input}"));
    }
}

/// `--keep-running`: HTTP on `PORT` until `stop`.
async fn serve_until(
    stop: &CancellationToken,
    config: &Config,
    pool: &deadpool_postgres::Pool,
    lead: &Leadership,
    metrics: std::sync::Arc<Metrics>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port))
        .await
        .with_context(|| format!("PORT {}", config.port))?;
    say(format!(
        "Serving http://{} (GET /health, /metrics; Ctrl-C or SIGTERM stops and cleans up)",
        listener.local_addr()?
    ));
    let backend = crate::backend::ServiceBackend::new(pool.clone(), metrics.clone(), true);
    backend.set_leading(Some(crate::backend::Leading {
        runner: lead.runner.clone(),
        wheel: lead.reactor.wheel.clone(),
    }));
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(crate::http::serve(
        listener,
        backend,
        crate::http::HttpSettings::from_config(config),
        metrics,
        http_stop.clone(),
    ));
    stop.cancelled().await;
    http_stop.cancel();
    let _ = http.await;
    Ok(())
}

async fn insert(
    db: &TempDb,
    app: &str,
    table: &str,
    record: &str,
    data: Value,
) -> anyhow::Result<()> {
    let mut client = db.connect_as(SYNC_ROLE).await?;
    let tx = crate::db::begin_user(&mut client, USER).await?;
    tx.execute(
        "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, client_id)
         VALUES ($1, $2, $3, $4, 'insert', $5, 'demo-browser')",
        &[&app, &table, &record, &USER, &data],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// What a browser would have written: an agent, a goal, an encrypted note,
/// and a mission that lists both, with a grant over the note.
async fn seed(db: &TempDb, key: &GrantKey, due_at: chrono::DateTime<Utc>) -> anyhow::Result<()> {
    let master: [u8; 32] = rand::random();
    let (tables, ids) = (["notes"], ["notes:note-1"]);
    let mdk = derive_mdk(&master, MISSION, &tables, &ids);
    let text = encrypt_value(
        &mdk,
        &json!("Montag: Zahnarzt 9 Uhr. Mittwoch: Abgabe Steuererklärung."),
        rand::random(),
    );
    let title = encrypt_value(&mdk, &json!("Termine dieser Woche"), rand::random());
    let now = Utc::now();
    let grant = mint_grant(
        &key.public_key(),
        &master,
        MISSION,
        &tables,
        &ids,
        now,
        now + chrono::Duration::hours(1),
    )
    .map_err(|_| anyhow::anyhow!("wrapping the demo grant failed"))?;
    insert(db, "ai", "agents", AGENT, json!({"name": "Recherche-Assistentin", "role": "Hilft bei der Wochenplanung", "state": "active", "maxConcurrentMissions": 1})).await?;
    insert(db, "companion", "companionGoals", "goal-1", json!({"title": "Jeden Tag 30 Minuten lesen", "currentValue": 3, "target": {"value": 7, "period": "week"}})).await?;
    insert(
        db,
        "notes",
        "notes",
        "note-1",
        json!({"title": title, "content": text}),
    )
    .await?;
    insert(
        db,
        "ai",
        "aiMissions",
        MISSION,
        json!({
            "title": "Wochenplanung",
            "conceptMarkdown": "Jeden Montag die Woche planen.",
            "objective": "Eine ruhige, machbare Woche planen",
            "state": "active",
            "agentId": AGENT,
            "cadence": {"kind": "weekly", "dayOfWeek": 1, "atHour": 8},
            "nextRunAt": iso_millis(due_at),
            "iterations": [],
            "inputs": [
                {"module": "goals", "table": "companionGoals", "id": "goal-1"},
                {"module": "notes", "table": "notes", "id": "note-1"}
            ],
            "grant": serde_json::to_value(&grant)?,
            "createdAt": iso_millis(now),
        }),
    )
    .await
}

/// How long the demo waits for the written iteration: every LLM attempt
/// may take the whole `MANA_LLM_TIMEOUT_SECS`, plus the backoffs between
/// them (at most 10 s each) and 30 s for the rest of the run.
fn llm_wait(config: &Config) -> Duration {
    let attempts = config.llm_max_attempts.max(1);
    config.llm_timeout * attempts
        + Duration::from_secs(10) * (attempts - 1)
        + Duration::from_secs(30)
}

async fn wait_for<T, F, Fut>(limit: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(found) = probe().await? {
            return Ok(found);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("gave up after {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn snapshot_line(pool: &deadpool_postgres::Pool) -> anyhow::Result<Option<String>> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT state, next_run_at, agent_id, change_count FROM mana_ai.mission_snapshots WHERE user_id = $1 AND mission_id = $2",
            &[&USER, &MISSION],
        )
        .await?;
    Ok(row.map(|r| {
        format!(
            "state {}, nextRunAt {}, agent {}, {} change(s) folded",
            r.get::<_, Option<String>>(0).unwrap_or_default(),
            r.get::<_, Option<String>>(1).unwrap_or_default(),
            r.get::<_, Option<String>>(2).unwrap_or_default(),
            r.get::<_, i64>(3)
        )
    }))
}

async fn written_iteration(db: &TempDb) -> anyhow::Result<Option<Value>> {
    let mut client = db.connect_as(SYNC_ROLE).await?;
    let tx = crate::db::begin_user(&mut client, USER).await?;
    let row = tx
        .query_opt(
            "SELECT data, actor FROM sync_changes WHERE record_id = $1 AND client_id = 'mana-ai-runner' ORDER BY created_at DESC LIMIT 1",
            &[&MISSION],
        )
        .await?;
    Ok(row.map(|r| {
        let (data, actor): (Value, Value) = (r.get(0), r.get(1));
        json!({"nextRunAt": data["nextRunAt"], "iteration": data["iterations"].as_array().and_then(|a| a.last()).cloned(), "actor": actor})
    }))
}

async fn audit_lines(pool: &deadpool_postgres::Pool) -> anyhow::Result<Vec<String>> {
    let mut client = pool.get().await?;
    let entries = crate::audit::read(&mut client, USER, Some(MISSION), 10).await?;
    Ok(entries
        .iter()
        .map(|e| {
            format!(
                "{} {}:{} {}",
                e.status,
                e.table_name,
                e.record_id,
                e.reason.as_deref().unwrap_or("")
            )
        })
        .collect())
}
