//! The decrypt audit trail (`mana_ai.decrypt_audit`): one row per record a
//! grant let mana-ai read, or refused to read.

pub use crate::store::audit::AuditEntry;

/// What an audit row says about one record (`decrypt_audit.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditStatus {
    /// Decrypted under the grant.
    Ok,
    /// Allowed, but decryption failed (the reason says why).
    Failed,
    /// Not in the grant's allowlist: not read.
    ScopeViolation,
}

impl AuditStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditStatus::Ok => "ok",
            AuditStatus::Failed => "failed",
            AuditStatus::ScopeViolation => "scope-violation",
        }
    }

    /// A status read back from the table; None for one this build does not know.
    pub fn parse(text: &str) -> Option<AuditStatus> {
        [
            AuditStatus::Ok,
            AuditStatus::Failed,
            AuditStatus::ScopeViolation,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
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
    let rows = crate::store::audit::read(&tx, user_id, mission_id, limit).await?;
    tx.commit().await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::AuditStatus;

    #[test]
    fn statuses_round_trip() {
        for s in [
            AuditStatus::Ok,
            AuditStatus::Failed,
            AuditStatus::ScopeViolation,
        ] {
            assert_eq!(AuditStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(AuditStatus::parse("maybe"), None);
    }
}
