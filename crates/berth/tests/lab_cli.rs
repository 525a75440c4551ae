//! `berth lab up` then `berth lab down`, run as users run them (the static release `berth`),
//! leave the machine as it was: processes, namespaces, links, mounts, cgroups, iptables rules,
//! sysctls and files. `down` is safe to run twice, and after `up` was killed with SIGKILL.
//!
//! Other test runs share this machine, so "as it was" is checked for everything of this lab
//! (its prefix, state dir and cgroups) and, for what no test may touch (the root namespace's
//! links, iptables rules and machine-wide sysctls), in full.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the machine looks like, as far as a lab could change it.
#[derive(Debug, PartialEq, Eq)]
struct Machine {
    /// Processes whose command line, cgroup or network namespace names the lab.
    lab_processes: BTreeSet<String>,
    /// /run/netns entries with the lab's prefix.
    lab_namespaces: BTreeSet<String>,
    /// Mounts (root mount namespace) naming the lab's state dir or prefix.
    lab_mounts: BTreeSet<String>,
    /// Cgroup directories naming the lab.
    lab_cgroups: BTreeSet<String>,
    /// Directories a node's bind mounts need on the host.
    node_dirs: BTreeSet<String>,
    /// `ip -o link` of the root namespace (names only).
    root_links: BTreeSet<String>,
    /// `iptables-save` and `ip6tables-save` of the root namespace (rules, no counters).
    root_iptables: Vec<String>,
    /// Machine-wide sysctls kubelet, kube-proxy and the CNI plugins would set.
    sysctls: Vec<(String, String)>,
    /// Whether the state dir exists.
    state_dir: bool,
}

const SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
];

fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(berth_testbed::tool(cmd))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn snapshot(prefix: &str, state_dir: &Path) -> Machine {
    let sd = state_dir.display().to_string();
    let cg = format!("berth-{prefix}");
    let mut lab_processes = BTreeSet::new();
    let my_netns = std::fs::read_link("/proc/self/ns/net").ok();
    let lab_ns_inodes: BTreeSet<u64> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .filter_map(|e| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(e.path()).ok().map(|m| m.ino())
        })
        .collect();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let netns = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
        let in_lab_ns = netns.as_ref().is_some_and(|n| {
            n != my_netns.as_ref().unwrap_or(n) && {
                let s = n.to_string_lossy();
                s.trim_start_matches("net:[")
                    .trim_end_matches(']')
                    .parse::<u64>()
                    .is_ok_and(|i| lab_ns_inodes.contains(&i))
            }
        });
        if pid != std::process::id()
            && (cmdline.contains(&sd)
                || cmdline.contains(&format!("{prefix}-"))
                || cgroup.contains(&cg)
                || in_lab_ns)
        {
            lab_processes.insert(format!("{pid} {cmdline}"));
        }
    }
    let lab_namespaces = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect();
    let lab_mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&sd) || l.contains(&format!("{prefix}-")))
        .map(String::from)
        .collect();
    let mut lab_cgroups = BTreeSet::new();
    for h in berth_lab::cgroup::hierarchies().unwrap() {
        let mut stack = vec![h.mount.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let p = e.path();
                    if p.to_string_lossy().contains(&cg) {
                        lab_cgroups.insert(p.display().to_string());
                    }
                    stack.push(p);
                }
            }
        }
    }
    let node_dirs = berth_lab::node::NODE_DIRS
        .iter()
        .filter(|d| Path::new(d).exists())
        .map(|d| d.to_string())
        .collect();
    let root_links = sh("ip", &["-o", "link"])
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .collect();
    let mut root_iptables = Vec::new();
    for t in ["iptables-save", "ip6tables-save"] {
        root_iptables.extend(sh(t, &[]).lines().filter(|l| !l.starts_with('#')).map(|l| {
            // Chain lines carry packet counters ([0:0]); only the chain matters.
            if l.starts_with(':') {
                l.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
            } else {
                l.to_string()
            }
        }));
    }
    let sysctls = SYSCTLS
        .iter()
        .map(|k| {
            let v =
                std::fs::read_to_string(format!("/proc/sys/{k}")).unwrap_or_else(|_| "-".into());
            (k.to_string(), v.trim().to_string())
        })
        .collect();
    Machine {
        lab_processes,
        lab_namespaces,
        lab_mounts,
        lab_cgroups,
        node_dirs,
        root_links,
        root_iptables,
        sysctls,
        state_dir: state_dir.exists(),
    }
}

fn berth(args: &[&str]) -> (bool, String) {
    let bins = berth_testbed::release::release_bins_once().expect("static release binaries");
    let out = Command::new(bins.join("berth"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn lab_up_then_down_leaves_the_machine_as_it_was() {
    berth_testbed::require_root();
    berth_testbed::require_kube_binaries();
    berth_testbed::release::release_bins_once().expect("static release binaries");
    let prefix = berth_testbed::unique_name("cli");
    let state_dir: PathBuf = std::env::temp_dir().join(&prefix);
    let sd = state_dir.display().to_string();
    let before = snapshot(&prefix, &state_dir);
    assert!(before.lab_processes.is_empty() && before.lab_namespaces.is_empty());

    let t = Instant::now();
    let (ok, out) = berth(&[
        "lab",
        "up",
        "--nodes",
        "1",
        "--prefix",
        &prefix,
        "--state-dir",
        &sd,
    ]);
    if !ok {
        let _ = berth(&["lab", "down", "--state-dir", &sd]);
        panic!("berth lab up failed:\n{out}");
    }
    eprintln!("[timing] berth lab up --nodes 1: {:.1?}", t.elapsed());
    assert!(
        out.contains("the lab is up") && out.contains(&format!("{prefix}-node1")),
        "{out}"
    );
    // The lab really made what the comparison looks for (so the final check can fail).
    let during = snapshot(&prefix, &state_dir);
    assert!(
        during.lab_processes.len() >= 8,
        "{:?}",
        during.lab_processes
    );
    for ns in ["fabric", "cp", "router", "outside", "far", "node1"] {
        assert!(
            during.lab_namespaces.contains(&format!("{prefix}-{ns}")),
            "{ns}: {:?}",
            during.lab_namespaces
        );
    }
    assert!(!during.lab_mounts.is_empty() && !during.lab_cgroups.is_empty());
    assert!(state_dir.join("kubeconfig").exists());
    let (ok, status) = berth(&["lab", "status", "--state-dir", &sd]);
    assert!(
        ok && status.contains("complete") && status.contains(&format!("{prefix}-node1")),
        "{status}"
    );
    assert!(status.contains(" Ready "), "the node is Ready: {status}");

    let t = Instant::now();
    let (ok, out) = berth(&["lab", "down", "--state-dir", &sd]);
    assert!(ok, "berth lab down failed:\n{out}");
    eprintln!("[timing] berth lab down: {:.1?}", t.elapsed());
    let after = snapshot(&prefix, &state_dir);
    assert_eq!(before, after, "the machine is not as it was");
    let (ok, out) = berth(&["lab", "down", "--state-dir", &sd]);
    assert!(
        ok && out.contains("nothing to remove"),
        "second down:\n{out}"
    );
}

#[test]
fn lab_down_cleans_up_after_up_was_killed() {
    berth_testbed::require_root();
    berth_testbed::require_kube_binaries();
    let bins = berth_testbed::release::release_bins_once().expect("static release binaries");
    let prefix = berth_testbed::unique_name("kill");
    let state_dir: PathBuf = std::env::temp_dir().join(&prefix);
    let sd = state_dir.display().to_string();
    let before = snapshot(&prefix, &state_dir);
    let mut up = Command::new(bins.join("berth"))
        .args([
            "lab",
            "up",
            "--nodes",
            "1",
            "--prefix",
            &prefix,
            "--state-dir",
            &sd,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the node's kubelet runs (half way: Berth not deployed yet or deploying).
    let t = Instant::now();
    loop {
        let st = berth_lab::state::read(&state_dir).ok().flatten();
        if st.is_some_and(|s| s.processes.iter().any(|p| p.label.starts_with("kubelet@"))) {
            break;
        }
        assert!(
            up.try_wait().unwrap().is_none(),
            "berth lab up ended before it was killed"
        );
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "no kubelet after 300 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    up.kill().unwrap();
    up.wait().unwrap();
    let during = snapshot(&prefix, &state_dir);
    assert!(
        !during.lab_processes.is_empty(),
        "the killed up left its world running"
    );
    let (ok, out) = berth(&["lab", "down", "--state-dir", &sd]);
    assert!(ok, "berth lab down failed:\n{out}");
    assert_eq!(
        before,
        snapshot(&prefix, &state_dir),
        "the machine is not as it was"
    );
}
