//! Migrations of schema `mana_ai`: the numbered files in `sql/`, embedded in
//! the binary, applied in order by `mana-ai migrate` and on every start.
//!
//! Each runs once (recorded in `mana_ai.schema_migrations` with a checksum),
//! all in one transaction under a transaction-scoped advisory lock, so two
//! instances starting at once apply them once between them.

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

/// (version, name, SQL) in order.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "snapshots", include_str!("../../sql/0001_snapshots.sql")),
    (2, "runs", include_str!("../../sql/0002_runs.sql")),
    (
        3,
        "fold_rebuild",
        include_str!("../../sql/0003_fold_rebuild.sql"),
    ),
    (
        4,
        "writeback_change",
        include_str!("../../sql/0004_writeback_change.sql"),
    ),
    (5, "retention", include_str!("../../sql/0005_retention.sql")),
    (6, "armable", include_str!("../../sql/0006_armable.sql")),
    (
        7,
        "audit_retention",
        include_str!("../../sql/0007_audit_retention.sql"),
    ),
    (
        8,
        "browser_fold",
        include_str!("../../sql/0008_browser_fold.sql"),
    ),
    (
        9,
        "resolved_model",
        include_str!("../../sql/0009_resolved_model.sql"),
    ),
    (
        10,
        "research_jobs",
        include_str!("../../sql/0010_research_jobs.sql"),
    ),
    (
        11,
        "run_outcomes",
        include_str!("../../sql/0011_run_outcomes.sql"),
    ),
    (
        12,
        "research_jobs_retention",
        include_str!("../../sql/0012_research_jobs_retention.sql"),
    ),
    (
        13,
        "server_incarnation",
        include_str!("../../sql/0013_server_incarnation.sql"),
    ),
];

/// Arbitrary constant: the advisory lock key of migrations ("manaaimi").
const MIGRATION_LOCK: i64 = 0x6d61_6e61_6169_6d69;

/// What [`migrate`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub applied: Vec<i32>,
    pub already: usize,
}

fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Applies every migration not yet recorded.
pub async fn migrate(client: &mut tokio_postgres::Client) -> anyhow::Result<Report> {
    check_schema(client).await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("taking the migration lock")?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS mana_ai.schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             checksum   text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .context("creating mana_ai.schema_migrations")?;
    let done = tx
        .query(
            "SELECT version, checksum FROM mana_ai.schema_migrations",
            &[],
        )
        .await?
        .iter()
        .map(|r| {
            Ok((
                r.try_get::<_, i32>("version")?,
                r.try_get::<_, String>("checksum")?,
            ))
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .context("reading mana_ai.schema_migrations")?;
    let mut report = Report::default();
    for (version, name, sql) in MIGRATIONS {
        let sum = checksum(sql);
        if let Some((_, applied)) = done.iter().find(|(v, _)| v == version) {
            if *applied != sum {
                tracing::warn!(
                    version,
                    name,
                    "migration file changed after it was applied; not re-applied"
                );
            }
            report.already += 1;
            continue;
        }
        tx.batch_execute(sql)
            .await
            .with_context(|| format!("applying migration {version:04}_{name}"))?;
        tx.execute(
            "INSERT INTO mana_ai.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[version, name, &sum],
        )
        .await?;
        report.applied.push(*version);
    }
    tx.commit().await.context("committing migrations")?;
    Ok(report)
}

/// Schema `mana_ai` exists and the role may create in it: what the DBA
/// kit's install.sql sets up before the first start.
async fn check_schema(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    let row = client
        .query_one(
            "SELECT to_regnamespace('mana_ai') IS NOT NULL AS exists,
                    coalesce(has_schema_privilege(to_regnamespace('mana_ai')::oid, 'CREATE'), false)
                      AS can_create",
            &[],
        )
        .await
        .context("checking schema mana_ai")?;
    let (exists, can_create): (bool, bool) = (row.try_get("exists")?, row.try_get("can_create")?);
    if !exists {
        bail!("schema mana_ai does not exist: a DBA must first run triggers/install.sql (print it with `mana-ai triggers print`)");
    }
    if !can_create {
        bail!("the service role lacks CREATE on schema mana_ai: a DBA must run triggers/install.sql with -v service_role=<this role>");
    }
    Ok(())
}
