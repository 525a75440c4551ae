//! The BGP session finite-state machine (RFC 4271 §8) as pure event
//! handlers: [`Fsm::handle`] takes an [`Event`] (a connection came up, a
//! message arrived, a timer fired, the operator asked to stop) and returns the
//! [`Action`]s to carry out (send this message, close that connection, arm a
//! timer). It owns no socket, no clock and no task, so every transition,
//! collision case, error path and the maximum-prefix limit is tested here
//! without the network; the per-peer task behind [`crate::Speaker`] does the I/O.
//!
//! Connections are named by a [`ConnId`] the I/O side chooses. Up to two exist
//! at once: during a collision (RFC 4271 §6.8) both run their OPEN exchange
//! until the first OPEN tells which one survives.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::attributes::{self, Context};
use crate::codec::{
    err, Capability, DecodeError, GrFamily, Message, Notification, Open, Update, AFI_IPV4,
    AFI_IPV6, AS_TRANS, SAFI_UNICAST,
};
use crate::rib_in::{max_prefix_data, Family, LimitAction, LimitCheck, PrefixLimits, RibIn};
use crate::rib_out::Families;

/// Session state (RFC 4271 §8.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum State {
    /// Not trying; waiting for the connect-retry timer or shut down.
    #[default]
    Idle,
    /// Dialling the peer.
    Connect,
    /// Waiting for the peer to dial in (passive peers, or between attempts).
    Active,
    /// OPEN sent, waiting for the peer's.
    OpenSent,
    /// OPENs exchanged, waiting for KEEPALIVE.
    OpenConfirm,
    /// Routes flow.
    Established,
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// What this side offers in its OPEN.
#[derive(Debug, Clone)]
pub struct LocalOpen {
    /// Local AS.
    pub local_as: u32,
    /// Router ID.
    pub router_id: Ipv4Addr,
    /// Proposed hold time (0 or ≥ 3 seconds).
    pub hold_time: u16,
    /// Families offered.
    pub families: Families,
    /// Graceful restart time (seconds); `None` to not advertise GR.
    pub gr_restart_time: Option<u16>,
    /// Set the R bit: this speaker has just restarted.
    pub gr_restarting: bool,
}

impl LocalOpen {
    /// Builds the OPEN message.
    pub fn message(&self) -> Open {
        let mut caps = Vec::new();
        let mut gr = Vec::new();
        if self.families.v4 {
            caps.push(Capability::Multiprotocol {
                afi: AFI_IPV4,
                safi: SAFI_UNICAST,
            });
            gr.push(GrFamily {
                afi: AFI_IPV4,
                safi: SAFI_UNICAST,
                forwarding: self.gr_restarting,
            });
        }
        if self.families.v6 {
            caps.push(Capability::Multiprotocol {
                afi: AFI_IPV6,
                safi: SAFI_UNICAST,
            });
            gr.push(GrFamily {
                afi: AFI_IPV6,
                safi: SAFI_UNICAST,
                forwarding: self.gr_restarting,
            });
        }
        caps.push(Capability::RouteRefresh);
        caps.push(Capability::FourOctetAs(self.local_as));
        if let Some(t) = self.gr_restart_time {
            caps.push(Capability::GracefulRestart {
                restarting: self.gr_restarting,
                restart_time: t.min(4095),
                families: gr,
            });
        }
        Open {
            version: 4,
            my_as: u16::try_from(self.local_as).unwrap_or(AS_TRANS),
            hold_time: self.hold_time,
            bgp_id: self.router_id,
            capabilities: caps,
        }
    }
}

/// Result of a successful OPEN exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Peer's AS.
    pub peer_as: u32,
    /// Peer's BGP identifier.
    pub peer_id: Ipv4Addr,
    /// Hold time: the smaller proposal; zero disables keepalives and the hold timer.
    pub hold_time: Duration,
    /// Keepalive interval: a third of the hold time.
    pub keepalive: Duration,
    /// 4-octet AS on both sides.
    pub four_octet: bool,
    /// Families both sides support.
    pub families: Families,
    /// Peer supports route refresh.
    pub route_refresh: bool,
    /// Peer advertised graceful restart.
    pub peer_graceful_restart: bool,
}

/// Validates the peer's OPEN against what we expect (RFC 4271 §6.2, RFC 6793,
/// RFC 4760 §8) and negotiates the session parameters.
pub fn negotiate(
    local: &LocalOpen,
    expected_as: u32,
    open: &Open,
) -> Result<Negotiated, DecodeError> {
    if open.version != 4 {
        return Err(DecodeError::new(
            err::OPEN,
            1,
            4u16.to_be_bytes().to_vec(),
            "unsupported BGP version",
        ));
    }
    let mut four = None;
    let mut mp = Vec::new();
    let mut rr = false;
    let mut gr = false;
    for c in &open.capabilities {
        match c {
            Capability::FourOctetAs(a) => four = Some(*a),
            Capability::Multiprotocol { afi, safi } => mp.push((*afi, *safi)),
            Capability::RouteRefresh => rr = true,
            Capability::GracefulRestart { .. } => gr = true,
            Capability::Unknown { .. } => {}
        }
    }
    let peer_as = four.unwrap_or(u32::from(open.my_as));
    if peer_as != expected_as
        || (four.is_some() && open.my_as != AS_TRANS && u32::from(open.my_as) != peer_as)
    {
        return Err(DecodeError::new(
            err::OPEN,
            2,
            open.my_as.to_be_bytes().to_vec(),
            "bad peer AS",
        ));
    }
    if open.hold_time == 1 || open.hold_time == 2 {
        return Err(DecodeError::new(
            err::OPEN,
            6,
            vec![],
            "unacceptable hold time",
        ));
    }
    let id = open.bgp_id;
    if id.is_unspecified() || (peer_as == local.local_as && id == local.router_id) {
        return Err(DecodeError::new(err::OPEN, 3, vec![], "bad BGP identifier"));
    }
    let hold = local.hold_time.min(open.hold_time);
    // RFC 4760 §8: without MP capabilities, the peer speaks IPv4 unicast only.
    let (pv4, pv6) = if mp.is_empty() {
        (true, false)
    } else {
        (
            mp.contains(&(AFI_IPV4, SAFI_UNICAST)),
            mp.contains(&(AFI_IPV6, SAFI_UNICAST)),
        )
    };
    Ok(Negotiated {
        peer_as,
        peer_id: id,
        hold_time: Duration::from_secs(u64::from(hold)),
        keepalive: Duration::from_secs(u64::from(hold / 3)),
        four_octet: four.is_some(),
        families: Families {
            v4: pv4 && local.families.v4,
            v6: pv6 && local.families.v6,
        },
        route_refresh: rr,
        peer_graceful_restart: gr,
    })
}

/// Connection collision (RFC 4271 §6.8): true when the connection *we*
/// initiated must be kept, i.e. our BGP identifier is the higher one.
pub fn keep_local_initiated(local_id: Ipv4Addr, remote_id: Ipv4Addr) -> bool {
    u32::from(local_id) > u32::from(remote_id)
}

/// Longest wait for the peer's OPEN (RFC 4271 §8.2.2 suggests 4 minutes).
pub const OPEN_WAIT: Duration = Duration::from_secs(240);
/// Upper bound of the connect-retry backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Cease subcodes (RFC 4486, RFC 9384) the speaker sends.
pub mod cease {
    /// Maximum Number of Prefixes Reached.
    pub const MAX_PREFIXES: u8 = 1;
    /// Administrative Shutdown.
    pub const ADMIN_SHUTDOWN: u8 = 2;
    /// Peer De-configured.
    pub const DECONFIGURED: u8 = 3;
    /// Other Configuration Change.
    pub const CONFIG_CHANGE: u8 = 6;
    /// Connection Collision Resolution.
    pub const COLLISION: u8 = 7;
    /// BFD Down (RFC 9384).
    pub const BFD_DOWN: u8 = 10;
}

/// A connection, named by the I/O side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Why a connection can no longer be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnError {
    /// The peer sent something that must reset the session; the
    /// NOTIFICATION in the error goes back to it.
    Decode(DecodeError),
    /// The connection closed or failed (EOF, reset, write error).
    Closed(String),
}

/// How to stop the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Send a Cease NOTIFICATION with this subcode (see [`cease`]).
    Cease(u8),
    /// Close the TCP connection without a NOTIFICATION, so a peer that
    /// negotiated graceful restart keeps our routes (RFC 4724 §4.2).
    Silent,
}

/// Timers the FSM arms through [`Action::StartTimer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// Time to dial again (jittered by the I/O side, RFC 4271 §10).
    ConnectRetry,
    /// The peer's OPEN is overdue.
    OpenWait,
    /// Nothing heard from the peer for the hold time.
    Hold,
    /// Time to send a KEEPALIVE.
    Keepalive,
    /// End of the hold-down after a maximum-prefix shutdown.
    LimitRestart,
}

/// Settings that change without resetting the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Only accept connections, never dial.
    pub passive: bool,
    /// First connect-retry interval; doubles per failure up to [`MAX_BACKOFF`].
    pub connect_retry: Duration,
    /// Maximum-prefix limits.
    pub limits: PrefixLimits,
}

/// Everything the FSM needs to know about both ends.
#[derive(Debug, Clone)]
pub struct FsmConfig {
    /// What we offer in our OPEN (the R bit is sent on the first OPEN only).
    pub local: LocalOpen,
    /// The AS the peer must have.
    pub remote_as: u32,
    /// Settings that can change live.
    pub settings: Settings,
}

/// Something that happened to the session.
#[derive(Debug, Clone)]
pub enum Event {
    /// Start (RFC 4271 ManualStart; passive peers wait for the peer to dial).
    Start,
    /// Stop (ManualStop): notify the peer as `mode` says; stays down until
    /// [`Event::Start`].
    Stop {
        /// How the peer is told.
        mode: StopMode,
        /// Why, for the status.
        reason: String,
    },
    /// A TCP connection is up: ours (`outgoing`) or the peer's.
    Connected {
        /// Its name.
        conn: ConnId,
        /// We dialled it.
        outgoing: bool,
    },
    /// Our dial failed.
    ConnectFailed(String),
    /// A message arrived on `conn`.
    Received {
        /// The connection.
        conn: ConnId,
        /// The message.
        msg: Message,
    },
    /// `conn` broke.
    ConnError {
        /// The connection.
        conn: ConnId,
        /// What happened.
        error: ConnError,
    },
    /// A timer armed by [`Action::StartTimer`] fired.
    Timer(Timer),
    /// The BFD session tied to this peer went down after being up.
    BfdDown,
    /// New live settings.
    Reconfigure(Settings),
}

/// What the I/O side must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Dial the peer; report [`Event::Connected`] or [`Event::ConnectFailed`].
    Connect,
    /// Abandon the dial in progress.
    CancelConnect,
    /// Send `msg` on `conn`.
    Send {
        /// The connection.
        conn: ConnId,
        /// The message.
        msg: Message,
    },
    /// Close `conn` once what was sent before has been written.
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Arm (or re-arm) a timer.
    StartTimer(Timer, Duration),
    /// Disarm a timer.
    StopTimer(Timer),
    /// OPENs exchanged on `conn`: bound unacknowledged data to the hold time
    /// (`TCP_USER_TIMEOUT`).
    Negotiated {
        /// The connection.
        conn: ConnId,
        /// The negotiated session parameters.
        negotiated: Negotiated,
    },
    /// The session is Established on `conn`: send the Adj-RIB-Out and
    /// End-of-RIB, then keep the peer in step with the RIB.
    Established {
        /// The connection.
        conn: ConnId,
        /// The negotiated session parameters.
        negotiated: Negotiated,
    },
    /// The session went down (or an attempt failed).
    Down {
        /// Why.
        reason: String,
        /// It had been Established (routes were flowing).
        was_established: bool,
    },
    /// The peer asked for our routes of `afi` again (RFC 2918).
    RouteRefresh {
        /// Address family.
        afi: u16,
    },
    /// Something an operator should see (RFC 7606 repairs, limit warnings).
    Warn(String),
}

/// A breached maximum-prefix limit, kept in the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitHit {
    /// The family over its limit.
    pub family: Family,
    /// Prefixes held when it was noticed.
    pub count: usize,
    /// The limit.
    pub limit: u32,
    /// What was done about it.
    pub action: LimitAction,
}

/// The FSM's view of the session, for status snapshots.
#[derive(Debug, Clone, Default)]
pub struct FsmStatus {
    /// Current state.
    pub state: State,
    /// Times the session reached Established.
    pub established_transitions: u64,
    /// Parameters of the current (or last) session.
    pub negotiated: Option<Negotiated>,
    /// Messages received.
    pub messages_in: u64,
    /// UPDATEs received.
    pub updates_in: u64,
    /// UPDATEs handled as treat-as-withdraw (RFC 7606).
    pub treat_as_withdraw: u64,
    /// UPDATEs with attributes discarded (RFC 7606).
    pub attributes_discarded: u64,
    /// Prefixes held from the peer, IPv4.
    pub received_v4: usize,
    /// Prefixes held from the peer, IPv6.
    pub received_v6: usize,
    /// The last maximum-prefix breach.
    pub limit_hit: Option<LimitHit>,
    /// Held down after a maximum-prefix shutdown: incoming connections are refused.
    pub held_down: bool,
    /// Why the last session ended or failed.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    OpenSent,
    OpenConfirm,
    Established,
}

#[derive(Debug, Clone)]
struct Conn {
    id: ConnId,
    outgoing: bool,
    phase: Phase,
    neg: Option<Negotiated>,
}

/// One peer's session state machine.
#[derive(Debug)]
pub struct Fsm {
    cfg: FsmConfig,
    conns: Vec<Conn>,
    connecting: bool,
    stopped: bool,
    held_down: bool,
    backoff: Duration,
    first_open_sent: bool,
    /// Per family: 1 once the warning threshold was logged, 2 once the limit.
    warned: [u8; 2],
    rib_in: RibIn,
    status: FsmStatus,
    out: Vec<Action>,
}

fn fam_index(f: Family) -> usize {
    match f {
        Family::Ipv4 => 0,
        Family::Ipv6 => 1,
    }
}

/// RFC 4271 §10: connect-retry (and other) timers are jittered to 75–100 %
/// of their value so that speakers started together do not stay in step;
/// `random` is a uniformly random number.
pub fn jitter(d: Duration, random: u32) -> Duration {
    let f = 0.75 + f64::from(random % 10_000) / 40_000.0;
    d.mul_f64(f)
}

impl Fsm {
    /// A stopped session (Idle); [`Event::Start`] starts it.
    pub fn new(cfg: FsmConfig) -> Fsm {
        let backoff = cfg.settings.connect_retry;
        Fsm {
            cfg,
            conns: Vec::new(),
            connecting: false,
            stopped: true,
            held_down: false,
            backoff,
            first_open_sent: false,
            warned: [0; 2],
            rib_in: RibIn::default(),
            status: FsmStatus::default(),
            out: Vec::new(),
        }
    }

    /// The session's state and counters.
    pub fn status(&self) -> &FsmStatus {
        &self.status
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.status.state
    }

    /// The live settings in force.
    pub fn settings(&self) -> &Settings {
        &self.cfg.settings
    }

    /// The parameters of the Established session, if any.
    pub fn established(&self) -> Option<(ConnId, &Negotiated)> {
        self.conns
            .iter()
            .find(|c| c.phase == Phase::Established)
            .and_then(|c| c.neg.as_ref().map(|n| (c.id, n)))
    }

    /// Feeds one event; returns what to do, in order.
    pub fn handle(&mut self, ev: Event) -> Vec<Action> {
        match ev {
            Event::Start => self.on_start(),
            Event::Stop { mode, reason } => self.on_stop(mode, reason),
            Event::Connected { conn, outgoing } => self.on_connected(conn, outgoing),
            Event::ConnectFailed(e) => self.on_connect_failed(e),
            Event::Received { conn, msg } => self.on_message(conn, msg),
            Event::ConnError { conn, error } => self.on_conn_error(conn, error),
            Event::Timer(t) => self.on_timer(t),
            Event::BfdDown => {
                if self.established().is_some() {
                    self.down(
                        "BFD session went down".into(),
                        Some(cease_msg(cease::BFD_DOWN, vec![])),
                    );
                }
            }
            Event::Reconfigure(s) => self.on_reconfigure(s),
        }
        self.refresh_state();
        std::mem::take(&mut self.out)
    }

    fn refresh_state(&mut self) {
        let phase = |p| self.conns.iter().any(|c| c.phase == p);
        self.status.state = if phase(Phase::Established) {
            State::Established
        } else if phase(Phase::OpenConfirm) {
            State::OpenConfirm
        } else if phase(Phase::OpenSent) {
            State::OpenSent
        } else if self.connecting {
            State::Connect
        } else if self.stopped || self.held_down {
            State::Idle
        } else {
            // Waiting for the peer (passive) or for the connect-retry timer;
            // incoming connections are taken meanwhile.
            State::Active
        };
        self.status.held_down = self.held_down;
        self.status.received_v4 = self.rib_in.count(Family::Ipv4);
        self.status.received_v6 = self.rib_in.count(Family::Ipv6);
    }

    fn act(&mut self, a: Action) {
        self.out.push(a);
    }

    fn open_message(&self) -> Open {
        let mut l = self.cfg.local.clone();
        l.gr_restarting = l.gr_restarting && !self.first_open_sent;
        l.message()
    }

    fn dial(&mut self) {
        if !self.connecting {
            self.connecting = true;
            self.act(Action::Connect);
        }
    }

    /// Idle → trying: dial, or wait for the peer when passive.
    fn begin(&mut self) {
        if self.stopped || self.held_down || !self.conns.is_empty() {
            return;
        }
        if !self.cfg.settings.passive {
            self.dial();
        }
    }

    fn retry_later(&mut self) {
        if self.cfg.settings.passive {
            return;
        }
        let d = self.backoff;
        self.act(Action::StartTimer(Timer::ConnectRetry, d));
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF.max(self.cfg.settings.connect_retry));
    }

    fn on_start(&mut self) {
        if !self.stopped {
            return;
        }
        self.stopped = false;
        self.begin();
    }

    fn on_stop(&mut self, mode: StopMode, reason: String) {
        self.stopped = true;
        self.held_down = false;
        if self.connecting {
            self.connecting = false;
            self.act(Action::CancelConnect);
        }
        self.act(Action::StopTimer(Timer::ConnectRetry));
        self.act(Action::StopTimer(Timer::LimitRestart));
        let n = match mode {
            StopMode::Cease(sub) => Some(cease_msg(sub, vec![])),
            StopMode::Silent => None,
        };
        self.down(reason, n);
    }

    /// Ends the session: notifies and closes every connection, forgets the
    /// peer's routes, then schedules what comes next.
    fn down(&mut self, reason: String, notify: Option<Notification>) {
        let conns = std::mem::take(&mut self.conns);
        let was_established = conns.iter().any(|c| c.phase == Phase::Established);
        for c in &conns {
            if let Some(n) = &notify {
                self.act(Action::Send {
                    conn: c.id,
                    msg: Message::Notification(n.clone()),
                });
            }
            self.act(Action::Close { conn: c.id });
        }
        for t in [Timer::OpenWait, Timer::Hold, Timer::Keepalive] {
            self.act(Action::StopTimer(t));
        }
        self.rib_in.clear();
        self.warned = [0; 2];
        self.status.last_error = Some(reason.clone());
        self.act(Action::Down {
            reason,
            was_established,
        });
        if self.stopped {
            return;
        }
        if self.held_down {
            match self.cfg.settings.limits.restart {
                Some(d) => self.act(Action::StartTimer(Timer::LimitRestart, d)),
                None => self.act(Action::StopTimer(Timer::LimitRestart)),
            }
            return;
        }
        if was_established {
            self.backoff = self.cfg.settings.connect_retry;
        }
        self.retry_later();
    }

    /// Drops one of two connections (a collision's loser, a broken spare).
    fn drop_conn(&mut self, id: ConnId, notify: Option<Notification>) {
        self.conns.retain(|c| c.id != id);
        if let Some(n) = notify {
            self.act(Action::Send {
                conn: id,
                msg: Message::Notification(n),
            });
        }
        self.act(Action::Close { conn: id });
    }

    fn open_conn(&mut self, conn: ConnId, outgoing: bool) {
        self.conns.push(Conn {
            id: conn,
            outgoing,
            phase: Phase::OpenSent,
            neg: None,
        });
        let open = self.open_message();
        self.first_open_sent = true;
        self.act(Action::Send {
            conn,
            msg: Message::Open(open),
        });
        self.act(Action::StartTimer(Timer::OpenWait, OPEN_WAIT));
    }

    fn on_connected(&mut self, conn: ConnId, outgoing: bool) {
        if outgoing {
            self.connecting = false;
        }
        if self.stopped || self.held_down {
            self.act(Action::Close { conn });
            return;
        }
        self.act(Action::StopTimer(Timer::ConnectRetry));
        if !outgoing && self.connecting && self.conns.is_empty() {
            // The peer called first: take its connection.
            self.connecting = false;
            self.act(Action::CancelConnect);
        }
        match self.conns.len() {
            0 => self.open_conn(conn, outgoing),
            1 => {
                let e = self.conns[0].clone();
                match e.phase {
                    Phase::Established => {
                        let gr = e.neg.as_ref().is_some_and(|n| n.peer_graceful_restart);
                        if !outgoing && gr {
                            // RFC 4724 §4.2: a new connection from a
                            // graceful-restart peer means the old one is dead.
                            self.down(
                                "peer restarted (new connection while Established)".into(),
                                None,
                            );
                            self.act(Action::StopTimer(Timer::ConnectRetry));
                            self.open_conn(conn, outgoing);
                        } else {
                            self.act(Action::Close { conn });
                        }
                    }
                    _ if e.outgoing == outgoing => {
                        // The peer gave up on its first try and dialled again.
                        self.drop_conn(e.id, None);
                        self.open_conn(conn, outgoing);
                    }
                    _ => match &e.neg {
                        // We know the peer's BGP identifier: settle the
                        // collision now (RFC 4271 §6.8).
                        Some(n) => {
                            let keep_ours =
                                keep_local_initiated(self.cfg.local.router_id, n.peer_id);
                            if keep_ours == e.outgoing {
                                self.act(Action::Close { conn });
                            } else {
                                self.drop_conn(e.id, Some(cease_msg(cease::COLLISION, vec![])));
                                self.open_conn(conn, outgoing);
                            }
                        }
                        // Run both OPEN exchanges; the first OPEN decides.
                        None => self.open_conn(conn, outgoing),
                    },
                }
            }
            _ => self.act(Action::Close { conn }),
        }
    }

    fn on_connect_failed(&mut self, e: String) {
        self.connecting = false;
        if !self.conns.is_empty() || self.stopped || self.held_down {
            return;
        }
        self.status.last_error = Some(e.clone());
        self.act(Action::Down {
            reason: e,
            was_established: false,
        });
        self.retry_later();
    }

    fn idx(&self, conn: ConnId) -> Option<usize> {
        self.conns.iter().position(|c| c.id == conn)
    }

    /// Fails `conn`: the session if it is the only connection, else just it.
    fn fail_conn(&mut self, conn: ConnId, reason: String, notify: Option<Notification>) {
        if self.conns.len() > 1 {
            self.drop_conn(conn, notify);
        } else {
            self.down(reason, notify);
        }
    }

    fn on_conn_error(&mut self, conn: ConnId, error: ConnError) {
        if self.idx(conn).is_none() {
            return;
        }
        match error {
            ConnError::Decode(e) => {
                let n = e.notification();
                self.fail_conn(conn, format!("bad message from peer: {e}"), Some(n));
            }
            ConnError::Closed(s) => self.fail_conn(conn, format!("connection closed: {s}"), None),
        }
    }

    fn on_message(&mut self, conn: ConnId, msg: Message) {
        let Some(i) = self.idx(conn) else {
            return;
        };
        self.status.messages_in += 1;
        let phase = self.conns[i].phase;
        match (phase, msg) {
            (_, Message::Notification(n)) => {
                let why = format!(
                    "NOTIFICATION from peer: {}/{} {}",
                    n.code,
                    n.subcode,
                    describe(&n)
                );
                self.fail_conn(conn, why, None);
            }
            (Phase::OpenSent, Message::Open(o)) => self.on_open(conn, o),
            (Phase::OpenConfirm, Message::Keepalive) => self.on_established(conn),
            (Phase::Established, Message::Keepalive) => self.restart_hold(),
            (Phase::Established, Message::Update(u)) => {
                self.restart_hold();
                self.on_update(u);
            }
            (Phase::Established, Message::RouteRefresh(r)) => {
                self.restart_hold();
                self.act(Action::RouteRefresh { afi: r.afi });
            }
            (p, other) => {
                // RFC 6608 subcodes: unexpected message in OpenSent (1),
                // OpenConfirm (2), Established (3).
                let sub = match p {
                    Phase::OpenSent => 1,
                    Phase::OpenConfirm => 2,
                    Phase::Established => 3,
                };
                let n = Notification {
                    code: err::FSM,
                    subcode: sub,
                    data: vec![],
                };
                let why = format!("unexpected {} in {:?}", kind(&other), p);
                self.fail_conn(conn, why, Some(n));
            }
        }
    }

    fn on_open(&mut self, conn: ConnId, o: Open) {
        let n = match negotiate(&self.cfg.local, self.cfg.remote_as, &o) {
            Ok(n) => n,
            Err(e) => {
                let note = e.notification();
                self.fail_conn(conn, format!("peer OPEN rejected: {e}"), Some(note));
                return;
            }
        };
        if let Some(i) = self.idx(conn) {
            self.conns[i].neg = Some(n.clone());
        }
        if self.conns.len() == 2 {
            // The first OPEN on either connection settles the collision: the
            // connection opened by the speaker with the higher BGP identifier
            // survives (RFC 4271 §6.8).
            let keep_ours = keep_local_initiated(self.cfg.local.router_id, n.peer_id);
            let Some(loser) = self
                .conns
                .iter()
                .find(|c| c.outgoing != keep_ours)
                .map(|c| c.id)
            else {
                return;
            };
            self.drop_conn(loser, Some(cease_msg(cease::COLLISION, vec![])));
            if loser == conn {
                // The survivor has not delivered its OPEN yet: wait for it.
                return;
            }
        }
        self.confirm(conn, n);
    }

    fn confirm(&mut self, conn: ConnId, n: Negotiated) {
        if let Some(i) = self.idx(conn) {
            self.conns[i].phase = Phase::OpenConfirm;
        }
        self.act(Action::Send {
            conn,
            msg: Message::Keepalive,
        });
        self.act(Action::StopTimer(Timer::OpenWait));
        let wait = if n.hold_time.is_zero() {
            OPEN_WAIT
        } else {
            n.hold_time
        };
        self.act(Action::StartTimer(Timer::Hold, wait));
        self.status.negotiated = Some(n.clone());
        self.act(Action::Negotiated {
            conn,
            negotiated: n,
        });
    }

    fn on_established(&mut self, conn: ConnId) {
        let Some(i) = self.idx(conn) else {
            return;
        };
        self.conns[i].phase = Phase::Established;
        let Some(n) = self.conns[i].neg.clone() else {
            return;
        };
        self.status.established_transitions += 1;
        self.rib_in.clear();
        self.warned = [0; 2];
        self.backoff = self.cfg.settings.connect_retry;
        if n.hold_time.is_zero() {
            self.act(Action::StopTimer(Timer::Hold));
        } else {
            self.act(Action::StartTimer(Timer::Hold, n.hold_time));
        }
        if !n.keepalive.is_zero() {
            self.act(Action::StartTimer(Timer::Keepalive, n.keepalive));
        }
        self.act(Action::Established {
            conn,
            negotiated: n,
        });
    }

    fn restart_hold(&mut self) {
        if let Some((_, n)) = self.established() {
            if !n.hold_time.is_zero() {
                let h = n.hold_time;
                self.act(Action::StartTimer(Timer::Hold, h));
            }
        }
    }

    fn on_update(&mut self, u: Update) {
        let Some((_, n)) = self.established() else {
            return;
        };
        let ibgp = n.peer_as == self.cfg.local.local_as;
        let ctx = Context {
            four_octet: n.four_octet,
            ibgp,
            peer_as: if ibgp { None } else { Some(n.peer_as) },
        };
        self.status.updates_in += 1;
        let parsed = match attributes::parse(&u.attributes, !u.nlri.is_empty(), ctx) {
            Ok(p) => p,
            Err(e) => {
                let note = e.notification();
                self.down(format!("bad UPDATE from peer: {e}"), Some(note));
                return;
            }
        };
        for p in &u.withdrawn {
            self.rib_in.remove(p);
        }
        if let Some(m) = &parsed.attrs.mp_unreach {
            for p in &m.withdrawn {
                self.rib_in.remove(p);
            }
        }
        let reach = parsed
            .attrs
            .mp_reach
            .as_ref()
            .map(|m| m.nlri.as_slice())
            .unwrap_or(&[]);
        if parsed.treat_as_withdraw {
            for p in u.nlri.iter().chain(reach) {
                self.rib_in.remove(p);
            }
            self.status.treat_as_withdraw += 1;
            self.act(Action::Warn(format!(
                "malformed UPDATE: treat-as-withdraw (RFC 7606): {}",
                parsed.problems.join("; ")
            )));
        } else {
            if !parsed.problems.is_empty() {
                self.status.attributes_discarded += 1;
                self.act(Action::Warn(format!(
                    "UPDATE attributes discarded (RFC 7606): {}",
                    parsed.problems.join("; ")
                )));
            }
            for p in u.nlri.iter().chain(reach) {
                self.rib_in.insert(*p);
            }
        }
        self.check_limits();
    }

    /// Enforces the maximum-prefix limits on what the peer holds now.
    fn check_limits(&mut self) {
        if self.established().is_none() {
            return;
        }
        let limits = self.cfg.settings.limits;
        for f in Family::ALL {
            match limits.check(f, self.rib_in.count(f)) {
                LimitCheck::Fine => {}
                LimitCheck::Warning { count, limit } => {
                    if self.warned[fam_index(f)] < 1 {
                        self.warned[fam_index(f)] = 1;
                        self.act(Action::Warn(format!(
                            "peer holds {count} {f} prefixes, {}% of its limit of {limit}",
                            limits.warning_pct
                        )));
                    }
                }
                LimitCheck::Exceeded { count, limit } => {
                    self.status.limit_hit = Some(LimitHit {
                        family: f,
                        count,
                        limit,
                        action: limits.action,
                    });
                    match limits.action {
                        LimitAction::Warn => {
                            if self.warned[fam_index(f)] < 2 {
                                self.warned[fam_index(f)] = 2;
                                self.act(Action::Warn(format!(
                                    "peer holds {count} {f} prefixes, over its limit of {limit} (warning only)"
                                )));
                            }
                        }
                        LimitAction::Shutdown => {
                            self.held_down = true;
                            let restart = match limits.restart {
                                Some(d) => format!("retrying in {} s", d.as_secs()),
                                None => "down until the limit is changed".into(),
                            };
                            self.down(
                                format!(
                                    "maximum prefixes reached: {count} {f} prefixes, limit {limit}; {restart}"
                                ),
                                Some(cease_msg(cease::MAX_PREFIXES, max_prefix_data(f, limit))),
                            );
                            return;
                        }
                    }
                }
            }
        }
    }

    fn on_timer(&mut self, t: Timer) {
        match t {
            Timer::ConnectRetry => {
                if !self.stopped && !self.held_down && self.conns.is_empty() {
                    self.begin();
                }
            }
            Timer::OpenWait => {
                if !self.conns.is_empty() && self.established().is_none() {
                    self.down(
                        "no OPEN from peer".into(),
                        Some(Notification {
                            code: err::HOLD_TIMER,
                            subcode: 0,
                            data: vec![],
                        }),
                    );
                }
            }
            Timer::Hold => {
                if self.conns.is_empty() {
                    return;
                }
                let why = if self.established().is_some() {
                    "hold timer expired"
                } else {
                    "hold timer expired in OpenConfirm"
                };
                self.down(
                    why.into(),
                    Some(Notification {
                        code: err::HOLD_TIMER,
                        subcode: 0,
                        data: vec![],
                    }),
                );
            }
            Timer::Keepalive => {
                if let Some((conn, n)) = self.established() {
                    let ka = n.keepalive;
                    self.act(Action::Send {
                        conn,
                        msg: Message::Keepalive,
                    });
                    if !ka.is_zero() {
                        self.act(Action::StartTimer(Timer::Keepalive, ka));
                    }
                }
            }
            Timer::LimitRestart => {
                if self.held_down {
                    self.held_down = false;
                    self.backoff = self.cfg.settings.connect_retry;
                    self.begin();
                }
            }
        }
    }

    fn on_reconfigure(&mut self, s: Settings) {
        let old = std::mem::replace(&mut self.cfg.settings, s);
        let new = self.cfg.settings.clone();
        if new.connect_retry != old.connect_retry {
            self.backoff = new.connect_retry;
        }
        if new.limits != old.limits {
            self.warned = [0; 2];
            if self.held_down {
                // The operator changed the limit: try again at once.
                self.held_down = false;
                self.act(Action::StopTimer(Timer::LimitRestart));
                self.begin();
            } else {
                self.check_limits();
            }
        }
        if new.passive != old.passive && !self.stopped && !self.held_down && self.conns.is_empty() {
            if new.passive {
                if self.connecting {
                    self.connecting = false;
                    self.act(Action::CancelConnect);
                }
                self.act(Action::StopTimer(Timer::ConnectRetry));
            } else {
                self.dial();
            }
        }
    }
}

fn cease_msg(subcode: u8, data: Vec<u8>) -> Notification {
    Notification {
        code: err::CEASE,
        subcode,
        data,
    }
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Open(_) => "OPEN",
        Message::Update(_) => "UPDATE",
        Message::Notification(_) => "NOTIFICATION",
        Message::Keepalive => "KEEPALIVE",
        Message::RouteRefresh(_) => "ROUTE-REFRESH",
    }
}

/// A NOTIFICATION's meaning in words, for logs and the status.
pub fn describe(n: &Notification) -> &'static str {
    match (n.code, n.subcode) {
        (1, _) => "message header error",
        (2, 2) => "bad peer AS",
        (2, 6) => "unacceptable hold time",
        (2, _) => "OPEN message error",
        (3, _) => "UPDATE message error",
        (4, _) => "hold timer expired",
        (5, _) => "FSM error",
        (6, 1) => "maximum number of prefixes reached",
        (6, 2) => "administrative shutdown",
        (6, 3) => "peer de-configured",
        (6, 4) => "administrative reset",
        (6, 5) => "connection rejected",
        (6, 6) => "other configuration change",
        (6, 7) => "connection collision resolution",
        (6, 8) => "out of resources",
        (6, 10) => "BFD down",
        (6, _) => "cease",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalOpen {
        LocalOpen {
            local_as: 4_200_000_001,
            router_id: Ipv4Addr::new(198, 18, 0, 11),
            hold_time: 90,
            families: Families { v4: true, v6: true },
            gr_restart_time: Some(120),
            gr_restarting: true,
        }
    }

    #[test]
    fn negotiates_hold_time_and_families() {
        let mut peer = local();
        peer.local_as = 64512;
        peer.router_id = Ipv4Addr::new(198, 18, 0, 1);
        peer.hold_time = 3;
        peer.families.v6 = false;
        let n = negotiate(&local(), 64512, &peer.message()).unwrap();
        assert_eq!(n.hold_time, Duration::from_secs(3));
        assert_eq!(n.keepalive, Duration::from_secs(1));
        assert!(n.families.v4 && !n.families.v6);
        assert!(n.four_octet);
        assert!(negotiate(&local(), 64513, &peer.message()).is_err());
        peer.hold_time = 2;
        assert_eq!(
            negotiate(&local(), 64512, &peer.message())
                .unwrap_err()
                .subcode,
            6
        );
    }

    #[test]
    fn four_octet_as_travels_as_as_trans() {
        let o = local().message();
        assert_eq!(o.my_as, AS_TRANS);
        let mut me = local();
        me.local_as = 64513;
        me.router_id = Ipv4Addr::new(198, 18, 0, 12);
        let n = negotiate(&me, 4_200_000_001, &o).unwrap();
        assert_eq!(n.peer_as, 4_200_000_001);
    }

    // ---- the state machine, driven without sockets ----

    use crate::attributes::{encode_common, encode_mp_reach, EncodeContext, RouteAttrs};
    use crate::codec::{RouteRefresh, Update};
    use crate::prefix::Prefix;
    use crate::rib_in::{Family, LimitAction, PrefixLimits};
    use std::net::IpAddr;

    const PEER_AS: u32 = 64512;

    fn cfg(passive: bool, limits: PrefixLimits) -> FsmConfig {
        FsmConfig {
            local: local(),
            remote_as: PEER_AS,
            settings: Settings {
                passive,
                connect_retry: Duration::from_secs(1),
                limits,
            },
        }
    }

    /// The peer's OPEN, with a BGP identifier above or below ours.
    fn peer_open(higher_id: bool) -> Message {
        let mut p = local();
        p.local_as = PEER_AS;
        p.router_id = if higher_id {
            Ipv4Addr::new(198, 18, 0, 200)
        } else {
            Ipv4Addr::new(198, 18, 0, 1)
        };
        p.hold_time = 9;
        Message::Open(p.message())
    }

    fn c(n: u64) -> ConnId {
        ConnId(n)
    }

    fn sends(acts: &[Action], conn: ConnId) -> Vec<&Message> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Send { conn: c, msg } if *c == conn => Some(msg),
                _ => None,
            })
            .collect()
    }

    fn notification(acts: &[Action], conn: ConnId) -> Option<Notification> {
        sends(acts, conn).into_iter().find_map(|m| match m {
            Message::Notification(n) => Some(n.clone()),
            _ => None,
        })
    }

    fn closes(acts: &[Action], conn: ConnId) -> bool {
        acts.contains(&Action::Close { conn })
    }

    fn timer(acts: &[Action], t: Timer) -> Option<Duration> {
        acts.iter().rev().find_map(|a| match a {
            Action::StartTimer(x, d) if *x == t => Some(*d),
            _ => None,
        })
    }

    /// Drives a session to Established on connection 1 (ours).
    fn established(limits: PrefixLimits) -> Fsm {
        let mut f = Fsm::new(cfg(false, limits));
        assert_eq!(f.handle(Event::Start), vec![Action::Connect]);
        assert_eq!(f.state(), State::Connect);
        let a = f.handle(Event::Connected {
            conn: c(1),
            outgoing: true,
        });
        assert!(matches!(sends(&a, c(1))[..], [Message::Open(_)]), "{a:?}");
        assert_eq!(timer(&a, Timer::OpenWait), Some(OPEN_WAIT));
        assert_eq!(f.state(), State::OpenSent);
        let a = f.handle(Event::Received {
            conn: c(1),
            msg: peer_open(false),
        });
        assert_eq!(sends(&a, c(1)), vec![&Message::Keepalive]);
        assert!(a.iter().any(|x| matches!(x, Action::Negotiated { .. })));
        assert_eq!(timer(&a, Timer::Hold), Some(Duration::from_secs(9)));
        assert_eq!(f.state(), State::OpenConfirm);
        let a = f.handle(Event::Received {
            conn: c(1),
            msg: Message::Keepalive,
        });
        assert!(a
            .iter()
            .any(|x| matches!(x, Action::Established { conn, .. } if *conn == c(1))));
        assert_eq!(timer(&a, Timer::Keepalive), Some(Duration::from_secs(3)));
        assert_eq!(f.state(), State::Established);
        assert_eq!(f.status().established_transitions, 1);
        f
    }

    fn update(v4: &[&str], v6: &[&str], withdraw: &[&str]) -> Message {
        let ctx = EncodeContext {
            local_as: PEER_AS,
            ibgp: false,
            four_octet: true,
        };
        let mut attrs = Vec::new();
        let nh4 = (!v4.is_empty()).then(|| Ipv4Addr::new(198, 18, 0, 1));
        encode_common(&RouteAttrs::default(), ctx, nh4, &mut attrs);
        if !v6.is_empty() {
            let nlri: Vec<Prefix> = v6.iter().map(|p| p.parse().unwrap()).collect();
            let nh: IpAddr = "2001:db8::1".parse().unwrap();
            encode_mp_reach(AFI_IPV6, &[nh], &nlri, &mut attrs);
        }
        Message::Update(Update {
            withdrawn: withdraw.iter().map(|p| p.parse().unwrap()).collect(),
            attributes: if v4.is_empty() && v6.is_empty() {
                vec![]
            } else {
                attrs
            },
            nlri: v4.iter().map(|p| p.parse().unwrap()).collect(),
        })
    }

    fn v4s(n: u32) -> Vec<String> {
        (0..n).map(|i| format!("198.19.{i}.0/24")).collect()
    }

    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    fn limits(v4: u32, action: LimitAction) -> PrefixLimits {
        PrefixLimits {
            ipv4: Some(v4),
            ipv6: Some(3),
            action,
            restart: Some(Duration::from_secs(60)),
            warning_pct: 75,
        }
    }

    #[test]
    fn active_session_comes_up_and_answers_route_refresh() {
        let mut f = established(PrefixLimits::default());
        let a = f.handle(Event::Received {
            conn: c(1),
            msg: Message::RouteRefresh(RouteRefresh {
                afi: AFI_IPV4,
                safi: SAFI_UNICAST,
            }),
        });
        assert!(a.contains(&Action::RouteRefresh { afi: AFI_IPV4 }));
        assert_eq!(timer(&a, Timer::Hold), Some(Duration::from_secs(9)));
        let a = f.handle(Event::Timer(Timer::Keepalive));
        assert_eq!(sends(&a, c(1)), vec![&Message::Keepalive]);
        assert_eq!(timer(&a, Timer::Keepalive), Some(Duration::from_secs(3)));
    }

    #[test]
    fn the_restart_bit_goes_on_the_first_open_only() {
        let mut f = established(PrefixLimits::default());
        let r_bit = |m: &Message| match m {
            Message::Open(o) => o.capabilities.iter().any(|c| {
                matches!(
                    c,
                    Capability::GracefulRestart {
                        restarting: true,
                        ..
                    }
                )
            }),
            _ => panic!("{m:?}"),
        };
        f.handle(Event::Timer(Timer::Hold));
        f.handle(Event::Timer(Timer::ConnectRetry));
        let a = f.handle(Event::Connected {
            conn: c(2),
            outgoing: true,
        });
        assert!(!r_bit(sends(&a, c(2))[0]));
        let mut g = Fsm::new(cfg(false, PrefixLimits::default()));
        g.handle(Event::Start);
        let a = g.handle(Event::Connected {
            conn: c(1),
            outgoing: true,
        });
        assert!(r_bit(sends(&a, c(1))[0]));
    }

    #[test]
    fn passive_waits_and_takes_the_peers_connection() {
        let mut f = Fsm::new(cfg(true, PrefixLimits::default()));
        assert!(f.handle(Event::Start).is_empty());
        assert_eq!(f.state(), State::Active);
        let a = f.handle(Event::Connected {
            conn: c(7),
            outgoing: false,
        });
        assert!(matches!(sends(&a, c(7))[..], [Message::Open(_)]));
        assert_eq!(f.state(), State::OpenSent);
        // The peer closes: a passive session just waits again, no dialling.
        let a = f.handle(Event::ConnError {
            conn: c(7),
            error: ConnError::Closed("eof".into()),
        });
        assert!(
            !a.contains(&Action::Connect) && timer(&a, Timer::ConnectRetry).is_none(),
            "{a:?}"
        );
        assert_eq!(f.state(), State::Active);
        // Turned active at run time: it dials at once.
        let a = f.handle(Event::Reconfigure(Settings {
            passive: false,
            ..f.settings().clone()
        }));
        assert_eq!(a, vec![Action::Connect]);
    }

    #[test]
    fn failed_dials_back_off_to_thirty_seconds() {
        let mut f = Fsm::new(cfg(false, PrefixLimits::default()));
        f.handle(Event::Start);
        let mut waits = Vec::new();
        for _ in 0..7 {
            let a = f.handle(Event::ConnectFailed("refused".into()));
            assert_eq!(f.state(), State::Active);
            waits.push(timer(&a, Timer::ConnectRetry).unwrap().as_secs());
            assert_eq!(
                f.handle(Event::Timer(Timer::ConnectRetry)),
                vec![Action::Connect]
            );
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        // An established session resets the backoff.
        let mut f = established(PrefixLimits::default());
        let a = f.handle(Event::Timer(Timer::Hold));
        assert_eq!(
            notification(&a, c(1)).map(|n| (n.code, n.subcode)),
            Some((err::HOLD_TIMER, 0))
        );
        assert!(closes(&a, c(1)));
        assert_eq!(timer(&a, Timer::ConnectRetry), Some(Duration::from_secs(1)));
        assert_eq!(f.state(), State::Active);
        assert_eq!(f.status().last_error.as_deref(), Some("hold timer expired"));
    }

    #[test]
    fn collision_keeps_the_connection_of_the_higher_identifier() {
        for peer_higher in [true, false] {
            let mut f = Fsm::new(cfg(false, PrefixLimits::default()));
            f.handle(Event::Start);
            f.handle(Event::Connected {
                conn: c(1),
                outgoing: true,
            });
            let a = f.handle(Event::Connected {
                conn: c(2),
                outgoing: false,
            });
            assert!(
                matches!(sends(&a, c(2))[..], [Message::Open(_)]),
                "both run their OPEN exchange"
            );
            // The first OPEN (on the peer's connection) decides.
            let a = f.handle(Event::Received {
                conn: c(2),
                msg: peer_open(peer_higher),
            });
            let (loser, winner) = if peer_higher {
                (c(1), c(2))
            } else {
                (c(2), c(1))
            };
            assert_eq!(
                notification(&a, loser).map(|n| (n.code, n.subcode)),
                Some((err::CEASE, cease::COLLISION))
            );
            assert!(closes(&a, loser));
            if peer_higher {
                assert_eq!(sends(&a, winner), vec![&Message::Keepalive]);
                assert_eq!(f.state(), State::OpenConfirm);
            } else {
                // Ours survives but has not had the peer's OPEN yet.
                assert!(sends(&a, winner).is_empty());
                assert_eq!(f.state(), State::OpenSent);
                let a = f.handle(Event::Received {
                    conn: winner,
                    msg: peer_open(false),
                });
                assert_eq!(sends(&a, winner), vec![&Message::Keepalive]);
            }
            f.handle(Event::Received {
                conn: winner,
                msg: Message::Keepalive,
            });
            assert_eq!(f.state(), State::Established);
            // Messages on the closed connection are ignored.
            assert!(f
                .handle(Event::Received {
                    conn: loser,
                    msg: Message::Keepalive
                })
                .is_empty());
            assert_eq!(f.state(), State::Established);
        }
    }

    #[test]
    fn collision_in_open_confirm_is_settled_when_the_peer_dials() {
        let mut f = Fsm::new(cfg(false, PrefixLimits::default()));
        f.handle(Event::Start);
        f.handle(Event::Connected {
            conn: c(1),
            outgoing: true,
        });
        f.handle(Event::Received {
            conn: c(1),
            msg: peer_open(true),
        });
        assert_eq!(f.state(), State::OpenConfirm);
        // The peer has the higher identifier: its connection wins.
        let a = f.handle(Event::Connected {
            conn: c(2),
            outgoing: false,
        });
        assert_eq!(
            notification(&a, c(1)).map(|n| n.subcode),
            Some(cease::COLLISION)
        );
        assert!(matches!(sends(&a, c(2))[..], [Message::Open(_)]));
        // A lower identifier: ours stays, the newcomer is closed unheard.
        let mut f = Fsm::new(cfg(false, PrefixLimits::default()));
        f.handle(Event::Start);
        f.handle(Event::Connected {
            conn: c(1),
            outgoing: true,
        });
        f.handle(Event::Received {
            conn: c(1),
            msg: peer_open(false),
        });
        let a = f.handle(Event::Connected {
            conn: c(2),
            outgoing: false,
        });
        assert_eq!(
            a,
            vec![
                Action::StopTimer(Timer::ConnectRetry),
                Action::Close { conn: c(2) }
            ]
        );
        assert_eq!(f.state(), State::OpenConfirm);
    }

    #[test]
    fn bad_open_and_unexpected_messages_get_notifications() {
        let mut f = Fsm::new(cfg(false, PrefixLimits::default()));
        f.handle(Event::Start);
        f.handle(Event::Connected {
            conn: c(1),
            outgoing: true,
        });
        let mut wrong = local();
        wrong.local_as = 64999;
        wrong.router_id = Ipv4Addr::new(198, 18, 0, 9);
        let a = f.handle(Event::Received {
            conn: c(1),
            msg: Message::Open(wrong.message()),
        });
        assert_eq!(
            notification(&a, c(1)).map(|n| (n.code, n.subcode)),
            Some((err::OPEN, 2))
        );
        assert!(closes(&a, c(1)));
        assert_eq!(f.state(), State::Active);
        let mut f = established(PrefixLimits::default());
        let a = f.handle(Event::Received {
            conn: c(1),
            msg: peer_open(false),
        });
        assert_eq!(
            notification(&a, c(1)).map(|n| (n.code, n.subcode)),
            Some((err::FSM, 3))
        );
        let mut f = established(PrefixLimits::default());
        let a = f.handle(Event::Received {
            conn: c(1),
            msg: Message::Notification(Notification {
                code: 6,
                subcode: 2,
                data: vec![],
            }),
        });
        assert!(notification(&a, c(1)).is_none() && closes(&a, c(1)));
        assert!(a.contains(&Action::Down {
            reason: "NOTIFICATION from peer: 6/2 administrative shutdown".into(),
            was_established: true
        }));
    }

    #[test]
    fn stop_ceases_or_closes_silently_and_bfd_down_ceases() {
        let mut f = established(PrefixLimits::default());
        let a = f.handle(Event::Stop {
            mode: StopMode::Cease(cease::ADMIN_SHUTDOWN),
            reason: "x".into(),
        });
        assert_eq!(
            notification(&a, c(1)).map(|n| (n.code, n.subcode)),
            Some((err::CEASE, 2))
        );
        assert_eq!(f.state(), State::Idle);
        assert!(timer(&a, Timer::ConnectRetry).is_none());
        // Stopped: the peer's calls are not taken.
        assert_eq!(
            f.handle(Event::Connected {
                conn: c(5),
                outgoing: false
            }),
            vec![Action::Close { conn: c(5) }]
        );
        let mut f = established(PrefixLimits::default());
        let a = f.handle(Event::Stop {
            mode: StopMode::Silent,
            reason: "restart".into(),
        });
        assert!(notification(&a, c(1)).is_none() && closes(&a, c(1)));
        let mut f = established(PrefixLimits::default());
        let a = f.handle(Event::BfdDown);
        assert_eq!(
            notification(&a, c(1)).map(|n| n.subcode),
            Some(cease::BFD_DOWN)
        );
        assert_eq!(
            f.status().last_error.as_deref(),
            Some("BFD session went down")
        );
    }

    #[test]
    fn a_graceful_restart_peer_reconnecting_replaces_the_session() {
        let mut f = established(PrefixLimits::default());
        let a = f.handle(Event::Connected {
            conn: c(2),
            outgoing: false,
        });
        assert!(closes(&a, c(1)) && notification(&a, c(1)).is_none());
        assert!(a.contains(&Action::Down {
            reason: "peer restarted (new connection while Established)".into(),
            was_established: true
        }));
        assert!(matches!(sends(&a, c(2))[..], [Message::Open(_)]));
        assert_eq!(f.state(), State::OpenSent);
    }

    #[test]
    fn prefixes_are_counted_per_family() {
        let mut f = established(limits(5, LimitAction::Shutdown));
        f.handle(Event::Received {
            conn: c(1),
            msg: update(&refs(&v4s(3)), &["2001:db8:1::/48"], &[]),
        });
        // The same prefixes again, one withdrawn, one unknown withdrawn.
        f.handle(Event::Received {
            conn: c(1),
            msg: update(&refs(&v4s(3)), &[], &["198.19.0.0/24", "198.19.99.0/24"]),
        });
        assert_eq!((f.status().received_v4, f.status().received_v6), (3, 1));
        f.handle(Event::Received {
            conn: c(1),
            msg: update(&[], &[], &["198.19.1.0/24"]),
        });
        assert_eq!((f.status().received_v4, f.status().received_v6), (2, 1));
        assert_eq!(f.state(), State::Established);
    }

    /// RFC 4486: one prefix over the limit sends Cease subcode 1 with the
    /// AFI/SAFI and the limit; the session then stays down (refusing the
    /// peer's calls) until the restart time, then comes back by itself.
    #[test]
    fn over_the_limit_ceases_with_subcode_1_and_holds_down() {
        let mut f = established(limits(5, LimitAction::Shutdown));
        let a = f.handle(Event::Received {
            conn: c(1),
            msg: update(&refs(&v4s(4)), &[], &[]),
        });
        assert!(a.iter().any(|x| matches!(x, Action::Warn(w) if w.contains("4 ipv4 prefixes, 75% of its limit of 5"))), "{a:?}");
        let a = f.handle(Event::Received {
            conn: c(1),
            msg: update(&refs(&v4s(5)), &[], &[]),
        });
        assert!(notification(&a, c(1)).is_none(), "5 of 5 is allowed");
        let a = f.handle(Event::Received {
            conn: c(1),
            msg: update(&refs(&v4s(6)), &[], &[]),
        });
        let n = notification(&a, c(1)).expect("Cease");
        assert_eq!((n.code, n.subcode), (err::CEASE, cease::MAX_PREFIXES));
        assert_eq!(n.data, [0, 1, 1, 0, 0, 0, 5], "AFI 1, SAFI 1, limit 5");
        assert!(closes(&a, c(1)));
        assert_eq!(
            timer(&a, Timer::LimitRestart),
            Some(Duration::from_secs(60))
        );
        assert!(timer(&a, Timer::ConnectRetry).is_none());
        assert_eq!(f.state(), State::Idle);
        let st = f.status();
        assert!(st.held_down);
        assert_eq!(st.received_v4, 0, "the peer's routes are dropped");
        assert_eq!(
            st.limit_hit,
            Some(LimitHit {
                family: Family::Ipv4,
                count: 6,
                limit: 5,
                action: LimitAction::Shutdown
            })
        );
        assert!(st
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("maximum prefixes reached: 6 ipv4 prefixes, limit 5"));
        // Held down: neither the peer's call nor our retry timer starts a session.
        assert_eq!(
            f.handle(Event::Connected {
                conn: c(2),
                outgoing: false
            }),
            vec![Action::Close { conn: c(2) }]
        );
        assert!(f.handle(Event::Timer(Timer::ConnectRetry)).is_empty());
        // The restart timer ends the hold-down.
        assert_eq!(
            f.handle(Event::Timer(Timer::LimitRestart)),
            vec![Action::Connect]
        );
        assert!(!f.status().held_down);
    }

    #[test]
    fn ipv6_has_a_limit_of_its_own() {
        let mut f = established(limits(100, LimitAction::Shutdown));
        let v6 = [
            "2001:db8:1::/48",
            "2001:db8:2::/48",
            "2001:db8:3::/48",
            "2001:db8:4::/48",
        ];
        let a = f.handle(Event::Received {
            conn: c(1),
            msg: update(&refs(&v4s(50)), &v6, &[]),
        });
        let n = notification(&a, c(1)).expect("Cease");
        assert_eq!(n.data, [0, 2, 1, 0, 0, 0, 3], "AFI 2, SAFI 1, limit 3");
    }

    #[test]
    fn warning_only_keeps_the_session_and_the_prefixes() {
        let mut f = established(limits(5, LimitAction::Warn));
        let a = f.handle(Event::Received {
            conn: c(1),
            msg: update(&refs(&v4s(8)), &[], &[]),
        });
        assert!(notification(&a, c(1)).is_none());
        assert!(
            a.iter().any(
                |x| matches!(x, Action::Warn(w) if w.contains("over its limit of 5 (warning only)"))
            ),
            "{a:?}"
        );
        assert_eq!(f.state(), State::Established);
        assert_eq!(f.status().received_v4, 8);
        // Logged once, not on every UPDATE.
        let a = f.handle(Event::Received {
            conn: c(1),
            msg: update(&["198.19.200.0/24"], &[], &[]),
        });
        assert!(!a.iter().any(|x| matches!(x, Action::Warn(_))), "{a:?}");
    }

    #[test]
    fn limits_change_at_run_time() {
        // Lowered below what the peer holds: enforced at once.
        let mut f = established(limits(100, LimitAction::Shutdown));
        f.handle(Event::Received {
            conn: c(1),
            msg: update(&refs(&v4s(10)), &[], &[]),
        });
        let s = Settings {
            limits: limits(5, LimitAction::Shutdown),
            ..f.settings().clone()
        };
        let a = f.handle(Event::Reconfigure(s));
        assert_eq!(
            notification(&a, c(1)).map(|n| n.data),
            Some(vec![0, 1, 1, 0, 0, 0, 5])
        );
        assert!(f.status().held_down);
        // Raised while held down: the session comes back at once.
        let s = Settings {
            limits: limits(50, LimitAction::Shutdown),
            ..f.settings().clone()
        };
        let a = f.handle(Event::Reconfigure(s));
        assert!(
            a.contains(&Action::StopTimer(Timer::LimitRestart)) && a.contains(&Action::Connect),
            "{a:?}"
        );
        assert!(!f.status().held_down);
        // No restart time: down until the limits change.
        let mut l = limits(5, LimitAction::Shutdown);
        l.restart = None;
        let mut f = established(l);
        let a = f.handle(Event::Received {
            conn: c(1),
            msg: update(&refs(&v4s(6)), &[], &[]),
        });
        assert!(timer(&a, Timer::LimitRestart).is_none());
        assert!(f.status().held_down);
    }
}
