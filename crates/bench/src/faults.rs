//! fault-campaign: mana-ai under faults, checked by an oracle at the end.
//!
//!   cargo build --release --locked --bin mana-ai --bin fault-campaign
//!   target/release/fault-campaign [--secs 600] [--seed S]
//!
//! Against a throwaway cluster of its own: the trigger kit, two `mana-ai
//! serve` processes (leader and standby) of this workspace, a fake LLM
//! gateway on loopback, writers pushing mission and agent changes, and for
//! `--secs` seconds random faults (`inject.rs`). Then the faults stop, the
//! writers go on for `--settle-secs` and stop, the services get SIGTERM, a
//! last instance without runs (`TICK_ENABLED=false`) drains the queue and
//! stops, and the oracle checks the frozen database (`oracle.rs`,
//! `slots.rs`). Exits 1 when it found anything. Service logs stay in the
//! directory it prints.

#[path = "faults/cluster.rs"]
mod cluster;
#[path = "faults/inject.rs"]
mod inject;
#[path = "faults/llm.rs"]
mod llm;
#[path = "faults/oracle.rs"]
mod oracle;
#[path = "faults/payloads.rs"]
mod payloads;
#[path = "faults/report.rs"]
mod report;
#[path = "faults/rng.rs"]
mod rng;
#[path = "faults/services.rs"]
mod services;
#[path = "faults/slots.rs"]
mod slots;
#[path = "faults/writers.rs"]
mod writers;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use pgtemp::{SERVICE_ROLE, SYNC_ROLE};
use tokio_util::sync::CancellationToken;

use services::{Service, Setup};

#[derive(Debug, Parser)]
#[command(about = "Runs mana-ai under random faults and checks what it did")]
struct Args {
    /// Seconds of faults.
    #[arg(long, default_value_t = 600)]
    secs: u64,
    /// Seed of the campaign's choices (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds the writers go on without faults before everything stops.
    #[arg(long, default_value_t = 30)]
    settle_secs: u64,
    /// Concurrent writers.
    #[arg(long, default_value_t = 3)]
    writers: usize,
    /// Users the writers write for.
    #[arg(long, default_value_t = 5)]
    users: usize,
    /// Missions alive at once (each due every 6 to 18 s).
    #[arg(long, default_value_t = 30)]
    max_missions: usize,
    /// The `mana-ai` binary (default: the one beside this binary).
    #[arg(long)]
    service_bin: Option<PathBuf>,
}

/// Seconds since the campaign started, for its progress lines.
pub fn clock() -> String {
    static START: OnceLock<Instant> = OnceLock::new();
    format!(
        "{:7.1}s",
        START.get_or_init(Instant::now).elapsed().as_secs_f64()
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    clock();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let findings = runtime.block_on(campaign(args))?;
    if findings > 0 {
        std::process::exit(1);
    }
    Ok(())
}

async fn campaign(args: Args) -> anyhow::Result<u64> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut rng = rng::Rng::new(seed);
    println!("fault-campaign: seed {seed}, {} s of faults", args.secs);
    let bin = services::find_binary(args.service_bin.clone())?;
    let db = cluster::Db::start().await?;
    let llm = llm::Gateway::start().await?;
    let log_dir =
        std::env::temp_dir().join(format!("fault-campaign-{seed}-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir).context("creating the log directory")?;
    println!("service: {}\nlogs: {}", bin.display(), log_dir.display());
    let setup = Setup {
        bin,
        db_url: db.db.url_as(SERVICE_ROLE),
        llm_url: llm.url(),
        log_dir,
    };
    let mut services = [Service::new("a"), Service::new("b")];
    services[0].start(&setup, &[])?;
    services[0].wait_leading(Duration::from_secs(60)).await?;
    services[1].start(&setup, &[])?;

    let users = (0..args.users).map(|u| uuid::Uuid::from_u128(0xfa17 + u as u128).to_string());
    let writers =
        writers::Writers::new(users.collect(), db.db.url_as(SYNC_ROLE), args.max_missions);
    let stop_writers = CancellationToken::new();
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let task = writers
            .clone()
            .run(rng.fork(w as u64), stop_writers.clone());
        tasks.push(tokio::spawn(task));
    }
    let stop_faults = CancellationToken::new();
    let timer = stop_faults.clone();
    let secs = args.secs;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        timer.cancel();
    });
    let mut injector = inject::Injector::new(&db, &llm, &setup, &mut services, rng.fork(1000));
    injector.run(stop_faults).await;
    let faults = std::mem::take(&mut injector.counts);
    drop(injector);

    println!(
        "[{}] faults stopped; writers go on for {} s",
        clock(),
        args.settle_secs
    );
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    stop_writers.cancel();
    for t in tasks {
        t.await.context("a writer panicked")?;
    }
    let stopped = chrono::Utc::now();
    println!("[{}] writers stopped; SIGTERM to the services", clock());
    let mut unclean = 0;
    for s in services.iter_mut() {
        if !s.terminate(Duration::from_secs(30)).await? {
            unclean += 1;
        }
    }
    let starts = services.iter().map(|s| s.starts).sum();
    drain(&db, &setup).await?;

    println!("[{}] checking", clock());
    let admin = db.admin().await?;
    let changes = oracle::check_changes(&admin).await?;
    let slots = slots::check_slots(&admin, stopped).await?;
    let run = report::Run {
        faults: &faults,
        writes: &writers.counts,
        llm_requests: llm.requests(),
        service_starts: starts,
        unclean_stops: unclean,
        backstop_recoveries: services::backstop_recoveries(&setup.log_dir)?,
    };
    Ok(report::print(&run, &changes, &slots))
}

/// A last instance that runs nothing (`TICK_ENABLED=false`) applies what
/// the stopped leader left queued (its last write-backs), then stops.
async fn drain(db: &cluster::Db, setup: &Setup) -> anyhow::Result<()> {
    let mut last = Service::new("drain");
    last.start(setup, &[("TICK_ENABLED", "false")])?;
    last.wait_leading(Duration::from_secs(60)).await?;
    let start = Instant::now();
    while db.queue_depth().await? > 0 {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the change queue did not drain within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    last.terminate(Duration::from_secs(30)).await?;
    println!("[{}] queue drained", clock());
    Ok(())
}
