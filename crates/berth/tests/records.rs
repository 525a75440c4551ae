//! Ledger records end to end, with the real `berth agent`, `berth-ipam` and `berth` CLI, on the
//! embedded ledger and on Debian's etcd:
//!
//! - one unreadable binding and one unreadable block stop neither an agent's reload nor
//!   `berth audit` (which exits 1 naming them), and their addresses are never handed out;
//! - `berth audit` through the agent (which holds the embedded ledger's lock) sees claims, so a
//!   claimed binding is no false "claim mismatch";
//! - CNI GC keeps a binding made less than a second ago and releases one made 1.5 s ago, wherever
//!   in a second the ADD happened.

mod common;

use berth_allocator::{AddRequest, Allocator, ClaimRequest};
use berth_core::{Identity, Owner};
use berth_ledger::Kind;
use berth_testbed::{require_root_and_tools, CniCommand, EtcdCluster};
use common::*;
use serde_json::Value;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The test pool (`v4_pool`) with a small dynamic range and /28 blocks: 198.18.1.0–.31, two
/// blocks.
fn small_pool(network: &str, socket: &Path, node: &str, ledger: &Ledger) -> Value {
    let mut c = with_store(v4_pool(network, socket, node), ledger);
    c["ipam"]["rangeStart"] = "198.18.1.1".into();
    c["ipam"]["rangeEnd"] = "198.18.1.31".into();
    c["ipam"]["blockSize"] = 28.into();
    c
}

fn audit_out(ledger: &Ledger, socket: Option<&Path>) -> (i32, String, String) {
    berth_cli("audit", ledger, socket, false)
}

/// Write the bad records with the backend's own client, as a foreign writer (an old Berth, an
/// operator's `etcdctl put`) would have left them.
async fn write_bad_records(l: &dyn berth_ledger::Ledger) {
    l.create(
        Kind::Binding,
        "198.18.1.5",
        b"{\"address\": \"198.18.1.5\", \"kind\": \"dynamic\"}".to_vec(),
    )
    .await
    .unwrap();
    l.create(Kind::Block, "e2e/198.18.1.16/28", b"\x00 not json".to_vec())
        .await
        .unwrap();
}

fn bad_records_stop_nothing(ledger: Ledger) {
    let dir = tempfile::Builder::new()
        .prefix("berth-e2e-records-")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("agent.sock");
    {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let l: std::sync::Arc<dyn berth_ledger::Ledger> = match &ledger {
                Ledger::Embedded(d) => std::sync::Arc::new(
                    berth_ledger::embedded::Embedded::open(d.path(), Duration::from_secs(5))
                        .unwrap(),
                ),
                Ledger::Etcd(url) => berth_ledger::open(&format!("etcd:{url}").parse().unwrap())
                    .await
                    .unwrap(),
            };
            write_bad_records(l.as_ref()).await;
        });
    }
    let mut agent = Agent::start(&socket, &ledger, "rec-node");
    assert!(
        !agent
            .daemon
            .log()
            .contains("could not read the ledger at start"),
        "{}",
        agent.daemon.log_tail(20)
    );
    let cni = runtime();
    let conf = small_pool("e2e", &socket, "rec-node", &ledger);
    let mut got: Vec<IpAddr> = vec![];
    let dry = loop {
        let c = format!("rec-{}", got.len());
        let out = ipam(&cni, CniCommand::Add, Some(&target(&c, "eth0", &c)), &conf);
        match out.ok() {
            Ok(r) => got.push(result_addrs(&r)[0]),
            Err(_) => break out,
        }
        assert!(got.len() <= 32, "{got:?}");
    };
    assert_eq!(cni_error_code(&dry), 110, "{}", dry.stdout);
    // 198.18.1.1–.15 less the bad binding's .5; the bad block .16/28 is never claimed.
    assert_eq!(got.len(), 14, "{got:?}");
    assert!(
        !got.iter().any(|a| a.to_string() == "198.18.1.5"),
        "{got:?}"
    );
    assert!(
        !got.iter().any(|a| in_cidr(*a, "198.18.1.16/28")),
        "{got:?}"
    );

    // A restarted agent reloads past them and still counts them taken.
    agent.kill9();
    agent.restart();
    let out = ipam(
        &cni,
        CniCommand::Add,
        Some(&target("rec-after", "eth0", "rec-after")),
        &conf,
    );
    assert_eq!(cni_error_code(&out), 110, "{}", out.stdout);

    // `berth audit` (through the agent for the embedded ledger) exits 1 naming both.
    let sock = matches!(ledger, Ledger::Embedded(_)).then_some(socket.as_path());
    let (code, out, err) = audit_out(&ledger, sock);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("VIOLATION: binding \"198.18.1.5\" cannot be read"),
        "{out}"
    );
    assert!(
        out.contains("VIOLATION: block \"e2e/198.18.1.16/28\" cannot be read"),
        "{out}"
    );
    assert_eq!(out.matches("VIOLATION").count(), 2, "{out}");
    // The listings still work and say something is left out.
    let (code, out, err) = berth_cli("bindings", &ledger, sock, true);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(serde_json::from_str::<Vec<Value>>(&out).unwrap().len(), 14);
    assert!(err.contains("2 ledger record(s) cannot be read"), "{err}");
}

#[test]
fn bad_records_stop_nothing_on_the_embedded_ledger() {
    require_root_and_tools();
    bad_records_stop_nothing(Ledger::embedded());
}

#[test]
fn bad_records_stop_nothing_on_etcd() {
    require_root_and_tools();
    let etcd = EtcdCluster::start(1).unwrap();
    bad_records_stop_nothing(Ledger::Etcd(etcd.endpoints_csv()));
}

/// A StatefulSet's claimed binding, audited through the agent that holds the embedded ledger's
/// lock: clean, and the claim counted. (The agent's snapshot used to leave claims out, so every
/// claimed binding was reported as a claim mismatch.)
#[test]
fn audit_through_the_agent_sees_claims() {
    require_root_and_tools();
    let ledger = Ledger::embedded();
    let dir = tempfile::Builder::new()
        .prefix("berth-e2e-claims-")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("agent.sock");
    let conf = with_store(v4_pool("e2e", &socket, "claim-node"), &ledger);
    let pool = berth_cni::parse_config(conf.to_string().as_bytes())
        .unwrap()
        .pool;
    {
        let Ledger::Embedded(d) = &ledger else {
            unreachable!()
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let l = std::sync::Arc::new(
                berth_ledger::embedded::Embedded::open(d.path(), Duration::from_secs(5)).unwrap(),
            );
            let a = Allocator::new(l, "claim-node");
            let b = a
                .add(&AddRequest {
                    pool,
                    owner: Owner {
                        network: "e2e".into(),
                        container_id: "web-0-sandbox".into(),
                        ifname: "eth0".into(),
                        pod: None,
                    },
                    fixed: vec![],
                    claim: Some(ClaimRequest {
                        identity: Identity::StatefulSet {
                            namespace: "db".into(),
                            name: "web".into(),
                            ordinal: 0,
                        },
                        size: 1,
                    }),
                })
                .await
                .unwrap();
            assert_eq!(b.len(), 1);
        });
    }
    let _agent = Agent::start(&socket, &ledger, "claim-node");
    // The CLI cannot open the locked file, so it asks the agent.
    let (code, out, err) = audit_out(&ledger, Some(&socket));
    assert_eq!(code, 0, "berth audit through the agent:\n{out}\n{err}");
    assert!(
        err.contains("audit clean: 1 pools, 1 blocks, 1 claims, 1 bindings"),
        "{err}"
    );
}

/// Sleep until the wall clock is just past a whole second (between .02 and .12): an ADD made
/// there is where whole-second timestamps put the GC guard furthest from the stated one.
fn align_to_second_start() {
    loop {
        let sub = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        if (20..120).contains(&sub) {
            return;
        }
        std::thread::sleep(Duration::from_millis(if sub < 20 {
            5
        } else {
            (1020 - sub) as u64
        }));
    }
}

/// GC through `berth-ipam` (the direct path on the embedded ledger, one process per call, as a
/// runtime runs it) 0.5 s after an ADD keeps the binding; 1.5 s after releases it.
#[test]
fn gc_keeps_a_binding_made_in_the_last_second_and_releases_an_older_one() {
    require_root_and_tools();
    let ledger = Ledger::embedded();
    let dir = tempfile::tempdir().unwrap();
    let mut conf = with_store(
        v4_pool("gcnet", &dir.path().join("no-agent.sock"), "gc-node"),
        &ledger,
    );
    let cni = runtime();
    let held = |cid: &str| {
        bindings(&ledger, None)
            .iter()
            .any(|b| b["holder"]["attachment"]["containerID"] == cid)
    };
    // A GC listing no attachment: everything of this network on this node is stale to it.
    conf["cni.dev/valid-attachments"] = serde_json::json!([]);
    let mut conclusive = 0;
    for attempt in 0..3 {
        let cid = format!("gc-{attempt}");
        align_to_second_start();
        let added = Instant::now();
        ipam(
            &cni,
            CniCommand::Add,
            Some(&target(&cid, "eth0", &cid)),
            &conf,
        )
        .ok()
        .unwrap_or_else(|e| panic!("ADD: {e:#}"));
        let after_add = Instant::now();
        std::thread::sleep(Duration::from_millis(500).saturating_sub(after_add - added));
        let gc = ipam(&cni, CniCommand::Gc, None, &conf);
        let gc_done = added.elapsed();
        gc.ok().unwrap_or_else(|e| panic!("GC: {e:#}"));
        // The binding was made after `added` and the GC began before `gc_done`: if that is
        // under a second, the binding was younger than a second when the GC began.
        if gc_done < Duration::from_millis(950) {
            conclusive += 1;
            assert!(held(&cid), "GC {gc_done:?} after the ADD released it");
        } else {
            eprintln!("attempt {attempt}: GC finished {gc_done:?} after the ADD began; too slow to judge the 0.5 s case");
        }
        // 1.5 s after the ADD finished the binding is older than a second whatever the timing.
        std::thread::sleep(Duration::from_millis(1500).saturating_sub(after_add.elapsed()));
        ipam(&cni, CniCommand::Gc, None, &conf)
            .ok()
            .unwrap_or_else(|e| panic!("GC: {e:#}"));
        assert!(
            !held(&cid),
            "GC {:?} after the ADD finished kept it",
            after_add.elapsed()
        );
        if conclusive > 0 {
            break;
        }
    }
    assert!(
        conclusive > 0,
        "no attempt ran the 0.5 s GC within a second of its ADD: the machine is too loaded to test the guard"
    );
    assert_audit_clean(&ledger, None);
}
