//! `mana-ai serve`: everything one process runs, wired together.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::db;
use crate::metrics::Metrics;
use crate::reactor;
use crate::schedule::clock::DbClock;
use crate::schedule::wheel::DueMission;

/// Runs the service until `shutdown` resolves.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let pool = db::pool(config.database_url.expose(), config.pool_size, "mana-ai")?;
    {
        let mut client = pool
            .get()
            .await
            .context("connecting to SYNC_DATABASE_URL")?;
        let report = db::migrate::migrate(&mut client).await?;
        tracing::info!(applied = ?report.applied, already = report.already, "migrations");
    }
    let stop = CancellationToken::new();
    let (due_tx, due_rx) = mpsc::unbounded_channel();
    let reactor = reactor::start(
        &config,
        pool,
        metrics.clone(),
        Arc::new(DbClock::new()),
        due_tx,
        stop.clone(),
        reactor::Hooks::default(),
    )
    .await?;
    let runner = tokio::spawn(hand_off_due(due_rx, config.tick_enabled));
    tracing::info!(
        armed = reactor.rebuilt,
        tick_enabled = config.tick_enabled,
        "mana-ai running"
    );
    shutdown.await;
    tracing::info!("shutting down");
    reactor.stop().await;
    runner.abort();
    Ok(())
}

/// Where due missions go. Mission runs (planner, write-back) are the next
/// milestone; until then each due mission is logged with its ids.
async fn hand_off_due(mut due: mpsc::UnboundedReceiver<DueMission>, tick_enabled: bool) {
    while let Some(mission) = due.recv().await {
        if tick_enabled {
            tracing::info!(user_id = %mission.user_id, mission_id = %mission.mission_id, due_at = %mission.due_at, "mission due");
        } else {
            tracing::debug!(mission_id = %mission.mission_id, "mission due; TICK_ENABLED=false, not run");
        }
    }
}
