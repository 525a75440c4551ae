//! Address arithmetic shared by pools, blocks and the allocator.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP family. Dual-stack configurations hand out one address per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Number of bits in an address of this family.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// An address as an integer, so ranges and blocks can be walked with plain arithmetic.
pub fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

/// The inverse of [`to_u128`]; values beyond the family's width are truncated.
pub fn from_u128(v: u128, family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// First and last address of a network, as integers.
pub fn net_bounds(net: &IpNet) -> (u128, u128) {
    (to_u128(net.network()), to_u128(net.broadcast()))
}

/// Whether two networks share an address (one contains the other's first address).
pub fn nets_overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// An inclusive range of addresses of one family, like kube-ipam's `rangeStart`..`rangeEnd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AddrRange {
    /// First address in the range.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema::ip"))]
    pub start: IpAddr,
    /// Last address in the range (inclusive).
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema::ip"))]
    pub end: IpAddr,
}

impl AddrRange {
    /// A range; `None` when the ends differ in family or are reversed.
    pub fn new(start: IpAddr, end: IpAddr) -> Option<Self> {
        (Family::of(start) == Family::of(end) && to_u128(start) <= to_u128(end))
            .then_some(AddrRange { start, end })
    }

    /// The whole of a network as a range.
    pub fn of_net(net: &IpNet) -> Self {
        AddrRange {
            start: net.network(),
            end: net.broadcast(),
        }
    }

    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == Family::of(self.start)
            && to_u128(self.start) <= to_u128(ip)
            && to_u128(ip) <= to_u128(self.end)
    }

    /// Integer bounds of the range.
    pub fn bounds(&self) -> (u128, u128) {
        (to_u128(self.start), to_u128(self.end))
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}
