//! The oracle, run on a database no process writes any more.
//!
//! Changes: every mission and agent record of the log (but the `poison-*`
//! records, which hold nothing but poison) must have a snapshot whose
//! `record` and `deleted` equal `mana_ai::reactor::fold_record`, a full
//! replay of its rows, and whose `change_count` equals its rows in the log
//! (each applied exactly once). No field is excluded: what the service
//! writes itself (iterations, nextRunAt, updatedAt) reaches the snapshot
//! only through its own write-back rows, which are in the log and so in
//! the replay. Poison: every `poison-*` row is in `dead_changes`, and
//! nothing else is. The queue is empty.
//!
//! Slots: see `slots.rs`.

use std::collections::HashSet;

use anyhow::Context;
use serde_json::Value;
use tokio_postgres::Client;

/// What the change checks found.
#[derive(Debug, Default)]
pub struct Changes {
    pub records: u64,
    /// Rows of records whose snapshot is missing, differs from the
    /// replay, or counts fewer rows than the log has.
    pub lost: u64,
    /// Rows a snapshot counts beyond the log's.
    pub applied_twice: u64,
    pub dead_expected: u64,
    pub dead_unexpected: u64,
    /// `poison-*` rows of the log that are not in `dead_changes`.
    pub poison_not_set_aside: u64,
    pub queue_left: i64,
    pub details: Vec<String>,
}

/// One mission or agent record of the log with its row count.
struct LogRecord {
    user: String,
    table: String,
    record: String,
    rows: i64,
}

pub async fn check_changes(admin: &Client) -> anyhow::Result<Changes> {
    let mut out = Changes::default();
    for rec in log_records(admin).await? {
        out.records += 1;
        check_record(admin, &rec, &mut out).await?;
    }
    check_dead(admin, &mut out).await?;
    let queue = admin
        .query_one("SELECT count(*) FROM mana_ai.change_queue", &[])
        .await
        .context("counting the change queue")?;
    out.queue_left = queue.try_get(0).context("change_queue count")?;
    Ok(out)
}

async fn log_records(admin: &Client) -> anyhow::Result<Vec<LogRecord>> {
    let rows = admin
        .query(
            "SELECT user_id, table_name, record_id, count(*) FROM public.sync_changes
             WHERE app_id = 'ai' AND table_name IN ('aiMissions', 'agents')
               AND record_id NOT LIKE 'poison-%'
             GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            &[],
        )
        .await
        .context("listing the log's records")?;
    rows.iter()
        .map(|r| {
            Ok(LogRecord {
                user: r.try_get(0).context("sync_changes.user_id")?,
                table: r.try_get(1).context("sync_changes.table_name")?,
                record: r.try_get(2).context("sync_changes.record_id")?,
                rows: r.try_get(3).context("row count")?,
            })
        })
        .collect()
}

/// The snapshot of one record: (record, deleted, change_count).
async fn snapshot(admin: &Client, rec: &LogRecord) -> anyhow::Result<Option<(Value, bool, i64)>> {
    let sql = if rec.table == "agents" {
        "SELECT record, deleted, change_count FROM mana_ai.agent_snapshots
         WHERE user_id = $1 AND agent_id = $2"
    } else {
        "SELECT record, deleted, change_count FROM mana_ai.mission_snapshots
         WHERE user_id = $1 AND mission_id = $2"
    };
    let row = admin
        .query_opt(sql, &[&rec.user, &rec.record])
        .await
        .with_context(|| format!("reading the snapshot of {}/{}", rec.user, rec.record))?;
    row.map(|r| {
        let what = || format!("snapshot columns of {}/{}", rec.user, rec.record);
        Ok((
            r.try_get(0).with_context(what)?,
            r.try_get(1).with_context(what)?,
            r.try_get(2).with_context(what)?,
        ))
    })
    .transpose()
}

async fn check_record(admin: &Client, rec: &LogRecord, out: &mut Changes) -> anyhow::Result<()> {
    let name = format!("{} {}/{}", rec.table, rec.user, rec.record);
    let v06 = mana_ai::sync::generation::Generation::V06;
    let folded =
        mana_ai::reactor::fold_record(admin, v06, &rec.user, "ai", &rec.table, &rec.record)
            .await
            .with_context(|| format!("replaying {name}"))?;
    let Some(folded) = folded else {
        out.details
            .push(format!("{name}: {} rows but no replay", rec.rows));
        out.lost += rec.rows as u64;
        return Ok(());
    };
    let Some((record, deleted, count)) = snapshot(admin, rec).await? else {
        out.details
            .push(format!("{name}: no snapshot ({} rows)", rec.rows));
        out.lost += rec.rows as u64;
        return Ok(());
    };
    let same = record == Value::Object(folded.record.clone()) && deleted == folded.deleted;
    if !same {
        out.details.push(format!(
            "{name}: snapshot differs from the replay (change_count {count}, rows {})",
            rec.rows
        ));
        out.lost += (rec.rows - count).max(1) as u64;
    } else if count < rec.rows {
        out.details
            .push(format!("{name}: change_count {count} < rows {}", rec.rows));
        out.lost += (rec.rows - count) as u64;
    }
    if count > rec.rows {
        out.details
            .push(format!("{name}: change_count {count} > rows {}", rec.rows));
        out.applied_twice += (count - rec.rows) as u64;
    }
    Ok(())
}

/// Dead changes: only `poison-*` records, and all of their rows.
async fn check_dead(admin: &Client, out: &mut Changes) -> anyhow::Result<()> {
    let rows = admin
        .query(
            "SELECT change_id, coalesce(record_id, ''), reason FROM mana_ai.dead_changes",
            &[],
        )
        .await
        .context("reading dead_changes")?;
    let mut dead = HashSet::new();
    for r in &rows {
        let id: uuid::Uuid = r.try_get(0).context("dead_changes.change_id")?;
        let record: String = r.try_get(1).context("dead_changes.record_id")?;
        let reason: String = r.try_get(2).context("dead_changes.reason")?;
        dead.insert(id);
        if record.starts_with("poison-") {
            out.dead_expected += 1;
        } else {
            out.dead_unexpected += 1;
            out.details.push(format!("set aside: {record} ({reason})"));
        }
    }
    let poison = admin
        .query(
            "SELECT id, record_id FROM public.sync_changes WHERE record_id LIKE 'poison-%'",
            &[],
        )
        .await
        .context("listing the poison rows")?;
    for r in &poison {
        let id: uuid::Uuid = r.try_get(0).context("sync_changes.id")?;
        if !dead.contains(&id) {
            let record: String = r.try_get(1).context("sync_changes.record_id")?;
            out.details.push(format!("poison not set aside: {record}"));
            out.poison_not_set_aside += 1;
        }
    }
    Ok(())
}
