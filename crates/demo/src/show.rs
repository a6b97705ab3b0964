//! The demo's steps: the database, the seed, the service, the run.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::Utc;
use mana_ai::config::Config;
use mana_ai::crypto::GrantKey;
use mana_ai::service::{App, AppOptions, RunnerSetup};
use mana_ai::sync::fold::iso_millis;
use pgtemp::{PgServer, TempDb, SERVICE_ROLE};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::probe::{audit_lines, say_prompt, snapshot_line, wait_for, written_iteration};
use crate::say;
use crate::seed::{self, MISSION, USER};

type PromptReceiver = mpsc::UnboundedReceiver<mana_ai::run::PromptSummary>;

/// Runs the demo; with `keep_running` it then serves HTTP until `shutdown`.
/// `shutdown` (SIGTERM or SIGINT) at any step ends it the same way: the
/// service stopped, the database dropped, exit 0.
pub async fn run(
    keep_running: bool,
    generation: crate::Generation,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if std::env::var_os("SYNC_DATABASE_URL").is_some() {
        bail!("mana-ai-demo makes its own throwaway database; unset SYNC_DATABASE_URL (use DATABASE_URL to point it at a Postgres superuser URL)");
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
    let shape = match generation {
        crate::Generation::Current => {
            db.use_current_generation().await?;
            "today's generation: field_meta, origin, space_id"
        }
        crate::Generation::V06 => "mana v0.6's generation: field_timestamps",
    };
    say(format!(
        "   database {} with sync_changes of {shape} (row-level security forced); dropped on exit",
        db.name
    ));
    let outcome = show(&db, keep_running, &stop).await;
    drop(db);
    say("Done: database dropped.");
    outcome
}

/// Steps 2 to 8, then serving until `stop` when `keep_running`.
async fn show(db: &TempDb, keep_running: bool, stop: &CancellationToken) -> anyhow::Result<()> {
    let admin = db.admin().await?;
    mana_ai::triggers::install(&admin, SERVICE_ROLE).await?;
    mana_ai::db::migrate::migrate(&mut db.connect_as(SERVICE_ROLE).await?).await?;
    say(format!("2. Installed triggers/install.sql for role {SERVICE_ROLE} (NOSUPERUSER NOBYPASSRLS) and the migrations"));

    let key_pem = seed::make_key()?;
    let key = GrantKey::from_pkcs8_pem(&key_pem).context("the demo key")?;
    let due_at = Utc::now() + chrono::Duration::seconds(3);
    seed::seed(db, &key, due_at).await?;
    say(format!("3. Seeded {USER}: agent \"Recherche-Assistentin\", a goal, an encrypted note under a grant, and mission {MISSION} due at {}", iso_millis(due_at)));

    let (config, options, mut prompts) = service_setup(db, &key_pem, keep_running)?;
    let llm_wait = llm_wait(&config);
    let app = App::build_with(config, options).await?;
    let walked = tokio::select! {
        walked = walk_through(db, &app, &mut prompts, llm_wait) => walked,
        _ = stop.cancelled() => {
            say("Stopped by a signal.");
            Ok(())
        }
    };
    if walked.is_ok() && keep_running && !stop.is_cancelled() {
        say(format!(
            "Serving http://{} (GET /health, /metrics; Ctrl-C or SIGTERM stops and cleans up)",
            app.address()
        ));
        stop.cancelled().await;
    }
    app.shutdown().await;
    walked
}

/// The demo's service configuration: its database, its key, and the
/// caller's LLM settings; the offline planner without `MANA_LLM_URL`. HTTP
/// on 127.0.0.1, at `PORT` with `--keep-running`, else on any free port.
fn service_setup(
    db: &TempDb,
    key_pem: &str,
    keep_running: bool,
) -> anyhow::Result<(Config, AppOptions, PromptReceiver)> {
    let llm = std::env::var("MANA_LLM_URL")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let mut env: Vec<(&str, String)> = vec![
        ("SYNC_DATABASE_URL", db.url_as(SERVICE_ROLE)),
        ("MANA_AI_PRIVATE_KEY_PEM", key_pem.to_string()),
    ];
    if llm.is_none() {
        env.push(("MANA_AI_PLANNER", "offline".into()));
    }
    match std::env::var("PORT") {
        Ok(port) if keep_running => env.push(("PORT", port)),
        _ if keep_running => {}
        _ => env.push(("PORT", "0".into())),
    }
    for var in [
        "MANA_LLM_URL",
        "MANA_LLM_MODEL",
        "MANA_LLM_TIMEOUT_SECS",
        "MANA_LLM_MAX_ATTEMPTS",
        "MANA_LLM_STRUCTURED",
        "MANA_SERVICE_KEY",
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
    let research = std::env::var_os("MANA_API_URL").is_some();
    let options = AppOptions {
        http_host: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        customize_runner: Some(Arc::new(move |setup: &mut RunnerSetup| {
            if !research {
                setup.research = None;
            }
            setup.prompt_observer = Some(prompt_tx.clone());
        })),
    };
    Ok((config, options, prompts))
}

/// Steps 5 to 8: the snapshot, the timer, the prompt, the write-back, the audit.
async fn walk_through(
    db: &TempDb,
    app: &App,
    prompts: &mut PromptReceiver,
    llm_wait: Duration,
) -> anyhow::Result<()> {
    let (pool, metrics) = (&app.context().pool, &app.context().metrics);
    let mut term = tokio::time::timeout(Duration::from_secs(30), app.wait_leading())
        .await
        .ok()
        .flatten()
        .context("the service did not lead within 30 s")?;
    tokio::time::timeout(Duration::from_secs(30), term.wait_listening())
        .await
        .context("the listener did not register within 30 s")?;
    let snapshot = wait_for(Duration::from_secs(30), || snapshot_line(pool))
        .await
        .context("the mission never reached its snapshot")?;
    say(format!("5. Snapshot: {snapshot}"));
    match term.wheel.armed_at(USER, MISSION).await {
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

/// How long the demo waits for the written iteration: every LLM attempt
/// may take the whole `MANA_LLM_TIMEOUT_SECS`, plus the backoffs between
/// them (at most 10 s each) and 30 s for the rest of the run.
fn llm_wait(config: &Config) -> Duration {
    let attempts = config.planner.llm_max_attempts.max(1);
    config.planner.llm_timeout * attempts
        + Duration::from_secs(10) * (attempts - 1)
        + Duration::from_secs(30)
}
