//! Interop with gobgpd 3: session (Berth active, then passive), IPv4/IPv6
//! routes with attributes, withdraw, gobgpd restart.

use crate::common::*;
use std::time::Duration;

fn gobgp_conf(passive: bool) -> String {
    format!(
        r#"[global.config]
  as = 64512
  router-id = "198.18.0.1"
  port = 179
[[neighbors]]
  [neighbors.config]
    neighbor-address = "198.18.0.11"
    peer-as = 64513
  [neighbors.timers.config]
    hold-time = 3
    keepalive-interval = 1
    connect-retry = 1
  [neighbors.transport.config]
    passive-mode = {passive}
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
"#
    )
}

#[test]
fn gobgp_session_routes_withdraw_restart_passive() {
    let mut lab = Lab::new("go");
    let r = lab.node("r", 1);
    let s = lab.node("s", 11);
    let gob = lab.gobgpd(&r, "gobgpd", &gobgp_conf(true));
    let status = lab.path("berth.status");
    let peer = "[[peer]]\naddress = \"198.18.0.1\"\nremote_as = 64512\nhold_time = 3\n";
    let mut berth = lab.berth(
        &s,
        "berth",
        &berth_conf("198.18.0.11", &status, peer, ANNOUNCE),
    );

    let established = |g: &Gobgpd| {
        g.gobgp(&["neighbor", "198.18.0.11"])
            .to_lowercase()
            .contains("bgp state = established")
    };
    wait_for(
        "gobgpd session established",
        Duration::from_secs(20),
        || established(&gob),
    );
    wait_for("IPv4 route in gobgpd", Duration::from_secs(5), || {
        gob.gobgp(&["global", "rib", "-a", "ipv4"])
            .contains("198.19.100.10/32")
    });
    let v4 = gob.gobgp(&["global", "rib", "-a", "ipv4", "198.19.100.10/32"]);
    for want in ["198.18.0.11", "64513", "Med: 10", "64512:100", "64512:1:2"] {
        assert!(v4.contains(want), "missing {want:?} in:\n{v4}");
    }
    wait_for("IPv6 route in gobgpd", Duration::from_secs(5), || {
        gob.gobgp(&["global", "rib", "-a", "ipv6"])
            .contains("2001:db8:100::10/128")
    });
    let v6 = gob.gobgp(&["global", "rib", "-a", "ipv6", "2001:db8:100::10/128"]);
    for want in ["2001:db8::b", "64512:200"] {
        assert!(v6.contains(want), "missing {want:?} in:\n{v6}");
    }

    let only_v6 = "[[announce]]\nprefix = \"2001:db8:100::10/128\"\n";
    lab.write(
        "berth.toml",
        &berth_conf("198.18.0.11", &status, peer, only_v6),
    );
    berth.signal(libc::SIGHUP);
    wait_for(
        "IPv4 route withdrawn from gobgpd",
        Duration::from_secs(5),
        || {
            !gob.gobgp(&["global", "rib", "-a", "ipv4"])
                .contains("198.19.100.10/32")
        },
    );
    assert!(gob
        .gobgp(&["global", "rib", "-a", "ipv6"])
        .contains("2001:db8:100::10/128"));

    // gobgpd restart.
    drop(gob);
    let gob = lab.gobgpd(&r, "gobgpd2", &gobgp_conf(true));
    wait_for(
        "re-established after gobgpd restart",
        Duration::from_secs(20),
        || established(&gob),
    );
    wait_for("IPv6 route back", Duration::from_secs(5), || {
        gob.gobgp(&["global", "rib", "-a", "ipv6"])
            .contains("2001:db8:100::10/128")
    });

    // Berth passive, gobgpd dials.
    let passive =
        "[[peer]]\naddress = \"198.18.0.1\"\nremote_as = 64512\nhold_time = 3\npassive = true\n";
    lab.write(
        "berth.toml",
        &berth_conf("198.18.0.11", &status, passive, ANNOUNCE),
    );
    berth.signal(libc::SIGHUP);
    drop(gob);
    let gob = lab.gobgpd(&r, "gobgpd3", &gobgp_conf(false));
    wait_for(
        "established with Berth passive",
        Duration::from_secs(20),
        || established(&gob),
    );
    wait_for("IPv4 route back (passive)", Duration::from_secs(5), || {
        gob.gobgp(&["global", "rib", "-a", "ipv4"])
            .contains("198.19.100.10/32")
    });
}
