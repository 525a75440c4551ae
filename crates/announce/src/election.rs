//! The election: who announces which address, and whether it still may. Pure, no I/O.
//!
//! Why pure: every rule that keeps two nodes from answering for one address lives here, and is
//! driven by a simulator with drifting clocks, lost and delayed messages and stalled nodes
//! (see the property tests), not only by a kernel.
//!
//! # The protocol
//!
//! Every node sends every peer a [`Heartbeat`] each interval H (and at once on a change). A
//! node's **view** is the set of peers it heard in the last T_takeover; the **owner** of an
//! address is the rendezvous winner over the view's candidates (alive, link up, eligible, and
//! either heard without a break for `rejoin`, or announcing it right now).
//!
//! Owning is not enough to answer. A node answers for an address only while it holds a
//! **lease**: the votes of a majority of the members, itself included.
//!
//! - Its own vote: it is the owner in its own view.
//! - A peer's vote: the peer's latest heartbeat grants the address to it, echoing one of its
//!   own heartbeats; the vote lasts until the *sending* time of that echoed heartbeat plus
//!   T_fence, on the node's own clock.
//! - With two members, a witness (an address on the LAN both probe) may stand in for the
//!   peer: it lasts T_fence from the sending of the last answered probe (and of the last
//!   heartbeat), and only counts while the peer is gone or its last word was a grant to us.
//!
//! A node grants an address to one node at a time. It moves its grant from an old grantee to
//! another only T_takeover after the last heartbeat it received from the old grantee, or at
//! once when the old grantee *yields* the address (a promise, in a heartbeat, never to use a
//! grant echoing that heartbeat or an earlier one). Majorities intersect, so two nodes holding
//! leases at once would need one member to have granted both within one lease; the grantor's
//! wait makes that impossible as long as `T_takeover / (1 + ρ) > T_fence / (1 − ρ)` (ρ the
//! clock-rate drift, [`crate::timing::MAX_DRIFT`]). Message delay, loss and CPU stalls only
//! shorten leases or delay takeovers: the lease is measured from before the echoed heartbeat
//! was sent, and the takeover from after the last heartbeat was received.
//!
//! A process that starts (a new incarnation) grants nothing but what a peer already announces
//! during its first T_takeover, and does not vote for itself before `rejoin`: whatever its
//! previous incarnation granted has expired by then.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use crate::error::ConfigError;
use crate::message::Heartbeat;
use crate::rendezvous;
use crate::time::Stamp;
use crate::timing::Timing;

/// What the election needs to know about this node and its peers.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's name.
    pub me: String,
    /// The other members' names (the same set, with `me`, on every node).
    pub peers: Vec<String>,
    /// Timers.
    pub timing: Timing,
    /// A witness stands in for the peer's vote (two members only).
    pub witness: bool,
    /// This process's incarnation (random per start).
    pub incarnation: u64,
    /// The MAC of the announcing interface, told to peers.
    pub mac: Option<[u8; 6]>,
    /// Whether an address needs a clean conflict probe before it is announced.
    pub probe: bool,
}

/// Which members may announce an address.
///
/// Why: Kubernetes pools select nodes, and `externalTrafficPolicy: Local` restricts a Service
/// to nodes with an endpoint; the standalone VIP lets every member announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eligible {
    /// Every member.
    All,
    /// Only these members.
    Only(BTreeSet<String>),
}

impl Eligible {
    fn admits(&self, node: &str) -> bool {
        match self {
            Eligible::All => true,
            Eligible::Only(s) => s.contains(node),
        }
    }
}

/// Why an address stopped being announced here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No majority vote any more (peers unheard: a partition, or this node's stall).
    LostMajority,
    /// The announcing interface went down.
    LinkDown,
    /// Another node is the owner now (rejoin, eligibility); it takes over at once.
    Moved,
    /// This node is shutting down.
    Leaving,
    /// The address is no longer configured.
    Removed,
}

/// Something worth telling an operator (a log line, a Kubernetes Event, a metric).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This node started announcing `addr`.
    Acquired {
        /// The address.
        addr: IpAddr,
    },
    /// This node stopped announcing `addr`.
    Withdrawn {
        /// The address.
        addr: IpAddr,
        /// Why.
        reason: Reason,
    },
    /// A peer was heard again (or for the first time).
    PeerUp {
        /// Its name.
        peer: String,
    },
    /// A peer went unheard for T_takeover.
    PeerDown {
        /// Its name.
        peer: String,
    },
    /// A peer's process restarted (new incarnation).
    PeerRestarted {
        /// Its name.
        peer: String,
    },
    /// A host that is not a Berth member answered the conflict probe for `addr`: it is not
    /// announced until a later probe finds the address free.
    Conflict {
        /// The address.
        addr: IpAddr,
        /// The MAC that answered.
        mac: [u8; 6],
    },
    /// A later probe found the address free again.
    ConflictCleared {
        /// The address.
        addr: IpAddr,
    },
    /// A heartbeat that was ignored: another cluster, or an unknown sender.
    Ignored {
        /// Who it claimed to be from.
        from: String,
        /// Why it was ignored.
        why: String,
    },
}

/// One poll's result: what to send and what to announce.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Heartbeats to send, by peer name.
    pub messages: Vec<(String, Heartbeat)>,
    /// Addresses to announce now, each with the end of its lease (the gate closes then).
    pub announce: BTreeMap<IpAddr, Stamp>,
    /// Events since the last poll.
    pub events: Vec<Event>,
}

/// The state of one grant this node gives for an address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Grant {
    /// To nobody.
    None,
    /// To this member (possibly this node itself).
    To(String),
    /// Moving away from `prev`: to nobody until `until` or until `prev` yields.
    Cooling { prev: String, until: Stamp },
}

#[derive(Debug, Clone)]
struct AddrState {
    eligible: Eligible,
    grant: Grant,
    /// Grants echoing a seq at or below this are void for us (we yielded then).
    floor: u64,
    /// Since when we announce it (None: we do not).
    holding: Option<Stamp>,
    /// Latest probe result: None = none yet; Some(None) = free; Some(Some(mac)) = answered.
    probe: Option<Option<[u8; 6]>>,
    /// The foreign MAC last reported as a conflict (to report changes only).
    conflict_reported: Option<[u8; 6]>,
}

#[derive(Debug, Clone, Default)]
struct PeerState {
    incarnation: Option<u64>,
    last_rx: Option<Stamp>,
    alive_since: Option<Stamp>,
    /// Their latest seq we received.
    seq: u64,
    /// Our latest seq they echoed (for our incarnation).
    echo: Option<u64>,
    grants_to_me: BTreeSet<IpAddr>,
    /// When they last granted each address to us (for yields).
    granted_at: BTreeMap<IpAddr, Stamp>,
    held: BTreeMap<IpAddr, Stamp>,
    yields: BTreeSet<IpAddr>,
    leaving: bool,
    link_up: bool,
    mac: Option<[u8; 6]>,
    /// They report hearing us without a break for `rejoin`.
    sees_me_stable: bool,
    was_alive: bool,
}

/// What one peer is told: (grants, yields, held). A change is sent at once.
type Body = (Vec<IpAddr>, Vec<IpAddr>, Vec<IpAddr>);

/// A read-only picture of the election, for status output and metrics.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// This node.
    pub node: String,
    /// Whether the announcing interface is up.
    pub link_up: bool,
    /// Whether this node hears a majority (its own heartbeats echoed in the last T_fence).
    pub quorum: bool,
    /// Whether the start-up quiet period is over.
    pub settled: bool,
    /// Per address.
    pub addresses: Vec<AddrStatus>,
    /// Per peer.
    pub peers: Vec<PeerStatus>,
}

/// One address in [`Status`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct AddrStatus {
    /// The address.
    pub address: IpAddr,
    /// The owner in this node's view.
    pub owner: Option<String>,
    /// The node announcing it as far as this node knows (itself or a peer's report).
    pub announcer: Option<String>,
    /// Seconds since that announcer started.
    pub since_seconds: Option<f64>,
    /// Whether this node announces it.
    pub announcing: bool,
    /// Milliseconds left on this node's lease (0: none).
    pub lease_ms: u64,
    /// The MAC of a host that is not a member and answered the conflict probe.
    pub conflict: Option<String>,
}

/// One peer in [`Status`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    /// Its name.
    pub name: String,
    /// Heard in the last T_takeover.
    pub alive: bool,
    /// Heard without a break for `rejoin`.
    pub stable: bool,
    /// Milliseconds since its last heartbeat.
    pub last_heard_ms: Option<u64>,
    /// Addresses it announces (as it last said).
    pub announces: Vec<IpAddr>,
}

/// The election state of one node.
#[derive(Debug)]
pub struct Election {
    cfg: Config,
    cluster: u64,
    started: Stamp,
    seq: u64,
    /// (seq, sending time) of our recent heartbeats.
    sent: VecDeque<(u64, Stamp)>,
    next_heartbeat: Stamp,
    last_heartbeat: Option<Stamp>,
    link_up: bool,
    /// Since when this node has been able to hear: running without a stall, link up.
    listening_since: Stamp,
    last_poll: Option<Stamp>,
    leaving: bool,
    peers: BTreeMap<String, PeerState>,
    addrs: BTreeMap<IpAddr, AddrState>,
    /// Sending time of the latest witness probe that was answered.
    witness_ok: Option<Stamp>,
    /// Since when the witness has answered without a gap longer than T_fence.
    witness_since: Option<Stamp>,
    /// What each peer was last sent (grants, yields, held), to send at once on a change.
    last_sent: BTreeMap<String, Body>,
    events: Vec<Event>,
    ignored_reported: BTreeSet<String>,
    /// Peers whose heartbeat came in while this node grants them something: they get an
    /// answer at once, so their lease is renewed from a fresh echo.
    reply_to: BTreeSet<String>,
}

/// The hash of a member set that every heartbeat carries.
///
/// Why: nodes that disagree on the members would rank addresses over different sets.
pub fn cluster_id<'a>(members: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut names: Vec<&str> = members.into_iter().collect();
    names.sort_unstable();
    names.dedup();
    let mut h: u64 = 0x6a09_e667_f3bc_c908;
    for n in names {
        for b in n.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

impl Election {
    /// A node that starts now, announcing nothing.
    pub fn new(cfg: Config, now: Stamp) -> Result<Election, ConfigError> {
        cfg.timing.validate(cfg.witness)?;
        let mut seen = BTreeSet::new();
        if cfg.me.is_empty() {
            return Err(ConfigError::invalid(
                "node",
                "\"\"",
                "give this node a name",
            ));
        }
        seen.insert(cfg.me.clone());
        for p in &cfg.peers {
            if !seen.insert(p.clone()) {
                return Err(ConfigError::invalid(
                    "peer.name",
                    format!("{p:?}"),
                    "every member needs a distinct name (and no peer may be this node)",
                ));
            }
        }
        if cfg.witness && cfg.peers.len() != 1 {
            return Err(ConfigError::invalid(
                "witness",
                "set",
                format!(
                    "a witness stands in for the second of two members; with {} members a majority \
                     needs no witness: remove the key",
                    cfg.peers.len() + 1
                ),
            ));
        }
        if !cfg.witness && cfg.peers.len() == 1 {
            return Err(ConfigError::invalid(
                "witness",
                "missing",
                "two members need a witness (an address on the LAN both reach, e.g. the gateway): \
                 without one no majority survives a failure and the survivor could never take over",
            ));
        }
        let cluster = cluster_id(
            cfg.peers
                .iter()
                .map(String::as_str)
                .chain([cfg.me.as_str()]),
        );
        let peers = cfg
            .peers
            .iter()
            .map(|p| (p.clone(), PeerState::default()))
            .collect();
        Ok(Election {
            cluster,
            started: now,
            seq: 0,
            sent: VecDeque::new(),
            next_heartbeat: now,
            last_heartbeat: None,
            link_up: true,
            listening_since: now,
            last_poll: None,
            leaving: false,
            peers,
            addrs: BTreeMap::new(),
            witness_ok: None,
            witness_since: None,
            last_sent: BTreeMap::new(),
            events: Vec::new(),
            ignored_reported: BTreeSet::new(),
            reply_to: BTreeSet::new(),
            cfg,
        })
    }

    /// The cluster id heartbeats carry.
    pub fn cluster(&self) -> u64 {
        self.cluster
    }

    /// The timers in force.
    pub fn timing(&self) -> &Timing {
        &self.cfg.timing
    }

    /// This node's name.
    pub fn me(&self) -> &str {
        &self.cfg.me
    }

    /// Replaces the set of addresses and who may announce each. Addresses that disappear stop
    /// being announced at the next poll.
    pub fn set_addresses(&mut self, addrs: BTreeMap<IpAddr, Eligible>) {
        let old: Vec<IpAddr> = self.addrs.keys().copied().collect();
        for a in old {
            if !addrs.contains_key(&a) {
                if let Some(st) = self.addrs.remove(&a) {
                    if st.holding.is_some() {
                        self.events.push(Event::Withdrawn {
                            addr: a,
                            reason: Reason::Removed,
                        });
                    }
                }
            }
        }
        for (a, e) in addrs {
            match self.addrs.get_mut(&a) {
                Some(st) => st.eligible = e,
                None => {
                    self.addrs.insert(
                        a,
                        AddrState {
                            eligible: e,
                            grant: Grant::None,
                            floor: 0,
                            holding: None,
                            probe: if self.cfg.probe { None } else { Some(None) },
                            conflict_reported: None,
                        },
                    );
                }
            }
        }
    }

    /// The configured addresses.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addrs.keys().copied()
    }

    /// The MACs peers reported for their announcing interfaces.
    pub fn peer_macs(&self) -> BTreeSet<[u8; 6]> {
        self.peers.values().filter_map(|p| p.mac).collect()
    }

    /// The announcing interface went up or down. Down withdraws everything at the next poll;
    /// up starts a new listening period (a peer is not presumed gone before this node has
    /// listened for T_takeover).
    pub fn on_link(&mut self, now: Stamp, up: bool) {
        if up && !self.link_up {
            self.listening_since = self.listening_since.max(now);
        }
        self.link_up = up;
    }

    /// A witness probe sent at `sent` was answered by a host that is not a member.
    ///
    /// A witness that answers again after a gap longer than `T_takeover − T_fence` (a healed
    /// or reshaped partition) counts only after it has answered for T_takeover again: until
    /// then this node may simply not have heard its peer yet, and a witness that was on the
    /// other side for that long may have given the peer a vote that is still running. (A visit
    /// no longer than the gap cannot give a node a usable vote: it would end before the node's
    /// own wait does.)
    pub fn on_witness(&mut self, sent: Stamp) {
        let gap = self
            .cfg
            .timing
            .takeover
            .saturating_sub(self.cfg.timing.fence);
        if self.witness_ok.is_none_or(|w| sent > w + gap) {
            self.witness_since = Some(sent);
        }
        if self.witness_ok.is_none_or(|w| sent > w) {
            self.witness_ok = Some(sent);
        }
    }

    /// The end of the witness's vote, if it may vote now.
    fn witness_vote(&self, now: Stamp) -> Option<Stamp> {
        let (w, h, since) = (self.witness_ok?, self.last_heartbeat?, self.witness_since?);
        (now >= since + self.cfg.timing.takeover).then(|| w.min(h) + self.cfg.timing.fence)
    }

    /// The result of a conflict probe for `addr`: the MAC that answered, or `None`. Whether
    /// it is a conflict (a MAC that is not a member's) is decided at each poll, with the
    /// members' MACs known then, and reported only once every peer has named its MAC (or
    /// after `rejoin`): a member's answer may come before its first heartbeat.
    pub fn on_probe(&mut self, addr: IpAddr, answer: Option<[u8; 6]>) {
        if let Some(st) = self.addrs.get_mut(&addr) {
            st.probe = Some(answer);
        }
    }

    /// Whether `addr` needs a conflict probe (it is not announced here, and probing is on).
    pub fn wants_probe(&self, addr: IpAddr) -> bool {
        self.cfg.probe && self.addrs.get(&addr).is_some_and(|s| s.holding.is_none())
    }

    /// Shut down: withdraw everything now and tell the peers (yield all), so a successor
    /// takes over without waiting out T_takeover.
    pub fn leave(&mut self) {
        self.leaving = true;
    }

    /// A heartbeat arrived at `now`. Unknown senders and other clusters are ignored (and
    /// reported once).
    pub fn on_heartbeat(&mut self, now: Stamp, hb: Heartbeat) {
        if hb.is_hello {
            return; // addresses only: the runtime learns from it, the election never does
        }
        if hb.cluster != self.cluster || !self.peers.contains_key(&hb.from) {
            let why = if hb.cluster != self.cluster {
                "it is configured with other members (cluster id differs): give every node the \
                 same peers"
                    .to_string()
            } else {
                format!("{:?} is not a configured peer", hb.from)
            };
            if self.ignored_reported.insert(hb.from.clone()) {
                self.events.push(Event::Ignored { from: hb.from, why });
            }
            return;
        }
        let takeover = self.cfg.timing.takeover;
        let my_inc = self.cfg.incarnation;
        let p = self.peers.get_mut(&hb.from).expect("checked above");
        if p.incarnation != Some(hb.incarnation) {
            if p.incarnation.is_some() {
                self.events.push(Event::PeerRestarted {
                    peer: hb.from.clone(),
                });
            }
            *p = PeerState {
                was_alive: p.was_alive,
                ..PeerState::default()
            };
            p.incarnation = Some(hb.incarnation);
        } else if hb.seq <= p.seq {
            return; // duplicate or reordered: older news never overrides newer
        }
        let alive = p.last_rx.is_some_and(|t| now < t + takeover);
        if !alive {
            p.alive_since = Some(now);
        }
        p.last_rx = Some(now);
        p.seq = hb.seq;
        if let Some((inc, seq)) = hb.echo {
            if inc == my_inc && p.echo.is_none_or(|e| seq > e) {
                p.echo = Some(seq);
            }
        }
        p.grants_to_me = hb.grants.iter().copied().collect();
        for a in &hb.grants {
            p.granted_at.insert(*a, now);
        }
        p.granted_at.retain(|_, t| now < *t + takeover);
        p.held = hb
            .held
            .iter()
            .map(|(a, ms)| (*a, now - std::time::Duration::from_millis(u64::from(*ms))))
            .collect();
        p.yields = hb.yields.iter().copied().collect();
        p.leaving = hb.leaving;
        p.link_up = hb.link_up;
        p.mac = hb.mac;
        p.sees_me_stable = hb.you_stable;
        let from = hb.from;
        if !hb.is_reply
            && self
                .addrs
                .values()
                .any(|s| s.grant == Grant::To(from.clone()))
        {
            self.reply_to.insert(from);
        }
    }

    fn alive(&self, p: &PeerState, now: Stamp) -> bool {
        p.last_rx
            .is_some_and(|t| now < t + self.cfg.timing.takeover)
    }

    /// The peer is gone for the witness rule: it said it is leaving, or this node has listened
    /// (link up, not stalled) for T_takeover since it last heard it.
    fn gone(&self, p: &PeerState, now: Stamp) -> bool {
        let heard = p.last_rx.unwrap_or(Stamp::ZERO).max(self.listening_since);
        p.leaving || now >= heard + self.cfg.timing.takeover
    }

    fn stable(&self, p: &PeerState, now: Stamp) -> bool {
        self.alive(p, now)
            && p.alive_since
                .is_some_and(|s| now >= s + self.cfg.timing.rejoin)
    }

    fn quiet(&self, now: Stamp) -> bool {
        now < self.started + self.cfg.timing.takeover
    }

    /// This node counts itself stable: it has run for `rejoin`, and no peer that hears it
    /// says otherwise (so a node that came back agrees with its peers that it did).
    fn self_stable(&self, now: Stamp) -> bool {
        now >= self.started + self.cfg.timing.rejoin
            && self
                .peers
                .values()
                .filter(|p| self.alive(p, now) && !p.leaving)
                .all(|p| p.sees_me_stable)
    }

    /// The candidates for `addr` in this node's view.
    fn candidates(&self, addr: IpAddr, st: &AddrState, now: Stamp) -> Vec<&str> {
        let mut c = Vec::new();
        if self.link_up
            && !self.leaving
            && st.eligible.admits(&self.cfg.me)
            && (st.holding.is_some() || self.self_stable(now))
        {
            c.push(self.cfg.me.as_str());
        }
        for (name, p) in &self.peers {
            if self.alive(p, now)
                && !p.leaving
                && p.link_up
                && st.eligible.admits(name)
                && (self.stable(p, now) || p.held.contains_key(&addr))
            {
                c.push(name.as_str());
            }
        }
        c
    }

    fn owner(&self, addr: IpAddr, st: &AddrState, now: Stamp) -> Option<String> {
        rendezvous::owner(addr, self.candidates(addr, st, now)).map(str::to_string)
    }

    /// Whom this node wants to grant `addr` to now (before the cooling rule).
    fn target(&self, addr: IpAddr, st: &AddrState, now: Stamp) -> Option<String> {
        if self.leaving {
            return None;
        }
        let owner = self.owner(addr, st, now)?;
        if self.quiet(now) {
            // A new incarnation grants only what a peer already announces: its previous
            // incarnation's grants may still be in use.
            let holder = self
                .peers
                .get(&owner)
                .is_some_and(|p| p.held.contains_key(&addr));
            return holder.then_some(owner);
        }
        Some(owner)
    }

    fn sent_at(&self, seq: u64) -> Option<Stamp> {
        self.sent.iter().find(|(s, _)| *s == seq).map(|(_, t)| *t)
    }

    /// The end of this node's lease on `addr`, if it has one (it may already have passed).
    fn lease(&self, addr: IpAddr, st: &AddrState, now: Stamp) -> Option<Stamp> {
        if !self.link_up || self.leaving || st.grant != Grant::To(self.cfg.me.clone()) {
            return None;
        }
        let fence = self.cfg.timing.fence;
        let mut votes = vec![Stamp::MAX];
        for p in self.peers.values() {
            if p.grants_to_me.contains(&addr) {
                if let Some(e) = p.echo.filter(|e| *e > st.floor) {
                    if let Some(t) = self.sent_at(e) {
                        votes.push(t + fence);
                    }
                }
            }
        }
        if self.cfg.witness {
            if let Some(end) = self.witness_vote(now) {
                // The witness stands in for the peer only when the peer is gone, or when its
                // last word, heard while this node was listening, was a grant to this node.
                let usable = self.peers.values().all(|p| {
                    self.gone(p, now)
                        || (p.grants_to_me.contains(&addr)
                            && p.last_rx.is_some_and(|r| r >= self.listening_since))
                });
                if usable {
                    votes.push(end);
                }
            }
        }
        let voters = self.peers.len() + 1 + usize::from(self.cfg.witness);
        let majority = voters / 2 + 1;
        votes.sort_unstable_by(|a, b| b.cmp(a));
        votes.get(majority - 1).copied()
    }

    fn probe_ok(&self, st: &AddrState) -> bool {
        match st.probe {
            None => false,
            Some(None) => true,
            Some(Some(mac)) => self.peers.values().any(|p| p.mac == Some(mac)),
        }
    }

    /// Whether this node has a majority: its own heartbeats echoed by enough peers (or the
    /// witness) within T_fence.
    pub fn quorum(&self, now: Stamp) -> bool {
        let fence = self.cfg.timing.fence;
        let mut n = 1;
        for p in self.peers.values() {
            if let Some(t) = p.echo.and_then(|e| self.sent_at(e)) {
                if now < t + fence {
                    n += 1;
                }
            }
        }
        if self.witness_vote(now).is_some_and(|end| now < end) {
            n += 1;
        }
        let voters = self.peers.len() + 1 + usize::from(self.cfg.witness);
        n > voters / 2 && self.link_up
    }

    /// Recomputes everything at `now`: grants, leases, what to announce, what to send.
    pub fn poll(&mut self, now: Stamp) -> Output {
        let takeover = self.cfg.timing.takeover;
        let me = self.cfg.me.clone();
        // A gap between polls longer than two heartbeats is a stall of this process (or of
        // its machine): it heard nothing meanwhile, so it starts listening anew.
        if self
            .last_poll
            .is_some_and(|l| now > l + self.cfg.timing.heartbeat * 2)
        {
            self.listening_since = now;
        }
        self.last_poll = Some(now);

        // Peers going up and down.
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for n in &names {
            let alive = self.alive(&self.peers[n], now);
            let p = self.peers.get_mut(n).expect("listed");
            if alive != p.was_alive {
                p.was_alive = alive;
                self.events.push(if alive {
                    Event::PeerUp { peer: n.clone() }
                } else {
                    Event::PeerDown { peer: n.clone() }
                });
            }
        }

        // Conflicts: a probe answered by a MAC that is no member's.
        let addrs: Vec<IpAddr> = self.addrs.keys().copied().collect();
        // Judged once every peer has told its MAC (or after `rejoin`): a peer's answer may
        // come before its first heartbeat.
        let macs_known = self.peers.values().all(|p| p.mac.is_some());
        if macs_known || now >= self.started + self.cfg.timing.rejoin {
            let macs = self.peer_macs();
            for a in &addrs {
                let st = self.addrs.get_mut(a).expect("listed");
                let foreign = st.probe.flatten().filter(|m| !macs.contains(m));
                if foreign != st.conflict_reported {
                    st.conflict_reported = foreign;
                    self.events.push(match foreign {
                        Some(mac) => Event::Conflict { addr: *a, mac },
                        None => Event::ConflictCleared { addr: *a },
                    });
                }
            }
        }

        // Grants.
        for a in &addrs {
            let st = &self.addrs[a];
            let target = self.target(*a, st, now);
            let next = match &st.grant {
                Grant::None => target.map_or(Grant::None, Grant::To),
                Grant::To(g) if Some(g) == target.as_ref() => Grant::To(g.clone()),
                Grant::To(g) if *g == me => target.map_or(Grant::None, Grant::To),
                Grant::To(g) => {
                    let last = self.peers.get(g).and_then(|p| p.last_rx).unwrap_or(now);
                    let cooling = Grant::Cooling {
                        prev: g.clone(),
                        until: last + takeover,
                    };
                    self.settle_cooling(cooling, *a, target, now)
                }
                Grant::Cooling { .. } => self.settle_cooling(st.grant.clone(), *a, target, now),
            };
            self.addrs.get_mut(a).expect("listed").grant = next;
        }

        // Leases and announcements.
        let mut out = Output::default();
        for a in &addrs {
            let st = &self.addrs[a];
            let lease = self.lease(*a, st, now).filter(|l| *l > now);
            let announce = lease.is_some() && self.probe_ok(st);
            let was = st.holding.is_some();
            let reason = if announce {
                None
            } else if self.leaving {
                Some(Reason::Leaving)
            } else if !self.link_up {
                Some(Reason::LinkDown)
            } else if st.grant != Grant::To(me.clone()) {
                Some(Reason::Moved)
            } else {
                Some(Reason::LostMajority)
            };
            let st = self.addrs.get_mut(a).expect("listed");
            match (was, announce) {
                (false, true) => {
                    st.holding = Some(now);
                    self.events.push(Event::Acquired { addr: *a });
                }
                (true, false) => {
                    st.holding = None;
                    self.events.push(Event::Withdrawn {
                        addr: *a,
                        reason: reason.unwrap_or(Reason::LostMajority),
                    });
                }
                _ => {}
            }
            if let (true, Some(l)) = (announce, lease) {
                out.announce.insert(*a, l);
            }
        }

        // Heartbeats: on schedule, or at once when what a peer should hear has changed.
        let mut changed = self.leaving;
        let mut msgs = Vec::new();
        for n in &names {
            let body = self.body_for(n, now);
            if self.last_sent.get(n) != Some(&body) {
                changed = true;
            }
            msgs.push((n.clone(), body));
        }
        // A new incarnation first listens: until it has heard every peer (or for two
        // heartbeat intervals) it sends nothing, so its first word already grants what the
        // peers announce instead of telling them it grants nothing.
        let listening = now < self.started + self.cfg.timing.heartbeat * 2
            && self.peers.values().any(|p| p.last_rx.is_none());
        let periodic = now >= self.next_heartbeat || changed;
        let replies = std::mem::take(&mut self.reply_to);
        if !listening && (periodic || !replies.is_empty()) {
            self.seq += 1;
            let seq = self.seq;
            self.sent.push_back((seq, now));
            let keep = now - (self.cfg.timing.fence + self.cfg.timing.heartbeat);
            while self.sent.len() > 1 && self.sent.front().is_some_and(|(_, t)| *t < keep) {
                self.sent.pop_front();
            }
            self.last_heartbeat = Some(now);
            if periodic {
                self.next_heartbeat = now + self.cfg.timing.heartbeat;
            }
            for (n, body) in msgs {
                if !periodic && !replies.contains(&n) {
                    continue;
                }
                for y in &body.1 {
                    if let Some(st) = self.addrs.get_mut(y) {
                        st.floor = st.floor.max(seq);
                    }
                }
                let mut hb = self.heartbeat(&n, seq, &body, now);
                hb.is_reply = !periodic;
                self.last_sent.insert(n.clone(), body);
                out.messages.push((n, hb));
            }
        }
        out.events = std::mem::take(&mut self.events);
        out
    }

    fn settle_cooling(
        &self,
        cooling: Grant,
        addr: IpAddr,
        target: Option<String>,
        now: Stamp,
    ) -> Grant {
        let Grant::Cooling { prev, until } = &cooling else {
            return cooling;
        };
        if target.as_ref() == Some(prev) {
            return Grant::To(prev.clone());
        }
        let yielded = self
            .peers
            .get(prev)
            .is_some_and(|p| p.yields.contains(&addr));
        if now >= *until || yielded {
            target.map_or(Grant::None, Grant::To)
        } else {
            cooling
        }
    }

    /// Grants, yields and held addresses for `peer`: what changes trigger a send.
    fn body_for(&self, peer: &str, now: Stamp) -> Body {
        let grants = self
            .addrs
            .iter()
            .filter(|(_, s)| s.grant == Grant::To(peer.to_string()))
            .map(|(a, _)| *a)
            .collect();
        let p = &self.peers[peer];
        let yields = p
            .granted_at
            .iter()
            .filter(|(a, t)| {
                now < **t + self.cfg.timing.takeover
                    && self.addrs.get(a).is_some_and(|s| {
                        s.holding.is_none()
                            && (self.leaving
                                || self.target(**a, s, now).as_deref() != Some(&self.cfg.me))
                    })
            })
            .map(|(a, _)| *a)
            .collect();
        let held = self
            .addrs
            .iter()
            .filter(|(_, s)| s.holding.is_some())
            .map(|(a, _)| *a)
            .collect();
        (grants, yields, held)
    }

    fn heartbeat(&self, peer: &str, seq: u64, body: &Body, now: Stamp) -> Heartbeat {
        let p = &self.peers[peer];
        let held = body
            .2
            .iter()
            .map(|a| {
                let since = self.addrs[a].holding.unwrap_or(now);
                (
                    *a,
                    u32::try_from(now.since(since).as_millis()).unwrap_or(u32::MAX),
                )
            })
            .collect();
        Heartbeat {
            cluster: self.cluster,
            from: self.cfg.me.clone(),
            incarnation: self.cfg.incarnation,
            seq,
            link_up: self.link_up,
            leaving: self.leaving,
            mac: self.cfg.mac,
            echo: p.incarnation.map(|i| (i, p.seq)),
            grants: body.0.clone(),
            held,
            yields: body.1.clone(),
            you_stable: self.stable(p, now),
            is_reply: false,
            is_hello: false,
        }
    }

    /// The hello this node sends to the whole link when peers' addresses are learnt (see
    /// [`Heartbeat::is_hello`]): who it is, in which cluster, and nothing the election reads.
    pub fn hello(&self) -> Heartbeat {
        Heartbeat {
            cluster: self.cluster,
            from: self.cfg.me.clone(),
            incarnation: self.cfg.incarnation,
            link_up: self.link_up,
            mac: self.cfg.mac,
            is_hello: true,
            ..Heartbeat::default()
        }
    }

    /// Whether `name` is one of this node's peers (not itself).
    pub fn is_peer(&self, name: &str) -> bool {
        self.peers.contains_key(name)
    }

    /// The earliest time after `now` at which a poll could change anything.
    pub fn next_wakeup(&self, now: Stamp) -> Stamp {
        let t = &self.cfg.timing;
        let mut times = vec![
            self.next_heartbeat,
            self.started + t.heartbeat * 2,
            self.started + t.takeover,
            self.started + t.rejoin,
            self.listening_since + t.takeover,
        ];
        for p in self.peers.values() {
            if let Some(r) = p.last_rx {
                times.push(r + t.takeover);
            }
            if let Some(s) = p.alive_since {
                times.push(s + t.rejoin);
            }
            for g in p.granted_at.values() {
                times.push(*g + t.takeover);
            }
            if let Some(tx) = p.echo.and_then(|e| self.sent_at(e)) {
                times.push(tx + t.fence);
            }
        }
        for (a, st) in &self.addrs {
            if let Grant::Cooling { until, .. } = st.grant {
                times.push(until);
            }
            if let Some(l) = self.lease(*a, st, now) {
                times.push(l);
            }
        }
        if let (Some(w), Some(h)) = (self.witness_ok, self.last_heartbeat) {
            times.push(w.min(h) + t.fence);
        }
        if let Some(s) = self.witness_since {
            times.push(s + t.takeover);
        }
        times
            .into_iter()
            .filter(|x| *x > now)
            .min()
            .unwrap_or(now + t.heartbeat)
    }

    /// A picture for status output.
    pub fn status(&self, now: Stamp) -> Status {
        let addresses = self
            .addrs
            .iter()
            .map(|(a, st)| {
                let (announcer, since) = match st.holding {
                    Some(s) => (Some(self.cfg.me.clone()), Some(now.since(s).as_secs_f64())),
                    None => self
                        .peers
                        .iter()
                        .filter(|(_, p)| self.alive(p, now))
                        .find_map(|(n, p)| {
                            p.held
                                .get(a)
                                .map(|s| (Some(n.clone()), Some(now.since(*s).as_secs_f64())))
                        })
                        .unwrap_or((None, None)),
                };
                let lease = self.lease(*a, st, now).filter(|l| *l > now);
                AddrStatus {
                    address: *a,
                    owner: self.owner(*a, st, now),
                    announcer,
                    since_seconds: since,
                    announcing: st.holding.is_some(),
                    lease_ms: lease.map_or(0, |l| {
                        if l == Stamp::MAX {
                            u64::MAX
                        } else {
                            l.since(now).as_millis() as u64
                        }
                    }),
                    conflict: st.conflict_reported.map(format_mac),
                }
            })
            .collect();
        let peers = self
            .peers
            .iter()
            .map(|(n, p)| PeerStatus {
                name: n.clone(),
                alive: self.alive(p, now),
                stable: self.stable(p, now),
                last_heard_ms: p.last_rx.map(|r| now.since(r).as_millis() as u64),
                announces: if self.alive(p, now) {
                    p.held.keys().copied().collect()
                } else {
                    Vec::new()
                },
            })
            .collect();
        Status {
            node: self.cfg.me.clone(),
            link_up: self.link_up,
            quorum: self.quorum(now),
            settled: !self.quiet(now),
            addresses,
            peers,
        }
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}
