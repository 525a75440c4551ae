//! Two Berth speakers announcing the same /32: BIRD and FRR each install a
//! two-path ECMP route in their kernel table.

use crate::common::*;
use crate::frr::frr_conf;
use std::time::Duration;

#[test]
fn two_speakers_give_ecmp_in_bird_and_frr() {
    let mut lab = Lab::new("ec");
    let r1 = lab.node("r1", 1);
    let r2 = lab.node("r2", 2);
    let s1 = lab.node("s1", 11);
    let s2 = lab.node("s2", 12);
    let bird = lab.bird(
        &r1,
        "bird",
        "protocol bgp s1 from spk { neighbor 198.18.0.11 as 64513; }\nprotocol bgp s2 from spk { neighbor 198.18.0.12 as 64513; }",
    );
    let _f = lab.frr(
        &r2,
        "frr",
        &frr_conf("198.18.0.2", &[("198.18.0.11", ""), ("198.18.0.12", "")]),
    );
    let peers = "[[peer]]\naddress = \"198.18.0.1\"\nremote_as = 64512\nhold_time = 3\n[[peer]]\naddress = \"198.18.0.2\"\nremote_as = 64512\nhold_time = 3\n";
    let ann = "[[announce]]\nprefix = \"198.19.100.10/32\"\n[[announce]]\nprefix = \"2001:db8:100::10/128\"\n";
    let mut speakers = Vec::new();
    for (n, node, id) in [
        ("berth1", &s1, "198.18.0.11"),
        ("berth2", &s2, "198.18.0.12"),
    ] {
        let st = lab.path(&format!("{n}.status"));
        speakers.push(lab.berth(node, n, &berth_conf(id, &st, peers, ann)));
    }
    let two_paths = |out: &str, a: &str, b: &str| {
        out.contains(&format!("nexthop via {a}")) && out.contains(&format!("nexthop via {b}"))
    };
    let t = wait_for(
        "two-path ECMP route in BIRD's kernel table",
        Duration::from_secs(20),
        || {
            two_paths(
                &lab.kernel_route(&r1.ns, "198.19.100.10"),
                "198.18.0.11",
                "198.18.0.12",
            )
        },
    );
    eprintln!("BIRD ECMP after {t:?}");
    wait_for(
        "two-path ECMP route in FRR's kernel table",
        Duration::from_secs(20),
        || {
            two_paths(
                &lab.kernel_route(&r2.ns, "198.19.100.10"),
                "198.18.0.11",
                "198.18.0.12",
            )
        },
    );
    let b = bird.birdc("show route 198.19.100.10/32");
    assert!(b.contains("s1") && b.contains("s2"), "{b}");
    // IPv6 too: two next hops in both kernels.
    wait_for(
        "IPv6 ECMP in BIRD's kernel table",
        Duration::from_secs(10),
        || {
            lab.kernel_route(&r1.ns, "2001:db8:100::10")
                .matches("nexthop via")
                .count()
                == 2
        },
    );
    wait_for(
        "IPv6 ECMP in FRR's kernel table",
        Duration::from_secs(10),
        || {
            lab.kernel_route(&r2.ns, "2001:db8:100::10")
                .matches("nexthop via")
                .count()
                == 2
        },
    );
}
