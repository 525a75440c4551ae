//! `berth bgp --config FILE`: the stand-alone BGP speaker role. All logic
//! lives in the `berth-bgp` crate; this module only wires the CLI to it.

use std::path::PathBuf;

/// Arguments of `berth bgp`.
#[derive(clap::Args)]
pub struct BgpArgs {
    /// TOML configuration (keys documented in crates/bgp/README.md). SIGHUP re-reads it.
    #[arg(long)]
    pub config: PathBuf,
}

/// Runs the speaker until SIGTERM/SIGINT.
pub fn run(args: BgpArgs) -> anyhow::Result<()> {
    berth_bgp::runner::run_blocking(args.config)?;
    Ok(())
}
