//! ARP and NDP frames: encoders, decoders that never panic on untrusted input, and the pure
//! decisions built on them (is this a conflict? what do we answer?).
//!
//! Why hand-written: Berth needs five frame shapes (GARP, ARP probe/reply, NS, NA) and their
//! parsers; pnet would bring a large dependency for that. Every decoder checks lengths before
//! reading, and the NDP decoder applies RFC 4861's validity checks (hop limit 255, code 0,
//! checksum, option lengths), so forged or truncated frames are dropped, never trusted.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::types::{GarpForm, Mac};

/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
const IPV4_HDR: usize = 20;
const UDP_HDR: usize = 8;
const UDP: u8 = 17;
/// Shortest Ethernet frame without FCS; shorter frames are padded.
const MIN_FRAME: usize = 60;
const ETH_HDR: usize = 14;
const IPV6_HDR: usize = 40;
const ICMPV6: u8 = 58;
const NS_TYPE: u8 = 135;
const NA_TYPE: u8 = 136;
const OPT_SLLA: u8 = 1;
const OPT_TLLA: u8 = 2;

/// ARP operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    /// 1.
    Request,
    /// 2.
    Reply,
    /// Anything else (RARP, InARP, …).
    Other(u16),
}

impl ArpOp {
    fn code(self) -> u16 {
        match self {
            ArpOp::Request => 1,
            ArpOp::Reply => 2,
            ArpOp::Other(c) => c,
        }
    }
}

/// A decoded Ethernet/IPv4 ARP frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArpPacket {
    /// Ethernet destination.
    pub eth_dst: Mac,
    /// Ethernet source.
    pub eth_src: Mac,
    /// Operation.
    pub op: ArpOp,
    /// Sender hardware address.
    pub sha: Mac,
    /// Sender protocol address (0.0.0.0 in a probe).
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: Mac,
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

impl ArpPacket {
    /// The frame bytes (padded to the Ethernet minimum).
    pub fn encode(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(MIN_FRAME);
        f.extend_from_slice(&self.eth_dst.0);
        f.extend_from_slice(&self.eth_src.0);
        f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
        f.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
        f.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
        f.push(6);
        f.push(4);
        f.extend_from_slice(&self.op.code().to_be_bytes());
        f.extend_from_slice(&self.sha.0);
        f.extend_from_slice(&self.spa.octets());
        f.extend_from_slice(&self.tha.0);
        f.extend_from_slice(&self.tpa.octets());
        f.resize(MIN_FRAME, 0);
        f
    }

    /// Decodes an Ethernet frame; `None` unless it is a well-formed Ethernet/IPv4 ARP packet.
    pub fn decode(frame: &[u8]) -> Option<ArpPacket> {
        let b = frame.get(..ETH_HDR + 28)?;
        if be16(b, 12)? != ETH_P_ARP || be16(b, 14)? != 1 || be16(b, 16)? != 0x0800 {
            return None;
        }
        if b[18] != 6 || b[19] != 4 {
            return None;
        }
        let op = match be16(b, 20)? {
            1 => ArpOp::Request,
            2 => ArpOp::Reply,
            c => ArpOp::Other(c),
        };
        Some(ArpPacket {
            eth_dst: mac_at(b, 0)?,
            eth_src: mac_at(b, 6)?,
            op,
            sha: mac_at(b, 22)?,
            spa: v4_at(b, 28)?,
            tha: mac_at(b, 32)?,
            tpa: v4_at(b, 38)?,
        })
    }
}

/// A gratuitous ARP for `ip` from `mac`, to broadcast.
///
/// Why: the request form is RFC 5227's announcement (target MAC zero); the reply form carries
/// target MAC = sender MAC, which Linux requires to treat a reply as gratuitous.
pub fn garp(mac: Mac, ip: Ipv4Addr, form: GarpForm) -> ArpPacket {
    let (op, tha) = match form {
        GarpForm::Request => (ArpOp::Request, Mac::ZERO),
        GarpForm::Reply => (ArpOp::Reply, mac),
    };
    ArpPacket {
        eth_dst: Mac::BROADCAST,
        eth_src: mac,
        op,
        sha: mac,
        spa: ip,
        tha,
        tpa: ip,
    }
}

/// An RFC 5227 ARP probe for `ip`: sender IP 0.0.0.0, so no one's cache learns anything.
pub fn arp_probe(mac: Mac, ip: Ipv4Addr) -> ArpPacket {
    ArpPacket {
        eth_dst: Mac::BROADCAST,
        eth_src: mac,
        op: ArpOp::Request,
        sha: mac,
        spa: Ipv4Addr::UNSPECIFIED,
        tha: Mac::ZERO,
        tpa: ip,
    }
}

/// The reply to `req` saying `req.tpa` is at `mac` (unicast to the requester, as Linux does,
/// also for probes whose sender IP is 0.0.0.0).
pub fn arp_reply(mac: Mac, req: &ArpPacket) -> ArpPacket {
    ArpPacket {
        eth_dst: req.sha,
        eth_src: mac,
        op: ArpOp::Reply,
        sha: mac,
        spa: req.tpa,
        tha: req.sha,
        tpa: req.spa,
    }
}

/// An NDP message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NdpMessage {
    /// Neighbor Solicitation.
    Solicit {
        /// The address asked about.
        target: Ipv6Addr,
        /// Source link-layer address option.
        slla: Option<Mac>,
    },
    /// Neighbor Advertisement.
    Advert {
        /// The address advertised.
        target: Ipv6Addr,
        /// R flag.
        router: bool,
        /// S flag.
        solicited: bool,
        /// O flag.
        override_: bool,
        /// Target link-layer address option.
        tlla: Option<Mac>,
    },
}

/// A decoded Ethernet/IPv6/ICMPv6 NS or NA frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NdpPacket {
    /// Ethernet destination.
    pub eth_dst: Mac,
    /// Ethernet source.
    pub eth_src: Mac,
    /// IPv6 source (:: in DAD).
    pub src: Ipv6Addr,
    /// IPv6 destination.
    pub dst: Ipv6Addr,
    /// The message.
    pub msg: NdpMessage,
}

impl NdpPacket {
    /// The frame bytes, with hop limit 255 and the ICMPv6 checksum.
    pub fn encode(&self) -> Vec<u8> {
        let mut icmp = Vec::with_capacity(32);
        match &self.msg {
            NdpMessage::Solicit { target, slla } => {
                icmp.extend_from_slice(&[NS_TYPE, 0, 0, 0, 0, 0, 0, 0]);
                icmp.extend_from_slice(&target.octets());
                if let Some(m) = slla {
                    icmp.extend_from_slice(&[OPT_SLLA, 1]);
                    icmp.extend_from_slice(&m.0);
                }
            }
            NdpMessage::Advert {
                target,
                router,
                solicited,
                override_,
                tlla,
            } => {
                let flags =
                    (*router as u8) << 7 | (*solicited as u8) << 6 | (*override_ as u8) << 5;
                icmp.extend_from_slice(&[NA_TYPE, 0, 0, 0, flags, 0, 0, 0]);
                icmp.extend_from_slice(&target.octets());
                if let Some(m) = tlla {
                    icmp.extend_from_slice(&[OPT_TLLA, 1]);
                    icmp.extend_from_slice(&m.0);
                }
            }
        }
        let sum = icmpv6_checksum(&self.src, &self.dst, &icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());

        let mut f = Vec::with_capacity(ETH_HDR + IPV6_HDR + icmp.len());
        f.extend_from_slice(&self.eth_dst.0);
        f.extend_from_slice(&self.eth_src.0);
        f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        f.push(ICMPV6);
        f.push(255);
        f.extend_from_slice(&self.src.octets());
        f.extend_from_slice(&self.dst.octets());
        f.extend_from_slice(&icmp);
        f
    }

    /// Decodes an Ethernet frame; `None` unless it is a valid NS or NA (RFC 4861 §7.1: hop
    /// limit 255, code 0, correct checksum, enough length, no zero-length option, target not
    /// multicast; a DAD NS from :: carries no SLLA; a multicast NA is not solicited).
    pub fn decode(frame: &[u8]) -> Option<NdpPacket> {
        let eth = frame.get(..ETH_HDR)?;
        if be16(eth, 12)? != ETH_P_IPV6 {
            return None;
        }
        let ip = frame.get(ETH_HDR..ETH_HDR + IPV6_HDR)?;
        if ip[0] >> 4 != 6 || ip[6] != ICMPV6 || ip[7] != 255 {
            return None;
        }
        let plen = be16(ip, 4)? as usize;
        let icmp = frame.get(ETH_HDR + IPV6_HDR..ETH_HDR + IPV6_HDR + plen)?;
        let src = v6_at(ip, 8)?;
        let dst = v6_at(ip, 24)?;
        if icmp.len() < 24 || icmp[1] != 0 {
            return None;
        }
        if icmpv6_checksum(&src, &dst, icmp) != 0 {
            return None;
        }
        let target = v6_at(icmp, 8)?;
        if target.is_multicast() {
            return None;
        }
        let (mut slla, mut tlla) = (None, None);
        let mut opts = icmp.get(24..)?;
        while !opts.is_empty() {
            let ty = *opts.first()?;
            let len = *opts.get(1)? as usize * 8;
            if len == 0 {
                return None;
            }
            let opt = opts.get(..len)?;
            match ty {
                OPT_SLLA => slla = mac_at(opt, 2),
                OPT_TLLA => tlla = mac_at(opt, 2),
                _ => {}
            }
            opts = opts.get(len..)?;
        }
        let msg = match icmp[0] {
            NS_TYPE => {
                if src.is_unspecified() && (slla.is_some() || !is_solicited_node(&dst)) {
                    return None;
                }
                NdpMessage::Solicit { target, slla }
            }
            NA_TYPE => {
                let flags = icmp[4];
                let solicited = flags & 0x40 != 0;
                if solicited && dst.is_multicast() {
                    return None;
                }
                NdpMessage::Advert {
                    target,
                    router: flags & 0x80 != 0,
                    solicited,
                    override_: flags & 0x20 != 0,
                    tlla,
                }
            }
            _ => return None,
        };
        Some(NdpPacket {
            eth_dst: mac_at(eth, 0)?,
            eth_src: mac_at(eth, 6)?,
            src,
            dst,
            msg,
        })
    }
}

/// ff02::1, all nodes.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The solicited-node multicast address of `ip` (ff02::1:ffXX:XXXX).
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | o[13] as u16,
        u16::from_be_bytes([o[14], o[15]]),
    )
}

fn is_solicited_node(ip: &Ipv6Addr) -> bool {
    let s = ip.segments();
    s[..5] == [0xff02, 0, 0, 0, 0] && s[5] == 1 && s[6] >> 8 == 0xff
}

/// The Ethernet multicast MAC of an IPv6 multicast address (33:33 + its last 32 bits).
pub fn multicast_mac(ip: Ipv6Addr) -> Mac {
    let o = ip.octets();
    Mac([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// An unsolicited NA for `ip` from `mac` to all nodes, override set, solicited clear.
///
/// Why: RFC 4861 §7.2.6; with O set, neighbours that have an entry for `ip` switch to `mac`.
pub fn unsolicited_na(mac: Mac, ip: Ipv6Addr) -> NdpPacket {
    NdpPacket {
        eth_dst: multicast_mac(ALL_NODES),
        eth_src: mac,
        src: ip,
        dst: ALL_NODES,
        msg: NdpMessage::Advert {
            target: ip,
            router: false,
            solicited: false,
            override_: true,
            tlla: Some(mac),
        },
    }
}

/// A DAD probe for `ip`: NS from :: to its solicited-node group, without SLLA (RFC 4862 §5.4.2).
pub fn dad_ns(mac: Mac, ip: Ipv6Addr) -> NdpPacket {
    let dst = solicited_node(ip);
    NdpPacket {
        eth_dst: multicast_mac(dst),
        eth_src: mac,
        src: Ipv6Addr::UNSPECIFIED,
        dst,
        msg: NdpMessage::Solicit {
            target: ip,
            slla: None,
        },
    }
}

/// The NA answering `ns` for its target, from `mac` (RFC 4861 §7.2.4): to the solicitor
/// with S and O set, or to all nodes (S clear) when the NS came from :: (DAD).
pub fn na_reply(mac: Mac, ns: &NdpPacket) -> Option<NdpPacket> {
    let NdpMessage::Solicit { target, slla } = &ns.msg else {
        return None;
    };
    let (dst, eth_dst, solicited) = if ns.src.is_unspecified() {
        (ALL_NODES, multicast_mac(ALL_NODES), false)
    } else {
        (ns.src, slla.unwrap_or(ns.eth_src), true)
    };
    Some(NdpPacket {
        eth_dst,
        eth_src: mac,
        src: *target,
        dst,
        msg: NdpMessage::Advert {
            target: *target,
            router: false,
            solicited,
            override_: true,
            tlla: Some(mac),
        },
    })
}

/// Whether an ARP frame seen while probing `ip` shows another host holding it, and its MAC.
///
/// Conflicts (RFC 5227 §2.1.1): any ARP packet whose sender IP is `ip`, or another host's
/// probe for `ip` (sender IP 0.0.0.0). Our own frames (`own`) never count.
pub fn arp_conflict(pkt: &ArpPacket, ip: Ipv4Addr, own: Mac) -> Option<Mac> {
    if pkt.sha == own || pkt.eth_src == own || pkt.sha.is_multicast() {
        return None;
    }
    if pkt.spa == ip {
        return Some(pkt.sha);
    }
    if pkt.op == ArpOp::Request && pkt.spa.is_unspecified() && pkt.tpa == ip {
        return Some(pkt.sha);
    }
    None
}

/// Whether an NDP frame seen while probing `ip` shows another host holding it, and its MAC:
/// an NA for `ip`, or another host's DAD NS for `ip`. Our own frames never count.
pub fn ndp_conflict(pkt: &NdpPacket, ip: Ipv6Addr, own: Mac) -> Option<Mac> {
    if pkt.eth_src == own || pkt.eth_src.is_multicast() {
        return None;
    }
    match &pkt.msg {
        NdpMessage::Advert { target, tlla, .. } if *target == ip => {
            Some(tlla.filter(|m| !m.is_multicast()).unwrap_or(pkt.eth_src))
        }
        NdpMessage::Solicit { target, .. } if *target == ip && pkt.src.is_unspecified() => {
            Some(pkt.eth_src)
        }
        _ => None,
    }
}

/// The reply Berth's responder sends to an ARP frame, if it asks for one of `ips`.
///
/// Answers requests (including probes) from other hosts for an address in `ips`; ignores
/// replies, gratuitous ARPs (sender IP = target IP) and our own frames.
pub fn arp_answer(pkt: &ArpPacket, ips: &BTreeSet<IpAddr>, own: Mac) -> Option<ArpPacket> {
    if pkt.op != ArpOp::Request || pkt.sha == own || pkt.sha.is_multicast() {
        return None;
    }
    if pkt.spa == pkt.tpa || !ips.contains(&IpAddr::V4(pkt.tpa)) {
        return None;
    }
    Some(arp_reply(own, pkt))
}

/// The NA Berth's responder sends to an NDP frame, if it is an NS for one of `ips`.
pub fn ndp_answer(pkt: &NdpPacket, ips: &BTreeSet<IpAddr>, own: Mac) -> Option<NdpPacket> {
    let NdpMessage::Solicit { target, .. } = &pkt.msg else {
        return None;
    };
    if pkt.eth_src == own || pkt.eth_src.is_multicast() || !ips.contains(&IpAddr::V6(*target)) {
        return None;
    }
    na_reply(own, pkt)
}

/// An Ethernet frame carrying one UDP datagram from `from` to `to`, sent to the link-layer
/// address `via` (a router, which forwards it to `to`), with traffic class / TOS `tos` and
/// a hop limit of 64. `None` when the addresses' families differ or the datagram is too long.
///
/// Why: a heartbeat that also travels through the two-node witness (the LAN's router) still
/// arrives when the direct path between the two nodes alone is cut; the kernel's routing
/// would always send it straight to the on-link peer.
pub fn udp_via(
    src: Mac,
    via: Mac,
    from: SocketAddr,
    to: SocketAddr,
    tos: u8,
    payload: &[u8],
) -> Option<Vec<u8>> {
    let udp_len = u16::try_from(UDP_HDR + payload.len()).ok()?;
    let mut udp = Vec::with_capacity(usize::from(udp_len));
    udp.extend_from_slice(&from.port().to_be_bytes());
    udp.extend_from_slice(&to.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut f = Vec::with_capacity(ETH_HDR + IPV6_HDR + udp.len());
    f.extend_from_slice(&via.0);
    f.extend_from_slice(&src.0);
    match (from.ip(), to.ip()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let total = u16::try_from(IPV4_HDR + udp.len()).ok()?;
            let sum = inet_checksum(&[
                &a.octets(),
                &b.octets(),
                &[0, UDP],
                &udp_len.to_be_bytes(),
                &udp,
            ]);
            // 0 means "no checksum" in IPv4 UDP; a computed 0 is sent as its complement.
            let sum = if sum == 0 { 0xffff } else { sum };
            udp[6..8].copy_from_slice(&sum.to_be_bytes());
            f.extend_from_slice(&ETH_P_IP.to_be_bytes());
            let mut ip = [0u8; IPV4_HDR];
            ip[0] = 0x45;
            ip[1] = tos;
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            ip[6] = 0x40; // don't fragment
            ip[8] = 64;
            ip[9] = UDP;
            ip[12..16].copy_from_slice(&a.octets());
            ip[16..20].copy_from_slice(&b.octets());
            let hs = inet_checksum(&[&ip]);
            ip[10..12].copy_from_slice(&hs.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let sum = inet_checksum(&[
                &a.octets(),
                &b.octets(),
                &u32::from(udp_len).to_be_bytes(),
                &[0, 0, 0, UDP],
                &udp,
            ]);
            let sum = if sum == 0 { 0xffff } else { sum };
            udp[6..8].copy_from_slice(&sum.to_be_bytes());
            f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            f.push(0x60 | (tos >> 4));
            f.extend_from_slice(&[tos << 4, 0, 0]);
            f.extend_from_slice(&udp_len.to_be_bytes());
            f.extend_from_slice(&[UDP, 64]);
            f.extend_from_slice(&a.octets());
            f.extend_from_slice(&b.octets());
        }
        _ => return None,
    }
    f.extend_from_slice(&udp);
    Some(f)
}

/// The Internet checksum (RFC 1071) over `parts` laid end to end; every part but the last
/// has an even length.
fn inet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for p in parts {
        let mut chunks = p.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The ICMPv6 checksum of `msg` (with its checksum field as it is) under the pseudo-header.
/// Over a message whose checksum field is filled in, the result is 0 when it is correct.
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        let mut chunks = bytes.chunks_exact(2);
        for c in &mut chunks {
            sum += u16::from_be_bytes([c[0], c[1]]) as u32;
        }
        if let [last] = chunks.remainder() {
            sum += (*last as u32) << 8;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(msg);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

fn mac_at(b: &[u8], at: usize) -> Option<Mac> {
    Mac::from_slice(b.get(at..at + 6)?)
}

fn v4_at(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(s))
}

fn v6_at(b: &[u8], at: usize) -> Option<Ipv6Addr> {
    let s: [u8; 16] = b.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const A: Mac = Mac([0x02, 0, 0, 0, 0, 0x0a]);
    const B: Mac = Mac([0x02, 0, 0, 0, 0, 0x0b]);

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn garp_request_matches_the_wire_format() {
        let f = garp(A, v4("198.18.0.200"), GarpForm::Request).encode();
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &A.0);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&f[22..28], &A.0);
        assert_eq!(&f[28..32], &[198, 18, 0, 200]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[198, 18, 0, 200]);
        let r = ArpPacket::decode(&garp(A, v4("198.18.0.200"), GarpForm::Reply).encode()).unwrap();
        assert_eq!(
            (r.op, r.tha, r.spa, r.tpa),
            (ArpOp::Reply, A, v4("198.18.0.200"), v4("198.18.0.200"))
        );
    }

    #[test]
    fn arp_probe_conflict_and_answer() {
        let ip = v4("198.18.0.5");
        let probe = ArpPacket::decode(&arp_probe(A, ip).encode()).unwrap();
        assert_eq!(probe.spa, Ipv4Addr::UNSPECIFIED);
        // Our own probe is no conflict; B's probe for the same address is.
        assert_eq!(arp_conflict(&probe, ip, A), None);
        assert_eq!(arp_conflict(&probe, ip, B), Some(A));
        // B holds the address and answers A's probe: A learns B's MAC.
        let ips: BTreeSet<IpAddr> = [IpAddr::V4(ip)].into();
        let reply = arp_answer(&probe, &ips, B).unwrap();
        assert_eq!(
            (reply.eth_dst, reply.sha, reply.spa, reply.tpa),
            (A, B, ip, Ipv4Addr::UNSPECIFIED)
        );
        assert_eq!(
            arp_conflict(&ArpPacket::decode(&reply.encode()).unwrap(), ip, A),
            Some(B)
        );
        // Not for an address outside the set, not to a reply, not to a GARP.
        assert!(arp_answer(&probe, &BTreeSet::new(), B).is_none());
        assert!(arp_answer(&reply, &ips, A).is_none());
        assert!(arp_answer(&garp(A, ip, GarpForm::Request), &ips, B).is_none());
        // An unrelated request is not a conflict.
        let other = ArpPacket {
            spa: v4("198.18.0.9"),
            tpa: v4("198.18.0.1"),
            ..probe.clone()
        };
        assert_eq!(arp_conflict(&other, ip, B), None);
    }

    #[test]
    fn unsolicited_na_is_valid_and_checksummed() {
        let ip = v6("2001:db8::200");
        let f = unsolicited_na(A, ip).encode();
        assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(f[14 + 7], 255);
        let icmp = &f[54..];
        assert_eq!(icmpv6_checksum(&ip, &ALL_NODES, icmp), 0);
        assert_eq!(icmp[4], 0x20, "override only");
        let p = NdpPacket::decode(&f).unwrap();
        assert_eq!(
            p.msg,
            NdpMessage::Advert {
                target: ip,
                router: false,
                solicited: false,
                override_: true,
                tlla: Some(A)
            }
        );
        // One flipped bit breaks the checksum; a hop limit below 255 is refused.
        let mut bad = f.clone();
        bad[70] ^= 1;
        assert!(NdpPacket::decode(&bad).is_none());
        let mut hop = f.clone();
        hop[21] = 64;
        assert!(NdpPacket::decode(&hop).is_none());
    }

    /// A DAD Neighbor Solicitation Linux 6.18 sent (captured with tcpdump, "icmp6 sum ok"),
    /// with an RFC 7527 nonce option (type 14) the decoder must skip.
    const LINUX_DAD_NS: [u8; 86] = [
        0x33, 0x33, 0xff, 0x00, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x86, 0xdd, 0x60,
        0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x01, 0xff, 0x00, 0x00, 0x02, 0x87, 0x00, 0xe7, 0x4c, 0x00, 0x00,
        0x00, 0x00, 0xfe, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xfe,
        0x00, 0x00, 0x02, 0x0e, 0x01, 0x41, 0x3c, 0xe9, 0xe8, 0x5c, 0xa8,
    ];

    #[test]
    fn decodes_and_checksums_a_frame_linux_sent() {
        let f = &LINUX_DAD_NS;
        assert_eq!(
            icmpv6_checksum(&Ipv6Addr::UNSPECIFIED, &v6("ff02::1:ff00:2"), &f[54..]),
            0
        );
        let p = NdpPacket::decode(f).unwrap();
        let mac = Mac([2, 0, 0, 0, 0, 2]);
        assert_eq!(p.eth_src, mac);
        assert_eq!(p.src, Ipv6Addr::UNSPECIFIED);
        assert_eq!(
            p.msg,
            NdpMessage::Solicit {
                target: v6("fe80::ff:fe00:2"),
                slla: None
            }
        );
        // Our DAD probe is the same frame without the nonce option.
        let ours = dad_ns(mac, v6("fe80::ff:fe00:2")).encode();
        assert_eq!(&ours[..18], &f[..18]);
        assert_eq!(&ours[20..56], &f[20..56]);
        assert_eq!(&ours[58..78], &f[58..78]);
        assert_eq!(ours.len(), 78);
    }

    #[test]
    fn dad_probe_conflict_and_answer() {
        let ip = v6("2001:db8::5");
        let ns = NdpPacket::decode(&dad_ns(A, ip).encode()).unwrap();
        assert_eq!(ns.dst, v6("ff02::1:ff00:5"));
        assert_eq!(ns.eth_dst, Mac([0x33, 0x33, 0xff, 0, 0, 5]));
        assert_eq!(ndp_conflict(&ns, ip, A), None);
        assert_eq!(ndp_conflict(&ns, ip, B), Some(A));
        let ips: BTreeSet<IpAddr> = [IpAddr::V6(ip)].into();
        let na = ndp_answer(&ns, &ips, B).unwrap();
        assert_eq!((na.dst, na.eth_dst), (ALL_NODES, multicast_mac(ALL_NODES)));
        let na = NdpPacket::decode(&na.encode()).unwrap();
        assert_eq!(ndp_conflict(&na, ip, A), Some(B));
        // A normal NS (from an address, with SLLA) gets a unicast, solicited answer.
        let ns2 = NdpPacket {
            eth_dst: multicast_mac(solicited_node(ip)),
            eth_src: A,
            src: v6("2001:db8::9"),
            dst: solicited_node(ip),
            msg: NdpMessage::Solicit {
                target: ip,
                slla: Some(A),
            },
        };
        let ns2 = NdpPacket::decode(&ns2.encode()).unwrap();
        let na2 = NdpPacket::decode(&ndp_answer(&ns2, &ips, B).unwrap().encode()).unwrap();
        assert_eq!((na2.dst, na2.eth_dst, na2.src), (v6("2001:db8::9"), A, ip));
        assert!(
            matches!(na2.msg, NdpMessage::Advert { solicited: true, override_: true, tlla: Some(m), .. } if m == B)
        );
        assert!(ndp_answer(&ns2, &BTreeSet::new(), B).is_none());
        assert!(ndp_answer(&na2, &ips, B).is_none());
    }

    #[test]
    fn dad_ns_with_slla_or_wrong_destination_is_invalid() {
        let ip = v6("2001:db8::5");
        let mut p = dad_ns(A, ip);
        p.msg = NdpMessage::Solicit {
            target: ip,
            slla: Some(A),
        };
        assert!(NdpPacket::decode(&p.encode()).is_none());
        let mut p = dad_ns(A, ip);
        p.dst = ALL_NODES;
        assert!(NdpPacket::decode(&p.encode()).is_none());
    }

    #[test]
    fn udp_via_frames_are_valid_ipv4_and_ipv6() {
        let (src, via) = (Mac([2, 0, 0, 0, 0, 1]), Mac([2, 0, 0, 0, 0, 0xfe]));
        let from: SocketAddr = "198.18.0.11:7946".parse().unwrap();
        let to: SocketAddr = "198.18.0.12:7946".parse().unwrap();
        let f = udp_via(src, via, from, to, 0xc0, b"hello").unwrap();
        assert_eq!(&f[0..6], &via.0);
        assert_eq!(&f[6..12], &src.0);
        assert_eq!(be16(&f, 12), Some(ETH_P_IP));
        let ip = &f[ETH_HDR..ETH_HDR + IPV4_HDR];
        assert_eq!((ip[0], ip[1], ip[8], ip[9]), (0x45, 0xc0, 64, UDP));
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[2], ip[3]])),
            f.len() - ETH_HDR
        );
        assert_eq!(inet_checksum(&[ip]), 0, "IPv4 header checksum");
        let udp = &f[ETH_HDR + IPV4_HDR..];
        assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 7946);
        assert_eq!(&udp[8..], b"hello");
        let pseudo = inet_checksum(&[&ip[12..16], &ip[16..20], &[0, UDP], &udp[4..6], udp]);
        assert_eq!(pseudo, 0, "UDP checksum");

        let from: SocketAddr = "[2001:db8::11]:7946".parse().unwrap();
        let to: SocketAddr = "[2001:db8::12]:7000".parse().unwrap();
        let f = udp_via(src, via, from, to, 0xc0, b"odd").unwrap();
        assert_eq!(be16(&f, 12), Some(ETH_P_IPV6));
        let ip = &f[ETH_HDR..ETH_HDR + IPV6_HDR];
        assert_eq!((ip[0], ip[1] & 0xf0, ip[6], ip[7]), (0x6c, 0, UDP, 64));
        let udp = &f[ETH_HDR + IPV6_HDR..];
        assert_eq!(usize::from(u16::from_be_bytes([ip[4], ip[5]])), udp.len());
        let len = (udp.len() as u32).to_be_bytes();
        assert_eq!(
            inet_checksum(&[&ip[8..24], &ip[24..40], &len, &[0, 0, 0, UDP], udp]),
            0
        );
        assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 7000);

        assert!(udp_via(src, via, "198.18.0.1:1".parse().unwrap(), to, 0, b"").is_none());
    }

    #[test]
    fn solicited_node_addresses() {
        assert_eq!(
            solicited_node(v6("2001:db8::1:2345:6789")),
            v6("ff02::1:ff45:6789")
        );
        assert!(is_solicited_node(&v6("ff02::1:ff45:6789")));
        assert!(!is_solicited_node(&ALL_NODES));
    }

    fn arb_mac() -> impl Strategy<Value = Mac> {
        any::<[u8; 6]>().prop_map(|mut b| {
            b[0] &= 0xfe;
            Mac(b)
        })
    }

    proptest! {
        #[test]
        fn decoders_never_panic(frame in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ArpPacket::decode(&frame);
            let _ = NdpPacket::decode(&frame);
        }

        #[test]
        fn decoders_never_panic_on_mutated_valid_frames(
            mac in arb_mac(), ip in any::<[u8; 16]>(), cut in 0usize..100,
            flips in proptest::collection::vec((0usize..100, any::<u8>()), 0..6),
        ) {
            let ip6 = Ipv6Addr::from(ip);
            for mut f in [dad_ns(mac, ip6).encode(), unsolicited_na(mac, ip6).encode(),
                          arp_probe(mac, Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])).encode()] {
                for (at, x) in &flips {
                    if let Some(b) = f.get_mut(*at) { *b ^= x; }
                }
                f.truncate(cut.min(f.len()));
                let _ = ArpPacket::decode(&f);
                let _ = NdpPacket::decode(&f);
            }
        }

        #[test]
        fn arp_round_trips(sha in arb_mac(), tha in arb_mac(), spa in any::<u32>(), tpa in any::<u32>(), reply in any::<bool>()) {
            let p = ArpPacket {
                eth_dst: Mac::BROADCAST, eth_src: sha,
                op: if reply { ArpOp::Reply } else { ArpOp::Request },
                sha, spa: Ipv4Addr::from(spa), tha, tpa: Ipv4Addr::from(tpa),
            };
            prop_assert_eq!(ArpPacket::decode(&p.encode()), Some(p));
        }

        #[test]
        fn ndp_round_trips(mac in arb_mac(), src in any::<[u8; 16]>(), target in any::<[u8; 16]>(),
                           r in any::<bool>(), o in any::<bool>()) {
            let mut target = target;
            target[0] = 0x20; // not multicast
            let src = Ipv6Addr::from(src);
            let target = Ipv6Addr::from(target);
            let na = NdpPacket {
                eth_dst: B, eth_src: mac, src, dst: target,
                msg: NdpMessage::Advert { target, router: r, solicited: true, override_: o, tlla: Some(mac) },
            };
            prop_assert_eq!(NdpPacket::decode(&na.encode()), Some(na));
            prop_assert_eq!(NdpPacket::decode(&dad_ns(mac, target).encode()), Some(dad_ns(mac, target)));
        }
    }
}
