//! etcd that does not answer, through the real `berth-ipam` (and `berth agent`) on Debian's etcd.
//!
//! A SIGSTOPped etcd still accepts TCP connections (the kernel completes the handshake), so a
//! client without deadlines waits forever. Every ledger call on the CNI path has one: the plugin
//! answers "try again" (code 11; STATUS 50) within the bound the README states, directly and
//! through an agent, and works again once etcd continues.

mod common;

use berth_testbed::{require_root_and_tools, CniCommand, Etcd};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// What the README promises for a direct-path call on a silent etcd (8 s), plus process start.
const DIRECT_BOUND: Duration = Duration::from_secs(9);
/// One etcd request's deadline (5 s) and the agent's answer, plus process start.
const AGENT_BOUND: Duration = Duration::from_secs(9);

/// SIGSTOPs a process and SIGCONTs it again when dropped (before the etcd it belongs to is
/// stopped and removed), so a failing assertion never leaves a stopped etcd behind.
struct Frozen(i32);

impl Frozen {
    fn new(pid: u32) -> Frozen {
        let pid = pid as i32;
        // SAFETY: plain kill(2) on a PID this test started (recorded by the testbed).
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP etcd");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

fn conf(url: &str, socket: &str) -> Value {
    let mut c = v4_pool("frozen", std::path::Path::new(socket), "fz-node");
    c["ipam"]["ledger"] = json!("etcd");
    c["ipam"]["etcdConfig"] = json!({ "etcdURL": url });
    c
}

/// Run `cmd` and check it fails with `code` within `bound`, naming what to do.
fn refused_in_time(
    cni: &berth_testbed::Cni,
    cmd: CniCommand,
    conf: &Value,
    code: u64,
    bound: Duration,
) {
    let t = target("fz-ctr", "eth0", "fz-pod");
    let started = Instant::now();
    let out = ipam(cni, cmd, (cmd != CniCommand::Status).then_some(&t), conf);
    let took = started.elapsed();
    assert_eq!(
        cni_error_code(&out),
        code,
        "{}: {}",
        cmd.as_str(),
        out.stdout
    );
    assert!(
        took < bound,
        "{} on a frozen etcd took {took:?}, over {bound:?}",
        cmd.as_str()
    );
    let msg = out.json.as_ref().unwrap()["msg"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("etcd") && (msg.contains("retry") || msg.contains("running")),
        "{}: {msg}",
        cmd.as_str()
    );
    eprintln!(
        "[timing] {} on a frozen etcd: code {code} after {took:?}: {msg}",
        cmd.as_str()
    );
}

#[test]
fn a_frozen_etcd_is_try_again_within_the_bound() {
    require_root_and_tools();
    let etcd = Etcd::start().unwrap();
    let cni = runtime();
    // The direct path: no agent at all.
    let direct = conf(&etcd.url(), "");
    let t = target("fz-warm", "eth0", "fz-warm");
    ipam(&cni, CniCommand::Add, Some(&t), &direct)
        .ok()
        .unwrap_or_else(|e| panic!("ADD before the freeze: {e:#}"));

    // Through an agent on the same etcd.
    let dir = tempfile::Builder::new()
        .prefix("berth-e2e-frozen-")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("agent.sock");
    let agent = Agent::start(&socket, &Ledger::Etcd(etcd.url()), "fz-node");
    let via_agent = conf(&etcd.url(), socket.to_str().unwrap());
    let t2 = target("fz-warm2", "eth0", "fz-warm2");
    ipam(&cni, CniCommand::Add, Some(&t2), &via_agent)
        .ok()
        .unwrap_or_else(|e| panic!("ADD through the agent before the freeze: {e:#}"));

    {
        let _frozen = Frozen::new(etcd.member_pid(0).expect("etcd runs"));
        for (cmd, code) in [
            (CniCommand::Add, 11),
            (CniCommand::Del, 11),
            (CniCommand::Status, 50),
        ] {
            refused_in_time(&cni, cmd, &direct, code, DIRECT_BOUND);
        }
        refused_in_time(&cni, CniCommand::Add, &via_agent, 11, AGENT_BOUND);
    }
    // etcd continues: both paths work again, and nothing was allocated while it was frozen
    // (the refused ADD's DEL cleans up whatever an unclear write may have left).
    for c in [&direct, &via_agent] {
        let t = target("fz-ctr", "eth0", "fz-pod");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = ipam(&cni, CniCommand::Del, Some(&t), c);
            if out.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "DEL after the freeze: {}",
                out.stdout
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let t3 = target("fz-after", "eth0", "fz-after");
    ipam(&cni, CniCommand::Add, Some(&t3), &direct)
        .ok()
        .unwrap_or_else(|e| panic!("ADD after the freeze: {e:#}"));
    let held: Vec<String> = bindings(&Ledger::Etcd(etcd.url()), None)
        .iter()
        .map(|b| {
            b["holder"]["attachment"]["containerID"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut held = held;
    held.sort();
    assert_eq!(held, ["fz-after", "fz-warm", "fz-warm2"]);
    drop(agent);
}

/// TLS certificates made by `openssl`, on an etcd serving with them: every refusal names the
/// file and the check and is a configuration error (code 7), not "transport error"; etcdctl's
/// acceptance of the v1 client certificate is checked first, so the premise is real.
#[test]
fn tls_failures_name_the_file_and_the_check() {
    require_root_and_tools();
    let dir = tempfile::Builder::new()
        .prefix("berth-e2e-tls-")
        .tempdir()
        .unwrap();
    // etcd's PKI: its CA, its server certificate, and a v1 client certificate.
    let pki = berth_testbed::TlsFiles::generate_openssl(&dir.path().join("pki"), false).unwrap();
    let (v3_cert, v3_key) = pki.openssl_client("client-v3", true).unwrap();
    // Another CA's, for the refusals.
    let other = berth_testbed::TlsFiles::generate_openssl(&dir.path().join("other"), true).unwrap();
    let etcd = berth_testbed::EtcdCluster::builder()
        .tls_files(pki.clone())
        .start()
        .unwrap();
    assert_eq!(
        etcd.etcdctl_run(&["put", "/probe", "v1 client"])
            .unwrap()
            .trim(),
        "OK",
        "etcdctl accepts the v1 client certificate"
    );
    let cni = runtime();
    let conf = |cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path| {
        let mut c = v4_pool("tls", std::path::Path::new(""), "tls-node");
        c["ipam"]["ledger"] = json!("etcd");
        c["ipam"]["etcdConfig"] = json!({"etcdURL": etcd.endpoints_csv(),
            "etcdCertFile": cert, "etcdKeyFile": key, "etcdTrustedCAFileFile": ca});
        c
    };
    let d = |p: &std::path::Path| p.display().to_string();
    let missing = dir.path().join("missing.pem");
    let cases: Vec<(&str, Value, Vec<String>)> = vec![
        (
            "v1 client certificate",
            conf(&pki.client_cert, &pki.client_key, &pki.ca),
            vec![
                format!(
                    "client certificate {} (etcdCertFile) is X.509 v1",
                    d(&pki.client_cert)
                ),
                "re-issue it as v3".into(),
                "extendedKeyUsage=clientAuth".into(),
            ],
        ),
        (
            "client certificate of another CA",
            conf(&other.client_cert, &other.client_key, &pki.ca),
            vec![
                format!(
                    "refused the client certificate etcdCertFile {}",
                    d(&other.client_cert)
                ),
                "TLS alert".into(),
                "--trusted-ca-file".into(),
            ],
        ),
        (
            "another CA trusted",
            conf(&v3_cert, &v3_key, &other.ca),
            vec![
                "server certificate".into(),
                format!(
                    "not signed by the CA in etcdTrustedCAFileFile {}",
                    d(&other.ca)
                ),
            ],
        ),
        (
            "key of another certificate",
            conf(&v3_cert, &other.client_key, &pki.ca),
            vec![
                d(&v3_cert),
                d(&other.client_key),
                "does not belong to the certificate".into(),
            ],
        ),
        (
            "CA file without a certificate",
            conf(&v3_cert, &v3_key, &pki.client_key),
            vec![format!(
                "etcdTrustedCAFileFile {} holds no PEM certificate",
                d(&pki.client_key)
            )],
        ),
        (
            "missing certificate file",
            conf(&missing, &v3_key, &pki.ca),
            vec![
                format!("etcdCertFile {}", d(&missing)),
                "check the path".into(),
            ],
        ),
    ];
    for (i, (what, c, needles)) in cases.iter().enumerate() {
        let t = target(&format!("tls-{i}"), "eth0", "tls");
        let started = Instant::now();
        let out = ipam(&cni, CniCommand::Add, Some(&t), c);
        assert_eq!(cni_error_code(&out), 7, "{what}: {}", out.stdout);
        let msg = out.json.as_ref().unwrap()["msg"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(!msg.contains("transport error"), "{what}: {msg}");
        for n in needles {
            assert!(
                msg.contains(n.as_str()),
                "{what}: message lacks {n:?}: {msg}"
            );
        }
        assert!(
            started.elapsed() < DIRECT_BOUND,
            "{what}: {:?}",
            started.elapsed()
        );
        eprintln!("{what}: {msg}");
    }
    // The v3 client certificate of etcd's CA works.
    let t = target("tls-ok", "eth0", "tls-ok");
    ipam(
        &cni,
        CniCommand::Add,
        Some(&t),
        &conf(&v3_cert, &v3_key, &pki.ca),
    )
    .ok()
    .unwrap_or_else(|e| panic!("ADD with the v3 client certificate: {e:#}"));
}
