//! Housekeeping statements: ANALYZE of the snapshot tables, retention's
//! batched deletes, the connected role's privileges and the database clock.

use chrono::{DateTime, Utc};
use tokio_postgres::{GenericClient, Statement};

/// ANALYZEs both snapshot tables; returns the rows they now hold (the
/// planner's estimate, `reltuples`).
pub(crate) async fn analyze_snapshots(
    client: &impl GenericClient,
) -> Result<u64, tokio_postgres::Error> {
    client
        .batch_execute("ANALYZE mana_ai.mission_snapshots, mana_ai.agent_snapshots")
        .await?;
    let row = client
        .query_one(
            "SELECT sum(greatest(reltuples, 0))::int8 AS rows FROM pg_class
             WHERE oid IN ('mana_ai.mission_snapshots'::regclass, 'mana_ai.agent_snapshots'::regclass)",
            &[],
        )
        .await?;
    let rows: Option<i64> = row.try_get("rows")?;
    Ok(u64::try_from(rows.unwrap_or(0)).unwrap_or(0))
}

/// A table retention prunes, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PruneSql {
    /// `token_usage` older than the 24 h budget window; `$1` the batch.
    TokenUsage,
    /// `mission_runs` older than `$2` days, never `running`; `$1` the batch.
    MissionRuns,
    /// `dead_changes` older than `$2` days; `$1` the batch.
    DeadChanges,
    /// `decrypt_audit` older than `$2` days, every user's; `$1` the batch.
    /// Runs in a transaction that sets `mana_ai.audit_prune_days` first:
    /// migration 0007's policies let the delete through only then.
    DecryptAudit,
    /// `research_jobs` not submitted or polled for `$2` days, every user's;
    /// `$1` the batch. Like `DecryptAudit`, in a transaction that sets
    /// `mana_ai.research_prune_days` first (migration 0012's policies).
    ResearchJobs,
}

impl PruneSql {
    /// Deletes up to `$1` rows. Each batch walks an index in age order
    /// (`token_usage_ts`, `mission_runs_prunable`, `dead_changes_dead_at`,
    /// `decrypt_audit_ts`, `research_jobs_touched`)
    /// and deletes by key: a batch costs the rows it deletes, not the size
    /// of the table.
    fn sql(self) -> &'static str {
        match self {
            PruneSql::TokenUsage => {
                "DELETE FROM mana_ai.token_usage WHERE id = ANY (ARRAY(
                     SELECT id FROM mana_ai.token_usage
                     WHERE ts < now() - interval '24 hours'
                     ORDER BY ts LIMIT $1))"
            }
            // FOR UPDATE SKIP LOCKED passes over a row a claim is updating,
            // and the DELETE re-checks `state` on the row's latest version.
            // 'running' is `RunState::Running` (a test below checks it): the
            // prune statements share one parameter list.
            PruneSql::MissionRuns => {
                "WITH old AS (
                     SELECT user_id, mission_id, slot FROM mana_ai.mission_runs
                     WHERE state <> 'running'
                       AND greatest(claimed_at, finished_at, retry_at) < now() - make_interval(days => $2::int4)
                     ORDER BY greatest(claimed_at, finished_at, retry_at)
                     LIMIT $1
                     FOR UPDATE SKIP LOCKED)
                 DELETE FROM mana_ai.mission_runs r USING old
                 WHERE (r.user_id, r.mission_id, r.slot) = (old.user_id, old.mission_id, old.slot)
                   AND r.state <> 'running'"
            }
            PruneSql::DeadChanges => {
                "DELETE FROM mana_ai.dead_changes WHERE id = ANY (ARRAY(
                     SELECT id FROM mana_ai.dead_changes
                     WHERE dead_at < now() - make_interval(days => $2::int4)
                     ORDER BY dead_at LIMIT $1))"
            }
            PruneSql::DecryptAudit => {
                "DELETE FROM mana_ai.decrypt_audit WHERE id = ANY (ARRAY(
                     SELECT id FROM mana_ai.decrypt_audit
                     WHERE ts < now() - make_interval(days => $2::int4)
                     ORDER BY ts LIMIT $1))"
            }
            // The DELETE re-checks the age on the row's latest version: a
            // run that polled the job meanwhile keeps it.
            PruneSql::ResearchJobs => {
                "DELETE FROM mana_ai.research_jobs
                 WHERE (user_id, mission_id) IN (
                     SELECT user_id, mission_id FROM mana_ai.research_jobs
                     WHERE greatest(submitted_at, last_polled_at) < now() - make_interval(days => $2::int4)
                     ORDER BY greatest(submitted_at, last_polled_at) LIMIT $1)
                   AND greatest(submitted_at, last_polled_at) < now() - make_interval(days => $2::int4)"
            }
        }
    }

    /// The setting that lets the prune's own RLS policies through
    /// (migrations 0007 and 0012); None for tables without row-level
    /// security.
    fn policy_setting(self) -> Option<&'static str> {
        match self {
            PruneSql::DecryptAudit => Some("mana_ai.audit_prune_days"),
            PruneSql::ResearchJobs => Some("mana_ai.research_prune_days"),
            PruneSql::TokenUsage | PruneSql::MissionRuns | PruneSql::DeadChanges => None,
        }
    }

    /// The batch delete, prepared (or from the connection's cache).
    pub(crate) async fn prepare(
        self,
        client: &deadpool_postgres::ClientWrapper,
    ) -> Result<Statement, tokio_postgres::Error> {
        client.prepare_cached(self.sql()).await
    }

    /// Runs one batch of at most `batch` rows; returns the rows deleted.
    pub(crate) async fn delete_batch(
        self,
        client: &mut deadpool_postgres::ClientWrapper,
        statement: &Statement,
        batch: i64,
        days: i32,
    ) -> Result<u64, tokio_postgres::Error> {
        let with_days: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&batch, &days];
        let params = match self {
            PruneSql::TokenUsage => &with_days[..1],
            PruneSql::MissionRuns
            | PruneSql::DeadChanges
            | PruneSql::DecryptAudit
            | PruneSql::ResearchJobs => &with_days[..],
        };
        let Some(setting) = self.policy_setting() else {
            return client.execute(statement, params).await;
        };
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT set_config($1, $2, true)",
            &[&setting, &days.to_string()],
        )
        .await?;
        let n = tx.execute(statement, params).await?;
        tx.commit().await?;
        Ok(n)
    }
}

/// The columns of `public.sync_changes` (its generation is read from them,
/// `sync::generation`); empty when the table does not exist.
pub(crate) async fn sync_changes_columns(
    client: &impl GenericClient,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT attname::text AS name FROM pg_attribute
             WHERE attrelid = to_regclass('public.sync_changes') AND attnum > 0 AND NOT attisdropped
             ORDER BY attnum",
            &[],
        )
        .await?;
    rows.iter().map(|r| r.try_get("name")).collect()
}

/// The connected role and whether it is a superuser or bypasses RLS.
#[derive(Debug, Clone)]
pub(crate) struct RoleRow {
    pub role: String,
    pub superuser: bool,
    pub bypass_rls: bool,
}

/// Reads the connected role's attributes from `pg_roles`.
pub(crate) async fn current_role(
    client: &impl GenericClient,
) -> Result<RoleRow, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT current_user::text AS role, rolsuper, rolbypassrls
             FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    Ok(RoleRow {
        role: row.try_get("role")?,
        superuser: row.try_get("rolsuper")?,
        bypass_rls: row.try_get("rolbypassrls")?,
    })
}

/// The database's clock now (`clock_timestamp()`, not the transaction's).
pub(crate) async fn clock_timestamp(
    client: &impl GenericClient,
) -> Result<DateTime<Utc>, tokio_postgres::Error> {
    client
        .query_one("SELECT clock_timestamp() AS now", &[])
        .await?
        .try_get("now")
}

#[cfg(test)]
mod tests {
    use super::PruneSql;
    use crate::run_record::RunState;

    #[test]
    fn the_prune_keeps_running_claims_by_their_state() {
        let running = format!("<> '{}'", RunState::Running.as_str());
        assert_eq!(PruneSql::MissionRuns.sql().matches(&running).count(), 2);
    }
}
