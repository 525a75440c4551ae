//! The per-session state machine and timers (RFC 5880 §6.2, §6.8).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

use crate::packet::{Diag, Packet};
use crate::{BfdConfig, BfdError};

/// Session state (RFC 5880 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Administratively down.
    AdminDown,
    /// Down.
    Down,
    /// Initializing (peer seen, not yet confirmed).
    Init,
    /// Up: both sides hear each other.
    Up,
}

impl SessionState {
    pub(crate) fn from_bits(b: u8) -> SessionState {
        match b & 3 {
            0 => SessionState::AdminDown,
            1 => SessionState::Down,
            2 => SessionState::Init,
            _ => SessionState::Up,
        }
    }
    pub(crate) fn bits(self) -> u8 {
        match self {
            SessionState::AdminDown => 0,
            SessionState::Down => 1,
            SessionState::Init => 2,
            SessionState::Up => 3,
        }
    }
}

/// Slow rate while not Up (RFC 5880 §6.8.3: at least one second).
const SLOW: Duration = Duration::from_secs(1);

pub(crate) fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most 4 bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 4, 0) };
    if n != 4 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(1);
        return t ^ std::process::id().rotate_left(16);
    }
    u32::from_ne_bytes(b)
}

/// Sending socket: source port from 49152–65535 (RFC 5881 §4), TTL 255.
pub(crate) fn tx_socket(peer: IpAddr) -> Result<tokio::net::UdpSocket, BfdError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let v6 = peer.is_ipv6();
    let s = Socket::new(
        if v6 { Domain::IPV6 } else { Domain::IPV4 },
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .map_err(|source| BfdError::Io {
        what: "create".into(),
        source,
    })?;
    let ttl = if v6 {
        s.set_unicast_hops_v6(255)
    } else {
        s.set_ttl_v4(255)
    };
    ttl.map_err(|source| BfdError::Io {
        what: "TTL 255".into(),
        source,
    })?;
    s.set_nonblocking(true).map_err(|source| BfdError::Io {
        what: "nonblocking".into(),
        source,
    })?;
    let mut last = None;
    for _ in 0..64 {
        let port = 49152 + (random_u32() % 16384) as u16;
        let a: SocketAddr = if v6 {
            (Ipv6Addr::UNSPECIFIED, port).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, port).into()
        };
        match s.bind(&a.into()) {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    if let Some(source) = last {
        return Err(BfdError::Io {
            what: "bind source port".into(),
            source,
        });
    }
    tokio::net::UdpSocket::from_std(s.into()).map_err(|source| BfdError::Io {
        what: "register".into(),
        source,
    })
}

fn us(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

struct Vars {
    state: SessionState,
    remote_state: SessionState,
    remote_disc: u32,
    local_diag: u8,
    desired_min_tx: Duration,
    remote_min_rx: Duration,
    remote_desired_min_tx: Duration,
    remote_mult: u8,
    poll: bool,
}

fn jitter(d: Duration, _mult: u8) -> Duration {
    // §6.8.7: 75–100 % of the interval (75–90 % when the multiplier is 1),
    // never more. Timer and scheduling latency on a busy host adds a few ms
    // (gaps of up to 109 ms measured at 100 ms with a 75–100 % draw), so
    // draw from 75–90 % for every multiplier: the gap stays within the
    // interval with 10 % to spare.
    let f = 750 + random_u32() % 150;
    d * f / 1000
}

/// Session task: sends control packets to `dst` (the peer's address and
/// port 3784; a test gives a port of its own), processes received ones, runs
/// the detection timer and publishes the state.
pub(crate) async fn run(
    dst: SocketAddr,
    disc: u32,
    cfg: BfdConfig,
    sock: tokio::net::UdpSocket,
    mut rx: mpsc::Receiver<(Packet, IpAddr)>,
    st: watch::Sender<SessionState>,
) {
    let peer = dst.ip();
    let mut v = Vars {
        state: SessionState::Down,
        remote_state: SessionState::Down,
        remote_disc: 0,
        local_diag: Diag::None as u8,
        desired_min_tx: SLOW.max(cfg.min_tx),
        remote_min_rx: Duration::from_micros(1),
        remote_desired_min_tx: SLOW,
        remote_mult: cfg.multiplier,
        poll: false,
    };
    let far_future = || Instant::now() + Duration::from_secs(86400);
    let mut next_tx = Instant::now();
    // When the last periodic packet went out and the interval it was
    // scheduled with, so a shorter interval learnt later takes effect at once.
    let mut last_tx = Instant::now();
    let mut tx_interval = SLOW;
    let mut detect_at = far_future();
    let packet = |v: &Vars, fin: bool| Packet {
        diag: v.local_diag,
        state: v.state,
        poll: v.poll && !fin,
        fin,
        demand: false,
        detect_mult: cfg.multiplier,
        my_disc: disc,
        your_disc: v.remote_disc,
        desired_min_tx: us(v.desired_min_tx),
        required_min_rx: us(cfg.min_rx),
        required_min_echo_rx: 0,
    };
    loop {
        tokio::select! {
            _ = sleep_until(next_tx) => {
                tx_interval = v.desired_min_tx.max(v.remote_min_rx);
                if !v.remote_min_rx.is_zero() {
                    let _ = sock.send_to(&packet(&v, false).encode(), dst).await;
                }
                last_tx = Instant::now();
                next_tx = last_tx + jitter(tx_interval, cfg.multiplier);
            }
            _ = sleep_until(detect_at) => {
                detect_at = far_future();
                if matches!(v.state, SessionState::Init | SessionState::Up) {
                    tracing::info!(%peer, "BFD detection time expired: session Down");
                    v.state = SessionState::Down;
                    v.local_diag = Diag::TimeExpired as u8;
                    v.remote_disc = 0;
                    v.desired_min_tx = SLOW.max(cfg.min_tx);
                    let _ = st.send(v.state);
                }
            }
            m = rx.recv() => {
                let Some((p, _src)) = m else { return };
                v.remote_disc = p.my_disc;
                v.remote_state = p.state;
                v.remote_min_rx = Duration::from_micros(u64::from(p.required_min_rx));
                v.remote_desired_min_tx = Duration::from_micros(u64::from(p.desired_min_tx));
                v.remote_mult = p.detect_mult;
                if p.fin {
                    v.poll = false;
                }
                let old = v.state;
                match (v.state, p.state) {
                    (SessionState::AdminDown, _) => continue,
                    (s, SessionState::AdminDown) if s != SessionState::Down => {
                        v.state = SessionState::Down;
                        v.local_diag = Diag::NeighborDown as u8;
                    }
                    (SessionState::Down, SessionState::Down) => v.state = SessionState::Init,
                    (SessionState::Down, SessionState::Init) => v.state = SessionState::Up,
                    (SessionState::Init, SessionState::Init | SessionState::Up) => v.state = SessionState::Up,
                    (SessionState::Up, SessionState::Down) => {
                        v.state = SessionState::Down;
                        v.local_diag = Diag::NeighborDown as u8;
                    }
                    _ => {}
                }
                if v.state != old {
                    tracing::info!(%peer, from = ?old, to = ?v.state, "BFD state change");
                    if v.state == SessionState::Up {
                        // Switch to the fast rate; tell the peer with a Poll sequence.
                        v.desired_min_tx = cfg.min_tx;
                        v.local_diag = Diag::None as u8;
                        v.poll = true;
                    } else if old == SessionState::Up {
                        v.desired_min_tx = SLOW.max(cfg.min_tx);
                        v.poll = false;
                    }
                    let _ = st.send(v.state);
                    // Tell the peer about the change without waiting a full interval.
                    next_tx = Instant::now();
                }
                if p.poll {
                    let _ = sock.send_to(&packet(&v, true).encode(), dst).await;
                }
                // The transmit interval is max(Desired Min TX, remote Required
                // Min RX) (§6.8.7). A peer that is not Up yet may ask for 1 s
                // (FRR's Init packets do) and lower it to the configured rate
                // in its Poll a moment later; keeping the packet scheduled from
                // the 1 s value would leave the peer 750-1000 ms without a
                // packet while it already detects at 3 x 100 ms: it declares
                // the session Down, and the next Init starts the same again.
                let interval = v.desired_min_tx.max(v.remote_min_rx);
                if interval < tx_interval {
                    tx_interval = interval;
                    next_tx = next_tx.min(last_tx + jitter(interval, cfg.multiplier));
                }
                if matches!(v.state, SessionState::Init | SessionState::Up) {
                    let detect = v.remote_desired_min_tx.max(cfg.min_rx) * u32::from(v.remote_mult);
                    detect_at = Instant::now() + detect;
                } else {
                    detect_at = far_future();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(state: SessionState, poll: bool, rx_us: u32) -> Packet {
        Packet {
            diag: 0,
            state,
            poll,
            fin: false,
            demand: false,
            detect_mult: 3,
            my_disc: 7,
            your_disc: 1,
            desired_min_tx: rx_us,
            required_min_rx: rx_us,
            required_min_echo_rx: 0,
        }
    }

    /// FRR's Init asks for 1 s (its slow timers) and its Poll lowers that to
    /// 100 ms: the next periodic packet must come within 100 ms then, not
    /// 750-1000 ms after the one scheduled from the Init's 1 s.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn shorter_remote_rx_interval_applies_at_once() {
        let peer: IpAddr = Ipv4Addr::new(127, 0, 0, 1).into();
        // The peer's end: an ephemeral port on loopback, so the test runs
        // whoever holds port 3784 (a BFD daemon, another test).
        let far = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("binding an ephemeral UDP port on 127.0.0.1");
        let dst = far.local_addr().unwrap();
        far.set_nonblocking(true).unwrap();
        let far = tokio::net::UdpSocket::from_std(far).unwrap();
        let cfg = BfdConfig {
            min_rx: Duration::from_millis(100),
            min_tx: Duration::from_millis(100),
            multiplier: 3,
        };
        let (tx, rx) = mpsc::channel(8);
        let (st_tx, mut st_rx) = watch::channel(SessionState::Down);
        let sock = tx_socket(peer).unwrap();
        let task = tokio::spawn(run(dst, 1, cfg, sock, rx, st_tx));
        let next = || async {
            let mut buf = [0u8; 64];
            let n = far.recv(&mut buf).await.unwrap();
            Packet::decode(&buf[..n]).unwrap()
        };
        // First packet (Down) goes out at once.
        assert_eq!(next().await.state, SessionState::Down);
        // Init with 1 s: we go Up and send Up + Poll at once.
        tx.send((pkt(SessionState::Init, false, 1_000_000), peer))
            .await
            .unwrap();
        st_rx.changed().await.unwrap();
        assert_eq!(*st_rx.borrow(), SessionState::Up);
        let p = next().await;
        assert!(p.state == SessionState::Up && p.poll, "{p:?}");
        // The peer's Poll with 100 ms: Final at once.
        tx.send((pkt(SessionState::Up, true, 100_000), peer))
            .await
            .unwrap();
        let p = next().await;
        assert!(p.fin, "{p:?}");
        let t = Instant::now();
        let p = next().await;
        assert!(!p.fin && p.state == SessionState::Up, "{p:?}");
        assert!(
            t.elapsed() <= Duration::from_millis(100),
            "next packet after {:?}",
            t.elapsed()
        );
        task.abort();
    }

    #[test]
    fn transmit_interval_is_75_to_90_percent() {
        let d = Duration::from_millis(100);
        for mult in [1, 3] {
            for _ in 0..2000 {
                let j = jitter(d, mult);
                assert!(
                    j >= Duration::from_millis(75) && j < Duration::from_millis(90),
                    "{j:?}"
                );
            }
        }
    }
}
