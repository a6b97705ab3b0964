//! Reading a batch's claimed changes: one RLS scope per user, every user's
//! statements pipelined on the one connection, then each change checked on
//! its own (a change that cannot be read or checked is that change's
//! poison, never the batch's error).

use std::collections::{BTreeMap, HashMap, HashSet};

use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::outcome::ApplyError;
use crate::store::decode::RowError;
use crate::store::history;
use crate::store::queue::{ApplierStatements, DeadChange, QueueRow};
use crate::sync::change::{self, Poison, RawChange, ValidChange};

/// The claimed changes that passed every check, and those set aside.
pub(crate) type ReadChanges = (Vec<(QueueRow, ValidChange)>, Vec<DeadChange>);

/// A change row as read: readable, or (its record id if that read) why not.
type Found<'a> = HashMap<(&'a str, Uuid), Result<RawChange, (Option<String>, Poison)>>;

/// Reads the claimed changes, one RLS scope per user, and checks them.
/// The statements of all users are pipelined on the one connection, in
/// order: each `set_config` precedes its user's read.
pub(crate) async fn read_changes(
    tx: &tokio_postgres::Client,
    statements: &ApplierStatements,
    claimed: &[QueueRow],
    max_field_bytes: usize,
) -> Result<ReadChanges, ApplyError> {
    let mut dead = Vec::new();
    let by_user = by_user(claimed, &mut dead);
    let mut found = query_changes(tx, statements, &by_user).await?;
    let refused: HashSet<i64> = dead.iter().map(|d| d.queue.id).collect();
    let mut valid = Vec::with_capacity(claimed.len());
    for q in claimed.iter().filter(|q| !refused.contains(&q.id)) {
        let found = found.remove(&(q.user_id.as_str(), q.change_id));
        match check(q, found, max_field_bytes) {
            Ok(v) => valid.push((q.clone(), v)),
            Err(set_aside) => dead.push(DeadChange {
                queue: q.clone(),
                record_id: set_aside.0,
                poison: set_aside.1,
            }),
        }
    }
    Ok((valid, dead))
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

/// Every user's `set_config` and read, pipelined; the rows by (user, id).
async fn query_changes<'a>(
    tx: &tokio_postgres::Client,
    statements: &ApplierStatements,
    by_user: &BTreeMap<&'a str, Vec<Uuid>>,
) -> Result<Found<'a>, ApplyError> {
    // Per user: [user] for set_config, [ids, user] for the read.
    let args: Vec<[&(dyn ToSql + Sync); 2]> = by_user
        .iter()
        .map(|(user, ids)| [ids as &(dyn ToSql + Sync), user as &(dyn ToSql + Sync)])
        .collect();
    let mut requests = Vec::with_capacity(args.len() * 2);
    for read in &args {
        requests.push(tx.query(&statements.set_user, &read[1..]));
        requests.push(tx.query(&statements.read, &read[..]));
    }
    // try_join_all polls in order, and a query is sent on its first poll.
    let results = futures_util::future::try_join_all(requests).await?;
    let mut found = HashMap::new();
    for (i, user) in by_user.keys().enumerate() {
        for row in &results[2 * i + 1] {
            // The id must read (uuid, ours to match); any other column
            // may fail for this row alone.
            let id: Uuid = row.try_get("id")?;
            let raw = match history::raw_change(row) {
                Ok(raw) => Ok(raw),
                Err(RowError::Poison(poison)) => Err((row.try_get("record_id").ok(), poison)),
                Err(RowError::Systemic(e)) => return Err(e.into()),
            };
            found.insert((*user, id), raw);
        }
    }
    Ok(found)
}

/// One claimed change: read and checked, or (its record id if known) why
/// it is set aside.
fn check(
    q: &QueueRow,
    found: Option<Result<RawChange, (Option<String>, Poison)>>,
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
