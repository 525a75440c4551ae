//! Adj-RIB-Out: what a peer should have, what it has been sent, and the
//! UPDATEs that take it from one to the other.
//!
//! Prefixes sharing one attribute set travel in one UPDATE (as many as fit in
//! 4096 octets), so 10,000 host routes with the same communities cost a dozen
//! messages, not 10,000.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::attributes::{
    encode_common, encode_mp_reach, encode_mp_unreach, EncodeContext, RouteAttrs,
};
use crate::codec::{Message, Update, AFI_IPV4, AFI_IPV6, HEADER_LEN, MAX_MESSAGE_LEN};
use crate::prefix::Prefix;

/// Routes for one peer: prefix → attributes (shared between prefixes).
pub type RouteSet = BTreeMap<Prefix, Arc<RouteAttrs>>;

/// Next hops a session fills in when a route does not override them
/// ("next hop self").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NextHops {
    /// IPv4 next hop for IPv4 routes.
    pub v4: Option<Ipv4Addr>,
    /// Global IPv6 next hop for IPv6 routes.
    pub v6: Option<Ipv6Addr>,
    /// Link-local IPv6 next hop sent after the global one, for on-link peers.
    pub v6_link_local: Option<Ipv6Addr>,
}

/// Families negotiated with the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    /// IPv4 unicast.
    pub v4: bool,
    /// IPv6 unicast.
    pub v6: bool,
}

/// Changes between what was sent and what is wanted.
#[derive(Debug, Default)]
pub struct Diff {
    /// Prefixes to withdraw.
    pub withdraw: Vec<Prefix>,
    /// Prefixes to announce (new or changed).
    pub announce: Vec<(Prefix, Arc<RouteAttrs>)>,
}

/// Compares two route sets in one merge pass.
pub fn diff(sent: &RouteSet, want: &RouteSet) -> Diff {
    let mut d = Diff::default();
    let mut a = sent.iter().peekable();
    let mut b = want.iter().peekable();
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((p, _)), None) => {
                d.withdraw.push(**p);
                a.next();
            }
            (None, Some((p, at))) => {
                d.announce.push((**p, Arc::clone(at)));
                b.next();
            }
            (Some((pa, aa)), Some((pb, ab))) => {
                if pa < pb {
                    d.withdraw.push(**pa);
                    a.next();
                } else if pb < pa {
                    d.announce.push((**pb, Arc::clone(ab)));
                    b.next();
                } else {
                    if !Arc::ptr_eq(aa, ab) && aa != ab {
                        d.announce.push((**pb, Arc::clone(ab)));
                    }
                    a.next();
                    b.next();
                }
            }
        }
    }
    d
}

/// Output of [`build`]: encoded UPDATEs and the prefixes that could not be
/// sent (no usable next hop or family not negotiated).
#[derive(Debug, Default)]
pub struct Built {
    /// Encoded messages, each ≤ 4096 octets.
    pub messages: Vec<Vec<u8>>,
    /// Prefixes left out, with the reason.
    pub skipped: Vec<(Prefix, &'static str)>,
}

/// Room for attributes + NLRI after the header and the two length fields.
const BODY: usize = MAX_MESSAGE_LEN - HEADER_LEN - 4;

fn pack(prefixes: &[Prefix], room: usize) -> Vec<&[Prefix]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, p) in prefixes.iter().enumerate() {
        let l = p.wire_len();
        if used + l > room && i > start {
            chunks.push(&prefixes[start..i]);
            start = i;
            used = 0;
        }
        used += l;
    }
    if start < prefixes.len() {
        chunks.push(&prefixes[start..]);
    }
    chunks
}

fn update_bytes(withdrawn: &[Prefix], attrs: Vec<u8>, nlri: &[Prefix]) -> Vec<u8> {
    Message::Update(Update {
        withdrawn: withdrawn.to_vec(),
        attributes: attrs,
        nlri: nlri.to_vec(),
    })
    .to_bytes()
}

/// Encodes withdrawals and announcements into as few UPDATEs as fit.
pub fn build(d: &Diff, ctx: EncodeContext, nh: NextHops, fam: Families) -> Built {
    let mut out = Built::default();
    let (w4, w6): (Vec<Prefix>, Vec<Prefix>) = d.withdraw.iter().partition(|p| p.is_v4());
    if fam.v4 {
        for c in pack(&w4, BODY) {
            out.messages.push(update_bytes(c, vec![], &[]));
        }
    }
    if fam.v6 {
        // MP_UNREACH_NLRI header: 4 (extended attr header) + 3 (AFI/SAFI).
        for c in pack(&w6, BODY - 7) {
            let mut a = Vec::new();
            encode_mp_unreach(AFI_IPV6, c, &mut a);
            out.messages.push(update_bytes(&[], a, &[]));
        }
    }
    // Group announcements by (family, attributes).
    let mut groups: BTreeMap<(bool, &RouteAttrs), Vec<Prefix>> = BTreeMap::new();
    for (p, a) in &d.announce {
        groups.entry((p.is_v4(), a.as_ref())).or_default().push(*p);
    }
    for ((v4, attrs), prefixes) in groups {
        if v4 {
            if !fam.v4 {
                out.skipped
                    .extend(prefixes.iter().map(|p| (*p, "IPv4 unicast not negotiated")));
                continue;
            }
            let nh4 = match attrs.next_hop {
                Some(IpAddr::V4(a)) => Some(a),
                _ => nh.v4,
            };
            let Some(nh4) = nh4 else {
                out.skipped.extend(
                    prefixes
                        .iter()
                        .map(|p| (*p, "no IPv4 next hop (set next_hop_v4)")),
                );
                continue;
            };
            let mut common = Vec::new();
            encode_common(attrs, ctx, Some(nh4), &mut common);
            for c in pack(&prefixes, BODY.saturating_sub(common.len())) {
                out.messages.push(update_bytes(&[], common.clone(), c));
            }
        } else {
            if !fam.v6 {
                out.skipped
                    .extend(prefixes.iter().map(|p| (*p, "IPv6 unicast not negotiated")));
                continue;
            }
            let global = match attrs.next_hop {
                Some(IpAddr::V6(a)) => Some(a),
                _ => nh.v6,
            };
            let Some(global) = global else {
                out.skipped.extend(
                    prefixes
                        .iter()
                        .map(|p| (*p, "no IPv6 next hop (set next_hop_v6)")),
                );
                continue;
            };
            let mut hops = vec![IpAddr::V6(global)];
            if attrs.next_hop.is_none() {
                if let Some(ll) = nh.v6_link_local {
                    hops.push(IpAddr::V6(ll));
                }
            }
            let mut common = Vec::new();
            encode_common(attrs, ctx, None, &mut common);
            // MP_REACH_NLRI overhead: 4 header + 3 AFI/SAFI + 1 + next hops + 1 reserved.
            let over = 4 + 3 + 1 + 16 * hops.len() + 1;
            for c in pack(&prefixes, BODY.saturating_sub(common.len() + over)) {
                let mut a = common.clone();
                encode_mp_reach(AFI_IPV6, &hops, c, &mut a);
                out.messages.push(update_bytes(&[], a, &[]));
            }
        }
    }
    out
}

/// End-of-RIB markers (RFC 4724 §2) for the negotiated families.
pub fn end_of_rib(fam: Families) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    if fam.v4 {
        v.push(update_bytes(&[], vec![], &[]));
    }
    if fam.v6 {
        let mut a = Vec::new();
        encode_mp_unreach(AFI_IPV6, &[], &mut a);
        v.push(update_bytes(&[], a, &[]));
    }
    let _ = AFI_IPV4;
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode;

    #[test]
    fn batches_10k_routes_into_few_updates() {
        let attrs = Arc::new(RouteAttrs {
            communities: vec![1],
            ..Default::default()
        });
        let mut want = RouteSet::new();
        for i in 0..10_000u32 {
            let a = Ipv4Addr::from(0xc6136400u32 + i);
            want.insert(Prefix::new(IpAddr::V4(a), 32).unwrap(), Arc::clone(&attrs));
        }
        let d = diff(&RouteSet::new(), &want);
        assert_eq!(d.announce.len(), 10_000);
        let ctx = EncodeContext {
            local_as: 64512,
            ibgp: false,
            four_octet: true,
        };
        let nh = NextHops {
            v4: Some(Ipv4Addr::new(198, 18, 0, 2)),
            ..Default::default()
        };
        let b = build(&d, ctx, nh, Families { v4: true, v6: true });
        assert!(b.messages.len() <= 13, "{} messages", b.messages.len());
        let mut n = 0;
        for m in &b.messages {
            assert!(m.len() <= MAX_MESSAGE_LEN);
            match decode(m).unwrap() {
                Message::Update(u) => n += u.nlri.len(),
                _ => panic!(),
            }
        }
        assert_eq!(n, 10_000);
        // Nothing changes: nothing to send.
        let again = diff(&want, &want);
        assert!(again.announce.is_empty() && again.withdraw.is_empty());
    }

    #[test]
    fn v6_needs_next_hop() {
        let mut want = RouteSet::new();
        want.insert(
            "2001:db8::1/128".parse().unwrap(),
            Arc::new(RouteAttrs::default()),
        );
        let ctx = EncodeContext {
            local_as: 64512,
            ibgp: false,
            four_octet: true,
        };
        let b = build(
            &diff(&RouteSet::new(), &want),
            ctx,
            NextHops::default(),
            Families { v4: true, v6: true },
        );
        assert_eq!(b.skipped.len(), 1);
        let nh = NextHops {
            v6: Some("2001:db8::2".parse().unwrap()),
            v6_link_local: Some("fe80::2".parse().unwrap()),
            ..Default::default()
        };
        let b = build(
            &diff(&RouteSet::new(), &want),
            ctx,
            nh,
            Families { v4: true, v6: true },
        );
        assert_eq!(b.messages.len(), 1);
        assert!(b.messages[0].len() <= MAX_MESSAGE_LEN);
    }
}
