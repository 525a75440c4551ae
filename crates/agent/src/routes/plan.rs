//! The routed pod network's decision, as a pure function: from this node, its connected
//! prefixes, every node's blocks and every node's InternalIPs, the routes this node must have.
//!
//! Why pure: which block is routed where, and which are refused, is the part that must be right
//! for every input; it is property-tested here without a kernel or a cluster, and the reconciler
//! only carries the result out.

use berth_core::Block;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// One address of this node, with its prefix, on the link it is on (`198.18.0.11/24` on `eth0`).
///
/// Why: the prefix says which next hops are directly reachable (on a connected L2 segment),
/// the link is the route's device, and the address itself is never a next hop.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Connected {
    /// The address with its prefix length (host bits kept).
    pub addr: IpNet,
    /// The link it is on.
    pub dev: String,
}

/// What the plan is made from.
///
/// Why a struct of borrowed parts: the agent keeps each input as its watch delivered it and
/// plans without copying.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// This node's name as blocks record it.
    pub node: &'a str,
    /// This node's addresses on the links next hops may be on (not the pod bridge, not `lo`).
    pub connected: &'a [Connected],
    /// Every block of every pod pool.
    pub blocks: &'a [Block],
    /// Every node's InternalIPs, in the order the node lists them.
    pub node_ips: &'a BTreeMap<String, Vec<IpAddr>>,
}

/// A route this node must have: the block `dst` of `node`, via that node's InternalIP `via`
/// on `dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRoute {
    /// The block (network address, host bits clear).
    pub dst: IpNet,
    /// The owning node's InternalIP.
    pub via: IpAddr,
    /// This node's link on the segment of `via`.
    pub dev: String,
    /// The node that owns the block.
    pub node: String,
    /// The pool the block belongs to.
    pub pool: String,
}

/// Why another node's block gets no route.
///
/// Why a reason, not just an absence: the agent logs it and `berth routes` shows it, so an
/// operator sees at once that a node has no InternalIP, or that it sits on another segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The owner reports no InternalIP of the block's family.
    NoAddress,
    /// None of the owner's InternalIPs of that family is on a segment this node is on.
    NotConnected {
        /// The owner's addresses of the family.
        ips: Vec<IpAddr>,
    },
    /// The owner's InternalIP is one of this node's own addresses.
    NextHopIsLocal(IpAddr),
    /// The owner's InternalIP lies inside a pod block (pods' and nodes' addresses overlap).
    NextHopInBlock(IpAddr),
    /// The block overlaps a block of another node (the ledger is inconsistent: `berth audit`
    /// reports it); routing it either way could steal another node's traffic.
    Overlaps {
        /// The other block.
        other: IpNet,
        /// Its node.
        node: String,
    },
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::NoAddress => write!(f, "its node reports no InternalIP of this family"),
            Skip::NotConnected { ips } => write!(
                f,
                "its node's InternalIP ({}) is not on a segment this node is on; use BGP mode (or another route) for nodes behind a router",
                ips.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
            ),
            Skip::NextHopIsLocal(ip) => write!(
                f,
                "its node's InternalIP {ip} is an address of this node: two nodes report the same InternalIP"
            ),
            Skip::NextHopInBlock(ip) => write!(
                f,
                "its node's InternalIP {ip} lies inside a pod block: node and pod addresses must not overlap"
            ),
            Skip::Overlaps { other, node } => write!(
                f,
                "it overlaps block {other} of node {node}; run `berth audit`"
            ),
        }
    }
}

/// Another node's block that gets no route, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The block.
    pub block: Block,
    /// Why.
    pub why: Skip,
}

/// The routes this node must have, and the other nodes' blocks it cannot route.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// One route per routable block of another node, keyed by the block.
    pub routes: BTreeMap<IpNet, PodRoute>,
    /// Blocks of other nodes without a route, in block order.
    pub skipped: Vec<Skipped>,
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The routes this node must have.
///
/// For every block owned by another node: a route via the first of that node's InternalIPs of
/// the block's family that lies on one of this node's connected prefixes (the most specific
/// one, then the link name, decides the device), unless the block overlaps a block of a third
/// node or of this one, or the next hop is one of this node's addresses or inside a pod block.
/// This node's own blocks never get a route: its pods are on its own bridge.
pub fn plan(input: PlanInput<'_>) -> Plan {
    // Each distinct block once, with every (node, pool) that claims it.
    let mut by_cidr: BTreeMap<IpNet, Vec<&Block>> = BTreeMap::new();
    for b in input.blocks {
        by_cidr.entry(b.cidr.trunc()).or_default().push(b);
    }
    for owners in by_cidr.values_mut() {
        owners.sort_by(|a, b| (&a.node, &a.pool).cmp(&(&b.node, &b.pool)));
        owners.dedup_by(|a, b| a.node == b.node && a.pool == b.pool);
    }
    let cidrs: Vec<IpNet> = by_cidr.keys().copied().collect();
    let local: BTreeSet<IpAddr> = input.connected.iter().map(|c| c.addr.addr()).collect();

    let mut out = Plan::default();
    for (cidr, owners) in &by_cidr {
        let first = owners[0];
        if owners.iter().any(|b| b.node == input.node) {
            continue;
        }
        let skip = |why: Skip| Skipped {
            block: Block {
                cidr: *cidr,
                ..first.clone()
            },
            why,
        };
        if let Some(other) = owners.iter().find(|b| b.node != first.node) {
            out.skipped.push(skip(Skip::Overlaps {
                other: *cidr,
                node: other.node.clone(),
            }));
            continue;
        }
        let clash = by_cidr.iter().find_map(|(c, bs)| {
            if c == cidr || !overlaps(c, cidr) {
                return None;
            }
            bs.iter()
                .find(|b| b.node != first.node)
                .map(|b| (*c, b.node.clone()))
        });
        if let Some((other, node)) = clash {
            out.skipped.push(skip(Skip::Overlaps { other, node }));
            continue;
        }
        let fam_v4 = cidr.addr().is_ipv4();
        let ips: Vec<IpAddr> = input
            .node_ips
            .get(&first.node)
            .into_iter()
            .flatten()
            .copied()
            .filter(|ip| ip.is_ipv4() == fam_v4)
            .collect();
        if ips.is_empty() {
            out.skipped.push(skip(Skip::NoAddress));
            continue;
        }
        let mut why = None;
        let mut chosen = None;
        for ip in &ips {
            if local.contains(ip) {
                why.get_or_insert(Skip::NextHopIsLocal(*ip));
                continue;
            }
            if cidrs.iter().any(|c| c.contains(ip)) {
                why.get_or_insert(Skip::NextHopInBlock(*ip));
                continue;
            }
            let dev = input
                .connected
                .iter()
                .filter(|c| c.addr.trunc().contains(ip))
                .min_by(|a, b| {
                    b.addr
                        .prefix_len()
                        .cmp(&a.addr.prefix_len())
                        .then_with(|| a.dev.cmp(&b.dev))
                        .then_with(|| a.addr.cmp(&b.addr))
                });
            if let Some(c) = dev {
                chosen = Some((*ip, c.dev.clone()));
                break;
            }
        }
        match chosen {
            Some((via, dev)) => {
                out.routes.insert(
                    *cidr,
                    PodRoute {
                        dst: *cidr,
                        via,
                        dev,
                        node: first.node.clone(),
                        pool: first.pool.clone(),
                    },
                );
            }
            None => out
                .skipped
                .push(skip(why.unwrap_or(Skip::NotConnected { ips }))),
        }
    }
    out
}

/// The addresses of the routed blocks, for answering ARP/NDP on the pod bridge, leaving out
/// this node's own addresses and blocks larger than `max_per_block` addresses.
///
/// Why: a pod's prefix covers the whole pool, so it asks on its bridge for the MAC of a pod on
/// another node; the node answers for exactly the addresses it routes elsewhere, and the packet
/// takes the route. Returns the set and the blocks left out because they are too large.
pub fn answered(
    plan: &Plan,
    own: &BTreeSet<IpAddr>,
    max_per_block: u32,
) -> (BTreeSet<IpAddr>, Vec<IpNet>) {
    let mut set = BTreeSet::new();
    let mut too_large = Vec::new();
    for dst in plan.routes.keys() {
        let host_bits = u32::from(dst.max_prefix_len() - dst.prefix_len());
        if host_bits >= 32 || (1u64 << host_bits) > u64::from(max_per_block) {
            too_large.push(*dst);
            continue;
        }
        // Every address, the first and last included: in a block carved from a larger
        // subnet they are ordinary pod addresses.
        let all: ipnet::IpAddrRange = match dst {
            IpNet::V4(n) => ipnet::Ipv4AddrRange::new(n.network(), n.broadcast()).into(),
            IpNet::V6(n) => ipnet::Ipv6AddrRange::new(n.network(), n.broadcast()).into(),
        };
        set.extend(all.filter(|ip| !own.contains(ip)));
    }
    (set, too_large)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block(pool: &str, cidr: &str, node: &str) -> Block {
        Block {
            pool: pool.into(),
            cidr: cidr.parse().unwrap(),
            node: node.into(),
        }
    }

    fn conn(addr: &str, dev: &str) -> Connected {
        Connected {
            addr: addr.parse().unwrap(),
            dev: dev.into(),
        }
    }

    fn ips(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<IpAddr>> {
        pairs
            .iter()
            .map(|(n, a)| {
                (
                    n.to_string(),
                    a.iter().map(|s| s.parse().unwrap()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn routes_other_nodes_blocks_via_their_connected_internal_ip() {
        let connected = [
            conn("198.18.0.11/24", "eth0"),
            conn("2001:db8::11/64", "eth0"),
        ];
        let blocks = [
            block("pods", "198.18.64.0/28", "node1"),
            block("pods", "198.18.64.16/28", "node2"),
            block("pods", "2001:db8:64::40/122", "node2"),
            block("pods", "198.18.64.32/28", "node3"),
            block("pods", "198.18.64.48/28", "node4"),
            block("pods", "198.18.64.64/28", "node5"),
        ];
        let node_ips = ips(&[
            ("node1", &["198.18.0.11"]),
            ("node2", &["198.18.0.12", "2001:db8::12"]),
            ("node3", &["198.19.5.5", "198.18.0.13"]),
            ("node4", &["198.19.5.6"]),
        ]);
        let p = plan(PlanInput {
            node: "node1",
            connected: &connected,
            blocks: &blocks,
            node_ips: &node_ips,
        });
        let got: Vec<String> = p
            .routes
            .values()
            .map(|r| format!("{} via {} dev {} ({})", r.dst, r.via, r.dev, r.node))
            .collect();
        assert_eq!(
            got,
            [
                "198.18.64.16/28 via 198.18.0.12 dev eth0 (node2)",
                // The first InternalIP is behind a router; the second is on the segment.
                "198.18.64.32/28 via 198.18.0.13 dev eth0 (node3)",
                "2001:db8:64::40/122 via 2001:db8::12 dev eth0 (node2)",
            ]
        );
        let why: Vec<(String, String)> = p
            .skipped
            .iter()
            .map(|s| (s.block.cidr.to_string(), s.why.to_string()))
            .collect();
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(
            why[0].0 == "198.18.64.48/28" && why[0].1.contains("198.19.5.6"),
            "{why:?}"
        );
        assert!(
            why[1].0 == "198.18.64.64/28" && why[1].1.contains("no InternalIP"),
            "{why:?}"
        );
    }

    #[test]
    fn refuses_overlaps_local_next_hops_and_next_hops_inside_blocks() {
        let connected = [
            conn("198.18.0.11/24", "eth0"),
            conn("198.18.64.1/24", "cni9"),
        ];
        let blocks = [
            block("a", "198.18.64.0/28", "node1"),
            // Same CIDR in another pool, another node: overlaps node1's own block.
            block("b", "198.18.64.0/28", "node2"),
            // A /27 of node3 overlapping node4's /28.
            block("a", "198.18.65.0/27", "node3"),
            block("b", "198.18.65.16/28", "node4"),
            block("a", "198.18.66.0/28", "node5"),
            block("a", "198.18.67.0/28", "node6"),
        ];
        let node_ips = ips(&[
            ("node2", &["198.18.0.12"]),
            ("node3", &["198.18.0.13"]),
            ("node4", &["198.18.0.14"]),
            ("node5", &["198.18.0.11"]),
            ("node6", &["198.18.64.5"]),
        ]);
        let p = plan(PlanInput {
            node: "node1",
            connected: &connected,
            blocks: &blocks,
            node_ips: &node_ips,
        });
        assert!(p.routes.is_empty(), "{:?}", p.routes);
        let why: Vec<String> = p.skipped.iter().map(|s| s.why.to_string()).collect();
        assert_eq!(why.len(), 4, "{why:?}");
        assert!(
            why[0].contains("overlaps block 198.18.65.16/28 of node node4"),
            "{why:?}"
        );
        assert!(
            why[1].contains("overlaps block 198.18.65.0/27 of node node3"),
            "{why:?}"
        );
        assert!(why[2].contains("is an address of this node"), "{why:?}");
        assert!(why[3].contains("inside a pod block"), "{why:?}");
        // node2's duplicate of node1's own block is node1's: no route and nothing to report.
        assert!(p.skipped.iter().all(|s| s.block.node != "node2"));
    }

    #[test]
    fn most_specific_connected_prefix_picks_the_device() {
        let connected = [
            conn("198.18.0.11/16", "eth1"),
            conn("198.18.0.11/24", "eth0"),
        ];
        let blocks = [block("a", "198.18.64.16/28", "node2")];
        let node_ips = ips(&[("node2", &["198.18.0.12"])]);
        let p = plan(PlanInput {
            node: "node1",
            connected: &connected,
            blocks: &blocks,
            node_ips: &node_ips,
        });
        assert_eq!(p.routes.values().next().unwrap().dev, "eth0");
    }

    #[test]
    fn answered_covers_routed_blocks_without_own_addresses_and_bounds_size() {
        let mut p = Plan::default();
        for (dst, node) in [
            ("198.18.64.16/30", "n2"),
            ("2001:db8:64::/126", "n2"),
            ("2001:db8:65::/64", "n3"),
        ] {
            let dst: IpNet = dst.parse().unwrap();
            p.routes.insert(
                dst,
                PodRoute {
                    dst,
                    via: if dst.addr().is_ipv4() {
                        "198.18.0.12".parse().unwrap()
                    } else {
                        "2001:db8::12".parse().unwrap()
                    },
                    dev: "eth0".into(),
                    node: node.into(),
                    pool: "p".into(),
                },
            );
        }
        let own: BTreeSet<IpAddr> = ["198.18.64.17".parse().unwrap()].into();
        let (set, big) = answered(&p, &own, 1024);
        let got: Vec<String> = set.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            got,
            [
                "198.18.64.16",
                "198.18.64.18",
                "198.18.64.19",
                "2001:db8:64::",
                "2001:db8:64::1",
                "2001:db8:64::2",
                "2001:db8:64::3"
            ]
        );
        assert_eq!(big, vec!["2001:db8:65::/64".parse::<IpNet>().unwrap()]);
    }

    // ---- properties ---------------------------------------------------------------------------

    const NODES: [&str; 5] = ["n0", "n1", "n2", "n3", "n4"];

    /// Blocks drawn from two small pools of each family, so that duplicates and overlaps
    /// (/27 over /28) happen often; node IPs from the segment, another segment, a block, or
    /// this node's own address.
    fn world() -> impl Strategy<Value = (Vec<Block>, BTreeMap<String, Vec<IpAddr>>, Vec<Connected>)>
    {
        let block = (
            0usize..5,
            0u8..2,
            0u32..8,
            prop::bool::weighted(0.15),
            prop::bool::ANY,
        )
            .prop_map(|(n, pool, i, wide, v6)| {
                let cidr = match (v6, wide) {
                    (false, false) => format!("198.18.64.{}/28", i * 16),
                    (false, true) => format!("198.18.64.{}/27", (i / 2) * 32),
                    (true, false) => format!("2001:db8:64::{:x}/124", i * 16),
                    (true, true) => format!("2001:db8:64::{:x}/123", (i / 2) * 32),
                };
                Block {
                    pool: format!("p{pool}"),
                    cidr: cidr.parse().unwrap(),
                    node: NODES[n].into(),
                }
            });
        let ip = (0u8..6, 1u8..30, prop::bool::ANY).prop_map(|(kind, h, v6)| -> IpAddr {
            let s = match (kind, v6) {
                (0..=2, false) => format!("198.18.0.{}", 10 + h),
                (0..=2, true) => format!("2001:db8::{:x}", 0x10 + h),
                (3, false) => format!("198.19.0.{h}"),
                (3, true) => format!("2001:db8:99::{h:x}"),
                (4, false) => format!("198.18.64.{h}"),
                (4, true) => format!("2001:db8:64::{h:x}"),
                (_, false) => "198.18.0.10".into(),
                (_, true) => "2001:db8::10".into(),
            };
            s.parse().unwrap()
        });
        let node_ips = prop::collection::btree_map(
            (0usize..5).prop_map(|n| NODES[n].to_string()),
            prop::collection::vec(ip, 0..4),
            0..5,
        );
        let connected = prop::sample::subsequence(
            vec![
                conn("198.18.0.10/24", "eth0"),
                conn("2001:db8::10/64", "eth0"),
                conn("198.18.0.10/16", "eth1"),
                conn("198.19.0.200/24", "eth2"),
            ],
            0..=4,
        );
        (prop::collection::vec(block, 0..14), node_ips, connected)
    }

    fn me() -> &'static str {
        NODES[0]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn plan_properties((blocks, node_ips, connected) in world(), seed in any::<u64>()) {
            let input = PlanInput { node: me(), connected: &connected, blocks: &blocks, node_ips: &node_ips };
            let p = plan(input);
            let own: Vec<IpNet> = blocks.iter().filter(|b| b.node == me()).map(|b| b.cidr.trunc()).collect();
            let local: BTreeSet<IpAddr> = connected.iter().map(|c| c.addr.addr()).collect();

            for (dst, r) in &p.routes {
                prop_assert_eq!(*dst, r.dst);
                // Never a route for (or overlapping) this node's own blocks.
                prop_assert!(!own.iter().any(|o| overlaps(o, dst)), "route {:?} overlaps own {:?}", r, own);
                prop_assert!(r.node != me());
                // The route is for a block its node really owns, in the family of its next hop.
                prop_assert!(blocks.iter().any(|b| b.cidr.trunc() == *dst && b.node == r.node && b.pool == r.pool));
                prop_assert_eq!(r.via.is_ipv4(), dst.addr().is_ipv4());
                // Never via a next hop that is not on a connected segment of its device, nor a
                // local address, nor a pod address.
                prop_assert!(connected.iter().any(|c| c.dev == r.dev && c.addr.trunc().contains(&r.via)), "{:?}", r);
                prop_assert!(!local.contains(&r.via));
                prop_assert!(!blocks.iter().any(|b| b.cidr.contains(&r.via)));
                prop_assert!(node_ips.get(&r.node).is_some_and(|v| v.contains(&r.via)));
                // Routes that overlap go to the same node: the kernel's longest match can never
                // pick a wrong one.
                for (other, o) in p.routes.range(..dst) {
                    prop_assert!(!overlaps(other, dst) || (o.node == r.node && o.via == r.via), "{:?} and {:?}", o, r);
                }
            }
            // Exactly one route per foreign block, unless it is reported as skipped; nothing
            // is both, and every block of another node is one or the other.
            let foreign: BTreeSet<IpNet> = blocks.iter()
                .filter(|b| b.node != me() && !own.contains(&b.cidr.trunc()))
                .map(|b| b.cidr.trunc()).collect();
            let skipped: BTreeSet<IpNet> = p.skipped.iter().map(|s| s.block.cidr).collect();
            prop_assert_eq!(skipped.len(), p.skipped.len(), "a block skipped twice");
            let routed: BTreeSet<IpNet> = p.routes.keys().copied().collect();
            prop_assert!(routed.is_disjoint(&skipped));
            prop_assert_eq!(routed.union(&skipped).copied().collect::<BTreeSet<_>>(), foreign.clone());
            // A block whose owner has a usable InternalIP and that overlaps no other node's
            // block is routed.
            for cidr in &foreign {
                let owners: BTreeSet<&str> = blocks.iter().filter(|b| b.cidr.trunc() == *cidr).map(|b| b.node.as_str()).collect();
                let owner = *owners.iter().next().unwrap();
                let clash = owners.len() > 1 || blocks.iter().any(|b| b.node != owner && overlaps(&b.cidr, cidr));
                let usable = node_ips.get(owner).into_iter().flatten().any(|ip| {
                    ip.is_ipv4() == cidr.addr().is_ipv4()
                        && !local.contains(ip)
                        && !blocks.iter().any(|b| b.cidr.contains(ip))
                        && connected.iter().any(|c| c.addr.trunc().contains(ip))
                });
                prop_assert_eq!(routed.contains(cidr), usable && !clash, "block {} owners {:?}", cidr, owners);
            }

            // Stable: the same inputs give the same plan, in any order of blocks and links.
            prop_assert_eq!(&plan(input), &p);
            let mut shuffled = blocks.clone();
            let mut conns = connected.clone();
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            conns.reverse();
            let again = plan(PlanInput { node: me(), connected: &conns, blocks: &shuffled, node_ips: &node_ips });
            prop_assert_eq!(again, p.clone());

            // Answered addresses lie in routed blocks and are never this node's own.
            let (set, _) = answered(&p, &local, 1 << 12);
            for ip in &set {
                prop_assert!(p.routes.keys().any(|d| d.contains(ip)));
                prop_assert!(!local.contains(ip));
            }
        }
    }
}
