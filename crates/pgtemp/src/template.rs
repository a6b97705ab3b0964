//! Template databases: what every test database starts from (the fixture,
//! the trigger kit, the migrations), made once and then cloned with
//! `CREATE DATABASE ... TEMPLATE`, as crates.io's test database does.
//!
//! A template is named by the caller after the content it holds (a hash of
//! the SQL that made it), so a change to that SQL makes a new one and a
//! template is never stale. It is made under a temporary name and renamed
//! when complete, under a cluster-wide advisory lock, so a process that
//! finds the name finds it whole, and two processes (two checkouts testing
//! at once) make it once. Templates stay on the server for the next run;
//! ones older than [`KEEP_HOURS`] that nobody made this run are dropped when
//! a new one is made.

use std::future::Future;

use anyhow::Context;

use crate::{PgServer, TempDb};

/// Every template's name starts with this.
pub const TEMPLATE_PREFIX: &str = "mana_ai_tpl_";
/// Arbitrary constant: the advisory lock that serialises making templates.
const TEMPLATE_LOCK: i64 = 0x6d61_6e61_7470_6c31;
/// Templates of other content older than this are dropped (another
/// checkout's tests may still be cloning a younger one).
const KEEP_HOURS: i32 = 24;

impl PgServer {
    /// The template `name` (which must start with [`TEMPLATE_PREFIX`]),
    /// made by `fill` on a fresh [`TempDb`] when the server does not have it.
    /// `fill` must close every connection it opens to that database.
    pub async fn template<F, Fut>(&self, name: &str, fill: F) -> anyhow::Result<()>
    where
        F: FnOnce(TempDb) -> Fut,
        Fut: Future<Output = anyhow::Result<TempDb>>,
    {
        anyhow::ensure!(
            name.starts_with(TEMPLATE_PREFIX) && name.len() <= 63,
            "template name {name:?}"
        );
        let admin = self.connect_admin("postgres").await?;
        admin
            .execute("SELECT pg_advisory_lock($1)", &[&TEMPLATE_LOCK])
            .await
            .context("taking the template lock")?;
        // The lock is the session's: it goes with `admin` however this ends.
        if database_exists(&admin, name).await? {
            return Ok(());
        }
        drop_old_templates(&admin).await;
        let db = fill(TempDb::create(self, "mana_ai_tplw").await?).await?;
        db.rename_to_template(&admin, name).await
    }
}

impl TempDb {
    /// A new database cloned from the template `template` (see
    /// [`PgServer::template`]).
    pub async fn from_template(
        server: &PgServer,
        template: &str,
        prefix: &str,
    ) -> anyhow::Result<TempDb> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let admin = server.connect_admin("postgres").await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .await
            .with_context(|| format!("creating database {name} from template {template}"))?;
        Ok(TempDb {
            server: server.clone(),
            name,
        })
    }

    /// Renames this database to `name` and keeps it (it is no longer
    /// dropped). Postgres waits up to 5 s for connections to it to end.
    async fn rename_to_template(
        mut self,
        admin: &tokio_postgres::Client,
        name: &str,
    ) -> anyhow::Result<()> {
        admin
            .batch_execute(&format!("ALTER DATABASE {} RENAME TO {name}", self.name))
            .await
            .with_context(|| format!("renaming {} to template {name}", self.name))?;
        self.name = name.to_string();
        admin
            .batch_execute(&format!(
                "COMMENT ON DATABASE {name} IS 'mana-ai test template; safe to drop'"
            ))
            .await?;
        // It is the template now: not dropped with this value.
        std::mem::forget(self);
        Ok(())
    }
}

async fn database_exists(admin: &tokio_postgres::Client, name: &str) -> anyhow::Result<bool> {
    let row = admin
        .query_one(
            "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)",
            &[&name],
        )
        .await?;
    Ok(row.get(0))
}

/// Best effort: drops templates whose files were last written more than
/// [`KEEP_HOURS`] ago (a template is never written after it is made).
async fn drop_old_templates(admin: &tokio_postgres::Client) {
    let old = admin
        .query(
            "SELECT datname FROM pg_database
             WHERE starts_with(datname, $1)
               AND (pg_stat_file('base/' || oid || '/PG_VERSION')).modification
                   < now() - make_interval(hours => $2)",
            &[&TEMPLATE_PREFIX, &KEEP_HOURS],
        )
        .await;
    for row in old.unwrap_or_default() {
        let name: String = row.get(0);
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .await;
    }
}
