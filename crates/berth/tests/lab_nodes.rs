//! Berth on real nodes: a cluster of three nodes (containerd, kubelet, kube-proxy v1.20.2 in
//! network and mount namespaces of their own), with Berth deployed from deploy/overlays/lab by
//! `kubectl apply -k`, built by the same code as `berth lab up` (a unique prefix and state dir,
//! so it never meets a running `berth lab` or another test run).
//!
//! The tests of this binary share one cluster (bring-up is most of the cost) and run one at a
//! time; each works in a namespace of its own and deletes it, and a test that stops a node
//! powers it on again. The cluster is torn down when the test process exits (and by the next
//! run's sweep if the process was killed).

use berth_lab::{addr, image, Deploy, Lab, LabConfig};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

static SERIAL: Mutex<()> = Mutex::new(());
static LAB: OnceLock<Result<Lab, String>> = OnceLock::new();
static STATE_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn teardown_at_exit() {
    if let Some(d) = STATE_DIR.get() {
        let t = Instant::now();
        match berth_lab::state::teardown(d) {
            Ok(td) if td.leftovers.is_empty() => {
                eprintln!("[timing] lab teardown: {:.1?}", t.elapsed())
            }
            Ok(td) => eprintln!("lab teardown left: {}", td.leftovers.join("; ")),
            Err(e) => eprintln!("lab teardown: {e:#}"),
        }
    }
}

/// The shared lab (built on first use) and the lock that makes this test the only user.
fn shared() -> (MutexGuard<'static, ()>, &'static Lab) {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = LAB.get_or_init(|| {
        berth_testbed::require_root();
        berth_testbed::require_kube_binaries();
        let bins = berth_testbed::release::release_bins_once()
            .map_err(|e| format!("building the static release binaries: {e:#}"));
        let bins = match bins {
            Ok(b) => b,
            Err(e) => return Err(e),
        };
        let prefix = berth_testbed::unique_name("lab");
        let state_dir = std::env::temp_dir().join(&prefix);
        let _ = STATE_DIR.set(state_dir.clone());
        // SAFETY: registers a plain extern "C" function with no captured state.
        unsafe { libc::atexit(teardown_at_exit) };
        let cfg = LabConfig {
            prefix,
            state_dir,
            nodes: 3,
            bins,
            kube_bin: berth_testbed::kube_bin_dir(),
            detached: false,
            deploy: Deploy::Kustomize(
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/overlays/lab"),
            ),
            timeout: Duration::from_secs(300),
            keep_on_failure: false,
        };
        let t = Instant::now();
        let lab = Lab::up(cfg).map_err(|e| format!("{e:#}"))?;
        eprintln!("[timing] lab up (3 nodes): {:.1?}", t.elapsed());
        for (what, d) in lab.timings() {
            eprintln!("[timing]   {what}: {d:.1?}");
        }
        Ok(lab)
    });
    match lab {
        Ok(l) => (guard, l),
        Err(e) => panic!("the shared lab did not come up: {e}"),
    }
}

fn kubectl(lab: &Lab, args: &[&str]) -> String {
    lab.kubectl(args)
        .unwrap_or_else(|e| panic!("kubectl {}: {e:#}", args.join(" ")))
}

/// `externalTrafficPolicy: Local` on Service `svc` in `ns`.
fn local_traffic(lab: &Lab, ns: &str, svc: &str) {
    kubectl(
        lab,
        &[
            "patch",
            "service",
            svc,
            "-n",
            ns,
            "-p",
            r#"{"spec":{"externalTrafficPolicy":"Local"}}"#,
        ],
    );
}

/// `kubectl apply -f -` of one JSON object.
fn apply(lab: &Lab, obj: &Value) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), obj.to_string()).unwrap();
    kubectl(lab, &["apply", "-f", &f.path().display().to_string()]);
}

fn get(lab: &Lab, path: &str) -> Value {
    lab.request("GET", path, None)
        .and_then(|r| r.ok())
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
}

/// A namespace of the test's own, with its default ServiceAccount ready; deleted on Drop.
struct TestNs<'a> {
    lab: &'a Lab,
    name: String,
}

impl<'a> TestNs<'a> {
    fn new(lab: &'a Lab, name: &str) -> TestNs<'a> {
        let _ = lab.kubectl(&["delete", "namespace", name, "--wait=true"]);
        kubectl(lab, &["create", "namespace", name]);
        lab.control_plane()
            .wait_default_service_account(name, Duration::from_secs(60))
            .unwrap();
        TestNs {
            lab,
            name: name.to_string(),
        }
    }
}

impl Drop for TestNs<'_> {
    fn drop(&mut self) {
        let _ = self.lab.kubectl(&[
            "delete",
            "namespace",
            &self.name,
            "--wait=true",
            "--timeout=120s",
        ]);
    }
}

/// An echo Deployment (the lab's test server image, never pulled).
fn echo_deployment(
    name: &str,
    ns: &str,
    replicas: u32,
    pod_spec_extra: Value,
    annotations: Value,
) -> Value {
    let mut spec = json!({
        "terminationGracePeriodSeconds": 2,
        "containers": [{
            "name": "echo",
            "image": image::ECHO_IMAGE,
            "imagePullPolicy": "Never",
            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "ports": [{"containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
        }],
    });
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), pod_spec_extra.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": spec,
            },
        },
    })
}

/// Pods of `app` in `ns` that are Ready (not being deleted): name → (node, podIP, uid, podIPs).
fn ready_pods(
    lab: &Lab,
    ns: &str,
    app: &str,
) -> BTreeMap<String, (String, String, String, Vec<String>)> {
    let v = get(
        lab,
        &format!("/api/v1/namespaces/{ns}/pods?labelSelector=app%3D{app}"),
    );
    let mut out = BTreeMap::new();
    for p in v["items"].as_array().into_iter().flatten() {
        if p["metadata"]["deletionTimestamp"].is_string() {
            continue;
        }
        let ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        });
        if !ready {
            continue;
        }
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let ips = p["status"]["podIPs"]
            .as_array()
            .map(|a| a.iter().map(|i| s(&i["ip"])).collect())
            .unwrap_or_default();
        out.insert(
            s(&p["metadata"]["name"]),
            (
                s(&p["spec"]["nodeName"]),
                s(&p["status"]["podIP"]),
                s(&p["metadata"]["uid"]),
                ips,
            ),
        );
    }
    out
}

fn wait_ready_pods(
    lab: &Lab,
    ns: &str,
    app: &str,
    n: usize,
    timeout: Duration,
) -> BTreeMap<String, (String, String, String, Vec<String>)> {
    let t = Instant::now();
    loop {
        let p = ready_pods(lab, ns, app);
        if p.len() == n {
            return p;
        }
        if t.elapsed() > timeout {
            let all = lab
                .kubectl(&["get", "pods", "-n", ns, "-o", "wide"])
                .unwrap_or_default();
            let events = lab
                .kubectl(&["get", "events", "-n", ns, "--sort-by=.lastTimestamp"])
                .unwrap_or_default();
            panic!(
                "{n} Ready pods of {ns}/{app} not there after {timeout:?} (have {}):\n{all}\n{events}\nagents:\n{}",
                p.len(),
                agent_logs(lab)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The last lines of every agent's log, for a failure's message.
fn agent_logs(lab: &Lab) -> String {
    lab.kubectl(&[
        "logs",
        "-n",
        "berth-system",
        "-l",
        "app.kubernetes.io/name=berth-agent",
        "--prefix",
        "--tail=40",
    ])
    .unwrap_or_else(|e| format!("(no agent logs: {e:#})"))
}

fn in_pod_cidr(ip: &str) -> bool {
    let a: Ipv4Addr = ip.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
    let net: Ipv4Addr = "198.18.64.0".parse().unwrap();
    u32::from(a) & 0xffff_c000 == u32::from(net)
}

/// `berth SUB --json` on the cluster's ledger (the Kubernetes ledger, through the relay).
fn berth_json(lab: &Lab, sub: &str) -> Vec<Value> {
    let out = Command::new(BERTH)
        .args([sub, "--json", "--ledger", "kubernetes", "--kubeconfig"])
        .arg(lab.kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "berth {sub}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `berth bindings --json` on the cluster's ledger.
fn bindings(lab: &Lab) -> Vec<Value> {
    berth_json(lab, "bindings")
}

fn assert_audit_clean(lab: &Lab) {
    let out = Command::new(BERTH)
        .args(["audit", "--ledger", "kubernetes", "--kubeconfig"])
        .arg(lab.kubeconfig())
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && e.contains("audit clean"),
        "berth audit:\n{o}\n{e}"
    );
}

/// The bindings in the ledger whose pod does not exist (with that UID).
fn bindings_without_pod(lab: &Lab) -> Vec<Value> {
    let pods = get(lab, "/api/v1/pods");
    let uids: BTreeSet<String> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["metadata"]["uid"].as_str().map(String::from))
        .collect();
    bindings(lab)
        .into_iter()
        .filter(|b| {
            !uids.contains(
                b["holder"]["attachment"]["pod"]["uid"]
                    .as_str()
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// The echo server's answer to a GET, fetched with curl inside a namespace or on a node.
fn curl_json(mut cmd: Command, url: &str) -> Option<Value> {
    let out = cmd
        .args(["-sS", "--max-time", "3", "--noproxy", "*", url])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn timing(what: &str, t: Instant) {
    eprintln!("[timing] {what}: {:.1?}", t.elapsed());
}

#[test]
fn a_cluster_of_three_real_nodes_runs_berth_from_deploy() {
    let (_g, lab) = shared();
    let t = Instant::now();
    let nodes = get(lab, "/api/v1/nodes");
    let items = nodes["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    for (i, n) in lab.nodes().iter().enumerate() {
        let obj = items
            .iter()
            .find(|o| o["metadata"]["name"] == n.name())
            .unwrap_or_else(|| panic!("no Node {}", n.name()));
        assert_eq!(obj["status"]["nodeInfo"]["kubeletVersion"], "v1.20.2");
        assert_eq!(obj["status"]["nodeInfo"]["kubeProxyVersion"], "v1.20.2");
        assert!(obj["status"]["nodeInfo"]["containerRuntimeVersion"]
            .as_str()
            .unwrap()
            .starts_with("containerd://1.6"));
        let internal: Vec<&str> = obj["status"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["type"] == "InternalIP")
            .filter_map(|a| a["address"].as_str())
            .collect();
        assert_eq!(internal, [addr::node(i + 1).as_str()]);
        // No route out of the node: only the LAN and the far segment via the router.
        let routes = lab.netns(&format!("node{}", i + 1)).routes().unwrap();
        assert!(
            !routes
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["dst"] == "default"),
            "{}: {routes}",
            n.name()
        );
        // The DaemonSet's init container installed the plugin and the overlay's conflist.
        let conf =
            std::fs::read_to_string(n.spec.backing("/etc/cni/net.d").join("10-berth.conflist"))
                .unwrap();
        assert_eq!(
            conf,
            include_str!("../../../deploy/overlays/lab/10-berth.conflist")
        );
        // The plugin and its direct path, both the image's.
        for file in ["berth-ipam", "berth-ipam-direct"] {
            let plugin = std::fs::read(n.spec.backing("/opt/cni/bin").join(file)).unwrap();
            let built = std::fs::read(
                berth_testbed::release::release_bins_once()
                    .unwrap()
                    .join(file),
            )
            .unwrap();
            assert!(
                plugin == built,
                "{}: /opt/cni/bin/{file} is not the image's",
                n.name()
            );
        }
        assert!(
            berth_lab::agent_answers(&n.agent_socket()),
            "agent on {}",
            n.name()
        );
        // The host's mount namespace never sees the node's files.
        assert!(
            !std::path::Path::new("/etc/cni/net.d/10-berth.conflist").exists()
                || std::fs::read_to_string("/etc/cni/net.d/10-berth.conflist").unwrap() != conf
        );
    }
    // Berth's pods run the lab's image; the apiserver reaches kubelets (logs) over InternalIP.
    let ds = get(
        lab,
        "/apis/apps/v1/namespaces/berth-system/daemonsets/berth-agent",
    );
    assert_eq!(ds["status"]["numberReady"], 3, "{}", ds["status"]);
    assert_eq!(
        ds["spec"]["template"]["spec"]["containers"][0]["image"],
        image::BERTH_IMAGE
    );
    let pods = get(
        lab,
        "/api/v1/namespaces/berth-system/pods?labelSelector=app.kubernetes.io%2Fname%3Dberth-agent",
    );
    let pod = pods["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let logs = kubectl(
        lab,
        &["logs", "-n", "berth-system", &pod, "-c", "install-cni"],
    );
    for file in ["berth-ipam", "berth-ipam-direct"] {
        assert!(
            logs.contains(&format!("installed /host/opt/cni/bin/{file} ")),
            "{logs}"
        );
    }
    timing("a_cluster_of_three_real_nodes_runs_berth_from_deploy", t);
}

#[test]
fn six_pods_over_three_nodes_get_berth_addresses() {
    let (_g, lab) = shared();
    let t = Instant::now();
    // The agent may read a pod its watch has not shown yet, and nothing it is not pointed at.
    let agent_may = |verb: &str, what: &str| {
        let who = "--as=system:serviceaccount:berth-system:berth-agent";
        matches!(lab.kubectl(&["auth", "can-i", verb, what, "-A", who]), Ok(o) if o.trim() == "yes")
    };
    assert!(agent_may("get", "pods") && agent_may("watch", "pods"));
    assert!(!agent_may("delete", "pods") && !agent_may("get", "secrets"));
    // Secrets: get in Berth's own namespace only (a BGPPeer's password), never list.
    let in_berth = |verb: &str| {
        let who = "--as=system:serviceaccount:berth-system:berth-agent";
        matches!(lab.kubectl(&["auth", "can-i", verb, "secrets", "-n", "berth-system", who]), Ok(o) if o.trim() == "yes")
    };
    assert!(in_berth("get") && !in_berth("list") && !in_berth("watch"));
    let ns = TestNs::new(lab, "six");
    let spread = json!({"topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}},
    }]});
    apply(lab, &echo_deployment("web", &ns.name, 6, spread, json!({})));
    let pods = wait_ready_pods(lab, &ns.name, "web", 6, Duration::from_secs(180));
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ips = BTreeSet::new();
    for (name, (node, ip, _, podips)) in &pods {
        *per_node.entry(node.as_str()).or_default() += 1;
        assert!(in_pod_cidr(ip), "{name}: {ip} is not from the lab's pool");
        assert_eq!(podips.first(), Some(ip), "{name}: status.podIPs");
        assert!(ips.insert(ip.clone()), "{ip} given twice");
    }
    assert_eq!(per_node.len(), 3, "{per_node:?}");
    assert!(per_node.values().all(|c| *c == 2), "{per_node:?}");
    // The ledger holds one binding per pod, on the pod's node, and nothing else in this ns.
    let all = bindings(lab);
    let mine: Vec<&Value> = all
        .iter()
        .filter(|b| b["holder"]["attachment"]["pod"]["namespace"] == ns.name.as_str())
        .collect();
    assert_eq!(mine.len(), 6, "{mine:?}");
    for (name, (node, ip, uid, _)) in &pods {
        let b = mine
            .iter()
            .find(|b| b["address"] == ip.as_str())
            .unwrap_or_else(|| panic!("no binding for {name} {ip}"));
        assert_eq!(b["holder"]["attachment"]["pod"]["name"], name.as_str());
        assert_eq!(b["holder"]["attachment"]["pod"]["uid"], uid.as_str());
        assert_eq!(b["node"], node.as_str());
    }
    assert_audit_clean(lab);
    // Each pod serves on its address, seen from its node.
    for (name, (node, ip, _, _)) in &pods {
        let n = lab.nodes().iter().find(|n| n.name() == node).unwrap();
        let v = curl_json(n.command("curl"), &format!("http://{ip}:8080/"))
            .unwrap_or_else(|| panic!("{name} at {ip} does not answer from {node}"));
        assert_eq!(v["pod"], name.as_str());
    }
    timing("six_pods_over_three_nodes_get_berth_addresses", t);
}

#[test]
fn outside_reaches_a_nodeport_and_a_clusterip_through_a_node() {
    let (_g, lab) = shared();
    let t = Instant::now();
    let ns = TestNs::new(lab, "svc");
    let node1 = &lab.nodes()[0];
    let pin = json!({"nodeSelector": {"kubernetes.io/hostname": node1.name()}});
    apply(lab, &echo_deployment("echo", &ns.name, 1, pin, json!({})));
    let pods = wait_ready_pods(lab, &ns.name, "echo", 1, Duration::from_secs(120));
    let pod = pods.keys().next().unwrap().clone();
    apply(
        lab,
        &json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "echo", "namespace": ns.name},
            "spec": {"type": "NodePort", "selector": {"app": "echo"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        }),
    );
    let svc = get(
        lab,
        &format!("/api/v1/namespaces/{}/services/echo", ns.name),
    );
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!(
        cluster_ip.starts_with("198.18.")
            && berth_testbed::is_test_addr(cluster_ip.parse().unwrap())
    );
    let outside = lab.netns("outside");
    let url = format!("http://{}:{node_port}/", node1.ip());
    let v = berth_testbed::wait_for(
        "the NodePort from outside",
        Duration::from_secs(60),
        Duration::from_millis(300),
        || curl_json(outside.command("curl"), &url),
    )
    .unwrap();
    assert_eq!(v["pod"], pod.as_str(), "{v}");
    // A ClusterIP, through a route via the node (as a router would have).
    outside
        .ip(["route", "add", addr::SERVICE_CIDR, "via", node1.ip()])
        .unwrap();
    let url = format!("http://{cluster_ip}:80/");
    let got = berth_testbed::wait_for(
        "the ClusterIP from outside",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || curl_json(outside.command("curl"), &url),
    );
    outside.ip(["route", "del", addr::SERVICE_CIDR]).unwrap();
    assert_eq!(got.unwrap()["pod"], pod.as_str());
    timing(
        "outside_reaches_a_nodeport_and_a_clusterip_through_a_node",
        t,
    );
}

/// Seed 001: a pod with a fixed address is deleted; its replacement, on another node, comes up
/// with the same address.
#[test]
fn a_fixed_address_moves_with_its_pod_to_another_node() {
    let (_g, lab) = shared();
    let t = Instant::now();
    let ns = TestNs::new(lab, "fixed");
    let fixed = "198.18.64.20";
    apply(
        lab,
        &echo_deployment(
            "db",
            &ns.name,
            1,
            json!({}),
            json!({"berth.dev/ips": fixed}),
        ),
    );
    let pods = wait_ready_pods(lab, &ns.name, "db", 1, Duration::from_secs(120));
    let (old_name, (old_node, ip, _, _)) = pods.into_iter().next().unwrap();
    assert_eq!(ip, fixed);
    kubectl(lab, &["cordon", &old_node]);
    kubectl(
        lab,
        &["delete", "pod", "-n", &ns.name, &old_name, "--wait=false"],
    );
    let pods = berth_testbed::wait_for(
        "the replacement pod",
        Duration::from_secs(180),
        Duration::from_millis(500),
        || {
            let p = ready_pods(lab, &ns.name, "db");
            p.into_iter().find(|(n, _)| *n != old_name)
        },
    );
    kubectl(lab, &["uncordon", &old_node]);
    let (new_name, (new_node, new_ip, _, _)) = pods.unwrap();
    assert_ne!(new_node, old_node, "the replacement must run elsewhere");
    assert_eq!(new_ip, fixed, "{new_name} on {new_node}");
    let n = lab.nodes().iter().find(|n| n.name() == new_node).unwrap();
    let v = curl_json(n.command("curl"), &format!("http://{fixed}:8080/"))
        .expect("served on the new node");
    assert_eq!(v["pod"], new_name.as_str());
    assert_audit_clean(lab);
    timing("a_fixed_address_moves_with_its_pod_to_another_node", t);
}

/// The agent pod of a node is deleted in the middle of 30 pod creations on that node.
#[test]
fn the_agent_pod_deleted_mid_burst_of_thirty_pods() {
    let (_g, lab) = shared();
    let t = Instant::now();
    let ns = TestNs::new(lab, "burst");
    let node = lab.nodes()[1].name().to_string();
    let pin = json!({"nodeSelector": {"kubernetes.io/hostname": node}});
    apply(lab, &echo_deployment("burst", &ns.name, 30, pin, json!({})));
    // Once some pods have their address, the agent on that node goes away.
    berth_testbed::wait_for(
        "the first pods of the burst",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || (ready_pods(lab, &ns.name, "burst").len() >= 3).then_some(()),
    )
    .unwrap();
    let agents = get(lab, &format!(
        "/api/v1/namespaces/berth-system/pods?labelSelector=app.kubernetes.io%2Fname%3Dberth-agent&fieldSelector=spec.nodeName%3D{node}"
    ));
    let agent = agents["items"][0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let before = ready_pods(lab, &ns.name, "burst").len();
    kubectl(
        lab,
        &[
            "delete",
            "pod",
            "-n",
            "berth-system",
            &agent,
            "--wait=false",
        ],
    );
    eprintln!("deleted {agent} with {before}/30 pods Ready");
    assert!(
        before < 30,
        "the agent must go while pods are still being created"
    );
    let pods = wait_ready_pods(lab, &ns.name, "burst", 30, Duration::from_secs(400));
    let ips: BTreeSet<&String> = pods.values().map(|(_, ip, _, _)| ip).collect();
    assert_eq!(ips.len(), 30, "every pod its own address");
    assert!(pods
        .values()
        .all(|(n, ip, _, _)| *n == node && in_pod_cidr(ip)));
    // The DaemonSet replaced the deleted agent: a Ready pod of another name on that node.
    let path = format!(
        "/api/v1/namespaces/berth-system/pods?labelSelector=app.kubernetes.io%2Fname%3Dberth-agent&fieldSelector=spec.nodeName%3D{node}"
    );
    berth_testbed::wait_for(
        "the replacement agent pod Ready",
        Duration::from_secs(180),
        Duration::from_millis(500),
        || {
            let v = get(lab, &path);
            v["items"].as_array()?.iter().find(|p| {
                p["metadata"]["name"] != agent.as_str()
                    && !p["metadata"]["deletionTimestamp"].is_string()
                    && p["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })?;
            Some(())
        },
    )
    .unwrap();
    let all = bindings(lab);
    let mine: Vec<&Value> = all
        .iter()
        .filter(|b| b["holder"]["attachment"]["pod"]["namespace"] == ns.name.as_str())
        .collect();
    assert_eq!(mine.len(), 30, "one binding per pod: {mine:?}");
    assert_audit_clean(lab);
    // No binding is left without its pod (a sandbox that failed while the agent was away is
    // released by its DEL; none may stay).
    let orphans = bindings_without_pod(lab);
    assert!(orphans.is_empty(), "bindings without a pod: {orphans:?}");
    timing("the_agent_pod_deleted_mid_burst_of_thirty_pods", t);
}

/// A node is shut down (kubelet and agent stopped with everything else on it) and tainted out of
/// service: its fixed-address pod comes up on another node with the same address.
#[test]
fn a_fenced_node_gives_its_fixed_address_to_the_replacement() {
    let (_g, lab) = shared();
    let t = Instant::now();
    let ns = TestNs::new(lab, "fence");
    let fixed = "198.18.64.30";
    apply(
        lab,
        &echo_deployment(
            "app",
            &ns.name,
            1,
            json!({}),
            json!({"berth.dev/ips": fixed}),
        ),
    );
    let pods = wait_ready_pods(lab, &ns.name, "app", 1, Duration::from_secs(120));
    let (old_name, (old_node, ip, _, _)) = pods.into_iter().next().unwrap();
    assert_eq!(ip, fixed);
    let idx = lab
        .nodes()
        .iter()
        .position(|n| n.name() == old_node)
        .unwrap()
        + 1;
    lab.power_off(idx).unwrap();
    let taint = "node.kubernetes.io/out-of-service=nodeshutdown:NoExecute";
    kubectl(lab, &["taint", "node", &old_node, taint]);
    let moved = berth_testbed::wait_for(
        "the replacement on another node",
        Duration::from_secs(240),
        Duration::from_millis(500),
        || {
            ready_pods(lab, &ns.name, "app")
                .into_iter()
                .find(|(n, (node, _, _, _))| *n != old_name && *node != old_node)
        },
    );
    // Bring the node back before asserting, so a failure leaves the cluster whole.
    kubectl(
        lab,
        &[
            "taint",
            "node",
            &old_node,
            "node.kubernetes.io/out-of-service-",
        ],
    );
    lab.power_on(idx).unwrap();
    let (new_name, (new_node, new_ip, _, _)) = moved.unwrap();
    assert_eq!(new_ip, fixed, "{new_name} on {new_node}");
    drop(ns);
    lab.wait_ready().unwrap();
    assert_audit_clean(lab);
    timing(
        "a_fenced_node_gives_its_fixed_address_to_the_replacement",
        t,
    );
}

/// `berth announcements --json` on the cluster: address → (service, node).
fn announcements(lab: &Lab) -> Vec<Value> {
    berth_json(lab, "announcements")
}

/// Three echo pods and a LoadBalancer Service `web` over them in `pool`; returns its
/// EXTERNAL-IP once assigned.
fn web_service(lab: &Lab, ns: &str, pool: &str) -> String {
    apply(lab, &echo_deployment("web", ns, 3, json!({}), json!({})));
    wait_ready_pods(lab, ns, "web", 3, Duration::from_secs(120));
    apply(
        lab,
        &json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": ns,
                         "annotations": {"berth.dev/pool": pool}},
            "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        }),
    );
    berth_testbed::wait_for(
        &format!("an EXTERNAL-IP from pool {pool}"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let s = get(lab, &format!("/api/v1/namespaces/{ns}/services/web"));
            s["status"]["loadBalancer"]["ingress"][0]["ip"]
                .as_str()
                .map(String::from)
        },
    )
    .unwrap()
}

/// Fetches `url` from `client` every 20 ms until it answers (a cut was just made); returns
/// whether it did within 20 s and how long it took.
fn served_again(client: &berth_lab::Netns, url: &str) -> (bool, Duration) {
    let t = Instant::now();
    let back = berth_testbed::wait_for(
        "the address served again after the cut",
        Duration::from_secs(20),
        Duration::from_millis(20),
        || {
            let mut c = client.command("curl");
            c.args(["--connect-timeout", "0.3"]);
            curl_json(c, url)
        },
    );
    (back.is_ok(), t.elapsed())
}

/// The node `berth announcements` names for `addr`, once one does.
fn announcer_of(lab: &Lab, addr: &str) -> Option<String> {
    announcements(lab)
        .into_iter()
        .find(|a| a["address"] == addr)
        .and_then(|a| a["node"].as_str().map(String::from))
}

/// The nodes `berth announcements` says advertise `addr` over BGP (its `nodes`), with the row.
fn bgp_advertisers(lab: &Lab, addr: &str) -> (BTreeSet<String>, Value) {
    let row = announcements(lab)
        .into_iter()
        .find(|a| a["address"] == addr && a["mode"] == "bgp")
        .unwrap_or(Value::Null);
    let nodes = row["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str().map(String::from))
        .collect();
    (nodes, row)
}

/// Waits until `berth announcements` names exactly `want` as `addr`'s BGP advertisers.
fn wait_bgp_advertisers(lab: &Lab, addr: &str, want: &BTreeSet<String>) {
    let r = berth_testbed::wait_for(
        &format!("berth announcements naming {want:?} as {addr}'s BGP advertisers"),
        Duration::from_secs(20),
        Duration::from_millis(300),
        || (&bgp_advertisers(lab, addr).0 == want).then_some(()),
    );
    assert!(r.is_ok(), "{:?}", bgp_advertisers(lab, addr));
}

/// The MAC of a node's LAN interface.
fn lan_mac(node: &berth_lab::LabNode) -> String {
    let v: Value =
        serde_json::from_str(&node.exec("ip", &["-j", "link", "show", "eth0"]).unwrap()).unwrap();
    v[0]["address"].as_str().unwrap().to_string()
}

/// The MAC the outside namespace has learned for `addr` (ARP), if any.
fn outside_mac(lab: &Lab, addr: &str) -> Option<String> {
    let out = lab
        .netns("outside")
        .command("ip")
        .args(["-j", "neigh", "show", addr])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v[0]["lladdr"].as_str().map(String::from)
}

/// Events of `reason` on the Service.
fn service_events(lab: &Lab, ns: &str, svc: &str, reason: &str) -> Vec<String> {
    let v = get(
        lab,
        &format!("/api/v1/namespaces/{ns}/events?fieldSelector=involvedObject.name%3D{svc},reason%3D{reason}"),
    );
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["message"].as_str().map(String::from))
        .collect()
}

/// Issue 11 on real nodes: a LoadBalancer Service from an `announce: l2` pool on the LAN is
/// reached from the outside client through the one node that answers ARP for it; cutting that
/// node's link moves it to another node (GARP), and the client is served again within the
/// bound; with `externalTrafficPolicy: Local` only a node with an endpoint announces, and the
/// announcement follows the pod to another node.
#[test]
fn an_l2_service_address_is_announced_by_one_node_and_fails_over() {
    let (_g, lab) = shared();
    let t = Instant::now();
    let ns = TestNs::new(lab, "l2");
    apply(
        lab,
        &json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "Pool",
            "metadata": {"name": "lan-l2"},
            "spec": {"use": "service", "subnets": [{"cidr": "198.18.0.240/28"}],
                     "announce": "l2"},
        }),
    );
    let vip = web_service(lab, &ns.name, "lan-l2");
    assert!(
        vip.starts_with("198.18.0.24") || vip.starts_with("198.18.0.25"),
        "{vip}"
    );
    let outside = lab.netns("outside");
    let url = format!("http://{vip}/");
    let t_first = Instant::now();
    berth_testbed::wait_for(
        "the L2 address from outside",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || curl_json(outside.command("curl"), &url),
    )
    .unwrap();
    eprintln!(
        "[timing] LoadBalancer address reachable from outside {:.1?} after it was assigned",
        t_first.elapsed()
    );
    let node = berth_testbed::wait_for(
        "berth announcements naming the announcing node",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || announcer_of(lab, &vip),
    )
    .unwrap();
    let macs: BTreeMap<String, String> = lab
        .nodes()
        .iter()
        .map(|n| (n.name().to_string(), lan_mac(n)))
        .collect();
    assert_eq!(
        outside_mac(lab, &vip).as_deref(),
        Some(macs[&node].as_str()),
        "the outside's ARP entry for {vip} is the announcing node {node}'s MAC"
    );
    let announcing = service_events(lab, &ns.name, "web", "Announcing");
    assert!(
        announcing
            .iter()
            .any(|m| m.contains(&node) && m.contains(&vip)),
        "an Announcing Event names {node}: {announcing:?}"
    );

    // The announcing node's link goes down: another node takes over and sends GARP.
    let idx = lab.nodes().iter().position(|n| n.name() == node).unwrap();
    let cut = &lab.nodes()[idx];
    cut.set_lan(false).unwrap();
    let (back, outage) = served_again(&outside, &url);
    let moved_to = announcer_of(lab, &vip);
    let mac_after = outside_mac(lab, &vip);
    cut.set_lan(true).unwrap();
    assert!(
        back,
        "not served again within 20 s after cutting {node}'s link"
    );
    eprintln!("[timing] L2 failover after a link cut, as curl sees it: {outage:.1?}");
    assert!(
        outage < Duration::from_secs(5),
        "served again only after {outage:?}"
    );
    let moved_to = moved_to.expect("a new announcer");
    assert_ne!(moved_to, node, "the address moved off the cut node");
    assert_eq!(mac_after.as_deref(), Some(macs[&moved_to].as_str()));
    // The cut node reaches the API server over the LAN too (the kubernetes Service): it says
    // it withdrew once its link is back.
    let withdrawn = berth_testbed::wait_for(
        "the cut node's AnnouncementWithdrawn Event",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || {
            let w = service_events(lab, &ns.name, "web", "AnnouncementWithdrawn");
            w.iter()
                .any(|m| m.contains(&node) && m.contains("interface went down"))
                .then_some(w)
        },
    );
    assert!(
        withdrawn.is_ok(),
        "the cut node says it withdrew because its link went down: {:?}",
        service_events(lab, &ns.name, "web", "AnnouncementWithdrawn")
    );

    // externalTrafficPolicy Local: only the node with the pod announces; the announcement
    // follows the pod.
    lab.wait_ready().unwrap();
    let names: Vec<String> = lab.nodes().iter().map(|n| n.name().to_string()).collect();
    for target in [&names[0], &names[2]] {
        let pin = json!({"nodeSelector": {"kubernetes.io/hostname": target}});
        apply(lab, &echo_deployment("web", &ns.name, 1, pin, json!({})));
        local_traffic(lab, &ns.name, "web");
        // A precondition, not the assertion: the bound is generous because a node whose link
        // was cut just before has once taken minutes to start a pod (see the issue notes);
        // the time it took is printed so that it stays visible.
        let t_pod = Instant::now();
        let alone = berth_testbed::wait_for(
            "the Local Service's pod alone on its node",
            Duration::from_secs(300),
            Duration::from_millis(300),
            || {
                let p = ready_pods(lab, &ns.name, "web");
                (p.len() == 1 && p.values().all(|(n, _, _, _)| n == target)).then_some(())
            },
        );
        if let Err(e) = alone {
            let pods = lab.kubectl(&["get", "pods", "-n", &ns.name, "-o", "wide"]);
            let events = lab.kubectl(&["get", "events", "-n", &ns.name]);
            panic!(
                "{e:#}\ncut node: {node}\npods: {pods:?}\nevents: {events:?}\nagents:\n{}",
                agent_logs(lab)
            );
        }
        eprintln!(
            "[timing] ETP Local: the pod pinned to {target} alone and Ready after {:.1?} (the cut node was {node})",
            t_pod.elapsed()
        );
        let who = berth_testbed::wait_for(
            "the announcement on the node with the endpoint",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || announcer_of(lab, &vip).filter(|n| n == target),
        );
        assert_eq!(
            who.ok().as_deref(),
            Some(target.as_str()),
            "{:?}",
            announcements(lab)
        );
        let v = berth_testbed::wait_for(
            "the Local Service from outside",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || curl_json(outside.command("curl"), &url),
        )
        .unwrap();
        assert!(v["pod"].is_string());
        assert_eq!(
            outside_mac(lab, &vip).as_deref(),
            Some(macs[target].as_str())
        );
    }
    // The leading controller's node loses its link for a second. That drops the NAT mappings
    // of the node's masqueraded connections (the kernel does so when the interface goes
    // down), among them the controller's watches through the kubernetes Service: the API
    // server's next packet on each is answered with a reset that the controller never sees.
    // Before TCP keepalive (berth_k8s::client) the controller then missed the deletion below
    // for minutes, until its watch's read deadline (295 s).
    let leader = kubectl(
        lab,
        &[
            "get",
            "lease",
            "berth-controller",
            "-n",
            "berth-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    );
    let pod = leader.trim().rsplit_once('-').map(|(p, _)| p).unwrap_or("");
    let leader_node = kubectl(
        lab,
        &[
            "get",
            "pod",
            pod,
            "-n",
            "berth-system",
            "-o",
            "jsonpath={.spec.nodeName}",
        ],
    );
    let flap = lab
        .nodes()
        .iter()
        .find(|n| n.name() == leader_node.trim())
        .unwrap_or_else(|| panic!("the leader {leader:?} runs on no lab node ({leader_node:?})"));
    flap.set_lan(false).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    flap.set_lan(true).unwrap();
    let ns_name = ns.name.clone();
    drop(ns);
    // The Service is gone with its namespace: the controller releases its address within
    // seconds (the bound: keepalive's 10 s idle plus the watch's resumption). The pool goes
    // only then, so no other test's audit sees a binding of a pool that no longer exists. The
    // time it took is printed.
    let t_release = Instant::now();
    let released = berth_testbed::wait_for(
        "the deleted Service's address released",
        Duration::from_secs(45),
        Duration::from_millis(300),
        || (!bindings(lab).iter().any(|b| b["pool"] == "lan-l2")).then_some(()),
    );
    if let Err(e) = released {
        let ns_now = lab.kubectl(&["get", "namespace", &ns_name, "-o", "yaml"]);
        let svc = lab.kubectl(&["get", "services", "-A", "-o", "wide"]);
        let ctl = lab.kubectl(&[
            "logs",
            "-n",
            "berth-system",
            "-l",
            "app.kubernetes.io/name=berth-controller",
            "--prefix",
            "--timestamps",
            "--tail=200",
        ]);
        let lease = lab.kubectl(&["get", "leases", "-n", "berth-system", "-o", "yaml"]);
        panic!(
            "{e:#}\nbindings: {:?}\nclaims: {:?}\nnamespace: {ns_now:?}\nservices: {svc:?}\nleases: {lease:?}\ncontroller: {ctl:?}",
            bindings(lab),
            lab.kubectl(&["get", "claims", "-A", "-o", "yaml"])
        );
    }
    eprintln!(
        "[timing] the deleted Service's address released {:.1?} after its namespace was gone",
        t_release.elapsed()
    );
    kubectl(lab, &["delete", "pool", "lan-l2", "--wait=true"]);
    timing(
        "an_l2_service_address_is_announced_by_one_node_and_fails_over",
        t,
    );
}

/// The BGPPeer's `status.sessions`, node → (state, prefixesSent, message).
fn peer_sessions(lab: &Lab, peer: &str) -> BTreeMap<String, (String, u64, String)> {
    let v = get(lab, &format!("/apis/berth.dev/v1alpha1/bgppeers/{peer}"));
    v["status"]["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["node"].as_str().unwrap_or_default().to_string(),
                (
                    s["state"].as_str().unwrap_or_default().to_string(),
                    s["prefixesSent"].as_u64().unwrap_or_default(),
                    s["message"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect()
}

/// Events on a BGPPeer (cluster-scoped: in the namespace default) with `reason`.
fn peer_events(lab: &Lab, peer: &str, reason: &str) -> Vec<String> {
    let v = get(
        lab,
        &format!("/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3D{peer},reason%3D{reason}"),
    );
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["message"].as_str().map(String::from))
        .collect()
}

/// A merge patch of the BGPPeer `router`'s spec.
fn patch_router_peer(lab: &Lab, patch: &str) {
    kubectl(
        lab,
        &["patch", "bgppeer", "router", "--type=merge", "-p", patch],
    );
}

/// The BGPPeer `router`'s password Secret (`router-bgp` in `berth-system`), which
/// [`BgpCleanup`] deletes.
fn create_router_secret(lab: &Lab, password: &str) {
    kubectl(
        lab,
        &[
            "create",
            "secret",
            "generic",
            "router-bgp",
            "-n",
            "berth-system",
            &format!("--from-literal=password={password}"),
        ],
    );
}

/// Puts the lab back after a BGP test: the BGP objects, the password Secret and the router's
/// configuration go, and the pool once its Service addresses are released (so that no other
/// test's audit sees a binding of a pool that no longer exists).
struct BgpCleanup<'a>(&'a Lab);

impl Drop for BgpCleanup<'_> {
    fn drop(&mut self) {
        let lab = self.0;
        for what in [["bgppeer", "router"], ["bgpconfiguration", "default"]] {
            let _ = lab.kubectl(&["delete", what[0], what[1], "--ignore-not-found"]);
        }
        let _ = lab.kubectl(&[
            "delete",
            "secret",
            "router-bgp",
            "-n",
            "berth-system",
            "--ignore-not-found",
        ]);
        let _ = lab.configure_router(None);
        let _ = berth_testbed::wait_for(
            "the BGP pool's addresses released",
            Duration::from_secs(45),
            Duration::from_millis(300),
            || (!bindings(lab).iter().any(|b| b["pool"] == "lan-bgp")).then_some(()),
        );
        let _ = lab.kubectl(&["delete", "pool", "lan-bgp", "--ignore-not-found"]);
    }
}

/// The BGP tests' world: BIRD on the router peering with every node (BFD when `bfd`; `None`
/// leaves BIRD idle, for a test that runs FRR on the router instead), the
/// BGPConfiguration (AS 64513), the BGPPeer `router` (its spec extended by `peer_extra`), the
/// pool `lan-bgp` (`announce: bgp`), three echo pods spread over the nodes in `ns` and their
/// LoadBalancer Service `web`. Returns the Service's address.
fn bgp_setup(lab: &Lab, ns: &TestNs, peer_extra: Value, bfd: Option<bool>) -> String {
    let mut peer = json!({"apiVersion": "berth.dev/v1alpha1", "kind": "BGPPeer",
                          "metadata": {"name": "router"},
                          "spec": {"peerAddress": addr::ROUTER, "peerASN": 64512,
                                   "holdTimeSeconds": 9}});
    for (k, v) in peer_extra.as_object().into_iter().flatten() {
        peer["spec"][k] = v.clone();
    }
    match bfd {
        Some(bfd) => lab.configure_router(Some(&lab.router_bgp(None, bfd))),
        None => lab.configure_router(None),
    }
    .unwrap();
    apply(
        lab,
        &json!({"apiVersion": "berth.dev/v1alpha1", "kind": "BGPConfiguration",
                "metadata": {"name": "default"}, "spec": {"myASN": 64513}}),
    );
    apply(lab, &peer);
    apply(
        lab,
        &json!({"apiVersion": "berth.dev/v1alpha1", "kind": "Pool",
                "metadata": {"name": "lan-bgp"},
                "spec": {"use": "service", "subnets": [{"cidr": "198.18.40.0/28"}],
                         "announce": "bgp"}}),
    );
    apply(
        lab,
        &echo_deployment(
            "web",
            &ns.name,
            3,
            json!({
            "topologySpreadConstraints": [{
                "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": "web"}}}]}),
            json!({}),
        ),
    );
    wait_ready_pods(lab, &ns.name, "web", 3, Duration::from_secs(120));
    apply(
        lab,
        &json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": ns.name,
                         "annotations": {"berth.dev/pool": "lan-bgp"}},
            "spec": {"type": "LoadBalancer", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        }),
    );
    berth_testbed::wait_for(
        "an EXTERNAL-IP from the BGP pool",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let s = get(lab, &format!("/api/v1/namespaces/{}/services/web", ns.name));
            s["status"]["loadBalancer"]["ingress"][0]["ip"]
                .as_str()
                .map(String::from)
        },
    )
    .unwrap()
}

/// A second LAN (a "public VLAN") for the L2 test on another interface than the InternalIPs':
/// bridge `br2` in the fabric, every node plugged in as `eth1` (198.18.48.1N/24) and a client
/// namespace of the test's own (198.18.48.100). Removed on Drop with the test's pool (the
/// fabric-side veth ends take the nodes' `eth1` with them).
struct SecondLan<'a> {
    lab: &'a Lab,
    client: berth_lab::Netns,
    ports: Vec<String>,
}

const SECOND_LAN_CLIENT: &str = "198.18.48.100";

impl<'a> SecondLan<'a> {
    fn new(lab: &'a Lab) -> SecondLan<'a> {
        let fabric = lab.netns("fabric");
        let _ = fabric.ip(["link", "del", "br2"]);
        fabric.add_bridge("br2").unwrap();
        let client = berth_lab::Netns::new("pub").unwrap();
        client.lo_up().unwrap();
        let mut lan = SecondLan {
            lab,
            client,
            ports: vec![],
        };
        let mut plug = |port: &str, ns: &str, ifname: &str, cidr: &str| {
            let _ = fabric.ip(["link", "del", port]);
            fabric
                .ip([
                    "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns,
                ])
                .unwrap();
            fabric
                .ip(["link", "set", port, "master", "br2", "up"])
                .unwrap();
            let n = berth_lab::Netns::existing(ns);
            n.ip(["link", "set", ifname, "up"]).unwrap();
            n.add_addr(ifname, cidr).unwrap();
            lan.ports.push(port.to_string());
        };
        for n in lab.nodes() {
            plug(
                &format!("pub{}", n.index),
                n.name(),
                "eth1",
                &format!("198.18.48.{}/24", 10 + n.index),
            );
        }
        let client_ns = lan.client.name().to_string();
        plug(
            "pubc",
            &client_ns,
            "eth0",
            &format!("{SECOND_LAN_CLIENT}/24"),
        );
        lan
    }

    /// The MAC the client has learnt for `addr`.
    fn client_mac(&self, addr: &str) -> Option<String> {
        let out = self.client.ip(["-j", "neigh", "show", addr]).ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        v[0]["lladdr"].as_str().map(String::from)
    }
}

impl Drop for SecondLan<'_> {
    fn drop(&mut self) {
        // The test's pool goes first: no agent is left with a pool naming a gone interface.
        let _ = self.lab.kubectl(&[
            "delete",
            "pool",
            "public-l2",
            "--ignore-not-found",
            "--wait=true",
        ]);
        let fabric = self.lab.netns("fabric");
        for p in &self.ports {
            let _ = fabric.ip(["link", "del", p]);
        }
        let _ = fabric.ip(["link", "del", "br2"]);
    }
}

/// `l2.interfaces: [eth1]`: a pool whose LAN is not the one holding the nodes' InternalIPs.
/// Each agent runs a second announcer on `eth1` whose peers' addresses are learnt from their
/// hellos there (nothing in the Node objects says them): one node answers ARP on `eth1` for
/// the Service address, a client on that LAN fetches through it, `/status` shows the
/// announcer with the learnt addresses, and cutting the announcing node's `eth1` moves the
/// address to another node while the InternalIPs' LAN stays up.
#[test]
fn an_l2_pool_on_a_second_lan_is_announced_there_and_fails_over() {
    let (_g, lab) = shared();
    let t = Instant::now();
    let lan = SecondLan::new(lab);
    let ns = TestNs::new(lab, "l2-public");
    let pool = json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Pool",
        "metadata": {"name": "public-l2"},
        "spec": {"use": "service", "subnets": [{"cidr": "198.18.48.240/28"}],
                 "announce": "l2", "l2": {"interfaces": ["eth1"]}},
    });
    apply(lab, &pool);
    let vip = web_service(lab, &ns.name, "public-l2");
    assert!(
        vip.starts_with("198.18.48.24") || vip.starts_with("198.18.48.25"),
        "{vip}"
    );
    let url = format!("http://{vip}/");
    let t_first = Instant::now();
    let served = berth_testbed::wait_for(
        "the address from the second LAN's client",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || curl_json(lan.client.command("curl"), &url),
    );
    if let Err(e) = served {
        panic!("{e:#}\nagents:\n{}", agent_logs(lab));
    }
    timing(
        "second-LAN address reachable after it was assigned",
        t_first,
    );
    let node = berth_testbed::wait_for(
        "berth announcements naming the announcing node",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || announcer_of(lab, &vip),
    )
    .unwrap();
    let eth1_mac = |n: &berth_lab::LabNode| -> String {
        let v: Value =
            serde_json::from_str(&n.exec("ip", &["-j", "link", "show", "eth1"]).unwrap()).unwrap();
        v[0]["address"].as_str().unwrap().to_string()
    };
    let macs: BTreeMap<String, String> = lab
        .nodes()
        .iter()
        .map(|n| (n.name().to_string(), eth1_mac(n)))
        .collect();
    assert_eq!(
        lan.client_mac(&vip).as_deref(),
        Some(macs[&node].as_str()),
        "the client's ARP entry for {vip} is {node}'s eth1 MAC"
    );
    // Every agent runs an announcer on eth1 that learnt the others' eth1 addresses.
    for n in lab.nodes() {
        let st = curl_json(n.command("curl"), "http://127.0.0.1:9473/status").expect("/status");
        let anns = st["announcers"].as_array().cloned().unwrap_or_default();
        let a = anns
            .iter()
            .find(|a| a["interface"] == "eth1")
            .unwrap_or_else(|| panic!("{}: no announcer on eth1: {st:#}", n.name()));
        assert_eq!(a["learn"], true, "{a:#}");
        assert_eq!(a["address"], format!("198.18.48.{}", 10 + n.index));
        for m in lab.nodes().iter().filter(|m| m.name() != n.name()) {
            let learnt = a["status"]["peer_addresses"][m.name()]
                .as_str()
                .unwrap_or("");
            assert!(
                learnt.starts_with(&format!("198.18.48.{}:", 10 + m.index)),
                "{} learnt {} at {learnt:?}: {a:#}",
                n.name(),
                m.name()
            );
        }
        assert_eq!(a["pools"], json!(["public-l2"]), "{a:#}");
        // Another test's (unrestricted) L2 pool would run on eth0, and never this pool.
        assert!(
            anns.iter()
                .filter(|x| x["interface"] != "eth1")
                .all(|x| x["learn"] == false
                    && x["pools"]
                        .as_array()
                        .is_some_and(|p| !p.contains(&json!("public-l2")))),
            "{st:#}"
        );
    }
    // The announcing node's eth1 goes down: another node takes over on eth1.
    let cut = lab.nodes().iter().find(|n| n.name() == node).unwrap();
    cut.exec("ip", &["link", "set", "eth1", "down"]).unwrap();
    let (back, outage) = served_again(&lan.client, &url);
    let moved_to = announcer_of(lab, &vip);
    let mac_after = lan.client_mac(&vip);
    cut.exec("ip", &["link", "set", "eth1", "up"]).unwrap();
    assert!(
        back,
        "not served again within 20 s after cutting {node}'s eth1"
    );
    eprintln!("[timing] second-LAN failover after an eth1 cut, as curl sees it: {outage:.1?}");
    assert!(
        outage < Duration::from_secs(5),
        "served again only after {outage:?}"
    );
    let moved_to = moved_to.expect("a new announcer");
    assert_ne!(moved_to, node);
    assert_eq!(mac_after.as_deref(), Some(macs[&moved_to].as_str()));
    timing("L2 pool on a second LAN", t);
}

/// Issue 12 on real nodes: every node peers with BIRD on the lab router (a BGPPeer and the
/// BGPConfiguration); a LoadBalancer Service of an `announce: bgp` pool is in the router's
/// kernel table with one next hop per node (ECMP) and the far client reaches it through the
/// router; with `externalTrafficPolicy: Local` and one pod the next hops shrink to that pod's
/// node; a password whose Secret is missing keeps the sessions down (fail closed) and says so,
/// and with the Secret and the router's password they come back; each node reports its
/// session in the BGPPeer's status and on `/bgp`.
#[test]
fn bgp_service_addresses_reach_the_router_through_every_node() {
    let (_g, lab) = shared();
    let t = Instant::now();
    let _cleanup = BgpCleanup(lab);
    let ns = TestNs::new(lab, "bgp");
    let vip = bgp_setup(lab, &ns, json!({}), Some(false));
    assert!(vip.starts_with("198.18.40."), "{vip}");
    let all: BTreeSet<String> = lab.nodes().iter().map(|n| n.ip().to_string()).collect();
    let node_ip: BTreeMap<String, String> = lab
        .nodes()
        .iter()
        .map(|n| (n.name().to_string(), n.ip().to_string()))
        .collect();
    let prefix = format!("{vip}/32");
    let t_route = Instant::now();
    let hops = berth_testbed::wait_for(
        "the Service address in the router's kernel table through all three nodes",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let h = lab.router_next_hops(&prefix);
            (h == all).then_some(h)
        },
    );
    if hops.is_err() {
        panic!(
            "next hops {:?}\nbird: {:?}\nsessions: {:?}\nagents:\n{}",
            lab.router_next_hops(&prefix),
            lab.birdc(&["show", "protocols", "all"]),
            peer_sessions(lab, "router"),
            agent_logs(lab)
        );
    }
    eprintln!(
        "[timing] BGP: the Service's address in the router's kernel table via 3 next hops {:.1?} after it was assigned",
        t_route.elapsed()
    );
    // The far client, behind the router, reaches it (over one of the ECMP paths).
    let far = lab.netns("far");
    let url = format!("http://{vip}/");
    let v = berth_testbed::wait_for(
        "the BGP address from the far segment",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || curl_json(far.command("curl"), &url),
    )
    .unwrap();
    assert!(v["pod"].is_string(), "{v}");
    // Every node reports its session: Established, one prefix sent.
    let sessions = berth_testbed::wait_for(
        "every node's session in the BGPPeer's status",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let s = peer_sessions(lab, "router");
            (s.len() == 3
                && s.values()
                    .all(|(st, sent, _)| st == "Established" && *sent >= 1))
            .then_some(s)
        },
    );
    assert!(sessions.is_ok(), "{:?}", peer_sessions(lab, "router"));
    // `berth bgp status` shows the same: one row per node.
    let out = Command::new(BERTH)
        .args([
            "bgp",
            "status",
            "--json",
            "--ledger",
            "kubernetes",
            "--kubeconfig",
        ])
        .arg(lab.kubeconfig())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let established: BTreeSet<&str> = rows
        .iter()
        .filter(|r| r["peer"] == "router" && r["state"] == "Established" && r["prefixesSent"] == 1)
        .filter_map(|r| r["node"].as_str())
        .collect();
    assert_eq!(established.len(), 3, "{rows:?}");
    assert!(
        peer_events(lab, "router", "SessionEstablished").len() >= 3,
        "{:?}",
        peer_events(lab, "router", "SessionEstablished")
    );
    // The agent's own view and metrics on a node.
    let n0 = &lab.nodes()[0];
    let view = curl_json(n0.command("curl"), "http://127.0.0.1:9473/bgp").expect("/bgp");
    assert_eq!(view["localAsn"], 64513, "{view}");
    assert_eq!(view["sessions"][0]["state"], "Established", "{view}");
    assert!(
        view["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["prefix"] == prefix.as_str())),
        "{view}"
    );
    let metrics = n0
        .exec(
            "curl",
            &["-sS", "--noproxy", "*", "http://127.0.0.1:9473/metrics"],
        )
        .unwrap();
    assert!(
        metrics.contains("berth_bgp_session_up{peer=\"router\"} 1"),
        "{metrics}"
    );
    // `berth announcements` names the three nodes as the address's advertisers.
    let names: BTreeSet<String> = lab.nodes().iter().map(|n| n.name().to_string()).collect();
    wait_bgp_advertisers(lab, &vip, &names);

    // externalTrafficPolicy: Local with one pod: only that pod's node advertises it.
    kubectl(
        lab,
        &["scale", "deployment", "web", "-n", &ns.name, "--replicas=1"],
    );
    local_traffic(lab, &ns.name, "web");
    let t_local = Instant::now();
    let one = berth_testbed::wait_for(
        "the router's next hops shrunk to the node with the pod",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let pods = ready_pods(lab, &ns.name, "web");
            if pods.len() != 1 {
                return None;
            }
            let node = pods.values().next().map(|p| p.0.clone())?;
            let want: BTreeSet<String> = node_ip.get(&node).cloned().into_iter().collect();
            (lab.router_next_hops(&prefix) == want).then_some(want)
        },
    );
    assert!(
        one.is_ok(),
        "{:?} pods {:?}",
        lab.router_next_hops(&prefix),
        ready_pods(lab, &ns.name, "web")
    );
    eprintln!(
        "[timing] BGP: ETP Local 3 -> 1 next hop {:.1?} after the scale-down",
        t_local.elapsed()
    );
    let pod_node: BTreeSet<String> = ready_pods(lab, &ns.name, "web")
        .values()
        .map(|p| p.0.clone())
        .collect();
    wait_bgp_advertisers(lab, &vip, &pod_node);

    // A pod that drains slowly (it serves 20 s after SIGTERM) behind an ETP Local Service: its
    // node withdraws the route as soon as the pod is marked for deletion (the EndpointSlice
    // drops it), while the pod still runs, not when it is gone.
    apply(
        lab,
        &json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "drain", "namespace": ns.name, "labels": {"app": "drain"}},
                "spec": {"terminationGracePeriodSeconds": 30,
                         "containers": [{"name": "echo", "image": image::ECHO_IMAGE,
                                         "imagePullPolicy": "Never", "args": ["--drain", "20"],
                                         "ports": [{"containerPort": 8080}],
                                         "readinessProbe": {"httpGet": {"path": "/", "port": 8080},
                                                            "periodSeconds": 1}}]}}),
    );
    apply(
        lab,
        &json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "drain", "namespace": ns.name,
                             "annotations": {"berth.dev/pool": "lan-bgp"}},
                "spec": {"type": "LoadBalancer", "selector": {"app": "drain"},
                         "externalTrafficPolicy": "Local",
                         "ports": [{"port": 80, "targetPort": 8080}]}}),
    );
    let (drain_prefix, drain_node) = berth_testbed::wait_for(
        "the draining pod's Service address via its node",
        Duration::from_secs(90),
        Duration::from_millis(200),
        || {
            let svc = get(
                lab,
                &format!("/api/v1/namespaces/{}/services/drain", ns.name),
            );
            let ip = svc["status"]["loadBalancer"]["ingress"][0]["ip"].as_str()?;
            let pod = get(lab, &format!("/api/v1/namespaces/{}/pods/drain", ns.name));
            let node = node_ip.get(pod["spec"]["nodeName"].as_str()?)?.clone();
            let prefix = format!("{ip}/32");
            (lab.router_next_hops(&prefix) == BTreeSet::from([node.clone()]))
                .then_some((prefix, node))
        },
    )
    .unwrap();
    // The clock starts before kubectl, which returns once the API server has marked the pod.
    let deleted = Instant::now();
    kubectl(
        lab,
        &["delete", "pod", "drain", "-n", &ns.name, "--wait=false"],
    );
    let withdrawn = berth_testbed::wait_for(
        "the draining pod's route withdrawn",
        Duration::from_secs(15),
        Duration::from_millis(20),
        || {
            lab.router_next_hops(&drain_prefix)
                .is_empty()
                .then(|| deleted.elapsed())
        },
    );
    let pod = get(lab, &format!("/api/v1/namespaces/{}/pods/drain", ns.name));
    let withdrawn = withdrawn.unwrap_or_else(|_| {
        panic!(
            "the route via {drain_node} stayed 15 s after the pod was deleted: {:?}",
            lab.router_next_hops(&drain_prefix)
        )
    });
    assert!(
        pod["metadata"]["deletionTimestamp"].is_string() && pod["status"]["phase"] == "Running",
        "the pod should still be draining when its route goes: {}",
        pod["status"]
    );
    eprintln!(
        "[timing] BGP: a draining pod's route withdrawn {withdrawn:.1?} after kubectl delete started, the pod still running"
    );
    kubectl(
        lab,
        &["delete", "service", "drain", "-n", &ns.name, "--wait=false"],
    );
    let _ = lab.kubectl(&[
        "delete",
        "pod",
        "drain",
        "-n",
        &ns.name,
        "--grace-period=0",
        "--force",
    ]);

    // A password from a Secret that does not exist: fail closed, and say so.
    patch_router_peer(
        lab,
        r#"{"spec":{"passwordSecretRef":{"name":"router-bgp"}}}"#,
    );
    let down = berth_testbed::wait_for(
        "the sessions down with the missing Secret named",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let s = peer_sessions(lab, "router");
            (s.len() == 3
                && s.values().all(|(st, _, m)| {
                    st == "Idle"
                        && m.contains("berth-system/router-bgp")
                        && m.contains("does not exist")
                }))
            .then_some(s)
        },
    );
    assert!(down.is_ok(), "{:?}", peer_sessions(lab, "router"));
    let warned = berth_testbed::wait_for(
        "a PasswordUnavailable Warning on the BGPPeer",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || (!peer_events(lab, "router", "PasswordUnavailable").is_empty()).then_some(()),
    );
    assert!(warned.is_ok());
    berth_testbed::wait_for(
        "the route gone from the router",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || lab.router_next_hops(&prefix).is_empty().then_some(()),
    )
    .unwrap();
    // No advertiser now, and the row says why.
    wait_bgp_advertisers(lab, &vip, &BTreeSet::new());
    let (_, row) = bgp_advertisers(lab, &vip);
    assert!(
        row["note"]
            .as_str()
            .is_some_and(|n| n.contains("no session Established")),
        "{row}"
    );
    // The Secret and the router's password: the sessions come back (TCP MD5 on both ends).
    create_router_secret(lab, "lab-bgp-secret");
    lab.configure_router(Some(&lab.router_bgp(Some("lab-bgp-secret"), false)))
        .unwrap();
    let back = berth_testbed::wait_for(
        "the sessions established again with the password",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let s = peer_sessions(lab, "router");
            (s.len() == 3 && s.values().all(|(st, _, _)| st == "Established")).then_some(s)
        },
    );
    assert!(
        back.is_ok(),
        "{:?}\nbird: {:?}",
        peer_sessions(lab, "router"),
        lab.birdc(&["show", "protocols"])
    );
    assert_eq!(lab.router_next_hops(&prefix).len(), 1);

    // Seed 002: the pod blocks and the ClusterIP range through the router. Each node
    // advertises its own blocks and every node the range; the far client reaches a pod by its
    // own address and the Service by its ClusterIP.
    kubectl(
        lab,
        &[
            "patch",
            "bgpconfiguration",
            "default",
            "--type=merge",
            "-p",
            &json!({"spec": {"advertisePodBlocks": true,
                             "serviceClusterIPRanges": [addr::SERVICE_CIDR]}})
            .to_string(),
        ],
    );
    let blocks = get(lab, "/apis/berth.dev/v1alpha1/blocks");
    let mut want_blocks: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for b in blocks["items"].as_array().into_iter().flatten() {
        let (Some(cidr), Some(node)) = (b["spec"]["cidr"].as_str(), b["spec"]["node"].as_str())
        else {
            continue;
        };
        if let Some(ip) = node_ip.get(node) {
            want_blocks
                .entry(cidr.to_string())
                .or_default()
                .insert(ip.clone());
        }
    }
    assert!(!want_blocks.is_empty(), "{blocks}");
    let t_blocks = Instant::now();
    let routed = berth_testbed::wait_for(
        "every pod block via its node and the ClusterIP range via all nodes on the router",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let ok = want_blocks
                .iter()
                .all(|(cidr, via)| &lab.router_next_hops(cidr) == via)
                && lab.router_next_hops(addr::SERVICE_CIDR) == all;
            ok.then_some(())
        },
    );
    assert!(
        routed.is_ok(),
        "want {want_blocks:?}; router: {:?}",
        lab.netns("router").ip(["route"])
    );
    eprintln!(
        "[timing] BGP: pod blocks and the ClusterIP range on the router {:.1?} after the BGPConfiguration change",
        t_blocks.elapsed()
    );
    // `berth announcements` lists each pod block with its node and the range with all three.
    let by_ip: BTreeMap<&String, &String> = node_ip.iter().map(|(n, ip)| (ip, n)).collect();
    for (cidr, via) in &want_blocks {
        let want: BTreeSet<String> = via
            .iter()
            .filter_map(|ip| by_ip.get(ip))
            .map(|n| n.to_string())
            .collect();
        wait_bgp_advertisers(lab, cidr, &want);
        assert_eq!(bgp_advertisers(lab, cidr).1["kind"], "podBlock");
    }
    wait_bgp_advertisers(lab, addr::SERVICE_CIDR, &names);
    assert_eq!(
        bgp_advertisers(lab, addr::SERVICE_CIDR).1["kind"],
        "clusterIPs"
    );
    let pod_ip = ready_pods(lab, &ns.name, "web")
        .values()
        .next()
        .map(|p| p.1.clone())
        .expect("the pod");
    let v = berth_testbed::wait_for(
        "the pod by its own address from the far segment",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || curl_json(far.command("curl"), &format!("http://{pod_ip}:8080/")),
    );
    assert!(v.is_ok(), "pod {pod_ip} not reached from far");
    far_reaches_cluster_ip(lab, &ns.name, "web");
    drop(ns);
    timing(
        "bgp_service_addresses_reach_the_router_through_every_node",
        t,
    );
}

/// The far client (behind the router) reaches Service `svc`'s ClusterIP, once it can.
fn far_reaches_cluster_ip(lab: &Lab, ns: &str, svc: &str) {
    let cluster_ip = get(lab, &format!("/api/v1/namespaces/{ns}/services/{svc}"))["spec"]
        ["clusterIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let far = lab.netns("far");
    let v = berth_testbed::wait_for(
        "the ClusterIP from the far segment",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || curl_json(far.command("curl"), &format!("http://{cluster_ip}/")),
    );
    assert!(v.is_ok(), "ClusterIP {cluster_ip} not reached from far");
}

/// FRR (zebra, bfdd, bgpd) on the lab router in BIRD's place, in a directory of its own that
/// goes with it.
struct FrrRouter {
    frr: Option<berth_testbed::Frr>,
    dir: PathBuf,
}

impl FrrRouter {
    /// FRR as AS 64512 peering with every node (AS 64513): ECMP (`maximum-paths 8`) into the
    /// router's kernel table, graceful-restart helper (FRR's default), BFD 50 ms x 3 on every session, connect retry
    /// 1 s.
    fn start(lab: &Lab) -> FrrRouter {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(berth_testbed::unique_name("labfrr"));
        std::fs::create_dir_all(&dir).unwrap();
        // The daemons run as user frr and must reach their directory.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut bgpd = format!(
            "frr defaults traditional\nhostname lab-router\n!\nrouter bgp 64512\n bgp router-id {}\n \
             no bgp ebgp-requires-policy\n neighbor nodes peer-group\n \
             neighbor nodes remote-as 64513\n neighbor nodes timers connect 1\n \
             neighbor nodes bfd profile fast\n",
            addr::ROUTER
        );
        for n in lab.nodes() {
            bgpd.push_str(&format!(" neighbor {} peer-group nodes\n", n.ip()));
        }
        bgpd.push_str(" address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n!\n");
        let bfdd = "bfd\n profile fast\n  receive-interval 50\n  transmit-interval 50\n  \
                    detect-multiplier 3\n !\n!\n";
        let frr = berth_testbed::Frr::start(&lab.netns("router"), &dir.join("frr"), &bgpd, bfdd)
            .expect("FRR on the lab router");
        FrrRouter {
            frr: Some(frr),
            dir,
        }
    }

    fn vtysh(&self, cmd: &str) -> String {
        self.frr.as_ref().map(|f| f.vtysh(cmd)).unwrap_or_default()
    }
}

impl Drop for FrrRouter {
    fn drop(&mut self) {
        drop(self.frr.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Issue 12 "once with FRR": FRR 8.4 in BIRD's place on the router. The far client reaches
/// the LoadBalancer address through ECMP over all three nodes (zebra's kernel route has three
/// next hops) and a ClusterIP through the range the nodes advertise; with BFD at 50 ms x 3 on
/// both ends a node whose link is cut leaves the router's kernel table within 300 ms.
#[test]
fn bgp_with_frr_on_the_router_ecmp_clusterip_and_bfd() {
    let (_g, lab) = shared();
    let t = Instant::now();
    let _cleanup = BgpCleanup(lab);
    let frr = FrrRouter::start(lab);
    let ns = TestNs::new(lab, "bgpfrr");
    let vip = bgp_setup(
        lab,
        &ns,
        json!({"bfd": {"minRxMillis": 50, "minTxMillis": 50, "multiplier": 3}}),
        None,
    );
    let prefix = format!("{vip}/32");
    let all: BTreeSet<String> = lab.nodes().iter().map(|n| n.ip().to_string()).collect();
    let t_route = Instant::now();
    let ecmp = berth_testbed::wait_for(
        "the Service address in the router's kernel table (FRR) through all three nodes",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || (lab.router_next_hops(&prefix) == all).then_some(()),
    );
    assert!(
        ecmp.is_ok(),
        "next hops {:?}\nFRR: {}\n{}\nsessions: {:?}\nagents:\n{}",
        lab.router_next_hops(&prefix),
        frr.vtysh("show bgp summary"),
        frr.vtysh("show bfd peers brief"),
        peer_sessions(lab, "router"),
        agent_logs(lab)
    );
    eprintln!(
        "[timing] BGP (FRR): the Service's address via 3 next hops {:.1?} after it was assigned",
        t_route.elapsed()
    );
    let rib = frr.vtysh(&format!("show bgp ipv4 unicast {prefix}"));
    assert!(rib.contains("multipath"), "{rib}");
    let far = lab.netns("far");
    let v = berth_testbed::wait_for(
        "the BGP address (FRR) from the far segment",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || curl_json(far.command("curl"), &format!("http://{vip}/")),
    )
    .unwrap();
    assert!(v["pod"].is_string(), "{v}");
    // The ClusterIP range, advertised by every node, reached from far through FRR.
    kubectl(
        lab,
        &[
            "patch",
            "bgpconfiguration",
            "default",
            "--type=merge",
            "-p",
            &json!({"spec": {"serviceClusterIPRanges": [addr::SERVICE_CIDR]}}).to_string(),
        ],
    );
    berth_testbed::wait_for(
        "the ClusterIP range via all three nodes at FRR",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || (lab.router_next_hops(addr::SERVICE_CIDR) == all).then_some(()),
    )
    .unwrap();
    far_reaches_cluster_ip(lab, &ns.name, "web");
    // BFD: three sessions up at FRR, then node 3's link is cut.
    let bfd_up = berth_testbed::wait_for(
        "three BFD peers up at FRR",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let b = frr.vtysh("show bfd peers brief");
            (b.matches(" up ").count() == 3).then_some(())
        },
    );
    assert!(bfd_up.is_ok(), "{}", frr.vtysh("show bfd peers brief"));
    let gone = lab
        .cut_and_time_next_hop_loss(&lab.nodes()[2], &prefix, Duration::from_secs(20))
        .unwrap();
    eprintln!("[timing] BGP with BFD 50 ms x 3 (FRR): a cut node's next hop left the router's kernel table {gone:.1?} after the cut");
    // The figure (the issue's aim: 300 ms) is `cargo xtask bench bgp`'s; the test asserts that
    // BFD acted at all (the 9 s hold time alone would take 6 s or more).
    assert!(
        gone < Duration::from_secs(1),
        "{gone:?}: BFD at 50 ms x 3 did not act\n{}",
        frr.vtysh("show bfd peers")
    );
    berth_testbed::wait_for(
        "node 3 back in FRR's next hops",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || (lab.router_next_hops(&prefix) == all).then_some(()),
    )
    .unwrap();
    drop(ns);
    drop(frr);
    timing("bgp_with_frr_on_the_router_ecmp_clusterip_and_bfd", t);
}

/// The PID of the `berth agent` process of node `node` (its `NODE_NAME`), a process this test's
/// lab started.
fn agent_pid(node: &str) -> Option<u32> {
    berth_lab::agent_pids()
        .into_iter()
        .find(|(_, n)| n.as_deref() == Some(node))
        .map(|(pid, _)| pid)
}

/// Issue 12 on real nodes: an agent killed with SIGKILL (a crash) keeps its node's next hop at
/// the router through graceful restart until it is back, and the session comes back by itself;
/// with BFD (50 ms x 3, BIRD on the router) a node whose link is cut leaves the router's kernel
/// table within a second, where the 9 s hold time alone would take 6 s or more; with the peer
/// `passive` the nodes listen and take the router's connections, and with a password on it the
/// listener refuses unsigned connections and takes signed ones (TCP MD5 on the listening side).
#[test]
fn bgp_graceful_restart_keeps_routes_and_bfd_drops_a_cut_node() {
    let (_g, lab) = shared();
    let t = Instant::now();
    let _cleanup = BgpCleanup(lab);
    let ns = TestNs::new(lab, "bgpgr");
    let vip = bgp_setup(lab, &ns, json!({}), Some(false));
    let prefix = format!("{vip}/32");
    let all: BTreeSet<String> = lab.nodes().iter().map(|n| n.ip().to_string()).collect();
    berth_testbed::wait_for(
        "three next hops",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || (lab.router_next_hops(&prefix) == all).then_some(()),
    )
    .unwrap();

    // Graceful restart: the agent of node 1 crashes.
    let n1 = &lab.nodes()[0];
    let pid = agent_pid(n1.name()).expect("node 1's agent process");
    let killed = Instant::now();
    // SAFETY: a plain kill(2) of a process this test's lab started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    let mut lost = 0usize;
    let mut samples = 0usize;
    let mut back: Option<Duration> = None;
    while killed.elapsed() < Duration::from_secs(90) {
        samples += 1;
        if !lab.router_next_hops(&prefix).contains(n1.ip()) {
            lost += 1;
        }
        if back.is_none() {
            let new_pid = agent_pid(n1.name()).filter(|p| *p != pid);
            let up = new_pid.is_some()
                && curl_json(n1.command("curl"), "http://127.0.0.1:9473/bgp")
                    .is_some_and(|v| v["sessions"][0]["state"] == "Established");
            if up {
                back = Some(killed.elapsed());
            }
        } else if killed.elapsed() > back.unwrap_or_default() + Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let back = back.unwrap_or_else(|| {
        panic!(
            "node 1's agent did not come back with its session within 90 s\n{}",
            agent_logs(lab)
        )
    });
    eprintln!(
        "[timing] BGP graceful restart: the killed agent's session Established again {back:.1?} after SIGKILL; next hop missing in {lost} of {samples} samples"
    );
    assert_eq!(lost, 0, "the router dropped node 1 during the restart");
    assert_eq!(lab.router_next_hops(&prefix), all);

    // BFD: the router and the peer both ask for it; then node 2's link is cut.
    lab.configure_router(Some(&lab.router_bgp(None, true)))
        .unwrap();
    patch_router_peer(
        lab,
        r#"{"spec":{"bfd":{"minRxMillis":50,"minTxMillis":50,"multiplier":3}}}"#,
    );
    let bfd_up = berth_testbed::wait_for(
        "three BFD sessions up at the router and three next hops",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let b = lab.birdc(&["show", "bfd", "sessions"]).unwrap_or_default();
            (b.matches(" Up ").count() == 3 && lab.router_next_hops(&prefix) == all).then_some(())
        },
    );
    assert!(
        bfd_up.is_ok(),
        "{:?}\n{:?}",
        lab.birdc(&["show", "bfd", "sessions"]),
        lab.router_next_hops(&prefix)
    );
    let gone = lab
        .cut_and_time_next_hop_loss(&lab.nodes()[1], &prefix, Duration::from_secs(20))
        .unwrap();
    eprintln!("[timing] BGP with BFD: a cut node's next hop left the router's kernel table {gone:.1?} after the cut");
    assert!(gone < Duration::from_secs(1), "{gone:?}: BFD did not act");
    // It comes back once the link does.
    berth_testbed::wait_for(
        "node 2 back in the next hops",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || (lab.router_next_hops(&prefix) == all).then_some(()),
    )
    .unwrap();

    // A router that dials: with `passive: true` the nodes stop dialing and listen on port 179
    // of their InternalIP; BIRD's connections come in and the routes are back.
    patch_router_peer(lab, r#"{"spec":{"passive":true}}"#);
    let listened = berth_testbed::wait_for(
        "every node listening on its address, BIRD's session taken on port 179, three next hops",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let ok = lab.nodes().iter().all(|n| {
                let l = n
                    .exec("ss", &["-Htln", "sport", "=", ":179"])
                    .unwrap_or_default();
                let e = n
                    .exec(
                        "ss",
                        &["-Htn", "state", "established", "sport", "=", ":179"],
                    )
                    .unwrap_or_default();
                l.contains(&format!("{}:179", n.ip())) && e.contains(addr::ROUTER)
            });
            (ok && lab.router_next_hops(&prefix) == all).then_some(())
        },
    );
    assert!(
        listened.is_ok(),
        "next hops {:?}; node1 ss: {:?}\nbird: {:?}",
        lab.router_next_hops(&prefix),
        lab.nodes()[0].exec(
            "ss",
            &["-Htan", "sport", "=", ":179", "or", "dport", "=", ":179"]
        ),
        lab.birdc(&["show", "protocols"])
    );

    // TCP MD5 on the listening side: with a password on the passive peer the nodes' listener
    // carries the key for the router's address, so BIRD's unsigned connections are refused
    // (the sessions stay down) until BIRD signs with the same password.
    create_router_secret(lab, "lab-bgp-listen");
    patch_router_peer(
        lab,
        r#"{"spec":{"passwordSecretRef":{"name":"router-bgp"}}}"#,
    );
    berth_testbed::wait_for(
        "the sessions down once the nodes want a password BIRD does not send",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let s = peer_sessions(lab, "router");
            (s.len() == 3 && s.values().all(|(st, _, _)| st != "Established")).then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}: {:?}", peer_sessions(lab, "router")));
    // Several of BIRD's connect attempts (retry 1 s): none gets through the listener.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let s = peer_sessions(lab, "router");
        assert!(
            s.values().all(|(st, _, _)| st != "Established"),
            "an unsigned connection established on a listener with a key: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    lab.configure_router(Some(&lab.router_bgp(Some("lab-bgp-listen"), true)))
        .unwrap();
    let signed = berth_testbed::wait_for(
        "BIRD's signed connections taken on port 179, three next hops",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let s = peer_sessions(lab, "router");
            let up = s.len() == 3 && s.values().all(|(st, _, _)| st == "Established");
            let dialled_in = lab.nodes().iter().all(|n| {
                n.exec(
                    "ss",
                    &["-Htn", "state", "established", "sport", "=", ":179"],
                )
                .unwrap_or_default()
                .contains(addr::ROUTER)
            });
            (up && dialled_in && lab.router_next_hops(&prefix) == all).then_some(())
        },
    );
    assert!(
        signed.is_ok(),
        "{:?}\nnext hops {:?}\nbird: {:?}",
        peer_sessions(lab, "router"),
        lab.router_next_hops(&prefix),
        lab.birdc(&["show", "protocols"])
    );
    drop(ns);
    timing(
        "bgp_graceful_restart_keeps_routes_and_bfd_drops_a_cut_node",
        t,
    );
}
