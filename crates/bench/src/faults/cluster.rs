//! The campaign's own Postgres: a throwaway cluster (it restarts it), one
//! database with the mana_sync fixture, the trigger kit installed for the
//! service role and the migrations applied as that role, as an operator
//! would set it up. Also the database-side faults: restarts and
//! `pg_terminate_backend` of the service's connections.

use anyhow::Context;
use pgtemp::{PgServer, TempDb, SERVICE_ROLE};

/// The cluster and the database the campaign owns.
pub struct Db {
    pub server: PgServer,
    pub db: TempDb,
}

impl Db {
    /// Starts the cluster (as the `postgres` user when we are root) and
    /// prepares the database.
    pub async fn start() -> anyhow::Result<Db> {
        let server = tokio::task::spawn_blocking(PgServer::start_throwaway)
            .await?
            .context("starting a throwaway cluster (initdb/pg_ctl)")?;
        let db = TempDb::create(&server, "mana_ai_faults").await?;
        let admin = db.admin().await?;
        mana_ai::triggers::install(&admin, SERVICE_ROLE)
            .await
            .context("installing the trigger kit")?;
        let mut service = pgtemp::connect(&db.url_as(SERVICE_ROLE)).await?;
        mana_ai::db::migrate::migrate(&mut service)
            .await
            .context("applying the migrations as the service role")?;
        Ok(Db { server, db })
    }

    /// A fresh superuser connection (the old ones die with every restart).
    pub async fn admin(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.db.admin().await
    }

    /// `pg_ctl restart -m <mode>`: every connection is cut; `immediate`
    /// skips the checkpoint, so the server recovers from its WAL.
    pub async fn restart(&self, mode: &'static str) -> anyhow::Result<()> {
        let server = self.server.clone();
        tokio::task::spawn_blocking(move || server.restart_mode(mode))
            .await?
            .with_context(|| format!("pg_ctl restart -m {mode}"))
    }

    /// Terminates the service role's backends (each with probability
    /// `share`); returns how many were terminated.
    pub async fn terminate_service_backends(&self, share: f64) -> anyhow::Result<u64> {
        let admin = self.admin().await?;
        let rows = admin
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                 WHERE usename = $1 AND datname = $2 AND pid <> pg_backend_pid()
                   AND random() < $3",
                &[&SERVICE_ROLE, &self.db.name, &share],
            )
            .await
            .context("pg_terminate_backend")?;
        Ok(rows.iter().filter(|r| r.get::<_, bool>(0)).count() as u64)
    }

    /// SIGKILLs one of the service's backends (or the caller's own when the
    /// service has none): Postgres stops every other process and recovers
    /// from the WAL on disk without a new start time, losing what was
    /// committed asynchronously and not yet flushed. Waits until it accepts
    /// connections again.
    pub async fn crash_backend(&self) -> anyhow::Result<()> {
        let admin = self.admin().await?;
        let row = admin
            .query_one(
                "SELECT coalesce((SELECT pid FROM pg_stat_activity
                                  WHERE usename = $1 AND datname = $2
                                  ORDER BY random() LIMIT 1), pg_backend_pid())",
                &[&SERVICE_ROLE, &self.db.name],
            )
            .await
            .context("choosing a backend")?;
        let pid: i32 = row.get(0);
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .context("running kill")?;
        anyhow::ensure!(killed.success(), "kill -KILL {pid} failed");
        drop(admin);
        for _ in 0..600 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            if self.admin().await.is_ok() {
                return Ok(());
            }
        }
        anyhow::bail!("the server did not accept connections within 60 s of the crash")
    }

    /// Rows in `mana_ai.change_queue`.
    pub async fn queue_depth(&self) -> anyhow::Result<i64> {
        let admin = self.admin().await?;
        let row = admin
            .query_one("SELECT count(*) FROM mana_ai.change_queue", &[])
            .await
            .context("counting the change queue")?;
        Ok(row.get(0))
    }
}
