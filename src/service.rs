//! `mana-ai serve`: everything one process runs, wired together.
//!
//! Any number of instances may run against one database. Each serves HTTP;
//! one leads, through a session advisory lock held on a dedicated
//! connection, and only the leader listens, applies and runs missions. The
//! others retry the lock every `MANA_AI_LEADER_RETRY_SECS`. A leader that
//! loses its lock connection stops at once, abandoning runs in flight and
//! giving their claims back (another may already lead; the slot claim's
//! token keeps a zombie from writing). Every term claims slots under a fresh
//! id, so a process that leads again takes over what its earlier term left.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backend::{Leading, ServiceBackend};
use crate::config::Config;
use crate::crypto::GrantKey;
use crate::db;
use crate::db::tls::{self, PgTls};
use crate::metrics::Metrics;
use crate::planner::llm::{LlmClient, LlmConfig, ServiceKey};
use crate::planner::research::{ResearchClient, DEFAULT_DISCOVER_TIMEOUT, DEFAULT_SEARCH_TIMEOUT};
use crate::planner::ToolCatalog;
use crate::reactor::{self, Reactor};
use crate::run::{Planner, Runner, RunnerDeps};
use crate::schedule::clock::{Clock, DbClock};
use crate::schedule::wheel::WheelHandle;

/// Advisory lock key of the leader ("manaaild").
pub const LEADER_LOCK: i64 = 0x6d61_6e61_6169_6c64;

/// Loads the grant key: a bad or missing key turns grants off with a
/// warning, or stops the start when `MANA_AI_REQUIRE_GRANTS=true`.
pub fn load_grant_key(config: &Config) -> anyhow::Result<Option<GrantKey>> {
    if config.private_key_pem.is_empty() {
        if config.require_grants {
            anyhow::bail!("MANA_AI_PRIVATE_KEY_PEM: is not set, and MANA_AI_REQUIRE_GRANTS=true");
        }
        tracing::info!("MANA_AI_PRIVATE_KEY_PEM not set: mission grants are off");
        return Ok(None);
    }
    match GrantKey::from_pkcs8_pem(config.private_key_pem.expose()) {
        Ok(key) => Ok(Some(key)),
        Err(e) if config.require_grants => Err(anyhow::anyhow!(
            "MANA_AI_PRIVATE_KEY_PEM: {e}{}",
            pem_hint(config.private_key_pem.expose())
        )),
        Err(e) => {
            let hint = pem_hint(config.private_key_pem.expose());
            tracing::warn!(error = %format!("{e}{hint}"), "MANA_AI_PRIVATE_KEY_PEM unusable: mission grants are off");
            Ok(None)
        }
    }
}

/// A value that looks like a file path where the PEM text was expected.
fn pem_hint(value: &str) -> &'static str {
    let value = value.trim();
    if !value.contains("-----") && !value.contains('\n') && value.len() < 4096 {
        "; the variable holds the PEM text itself, not a file path \
         (MANA_AI_PRIVATE_KEY_PEM=\"$(cat key.pem)\")"
    } else {
        ""
    }
}

/// Loads the tool catalog: `MANA_AI_TOOL_CATALOG` or the built-in one.
pub fn load_catalog(config: &Config) -> anyhow::Result<ToolCatalog> {
    match &config.tool_catalog {
        Some(path) => ToolCatalog::from_json_file(path)
            .map_err(|e| anyhow::anyhow!("MANA_AI_TOOL_CATALOG: {e}")),
        None => Ok(ToolCatalog::builtin()),
    }
}

/// The LLM planner of a config.
pub fn llm_planner(config: &Config, metrics: &Metrics) -> anyhow::Result<Planner> {
    let mut llm = LlmConfig::new(
        config.llm_url.clone(),
        ServiceKey::new(config.service_key.expose()),
        config.llm_model.clone(),
    );
    llm.timeout = config.llm_timeout;
    llm.max_attempts = config.llm_max_attempts;
    llm.max_tokens = (config.llm_max_tokens > 0).then_some(config.llm_max_tokens);
    llm.structured = config.llm_structured;
    let client = LlmClient::new(llm)
        .map_err(|e| anyhow::anyhow!("MANA_LLM_URL: {e}"))?
        .with_duration_histogram(metrics.planner_request_duration.clone());
    Ok(Planner::Llm(Box::new(client)))
}

/// Everything the runner needs that comes from configuration, checked at
/// start so a bad catalog or key stops the process with its reason.
pub struct RunnerSetup {
    pub planner: Planner,
    pub catalog: ToolCatalog,
    pub grant_key: Option<GrantKey>,
    pub research: Option<ResearchClient>,
    /// See [`RunnerDeps::prompt_observer`].
    pub prompt_observer: Option<mpsc::UnboundedSender<crate::run::PromptSummary>>,
}

impl RunnerSetup {
    pub fn from_config(config: &Config, metrics: &Metrics) -> anyhow::Result<RunnerSetup> {
        let planner = if config.offline_planner {
            tracing::warn!(
                "MANA_AI_PLANNER=offline: missions get a fixed example plan, not a model's answer"
            );
            Planner::Offline
        } else {
            llm_planner(config, metrics)?
        };
        Ok(RunnerSetup {
            planner,
            catalog: load_catalog(config)?,
            grant_key: load_grant_key(config)?,
            research: Some(
                ResearchClient::new(
                    &config.api_url,
                    DEFAULT_DISCOVER_TIMEOUT,
                    DEFAULT_SEARCH_TIMEOUT,
                )
                .map_err(|e| anyhow::anyhow!("MANA_API_URL: {e}"))?,
            ),
            prompt_observer: None,
        })
    }

    pub fn into_runner(
        self,
        config: &Config,
        pool: deadpool_postgres::Pool,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        wheel: WheelHandle,
        instance_id: uuid::Uuid,
    ) -> Arc<Runner> {
        Runner::new(RunnerDeps {
            pool,
            metrics,
            clock,
            wheel,
            planner: self.planner,
            research: self.research,
            catalog: self.catalog,
            grant_key: self.grant_key,
            default_tz: config.default_timezone,
            max_concurrent: config.max_concurrent_runs,
            fair_limits: config.fair_limits,
            max_failures: config.max_failures,
            max_field_bytes: config.max_field_bytes,
            backoff: config.retry_backoff.clone(),
            instance_id,
            prompt_observer: self.prompt_observer,
            failpoint: std::env::var("MANA_AI_FAILPOINT").ok(),
        })
    }
}

/// What a leader runs: the reactor, retention (see `crate::retention`) and,
/// with `TICK_ENABLED`, the runner.
pub struct Leadership {
    pub reactor: Reactor,
    pub runner: Option<Arc<Runner>>,
    runner_task: Option<tokio::task::JoinHandle<()>>,
    retention_task: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    abandon: CancellationToken,
}

impl Leadership {
    /// Starts the reactor and the runner on `pool`. `term_id` marks this
    /// term's slot claims; it must be fresh for every term, so a claim left
    /// `running` by an earlier term of the same process is taken over.
    pub async fn start(
        config: &Config,
        pool: deadpool_postgres::Pool,
        metrics: Arc<Metrics>,
        setup: RunnerSetup,
        term_id: uuid::Uuid,
        hooks: reactor::Hooks,
    ) -> anyhow::Result<Leadership> {
        let stop = CancellationToken::new();
        let abandon = CancellationToken::new();
        let clock = Arc::new(DbClock::new());
        let (due_tx, due_rx) = mpsc::unbounded_channel();
        let reactor = reactor::start(
            config,
            pool.clone(),
            metrics.clone(),
            clock.clone(),
            due_tx,
            stop.child_token(),
            hooks,
        )
        .await?;
        let retention_task = crate::retention::spawn(
            pool.clone(),
            metrics.clone(),
            config.sweep_interval,
            config.retention_days,
            stop.child_token(),
        );
        let (runner, runner_task) = if config.tick_enabled {
            let runner =
                setup.into_runner(config, pool, metrics, clock, reactor.wheel.clone(), term_id);
            let task = tokio::spawn(runner.clone().run_loop(
                due_rx,
                stop.child_token(),
                abandon.clone(),
                config.shutdown_grace,
            ));
            (Some(runner), Some(task))
        } else {
            (None, None)
        };
        Ok(Leadership {
            reactor,
            runner,
            runner_task,
            retention_task,
            stop,
            abandon,
        })
    }

    /// Stops taking work, lets runs finish up to the grace period, stops the reactor.
    pub async fn stop(self) {
        self.wind_down().await;
    }

    /// Stops at once after the leader lock was lost: another instance may
    /// already lead and take over these runs, so waiting would only spend
    /// tokens on plans whose write the claim token refuses anyway.
    pub async fn abandon(self) {
        self.abandon.cancel();
        self.wind_down().await;
    }

    async fn wind_down(self) {
        self.stop.cancel();
        if let Some(task) = self.runner_task {
            let _ = task.await;
        }
        let _ = self.retention_task.await;
        self.reactor.stop().await;
    }
}

/// Holds the leader lock on its own connection; resolves when it is lost.
async fn acquire_leadership(
    config: &Config,
    stop: &CancellationToken,
) -> Option<(tokio_postgres::Client, tls::ConnectionTask)> {
    loop {
        let attempt = async {
            let mut pg: tokio_postgres::Config = config.database_url.expose().parse()?;
            pg.application_name("mana-ai-leader")
                .connect_timeout(Duration::from_secs(10));
            let tls = PgTls::for_config(&pg, config.pg_root_cert.as_deref())?;
            let (client, task) = tls::connect(&pg, &tls, |_| {}).await?;
            let locked: bool = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                .await?
                .get(0);
            anyhow::Ok(locked.then_some((client, task)))
        };
        match attempt.await {
            Ok(Some(held)) => return Some(held),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "leader lock attempt failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return None,
            _ = tokio::time::sleep(config.leader_retry) => {}
        }
    }
}

/// Runs the service until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let instance_id = uuid::Uuid::new_v4();
    let pool = db::pool(
        config.database_url.expose(),
        config.pool_size,
        "mana-ai",
        config.pg_root_cert.as_deref(),
    )?;
    {
        let mut client = db::errors::first_connection(&pool, "SYNC_DATABASE_URL").await?;
        crate::privilege::check_service_role(&**client, config.allow_privileged).await?;
        let report = db::migrate::migrate(&mut client).await?;
        tracing::info!(applied = ?report.applied, already = report.already, "migrations");
    }
    // Checked before leading, so a bad catalog or key fails the start.
    drop(RunnerSetup::from_config(&config, &metrics)?);
    let backend = ServiceBackend::new(pool.clone(), metrics.clone(), config.tick_enabled);
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", config.port))
        .await
        .with_context(|| format!("PORT: cannot listen on {}", config.port))?;
    tracing::info!(addr = %listener.local_addr()?, "HTTP listening");
    let stop = CancellationToken::new();
    let http = tokio::spawn(crate::http::serve(
        listener,
        backend.clone(),
        crate::http::HttpSettings::from_config(&config),
        metrics.clone(),
        stop.clone(),
    ));
    let leading = tokio::spawn(lead_while_possible(
        config.clone(),
        pool.clone(),
        metrics.clone(),
        backend,
        instance_id,
        stop.clone(),
    ));
    tracing::info!(%instance_id, tick_enabled = config.tick_enabled, "mana-ai started");
    shutdown.await;
    tracing::info!("shutting down: no new runs; waiting for runs in flight");
    stop.cancel();
    let _ = leading.await;
    match http.await {
        Ok(Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "HTTP server stopped with an error")
        }
        Err(e) => tracing::warn!(error = %e, "HTTP server task failed"),
        Ok(Ok(())) => {}
    }
    pool.close();
    tracing::info!("stopped");
    Ok(())
}

/// Becomes leader whenever possible, leads until the lock or the process goes.
pub async fn lead_while_possible(
    config: Config,
    pool: deadpool_postgres::Pool,
    metrics: Arc<Metrics>,
    backend: Arc<ServiceBackend>,
    instance_id: uuid::Uuid,
    stop: CancellationToken,
) {
    while let Some((lock_client, mut lock_task)) = acquire_leadership(&config, &stop).await {
        let term_id = uuid::Uuid::new_v4();
        tracing::info!(%instance_id, %term_id, "leading");
        let leadership = match RunnerSetup::from_config(&config, &metrics) {
            Ok(setup) => {
                Leadership::start(
                    &config,
                    pool.clone(),
                    metrics.clone(),
                    setup,
                    term_id,
                    reactor::Hooks::default(),
                )
                .await
            }
            Err(e) => Err(e),
        };
        let leadership = match leadership {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "could not start leading; retrying");
                drop(lock_client);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(config.leader_retry) => continue,
                }
            }
        };
        metrics.is_leader.set(1);
        backend.set_leading(Some(Leading {
            runner: leadership.runner.clone(),
            wheel: leadership.reactor.wheel.clone(),
        }));
        let lock_lost = tokio::select! {
            _ = stop.cancelled() => false,
            _ = &mut lock_task => true,
        };
        metrics.is_leader.set(0);
        backend.set_leading(None);
        if lock_lost {
            metrics.leader_lock_lost.inc();
            tracing::error!(%term_id, "leader lock connection lost; stepping down now");
            leadership.abandon().await;
        } else {
            leadership.stop().await;
        }
        drop(lock_client);
        if stop.is_cancelled() {
            return;
        }
    }
}
