//! BGP configuration as users write it: the routers each node peers with ([`PeerSpec`], the
//! `BGPPeer` resource) and what the cluster advertises besides Service addresses
//! ([`BgpConfigSpec`], the `BGPConfiguration` named `default`). Pure types and their checks.
//!
//! Why here and not in the speaker: the agent decides per node which peers apply (node
//! selectors, Secrets, the pool's `bgp` settings) before the speaker sees anything, and a bad
//! object must be refused with its field named, whether the agent or `berth` reads it. The
//! speaker (`crates/bgp`) stays free of Kubernetes and of this vocabulary.
//!
//! Why advertisement settings live on the Pool (`spec.bgp`, [`crate::announce::BgpSettings`])
//! rather than in a resource of their own (MetalLB's BGPAdvertisement): a pool already says how
//! its addresses are announced and from which nodes; a second object selecting pools by label
//! is a second place to look when a route is missing, and the two could disagree.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::selector::LabelSelector;

/// The well-known TCP port of BGP.
pub const BGP_PORT: u16 = 179;
/// RFC 4271's suggested hold time, seconds.
pub const DEFAULT_HOLD_TIME: u16 = 90;
/// RFC 4724's customary restart time, seconds.
pub const DEFAULT_RESTART_TIME: u16 = 120;

/// One BGP neighbour for the nodes its `nodeSelector` picks (`BGPPeer.spec`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerSpec {
    /// The router's address.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema::ip"))]
    pub peer_address: IpAddr,
    /// The router's AS number.
    #[serde(rename = "peerASN")]
    pub peer_asn: u32,
    /// The nodes' AS number towards this peer. Default: `BGPConfiguration` `default`'s `myASN`.
    #[serde(rename = "myASN", default, skip_serializing_if = "Option::is_none")]
    pub my_asn: Option<u32>,
    /// The router's TCP port (179).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<u16>,
    /// The local address sessions are opened from. Default: the node's address towards the
    /// peer, as the routing table chooses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema::ip_opt"))]
    pub source_address: Option<IpAddr>,
    /// Nodes that peer with this router. Default: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// The TCP MD5 password (RFC 2385), from a Secret in Berth's namespace. A missing Secret or
    /// key keeps the session down (fail closed) with a Warning Event naming it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// The hold time proposed in the OPEN, seconds: 0 (no keepalives) or 3 and more (90).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time_seconds: Option<u16>,
    /// eBGP multihop: the TTL of the session's packets (2–255), for a router that is not on a
    /// segment the node is on. Default: 1 for eBGP, 64 for iBGP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebgp_multihop: Option<u8>,
    /// BFD on this session (RFC 5880/5881): the session goes down when BFD does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdSpec>,
    /// Graceful restart (RFC 4724): on by default, so an agent restart keeps the router's
    /// routes for the restart time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graceful_restart: Option<GracefulRestartSpec>,
    /// Address families advertised on the session. Default: the peer address's family.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub families: Vec<AddressFamily>,
    /// The router opens the session: the node does not dial, it listens on port 179 of its
    /// address towards the peer (`sourceAddress`, else its InternalIP of the peer's family)
    /// and takes the router's connection. For routers that only dial. Default false: the node
    /// dials (and listens on nothing, so a router on the node may hold port 179).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<bool>,
}

/// A key of a Secret in Berth's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key in its `data` (default `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl SecretKeyRef {
    /// The key read from the Secret.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or("password")
    }
}

/// BFD timers of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BfdSpec {
    /// How often this node wants to hear from the router, milliseconds (300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rx_millis: Option<u32>,
    /// How often this node would like to send, milliseconds (300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_tx_millis: Option<u32>,
    /// Packets missed before the session is down (3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<u8>,
}

impl BfdSpec {
    /// (min RX, min TX, multiplier) with the defaults filled in.
    pub fn timers(&self) -> (u32, u32, u8) {
        (
            self.min_rx_millis.unwrap_or(300),
            self.min_tx_millis.unwrap_or(300),
            self.multiplier.unwrap_or(3),
        )
    }
}

/// Graceful restart of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GracefulRestartSpec {
    /// Advertise the capability (true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How long the router keeps this node's routes while its agent restarts, seconds
    /// (1–4095; 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_time_seconds: Option<u16>,
}

/// An address family of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum AddressFamily {
    /// IPv4 unicast.
    Ipv4,
    /// IPv6 unicast.
    Ipv6,
}

/// What the cluster advertises over BGP besides Service addresses, and the nodes' AS
/// (`BGPConfiguration` `default`; Calico's BGPConfiguration is the model).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BgpConfigSpec {
    /// The nodes' AS number, for peers that do not set `myASN`.
    #[serde(rename = "myASN", default, skip_serializing_if = "Option::is_none")]
    pub my_asn: Option<u32>,
    /// Each node advertises the pod blocks it holds (the routed pod network through the
    /// router; seed 002). Default: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub advertise_pod_blocks: bool,
    /// ClusterIP ranges every node advertises (the API server's `--service-cluster-ip-range`,
    /// which Kubernetes does not publish). Empty: none.
    #[serde(
        rename = "serviceClusterIPRanges",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema::cidr_list"))]
    pub service_cluster_ip_ranges: Vec<IpNet>,
    /// Advertise the `externalIPs` the Service controller admitted from `announce: bgp`
    /// pools (true).
    #[serde(
        rename = "advertiseExternalIPs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub advertise_external_ips: Option<bool>,
}

impl BgpConfigSpec {
    /// Whether admitted external IPs are advertised.
    pub fn external_ips(&self) -> bool {
        self.advertise_external_ips.unwrap_or(true)
    }

    /// Checks every field; the error names the field, the value and the fix.
    pub fn validate(&self) -> Result<(), BgpError> {
        if let Some(asn) = self.my_asn {
            check_asn("myASN", asn)?;
        }
        for r in &self.service_cluster_ip_ranges {
            if r.prefix_len() == 0 {
                return Err(BgpError::invalid(
                    "serviceClusterIPRanges",
                    r.to_string(),
                    "a default route is not a ClusterIP range: give the API server's --service-cluster-ip-range",
                ));
            }
            if r.trunc() != *r {
                return Err(BgpError::invalid(
                    "serviceClusterIPRanges",
                    r.to_string(),
                    format!("has host bits set: write {}", r.trunc()),
                ));
            }
        }
        Ok(())
    }
}

/// A BGP object that cannot be used, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BgpError {
    /// A field's value is wrong.
    #[error("{field} {value}: {why}")]
    Invalid {
        /// The field, as users write it (`spec.` omitted).
        field: &'static str,
        /// Its value.
        value: String,
        /// What is wrong and what to write.
        why: String,
    },
}

impl BgpError {
    fn invalid(field: &'static str, value: impl Into<String>, why: impl Into<String>) -> Self {
        BgpError::Invalid {
            field,
            value: value.into(),
            why: why.into(),
        }
    }

    /// The field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            BgpError::Invalid { field, .. } => field,
        }
    }
}

fn check_asn(field: &'static str, asn: u32) -> Result<(), BgpError> {
    let why = match asn {
        0 => "AS 0 is reserved (RFC 7607)",
        23456 => "AS 23456 is AS_TRANS (RFC 6793), a placeholder, never a real AS",
        65535 | 4_294_967_295 => "the last AS of each range is reserved (RFC 7300)",
        _ => return Ok(()),
    };
    Err(BgpError::invalid(
        field,
        asn.to_string(),
        format!("{why}: use your AS, or a private one (64512–65534, 4200000000–4294967294)"),
    ))
}

impl PeerSpec {
    /// The router's port.
    pub fn port(&self) -> u16 {
        self.peer_port.unwrap_or(BGP_PORT)
    }

    /// The hold time proposed.
    pub fn hold_time(&self) -> u16 {
        self.hold_time_seconds.unwrap_or(DEFAULT_HOLD_TIME)
    }

    /// The restart time advertised, `None` when graceful restart is off.
    pub fn restart_time(&self) -> Option<u16> {
        match &self.graceful_restart {
            None => Some(DEFAULT_RESTART_TIME),
            Some(g) if g.enabled == Some(false) => None,
            Some(g) => Some(g.restart_time_seconds.unwrap_or(DEFAULT_RESTART_TIME)),
        }
    }

    /// The families advertised on the session.
    pub fn families(&self) -> Vec<AddressFamily> {
        if self.families.is_empty() {
            vec![if self.peer_address.is_ipv4() {
                AddressFamily::Ipv4
            } else {
                AddressFamily::Ipv6
            }]
        } else {
            let mut f = self.families.clone();
            f.sort();
            f.dedup();
            f
        }
    }

    /// The nodes' AS towards this peer: its own `myASN`, else the cluster's.
    pub fn local_asn(&self, cluster: &BgpConfigSpec) -> Option<u32> {
        self.my_asn.or(cluster.my_asn)
    }

    /// Whether a node with `labels` peers with this router.
    pub fn selects(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.node_selector
            .as_ref()
            .is_none_or(|s| s.matches(labels))
    }

    /// Checks every field against `cluster` (where `myASN` may come from); the error names the
    /// field, the value and the fix.
    pub fn validate(&self, cluster: &BgpConfigSpec) -> Result<(), BgpError> {
        let a = self.peer_address;
        if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
            return Err(BgpError::invalid(
                "peerAddress",
                a.to_string(),
                "not a router's address: give the unicast address the router listens on",
            ));
        }
        if let IpAddr::V4(v4) = a {
            if v4.is_broadcast() {
                return Err(BgpError::invalid(
                    "peerAddress",
                    a.to_string(),
                    "the broadcast address is not a router: give the router's unicast address",
                ));
            }
        }
        check_asn("peerASN", self.peer_asn)?;
        let Some(mine) = self.local_asn(cluster) else {
            return Err(BgpError::invalid(
                "myASN",
                "(unset)",
                "the nodes' AS is given nowhere: set myASN on this BGPPeer or in BGPConfiguration \"default\"",
            ));
        };
        check_asn("myASN", mine)?;
        if self.peer_port == Some(0) {
            return Err(BgpError::invalid(
                "peerPort",
                "0",
                "give the router's BGP port (179 unless it listens elsewhere)",
            ));
        }
        if let Some(s) = self.source_address {
            if s.is_ipv4() != a.is_ipv4() || s.is_unspecified() || s.is_multicast() {
                return Err(BgpError::invalid(
                    "sourceAddress",
                    s.to_string(),
                    format!(
                        "must be a unicast address of the peer's family ({}), on the node",
                        if a.is_ipv4() { "IPv4" } else { "IPv6" }
                    ),
                ));
            }
        }
        if let Some(h) = self.hold_time_seconds {
            if h == 1 || h == 2 {
                return Err(BgpError::invalid(
                    "holdTimeSeconds",
                    h.to_string(),
                    "RFC 4271 allows 0 or at least 3: use 3 or more (90 is customary; BFD detects faster)",
                ));
            }
        }
        if let Some(ttl) = self.ebgp_multihop {
            if mine == self.peer_asn {
                return Err(BgpError::invalid(
                    "ebgpMultihop",
                    ttl.to_string(),
                    "this is an iBGP session (myASN equals peerASN), which is multihop already: remove the field",
                ));
            }
            if ttl < 2 {
                return Err(BgpError::invalid(
                    "ebgpMultihop",
                    ttl.to_string(),
                    "the TTL must be 2–255 to reach a router beyond the node's segment; remove it for a directly connected router",
                ));
            }
        }
        if let Some(b) = &self.bfd {
            let (rx, tx, mult) = b.timers();
            for (field, v) in [("bfd.minRxMillis", rx), ("bfd.minTxMillis", tx)] {
                if !(10..=60_000).contains(&v) {
                    return Err(BgpError::invalid(
                        field,
                        v.to_string(),
                        "use 10–60000 milliseconds (300 is customary; 50 for fast detection)",
                    ));
                }
            }
            if mult == 0 {
                return Err(BgpError::invalid(
                    "bfd.multiplier",
                    "0",
                    "use 1–255 (3 is customary)",
                ));
            }
        }
        if let Some(g) = &self.graceful_restart {
            if let Some(t) = g.restart_time_seconds {
                if t == 0 || t > 4095 {
                    return Err(BgpError::invalid(
                        "gracefulRestart.restartTimeSeconds",
                        t.to_string(),
                        "RFC 4724 carries 1–4095 seconds: use 120, or set enabled: false to turn graceful restart off",
                    ));
                }
            }
        }
        if let Some(r) = &self.password_secret_ref {
            if !crate::names::is_dns_subdomain(&r.name) {
                return Err(BgpError::invalid(
                    "passwordSecretRef.name",
                    format!("{:?}", r.name),
                    "not a Secret name (lower-case letters, digits, '-' and '.'): name a Secret in Berth's namespace",
                ));
            }
            let k = r.key();
            if k.is_empty()
                || k.len() > 253
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(BgpError::invalid(
                    "passwordSecretRef.key",
                    format!("{k:?}"),
                    "not a Secret key (letters, digits, '-', '.', '_'): name the key that holds the password",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn peer(v: serde_json::Value) -> Result<PeerSpec, serde_json::Error> {
        serde_json::from_value(v)
    }

    fn cluster() -> BgpConfigSpec {
        BgpConfigSpec {
            my_asn: Some(64513),
            ..Default::default()
        }
    }

    #[test]
    fn users_write_metallb_like_fields_and_get_defaults() {
        let p = peer(json!({
            "peerAddress": "198.18.1.1", "peerASN": 64512,
            "nodeSelector": {"matchLabels": {"rack": "a"}},
            "passwordSecretRef": {"name": "router-a"},
            "bfd": {"minRxMillis": 50, "minTxMillis": 50}
        }))
        .unwrap();
        p.validate(&cluster()).unwrap();
        assert_eq!(p.port(), 179);
        assert_eq!(p.hold_time(), 90);
        assert_eq!(p.restart_time(), Some(120));
        assert_eq!(p.families(), vec![AddressFamily::Ipv4]);
        assert_eq!(p.local_asn(&cluster()), Some(64513));
        assert_eq!(p.password_secret_ref.as_ref().unwrap().key(), "password");
        assert_eq!(p.bfd.as_ref().unwrap().timers(), (50, 50, 3));
        let mut labels = std::collections::BTreeMap::new();
        assert!(!p.selects(&labels));
        labels.insert("rack".into(), "a".into());
        assert!(p.selects(&labels));
        let back = serde_json::to_value(&p).unwrap();
        assert_eq!(back["peerASN"], 64512);
        assert!(back.get("myASN").is_none());
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let e = peer(json!({"peerAddress": "198.18.1.1", "peerASN": 1, "peerAsn": 2}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("peerAsn"), "{e}");
    }

    #[test]
    fn every_bad_field_is_named_with_its_value() {
        let base = json!({"peerAddress": "198.18.1.1", "peerASN": 64512});
        let cases: Vec<(serde_json::Value, &str, &str)> = vec![
            (json!({"peerAddress": "0.0.0.0"}), "peerAddress", "0.0.0.0"),
            (json!({"peerAddress": "ff02::1"}), "peerAddress", "ff02::1"),
            (json!({"peerASN": 0}), "peerASN", "0"),
            (json!({"peerASN": 23456}), "peerASN", "23456"),
            (json!({"myASN": 65535}), "myASN", "65535"),
            (json!({"peerPort": 0}), "peerPort", "0"),
            (
                json!({"sourceAddress": "2001:db8::1"}),
                "sourceAddress",
                "2001:db8::1",
            ),
            (json!({"holdTimeSeconds": 2}), "holdTimeSeconds", "2"),
            (json!({"ebgpMultihop": 1}), "ebgpMultihop", "1"),
            (
                json!({"ebgpMultihop": 5, "myASN": 64512}),
                "ebgpMultihop",
                "5",
            ),
            (json!({"bfd": {"minRxMillis": 5}}), "bfd.minRxMillis", "5"),
            (json!({"bfd": {"multiplier": 0}}), "bfd.multiplier", "0"),
            (
                json!({"gracefulRestart": {"restartTimeSeconds": 5000}}),
                "gracefulRestart.restartTimeSeconds",
                "5000",
            ),
            (
                json!({"passwordSecretRef": {"name": "Router_A"}}),
                "passwordSecretRef.name",
                "Router_A",
            ),
            (
                json!({"passwordSecretRef": {"name": "r", "key": "a/b"}}),
                "passwordSecretRef.key",
                "a/b",
            ),
        ];
        for (patch, field, value) in cases {
            let mut v = base.clone();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            let e = peer(v.clone())
                .unwrap()
                .validate(&cluster())
                .expect_err(&v.to_string());
            assert_eq!(e.field(), field, "{v}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(field) && msg.contains(value), "{msg}");
        }
        // myASN nowhere: the message says where to set it.
        let e = peer(base)
            .unwrap()
            .validate(&BgpConfigSpec::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("BGPConfiguration"), "{e}");
    }

    #[test]
    fn graceful_restart_and_families() {
        let p = peer(
            json!({"peerAddress": "2001:db8::1", "peerASN": 64512, "myASN": 64512,
            "gracefulRestart": {"enabled": false}, "families": ["ipv6", "ipv4", "ipv6"]}),
        )
        .unwrap();
        p.validate(&BgpConfigSpec::default()).unwrap();
        assert_eq!(p.restart_time(), None);
        assert_eq!(p.families(), vec![AddressFamily::Ipv4, AddressFamily::Ipv6]);
        let p = peer(json!({"peerAddress": "2001:db8::1", "peerASN": 64512,
            "gracefulRestart": {"restartTimeSeconds": 30}}))
        .unwrap();
        assert_eq!(p.restart_time(), Some(30));
        assert_eq!(p.families(), vec![AddressFamily::Ipv6]);
    }

    #[test]
    fn cluster_settings() {
        let c: BgpConfigSpec = serde_json::from_value(json!({
            "myASN": 64513, "advertisePodBlocks": true,
            "serviceClusterIPRanges": ["10.96.0.0/12", "2001:db8:96::/112"]
        }))
        .unwrap();
        c.validate().unwrap();
        assert!(c.external_ips() && c.advertise_pod_blocks);
        for (bad, field) in [
            (
                json!({"serviceClusterIPRanges": ["10.96.0.1/12"]}),
                "serviceClusterIPRanges",
            ),
            (
                json!({"serviceClusterIPRanges": ["0.0.0.0/0"]}),
                "serviceClusterIPRanges",
            ),
            (json!({"myASN": 0}), "myASN"),
        ] {
            let c: BgpConfigSpec = serde_json::from_value(bad).unwrap();
            assert_eq!(c.validate().unwrap_err().field(), field);
        }
    }

    proptest! {
        /// Whatever a user writes, validation answers (never panics), and what it accepts
        /// serializes back to the same object.
        #[test]
        fn validation_is_total_and_accepted_specs_round_trip(
            a in any::<[u8; 4]>(), peer_asn in any::<u32>(), my in proptest::option::of(any::<u32>()),
            hold in proptest::option::of(any::<u16>()), ttl in proptest::option::of(any::<u8>()),
            rx in proptest::option::of(any::<u32>()), mult in proptest::option::of(any::<u8>()),
            gr in proptest::option::of(any::<u16>()), name in "[a-zA-Z0-9._/-]{0,12}",
        ) {
            let p = PeerSpec {
                peer_address: IpAddr::from(a),
                peer_asn,
                my_asn: my,
                peer_port: None,
                source_address: None,
                node_selector: None,
                password_secret_ref: Some(SecretKeyRef { name, key: None }),
                hold_time_seconds: hold,
                ebgp_multihop: ttl,
                bfd: Some(BfdSpec { min_rx_millis: rx, min_tx_millis: None, multiplier: mult }),
                graceful_restart: Some(GracefulRestartSpec { enabled: None, restart_time_seconds: gr }),
                families: vec![],
                passive: None,
            };
            if p.validate(&cluster()).is_ok() {
                let back: PeerSpec = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
                prop_assert_eq!(back, p);
            }
        }
    }
}
