//! `cargo xtask bench kube`: pods through a real Kubernetes control plane and real agents.
//!
//! What it measures (the target: 1000 pods over 10 simulated nodes, IPAM total < 5 s,
//! 0 failures, Kubernetes ledger vs etcd ledger):
//!
//! 1. A control plane (kube-apiserver v1.20.2 + its own etcd, from the testbed; no
//!    controller-manager, nothing here needs controllers), Berth's CRDs, `--nodes` Node objects, a
//!    namespace with its `default` ServiceAccount, then `--pods` Pod objects with `spec.nodeName`
//!    spread round-robin over the nodes. Pod creation is timed and reported apart: it is the
//!    scheduler's and apiserver's work, not IPAM's.
//! 2. Per ledger (`kubernetes`, then `etcd:URL` on a separate testbed etcd): one `berth agent` per
//!    node (release build, `--kubeconfig` always, so every agent watches its node's pods, as in a
//!    cluster; the kubeconfig is deploy/base/berth.yaml's agent ServiceAccount with its RBAC, a token
//!    from the TokenRequest API, and any 403 to it fails the run), started after the pods exist. A warm-up ADD+DEL per node on a *separate* network
//!    and pool proves each agent's pod watch is synced and its API connection open (a long-running
//!    agent's steady state); the measured pool is still cold: no pool record, no block.
//! 3. The IPAM phase: one `berth-ipam` process per CNI ADD (IPAM only, as the runtime execs it,
//!    `CNI_ARGS` with `K8S_POD_NAMESPACE/K8S_POD_NAME/K8S_POD_UID`), `--per-node` concurrent ADDs
//!    per node (a kubelet starts a node's pods in parallel), all nodes at once. Total = wall time
//!    from the first spawn to the last exit; per-ADD latency = spawn to exit. Then the ledger is
//!    checked (one binding per pod, all distinct) and the same for DEL.
//!
//! Only loopback traffic and Unix sockets; every process is a testbed `Daemon` or a waited-for
//! child, temp dirs are removed at the end.

use crate::bench::{cpu_secs, ms, pct, wait_socket};
use crate::release_bins;
use anyhow::{bail, Context, Result};
use berth_testbed::{Daemon, EtcdCluster, KubeControlPlane};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const NAMESPACE: &str = "kbench";
const NETWORK: &str = "kbenchnet";
const SUBNET: &str = "198.18.0.0/16";
const WARM_NETWORK: &str = "kbench-warm";
const WARM_SUBNET: &str = "198.19.0.0/16";
/// Target of the issue: the whole IPAM phase of 1000 pods under this.
const TARGET_TOTAL: Duration = Duration::from_secs(5);
const USAGE: &str = "usage: cargo xtask bench kube [--pods N] [--nodes N] [--per-node C] \
[--ledgers kubernetes,etcd] [--runs R] [--block-size B] [--bins DIR] [--markdown FILE]";

struct Opts {
    pods: usize,
    nodes: usize,
    per_node: usize,
    ledgers: Vec<String>,
    runs: usize,
    block_size: u8,
    bins: Option<PathBuf>,
    markdown: Option<PathBuf>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts> {
        let mut o = Opts {
            pods: 1000,
            nodes: 10,
            per_node: 4,
            ledgers: vec!["kubernetes".into(), "etcd".into()],
            runs: 1,
            block_size: 26,
            bins: None,
            markdown: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || {
                it.next()
                    .cloned()
                    .with_context(|| format!("{a} needs a value; {USAGE}"))
            };
            match a.as_str() {
                "--pods" => o.pods = val()?.parse().context("--pods")?,
                "--nodes" => o.nodes = val()?.parse().context("--nodes")?,
                "--per-node" => o.per_node = val()?.parse().context("--per-node")?,
                "--runs" => o.runs = val()?.parse().context("--runs")?,
                "--block-size" => o.block_size = val()?.parse().context("--block-size")?,
                "--ledgers" => o.ledgers = val()?.split(',').map(str::to_string).collect(),
                "--bins" => o.bins = Some(PathBuf::from(val()?)),
                "--markdown" => o.markdown = Some(PathBuf::from(val()?)),
                _ => bail!("unknown option {a:?}; {USAGE}"),
            }
        }
        if o.pods == 0 || o.nodes == 0 || o.per_node == 0 || o.runs == 0 {
            bail!("--pods, --nodes, --per-node and --runs must be at least 1");
        }
        for l in &o.ledgers {
            if l != "kubernetes" && l != "etcd" {
                bail!("--ledgers takes kubernetes and/or etcd, not {l:?}");
            }
        }
        Ok(o)
    }
}

/// Entry point of `cargo xtask bench kube ...`.
pub fn run(args: &[String]) -> Result<()> {
    bench(Opts::parse(args)?)
}

fn node_name(i: usize) -> String {
    format!("kbench-node-{i:02}")
}

/// A pod of the benchmark: name, UID (from the apiserver) and node index.
#[derive(Clone)]
struct Pod {
    name: String,
    uid: String,
    node: usize,
}

/// Machine facts for the report: CPU model and count, kernel, memory, load.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| format!("{:.0} GiB", k / 1024.0 / 1024.0))
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), {mem} RAM, Linux {}", kernel.trim())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// POST with the harness's curl and an arbitrary content type (CRDs go as YAML).
fn post_raw(cp: &KubeControlPlane, path: &str, content_type: &str, body: &str) -> Result<()> {
    let mut cmd = cp.curl();
    cmd.args(["-X", "POST", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Content-Type: {content_type}"))
        .args(["--data-binary", "@-"])
        .arg(format!("{}{}", cp.server(), path))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("spawning curl")?;
    child
        .stdin
        .take()
        .context("curl stdin")?
        .write_all(body.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let code = text.rsplit_once('\n').map(|(_, c)| c.trim()).unwrap_or("");
    if !out.status.success() || !(code == "201" || code == "409") {
        bail!("POST {path}: HTTP {code}: {text}");
    }
    Ok(())
}

/// Berth's CRDs from `berth crds` (the same YAML as deploy/base/crds.yaml), created and waited for.
pub(crate) fn install_crds(cp: &KubeControlPlane, berth: &Path) -> Result<()> {
    let out = Command::new(berth).arg("crds").output()?;
    if !out.status.success() {
        bail!(
            "berth crds failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let yaml = String::from_utf8(out.stdout)?;
    let mut n = 0;
    for doc in yaml.split("\n---\n").skip(1) {
        post_raw(
            cp,
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            "application/yaml",
            doc,
        )?;
        n += 1;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = cp
            .request(
                "GET",
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                None,
            )?
            .ok()?;
        let established = list["items"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|c| c["spec"]["group"] == "berth.dev")
                    .filter(|c| {
                        c["status"]["conditions"].as_array().is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c["type"] == "Established" && c["status"] == "True")
                        })
                    })
                    .count()
            })
            .unwrap_or(0);
        if n > 0 && established == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("Berth's CRDs not established after 60 s ({established}/{n})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn create(cp: &KubeControlPlane, path: &str, body: &Value) -> Result<Value> {
    let r = cp.request("POST", path, Some(body))?;
    if r.status != 201 {
        bail!("POST {path}: HTTP {}: {}", r.status, r.body);
    }
    r.json()
}

/// Runs `f` over `0..n` on `threads` threads; results in item order.
fn par_map<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let slots: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..threads.min(n).max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let v = f(i);
                slots.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(v);
            });
        }
    });
    slots
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|v| v.expect("every item ran"))
        .collect()
}

/// The objects every ledger run shares: nodes, namespace, service account, pods (plus one warm-up
/// pod per node). Returns (measured pods, warm-up pods, pod-creation wall time).
fn create_objects(cp: &KubeControlPlane, o: &Opts) -> Result<(Vec<Pod>, Vec<Pod>, Duration)> {
    for i in 0..o.nodes {
        let node = json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node_name(i), "labels": {"kubernetes.io/hostname": node_name(i)}}});
        create(cp, "/api/v1/nodes", &node)?;
    }
    create(
        cp,
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
    )?;
    // No controller-manager runs, so the ServiceAccount admission plugin's `default` account is
    // made here; pods do not mount its token.
    create(
        cp,
        &format!("/api/v1/namespaces/{NAMESPACE}/serviceaccounts"),
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
    )?;
    let pod_path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    let make = |name: String, node: usize| -> Result<Pod> {
        let body = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "kbench"}},
            "spec": {"nodeName": node_name(node), "automountServiceAccountToken": false,
                     "containers": [{"name": "c", "image": "busybox:latest",
                                     "imagePullPolicy": "Never"}]}});
        // The admission plugin may not see the fresh ServiceAccount for a moment: retry briefly.
        let mut tries = 0;
        let v = loop {
            match create(cp, &pod_path, &body) {
                Ok(v) => break v,
                Err(e) if tries >= 50 => return Err(e),
                Err(_) => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        let uid = v["metadata"]["uid"]
            .as_str()
            .context("created pod without metadata.uid")?
            .to_string();
        Ok(Pod { name, uid, node })
    };
    let warm: Vec<Pod> = (0..o.nodes)
        .map(|i| make(format!("warm-{i:02}"), i))
        .collect::<Result<_>>()?;
    let start = Instant::now();
    let pods: Vec<Pod> = par_map(o.pods, 8, |i| make(format!("pod-{i:04}"), i % o.nodes))
        .into_iter()
        .collect::<Result<_>>()?;
    Ok((pods, warm, start.elapsed()))
}

/// The CNI configuration a node's runtime would hand berth-ipam. It names no ledger: only the
/// node's agent may serve it (whichever ledger the agent runs), so an ADD that missed its agent
/// is "try again" (code 11), never served from a local file.
fn cni_config(network: &str, subnet: &str, socket: &Path, node: &str, block: u8) -> Vec<u8> {
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": network,
        "type": "bridge",
        "ipam": {
            "type": "berth-ipam",
            "ranges": [[{"subnet": subnet}]],
            "blockSize": block,
            "agentSocket": socket,
            "nodeName": node,
        }
    });
    serde_json::to_vec(&conf).expect("JSON")
}

/// One plugin invocation as a runtime makes it. Returns the spawn-to-exit time and, for ADD, the
/// address; Err carries the plugin's output.
fn cni(
    plugin: &Path,
    command: &str,
    id: &str,
    pod: &Pod,
    config: &[u8],
) -> (Duration, Result<Option<IpAddr>, String>) {
    let start = Instant::now();
    let child = Command::new(plugin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/var/run/netns/kbench-{id}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={NAMESPACE};K8S_POD_NAME={};K8S_POD_UID={}",
                pod.name, pod.uid
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (start.elapsed(), Err(format!("spawn: {e}"))),
    };
    let wrote = child.stdin.take().map(|mut s| s.write_all(config));
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => return (start.elapsed(), Err(format!("wait: {e}"))),
    };
    let elapsed = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fail = || {
        Err(format!(
            "{command} {id} ({}): stdout {} stderr {}",
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    };
    if !out.status.success() || matches!(wrote, Some(Err(_))) {
        return (elapsed, fail());
    }
    if command != "ADD" {
        return (
            elapsed,
            if stdout.trim().is_empty() {
                Ok(None)
            } else {
                fail()
            },
        );
    }
    let addr = serde_json::from_str::<Value>(&stdout).ok().and_then(|v| {
        v["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse::<IpAddr>().ok())
    });
    match addr {
        Some(a) => (elapsed, Ok(Some(a))),
        None => (elapsed, fail()),
    }
}

/// A running agent of one simulated node.
struct Agent {
    daemon: Daemon,
    socket: PathBuf,
}

fn start_agents(
    berth: &Path,
    dir: &Path,
    nodes: usize,
    ledger: &str,
    kubeconfig: &Path,
) -> Result<Vec<Agent>> {
    // Spawn all, then wait for all: agents start in parallel, as on a real cluster.
    let mut agents = vec![];
    for i in 0..nodes {
        let socket = dir.join(format!("agent-{i:02}.sock"));
        let mut cmd = Command::new(berth);
        cmd.args(["agent", "--socket"])
            .arg(&socket)
            .args(["--node", &node_name(i), "--ledger", ledger, "--kubeconfig"])
            .arg(kubeconfig)
            .env("BERTH_LOG", "warn");
        let daemon = Daemon::spawn(
            &format!("kbench-agent-{i:02}"),
            cmd,
            Some(&dir.join(format!("agent-{i:02}.log"))),
        )?;
        agents.push(Agent { daemon, socket });
    }
    for a in &mut agents {
        wait_socket(&mut a.daemon, &a.socket)?;
    }
    Ok(agents)
}

/// The bindings of `network` the ledger holds, via an agent's admin snapshot: (container, address).
fn ledger_bindings(socket: &Path, network: &str) -> Result<Vec<(String, IpAddr)>> {
    use std::io::{BufRead, BufReader};
    let mut s = std::os::unix::net::UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(b"{\"admin\":\"snapshot\"}\n")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    let v: Value = serde_json::from_str(&line).context("agent snapshot")?;
    if let Some(e) = v["error"].as_str() {
        bail!("agent snapshot: {e}");
    }
    let mut out = vec![];
    for b in v["bindings"]
        .as_array()
        .context("snapshot without bindings")?
    {
        if b["owner"]["network"] != network {
            continue;
        }
        let addr = b["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .context("binding without address")?;
        let cid = b["owner"]["containerID"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        out.push((cid, addr));
    }
    Ok(out)
}

/// One phase (all ADDs or all DELs) over every node at once.
struct Phase {
    wall: Duration,
    lat: Vec<Duration>,
    failures: Vec<String>,
    addrs: Vec<Option<IpAddr>>,
    cpu: Cpu,
}

/// CPU seconds spent during a phase, by process group.
#[derive(Default, Clone, Copy)]
struct Cpu {
    plugins: f64,
    agents: f64,
    apiserver: f64,
    kube_etcd: f64,
    ledger_etcd: f64,
}

struct Pids {
    agents: Vec<u32>,
    apiserver: u32,
    kube_etcd: u32,
    ledger_etcd: Option<u32>,
}

impl Pids {
    fn sample(&self) -> Cpu {
        Cpu {
            plugins: cpu_secs(None),
            agents: self.agents.iter().map(|&p| cpu_secs(Some(p))).sum(),
            apiserver: cpu_secs(Some(self.apiserver)),
            kube_etcd: cpu_secs(Some(self.kube_etcd)),
            ledger_etcd: self.ledger_etcd.map_or(0.0, |p| cpu_secs(Some(p))),
        }
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, o: Cpu) -> Cpu {
        Cpu {
            plugins: self.plugins - o.plugins,
            agents: self.agents - o.agents,
            apiserver: self.apiserver - o.apiserver,
            kube_etcd: self.kube_etcd - o.kube_etcd,
            ledger_etcd: self.ledger_etcd - o.ledger_etcd,
        }
    }
}

/// Run `command` for every pod: per node, `per_node` workers take that node's pods in order.
fn phase(
    plugin: &Path,
    command: &str,
    pods: &[Pod],
    configs: &[Vec<u8>],
    per_node: usize,
    tag: &str,
    pids: &Pids,
) -> Phase {
    let nodes = configs.len();
    let by_node: Vec<Vec<usize>> = (0..nodes)
        .map(|n| (0..pods.len()).filter(|&i| pods[i].node == n).collect())
        .collect();
    let next: Vec<AtomicUsize> = (0..nodes).map(|_| AtomicUsize::new(0)).collect();
    type Slot = Option<(Duration, Result<Option<IpAddr>, String>)>;
    let slots: Mutex<Vec<Slot>> = Mutex::new((0..pods.len()).map(|_| None).collect());
    let cpu0 = pids.sample();
    let start = Instant::now();
    std::thread::scope(|s| {
        for n in 0..nodes {
            for _ in 0..per_node {
                let (by_node, next, slots) = (&by_node, &next, &slots);
                s.spawn(move || loop {
                    let k = next[n].fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = by_node[n].get(k) else { break };
                    let id = format!("kbench-{tag}-{i:04}");
                    let r = cni(plugin, command, &id, &pods[i], &configs[n]);
                    slots.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                });
            }
        }
    });
    let wall = start.elapsed();
    let cpu = pids.sample() - cpu0;
    let mut p = Phase {
        wall,
        lat: vec![],
        failures: vec![],
        addrs: vec![],
        cpu,
    };
    for r in slots.into_inner().unwrap_or_else(|e| e.into_inner()) {
        let (d, r) = r.expect("every pod ran");
        p.lat.push(d);
        match r {
            Ok(a) => p.addrs.push(a),
            Err(e) => {
                p.addrs.push(None);
                p.failures.push(e);
            }
        }
    }
    p.lat.sort();
    p
}

/// The result of one ledger run.
struct Run {
    ledger: &'static str,
    add: Phase,
    del: Phase,
    checks: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
fn run_ledger(
    o: &Opts,
    cp: &KubeControlPlane,
    berth: &Path,
    ipam: &Path,
    ledger: &'static str,
    pods: &[Pod],
    warm: &[Pod],
    run: usize,
    agent_kubeconfig: &Path,
) -> Result<Run> {
    let tmp = tempfile::Builder::new()
        .prefix(&format!("berth-kbench-{ledger}-"))
        .tempdir()?;
    let dir = tmp.path();
    let etcd = if ledger == "etcd" {
        let e = EtcdCluster::builder()
            .members(1)
            .start()
            .context("starting the ledger's etcd")?;
        Some(e)
    } else {
        None
    };
    let ledger_arg = match &etcd {
        Some(e) => format!("etcd:{}", e.client_url(0)),
        None => "kubernetes".to_string(),
    };
    let mut agents = start_agents(berth, dir, o.nodes, &ledger_arg, agent_kubeconfig)?;
    let configs: Vec<Vec<u8>> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| cni_config(NETWORK, SUBNET, &a.socket, &node_name(i), o.block_size))
        .collect();
    let warm_configs: Vec<Vec<u8>> = agents
        .iter()
        .enumerate()
        .map(|(i, a)| cni_config(WARM_NETWORK, WARM_SUBNET, &a.socket, &node_name(i), 28))
        .collect();
    let pids = Pids {
        agents: agents.iter().map(|a| a.daemon.pid()).collect(),
        apiserver: cp.apiserver_pid().context("apiserver pid")?,
        kube_etcd: cp.etcd().member_pid(0).context("kube etcd pid")?,
        ledger_etcd: etcd.as_ref().and_then(|e| e.member_pid(0)),
    };
    // Warm-up: each agent's pod watch has the node's pods and its API connection is open.
    let tag = format!("{ledger}-r{run}");
    for (cmd, what) in [("ADD", "warm-up ADD"), ("DEL", "warm-up DEL")] {
        let w = phase(
            ipam,
            cmd,
            warm,
            &warm_configs,
            1,
            &format!("{tag}-w"),
            &pids,
        );
        if let Some(f) = w.failures.first() {
            bail!("{ledger}: {what} failed: {f}");
        }
    }
    eprintln!(
        "[{ledger} run {run}] agents up and warm; IPAM phase: {} ADDs",
        pods.len()
    );
    let add = phase(ipam, "ADD", pods, &configs, o.per_node, &tag, &pids);
    let mut checks = vec![];
    let got: Vec<IpAddr> = add.addrs.iter().flatten().copied().collect();
    let distinct: HashSet<IpAddr> = got.iter().copied().collect();
    if distinct.len() != got.len() {
        checks.push(format!(
            "DUPLICATES: {} ADD results, {} distinct addresses",
            got.len(),
            distinct.len()
        ));
    }
    let held = ledger_bindings(&agents[0].socket, NETWORK)?;
    let held_addrs: HashSet<IpAddr> = held.iter().map(|(_, a)| *a).collect();
    if held.len() != got.len() || held_addrs != distinct {
        checks.push(format!(
            "LEDGER MISMATCH after ADD: {} bindings in the ledger, {} successful ADDs",
            held.len(),
            got.len()
        ));
    }
    eprintln!(
        "[{ledger} run {run}] ADD: {:.2} s, {} failures; ledger holds {} bindings; DEL phase",
        add.wall.as_secs_f64(),
        add.failures.len(),
        held.len()
    );
    let del = phase(ipam, "DEL", pods, &configs, o.per_node, &tag, &pids);
    let left = ledger_bindings(&agents[0].socket, NETWORK)?;
    if !left.is_empty() {
        checks.push(format!("LEAK: {} bindings left after DEL", left.len()));
    }
    for (i, a) in agents.iter_mut().enumerate() {
        if !a.daemon.is_running() {
            checks.push(format!(
                "agent {} died; log:\n{}",
                node_name(i),
                a.daemon.log_tail(20)
            ));
        }
    }
    for a in &mut agents {
        a.daemon.terminate(Duration::from_secs(5));
    }
    for f in cp.forbidden_requests()? {
        checks.push(format!("FORBIDDEN by deploy/base/berth.yaml's RBAC: {f}"));
    }
    drop(agents);
    drop(etcd);
    drop(tmp);
    Ok(Run {
        ledger,
        add,
        del,
        checks,
    })
}

fn bench(o: Opts) -> Result<()> {
    berth_testbed::require_kube_binaries();
    let bins = match &o.bins {
        Some(b) => b.clone(),
        None => release_bins()?,
    };
    let (berth, ipam) = (bins.join("berth"), bins.join("berth-ipam"));
    for b in [&berth, &ipam] {
        if !b.exists() {
            bail!("{} is missing", b.display());
        }
    }
    let machine = machine();
    let load_before = loadavg();
    let t0 = Instant::now();
    let cp = KubeControlPlane::builder()
        .controller_manager(false)
        .start()
        .context("starting the control plane")?;
    eprintln!("control plane up in {:.1?}: {}", t0.elapsed(), cp.server());
    install_crds(&cp, &berth)?;
    // The agents act as deploy/base/berth.yaml's agent ServiceAccount, with its RBAC.
    cp.apply_manifest(
        &crate::root().join("deploy/base/berth.yaml"),
        Some(berth_testbed::RBAC_KINDS),
    )
    .context("applying deploy/base/berth.yaml's RBAC")?;
    let agent_kubeconfig = cp
        .service_account_kubeconfig("berth-system", "berth-agent")
        .context("a kubeconfig for berth-system/berth-agent")?;
    let (pods, warm, create_time) = create_objects(&cp, &o)?;
    eprintln!(
        "{} pods on {} nodes created in {:.2} s",
        pods.len(),
        o.nodes,
        create_time.as_secs_f64()
    );
    let mut runs = vec![];
    for r in 0..o.runs {
        for l in &o.ledgers {
            let ledger: &'static str = if l == "kubernetes" {
                "kubernetes"
            } else {
                "etcd"
            };
            runs.push(run_ledger(
                &o,
                &cp,
                &berth,
                &ipam,
                ledger,
                &pods,
                &warm,
                r,
                &agent_kubeconfig,
            )?);
        }
    }
    let load_after = loadavg();

    let mut out = String::new();
    out.push_str(&format!(
        "{} pods over {} simulated nodes (Node objects, pods with `spec.nodeName`) through a real \
         kube-apiserver v{} and one `berth agent` per node (release build), {} concurrent CNI ADDs \
         per node ({} at once). One `berth-ipam` process per ADD/DEL (IPAM only, `CNI_ARGS` with \
         the pod's namespace, name and UID). Pod creation ({} pods, 8 parallel clients): {:.2} s, \
         not counted as IPAM time.\n\
         Machine: {machine}; load average before {load_before}, after {load_after} (shared with \
         other work).\n\n",
        o.pods,
        o.nodes,
        berth_testbed::KUBE_VERSION,
        o.per_node,
        o.nodes * o.per_node,
        o.pods,
        create_time.as_secs_f64(),
    ));
    out.push_str(
        "| ledger | run | IPAM total (ADD phase) | ADD p50 | ADD p99 | ADD max | ADD failures | \
         DEL total | DEL p50 | DEL p99 | DEL failures | CPU s during ADD phase: plugins / agents / \
         apiserver / apiserver's etcd / ledger etcd | verdict |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|\n",
    );
    let mut all_pass = true;
    for (k, r) in runs.iter().enumerate() {
        let run = k / o.ledgers.len() + 1;
        let pass = r.add.wall < TARGET_TOTAL
            && r.add.failures.is_empty()
            && r.del.failures.is_empty()
            && r.checks.is_empty();
        all_pass &= pass;
        let c = r.add.cpu;
        out.push_str(&format!(
            "| {} | {run} | {:.2} s | {:.1} ms | {:.1} ms | {:.1} ms | {} | {:.2} s | {:.1} ms | {:.1} ms | {} | {:.1} / {:.1} / {:.1} / {:.1} / {:.1} | {} |\n",
            r.ledger,
            r.add.wall.as_secs_f64(),
            ms(pct(&r.add.lat, 50.0)),
            ms(pct(&r.add.lat, 99.0)),
            ms(*r.add.lat.last().expect("samples")),
            r.add.failures.len(),
            r.del.wall.as_secs_f64(),
            ms(pct(&r.del.lat, 50.0)),
            ms(pct(&r.del.lat, 99.0)),
            r.del.failures.len(),
            c.plugins,
            c.agents,
            c.apiserver,
            c.kube_etcd,
            c.ledger_etcd,
            if pass { "PASS" } else { "MISS" },
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "Target: IPAM total < {} s and 0 failures for {} pods: {}.\n",
        TARGET_TOTAL.as_secs(),
        o.pods,
        if all_pass { "PASS (every run)" } else { "MISS" }
    ));
    for r in &runs {
        for f in r.add.failures.iter().chain(&r.del.failures).take(5) {
            out.push_str(&format!("- {} failure: {f}\n", r.ledger));
        }
        for c in &r.checks {
            out.push_str(&format!("- {} check: {c}\n", r.ledger));
        }
    }
    println!("\n{out}");
    if let Some(p) = &o.markdown {
        std::fs::write(p, &out).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    drop(cp);
    if !all_pass {
        bail!("target missed (see the table)");
    }
    Ok(())
}
