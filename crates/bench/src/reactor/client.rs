//! Section 2, as a user's client sees it: a change committed on one
//! connection, its snapshot seen on another, beside a NOTIFY round trip
//! through the same database between the same two connections, sample by
//! sample, one at a time. The target is the ratio of the two medians; the
//! applier's own instants (`Applied::phases`) say where the time goes.

use std::time::{Duration, Instant};

use anyhow::Context;
use mana_ai::metrics::Metrics;
use mana_ai::reactor::applier::Applied;
use pgtemp::PgServer;
use serde_json::json;
use tokio::sync::mpsc;

use crate::report::{ms, percentiles, Report, Target};
use crate::setup::{self, mission_id, user_id, ChangeWriter};
use crate::Scale;

/// What the client watches: every snapshot commit announces its mission's
/// title (the sample's nonce). Bench-only: the service has no such trigger.
const OBSERVE_SNAPSHOTS: &str = "
CREATE FUNCTION public.bench_snapshot_seen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_snapshots', coalesce(NEW.record->>'title', ''));
    RETURN NULL;
END $$;
CREATE TRIGGER bench_snapshot_seen AFTER INSERT OR UPDATE ON mana_ai.mission_snapshots
    FOR EACH ROW EXECUTE FUNCTION public.bench_snapshot_seen();";

/// Waits for the notification carrying `payload`.
async fn seen(
    rx: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    payload: &str,
) -> anyhow::Result<Instant> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (got, at) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .with_context(|| format!("no notification {payload:?} within 10 s"))?
            .context("the listener connection closed")?;
        if got == payload {
            return Ok(at);
        }
    }
}

/// The applier's batch that applied `change`.
async fn batch_of(
    rx: &mut mpsc::UnboundedReceiver<Applied>,
    change: uuid::Uuid,
) -> anyhow::Result<Applied> {
    loop {
        let applied = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .context("no applied batch within 10 s")?
            .context("the applier stopped")?;
        if applied.change_ids.contains(&change) {
            return Ok(applied);
        }
    }
}

/// Per sample: the NOTIFY round trip, the client's change-to-snapshot, and
/// the applier's phases of that change's batch.
#[derive(Default)]
struct Samples {
    floor: Vec<Duration>,
    client: Vec<Duration>,
    wake: Vec<Duration>,
    claim: Vec<Duration>,
    read: Vec<Duration>,
    fold: Vec<Duration>,
    commit: Vec<Duration>,
    announce: Vec<Duration>,
}

pub async fn client_view(
    server: &PgServer,
    scale: &Scale,
    report: &mut Report,
) -> anyhow::Result<()> {
    let bench = setup::with_reactor_schema(server).await?;
    let seeded = setup::queue_changes(&bench.db, 10, 1, 1, 2).await? as u64;
    let (applied_tx, mut applied_rx) = mpsc::unbounded_channel::<Applied>();
    let config = crate::latency::reactor_config(&bench.db)?;
    let mut running =
        setup::start_observed(&config, bench.pool.clone(), Metrics::new(), applied_tx).await?;
    tokio::time::timeout(Duration::from_secs(60), running.wait_processed(seeded))
        .await
        .context("the seed changes were not applied within 60 s")?;
    let admin = bench.db.admin().await?;
    admin.batch_execute(OBSERVE_SNAPSHOTS).await?;
    let channels = ["bench_snapshots", "bench_floor"];
    let (_listening, mut rx) = crate::latency::listen(&bench.db.admin_url(), &channels).await?;
    let mut writer = ChangeWriter::connect(&bench.db).await?;
    while applied_rx.try_recv().is_ok() {}

    let next_run = setup::next_run_tomorrow();
    let warmup = 20;
    let mut s = Samples::default();
    for i in 0..warmup + scale.client_samples {
        let sent = Instant::now();
        admin
            .batch_execute(&format!("NOTIFY bench_floor, 'f{i}'"))
            .await?;
        let floor = seen(&mut rx, &format!("f{i}")).await? - sent;

        let user = user_id(i % 10);
        let nonce = format!("c{i}");
        let data = json!({"title": nonce, "state": "active", "nextRunAt": next_run});
        let change = writer
            .write(&user, "ai", "aiMissions", &mission_id(&user, 0), &data)
            .await?;
        let committed = Instant::now();
        let observed = seen(&mut rx, &nonce).await?;
        let batch = batch_of(&mut applied_rx, change).await?;
        if i >= warmup {
            let p = batch.phases;
            s.floor.push(floor);
            s.client.push(observed.saturating_duration_since(committed));
            s.wake.push(p.started.saturating_duration_since(committed));
            s.claim.push(p.claimed - p.started);
            s.read.push(p.read - p.claimed);
            s.fold.push(p.folded - p.read);
            s.commit.push(p.committed - p.folded);
            s.announce
                .push(observed.saturating_duration_since(p.committed));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    running.stop().await;
    add_figures(&mut s, report);
    Ok(())
}

fn add_figures(s: &mut Samples, report: &mut Report) {
    let floor = percentiles(&mut s.floor);
    let client = percentiles(&mut s.client);
    report.latencies(
        "client",
        "NOTIFY round trip (client to client)",
        &floor,
        [Target::Info; 4],
    );
    report.latencies(
        "client",
        "change-to-snapshot as a client sees it",
        &client,
        [Target::Info; 4],
    );
    report.add(
        "client",
        "ratio: change-to-snapshot p50 / NOTIFY p50",
        client.p50.as_secs_f64() / floor.p50.as_secs_f64().max(1e-9),
        "x",
        Target::AtMost(3.0),
    );
    let phases: [(&str, &mut Vec<Duration>); 6] = [
        (
            "  commit to batch start (NOTIFY to the service, wake-up, pool)",
            &mut s.wake,
        ),
        (
            "  claim + the first user's changes and snapshots (BEGIN, one round trip)",
            &mut s.claim,
        ),
        ("  other users' reads (none here), checks", &mut s.read),
        ("  fold", &mut s.fold),
        ("  write + COMMIT", &mut s.commit),
        (
            "  batch commit to the client seeing it (re-arm, NOTIFY)",
            &mut s.announce,
        ),
    ];
    for (name, samples) in phases {
        let p = percentiles(samples);
        report.add(
            "client",
            format!("{name} p50"),
            ms(p.p50),
            "ms",
            Target::Info,
        );
    }
}
