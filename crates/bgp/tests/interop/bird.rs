//! Interop with BIRD 2: session (Berth active, then passive), IPv4 and IPv6
//! routes with their attributes, withdraw on reload, peer restart.

use crate::common::*;
use std::time::Duration;

#[test]
fn bird_session_routes_withdraw_restart_passive() {
    let mut lab = Lab::new("bi");
    let r = lab.node("r", 1);
    let s = lab.node("s", 11);
    let bird_body = |passive: bool| {
        format!(
            "protocol bgp s1 from spk {{ neighbor 198.18.0.11 as 64513; passive {}; }}",
            if passive { "on" } else { "off" }
        )
    };
    let bird = lab.bird(&r, "bird", &bird_body(true));
    let status = lab.path("berth.status");
    let peer = "[[peer]]\naddress = \"198.18.0.1\"\nremote_as = 64512\nhold_time = 3\n";
    let mut berth = lab.berth(
        &s,
        "berth",
        &berth_conf("198.18.0.11", &status, peer, ANNOUNCE),
    );

    // Berth dials; BIRD is passive.
    wait_for("BIRD session Established", Duration::from_secs(15), || {
        bird.birdc("show protocols s1").contains("Established")
    });
    wait_for(
        "IPv4 route in BIRD's kernel table",
        Duration::from_secs(5),
        || {
            lab.kernel_route(&r.ns, "198.19.100.10")
                .contains("via 198.18.0.11")
        },
    );
    wait_for(
        "IPv6 route in BIRD's kernel table",
        Duration::from_secs(5),
        || lab.kernel_route(&r.ns, "2001:db8:100::10").contains("via"),
    );
    let v4 = bird.birdc("show route 198.19.100.10/32 all");
    for want in [
        "BGP.as_path: 64513",
        "BGP.next_hop: 198.18.0.11",
        "BGP.med: 10",
        "(64512,100)",
        "(64512, 1, 2)",
        "BGP.origin: IGP",
    ] {
        assert!(v4.contains(want), "missing {want:?} in:\n{v4}");
    }
    // Capabilities as BIRD saw them: 4-octet AS, route refresh, graceful restart.
    let caps = bird.birdc("show protocols all s1");
    let theirs = caps
        .split("Neighbor capabilities")
        .nth(1)
        .unwrap_or_default();
    for want in [
        "AF announced: ipv4 ipv6",
        "Route refresh",
        "Restart time: 120",
        "Restart recovery", // R bit: first session after the speaker started
        "AF preserved: ipv4 ipv6",
        "4-octet AS numbers",
    ] {
        assert!(theirs.contains(want), "missing {want:?} in:\n{caps}");
    }
    // RFC 2918: BIRD's `reload in` sends ROUTE-REFRESH; the speaker resends its RIB-out.
    wait_for("status file", Duration::from_secs(3), || {
        lab.berth_status("berth").contains("updates_out=")
    });
    let before = updates_out(&lab.berth_status("berth"));
    bird.birdc("reload in s1");
    wait_for(
        "RIB-out resent after ROUTE-REFRESH",
        Duration::from_secs(5),
        || updates_out(&lab.berth_status("berth")) > before,
    );
    let v6 = bird.birdc("show route 2001:db8:100::10/128 all");
    assert!(v6.contains("(64512,200)"), "{v6}");
    // Global next hop of the speaker's interface, plus its link-local one.
    assert!(v6.contains("BGP.next_hop: 2001:db8::b fe80::"), "{v6}");

    // Withdraw the IPv4 route by reloading the configuration.
    let only_v6 =
        "[[announce]]\nprefix = \"2001:db8:100::10/128\"\ncommunities = [\"64512:200\"]\n";
    lab.write(
        "berth.toml",
        &berth_conf("198.18.0.11", &status, peer, only_v6),
    );
    berth.signal(libc::SIGHUP);
    let t = wait_for("IPv4 route withdrawn", Duration::from_secs(5), || {
        lab.kernel_route(&r.ns, "198.19.100.10").is_empty()
    });
    eprintln!("withdraw reached BIRD's kernel table in {t:?}");
    assert!(
        lab.kernel_route(&r.ns, "2001:db8:100::10").contains("via"),
        "IPv6 route must stay"
    );
    wait_for("status file", Duration::from_secs(3), || {
        lab.berth_status("berth").contains("Established")
    });
    let st = lab.berth_status("berth");
    assert!(
        st.contains("established_transitions=1 "),
        "reload must not reset the session: {st}"
    );

    // Peer restart: kill BIRD, start it again; the session comes back.
    drop(bird);
    let bird = lab.bird(&r, "bird", &bird_body(true));
    wait_for(
        "re-established after BIRD restart",
        Duration::from_secs(15),
        || bird.birdc("show protocols s1").contains("Established"),
    );
    wait_for("IPv6 route back", Duration::from_secs(5), || {
        lab.kernel_route(&r.ns, "2001:db8:100::10").contains("via")
    });

    // Berth passive, BIRD dials.
    let passive =
        "[[peer]]\naddress = \"198.18.0.1\"\nremote_as = 64512\nhold_time = 3\npassive = true\n";
    lab.write(
        "berth.toml",
        &berth_conf("198.18.0.11", &status, passive, ANNOUNCE),
    );
    berth.signal(libc::SIGHUP);
    drop(bird);
    let bird = lab.bird(&r, "bird", &bird_body(false));
    wait_for(
        "Established with Berth passive",
        Duration::from_secs(15),
        || bird.birdc("show protocols s1").contains("Established"),
    );
    wait_for("IPv4 route back (passive)", Duration::from_secs(5), || {
        lab.kernel_route(&r.ns, "198.19.100.10")
            .contains("via 198.18.0.11")
    });
    let log = lab.log("berth");
    assert!(!log.contains("panicked"), "{log}");

    // SIGTERM: a clean shutdown withdraws our routes first, then Ceases.
    berth.signal(libc::SIGTERM);
    wait_for("speaker exited", Duration::from_secs(10), || {
        berth.daemon.try_status().is_some()
    });
    let code = berth.daemon.try_status().and_then(|s| s.code());
    assert_eq!(code, Some(0), "exit status after SIGTERM");
    let log = lab.log("berth");
    assert!(
        log.contains("routes withdrawn before Cease") && log.contains("withdrawn=2"),
        "{log}"
    );
    wait_for(
        "BIRD saw the Cease after the withdrawals",
        Duration::from_secs(5),
        || {
            lab.log("bird")
                .contains("Received: Administrative shutdown")
        },
    );
    wait_for(
        "routes gone from BIRD's kernel table",
        Duration::from_secs(5),
        || {
            lab.kernel_route(&r.ns, "198.19.100.10").is_empty()
                && lab.kernel_route(&r.ns, "2001:db8:100::10").is_empty()
        },
    );
}

fn updates_out(status: &str) -> u64 {
    status
        .split_whitespace()
        .find_map(|w| w.strip_prefix("updates_out="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// RFC 4724 as the restarting speaker: BIRD keeps our routes while we are
/// gone, and the End-of-RIB after the restart flushes what we no longer send.
#[test]
fn bird_graceful_restart_keeps_routes_and_end_of_rib_flushes() {
    let mut lab = Lab::new("gr");
    let r = lab.node("r", 1);
    let s = lab.node("s", 11);
    let bird = lab.bird(
        &r,
        "bird",
        "protocol bgp s1 from spk { neighbor 198.18.0.11 as 64513; graceful restart on; }",
    );
    let status = lab.path("berth.status");
    let peer = "[[peer]]\naddress = \"198.18.0.1\"\nremote_as = 64512\nhold_time = 3\n";
    let two = "[[announce]]\nprefix = \"198.19.100.10/32\"\n[[announce]]\nprefix = \"198.19.100.11/32\"\n";
    let berth = lab.berth(&s, "berth", &berth_conf("198.18.0.11", &status, peer, two));
    wait_for(
        "both routes in BIRD's kernel table",
        Duration::from_secs(15),
        || {
            lab.kernel_route(&r.ns, "198.19.100.10").contains("via")
                && lab.kernel_route(&r.ns, "198.19.100.11").contains("via")
        },
    );
    // Crash: no NOTIFICATION, TCP closes. BIRD must keep the routes (stale).
    drop(berth);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        lab.kernel_route(&r.ns, "198.19.100.10").contains("via"),
        "route dropped during graceful restart"
    );
    assert!(
        lab.kernel_route(&r.ns, "198.19.100.11").contains("via"),
        "route dropped during graceful restart"
    );
    let st = bird.birdc("show route 198.19.100.11/32 all");
    assert!(
        st.contains("stale") || bird.birdc("show protocols all s1").contains("restart"),
        "{st}"
    );
    // Restart with one route only: after End-of-RIB the other is flushed.
    let one = "[[announce]]\nprefix = \"198.19.100.10/32\"\n";
    let _berth2 = lab.berth(&s, "berth2", &berth_conf("198.18.0.11", &status, peer, one));
    wait_for(
        "stale route flushed by End-of-RIB",
        Duration::from_secs(15),
        || lab.kernel_route(&r.ns, "198.19.100.11").is_empty(),
    );
    assert!(
        lab.kernel_route(&r.ns, "198.19.100.10").contains("via"),
        "the re-announced route must stay"
    );
    assert!(bird.birdc("show protocols s1").contains("Established"));
}

/// A session over IPv6 carrying IPv4 and IPv6 routes (the IPv4 NEXT_HOP comes
/// from the IPv4 address of the session's interface), with BFD over IPv6.
#[test]
fn bird_session_over_ipv6() {
    let mut lab = Lab::new("b6");
    let r = lab.node("r", 1);
    let s = lab.node("s", 11);
    let bird = lab.bird(
        &r,
        "bird",
        "protocol bgp s1 from spk { neighbor 2001:db8::b as 64513; bfd on; }",
    );
    let status = lab.path("berth.status");
    let peer = "[[peer]]\naddress = \"2001:db8::1\"\nremote_as = 64512\nhold_time = 3\nbfd = { min_rx_ms = 100, min_tx_ms = 100, multiplier = 3 }\n";
    let _berth = lab.berth(
        &s,
        "berth",
        &berth_conf("198.18.0.11", &status, peer, ANNOUNCE),
    );
    wait_for("IPv6 session Established", Duration::from_secs(15), || {
        bird.birdc("show protocols s1").contains("Established")
    });
    wait_for(
        "both routes in BIRD's kernel table",
        Duration::from_secs(5),
        || {
            lab.kernel_route(&r.ns, "198.19.100.10")
                .contains("via 198.18.0.11")
                && lab.kernel_route(&r.ns, "2001:db8:100::10").contains("via")
        },
    );
    let v6 = bird.birdc("show route 2001:db8:100::10/128 all");
    assert!(v6.contains("BGP.next_hop: 2001:db8::b fe80::"), "{v6}");
    // BFD over IPv6 (hop limit 255 both ways).
    wait_for("BFD Up over IPv6", Duration::from_secs(10), || {
        bird.birdc("show bfd sessions").contains("Up")
            && lab.berth_status("berth").contains("bfd=Up")
    });
}
