//! The allocator against a real embedded ledger: uniqueness, idempotency, fixed requests,
//! owner-checked release, rollback, GC, and random operation sequences audited afterwards.

use berth_allocator::{snapshot, AddRequest, AllocError, Allocator, ClaimRequest};
use berth_core::{
    audit, audit_with_claims, AddrRange, Family, Identity, Owner, PoolSpec, SubnetSpec,
};
use berth_ledger::embedded::Embedded;
use berth_ledger::Ledger;
use proptest::prelude::*;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

fn ledger() -> (tempfile::TempDir, Arc<dyn Ledger>) {
    let dir = tempfile::tempdir().unwrap();
    let l: Arc<dyn Ledger> = Arc::new(Embedded::open(dir.path(), Duration::from_secs(2)).unwrap());
    (dir, l)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// 198.18.0.0/24 with a reserved .10-.19 and blocks of /28; 2001:db8:1::/120 with /124 blocks.
fn pool(dual: bool) -> PoolSpec {
    let mut v4 = SubnetSpec::new("198.18.0.0/24".parse().unwrap());
    v4.gateway = Some(ip("198.18.0.1"));
    v4.fixed = vec![AddrRange::new(ip("198.18.0.10"), ip("198.18.0.19")).unwrap()];
    v4.ranges = vec![AddrRange::new(ip("198.18.0.32"), ip("198.18.0.254")).unwrap()];
    v4.block_size = Some(28);
    let mut subnets = vec![v4];
    if dual {
        let mut v6 = SubnetSpec::new("2001:db8:1::/120".parse().unwrap());
        v6.block_size = Some(124);
        v6.fixed = vec![AddrRange::new(ip("2001:db8:1::10"), ip("2001:db8:1::1f")).unwrap()];
        v6.ranges = vec![AddrRange::new(ip("2001:db8:1::20"), ip("2001:db8:1::ff")).unwrap()];
        subnets.push(v6);
    }
    PoolSpec {
        name: "pods".into(),
        use_: Default::default(),
        subnets,
        policy: Default::default(),
        service: Default::default(),
        announcement: Default::default(),
    }
}

fn owner(cid: &str) -> Owner {
    Owner {
        network: "net".into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
        pod: None,
    }
}

fn req(p: &PoolSpec, cid: &str, fixed: &[&str]) -> AddRequest {
    AddRequest {
        pool: p.clone(),
        owner: owner(cid),
        fixed: fixed.iter().map(|s| ip(s)).collect(),
        claim: None,
    }
}

async fn assert_clean(l: &dyn Ledger) -> usize {
    let s = snapshot(l).await.unwrap();
    let v = audit(&s.pools, &s.blocks, &s.bindings);
    assert!(v.is_empty(), "audit: {v:?}");
    s.bindings.len()
}

#[tokio::test]
async fn dual_stack_add_is_idempotent_and_one_per_family() {
    let (_d, l) = ledger();
    let a = Allocator::new(l.clone(), "node-a");
    let p = pool(true);
    let first = a.add(&req(&p, "c1", &[])).await.unwrap();
    assert_eq!(first.len(), 2);
    let fams: HashSet<Family> = first.iter().map(|b| Family::of(b.address)).collect();
    assert_eq!(fams.len(), 2);
    assert!(first
        .iter()
        .all(|b| !p.subnet_of(b.address).unwrap().is_reserved(b.address)));
    let again = a.add(&req(&p, "c1", &[])).await.unwrap();
    assert_eq!(
        first, again,
        "same container and interface get the same addresses"
    );
    // A fresh allocator (a new plugin process) sees the same.
    let again = Allocator::new(l.clone(), "node-a")
        .add(&req(&p, "c1", &[]))
        .await
        .unwrap();
    assert_eq!(first, again);
    let other = a.add(&req(&p, "c2", &[])).await.unwrap();
    assert!(other
        .iter()
        .all(|b| !first.iter().any(|f| f.address == b.address)));
    assert_eq!(assert_clean(l.as_ref()).await, 4);
}

#[tokio::test]
async fn fixed_requests_are_checked_and_held_addresses_name_their_holder() {
    let (_d, l) = ledger();
    let a = Allocator::new(l.clone(), "node-a");
    let b = Allocator::new(l.clone(), "node-b");
    let p = pool(false);
    let got = a.add(&req(&p, "c1", &["198.18.0.15"])).await.unwrap();
    assert_eq!(got[0].address, ip("198.18.0.15"));
    // Outside the reserved range: refused, naming the address and what to do.
    let err = a.add(&req(&p, "c2", &["198.18.0.40"])).await.unwrap_err();
    assert!(matches!(err, AllocError::FixedNotAllowed { .. }), "{err}");
    assert!(err.to_string().contains("198.18.0.40") && err.to_string().contains("fixedStart"));
    // Held by c1 on node-a: node-b's request names the holder and is transient.
    let err = b.add(&req(&p, "c3", &["198.18.0.15"])).await.unwrap_err();
    assert!(err.is_transient());
    assert!(
        err.to_string().contains("container c1") && err.to_string().contains("node-a"),
        "{err}"
    );
    // Released by its owner: the next request succeeds on the other node.
    assert_eq!(a.release(&owner("c1")).await.unwrap().len(), 1);
    assert_eq!(
        b.add(&req(&p, "c3", &["198.18.0.15"])).await.unwrap()[0].node,
        "node-b"
    );
    // Different family, two of one family, not in pool.
    assert!(matches!(
        b.add(&req(&p, "c4", &["2001:db8:1::11"])).await,
        Err(AllocError::FamilyNotServed { .. })
    ));
    assert!(matches!(
        b.add(&req(&p, "c4", &["198.18.0.11", "198.18.0.12"])).await,
        Err(AllocError::TwoFixedOfOneFamily { .. })
    ));
    assert!(matches!(
        b.add(&req(&p, "c4", &["198.19.0.11"])).await,
        Err(AllocError::NotInPool { .. })
    ));
    assert_eq!(assert_clean(l.as_ref()).await, 1);
}

#[tokio::test]
async fn release_is_owner_checked_and_repeatable() {
    let (_d, l) = ledger();
    let a = Allocator::new(l.clone(), "node-a");
    let p = pool(false);
    let got = a.add(&req(&p, "c1", &[])).await.unwrap();
    // Another owner, or the same container on another interface, frees nothing.
    assert!(a.release(&owner("c2")).await.unwrap().is_empty());
    let mut eth1 = owner("c1");
    eth1.ifname = "eth1".into();
    assert!(a.release(&eth1).await.unwrap().is_empty());
    assert_eq!(assert_clean(l.as_ref()).await, 1);
    assert_eq!(
        a.release(&owner("c1")).await.unwrap()[0].address,
        got[0].address
    );
    assert!(
        a.release(&owner("c1")).await.unwrap().is_empty(),
        "deleting twice frees nothing more"
    );
    assert_eq!(assert_clean(l.as_ref()).await, 0);
}

#[tokio::test]
async fn exhaustion_rolls_back_the_other_family() {
    let (_d, l) = ledger();
    let a = Allocator::new(l.clone(), "node-a");
    let mut p = pool(true);
    // Only 2 dynamic IPv6 addresses.
    p.subnets[1].ranges = vec![AddrRange::new(ip("2001:db8:1::20"), ip("2001:db8:1::21")).unwrap()];
    a.add(&req(&p, "c1", &[])).await.unwrap();
    a.add(&req(&p, "c2", &[])).await.unwrap();
    let err = a.add(&req(&p, "c3", &[])).await.unwrap_err();
    assert!(
        matches!(
            err,
            AllocError::Exhausted {
                family: Family::V6,
                ..
            }
        ),
        "{err}"
    );
    assert!(a.held(&owner("c3")).await.unwrap().is_empty());
    assert_eq!(
        assert_clean(l.as_ref()).await,
        4,
        "the IPv4 address of c3 was rolled back"
    );
    assert!(a.status(&p).await.is_err());
    a.release(&owner("c1")).await.unwrap();
    a.status(&p).await.unwrap();
}

#[tokio::test]
async fn gc_releases_only_unlisted_attachments_of_this_node_and_network() {
    let (_d, l) = ledger();
    let a = Allocator::new(l.clone(), "node-a");
    let b = Allocator::new(l.clone(), "node-b");
    let p = pool(false);
    for c in ["keep", "drop1", "drop2"] {
        a.add(&req(&p, c, &[])).await.unwrap();
    }
    b.add(&req(&p, "elsewhere", &[])).await.unwrap();
    let mut other_net = req(&p, "othernet", &[]);
    other_net.owner.network = "net2".into();
    a.add(&other_net).await.unwrap();
    // Bindings made within the last second are kept (newer than the runtime's list): age them.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let released = a
        .gc("net", &[("keep".into(), "eth0".into())])
        .await
        .unwrap();
    let mut names: Vec<String> = released
        .iter()
        .map(|b| b.attachment().unwrap().container_id.clone())
        .collect();
    names.sort();
    assert_eq!(names, ["drop1", "drop2"]);
    assert_eq!(assert_clean(l.as_ref()).await, 3);
    // A binding made right now survives a GC that does not list it.
    a.add(&req(&p, "fresh", &[])).await.unwrap();
    assert!(a
        .gc("net", &[("keep".into(), "eth0".into())])
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_nodes_never_share_an_address() {
    let (_d, l) = ledger();
    let p = pool(true);
    let nodes: Vec<Arc<Allocator>> = (0..4)
        .map(|i| Arc::new(Allocator::new(l.clone(), format!("node-{i}"))))
        .collect();
    let mut tasks = vec![];
    for i in 0..120 {
        let a = nodes[i % 4].clone();
        let r = req(&p, &format!("c{i}"), &[]);
        tasks.push(tokio::spawn(async move { a.add(&r).await }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        for b in t.await.unwrap().unwrap() {
            assert!(seen.insert(b.address), "{} handed out twice", b.address);
        }
    }
    assert_eq!(assert_clean(l.as_ref()).await, 240);
}

#[derive(Debug, Clone)]
enum Op {
    Add { cid: u8, fixed: Option<u8> },
    Del { node: usize, cid: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..24, proptest::option::weighted(0.2, 10u8..20))
            .prop_map(|(cid, fixed)| Op::Add { cid, fixed }),
        (0usize..3, 0u8..24).prop_map(|(node, cid)| Op::Del { node, cid }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any sequence of ADDs (dynamic and fixed) and DELs over three nodes leaves a ledger that passes
    /// the audit, where every live attachment holds exactly what ADD returned.
    #[test]
    fn random_operation_sequences_keep_the_ledger_sound(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (_d, l) = ledger();
            let p = pool(false);
            let nodes: Vec<Allocator> = (0..3).map(|i| Allocator::new(l.clone(), format!("n{i}"))).collect();
            let mut live: std::collections::HashMap<u8, IpAddr> = Default::default();
            for op in ops {
                match op {
                    Op::Add { cid, fixed } => {
                        // A container lives on one node: its ADDs come from that node's runtime.
                        let node = usize::from(cid) % 3;
                        let f = fixed.map(|x| format!("198.18.0.{x}"));
                        let fixed: Vec<&str> = f.iter().map(|s| s.as_str()).collect();
                        match nodes[node].add(&req(&p, &format!("c{cid}"), &fixed)).await {
                            Ok(b) => {
                                if let Some(prev) = live.get(&cid) { assert_eq!(*prev, b[0].address); }
                                live.insert(cid, b[0].address);
                            }
                            Err(AllocError::AddressHeld { .. } | AllocError::ConflictingRequest { .. }) => {}
                            Err(e) => panic!("unexpected {e}"),
                        }
                    }
                    Op::Del { node, cid } => {
                        // Any node may run the DEL (a rescheduled pod's runtime); the owner check is what counts.
                        nodes[node].release(&owner(&format!("c{cid}"))).await.unwrap();
                        let fresh = Allocator::new(l.clone(), "n0");
                        if fresh.held(&owner(&format!("c{cid}"))).await.unwrap().is_empty() {
                            live.remove(&cid);
                        }
                    }
                }
            }
            let s = snapshot(l.as_ref()).await.unwrap();
            assert!(audit(&s.pools, &s.blocks, &s.bindings).is_empty());
            let held: std::collections::HashMap<String, IpAddr> = s.bindings.iter().map(|b| (b.attachment().unwrap().container_id.clone(), b.address)).collect();
            assert_eq!(held.len(), live.len());
            for (cid, addr) in live { assert_eq!(held.get(&format!("c{cid}")), Some(&addr)); }
        });
    }
}

fn sts(ordinal: u32) -> ClaimRequest {
    ClaimRequest {
        identity: Identity::StatefulSet {
            namespace: "db".into(),
            name: "mysql".into(),
            ordinal,
        },
        size: 1,
    }
}

async fn assert_clean_with_claims(l: &dyn Ledger) {
    let s = snapshot(l).await.unwrap();
    let v = audit_with_claims(&s.pools, &s.blocks, &s.claims, &s.bindings);
    assert!(v.is_empty(), "audit: {v:?}");
}

#[tokio::test]
async fn a_statefulset_ordinal_keeps_its_addresses_on_another_node() {
    let (_d, l) = ledger();
    let (a, b) = (
        Allocator::new(l.clone(), "node-a"),
        Allocator::new(l.clone(), "node-b"),
    );
    let p = pool(true);
    let mut first = req(&p, "mysql-0-a", &[]);
    first.claim = Some(sts(0));
    let got = a.add(&first).await.unwrap();
    assert_eq!(got.len(), 2);
    // The pod is recreated on node-b while the old sandbox still holds the addresses: try again,
    // naming the claim and the holder.
    let mut second = req(&p, "mysql-0-b", &[]);
    second.claim = Some(sts(0));
    let err = b.add(&second).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("mysql-0-a"), "{err}");
    assert!(
        b.held(&owner("mysql-0-b")).await.unwrap().is_empty(),
        "nothing partial"
    );
    // Once the old sandbox is gone, the new one gets exactly the same addresses.
    a.release(&owner("mysql-0-a")).await.unwrap();
    let again = b.add(&second).await.unwrap();
    let addrs = |v: &[berth_core::Binding]| v.iter().map(|x| x.address).collect::<Vec<_>>();
    assert_eq!(addrs(&again), addrs(&got));
    assert!(again.iter().all(|x| x.node == "node-b"));
    // Another ordinal gets other addresses.
    let mut other = req(&p, "mysql-1", &[]);
    other.claim = Some(sts(1));
    let o = a.add(&other).await.unwrap();
    assert!(o.iter().all(|x| !addrs(&got).contains(&x.address)));
    assert_clean_with_claims(l.as_ref()).await;
}

#[tokio::test]
async fn claimed_addresses_are_never_handed_out_dynamically() {
    let (_d, l) = ledger();
    let a = Allocator::new(l.clone(), "node-a");
    let mut p = pool(false);
    p.subnets[0].ranges = vec![AddrRange::new(ip("198.18.0.32"), ip("198.18.0.35")).unwrap()];
    let mut r = req(&p, "web-0", &[]);
    r.claim = Some(sts(0));
    let kept = a.add(&r).await.unwrap()[0].address;
    a.release(&owner("web-0")).await.unwrap();
    // The claim keeps the address while no pod uses it: three more pods fill the other three.
    for c in ["x1", "x2", "x3"] {
        let b = a.add(&req(&p, c, &[])).await.unwrap();
        assert_ne!(b[0].address, kept);
    }
    assert!(matches!(
        a.add(&req(&p, "x4", &[])).await,
        Err(AllocError::Exhausted { .. })
    ));
    // A fresh allocator (restarted agent) knows the claim from the ledger.
    let fresh = Allocator::new(l.clone(), "node-a");
    assert!(matches!(
        fresh.add(&req(&p, "x5", &[])).await,
        Err(AllocError::Exhausted { .. })
    ));
    assert_eq!(fresh.add(&r).await.unwrap()[0].address, kept);
    assert_clean_with_claims(l.as_ref()).await;
}

#[tokio::test]
async fn a_sticky_set_hands_its_members_to_whichever_pods_run() {
    let (_d, l) = ledger();
    let a = Allocator::new(l.clone(), "node-a");
    let p = pool(false);
    let set = ClaimRequest {
        identity: Identity::StickySet {
            namespace: "web".into(),
            name: "front".into(),
        },
        size: 2,
    };
    let ask = |cid: &str| {
        let mut r = req(&p, cid, &[]);
        r.claim = Some(set.clone());
        r
    };
    let one = a.add(&ask("p1")).await.unwrap()[0].address;
    let two = a.add(&ask("p2")).await.unwrap()[0].address;
    assert_ne!(one, two);
    let err = a.add(&ask("p3")).await.unwrap_err();
    assert!(matches!(err, AllocError::ClaimBusy { .. }), "{err}");
    // A rollout: p1 goes, p3 takes its address.
    a.release(&owner("p1")).await.unwrap();
    assert_eq!(a.add(&ask("p3")).await.unwrap()[0].address, one);
    assert_clean_with_claims(l.as_ref()).await;
}

/// The GC guard is exactly "never a binding made in the last second", wherever in a second the
/// ADD happened: with a clock the test moves, an ADD at 1000.1 s is kept by a GC at 1000.6 s and
/// at 1001.099999 s, and released by one at 1001.1 s or 1001.6 s. (With whole-second timestamps
/// the GC 1.5 s after such an ADD kept it.)
#[tokio::test]
async fn gc_guard_is_exactly_one_second() {
    use berth_core::Timestamp;
    use std::sync::atomic::{AtomicI64, Ordering};
    let (_d, l) = ledger();
    let t = Arc::new(AtomicI64::new(1_000_100_000));
    let clock = {
        let t = Arc::clone(&t);
        Arc::new(move || Timestamp::from_micros(t.load(Ordering::SeqCst)))
    };
    let a = Allocator::with_clock(l.clone(), "node-a", clock);
    let p = pool(false);
    let made = a.add(&req(&p, "young", &[])).await.unwrap();
    assert_eq!(made[0].since, Timestamp::from_micros(1_000_100_000));
    for (at, released) in [
        (1_000_600_000, false),
        (1_001_099_999, false),
        (1_001_100_000, true),
    ] {
        t.store(at, Ordering::SeqCst);
        let got = a.gc("net", &[]).await.unwrap();
        assert_eq!(
            !got.is_empty(),
            released,
            "GC {} µs after the ADD released {got:?}",
            at - 1_000_100_000
        );
    }
    // Again at 1.5 s, from a fresh allocator (a plugin process), as the README states it.
    t.store(2_000_100_000, Ordering::SeqCst);
    a.add(&req(&p, "again", &[])).await.unwrap();
    t.store(2_000_600_000, Ordering::SeqCst);
    let fresh = Allocator::with_clock(l.clone(), "node-a", {
        let t = Arc::clone(&t);
        Arc::new(move || Timestamp::from_micros(t.load(Ordering::SeqCst)))
    });
    assert!(
        fresh.gc("net", &[]).await.unwrap().is_empty(),
        "0.5 s after"
    );
    t.store(2_001_600_000, Ordering::SeqCst);
    assert_eq!(fresh.gc("net", &[]).await.unwrap().len(), 1, "1.5 s after");
    assert_eq!(assert_clean(l.as_ref()).await, 0);
}

/// One unreadable binding and one unreadable block in the ledger: a reload still works, the
/// bad binding's address and every address of the bad block are never handed out (not even when
/// the pool runs dry), a fixed request for the bad address is refused naming the record, and the
/// snapshot lists both as bad.
#[tokio::test]
async fn bad_records_are_skipped_and_never_read_as_free() {
    use berth_ledger::Kind;
    let (_d, l) = ledger();
    let p = pool(false);
    // A fixed address in the reserved range and a dynamic one, both named by garbage records;
    // a block record whose value is not a block.
    l.create(Kind::Binding, "198.18.0.12", b"{\"address\": 12}".to_vec())
        .await
        .unwrap();
    l.create(Kind::Binding, "198.18.0.40", b"not json".to_vec())
        .await
        .unwrap();
    l.create(Kind::Block, "pods/198.18.0.48/28", b"{}".to_vec())
        .await
        .unwrap();
    let a = Allocator::new(l.clone(), "node-a");
    a.reload()
        .await
        .expect("a bad record must not fail the reload");
    assert_eq!(a.bad_records().len(), 3, "{:?}", a.bad_records());
    assert_eq!(berth_ledger::METRICS.bad_records(Kind::Block), 1);

    let err = a
        .add(&req(&p, "wants-12", &["198.18.0.12"]))
        .await
        .unwrap_err();
    assert!(matches!(err, AllocError::HeldByBadRecord { .. }), "{err}");
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("cannot read"), "{err}");

    let mut got = vec![];
    for i in 0.. {
        match a.add(&req(&p, &format!("c{i}"), &[])).await {
            Ok(b) => got.push(b[0].address),
            Err(AllocError::Exhausted { .. }) => break,
            Err(e) => panic!("ADD {i}: {e}"),
        }
    }
    let bad_block: ipnet::IpNet = "198.18.0.48/28".parse().unwrap();
    assert!(
        !got.contains(&ip("198.18.0.40")),
        "the bad binding's address was handed out"
    );
    assert!(
        got.iter().all(|a| !bad_block.contains(a)),
        "an address of the bad block was handed out"
    );
    // Everything else of the dynamic range was: 223 addresses less .40 and the 16 of the block.
    assert_eq!(got.len(), 223 - 1 - 16);
    let s = snapshot(l.as_ref()).await.unwrap();
    let mut bad: Vec<String> = s.bad.iter().map(|b| b.name.clone()).collect();
    bad.sort();
    assert_eq!(bad, ["198.18.0.12", "198.18.0.40", "pods/198.18.0.48/28"]);
    // A DEL of someone else never touches the bad record.
    a.release(&owner("wants-12")).await.unwrap();
    assert!(l.get(Kind::Binding, "198.18.0.12").await.unwrap().is_some());
}
