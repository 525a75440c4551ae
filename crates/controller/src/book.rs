//! The Service controller's book: the ledger records that hold Service addresses, and the
//! writes that turn one Service's plan into records. Pure (no API server, no ledger calls), so
//! the rules for claims, bindings and sharing are unit-tested here and the controller loop only
//! executes what this decides.
//!
//! Every address a Service holds is two records, both owned by the Service: a claim (the
//! durable "this address is kept for this identity": the Service, or its namespace's sharing
//! key) and a binding (the address's one live use, keyed by address, created with
//! compare-and-swap, so two Services never hold one address except by a share). Release checks
//! the Service's UID: a Service re-created under the same name never inherits, nor frees, what the
//! old one held.

use berth_core::service::{Holding, ServicePlan, Sharer};
use berth_core::{
    Binding, BindingKind, Claim, Holder, Identity, PoolSpec, PoolUse, ServiceHolders, ServiceRef,
    Timestamp,
};
use berth_ledger::{BadRecord, Kind, Stored, Version};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The records behind Service addresses, as last read or written by this controller.
#[derive(Debug, Clone, Default)]
pub struct Book {
    /// Bindings held by Services, or lying in a service pool (whoever holds them), by address.
    pub bindings: BTreeMap<IpAddr, Stored<Binding>>,
    /// Claims for Service identities (a Service, a sharing key), by ledger name.
    pub claims: BTreeMap<String, Stored<Claim>>,
    /// Addresses of bindings that cannot be read: taken, never handed out.
    pub unreadable: BTreeSet<IpAddr>,
    /// The addresses each Service holds (an index of `bindings`, kept by [`Book::load`] and
    /// [`Book::apply`]), so a pass over 10,000 Services does not scan every binding for each.
    held: BTreeMap<ServiceRef, BTreeSet<IpAddr>>,
}

/// One write to the ledger. `version: None` creates; otherwise a compare-and-swap on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Create or replace a claim.
    PutClaim {
        /// The claim.
        claim: Claim,
        /// The version read, `None` to create.
        version: Option<Version>,
    },
    /// Delete a claim.
    DeleteClaim {
        /// Its ledger name.
        name: String,
        /// The version read.
        version: Version,
    },
    /// Create or replace a binding.
    PutBinding {
        /// The binding.
        binding: Binding,
        /// The version read, `None` to create.
        version: Option<Version>,
    },
    /// Delete a binding.
    DeleteBinding {
        /// Its address.
        address: IpAddr,
        /// The version read.
        version: Version,
    },
}

impl Write {
    /// The ledger kind and name it writes: two Services planned in one batch never touch the
    /// same record (the loop defers the second to the next batch).
    pub fn record(&self) -> (Kind, String) {
        match self {
            Write::PutClaim { claim, .. } => (Kind::Claim, claim.name()),
            Write::DeleteClaim { name, .. } => (Kind::Claim, name.clone()),
            Write::PutBinding { binding, .. } => (Kind::Binding, binding.name()),
            Write::DeleteBinding { address, .. } => (Kind::Binding, address.to_string()),
        }
    }
}

/// What a Service should hold after a reconcile: one entry per address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// The address.
    pub address: IpAddr,
    /// Its pool.
    pub pool: String,
    /// The sharing key (the Service's namespace, the key), when shared.
    pub sharing: Option<(String, String)>,
    /// Held for `spec.externalIPs`, not as a LoadBalancer address.
    pub external_ip: bool,
}

/// The wants of a plan (its kept and taken LoadBalancer addresses) and of the admitted external IPs.
pub fn wants(
    plan: &ServicePlan,
    external: &[(IpAddr, Result<String, String>)],
    held: &[(IpAddr, String, Option<String>)],
    namespace: &str,
) -> Vec<Want> {
    use berth_core::service::Outcome;
    let mut out = vec![];
    for (_, o) in &plan.families {
        match o {
            Outcome::Keep { address, pool, .. } => {
                let sharing = held
                    .iter()
                    .find(|(a, _, _)| a == address)
                    .and_then(|(_, _, k)| k.clone())
                    .map(|k| (namespace.to_string(), k));
                out.push(Want {
                    address: *address,
                    pool: pool.clone(),
                    sharing,
                    external_ip: false,
                });
            }
            Outcome::Take {
                address,
                pool,
                sharing,
            } => out.push(Want {
                address: *address,
                pool: pool.clone(),
                sharing: sharing.clone(),
                external_ip: false,
            }),
            Outcome::Wait(_) => {}
        }
    }
    for (ip, r) in external {
        if let Ok(pool) = r {
            if !out.iter().any(|w| w.address == *ip) {
                out.push(Want {
                    address: *ip,
                    pool: pool.clone(),
                    sharing: None,
                    external_ip: true,
                });
            }
        }
    }
    out
}

fn services_of(b: &Binding) -> Option<&ServiceHolders> {
    b.holder.services()
}

/// The identity a Service's claim is for.
pub fn identity_of(svc: &ServiceRef, sharing: &Option<(String, String)>) -> Identity {
    match sharing {
        Some((namespace, key)) => Identity::SharedService {
            namespace: namespace.clone(),
            key: key.clone(),
        },
        None => Identity::Service {
            namespace: svc.namespace.clone(),
            name: svc.name.clone(),
        },
    }
}

impl Book {
    /// The book from a ledger listing: the bindings held by Services or lying in a service pool,
    /// the Service identities' claims, and the addresses of unreadable bindings.
    pub fn load(
        bindings: Vec<Stored<Binding>>,
        claims: Vec<Stored<Claim>>,
        bad: &[BadRecord],
        pools: &[&PoolSpec],
    ) -> Book {
        let service_pools: Vec<&PoolSpec> = pools
            .iter()
            .copied()
            .filter(|p| p.use_ == PoolUse::Service)
            .collect();
        let in_service_pool = |ip: IpAddr| service_pools.iter().any(|p| p.subnet_of(ip).is_some());
        let mut book = Book {
            held: BTreeMap::new(),
            bindings: bindings
                .into_iter()
                .filter(|b| services_of(&b.value).is_some() || in_service_pool(b.value.address))
                .map(|b| (b.value.address, b))
                .collect(),
            claims: claims
                .into_iter()
                .filter(|c| {
                    matches!(
                        c.value.identity,
                        Identity::Service { .. } | Identity::SharedService { .. }
                    )
                })
                .map(|c| (c.value.name(), c))
                .collect(),
            unreadable: bad
                .iter()
                .filter(|b| b.kind == Kind::Binding)
                .filter_map(|b| b.name.parse().ok())
                .collect(),
        };
        let ips: Vec<IpAddr> = book.bindings.keys().copied().collect();
        for ip in ips {
            book.index(ip, true);
        }
        book
    }

    /// Add (or remove) the binding at `ip` to (from) the per-Service index.
    fn index(&mut self, ip: IpAddr, add: bool) {
        let Some(s) = self.bindings.get(&ip).and_then(|b| services_of(&b.value)) else {
            return;
        };
        for r in &s.services {
            if add {
                self.held.entry(r.clone()).or_default().insert(ip);
            } else if let Some(set) = self.held.get_mut(r) {
                set.remove(&ip);
                if set.is_empty() {
                    self.held.remove(r);
                }
            }
        }
    }

    fn held_ips(&self, svc: &ServiceRef) -> impl Iterator<Item = (&IpAddr, &Stored<Binding>)> {
        self.held
            .get(svc)
            .into_iter()
            .flatten()
            .filter_map(|ip| self.bindings.get_key_value(ip))
    }

    /// Every held address the planner must respect: Services' (with what the sharing rule needs
    /// of each holder, from `sharer`), others' in service pools, and unreadable ones.
    pub fn holdings(&self, sharer: &dyn Fn(&ServiceRef) -> Sharer) -> BTreeMap<IpAddr, Holding> {
        let mut out: BTreeMap<IpAddr, Holding> = self
            .bindings
            .iter()
            .map(|(ip, b)| {
                let h = match services_of(&b.value) {
                    Some(s) => Holding::Services {
                        pool: b.value.pool.clone(),
                        sharing: s
                            .sharing_key
                            .clone()
                            .and_then(|k| s.services.first().map(|f| (f.namespace.clone(), k))),
                        holders: s.services.iter().map(sharer).collect(),
                    },
                    None => Holding::Other {
                        what: b.value.holder.describe(),
                    },
                };
                (*ip, h)
            })
            .collect();
        for ip in &self.unreadable {
            out.entry(*ip).or_insert_with(|| Holding::Other {
                what: "a binding Berth cannot read (see `berth audit`)".into(),
            });
        }
        out
    }

    /// What `svc` (by UID) holds: `(address, pool, sharing key)` of its LoadBalancer addresses,
    /// and of its external IPs.
    #[allow(clippy::type_complexity)]
    pub fn held_by(
        &self,
        svc: &ServiceRef,
    ) -> (
        Vec<(IpAddr, String, Option<String>)>,
        Vec<(IpAddr, String, Option<String>)>,
    ) {
        let mut lb = vec![];
        let mut ext = vec![];
        for (ip, b) in self.held_ips(svc) {
            if let Some(s) = services_of(&b.value) {
                if s.services.contains(svc) {
                    let e = (*ip, b.value.pool.clone(), s.sharing_key.clone());
                    if s.external_ip {
                        ext.push(e);
                    } else {
                        lb.push(e);
                    }
                }
            }
        }
        (lb, ext)
    }

    /// Services named in bindings for which `alive` says no: deleted, or re-created (another
    /// UID). Their addresses are released.
    pub fn gone(&self, alive: &dyn Fn(&ServiceRef) -> bool) -> BTreeSet<ServiceRef> {
        self.held.keys().filter(|s| !alive(s)).cloned().collect()
    }

    /// The writes that make `svc` hold exactly `want`: joins and takes first (claim, then
    /// binding), then releases (binding, then claim). Missing or incomplete claims of kept
    /// addresses are repaired. `prefix_len` gives the prefix length of an address's subnet.
    pub fn writes(
        &self,
        svc: &ServiceRef,
        want: &[Want],
        prefix_len: &dyn Fn(IpAddr) -> u8,
        now: Timestamp,
    ) -> Vec<Write> {
        // The final state of every record touched, starting from the book.
        let mut claims: BTreeMap<String, (Option<Version>, Option<Claim>)> = BTreeMap::new();
        let mut bindings: BTreeMap<IpAddr, (Option<Version>, Option<Binding>)> = BTreeMap::new();
        let claim_entry = |claims: &mut BTreeMap<String, (Option<Version>, Option<Claim>)>,
                           name: &str| {
            if !claims.contains_key(name) {
                let cur = self.claims.get(name);
                claims.insert(
                    name.to_string(),
                    (cur.map(|c| c.version.clone()), cur.map(|c| c.value.clone())),
                );
            }
        };
        let wanted: BTreeSet<IpAddr> = want.iter().map(|w| w.address).collect();
        for w in want {
            let identity = identity_of(svc, &w.sharing);
            let fresh_claim = Claim {
                identity: identity.clone(),
                pool: w.pool.clone(),
                addresses: vec![],
                since: now,
            };
            let claim_name = match self.bindings.get(&w.address) {
                Some(b) => match &b.value.kind {
                    BindingKind::Claimed { claim } => claim.clone(),
                    _ => fresh_claim.name(),
                },
                None => fresh_claim.name(),
            };
            claim_entry(&mut claims, &claim_name);
            let entry = claims.get_mut(&claim_name).map(|e| &mut e.1);
            if let Some(slot) = entry {
                let c = slot.get_or_insert_with(|| fresh_claim.clone());
                if !c.addresses.contains(&w.address) {
                    c.addresses.push(w.address);
                }
            }
            let cur = self.bindings.get(&w.address);
            let next = match cur {
                Some(b) => {
                    let mut v = b.value.clone();
                    match &mut v.holder {
                        Holder::Services(s) if !s.services.contains(svc) => {
                            s.services.push(svc.clone());
                            s.services.sort();
                        }
                        Holder::Services(_) => continue,
                        // The planner never gives an address another kind of holder has.
                        Holder::Attachment(_) => continue,
                    }
                    v
                }
                None => Binding {
                    address: w.address,
                    prefix_len: prefix_len(w.address),
                    pool: w.pool.clone(),
                    node: String::new(),
                    holder: Holder::Services(ServiceHolders {
                        services: vec![svc.clone()],
                        sharing_key: w.sharing.as_ref().map(|(_, k)| k.clone()),
                        external_ip: w.external_ip,
                    }),
                    kind: BindingKind::Claimed {
                        claim: claim_name.clone(),
                    },
                    since: now,
                },
            };
            bindings.insert(
                w.address,
                (cur.map(|b| b.version.clone()), Some(next.clone())),
            );
        }
        // Releases: every address the Service holds and no longer wants.
        for (ip, b) in self.held_ips(svc) {
            let Some(s) = services_of(&b.value) else {
                continue;
            };
            if !s.services.contains(svc) || wanted.contains(ip) {
                continue;
            }
            let mut rest = s.clone();
            rest.services.retain(|x| x != svc);
            if rest.services.is_empty() {
                bindings.insert(*ip, (Some(b.version.clone()), None));
                if let BindingKind::Claimed { claim } = &b.value.kind {
                    claim_entry(&mut claims, claim);
                    if let Some((_, Some(c))) = claims.get_mut(claim) {
                        c.addresses.retain(|a| a != ip);
                    }
                }
            } else {
                let mut v = b.value.clone();
                v.holder = Holder::Services(rest);
                bindings.insert(*ip, (Some(b.version.clone()), Some(v)));
            }
        }
        // Claims grow before bindings name them; they shrink or go after the bindings went, so
        // no binding ever names a claim that does not keep its address.
        let mut out = vec![];
        let mut late = vec![];
        for (name, (version, claim)) in claims {
            let before = self.claims.get(&name).map(|c| &c.value);
            match (claim, version) {
                (Some(c), v) if !c.addresses.is_empty() => {
                    if before == Some(&c) {
                        continue;
                    }
                    let grows =
                        before.is_none_or(|b| b.addresses.iter().all(|a| c.addresses.contains(a)));
                    let w = Write::PutClaim {
                        claim: c,
                        version: v,
                    };
                    if grows {
                        out.push(w);
                    } else {
                        late.push(w);
                    }
                }
                (_, Some(v)) => late.push(Write::DeleteClaim { name, version: v }),
                (_, None) => {}
            }
        }
        for (address, (version, binding)) in bindings {
            match (binding, version) {
                (Some(b), v) => out.push(Write::PutBinding {
                    binding: b,
                    version: v,
                }),
                (None, Some(v)) => out.push(Write::DeleteBinding {
                    address,
                    version: v,
                }),
                (None, None) => {}
            }
        }
        out.extend(late);
        out
    }

    /// Record a write that succeeded, with the version the ledger answered.
    pub fn apply(&mut self, w: &Write, version: Option<Version>) {
        match w {
            Write::PutClaim { claim, .. } => {
                if let Some(v) = version {
                    self.claims.insert(
                        claim.name(),
                        Stored {
                            value: claim.clone(),
                            version: v,
                        },
                    );
                }
            }
            Write::DeleteClaim { name, .. } => {
                self.claims.remove(name);
            }
            Write::PutBinding { binding, .. } => {
                if let Some(v) = version {
                    self.index(binding.address, false);
                    self.bindings.insert(
                        binding.address,
                        Stored {
                            value: binding.clone(),
                            version: v,
                        },
                    );
                    self.index(binding.address, true);
                }
            }
            Write::DeleteBinding { address, .. } => {
                self.index(*address, false);
                self.bindings.remove(address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, uid: &str) -> ServiceRef {
        ServiceRef {
            namespace: "default".into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn want(a: &str, sharing: Option<&str>) -> Want {
        Want {
            address: ip(a),
            pool: "public".into(),
            sharing: sharing.map(|k| ("default".to_string(), k.to_string())),
            external_ip: false,
        }
    }

    /// Apply writes as the ledger would, with made-up versions.
    fn run(book: &mut Book, writes: &[Write]) {
        for (i, w) in writes.iter().enumerate() {
            book.apply(w, Some(Version(format!("v{i}"))));
        }
    }

    fn check_sound(book: &Book) {
        let pool = PoolSpec {
            name: "public".into(),
            use_: PoolUse::Service,
            subnets: vec![berth_core::SubnetSpec::new(
                "198.18.100.0/28".parse().unwrap(),
            )],
            policy: Default::default(),
            service: Default::default(),
            announcement: Default::default(),
        };
        let claims: Vec<Claim> = book.claims.values().map(|c| c.value.clone()).collect();
        let bindings: Vec<Binding> = book.bindings.values().map(|b| b.value.clone()).collect();
        let v = berth_core::audit_with_claims(&[pool], &[], &claims, &bindings);
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn take_keep_share_and_release() {
        let mut book = Book::default();
        let a = svc("a", "ua");
        let b = svc("b", "ub");
        let now = Timestamp::default();
        let w = book.writes(&a, &[want("198.18.100.1", None)], &|_| 28, now);
        // The claim first, then the binding naming it.
        assert!(
            matches!(&w[0], Write::PutClaim { version: None, .. }),
            "{w:?}"
        );
        assert!(
            matches!(&w[1], Write::PutBinding { version: None, .. }),
            "{w:?}"
        );
        assert_eq!(w.len(), 2);
        run(&mut book, &w);
        check_sound(&book);
        // Kept: nothing to write.
        assert!(book
            .writes(&a, &[want("198.18.100.1", None)], &|_| 28, now)
            .is_empty());
        // A shared address: the first takes it under the key, the second joins the binding.
        let w = book.writes(
            &a,
            &[want("198.18.100.2", Some("k")), want("198.18.100.1", None)],
            &|_| 28,
            now,
        );
        run(&mut book, &w);
        let w = book.writes(&b, &[want("198.18.100.2", Some("k"))], &|_| 28, now);
        assert_eq!(w.len(), 1, "joining updates the binding only: {w:?}");
        run(&mut book, &w);
        let shared = &book.bindings[&ip("198.18.100.2")].value;
        assert_eq!(shared.holder.services().unwrap().services.len(), 2);
        check_sound(&book);
        // a gives up the shared address: b keeps it; then a releases everything.
        let w = book.writes(&a, &[want("198.18.100.1", None)], &|_| 28, now);
        run(&mut book, &w);
        assert_eq!(book.held_by(&b).0.len(), 1);
        let w = book.writes(&a, &[], &|_| 28, now);
        // The binding goes before its claim.
        assert!(matches!(&w[0], Write::DeleteBinding { .. }), "{w:?}");
        assert!(matches!(&w[1], Write::DeleteClaim { .. }), "{w:?}");
        run(&mut book, &w);
        assert!(book.held_by(&a).0.is_empty());
        check_sound(&book);
        // A re-created b (new UID) holds nothing of the old one's.
        assert!(book.held_by(&svc("b", "ub2")).0.is_empty());
        assert_eq!(
            book.gone(&|s| s.uid == "ub2")
                .into_iter()
                .collect::<Vec<_>>(),
            vec![b.clone()]
        );
        let w = book.writes(&b, &[], &|_| 28, now);
        run(&mut book, &w);
        assert!(
            book.bindings.is_empty() && book.claims.is_empty(),
            "{book:?}"
        );
    }

    #[test]
    fn a_missing_claim_is_repaired_and_a_claim_shrinks_after_its_binding() {
        let mut book = Book::default();
        let a = svc("a", "ua");
        let now = Timestamp::default();
        let two = [want("198.18.100.1", None), want("198.18.100.2", None)];
        let w = book.writes(&a, &two, &|_| 28, now);
        run(&mut book, &w);
        assert_eq!(book.claims.len(), 1, "one claim per pool and identity");
        // Releasing one of two: binding delete, then the claim shrinks.
        let w = book.writes(&a, &two[..1], &|_| 28, now);
        assert!(matches!(&w[0], Write::DeleteBinding { .. }), "{w:?}");
        assert!(
            matches!(
                &w[1],
                Write::PutClaim {
                    version: Some(_),
                    ..
                }
            ),
            "{w:?}"
        );
        run(&mut book, &w);
        check_sound(&book);
        // Someone deleted the claim by hand: the next pass writes it again.
        book.claims.clear();
        let w = book.writes(&a, &two[..1], &|_| 28, now);
        assert!(
            matches!(&w[..], [Write::PutClaim { version: None, .. }]),
            "{w:?}"
        );
        run(&mut book, &w);
        check_sound(&book);
    }
}
