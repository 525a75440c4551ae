//! The lab's cgroups (v1): one tree per lab, the same path in every hierarchy, nested under the
//! cgroup the caller runs in.
//!
//! Why: every process of a lab (daemons, containerd's shims, the pods) starts inside the lab's
//! tree, so `berth lab down` finds and stops all of them, even after `berth lab up` was killed;
//! and the kubelet's `cgroupRoot` must name one path that exists in every hierarchy.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The cgroup filesystem root. Why: all hierarchies are mounted below it.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A v1 hierarchy: where it is mounted, and the caller's cgroup path in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Mount point, e.g. `/sys/fs/cgroup/memory`.
    pub mount: PathBuf,
    /// Controllers (or `name=systemd`) as `/proc/self/cgroup` lists them.
    pub controllers: String,
}

/// Parses `/proc/self/mountinfo` text into the v1 cgroup hierarchies (mount point and the
/// super options that name the controllers).
///
/// Why: pure, so it is tested without a kernel; cgroup2 mounts are skipped (kubelet 1.20 runs
/// on cgroup v1).
pub fn parse_hierarchies(mountinfo: &str) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mut post = post.split_whitespace();
        if post.next() != Some("cgroup") {
            continue;
        }
        let Some(mount) = pre.split_whitespace().nth(4) else {
            continue;
        };
        let opts = post.nth(1).unwrap_or("");
        let controllers: Vec<&str> = opts
            .split(',')
            .filter(|o| {
                !matches!(
                    *o,
                    "rw" | "ro" | "relatime" | "noatime" | "nosuid" | "nodev" | "noexec"
                ) && !o.starts_with("release_agent")
                    && *o != "clone_children"
                    && *o != "xattr"
            })
            .collect();
        out.push(Hierarchy {
            mount: PathBuf::from(mount),
            controllers: controllers.join(","),
        });
    }
    out
}

/// Mount points of cgroup2 (in a hybrid layout, `/sys/fs/cgroup/unified`).
///
/// Why: runc and the kubelet also make the pods' cgroups there; teardown must remove them.
pub fn unified_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mount = pre.split_whitespace().nth(4)?;
            (post.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount))
        })
        .collect()
}

/// The caller's path in the hierarchy whose controller list contains `controller`, from
/// `/proc/self/cgroup` text (`ID:CONTROLLERS:PATH` lines).
pub fn parse_own_path(proc_cgroup: &str, controller: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|l| {
        let mut it = l.splitn(3, ':');
        let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
        ctrls
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })
}

/// The v1 hierarchies of this machine. Fails when there are none (a cgroup v2-only machine,
/// which kubelet 1.20 does not support).
pub fn hierarchies() -> Result<Vec<Hierarchy>> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let h = parse_hierarchies(&mi);
    if h.is_empty() {
        bail!(
            "no cgroup v1 hierarchy is mounted under {CGROUP_ROOT}: the lab's kubelet v1.20 needs \
             cgroup v1 (boot with systemd.unified_cgroup_hierarchy=0)"
        );
    }
    Ok(h)
}

/// The path the lab's tree nests under: the caller's cgroup in the memory hierarchy (or `/`).
///
/// Why: the lab stays inside whatever cgroup runs `berth lab up` (a session, a CI job), so that
/// cgroup's accounting and clean-up still cover it.
pub fn base_path() -> Result<String> {
    let pc = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    Ok(parse_own_path(&pc, "memory").unwrap_or_else(|| "/".into()))
}

/// Copies `cpuset.cpus` and `cpuset.mems` from the parent into a new cpuset cgroup.
///
/// Why: a v1 cpuset cgroup starts with no CPUs, and no task can join it until they are set.
fn init_cpuset(dir: &Path) -> Result<()> {
    let parent = dir.parent().context("a cgroup without a parent")?;
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let p = dir.join(f);
        if !p.exists() {
            continue;
        }
        let cur = std::fs::read_to_string(&p).unwrap_or_default();
        if !cur.trim().is_empty() {
            continue;
        }
        let v = std::fs::read_to_string(parent.join(f))
            .with_context(|| format!("reading {}", parent.join(f).display()))?;
        std::fs::write(&p, v.trim()).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Creates cgroup path `rel` (absolute within the hierarchy, like `/a/b`) in every hierarchy,
/// calling `record` with each directory before it is created (so a crash never leaks an
/// unrecorded one). Returns the `cgroup.procs` files of the leaf, one per hierarchy.
pub fn create(
    hs: &[Hierarchy],
    rel: &str,
    record: &mut dyn FnMut(&Path) -> Result<()>,
) -> Result<Vec<PathBuf>> {
    let mut procs = Vec::new();
    for h in hs {
        let mut dir = h.mount.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            dir.push(part);
            if !dir.exists() {
                record(&dir)?;
                // Two labs starting at once (parallel tests) both create the parents of their
                // cgroups where this process is in another hierarchy's cgroup than in the
                // memory one (`base_path`): the loser of that race finds it made.
                match std::fs::create_dir(&dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                        return Err(e)
                            .with_context(|| format!("creating cgroup {}", dir.display()));
                    }
                    _ => {}
                }
            }
            if h.controllers.split(',').any(|c| c == "cpuset") {
                init_cpuset(&dir)?;
            }
        }
        procs.push(dir.join("cgroup.procs"));
    }
    Ok(procs)
}

/// Every PID in the cgroup at `dir` and below (reads `cgroup.procs` recursively).
///
/// Why: the processes a lab must stop include those it never spawned itself (shims, pods).
pub fn pids_below(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(s) = std::fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(s.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Removes the cgroup at `dir` and every cgroup below it, deepest first. Cgroups that still
/// hold tasks are left (and reported in the error).
pub fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mut dirs = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
        dirs.push(d);
    }
    let mut failed = Vec::new();
    for d in dirs.iter().rev() {
        if let Err(e) = std::fs::remove_dir(d) {
            if e.kind() != std::io::ErrorKind::NotFound {
                failed.push(format!("{}: {e}", d.display()));
            }
        }
    }
    if !failed.is_empty() {
        bail!("could not remove cgroups: {}", failed.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn hierarchies_are_the_v1_cgroup_mounts() {
        let h = parse_hierarchies(MOUNTINFO);
        let got: Vec<(String, String)> = h
            .iter()
            .map(|h| (h.mount.display().to_string(), h.controllers.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("/sys/fs/cgroup/cpu".into(), "cpu".into()),
                ("/sys/fs/cgroup/cpuset".into(), "cpuset".into()),
                ("/sys/fs/cgroup/memory".into(), "memory".into()),
                ("/sys/fs/cgroup/systemd".into(), "name=systemd".into()),
            ]
        );
    }

    #[test]
    fn own_path_is_read_per_controller() {
        let pc = "9:name=systemd:/\n4:memory:/session/abc\n2:cpu,cpuacct:/x\n0::/\n";
        assert_eq!(
            parse_own_path(pc, "memory").as_deref(),
            Some("/session/abc")
        );
        assert_eq!(parse_own_path(pc, "cpuacct").as_deref(), Some("/x"));
        assert_eq!(parse_own_path(pc, "pids"), None);
    }

    #[test]
    fn labs_creating_the_same_parents_at_once_all_succeed() {
        // Parallel labs share the parents of their cgroups (`base_path` in another
        // hierarchy); each create must succeed however the calls interleave.
        let dir = tempfile::tempdir().unwrap();
        let hs = vec![Hierarchy {
            mount: dir.path().to_path_buf(),
            controllers: "cpu".into(),
        }];
        for round in 0..50 {
            let barrier = std::sync::Barrier::new(8);
            std::thread::scope(|s| {
                let joins: Vec<_> = (0..8)
                    .map(|i| {
                        let (hs, barrier) = (&hs, &barrier);
                        s.spawn(move || {
                            barrier.wait();
                            create(hs, &format!("/r{round}/shared/deeper/lab{i}"), &mut |_| {
                                Ok(())
                            })
                        })
                    })
                    .collect();
                for j in joins {
                    let procs = j.join().unwrap().unwrap();
                    assert_eq!(procs.len(), 1);
                }
            });
        }
    }
}
