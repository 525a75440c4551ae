//! `berth`: one binary for every long-running role and the operator CLI.
use clap::{Parser, Subcommand};

mod bgp;

/// Command line of the `berth` binary.
#[derive(Parser)]
#[command(name = "berth", version, about = "Addresses that stay put and addresses that reach the outside")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The roles and operator commands `berth` offers.
#[derive(Subcommand)]
enum Command {
    /// Placeholder until the roles land.
    Version,
    /// Run a BGP speaker from a TOML file (see crates/bgp/README.md).
    Bgp(bgp::BgpArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("berth {}", env!("CARGO_PKG_VERSION")),
        Command::Bgp(args) => bgp::run(args)?,
    }
    Ok(())
}
