//! Mission runs with a fake LLM that answers at once: the run overhead per
//! mission (concurrency 1, minus the fake's own HTTP round trip) and the
//! throughput of many missions due at the same instant, drained at the
//! concurrency limit.

use std::time::{Duration, Instant};

use anyhow::Context;
use mana_ai::config::Secret;
use mana_ai::metrics::Metrics;
use mana_ai::planner::llm::{LlmClient, LlmConfig};
use mana_ai::service::{Leadership, RunnerSetup, ServiceContext};
use mana_ai::sync::fold::iso_millis;
use pgtemp::{SERVICE_ROLE, SYNC_ROLE};
use testkit::fake_llm::FakeLlm;

use crate::report::{Report, Target};
use crate::setup;
use crate::Scale;

const ANSWER: &str = "```json\n{\"summary\": \"s\", \"steps\": [{\"summary\": \"a\", \"toolName\": \"create_task\", \"params\": {\"title\": \"t\"}, \"rationale\": \"r\"}]}\n```";

/// Seeds `missions` missions over `users` users, all due at `due`.
async fn seed(db: &pgtemp::TempDb, users: usize, missions: usize, due: &str) -> anyhow::Result<()> {
    let mut client = db.connect_as(SYNC_ROLE).await?;
    let per_user = missions.div_ceil(users) as i32;
    for u in 0..users {
        let user = setup::user_id(u);
        let tx = mana_ai::db::begin_user(&mut client, &user).await?;
        tx.execute(
            "INSERT INTO sync_changes (app_id, table_name, record_id, user_id, op, data, client_id)
             SELECT 'ai', 'aiMissions', 'm' || g, $1, 'insert',
                    jsonb_build_object('title', 'Bench', 'objective', 'Planen', 'state', 'active',
                                       'nextRunAt', $2::text,
                                       'cadence', '{\"kind\": \"interval\", \"everyMinutes\": 60}'::jsonb,
                                       'iterations', '[]'::jsonb),
                    'bench'
             FROM generate_series(1, $3) g",
            &[&user, &due, &per_user],
        )
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Runs `missions` due missions at `concurrency`; returns seconds from the
/// due instant to the last write-back.
async fn drain(
    server: &pgtemp::PgServer,
    llm: &str,
    missions: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let bench = setup::with_reactor_schema(server).await?;
    let due_at = chrono::Utc::now() + chrono::Duration::seconds(4 + missions as i64 / 2_000);
    let users = (missions / 100).max(1);
    seed(&bench.db, users, missions, &iso_millis(due_at)).await?;
    let concurrency = concurrency.to_string();
    let env = [
        ("SYNC_DATABASE_URL", bench.db.url_as(SERVICE_ROLE)),
        ("MANA_LLM_URL", llm.to_string()),
        ("MANA_AI_MAX_CONCURRENT_RUNS", concurrency),
        ("MANA_AI_DB_POOL_SIZE", "16".to_string()),
    ];
    let config = mana_ai::config::Config::from_lookup(|k| {
        env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    })?;
    let metrics = Metrics::new();
    let mut runner_setup = RunnerSetup::from_config(&config, &metrics)?;
    runner_setup.research = None;
    let pool = mana_ai::db::pool(&bench.db.url_as(SERVICE_ROLE), 16, "mana-ai-bench", None)?;
    let ctx = ServiceContext {
        config,
        pool: pool.clone(),
        metrics: metrics.clone(),
    };
    let lead =
        Leadership::start(&ctx, runner_setup, uuid::Uuid::new_v4(), Default::default()).await?;
    let client = pool.get().await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done: i64 = client
            .query_one(
                "SELECT count(*) FROM mana_ai.mission_runs WHERE state = 'done'",
                &[],
            )
            .await?
            .get(0);
        if done as usize >= missions {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {done} of {missions} runs finished in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT max(finished_at) FROM mana_ai.mission_runs", &[])
        .await?
        .get(0);
    drop(client);
    lead.stop().await;
    pool.close();
    Ok((last - due_at).num_microseconds().context("duration")? as f64 / 1e6)
}

pub async fn runs(
    server: &pgtemp::PgServer,
    scale: &Scale,
    report: &mut Report,
) -> anyhow::Result<()> {
    let fake = FakeLlm::start(vec![FakeLlm::answer(ANSWER)]).await?;
    // The fake's own round trip, to subtract from the run time.
    let client = LlmClient::new(LlmConfig::new(fake.url(), Secret::new("k"), "m"))?;
    let probes = 200;
    let started = Instant::now();
    for _ in 0..probes {
        client.complete("s", "u").await?;
    }
    let llm_ms = started.elapsed().as_secs_f64() * 1000.0 / probes as f64;
    report.add(
        "runs",
        "fake LLM round trip (subtracted)",
        llm_ms,
        "ms",
        Target::Info,
    );

    let sequential = scale.run_missions_sequential;
    let secs = drain(server, &fake.url(), sequential, 1).await?;
    let per_run = secs * 1000.0 / sequential as f64;
    report.add(
        "runs",
        format!("run time per mission, concurrency 1 ({sequential} runs)"),
        per_run,
        "ms",
        Target::Info,
    );
    report.add(
        "runs",
        "run overhead per mission without the LLM",
        per_run - llm_ms,
        "ms",
        Target::AtMost(5.0),
    );

    let many = scale.run_missions_burst;
    let secs = drain(server, &fake.url(), many, 8).await?;
    report.add(
        "runs",
        format!("{many} missions due at once, concurrency 8: drained in"),
        secs,
        "s",
        Target::Info,
    );
    report.add(
        "runs",
        "run throughput",
        many as f64 / secs,
        "runs/s",
        Target::Info,
    );
    Ok(())
}
