//! The decrypt audit trail (`mana_ai.decrypt_audit`): one row per record a
//! grant let mana-ai read, or refused to read.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// One audit row as the user reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    pub id: i64,
    pub mission_id: String,
    pub iteration_id: Option<String>,
    pub table_name: String,
    pub record_id: String,
    /// `ok`, `failed` or `scope-violation`.
    pub status: String,
    pub reason: Option<String>,
    pub ts: DateTime<Utc>,
}

/// The user's own audit rows, newest first, optionally for one mission.
/// Read inside the user's RLS scope: the table's policy is the guarantee,
/// the `WHERE user_id` only helps the index.
pub async fn read(
    client: &mut tokio_postgres::Client,
    user_id: &str,
    mission_id: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<AuditEntry>> {
    let limit = limit.clamp(1, 1000);
    let tx = crate::db::begin_user(client, user_id).await?;
    let rows = tx
        .query(
            "SELECT id, mission_id, iteration_id, table_name, record_id, status, reason, ts
             FROM mana_ai.decrypt_audit
             WHERE user_id = $1 AND ($2::text IS NULL OR mission_id = $2)
             ORDER BY ts DESC, id DESC
             LIMIT $3",
            &[&user_id, &mission_id, &limit],
        )
        .await?;
    tx.commit().await?;
    Ok(rows
        .iter()
        .map(|r| AuditEntry {
            id: r.get(0),
            mission_id: r.get(1),
            iteration_id: r.get(2),
            table_name: r.get(3),
            record_id: r.get(4),
            status: r.get(5),
            reason: r.get(6),
            ts: r.get(7),
        })
        .collect())
}
