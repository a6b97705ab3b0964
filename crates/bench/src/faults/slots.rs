//! The slot checks. A mission's slots are a chain: the first is the
//! `nextRunAt` its insert wrote; each run that finishes a slot (`done`,
//! written or failed) writes back the next `nextRunAt`, and the writers
//! never touch it. So the chain is followed from the insert through the
//! `mission_runs` rows and their write-back rows (`change_id`):
//!
//! - every slot on the chain but the last has exactly one `done` row and
//!   exactly one write-back; the last (pending) slot is *missed* when it
//!   was due (its time, or the insert's if later) at least `GRACE` before
//!   the services were stopped, or before the mission was deleted;
//! - a write-back row no `done` row names is a *duplicated* slot, as is an
//!   iteration id twice in the mission's record;
//! - a `mission_runs` row off the chain ran a slot the mission never had;
//! - a `done` row whose iteration the record lacks lost it;
//! - no row is left `running` (the services were stopped gracefully).

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use chrono::{DateTime, Duration, Utc};
use tokio_postgres::Client;

/// Slots due within this of the stop are not judged.
pub const GRACE: Duration = Duration::seconds(15);

#[derive(Debug, Default)]
pub struct Slots {
    pub missions: u64,
    pub written: u64,
    pub failed: u64,
    pub missed: u64,
    pub duplicated: u64,
    pub off_chain: u64,
    pub left_running: u64,
    pub iterations_lost: u64,
    pub done_without_writeback: u64,
    pub details: Vec<String>,
}

type Key = (String, String);

struct Run {
    slot: String,
    state: String,
    outcome: Option<String>,
    change_id: Option<uuid::Uuid>,
    iteration_id: Option<String>,
    claimed_at: DateTime<Utc>,
}

/// Everything the checks read, by (user, mission).
#[derive(Default)]
struct Data {
    inserts: HashMap<Key, (String, DateTime<Utc>)>,
    deletes: HashMap<Key, DateTime<Utc>>,
    runs: HashMap<Key, Vec<Run>>,
    /// write-back id -> (key, its nextRunAt)
    writebacks: HashMap<uuid::Uuid, (Key, Option<String>)>,
    iterations: HashMap<Key, Vec<String>>,
}

pub async fn check_slots(admin: &Client, stopped: DateTime<Utc>) -> anyhow::Result<Slots> {
    let data = load(admin).await?;
    let mut out = Slots::default();
    let mut claimed_by_done = HashSet::new();
    for (key, (first, inserted)) in &data.inserts {
        out.missions += 1;
        let cutoff = data.deletes.get(key).map_or(stopped, |d| stopped.min(*d)) - GRACE;
        walk(
            &data,
            key,
            first,
            *inserted,
            cutoff,
            &mut out,
            &mut claimed_by_done,
        );
    }
    for (id, (key, _)) in &data.writebacks {
        if !claimed_by_done.contains(id) {
            out.duplicated += 1;
            out.details
                .push(format!("write-back {id} of {key:?} names no done slot"));
        }
    }
    for (key, ids) in &data.iterations {
        let unique: HashSet<&String> = ids.iter().collect();
        if unique.len() != ids.len() {
            out.duplicated += (ids.len() - unique.len()) as u64;
            out.details.push(format!("{key:?}: an iteration id twice"));
        }
    }
    for (key, runs) in &data.runs {
        for run in runs.iter().filter(|r| r.state == "running") {
            out.left_running += 1;
            let deleted = data
                .deletes
                .get(key)
                .map(|d| format!("mission deleted {d}"));
            out.details.push(format!(
                "{key:?} slot {}: left running ({}), claimed {}",
                run.slot,
                deleted.as_deref().unwrap_or("mission not deleted"),
                run.claimed_at
            ));
        }
    }
    Ok(out)
}

/// Follows one mission's chain; counts what it finds.
fn walk(
    data: &Data,
    key: &Key,
    first: &str,
    inserted: DateTime<Utc>,
    cutoff: DateTime<Utc>,
    out: &mut Slots,
    claimed_by_done: &mut HashSet<uuid::Uuid>,
) {
    let empty = Vec::new();
    let runs = data.runs.get(key).unwrap_or(&empty);
    let by_slot: HashMap<&str, &Run> = runs.iter().map(|r| (r.slot.as_str(), r)).collect();
    let iterations: HashSet<&String> = data.iterations.get(key).into_iter().flatten().collect();
    let mut on_chain = HashSet::new();
    let mut slot = Some(first.to_string());
    while let Some(s) = slot.take() {
        let run = by_slot.get(s.as_str()).filter(|r| r.state == "done");
        if !on_chain.insert(s.clone()) {
            out.details.push(format!("{key:?}: the chain loops at {s}"));
            break;
        }
        let Some(run) = run else {
            judge_pending(
                key,
                &s,
                first,
                inserted,
                cutoff,
                by_slot.get(s.as_str()),
                out,
            );
            break;
        };
        if run.outcome.as_deref() == Some("failed") {
            out.failed += 1;
        } else {
            out.written += 1;
        }
        if !data.deletes.contains_key(key)
            && run
                .iteration_id
                .as_ref()
                .is_some_and(|i| !iterations.contains(i))
        {
            out.iterations_lost += 1;
            out.details.push(format!(
                "{key:?} slot {s}: iteration missing from the record"
            ));
        }
        let writeback = run
            .change_id
            .and_then(|id| data.writebacks.get(&id).map(|w| (id, w)));
        let Some((id, (_, next))) = writeback else {
            out.done_without_writeback += 1;
            out.details
                .push(format!("{key:?} slot {s}: done without its write-back"));
            break;
        };
        claimed_by_done.insert(id);
        slot = next.clone();
    }
    for run in runs.iter().filter(|r| !on_chain.contains(&r.slot)) {
        out.off_chain += 1;
        out.details.push(format!(
            "{key:?} slot {} ({}): not on the chain",
            run.slot, run.state
        ));
    }
}

/// The chain's last slot, not done: missed if it was due before `cutoff`.
fn judge_pending(
    key: &Key,
    slot: &str,
    first: &str,
    inserted: DateTime<Utc>,
    cutoff: DateTime<Utc>,
    run: Option<&&Run>,
    out: &mut Slots,
) {
    let Ok(at) = DateTime::parse_from_rfc3339(slot) else {
        out.details
            .push(format!("{key:?}: slot {slot} does not parse"));
        out.missed += 1;
        return;
    };
    let mut due = at.with_timezone(&Utc);
    if slot == first {
        due = due.max(inserted);
    }
    if due <= cutoff {
        out.missed += 1;
        let state = run.map_or("no run row".to_string(), |r| {
            format!("{} ({:?})", r.state, r.outcome)
        });
        out.details
            .push(format!("{key:?}: slot {slot} due {due} missed: {state}"));
    }
}

async fn load(admin: &Client) -> anyhow::Result<Data> {
    let mut data = Data::default();
    for r in admin
        .query(
            "SELECT user_id, record_id, data->>'nextRunAt', created_at FROM public.sync_changes
             WHERE app_id = 'ai' AND table_name = 'aiMissions' AND op = 'insert'
               AND client_id = 'fault-writer' AND record_id NOT LIKE 'poison-%'",
            &[],
        )
        .await
        .context("reading the mission inserts")?
    {
        let key = (
            r.try_get(0).context("user_id")?,
            r.try_get(1).context("record_id")?,
        );
        let first: Option<String> = r.try_get(2).context("insert nextRunAt")?;
        let first = first.with_context(|| format!("{key:?}: an insert without nextRunAt"))?;
        data.inserts
            .insert(key, (first, r.try_get(3).context("created_at")?));
    }
    for r in admin
        .query(
            "SELECT user_id, record_id, min(created_at) FROM public.sync_changes
             WHERE app_id = 'ai' AND table_name = 'aiMissions' AND op = 'delete' GROUP BY 1, 2",
            &[],
        )
        .await
        .context("reading the mission deletes")?
    {
        let key = (
            r.try_get(0).context("user_id")?,
            r.try_get(1).context("record_id")?,
        );
        data.deletes
            .insert(key, r.try_get(2).context("delete created_at")?);
    }
    load_runs(admin, &mut data).await?;
    Ok(data)
}

async fn load_runs(admin: &Client, data: &mut Data) -> anyhow::Result<()> {
    for r in admin
        .query(
            "SELECT user_id, mission_id, slot, state, outcome, change_id, iteration_id, claimed_at
             FROM mana_ai.mission_runs",
            &[],
        )
        .await
        .context("reading mission_runs")?
    {
        let key = (
            r.try_get(0).context("user_id")?,
            r.try_get(1).context("mission_id")?,
        );
        data.runs.entry(key).or_default().push(Run {
            slot: r.try_get(2).context("mission_runs.slot")?,
            state: r.try_get(3).context("mission_runs.state")?,
            outcome: r.try_get(4).context("mission_runs.outcome")?,
            change_id: r.try_get(5).context("mission_runs.change_id")?,
            iteration_id: r.try_get(6).context("mission_runs.iteration_id")?,
            claimed_at: r.try_get(7).context("mission_runs.claimed_at")?,
        });
    }
    for r in admin
        .query(
            "SELECT id, user_id, record_id, data->>'nextRunAt' FROM public.sync_changes
             WHERE client_id = 'mana-ai-runner'",
            &[],
        )
        .await
        .context("reading the write-backs")?
    {
        let key = (
            r.try_get(1).context("user_id")?,
            r.try_get(2).context("record_id")?,
        );
        let id = r.try_get(0).context("write-back id")?;
        data.writebacks
            .insert(id, (key, r.try_get(3).context("write-back nextRunAt")?));
    }
    for r in admin
        .query(
            "SELECT user_id, mission_id,
                    coalesce(jsonb_path_query_array(record->'iterations', '$[*].id'), '[]')
             FROM mana_ai.mission_snapshots WHERE NOT deleted",
            &[],
        )
        .await
        .context("reading the snapshots' iterations")?
    {
        let key = (
            r.try_get(0).context("user_id")?,
            r.try_get(1).context("mission_id")?,
        );
        let ids: serde_json::Value = r.try_get(2).context("iteration ids")?;
        let ids = ids.as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        });
        data.iterations.insert(key, ids.unwrap_or_default());
    }
    Ok(())
}
