//! Tests of the Kubernetes control-plane harness against kube-apiserver and
//! kube-controller-manager v1.20.2 built from Debian's source (`cargo xtask kube build`).
//!
//! They fail loudly, never skip, when the binaries are missing.

use std::time::{Duration, Instant};

use berth_testbed::{
    require_kube_binaries, require_root_and_tools, wait_for, KubeControlPlane, KUBE_VERSION,
};
use serde_json::{json, Value};

fn setup() -> KubeControlPlane {
    require_root_and_tools();
    require_kube_binaries();
    let cp = KubeControlPlane::start().unwrap();
    eprintln!("control plane up: {:?}", cp.timings());
    cp
}

/// Polls a GET until it answers 200 and `pred` holds on the body.
fn wait_get(cp: &KubeControlPlane, what: &str, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(
        what,
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let r = cp.request("GET", path, None).ok()?;
            let v = r.ok().ok()?;
            pred(&v).then_some(v)
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}\napiserver log:\n{}\ncontroller-manager log:\n{}",
            cp.apiserver_log_tail(20),
            cp.controller_manager_log_tail(20)
        )
    })
}

#[test]
fn api_nodes_pods_crds_and_apiserver_restart() {
    let cp = setup();
    assert!(cp.server().starts_with("https://127.0.0.1:"));
    let kubeconfig = std::fs::read_to_string(cp.kubeconfig()).unwrap();
    assert!(kubeconfig.contains(&cp.server()));
    assert!(kubeconfig.contains("certificate-authority-data: "));
    assert!(kubeconfig.contains(cp.token()));
    assert!(cp.ca_pem().unwrap().is_file());

    // Version and a raw HTTPS GET with the token, verified against the CA.
    let v = cp.request("GET", "/version", None).unwrap().ok().unwrap();
    assert_eq!(v["gitVersion"], format!("v{KUBE_VERSION}"), "{v}");
    let ns = cp
        .request("GET", "/api/v1/namespaces", None)
        .unwrap()
        .ok()
        .unwrap();
    let names: Vec<&str> = ns["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    assert!(names.contains(&"default"), "{names:?}");
    assert!(names.contains(&"kube-system"), "{names:?}");

    // Without the token: 401 (anonymous requests are not authorised to list).
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(cp.ca_pem().unwrap())
        .arg("-H")
        .arg("Authorization: Bearer wrong")
        .arg(format!("{}/api/v1/namespaces", cp.server()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");

    // A Node (no kubelet behind it) and a Pod bound to it, with status set as a kubelet would.
    let node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node1", "labels": {"kubernetes.io/hostname": "node1"}}});
    let r = cp.request("POST", "/api/v1/nodes", Some(&node)).unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let status = json!({"status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.11"}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                        "message": "simulated"}]}});
    cp.request("PATCH", "/api/v1/nodes/node1/status", Some(&status))
        .unwrap()
        .ok()
        .unwrap();

    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": "node1", "automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "busybox:latest",
                                 "imagePullPolicy": "Never"}]}});
    let r = cp
        .request("POST", "/api/v1/namespaces/default/pods", Some(&pod))
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let r = cp
        .request("POST", "/api/v1/namespaces/default/pods", Some(&pod))
        .unwrap();
    assert_eq!(r.status, 409, "second create must conflict: {}", r.body);
    let st = json!({"status": {"phase": "Running", "podIP": "198.18.10.2",
        "podIPs": [{"ip": "198.18.10.2"}]}});
    cp.request(
        "PATCH",
        "/api/v1/namespaces/default/pods/web-0/status",
        Some(&st),
    )
    .unwrap()
    .ok()
    .unwrap();
    let p = cp
        .request("GET", "/api/v1/namespaces/default/pods/web-0", None)
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(p["spec"]["nodeName"], "node1");
    assert_eq!(p["status"]["podIP"], "198.18.10.2");

    // A CRD (apiextensions.k8s.io/v1) and an object of it.
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "ipblocks.berth.test"},
        "spec": {"group": "berth.test", "scope": "Namespaced",
            "names": {"plural": "ipblocks", "singular": "ipblock", "kind": "IPBlock"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "cidr": {"type": "string"}, "node": {"type": "string"}}}}}}}]}});
    let r = cp
        .request(
            "POST",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            Some(&crd),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    wait_get(
        &cp,
        "CRD Established",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/ipblocks.berth.test",
        |v| {
            v["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            })
        },
    );
    let obj = json!({"apiVersion": "berth.test/v1", "kind": "IPBlock",
        "metadata": {"name": "node1-0", "namespace": "default"},
        "spec": {"cidr": "198.18.10.0/26", "node": "node1"}});
    let coll = "/apis/berth.test/v1/namespaces/default/ipblocks";
    // The new API path may take a moment to be served after Established.
    let created = wait_for(
        "IPBlock created",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let r = cp.request("POST", coll, Some(&obj)).ok()?;
            (r.status == 201).then(|| r.json().unwrap())
        },
    )
    .unwrap();
    let uid = created["metadata"]["uid"].as_str().unwrap().to_string();

    // Restart the apiserver: same port, same data.
    let pid = cp.apiserver_pid().unwrap();
    let t = Instant::now();
    cp.stop_apiserver().unwrap();
    eprintln!("apiserver SIGTERM stop took {:?}", t.elapsed());
    assert!(!cp.apiserver_running());
    assert!(cp.request("GET", "/readyz", None).is_err());
    let t = Instant::now();
    cp.start_apiserver().unwrap();
    eprintln!("apiserver start after stop ready in {:?}", t.elapsed());
    assert_ne!(cp.apiserver_pid().unwrap(), pid);
    let got = wait_get(
        &cp,
        "IPBlock after restart",
        &format!("{coll}/node1-0"),
        |_| true,
    );
    assert_eq!(got["metadata"]["uid"], uid.as_str());
    assert_eq!(got["spec"]["cidr"], "198.18.10.0/26");

    // A crash (SIGKILL) and restart_apiserver() too; the pod is still there.
    cp.kill_apiserver().unwrap();
    let t = Instant::now();
    cp.restart_apiserver().unwrap();
    eprintln!("apiserver start after SIGKILL ready in {:?}", t.elapsed());
    let p = cp
        .request("GET", "/api/v1/namespaces/default/pods/web-0", None)
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(p["status"]["podIP"], "198.18.10.2");
    assert!(cp.controller_manager_running());
}

#[test]
fn controller_manager_runs_controllers() {
    let cp = setup();
    assert!(cp.controller_manager_running());
    let t = Instant::now();
    let dep = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "busybox:latest"}]}}}});
    let r = cp
        .request(
            "POST",
            "/apis/apps/v1/namespaces/default/deployments",
            Some(&dep),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);
    let rs = wait_get(
        &cp,
        "a ReplicaSet owned by Deployment web",
        "/apis/apps/v1/namespaces/default/replicasets?labelSelector=app%3Dweb",
        |v| {
            v["items"].as_array().is_some_and(|items| {
                items.iter().any(|i| {
                    i["metadata"]["ownerReferences"][0]["name"] == "web"
                        && i["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
                })
            })
        },
    );
    eprintln!("Deployment -> ReplicaSet in {:?}", t.elapsed());
    assert_eq!(rs["items"][0]["spec"]["replicas"], 2);
    // The ReplicaSet controller creates the pods (nothing schedules them: no scheduler).
    wait_get(
        &cp,
        "2 pods of the ReplicaSet",
        "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb",
        |v| v["items"].as_array().is_some_and(|i| i.len() == 2),
    );
    eprintln!("Deployment -> 2 pods in {:?}", t.elapsed());

    // A namespace created by the test gets its default ServiceAccount from the controllers.
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "berth-x"}});
    cp.request("POST", "/api/v1/namespaces", Some(&ns))
        .unwrap()
        .ok()
        .unwrap();
    cp.wait_default_service_account("berth-x", Duration::from_secs(60))
        .unwrap();

    // Killed, the controllers stop; started again, they work again.
    cp.kill_controller_manager().unwrap();
    assert!(!cp.controller_manager_running());
    cp.start_controller_manager().unwrap();
    assert!(cp.controller_manager_running());
    let r = cp
        .request(
            "PATCH",
            "/apis/apps/v1/namespaces/default/deployments/web",
            Some(&json!({"spec": {"replicas": 3}})),
        )
        .unwrap();
    assert!(r.is_success(), "{}", r.body);
    wait_get(
        &cp,
        "3 pods after scaling with a restarted controller-manager",
        "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb",
        |v| v["items"].as_array().is_some_and(|i| i.len() == 3),
    );
}

#[test]
fn missing_binaries_fail_naming_the_build_command() {
    let dir = tempfile::tempdir().unwrap();
    let err = KubeControlPlane::builder()
        .bin_dir(dir.path())
        .start()
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("cargo xtask kube build"), "{msg}");
}

/// `curl` as the holder of `token`: (HTTP status, body).
fn get_as(cp: &KubeControlPlane, token: &str, path: &str) -> (u16, String) {
    let out = std::process::Command::new(berth_testbed::tool("curl"))
        .env("NO_PROXY", "*")
        .args(["-sS", "--max-time", "30", "--cacert"])
        .arg(cp.ca_pem().unwrap())
        .arg("-H")
        .arg(format!("Authorization: Bearer {token}"))
        .args(["-w", "\n%{http_code}"])
        .arg(format!("{}{path}", cp.server()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// RBAC from a manifest file, a ServiceAccount's token and kubeconfig from the TokenRequest API,
/// and the audit log's record of what RBAC refused it. No controller-manager: a TokenRequest
/// needs none.
#[test]
fn service_accounts_act_with_their_rbac_and_refusals_are_recorded() {
    require_root_and_tools();
    require_kube_binaries();
    let cp = KubeControlPlane::builder()
        .controller_manager(false)
        .start()
        .unwrap();
    let manifest = cp.dir().join("rbac.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: reader, namespace: team}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {name: skipped, namespace: team}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: reader, namespace: team}\n\
         rules:\n  - {apiGroups: [\"\"], resources: [configmaps], verbs: [list]}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: reader, namespace: team}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}\n\
         subjects: [{kind: ServiceAccount, name: reader, namespace: team}]\n",
    )
    .unwrap();
    let applied = cp
        .apply_manifest(&manifest, Some(berth_testbed::RBAC_KINDS))
        .unwrap();
    assert_eq!(
        applied,
        [
            "Namespace/team",
            "ServiceAccount/reader",
            "Role/reader",
            "RoleBinding/reader"
        ],
        "only RBAC kinds, in file order"
    );
    // Applying again replaces rather than failing.
    cp.apply_manifest(&manifest, Some(berth_testbed::RBAC_KINDS))
        .unwrap();
    let token = cp
        .service_account_token("team", "reader", Duration::from_secs(600))
        .unwrap();
    assert!(cp.forbidden_requests().unwrap().is_empty());
    let (code, body) = get_as(&cp, &token, "/api/v1/namespaces/team/configmaps");
    assert_eq!(code, 200, "{body}");
    let (code, _) = get_as(&cp, &token, "/api/v1/namespaces/team/secrets");
    assert_eq!(code, 403);
    let refused = wait_for(
        "the refusal in the audit log",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let r = cp.forbidden_requests().ok()?;
            (!r.is_empty()).then_some(r)
        },
    )
    .unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0]
            .starts_with("system:serviceaccount:team:reader list /api/v1/namespaces/team/secrets"),
        "{refused:?}"
    );
    // The kubeconfig carries the same identity.
    let kc = cp.service_account_kubeconfig("team", "reader").unwrap();
    let text = std::fs::read_to_string(&kc).unwrap();
    assert!(
        text.contains("system:serviceaccount:team:reader") && text.contains("namespace: team"),
        "{text}"
    );
}
