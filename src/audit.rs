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
