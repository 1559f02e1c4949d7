//! sluice-bench: load generator and peer comparison.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("no commands yet")
}
