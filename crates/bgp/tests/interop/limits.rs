//! Maximum-prefix limits against a real peer: BIRD announces more prefixes
//! than the speaker allows. The speaker sends Cease subcode 1 with the AFI,
//! SAFI and limit (RFC 4486 §4), refuses BIRD's calls while held down, comes
//! back after the restart time, and limits changed by SIGHUP apply to the
//! running session without a reset.

use crate::common::*;
use std::time::{Duration, Instant};

/// BIRD sends 8 IPv4 and 2 IPv6 prefixes (static routes) to the speaker.
const BIRD: &str = r#"
log stderr all;
protocol static st4 { ipv4;
  route 198.19.200.0/24 unreachable; route 198.19.201.0/24 unreachable;
  route 198.19.202.0/24 unreachable; route 198.19.203.0/24 unreachable;
  route 198.19.204.0/24 unreachable; route 198.19.205.0/24 unreachable;
  route 198.19.206.0/24 unreachable; route 198.19.207.0/24 unreachable;
}
protocol static st6 { ipv6;
  route 2001:db8:200::/48 unreachable; route 2001:db8:201::/48 unreachable;
}
protocol bgp s1 from spk {
  neighbor 198.18.0.11 as 64513;
  ipv4 { import all; export where source = RTS_STATIC; };
  ipv6 { import all; export where source = RTS_STATIC; };
}
"#;

fn field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or("")
}

#[test]
fn bird_over_the_limit_gets_cease_maximum_prefixes() {
    let mut lab = Lab::new("lm");
    let r = lab.node("r", 1);
    let s = lab.node("s", 11);
    let bird = lab.bird(&r, "bird", BIRD);
    let status = lab.path("berth.status");
    let peer = |limits: &str| {
        format!("[[peer]]\naddress = \"198.18.0.1\"\nremote_as = 64512\nhold_time = 3\nmax_prefixes = {limits}\n")
    };
    let conf = |limits: &str| {
        berth_conf(
            "198.18.0.11",
            &status,
            &peer(limits),
            "[[announce]]\nprefix = \"198.19.100.10/32\"\n",
        )
    };
    let mut berth = lab.berth(&s, "berth", &conf("{ ipv4 = 5, ipv6 = 10, restart = 4 }"));

    // The limit is hit as soon as BIRD's table arrives: Cease 6/1 with
    // AFI 1, SAFI 1 and the limit 5 (00 01 01 00000005).
    let t = wait_for(
        "BIRD receives Cease: maximum number of prefixes reached",
        Duration::from_secs(20),
        || {
            bird.birdc("show protocols all s1")
                .contains("Received: Maximum number of prefixes reached")
        },
    );
    wait_for(
        "BIRD logs the notification data",
        Duration::from_secs(3),
        || {
            lab.log("bird")
                .contains("Received: Maximum number of prefixes reached: 00010100000005")
        },
    );
    let st = wait_for_status(&lab, "speaker held down", |s| {
        field(s, "held_down") == "true"
    });
    assert_eq!(field(&st, "limit"), "ipv4:8>5", "{st}");
    assert!(
        field(&st, "state") == "Idle"
            && st.contains("maximum prefixes reached: 8 ipv4 prefixes, limit 5"),
        "{st}"
    );
    let log = lab.log("berth");
    assert!(
        log.contains("subcode=1 data=[0, 1, 1, 0, 0, 0, 5]"),
        "no Cease 6/1 with the RFC 4486 data in the speaker's log:\n{log}"
    );
    // Held down: BIRD keeps calling (connect retry 1 s) and is refused.
    let hit = Instant::now();
    while hit.elapsed() < Duration::from_millis(2500) {
        assert!(
            !bird.birdc("show protocols s1").contains("Established"),
            "session re-established during the hold-down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(lab
        .log("berth")
        .contains("refusing incoming connection: held down"));
    // After the restart time the speaker comes back by itself, gets the
    // table again and ceases again.
    let st = wait_for_status(&lab, "second session after the restart time", |s| {
        field(s, "established_transitions") == "2" && field(s, "held_down") == "true"
    });
    assert_eq!(field(&st, "limit"), "ipv4:8>5", "{st}");
    eprintln!("first Cease after {t:?}; session came back and ceased again");

    // Warning only, by SIGHUP: the hold-down ends at once, the session comes
    // up and stays up with everything accepted.
    lab.write("berth.toml", &conf("{ ipv4 = 5, action = \"warn\" }"));
    berth.signal(libc::SIGHUP);
    let st = wait_for_status(&lab, "Established in warning-only mode", |s| {
        field(s, "state") == "Established" && field(s, "received_ipv4") == "8"
    });
    assert_eq!(field(&st, "received_ipv6"), "2", "{st}");
    let n = field(&st, "established_transitions").to_string();
    wait_for("warning logged", Duration::from_secs(3), || {
        lab.log("berth")
            .contains("peer holds 8 ipv4 prefixes, over its limit of 5 (warning only)")
    });
    // A higher limit, by SIGHUP: applied to the running session, no reset.
    lab.write(
        "berth.toml",
        &conf("{ ipv4 = 100, ipv6 = 100, warning = 0 }"),
    );
    berth.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(2500));
    let st = lab.berth_status("berth");
    assert!(
        field(&st, "state") == "Established" && field(&st, "established_transitions") == n,
        "changing the limit must not reset the session: {st}"
    );
    assert!(bird.birdc("show protocols s1").contains("Established"));
    // IPv6 has a limit of its own: 1 is less than BIRD's 2.
    lab.write("berth.toml", &conf("{ ipv4 = 100, ipv6 = 1 }"));
    berth.signal(libc::SIGHUP);
    wait_for(
        "Cease with AFI 2 (IPv6) and the limit 1",
        Duration::from_secs(5),
        || {
            lab.log("bird")
                .contains("Received: Maximum number of prefixes reached: 00020100000001")
        },
    );
    let st = wait_for_status(&lab, "held down for IPv6", |s| {
        field(s, "limit") == "ipv6:2>1"
    });
    assert!(!st.contains("panicked"));
}

fn wait_for_status(lab: &Lab, what: &str, f: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        last = lab.berth_status("berth");
        if f(&last) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}; status: {last}");
}
