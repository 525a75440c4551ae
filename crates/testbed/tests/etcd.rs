//! Tests of the etcd harness against Debian's etcd 3.4.

use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_testbed::{require_root_and_tools, Etcd, EtcdCluster};

#[test]
fn single_member_put_get() {
    require_root_and_tools();
    let etcd = Etcd::start().unwrap();
    eprintln!("single etcd healthy in {:?}", etcd.startup_time());
    assert!(etcd.url().starts_with("http://127.0.0.1:"));
    etcd.etcdctl_run(&["put", "/berth/k", "v1"]).unwrap();
    let got = etcd
        .etcdctl_run(&["get", "/berth/k", "--print-value-only"])
        .unwrap();
    assert_eq!(got.trim(), "v1");
    assert_eq!(etcd.leader_index(), Some(0));
}

#[test]
fn single_member_restart_keeps_data_and_port() {
    require_root_and_tools();
    let etcd = Etcd::start().unwrap();
    let url = etcd.url();
    etcd.etcdctl_run(&["put", "persist", "yes"]).unwrap();

    let t = Instant::now();
    etcd.stop().unwrap();
    eprintln!("SIGTERM stop took {:?}", t.elapsed());
    assert!(!etcd.is_running(0));
    assert!(etcd.etcdctl_run(&["get", "persist"]).is_err());

    let t = Instant::now();
    etcd.restart().unwrap();
    eprintln!("restart after stop healthy in {:?}", t.elapsed());
    assert_eq!(etcd.url(), url);
    let got = etcd
        .etcdctl_run(&["get", "persist", "--print-value-only"])
        .unwrap();
    assert_eq!(got.trim(), "yes");

    etcd.kill().unwrap();
    let t = Instant::now();
    etcd.restart().unwrap();
    eprintln!("restart after SIGKILL healthy in {:?}", t.elapsed());
    let got = etcd
        .etcdctl_run(&["get", "persist", "--print-value-only"])
        .unwrap();
    assert_eq!(got.trim(), "yes");
}

#[test]
fn three_members_survive_leader_kill() {
    require_root_and_tools();
    let etcd = EtcdCluster::start(3).unwrap();
    eprintln!("3-member etcd healthy in {:?}", etcd.startup_time());
    assert_eq!(etcd.len(), 3);
    assert_eq!(etcd.endpoints_csv().split(',').count(), 3);
    etcd.etcdctl_run(&["put", "before", "1"]).unwrap();

    let leader = etcd.wait_leader(Duration::from_secs(10)).unwrap();
    etcd.kill_member(leader).unwrap();
    assert!(!etcd.is_running(leader));
    let t = Instant::now();
    // Retry the write until the remaining two elect a new leader.
    let mut last = None;
    while t.elapsed() < Duration::from_secs(30) {
        match etcd.etcdctl_run(&["--command-timeout=2s", "put", "after", "2"]) {
            Ok(_) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(last.is_none(), "write after leader kill failed: {last:?}");
    eprintln!("first write after leader kill took {:?}", t.elapsed());
    let new_leader = etcd.wait_leader(Duration::from_secs(10)).unwrap();
    assert_ne!(new_leader, leader);

    // The killed member comes back on its ports and catches up.
    let t = Instant::now();
    etcd.restart_member(leader).unwrap();
    eprintln!("killed member back and healthy in {:?}", t.elapsed());
    let got = String::from_utf8(
        etcd.etcdctl_member(leader)
            .args(["get", "after", "--print-value-only"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(got.trim(), "2");

    // A clean stop of the leader (SIGTERM, waited for: etcd hands leadership over first).
    let leader = etcd.wait_leader(Duration::from_secs(10)).unwrap();
    let t = Instant::now();
    etcd.stop_member(leader).unwrap();
    eprintln!("SIGTERM stop of the leader took {:?}", t.elapsed());
    assert!(!etcd.is_running(leader));
    let t = Instant::now();
    etcd.restart_member(leader).unwrap();
    eprintln!("stopped leader back and healthy in {:?}", t.elapsed());
    etcd.wait_healthy(Duration::from_secs(10)).unwrap();
    etcd.etcdctl_run(&["put", "end", "3"]).unwrap();
}

#[test]
fn tls_member_requires_client_cert() {
    require_root_and_tools();
    let etcd = Etcd::start_tls().unwrap();
    eprintln!("TLS etcd healthy in {:?}", etcd.startup_time());
    assert!(etcd.url().starts_with("https://127.0.0.1:"));
    let tls = etcd.tls().unwrap();
    for p in [tls.ca_pem(), tls.client_pem(), tls.client_key_pem()] {
        assert!(p.is_file(), "{} missing", p.display());
    }

    // Accepted: CA + client certificate (etcdctl() adds --cacert/--cert/--key).
    etcd.etcdctl_run(&["put", "secure", "ok"]).unwrap();
    let got = etcd
        .etcdctl_run(&["get", "secure", "--print-value-only"])
        .unwrap();
    assert_eq!(got.trim(), "ok");

    // Rejected: trusts the CA but presents no client certificate.
    let out = std::process::Command::new(berth_testbed::tool("etcdctl"))
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", etcd.url()))
        .arg(format!("--cacert={}", tls.ca_pem().display()))
        .args(["--dial-timeout=2s", "--command-timeout=3s", "get", "secure"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "etcd accepted a client without certificate: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let log = etcd.member_log(0);
    assert!(
        log.contains("didn't provide a certificate") || log.contains("bad certificate"),
        "etcd log shows no TLS rejection:\n{log}"
    );

    // Rejected: plain HTTP on the TLS port.
    let out = std::process::Command::new(berth_testbed::tool("etcdctl"))
        .env("ETCDCTL_API", "3")
        .arg(format!(
            "--endpoints={}",
            etcd.url().replace("https", "http")
        ))
        .args(["--dial-timeout=2s", "--command-timeout=3s", "get", "secure"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "etcd answered plain HTTP");
}

#[test]
fn drop_kills_members_and_removes_dir() {
    require_root_and_tools();
    let etcd = EtcdCluster::start(1).unwrap();
    let pid = etcd.member_pid(0).unwrap();
    let dir = etcd.dir().to_path_buf();
    assert!(dir.is_dir());
    drop(etcd);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "etcd pid {pid} still alive"
    );
}
