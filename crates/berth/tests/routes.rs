//! The routed pod network without an overlay (seed 003's model), end to end: a real
//! kube-apiserver and controller-manager (v1.20.2), three "nodes" as network namespaces on one
//! bridge (the LAN, 198.18.0.0/24 and 2001:db8::/64), Node objects with their InternalIPs on it,
//! a real `berth agent --ledger kubernetes --pod-routes l2` process inside each node namespace,
//! and pods as namespaces attached by Debian's `bridge` CNI plugin with `berth-ipam` through the
//! node's agent, dual-stack.
//!
//! The agents and the controller run as deploy/base/berth.yaml's ServiceAccounts with its RBAC, and
//! any 403 fails the test. The apiserver listens on the host's loopback; each node reaches it through a TCP relay whose
//! listening socket lives in the node's namespace (127.0.0.1:PORT there), so the agents use the
//! control plane's kubeconfig unchanged. Nodes have forwarding on, as a real node needs.
//!
//! Covered: every node routes exactly the other nodes' blocks (both families) via their
//! InternalIPs with protocol 176, within a measured bound of the claim; a pod on node 1 pings
//! pods on nodes 2 and 3 over IPv4 and IPv6; `berth routes` lists the routes with block and node;
//! restarting every agent changes nothing in the kernel (`ip monitor route` sees no event); a
//! route added by hand, and one an operator put at a pod route's key, survive everything; node 3
//! fenced (out-of-service taint) → the controller reclaims its blocks → their routes go on the
//! other nodes (measured); node 2 then claims node 3's old block → the route follows the owner.

mod common;

use berth_netlink::{Family, Kernel, Routes, BERTH_PROTOCOL, MAIN_TABLE};
use berth_testbed::{
    pod_netns, require_kube_binaries, require_root_and_tools, Cni, CniCommand, CniTarget, Daemon,
    Fabric, KubeControlPlane, Netns,
};
use common::{snapshot_ok, BERTH, BERTH_IPAM};
use ipnet::IpNet;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NS: &str = "default";
const V4_BLOCK: u8 = 28;
const V6_BLOCK: u8 = 122;
/// The metric of Berth's pod routes (`berth_agent::routes::POD_ROUTE_METRIC`).
const POD_METRIC: u32 = 176;

// ---- a TCP relay from a node namespace's loopback to the host's apiserver -------------------------

/// Accepts on 127.0.0.1:`port` inside a node namespace and forwards each connection to
/// 127.0.0.1:`port` on the host, where the apiserver listens.
struct Relay {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(ns: &Netns, port: u16) -> Relay {
        let handle = berth_netlink::Netns::open(ns.path()).unwrap();
        // The socket is created by a thread inside the namespace; it stays there.
        let listener = handle
            .run(|| TcpListener::bind(("127.0.0.1", port)))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inner, _)) => {
                        let _ = inner.set_nonblocking(false);
                        if let Ok(outer) = TcpStream::connect(("127.0.0.1", port)) {
                            pipe(inner, outer);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Relay {
            stop,
            thread: Some(thread),
        }
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (Ok(mut a2), Ok(mut b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let (mut a, mut b) = (a, b);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut a, &mut b);
        let _ = b.shutdown(std::net::Shutdown::Write);
    });
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut b2, &mut a2);
        let _ = a2.shutdown(std::net::Shutdown::Write);
    });
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---- the world ------------------------------------------------------------------------------------

struct Node {
    name: String,
    v4: IpAddr,
    v6: IpAddr,
    ns: Netns,
    socket: PathBuf,
    kernel: Kernel,
    _relay: Relay,
}

struct World {
    rt: tokio::runtime::Runtime,
    cp: KubeControlPlane,
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    agents: Vec<Option<Daemon>>,
    agent_logs: Vec<PathBuf>,
    roles: common::Roles,
    _fabric: Fabric,
}

fn api(cp: &KubeControlPlane, method: &str, path: &str, body: Option<Value>) -> Value {
    let r = cp.request(method, path, body.as_ref()).unwrap();
    r.ok().unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
}

impl World {
    fn start() -> World {
        require_root_and_tools();
        require_kube_binaries();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cp = KubeControlPlane::start().unwrap();
        rt.block_on(async {
            let (client, _) = berth_k8s::client(Some(cp.kubeconfig())).await.unwrap();
            berth_k8s::crd::install(&client, Duration::from_secs(60))
                .await
                .unwrap();
        });
        // Berth runs as deploy/'s ServiceAccounts, with exactly deploy/'s RBAC.
        let roles = common::shipped_roles(&cp);
        let fabric = Fabric::new("rt").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for i in 1..=3 {
            let name = format!("node{i}");
            let (v4, v6) = (format!("198.18.0.1{i}"), format!("2001:db8::1{i}"));
            let ns = fabric
                .node(
                    &format!("rt{i}"),
                    &[&format!("{v4}/24"), &format!("{v6}/64")],
                )
                .unwrap();
            // What a real node needs: it forwards between its pod bridge and the LAN.
            ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
            ns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
            let relay = Relay::start(&ns, cp.port());
            api(
                &cp,
                "POST",
                "/api/v1/nodes",
                Some(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})),
            );
            api(
                &cp,
                "PATCH",
                &format!("/api/v1/nodes/{name}/status"),
                Some(json!({"status": {"addresses": [
                    {"type": "InternalIP", "address": v4},
                    {"type": "InternalIP", "address": v6},
                    {"type": "Hostname", "address": name},
                ]}})),
            );
            let kernel = rt
                .block_on(async { Kernel::in_netns(&berth_netlink::Netns::open(ns.path())?) })
                .unwrap();
            nodes.push(Node {
                socket: dir.path().join(format!("{name}.sock")),
                name,
                v4: v4.parse().unwrap(),
                v6: v6.parse().unwrap(),
                ns,
                kernel,
                _relay: relay,
            });
        }
        let got = api(&cp, "GET", "/api/v1/nodes/node2", None);
        assert_eq!(
            got["status"]["addresses"][0]["address"], "198.18.0.12",
            "InternalIPs recorded: {got}"
        );
        World {
            rt,
            cp,
            agent_logs: (1..=3)
                .map(|i| dir.path().join(format!("agent-node{i}-0.log")))
                .collect(),
            dir,
            nodes,
            agents: vec![None, None, None],
            roles,
            _fabric: fabric,
        }
    }

    /// Starts (or restarts) the agent of node `i` inside its namespace, and waits until it
    /// serves its socket.
    fn start_agent(&mut self, i: usize, generation: usize) {
        let n = &self.nodes[i];
        let _ = std::fs::remove_file(&n.socket);
        let log = self
            .dir
            .path()
            .join(format!("agent-{}-{generation}.log", n.name));
        let args: Vec<String> = vec![
            "agent".into(),
            "--node".into(),
            n.name.clone(),
            "--socket".into(),
            n.socket.display().to_string(),
            "--ledger".into(),
            "kubernetes".into(),
            "--kubeconfig".into(),
            self.roles.agent.display().to_string(),
            "--pod-wait".into(),
            "5s".into(),
            "--pod-routes".into(),
            "l2".into(),
            "--pod-bridge".into(),
            "cni0".into(),
        ];
        let mut d = n.ns.spawn(BERTH, &args, Some(&log)).unwrap();
        let t = Instant::now();
        while !snapshot_ok(&n.socket) {
            if let Some(st) = d.try_status() {
                panic!("agent {} exited ({st}):\n{}", n.name, d.log_tail(40));
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "agent {} not serving:\n{}",
                n.name,
                d.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.agents[i] = Some(d);
        self.agent_logs[i] = log;
    }

    /// Node `i`'s agent log once `pred` holds for it (the agent logs a change right after the
    /// kernel has it, so a test that saw the kernel change may read the log a moment early);
    /// the log as it is after 5 s otherwise.
    fn agent_log_when(&self, i: usize, pred: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            let log = self.agent_log(i);
            if pred(&log) || t.elapsed() > Duration::from_secs(5) {
                return log;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The log of node `i`'s current agent, without the terminal colours.
    fn agent_log(&self, i: usize) -> String {
        let raw = std::fs::read_to_string(&self.agent_logs[i]).unwrap_or_default();
        let mut out = String::new();
        let mut esc = false;
        for c in raw.chars() {
            match (esc, c) {
                (false, '\x1b') => esc = true,
                (true, 'm') => esc = false,
                (true, _) => {}
                (false, c) => out.push(c),
            }
        }
        out
    }

    fn conf(&self, i: usize) -> Value {
        let n = &self.nodes[i];
        json!({
            "cniVersion": "1.0.0", "name": "routed", "type": "bridge", "bridge": "cni0",
            "isGateway": true, "ipMasq": false,
            "ipam": {
                "type": "berth-ipam", "name": "pods",
                "ranges": [
                    [{"subnet": "198.18.64.0/24", "gateway": "198.18.64.1",
                      "rangeStart": "198.18.64.16", "rangeEnd": "198.18.64.63"}],
                    [{"subnet": "2001:db8:64::/64", "gateway": "2001:db8:64::1"}]
                ],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                "blockSize": V4_BLOCK, "blockSizeV6": V6_BLOCK,
                "agentSocket": n.socket, "nodeName": n.name,
                "dataDir": self.dir.path().join("must-stay-empty"),
            }
        })
    }

    fn cni(&self, i: usize) -> Cni {
        Cni::debian()
            .with_dir_first(Path::new(BERTH_IPAM).parent().unwrap())
            .in_node(&self.nodes[i].ns)
            .timeout(Duration::from_secs(60))
    }

    /// Berth's pod routes in node `i`'s kernel, read over netlink: block → (via, dev).
    fn pod_routes(&self, i: usize) -> BTreeMap<IpNet, (IpAddr, String)> {
        let k = &self.nodes[i].kernel;
        let mut out = BTreeMap::new();
        for fam in [Family::V4, Family::V6] {
            for r in self.rt.block_on(k.routes(fam, MAIN_TABLE)).unwrap() {
                if r.protocol == BERTH_PROTOCOL && r.effective_metric() == POD_METRIC {
                    out.insert(
                        r.dst.trunc(),
                        (r.gateway.unwrap(), r.dev.clone().unwrap_or_default()),
                    );
                }
            }
        }
        out
    }

    /// The whole main table of node `i` (both families) as iproute2 shows it, sorted.
    fn main_table(&self, i: usize) -> Vec<String> {
        let ns = &self.nodes[i].ns;
        let mut v: Vec<String> = [ns.routes().unwrap(), ns.routes6().unwrap()]
            .iter()
            .flat_map(|t| t.as_array().cloned().unwrap_or_default())
            .map(|r| r.to_string())
            .collect();
        v.sort();
        v
    }

    /// Waits until `ok(i)` holds for every node in `on`; returns the time it took.
    fn wait(&self, what: &str, on: &[usize], ok: impl Fn(usize) -> bool) -> Duration {
        let t = Instant::now();
        while !on.iter().all(|&i| ok(i)) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{what}: not within 30 s; requests deploy/'s RBAC refused: {:?}\npod routes now: {:?}\nagent logs:\n{}",
                self.cp.forbidden_requests().unwrap_or_default(),
                on.iter().map(|&i| self.pod_routes(i)).collect::<Vec<_>>(),
                on.iter()
                    .map(|&i| tail(&self.agent_log(i), 15))
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        t.elapsed()
    }

    fn blocks_of(&self, node: &str) -> Vec<IpNet> {
        let v = api(&self.cp, "GET", "/apis/berth.dev/v1alpha1/blocks", None);
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["spec"]["node"] == node)
            .map(|b| b["spec"]["cidr"].as_str().unwrap().parse().unwrap())
            .collect()
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Seconds since midnight of a log line's RFC 3339 timestamp (`2026-12-02T03:06:06.897910Z`).
fn log_seconds(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?.split_once('T')?.1;
    let t = t.trim_end_matches('Z');
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn block_of(ip: IpAddr) -> IpNet {
    let len = if ip.is_ipv4() { V4_BLOCK } else { V6_BLOCK };
    IpNet::new(ip, len).unwrap().trunc()
}

/// A pod: its Pod object (scheduled to the node) and its namespace attached by the bridge
/// plugin through berth-ipam.
struct Pod {
    ns: Netns,
    v4: IpAddr,
    v6: IpAddr,
}

fn add_pod(w: &World, i: usize, name: &str) -> (Pod, Duration) {
    let node = &w.nodes[i].name;
    let pod = api(
        &w.cp,
        "POST",
        &format!("/api/v1/namespaces/{NS}/pods"),
        Some(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                    "spec": {"nodeName": node,
                             "containers": [{"name": "c", "image": "berth.invalid/none:1"}]}}),
        ),
    );
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let ns = pod_netns(name).unwrap();
    let target = CniTarget::new(&format!("ctr-{name}"), &ns, "eth0").with_k8s_pod(NS, name, &uid);
    let t = Instant::now();
    let res = w
        .cni(i)
        .add(&target, &w.conf(i))
        .unwrap()
        .ok()
        .unwrap_or_else(|e| panic!("ADD {name} on {node}: {e:#}"));
    let took = t.elapsed();
    let ips: Vec<IpAddr> = berth_testbed::result_ips(&res)
        .iter()
        .map(|a| a.split('/').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ips.len(), 2, "dual-stack: {res}");
    (
        Pod {
            ns,
            v4: ips[0],
            v6: ips[1],
        },
        took,
    )
}

/// The pod routes node `i` must have: every other node's blocks via its InternalIPs on eth0.
fn expected(w: &World, i: usize, blocks: &[(usize, IpNet)]) -> BTreeMap<IpNet, (IpAddr, String)> {
    blocks
        .iter()
        .filter(|(owner, _)| *owner != i)
        .map(|(owner, b)| {
            let n = &w.nodes[*owner];
            let via = if b.addr().is_ipv4() { n.v4 } else { n.v6 };
            (*b, (via, "eth0".to_string()))
        })
        .collect()
}

fn pods_ping(from: &Pod, to: &Pod, what: &str) {
    for ip in [to.v4, to.v6] {
        from.ns
            .ping(&ip.to_string(), 10)
            .unwrap_or_else(|e| panic!("{what}: ping {ip}: {e:#}"));
    }
}

fn ip_monitor(ns: &Netns, log: &Path) -> Daemon {
    ns.spawn("ip", ["monitor", "route"], Some(log)).unwrap()
}

#[test]
fn routed_pod_network_across_three_nodes() {
    let t0 = Instant::now();
    let mut w = World::start();
    common::timing("control plane, CRDs, 3 nodes", t0);

    // A route an operator added by hand (protocol static): it must survive everything.
    w.nodes[0]
        .ns
        .ip([
            "route",
            "add",
            "198.18.99.0/24",
            "via",
            "198.18.0.12",
            "dev",
            "eth0",
            "proto",
            "static",
        ])
        .unwrap();

    // The controller, which fences nodes and reclaims their blocks later on.
    let mut ctl_cmd = Command::new(BERTH);
    ctl_cmd
        .args(["controller", "--ledger", "kubernetes", "--kubeconfig"])
        .arg(&w.roles.controller)
        .args([
            "--grace",
            "30s",
            "--interval",
            "500ms",
            "--lease-duration",
            "3s",
        ])
        .args(["--lease-namespace", common::BERTH_NAMESPACE, "--id", "c1"]);
    let ctl_log = w.dir.path().join("controller.log");
    let mut controller = Daemon::spawn("controller", ctl_cmd, Some(&ctl_log)).unwrap();

    for i in 0..3 {
        w.start_agent(i, 0);
    }
    // Nothing to route yet: no node has a block.
    for i in 0..3 {
        assert!(
            w.pod_routes(i).is_empty(),
            "node{} routes: {:?}",
            i + 1,
            w.pod_routes(i)
        );
    }

    // One pod per node. Each first ADD claims the node's blocks; the other nodes route them.
    let mut pods = Vec::new();
    let mut blocks: Vec<(usize, IpNet)> = Vec::new();
    let mut bound = Duration::ZERO;
    for i in 0..3 {
        let t = Instant::now();
        let (pod, add) = add_pod(&w, i, &format!("pod{}", i + 1));
        let mine = [block_of(pod.v4), block_of(pod.v6)];
        blocks.extend(mine.iter().map(|b| (i, *b)));
        let others: Vec<usize> = (0..3).filter(|&j| j != i).collect();
        w.wait(
            &format!("routes for node{}'s blocks", i + 1),
            &others,
            |j| mine.iter().all(|b| w.pod_routes(j).contains_key(b)),
        );
        let took = t.elapsed();
        eprintln!(
            "[timing] node{}: ADD {:?}; ADD start → its blocks {:?} routed on the other nodes: {:?}",
            i + 1,
            add,
            mine,
            took
        );
        bound = bound.max(took);
        pods.push(pod);
    }
    eprintln!("[timing] ADD start → routes on every other node: at most {bound:?} (3 claims)");
    // From the agents' own log clocks: the owner's "claimed block" to the other agents'
    // "pod route added" for it.
    let mut claim_to_route = Vec::new();
    for (owner, b) in &blocks {
        let needle = format!("block={b} ");
        let at = |i: usize, what: &str| {
            let hit = |l: &str| l.contains(what) && l.contains(&needle);
            w.agent_log_when(i, |log| log.lines().any(hit))
                .lines()
                .find(|l| hit(l))
                .and_then(log_seconds)
        };
        let claimed = at(*owner, "claimed block")
            .unwrap_or_else(|| panic!("node{} logged no claim of {b}", owner + 1));
        for j in (0..3).filter(|j| j != owner) {
            let added = at(j, "pod route added").unwrap_or_else(|| {
                panic!(
                    "node{} logged no route for {b}; its route log:\n{}",
                    j + 1,
                    w.agent_log(j)
                        .lines()
                        .filter(|l| l.contains("route") || l.contains("WARN"))
                        .collect::<Vec<_>>()
                        .join("\n")
                )
            });
            claim_to_route.push(Duration::from_secs_f64((added - claimed).max(0.0)));
        }
    }
    claim_to_route.sort();
    eprintln!(
        "[timing] block claimed → pod route added (agents' log clocks, {} routes): min {:?}, median {:?}, max {:?}",
        claim_to_route.len(),
        claim_to_route[0],
        claim_to_route[claim_to_route.len() / 2],
        claim_to_route[claim_to_route.len() - 1]
    );
    for i in 0..3 {
        assert_eq!(w.pod_routes(i), expected(&w, i, &blocks), "node{}", i + 1);
    }
    // As iproute2 sees them: protocol 176, metric 176, next hop on eth0; none for own blocks.
    for i in 0..3 {
        let ns = &w.nodes[i].ns;
        let mut seen = 0;
        for (v6, t) in [(false, ns.routes().unwrap()), (true, ns.routes6().unwrap())] {
            for r in t.as_array().unwrap() {
                let dst = r["dst"].as_str().unwrap_or_default();
                let in_pool = dst.parse::<IpNet>().is_ok_and(|d| {
                    ["198.18.64.0/24", "2001:db8:64::/64"]
                        .iter()
                        .any(|p| p.parse::<IpNet>().unwrap().contains(&d))
                });
                if !in_pool {
                    continue;
                }
                if r["protocol"] == "kernel" {
                    continue; // the bridge's own prefix
                }
                assert_eq!(r["protocol"], "176", "node{} {v6}: {r}", i + 1);
                assert_eq!(r["metric"], 176, "{r}");
                assert_eq!(r["dev"], "eth0", "{r}");
                let b: IpNet = dst.parse().unwrap();
                assert!(
                    blocks.iter().any(|(o, x)| *x == b && *o != i),
                    "node{} routes {dst}, not another node's block",
                    i + 1
                );
                seen += 1;
            }
        }
        assert_eq!(seen, 4, "node{}: two blocks of each other node", i + 1);
    }

    // Pods on different nodes reach each other, both families, no overlay.
    pods_ping(&pods[0], &pods[1], "pod1 → pod2");
    pods_ping(&pods[0], &pods[2], "pod1 → pod3");
    pods_ping(&pods[2], &pods[1], "pod3 → pod2");
    common::timing("pods, routes and pings", t0);

    // `berth routes` on node1 lists its routes with block and node, and nothing missing.
    let out = w.nodes[0]
        .ns
        .command(BERTH)
        .args([
            "routes",
            "--json",
            "--node",
            "node1",
            "--ledger",
            "kubernetes",
            "--kubeconfig",
        ])
        .arg(w.cp.kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "berth routes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let listed: Vec<(String, String, String)> = lines
        .iter()
        .map(|l| {
            (
                l["block"].as_str().unwrap().to_string(),
                l["node"].as_str().unwrap_or("-").to_string(),
                l["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut want: Vec<(String, String, String)> = blocks
        .iter()
        .filter(|(o, _)| *o != 0)
        .map(|(o, b)| {
            (
                b.to_string(),
                format!("node{}", o + 1),
                "installed".to_string(),
            )
        })
        .collect();
    want.sort();
    assert_eq!(
        listed,
        want,
        "berth routes: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let table = w.nodes[0]
        .ns
        .command(BERTH)
        .args([
            "routes",
            "--node",
            "node1",
            "--ledger",
            "kubernetes",
            "--kubeconfig",
        ])
        .arg(w.cp.kubeconfig())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.starts_with("BLOCK") && text.contains("198.18.0.12") && text.contains("node3"),
        "{text}"
    );
    eprintln!("berth routes on node1:\n{text}");

    // An operator takes over node1's route to node3's IPv6 block (same key, protocol static).
    let v6_of_3 = blocks
        .iter()
        .find(|(o, b)| *o == 2 && b.addr().is_ipv6())
        .unwrap()
        .1;
    w.nodes[0]
        .ns
        .ip([
            "-6",
            "route",
            "replace",
            &v6_of_3.to_string(),
            "via",
            "2001:db8::13",
            "dev",
            "eth0",
            "metric",
            "176",
            "proto",
            "static",
        ])
        .unwrap();

    // Every agent restarts (kill -9): nothing in any kernel changes, not even for a moment.
    let before: Vec<Vec<String>> = (0..3).map(|i| w.main_table(i)).collect();
    let mon_logs: Vec<PathBuf> = (0..3)
        .map(|i| w.dir.path().join(format!("monitor-{i}.log")))
        .collect();
    let mut monitors: Vec<Daemon> = (0..3)
        .map(|i| ip_monitor(&w.nodes[i].ns, &mon_logs[i]))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..3 {
        let st = w.agents[i].take().unwrap().kill();
        assert!(!st.success(), "agent {i} was not killed: {st}");
        w.start_agent(i, 1);
    }
    for i in 0..3 {
        let t = Instant::now();
        while !w
            .agent_log(i)
            .contains("pod routes reconciled from scratch")
        {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "node{} never reconciled:\n{}",
                i + 1,
                w.agent_log(i)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = w.agent_log(i);
        let line = log
            .lines()
            .find(|l| l.contains("pod routes reconciled from scratch"))
            .unwrap();
        for field in ["added=0", "replaced=0", "removed=0"] {
            assert!(
                line.contains(field),
                "node{} restart changed routes: {line}",
                i + 1
            );
        }
        let refused = if i == 0 { "refused=1" } else { "refused=0" };
        assert!(line.contains(refused), "node{}: {line}", i + 1);
    }
    assert!(
        w.agent_log(0).contains("another route holds its key"),
        "node1 says why it leaves the operator's route:\n{}",
        w.agent_log(0)
    );
    std::thread::sleep(Duration::from_millis(500));
    for (i, m) in monitors.iter_mut().enumerate() {
        let _ = m.kill();
        let mut s = String::new();
        std::fs::File::open(&mon_logs[i])
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        // The local table's kernel routes follow addresses (an IPv6 address leaving DAD late adds
        // its `local` route): they are not routing changes, and Berth never writes there.
        let events: Vec<&str> = s
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.contains("table local"))
            .collect();
        assert!(
            events.is_empty(),
            "node{}: route events during the restart:\n{}",
            i + 1,
            events.join("\n")
        );
        assert_eq!(w.main_table(i), before[i], "node{}'s routes changed", i + 1);
    }
    common::timing("restart of every agent", t0);

    // node3 is shut down and taken out of service: the controller releases its bindings and
    // reclaims its blocks; the other nodes remove their routes.
    let gone: Vec<IpNet> = blocks
        .iter()
        .filter(|(o, _)| *o == 2)
        .map(|(_, b)| *b)
        .collect();
    let r =
        w.cp.request(
            "PATCH",
            "/api/v1/nodes/node3",
            Some(
                &json!({"spec": {"taints": [{"key": "node.kubernetes.io/out-of-service",
                                              "value": "nodeshutdown", "effect": "NoExecute"}]}}),
            ),
        )
        .unwrap();
    assert!(r.is_success(), "{}", r.body);
    let t = Instant::now();
    while !w.blocks_of("node3").is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "controller did not reclaim node3's blocks:\n{}",
            controller.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let released = Instant::now();
    let removal = w.wait("routes of node3's reclaimed blocks removed", &[0, 1], |j| {
        gone.iter().all(|b| !w.pod_routes(j).contains_key(b))
    });
    eprintln!(
        "[timing] taint → blocks reclaimed {:?}; blocks gone → routes removed on both nodes: {removal:?} (+ the 2 ms poll)",
        released - t
    );
    assert!(
        w.agent_log_when(1, |l| l.contains("pod route removed"))
            .contains("pod route removed"),
        "node2 logs the removal:\n{}",
        tail(&w.agent_log(1), 10)
    );
    // The operator's routes are still there, untouched.
    let t1: String = w.main_table(0).join("\n");
    assert!(
        t1.contains("198.18.99.0/24") && t1.contains("\"static\""),
        "{t1}"
    );
    assert!(
        t1.contains(&v6_of_3.to_string()),
        "the operator's route at the pod route's key went: {t1}"
    );
    // node1 and node2 still route each other's blocks.
    let remaining: Vec<(usize, IpNet)> = blocks.iter().filter(|(o, _)| *o != 2).cloned().collect();
    assert_eq!(w.pod_routes(1), expected(&w, 1, &remaining));
    pods_ping(&pods[0], &pods[1], "pod1 → pod2 after node3's fencing");

    // node2 fills its IPv4 block; its next claim can only be node3's old block (the dynamic
    // range holds three). The route for it follows the new owner.
    let old_v4 = gone.iter().find(|b| b.addr().is_ipv4()).copied().unwrap();
    // A running agent's allocator learns of other nodes' released blocks only when it re-reads
    // the ledger (at start): restart node2's agent first.
    let _ = w.agents[1].take().unwrap().kill();
    w.start_agent(1, 2);
    let mut k = 0;
    while !w.blocks_of("node2").contains(&old_v4) {
        k += 1;
        assert!(
            k <= 40,
            "node2 never claimed {old_v4}: {:?}",
            w.blocks_of("node2")
        );
        let t = CniTarget {
            container_id: format!("fill-{k}"),
            netns: PathBuf::from("/var/run/netns/berth-routes-none"),
            ifname: "eth0".into(),
            args: None,
        };
        let out = w
            .cni(1)
            .exec_plugin("berth-ipam", CniCommand::Add, Some(&t), &w.conf(1))
            .unwrap();
        out.ok()
            .unwrap_or_else(|e| panic!("fill ADD on node2: {e:#}"));
    }
    let moved = w.wait("node3's old block routed via node2", &[0, 2], |j| {
        w.pod_routes(j).get(&old_v4) == Some(&(w.nodes[1].v4, "eth0".to_string()))
    });
    eprintln!(
        "[timing] block re-claimed by node2 → routed via node2 on node1 and node3: {moved:?}"
    );
    assert!(
        !w.pod_routes(1).contains_key(&old_v4),
        "node2 routes its own block"
    );
    assert!(w.main_table(0).join("\n").contains("198.18.99.0/24"));

    for (i, a) in w.agents.iter_mut().enumerate() {
        let a = a.as_mut().unwrap();
        assert!(a.is_running(), "agent {i} exited:\n{}", a.log_tail(20));
    }
    assert!(
        controller.is_running(),
        "controller exited:\n{}",
        controller.log_tail(20)
    );
    assert!(
        !w.dir.path().join("must-stay-empty").exists(),
        "berth-ipam fell back to its embedded ledger"
    );
    // deploy/'s RBAC allowed everything the agents and the controller did (the watches too:
    // a refused watch is retried forever and the routes silently never come).
    common::assert_no_forbidden(&w.cp);
    let _ = controller.kill();
    for a in w.agents.iter_mut() {
        if let Some(mut d) = a.take() {
            let _ = d.kill();
        }
    }
    drop(pods);
    common::timing("routed_pod_network_across_three_nodes", t0);
}
