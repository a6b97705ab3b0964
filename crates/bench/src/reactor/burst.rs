//! The 08:00 burst (issue 9): N missions due in the same second over many
//! users, one of whom owns a large share, run through the real service path
//! (reactor, wheel, runner, the LLM client with its gateway limiter) against
//! a fake OpenAI-compatible gateway on loopback that serves K requests at
//! once in L each and answers 429 with `Retry-After: 1` beyond that. The
//! runner's concurrency is 8 x K, as an operator would set it not knowing
//! the gateway's real capacity. The heavy user's missions are due at the
//! start of the second and the light users' half a second later, as in the
//! issue's report: a runner that serves due runs first come, first served
//! runs all of the heavy user's before any light one.
//!
//! Measured in one run: the drain time (the due instant to the last
//! write-back) against the ideal N x L / K, the share of 429 answers among
//! all gateway requests, and the wait from the due instant to each run's
//! start (its claim in `mission_runs`) of the light users' runs next to the
//! heavy user's.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use mana_ai::metrics::Metrics;
use mana_ai::sync::fold::iso_millis;
use testkit::gateway::{FakeGateway, GatewayConfig, GatewayCounts};

use crate::report::{ms, percentiles, Report, Target};
use crate::setup;
use crate::Scale;

const SECTION: &str = "burst";
/// The gateway's capacity K: requests it serves at once.
const CAPACITY: usize = 16;
/// The gateway's latency L per admitted request.
const LATENCY: Duration = Duration::from_millis(100);
/// The runner's concurrency as a multiple of K.
const OVERCOMMIT: usize = 8;
/// How much later than the heavy user's the light users' missions are due.
const LIGHT_LATER: chrono::Duration = chrono::Duration::milliseconds(500);

/// How the burst is laid out.
struct Plan {
    missions: usize,
    users: usize,
    /// Missions of user 0, the heavy one.
    heavy: usize,
}

impl Plan {
    fn of(scale: &Scale) -> anyhow::Result<Plan> {
        let plan = Plan {
            missions: scale.burst_missions,
            users: scale.burst_users,
            heavy: scale.burst_heavy,
        };
        anyhow::ensure!(
            plan.users >= 2 && plan.heavy < plan.missions,
            "the burst needs a heavy user and at least one light one"
        );
        Ok(plan)
    }

    /// Missions per user and when they are due: the heavy user (user 0) at
    /// `due_at`, the rest spread evenly, [`LIGHT_LATER`].
    fn owners(&self, due_at: DateTime<Utc>) -> Vec<(usize, String)> {
        let (light, rest) = (self.users - 1, self.missions - self.heavy);
        let later = iso_millis(due_at + LIGHT_LATER);
        std::iter::once((self.heavy, iso_millis(due_at)))
            .chain(
                (0..light).map(|u| (rest / light + usize::from(u < rest % light), later.clone())),
            )
            .collect()
    }

    /// N x L / K.
    fn ideal_secs(&self) -> f64 {
        self.missions as f64 * LATENCY.as_secs_f64() / CAPACITY as f64
    }
}

/// One run as `mission_runs` recorded it: from its slot (the instant it
/// was due) to its start, and from the burst's first due instant to its
/// write-back.
struct RunTimes {
    heavy: bool,
    /// Due to its (last) claim: the run holds a runner permit and starts.
    start: Duration,
    /// Due to its write-back; None while not done.
    written: Option<Duration>,
    /// The first due instant to its write-back; None while not done.
    drained: Option<Duration>,
}

pub async fn burst(
    server: &pgtemp::PgServer,
    scale: &Scale,
    report: &mut Report,
) -> anyhow::Result<()> {
    let plan = Plan::of(scale)?;
    let gateway = FakeGateway::start(GatewayConfig::new(CAPACITY, LATENCY)).await?;
    let concurrency = OVERCOMMIT * CAPACITY;
    describe(report, &plan, concurrency);
    let bench = setup::with_reactor_schema(server).await?;
    let lead = chrono::Duration::seconds(5 + plan.missions as i64 / 1_000);
    let due_at = Utc::now() + lead;
    setup::seed_due_missions(&bench.db, &plan.owners(due_at)).await?;
    let service = setup::Service::start(&bench.db, &gateway.url(), concurrency).await?;
    let folded = wait_folded(&service.pool, plan.missions).await?;
    if folded > due_at {
        report.note(format!(
            "burst: the reactor folded the missions {:.1} s after they were due",
            secs(folded - due_at)
        ));
    }
    let limit = Duration::from_secs_f64((plan.ideal_secs() * 5.0).max(120.0));
    let done = service.wait_done(plan.missions, limit).await?;
    let runs = load_runs(&service.pool, due_at).await?;
    let counts = gateway.counts();
    report_service(report, &service.metrics, &runs);
    service.stop().await;
    if done < plan.missions {
        report.note(format!(
            "burst: only {done} of {} runs were written after waiting {:.0} s; \
             the drain time is a lower bound",
            plan.missions,
            limit.as_secs_f64()
        ));
    }
    report_drain(report, &plan, &runs);
    report_gateway(report, counts);
    report_waits(report, &runs);
    Ok(())
}

/// The burst's shape as figures of their own.
fn describe(report: &mut Report, plan: &Plan, concurrency: usize) {
    let info = Target::Info;
    report.add(
        SECTION,
        "gateway capacity K",
        CAPACITY as f64,
        "requests",
        info,
    );
    report.add(SECTION, "gateway latency L", ms(LATENCY), "ms", info);
    report.add(
        SECTION,
        format!("runner concurrency ({OVERCOMMIT} x K)"),
        concurrency as f64,
        "runs",
        info,
    );
    report.add(
        SECTION,
        format!("missions due at once, over {} users", plan.users),
        plan.missions as f64,
        "missions",
        info,
    );
    report.add(
        SECTION,
        "missions of the heavy user",
        plan.heavy as f64,
        "missions",
        info,
    );
}

/// Waits until the reactor has folded every mission; returns when.
async fn wait_folded(pool: &Pool, missions: usize) -> anyhow::Result<DateTime<Utc>> {
    let client = pool.get().await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let folded: i64 = client
            .query_one("SELECT count(*) FROM mana_ai.mission_snapshots", &[])
            .await?
            .get(0);
        if folded as usize >= missions {
            return Ok(Utc::now());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "only {folded} of {missions} missions folded in 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every run's start and write-back, from its slot and from `due_at`.
async fn load_runs(pool: &Pool, due_at: DateTime<Utc>) -> anyhow::Result<Vec<RunTimes>> {
    let heavy_user = setup::user_id(0);
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT user_id, slot, claimed_at, CASE WHEN state = 'done' THEN finished_at END
             FROM mana_ai.mission_runs",
            &[],
        )
        .await
        .context("reading mission_runs")?;
    let span = |from: DateTime<Utc>, to: DateTime<Utc>| (to - from).to_std().unwrap_or_default();
    let mut runs = Vec::with_capacity(rows.len());
    for row in rows {
        let user: String = row.try_get(0)?;
        let slot: String = row.try_get(1)?;
        let due = DateTime::parse_from_rfc3339(&slot)
            .with_context(|| format!("slot {slot:?}"))?
            .with_timezone(&Utc);
        let claimed: DateTime<Utc> = row.try_get(2)?;
        let finished: Option<DateTime<Utc>> = row.try_get(3)?;
        runs.push(RunTimes {
            heavy: user == heavy_user,
            start: span(due, claimed),
            written: finished.map(|at| span(due, at)),
            drained: finished.map(|at| span(due_at, at)),
        });
    }
    Ok(runs)
}

/// Drain time (due instant to the last write-back) against N x L / K.
fn report_drain(report: &mut Report, plan: &Plan, runs: &[RunTimes]) {
    let drain = runs
        .iter()
        .filter_map(|r| r.drained)
        .max()
        .unwrap_or_default()
        .as_secs_f64();
    let ideal = plan.ideal_secs();
    report.add(
        SECTION,
        "drain: first due -> last written",
        drain,
        "s",
        Target::Info,
    );
    report.add(SECTION, "ideal N x L / K", ideal, "s", Target::Info);
    report.add(
        SECTION,
        "drain time / ideal",
        drain / ideal,
        "x",
        Target::AtMost(1.15),
    );
}

/// How the service got there: its first start, the adaptive LLM limit it
/// ended at, and the runs that ended in an error (and wait for a retry).
fn report_service(report: &mut Report, metrics: &Metrics, runs: &[RunTimes]) {
    let info = Target::Info;
    let first = runs.iter().map(|r| r.start).min().unwrap_or_default();
    report.add(
        SECTION,
        "first run started, after due",
        ms(first),
        "ms",
        info,
    );
    let limit = metrics.llm_concurrency_limit.get() as f64;
    report.add(
        SECTION,
        "LLM concurrency limit at the end",
        limit,
        "requests",
        info,
    );
    let errors = metrics.mission_errors.get() as f64;
    report.add(SECTION, "runs that ended in an error", errors, "runs", info);
}

/// What the gateway saw: requests, 429s and their share, its peak.
fn report_gateway(report: &mut Report, counts: GatewayCounts) {
    let info = Target::Info;
    let share = 100.0 * counts.refused as f64 / counts.requests.max(1) as f64;
    report.add(
        SECTION,
        "gateway requests",
        counts.requests as f64,
        "requests",
        info,
    );
    report.add(
        SECTION,
        "gateway answers 429",
        counts.refused as f64,
        "requests",
        info,
    );
    report.add(
        SECTION,
        "gateway peak in flight",
        counts.peak_in_flight as f64,
        "requests",
        info,
    );
    report.add(
        SECTION,
        "share of 429 among requests",
        share,
        "%",
        Target::AtMost(5.0),
    );
}

/// The light users' waits next to the heavy user's: due -> start (the
/// target) and due -> written (for context).
fn report_waits(report: &mut Report, runs: &[RunTimes]) {
    let info = Target::Info;
    let pick = |heavy: bool, written: bool| -> Vec<Duration> {
        runs.iter()
            .filter(|r| r.heavy == heavy)
            .filter_map(|r| if written { r.written } else { Some(r.start) })
            .collect()
    };
    let heavy = percentiles(&mut pick(true, false));
    let light = percentiles(&mut pick(false, false));
    report.latencies(SECTION, "heavy user, due -> start", &heavy, [info; 4]);
    // The target: the light users' p99 below the heavy user's median.
    let below_heavy = Target::AtMost(ms(heavy.p50));
    report.latencies(
        SECTION,
        "light users, due -> start",
        &light,
        [info, info, below_heavy, info],
    );
    let heavy = percentiles(&mut pick(true, true));
    let light = percentiles(&mut pick(false, true));
    report.add(
        SECTION,
        "heavy user, due -> written p50",
        ms(heavy.p50),
        "ms",
        info,
    );
    report.add(
        SECTION,
        "light users, due -> written p99",
        ms(light.p99),
        "ms",
        info,
    );
}

fn secs(d: chrono::Duration) -> f64 {
    d.num_milliseconds() as f64 / 1e3
}
