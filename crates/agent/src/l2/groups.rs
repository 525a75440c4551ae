//! On this node: which interface each `announce: l2` pool is announced on, and so which
//! announcers run, one per interface.
//!
//! Why one announcer per interface: the failure detector must share the link the addresses are
//! answered on (a cut of the answering link has to be what fails over), so heartbeats run on
//! the announcing interface. A pool without `l2.interfaces` / `l2.interfaceRegex`, or one that
//! admits the interface holding the node's InternalIP, is announced there and its members
//! heartbeat to each other's InternalIPs, as the Node objects give them. A pool that admits
//! only other interfaces is announced on the first of them (by name) with an address of the
//! heartbeat family; nothing says which address a peer has there, so that announcer learns
//! its peers' addresses from their hellos on the link (see `berth_announce::runtime`).
//!
//! Pure: a function of the plan, the watched objects and this node's links, tested without a
//! kernel.

use super::plan::{Inputs, Plan};
use berth_announce::Eligible;
use berth_core::announce::AnnounceMode;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

/// One of this node's interfaces, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalLink {
    /// Its name.
    pub name: String,
    /// Its addresses, with their prefixes.
    pub addrs: Vec<IpNet>,
}

/// This node's side of the decision.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// The interface holding this node's InternalIP (of the heartbeat family), if any.
    pub internal: Option<String>,
    /// Every interface but `lo`.
    pub links: Vec<LocalLink>,
}

/// One announcer to run on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The announcing interface.
    pub interface: String,
    /// Peers' addresses are learnt from hellos (the interface is not the InternalIP's).
    pub learn: bool,
    /// This node's heartbeat address: its InternalIP, or its first address on the interface.
    pub own: IpAddr,
    /// The other members: nodes that a pool of this group selects.
    pub peers: BTreeSet<String>,
    /// Their heartbeat addresses when known beforehand (their InternalIPs; empty when learnt).
    pub known: BTreeMap<String, SocketAddr>,
    /// The pools announced here.
    pub pools: BTreeSet<String>,
    /// Their addresses, each with the members that may announce it.
    pub addresses: BTreeMap<IpAddr, Eligible>,
}

/// The announcers of this node, and the pools it cannot announce, with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Groups {
    /// By interface.
    pub announcers: BTreeMap<String, Group>,
    /// Pools that select this node but that it cannot announce, with the reason.
    pub refused: BTreeMap<String, String>,
}

fn link_local(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80)
}

/// The first address of the family on `link` that can source heartbeats.
fn address_on(link: &LocalLink, v4: bool) -> Option<IpAddr> {
    link.addrs
        .iter()
        .map(|n| n.addr())
        .find(|a| a.is_ipv4() == v4 && !link_local(*a))
}

/// Decides the announcers of node `me` (a member of `plan`): `v4` is the heartbeat family and
/// `port` the heartbeat port.
pub fn groups(
    plan: &Plan,
    inputs: &Inputs,
    me: &str,
    local: &Local,
    v4: bool,
    port: u16,
) -> Groups {
    let mut out = Groups::default();
    let Some(me_node) = inputs.nodes.get(me) else {
        return out;
    };
    let mut links = local.links.clone();
    links.retain(|l| l.name != "lo");
    links.sort_by(|a, b| a.name.cmp(&b.name));
    let family = if v4 { "IPv4" } else { "IPv6" };
    // Each pool that selects this node: (interface, learn).
    let mut placed: BTreeMap<&str, (String, bool)> = BTreeMap::new();
    for p in inputs
        .pools
        .iter()
        .filter(|p| p.announcement.announce == AnnounceMode::L2)
        .filter(|p| p.announcement.node_eligible(&me_node.labels))
    {
        let l2 = p.announcement.l2.clone().unwrap_or_default();
        let at_internal = match &local.internal {
            Some(dev) => super::admits(&l2, dev),
            None => Ok(false),
        };
        let unrestricted = l2.interfaces.is_empty() && l2.interface_regex.is_none();
        let placement = at_internal.and_then(|yes| {
            if yes {
                return Ok(local.internal.clone().map(|d| (d, false)));
            }
            if unrestricted {
                return Ok(None); // its place is the InternalIP's interface, or nowhere
            }
            for l in &links {
                if super::admits(&l2, &l.name)? && address_on(l, v4).is_some() {
                    return Ok(Some((l.name.clone(), true)));
                }
            }
            Ok(None)
        });
        match placement {
            Ok(Some(at)) => {
                placed.insert(p.name.as_str(), at);
            }
            Ok(None) if unrestricted => {
                out.refused.insert(
                    p.name.clone(),
                    format!(
                        "no interface of this node holds its InternalIP {}",
                        plan.members.get(me).map_or("?".into(), |a| a.to_string())
                    ),
                );
            }
            Ok(None) => {
                let names: Vec<&str> = links.iter().map(|l| l.name.as_str()).collect();
                out.refused.insert(
                    p.name.clone(),
                    format!(
                        "l2.interfaces {:?} / l2.interfaceRegex {:?} admits no interface of this node with an {family} address (it has {names:?}): name one it has, or add an {family} address to it",
                        l2.interfaces, l2.interface_regex
                    ),
                );
            }
            Err(e) => {
                out.refused.insert(p.name.clone(), e);
            }
        }
    }
    for (pool, (dev, learn)) in &placed {
        let own = if *learn {
            links
                .iter()
                .find(|l| l.name == *dev)
                .and_then(|l| address_on(l, v4))
        } else {
            plan.members.get(me).copied()
        };
        let Some(own) = own else {
            continue; // placed only where an address exists
        };
        let g = out.announcers.entry(dev.clone()).or_insert_with(|| Group {
            interface: dev.clone(),
            learn: *learn,
            own,
            peers: BTreeSet::new(),
            known: BTreeMap::new(),
            pools: BTreeSet::new(),
            addresses: BTreeMap::new(),
        });
        g.pools.insert(pool.to_string());
    }
    for g in out.announcers.values_mut() {
        let specs: Vec<_> = inputs
            .pools
            .iter()
            .filter(|p| g.pools.contains(&p.name))
            .collect();
        for (name, ip) in &plan.members {
            let Some(node) = inputs.nodes.get(name) else {
                continue;
            };
            if name == me
                || !specs
                    .iter()
                    .any(|p| p.announcement.node_eligible(&node.labels))
            {
                continue;
            }
            g.peers.insert(name.clone());
            if !g.learn {
                g.known.insert(name.clone(), SocketAddr::new(*ip, port));
            }
        }
        g.addresses = plan
            .addresses
            .iter()
            .filter(|(_, pl)| g.pools.contains(&pl.pool))
            .map(|(a, pl)| (*a, Eligible::Only(pl.eligible.clone())))
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::plan::{plan, Inputs};
    use super::*;
    use berth_core::announce::{Announcement, L2Settings};
    use berth_core::selector::LabelSelector;
    use berth_core::{PoolSpec, SubnetSpec};
    use berth_k8s::announce::NodeFacts;

    fn pool(name: &str, l2: Option<L2Settings>, zone: Option<&str>) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            use_: berth_core::PoolUse::Service,
            subnets: vec![SubnetSpec::new("198.18.9.0/24".parse().unwrap())],
            policy: Default::default(),
            service: Default::default(),
            announcement: Announcement {
                announce: AnnounceMode::L2,
                l2,
                node_selector: zone.map(|z| LabelSelector {
                    match_labels: [("zone".to_string(), z.to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    fn only(dev: &str) -> Option<L2Settings> {
        Some(L2Settings {
            interfaces: vec![dev.into()],
            interface_regex: None,
        })
    }

    fn inputs(pools: Vec<PoolSpec>) -> Inputs {
        let mut i = Inputs {
            pools,
            ..Inputs::default()
        };
        for (n, zone) in [("n1", "a"), ("n2", "a"), ("n3", "b")] {
            i.nodes.insert(
                n.into(),
                NodeFacts {
                    labels: [("zone".to_string(), zone.to_string())].into(),
                    ips: vec![format!("198.18.0.{}", 10 + n[1..].parse::<u8>().unwrap())
                        .parse()
                        .unwrap()],
                },
            );
        }
        i
    }

    fn local() -> Local {
        let l = |name: &str, addrs: &[&str]| LocalLink {
            name: name.into(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        };
        Local {
            internal: Some("eth0".into()),
            links: vec![
                l("eth1", &["198.19.0.11/24", "fe80::1/64"]),
                l("eth0", &["198.18.0.11/24"]),
                l("eth2", &["fe80::2/64"]),
            ],
        }
    }

    #[test]
    fn an_unrestricted_pool_is_announced_on_the_internalip_interface_with_known_peers() {
        let i = inputs(vec![pool("lan", None, None)]);
        let g = groups(&plan(&i, true), &i, "n1", &local(), true, 7475);
        assert!(g.refused.is_empty());
        let a = &g.announcers["eth0"];
        assert!(!a.learn);
        assert_eq!(a.own, "198.18.0.11".parse::<IpAddr>().unwrap());
        assert_eq!(a.peers, ["n2".to_string(), "n3".to_string()].into());
        assert_eq!(a.known["n3"], "198.18.0.13:7475".parse().unwrap());
        assert_eq!(g.announcers.len(), 1);
    }

    #[test]
    fn a_pool_on_another_interface_gets_its_own_announcer_that_learns_peers() {
        let i = inputs(vec![
            pool("lan", None, None),
            pool("public", only("eth1"), Some("a")),
        ]);
        let g = groups(&plan(&i, true), &i, "n1", &local(), true, 7475);
        assert_eq!(g.announcers.len(), 2, "{g:?}");
        let p = &g.announcers["eth1"];
        assert!(p.learn);
        assert_eq!(p.own, "198.19.0.11".parse::<IpAddr>().unwrap());
        // Only the nodes the pool selects are members there (n3 is in zone b).
        assert_eq!(p.peers, ["n2".to_string()].into());
        assert!(p.known.is_empty());
        assert_eq!(p.pools, ["public".to_string()].into());
        // The other pool's announcer still has every node.
        assert_eq!(g.announcers["eth0"].peers.len(), 2);
        // n3 is not selected by `public`: one announcer only.
        let g3 = groups(&plan(&i, true), &i, "n3", &local(), true, 7475);
        assert_eq!(g3.announcers.keys().collect::<Vec<_>>(), vec!["eth0"]);
    }

    #[test]
    fn a_regex_picks_the_first_admitted_interface_with_an_address_of_the_family() {
        let re = Some(L2Settings {
            interfaces: vec![],
            interface_regex: Some("eth[12]".into()),
        });
        let i = inputs(vec![pool("public", re, None)]);
        let g = groups(&plan(&i, true), &i, "n1", &local(), true, 7475);
        assert_eq!(g.announcers.keys().collect::<Vec<_>>(), vec!["eth1"]);
        // IPv6: eth1 and eth2 have link-local addresses only: refused, naming the interfaces.
        let g6 = groups(&plan(&i, true), &i, "n1", &local(), false, 7475);
        assert!(g6.announcers.is_empty());
        let why = &g6.refused["public"];
        assert!(why.contains("IPv6") && why.contains("eth2"), "{why}");
    }

    #[test]
    fn pools_naming_missing_interfaces_or_bad_regexes_are_refused_with_why() {
        let bad = Some(L2Settings {
            interfaces: vec![],
            interface_regex: Some("(".into()),
        });
        let i = inputs(vec![
            pool("gone", only("bond9"), None),
            pool("bad", bad, None),
        ]);
        let g = groups(&plan(&i, true), &i, "n1", &local(), true, 7475);
        assert!(g.announcers.is_empty());
        assert!(g.refused["gone"].contains("bond9"), "{:?}", g.refused);
        assert!(g.refused["bad"].contains("not a regular expression"));
        // No interface holds the InternalIP: an unrestricted pool says so.
        let i = inputs(vec![pool("lan", None, None)]);
        let none = Local {
            internal: None,
            ..local()
        };
        let g = groups(&plan(&i, true), &i, "n1", &none, true, 7475);
        assert!(g.refused["lan"].contains("198.18.0.11"), "{:?}", g.refused);
    }
}
