//! The runtime with the netlink fakes, an in-memory LAN and Tokio's paused clock: start-up,
//! failover timing after a crash, link loss, a partition, graceful handover, conflicts,
//! restart cleanup, and two members with a witness. A sampler checks every millisecond of
//! virtual time that no two nodes would answer an ARP request for the address.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_announce::election::{Config, Election, Eligible, Event};
use berth_announce::metrics::Metrics;
use berth_announce::runtime::{Announcer, Settings};
use berth_announce::transport::{hello_destination, MemNet};
use berth_announce::{Clock, Timing, TokioClock};
use berth_netlink::fake::{Call, FakeKernel};
use berth_netlink::{Addresses, Mac};
use tokio::time::Instant;

const PORT: u16 = 7475;

fn vip() -> IpAddr {
    "198.18.0.200".parse().unwrap()
}

fn gateway() -> IpAddr {
    "198.18.0.1".parse().unwrap()
}

struct Node {
    name: String,
    ip: IpAddr,
    mac: Mac,
    kernel: FakeKernel,
    ann: Option<Announcer>,
    incarnation: u64,
}

/// (virtual ms since start, the nodes answering at once).
type Overlap = (u128, Vec<String>);

struct World {
    net: MemNet,
    nodes: Vec<Node>,
    timing: Timing,
    witness: bool,
    /// Peers' addresses are not configured: learnt from hellos.
    learn: bool,
    clock: Arc<TokioClock>,
    /// (virtual ms since start, nodes answering) whenever two answered at once.
    overlaps: Arc<Mutex<Vec<Overlap>>>,
    start: Instant,
}

impl World {
    fn new(n: usize, timing: Timing, witness: bool) -> World {
        let net = MemNet::new();
        let nodes = (0..n)
            .map(|i| {
                let mac = Mac([2, 0, 0, 0, 0, 0x10 + i as u8]);
                let kernel = FakeKernel::new();
                kernel.add_link("eth0", mac);
                if witness {
                    kernel.set_probe_answer(gateway(), Some(Mac([2, 0, 0, 0, 0, 1])));
                }
                Node {
                    name: format!("n{}", i + 1),
                    ip: format!("198.18.0.{}", 11 + i).parse().unwrap(),
                    mac,
                    kernel,
                    ann: None,
                    incarnation: 100 * (i as u64 + 1),
                }
            })
            .collect();
        World {
            net,
            nodes,
            timing,
            witness,
            learn: false,
            clock: Arc::new(TokioClock::new()),
            overlaps: Arc::default(),
            start: Instant::now(),
        }
    }

    async fn start(&mut self, i: usize) {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let peers: BTreeMap<String, SocketAddr> = self
            .nodes
            .iter()
            .filter(|n| n.name != self.nodes[i].name && !self.learn)
            .map(|n| (n.name.clone(), SocketAddr::new(n.ip, PORT)))
            .collect();
        let node = &mut self.nodes[i];
        node.incarnation += 1;
        let cfg = Config {
            me: node.name.clone(),
            peers: names.iter().filter(|n| **n != node.name).cloned().collect(),
            timing: self.timing,
            witness: self.witness,
            incarnation: node.incarnation,
            mac: Some(node.mac.0),
            probe: true,
        };
        let clock: Arc<dyn Clock> = self.clock.clone();
        let mut e = Election::new(cfg, clock.now()).unwrap();
        e.set_addresses([(vip(), Eligible::All)].into());
        let mut s = Settings::new("eth0", peers);
        if self.learn {
            s.discovery = Some(hello_destination(true, PORT, 1));
        }
        if self.witness {
            s.witness = Some(gateway());
            s.relay_from = Some(SocketAddr::new(node.ip, PORT));
        }
        s.probe_wait = Duration::from_millis(100);
        let ep = self.net.endpoint(SocketAddr::new(node.ip, PORT));
        let ann = Announcer::start(
            node.kernel.clone(),
            ep,
            clock,
            e,
            s,
            Arc::new(Metrics::new()),
        )
        .await
        .unwrap();
        node.ann = Some(ann);
    }

    async fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i).await;
        }
    }

    fn answering(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.kernel.would_answer("eth0", vip()))
            .map(|n| n.name.clone())
            .collect()
    }

    /// Runs virtual time forward by `d`, sampling every millisecond.
    async fn run(&self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let who = self.answering();
            if who.len() > 1 {
                self.overlaps
                    .lock()
                    .unwrap()
                    .push((self.start.elapsed().as_millis(), who));
            }
        }
    }

    /// Runs until `pred` holds (sampling each ms) or `limit` passes; returns the time taken.
    async fn until(&self, limit: Duration, pred: impl Fn(&World) -> bool) -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if pred(self) {
                return Some(t0.elapsed());
            }
            self.run(Duration::from_millis(1)).await;
        }
        None
    }

    fn no_overlaps(&self) {
        let o = self.overlaps.lock().unwrap();
        assert!(
            o.is_empty(),
            "two nodes answering at once: {:?}",
            &o[..o.len().min(5)]
        );
    }

    fn garps(&self, i: usize) -> Vec<Instant> {
        self.nodes[i]
            .kernel
            .timed_calls()
            .into_iter()
            .filter(|(_, c)| matches!(c, Call::SendGarp { ip, .. } if *ip == vip()))
            .map(|(t, _)| t)
            .collect()
    }
}

async fn settled(n: usize, witness: bool) -> (World, usize) {
    let mut w = World::new(n, Timing::default(), witness);
    w.start_all().await;
    let t = w
        .until(Duration::from_secs(5), |w| w.answering().len() == 1)
        .await
        .expect("an announcer within 5 s of start");
    assert!(
        t >= Timing::default().rejoin,
        "nothing announced before rejoin ({t:?})"
    );
    let owner = w.answering()[0].clone();
    (w, owner_index(&owner))
}

/// Like [`settled`], with no peer address configured: every node learns them from hellos.
async fn settled_learning(n: usize) -> (World, usize) {
    let mut w = World::new(n, Timing::default(), false);
    w.learn = true;
    w.start_all().await;
    w.until(Duration::from_secs(5), |w| w.answering().len() == 1)
        .await
        .expect("an announcer within 5 s of start, with the peers' addresses learnt");
    let owner = w.answering()[0].clone();
    (w, owner_index(&owner))
}

fn owner_index(name: &str) -> usize {
    name[1..].parse::<usize>().unwrap() - 1
}

#[tokio::test(start_paused = true)]
async fn three_nodes_elect_one_announcer_which_holds_and_announces_the_address() {
    let (w, o) = settled(3, false).await;
    w.run(Duration::from_secs(4)).await;
    assert_eq!(w.answering(), vec![w.nodes[o].name.clone()], "stable");
    let k = &w.nodes[o].kernel;
    let lo = k.addresses("lo").await.unwrap();
    assert!(
        lo.iter()
            .any(|a| a.net.addr() == vip() && a.net.prefix_len() == 32),
        "{lo:?}"
    );
    // GARP at once and repeated: 0, 50 ms, 250 ms, 1 s, 3 s (request + reply each).
    let g = w.garps(o);
    assert_eq!(g.len(), 10, "five announcements of two frames");
    let d = |i: usize| g[i].duration_since(g[0]);
    assert_eq!(d(2), Duration::from_millis(50));
    assert_eq!(d(8), Duration::from_millis(3000));
    for (i, n) in w.nodes.iter().enumerate() {
        if i != o {
            assert!(!n.kernel.would_answer("eth0", vip()));
            assert!(n
                .kernel
                .addresses("lo")
                .await
                .unwrap()
                .iter()
                .all(|a| a.net.addr() != vip()));
        }
    }
    let st = w.nodes[o].ann.as_ref().unwrap().status().await.unwrap();
    let a = &st.status.addresses[0];
    assert!(a.announcing && a.announcer.as_deref() == Some(w.nodes[o].name.as_str()));
    assert!(st.status.quorum);
    // Another node's status names the announcer too (from the heartbeats' held list).
    let other = (o + 1) % 3;
    let st = w.nodes[other].ann.as_ref().unwrap().status().await.unwrap();
    assert_eq!(
        st.status.addresses[0].announcer.as_deref(),
        Some(w.nodes[o].name.as_str())
    );
    assert!(st.status.addresses[0].since_seconds.unwrap() > 3.9);
    w.no_overlaps();
}

#[tokio::test(start_paused = true)]
async fn a_crashed_announcer_is_replaced_after_takeover_and_never_overlaps() {
    let t = Timing::default();
    let (mut w, o) = settled(3, false).await;
    w.run(Duration::from_millis(777)).await; // a phase that is not a multiple of H
    let crash = Instant::now();
    // kill -9: the process's tasks stop; nothing is cleaned up. Its gate closes by itself
    // when the lease runs out (a real kill -9 takes the responder with it at once).
    drop(w.nodes[o].ann.take());
    let took = w
        .until(Duration::from_secs(2), |w| {
            w.answering().iter().any(|n| *n != w.nodes[o].name)
        })
        .await
        .expect("a successor");
    // The successor waits T_takeover after the last heartbeat it heard (sent < H before the crash).
    assert!(took >= t.takeover - t.heartbeat, "took over after {took:?}");
    assert!(took <= t.takeover + t.heartbeat, "took over after {took:?}");
    let s = owner_index(&w.answering()[0]);
    let g = w.garps(s);
    assert!(g[0] >= crash + t.takeover - t.heartbeat);
    assert!(!w.nodes[o].kernel.would_answer("eth0", vip()));
    w.run(Duration::from_secs(3)).await;
    assert_eq!(w.answering().len(), 1);
    w.no_overlaps();
}

#[tokio::test(start_paused = true)]
async fn link_down_withdraws_at_once_and_the_successor_takes_over() {
    let t = Timing::default();
    let (w, o) = settled(3, false).await;
    let me = w.nodes[o].ip;
    w.net.set_down(me, true);
    w.nodes[o].kernel.set_carrier("eth0", false);
    let gone = w
        .until(Duration::from_millis(100), |w| {
            !w.nodes[o].kernel.would_answer("eth0", vip())
        })
        .await
        .expect("withdrawn");
    assert!(gone <= Duration::from_millis(2), "withdrawn after {gone:?}");
    let took = w
        .until(Duration::from_secs(2), |w| w.answering().len() == 1)
        .await
        .expect("a successor");
    assert!(
        took >= t.takeover - t.heartbeat && took <= t.takeover + t.heartbeat,
        "{took:?}"
    );
    // The link comes back: the old announcer takes nothing back before it has been heard
    // for `rejoin`, and then (if it ranks first) takes the address back without overlap.
    let succ = w.answering()[0].clone();
    w.nodes[o].kernel.set_carrier("eth0", true);
    w.net.set_down(me, false);
    w.run(t.rejoin - Duration::from_millis(100)).await;
    assert_eq!(
        w.answering(),
        vec![succ],
        "nothing moves back before rejoin"
    );
    w.run(Duration::from_secs(2)).await;
    assert_eq!(
        w.answering(),
        vec![w.nodes[o].name.clone()],
        "moved back to the first-ranked node"
    );
    w.no_overlaps();
}

#[tokio::test(start_paused = true)]
async fn a_partitioned_announcer_withdraws_within_fence_before_anyone_takes_over() {
    let t = Timing::default();
    let (w, o) = settled(3, false).await;
    let me = w.nodes[o].ip;
    for n in &w.nodes {
        if n.ip != me {
            w.net.set_cut(me, n.ip, true);
            w.net.set_cut(n.ip, me, true);
        }
    }
    // Still reachable by clients (its link is up), but it loses its majority.
    let gone = w
        .until(Duration::from_secs(1), |w| {
            !w.nodes[o].kernel.would_answer("eth0", vip())
        })
        .await
        .expect("fenced");
    assert!(gone <= t.fence, "fenced after {gone:?}");
    let took = w
        .until(Duration::from_secs(2), |w| w.answering().len() == 1)
        .await
        .expect("a successor");
    assert!(
        gone + took >= t.takeover - t.heartbeat,
        "{gone:?} + {took:?}"
    );
    w.run(Duration::from_secs(3)).await;
    assert_eq!(w.answering().len(), 1);
    assert_ne!(w.answering()[0], w.nodes[o].name);
    let st = w.nodes[o].ann.as_ref().unwrap().status().await.unwrap();
    assert!(!st.status.quorum);
    w.no_overlaps();
}

#[tokio::test(start_paused = true)]
async fn sigterm_hands_over_without_waiting_for_takeover() {
    let (mut w, o) = settled(3, false).await;
    w.run(Duration::from_millis(333)).await;
    let ann = w.nodes[o].ann.take().unwrap();
    let t0 = Instant::now();
    ann.leave().await;
    let k = &w.nodes[o].kernel;
    assert!(!k.would_answer("eth0", vip()));
    assert!(
        k.addresses("lo")
            .await
            .unwrap()
            .iter()
            .all(|a| a.net.addr() != vip()),
        "cleaned up"
    );
    let took = w
        .until(Duration::from_secs(1), |w| w.answering().len() == 1)
        .await
        .expect("a successor");
    let total = t0.elapsed();
    assert!(
        total < Duration::from_millis(100),
        "handover took {total:?} ({took:?} after leave returned)"
    );
    w.no_overlaps();
}

#[tokio::test(start_paused = true)]
async fn a_foreign_host_answering_blocks_the_address_and_is_reported() {
    let mut w = World::new(3, Timing::default(), false);
    let foreign = Mac([0x0e, 0, 0, 0, 0, 0x99]);
    for n in &w.nodes {
        n.kernel.set_probe_answer(vip(), Some(foreign));
    }
    w.start_all().await;
    let mut events = w.nodes[0].ann.as_ref().unwrap().subscribe();
    w.run(Duration::from_secs(4)).await;
    assert!(
        w.answering().is_empty(),
        "never announced while a foreign host holds it"
    );
    let mut seen = None;
    while let Ok(ev) = events.try_recv() {
        if let Event::Conflict { addr, mac } = ev {
            seen = Some((addr, mac));
        }
    }
    assert_eq!(
        seen,
        Some((vip(), foreign.0)),
        "a Conflict event naming the MAC"
    );
    let st = w.nodes[0].ann.as_ref().unwrap().status().await.unwrap();
    assert_eq!(
        st.status.addresses[0].conflict.as_deref(),
        Some("0e:00:00:00:00:99")
    );
    // The foreign host goes away: the retry finds the address free and it is announced.
    for n in &w.nodes {
        n.kernel.set_probe_answer(vip(), None);
    }
    let t = w
        .until(Duration::from_secs(15), |w| w.answering().len() == 1)
        .await
        .expect("announced once free");
    assert!(t <= Duration::from_secs(11), "{t:?}");
    w.no_overlaps();
}

#[tokio::test(start_paused = true)]
async fn a_restarted_node_cleans_up_and_takes_nothing_back_early() {
    let t = Timing::default();
    let (mut w, o) = settled(3, false).await;
    drop(w.nodes[o].ann.take()); // crash: the address stays on lo
    let k = w.nodes[o].kernel.clone();
    assert!(k
        .addresses("lo")
        .await
        .unwrap()
        .iter()
        .any(|a| a.net.addr() == vip()));
    let old = w.nodes[o].name.clone();
    w.until(Duration::from_secs(2), |w| {
        w.answering().len() == 1 && w.answering()[0] != old
    })
    .await
    .expect("a successor");
    let succ = w.answering()[0].clone();
    w.start(o).await;
    // The stale address is removed at start.
    assert!(k
        .addresses("lo")
        .await
        .unwrap()
        .iter()
        .all(|a| a.net.addr() != vip()));
    assert!(k
        .calls()
        .iter()
        .any(|c| matches!(c, Call::DeleteAddress { dev, .. } if dev == "lo")));
    for _ in 0..(t.rejoin.as_millis() - 50) {
        w.run(Duration::from_millis(1)).await;
        assert_eq!(
            w.answering(),
            vec![succ.clone()],
            "no outage, nothing taken back"
        );
    }
    w.run(Duration::from_secs(2)).await;
    assert_eq!(w.answering(), vec![w.nodes[o].name.clone()]);
    w.no_overlaps();
}

#[tokio::test(start_paused = true)]
async fn two_nodes_with_a_witness_fail_over_and_without_it_do_not() {
    let t = Timing::default();
    let (mut w, o) = settled(2, true).await;
    let s = 1 - o;
    drop(w.nodes[o].ann.take());
    let took = w
        .until(Duration::from_secs(2), |w| {
            w.answering() == vec![w.nodes[s].name.clone()]
        })
        .await
        .expect("the survivor takes over with the witness");
    assert!(took <= t.takeover + t.heartbeat, "{took:?}");
    w.no_overlaps();

    // Again, but the survivor cannot reach the witness: it must not take over.
    let (mut w, o) = settled(2, true).await;
    let s = 1 - o;
    w.nodes[s].kernel.set_probe_answer(gateway(), None);
    drop(w.nodes[o].ann.take());
    w.run(Duration::from_secs(3)).await;
    assert!(w.answering().is_empty(), "no majority, no takeover");
    let st = w.nodes[s].ann.as_ref().unwrap().status().await.unwrap();
    assert!(!st.status.quorum);
}

#[tokio::test(start_paused = true)]
async fn with_a_witness_every_heartbeat_also_goes_through_it() {
    let (w, _) = settled(2, true).await;
    for n in &w.nodes {
        n.kernel.take_calls();
    }
    w.run(Duration::from_secs(1)).await;
    let hb = Timing::default().heartbeat;
    for (i, n) in w.nodes.iter().enumerate() {
        let peer = SocketAddr::new(w.nodes[1 - i].ip, PORT);
        let relayed: Vec<Call> = n
            .kernel
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::SendUdpVia { .. }))
            .collect();
        // One copy per heartbeat (and per answer to one), to the witness's MAC, for the peer.
        assert!(
            relayed.len() as u32 >= 1000 / hb.as_millis() as u32 - 1,
            "{}: {} relayed in 1 s",
            n.name,
            relayed.len()
        );
        for c in relayed {
            let Call::SendUdpVia {
                dev,
                via,
                from,
                to,
                len,
            } = c
            else {
                unreachable!()
            };
            assert_eq!(
                (dev.as_str(), via, from, to),
                (
                    "eth0",
                    Mac([2, 0, 0, 0, 0, 1]),
                    SocketAddr::new(n.ip, PORT),
                    peer
                )
            );
            assert!(len > 0);
        }
    }
    // Without a witness nothing is relayed.
    let (w, _) = settled(3, false).await;
    assert!(w.nodes.iter().all(|n| !n
        .kernel
        .calls()
        .iter()
        .any(|c| matches!(c, Call::SendUdpVia { .. }))));
}

#[tokio::test(start_paused = true)]
async fn a_non_announcer_crash_costs_no_outage() {
    for witness in [false, true] {
        let n = if witness { 2 } else { 3 };
        let (mut w, o) = settled(n, witness).await;
        let other = (o + 1) % n;
        drop(w.nodes[other].ann.take());
        w.run(Duration::from_secs(3)).await;
        assert_eq!(
            w.answering(),
            vec![w.nodes[o].name.clone()],
            "witness={witness}"
        );
        // And it restarts: still no outage, nothing moves before rejoin.
        w.start(other).await;
        for _ in 0..1500 {
            w.run(Duration::from_millis(1)).await;
            assert_eq!(
                w.answering().len(),
                1,
                "witness={witness}: an outage during the peer's restart"
            );
        }
        w.no_overlaps();
    }
}

#[tokio::test(start_paused = true)]
async fn peers_learnt_from_hellos_elect_one_announcer_and_fail_over() {
    let t = Timing::default();
    let (mut w, o) = settled_learning(3).await;
    // Every node knows the other two at the addresses their hellos came from.
    for (i, n) in w.nodes.iter().enumerate() {
        let st = n.ann.as_ref().unwrap().status().await.unwrap();
        assert!(st.discovery);
        let want: BTreeMap<String, SocketAddr> = w
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, m)| (m.name.clone(), SocketAddr::new(m.ip, PORT)))
            .collect();
        assert_eq!(st.peer_addresses, want, "{}", n.name);
        assert!(st.status.quorum, "{} has a majority", n.name);
    }
    w.run(Duration::from_millis(777)).await;
    drop(w.nodes[o].ann.take());
    let took = w
        .until(Duration::from_secs(2), |w| {
            w.answering().iter().any(|n| *n != w.nodes[o].name)
        })
        .await
        .expect("a successor");
    assert!(took <= t.takeover + t.heartbeat, "took over after {took:?}");
    w.no_overlaps();
}

#[tokio::test(start_paused = true)]
async fn a_peer_back_on_another_address_is_learnt_again() {
    let (mut w, o) = settled_learning(3).await;
    // Another node than the announcer leaves, and comes back on a new address.
    let m = (o + 1) % 3;
    drop(w.nodes[m].ann.take());
    w.run(Duration::from_secs(1)).await;
    let old = w.nodes[m].ip;
    w.nodes[m].ip = "198.18.0.77".parse().unwrap();
    w.start(m).await;
    let name = w.nodes[m].name.clone();
    let new = SocketAddr::new(w.nodes[m].ip, PORT);
    let ann = w.nodes[o].ann.as_ref().unwrap();
    let mut learnt = None;
    for _ in 0..200 {
        w.run(Duration::from_millis(10)).await;
        let st = ann.status().await.unwrap();
        let alive = st.status.peers.iter().any(|p| p.name == name && p.alive);
        if st.peer_addresses.get(&name) == Some(&new) && alive {
            learnt = Some(st);
            break;
        }
    }
    let st = learnt.unwrap_or_else(|| panic!("{name} not relearnt at {new} (was {old})"));
    assert_eq!(st.peer_addresses.len(), 2);
    assert_eq!(
        w.answering(),
        vec![w.nodes[o].name.clone()],
        "nothing moved"
    );
    w.no_overlaps();
}
