//! Where heartbeats travel: UDP on the announcing interface, or an in-memory LAN for tests.
//!
//! Why UDP bound to the interface (`SO_BINDTODEVICE`): heartbeats must take the path the
//! announced addresses take, so a downed link silences them; with the routing table choosing,
//! a node whose LAN link is down could still be heard over another interface and keep its
//! lease while no client can reach it.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

/// Sends and receives heartbeat datagrams.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Sends one datagram to `to`.
    async fn send(&self, to: SocketAddr, buf: &[u8]) -> io::Result<()>;
    /// Receives one datagram; returns its length and source.
    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
}

/// A UDP socket bound to `local` and to one interface, heartbeats marked as network control
/// (DSCP CS6, `SO_PRIORITY` 6) so that a busy link's queue does not delay them.
#[derive(Debug)]
pub struct UdpTransport {
    sock: tokio::net::UdpSocket,
}

impl UdpTransport {
    /// Binds `local` on `interface`. Needs CAP_NET_RAW for `SO_BINDTODEVICE` (root has it).
    ///
    /// An unspecified `local` (`0.0.0.0` / `::`) also receives, and may send, hellos to the
    /// whole link (IPv4 broadcast, IPv6 all-nodes `ff02::1`), for peers whose addresses are
    /// learnt; the kernel then picks the source (the interface's own address).
    pub fn bind(local: SocketAddr, interface: &str) -> io::Result<UdpTransport> {
        use socket2::{Domain, Protocol, Socket, Type};
        let domain = if local.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        s.bind_device(Some(interface.as_bytes())).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "binding the heartbeat socket to interface {interface} (SO_BINDTODEVICE): {e}; \
                     it needs CAP_NET_RAW, and the interface must exist"
                ),
            )
        })?;
        if local.is_ipv4() {
            let _ = s.set_tos_v4(0xc0);
        } else {
            let _ = s.set_tclass_v6(0xc0);
            let _ = s.set_only_v6(true);
        }
        // SO_PRIORITY 6 (TC_PRIO_INTERACTIVE_BULK... network control maps to 6/7); best effort.
        let prio: libc::c_int = 6;
        // SAFETY: setsockopt with a valid c_int on a socket we own.
        unsafe {
            use std::os::fd::AsRawFd;
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PRIORITY,
                &prio as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        if local.ip().is_unspecified() && local.is_ipv4() {
            s.set_broadcast(true)?;
        }
        s.set_reuse_address(true)?;
        s.bind(&local.into()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "binding the heartbeat socket to {local}: {e}; is the address on {interface}, \
                     and is the port free?"
                ),
            )
        })?;
        s.set_nonblocking(true)?;
        let std: std::net::UdpSocket = s.into();
        Ok(UdpTransport {
            sock: tokio::net::UdpSocket::from_std(std)?,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }
}

#[async_trait]
impl Transport for UdpTransport {
    async fn send(&self, to: SocketAddr, buf: &[u8]) -> io::Result<()> {
        self.sock.send_to(buf, to).await.map(|_| ())
    }
    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.sock.recv_from(buf).await
    }
}

/// Where hellos go on the interface with index `ifindex`: the IPv4 limited broadcast, or the
/// IPv6 all-nodes group scoped to the interface, at the heartbeat `port`. Why these: every host
/// on the link receives them without joining anything, and no router forwards them.
pub fn hello_destination(v4: bool, port: u16, ifindex: u32) -> SocketAddr {
    if v4 {
        SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::BROADCAST), port)
    } else {
        SocketAddr::V6(std::net::SocketAddrV6::new(
            std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            port,
            0,
            ifindex,
        ))
    }
}

/// An in-memory LAN for tests: endpoints by address, links that can be cut one way or both.
///
/// Why: runtime tests with Tokio's paused clock need a network whose delivery takes no real
/// time and whose failures are scripted exactly.
#[derive(Clone, Default)]
pub struct MemNet {
    inner: Arc<Mutex<MemInner>>,
}

#[derive(Default)]
struct MemInner {
    endpoints: BTreeMap<SocketAddr, mpsc::UnboundedSender<(Vec<u8>, SocketAddr)>>,
    cut: BTreeSet<(IpAddr, IpAddr)>,
    down: BTreeSet<IpAddr>,
}

impl std::fmt::Debug for MemNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemNet")
    }
}

impl MemNet {
    /// An empty LAN.
    pub fn new() -> MemNet {
        MemNet::default()
    }

    /// An endpoint at `addr`.
    pub fn endpoint(&self, addr: SocketAddr) -> MemEndpoint {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .endpoints
            .insert(addr, tx);
        MemEndpoint {
            net: self.clone(),
            addr,
            rx: tokio::sync::Mutex::new(rx),
        }
    }

    /// Cuts (or restores) datagrams from `from` to `to`.
    pub fn set_cut(&self, from: IpAddr, to: IpAddr, cut: bool) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if cut {
            g.cut.insert((from, to));
        } else {
            g.cut.remove(&(from, to));
        }
    }

    /// Takes a host off the LAN (or back): nothing in or out.
    pub fn set_down(&self, host: IpAddr, down: bool) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if down {
            g.down.insert(host);
        } else {
            g.down.remove(&host);
        }
    }
}

/// One host's socket on a [`MemNet`].
#[derive(Debug)]
pub struct MemEndpoint {
    net: MemNet,
    addr: SocketAddr,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<(Vec<u8>, SocketAddr)>>,
}

#[async_trait]
impl Transport for MemEndpoint {
    async fn send(&self, to: SocketAddr, buf: &[u8]) -> io::Result<()> {
        let g = self.net.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (a, b) = (self.addr.ip(), to.ip());
        if g.down.contains(&a) {
            return Err(io::Error::from_raw_os_error(libc::ENETDOWN));
        }
        if g.down.contains(&b) || g.cut.contains(&(a, b)) {
            return Ok(()); // lost on the wire
        }
        // To the whole link (a hello): every other endpoint on the port that is not down or
        // cut from this one.
        let everyone = match b {
            IpAddr::V4(v) => v.is_broadcast(),
            IpAddr::V6(v) => v.segments() == [0xff02, 0, 0, 0, 0, 0, 0, 1],
        };
        if everyone {
            for (addr, tx) in &g.endpoints {
                let c = addr.ip();
                if c != a
                    && addr.port() == to.port()
                    && !g.down.contains(&c)
                    && !g.cut.contains(&(a, c))
                {
                    let _ = tx.send((buf.to_vec(), self.addr));
                }
            }
        } else if let Some(tx) = g.endpoints.get(&to) {
            let _ = tx.send((buf.to_vec(), self.addr));
        }
        Ok(())
    }

    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let mut rx = self.rx.lock().await;
        match rx.recv().await {
            Some((d, from)) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok((n, from))
            }
            None => std::future::pending().await,
        }
    }
}
