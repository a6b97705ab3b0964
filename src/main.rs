//! The `mana-ai` command line: a thin shell over the library.

use clap::{Parser, Subcommand, ValueEnum};
use mana_ai::{config::Config, db, service, triggers};

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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if std::env::var("MANA_AI_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn connect(config: &Config) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) =
        tokio_postgres::connect(config.database_url.expose(), tokio_postgres::NoTls)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to SYNC_DATABASE_URL: {e}"))?;
    tokio::spawn(connection);
    Ok(client)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_logging();
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

async fn run(command: Command) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    match command {
        Command::Serve => service::run(config, shutdown_signal()).await,
        Command::Migrate => {
            let mut client = connect(&config).await?;
            let report = db::migrate::migrate(&mut client).await?;
            println!(
                "migrations applied: {:?}; already applied: {}",
                report.applied, report.already
            );
            Ok(())
        }
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
