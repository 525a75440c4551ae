//! `berth`: one binary for every long-running role and the operator CLI.
use clap::{Parser, Subcommand};

/// Command line of the `berth` binary.
#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Addresses that stay put and addresses that reach the outside"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The roles and operator commands `berth` offers.
#[derive(Subcommand)]
enum Command {
    /// Placeholder until the roles land.
    Version,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("berth {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}
