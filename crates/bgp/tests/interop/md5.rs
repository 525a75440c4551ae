//! TCP MD5 (RFC 2385) with BIRD (BIRD dials: Berth's listen socket carries
//! the key) and FRR (Berth dials: the connect socket carries it). A wrong
//! password keeps the session down on both.

use crate::common::*;
use crate::frr::frr_conf;
use std::time::{Duration, Instant};

#[test]
fn md5_sessions_and_wrong_password() {
    let mut lab = Lab::new("md");
    let r1 = lab.node("r1", 1);
    let r2 = lab.node("r2", 2);
    let s1 = lab.node("s1", 11);
    let s2 = lab.node("s2", 12);
    let bird = lab.bird(
        &r1,
        "bird",
        "protocol bgp s1 from spk { neighbor 198.18.0.11 as 64513; password \"s3cret\"; }\n\
         protocol bgp s2 from spk { neighbor 198.18.0.12 as 64513; password \"s3cret\"; }",
    );
    let frr = lab.frr(
        &r2,
        "frr",
        &frr_conf(
            "198.18.0.2",
            &[
                ("198.18.0.11", "password s3cret\npassive"),
                ("198.18.0.12", "password s3cret\npassive"),
            ],
        ),
    );
    let peers = |pw: &str| {
        format!(
            "[[peer]]\naddress = \"198.18.0.1\"\nremote_as = 64512\nhold_time = 3\npassive = true\npassword = \"{pw}\"\n\
             [[peer]]\naddress = \"198.18.0.2\"\nremote_as = 64512\nhold_time = 3\npassword = \"{pw}\"\n"
        )
    };
    let ann = "[[announce]]\nprefix = \"198.19.100.10/32\"\n";
    let st1 = lab.path("good.status");
    let mut good_speaker = lab.berth(
        &s1,
        "good",
        &berth_conf("198.18.0.11", &st1, &peers("s3cret"), ann),
    );
    let st2 = lab.path("bad.status");
    let mut bad_speaker = lab.berth(
        &s2,
        "bad",
        &berth_conf("198.18.0.12", &st2, &peers("wrong"), ann),
    );

    wait_for(
        "BIRD MD5 session (Berth passive) Established",
        Duration::from_secs(20),
        || bird.birdc("show protocols s1").contains("Established"),
    );
    wait_for(
        "FRR MD5 session (Berth active) Established",
        Duration::from_secs(20),
        || {
            frr.vtysh("show bgp neighbor 198.18.0.11")
                .contains("BGP state = Established")
        },
    );
    wait_for(
        "route via the authenticated speaker",
        Duration::from_secs(5),
        || {
            lab.kernel_route(&r1.ns, "198.19.100.10")
                .contains("198.18.0.11")
                && lab
                    .kernel_route(&r2.ns, "198.19.100.10")
                    .contains("198.18.0.11")
        },
    );
    // Give the wrong-password speaker several connect attempts.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        assert!(
            !bird.birdc("show protocols s2").contains("Established"),
            "wrong password established with BIRD"
        );
        assert!(
            !frr.vtysh("show bgp neighbor 198.18.0.12")
                .contains("BGP state = Established"),
            "wrong password established with FRR"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(!lab
        .kernel_route(&r1.ns, "198.19.100.10")
        .contains("198.18.0.12"));
    assert!(!lab
        .kernel_route(&r2.ns, "198.19.100.10")
        .contains("198.18.0.12"));
    let bad = lab.berth_status("bad");
    assert!(!bad.contains("state=Established"), "{bad}");
    let good = lab.berth_status("good");
    assert_eq!(good.matches("state=Established").count(), 2, "{good}");

    // Fix the password by reloading: the sessions come up.
    lab.write(
        "bad.toml",
        &berth_conf("198.18.0.12", &st2, &peers("s3cret"), ann),
    );
    bad_speaker.signal(libc::SIGHUP);
    wait_for(
        "corrected password establishes with BIRD and FRR",
        Duration::from_secs(20),
        || {
            bird.birdc("show protocols s2").contains("Established")
                && frr
                    .vtysh("show bgp neighbor 198.18.0.12")
                    .contains("BGP state = Established")
        },
    );
    // A new peer on the good speaker leaves its existing sessions alone.
    let more = format!(
        "{}[[peer]]\naddress = \"198.18.0.99\"\nremote_as = 64599\n",
        peers("s3cret")
    );
    lab.write("good.toml", &berth_conf("198.18.0.11", &st1, &more, ann));
    good_speaker.signal(libc::SIGHUP);
    wait_for("third peer configured", Duration::from_secs(5), || {
        lab.berth_status("good").contains("peer=198.18.0.99")
    });
    std::thread::sleep(Duration::from_millis(1500));
    let good = lab.berth_status("good");
    assert_eq!(
        good.matches("state=Established established_transitions=1 ")
            .count(),
        2,
        "{good}"
    );
}
