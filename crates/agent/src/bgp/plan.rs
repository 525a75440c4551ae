//! The pure decision of a node's BGP speaker: which peers this node opens sessions with, and
//! which routes it advertises to each, from the watched objects.
//!
//! Why pure: the speaker is told a whole desired state and applies the difference, so every
//! rule here (node selectors, one AS per node, `externalTrafficPolicy: Local`, families, the
//! pool's `bgp` settings) is testable without a router, and a watch event only means "plan
//! again".

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use berth_core::announce::{AnnounceMode, BgpSettings};
use berth_core::bgp::{AddressFamily, BgpConfigSpec, PeerSpec};
use berth_core::{Binding, Block, Holder, PoolSpec};
use ipnet::IpNet;

pub use berth_k8s::announce::{ServiceFacts, ServiceKey};
pub use berth_k8s::bgp::PeerObject;

/// Everything the plan is computed from; each is a whole watched snapshot.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// This node's labels.
    pub labels: BTreeMap<String, String>,
    /// Every BGPPeer.
    pub peers: Vec<PeerObject>,
    /// The BGPConfiguration `default`, if there is one.
    pub cluster: Option<BgpConfigSpec>,
    /// Every pool (only `announce: bgp` ones matter).
    pub pools: Vec<PoolSpec>,
    /// Every binding held by Services.
    pub bindings: Vec<Binding>,
    /// Every Service's traffic policy.
    pub services: BTreeMap<ServiceKey, ServiceFacts>,
    /// For each Service, the nodes with a ready endpoint.
    pub endpoints: BTreeMap<ServiceKey, BTreeSet<String>>,
    /// This node's pod blocks.
    pub blocks: Vec<Block>,
}

/// A session this node opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The peer as written.
    pub spec: PeerSpec,
    /// This node's AS on it.
    pub local_asn: u32,
}

/// Why the route is advertised (shown by `berth announcements` and the status).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// A Service address (LoadBalancer or admitted externalIP) of a pool.
    Service {
        /// The pool.
        pool: String,
        /// The Services holding it.
        services: Vec<ServiceKey>,
    },
    /// One of this node's pod blocks.
    PodBlock,
    /// A ClusterIP range of `BGPConfiguration`.
    ClusterIps,
}

/// One route to advertise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Where it comes from.
    pub origin: Origin,
    /// The peers (object names) it goes to.
    pub peers: BTreeSet<String>,
    /// Standard communities (`ASN << 16 | VALUE`).
    pub communities: Vec<u32>,
    /// Large communities.
    pub large_communities: Vec<[u32; 3]>,
    /// LOCAL_PREF for iBGP peers.
    pub local_pref: Option<u32>,
}

/// The plan: sessions by peer name, routes by prefix, and what was left out and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sessions this node opens, by BGPPeer name.
    pub sessions: BTreeMap<String, Session>,
    /// Routes this node advertises.
    pub routes: BTreeMap<IpNet, Route>,
    /// Peers that select this node but that it does not open, with why (for an Event).
    pub refused: BTreeMap<String, String>,
    /// `announce: bgp` pools whose `bgp` settings cannot be used, with why (the controller
    /// marks them `Ready=False`; nothing of theirs is advertised).
    pub bad_pools: BTreeMap<String, String>,
}

/// The prefix an address is advertised as: the address itself, or the aggregate of the
/// pool's `aggregationLength` that contains it.
fn prefix_of(addr: IpAddr, bgp: Option<&BgpSettings>) -> IpNet {
    let len = match addr {
        IpAddr::V4(_) => bgp.and_then(|b| b.aggregation_length).unwrap_or(32),
        IpAddr::V6(_) => bgp.and_then(|b| b.aggregation_length_v6).unwrap_or(128),
    };
    IpNet::new(addr, len)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(addr))
}

fn family(net: &IpNet) -> AddressFamily {
    match net {
        IpNet::V4(_) => AddressFamily::Ipv4,
        IpNet::V6(_) => AddressFamily::Ipv6,
    }
}

/// A pool's standard and large communities, parsed.
type Communities = (Vec<u32>, Vec<[u32; 3]>);

/// Computes the plan of node `me`.
pub fn plan(inputs: &Inputs, me: &str) -> Plan {
    let mut out = Plan::default();
    let cluster = inputs.cluster.clone().unwrap_or_default();
    // Sessions: peers selecting this node and valid; one local AS per node (the speaker
    // speaks one), the first peer by name deciding it.
    let mut by_name: Vec<&PeerObject> = inputs.peers.iter().collect();
    by_name.sort_by(|a, b| a.name.cmp(&b.name));
    let mut asn: Option<(u32, &str)> = None;
    let mut addresses: BTreeMap<IpAddr, &str> = BTreeMap::new();
    for p in by_name {
        if !p.spec.selects(&inputs.labels) {
            continue;
        }
        if let Err(e) = p.spec.validate(&cluster) {
            out.refused.insert(p.name.clone(), format!("spec.{e}"));
            continue;
        }
        let Some(local) = p.spec.local_asn(&cluster) else {
            continue; // validate refuses it already
        };
        if let Some((first, by)) = asn {
            if first != local {
                out.refused.insert(
                    p.name.clone(),
                    format!(
                        "this node speaks AS {first} (BGPPeer {by}) and a node speaks one AS: give BGPPeer {} myASN {first}, or select other nodes",
                        p.name
                    ),
                );
                continue;
            }
        } else {
            asn = Some((local, p.name.as_str()));
        }
        if let Some(other) = addresses.get(&p.spec.peer_address) {
            out.refused.insert(
                p.name.clone(),
                format!(
                    "BGPPeer {other} already peers with {} from this node: one session per router address",
                    p.spec.peer_address
                ),
            );
            continue;
        }
        addresses.insert(p.spec.peer_address, p.name.as_str());
        out.sessions.insert(
            p.name.clone(),
            Session {
                spec: p.spec.clone(),
                local_asn: local,
            },
        );
    }
    if out.sessions.is_empty() {
        return out;
    }
    let peers_for = |fam: AddressFamily, bgp: Option<&BgpSettings>| -> BTreeSet<String> {
        out.sessions
            .iter()
            .filter(|(_, s)| s.spec.families().contains(&fam))
            .filter(|(name, _)| match bgp {
                None => true,
                Some(b) if b.peers.is_empty() && b.peer_selector.is_none() => true,
                Some(b) => {
                    b.peers.iter().any(|n| n == *name)
                        || b.peer_selector.as_ref().is_some_and(|sel| {
                            inputs
                                .peers
                                .iter()
                                .find(|p| &p.name == *name)
                                .is_some_and(|p| sel.matches(&p.labels))
                        })
                }
            })
            .map(|(n, _)| n.clone())
            .collect()
    };
    let mut routes: BTreeMap<IpNet, Route> = BTreeMap::new();
    // Service addresses of announce: bgp pools this node may announce.
    let mut pools: BTreeMap<&str, (&PoolSpec, Communities)> = BTreeMap::new();
    for p in inputs
        .pools
        .iter()
        .filter(|p| p.announcement.announce == AnnounceMode::Bgp)
        .filter(|p| p.announcement.node_eligible(&inputs.labels))
    {
        let settings = p.announcement.bgp.clone().unwrap_or_default();
        let parsed = settings.validate().and_then(|()| {
            Ok((
                settings.community_values()?,
                settings.large_community_values()?,
            ))
        });
        match parsed {
            Ok(c) => {
                pools.insert(p.name.as_str(), (p, c));
            }
            Err(e) => {
                out.bad_pools.insert(
                    p.name.clone(),
                    format!("{} {}: {}", e.field, e.value, e.why),
                );
            }
        }
    }
    for b in &inputs.bindings {
        let Holder::Services(h) = &b.holder else {
            continue;
        };
        let Some((pool, (communities, large))) = pools.get(b.pool.as_str()) else {
            continue;
        };
        if h.external_ip && !cluster.external_ips() {
            continue;
        }
        // externalTrafficPolicy: Local: only with a ready endpoint here of every Local
        // Service holding it, so the router's ECMP set follows the endpoints.
        if !berth_k8s::announce::local_endpoints_here(h, &inputs.services, &inputs.endpoints, me) {
            continue;
        }
        let bgp = pool.announcement.bgp.as_ref();
        let prefix = prefix_of(b.address, bgp);
        let peers = peers_for(family(&prefix), bgp);
        if peers.is_empty() {
            continue;
        }
        let services: Vec<ServiceKey> = h
            .services
            .iter()
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .collect();
        let route = routes.entry(prefix).or_insert_with(|| Route {
            origin: Origin::Service {
                pool: b.pool.clone(),
                services: vec![],
            },
            peers: BTreeSet::new(),
            communities: communities.clone(),
            large_communities: large.clone(),
            local_pref: bgp.and_then(|b| b.local_pref),
        });
        route.peers.extend(peers);
        if let Origin::Service { services: s, .. } = &mut route.origin {
            s.extend(services);
            s.sort();
            s.dedup();
        }
    }
    let mut plain = |net: IpNet, origin: Origin| {
        let peers = peers_for(family(&net), None);
        if !peers.is_empty() {
            routes.entry(net).or_insert(Route {
                origin,
                peers,
                communities: vec![],
                large_communities: vec![],
                local_pref: None,
            });
        }
    };
    if cluster.advertise_pod_blocks {
        for b in inputs.blocks.iter().filter(|b| b.node == me) {
            plain(b.cidr, Origin::PodBlock);
        }
    }
    for r in &cluster.service_cluster_ip_ranges {
        plain(*r, Origin::ClusterIps);
    }
    out.routes = routes;
    out
}

/// The speaker's configuration of one planned session: the peer's spec, its password read from
/// its Secret (`None` when it has none), and the peer's name as its group, so that routes can
/// target it by name.
pub fn speaker_peer(
    name: &str,
    session: &Session,
    password: Option<String>,
) -> berth_bgp::PeerConfig {
    let s = &session.spec;
    let mut c = berth_bgp::PeerConfig::new(s.peer_address, s.peer_asn);
    c.port = s.port();
    c.hold_time = s.hold_time();
    c.password = password;
    c.ttl = s.ebgp_multihop;
    c.local_address = s.source_address;
    c.groups = vec![name.to_string()];
    // Each peer is offered its own restart time (or none).
    c.graceful_restart = Some(s.restart_time());
    c.passive = s.passive == Some(true);
    c.bfd = s.bfd.as_ref().map(|b| {
        let (rx, tx, mult) = b.timers();
        berth_bgp::BfdConfig {
            min_rx: std::time::Duration::from_millis(u64::from(rx)),
            min_tx: std::time::Duration::from_millis(u64::from(tx)),
            multiplier: mult,
        }
    });
    c
}

/// Where the speaker listens: port 179 of this node's address towards each passive peer (its
/// `sourceAddress`, else the node's first InternalIP of the peer's family); nothing when no
/// session is passive, so a router on the node keeps port 179.
pub fn listen_addresses(plan: &Plan, node_ips: &[IpAddr]) -> Vec<std::net::SocketAddr> {
    let mut out = BTreeSet::new();
    for s in plan.sessions.values() {
        if s.spec.passive != Some(true) {
            continue;
        }
        let peer_v4 = s.spec.peer_address.is_ipv4();
        let local = s
            .spec
            .source_address
            .or_else(|| node_ips.iter().copied().find(|a| a.is_ipv4() == peer_v4));
        if let Some(a) = local {
            out.insert(std::net::SocketAddr::new(a, berth_core::bgp::BGP_PORT));
        }
    }
    out.into_iter().collect()
}

/// The speaker's routes for `plan`: each route once per peer it goes to (by the peer's group,
/// see [`speaker_peer`]), with its attributes.
pub fn speaker_routes(
    plan: &Plan,
) -> Vec<(berth_bgp::Target, berth_bgp::Prefix, berth_bgp::RouteAttrs)> {
    let mut out = Vec::new();
    for (net, r) in &plan.routes {
        let Some(prefix) = berth_bgp::Prefix::new(net.addr(), net.prefix_len()) else {
            continue;
        };
        let attrs = berth_bgp::RouteAttrs {
            local_pref: r.local_pref,
            communities: r.communities.clone(),
            large_communities: r.large_communities.clone(),
            ..Default::default()
        };
        for peer in &r.peers {
            out.push((
                berth_bgp::Target::Group(peer.clone()),
                prefix,
                attrs.clone(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::{BindingKind, ServiceHolders, ServiceRef, Timestamp};
    use proptest::prelude::*;
    use serde_json::json;

    fn peer(name: &str, spec: serde_json::Value) -> PeerObject {
        PeerObject {
            name: name.into(),
            uid: String::new(),
            labels: BTreeMap::new(),
            spec: serde_json::from_value(spec).unwrap(),
        }
    }

    fn pool(name: &str, extra: serde_json::Value) -> PoolSpec {
        let mut v = json!({"name": name, "use": "service", "announce": "bgp",
                           "subnets": [{"cidr": "198.18.100.0/24"}]});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    fn binding(addr: &str, pool: &str, svc: &str, external: bool) -> Binding {
        Binding {
            address: addr.parse().unwrap(),
            prefix_len: 24,
            pool: pool.into(),
            node: String::new(),
            holder: Holder::Services(ServiceHolders {
                services: vec![ServiceRef {
                    namespace: "ns".into(),
                    name: svc.into(),
                    uid: "u".into(),
                }],
                sharing_key: None,
                external_ip: external,
            }),
            kind: BindingKind::Fixed,
            since: Timestamp::default(),
        }
    }

    fn inputs() -> Inputs {
        Inputs {
            labels: [("rack".to_string(), "a".to_string())].into(),
            peers: vec![
                peer(
                    "tor-a",
                    json!({"peerAddress": "198.18.1.1", "peerASN": 64512,
                                     "nodeSelector": {"matchLabels": {"rack": "a"}}}),
                ),
                peer(
                    "tor-b",
                    json!({"peerAddress": "198.18.2.1", "peerASN": 64512,
                                     "nodeSelector": {"matchLabels": {"rack": "b"}}}),
                ),
                peer(
                    "v6",
                    json!({"peerAddress": "2001:db8::1", "peerASN": 64512}),
                ),
            ],
            cluster: Some(BgpConfigSpec {
                my_asn: Some(64513),
                ..Default::default()
            }),
            pools: vec![pool("lb", json!({}))],
            bindings: vec![binding("198.18.100.5", "lb", "web", false)],
            ..Default::default()
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_node_peers_with_the_routers_that_select_it_and_advertises_by_family() {
        let p = plan(&inputs(), "n1");
        assert_eq!(
            p.sessions.keys().collect::<Vec<_>>(),
            ["tor-a", "v6"],
            "tor-b selects rack b"
        );
        assert_eq!(p.sessions["tor-a"].local_asn, 64513);
        let r = &p.routes[&net("198.18.100.5/32")];
        // The IPv4 address goes to the IPv4 session only.
        assert_eq!(r.peers, ["tor-a".to_string()].into());
        assert_eq!(
            r.origin,
            Origin::Service {
                pool: "lb".into(),
                services: vec![("ns".into(), "web".into())]
            }
        );
        assert!(p.refused.is_empty(), "{:?}", p.refused);
    }

    #[test]
    fn local_traffic_policy_follows_the_endpoints() {
        let mut i = inputs();
        let key = ("ns".to_string(), "web".to_string());
        i.services.insert(
            key.clone(),
            ServiceFacts {
                uid: "u".into(),
                local: true,
            },
        );
        assert!(plan(&i, "n1").routes.is_empty(), "no endpoint here");
        i.endpoints.insert(key, ["n1".to_string()].into());
        assert!(plan(&i, "n1").routes.contains_key(&net("198.18.100.5/32")));
        assert!(plan(&i, "n2").routes.is_empty(), "n2 has no endpoint");
    }

    #[test]
    fn a_node_speaks_one_as_and_one_session_per_router() {
        let mut i = inputs();
        i.peers.push(peer(
            "tor-a2",
            json!({"peerAddress": "198.18.1.2", "peerASN": 64512, "myASN": 65000}),
        ));
        i.peers.push(peer(
            "tor-a-dup",
            json!({"peerAddress": "198.18.1.1", "peerASN": 64512}),
        ));
        i.peers.push(peer(
            "bad",
            json!({"peerAddress": "198.18.3.1", "peerASN": 0}),
        ));
        let p = plan(&i, "n1");
        assert!(
            p.refused["tor-a2"].contains("speaks AS 64513"),
            "{:?}",
            p.refused
        );
        assert!(
            p.refused["tor-a-dup"].contains("one session per router"),
            "{:?}",
            p.refused
        );
        assert!(
            p.refused["bad"].starts_with("spec.peerASN 0"),
            "{:?}",
            p.refused
        );
        assert_eq!(p.sessions.keys().collect::<Vec<_>>(), ["tor-a", "v6"]);
    }

    #[test]
    fn pool_settings_choose_peers_prefix_and_attributes() {
        let mut i = inputs();
        i.peers.push(PeerObject {
            labels: [("role".to_string(), "edge".to_string())].into(),
            ..peer(
                "edge",
                json!({"peerAddress": "198.18.9.1", "peerASN": 64600}),
            )
        });
        i.pools = vec![pool(
            "lb",
            json!({"bgp": {"peerSelector": {"matchLabels": {"role": "edge"}},
                           "communities": ["64512:100"], "localPref": 200,
                           "aggregationLength": 28}}),
        )];
        let p = plan(&i, "n1");
        let r = &p.routes[&net("198.18.100.0/28")];
        assert_eq!(r.peers, ["edge".to_string()].into());
        assert_eq!(r.communities, [(64512 << 16) | 100]);
        assert_eq!(r.local_pref, Some(200));
        // By name instead.
        i.pools = vec![pool("lb", json!({"bgp": {"peers": ["tor-a"]}}))];
        assert_eq!(
            plan(&i, "n1").routes[&net("198.18.100.5/32")].peers,
            ["tor-a".to_string()].into()
        );
    }

    #[test]
    fn pod_blocks_cluster_ips_and_external_ips_follow_the_configuration() {
        let mut i = inputs();
        i.bindings.push(binding("198.18.100.7", "lb", "ext", true));
        i.blocks = vec![
            Block {
                pool: "pods".into(),
                cidr: net("198.18.64.0/26"),
                node: "n1".into(),
            },
            Block {
                pool: "pods".into(),
                cidr: net("198.18.64.64/26"),
                node: "n2".into(),
            },
        ];
        let p = plan(&i, "n1");
        assert!(
            p.routes.contains_key(&net("198.18.100.7/32")),
            "externalIPs by default"
        );
        assert!(
            !p.routes.contains_key(&net("198.18.64.0/26")),
            "pod blocks off by default"
        );
        i.cluster = Some(BgpConfigSpec {
            my_asn: Some(64513),
            advertise_pod_blocks: true,
            service_cluster_ip_ranges: vec![net("10.96.0.0/12"), net("2001:db8:96::/112")],
            advertise_external_ips: Some(false),
        });
        let p = plan(&i, "n1");
        assert!(!p.routes.contains_key(&net("198.18.100.7/32")));
        assert_eq!(p.routes[&net("198.18.64.0/26")].origin, Origin::PodBlock);
        assert!(
            !p.routes.contains_key(&net("198.18.64.64/26")),
            "n2's block"
        );
        assert_eq!(
            p.routes[&net("10.96.0.0/12")].peers,
            ["tor-a".to_string()].into()
        );
        assert_eq!(
            p.routes[&net("2001:db8:96::/112")].peers,
            ["v6".to_string()].into()
        );
        // No session, no routes.
        i.labels.clear();
        i.peers.retain(|p| p.name != "v6");
        let p = plan(&i, "n1");
        assert!(p.sessions.is_empty() && p.routes.is_empty());
    }

    #[test]
    fn a_pool_with_unusable_bgp_settings_advertises_nothing_and_says_why() {
        let mut i = inputs();
        i.pools = vec![pool("lb", json!({"bgp": {"communities": ["64512:70000"]}}))];
        let p = plan(&i, "n1");
        assert!(p.routes.is_empty());
        assert!(
            p.bad_pools["lb"].contains("bgp.communities \"64512:70000\""),
            "{:?}",
            p.bad_pools
        );
    }

    #[test]
    fn passive_peers_make_the_speaker_listen_on_the_nodes_address_towards_them() {
        let mut i = inputs();
        let ips: Vec<IpAddr> = vec![
            "198.18.0.11".parse().unwrap(),
            "2001:db8::11".parse().unwrap(),
        ];
        let p = plan(&i, "n1");
        assert!(
            listen_addresses(&p, &ips).is_empty(),
            "no passive peer: no listener"
        );
        assert!(!speaker_peer("tor-a", &p.sessions["tor-a"], None).passive);
        i.peers = vec![
            peer(
                "a",
                json!({"peerAddress": "198.18.1.1", "peerASN": 64512, "passive": true}),
            ),
            peer(
                "b",
                json!({"peerAddress": "2001:db8::1", "peerASN": 64512, "passive": true}),
            ),
            peer(
                "c",
                json!({"peerAddress": "198.18.1.3", "peerASN": 64512, "passive": true,
                             "sourceAddress": "198.18.0.99"}),
            ),
            peer("d", json!({"peerAddress": "198.18.1.4", "peerASN": 64512})),
        ];
        let p = plan(&i, "n1");
        let l: Vec<String> = listen_addresses(&p, &ips)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            l,
            ["198.18.0.11:179", "198.18.0.99:179", "[2001:db8::11]:179"]
        );
        assert!(speaker_peer("a", &p.sessions["a"], None).passive);
        assert!(!speaker_peer("d", &p.sessions["d"], None).passive);
    }

    #[test]
    fn the_speaker_gets_each_session_and_route_by_peer_name() {
        let mut i = inputs();
        i.peers[0] = peer(
            "tor-a",
            json!({"peerAddress": "198.18.1.1", "peerASN": 64512, "peerPort": 1179,
                   "holdTimeSeconds": 9, "ebgpMultihop": 3, "sourceAddress": "198.18.0.11",
                   "bfd": {"minRxMillis": 50}}),
        );
        i.pools = vec![pool(
            "lb",
            json!({"bgp": {"communities": ["no-export"], "largeCommunities": ["1:2:3"]}}),
        )];
        let p = plan(&i, "n1");
        let c = speaker_peer("tor-a", &p.sessions["tor-a"], Some("s3cret".into()));
        assert_eq!(c.address, "198.18.1.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (c.port, c.remote_as, c.hold_time, c.ttl),
            (1179, 64512, 9, Some(3))
        );
        assert_eq!(c.local_address, Some("198.18.0.11".parse().unwrap()));
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert_eq!(c.groups, ["tor-a"]);
        assert_eq!(
            c.graceful_restart,
            Some(Some(120)),
            "graceful restart on by default"
        );
        for (gr, want) in [
            (json!({"enabled": false}), None),
            (json!({"restartTimeSeconds": 30}), Some(30)),
        ] {
            let mut j = inputs();
            j.peers[0] = peer(
                "tor-b",
                json!({"peerAddress": "198.18.1.2", "peerASN": 64512, "gracefulRestart": gr}),
            );
            let q = plan(&j, "n1");
            let c = speaker_peer("tor-b", &q.sessions["tor-b"], None);
            assert_eq!(c.graceful_restart, Some(want), "{gr}");
        }
        let bfd = c.bfd.unwrap();
        assert_eq!(
            (
                bfd.min_rx.as_millis(),
                bfd.min_tx.as_millis(),
                bfd.multiplier
            ),
            (50, 300, 3)
        );
        let routes = speaker_routes(&p);
        assert_eq!(routes.len(), 1);
        let (target, prefix, attrs) = &routes[0];
        assert_eq!(*target, berth_bgp::Target::Group("tor-a".into()));
        assert_eq!(prefix.to_string(), "198.18.100.5/32");
        assert_eq!(attrs.communities, [0xFFFF_FF01]);
        assert_eq!(attrs.large_communities, [[1, 2, 3]]);
    }

    proptest! {
        /// Whatever the inputs, every route goes only to planned sessions of its family, and
        /// no two sessions share a router address or differ in local AS.
        #[test]
        fn routes_go_only_to_planned_sessions_of_their_family(
            addrs in proptest::collection::vec((any::<u8>(), any::<bool>(), any::<bool>()), 0..12),
            peers in proptest::collection::vec((any::<u8>(), proptest::option::of(64512u32..64515), any::<bool>()), 0..6),
        ) {
            let mut i = inputs();
            i.peers = peers.iter().enumerate().map(|(n, (a, my, v6))| {
                let addr = if *v6 { format!("2001:db8::{a}") } else { format!("198.18.1.{a}") };
                peer(&format!("p{n}"), json!({"peerAddress": addr, "peerASN": 64600, "myASN": my}))
            }).collect();
            i.bindings = addrs.iter().map(|(a, ext, local)| {
                let svc = format!("s{a}");
                if *local {
                    i.services.insert(("ns".into(), svc.clone()), ServiceFacts { uid: "u".into(), local: true });
                }
                binding(&format!("198.18.100.{a}"), "lb", &svc, *ext)
            }).collect();
            let p = plan(&i, "n1");
            let asns: BTreeSet<u32> = p.sessions.values().map(|s| s.local_asn).collect();
            prop_assert!(asns.len() <= 1);
            let addrs: BTreeSet<IpAddr> = p.sessions.values().map(|s| s.spec.peer_address).collect();
            prop_assert_eq!(addrs.len(), p.sessions.len());
            for (net, r) in &p.routes {
                prop_assert!(!r.peers.is_empty());
                for name in &r.peers {
                    let s = &p.sessions[name];
                    prop_assert!(s.spec.families().contains(&family(net)));
                }
                if let Origin::Service { services, .. } = &r.origin {
                    for key in services {
                        prop_assert!(!i.services.get(key).is_some_and(|f| f.local), "{key:?} is Local with no endpoint");
                    }
                }
            }
        }
    }
}
