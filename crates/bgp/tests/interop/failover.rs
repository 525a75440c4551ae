//! Failover: with BFD (100 ms × 3) the speaker's link going down makes BIRD
//! and FRR detect within 300 ms (3 × 100 ms after our last packet, which is
//! never more than 100 ms old); BIRD's kernel route goes ~1 ms later, FRR's
//! ~71 ms later (FRR's own work-queue holds, see the README). Without BFD a
//! frozen speaker (SIGSTOP) is dropped after the 3 s hold time.

use crate::common::*;
use crate::frr::frr_conf;
use std::time::{Duration, Instant};

fn fs_read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

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
    let bird = lab.bird(
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
    let _bfd_speaker = lab.berth(
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
    let mut p2 = lab.berth(
        &s2,
        "hold",
        &berth_conf(
            "198.18.0.12",
            &st2,
            peers2,
            "[[announce]]\nprefix = \"198.19.100.20/32\"\n",
        ),
    );

    // The BFD packets each router receives (captured from the start).
    let cap = [
        "tcpdump", "-n", "-i", "eth0", "-tt", "-l", "-U", "udp", "port", "3784",
    ];
    lab.spawn(&r1.ns, "cap-bird", &cap);
    lab.spawn(&r2.ns, "cap-frr", &cap);

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
        bird.birdc("show bfd sessions").contains("Up")
            && frr
                .vtysh("show bfd peer 198.18.0.11")
                .contains("Status: up")
            && lab.berth_status("bfd").matches("bfd=Up").count() == 2
    });
    // Let the Poll sequence settle the fast timers on both sides.
    std::thread::sleep(Duration::from_millis(1500));

    if std::env::var_os("BERTH_DEBUG_BFD").is_some() {
        eprintln!("{}", frr.vtysh("show bfd peer 198.18.0.11"));
        eprintln!("{}", bird.birdc("show bfd sessions"));
    }
    // Route events (`ip -ts monitor`), the speaker's link-down event, and the
    // BFD packets each router receives from the speaker (tcpdump), all with
    // timestamps taken as they happen: no polling error in the figures.
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
    lab.spawn(
        &s1.ns,
        "mon-link",
        &["env", "TZ=UTC", "ip", "-ts", "monitor", "link"],
    );
    wait_for(
        "tcpdump sees our BFD packets",
        Duration::from_secs(5),
        || {
            !tcpdump_times(&lab.log("cap-bird"), "198.18.0.11").is_empty()
                && !tcpdump_times(&lab.log("cap-frr"), "198.18.0.11").is_empty()
        },
    );
    // Give the `ip monitor`s time to subscribe before the first event.
    std::thread::sleep(Duration::from_millis(300));
    // Two rounds: the second one after the link came back, when the BFD
    // sessions restart from FRR's and BIRD's slow (1 s) timers.
    for round in 0..2 {
        if round > 0 {
            lab.netns(&s1.ns).set_link("eth0", true).unwrap();
            wait_for(
                "routes back in both kernels",
                Duration::from_secs(30),
                || {
                    lab.kernel_route(&r1.ns, "198.19.100.10")
                        .contains("198.18.0.11")
                        && lab
                            .kernel_route(&r2.ns, "198.19.100.10")
                            .contains("198.18.0.11")
                },
            );
            wait_for("BFD Up again", Duration::from_secs(15), || {
                bird.birdc("show bfd sessions").contains("Up")
                    && frr
                        .vtysh("show bfd peer 198.18.0.11")
                        .contains("Status: up")
            });
            std::thread::sleep(Duration::from_millis(1500));
        }
        let t0 = utc_day_seconds();
        lab.netns(&s1.ns).set_link("eth0", false).unwrap();
        let (bird_poll, frr_poll) = gone_from_both(
            &lab,
            &r1.ns,
            &r2.ns,
            "198.19.100.10",
            "198.18.0.11",
            Duration::from_secs(5),
        );
        std::thread::sleep(Duration::from_millis(200));
        let ms = |a: f64, b: f64| (b - a) * 1000.0;
        // The kernel's link-down event in the speaker's namespace (t0 if missing).
        let down =
            monitor_time_after(&lab.log("mon-link"), t0, &["eth0", "state DOWN"]).unwrap_or(t0);
        let deleted = |name: &str| {
            monitor_time_after(&lab.log(name), t0, &["Deleted", "198.19.100.10 "])
                .unwrap_or_else(|| panic!("no delete event in {name}"))
        };
        // No packet gets through once the link is down: the last one seen is the
        // last one sent.
        let last_rx = |name: &str| {
            tcpdump_times(&lab.log(name), "198.18.0.11")
                .into_iter()
                .filter(|&t| t < down + 0.05)
                .fold(f64::NAN, f64::max)
        };
        // Until the link went down we kept sending to both routers every
        // 75-90 ms: no stall after the session came (back) up, e.g. from a
        // transmit timer left at FRR's initial 1 s (that gave 750-1000 ms gaps
        // and a flap every ~330 ms). 150 ms allows for a busy host (up to
        // 112 ms measured) and stays far below the 300 ms detection.
        for name in ["cap-bird", "cap-frr"] {
            let ts: Vec<f64> = tcpdump_times(&lab.log(name), "198.18.0.11")
                .into_iter()
                .filter(|&t| t > down - 1.4 && t < down + 0.05)
                .collect();
            let gap = ts.windows(2).map(|w| ms(w[0], w[1])).fold(0.0, f64::max);
            assert!(
                ts.len() >= 9 && gap <= 150.0,
                "round {round}, {name}: {} packets in the last 1.4 s before link down, longest gap {gap:.1} ms",
                ts.len()
            );
        }
        let (bird_del, frr_del) = (deleted("mon-bird"), deleted("mon-frr"));
        let (bird_last, frr_last) = (last_rx("cap-bird"), last_rx("cap-frr"));
        let frr_detect = frr_log_time(
            &fs_read(&frr.dir().join("bfdd.dlog")),
            t0,
            &["state-change", "peer:198.18.0.11", "up -> down"],
        )
        .expect("FRR bfdd logged no up -> down for 198.18.0.11");
        let (bird_ms, frr_ms) = (ms(down, bird_del), ms(down, frr_del));
        eprintln!(
            "BFD failover {round}, link down -> kernel route delete: BIRD {bird_ms:.1} ms, FRR {frr_ms:.1} ms \
             (from the `ip link` command: BIRD {:.1}, FRR {:.1}; by polling: BIRD {bird_poll:?}, FRR {frr_poll:?})\n  \
             last BFD packet before link down: BIRD {:.1} ms, FRR {:.1} ms; \
             BIRD deleted {:.1} ms after it; FRR bfdd detected {:.1} ms after it, \
             FRR's bfdd -> bgpd -> zebra -> kernel took {:.1} ms",
            ms(t0, bird_del),
            ms(t0, frr_del),
            ms(bird_last, down),
            ms(frr_last, down),
            ms(bird_last, bird_del),
            ms(frr_last, frr_detect),
            ms(frr_detect, frr_del),
        );
        // What the speaker owes: BFD packets right up to the link failure, with
        // timers that make the peer detect 3 x 100 ms after the last one.
        for (who, last) in [("BIRD", bird_last), ("FRR", frr_last)] {
            assert!(
                ms(last, down) <= 150.0,
                "{who}: last BFD packet {:.1} ms before link down",
                ms(last, down)
            );
        }
        assert!(
            (295.0..=320.0).contains(&ms(frr_last, frr_detect)),
            "FRR detected {:.1} ms after our last packet, not 3 x 100 ms",
            ms(frr_last, frr_detect)
        );
        // Link down -> route gone is 300 ms minus the age of the last packet plus
        // the router's own processing. BIRD's is ~1 ms (up to 9 ms on a busy
        // host), so it stays within 300 ms except when the link fails within
        // those ms after a packet; 315 ms covers that.
        assert!(
            ms(bird_last, bird_del) <= 315.0 && bird_ms <= 315.0,
            "BIRD took {bird_ms:.1} ms ({:.1} ms after our last packet)",
            ms(bird_last, bird_del)
        );
        // FRR 8.4 adds a fixed ~71 ms after its detection, whoever the speaker is:
        // bgpd's clear-node queue holds 10 ms, its route-process queue 50 ms and
        // zebra's RIB queue 10 ms (bgp_route.c, zebra_router.h) before the kernel
        // delete. Link down -> route gone is therefore 300 - age + ~71 ms, i.e.
        // ~281-371 ms for any speaker at 100 ms x 3 (BIRD as the speaker gives the
        // same); only the detection part is the speaker's.
        assert!(
            ms(frr_detect, frr_del) <= 170.0,
            "FRR's own pipeline took {:.1} ms",
            ms(frr_detect, frr_del)
        );
        // 71-84 ms typically (p90); up to 163 ms measured while other builds
        // loaded the host. FRR's total: typically 289-375 ms.
        assert!(frr_ms <= 450.0, "FRR took {frr_ms:.1} ms");
    }
    // Our side saw it too: the BGP sessions were torn down by BFD.
    wait_for(
        "speaker dropped its sessions on BFD Down",
        Duration::from_secs(3),
        || lab.log("bfd").matches("BFD session went down").count() >= 2,
    );

    // No BFD: freeze the other speaker; the hold timer (3 s) removes it.
    p2.signal(libc::SIGSTOP);
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
    p2.signal(libc::SIGCONT);
}
