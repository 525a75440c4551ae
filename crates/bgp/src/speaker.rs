//! The speaker: listeners, one task per peer, and the RIB the agent edits.
//!
//! This is the API the Berth agent uses: add, change and remove peers;
//! announce and withdraw prefixes for all peers, a peer group or one peer;
//! read peer state and counters. Every change is incremental: a new prefix
//! becomes an UPDATE, a changed peer restarts only its own session.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::attributes::RouteAttrs;
use crate::fsm::State;
use crate::md5;
use crate::prefix::Prefix;
use crate::rib_out::RouteSet;
use crate::session::Session;

/// Speaker-wide settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalConfig {
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Local AS (2- or 4-octet).
    pub local_as: u32,
    /// Addresses to listen on for incoming sessions; empty disables listening.
    pub listen: Vec<SocketAddr>,
    /// Graceful-restart time advertised (RFC 4724); `None` to not advertise GR.
    pub graceful_restart_time: Option<u16>,
}

/// BFD timers for a peer.
pub type BfdConfig = berth_bfd::BfdConfig;

/// One neighbour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Peer address (the session key).
    pub address: IpAddr,
    /// Peer TCP port (179).
    pub port: u16,
    /// Peer AS; equal to the local AS makes the session iBGP.
    pub remote_as: u32,
    /// Only accept connections, never dial.
    pub passive: bool,
    /// Proposed hold time in seconds (0, or ≥ 3).
    pub hold_time: u16,
    /// First connect-retry interval; doubles per failure up to 30 s.
    pub connect_retry: Duration,
    /// TCP MD5 password (RFC 2385).
    pub password: Option<String>,
    /// TTL / hop limit for outgoing packets (eBGP multihop); default 1 for
    /// eBGP, 64 for iBGP.
    pub ttl: Option<u8>,
    /// Local address to bind outgoing connections to.
    pub local_address: Option<IpAddr>,
    /// IPv4 next hop for IPv4 routes (default: the session's own IPv4 address).
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Global IPv6 next hop for IPv6 routes (default: the session's own address
    /// or a global address on the same interface).
    pub next_hop_v6: Option<Ipv6Addr>,
    /// Peer groups this peer belongs to (route targets).
    pub groups: Vec<String>,
    /// BFD, if wanted.
    pub bfd: Option<BfdConfig>,
}

impl PeerConfig {
    /// A peer with defaults for everything but address and AS.
    pub fn new(address: IpAddr, remote_as: u32) -> PeerConfig {
        PeerConfig {
            address,
            port: 179,
            remote_as,
            passive: false,
            hold_time: 90,
            connect_retry: Duration::from_secs(1),
            password: None,
            ttl: None,
            local_address: None,
            next_hop_v4: None,
            next_hop_v6: None,
            groups: vec![],
            bfd: None,
        }
    }
}

/// Which peers a route goes to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// Every peer.
    All,
    /// Peers in this group.
    Group(String),
    /// One peer.
    Peer(IpAddr),
}

/// A peer's state, timers and counters, readable at any time.
#[derive(Debug, Clone, Default)]
pub struct PeerStatus {
    /// Peer address.
    pub address: Option<IpAddr>,
    /// FSM state.
    pub state: State,
    /// When the session became Established.
    pub established_at: Option<Instant>,
    /// How many times the session reached Established.
    pub established_transitions: u64,
    /// Peer AS from its OPEN.
    pub peer_as: Option<u32>,
    /// Peer BGP identifier.
    pub peer_id: Option<Ipv4Addr>,
    /// Negotiated hold time.
    pub hold_time: Option<Duration>,
    /// Keepalive interval.
    pub keepalive: Option<Duration>,
    /// Local address of the TCP session.
    pub local_address: Option<IpAddr>,
    /// Messages received.
    pub messages_in: u64,
    /// Messages sent.
    pub messages_out: u64,
    /// UPDATEs received.
    pub updates_in: u64,
    /// UPDATEs sent.
    pub updates_out: u64,
    /// Prefixes currently accepted from the peer (validated, not installed).
    pub prefixes_received: usize,
    /// Prefixes currently advertised to the peer.
    pub prefixes_sent: usize,
    /// UPDATEs handled as treat-as-withdraw (RFC 7606).
    pub treat_as_withdraw: u64,
    /// UPDATEs with attributes discarded (RFC 7606).
    pub attributes_discarded: u64,
    /// Last error that ended or prevented a session.
    pub last_error: Option<String>,
    /// BFD state, when BFD is configured.
    pub bfd_state: Option<berth_bfd::SessionState>,
}

/// Errors of the speaker API.
#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    /// Could not listen.
    #[error("cannot listen on {addr}: {error} (another BGP daemon on this port? set listen_port or listen = false)")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        error: std::io::Error,
    },
    /// BFD could not start.
    #[error("BFD: {0}")]
    Bfd(#[from] berth_bfd::BfdError),
    /// Invalid peer settings.
    #[error("peer {peer}: {reason}")]
    Peer {
        /// Peer address.
        peer: IpAddr,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Default)]
struct Rib {
    tables: BTreeMap<Target, RouteSet>,
    interned: HashSet<Arc<RouteAttrs>>,
}

impl Rib {
    fn intern(&mut self, a: RouteAttrs) -> Arc<RouteAttrs> {
        if let Some(x) = self.interned.get(&a) {
            return Arc::clone(x);
        }
        let x = Arc::new(a);
        self.interned.insert(Arc::clone(&x));
        x
    }
    fn gc(&mut self) {
        self.interned.retain(|a| Arc::strong_count(a) > 1);
    }
}

/// State shared by the speaker and its session tasks.
pub(crate) struct Shared {
    pub global: GlobalConfig,
    rib: Mutex<Rib>,
    pub rib_version: watch::Sender<u64>,
}

impl Shared {
    /// The routes `peer` should have: all-peer routes, overridden by its
    /// groups' routes, overridden by routes for this peer alone.
    pub(crate) fn view_for(&self, peer: &PeerConfig) -> RouteSet {
        let Ok(rib) = self.rib.lock() else {
            return RouteSet::new();
        };
        let mut v = rib.tables.get(&Target::All).cloned().unwrap_or_default();
        for g in &peer.groups {
            if let Some(t) = rib.tables.get(&Target::Group(g.clone())) {
                v.extend(t.iter().map(|(p, a)| (*p, Arc::clone(a))));
            }
        }
        if let Some(t) = rib.tables.get(&Target::Peer(peer.address)) {
            v.extend(t.iter().map(|(p, a)| (*p, Arc::clone(a))));
        }
        v
    }
}

struct PeerEntry {
    cfg: PeerConfig,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    status: Arc<Mutex<PeerStatus>>,
    _bfd: Option<berth_bfd::SessionHandle>,
}

type Registry = Arc<Mutex<HashMap<IpAddr, mpsc::Sender<TcpStream>>>>;

/// A running BGP speaker. Create it inside a Tokio runtime.
pub struct Speaker {
    shared: Arc<Shared>,
    peers: HashMap<IpAddr, PeerEntry>,
    registry: Registry,
    listeners: Vec<(Arc<TcpListener>, tokio::task::JoinHandle<()>)>,
    bfd: Option<berth_bfd::Bfd>,
}

async fn accept_loop(l: Arc<TcpListener>, reg: Registry) {
    loop {
        match l.accept().await {
            Ok((s, from)) => {
                let ip = match from.ip() {
                    IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(a)),
                    a => a,
                };
                let tx = reg.lock().ok().and_then(|r| r.get(&ip).cloned());
                match tx {
                    Some(tx) => {
                        if tx.try_send(s).is_err() {
                            tracing::debug!(%from, "peer task busy, connection dropped");
                        }
                    }
                    None => tracing::info!(%from, "connection from unconfigured address refused"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Speaker {
    /// Starts the listeners. Routes and peers are added afterwards.
    pub async fn new(global: GlobalConfig) -> Result<Speaker, SpeakerError> {
        let registry: Registry = Arc::default();
        let mut listeners = Vec::new();
        for addr in &global.listen {
            let l = match md5::listen(*addr) {
                Ok(l) => l,
                // A host without IPv6 still runs IPv4 sessions.
                Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() => {
                    tracing::warn!(%addr, error = %e, "IPv6 listener unavailable; IPv4 only");
                    continue;
                }
                Err(error) => return Err(SpeakerError::Listen { addr: *addr, error }),
            };
            let l = Arc::new(l);
            let task = tokio::spawn(accept_loop(Arc::clone(&l), Arc::clone(&registry)));
            listeners.push((l, task));
        }
        let (rib_version, _) = watch::channel(0);
        Ok(Speaker {
            shared: Arc::new(Shared {
                global,
                rib: Mutex::default(),
                rib_version,
            }),
            peers: HashMap::new(),
            registry,
            listeners,
            bfd: None,
        })
    }

    /// The speaker-wide settings it was started with.
    pub fn global(&self) -> &GlobalConfig {
        &self.shared.global
    }

    /// Adds a peer, or replaces it if its settings changed (restarting only
    /// that session). Unchanged settings are a no-op.
    pub async fn set_peer(&mut self, cfg: PeerConfig) -> Result<(), SpeakerError> {
        if let Some(old) = self.peers.get(&cfg.address) {
            if old.cfg == cfg {
                return Ok(());
            }
            // Only routing-neutral group changes could avoid a reset; keep it simple and correct.
            self.remove_peer(cfg.address).await;
        }
        self.add_peer(cfg).await
    }

    async fn add_peer(&mut self, cfg: PeerConfig) -> Result<(), SpeakerError> {
        let peer = cfg.address;
        if cfg.hold_time == 1 || cfg.hold_time == 2 {
            return Err(SpeakerError::Peer {
                peer,
                reason: format!(
                    "hold_time {} is not allowed: use 0 or at least 3 seconds",
                    cfg.hold_time
                ),
            });
        }
        // Install the MD5 key on the listeners of the peer's family first.
        let mut listen_md5_error = None;
        if let Some(pw) = &cfg.password {
            for (l, _) in &self.listeners {
                let fam_ok = l
                    .local_addr()
                    .map(|a| a.is_ipv4() == peer.is_ipv4())
                    .unwrap_or(false);
                if !fam_ok {
                    continue;
                }
                if let Err(e) = md5::set_md5(l.as_ref(), peer, Some(pw.as_bytes())) {
                    tracing::error!(%peer, error = %e, "MD5 key not installed on listener");
                    listen_md5_error = Some(e.to_string());
                }
            }
        }
        let mut bfd_handle = None;
        let mut bfd_rx = None;
        if let Some(b) = &cfg.bfd {
            if self.bfd.is_none() {
                self.bfd = Some(berth_bfd::Bfd::start().await?);
            }
            if let Some(mgr) = &self.bfd {
                let h = mgr.add(peer, *b)?;
                bfd_rx = Some(h.state());
                bfd_handle = Some(h);
            }
        }
        let (tx, rx) = mpsc::channel(4);
        if let Ok(mut r) = self.registry.lock() {
            r.insert(peer, tx);
        }
        let (sd_tx, sd_rx) = watch::channel(false);
        let status = Arc::new(Mutex::new(PeerStatus {
            address: Some(peer),
            ..Default::default()
        }));
        let s = Session {
            cfg: cfg.clone(),
            shared: Arc::clone(&self.shared),
            incoming: rx,
            shutdown: sd_rx,
            status: Arc::clone(&status),
            bfd: bfd_rx,
            listen_md5_error,
            sent_first_open: false,
        };
        let task = tokio::spawn(s.run());
        self.peers.insert(
            peer,
            PeerEntry {
                cfg,
                shutdown: sd_tx,
                task,
                status,
                _bfd: bfd_handle,
            },
        );
        Ok(())
    }

    /// Removes a peer: sends Cease to it and forgets its MD5 key.
    pub async fn remove_peer(&mut self, peer: IpAddr) {
        if let Some(e) = self.peers.remove(&peer) {
            let _ = e.shutdown.send(true);
            let mut task = e.task;
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
            if let Ok(mut r) = self.registry.lock() {
                r.remove(&peer);
            }
            if e.cfg.password.is_some() {
                for (l, _) in &self.listeners {
                    if l.local_addr()
                        .map(|a| a.is_ipv4() == peer.is_ipv4())
                        .unwrap_or(false)
                    {
                        let _ = md5::set_md5(l.as_ref(), peer, None);
                    }
                }
            }
        }
    }

    /// Addresses of the configured peers.
    pub fn peer_addresses(&self) -> Vec<IpAddr> {
        self.peers.keys().copied().collect()
    }

    /// A peer's configuration.
    pub fn peer_config(&self, peer: IpAddr) -> Option<&PeerConfig> {
        self.peers.get(&peer).map(|e| &e.cfg)
    }

    /// Snapshot of every peer's status.
    pub fn peers(&self) -> Vec<PeerStatus> {
        self.peers
            .values()
            .filter_map(|e| e.status.lock().ok().map(|s| s.clone()))
            .collect()
    }

    fn edit<F: FnOnce(&mut Rib)>(&self, f: F) {
        if let Ok(mut rib) = self.shared.rib.lock() {
            f(&mut rib);
        }
        self.shared.rib_version.send_modify(|v| *v += 1);
    }

    /// Announces `prefix` with `attrs` to `target` (replacing earlier attributes).
    pub fn announce(&self, target: Target, prefix: Prefix, attrs: RouteAttrs) {
        self.edit(|rib| {
            let a = rib.intern(attrs);
            rib.tables.entry(target).or_default().insert(prefix, a);
        });
    }

    /// Withdraws `prefix` from `target`.
    pub fn withdraw(&self, target: Target, prefix: Prefix) {
        self.edit(|rib| {
            if let Some(t) = rib.tables.get_mut(&target) {
                t.remove(&prefix);
            }
            rib.gc();
        });
    }

    /// Replaces the whole route set in one step; sessions send only the
    /// difference, in batched UPDATEs. Used for configuration reloads.
    pub fn replace_routes(&self, routes: Vec<(Target, Prefix, RouteAttrs)>) {
        self.edit(|rib| {
            rib.tables.clear();
            for (t, p, a) in routes {
                let a = rib.intern(a);
                rib.tables.entry(t).or_default().insert(p, a);
            }
            rib.gc();
        });
    }

    /// Stops every session with a Cease NOTIFICATION and the listeners.
    pub async fn shutdown(mut self) {
        let peers: Vec<IpAddr> = self.peers.keys().copied().collect();
        for p in peers {
            self.remove_peer(p).await;
        }
        for (_, t) in &self.listeners {
            t.abort();
        }
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        for (_, t) in &self.listeners {
            t.abort();
        }
        for e in self.peers.values() {
            e.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn targets_override_all_then_group_then_peer() {
        let sp = Speaker::new(GlobalConfig {
            router_id: Ipv4Addr::new(198, 18, 0, 11),
            local_as: 64513,
            listen: vec![],
            graceful_restart_time: None,
        })
        .await
        .unwrap();
        let mut a = PeerConfig::new("198.18.0.1".parse().unwrap(), 64512);
        a.groups = vec!["tor".into()];
        let b = PeerConfig::new("198.18.0.2".parse().unwrap(), 64512);
        let p: Prefix = "198.19.0.1/32".parse().unwrap();
        let q: Prefix = "198.19.0.2/32".parse().unwrap();
        let med = |m| RouteAttrs {
            med: Some(m),
            ..Default::default()
        };
        sp.announce(Target::All, p, med(1));
        sp.announce(Target::Group("tor".into()), p, med(2));
        sp.announce(Target::Peer(b.address), q, med(3));
        let va = sp.shared.view_for(&a);
        let vb = sp.shared.view_for(&b);
        assert_eq!(va.get(&p).and_then(|x| x.med), Some(2));
        assert!(!va.contains_key(&q));
        assert_eq!(vb.get(&p).and_then(|x| x.med), Some(1));
        assert_eq!(vb.get(&q).and_then(|x| x.med), Some(3));
        // Same attributes are shared, not copied.
        sp.announce(Target::All, q, med(1));
        let c = PeerConfig::new("198.18.0.3".parse().unwrap(), 64512);
        let v = sp.shared.view_for(&c);
        assert!(
            Arc::ptr_eq(&v[&p], &v[&q]),
            "equal attributes must be interned"
        );
        sp.withdraw(Target::Group("tor".into()), p);
        assert_eq!(sp.shared.view_for(&a).get(&p).and_then(|x| x.med), Some(1));
    }
}
