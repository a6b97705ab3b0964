//! Databases and change writers for the sections. Every section gets its own
//! TempDb (dropped when the section ends), set up the way tests/common does:
//! the trigger kit installed for the service role, migrations applied as that
//! role, and changes written as the sync role inside a user's RLS scope.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool_postgres::Pool;
use mana_ai::metrics::Metrics;
use mana_ai::reactor::applier::Applier;
use mana_ai::reactor::{ReactorContext, Settings};
use mana_ai::schedule::clock::{Clock, DbClock};
use mana_ai::schedule::wheel::{spawn_wheel, DueMission, WheelHandle};
use mana_ai::service::{Leadership, RunnerSetup, ServiceContext};
use pgtemp::{PgServer, TempDb, SERVICE_ROLE, SYNC_ROLE};
use tokio::sync::mpsc;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;

/// A database with the trigger kit, the snapshot tables and a service pool.
pub struct BenchDb {
    /// As the service role, like the reactor's own pool. Declared first so
    /// its connections close before the database is dropped.
    pub pool: Pool,
    pub db: TempDb,
}

/// A database with only the mana_sync fixture (no trigger kit).
pub async fn bare(server: &PgServer) -> anyhow::Result<TempDb> {
    TempDb::create(server, "mana_ai_bench").await
}

pub async fn install_kit(db: &TempDb) -> anyhow::Result<()> {
    let admin = db.admin().await?;
    mana_ai::triggers::install(&admin, SERVICE_ROLE).await
}

pub async fn with_reactor_schema(server: &PgServer) -> anyhow::Result<BenchDb> {
    let db = bare(server).await?;
    install_kit(&db).await?;
    let pool = mana_ai::db::pool(&db.url_as(SERVICE_ROLE), 4, "mana-ai-bench", None)?;
    let mut client = pool.get().await.context("service role connection")?;
    mana_ai::db::migrate::migrate(&mut client).await?;
    drop(client);
    Ok(BenchDb { db, pool })
}

/// A wheel for an Applier built by hand (the reactor is not running).
pub struct Wheel {
    pub handle: WheelHandle,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    // Kept so the wheel's sends succeed; nothing fires (nextRunAt is tomorrow).
    _due: mpsc::UnboundedReceiver<DueMission>,
}

impl Wheel {
    pub fn spawn() -> Wheel {
        let clock: Arc<dyn Clock> = Arc::new(DbClock::new());
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let (due_tx, due) = mpsc::unbounded_channel();
        let (handle, _task) = spawn_wheel(clock.clone(), metrics.clone(), due_tx, shutdown.clone());
        Wheel {
            handle,
            clock,
            metrics,
            shutdown,
            _due: due,
        }
    }

    pub fn applier(&self, pool: &Pool, batch: i64) -> Applier {
        Applier::new(ReactorContext {
            pool: pool.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
            wheel: self.handle.clone(),
            settings: Settings {
                apply_batch: batch,
                max_field_bytes: 1024 * 1024,
                analyze_after_rows: mana_ai::reactor::analyze::ANALYZE_AFTER_ROWS,
                sweep_interval: Duration::from_secs(30),
                generation: Default::default(),
            },
        })
    }
}

impl Drop for Wheel {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Users that look like the webapp's (36-character UUIDs).
pub fn user_id(i: usize) -> String {
    uuid::Uuid::from_u128(0x5eed_0000_0000_0000 + i as u128).to_string()
}

/// Mission `m` of `user`: a 36-character id, the user's UUID with the
/// mission's index in its first eight hex digits. QUEUE_USER_CHANGES builds
/// the same ids in SQL.
pub fn mission_id(user: &str, m: usize) -> String {
    format!("{m:08x}{}", &user[8..])
}

/// A `nextRunAt` far enough out that nothing fires while we measure.
pub fn next_run_tomorrow() -> String {
    (chrono::Utc::now() + chrono::Duration::days(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One user's changes in one transaction, as the sync server writes a
/// multi-row push: `per_mission` updates of each of `missions` missions,
/// every field stamped (a key without a stamp changes nothing). The
/// trigger queues every row (FOR EACH ROW). Mission ids are those of
/// [`mission_id`], so repeated calls hit the same missions.
const QUEUE_USER_CHANGES: &str = "
    INSERT INTO public.sync_changes
        (app_id, table_name, record_id, user_id, op, data, field_timestamps, client_id, created_at)
    SELECT 'ai', 'aiMissions', lpad(to_hex(g % $2), 8, '0') || substr($1::text, 9), $1::text, 'update',
           jsonb_build_object('title', 'Mission ' || g, 'state', 'active',
                              'nextRunAt', $3::text, 'objective', repeat('x', 200)),
           jsonb_build_object('title', at, 'state', at, 'nextRunAt', at, 'objective', at),
           'reactor-bench', clock_timestamp()
    FROM generate_series(1, $4::int) AS g,
         LATERAL (SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC',
                                 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS at) stamp";

/// Queues `users x missions x per_mission` changes over `conns` sync-role
/// connections; returns how many.
pub async fn queue_changes(
    db: &TempDb,
    users: usize,
    missions: usize,
    per_mission: usize,
    conns: usize,
) -> anyhow::Result<usize> {
    let next = next_run_tomorrow();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let url = db.url_as(SYNC_ROLE);
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = pgtemp::connect(&url).await?;
            let stmt = client.prepare(QUEUE_USER_CHANGES).await?;
            let mut rows = 0u64;
            for u in (c..users).step_by(conns) {
                let user = user_id(u);
                let tx = mana_ai::db::begin_user(&mut client, &user).await?;
                let args: (i32, i32) = (missions as i32, (missions * per_mission) as i32);
                rows += tx.execute(&stmt, &[&user, &args.0, &next, &args.1]).await?;
                tx.commit().await?;
            }
            anyhow::Ok(rows)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await?? as usize;
    }
    Ok(total)
}

/// A sync-role connection that writes single-change transactions with
/// prepared statements: BEGIN, set the RLS user, INSERT ... RETURNING id,
/// COMMIT (four round trips, like a sync server pushing one change).
pub struct ChangeWriter {
    client: Client,
    set_user: Statement,
    insert: Statement,
}

impl ChangeWriter {
    pub async fn connect(db: &TempDb) -> anyhow::Result<ChangeWriter> {
        let client = pgtemp::connect(&db.url_as(SYNC_ROLE)).await?;
        // The RLS scope, set as the sync server sets it.
        let set_user = client
            .prepare("SELECT set_config('app.current_user_id', $1, true)")
            .await?;
        let insert = client
            .prepare(
                "INSERT INTO public.sync_changes
                    (app_id, table_name, record_id, user_id, op, data, field_timestamps, client_id)
                 SELECT $1, $2, $3, $4, 'update', $5,
                        (SELECT coalesce(jsonb_object_agg(k, to_char(now() AT TIME ZONE 'UTC',
                                   'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')), '{}')
                         FROM jsonb_object_keys($5) k),
                        'reactor-bench'
                 RETURNING id",
            )
            .await?;
        Ok(ChangeWriter {
            client,
            set_user,
            insert,
        })
    }

    /// Commits one change; returns its id.
    pub async fn write(
        &mut self,
        user: &str,
        app: &str,
        table: &str,
        record: &str,
        data: &serde_json::Value,
    ) -> anyhow::Result<uuid::Uuid> {
        let tx = self.client.transaction().await?;
        tx.execute(&self.set_user, &[&user]).await?;
        let row = tx
            .query_one(&self.insert, &[&app, &table, &record, &user, data])
            .await?;
        tx.commit().await?;
        Ok(row.get(0))
    }
}

/// Grows sync_changes to `total` rows with filler the trigger never sees:
/// 70 % ai missions of 20,000 other users, the rest other apps' rows. The
/// trigger is disabled meanwhile so the filler is not queued, and the table
/// is vacuumed and analysed afterwards, as autovacuum would have done in a
/// log that grew over months. Returns the rows added.
pub async fn fill_log(db: &TempDb, total: u64) -> anyhow::Result<u64> {
    let admin = db.admin().await?;
    let have: i64 = admin
        .query_one("SELECT count(*) FROM public.sync_changes", &[])
        .await?
        .get(0);
    let mut from = have as u64;
    admin
        .batch_execute("ALTER TABLE public.sync_changes DISABLE TRIGGER mana_ai_enqueue")
        .await?;
    // Chunks keep each transaction (and its WAL) a manageable size.
    const CHUNK: u64 = 500_000;
    while from < total {
        let to = (from + CHUNK).min(total);
        admin
            .execute(
                "INSERT INTO public.sync_changes
                    (app_id, table_name, record_id, user_id, op, data, client_id, created_at)
                 SELECT CASE WHEN g % 10 < 7 THEN 'ai' ELSE (ARRAY['todo', 'notes', 'calendar'])[g % 3 + 1] END,
                        CASE WHEN g % 10 < 7 THEN 'aiMissions' ELSE 'items' END,
                        md5('r' || (g % 100000))::uuid::text,
                        md5('u' || (g % 20000))::uuid::text,
                        'update',
                        jsonb_build_object('title', 'filler ' || g, 'state', 'active',
                                           'nextRunAt', '2030-01-01T00:00:00.000Z',
                                           'notes', repeat('y', 150)),
                        'filler',
                        now() - g * interval '1 second'
                 FROM generate_series($1::int8 + 1, $2::int8) AS g",
                &[&(from as i64), &(to as i64)],
            )
            .await
            .context("inserting filler rows")?;
        from = to;
    }
    admin
        .batch_execute("ALTER TABLE public.sync_changes ENABLE TRIGGER mana_ai_enqueue")
        .await?;
    vacuum(&admin).await?;
    Ok(total.saturating_sub(have as u64))
}

/// VACUUM ANALYZE of every table the applier touches, then a CHECKPOINT, so
/// each measurement starts from the same steady state whatever the earlier
/// ones left behind (a million filler rows otherwise leave the checkpointer
/// writing back their pages during the next measurement).
pub async fn vacuum(admin: &Client) -> anyhow::Result<()> {
    admin
        .batch_execute(
            "VACUUM ANALYZE public.sync_changes, mana_ai.change_queue, mana_ai.mission_snapshots",
        )
        .await
        .context("VACUUM ANALYZE")?;
    admin
        .batch_execute("CHECKPOINT")
        .await
        .context("CHECKPOINT")
}

/// Starts the reactor on `pool` with every committed batch reported to
/// `applied`, and waits until its listener is registered.
pub async fn start_observed(
    config: &mana_ai::config::Config,
    pool: Pool,
    metrics: Arc<Metrics>,
    applied: mpsc::UnboundedSender<mana_ai::reactor::applier::Applied>,
) -> anyhow::Result<mana_ai::reactor::Reactor> {
    let (due_tx, _due_rx) = mpsc::unbounded_channel();
    let mut running = mana_ai::reactor::start(
        config,
        pool,
        metrics,
        Arc::new(DbClock::new()),
        due_tx,
        CancellationToken::new(),
        mana_ai::reactor::Hooks {
            applied: Some(applied),
            ..Default::default()
        },
    )
    .await?;
    tokio::time::timeout(Duration::from_secs(30), running.wait_listening())
        .await
        .context("the listener did not register within 30 s")?;
    Ok(running)
}

/// Seeds active hourly missions: `per_user[u] = (n, due)` gives
/// [`user_id`]`(u)` missions `m1` to `mn`, all due at `due` (RFC 3339), each
/// user's in one transaction as the sync server writes a push. The trigger
/// queues them; the reactor folds them and arms the wheel once it runs.
pub async fn seed_due_missions(db: &TempDb, per_user: &[(usize, String)]) -> anyhow::Result<()> {
    let mut client = db.connect_as(SYNC_ROLE).await?;
    let insert = client
        .prepare(
            "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, client_id)
             SELECT 'ai', 'aiMissions', 'm' || g, $1, 'insert',
                    jsonb_build_object('title', 'Bench', 'objective', 'Planen', 'state', 'active',
                                       'nextRunAt', $2::text,
                                       'cadence', '{\"kind\": \"interval\", \"everyMinutes\": 60}'::jsonb,
                                       'iterations', '[]'::jsonb),
                    'bench'
             FROM generate_series(1, $3::int) g",
        )
        .await?;
    for (u, (missions, due)) in per_user.iter().enumerate() {
        let user = user_id(u);
        let tx = mana_ai::db::begin_user(&mut client, &user).await?;
        tx.execute(&insert, &[&user, due, &(*missions as i32)])
            .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// A leader (reactor, wheel, runner) on a bench database, configured from
/// the same variables as the service, with the LLM planner the service
/// builds (`RunnerSetup::from_config`: the gateway limiter included).
pub struct Service {
    pub lead: Leadership,
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
}

impl Service {
    /// Starts leading at `concurrency` (`MANA_AI_MAX_CONCURRENT_RUNS`) with
    /// `llm` as `MANA_LLM_URL`; research is off.
    pub async fn start(db: &TempDb, llm: &str, concurrency: usize) -> anyhow::Result<Service> {
        let env = [
            ("SYNC_DATABASE_URL", db.url_as(SERVICE_ROLE)),
            ("MANA_LLM_URL", llm.to_string()),
            ("MANA_AI_MAX_CONCURRENT_RUNS", concurrency.to_string()),
            ("MANA_AI_DB_POOL_SIZE", "16".to_string()),
        ];
        let config = mana_ai::config::Config::from_lookup(|k| {
            env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        })?;
        let metrics = Metrics::new();
        let mut runner_setup = RunnerSetup::from_config(&config, &metrics)?;
        runner_setup.research = None;
        let pool = mana_ai::db::pool(&db.url_as(SERVICE_ROLE), 16, "mana-ai-bench", None)?;
        let ctx = ServiceContext {
            config,
            pool: pool.clone(),
            metrics: metrics.clone(),
        };
        let lead =
            Leadership::start(&ctx, runner_setup, uuid::Uuid::new_v4(), Default::default()).await?;
        Ok(Service {
            lead,
            pool,
            metrics,
        })
    }

    /// Waits until `missions` runs are done or `limit` has passed; returns
    /// how many are done.
    pub async fn wait_done(&self, missions: usize, limit: Duration) -> anyhow::Result<usize> {
        let client = self.pool.get().await?;
        let deadline = Instant::now() + limit;
        loop {
            let done: i64 = client
                .query_one(
                    "SELECT count(*) FROM mana_ai.mission_runs WHERE state = 'done'",
                    &[],
                )
                .await?
                .get(0);
            if done as usize >= missions || Instant::now() >= deadline {
                return Ok(done as usize);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) {
        self.lead.stop().await;
        self.pool.close();
    }
}
