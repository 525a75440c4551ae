//! The speaker: listeners, one task per peer, and the RIB the agent edits.
//!
//! [`Speaker`] is the handle an embedding agent holds (cheap to clone, usable
//! from any task): add, change and remove peers at run time; announce and
//! withdraw prefixes for all peers, a group or one peer, each with its own
//! attributes; read a [`Snapshot`] of every peer's state and prefix counts;
//! shut down cleanly ([`ShutdownMode`]). Every change is incremental: a new
//! prefix becomes an UPDATE on the sessions that should have it, a changed
//! setting that needs no new session is applied in place, and only a peer
//! whose session parameters changed restarts its own session.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::attributes::RouteAttrs;
use crate::fsm::{cease, LimitHit, State};
use crate::md5;
use crate::prefix::Prefix;
use crate::rib::Rib;
pub use crate::rib::Target;
use crate::rib_in::PrefixLimits;
use crate::session::{PeerCmd, PeerStop, Session};

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
    /// Maximum prefixes the peer may send, per family.
    pub max_prefixes: PrefixLimits,
    /// This peer's graceful-restart time where it differs from the speaker's
    /// ([`GlobalConfig::graceful_restart_time`]); `Some(None)` advertises no
    /// graceful restart to this peer. Why per peer: routers differ in how long
    /// they should keep a restarting node's routes (a ToR pair, a route server).
    pub graceful_restart: Option<Option<u16>>,
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
            max_prefixes: PrefixLimits::default(),
            graceful_restart: None,
        }
    }

    /// The graceful-restart time this peer is offered: its own, else the
    /// speaker's; `None` when it is offered none.
    pub fn restart_time(&self, global: &GlobalConfig) -> Option<u16> {
        self.graceful_restart
            .unwrap_or(global.graceful_restart_time)
    }

    /// True when going from `self` to `new` needs a new session: the OPEN,
    /// the TCP connection or its authentication would differ. Everything
    /// else (route targets, next hops, limits, passive, connect-retry) is
    /// applied to the running session.
    pub fn needs_new_session(&self, new: &PeerConfig) -> bool {
        self.address != new.address
            || self.port != new.port
            || self.remote_as != new.remote_as
            || self.hold_time != new.hold_time
            || self.password != new.password
            || self.ttl != new.ttl
            || self.local_address != new.local_address
            // A new BFD session (other timers, on, off) looks like a failure
            // to the peer's BFD, which drops its BGP session anyway.
            || self.bfd != new.bfd
            // The restart time goes in the OPEN.
            || self.graceful_restart != new.graceful_restart
    }
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
    /// The peer advertised graceful restart (it keeps our routes while we restart).
    pub graceful_restart: bool,
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
    /// Prefixes currently held from the peer (validated, not installed).
    pub prefixes_received: usize,
    /// IPv4 prefixes held from the peer.
    pub prefixes_received_ipv4: usize,
    /// IPv6 prefixes held from the peer.
    pub prefixes_received_ipv6: usize,
    /// Prefixes currently advertised to the peer.
    pub prefixes_sent: usize,
    /// IPv4 prefixes advertised to the peer.
    pub prefixes_sent_ipv4: usize,
    /// IPv6 prefixes advertised to the peer.
    pub prefixes_sent_ipv6: usize,
    /// UPDATEs handled as treat-as-withdraw (RFC 7606).
    pub treat_as_withdraw: u64,
    /// UPDATEs with attributes discarded (RFC 7606).
    pub attributes_discarded: u64,
    /// The last maximum-prefix breach.
    pub limit_hit: Option<LimitHit>,
    /// Down after a maximum-prefix shutdown, waiting for the restart time.
    pub held_down: bool,
    /// Last error that ended or prevented a session.
    pub last_error: Option<String>,
    /// BFD state, when BFD is configured.
    pub bfd_state: Option<berth_bfd::SessionState>,
}

/// Every peer's status at one moment, and the speaker's own figures.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// BGP identifier.
    pub router_id: Ipv4Addr,
    /// Local AS.
    pub local_as: u32,
    /// Routes in the RIB ((target, prefix) entries).
    pub routes: usize,
    /// Peers, by address.
    pub peers: Vec<PeerStatus>,
}

/// What [`Speaker::set_peer`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerChange {
    /// A new peer; its session starts.
    Added,
    /// Same settings: nothing done.
    Unchanged,
    /// Applied to the running session (no reset).
    Updated,
    /// Its session was restarted (Cease "other configuration change").
    Restarted,
}

/// How [`Speaker::shutdown`] leaves the peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Withdraw every route, wait until each peer has acknowledged the
    /// withdrawals, then Cease (administrative shutdown): a node drain.
    Withdraw,
    /// Cease at once; peers drop our routes when they read it.
    Cease,
    /// A restart: close without NOTIFICATION to peers that negotiated
    /// graceful restart, so they keep our routes until we are back (or the
    /// restart time runs out); Cease to the others.
    Restart,
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
    /// The speaker was shut down.
    #[error("the BGP speaker has been shut down; create a new one")]
    ShutDown,
}

/// State shared by the speaker and its session tasks.
pub(crate) struct Shared {
    pub global: GlobalConfig,
    pub rib: Mutex<Rib>,
    pub rib_version: watch::Sender<u64>,
    /// Peers a session has been started for since the speaker started: only
    /// the first OPEN to a peer carries the graceful-restart R bit, also
    /// when its session is later restarted for a configuration change.
    pub opened: Mutex<std::collections::HashSet<IpAddr>>,
}

struct PeerEntry {
    cfg: PeerConfig,
    cmds: mpsc::Sender<PeerCmd>,
    task: tokio::task::JoinHandle<()>,
    status: Arc<Mutex<PeerStatus>>,
    _bfd: Option<berth_bfd::SessionHandle>,
}

type Registry = Arc<Mutex<HashMap<IpAddr, mpsc::Sender<TcpStream>>>>;
type Listener = (Arc<TcpListener>, tokio::task::JoinHandle<()>);

struct Inner {
    shared: Arc<Shared>,
    peers: Mutex<HashMap<IpAddr, PeerEntry>>,
    /// Serialises peer changes (they await session tasks).
    changes: tokio::sync::Mutex<()>,
    bfd: tokio::sync::Mutex<Option<berth_bfd::Bfd>>,
    registry: Registry,
    listeners: Mutex<Vec<Listener>>,
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(l) = self.listeners.get_mut() {
            for (_, t) in l.iter() {
                t.abort();
            }
        }
        if let Ok(p) = self.peers.get_mut() {
            for e in p.values() {
                e.task.abort();
            }
        }
    }
}

/// A running BGP speaker. Create it inside a Tokio runtime; clones share it.
///
/// Dropping the last clone without [`Speaker::shutdown`] ends every session
/// without a NOTIFICATION, as a crash would (peers with graceful restart keep
/// the routes for their restart time).
#[derive(Clone)]
pub struct Speaker {
    inner: Arc<Inner>,
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
            inner: Arc::new(Inner {
                shared: Arc::new(Shared {
                    global,
                    rib: Mutex::default(),
                    rib_version,
                    opened: Mutex::default(),
                }),
                peers: Mutex::default(),
                changes: tokio::sync::Mutex::new(()),
                bfd: tokio::sync::Mutex::new(None),
                registry,
                listeners: Mutex::new(listeners),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The speaker-wide settings it was started with.
    pub fn global(&self) -> &GlobalConfig {
        &self.inner.shared.global
    }

    /// Adds a peer, or brings a known one to `cfg`: a setting that needs no
    /// new session is applied in place (see [`PeerConfig::needs_new_session`]),
    /// otherwise only this peer's session restarts. Unchanged settings are a
    /// no-op.
    pub async fn set_peer(&self, cfg: PeerConfig) -> Result<PeerChange, SpeakerError> {
        let _g = self.inner.changes.lock().await;
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(SpeakerError::ShutDown);
        }
        validate(&cfg)?;
        let current = self.peer_config(cfg.address);
        match current {
            None => {
                self.add_peer(cfg).await?;
                Ok(PeerChange::Added)
            }
            Some(old) if old == cfg => Ok(PeerChange::Unchanged),
            Some(old) if old.needs_new_session(&cfg) => {
                self.stop_peer(cfg.address, PeerStop::Cease(cease::CONFIG_CHANGE))
                    .await;
                self.add_peer(cfg).await?;
                Ok(PeerChange::Restarted)
            }
            Some(_) => {
                let tx = {
                    let mut peers = lock(&self.inner.peers);
                    let Some(e) = peers.get_mut(&cfg.address) else {
                        return Err(SpeakerError::Peer {
                            peer: cfg.address,
                            reason: "removed while being changed".into(),
                        });
                    };
                    e.cfg = cfg.clone();
                    e.cmds.clone()
                };
                let _ = tx.send(PeerCmd::Update(Box::new(cfg))).await;
                Ok(PeerChange::Updated)
            }
        }
    }

    async fn add_peer(&self, cfg: PeerConfig) -> Result<(), SpeakerError> {
        let peer = cfg.address;
        // Install the MD5 key on the listeners of the peer's family first.
        let mut listen_md5_error = None;
        if let Some(pw) = &cfg.password {
            for l in self.listeners_of(peer) {
                if let Err(e) = md5::set_md5(l.as_ref(), peer, Some(pw.as_bytes())) {
                    tracing::error!(%peer, error = %e, "MD5 key not installed on listener");
                    listen_md5_error = Some(e.to_string());
                }
            }
        }
        let mut bfd_handle = None;
        let mut bfd_rx = None;
        if let Some(b) = &cfg.bfd {
            let mut bfd = self.inner.bfd.lock().await;
            if bfd.is_none() {
                *bfd = Some(berth_bfd::Bfd::start().await?);
            }
            if let Some(mgr) = bfd.as_ref() {
                let h = mgr.add(peer, *b)?;
                bfd_rx = Some(h.state());
                bfd_handle = Some(h);
            }
        }
        let (tx, rx) = mpsc::channel(4);
        if let Ok(mut r) = self.inner.registry.lock() {
            r.insert(peer, tx);
        }
        let (cmd_tx, cmd_rx) = mpsc::channel(16);
        let status = Arc::new(Mutex::new(PeerStatus {
            address: Some(peer),
            bfd_state: bfd_rx.as_ref().map(|r| *r.borrow()),
            ..Default::default()
        }));
        let s = Session {
            cfg: cfg.clone(),
            shared: Arc::clone(&self.inner.shared),
            cmds: cmd_rx,
            incoming: rx,
            status: Arc::clone(&status),
            bfd: bfd_rx,
            listen_md5_error,
        };
        let task = tokio::spawn(s.run());
        lock(&self.inner.peers).insert(
            peer,
            PeerEntry {
                cfg,
                cmds: cmd_tx,
                task,
                status,
                _bfd: bfd_handle,
            },
        );
        Ok(())
    }

    /// The listeners of `peer`'s address family.
    fn listeners_of(&self, peer: IpAddr) -> Vec<Arc<TcpListener>> {
        lock(&self.inner.listeners)
            .iter()
            .filter(|(l, _)| {
                l.local_addr()
                    .map(|a| a.is_ipv4() == peer.is_ipv4())
                    .unwrap_or(false)
            })
            .map(|(l, _)| Arc::clone(l))
            .collect()
    }

    /// Stops one peer's session as `how` says and forgets the peer.
    async fn stop_peer(&self, peer: IpAddr, how: PeerStop) -> bool {
        let Some(e) = lock(&self.inner.peers).remove(&peer) else {
            return false;
        };
        let (done_tx, done_rx) = oneshot::channel();
        let told = e
            .cmds
            .send(PeerCmd::Stop { how, done: done_tx })
            .await
            .is_ok();
        let mut task = e.task;
        // Withdrawing waits up to 2 s for the peer's acknowledgement.
        let limit = Duration::from_secs(5);
        if !told || tokio::time::timeout(limit, done_rx).await.is_err() {
            tracing::warn!(%peer, "session task did not stop in time");
        }
        if tokio::time::timeout(Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        if let Ok(mut r) = self.inner.registry.lock() {
            r.remove(&peer);
        }
        if e.cfg.password.is_some() {
            for l in self.listeners_of(peer) {
                let _ = md5::set_md5(l.as_ref(), peer, None);
            }
        }
        true
    }

    /// Removes a peer: Cease "peer de-configured" to it, and its MD5 key and
    /// BFD session go. False if it was not configured.
    pub async fn remove_peer(&self, peer: IpAddr) -> bool {
        let _g = self.inner.changes.lock().await;
        self.stop_peer(peer, PeerStop::Cease(cease::DECONFIGURED))
            .await
    }

    /// Brings the peers and routes to exactly `peers` and `routes`: removes
    /// peers not listed, adds or changes the others (see
    /// [`Speaker::set_peer`]), and replaces the routes (sessions send only the
    /// difference). Returns what happened to each listed peer; the first
    /// error, if any, after trying every peer.
    pub async fn reconcile(
        &self,
        peers: &[PeerConfig],
        routes: Vec<(Target, Prefix, RouteAttrs)>,
    ) -> Result<Vec<(IpAddr, PeerChange)>, SpeakerError> {
        for a in self.peer_addresses() {
            if !peers.iter().any(|p| p.address == a) {
                tracing::info!(peer = %a, "peer removed from configuration");
                self.remove_peer(a).await;
            }
        }
        let mut changes = Vec::new();
        let mut first_err = None;
        for p in peers {
            match self.set_peer(p.clone()).await {
                Ok(c) => changes.push((p.address, c)),
                Err(e) => {
                    tracing::error!(peer = %p.address, error = %e, "peer not started");
                    first_err.get_or_insert(e);
                }
            }
        }
        self.replace_routes(routes);
        match first_err {
            Some(e) => Err(e),
            None => Ok(changes),
        }
    }

    /// Addresses of the configured peers.
    pub fn peer_addresses(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = lock(&self.inner.peers).keys().copied().collect();
        v.sort();
        v
    }

    /// A peer's configuration.
    pub fn peer_config(&self, peer: IpAddr) -> Option<PeerConfig> {
        lock(&self.inner.peers).get(&peer).map(|e| e.cfg.clone())
    }

    /// Every peer's status, by address.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let mut v: Vec<PeerStatus> = lock(&self.inner.peers)
            .values()
            .filter_map(|e| e.status.lock().ok().map(|s| s.clone()))
            .collect();
        v.sort_by_key(|p| p.address);
        v
    }

    /// One peer's status.
    pub fn peer(&self, peer: IpAddr) -> Option<PeerStatus> {
        lock(&self.inner.peers)
            .get(&peer)
            .and_then(|e| e.status.lock().ok().map(|s| s.clone()))
    }

    /// The speaker's state at one moment: peers with their states and prefix
    /// counts, and the size of the RIB.
    pub fn snapshot(&self) -> Snapshot {
        let g = &self.inner.shared.global;
        Snapshot {
            router_id: g.router_id,
            local_as: g.local_as,
            routes: lock(&self.inner.shared.rib).len(),
            peers: self.peers(),
        }
    }

    fn edit<F: FnOnce(&mut Rib) -> bool>(&self, f: F) {
        let (changed, v) = {
            let mut rib = lock(&self.inner.shared.rib);
            (f(&mut rib), rib.version())
        };
        if changed {
            self.inner.shared.rib_version.send_replace(v);
        }
    }

    /// Announces `prefix` with `attrs` to `target` (replacing attributes it
    /// had there). Per-peer beats per-group beats all-peer routes.
    pub fn announce(&self, target: Target, prefix: Prefix, attrs: RouteAttrs) {
        self.edit(|rib| rib.announce(target, prefix, attrs));
    }

    /// Withdraws `prefix` from `target`.
    pub fn withdraw(&self, target: Target, prefix: Prefix) {
        self.edit(|rib| rib.withdraw(&target, prefix));
    }

    /// Replaces the whole route set in one step; sessions send only the
    /// difference, in batched UPDATEs. Used for configuration reloads.
    pub fn replace_routes(&self, routes: Vec<(Target, Prefix, RouteAttrs)>) {
        self.edit(|rib| rib.replace(routes) > 0);
    }

    /// Stops every session as `mode` says, then the listeners; the speaker
    /// refuses new peers afterwards.
    pub async fn shutdown(&self, mode: ShutdownMode) {
        let _g = self.inner.changes.lock().await;
        self.inner.closed.store(true, Ordering::SeqCst);
        let how = match mode {
            ShutdownMode::Withdraw => PeerStop::Withdraw,
            ShutdownMode::Cease => PeerStop::Cease(cease::ADMIN_SHUTDOWN),
            ShutdownMode::Restart => PeerStop::Restart,
        };
        // All peers at once: a withdrawal waits for the peer's acknowledgement.
        let stops: Vec<_> = self
            .peer_addresses()
            .into_iter()
            .map(|p| {
                let sp = self.clone();
                tokio::spawn(async move { sp.stop_peer(p, how).await })
            })
            .collect();
        for s in stops {
            let _ = s.await;
        }
        // Close the listening sockets now, so a new speaker can bind the port.
        let listeners = std::mem::take(&mut *lock(&self.inner.listeners));
        for (l, t) in listeners {
            t.abort();
            let _ = t.await;
            drop(l);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn validate(cfg: &PeerConfig) -> Result<(), SpeakerError> {
    let bad = |reason: String| SpeakerError::Peer {
        peer: cfg.address,
        reason,
    };
    if cfg.hold_time == 1 || cfg.hold_time == 2 {
        return Err(bad(format!(
            "hold_time {} is not allowed: use 0 or at least 3 seconds",
            cfg.hold_time
        )));
    }
    if let Some(b) = &cfg.bfd {
        b.validate().map_err(|e| bad(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After `shutdown` the listening port is free at once: a configuration
    /// reload that changes the router ID starts a new speaker on it.
    #[tokio::test]
    async fn shutdown_frees_the_listening_port() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let g = GlobalConfig {
            router_id: Ipv4Addr::new(198, 18, 0, 11),
            local_as: 64513,
            listen: vec![SocketAddr::from(([127, 0, 0, 1], port))],
            graceful_restart_time: None,
        };
        let a = Speaker::new(g.clone()).await.unwrap();
        assert!(matches!(
            Speaker::new(g.clone()).await,
            Err(SpeakerError::Listen { .. })
        ));
        let keep = a.clone();
        a.shutdown(ShutdownMode::Cease).await;
        let b = Speaker::new(g).await.expect("port free after shutdown");
        assert!(matches!(
            keep.set_peer(PeerConfig::new("198.18.0.1".parse().unwrap(), 64512))
                .await,
            Err(SpeakerError::ShutDown)
        ));
        b.shutdown(ShutdownMode::Cease).await;
    }
}
