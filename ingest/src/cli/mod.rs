//! The `sluice` command line. Each subcommand lives in its own file with its own arguments.

pub mod check_config;
mod logging;
pub mod parse;
pub mod run;
mod service_manager;
pub mod top;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "High-throughput syslog ingestion for security alerts"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the appliance (embedded default config unless --config is given).
    Run(run::RunArgs),
    /// Validate a config file and print the effective config (secrets redacted).
    CheckConfig(check_config::CheckConfigArgs),
    /// Parse syslog messages from stdin and print one JSON object per message.
    Parse(parse::ParseArgs),
    /// Live view of per-source traffic, drops and per-core load.
    Top(top::TopArgs),
}

pub fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    if let Err(e) = crate::memory::disable_transparent_huge_pages() {
        // Only slower start-up bursts: not worth refusing to run for.
        eprintln!("warning: could not turn transparent huge pages off: {e}");
    }
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::CheckConfig(args) => check_config::run(args),
        Command::Parse(args) => parse::run(args),
        Command::Top(args) => top::run(args),
    }
}
