//! Benchmarks (to be written).

/// Run a benchmark by name.
pub fn run(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
