//! The static release binaries (`berth`, `berth-ipam`, `berth-ipam-direct`): how `cargo xtask` builds them, shared
//! with the tests that need them.
//!
//! Why: the lab's images hold nothing but these binaries, so the tests on real nodes need the
//! static build too, made exactly as `cargo xtask demo` and the benchmarks make it (one place,
//! so neither build undoes the other's link).

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// [`release_bins`] once per process. Why: every test of a binary shares one build.
pub fn release_bins_once() -> anyhow::Result<PathBuf> {
    static DIR: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut g = DIR.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = g.as_ref() {
        return Ok(d.clone());
    }
    let d = release_bins()?;
    *g = Some(d.clone());
    Ok(d)
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
pub fn clear_cargo_run_env(cmd: &mut Command) -> &mut Command {
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
    c.current_dir(workspace_root());
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

/// Build the release binaries (`berth`, `berth-ipam`, `berth-ipam-direct`) and return their
/// directory.
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
///   image ASLR as Debian's host-local (Go, non-PIE) does; the long-running `berth` daemon and
///   `berth-ipam-direct` (which opens network connections to a ledger) stay static-pie.
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
    c.args(["--bin", "berth-ipam-direct", "--target", &host, JSON]);
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
