//! TCP socket options the sessions depend on: RFC 2385 MD5 signatures through
//! the kernel's `TCP_MD5SIG`, the TTL / hop limit for (multihop) eBGP and
//! `TCP_USER_TIMEOUT`, plus the TCP-AO probe.
//!
//! A key that cannot be installed is an error the caller must not ignore:
//! carrying on would silently open an unauthenticated session.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

/// Longest key the kernel accepts (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_KEY_LEN: usize = 80;

/// Socket-option failures, each naming what could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SockError {
    /// The MD5 key is longer than the kernel allows.
    #[error("TCP MD5 password is {0} bytes; the kernel accepts at most 80")]
    KeyTooLong(usize),
    /// `setsockopt(TCP_MD5SIG)` failed.
    #[error("cannot install TCP MD5 key for {peer}: {source} (the session stays down rather than run unauthenticated)")]
    Md5 {
        /// Peer the key is for.
        peer: IpAddr,
        /// OS error.
        source: io::Error,
    },
    /// Another option failed.
    #[error("cannot set {option} on the BGP socket: {source}")]
    Option {
        /// Option name.
        option: &'static str,
        /// OS error.
        source: io::Error,
    },
}

/// Kernel `struct tcp_md5sig` (include/uapi/linux/tcp.h); libc does not export it.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: libc::c_int,
    key: [u8; MAX_KEY_LEN],
}

fn sockaddr_for(fd_is_v6: bool, peer: IpAddr) -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let v6 = match peer {
        IpAddr::V4(a) if !fd_is_v6 => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage and both are POD.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            return ss;
        }
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    };
    let sin6 = libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: v6.octets(),
        },
        sin6_scope_id: 0,
    };
    // SAFETY: sockaddr_in6 fits in sockaddr_storage and both are POD.
    unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
    ss
}

fn socket_is_v6(fd: RawFd) -> bool {
    let mut dom: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid fd, out-pointer to a c_int with its length.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            &mut dom as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    r == 0 && dom == libc::AF_INET6
}

/// Installs (`Some`) or removes (`None`) the MD5 key for `peer` on `sock`,
/// which may be a listening socket (then it applies to accepted connections).
pub fn set_md5<S: AsRawFd>(sock: &S, peer: IpAddr, key: Option<&[u8]>) -> Result<(), SockError> {
    let key = key.unwrap_or(&[]);
    if key.len() > MAX_KEY_LEN {
        return Err(SockError::KeyTooLong(key.len()));
    }
    let fd = sock.as_raw_fd();
    let mut sig = TcpMd5Sig {
        addr: sockaddr_for(socket_is_v6(fd), peer),
        flags: 0,
        prefixlen: 0,
        keylen: key.len() as u16,
        ifindex: 0,
        key: [0; MAX_KEY_LEN],
    };
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: fd is a live socket, the option value is a properly sized tcp_md5sig.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            &sig as *const _ as *const libc::c_void,
            std::mem::size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(SockError::Md5 {
            peer,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// `TCP_AO_ADD_KEY` from Linux 6.7 uapi; not in libc yet.
const TCP_AO_ADD_KEY: libc::c_int = 38;

/// Asks the kernel whether TCP-AO (RFC 5925) exists. Returns the OS error
/// text when it does not (ENOPROTOOPT on kernels without it), so the
/// configuration error can say exactly why.
pub fn probe_tcp_ao() -> Result<(), String> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| e.to_string())?;
    // An all-zero struct: kernels with AO reject it with EINVAL, kernels
    // without AO answer ENOPROTOOPT (a too-short buffer would get EINVAL first).
    let buf = [0u8; 512];
    // SAFETY: valid fd; the buffer outlives the call and its length is given.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_AO_ADD_KEY,
            buf.as_ptr() as *const libc::c_void,
            buf.len() as libc::socklen_t,
        )
    };
    let e = io::Error::last_os_error();
    if r != 0 && e.raw_os_error() == Some(libc::ENOPROTOOPT) {
        return Err(format!("setsockopt(TCP_AO_ADD_KEY): {e}"));
    }
    Ok(())
}

/// Sets the unicast TTL (IPv4) or hop limit (IPv6) on a socket.
pub fn set_ttl(sock: &socket2::Socket, v6: bool, ttl: u8) -> Result<(), SockError> {
    let r = if v6 {
        sock.set_unicast_hops_v6(u32::from(ttl))
    } else {
        sock.set_ttl_v4(u32::from(ttl))
    };
    r.map_err(|source| SockError::Option {
        option: if v6 { "IPV6_UNICAST_HOPS" } else { "IP_TTL" },
        source,
    })
}

/// Sets `TCP_USER_TIMEOUT`, so unacknowledged data to a dead peer fails the
/// connection instead of retrying for ~15 minutes behind our back.
pub fn set_user_timeout<S: AsRawFd>(sock: &S, t: Duration) -> Result<(), SockError> {
    let ms = t.as_millis().min(u128::from(u32::MAX)) as libc::c_uint;
    // SAFETY: valid fd, value is a c_uint with its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            &ms as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(SockError::Option {
            option: "TCP_USER_TIMEOUT",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Options for an outgoing session socket.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Peer address and port.
    pub peer: SocketAddr,
    /// Local address to bind, if any.
    pub local: Option<IpAddr>,
    /// MD5 key.
    pub md5: Option<Vec<u8>>,
    /// TTL / hop limit.
    pub ttl: u8,
    /// TCP_USER_TIMEOUT before the hold time is negotiated.
    pub user_timeout: Duration,
}

/// Creates and connects an outgoing socket with every option applied before
/// the SYN leaves (the MD5 key must sign the SYN itself).
pub async fn connect(o: &ConnectOptions) -> Result<tokio::net::TcpStream, ConnectError> {
    let v6 = o.peer.is_ipv6();
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(o.peer),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(ConnectError::Io)?;
    sock.set_nonblocking(true).map_err(ConnectError::Io)?;
    if let Some(k) = &o.md5 {
        set_md5(&sock, o.peer.ip(), Some(k))?;
    }
    set_ttl(&sock, v6, o.ttl)?;
    set_user_timeout(&sock, o.user_timeout)?;
    sock.set_tcp_nodelay(true).map_err(ConnectError::Io)?;
    if let Some(l) = o.local {
        sock.bind(&SocketAddr::new(l, 0).into())
            .map_err(ConnectError::Io)?;
    }
    let std: std::net::TcpStream = sock.into();
    let ts = tokio::net::TcpSocket::from_std_stream(std);
    ts.connect(o.peer).await.map_err(ConnectError::Io)
}

/// Why an outgoing connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A socket option (MD5 above all) could not be applied.
    #[error(transparent)]
    Sock(#[from] SockError),
    /// The connect itself failed.
    #[error("connect: {0}")]
    Io(io::Error),
}

/// Creates a listening socket on `addr` (IPv6 sockets are v6-only, so the
/// IPv4 and IPv6 listeners can carry MD5 keys of their own family).
pub fn listen(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(64)?;
    tokio::net::TcpListener::from_std(sock.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layout_matches_kernel() {
        assert_eq!(std::mem::size_of::<TcpMd5Sig>(), 216);
    }

    #[test]
    fn md5_on_a_socket() {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        set_md5(&s, "198.18.0.1".parse().unwrap(), Some(b"secret")).unwrap();
        assert!(matches!(
            set_md5(&s, "198.18.0.1".parse().unwrap(), Some(&[0u8; 81])),
            Err(SockError::KeyTooLong(81))
        ));
    }
}
