//! Section backfill: change-to-snapshot right after a backfill (a burst of
//! `--backfill N` changes, 10^6 by default, drained by a reactor that
//! started on empty snapshot tables), against the steady state of the same
//! database once its tables are vacuumed and analyzed. Autovacuum is off on
//! the snapshot tables meanwhile, so only the service's own ANALYZE
//! (`reactor::analyze`) can have refreshed their statistics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mana_ai::config::Config;
use mana_ai::metrics::Metrics;
use mana_ai::reactor::{applier::Applied, Reactor};
use pgtemp::SERVICE_ROLE;
use tokio::sync::mpsc;

use crate::paced::{self, MISSIONS, USERS};
use crate::report::{percentiles, Percentiles, Report, Target};
use crate::setup::{self, BenchDb};
use crate::Scale;

/// Changes per mission in the backfill. The measured missions are the paced
/// writes' (`paced::USERS` users' first `paced::MISSIONS`), all of them
/// part of the backfill.
const PER_MISSION: usize = 10;

type AppliedAt = Arc<Mutex<HashMap<uuid::Uuid, Instant>>>;

fn config(db: &pgtemp::TempDb, analyze_after: Option<u64>) -> anyhow::Result<Config> {
    let mut env: HashMap<&str, String> = HashMap::from([
        ("SYNC_DATABASE_URL", db.url_as(SERVICE_ROLE)),
        ("MANA_AI_SWEEP_INTERVAL_SECS", "3600".into()),
        ("MANA_AI_LISTEN_HEARTBEAT_SECS", "30".into()),
    ]);
    if let Some(n) = analyze_after {
        env.insert("MANA_AI_ANALYZE_AFTER_ROWS", n.to_string());
    }
    Ok(Config::from_lookup(|k| env.get(k).cloned())?)
}

pub async fn after_backfill(
    server: &pgtemp::PgServer,
    scale: &Scale,
    report: &mut Report,
) -> anyhow::Result<()> {
    let bench = setup::with_reactor_schema(server).await?;
    bench
        .db
        .admin()
        .await?
        .batch_execute(
            "ALTER TABLE mana_ai.mission_snapshots SET (autovacuum_enabled = false);
             ALTER TABLE mana_ai.agent_snapshots SET (autovacuum_enabled = false);",
        )
        .await?;
    let applied_at: AppliedAt = Arc::default();
    let (applied_tx, mut applied_rx) = mpsc::unbounded_channel::<Applied>();
    let sink = applied_at.clone();
    tokio::spawn(async move {
        while let Some(a) = applied_rx.recv().await {
            let mut map = sink.lock().unwrap_or_else(|p| p.into_inner());
            for id in a.change_ids {
                map.insert(id, a.at);
            }
        }
    });
    let metrics = Metrics::new();
    let config = config(&bench.db, scale.backfill_analyze_after)?;
    let mut running =
        setup::start_observed(&config, bench.pool.clone(), metrics.clone(), applied_tx).await?;

    let users = (scale.backfill / (MISSIONS * PER_MISSION)).max(USERS);
    let started = Instant::now();
    let queued = setup::queue_changes(&bench.db, users, MISSIONS, PER_MISSION, 4).await? as u64;
    tokio::time::timeout(Duration::from_secs(1800), running.wait_processed(queued))
        .await
        .context("the backfill was not applied within 30 minutes")?;
    let drained = started.elapsed();
    report.add(
        "backfill",
        "backfill changes",
        queued as f64,
        "changes",
        Target::Info,
    );
    report.add(
        "backfill",
        "backfill queued and drained in",
        drained.as_secs_f64(),
        "s",
        Target::Info,
    );
    report.add(
        "backfill",
        "ANALYZEs by the service during the drain",
        metrics.snapshot_analyzes.get() as f64,
        "",
        Target::Info,
    );

    let after = paced(&bench, &mut running, &applied_at, scale).await?;
    let admin = bench.db.admin().await?;
    setup::vacuum(&admin).await?;
    admin
        .batch_execute("VACUUM ANALYZE mana_ai.agent_snapshots")
        .await?;
    admin.batch_execute("CHECKPOINT").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let steady = paced(&bench, &mut running, &applied_at, scale).await?;
    running.stop().await;

    report.latencies(
        "backfill",
        "right after the backfill",
        &after,
        [Target::Info; 4],
    );
    report.latencies(
        "backfill",
        "steady state (vacuumed, analyzed)",
        &steady,
        [Target::Info; 4],
    );
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    report.add(
        "backfill",
        "after backfill / steady, p50",
        ratio(after.p50, steady.p50),
        "x",
        Target::AtMost(1.5),
    );
    report.add(
        "backfill",
        "after backfill / steady, p99",
        ratio(after.p99, steady.p99),
        "x",
        Target::Info,
    );
    Ok(())
}

/// `scale.rate` single-change transactions a second for
/// `scale.latency_secs` over the measured missions; their change-to-snapshot
/// latencies (Applied.at minus the writer's COMMIT).
async fn paced(
    bench: &BenchDb,
    running: &mut Reactor,
    applied_at: &AppliedAt,
    scale: &Scale,
) -> anyhow::Result<Percentiles> {
    let before = *running.processed.borrow();
    let (written, _) = paced::write(&bench.db, scale).await?;
    let total = written.len();
    let waited = tokio::time::timeout(
        Duration::from_secs(120),
        running.wait_processed(before + total as u64),
    )
    .await;
    if waited.is_err() {
        bail!("the paced changes were not applied within 120 s");
    }
    // The Applied event follows the processed count by a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let map = applied_at.lock().unwrap_or_else(|p| p.into_inner());
    let mut latencies: Vec<Duration> = written
        .iter()
        .filter_map(|w| {
            map.get(&w.id)
                .map(|at| at.saturating_duration_since(w.committed))
        })
        .collect();
    if latencies.len() < total {
        bail!(
            "{} of {total} paced changes had no Applied event",
            total - latencies.len()
        );
    }
    Ok(percentiles(&mut latencies))
}
