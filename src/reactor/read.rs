//! Reading a batch's claimed changes and their records' snapshots: one RLS
//! scope per user (`store::batch_read`), the first user's read pipelined
//! behind the claim, every other user's statements pipelined on the one
//! connection, then each change checked on its own (a change that cannot be
//! read or checked is that change's poison, never the batch's error).

use std::collections::{BTreeMap, HashMap, HashSet};

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use super::outcome::ApplyError;
use crate::store::batch_read::{self, FoundChange, ScopedRow};
use crate::store::queue::{ApplierStatements, DeadChange, QueueRow};
use crate::store::snapshots::Loaded;
use crate::sync::change::{self, Kind, Poison, ValidChange};

/// What the claim's round trip read: the rows of [`batch_read::read_scoped`]
/// under the scope the claim set.
pub(crate) struct FirstRead {
    pub user: String,
    pub rows: Vec<Row>,
}

/// A batch as read: the claimed changes that passed every check, those set
/// aside, and the snapshots (loaded and locked) of the records they name.
pub(crate) struct BatchRead {
    pub valid: Vec<(QueueRow, ValidChange)>,
    pub dead: Vec<DeadChange>,
    pub missions: Loaded,
    pub agents: Loaded,
}

/// Change rows by (user, id), and the snapshots.
#[derive(Default)]
struct Found<'a> {
    changes: HashMap<(&'a str, Uuid), FoundChange>,
    missions: Loaded,
    agents: Loaded,
}

/// Reads the claimed changes and their snapshots, one RLS scope per user,
/// and checks the changes. `first` is what the claim's round trip already
/// read; every other user's scope and read go out pipelined, in order.
pub(crate) async fn read_changes(
    tx: &tokio_postgres::Client,
    statements: &ApplierStatements,
    claimed: &[QueueRow],
    first: Option<FirstRead>,
    max_field_bytes: usize,
) -> Result<BatchRead, ApplyError> {
    let mut dead = Vec::new();
    let mut by_user = by_user(claimed, &mut dead);
    let mut found = Found::default();
    if let Some(first) = first {
        // A user set aside whole (an id that cannot be a scope) was read
        // by the claim all the same: its rows are ignored.
        if let Some((user, _)) = by_user.remove_entry(first.user.as_str()) {
            found.decode(user, &first.rows)?;
        }
    }
    query_changes(tx, statements, &by_user, &mut found).await?;
    let refused: HashSet<i64> = dead.iter().map(|d| d.queue.id).collect();
    let mut valid = Vec::with_capacity(claimed.len());
    for q in claimed.iter().filter(|q| !refused.contains(&q.id)) {
        let row = found.changes.remove(&(q.user_id.as_str(), q.change_id));
        match check(q, row, max_field_bytes) {
            Ok(v) => valid.push((q.clone(), v)),
            Err(set_aside) => dead.push(DeadChange {
                queue: q.clone(),
                record_id: set_aside.0,
                poison: set_aside.1,
            }),
        }
    }
    Ok(BatchRead {
        valid,
        dead,
        missions: found.missions,
        agents: found.agents,
    })
}

/// The claimed change ids by user; a queue row whose user id cannot be a
/// scope is set aside in `dead`.
fn by_user<'a>(
    claimed: &'a [QueueRow],
    dead: &mut Vec<DeadChange>,
) -> BTreeMap<&'a str, Vec<Uuid>> {
    let mut by_user: BTreeMap<&str, Vec<Uuid>> = BTreeMap::new();
    for q in claimed {
        match change::check_user_id(&q.user_id) {
            Ok(()) => by_user.entry(&q.user_id).or_default().push(q.change_id),
            Err(poison) => dead.push(DeadChange {
                queue: q.clone(),
                record_id: None,
                poison,
            }),
        }
    }
    by_user
}

/// Every user's scope and read, pipelined, into `found`.
async fn query_changes<'a>(
    tx: &tokio_postgres::Client,
    statements: &ApplierStatements,
    by_user: &BTreeMap<&'a str, Vec<Uuid>>,
    found: &mut Found<'a>,
) -> Result<(), ApplyError> {
    let scopes: Vec<(&str, String)> = by_user
        .iter()
        .map(|(user, ids)| (*user, batch_read::scope_ids(ids)))
        .collect();
    let args: Vec<[&(dyn ToSql + Sync); 2]> = scopes
        .iter()
        .map(|(user, ids)| [user as &(dyn ToSql + Sync), ids as &(dyn ToSql + Sync)])
        .collect();
    let mut requests = Vec::with_capacity(args.len() * 2);
    for scope in &args {
        requests.push(tx.query(&statements.set_scope, &scope[..]));
        requests.push(tx.query(&statements.read_scoped, &[]));
    }
    // try_join_all polls in order, and a query is sent on its first poll.
    let results = futures_util::future::try_join_all(requests).await?;
    for (i, user) in by_user.keys().enumerate() {
        found.decode(user, &results[2 * i + 1])?;
    }
    Ok(())
}

impl<'a> Found<'a> {
    /// Takes in one user's scoped read.
    fn decode(&mut self, user: &'a str, rows: &[Row]) -> Result<(), ApplyError> {
        for row in rows {
            match ScopedRow::from_row(row)? {
                ScopedRow::Change(id, change) => {
                    self.changes.insert((user, id), change);
                }
                ScopedRow::Snapshot(Kind::Mission, key, snapshot) => {
                    self.missions.insert(key, snapshot);
                }
                ScopedRow::Snapshot(Kind::Agent, key, snapshot) => {
                    self.agents.insert(key, snapshot);
                }
            }
        }
        Ok(())
    }
}

/// One claimed change: read and checked, or (its record id if known) why
/// it is set aside.
fn check(
    q: &QueueRow,
    found: Option<FoundChange>,
    max_field_bytes: usize,
) -> Result<ValidChange, Box<(Option<String>, Poison)>> {
    let mut raw = match found {
        Some(Ok(raw)) => raw,
        Some(Err(unreadable)) => return Err(Box::new(unreadable)),
        None => return Err(Box::new((None, Poison::ChangeNotVisible))),
    };
    raw.seq = q.id; // insertion order: the trigger numbers rows as inserted
    let record_id = raw.record_id.clone();
    // A check that panics on this row fails this row alone.
    std::panic::catch_unwind(|| change::validate(raw, max_field_bytes))
        .unwrap_or(Err(Poison::CheckPanicked))
        .map_err(|poison| Box::new((Some(record_id), poison)))
}
