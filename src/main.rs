//! The `mana-ai` command line: a thin shell over the library.

use clap::{Parser, Subcommand, ValueEnum};
use mana_ai::db::{self, DedicatedError};
use mana_ai::service::App;
use mana_ai::{config::Config, triggers};

#[derive(Parser)]
#[command(
    name = "mana-ai",
    version,
    about = "Runs mana's AI missions from the mana_sync change log"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply the migrations of schema mana_ai and exit.
    Migrate,
    /// Mint a key-grant for local testing (prints the grant JSON).
    Grant {
        /// SPKI PEM file of the service's public key.
        #[arg(long)]
        public_key: std::path::PathBuf,
        /// The user's 32-byte master key, base64.
        #[arg(long)]
        master_key: String,
        #[arg(long)]
        mission_id: String,
        /// Tables in scope, comma-separated (e.g. notes,tasks).
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
        /// Records in scope as <table>:<id>, comma-separated.
        #[arg(long, value_delimiter = ',')]
        records: Vec<String>,
        /// Validity in hours.
        #[arg(long, default_value_t = 24)]
        hours: i64,
    },
    /// The DBA trigger kit.
    Triggers {
        #[command(subcommand)]
        action: TriggerAction,
    },
}

#[derive(Subcommand)]
enum TriggerAction {
    /// Print a kit file (install.sql by default) for `psql -f`.
    Print {
        #[arg(value_enum, default_value = "install")]
        file: KitFile,
    },
    /// Check the installation in SYNC_DATABASE_URL; exits non-zero naming what is missing.
    Verify {
        /// Role whose grants to check (default: the connected role).
        #[arg(long)]
        service_role: Option<String>,
    },
    /// Run install.sql through SYNC_DATABASE_URL (which must be a superuser): for development.
    Install {
        #[arg(long)]
        service_role: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum KitFile {
    Install,
    Verify,
    Uninstall,
}

/// A connection for the one-shot commands (`migrate`, `triggers`).
async fn connect(config: &Config) -> anyhow::Result<tokio_postgres::Client> {
    let target = db::Dedicated {
        url: config.db.url.expose(),
        root_cert: config.db.root_cert.as_deref(),
        application_name: None,
    };
    match db::connect_dedicated(&target, |_| {}).await {
        Ok((client, _task)) => Ok(client),
        Err(DedicatedError::Url(e)) => Err(anyhow::Error::new(e).context("SYNC_DATABASE_URL")),
        Err(DedicatedError::Tls(e)) => Err(e.into()),
        Err(DedicatedError::Connect(e)) => Err(anyhow::anyhow!(
            "SYNC_DATABASE_URL: {}",
            db::errors::describe(&e)
        )),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Held to the end of main: dropping it sends the spans still queued.
    let _telemetry = match mana_ai::logging::init() {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("mana-ai: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Triggers {
            action: TriggerAction::Print { file },
        } => {
            print!(
                "{}",
                match file {
                    KitFile::Install => triggers::INSTALL_SQL,
                    KitFile::Verify => triggers::VERIFY_SQL,
                    KitFile::Uninstall => triggers::UNINSTALL_SQL,
                }
            );
            Ok(())
        }
        Command::Grant {
            public_key,
            master_key,
            mission_id,
            tables,
            records,
            hours,
        } => mint(
            &public_key,
            &master_key,
            &mission_id,
            &tables,
            &records,
            hours,
        ),
        command => run(command).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mana-ai: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn mint(
    public_key: &std::path::Path,
    master_key: &str,
    mission_id: &str,
    tables: &[String],
    records: &[String],
    hours: i64,
) -> anyhow::Result<()> {
    use base64::Engine;
    let pem = std::fs::read_to_string(public_key)
        .map_err(|e| anyhow::anyhow!("--public-key {}: {e}", public_key.display()))?;
    let key = mana_ai::crypto::GrantPublicKey::from_public_pem(&pem)
        .map_err(|e| anyhow::anyhow!("--public-key: {e}"))?;
    let master: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(master_key.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| anyhow::anyhow!("--master-key: not base64 of exactly 32 bytes"))?;
    let now = chrono::Utc::now();
    let grant = mana_ai::crypto::mint_grant(
        &key,
        &master,
        mission_id,
        tables,
        records,
        now,
        now + chrono::Duration::hours(hours),
    )
    .map_err(|_| anyhow::anyhow!("wrapping the mission key failed"))?;
    println!("{}", serde_json::to_string_pretty(&grant)?);
    Ok(())
}

async fn run(command: Command) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    match command {
        Command::Serve => {
            let app = App::build(config).await?;
            mana_ai::service::shutdown_signal().await;
            app.shutdown().await;
            Ok(())
        }
        Command::Migrate => {
            let mut client = connect(&config).await?;
            let report = db::migrate::migrate(&mut client).await?;
            println!(
                "migrations applied: {:?}; already applied: {}",
                report.applied, report.already
            );
            Ok(())
        }
        Command::Grant { .. } => unreachable!("handled without Config"),
        Command::Triggers { action } => {
            let client = connect(&config).await?;
            match action {
                TriggerAction::Verify { service_role } => {
                    triggers::verify(&client, service_role.as_deref()).await?;
                    println!("mana-ai triggers: ok");
                }
                TriggerAction::Install { service_role } => {
                    triggers::install(&client, &service_role).await?;
                    println!("mana-ai triggers installed for role {service_role}");
                }
                TriggerAction::Print { .. } => unreachable!("handled without a database"),
            }
            Ok(())
        }
    }
}
