//! Finding or starting a Postgres for the tests, the benchmark and the demo.
//!
//! Order ([`discover`]): `DATABASE_URL` / `SYNC_DATABASE_URL` (a superuser
//! URL) when set; else the libpq environment; else 127.0.0.1:5432 as
//! `postgres` if it lets us in; else a throwaway cluster made with
//! `initdb`/`pg_ctl` (found on PATH or under `/usr/lib/postgresql/*/bin`) in
//! a temp dir. initdb refuses to run as root,
//! so as root the cluster runs as the `postgres` user (or `nobody`). A
//! watcher process stops the cluster and removes its directory when the
//! process that started it exits, however it exits.
//!
//! Each caller then gets its own database ([`TempDb`]), dropped afterwards,
//! and the roles that play the sync server and the mana-ai service; tests
//! clone theirs from a template made once ([`PgServer::template`]).
//!
//! Test and demo support only: the service binary never links it. It does
//! not depend on `mana-ai`, so the library's own unit tests can use it.

mod cluster;
pub mod discover;
mod password;
pub mod pgpass;
mod template;

use std::path::PathBuf;

use anyhow::{bail, Context};
use tokio_postgres::NoTls;

use cluster::{cluster_user, command_as, start_cluster, start_cluster_with};
pub use cluster::{find_pg_bin, ServerTls};
pub use password::role_password;
pub use template::TEMPLATE_PREFIX;

/// The mana_sync side of the contract (section 1), for databases we create.
pub const SYNC_FIXTURE: &str = include_str!("../../../fixtures/mana_sync.sql");
/// Today's generation of `sync_changes` (`field_meta`, `origin`, `space_id`).
pub const SYNC_FIXTURE_CURRENT: &str = include_str!("../../../fixtures/mana_sync_current.sql");

/// A Postgres server we may create databases and roles on.
#[derive(Debug, Clone)]
pub struct PgServer {
    /// Connection settings of a superuser, without a database name.
    admin: tokio_postgres::Config,
    /// Set when we started the server ourselves.
    pub cluster_dir: Option<PathBuf>,
}

/// Quotes a libpq keyword/value setting.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl PgServer {
    /// Finds a server as [`discover`] describes, from the process environment.
    pub fn discover() -> anyhow::Result<PgServer> {
        discover::discover_with(&|k| std::env::var(k).ok())
    }

    /// Starts a throwaway cluster that also accepts TLS with `tls`'s
    /// certificate (the TLS tests; plain connections still work).
    pub fn start_with_tls(tls: &ServerTls) -> anyhow::Result<PgServer> {
        start_cluster(Some(tls))
    }

    /// Starts a throwaway cluster that, like a stock Debian server, asks for
    /// a password (scram-sha-256) on TCP; `postgres` has `password`.
    pub fn start_with_password(password: &str) -> anyhow::Result<PgServer> {
        start_cluster_with(None, Some(password))
    }

    /// The server's host and port (the first of each).
    pub fn host_port(&self) -> (String, u16) {
        let host = match self.admin.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".into(),
        };
        (
            host,
            self.admin.get_ports().first().copied().unwrap_or(5432),
        )
    }

    /// Starts a throwaway cluster of its own, whatever else answers (tests
    /// that restart the server).
    pub fn start_throwaway() -> anyhow::Result<PgServer> {
        start_cluster(None)
    }

    /// Restarts a cluster this process started (`pg_ctl restart -m fast`,
    /// same options): every connection to it is cut.
    pub fn restart(&self) -> anyhow::Result<()> {
        self.restart_mode("fast")
    }

    /// [`PgServer::restart`] with a shutdown mode of `pg_ctl`: `smart`,
    /// `fast`, or `immediate` (no checkpoint: the server recovers from its
    /// WAL on start, as after a crash).
    pub fn restart_mode(&self, mode: &str) -> anyhow::Result<()> {
        let dir = self
            .cluster_dir
            .as_ref()
            .context("only a cluster this process started can be restarted")?;
        let bin = find_pg_bin().context("pg_ctl not found")?;
        let out = command_as(cluster_user().as_deref(), &bin.join("pg_ctl"))
            .args(["-w", "-m", mode, "-l"])
            .arg(dir.join("log"))
            .arg("-D")
            .arg(dir.join("data"))
            .arg("restart")
            .output()
            .context("running pg_ctl restart")?;
        if !out.status.success() {
            bail!(
                "pg_ctl restart failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A libpq connection string for `dbname`, as the admin or as `user`.
    pub fn conninfo(&self, dbname: &str, user: Option<(&str, &str)>) -> String {
        let mut parts = Vec::new();
        for host in self.admin.get_hosts() {
            match host {
                tokio_postgres::config::Host::Tcp(h) => parts.push(format!("host={}", quote(h))),
                tokio_postgres::config::Host::Unix(p) => {
                    parts.push(format!("host={}", quote(&p.to_string_lossy())))
                }
            }
        }
        if let Some(port) = self.admin.get_ports().first() {
            parts.push(format!("port={port}"));
        }
        match user {
            Some((name, password)) => {
                parts.push(format!("user={}", quote(name)));
                parts.push(format!("password={}", quote(password)));
            }
            None => {
                if let Some(u) = self.admin.get_user() {
                    parts.push(format!("user={}", quote(u)));
                }
                if let Some(p) = self.admin.get_password() {
                    parts.push(format!("password={}", quote(&String::from_utf8_lossy(p))));
                }
            }
        }
        parts.push(format!("dbname={}", quote(dbname)));
        parts.join(" ")
    }

    pub async fn connect_admin(&self, dbname: &str) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.conninfo(dbname, None)).await
    }
}

/// Connects and drives the connection on a task.
pub async fn connect(conninfo: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .context("connecting to Postgres")?;
    tokio::spawn(connection);
    Ok(client)
}

/// The sync server's stand-in: an ordinary role that writes sync_changes.
pub const SYNC_ROLE: &str = "mana_ai_local_sync";
/// The service's role: NOSUPERUSER NOBYPASSRLS, given only what install.sql grants.
pub const SERVICE_ROLE: &str = "mana_ai_local_service";

/// A database of our own with the mana_sync fixture, dropped on drop.
pub struct TempDb {
    pub server: PgServer,
    pub name: String,
}

impl TempDb {
    /// Creates a fresh database with `sync_changes` (FORCE RLS), the two
    /// roles, and the grants the sync role needs. Triggers are not installed.
    pub async fn create(server: &PgServer, prefix: &str) -> anyhow::Result<TempDb> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let admin = server.connect_admin("postgres").await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        let db = TempDb {
            server: server.clone(),
            name,
        };
        let client = db.admin().await?;
        // Roles are cluster-wide and tests run in parallel: one thread of
        // this process at a time (a concurrent ALTER ROLE fails), and a
        // race with another process retried.
        static ROLES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one_at_a_time = ROLES.lock().await;
        let password = role_password();
        for role in [SYNC_ROLE, SERVICE_ROLE] {
            // An existing role gets this user's password (an older one may
            // have been created with a password everyone knew).
            let sql = format!(
                "DO $$ BEGIN
                   CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '{password}';
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN
                   ALTER ROLE {role} PASSWORD '{password}';
                 END $$;"
            );
            // Another process doing the same at once makes one of them fail
            // ("tuple concurrently updated"): try again.
            let mut attempt = 0;
            while let Err(e) = client.batch_execute(&sql).await {
                attempt += 1;
                if attempt == 5 {
                    return Err(e).with_context(|| format!("creating role {role}"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
            }
        }
        client
            .batch_execute(SYNC_FIXTURE)
            .await
            .context("creating sync_changes")?;
        client
            .batch_execute(&format!(
                "GRANT SELECT, INSERT ON public.sync_changes TO {SYNC_ROLE}"
            ))
            .await?;
        Ok(db)
    }

    /// Replaces `sync_changes` with today's generation of it (anything
    /// installed on the old table, the trigger kit included, goes with it).
    pub async fn use_current_generation(&self) -> anyhow::Result<()> {
        let client = self.admin().await?;
        client
            .batch_execute("DROP TABLE public.sync_changes CASCADE")
            .await?;
        client
            .batch_execute(SYNC_FIXTURE_CURRENT)
            .await
            .context("creating today's sync_changes")?;
        client
            .batch_execute(&format!(
                "GRANT SELECT, INSERT ON public.sync_changes TO {SYNC_ROLE}"
            ))
            .await?;
        Ok(())
    }

    /// Connection string as the superuser.
    pub fn admin_url(&self) -> String {
        self.server.conninfo(&self.name, None)
    }

    /// Connection string as `role`.
    pub fn url_as(&self, role: &str) -> String {
        self.server
            .conninfo(&self.name, Some((role, role_password())))
    }

    pub async fn admin(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.server.connect_admin(&self.name).await
    }

    pub async fn connect_as(&self, role: &str) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.url_as(role)).await
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        // Drop runs inside a tokio runtime, which cannot block on itself:
        // drop the database from a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let admin = server.connect_admin("postgres").await?;
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
    }
}

/// A connection error: the server's own message when it answered, else the
/// innermost cause (DNS, refused, TLS), with the part of the URL to check.
/// A copy of the service's `db::errors::describe`: this crate does not
/// depend on the service.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
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
