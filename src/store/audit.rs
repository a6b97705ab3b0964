//! `mana_ai.decrypt_audit`: one row per record a grant let mana-ai read, or
//! refused to read. Callers hold the user's RLS transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

/// One audit row as the user reads it (`GET /api/v1/me/ai-audit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: i64,
    pub mission_id: String,
    pub iteration_id: Option<String>,
    pub table_name: String,
    pub record_id: String,
    /// `ok`, `failed` or `scope-violation` (`audit::AuditStatus`).
    pub status: String,
    pub reason: Option<String>,
    pub ts: DateTime<Utc>,
}

/// One audit row to write.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewAuditRow<'a> {
    pub user_id: &'a str,
    pub mission_id: &'a str,
    pub iteration_id: &'a str,
    pub table_name: &'a str,
    pub record_id: &'a str,
    pub status: &'a str,
    pub reason: Option<&'a str>,
}

pub(crate) async fn insert(
    client: &impl GenericClient,
    row: &NewAuditRow<'_>,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO mana_ai.decrypt_audit (user_id, mission_id, iteration_id, table_name, record_id, status, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&row.user_id, &row.mission_id, &row.iteration_id, &row.table_name, &row.record_id, &row.status, &row.reason],
        )
        .await?;
    Ok(())
}

/// The user's rows, newest first, optionally of one mission, at most `limit`.
pub(crate) async fn read(
    client: &impl GenericClient,
    user_id: &str,
    mission_id: Option<&str>,
    limit: i64,
) -> Result<Vec<AuditEntry>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id, mission_id, iteration_id, table_name, record_id, status, reason, ts
             FROM mana_ai.decrypt_audit
             WHERE user_id = $1 AND ($2::text IS NULL OR mission_id = $2)
             ORDER BY ts DESC, id DESC
             LIMIT $3",
            &[&user_id, &mission_id, &limit],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(AuditEntry {
                id: r.try_get("id")?,
                mission_id: r.try_get("mission_id")?,
                iteration_id: r.try_get("iteration_id")?,
                table_name: r.try_get("table_name")?,
                record_id: r.try_get("record_id")?,
                status: r.try_get("status")?,
                reason: r.try_get("reason")?,
                ts: r.try_get("ts")?,
            })
        })
        .collect()
}
