//! Path attributes: parsing with RFC 7606 revised error handling, and encoding
//! of the attributes this speaker originates.
//!
//! RFC 7606 replaces "reset the session on any attribute error" with three
//! outcomes: *attribute discard* (drop just that attribute), *treat-as-withdraw*
//! (the UPDATE's routes are withdrawn, the session stays up) and *session reset*
//! (only when the NLRI cannot be located reliably, e.g. a broken MP_REACH_NLRI).
//! [`parse`] returns `Err` only for the last case.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::codec::{decode_prefixes, err, DecodeError, AFI_IPV4, AFI_IPV6, AS_TRANS, SAFI_UNICAST};
use crate::prefix::Prefix;

/// Attribute type codes used here.
pub mod code {
    /// ORIGIN.
    pub const ORIGIN: u8 = 1;
    /// AS_PATH.
    pub const AS_PATH: u8 = 2;
    /// NEXT_HOP.
    pub const NEXT_HOP: u8 = 3;
    /// MULTI_EXIT_DISC.
    pub const MED: u8 = 4;
    /// LOCAL_PREF.
    pub const LOCAL_PREF: u8 = 5;
    /// ATOMIC_AGGREGATE.
    pub const ATOMIC_AGGREGATE: u8 = 6;
    /// AGGREGATOR.
    pub const AGGREGATOR: u8 = 7;
    /// COMMUNITIES (RFC 1997).
    pub const COMMUNITIES: u8 = 8;
    /// MP_REACH_NLRI (RFC 4760).
    pub const MP_REACH: u8 = 14;
    /// MP_UNREACH_NLRI (RFC 4760).
    pub const MP_UNREACH: u8 = 15;
    /// AS4_PATH (RFC 6793).
    pub const AS4_PATH: u8 = 17;
    /// AS4_AGGREGATOR (RFC 6793).
    pub const AS4_AGGREGATOR: u8 = 18;
    /// LARGE_COMMUNITY (RFC 8092).
    pub const LARGE_COMMUNITY: u8 = 32;
}

const OPTIONAL: u8 = 0x80;
const TRANSITIVE: u8 = 0x40;
const EXTENDED: u8 = 0x10;

/// ORIGIN values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Origin {
    /// Learned from an IGP (what a node announcing its own addresses uses).
    #[default]
    Igp,
    /// Learned from EGP.
    Egp,
    /// Unknown origin.
    Incomplete,
}

/// An RFC 8092 large community `global:local1:local2`.
pub type LargeCommunity = [u32; 3];

/// AS_PATH segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsSegment {
    /// True for AS_SEQUENCE, false for AS_SET (confederation types are kept as sequences).
    pub sequence: bool,
    /// AS numbers.
    pub asns: Vec<u32>,
}

/// Multiprotocol reachable NLRI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpReach {
    /// Address family.
    pub afi: u16,
    /// Subsequent address family.
    pub safi: u8,
    /// Next hops: one global, optionally followed by a link-local (IPv6).
    pub next_hops: Vec<IpAddr>,
    /// Announced prefixes.
    pub nlri: Vec<Prefix>,
}

/// Multiprotocol unreachable NLRI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpUnreach {
    /// Address family.
    pub afi: u16,
    /// Subsequent address family.
    pub safi: u8,
    /// Withdrawn prefixes.
    pub withdrawn: Vec<Prefix>,
}

/// Path attributes of a received UPDATE after validation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PathAttributes {
    /// ORIGIN.
    pub origin: Option<Origin>,
    /// AS_PATH (AS4_PATH merged when the session is 2-octet).
    pub as_path: Option<Vec<AsSegment>>,
    /// IPv4 NEXT_HOP.
    pub next_hop: Option<Ipv4Addr>,
    /// MED.
    pub med: Option<u32>,
    /// LOCAL_PREF (iBGP only).
    pub local_pref: Option<u32>,
    /// ATOMIC_AGGREGATE present.
    pub atomic_aggregate: bool,
    /// AGGREGATOR (AS, address).
    pub aggregator: Option<(u32, Ipv4Addr)>,
    /// Standard communities.
    pub communities: Vec<u32>,
    /// Large communities.
    pub large_communities: Vec<LargeCommunity>,
    /// MP_REACH_NLRI.
    pub mp_reach: Option<MpReach>,
    /// MP_UNREACH_NLRI.
    pub mp_unreach: Option<MpUnreach>,
    /// Type codes of optional attributes not understood here (passed over).
    pub unknown: Vec<u8>,
}

/// What became of a received UPDATE's attributes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    /// The attributes that survived.
    pub attrs: PathAttributes,
    /// RFC 7606 treat-as-withdraw: the UPDATE's announcements become withdrawals.
    pub treat_as_withdraw: bool,
    /// Problems found, for logs and counters (one line each).
    pub problems: Vec<String>,
}

/// Parsing context the attribute rules depend on.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// 4-octet AS negotiated (RFC 6793).
    pub four_octet: bool,
    /// The peer is internal (LOCAL_PREF mandatory, accepted).
    pub ibgp: bool,
    /// The peer's AS, for the eBGP first-AS check; `None` to skip it.
    pub peer_as: Option<u32>,
}

fn flags_ok(ty: u8, flags: u8) -> bool {
    let ot = flags & (OPTIONAL | TRANSITIVE);
    match ty {
        code::ORIGIN
        | code::AS_PATH
        | code::NEXT_HOP
        | code::LOCAL_PREF
        | code::ATOMIC_AGGREGATE => ot == TRANSITIVE,
        code::MED | code::MP_REACH | code::MP_UNREACH => ot == OPTIONAL,
        code::AGGREGATOR
        | code::COMMUNITIES
        | code::AS4_PATH
        | code::AS4_AGGREGATOR
        | code::LARGE_COMMUNITY => ot == OPTIONAL | TRANSITIVE,
        _ => true,
    }
}

fn parse_as_path(v: &[u8], four: bool) -> Option<Vec<AsSegment>> {
    let w = if four { 4 } else { 2 };
    let mut segs = Vec::new();
    let mut rest = v;
    while !rest.is_empty() {
        if rest.len() < 2 {
            return None;
        }
        let (ty, n) = (rest[0], usize::from(rest[1]));
        if !(1..=4).contains(&ty) || n == 0 || rest.len() < 2 + n * w {
            return None;
        }
        let asns = rest[2..2 + n * w]
            .chunks_exact(w)
            .map(|c| {
                if four {
                    u32::from_be_bytes([c[0], c[1], c[2], c[3]])
                } else {
                    u32::from(u16::from_be_bytes([c[0], c[1]]))
                }
            })
            .collect();
        segs.push(AsSegment {
            sequence: ty != 1 && ty != 4,
            asns,
        });
        rest = &rest[2 + n * w..];
    }
    Some(segs)
}

fn parse_next_hops(afi: u16, nh: &[u8]) -> Option<Vec<IpAddr>> {
    match (afi, nh.len()) {
        (AFI_IPV4, 4) => Some(vec![IpAddr::V4(Ipv4Addr::new(nh[0], nh[1], nh[2], nh[3]))]),
        (AFI_IPV4, 16) | (AFI_IPV6, 16) | (AFI_IPV6, 32) | (AFI_IPV4, 32) => Some(
            nh.chunks_exact(16)
                .map(|c| {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(c);
                    IpAddr::V6(Ipv6Addr::from(o))
                })
                .collect(),
        ),
        _ => None,
    }
}

fn mp_reset(why: &'static str) -> DecodeError {
    DecodeError::new(err::UPDATE, 9, vec![], why)
}

/// Parses and validates the raw attribute block of an UPDATE.
///
/// `has_nlri` says whether the classic NLRI field carried prefixes (then
/// ORIGIN, AS_PATH and NEXT_HOP are mandatory). Returns `Err` only when the
/// session must be reset (RFC 7606 §3 (j)/§7.11: MP_REACH/MP_UNREACH broken
/// or duplicated), since then the routes the UPDATE affects are unknown.
pub fn parse(data: &[u8], has_nlri: bool, ctx: Context) -> Result<Parsed, DecodeError> {
    let mut out = Parsed::default();
    let mut seen = [false; 256];
    let mut rest = data;
    let mut as4_path = None;
    let mut as4_aggr = None;
    let withdraw = |out: &mut Parsed, why: String| {
        out.treat_as_withdraw = true;
        out.problems.push(why);
    };
    while !rest.is_empty() {
        if rest.len() < 3 {
            withdraw(&mut out, "attribute header truncated".into());
            break;
        }
        let (flags, ty) = (rest[0], rest[1]);
        let (len, hl) = if flags & EXTENDED != 0 {
            if rest.len() < 4 {
                withdraw(&mut out, "attribute header truncated".into());
                break;
            }
            (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4)
        } else {
            (usize::from(rest[2]), 3)
        };
        if rest.len() < hl + len {
            // RFC 7606 §4: attribute overruns the attribute field.
            if seen[usize::from(code::MP_REACH)] || ty == code::MP_REACH || ty == code::MP_UNREACH {
                return Err(mp_reset("attribute overrun next to MP_REACH/MP_UNREACH"));
            }
            withdraw(
                &mut out,
                format!("attribute {ty} length {len} overruns the attribute field"),
            );
            break;
        }
        let v = &rest[hl..hl + len];
        rest = &rest[hl + len..];
        let dup = std::mem::replace(&mut seen[usize::from(ty)], true);
        if dup {
            if ty == code::MP_REACH || ty == code::MP_UNREACH {
                return Err(mp_reset("duplicate MP_REACH_NLRI/MP_UNREACH_NLRI"));
            }
            // RFC 7606 §3 (g): keep the first, discard the rest.
            out.problems
                .push(format!("duplicate attribute {ty} discarded"));
            continue;
        }
        if !flags_ok(ty, flags) {
            if ty == code::MP_REACH || ty == code::MP_UNREACH {
                return Err(mp_reset("bad flags on MP_REACH/MP_UNREACH"));
            }
            withdraw(
                &mut out,
                format!("attribute {ty} has flags {flags:#04x} in conflict with its type"),
            );
            continue;
        }
        let a = &mut out.attrs;
        match ty {
            code::ORIGIN => match v {
                [0] => a.origin = Some(Origin::Igp),
                [1] => a.origin = Some(Origin::Egp),
                [2] => a.origin = Some(Origin::Incomplete),
                _ => withdraw(&mut out, "malformed ORIGIN".into()),
            },
            code::AS_PATH => match parse_as_path(v, ctx.four_octet) {
                Some(p) => a.as_path = Some(p),
                None => withdraw(&mut out, "malformed AS_PATH".into()),
            },
            code::NEXT_HOP => {
                if v.len() != 4 {
                    withdraw(&mut out, "NEXT_HOP length is not 4".into());
                } else {
                    let nh = Ipv4Addr::new(v[0], v[1], v[2], v[3]);
                    if nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast() {
                        withdraw(&mut out, format!("NEXT_HOP {nh} is not a unicast address"));
                    } else {
                        a.next_hop = Some(nh);
                    }
                }
            }
            code::MED => match v {
                [a0, a1, a2, a3] => a.med = Some(u32::from_be_bytes([*a0, *a1, *a2, *a3])),
                _ => withdraw(&mut out, "MED length is not 4".into()),
            },
            code::LOCAL_PREF => {
                if !ctx.ibgp {
                    // RFC 7606 §7.5: from an external peer, discard.
                    out.problems
                        .push("LOCAL_PREF from external peer discarded".into());
                } else if let [a0, a1, a2, a3] = v {
                    a.local_pref = Some(u32::from_be_bytes([*a0, *a1, *a2, *a3]));
                } else {
                    withdraw(&mut out, "LOCAL_PREF length is not 4".into());
                }
            }
            code::ATOMIC_AGGREGATE => {
                if v.is_empty() {
                    a.atomic_aggregate = true;
                } else {
                    out.problems
                        .push("malformed ATOMIC_AGGREGATE discarded".into());
                }
            }
            code::AGGREGATOR => {
                let want = if ctx.four_octet { 8 } else { 6 };
                if v.len() == want {
                    let (asn, ip) = if ctx.four_octet {
                        (u32::from_be_bytes([v[0], v[1], v[2], v[3]]), &v[4..8])
                    } else {
                        (u32::from(u16::from_be_bytes([v[0], v[1]])), &v[2..6])
                    };
                    a.aggregator = Some((asn, Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])));
                } else {
                    out.problems.push("malformed AGGREGATOR discarded".into());
                }
            }
            code::COMMUNITIES => {
                if v.is_empty() || v.len() % 4 != 0 {
                    withdraw(&mut out, "malformed COMMUNITIES".into());
                } else {
                    a.communities = v
                        .chunks_exact(4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                }
            }
            code::LARGE_COMMUNITY => {
                if v.is_empty() || v.len() % 12 != 0 {
                    withdraw(&mut out, "malformed LARGE_COMMUNITY".into());
                } else {
                    a.large_communities = v
                        .chunks_exact(12)
                        .map(|c| {
                            let w =
                                |i: usize| u32::from_be_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
                            [w(0), w(4), w(8)]
                        })
                        .collect();
                }
            }
            code::MP_REACH => {
                if v.len() < 5 {
                    return Err(mp_reset("MP_REACH_NLRI too short"));
                }
                let afi = u16::from_be_bytes([v[0], v[1]]);
                let safi = v[2];
                let nhl = usize::from(v[3]);
                let nh = v
                    .get(4..4 + nhl)
                    .ok_or_else(|| mp_reset("MP_REACH_NLRI next hop overruns"))?;
                let after = v
                    .get(4 + nhl + 1..)
                    .ok_or_else(|| mp_reset("MP_REACH_NLRI truncated"))?;
                if safi != SAFI_UNICAST || (afi != AFI_IPV4 && afi != AFI_IPV6) {
                    out.problems
                        .push(format!("MP_REACH_NLRI for AFI {afi} SAFI {safi} ignored"));
                    continue;
                }
                let nlri = decode_prefixes(after, afi == AFI_IPV6)
                    .ok_or_else(|| mp_reset("MP_REACH_NLRI prefixes malformed"))?;
                match parse_next_hops(afi, nh) {
                    Some(next_hops) => {
                        a.mp_reach = Some(MpReach {
                            afi,
                            safi,
                            next_hops,
                            nlri,
                        })
                    }
                    None => {
                        // Prefixes known, next hop unusable: treat-as-withdraw (§7.11).
                        a.mp_reach = Some(MpReach {
                            afi,
                            safi,
                            next_hops: vec![],
                            nlri,
                        });
                        withdraw(
                            &mut out,
                            format!("MP_REACH_NLRI next hop length {nhl} invalid"),
                        );
                    }
                }
            }
            code::MP_UNREACH => {
                if v.len() < 3 {
                    return Err(mp_reset("MP_UNREACH_NLRI too short"));
                }
                let afi = u16::from_be_bytes([v[0], v[1]]);
                let safi = v[2];
                if safi != SAFI_UNICAST || (afi != AFI_IPV4 && afi != AFI_IPV6) {
                    out.problems
                        .push(format!("MP_UNREACH_NLRI for AFI {afi} SAFI {safi} ignored"));
                    continue;
                }
                let withdrawn = decode_prefixes(&v[3..], afi == AFI_IPV6)
                    .ok_or_else(|| mp_reset("MP_UNREACH_NLRI prefixes malformed"))?;
                a.mp_unreach = Some(MpUnreach {
                    afi,
                    safi,
                    withdrawn,
                });
            }
            code::AS4_PATH => {
                // RFC 6793 §6 as updated by RFC 7606 §7.2: discard if malformed.
                if ctx.four_octet {
                    out.problems
                        .push("AS4_PATH on a 4-octet session discarded".into());
                } else {
                    match parse_as_path(v, true) {
                        Some(p) => as4_path = Some(p),
                        None => out.problems.push("malformed AS4_PATH discarded".into()),
                    }
                }
            }
            code::AS4_AGGREGATOR => {
                if v.len() == 8 && !ctx.four_octet {
                    as4_aggr = Some((
                        u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
                        Ipv4Addr::new(v[4], v[5], v[6], v[7]),
                    ));
                } else {
                    out.problems.push("AS4_AGGREGATOR discarded".into());
                }
            }
            _ => {
                if flags & OPTIONAL == 0 {
                    // Unrecognized well-known attribute. RFC 4271 would reset the
                    // session; we withdraw the routes instead so one odd UPDATE
                    // cannot flap everything the peer sends.
                    withdraw(&mut out, format!("unrecognized well-known attribute {ty}"));
                } else {
                    out.attrs.unknown.push(ty);
                }
            }
        }
    }
    // RFC 6793 §4.2.3: reconstruct the path from AS4_PATH on 2-octet sessions.
    if let (Some(p4), Some(p)) = (as4_path, out.attrs.as_path.as_mut()) {
        let n2: usize = p
            .iter()
            .map(|s| if s.sequence { s.asns.len() } else { 1 })
            .sum();
        let n4: usize = p4
            .iter()
            .map(|s| if s.sequence { s.asns.len() } else { 1 })
            .sum();
        if n4 <= n2 {
            let mut keep = n2 - n4.min(n2);
            let mut merged = Vec::new();
            for s in p.iter() {
                if keep == 0 {
                    break;
                }
                if s.sequence {
                    let take = s.asns.len().min(keep);
                    merged.push(AsSegment {
                        sequence: true,
                        asns: s.asns[..take].to_vec(),
                    });
                    keep -= take;
                } else {
                    merged.push(s.clone());
                    keep -= 1;
                }
            }
            merged.extend(p4);
            *p = merged;
        }
    }
    if let Some(a4) = as4_aggr {
        if out.attrs.aggregator.map(|(a, _)| a) == Some(u32::from(AS_TRANS)) {
            out.attrs.aggregator = Some(a4);
        }
    }
    let announces = has_nlri
        || out
            .attrs
            .mp_reach
            .as_ref()
            .is_some_and(|m| !m.nlri.is_empty());
    if announces {
        let a = &out.attrs;
        let mut missing = Vec::new();
        if a.origin.is_none() && !seen[usize::from(code::ORIGIN)] {
            missing.push("ORIGIN");
        }
        if a.as_path.is_none() && !seen[usize::from(code::AS_PATH)] {
            missing.push("AS_PATH");
        }
        if has_nlri && a.next_hop.is_none() && !seen[usize::from(code::NEXT_HOP)] {
            missing.push("NEXT_HOP");
        }
        if ctx.ibgp && a.local_pref.is_none() && !seen[usize::from(code::LOCAL_PREF)] {
            missing.push("LOCAL_PREF");
        }
        if !missing.is_empty() {
            withdraw(
                &mut out,
                format!("missing mandatory attribute(s) {}", missing.join(", ")),
            );
        }
        if let (Some(peer_as), Some(path)) = (ctx.peer_as, out.attrs.as_path.as_ref()) {
            if !ctx.ibgp && path.first().and_then(|s| s.asns.first()) != Some(&peer_as) {
                withdraw(
                    &mut out,
                    format!("AS_PATH does not start with the peer's AS {peer_as}"),
                );
            }
        }
    }
    Ok(out)
}

/// Attributes this speaker attaches to the routes it originates. One value is
/// shared by every prefix that carries it, which is how the RIB-out batches
/// prefixes into few UPDATEs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RouteAttrs {
    /// ORIGIN (IGP by default).
    pub origin: Origin,
    /// MED, if any.
    pub med: Option<u32>,
    /// LOCAL_PREF sent to internal peers (100 when `None`).
    pub local_pref: Option<u32>,
    /// Standard communities `(asn << 16) | value`.
    pub communities: Vec<u32>,
    /// Large communities.
    pub large_communities: Vec<LargeCommunity>,
    /// Next hop override; the session's local address when `None`.
    pub next_hop: Option<IpAddr>,
}

/// Session facts the encoder needs.
#[derive(Debug, Clone, Copy)]
pub struct EncodeContext {
    /// Local AS.
    pub local_as: u32,
    /// Peer is internal.
    pub ibgp: bool,
    /// 4-octet AS negotiated.
    pub four_octet: bool,
}

fn push_attr(out: &mut Vec<u8>, flags: u8, ty: u8, v: &[u8]) {
    if v.len() > 255 {
        out.push(flags | EXTENDED);
        out.push(ty);
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    } else {
        out.push(flags);
        out.push(ty);
        out.push(v.len() as u8);
    }
    out.extend_from_slice(v);
}

/// Encodes every attribute except MP_REACH_NLRI. `next_hop_v4` is the IPv4
/// NEXT_HOP, present when the UPDATE carries IPv4 NLRI.
pub fn encode_common(
    a: &RouteAttrs,
    ctx: EncodeContext,
    next_hop_v4: Option<Ipv4Addr>,
    out: &mut Vec<u8>,
) {
    let origin = match a.origin {
        Origin::Igp => 0,
        Origin::Egp => 1,
        Origin::Incomplete => 2,
    };
    push_attr(out, TRANSITIVE, code::ORIGIN, &[origin]);
    if ctx.ibgp {
        push_attr(out, TRANSITIVE, code::AS_PATH, &[]);
    } else if ctx.four_octet {
        let mut v = vec![2, 1];
        v.extend_from_slice(&ctx.local_as.to_be_bytes());
        push_attr(out, TRANSITIVE, code::AS_PATH, &v);
    } else {
        let two = u16::try_from(ctx.local_as).unwrap_or(AS_TRANS);
        let mut v = vec![2, 1];
        v.extend_from_slice(&two.to_be_bytes());
        push_attr(out, TRANSITIVE, code::AS_PATH, &v);
        if two == AS_TRANS {
            let mut v4 = vec![2, 1];
            v4.extend_from_slice(&ctx.local_as.to_be_bytes());
            push_attr(out, OPTIONAL | TRANSITIVE, code::AS4_PATH, &v4);
        }
    }
    if let Some(nh) = next_hop_v4 {
        push_attr(out, TRANSITIVE, code::NEXT_HOP, &nh.octets());
    }
    if let Some(med) = a.med {
        push_attr(out, OPTIONAL, code::MED, &med.to_be_bytes());
    }
    if ctx.ibgp {
        push_attr(
            out,
            TRANSITIVE,
            code::LOCAL_PREF,
            &a.local_pref.unwrap_or(100).to_be_bytes(),
        );
    }
    if !a.communities.is_empty() {
        let v: Vec<u8> = a.communities.iter().flat_map(|c| c.to_be_bytes()).collect();
        push_attr(out, OPTIONAL | TRANSITIVE, code::COMMUNITIES, &v);
    }
    if !a.large_communities.is_empty() {
        let v: Vec<u8> = a
            .large_communities
            .iter()
            .flat_map(|c| c.iter().flat_map(|x| x.to_be_bytes()))
            .collect();
        push_attr(out, OPTIONAL | TRANSITIVE, code::LARGE_COMMUNITY, &v);
    }
}

/// Encodes MP_REACH_NLRI for `afi` with the given next hops and prefixes.
pub fn encode_mp_reach(afi: u16, next_hops: &[IpAddr], nlri: &[Prefix], out: &mut Vec<u8>) {
    let mut v = Vec::with_capacity(64 + nlri.len() * 17);
    v.extend_from_slice(&afi.to_be_bytes());
    v.push(SAFI_UNICAST);
    let mut nh = Vec::new();
    for h in next_hops {
        match h {
            IpAddr::V4(a) => nh.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => nh.extend_from_slice(&a.octets()),
        }
    }
    v.push(nh.len() as u8);
    v.extend_from_slice(&nh);
    v.push(0);
    for p in nlri {
        p.encode(&mut v);
    }
    push_attr(out, OPTIONAL, code::MP_REACH, &v);
}

/// Encodes MP_UNREACH_NLRI for `afi`; with no prefixes this is the End-of-RIB
/// marker of that family (RFC 4724 §2).
pub fn encode_mp_unreach(afi: u16, withdrawn: &[Prefix], out: &mut Vec<u8>) {
    let mut v = Vec::with_capacity(3 + withdrawn.len() * 17);
    v.extend_from_slice(&afi.to_be_bytes());
    v.push(SAFI_UNICAST);
    for p in withdrawn {
        p.encode(&mut v);
    }
    push_attr(out, OPTIONAL, code::MP_UNREACH, &v);
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: Context = Context {
        four_octet: true,
        ibgp: false,
        peer_as: Some(64512),
    };
    const ECTX: EncodeContext = EncodeContext {
        local_as: 64512,
        ibgp: false,
        four_octet: true,
    };

    fn sample() -> Vec<u8> {
        let a = RouteAttrs {
            med: Some(5),
            communities: vec![(64512 << 16) | 100],
            large_communities: vec![[64512, 1, 2]],
            ..Default::default()
        };
        let mut v = Vec::new();
        encode_common(&a, ECTX, Some(Ipv4Addr::new(198, 18, 0, 2)), &mut v);
        v
    }

    #[test]
    fn roundtrip_own_attributes() {
        let p = parse(&sample(), true, CTX).unwrap();
        assert!(!p.treat_as_withdraw, "{:?}", p.problems);
        assert_eq!(p.attrs.med, Some(5));
        assert_eq!(p.attrs.communities, vec![(64512 << 16) | 100]);
        assert_eq!(p.attrs.large_communities, vec![[64512, 1, 2]]);
        assert_eq!(p.attrs.next_hop, Some(Ipv4Addr::new(198, 18, 0, 2)));
    }

    #[test]
    fn bad_origin_is_treat_as_withdraw() {
        let mut v = sample();
        v[3] = 7; // ORIGIN value
        let p = parse(&v, true, CTX).unwrap();
        assert!(p.treat_as_withdraw);
    }

    #[test]
    fn missing_next_hop_is_treat_as_withdraw() {
        let a = RouteAttrs::default();
        let mut v = Vec::new();
        encode_common(&a, ECTX, None, &mut v);
        assert!(parse(&v, true, CTX).unwrap().treat_as_withdraw);
        // Without NLRI nothing is mandatory.
        assert!(!parse(&v, false, CTX).unwrap().treat_as_withdraw);
    }

    #[test]
    fn broken_mp_reach_resets() {
        let mut v = Vec::new();
        push_attr(&mut v, OPTIONAL, code::MP_REACH, &[0, 2, 1, 40, 1]);
        assert!(parse(&v, false, CTX).is_err());
    }

    #[test]
    fn mp_reach_roundtrip() {
        let mut v = sample();
        let p: Prefix = "2001:db8::1/128".parse().unwrap();
        let nh: Vec<IpAddr> = vec!["2001:db8::2".parse().unwrap(), "fe80::1".parse().unwrap()];
        encode_mp_reach(AFI_IPV6, &nh, &[p], &mut v);
        let r = parse(&v, false, CTX).unwrap();
        let m = r.attrs.mp_reach.unwrap();
        assert_eq!(m.nlri, vec![p]);
        assert_eq!(m.next_hops, nh);
    }
}
