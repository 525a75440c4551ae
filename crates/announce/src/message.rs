//! The heartbeat: the one message nodes exchange, and its binary form.
//!
//! Why a hand-written codec: the message is small and fixed, it is decoded from anything a
//! LAN may deliver to the port (so decoding is total: never a panic, never an allocation
//! larger than the datagram), and its layout is versioned by its magic.
//!
//! Layout (big-endian): magic `BTH1`, cluster u64, incarnation u64, seq u64, flags u8,
//! name (u8 length + UTF-8), [mac 6 bytes], [echo: incarnation u64, seq u64], then three
//! lists, each a u16 count: grants (addr), held (addr, u32 ms held), yields (addr). An addr is
//! a family byte (4 or 6) and 4 or 16 bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const MAGIC: &[u8; 4] = b"BTH1";
const F_LINK_UP: u8 = 1;
const F_LEAVING: u8 = 2;
const F_MAC: u8 = 4;
const F_ECHO: u8 = 8;
const F_STABLE: u8 = 16;
const F_REPLY: u8 = 32;
const F_HELLO: u8 = 64;

/// The largest heartbeat received, bytes (one UDP datagram). Why: the receive buffer size.
pub const MAX_LEN: usize = 65_507;

/// What one node tells one peer, every heartbeat interval and at once on a change.
///
/// Why each field:
/// - `cluster`: a hash of the member names; nodes configured with different members ignore
///   each other (and say so) instead of electing on different inputs.
/// - `incarnation`, `seq`: a new process is a new incarnation; `seq` orders its messages, and
///   its echo is how a sender learns which of its heartbeats a peer has seen.
/// - `echo`: the recipient's latest (incarnation, seq) the sender has received. A grant is
///   valid for the recipient only from the *sending* time of the echoed heartbeat, on the
///   recipient's own clock: delay never lengthens a lease.
/// - `grants`: the addresses the sender grants to the recipient (its vote that the recipient
///   announces them).
/// - `held`: what the sender announces now, and for how long (status, and restarted nodes).
/// - `yields`: addresses the sender will not announce on any grant echoing this `seq` or an
///   earlier one; lets a grantor move a grant at once instead of waiting T_takeover.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Heartbeat {
    /// Hash of the member names.
    pub cluster: u64,
    /// The sender's name.
    pub from: String,
    /// Random per process start.
    pub incarnation: u64,
    /// Increases by one with every heartbeat of this incarnation.
    pub seq: u64,
    /// The sender's announcing interface is up.
    pub link_up: bool,
    /// The sender is shutting down and has withdrawn everything.
    pub leaving: bool,
    /// The MAC of the sender's announcing interface (so probes can tell Berth nodes apart).
    pub mac: Option<[u8; 6]>,
    /// The recipient's latest (incarnation, seq) the sender has received.
    pub echo: Option<(u64, u64)>,
    /// The sender has heard the recipient without a break for `rejoin` (so a node that came
    /// back counts itself new exactly when its peers do).
    pub you_stable: bool,
    /// This heartbeat answers one of the recipient's (to renew its lease from a fresh echo);
    /// it is never answered itself.
    pub is_reply: bool,
    /// A hello: sent to every host on the link (IPv4 broadcast, IPv6 all-nodes) so that peers
    /// whose addresses are not configured learn this node's address from its source. It
    /// carries the cluster, the name, the incarnation and the MAC, and never reaches the
    /// election.
    pub is_hello: bool,
    /// Addresses granted to the recipient.
    pub grants: Vec<IpAddr>,
    /// Addresses the sender announces, with milliseconds since it started.
    pub held: Vec<(IpAddr, u32)>,
    /// Addresses the sender yields (see the type's doc).
    pub yields: Vec<IpAddr>,
}

/// Why a datagram is not a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a Berth heartbeat (wrong magic or version).
    #[error("not a Berth heartbeat (magic {0:02x?})")]
    Magic(Vec<u8>),
    /// Cut short.
    #[error("heartbeat truncated at byte {0}")]
    Truncated(usize),
    /// A field with an impossible value.
    #[error("malformed heartbeat: {0}")]
    Malformed(&'static str),
}

impl Heartbeat {
    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + 18 * (self.grants.len() + self.yields.len()));
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&self.cluster.to_be_bytes());
        b.extend_from_slice(&self.incarnation.to_be_bytes());
        b.extend_from_slice(&self.seq.to_be_bytes());
        let mut flags = 0;
        if self.link_up {
            flags |= F_LINK_UP;
        }
        if self.leaving {
            flags |= F_LEAVING;
        }
        if self.mac.is_some() {
            flags |= F_MAC;
        }
        if self.echo.is_some() {
            flags |= F_ECHO;
        }
        if self.you_stable {
            flags |= F_STABLE;
        }
        if self.is_reply {
            flags |= F_REPLY;
        }
        if self.is_hello {
            flags |= F_HELLO;
        }
        b.push(flags);
        let name = truncate_name(&self.from);
        b.push(name.len() as u8);
        b.extend_from_slice(name.as_bytes());
        if let Some(m) = self.mac {
            b.extend_from_slice(&m);
        }
        if let Some((inc, seq)) = self.echo {
            b.extend_from_slice(&inc.to_be_bytes());
            b.extend_from_slice(&seq.to_be_bytes());
        }
        let n = |len: usize| (len.min(u16::MAX as usize) as u16).to_be_bytes();
        b.extend_from_slice(&n(self.grants.len()));
        for a in self.grants.iter().take(u16::MAX as usize) {
            put_addr(&mut b, *a);
        }
        b.extend_from_slice(&n(self.held.len()));
        for (a, ms) in self.held.iter().take(u16::MAX as usize) {
            put_addr(&mut b, *a);
            b.extend_from_slice(&ms.to_be_bytes());
        }
        b.extend_from_slice(&n(self.yields.len()));
        for a in self.yields.iter().take(u16::MAX as usize) {
            put_addr(&mut b, *a);
        }
        b
    }

    /// Parses a datagram; any byte string gives a heartbeat or an error, never a panic.
    pub fn decode(buf: &[u8]) -> Result<Heartbeat, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        let magic = r.take(4)?;
        if magic != MAGIC {
            return Err(DecodeError::Magic(magic.to_vec()));
        }
        let cluster = r.u64()?;
        let incarnation = r.u64()?;
        let seq = r.u64()?;
        let flags = r.u8()?;
        if flags & !(F_LINK_UP | F_LEAVING | F_MAC | F_ECHO | F_STABLE | F_REPLY | F_HELLO) != 0 {
            return Err(DecodeError::Malformed("unknown flags"));
        }
        let len = r.u8()? as usize;
        let from = std::str::from_utf8(r.take(len)?)
            .map_err(|_| DecodeError::Malformed("name is not UTF-8"))?
            .to_string();
        let mac = if flags & F_MAC != 0 {
            let m = r.take(6)?;
            Some([m[0], m[1], m[2], m[3], m[4], m[5]])
        } else {
            None
        };
        let echo = if flags & F_ECHO != 0 {
            Some((r.u64()?, r.u64()?))
        } else {
            None
        };
        let count = r.u16()? as usize;
        let mut grants = Vec::with_capacity(count.min(buf.len() / 5));
        for _ in 0..count {
            grants.push(r.addr()?);
        }
        let count = r.u16()? as usize;
        let mut held = Vec::with_capacity(count.min(buf.len() / 9));
        for _ in 0..count {
            let a = r.addr()?;
            held.push((a, r.u32()?));
        }
        let count = r.u16()? as usize;
        let mut yields = Vec::with_capacity(count.min(buf.len() / 5));
        for _ in 0..count {
            yields.push(r.addr()?);
        }
        if r.pos != buf.len() {
            return Err(DecodeError::Malformed("trailing bytes"));
        }
        Ok(Heartbeat {
            cluster,
            from,
            incarnation,
            seq,
            link_up: flags & F_LINK_UP != 0,
            leaving: flags & F_LEAVING != 0,
            mac,
            echo,
            you_stable: flags & F_STABLE != 0,
            is_reply: flags & F_REPLY != 0,
            is_hello: flags & F_HELLO != 0,
            grants,
            held,
            yields,
        })
    }
}

fn truncate_name(s: &str) -> &str {
    if s.len() <= 255 {
        return s;
    }
    let mut end = 255;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_addr(b: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(v) => {
            b.push(4);
            b.extend_from_slice(&v.octets());
        }
        IpAddr::V6(v) => {
            b.push(6);
            b.extend_from_slice(&v.octets());
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(DecodeError::Truncated(self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }
    fn addr(&mut self) -> Result<IpAddr, DecodeError> {
        match self.u8()? {
            4 => {
                let s = self.take(4)?;
                Ok(IpAddr::V4(Ipv4Addr::new(s[0], s[1], s[2], s[3])))
            }
            6 => {
                let s = self.take(16)?;
                let mut a = [0u8; 16];
                a.copy_from_slice(s);
                Ok(IpAddr::V6(Ipv6Addr::from(a)))
            }
            _ => Err(DecodeError::Malformed("address family")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
            any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        ]
    }

    fn arb_hb() -> impl Strategy<Value = Heartbeat> {
        (
            (any::<u64>(), "[a-z0-9.-]{0,40}", any::<u64>(), any::<u64>()),
            (
                any::<bool>(),
                any::<bool>(),
                proptest::option::of(any::<[u8; 6]>()),
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
            ),
            proptest::option::of((any::<u64>(), any::<u64>())),
            proptest::collection::vec(arb_addr(), 0..20),
            proptest::collection::vec((arb_addr(), any::<u32>()), 0..20),
            proptest::collection::vec(arb_addr(), 0..20),
        )
            .prop_map(
                |(
                    (cluster, from, incarnation, seq),
                    (link_up, leaving, mac, you_stable, is_reply, is_hello),
                    echo,
                    grants,
                    held,
                    yields,
                )| Heartbeat {
                    cluster,
                    from,
                    incarnation,
                    seq,
                    link_up,
                    leaving,
                    mac,
                    echo,
                    you_stable,
                    is_reply,
                    is_hello,
                    grants,
                    held,
                    yields,
                },
            )
    }

    proptest! {
        #[test]
        fn roundtrip(hb in arb_hb()) {
            let b = hb.encode();
            prop_assert_eq!(Heartbeat::decode(&b).unwrap(), hb);
        }

        /// Anything the LAN delivers decodes or errors; a prefix of a valid message is an error.
        #[test]
        fn decode_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..300), hb in arb_hb(), cut in any::<usize>()) {
            let _ = Heartbeat::decode(&bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = Heartbeat::decode(&with_magic);
            let b = hb.encode();
            let cut = cut % b.len();
            prop_assert!(Heartbeat::decode(&b[..cut]).is_err());
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(matches!(
            Heartbeat::decode(b"VRRP...."),
            Err(DecodeError::Magic(_))
        ));
        let mut b = Heartbeat::default().encode();
        b.push(0);
        assert_eq!(
            Heartbeat::decode(&b),
            Err(DecodeError::Malformed("trailing bytes"))
        );
        let mut b = Heartbeat::default().encode();
        b[28] = 0x80;
        assert_eq!(
            Heartbeat::decode(&b),
            Err(DecodeError::Malformed("unknown flags"))
        );
        // 0x40 is the hello flag.
        b[28] = 0x40;
        assert!(Heartbeat::decode(&b).is_ok_and(|h| h.is_hello));
    }

    #[test]
    fn long_names_are_cut_at_a_char_boundary() {
        let hb = Heartbeat {
            from: "é".repeat(200),
            ..Default::default()
        };
        let d = Heartbeat::decode(&hb.encode()).unwrap();
        assert!(d.from.len() <= 255 && hb.from.starts_with(&d.from));
    }
}
