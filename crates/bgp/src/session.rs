//! One peer's session task: connects or accepts, runs the OPEN exchange, and
//! in Established keeps the peer's Adj-RIB-Out in step with the speaker's RIB.
//!
//! The task owns everything about its peer, so a configuration change to one
//! peer restarts only that task and never touches the others.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, timeout};

use crate::attributes::{self, Context, EncodeContext};
use crate::codec::{self, err, DecodeError, Message, Notification, HEADER_LEN};
use crate::fsm::{keep_local_initiated, negotiate, LocalOpen, Negotiated, State};
use crate::md5;
use crate::rib_out::{self, Diff, Families, NextHops, RouteSet};
use crate::speaker::{PeerConfig, PeerStatus, Shared};

/// Longest wait for the peer's OPEN (RFC 4271 suggests a 4-minute hold timer here).
const OPEN_WAIT: Duration = Duration::from_secs(240);
/// Upper bound of the connect-retry backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

type Inbound = Result<Message, ReadError>;

#[derive(Debug)]
enum ReadError {
    Decode(DecodeError),
    Closed(String),
}

/// A TCP connection with its reader task.
struct Conn {
    rx: mpsc::Receiver<Inbound>,
    wr: OwnedWriteHalf,
    reader: tokio::task::JoinHandle<()>,
    outgoing: bool,
    local: SocketAddr,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// How a connection ended.
struct Outcome {
    established: bool,
    error: Option<String>,
    /// A new connection from the peer to continue with (collision, restart).
    next: Option<TcpStream>,
    shutdown: bool,
}

impl Outcome {
    fn failed(e: impl Into<String>) -> Outcome {
        Outcome {
            established: false,
            error: Some(e.into()),
            next: None,
            shutdown: false,
        }
    }
}

/// Everything a session task needs.
pub(crate) struct Session {
    pub cfg: PeerConfig,
    pub shared: Arc<Shared>,
    pub incoming: mpsc::Receiver<TcpStream>,
    pub shutdown: watch::Receiver<bool>,
    pub status: Arc<Mutex<PeerStatus>>,
    pub bfd: Option<watch::Receiver<berth_bfd::SessionState>>,
    pub listen_md5_error: Option<String>,
    pub sent_first_open: bool,
}

async fn recv_opt(c: &mut Option<Conn>) -> Option<Inbound> {
    match c {
        Some(c) => c.rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn read_loop(rd: OwnedReadHalf, tx: mpsc::Sender<Inbound>) {
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    loop {
        let mut hdr = [0u8; HEADER_LEN];
        if let Err(e) = rd.read_exact(&mut hdr).await {
            let _ = tx.send(Err(ReadError::Closed(e.to_string()))).await;
            return;
        }
        let len = match codec::frame_len(&hdr) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(ReadError::Decode(e))).await;
                return;
            }
        };
        let mut buf = vec![0u8; len];
        buf[..HEADER_LEN].copy_from_slice(&hdr);
        if let Err(e) = rd.read_exact(&mut buf[HEADER_LEN..]).await {
            let _ = tx.send(Err(ReadError::Closed(e.to_string()))).await;
            return;
        }
        let m = codec::decode(&buf).map_err(ReadError::Decode);
        let stop = m.is_err();
        if tx.send(m).await.is_err() || stop {
            return;
        }
    }
}

fn jitter(d: Duration) -> Duration {
    // RFC 4271 §10: jitter timers by 75–100 %. A cheap PRNG is enough here.
    let n = Instant::now().elapsed().subsec_nanos() ^ std::process::id();
    let f = 0.75 + f64::from(n % 1000) / 4000.0;
    d.mul_f64(f)
}

impl Session {
    fn set<F: FnOnce(&mut PeerStatus)>(&self, f: F) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    fn set_state(&self, st: State) {
        self.set(|s| {
            if s.state != st {
                tracing::info!(peer = %self.cfg.address, from = %s.state, to = %st, "BGP state change");
            }
            s.state = st;
            if st == State::Established {
                s.established_at = Some(Instant::now());
                s.established_transitions += 1;
            } else {
                s.established_at = None;
            }
        });
    }

    fn is_ibgp(&self) -> bool {
        self.cfg.remote_as == self.shared.global.local_as
    }

    fn ttl(&self) -> u8 {
        self.cfg.ttl.unwrap_or(if self.is_ibgp() { 64 } else { 1 })
    }

    /// The task body: loop over connections until shut down.
    pub(crate) async fn run(mut self) {
        let mut backoff = self.cfg.connect_retry;
        let mut pending: Option<TcpStream> = None;
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            let out = match pending.take() {
                Some(s) => self.run_conn(s, false).await,
                None => match self.obtain().await {
                    Ok((s, outgoing)) => self.run_conn(s, outgoing).await,
                    Err(o) => o,
                },
            };
            if let Some(e) = &out.error {
                if out.shutdown {
                    tracing::info!(peer = %self.cfg.address, reason = %e, "BGP session stopped");
                } else {
                    tracing::warn!(peer = %self.cfg.address, error = %e, "BGP session ended");
                }
                let e = e.clone();
                self.set(|s| s.last_error = Some(e));
            }
            self.set_state(State::Idle);
            if out.shutdown || *self.shutdown.borrow() {
                break;
            }
            if out.next.is_some() {
                pending = out.next;
                continue;
            }
            backoff = if out.established {
                self.cfg.connect_retry
            } else {
                (backoff * 2).min(MAX_BACKOFF.max(self.cfg.connect_retry))
            };
            // Idle: wait for the connect-retry timer, but take the peer's call at once.
            tokio::select! {
                _ = sleep(jitter(backoff)) => {}
                s = self.incoming.recv() => match s {
                    Some(s) => pending = Some(s),
                    None => break, // the speaker dropped this peer
                },
                _ = self.shutdown.changed() => break,
            }
        }
        self.set_state(State::Idle);
    }

    fn accept_incoming(&self, s: TcpStream) -> Option<TcpStream> {
        if let Some(e) = &self.listen_md5_error {
            // Never run an unauthenticated session when a key was asked for.
            tracing::warn!(peer = %self.cfg.address, error = %e, "refusing incoming connection: MD5 key not installed on listener");
            return None;
        }
        Some(s)
    }

    /// Connect / Active: dial (unless passive) while listening for the peer.
    async fn obtain(&mut self) -> Result<(TcpStream, bool), Outcome> {
        if self.cfg.passive {
            self.set_state(State::Active);
            loop {
                tokio::select! {
                    s = self.incoming.recv() => match s {
                        Some(s) => if let Some(s) = self.accept_incoming(s) { return Ok((s, false)) },
                        None => return Err(Outcome { shutdown: true, ..Outcome::failed("listener gone") }),
                    },
                    _ = self.shutdown.changed() => return Err(Outcome { shutdown: true, ..Outcome::failed("shutdown") }),
                }
            }
        }
        self.set_state(State::Connect);
        let opts = md5::ConnectOptions {
            peer: SocketAddr::new(self.cfg.address, self.cfg.port),
            local: self.cfg.local_address,
            md5: self.cfg.password.as_ref().map(|p| p.as_bytes().to_vec()),
            ttl: self.ttl(),
            user_timeout: Duration::from_secs(u64::from(self.cfg.hold_time.max(3))),
        };
        let connect = timeout(Duration::from_secs(5), md5::connect(&opts));
        tokio::pin!(connect);
        loop {
            tokio::select! {
                r = &mut connect => return match r {
                    Ok(Ok(s)) => Ok((s, true)),
                    Ok(Err(e)) => Err(Outcome::failed(e.to_string())),
                    Err(_) => Err(Outcome::failed("connect timed out")),
                },
                s = self.incoming.recv() => match s {
                    Some(s) => if let Some(s) = self.accept_incoming(s) { return Ok((s, false)) },
                    None => return Err(Outcome { shutdown: true, ..Outcome::failed("peer removed") }),
                },
                _ = self.shutdown.changed() => return Err(Outcome { shutdown: true, ..Outcome::failed("shutdown") }),
            }
        }
    }

    fn wrap(&self, s: TcpStream, outgoing: bool) -> Result<Conn, String> {
        let local = s.local_addr().map_err(|e| e.to_string())?;
        if !outgoing {
            let sock = socket2::SockRef::from(&s);
            let v6 = local.is_ipv6();
            let r = if v6 {
                sock.set_unicast_hops_v6(u32::from(self.ttl()))
            } else {
                sock.set_ttl_v4(u32::from(self.ttl()))
            };
            r.map_err(|e| format!("set TTL: {e}"))?;
            let _ = s.set_nodelay(true);
        }
        let (rd, wr) = s.into_split();
        let (tx, rx) = mpsc::channel(64);
        let reader = tokio::spawn(read_loop(rd, tx));
        Ok(Conn {
            rx,
            wr,
            reader,
            outgoing,
            local,
        })
    }

    async fn send(&self, c: &mut Conn, bytes: &[u8], hold: Duration) -> Result<(), String> {
        let limit = hold.max(Duration::from_secs(5));
        match timeout(limit, c.wr.write_all(bytes)).await {
            Ok(Ok(())) => {
                self.set(|s| s.messages_out += 1);
                Ok(())
            }
            Ok(Err(e)) => Err(format!("write: {e}")),
            Err(_) => Err("write timed out (peer not reading)".into()),
        }
    }

    async fn notify(&self, c: &mut Conn, n: Notification) {
        tracing::warn!(peer = %self.cfg.address, code = n.code, subcode = n.subcode, "sending NOTIFICATION");
        let b = Message::Notification(n).to_bytes();
        let _ = timeout(Duration::from_secs(1), c.wr.write_all(&b)).await;
        let _ = c.wr.shutdown().await;
    }

    fn local_open(&self) -> LocalOpen {
        let g = &self.shared.global;
        LocalOpen {
            local_as: g.local_as,
            router_id: g.router_id,
            hold_time: self.cfg.hold_time,
            families: Families { v4: true, v6: true },
            gr_restart_time: g.graceful_restart_time,
            gr_restarting: g.graceful_restart_time.is_some() && !self.sent_first_open,
        }
    }

    /// OpenSent → OpenConfirm → Established → back to Idle.
    async fn run_conn(&mut self, s: TcpStream, outgoing: bool) -> Outcome {
        let mut conn = match self.wrap(s, outgoing) {
            Ok(c) => c,
            Err(e) => return Outcome::failed(e),
        };
        let local = self.local_open();
        let open = Message::Open(local.message()).to_bytes();
        if let Err(e) = self.send(&mut conn, &open, OPEN_WAIT).await {
            return Outcome::failed(e);
        }
        self.sent_first_open = true;
        self.set_state(State::OpenSent);
        // A second connection from the peer while ours is in OpenSent runs
        // its own OPEN exchange; the first OPEN received on either settles the
        // collision (RFC 4271 §6.8): the connection opened by the speaker with
        // the higher BGP identifier survives.
        let mut second: Option<Conn> = None;
        let deadline = tokio::time::Instant::now() + OPEN_WAIT;
        let neg: Negotiated = loop {
            let (m, on_second) = tokio::select! {
                m = conn.rx.recv() => (m, false),
                m = recv_opt(&mut second) => (m, true),
                s = self.incoming.recv() => {
                    if let Some(s) = s.and_then(|s| self.accept_incoming(s)) {
                        if !conn.outgoing {
                            // The peer gave up on its first try and dialled again.
                            return Outcome { next: Some(s), ..Outcome::failed("peer reconnected during OPEN exchange") };
                        }
                        if let Ok(mut c2) = self.wrap(s, false) {
                            if self.send(&mut c2, &open, OPEN_WAIT).await.is_ok() {
                                second = Some(c2);
                            }
                        }
                    }
                    continue;
                }
                _ = sleep_until(deadline) => {
                    self.notify(&mut conn, Notification { code: err::HOLD_TIMER, subcode: 0, data: vec![] }).await;
                    return Outcome::failed("no OPEN from peer");
                }
                _ = self.shutdown.changed() => {
                    self.notify(&mut conn, Notification { code: err::CEASE, subcode: 2, data: vec![] }).await;
                    return Outcome { shutdown: true, ..Outcome::failed("shutdown") };
                }
            };
            let o = match m {
                Some(Ok(Message::Open(o))) => o,
                other => {
                    if on_second {
                        second = None;
                        continue;
                    }
                    match second.take() {
                        // Our connection failed; carry on with the peer's.
                        Some(c2) => {
                            conn = c2;
                            continue;
                        }
                        None => return self.unexpected(&mut conn, other, None).await,
                    }
                }
            };
            self.set(|s| s.messages_in += 1);
            let n = match negotiate(&local, self.cfg.remote_as, &o) {
                Ok(n) => n,
                Err(e) => {
                    let c = if on_second {
                        second.as_mut()
                    } else {
                        Some(&mut conn)
                    };
                    if let Some(c) = c {
                        self.notify(c, e.notification()).await;
                    }
                    return Outcome::failed(format!("peer OPEN rejected: {e}"));
                }
            };
            let Some(mut c2) = second.take() else {
                break n;
            };
            let cease = Notification {
                code: err::CEASE,
                subcode: 7,
                data: vec![],
            };
            if keep_local_initiated(self.shared.global.router_id, n.peer_id) {
                // Keep ours (conn); close the peer's.
                self.notify(&mut c2, cease).await;
                if !on_second {
                    break n;
                }
            } else {
                self.notify(&mut conn, cease).await;
                conn = c2;
                if on_second {
                    break n;
                }
            }
            // The surviving connection has not delivered its OPEN yet: wait for it.
        };
        let hold = neg.hold_time;
        if !hold.is_zero() {
            if let Err(e) = md5::set_user_timeout(conn.wr.as_ref(), hold) {
                tracing::warn!(peer = %self.cfg.address, error = %e, "TCP_USER_TIMEOUT");
            }
        }
        if let Err(e) = self
            .send(&mut conn, &Message::Keepalive.to_bytes(), hold)
            .await
        {
            return Outcome::failed(e);
        }
        self.set_state(State::OpenConfirm);
        self.set(|s| {
            s.peer_as = Some(neg.peer_as);
            s.peer_id = Some(neg.peer_id);
            s.hold_time = Some(neg.hold_time);
            s.keepalive = Some(neg.keepalive);
            s.local_address = Some(conn.local.ip());
        });
        let wait = if hold.is_zero() { OPEN_WAIT } else { hold };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                m = conn.rx.recv() => match m {
                    Some(Ok(Message::Keepalive)) => { self.set(|s| s.messages_in += 1); break; }
                    other => return self.unexpected(&mut conn, other, None).await,
                },
                s = self.incoming.recv() => if let Some(s) = s.and_then(|s| self.accept_incoming(s)) {
                    if conn.outgoing && !keep_local_initiated(self.shared.global.router_id, neg.peer_id) {
                        self.notify(&mut conn, Notification { code: err::CEASE, subcode: 7, data: vec![] }).await;
                        return Outcome { next: Some(s), ..Outcome::failed("connection collision: continuing with the peer's connection") };
                    }
                },
                _ = sleep_until(deadline) => {
                    self.notify(&mut conn, Notification { code: err::HOLD_TIMER, subcode: 0, data: vec![] }).await;
                    return Outcome::failed("hold timer expired in OpenConfirm");
                }
                _ = self.shutdown.changed() => {
                    self.notify(&mut conn, Notification { code: err::CEASE, subcode: 2, data: vec![] }).await;
                    return Outcome { shutdown: true, ..Outcome::failed("shutdown") };
                }
            }
        }
        self.set_state(State::Established);
        let mut out = self.established(&mut conn, &neg).await;
        out.established = true;
        self.set(|s| {
            s.prefixes_received = 0;
            s.prefixes_sent = 0;
        });
        out
    }

    async fn unexpected(
        &self,
        conn: &mut Conn,
        m: Option<Inbound>,
        next: Option<TcpStream>,
    ) -> Outcome {
        let why = match m {
            None => "connection closed".to_string(),
            Some(Err(ReadError::Closed(e))) => format!("connection closed: {e}"),
            Some(Err(ReadError::Decode(e))) => {
                self.notify(conn, e.notification()).await;
                format!("bad message from peer: {e}")
            }
            Some(Ok(Message::Notification(n))) => {
                self.set(|s| s.messages_in += 1);
                format!(
                    "NOTIFICATION from peer: {}/{} {}",
                    n.code,
                    n.subcode,
                    describe(&n)
                )
            }
            Some(Ok(other)) => {
                self.notify(
                    conn,
                    Notification {
                        code: err::FSM,
                        subcode: 0,
                        data: vec![],
                    },
                )
                .await;
                format!("unexpected message {other:?} in this state")
            }
        };
        Outcome {
            next,
            ..Outcome::failed(why)
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

    async fn established(&mut self, conn: &mut Conn, neg: &Negotiated) -> Outcome {
        let hold = neg.hold_time;
        let ectx = EncodeContext {
            local_as: self.shared.global.local_as,
            ibgp: self.is_ibgp(),
            four_octet: neg.four_octet,
        };
        let pctx = Context {
            four_octet: neg.four_octet,
            ibgp: self.is_ibgp(),
            peer_as: if self.is_ibgp() {
                None
            } else {
                Some(neg.peer_as)
            },
        };
        let nh = self.next_hops(conn.local.ip());
        let fam = neg.families;
        let mut rib_rx = self.shared.rib_version.subscribe();
        let mut sent = RouteSet::new();
        let mut rib_in: BTreeSet<codec_prefix::Prefix> = BTreeSet::new();
        // Initial table, then End-of-RIB. Mark the RIB version seen first so a
        // change racing with the dump triggers another sync.
        rib_rx.borrow_and_update();
        if let Err(e) = self.sync(conn, &mut sent, ectx, nh, fam, hold).await {
            return Outcome::failed(e);
        }
        for m in rib_out::end_of_rib(fam) {
            if let Err(e) = self.send(conn, &m, hold).await {
                return Outcome::failed(e);
            }
        }
        let mut hold_deadline = tokio::time::Instant::now() + hold;
        let ka = if neg.keepalive.is_zero() {
            Duration::from_secs(3600)
        } else {
            neg.keepalive
        };
        let mut ka_tick = tokio::time::interval_at(tokio::time::Instant::now() + ka, ka);
        let mut bfd = self.bfd.clone();
        let mut bfd_was_up = bfd
            .as_ref()
            .is_some_and(|b| *b.borrow() == berth_bfd::SessionState::Up);
        loop {
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => {
                    self.notify(conn, Notification { code: err::CEASE, subcode: 2, data: vec![] }).await;
                    return Outcome { shutdown: true, ..Outcome::failed("administrative shutdown") };
                }
                r = async { match bfd.as_mut() { Some(b) => b.changed().await, None => std::future::pending().await } } => {
                    if r.is_err() { bfd = None; continue; }
                    let st = bfd.as_ref().map(|b| *b.borrow());
                    self.set(|s| s.bfd_state = st);
                    if st == Some(berth_bfd::SessionState::Up) {
                        bfd_was_up = true;
                    } else if bfd_was_up {
                        // RFC 9384 Cease subcode 10: BFD Down.
                        self.notify(conn, Notification { code: err::CEASE, subcode: 10, data: vec![] }).await;
                        return Outcome::failed("BFD session went down");
                    }
                }
                m = conn.rx.recv() => {
                    match m {
                        Some(Ok(Message::Keepalive)) => {
                            self.set(|s| s.messages_in += 1);
                            hold_deadline = tokio::time::Instant::now() + hold;
                        }
                        Some(Ok(Message::Update(u))) => {
                            self.set(|s| { s.messages_in += 1; s.updates_in += 1; });
                            hold_deadline = tokio::time::Instant::now() + hold;
                            if let Err(e) = self.on_update(u, pctx, &mut rib_in) {
                                self.notify(conn, e.notification()).await;
                                return Outcome::failed(format!("bad UPDATE from peer: {e}"));
                            }
                        }
                        Some(Ok(Message::RouteRefresh(r))) => {
                            self.set(|s| s.messages_in += 1);
                            hold_deadline = tokio::time::Instant::now() + hold;
                            // RFC 2918: answer by sending the Adj-RIB-Out again.
                            let d = Diff {
                                withdraw: vec![],
                                announce: sent
                                    .iter()
                                    .filter(|(p, _)| (r.afi == codec::AFI_IPV4) == p.is_v4())
                                    .map(|(p, a)| (*p, Arc::clone(a)))
                                    .collect(),
                            };
                            let b = rib_out::build(&d, ectx, nh, fam);
                            for m in &b.messages {
                                if let Err(e) = self.send(conn, m, hold).await {
                                    return Outcome::failed(e);
                                }
                            }
                            self.set(|s| s.updates_out += b.messages.len() as u64);
                        }
                        other => return self.unexpected(conn, other, None).await,
                    }
                }
                _ = sleep_until(hold_deadline), if !hold.is_zero() => {
                    self.notify(conn, Notification { code: err::HOLD_TIMER, subcode: 0, data: vec![] }).await;
                    return Outcome::failed("hold timer expired");
                }
                _ = ka_tick.tick(), if !neg.keepalive.is_zero() => {
                    if let Err(e) = self.send(conn, &Message::Keepalive.to_bytes(), hold).await {
                        return Outcome::failed(e);
                    }
                }
                r = rib_rx.changed() => {
                    if r.is_err() {
                        return Outcome { shutdown: true, ..Outcome::failed("speaker gone") };
                    }
                    rib_rx.borrow_and_update();
                    if let Err(e) = self.sync(conn, &mut sent, ectx, nh, fam, hold).await {
                        return Outcome::failed(e);
                    }
                }
                s = self.incoming.recv() => if let Some(s) = s.and_then(|s| self.accept_incoming(s)) {
                    if neg.peer_graceful_restart {
                        // RFC 4724 §4.2: a new connection from a graceful-restart
                        // peer means the old one is dead.
                        return Outcome { next: Some(s), ..Outcome::failed("peer restarted (new connection while Established)") };
                    }
                    drop(s);
                },
            }
        }
    }

    /// Sends what changed between `sent` and the peer's current view of the RIB.
    async fn sync(
        &self,
        conn: &mut Conn,
        sent: &mut RouteSet,
        ectx: EncodeContext,
        nh: NextHops,
        fam: Families,
        hold: Duration,
    ) -> Result<(), String> {
        let want = self.shared.view_for(&self.cfg);
        let d = rib_out::diff(sent, &want);
        if d.withdraw.is_empty() && d.announce.is_empty() {
            return Ok(());
        }
        let b = rib_out::build(&d, ectx, nh, fam);
        for (p, why) in &b.skipped {
            tracing::warn!(peer = %self.cfg.address, prefix = %p, reason = why, "route not sent");
        }
        // Write the batch in one go: fewer syscalls, fewer TCP segments.
        let mut buf = Vec::with_capacity(b.messages.iter().map(Vec::len).sum());
        for m in &b.messages {
            buf.extend_from_slice(m);
        }
        match timeout(hold.max(Duration::from_secs(5)), conn.wr.write_all(&buf)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("write: {e}")),
            Err(_) => return Err("write timed out (peer not reading)".into()),
        }
        let skipped: BTreeSet<_> = b.skipped.iter().map(|(p, _)| *p).collect();
        let mut now = want;
        if !skipped.is_empty() {
            now.retain(|p, _| !skipped.contains(p));
        }
        *sent = now;
        let n = sent.len();
        self.set(|s| {
            s.messages_out += b.messages.len() as u64;
            s.updates_out += b.messages.len() as u64;
            s.prefixes_sent = n;
        });
        Ok(())
    }

    fn on_update(
        &self,
        u: codec::Update,
        ctx: Context,
        rib_in: &mut BTreeSet<codec_prefix::Prefix>,
    ) -> Result<(), DecodeError> {
        let parsed = attributes::parse(&u.attributes, !u.nlri.is_empty(), ctx)?;
        for p in &u.withdrawn {
            rib_in.remove(p);
        }
        if let Some(m) = &parsed.attrs.mp_unreach {
            for p in &m.withdrawn {
                rib_in.remove(p);
            }
        }
        let reach = parsed
            .attrs
            .mp_reach
            .as_ref()
            .map(|m| m.nlri.as_slice())
            .unwrap_or(&[]);
        if parsed.treat_as_withdraw {
            tracing::warn!(peer = %self.cfg.address, problems = ?parsed.problems, "malformed UPDATE: treat-as-withdraw (RFC 7606)");
            for p in u.nlri.iter().chain(reach) {
                rib_in.remove(p);
            }
            self.set(|s| s.treat_as_withdraw += 1);
        } else {
            if !parsed.problems.is_empty() {
                tracing::warn!(peer = %self.cfg.address, problems = ?parsed.problems, "UPDATE attributes discarded (RFC 7606)");
                self.set(|s| s.attributes_discarded += 1);
            }
            rib_in.extend(u.nlri.iter().chain(reach).copied());
        }
        let n = rib_in.len();
        self.set(|s| s.prefixes_received = n);
        Ok(())
    }
}

use crate::prefix as codec_prefix;

fn describe(n: &Notification) -> &'static str {
    match (n.code, n.subcode) {
        (1, _) => "message header error",
        (2, 2) => "bad peer AS",
        (2, 6) => "unacceptable hold time",
        (2, _) => "OPEN message error",
        (3, _) => "UPDATE message error",
        (4, _) => "hold timer expired",
        (5, _) => "FSM error",
        (6, 2) => "administrative shutdown",
        (6, 3) => "peer de-configured",
        (6, 4) => "administrative reset",
        (6, 5) => "connection rejected",
        (6, 6) => "other configuration change",
        (6, 7) => "connection collision resolution",
        (6, 10) => "BFD down",
        (6, _) => "cease",
        _ => "unknown",
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
