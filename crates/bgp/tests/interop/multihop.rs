//! eBGP multihop: speaker and BIRD two hops apart. With `multihop = 2` the
//! session comes up; with the eBGP default TTL 1 it cannot.

use crate::common::*;
use std::time::{Duration, Instant};

#[test]
fn ebgp_multihop_ttl() {
    let mut lab = Lab::new("mh");
    lab.bridge("br1");
    let s = lab.node("s", 11); // 198.18.0.11 on br0
    let m = lab.bare_node("m");
    lab.link(&m, "br0", "eth0", "198.18.0.254/24");
    lab.link(&m, "br1", "eth1", "198.18.1.254/24");
    lab.netns(&m).sysctl("net.ipv4.ip_forward", "1").unwrap();
    let r = lab.bare_node("r");
    lab.link(&r, "br1", "eth0", "198.18.1.1/24");
    lab.netns(&r)
        .ip(["route", "add", "default", "via", "198.18.1.254"])
        .unwrap();
    lab.netns(&s.ns)
        .ip(["route", "add", "198.18.1.0/24", "via", "198.18.0.254"])
        .unwrap();
    let rnode = Node {
        ns: r.clone(),
        v4: "198.18.1.1".into(),
        v6: String::new(),
        port: String::new(),
    };
    let bird = lab.bird(
        &rnode,
        "bird",
        "protocol bgp s1 from spk { neighbor 198.18.0.11 as 64513; multihop 2; }",
    );
    let status = lab.path("berth.status");
    let peer = |mh: &str| {
        format!("[[peer]]\naddress = \"198.18.1.1\"\nremote_as = 64512\nhold_time = 3\n{mh}")
    };
    let ann = "[[announce]]\nprefix = \"198.19.100.10/32\"\n";
    let mut berth = lab.berth(
        &s,
        "berth",
        &berth_conf("198.18.0.11", &status, &peer("multihop = 2\n"), ann),
    );
    wait_for(
        "multihop session Established",
        Duration::from_secs(15),
        || bird.birdc("show protocols s1").contains("Established"),
    );
    wait_for("route imported by BIRD", Duration::from_secs(5), || {
        bird.birdc("show protocols all s1").contains("1 imported")
    });
    // TTL 1 (eBGP default): packets die at the middle router; never Established.
    lab.write(
        "berth.toml",
        &berth_conf("198.18.0.11", &status, &peer(""), ann),
    );
    berth.signal(libc::SIGHUP);
    wait_for(
        "session dropped after reload",
        Duration::from_secs(5),
        || !bird.birdc("show protocols s1").contains("Established"),
    );
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        assert!(
            !bird.birdc("show protocols s1").contains("Established"),
            "TTL 1 session crossed a router"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
