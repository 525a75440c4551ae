//! Announcement: how a pool's addresses are made reachable from outside a node. Pure types.
//!
//! Why one shape for all modes: a Pool says once how its addresses are announced (`announce`),
//! from which nodes (`nodeSelector`), and with what per-mode settings; the Service controller,
//! the L2 announcer, the BGP speaker and the interface mode all read the same record, so they
//! cannot disagree about who may announce what. Only addresses the ledger holds are ever
//! announced (design invariant 5); this module describes *how*, never *what*.

use crate::selector::LabelSelector;
use serde::{Deserialize, Serialize};

/// How a pool's addresses are announced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum AnnounceMode {
    /// Not announced by Berth (another component makes them reachable, or nothing does).
    #[default]
    None,
    /// One eligible node answers ARP/NDP for each address and sends gratuitous ARP / unsolicited
    /// NA on takeover; fenced failover between nodes.
    L2,
    /// Every eligible node advertises a route for each address to its BGP peers (ECMP at the
    /// router).
    Bgp,
    /// The address is put on an interface (`lo` by default) of every eligible node, for an
    /// outside routing daemon to redistribute (seed 004's mode).
    Interface,
}

/// L2 settings of a pool (`spec.l2`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct L2Settings {
    /// Interfaces to announce on, by name. Empty (and no regex): the interface that holds the
    /// node's InternalIP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// Interfaces to announce on, by a regular expression over their names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_regex: Option<String>,
}

/// BGP advertisement settings of a pool (`spec.bgp`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct BgpSettings {
    /// Peers (by name) the addresses are advertised to. Empty (and no selector): every peer of
    /// the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// Peers (by labels) the addresses are advertised to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_selector: Option<LabelSelector>,
    /// Standard communities, `ASN:VALUE` or a well-known name (`no-export`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<String>,
    /// Large communities, `GLOBAL:LOCAL1:LOCAL2`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub large_communities: Vec<String>,
    /// LOCAL_PREF for iBGP peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pref: Option<u32>,
    /// Prefix length IPv4 addresses are advertised with (32: each address; shorter: the
    /// aggregate that contains it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation_length: Option<u8>,
    /// Prefix length IPv6 addresses are advertised with (128: each address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation_length_v6: Option<u8>,
}

/// Well-known communities by name (RFC 1997, RFC 3765, RFC 7999, RFC 8326).
const WELL_KNOWN: [(&str, u32); 6] = [
    ("no-export", 0xFFFF_FF01),
    ("no-advertise", 0xFFFF_FF02),
    ("no-export-subconfed", 0xFFFF_FF03),
    ("no-peer", 0xFFFF_FF04),
    ("blackhole", 0xFFFF_029A),
    ("graceful-shutdown", 0xFFFF_0000),
];

/// A BGP setting of a pool that cannot be used: the field, its value, and what to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpSettingError {
    /// The field (`bgp.communities`, …).
    pub field: &'static str,
    /// The value.
    pub value: String,
    /// What to write instead.
    pub why: &'static str,
}

impl BgpSettings {
    /// The standard communities as 32-bit values (`ASN:VALUE` is `ASN << 16 | VALUE`).
    pub fn community_values(&self) -> Result<Vec<u32>, BgpSettingError> {
        self.communities
            .iter()
            .map(|c| {
                let named = WELL_KNOWN
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(c.trim()))
                    .map(|(_, v)| *v);
                named
                    .or_else(|| {
                        let (a, b) = c.split_once(':')?;
                        let a: u16 = a.trim().parse().ok()?;
                        let b: u16 = b.trim().parse().ok()?;
                        Some((u32::from(a) << 16) | u32::from(b))
                    })
                    .ok_or_else(|| BgpSettingError {
                        field: "bgp.communities",
                        value: format!("{c:?}"),
                        why: "write ASN:VALUE with both parts 0-65535 (e.g. \"64512:100\") or a well-known name (no-export, no-advertise, no-export-subconfed, no-peer, blackhole, graceful-shutdown)",
                    })
            })
            .collect()
    }

    /// The large communities as (global, local 1, local 2).
    pub fn large_community_values(&self) -> Result<Vec<[u32; 3]>, BgpSettingError> {
        self.large_communities
            .iter()
            .map(|c| {
                let parts: Vec<Option<u32>> = c.split(':').map(|p| p.trim().parse().ok()).collect();
                match parts.as_slice() {
                    [Some(a), Some(b), Some(d)] => Ok([*a, *b, *d]),
                    _ => Err(BgpSettingError {
                        field: "bgp.largeCommunities",
                        value: format!("{c:?}"),
                        why: "write GLOBAL:LOCAL1:LOCAL2, each 0-4294967295 (e.g. \"64512:1:2\")",
                    }),
                }
            })
            .collect()
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), BgpSettingError> {
        self.community_values()?;
        self.large_community_values()?;
        if let Some(l) = self.aggregation_length.filter(|l| *l > 32) {
            return Err(BgpSettingError {
                field: "bgp.aggregationLength",
                value: l.to_string(),
                why: "an IPv4 prefix length is 0-32 (32: each address on its own)",
            });
        }
        if let Some(l) = self.aggregation_length_v6.filter(|l| *l > 128) {
            return Err(BgpSettingError {
                field: "bgp.aggregationLengthV6",
                value: l.to_string(),
                why: "an IPv6 prefix length is 0-128 (128: each address on its own)",
            });
        }
        if self.peers.iter().any(|p| p.is_empty()) {
            return Err(BgpSettingError {
                field: "bgp.peers",
                value: "\"\"".into(),
                why: "name BGPPeer objects, or leave peers out for every peer of the node",
            });
        }
        Ok(())
    }
}

/// Interface-mode settings of a pool (`spec.interface`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct InterfaceSettings {
    /// The interface the addresses are put on (default `lo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl InterfaceSettings {
    /// The interface the addresses go on.
    pub fn interface(&self) -> &str {
        self.name.as_deref().unwrap_or("lo")
    }
}

/// Everything a pool says about announcing its addresses. Flattened into the pool's spec, so
/// users write `announce: l2`, `nodeSelector: …`, `l2: {…}` next to `subnets`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Announcement {
    /// The mode.
    #[serde(default, skip_serializing_if = "is_none_mode")]
    pub announce: AnnounceMode,
    /// Nodes that may announce the pool's addresses. Default: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Settings for `announce: l2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<L2Settings>,
    /// Settings for `announce: bgp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpSettings>,
    /// Settings for `announce: interface`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<InterfaceSettings>,
}

fn is_none_mode(m: &AnnounceMode) -> bool {
    *m == AnnounceMode::None
}

impl Announcement {
    /// Whether a node with `labels` may announce this pool's addresses.
    pub fn node_eligible(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.announce != AnnounceMode::None
            && self
                .node_selector
                .as_ref()
                .is_none_or(|s| s.matches(labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_write_it_flat_next_to_subnets() {
        let a: Announcement = serde_json::from_value(serde_json::json!({
            "announce": "l2",
            "nodeSelector": {"matchLabels": {"edge": "true"}},
            "l2": {"interfaces": ["eth0"]}
        }))
        .unwrap();
        assert_eq!(a.announce, AnnounceMode::L2);
        let mut labels = std::collections::BTreeMap::new();
        assert!(!a.node_eligible(&labels));
        labels.insert("edge".to_string(), "true".to_string());
        assert!(a.node_eligible(&labels));
        assert!(!Announcement::default().node_eligible(&labels));
        assert_eq!(InterfaceSettings::default().interface(), "lo");
        let back = serde_json::to_value(&a).unwrap();
        assert_eq!(back["announce"], "l2");
        assert!(back.get("bgp").is_none());
    }
}
