//! One bad record on the Kubernetes ledger stops nothing and frees nothing, on a real
//! kube-apiserver (v1.20.2 built from Debian's source) with real `berth agent` and `berth-ipam`.
//!
//! Three bad records: a `dynamic` binding without a `block` and a block whose `cidr` is not one
//! (both stored while the CRD schema was relaxed, as objects written before the schema was
//! tightened would be; the tightened schema then refuses such objects), and a binding stored under
//! another address than its own (which no schema can express). Then:
//! - an agent starts (its reload lists the ledger) and serves; a restarted agent too;
//! - ADDs until the pool is dry never hand out the bad binding's address, the misnamed binding's
//!   name, or any address of the bad block;
//! - a controller round runs, releases none of them and posts one Warning Event on each;
//! - `berth audit` exits 1 naming each; `berth bindings` still lists the good ones.

mod common;

use berth_ledger::{Kind, Ledger};
use berth_testbed::{
    require_kube_binaries, require_root_and_tools, CniCommand, CniTarget, Daemon, KubeControlPlane,
};
use common::*;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const NODE: &str = "kr-n1";
const POOL: &str = "kr";

fn start_agent(cp: &KubeControlPlane, socket: &Path) -> Daemon {
    let mut cmd = Command::new(BERTH);
    cmd.arg("agent")
        .arg("--socket")
        .arg(socket)
        .args([
            "--node",
            NODE,
            "--ledger",
            "kubernetes",
            "--watch-pods",
            "false",
        ])
        .arg("--kubeconfig")
        .arg(cp.kubeconfig())
        .env("BERTH_LOG", "info");
    let mut d = Daemon::spawn("agent-kr", cmd, None).expect("spawning berth agent");
    let start = Instant::now();
    while !snapshot_ok(socket) {
        if let Some(st) = d.try_status() {
            panic!("agent exited on start ({st}):\n{}", d.log_tail(30));
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "agent does not serve after 30 s:\n{}",
            d.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d
}

fn berth_kube(cp: &KubeControlPlane, sub: &str, json: bool) -> (i32, String, String) {
    let mut cmd = Command::new(BERTH);
    cmd.args([sub, "--ledger", "kubernetes", "--kubeconfig"])
        .arg(cp.kubeconfig());
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

fn crd_path(plural: &str) -> String {
    format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{plural}.berth.dev")
}

/// Replace the spec schema of a CRD by "anything goes", as a schema older than today's might be.
fn relax(cp: &KubeControlPlane, plural: &str) {
    let mut crd = cp
        .request("GET", &crd_path(plural), None)
        .unwrap()
        .ok()
        .unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] =
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let r = cp.request("PUT", &crd_path(plural), Some(&crd)).unwrap();
    assert_eq!(r.status, 200, "relaxing {plural}: {}", r.body);
}

/// POST `spec` as a `kind` object under the name Berth gives `key`; the status code. Retries a
/// refusal for a few seconds when `until_stored` (a CRD schema change takes a moment to apply).
fn post(cp: &KubeControlPlane, plural: &str, kind: &str, spec: &Value, until_stored: bool) -> u16 {
    let key = spec["key"].as_str().unwrap();
    let body = json!({"apiVersion": "berth.dev/v1alpha1", "kind": kind,
        "metadata": {"name": berth_k8s::names::object_name(key)}, "spec": spec});
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = cp
            .request(
                "POST",
                &format!("/apis/berth.dev/v1alpha1/{plural}"),
                Some(&body),
            )
            .unwrap();
        if r.status == 201 || !until_stored || Instant::now() > deadline {
            return r.status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn bad_binding() -> Value {
    json!({
        "key": "198.18.0.5", "address": "198.18.0.5", "prefixLen": 27, "pool": POOL, "node": NODE,
        "holder": {"attachment": {"network": "krnet", "containerID": "lost", "ifname": "eth0"}},
        "kind": "dynamic", "since": "2024-06-15T07:00:00.000000Z"
    })
}

fn bad_block() -> Value {
    json!({"key": format!("{POOL}/198.18.0.16/28"), "pool": POOL, "cidr": "not-a-cidr", "node": "elsewhere"})
}

fn conf(socket: &Path) -> Value {
    json!({
        "cniVersion": "1.1.0", "name": "krnet", "type": "bridge",
        "ipam": {
            "type": "berth-ipam", "name": POOL, "subnet": "198.18.0.0/27", "blockSize": 28,
            "ledger": "kubernetes", "agentSocket": socket, "nodeName": NODE
        }
    })
}

fn add(cni: &berth_testbed::Cni, socket: &Path, cid: &str) -> berth_testbed::CniOutput {
    // No Kubernetes arguments: these bindings are no pod's, so the controller leaves them alone.
    let t = CniTarget {
        container_id: cid.to_string(),
        netns: PathBuf::from(format!("/var/run/netns/berth-kr-{cid}")),
        ifname: "eth0".into(),
        args: Some("IgnoreUnknown=1".into()),
    };
    ipam(cni, CniCommand::Add, Some(&t), &conf(socket))
}

#[test]
fn bad_records_stop_nothing_and_free_nothing_on_the_kubernetes_ledger() {
    require_root_and_tools();
    require_kube_binaries();
    let t0 = Instant::now();
    let cp = KubeControlPlane::builder()
        .controller_manager(false)
        .start()
        .unwrap_or_else(|e| panic!("control plane: {e:#}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (client, ledger) = rt.block_on(async {
        let (client, _) = berth_k8s::client(Some(cp.kubeconfig())).await.unwrap();
        berth_k8s::crd::install(&client, Duration::from_secs(60))
            .await
            .unwrap();
        let ledger = berth_k8s::KubeLedger::connect(Some(cp.kubeconfig()))
            .await
            .unwrap();
        (client, ledger)
    });
    let r = cp
        .request(
            "POST",
            "/api/v1/nodes",
            Some(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.body);

    // The tightened schema refuses both bad objects.
    assert_eq!(
        post(
            &cp,
            "addressbindings",
            "AddressBinding",
            &bad_binding(),
            false
        ),
        422
    );
    assert_eq!(post(&cp, "blocks", "Block", &bad_block(), false), 422);
    // Stored under a relaxed schema, as before the schema was tightened; then tightened again.
    relax(&cp, "addressbindings");
    relax(&cp, "blocks");
    assert_eq!(
        post(
            &cp,
            "addressbindings",
            "AddressBinding",
            &bad_binding(),
            true
        ),
        201
    );
    assert_eq!(post(&cp, "blocks", "Block", &bad_block(), true), 201);
    rt.block_on(berth_k8s::crd::install(&client, Duration::from_secs(60)))
        .unwrap();
    let mut again = bad_binding();
    again["key"] = json!("198.18.0.9");
    again["address"] = json!("198.18.0.9");
    let deadline = Instant::now() + Duration::from_secs(15);
    while post(&cp, "addressbindings", "AddressBinding", &again, false) != 422 {
        assert!(
            Instant::now() < deadline,
            "the restored schema does not refuse a dynamic binding without a block"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // What no schema can express: a binding stored under 198.18.0.6 whose content is 198.18.0.7.
    let mut misnamed = bad_binding();
    misnamed["address"] = json!("198.18.0.7");
    misnamed["block"] = json!("198.18.0.0/28");
    misnamed.as_object_mut().unwrap().remove("key");
    rt.block_on(ledger.create(
        Kind::Binding,
        "198.18.0.6",
        serde_json::to_vec(&misnamed).unwrap(),
    ))
    .unwrap();
    timing("control plane and bad records", t0);

    // ---- the agent reloads and serves; ADDs never get a bad record's address ----------------
    let dir = tempfile::Builder::new()
        .prefix("berth-kr-")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("agent.sock");
    let mut agent = start_agent(&cp, &socket);
    assert!(
        !agent.log().contains("could not read the ledger at start"),
        "the agent's reload failed:\n{}",
        agent.log_tail(20)
    );
    let cni = runtime();
    let mut got: Vec<IpAddr> = vec![];
    let exhausted = loop {
        let out = add(&cni, &socket, &format!("c{}", got.len()));
        match out.ok() {
            Ok(r) => got.push(result_addrs(&r)[0]),
            Err(_) => break out,
        }
        assert!(
            got.len() <= 32,
            "more addresses than the pool holds: {got:?}"
        );
    };
    assert_eq!(
        cni_error_code(&exhausted),
        110,
        "the pool ran dry: {}",
        exhausted.stdout
    );
    for a in &got {
        assert!(
            a.to_string() != "198.18.0.5" && a.to_string() != "198.18.0.6",
            "a bad record's address was handed out: {got:?}"
        );
        assert!(
            !in_cidr(*a, "198.18.0.16/28"),
            "an address of the bad block was handed out: {got:?}"
        );
    }
    // 198.18.0.2–.15 less .5 and .6; the bad block is never claimed.
    assert_eq!(got.len(), 12, "{got:?}");

    // A restarted agent (kill -9: a fresh reload) serves again and still counts them taken.
    agent.kill();
    let agent = start_agent(&cp, &socket);
    let out = add(&cni, &socket, "after-restart");
    assert_eq!(cni_error_code(&out), 110, "{}", out.stdout);

    // ---- berth audit and the listings ---------------------------------------------------------
    let (code, out, err) = berth_kube(&cp, "audit", false);
    assert_eq!(
        code, 1,
        "berth audit must fail on bad records:\n{out}\n{err}"
    );
    for needle in [
        "binding \"198.18.0.5\" cannot be read",
        "missing field `block`",
        "binding \"198.18.0.6\" cannot be read",
        "198.18.0.7",
        "block \"kr/198.18.0.16/28\" cannot be read",
    ] {
        assert!(out.contains(needle), "audit lacks {needle:?}:\n{out}");
    }
    let (code, out, err) = berth_kube(&cp, "bindings", true);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(serde_json::from_str::<Vec<Value>>(&out).unwrap().len(), 12);
    assert!(err.contains("3 ledger record(s) cannot be read"), "{err}");
    // Through the agent's snapshot too.
    let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    use std::io::{BufRead, Write};
    s.write_all(b"{\"admin\":\"snapshot\"}\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).unwrap();
    let snap: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(snap["bad"].as_array().map(|v| v.len()), Some(3), "{snap}");

    // ---- a controller round: runs, releases none of them, one Event on each -----------------
    let memory = berth_controller::run::Memory::default();
    for _ in 0..2 {
        rt.block_on(berth_controller::run::round_remembering(
            &client,
            &ledger,
            Duration::ZERO,
            &memory,
        ))
        .unwrap_or_else(|e| panic!("a controller round failed: {e}"));
    }
    assert_eq!(
        berth_ledger::METRICS.bad_records(Kind::Binding),
        2,
        "berth_ledger_bad_records for bindings"
    );
    assert_eq!(berth_ledger::METRICS.bad_records(Kind::Block), 1);
    for (kind, name) in [
        (Kind::Binding, "198.18.0.5"),
        (Kind::Binding, "198.18.0.6"),
        (Kind::Block, "kr/198.18.0.16/28"),
    ] {
        assert!(
            rt.block_on(ledger.get(kind, name)).unwrap().is_some(),
            "the controller deleted the bad {kind} {name}"
        );
    }
    let events = cp
        .request(
            "GET",
            "/api/v1/namespaces/default/events?fieldSelector=reason%3DBerthBadRecord",
            None,
        )
        .unwrap()
        .ok()
        .unwrap();
    let mut on: Vec<String> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "Warning", "{e}");
            format!(
                "{}/{}",
                e["involvedObject"]["kind"].as_str().unwrap(),
                e["involvedObject"]["name"].as_str().unwrap()
            )
        })
        .collect();
    on.sort();
    let mut want = vec![
        format!(
            "AddressBinding/{}",
            berth_k8s::names::object_name("198.18.0.5")
        ),
        format!(
            "AddressBinding/{}",
            berth_k8s::names::object_name("198.18.0.6")
        ),
        format!(
            "Block/{}",
            berth_k8s::names::object_name("kr/198.18.0.16/28")
        ),
    ];
    want.sort();
    assert_eq!(
        on, want,
        "one Warning Event per bad object, not one per round"
    );
    drop(agent);
    timing("kube bad records test", t0);
}
