//! `ipam.ledger`: which ledger a configuration means, and so whether `berth-ipam` may allocate by
//! itself when no agent answers. With the real `berth-ipam` and `berth agent` binaries.
//!
//! - The cluster's ledger (`"ledger": "kubernetes"`), or no ledger at all (the agent's): no agent
//!   answering — socket missing, or a stale socket that refuses — is "try again" (code 11; STATUS
//!   50) naming the socket, and nothing is allocated anywhere. Before this key existed such an ADD
//!   allocated from a local embedded file: duplicates during every agent restart.
//! - `"ledger": "embedded"`: without an agent, the plugin allocates on `dataDir` itself.
//! - An agent refuses (code 7) a configuration that names another kind of ledger than its own.

mod common;

use berth_testbed::{require_root_and_tools, CniCommand};
use common::*;
use serde_json::{json, Value};
use std::path::Path;

fn files_in(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

fn set(mut conf: Value, key: &str, v: Value) -> Value {
    conf["ipam"][key] = v;
    conf
}

/// Every command of `conf` for a fresh container, with no agent behind the socket: each must be
/// refused with `code` (STATUS: 50) and a message naming the socket and `needles`.
fn refused_without_agent(conf: &Value, socket: &Path, needles: &[&str]) {
    let cni = runtime();
    let t = target("c-no-agent", "eth0", "p-no-agent");
    for (cmd, code) in [
        (CniCommand::Add, 11),
        (CniCommand::Del, 11),
        (CniCommand::Check, 11),
        (CniCommand::Status, 50),
    ] {
        let mut c = conf.clone();
        if cmd == CniCommand::Check {
            c["prevResult"] = json!({"cniVersion": "1.1.0", "ips": [{"address": "198.18.1.5/20"}]});
        }
        let out = ipam(&cni, cmd, (cmd != CniCommand::Status).then_some(&t), &c);
        assert_eq!(
            cni_error_code(&out),
            code,
            "{}: {}",
            cmd.as_str(),
            out.stdout
        );
        let msg = out.json.as_ref().unwrap()["msg"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            msg.contains(&socket.display().to_string()),
            "{}: the message names the socket: {msg}",
            cmd.as_str()
        );
        for n in needles {
            assert!(
                msg.contains(n),
                "{}: message lacks {n:?}: {msg}",
                cmd.as_str()
            );
        }
    }
}

#[test]
fn no_agent_is_try_again_unless_the_config_names_a_direct_ledger() {
    require_root_and_tools();
    let dir = tempfile::Builder::new()
        .prefix("berth-e2e-ledgerkey-")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("agent.sock");
    let data = dir.path().join("data");
    let base = v4_pool("lk", &socket, "lk-node");
    // No ledger named, and a dataDir: only the agent may serve it; the directory stays empty.
    let agents = set(base.clone(), "dataDir", json!(data));
    let kube = set(base.clone(), "ledger", json!("kubernetes"));

    // 1. No socket file at all (the agent removed it when it stopped).
    refused_without_agent(&agents, &socket, &["\"ledger\": \"embedded\""]);
    refused_without_agent(&kube, &socket, &["kubernetes", "not running"]);

    // 2. A stale socket (the agent was killed): connecting is refused.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists(), "the stale socket file stays");
    refused_without_agent(&agents, &socket, &["\"ledger\": \"embedded\""]);
    refused_without_agent(&kube, &socket, &["kubernetes", "not running"]);
    assert!(
        files_in(&data).is_empty(),
        "a configuration without a ledger of its own allocated locally: {:?}",
        files_in(&data)
    );

    // 3. `"ledger": "embedded"` opts into the direct path: same socket, no agent, an address.
    let embedded = set(agents.clone(), "ledger", json!("embedded"));
    let cni = runtime();
    let t = target("c-direct", "eth0", "p-direct");
    let out = ipam(&cni, CniCommand::Add, Some(&t), &embedded);
    let r = out
        .ok()
        .unwrap_or_else(|e| panic!("direct ADD on the embedded ledger: {e:#}"));
    let ip = result_addrs(&r)[0];
    assert!(v4_in(ip, "198.18.1.0", "198.18.15.254"), "{ip}");
    let (code, out) = berth_bindings(&data);
    assert_eq!(code, Some(0), "{out}");
    let held: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["address"], ip.to_string());

    // 4. The direct path is `berth-ipam-direct` beside the plugin. Through a symlink elsewhere
    //    (as `kube-ipam`), the plugin still finds it beside its real file; a `berth-ipam` copied
    //    alone says what is missing (code 11) and allocates nothing.
    let links = dir.path().join("links");
    std::fs::create_dir(&links).unwrap();
    std::os::unix::fs::symlink(BERTH_IPAM, links.join("kube-ipam")).unwrap();
    let (code, out) = run_plugin(&links.join("kube-ipam"), "c-link", &embedded);
    assert_eq!(code, Some(0), "through a symlink: {out}");
    assert!(out.contains("\"ips\""), "{out}");
    let alone = dir.path().join("alone");
    std::fs::create_dir(&alone).unwrap();
    std::fs::copy(BERTH_IPAM, alone.join("berth-ipam")).unwrap();
    let (code, out) = run_plugin(&alone.join("berth-ipam"), "c-alone", &embedded);
    assert_eq!(code, Some(1), "{out}");
    let err: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(err["code"], 11, "{out}");
    let msg = err["msg"].as_str().unwrap();
    for needle in [
        "berth-ipam-direct",
        &alone.display().to_string(),
        "start the berth agent",
    ] {
        assert!(msg.contains(needle), "message lacks {needle:?}: {msg}");
    }
    let (code, out) = berth_bindings(&data);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&out).unwrap().len(),
        2,
        "the symlinked ADD holds one more address, the lone plugin none: {out}"
    );
}

/// Run the plugin at `exe` for an ADD of `container` as a runtime would: exit status, stdout.
fn run_plugin(exe: &Path, container: &str, conf: &Value) -> (Option<i32>, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(exe)
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", "/var/run/netns/berth-e2e-none")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", exe.parent().unwrap())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

/// `berth bindings --json` on the embedded ledger in `data`: exit status, stdout.
fn berth_bindings(data: &Path) -> (Option<i32>, String) {
    let o = std::process::Command::new(BERTH)
        .args(["bindings", "--json", "--ledger"])
        .arg(format!("embedded:{}", data.display()))
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

#[test]
fn an_agent_refuses_a_config_that_names_another_ledger() {
    require_root_and_tools();
    let dir = tempfile::Builder::new()
        .prefix("berth-e2e-ledgerkey-agent-")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("agent.sock");
    let ledger = Ledger::embedded();
    let agent = Agent::start(&socket, &ledger, "lk-agent");
    let cni = runtime();
    let base = v4_pool("lkm", &socket, "lk-agent");
    let cases = [
        (
            "kubernetes",
            set(base.clone(), "ledger", json!("kubernetes")),
            vec!["kubernetes", "embedded", "--ledger"],
        ),
        (
            "etcdConfig",
            set(
                base.clone(),
                "etcdConfig",
                json!({"etcdURL": "http://127.0.0.1:1"}),
            ),
            vec!["etcd", "embedded", "etcdConfig"],
        ),
        (
            "etcd",
            set(
                set(base.clone(), "ledger", json!("etcd")),
                "etcdConfig",
                json!({"etcdURL": "http://127.0.0.1:1"}),
            ),
            vec!["etcd", "embedded"],
        ),
    ];
    for (i, (what, conf, needles)) in cases.iter().enumerate() {
        let t = target(&format!("c-mismatch-{i}"), "eth0", "p-mismatch");
        let out = ipam(&cni, CniCommand::Add, Some(&t), conf);
        assert_eq!(cni_error_code(&out), 7, "{what}: {}", out.stdout);
        let msg = out.json.as_ref().unwrap()["msg"]
            .as_str()
            .unwrap()
            .to_string();
        for n in needles {
            assert!(msg.contains(n), "{what}: message lacks {n:?}: {msg}");
        }
    }
    assert!(
        bindings(&ledger, Some(&socket)).is_empty(),
        "a refused request allocated"
    );
    // The agent's own kind, and no ledger at all (the agent's), are served.
    for (i, conf) in [with_store(base.clone(), &ledger), base.clone()]
        .iter()
        .enumerate()
    {
        let t = target(&format!("c-match-{i}"), "eth0", "p-match");
        let out = ipam(&cni, CniCommand::Add, Some(&t), conf);
        out.ok().unwrap_or_else(|e| panic!("case {i}: {e:#}"));
    }
    assert_eq!(bindings(&ledger, Some(&socket)).len(), 2);
    assert_audit_clean(&ledger, Some(&socket));
    drop(agent);
}
