//! Interop with FRR 8.4 (zebra + bfdd + bgpd): session (Berth active, then
//! passive), IPv4/IPv6 routes with attributes, withdraw, bgpd restart.

use crate::common::*;
use std::time::Duration;

pub fn frr_conf(router_id: &str, neighbors: &[(&str, &str)]) -> String {
    // (address, extra neighbor lines)
    let mut s = format!(
        "frr defaults traditional\nhostname r\n!\nrouter bgp 64512\n bgp router-id {router_id}\n no bgp ebgp-requires-policy\n no bgp network import-check\n timers bgp 1 3\n",
    );
    for (a, extra) in neighbors {
        s.push_str(&format!(
            " neighbor {a} remote-as 64513\n neighbor {a} timers connect 1\n"
        ));
        for l in extra.lines().filter(|l| !l.trim().is_empty()) {
            s.push_str(&format!(" neighbor {a} {}\n", l.trim()));
        }
    }
    s.push_str(" address-family ipv4 unicast\n  maximum-paths 8\n exit-address-family\n address-family ipv6 unicast\n  maximum-paths 8\n");
    for (a, _) in neighbors {
        s.push_str(&format!("  neighbor {a} activate\n"));
    }
    s.push_str(" exit-address-family\n!\n");
    s
}

#[test]
fn frr_session_routes_withdraw_restart_passive() {
    let mut lab = Lab::new("fr");
    let r = lab.node("r", 1);
    let s = lab.node("s", 11);
    let mut frr = lab.frr(
        &r,
        "frr",
        &frr_conf("198.18.0.1", &[("198.18.0.11", "passive")]),
    );
    let status = lab.path("berth.status");
    let peer = "[[peer]]\naddress = \"198.18.0.1\"\nremote_as = 64512\nhold_time = 3\n";
    let mut berth = lab.berth(
        &s,
        "berth",
        &berth_conf("198.18.0.11", &status, peer, ANNOUNCE),
    );

    wait_for("FRR session Established", Duration::from_secs(20), || {
        frr.vtysh("show bgp neighbor 198.18.0.11")
            .contains("BGP state = Established")
    });
    wait_for(
        "IPv4 route in FRR's kernel table",
        Duration::from_secs(5),
        || {
            lab.kernel_route(&r.ns, "198.19.100.10")
                .contains("via 198.18.0.11")
        },
    );
    wait_for(
        "IPv6 route in FRR's kernel table",
        Duration::from_secs(5),
        || lab.kernel_route(&r.ns, "2001:db8:100::10").contains("via"),
    );
    let v4 = frr.vtysh("show bgp ipv4 unicast 198.19.100.10/32");
    for want in [
        "64513",
        "metric 10",
        "Community: 64512:100",
        "Large Community: 64512:1:2",
        "198.18.0.11",
    ] {
        assert!(v4.contains(want), "missing {want:?} in:\n{v4}");
    }
    let v6 = frr.vtysh("show bgp ipv6 unicast 2001:db8:100::10/128");
    for want in ["Community: 64512:200", "2001:db8::b", "fe80::"] {
        assert!(v6.contains(want), "missing {want:?} in:\n{v6}");
    }

    let only_v6 = "[[announce]]\nprefix = \"2001:db8:100::10/128\"\n";
    lab.write(
        "berth.toml",
        &berth_conf("198.18.0.11", &status, peer, only_v6),
    );
    berth.signal(libc::SIGHUP);
    wait_for(
        "IPv4 route withdrawn from FRR",
        Duration::from_secs(5),
        || lab.kernel_route(&r.ns, "198.19.100.10").is_empty(),
    );
    assert!(lab.kernel_route(&r.ns, "2001:db8:100::10").contains("via"));

    // Restart bgpd only.
    frr.restart_bgpd(lab.netns(&r.ns)).unwrap();
    wait_for(
        "re-established after bgpd restart",
        Duration::from_secs(20),
        || {
            frr.vtysh("show bgp neighbor 198.18.0.11")
                .contains("BGP state = Established")
        },
    );
    wait_for("IPv6 route back", Duration::from_secs(5), || {
        lab.kernel_route(&r.ns, "2001:db8:100::10").contains("via")
    });

    // Berth passive; FRR dials.
    let passive =
        "[[peer]]\naddress = \"198.18.0.1\"\nremote_as = 64512\nhold_time = 3\npassive = true\n";
    lab.write(
        "berth.toml",
        &berth_conf("198.18.0.11", &status, passive, ANNOUNCE),
    );
    berth.signal(libc::SIGHUP);
    frr.configure(&["router bgp 64512", "no neighbor 198.18.0.11 passive"]);
    wait_for(
        "Established with Berth passive",
        Duration::from_secs(20),
        || {
            frr.vtysh("show bgp neighbor 198.18.0.11")
                .contains("BGP state = Established")
                && lab.berth_status("berth").contains("state=Established")
        },
    );
    wait_for("IPv4 route back (passive)", Duration::from_secs(5), || {
        lab.kernel_route(&r.ns, "198.19.100.10")
            .contains("via 198.18.0.11")
    });
}
