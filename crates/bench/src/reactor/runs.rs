//! Mission runs with a fake LLM that answers at once: the run overhead per
//! mission (concurrency 1, minus the fake's own HTTP round trip) and the
//! throughput of many missions due at the same instant, drained at the
//! concurrency limit.

use std::time::{Duration, Instant};

use anyhow::Context;
use mana_ai::config::Secret;
use mana_ai::planner::llm::{LlmClient, LlmConfig};
use mana_ai::sync::fold::iso_millis;
use testkit::fake_llm::FakeLlm;

use crate::report::{Report, Target};
use crate::setup;
use crate::Scale;

const ANSWER: &str = "```json\n{\"summary\": \"s\", \"steps\": [{\"summary\": \"a\", \"toolName\": \"create_task\", \"params\": {\"title\": \"t\"}, \"rationale\": \"r\"}]}\n```";

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
    let per_user = vec![(missions.div_ceil(users), iso_millis(due_at)); users];
    setup::seed_due_missions(&bench.db, &per_user).await?;
    let service = setup::Service::start(&bench.db, llm, concurrency).await?;
    let done = service
        .wait_done(missions, Duration::from_secs(600))
        .await?;
    anyhow::ensure!(
        done >= missions,
        "only {done} of {missions} runs finished in 10 minutes"
    );
    let client = service.pool.get().await?;
    let last: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT max(finished_at) FROM mana_ai.mission_runs", &[])
        .await?
        .get(0);
    drop(client);
    service.stop().await;
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
