//! Property tests of the Service address decisions (crates/core/src/service.rs): a random set
//! of service pools (some overlapping, some scoped, some not auto-assigning) and a random stream
//! of Services (namespaces, sharing keys, ports, requested addresses) is played through
//! [`ServiceWorld::plan`] the way the controller does, and the ledger invariants are checked.

use berth_core::addr::Family;
use berth_core::pool::{PoolSpec, PoolUse, SubnetSpec};
use berth_core::service::{
    pool_problems, Holding, Outcome, PortKey, ServiceAsk, ServiceRef, ServiceWorld, Sharer, ANN_IPS,
};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

const NAMESPACES: [&str; 3] = ["a", "b", "c"];

#[derive(Debug, Clone)]
struct PoolGen {
    offset: u8,
    prefix: u8,
    priority: i32,
    auto_assign: bool,
    only_ns: Option<usize>,
}

#[derive(Debug, Clone)]
struct SvcGen {
    ns: usize,
    key: Option<u8>,
    ports: BTreeSet<u16>,
    requested: Option<u8>,
    pool: Option<usize>,
}

fn pool_gen() -> impl Strategy<Value = PoolGen> {
    (
        0u8..8,
        28u8..=30,
        -2i32..3,
        prop::bool::weighted(0.8),
        prop::option::weighted(0.3, 0usize..3),
    )
        .prop_map(|(o, prefix, priority, auto_assign, only_ns)| PoolGen {
            offset: o * 8,
            prefix,
            priority,
            auto_assign,
            only_ns,
        })
}

fn svc_gen() -> impl Strategy<Value = SvcGen> {
    (
        0usize..3,
        prop::option::weighted(0.5, 0u8..2),
        prop::collection::btree_set(1u16..5, 1..3),
        prop::option::weighted(0.3, 0u8..72),
        prop::option::weighted(0.2, 0usize..6),
    )
        .prop_map(|(ns, key, ports, requested, pool)| SvcGen {
            ns,
            key,
            ports,
            requested,
            pool,
        })
}

fn build_pool(i: usize, g: &PoolGen) -> PoolSpec {
    let cidr = format!("198.18.100.{}/{}", g.offset, g.prefix)
        .parse()
        .unwrap();
    let mut p = PoolSpec {
        name: format!("p{i}"),
        use_: PoolUse::Service,
        subnets: vec![SubnetSpec::new(cidr)],
        policy: Default::default(),
        service: Default::default(),
        announcement: Default::default(),
    };
    p.service.auto_assign = g.auto_assign;
    p.service.service_allocation.priority = g.priority;
    if let Some(n) = g.only_ns {
        p.service.service_allocation.namespaces = vec![NAMESPACES[n].to_string()];
    }
    p
}

fn build_ask(i: usize, g: &SvcGen, npools: usize) -> ServiceAsk {
    ServiceAsk {
        service: ServiceRef {
            namespace: NAMESPACES[g.ns].into(),
            name: format!("s{i}"),
            uid: format!("uid-{i}"),
        },
        labels: BTreeMap::new(),
        namespace_labels: BTreeMap::new(),
        load_balancer: true,
        families: vec![Family::V4],
        requested: g
            .requested
            .map(|o| IpAddr::V4(Ipv4Addr::new(198, 18, 100, o)))
            .into_iter()
            .collect(),
        pool: g.pool.filter(|p| *p < npools).map(|p| format!("p{p}")),
        sharing_key: g.key.map(|k| format!("k{k}")),
        ports: g
            .ports
            .iter()
            .map(|p| PortKey {
                protocol: "TCP".into(),
                port: *p,
            })
            .collect(),
        local_traffic: None,
        external_ips: vec![],
    }
}

/// Apply a plan to the ledger's holdings as the controller's compare-and-swap writes would.
fn apply(holdings: &mut BTreeMap<IpAddr, Holding>, ask: &ServiceAsk, outcome: &Outcome) {
    if let Outcome::Take {
        address,
        pool,
        sharing,
    } = outcome
    {
        let me = Sharer {
            service: ask.service.clone(),
            ports: ask.ports.clone(),
            local_traffic: ask.local_traffic.clone(),
        };
        match holdings.get_mut(address) {
            Some(Holding::Services { holders, .. }) => holders.push(me),
            Some(Holding::Other { .. }) => panic!("took an address held by another kind of holder"),
            None => {
                holdings.insert(
                    *address,
                    Holding::Services {
                        pool: pool.clone(),
                        sharing: sharing.clone(),
                        holders: vec![me],
                    },
                );
            }
        }
    }
}

fn held_of(holdings: &BTreeMap<IpAddr, Holding>, svc: &ServiceRef) -> Vec<(IpAddr, String)> {
    holdings
        .iter()
        .filter(|(_, h)| h.held_by(svc))
        .map(|(ip, h)| match h {
            Holding::Services { pool, .. } => (*ip, pool.clone()),
            Holding::Other { .. } => unreachable!(),
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn service_addresses_keep_the_ledger_invariants(
        pools in prop::collection::vec(pool_gen(), 1..6),
        svcs in prop::collection::vec(svc_gen(), 1..40),
        order in any::<u64>(),
    ) {
        let specs: Vec<PoolSpec> = pools.iter().enumerate().map(|(i, g)| build_pool(i, g)).collect();
        let refs: Vec<&PoolSpec> = specs.iter().collect();
        let problems = pool_problems(&refs);
        let asks: Vec<ServiceAsk> = svcs.iter().enumerate().map(|(i, g)| build_ask(i, g, specs.len())).collect();
        let mut holdings = BTreeMap::new();
        for a in &asks {
            let world = ServiceWorld::new(refs.clone(), &holdings);
            let plan = world.plan(a, ANN_IPS, &held_of(&holdings, &a.service));
            prop_assert!(plan.release.is_empty());
            prop_assert_eq!(plan.families.len(), 1);
            let outcome = plan.families[0].1.clone();
            if let Outcome::Take { address, pool, .. } = &outcome {
                // Only from a ready service pool that contains it and admits the Service.
                let p = specs.iter().find(|p| p.name == *pool).unwrap();
                prop_assert!(!problems.contains_key(pool), "{} is not ready: {:?}", pool, problems.get(pool));
                let s = p.subnet_of(*address);
                prop_assert!(s.is_some_and(|s| s.is_usable(*address)), "{} not usable in {}", address, pool);
                prop_assert!(p.service.service_allocation.refuses(a).is_none());
                if a.requested.is_empty() && a.pool.is_none() {
                    prop_assert!(p.service.auto_assign, "{} is not autoAssign", pool);
                }
                if let Some(r) = a.requested.first() {
                    prop_assert_eq!(r, address);
                }
            }
            if let Outcome::Wait(berth_core::service::Waiting::Exhausted { pools, .. }) = &outcome {
                // Exhausted means exhausted: no free dynamic address in any pool tried.
                for name in pools {
                    let p = specs.iter().find(|p| p.name == *name).unwrap();
                    for s in &p.subnets {
                        prop_assert!(berth_core::service::first_free(s, &holdings).is_none(), "{} has room", name);
                    }
                }
            }
            apply(&mut holdings, a, &outcome);
        }
        // At most one holder per address, unless all share one key in one namespace with
        // disjoint ports.
        for (ip, h) in &holdings {
            if let Holding::Services { sharing, holders, .. } = h {
                if holders.len() > 1 {
                    let (ns, key) = sharing.clone().unwrap_or_default();
                    prop_assert!(sharing.is_some(), "{} shared without a key", ip);
                    let mut ports = BTreeSet::new();
                    for s in holders {
                        let a = asks.iter().find(|a| a.service == s.service).unwrap();
                        prop_assert_eq!(&a.service.namespace, &ns);
                        prop_assert_eq!(a.sharing_key.as_deref(), Some(key.as_str()));
                        for p in &s.ports {
                            prop_assert!(ports.insert(p.clone()), "{} port {} twice", ip, p);
                        }
                    }
                }
            }
        }
        // A restart: rebuilt from the ledger alone, in another order, every Service keeps every
        // address it holds and nothing is released or taken.
        let mut idx: Vec<usize> = (0..asks.len()).collect();
        let n = idx.len();
        for i in 0..n {
            idx.swap(i, (order as usize).wrapping_mul(i + 7) % n);
        }
        let world = ServiceWorld::new(refs.clone(), &holdings);
        for &i in &idx {
            let a = &asks[i];
            let held = held_of(&holdings, &a.service);
            let plan = world.plan(a, ANN_IPS, &held);
            prop_assert!(plan.release.is_empty());
            if let Some((ip, pool)) = held.first() {
                let kept = matches!(&plan.families[0].1, Outcome::Keep { address, pool: p, outside: None } if address == ip && p == pool);
                prop_assert!(kept, "{:?} held {} but plans {:?}", a.service, ip, plan.families[0].1);
            }
        }
    }

    #[test]
    fn overlapping_pools_never_both_serve(pools in prop::collection::vec(pool_gen(), 1..8)) {
        let specs: Vec<PoolSpec> = pools.iter().enumerate().map(|(i, g)| build_pool(i, g)).collect();
        let refs: Vec<&PoolSpec> = specs.iter().collect();
        let problems = pool_problems(&refs);
        let ready: Vec<&PoolSpec> = specs.iter().filter(|p| !problems.contains_key(&p.name)).collect();
        for (i, a) in ready.iter().enumerate() {
            for b in &ready[..i] {
                let (x, y) = (a.subnets[0].cidr, b.subnets[0].cidr);
                prop_assert!(!x.contains(&y.network()) && !y.contains(&x.network()), "{} and {} overlap", x, y);
            }
        }
        // The first pool is always ready: an older pool never loses to a newer one.
        prop_assert!(!problems.contains_key("p0"));
    }
}
