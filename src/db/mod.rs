//! Database access: the connection pool, user-scoped (RLS) transactions and
//! migrations. All SQL lives in `crate::store`; this module
//! only knows how to connect and how to scope a transaction to one user.

pub mod errors;
pub mod migrate;
pub mod tls;

use std::path::Path;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{NoTls, Transaction};

use tls::PgTls;

/// Refused before touching the database: RLS with an empty user id would
/// silently match nothing, which hides bugs.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("refusing a user-scoped transaction for an empty user id")]
    EmptyUserId,
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
}

/// Builds the pool from a connection string; no connection is made yet.
/// TLS as [`tls`] describes: with `sslmode=require`, verified against
/// `root_cert` or the web PKI roots.
pub fn pool(
    url: &str,
    size: usize,
    application_name: &str,
    root_cert: Option<&Path>,
) -> anyhow::Result<Pool> {
    let mut pg: tokio_postgres::Config = url
        .parse()
        .context("parsing the database connection string")?;
    if pg.get_application_name().is_none() {
        pg.application_name(application_name);
    }
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match PgTls::for_config(&pg, root_cert)? {
        PgTls::Plain => Manager::from_config(pg, NoTls, manager_config),
        PgTls::Verified(tls) => Manager::from_config(pg, tls, manager_config),
    };
    // A bounded wait: a starved pool is an error with a cause, not a hang.
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(std::time::Duration::from_secs(30)))
        .create_timeout(Some(std::time::Duration::from_secs(10)))
        .build()
        .context("building the connection pool")
}

/// Starts a transaction scoped to `user_id` by row-level security: the first
/// statement sets `app.current_user_id` for this transaction only.
pub async fn begin_user<'a>(
    client: &'a mut tokio_postgres::Client,
    user_id: &str,
) -> Result<Transaction<'a>, ScopeError> {
    if user_id.is_empty() {
        return Err(ScopeError::EmptyUserId);
    }
    let tx = client.transaction().await?;
    set_user(&tx, user_id).await?;
    Ok(tx)
}

/// Switches an open transaction to another user's RLS scope.
pub async fn set_user(tx: &Transaction<'_>, user_id: &str) -> Result<(), ScopeError> {
    if user_id.is_empty() {
        return Err(ScopeError::EmptyUserId);
    }
    tx.execute(
        "SELECT set_config('app.current_user_id', $1, true)",
        &[&user_id],
    )
    .await?;
    Ok(())
}
