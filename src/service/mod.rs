//! `mana-ai serve`: the composition root. [`App::build`] turns a [`Config`]
//! into a running service; `main`, the demo and the in-process tests all
//! start it this way.
//!
//! Any number of instances may run against one database. Each serves HTTP;
//! one leads, through a session advisory lock held on a dedicated
//! connection (`store::leader`), and only the leader listens, applies and
//! runs missions. The others retry the lock every
//! `MANA_AI_LEADER_RETRY_SECS`. A leader that loses its lock connection
//! stops at once, abandoning runs in flight and giving their claims back
//! (another may already lead; the slot claim's token keeps a zombie from
//! writing). Every term claims slots under a fresh id, so a process that
//! leads again takes over what its earlier term left.

mod leader;
mod setup;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use deadpool_postgres::Pool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::ServiceBackend;
use crate::config::Config;
use crate::db;
use crate::metrics::Metrics;
use crate::reactor::supervisor::{supervise, Restart, TaskName};
use crate::schedule::clock::Clock;
use crate::schedule::wheel::WheelHandle;

pub use crate::backend::LeaderView;
pub use crate::store::leader::LEADER_LOCK;
pub use leader::Leadership;
pub use setup::{llm_planner, load_catalog, load_grant_key, RunnerSetup};

/// What every part of the service shares: its configuration, the pool and
/// the metrics. Built once per process (tests build their own).
#[derive(Clone)]
pub struct ServiceContext {
    pub config: Config,
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
}

/// One leadership term: its id (fresh per term), clock and wheel.
pub struct Term {
    pub id: uuid::Uuid,
    pub clock: Arc<dyn Clock>,
    pub wheel: WheelHandle,
}

/// Changes every term's runner set-up (the demo: its prompt observer).
pub type Customize = Arc<dyn Fn(&mut RunnerSetup) + Send + Sync>;

/// How [`App::build_with`] differs from a plain `serve`.
#[derive(Clone, Default)]
pub struct AppOptions {
    /// Where HTTP listens; `0.0.0.0` when unset (the demo: `127.0.0.1`).
    pub http_host: Option<IpAddr>,
    /// Applied to every term's [`RunnerSetup`].
    pub customize_runner: Option<Customize>,
}

/// A running service: HTTP bound, the bid for leadership under way.
pub struct App {
    ctx: ServiceContext,
    addr: SocketAddr,
    stop: CancellationToken,
    http: JoinHandle<()>,
    leading: JoinHandle<()>,
    terms: watch::Receiver<Option<LeaderView>>,
}

impl App {
    /// Starts `serve` from `config`: pool, role check, migrations, HTTP on
    /// `PORT` (0: any free port, see [`App::address`]), leadership.
    pub async fn build(config: Config) -> anyhow::Result<App> {
        App::build_with(config, AppOptions::default()).await
    }

    pub async fn build_with(config: Config, options: AppOptions) -> anyhow::Result<App> {
        let instance_id = uuid::Uuid::new_v4();
        let (ctx, sync_log, catalog) = context(config).await?;
        let tick_enabled = ctx.config.runner.tick_enabled;
        let (terms_tx, terms) = watch::channel(None);
        let backend = ServiceBackend::new(
            ctx.pool.clone(),
            ctx.metrics.clone(),
            tick_enabled,
            terms.clone(),
        );
        backend.set_sync_log(sync_log);
        backend.set_tool_catalog(catalog);
        let host = options
            .http_host
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let port = ctx.config.http.port;
        let listener = tokio::net::TcpListener::bind((host, port))
            .await
            .with_context(|| format!("PORT: cannot listen on {port}"))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "HTTP listening");
        for warning in ctx.config.startup_warnings() {
            tracing::warn!("{warning}");
        }
        let stop = CancellationToken::new();
        let http = supervised_http(listener, &backend, &ctx, &stop)?;
        let candidate = leader::Candidate {
            ctx: ctx.clone(),
            instance_id,
            customize: options.customize_runner,
            terms: terms_tx,
        };
        let leading = tokio::spawn(candidate.run(stop.clone()));
        tracing::info!(%instance_id, tick_enabled, "mana-ai started");
        Ok(App {
            ctx,
            addr,
            stop,
            http,
            leading,
            terms,
        })
    }

    /// The address HTTP is bound to (its port is the real one when `PORT=0`).
    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The configuration, pool and metrics the service runs with.
    pub fn context(&self) -> &ServiceContext {
        &self.ctx
    }

    /// Waits until this process leads and returns the term's view; `None`
    /// once the service stopped bidding (it was shut down).
    pub async fn wait_leading(&self) -> Option<LeaderView> {
        let mut terms = self.terms.clone();
        loop {
            if let Some(view) = terms.borrow_and_update().clone() {
                return Some(view);
            }
            terms.changed().await.ok()?;
        }
    }

    /// Stops: no new runs, runs in flight finish up to the grace period, the
    /// rest is released; HTTP stops and the pool closes.
    pub async fn shutdown(self) {
        tracing::info!("shutting down: no new runs; waiting for runs in flight");
        self.stop.cancel();
        let _ = self.leading.await;
        if let Err(e) = self.http.await {
            tracing::warn!(error = %e, "HTTP server's supervisor failed");
        }
        self.ctx.pool.close();
        tracing::info!("stopped");
    }
}

/// The HTTP server on `listener`, supervised like every long-running task:
/// started again on the same listener if it ends or panics before `stop`.
fn supervised_http(
    listener: tokio::net::TcpListener,
    backend: &Arc<ServiceBackend>,
    ctx: &ServiceContext,
    stop: &CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let settings = crate::http::HttpSettings::from_config(&ctx.config);
    let server =
        crate::http::HttpServer::new(listener, backend.clone(), settings, ctx.metrics.clone())?;
    let server = Arc::new(server);
    let make = {
        let stop = stop.clone();
        move || server.clone().run(stop.clone())
    };
    let (name, restart) = (TaskName::Http, Restart::TASK);
    Ok(supervise(
        name,
        make,
        restart,
        backend.supervision(),
        stop.clone(),
    ))
}

/// The context a service runs with: the database prepared, the generation
/// of `sync_changes` it found (in the config and as a metric), and the tool
/// catalog in force, checked before leading so a bad catalog or key fails
/// the start.
async fn context(
    mut config: Config,
) -> anyhow::Result<(ServiceContext, crate::sync::generation::LogShape, String)> {
    let metrics = Metrics::new();
    let (pool, sync_log) = prepare_database(&config).await?;
    config.generation = sync_log.generation;
    metrics
        .sync_log_info
        .with_label_values(&[sync_log.generation.as_str()])
        .set(1);
    let setup = RunnerSetup::from_config(&config, &metrics)?;
    let catalog = setup.catalog.origin().to_string();
    tracing::info!(catalog = %catalog, tools = setup.catalog.len(), "tool catalog in force");
    let ctx = ServiceContext {
        config,
        pool,
        metrics,
    };
    Ok((ctx, sync_log, catalog))
}

/// The pool, after the first connection checked the role, applied the
/// migrations and found a `sync_changes` this build serves (its shape).
async fn prepare_database(
    config: &Config,
) -> anyhow::Result<(Pool, crate::sync::generation::LogShape)> {
    let pool = db::service_pool(
        config.db.url.expose(),
        config.db.pool_size,
        config.db.root_cert.as_deref(),
        config.db.allow_privileged,
    )?;
    let mut client = db::errors::first_connection(&pool, "SYNC_DATABASE_URL").await?;
    crate::privilege::check_service_role(&**client, config.db.allow_privileged).await?;
    let shape = sync_log_shape(&**client).await?;
    let report = db::migrate::migrate(&mut client).await?;
    tracing::info!(applied = ?report.applied, already = report.already, "migrations");
    Ok((pool, shape))
}

/// The generation of `public.sync_changes`, read from the catalog and
/// logged once; an error naming the columns when it is of neither shape.
pub async fn sync_log_shape(
    client: &impl tokio_postgres::GenericClient,
) -> anyhow::Result<crate::sync::generation::LogShape> {
    use crate::sync::generation::LogShape;
    let columns = crate::store::maintenance::sync_changes_columns(client)
        .await
        .context("reading the columns of public.sync_changes")?;
    if columns.is_empty() {
        anyhow::bail!(
            "SYNC_DATABASE_URL: table public.sync_changes not found (is this the mana_sync database?)"
        );
    }
    let shape = LogShape::from_columns(&columns)?;
    tracing::info!(sync_log = %shape, "sync_changes generation");
    Ok(shape)
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C): how `serve` and the demo stop.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
