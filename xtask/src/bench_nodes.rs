//! `cargo xtask bench nodes`: the lab of real nodes measured.
//!
//! - bring-up: `Lab::up` with 3 nodes and Berth deployed from deploy/overlays/lab, per phase;
//! - RSS per component (each recorded process) and per node (every process in the node's cgroup:
//!   containerd, kubelet, kube-proxy, shims, pods, Berth's agent);
//! - pod create → Running for 30 pods on one node, berth-ipam against Debian's host-local as the
//!   IPAM of the same bridge plugin, in the same world and run, alternating (B, H, B, H).

use anyhow::{bail, Context};
use berth_lab::{Deploy, Lab, LabConfig};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::release_bins;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The conflist of the host-local rounds: the same bridge plugin with host-local as the IPAM,
/// on a bridge of its own (`cni1`): the bridge plugin refuses a bridge that already holds
/// another subnet's gateway address, which `cni0` does after a berth-ipam round.
fn host_local_conflist() -> String {
    json!({
        "cniVersion": "1.0.0", "name": "hostlocal",
        "plugins": [
            {"type": "bridge", "bridge": "cni1", "isGateway": true, "ipMasq": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": "198.18.200.0/24"}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

/// Creates `n` pods on `node` at once and returns each one's create → Running time.
fn burst(lab: &Lab, ns: &str, node: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let items: Vec<_> = (0..n)
        .map(|i| {
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("p{i}"), "namespace": ns, "labels": {"app": "bench"}},
                "spec": {
                    "nodeName": node,
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "echo", "image": berth_lab::image::ECHO_IMAGE,
                                    "imagePullPolicy": "Never"}],
                },
            })
        })
        .collect();
    let f = crate::list_file(items)?;
    let t0 = Instant::now();
    lab.kubectl(&["create", "-f", &f.path().display().to_string()])?;
    let mut running: BTreeMap<String, Duration> = BTreeMap::new();
    while running.len() < n {
        if t0.elapsed() > Duration::from_secs(180) {
            bail!("only {} of {n} pods Running after 180 s", running.len());
        }
        let v = lab
            .request("GET", &format!("/api/v1/namespaces/{ns}/pods"), None)?
            .ok()?;
        for p in v["items"].as_array().into_iter().flatten() {
            if p["status"]["phase"] == "Running" {
                let name = p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                running.entry(name).or_insert_with(|| t0.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.kubectl(&[
        "delete",
        "pods",
        "-n",
        ns,
        "--all",
        "--wait=true",
        "--timeout=300s",
    ])?;
    let mut d: Vec<Duration> = running.into_values().collect();
    d.sort();
    Ok(d)
}

/// Runs the benchmark (`--nodes N`, `--pods N`).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut nodes = 3;
    let mut pods = 30;
    let mut i = 0;
    while i < args.len() {
        let v = args
            .get(i + 1)
            .with_context(|| format!("{} needs a value", args[i]))?;
        match args[i].as_str() {
            "--nodes" => nodes = v.parse().with_context(|| format!("--nodes {v}"))?,
            "--pods" => pods = v.parse().with_context(|| format!("--pods {v}"))?,
            other => bail!("bench nodes: unknown option {other} (--nodes N, --pods N)"),
        }
        i += 2;
    }
    let bins = release_bins()?;
    let prefix = berth_testbed::unique_name("bench");
    let cfg = LabConfig {
        state_dir: std::env::temp_dir().join(&prefix),
        prefix,
        nodes,
        bins,
        kube_bin: berth_testbed::kube_bin_dir(),
        detached: false,
        deploy: Deploy::Kustomize(crate::root().join("deploy/overlays/lab")),
        timeout: Duration::from_secs(600),
        keep_on_failure: false,
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "bench nodes: {nodes} nodes, {pods} pods per round; load at start {}",
        load.trim()
    );
    let t = Instant::now();
    let lab = Lab::up(cfg)?;
    let up = t.elapsed();
    println!("\n| bring-up phase | time |\n|---|---:|");
    for (what, d) in lab.timings() {
        println!("| {what} | {:.1} s |", d.as_secs_f64());
    }
    println!("| Lab::up, total | {:.1} s |", up.as_secs_f64());

    // RSS: recorded processes by component, and every process per node cgroup.
    std::thread::sleep(Duration::from_secs(10));
    let st = berth_lab::state::read(lab.state_dir())?.context("no lab state")?;
    let mut comp: BTreeMap<String, (u64, usize)> = BTreeMap::new();
    for p in st.processes.iter().filter(|p| berth_lab::state::alive(p)) {
        let name = match p.label.split_once('@') {
            Some((c, _)) => c.to_string(),
            None => comm(p.pid),
        };
        let e = comp.entry(name).or_default();
        e.0 += rss_kib(p.pid);
        e.1 += 1;
    }
    let mem = berth_lab::cgroup::hierarchies()?
        .into_iter()
        .find(|h| h.controllers.split(',').any(|c| c == "memory"))
        .context("no memory hierarchy")?;
    // Berth's own processes run in pods (the agent DaemonSet, the controller Deployment): found
    // by name and subcommand among every node's processes.
    for n in lab.nodes() {
        for pid in berth_lab::cgroup::pids_below(&mem.mount.join(n.cgroup.trim_start_matches('/')))
        {
            if comm(pid) != "berth" {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let sub = cmdline
                .split(|b| *b == 0)
                .nth(1)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .unwrap_or_default();
            let e = comp.entry(format!("berth {sub} (pod)")).or_default();
            e.0 += rss_kib(pid);
            e.1 += 1;
        }
    }
    println!("\n| component | processes | RSS total | RSS each |\n|---|---:|---:|---:|");
    for (c, (kib, n)) in &comp {
        println!(
            "| {c} | {n} | {:.1} MiB | {:.1} MiB |",
            *kib as f64 / 1024.0,
            *kib as f64 / 1024.0 / *n as f64
        );
    }
    println!("\n| node | processes | RSS (all in its cgroup) | of which pods and shims |\n|---|---:|---:|---:|");
    for n in lab.nodes() {
        let pids = berth_lab::cgroup::pids_below(&mem.mount.join(n.cgroup.trim_start_matches('/')));
        let sys = berth_lab::cgroup::pids_below(
            &mem.mount
                .join(n.cgroup.trim_start_matches('/'))
                .join("system"),
        );
        let total: u64 = pids.iter().map(|p| rss_kib(*p)).sum();
        let daemons: u64 = sys
            .iter()
            .filter(|p| matches!(comm(**p).as_str(), "containerd" | "kubelet" | "kube-proxy"))
            .map(|p| rss_kib(*p))
            .sum();
        println!(
            "| {} | {} | {:.1} MiB | {:.1} MiB |",
            n.name(),
            pids.len(),
            total as f64 / 1024.0,
            (total - daemons.min(total)) as f64 / 1024.0
        );
    }

    // Pods: berth-ipam vs host-local on node 1, alternating.
    let node = &lab.nodes()[0];
    let ns = "bench";
    lab.kubectl(&["create", "namespace", ns])?;
    lab.control_plane()
        .wait_default_service_account(ns, Duration::from_secs(60))?;
    let hl = node
        .spec
        .backing("/etc/cni/net.d")
        .join("00-hostlocal.conflist");
    let mut results: BTreeMap<&str, Vec<Vec<Duration>>> = BTreeMap::new();
    for round in 0..2 {
        for variant in ["berth-ipam", "host-local"] {
            if variant == "host-local" {
                std::fs::write(&hl, host_local_conflist())?;
            } else {
                let _ = std::fs::remove_file(&hl);
            }
            // containerd reloads its CNI configuration on a change of the directory.
            std::thread::sleep(Duration::from_secs(3));
            let d = burst(&lab, ns, node.name(), pods)?;
            println!(
                "round {round} {variant}: all {pods} Running after {:.2} s",
                d.last().copied().unwrap_or_default().as_secs_f64()
            );
            results.entry(variant).or_default().push(d);
        }
    }
    let _ = std::fs::remove_file(&hl);
    let q = |v: &[Duration], f: f64| v[((v.len() as f64 - 1.0) * f).round() as usize].as_secs_f64();
    let summary: BTreeMap<&str, (f64, f64, f64)> = results
        .iter()
        .map(|(k, rounds)| {
            let n = rounds.len() as f64;
            let p50 = rounds.iter().map(|r| q(r, 0.5)).sum::<f64>() / n;
            let p99 = rounds.iter().map(|r| q(r, 0.99)).sum::<f64>() / n;
            let all = rounds.iter().map(|r| q(r, 1.0)).sum::<f64>() / n;
            (*k, (p50, p99, all))
        })
        .collect();
    let base = summary["host-local"];
    println!(
        "\n| IPAM ({pods} pods, one node, mean of 2 rounds) | create→Running p50 | p99 | all Running | all × host-local |\n|---|---:|---:|---:|---:|"
    );
    for (k, (p50, p99, all)) in &summary {
        println!(
            "| {k} | {p50:.2} s | {p99:.2} s | {all:.2} s | {:.2} |",
            all / base.2
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load at end {}", load.trim());
    let t = Instant::now();
    let td = lab.down()?;
    println!(
        "teardown: {:.1} s, {} processes killed",
        t.elapsed().as_secs_f64(),
        td.killed
    );
    Ok(())
}
