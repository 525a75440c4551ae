//! Service addresses, decided purely: which pools a Service may take a LoadBalancer address
//! from, which address it gets per family, when Services may share one address, and which of its
//! `spec.externalIPs` are honoured.
//!
//! Why pure: these rules are where MetalLB, Cilium LB-IPAM and kube-vip users get surprised
//! (an address reshuffled by a restart, a shrunk pool that silently moves a Service, an
//! externalIP anyone may claim). Here every rule is a function of the Service, the pools and the
//! ledger's holdings, so property tests can check the invariants without an API server, and the
//! controller is a thin loop that feeds it and writes the outcome.
//!
//! The invariants the tests check:
//! - an address a Service holds is kept while it is still wanted (restart, failover, a shrunk
//!   pool: never moved behind the user's back);
//! - an address is given only from a ready service pool that admits the Service, in the family
//!   asked for, never one another holder has (except a compatible share);
//! - two Services share an address only with the same sharing key, in one namespace, with
//!   disjoint ports and compatible traffic policies;
//! - an externalIP is honoured only inside a pool with `externalIPs: true` that admits the
//!   Service (CVE-2020-8554).

use crate::addr::{from_u128, net_bounds, nets_overlap, Family};
use crate::pool::{PoolSpec, PoolUse, SubnetSpec};
use crate::selector::LabelSelector;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// Berth's own annotation for specific addresses (`"198.18.100.5[,2001:db8:100::5]"`).
pub const ANN_IPS: &str = "berth.dev/load-balancer-ips";
/// MetalLB's current annotation for specific addresses, honoured for migrations.
pub const ANN_METALLB_IPS: &str = "metallb.io/loadBalancerIPs";
/// MetalLB's older annotation for specific addresses, honoured for migrations.
pub const ANN_METALLB_UNIVERSE_IPS: &str = "metallb.universe.tf/loadBalancerIPs";
/// Berth's annotation naming the pool a Service's address must come from.
pub const ANN_POOL: &str = "berth.dev/pool";
/// MetalLB's pool annotations, honoured for migrations.
pub const ANN_METALLB_POOLS: [&str; 2] = [
    "metallb.io/address-pool",
    "metallb.universe.tf/address-pool",
];
/// Berth's sharing key: Services with the same key (in one namespace) may hold one address.
pub const ANN_SHARING_KEY: &str = "berth.dev/sharing-key";
/// MetalLB's sharing annotations, honoured for migrations.
pub const ANN_METALLB_SHARING: [&str; 2] = [
    "metallb.io/allow-shared-ip",
    "metallb.universe.tf/allow-shared-ip",
];
/// The `loadBalancerClass` Berth serves besides Services with no class.
pub const LOAD_BALANCER_CLASS: &str = "berth.dev/lb";

/// Who may take a service pool's addresses (`spec.serviceAllocation`). Empty: everyone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServiceAllocation {
    /// Namespaces whose Services may use the pool; empty: every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Labels the Service's namespace must carry; absent: any namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Labels the Service must carry; absent: any Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<LabelSelector>,
    /// When several pools admit a Service, higher priority is tried first (then by name).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

fn yes() -> bool {
    true
}

fn is_true(v: &bool) -> bool {
    *v
}

/// A service pool's settings, flattened into the pool's spec (`autoAssign`, `externalIPs`,
/// `serviceAllocation`). Pod and attachment pools leave them at their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServiceSettings {
    /// Whether Services that name no pool get addresses from this one (default true). False:
    /// only Services that ask for this pool or one of its addresses.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub auto_assign: bool,
    /// Whether Services may name this pool's addresses in `spec.externalIPs` (default false).
    #[serde(
        default,
        rename = "externalIPs",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub external_ips: bool,
    /// Who may get addresses from this pool.
    #[serde(default, skip_serializing_if = "ServiceAllocation::is_default")]
    pub service_allocation: ServiceAllocation,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            auto_assign: true,
            external_ips: false,
            service_allocation: ServiceAllocation::default(),
        }
    }
}

impl ServiceAllocation {
    /// Whether this is the empty policy (serialised as absent).
    pub fn is_default(&self) -> bool {
        *self == ServiceAllocation::default()
    }

    /// Why `svc` may not use the pool, or `None` when it may.
    pub fn refuses(&self, svc: &ServiceAsk) -> Option<String> {
        let ns = &svc.service.namespace;
        if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == ns || n == "*") {
            return Some(format!(
                "serviceAllocation.namespaces {:?} does not list namespace {ns:?}",
                self.namespaces
            ));
        }
        if let Some(sel) = &self.namespace_selector {
            if !sel.matches(&svc.namespace_labels) {
                return Some(format!(
                    "serviceAllocation.namespaceSelector does not match namespace {ns:?}'s labels"
                ));
            }
        }
        if let Some(sel) = &self.service_selector {
            if !sel.matches(&svc.labels) {
                return Some(
                    "serviceAllocation.serviceSelector does not match the Service's labels".into(),
                );
            }
        }
        None
    }
}

/// A Service as the ledger names it; the UID tells a re-created Service from the original, so
/// a release is checked against it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One port a Service exposes, for the sharing rule (`TCP/80`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The port.
    pub port: u16,
}

impl fmt::Display for PortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

/// What a Service asks for, as far as allocation cares; built by the Kubernetes adapter from
/// the Service, its namespace and its annotations ([`ServiceAnnotations`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAsk {
    /// The Service.
    pub service: ServiceRef,
    /// The Service's labels.
    pub labels: BTreeMap<String, String>,
    /// Its namespace's labels.
    pub namespace_labels: BTreeMap<String, String>,
    /// Whether it wants LoadBalancer addresses (type LoadBalancer, a class Berth serves).
    pub load_balancer: bool,
    /// The families it wants, in `spec.ipFamilies` order.
    pub families: Vec<Family>,
    /// Specific addresses asked for, at most one per family.
    pub requested: Vec<IpAddr>,
    /// The pool asked for.
    pub pool: Option<String>,
    /// The sharing key.
    pub sharing_key: Option<String>,
    /// The ports it exposes.
    pub ports: BTreeSet<PortKey>,
    /// With `externalTrafficPolicy: Local`, its pod selector in a canonical form: Services
    /// sharing an address must send traffic to the same pods, or one of them would be
    /// announced from nodes with none of its endpoints. `None`: policy Cluster.
    pub local_traffic: Option<String>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
}

/// What one address in a service pool is held by, from the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holding {
    /// Held for Services (more than one: a shared address).
    Services {
        /// The pool it came from.
        pool: String,
        /// The sharing key (namespace, key) it is held under, if shared.
        sharing: Option<(String, String)>,
        /// The Services holding it, with what the sharing rule needs of each.
        holders: Vec<Sharer>,
    },
    /// Held by something that is not a Service (a pod, an attachment, an operator's key).
    Other {
        /// What holds it, for messages.
        what: String,
    },
}

/// A Service holding an address, with what the sharing rule needs to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sharer {
    /// The Service.
    pub service: ServiceRef,
    /// Its ports.
    pub ports: BTreeSet<PortKey>,
    /// Its traffic policy key (see [`ServiceAsk::local_traffic`]).
    pub local_traffic: Option<String>,
}

impl Holding {
    /// Whether `svc` is one of the holders (same UID).
    pub fn held_by(&self, svc: &ServiceRef) -> bool {
        matches!(self, Holding::Services { holders, .. } if holders.iter().any(|h| h.service == *svc))
    }
}

/// Why a Service cannot get an address of one family yet. Each names what is at fault and what
/// to do; the controller shows it as a Warning Event and retries when pools or holdings change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Waiting {
    /// No ready service pool of the family admits the Service.
    #[error("no ready service pool with {family} addresses admits Service {service}{detail}: create a Pool with use: service and a {family} subnet whose serviceAllocation admits it")]
    NoPool {
        /// The Service.
        service: ServiceRef,
        /// The family.
        family: Family,
        /// Why the pools that exist do not fit.
        detail: String,
    },
    /// The pool named does not exist, is not a service pool, is not ready or refuses the Service.
    #[error("{annotation}: {value:?} {why}")]
    PoolRefuses {
        /// The annotation that names the pool.
        annotation: &'static str,
        /// The pool name.
        value: String,
        /// Why, and what to do.
        why: String,
    },
    /// Every admitting pool of the family is full.
    #[error("service pools {pools:?} have no free {family} address: free one, or add a subnet to a pool")]
    Exhausted {
        /// The pools tried.
        pools: Vec<String>,
        /// The family.
        family: Family,
    },
    /// The address asked for is held by someone the Service may not share with.
    #[error("{annotation}: {address} is held by {by}: ask for another address, or give both Services the same berth.dev/sharing-key and disjoint ports")]
    Taken {
        /// Where the address was asked for.
        annotation: &'static str,
        /// The address.
        address: IpAddr,
        /// Who holds it.
        by: String,
    },
    /// Sharing refused: ports overlap or traffic policies differ.
    #[error("{address} is shared under berth.dev/sharing-key {key:?} by {with}, but {why}: use disjoint ports (and the same externalTrafficPolicy and selector), or another key")]
    CannotShare {
        /// The address.
        address: IpAddr,
        /// The sharing key.
        key: String,
        /// The Services holding it.
        with: String,
        /// What conflicts.
        why: String,
    },
    /// The address asked for lies in no ready service pool that admits the Service.
    #[error("{annotation}: {address} {why}")]
    NotInPool {
        /// Where it was asked for.
        annotation: &'static str,
        /// The address.
        address: IpAddr,
        /// Why, and what to do.
        why: String,
    },
}

/// One family's outcome for a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The Service keeps an address it already holds.
    Keep {
        /// The address.
        address: IpAddr,
        /// Its pool.
        pool: String,
        /// Set when the pool no longer contains it (shrunk or gone): kept, never silently moved,
        /// and reported so the operator can decide.
        outside: Option<String>,
    },
    /// The Service takes a new address (alone or joining a share).
    Take {
        /// The address.
        address: IpAddr,
        /// Its pool.
        pool: String,
        /// The sharing key it is taken or joined under (namespace, key).
        sharing: Option<(String, String)>,
    },
    /// It waits.
    Wait(Waiting),
}

/// The whole decision for one Service's LoadBalancer addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePlan {
    /// One outcome per family asked for, in `ipFamilies` order.
    pub families: Vec<(Family, Outcome)>,
    /// Addresses the Service holds and no longer wants (type changed, family dropped, another
    /// address or pool asked for): released at once.
    pub release: Vec<IpAddr>,
}

impl ServicePlan {
    /// The addresses the Service ends up with, in family order (what `status.loadBalancer`
    /// shows).
    pub fn addresses(&self) -> Vec<IpAddr> {
        self.families
            .iter()
            .filter_map(|(_, o)| match o {
                Outcome::Keep { address, .. } | Outcome::Take { address, .. } => Some(*address),
                Outcome::Wait(_) => None,
            })
            .collect()
    }
}

/// Why a pool is not ready: validation fails, or it overlaps a pool created before it (the
/// older one keeps serving; the newer one hands nothing out until fixed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolProblem {
    /// The pool's own specification is invalid.
    #[error("{0}")]
    Invalid(#[from] crate::pool::PoolError),
    /// A subnet overlaps another pool's.
    #[error("spec.subnets {cidr} overlaps pool {other:?} ({other_cidr}), which was created first: give each address to one pool")]
    Overlaps {
        /// This pool's subnet.
        cidr: IpNet,
        /// The other pool.
        other: String,
        /// Its subnet.
        other_cidr: IpNet,
    },
}

/// The problems of every pool that is not ready, given the pools in creation order (oldest
/// first). Overlap is checked across all uses: a service address inside a pod pool would be
/// handed out twice.
pub fn pool_problems(pools: &[&PoolSpec]) -> BTreeMap<String, PoolProblem> {
    let mut out = BTreeMap::new();
    let mut ready: Vec<&PoolSpec> = vec![];
    for p in pools {
        if let Err(e) = p.validate() {
            out.insert(p.name.clone(), PoolProblem::Invalid(e));
            continue;
        }
        let clash = p.subnets.iter().find_map(|s| {
            ready.iter().find_map(|q| {
                q.subnets
                    .iter()
                    .find(|t| nets_overlap(&s.cidr, &t.cidr))
                    .map(|t| PoolProblem::Overlaps {
                        cidr: s.cidr,
                        other: q.name.clone(),
                        other_cidr: t.cidr,
                    })
            })
        });
        match clash {
            Some(c) => {
                out.insert(p.name.clone(), c);
            }
            None => ready.push(p),
        }
    }
    out
}

/// Why two Services may not share an address, or `None` when they may.
fn share_conflict(svc: &ServiceAsk, holders: &[Sharer]) -> Option<String> {
    for h in holders.iter().filter(|h| h.service != svc.service) {
        if let Some(p) = svc.ports.intersection(&h.ports).next() {
            return Some(format!("port {p} is also exposed by {}", h.service));
        }
        if (svc.local_traffic.is_some() || h.local_traffic.is_some())
            && svc.local_traffic != h.local_traffic
        {
            return Some(format!(
                "externalTrafficPolicy Local needs the same policy and pod selector, and {} differs",
                h.service
            ));
        }
    }
    None
}

/// The sharing key of a Service, scoped to its namespace.
fn sharing_of(svc: &ServiceAsk) -> Option<(String, String)> {
    svc.sharing_key
        .as_ref()
        .map(|k| (svc.service.namespace.clone(), k.clone()))
}

/// The inputs the service decisions share: the pools (in creation order), their problems, and
/// the ledger's holdings in service pools.
pub struct ServiceWorld<'a> {
    /// Every pool, oldest first.
    pub pools: Vec<&'a PoolSpec>,
    /// Pools that are not ready ([`pool_problems`]).
    pub problems: BTreeMap<String, PoolProblem>,
    /// Every held address that lies in a service pool or is a Service's.
    pub holdings: &'a BTreeMap<IpAddr, Holding>,
}

impl<'a> ServiceWorld<'a> {
    /// A world over `pools` (oldest first) and `holdings`; pool problems are computed here.
    pub fn new(pools: Vec<&'a PoolSpec>, holdings: &'a BTreeMap<IpAddr, Holding>) -> Self {
        let problems = pool_problems(&pools);
        ServiceWorld {
            pools,
            problems,
            holdings,
        }
    }

    fn ready_service_pools(&self) -> impl Iterator<Item = &'a PoolSpec> + '_ {
        self.pools
            .iter()
            .copied()
            .filter(|p| p.use_ == PoolUse::Service && !self.problems.contains_key(&p.name))
    }

    /// The ready service pools a Service may take addresses of `family` from, best first
    /// (priority, then name), or why there are none.
    fn candidates(&self, svc: &ServiceAsk, family: Family) -> Result<Vec<&'a PoolSpec>, Waiting> {
        if let Some(name) = &svc.pool {
            let Some(p) = self.pools.iter().find(|p| p.name == *name) else {
                return Err(Waiting::PoolRefuses {
                    annotation: ANN_POOL,
                    value: name.clone(),
                    why: "names no Pool: create it, or fix the annotation".into(),
                });
            };
            let why = if p.use_ != PoolUse::Service {
                Some(
                    format!(
                        "is a {:?} pool, not use: service: name a service pool",
                        p.use_
                    )
                    .to_lowercase(),
                )
            } else if let Some(prob) = self.problems.get(name) {
                Some(format!("is not ready ({prob}): fix the Pool"))
            } else if let Some(r) = p.service.service_allocation.refuses(svc) {
                Some(format!("does not admit the Service: {r}"))
            } else if !p.families().contains(&family) {
                Some(format!(
                    "has no {family} subnet: add one, or drop {family} from spec.ipFamilies"
                ))
            } else {
                None
            };
            return match why {
                Some(why) => Err(Waiting::PoolRefuses {
                    annotation: ANN_POOL,
                    value: name.clone(),
                    why,
                }),
                None => Ok(vec![p]),
            };
        }
        let mut reasons = vec![];
        let mut out: Vec<&'a PoolSpec> = vec![];
        for p in self.ready_service_pools() {
            if !p.families().contains(&family) {
                continue;
            }
            if !p.service.auto_assign {
                reasons.push(format!(
                    "{} has autoAssign: false (name it with {ANN_POOL})",
                    p.name
                ));
                continue;
            }
            if let Some(r) = p.service.service_allocation.refuses(svc) {
                reasons.push(format!("{}: {r}", p.name));
                continue;
            }
            out.push(p);
        }
        if out.is_empty() {
            let detail = if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join("; "))
            };
            return Err(Waiting::NoPool {
                service: svc.service.clone(),
                family,
                detail,
            });
        }
        out.sort_by(|a, b| {
            b.service
                .service_allocation
                .priority
                .cmp(&a.service.service_allocation.priority)
                .then_with(|| a.name.cmp(&b.name))
        });
        Ok(out)
    }

    /// The ready service pool containing `ip` that a Service may take it from, or why not.
    fn pool_for_address(
        &self,
        svc: &ServiceAsk,
        ip: IpAddr,
        from: &'static str,
    ) -> Result<&'a PoolSpec, Waiting> {
        let not = |why: String| Waiting::NotInPool {
            annotation: from,
            address: ip,
            why,
        };
        let Some(p) = self
            .pools
            .iter()
            .copied()
            .find(|p| p.subnet_of(ip).is_some())
        else {
            return Err(not(
                "lies in no Pool: ask for an address of a service pool, or add it to one".into(),
            ));
        };
        if p.use_ != PoolUse::Service {
            return Err(not(format!(
                "lies in pool {:?}, which is not use: service",
                p.name
            )));
        }
        if let Some(prob) = self.problems.get(&p.name) {
            return Err(not(format!(
                "lies in pool {:?}, which is not ready ({prob})",
                p.name
            )));
        }
        if let Some(name) = &svc.pool {
            if *name != p.name {
                return Err(not(format!(
                    "lies in pool {:?}, but {ANN_POOL} names {name:?}: make them agree",
                    p.name
                )));
            }
        }
        if let Some(r) = p.service.service_allocation.refuses(svc) {
            return Err(not(format!(
                "lies in pool {:?}, which does not admit the Service: {r}",
                p.name
            )));
        }
        if p.usable_subnet(ip).is_none() {
            return Err(not(format!(
                "is the network, broadcast or an excluded address of pool {:?}: ask for another",
                p.name
            )));
        }
        Ok(p)
    }

    /// May `svc` take or join `ip`? `Ok(sharing)` when it may.
    fn may_hold(
        &self,
        svc: &ServiceAsk,
        ip: IpAddr,
        from: &'static str,
    ) -> Result<Option<(String, String)>, Waiting> {
        match self.holdings.get(&ip) {
            None => Ok(sharing_of(svc)),
            Some(h) if h.held_by(&svc.service) => Ok(sharing_of(svc)),
            Some(Holding::Other { what }) => Err(Waiting::Taken {
                annotation: from,
                address: ip,
                by: what.clone(),
            }),
            Some(Holding::Services {
                sharing, holders, ..
            }) => {
                let names = holders
                    .iter()
                    .map(|h| h.service.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                match (sharing, sharing_of(svc)) {
                    (Some(theirs), Some(mine)) if *theirs == mine => {
                        match share_conflict(svc, holders) {
                            None => Ok(Some(mine)),
                            Some(why) => Err(Waiting::CannotShare {
                                address: ip,
                                key: mine.1,
                                with: names,
                                why,
                            }),
                        }
                    }
                    _ => Err(Waiting::Taken {
                        annotation: from,
                        address: ip,
                        by: names,
                    }),
                }
            }
        }
    }

    /// Decide a Service's LoadBalancer addresses. `from` names where its requested addresses
    /// came from (for messages); `held` is what the ledger says it holds (address, pool).
    pub fn plan(
        &self,
        svc: &ServiceAsk,
        from: &'static str,
        held: &[(IpAddr, String)],
    ) -> ServicePlan {
        let mut families = vec![];
        let mut release = vec![];
        let mut kept: BTreeSet<IpAddr> = BTreeSet::new();
        if svc.load_balancer {
            for &fam in dedup(&svc.families).iter() {
                let outcome = self.plan_family(svc, from, held, fam);
                if let Outcome::Keep { address, .. } = &outcome {
                    kept.insert(*address);
                }
                families.push((fam, outcome));
            }
        }
        for (ip, _) in held {
            if !kept.contains(ip) && !release.contains(ip) {
                release.push(*ip);
            }
        }
        ServicePlan { families, release }
    }

    fn plan_family(
        &self,
        svc: &ServiceAsk,
        from: &'static str,
        held: &[(IpAddr, String)],
        fam: Family,
    ) -> Outcome {
        let requested = svc
            .requested
            .iter()
            .copied()
            .find(|a| Family::of(*a) == fam);
        let mine = held.iter().find(|(a, _)| Family::of(*a) == fam);
        // Keep what is held while it is still what the Service asks for: a restart, a failover
        // or a shrunk pool never moves it.
        if let Some((address, pool)) = mine {
            let still_asked = match requested {
                Some(r) => r == *address,
                None => svc.pool.as_ref().is_none_or(|p| p == pool),
            };
            if still_asked {
                let outside = self.outside(*address, pool);
                return Outcome::Keep {
                    address: *address,
                    pool: pool.clone(),
                    outside,
                };
            }
        }
        if let Some(ip) = requested {
            return match self
                .pool_for_address(svc, ip, from)
                .and_then(|p| self.may_hold(svc, ip, from).map(|s| (p, s)))
            {
                Ok((p, sharing)) => Outcome::Take {
                    address: ip,
                    pool: p.name.clone(),
                    sharing,
                },
                Err(w) => Outcome::Wait(w),
            };
        }
        let cands = match self.candidates(svc, fam) {
            Ok(c) => c,
            Err(w) => return Outcome::Wait(w),
        };
        // A sharing key joins an address already held under it, when the rule allows.
        if let Some(key) = sharing_of(svc) {
            let mut conflict = None;
            for (ip, h) in self
                .holdings
                .iter()
                .filter(|(ip, _)| Family::of(**ip) == fam)
            {
                if let Holding::Services {
                    pool,
                    sharing: Some(s),
                    ..
                } = h
                {
                    if *s != key || !cands.iter().any(|c| c.name == *pool) {
                        continue;
                    }
                    match self.may_hold(svc, *ip, from) {
                        Ok(sharing) => {
                            return Outcome::Take {
                                address: *ip,
                                pool: pool.clone(),
                                sharing,
                            }
                        }
                        Err(w) => conflict = conflict.or(Some(w)),
                    }
                }
            }
            // One address per key: a conflicting member waits rather than splitting the key.
            if let Some(w) = conflict {
                return Outcome::Wait(w);
            }
        }
        for c in &cands {
            for s in c.subnets.iter().filter(|s| s.family() == fam) {
                if let Some(ip) = first_free(s, self.holdings) {
                    return Outcome::Take {
                        address: ip,
                        pool: c.name.clone(),
                        sharing: sharing_of(svc),
                    };
                }
            }
        }
        Outcome::Wait(Waiting::Exhausted {
            pools: cands.iter().map(|c| c.name.clone()).collect(),
            family: fam,
        })
    }

    /// Why a held address is no longer inside its pool, if it is not.
    fn outside(&self, ip: IpAddr, pool: &str) -> Option<String> {
        match self.pools.iter().find(|p| p.name == pool) {
            None => Some(format!("pool {pool:?} no longer exists")),
            Some(p) if p.usable_subnet(ip).is_none() => {
                Some(format!("pool {pool:?} no longer contains {ip}"))
            }
            Some(_) => None,
        }
    }

    /// Which of a Service's `spec.externalIPs` are honoured: `Ok(pool)` for each admitted
    /// address, `Err(why)` for each refused one. Only a pool with `externalIPs: true` that admits
    /// the Service makes an address honourable, and only when no other Service holds it.
    pub fn external_ips(&self, svc: &ServiceAsk) -> Vec<(IpAddr, Result<String, String>)> {
        let mut seen = BTreeSet::new();
        svc.external_ips
            .iter()
            .filter(|ip| seen.insert(**ip))
            .map(|&ip| (ip, self.external_ip(svc, ip)))
            .collect()
    }

    fn external_ip(&self, svc: &ServiceAsk, ip: IpAddr) -> Result<String, String> {
        let Some(p) = self
            .pools
            .iter()
            .copied()
            .find(|p| p.subnet_of(ip).is_some())
        else {
            return Err(format!(
                "spec.externalIPs {ip} lies in no Pool; Berth honours externalIPs only from a service Pool with externalIPs: true"
            ));
        };
        if p.use_ != PoolUse::Service || !p.service.external_ips {
            return Err(format!(
                "spec.externalIPs {ip} lies in pool {:?}, which does not allow externalIPs (set externalIPs: true on a service pool to allow it)",
                p.name
            ));
        }
        if let Some(prob) = self.problems.get(&p.name) {
            return Err(format!(
                "spec.externalIPs {ip} lies in pool {:?}, which is not ready ({prob})",
                p.name
            ));
        }
        if let Some(r) = p.service.service_allocation.refuses(svc) {
            return Err(format!(
                "spec.externalIPs {ip} lies in pool {:?}, which does not admit the Service: {r}",
                p.name
            ));
        }
        if p.usable_subnet(ip).is_none() {
            return Err(format!(
                "spec.externalIPs {ip} is the network, broadcast or an excluded address of pool {:?}",
                p.name
            ));
        }
        match self.holdings.get(&ip) {
            Some(h) if !h.held_by(&svc.service) => Err(format!(
                "spec.externalIPs {ip} is held by {}",
                match h {
                    Holding::Services { holders, .. } => holders
                        .iter()
                        .map(|h| h.service.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    Holding::Other { what } => what.clone(),
                }
            )),
            _ => Ok(p.name.clone()),
        }
    }
}

fn dedup(f: &[Family]) -> Vec<Family> {
    let mut out = vec![];
    for x in f {
        if !out.contains(x) {
            out.push(*x);
        }
    }
    out
}

/// The lowest address of `s` that may be handed out dynamically and is not held. Walks the
/// dynamic ranges, jumping over held runs, reserved ranges and excludes, so a large IPv6 subnet
/// costs no more than the addresses held in it.
pub fn first_free(s: &SubnetSpec, holdings: &BTreeMap<IpAddr, Holding>) -> Option<IpAddr> {
    let fam = s.family();
    let (net_lo, net_hi) = net_bounds(&s.cidr);
    for r in s.dynamic_ranges() {
        let (lo, hi) = r.bounds();
        let (mut v, hi) = (lo.max(net_lo), hi.min(net_hi));
        while v <= hi {
            let ip = from_u128(v, fam);
            if let Some(end) = s
                .excludes
                .iter()
                .filter(|e| e.contains(&ip))
                .map(|e| net_bounds(e).1)
                .chain(
                    s.fixed
                        .iter()
                        .filter(|f| f.contains(ip))
                        .map(|f| f.bounds().1),
                )
                .max()
            {
                match end.checked_add(1) {
                    Some(n) => v = n,
                    None => break,
                }
                continue;
            }
            if s.is_dynamic(ip) && !holdings.contains_key(&ip) {
                return Some(ip);
            }
            // Jump over the run of held addresses starting here (a full pool of 10,000 is
            // walked once, not one lookup per address per Service).
            let mut end = v;
            for held in holdings.range(ip..).map(|(a, _)| crate::addr::to_u128(*a)) {
                if held != end {
                    break;
                }
                end = end.saturating_add(1);
            }
            if end > v {
                v = end;
                continue;
            }
            match v.checked_add(1) {
                Some(n) => v = n,
                None => break,
            }
        }
    }
    None
}

/// Why a Service's annotations cannot be used. Each names the annotation, the value and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    /// Not a comma-separated list of IP addresses.
    #[error("annotation {key}: {value:?} is not an IP address: write addresses separated by commas, e.g. \"198.18.100.5,2001:db8:100::5\"")]
    NotAnAddress {
        /// The annotation (or `spec.loadBalancerIP`).
        key: &'static str,
        /// The part that does not parse.
        value: String,
    },
    /// Two addresses of one family: a Service has one LoadBalancer address per family.
    #[error(
        "annotation {key}: {value:?} names two {family} addresses: give at most one per family"
    )]
    TwoOfAFamily {
        /// The annotation.
        key: &'static str,
        /// The whole value.
        value: String,
        /// The family.
        family: Family,
    },
    /// Two sources of addresses, or of pools, disagree.
    #[error("{a} ({va:?}) and {b} ({vb:?}) disagree: keep one of them")]
    Conflict {
        /// One source.
        a: &'static str,
        /// Its value.
        va: String,
        /// The other.
        b: &'static str,
        /// Its value.
        vb: String,
    },
    /// An empty value where a name is needed.
    #[error("annotation {key} is empty: give a value or remove the annotation")]
    Empty {
        /// The annotation.
        key: &'static str,
    },
}

/// What a Service's annotations (and the deprecated `spec.loadBalancerIP`) ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceAnnotations {
    /// Specific addresses, at most one per family.
    pub requested: Vec<IpAddr>,
    /// Where they came from (for messages).
    pub requested_from: &'static str,
    /// The pool asked for.
    pub pool: Option<String>,
    /// The sharing key.
    pub sharing_key: Option<String>,
}

/// The name of `spec.loadBalancerIP` in messages.
pub const SPEC_LOAD_BALANCER_IP: &str = "spec.loadBalancerIP";

fn parse_ips(key: &'static str, value: &str) -> Result<Vec<IpAddr>, AnnotationError> {
    let mut out: Vec<IpAddr> = vec![];
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let ip: IpAddr = part.parse().map_err(|_| AnnotationError::NotAnAddress {
            key,
            value: part.to_string(),
        })?;
        if out.iter().any(|o| Family::of(*o) == Family::of(ip)) {
            return Err(AnnotationError::TwoOfAFamily {
                key,
                value: value.to_string(),
                family: Family::of(ip),
            });
        }
        out.push(ip);
    }
    if out.is_empty() {
        return Err(AnnotationError::Empty { key });
    }
    Ok(out)
}

/// The first of `keys` present, with its value; a second present key with another value is a
/// conflict.
fn one_of<'m>(
    annotations: &'m BTreeMap<String, String>,
    keys: &[&'static str],
) -> Result<Option<(&'static str, &'m str)>, AnnotationError> {
    let mut found: Option<(&'static str, &'m str)> = None;
    for k in keys {
        if let Some(v) = annotations.get(*k) {
            match found {
                None => found = Some((k, v.trim())),
                Some((a, va)) if va != v.trim() => {
                    return Err(AnnotationError::Conflict {
                        a,
                        va: va.to_string(),
                        b: k,
                        vb: v.clone(),
                    })
                }
                Some(_) => {}
            }
        }
    }
    Ok(found)
}

impl ServiceAnnotations {
    /// Read Berth's annotations and, for migrations, MetalLB's and `spec.loadBalancerIP`.
    /// Berth's own keys and MetalLB's may both be present only with the same value.
    pub fn parse(
        annotations: &BTreeMap<String, String>,
        load_balancer_ip: Option<&str>,
    ) -> Result<Self, AnnotationError> {
        let mut out = ServiceAnnotations {
            requested_from: ANN_IPS,
            ..Default::default()
        };
        let ips = one_of(
            annotations,
            &[ANN_IPS, ANN_METALLB_IPS, ANN_METALLB_UNIVERSE_IPS],
        )?;
        if let Some((k, v)) = ips {
            out.requested = parse_ips(k, v)?;
            out.requested_from = k;
        }
        if let Some(lb) = load_balancer_ip.map(str::trim).filter(|s| !s.is_empty()) {
            let spec = parse_ips(SPEC_LOAD_BALANCER_IP, lb)?;
            match ips {
                None => {
                    out.requested = spec;
                    out.requested_from = SPEC_LOAD_BALANCER_IP;
                }
                Some((k, v)) => {
                    if !spec.iter().all(|a| out.requested.contains(a)) {
                        return Err(AnnotationError::Conflict {
                            a: k,
                            va: v.to_string(),
                            b: SPEC_LOAD_BALANCER_IP,
                            vb: lb.to_string(),
                        });
                    }
                }
            }
        }
        let mut pool_keys = vec![ANN_POOL];
        pool_keys.extend(ANN_METALLB_POOLS);
        if let Some((k, v)) = one_of(annotations, &pool_keys)? {
            if v.is_empty() {
                return Err(AnnotationError::Empty { key: k });
            }
            out.pool = Some(v.to_string());
        }
        let mut share_keys = vec![ANN_SHARING_KEY];
        share_keys.extend(ANN_METALLB_SHARING);
        if let Some((k, v)) = one_of(annotations, &share_keys)? {
            if v.is_empty() {
                return Err(AnnotationError::Empty { key: k });
            }
            out.sharing_key = Some(v.to_string());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::SubnetSpec;

    pub(crate) fn pool(name: &str, cidrs: &[&str]) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            use_: PoolUse::Service,
            subnets: cidrs
                .iter()
                .map(|c| SubnetSpec::new(c.parse().unwrap()))
                .collect(),
            policy: Default::default(),
            service: ServiceSettings::default(),
            announcement: Default::default(),
        }
    }

    fn ask(ns: &str, name: &str) -> ServiceAsk {
        ServiceAsk {
            service: ServiceRef {
                namespace: ns.into(),
                name: name.into(),
                uid: format!("uid-{name}"),
            },
            labels: BTreeMap::new(),
            namespace_labels: BTreeMap::new(),
            load_balancer: true,
            families: vec![Family::V4],
            requested: vec![],
            pool: None,
            sharing_key: None,
            ports: [PortKey {
                protocol: "TCP".into(),
                port: 80,
            }]
            .into(),
            local_traffic: None,
            external_ips: vec![],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn held_by(svc: &ServiceAsk, pool: &str) -> Holding {
        Holding::Services {
            pool: pool.into(),
            sharing: sharing_of(svc),
            holders: vec![Sharer {
                service: svc.service.clone(),
                ports: svc.ports.clone(),
                local_traffic: svc.local_traffic.clone(),
            }],
        }
    }

    #[test]
    fn first_address_skips_network_and_held() {
        let p = pool("public", &["198.18.100.0/30"]);
        let none = BTreeMap::new();
        let w = ServiceWorld::new(vec![&p], &none);
        let a = ask("default", "a");
        let plan = w.plan(&a, ANN_IPS, &[]);
        assert_eq!(plan.addresses(), vec![ip("198.18.100.1")]);
        let mut h = BTreeMap::new();
        h.insert(ip("198.18.100.1"), held_by(&a, "public"));
        let w = ServiceWorld::new(vec![&p], &h);
        let b = ask("default", "b");
        assert_eq!(
            w.plan(&b, ANN_IPS, &[]).addresses(),
            vec![ip("198.18.100.2")]
        );
        h.insert(ip("198.18.100.2"), held_by(&b, "public"));
        let w = ServiceWorld::new(vec![&p], &h);
        let c = ask("default", "c");
        let plan = w.plan(&c, ANN_IPS, &[]);
        assert!(
            matches!(
                &plan.families[0].1,
                Outcome::Wait(Waiting::Exhausted { .. })
            ),
            "{plan:?}"
        );
    }

    #[test]
    fn a_held_address_is_kept_even_when_the_pool_shrinks() {
        let big = pool("public", &["198.18.100.0/28"]);
        let small = pool("public", &["198.18.100.0/30"]);
        let a = ask("default", "a");
        let mut h = BTreeMap::new();
        h.insert(ip("198.18.100.9"), held_by(&a, "public"));
        let held = vec![(ip("198.18.100.9"), "public".to_string())];
        let w = ServiceWorld::new(vec![&big], &h);
        let plan = w.plan(&a, ANN_IPS, &held);
        assert_eq!(
            plan.families[0].1,
            Outcome::Keep {
                address: ip("198.18.100.9"),
                pool: "public".into(),
                outside: None
            }
        );
        let w = ServiceWorld::new(vec![&small], &h);
        let plan = w.plan(&a, ANN_IPS, &held);
        assert!(
            matches!(&plan.families[0].1, Outcome::Keep { address, outside: Some(_), .. } if *address == ip("198.18.100.9")),
            "{plan:?}"
        );
        assert!(plan.release.is_empty());
    }

    #[test]
    fn type_change_releases_everything() {
        let p = pool("public", &["198.18.100.0/28"]);
        let mut a = ask("default", "a");
        let mut h = BTreeMap::new();
        h.insert(ip("198.18.100.1"), held_by(&a, "public"));
        a.load_balancer = false;
        let w = ServiceWorld::new(vec![&p], &h);
        let plan = w.plan(&a, ANN_IPS, &[(ip("198.18.100.1"), "public".into())]);
        assert!(plan.families.is_empty());
        assert_eq!(plan.release, vec![ip("198.18.100.1")]);
    }

    #[test]
    fn priority_then_name_and_scoping() {
        let mut low = pool("a-low", &["198.18.100.0/28"]);
        let mut high = pool("z-high", &["198.18.101.0/28"]);
        high.service.service_allocation.priority = 10;
        let mut team = pool("team", &["198.18.102.0/28"]);
        team.service.service_allocation.priority = 100;
        team.service.service_allocation.namespaces = vec!["team-a".into()];
        low.service.service_allocation.priority = 0;
        let none = BTreeMap::new();
        let w = ServiceWorld::new(vec![&low, &high, &team], &none);
        assert_eq!(
            w.plan(&ask("default", "s"), ANN_IPS, &[]).addresses(),
            vec![ip("198.18.101.1")]
        );
        assert_eq!(
            w.plan(&ask("team-a", "s"), ANN_IPS, &[]).addresses(),
            vec![ip("198.18.102.1")]
        );
        let mut manual = pool("manual", &["198.18.103.0/28"]);
        manual.service.auto_assign = false;
        manual.service.service_allocation.priority = 1000;
        let w = ServiceWorld::new(vec![&manual, &low], &none);
        assert_eq!(
            w.plan(&ask("default", "s"), ANN_IPS, &[]).addresses(),
            vec![ip("198.18.100.1")]
        );
        let mut s = ask("default", "s");
        s.pool = Some("manual".into());
        assert_eq!(
            w.plan(&s, ANN_IPS, &[]).addresses(),
            vec![ip("198.18.103.1")]
        );
    }

    #[test]
    fn selectors_scope_pools() {
        let mut p = pool("sel", &["198.18.100.0/28"]);
        p.service.service_allocation.namespace_selector = Some(LabelSelector {
            match_labels: [("tier".to_string(), "edge".to_string())].into(),
            ..Default::default()
        });
        p.service.service_allocation.service_selector = Some(LabelSelector {
            match_labels: [("expose".to_string(), "yes".to_string())].into(),
            ..Default::default()
        });
        let none = BTreeMap::new();
        let w = ServiceWorld::new(vec![&p], &none);
        let mut s = ask("edge", "s");
        let e = w.plan(&s, ANN_IPS, &[]);
        match &e.families[0].1 {
            Outcome::Wait(w @ Waiting::NoPool { .. }) => {
                assert!(w.to_string().contains("namespaceSelector"), "{w}")
            }
            o => panic!("{o:?}"),
        }
        s.namespace_labels.insert("tier".into(), "edge".into());
        assert!(w.plan(&s, ANN_IPS, &[]).addresses().is_empty());
        s.labels.insert("expose".into(), "yes".into());
        assert_eq!(
            w.plan(&s, ANN_IPS, &[]).addresses(),
            vec![ip("198.18.100.1")]
        );
    }

    #[test]
    fn sharing_needs_the_key_disjoint_ports_and_one_namespace() {
        let p = pool("public", &["198.18.100.0/28"]);
        let mut a = ask("default", "a");
        a.sharing_key = Some("k".into());
        let mut h = BTreeMap::new();
        h.insert(ip("198.18.100.1"), held_by(&a, "public"));
        let w = ServiceWorld::new(vec![&p], &h);
        // Same key, disjoint ports: joins.
        let mut b = ask("default", "b");
        b.sharing_key = Some("k".into());
        b.ports = [PortKey {
            protocol: "TCP".into(),
            port: 443,
        }]
        .into();
        let plan = w.plan(&b, ANN_IPS, &[]);
        assert_eq!(
            plan.families[0].1,
            Outcome::Take {
                address: ip("198.18.100.1"),
                pool: "public".into(),
                sharing: Some(("default".into(), "k".into()))
            }
        );
        // Same key, same port: waits with a message naming the port.
        let mut c = ask("default", "c");
        c.sharing_key = Some("k".into());
        match &w.plan(&c, ANN_IPS, &[]).families[0].1 {
            Outcome::Wait(w @ Waiting::CannotShare { .. }) => {
                assert!(w.to_string().contains("TCP/80"), "{w}")
            }
            o => panic!("{o:?}"),
        }
        // Same key in another namespace: a separate address.
        let mut d = ask("other", "d");
        d.sharing_key = Some("k".into());
        d.ports = [PortKey {
            protocol: "TCP".into(),
            port: 443,
        }]
        .into();
        assert_eq!(
            w.plan(&d, ANN_IPS, &[]).addresses(),
            vec![ip("198.18.100.2")]
        );
        // No key, asking for the held address: taken.
        let mut e = ask("default", "e");
        e.requested = vec![ip("198.18.100.1")];
        e.ports = [PortKey {
            protocol: "UDP".into(),
            port: 53,
        }]
        .into();
        assert!(matches!(
            &w.plan(&e, ANN_IPS, &[]).families[0].1,
            Outcome::Wait(Waiting::Taken { .. })
        ));
        // ETP Local with different selectors cannot share.
        let mut f = b.clone();
        f.service.name = "f".into();
        f.service.uid = "uid-f".into();
        f.ports = [PortKey {
            protocol: "TCP".into(),
            port: 8443,
        }]
        .into();
        f.local_traffic = Some("app=f".into());
        assert!(matches!(
            &w.plan(&f, ANN_IPS, &[]).families[0].1,
            Outcome::Wait(Waiting::CannotShare { .. })
        ));
    }

    #[test]
    fn requested_addresses_are_checked() {
        let p = pool("public", &["198.18.100.0/28", "2001:db8:100::/120"]);
        let pods = PoolSpec {
            use_: PoolUse::Pod,
            ..pool("pods", &["198.18.0.0/24"])
        };
        let none = BTreeMap::new();
        let w = ServiceWorld::new(vec![&p, &pods], &none);
        let mut s = ask("default", "s");
        s.families = vec![Family::V4, Family::V6];
        s.requested = vec![ip("198.18.100.5"), ip("2001:db8:100::5")];
        assert_eq!(
            w.plan(&s, ANN_IPS, &[]).addresses(),
            vec![ip("198.18.100.5"), ip("2001:db8:100::5")]
        );
        s.requested = vec![ip("198.18.0.9")];
        s.families = vec![Family::V4];
        match &w.plan(&s, ANN_METALLB_IPS, &[]).families[0].1 {
            Outcome::Wait(w @ Waiting::NotInPool { .. }) => {
                let m = w.to_string();
                assert!(
                    m.contains("metallb.io/loadBalancerIPs")
                        && m.contains("198.18.0.9")
                        && m.contains("pods"),
                    "{m}"
                );
            }
            o => panic!("{o:?}"),
        }
        s.requested = vec![ip("198.18.100.0")];
        assert!(matches!(
            &w.plan(&s, ANN_IPS, &[]).families[0].1,
            Outcome::Wait(Waiting::NotInPool { .. })
        ));
    }

    #[test]
    fn a_changed_request_moves_and_releases() {
        let p = pool("public", &["198.18.100.0/28"]);
        let mut a = ask("default", "a");
        let mut h = BTreeMap::new();
        h.insert(ip("198.18.100.1"), held_by(&a, "public"));
        a.requested = vec![ip("198.18.100.7")];
        let w = ServiceWorld::new(vec![&p], &h);
        let plan = w.plan(&a, ANN_IPS, &[(ip("198.18.100.1"), "public".into())]);
        assert_eq!(plan.addresses(), vec![ip("198.18.100.7")]);
        assert_eq!(plan.release, vec![ip("198.18.100.1")]);
    }

    #[test]
    fn overlapping_pools_the_newer_is_not_ready() {
        let a = pool("first", &["198.18.100.0/28"]);
        let b = pool("second", &["198.18.100.8/29"]);
        let c = PoolSpec {
            use_: PoolUse::Pod,
            ..pool("pods", &["198.18.100.0/24"])
        };
        let probs = pool_problems(&[&a, &b, &c]);
        assert!(!probs.contains_key("first"));
        let m = probs["second"].to_string();
        assert!(m.contains("198.18.100.8/29") && m.contains("first"), "{m}");
        assert!(probs.contains_key("pods"));
        let none = BTreeMap::new();
        let w = ServiceWorld::new(vec![&a, &b], &none);
        let mut s = ask("default", "s");
        s.pool = Some("second".into());
        match &w.plan(&s, ANN_IPS, &[]).families[0].1 {
            Outcome::Wait(w @ Waiting::PoolRefuses { .. }) => {
                assert!(w.to_string().contains("not ready"), "{w}")
            }
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn external_ips_only_from_allowing_pools() {
        let mut ext = pool("ext", &["198.18.110.0/28"]);
        ext.service.external_ips = true;
        let lb = pool("lb", &["198.18.100.0/28"]);
        let other = ask("default", "other");
        let mut h = BTreeMap::new();
        h.insert(ip("198.18.110.3"), held_by(&other, "ext"));
        let w = ServiceWorld::new(vec![&ext, &lb], &h);
        let mut s = ask("default", "s");
        s.external_ips = vec![
            ip("198.18.110.2"),
            ip("198.18.100.2"),
            ip("203.0.113.9"),
            ip("198.18.110.3"),
        ];
        let r = w.external_ips(&s);
        assert_eq!(r[0], (ip("198.18.110.2"), Ok("ext".into())));
        assert!(r[1]
            .1
            .as_ref()
            .unwrap_err()
            .contains("does not allow externalIPs"));
        assert!(r[2].1.as_ref().unwrap_err().contains("no Pool"));
        assert!(r[3].1.as_ref().unwrap_err().contains("default/other"));
    }

    #[test]
    fn annotations_parse_and_errors_name_the_key() {
        let m = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let a = ServiceAnnotations::parse(
            &m(&[
                (ANN_IPS, "198.18.100.5, 2001:db8:100::5"),
                (ANN_POOL, "public"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(a.requested, vec![ip("198.18.100.5"), ip("2001:db8:100::5")]);
        assert_eq!(a.pool.as_deref(), Some("public"));
        let a = ServiceAnnotations::parse(
            &m(&[("metallb.universe.tf/allow-shared-ip", "k")]),
            Some("198.18.100.6"),
        )
        .unwrap();
        assert_eq!(a.requested, vec![ip("198.18.100.6")]);
        assert_eq!(a.requested_from, SPEC_LOAD_BALANCER_IP);
        assert_eq!(a.sharing_key.as_deref(), Some("k"));
        let e = ServiceAnnotations::parse(&m(&[(ANN_IPS, "198.18.100.5,nope")]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(ANN_IPS) && e.contains("nope"), "{e}");
        let e = ServiceAnnotations::parse(&m(&[(ANN_IPS, "198.18.100.5,198.18.100.6")]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("two IPv4") || e.contains("two "), "{e}");
        let e = ServiceAnnotations::parse(
            &m(&[(ANN_IPS, "198.18.100.5"), (ANN_METALLB_IPS, "198.18.100.6")]),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains(ANN_IPS) && e.contains(ANN_METALLB_IPS), "{e}");
        let e = ServiceAnnotations::parse(&m(&[(ANN_IPS, "198.18.100.5")]), Some("198.18.100.6"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(SPEC_LOAD_BALANCER_IP), "{e}");
        assert!(ServiceAnnotations::parse(&m(&[(ANN_POOL, " ")]), None).is_err());
    }
}
