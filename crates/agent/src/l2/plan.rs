//! The pure decision of the Kubernetes L2 announcer: who the members are, which addresses are
//! announced, and which members may announce each.
//!
//! Why pure: every agent computes the same plan from the same watched objects, and the election
//! only agrees on an owner when they do; a function of its inputs is testable without a cluster
//! and gives the same answer on every node.

use berth_announce::Eligible;
use berth_core::announce::{AnnounceMode, Announcement};
use berth_core::{Binding, Holder, PoolSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

pub use berth_k8s::announce::{NodeFacts, ServiceFacts, ServiceKey};

/// Everything the plan is computed from; each map is a whole watched snapshot.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Every Node.
    pub nodes: BTreeMap<String, NodeFacts>,
    /// Every pool (only those with `announce: l2` matter).
    pub pools: Vec<PoolSpec>,
    /// Every binding held by Services.
    pub bindings: Vec<Binding>,
    /// Every Service.
    pub services: BTreeMap<ServiceKey, ServiceFacts>,
    /// For each Service, the nodes with at least one ready endpoint (EndpointSlices).
    pub endpoints: BTreeMap<ServiceKey, BTreeSet<String>>,
}

/// One announced address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The pool it is from.
    pub pool: String,
    /// The Services holding it (Events go to them).
    pub services: Vec<ServiceKey>,
    /// Members that may announce it.
    pub eligible: BTreeSet<String>,
    /// Why no member may announce it, when none may.
    pub why_none: Option<String>,
}

/// The plan: members with their heartbeat addresses, and the addresses to announce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Nodes taking part in the election (eligible for at least one L2 pool), each with the
    /// InternalIP heartbeats go to.
    pub members: BTreeMap<String, IpAddr>,
    /// Addresses to announce, each with who may.
    pub addresses: BTreeMap<IpAddr, Planned>,
    /// Nodes left out of the membership, with why (no InternalIP of the heartbeat family).
    pub left_out: BTreeMap<String, String>,
}

impl Plan {
    /// The election's view: each address with the members that may announce it.
    pub fn eligibility(&self) -> BTreeMap<IpAddr, Eligible> {
        self.addresses
            .iter()
            .map(|(a, p)| (*a, Eligible::Only(p.eligible.clone())))
            .collect()
    }

    /// Whether `node` takes part.
    pub fn is_member(&self, node: &str) -> bool {
        self.members.contains_key(node)
    }
}

/// The pools with `announce: l2`, by name.
fn l2_pools(pools: &[PoolSpec]) -> BTreeMap<&str, &Announcement> {
    pools
        .iter()
        .filter(|p| p.announcement.announce == AnnounceMode::L2)
        .map(|p| (p.name.as_str(), &p.announcement))
        .collect()
}

/// Computes the plan. `v4` is the heartbeat family (that of the first InternalIP of this
/// node): every member is reached on its first InternalIP of that family.
pub fn plan(inputs: &Inputs, v4: bool) -> Plan {
    let pools = l2_pools(&inputs.pools);
    let mut out = Plan::default();
    if pools.is_empty() {
        return out;
    }
    // Members: nodes some L2 pool selects, with an address to heartbeat to.
    let mut selected: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (name, node) in &inputs.nodes {
        let pools_of: BTreeSet<&str> = pools
            .iter()
            .filter(|(_, a)| a.node_eligible(&node.labels))
            .map(|(p, _)| *p)
            .collect();
        if pools_of.is_empty() {
            continue;
        }
        match node.ips.iter().find(|ip| ip.is_ipv4() == v4) {
            Some(ip) => {
                out.members.insert(name.clone(), *ip);
                selected.insert(name.as_str(), pools_of);
            }
            None => {
                out.left_out.insert(
                    name.clone(),
                    format!(
                        "it has no {} InternalIP for heartbeats",
                        if v4 { "IPv4" } else { "IPv6" }
                    ),
                );
            }
        }
    }
    for b in &inputs.bindings {
        let Holder::Services(h) = &b.holder else {
            continue;
        };
        if !pools.contains_key(b.pool.as_str()) {
            continue;
        }
        let services: Vec<ServiceKey> = h
            .services
            .iter()
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .collect();
        let mut eligible: BTreeSet<String> = selected
            .iter()
            .filter(|(_, ps)| ps.contains(b.pool.as_str()))
            .map(|(n, _)| n.to_string())
            .collect();
        let mut why_none = eligible
            .is_empty()
            .then(|| format!("no node matches pool {}'s nodeSelector", b.pool));
        // externalTrafficPolicy: Local: only nodes with a ready endpoint of every Local
        // Service holding it (sharers of an address have the same pods).
        for key in &services {
            if inputs.services.get(key).is_some_and(|s| s.local) {
                let with = inputs.endpoints.get(key).cloned().unwrap_or_default();
                eligible.retain(|n| with.contains(n));
                if eligible.is_empty() && why_none.is_none() {
                    why_none = Some(format!(
                        "Service {}/{} has externalTrafficPolicy Local and no ready endpoint on a node that may announce pool {}",
                        key.0, key.1, b.pool
                    ));
                }
            }
        }
        out.addresses.insert(
            b.address,
            Planned {
                pool: b.pool.clone(),
                services,
                eligible,
                why_none,
            },
        );
    }
    out
}

/// `announce: interface` on this node (`me`): for each interface, the addresses to hold on it
/// (a host address each), for an outside routing daemon to redistribute. Every eligible node
/// holds every address (ECMP at the router); `externalTrafficPolicy: Local` limits that to
/// nodes with a ready endpoint.
pub fn interface_plan(inputs: &Inputs, me: &str) -> BTreeMap<String, BTreeSet<IpAddr>> {
    let mut out: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    let Some(node) = inputs.nodes.get(me) else {
        return out;
    };
    let pools: BTreeMap<&str, &Announcement> = inputs
        .pools
        .iter()
        .filter(|p| p.announcement.announce == AnnounceMode::Interface)
        .map(|p| (p.name.as_str(), &p.announcement))
        .collect();
    for b in &inputs.bindings {
        let Holder::Services(h) = &b.holder else {
            continue;
        };
        let Some(a) = pools.get(b.pool.as_str()) else {
            continue;
        };
        if !a.node_eligible(&node.labels) {
            continue;
        }
        if !berth_k8s::announce::local_endpoints_here(h, &inputs.services, &inputs.endpoints, me) {
            continue;
        }
        let dev = a
            .interface
            .as_ref()
            .map(|i| i.interface().to_string())
            .unwrap_or_else(|| "lo".into());
        out.entry(dev).or_default().insert(b.address);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::selector::LabelSelector;
    use berth_core::service::ServiceRef;
    use berth_core::{BindingKind, ServiceHolders, SubnetSpec, Timestamp};

    fn pool(name: &str, mode: AnnounceMode, zone: Option<&str>) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            use_: berth_core::PoolUse::Service,
            subnets: vec![SubnetSpec::new("198.18.0.192/27".parse().unwrap())],
            policy: Default::default(),
            service: Default::default(),
            announcement: Announcement {
                announce: mode,
                node_selector: zone.map(|z| LabelSelector {
                    match_labels: [("zone".to_string(), z.to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    fn node(zone: &str, ip: &str) -> NodeFacts {
        NodeFacts {
            labels: [("zone".to_string(), zone.to_string())].into(),
            ips: vec![ip.parse().unwrap()],
        }
    }

    fn binding(addr: &str, pool: &str, svc: &str) -> Binding {
        Binding {
            address: addr.parse().unwrap(),
            prefix_len: 27,
            pool: pool.into(),
            node: String::new(),
            holder: Holder::Services(ServiceHolders {
                services: vec![ServiceRef {
                    namespace: "default".into(),
                    name: svc.into(),
                    uid: format!("uid-{svc}"),
                }],
                sharing_key: None,
                external_ip: false,
            }),
            kind: BindingKind::Dynamic {
                block: "198.18.0.192/27".parse().unwrap(),
            },
            since: Timestamp::default(),
        }
    }

    fn inputs() -> Inputs {
        Inputs {
            nodes: [
                ("n1".to_string(), node("a", "198.18.0.11")),
                ("n2".to_string(), node("a", "198.18.0.12")),
                ("n3".to_string(), node("b", "198.18.0.13")),
            ]
            .into(),
            pools: vec![
                pool("lan", AnnounceMode::L2, None),
                pool("zone-a", AnnounceMode::L2, Some("a")),
                pool("bgp", AnnounceMode::Bgp, None),
            ],
            bindings: vec![
                binding("198.18.0.200", "lan", "web"),
                binding("198.18.0.201", "zone-a", "api"),
                binding("198.18.0.202", "bgp", "other"),
            ],
            ..Default::default()
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn members_and_eligibility_follow_the_pools_node_selectors() {
        let p = plan(&inputs(), true);
        assert_eq!(p.members.len(), 3);
        assert_eq!(p.members["n2"], "198.18.0.12".parse::<IpAddr>().unwrap());
        let a = &p.addresses[&"198.18.0.200".parse::<IpAddr>().unwrap()];
        assert_eq!(a.eligible, set(&["n1", "n2", "n3"]));
        let z = &p.addresses[&"198.18.0.201".parse::<IpAddr>().unwrap()];
        assert_eq!(z.eligible, set(&["n1", "n2"]));
        // BGP pools are not the L2 announcer's.
        assert!(!p
            .addresses
            .contains_key(&"198.18.0.202".parse::<IpAddr>().unwrap()));
    }

    #[test]
    fn no_l2_pool_no_members() {
        let mut i = inputs();
        i.pools
            .retain(|p| p.announcement.announce != AnnounceMode::L2);
        let p = plan(&i, true);
        assert!(p.members.is_empty() && p.addresses.is_empty());
    }

    #[test]
    fn local_traffic_limits_announcers_to_nodes_with_endpoints() {
        let mut i = inputs();
        let web = ("default".to_string(), "web".to_string());
        i.services.insert(
            web.clone(),
            ServiceFacts {
                uid: "uid-web".into(),
                local: true,
            },
        );
        let a: IpAddr = "198.18.0.200".parse().unwrap();
        let p = plan(&i, true);
        assert!(p.addresses[&a].eligible.is_empty());
        assert!(p.addresses[&a]
            .why_none
            .as_deref()
            .unwrap()
            .contains("externalTrafficPolicy Local"));
        i.endpoints.insert(web, set(&["n3"]));
        let p = plan(&i, true);
        assert_eq!(p.addresses[&a].eligible, set(&["n3"]));
        assert_eq!(p.addresses[&a].why_none, None);
    }

    #[test]
    fn a_node_without_a_heartbeat_address_is_left_out_and_said() {
        let mut i = inputs();
        i.nodes.get_mut("n3").unwrap().ips = vec!["2001:db8::13".parse().unwrap()];
        let p = plan(&i, true);
        assert!(!p.is_member("n3"));
        assert!(p.left_out["n3"].contains("IPv4"));
        let a: IpAddr = "198.18.0.200".parse().unwrap();
        assert_eq!(p.addresses[&a].eligible, set(&["n1", "n2"]));
    }

    #[test]
    fn interface_mode_holds_every_address_on_every_eligible_node() {
        let mut i = inputs();
        i.pools
            .push(pool("ecmp", AnnounceMode::Interface, Some("b")));
        i.bindings.push(binding("198.18.0.203", "ecmp", "edge"));
        let on = interface_plan(&i, "n3");
        assert_eq!(on["lo"], ["198.18.0.203".parse::<IpAddr>().unwrap()].into());
        // n1 is not in zone b; L2 addresses are never held on an interface.
        assert!(interface_plan(&i, "n1").is_empty());
        // Local traffic: only with an endpoint on the node.
        let edge = ("default".to_string(), "edge".to_string());
        i.services.insert(
            edge.clone(),
            ServiceFacts {
                uid: "u".into(),
                local: true,
            },
        );
        assert!(interface_plan(&i, "n3").is_empty());
        i.endpoints.insert(edge, set(&["n3"]));
        assert_eq!(interface_plan(&i, "n3").len(), 1);
    }

    #[test]
    fn every_node_computes_the_same_plan() {
        // The plan depends on nothing but the inputs: the same on every node.
        assert_eq!(plan(&inputs(), true), plan(&inputs(), true));
    }
}
