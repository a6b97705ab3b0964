//! The applier: drains `mana_ai.change_queue` into the snapshots.
//!
//! One transaction per batch: claim (delete) queue rows, read their change
//! rows under each user's RLS scope, fold them into the snapshots, record
//! poison rows, commit. Then tell the wheel. A change is therefore applied
//! exactly once: its queue row disappears in the same commit as its effect.
//!
//! Failures: a lost connection or a systemic error (permissions, missing
//! table, a column of another type) leaves the queue untouched and is
//! retried with backoff; a data error in a batch makes the applier take the
//! next rows one at a time, and a single row that still fails is set aside
//! with its SQLSTATE, so one bad row never blocks the rows behind it.
//!
//! Everything that fails because of one row's content is that row's poison
//! and never an error of the batch: change columns are decoded row by row
//! (`decode`: JSON as bytes, its depth checked before serde_json, limit
//! [`crate::store::decode::MAX_CHANGE_DEPTH`] = 100 levels so that whatever passes can be
//! stored in the snapshot's record and read back within serde_json's 127),
//! a snapshot that cannot be read back sets aside its record's changes
//! (`snapshot-unreadable`), a fold that panics sets aside its record's
//! changes of the batch (`fold-panicked`, see `fold_batch`), and a check
//! that panics its row (`check-panicked`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::analyze::{AnalyzeSchedule, Analyzing};
use super::batch::{fold_claimed, write_and_commit, FoldedBatch};
use super::batch_tx::BatchTx;
use super::claim::{Claimed, Take};
use super::low_water::LowWater;
pub use super::outcome::{Applied, ApplyError, BatchStats, Phases};
use super::read::read_changes;
use super::ReactorContext;
use crate::backoff::Backoff;
use crate::schedule::wheel::WheelUpdate;
use crate::store::queue::ApplierStatements;

/// Waits between attempts after a drain failed (the database is away).
const RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

#[derive(Clone)]
pub struct Applier {
    pub(super) ctx: ReactorContext,
    /// Total queue rows processed (applied or set aside), for observers.
    pub processed: watch::Sender<u64>,
    /// Rows still to take one at a time after a batch hit a data error.
    pub(super) isolate: usize,
    /// Told about every committed batch (benchmarks measure latency with it).
    pub observer: Option<mpsc::UnboundedSender<Applied>>,
    /// Called before every drain (tests inject a panic with it).
    pub before_drain: Option<Arc<dyn Fn() + Send + Sync>>,
    /// When the snapshot tables are analyzed next (see `analyze`).
    pub analyze: AnalyzeSchedule,
    /// The ANALYZE in flight, if any.
    analyzing: Analyzing,
    /// Where claims start reading the queue (see `low_water`).
    pub(super) low_water: LowWater,
    /// The last claim found the server's incarnation gone (a crash).
    pub(super) incarnation_lost: bool,
    /// The last claim read another queue: claim again before resting.
    pub(super) restarted: bool,
    /// Queue ids of the batch in progress (the row to set aside when a
    /// batch of one fails).
    pub(super) in_batch: Vec<i64>,
    /// Awaited after each claim (tests only, see `Hooks::after_claim`).
    #[cfg(feature = "test-hooks")]
    pub after_claim: Option<super::AfterClaim>,
}

impl Applier {
    /// An applier of the reactor's pool, wheel and settings.
    pub fn new(ctx: ReactorContext) -> Self {
        let analyze = AnalyzeSchedule::new(ctx.settings.analyze_after_rows);
        Applier {
            ctx,
            processed: watch::channel(0).0,
            isolate: 0,
            observer: None,
            before_drain: None,
            analyze,
            analyzing: Analyzing::default(),
            low_water: LowWater::default(),
            incarnation_lost: false,
            restarted: false,
            in_batch: Vec::new(),
            #[cfg(feature = "test-hooks")]
            after_claim: None,
        }
    }

    /// Runs until `shutdown`: drains at start, on every wake-up (a
    /// notification or a listener reconnect) and on every safety sweep.
    pub async fn run(mut self, wake: Arc<Notify>, shutdown: CancellationToken) {
        let mut sweep = tokio::time::interval(self.ctx.settings.sweep_interval);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.tick().await;
        let mut from_sweep = false;
        let mut retries = RETRY.attempts();
        loop {
            // Armed before draining, so a notification during the drain is kept.
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.drain_and_sweep(from_sweep).await {
                Ok(()) => retries.succeeded(),
                Err(e) => {
                    self.ctx.metrics.apply_errors.inc();
                    let wait = retries.failed();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "applying queued changes failed; will retry");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = &mut notified => from_sweep = false,
                _ = sweep.tick() => from_sweep = true,
            }
        }
    }

    /// Drains; on a safety sweep also counts what it found and runs the
    /// backstop (`backstop.rs`).
    async fn drain_and_sweep(&mut self, from_sweep: bool) -> Result<(), ApplyError> {
        let n = self.drain().await?;
        self.note_sweep(from_sweep, n);
        if from_sweep {
            self.recover_skipped().await?;
        }
        Ok(())
    }

    /// Counts rows a safety sweep found that no notification announced.
    fn note_sweep(&self, from_sweep: bool, n: usize) {
        if from_sweep && n > 0 {
            self.ctx.metrics.sweep_rows_found.inc_by(n as u64);
            tracing::warn!(
                rows = n,
                "safety sweep found queued changes no notification announced"
            );
        }
    }

    /// Applies queue rows until the queue is empty; returns rows processed.
    pub async fn drain(&mut self) -> Result<usize, ApplyError> {
        if let Some(hook) = &self.before_drain {
            hook();
        }
        let mut total = 0;
        loop {
            let limit = if self.isolate > 0 {
                1
            } else {
                self.ctx.settings.apply_batch
            };
            match self.apply_batch(limit).await {
                Ok(stats) => {
                    self.isolate = self.isolate.saturating_sub(stats.claimed);
                    total += stats.claimed;
                    self.maybe_analyze(stats.applied);
                    let restarted = std::mem::take(&mut self.restarted);
                    if (stats.claimed as i64) < limit && !restarted {
                        return Ok(total);
                    }
                }
                Err(ApplyError::Data { code, message }) if limit > 1 => {
                    tracing::warn!(%code, %message, "a batch failed on its data; taking the next rows one at a time");
                    self.isolate = limit as usize;
                }
                Err(ApplyError::Data { code, message }) => {
                    total += self.set_aside(&code, &message).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts an ANALYZE of the snapshot tables beside the applier when
    /// `applied` more changes make it due (see `analyze::Analyzing`); takes
    /// in the last one's result once it has ended.
    fn maybe_analyze(&mut self, applied: usize) {
        if let Some(rows) = self.analyzing.finished() {
            self.analyze.analyzed(rows);
        }
        if self.analyze.note(applied) {
            self.analyzing.start(&self.ctx.pool, &self.ctx.metrics);
        }
    }

    /// One transaction: claim up to `limit` rows, fold, commit, re-arm.
    ///
    /// Two round trips when the batch holds one user's changes, every
    /// statement prepared: BEGIN with the claim and the first user's read
    /// (changes and snapshots, `store::batch_read`); the writes (upserts,
    /// the changed agents' missions, poison rows) with COMMIT. A batch of
    /// several users adds one round trip between them: every other user's
    /// scope and read, pipelined.
    /// Traced as one `apply_batch` span with the rows claimed, applied and
    /// set aside (ids and counts only).
    pub async fn apply_batch(&mut self, limit: i64) -> Result<BatchStats, ApplyError> {
        self.apply(Take::Next(limit)).await
    }

    /// [`Self::apply_batch`] of the queue rows of `ids` (the backstop).
    pub(super) async fn apply_ids(&mut self, ids: Vec<i64>) -> Result<BatchStats, ApplyError> {
        self.apply(Take::Ids(ids)).await
    }

    async fn apply(&mut self, take: Take) -> Result<BatchStats, ApplyError> {
        let limit = take.limit();
        let span = tracing::info_span!(
            "apply_batch",
            limit,
            claimed = tracing::field::Empty,
            applied = tracing::field::Empty,
            poisoned = tracing::field::Empty,
        );
        let client = self
            .ctx
            .pool
            .get()
            .instrument(span.clone())
            .await
            .context("getting a pooled connection")?;
        let result = self
            .apply_batch_on(&client, take)
            .instrument(span.clone())
            .await;
        if let Ok(stats) = &result {
            span.record("claimed", stats.claimed);
            span.record("applied", stats.applied);
            span.record("poisoned", stats.poisoned);
        }
        if self.incarnation_lost {
            self.renew_incarnation(&client).await;
        }
        if let Err(ApplyError::Transient(_)) = &result {
            // After a DDL change on a table they read (sync_changes is the
            // sync server's), cached statements fail with "cached plan must
            // not change result type" until prepared anew.
            client.statement_cache.clear();
        }
        result
    }

    async fn apply_batch_on(
        &mut self,
        client: &deadpool_postgres::ClientWrapper,
        take: Take,
    ) -> Result<BatchStats, ApplyError> {
        let mut phases = Phases::starting();
        let statements = ApplierStatements::get(client, self.ctx.settings.generation).await?;
        let tx = BatchTx::new(client);
        let Claimed {
            rows: claimed,
            horizon,
            first,
        } = self.claim(&tx, &statements, &take).await?;
        self.in_batch = claimed.iter().map(|q| q.id).collect();
        if claimed.is_empty() {
            self.observe(&take, &[], horizon);
            return Ok(BatchStats::default());
        }
        phases.claimed = Instant::now();
        let ids = self.in_batch.clone();
        let max_field_bytes = self.ctx.settings.max_field_bytes;
        let read = read_changes(tx.client, &statements, &claimed, first, max_field_bytes).await?;
        phases.read = Instant::now();
        let batch = fold_claimed(tx.client, &statements, &self.ctx.settings, read).await?;
        phases.folded = Instant::now();
        let updates = write_and_commit(&tx, &statements, &batch).await?;
        phases.committed = Instant::now();
        self.observe(&take, &ids, horizon);
        Ok(self.settle(batch, updates, claimed.len(), phases).await)
    }

    /// After the commit: re-arms the wheel, tells the observer, counts.
    async fn settle(
        &mut self,
        mut batch: FoldedBatch,
        updates: Vec<WheelUpdate>,
        claimed: usize,
        phases: Phases,
    ) -> BatchStats {
        self.ctx.wheel.apply(updates).await;
        if let Some(observer) = &self.observer {
            let _ = observer.send(Applied {
                change_ids: batch.applied.iter().map(|q| q.change_id).collect(),
                at: Instant::now(),
                phases,
            });
        }
        let metrics = &self.ctx.metrics;
        metrics.snapshots_new.inc_by(batch.created);
        metrics.snapshots_updated.inc_by(batch.changed);
        metrics.fold_replays.inc_by(batch.replays);
        metrics
            .fold_replays_over_limit
            .inc_by(batch.replays_over_limit);
        let now = self.ctx.clock.now();
        for queued in batch.applied.iter().map(|q| q.queued_at) {
            let latency = (now - queued).num_microseconds().unwrap_or(0).max(0);
            metrics.change_to_snapshot.observe(latency as f64 / 1e6);
        }
        metrics
            .snapshot_rows_applied
            .inc_by(batch.applied.len() as u64);
        for d in batch.dead.drain(..) {
            self.note_poison(&d);
        }
        self.processed.send_modify(|n| *n += claimed as u64);
        BatchStats {
            claimed,
            applied: batch.applied.len(),
            poisoned: claimed - batch.applied.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The applier against a real Postgres (found as `pgenv` says): the
    //! pipelined transaction's edges, which tests/reactor.rs reaches only
    //! through the whole reactor.
    use super::*;
    use crate::metrics::Metrics;
    use crate::reactor::Settings;
    use crate::schedule::clock::Clock;
    use crate::schedule::clock::DbClock;
    use crate::schedule::wheel::{parse_next_run, spawn_wheel, MissionKey, WheelHandle};
    use deadpool_postgres::Pool;
    use pgtemp::{PgServer, TempDb, SERVICE_ROLE, SYNC_ROLE};
    use serde_json::json;
    use serde_json::Value;

    struct Fixture {
        db: TempDb,
        pool: Pool,
        wheel: WheelHandle,
        applier: Applier,
        _shutdown: tokio_util::sync::DropGuard,
    }

    /// One pooled connection only: a transaction left open by a batch
    /// would be seen by the next one.
    async fn fixture() -> Fixture {
        let server = PgServer::discover().expect("a Postgres for the tests");
        let db = TempDb::create(&server, "mana_ai_t").await.unwrap();
        crate::triggers::install(&db.admin().await.unwrap(), SERVICE_ROLE)
            .await
            .unwrap();
        let pool = crate::db::pool(&db.url_as(SERVICE_ROLE), 1, "mana-ai-test", None).unwrap();
        crate::db::migrate::migrate(&mut pool.get().await.unwrap())
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let clock: Arc<dyn Clock> = Arc::new(DbClock::new());
        let (due_tx, due_rx) = mpsc::unbounded_channel();
        std::mem::forget(due_rx);
        let (wheel, _task) = spawn_wheel(clock.clone(), Metrics::new(), due_tx, shutdown.clone());
        let applier = Applier::new(ReactorContext {
            pool: pool.clone(),
            metrics: Metrics::new(),
            clock,
            wheel: wheel.clone(),
            settings: Settings {
                apply_batch: 500,
                max_field_bytes: 1 << 20,
                analyze_after_rows: crate::reactor::analyze::ANALYZE_AFTER_ROWS,
                sweep_interval: Duration::from_secs(30),
                generation: Default::default(),
            },
        });
        Fixture {
            db,
            pool,
            wheel,
            applier,
            _shutdown: shutdown.drop_guard(),
        }
    }

    async fn write(db: &TempDb, user: &str, table: &str, record: &str, data: Value) {
        let mut client = db.connect_as(SYNC_ROLE).await.unwrap();
        let tx = crate::db::begin_user(&mut client, user).await.unwrap();
        tx.execute(
            "INSERT INTO public.sync_changes (app_id, table_name, record_id, user_id, op, data, client_id)
             VALUES ('ai', $1, $2, $3, 'insert', $4, 'test')",
            &[&table, &record, &user, &data],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    fn tomorrow() -> String {
        (chrono::Utc::now() + chrono::Duration::days(1))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    async fn count(pool: &Pool, sql: &str) -> i64 {
        pool.get()
            .await
            .unwrap()
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    /// No transaction is left open on the (only) pooled connection: in one
    /// simple-protocol statement outside a transaction block, the
    /// transaction started with the statement.
    async fn assert_no_open_transaction(pool: &Pool) {
        let client = pool.get().await.unwrap();
        let rows = client
            .simple_query(
                "SELECT now() = statement_timestamp() AND txid_current_if_assigned() IS NULL",
            )
            .await
            .unwrap();
        let value = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        });
        assert_eq!(value.as_deref(), Some("t"), "a transaction is still open");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_rolls_back_the_batch_and_the_row_is_set_aside_alone() {
        let mut f = fixture().await;
        // A row the snapshot table refuses at write time (SQLSTATE 23514).
        f.db.admin()
            .await
            .unwrap()
            .batch_execute(
                "ALTER TABLE mana_ai.mission_snapshots
                   ADD CONSTRAINT test_no_bad CHECK (record->>'title' IS DISTINCT FROM 'bad')",
            )
            .await
            .unwrap();
        let next = tomorrow();
        let active = |title: &str| json!({"title": title, "state": "active", "nextRunAt": next});
        write(&f.db, "alice", "aiMissions", "m1", active("ok")).await;
        write(&f.db, "alice", "aiMissions", "m2", active("bad")).await;
        write(
            &f.db,
            "bob",
            "agents",
            "a1",
            json!({"name": "A", "state": "active"}),
        )
        .await;
        write(&f.db, "bob", "aiMissions", "m3", active("ok")).await;

        assert_eq!(f.applier.drain().await.unwrap(), 4);
        assert_no_open_transaction(&f.pool).await;
        assert_eq!(
            count(
                &f.pool,
                "SELECT count(*) FROM mana_ai.dead_changes WHERE reason = 'apply-failed'"
            )
            .await,
            1
        );
        assert_eq!(
            count(&f.pool, "SELECT count(*) FROM mana_ai.change_queue").await,
            0
        );
        assert_eq!(
            count(&f.pool, "SELECT count(*) FROM mana_ai.mission_snapshots").await,
            2
        );
        assert_eq!(
            count(&f.pool, "SELECT count(*) FROM mana_ai.agent_snapshots").await,
            1
        );
        assert!(f.wheel.armed_at("alice", "m1").await.is_some());
        assert!(f.wheel.armed_at("alice", "m2").await.is_none());
        assert!(f.wheel.armed_at("bob", "m3").await.is_some());
        // A data error anywhere in a pipeline leaves nothing half-done.
        assert_eq!(f.applier.drain().await.unwrap(), 0);
        assert_no_open_transaction(&f.pool).await;
    }

    /// A queue row naming another user's change (forged: only the DBA's
    /// trigger writes the queue) is read in its own user's scope, so the
    /// change is not visible and is set aside; the owner's row of the same
    /// change is applied. The forged row comes first, so it is the user the
    /// claim scopes, and the owner's is read in the batch's second round.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_queue_row_of_another_users_change_reads_nothing() {
        let mut f = fixture().await;
        let next = tomorrow();
        let data = json!({"title": "mine", "state": "active", "nextRunAt": next});
        write(&f.db, "alice", "aiMissions", "m1", data).await;
        f.db.admin()
            .await
            .unwrap()
            .batch_execute(
                "WITH q AS (DELETE FROM mana_ai.change_queue RETURNING change_id, table_name),
                      forged AS (INSERT INTO mana_ai.change_queue (change_id, user_id, table_name)
                                 SELECT change_id, 'mallory', table_name FROM q)
                 SELECT 1;
                 INSERT INTO mana_ai.change_queue (change_id, user_id, table_name)
                 SELECT id, user_id, table_name FROM public.sync_changes;",
            )
            .await
            .unwrap();
        assert_eq!(f.applier.drain().await.unwrap(), 2);
        let dead = "SELECT count(*) FROM mana_ai.dead_changes
                    WHERE user_id = 'mallory' AND reason = 'change-not-visible'";
        assert_eq!(count(&f.pool, dead).await, 1);
        let mallory = "SELECT count(*) FROM mana_ai.mission_snapshots WHERE user_id = 'mallory'";
        assert_eq!(count(&f.pool, mallory).await, 0);
        let alice = "SELECT count(*) FROM mana_ai.mission_snapshots
                     WHERE user_id = 'alice' AND record->>'title' = 'mine'";
        assert_eq!(count(&f.pool, alice).await, 1);
        assert!(f.wheel.armed_at("mallory", "m1").await.is_none());
        assert!(f.wheel.armed_at("alice", "m1").await.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_agent_change_rearms_its_missions_including_ones_in_the_same_batch() {
        let mut f = fixture().await;
        let next = tomorrow();
        write(
            &f.db,
            "bob",
            "aiMissions",
            "m1",
            json!({"state": "active", "nextRunAt": next, "agentId": "a1"}),
        )
        .await;
        f.applier.drain().await.unwrap();
        f.wheel
            .apply(vec![WheelUpdate::Disarm(MissionKey::new("bob", "m1"))])
            .await;
        // One batch: a second mission of the agent and the agent itself.
        write(
            &f.db,
            "bob",
            "aiMissions",
            "m2",
            json!({"state": "active", "nextRunAt": next, "agentId": "a1"}),
        )
        .await;
        write(&f.db, "bob", "agents", "a1", json!({"name": "A"})).await;
        assert_eq!(f.applier.drain().await.unwrap(), 2);
        let due = parse_next_run(&next);
        assert_eq!(f.wheel.armed_at("bob", "m1").await, due);
        assert_eq!(f.wheel.armed_at("bob", "m2").await, due);
        // An empty claim ends its transaction too.
        assert_eq!(
            f.applier.apply_batch(10).await.unwrap(),
            BatchStats::default()
        );
        assert_no_open_transaction(&f.pool).await;
    }
}
