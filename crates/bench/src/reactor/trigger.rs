//! Section 7: what the trigger costs the sync server. Single-row
//! transactions from a few concurrent connections, as the sync server's
//! pushes look, before and after the kit is installed, for other apps' rows
//! (which should pay only the trigger's WHEN test) and for ai mission rows
//! (which queue a row and NOTIFY; NOTIFY serialises commits database-wide).

use std::time::{Duration, Instant};

use pgtemp::{PgServer, TempDb};
use serde_json::json;

use crate::report::{Report, Target};
use crate::setup::{self, user_id, ChangeWriter};
use crate::Scale;

const CONNECTIONS: usize = 4;

/// Committed single-row transactions per second over `secs`.
async fn throughput(db: &TempDb, app: &str, table: &str, secs: Duration) -> anyhow::Result<f64> {
    let mut writers = Vec::new();
    for _ in 0..CONNECTIONS {
        writers.push(ChangeWriter::connect(db).await?);
    }
    let started = Instant::now();
    let deadline = started + secs;
    let tasks: Vec<_> = writers
        .into_iter()
        .enumerate()
        .map(|(c, mut writer)| {
            let (app, table) = (app.to_string(), table.to_string());
            tokio::spawn(async move {
                let user = user_id(c);
                let data = json!({"title": "x", "state": "active"});
                let mut n = 0u64;
                while Instant::now() < deadline {
                    writer
                        .write(&user, &app, &table, &format!("r{}", n % 10), &data)
                        .await?;
                    n += 1;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

pub async fn trigger_cost(
    server: &PgServer,
    scale: &Scale,
    report: &mut Report,
) -> anyhow::Result<()> {
    let db = setup::bare(server).await?;
    // Someone listens, as the reactor would: notifications are delivered,
    // not just queued. The queue itself is left to grow (no applier), which
    // costs the inserts nothing.
    let (_listener, mut received) =
        crate::latency::listen(&db.admin_url(), &[mana_ai::config::DEFAULT_CHANNEL]).await?;
    tokio::spawn(async move { while received.recv().await.is_some() {} });
    // Untimed: warms the connections, caches and WAL before the first case.
    throughput(&db, "todo", "items", scale.trigger_secs / 3).await?;

    let other_without = throughput(&db, "todo", "items", scale.trigger_secs).await?;
    let ai_without = throughput(&db, "ai", "aiMissions", scale.trigger_secs).await?;
    setup::install_kit(&db).await?;
    let other_with = throughput(&db, "todo", "items", scale.trigger_secs).await?;
    let ai_with = throughput(&db, "ai", "aiMissions", scale.trigger_secs).await?;

    let s = "trigger";
    let conns = format!("{CONNECTIONS} conns");
    report.add(
        s,
        format!("other apps, no trigger ({conns})"),
        other_without,
        "tx/s",
        Target::Info,
    );
    report.add(
        s,
        format!("other apps, trigger installed ({conns})"),
        other_with,
        "tx/s",
        Target::Info,
    );
    report.add(
        s,
        format!("ai missions, no trigger ({conns})"),
        ai_without,
        "tx/s",
        Target::Info,
    );
    report.add(
        s,
        "ai missions, trigger = notifying commits/s",
        ai_with,
        "tx/s",
        Target::Info,
    );
    report.add(
        s,
        "other apps: with / without (expect ~1.0)",
        other_with / other_without,
        "x",
        Target::Info,
    );
    report.add(
        s,
        "ai missions: with / without",
        ai_with / ai_without,
        "x",
        Target::Info,
    );
    Ok(())
}
