//! `cargo xtask`: the project's tasks, so the README's two commands need nothing but cargo.
//!
//! - `cargo xtask demo`: install what is missing, build, and run Berth's main job on the embedded
//!   ledger (`berth lab demo`).
//! - `cargo xtask test`: install the test world and run every check and test (what CI runs).
//! - `cargo xtask bench ipam`: the IPAM benchmark, side by side with Debian's host-local.
//! - `cargo xtask kube build`: build and cache kube-apiserver and kube-controller-manager v1.20.2
//!   from Debian's source package (`hack/kube-build.sh`; ~8 minutes once, then cached).

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

/// Builds (or finds cached) the Kubernetes control-plane binaries the tests start.
///
/// Why: no registry ships kube-apiserver; `hack/kube-build.sh` builds it from Debian's source
/// package once and returns at once when the cache is complete.
fn kube_build() -> anyhow::Result<()> {
    sh(Command::new("bash").arg(root().join("hack/kube-build.sh")))
}

/// A cargo command for the workspace, cleared of what `cargo run` set for this xtask process.
///
/// Why: `cargo run` gives xtask `CARGO_MANIFEST_DIR`, `CARGO_MANIFEST_PATH` and `CARGO_PKG_*` of
/// the xtask package. A nested cargo inheriting them compares them with the values recorded by
/// build scripts that declare `rerun-if-env-changed` on them (ring's does, for
/// `CARGO_MANIFEST_DIR` and `CARGO_PKG_NAME`/`_VERSION_*`), so every switch between a plain
/// `cargo build --release` and `cargo xtask` re-ran ring's build script and recompiled
/// everything above it (`CARGO_LOG=cargo::core::compiler::fingerprint=info` shows
/// `EnvVarChanged { name: "CARGO_MANIFEST_DIR", .. }`).
fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
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
            c.env_remove(k);
        }
    }
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

/// Build the release binaries (`berth`, `berth-ipam`) and return their directory.
///
/// On `*-linux-gnu` hosts they are statically linked against glibc (static-pie): a CNI plugin
/// is one process per operation, and a static `berth-ipam` starts in ~0.5 ms of CPU instead of
/// ~0.85 ms (no `ld.so`, no shared-library relocation; see docs/bench-ipam.md). The explicit
/// `--target` keeps the flag off build scripts and proc-macros (they must stay dynamic), and puts
/// the binaries in `<target-dir>/<triple>/release`. Name lookups still work for the `files` and
/// `dns` sources, which static glibc has built in; other NSS sources (`myhostname`, `resolve`,
/// `sss`, ...) are loaded at run time and need the build's glibc version. `BERTH_RELEASE_LINK=dynamic`
/// builds the ordinary dynamic binaries instead (`<target-dir>/release`).
pub fn release_bins() -> anyhow::Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "--release", "-p", "berth", "--bins"]);
    c.args(["--message-format", "json-render-diagnostics"]);
    let host = host_triple()?;
    let dynamic = std::env::var("BERTH_RELEASE_LINK").is_ok_and(|v| v == "dynamic");
    if host.ends_with("-linux-gnu") && !dynamic {
        c.args(["--target", &host]);
        // Appended to the caller's flags, in the encoded form that takes precedence over
        // RUSTFLAGS (so the static flag is never silently dropped); split as cargo splits
        // RUSTFLAGS, so `RUSTFLAGS="-C target-feature=+crt-static" cargo build --release
        // --target <host>` shares these artifacts.
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
        c.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
        c.env_remove("RUSTFLAGS");
    }
    c.stdout(std::process::Stdio::piped());
    c.stderr(std::process::Stdio::inherit());
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        bail!("{c:?} failed with {}", out.status);
    }
    // The artifact messages name the executables wherever the target dir is
    // (CARGO_TARGET_DIR, build.target-dir, --target).
    let ipam = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "berth-ipam")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo reported no berth-ipam executable")?;
    let dir = ipam.parent().context("berth-ipam has no directory")?;
    Ok(dir.to_path_buf())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => {
            let t0 = std::time::Instant::now();
            install_deps()?;
            kube_build()?;
            // hack/test.sh runs under a budget (default 85 min, below CI's 90); the install and
            // a cold Kubernetes build (~9 min) count against it too.
            let budget: u64 = std::env::var("BERTH_CI_BUDGET_SECS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(5100);
            let left = budget.saturating_sub(t0.elapsed().as_secs());
            sh(Command::new("bash")
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
        Some("bench") => bench::run(&args[1..]),
        Some("kube") if args.get(1).map(String::as_str) == Some("build") => kube_build(),
        _ => bail!("usage: cargo xtask test | demo [--keep] | bench ipam [--ops N] | kube build"),
    }
}
