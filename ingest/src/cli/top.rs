//! `sluice top`. PLACEHOLDER until it lands.

#[derive(Debug, clap::Args)]
pub struct TopArgs {}

pub fn run(_args: TopArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not yet implemented")
}
