//! Tests of namespaces, fabrics, namespaced daemons and CNI invocation.

use std::time::{Duration, Instant};

use berth_testbed::{
    pod_netns, require_root_and_tools, result_ips, with_prev_result, Cni, CniTarget, Fabric, Netns,
};
use serde_json::json;

#[test]
fn fabric_nodes_ping_each_other() {
    require_root_and_tools();
    let fabric = Fabric::new("ping").unwrap();
    let a = fabric
        .node("a", &["198.18.1.1/24", "2001:db8:1::1/64"])
        .unwrap();
    let b = fabric
        .node("b", &["198.18.1.2/24", "2001:db8:1::2/64"])
        .unwrap();

    assert!(a
        .addr_list("eth0")
        .unwrap()
        .contains(&"198.18.1.1/24".to_string()));
    let t = Instant::now();
    a.ping("198.18.1.2", 5).unwrap();
    eprintln!("first IPv4 ping a->b took {:?}", t.elapsed());
    b.ping("198.18.1.1", 5).unwrap();
    let t = Instant::now();
    a.ping("2001:db8:1::2", 5).unwrap();
    eprintln!("first IPv6 ping a->b took {:?}", t.elapsed());

    // The routes helper sees the connected route.
    let routes = a.routes().unwrap();
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "198.18.1.0/24" && r["dev"] == "eth0"),
        "{routes}"
    );

    // The test links exist only inside namespaces: not in the root namespace.
    let root = berth_testbed::run("ip", ["-j", "link"]).unwrap();
    assert!(!root.contains(a.name()) && !root.contains(fabric.netns().name()));

    // Cutting the switch port isolates b.
    let port_b = fabric.attach(&b, "eth1", &[]).unwrap();
    assert!(b.link("eth1").unwrap().is_some());
    fabric.set_port(&port_b, false).unwrap();
    assert!(b.link("eth9").unwrap().is_none());
}

#[test]
fn refuses_non_test_addresses() {
    require_root_and_tools();
    let fabric = Fabric::new("refuse").unwrap();
    assert!(fabric.node("bad", &["10.0.0.1/24"]).is_err());
    let n = fabric.node("good", &["198.18.2.1/24"]).unwrap();
    assert!(n.ping("8.8.8.8", 1).is_err());
    assert!(n.add_addr("eth0", "192.168.0.1/24").is_err());
    assert!(n.sysctl("kernel.panic", "0").is_err());
    n.sysctl("net.ipv4.ip_forward", "1").unwrap();
    let v = n.exec("cat", ["/proc/sys/net/ipv4/ip_forward"]).unwrap();
    assert_eq!(v.trim(), "1");
}

#[test]
fn netns_drop_deletes_namespace() {
    require_root_and_tools();
    let ns = Netns::new("drop").unwrap();
    let path = ns.path();
    assert!(path.exists());
    drop(ns);
    assert!(!path.exists());
}

#[test]
fn daemon_in_namespace_is_killed_on_drop() {
    require_root_and_tools();
    let ns = Netns::new("daemon").unwrap();
    ns.lo_up().unwrap();
    let mut d = ns.spawn("sleep", ["600"], None).unwrap();
    let pid = d.pid();
    assert!(d.is_running());
    // ip netns exec execs the program: the recorded PID is the daemon itself.
    berth_testbed::wait_for(
        "ip netns exec to exec sleep",
        Duration::from_secs(5),
        Duration::from_millis(5),
        || {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
            (comm.trim() == "sleep").then_some(())
        },
    )
    .unwrap();
    // It runs in its own session.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(fields[3], pid.to_string(), "session id != pid: {stat}");
    d.pause().unwrap();
    d.resume().unwrap();
    drop(d);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn debian_bridge_and_host_local_add_del() {
    require_root_and_tools();
    let data = tempfile::tempdir().unwrap();
    let node = Netns::new("node").unwrap();
    node.lo_up().unwrap();
    let pod = pod_netns("pod").unwrap();
    let cni = Cni::debian().in_node(&node);

    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "bt-bridge",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "dataDir": data.path(),
            "ranges": [[{ "subnet": "198.18.10.0/24" }]],
            "routes": [{ "dst": "198.18.0.0/15", "gw": "198.18.10.1" }]
        }
    });
    let target = CniTarget::new("ctr-1", &pod, "eth0").with_k8s_pod("default", "web-0", "uid-1");

    let out = cni.add(&target, &conf).unwrap();
    let result = out.ok().unwrap();
    eprintln!(
        "bridge+host-local ADD took {:?} (incl. ip netns exec)",
        out.elapsed
    );
    let ips = result_ips(&result);
    assert_eq!(ips.len(), 1, "{result}");
    assert!(ips[0].starts_with("198.18.10."), "{result}");

    // The address landed in the pod, the gateway on the node's bridge.
    let pod_addrs = pod.addr_list("eth0").unwrap();
    assert!(pod_addrs.contains(&ips[0]), "{pod_addrs:?} vs {ips:?}");
    let gw = node.addr_list("cni0").unwrap();
    assert!(gw.contains(&"198.18.10.1/24".to_string()), "{gw:?}");
    let routes = pod.routes().unwrap();
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == "198.18.0.0/15"),
        "{routes}"
    );
    // The node reaches the pod over the bridge.
    let pod_ip = ips[0].split('/').next().unwrap();
    node.ping(pod_ip, 5).unwrap();
    // host-local wrote its state into our dataDir only.
    assert!(data.path().join("bt-bridge").join(pod_ip).exists());

    // CHECK with the previous result passes.
    let check = cni
        .check(&target, &with_prev_result(&conf, &result))
        .unwrap();
    assert!(check.success(), "{} {}", check.stdout, check.stderr);

    // DEL removes the interface and frees the address; a second DEL succeeds too.
    let del_conf = with_prev_result(&conf, &result);
    let out = cni.del(&target, &del_conf).unwrap();
    out.ok().unwrap();
    eprintln!("bridge+host-local DEL took {:?}", out.elapsed);
    assert!(pod.link("eth0").unwrap().is_none());
    assert!(!data.path().join("bt-bridge").join(pod_ip).exists());
    cni.del(&target, &del_conf).unwrap().ok().unwrap();
}

#[test]
fn cni_reports_failure_and_missing_plugin() {
    require_root_and_tools();
    let node = Netns::new("node").unwrap();
    let pod = pod_netns("pod").unwrap();
    let data = tempfile::tempdir().unwrap();
    let target = CniTarget::new("ctr-x", &pod, "eth0");
    let cni = Cni::new(["/nonexistent-dir", berth_testbed::DEBIAN_CNI_DIR]).in_node(&node);
    assert_eq!(cni.cni_path(), "/nonexistent-dir:/usr/lib/cni");

    // A 1.1.0 config is rejected by the 1.1.1 plugins: a CNI error object on stdout.
    let conf = json!({
        "cniVersion": "1.1.0", "name": "n", "type": "bridge", "bridge": "cni0",
        "ipam": { "type": "host-local", "dataDir": data.path(),
                  "ranges": [[{ "subnet": "198.18.11.0/24" }]] }
    });
    let out = cni.add(&target, &conf).unwrap();
    assert!(!out.success());
    assert!(
        out.json.as_ref().unwrap()["code"].is_number(),
        "{}",
        out.stdout
    );
    assert!(out.ok().is_err());

    let conf = json!({"cniVersion": "1.0.0", "name": "n", "type": "no-such-plugin"});
    let e = cni.add(&target, &conf).unwrap_err();
    assert!(e.to_string().contains("no-such-plugin"), "{e}");

    let v = cni
        .version(&json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge"}))
        .unwrap()
        .ok()
        .unwrap();
    assert!(v["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("1.0.0")));
}

#[test]
fn parallel_fabrics_do_not_collide() {
    require_root_and_tools();
    let t = Instant::now();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let f = Fabric::new("par").unwrap();
                let a = f.node("a", &["198.18.3.1/24"]).unwrap();
                let _b = f.node("b", &["198.18.3.2/24"]).unwrap();
                a.ping("198.18.3.2", 5).unwrap();
                i
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    eprintln!(
        "4 parallel fabrics with 2 nodes each + ping: {:?}",
        t.elapsed()
    );
    assert!(t.elapsed() < Duration::from_secs(60));
}

#[test]
fn panicking_test_still_cleans_up() {
    require_root_and_tools();
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let fabric = Fabric::new("panic").unwrap();
        let node = fabric.node("n", &["198.18.4.1/24"]).unwrap();
        let d = node.spawn("sleep", ["600"], None).unwrap();
        let etcd = berth_testbed::Etcd::start().unwrap();
        tx.send((
            fabric.netns().path(),
            node.path(),
            d.pid(),
            etcd.member_pid(0).unwrap(),
            etcd.dir().to_path_buf(),
        ))
        .unwrap();
        panic!("deliberate panic with a live test world");
    }));
    assert!(r.is_err());
    let (fabric_path, node_path, sleep_pid, etcd_pid, etcd_dir) = rx.recv().unwrap();
    assert!(!fabric_path.exists() && !node_path.exists());
    for pid in [sleep_pid, etcd_pid] {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    assert!(!etcd_dir.exists());
}
