//! `sluice check-config`: validate a config file and print the effective config.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// Config file (TOML).
    pub file: PathBuf,
}

pub fn run(args: CheckConfigArgs) -> anyhow::Result<ExitCode> {
    match Config::load(&args.file) {
        Ok(config) => {
            println!(
                "# {}: valid. Effective config (defaults filled in, secrets redacted):",
                args.file.display()
            );
            print!("{}", config.to_redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
