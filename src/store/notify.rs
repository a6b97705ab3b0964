//! The listener's statements: LISTEN on the trigger's channel and the
//! heartbeat that checks the registration (and samples the database clock).

use chrono::{DateTime, Utc};
use tokio_postgres::Client;

/// Registers `channel`, which the caller has validated as `[A-Za-z0-9_]+`
/// (`Config` does): LISTEN takes no parameter.
pub(crate) async fn listen(client: &Client, channel: &str) -> Result<(), tokio_postgres::Error> {
    debug_assert!(channel
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    client.batch_execute(&format!("LISTEN {channel}")).await
}

/// The heartbeat's answer: the database clock, and whether `channel` is
/// still registered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heartbeat {
    pub db_now: DateTime<Utc>,
    pub listening: bool,
}

/// Is `channel` registered (`pg_listening_channels()`)? With the clock.
pub(crate) async fn heartbeat(
    client: &Client,
    channel: &str,
) -> Result<Heartbeat, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT clock_timestamp() AS db_now,
                    $1 IN (SELECT pg_listening_channels()) AS listening",
            &[&channel],
        )
        .await?;
    Ok(Heartbeat {
        db_now: row.try_get("db_now")?,
        listening: row.try_get("listening")?,
    })
}
