//! `cargo xtask`: the project's tasks, so the README's two commands need nothing but cargo.
//!
//! - `cargo xtask demo`: install what is missing, build, and run Berth's main job on the embedded
//!   ledger (`berth lab demo`).
//! - `cargo xtask test`: install the test world and run every check and test (what CI runs).
//! - `cargo xtask bench ipam`: the IPAM benchmark, side by side with Debian's host-local.

mod bench;

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn sh(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn install_deps() -> anyhow::Result<()> {
    sh(Command::new("bash").arg(root().join("hack/install-deps.sh")))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Build the release binaries and return their directory.
pub fn release_bins() -> anyhow::Result<PathBuf> {
    sh(cargo().args(["build", "--release", "-p", "berth", "--bins"]))?;
    Ok(root().join("target/release"))
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => {
            install_deps()?;
            sh(Command::new("bash").arg(root().join("hack/test.sh")))
        }
        Some("demo") => {
            install_deps()?;
            let bins = release_bins()?;
            sh(Command::new(bins.join("berth"))
                .args(["lab", "demo"])
                .args(&args[1..]))
        }
        Some("bench") => bench::run(&args[1..]),
        _ => bail!("usage: cargo xtask test | demo [--keep] | bench ipam [--ops N]"),
    }
}
