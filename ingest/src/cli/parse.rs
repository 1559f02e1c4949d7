//! `sluice parse`. PLACEHOLDER until it lands.

#[derive(Debug, clap::Args)]
pub struct ParseArgs {}

pub fn run(_args: ParseArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet implemented")
}
