//! One peer's I/O task: it owns the sockets, reader tasks and timers, feeds
//! what happens to the pure [`Fsm`] and carries out the actions it returns.
//! In Established it keeps the peer's Adj-RIB-Out in step with the speaker's
//! RIB, looking only at the prefixes that changed (see [`crate::rib`]).
//!
//! The task owns everything about its peer, so changing or removing one peer
//! never touches the others; settings that need no new session (route
//! targets, next hops, limits, passive, connect-retry) are applied in place.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, timeout};

use crate::attributes::EncodeContext;
use crate::codec::{self, DecodeError, Message, HEADER_LEN};
use crate::fsm::{
    cease, jitter, Action, ConnError, ConnId, Event, Fsm, FsmConfig, LocalOpen, Negotiated,
    Settings, State, StopMode, Timer,
};
use crate::md5;
use crate::rib;
use crate::rib_out::{self, Diff, Families, NextHops, RouteSet};
use crate::speaker::{PeerConfig, PeerStatus, Shared};

type Inbound = Result<Message, ConnError>;

/// How a peer's session ends when the speaker asks it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerStop {
    /// Withdraw everything sent, wait until the peer has it, then Cease.
    Withdraw,
    /// Cease with this subcode at once.
    Cease(u8),
    /// Leave our routes with a graceful-restart peer (close without
    /// NOTIFICATION); Cease to peers without graceful restart.
    Restart,
}

/// Orders from the speaker to a session task.
pub(crate) enum PeerCmd {
    /// New settings that need no new session.
    Update(Box<PeerConfig>),
    /// End the session and the task; `done` is answered when the peer was told.
    Stop {
        how: PeerStop,
        done: oneshot::Sender<()>,
    },
}

/// Everything a session task starts with.
pub(crate) struct Session {
    pub cfg: PeerConfig,
    pub shared: Arc<Shared>,
    pub cmds: mpsc::Receiver<PeerCmd>,
    pub incoming: mpsc::Receiver<TcpStream>,
    pub status: Arc<Mutex<PeerStatus>>,
    pub bfd: Option<watch::Receiver<berth_bfd::SessionState>>,
    pub listen_md5_error: Option<String>,
}

struct ConnIo {
    wr: OwnedWriteHalf,
    reader: Option<tokio::task::JoinHandle<()>>,
    local: SocketAddr,
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if let Some(r) = &self.reader {
            r.abort();
        }
    }
}

/// How long a closed connection waits for the peer to close its side, so a
/// NOTIFICATION is read before anything else happens (a peer that sees our
/// next connection first takes it for a restart and never reads it).
const LINGER: Duration = Duration::from_secs(1);

/// The Adj-RIB-Out of an Established session and how to encode for it.
struct Est {
    conn: ConnId,
    ectx: EncodeContext,
    nh: NextHops,
    fam: Families,
    hold: Duration,
    sent: RouteSet,
    /// RIB version `sent` corresponds to; `None`: diff the whole view next.
    synced: Option<u64>,
}

type Dial = Pin<Box<dyn Future<Output = Result<TcpStream, String>> + Send>>;

/// The task's mutable I/O state.
struct Io {
    conns: BTreeMap<ConnId, ConnIo>,
    next_id: u64,
    dial: Option<Dial>,
    timers: BTreeMap<Timer, tokio::time::Instant>,
    est: Option<Est>,
    messages_out: u64,
    updates_out: u64,
    in_tx: mpsc::Sender<(ConnId, Inbound)>,
    done: Vec<oneshot::Sender<()>>,
    finish: bool,
    /// Closed connections still waiting for the peer's close (at most [`LINGER`]).
    lingering: Vec<tokio::task::JoinHandle<()>>,
}

/// A random number from the kernel (getrandom), for timer jitter: speakers
/// started at the same moment must not retry in step.
pub(crate) fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, 0) };
    if n == 4 {
        return u32::from_ne_bytes(b);
    }
    // No getrandom: std's per-process random hash keys are good enough.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() as u32
}

async fn read_loop(rd: OwnedReadHalf, id: ConnId, tx: mpsc::Sender<(ConnId, Inbound)>) {
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    loop {
        let mut hdr = [0u8; HEADER_LEN];
        if let Err(e) = rd.read_exact(&mut hdr).await {
            let _ = tx.send((id, Err(ConnError::Closed(e.to_string())))).await;
            return;
        }
        let len = match codec::frame_len(&hdr) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send((id, Err(ConnError::Decode(e)))).await;
                return;
            }
        };
        let mut buf = vec![0u8; len];
        buf[..HEADER_LEN].copy_from_slice(&hdr);
        if let Err(e) = rd.read_exact(&mut buf[HEADER_LEN..]).await {
            let _ = tx.send((id, Err(ConnError::Closed(e.to_string())))).await;
            return;
        }
        let m = codec::decode(&buf).map_err(|e: DecodeError| ConnError::Decode(e));
        let stop = m.is_err();
        if tx.send((id, m)).await.is_err() || stop {
            return;
        }
    }
}

fn settings(cfg: &PeerConfig) -> Settings {
    Settings {
        passive: cfg.passive,
        connect_retry: cfg.connect_retry,
        limits: cfg.max_prefixes,
    }
}

impl Session {
    fn set<F: FnOnce(&mut PeerStatus)>(&self, f: F) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    fn is_ibgp(&self) -> bool {
        self.cfg.remote_as == self.shared.global.local_as
    }

    fn ttl(&self) -> u8 {
        self.cfg.ttl.unwrap_or(if self.is_ibgp() { 64 } else { 1 })
    }

    fn fsm_config(&self) -> FsmConfig {
        let g = &self.shared.global;
        let first = match self.shared.opened.lock() {
            Ok(mut o) => o.insert(self.cfg.address),
            Err(_) => false,
        };
        FsmConfig {
            local: LocalOpen {
                local_as: g.local_as,
                router_id: g.router_id,
                hold_time: self.cfg.hold_time,
                families: Families { v4: true, v6: true },
                gr_restart_time: self.cfg.restart_time(g),
                // The R bit goes on the first OPEN after the speaker started only.
                gr_restarting: self.cfg.restart_time(g).is_some() && first,
            },
            remote_as: self.cfg.remote_as,
            settings: settings(&self.cfg),
        }
    }

    /// Copies the FSM's view and the I/O counters into the shared status.
    fn publish(&self, fsm: &Fsm, io: &Io) {
        let f = fsm.status();
        let sent = io.est.as_ref().map(|e| {
            let v4 = e.sent.keys().filter(|p| p.is_v4()).count();
            (v4, e.sent.len() - v4)
        });
        self.set(|s| {
            if s.state != f.state {
                tracing::info!(peer = %self.cfg.address, from = %s.state, to = %f.state, "BGP state change");
                if f.state == State::Established {
                    s.established_at = Some(Instant::now());
                } else if s.state == State::Established {
                    s.established_at = None;
                }
            }
            s.state = f.state;
            s.established_transitions = f.established_transitions;
            if let Some(n) = &f.negotiated {
                s.peer_as = Some(n.peer_as);
                s.peer_id = Some(n.peer_id);
                s.hold_time = Some(n.hold_time);
                s.keepalive = Some(n.keepalive);
                s.graceful_restart = n.peer_graceful_restart;
            }
            s.messages_in = f.messages_in;
            s.updates_in = f.updates_in;
            s.treat_as_withdraw = f.treat_as_withdraw;
            s.attributes_discarded = f.attributes_discarded;
            s.prefixes_received_ipv4 = f.received_v4;
            s.prefixes_received_ipv6 = f.received_v6;
            s.prefixes_received = f.received_v4 + f.received_v6;
            let (v4, v6) = sent.unwrap_or((0, 0));
            s.prefixes_sent_ipv4 = v4;
            s.prefixes_sent_ipv6 = v6;
            s.prefixes_sent = v4 + v6;
            s.messages_out = io.messages_out;
            s.updates_out = io.updates_out;
            s.limit_hit = f.limit_hit;
            s.held_down = f.held_down;
            s.last_error.clone_from(&f.last_error);
        });
    }

    /// The task body: runs until told to stop or the speaker goes away.
    pub(crate) async fn run(mut self) {
        let mut fsm = Fsm::new(self.fsm_config());
        let (in_tx, mut in_rx) = mpsc::channel::<(ConnId, Inbound)>(64);
        let mut io = Io {
            conns: BTreeMap::new(),
            next_id: 0,
            dial: None,
            timers: BTreeMap::new(),
            est: None,
            messages_out: 0,
            updates_out: 0,
            in_tx,
            done: Vec::new(),
            finish: false,
            lingering: Vec::new(),
        };
        let mut rib_rx = self.shared.rib_version.subscribe();
        let mut bfd = self.bfd.take();
        let mut bfd_was_up = false;
        if let Some(b) = &bfd {
            let st = *b.borrow();
            bfd_was_up = st == berth_bfd::SessionState::Up;
            self.set(|s| s.bfd_state = Some(st));
        }
        let mut events = VecDeque::from([Event::Start]);
        loop {
            while let Some(ev) = events.pop_front() {
                for a in fsm.handle(ev) {
                    self.perform(a, &fsm, &mut io, &mut events).await;
                }
            }
            self.publish(&fsm, &io);
            if io.finish {
                break;
            }
            let next = io
                .timers
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(t, at)| (*t, *at));
            let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
            tokio::select! {
                biased;
                c = self.cmds.recv() => match c {
                    // The speaker is gone: tell the peer, then stop.
                    None => {
                        events.push_back(Event::Stop { mode: StopMode::Cease(cease::ADMIN_SHUTDOWN), reason: "speaker stopped".into() });
                        io.finish = true;
                    }
                    Some(PeerCmd::Update(cfg)) => self.reconfigure(*cfg, &mut io, &mut events),
                    Some(PeerCmd::Stop { how, done }) => {
                        io.done.push(done);
                        io.finish = true;
                        self.stop(how, &fsm, &mut io, &mut events).await;
                    }
                },
                r = async { match bfd.as_mut() { Some(b) => b.changed().await, None => std::future::pending().await } } => {
                    if r.is_err() {
                        bfd = None;
                        continue;
                    }
                    let st = bfd.as_ref().map(|b| *b.borrow());
                    self.set(|s| s.bfd_state = st);
                    if st == Some(berth_bfd::SessionState::Up) {
                        bfd_was_up = true;
                    } else if bfd_was_up {
                        bfd_was_up = false;
                        events.push_back(Event::BfdDown);
                    }
                }
                m = in_rx.recv() => if let Some((conn, m)) = m {
                    if io.conns.contains_key(&conn) {
                        events.push_back(match m {
                            Ok(msg) => Event::Received { conn, msg },
                            Err(error) => Event::ConnError { conn, error },
                        });
                    }
                },
                _ = sleep_until(next.map(|(_, at)| at).unwrap_or(far)), if next.is_some() => {
                    if let Some((t, _)) = next {
                        io.timers.remove(&t);
                        events.push_back(Event::Timer(t));
                    }
                }
                r = async { match io.dial.as_mut() { Some(d) => d.await, None => std::future::pending().await } } => {
                    io.dial = None;
                    match r {
                        Ok(s) => match self.register(s, true, &mut io) {
                            Ok(conn) => events.push_back(Event::Connected { conn, outgoing: true }),
                            Err(e) => events.push_back(Event::ConnectFailed(e)),
                        },
                        Err(e) => events.push_back(Event::ConnectFailed(e)),
                    }
                }
                s = self.incoming.recv() => match s {
                    Some(s) => {
                        if let Some(e) = &self.listen_md5_error {
                            // Never run an unauthenticated session when a key was asked for.
                            tracing::warn!(peer = %self.cfg.address, error = %e, "refusing incoming connection: MD5 key not installed on listener");
                        } else if fsm.status().held_down {
                            tracing::info!(peer = %self.cfg.address, "refusing incoming connection: held down after exceeding its maximum prefixes");
                        } else {
                            match self.register(s, false, &mut io) {
                                Ok(conn) => events.push_back(Event::Connected { conn, outgoing: false }),
                                Err(e) => tracing::warn!(peer = %self.cfg.address, error = %e, "incoming connection dropped"),
                            }
                        }
                    }
                    None => {
                        events.push_back(Event::Stop { mode: StopMode::Cease(cease::DECONFIGURED), reason: "peer removed".into() });
                        io.finish = true;
                    }
                },
                r = rib_rx.changed(), if io.est.is_some() => {
                    if r.is_err() {
                        events.push_back(Event::Stop { mode: StopMode::Cease(cease::ADMIN_SHUTDOWN), reason: "speaker gone".into() });
                        io.finish = true;
                    } else {
                        rib_rx.borrow_and_update();
                        if let Err((conn, e)) = self.sync(&mut io).await {
                            events.push_back(Event::ConnError { conn, error: ConnError::Closed(e) });
                        }
                    }
                }
            }
        }
        // Connections still open (a stop that raced with a dial) close here;
        // the peer has read our NOTIFICATION once it has closed its side.
        io.conns.clear();
        self.forget_rib();
        for l in io.lingering.drain(..) {
            let _ = l.await;
        }
        for d in io.done.drain(..) {
            let _ = d.send(());
        }
    }

    /// Wraps a TCP connection: socket options, reader task, a name.
    fn register(&self, s: TcpStream, outgoing: bool, io: &mut Io) -> Result<ConnId, String> {
        let local = s.local_addr().map_err(|e| e.to_string())?;
        if !outgoing {
            let sock = socket2::SockRef::from(&s);
            let r = if local.is_ipv6() {
                sock.set_unicast_hops_v6(u32::from(self.ttl()))
            } else {
                sock.set_ttl_v4(u32::from(self.ttl()))
            };
            r.map_err(|e| format!("set TTL: {e}"))?;
            let _ = s.set_nodelay(true);
        }
        io.next_id += 1;
        let id = ConnId(io.next_id);
        let (rd, wr) = s.into_split();
        let reader = tokio::spawn(read_loop(rd, id, io.in_tx.clone()));
        io.conns.insert(
            id,
            ConnIo {
                wr,
                reader: Some(reader),
                local,
            },
        );
        Ok(id)
    }

    async fn write(
        &self,
        io: &mut Io,
        conn: ConnId,
        bytes: &[u8],
        limit: Duration,
    ) -> Result<(), String> {
        let Some(c) = io.conns.get_mut(&conn) else {
            return Err("connection gone".into());
        };
        match timeout(limit, c.wr.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write: {e}")),
            Err(_) => Err("write timed out (peer not reading)".into()),
        }
    }

    async fn perform(&self, a: Action, fsm: &Fsm, io: &mut Io, events: &mut VecDeque<Event>) {
        match a {
            Action::Connect => {
                let opts = md5::ConnectOptions {
                    peer: SocketAddr::new(self.cfg.address, self.cfg.port),
                    local: self.cfg.local_address,
                    md5: self.cfg.password.as_ref().map(|p| p.as_bytes().to_vec()),
                    ttl: self.ttl(),
                    user_timeout: Duration::from_secs(u64::from(self.cfg.hold_time.max(3))),
                };
                io.dial = Some(Box::pin(async move {
                    match timeout(Duration::from_secs(5), md5::connect(&opts)).await {
                        Ok(Ok(s)) => Ok(s),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("connect timed out".into()),
                    }
                }));
            }
            Action::CancelConnect => io.dial = None,
            Action::Send { conn, msg } => {
                let notification = matches!(msg, Message::Notification(_));
                if let Message::Notification(n) = &msg {
                    tracing::warn!(peer = %self.cfg.address, code = n.code, subcode = n.subcode, data = ?n.data, "sending NOTIFICATION");
                }
                let update = matches!(msg, Message::Update(_));
                let limit = if notification {
                    Duration::from_secs(1)
                } else {
                    let hold = fsm
                        .status()
                        .negotiated
                        .as_ref()
                        .map(|n| n.hold_time)
                        .unwrap_or_default();
                    hold.max(Duration::from_secs(5))
                };
                match self.write(io, conn, &msg.to_bytes(), limit).await {
                    Ok(()) => {
                        io.messages_out += 1;
                        io.updates_out += u64::from(update);
                    }
                    Err(e) if !notification => events.push_back(Event::ConnError {
                        conn,
                        error: ConnError::Closed(e),
                    }),
                    Err(_) => {}
                }
            }
            Action::Close { conn } => {
                if let Some(mut c) = io.conns.remove(&conn) {
                    let _ = timeout(Duration::from_secs(1), c.wr.shutdown()).await;
                    // The reader ends at the peer's close (or is cut off).
                    if let Some(mut r) = c.reader.take() {
                        io.lingering.retain(|l| !l.is_finished());
                        io.lingering.push(tokio::spawn(async move {
                            if timeout(LINGER, &mut r).await.is_err() {
                                r.abort();
                            }
                        }));
                    }
                }
                if io.est.as_ref().is_some_and(|e| e.conn == conn) {
                    io.est = None;
                    self.forget_rib();
                }
            }
            Action::StartTimer(t, d) => {
                let d = if t == Timer::ConnectRetry {
                    jitter(d, random_u32())
                } else {
                    d
                };
                io.timers.insert(t, tokio::time::Instant::now() + d);
            }
            Action::StopTimer(t) => {
                io.timers.remove(&t);
            }
            Action::Negotiated { conn, negotiated } => {
                if let Some(c) = io.conns.get(&conn) {
                    let local = c.local.ip();
                    self.set(|s| s.local_address = Some(local));
                    if !negotiated.hold_time.is_zero() {
                        if let Err(e) = md5::set_user_timeout(c.wr.as_ref(), negotiated.hold_time) {
                            tracing::warn!(peer = %self.cfg.address, error = %e, "TCP_USER_TIMEOUT");
                        }
                    }
                }
            }
            Action::Established { conn, negotiated } => {
                if let Err((conn, e)) = self.start_rib(conn, &negotiated, io).await {
                    events.push_back(Event::ConnError {
                        conn,
                        error: ConnError::Closed(e),
                    });
                }
            }
            Action::Down {
                reason,
                was_established,
            } => {
                if io.est.take().is_some() {
                    self.forget_rib();
                }
                if was_established {
                    tracing::warn!(peer = %self.cfg.address, error = %reason, "BGP session ended");
                } else {
                    tracing::info!(peer = %self.cfg.address, error = %reason, "BGP session attempt failed");
                }
            }
            Action::RouteRefresh { afi } => {
                // RFC 2918: answer by sending the Adj-RIB-Out of that family again.
                if let Some(e) = &io.est {
                    let d = Diff {
                        withdraw: vec![],
                        announce: e
                            .sent
                            .iter()
                            .filter(|(p, _)| (afi == codec::AFI_IPV4) == p.is_v4())
                            .map(|(p, a)| (*p, Arc::clone(a)))
                            .collect(),
                    };
                    let b = rib_out::build(&d, e.ectx, e.nh, e.fam);
                    let (conn, hold) = (e.conn, e.hold);
                    if let Err(err) = self.send_batch(io, conn, &b.messages, hold).await {
                        events.push_back(Event::ConnError {
                            conn,
                            error: ConnError::Closed(err),
                        });
                    }
                }
            }
            Action::Warn(w) => tracing::warn!(peer = %self.cfg.address, "{w}"),
        }
    }

    fn next_hops(&self, local: IpAddr) -> NextHops {
        let (v4, v6, ll) = interface_addresses(local);
        let multihop = self.cfg.ttl.is_some_and(|t| t > 1) || self.is_ibgp();
        NextHops {
            v4: self.cfg.next_hop_v4.or(v4),
            v6: self.cfg.next_hop_v6.or(v6),
            v6_link_local: if multihop { None } else { ll },
        }
    }

    /// Tells the RIB to keep no changes for this session any more.
    fn forget_rib(&self) {
        if let Ok(mut r) = self.shared.rib.lock() {
            r.forget(self.cfg.address);
        }
    }

    /// Established: the initial table, then End-of-RIB (RFC 4724 §2).
    async fn start_rib(
        &self,
        conn: ConnId,
        n: &Negotiated,
        io: &mut Io,
    ) -> Result<(), (ConnId, String)> {
        let Some(local) = io.conns.get(&conn).map(|c| c.local.ip()) else {
            return Ok(());
        };
        io.est = Some(Est {
            conn,
            ectx: EncodeContext {
                local_as: self.shared.global.local_as,
                ibgp: self.is_ibgp(),
                four_octet: n.four_octet,
            },
            nh: self.next_hops(local),
            fam: n.families,
            hold: n.hold_time,
            sent: RouteSet::new(),
            synced: None,
        });
        self.sync(io).await?;
        let eor = rib_out::end_of_rib(n.families);
        self.send_batch(io, conn, &eor, n.hold_time)
            .await
            .map_err(|e| (conn, e))
    }

    async fn send_batch(
        &self,
        io: &mut Io,
        conn: ConnId,
        msgs: &[Vec<u8>],
        hold: Duration,
    ) -> Result<(), String> {
        if msgs.is_empty() {
            return Ok(());
        }
        // One write: fewer syscalls, fewer TCP segments.
        let buf = msgs.concat();
        self.write(io, conn, &buf, hold.max(Duration::from_secs(5)))
            .await?;
        io.messages_out += msgs.len() as u64;
        io.updates_out += msgs.len() as u64;
        Ok(())
    }

    /// Sends what changed in the RIB since the last sync.
    async fn sync(&self, io: &mut Io) -> Result<(), (ConnId, String)> {
        let Some(e) = &io.est else {
            return Ok(());
        };
        let plan = match self.shared.rib.lock() {
            Ok(mut r) => r.plan(self.cfg.address, &self.cfg.groups, &e.sent, e.synced),
            Err(_) => return Ok(()),
        };
        let (conn, hold) = (e.conn, e.hold);
        let mut d = plan.diff;
        if !d.withdraw.is_empty() || !d.announce.is_empty() {
            let b = rib_out::build(&d, e.ectx, e.nh, e.fam);
            let mut msgs = b.messages;
            if !b.skipped.is_empty() {
                for (p, why) in &b.skipped {
                    tracing::warn!(peer = %self.cfg.address, prefix = %p, reason = why, "route not sent");
                }
                let skipped: BTreeSet<_> = b.skipped.iter().map(|(p, _)| *p).collect();
                d.announce.retain(|(p, _)| !skipped.contains(p));
                // A route that can no longer be sent must not stay at the peer.
                let stale: Vec<_> = skipped
                    .into_iter()
                    .filter(|p| e.sent.contains_key(p))
                    .collect();
                if !stale.is_empty() {
                    let w = Diff {
                        withdraw: stale.clone(),
                        announce: vec![],
                    };
                    msgs.extend(rib_out::build(&w, e.ectx, e.nh, e.fam).messages);
                    d.withdraw.extend(stale);
                }
            }
            self.send_batch(io, conn, &msgs, hold)
                .await
                .map_err(|e| (conn, e))?;
        }
        if let Some(e) = io.est.as_mut() {
            rib::apply(&mut e.sent, &d);
            e.synced = Some(plan.version);
        }
        Ok(())
    }

    /// Applies settings that need no new session.
    fn reconfigure(&mut self, cfg: PeerConfig, io: &mut Io, events: &mut VecDeque<Event>) {
        let groups_changed = cfg.groups != self.cfg.groups;
        let nh_changed =
            cfg.next_hop_v4 != self.cfg.next_hop_v4 || cfg.next_hop_v6 != self.cfg.next_hop_v6;
        self.cfg = cfg;
        events.push_back(Event::Reconfigure(settings(&self.cfg)));
        let local = io
            .est
            .as_ref()
            .and_then(|e| io.conns.get(&e.conn))
            .map(|c| c.local.ip());
        let nh = local.map(|l| self.next_hops(l));
        if let Some(e) = io.est.as_mut() {
            if groups_changed {
                e.synced = None;
            }
            if nh_changed {
                if let Some(nh) = nh {
                    e.nh = nh;
                }
                // Announce everything again with the new next hops.
                e.sent.clear();
                e.synced = None;
            }
        }
        if groups_changed || nh_changed {
            // Poke the RIB watch so the session syncs on its next turn.
            self.shared.rib_version.send_modify(|_| {});
        }
    }

    /// Ends the session as the speaker asked.
    async fn stop(&self, how: PeerStop, fsm: &Fsm, io: &mut Io, events: &mut VecDeque<Event>) {
        let mode = match how {
            PeerStop::Cease(sub) => StopMode::Cease(sub),
            PeerStop::Restart => {
                let gr = self.cfg.restart_time(&self.shared.global).is_some()
                    && fsm
                        .established()
                        .is_some_and(|(_, n)| n.peer_graceful_restart);
                if gr {
                    StopMode::Silent
                } else {
                    StopMode::Cease(cease::ADMIN_SHUTDOWN)
                }
            }
            PeerStop::Withdraw => {
                if let Some(e) = &io.est {
                    let d = Diff {
                        withdraw: e.sent.keys().copied().collect(),
                        announce: vec![],
                    };
                    let b = rib_out::build(&d, e.ectx, e.nh, e.fam);
                    let (conn, hold, n) = (e.conn, e.hold, d.withdraw.len());
                    match self.send_batch(io, conn, &b.messages, hold).await {
                        Ok(()) => {
                            if let Some(e) = io.est.as_mut() {
                                e.sent.clear();
                            }
                            let acked = match io.conns.get(&conn) {
                                Some(c) => wait_acked(c.wr.as_ref(), Duration::from_secs(2)).await,
                                None => false,
                            };
                            tracing::info!(peer = %self.cfg.address, withdrawn = n, acked, "routes withdrawn before Cease");
                        }
                        Err(e) => {
                            tracing::warn!(peer = %self.cfg.address, error = %e, "withdrawing before Cease failed")
                        }
                    }
                }
                StopMode::Cease(cease::ADMIN_SHUTDOWN)
            }
        };
        let reason = match mode {
            StopMode::Silent => "stopped for a restart: routes kept by the peer (graceful restart)",
            StopMode::Cease(cease::DECONFIGURED) => "peer removed",
            StopMode::Cease(cease::CONFIG_CHANGE) => "restarted for a configuration change",
            StopMode::Cease(_) => "administrative shutdown",
        };
        events.push_back(Event::Stop {
            mode,
            reason: reason.into(),
        });
    }
}

/// Waits until the peer has acknowledged everything written on `sock`
/// (`SIOCOUTQ` reaches 0), at most `limit`; false if it did not.
async fn wait_acked(sock: &TcpStream, limit: Duration) -> bool {
    let t = tokio::time::Instant::now();
    loop {
        let mut n: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int for a socket we own.
        let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        if r != 0 || n == 0 {
            return r == 0;
        }
        if t.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Addresses on the interface that holds `local`: an IPv4 address, a global
/// IPv6 address and a link-local IPv6 address, used as next hop self for the
/// family the session itself does not run over.
pub(crate) fn interface_addresses(
    local: IpAddr,
) -> (Option<Ipv4Addr>, Option<Ipv6Addr>, Option<Ipv6Addr>) {
    let mut v4 = None;
    let mut v6 = None;
    let mut ll = None;
    if let IpAddr::V4(a) = local {
        v4 = Some(a);
    }
    if let IpAddr::V6(a) = local {
        if a.is_unicast_link_local() {
            ll = Some(a);
        } else {
            v6 = Some(a);
        }
    }
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return (v4, v6, ll);
    }
    let mut entries = Vec::new();
    let mut p = ifap;
    while !p.is_null() {
        // SAFETY: p walks the list getifaddrs returned; fields are valid until freeifaddrs.
        unsafe {
            let ifa = &*p;
            if !ifa.ifa_addr.is_null() && !ifa.ifa_name.is_null() {
                let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_bytes().to_vec();
                let fam = i32::from((*ifa.ifa_addr).sa_family);
                if fam == libc::AF_INET {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    entries.push((
                        name,
                        IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes())),
                    ));
                } else if fam == libc::AF_INET6 {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    entries.push((name, IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr))));
                }
            }
            p = ifa.ifa_next;
        }
    }
    // SAFETY: ifap came from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    let Some(ifname) = entries
        .iter()
        .find(|(_, a)| *a == local)
        .map(|(n, _)| n.clone())
    else {
        return (v4, v6, ll);
    };
    for (n, a) in &entries {
        if *n != ifname {
            continue;
        }
        match a {
            IpAddr::V4(a) if v4.is_none() => v4 = Some(*a),
            IpAddr::V6(a) if a.is_unicast_link_local() && ll.is_none() => ll = Some(*a),
            IpAddr::V6(a) if !a.is_unicast_link_local() && !a.is_loopback() && v6.is_none() => {
                v6 = Some(*a)
            }
            _ => {}
        }
    }
    (v4, v6, ll)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connect-retry jitter comes from the kernel's random numbers: it
    /// spreads over the whole 75–100 % range, evenly. (Seeding from an
    /// `Instant` that had just been taken gave nearly the same value every
    /// time: speakers started together retried in step.)
    #[test]
    fn connect_retry_jitter_is_random_over_the_range() {
        let d = Duration::from_secs(1);
        let n = 4000;
        let mut bins = [0u32; 5];
        let mut seen = BTreeSet::new();
        for _ in 0..n {
            let j = jitter(d, random_u32());
            assert!(j >= Duration::from_millis(750) && j < d, "{j:?}");
            let b = ((j.as_secs_f64() - 0.75) / 0.05) as usize;
            bins[b.min(4)] += 1;
            seen.insert(j.as_micros());
        }
        for (i, c) in bins.iter().enumerate() {
            // Each fifth of the range gets 20 % ± 4 % of the draws.
            assert!((640..=960).contains(c), "bin {i}: {c} of {n}: {bins:?}");
        }
        assert!(seen.len() > n / 2, "{} distinct values of {n}", seen.len());
    }
}
