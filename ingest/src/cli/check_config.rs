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
    let loaded = Config::load(&args.file)
        .map_err(|e| e.to_string())
        .and_then(|config| {
            config
                .check_file_modes()
                .map_err(|e| format!("{}: {e}", args.file.display()))
                .map(|warnings| (config, warnings))
        });
    match loaded {
        Ok((config, mode_warnings)) => {
            println!(
                "# {}: valid. Effective config (defaults filled in, secrets redacted):",
                args.file.display()
            );
            print!("{}", config.to_redacted_toml());
            for warning in mode_warnings {
                eprintln!("warning: {warning}");
            }
            // Not an error: configs are often checked on another machine than the one they
            // run on (CI, a build host). On this one, start-up would fail.
            if let Some(user) = &config.user
                && let Err(e) = crate::privileges::Identity::resolve(user, config.group.as_deref())
            {
                eprintln!(
                    "warning: {}: user/group: {e}; `sluice run` with this config would fail on this machine",
                    args.file.display()
                );
            }
            for (name, source) in &config.sources {
                if let crate::config::SourceConfig::Tls(tls) = source
                    && let Ok(concerns) = crate::net::tls::expiry_concerns(&tls.tls_files())
                {
                    for concern in concerns {
                        eprintln!(
                            "warning: {}: sources.{name}: {concern}",
                            args.file.display()
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
