//! End to end, with real parts: the node agent is `kill -9`ed in the middle of a burst of
//! concurrent `berth-ipam` ADDs, restarted on the same socket and ledger, and the runtime then does
//! what a real one does: DEL for every failed ADD, then CNI GC listing the attachments it keeps.
//! Run against the embedded ledger and against etcd.
//!
//! How the crash is staged: once a third of the ADDs have succeeded the agent is frozen (SIGSTOP)
//! for a moment, so that plugin calls are certainly in flight inside it (connected, request sent,
//! maybe half-processed), then SIGKILLed. Those calls must fail with a CNI error, code 11 ("try
//! again"). Calls started after the kill find the socket refusing and allocate directly against the
//! ledger (embedded: the dead agent's lock is gone with its process; etcd: no lock at all); they
//! succeed, or (only if the ledger is too contended, e.g. the embedded lock wait runs out) fail with
//! a code 11 from the ledger, never with an agent error; at least one of them must succeed.
//!
//! What must hold afterwards: `berth audit` is clean; the bindings are exactly the successful ADDs'
//! addresses (nothing leaked by the failed ones, nothing twice); every successful container keeps
//! the address its ADD returned; repeating its ADD returns that address; GC frees an attachment the
//! runtime no longer lists. And a `kill -9` plus restart with nothing in flight changes nothing.

mod common;

use berth_testbed::{require_root_and_tools, CniCommand, CniOutput, EtcdCluster};
use common::*;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const BURST: usize = 200;
const THREADS: usize = 16;
const NODE: &str = "node-0";
const NETWORK: &str = "crash";

fn cid(i: usize) -> String {
    format!("crash-{i:04}")
}

fn add_target(c: &str) -> berth_testbed::CniTarget {
    target(c, "eth0", &format!("pod-{c}"))
}

/// The sorted `berth bindings --json` of the pool (whole records).
fn pool_bindings(ledger: &Ledger, socket: &std::path::Path) -> Vec<Value> {
    let mut v: Vec<Value> = bindings(ledger, Some(socket))
        .into_iter()
        .filter(|b| b["pool"] == NETWORK)
        .collect();
    v.sort_by_key(|b| b["address"].as_str().unwrap_or_default().to_string());
    v
}

fn sorted_blocks(ledger: &Ledger, socket: &std::path::Path) -> Vec<Value> {
    let mut v = blocks(ledger, Some(socket));
    v.sort_by_key(|b| b["cidr"].as_str().unwrap_or_default().to_string());
    v
}

struct Outcome {
    out: CniOutput,
    started: Instant,
}

fn crash_mid_burst(ledger: Ledger) {
    let t0 = Instant::now();
    let kind = match &ledger {
        Ledger::Embedded(_) => "embedded",
        Ledger::Etcd(_) => "etcd",
    };
    let dir = tempfile::Builder::new()
        .prefix("berth-e2e-crash-")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("agent.sock");
    let agent = Mutex::new(Agent::start(&socket, &ledger, NODE));
    let cni = runtime();
    // The direct path (no agent) uses the same ledger the agent does, as a real node's config would.
    let conf = with_store(v4_pool(NETWORK, &socket, NODE), &ledger);

    // ---- the burst, with kill -9 after a third succeeded ---------------------------------------
    let succeeded = AtomicUsize::new(0);
    let killed_at: OnceLock<Instant> = OnceLock::new();
    let t = Instant::now();
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while succeeded.load(Ordering::SeqCst) < BURST / 3 {
                assert!(
                    Instant::now() < deadline,
                    "a third of the ADDs never succeeded"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut a = agent.lock().unwrap();
            a.daemon.pause().expect("SIGSTOP agent");
            // Let the burst pile into the frozen agent: these calls are in flight when it dies.
            std::thread::sleep(Duration::from_millis(300));
            a.kill9();
            killed_at.set(Instant::now()).unwrap();
        });
        par_map(BURST, THREADS, |i| {
            let started = Instant::now();
            let out = ipam(&cni, CniCommand::Add, Some(&add_target(&cid(i))), &conf);
            if out.success() {
                succeeded.fetch_add(1, Ordering::SeqCst);
            }
            Outcome { out, started }
        })
    });
    timing(&format!("[{kind}] burst of {BURST} ADDs with kill -9"), t);
    let killed_at = *killed_at
        .get()
        .expect("the agent was killed during the burst");

    // ---- classify and check every ADD ----------------------------------------------------------
    // Started before the agent was reaped: served by it, or in flight when it died (code 11 naming
    // the agent). Started after: the socket refuses, so the plugin allocates directly; that either
    // succeeds or, if the ledger is too contended (embedded: lock wait over 10 s), is a code 11
    // from the ledger, never an agent error.
    let mut ok: BTreeMap<String, IpAddr> = BTreeMap::new();
    let mut failed: Vec<String> = vec![];
    let mut owner_of: BTreeMap<IpAddr, String> = BTreeMap::new();
    let (mut ok_after_kill, mut started_after_kill, mut agent_failures) = (0, 0, 0);
    let mut fail_msgs: BTreeMap<String, usize> = BTreeMap::new();
    let agent_msg = format!("the berth agent at {}", socket.display());
    for (i, o) in outcomes.iter().enumerate() {
        let after = o.started > killed_at;
        started_after_kill += after as usize;
        if o.out.success() {
            let result = o
                .out
                .json
                .clone()
                .unwrap_or_else(|| panic!("ADD {} printed no result", cid(i)));
            let addrs = result_addrs(&result);
            assert_eq!(addrs.len(), 1, "ADD {} returned {addrs:?}", cid(i));
            let a = addrs[0];
            assert!(
                v4_in(a, "198.18.1.0", "198.18.15.254"),
                "ADD {} got {a} outside the range",
                cid(i)
            );
            if let Some(prev) = owner_of.insert(a, cid(i)) {
                panic!("address {a} returned to both {prev} and {}", cid(i));
            }
            ok.insert(cid(i), a);
            ok_after_kill += after as usize;
        } else {
            let code = cni_error_code(&o.out);
            assert_eq!(
                code,
                11,
                "ADD {} failed with code {code}, not 11 (try again): {}\nstderr: {}",
                cid(i),
                o.out.stdout,
                o.out.stderr
            );
            let msg = o.out.json.as_ref().unwrap()["msg"]
                .as_str()
                .unwrap()
                .to_string();
            let from_agent = msg.contains(&agent_msg);
            assert!(
                !(after && from_agent),
                "ADD {} started after the agent was reaped but failed talking to it: {msg}",
                cid(i)
            );
            agent_failures += from_agent as usize;
            let key = msg.replace(&socket.display().to_string(), "SOCKET");
            *fail_msgs.entry(key).or_default() += 1;
            failed.push(cid(i));
            if std::env::var("E2E_DEBUG").is_ok() {
                eprintln!(
                    "FAIL {} start {:?} before kill, took {:?}",
                    cid(i),
                    killed_at.saturating_duration_since(o.started),
                    o.out.elapsed
                );
            }
        }
    }
    let slowest_direct = outcomes
        .iter()
        .filter(|o| o.started > killed_at)
        .map(|o| o.out.elapsed)
        .max()
        .unwrap_or_default();
    eprintln!("[timing] [{kind}] slowest direct-path ADD after the kill: {slowest_direct:.2?}");
    eprintln!(
        "[info] [{kind}] {} ADDs succeeded ({ok_after_kill} of {started_after_kill} started after the kill, via the direct path); {} failed with code 11: {fail_msgs:?}",
        ok.len(),
        failed.len()
    );
    assert_eq!(ok.len() + failed.len(), BURST);
    assert!(ok.len() >= BURST / 3, "only {} ADDs succeeded", ok.len());
    assert!(
        agent_failures > 0,
        "no ADD was in flight when the agent died: the crash was not exercised"
    );
    assert!(
        started_after_kill > 0,
        "the burst ended before the kill: nothing exercised the direct path"
    );
    assert!(
        ok_after_kill > 0,
        "none of the {started_after_kill} ADDs started after the kill succeeded: the direct fallback does not work"
    );

    // ---- restart, DEL the failed ones, GC ----------------------------------------------------
    let t = Instant::now();
    agent.lock().unwrap().restart();
    timing(&format!("[{kind}] agent restart until serving"), t);
    let leaked_before_del = pool_bindings(&ledger, &socket)
        .iter()
        .filter(|b| {
            failed
                .iter()
                .any(|c| b["holder"]["attachment"]["containerID"] == c.as_str())
        })
        .count();
    let dels = par_map(failed.len(), THREADS, |i| {
        ipam(&cni, CniCommand::Del, Some(&add_target(&failed[i])), &conf)
    });
    for (c, out) in failed.iter().zip(&dels) {
        assert!(
            out.success(),
            "DEL of failed ADD {c} failed: {} {}",
            out.stdout,
            out.stderr
        );
    }
    // DEL alone (before any GC) must have freed whatever the failed ADDs left behind.
    let after_del: BTreeSet<String> =
        bindings_by_container(&pool_bindings(&ledger, &socket), NETWORK)
            .into_keys()
            .collect();
    assert_eq!(
        after_del,
        ok.keys().cloned().collect::<BTreeSet<_>>(),
        "after DEL of the failed ADDs the bound containers are not exactly the successful ones"
    );
    // An attachment the runtime forgot about (no DEL ever comes): only GC can free it.
    let orphan = ipam(&cni, CniCommand::Add, Some(&add_target("orphan")), &conf)
        .ok()
        .expect("ADD for the orphan");
    let orphan_ip = result_addrs(&orphan)[0];
    assert!(
        !owner_of.contains_key(&orphan_ip),
        "orphan got an address already held: {orphan_ip}"
    );
    // GC keeps bindings made in the last second; let the orphan age.
    std::thread::sleep(Duration::from_millis(2100));
    let valid: Vec<Value> = ok
        .keys()
        .map(|c| json!({"containerID": c, "ifname": "eth0"}))
        .collect();
    let mut gc_conf = conf.clone();
    gc_conf["cni.dev/valid-attachments"] = json!(valid);
    let t = Instant::now();
    let gc = ipam(&cni, CniCommand::Gc, None, &gc_conf);
    timing(&format!("[{kind}] GC"), t);
    assert!(gc.success(), "GC failed: {} {}", gc.stdout, gc.stderr);

    // ---- the ledger is exactly the successful ADDs --------------------------------------------
    assert_audit_clean(&ledger, Some(&socket));
    let after = pool_bindings(&ledger, &socket);
    let by_ctr = bindings_by_container(&after, NETWORK);
    assert!(
        !by_ctr.contains_key("orphan"),
        "GC did not free the orphan's {orphan_ip}"
    );
    let got: BTreeMap<String, IpAddr> = by_ctr
        .iter()
        .map(|(c, held)| {
            assert_eq!(
                held.len(),
                1,
                "container {c} holds {} addresses: {held:?}",
                held.len()
            );
            (c.clone(), held[0].0)
        })
        .collect();
    let leaked: Vec<_> = got.keys().filter(|c| !ok.contains_key(*c)).collect();
    assert!(
        leaked.is_empty(),
        "bindings leaked by failed ADDs: {leaked:?}"
    );
    let lost: Vec<_> = ok.keys().filter(|c| !got.contains_key(*c)).collect();
    assert!(
        lost.is_empty(),
        "successful ADDs lost their binding: {lost:?}"
    );
    for (c, a) in &ok {
        assert_eq!(
            got[c], *a,
            "{c} was given {a} but the ledger now says {}",
            got[c]
        );
    }
    let addrs: BTreeSet<IpAddr> = got.values().copied().collect();
    assert_eq!(addrs.len(), ok.len(), "an address is bound twice");
    for b in &after {
        assert_eq!(b["node"], NODE, "binding recorded for the wrong node: {b}");
    }
    eprintln!(
        "[info] [{kind}] {leaked_before_del} failed ADD(s) had left a binding behind before their DEL; ledger now holds exactly the {} successful ones",
        ok.len()
    );

    // ---- a repeated ADD returns the same address -----------------------------------------------
    let ok_list: Vec<(&String, &IpAddr)> = ok.iter().collect();
    let t = Instant::now();
    let again = par_map(ok_list.len(), THREADS, |i| {
        ipam(
            &cni,
            CniCommand::Add,
            Some(&add_target(ok_list[i].0)),
            &conf,
        )
    });
    timing(&format!("[{kind}] {} repeated ADDs", ok_list.len()), t);
    for ((c, a), out) in ok_list.iter().zip(&again) {
        let r = out
            .ok()
            .unwrap_or_else(|e| panic!("repeated ADD of {c} failed: {e:#}"));
        assert_eq!(
            result_addrs(&r),
            vec![**a],
            "repeated ADD of {c} returned a different address"
        );
    }
    assert_eq!(
        pool_bindings(&ledger, &socket),
        after,
        "repeated ADDs changed the ledger"
    );

    // ---- kill -9 and restart with nothing in flight changes nothing ----------------------------
    let blocks_before = sorted_blocks(&ledger, &socket);
    assert!(!blocks_before.is_empty());
    agent.lock().unwrap().kill9();
    // With the agent dead the ledger is read directly (embedded: its lock died with it).
    assert_eq!(
        pool_bindings(&ledger, &socket),
        after,
        "bindings changed by kill -9 (read with no agent)"
    );
    let t = Instant::now();
    agent.lock().unwrap().restart();
    timing(&format!("[{kind}] idle kill -9 + restart until serving"), t);
    assert_eq!(
        pool_bindings(&ledger, &socket),
        after,
        "bindings changed across kill -9 + restart"
    );
    assert_eq!(
        sorted_blocks(&ledger, &socket),
        blocks_before,
        "blocks changed across kill -9 + restart"
    );
    assert_audit_clean(&ledger, Some(&socket));
    // The restarted agent allocates around what it inherited.
    let fresh = ipam(&cni, CniCommand::Add, Some(&add_target("fresh")), &conf)
        .ok()
        .expect("ADD after the idle restart");
    let fresh_ip = result_addrs(&fresh)[0];
    assert!(
        !addrs.contains(&fresh_ip),
        "restarted agent handed out {fresh_ip}, already bound"
    );
    assert_audit_clean(&ledger, Some(&socket));
    let mut a = agent.into_inner().unwrap();
    assert!(
        a.daemon.is_running(),
        "agent died:\n{}",
        a.daemon.log_tail(30)
    );
    timing(&format!("[{kind}] crash test total"), t0);
}

#[test]
fn agent_killed_mid_burst_embedded_ledger() {
    require_root_and_tools();
    crash_mid_burst(Ledger::embedded());
}

#[test]
fn agent_killed_mid_burst_etcd_ledger() {
    require_root_and_tools();
    let t = Instant::now();
    let etcd = EtcdCluster::start(1).expect("starting etcd");
    timing("etcd start", t);
    crash_mid_burst(Ledger::Etcd(etcd.endpoints_csv()));
}
