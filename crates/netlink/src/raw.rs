//! AF_PACKET sockets bound to one interface, async with tokio.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::packet::{ETH_P_ARP, ETH_P_IPV6};

/// What a packet socket listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listen {
    /// ARP frames.
    Arp,
    /// ICMPv6 Neighbor Solicitations and Advertisements only (a BPF filter drops the rest of
    /// the IPv6 traffic in the kernel), with all multicast received.
    Ndp,
    /// Sending frames of this ethertype only: a BPF filter drops everything received.
    SendOnly(u16),
}

/// A raw Ethernet socket on one interface.
///
/// Why: GARPs, probes and answers are frames Berth builds itself; the socket sees every frame
/// of its ethertype on the interface, addressed to this host or not.
pub(crate) struct PacketSocket {
    fd: AsyncFd<OwnedFd>,
}

/// Frame direction as `sll_pkttype` says.
pub(crate) const PACKET_OUTGOING: u8 = 4;

impl PacketSocket {
    /// Opens an unbound socket for `ifindex` in the calling thread's namespace (call it from
    /// [`crate::Netns::run`] for another namespace). Blocking-free; register with
    /// [`PacketSocket::register`] on a tokio runtime.
    pub(crate) fn open(ifindex: u32, listen: Listen) -> io::Result<OwnedFd> {
        let ethertype = match listen {
            Listen::Arp => ETH_P_ARP,
            Listen::Ndp => ETH_P_IPV6,
            Listen::SendOnly(t) => t,
        };
        // SAFETY: plain socket(2); protocol 0 so nothing is queued before the filter and the
        // bind below select what this socket receives.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        match listen {
            Listen::Ndp => attach_filter(&fd, &ndp_filter())?,
            Listen::SendOnly(_) => attach_filter(&fd, &[ins(RET, 0, 0, 0)])?,
            Listen::Arp => {}
        }
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ethertype.to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: sll is a valid sockaddr_ll of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        if listen == Listen::Ndp {
            // Receive all multicast: NAs go to ff02::1, DAD probes and solicitations to
            // solicited-node groups this host may not have joined (the address is not on it).
            // SAFETY: zeroed packet_mreq is valid; fields set below.
            let mut mreq: libc::packet_mreq = unsafe { mem::zeroed() };
            mreq.mr_ifindex = ifindex as i32;
            mreq.mr_type = libc::PACKET_MR_ALLMULTI as u16;
            // SAFETY: mreq is a valid packet_mreq of the given size.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_ADD_MEMBERSHIP,
                    &mreq as *const libc::packet_mreq as *const libc::c_void,
                    mem::size_of::<libc::packet_mreq>() as u32,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(fd)
    }

    /// Registers an opened socket with the current tokio runtime.
    pub(crate) fn register(fd: OwnedFd) -> io::Result<PacketSocket> {
        // SAFETY: the OwnedFd is moved into the AsyncFd, which closes it only when dropped.
        let fd = unsafe {
            AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)?
        };
        Ok(PacketSocket { fd })
    }

    /// Sends one frame on the bound interface.
    pub(crate) async fn send(&self, frame: &[u8]) -> io::Result<()> {
        self.send_checked(frame, &|| true).await.map(|_| ())
    }

    /// Sends one frame if `allowed()` says so when the socket is ready, right before the
    /// system call; returns whether it was sent.
    pub(crate) async fn send_checked(
        &self,
        frame: &[u8],
        allowed: &(dyn Fn() -> bool + Sync),
    ) -> io::Result<bool> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| {
                if !allowed() {
                    return Ok(false);
                }
                // SAFETY: frame is a valid buffer of its length.
                let n = unsafe {
                    libc::send(
                        fd.as_raw_fd(),
                        frame.as_ptr() as *const libc::c_void,
                        frame.len(),
                        0,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(true)
                }
            }) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one frame into `buf`; returns its length and `sll_pkttype`.
    pub(crate) async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, u8)> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                // SAFETY: zeroed sockaddr_ll is valid output space.
                let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
                let mut len = mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                // SAFETY: buf and sll are valid for writes of the given sizes.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                        &mut sll as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                        &mut len,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok((n as usize, sll.sll_pkttype))
                }
            }) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

const LDH_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
const LDB_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
const JEQ: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const RET: u16 = 0x06; // BPF_RET | BPF_K

fn ins(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Keeps only ICMPv6 types 135/136 with no extension header (classic BPF, like `tcpdump -dd
/// 'icmp6 and (ip6[40] == 135 or ip6[40] == 136)'`).
fn ndp_filter() -> [libc::sock_filter; 9] {
    [
        ins(LDH_ABS, 0, 0, 12),            // ethertype
        ins(JEQ, 0, 6, ETH_P_IPV6 as u32), // not IPv6 → drop
        ins(LDB_ABS, 0, 0, 20),            // next header
        ins(JEQ, 0, 4, 58),                // not ICMPv6 → drop
        ins(LDB_ABS, 0, 0, 54),            // ICMPv6 type
        ins(JEQ, 1, 0, 135),               // NS → accept
        ins(JEQ, 0, 1, 136),               // not NA → drop
        ins(RET, 0, 0, 0xffff),            // accept
        ins(RET, 0, 0, 0),                 // drop
    ]
}

fn attach_filter(fd: &OwnedFd, prog: &[libc::sock_filter]) -> io::Result<()> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at prog, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &fprog as *const libc::sock_fprog as *const libc::c_void,
            mem::size_of::<libc::sock_fprog>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
