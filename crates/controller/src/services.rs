//! The Service controller: LoadBalancer addresses and admitted `spec.externalIPs`, driven by
//! watches (Services, Namespaces, Pools), run only by the replica holding the Lease.
//!
//! Each batch takes the Services that changed (or all of them after a pool or namespace change,
//! at start and at each resync), plans each one with the pure planner
//! ([`berth_core::service::ServiceWorld`]) over the book of Service records ([`Book`]), and writes
//! the claims and bindings with compare-and-swap, many Services at once. Then it writes
//! `status.loadBalancer` and Events. The ledger is the truth: a new leader reads it first, so a
//! restart or failover keeps every address; a status wiped by hand is written back from it.
//!
//! Two Services planned in one batch never touch one record: the second waits for the next batch
//! (a share is joined only after the address exists). A write that fails (a conflict with a
//! write the book did not see, a ledger away) re-reads the ledger and retries the Service.

use crate::book::{wants, Book, Write};
use berth_core::service::{Holding, Outcome, ServiceAsk, ServiceWorld, Sharer};
use berth_core::{Binding, Claim, PoolSpec, ServiceRef};
use berth_k8s::services as svcs;
use berth_ledger::{Backend, Kind, Ledger, LedgerError, Records, Version};
use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Service};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a status write or an Event may take: a pass never hangs on one request.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// The component name on Events.
pub const COMPONENT: &str = "berth-controller";

/// Event reasons, so users (and tests) can filter `kubectl get events`.
pub mod reason {
    /// An address was given to the Service.
    pub const ASSIGNED: &str = "AddressAssigned";
    /// An address the Service held was released.
    pub const RELEASED: &str = "AddressReleased";
    /// The Service waits for an address (no pool, exhausted, taken, refused…).
    pub const PENDING: &str = "AddressPending";
    /// An annotation (or `spec.loadBalancerIP`) cannot be used.
    pub const BAD_ANNOTATION: &str = "InvalidAnnotation";
    /// An address of `spec.externalIPs` is not honoured.
    pub const EXTERNAL_IP_REFUSED: &str = "ExternalIPRefused";
    /// A held address lies outside its pool now (the pool shrank or went): kept.
    pub const OUTSIDE_POOL: &str = "AddressOutsidePool";
}

/// How the Service controller runs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// A full pass over every Service and a re-read of the ledger this often: the backstop for
    /// records changed behind the controller's back (deleted by hand).
    pub resync: Duration,
    /// Services whose writes run at once.
    pub parallel: usize,
    /// Where the pass counts, waiting Services and pool use are published.
    pub metrics: Arc<crate::metrics::ControllerMetrics>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            resync: Duration::from_secs(60),
            parallel: 16,
            metrics: Arc::default(),
        }
    }
}

type Key = (String, String);

enum Trigger {
    /// This Service changed (or went).
    One(Key),
    /// Something every Service depends on changed (a pool, a namespace's labels), or a watch
    /// re-listed.
    All,
}

fn key_of(svc: &Service) -> Key {
    (svc.namespace().unwrap_or_default(), svc.name_any())
}

/// Where pools come from: Pool objects (the Kubernetes ledger: watched, ordered by creation), or
/// the ledger itself (etcd, embedded: read at each batch, ordered by name).
enum Pools {
    Objects(Store<DynamicObject>),
    Ledger,
}

impl Pools {
    async fn read(&self, ledger: &dyn Ledger) -> Result<Vec<PoolSpec>, LedgerError> {
        match self {
            Pools::Objects(store) => {
                let mut objs = store.state();
                objs.sort_by(|a, b| {
                    a.metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0)
                        .cmp(&b.metadata.creation_timestamp.as_ref().map(|t| t.0))
                        .then_with(|| a.name_any().cmp(&b.name_any()))
                });
                Ok(objs
                    .iter()
                    .filter_map(|o| match berth_k8s::ledger::pool_of(o) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            tracing::warn!(pool = %o.name_any(), error = %e, "Pool object cannot be read; no address is handed out from it");
                            None
                        }
                    })
                    .collect())
            }
            Pools::Ledger => Ok(Records(ledger).list::<PoolSpec>(Kind::Pool).await?.values()),
        }
    }
}

/// What the controller told each Service last (reason, message), so an Event is posted when
/// something changes, not at every pass.
#[derive(Default)]
struct Told(HashMap<String, BTreeSet<(String, String)>>);

struct Job {
    key: Key,
    svc: Arc<Service>,
    writes: Vec<Write>,
    addresses: Vec<IpAddr>,
    events: Vec<(bool, String, String)>,
    waiting: bool,
    /// Retried when an address is released: it waits, or an externalIP of it is refused
    /// (perhaps because another Service holds it).
    retry: bool,
}

/// Read every Service record of the ledger into a book.
async fn load(ledger: &dyn Ledger, pools: &[PoolSpec]) -> Result<Book, LedgerError> {
    let listed = list_records(ledger).await?;
    Ok(book_of(listed, pools))
}

type Listed = (berth_ledger::Listing<Binding>, berth_ledger::Listing<Claim>);

/// Bindings and claims, listed at once.
async fn list_records(ledger: &dyn Ledger) -> Result<Listed, LedgerError> {
    let r = Records(ledger);
    futures::try_join!(
        r.list::<Binding>(Kind::Binding),
        r.list::<Claim>(Kind::Claim)
    )
}

fn book_of((bindings, claims): Listed, pools: &[PoolSpec]) -> Book {
    let refs: Vec<&PoolSpec> = pools.iter().collect();
    Book::load(bindings.records, claims.records, &bindings.bad, &refs)
}

/// What one write answered: the new version (none for a delete), or the error.
type WriteResult = Result<Option<Version>, LedgerError>;

async fn execute(ledger: &dyn Ledger, writes: &[Write]) -> Vec<WriteResult> {
    let r = Records(ledger);
    let mut out = vec![];
    for w in writes {
        let res = match w {
            Write::PutClaim { claim, version } => match version {
                None => r.create(Kind::Claim, &claim.name(), claim).await,
                Some(v) => r.update(Kind::Claim, &claim.name(), claim, v).await,
            }
            .map(Some),
            Write::DeleteClaim { name, version } => ledger
                .delete(Kind::Claim, name, version)
                .await
                .map(|_| None),
            Write::PutBinding { binding, version } => match version {
                None => r.create(Kind::Binding, &binding.name(), binding).await,
                Some(v) => r.update(Kind::Binding, &binding.name(), binding, v).await,
            }
            .map(Some),
            Write::DeleteBinding { address, version } => ledger
                .delete(Kind::Binding, &address.to_string(), version)
                .await
                .map(|_| None),
        };
        let failed = res.is_err();
        out.push(res);
        // The rest of this Service's writes depend on this one.
        if failed {
            break;
        }
    }
    out
}

fn reference(svc: &Service) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: svc.metadata.name.clone(),
        namespace: svc.metadata.namespace.clone(),
        uid: svc.metadata.uid.clone(),
        resource_version: svc.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// Write `status.loadBalancer.ingress` when it differs from what the Service holds.
async fn write_status(client: &Client, svc: &Service, addresses: &[IpAddr]) {
    if svcs::ingress(svc) == addresses {
        return;
    }
    let ingress: Vec<serde_json::Value> = addresses
        .iter()
        .map(|a| serde_json::json!({"ip": a.to_string()}))
        .collect();
    let patch = if ingress.is_empty() {
        serde_json::json!({"status": {"loadBalancer": {"ingress": null}}})
    } else {
        serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}})
    };
    let (ns, name) = key_of(svc);
    let api: Api<Service> = Api::namespaced(client.clone(), &ns);
    // The client also serves the watches, so it has no read deadline of its own.
    match tokio::time::timeout(
        API_TIMEOUT,
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(service = %format!("{ns}/{name}"), error = %e, "could not write status.loadBalancer")
        }
        Err(_) => {
            tracing::warn!(service = %format!("{ns}/{name}"), "writing status.loadBalancer timed out")
        }
    }
}

/// The events a plan calls for, with whether the Service waits.
fn plan_events(
    plan: &berth_core::service::ServicePlan,
    external: &[(IpAddr, Result<String, String>)],
) -> (Vec<(bool, String, String)>, bool) {
    let mut ev = vec![];
    let mut waiting = false;
    for (fam, o) in &plan.families {
        match o {
            Outcome::Take {
                address,
                pool,
                sharing,
            } => ev.push((
                false,
                reason::ASSIGNED.to_string(),
                match sharing {
                    Some((_, k)) => format!(
                        "{fam} address {address} from pool {pool:?}, shared under berth.dev/sharing-key {k:?}"
                    ),
                    None => format!("{fam} address {address} from pool {pool:?}"),
                },
            )),
            Outcome::Keep {
                address,
                outside: Some(why),
                ..
            } => ev.push((
                true,
                reason::OUTSIDE_POOL.to_string(),
                format!(
                    "{address} is kept, but {why}: it is never moved behind your back; to move the Service, set berth.dev/load-balancer-ips to an address inside the pool"
                ),
            )),
            Outcome::Keep { .. } => {}
            Outcome::Wait(w) => {
                waiting = true;
                ev.push((true, reason::PENDING.to_string(), w.to_string()));
            }
        }
    }
    for a in &plan.release {
        ev.push((false, reason::RELEASED.to_string(), format!("released {a}")));
    }
    for (ip, r) in external {
        if let Err(why) = r {
            ev.push((
                true,
                reason::EXTERNAL_IP_REFUSED.to_string(),
                format!("{why}; Berth will not hold or announce {ip} for this Service"),
            ));
        }
    }
    (ev, waiting)
}

/// Run the Service controller until the task is dropped (leadership lost, shutdown).
pub async fn run(client: Client, ledger: Arc<dyn Ledger>, cfg: ServiceConfig) {
    let (svc_store, svc_writer) = reflector::store::<Service>();
    let (ns_store, ns_writer) = reflector::store::<Namespace>();
    let svc_stream = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(svc_writer)
    .filter_map(|ev| async move {
        match ev {
            Ok(watcher::Event::Apply(s) | watcher::Event::Delete(s)) => {
                Some(Trigger::One(key_of(&s)))
            }
            Ok(watcher::Event::InitDone) => Some(Trigger::All),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "Service watch error; re-listing");
                None
            }
        }
    })
    .boxed();
    // Only a namespace's labels matter (serviceAllocation.namespaceSelector).
    let mut labels: HashMap<String, Option<BTreeMap<String, String>>> = HashMap::new();
    let ns_stream = watcher(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(ns_writer)
    .filter_map(move |ev| {
        let t = match ev {
            Ok(watcher::Event::Apply(n)) => {
                let l = n.metadata.labels.clone();
                (labels.insert(n.name_any(), l.clone()) != Some(l)).then_some(Trigger::All)
            }
            Ok(watcher::Event::Delete(n)) => {
                labels.remove(&n.name_any());
                Some(Trigger::All)
            }
            Ok(watcher::Event::InitDone) => Some(Trigger::All),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "Namespace watch error; re-listing");
                None
            }
        };
        async move { t }
    })
    .boxed();
    let mut streams = vec![svc_stream, ns_stream];
    let pools = if ledger.backend() == Backend::Kubernetes {
        let ar = ApiResource::erase::<berth_k8s::crd::Pool>(&());
        let pool_writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
        let pool_store = pool_writer.as_reader();
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        let mut generations: HashMap<String, Option<i64>> = HashMap::new();
        streams.push(
            watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect(pool_writer)
                .filter_map(move |ev| {
                    // Only a change of a pool's spec matters, not of its status (which the GC
                    // round rewrites as addresses are used).
                    let t = match ev {
                        Ok(watcher::Event::Apply(o)) => {
                            let g = o.metadata.generation;
                            (generations.insert(o.name_any(), g) != Some(g)).then_some(Trigger::All)
                        }
                        Ok(watcher::Event::Delete(o)) => {
                            generations.remove(&o.name_any());
                            Some(Trigger::All)
                        }
                        Ok(watcher::Event::InitDone) => Some(Trigger::All),
                        Ok(_) => None,
                        Err(e) => {
                            tracing::warn!(error = %e, "Pool watch error; re-listing");
                            None
                        }
                    };
                    async move { t }
                })
                .boxed(),
        );
        Pools::Objects(pool_store)
    } else {
        Pools::Ledger
    };
    let mut triggers = stream::select_all(streams);
    // Nothing is decided before every watch has listed once: a Service missing from a partial
    // list would look deleted.
    // The ledger is read while the watches list (a restart at 10,000 addresses waits on both).
    let mut listed: Option<Result<Listed, LedgerError>> = None;
    {
        let listing = list_records(ledger.as_ref());
        tokio::pin!(listing);
        let ready = async {
            let _ = svc_store.wait_until_ready().await;
            let _ = ns_store.wait_until_ready().await;
            if let Pools::Objects(s) = &pools {
                let _ = s.wait_until_ready().await;
            }
        };
        tokio::pin!(ready);
        let mut watches_ready = false;
        while !(watches_ready && listed.is_some()) {
            tokio::select! {
                _ = &mut ready, if !watches_ready => watches_ready = true,
                l = &mut listing, if listed.is_none() => listed = Some(l),
                t = triggers.next() => if t.is_none() { return },
            }
        }
    }
    let started = Instant::now();
    let mut controller = ServiceController {
        client,
        ledger,
        cfg,
        services: svc_store,
        namespaces: ns_store,
        pools,
        book: None,
        told: Told::default(),
        waiting: BTreeSet::new(),
        retry: BTreeSet::new(),
    };
    if let Some(Ok(l)) = listed {
        match controller.pools.read(controller.ledger.as_ref()).await {
            Ok(pools) => controller.book = Some(book_of(l, &pools)),
            Err(e) => tracing::warn!(error = %e, "reading pools failed; the ledger is read again"),
        }
    }
    let mut dirty: BTreeSet<Key> = BTreeSet::new();
    let mut all = true;
    let mut resync = tokio::time::interval(controller.cfg.resync);
    resync.tick().await;
    let mut retry: Option<tokio::time::Instant> = None;
    let mut first = true;
    loop {
        if all || !dirty.is_empty() {
            let keys = std::mem::take(&mut dirty);
            let everything = std::mem::take(&mut all);
            match controller.batch(keys, everything).await {
                Ok(again) => {
                    if first {
                        first = false;
                        tracing::info!(elapsed = ?started.elapsed(), services = controller.services.state().len(), "service controller serving");
                    }
                    if !again.deferred.is_empty() {
                        dirty.extend(again.deferred);
                    }
                    if !again.failed.is_empty() {
                        dirty.extend(again.failed);
                        retry = Some(tokio::time::Instant::now() + Duration::from_millis(500));
                    }
                    if again.released {
                        dirty.extend(controller.retry.iter().cloned());
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "service pass failed; retrying");
                    all = true;
                    retry = Some(tokio::time::Instant::now() + Duration::from_secs(1));
                }
            }
            // Deferred Services (a record another Service of this batch touched) go at once.
            if !dirty.is_empty() && retry.is_none() {
                continue;
            }
        }
        let wait = async {
            match retry {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            t = triggers.next() => match t {
                Some(Trigger::One(k)) => { dirty.insert(k); }
                Some(Trigger::All) => all = true,
                None => return,
            },
            _ = resync.tick() => { all = true; controller.book = None; }
            _ = wait => { retry = None; }
        }
        // Take whatever else has arrived, so a burst is one batch.
        while let Some(Some(t)) = futures::FutureExt::now_or_never(triggers.next()) {
            match t {
                Trigger::One(k) => {
                    dirty.insert(k);
                }
                Trigger::All => all = true,
            }
        }
    }
}

struct Outcomes {
    deferred: BTreeSet<Key>,
    failed: BTreeSet<Key>,
    released: bool,
}

struct ServiceController {
    client: Client,
    ledger: Arc<dyn Ledger>,
    cfg: ServiceConfig,
    services: Store<Service>,
    namespaces: Store<Namespace>,
    pools: Pools,
    /// `None` until read, and after a failed write or a resync: read again from the ledger.
    book: Option<Book>,
    told: Told,
    /// LoadBalancer Services waiting for an address (the metric).
    waiting: BTreeSet<Key>,
    /// Services retried when an address is released (waiting, or an externalIP refused).
    retry: BTreeSet<Key>,
}

impl ServiceController {
    fn service(&self, key: &Key) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(&key.1).within(&key.0))
    }

    fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(&ObjectRef::new(ns))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }

    fn sharer(&self, s: &ServiceRef) -> Sharer {
        match self.service(&(s.namespace.clone(), s.name.clone())) {
            Some(svc) if svc.metadata.uid.as_deref() == Some(s.uid.as_str()) => svcs::sharer(&svc),
            _ => Sharer {
                service: s.clone(),
                ports: Default::default(),
                local_traffic: None,
            },
        }
    }

    fn alive(&self, s: &ServiceRef) -> bool {
        self.service(&(s.namespace.clone(), s.name.clone()))
            .is_some_and(|svc| svc.metadata.uid.as_deref() == Some(s.uid.as_str()))
    }

    /// The events of `svc` not told yet (Warnings once while they hold; Normal events, which
    /// report something done, each time); forgets warnings that no longer hold.
    fn untold(
        &mut self,
        svc: &Service,
        events: &[(bool, String, String)],
    ) -> Vec<(ObjectReference, bool, String, String)> {
        let uid = svc.metadata.uid.clone().unwrap_or_default();
        let now: BTreeSet<(String, String)> = events
            .iter()
            .filter(|(w, _, _)| *w)
            .map(|(_, r, m)| (r.clone(), m.clone()))
            .collect();
        let before = self.told.0.insert(uid, now).unwrap_or_default();
        events
            .iter()
            .filter(|(w, r, m)| !(*w && before.contains(&(r.clone(), m.clone()))))
            .map(|(w, r, m)| (reference(svc), *w, r.clone(), m.clone()))
            .collect()
    }

    async fn batch(
        &mut self,
        keys: BTreeSet<Key>,
        everything: bool,
    ) -> Result<Outcomes, LedgerError> {
        let started = Instant::now();
        tracing::debug!(changed = keys.len(), everything, "service pass starts");
        let pools = self.pools.read(self.ledger.as_ref()).await?;
        if self.book.is_none() {
            self.book = Some(load(self.ledger.as_ref(), &pools).await?);
        }
        let Some(book) = self.book.as_ref() else {
            return Ok(Outcomes {
                deferred: BTreeSet::new(),
                failed: BTreeSet::new(),
                released: false,
            });
        };
        let mut keys = keys;
        if everything {
            keys.extend(self.services.state().iter().map(|s| key_of(s)));
        }
        // Services named in the ledger that are gone (or re-created): released.
        let mut gone: BTreeMap<Key, Vec<ServiceRef>> = BTreeMap::new();
        for s in book.gone(&|s| self.alive(s)) {
            let k = (s.namespace.clone(), s.name.clone());
            keys.insert(k.clone());
            gone.entry(k).or_default().push(s);
        }
        // Older Services first: when addresses are scarce, the first to ask gets one.
        let mut ordered: Vec<(Option<k8s_openapi::jiff::Timestamp>, Key)> = keys
            .into_iter()
            .map(|k| {
                let t = self
                    .service(&k)
                    .and_then(|s| s.metadata.creation_timestamp.clone())
                    .map(|t| t.0);
                (t, k)
            })
            .collect();
        ordered.sort();
        let refs: Vec<&PoolSpec> = pools.iter().collect();
        let mut holdings = book.holdings(&|s| self.sharer(s));
        let mut touched: BTreeSet<(Kind, String)> = BTreeSet::new();
        let mut deferred = BTreeSet::new();
        let mut jobs: Vec<Job> = vec![];
        let now = berth_allocator::now();
        let prefix = |ip: IpAddr| {
            pools
                .iter()
                .find_map(|p| p.subnet_of(ip))
                .map(|s| s.cidr.prefix_len())
                .unwrap_or(if ip.is_ipv4() { 32 } else { 128 })
        };
        for (_, key) in ordered {
            let svc = self.service(&key);
            // Stale holders under this name (deleted, or the old UID of a re-created Service).
            let mut writes = vec![];
            for s in gone.get(&key).into_iter().flatten() {
                writes.extend(book.writes(s, &[], &prefix, now));
            }
            let mut events = vec![];
            let mut addresses = vec![];
            let mut waiting = false;
            let mut refused = false;
            if let Some(svc) = &svc {
                let ns_labels = self.namespace_labels(&key.0);
                match svcs::ask(svc, &ns_labels) {
                    Err(e) => {
                        // Bad input loses nothing: what it holds stays held.
                        events.push((true, reason::BAD_ANNOTATION.to_string(), e.to_string()));
                        // Status shows what it holds (unchanged by the bad edit).
                        let held = book.held_by(&svcs::service_ref(svc)).0;
                        let current = svcs::ingress(svc);
                        addresses = current
                            .iter()
                            .copied()
                            .filter(|a| held.iter().any(|h| h.0 == *a))
                            .collect();
                        for (a, _, _) in &held {
                            if !addresses.contains(a) {
                                addresses.push(*a);
                            }
                        }
                        waiting = svcs::wants_load_balancer(svc) && addresses.is_empty();
                        if !svcs::served_class(svc) {
                            continue;
                        }
                    }
                    Ok((ask, from)) => {
                        if !svcs::served_class(svc) {
                            // Another implementation's Service: only what Berth held is released.
                            let ask = ServiceAsk {
                                load_balancer: false,
                                external_ips: vec![],
                                ..ask
                            };
                            let (held, _) = book.held_by(&ask.service);
                            if held.is_empty() && book.held_by(&ask.service).1.is_empty() {
                                continue;
                            }
                            writes.extend(book.writes(&ask.service, &[], &prefix, now));
                        } else {
                            let (lb, ext) = book.held_by(&ask.service);
                            let lb_pools: Vec<(IpAddr, String)> =
                                lb.iter().map(|(a, p, _)| (*a, p.clone())).collect();
                            let world = ServiceWorld::new(refs.clone(), &holdings);
                            let plan = world.plan(&ask, from, &lb_pools);
                            let external = world.external_ips(&ask);
                            let mut all_held = lb.clone();
                            all_held.extend(ext);
                            let want = wants(&plan, &external, &all_held, &key.0);
                            writes.extend(book.writes(&ask.service, &want, &prefix, now));
                            addresses = if ask.load_balancer {
                                plan.addresses()
                            } else {
                                vec![]
                            };
                            let (ev, w) = plan_events(&plan, &external);
                            events.extend(ev);
                            waiting = w;
                            refused = external.iter().any(|(_, r)| r.is_err());
                        }
                    }
                }
            }
            let records: BTreeSet<(Kind, String)> = writes.iter().map(Write::record).collect();
            if records.iter().any(|r| touched.contains(r)) {
                deferred.insert(key);
                continue;
            }
            touched.extend(records);
            // What later Services of this batch must see.
            for w in &writes {
                match w {
                    Write::PutBinding { binding, .. } => {
                        if let Some(s) = binding.holder.services() {
                            holdings.insert(
                                binding.address,
                                Holding::Services {
                                    pool: binding.pool.clone(),
                                    sharing: s.sharing_key.clone().map(|k| (key.0.clone(), k)),
                                    holders: s.services.iter().map(|r| self.sharer(r)).collect(),
                                },
                            );
                        }
                    }
                    Write::DeleteBinding { address, .. } => {
                        holdings.remove(address);
                    }
                    _ => {}
                }
            }
            let Some(svc) = svc else {
                if !writes.is_empty() {
                    // The Service is gone: only its records are released.
                    jobs.push(Job {
                        key,
                        svc: Arc::new(Service::default()),
                        writes,
                        addresses: vec![],
                        events: vec![],
                        waiting: false,
                        retry: false,
                    });
                }
                continue;
            };
            jobs.push(Job {
                key,
                svc,
                writes,
                addresses,
                events,
                waiting,
                retry: waiting || refused,
            });
        }
        let ledger = self.ledger.clone();
        let results: Vec<(Job, Vec<WriteResult>)> = stream::iter(jobs)
            .map(|job| {
                let ledger = ledger.clone();
                async move {
                    let r = execute(ledger.as_ref(), &job.writes).await;
                    (job, r)
                }
            })
            .buffer_unordered(self.cfg.parallel.max(1))
            .collect()
            .await;
        let metrics = self.cfg.metrics.clone();
        for (_, res) in &results {
            for r in res {
                metrics.write(match r {
                    Ok(_) => "ok",
                    Err(LedgerError::Conflict { .. } | LedgerError::Exists { .. }) => "conflict",
                    Err(_) => "error",
                });
            }
        }
        let mut failed = BTreeSet::new();
        let mut released = false;
        let mut done = vec![];
        for (job, res) in results {
            let ok = res.len() == job.writes.len() && res.iter().all(|r| r.is_ok());
            if let Some(book) = self.book.as_mut() {
                for (w, r) in job.writes.iter().zip(&res) {
                    if let Ok(v) = r {
                        book.apply(w, v.clone());
                        if matches!(w, Write::DeleteBinding { .. }) {
                            released = true;
                        }
                    }
                }
            }
            if !ok {
                if let Some(Err(e)) = res.iter().find(|r| r.is_err()) {
                    tracing::info!(service = %format!("{}/{}", job.key.0, job.key.1), error = %e, "ledger write failed; re-reading the ledger and retrying");
                }
                failed.insert(job.key.clone());
                continue;
            }
            if job.retry {
                self.retry.insert(job.key.clone());
            } else {
                self.retry.remove(&job.key);
            }
            if job.waiting {
                self.waiting.insert(job.key.clone());
            } else {
                self.waiting.remove(&job.key);
            }
            if job.svc.metadata.uid.is_some() {
                done.push(job);
            }
        }
        if !failed.is_empty() {
            self.book = None;
        }
        // Status and Events, many Services at once.
        let mut posts = vec![];
        for job in &done {
            posts.extend(self.untold(&job.svc, &job.events));
        }
        let client = self.client.clone();
        let statuses: Vec<(Arc<Service>, Vec<IpAddr>)> = done
            .iter()
            .filter(|j| svcs::served_class(&j.svc))
            .map(|j| (j.svc.clone(), j.addresses.clone()))
            .collect();
        stream::iter(statuses)
            .map(|(svc, addresses)| {
                let client = client.clone();
                async move { write_status(&client, &svc, &addresses).await }
            })
            .buffer_unordered(self.cfg.parallel.max(1))
            .collect::<Vec<()>>()
            .await;
        stream::iter(posts)
            .map(|(r, warning, reason, message)| {
                let client = client.clone();
                async move {
                    match tokio::time::timeout(
                        API_TIMEOUT,
                        berth_k8s::events::post(&client, r, warning, &reason, &message, COMPONENT),
                    )
                    .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, %reason, "could not post an Event on a Service")
                        }
                        Err(_) => tracing::warn!(%reason, "posting an Event on a Service timed out"),
                    }
                }
            })
            .buffer_unordered(self.cfg.parallel.max(1))
            .collect::<Vec<()>>()
            .await;
        if everything {
            // Forget what was told to Services that are gone.
            let live: std::collections::HashSet<String> = self
                .services
                .state()
                .iter()
                .filter_map(|s| s.metadata.uid.clone())
                .collect();
            self.told.0.retain(|uid, _| live.contains(uid));
        }
        let services = &self.services;
        let exists = |k: &Key| services.get(&ObjectRef::new(&k.1).within(&k.0)).is_some();
        self.waiting.retain(exists);
        self.retry.retain(exists);
        metrics.services_waiting.set(self.waiting.len() as i64);
        if let Some(book) = &self.book {
            let mut per_pool: BTreeMap<&str, i64> = BTreeMap::new();
            for b in book.bindings.values() {
                if b.value.holder.services().is_some() {
                    *per_pool.entry(b.value.pool.as_str()).or_default() += 1;
                }
            }
            metrics.service_addresses.clear();
            for p in &pools {
                let n = per_pool.get(p.name.as_str()).copied().unwrap_or(0);
                if p.use_ == berth_core::PoolUse::Service || n > 0 {
                    metrics
                        .service_addresses
                        .get_or_create(&crate::metrics::PoolLabel {
                            pool: p.name.clone(),
                        })
                        .set(n);
                }
            }
        }
        tracing::debug!(
            planned = done.len(),
            failed = failed.len(),
            deferred = deferred.len(),
            waiting = self.waiting.len(),
            elapsed = ?started.elapsed(),
            "service pass"
        );
        metrics.service_passes.inc();
        metrics
            .service_pass_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(Outcomes {
            deferred,
            failed,
            released,
        })
    }
}
