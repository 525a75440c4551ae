//! What a lab made, recorded as it is made, and the teardown that undoes it from that record.
//!
//! Why: `berth lab down` runs in another process than `berth lab up`, possibly after `up` was
//! killed with `kill -9` half way. Every namespace, cgroup, mount, host directory and process is
//! written to `state.json` in the lab's state directory before (or, for processes, right after)
//! it is made, so teardown removes exactly what the lab made, and is safe to run twice.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::util::tool;

/// The state file's name inside a lab's state directory.
pub const STATE_FILE: &str = "state.json";

/// A process the lab started: PID and the start time the kernel gave it.
///
/// Why: a PID alone may have been reused by the time `berth lab down` runs; the start time
/// (field 22 of `/proc/PID/stat`) tells whether it is still our process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcRecord {
    /// What it is (`kubelet@lab-node1`).
    pub label: String,
    /// Its PID.
    pub pid: u32,
    /// Its start time in clock ticks since boot.
    pub start_time: u64,
}

/// Everything a lab made. Why: the contract between `up`, `down` and `status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LabState {
    /// The name prefix (`lab` for `berth lab up`).
    pub prefix: String,
    /// The process that built the lab. Why: `status` and the sweep of dead test labs.
    pub owner_pid: u32,
    /// Network namespaces (names under /run/netns).
    pub namespaces: Vec<String>,
    /// Files that a persistent mount namespace is bind-mounted on.
    pub mount_namespaces: Vec<PathBuf>,
    /// Directories created on the host (mount points of the nodes' bind mounts).
    pub host_dirs: Vec<PathBuf>,
    /// Cgroup directories created, in order of creation.
    pub cgroups: Vec<PathBuf>,
    /// Cgroup directories created above the lab's own root, shared with other labs: removed
    /// when empty, never scanned for processes. Why: one lab's teardown must not kill
    /// another's processes.
    #[serde(default)]
    pub cgroup_parents: Vec<PathBuf>,
    /// Processes started.
    pub processes: Vec<ProcRecord>,
    /// Free-form facts for `status` (nodes, addresses, kubeconfig).
    #[serde(default)]
    pub info: serde_json::Map<String, serde_json::Value>,
    /// Set once `up` finished. Why: `status` tells a complete lab from a broken one.
    #[serde(default)]
    pub complete: bool,
}

/// The start time of `pid` (field 22 of `/proc/PID/stat`), if it exists and has not exited.
pub fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let after = &s[s.rfind(')')? + 1..];
    let mut f = after.split_whitespace();
    // Field 3 is the state: a zombie has exited (only its parent's wait is missing).
    if matches!(f.next()?, "Z" | "X") {
        return None;
    }
    f.nth(18)?.parse().ok()
}

/// Writes the state as it grows. Why: the record must be on disk before the next step runs.
#[derive(Debug)]
pub struct Recorder {
    path: PathBuf,
    state: Mutex<LabState>,
}

impl Recorder {
    /// Starts a record in `dir` (created). Fails if `dir` already holds a lab's state.
    ///
    /// Why: two labs must never share a state directory; the old one must be torn down first.
    pub fn create(dir: &Path, prefix: &str) -> Result<Recorder> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(STATE_FILE);
        if path.exists() {
            bail!(
                "{} exists: a lab already runs from {} (remove it with `berth lab down`)",
                path.display(),
                dir.display()
            );
        }
        let r = Recorder {
            path,
            state: Mutex::new(LabState {
                prefix: prefix.to_string(),
                owner_pid: std::process::id(),
                ..LabState::default()
            }),
        };
        r.save()?;
        Ok(r)
    }

    fn save(&self) -> Result<()> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&*st)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Changes the state with `f` and writes it.
    pub fn update(&self, f: impl FnOnce(&mut LabState)) -> Result<()> {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.save()
    }

    /// Records a started process by PID.
    pub fn process(&self, label: &str, pid: u32) -> Result<()> {
        let start_time = start_time(pid).unwrap_or(0);
        self.update(|s| {
            s.processes.push(ProcRecord {
                label: label.to_string(),
                pid,
                start_time,
            })
        })
    }

    /// A copy of the state so far.
    pub fn snapshot(&self) -> LabState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Reads the state of the lab in `dir`; `None` when there is none.
pub fn read(dir: &Path) -> Result<Option<LabState>> {
    let p = dir.join(STATE_FILE);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
            format!(
                "{} is not a lab state file; remove what it names by hand",
                p.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// Whether a recorded process still runs as the same process (PID and start time match).
pub fn alive(p: &ProcRecord) -> bool {
    start_time(p.pid).is_some_and(|t| t == p.start_time)
}

/// What teardown did. Why: `berth lab down` prints it; tests assert it.
#[derive(Debug, Default)]
pub struct Teardown {
    /// Processes killed.
    pub killed: usize,
    /// Problems that left something behind (named).
    pub leftovers: Vec<String>,
}

fn kill(pid: u32, group: bool) {
    // SAFETY: kill(2) on a PID we just checked is ours (recorded start time or our cgroup).
    unsafe {
        if group {
            libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
        }
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Removes everything the lab in `dir` made, then `dir` itself. Safe to run twice, and on a
/// lab whose `up` was killed half way.
///
/// Order: processes (recorded ones, then all in the lab's cgroups, until none is left),
/// mount namespaces, network namespaces (their links go with them), cgroups, host directories,
/// the state directory.
pub fn teardown(dir: &Path) -> Result<Teardown> {
    let mut out = Teardown::default();
    let Some(st) = read(dir)? else {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        return Ok(out);
    };
    // Processes. The lab's cgroup roots are the first directory it created per hierarchy
    // below which everything else lies; scanning every recorded dir covers them all.
    let t = Instant::now();
    let me = std::process::id();
    let mut signalled = std::collections::BTreeSet::new();
    loop {
        let mut pids: Vec<(u32, bool)> = st
            .processes
            .iter()
            .filter(|p| alive(p))
            .map(|p| (p.pid, true))
            .collect();
        for c in &st.cgroups {
            pids.extend(crate::cgroup::pids_below(c).into_iter().map(|p| (p, false)));
        }
        pids.retain(|(p, _)| *p != me);
        pids.sort_unstable();
        pids.dedup_by_key(|(p, _)| *p);
        if pids.is_empty() {
            break;
        }
        if t.elapsed() > Duration::from_secs(30) {
            out.leftovers.push(format!(
                "processes still alive after 30 s: {:?}",
                pids.iter().map(|(p, _)| p).collect::<Vec<_>>()
            ));
            break;
        }
        for (p, group) in &pids {
            kill(*p, *group);
            signalled.insert(*p);
            out.killed += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // A killed task leaves its cgroup before its parent (often init, for the lab's detached
    // daemons) has reaped it: wait, bounded, until each is gone from /proc, reaping our own
    // children, so `down` returns when the machine is as it was.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        signalled.retain(|p| {
            // SAFETY: waitpid with WNOHANG on one PID; ECHILD when it is not our child.
            unsafe { libc::waitpid(*p as libc::pid_t, std::ptr::null_mut(), libc::WNOHANG) };
            Path::new("/proc").join(p.to_string()).exists()
        });
        if signalled.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for m in st.mount_namespaces.iter().rev() {
        let c = std::ffi::CString::new(m.as_os_str().as_encoded_bytes())?;
        // SAFETY: umount2 on a path string we own.
        let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        let err = std::io::Error::last_os_error();
        if r != 0 && m.exists() && err.raw_os_error() != Some(libc::EINVAL) {
            out.leftovers.push(format!("umount {}: {err}", m.display()));
        }
        let _ = std::fs::remove_file(m);
    }
    for ns in st.namespaces.iter().rev() {
        if !Path::new("/run/netns").join(ns).exists() {
            continue;
        }
        let o = Command::new(tool("ip"))
            .args(["netns", "del", ns])
            .stdin(Stdio::null())
            .output()?;
        if !o.status.success() {
            out.leftovers.push(format!(
                "ip netns del {ns}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
    }
    // Cgroups: a killed task leaves its cgroup a moment after the signal.
    for c in st.cgroups.iter().rev() {
        let t = Instant::now();
        loop {
            match crate::cgroup::remove_tree(c) {
                Ok(()) => break,
                Err(e) if t.elapsed() > Duration::from_secs(10) => {
                    out.leftovers.push(format!("{e:#}"));
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
    for d in st.cgroup_parents.iter().rev() {
        // Busy (another lab's cgroups below it) or already gone: left to whoever is last.
        let _ = std::fs::remove_dir(d);
    }
    for d in st.host_dirs.iter().rev() {
        match std::fs::remove_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => out.leftovers.push(format!("rmdir {}: {e}", d.display())),
        }
    }
    if out.leftovers.is_empty() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_read() {
        let me = std::process::id();
        let t = start_time(me).unwrap();
        assert!(alive(&ProcRecord {
            label: "me".into(),
            pid: me,
            start_time: t
        }));
        assert!(!alive(&ProcRecord {
            label: "me".into(),
            pid: me,
            start_time: t + 1
        }));
    }

    #[test]
    fn record_survives_and_teardown_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("lab");
        let r = Recorder::create(&dir, "t").unwrap();
        assert!(
            Recorder::create(&dir, "t").is_err(),
            "a second lab in one dir"
        );
        let hd = d.path().join("made-on-host");
        std::fs::create_dir(&hd).unwrap();
        r.update(|s| s.host_dirs.push(hd.clone())).unwrap();
        // A child of ours that teardown must kill (recorded with its start time).
        let mut child = Command::new("sleep").arg("600").spawn().unwrap();
        r.process("sleep", child.id()).unwrap();
        drop(r);
        let st = read(&dir).unwrap().unwrap();
        assert_eq!(st.processes.len(), 1);
        let td = teardown(&dir).unwrap();
        assert!(td.leftovers.is_empty(), "{:?}", td.leftovers);
        assert!(td.killed >= 1);
        // Teardown reaps its own children (waitpid) while it waits for them to
        // go, so the child is either reaped already or waits to be, killed.
        match child.try_wait() {
            Ok(Some(status)) => assert!(status.code().is_none(), "killed by a signal: {status}"),
            Ok(None) => panic!("the child still runs after teardown"),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ECHILD), "{e}"),
        }
        assert!(
            !std::path::Path::new(&format!("/proc/{}", child.id())).exists(),
            "the child is gone"
        );
        assert!(!hd.exists() && !dir.exists());
        let td = teardown(&dir).unwrap();
        assert_eq!(td.killed, 0);
    }
}
