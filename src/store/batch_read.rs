//! A batch's change rows and their records' snapshots, read by one
//! statement under one user's RLS scope.
//!
//! The scope is two transaction-local settings: `app.current_user_id`
//! (what the `sync_changes` policy reads) and `mana_ai.batch_changes`, the
//! user's claimed change ids. The claim sets them for the batch's first
//! user (`queue::CLAIM`), so that user's read is pipelined behind the claim
//! in its round trip; [`SET_SCOPE`] sets them for each other user.
//!
//! [`read_scoped`] reads the change rows by id, then loads and locks the
//! snapshot of every record id they name, in both snapshot tables: a row's
//! kind is the applier's to decide (`change::validate`), so whatever it
//! decides, the record's snapshot, if there is one, has been read and
//! locked in the same statement.

use tokio_postgres::Row;
use uuid::Uuid;

use super::decode::RowError;
use super::history;
use super::snapshots::{self, Snapshot, SnapshotKey};
use crate::sync::change::{Kind, Poison, RawChange};
use crate::sync::generation::Generation;

/// Sets the scope of the next [`read_scoped`]: the user (`$1`) and their
/// claimed change ids (`$2`, comma-separated).
pub(crate) const SET_SCOPE: &str = "SELECT set_config('app.current_user_id', $1, true),
            set_config('mana_ai.batch_changes', $2, true)";

/// The snapshots of a table (`$table`, keyed by `$id`) of every record id
/// in `c`, locked, one primary-key probe each (see [`read_scoped_sql`]).
macro_rules! lock_snapshots_sql {
    ($table:literal, $id:literal) => {
        concat!(
            "
       SELECT s.* FROM (SELECT DISTINCT record_id FROM c) AS k
       CROSS JOIN LATERAL (
         SELECT s.user_id, s.",
            $id,
            " AS record_id, s.record, s.fold_state, s.change_count, s.last_applied_at
         FROM mana_ai.",
            $table,
            " s
         WHERE s.user_id = current_setting('app.current_user_id', true) AND s.",
            $id,
            " = k.record_id
         OFFSET 0 FOR UPDATE) AS s"
        )
    };
}

/// The scoped read of a generation's stamps column. `part` says what a row
/// is: 0 a change row, 1 a mission snapshot, 2 an agent snapshot. The
/// stamps are read as `field_timestamps` whatever the generation's column;
/// `own_writeback` says whether a change row is one of the service's own
/// write-backs (recorded in `mission_runs`, which only the service writes).
/// The user is named in the statement as well as set for RLS, so a claimed
/// id never reads another user's row even where RLS is off.
///
/// The statement has no parameters, so its plan is made once per
/// connection, from whatever the statistics said then. Each id is therefore
/// probed on its own (a LATERAL subquery that `OFFSET 0` keeps from being
/// flattened into a join): a primary-key probe whatever the table's size,
/// never a walk of the user's rows in `sync_changes` or of their snapshots,
/// which grow for as long as the user uses mana.
macro_rules! read_scoped_sql {
    ($stamps:literal) => {
        concat!(
            "WITH c AS (
       SELECT c.id, c.user_id, c.app_id, c.table_name, c.record_id, c.op, c.data,
              c.",
            $stamps,
            " AS field_timestamps, c.created_at,
              EXISTS (SELECT 1 FROM mana_ai.mission_runs r WHERE r.change_id = c.id) AS own_writeback
       FROM unnest(string_to_array(current_setting('mana_ai.batch_changes', true), ',')::uuid[]) AS k(id)
       CROSS JOIN LATERAL (
         SELECT * FROM public.sync_changes c
         WHERE c.id = k.id AND c.user_id = current_setting('app.current_user_id', true)
         OFFSET 0) AS c),
     m AS (",
            lock_snapshots_sql!("mission_snapshots", "mission_id"),
            "),
     a AS (",
            lock_snapshots_sql!("agent_snapshots", "agent_id"),
            ")
     SELECT 0 AS part, c.id, c.user_id, c.app_id, c.table_name, c.record_id, c.op, c.data,
            c.field_timestamps, c.created_at, c.own_writeback, NULL::jsonb AS record,
            NULL::jsonb AS fold_state, NULL::int8 AS change_count, NULL::timestamptz AS last_applied_at
     FROM c
     UNION ALL
     SELECT 1, NULL, m.user_id, NULL, NULL, m.record_id, NULL, NULL, NULL, NULL, NULL,
            m.record, m.fold_state, m.change_count, m.last_applied_at
     FROM m
     UNION ALL
     SELECT 2, NULL, a.user_id, NULL, NULL, a.record_id, NULL, NULL, NULL, NULL, NULL,
            a.record, a.fold_state, a.change_count, a.last_applied_at
     FROM a"
        )
    };
}

/// [`read_scoped_sql`] of a generation.
pub(crate) fn read_scoped(generation: Generation) -> &'static str {
    match generation {
        Generation::V06 => read_scoped_sql!("field_timestamps"),
        Generation::Current => read_scoped_sql!("field_meta"),
    }
}

/// The ids of a user's claimed changes as [`SET_SCOPE`] takes them.
pub(crate) fn scope_ids(ids: &[Uuid]) -> String {
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    ids.join(",")
}

/// A change row as read: readable, or (its record id if that read) why not.
pub(crate) type FoundChange = Result<RawChange, (Option<String>, Poison)>;

/// One row of [`read_scoped`].
pub(crate) enum ScopedRow {
    Change(Uuid, FoundChange),
    Snapshot(Kind, SnapshotKey, Result<Snapshot, Poison>),
}

impl ScopedRow {
    /// Decodes a row. Only the columns we own (`part`, the ids, the
    /// snapshot keys) fail the batch; anything else fails this row alone.
    pub(crate) fn from_row(row: &Row) -> Result<ScopedRow, tokio_postgres::Error> {
        let kind = match row.try_get::<_, i32>("part")? {
            0 => return change_row(row),
            1 => Kind::Mission,
            _ => Kind::Agent,
        };
        let key: SnapshotKey = (row.try_get("user_id")?, row.try_get("record_id")?);
        let snapshot = match snapshots::snapshot_from_row(row) {
            Ok(snapshot) => Ok(snapshot),
            Err(RowError::Poison(poison)) => Err(poison),
            Err(RowError::Systemic(e)) => return Err(e),
        };
        Ok(ScopedRow::Snapshot(kind, key, snapshot))
    }
}

/// A change row: the id must read (a uuid, ours to match); any other
/// column may fail for this row alone.
fn change_row(row: &Row) -> Result<ScopedRow, tokio_postgres::Error> {
    let id: Uuid = row.try_get("id")?;
    let found = match history::raw_change(row) {
        Ok(raw) => Ok(raw),
        Err(RowError::Poison(poison)) => Err((row.try_get("record_id").ok(), poison)),
        Err(RowError::Systemic(e)) => return Err(e),
    };
    Ok(ScopedRow::Change(id, found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgtemp::{PgServer, TempDb, SERVICE_ROLE};
    use serde_json::Value;

    /// Rows each plan node of `tables` read (returned or filtered out,
    /// over all its loops), summed by table, from EXPLAIN's JSON.
    fn rows_read(node: &Value, tables: &[&str], out: &mut Vec<(String, f64)>) {
        let num = |key: &str| node.get(key).and_then(Value::as_f64).unwrap_or(0.0);
        if let Some(table) = node.get("Relation Name").and_then(Value::as_str) {
            if tables.contains(&table) {
                let per_loop = num("Actual Rows")
                    + num("Rows Removed by Filter")
                    + num("Rows Removed by Index Recheck");
                out.push((table.to_string(), per_loop * num("Actual Loops")));
            }
        }
        for child in node
            .get("Plans")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            rows_read(child, tables, out);
        }
    }

    /// The user's change rows and snapshots, `n` of each (missions m0..).
    async fn grow(admin: &tokio_postgres::Client, n: i32) {
        admin
            .execute(
                "INSERT INTO public.sync_changes (app_id, table_name, record_id, user_id, op, data, client_id)
                 SELECT 'ai', 'aiMissions', 'm' || g, 'heavy', 'update', '{}', 'test'
                 FROM generate_series(0, $1 - 1) AS g",
                &[&n],
            )
            .await
            .unwrap();
        admin
            .execute(
                "INSERT INTO mana_ai.mission_snapshots (user_id, mission_id, record, fold_state, last_applied_at)
                 SELECT 'heavy', 'm' || g, '{}', '{}', now() FROM generate_series(0, $1 - 1) AS g
                 ON CONFLICT DO NOTHING",
                &[&n],
            )
            .await
            .unwrap();
    }

    /// The statement has no parameters, so a connection plans it once,
    /// early, while the tables are small, and keeps that plan: after the
    /// user has thousands of change rows and missions, reading one change
    /// must still read one change row and one snapshot, not the user's
    /// rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_change_of_a_heavy_user_reads_one_row_of_each_table() {
        let server = PgServer::discover().expect("a Postgres for the tests");
        let db = TempDb::create(&server, "mana_ai_t").await.unwrap();
        let admin = db.admin().await.unwrap();
        crate::triggers::install(&admin, SERVICE_ROLE)
            .await
            .unwrap();
        let mut service = db.connect_as(SERVICE_ROLE).await.unwrap();
        crate::db::migrate::migrate(&mut service).await.unwrap();
        admin
            .batch_execute(
                "ALTER TABLE public.sync_changes SET (autovacuum_enabled = false);
                 ALTER TABLE mana_ai.mission_snapshots SET (autovacuum_enabled = false);",
            )
            .await
            .unwrap();
        grow(&admin, 3).await;
        let scope = |id: Uuid| ("heavy", scope_ids(&[id]));
        let id_of = |record: &'static str| {
            let admin = &admin;
            async move {
                let sql = "SELECT id FROM public.sync_changes WHERE record_id = $1 LIMIT 1";
                admin
                    .query_one(sql, &[&record])
                    .await
                    .unwrap()
                    .get::<_, Uuid>("id")
            }
        };
        // Planned (and cached) while small.
        let prepare = format!("PREPARE scoped AS {}", read_scoped(Generation::V06));
        service.batch_execute(&prepare).await.unwrap();
        let tx = service.transaction().await.unwrap();
        let (user, ids) = scope(id_of("m1").await);
        tx.execute(SET_SCOPE, &[&user, &ids]).await.unwrap();
        assert_eq!(tx.query("EXECUTE scoped", &[]).await.unwrap().len(), 2);
        tx.rollback().await.unwrap();

        grow(&admin, 4000).await;
        let tx = service.transaction().await.unwrap();
        let (user, ids) = scope(id_of("m7").await);
        tx.execute(SET_SCOPE, &[&user, &ids]).await.unwrap();
        let explain = "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE scoped";
        let plan: Value = tx.query_one(explain, &[]).await.unwrap().get(0);
        let mut read = Vec::new();
        let tables = ["sync_changes", "mission_snapshots", "agent_snapshots"];
        rows_read(&plan[0]["Plan"], &tables, &mut read);
        for table in ["sync_changes", "mission_snapshots"] {
            let rows: f64 = read
                .iter()
                .filter(|(t, _)| t == table)
                .map(|(_, n)| n)
                .sum();
            assert_eq!(rows, 1.0, "rows of {table} read: {read:?}\n{plan:#}");
        }
    }

    #[test]
    fn scope_ids_are_comma_separated_uuids() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        assert_eq!(scope_ids(&[]), "");
        assert_eq!(
            scope_ids(&[a, b]),
            "00000000-0000-0000-0000-000000000001,00000000-0000-0000-0000-000000000002"
        );
    }
}
