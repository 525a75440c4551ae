//! What a CNI ADD learns about its pod, against a real kube-apiserver (v1.20.2): from the
//! node's pod watch, and from the API server when the watch has not shown the pod in time (a
//! watch behind must not fail pod creation; the lab once saw a node's pods fail for minutes).

use berth_agent::{KubePods, PodSource};
use berth_cni::{CniArgs, CniError};
use berth_k8s::pods::PodCache;
use berth_testbed::KubeControlPlane;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::time::Duration;

fn cni_config() -> berth_cni::IpamConfig {
    let conf = json!({
        "cniVersion": "1.0.0", "name": "pods", "type": "bridge",
        "ipam": {"type": "berth-ipam", "ranges": [[{"subnet": "198.18.64.0/24"}]]}
    });
    berth_cni::parse_config(conf.to_string().as_bytes()).unwrap()
}

fn args(name: &str, uid: Option<&str>) -> CniArgs {
    CniArgs {
        pod_namespace: Some("default".into()),
        pod_name: Some(name.into()),
        pod_uid: uid.map(str::to_string),
        ..Default::default()
    }
}

/// Creates pod `name` bound to `node` (no kubelet runs: the object is all a CNI ADD reads).
async fn pod(c: &kube::Client, name: &str, node: &str) -> String {
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(c.clone(), "default");
    let p = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"berth.dev/ips": "198.18.64.9"}},
        "spec": {"nodeName": node, "automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "berth.dev/none"}]}
    }))
    .unwrap();
    let p = api.create(&PostParams::default(), &p).await.unwrap();
    p.metadata.uid.unwrap()
}

/// The ServiceAccount admission needs `default` (no controller-manager creates it here).
async fn service_account(c: &kube::Client) {
    let api: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(c.clone(), "default");
    let sa = serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    let _ = api.create(&PostParams::default(), &sa).await;
}

fn retry_message(e: CniError) -> String {
    assert_eq!(e.code, CniError::TRY_AGAIN_LATER, "{e:?}");
    e.msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_the_watch_has_not_shown_is_read_from_the_api_server() {
    berth_testbed::require_root();
    let cp = KubeControlPlane::start().unwrap();
    let c = berth_k8s::client(Some(cp.kubeconfig())).await.unwrap().0;
    service_account(&c).await;
    let cfg = cni_config();
    let uid = pod(&c, "web-0", "n1").await;
    pod(&c, "elsewhere", "n2").await;

    // The watch never delivers: the ADD still gets its pod (and its annotation), by one read.
    let stuck = KubePods::new(
        PodCache::detached(c.clone(), "n1"),
        None,
        Duration::from_millis(100),
    );
    let ask = stuck.ask(&args("web-0", Some(&uid)), &cfg).await.unwrap();
    assert_eq!(ask.uid.as_deref(), Some(uid.as_str()));
    assert_eq!(
        ask.fixed,
        vec!["198.18.64.9".parse::<std::net::IpAddr>().unwrap()]
    );

    // What the API server cannot confirm is refused with "try again", saying why.
    let m = retry_message(
        stuck
            .ask(
                &args("web-0", Some("00000000-0000-0000-0000-000000000000")),
                &cfg,
            )
            .await
            .unwrap_err(),
    );
    assert!(m.contains(&uid) && m.contains("00000000-0000"), "{m}");
    let m = retry_message(stuck.ask(&args("elsewhere", None), &cfg).await.unwrap_err());
    assert!(m.contains("no such pod on this node"), "{m}");
    let m = retry_message(stuck.ask(&args("absent", None), &cfg).await.unwrap_err());
    assert!(
        m.contains("default/absent") && m.contains("no such pod"),
        "{m}"
    );

    // The live watch serves the same pod without a read.
    let live = KubePods::new(
        PodCache::start(c.clone(), "n1"),
        None,
        Duration::from_secs(10),
    );
    let ask = live.ask(&args("web-0", Some(&uid)), &cfg).await.unwrap();
    assert_eq!(ask.uid.as_deref(), Some(uid.as_str()));
}
