//! `cargo xtask`: the project's tasks, so the README's two commands need nothing but cargo.
//!
//! - `cargo xtask demo`: install what is missing, build, and run Berth's main job on the embedded
//!   ledger (`berth lab demo`).
//! - `cargo xtask test`: install the test world, run the fresh-machine check (`hack/fresh-check.sh`)
//!   and every check and test (what CI runs). `--install-only` runs only its install step.
//! - `cargo xtask bench ipam`: the IPAM benchmark, side by side with Debian's host-local.
//! - `cargo xtask bench kube`: 1000 pods over 10 simulated nodes through a real kube-apiserver
//!   and agents, Kubernetes ledger vs etcd ledger (`docs/bench-kube.md`).
//! - `cargo xtask bench l2`: L2 failover of `berth vip` side by side with keepalived (outage per
//!   failure kind, partition, CPU hog).
//! - `cargo xtask kube build`: build and cache kube-apiserver and kube-controller-manager v1.20.2
//!   from Debian's source package (`hack/kube-build.sh`; ~8 minutes once, then cached).

mod bench;
mod bench_kube;
mod bench_l2;

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

/// Remove from `cmd`'s environment what `cargo run` set for this xtask process.
///
/// Why: `cargo run` gives xtask `CARGO_MANIFEST_DIR`, `CARGO_MANIFEST_PATH` and `CARGO_PKG_*` of
/// the xtask package. A nested cargo inheriting them compares them with the values recorded by
/// build scripts that declare `rerun-if-env-changed` on them (ring's does, for
/// `CARGO_MANIFEST_DIR` and `CARGO_PKG_NAME`/`_VERSION_*`), so every switch between a plain
/// `cargo build`/`cargo test` and `cargo xtask` re-ran ring's build script and recompiled
/// everything above it (`CARGO_LOG=cargo::core::compiler::fingerprint=info` shows
/// `EnvVarChanged { name: "CARGO_MANIFEST_DIR", .. }`).
fn clear_cargo_run_env(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if k.starts_with("CARGO_PKG_")
            || matches!(
                k,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
            )
        {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// A cargo command for the workspace (see [`clear_cargo_run_env`]).
fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    clear_cargo_run_env(&mut c);
    c
}

/// The host's target triple (`rustc -vV`).
fn host_triple() -> anyhow::Result<String> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(&rustc)
        .arg("-vV")
        .output()
        .with_context(|| format!("running {rustc} -vV"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV printed no host triple")
}

/// Cargo's machine-readable output, with diagnostics still rendered for humans (on stderr).
const JSON: &str = "--message-format=json-render-diagnostics";

/// Build the release binaries (`berth`, `berth-ipam`) and return their directory.
///
/// On `*-linux-gnu` hosts they are statically linked against glibc: a CNI plugin is one process
/// per operation, and start-up is most of its CPU (docs/bench-ipam.md). Measured per `berth-ipam`
/// process: dynamic PIE ~1.0 ms CPU and ~145 page faults, static-pie ~0.7 ms and ~100, static
/// non-PIE ~0.5 ms and ~55 (no `ld.so`, no shared libraries, and no start-up relocation of
/// ~10,000 pointers, which dirtied ~45 pages). So:
///
/// - everything is built with `-C target-feature=+crt-static` and an explicit `--target`, which
///   keeps the flag off build scripts and proc-macros (they must stay dynamic) and puts the
///   binaries in `<target-dir>/<triple>/release`;
/// - `berth-ipam` alone is linked non-PIE (`cargo rustc ... -- -C relocation-model=static`, which
///   applies to its final crate and link only): a short-lived plugin, fed by the runtime, gives up
///   image ASLR as Debian's host-local (Go, non-PIE) does; the long-running `berth` daemon stays
///   static-pie.
///
/// Name lookups still work for the NSS sources static glibc has built in, `files` and `dns`;
/// other sources in /etc/nsswitch.conf (`myhostname`, `resolve`, `sss`, ...) are loaded at run
/// time and then need the glibc version of the build, else they are skipped. IP-literal endpoints
/// need no lookup. `BERTH_RELEASE_LINK=dynamic` builds the ordinary dynamic binaries instead
/// (`<target-dir>/release`).
pub fn release_bins() -> anyhow::Result<PathBuf> {
    let host = host_triple()?;
    let dynamic = std::env::var("BERTH_RELEASE_LINK").is_ok_and(|v| v == "dynamic");
    if !host.ends_with("-linux-gnu") || dynamic {
        let mut c = cargo();
        c.args(["build", "--release", "-p", "berth", "--bins", JSON]);
        return bin_dir(c);
    }
    // Appended to the caller's flags, in the encoded form that takes precedence over RUSTFLAGS
    // (so the static flag is never silently dropped); split as cargo splits RUSTFLAGS, so
    // `RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --target <host>` shares
    // these artifacts.
    let mut flags: Vec<String> = match std::env::var("CARGO_ENCODED_RUSTFLAGS") {
        Ok(f) => f
            .split('\x1f')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        Err(_) => std::env::var("RUSTFLAGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect(),
    };
    flags.extend(["-C".into(), "target-feature=+crt-static".into()]);
    let static_cargo = || {
        let mut c = cargo();
        c.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
        c.env_remove("RUSTFLAGS");
        c
    };
    // Two invocations, each with its own binary, so that neither undoes the other's link and a
    // second call builds nothing.
    let mut c = static_cargo();
    c.args(["build", "--release", "-p", "berth", "--bin", "berth"]);
    c.args(["--target", &host, JSON]);
    let berth_dir = bin_dir(c)?;
    let mut c = static_cargo();
    c.args(["rustc", "--release", "-p", "berth", "--bin", "berth-ipam"]);
    c.args([
        "--target",
        &host,
        JSON,
        "--",
        "-C",
        "relocation-model=static",
    ]);
    let dir = bin_dir(c)?;
    if dir != berth_dir {
        bail!(
            "berth in {} but berth-ipam in {}",
            berth_dir.display(),
            dir.display()
        );
    }
    Ok(dir)
}

/// Run a cargo build (given `--message-format json-render-diagnostics`) and return the directory
/// of the first executable it reports.
///
/// Why: the artifact messages name the executables wherever the target dir is
/// (CARGO_TARGET_DIR, build.target-dir, --target).
fn bin_dir(mut c: Command) -> anyhow::Result<PathBuf> {
    c.stdout(std::process::Stdio::piped());
    c.stderr(std::process::Stdio::inherit());
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!("{c:?} failed with {}", out.status);
    }
    let exe = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("{c:?} reported no executable"))?;
    Ok(exe
        .parent()
        .context("an executable without a directory")?
        .to_path_buf())
}

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
        Some("bench") if args.get(1).map(String::as_str) == Some("l2") => {
            bench_l2::run(&args[2..])
        }
        Some("bench") => bench::run(&args[1..]),
        Some("kube") if args.get(1).map(String::as_str) == Some("build") => kube_build(),
        _ => bail!("usage: cargo xtask test [--install-only [--kube-build]] | demo [--keep] | bench ipam [--ops N] | bench kube [--pods N] | bench l2 [--trials N] [--partition] [--hog MIN] | kube build"),
    }
}
