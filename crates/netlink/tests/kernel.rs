//! berth-netlink against the real kernel, in network namespaces the tests create.
//!
//! Every test builds its own fabric (a bridge in a namespace of its own) and node/client
//! namespaces with berth-testbed; nothing touches the root namespace. Addresses are from
//! 198.18.0.0/15 and 2001:db8::/32 only.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use berth_netlink::{
    AddrOptions, Addresses, ArpNdp, ErrorKind, Family, GarpForm, Kernel, LinkEvent, Links, Mac,
    MacvlanMode, Neighbours, Netns, Route, Routes, Rule, Rules, BERTH_PROTOCOL, MAIN_TABLE,
};
use berth_testbed::{require_root, require_tools, Fabric, Netns as TestNs};
use serde_json::Value;

fn setup() {
    require_root();
    require_tools(&["ip", "ping", "arping", "ndisc6"]);
}

fn kernel(ns: &TestNs) -> Kernel {
    Kernel::in_netns(&Netns::open(ns.path()).unwrap()).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn mac_of(ns: &TestNs, dev: &str) -> Mac {
    let l = ns.link(dev).unwrap().unwrap();
    l["address"].as_str().unwrap().parse().unwrap()
}

/// `ip -j addr show dev DEV` as (address/len, tentative) pairs.
fn addr_view(ns: &TestNs, dev: &str) -> Vec<(String, bool)> {
    let v = ns.addrs(dev).unwrap();
    let mut out = Vec::new();
    for link in v.as_array().into_iter().flatten() {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            out.push((
                format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]),
                a["tentative"].as_bool().unwrap_or(false),
            ));
        }
    }
    out
}

fn route_dsts(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["dst"].as_str().unwrap_or("").to_string(),
                r["protocol"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn neighbour_mac(k: &Kernel, fam: Family, addr: IpAddr) -> Option<Mac> {
    k.neighbours(fam, Some("eth0"))
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.ip == addr)
        .and_then(|n| n.mac)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_land_with_berths_protocol_and_are_removed() {
    setup();
    let fab = Fabric::new("nla").unwrap();
    let node = fab.node("node", &[]).unwrap();
    let k = kernel(&node);

    let v4: ipnet::IpNet = "198.18.0.11/24".parse().unwrap();
    let v6: ipnet::IpNet = "2001:db8::11/64".parse().unwrap();
    k.add_address("eth0", v4, AddrOptions::default())
        .await
        .unwrap();
    let nodad = AddrOptions {
        nodad: true,
        ..Default::default()
    };
    k.add_address("eth0", v6, nodad).await.unwrap();
    // Idempotent.
    k.add_address("eth0", v4, AddrOptions::default())
        .await
        .unwrap();

    let view = addr_view(&node, "eth0");
    assert!(view.contains(&("198.18.0.11/24".into(), false)), "{view:?}");
    assert!(
        view.contains(&("2001:db8::11/64".into(), false)),
        "nodad: not tentative: {view:?}"
    );
    // Debian 12's iproute2 (6.1) does not show IFA_PROTO; the kernel's own answer does.
    let listed = k.addresses("eth0").await.unwrap();
    for n in [v4, v6] {
        let a = listed
            .iter()
            .find(|a| a.net == n)
            .unwrap_or_else(|| panic!("{n} not listed: {listed:?}"));
        assert_eq!(a.protocol, BERTH_PROTOCOL);
        assert!(!a.tentative);
    }

    // An address someone else put there is never removed by Berth.
    node.ip(["addr", "add", "198.18.0.99/24", "dev", "eth0"])
        .unwrap();
    let e = k
        .delete_address("eth0", "198.18.0.99/24".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Foreign { protocol: 0, .. }),
        "{e}"
    );
    assert!(node
        .addr_list("eth0")
        .unwrap()
        .contains(&"198.18.0.99/24".to_string()));

    assert!(k.delete_address("eth0", v4).await.unwrap());
    assert!(k.delete_address("eth0", v6).await.unwrap());
    assert!(
        !k.delete_address("eth0", v4).await.unwrap(),
        "second delete finds nothing"
    );
    let left = node.addr_list("eth0").unwrap();
    assert!(
        !left.contains(&"198.18.0.11/24".to_string())
            && !left.contains(&"2001:db8::11/64".to_string()),
        "{left:?}"
    );

    // Errors name the interface, the namespace and the fix.
    let e = k
        .add_address("eth9", v4, AddrOptions::default())
        .await
        .unwrap_err();
    let s = e.to_string();
    assert!(
        matches!(e.kind, ErrorKind::NoSuchInterface(ref d) if d == "eth9"),
        "{s}"
    );
    assert!(
        s.contains("198.18.0.11/24 on eth9")
            && s.contains(node.name())
            && s.contains("does not exist"),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_carry_berths_protocol_and_foreign_routes_are_never_touched() {
    setup();
    let fab = Fabric::new("nlr").unwrap();
    let node = fab
        .node("node", &["198.18.0.11/24", "2001:db8::11/64"])
        .unwrap();
    let k = kernel(&node);

    let r1 = Route::to("198.18.10.0/24".parse().unwrap())
        .via(ip("198.18.0.12"))
        .dev("eth0");
    let r2 = Route::to("198.18.11.0/24".parse().unwrap())
        .dev("eth0")
        .table(100);
    let r3 = Route::to("2001:db8:10::/64".parse().unwrap())
        .via(ip("2001:db8::12"))
        .dev("eth0");
    // A gateway outside every subnet of the device: only onlink makes it valid.
    let r4 = Route::to("198.18.20.0/24".parse().unwrap())
        .via(ip("198.19.0.1"))
        .dev("eth0");
    let e = k.add_route(&r4).await.unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Unreachable | ErrorKind::Kernel { .. }),
        "{e}"
    );
    let r4 = r4.onlink();
    for r in [&r1, &r2, &r3, &r4] {
        k.add_route(r).await.unwrap_or_else(|e| panic!("{r}: {e}"));
    }
    let e = k.add_route(&r1).await.unwrap_err();
    assert!(e.is_exists(), "{e}");

    let mine = route_dsts(&node.ip_json(["route", "show", "proto", "176"]).unwrap());
    assert!(
        mine.contains(&("198.18.10.0/24".into(), String::new()))
            || mine.iter().any(|(d, _)| d == "198.18.10.0/24"),
        "{mine:?}"
    );
    assert!(mine.iter().any(|(d, _)| d == "198.18.20.0/24"), "{mine:?}");
    let t100 = node.routes_in_table(false, "100").unwrap();
    assert_eq!(t100[0]["dst"], "198.18.11.0/24", "{t100}");
    assert_eq!(t100[0]["protocol"], "176", "{t100}");
    assert_eq!(
        t100[0]["scope"], "link",
        "a device route is link scope: {t100}"
    );
    let v6 = node
        .ip_json(["-6", "route", "show", "2001:db8:10::/64"])
        .unwrap();
    assert_eq!(v6[0]["protocol"], "176", "{v6}");
    assert_eq!(v6[0]["gateway"], "2001:db8::12", "{v6}");
    let onl = node.ip_json(["route", "show", "198.18.20.0/24"]).unwrap();
    assert!(
        onl[0]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "onlink"),
        "{onl}"
    );

    let listed = k.routes(Family::V4, MAIN_TABLE).await.unwrap();
    let l1 = listed.iter().find(|r| r.dst == r1.dst).unwrap();
    assert_eq!(
        (l1.gateway, l1.dev.as_deref(), l1.protocol),
        (Some(ip("198.18.0.12")), Some("eth0"), BERTH_PROTOCOL)
    );
    assert!(
        listed.iter().any(|r| r.protocol == 2),
        "the kernel's connected route is listed too: {listed:?}"
    );

    // Replace changes Berth's own route.
    k.replace_route(&r1.clone().via(ip("198.18.0.13")))
        .await
        .unwrap();
    assert_eq!(
        node.ip_json(["route", "show", "198.18.10.0/24"]).unwrap()[0]["gateway"],
        "198.18.0.13"
    );

    // Someone else's routes: one in main, one in table 100, one IPv6.
    node.ip(["route", "add", "198.18.30.0/24", "via", "198.18.0.14"])
        .unwrap();
    node.ip([
        "route",
        "add",
        "198.18.31.0/24",
        "dev",
        "eth0",
        "table",
        "100",
    ])
    .unwrap();
    node.ip([
        "-6",
        "route",
        "add",
        "2001:db8:30::/64",
        "via",
        "2001:db8::14",
    ])
    .unwrap();
    let foreign = Route::to("198.18.30.0/24".parse().unwrap())
        .via(ip("198.18.0.15"))
        .dev("eth0");
    assert!(
        !k.delete_route(&foreign).await.unwrap(),
        "a Berth delete never removes a foreign route"
    );
    let e = k.replace_route(&foreign).await.unwrap_err();
    assert!(
        matches!(
            e.kind,
            ErrorKind::Foreign {
                berth: BERTH_PROTOCOL,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        node.ip_json(["route", "show", "198.18.30.0/24"]).unwrap()[0]["gateway"],
        "198.18.0.14",
        "replace left it alone"
    );
    assert!(!k
        .delete_route(&Route::to("2001:db8:30::/64".parse().unwrap()).dev("eth0"))
        .await
        .unwrap());

    // Flush removes exactly Berth's routes of that family and table.
    assert_eq!(k.flush_routes(Family::V4, MAIN_TABLE).await.unwrap(), 2);
    assert_eq!(k.flush_routes(Family::V4, 100).await.unwrap(), 1);
    assert_eq!(k.flush_routes(Family::V6, MAIN_TABLE).await.unwrap(), 1);
    assert!(node
        .ip_json(["route", "show", "table", "all", "proto", "176"])
        .unwrap()
        .as_array()
        .unwrap()
        .is_empty());
    assert!(node
        .ip_json(["-6", "route", "show", "table", "all", "proto", "176"])
        .unwrap()
        .as_array()
        .unwrap()
        .is_empty());
    let main = route_dsts(&node.routes().unwrap());
    // `ip route add` makes proto boot, which `ip -j` leaves out.
    assert!(
        main.iter()
            .any(|(d, p)| d == "198.18.30.0/24" && p.is_empty()),
        "{main:?}"
    );
    assert!(
        main.iter()
            .any(|(d, p)| d == "198.18.0.0/24" && p == "kernel"),
        "{main:?}"
    );
    assert_eq!(
        node.routes_in_table(false, "100").unwrap()[0]["dst"],
        "198.18.31.0/24"
    );
    assert!(route_dsts(&node.routes6().unwrap())
        .iter()
        .any(|(d, _)| d == "2001:db8:30::/64"));
    assert!(
        !k.delete_route(&r1).await.unwrap(),
        "deleting what is gone is false, not an error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_rules_route_replies_by_source() {
    setup();
    let lan = Fabric::new("nlpa").unwrap();
    let public = Fabric::new("nlpb").unwrap();
    let pod = lan
        .node("pod", &["198.18.0.21/24", "2001:db8::21/64"])
        .unwrap();
    public
        .attach(&pod, "net1", &["198.19.5.5/24", "2001:db8:5::5/64"])
        .unwrap();
    let k = kernel(&pod);
    k.add_route(
        &Route::to("0.0.0.0/0".parse().unwrap())
            .via(ip("198.18.0.1"))
            .dev("eth0"),
    )
    .await
    .unwrap();
    k.add_route(
        &Route::to("::/0".parse().unwrap())
            .via(ip("2001:db8::1"))
            .dev("eth0"),
    )
    .await
    .unwrap();
    // The attachment's own table and rule, as berth-attach will set them.
    k.add_route(
        &Route::to("0.0.0.0/0".parse().unwrap())
            .via(ip("198.19.5.1"))
            .dev("net1")
            .table(100),
    )
    .await
    .unwrap();
    k.add_route(
        &Route::to("::/0".parse().unwrap())
            .via(ip("2001:db8:5::1"))
            .dev("net1")
            .table(100),
    )
    .await
    .unwrap();
    let r4 = Rule::from_source("198.19.5.5/32".parse().unwrap(), 100, 1000);
    let r6 = Rule::from_source("2001:db8:5::5/128".parse().unwrap(), 100, 1000);
    for r in [&r4, &r6] {
        k.add_rule(r).await.unwrap();
        k.add_rule(r).await.unwrap(); // idempotent
    }
    let get = |args: &[&str]| {
        pod.ip_json(args).unwrap()[0]["dev"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(get(&["route", "get", "198.19.200.1"]), "eth0");
    assert_eq!(
        get(&["route", "get", "198.19.200.1", "from", "198.19.5.5"]),
        "net1"
    );
    assert_eq!(get(&["-6", "route", "get", "2001:db8:200::1"]), "eth0");
    assert_eq!(
        get(&[
            "-6",
            "route",
            "get",
            "2001:db8:200::1",
            "from",
            "2001:db8:5::5"
        ]),
        "net1"
    );

    let rules = k.rules(Family::V4).await.unwrap();
    let mine: Vec<_> = rules
        .iter()
        .filter(|r| r.protocol == BERTH_PROTOCOL)
        .collect();
    assert_eq!(mine.len(), 1, "added twice, present once: {rules:?}");
    assert!(
        mine[0].same_as(&r4) && mine[0].priority == Some(1000),
        "{mine:?}"
    );
    let shown = pod.ip_json(["rule", "show", "pref", "1000"]).unwrap();
    assert_eq!(shown[0]["src"], "198.19.5.5", "{shown}");
    assert_eq!(shown[0]["protocol"], "176", "{shown}");

    // Someone else's identical rule survives Berth's delete.
    pod.ip([
        "rule",
        "add",
        "from",
        "198.19.5.6",
        "lookup",
        "100",
        "pref",
        "1001",
    ])
    .unwrap();
    let other = Rule::from_source("198.19.5.6/32".parse().unwrap(), 100, 1001);
    assert!(!k.delete_rule(&other).await.unwrap());
    assert!(!pod
        .ip_json(["rule", "show", "pref", "1001"])
        .unwrap()
        .as_array()
        .unwrap()
        .is_empty());

    assert!(k.delete_rule(&r4).await.unwrap());
    assert!(k.delete_rule(&r6).await.unwrap());
    assert!(!k.delete_rule(&r4).await.unwrap());
    assert_eq!(
        get(&["route", "get", "198.19.200.1", "from", "198.19.5.5"]),
        "eth0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_and_proxy_neighbour_entries() {
    setup();
    let fab = Fabric::new("nln").unwrap();
    let node = fab
        .node("node", &["198.18.0.11/24", "2001:db8::11/64"])
        .unwrap();
    let client = fab
        .node("client", &["198.18.0.100/24", "2001:db8::100/64"])
        .unwrap();
    let k = kernel(&node);
    let m: Mac = "02:00:5e:00:00:42".parse().unwrap();
    k.set_permanent("eth0", ip("198.18.0.42"), m).await.unwrap();
    k.set_permanent("eth0", ip("2001:db8::42"), m)
        .await
        .unwrap();
    let shown = node.ip_json(["neigh", "show", "198.18.0.42"]).unwrap();
    assert_eq!(shown[0]["lladdr"], "02:00:5e:00:00:42", "{shown}");
    assert_eq!(shown[0]["state"][0], "PERMANENT", "{shown}");
    let n = k.neighbours(Family::V6, Some("eth0")).await.unwrap();
    assert!(
        n.iter().any(|n| n.ip == ip("2001:db8::42")
            && n.mac == Some(m)
            && n.state == berth_netlink::NeighState::Permanent),
        "{n:?}"
    );
    assert!(k.delete_neighbour("eth0", ip("198.18.0.42")).await.unwrap());
    assert!(!k.delete_neighbour("eth0", ip("198.18.0.42")).await.unwrap());
    assert!(node
        .ip_json(["neigh", "show", "198.18.0.42"])
        .unwrap()
        .as_array()
        .unwrap()
        .is_empty());

    // Proxy entries: the kernel answers for an address routed to a pod behind the node
    // (IPv4 needs forwarding and a route out another device; IPv6 needs proxy_ndp).
    let pod = TestNs::new("pod").unwrap();
    k.add_veth("vp0", "eth0", Some(&Netns::open(pod.path()).unwrap()))
        .await
        .unwrap();
    k.set_up("vp0", true).await.unwrap();
    node.sysctl("net.ipv4.ip_forward", "1").unwrap();
    node.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    node.sysctl("net.ipv6.conf.eth0.proxy_ndp", "1").unwrap();
    // Proxy answers to broadcast/multicast requests wait a random 0..proxy_delay (0.8 s).
    node.sysctl("net.ipv4.neigh.eth0.proxy_delay", "0").unwrap();
    node.sysctl("net.ipv6.neigh.eth0.proxy_delay", "0").unwrap();
    k.add_route(&Route::to("198.18.0.99/32".parse().unwrap()).dev("vp0"))
        .await
        .unwrap();
    k.add_proxy("eth0", ip("198.18.0.99")).await.unwrap();
    k.add_proxy("eth0", ip("2001:db8::99")).await.unwrap();
    k.add_proxy("eth0", ip("2001:db8::99")).await.unwrap(); // idempotent
    let p4 = k.proxies(Family::V4).await.unwrap();
    let p6 = k.proxies(Family::V6).await.unwrap();
    assert!(p4.iter().any(|p| p.ip == ip("198.18.0.99")), "{p4:?}");
    assert_eq!(
        p6.iter().filter(|p| p.ip == ip("2001:db8::99")).count(),
        1,
        "{p6:?}"
    );
    let node_mac = mac_of(&node, "eth0").to_string();
    let out = client
        .exec(
            "arping",
            ["-c", "1", "-w", "3", "-I", "eth0", "198.18.0.99"],
        )
        .unwrap();
    assert!(
        out.to_lowercase().contains(&node_mac),
        "proxy ARP answers with the node's MAC: {out}"
    );
    // ndisc6 does not accept the kernel's proxy NA here (it times out while tcpdump shows the
    // NA, which carries no override flag); a Linux client takes it.
    let _ = client.ping("2001:db8::99", 1); // no echo reply: only the resolution matters
    let kc = kernel(&client);
    assert_eq!(
        neighbour_mac(&kc, Family::V6, ip("2001:db8::99"))
            .await
            .map(|m| m.to_string()),
        Some(node_mac.clone()),
        "proxy NDP answers with the node's MAC"
    );
    assert!(k.delete_proxy("eth0", ip("198.18.0.99")).await.unwrap());
    assert!(k.delete_proxy("eth0", ip("2001:db8::99")).await.unwrap());
    assert!(!k.delete_proxy("eth0", ip("2001:db8::99")).await.unwrap());
    assert!(k.proxies(Family::V6).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_veth_macvlan_move_rename_and_state() {
    setup();
    let fab = Fabric::new("nll").unwrap();
    let node = fab.node("node", &["198.18.0.11/24"]).unwrap();
    let pod = TestNs::new("pod").unwrap();
    let pod_ns = Netns::open(pod.path()).unwrap();
    let k = kernel(&node);

    let eth0 = k.link("eth0").await.unwrap();
    assert_eq!(eth0.mac, Some(mac_of(&node, "eth0")));
    assert!(eth0.is_running(), "{eth0:?}");
    assert_eq!(
        eth0.index as u64,
        node.link("eth0").unwrap().unwrap()["ifindex"]
            .as_u64()
            .unwrap()
    );

    k.add_veth("va0", "va1", None).await.unwrap();
    let e = k.add_veth("va0", "va9", None).await.unwrap_err();
    assert!(e.is_exists(), "{e}");
    let va0 = k.link("va0").await.unwrap();
    assert_eq!(va0.kind.as_deref(), Some("veth"));
    assert!(!va0.admin_up);
    k.set_up("va0", true).await.unwrap();
    let va0 = k.link("va0").await.unwrap();
    assert!(
        va0.admin_up && !va0.is_running(),
        "peer down: no carrier: {va0:?}"
    );
    assert_eq!(va0.oper, berth_netlink::OperState::LowerLayerDown);
    k.set_up("va1", true).await.unwrap();
    assert!(k.link("va0").await.unwrap().is_running());

    let m: Mac = "02:00:5e:00:00:77".parse().unwrap();
    k.set_mac("va1", m).await.unwrap();
    assert_eq!(mac_of(&node, "va1"), m);

    // Older kernels refuse to rename a link that is up (EBUSY → ErrorKind::Busy); rename
    // it down, as they require.
    k.set_up("va1", false).await.unwrap();
    k.rename("va1", "vb1").await.unwrap();
    assert!(node.link("va1").unwrap().is_none() && node.link("vb1").unwrap().is_some());
    assert!(k.rename("vb1", "a/b").await.is_err());

    // Move by fd (opened from the path), then create a peer straight in the pod.
    k.move_to_netns("vb1", &pod_ns).await.unwrap();
    assert!(node.link("vb1").unwrap().is_none());
    assert!(pod.link("vb1").unwrap().is_some());
    k.add_veth("vc0", "vc1", Some(&pod_ns)).await.unwrap();
    assert!(node.link("vc1").unwrap().is_none() && pod.link("vc1").unwrap().is_some());
    // Move by an fd the caller opened itself (as a runtime may hand one over).
    k.add_veth("vd0", "vd1", None).await.unwrap();
    let fd = std::os::fd::OwnedFd::from(std::fs::File::open(pod.path()).unwrap());
    k.move_to_netns("vd1", &Netns::from_fd(fd, "pod by fd"))
        .await
        .unwrap();
    assert!(node.link("vd1").unwrap().is_none() && pod.link("vd1").unwrap().is_some());

    // Macvlan on eth0, here and straight into the pod.
    k.add_macvlan("mv0", "eth0", MacvlanMode::Bridge, None)
        .await
        .unwrap();
    assert_eq!(
        k.link("mv0").await.unwrap().kind.as_deref(),
        Some("macvlan")
    );
    k.add_macvlan("mv1", "eth0", MacvlanMode::Private, Some(&pod_ns))
        .await
        .unwrap();
    let mv1 = pod.ip_json(["-d", "link", "show", "mv1"]).unwrap();
    assert_eq!(mv1[0]["linkinfo"]["info_kind"], "macvlan", "{mv1}");
    assert_eq!(mv1[0]["linkinfo"]["info_data"]["mode"], "private", "{mv1}");
    let e = k
        .add_macvlan("mv2", "eth7", MacvlanMode::Bridge, None)
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::NoSuchInterface(ref d) if d == "eth7"),
        "{e}"
    );

    assert!(k.delete_link("va0").await.unwrap());
    assert!(!k.delete_link("va0").await.unwrap());
    assert!(
        pod.link("vb1").unwrap().is_none(),
        "deleting one end removes the peer"
    );
    let names: Vec<String> = k
        .links()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert!(
        names.contains(&"mv0".to_string()) && names.contains(&"vc0".to_string()),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_link_down_at_once() {
    setup();
    let fab = Fabric::new("nlw").unwrap();
    let node = fab.node("node", &["198.18.0.11/24"]).unwrap();
    let k = kernel(&node);
    let switch = Kernel::in_netns(&Netns::open(fab.netns().path()).unwrap()).unwrap();
    let port = switch
        .links()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.name.starts_with('p'))
        .unwrap()
        .name;

    let mut w = k.watch().await.unwrap();
    let mut seen = false;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), w.next()).await {
        if let LinkEvent::Changed(l) = ev {
            seen |= l.name == "eth0" && l.is_running();
        }
    }
    assert!(seen, "the snapshot has eth0 running");

    let mut lat = Vec::new();
    for _ in 0..5 {
        for up in [false, true] {
            let t0 = Instant::now();
            switch.set_up(&port, up).await.unwrap();
            // A notification, not a poll: it comes in well under a second even under load.
            let l = loop {
                match tokio::time::timeout(Duration::from_millis(500), w.next()).await {
                    Ok(Some(LinkEvent::Changed(l))) if l.name == "eth0" && l.is_running() == up => {
                        break l
                    }
                    Ok(Some(_)) => continue,
                    other => panic!("no eth0 change to running={up}: {other:?}"),
                }
            };
            assert_eq!(l.lower_up, up);
            if !up {
                lat.push(t0.elapsed());
            }
        }
    }
    lat.sort();
    println!(
        "MEASURE link watch: peer port down -> eth0 carrier-loss event: min {:?} median {:?} max {:?} (n={})",
        lat[0], lat[lat.len() / 2], lat[lat.len() - 1], lat.len()
    );

    // Admin down on the link itself, then removal.
    k.set_up("eth0", false).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(2), w.next()).await {
            Ok(Some(LinkEvent::Changed(l))) if l.name == "eth0" && !l.admin_up => break,
            Ok(Some(_)) => continue,
            other => panic!("no admin-down event: {other:?}"),
        }
    }
    let idx = k.link("eth0").await.unwrap().index;
    k.delete_link("eth0").await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(2), w.next()).await {
            Ok(Some(LinkEvent::Removed { index, name })) if index == idx => {
                assert_eq!(name, "eth0");
                break;
            }
            Ok(Some(_)) => continue,
            other => panic!("no removal event: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_inside_a_pod_namespace_leaves_the_caller_where_it_was() {
    setup();
    let fab = Fabric::new("nlp").unwrap();
    let node = fab.node("node", &[]).unwrap();
    let pod = TestNs::new("pod").unwrap();
    let before = Netns::current().unwrap().id().unwrap();
    let pod_ns = Netns::open(pod.path()).unwrap();
    assert_ne!(pod_ns.id().unwrap(), before);

    let kn = kernel(&node);
    kn.add_veth("vethpod", "eth0", Some(&pod_ns)).await.unwrap();
    kn.set_up("vethpod", true).await.unwrap();
    kn.add_address(
        "vethpod",
        "198.18.7.1/24".parse().unwrap(),
        AddrOptions::default(),
    )
    .await
    .unwrap();

    let kp = Kernel::in_netns(&pod_ns).unwrap();
    kp.set_up("lo", true).await.unwrap();
    kp.set_up("eth0", true).await.unwrap();
    kp.add_address(
        "eth0",
        "198.18.7.2/24".parse().unwrap(),
        AddrOptions::default(),
    )
    .await
    .unwrap();
    kp.add_route(
        &Route::to("0.0.0.0/0".parse().unwrap())
            .via(ip("198.18.7.1"))
            .dev("eth0"),
    )
    .await
    .unwrap();
    assert_eq!(pod.routes().unwrap()[0]["gateway"], "198.18.7.1");
    pod.ping("198.18.7.1", 3).unwrap();
    node.ping("198.18.7.2", 3).unwrap();

    // Code run "in the pod" sees the pod's interfaces; the caller never moved.
    let dev = pod_ns
        .run(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap())
        .unwrap();
    assert!(dev.contains("eth0:") && !dev.contains("vethpod"), "{dev}");
    assert_eq!(Netns::current().unwrap().id().unwrap(), before);
    let mine = std::fs::read_to_string("/proc/thread-self/net/dev").unwrap();
    assert!(
        !mine.contains("vethpod"),
        "the test's namespace never saw the veth"
    );

    // A namespace that is gone is named in the error.
    let gone = pod.path();
    drop(kp);
    drop(pod_ns);
    drop(pod);
    let e = Netns::open(&gone).unwrap_err();
    assert!(e.to_string().contains(&gone.display().to_string()), "{e}");
}

/// Waits until `client`'s neighbour entry for `addr` has `want`; returns how long it took.
async fn wait_entry(
    client: &Kernel,
    fam: Family,
    addr: IpAddr,
    want: Mac,
    t0: Instant,
) -> Duration {
    loop {
        if neighbour_mac(client, fam, addr).await == Some(want) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "{addr} never switched to {want}"
        );
        // A thread sleep (the body runs on its own thread, not a worker): ~0.1 ms resolution,
        // where a tokio timer would round to 1 ms.
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "min {:.2} ms median {:.2} ms max {:.2} ms (n={})",
        v[0].as_secs_f64() * 1e3,
        v[v.len() / 2].as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3,
        v.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garp_moves_a_client_entry_to_the_new_announcer() {
    setup();
    let fab = Fabric::new("nlg").unwrap();
    let a = fab.node("a", &["198.18.0.11/24"]).unwrap();
    let b = fab.node("b", &["198.18.0.12/24"]).unwrap();
    let c = fab.node("client", &["198.18.0.100/24"]).unwrap();
    let (ka, kb, kc) = (kernel(&a), kernel(&b), kernel(&c));
    let (ma, mb) = (mac_of(&a, "eth0"), mac_of(&b, "eth0"));
    let vip = ip("198.18.0.200");
    let vipnet: ipnet::IpNet = "198.18.0.200/24".parse().unwrap();

    ka.add_address("eth0", vipnet, AddrOptions::default())
        .await
        .unwrap();
    c.ping("198.18.0.200", 3).unwrap();
    assert_eq!(neighbour_mac(&kc, Family::V4, vip).await, Some(ma));

    let (mut times, mut sends) = (Vec::new(), Vec::new());
    let nodes = [(&ka, &kb, mb), (&kb, &ka, ma)];
    for i in 0..10 {
        let (from, to, want) = nodes[i % 2];
        let form = if i % 4 < 2 {
            GarpForm::Request
        } else {
            GarpForm::Reply
        };
        from.delete_address("eth0", vipnet).await.unwrap();
        to.add_address("eth0", vipnet, AddrOptions::default())
            .await
            .unwrap();
        // Send from a task and watch the client meanwhile, so the figure is send → switch.
        let to = to.clone();
        let t0 = Instant::now();
        let send = tokio::spawn(async move {
            to.send_garp("eth0", vip, form).await.unwrap();
            t0.elapsed()
        });
        times.push(wait_entry(&kc, Family::V4, vip, want, t0).await);
        sends.push(send.await.unwrap());
    }
    println!("MEASURE GARP call returned: {}", summary(sends));
    println!(
        "MEASURE GARP call -> client neighbour entry switched: {}",
        summary(times)
    );
    c.ping("198.18.0.200", 3).unwrap();

    // After an even number of moves A holds the address again. With arp_accept=0 a GARP
    // updates an existing entry but creates none; with arp_accept=1 it creates one.
    assert!(a
        .addr_list("eth0")
        .unwrap()
        .contains(&"198.18.0.200/24".to_string()));
    c.ip(["neigh", "flush", "dev", "eth0"]).unwrap();
    ka.announce("eth0", vip).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        neighbour_mac(&kc, Family::V4, vip).await,
        None,
        "arp_accept=0 creates no entry"
    );
    c.sysctl("net.ipv4.conf.eth0.arp_accept", "1").unwrap();
    let t0 = Instant::now();
    ka.announce("eth0", vip).await.unwrap();
    wait_entry(&kc, Family::V4, vip, ma, t0).await;

    let e = ka
        .send_garp("eth0", ip("2001:db8::1"), GarpForm::Request)
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Invalid(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsolicited_na_moves_a_client_entry_to_the_new_announcer() {
    setup();
    let fab = Fabric::new("nlu").unwrap();
    let a = fab.node("a", &["2001:db8::11/64"]).unwrap();
    let b = fab.node("b", &["2001:db8::12/64"]).unwrap();
    let c = fab.node("client", &["2001:db8::100/64"]).unwrap();
    let (ka, kb, kc) = (kernel(&a), kernel(&b), kernel(&c));
    let (ma, mb) = (mac_of(&a, "eth0"), mac_of(&b, "eth0"));
    let vip = ip("2001:db8::200");
    let vipnet: ipnet::IpNet = "2001:db8::200/64".parse().unwrap();
    let nodad = AddrOptions {
        nodad: true,
        ..Default::default()
    };

    ka.add_address("eth0", vipnet, nodad).await.unwrap();
    c.ping("2001:db8::200", 3).unwrap();
    assert_eq!(neighbour_mac(&kc, Family::V6, vip).await, Some(ma));

    let (mut times, mut sends) = (Vec::new(), Vec::new());
    let nodes = [(&ka, &kb, mb), (&kb, &ka, ma)];
    for i in 0..10 {
        let (from, to, want) = nodes[i % 2];
        from.delete_address("eth0", vipnet).await.unwrap();
        to.add_address("eth0", vipnet, nodad).await.unwrap();
        let to = to.clone();
        let t0 = Instant::now();
        let send = tokio::spawn(async move {
            to.send_unsolicited_na("eth0", vip).await.unwrap();
            t0.elapsed()
        });
        times.push(wait_entry(&kc, Family::V6, vip, want, t0).await);
        sends.push(send.await.unwrap());
    }
    println!("MEASURE unsolicited NA call returned: {}", summary(sends));
    println!(
        "MEASURE unsolicited NA call -> client neighbour entry switched: {}",
        summary(times)
    );
    c.ping("2001:db8::200", 3).unwrap();
    let e = ka
        .send_unsolicited_na("eth0", ip("198.18.0.1"))
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Invalid(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_report_the_mac_of_a_conflicting_host() {
    setup();
    let fab = Fabric::new("nlc").unwrap();
    let n = fab
        .node("node", &["198.18.0.11/24", "2001:db8::11/64"])
        .unwrap();
    let h = fab
        .node("other", &["198.18.0.12/24", "2001:db8::12/64"])
        .unwrap();
    let k = kernel(&n);
    let mh = mac_of(&h, "eth0");
    let wait = Duration::from_millis(600);

    for addr in ["198.18.0.50", "2001:db8::50"] {
        let t0 = Instant::now();
        assert_eq!(
            k.probe("eth0", ip(addr), wait).await.unwrap(),
            None,
            "no one has {addr}"
        );
        assert!(t0.elapsed() >= wait, "waited the whole time");
    }
    // The prober's own addresses are no conflict with itself.
    assert_eq!(
        k.probe("eth0", ip("198.18.0.11"), wait).await.unwrap(),
        None
    );

    h.ip(["addr", "add", "198.18.0.50/24", "dev", "eth0"])
        .unwrap();
    h.ip(["addr", "add", "2001:db8::50/64", "dev", "eth0", "nodad"])
        .unwrap();
    for addr in ["198.18.0.50", "2001:db8::50"] {
        let t0 = Instant::now();
        assert_eq!(
            k.probe("eth0", ip(addr), wait).await.unwrap(),
            Some(mh),
            "{addr} is held by the other host"
        );
        println!(
            "MEASURE probe {addr}: conflict reported after {:?}",
            t0.elapsed()
        );
    }
    // The probes taught the other host nothing about us (sender 0.0.0.0 / ::).
    let learned = h.ip_json(["neigh", "show", "dev", "eth0"]).unwrap();
    assert!(
        learned
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["dst"] != "198.18.0.11" && e["dst"] != "2001:db8::11"),
        "{learned}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responder_answers_for_addresses_not_on_the_interface() {
    setup();
    let fab = Fabric::new("nlx").unwrap();
    let r = fab
        .node("resp", &["198.18.0.11/24", "2001:db8::11/64"])
        .unwrap();
    let c = fab
        .node("client", &["198.18.0.100/24", "2001:db8::100/64"])
        .unwrap();
    let k = kernel(&r);
    let mr = mac_of(&r, "eth0").to_string();
    let set: BTreeSet<IpAddr> = [ip("198.18.0.77"), ip("2001:db8::77")].into();
    k.answer("eth0", set.clone()).await.unwrap();
    assert_eq!(k.answered("eth0").await.unwrap(), set);
    assert!(!r
        .addr_list("eth0")
        .unwrap()
        .iter()
        .any(|a| a.contains("::77") || a.contains(".77")));

    let out = c
        .exec(
            "arping",
            ["-c", "1", "-w", "3", "-I", "eth0", "198.18.0.77"],
        )
        .unwrap();
    assert!(
        out.to_lowercase().contains(&mr),
        "arping answered by the responder's MAC: {out}"
    );
    let out = c
        .exec(
            "ndisc6",
            ["-1", "-r", "3", "-w", "500", "2001:db8::77", "eth0"],
        )
        .unwrap();
    assert!(
        out.to_lowercase().contains(&mr),
        "ndisc6 answered by the responder's MAC: {out}"
    );
    // Not answered: anything outside the set.
    assert!(c
        .exec(
            "arping",
            ["-c", "1", "-w", "1", "-I", "eth0", "198.18.0.78"]
        )
        .is_err());

    // Routed attachment: the addresses live in a pod behind the responder's node; the
    // client reaches them by ping through the answered ARP/NDP.
    let pod = TestNs::new("pod").unwrap();
    let pod_ns = Netns::open(pod.path()).unwrap();
    k.add_veth("vp0", "eth0", Some(&pod_ns)).await.unwrap();
    k.set_up("vp0", true).await.unwrap();
    let nodad = AddrOptions {
        nodad: true,
        ..Default::default()
    };
    k.add_address(
        "vp0",
        "198.19.77.1/24".parse().unwrap(),
        AddrOptions::default(),
    )
    .await
    .unwrap();
    k.add_address("vp0", "2001:db8:77::1/64".parse().unwrap(), nodad)
        .await
        .unwrap();
    r.sysctl("net.ipv4.ip_forward", "1").unwrap();
    r.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    k.add_route(&Route::to("198.18.0.77/32".parse().unwrap()).dev("vp0"))
        .await
        .unwrap();
    k.add_route(
        &Route::to("2001:db8::77/128".parse().unwrap())
            .via(ip("2001:db8:77::2"))
            .dev("vp0"),
    )
    .await
    .unwrap();
    let kp = Kernel::in_netns(&pod_ns).unwrap();
    kp.set_up("eth0", true).await.unwrap();
    for a in [
        "198.18.0.77/32",
        "198.19.77.2/24",
        "2001:db8::77/128",
        "2001:db8:77::2/64",
    ] {
        kp.add_address("eth0", a.parse().unwrap(), nodad)
            .await
            .unwrap();
    }
    kp.add_route(
        &Route::to("0.0.0.0/0".parse().unwrap())
            .via(ip("198.19.77.1"))
            .dev("eth0"),
    )
    .await
    .unwrap();
    kp.add_route(
        &Route::to("::/0".parse().unwrap())
            .via(ip("2001:db8:77::1"))
            .dev("eth0"),
    )
    .await
    .unwrap();
    c.ip(["neigh", "flush", "dev", "eth0"]).unwrap();
    c.ping("198.18.0.77", 3).unwrap();
    c.ping("2001:db8::77", 3).unwrap();
    let kc = kernel(&c);
    assert_eq!(
        neighbour_mac(&kc, Family::V4, ip("198.18.0.77"))
            .await
            .map(|m| m.to_string()),
        Some(mr.clone())
    );
    assert_eq!(
        neighbour_mac(&kc, Family::V6, ip("2001:db8::77"))
            .await
            .map(|m| m.to_string()),
        Some(mr.clone())
    );

    // Narrowing the set stops answering for what left it; empty stops the responder.
    k.answer("eth0", [ip("2001:db8::77")].into()).await.unwrap();
    assert!(c
        .exec(
            "arping",
            ["-c", "1", "-w", "1", "-I", "eth0", "198.18.0.77"]
        )
        .is_err());
    k.answer("eth0", BTreeSet::new()).await.unwrap();
    assert!(k.answered("eth0").await.unwrap().is_empty());
    assert!(c
        .exec(
            "ndisc6",
            ["-1", "-r", "2", "-w", "300", "2001:db8::77", "eth0"]
        )
        .is_err());
}

/// Clears CAP_NET_ADMIN and CAP_NET_RAW from the calling thread's effective set (Linux
/// capabilities are per thread; threads it starts inherit the reduced set).
fn drop_net_caps_of_this_thread() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data structs, as capget(2) specifies.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut h as *mut Header, d.as_mut_ptr()),
            0
        );
        d[0].effective &= !((1 << 12) | (1 << 13)); // CAP_NET_ADMIN, CAP_NET_RAW
        assert_eq!(
            libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()),
            0
        );
    }
}

#[test]
fn without_the_capabilities_errors_say_what_is_needed() {
    setup();
    let fab = Fabric::new("nle").unwrap();
    let node = fab.node("node", &["198.18.0.11/24"]).unwrap();
    let path = node.path();
    let (add, garp, listed) = std::thread::spawn(move || {
        drop_net_caps_of_this_thread();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let k = Kernel::in_netns(&Netns::open(&path).unwrap()).unwrap();
            let listed = k.links().await.map(|l| l.len());
            let add = k
                .add_address(
                    "eth0",
                    "198.18.0.12/24".parse().unwrap(),
                    AddrOptions::default(),
                )
                .await;
            let garp = k
                .send_garp("eth0", ip("198.18.0.11"), GarpForm::Request)
                .await;
            (add, garp, listed)
        })
    })
    .join()
    .unwrap();
    assert!(listed.unwrap() >= 2, "reading needs no capability");
    for e in [add.unwrap_err(), garp.unwrap_err()] {
        assert!(matches!(e.kind, ErrorKind::PermissionDenied), "{e}");
        let s = e.to_string();
        assert!(
            s.contains("CAP_NET_ADMIN") && s.contains(node.name()),
            "{s}"
        );
    }
    assert!(!node
        .addr_list("eth0")
        .unwrap()
        .contains(&"198.18.0.12/24".to_string()));
}

/// A gate that opens and closes on command, per address.
struct Switch(std::sync::Mutex<BTreeSet<IpAddr>>);

impl berth_netlink::Gate for Switch {
    fn allows(&self, ip: IpAddr) -> bool {
        self.0.lock().unwrap().contains(&ip)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_withholds_answers_and_announcements() {
    setup();
    let fab = Fabric::new("nlg").unwrap();
    let r = fab
        .node("resp", &["198.18.0.11/24", "2001:db8::11/64"])
        .unwrap();
    let c = fab
        .node("client", &["198.18.0.100/24", "2001:db8::100/64"])
        .unwrap();
    let k = kernel(&r);
    let mr = mac_of(&r, "eth0").to_string();
    let (v4, v6) = (ip("198.18.0.77"), ip("2001:db8::77"));
    let gate = std::sync::Arc::new(Switch(std::sync::Mutex::new(BTreeSet::new())));
    k.set_gate(Some(gate.clone()));
    k.answer("eth0", [v4, v6].into()).await.unwrap();

    // Closed: no answer, and announcements fail with Gated.
    assert!(c
        .exec(
            "arping",
            ["-c", "2", "-w", "2", "-I", "eth0", "198.18.0.77"]
        )
        .is_err());
    assert!(c
        .exec(
            "ndisc6",
            ["-1", "-r", "2", "-w", "500", "2001:db8::77", "eth0"]
        )
        .is_err());
    let e = k
        .send_garp("eth0", v4, GarpForm::Request)
        .await
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Gated), "{e}");
    let e = k.send_unsolicited_na("eth0", v6).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Gated), "{e}");

    // Open for the IPv4 address only.
    gate.0.lock().unwrap().insert(v4);
    let out = c
        .exec(
            "arping",
            ["-c", "1", "-w", "3", "-I", "eth0", "198.18.0.77"],
        )
        .unwrap();
    assert!(out.to_lowercase().contains(&mr), "{out}");
    assert!(c
        .exec(
            "ndisc6",
            ["-1", "-r", "2", "-w", "500", "2001:db8::77", "eth0"]
        )
        .is_err());
    k.send_garp("eth0", v4, GarpForm::Request).await.unwrap();

    // Removing the gate opens everything.
    k.set_gate(None);
    let out = c
        .exec(
            "ndisc6",
            ["-1", "-r", "3", "-w", "500", "2001:db8::77", "eth0"],
        )
        .unwrap();
    assert!(out.to_lowercase().contains(&mr), "{out}");
    k.send_unsolicited_na("eth0", v6).await.unwrap();
}
