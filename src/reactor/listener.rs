//! The listener: one dedicated connection that LISTENs on the trigger's
//! channel and wakes the applier. It never opens a transaction, its socket is
//! read by its own task whatever the runners are doing, it checks its
//! registration with `pg_listening_channels()` on a heartbeat (which also
//! measures the database clock), and it reconnects with capped backoff
//! (1 s to 60 s, with jitter, reset once LISTEN succeeds). Every successful
//! LISTEN wakes the applier, so whatever queued up while it was down drains.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::{watch, Notify};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Attempts, Backoff, Jitter};
use crate::config::Secret;
use crate::db::tls;
use crate::db::{self, DedicatedError};
use crate::metrics::Metrics;
use crate::schedule::clock::DbClock;
use crate::store::notify;

/// Waits between reconnects: 1 s doubling to 60 s, within ±20 %, back to
/// 1 s once LISTEN succeeds.
const RECONNECT: Backoff =
    Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).with_jitter(Jitter::Spread(0.2));

/// `application_name` of the listener connection (operators find it in
/// `pg_stat_activity`).
pub const APPLICATION_NAME: &str = "mana-ai-listener";

#[derive(Clone)]
pub struct Listener {
    pub url: Secret,
    /// `MANA_AI_PG_ROOT_CERT` (see `db::tls`).
    pub root_cert: Option<std::path::PathBuf>,
    pub channel: String,
    pub heartbeat: Duration,
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<DbClock>,
    /// True while LISTEN is registered (health checks and tests wait on it).
    pub connected: watch::Sender<bool>,
}

impl Listener {
    /// The listener of `config`'s listen connection; not yet registered.
    pub fn new(
        config: &crate::config::Config,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
        clock: Arc<DbClock>,
    ) -> Self {
        Listener {
            url: config.db.listen_url.clone(),
            root_cert: config.db.root_cert.clone(),
            channel: config.reactor.listen_channel.clone(),
            heartbeat: config.reactor.listen_heartbeat,
            wake,
            metrics,
            clock,
            connected: watch::channel(false).0,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut reconnects = RECONNECT.attempts();
        loop {
            let session = self.session(&shutdown, &mut reconnects);
            match session.await {
                Ok(()) => return,
                Err(e) => {
                    self.metrics.listener_connected.set(0);
                    self.connected.send_replace(false);
                    self.metrics.listener_reconnects.inc();
                    let wait = reconnects.failed();
                    tracing::warn!(error = %format!("{e:#}"), retry_in_ms = wait.as_millis() as u64, "listener connection lost");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// One connection's life: Ok on shutdown, Err when it must reconnect.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        reconnects: &mut Attempts,
    ) -> anyhow::Result<()> {
        let (client, mut reader) = self.connect().await?;
        let result = async {
            self.listen(&client).await?;
            reconnects.succeeded();
            self.metrics.listener_connected.set(1);
            self.connected.send_replace(true);
            tracing::info!(channel = %self.channel, "listening");
            self.wake.notify_one();
            self.serve(&client, &mut reader, shutdown).await
        }
        .await;
        reader.abort();
        result
    }

    /// Connects; the connection's own task reads every message as it
    /// arrives and wakes the applier on every notification.
    async fn connect(&self) -> anyhow::Result<(tokio_postgres::Client, tls::ConnectionTask)> {
        let target = db::Dedicated {
            url: self.url.expose(),
            root_cert: self.root_cert.as_deref(),
            application_name: Some(APPLICATION_NAME),
        };
        let wake = self.wake.clone();
        let metrics = self.metrics.clone();
        let on_message = move |message| {
            if let AsyncMessage::Notification(_) = message {
                metrics.note_notification();
                wake.notify_one();
            }
        };
        match db::connect_dedicated(&target, on_message).await {
            Ok(connected) => Ok(connected),
            Err(DedicatedError::Url(e)) => Err(e).context("parsing the listen database URL"),
            Err(e) => Err(e).context("connecting"),
        }
    }

    /// Listens until shutdown (Ok) or until the connection is lost or its
    /// heartbeat fails (Err); re-registers a registration that was lost.
    async fn serve(
        &self,
        client: &tokio_postgres::Client,
        reader: &mut tls::ConnectionTask,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                ended = &mut *reader => {
                    match ended {
                        Ok(Err(e)) => bail!("connection closed: {e}"),
                        _ => bail!("connection closed"),
                    }
                }
                _ = heartbeat.tick() => {
                    let checked = tokio::time::timeout(Duration::from_secs(10), self.check(client)).await;
                    match checked {
                        Ok(Ok(true)) => {}
                        Ok(Ok(false)) => {
                            tracing::warn!(channel = %self.channel, "LISTEN registration lost; listening again");
                            self.listen(client).await?;
                            self.wake.notify_one();
                        }
                        Ok(Err(e)) => return Err(e.context("heartbeat")),
                        Err(_) => bail!("heartbeat timed out"),
                    }
                }
            }
        }
    }

    async fn listen(&self, client: &tokio_postgres::Client) -> anyhow::Result<()> {
        // The channel is validated by Config as [A-Za-z0-9_]+.
        notify::listen(client, &self.channel)
            .await
            .context("LISTEN")?;
        if !self.check(client).await? {
            bail!("LISTEN succeeded but the channel is not registered");
        }
        Ok(())
    }

    /// Is the channel registered? Also samples the database clock.
    async fn check(&self, client: &tokio_postgres::Client) -> anyhow::Result<bool> {
        let sent = chrono::Utc::now();
        let beat = notify::heartbeat(client, &self.channel)
            .await
            .context("checking pg_listening_channels()")?;
        let offset = self
            .clock
            .record_sample(sent, beat.db_now, chrono::Utc::now());
        self.metrics
            .clock_offset_seconds
            .set(offset.num_microseconds().unwrap_or(0) as f64 / 1e6);
        Ok(beat.listening)
    }
}
