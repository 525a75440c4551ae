//! `berth controller` against a real Kubernetes control plane (kube-apiserver and
//! kube-controller-manager v1.20.2): GC of bindings whose pod is gone, the race with new pods,
//! fencing of out-of-service and deleted nodes, StatefulSet claims, Lease leader election, and a
//! controller restart that must change nothing.
//!
//! No kubelet runs: the test creates Node objects and Pods with `spec.nodeName` and plays the
//! kubelet by calling the allocator, either in-process (`Allocator` on `KubeLedger`) or through
//! real `berth agent` + `berth-ipam` processes (`--ledger kubernetes`), with the pod's namespace,
//! name and UID in `CNI_ARGS`. Pods are deleted with `gracePeriodSeconds=0` (no kubelet would
//! ever confirm a graceful deletion), and no CNI DEL is sent unless a scenario says so.
//!
//! Agents (and in-process allocators) act as deploy/base/berth.yaml's `berth-agent` ServiceAccount,
//! controllers (and in-process rounds) as `berth-controller`, with its RBAC and tokens from the
//! TokenRequest API; the Lease is in `berth-system`. Each test fails on any 403 to them.
//!
//! - `gc_race_and_claims_in_process` (one control plane, rounds driven with `run::round*`):
//!
//! Scenario 1. GC: bindings of a deleted pod and of a pod recreated under the same name (old UID) are
//! kept before the grace and released after it; a live pod's binding, the recreated pod's
//! new binding and a binding without pod information are never released. An old binding of
//! a force-deleted pod waits the grace from the deletion (the controller's memory).
//!
//! Scenario 2. Race: a node joining between the controller's read of the cluster and of the ledger keeps
//! its binding and block (deterministic); then 10 s of pod creations + ADDs (new nodes
//! joining, a third of the pods deleted again) under grace-0 rounds started every 200 ms:
//! no live pod's binding is released, every gone pod's binding is released afterwards.
//!
//! Scenario 4. Claims: a StatefulSet scaled below ordinals loses those claims (after the grace from
//! the scale-down), keeps the ones below; a deleted StatefulSet's claim is kept while its
//! binding is in use and released after its DEL. `berth audit` clean.
//!
//! Scenario 7. A deleted node's block that holds an address a claim keeps is not reclaimed (its
//! binding is released at once); once the StatefulSet goes, the claim goes, then the block.
//! - `fencing_election_and_restart_with_processes` (real `berth agent`, `berth-ipam`, two
//!   `berth controller` replicas sharing a Lease):
//!
//! Scenario 5. Exactly one replica holds the Lease and logs leadership; kill -9 of the leader right after
//! a renewal → the other takes over only once the lease has expired; the killed one,
//! restarted, stands by: it runs, has tried the Lease (logs `leader=false`), and the other keeps
//! the Lease over its next tries.
//!
//! Scenario 6. Across that restart, bindings and blocks are identical and `berth audit` is clean.
//!
//! Scenario 3. n1 shut down (agent killed) and tainted out-of-service → its bindings released and its
//! blocks reclaimed within about a round (grace 30 s does not apply), n2's untouched; the
//! fixed address refused on n2 before is then bound there. Untainted and rebooted, n1
//! allocates in a fresh block. Deleting Node n2 releases its bindings and blocks too. GC
//! after the failover is done by the new leader, not the standby.
//!
//! Scenario 8. SIGTERM and SIGINT: the leader exits 0 and releases the Lease (no holder), so a
//! standby takes over at its next try: with a 15 s Lease, within 5 s of the SIGTERM.

mod common;

use berth_allocator::{AddRequest, Allocator, ClaimRequest};
use berth_core::{Binding, Claim, Identity, Owner, PodRef, PoolSpec, SubnetSpec};
use berth_k8s::KubeLedger;
use berth_ledger::{Kind, Ledger, Records, Stored};
use berth_testbed::{CniCommand, CniTarget, Daemon, KubeControlPlane};
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NS: &str = "default";

// ---- API helpers (curl through the harness) ------------------------------------------------------

fn start_cp() -> KubeControlPlane {
    berth_testbed::require_root();
    berth_testbed::require_kube_binaries();
    let t = Instant::now();
    let cp = KubeControlPlane::start().expect("starting the control plane");
    cp.wait_default_service_account(NS, Duration::from_secs(60))
        .expect("default ServiceAccount");
    timing("control plane up", t);
    cp
}

fn create_node(cp: &KubeControlPlane, name: &str) {
    let r = cp
        .request(
            "POST",
            "/api/v1/nodes",
            Some(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})),
        )
        .unwrap();
    assert!(
        r.is_success(),
        "creating node {name}: HTTP {}: {}",
        r.status,
        r.body
    );
}

fn delete_node(cp: &KubeControlPlane, name: &str) {
    let r = cp
        .request("DELETE", &format!("/api/v1/nodes/{name}"), None)
        .unwrap();
    assert!(
        r.is_success(),
        "deleting node {name}: HTTP {}: {}",
        r.status,
        r.body
    );
}

fn taint_out_of_service(cp: &KubeControlPlane, node: &str) {
    let r = cp
        .request(
            "PATCH",
            &format!("/api/v1/nodes/{node}"),
            Some(&json!({"spec": {"taints": [
                {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}
            ]}})),
        )
        .unwrap();
    assert!(
        r.is_success(),
        "tainting {node}: HTTP {}: {}",
        r.status,
        r.body
    );
}

/// Create a pod bound to `node`; returns its UID.
fn create_pod(cp: &KubeControlPlane, name: &str, node: &str, annotations: Value) -> String {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations},
        "spec": {"nodeName": node, "automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "busybox", "imagePullPolicy": "Never"}]}
    });
    let r = cp
        .request("POST", &format!("/api/v1/namespaces/{NS}/pods"), Some(&pod))
        .unwrap();
    let v = r
        .ok()
        .unwrap_or_else(|e| panic!("creating pod {name}: {e:#}"));
    v["metadata"]["uid"].as_str().expect("pod uid").to_string()
}

/// Delete a pod at once (no kubelet would confirm a graceful deletion); waits until it is gone.
fn delete_pod(cp: &KubeControlPlane, name: &str) {
    let r = cp
        .request(
            "DELETE",
            &format!("/api/v1/namespaces/{NS}/pods/{name}?gracePeriodSeconds=0"),
            None,
        )
        .unwrap();
    assert!(
        r.is_success(),
        "deleting pod {name}: HTTP {}: {}",
        r.status,
        r.body
    );
    let t = Instant::now();
    while pod_uid(cp, name).is_some() {
        assert!(t.elapsed() < Duration::from_secs(10), "pod {name} not gone");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pod_uid(cp: &KubeControlPlane, name: &str) -> Option<String> {
    let r = cp
        .request("GET", &format!("/api/v1/namespaces/{NS}/pods/{name}"), None)
        .unwrap();
    match r.status {
        404 => None,
        200 => Some(
            r.json().unwrap()["metadata"]["uid"]
                .as_str()
                .unwrap()
                .to_string(),
        ),
        s => panic!("GET pod {name}: HTTP {s}: {}", r.body),
    }
}

/// Pods by name with their UIDs.
fn pods(cp: &KubeControlPlane) -> HashMap<String, String> {
    let v = cp
        .request("GET", &format!("/api/v1/namespaces/{NS}/pods"), None)
        .unwrap()
        .ok()
        .unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p["metadata"]["uid"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

// ---- in-process helpers ----------------------------------------------------------------------------

async fn kube_client(cp: &KubeControlPlane) -> kube::Client {
    berth_k8s::client(Some(cp.kubeconfig())).await.unwrap().0
}

/// One pool per scenario, each with a subnet of its own (pools must not overlap).
fn pool(name: &str) -> PoolSpec {
    let cidr = match name {
        "gc" => "198.18.0.0/20",
        "race" => "198.18.16.0/20",
        "sts" => "198.18.32.0/20",
        other => panic!("no subnet for pool {other}"),
    };
    let mut s = SubnetSpec::new(cidr.parse().unwrap());
    s.block_size = Some(26);
    PoolSpec {
        name: name.into(),
        use_: Default::default(),
        subnets: vec![s],
        policy: Default::default(),
        service: Default::default(),
        announcement: Default::default(),
    }
}

fn owner(network: &str, cid: &str, pod: Option<(&str, &str)>) -> Owner {
    Owner {
        network: network.into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
        pod: pod.map(|(name, uid)| PodRef {
            namespace: NS.into(),
            name: name.into(),
            uid: Some(uid.into()),
        }),
    }
}

async fn add(a: &Allocator, network: &str, cid: &str, pod: Option<(&str, &str)>) -> IpAddr {
    let b = a
        .add(&AddRequest {
            pool: pool(network),
            owner: owner(network, cid, pod),
            fixed: vec![],
            claim: None,
        })
        .await
        .unwrap_or_else(|e| panic!("ADD {cid}: {e}"));
    assert_eq!(b.len(), 1);
    b[0].address
}

async fn ledger_bindings(l: &dyn Ledger) -> BTreeMap<IpAddr, Binding> {
    let v: Vec<Stored<Binding>> = Records(l).list(Kind::Binding).await.unwrap().records;
    v.into_iter().map(|s| (s.value.address, s.value)).collect()
}

async fn ledger_claims(l: &dyn Ledger) -> BTreeSet<String> {
    let v: Vec<Stored<Claim>> = Records(l).list(Kind::Claim).await.unwrap().records;
    v.into_iter().map(|s| s.value.name()).collect()
}

/// Scenarios 1 (GC after grace), 2 (GC racing new pods) and 4 (StatefulSet claims), with the
/// allocator in-process and `round` driven directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gc_race_and_claims_in_process() {
    let t0 = Instant::now();
    let cp = start_cp();
    let client = kube_client(&cp).await;
    berth_k8s::crd::install(&client, Duration::from_secs(30))
        .await
        .unwrap();
    // The test reads the ledger as an operator (admin); the allocators act as the agent's
    // ServiceAccount and the rounds as the controller's, with deploy/base/berth.yaml's RBAC.
    let ledger: Arc<dyn Ledger> = Arc::new(KubeLedger::new(client.clone()));
    let roles = shipped_roles(&cp);
    let agent_ledger: Arc<dyn Ledger> = Arc::new(KubeLedger::new(
        berth_k8s::client(Some(&roles.agent)).await.unwrap().0,
    ));
    let ctl = berth_k8s::client(Some(&roles.controller)).await.unwrap().0;
    let ctl_ledger: Arc<dyn Ledger> = Arc::new(KubeLedger::new(ctl.clone()));
    create_node(&cp, "n1");
    create_node(&cp, "n2");
    let a1 = Allocator::new(agent_ledger.clone(), "n1");

    // ---- 1. GC after grace ---------------------------------------------------------------------
    let t = Instant::now();
    let grace = Duration::from_secs(3);
    let live_uid = create_pod(&cp, "live", "n1", json!({}));
    let gone_uid = create_pod(&cp, "gone", "n1", json!({}));
    let re_uid = create_pod(&cp, "re", "n1", json!({}));
    let live = add(&a1, "gc", "c-live", Some(("live", &live_uid))).await;
    let gone = add(&a1, "gc", "c-gone", Some(("gone", &gone_uid))).await;
    let re_old = add(&a1, "gc", "c-re-old", Some(("re", &re_uid))).await;
    let nopod = add(&a1, "gc", "c-nopod", None).await;
    let made = Instant::now();
    delete_pod(&cp, "gone");
    delete_pod(&cp, "re");
    let re_new_uid = create_pod(&cp, "re", "n1", json!({}));
    assert_ne!(re_uid, re_new_uid, "a recreated pod has a new UID");
    let re_new = add(&a1, "gc", "c-re-new", Some(("re", &re_new_uid))).await;
    // Before the grace period nothing is released, however many rounds run.
    let mut released_at: HashMap<IpAddr, Duration> = HashMap::new();
    loop {
        let r = berth_controller::run::round(&ctl, ctl_ledger.as_ref(), grace)
            .await
            .expect("round");
        let now = made.elapsed();
        let held = ledger_bindings(ledger.as_ref()).await;
        for ip in [gone, re_old] {
            if !held.contains_key(&ip) {
                released_at.entry(ip).or_insert(now);
            }
        }
        for (ip, what) in [
            (live, "live pod"),
            (nopod, "binding without pod"),
            (re_new, "recreated pod"),
        ] {
            assert!(
                held.contains_key(&ip),
                "GC released the binding of the {what} ({ip}); round {r:?}"
            );
        }
        if released_at.len() == 2 {
            break;
        }
        assert!(
            now < grace + Duration::from_secs(8),
            "bindings of gone pods not released {now:?} after they were made: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (ip, at) in &released_at {
        // `since` has whole seconds: the release may come up to 1 s early by the wall clock of
        // the test, never earlier.
        assert!(
            *at + Duration::from_secs(1) >= grace,
            "binding {ip} released {at:?} after it was made, before the grace of {grace:?}"
        );
    }
    eprintln!("[timing] released after {released_at:?} (grace {grace:?})");
    // Further rounds keep the rest.
    for _ in 0..3 {
        berth_controller::run::round(&ctl, ctl_ledger.as_ref(), Duration::ZERO)
            .await
            .unwrap();
    }
    let held = ledger_bindings(ledger.as_ref()).await;
    assert_eq!(
        held.keys().copied().collect::<BTreeSet<_>>(),
        [live, nopod, re_new].into(),
        "after GC"
    );
    // A pod deleted long after its binding was made (`--force`: its container may still run on
    // the node) keeps its binding for the grace period counted from when the controller first
    // saw it gone, not from the binding's creation.
    let memory = berth_controller::run::Memory::default();
    delete_pod(&cp, "live");
    let deleted = Instant::now();
    {
        let view = berth_controller::run::read_cluster(&ctl).await.unwrap();
        let bl: Vec<Stored<Binding>> = Records(ledger.as_ref())
            .list(Kind::Binding)
            .await
            .unwrap()
            .records;
        let d = berth_controller::decide(
            &view,
            &[],
            &[],
            &bl.iter().map(|s| s.value.clone()).collect::<Vec<_>>(),
            &[],
            grace.as_secs(),
        );
        assert!(
            d.actions.iter().any(|a| matches!(a, berth_controller::Action::ReleaseBinding { name, .. } if *name == live.to_string())),
            "the binding is older than the grace: by its age alone it is releasable at once: {d:?}"
        );
    }
    let released = loop {
        berth_controller::run::round_remembering(&ctl, ctl_ledger.as_ref(), grace, &memory)
            .await
            .unwrap();
        if !ledger_bindings(ledger.as_ref()).await.contains_key(&live) {
            break deleted.elapsed();
        }
        assert!(
            deleted.elapsed() < grace * 3,
            "binding of the deleted pod never released"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("[timing] old binding of a force-deleted pod released {released:?} after the deletion (grace {grace:?})");
    assert!(
        released >= grace,
        "released {released:?} after the pod was deleted, within the grace of {grace:?}"
    );
    timing("scenario 1 (GC after grace)", t);

    // ---- 2. GC racing new pods ------------------------------------------------------------------
    let t = Instant::now();
    // The widest form of the race, made deterministic: a node joins and its first pod is ADDed
    // between the controller's read of the cluster and its read of the ledger. From that view
    // the node looks deleted (the pure decision would release its binding and reclaim its
    // block); the round must confirm with a fresh read and keep both.
    let view = berth_controller::run::read_cluster(&ctl).await.unwrap();
    create_node(&cp, "joined");
    let aj = Allocator::new(agent_ledger.clone(), "joined");
    let juid = create_pod(&cp, "joined-0", "joined", json!({}));
    let jip = add(&aj, "race", "c-joined-0", Some(("joined-0", &juid))).await;
    {
        let r = Records(ledger.as_ref());
        let bl: Vec<Stored<Binding>> = r.list(Kind::Binding).await.unwrap().records;
        let bk: Vec<Stored<berth_core::Block>> = r.list(Kind::Block).await.unwrap().records;
        let d = berth_controller::decide(
            &view,
            &bk.iter().map(|s| s.value.clone()).collect::<Vec<_>>(),
            &[],
            &bl.iter().map(|s| s.value.clone()).collect::<Vec<_>>(),
            &[],
            0,
        );
        assert!(
            d.actions.iter().any(|a| matches!(a, berth_controller::Action::ReleaseBinding { name, .. } if *name == jip.to_string())),
            "the stale view should call the new node's binding releasable: {d:?}"
        );
    }
    let rep = berth_controller::run::round_with_view(
        &ctl,
        ctl_ledger.as_ref(),
        Duration::ZERO,
        view,
        None,
    )
    .await
    .unwrap();
    assert!(
        ledger_bindings(ledger.as_ref()).await.contains_key(&jip),
        "a binding on a node that joined after the node list was released: {rep:?}"
    );
    let jblocks: Vec<Stored<berth_core::Block>> = Records(ledger.as_ref())
        .list(Kind::Block)
        .await
        .unwrap()
        .records;
    assert!(
        jblocks.iter().any(|b| b.value.node == "joined"),
        "the block of a node that joined after the node list was reclaimed: {rep:?}"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = {
        let (client, ledger, stop) = (ctl.clone(), ctl_ledger.clone(), stop.clone());
        tokio::spawn(async move {
            let mut inflight = vec![];
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let (client, ledger) = (client.clone(), ledger.clone());
                inflight.push(tokio::spawn(async move {
                    berth_controller::run::round(&client, ledger.as_ref(), Duration::ZERO).await
                }));
                n += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let mut released = 0;
            for h in inflight {
                if let Ok(r) = h.await.unwrap() {
                    released += r.bindings;
                }
            }
            (n, released)
        })
    };
    // New pods (some on nodes that appear mid-race), each ADDed right after it is created; every
    // third pod is deleted again without a DEL.
    let mut expect_live: BTreeMap<String, (String, IpAddr)> = BTreeMap::new();
    let mut expect_gone: BTreeMap<String, IpAddr> = BTreeMap::new();
    let mut allocators: Vec<Allocator> = vec![Allocator::new(agent_ledger.clone(), "n2")];
    let race = Instant::now();
    let mut i = 0;
    while race.elapsed() < Duration::from_secs(10) {
        if i % 15 == 14 {
            let node = format!("late-{i}");
            create_node(&cp, &node);
            allocators.push(Allocator::new(agent_ledger.clone(), node));
        }
        let a = allocators.last().unwrap();
        let name = format!("race-{i}");
        let uid = create_pod(&cp, &name, a.node(), json!({}));
        let ip = add(a, "race", &format!("c-{name}"), Some((&name, &uid))).await;
        if i % 3 == 2 {
            delete_pod(&cp, &name);
            expect_gone.insert(name, ip);
        } else {
            expect_live.insert(name, (uid, ip));
        }
        i += 1;
    }
    stop.store(true, Ordering::SeqCst);
    let (nrounds, released) = rounds.await.unwrap();
    // Every pod that exists still has its binding, with the address its ADD returned.
    let held = ledger_bindings(ledger.as_ref()).await;
    let existing = pods(&cp);
    for (name, (uid, ip)) in &expect_live {
        assert_eq!(existing.get(name), Some(uid), "pod {name} vanished");
        let b = held
            .get(ip)
            .unwrap_or_else(|| panic!("GC released {ip} of live pod {name} during the race"));
        assert_eq!(
            b.attachment()
                .and_then(|o| o.pod.as_ref())
                .map(|p| p.name.as_str()),
            Some(name.as_str())
        );
    }
    // Every gone pod's binding is released eventually.
    let t_drain = Instant::now();
    loop {
        berth_controller::run::round(&ctl, ctl_ledger.as_ref(), Duration::ZERO)
            .await
            .unwrap();
        let held = ledger_bindings(ledger.as_ref()).await;
        let left: Vec<_> = expect_gone
            .iter()
            .filter(|(_, ip)| held.contains_key(ip))
            .collect();
        if left.is_empty() {
            for (name, (_, ip)) in &expect_live {
                assert!(
                    held.contains_key(ip),
                    "GC released {ip} of live pod {name} after the race"
                );
            }
            break;
        }
        assert!(
            t_drain.elapsed() < Duration::from_secs(10),
            "bindings of gone pods not released: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "[race] {i} pods ({} live, {} deleted), {} late nodes, {nrounds} rounds released {released} during the race",
        expect_live.len(), expect_gone.len(), allocators.len() - 1
    );
    assert!(nrounds >= 40, "only {nrounds} rounds ran");
    timing("scenario 2 (race)", t);

    // ---- 4. StatefulSet claims --------------------------------------------------------------------
    let t = Instant::now();
    let sts = |name: &str, replicas: u32| {
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": replicas, "serviceName": name, "podManagementPolicy": "Parallel",
                     "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"automountServiceAccountToken": false,
                                           "containers": [{"name": "c", "image": "busybox"}]}}}
        })
    };
    for (name, n) in [("web", 3), ("db", 1)] {
        cp.request(
            "POST",
            &format!("/apis/apps/v1/namespaces/{NS}/statefulsets"),
            Some(&sts(name, n)),
        )
        .unwrap()
        .ok()
        .unwrap();
    }
    // The StatefulSet controller creates the pods; the test schedules them to n1 (no scheduler
    // runs), so that deleting them waits for a kubelet that never comes: they linger.
    let want = ["web-0", "web-1", "web-2", "db-0"];
    let deadline = Instant::now() + Duration::from_secs(30);
    let sts_pods = loop {
        let p = pods(&cp);
        if want.iter().all(|w| p.contains_key(*w)) {
            for w in want {
                let r = cp
                    .request(
                        "POST",
                        &format!("/api/v1/namespaces/{NS}/pods/{w}/binding"),
                        Some(&json!({
                            "apiVersion": "v1", "kind": "Binding", "metadata": {"name": w},
                            "target": {"apiVersion": "v1", "kind": "Node", "name": "n1"}
                        })),
                    )
                    .unwrap();
                assert!(
                    r.is_success(),
                    "scheduling {w}: HTTP {}: {}",
                    r.status,
                    r.body
                );
            }
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "StatefulSet pods not created: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let claim_add = |name: &'static str, set: &'static str, ordinal: u32| {
        let uid = sts_pods[name].clone();
        let a1 = &a1;
        async move {
            let b = a1
                .add(&AddRequest {
                    pool: pool("sts"),
                    owner: owner("sts", &format!("c-{name}"), Some((name, &uid))),
                    fixed: vec![],
                    claim: Some(ClaimRequest {
                        identity: Identity::StatefulSet {
                            namespace: NS.into(),
                            name: set.into(),
                            ordinal,
                        },
                        size: 1,
                    }),
                })
                .await
                .unwrap_or_else(|e| panic!("ADD {name}: {e}"));
            (
                b[0].clone(),
                owner("sts", &format!("c-{name}"), Some((name, &uid))),
            )
        }
    };
    let (_w0, _) = claim_add("web-0", "web", 0).await;
    let (_w1, o1) = claim_add("web-1", "web", 1).await;
    let (_w2, o2) = claim_add("web-2", "web", 2).await;
    let (_d0, od) = claim_add("db-0", "db", 0).await;
    let claim_name = |set: &str, ord: u32| format!("sts/statefulset/{NS}/{set}/{ord}");
    let all_claims: BTreeSet<String> = [
        claim_name("web", 0),
        claim_name("web", 1),
        claim_name("web", 2),
        claim_name("db", 0),
    ]
    .into();
    assert_eq!(ledger_claims(ledger.as_ref()).await, all_claims);
    // Scale web to 1 (web-1 and web-2 above it), delete db; db-0 still holds its address.
    cp.request(
        "PATCH",
        &format!("/apis/apps/v1/namespaces/{NS}/statefulsets/web"),
        Some(&json!({"spec": {"replicas": 1}})),
    )
    .unwrap()
    .ok()
    .unwrap();
    let r = cp
        .request(
            "DELETE",
            &format!("/apis/apps/v1/namespaces/{NS}/statefulsets/db"),
            None,
        )
        .unwrap();
    assert!(r.is_success(), "{}", r.body);
    // web-1 and web-2 went away with their CNI DEL; db-0 has not (its pod lingers).
    a1.release(&o1).await.unwrap();
    a1.release(&o2).await.unwrap();
    // The controller's loop remembers when it first saw each orphaned claim: a claim is released
    // only a grace period after that (a StatefulSet scaled down and up again keeps its addresses).
    let memory = berth_controller::run::Memory::default();
    let grace = Duration::from_secs(2);
    let orphaned = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(15);
    let released = loop {
        berth_controller::run::round_remembering(&ctl, ctl_ledger.as_ref(), grace, &memory)
            .await
            .unwrap();
        let c = ledger_claims(ledger.as_ref()).await;
        assert!(
            c.contains(&claim_name("web", 0)),
            "claim of web-0 (ordinal below replicas) released"
        );
        assert!(
            c.contains(&claim_name("db", 0)),
            "claim of db-0 released while its binding is in use"
        );
        if !c.contains(&claim_name("web", 1)) && !c.contains(&claim_name("web", 2)) {
            break orphaned.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "claims above the replica count not released: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("[timing] claims above the replica count released {released:?} after they were orphaned (grace {grace:?})");
    assert!(
        released >= grace,
        "claims released {released:?} after scale-down, within the grace of {grace:?}"
    );
    // db-0's DEL: the claim of the deleted StatefulSet is no longer in use and goes.
    a1.release(&od).await.unwrap();
    let orphaned = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        berth_controller::run::round_remembering(&ctl, ctl_ledger.as_ref(), grace, &memory)
            .await
            .unwrap();
        let c = ledger_claims(ledger.as_ref()).await;
        if c == [claim_name("web", 0)].into() {
            let released = orphaned.elapsed();
            assert!(
                released >= grace,
                "claim of db-0 released {released:?} after its DEL, within the grace"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "claim of the deleted StatefulSet not released: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    timing("scenario 4 (claims)", t);

    // ---- 7. a claimed address keeps its block ------------------------------------------------
    // web-0 (ordinal below the replicas) is bound on n1 with its claim's address, which lies in
    // a block of n1. n1 is deleted: web-0's binding goes at once, but the block still holds an
    // address the claim keeps for web-0's next pod, so it is not empty and stays. Once the
    // StatefulSet is deleted the claim goes (after the grace), and then the block.
    let t = Instant::now();
    let claim_addr: IpAddr = {
        let c: Vec<Stored<Claim>> = Records(ledger.as_ref())
            .list(Kind::Claim)
            .await
            .unwrap()
            .records;
        assert_eq!(c.len(), 1, "{c:?}");
        c[0].value.addresses[0]
    };
    let sts_block_on_n1 = || async {
        let b: Vec<Stored<berth_core::Block>> = Records(ledger.as_ref())
            .list(Kind::Block)
            .await
            .unwrap()
            .records;
        b.into_iter()
            .map(|s| s.value)
            .find(|b| b.pool == "sts" && b.node == "n1" && b.cidr.contains(&claim_addr))
    };
    assert!(
        sts_block_on_n1().await.is_some(),
        "web-0's claimed {claim_addr} is not in a block of n1"
    );
    delete_node(&cp, "n1");
    let memory = berth_controller::run::Memory::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ledger_bindings(ledger.as_ref())
        .await
        .values()
        .any(|b| b.pool == "sts")
    {
        assert!(
            Instant::now() < deadline,
            "web-0's binding on the deleted node n1 was not released"
        );
        berth_controller::run::round_remembering(&ctl, ctl_ledger.as_ref(), grace, &memory)
            .await
            .unwrap();
    }
    for _ in 0..5 {
        berth_controller::run::round_remembering(&ctl, ctl_ledger.as_ref(), grace, &memory)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sts_block_on_n1().await.is_some(),
        "the block holding the claimed {claim_addr} of the deleted node was reclaimed while the claim keeps it"
    );
    assert_eq!(
        ledger_claims(ledger.as_ref()).await,
        [claim_name("web", 0)].into()
    );
    let r = cp
        .request(
            "DELETE",
            &format!("/apis/apps/v1/namespaces/{NS}/statefulsets/web"),
            None,
        )
        .unwrap();
    assert!(r.is_success(), "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        berth_controller::run::round_remembering(&ctl, ctl_ledger.as_ref(), grace, &memory)
            .await
            .unwrap();
        let claims = ledger_claims(ledger.as_ref()).await;
        match sts_block_on_n1().await {
            None => {
                assert!(
                    claims.is_empty(),
                    "block reclaimed before its claim went: {claims:?}"
                );
                break;
            }
            Some(_) => assert!(
                Instant::now() < deadline,
                "the block was not reclaimed after the claim ({claims:?}) could go"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    timing("scenario 7 (a claimed address keeps its block)", t);
    assert_audit_kube(&cp);
    assert_no_forbidden(&cp);
    timing("gc_race_and_claims_in_process", t0);
}

// ---- real processes ---------------------------------------------------------------------------------

fn kube_cli(cp: &KubeControlPlane, sub: &str, json: bool) -> (i32, String, String) {
    let mut cmd = Command::new(BERTH);
    cmd.arg(sub)
        .arg("--ledger")
        .arg("kubernetes")
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .arg("--socket")
        .arg("/nonexistent/berth-test.sock");
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

fn assert_audit_kube(cp: &KubeControlPlane) {
    let (code, out, err) = kube_cli(cp, "audit", false);
    assert_eq!(code, 0, "berth audit found violations:\n{out}\n{err}");
    assert!(err.contains("audit clean"), "berth audit: {out}\n{err}");
}

/// `berth bindings --json`, by address.
fn cli_bindings(cp: &KubeControlPlane) -> BTreeMap<String, Value> {
    let (code, out, err) = kube_cli(cp, "bindings", true);
    assert_eq!(code, 0, "berth bindings: {err}");
    let v: Vec<Value> = serde_json::from_str(&out).unwrap();
    v.into_iter()
        .map(|b| (b["address"].as_str().unwrap().to_string(), b))
        .collect()
}

fn cli_blocks(cp: &KubeControlPlane) -> Vec<Value> {
    let (code, out, err) = kube_cli(cp, "blocks", true);
    assert_eq!(code, 0, "berth blocks: {err}");
    serde_json::from_str(&out).unwrap()
}

/// `berth agent` for `node`, as deploy/'s agent ServiceAccount (`kubeconfig`).
fn spawn_agent(cp: &KubeControlPlane, kubeconfig: &Path, socket: &Path, node: &str) -> Daemon {
    // A killed agent leaves its socket file behind; wait for the new one's.
    let _ = std::fs::remove_file(socket);
    let mut cmd = Command::new(BERTH);
    cmd.arg("agent")
        .arg("--socket")
        .arg(socket)
        .arg("--ledger")
        .arg("kubernetes")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--node")
        .arg(node)
        .env("BERTH_LOG", "info");
    let log = cp.dir().join(format!("agent-{node}.log"));
    let d = Daemon::spawn(&format!("agent-{node}"), cmd, Some(&log)).expect("spawning berth agent");
    let t = Instant::now();
    while !socket.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "agent {node} not serving:\n{}",
            d.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d
}

/// `berth controller` replica `id`, as deploy/'s controller ServiceAccount (`kubeconfig`), with
/// its Lease in deploy/'s namespace (`POD_NAMESPACE`, as the Deployment sets it).
fn spawn_controller(cp: &KubeControlPlane, kubeconfig: &Path, id: &str, lease: &str) -> Daemon {
    let mut cmd = Command::new(BERTH);
    cmd.arg("controller")
        .arg("--ledger")
        .arg("kubernetes")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "--grace",
            "30s",
            "--interval",
            "500ms",
            "--lease-duration",
            lease,
        ])
        .args(["--id", id])
        .env("POD_NAMESPACE", BERTH_NAMESPACE)
        .env("BERTH_LOG", "info");
    // A log file per process, so a restarted replica's log holds only its own life.
    let log = cp.dir().join(format!(
        "controller-{id}-{}.log",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    Daemon::spawn(&format!("controller-{id}"), cmd, Some(&log)).expect("spawning berth controller")
}

fn lease_holder(cp: &KubeControlPlane) -> Option<String> {
    let r = cp
        .request(
            "GET",
            &format!(
                "/apis/coordination.k8s.io/v1/namespaces/{BERTH_NAMESPACE}/leases/berth-controller"
            ),
            None,
        )
        .unwrap();
    if r.status == 404 {
        return None;
    }
    r.ok().unwrap()["spec"]["holderIdentity"]
        .as_str()
        .map(String::from)
}

fn leads_in_log(d: &Daemon) -> bool {
    plain_log(d)
        .lines()
        .any(|l| l.contains("controller leadership changed") && l.contains("leader=true"))
}

/// Whether the replica has tried the Lease and found another holder (its first election
/// result is logged either way).
fn stands_by_in_log(d: &Daemon) -> bool {
    plain_log(d)
        .lines()
        .any(|l| l.contains("controller leadership changed") && l.contains("leader=false"))
}

struct Node {
    name: String,
    socket: PathBuf,
}

fn conf(n: &Node, fallback: &common::Ledger) -> Value {
    let mut c = agent_only(v4_pool("fence", &n.socket, &n.name), fallback);
    // f1 and f2 ask for fixed addresses in NS.
    c["ipam"]["policy"] = json!({"fixedNamespaces": [NS]});
    c
}

/// ADD through `berth-ipam` for a pod (namespace, name, UID in CNI_ARGS); the result or the CNI error.
fn cni_add(
    cni: &berth_testbed::Cni,
    n: &Node,
    fallback: &common::Ledger,
    pod: &str,
    uid: &str,
) -> berth_testbed::CniOutput {
    let t = CniTarget {
        container_id: format!("ctr-{pod}-{}", &uid[..8]),
        netns: PathBuf::from(format!("/var/run/netns/berth-kctl-{pod}")),
        ifname: "eth0".into(),
        args: Some(format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={NS};K8S_POD_NAME={pod};K8S_POD_UID={uid}"
        )),
    };
    ipam(cni, CniCommand::Add, Some(&t), &conf(n, fallback))
}

fn added_ip(out: &berth_testbed::CniOutput, what: &str) -> IpAddr {
    let r = out
        .ok()
        .unwrap_or_else(|e| panic!("ADD {what} failed: {e:#}"));
    result_addrs(&r)[0]
}

/// Scenarios 3 (fencing), 5 (leader election) and 6 (controller restart), with real `berth agent`,
/// `berth-ipam` and `berth controller` processes.
#[test]
fn fencing_election_and_restart_with_processes() {
    let t0 = Instant::now();
    let cp = start_cp();
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let c = kube_client(&cp).await;
            berth_k8s::crd::install(&c, Duration::from_secs(30))
                .await
                .unwrap();
        });
    }
    let dir = tempfile::Builder::new()
        .prefix("berth-kctl-")
        .tempdir()
        .unwrap();
    // Without an agent the plugin would fall back to an embedded ledger: keep it in the temp dir
    // and check at the end it was never used.
    let fallback = common::Ledger::Embedded(
        tempfile::Builder::new()
            .prefix("berth-kctl-fallback-")
            .tempdir()
            .unwrap(),
    );
    let nodes: Vec<Node> = ["n1", "n2"]
        .iter()
        .map(|n| Node {
            name: n.to_string(),
            socket: dir.path().join(format!("{n}.sock")),
        })
        .collect();
    for n in &nodes {
        create_node(&cp, &n.name);
    }
    let roles = shipped_roles(&cp);
    let mut agents: Vec<Daemon> = nodes
        .iter()
        .map(|n| spawn_agent(&cp, &roles.agent, &n.socket, &n.name))
        .collect();
    let cni = runtime();

    // Pods: a fixed address and two dynamic ones on n1, two dynamic on n2.
    let fixed: IpAddr = "198.18.0.20".parse().unwrap();
    let mut ips: BTreeMap<String, IpAddr> = BTreeMap::new();
    let t = Instant::now();
    for (pod, node, ann) in [
        ("f1", 0, json!({"berth.dev/ips": "198.18.0.20"})),
        ("a1", 0, json!({})),
        ("a2", 0, json!({})),
        ("b1", 1, json!({})),
        ("b2", 1, json!({})),
    ] {
        let uid = create_pod(&cp, pod, &nodes[node].name, ann);
        let ip = added_ip(&cni_add(&cni, &nodes[node], &fallback, pod, &uid), pod);
        ips.insert(pod.to_string(), ip);
    }
    assert_eq!(ips["f1"], fixed, "the pod's berth.dev/ips was not honoured");
    timing("5 pods ADDed through agents", t);
    let before = cli_bindings(&cp);
    assert_eq!(before.len(), 5);
    for (addr, b) in &before {
        assert!(
            b["holder"]["attachment"]["pod"]["uid"].is_string(),
            "binding {addr} carries no pod UID: {b}"
        );
    }
    let blocks_before = cli_blocks(&cp);
    assert!(
        blocks_before.iter().any(|b| b["node"] == "n1")
            && blocks_before.iter().any(|b| b["node"] == "n2")
    );

    // ---- 5. leader election ------------------------------------------------------------------
    let t = Instant::now();
    let mut ctl: HashMap<String, Daemon> = HashMap::new();
    ctl.insert(
        "ctl-a".into(),
        spawn_controller(&cp, &roles.controller, "ctl-a", "3s"),
    );
    ctl.insert(
        "ctl-b".into(),
        spawn_controller(&cp, &roles.controller, "ctl-b", "3s"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let leader = loop {
        if let Some(h) = lease_holder(&cp) {
            if ctl.values().any(leads_in_log) {
                break h;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no controller took the Lease (holder {:?}):\n{}",
            lease_holder(&cp),
            ctl.values()
                .map(|d| d.log_tail(10))
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Two lease durations: still one leader, the same one, and only it says so.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        lease_holder(&cp).as_deref(),
        Some(leader.as_str()),
        "the Lease changed hands without a failure"
    );
    let follower = if leader == "ctl-a" { "ctl-b" } else { "ctl-a" }.to_string();
    assert!(
        leads_in_log(&ctl[&leader]),
        "leader {leader} does not log its leadership"
    );
    assert!(
        !leads_in_log(&ctl[&follower]),
        "both replicas lead:\n{}",
        ctl[&follower].log()
    );
    for d in ctl.values_mut() {
        assert!(d.is_running(), "a controller exited:\n{}", d.log_tail(20));
    }
    timing("election settled", t);

    // ---- 6. controller restart: nothing reshuffled -----------------------------------------------
    // kill -9 the leader: the follower takes over once the Lease expires (3 s after its last
    // renewal), and GC continues under it.
    let t = Instant::now();
    // Kill right after a renewal, so the old lease has its full 3 s left.
    let renew_time = || {
        cp.request(
            "GET",
            &format!(
                "/apis/coordination.k8s.io/v1/namespaces/{BERTH_NAMESPACE}/leases/berth-controller"
            ),
            None,
        )
        .unwrap()
        .ok()
        .unwrap()["spec"]["renewTime"]
            .clone()
    };
    let last = renew_time();
    let deadline = Instant::now() + Duration::from_secs(5);
    while renew_time() == last {
        assert!(
            Instant::now() < deadline,
            "the leader stopped renewing its Lease"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed = Instant::now();
    ctl.get_mut(&leader).unwrap().kill();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if lease_holder(&cp).as_deref() == Some(follower.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{follower} did not take over:\n{}",
            ctl[&follower].log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let takeover = killed.elapsed();
    eprintln!(
        "[timing] takeover {takeover:?} after kill -9 of the leader (lease 3 s, interval 500 ms)"
    );
    assert!(
        takeover >= Duration::from_millis(2700),
        "took over after {takeover:?}, before the old lease could expire"
    );
    assert!(leads_in_log(&ctl[&follower]));
    // The killed replica comes back with the same identity: it must stand by. It is running,
    // has reached its election loop and tried the Lease (it logs its first result), and over
    // the next several of its tries the other keeps the Lease.
    ctl.insert(
        leader.clone(),
        spawn_controller(&cp, &roles.controller, &leader, "3s"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stands_by_in_log(&ctl[&leader]) {
        let d = ctl.get_mut(&leader).unwrap();
        assert!(
            d.is_running(),
            "the restarted replica exited:\n{}",
            d.log_tail(20)
        );
        assert!(
            Instant::now() < deadline,
            "the restarted replica never tried the Lease:\n{}",
            d.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            lease_holder(&cp).as_deref(),
            Some(follower.as_str()),
            "the restarted replica took the Lease back"
        );
        assert!(
            ctl.get_mut(&leader).unwrap().is_running(),
            "the restarted replica exited while standing by"
        );
    }
    assert!(
        !leads_in_log(&ctl[&leader]),
        "the restarted replica leads while the other holds the Lease"
    );
    let after = cli_bindings(&cp);
    assert_eq!(
        before, after,
        "bindings changed across the controller restart"
    );
    assert_eq!(
        blocks_before,
        cli_blocks(&cp),
        "blocks changed across the controller restart"
    );
    assert_audit_kube(&cp);
    timing("scenario 5+6 (failover, restart)", t);

    // ---- 3. fencing ------------------------------------------------------------------------------
    let t = Instant::now();
    // The fixed address is held on n1: a pod on n2 asking for it is refused.
    let f2 = create_pod(&cp, "f2", "n2", json!({"berth.dev/ips": "198.18.0.20"}));
    let refused = cni_add(&cni, &nodes[1], &fallback, "f2", &f2);
    assert!(
        !refused.success(),
        "198.18.0.20 bound twice: {}",
        refused.stdout
    );
    // n1 shuts down (its agent dies with it), then an operator marks it out of service.
    agents[0].kill();
    taint_out_of_service(&cp, "n1");
    let tainted = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let b = cli_bindings(&cp);
        let on_n1 = b.values().filter(|b| b["node"] == "n1").count();
        let blocks_n1 = cli_blocks(&cp).iter().filter(|b| b["node"] == "n1").count();
        if on_n1 == 0 && blocks_n1 == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n1 fenced but {on_n1} bindings / {blocks_n1} blocks remain"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let fenced_in = tainted.elapsed();
    eprintln!("[timing] fenced node released in {fenced_in:?} (grace 30 s, interval 500 ms)");
    assert!(
        fenced_in < Duration::from_secs(5),
        "fencing took {fenced_in:?}: not within a round or two"
    );
    let b = cli_bindings(&cp);
    for pod in ["b1", "b2"] {
        let ip = ips[pod].to_string();
        assert_eq!(
            b.get(&ip),
            before.get(&ip),
            "binding of {pod} on n2 changed by fencing n1"
        );
    }
    // The fixed address moves to n2.
    let moved = added_ip(
        &cni_add(&cni, &nodes[1], &fallback, "f2", &f2),
        "f2 after fencing",
    );
    assert_eq!(moved, fixed);
    assert_eq!(cli_bindings(&cp)[&fixed.to_string()]["node"], "n2");

    // n1 boots again (a fresh agent) and the taint is removed: a new pod there gets an address
    // in a block n1 owns in the ledger now.
    // (An agent that kept running through the fencing would still allocate from its reclaimed
    // blocks: see the report; out-of-service is for nodes that are really down.)
    let r = cp
        .request(
            "PATCH",
            "/api/v1/nodes/n1",
            Some(&json!({"spec": {"taints": null}})),
        )
        .unwrap();
    assert!(r.is_success(), "{}", r.body);
    agents[0] = spawn_agent(&cp, &roles.agent, &nodes[0].socket, "n1");
    let a3 = create_pod(&cp, "a3", "n1", json!({}));
    let ip3 = added_ip(
        &cni_add(&cni, &nodes[0], &fallback, "a3", &a3),
        "a3 on n1 after fencing",
    );
    let blk = cli_blocks(&cp);
    assert!(
        blk.iter()
            .any(|b| b["node"] == "n1" && in_cidr(ip3, b["cidr"].as_str().unwrap())),
        "a3's {ip3} is not in a block n1 owns: {blk:?}"
    );
    assert_audit_kube(&cp);

    // Deleting a Node object does the same.
    delete_node(&cp, "n2");
    let deleted = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let b = cli_bindings(&cp);
        let nb = b.values().filter(|b| b["node"] == "n2").count();
        let nblk = cli_blocks(&cp).iter().filter(|b| b["node"] == "n2").count();
        if nb == 0 && nblk == 0 {
            assert!(
                b.contains_key(&ip3.to_string()),
                "a3's binding on n1 went with n2: {b:?}"
            );
            assert_eq!(b.len(), 1, "bindings left: {b:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "n2 deleted but {nb} bindings / {nblk} blocks remain"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("[timing] deleted node released in {:?}", deleted.elapsed());
    // GC continued under the replica that took over; the restarted one stood by.
    let leader_log = plain_log(&ctl[&follower]);
    assert!(
        leader_log.contains("released binding")
            && leader_log.contains("is out of service")
            && leader_log.contains("reclaimed block"),
        "the new leader {follower} did not log the releases:\n{leader_log}"
    );
    assert!(
        !plain_log(&ctl[&leader]).contains("released binding"),
        "the standby replica released bindings"
    );
    assert_audit_kube(&cp);
    timing("scenario 3 (fencing)", t);

    for (id, d) in ctl.iter_mut() {
        assert!(
            d.is_running(),
            "controller {id} exited:\n{}",
            d.log_tail(20)
        );
    }
    for a in agents.iter_mut() {
        assert!(a.is_running(), "an agent exited:\n{}", a.log_tail(20));
    }
    if let common::Ledger::Embedded(d) = &fallback {
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "the plugin fell back to its embedded ledger"
        );
    }

    // ---- 8. SIGTERM and SIGINT: the leader gives the Lease up on its way out -------------------
    let t = Instant::now();
    // SIGTERM the leader: it exits cleanly, saying it released the Lease; the standby takes over.
    let st = ctl
        .get_mut(&follower)
        .unwrap()
        .terminate(Duration::from_secs(10));
    assert!(st.success(), "{follower} after SIGTERM: {st}");
    assert!(
        plain_log(&ctl[&follower]).contains("released the controller lease"),
        "{follower} did not release the Lease:\n{}",
        ctl[&follower].log_tail(10)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while lease_holder(&cp).as_deref() != Some(leader.as_str()) {
        assert!(
            Instant::now() < deadline,
            "{leader} did not take over after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGINT the new leader: the Lease is left without a holder.
    let d = ctl.get_mut(&leader).unwrap();
    d.signal(libc::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let st = loop {
        if let Some(st) = d.try_status() {
            break st;
        }
        assert!(Instant::now() < deadline, "{leader} ignored SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(st.success(), "{leader} after SIGINT: {st}");
    assert_eq!(lease_holder(&cp), None, "SIGINT left the Lease held");
    // With a long Lease (15 s, the default), a takeover after SIGTERM is a matter of the
    // standby's next try (interval 500 ms), not of the Lease expiring.
    let mut pair: Vec<(String, Daemon)> = ["ctl-c", "ctl-d"]
        .iter()
        .map(|id| {
            (
                id.to_string(),
                spawn_controller(&cp, &roles.controller, id, "15s"),
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(h) = lease_holder(&cp) {
            if pair.iter().any(|(id, d)| *id == h && leads_in_log(d)) {
                break h;
            }
        }
        assert!(
            Instant::now() < deadline,
            "neither ctl-c nor ctl-d took the Lease"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let i = pair.iter().position(|(id, _)| *id == first).unwrap();
    let second = pair[1 - i].0.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stands_by_in_log(&pair[1 - i].1) {
        assert!(Instant::now() < deadline, "{second} never tried the Lease");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = Instant::now();
    let st = pair[i].1.terminate(Duration::from_secs(10));
    assert!(st.success(), "{first} after SIGTERM: {st}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while lease_holder(&cp).as_deref() != Some(second.as_str()) {
        assert!(Instant::now() < deadline, "{second} did not take over");
        std::thread::sleep(Duration::from_millis(20));
    }
    let takeover = stopped.elapsed();
    eprintln!(
        "[timing] takeover {takeover:?} after SIGTERM of the leader (lease 15 s, interval 500 ms)"
    );
    assert!(
        takeover < Duration::from_secs(5),
        "took over {takeover:?} after SIGTERM: the Lease (15 s) was waited out, not released"
    );
    assert!(leads_in_log(&pair[1 - i].1));
    timing("scenario 8 (SIGTERM, SIGINT)", t);
    assert_no_forbidden(&cp);
    timing("fencing_election_and_restart_with_processes", t0);
}
