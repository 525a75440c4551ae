//! Blocks: power-of-two slices of a pod pool's subnet, each owned by one node, so a node can pick
//! addresses inside its own blocks without contending with other nodes.

use crate::addr::{from_u128, net_bounds, to_u128};
use crate::pool::SubnetSpec;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A block and the node that owns it, as recorded in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Block {
    /// The pool the block was carved from.
    pub pool: String,
    /// The block itself.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema::cidr"))]
    pub cidr: IpNet,
    /// The node that allocates inside it.
    pub node: String,
}

impl Block {
    /// The block's name in the ledger: unique per pool and block.
    pub fn name(&self) -> String {
        block_name(&self.pool, &self.cidr)
    }

    /// The next address to hand out inside this block: the first dynamic address after `after`
    /// (wrapping around) for which `used` is false. Starting after the last allocation avoids
    /// handing a just-released address straight to the next workload.
    pub fn next_free(
        &self,
        subnet: &SubnetSpec,
        used: impl Fn(IpAddr) -> bool,
        after: Option<IpAddr>,
    ) -> Option<IpAddr> {
        let (first, last) = net_bounds(&self.cidr);
        let size = last - first + 1;
        let family = subnet.family();
        let start = match after {
            Some(a) if self.cidr.contains(&a) => to_u128(a) - first + 1,
            _ => 0,
        };
        (0..size)
            .map(|k| from_u128(first + (start + k) % size, family))
            .find(|ip| subnet.is_dynamic(*ip) && !used(*ip))
    }

    /// How many addresses of this block can be handed out dynamically.
    pub fn capacity(&self, subnet: &SubnetSpec) -> u128 {
        let (first, last) = net_bounds(&self.cidr);
        (first..=last)
            .filter(|v| subnet.is_dynamic(from_u128(*v, subnet.family())))
            .count() as u128
    }
}

/// The ledger name of a block.
pub fn block_name(pool: &str, cidr: &IpNet) -> String {
    format!("{pool}/{cidr}")
}

/// The block of `subnet` that contains `ip`.
pub fn block_of(subnet: &SubnetSpec, ip: IpAddr) -> Option<IpNet> {
    if !subnet.cidr.contains(&ip) {
        return None;
    }
    IpNet::new(ip, subnet.block_prefix())
        .ok()
        .map(|n| n.trunc())
}

/// Candidate blocks of a subnet, in the order a node tries to claim them.
///
/// Only blocks that overlap a dynamic range are candidates. The walk starts at an offset derived from
/// the node name, so nodes claiming at the same moment mostly try different blocks and rarely lose a
/// compare-and-swap to each other; it then visits every candidate exactly once.
pub fn candidate_blocks<'a>(
    subnet: &'a SubnetSpec,
    node: &str,
) -> impl Iterator<Item = IpNet> + 'a {
    let fam = subnet.family();
    let bits = u32::from(fam.bits() - subnet.block_prefix());
    let (base, _) = net_bounds(&subnet.cidr);
    let mut spans: Vec<(u128, u128)> = subnet
        .dynamic_ranges()
        .iter()
        .map(|r| {
            let (s, e) = r.bounds();
            ((s - base) >> bits, (e - base) >> bits)
        })
        .collect();
    spans.sort();
    let mut merged: Vec<(u128, u128)> = vec![];
    for (s, e) in spans {
        match merged.last_mut() {
            Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    let total: u128 = merged.iter().map(|(s, e)| e - s + 1).sum();
    let offset = if total == 0 {
        0
    } else {
        u128::from(fnv1a(node.as_bytes())) % total
    };
    let prefix = subnet.block_prefix();
    (0..total).filter_map(move |k| {
        let mut pos = (offset + k) % total;
        for (s, e) in &merged {
            let len = e - s + 1;
            if pos < len {
                let start = base + ((s + pos) << bits);
                return IpNet::new(from_u128(start, fam), prefix).ok();
            }
            pos -= len;
        }
        None
    })
}

/// A small stable hash (FNV-1a) so block offsets do not change between releases or platforms.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
