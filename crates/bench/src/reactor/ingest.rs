//! Sections 3 and 4: how fast the applier drains a full queue, and whether
//! its cost per change depends on the size of the change log.

use std::time::{Duration, Instant};

use pgtemp::PgServer;

use crate::report::{Report, Target};
use crate::setup::{self, BenchDb, Wheel};
use crate::Scale;

const MISSIONS_PER_USER: usize = 10;
/// Loader connections: enough to queue quickly, few enough for 2 cores.
const LOADERS: usize = 4;

/// Drains the whole queue with a fresh Applier; returns (rows, elapsed).
async fn timed_drain(
    bench: &BenchDb,
    wheel: &Wheel,
    batch: i64,
) -> anyhow::Result<(usize, Duration)> {
    let mut applier = wheel.applier(&bench.pool, batch);
    let started = Instant::now();
    let n = applier.drain().await?;
    Ok((n, started.elapsed()))
}

/// Creates every mission's snapshot once, untimed, so the timed drains fold
/// into existing snapshots (the steady state) rather than create them.
async fn warm(bench: &BenchDb, wheel: &Wheel, users: usize) -> anyhow::Result<()> {
    setup::queue_changes(&bench.db, users, MISSIONS_PER_USER, 1, LOADERS).await?;
    timed_drain(bench, wheel, 500).await?;
    Ok(())
}

async fn dead_changes(bench: &BenchDb) -> anyhow::Result<i64> {
    let client = bench.pool.get().await?;
    Ok(client
        .query_one("SELECT count(*) FROM mana_ai.dead_changes", &[])
        .await?
        .get(0))
}

/// Section 3: queue N changes with the reactor stopped, then time
/// `Applier::drain()` once per batch size.
pub async fn peak_ingest(
    server: &PgServer,
    scale: &Scale,
    report: &mut Report,
) -> anyhow::Result<()> {
    let bench = setup::with_reactor_schema(server).await?;
    let wheel = Wheel::spawn();
    let users = scale.users;
    warm(&bench, &wheel, users).await?;
    let per_mission = (scale.ingest_changes / (users * MISSIONS_PER_USER)).max(1);
    for &batch in &scale.batches {
        let queued_at = Instant::now();
        let queued =
            setup::queue_changes(&bench.db, users, MISSIONS_PER_USER, per_mission, LOADERS).await?;
        let queue_secs = queued_at.elapsed().as_secs_f64();
        setup::vacuum(&bench.db.admin().await?).await?;
        let (n, took) = timed_drain(&bench, &wheel, batch).await?;
        if n != queued {
            report.note(format!(
                "ingest: queued {queued} changes but the drain processed {n}"
            ));
        }
        report.add(
            "ingest",
            format!("drain {n} changes, batch {batch}"),
            n as f64 / took.as_secs_f64(),
            "changes/s",
            Target::AtLeast(20_000.0),
        );
        report.add(
            "ingest",
            format!("  queueing them ({LOADERS} sync connections, context)"),
            queued as f64 / queue_secs,
            "changes/s",
            Target::Info,
        );
    }
    report.add(
        "ingest",
        "missions armed after the drains",
        wheel.metrics.armed_missions.get() as f64,
        "missions",
        Target::Info,
    );
    let dead = dead_changes(&bench).await?;
    if dead > 0 {
        report.note(format!("ingest: {dead} changes were set aside as poison"));
    }
    Ok(())
}

/// Blocks of sync_changes and its indexes found in shared_buffers (hit)
/// and read from outside them (the OS cache or the disk), so far.
async fn log_blocks(admin: &tokio_postgres::Client) -> anyhow::Result<(i64, i64)> {
    let row = admin
        .query_one(
            "SELECT (coalesce(heap_blks_hit, 0) + coalesce(idx_blks_hit, 0))::int8,
                    (coalesce(heap_blks_read, 0) + coalesce(idx_blks_read, 0))::int8
             FROM pg_statio_user_tables WHERE relid = 'public.sync_changes'::regclass",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// [`log_blocks`] once the applier's counts are in: a backend publishes its
/// statistics when it goes idle, at most once a second, so wait a second
/// and give every pooled connection a statement to go idle after.
async fn settled_log_blocks(
    bench: &BenchDb,
    admin: &tokio_postgres::Client,
) -> anyhow::Result<(i64, i64)> {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut held = Vec::new();
    for _ in 0..bench.pool.status().size {
        let client = bench.pool.get().await?;
        client.batch_execute("SELECT 1").await?;
        held.push(client);
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    log_blocks(admin).await
}

/// Drains per log size in the log-size section; the median counts.
const LOG_SIZE_ROUNDS: usize = 3;

/// One database of the log-size section, its log filled to `size` rows.
struct SizedLog {
    size: u64,
    bench: BenchDb,
    wheel: Wheel,
    rounds: Vec<f64>,
    hits: i64,
    reads: i64,
    drained: usize,
}

/// Section 4: the drain of the same number of fresh changes with the log
/// pre-filled to each size; per-change cost and its growth. One database per
/// size, and the drains take turns between them (small, large, small, ...):
/// the machine's drift then falls on every size alike, and the median of
/// each size's drains is compared.
pub async fn log_size(server: &PgServer, scale: &Scale, report: &mut Report) -> anyhow::Result<()> {
    let users = scale.users;
    let per_mission = (scale.log_probe_changes / (users * MISSIONS_PER_USER)).max(1);
    let mut logs = Vec::with_capacity(scale.log_sizes.len());
    for &size in &scale.log_sizes {
        let bench = setup::with_reactor_schema(server).await?;
        let wheel = Wheel::spawn();
        warm(&bench, &wheel, users).await?;
        let filling = Instant::now();
        let added = setup::fill_log(&bench.db, size).await?;
        eprintln!(
            "[log-size] log at {size} rows (+{added} filler in {:.1} s)",
            filling.elapsed().as_secs_f64()
        );
        logs.push(SizedLog {
            size,
            bench,
            wheel,
            rounds: Vec::with_capacity(LOG_SIZE_ROUNDS),
            hits: 0,
            reads: 0,
            drained: 0,
        });
    }
    for _ in 0..LOG_SIZE_ROUNDS {
        for log in &mut logs {
            let bench = &log.bench;
            setup::queue_changes(&bench.db, users, MISSIONS_PER_USER, per_mission, LOADERS).await?;
            // VACUUM on a connection of its own that closes (a backend
            // publishes its statistics on exit), so its block counts stay
            // out of the delta.
            setup::vacuum(&bench.db.admin().await?).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let admin = bench.db.admin().await?;
            let before = log_blocks(&admin).await?;
            let (n, took) = timed_drain(bench, &log.wheel, 500).await?;
            let after = settled_log_blocks(bench, &admin).await?;
            log.rounds.push(took.as_secs_f64() * 1e6 / n.max(1) as f64);
            log.hits += after.0 - before.0;
            log.reads += after.1 - before.1;
            log.drained += n;
        }
    }
    let mut costs: Vec<(u64, f64)> = Vec::new();
    for log in &mut logs {
        log.rounds.sort_by(f64::total_cmp);
        let micros = log.rounds[log.rounds.len() / 2];
        report.add(
            "log-size",
            format!(
                "per change, log of {} rows (median of {LOG_SIZE_ROUNDS} drains of {})",
                log.size,
                log.drained / LOG_SIZE_ROUNDS
            ),
            micros,
            "us",
            Target::Info,
        );
        let per = |blocks: i64| blocks as f64 / log.drained.max(1) as f64;
        report.add(
            "log-size",
            "  sync_changes blocks hit in shared_buffers per change",
            per(log.hits),
            "blocks",
            Target::Info,
        );
        report.add(
            "log-size",
            "  sync_changes blocks read from outside them per change",
            per(log.reads),
            "blocks",
            Target::Info,
        );
        costs.push((log.size, micros));
    }
    if let Some(&(small, base)) = costs.first() {
        for &(size, micros) in &costs[1..] {
            // "No growth", read with the noise of a shared machine in mind.
            report.add(
                "log-size",
                format!("cost ratio {size} / {small} rows (target ~1.0)"),
                micros / base,
                "x",
                Target::AtMost(1.25),
            );
        }
    }
    Ok(())
}
