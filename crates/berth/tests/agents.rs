//! End to end, with real parts: one etcd, four `berth agent` processes (one per "node"), and
//! `berth-ipam` executed once per CNI call exactly as a container runtime does, many at a time.
//!
//! What must hold: every concurrent ADD succeeds with its own address from the pool's dynamic
//! range, the ledger passes `berth audit`, each binding is recorded for the node that made it and
//! lies in a block that node owns, and DEL releases everything. Dual-stack pools (host-local
//! `ranges`) hand out exactly one address per family.

mod common;

use berth_testbed::{require_root_and_tools, CniCommand, EtcdCluster};
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;

const NODES: usize = 4;
const THREADS: usize = 24;

fn node_name(i: usize) -> String {
    format!("node-{i}")
}

fn dual_pool(network: &str, socket: &std::path::Path, node: &str) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": network,
        "type": "bridge",
        "ipam": {
            "type": "berth-ipam",
            "ranges": [
                [{"subnet": "198.18.16.0/20", "rangeStart": "198.18.17.0", "rangeEnd": "198.18.31.254",
                  "gateway": "198.18.16.1"}],
                [{"subnet": "2001:db8:e2e::/64", "rangeStart": "2001:db8:e2e::100", "rangeEnd": "2001:db8:e2e::ffff",
                  "gateway": "2001:db8:e2e::1"}]
            ],
            "blockSize": 26,
            "blockSizeV6": 122,
            "agentSocket": socket,
            "nodeName": node,
        }
    })
}

/// Check bindings of `pool` against what the ADDs returned and against the blocks; returns the
/// number of bindings checked.
fn check_ledger(
    ledger: &Ledger,
    pool: &str,
    expect: &BTreeMap<String, (String, Vec<IpAddr>)>,
) -> usize {
    let all = bindings(ledger, None);
    let by_ctr = bindings_by_container(&all, pool);
    let blocks = blocks(ledger, None);
    // Block owner by CIDR, for this pool.
    let owner: HashMap<String, String> = blocks
        .iter()
        .filter(|b| b["pool"] == pool)
        .map(|b| {
            (
                b["cidr"].as_str().expect("block cidr").to_string(),
                b["node"].as_str().expect("block node").to_string(),
            )
        })
        .collect();
    assert_eq!(
        by_ctr.keys().collect::<BTreeSet<_>>(),
        expect.keys().collect::<BTreeSet<_>>(),
        "the containers holding bindings of pool {pool} differ from the successful ADDs"
    );
    let mut n = 0;
    for (cid, held) in &by_ctr {
        let (node, addrs) = &expect[cid];
        let mut got: Vec<IpAddr> = held.iter().map(|(a, _, _)| *a).collect();
        let mut want = addrs.clone();
        got.sort();
        want.sort();
        assert_eq!(
            got, want,
            "container {cid}: ledger addresses differ from its ADD result"
        );
        for (addr, bnode, b) in held {
            n += 1;
            assert_eq!(
                bnode, node,
                "binding {addr} of {cid} recorded for the wrong node: {b}"
            );
            assert_eq!(b["kind"], "dynamic", "binding {addr} is not dynamic: {b}");
            assert_eq!(
                b["holder"]["attachment"]["network"], pool,
                "binding {addr}: wrong network: {b}"
            );
            assert_eq!(
                b["holder"]["attachment"]["ifname"], "eth0",
                "binding {addr}: wrong ifname: {b}"
            );
            assert_eq!(
                b["holder"]["attachment"]["pod"]["name"],
                format!("pod-{cid}"),
                "binding {addr}: pod from CNI_ARGS not recorded: {b}"
            );
            let block = b["block"]
                .as_str()
                .unwrap_or_else(|| panic!("binding without block: {b}"));
            assert!(
                in_cidr(*addr, block),
                "binding {addr} lies outside its block {block}"
            );
            let bowner = owner.get(block).unwrap_or_else(|| {
                panic!("binding {addr} names block {block}, which the ledger does not list")
            });
            assert_eq!(
                bowner, node,
                "binding {addr} of {node} lies in block {block} owned by {bowner}"
            );
        }
    }
    // Every node that allocated owns at least one block, and blocks have the configured size.
    for (cidr, node) in &owner {
        let len: u8 = cidr.rsplit('/').next().unwrap().parse().unwrap();
        assert!(
            len == 26 || len == 122,
            "block {cidr} of {node} has an unexpected size"
        );
    }
    n
}

#[test]
fn four_agents_on_etcd_serve_concurrent_adds() {
    require_root_and_tools();
    let t0 = Instant::now();
    let etcd = EtcdCluster::start(1).expect("starting etcd");
    let ledger = Ledger::Etcd(etcd.endpoints_csv());
    timing("etcd start", t0);
    let dir = tempfile::Builder::new()
        .prefix("berth-e2e-agents-")
        .tempdir()
        .unwrap();
    let t = Instant::now();
    let agents: Vec<Agent> = (0..NODES)
        .map(|i| {
            Agent::start(
                &dir.path().join(format!("node-{i}.sock")),
                &ledger,
                &node_name(i),
            )
        })
        .collect();
    timing("4 agents serving", t);
    let sockets: Vec<PathBuf> = agents.iter().map(|a| a.socket.clone()).collect();
    let cni = runtime();
    // The configuration names no ledger, so only an agent may serve it; its dataDir points into
    // the test's temp dir, and the check at the end that nothing was written there proves every
    // call was served by an agent.
    let fallback = Ledger::Embedded(
        tempfile::Builder::new()
            .prefix("berth-e2e-fallback-")
            .tempdir()
            .unwrap(),
    );

    // ---- 400 concurrent ADDs, 100 per node, through each node's agent ------------------------
    let n = 400;
    let conf = |i: usize| {
        agent_only(
            v4_pool("e2e", &sockets[i % NODES], &node_name(i % NODES)),
            &fallback,
        )
    };
    let cid = |i: usize| format!("ctr-{i:04}");
    let t = Instant::now();
    let adds = par_map(n, THREADS, |i| {
        let c = cid(i);
        ipam(
            &cni,
            CniCommand::Add,
            Some(&target(&c, "eth0", &format!("pod-{c}"))),
            &conf(i),
        )
    });
    timing("400 concurrent ADDs (4 agents, etcd)", t);
    let slowest = adds.iter().map(|o| o.elapsed).max().unwrap();
    eprintln!("[timing] slowest single ADD: {slowest:.2?}");

    let mut expect: BTreeMap<String, (String, Vec<IpAddr>)> = BTreeMap::new();
    let mut seen: HashMap<IpAddr, String> = HashMap::new();
    for (i, out) in adds.iter().enumerate() {
        let result = out
            .ok()
            .unwrap_or_else(|e| panic!("ADD {} on {} failed: {e:#}", cid(i), node_name(i % NODES)));
        let addrs = result_addrs(&result);
        assert_eq!(
            addrs.len(),
            1,
            "ADD {} returned {} addresses: {result}",
            cid(i),
            addrs.len()
        );
        let ip = result["ips"][0].clone();
        assert!(
            ip["address"].as_str().unwrap().ends_with("/20"),
            "address without the subnet's prefix: {ip}"
        );
        assert_eq!(ip["gateway"], "198.18.0.1", "wrong gateway: {ip}");
        let a = addrs[0];
        assert!(
            v4_in(a, "198.18.1.0", "198.18.15.254"),
            "ADD {} got {a}, outside the dynamic range 198.18.1.0-198.18.15.254",
            cid(i)
        );
        if let Some(prev) = seen.insert(a, cid(i)) {
            panic!("address {a} handed to both {prev} and {}", cid(i));
        }
        expect.insert(cid(i), (node_name(i % NODES), addrs));
    }
    assert_eq!(seen.len(), n, "expected {n} distinct addresses");

    let t = Instant::now();
    assert_audit_clean(&ledger, None);
    let checked = check_ledger(&ledger, "e2e", &expect);
    assert_eq!(checked, n, "expected {n} bindings in the ledger");
    // Each node's blocks are its own and disjoint from other nodes' (listed once each).
    let blocks = blocks(&ledger, None);
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    let mut cidrs = BTreeSet::new();
    for b in blocks.iter().filter(|b| b["pool"] == "e2e") {
        assert!(
            cidrs.insert(b["cidr"].as_str().unwrap().to_string()),
            "block listed twice: {b}"
        );
        *per_node
            .entry(b["node"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for i in 0..NODES {
        let k = per_node.get(&node_name(i)).copied().unwrap_or(0);
        // 100 addresses need at least two /26 blocks (62 usable at most per block).
        assert!(k >= 2, "{} owns {k} blocks for 100 bindings", node_name(i));
    }
    eprintln!("[info] blocks per node: {per_node:?}");
    timing("audit + ledger checks", t);

    // ---- 400 concurrent DELs -----------------------------------------------------------------
    let t = Instant::now();
    let dels = par_map(n, THREADS, |i| {
        let c = cid(i);
        ipam(
            &cni,
            CniCommand::Del,
            Some(&target(&c, "eth0", &format!("pod-{c}"))),
            &conf(i),
        )
    });
    timing("400 concurrent DELs", t);
    for (i, out) in dels.iter().enumerate() {
        assert!(
            out.success(),
            "DEL {} failed: {} {}",
            cid(i),
            out.stdout,
            out.stderr
        );
        assert!(
            out.stdout.trim().is_empty(),
            "DEL printed output: {}",
            out.stdout
        );
    }
    let left = bindings(&ledger, None);
    assert!(
        left.iter().all(|b| b["pool"] != "e2e"),
        "{} bindings of pool e2e survived their DEL",
        left.iter().filter(|b| b["pool"] == "e2e").count()
    );
    assert_audit_clean(&ledger, None);

    // ---- dual-stack: 40 ADDs, one address per family each -----------------------------------
    let m = 40;
    let dconf = |i: usize| {
        agent_only(
            dual_pool("e2e-ds", &sockets[i % NODES], &node_name(i % NODES)),
            &fallback,
        )
    };
    let dcid = |i: usize| format!("ds-{i:04}");
    let t = Instant::now();
    let adds = par_map(m, THREADS, |i| {
        let c = dcid(i);
        ipam(
            &cni,
            CniCommand::Add,
            Some(&target(&c, "eth0", &format!("pod-{c}"))),
            &dconf(i),
        )
    });
    timing("40 concurrent dual-stack ADDs", t);
    let mut expect: BTreeMap<String, (String, Vec<IpAddr>)> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (i, out) in adds.iter().enumerate() {
        let result = out
            .ok()
            .unwrap_or_else(|e| panic!("dual-stack ADD {} failed: {e:#}", dcid(i)));
        let addrs = result_addrs(&result);
        let v4: Vec<_> = addrs.iter().filter(|a| a.is_ipv4()).collect();
        let v6: Vec<_> = addrs.iter().filter(|a| a.is_ipv6()).collect();
        assert!(
            v4.len() == 1 && v6.len() == 1 && addrs.len() == 2,
            "dual-stack ADD {} must return one IPv4 and one IPv6 address: {result}",
            dcid(i)
        );
        assert!(
            v4_in(*v4[0], "198.18.17.0", "198.18.31.254"),
            "IPv4 {} outside its range",
            v4[0]
        );
        let IpAddr::V6(a6) = *v6[0] else {
            unreachable!()
        };
        let lo: std::net::Ipv6Addr = "2001:db8:e2e::100".parse().unwrap();
        let hi: std::net::Ipv6Addr = "2001:db8:e2e::ffff".parse().unwrap();
        assert!(lo <= a6 && a6 <= hi, "IPv6 {a6} outside its range");
        for ip in result["ips"].as_array().unwrap() {
            let (addr, gw) = (ip["address"].as_str().unwrap(), &ip["gateway"]);
            if addr.contains(':') {
                assert!(
                    addr.ends_with("/64") && gw == "2001:db8:e2e::1",
                    "bad IPv6 entry {ip}"
                );
            } else {
                assert!(
                    addr.ends_with("/20") && gw == "198.18.16.1",
                    "bad IPv4 entry {ip}"
                );
            }
        }
        for a in &addrs {
            assert!(seen.insert(*a), "dual-stack address {a} handed out twice");
        }
        expect.insert(dcid(i), (node_name(i % NODES), addrs));
    }
    assert_audit_clean(&ledger, None);
    assert_eq!(
        check_ledger(&ledger, "e2e-ds", &expect),
        2 * m,
        "expected {} dual-stack bindings",
        2 * m
    );
    let dels = par_map(m, THREADS, |i| {
        let c = dcid(i);
        ipam(
            &cni,
            CniCommand::Del,
            Some(&target(&c, "eth0", &format!("pod-{c}"))),
            &dconf(i),
        )
    });
    for (i, out) in dels.iter().enumerate() {
        assert!(
            out.success(),
            "dual-stack DEL {} failed: {} {}",
            dcid(i),
            out.stdout,
            out.stderr
        );
    }
    let left = bindings(&ledger, None);
    assert!(left.is_empty(), "bindings left after every DEL: {left:?}");
    assert_audit_clean(&ledger, None);

    let Ledger::Embedded(fb) = &fallback else {
        unreachable!()
    };
    let stray: Vec<_> = std::fs::read_dir(fb.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        stray.is_empty(),
        "some calls bypassed the agents (direct ledger files {stray:?})"
    );
    // Every agent is still alive: nothing above crashed one.
    for mut a in agents {
        assert!(
            a.daemon.is_running(),
            "agent {} died:\n{}",
            a.node,
            a.daemon.log_tail(30)
        );
    }
    timing("agents test total", t0);
}
