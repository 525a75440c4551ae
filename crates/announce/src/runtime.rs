//! The announcer at run time: drives the [`Election`] with heartbeats, the link watch, the
//! witness and conflict probes, and realises its decisions in the kernel.
//!
//! Why this shape (see the README's L2 section for the whole argument):
//!
//! - **Answers come from this process.** The responder of `berth-netlink` answers ARP and
//!   NDP for the announced addresses from user space; the kernel never does (the address is
//!   held on `lo`, and `arp_ignore=1`/`arp_announce=2` on the announcing interface keep the
//!   kernel from answering for it or using it as an ARP source). A `kill -9`'d or stopped
//!   announcer therefore stops answering the moment it stops running: nothing is left behind
//!   that answers on its own.
//! - **Every frame passes the lease gate** ([`LeaseGate`]) right before it is sent, so a
//!   process that resumes from a stall never answers on a lease that ended meanwhile.
//! - **The gate is updated before anything else** after every poll; kernel changes (the
//!   address on `lo`, the responder's set, GARPs) follow in a task of their own, so a slow
//!   netlink call never delays a heartbeat or a withdrawal.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use berth_netlink::{AddrOptions, Addresses, ArpNdp, ErrorKind, LinkEvent, LinkWatch, Links, Mac};
use ipnet::IpNet;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::election::{Election, Eligible, Event, Status};
use crate::lease::LeaseGate;
use crate::message::{Heartbeat, MAX_LEN};
use crate::metrics::Metrics;
use crate::time::{Clock, Stamp};
use crate::transport::Transport;

/// What the announcer needs from the kernel: addresses, links, ARP/NDP.
pub trait Kernel: Addresses + Links + ArpNdp + Clone + 'static {}
impl<T: Addresses + Links + ArpNdp + Clone + 'static> Kernel for T {}

/// Where this node holds an address it announces, so that it accepts traffic for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// As a host address on this interface (normally `lo`): the standalone VIP.
    On(String),
    /// Nowhere: something else accepts the traffic (kube-proxy's rules for a Service IP).
    Nowhere,
}

/// How the runtime behaves around the election.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The announcing interface (heartbeats, answers, GARPs, probes).
    pub interface: String,
    /// Where announced addresses are held.
    pub hold: Hold,
    /// Each peer's heartbeat address, where it is known beforehand. A peer missing here is
    /// learnt from its hellos (see [`Settings::discovery`]).
    pub peers: BTreeMap<String, SocketAddr>,
    /// Where hellos go (IPv4 `255.255.255.255:port`, IPv6 `[ff02::1%interface]:port`), when
    /// peers' addresses are learnt rather than configured; `None`: no hellos. Why: on an
    /// announcing interface other than the one holding the nodes' InternalIPs, nothing says
    /// which address a peer has there, and a hello from each member on the link tells every
    /// other member, with no extra object to write.
    pub discovery: Option<SocketAddr>,
    /// How often a hello goes out (also at once when a peer is learnt or changes address).
    pub hello_interval: Duration,
    /// The witness's address (two members only).
    pub witness: Option<IpAddr>,
    /// This node's heartbeat address, to send every heartbeat a second time through the
    /// witness (a frame to the witness's MAC, which a router forwards to the peer); `None`:
    /// direct heartbeats only. Why: with only the direct path between the two nodes cut,
    /// both still hear the witness, and without a second path each would think the other
    /// dead and both would announce.
    pub relay_from: Option<SocketAddr>,
    /// How long one conflict probe listens (three probes are spread over it).
    pub probe_wait: Duration,
    /// How often an address this node does not announce is probed again.
    pub reprobe: Duration,
    /// How soon a probe is retried after a conflict.
    pub conflict_retry: Duration,
    /// When GARPs / unsolicited NAs go out after a takeover, from the takeover.
    pub garp: Vec<Duration>,
}

impl Settings {
    /// Defaults for everything but the interface and the peers: hold on `lo`, probes of
    /// 300 ms repeated every 60 s (10 s after a conflict), GARPs at 0, 50 ms, 250 ms, 1 s, 3 s.
    pub fn new(interface: &str, peers: BTreeMap<String, SocketAddr>) -> Settings {
        Settings {
            interface: interface.to_string(),
            hold: Hold::On("lo".into()),
            peers,
            discovery: None,
            hello_interval: Duration::from_secs(1),
            witness: None,
            relay_from: None,
            probe_wait: Duration::from_millis(300),
            reprobe: Duration::from_secs(60),
            conflict_retry: Duration::from_secs(10),
            garp: [0, 50, 250, 1000, 3000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
        }
    }
}

/// Why the announcer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A kernel operation failed (the interface is missing, no permission…).
    #[error("{0}")]
    Kernel(#[from] berth_netlink::Error),
}

enum Ctl {
    Status(oneshot::Sender<Snapshot>),
    SetAddresses(BTreeMap<IpAddr, Eligible>),
    Leave(oneshot::Sender<()>),
}

/// The election's status with the runtime's own figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Snapshot {
    /// The election's picture.
    #[serde(flatten)]
    pub status: Status,
    /// Answers and announcements the lease gate withheld so far.
    pub withheld: u64,
    /// Timers in force, milliseconds.
    pub heartbeat_ms: u64,
    /// T_fence, milliseconds.
    pub fence_ms: u64,
    /// T_takeover, milliseconds.
    pub takeover_ms: u64,
    /// The heartbeat address of each peer, configured or learnt from its hellos.
    pub peer_addresses: BTreeMap<String, SocketAddr>,
    /// Whether peers' addresses are learnt from hellos.
    pub discovery: bool,
}

/// A running announcer. Dropping it stops its tasks at once without any cleanup (as a crash
/// would); [`Announcer::leave`] is the graceful way.
pub struct Announcer {
    ctl: mpsc::Sender<Ctl>,
    events: broadcast::Sender<Event>,
    tasks: Vec<JoinHandle<()>>,
    gate: Arc<LeaseGate>,
}

impl std::fmt::Debug for Announcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer").finish_non_exhaustive()
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Announcer {
    /// Starts announcing: installs the lease gate, removes stale addresses this node may have
    /// left behind (a crashed predecessor's), watches the link, and runs the election.
    pub async fn start<K: Kernel, T: Transport>(
        kernel: K,
        transport: T,
        clock: Arc<dyn Clock>,
        mut election: Election,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Result<Announcer, StartError> {
        let dev = settings.interface.clone();
        let link = kernel.link(&dev).await?;
        let gate = Arc::new(LeaseGate::with_counter(
            clock.clone(),
            metrics.withheld.clone(),
        ));
        kernel.set_gate(Some(gate.clone()));
        // Nothing is announced at start: stop any answering and remove what a previous
        // process left (it was killed, or stopped, without cleaning up).
        kernel.answer(&dev, BTreeSet::new()).await?;
        if let Hold::On(hold) = &settings.hold {
            for a in election.addresses().collect::<Vec<_>>() {
                match kernel.delete_address(hold, host(a)).await {
                    Ok(true) => {
                        tracing::info!(address = %a, on = %hold, "removed a stale address left by an earlier run")
                    }
                    Ok(false) => {}
                    Err(e) if matches!(e.kind, ErrorKind::Foreign { .. }) => tracing::warn!(
                        address = %a, on = %hold,
                        "the address is on {hold} but was not put there by Berth; left alone (this node accepts its traffic even when it does not announce it)"
                    ),
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let watch = kernel.watch().await?;
        let now = clock.now();
        election.on_link(now, link.is_running());
        metrics
            .link_up
            .get_or_create(&Metrics::iface(&dev))
            .set(i64::from(link.is_running()));

        let (ctl_tx, ctl_rx) = mpsc::channel(16);
        let (events, _) = broadcast::channel(256);
        let (desired_tx, desired_rx) = watch::channel(BTreeSet::new());
        let (plan_tx, plan_rx) = watch::channel(BTreeSet::new());
        let (macs_tx, macs_rx) = watch::channel(BTreeSet::new());
        let (probe_tx, probe_rx) = mpsc::channel(64);
        let (witness_tx, witness_rx) = mpsc::channel::<(Stamp, Mac)>(16);

        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(realize(
            kernel.clone(),
            settings.clone(),
            desired_rx,
            metrics.clone(),
        )));
        tasks.push(tokio::spawn(conflict_prober(
            kernel.clone(),
            settings.clone(),
            plan_rx,
            macs_rx.clone(),
            probe_tx,
        )));
        if let Some(w) = settings.witness {
            tasks.push(tokio::spawn(witness_prober(
                kernel.clone(),
                dev.clone(),
                w,
                election.timing().witness_interval(),
                clock.clone(),
                macs_rx,
                witness_tx,
            )));
        }
        let by_ip = settings
            .peers
            .iter()
            .map(|(n, a)| (a.ip(), n.clone()))
            .collect();
        let peers = settings.peers.clone();
        let lp = Loop {
            election,
            transport,
            clock,
            kernel,
            settings,
            peers,
            by_ip,
            next_hello: None,
            gate: gate.clone(),
            metrics,
            events: events.clone(),
            desired: desired_tx,
            plan: plan_tx,
            macs: macs_tx,
            link: Some(watch),
            witness_rx,
            witness_mac: None,
            probe_rx,
            ctl: ctl_rx,
        };
        tasks.push(tokio::spawn(lp.run()));
        Ok(Announcer {
            ctl: ctl_tx,
            events,
            tasks,
            gate,
        })
    }

    /// The current status; `None` when the announcer has stopped.
    pub async fn status(&self) -> Option<Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.ctl.send(Ctl::Status(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Events (acquired, withdrawn, peers, conflicts) from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Replaces the addresses to announce and who may announce each.
    pub async fn set_addresses(&self, addrs: BTreeMap<IpAddr, Eligible>) {
        let _ = self.ctl.send(Ctl::SetAddresses(addrs)).await;
    }

    /// The lease gate (for tests and metrics).
    pub fn gate(&self) -> &Arc<LeaseGate> {
        &self.gate
    }

    /// Graceful shutdown: withdraws everything at once, tells the peers (so a successor takes
    /// over without waiting out T_takeover), removes what it put in the kernel, and stops.
    pub async fn leave(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ctl.send(Ctl::Leave(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(3), rx).await;
        }
    }
}

/// `addr` as a host route: /32 or /128.
pub fn host(addr: IpAddr) -> IpNet {
    IpNet::from(addr)
}

struct Loop<K: Kernel, T: Transport> {
    election: Election,
    transport: T,
    clock: Arc<dyn Clock>,
    kernel: K,
    settings: Settings,
    by_ip: HashMap<IpAddr, String>,
    /// Each peer's heartbeat address: configured, or learnt from its hellos.
    peers: BTreeMap<String, SocketAddr>,
    /// When the next hello is due (`None`: at once; unused without discovery).
    next_hello: Option<tokio::time::Instant>,
    gate: Arc<LeaseGate>,
    metrics: Arc<Metrics>,
    events: broadcast::Sender<Event>,
    desired: watch::Sender<BTreeSet<IpAddr>>,
    plan: watch::Sender<BTreeSet<IpAddr>>,
    macs: watch::Sender<BTreeSet<[u8; 6]>>,
    link: Option<LinkWatch>,
    witness_rx: mpsc::Receiver<(Stamp, Mac)>,
    /// The MAC that last answered a witness probe: where relayed heartbeats go.
    witness_mac: Option<Mac>,
    probe_rx: mpsc::Receiver<(IpAddr, Option<[u8; 6]>)>,
    ctl: mpsc::Receiver<Ctl>,
}

impl<K: Kernel, T: Transport> Loop<K, T> {
    async fn run(mut self) {
        let mut buf = vec![0u8; MAX_LEN];
        loop {
            let now = self.clock.now();
            self.step(now).await;
            let wake = self.election.next_wakeup(now);
            let mut sleep = wake.since(self.clock.now());
            if let Some(next) = self.hello_due().await {
                sleep = sleep.min(next);
            }
            tokio::select! {
                biased;
                ev = next_link(&mut self.link) => self.on_link(ev).await,
                c = self.ctl.recv() => match c {
                    None => return,
                    Some(Ctl::Status(tx)) => {
                        let _ = tx.send(self.snapshot());
                    }
                    Some(Ctl::SetAddresses(a)) => self.election.set_addresses(a),
                    Some(Ctl::Leave(tx)) => {
                        self.leave().await;
                        let _ = tx.send(());
                        return;
                    }
                },
                r = self.transport.recv(&mut buf) => match r {
                    Ok((n, from)) => self.on_datagram(&buf[..n], from),
                    Err(e) => {
                        tracing::debug!(error = %e, "heartbeat socket receive error");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some((w, mac)) = self.witness_rx.recv() => {
                    self.witness_mac = Some(mac);
                    self.election.on_witness(w);
                }
                Some((a, m)) = self.probe_rx.recv() => self.election.on_probe(a, m),
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// One poll: the gate first, then the kernel's target, then heartbeats and events.
    async fn step(&mut self, now: Stamp) {
        let out = self.election.poll(now);
        self.gate.set(out.announce.iter().map(|(a, l)| (*a, *l)));
        let want: BTreeSet<IpAddr> = out.announce.keys().copied().collect();
        self.desired.send_if_modified(|d| {
            if *d != want {
                *d = want;
                true
            } else {
                false
            }
        });
        let plan: BTreeSet<IpAddr> = self
            .election
            .addresses()
            .filter(|a| self.election.wants_probe(*a))
            .collect();
        self.plan.send_if_modified(|p| replace(p, plan));
        let macs = self.election.peer_macs();
        self.macs.send_if_modified(|m| replace(m, macs));
        for (peer, hb) in out.messages {
            let Some(to) = self.peers.get(&peer).copied() else {
                continue; // not learnt yet: its hello will come
            };
            let bytes = hb.encode();
            match self.transport.send(to, &bytes).await {
                Ok(()) => {
                    self.metrics.heartbeats_sent.inc();
                }
                Err(e) => {
                    self.metrics.heartbeat_send_errors.inc();
                    tracing::debug!(peer, error = %e, "heartbeat not sent");
                }
            };
            self.relay(&peer, to, &bytes).await;
        }
        for ev in out.events {
            self.metrics.record(&ev);
            log_event(&ev);
            let _ = self.events.send(ev);
        }
    }

    /// The heartbeat's second copy, through the witness (see [`Settings::relay_from`]). The
    /// peer takes whichever copy arrives first; the other is a duplicate by its sequence.
    async fn relay(&self, peer: &str, to: SocketAddr, bytes: &[u8]) {
        // A witness MAC is only ever learnt when there is a witness.
        let (Some(from), Some(via)) = (self.settings.relay_from, self.witness_mac) else {
            return;
        };
        match self
            .kernel
            .send_udp_via(&self.settings.interface, via, from, to, bytes)
            .await
        {
            Ok(()) => {
                self.metrics.heartbeats_relayed.inc();
            }
            Err(e) => {
                self.metrics.heartbeat_send_errors.inc();
                tracing::debug!(peer, error = %e, "heartbeat through the witness not sent");
            }
        }
    }

    fn on_datagram(&mut self, buf: &[u8], from: SocketAddr) {
        let hb = match Heartbeat::decode(buf) {
            Ok(hb) => hb,
            Err(e) => {
                self.metrics.heartbeats_ignored.inc();
                tracing::debug!(%from, error = %e, "datagram ignored");
                return;
            }
        };
        if hb.is_hello {
            self.on_hello(hb, from);
            return;
        }
        // A heartbeat counts only from the address configured (or learnt) for its sender.
        if self.by_ip.get(&from.ip()) != Some(&hb.from) {
            self.metrics.heartbeats_ignored.inc();
            tracing::debug!(%from, claimed = %hb.from, "heartbeat from an address not configured for its sender: ignored");
            return;
        }
        self.metrics.received(&hb.from);
        self.election.on_heartbeat(self.clock.now(), hb);
    }

    /// A peer's hello: learn (or update) its address when it is a member of this cluster.
    fn on_hello(&mut self, hb: Heartbeat, from: SocketAddr) {
        if self.settings.discovery.is_none() || hb.from == self.election.me() {
            return; // configured addresses only, or our own hello looped back
        }
        if hb.cluster != self.election.cluster() || !self.election.is_peer(&hb.from) {
            self.metrics.heartbeats_ignored.inc();
            tracing::debug!(%from, claimed = %hb.from, "hello from another cluster or a non-member: ignored");
            return;
        }
        if self.peers.get(&hb.from) == Some(&from) {
            return;
        }
        match self.peers.insert(hb.from.clone(), from) {
            Some(old) => {
                self.by_ip.remove(&old.ip());
                tracing::warn!(peer = %hb.from, %old, new = %from, "peer's heartbeat address changed (learnt from its hello)");
            }
            None => {
                tracing::info!(peer = %hb.from, address = %from, "peer's heartbeat address learnt from its hello")
            }
        }
        self.by_ip.insert(from.ip(), hb.from);
        self.metrics.peers_learnt.inc();
        self.next_hello = None; // answer at once, so the peer learns this node as fast
    }

    /// Sends a hello when one is due; returns how long until the next.
    async fn hello_due(&mut self) -> Option<Duration> {
        let to = self.settings.discovery?;
        let now = tokio::time::Instant::now();
        if self.next_hello.is_none_or(|t| t <= now) {
            match self
                .transport
                .send(to, &self.election.hello().encode())
                .await
            {
                Ok(()) => {
                    self.metrics.hellos_sent.inc();
                }
                Err(e) => {
                    self.metrics.heartbeat_send_errors.inc();
                    tracing::debug!(%to, error = %e, "hello not sent");
                }
            };
            self.next_hello = Some(now + self.settings.hello_interval);
        }
        self.next_hello.map(|t| t.saturating_duration_since(now))
    }

    async fn on_link(&mut self, ev: Option<LinkEvent>) {
        let dev = &self.settings.interface;
        let up = match ev {
            Some(LinkEvent::Changed(l)) if l.name == *dev => Some(l.is_running()),
            Some(LinkEvent::Removed { name, .. }) if name == *dev => Some(false),
            Some(_) => None,
            None => {
                // The watch broke (its socket closed): make a new one, and read the state.
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.link = self.kernel.watch().await.ok();
                self.kernel.link(dev).await.ok().map(|l| l.is_running())
            }
        };
        if let Some(up) = up {
            if !up {
                self.gate.close_all(); // before anything else
            }
            self.metrics
                .link_up
                .get_or_create(&Metrics::iface(dev))
                .set(i64::from(up));
            self.election.on_link(self.clock.now(), up);
        }
    }

    fn snapshot(&self) -> Snapshot {
        let now = self.clock.now();
        let status = self.election.status(now);
        self.metrics.observe(&self.settings.interface, &status);
        let t = self.election.timing();
        Snapshot {
            status,
            withheld: self.gate.withheld(),
            heartbeat_ms: t.heartbeat.as_millis() as u64,
            fence_ms: t.fence.as_millis() as u64,
            peer_addresses: self.peers.clone(),
            discovery: self.settings.discovery.is_some(),
            takeover_ms: t.takeover.as_millis() as u64,
        }
    }

    async fn leave(&mut self) {
        self.election.leave();
        self.gate.close_all();
        // The leaving heartbeat (with its yields) goes out three times, a millisecond apart,
        // so one lost datagram does not cost the successor T_takeover.
        for _ in 0..3 {
            let now = self.clock.now();
            self.step(now).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Wait (briefly) for the kernel side to be withdrawn.
        self.desired.send_replace(BTreeSet::new());
        for _ in 0..100 {
            if self
                .kernel
                .answered(&self.settings.interface)
                .await
                .map_or(true, |s| s.is_empty())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn replace<T: PartialEq>(slot: &mut T, new: T) -> bool {
    if *slot != new {
        *slot = new;
        true
    } else {
        false
    }
}

async fn next_link(w: &mut Option<LinkWatch>) -> Option<LinkEvent> {
    match w {
        Some(w) => w.next().await,
        None => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            None
        }
    }
}

fn log_event(ev: &Event) {
    match ev {
        Event::Acquired { addr } => tracing::info!(address = %addr, "announcing"),
        Event::Withdrawn { addr, reason } => {
            tracing::info!(address = %addr, reason = ?reason, "withdrawn")
        }
        Event::PeerUp { peer } => tracing::info!(peer, "peer up"),
        Event::PeerDown { peer } => tracing::warn!(peer, "peer down (unheard for T_takeover)"),
        Event::PeerRestarted { peer } => tracing::info!(peer, "peer restarted"),
        Event::Conflict { addr, mac } => tracing::warn!(
            address = %addr, mac = %crate::election::format_mac(*mac),
            "a host that is not a Berth member answers for the address: not announcing it; probing again later"
        ),
        Event::ConflictCleared { addr } => {
            tracing::info!(address = %addr, "conflict cleared: the address is free")
        }
        Event::Ignored { from, why } => tracing::warn!(from, why, "heartbeat ignored"),
    }
}

/// Applies the announced set to the kernel: holds addresses, sets the responder's set, sends
/// GARPs on schedule. Withdrawals first; a failed operation is retried every second.
async fn realize<K: Kernel>(
    kernel: K,
    settings: Settings,
    mut desired: watch::Receiver<BTreeSet<IpAddr>>,
    metrics: Arc<Metrics>,
) {
    let dev = settings.interface.clone();
    let mut applied: BTreeSet<IpAddr> = BTreeSet::new();
    let mut held: BTreeSet<IpAddr> = BTreeSet::new();
    let mut garps: HashMap<IpAddr, JoinHandle<()>> = HashMap::new();
    let mut dirty = false;
    loop {
        let want = desired.borrow_and_update().clone();
        if want != applied || dirty {
            dirty = false;
            let gone: Vec<IpAddr> = applied.difference(&want).copied().collect();
            let new: Vec<IpAddr> = want.difference(&applied).copied().collect();
            for a in &gone {
                if let Some(t) = garps.remove(a) {
                    t.abort();
                }
            }
            // Stop answering for what is gone (the gate already refuses it).
            let keep: BTreeSet<IpAddr> = applied.intersection(&want).copied().collect();
            if !gone.is_empty() {
                if let Err(e) = kernel.answer(&dev, keep.clone()).await {
                    metrics.kernel_errors.inc();
                    tracing::warn!(error = %e, "updating the ARP/NDP responder");
                    dirty = true;
                }
            }
            if let Hold::On(on) = &settings.hold {
                for a in held.clone() {
                    if !want.contains(&a) {
                        match kernel.delete_address(on, host(a)).await {
                            Ok(_) => {
                                held.remove(&a);
                            }
                            Err(e) => {
                                metrics.kernel_errors.inc();
                                tracing::warn!(error = %e, "removing {a} from {on}");
                                dirty = true;
                            }
                        }
                    }
                }
                for a in &want {
                    if held.contains(a) {
                        continue;
                    }
                    let opts = AddrOptions {
                        nodad: true,
                        noprefixroute: false,
                    };
                    match kernel.add_address(on, host(*a), opts).await {
                        Ok(()) => {
                            held.insert(*a);
                        }
                        Err(e) => {
                            metrics.kernel_errors.inc();
                            tracing::warn!(error = %e, "holding {a} on {on}");
                            dirty = true;
                        }
                    }
                }
            }
            match kernel.answer(&dev, want.clone()).await {
                Ok(()) => applied = want.clone(),
                Err(e) => {
                    metrics.kernel_errors.inc();
                    tracing::warn!(error = %e, "setting the ARP/NDP responder");
                    applied = keep;
                    dirty = true;
                }
            }
            for a in new {
                if !applied.contains(&a) {
                    continue;
                }
                let k = kernel.clone();
                let d = dev.clone();
                let schedule = settings.garp.clone();
                let m = metrics.clone();
                garps.insert(
                    a,
                    tokio::spawn(async move {
                        let start = tokio::time::Instant::now();
                        for off in schedule {
                            tokio::time::sleep_until(start + off).await;
                            match k.announce(&d, a).await {
                                Ok(()) => {
                                    m.garps_sent.inc();
                                }
                                // Withheld by the gate: the lease lapsed for a moment (it is
                                // withdrawn, and this task aborted, if it does not come back).
                                Err(e) if matches!(e.kind, ErrorKind::Gated) => {}
                                Err(e) => {
                                    m.kernel_errors.inc();
                                    tracing::warn!(error = %e, "announcing {a}");
                                }
                            }
                        }
                    }),
                );
            }
            garps.retain(|_, t| !t.is_finished());
        }
        tokio::select! {
            r = desired.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(1)), if dirty => {}
        }
    }
}

/// A finished conflict probe: the address and the MAC that answered (or why it failed).
type ProbeDone = (IpAddr, Result<Option<[u8; 6]>, String>);

/// Probes the addresses this node does not announce: at once, then every `reprobe` (every
/// `conflict_retry` after a conflict), a few at a time.
async fn conflict_prober<K: Kernel>(
    kernel: K,
    settings: Settings,
    mut plan: watch::Receiver<BTreeSet<IpAddr>>,
    macs: watch::Receiver<BTreeSet<[u8; 6]>>,
    results: mpsc::Sender<(IpAddr, Option<[u8; 6]>)>,
) {
    const PARALLEL: usize = 8;
    let mut due: BTreeMap<IpAddr, tokio::time::Instant> = BTreeMap::new();
    let mut running: tokio::task::JoinSet<ProbeDone> = tokio::task::JoinSet::new();
    let mut busy: BTreeSet<IpAddr> = BTreeSet::new();
    loop {
        let now = tokio::time::Instant::now();
        let want = plan.borrow_and_update().clone();
        due.retain(|a, _| want.contains(a));
        for a in &want {
            due.entry(*a).or_insert(now);
        }
        while busy.len() < PARALLEL {
            let Some((a, _)) = due
                .iter()
                .filter(|(a, t)| **t <= now && !busy.contains(a))
                .min_by_key(|(_, t)| **t)
                .map(|(a, t)| (*a, *t))
            else {
                break;
            };
            busy.insert(a);
            let k = kernel.clone();
            let dev = settings.interface.clone();
            let wait = settings.probe_wait;
            running.spawn(async move {
                let r = k.probe(&dev, a, wait).await;
                (a, r.map(|m| m.map(|m| m.0)).map_err(|e| e.to_string()))
            });
        }
        let next = due
            .iter()
            .filter(|(a, _)| !busy.contains(a))
            .map(|(_, t)| *t)
            .min();
        tokio::select! {
            r = plan.changed() => if r.is_err() { return },
            Some(done) = running.join_next(), if !running.is_empty() => {
                let Ok((a, r)) = done else { continue };
                busy.remove(&a);
                let now = tokio::time::Instant::now();
                match r {
                    Ok(m) => {
                        let foreign = m.is_some_and(|m| !macs.borrow().contains(&m));
                        let again = if foreign { settings.conflict_retry } else { settings.reprobe };
                        if due.contains_key(&a) {
                            due.insert(a, now + again);
                        }
                        if results.send((a, m)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(address = %a, error = %e, "conflict probe failed; retrying");
                        if due.contains_key(&a) {
                            due.insert(a, now + Duration::from_secs(1));
                        }
                    }
                }
            }
            _ = sleep_until_opt(next) => {}
        }
    }
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Probes the witness every heartbeat interval; reports the sending time of each probe that a
/// host other than a member answered.
async fn witness_prober<K: Kernel>(
    kernel: K,
    dev: String,
    witness: IpAddr,
    every: Duration,
    clock: Arc<dyn Clock>,
    macs: watch::Receiver<BTreeSet<[u8; 6]>>,
    out: mpsc::Sender<(Stamp, Mac)>,
) {
    loop {
        let start = tokio::time::Instant::now();
        let sent = clock.now();
        match kernel.probe(&dev, witness, every).await {
            Ok(Some(m)) if !macs.borrow().contains(&m.0) => {
                if out.send((sent, m)).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "witness probe failed"),
        }
        tokio::time::sleep_until(start + every).await;
    }
}
