//! The BGP objects' `Accepted` condition on a real kube-apiserver (v1.20.2): a bad BGPPeer is
//! refused on the object (the field and value in the condition, a Warning Event), fixed it is
//! accepted; a peer that takes its AS from the `default` BGPConfiguration follows that object.

use std::time::Duration;

use berth_controller::bgp;
use berth_k8s::crd::{BGPConfiguration, BGPPeer};
use berth_testbed::KubeControlPlane;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, Condition};
use serde_json::json;

fn accepted(status: &'static str, reason_part: &'static str) -> impl Condition<BGPPeer> {
    move |p: Option<&BGPPeer>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == bgp::ACCEPTED))
            .is_some_and(|c| c.status == status && c.message.contains(reason_part))
    }
}

async fn wait(api: &Api<BGPPeer>, name: &str, cond: impl Condition<BGPPeer>, what: &str) {
    if tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(api.clone(), name, cond),
    )
    .await
    .is_err()
    {
        let now = api.get(name).await.ok().and_then(|p| p.status);
        panic!("{what}: not within 20 s; status {now:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgp_objects_say_whether_they_are_accepted() {
    berth_testbed::require_root();
    let cp = KubeControlPlane::start().unwrap();
    let c = berth_k8s::client(Some(cp.kubeconfig())).await.unwrap().0;
    berth_k8s::crd::install(&c, Duration::from_secs(30))
        .await
        .unwrap();
    let task = tokio::spawn(bgp::run(c.clone()));
    let peers: Api<BGPPeer> = Api::all(c.clone());
    let configs: Api<BGPConfiguration> = Api::all(c.clone());
    let obj = |name: &str, spec: serde_json::Value| {
        serde_json::from_value::<BGPPeer>(json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "BGPPeer",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap()
    };
    let pp = PostParams::default();

    // AS 23456 is a placeholder: refused, naming the field and the value.
    peers
        .create(
            &pp,
            &obj(
                "router-a",
                json!({"peerAddress": "198.18.1.1", "peerASN": 23456, "myASN": 64513}),
            ),
        )
        .await
        .unwrap();
    wait(
        &peers,
        "router-a",
        accepted("False", "spec.peerASN 23456"),
        "the bad peer refused",
    )
    .await;
    // The Event follows the condition.
    let events: Api<Event> = Api::namespaced(c.clone(), "default");
    let warned = |evs: &[Event]| {
        evs.iter().any(|e| {
            e.reason.as_deref() == Some("BGPPeerInvalid")
                && e.type_.as_deref() == Some("Warning")
                && e.involved_object.name.as_deref() == Some("router-a")
                && e.message.as_deref().is_some_and(|m| m.contains("23456"))
        })
    };
    let mut evs = vec![];
    for _ in 0..100 {
        evs = events.list(&ListParams::default()).await.unwrap().items;
        if warned(&evs) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        warned(&evs),
        "a Warning Event on router-a within 10 s: {evs:?}"
    );

    // Fixed: accepted.
    peers
        .patch(
            "router-a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"peerASN": 64512}})),
        )
        .await
        .unwrap();
    wait(
        &peers,
        "router-a",
        accepted("True", "valid"),
        "the fixed peer accepted",
    )
    .await;

    // No myASN anywhere: refused, saying where to set it; the default configuration fixes it.
    peers
        .create(
            &pp,
            &obj(
                "router-b",
                json!({"peerAddress": "198.18.1.2", "peerASN": 64512}),
            ),
        )
        .await
        .unwrap();
    wait(
        &peers,
        "router-b",
        accepted("False", "BGPConfiguration"),
        "router-b without an AS",
    )
    .await;
    let cfg = serde_json::from_value::<BGPConfiguration>(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "BGPConfiguration",
        "metadata": {"name": "default"}, "spec": {"myASN": 64513}
    }))
    .unwrap();
    configs.create(&pp, &cfg).await.unwrap();
    wait(
        &peers,
        "router-b",
        accepted("True", "valid"),
        "router-b with the cluster's AS",
    )
    .await;

    // A configuration under another name has no effect, and says so.
    let other = serde_json::from_value::<BGPConfiguration>(json!({
        "apiVersion": "berth.dev/v1alpha1", "kind": "BGPConfiguration",
        "metadata": {"name": "mine"}, "spec": {}
    }))
    .unwrap();
    configs.create(&pp, &other).await.unwrap();
    let said = tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(configs.clone(), "mine", |c: Option<&BGPConfiguration>| {
            c.and_then(|c| c.status.as_ref())
                .and_then(|s| s.conditions.first())
                .is_some_and(|c| c.status == "False" && c.reason == "NotDefault")
        }),
    )
    .await;
    assert!(
        said.is_ok(),
        "{:?}",
        configs.get("mine").await.unwrap().status
    );
    task.abort();
}
