//! The command line: `dispatchd [serve]`, `dispatchd migrate`,
//! `dispatchd admin create-user --role dispatcher|admin --phone … --name …`,
//! `dispatchd admin approve-pilot --phone … --plate …`, `dispatchd admin retry-jobs --kind …`,
//! `dispatchd healthcheck`.

use std::io::{BufRead as _, IsTerminal as _};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;

use crate::clock::Clock;
use crate::config::{Config, LogFormat};
use crate::domain::{PersonName, Phone, Role, VehicleModel, VehiclePlate};
use crate::store::ApprovalChange;

/// Environment variable the admin password may come from instead of standard input.
pub const ADMIN_PASSWORD_ENV: &str = "DISPATCHD_ADMIN_PASSWORD";

#[derive(Debug, Parser)]
#[command(name = "dispatchd", version, about = "Real-time dispatch server for delivery and ride-hailing fleets")]
pub struct Cli {
    /// Configuration file layered over the built-in defaults (see config.toml).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Log format for this run, overriding log.format.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Json,
    Human,
}

impl From<LogFormatArg> for LogFormat {
    fn from(arg: LogFormatArg) -> Self {
        match arg {
            LogFormatArg::Json => LogFormat::Json,
            LogFormatArg::Human => LogFormat::Human,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Operator tasks.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Ask the server this configuration describes for `/healthz`: exit 0 when it answers 200
    /// within `--timeout-secs`, 1 otherwise (a container's HEALTHCHECK, needing no curl).
    Healthcheck {
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a dispatcher or admin account. The password is read from standard input
    /// (or DISPATCHD_ADMIN_PASSWORD), never from the command line.
    CreateUser {
        #[arg(long, value_enum)]
        role: StaffRole,
        /// E.164 phone number, e.g. +919876543210.
        #[arg(long)]
        phone: String,
        #[arg(long)]
        name: String,
    },
    /// Approve a pilot (new, or suspended) to take work, recording its vehicle: what
    /// `POST /api/v1/admin/pilots/{id}/approve` does, for the operator at the console.
    ApprovePilot {
        /// The pilot's E.164 phone number.
        #[arg(long)]
        phone: String,
        /// The vehicle's registration plate, e.g. "KA 01 AB 1234".
        #[arg(long)]
        plate: String,
        /// Make and model, e.g. "Honda Activa 6G".
        #[arg(long)]
        model: Option<String>,
    },
    /// Run again the jobs of one kind that failed for good (say, refunds a gateway refused
    /// for days: `--kind payment.refund`), once what failed them is mended.
    RetryJobs {
        #[arg(long)]
        kind: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StaffRole {
    Dispatcher,
    Admin,
}

/// Runs the chosen command with a loaded configuration.
pub async fn execute(command: Option<Command>, config: Config) -> anyhow::Result<()> {
    match command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            crate::store::open(&config.database, config.database_url()).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::Admin(AdminCommand::CreateUser { role, phone, name }) => {
            create_user(config, role, &phone, &name).await
        }
        Command::Admin(AdminCommand::ApprovePilot { phone, plate, model }) => {
            approve_pilot(config, &phone, &plate, model.as_deref()).await
        }
        Command::Healthcheck { timeout_secs } => healthcheck(config.server.addr, timeout_secs).await,
        Command::Admin(AdminCommand::RetryJobs { kind }) => {
            let store = crate::store::open(&config.database, config.database_url()).await?;
            let retried = store.retry_failed_jobs(&kind, chrono::Utc::now()).await?;
            println!("{retried} failed {kind} jobs queued again");
            store.close().await;
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = config.server.addr;
    let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    crate::app::run(config, listener, shutdown_signal()).await
}

/// `GET /healthz` on the address the server listens on (its loopback when it listens on
/// every interface).
async fn healthcheck(addr: std::net::SocketAddr, timeout_secs: u64) -> anyhow::Result<()> {
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let url = format!("http://{target}/healthz");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(timeout_secs.max(1)))
        .build()
        .context("building the HTTP client")?;
    let response = client.get(&url).send().await.with_context(|| format!("{url} did not answer"))?;
    anyhow::ensure!(response.status() == reqwest::StatusCode::OK, "{url} answered {}", response.status());
    println!("{url}: ok");
    Ok(())
}

async fn create_user(config: Config, role: StaffRole, phone: &str, name: &str) -> anyhow::Result<()> {
    let phone = Phone::parse(phone).map_err(|err| anyhow::anyhow!("--phone {err}"))?;
    let name = PersonName::parse(name).map_err(|err| anyhow::anyhow!("--name {err}"))?;
    let password = read_password()?;
    let password =
        crate::auth::password::NewPassword::parse(password).map_err(|err| anyhow::anyhow!("password {err}"))?;
    let role = match role {
        StaffRole::Dispatcher => Role::Dispatcher,
        StaffRole::Admin => Role::Admin,
    };
    let app = crate::app::App::build(config, Clock::system()).await?;
    let user =
        app.state().auth.create_staff(name, phone, password, role).await.map_err(|err| anyhow::anyhow!("{err}"))?;
    println!("{}", serde_json::to_string(&user)?);
    app.state().store.close().await;
    Ok(())
}

async fn approve_pilot(config: Config, phone: &str, plate: &str, model: Option<&str>) -> anyhow::Result<()> {
    let phone = Phone::parse(phone).map_err(|err| anyhow::anyhow!("--phone {err}"))?;
    let plate = VehiclePlate::parse(plate).map_err(|err| anyhow::anyhow!("--plate {err}"))?;
    let model = model.map(VehicleModel::parse).transpose().map_err(|err| anyhow::anyhow!("--model {err}"))?;
    let store = crate::store::open(&config.database, config.database_url()).await?;
    let pilot = store
        .credentials_by_phone(&phone)
        .await?
        .map(|found| found.user)
        .filter(|user| user.pilot.is_some())
        .ok_or_else(|| anyhow::anyhow!("no pilot has the phone number {}", phone.as_str()))?;
    let change = ApprovalChange::Approve { plate, model };
    let approved = store.set_pilot_approval(pilot.id, &change, None, chrono::Utc::now()).await?;
    println!("{}", serde_json::to_string(&approved)?);
    store.close().await;
    Ok(())
}

fn read_password() -> anyhow::Result<String> {
    if let Ok(password) = std::env::var(ADMIN_PASSWORD_ENV) {
        return Ok(password);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password for the new account: ");
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line).context("reading the password from standard input")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}
