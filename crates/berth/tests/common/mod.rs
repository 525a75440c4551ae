//! Shared pieces of the end-to-end tests: real `berth agent` processes, `berth-ipam` invoked as a
//! container runtime invokes it (environment + configuration on stdin, one process per call), the
//! `berth` inspection CLI, and a small thread pool for bursts of concurrent invocations.
//!
//! Everything started here is a testbed [`Daemon`] (own session, recorded PID, killed on Drop and
//! on test-process death); temp dirs are removed on Drop. No network namespace is needed: an IPAM
//! plugin never enters `CNI_NETNS`, and the agent talks over a Unix socket, etcd over loopback.

#![allow(dead_code)]

use berth_testbed::{Cni, CniCommand, CniOutput, CniTarget, Daemon};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The `berth` binary built for this test run.
pub const BERTH: &str = env!("CARGO_BIN_EXE_berth");
/// The `berth-ipam` binary built for this test run.
pub const BERTH_IPAM: &str = env!("CARGO_BIN_EXE_berth-ipam");

/// A runtime whose `CNI_PATH` holds only the freshly built `berth-ipam`.
pub fn runtime() -> Cni {
    Cni::new([Path::new(BERTH_IPAM).parent().expect("bin dir")]).timeout(Duration::from_secs(90))
}

/// A container identity; `CNI_NETNS` points at a path that need not exist (IPAM does not enter it).
pub fn target(container_id: &str, ifname: &str, pod: &str) -> CniTarget {
    CniTarget {
        container_id: container_id.to_string(),
        netns: PathBuf::from(format!("/var/run/netns/berth-e2e-{container_id}")),
        ifname: ifname.to_string(),
        args: Some(format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=e2e;K8S_POD_NAME={pod};K8S_POD_UID=uid-{pod}"
        )),
    }
}

/// Run `berth-ipam` once with `command` for `target` (None for GC) and `conf` on stdin.
pub fn ipam(cni: &Cni, command: CniCommand, target: Option<&CniTarget>, conf: &Value) -> CniOutput {
    cni.exec_plugin("berth-ipam", command, target, conf)
        .unwrap_or_else(|e| panic!("running berth-ipam {}: {e:#}", command.as_str()))
}

/// The single-stack pool of the tests, kube-ipam form.
pub fn v4_pool(network: &str, socket: &Path, node: &str) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": network,
        "type": "bridge",
        "ipam": {
            "type": "berth-ipam",
            "subnet": "198.18.0.0/20",
            "rangeStart": "198.18.1.0",
            "rangeEnd": "198.18.15.254",
            "fixedStart": "198.18.0.10",
            "fixedEnd": "198.18.0.250",
            "gateway": "198.18.0.1",
            "blockSize": 26,
            "agentSocket": socket,
            "nodeName": node,
        }
    })
}

/// Name the ledger in a configuration (`ipam.ledger` and where it is), so the plugin's direct
/// path uses it when no agent answers, and the agent checks it runs on that kind of ledger.
pub fn with_store(mut conf: Value, ledger: &Ledger) -> Value {
    let ipam = conf["ipam"].as_object_mut().expect("ipam object");
    match ledger {
        Ledger::Embedded(dir) => {
            ipam.insert("ledger".into(), json!("embedded"));
            ipam.insert("dataDir".into(), json!(dir.path()));
        }
        Ledger::Etcd(url) => {
            ipam.insert("ledger".into(), json!("etcd"));
            ipam.insert("etcdConfig".into(), json!({ "etcdURL": url }));
        }
    }
    conf
}

/// A configuration that names no ledger (so only the node's agent may serve it) but carries a
/// `dataDir` in the test's temp dir: if the plugin ever allocated by itself it would write there,
/// so the test can assert the directory stays empty.
pub fn agent_only(mut conf: Value, fallback: &Ledger) -> Value {
    let Ledger::Embedded(dir) = fallback else {
        panic!("agent_only takes an embedded fallback directory")
    };
    let ipam = conf["ipam"].as_object_mut().expect("ipam object");
    ipam.insert("dataDir".into(), json!(dir.path()));
    conf
}

/// Where a test's ledger lives.
pub enum Ledger {
    /// A temp dir for the embedded ledger (removed on Drop).
    Embedded(tempfile::TempDir),
    /// etcd client URLs, comma-separated.
    Etcd(String),
}

impl Ledger {
    /// A fresh embedded ledger directory.
    pub fn embedded() -> Ledger {
        Ledger::Embedded(
            tempfile::Builder::new()
                .prefix("berth-e2e-ledger-")
                .tempdir()
                .expect("temp dir"),
        )
    }

    /// The `--ledger` argument.
    pub fn arg(&self) -> String {
        match self {
            Ledger::Embedded(d) => format!("embedded:{}", d.path().display()),
            Ledger::Etcd(url) => format!("etcd:{url}"),
        }
    }
}

/// A running `berth agent`.
pub struct Agent {
    pub daemon: Daemon,
    pub socket: PathBuf,
    pub node: String,
    ledger_arg: String,
}

impl Agent {
    /// Start `berth agent` and wait until it answers on its socket.
    pub fn start(socket: &Path, ledger: &Ledger, node: &str) -> Agent {
        let ledger_arg = ledger.arg();
        let daemon = spawn_agent(socket, &ledger_arg, node);
        let mut a = Agent {
            daemon,
            socket: socket.to_path_buf(),
            node: node.to_string(),
            ledger_arg,
        };
        a.wait_serving();
        a
    }

    fn wait_serving(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(st) = self.daemon.try_status() {
                panic!(
                    "berth agent {} exited on start ({st}):\n{}",
                    self.node,
                    self.daemon.log_tail(30)
                );
            }
            // An admin snapshot round trip proves the socket is served by this agent, not a stale file.
            if snapshot_ok(&self.socket) {
                return;
            }
            if start.elapsed() > Duration::from_secs(20) {
                panic!(
                    "berth agent {} does not serve {} after 20 s:\n{}",
                    self.node,
                    self.socket.display(),
                    self.daemon.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL the agent (and reap it); the socket file stays behind, as after a real crash.
    pub fn kill9(&mut self) {
        let st = self.daemon.kill();
        assert!(
            !st.success(),
            "agent {} exited cleanly instead of being killed: {st}",
            self.node
        );
    }

    /// Start a new agent process on the same socket, ledger and node.
    pub fn restart(&mut self) {
        let _ = self.daemon.kill();
        self.daemon = spawn_agent(&self.socket, &self.ledger_arg, &self.node);
        self.wait_serving();
    }
}

fn spawn_agent(socket: &Path, ledger_arg: &str, node: &str) -> Daemon {
    let mut cmd = Command::new(BERTH);
    cmd.arg("agent")
        .arg("--socket")
        .arg(socket)
        .arg("--ledger")
        .arg(ledger_arg)
        .arg("--node")
        .arg(node)
        .env("BERTH_LOG", "info");
    Daemon::spawn(&format!("agent-{node}"), cmd, None).expect("spawning berth agent")
}

/// Whether an agent answers a ledger snapshot on `socket` (it is up and its ledger readable).
pub fn snapshot_ok(socket: &Path) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(b"{\"admin\":\"snapshot\"}\n").is_err() {
        return false;
    }
    let mut line = String::new();
    if BufReader::new(s).read_line(&mut line).is_err() {
        return false;
    }
    serde_json::from_str::<Value>(&line)
        .map(|v| v.get("bindings").is_some() && v.get("error").is_none())
        .unwrap_or(false)
}

/// Run a `berth` CLI subcommand against `ledger` (asking `socket` when an agent holds an embedded
/// ledger's lock); returns (exit code, stdout, stderr).
pub fn berth_cli(
    sub: &str,
    ledger: &Ledger,
    socket: Option<&Path>,
    json: bool,
) -> (i32, String, String) {
    let mut cmd = Command::new(BERTH);
    cmd.arg(sub).arg("--ledger").arg(ledger.arg());
    if let Some(s) = socket {
        cmd.arg("--socket").arg(s);
    }
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("running berth");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_json(sub: &str, ledger: &Ledger, socket: Option<&Path>) -> Vec<Value> {
    let (code, out, err) = berth_cli(sub, ledger, socket, true);
    assert_eq!(
        code, 0,
        "berth {sub} --json failed:\nstdout: {out}\nstderr: {err}"
    );
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("berth {sub} --json printed non-JSON ({e}): {out}"))
}

/// `berth bindings --json`.
pub fn bindings(ledger: &Ledger, socket: Option<&Path>) -> Vec<Value> {
    cli_json("bindings", ledger, socket)
}

/// `berth blocks --json`.
pub fn blocks(ledger: &Ledger, socket: Option<&Path>) -> Vec<Value> {
    cli_json("blocks", ledger, socket)
}

/// `berth audit` must exit 0 and report no violation.
pub fn assert_audit_clean(ledger: &Ledger, socket: Option<&Path>) {
    let (code, out, err) = berth_cli("audit", ledger, socket, false);
    assert_eq!(code, 0, "berth audit found violations:\n{out}\n{err}");
    assert!(
        !out.contains("VIOLATION"),
        "berth audit printed a violation:\n{out}"
    );
    assert!(
        err.contains("audit clean"),
        "berth audit did not report clean: {err}"
    );
}

/// Bindings of `pool`, keyed by container ID: (address, node, binding JSON).
pub fn bindings_by_container(
    all: &[Value],
    pool: &str,
) -> BTreeMap<String, Vec<(IpAddr, String, Value)>> {
    let mut out: BTreeMap<String, Vec<(IpAddr, String, Value)>> = BTreeMap::new();
    for b in all.iter().filter(|b| b["pool"] == pool) {
        let addr: IpAddr = b["address"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("binding without a parsable address: {b}"));
        let cid = b["holder"]["attachment"]["containerID"]
            .as_str()
            .unwrap_or_else(|| panic!("binding without owner.containerID: {b}"))
            .to_string();
        let node = b["node"].as_str().unwrap_or_default().to_string();
        out.entry(cid).or_default().push((addr, node, b.clone()));
    }
    out
}

/// The addresses of an ADD result (`ips[].address`, prefix dropped), checked to be a 1.1.0 result.
pub fn result_addrs(result: &Value) -> Vec<IpAddr> {
    assert_eq!(
        result["cniVersion"], "1.1.0",
        "result not in the config's version: {result}"
    );
    result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("result without ips: {result}"))
        .iter()
        .map(|ip| {
            let a = ip["address"]
                .as_str()
                .unwrap_or_else(|| panic!("ip without address: {result}"));
            a.split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap_or_else(|e| panic!("bad address {a}: {e}"))
        })
        .collect()
}

/// Assert `out` is a failed invocation carrying a CNI error object on stdout; returns its code.
pub fn cni_error_code(out: &CniOutput) -> u64 {
    assert!(
        !out.success(),
        "expected failure, got success: {}",
        out.stdout
    );
    let j = out.json.as_ref().unwrap_or_else(|| {
        panic!(
            "failed plugin printed no CNI error JSON ({}):\nstdout: {:?}\nstderr: {}",
            out.status, out.stdout, out.stderr
        )
    });
    assert_eq!(
        j["cniVersion"], "1.1.0",
        "error not in the config's version: {j}"
    );
    assert!(
        j["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "error without msg: {j}"
    );
    j["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("error without numeric code: {j}"))
}

/// Whether `ip` (v4) lies in [lo, hi].
pub fn v4_in(ip: IpAddr, lo: &str, hi: &str) -> bool {
    let (IpAddr::V4(a), Ok(l), Ok(h)) = (
        ip,
        lo.parse::<std::net::Ipv4Addr>(),
        hi.parse::<std::net::Ipv4Addr>(),
    ) else {
        return false;
    };
    l <= a && a <= h
}

/// Whether `ip` lies inside `cidr` (e.g. a block name like "198.18.1.0/26").
pub fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let (net, len) = cidr
        .split_once('/')
        .unwrap_or_else(|| panic!("not a CIDR: {cidr}"));
    let net: IpAddr = net.parse().unwrap_or_else(|_| panic!("not a CIDR: {cidr}"));
    let len: u32 = len.parse().unwrap_or_else(|_| panic!("not a CIDR: {cidr}"));
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Run `f` over `0..n` on `threads` threads (each item once, in roughly ascending order); results
/// in item order.
pub fn par_map<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let slots_ptr = std::sync::Mutex::new(&mut slots);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let v = f(i);
                slots_ptr.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(v);
            });
        }
    });
    slots
        .into_iter()
        .map(|v| v.expect("every item ran"))
        .collect()
}

/// Print a timing line (visible with `--nocapture`, and in the failure output otherwise).
pub fn timing(what: &str, since: Instant) {
    eprintln!("[timing] {what}: {:.2?}", since.elapsed());
}

/// deploy/base/berth.yaml: the RBAC, agent and controller that ship.
pub const DEPLOY_BERTH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/base/berth.yaml");
/// The namespace deploy/base/berth.yaml puts Berth in.
pub const BERTH_NAMESPACE: &str = "berth-system";

/// Kubeconfigs of deploy/'s ServiceAccounts, whose rights are exactly deploy/'s RBAC.
pub struct Roles {
    /// `berth-system/berth-agent`.
    pub agent: PathBuf,
    /// `berth-system/berth-controller`.
    pub controller: PathBuf,
}

/// Apply deploy/base/berth.yaml's Namespace, ServiceAccounts and RBAC (from the file itself) and mint
/// a token and kubeconfig for the agent's and the controller's ServiceAccount.
pub fn shipped_roles(cp: &berth_testbed::KubeControlPlane) -> Roles {
    let applied = cp
        .apply_manifest(Path::new(DEPLOY_BERTH), Some(berth_testbed::RBAC_KINDS))
        .unwrap_or_else(|e| panic!("applying deploy/base/berth.yaml's RBAC: {e:#}"));
    assert!(
        applied.iter().any(|a| a == "ClusterRole/berth-agent")
            && applied.iter().any(|a| a == "Role/berth-controller"),
        "deploy/base/berth.yaml's RBAC: {applied:?}"
    );
    let kc = |sa: &str| {
        cp.service_account_kubeconfig(BERTH_NAMESPACE, sa)
            .unwrap_or_else(|e| panic!("kubeconfig for {sa}: {e:#}"))
    };
    Roles {
        agent: kc("berth-agent"),
        controller: kc("berth-controller"),
    }
}

/// No request of a ServiceAccount was refused (403) so far: the shipped roles were enough for
/// everything the test made Berth do. (Refusals by an apiserver still starting, before its RBAC
/// authorizer has read any role, are shown but say nothing about the roles.)
pub fn assert_no_forbidden(cp: &berth_testbed::KubeControlPlane) {
    let early = cp
        .forbidden_while_starting()
        .expect("reading the audit log");
    if !early.is_empty() {
        eprintln!(
            "{} request(s) refused while the apiserver was starting, e.g. {:?}",
            early.len(),
            early.first()
        );
    }
    let refused = cp.forbidden_requests().expect("reading the audit log");
    assert!(
        refused.is_empty(),
        "deploy/base/berth.yaml's RBAC refused {} request(s) of Berth's ServiceAccounts:\n{}",
        refused.len(),
        refused.join("\n")
    );
}

/// A daemon's log without ANSI colour sequences (tracing colours field names, so `leader=true`
/// is not one string in the raw log).
pub fn plain_log(d: &berth_testbed::Daemon) -> String {
    let mut out = String::new();
    let mut esc = false;
    for c in d.log().chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}
