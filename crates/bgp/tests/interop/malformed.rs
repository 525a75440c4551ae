//! A raw TCP peer injects malformed UPDATEs. RFC 7606 treat-as-withdraw and
//! attribute-discard cases must leave the session up; a broken MP_REACH_NLRI
//! must reset it with a NOTIFICATION; the speaker never crashes.

use crate::common::*;
use berth_bgp::codec::{self, Capability, Message, Open, Update, AFI_IPV4, AFI_IPV6, SAFI_UNICAST};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        // SAFETY: switches only this short-lived thread's network namespace.
        assert_eq!(
            unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        f()
    })
    .join()
    .unwrap()
}

fn read_msg(s: &mut TcpStream) -> std::io::Result<Message> {
    let mut hdr = [0u8; codec::HEADER_LEN];
    s.read_exact(&mut hdr)?;
    let len = codec::frame_len(&hdr).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut buf = vec![0u8; len];
    buf[..19].copy_from_slice(&hdr);
    s.read_exact(&mut buf[19..])?;
    codec::decode(&buf).map_err(|e| std::io::Error::other(e.to_string()))
}

fn attr(flags: u8, ty: u8, v: &[u8]) -> Vec<u8> {
    let mut o = vec![flags, ty, v.len() as u8];
    o.extend_from_slice(v);
    o
}

const ORIGIN_IGP: &[u8] = &[0x40, 1, 1, 0];
const AS_PATH: &[u8] = &[0x40, 2, 6, 2, 1, 0, 0, 0xfc, 0x00]; // [64512], 4-octet
const NEXT_HOP: &[u8] = &[0x40, 3, 4, 198, 18, 0, 1];

fn update(attrs: Vec<u8>, nlri: &str) -> Vec<u8> {
    Message::Update(Update {
        withdrawn: vec![],
        attributes: attrs,
        nlri: vec![nlri.parse().unwrap()],
    })
    .to_bytes()
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Reads for `d`; fails on NOTIFICATION or EOF, answers nothing.
fn expect_quiet(s: &mut TcpStream, d: Duration) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let t = std::time::Instant::now();
    while t.elapsed() < d {
        match read_msg(s) {
            Ok(Message::Notification(n)) => panic!("session reset by speaker: {n:?}"),
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("connection lost: {e}"),
        }
    }
}

#[test]
fn malformed_updates_follow_rfc7606() {
    let mut lab = Lab::new("mf");
    let r = lab.node("r", 1);
    let s = lab.node("s", 11);
    let st = lab.path("berth.status");
    let peer =
        "[[peer]]\naddress = \"198.18.0.1\"\nremote_as = 64512\nhold_time = 30\npassive = true\n";
    let mut berth = lab.berth(
        &s,
        "berth",
        &berth_conf(
            "198.18.0.11",
            &st,
            peer,
            "[[announce]]\nprefix = \"198.19.100.10/32\"\n",
        ),
    );

    let mut sock = None;
    wait_for("speaker listening", Duration::from_secs(10), || {
        sock = in_ns(&r.ns, || TcpStream::connect("198.18.0.11:179").ok());
        sock.is_some()
    });
    let mut c = sock.unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let open = Message::Open(Open {
        version: 4,
        my_as: 64512,
        hold_time: 30,
        bgp_id: Ipv4Addr::new(198, 18, 0, 1),
        capabilities: vec![
            Capability::Multiprotocol {
                afi: AFI_IPV4,
                safi: SAFI_UNICAST,
            },
            Capability::Multiprotocol {
                afi: AFI_IPV6,
                safi: SAFI_UNICAST,
            },
            Capability::FourOctetAs(64512),
        ],
    });
    c.write_all(&open.to_bytes()).unwrap();
    assert!(matches!(read_msg(&mut c).unwrap(), Message::Open(_)));
    assert!(matches!(read_msg(&mut c).unwrap(), Message::Keepalive));
    c.write_all(&Message::Keepalive.to_bytes()).unwrap();
    // The speaker's route arrives.
    let mut got = false;
    for _ in 0..5 {
        if let Message::Update(u) = read_msg(&mut c).unwrap() {
            if u.nlri.iter().any(|p| p.to_string() == "198.19.100.10/32") {
                got = true;
                break;
            }
        }
    }
    assert!(got, "speaker's route not received");

    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "ORIGIN value 5",
            update(
                cat(&[&attr(0x40, 1, &[5]), AS_PATH, NEXT_HOP]),
                "198.19.1.0/24",
            ),
        ),
        (
            "COMMUNITIES length 3",
            update(
                cat(&[ORIGIN_IGP, AS_PATH, NEXT_HOP, &attr(0xc0, 8, &[1, 2, 3])]),
                "198.19.1.0/24",
            ),
        ),
        (
            "NEXT_HOP missing",
            update(cat(&[ORIGIN_IGP, AS_PATH]), "198.19.1.0/24"),
        ),
        (
            "attribute overruns the attribute field",
            update(
                cat(&[ORIGIN_IGP, AS_PATH, NEXT_HOP, &[0xc0, 8, 200, 0, 0]]),
                "198.19.1.0/24",
            ),
        ),
        (
            "NEXT_HOP length 5",
            update(
                cat(&[ORIGIN_IGP, AS_PATH, &attr(0x40, 3, &[198, 18, 0, 1, 9])]),
                "198.19.1.0/24",
            ),
        ),
        (
            "well-known ORIGIN flagged optional",
            update(
                cat(&[&attr(0xc0, 1, &[0]), AS_PATH, NEXT_HOP]),
                "198.19.1.0/24",
            ),
        ),
    ];
    for (what, m) in &bad {
        c.write_all(m).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    // Attribute discard: malformed AGGREGATOR, route itself accepted.
    c.write_all(&update(
        cat(&[ORIGIN_IGP, AS_PATH, NEXT_HOP, &attr(0xc0, 7, &[1, 2, 3])]),
        "198.19.3.0/24",
    ))
    .unwrap();
    // A valid UPDATE.
    c.write_all(&update(
        cat(&[ORIGIN_IGP, AS_PATH, NEXT_HOP]),
        "198.19.2.0/24",
    ))
    .unwrap();
    c.write_all(&Message::Keepalive.to_bytes()).unwrap();
    expect_quiet(&mut c, Duration::from_millis(1500));
    wait_for(
        "speaker counted the RFC 7606 cases",
        Duration::from_secs(3),
        || {
            let s = lab.berth_status("berth");
            s.contains("treat_as_withdraw=6 ")
                && s.contains("attributes_discarded=1 ")
                && s.contains("prefixes_received=2 ")
        },
    );
    let s1 = lab.berth_status("berth");
    assert!(
        s1.contains("state=Established") && s1.contains("established_transitions=1 "),
        "{s1}"
    );

    // RFC 7606 §7.11: a broken MP_REACH_NLRI means the NLRI cannot be trusted:
    // session reset with an UPDATE Message Error.
    let mp = attr(0x80, 14, &[0, 2, 1, 40, 1, 2]);
    c.write_all(
        &Message::Update(Update {
            withdrawn: vec![],
            attributes: cat(&[ORIGIN_IGP, AS_PATH, &mp]),
            nlri: vec![],
        })
        .to_bytes(),
    )
    .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut notified = None;
    while let Ok(m) = read_msg(&mut c) {
        if let Message::Notification(n) = m {
            notified = Some(n);
            break;
        }
    }
    let n = notified.expect("no NOTIFICATION after broken MP_REACH_NLRI");
    assert_eq!(n.code, codec::err::UPDATE, "{n:?}");
    // The speaker survives and goes back to waiting for the peer.
    wait_for(
        "session down, speaker alive",
        Duration::from_secs(3),
        || lab.berth_status("berth").contains("state=Active"),
    );
    assert!(berth.daemon.is_running(), "speaker died");
    assert!(!lab.log("berth").contains("panicked"));
}
