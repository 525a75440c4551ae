//! The routed pod network's blocks watch on the etcd ledger, against Debian's real etcd: the
//! first snapshot holds what was there, claims and releases follow, an unreadable record is
//! left out without hiding the others, and a restarted etcd is followed again (re-list).

use berth_agent::routes::etcd::watch_blocks;
use berth_core::Block;
use berth_k8s::cluster::Snapshot;
use berth_ledger::etcd::Etcd;
use berth_ledger::{Kind, Ledger, Records};
use berth_testbed::{require_root_and_tools, EtcdCluster};
use std::time::{Duration, Instant};

fn block(cidr: &str, node: &str) -> Block {
    Block {
        pool: "pods".into(),
        cidr: cidr.parse().unwrap(),
        node: node.into(),
    }
}

/// Waits until the published snapshot satisfies `ok`; returns how long that took.
async fn until(
    rx: &mut Snapshot<Vec<Block>>,
    what: &str,
    ok: impl Fn(&[Block]) -> bool,
) -> Duration {
    let t = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = rx.borrow_and_update().as_ref() {
            if ok(v) {
                return t.elapsed();
            }
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!(
                "{what}: not seen within 20 s; last snapshot {:?}",
                rx.borrow()
            );
        }
    }
}

fn cidrs(v: &[Block]) -> Vec<String> {
    v.iter().map(|b| format!("{} {}", b.cidr, b.node)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_block_watch_follows_claims_releases_and_restarts() {
    require_root_and_tools();
    let etcd = EtcdCluster::start(1).unwrap();
    let ledger = Etcd::connect(&etcd.client_urls(), None, "/berth/")
        .await
        .unwrap();
    let r = Records(&ledger);
    let a = block("198.18.64.0/28", "node1");
    r.create(Kind::Block, &a.name(), &a).await.unwrap();
    // A record of another kind under the same prefix tree is not a block.
    ledger
        .create(Kind::Pool, "pods", br#"{"name":"pods"}"#.to_vec())
        .await
        .unwrap();

    let (client, prefix) = ledger.watch_parts(Kind::Block);
    assert_eq!(prefix, "/berth/blocks/");
    let mut rx = watch_blocks(client, prefix);
    until(&mut rx, "the first list", |v| {
        cidrs(v) == ["198.18.64.0/28 node1"]
    })
    .await;

    // A claim and a release, each published as the whole set.
    let b = block("198.18.64.16/28", "node2");
    r.create(Kind::Block, &b.name(), &b).await.unwrap();
    let t = until(&mut rx, "a claim", |v| v.len() == 2).await;
    eprintln!("[timing] etcd block claim seen by the watch in {t:?}");
    let stored = ledger.get(Kind::Block, &a.name()).await.unwrap().unwrap();
    ledger
        .delete(Kind::Block, &a.name(), &stored.version)
        .await
        .unwrap();
    until(&mut rx, "a release", |v| {
        cidrs(v) == ["198.18.64.16/28 node2"]
    })
    .await;

    // An unreadable record is left out; the others stay.
    ledger
        .create(Kind::Block, "pods/garbage", b"not json".to_vec())
        .await
        .unwrap();
    let c = block("2001:db8:64::/122", "node3");
    r.create(Kind::Block, &c.name(), &c).await.unwrap();
    until(&mut rx, "a block after a bad one", |v| {
        cidrs(v) == ["198.18.64.16/28 node2", "2001:db8:64::/122 node3"]
    })
    .await;

    // etcd restarts: the watch breaks, the last snapshot stays, and a change made meanwhile is
    // seen once the watch re-lists.
    etcd.stop_member(0).unwrap();
    assert_eq!(rx.borrow().as_ref().map(|v| v.len()), Some(2));
    etcd.restart_member(0).unwrap();
    etcd.wait_healthy(Duration::from_secs(30)).unwrap();
    let ledger2 = Etcd::connect(&etcd.client_urls(), None, "/berth/")
        .await
        .unwrap();
    let d = block("198.18.64.32/28", "node2");
    Records(&ledger2)
        .create(Kind::Block, &d.name(), &d)
        .await
        .unwrap();
    until(&mut rx, "a claim after the restart", |v| v.len() == 3).await;
}
