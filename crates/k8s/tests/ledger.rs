//! The Kubernetes ledger backend on a real kube-apiserver (v1.20.2, built from Debian's source):
//! the same conformance suite as the embedded and etcd backends.

use berth_k8s::{crd, KubeLedger};
use berth_ledger::{conformance, Kind, Ledger};
use berth_testbed::KubeControlPlane;
use std::sync::Arc;
use std::time::Duration;

async fn client(cp: &KubeControlPlane) -> kube::Client {
    berth_k8s::client(Some(cp.kubeconfig())).await.unwrap().0
}

/// Delete every Berth record, so each case starts from an empty ledger.
async fn wipe(l: &KubeLedger) {
    for kind in Kind::ALL {
        for e in l.list(kind).await.unwrap() {
            l.delete(kind, &e.name, &e.version).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubernetes_passes_the_conformance_suite() {
    berth_testbed::require_root();
    let cp = KubeControlPlane::start().unwrap();
    let c = client(&cp).await;
    crd::install(&c, Duration::from_secs(30)).await.unwrap();
    conformance::run_all(|| {
        let c = c.clone();
        async move {
            let l = KubeLedger::new(c);
            wipe(&l).await;
            Arc::new(l) as Arc<dyn Ledger>
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_readable_berth_objects() {
    berth_testbed::require_root();
    let cp = KubeControlPlane::start().unwrap();
    let c = client(&cp).await;
    crd::install(&c, Duration::from_secs(30)).await.unwrap();
    let l = KubeLedger::new(c.clone());
    let binding = serde_json::json!({
        "address": "2001:db8::5", "prefixLen": 64, "pool": "pods", "node": "node-1",
        "holder": {"attachment": {"network": "net", "containerID": "c1", "ifname": "eth0",
                  "pod": {"namespace": "default", "name": "web-0"}}},
        "kind": "dynamic", "block": "2001:db8::/122", "since": "2024-06-15T07:00:00.123456Z"
    });
    l.create(
        Kind::Binding,
        "2001:db8::5",
        serde_json::to_vec(&binding).unwrap(),
    )
    .await
    .unwrap();
    // The object validates against the CRD schema and shows the printer columns' fields.
    let out = cp
        .request("GET", "/apis/berth.dev/v1alpha1/addressbindings", None)
        .unwrap()
        .json()
        .unwrap();
    let item = &out["items"][0];
    assert_eq!(item["spec"]["address"], "2001:db8::5");
    assert_eq!(item["spec"]["key"], "2001:db8::5");
    assert_eq!(item["spec"]["holder"]["attachment"]["pod"]["name"], "web-0");
    assert!(item["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("2001-db8-5-"));
    // A record that breaks the schema is refused, not stored.
    let bad = serde_json::json!({"address": 5, "prefixLen": "x"});
    assert!(l
        .create(Kind::Binding, "bad", serde_json::to_vec(&bad).unwrap())
        .await
        .is_err());
    assert_eq!(l.list(Kind::Binding).await.unwrap().len(), 1);

    // A Pool as a user writes it: the object's name is the pool's, no internal field, no
    // blockSize for a service pool; the ledger reads it as pool `public`.
    let user_pool = serde_json::json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "Pool", "metadata": {"name": "public"},
        "spec": {"use": "service", "subnets": [{"cidr": "198.18.100.0/28"}],
                 "autoAssign": false, "externalIPs": true,
                 "serviceAllocation": {"namespaces": ["team-a"], "priority": 10,
                                       "serviceSelector": {"matchLabels": {"expose": "yes"}}}}
    });
    let r = cp
        .request("POST", "/apis/berth.dev/v1alpha1/pools", Some(&user_pool))
        .unwrap();
    assert_eq!(r.status, 201, "a user's Pool is stored: {}", r.body);
    let e = l
        .get(Kind::Pool, "public")
        .await
        .unwrap()
        .expect("pool public");
    let p: berth_core::PoolSpec = serde_json::from_slice(&e.value).unwrap();
    assert_eq!(p.name, "public");
    assert_eq!(p.use_, berth_core::PoolUse::Service);
    assert!(!p.service.auto_assign && p.service.external_ips);
    assert_eq!(p.service.service_allocation.priority, 10);
    assert_eq!(p.subnets[0].block_size, None);
    p.validate().unwrap();
    // A pool Berth writes (a CNI config's pod pool) is stored under its own name, without key.
    let pods = berth_core::PoolSpec {
        name: "pods".into(),
        use_: berth_core::PoolUse::Pod,
        subnets: vec![berth_core::SubnetSpec::new(
            "198.18.0.0/24".parse().unwrap(),
        )],
        policy: Default::default(),
        service: Default::default(),
        announcement: Default::default(),
    };
    l.create(Kind::Pool, "pods", serde_json::to_vec(&pods).unwrap())
        .await
        .unwrap();
    let obj = cp
        .request("GET", "/apis/berth.dev/v1alpha1/pools/pods", None)
        .unwrap()
        .json()
        .unwrap();
    assert!(
        obj["spec"].get("key").is_none() && obj["spec"].get("name").is_none(),
        "{obj}"
    );
    let back: berth_core::PoolSpec =
        serde_json::from_slice(&l.get(Kind::Pool, "pods").await.unwrap().unwrap().value).unwrap();
    assert_eq!(back, pods);
}

/// deploy/'s kustomizations, built by kubectl v1.20.2's own kustomize (as `kubectl apply -k`
/// does), pass a server-side dry run object by object: the base, and the lab's overlay.
#[test]
fn deploy_manifests_are_accepted_by_the_api_server() {
    berth_testbed::require_root();
    let cp = KubeControlPlane::start().unwrap();
    // The Namespace is created for real (everything else lives in it, and a dry run of a
    // namespaced object needs its namespace); every other object passes a dry run.
    for (dir, want) in [("overlays/lab", 13), ("base", 13)] {
        let path = format!("{}/../../deploy/{dir}", env!("CARGO_MANIFEST_DIR"));
        let text = cp
            .kubectl(&["kustomize", &path])
            .unwrap_or_else(|e| panic!("kubectl kustomize deploy/{dir}: {e:#}"));
        let mut kinds = vec![];
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            let kind = v["kind"].as_str().unwrap().to_string();
            let ns = v["metadata"]["namespace"].as_str().unwrap_or("");
            let cluster_scoped = matches!(
                kind.as_str(),
                "CustomResourceDefinition" | "ClusterRole" | "ClusterRoleBinding" | "Namespace"
            );
            // Everything Berth runs lives in berth-system.
            assert!(
                cluster_scoped || ns == "berth-system",
                "deploy/{dir}: {kind} {} is in namespace {ns:?}",
                v["metadata"]["name"]
            );
            let path = match kind.as_str() {
                "CustomResourceDefinition" => {
                    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions".to_string()
                }
                "ConfigMap" => format!("/api/v1/namespaces/{ns}/configmaps"),
                "ServiceAccount" => format!("/api/v1/namespaces/{ns}/serviceaccounts"),
                "ClusterRole" => "/apis/rbac.authorization.k8s.io/v1/clusterroles".to_string(),
                "ClusterRoleBinding" => {
                    "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings".to_string()
                }
                "Role" => format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles"),
                "RoleBinding" => {
                    format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings")
                }
                "Namespace" => "/api/v1/namespaces".to_string(),
                "DaemonSet" => format!("/apis/apps/v1/namespaces/{ns}/daemonsets"),
                "Deployment" => format!("/apis/apps/v1/namespaces/{ns}/deployments"),
                other => panic!("deploy/{dir} has a {other} this test does not know"),
            };
            let r = if kind == "Namespace" {
                let r = cp.request("POST", &path, Some(&v)).unwrap();
                assert!(
                    matches!(r.status, 200 | 201 | 409),
                    "deploy/{dir}: Namespace: HTTP {} {}",
                    r.status,
                    r.body
                );
                r
            } else {
                cp.request("POST", &format!("{path}?dryRun=All"), Some(&v))
                    .unwrap()
            };
            assert!(
                matches!(r.status, 200 | 201) || kind == "Namespace",
                "deploy/{dir}: {kind}: HTTP {} {}",
                r.status,
                r.body
            );
            kinds.push(kind);
        }
        assert!(kinds.len() >= want, "deploy/{dir}: {kinds:?}");
        for k in [
            "Namespace",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Deployment",
        ] {
            assert!(
                kinds.iter().any(|x| x == k),
                "deploy/{dir} lacks a {k}: {kinds:?}"
            );
        }
    }
}

/// The CRD schemas make the API server refuse (422) what Berth cannot decode, and accept what it
/// writes. Each refused spec is also checked not to decode as the core record, so the schema and
/// the decoder agree case by case.
#[test]
fn the_api_server_refuses_what_berth_cannot_decode() {
    use serde_json::{json, Value};
    berth_testbed::require_root();
    let cp = KubeControlPlane::start().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = client(&cp).await;
        crd::install(&c, Duration::from_secs(30)).await.unwrap();
    });
    let binding = json!({
        "key": "198.18.0.5", "address": "198.18.0.5", "prefixLen": 24, "pool": "pods",
        "node": "n1", "holder": {"attachment": {"network": "net", "containerID": "c1", "ifname": "eth0"}},
        "kind": "dynamic", "block": "198.18.0.0/26", "since": "2024-06-15T07:00:00.123456Z"
    });
    let block =
        json!({"key": "pods/198.18.0.0/26", "pool": "pods", "cidr": "198.18.0.0/26", "node": "n1"});
    let claim = json!({
        "key": "pods/statefulset/ns/web/0", "pool": "pods", "addresses": ["198.18.0.9"],
        "identity": {"kind": "statefulSet", "namespace": "ns", "name": "web", "ordinal": 0},
        "since": "2024-06-15T07:00:00Z"
    });
    let pool = json!({
        "key": "pods", "name": "pods", "use": "pod",
        "subnets": [{"cidr": "198.18.0.0/24", "blockSize": 26, "gateway": "198.18.0.1",
                     "ranges": [{"start": "198.18.0.10", "end": "198.18.0.250"}],
                     "excludes": ["198.18.0.64/30"], "routes": [{"dst": "0.0.0.0/0"}]}]
    });
    let peer = json!({
        "peerAddress": "198.18.1.1", "peerASN": 64512, "myASN": 64513,
        "sourceAddress": "198.18.0.11", "passwordSecretRef": {"name": "router"},
        "bfd": {"minRxMillis": 50, "minTxMillis": 50, "multiplier": 3},
        "gracefulRestart": {"restartTimeSeconds": 120}, "families": ["ipv4"],
        "nodeSelector": {"matchLabels": {"rack": "a"}}
    });
    let bgp = json!({"myASN": 64513, "advertisePodBlocks": true,
                     "serviceClusterIPRanges": ["10.96.0.0/12"]});
    // (plural, kind, a good spec, [(what, a change that makes it bad)]): `null` removes a field.
    type Cases = Vec<(&'static str, Value)>;
    let table: Vec<(&str, &str, Value, Cases)> = vec![
        (
            "addressbindings",
            "AddressBinding",
            binding.clone(),
            vec![
                ("dynamic without block", json!({"block": null})),
                (
                    "claimed without claim",
                    json!({"kind": "claimed", "block": null}),
                ),
                ("unknown kind", json!({"kind": "borrowed"})),
                ("kind missing", json!({"kind": null})),
                ("address not an address", json!({"address": "198.18.0.500"})),
                ("address a word", json!({"address": "web"})),
                ("prefixLen beyond a byte", json!({"prefixLen": 300})),
                ("block not a CIDR", json!({"block": "198.18.0.0/99"})),
                ("since not a time", json!({"since": "yesterday"})),
                ("since in seconds", json!({"since": 1718434800})),
                (
                    "owner without containerID",
                    json!({"holder": {"attachment": {"network": "n", "ifname": "eth0"}}}),
                ),
                (
                    "pod without name",
                    json!({"holder": {"attachment": {"network": "n", "containerID": "c", "ifname": "eth0", "pod": {"namespace": "ns"}}}}),
                ),
                ("holder missing", json!({"holder": null})),
                (
                    "holder both attachment and services",
                    json!({"holder": {"attachment": {"network": "n", "containerID": "c", "ifname": "eth0"},
                                      "services": {"services": [{"namespace": "ns", "name": "s", "uid": "u"}]}}}),
                ),
                (
                    "service without uid",
                    json!({"holder": {"services": {"services": [{"namespace": "ns", "name": "s"}]}}}),
                ),
            ],
        ),
        (
            "blocks",
            "Block",
            block.clone(),
            vec![
                ("cidr not a CIDR", json!({"cidr": "198.18.0.0"})),
                ("node missing", json!({"node": null})),
            ],
        ),
        (
            "claims",
            "Claim",
            claim.clone(),
            vec![
                (
                    "statefulSet without ordinal",
                    json!({"identity": {"kind": "statefulSet", "namespace": "ns", "name": "web"}}),
                ),
                (
                    "stickySet without name",
                    json!({"identity": {"kind": "stickySet", "namespace": "ns"}}),
                ),
                (
                    "key identity without key",
                    json!({"identity": {"kind": "key"}}),
                ),
                (
                    "unknown identity",
                    json!({"identity": {"kind": "deployment", "name": "x"}}),
                ),
                (
                    "negative ordinal",
                    json!({"identity": {"kind": "statefulSet", "namespace": "ns", "name": "web", "ordinal": -1}}),
                ),
                ("address not an address", json!({"addresses": ["x"]})),
                ("since missing", json!({"since": null})),
            ],
        ),
        (
            "pools",
            "Pool",
            pool.clone(),
            vec![
                ("unknown use", json!({"use": "everything"})),
                (
                    "subnet cidr not a CIDR",
                    json!({"subnets": [{"cidr": "x", "blockSize": 26}]}),
                ),
                (
                    "gateway not an address",
                    json!({"subnets": [{"cidr": "198.18.0.0/24", "blockSize": 26, "gateway": "x"}]}),
                ),
                (
                    "range end missing",
                    json!({"subnets": [{"cidr": "198.18.0.0/24", "blockSize": 26, "ranges": [{"start": "198.18.0.10"}]}]}),
                ),
                (
                    "exclude not a CIDR",
                    json!({"subnets": [{"cidr": "198.18.0.0/24", "blockSize": 26, "excludes": ["x/y"]}]}),
                ),
            ],
        ),
        (
            "bgppeers",
            "BGPPeer",
            peer.clone(),
            vec![
                (
                    "peerAddress not an address",
                    json!({"peerAddress": "router-a"}),
                ),
                ("peerAddress missing", json!({"peerAddress": null})),
                ("peerASN missing", json!({"peerASN": null})),
                ("peerASN negative", json!({"peerASN": -1})),
                ("peerASN a string", json!({"peerASN": "64512"})),
                (
                    "sourceAddress not an address",
                    json!({"sourceAddress": "eth0"}),
                ),
                ("unknown family", json!({"families": ["ipv5"]})),
                (
                    "secret without name",
                    json!({"passwordSecretRef": {"key": "k"}}),
                ),
            ],
        ),
        (
            "bgpconfigurations",
            "BGPConfiguration",
            bgp.clone(),
            vec![
                (
                    "range not a CIDR",
                    json!({"serviceClusterIPRanges": ["10.96.0.0"]}),
                ),
                ("myASN a string", json!({"myASN": "x"})),
            ],
        ),
    ];
    let decodes = |kind: &str, spec: &Value| -> bool {
        let mut s = spec.clone();
        s.as_object_mut().unwrap().remove("key");
        match kind {
            "AddressBinding" => serde_json::from_value::<berth_core::Binding>(s).is_ok(),
            "Block" => serde_json::from_value::<berth_core::Block>(s).is_ok(),
            "Claim" => serde_json::from_value::<berth_core::Claim>(s).is_ok(),
            "BGPPeer" => serde_json::from_value::<berth_core::bgp::PeerSpec>(s).is_ok(),
            "BGPConfiguration" => {
                serde_json::from_value::<berth_core::bgp::BgpConfigSpec>(s).is_ok()
            }
            _ => serde_json::from_value::<berth_core::PoolSpec>(s).is_ok(),
        }
    };
    for (plural, kind, good, cases) in &table {
        let path = format!("/apis/berth.dev/v1alpha1/{plural}");
        let obj = |name: &str, spec: &Value| {
            json!({"apiVersion": "berth.dev/v1alpha1", "kind": kind,
                   "metadata": {"name": name}, "spec": spec})
        };
        assert!(decodes(kind, good), "{kind}: the good spec decodes");
        let r = cp.request("POST", &path, Some(&obj("good", good))).unwrap();
        assert_eq!(r.status, 201, "{kind}: the good spec is stored: {}", r.body);
        for (i, (what, change)) in cases.iter().enumerate() {
            let mut spec = good.clone();
            for (k, v) in change.as_object().unwrap() {
                if v.is_null() {
                    spec.as_object_mut().unwrap().remove(k);
                } else {
                    spec[k] = v.clone();
                }
            }
            assert!(
                !decodes(kind, &spec),
                "{kind} {what}: Berth decodes {spec}, so the schema need not refuse it"
            );
            let r = cp
                .request("POST", &path, Some(&obj(&format!("bad-{i}"), &spec)))
                .unwrap();
            assert_eq!(
                r.status, 422,
                "{kind} {what}: the API server must refuse {spec}: HTTP {} {}",
                r.status, r.body
            );
        }
    }
    // Stricter than the decoder where the decoder's type is wider than sense: no prefix is
    // longer than 128 bits.
    let mut spec = binding.clone();
    spec["prefixLen"] = json!(129);
    let r = cp
        .request(
            "POST",
            "/apis/berth.dev/v1alpha1/addressbindings",
            Some(
                &json!({"apiVersion": "berth.dev/v1alpha1", "kind": "AddressBinding",
                         "metadata": {"name": "long-prefix"}, "spec": spec}),
            ),
        )
        .unwrap();
    assert_eq!(r.status, 422, "prefixLen 129: {}", r.body);
}
