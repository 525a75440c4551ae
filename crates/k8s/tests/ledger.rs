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
        "owner": {"network": "net", "containerID": "c1", "ifname": "eth0",
                  "pod": {"namespace": "default", "name": "web-0"}},
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
        .request("GET", "/apis/berth.dev/v1alpha1/bindings", None)
        .unwrap()
        .json()
        .unwrap();
    let item = &out["items"][0];
    assert_eq!(item["spec"]["address"], "2001:db8::5");
    assert_eq!(item["spec"]["key"], "2001:db8::5");
    assert_eq!(item["spec"]["owner"]["pod"]["name"], "web-0");
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
}

#[test]
fn deploy_manifests_are_accepted_by_the_api_server() {
    berth_testbed::require_root();
    let cp = KubeControlPlane::start().unwrap();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/berth.yaml"
    ))
    .unwrap();
    let mut kinds = vec![];
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        let kind = v["kind"].as_str().unwrap().to_string();
        let ns = v["metadata"]["namespace"].as_str().unwrap_or("");
        let path = match kind.as_str() {
            "ServiceAccount" => format!("/api/v1/namespaces/{ns}/serviceaccounts"),
            "ClusterRole" => "/apis/rbac.authorization.k8s.io/v1/clusterroles".to_string(),
            "ClusterRoleBinding" => {
                "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings".to_string()
            }
            "DaemonSet" => format!("/apis/apps/v1/namespaces/{ns}/daemonsets"),
            "Deployment" => format!("/apis/apps/v1/namespaces/{ns}/deployments"),
            other => panic!("deploy/berth.yaml has a {other} this test does not know"),
        };
        let r = cp
            .request("POST", &format!("{path}?dryRun=All"), Some(&v))
            .unwrap();
        assert!(
            r.status == 201 || r.status == 200,
            "{kind}: HTTP {} {}",
            r.status,
            r.body
        );
        kinds.push(kind);
    }
    assert_eq!(kinds.len(), 8, "{kinds:?}");
}
