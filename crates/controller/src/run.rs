//! The controller loop: hold the Lease, read the cluster, decide, release with compare-and-swap.

use crate::decide::{decide, Action, ClusterView};
use crate::lease::{Elector, LeaseConfig};
use berth_allocator::now;
use berth_core::{Binding, Block, Claim};
use berth_ledger::{Backend, BadRecord, Kind, Ledger, LedgerError, Records, Stored, Version};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use kube::Client;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// The taint that fences a node (Kubernetes' non-graceful node shutdown).
pub const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// A binding whose pod is gone is released only when older than this.
    pub grace: Duration,
    /// Time between rounds.
    pub interval: Duration,
    /// The Lease.
    pub lease: LeaseConfig,
    /// Write pool usage into the Pool objects' status (when the ledger is Berth's CRDs).
    pub pool_status: bool,
    /// Run the Service controller (LoadBalancer addresses, externalIPs) while leading.
    pub services: Option<crate::services::ServiceConfig>,
    /// Keep the `Accepted` condition of BGPPeers and BGPConfigurations while leading.
    pub bgp: bool,
    /// Where leadership is published (the Service controller publishes into its own config's).
    pub metrics: Arc<crate::metrics::ControllerMetrics>,
}

/// Why a round was skipped.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    /// The API server did not answer a read; nothing was released (fail closed).
    #[error("reading {what} from the API server failed, nothing released this round: {source}")]
    Read {
        /// What was being read.
        what: &'static str,
        /// The error.
        source: kube::Error,
    },
    /// The ledger did not answer.
    #[error("reading the ledger failed, nothing released this round: {0}")]
    Ledger(#[from] LedgerError),
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Bindings released.
    pub bindings: usize,
    /// Blocks reclaimed.
    pub blocks: usize,
    /// Claims released.
    pub claims: usize,
    /// Releases skipped because the record changed or the pod was found after all.
    pub kept: usize,
}

async fn list<K>(client: &Client, what: &'static str) -> Result<Vec<K>, RoundError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|source| RoundError::Read { what, source })
}

/// Read the cluster: pods, nodes, StatefulSets, Deployments. Any failure fails the whole read.
pub async fn read_cluster(client: &Client) -> Result<ClusterView, RoundError> {
    let read_at = now();
    let pods: Vec<Pod> = list(client, "pods").await?;
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|source| RoundError::Read {
            what: "nodes",
            source,
        })?
        .items;
    let sts: Vec<StatefulSet> = list(client, "statefulsets").await?;
    let deps: Vec<Deployment> = list(client, "deployments").await?;
    let key = |m: &kube::api::ObjectMeta| {
        (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    };
    Ok(ClusterView {
        read_at,
        pods: pods
            .iter()
            .map(|p| (key(&p.metadata), p.metadata.uid.clone().unwrap_or_default()))
            .collect(),
        nodes: nodes
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect(),
        fenced: nodes
            .iter()
            .filter(|n| {
                n.spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .map(|t| t.iter().any(|t| t.key == OUT_OF_SERVICE))
                    .unwrap_or(false)
            })
            .filter_map(|n| n.metadata.name.clone())
            .collect(),
        statefulsets: sts
            .iter()
            .map(|s| {
                let replicas = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                (key(&s.metadata), u32::try_from(replicas).unwrap_or(0))
            })
            .collect(),
        deployments: deps.iter().map(|d| key(&d.metadata)).collect(),
        // Not listed by the GC round: no Service's address is released here.
        services: None,
    })
}

/// Whether a fresh GET still finds the pod (same UID when known). Errors count as "found".
async fn pod_still_there(client: &Client, ns: &str, name: &str, uid: &Option<String>) -> bool {
    match Api::<Pod>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
    {
        Ok(Some(p)) => uid.is_none() || p.metadata.uid == *uid,
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(error = %e, pod = %format!("{ns}/{name}"), "pod lookup failed; keeping its binding");
            true
        }
    }
}

async fn delete(
    ledger: &dyn Ledger,
    kind: Kind,
    name: &str,
    version: Option<&Version>,
) -> Result<bool, LedgerError> {
    let Some(v) = version else { return Ok(false) };
    match ledger.delete(kind, name, v).await {
        Ok(()) => Ok(true),
        Err(LedgerError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

fn values<T: Clone>(v: &[Stored<T>]) -> Vec<T> {
    v.iter().map(|s| s.value.clone()).collect()
}

/// Whether a fresh GET shows the node gone or fenced now. A node created (or un-tainted) after
/// the node list was read is alive: its new blocks and bindings are newer than the list, and
/// blocks carry no timestamp to tell. Errors count as "alive" (fail closed).
async fn node_still_gone(client: &Client, node: &str) -> bool {
    match Api::<Node>::all(client.clone()).get_opt(node).await {
        Ok(None) => true,
        Ok(Some(n)) => n
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == OUT_OF_SERVICE)),
        Err(e) => {
            tracing::warn!(error = %e, %node, "node lookup failed; keeping its records");
            false
        }
    }
}

/// What the controller remembers across rounds: when it first saw each record whose owner is
/// gone (a binding of a vanished pod, a claim of a vanished or scaled-down StatefulSet), at
/// which version. The grace period counts from there, not only from the record's creation: an
/// old binding of a pod deleted with `--force` is not released while its container may still be
/// running on the node. A new leader starts with an empty memory, so it waits a full grace.
#[derive(Debug, Default)]
pub struct Memory {
    first_seen: std::sync::Mutex<HashMap<(Kind, String), (Version, std::time::Instant)>>,
    /// Bad records already reported with an Event, so each gets one per leader term, not one
    /// per round.
    reported: std::sync::Mutex<std::collections::HashSet<BadRecord>>,
}

impl Memory {
    /// The bad records not reported yet (and forget those no longer bad, so one that comes back
    /// is reported again).
    fn unreported(&self, bad: &[BadRecord]) -> Vec<BadRecord> {
        let mut r = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        r.retain(|b| bad.contains(b));
        bad.iter()
            .filter(|b| r.insert((*b).clone()))
            .cloned()
            .collect()
    }

    /// Whether `name` (at `version`) has been an orphan for at least `grace`; starts its clock
    /// when first seen. `seen` collects this round's orphans, to forget the others afterwards.
    fn orphan_long_enough(
        &self,
        kind: Kind,
        name: &str,
        version: Option<&Version>,
        grace: Duration,
        seen: &mut Vec<(Kind, String)>,
    ) -> bool {
        let Some(version) = version else { return false };
        let key = (kind, name.to_string());
        seen.push(key.clone());
        let mut m = self.first_seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let entry = m.entry(key).or_insert_with(|| (version.clone(), now));
        if entry.0 != *version {
            *entry = (version.clone(), now);
        }
        now.duration_since(entry.1) >= grace
    }

    fn forget_all_but(&self, kinds: &[Kind], seen: &[(Kind, String)]) {
        let keep: std::collections::HashSet<&(Kind, String)> = seen.iter().collect();
        let mut m = self.first_seen.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|k, _| !kinds.contains(&k.0) || keep.contains(k));
    }
}

/// One round: read, decide, release. Public so tests can drive rounds directly.
///
/// Without memory the grace period counts from each record's creation only; the controller's
/// loop uses [`round_remembering`].
pub async fn round(
    client: &Client,
    ledger: &dyn Ledger,
    grace: Duration,
) -> Result<Report, RoundError> {
    // The cluster first, then the ledger: a binding made after the pod list is newer than it.
    let view = read_cluster(client).await?;
    round_with_view(client, ledger, grace, view, None).await
}

/// One round whose grace period also counts from when each orphan was first seen (`memory`).
pub async fn round_remembering(
    client: &Client,
    ledger: &dyn Ledger,
    grace: Duration,
    memory: &Memory,
) -> Result<Report, RoundError> {
    let view = read_cluster(client).await?;
    round_with_view(client, ledger, grace, view, Some(memory)).await
}

/// The rest of a round, from a view of the cluster read earlier (by [`read_cluster`]): list the
/// ledger, decide, release. Public so tests can widen the window between the two reads.
pub async fn round_with_view(
    client: &Client,
    ledger: &dyn Ledger,
    grace: Duration,
    view: ClusterView,
    memory: Option<&Memory>,
) -> Result<Report, RoundError> {
    let r = Records(ledger);
    // A bad record fails nothing: it is skipped (never released, never read as free) and
    // reported, with a Warning Event on it on the Kubernetes ledger.
    let claims = r.list::<Claim>(Kind::Claim).await?;
    let bindings = r.list::<Binding>(Kind::Binding).await?;
    let blocks = r.list::<Block>(Kind::Block).await?;
    let bad: Vec<BadRecord> = [claims.bad, bindings.bad, blocks.bad].concat();
    let (claims, bindings, blocks) = (claims.records, bindings.records, blocks.records);
    if let Some(m) = memory {
        if ledger.backend() == Backend::Kubernetes {
            for b in m.unreported(&bad) {
                berth_k8s::events::warn_bad_record(client, &b, "berth-controller").await;
            }
        }
    }
    let versions: HashMap<(Kind, String), Version> = bindings
        .iter()
        .map(|s| ((Kind::Binding, s.value.name()), s.version.clone()))
        .chain(
            blocks
                .iter()
                .map(|s| ((Kind::Block, s.value.name()), s.version.clone())),
        )
        .chain(
            claims
                .iter()
                .map(|s| ((Kind::Claim, s.value.name()), s.version.clone())),
        )
        .collect();
    let decision = decide(
        &view,
        &values(&blocks),
        &values(&claims),
        &values(&bindings),
        &bad,
        // With memory the grace counts from when an orphan is first seen (always after its
        // creation), so `decide` needs only its race guard (records newer than the pod list are
        // kept); counting it from creation as well would make young orphans wait twice.
        if memory.is_some() { 0 } else { grace.as_secs() },
    );
    let mut report = Report::default();
    // Nodes the view calls gone or fenced, confirmed once per round with a fresh GET.
    let mut gone_now: HashMap<String, bool> = HashMap::new();
    let node_of_binding: HashMap<String, String> = bindings
        .iter()
        .map(|s| (s.value.name(), s.value.node.clone()))
        .collect();
    let node_of_block: HashMap<String, String> = blocks
        .iter()
        .map(|s| (s.value.name(), s.value.node.clone()))
        .collect();
    let mut seen = vec![];
    for action in decision.actions {
        // An orphan waits out the grace period from when it was first seen (with memory).
        if let Some(m) = memory {
            let key = match &action {
                Action::ReleaseBinding {
                    name,
                    recheck_pod: Some(_),
                    ..
                } => Some((Kind::Binding, name)),
                Action::ReleaseClaim { name, .. } => Some((Kind::Claim, name)),
                _ => None,
            };
            if let Some((kind, name)) = key {
                let v = versions.get(&(kind, name.clone()));
                if !m.orphan_long_enough(kind, name, v, grace, &mut seen) {
                    report.kept += 1;
                    continue;
                }
            }
        }
        let node = match &action {
            Action::ReleaseBinding {
                name,
                recheck_pod: None,
                ..
            } => node_of_binding.get(name),
            Action::ReclaimBlock { name, .. } => node_of_block.get(name),
            _ => None,
        };
        if let Some(node) = node {
            let gone = match gone_now.get(node) {
                Some(g) => *g,
                None => {
                    let g = node_still_gone(client, node).await;
                    gone_now.insert(node.clone(), g);
                    g
                }
            };
            if !gone {
                report.kept += 1;
                continue;
            }
        }
        match action {
            Action::ReleaseBinding {
                name,
                reason,
                recheck_pod,
            } => {
                if let Some((ns, pod, uid)) = &recheck_pod {
                    if pod_still_there(client, ns, pod, uid).await {
                        report.kept += 1;
                        continue;
                    }
                }
                if delete(
                    ledger,
                    Kind::Binding,
                    &name,
                    versions.get(&(Kind::Binding, name.clone())),
                )
                .await?
                {
                    tracing::info!(address = %name, %reason, "released binding");
                    report.bindings += 1;
                } else {
                    report.kept += 1;
                }
            }
            Action::ReclaimBlock { name, reason } => {
                if delete(
                    ledger,
                    Kind::Block,
                    &name,
                    versions.get(&(Kind::Block, name.clone())),
                )
                .await?
                {
                    tracing::info!(block = %name, %reason, "reclaimed block");
                    report.blocks += 1;
                } else {
                    report.kept += 1;
                }
            }
            Action::ReleaseClaim { name, reason } => {
                if delete(
                    ledger,
                    Kind::Claim,
                    &name,
                    versions.get(&(Kind::Claim, name.clone())),
                )
                .await?
                {
                    tracing::info!(claim = %name, %reason, "released claim");
                    report.claims += 1;
                } else {
                    report.kept += 1;
                }
            }
        }
    }
    if let Some(m) = memory {
        m.forget_all_but(&[Kind::Binding, Kind::Claim], &seen);
    }
    Ok(report)
}

/// Write each pool's blocks, used and free counts into its `pools.berth.dev` status, so
/// `kubectl get pools.berth.dev` shows them. Returns how many pools were updated.
pub async fn update_pool_status(client: &Client, ledger: &dyn Ledger) -> Result<usize, RoundError> {
    use berth_core::{BindingKind, PoolSpec};
    use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
    let r = Records(ledger);
    let pools: Vec<Stored<PoolSpec>> = r.list(Kind::Pool).await?.records;
    let blocks: Vec<Stored<Block>> = r.list(Kind::Block).await?.records;
    let claims: Vec<Stored<Claim>> = r.list(Kind::Claim).await?.records;
    let bindings: Vec<Stored<Binding>> = r.list(Kind::Binding).await?.records;
    let api: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::erase::<berth_k8s::crd::Pool>(&()),
    );
    // The objects, for their creation times (an overlap is the newer pool's fault), generations
    // and current conditions.
    let objects: HashMap<String, DynamicObject> = api
        .list(&ListParams::default())
        .await
        .map_err(|source| RoundError::Read {
            what: "pools",
            source,
        })?
        .items
        .into_iter()
        .filter_map(|o| o.metadata.name.clone().map(|n| (n, o)))
        .collect();
    let object_of = |name: &str| {
        objects.get(&berth_k8s::names::object_name_of(
            berth_ledger::Kind::Pool,
            name,
        ))
    };
    let created = |name: &str| {
        object_of(name)
            .and_then(|o| o.metadata.creation_timestamp.clone())
            .map(|t| t.0)
    };
    let mut pools = pools;
    pools.sort_by(|a, b| {
        created(&a.value.name)
            .cmp(&created(&b.value.name))
            .then_with(|| a.value.name.cmp(&b.value.name))
    });
    let problems =
        berth_core::service::pool_problems(&pools.iter().map(|p| &p.value).collect::<Vec<_>>());
    let now = berth_k8s::condition_now();
    let all_bindings: Vec<&Binding> = bindings.iter().map(|b| &b.value).collect();
    let mut updated = 0;
    for p in &pools {
        let pool = &p.value;
        let used = bindings
            .iter()
            .filter(|b| b.value.pool == pool.name)
            .count() as u64;
        let nblocks = blocks.iter().filter(|b| b.value.pool == pool.name).count() as u64;
        let capacity: u128 = pool.subnets.iter().map(|s| s.dynamic_capacity()).sum();
        // Dynamic addresses taken: bound from blocks, or kept by claims.
        let taken = bindings
            .iter()
            .filter(|b| {
                b.value.pool == pool.name && matches!(b.value.kind, BindingKind::Dynamic { .. })
            })
            .count() as u128
            + claims
                .iter()
                .filter(|c| c.value.pool == pool.name)
                .map(|c| c.value.addresses.len() as u128)
                .sum::<u128>();
        let free = u64::try_from(capacity.saturating_sub(taken)).unwrap_or(u64::MAX);
        let obj = object_of(&pool.name);
        let previous: Vec<berth_k8s::crd::Condition> = obj
            .and_then(|o| o.data.get("status"))
            .and_then(|s| s.get("conditions"))
            .and_then(|c| serde_json::from_value(c.clone()).ok())
            .unwrap_or_default();
        let outside = crate::pools::outside_addresses(pool, &all_bindings);
        let conditions = crate::pools::pool_conditions(
            problems.get(&pool.name),
            &outside,
            &previous,
            &now,
            obj.and_then(|o| o.metadata.generation),
        );
        if let Some(o) = obj {
            for c in crate::pools::newly_wrong(&conditions, &previous) {
                let regarding = k8s_openapi::api::core::v1::ObjectReference {
                    api_version: Some(format!(
                        "{}/{}",
                        berth_k8s::crd::GROUP,
                        berth_k8s::crd::VERSION
                    )),
                    kind: Some("Pool".into()),
                    name: o.metadata.name.clone(),
                    uid: o.metadata.uid.clone(),
                    ..Default::default()
                };
                let reason = if c.type_ == crate::pools::READY {
                    "PoolNotReady"
                } else {
                    "AddressesOutsidePool"
                };
                if let Err(e) = berth_k8s::events::post(
                    client,
                    regarding,
                    true,
                    reason,
                    &c.message,
                    "berth-controller",
                )
                .await
                {
                    tracing::warn!(pool = %pool.name, error = %e, "could not post an Event on a Pool");
                }
            }
        }
        let patch = serde_json::json!({"status": {"blocks": nblocks, "used": used, "free": free,
                                                  "conditions": conditions}});
        let name = berth_k8s::names::object_name_of(berth_ledger::Kind::Pool, &pool.name);
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => updated += 1,
            Err(e) => tracing::warn!(pool = %pool.name, error = %e, "could not update pool status"),
        }
    }
    Ok(updated)
}

/// Run until the process ends: hold the Lease, and while holding it, run a round per interval.
pub async fn run(client: Client, ledger: Arc<dyn Ledger>, cfg: ControllerConfig) {
    run_until(client, ledger, cfg, std::future::pending()).await
}

/// How long releasing the Lease on the way out may take. Why: a stopping controller must exit
/// well within the pod's termination grace period even when the API server does not answer.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// [`run`] until `stop` completes (SIGTERM, SIGINT), then give up the Lease if held, so a standby
/// takes over at its next try instead of after the Lease duration.
pub async fn run_until(
    client: Client,
    ledger: Arc<dyn Ledger>,
    cfg: ControllerConfig,
    stop: impl std::future::Future<Output = ()>,
) {
    let elector = Elector::new(client.clone(), cfg.lease.clone());
    // None until the first try: the first result is logged either way, so an operator (and a
    // test) sees that a standby has reached its election loop.
    let mut leading: Option<bool> = None;
    let mut memory = Memory::default();
    // The Service controller, running while this replica leads; aborted when it stops leading
    // (every write it makes is a compare-and-swap, so one cut short is harmless).
    let mut services: Option<tokio::task::JoinHandle<()>> = None;
    // The BGP objects' conditions, likewise while leading.
    let mut bgp: Option<tokio::task::JoinHandle<()>> = None;
    tokio::pin!(stop);
    loop {
        let now = match elector.try_acquire_or_renew().await {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the Lease; standing by");
                false
            }
        };
        if leading != Some(now) {
            // What a previous term saw may be stale: start the grace clocks afresh.
            memory = Memory::default();
            tracing::info!(leader = now, identity = %cfg.lease.identity, "controller leadership changed");
        }
        leading = Some(now);
        cfg.metrics.leader.set(i64::from(now));
        // A Service controller that ended (its watches closed) is started again.
        if services.as_ref().is_some_and(|h| h.is_finished()) {
            tracing::warn!("the service controller stopped; starting it again");
            services = None;
        }
        if bgp.as_ref().is_some_and(|h| h.is_finished()) {
            tracing::warn!("the BGP object checker stopped; starting it again");
            bgp = None;
        }
        match (now, &bgp) {
            (true, None) if cfg.bgp => bgp = Some(tokio::spawn(crate::bgp::run(client.clone()))),
            (false, Some(h)) => {
                h.abort();
                bgp = None;
            }
            _ => {}
        }
        match (now, &services, &cfg.services) {
            (true, None, Some(sc)) => {
                services = Some(tokio::spawn(crate::services::run(
                    client.clone(),
                    ledger.clone(),
                    sc.clone(),
                )));
            }
            (false, Some(h), _) => {
                h.abort();
                services = None;
            }
            _ => {}
        }
        if now {
            let work = async {
                match round_remembering(&client, ledger.as_ref(), cfg.grace, &memory).await {
                    Ok(r) if r != Report::default() => tracing::info!(?r, "controller round"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "controller round skipped"),
                }
                if cfg.pool_status {
                    if let Err(e) = update_pool_status(&client, ledger.as_ref()).await {
                        tracing::warn!(error = %e, "pool status not updated");
                    }
                }
            };
            // A round cut short is harmless: every release is a compare-and-swap on its own.
            tokio::select! {
                _ = work => {}
                _ = &mut stop => break,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.interval) => {}
            _ = &mut stop => break,
        }
    }
    if let Some(h) = services.take() {
        h.abort();
    }
    if let Some(h) = bgp.take() {
        h.abort();
    }
    match tokio::time::timeout(RELEASE_TIMEOUT, elector.release()).await {
        Ok(Ok(true)) => {
            tracing::info!(identity = %cfg.lease.identity, "released the controller lease")
        }
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not release the controller lease"),
        Err(_) => tracing::warn!(
            "could not release the controller lease within {RELEASE_TIMEOUT:?}; it expires by itself"
        ),
    }
}
