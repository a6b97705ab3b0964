//! reactor-bench: the reactor's performance targets (DESIGN.md,
//! "Performance targets") measured against a real Postgres in one run.
//!
//!   cargo run --release --bin reactor-bench -- [--quick] [--only SECTION] [--json PATH] [--big]
//!       [--backfill N] [--backfill-analyze-after N]
//!
//! Each section creates its own database (pgtemp::TempDb, dropped when the
//! section ends). The machine is shared and noisy: read the figures as
//! ratios and percentiles of this run, not as absolute promises.

#[path = "reactor/alloc.rs"]
mod alloc;
#[path = "reactor/backfill.rs"]
mod backfill;
#[path = "reactor/burst.rs"]
mod burst;
#[path = "reactor/client.rs"]
mod client;
#[path = "reactor/ingest.rs"]
mod ingest;
#[path = "reactor/latency.rs"]
mod latency;
#[path = "reactor/paced.rs"]
mod paced;
#[path = "reactor/report.rs"]
mod report;
#[path = "reactor/runs.rs"]
mod runs;
#[path = "reactor/setup.rs"]
mod setup;
#[path = "reactor/trigger.rs"]
mod trigger;
#[path = "reactor/wheel.rs"]
mod wheel;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use pgtemp::PgServer;

use report::Report;

#[global_allocator]
static COUNTING: alloc::Counting = alloc::Counting;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks the mana-ai reactor against a real Postgres")]
struct Args {
    /// Everything 10x smaller: a smoke run of under a minute.
    #[arg(long)]
    quick: bool,
    /// Run one section only (`latency` also runs `notify`, its floor).
    #[arg(long, value_enum)]
    only: Option<Section>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Add a change log of 10^7 rows to the log-size section (slow).
    #[arg(long)]
    big: bool,
    /// MANA_AI_APPLY_BATCH values the ingest section drains with.
    #[arg(long, value_delimiter = ',', default_values_t = [500i64, 2000])]
    batches: Vec<i64>,
    /// Changes in the backfill section's burst (`--quick` divides by ten).
    #[arg(long, default_value_t = 1_000_000)]
    backfill: usize,
    /// MANA_AI_ANALYZE_AFTER_ROWS for the backfill section (0: leave the
    /// statistics to autovacuum, as before the service analyzed).
    #[arg(long)]
    backfill_analyze_after: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    Notify,
    Latency,
    Ingest,
    LogSize,
    Rebuild,
    Due,
    Trigger,
    Runs,
    Backfill,
    Burst,
}

/// How big each section is; `--quick` divides by ten.
pub struct Scale {
    pub notify_round_trips: usize,
    /// Changes written one at a time for the client's view of latency.
    pub client_samples: usize,
    /// Changes per second the latency writers aim for, in total.
    pub rate: u32,
    pub latency_secs: f64,
    /// Users for ingest and log-size, 10 missions each.
    pub users: usize,
    pub ingest_changes: usize,
    pub batches: Vec<i64>,
    /// Sizes of the change log the log-size section measures at.
    pub log_sizes: Vec<u64>,
    pub log_probe_changes: usize,
    pub rebuild_missions: u64,
    pub due_missions: usize,
    pub due_spread: Duration,
    pub trigger_secs: Duration,
    /// Missions run one at a time for the per-run overhead.
    pub run_missions_sequential: usize,
    /// Missions due at the same instant for the throughput figure.
    pub run_missions_burst: usize,
    /// Changes in the backfill burst.
    pub backfill: usize,
    pub backfill_analyze_after: Option<u64>,
    /// The burst: missions due at once, their users, the heavy user's share.
    pub burst_missions: usize,
    pub burst_users: usize,
    pub burst_heavy: usize,
}

impl Scale {
    fn new(args: &Args) -> Scale {
        let d = if args.quick { 10 } else { 1 };
        let mut log_sizes = vec![100_000 / d as u64, 1_000_000 / d as u64];
        if args.big {
            log_sizes.push(10_000_000 / d as u64);
        }
        Scale {
            notify_round_trips: 1_000 / d,
            client_samples: 400 / d,
            rate: 1_000,
            latency_secs: 5.0 / d as f64,
            users: 1_000 / d,
            ingest_changes: 100_000 / d,
            batches: args.batches.clone(),
            log_sizes,
            log_probe_changes: 20_000 / d,
            rebuild_missions: 1_000_000 / d as u64,
            due_missions: 100_000 / d,
            due_spread: Duration::from_secs(5) / d as u32,
            trigger_secs: Duration::from_secs(3) / d as u32,
            run_missions_sequential: 500 / d,
            run_missions_burst: 10_000 / d,
            backfill: args.backfill / d,
            backfill_analyze_after: args.backfill_analyze_after,
            burst_missions: 10_000 / d,
            burst_users: 1_000 / d,
            burst_heavy: 2_000 / d,
        }
    }
}

/// Facts that help read the figures: cores, load, the server's durability.
async fn machine_facts(server: &PgServer, args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    report.fact("cpus (nproc)", format!("{cpus} x {model}"));
    report.fact(
        "load average at start",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    let admin = server.connect_admin("postgres").await?;
    for setting in [
        "server_version",
        "synchronous_commit",
        "fsync",
        "wal_sync_method",
        "shared_buffers",
    ] {
        let value: String = admin
            .query_one(&format!("SHOW {setting}"), &[])
            .await?
            .get(0);
        report.fact(setting, value);
    }
    report.fact(
        "postgres",
        match &server.cluster_dir {
            Some(dir) => format!("throwaway cluster in {}", dir.display()),
            None => "existing server (DATABASE_URL or 127.0.0.1:5432)".into(),
        },
    );
    report.fact(
        "mode",
        if args.quick {
            "--quick (10x smaller)"
        } else {
            "full"
        },
    );
    Ok(())
}

/// A CHECKPOINT on the server.
async fn quiesce(server: &PgServer) -> anyhow::Result<()> {
    server
        .connect_admin("postgres")
        .await?
        .batch_execute("CHECKPOINT")
        .await
        .context("CHECKPOINT")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let scale = Scale::new(&args);
    let server = PgServer::discover().context("finding Postgres")?;
    let mut report = Report::default();
    machine_facts(&server, &args, &mut report).await?;

    let wanted = |s: Section| match args.only {
        None => true,
        Some(Section::Latency) => matches!(s, Section::Latency | Section::Notify),
        Some(only) => only == s,
    };
    let started = Instant::now();
    let mut floor = None;
    for section in Section::value_variants()
        .iter()
        .copied()
        .filter(|s| wanted(*s))
    {
        let name = section
            .to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_string());
        eprintln!(
            "== {name} ({:.0} s into the run)",
            started.elapsed().as_secs_f64()
        );
        // Each section starts on a quiet server: what the last one wrote
        // (a million filler rows, a dropped database) is flushed first, not
        // during the next measurement.
        if let Err(e) = quiesce(&server).await {
            report.note(format!("before {name}: {e:#}"));
        }
        let r = &mut report;
        let outcome = match section {
            Section::Notify => latency::notify_floor(&server, &scale, r)
                .await
                .map(|p| floor = Some(p)),
            Section::Latency => latency::change_to_snapshot(&server, &scale, floor, r).await,
            Section::Ingest => ingest::peak_ingest(&server, &scale, r).await,
            Section::LogSize => ingest::log_size(&server, &scale, r).await,
            Section::Rebuild => wheel::rebuild(&server, &scale, r).await,
            Section::Due => wheel::due_to_start(&server, &scale, r).await,
            Section::Trigger => trigger::trigger_cost(&server, &scale, r).await,
            Section::Runs => runs::runs(&server, &scale, r).await,
            Section::Backfill => backfill::after_backfill(&server, &scale, r).await,
            Section::Burst => burst::burst(&server, &scale, r).await,
        };
        if let Err(e) = outcome {
            report.note(format!("section {name} failed: {e:#}"));
        }
    }
    report.fact(
        "run took",
        format!("{:.0} s", started.elapsed().as_secs_f64()),
    );
    report.print();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.to_json())?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}
