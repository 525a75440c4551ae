//! Pods with addresses that stay put, on a real control plane (kube-apiserver and
//! kube-controller-manager v1.20.2 from Debian's source) with real `berth agent` processes on the
//! Kubernetes ledger. The test plays scheduler (pods/binding) and kubelet (`berth-ipam` ADD/DEL
//! with the pod's CNI_ARGS); Deployments, ReplicaSets and StatefulSets are real controllers.
//!
//! Covered: seed 001 §4.3 (a Deployment's fixed-IP pod deleted, its replacement on another node
//! gets the same address), one live binding per address (the replacement waits, naming the
//! holder), bad annotations (CNI error and an Event), a pod the agent's watch has not seen yet,
//! Berth's dual-stack annotation, a StatefulSet ordinal keeping its address across nodes, a
//! Deployment's sticky set, the pool's policy (fixed addresses and sticky sets refused outside the
//! namespaces it lists, with an Event), and fencing of a node whose agent keeps running.
//!
//! The agents and the controller's rounds run as deploy/base/berth.yaml's ServiceAccounts with its
//! RBAC (tokens from the TokenRequest API); the test fails on any 403 to them.

mod common;

use berth_testbed::{require_root, CniCommand, CniOutput, CniTarget, Daemon, KubeControlPlane};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const BERTH_IPAM: &str = env!("CARGO_BIN_EXE_berth-ipam");
const NS: &str = "default";

struct World {
    cp: KubeControlPlane,
    dir: tempfile::TempDir,
    agents: Vec<Daemon>,
    roles: common::Roles,
}

impl World {
    fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.cp.request(method, path, body.as_ref()).unwrap();
        r.ok().unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
    }

    fn socket(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.sock"))
    }

    fn conf(&self, node: &str) -> Value {
        json!({
            "cniVersion": "1.0.0", "name": "k8snetwork", "type": "macvlan",
            "ipam": {
                "name": "kube-subnet", "type": "kube-ipam",
                "ranges": [
                    [{"subnet": "198.18.0.0/16", "gateway": "198.18.0.1",
                      "fixedStart": "198.18.0.10", "fixedEnd": "198.18.0.255",
                      "rangeStart": "198.18.1.0", "rangeEnd": "198.18.255.254"}],
                    [{"subnet": "2001:db8:7::/64", "gateway": "2001:db8:7::1",
                      "fixedStart": "2001:db8:7::10", "fixedEnd": "2001:db8:7::ff",
                      "rangeStart": "2001:db8:7::100", "rangeEnd": "2001:db8:7::ffff"}]
                ],
                "agentSocket": self.socket(node),
                "ledger": "kubernetes",
                "policy": {"fixedNamespaces": [NS], "stickyNamespaces": [NS]},
            }
        })
    }

    /// Run berth-ipam as the kubelet on `node` would for `pod`.
    fn cni(&self, command: &str, node: &str, pod: &Value) -> CniOutput {
        self.cni_with(command, node, pod, self.conf(node))
    }

    /// [`cni`](Self::cni) with another network configuration.
    fn cni_with(&self, command: &str, node: &str, pod: &Value, conf: Value) -> CniOutput {
        let _ = node;
        let name = pod["metadata"]["name"].as_str().unwrap();
        let uid = pod["metadata"]["uid"].as_str().unwrap();
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or(NS);
        let target = CniTarget {
            container_id: format!("sandbox-{uid}"),
            netns: PathBuf::from("/var/run/netns/none"),
            ifname: "eth0".into(),
            args: Some(format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_UID={uid}"
            )),
        };
        let cni = berth_testbed::Cni::new([Path::new(BERTH_IPAM).parent().unwrap()])
            .timeout(Duration::from_secs(30));
        let cmd = match command {
            "ADD" => CniCommand::Add,
            "DEL" => CniCommand::Del,
            _ => panic!("{command}"),
        };
        cni.exec_plugin("berth-ipam", cmd, Some(&target), &conf)
            .unwrap()
    }

    fn add_ok(&self, node: &str, pod: &Value) -> Vec<String> {
        let out = self.cni("ADD", node, pod);
        let v = out.ok().unwrap_or_else(|e| panic!("ADD: {e:#}"));
        v["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap().to_string())
            .collect()
    }

    /// Act as the scheduler: bind a pod to a node.
    fn schedule(&self, pod: &Value, node: &str) -> Value {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or(NS);
        self.api(
            "POST",
            &format!("/api/v1/namespaces/{ns}/pods/{name}/binding"),
            Some(
                json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": node}}),
            ),
        );
        self.api("GET", &format!("/api/v1/namespaces/{ns}/pods/{name}"), None)
    }

    /// Pods matching a label selector, waiting until there are `n` not being deleted.
    fn pods(&self, selector: &str, n: usize) -> Vec<Value> {
        self.pods_in(NS, selector, n)
    }

    /// [`pods`](Self::pods) in namespace `ns`.
    fn pods_in(&self, ns: &str, selector: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list = self.api(
                "GET",
                &format!("/api/v1/namespaces/{ns}/pods?labelSelector={selector}"),
                None,
            );
            let live: Vec<Value> = list["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .cloned()
                .collect();
            if live.len() == n {
                return live;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {n} pods {selector}: {list}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Delete a pod at once, as after its kubelet has torn it down.
    fn delete_pod(&self, pod: &Value) {
        let name = pod["metadata"]["name"].as_str().unwrap();
        self.api(
            "DELETE",
            &format!("/api/v1/namespaces/{NS}/pods/{name}?gracePeriodSeconds=0"),
            None,
        );
    }

    /// The CLI's ledger options: an operator's (admin) kubeconfig.
    fn ledger_args(&self) -> Vec<String> {
        vec![
            "--ledger".into(),
            "kubernetes".into(),
            "--kubeconfig".into(),
            self.cp.kubeconfig().display().to_string(),
        ]
    }

    /// A client and ledger as the controller's ServiceAccount (deploy/'s RBAC).
    async fn controller(&self) -> (kube::Client, berth_k8s::KubeLedger) {
        let (client, _) = berth_k8s::client(Some(&self.roles.controller))
            .await
            .unwrap();
        (client.clone(), berth_k8s::KubeLedger::new(client))
    }

    /// The Warning Event with `reason` on pod `ns/name`, waited for.
    fn event(&self, ns: &str, name: &str, reason: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ev = self.api(
                "GET",
                &format!(
                    "/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.name={name},reason={reason}"
                ),
                None,
            );
            if let Some(e) = ev["items"].as_array().and_then(|a| a.first()) {
                assert_eq!(e["type"], "Warning", "{e}");
                return e.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {reason} Event on {ns}/{name}: {ev}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn audit(&self) {
        let out = Command::new(BERTH)
            .arg("audit")
            .args(self.ledger_args())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "audit: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn template(labels: Value, annotations: Value) -> Value {
    json!({
        "metadata": {"labels": labels, "annotations": annotations},
        "spec": {"containers": [{"name": "c", "image": "berth.invalid/none:1", "imagePullPolicy": "Never"}]}
    })
}

fn world() -> World {
    require_root();
    let cp = KubeControlPlane::start().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, _) = berth_k8s::client(Some(cp.kubeconfig())).await.unwrap();
        berth_k8s::crd::install(&client, Duration::from_secs(30))
            .await
            .unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let roles = common::shipped_roles(&cp);
    let mut w = World {
        cp,
        dir,
        agents: vec![],
        roles,
    };
    for node in ["node-a", "node-b", "node-c"] {
        w.api(
            "POST",
            "/api/v1/nodes",
            Some(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})),
        );
        let mut cmd = Command::new(BERTH);
        cmd.args(["agent", "--node", node, "--pod-wait", "1s", "--socket"])
            .arg(w.socket(node))
            .args(["--ledger", "kubernetes", "--kubeconfig"])
            .arg(&w.roles.agent)
            .env("BERTH_LOG", "info");
        let d = Daemon::spawn(&format!("agent-{node}"), cmd, None).unwrap();
        w.agents.push(d);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in ["node-a", "node-b", "node-c"] {
        while std::os::unix::net::UnixStream::connect(w.socket(node)).is_err() {
            assert!(Instant::now() < deadline, "agent {node} did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    w
}

fn code(out: &CniOutput) -> u64 {
    assert!(!out.success(), "expected a failure: {}", out.stdout);
    out.json
        .as_ref()
        .and_then(|j| j["code"].as_u64())
        .unwrap_or(0)
}

fn msg(out: &CniOutput) -> String {
    out.json
        .as_ref()
        .and_then(|j| j["msg"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn pods_keep_their_addresses_across_nodes() {
    let mut w = world();

    // Seed 001 §4.1–4.3: a Deployment whose pod template carries kube-ipam's annotations.
    w.api(
        "POST",
        &format!("/apis/apps/v1/namespaces/{NS}/deployments"),
        Some(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "fixed-ip-test"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"k8s-app": "cloudnativer-test"}},
                "template": template(
                    json!({"k8s-app": "cloudnativer-test"}),
                    json!({"kube-ipam.ip": "198.18.0.216", "kube-ipam.netmask": "255.255.0.0",
                           "kube-ipam.gateway": "198.18.0.1"})),
            }
        })),
    );
    let old = w.pods("k8s-app=cloudnativer-test", 1).remove(0);
    let old = w.schedule(&old, "node-a");
    let ips = w.add_ok("node-a", &old);
    // The annotated IPv4 address with the pool's prefix; the dual-stack pool adds an IPv6 one.
    assert_eq!(ips[0], "198.18.0.216/16");
    assert!(ips[1].starts_with("2001:db8:7::"), "{ips:?}");

    // The pod is deleted; the ReplicaSet makes a replacement, scheduled on the other node.
    w.delete_pod(&old);
    let new = w.pods("k8s-app=cloudnativer-test", 1).remove(0);
    assert_ne!(new["metadata"]["uid"], old["metadata"]["uid"]);
    let new = w.schedule(&new, "node-b");
    // The old sandbox is not torn down yet: one live binding per address, so try again later,
    // naming who holds it.
    let held = w.cni("ADD", "node-b", &new);
    assert_eq!(code(&held), 11, "{}", held.stdout);
    let old_name = old["metadata"]["name"].as_str().unwrap();
    assert!(
        msg(&held).contains(old_name),
        "names the holder: {}",
        msg(&held)
    );
    // node-a's kubelet tears the old sandbox down; the replacement gets the same address.
    w.cni("DEL", "node-a", &old).ok().unwrap();
    assert_eq!(w.add_ok("node-b", &new)[0], "198.18.0.216/16");

    // Berth's own annotation, dual-stack, on a plain pod.
    let pod = w.api(
        "POST",
        &format!("/api/v1/namespaces/{NS}/pods"),
        Some(json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "dual", "labels": {"app": "dual"},
                                 "annotations": {"berth.dev/ips": "198.18.0.20, 2001:db8:7::20"}},
                    "spec": {"nodeName": "node-a",
                             "containers": [{"name": "c", "image": "berth.invalid/none:1"}]}})),
    );
    assert_eq!(
        w.add_ok("node-a", &pod),
        ["198.18.0.20/16", "2001:db8:7::20/64"]
    );

    // A bad annotation: the CNI error names it, and an Event on the pod says so too.
    let bad = w.api(
        "POST",
        &format!("/api/v1/namespaces/{NS}/pods"),
        Some(json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "bad", "annotations": {"kube-ipam.ip": "198.18.0.300"}},
                    "spec": {"nodeName": "node-a",
                             "containers": [{"name": "c", "image": "berth.invalid/none:1"}]}})),
    );
    let out = w.cni("ADD", "node-a", &bad);
    assert_eq!(code(&out), 7);
    assert!(
        msg(&out).contains("kube-ipam.ip") && msg(&out).contains("198.18.0.300"),
        "{}",
        msg(&out)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = w.api(
            "GET",
            &format!(
                "/api/v1/namespaces/{NS}/events?fieldSelector=involvedObject.name=bad,reason=BerthBadAnnotation"
            ),
            None,
        );
        if let Some(e) = ev["items"].as_array().and_then(|a| a.first()) {
            assert!(e["message"].as_str().unwrap().contains("kube-ipam.ip"));
            assert_eq!(e["type"], "Warning");
            break;
        }
        assert!(Instant::now() < deadline, "no Event on the pod: {ev}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A pod the watch has never seen: wait briefly, then try again later.
    let ghost = json!({"metadata": {"name": "ghost", "uid": "ghost-uid"}});
    let t = Instant::now();
    let out = w.cni("ADD", "node-a", &ghost);
    assert_eq!(code(&out), 11, "{}", out.stdout);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "waited for the watch"
    );
    assert!(msg(&out).contains("ghost"));

    // A StatefulSet ordinal keeps its address when recreated on another node.
    w.api(
        "POST",
        &format!("/apis/apps/v1/namespaces/{NS}/statefulsets"),
        Some(json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "mysql"},
            "spec": {"replicas": 1, "serviceName": "mysql",
                     "selector": {"matchLabels": {"app": "mysql"}},
                     "template": template(json!({"app": "mysql"}), json!({}))}
        })),
    );
    let m0 = w.pods("app=mysql", 1).remove(0);
    assert_eq!(m0["metadata"]["name"], "mysql-0");
    let m0 = w.schedule(&m0, "node-a");
    let first = w.add_ok("node-a", &m0);
    assert_eq!(first.len(), 2);
    assert!(first[0].starts_with("198.18.") && !first[0].starts_with("198.18.0."));
    w.cni("DEL", "node-a", &m0).ok().unwrap();
    w.delete_pod(&m0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let m0b = loop {
        let p = w.pods("app=mysql", 1).remove(0);
        if p["metadata"]["uid"] != m0["metadata"]["uid"] {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "StatefulSet did not recreate mysql-0"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let m0b = w.schedule(&m0b, "node-b");
    assert_eq!(
        w.add_ok("node-b", &m0b),
        first,
        "same addresses on another node"
    );

    // A Deployment's sticky set of 2: pods take members; a third waits; a rollout reuses them.
    w.api(
        "POST",
        &format!("/apis/apps/v1/namespaces/{NS}/deployments"),
        Some(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "front"},
            "spec": {"replicas": 3,
                     "selector": {"matchLabels": {"app": "front"}},
                     "template": template(json!({"app": "front"}), json!({"berth.dev/sticky-set": "2"}))}
        })),
    );
    let fronts = w.pods("app=front", 3);
    let mut set = std::collections::BTreeSet::new();
    let mut waiting = vec![];
    let mut running = vec![];
    for (i, p) in fronts.iter().enumerate() {
        let node = if i % 2 == 0 { "node-a" } else { "node-b" };
        let p = w.schedule(p, node);
        let out = w.cni("ADD", node, &p);
        if out.success() {
            let v = out.json.clone().unwrap();
            set.insert(v["ips"][0]["address"].as_str().unwrap().to_string());
            running.push((
                node,
                p,
                v["ips"][0]["address"].as_str().unwrap().to_string(),
            ));
        } else {
            assert_eq!(code(&out), 11, "{}", out.stdout);
            waiting.push((node, p));
        }
    }
    assert_eq!(set.len(), 2, "two members handed out");
    assert_eq!(waiting.len(), 1, "the third pod waits for a member");
    // One running pod goes away (a rollout); the waiting pod gets exactly its member.
    let (gone_node, gone_pod, freed) = &running[0];
    w.cni("DEL", gone_node, gone_pod).ok().unwrap();
    let (node, p) = &waiting[0];
    assert_eq!(w.add_ok(node, p)[0], *freed);

    w.audit();

    // The controller writes pool usage into the Pool's status (kubectl's Used/Free columns).
    let out = Command::new(BERTH)
        .args(["bindings", "--json"])
        .args(w.ledger_args())
        .output()
        .unwrap();
    let bound = serde_json::from_slice::<Vec<Value>>(&out.stdout)
        .unwrap()
        .len() as u64;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let updated = rt.block_on(async {
        let (client, ledger) = w.controller().await;
        berth_controller::update_pool_status(&client, &ledger)
            .await
            .unwrap()
    });
    assert_eq!(updated, 1);
    let pools = w.api("GET", "/apis/berth.dev/v1alpha1/pools", None);
    let status = &pools["items"][0]["status"];
    assert_eq!(status["used"].as_u64(), Some(bound), "{status}");
    assert!(status["blocks"].as_u64().unwrap() >= 2, "{status}");
    let free = status["free"].as_u64().unwrap();
    assert!(
        free > 60_000 && free < u64::MAX,
        "IPv4 range 198.18.1.0-198.18.255.254 plus IPv6: {status}"
    );
    assert_eq!(status["conditions"][0]["type"], "Ready", "{status}");
    assert_eq!(status["conditions"][0]["status"], "True", "{status}");
    // A Pool a user writes that overlaps the pod pool is not ready, and says why; the older
    // pod pool stays ready.
    let overlap = json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Pool",
        "metadata": {"name": "overlapping"},
        "spec": {"use": "service", "subnets": [{"cidr": "198.18.7.0/28"}]}});
    w.api("POST", "/apis/berth.dev/v1alpha1/pools", Some(overlap));
    let updated = rt.block_on(async {
        let (client, ledger) = w.controller().await;
        berth_controller::update_pool_status(&client, &ledger)
            .await
            .unwrap()
    });
    assert_eq!(updated, 2);
    let o = w.api("GET", "/apis/berth.dev/v1alpha1/pools/overlapping", None);
    let ready = &o["status"]["conditions"][0];
    assert_eq!(ready["status"], "False", "{o}");
    assert_eq!(ready["reason"], "Overlaps", "{o}");
    let m = ready["message"].as_str().unwrap();
    assert!(
        m.contains("198.18.7.0/28") && m.contains("198.18.0.0/16"),
        "{m}"
    );
    let pools = w.api("GET", "/apis/berth.dev/v1alpha1/pools", None);
    let pods_pool = pools["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["name"] != "overlapping")
        .unwrap();
    assert_eq!(
        pods_pool["status"]["conditions"][0]["status"], "True",
        "{pods_pool}"
    );
    w.api("DELETE", "/apis/berth.dev/v1alpha1/pools/overlapping", None);

    // Fencing with the agent still running, under the agent's own ServiceAccount (its Node
    // watch needs deploy/'s `nodes` rule): while node-c is out of service its agent allocates
    // nothing (code 11); the controller releases node-c's bindings and reclaims its emptied block;
    // once the taint is gone the agent re-reads the ledger and allocates in a block it really
    // owns (the audit finds a binding in a reclaimed block otherwise). node-c holds no claimed
    // address: node-a's and node-b's blocks would not do, they hold addresses that claims keep
    // (mysql-0's, the sticky set's), so they are not empty (the controller's unit tests and
    // kube_controller.rs cover that).
    let early = w.api(
        "POST",
        &format!("/api/v1/namespaces/{NS}/pods"),
        Some(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "early"},
                    "spec": {"nodeName": "node-c",
                             "containers": [{"name": "c", "image": "berth.invalid/none:1"}]}}),
        ),
    );
    w.add_ok("node-c", &early);
    w.api(
        "PATCH",
        "/api/v1/nodes/node-c",
        Some(json!({"spec": {"taints": [{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]}})),
    );
    let late = w.api(
        "POST",
        &format!("/api/v1/namespaces/{NS}/pods"),
        Some(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "late"},
                    "spec": {"nodeName": "node-c",
                             "containers": [{"name": "c", "image": "berth.invalid/none:1"}]}}),
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = w.cni("ADD", "node-c", &late);
        if !out.success() && msg(&out).contains("out-of-service") {
            assert_eq!(code(&out), 11);
            break;
        }
        if out.success() {
            w.cni("DEL", "node-c", &late).ok().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the agent never saw the taint: {}",
            out.stdout
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = rt.block_on(async {
        let (client, ledger) = w.controller().await;
        berth_controller::round(&client, &ledger, Duration::from_secs(30))
            .await
            .unwrap()
    });
    assert!(report.bindings > 0 && report.blocks > 0, "{report:?}");
    w.api(
        "PATCH",
        "/api/v1/nodes/node-c",
        Some(json!({"spec": {"taints": null}})),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let ips = loop {
        let out = w.cni("ADD", "node-c", &late);
        if out.success() {
            break out.json.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "node-c never came back: {}",
            out.stdout
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(ips["ips"][0]["address"]
        .as_str()
        .unwrap()
        .starts_with("198.18."));
    w.audit();
    // Every ADD went through an agent: the direct path's data dir was never used.
    let fallback = w.dir.path().join("must-stay-empty");
    if fallback.exists() {
        let left: Vec<_> = std::fs::read_dir(&fallback)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(
            left.is_empty(),
            "the plugin allocated on its direct path: {left:?}"
        );
    }
    for a in w.agents.iter_mut() {
        assert!(a.is_running(), "an agent exited:\n{}", a.log_tail(20));
    }
    common::assert_no_forbidden(&w.cp);
}

/// The pool's policy on the real apiserver: outside the namespaces `ipam.policy` lists, a pod's
/// fixed address and a Deployment's sticky set are refused with code 7 and a Warning Event naming
/// the policy; a sticky set above `maxStickySet` too; a StatefulSet keeps its ordinal's address
/// in any namespace (the default).
#[test]
fn the_pools_policy_refuses_squatters() {
    let w = world();
    let squat = "squat";
    w.api(
        "POST",
        "/api/v1/namespaces",
        Some(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": squat}})),
    );
    w.cp.wait_default_service_account(squat, Duration::from_secs(60))
        .unwrap();

    // A fixed address asked for from a namespace that may not: code 7, an Event, nothing bound.
    let pod = w.api(
        "POST",
        &format!("/api/v1/namespaces/{squat}/pods"),
        Some(json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "taker", "annotations": {"berth.dev/ips": "198.18.0.30"}},
                    "spec": {"nodeName": "node-a",
                             "containers": [{"name": "c", "image": "berth.invalid/none:1"}]}})),
    );
    let out = w.cni("ADD", "node-a", &pod);
    assert_eq!(code(&out), 7, "{}", out.stdout);
    assert!(
        msg(&out).contains("policy.fixedNamespaces") && msg(&out).contains(squat),
        "{}",
        msg(&out)
    );
    let ev = w.event(squat, "taker", berth_agent::POLICY_REFUSED);
    assert!(
        ev["message"].as_str().unwrap().contains("fixedNamespaces"),
        "{ev}"
    );
    // The same address for a pod of a listed namespace: free, so bound.
    let ok = w.api(
        "POST",
        &format!("/api/v1/namespaces/{NS}/pods"),
        Some(json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "owner", "annotations": {"berth.dev/ips": "198.18.0.30"}},
                    "spec": {"nodeName": "node-a",
                             "containers": [{"name": "c", "image": "berth.invalid/none:1"}]}})),
    );
    assert_eq!(w.add_ok("node-a", &ok)[0], "198.18.0.30/16");

    // Sticky sets: refused outside stickyNamespaces, and above maxStickySet (default 16).
    for (ns, name, size, key) in [
        (squat, "hoard", "2", "policy.stickyNamespaces"),
        (NS, "big", "20", "policy.maxStickySet is 16"),
    ] {
        w.api(
            "POST",
            &format!("/apis/apps/v1/namespaces/{ns}/deployments"),
            Some(json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name},
                "spec": {"replicas": 1,
                         "selector": {"matchLabels": {"app": name}},
                         "template": template(json!({"app": name}), json!({"berth.dev/sticky-set": size}))}
            })),
        );
        let p = w.pods_in(ns, &format!("app={name}"), 1).remove(0);
        let p = w.schedule(&p, "node-b");
        let out = w.cni("ADD", "node-b", &p);
        assert_eq!(code(&out), 7, "{name}: {}", out.stdout);
        assert!(msg(&out).contains(key), "{name}: {}", msg(&out));
        let pname = p["metadata"]["name"].as_str().unwrap();
        let ev = w.event(ns, pname, berth_agent::POLICY_REFUSED);
        assert!(ev["message"].as_str().unwrap().contains(key), "{ev}");
    }
    // No claim was made for either.
    let claims = w.api("GET", "/apis/berth.dev/v1alpha1/claims", None);
    assert_eq!(
        claims["items"].as_array().unwrap().len(),
        0,
        "a refused sticky set left a claim: {claims}"
    );

    // A StatefulSet in a namespace no list names keeps its ordinal's address (a claim).
    w.api(
        "POST",
        &format!("/apis/apps/v1/namespaces/{squat}/statefulsets"),
        Some(json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "db"},
            "spec": {"replicas": 1, "serviceName": "db",
                     "selector": {"matchLabels": {"app": "db"}},
                     "template": template(json!({"app": "db"}), json!({}))}
        })),
    );
    let db = w.pods_in(squat, "app=db", 1).remove(0);
    let db = w.schedule(&db, "node-a");
    w.add_ok("node-a", &db);
    let claims = w.api("GET", "/apis/berth.dev/v1alpha1/claims", None);
    let ids: Vec<String> = claims["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["spec"]["key"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "{claims}");
    assert!(ids[0].contains("statefulset/squat/db/0"), "{ids:?}");
    w.audit();
    common::assert_no_forbidden(&w.cp);
}

/// A network configuration may name a Pool object a user applied (`ipam.pool`) instead of
/// defining the pool: the agent reads it from the ledger for each ADD. A missing Pool is "try
/// again" (code 11, naming it), a service Pool is refused (code 7), and a configuration that
/// names a Pool and defines subnets too is refused at parse time.
#[test]
fn a_cni_config_may_name_a_pool_object() {
    let w = world();
    w.api(
        "POST",
        "/apis/berth.dev/v1alpha1/pools",
        Some(json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Pool",
                    "metadata": {"name": "user-pods"},
                    "spec": {"use": "pod", "subnets": [{"cidr": "198.18.64.0/24", "blockSize": 28}]}})),
    );
    w.api(
        "POST",
        "/apis/berth.dev/v1alpha1/pools",
        Some(json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Pool",
                    "metadata": {"name": "lb"},
                    "spec": {"use": "service", "subnets": [{"cidr": "198.18.65.0/28"}]}})),
    );
    let conf = |pool: &str| {
        json!({"cniVersion": "1.0.0", "name": "userpodnet", "type": "macvlan",
               "ipam": {"type": "berth-ipam", "pool": pool, "ledger": "kubernetes",
                        "agentSocket": w.socket("node-a")}})
    };
    let pod = w.api(
        "POST",
        &format!("/api/v1/namespaces/{NS}/pods"),
        Some(json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "uses-a-pool"},
                    "spec": {"nodeName": "node-a",
                             "containers": [{"name": "c", "image": "berth.invalid/none:1"}]}})),
    );
    let out = w.cni_with("ADD", "node-a", &pod, conf("user-pods"));
    let r = out.ok().unwrap_or_else(|e| panic!("ADD: {e:#}"));
    let ip = r["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(ip.starts_with("198.18.64.") && ip.ends_with("/24"), "{r}");
    let blocks = w.api("GET", "/apis/berth.dev/v1alpha1/blocks", None);
    assert!(
        blocks["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["spec"]["pool"] == "user-pods"
                && b["spec"]["cidr"].as_str().unwrap().ends_with("/28")),
        "the Pool's blockSize is used: {blocks}"
    );
    // The Pool object is unchanged: the agent read it, it did not rewrite it from a config.
    let p = w.api("GET", "/apis/berth.dev/v1alpha1/pools/user-pods", None);
    assert_eq!(p["spec"]["subnets"][0]["cidr"], "198.18.64.0/24", "{p}");
    assert_eq!(p["metadata"]["generation"], 1, "{p}");
    let out = w.cni_with("ADD", "node-a", &pod, conf("nope"));
    assert_eq!(code(&out), 11, "{}", out.stdout);
    assert!(
        msg(&out).contains("\"nope\"") && msg(&out).contains("use: pod"),
        "{}",
        msg(&out)
    );
    let out = w.cni_with("ADD", "node-a", &pod, conf("lb"));
    assert_eq!(code(&out), 7, "{}", out.stdout);
    assert!(msg(&out).contains("service"), "{}", msg(&out));
    let mut both = conf("user-pods");
    both["ipam"]["subnet"] = json!("198.18.66.0/24");
    let out = w.cni_with("ADD", "node-a", &pod, both);
    assert_eq!(code(&out), 7, "{}", out.stdout);
    assert!(msg(&out).contains("ipam.subnet"), "{}", msg(&out));
    let out = w.cni_with("DEL", "node-a", &pod, conf("user-pods"));
    assert!(out.success(), "{}", out.stdout);
    common::assert_no_forbidden(&w.cp);
}
