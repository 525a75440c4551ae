//! `berth install-cni`: what Berth's DaemonSet runs as its init container on every node.
//!
//! Why: the node's runtime finds CNI plugins in a directory and network configurations in
//! another (`/opt/cni/bin`, `/etc/cni/net.d`); a CNI project's DaemonSet puts them there, as
//! Calico's and Cilium's do. The image has no shell and no `cp`, so `berth` does it: it checks
//! the conflist first (a bad pool never reaches the node), then copies `berth-ipam` and its
//! direct path `berth-ipam-direct` (for ledgers the plugin opens itself when no agent answers)
//! and writes the conflist, each through a temporary file renamed into place, so the runtime never reads a
//! half-written plugin or configuration.

use anyhow::{bail, Context};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Options of `berth install-cni`.
#[derive(Args, Debug)]
pub struct InstallCniArgs {
    /// The network configuration list to install (from the `berth-cni` ConfigMap).
    #[arg(long)]
    pub conflist: PathBuf,
    /// The node's CNI plugin directory (a hostPath mount).
    #[arg(long, default_value = "/host/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The node's CNI configuration directory (a hostPath mount).
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The plugin to copy (default: `berth-ipam` next to this binary); `berth-ipam-direct` is
    /// copied from beside it.
    #[arg(long)]
    pub plugin: Option<PathBuf>,
}

/// Checks a conflist's text: JSON with `name`, `cniVersion` and `plugins`, of which exactly the
/// entries whose `ipam.type` is `berth-ipam` or `kube-ipam` parse as berth-ipam configuration
/// (as the runtime hands each plugin its entry with the list's name and version). Returns the
/// number of such entries (at least one).
pub fn check_conflist(text: &str, what: &str) -> anyhow::Result<usize> {
    let list: serde_json::Value = serde_json::from_str(text)
        .with_context(|| format!("{what} is not JSON: fix the berth-cni ConfigMap"))?;
    let name = list["name"]
        .as_str()
        .with_context(|| format!("{what}: `name` (a string) is missing"))?;
    let version = list["cniVersion"]
        .as_str()
        .with_context(|| format!("{what}: `cniVersion` (a string) is missing"))?;
    let plugins = list["plugins"]
        .as_array()
        .with_context(|| format!("{what}: `plugins` (a list) is missing"))?;
    let mut n = 0;
    for (i, p) in plugins.iter().enumerate() {
        let ty = p["ipam"]["type"].as_str().unwrap_or_default();
        if ty != "berth-ipam" && ty != "kube-ipam" {
            continue;
        }
        let mut conf = p.clone();
        conf["name"] = name.into();
        conf["cniVersion"] = version.into();
        berth_cni::parse_config(conf.to_string().as_bytes()).map_err(|e| {
            anyhow::anyhow!(
                "{what}: plugins[{i}] ({}): {e}",
                p["type"].as_str().unwrap_or("?")
            )
        })?;
        n += 1;
    }
    if n == 0 {
        bail!("{what}: no plugin uses berth-ipam (`\"ipam\": {{\"type\": \"berth-ipam\", …}}`)");
    }
    Ok(n)
}

/// Writes `data` to `dir/name` through a temporary file in `dir`, fsynced and renamed.
fn install(dir: &Path, name: &str, data: &[u8], mode: u32) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let dst = dir.join(name);
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.set_permissions(std::fs::Permissions::from_mode(mode)))
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, &dst).with_context(|| format!("renaming into {}", dst.display()))?;
    Ok(dst)
}

/// Runs `berth install-cni`.
pub fn run(a: InstallCniArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.conflist)
        .with_context(|| format!("reading {}", a.conflist.display()))?;
    check_conflist(&text, &a.conflist.display().to_string())?;
    let plugin = match a.plugin {
        Some(p) => p,
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("berth-ipam"),
    };
    // The direct path first: a runtime that finds the new plugin finds its direct path too.
    let direct = plugin.with_file_name(berth_cni::plugin::DIRECT_PROGRAM);
    for (from, name) in [
        (&direct, berth_cni::plugin::DIRECT_PROGRAM),
        (&plugin, "berth-ipam"),
    ] {
        let data = std::fs::read(from).with_context(|| {
            format!(
                "reading {}: the image must hold berth-ipam and berth-ipam-direct side by side",
                from.display()
            )
        })?;
        let p = install(&a.cni_bin_dir, name, &data, 0o755)?;
        println!("installed {} ({} bytes)", p.display(), data.len());
    }
    let name = a
        .conflist
        .file_name()
        .and_then(|n| n.to_str())
        .context("--conflist has no file name")?;
    let c = install(&a.cni_conf_dir, name, text.as_bytes(), 0o644)?;
    println!("installed {}", c.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_conflists_pass_and_bad_ones_are_named() {
        for (what, text) in [
            (
                "base",
                include_str!("../../../deploy/base/10-berth.conflist"),
            ),
            (
                "lab",
                include_str!("../../../deploy/overlays/lab/10-berth.conflist"),
            ),
        ] {
            assert_eq!(check_conflist(text, what).unwrap(), 1, "{what}");
        }
        let e = check_conflist("{", "x").unwrap_err();
        assert!(format!("{e:#}").contains("not JSON"));
        let e = check_conflist(
            r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
            "x",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("no plugin uses berth-ipam"));
        let bad = r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"bridge",
            "ipam":{"type":"berth-ipam","subnet":"198.18.0.0/24","rangeStart":"198.19.0.1"}}]}"#;
        let e = format!("{:#}", check_conflist(bad, "x").unwrap_err());
        assert!(e.contains("plugins[0]") && e.contains("rangeStart"), "{e}");
    }

    #[test]
    fn install_replaces_atomically() {
        let d = tempfile::tempdir().unwrap();
        install(d.path(), "f", b"one", 0o644).unwrap();
        install(d.path(), "f", b"two", 0o755).unwrap();
        assert_eq!(std::fs::read(d.path().join("f")).unwrap(), b"two");
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left");
    }
}
