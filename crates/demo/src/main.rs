//! `mana-ai-demo`: the whole path on a throwaway database, in one command.
//!
//! Finds or starts a Postgres (see `pgtemp`), creates a fresh database with
//! the mana_sync side, installs the trigger kit and migrations, makes a
//! grant key pair, seeds a user with an agent, a goal, an
//! end-to-end-encrypted note under a grant minted on the spot, and a
//! mission due in a few seconds, then starts the service ([`App`]) and
//! shows the run: snapshot, timer, prompt summary, the written iteration,
//! `nextRunAt` and the audit trail. Without `MANA_LLM_URL` the planner is
//! the offline one, and says so. The database is dropped on exit (a cluster
//! it started is stopped and removed).
//!
//! [`App`]: mana_ai::service::App

mod probe;
mod seed;
mod show;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "mana-ai-demo",
    version,
    about = "Show mana-ai's whole path on a throwaway database: seed a mission, run it, show the write-back"
)]
struct Cli {
    /// Keep serving HTTP (PORT) after the run, until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// Which generation of mana's sync_changes to make: `current` (today's:
    /// field_meta, origin, space_id) or `v0.6` (field_timestamps).
    #[arg(long, value_enum, default_value_t = Generation::Current)]
    generation: Generation,
}

/// The demo database's `sync_changes`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generation {
    Current,
    #[value(name = "v0.6")]
    V06,
}

fn say(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Held to the end of main: dropping it sends the spans still queued.
    let _telemetry = match mana_ai::logging::init() {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("mana-ai-demo: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    match show::run(
        cli.keep_running,
        cli.generation,
        mana_ai::service::shutdown_signal(),
    )
    .await
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mana-ai-demo: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
