//! `dispatchd`: load configuration, start telemetry, run the command.

use std::process::ExitCode;

use clap::Parser as _;
use dispatchd::cli::{Cli, Command, execute};
use dispatchd::config::Config;
use dispatchd::telemetry::LogTarget;

fn main() -> ExitCode {
    dispatchd::telemetry::tune_allocator();
    let cli = Cli::parse();
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            dispatchd::telemetry::tell_operator(format_args!("dispatchd: configuration error: {err}"));
            // A container runtime reads a health check's 2 as "reserved": unhealthy is 1.
            let unhealthy = matches!(cli.command, Some(Command::Healthcheck { .. }));
            return ExitCode::from(if unhealthy { 1 } else { 2 });
        }
    };
    if let Some(format) = cli.log_format {
        config.log.format = format.into();
    }
    let target = match cli.command {
        None | Some(Command::Serve) => LogTarget::Stdout,
        Some(_) => LogTarget::Stderr,
    };
    let exporters = match dispatchd::traces::Exporters::start(&config.telemetry) {
        Ok(exporters) => exporters,
        Err(err) => {
            dispatchd::telemetry::tell_operator(format_args!("dispatchd: cannot start telemetry: {err:#}"));
            return ExitCode::FAILURE;
        }
    };
    dispatchd::telemetry::init_tracing(&config.log, target, &exporters);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            dispatchd::telemetry::tell_operator(format_args!("dispatchd: cannot start the runtime: {err}"));
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(execute(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "dispatchd failed");
            dispatchd::telemetry::tell_operator(format_args!("dispatchd: {err:#}"));
            ExitCode::FAILURE
        }
    };
    drop(runtime);
    exporters.shutdown();
    code
}
