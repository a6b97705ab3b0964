//! The leader lock: a session advisory lock held on a dedicated connection.
//! Whoever holds it leads; the lock goes with the session, so a leader whose
//! connection dies frees it for a standby at once.

/// Advisory lock key of the leader ("manaaild").
pub const LEADER_LOCK: i64 = 0x6d61_6e61_6169_6c64;

/// Tries the leader lock once on `client`'s session; true when it is ours.
pub async fn try_lock(client: &tokio_postgres::Client) -> Result<bool, tokio_postgres::Error> {
    client
        .query_one("SELECT pg_try_advisory_lock($1) AS locked", &[&LEADER_LOCK])
        .await?
        .try_get("locked")
}
