//! BFD (RFC 5880) single-hop asynchronous mode over UDP (RFC 5881).
//!
//! Berth's BGP speaker ties each BGP session to a BFD session so a dead link
//! is noticed in a few hundred milliseconds instead of a hold time. Packets
//! are sent with TTL/hop limit 255 and received packets with anything less
//! are dropped (RFC 5881 §5, GTSM), so only a directly attached neighbour can
//! drive a session.

#![deny(missing_docs)]

mod packet;
mod session;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

pub use packet::{Diag, Packet, PacketError};
pub use session::SessionState;

/// UDP port for single-hop control packets (RFC 5881 §4).
pub const CONTROL_PORT: u16 = 3784;
/// Shortest interval accepted; shorter ones would be CPU noise, not detection.
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Timers for one BFD session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BfdConfig {
    /// Required Min RX Interval: how often we want to hear from the peer.
    pub min_rx: Duration,
    /// Desired Min TX Interval: how often we would like to send.
    pub min_tx: Duration,
    /// Detect multiplier: missed packets before the session goes down.
    pub multiplier: u8,
}

impl BfdConfig {
    /// Checks the timers; the message names the field and the fix.
    pub fn validate(&self) -> Result<(), BfdError> {
        for (name, v) in [("min_rx_ms", self.min_rx), ("min_tx_ms", self.min_tx)] {
            if v < MIN_INTERVAL {
                return Err(BfdError::Config(format!(
                    "bfd.{name} = {} is below the minimum of 10 ms; use 10 or more (e.g. 100)",
                    v.as_millis()
                )));
            }
            if v > Duration::from_secs(60) {
                return Err(BfdError::Config(format!(
                    "bfd.{name} = {} is above 60000 ms; use a smaller interval",
                    v.as_millis()
                )));
            }
        }
        if self.multiplier == 0 {
            return Err(BfdError::Config(
                "bfd.multiplier = 0 is not allowed; use 1..=255 (e.g. 3)".into(),
            ));
        }
        Ok(())
    }
}

/// BFD failures.
#[derive(Debug, thiserror::Error)]
pub enum BfdError {
    /// Socket setup failed.
    #[error("BFD socket {what}: {source}")]
    Io {
        /// What was being set up.
        what: String,
        /// OS error.
        source: std::io::Error,
    },
    /// Bad timers.
    #[error("{0}")]
    Config(String),
    /// A second session for one peer.
    #[error("a BFD session for {0} exists already")]
    Duplicate(IpAddr),
}

type Inbox = mpsc::Sender<(Packet, IpAddr)>;

#[derive(Default)]
struct Demux {
    by_disc: HashMap<u32, Inbox>,
    by_peer: HashMap<IpAddr, u32>,
}

/// The BFD instance: receive sockets on port 3784 and the session table.
pub struct Bfd {
    demux: Arc<Mutex<Demux>>,
    rx_tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A live BFD session; dropping it stops the session.
pub struct SessionHandle {
    state: watch::Receiver<SessionState>,
    task: tokio::task::JoinHandle<()>,
    demux: Arc<Mutex<Demux>>,
    peer: IpAddr,
    disc: u32,
}

impl SessionHandle {
    /// Follows the session state (Down, Init, Up, AdminDown).
    pub fn state(&self) -> watch::Receiver<SessionState> {
        self.state.clone()
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.task.abort();
        if let Ok(mut d) = self.demux.lock() {
            d.by_disc.remove(&self.disc);
            d.by_peer.remove(&self.peer);
        }
    }
}

impl Drop for Bfd {
    fn drop(&mut self) {
        for t in &self.rx_tasks {
            t.abort();
        }
    }
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> BfdError + '_ {
    move |source| BfdError::Io {
        what: what.to_string(),
        source,
    }
}

fn rx_socket(v6: bool) -> Result<tokio::net::UdpSocket, BfdError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let dom = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(dom, Type::DGRAM, Some(Protocol::UDP)).map_err(io_err("create"))?;
    let on: libc::c_int = 1;
    let (level, opt) = if v6 {
        s.set_only_v6(true).map_err(io_err("IPV6_V6ONLY"))?;
        (libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVTTL)
    };
    // SAFETY: valid fd and an int option value.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            level,
            opt,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io_err("IP_RECVTTL")(std::io::Error::last_os_error()));
    }
    s.set_reuse_address(true).map_err(io_err("SO_REUSEADDR"))?;
    s.set_nonblocking(true).map_err(io_err("nonblocking"))?;
    let addr: SocketAddr = if v6 {
        (Ipv6Addr::UNSPECIFIED, CONTROL_PORT).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, CONTROL_PORT).into()
    };
    s.bind(&addr.into()).map_err(io_err("bind port 3784"))?;
    tokio::net::UdpSocket::from_std(s.into()).map_err(io_err("register"))
}

/// Receives one datagram with its TTL / hop limit.
fn recv_with_ttl(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
) -> std::io::Result<(usize, IpAddr, Option<u8>)> {
    // SAFETY: all-zero sockaddr_storage / msghdr are valid initial values.
    let mut from: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 16];
    // SAFETY: see above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = &mut from as *mut _ as *mut libc::c_void;
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: msg points at live buffers sized as declared.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut ttl = None;
    // SAFETY: walking the control buffer the kernel filled, with the libc macros.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let h = &*c;
            if (h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_TTL)
                || (h.cmsg_level == libc::IPPROTO_IPV6 && h.cmsg_type == libc::IPV6_HOPLIMIT)
            {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                ttl = u8::try_from(v).ok();
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let src = match i32::from(from.ss_family) {
        libc::AF_INET => {
            // SAFETY: family says sockaddr_in.
            let sin = unsafe { &*(&from as *const _ as *const libc::sockaddr_in) };
            IpAddr::V4(Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()))
        }
        _ => {
            // SAFETY: otherwise sockaddr_in6 (the socket is AF_INET6).
            let sin6 = unsafe { &*(&from as *const _ as *const libc::sockaddr_in6) };
            let a = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(a))
        }
    };
    Ok((n as usize, src, ttl))
}

async fn rx_loop(sock: tokio::net::UdpSocket, demux: Arc<Mutex<Demux>>) {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let mut buf = [0u8; 512];
    loop {
        let r = sock
            .async_io(tokio::io::Interest::READABLE, || {
                recv_with_ttl(fd, &mut buf)
            })
            .await;
        let (n, src, ttl) = match r {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "BFD recv");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if ttl != Some(255) {
            tracing::debug!(%src, ?ttl, "BFD packet with TTL != 255 dropped");
            continue;
        }
        let pkt = match Packet::decode(&buf[..n]) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(%src, error = %e, "bad BFD packet");
                continue;
            }
        };
        let inbox = demux.lock().ok().and_then(|d| {
            let disc = if pkt.your_disc != 0 {
                Some(pkt.your_disc)
            } else {
                d.by_peer.get(&src).copied()
            };
            disc.and_then(|x| d.by_disc.get(&x).cloned())
        });
        if let Some(tx) = inbox {
            let _ = tx.try_send((pkt, src));
        }
    }
}

impl Bfd {
    /// Binds UDP port 3784 (IPv4 and, if available, IPv6).
    pub async fn start() -> Result<Bfd, BfdError> {
        let demux: Arc<Mutex<Demux>> = Arc::default();
        let mut rx_tasks = Vec::new();
        let v4 = rx_socket(false)?;
        rx_tasks.push(tokio::spawn(rx_loop(v4, Arc::clone(&demux))));
        match rx_socket(true) {
            Ok(v6) => rx_tasks.push(tokio::spawn(rx_loop(v6, Arc::clone(&demux)))),
            Err(e) => tracing::warn!(error = %e, "BFD over IPv6 unavailable"),
        }
        Ok(Bfd { demux, rx_tasks })
    }

    /// Starts a session with `peer`.
    pub fn add(&self, peer: IpAddr, cfg: BfdConfig) -> Result<SessionHandle, BfdError> {
        cfg.validate()?;
        let (tx, rx) = mpsc::channel(32);
        let disc = {
            let mut d = self
                .demux
                .lock()
                .map_err(|_| BfdError::Config("BFD table poisoned".into()))?;
            if d.by_peer.contains_key(&peer) {
                return Err(BfdError::Duplicate(peer));
            }
            let mut disc = session::random_u32() | 1;
            while d.by_disc.contains_key(&disc) {
                disc = session::random_u32() | 1;
            }
            d.by_disc.insert(disc, tx);
            d.by_peer.insert(peer, disc);
            disc
        };
        let sock = match session::tx_socket(peer) {
            Ok(s) => s,
            Err(e) => {
                if let Ok(mut d) = self.demux.lock() {
                    d.by_disc.remove(&disc);
                    d.by_peer.remove(&peer);
                }
                return Err(e);
            }
        };
        let (st_tx, st_rx) = watch::channel(SessionState::Down);
        let task = tokio::spawn(session::run(
            SocketAddr::new(peer, CONTROL_PORT),
            disc,
            cfg,
            sock,
            rx,
            st_tx,
        ));
        Ok(SessionHandle {
            state: st_rx,
            task,
            demux: Arc::clone(&self.demux),
            peer,
            disc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_tiny_intervals() {
        let c = BfdConfig {
            min_rx: Duration::from_millis(5),
            min_tx: Duration::from_millis(100),
            multiplier: 3,
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("min_rx_ms"), "{e}");
        let c = BfdConfig {
            min_rx: Duration::from_millis(100),
            min_tx: Duration::from_millis(100),
            multiplier: 0,
        };
        assert!(c.validate().is_err());
    }
}
