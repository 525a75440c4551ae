//! Property tests run by plain `cargo test`: the decoder and the attribute
//! parser never panic on arbitrary input, and what the RIB-out encodes comes
//! back unchanged through the decoder.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use berth_bgp::attributes::{self, Context, EncodeContext, RouteAttrs};
use berth_bgp::codec::{self, Message};
use berth_bgp::rib_out::{self, Families, NextHops, RouteSet};
use berth_bgp::Prefix;
use proptest::prelude::*;

fn prefix() -> impl Strategy<Value = Prefix> {
    prop_oneof![
        (any::<u32>(), 0u8..=32)
            .prop_map(|(a, l)| Prefix::new(IpAddr::V4(Ipv4Addr::from(a)), l).unwrap()),
        (any::<u128>(), 0u8..=128)
            .prop_map(|(a, l)| Prefix::new(IpAddr::V6(Ipv6Addr::from(a)), l).unwrap()),
    ]
}

fn attrs() -> impl Strategy<Value = RouteAttrs> {
    (
        proptest::option::of(any::<u32>()),
        proptest::collection::vec(any::<u32>(), 0..40),
        proptest::collection::vec(any::<[u32; 3]>(), 0..30),
    )
        .prop_map(|(med, communities, large_communities)| RouteAttrs {
            med,
            communities,
            large_communities,
            ..Default::default()
        })
}

fn ctx() -> (EncodeContext, Context) {
    (
        EncodeContext {
            local_as: 4_200_000_123,
            ibgp: false,
            four_octet: true,
        },
        Context {
            four_octet: true,
            ibgp: false,
            peer_as: Some(4_200_000_123),
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..4200)) {
        let _ = codec::decode(&data);
    }

    #[test]
    fn decode_with_valid_header_never_panics(ty in 1u8..=6, body in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut m = vec![0xff; 16];
        m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
        m.push(ty);
        m.extend_from_slice(&body);
        if let Ok(Message::Update(u)) = codec::decode(&m) {
            let _ = attributes::parse(&u.attributes, !u.nlri.is_empty(), ctx().1);
        }
    }

    #[test]
    fn attribute_parser_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600), nlri: bool, four: bool, ibgp: bool) {
        let _ = attributes::parse(&data, nlri, Context { four_octet: four, ibgp, peer_as: Some(1) });
    }

    #[test]
    fn rib_out_roundtrip(routes in proptest::collection::vec((prefix(), attrs()), 1..300)) {
        let (ectx, pctx) = ctx();
        let mut want = RouteSet::new();
        for (p, a) in routes {
            want.insert(p, Arc::new(a));
        }
        let nh = NextHops {
            v4: Some(Ipv4Addr::new(198, 18, 0, 11)),
            v6: Some("2001:db8::b".parse().unwrap()),
            v6_link_local: Some("fe80::b".parse().unwrap()),
        };
        let built = rib_out::build(&rib_out::diff(&RouteSet::new(), &want), ectx, nh, Families { v4: true, v6: true });
        prop_assert!(built.skipped.is_empty());
        let mut seen = RouteSet::new();
        for m in &built.messages {
            prop_assert!(m.len() <= codec::MAX_MESSAGE_LEN);
            let Message::Update(u) = codec::decode(m).unwrap() else { panic!("not an UPDATE") };
            let parsed = attributes::parse(&u.attributes, !u.nlri.is_empty(), pctx).unwrap();
            prop_assert!(!parsed.treat_as_withdraw, "{:?}", parsed.problems);
            let a = RouteAttrs {
                med: parsed.attrs.med,
                communities: parsed.attrs.communities.clone(),
                large_communities: parsed.attrs.large_communities.clone(),
                ..Default::default()
            };
            let mp = parsed.attrs.mp_reach.map(|m| m.nlri).unwrap_or_default();
            for p in u.nlri.iter().chain(mp.iter()) {
                prop_assert!(seen.insert(*p, Arc::new(a.clone())).is_none(), "{} sent twice", p);
            }
        }
        prop_assert_eq!(seen, want.clone());
        // And withdrawing everything withdraws exactly that set.
        let w = rib_out::build(&rib_out::diff(&want, &RouteSet::new()), ectx, nh, Families { v4: true, v6: true });
        let mut gone = BTreeSet::new();
        for m in &w.messages {
            let Message::Update(u) = codec::decode(m).unwrap() else { panic!() };
            let parsed = attributes::parse(&u.attributes, false, pctx).unwrap();
            gone.extend(u.withdrawn.iter().copied());
            gone.extend(parsed.attrs.mp_unreach.map(|m| m.withdrawn).unwrap_or_default());
        }
        prop_assert_eq!(gone, want.keys().copied().collect::<BTreeSet<_>>());
    }
}
