//! The library as an embedding agent uses it, in-process on a "node"
//! namespace: routes with their own attributes for all peers, one group or
//! one peer reach real BIRD routers; peers change at run time without
//! resetting the sessions that need none; a status snapshot counts prefixes;
//! and the three shutdown modes look on the wire as documented (a raw peer
//! records every message).

use crate::common::*;
use berth_bgp::codec::{
    self, Capability, GrFamily, Message, Open, AFI_IPV4, AFI_IPV6, SAFI_UNICAST,
};
use berth_bgp::{
    GlobalConfig, Origin, PeerChange, PeerConfig, Prefix, RouteAttrs, ShutdownMode, Speaker, State,
    Target,
};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

fn global(listen: bool) -> GlobalConfig {
    GlobalConfig {
        router_id: Ipv4Addr::new(198, 18, 0, 11),
        local_as: 64513,
        listen: if listen {
            vec!["0.0.0.0:179".parse().unwrap()]
        } else {
            vec![]
        },
        graceful_restart_time: Some(120),
    }
}

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

#[test]
fn api_routes_per_peer_with_attributes_and_live_peer_changes() {
    let mut lab = Lab::new("li");
    let r1 = lab.node("r1", 1);
    let r2 = lab.node("r2", 2);
    let s = lab.node("s", 11);
    // r1: eBGP (AS 64512). r2: iBGP (AS 64513), so LOCAL_PREF travels.
    let b1 = lab.bird(
        &r1,
        "bird1",
        "log stderr all;\nprotocol bgp s1 from spk { debug { states, events }; neighbor 198.18.0.11 as 64513; }",
    );
    let b2 = lab.bird(
        &r2,
        "bird2",
        "log stderr all;\nprotocol bgp s1 { local as 64513; neighbor 198.18.0.11 as 64513; direct; hold time 3; keepalive time 1; \
         connect retry time 1; connect delay time 1; error wait time 1, 10; \
         ipv4 { import all; export none; gateway direct; }; ipv6 { import all; export none; gateway direct; }; }",
    );
    let rt = NsRuntime::new(&s.ns);
    let sp = rt.run(async { Speaker::new(global(false)).await.unwrap() });
    let a1: IpAddr = "198.18.0.1".parse().unwrap();
    let a2: IpAddr = "198.18.0.2".parse().unwrap();
    let peer = |a: IpAddr, asn: u32| {
        let mut c = PeerConfig::new(a, asn);
        c.hold_time = 3;
        c
    };
    let (mut c1, mut c2) = (peer(a1, 64512), peer(a2, 64513));
    // Per-peer graceful restart: r1 is offered 30 s (the speaker's is 120 s), r2 none.
    c1.graceful_restart = Some(Some(30));
    c2.graceful_restart = Some(None);
    {
        let (sp, c1, c2) = (sp.clone(), c1.clone(), c2.clone());
        let ch = rt.run(async move {
            [
                sp.set_peer(c1).await.unwrap(),
                sp.set_peer(c2).await.unwrap(),
            ]
        });
        assert_eq!(ch, [PeerChange::Added, PeerChange::Added]);
    }
    sp.announce(
        Target::All,
        p("198.19.50.1/32"),
        RouteAttrs {
            med: Some(7),
            communities: vec![(64512 << 16) | 10],
            ..Default::default()
        },
    );
    sp.announce(
        Target::Peer(a1),
        p("198.19.50.2/32"),
        RouteAttrs {
            large_communities: vec![[64512, 5, 6]],
            origin: Origin::Incomplete,
            ..Default::default()
        },
    );
    sp.announce(
        Target::Peer(a2),
        p("198.19.50.3/32"),
        RouteAttrs {
            local_pref: Some(250),
            communities: vec![(64513 << 16) | 99],
            ..Default::default()
        },
    );
    sp.announce(
        Target::All,
        p("2001:db8:100::50/128"),
        RouteAttrs::default(),
    );
    for (b, what) in [(&b1, "BIRD (eBGP)"), (&b2, "BIRD (iBGP)")] {
        wait_for(what, Duration::from_secs(15), || {
            b.birdc("show protocols s1").contains("Established")
        });
    }
    wait_for("routes in both BIRDs", Duration::from_secs(5), || {
        b1.birdc("show route 198.19.50.2/32")
            .contains("198.19.50.2")
            && b2
                .birdc("show route 198.19.50.3/32")
                .contains("198.19.50.3")
    });
    // What each BIRD heard in our OPEN.
    let caps = |b: &Bird| {
        let all = b.birdc("show protocols all s1");
        let neighbor = all
            .split_once("Neighbor capabilities")
            .map(|(_, rest)| rest.split("Session:").next().unwrap_or(rest).to_string());
        neighbor.unwrap_or_else(|| panic!("no neighbor capabilities in:\n{all}"))
    };
    let (k1, k2) = (caps(&b1), caps(&b2));
    assert!(
        k1.contains("Graceful restart") && k1.contains("Restart time: 30"),
        "{k1}"
    );
    assert!(!k2.contains("Graceful restart"), "{k2}");
    let r = b1.birdc("show route 198.19.50.1/32 all");
    assert!(r.contains("BGP.med: 7") && r.contains("(64512,10)"), "{r}");
    let r = b1.birdc("show route 198.19.50.2/32 all");
    assert!(
        r.contains("(64512, 5, 6)") && r.contains("BGP.origin: Incomplete"),
        "{r}"
    );
    let r = b2.birdc("show route 198.19.50.3/32 all");
    assert!(
        r.contains("BGP.local_pref: 250") && r.contains("(64513,99)"),
        "{r}"
    );
    // Per-peer selection: each peer got its own route only.
    assert!(!b1
        .birdc("show route 198.19.50.3/32")
        .contains("198.19.50.3"));
    assert!(!b2
        .birdc("show route 198.19.50.2/32")
        .contains("198.19.50.2"));
    wait_for("IPv6 route in BIRD", Duration::from_secs(5), || {
        b1.birdc("show route 2001:db8:100::50/128")
            .contains("2001:db8:100::50")
    });
    // The snapshot counts them.
    let snap = sp.snapshot();
    assert_eq!(
        (snap.router_id, snap.local_as, snap.routes),
        (Ipv4Addr::new(198, 18, 0, 11), 64513, 4)
    );
    for st in &snap.peers {
        assert_eq!(st.state, State::Established, "{st:?}");
        assert_eq!(
            (
                st.prefixes_sent_ipv4,
                st.prefixes_sent_ipv6,
                st.prefixes_sent
            ),
            (2, 1, 3),
            "{st:?}"
        );
        assert_eq!(st.established_transitions, 1);
    }

    // Live changes that need no new session: a group for r1 (and a route
    // for it), another next hop, limits, connect-retry, passive.
    let mut c1b = c1.clone();
    c1b.groups = vec!["tor".into()];
    c1b.next_hop_v4 = Some(Ipv4Addr::new(198, 18, 0, 12));
    c1b.max_prefixes.ipv4 = Some(7);
    c1b.connect_retry = Duration::from_secs(3);
    c1b.passive = true;
    {
        let sp = sp.clone();
        let ch = rt.run(async move { sp.set_peer(c1b).await.unwrap() });
        assert_eq!(ch, PeerChange::Updated);
    }
    sp.announce(
        Target::Group("tor".into()),
        p("198.19.50.4/32"),
        RouteAttrs::default(),
    );
    wait_for(
        "group route and new next hop at r1",
        Duration::from_secs(5),
        || {
            b1.birdc("show route 198.19.50.4/32 all")
                .contains("BGP.next_hop: 198.18.0.12")
                && b1
                    .birdc("show route 198.19.50.1/32 all")
                    .contains("BGP.next_hop: 198.18.0.12")
        },
    );
    assert!(!b2
        .birdc("show route 198.19.50.4/32")
        .contains("198.19.50.4"));
    // A new hold time needs a new session: only r2's restarts.
    let mut c2b = c2.clone();
    c2b.hold_time = 6;
    {
        let sp = sp.clone();
        let ch = rt.run(async move { sp.set_peer(c2b).await.unwrap() });
        assert_eq!(ch, PeerChange::Restarted);
    }
    wait_for(
        "r2 saw Cease: other configuration change",
        Duration::from_secs(5),
        || {
            lab.log("bird2")
                .contains("Received: Other configuration change")
        },
    );
    // A new session (BIRD proposes 3 s, so 3 s it stays).
    wait_for("r2 back", Duration::from_secs(15), || {
        sp.peer(a2).is_some_and(|s| s.state == State::Established)
            && b2.birdc("show protocols s1").contains("Established")
    });
    std::thread::sleep(Duration::from_millis(1500));
    let st1 = sp.peer(a1).unwrap();
    assert_eq!(
        (st1.state, st1.established_transitions),
        (State::Established, 1),
        "r1 must not reset: {st1:?}"
    );
    // Nor did BIRD see a NOTIFICATION or a new connection on r1.
    assert!(
        !lab.log("bird1").contains("Received:"),
        "{}",
        lab.log("bird1")
    );
    assert!(
        !lab.log("bird1").contains("graceful restart detected"),
        "{}",
        lab.log("bird1")
    );
    // Withdraw one peer's route; remove the other peer.
    sp.withdraw(Target::Peer(a1), p("198.19.50.2/32"));
    wait_for("withdrawn at r1", Duration::from_secs(5), || {
        !b1.birdc("show route 198.19.50.2/32")
            .contains("198.19.50.2")
    });
    {
        let sp = sp.clone();
        assert!(rt.run(async move { sp.remove_peer(a2).await }));
    }
    wait_for(
        "r2 saw Cease: peer de-configured",
        Duration::from_secs(5),
        || lab.log("bird2").contains("Received: Peer de-configured"),
    );
    assert_eq!(sp.snapshot().peers.len(), 1);
    // Clean shutdown: withdraw first, then Cease.
    {
        let sp = sp.clone();
        rt.run(async move { sp.shutdown(ShutdownMode::Withdraw).await });
    }
    wait_for(
        "r1 saw Cease: administrative shutdown",
        Duration::from_secs(5),
        || {
            lab.log("bird1")
                .contains("Received: Administrative shutdown")
        },
    );
    wait_for(
        "route gone from r1's kernel",
        Duration::from_secs(5),
        || !lab.kernel_route(&r1.ns, "198.19.50.1").contains("via"),
    );
    let e = {
        let sp = sp.clone();
        rt.run(async move { sp.set_peer(c1).await.unwrap_err() })
    };
    assert!(e.to_string().contains("shut down"), "{e}");
}

// ---- shutdown modes on the wire ----

fn read_msg(s: &mut std::net::TcpStream) -> std::io::Result<Message> {
    let mut hdr = [0u8; codec::HEADER_LEN];
    s.read_exact(&mut hdr)?;
    let len = codec::frame_len(&hdr).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut buf = vec![0u8; len];
    buf[..codec::HEADER_LEN].copy_from_slice(&hdr);
    s.read_exact(&mut buf[codec::HEADER_LEN..])?;
    codec::decode(&buf).map_err(|e| std::io::Error::other(e.to_string()))
}

/// The IPv6 prefixes an UPDATE's MP_UNREACH_NLRI withdraws, if it has one.
fn unreach(u: &codec::Update) -> Option<Vec<String>> {
    let ctx = berth_bgp::attributes::Context {
        four_octet: true,
        ibgp: false,
        peer_as: None,
    };
    let parsed = berth_bgp::attributes::parse(&u.attributes, !u.nlri.is_empty(), ctx).ok()?;
    let m = parsed.attrs.mp_unreach?;
    Some(m.withdrawn.iter().map(|p| p.to_string()).collect())
}

/// What a raw peer saw after the speaker's initial table, in order:
/// "W4 prefixes…", "W6 prefixes…", "N code/subcode", "EOF".
#[derive(Debug, Default)]
struct Seen(Vec<String>);

/// Runs a raw BGP peer on 198.18.0.1:179 in `ns`: answers the speaker's
/// OPEN (with graceful restart if `gr`), waits for both End-of-RIBs, says
/// `ready`, then records everything until the connection closes.
fn raw_peer(
    ns: &str,
    gr: bool,
    ready: std::sync::mpsc::Sender<()>,
) -> std::thread::JoinHandle<Seen> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: switches only this thread's network namespace.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let l = std::net::TcpListener::bind("198.18.0.1:179").unwrap();
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(matches!(read_msg(&mut c).unwrap(), Message::Open(_)));
        let mut caps = vec![
            Capability::Multiprotocol {
                afi: AFI_IPV4,
                safi: SAFI_UNICAST,
            },
            Capability::Multiprotocol {
                afi: AFI_IPV6,
                safi: SAFI_UNICAST,
            },
            Capability::FourOctetAs(64512),
        ];
        if gr {
            caps.push(Capability::GracefulRestart {
                restarting: false,
                restart_time: 120,
                families: vec![GrFamily {
                    afi: AFI_IPV4,
                    safi: SAFI_UNICAST,
                    forwarding: false,
                }],
            });
        }
        let open = Open {
            version: 4,
            my_as: 64512,
            hold_time: 30,
            bgp_id: Ipv4Addr::new(198, 18, 0, 1),
            capabilities: caps,
        };
        c.write_all(&Message::Open(open).to_bytes()).unwrap();
        c.write_all(&Message::Keepalive.to_bytes()).unwrap();
        let mut eors = 0;
        while eors < 2 {
            if let Message::Update(u) = read_msg(&mut c).unwrap() {
                let v6_eor = unreach(&u).is_some_and(|w| w.is_empty());
                if (u.withdrawn.is_empty() && u.nlri.is_empty() && u.attributes.is_empty())
                    || v6_eor
                {
                    eors += 1;
                }
            }
        }
        ready.send(()).unwrap();
        let mut seen = Seen::default();
        loop {
            match read_msg(&mut c) {
                Ok(Message::Update(u)) => {
                    if !u.withdrawn.is_empty() {
                        seen.0.push(format!(
                            "W4 {:?}",
                            u.withdrawn
                                .iter()
                                .map(|p| p.to_string())
                                .collect::<Vec<_>>()
                        ));
                    }
                    if let Some(w) = unreach(&u) {
                        seen.0.push(format!("W6 {w:?}"));
                    }
                    if !u.nlri.is_empty() {
                        seen.0.push("A4".into());
                    }
                }
                Ok(Message::Notification(n)) => seen.0.push(format!("N {}/{}", n.code, n.subcode)),
                Ok(Message::Keepalive) => {}
                Ok(m) => seen.0.push(format!("{m:?}")),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    seen.0.push("EOF".into());
                    break;
                }
                Err(e) => {
                    seen.0.push(format!("error {e}"));
                    break;
                }
            }
        }
        seen
    })
}

#[test]
fn shutdown_modes_on_the_wire() {
    let mut lab = Lab::new("sd");
    let r = lab.node("r", 1);
    let s = lab.node("s", 11);
    let rt = NsRuntime::new(&s.ns);
    for (mode, gr, want) in [
        (
            ShutdownMode::Withdraw,
            false,
            vec![
                "W4 [\"198.19.60.1/32\"]",
                "W6 [\"2001:db8:100::60/128\"]",
                "N 6/2",
                "EOF",
            ],
        ),
        (ShutdownMode::Cease, true, vec!["N 6/2", "EOF"]),
        // Graceful restart negotiated: close without NOTIFICATION, the peer keeps our routes.
        (ShutdownMode::Restart, true, vec!["EOF"]),
        // Not negotiated: a restart is a Cease.
        (ShutdownMode::Restart, false, vec!["N 6/2", "EOF"]),
    ] {
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let peer = raw_peer(&r.ns, gr, ready_tx);
        let sp = rt.run(async {
            let sp = Speaker::new(global(false)).await.unwrap();
            // In the initial table, before the End-of-RIBs.
            sp.announce(Target::All, p("198.19.60.1/32"), RouteAttrs::default());
            sp.announce(
                Target::All,
                p("2001:db8:100::60/128"),
                RouteAttrs::default(),
            );
            let mut c = PeerConfig::new("198.18.0.1".parse().unwrap(), 64512);
            c.hold_time = 30;
            sp.set_peer(c).await.unwrap();
            sp
        });
        ready
            .recv_timeout(Duration::from_secs(15))
            .expect("session with the raw peer");
        rt.run(async move { sp.shutdown(mode).await });
        let seen = peer.join().unwrap();
        assert_eq!(seen.0, want, "{mode:?}, peer GR {gr}");
    }
    drop(rt);
}
