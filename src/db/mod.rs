//! Database access: the connection pool, dedicated connections, TLS and
//! migrations. This module only knows how to connect; every statement the
//! service issues lives in `store/` (user-scoped transactions included,
//! re-exported here as [`begin_user`] and [`set_user`]).

pub mod errors;
pub mod migrate;
pub mod tls;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{AsyncMessage, Client, NoTls};

use tls::{ConnectionTask, PgTls, TlsSetupError};

pub use crate::store::session::{begin_user, set_user, ScopeError};

/// Builds the pool from a connection string; no connection is made yet.
/// TLS as [`tls`] describes: with `sslmode=require`, verified against
/// `root_cert` or the web PKI roots.
pub fn pool(
    url: &str,
    size: usize,
    application_name: &str,
    root_cert: Option<&Path>,
) -> anyhow::Result<Pool> {
    builder(url, size, application_name, root_cert)?
        .build()
        .context("building the connection pool")
}

/// The service's pool: [`pool`], and unless `allow_privileged` every new
/// connection checks its role first, so a role made SUPERUSER or BYPASSRLS
/// while the service runs is refused on its next connection, not only at
/// start (`crate::privilege`).
pub fn service_pool(
    url: &str,
    size: usize,
    root_cert: Option<&Path>,
    allow_privileged: bool,
) -> anyhow::Result<Pool> {
    let mut builder = builder(url, size, "mana-ai", root_cert)?;
    if !allow_privileged {
        builder = builder.post_create(deadpool_postgres::Hook::async_fn(|client, _| {
            Box::pin(async move {
                crate::privilege::refuse_privileged(&**client)
                    .await
                    .map_err(|e| deadpool_postgres::HookError::message(format!("{e:#}")))
            })
        }));
    }
    builder.build().context("building the connection pool")
}

fn builder(
    url: &str,
    size: usize,
    application_name: &str,
    root_cert: Option<&Path>,
) -> anyhow::Result<deadpool_postgres::PoolBuilder> {
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
    Ok(Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(std::time::Duration::from_secs(30)))
        .create_timeout(Some(std::time::Duration::from_secs(10))))
}

/// A connection outside the pool: the leader lock, the listener, the CLI.
pub struct Dedicated<'a> {
    /// The connection string.
    pub url: &'a str,
    /// `MANA_AI_PG_ROOT_CERT`, for a URL with `sslmode=require`.
    pub root_cert: Option<&'a Path>,
    /// For the service's own long-lived connections: the `application_name`
    /// operators find in `pg_stat_activity`, and a 10 s connect timeout.
    pub application_name: Option<&'static str>,
}

/// Why a dedicated connection failed; each keeps its source's message, so
/// callers add the variable or the step to it.
#[derive(Debug, thiserror::Error)]
pub enum DedicatedError {
    /// The connection string does not parse.
    #[error(transparent)]
    Url(tokio_postgres::Error),
    /// TLS could not be set up (the CA file).
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// The server could not be reached or refused us.
    #[error(transparent)]
    Connect(tokio_postgres::Error),
}

/// Parses the URL, picks TLS, connects, and drives the connection on its
/// own task, handing every asynchronous message to `on_message`.
pub async fn connect_dedicated(
    target: &Dedicated<'_>,
    on_message: impl FnMut(AsyncMessage) + Send + 'static,
) -> Result<(Client, ConnectionTask), DedicatedError> {
    let mut pg: tokio_postgres::Config = target.url.parse().map_err(DedicatedError::Url)?;
    if let Some(name) = target.application_name {
        pg.application_name(name)
            .connect_timeout(Duration::from_secs(10));
    }
    let tls = PgTls::for_config(&pg, target.root_cert)?;
    tls::connect(&pg, &tls, on_message)
        .await
        .map_err(DedicatedError::Connect)
}
