//! The change queue (`mana_ai.change_queue`, filled by the triggers), the
//! changes set aside (`mana_ai.dead_changes`), and the applier's prepared
//! statements ([`ApplierStatements`]), which span the queue, the change log and the
//! snapshots.

use chrono::{DateTime, Utc};
use tokio_postgres::{GenericClient, Row, Statement};
use uuid::Uuid;

use super::{batch_read, history, snapshots};
use crate::sync::change::{clip_bytes, Poison};

/// One row of `mana_ai.change_queue`, claimed by the applier.
#[derive(Debug, Clone)]
pub(crate) struct QueueRow {
    pub id: i64,
    pub change_id: Uuid,
    pub user_id: String,
    pub table_name: String,
    /// When the trigger queued it (database clock).
    pub queued_at: DateTime<Utc>,
}

impl QueueRow {
    fn from_row(r: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(QueueRow {
            id: r.try_get("id")?,
            change_id: r.try_get("change_id")?,
            user_id: r.try_get("user_id")?,
            table_name: r.try_get("table_name")?,
            queued_at: r.try_get("queued_at")?,
        })
    }
}

/// Claims (deletes and returns) the oldest `$1` queue rows from id `$2` on
/// (the low-water mark, `reactor::low_water`: below it every row was
/// claimed, so the index scan never walks their dead entries), with what
/// the mark needs to know, all read by this one statement: `xmin` of its
/// own snapshot, its transaction's xid (taken by the DELETE, after the
/// snapshot), and which queue it read (the identity sequence's storage, the
/// server's start and its incarnation, which a crash empties). One row even
/// when nothing is claimed.
///
/// It also scopes the transaction to the first claimed row's user (the
/// settings `batch_read` describes), so that user's change rows and
/// snapshots are read by a statement pipelined behind this one, in its round
/// trip; `scoped_user` names that user (NULL when nothing is claimed).
///
/// `= ANY(ARRAY(subquery))` rather than `IN (subquery)`: with `IN` the
/// planner hashes the subquery and seq-scans the whole queue (about 20 ms at
/// a depth of 10^5, per batch); the array makes it an index scan of the
/// claimed ids whatever the depth.
const CLAIM: &str = "WITH claimed AS (
       DELETE FROM mana_ai.change_queue
       WHERE id = ANY(ARRAY(SELECT id FROM mana_ai.change_queue WHERE id >= $2 ORDER BY id LIMIT $1))
       RETURNING id, change_id, user_id, table_name, queued_at,
                 pg_current_xact_id_if_assigned()::text::int8 AS claim_xid),
     scope AS (
       SELECT set_config('app.current_user_id', first.user_id, true) AS scoped_user,
              set_config('mana_ai.batch_changes',
                         (SELECT string_agg(o.change_id::text, ',') FROM claimed o
                          WHERE o.user_id = first.user_id), true) AS scoped_changes
       FROM (SELECT user_id FROM claimed ORDER BY id LIMIT 1) AS first)
     SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8 AS xmin,
            pg_relation_filenode(pg_get_serial_sequence('mana_ai.change_queue', 'id')::regclass)::text::int8
              AS sequence_filenode,
            (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::int8 AS server_started_micros,
            (SELECT id FROM mana_ai.server_incarnation) AS incarnation,
            s.scoped_user, c.id, c.change_id, c.user_id, c.table_name, c.queued_at, c.claim_xid
     FROM (SELECT) AS one LEFT JOIN scope AS s ON true LEFT JOIN claimed AS c ON true";

/// Claims the queue rows of the given ids (the exact row a batch failed
/// on, rows the backstop found).
const CLAIM_IDS: &str = "DELETE FROM mana_ai.change_queue WHERE id = ANY($1)
     RETURNING id, change_id, user_id, table_name, queued_at";

const INSERT_DEAD: &str = "INSERT INTO mana_ai.dead_changes
       (queue_id, change_id, user_id, table_name, record_id, record_id_length, reason, detail)
     SELECT * FROM unnest($1::int8[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                          $6::int4[], $7::text[], $8::text[])";

/// Which queue a claim read: the storage of the queue's identity sequence,
/// when the server started, and its incarnation (`None` after a crash
/// emptied it, migration 0013). Ids are comparable only within one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueEpoch {
    pub sequence_filenode: i64,
    pub server_started_micros: i64,
    pub incarnation: Option<Uuid>,
}

/// What the claim statement saw besides its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    /// `xmin` of the claim statement's own snapshot: every xid below it
    /// had ended when the claim read the queue.
    pub xmin: i64,
    /// The claim's transaction id, taken by its DELETE after its snapshot
    /// (None when it deleted nothing).
    pub xid: Option<i64>,
    pub epoch: QueueEpoch,
}

/// The applier's statements, prepared once per pooled connection (deadpool
/// caches them, so after the first batch this costs no round trip). Holding
/// them all before a batch starts keeps pipelined statements in the order
/// they were issued: a cache miss can never hold back an earlier statement
/// while a later one is sent.
#[derive(Clone)]
pub(crate) struct ApplierStatements {
    pub claim: Statement,
    pub claim_ids: Statement,
    pub set_user: Statement,
    pub set_scope: Statement,
    pub read_scoped: Statement,
    pub upsert_missions: Statement,
    pub upsert_agents: Statement,
    pub insert_dead: Statement,
    pub armable_of_agents: Statement,
}

impl ApplierStatements {
    /// Prepares (or takes from the connection's cache) every statement;
    /// the misses are prepared in one pipelined round trip.
    pub(crate) async fn get(
        client: &deadpool_postgres::ClientWrapper,
        generation: crate::sync::generation::Generation,
    ) -> Result<ApplierStatements, tokio_postgres::Error> {
        // Each field beside its statement; `try_join!` polls them together,
        // so the misses go out in one pipelined round trip.
        macro_rules! prepare_all {
            ($($field:ident: $sql:expr),* $(,)?) => {{
                let ($($field,)*) =
                    futures_util::try_join!($(client.prepare_cached($sql)),*)?;
                ApplierStatements { $($field),* }
            }};
        }
        Ok(prepare_all! {
            claim: CLAIM,
            claim_ids: CLAIM_IDS,
            set_user: history::SET_USER,
            set_scope: batch_read::SET_SCOPE,
            read_scoped: batch_read::read_scoped(generation),
            upsert_missions: snapshots::UPSERT_MISSIONS,
            upsert_agents: snapshots::UPSERT_AGENTS,
            insert_dead: INSERT_DEAD,
            armable_of_agents: snapshots::ARMABLE_OF_AGENTS,
        })
    }
}

/// What a claim from the low-water mark took and saw.
#[derive(Debug)]
pub(crate) struct Claim {
    /// In queue order.
    pub rows: Vec<QueueRow>,
    pub horizon: Horizon,
    /// The user whose scope the claim set (the first row's), if any.
    pub scoped_user: Option<String>,
}

/// Claims (deletes and returns) the oldest `limit` queue rows from id
/// `from` on, in queue order, with the horizon the claim statement saw,
/// and scopes the transaction to the first row's user (see [`CLAIM`]). The
/// deletion commits with the snapshot writes or not at all, so each change
/// is applied exactly once. Only the leader applies; a second applier would
/// block on the row locks and then find the rows gone, never apply them
/// twice.
pub(crate) async fn claim(
    client: &impl GenericClient,
    statements: &ApplierStatements,
    limit: i64,
    from: i64,
) -> anyhow::Result<Claim> {
    let rows = client.query(&statements.claim, &[&limit, &from]).await?;
    // The statement returns one row even when it claims nothing.
    let first = rows
        .first()
        .ok_or_else(|| anyhow::anyhow!("the queue claim returned no row"))?;
    let mut horizon = Horizon {
        xmin: first.try_get("xmin")?,
        xid: None,
        epoch: QueueEpoch {
            sequence_filenode: first.try_get("sequence_filenode")?,
            server_started_micros: first.try_get("server_started_micros")?,
            incarnation: first.try_get("incarnation")?,
        },
    };
    let scoped_user = first.try_get("scoped_user")?;
    let mut claimed = Vec::with_capacity(rows.len());
    for r in &rows {
        if r.try_get::<_, Option<i64>>("id")?.is_none() {
            continue;
        }
        horizon.xid = horizon.xid.or(r.try_get("claim_xid")?);
        claimed.push(QueueRow::from_row(r)?);
    }
    claimed.sort_by_key(|q| q.id);
    Ok(Claim {
        rows: claimed,
        horizon,
        scoped_user,
    })
}

/// Writes a new incarnation after a crash emptied it (see migration 0013).
pub(crate) async fn renew_incarnation(
    client: &impl GenericClient,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO mana_ai.server_incarnation DEFAULT VALUES ON CONFLICT DO NOTHING",
            &[],
        )
        .await?;
    Ok(())
}

/// Claims the queue rows of `ids` that are still there, in queue order.
pub(crate) async fn claim_ids(
    client: &impl GenericClient,
    statements: &ApplierStatements,
    ids: &[i64],
) -> Result<Vec<QueueRow>, tokio_postgres::Error> {
    let rows = client.query(&statements.claim_ids, &[&ids]).await?;
    let mut claimed: Vec<QueueRow> = rows
        .iter()
        .map(QueueRow::from_row)
        .collect::<Result<_, _>>()?;
    claimed.sort_by_key(|q| q.id);
    Ok(claimed)
}

/// Ids of queue rows below `bound` queued more than `min_age_secs` ago: rows
/// the claim, which reads from `bound` on, will never take (the backstop's
/// search; it should find none). Walks the index from the start, so it runs
/// only with the safety sweep.
pub(crate) async fn below_bound(
    client: &impl GenericClient,
    bound: i64,
    min_age_secs: f64,
    limit: i64,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id FROM mana_ai.change_queue
             WHERE id < $1 AND queued_at < clock_timestamp() - make_interval(secs => $2)
             ORDER BY id LIMIT $3",
            &[&bound, &min_age_secs, &limit],
        )
        .await?;
    rows.iter().map(|r| r.try_get("id")).collect()
}

/// A queue row set aside, with why.
#[derive(Debug, Clone)]
pub(crate) struct DeadChange {
    pub queue: QueueRow,
    pub record_id: Option<String>,
    pub poison: Poison,
}

/// Records poison rows in `mana_ai.dead_changes`; no query when `dead` is
/// empty. Ids are cut (`record_id_length` keeps the true length).
pub(crate) async fn insert_dead(
    client: &impl GenericClient,
    statements: &ApplierStatements,
    dead: &[DeadChange],
) -> Result<(), tokio_postgres::Error> {
    if dead.is_empty() {
        return Ok(());
    }
    let queue_ids: Vec<i64> = dead.iter().map(|d| d.queue.id).collect();
    let change_ids: Vec<Uuid> = dead.iter().map(|d| d.queue.change_id).collect();
    let users: Vec<&str> = dead
        .iter()
        .map(|d| clip_bytes(&d.queue.user_id, 512))
        .collect();
    let tables: Vec<&str> = dead
        .iter()
        .map(|d| clip_bytes(&d.queue.table_name, 200))
        .collect();
    let records: Vec<Option<&str>> = dead
        .iter()
        .map(|d| d.record_id.as_deref().map(|r| clip_bytes(r, 200)))
        .collect();
    let lengths: Vec<Option<i32>> = dead
        .iter()
        .map(|d| d.record_id.as_ref().map(|r| r.len() as i32))
        .collect();
    let reasons: Vec<&str> = dead.iter().map(|d| d.poison.reason()).collect();
    let details: Vec<String> = dead.iter().map(|d| d.poison.to_string()).collect();
    client
        .execute(
            &statements.insert_dead,
            &[
                &queue_ids,
                &change_ids,
                &users,
                &tables,
                &records,
                &lengths,
                &reasons,
                &details,
            ],
        )
        .await?;
    Ok(())
}

/// One row of `mana_ai.dead_changes` as operators see it (ids, reason and a
/// detail that never carries field values).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeadChangeRow {
    pub id: i64,
    pub change_id: Uuid,
    pub user_id: String,
    pub table_name: String,
    pub record_id: Option<String>,
    pub reason: String,
    pub detail: String,
    pub dead_at: DateTime<Utc>,
}

impl DeadChangeRow {
    fn from_row(r: &Row) -> Result<Self, tokio_postgres::Error> {
        Ok(DeadChangeRow {
            id: r.try_get("id")?,
            change_id: r.try_get("change_id")?,
            user_id: r.try_get("user_id")?,
            table_name: r.try_get("table_name")?,
            record_id: r.try_get("record_id")?,
            reason: r.try_get("reason")?,
            detail: r.try_get("detail")?,
            dead_at: r.try_get("dead_at")?,
        })
    }
}

/// Set-aside changes, newest first, optionally of one user; with how many
/// there are in all (of that user).
pub(crate) async fn dead_changes(
    client: &impl GenericClient,
    user_id: Option<&str>,
    limit: i64,
) -> Result<(i64, Vec<DeadChangeRow>), tokio_postgres::Error> {
    let total: i64 = client
        .query_one(
            "SELECT count(*) AS total FROM mana_ai.dead_changes
             WHERE $1::text IS NULL OR user_id = $1",
            &[&user_id],
        )
        .await?
        .try_get("total")?;
    let rows = client
        .query(
            "SELECT id, change_id, user_id, table_name, record_id, reason, detail, dead_at
             FROM mana_ai.dead_changes WHERE $1::text IS NULL OR user_id = $1
             ORDER BY id DESC LIMIT $2",
            &[&user_id, &limit],
        )
        .await?;
    let rows = rows
        .iter()
        .map(DeadChangeRow::from_row)
        .collect::<Result<_, _>>()?;
    Ok((total, rows))
}

/// Queue depth and NOTIFY queue usage, read at scrape time.
pub(crate) async fn queue_gauges(
    client: &impl GenericClient,
) -> Result<(i64, f64), tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM mana_ai.change_queue) AS depth,
                    pg_notification_queue_usage() AS notify_usage",
            &[],
        )
        .await?;
    Ok((row.try_get("depth")?, row.try_get("notify_usage")?))
}
