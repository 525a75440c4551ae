//! Rendezvous (highest-random-weight) hashing of addresses over nodes.
//!
//! Why: every node computes the announcer of an address from the same inputs without talking
//! to anyone, addresses spread evenly, and when a node fails only the addresses it ranked
//! first for move (each to its own next-ranked node); every other address stays put.
//!
//! The hash is FNV-1a over the address and the node name, finished with MurmurHash3's 64-bit
//! mixer. It is fixed here (not `std`'s hasher, which may change between Rust releases) so
//! that nodes running different builds agree.

use std::net::IpAddr;

/// The weight of `node` for `addr`; the highest weight announces.
pub fn weight(addr: IpAddr, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    match addr {
        IpAddr::V4(a) => {
            eat(4);
            a.octets().into_iter().for_each(&mut eat);
        }
        IpAddr::V6(a) => {
            eat(6);
            a.octets().into_iter().for_each(&mut eat);
        }
    }
    eat(0xff);
    node.bytes().for_each(&mut eat);
    fmix64(h)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// The node among `nodes` that announces `addr`: the highest [`weight`], ties (which a 64-bit
/// hash makes vanishingly rare) broken by the greater name. `None` for no nodes.
pub fn owner<'a, I>(addr: IpAddr, nodes: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    nodes
        .into_iter()
        .max_by(|a, b| (weight(addr, a), *a).cmp(&(weight(addr, b), *b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    fn addr(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0xc612_0000u32.wrapping_add(i)))
    }

    #[test]
    fn weight_is_fixed_across_builds() {
        // Pinned values: a change here would make mixed versions disagree on announcers.
        let w = weight("198.18.0.200".parse().unwrap(), "n1");
        assert_eq!(w, 0x3385_3311_d5f4_89b4, "{w:#x}");
    }

    #[test]
    fn no_nodes_no_owner() {
        assert_eq!(owner(addr(1), std::iter::empty()), None);
    }

    #[test]
    fn spread_is_even_enough() {
        let ns = names(4);
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for i in 0..4000 {
            let o = owner(addr(i), ns.iter().map(String::as_str)).unwrap();
            *count.entry(o).or_default() += 1;
        }
        for (n, c) in &count {
            assert!((800..1200).contains(c), "{n} owns {c} of 4000");
        }
    }

    proptest! {
        /// A failure moves only the failed node's addresses.
        #[test]
        fn removing_a_node_moves_only_its_addresses(n in 2usize..8, gone in 0usize..8, addrs in proptest::collection::vec(any::<u32>(), 1..64)) {
            let ns = names(n);
            let gone = &ns[gone % n];
            for a in addrs {
                let a = addr(a);
                let before = owner(a, ns.iter().map(String::as_str)).unwrap();
                let after = owner(a, ns.iter().map(String::as_str).filter(|x| x != gone)).unwrap();
                if before != gone.as_str() {
                    prop_assert_eq!(before, after);
                } else {
                    prop_assert_ne!(after, gone.as_str());
                }
            }
        }

        /// A node that joins takes only addresses it now ranks first for, from anyone.
        #[test]
        fn adding_a_node_moves_addresses_only_to_it(n in 1usize..8, addrs in proptest::collection::vec(any::<u32>(), 1..64)) {
            let ns = names(n + 1);
            let (old, new) = ns.split_at(n);
            for a in addrs {
                let a = addr(a);
                let before = owner(a, old.iter().map(String::as_str)).unwrap();
                let after = owner(a, ns.iter().map(String::as_str)).unwrap();
                prop_assert!(after == before || after == new[0].as_str());
            }
        }

        /// The owner does not depend on the order the nodes are listed in.
        #[test]
        fn order_does_not_matter(n in 1usize..8, a in any::<u32>(), seed in any::<u64>()) {
            let mut ns = names(n);
            let first = owner(addr(a), ns.iter().map(String::as_str)).unwrap().to_string();
            let k = (seed as usize) % n;
            ns.rotate_left(k);
            ns.reverse();
            prop_assert_eq!(owner(addr(a), ns.iter().map(String::as_str)).unwrap(), first.as_str());
        }
    }
}
