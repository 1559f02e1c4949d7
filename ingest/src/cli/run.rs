//! `sluice run`. PLACEHOLDER until it lands.

#[derive(Debug, clap::Args)]
pub struct RunArgs {}

pub fn run(_args: RunArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet implemented")
}
