//! Pools: named sets of addresses with the rules for handing them out.

use crate::addr::{net_bounds, to_u128, AddrRange, Family};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// What a pool's addresses are for. Only `pod` pools are carved into blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum PoolUse {
    /// Pod interface addresses handed out by the CNI IPAM plugin.
    #[default]
    Pod,
    /// Service LoadBalancer / external IPs.
    Service,
    /// Public addresses attached inside pods.
    Attachment,
}

/// A route handed to the workload with its address (CNI `routes`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Route {
    /// Destination network.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema::cidr"))]
    pub dst: IpNet,
    /// Next hop; `None` means the subnet's gateway (or on-link when there is none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema::ip_opt"))]
    pub gw: Option<IpAddr>,
}

/// One subnet of a pool: where its dynamic and reserved (fixed) addresses lie.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct SubnetSpec {
    /// The subnet; handed-out addresses carry its prefix length.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema::cidr"))]
    pub cidr: IpNet,
    /// Where dynamic addresses come from (kube-ipam `rangeStart`..`rangeEnd`). Empty: the whole subnet
    /// except the reserved ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<AddrRange>,
    /// Reserved for fixed requests only (kube-ipam `fixedStart`..`fixedEnd`); never handed out dynamically.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fixed: Vec<AddrRange>,
    /// Never handed out at all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema::cidr_list"))]
    pub excludes: Vec<IpNet>,
    /// The workload's default gateway; never handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema::ip_opt"))]
    pub gateway: Option<IpAddr>,
    /// Routes handed to the workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// Prefix length of the node blocks this subnet is carved into (`blockSize`, as in the CNI
    /// configuration); absent: /26 for IPv4 and /122 for IPv6, or the subnet itself when it is
    /// smaller. Only pod pools are carved into blocks, so service pools leave it out.
    #[serde(rename = "blockSize", default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "crate::schema::prefix_len_opt")
    )]
    pub block_size: Option<u8>,
    /// Allow fixed requests anywhere in the subnet, not only in `fixed`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fixed_anywhere: bool,
}

/// A named pool: the unit an operator configures and the ledger records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// Pool name; unique in the ledger. On Kubernetes it is the Pool object's name, so users
    /// never write it in the spec (and the CRD schema has no such field).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip))]
    pub name: String,
    /// What the addresses are for.
    #[serde(rename = "use", default)]
    pub use_: PoolUse,
    /// Subnets, tried in order within a family.
    pub subnets: Vec<SubnetSpec>,
    /// Who may ask for fixed addresses and sticky sets (`ipam.policy`).
    #[serde(default, skip_serializing_if = "crate::policy::PoolPolicy::is_default")]
    pub policy: crate::policy::PoolPolicy,
    /// Service pools' settings (`autoAssign`, `externalIPs`, `serviceAllocation`), at the top
    /// level of the spec as users write them; defaults for other uses.
    #[serde(flatten)]
    pub service: crate::service::ServiceSettings,
    /// How the pool's addresses are announced (`announce`, `nodeSelector`, `l2`, …), at the top
    /// level of the spec as users write them; not announced by default.
    #[serde(flatten)]
    pub announcement: crate::announce::Announcement,
}

/// Why a pool specification is unusable. Each variant names the field and value at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// An announcement setting that does not fit the pool.
    #[error("pool {pool:?}: {field} {value}: {why}")]
    Announce {
        /// The pool.
        pool: String,
        /// The field (`announce`, `l2`, `bgp`, `interface`).
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong and what to do.
        why: &'static str,
    },
    /// A pool needs at least one subnet.
    #[error("pool {pool:?} has no subnet: give `subnet` or `ranges`")]
    NoSubnet {
        /// The pool.
        pool: String,
    },
    /// An address belongs to a different family or lies outside the subnet.
    #[error(
        "{field} {value} is not inside subnet {subnet}: move it into the subnet or fix the subnet"
    )]
    OutsideSubnet {
        /// The configuration field.
        field: &'static str,
        /// The offending value.
        value: String,
        /// The subnet it must lie in.
        subnet: IpNet,
    },
    /// A block prefix that does not fit the subnet or is too large to scan.
    #[error("blockSize /{prefix} does not fit {family} subnet {subnet}: use a prefix length between {min} and {max}")]
    BlockSize {
        /// The requested prefix length.
        prefix: u8,
        /// The subnet.
        subnet: IpNet,
        /// Its family.
        family: Family,
        /// Smallest allowed prefix length.
        min: u8,
        /// Largest allowed prefix length.
        max: u8,
    },
    /// A range whose start is after its end.
    #[error("{field} start {start} is after end {end}: swap them")]
    Reversed {
        /// The configuration field.
        field: &'static str,
        /// Range start.
        start: IpAddr,
        /// Range end.
        end: IpAddr,
    },
    /// Dynamic and reserved ranges overlap, so a fixed address could be handed out dynamically.
    #[error("dynamic range {dynamic} (rangeStart-rangeEnd) overlaps reserved range {fixed} (fixedStart-fixedEnd) in subnet {subnet}: make them disjoint")]
    Overlap {
        /// The dynamic range.
        dynamic: AddrRange,
        /// The reserved range.
        fixed: AddrRange,
        /// The subnet.
        subnet: IpNet,
    },
    /// Two subnets of one pool overlap.
    #[error("subnets {a} and {b} of pool {pool:?} overlap: list each address once")]
    SubnetsOverlap {
        /// The pool.
        pool: String,
        /// First subnet.
        a: IpNet,
        /// Second subnet.
        b: IpNet,
    },
}

/// Largest number of addresses in one block: a block is scanned address by address.
pub const MAX_BLOCK_BITS: u8 = 16;

/// Default node block size for IPv4 (64 addresses, as Calico).
pub const DEFAULT_BLOCK_V4: u8 = 26;
/// Default node block size for IPv6 (64 addresses, as Calico).
pub const DEFAULT_BLOCK_V6: u8 = 122;

/// The default block size of a subnet: /26 or /122, or the subnet itself when smaller.
fn default_block(cidr: IpNet) -> u8 {
    match Family::of(cidr.addr()) {
        Family::V4 => DEFAULT_BLOCK_V4,
        Family::V6 => DEFAULT_BLOCK_V6,
    }
    .max(cidr.prefix_len())
}

impl SubnetSpec {
    /// A subnet with defaults: whole subnet dynamic, default block size.
    pub fn new(cidr: IpNet) -> Self {
        let cidr = cidr.trunc();
        let block_prefix = default_block(cidr);
        SubnetSpec {
            cidr,
            ranges: vec![],
            fixed: vec![],
            excludes: vec![],
            gateway: None,
            routes: vec![],
            block_size: Some(block_prefix),
            fixed_anywhere: false,
        }
    }

    /// The prefix length of this subnet's node blocks: `blockSize`, or the default.
    pub fn block_prefix(&self) -> u8 {
        self.block_size.unwrap_or_else(|| default_block(self.cidr))
    }

    /// The subnet's family.
    pub fn family(&self) -> Family {
        Family::of(self.cidr.addr())
    }

    /// Check the subnet is self-consistent; every error names the field and value.
    pub fn validate(&self) -> Result<(), PoolError> {
        let fam = self.family();
        let inside = |field: &'static str, ip: IpAddr| {
            if self.cidr.contains(&ip) {
                Ok(())
            } else {
                Err(PoolError::OutsideSubnet {
                    field,
                    value: ip.to_string(),
                    subnet: self.cidr,
                })
            }
        };
        for r in &self.ranges {
            inside("rangeStart", r.start)?;
            inside("rangeEnd", r.end)?;
            if r.bounds().0 > r.bounds().1 {
                return Err(PoolError::Reversed {
                    field: "rangeStart/rangeEnd",
                    start: r.start,
                    end: r.end,
                });
            }
        }
        for r in &self.fixed {
            inside("fixedStart", r.start)?;
            inside("fixedEnd", r.end)?;
            if r.bounds().0 > r.bounds().1 {
                return Err(PoolError::Reversed {
                    field: "fixedStart/fixedEnd",
                    start: r.start,
                    end: r.end,
                });
            }
            for d in &self.ranges {
                let (a, b) = d.bounds();
                let (c, e) = r.bounds();
                if a <= e && c <= b {
                    return Err(PoolError::Overlap {
                        dynamic: *d,
                        fixed: *r,
                        subnet: self.cidr,
                    });
                }
            }
        }
        if let Some(gw) = self.gateway {
            inside("gateway", gw)?;
        }
        for ex in &self.excludes {
            if Family::of(ex.addr()) != fam {
                return Err(PoolError::OutsideSubnet {
                    field: "exclude",
                    value: ex.to_string(),
                    subnet: self.cidr,
                });
            }
        }
        let max = fam.bits();
        let min = self
            .cidr
            .prefix_len()
            .max(max.saturating_sub(MAX_BLOCK_BITS));
        if self.block_prefix() < min || self.block_prefix() > max {
            return Err(PoolError::BlockSize {
                prefix: self.block_prefix(),
                subnet: self.cidr,
                family: fam,
                min,
                max,
            });
        }
        Ok(())
    }

    /// Whether `ip` may be handed to a workload at all: inside the subnet, not the network or
    /// (IPv4) broadcast address, not the gateway, not excluded.
    pub fn is_usable(&self, ip: IpAddr) -> bool {
        if !self.cidr.contains(&ip) {
            return false;
        }
        let (first, last) = net_bounds(&self.cidr);
        let v = to_u128(ip);
        let host_bits = self.family().bits() - self.cidr.prefix_len();
        if host_bits > 1 && (v == first || (self.family() == Family::V4 && v == last)) {
            return false;
        }
        if self.gateway == Some(ip) {
            return false;
        }
        !self.excludes.iter().any(|ex| ex.contains(&ip))
    }

    /// Whether `ip` is reserved for fixed requests.
    pub fn is_reserved(&self, ip: IpAddr) -> bool {
        self.fixed.iter().any(|r| r.contains(ip))
    }

    /// Whether `ip` may be handed out dynamically.
    pub fn is_dynamic(&self, ip: IpAddr) -> bool {
        self.is_usable(ip)
            && !self.is_reserved(ip)
            && (self.ranges.is_empty() || self.ranges.iter().any(|r| r.contains(ip)))
    }

    /// Whether a fixed request for `ip` is allowed in this subnet.
    pub fn allows_fixed(&self, ip: IpAddr) -> bool {
        self.is_usable(ip) && (self.is_reserved(ip) || self.fixed_anywhere)
    }

    /// How many addresses can be handed out dynamically, counted by range arithmetic (so a /64
    /// costs nothing to count): the dynamic ranges less the reserved ranges, excludes, gateway and
    /// the network and broadcast addresses that fall inside them. Excludes that overlap each other
    /// are subtracted once each, so the figure can be slightly low, never high.
    pub fn dynamic_capacity(&self) -> u128 {
        let (first, last) = net_bounds(&self.cidr);
        let host_bits = self.family().bits() - self.cidr.prefix_len();
        let overlap = |a: (u128, u128), b: (u128, u128)| -> u128 {
            let (lo, hi) = (a.0.max(b.0), a.1.min(b.1));
            if lo <= hi {
                hi - lo + 1
            } else {
                0
            }
        };
        let mut total: u128 = 0;
        for r in self.dynamic_ranges() {
            let span = r.bounds();
            let mut n = span.1 - span.0 + 1;
            for f in &self.fixed {
                n = n.saturating_sub(overlap(span, f.bounds()));
            }
            for ex in &self.excludes {
                n = n.saturating_sub(overlap(span, net_bounds(ex)));
            }
            let mut special = vec![];
            if host_bits > 1 {
                special.push(first);
                if self.family() == Family::V4 {
                    special.push(last);
                }
            }
            if let Some(gw) = self.gateway {
                special.push(to_u128(gw));
            }
            special.sort();
            special.dedup();
            for a in special {
                let in_span = span.0 <= a && a <= span.1;
                let already = self
                    .fixed
                    .iter()
                    .any(|f| f.contains(crate::addr::from_u128(a, self.family())))
                    || self
                        .excludes
                        .iter()
                        .any(|e| e.contains(&crate::addr::from_u128(a, self.family())));
                if in_span && !already {
                    n = n.saturating_sub(1);
                }
            }
            total = total.saturating_add(n);
        }
        total
    }

    /// The ranges dynamic addresses come from, explicit or implied.
    pub fn dynamic_ranges(&self) -> Vec<AddrRange> {
        if self.ranges.is_empty() {
            vec![AddrRange::of_net(&self.cidr)]
        } else {
            self.ranges.clone()
        }
    }
}

impl PoolSpec {
    /// Check every subnet, and that subnets do not overlap.
    pub fn validate(&self) -> Result<(), PoolError> {
        if self.subnets.is_empty() {
            return Err(PoolError::NoSubnet {
                pool: self.name.clone(),
            });
        }
        for (i, s) in self.subnets.iter().enumerate() {
            s.validate()?;
            for t in &self.subnets[..i] {
                if crate::addr::nets_overlap(&s.cidr, &t.cidr) {
                    return Err(PoolError::SubnetsOverlap {
                        pool: self.name.clone(),
                        a: t.cidr,
                        b: s.cidr,
                    });
                }
            }
        }
        self.validate_announcement()
    }

    /// `announce` and its settings: only pools whose addresses live outside pods' own
    /// interfaces are announced, and settings for another mode than the chosen one are a
    /// mistake worth naming (they would silently do nothing).
    fn validate_announcement(&self) -> Result<(), PoolError> {
        use crate::announce::AnnounceMode;
        let a = &self.announcement;
        let err = |field, value: String, why| PoolError::Announce {
            pool: self.name.clone(),
            field,
            value,
            why,
        };
        if a.announce != AnnounceMode::None && self.use_ == PoolUse::Pod {
            return Err(err(
                "announce",
                format!("{:?}", a.announce).to_lowercase(),
                "pod pools are reached through the pod network, not announced; use: service (or attachment) pools are",
            ));
        }
        let mode = a.announce;
        for (field, set, want) in [
            ("l2", a.l2.is_some(), AnnounceMode::L2),
            ("bgp", a.bgp.is_some(), AnnounceMode::Bgp),
            ("interface", a.interface.is_some(), AnnounceMode::Interface),
        ] {
            if set && mode != want {
                return Err(err(
                    field,
                    format!("is set while announce is {}", format!("{mode:?}").to_lowercase()),
                    "settings of another mode do nothing: set announce to that mode, or remove them",
                ));
            }
        }
        if let Some(b) = &a.bgp {
            b.validate().map_err(|e| err(e.field, e.value, e.why))?;
        }
        Ok(())
    }

    /// The families this pool serves, in first-subnet order.
    pub fn families(&self) -> Vec<Family> {
        let mut out: Vec<Family> = vec![];
        for s in &self.subnets {
            if !out.contains(&s.family()) {
                out.push(s.family());
            }
        }
        out
    }

    /// The subnet in which `ip` may be handed out at all ([`SubnetSpec::is_usable`]), if any:
    /// what "the pool contains this address" means for audits, requests and shrunk pools.
    pub fn usable_subnet(&self, ip: IpAddr) -> Option<&SubnetSpec> {
        self.subnet_of(ip).filter(|s| s.is_usable(ip))
    }

    /// The subnet that contains `ip`, if any.
    pub fn subnet_of(&self, ip: IpAddr) -> Option<&SubnetSpec> {
        self.subnets.iter().find(|s| s.cidr.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::announce::{AnnounceMode, Announcement, L2Settings};

    fn pool(use_: PoolUse, announcement: Announcement) -> PoolSpec {
        PoolSpec {
            name: "lan".into(),
            use_,
            subnets: vec![SubnetSpec::new("198.18.0.192/27".parse().unwrap())],
            policy: Default::default(),
            service: Default::default(),
            announcement,
        }
    }

    #[test]
    fn announcement_settings_must_fit_the_pool() {
        let l2 = Announcement {
            announce: AnnounceMode::L2,
            l2: Some(L2Settings::default()),
            ..Default::default()
        };
        assert!(pool(PoolUse::Service, l2.clone()).validate().is_ok());
        let e = pool(PoolUse::Pod, l2.clone()).validate().unwrap_err();
        assert!(e.to_string().contains("announce l2"), "{e}");
        let wrong = Announcement {
            announce: AnnounceMode::Bgp,
            ..l2
        };
        let e = pool(PoolUse::Service, wrong).validate().unwrap_err();
        assert!(
            e.to_string().contains("l2 is set while announce is bgp"),
            "{e}"
        );
        assert!(pool(PoolUse::Pod, Announcement::default())
            .validate()
            .is_ok());
    }

    #[test]
    fn bgp_settings_are_checked_with_the_pool() {
        use crate::announce::BgpSettings;
        let bgp = |b: BgpSettings| Announcement {
            announce: AnnounceMode::Bgp,
            bgp: Some(b),
            ..Default::default()
        };
        let good = BgpSettings {
            communities: vec!["64512:100".into(), "no-export".into()],
            large_communities: vec!["64512:1:2".into()],
            aggregation_length: Some(28),
            ..Default::default()
        };
        assert!(pool(PoolUse::Service, bgp(good.clone())).validate().is_ok());
        assert_eq!(
            good.community_values().unwrap(),
            vec![(64512 << 16) | 100, 0xFFFF_FF01]
        );
        assert_eq!(good.large_community_values().unwrap(), vec![[64512, 1, 2]]);
        for (b, field, value) in [
            (
                BgpSettings {
                    communities: vec!["64512:70000".into()],
                    ..Default::default()
                },
                "bgp.communities",
                "\"64512:70000\"",
            ),
            (
                BgpSettings {
                    communities: vec!["no-exprt".into()],
                    ..Default::default()
                },
                "bgp.communities",
                "\"no-exprt\"",
            ),
            (
                BgpSettings {
                    large_communities: vec!["1:2".into()],
                    ..Default::default()
                },
                "bgp.largeCommunities",
                "\"1:2\"",
            ),
            (
                BgpSettings {
                    aggregation_length: Some(33),
                    ..Default::default()
                },
                "bgp.aggregationLength",
                "33",
            ),
            (
                BgpSettings {
                    aggregation_length_v6: Some(129),
                    ..Default::default()
                },
                "bgp.aggregationLengthV6",
                "129",
            ),
            (
                BgpSettings {
                    peers: vec![String::new()],
                    ..Default::default()
                },
                "bgp.peers",
                "\"\"",
            ),
        ] {
            let e = pool(PoolUse::Service, bgp(b)).validate().unwrap_err();
            let m = e.to_string();
            assert!(m.contains(&format!("{field} {value}")), "{m}");
        }
    }
}
