//! `cargo xtask`: the project's tasks, so the README's two commands need nothing but cargo.
//!
//! - `cargo xtask demo`: install what is missing, build, and run Berth's main job on the embedded
//!   ledger (`berth lab demo`).
//! - `cargo xtask test`: install the test world, run the fresh-machine check (`hack/fresh-check.sh`)
//!   and every check and test (what CI runs). `--install-only` runs only its install step.
//! - `cargo xtask bench ipam`: the IPAM benchmark, side by side with Debian's host-local.
//! - `cargo xtask bench kube`: 1000 pods over 10 simulated nodes through a real kube-apiserver
//!   and agents, Kubernetes ledger vs etcd ledger (`docs/bench-kube.md`).
//! - `cargo xtask bench services`: 1000 LoadBalancer Services through a real kube-apiserver and
//!   `berth controller`, and controller restarts holding 1000 and 10,000 addresses.
//! - `cargo xtask bench nodes`: the lab of real nodes: bring-up time, RSS per node and component,
//!   30 pods create → Running with berth-ipam vs host-local.
//! - `cargo xtask bench l2`: L2 failover of `berth vip` side by side with keepalived (outage per
//!   failure kind, partition, CPU hog).
//! - `cargo xtask release`: build the static release binaries and print their directory.
//! - `cargo xtask kube build`: build and cache kube-apiserver and kube-controller-manager v1.20.2
//!   from Debian's source package (`hack/kube-build.sh`; ~8 minutes once, then cached).

mod bench;
mod bench_bgp;
mod bench_kube;
mod bench_l2;
mod bench_nodes;
mod bench_services;

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

/// `items` as a `v1` List in a temporary file, for one `kubectl create -f` of all of them.
fn list_file(items: Vec<serde_json::Value>) -> anyhow::Result<tempfile::NamedTempFile> {
    let f = tempfile::NamedTempFile::new()?;
    std::fs::write(
        f.path(),
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    )?;
    Ok(f)
}

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

/// Builds (or finds cached) the Kubernetes control-plane binaries the tests start.
///
/// Why: no registry ships kube-apiserver; `hack/kube-build.sh` builds it from Debian's source
/// package once and returns at once when the cache is complete.
fn kube_build() -> anyhow::Result<()> {
    sh(Command::new("bash").arg(root().join("hack/kube-build.sh")))
}

/// The fresh-machine check (`hack/fresh-check.sh`): the quick start on a minimal Debian root.
///
/// Why: this machine has packages installed by hand; a user's does not. `BERTH_FRESH_CHECK=0`
/// skips it for a quick local run; CI never sets it.
fn fresh_check() -> anyhow::Result<()> {
    if std::env::var("BERTH_FRESH_CHECK").is_ok_and(|v| v == "0") {
        eprintln!("xtask: BERTH_FRESH_CHECK=0: the fresh-machine check is skipped");
        return Ok(());
    }
    sh(Command::new("bash").arg(root().join("hack/fresh-check.sh")))
}

pub use berth_testbed::release::{clear_cargo_run_env, release_bins};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") if args.get(1).map(String::as_str) == Some("--install-only") => {
            // The test command's install step alone (the fresh-machine check runs it): the test
            // world's packages, and the Kubernetes build's tools and source (`--kube-build`: the
            // build itself too).
            install_deps()?;
            let mut c = Command::new("bash");
            c.arg(root().join("hack/kube-build.sh"));
            if args.get(2).map(String::as_str) != Some("--kube-build") {
                c.arg("--prepare");
            }
            sh(&mut c)
        }
        Some("test") => {
            let t0 = std::time::Instant::now();
            install_deps()?;
            fresh_check()?;
            kube_build()?;
            // hack/test.sh runs under a budget (default 85 min, below CI's 90); the install and
            // a cold Kubernetes build (~9 min) count against it too.
            let budget: u64 = std::env::var("BERTH_CI_BUDGET_SECS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(5100);
            let left = budget.saturating_sub(t0.elapsed().as_secs());
            // hack/test.sh runs cargo fmt/clippy/build/test.
            sh(clear_cargo_run_env(&mut Command::new("bash"))
                .arg(root().join("hack/test.sh"))
                .env("BERTH_CI_BUDGET_SECS", left.to_string()))
        }
        Some("demo") => {
            install_deps()?;
            let bins = release_bins()?;
            sh(Command::new(bins.join("berth"))
                .args(["lab", "demo"])
                .args(&args[1..]))
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("kube") => {
            bench_kube::run(&args[2..])
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("services") => {
            bench_services::run(&args[2..])
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("nodes") => {
            install_deps()?;
            kube_build()?;
            bench_nodes::run(&args[2..])
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("bgp") => {
            install_deps()?;
            kube_build()?;
            bench_bgp::run(&args[2..])
        }
        Some("bench") if args.get(1).map(String::as_str) == Some("l2") => {
            bench_l2::run(&args[2..])
        }
        Some("bench") => bench::run(&args[1..]),
        Some("kube") if args.get(1).map(String::as_str) == Some("build") => kube_build(),
        Some("release") => {
            println!("{}", release_bins()?.display());
            Ok(())
        }
        _ => bail!("usage: cargo xtask test [--install-only [--kube-build]] | demo [--keep] | bench ipam [--ops N] | bench kube [--pods N] | bench services [--services N] [--large N] | bench nodes | bench bgp [--services N] [--burst N] | bench l2 [--trials N] [--partition] [--hog MIN] | kube build | release"),
    }
}
