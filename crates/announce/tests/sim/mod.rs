//! A discrete-event simulator for the election: nodes with drifting clocks, a LAN that
//! delays, loses, reorders and partitions, CPU stalls, crashes and restarts, link loss, and a
//! witness. It checks at every event that no two nodes could answer for one address.
//!
//! Why: the bound the README states must hold for *every* interleaving, not for the few a
//! namespace test happens to produce.

#![allow(dead_code)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::IpAddr;
use std::time::Duration;

use berth_announce::election::{Config, Election, Eligible, Event};
use berth_announce::{Heartbeat, Stamp, Timing};

/// Real time in the simulation, nanoseconds.
pub type Real = u64;

pub const MS: u64 = 1_000_000;

/// A small, seeded PRNG (xorshift64*), so a failing case replays from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next() % (hi - lo)
        }
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug)]
enum Ev {
    Deliver { to: usize, hb: Heartbeat },
    Wake { node: usize, token: u64 },
    WitnessAnswer { node: usize, sent: Stamp, gen: u64 },
    WitnessProbe { node: usize, gen: u64 },
}

/// How the LAN misbehaves.
#[derive(Debug, Clone)]
pub struct Net {
    /// Probability a heartbeat is lost.
    pub loss: f64,
    /// Largest one-way delay.
    pub max_delay: Real,
    /// Smallest one-way delay.
    pub min_delay: Real,
}

pub struct Node {
    pub name: String,
    pub election: Option<Election>,
    rate: f64,
    offset: u64,
    pub stalled_until: Real,
    pub crashed: bool,
    pub link_up: bool,
    /// Partition group; the witness is in group `witness_group`.
    pub group: u32,
    /// Latest announce set with lease ends (local clock).
    pub announce: BTreeMap<IpAddr, Stamp>,
    incarnations: u64,
    wake_token: u64,
    pub events: Vec<(Real, Event)>,
    gen: u64,
}

impl Node {
    pub fn local(&self, t: Real) -> Stamp {
        Stamp(self.offset + (t as f64 * self.rate) as u64)
    }
    fn real(&self, s: Stamp) -> Real {
        if s == Stamp::MAX {
            return Real::MAX;
        }
        let d = s.0.saturating_sub(self.offset) as f64 / self.rate;
        d.ceil() as Real
    }
    /// Whether this node would put an answer for `addr` on the wire at real time `t`: it runs
    /// (not stalled, not crashed), its link is up, and its gate (the lease end it last
    /// computed) is still open on its own clock.
    pub fn answers(&self, addr: IpAddr, t: Real) -> bool {
        !self.crashed
            && t >= self.stalled_until
            && self.link_up
            && self.announce.get(&addr).is_some_and(|l| self.local(t) < *l)
    }
}

pub struct Sim {
    pub t: Real,
    pub nodes: Vec<Node>,
    q: BinaryHeap<Reverse<(Real, u64, usize)>>,
    evs: BTreeMap<u64, Ev>,
    n: u64,
    pub rng: Rng,
    pub net: Net,
    pub timing: Timing,
    pub witness: bool,
    pub witness_group: u32,
    pub addrs: Vec<IpAddr>,
    /// Directed links cut (from, to), in addition to groups.
    pub cut: BTreeSet<(usize, usize)>,
    /// (time, addr, nodes) of every violation found.
    pub violations: Vec<(Real, IpAddr, Vec<String>)>,
    pub delivered: u64,
    /// What happened, for explaining a failure.
    pub trace: Vec<String>,
}

impl Sim {
    /// `n` nodes, each with a clock drifting by up to `drift` (fraction), all started at 0.
    pub fn new(
        n: usize,
        timing: Timing,
        witness: bool,
        addrs: Vec<IpAddr>,
        net: Net,
        seed: u64,
        drift: f64,
    ) -> Sim {
        let mut rng = Rng::new(seed);
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let rate = 1.0 + drift * (2.0 * rng.unit() - 1.0);
            let offset = rng.range(1, 1_000_000) * MS;
            nodes.push(Node {
                name: name.clone(),
                election: None,
                rate,
                offset,
                stalled_until: 0,
                crashed: true,
                link_up: true,
                group: 0,
                announce: BTreeMap::new(),
                incarnations: i as u64 * 1000,
                wake_token: 0,
                events: Vec::new(),
                gen: 0,
            });
        }
        let mut sim = Sim {
            t: 0,
            nodes,
            q: BinaryHeap::new(),
            evs: BTreeMap::new(),
            n: 0,
            rng,
            net,
            timing,
            witness,
            witness_group: 0,
            addrs,
            cut: BTreeSet::new(),
            violations: Vec::new(),
            delivered: 0,
            trace: Vec::new(),
        };
        for i in 0..n {
            sim.start(i);
        }
        sim
    }

    fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// (Re)starts node `i` as a new incarnation.
    pub fn start(&mut self, i: usize) {
        let names = self.names();
        let node = &mut self.nodes[i];
        node.incarnations += 1;
        node.gen += 1;
        let cfg = Config {
            me: node.name.clone(),
            peers: names.iter().filter(|n| **n != node.name).cloned().collect(),
            timing: self.timing,
            witness: self.witness,
            incarnation: node.incarnations,
            mac: Some([2, 0, 0, 0, 0, i as u8]),
            probe: false,
        };
        let now = node.local(self.t);
        let mut e = Election::new(cfg, now).expect("valid config");
        e.set_addresses(self.addrs.iter().map(|a| (*a, Eligible::All)).collect());
        e.on_link(now, node.link_up);
        node.election = Some(e);
        node.crashed = false;
        node.announce.clear();
        self.wake(i, self.t);
        if self.witness {
            let gen = self.nodes[i].gen;
            self.push(self.t, Ev::WitnessProbe { node: i, gen });
        }
    }

    pub fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.crashed = true;
        node.election = None;
        node.announce.clear();
        node.gen += 1;
    }

    pub fn stall(&mut self, i: usize, d: Real) {
        let node = &mut self.nodes[i];
        node.stalled_until = node.stalled_until.max(self.t + d);
    }

    pub fn set_link(&mut self, i: usize, up: bool) {
        self.nodes[i].link_up = up;
        // The link watch tells the process, when it runs.
        self.wake(i, self.t);
    }

    /// Schedules the node's next poll; only the latest one scheduled counts.
    fn wake(&mut self, i: usize, at: Real) {
        self.nodes[i].wake_token += 1;
        let token = self.nodes[i].wake_token;
        self.push(at, Ev::Wake { node: i, token });
    }

    fn push(&mut self, at: Real, ev: Ev) {
        self.n += 1;
        let node = match &ev {
            Ev::Deliver { to, .. } => *to,
            Ev::Wake { node, .. }
            | Ev::WitnessAnswer { node, .. }
            | Ev::WitnessProbe { node, .. } => *node,
        };
        self.evs.insert(self.n, ev);
        self.q.push(Reverse((at, self.n, node)));
    }

    fn path(&self, from: usize, to: usize) -> bool {
        let (a, b) = (&self.nodes[from], &self.nodes[to]);
        a.link_up && b.link_up && a.group == b.group && !self.cut.contains(&(from, to))
    }

    fn reaches_witness(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        n.link_up && n.group == self.witness_group
    }

    /// Runs until real time `until`.
    pub fn run_until(&mut self, until: Real) {
        while let Some(Reverse((at, id, node))) = self.q.peek().copied() {
            if at > until {
                break;
            }
            self.q.pop();
            self.t = at;
            let ev = self.evs.remove(&id).expect("queued");
            if self.nodes[node].crashed {
                continue; // a dead process receives nothing
            }
            if at < self.nodes[node].stalled_until {
                // A stalled process handles everything when it resumes, in order.
                let resume = self.nodes[node].stalled_until;
                self.push(resume, ev);
                continue;
            }
            self.handle(node, ev);
            self.check();
        }
        self.t = until;
        self.check();
    }

    fn handle(&mut self, i: usize, ev: Ev) {
        let now = self.nodes[i].local(self.t);
        let link = self.nodes[i].link_up;
        match ev {
            Ev::Deliver { hb, .. } => {
                if !link {
                    return; // arrived while the link was down
                }
                self.delivered += 1;
                let e = self.nodes[i].election.as_mut().expect("running");
                e.on_heartbeat(now, hb);
            }
            Ev::Wake { token, .. } => {
                if token != self.nodes[i].wake_token {
                    return; // superseded by a later schedule
                }
            }
            Ev::WitnessProbe { node, gen } => {
                if gen != self.nodes[node].gen {
                    return;
                }
                let h = self.timing.witness_interval().as_nanos() as u64;
                let next = self.t + h;
                self.push(next, Ev::WitnessProbe { node, gen });
                if self.reaches_witness(node) {
                    let rtt = self.rng.range(
                        self.net.min_delay * 2,
                        self.net.max_delay.min(5 * MS) * 2 + 1,
                    );
                    let gen = self.nodes[node].gen;
                    self.push(
                        self.t + rtt,
                        Ev::WitnessAnswer {
                            node,
                            sent: now,
                            gen,
                        },
                    );
                }
                return;
            }
            Ev::WitnessAnswer { sent, gen, .. } => {
                if gen != self.nodes[i].gen {
                    return; // answer to a previous incarnation's probe
                }
                let e = self.nodes[i].election.as_mut().expect("running");
                e.on_witness(sent);
            }
        }
        let t = self.t;
        let e = self.nodes[i].election.as_mut().expect("running");
        e.on_link(now, link);
        let out = e.poll(now);
        let wake = e.next_wakeup(now);
        let node = &mut self.nodes[i];
        node.announce = out.announce;
        for ev in out.events {
            self.trace
                .push(format!("{:.3} {} {:?}", t as f64 / 1e9, node.name, ev));
            node.events.push((t, ev));
        }
        let wake_real = node.real(wake).max(t + 1);
        self.wake(i, wake_real);
        let index: BTreeMap<String, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(k, n)| (n.name.clone(), k))
            .collect();
        for (to, hb) in out.messages {
            let to = index[&to];
            if !self.path(i, to) || self.rng.chance(self.net.loss) {
                continue;
            }
            let d = self.rng.range(self.net.min_delay, self.net.max_delay + 1);
            self.push(self.t + d, Ev::Deliver { to, hb });
        }
    }

    /// No address answered by two nodes at this instant.
    pub fn check(&mut self) {
        for a in self.addrs.clone() {
            let who: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| n.answers(a, self.t))
                .map(|n| n.name.clone())
                .collect();
            if who.len() > 1 {
                if self.violations.is_empty() {
                    self.trace
                        .push(format!("{:.3} VIOLATION {a} {who:?}", self.t as f64 / 1e9));
                }
                self.violations.push((self.t, a, who));
            }
        }
    }

    /// The nodes answering for `addr` now.
    pub fn answering(&self, addr: IpAddr) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.answers(addr, self.t))
            .map(|n| n.name.clone())
            .collect()
    }

    /// Heals everything: one group, no cuts, links up, crashed nodes restarted.
    pub fn heal(&mut self) {
        self.cut.clear();
        for i in 0..self.nodes.len() {
            self.nodes[i].group = 0;
            if !self.nodes[i].link_up {
                self.set_link(i, true);
            }
            if self.nodes[i].crashed {
                self.start(i);
            }
        }
        self.witness_group = 0;
    }

    /// Logs a test action.
    pub fn note(&mut self, what: String) {
        self.trace
            .push(format!("{:.3} {what}", self.t as f64 / 1e9));
    }

    /// The trace up to the first violation (the last `n` lines of it).
    pub fn explain(&self, n: usize) -> String {
        let end = self
            .trace
            .iter()
            .position(|l| l.contains("VIOLATION"))
            .map_or(self.trace.len(), |p| p + 1);
        self.trace[end.saturating_sub(n)..end].join("\n")
    }

    pub fn ms(d: Duration) -> Real {
        d.as_nanos() as Real
    }
}
