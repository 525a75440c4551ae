//! The library API in-process: two speakers in one namespace, both active, so
//! their connections collide (RFC 4271 §6.8) and exactly one session must
//! survive; routes added and withdrawn through the API arrive and leave.

use crate::common::*;
use berth_bgp::{
    GlobalConfig, PeerConfig, Prefix, RouteAttrs, ShutdownMode, Speaker, State, Target,
};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

async fn until<F: FnMut() -> bool>(what: &str, limit: Duration, mut f: F) {
    let t = tokio::time::Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn two_speakers_collide_and_exchange_routes_via_the_api() {
    let mut lab = Lab::new("ap");
    let ns = lab.bare_node("x");
    for a in ["198.18.0.1/32", "198.18.0.2/32"] {
        lab.netns(&ns).add_addr("lo", a).unwrap();
    }
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: moves only this thread into the test's namespace.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let a_ip: IpAddr = "198.18.0.1".parse().unwrap();
            let b_ip: IpAddr = "198.18.0.2".parse().unwrap();
            let mk = |ip: IpAddr, asn| GlobalConfig {
                router_id: match ip {
                    IpAddr::V4(v) => v,
                    IpAddr::V6(_) => unreachable!(),
                },
                local_as: asn,
                listen: vec![SocketAddr::new(ip, 179)],
                graceful_restart_time: Some(120),
            };
            let a = Speaker::new(mk(a_ip, 64601)).await.unwrap();
            let b = Speaker::new(mk(b_ip, 64602)).await.unwrap();
            let peer = |addr, asn, local| {
                let mut p = PeerConfig::new(addr, asn);
                p.local_address = Some(local);
                p.hold_time = 3;
                p.ttl = Some(2);
                p
            };
            let p1: Prefix = "198.19.1.0/24".parse().unwrap();
            let p2: Prefix = "2001:db8:1::/48".parse().unwrap();
            a.announce(Target::All, p1, RouteAttrs::default());
            b.announce(
                Target::All,
                p2,
                RouteAttrs {
                    next_hop: Some("2001:db8::2".parse().unwrap()),
                    ..Default::default()
                },
            );
            // Both dial at the same moment: a collision on every attempt.
            a.set_peer(peer(b_ip, 64602, a_ip)).await.unwrap();
            b.set_peer(peer(a_ip, 64601, b_ip)).await.unwrap();
            let up = |s: &Speaker| {
                s.peers()
                    .first()
                    .is_some_and(|p| p.state == State::Established)
            };
            let t = tokio::time::Instant::now();
            while !(up(&a) && up(&b)) {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "not Established: {:?} / {:?}",
                    a.peers(),
                    b.peers()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            until("routes exchanged", Duration::from_secs(5), || {
                a.peers()[0].prefixes_received == 1 && b.peers()[0].prefixes_received == 1
            })
            .await;
            // One session survives and stays: no flapping after the collision.
            tokio::time::sleep(Duration::from_secs(4)).await;
            for s in [&a, &b] {
                let p = &s.peers()[0];
                assert_eq!(p.state, State::Established, "{p:?}");
                assert_eq!(p.established_transitions, 1, "{p:?}");
                assert_eq!(p.hold_time, Some(Duration::from_secs(3)));
            }
            // Withdraw through the API; the peer's count drops.
            a.withdraw(Target::All, p1);
            until("withdrawal received", Duration::from_secs(5), || {
                b.peers()[0].prefixes_received == 0
            })
            .await;
            // A new route to one peer only.
            a.announce(
                Target::Peer(b_ip),
                "198.19.2.0/24".parse().unwrap(),
                RouteAttrs::default(),
            );
            until(
                "peer-specific route received",
                Duration::from_secs(5),
                || b.peers()[0].prefixes_received == 1,
            )
            .await;
            assert!(a.remove_peer(b_ip).await);
            until(
                "peer removal seen by the other side",
                Duration::from_secs(5),
                || !up(&b),
            )
            .await;
            assert!(
                b.peers()[0]
                    .last_error
                    .as_deref()
                    .unwrap_or("")
                    .contains("6/"),
                "{:?}",
                b.peers()[0]
            );
            a.shutdown(ShutdownMode::Cease).await;
            b.shutdown(ShutdownMode::Cease).await;
        });
    })
    .join()
    .unwrap();
}
