//! `sluice check-config`. PLACEHOLDER until it lands.

#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {}

pub fn run(_args: CheckConfigArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet implemented")
}
