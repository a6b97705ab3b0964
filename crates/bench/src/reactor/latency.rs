//! Sections 1 and 2: the NOTIFY round trip (the floor) and change-to-snapshot
//! latency with the real reactor running in-process.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use mana_ai::config::Config;
use mana_ai::metrics::Metrics;
use mana_ai::reactor::applier::Applied;
use pgtemp::{PgServer, SERVICE_ROLE};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::paced;
use crate::report::{ms, percentiles, Percentiles, Report, Target};
use crate::setup::{self, mission_id, user_id, BenchDb, ChangeWriter, Wheel};
use crate::Scale;

/// Connects and LISTENs on `channels`; every notification's payload and
/// arrival instant are sent on the returned channel by the connection's own
/// task (as the reactor's listener reads its socket).
pub async fn listen(
    conninfo: &str,
    channels: &[&str],
) -> anyhow::Result<(
    tokio_postgres::Client,
    mpsc::UnboundedReceiver<(String, Instant)>,
)> {
    let (client, mut connection) = tokio_postgres::connect(conninfo, NoTls).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.payload().to_string(), Instant::now()));
            }
        }
    });
    for channel in channels {
        client.batch_execute(&format!("LISTEN {channel}")).await?;
    }
    Ok((client, rx))
}

/// Section 1: `NOTIFY` sent (autocommit) on one connection, received on
/// another, one at a time.
pub async fn notify_floor(
    server: &PgServer,
    scale: &Scale,
    report: &mut Report,
) -> anyhow::Result<Percentiles> {
    let db = setup::bare(server).await?;
    let (_listener, mut received) = listen(&db.admin_url(), &["bench_floor"]).await?;
    let sender = db.admin().await?;
    let warmup = 20;
    let mut samples = Vec::with_capacity(scale.notify_round_trips);
    for i in 0..warmup + scale.notify_round_trips {
        let sent = Instant::now();
        sender.batch_execute("NOTIFY bench_floor").await?;
        let (_, got) = tokio::time::timeout(Duration::from_secs(5), received.recv())
            .await
            .context("a notification did not arrive within 5 s")?
            .context("the listener connection closed")?;
        if i >= warmup {
            samples.push(got.saturating_duration_since(sent));
        }
    }
    let p = percentiles(&mut samples);
    report.latencies("notify", "NOTIFY round trip", &p, [Target::Info; 4]);
    Ok(p)
}

/// The config the tests use: the service role, a safety sweep an hour away
/// (so everything applied was announced by NOTIFY), a quiet heartbeat.
pub fn reactor_config(db: &pgtemp::TempDb) -> anyhow::Result<Config> {
    let env: HashMap<&str, String> = HashMap::from([
        ("SYNC_DATABASE_URL", db.url_as(SERVICE_ROLE)),
        ("MANA_AI_SWEEP_INTERVAL_SECS", "3600".into()),
        ("MANA_AI_LISTEN_HEARTBEAT_SECS", "30".into()),
    ]);
    Ok(Config::from_lookup(|k| env.get(k).cloned())?)
}

/// Section 2: single-change transactions paced to `scale.rate` per second in
/// total over many users and missions; latency = the applier's `Applied.at`
/// (snapshot committed, timer re-armed) minus the instant COMMIT returned.
pub async fn change_to_snapshot(
    server: &PgServer,
    scale: &Scale,
    floor: Option<Percentiles>,
    report: &mut Report,
) -> anyhow::Result<()> {
    let bench = setup::with_reactor_schema(server).await?;
    // Every mission exists and is armed before we measure: the measured
    // changes are updates of armed missions.
    let seeded = setup::queue_changes(&bench.db, paced::USERS, paced::MISSIONS, 1, 4).await? as u64;

    let (applied_tx, mut applied_rx) = mpsc::unbounded_channel::<Applied>();
    let collector = tokio::spawn(async move {
        let mut at = HashMap::new();
        let mut batches = 0usize;
        while let Some(a) = applied_rx.recv().await {
            batches += 1;
            for id in a.change_ids {
                at.insert(id, a.at);
            }
        }
        (at, batches)
    });
    let config = reactor_config(&bench.db)?;
    let mut running =
        setup::start_observed(&config, bench.pool.clone(), Metrics::new(), applied_tx).await?;
    tokio::time::timeout(Duration::from_secs(60), running.wait_processed(seeded))
        .await
        .context("the seed changes were not applied within 60 s")?;

    let (written, start) = paced::write(&bench.db, scale).await?;
    let total = written.len();
    let last_commit = written.iter().map(|w| w.committed).max().unwrap_or(start);
    let done = tokio::time::timeout(
        Duration::from_secs(60),
        running.wait_processed(seeded + total as u64),
    )
    .await;
    running.stop().await;
    let (applied_at, batches) = collector.await?;
    if done.is_err() {
        bail!(
            "only {} of {total} changes applied within 60 s",
            applied_at.len()
        );
    }

    let mut latencies = Vec::with_capacity(total);
    let (mut negative, mut missing) = (0, 0);
    for w in &written {
        let Some(at) = applied_at.get(&w.id) else {
            missing += 1;
            continue;
        };
        if *at < w.committed {
            negative += 1;
        }
        latencies.push(at.saturating_duration_since(w.committed));
    }
    let p = percentiles(&mut latencies);
    let rate = total as f64 / (last_commit - start).as_secs_f64().max(1e-9);
    report.add(
        "latency",
        "changes written",
        total as f64,
        "changes",
        Target::Info,
    );
    report.add(
        "latency",
        "achieved write rate",
        rate,
        "changes/s",
        Target::Info,
    );
    report.latencies(
        "latency",
        "change-to-snapshot",
        &p,
        [
            Target::AtMost(2.0),
            Target::Info,
            Target::AtMost(10.0),
            Target::Info,
        ],
    );
    if let Some(floor) = floor {
        report.add(
            "latency",
            "  beside it: NOTIFY floor p50",
            ms(floor.p50),
            "ms",
            Target::Info,
        );
        report.add(
            "latency",
            "  beside it: NOTIFY floor p99",
            ms(floor.p99),
            "ms",
            Target::Info,
        );
    }
    let mut took: Vec<Duration> = written.iter().map(|w| w.took).collect();
    let took = percentiles(&mut took);
    report.add(
        "latency",
        "writer BEGIN..COMMIT p50 (context)",
        ms(took.p50),
        "ms",
        Target::Info,
    );
    report.add(
        "latency",
        "changes per applier batch (mean)",
        latencies.len() as f64 / batches.max(1) as f64,
        "changes",
        Target::Info,
    );
    report.note(format!(
        "latency: {negative} of {total} changes were applied before their writer saw COMMIT return \
         (the NOTIFY can beat the CommandComplete); clamped to 0"
    ));
    if missing > 0 {
        report.note(format!("latency: {missing} changes had no Applied event"));
    }
    batch_floor(&bench, report).await?;
    drop(bench);
    crate::client::client_view(server, scale, report).await
}

/// Context for the latency figures: what one applier batch of a single
/// change costs with nothing else running (its commit does not wait for the
/// WAL flush; see `BatchTx::begin`).
async fn batch_floor(bench: &BenchDb, report: &mut Report) -> anyhow::Result<()> {
    const ROUNDS: usize = 200;
    let wheel = Wheel::spawn();
    let mut writer = ChangeWriter::connect(&bench.db).await?;
    let user = user_id(0);
    let mission = mission_id(&user, 0);
    let data =
        json!({"title": "floor", "state": "active", "nextRunAt": setup::next_run_tomorrow()});
    let mut applier = wheel.applier(&bench.pool, 500);
    let mut took = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        writer
            .write(&user, "ai", "aiMissions", &mission, &data)
            .await?;
        let started = Instant::now();
        let stats = applier.apply_batch(500).await?;
        took.push(started.elapsed());
        if stats.claimed != 1 {
            bail!(
                "expected one queued change, the applier claimed {}",
                stats.claimed
            );
        }
    }
    let p = percentiles(&mut took);
    report.add(
        "latency",
        "one-change batch alone: p50",
        ms(p.p50),
        "ms",
        Target::Info,
    );
    Ok(())
}
