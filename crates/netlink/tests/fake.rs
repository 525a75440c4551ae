//! The recording fake keeps the kernel's semantics that callers rely on, records every call
//! with its time, and lets a test script link state and probe answers.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_netlink::fake::{Call, FakeKernel};
use berth_netlink::{
    AddrOptions, Addresses, ArpNdp, ErrorKind, Family, GarpForm, LinkEvent, Links, Mac,
    MacvlanMode, Neighbours, Netns, Route, Routes, Rule, Rules, BERTH_PROTOCOL, MAIN_TABLE,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const M1: Mac = Mac([2, 0, 0, 0, 0, 1]);
const M2: Mac = Mac([2, 0, 0, 0, 0, 2]);

#[tokio::test]
async fn addresses_are_idempotent_and_foreign_ones_are_kept() {
    let k = FakeKernel::new();
    k.add_link("eth0", M1);
    let a: ipnet::IpNet = "198.18.0.5/24".parse().unwrap();
    k.add_address("eth0", a, AddrOptions::default())
        .await
        .unwrap();
    k.add_address("eth0", a, AddrOptions::default())
        .await
        .unwrap();
    let listed = k.addresses("eth0").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].protocol, BERTH_PROTOCOL);
    k.insert_address("eth0", "198.18.0.6/24".parse().unwrap(), 0);
    let e = k
        .delete_address("eth0", "198.18.0.6/24".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Foreign { protocol: 0, .. }),
        "{e}"
    );
    assert!(k.delete_address("eth0", a).await.unwrap());
    assert!(!k.delete_address("eth0", a).await.unwrap());
    let e = k
        .add_address("eth1", a, AddrOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::NoSuchInterface(ref d) if d == "eth1"),
        "{e}"
    );
    assert_eq!(
        k.state().addresses.len(),
        1,
        "only the foreign address is left"
    );
}

#[tokio::test]
async fn routes_of_others_are_never_deleted_replaced_or_flushed() {
    let k = FakeKernel::new();
    k.add_link("eth0", M1);
    let mut foreign = Route::to("198.18.30.0/24".parse().unwrap()).via(ip("198.18.0.14"));
    foreign.protocol = 3; // boot
    k.insert_route(foreign.clone());
    let mine = Route::to("198.18.10.0/24".parse().unwrap())
        .via(ip("198.18.0.12"))
        .dev("eth0");
    k.add_route(&mine).await.unwrap();
    assert!(k.add_route(&mine).await.unwrap_err().is_exists());
    let e = k
        .replace_route(&Route::to(foreign.dst).via(ip("198.18.0.15")).dev("eth0"))
        .await
        .unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::Foreign { protocol: 3, .. }),
        "{e}"
    );
    assert!(!k.delete_route(&foreign).await.unwrap());
    k.replace_route(&mine.clone().via(ip("198.18.0.13")))
        .await
        .unwrap();
    let routes = k.routes(Family::V4, MAIN_TABLE).await.unwrap();
    assert_eq!(routes.len(), 2);
    assert!(routes
        .iter()
        .any(|r| r.dst == mine.dst && r.gateway == Some(ip("198.18.0.13"))));
    assert_eq!(k.flush_routes(Family::V4, MAIN_TABLE).await.unwrap(), 1);
    assert_eq!(k.state().routes, vec![foreign]);
    let bad = Route::to("198.18.1.0/24".parse().unwrap()).via(ip("2001:db8::1"));
    assert!(matches!(
        k.add_route(&bad).await.unwrap_err().kind,
        ErrorKind::Invalid(_)
    ));
    let nodev = Route::to("198.18.1.0/24".parse().unwrap()).dev("eth5");
    assert!(matches!(
        k.add_route(&nodev).await.unwrap_err().kind,
        ErrorKind::NoSuchInterface(_)
    ));
}

#[tokio::test]
async fn rules_neighbours_and_proxies() {
    let k = FakeKernel::new();
    k.add_link("eth0", M1);
    let r = Rule::from_source("198.19.5.5/32".parse().unwrap(), 100, 1000);
    k.add_rule(&r).await.unwrap();
    k.add_rule(&r).await.unwrap();
    assert_eq!(k.rules(Family::V4).await.unwrap().len(), 1);
    assert!(k.delete_rule(&r).await.unwrap());
    assert!(!k.delete_rule(&r).await.unwrap());

    k.set_permanent("eth0", ip("198.18.0.42"), M2)
        .await
        .unwrap();
    let n = k.neighbours(Family::V4, Some("eth0")).await.unwrap();
    assert_eq!((n.len(), n[0].mac), (1, Some(M2)));
    assert!(k.delete_neighbour("eth0", ip("198.18.0.42")).await.unwrap());
    k.add_proxy("eth0", ip("2001:db8::99")).await.unwrap();
    k.add_proxy("eth0", ip("2001:db8::99")).await.unwrap();
    assert_eq!(k.proxies(Family::V6).await.unwrap().len(), 1);
    assert!(k.proxies(Family::V4).await.unwrap().is_empty());
    assert!(k.delete_proxy("eth0", ip("2001:db8::99")).await.unwrap());
}

#[tokio::test]
async fn links_and_the_watch_follow_scripted_state() {
    let k = FakeKernel::new();
    let idx = k.add_link("eth0", M1);
    let mut w = k.watch().await.unwrap();
    let mut snapshot = Vec::new();
    while let Some(ev) = w.try_next() {
        snapshot.push(ev);
    }
    assert!(snapshot
        .iter()
        .any(|e| matches!(e, LinkEvent::Changed(l) if l.name == "eth0" && l.is_running())));
    assert!(snapshot
        .iter()
        .any(|e| matches!(e, LinkEvent::Changed(l) if l.name == "lo")));

    k.set_carrier("eth0", false);
    match w.next().await {
        Some(LinkEvent::Changed(l)) => assert!(l.name == "eth0" && !l.is_running() && l.admin_up),
        other => panic!("{other:?}"),
    }
    k.set_carrier("eth0", true);
    assert!(matches!(w.next().await, Some(LinkEvent::Changed(l)) if l.is_running()));

    // The code under test renames: only when down, like older kernels.
    assert!(matches!(
        k.rename("eth0", "wan0").await.unwrap_err().kind,
        ErrorKind::Busy
    ));
    k.set_up("eth0", false).await.unwrap();
    k.rename("eth0", "wan0").await.unwrap();
    assert_eq!(k.link("wan0").await.unwrap().index, idx);
    assert!(matches!(
        k.link("eth0").await.unwrap_err().kind,
        ErrorKind::NoSuchInterface(_)
    ));

    k.add_veth("v0", "v1", None).await.unwrap();
    assert!(k.add_veth("v0", "v2", None).await.unwrap_err().is_exists());
    let here = Netns::current().unwrap();
    k.add_macvlan("mv0", "wan0", MacvlanMode::Bridge, Some(&here))
        .await
        .unwrap();
    assert!(k
        .add_macvlan("mv1", "eth9", MacvlanMode::Bridge, None)
        .await
        .is_err());
    k.move_to_netns("v1", &here).await.unwrap();
    k.remove_link("v0");
    let mut removed = BTreeSet::new();
    while let Some(ev) = w.try_next() {
        if let LinkEvent::Removed { name, .. } = ev {
            removed.insert(name);
        }
    }
    assert_eq!(removed, ["v0".to_string(), "v1".to_string()].into());
    assert!(!k.delete_link("v0").await.unwrap());
    let calls = k.calls();
    assert!(calls.contains(&Call::MoveToNetns {
        name: "v1".into(),
        netns: here.label().into()
    }));
    assert!(calls.contains(&Call::AddMacvlan {
        name: "mv0".into(),
        parent: "wan0".into(),
        mode: MacvlanMode::Bridge,
        netns: Some(here.label().into()),
    }));
}

#[tokio::test(start_paused = true)]
async fn arp_ndp_calls_are_recorded_with_their_time() {
    let k = FakeKernel::new();
    k.add_link("eth0", M1);
    let t0 = tokio::time::Instant::now();
    k.announce("eth0", ip("198.18.0.200")).await.unwrap();
    k.announce("eth0", ip("2001:db8::200")).await.unwrap();
    // No answer: the probe takes its whole wait (on the paused clock: instantly).
    assert_eq!(
        k.probe("eth0", ip("198.18.0.201"), Duration::from_millis(300))
            .await
            .unwrap(),
        None
    );
    assert_eq!(tokio::time::Instant::now() - t0, Duration::from_millis(300));
    k.set_probe_answer(ip("198.18.0.201"), Some(M2));
    assert_eq!(
        k.probe("eth0", ip("198.18.0.201"), Duration::from_secs(1))
            .await
            .unwrap(),
        Some(M2)
    );
    assert_eq!(
        tokio::time::Instant::now() - t0,
        Duration::from_millis(300),
        "an answer returns at once"
    );

    let set: BTreeSet<IpAddr> = [ip("198.18.0.77")].into();
    k.answer("eth0", set.clone()).await.unwrap();
    assert_eq!(k.answered("eth0").await.unwrap(), set);
    k.answer("eth0", BTreeSet::new()).await.unwrap();
    assert!(k.state().answered.is_empty());
    assert!(matches!(
        k.send_garp("eth0", ip("2001:db8::1"), GarpForm::Request)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::Invalid(_)
    ));
    assert!(matches!(
        k.send_garp("lo", ip("198.18.0.1"), GarpForm::Request)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::Invalid(_)
    ));

    let timed = k.timed_calls();
    let ops: Vec<&str> = timed.iter().map(|(_, c)| c.op()).collect();
    assert_eq!(
        &ops[..5],
        &[
            "send_garp",
            "send_garp",
            "send_unsolicited_na",
            "probe",
            "probe"
        ]
    );
    assert_eq!(
        timed[1].1,
        Call::SendGarp {
            dev: "eth0".into(),
            ip: ip("198.18.0.200"),
            form: GarpForm::Reply
        }
    );
    assert_eq!(timed[4].0 - timed[0].0, Duration::from_millis(300));
    assert_eq!(k.take_calls().len(), timed.len());
    assert!(k.calls().is_empty());
}

#[tokio::test]
async fn scripted_failures_hit_the_named_operation_once() {
    let k = FakeKernel::new();
    k.add_link("eth0", M1);
    k.fail_next("send_garp", ErrorKind::PermissionDenied);
    let e = k.announce("eth0", ip("198.18.0.200")).await.unwrap_err();
    assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
    k.announce("eth0", ip("198.18.0.200")).await.unwrap();
    assert_eq!(
        k.calls().iter().filter(|c| c.op() == "send_garp").count(),
        3
    );
}

#[tokio::test]
async fn usable_as_trait_objects_across_tasks() {
    let k = FakeKernel::new();
    k.add_link("eth0", M1);
    let links: Arc<dyn Links> = Arc::new(k.clone());
    let l2: Arc<dyn ArpNdp> = Arc::new(k.clone());
    let h = tokio::spawn(async move {
        let l = links.link("eth0").await.unwrap();
        l2.announce(&l.name, ip("198.18.0.9")).await.unwrap();
    });
    h.await.unwrap();
    assert_eq!(k.calls().len(), 3);
}

struct OnlyV4;

impl berth_netlink::Gate for OnlyV4 {
    fn allows(&self, ip: IpAddr) -> bool {
        ip.is_ipv4()
    }
}

#[tokio::test]
async fn the_fake_honours_the_gate() {
    let k = FakeKernel::new();
    k.add_link("eth0", Mac([2, 0, 0, 0, 0, 1]));
    let (v4, v6): (IpAddr, IpAddr) = (
        "198.18.0.7".parse().unwrap(),
        "2001:db8::7".parse().unwrap(),
    );
    k.answer("eth0", [v4, v6].into()).await.unwrap();
    assert!(k.would_answer("eth0", v4) && k.would_answer("eth0", v6));
    k.set_gate(Some(Arc::new(OnlyV4)));
    assert!(k.would_answer("eth0", v4));
    assert!(!k.would_answer("eth0", v6), "the gate closes answers too");
    assert!(
        !k.would_answer("eth0", "198.18.0.8".parse().unwrap()),
        "not in the set"
    );
    k.send_garp("eth0", v4, GarpForm::Reply).await.unwrap();
    let e = k.send_unsolicited_na("eth0", v6).await.unwrap_err();
    assert!(matches!(e.kind, ErrorKind::Gated), "{e}");
    assert!(k.calls().contains(&Call::SetGate { installed: true }));
    k.set_gate(None);
    k.send_unsolicited_na("eth0", v6).await.unwrap();
}
