//! Rebuilds snapshots from their change history: the users listed in
//! `mana_ai.fold_rebuild` (migrations 0003 and 0008 list every user whose
//! snapshots were folded by an earlier rule, issue 8's and issue 18's; see
//! the header of `sync/fold.rs`).
//!
//! The leader runs it once at start, before it rebuilds the wheel and starts
//! the applier, so nothing else writes snapshots meanwhile. One REPEATABLE
//! READ transaction per 50 users, each read in its own RLS scope: a user's
//! snapshots are deleted and folded
//! anew from every mission/agent row that is neither still queued nor set
//! aside, read in `store::history::REPLAY_ORDER` and numbered with negative `seq`s;
//! queued rows are left to the applier, whose queue ids are positive, so a
//! transaction whose rows were only partly applied still folds in insertion
//! order (the applied rows had the lower queue ids). The one snapshot makes
//! the queue and the history agree: a row committed later is in neither.
//! The users' entries are deleted in the same commit, so an interrupted
//! rebuild resumes with the users not yet done.

use anyhow::Context;
use deadpool_postgres::Pool;
use tokio_postgres::{IsolationLevel, Row, Statement, Transaction};

use super::fold_batch::{count, snapshot_write};
use crate::store::decode::RowError;
use crate::store::history;
use crate::store::queue::ApplierStatements;
use crate::store::snapshots::{self, Snapshot, SnapshotWrite};
use crate::sync::change::{self, Kind, RawChange};

/// Rows fetched per round trip (mission rows can carry long iteration lists).
const FETCH: i32 = 200;
/// Snapshot rows per upsert.
const WRITE_CHUNK: usize = 200;
/// Users rebuilt per transaction.
const USERS_PER_TX: i64 = 50;

/// Rebuilds every listed user's snapshots; returns how many users and how
/// many records were rebuilt.
pub async fn rebuild_listed(
    pool: &Pool,
    settings: &super::Settings,
) -> anyhow::Result<(usize, usize)> {
    let max_field_bytes = settings.max_field_bytes;
    let mut client = pool.get().await.context("connecting to the database")?;
    let statements = ApplierStatements::get(&client, settings.generation).await?;
    let history = client
        .prepare_cached(&history::user_history_sql(settings.generation))
        .await?;
    let (mut users, mut records) = (0, 0);
    loop {
        let listed = history::users_to_rebuild(&**client, USERS_PER_TX)
            .await
            .context("reading mana_ai.fold_rebuild")?;
        let Some(from) = listed.first() else {
            return Ok((users, records));
        };
        records += rebuild_users(&mut client, &statements, &history, &listed, max_field_bytes)
            .await
            .with_context(|| format!("rebuilding the snapshots of users from {from:?}"))?;
        users += listed.len();
    }
}

/// The record being folded: its kind, id and snapshot so far.
type Current = (Kind, String, Snapshot);

/// Rebuilds some users' snapshots in one transaction, each user's history
/// read in that user's RLS scope; returns the records written.
async fn rebuild_users(
    client: &mut tokio_postgres::Client,
    statements: &ApplierStatements,
    history: &Statement,
    users: &[String],
    max_field_bytes: usize,
) -> anyhow::Result<usize> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await?;
    // Derived state, like the applier's batches: a rebuild lost in a crash
    // loses its fold_rebuild deletions too and runs again.
    tx.batch_execute("SET LOCAL synchronous_commit = off")
        .await?;
    snapshots::delete_of_users(&tx, users).await?;
    let mut writes = Writes::default();
    // An empty user id has no scope (and no snapshots): only its entry goes.
    for user in users.iter().filter(|user| !user.is_empty()) {
        tx.execute(&statements.set_user, &[user]).await?;
        fold_history(&tx, statements, history, user, max_field_bytes, &mut writes).await?;
    }
    writes.flush(&tx, statements, 0).await?;
    history::users_rebuilt(&tx, users).await?;
    tx.commit().await?;
    Ok(writes.records)
}

/// Folds one user's history into snapshot writes, a portal's page at a time
/// (a user's whole history need not fit in memory).
async fn fold_history(
    tx: &Transaction<'_>,
    statements: &ApplierStatements,
    history: &Statement,
    user: &str,
    max_field_bytes: usize,
    writes: &mut Writes,
) -> anyhow::Result<()> {
    let portal = tx.bind(history, &[&user]).await?;
    let mut current: Option<Current> = None;
    // Below every queue id (those start at 1), in fold order.
    let mut seq = i64::MIN;
    loop {
        let rows = tx.query_portal(&portal, FETCH).await?;
        for row in &rows {
            let read = raw_change(row, seq);
            seq += 1;
            // A row the applier would set aside is left out, as it was then.
            let raw = match read {
                Ok(raw) => raw,
                Err(RowError::Systemic(e)) => return Err(e.into()),
                Err(RowError::Poison(_)) => continue,
            };
            let Ok(valid) = change::validate(raw, max_field_bytes) else {
                continue;
            };
            let same = current
                .as_ref()
                .is_some_and(|(kind, id, _)| *kind == valid.kind && *id == valid.record_id);
            if !same {
                if let Some(done) = current.take() {
                    writes.push(user, done);
                }
                current = Some((valid.kind, valid.record_id, Snapshot::default()));
            }
            if let Some((_, id, snapshot)) = &mut current {
                fold_row(id, snapshot, &valid.row);
            }
        }
        writes.flush(tx, statements, WRITE_CHUNK).await?;
        if rows.len() < FETCH as usize {
            break;
        }
    }
    if let Some(done) = current.take() {
        writes.push(user, done);
    }
    Ok(())
}

fn raw_change(row: &Row, seq: i64) -> Result<RawChange, RowError> {
    Ok(RawChange {
        seq,
        ..history::raw_change(row)?
    })
}

/// One row into a snapshot being rebuilt, counted as the applier counts.
/// The rows come in fold order with rising `seq`s, so none is late; a row
/// given twice would be, and changes nothing the second time.
fn fold_row(record_id: &str, snapshot: &mut Snapshot, row: &crate::sync::fold::ChangeRow) {
    if snapshot
        .fold
        .apply(record_id, &mut snapshot.record, row)
        .is_ok()
    {
        count(snapshot, row);
    }
}

/// Snapshot rows waiting to be written, per kind.
#[derive(Default)]
struct Writes {
    missions: Vec<SnapshotWrite>,
    agents: Vec<SnapshotWrite>,
    records: usize,
}

impl Writes {
    fn push(&mut self, user: &str, (kind, id, snapshot): Current) {
        let write = snapshot_write((user.to_owned(), id), snapshot);
        self.records += 1;
        match kind {
            Kind::Mission => self.missions.push(write),
            Kind::Agent => self.agents.push(write),
        }
    }

    /// Writes each kind's rows once there are more than `keep`.
    async fn flush(
        &mut self,
        tx: &Transaction<'_>,
        statements: &ApplierStatements,
        keep: usize,
    ) -> Result<(), tokio_postgres::Error> {
        for (kind, rows) in [
            (Kind::Mission, &mut self.missions),
            (Kind::Agent, &mut self.agents),
        ] {
            if rows.len() > keep {
                snapshots::upsert(tx, statements, kind, rows).await?;
                rows.clear();
            }
        }
        Ok(())
    }
}
