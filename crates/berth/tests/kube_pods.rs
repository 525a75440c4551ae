//! Pods with addresses that stay put, on a real control plane (kube-apiserver and
//! kube-controller-manager v1.20.2 from Debian's source) with real `berth agent` processes on the
//! Kubernetes ledger. The test plays scheduler (pods/binding) and kubelet (`berth-ipam` ADD/DEL
//! with the pod's CNI_ARGS); Deployments, ReplicaSets and StatefulSets are real controllers.
//!
//! Covered: seed 001 §4.3 (a Deployment's fixed-IP pod deleted, its replacement on another node
//! gets the same address), one live binding per address (the replacement waits, naming the
//! holder), bad annotations (CNI error and an Event), a pod the agent's watch has not seen yet,
//! Berth's dual-stack annotation, a StatefulSet ordinal keeping its address across nodes, and a
//! Deployment's sticky set.

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
            }
        })
    }

    /// Run berth-ipam as the kubelet on `node` would for `pod`.
    fn cni(&self, command: &str, node: &str, pod: &Value) -> CniOutput {
        let name = pod["metadata"]["name"].as_str().unwrap();
        let uid = pod["metadata"]["uid"].as_str().unwrap();
        let target = CniTarget {
            container_id: format!("sandbox-{uid}"),
            netns: PathBuf::from("/var/run/netns/none"),
            ifname: "eth0".into(),
            args: Some(format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={name};K8S_POD_UID={uid}"
            )),
        };
        let cni = berth_testbed::Cni::new([Path::new(BERTH_IPAM).parent().unwrap()])
            .timeout(Duration::from_secs(30));
        let cmd = match command {
            "ADD" => CniCommand::Add,
            "DEL" => CniCommand::Del,
            _ => panic!("{command}"),
        };
        cni.exec_plugin("berth-ipam", cmd, Some(&target), &self.conf(node))
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
        self.api(
            "POST",
            &format!("/api/v1/namespaces/{NS}/pods/{name}/binding"),
            Some(
                json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                        "target": {"apiVersion": "v1", "kind": "Node", "name": node}}),
            ),
        );
        self.api("GET", &format!("/api/v1/namespaces/{NS}/pods/{name}"), None)
    }

    /// Pods matching a label selector, waiting until there are `n` not being deleted.
    fn pods(&self, selector: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list = self.api(
                "GET",
                &format!("/api/v1/namespaces/{NS}/pods?labelSelector={selector}"),
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

    fn ledger_args(&self) -> Vec<String> {
        vec![
            "--ledger".into(),
            "kubernetes".into(),
            "--kubeconfig".into(),
            self.cp.kubeconfig().display().to_string(),
        ]
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
    let mut w = World {
        cp,
        dir,
        agents: vec![],
    };
    for node in ["node-a", "node-b"] {
        w.api(
            "POST",
            "/api/v1/nodes",
            Some(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})),
        );
        let mut cmd = Command::new(BERTH);
        cmd.args(["agent", "--node", node, "--pod-wait", "1s", "--socket"])
            .arg(w.socket(node))
            .args(w.ledger_args())
            .env("BERTH_LOG", "info");
        let d = Daemon::spawn(&format!("agent-{node}"), cmd, None).unwrap();
        w.agents.push(d);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in ["node-a", "node-b"] {
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
    let w = world();

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
        let (client, _) = berth_k8s::client(Some(w.cp.kubeconfig())).await.unwrap();
        let ledger = berth_k8s::KubeLedger::new(client.clone());
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

    // Fencing with the agent still running: while node-b is out of service its agent allocates
    // nothing; the controller releases node-b's bindings and reclaims its emptied blocks; once
    // the taint is gone the agent re-reads the ledger and allocates in a block it really owns
    // (the audit finds a binding in a reclaimed block otherwise). node-a's blocks would not do:
    // they hold addresses that claims keep (mysql-0's, bound on node-b now).
    w.api(
        "PATCH",
        "/api/v1/nodes/node-b",
        Some(json!({"spec": {"taints": [{"key": "node.kubernetes.io/out-of-service", "effect": "NoExecute"}]}})),
    );
    let late = w.api(
        "POST",
        &format!("/api/v1/namespaces/{NS}/pods"),
        Some(
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "late"},
                    "spec": {"nodeName": "node-b",
                             "containers": [{"name": "c", "image": "berth.invalid/none:1"}]}}),
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = w.cni("ADD", "node-b", &late);
        if !out.success() && msg(&out).contains("out-of-service") {
            assert_eq!(code(&out), 11);
            break;
        }
        if out.success() {
            w.cni("DEL", "node-b", &late).ok().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "the agent never saw the taint: {}",
            out.stdout
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = rt.block_on(async {
        let (client, _) = berth_k8s::client(Some(w.cp.kubeconfig())).await.unwrap();
        let ledger = berth_k8s::KubeLedger::new(client.clone());
        berth_controller::round(&client, &ledger, Duration::from_secs(30))
            .await
            .unwrap()
    });
    assert!(report.bindings > 0 && report.blocks > 0, "{report:?}");
    w.api(
        "PATCH",
        "/api/v1/nodes/node-b",
        Some(json!({"spec": {"taints": null}})),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let ips = loop {
        let out = w.cni("ADD", "node-b", &late);
        if out.success() {
            break out.json.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "node-b never came back: {}",
            out.stdout
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(ips["ips"][0]["address"]
        .as_str()
        .unwrap()
        .starts_with("198.18."));
    w.audit();
}
