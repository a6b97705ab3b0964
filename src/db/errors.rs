//! Connection failures in words an operator can act on: what happened, the
//! variable to look at, never the pool's own vocabulary and never a password.

use deadpool_postgres::{Object, Pool, PoolError};

/// The first connection of a start, with a message that names `var`.
pub async fn first_connection(pool: &Pool, var: &str) -> anyhow::Result<Object> {
    pool.get()
        .await
        .map_err(|e| anyhow::anyhow!("{var}: {}", describe_pool_error(&e)))
}

/// A pool error as one sentence with a hint.
pub fn describe_pool_error(e: &PoolError) -> String {
    match e {
        PoolError::Backend(pg) => describe(pg),
        PoolError::Timeout(_) => {
            "no connection within the time allowed: is the server up and reachable?".into()
        }
        other => format!("cannot get a connection: {other}"),
    }
}

/// A connection error: the server's own message when it answered, else the
/// innermost cause (DNS, refused, TLS), with the part of the URL to check.
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let hint = match db.code().code() {
            "28000" | "28P01" => " (check the user and password in the URL)",
            "3D000" => " (check the database name in the URL)",
            _ => "",
        };
        return format!(
            "the server refused: {} {}{hint}",
            db.severity(),
            db.message()
        );
    }
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    if cause.contains("password missing") {
        return "the server asks for a password and the URL has none".into();
    }
    format!("cannot reach the server: {cause} (check the host and port in the URL)")
}
