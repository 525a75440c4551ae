//! deploy/ as compiled into this binary: the kustomize base and the lab's overlay.
//!
//! Why: `berth lab up` must apply exactly what users apply, and an installed `berth` has no
//! checkout next to it; the files are written under the lab's state dir and applied with
//! `kubectl apply -k`. A test checks that these are the repository's files.

use std::path::Path;

use anyhow::{Context, Result};

/// deploy/'s files that `kubectl apply -k deploy/overlays/lab` reads: (path below deploy/,
/// contents).
pub const FILES: &[(&str, &str)] = &[
    (
        "base/kustomization.yaml",
        include_str!("../../../deploy/base/kustomization.yaml"),
    ),
    (
        "base/crds.yaml",
        include_str!("../../../deploy/base/crds.yaml"),
    ),
    (
        "base/berth.yaml",
        include_str!("../../../deploy/base/berth.yaml"),
    ),
    (
        "base/10-berth.conflist",
        include_str!("../../../deploy/base/10-berth.conflist"),
    ),
    (
        "overlays/lab/kustomization.yaml",
        include_str!("../../../deploy/overlays/lab/kustomization.yaml"),
    ),
    (
        "overlays/lab/10-berth.conflist",
        include_str!("../../../deploy/overlays/lab/10-berth.conflist"),
    ),
    (
        "overlays/lab/pull-never.yaml",
        include_str!("../../../deploy/overlays/lab/pull-never.yaml"),
    ),
];

/// Writes [`FILES`] below `dir` (deploy/'s layout).
pub fn write_tree(dir: &Path) -> Result<()> {
    for (rel, text) in FILES {
        let p = dir.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Every file kustomize reads for the lab overlay is embedded (a new one must be added).
    #[test]
    fn embedded_tree_is_complete() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
        let mut on_disk = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    on_disk.push(p.strip_prefix(&root).unwrap().display().to_string());
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = super::FILES.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(
            on_disk, embedded,
            "deploy/ and crates/lab/src/deploy.rs differ"
        );
    }
}
