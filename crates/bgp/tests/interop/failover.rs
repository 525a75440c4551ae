//! Failover: with BFD (100 ms × 3) the speaker's link going down removes its
//! route from BIRD's and FRR's kernel tables within ~300 ms; without BFD a
//! frozen speaker (SIGSTOP) is dropped after the 3 s hold time.

use crate::common::*;
use crate::frr::frr_conf;
use std::time::{Duration, Instant};

/// Waits until both routers' kernel tables lost the route; returns each delay.
fn gone_from_both(
    lab: &Lab,
    r1: &str,
    r2: &str,
    prefix: &str,
    via: &str,
    limit: Duration,
) -> (Duration, Duration) {
    let t = Instant::now();
    let (mut d1, mut d2) = (None, None);
    while (d1.is_none() || d2.is_none()) && t.elapsed() < limit {
        if d1.is_none() && !lab.kernel_route(r1, prefix).contains(via) {
            d1 = Some(t.elapsed());
        }
        if d2.is_none() && !lab.kernel_route(r2, prefix).contains(via) {
            d2 = Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    match (d1, d2) {
        (Some(a), Some(b)) => (a, b),
        _ => panic!(
            "route {prefix} via {via} still present after {limit:?}: BIRD {d1:?}, FRR {d2:?}"
        ),
    }
}

#[test]
fn bfd_link_down_and_hold_time_failover() {
    let mut lab = Lab::new_exclusive("fo");
    let r1 = lab.node("r1", 1);
    let r2 = lab.node("r2", 2);
    let s1 = lab.node("s1", 11);
    let s2 = lab.node("s2", 12);
    let (_b, sock) = lab.bird(
        &r1,
        "bird",
        "protocol bgp s1 from spk { neighbor 198.18.0.11 as 64513; bfd on; }\n\
         protocol bgp s2 from spk { neighbor 198.18.0.12 as 64513; }",
    );
    let frr = lab.frr(
        &r2,
        "frr",
        &frr_conf(
            "198.18.0.2",
            &[("198.18.0.11", "bfd profile fast"), ("198.18.0.12", "")],
        ),
    );
    let bfd = "bfd = { min_rx_ms = 100, min_tx_ms = 100, multiplier = 3 }\n";
    let peers1 = format!(
        "[[peer]]\naddress = \"198.18.0.1\"\nremote_as = 64512\nhold_time = 3\n{bfd}[[peer]]\naddress = \"198.18.0.2\"\nremote_as = 64512\nhold_time = 3\n{bfd}"
    );
    let peers2 = "[[peer]]\naddress = \"198.18.0.1\"\nremote_as = 64512\nhold_time = 3\n[[peer]]\naddress = \"198.18.0.2\"\nremote_as = 64512\nhold_time = 3\n";
    let st1 = lab.path("bfd.status");
    lab.berth(
        &s1,
        "bfd",
        &berth_conf(
            "198.18.0.11",
            &st1,
            &peers1,
            "[[announce]]\nprefix = \"198.19.100.10/32\"\n",
        ),
    );
    let st2 = lab.path("hold.status");
    let p2 = lab.berth(
        &s2,
        "hold",
        &berth_conf(
            "198.18.0.12",
            &st2,
            peers2,
            "[[announce]]\nprefix = \"198.19.100.20/32\"\n",
        ),
    );

    wait_for("routes in both kernels", Duration::from_secs(20), || {
        lab.kernel_route(&r1.ns, "198.19.100.10")
            .contains("198.18.0.11")
            && lab
                .kernel_route(&r2.ns, "198.19.100.10")
                .contains("198.18.0.11")
            && lab
                .kernel_route(&r1.ns, "198.19.100.20")
                .contains("198.18.0.12")
            && lab
                .kernel_route(&r2.ns, "198.19.100.20")
                .contains("198.18.0.12")
    });
    wait_for("BFD Up with BIRD and FRR", Duration::from_secs(15), || {
        lab.birdc(&sock, "show bfd sessions").contains("Up")
            && lab
                .vtysh(&frr, "show bfd peer 198.18.0.11")
                .contains("Status: up")
            && lab.berth_status("bfd").matches("bfd=Up").count() == 2
    });
    // Let the Poll sequence settle the fast timers on both sides.
    std::thread::sleep(Duration::from_millis(1500));

    if std::env::var_os("BERTH_DEBUG_BFD").is_some() {
        eprintln!("{}", lab.vtysh(&frr, "show bfd peer 198.18.0.11"));
        eprintln!("{}", lab.birdc(&sock, "show bfd sessions"));
    }
    // Route events with kernel-side timestamps: no polling error in the figures.
    lab.spawn(
        &r1.ns,
        "mon-bird",
        &["env", "TZ=UTC", "ip", "-ts", "monitor", "route"],
    );
    lab.spawn(
        &r2.ns,
        "mon-frr",
        &["env", "TZ=UTC", "ip", "-ts", "monitor", "route"],
    );
    std::thread::sleep(Duration::from_millis(300));
    let t0 = utc_day_seconds();
    must("ip", &["-n", &s1.ns, "link", "set", "eth0", "down"]);
    let (bird_poll, frr_poll) = gone_from_both(
        &lab,
        &r1.ns,
        &r2.ns,
        "198.19.100.10",
        "198.18.0.11",
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(200));
    let at = |name: &str| {
        let t = monitor_time(&lab.log(name), &["Deleted", "198.19.100.10"])
            .unwrap_or_else(|| panic!("no delete event in {name}"));
        Duration::from_secs_f64((t - t0).max(0.0))
    };
    let (bird_ms, frr_ms) = (at("mon-bird"), at("mon-frr"));
    eprintln!("BFD failover (kernel route delete event): BIRD {bird_ms:?}, FRR {frr_ms:?}; by polling: BIRD {bird_poll:?}, FRR {frr_poll:?}");
    // Detection is 3 × 100 ms after the last packet we sent (sent every 75–100 ms),
    // so BIRD drops the route within 300 ms. FRR adds its own bfdd → bgpd → zebra
    // → kernel pipeline on top (measured 290–375 ms here), so it gets 450 ms.
    assert!(
        bird_ms <= Duration::from_millis(300),
        "BIRD took {bird_ms:?}"
    );
    assert!(frr_ms <= Duration::from_millis(450), "FRR took {frr_ms:?}");
    // Our side saw it too: the BGP sessions were torn down by BFD.
    wait_for(
        "speaker dropped its sessions on BFD Down",
        Duration::from_secs(3),
        || lab.log("bfd").matches("BFD session went down").count() >= 2,
    );

    // No BFD: freeze the other speaker; the hold timer (3 s) removes it.
    lab.signal(p2, libc::SIGSTOP);
    let (bird_h, frr_h) = gone_from_both(
        &lab,
        &r1.ns,
        &r2.ns,
        "198.19.100.20",
        "198.18.0.12",
        Duration::from_secs(8),
    );
    eprintln!("hold-time failover: BIRD {bird_h:?}, FRR {frr_h:?}");
    for d in [bird_h, frr_h] {
        assert!(
            d >= Duration::from_millis(1500) && d <= Duration::from_millis(4500),
            "hold-time failover took {d:?}"
        );
    }
    lab.signal(p2, libc::SIGCONT);
}
