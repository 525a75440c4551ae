//! Ledger invariants, checked over a snapshot. `berth audit` prints these and exits non-zero.

use crate::addr::Family;
use crate::binding::{Binding, BindingKind};
use crate::block::Block;
use crate::claim::Claim;
use crate::pool::PoolSpec;
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

/// One broken invariant found in a ledger snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Two bindings for one address.
    AddressBoundTwice {
        /// The address.
        address: IpAddr,
        /// The holders.
        holders: Vec<String>,
    },
    /// One attachment holds two addresses of the same family in one network: a leak.
    AttachmentBoundTwice {
        /// Network, container ID and interface.
        attachment: String,
        /// The family.
        family: Family,
        /// The addresses.
        addresses: Vec<IpAddr>,
    },
    /// A binding names a pool the ledger does not have.
    UnknownPool {
        /// The address.
        address: IpAddr,
        /// The pool it names.
        pool: String,
    },
    /// A binding's address is outside every subnet of its pool, or not usable there.
    OutsidePool {
        /// The address.
        address: IpAddr,
        /// The pool.
        pool: String,
    },
    /// A dynamic binding whose block is missing, does not contain it, or belongs to another node.
    OutsideBlock {
        /// The address.
        address: IpAddr,
        /// The block it names.
        block: IpNet,
        /// Why.
        reason: String,
    },
    /// A fixed binding outside the pool's reserved ranges.
    FixedNotReserved {
        /// The address.
        address: IpAddr,
        /// The pool.
        pool: String,
    },
    /// A block whose pool is gone or that lies outside the pool's subnets.
    OrphanBlock {
        /// The block.
        block: IpNet,
        /// Its pool.
        pool: String,
        /// Owning node.
        node: String,
    },
    /// A claimed binding whose claim is missing or does not hold its address.
    ClaimMismatch {
        /// The address.
        address: IpAddr,
        /// The claim it names.
        claim: String,
    },
    /// A claimed address bound by someone who is not the claim's identity.
    ClaimedAddressTaken {
        /// The address.
        address: IpAddr,
        /// The claim that keeps it.
        claim: String,
        /// Who holds it.
        holder: String,
    },
    /// A binding whose holder does not fit its pool or claim: a Service's binding outside a
    /// service pool or without its Service claim, an attachment's binding in a service pool.
    WrongHolder {
        /// The address.
        address: IpAddr,
        /// Who holds it.
        holder: String,
        /// What is wrong.
        reason: String,
    },
    /// Two blocks overlap.
    BlocksOverlap {
        /// First block.
        a: IpNet,
        /// Second block.
        b: IpNet,
    },
    /// A record Berth cannot decode (or whose name does not match its content). Readers skip
    /// it without treating it as free: a bad binding's address counts as taken, a bad block as
    /// another node's. It stays a violation until an operator fixes or deletes it.
    BadRecord {
        /// Its kind (`binding`, `block`, `claim`, `pool`).
        kind: String,
        /// Its ledger name (a binding's address, a block's `pool/cidr`).
        name: String,
        /// Why it cannot be read.
        reason: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::AddressBoundTwice { address, holders } => {
                write!(f, "address {address} is bound twice ({holders:?})")
            }
            Violation::AttachmentBoundTwice {
                attachment,
                family,
                addresses,
            } => write!(
                f,
                "attachment {attachment} holds several {family} addresses {addresses:?} (leak)"
            ),
            Violation::UnknownPool { address, pool } => {
                write!(f, "binding {address} names pool {pool:?}, which the ledger does not have")
            }
            Violation::OutsidePool { address, pool } => {
                write!(f, "binding {address} is not a usable address of pool {pool:?}")
            }
            Violation::OutsideBlock {
                address,
                block,
                reason,
            } => write!(f, "binding {address} is outside its block {block}: {reason}"),
            Violation::FixedNotReserved { address, pool } => write!(
                f,
                "fixed binding {address} is outside the reserved ranges of pool {pool:?}"
            ),
            Violation::OrphanBlock { block, pool, node } => write!(
                f,
                "block {block} (node {node}) is orphaned: pool {pool:?} is missing or does not contain it"
            ),
            Violation::ClaimMismatch { address, claim } => write!(
                f,
                "binding {address} names claim {claim:?}, which is missing or does not keep that address"
            ),
            Violation::ClaimedAddressTaken {
                address,
                claim,
                holder,
            } => write!(
                f,
                "address {address} is kept by claim {claim:?} but bound by {holder} outside the claim"
            ),
            Violation::WrongHolder {
                address,
                holder,
                reason,
            } => write!(f, "binding {address} held by {holder}: {reason}"),
            Violation::BlocksOverlap { a, b } => write!(f, "blocks {a} and {b} overlap"),
            Violation::BadRecord { kind, name, reason } => write!(
                f,
                "{kind} {name:?} cannot be read ({reason}); it is skipped, never treated as free: fix or delete it"
            ),
        }
    }
}

/// Why a binding's holder does not fit its pool or claim, if it does not. Services hold
/// addresses of service pools only, through a claim for their own identity (the Service, or
/// their namespace's sharing key); attachments never hold service addresses.
fn holder_problem(
    pool: &PoolSpec,
    b: &Binding,
    claims: &HashMap<String, &Claim>,
) -> Option<String> {
    use crate::binding::Holder;
    use crate::claim::Identity;
    use crate::pool::PoolUse;
    match &b.holder {
        Holder::Attachment(_) if pool.use_ == PoolUse::Service => Some(format!(
            "pool {:?} is a service pool; containers never hold its addresses",
            pool.name
        )),
        Holder::Attachment(_) => None,
        Holder::Services(h) => {
            if pool.use_ != PoolUse::Service {
                return Some(format!("pool {:?} is not a service pool", pool.name));
            }
            let Some(first) = h.services.first() else {
                return Some("no Service is named".into());
            };
            let BindingKind::Claimed { claim } = &b.kind else {
                return Some("a Service's binding must name its claim".into());
            };
            let Some(c) = claims.get(claim) else {
                return None; // ClaimMismatch reports it.
            };
            match (&c.identity, &h.sharing_key) {
                (Identity::Service { namespace, name }, None)
                    if h.services.len() == 1
                        && first.namespace == *namespace
                        && first.name == *name =>
                {
                    None
                }
                (Identity::SharedService { namespace, key }, Some(k))
                    if k == key && h.services.iter().all(|s| s.namespace == *namespace) =>
                {
                    None
                }
                (i, _) => Some(format!("its claim is for {i}, which does not match")),
            }
        }
    }
}

/// Check every ledger invariant over a snapshot; an empty result means the ledger is sound.
pub fn audit(pools: &[PoolSpec], blocks: &[Block], bindings: &[Binding]) -> Vec<Violation> {
    audit_with_claims(pools, blocks, &[], bindings)
}

/// [`audit`], also checking claims: a claimed binding's claim keeps its address, and no claimed
/// address is bound outside its claim.
pub fn audit_with_claims(
    pools: &[PoolSpec],
    blocks: &[Block],
    claims: &[Claim],
    bindings: &[Binding],
) -> Vec<Violation> {
    let mut out = vec![];
    let claims_by_name: HashMap<String, &Claim> = claims.iter().map(|c| (c.name(), c)).collect();
    let mut claimed: HashMap<IpAddr, String> = HashMap::new();
    for c in claims {
        for a in &c.addresses {
            claimed.insert(*a, c.name());
        }
    }
    let pools_by_name: HashMap<&str, &PoolSpec> =
        pools.iter().map(|p| (p.name.as_str(), p)).collect();

    let mut by_addr: BTreeMap<IpAddr, Vec<&Binding>> = BTreeMap::new();
    let mut by_attachment: BTreeMap<(String, Family), Vec<IpAddr>> = BTreeMap::new();
    for b in bindings {
        by_addr.entry(b.address).or_default().push(b);
        if let Some(o) = b.attachment() {
            let key = format!("{}/{}/{}", o.network, o.container_id, o.ifname);
            by_attachment
                .entry((key, Family::of(b.address)))
                .or_default()
                .push(b.address);
        }
    }
    for (address, holders) in &by_addr {
        if holders.len() > 1 {
            out.push(Violation::AddressBoundTwice {
                address: *address,
                holders: holders.iter().map(|b| b.holder.describe()).collect(),
            });
        }
    }
    for ((attachment, family), addresses) in by_attachment {
        if addresses.len() > 1 {
            out.push(Violation::AttachmentBoundTwice {
                attachment,
                family,
                addresses,
            });
        }
    }

    let blocks_by_cidr: HashMap<(&str, IpNet), &Block> = blocks
        .iter()
        .map(|b| ((b.pool.as_str(), b.cidr), b))
        .collect();
    for b in bindings {
        let Some(pool) = pools_by_name.get(b.pool.as_str()) else {
            out.push(Violation::UnknownPool {
                address: b.address,
                pool: b.pool.clone(),
            });
            continue;
        };
        let Some(subnet) = pool.usable_subnet(b.address) else {
            out.push(Violation::OutsidePool {
                address: b.address,
                pool: b.pool.clone(),
            });
            continue;
        };
        if let Some(reason) = holder_problem(pool, b, &claims_by_name) {
            out.push(Violation::WrongHolder {
                address: b.address,
                holder: b.holder.describe(),
                reason,
            });
        }
        if let Some(claim) = claimed.get(&b.address) {
            if !matches!(&b.kind, BindingKind::Claimed { claim: c } if c == claim) {
                out.push(Violation::ClaimedAddressTaken {
                    address: b.address,
                    claim: claim.clone(),
                    holder: b.holder.describe(),
                });
            }
        }
        match &b.kind {
            BindingKind::Claimed { claim } => {
                let keeps = claims_by_name
                    .get(claim)
                    .map(|c| c.addresses.contains(&b.address))
                    .unwrap_or(false);
                if !keeps {
                    out.push(Violation::ClaimMismatch {
                        address: b.address,
                        claim: claim.clone(),
                    });
                }
            }
            BindingKind::Fixed => {
                if !subnet.allows_fixed(b.address) {
                    out.push(Violation::FixedNotReserved {
                        address: b.address,
                        pool: b.pool.clone(),
                    });
                }
            }
            BindingKind::Dynamic { block } => {
                let reason = match blocks_by_cidr.get(&(b.pool.as_str(), *block)) {
                    None => Some("no such block in the ledger".to_string()),
                    Some(_) if !block.contains(&b.address) => {
                        Some("the block does not contain it".to_string())
                    }
                    Some(blk) if blk.node != b.node => Some(format!(
                        "the block belongs to node {:?}, the binding to node {:?}",
                        blk.node, b.node
                    )),
                    Some(_) => None,
                };
                if let Some(reason) = reason {
                    out.push(Violation::OutsideBlock {
                        address: b.address,
                        block: *block,
                        reason,
                    });
                }
            }
        }
    }

    let mut sorted: Vec<&Block> = blocks.iter().collect();
    sorted.sort_by_key(|b| {
        (
            Family::of(b.cidr.addr()),
            crate::addr::to_u128(b.cidr.network()),
        )
    });
    for w in sorted.windows(2) {
        let (a, b) = (w[0].cidr, w[1].cidr);
        if crate::addr::nets_overlap(&a, &b) {
            out.push(Violation::BlocksOverlap { a, b });
        }
    }
    for b in blocks {
        let inside = pools_by_name
            .get(b.pool.as_str())
            .map(|p| p.subnets.iter().any(|s| s.cidr.contains(&b.cidr)))
            .unwrap_or(false);
        if !inside {
            out.push(Violation::OrphanBlock {
                block: b.cidr,
                pool: b.pool.clone(),
                node: b.node.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::{Holder, Owner, ServiceHolders};
    use crate::claim::Identity;
    use crate::pool::{PoolUse, SubnetSpec};
    use crate::service::ServiceRef;

    fn pool(name: &str, use_: PoolUse, cidr: &str) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            use_,
            subnets: vec![SubnetSpec::new(cidr.parse().unwrap())],
            policy: Default::default(),
            service: Default::default(),
            announcement: Default::default(),
        }
    }

    fn svc(ns: &str, name: &str) -> ServiceRef {
        ServiceRef {
            namespace: ns.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
        }
    }

    fn service_binding(
        addr: &str,
        pool: &str,
        claim: &str,
        services: Vec<ServiceRef>,
        key: Option<&str>,
    ) -> Binding {
        Binding {
            address: addr.parse().unwrap(),
            prefix_len: 28,
            pool: pool.into(),
            node: String::new(),
            holder: Holder::Services(ServiceHolders {
                services,
                sharing_key: key.map(String::from),
                external_ip: false,
            }),
            kind: BindingKind::Claimed {
                claim: claim.into(),
            },
            since: Default::default(),
        }
    }

    fn claim(pool: &str, identity: Identity, addr: &str) -> Claim {
        Claim {
            identity,
            pool: pool.into(),
            addresses: vec![addr.parse().unwrap()],
            since: Default::default(),
        }
    }

    #[test]
    fn service_holders_fit_their_pool_and_claim() {
        let pools = vec![
            pool("public", PoolUse::Service, "198.18.100.0/28"),
            pool("pods", PoolUse::Pod, "198.18.0.0/24"),
        ];
        let web = Identity::Service {
            namespace: "default".into(),
            name: "web".into(),
        };
        let c = claim("public", web.clone(), "198.18.100.1");
        let good = service_binding(
            "198.18.100.1",
            "public",
            &c.name(),
            vec![svc("default", "web")],
            None,
        );
        assert!(audit_with_claims(
            &pools,
            &[],
            std::slice::from_ref(&c),
            std::slice::from_ref(&good)
        )
        .is_empty());

        // Another Service holding web's claim.
        let other = service_binding(
            "198.18.100.1",
            "public",
            &c.name(),
            vec![svc("default", "api")],
            None,
        );
        let v = audit_with_claims(&pools, &[], std::slice::from_ref(&c), &[other]);
        assert!(matches!(&v[..], [Violation::WrongHolder { .. }]), "{v:?}");

        // A shared address: one claim per namespace and key, every holder of that namespace.
        let shared = Identity::SharedService {
            namespace: "default".into(),
            key: "k".into(),
        };
        let sc = claim("public", shared, "198.18.100.2");
        let both = service_binding(
            "198.18.100.2",
            "public",
            &sc.name(),
            vec![svc("default", "a"), svc("default", "b")],
            Some("k"),
        );
        assert!(audit_with_claims(&pools, &[], std::slice::from_ref(&sc), &[both]).is_empty());
        let cross = service_binding(
            "198.18.100.2",
            "public",
            &sc.name(),
            vec![svc("default", "a"), svc("other", "b")],
            Some("k"),
        );
        assert!(!audit_with_claims(&pools, &[], &[sc], &[cross]).is_empty());

        // A Service in a pod pool, and a container in a service pool.
        let c2 = claim("pods", web, "198.18.0.9");
        let in_pods = service_binding(
            "198.18.0.9",
            "pods",
            &c2.name(),
            vec![svc("default", "web")],
            None,
        );
        let v = audit_with_claims(&pools, &[], &[c2], &[in_pods]);
        assert!(
            v.iter().any(|v| matches!(v, Violation::WrongHolder { .. })),
            "{v:?}"
        );
        let container = Binding {
            holder: Holder::Attachment(Owner {
                network: "n".into(),
                container_id: "c".into(),
                ifname: "eth0".into(),
                pod: None,
            }),
            kind: BindingKind::Fixed,
            ..service_binding("198.18.100.3", "public", "x", vec![], None)
        };
        let v = audit_with_claims(&pools, &[], &[], &[container]);
        assert!(
            v.iter().any(|v| matches!(v, Violation::WrongHolder { .. })),
            "{v:?}"
        );
        // The holder is named in two-holder reports.
        let v = audit_with_claims(&pools, &[], std::slice::from_ref(&c), &[good.clone(), good]);
        assert!(
            v.iter()
                .any(|v| v.to_string().contains("service default/web")),
            "{v:?}"
        );
    }

    #[test]
    fn holders_round_trip_in_json() {
        let b = service_binding(
            "198.18.100.1",
            "public",
            "c",
            vec![svc("default", "web")],
            Some("k"),
        );
        let j = serde_json::to_value(&b).unwrap();
        assert_eq!(j["holder"]["services"]["services"][0]["uid"], "uid-web");
        assert_eq!(j["holder"]["services"]["sharingKey"], "k");
        assert!(j.get("node").is_none(), "no node for a Service: {j}");
        let back: Binding = serde_json::from_value(j).unwrap();
        assert_eq!(back, b);
    }
}
