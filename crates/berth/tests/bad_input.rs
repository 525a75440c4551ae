//! Bad input gets the spec's error, names what is wrong, and allocates nothing. Seed 001's kube-ipam
//! configuration is refused exactly as printed (its JSON is malformed) and, once corrected, works
//! against a real etcd with TLS as kube-ipam's `etcdConfig` describes it.

use berth_testbed::{require_root_and_tools, EtcdCluster};
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const SEED: &str = include_str!("../../cni/tests/fixtures/kube-ipam-seed-001.conf");
const SEED_FIXED: &str = include_str!("../../cni/tests/fixtures/kube-ipam-seed-001-corrected.conf");

/// One plugin run: exit status and stdout JSON (`null` when it printed nothing).
fn plugin(env: &[(&str, &str)], stdin: &[u8]) -> (bool, Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth-ipam"));
    cmd.env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.stdout.is_empty() {
        // DEL, GC and STATUS print nothing on success.
        return (out.status.success(), Value::Null);
    }
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?}, stderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), v)
}

fn add_env<'a>(cid: &'a str, args: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", "/var/run/netns/none"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
        ("CNI_ARGS", args),
    ]
}

fn good(data: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0", "name": "bad-input", "type": "bridge",
        "ipam": {
            "type": "berth-ipam", "subnet": "198.18.0.0/24",
            "fixedStart": "198.18.0.10", "fixedEnd": "198.18.0.19",
            "rangeStart": "198.18.0.32", "rangeEnd": "198.18.0.250", "gateway": "198.18.0.1",
            "ledger": "embedded", "dataDir": data, "agentSocket": "", "nodeName": "n1"
        }
    })
}

fn with(mut v: Value, path: &[&str], new: Value) -> Value {
    let mut cur = &mut v;
    for p in &path[..path.len() - 1] {
        cur = &mut cur[*p];
    }
    cur[path[path.len() - 1]] = new;
    v
}

/// `v` with the `ipam` fields `keys` removed.
fn without(mut v: Value, keys: &[&str]) -> Value {
    if let Some(ipam) = v["ipam"].as_object_mut() {
        for k in keys {
            ipam.remove(*k);
        }
    }
    v
}

fn bindings(ledger: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("bindings")
        .arg("--json")
        .args(ledger)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn bad_input_table_gives_spec_errors_and_allocates_nothing() {
    require_root_and_tools();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("ledger");
    let base = good(&data);
    let ledger = format!("embedded:{}", data.display());

    // One good allocation first, so "held by" and "nothing changed" can be checked.
    let (ok, r) = plugin(
        &add_env("holder", "IP=198.18.0.12"),
        base.to_string().as_bytes(),
    );
    assert!(ok, "{r}");

    let s = |v: &Value| v.to_string().into_bytes();
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Vec<(&str, &str)>, Vec<u8>, u64, &[&str])> = vec![
        (
            "seed 001 as printed",
            add_env("c1", ""),
            SEED.as_bytes().to_vec(),
            6,
            &["line 12"],
        ),
        (
            "not JSON",
            add_env("c1", ""),
            b"subnet=10.0.0.0/8".to_vec(),
            6,
            &["decode"],
        ),
        ("empty stdin", add_env("c1", ""), vec![], 6, &[]),
        (
            "unsupported cniVersion",
            add_env("c1", ""),
            s(&with(base.clone(), &["cniVersion"], json!("9.9.9"))),
            1,
            &["9.9.9"],
        ),
        (
            "subnet not a CIDR",
            add_env("c1", ""),
            s(&with(
                base.clone(),
                &["ipam", "subnet"],
                json!("198.18.0.0/33"),
            )),
            7,
            &["ipam.subnet", "198.18.0.0/33"],
        ),
        (
            "rangeStart not an IP",
            add_env("c1", ""),
            s(&with(
                base.clone(),
                &["ipam", "rangeStart"],
                json!("198.18.0.300"),
            )),
            7,
            &["rangeStart", "198.18.0.300"],
        ),
        (
            "gateway outside subnet",
            add_env("c1", ""),
            s(&with(
                base.clone(),
                &["ipam", "gateway"],
                json!("198.19.0.1"),
            )),
            7,
            &["gateway", "198.19.0.1"],
        ),
        (
            "block size not a prefix length",
            add_env("c1", ""),
            s(&with(base.clone(), &["ipam", "blockSize"], json!(33))),
            7,
            &["blockSize", "33"],
        ),
        (
            "another IPAM type",
            add_env("c1", ""),
            s(&with(base.clone(), &["ipam", "type"], json!("host-local"))),
            7,
            &["host-local"],
        ),
        (
            "no CNI_COMMAND",
            vec![("CNI_PATH", "/usr/lib/cni")],
            s(&base),
            4,
            &["CNI_COMMAND"],
        ),
        (
            "ADD without container ID",
            add_env("", ""),
            s(&base),
            4,
            &["CNI_CONTAINERID"],
        ),
        (
            "CNI_ARGS IP not an address",
            add_env("c1", "IP=198.18.0.300"),
            s(&base),
            4,
            &["198.18.0.300"],
        ),
        (
            "CNI_ARGS unknown key",
            add_env("c1", "COLOUR=blue"),
            s(&base),
            2,
            &["COLOUR"],
        ),
        (
            "fixed address outside the reserved range",
            add_env("c1", "IP=198.18.0.40"),
            s(&base),
            7,
            &["198.18.0.40", "fixedStart"],
        ),
        (
            "fixed address outside the pool",
            add_env("c1", "IP=198.19.9.9"),
            s(&base),
            7,
            &["198.19.9.9"],
        ),
        (
            "fixed address held by another container",
            add_env("c1", "IP=198.18.0.12"),
            s(&base),
            11,
            &["198.18.0.12", "holder"],
        ),
        (
            "runtimeConfig two IPv4 addresses",
            add_env("c1", ""),
            s(&with(
                base.clone(),
                &["runtimeConfig"],
                json!({"ips": ["198.18.0.13", "198.18.0.14"]}),
            )),
            7,
            &["198.18.0.14"],
        ),
        (
            "CHECK without prevResult",
            vec![
                ("CNI_COMMAND", "CHECK"),
                ("CNI_CONTAINERID", "holder"),
                ("CNI_NETNS", "/x"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", "/usr/lib/cni"),
            ],
            s(&base),
            7,
            &["prevResult"],
        ),
        (
            "GC on a 0.4.0 config",
            vec![("CNI_COMMAND", "GC"), ("CNI_PATH", "/usr/lib/cni")],
            s(&with(base.clone(), &["cniVersion"], json!("0.4.0"))),
            1,
            &["GC"],
        ),
        (
            "etcd that does not answer",
            add_env("c1", ""),
            s(&with(
                without(base.clone(), &["ledger", "dataDir"]),
                &["ipam", "etcdConfig"],
                json!({"etcdURL": "http://127.0.0.1:1"}),
            )),
            11,
            &["127.0.0.1:1"],
        ),
        (
            "https etcd without certificates",
            add_env("c1", ""),
            s(&with(
                without(base.clone(), &["ledger", "dataDir"]),
                &["ipam", "etcdConfig"],
                json!({"etcdURL": "https://127.0.0.1:1"}),
            )),
            7,
            &["etcdCertFile"],
        ),
        (
            "dataDir that cannot be created",
            add_env("c1", ""),
            s(&with(
                base.clone(),
                &["ipam", "dataDir"],
                json!("/proc/berth-cannot-exist"),
            )),
            5,
            &["/proc/berth-cannot-exist"],
        ),
    ];
    for (name, env, stdin, code, needles) in cases {
        let (ok, v) = plugin(&env, &stdin);
        assert!(!ok, "{name}: must fail, got {v}");
        assert_eq!(v["code"].as_u64(), Some(code), "{name}: {v}");
        let msg = v["msg"].as_str().unwrap_or_default();
        assert!(!msg.is_empty(), "{name}: an error says what is wrong: {v}");
        for n in needles {
            assert!(msg.contains(n), "{name}: message names {n:?}: {msg}");
        }
    }
    // Nothing was allocated by any of them: only the holder's address is in the ledger.
    let held = bindings(&["--ledger", &ledger]);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["address"], "198.18.0.12");
}

#[test]
fn seed_001_corrected_works_with_a_real_tls_etcd() {
    require_root_and_tools();
    let etcd = EtcdCluster::start_tls(1).unwrap();
    let tls = etcd.tls().unwrap();
    let resolv = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        resolv.path(),
        "nameserver 198.18.255.53\nsearch cluster.local\n",
    )
    .unwrap();
    // The corrected seed config as published, with only what points at the author's machines
    // replaced: etcd's URLs and certificate paths, and the resolv.conf path.
    let mut conf: Value = serde_json::from_str(SEED_FIXED).unwrap();
    assert_eq!(conf["ipam"]["type"], "kube-ipam", "drop-in: the type stays");
    let e = &mut conf["ipam"]["etcdConfig"];
    e["etcdURL"] = json!(etcd.endpoints_csv());
    e["etcdCertFile"] = json!(tls.client_pem());
    e["etcdKeyFile"] = json!(tls.client_key_pem());
    e["etcdTrustedCAFileFile"] = json!(tls.ca_pem());
    conf["ipam"]["resolvConf"] = json!(resolv.path());
    conf["ipam"]["agentSocket"] = json!("");
    let stdin = conf.to_string().into_bytes();

    let (ok, r) = plugin(&add_env("web-1", ""), &stdin);
    assert!(ok, "{r}");
    assert_eq!(r["cniVersion"], "0.3.1");
    let ip = r["ips"][0]["address"].as_str().unwrap();
    assert!(
        ip.starts_with("10.188.") && ip.ends_with("/16"),
        "dynamic address from rangeStart..rangeEnd: {r}"
    );
    let third: u8 = ip.split('.').nth(2).unwrap().parse().unwrap();
    assert!(third >= 1, "never from the fixed range 10.188.0.x: {ip}");
    assert_eq!(r["ips"][0]["version"], "4");
    assert_eq!(r["ips"][0]["gateway"], "10.188.0.1");
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(r["dns"]["nameservers"][0], "198.18.255.53");

    // kube-ipam's fixed address from the seed (10.188.0.216), asked for as the runtime passes it.
    let (ok, f) = plugin(&add_env("mysql-0", "IP=10.188.0.216"), &stdin);
    assert!(ok, "{f}");
    assert_eq!(f["ips"][0]["address"], "10.188.0.216/16");
    let (ok, held) = plugin(&add_env("mysql-1", "IP=10.188.0.216"), &stdin);
    assert!(!ok);
    assert_eq!(held["code"], 11, "{held}");

    let ledger = [
        "--ledger".to_string(),
        format!("etcd:{}", etcd.endpoints_csv()),
        "--etcd-cert".into(),
        tls.client_pem().display().to_string(),
        "--etcd-key".into(),
        tls.client_key_pem().display().to_string(),
        "--etcd-ca".into(),
        tls.ca_pem().display().to_string(),
    ];
    let args: Vec<&str> = ledger.iter().map(String::as_str).collect();
    assert_eq!(bindings(&args).len(), 2);
    let mut del = add_env("web-1", "");
    del[0].1 = "DEL";
    let (ok, _) = plugin(&del, &stdin);
    assert!(ok);
    assert_eq!(bindings(&args).len(), 1);
}
