//! `berth-ipam` under Debian's real `bridge` and `macvlan` plugins, with network namespaces as
//! the node and the pods: addresses, gateway and routes land on the interface; CHECK passes; DEL
//! frees (also when the pod's namespace is already gone); GC releases what is not listed.

use berth_testbed::{pod_netns, require_root_and_tools, Cni, CniCommand, CniTarget, Fabric, Netns};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_berth-ipam"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Bindings in an embedded ledger, through the real CLI.
fn bindings(data: &Path) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["bindings", "--json", "--ledger"])
        .arg(format!("embedded:{}", data.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "berth bindings: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn audit(data: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["audit", "--ledger"])
        .arg(format!("embedded:{}", data.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "audit: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ipam(data: &Path) -> Value {
    json!({
        "type": "berth-ipam",
        "subnet": "198.18.0.0/24",
        "fixedStart": "198.18.0.10", "fixedEnd": "198.18.0.19",
        "rangeStart": "198.18.0.32", "rangeEnd": "198.18.0.250",
        "gateway": "198.18.0.1",
        "routes": [{"dst": "198.19.0.0/16", "gw": "198.18.0.1"}],
        "ledger": "embedded",
        "dataDir": data,
        "agentSocket": data.join("no-agent.sock"),
        "nodeName": "node-1",
    })
}

/// Global addresses on an interface (the kernel's own IPv6 link-local address left out).
fn addrs(pod: &Netns, dev: &str) -> Vec<String> {
    let mut v = pod.addr_list(dev).unwrap();
    v.retain(|a| !a.starts_with("fe80:"));
    v
}

#[test]
fn bridge_add_check_del_with_routes_gateway_and_fixed_address() {
    require_root_and_tools();
    let data = tempfile::tempdir().unwrap();
    let node = Netns::new("node").unwrap();
    node.lo_up().unwrap();
    let (a, b) = (pod_netns("pa").unwrap(), pod_netns("pb").unwrap());
    let conf = json!({
        "cniVersion": "1.0.0", "name": "br-net", "type": "bridge",
        "bridge": "cni0", "isGateway": true, "ipMasq": false,
        "ipam": ipam(data.path()),
    });
    let cni = Cni::debian().with_dir_first(bin_dir()).in_node(&node);
    let ta = CniTarget::new("ctr-a", &a, "eth0");
    let tb = CniTarget::new("ctr-b", &b, "eth0").with_args("IgnoreUnknown=1;IP=198.18.0.15");
    let ra = cni.add(&ta, &conf).unwrap().ok().unwrap();
    let rb = cni.add(&tb, &conf).unwrap().ok().unwrap();

    // The results, and the kernel state the bridge plugin made from them.
    let ip_a = ra["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(
        ip_a.starts_with("198.18.0.") && ip_a.ends_with("/24"),
        "{ra}"
    );
    assert_eq!(ra["ips"][0]["gateway"], "198.18.0.1");
    assert_eq!(
        rb["ips"][0]["address"], "198.18.0.15/24",
        "CNI_ARGS IP= gives the fixed address"
    );
    assert_eq!(addrs(&a, "eth0"), vec![ip_a.clone()]);
    assert_eq!(addrs(&b, "eth0"), vec!["198.18.0.15/24".to_string()]);
    let routes = a.routes().unwrap().to_string();
    assert!(
        routes.contains("198.19.0.0/16") && routes.contains("198.18.0.1"),
        "route via gateway: {routes}"
    );
    assert!(
        addrs(&node, "cni0").contains(&"198.18.0.1/24".to_string()),
        "gateway on the bridge"
    );
    a.ping("198.18.0.15", 1).unwrap();
    a.ping("198.18.0.1", 1).unwrap();
    assert_eq!(bindings(data.path()).len(), 2);
    audit(data.path());

    // CHECK with the previous result passes; another pod's result fails.
    let with_prev = |prev: &Value| {
        let mut c = conf.clone();
        c["prevResult"] = prev.clone();
        c
    };
    let chk = cni.check(&ta, &with_prev(&ra)).unwrap();
    assert!(chk.success(), "CHECK: {} {}", chk.stdout, chk.stderr);
    let ipam_check = cni
        .exec_plugin("berth-ipam", CniCommand::Check, Some(&ta), &with_prev(&rb))
        .unwrap();
    assert!(
        !ipam_check.success(),
        "CHECK with another pod's result must fail"
    );

    // Repeated ADD (same container, same interface) gives the same address.
    let again = cni
        .exec_plugin("berth-ipam", CniCommand::Add, Some(&ta), &conf)
        .unwrap()
        .ok()
        .unwrap();
    assert_eq!(again["ips"][0]["address"], ra["ips"][0]["address"]);

    // DEL frees; a second DEL succeeds; the pod's interface is gone.
    cni.del(&ta, &conf).unwrap().ok().unwrap();
    cni.del(&ta, &conf).unwrap().ok().unwrap();
    assert!(a.link("eth0").unwrap().is_none());
    let left = bindings(data.path());
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["address"], "198.18.0.15");

    // DEL after the pod's namespace is gone still frees the address.
    let path = b.path();
    drop(b);
    assert!(!path.exists());
    let gone = CniTarget { netns: path, ..tb };
    cni.del(&gone, &conf).unwrap().ok().unwrap();
    assert!(bindings(data.path()).is_empty());
    audit(data.path());
}

#[test]
fn bridge_dual_stack_gives_one_address_per_family() {
    require_root_and_tools();
    let data = tempfile::tempdir().unwrap();
    let node = Netns::new("node6").unwrap();
    node.lo_up().unwrap();
    let pod = pod_netns("p6").unwrap();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "dual", "type": "bridge", "bridge": "cni1", "isGateway": true,
        "ipam": {
            "type": "berth-ipam",
            "ranges": [
                [{"subnet": "198.18.4.0/24", "gateway": "198.18.4.1"}],
                [{"subnet": "2001:db8:4::/64", "gateway": "2001:db8:4::1",
                  "rangeStart": "2001:db8:4::100", "rangeEnd": "2001:db8:4::1ff"}]
            ],
            "ledger": "embedded", "dataDir": data.path(), "agentSocket": "", "nodeName": "node-1"
        }
    });
    let cni = Cni::debian().with_dir_first(bin_dir()).in_node(&node);
    let t = CniTarget::new("ctr-dual", &pod, "eth0");
    let r = cni.add(&t, &conf).unwrap().ok().unwrap();
    let ips: Vec<&str> = r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap())
        .collect();
    assert_eq!(ips.len(), 2, "{r}");
    assert!(
        ips[0].starts_with("198.18.4.") && ips[1].starts_with("2001:db8:4::1"),
        "{ips:?}"
    );
    let on_if = addrs(&pod, "eth0");
    for ip in &ips {
        assert!(on_if.iter().any(|a| a == ip), "{ip} on eth0: {on_if:?}");
    }
    cni.del(&t, &conf).unwrap().ok().unwrap();
    assert!(bindings(data.path()).is_empty());
}

#[test]
fn macvlan_pods_on_a_node_uplink_reach_each_other() {
    require_root_and_tools();
    let data = tempfile::tempdir().unwrap();
    let fabric = Fabric::new("mv").unwrap();
    let node = fabric.node("mvnode", &["198.18.8.2/24"]).unwrap();
    let (a, b) = (pod_netns("mva").unwrap(), pod_netns("mvb").unwrap());
    let conf = json!({
        "cniVersion": "0.3.1", "name": "mv-net", "type": "macvlan", "master": "eth0", "mode": "bridge",
        "ipam": {
            "type": "berth-ipam", "subnet": "198.18.8.0/24",
            "rangeStart": "198.18.8.100", "rangeEnd": "198.18.8.200",
            "gateway": "198.18.8.1", "routes": [{"dst": "0.0.0.0/0"}],
            "ledger": "embedded", "dataDir": data.path(), "agentSocket": "", "nodeName": "mvnode"
        }
    });
    let cni = Cni::debian().with_dir_first(bin_dir()).in_node(&node);
    let ta = CniTarget::new("mv-a", &a, "eth0");
    let tb = CniTarget::new("mv-b", &b, "eth0");
    let ra = cni.add(&ta, &conf).unwrap().ok().unwrap();
    let rb = cni.add(&tb, &conf).unwrap().ok().unwrap();
    assert_eq!(ra["cniVersion"], "0.3.1");
    assert_eq!(
        ra["ips"][0]["version"], "4",
        "0.3.1 results carry the version field"
    );
    let ip_b = rb["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        addrs(&a, "eth0"),
        vec![ra["ips"][0]["address"].as_str().unwrap().to_string()]
    );
    let default_route = a.routes().unwrap().to_string();
    assert!(
        default_route.contains("default") && default_route.contains("198.18.8.1"),
        "{default_route}"
    );
    a.ping(&ip_b, 1).unwrap();
    cni.del(&ta, &conf).unwrap().ok().unwrap();
    cni.del(&tb, &conf).unwrap().ok().unwrap();
    assert!(bindings(data.path()).is_empty());
}

#[test]
fn gc_releases_exactly_the_attachments_not_listed() {
    require_root_and_tools();
    let data = tempfile::tempdir().unwrap();
    let conf = |valid: Value| {
        json!({
            "cniVersion": "1.1.0", "name": "gc-net", "type": "bridge",
            "ipam": ipam(data.path()),
            "cni.dev/valid-attachments": valid,
        })
    };
    let cni = Cni::debian().with_dir_first(bin_dir());
    let pod = pod_netns("gc").unwrap();
    for c in ["keep-1", "keep-2", "gone-1", "gone-2"] {
        let t = CniTarget::new(c, &pod, "eth0");
        cni.exec_plugin("berth-ipam", CniCommand::Add, Some(&t), &conf(json!([])))
            .unwrap()
            .ok()
            .unwrap();
    }
    // Bindings made in the last second are newer than any list the runtime could have sent.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let valid = json!([
        {"containerID": "keep-1", "ifname": "eth0"},
        {"containerID": "keep-2", "ifname": "eth0"}
    ]);
    cni.exec_plugin("berth-ipam", CniCommand::Gc, None, &conf(valid))
        .unwrap()
        .ok()
        .unwrap();
    let mut left: Vec<String> = bindings(data.path())
        .iter()
        .map(|b| {
            b["holder"]["attachment"]["containerID"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    left.sort();
    assert_eq!(left, ["keep-1", "keep-2"]);
    // STATUS: the pool still has room.
    cni.exec_plugin("berth-ipam", CniCommand::Status, None, &conf(json!([])))
        .unwrap()
        .ok()
        .unwrap();
    audit(data.path());
}
