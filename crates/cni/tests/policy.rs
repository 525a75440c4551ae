//! The pool's policy applied by the handler (the code both the agent and the plugin's direct path
//! run), against a real embedded ledger: fixed addresses and sticky sets only for the namespaces
//! `ipam.policy` lists, StatefulSet stickiness everywhere by default, refusals with code 7 naming
//! the policy key.

use berth_allocator::{Allocator, ClaimRequest};
use berth_cni::handler::{handle, handle_checked, Invocation, PodAsk, Refusal};
use berth_cni::{parse_args, parse_config, CniError, Command, IpamConfig};
use berth_core::{Identity, PolicyError};
use berth_ledger::LedgerSpec;
use serde_json::{json, Value};
use std::sync::Arc;

fn config(policy: Value) -> IpamConfig {
    let mut ipam = json!({
        "type": "berth-ipam", "subnet": "198.18.0.0/24",
        "fixedStart": "198.18.0.10", "fixedEnd": "198.18.0.50",
        "rangeStart": "198.18.0.100", "rangeEnd": "198.18.0.200",
    });
    if !policy.is_null() {
        ipam["policy"] = policy;
    }
    let conf = json!({"cniVersion": "1.0.0", "name": "pol", "type": "bridge", "ipam": ipam});
    parse_config(conf.to_string().as_bytes()).expect("config")
}

async fn allocator(dir: &tempfile::TempDir) -> Allocator {
    let l = berth_ledger::open(&LedgerSpec::Embedded {
        dir: dir.path().to_path_buf(),
    })
    .await
    .expect("embedded ledger");
    Allocator::new(Arc::clone(&l), "node-1")
}

fn add(cid: &str, args: &str, pod: PodAsk) -> Invocation {
    Invocation {
        command: Command::Add,
        container_id: Some(cid.into()),
        ifname: Some("eth0".into()),
        args: parse_args(args).expect("args"),
        pod,
    }
}

fn address(v: &Option<Value>) -> String {
    v.as_ref().expect("result")["ips"][0]["address"]
        .as_str()
        .expect("address")
        .to_string()
}

#[tokio::test]
async fn fixed_addresses_only_for_listed_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let a = allocator(&dir).await;
    let cfg = config(json!({"fixedNamespaces": ["infra"]}));
    // A pod of namespace "web" asks by CNI_ARGS and by annotation: refused, naming the policy.
    for inv in [
        add(
            "c1",
            "IgnoreUnknown=1;IP=198.18.0.11;K8S_POD_NAMESPACE=web;K8S_POD_NAME=p",
            PodAsk::default(),
        ),
        add(
            "c2",
            "K8S_POD_NAMESPACE=web;K8S_POD_NAME=p",
            PodAsk {
                fixed: vec!["198.18.0.11".parse().unwrap()],
                ..Default::default()
            },
        ),
    ] {
        let r = handle_checked(&a, &inv, &cfg).await.unwrap_err();
        let Refusal::Policy(PolicyError::Fixed { namespace, .. }) = &r else {
            panic!("not a policy refusal: {r:?}")
        };
        assert_eq!(namespace, "web");
        let e = CniError::from(r);
        assert_eq!(e.code, CniError::INVALID_NETWORK_CONFIG);
        assert!(
            e.msg.contains("policy.fixedNamespaces") && e.msg.contains("198.18.0.11"),
            "{}",
            e.msg
        );
    }
    // Nothing was bound: the address is still free for the namespace that may have it.
    let ok = handle(
        &a,
        &add(
            "c3",
            "IgnoreUnknown=1;IP=198.18.0.11;K8S_POD_NAMESPACE=infra;K8S_POD_NAME=q",
            PodAsk::default(),
        ),
        &cfg,
    )
    .await
    .unwrap();
    assert_eq!(address(&ok), "198.18.0.11/24");
    // A runtime without Kubernetes (no pod namespace) is not a pod creator: allowed.
    let ok = handle(
        &a,
        &add("c4", "IgnoreUnknown=1;IP=198.18.0.12", PodAsk::default()),
        &cfg,
    )
    .await
    .unwrap();
    assert_eq!(address(&ok), "198.18.0.12/24");
    // The default policy lists no namespace.
    let e = handle(
        &a,
        &add(
            "c5",
            "IgnoreUnknown=1;IP=198.18.0.13;K8S_POD_NAMESPACE=infra;K8S_POD_NAME=r",
            PodAsk::default(),
        ),
        &config(Value::Null),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, CniError::INVALID_NETWORK_CONFIG);
    assert!(e.msg.contains("fixedNamespaces"), "{}", e.msg);
}

#[tokio::test]
async fn sticky_sets_and_statefulsets() {
    let dir = tempfile::tempdir().unwrap();
    let a = allocator(&dir).await;
    let set = |n| PodAsk {
        claim: Some(ClaimRequest {
            identity: Identity::StickySet {
                namespace: "web".into(),
                name: "front".into(),
            },
            size: n,
        }),
        ..Default::default()
    };
    let sts = |ns: &str| PodAsk {
        claim: Some(ClaimRequest {
            identity: Identity::StatefulSet {
                namespace: ns.into(),
                name: "db".into(),
                ordinal: 0,
            },
            size: 1,
        }),
        ..Default::default()
    };
    let args = |ns: &str| format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME=p");
    // Default policy: no sticky sets; StatefulSets keep their claim.
    let dflt = config(Value::Null);
    let r = handle_checked(&a, &add("s1", &args("web"), set(2)), &dflt)
        .await
        .unwrap_err();
    assert!(
        matches!(r, Refusal::Policy(PolicyError::StickySet { .. })),
        "{r:?}"
    );
    handle(&a, &add("t1", &args("db"), sts("db")), &dflt)
        .await
        .unwrap();
    let claims = berth_allocator::snapshot(a.ledger().as_ref())
        .await
        .unwrap()
        .claims;
    assert_eq!(claims.len(), 1, "the StatefulSet ordinal keeps a claim");
    // Allowed namespace, but larger than maxStickySet.
    let cfg = config(json!({"stickyNamespaces": ["web"], "maxStickySet": 3,
                            "statefulSetNamespaces": ["db"]}));
    let e = CniError::from(
        handle_checked(&a, &add("s2", &args("web"), set(4)), &cfg)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, CniError::INVALID_NETWORK_CONFIG);
    assert!(
        e.msg.contains("maxStickySet is 3") && e.msg.contains("of 4"),
        "{}",
        e.msg
    );
    handle(&a, &add("s3", &args("web"), set(3)), &cfg)
        .await
        .unwrap();
    // A StatefulSet outside statefulSetNamespaces gets a dynamic address and no claim.
    let before = berth_allocator::snapshot(a.ledger().as_ref())
        .await
        .unwrap()
        .claims
        .len();
    handle(&a, &add("t2", &args("other"), sts("other")), &cfg)
        .await
        .unwrap();
    let after = berth_allocator::snapshot(a.ledger().as_ref())
        .await
        .unwrap()
        .claims
        .len();
    assert_eq!(
        before, after,
        "no claim for a StatefulSet outside the policy"
    );
}
