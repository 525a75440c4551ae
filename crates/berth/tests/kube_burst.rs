//! "The apiserver restarted mid-burst → no duplicates", on a real kube-apiserver (v1.20.2 built
//! from Debian's source) with the Kubernetes ledger.
//!
//! Four Node objects, four `berth agent --ledger kubernetes --kubeconfig F` processes (one per
//! node, each watching its node's pods), the pods created first. Then a burst of concurrent CNI
//! ADDs (`berth-ipam` processes, exactly as a runtime execs them) during which the test restarts
//! the apiserver. Every ADD either succeeds or fails with a CNI error JSON of code 11 ("try again
//! later"); after a failure the test does what the runtime and kubelet do: DEL the failed sandbox
//! (retrying until the DEL succeeds), then ADD again with a new sandbox ID. At the end every pod
//! holds exactly one address, all distinct, `berth audit` is clean, and the bindings in the ledger
//! are exactly the pods' final sandboxes' addresses: nothing leaked from the failed attempts.
//! The agents run as deploy/base/berth.yaml's agent ServiceAccount with its RBAC; no request of theirs
//! may be refused.

mod common;

use berth_testbed::{
    require_kube_binaries, require_root_and_tools, CniCommand, CniTarget, Daemon, KubeControlPlane,
};
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const NODES: usize = 4;
const PODS: usize = 200;
const THREADS: usize = 32;
const NAMESPACE: &str = "burst";
const NETWORK: &str = "burstnet";
/// Successful ADDs before the restart begins: the burst is well under way, most of it still to come.
const RESTART_AFTER: usize = 25;
/// Every pod must be running (with retries) by then.
const BURST_DEADLINE: Duration = Duration::from_secs(40);

fn node_name(i: usize) -> String {
    format!("burst-node-{i}")
}

fn pod_name(i: usize) -> String {
    format!("pod-{i:03}")
}

/// The network configuration of node `i`: its own agent's socket, and the Kubernetes ledger as
/// `deploy/base/10-berth.conflist` names it, so an ADD that missed its agent is "try again" (code 11),
/// never a local allocation.
fn conf(socket: &Path, node: &str) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": NETWORK,
        "type": "bridge",
        "ipam": {
            "type": "berth-ipam",
            "subnet": "198.18.0.0/20",
            "blockSize": 27,
            "agentSocket": socket,
            "nodeName": node,
            "ledger": "kubernetes",
        }
    })
}

fn target(container_id: &str, pod: &str, uid: &str) -> CniTarget {
    CniTarget {
        container_id: container_id.to_string(),
        netns: PathBuf::from(format!("/var/run/netns/berth-burst-{container_id}")),
        ifname: "eth0".to_string(),
        args: Some(format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={NAMESPACE};K8S_POD_NAME={pod};K8S_POD_UID={uid}"
        )),
    }
}

fn post(cp: &KubeControlPlane, path: &str, body: &Value) -> Value {
    let r = cp
        .request("POST", path, Some(body))
        .unwrap_or_else(|e| panic!("POST {path}: {e:#}"));
    assert_eq!(r.status, 201, "POST {path}: {}", r.body);
    r.json().unwrap()
}

/// `berth agent` for `node` on the Kubernetes ledger, waited for until an admin snapshot (which
/// lists the ledger through the apiserver) answers.
fn start_agent(kubeconfig: &Path, socket: &Path, node: &str) -> Daemon {
    let mut cmd = Command::new(BERTH);
    cmd.arg("agent")
        .arg("--socket")
        .arg(socket)
        .args(["--node", node, "--ledger", "kubernetes", "--kubeconfig"])
        .arg(kubeconfig)
        .env("BERTH_LOG", "info");
    let mut d = Daemon::spawn(&format!("agent-{node}"), cmd, None).expect("spawning berth agent");
    let start = Instant::now();
    loop {
        if let Some(st) = d.try_status() {
            panic!("agent {node} exited on start ({st}):\n{}", d.log_tail(30));
        }
        if common::snapshot_ok(socket) {
            return d;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "agent {node} does not serve {} after 30 s:\n{}",
            socket.display(),
            d.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `berth SUB --ledger kubernetes --kubeconfig F [--json]`: (exit code, stdout, stderr).
fn berth_kube(cp: &KubeControlPlane, sub: &str, json: bool) -> (i32, String, String) {
    let mut cmd = Command::new(BERTH);
    cmd.args([sub, "--ledger", "kubernetes", "--kubeconfig"])
        .arg(cp.kubeconfig());
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

/// What happened to one pod during the burst.
#[derive(Debug, Default)]
struct Outcome {
    /// The sandbox whose ADD finally succeeded, and its addresses.
    done: Option<(String, Vec<IpAddr>)>,
    /// Failed ADDs: (sandbox, CNI error code, message).
    failed_adds: Vec<(String, u64, String)>,
    /// Failed DELs of failed sandboxes (retried): (sandbox, code).
    failed_dels: Vec<(String, u64)>,
    /// Invocations that took over a second: (command, sandbox, started since the burst began,
    /// duration, succeeded).
    slow: Vec<(&'static str, String, Duration, Duration, bool)>,
    /// When the last failure (ADD or DEL) of this pod happened, since the burst began.
    last_failure: Option<Duration>,
    /// When the successful ADD finished, since the burst began.
    finished: Option<Duration>,
    /// Sandboxes the test gave up on (deadline), with the last output.
    gave_up: Option<String>,
}

#[test]
fn apiserver_restart_mid_burst_leaves_no_duplicates_and_no_leaks() {
    require_root_and_tools();
    require_kube_binaries();
    let t0 = Instant::now();
    let cp = KubeControlPlane::builder()
        .controller_manager(false)
        .start()
        .unwrap_or_else(|e| panic!("control plane: {e:#}"));
    timing("control plane", t0);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, _) = berth_k8s::client(Some(cp.kubeconfig())).await.unwrap();
        berth_k8s::crd::install(&client, Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("installing Berth's CRDs: {e}"));
    });
    drop(rt);

    // Nodes, a namespace with the `default` ServiceAccount (no controller-manager runs), pods.
    for i in 0..NODES {
        post(
            &cp,
            "/api/v1/nodes",
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node_name(i)}}),
        );
    }
    post(
        &cp,
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
    );
    post(
        &cp,
        &format!("/api/v1/namespaces/{NAMESPACE}/serviceaccounts"),
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
    );
    let t = Instant::now();
    let uids: Vec<String> = par_map(PODS, 8, |i| {
        let body = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod_name(i), "namespace": NAMESPACE},
            "spec": {"nodeName": node_name(i % NODES), "automountServiceAccountToken": false,
                     "containers": [{"name": "c", "image": "busybox:latest",
                                     "imagePullPolicy": "Never"}]}});
        let path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
        // The ServiceAccount admission plugin may not see the fresh account for a moment.
        for _ in 0..50 {
            let r = cp.request("POST", &path, Some(&body)).unwrap();
            if r.status == 201 {
                return r.json().unwrap()["metadata"]["uid"]
                    .as_str()
                    .expect("pod uid")
                    .to_string();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("pod {} could not be created", pod_name(i));
    });
    timing("CRDs, nodes and pods", t);

    let t = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("berth-burst-")
        .tempdir()
        .unwrap();
    let sockets: Vec<PathBuf> = (0..NODES)
        .map(|i| dir.path().join(format!("agent-{i}.sock")))
        .collect();
    let roles = shipped_roles(&cp);
    let mut agents: Vec<Daemon> = (0..NODES)
        .map(|i| start_agent(&roles.agent, &sockets[i], &node_name(i)))
        .collect();
    let confs: Vec<Value> = (0..NODES)
        .map(|i| conf(&sockets[i], &node_name(i)))
        .collect();
    timing("agents", t);

    // The burst, with the apiserver restarted once RESTART_AFTER ADDs have succeeded.
    let cni = runtime().timeout(Duration::from_secs(70));
    let succeeded = AtomicUsize::new(0);
    let restart: Mutex<Option<(Instant, Instant, usize)>> = Mutex::new(None);
    let burst_start = Instant::now();
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let restarter = s.spawn(|| {
            while succeeded.load(Ordering::SeqCst) < RESTART_AFTER {
                if burst_start.elapsed() > BURST_DEADLINE {
                    return Err("the burst never reached the restart point".to_string());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let at = succeeded.load(Ordering::SeqCst);
            let began = Instant::now();
            cp.restart_apiserver().map_err(|e| format!("{e:#}"))?;
            *restart.lock().unwrap() = Some((began, Instant::now(), at));
            Ok(())
        });
        let outcomes = par_map(PODS, THREADS, |i| {
            let node = i % NODES;
            let mut o = Outcome::default();
            let mut attempt = 0;
            loop {
                attempt += 1;
                let cid = format!("burst-{i:03}-a{attempt}");
                let tg = target(&cid, &pod_name(i), &uids[i]);
                let began = burst_start.elapsed();
                let out = ipam(&cni, CniCommand::Add, Some(&tg), &confs[node]);
                if out.elapsed > Duration::from_secs(1) {
                    o.slow
                        .push(("ADD", cid.clone(), began, out.elapsed, out.success()));
                }
                if out.success() {
                    let result = out.ok().expect("ADD result");
                    o.done = Some((cid, result_addrs(&result)));
                    o.finished = Some(burst_start.elapsed());
                    succeeded.fetch_add(1, Ordering::SeqCst);
                    return o;
                }
                // Must be a CNI error object on stdout (checked by cni_error_code).
                let code = cni_error_code(&out);
                let msg = out
                    .json
                    .as_ref()
                    .map(|j| j["msg"].to_string())
                    .unwrap_or_default();
                o.failed_adds.push((cid.clone(), code, msg));
                o.last_failure = Some(burst_start.elapsed());
                if code != 11 || burst_start.elapsed() > BURST_DEADLINE {
                    o.gave_up = Some(format!("{cid}: {}", out.stdout));
                    return o;
                }
                // The runtime tears the failed sandbox down (DEL, retried until it succeeds), and
                // the kubelet then creates a new sandbox.
                loop {
                    let began = burst_start.elapsed();
                    let del = ipam(&cni, CniCommand::Del, Some(&tg), &confs[node]);
                    if del.elapsed > Duration::from_secs(1) {
                        o.slow
                            .push(("DEL", cid.clone(), began, del.elapsed, del.success()));
                    }
                    if del.success() {
                        break;
                    }
                    let code = cni_error_code(&del);
                    o.failed_dels.push((cid.clone(), code));
                    o.last_failure = Some(burst_start.elapsed());
                    if code != 11 || burst_start.elapsed() > BURST_DEADLINE {
                        o.gave_up = Some(format!("DEL {cid}: {}", del.stdout));
                        return o;
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        let r = restarter.join().expect("restart thread panicked");
        if let Err(e) = r {
            panic!("restarting the apiserver: {e}");
        }
        outcomes
    });
    let burst = burst_start.elapsed();
    let (began, ended, done_before) = restart.lock().unwrap().expect("the apiserver restarted");
    eprintln!(
        "[timing] burst: {burst:.2?}; apiserver restart {:.2?}..{:.2?} after the burst began, \
         {done_before} ADDs had succeeded when it began",
        began - burst_start,
        ended - burst_start,
    );

    let last_failure = outcomes.iter().filter_map(|o| o.last_failure).max();
    let last_success = outcomes.iter().filter_map(|o| o.finished).max();
    eprintln!("last failure at {last_failure:.2?}, last successful ADD at {last_success:.2?}");
    let mut slow: Vec<_> = outcomes
        .iter()
        .flat_map(|o| o.slow.iter().cloned())
        .collect();
    slow.sort_by_key(|s| s.2);
    eprintln!(
        "{} invocations took over 1 s; the first and last: {:?} {:?}",
        slow.len(),
        slow.first(),
        slow.last()
    );
    if std::env::var_os("BURST_AGENT_LOG").is_some() {
        for s in &slow {
            eprintln!("slow: {s:?}");
        }
        eprintln!("agent 0 log:\n{}", agents[0].log());
    }

    // Every pod ended with a successful ADD, and failures were CNI "try again" errors only.
    let gave_up: Vec<_> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.gave_up.as_ref().map(|g| (pod_name(i), g.clone())))
        .collect();
    assert!(
        gave_up.is_empty(),
        "pods that never got an address: {gave_up:#?}"
    );
    let failed_adds: Vec<&(String, u64, String)> =
        outcomes.iter().flat_map(|o| &o.failed_adds).collect();
    let failed_dels: usize = outcomes.iter().map(|o| o.failed_dels.len()).sum();
    eprintln!(
        "failed ADDs (retried): {}, failed DELs of failed sandboxes (retried): {failed_dels}; \
         first: {:?}",
        failed_adds.len(),
        failed_adds.first()
    );
    assert!(
        failed_adds.iter().all(|(_, code, _)| *code == 11),
        "an ADD failed with a code other than 11: {failed_adds:#?}"
    );
    // The restart really happened mid-burst: ADDs were still to come and some of them hit it.
    assert!(
        done_before < PODS,
        "the burst was over before the restart began"
    );
    assert!(
        !failed_adds.is_empty(),
        "no ADD failed although the apiserver restarted mid-burst ({done_before} of {PODS} done \
         when it began): the test did not exercise the restart"
    );

    // Exactly one address per pod, all distinct.
    let mut by_addr: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut final_sandbox: BTreeMap<String, IpAddr> = BTreeMap::new();
    for (i, o) in outcomes.iter().enumerate() {
        let (cid, addrs) = o.done.as_ref().expect("checked above");
        assert_eq!(addrs.len(), 1, "{} got {addrs:?}", pod_name(i));
        if let Some(other) = by_addr.insert(addrs[0], pod_name(i)) {
            panic!(
                "DUPLICATE: {} and {other} both got {}",
                pod_name(i),
                addrs[0]
            );
        }
        final_sandbox.insert(cid.clone(), addrs[0]);
    }
    assert_eq!(by_addr.len(), PODS);

    // The ledger, read fresh through the restarted apiserver: audit clean, and the bindings are
    // exactly the final sandboxes' addresses (no leak from failed attempts).
    let (code, out, err) = berth_kube(&cp, "audit", false);
    assert_eq!(code, 0, "berth audit failed:\n{out}\n{err}");
    assert!(err.contains("audit clean"), "berth audit: {out}\n{err}");
    let (code, out, err) = berth_kube(&cp, "bindings", true);
    assert_eq!(code, 0, "berth bindings failed:\n{out}\n{err}");
    let all: Vec<Value> = serde_json::from_str(&out).expect("bindings JSON");
    let by_ctr = bindings_by_container(&all, NETWORK);
    let in_ledger: BTreeMap<String, Vec<IpAddr>> = by_ctr
        .iter()
        .map(|(c, v)| (c.clone(), v.iter().map(|(a, _, _)| *a).collect()))
        .collect();
    let want: BTreeMap<String, Vec<IpAddr>> = final_sandbox
        .iter()
        .map(|(c, a)| (c.clone(), vec![*a]))
        .collect();
    if in_ledger != want {
        let extra: BTreeSet<_> = in_ledger
            .keys()
            .filter(|c| !want.contains_key(*c))
            .collect();
        let missing: BTreeSet<_> = want
            .keys()
            .filter(|c| !in_ledger.contains_key(*c))
            .collect();
        panic!(
            "the ledger's bindings differ from the pods' addresses: {} in the ledger, {} pods; \
             sandboxes only in the ledger (leaked): {extra:?}; missing: {missing:?}",
            in_ledger.values().map(Vec::len).sum::<usize>(),
            want.len()
        );
    }
    // Each binding names its pod with the pod's UID and the node whose agent made it.
    for (cid, held) in &by_ctr {
        let i: usize = cid["burst-".len()..cid.len()]
            .split('-')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("sandbox id");
        for (addr, node, b) in held {
            assert_eq!(node, &node_name(i % NODES), "binding {addr}: {b}");
            assert_eq!(
                b["holder"]["attachment"]["pod"]["name"],
                pod_name(i),
                "binding {addr}: {b}"
            );
            assert_eq!(
                b["holder"]["attachment"]["pod"]["uid"], uids[i],
                "binding {addr}: {b}"
            );
        }
    }
    for (i, a) in agents.iter_mut().enumerate() {
        assert!(
            a.is_running(),
            "agent {} died:\n{}",
            node_name(i),
            a.log_tail(30)
        );
    }
    assert!(cp.apiserver_running());
    assert_no_forbidden(&cp);
    timing("whole test", t0);
}
