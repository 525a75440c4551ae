//! The route loop: follow the watched inputs and reconcile after each change.
//!
//! Inputs are watched, never polled: blocks and node addresses arrive as snapshots from their
//! watches, link changes from the kernel's link notifications. Nothing is written before both
//! watches have delivered a complete first list, so a restarting agent never mistakes "not
//! listed yet" for "no blocks" and removes routes; its first reconciliation is from scratch
//! against what the kernel holds, so stale routes of a previous run go and unchanged ones stay
//! untouched. A slow resync (`resync`) repairs what no watch reports: an address added to a
//! link, or a pod route deleted by hand.

use super::plan::{answered, plan, PlanInput};
use super::reconcile::{bridge_addresses, connected, reconcile, Change, PodNetKernel};
use super::{Plan, RouteMetrics};
use berth_core::Block;
use berth_k8s::cluster::{NodeIps, Snapshot};
use berth_netlink::{ErrorKind, LinkEvent, LinkWatch};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How the route loop runs.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// This node's name in the ledger.
    pub node: String,
    /// The bridge the node's pods hang on (the bridge plugin's `bridge`, e.g. `cni0`): its
    /// prefix is not a segment next hops may be on, and on it the agent answers ARP/NDP for the
    /// routed blocks. `None`: neither.
    pub pod_bridge: Option<String>,
    /// Reconcile at least this often, even when no watch reported a change.
    pub resync: Duration,
    /// Blocks with more addresses than this are routed but not answered for on the bridge.
    pub answer_limit: u32,
}

/// How long to wait after a change for more changes before reconciling.
///
/// Why: a pod's creation shows up as several link events in a row; one reconciliation covers
/// them all, and 20 ms is nothing next to a pod's start.
const COALESCE: Duration = Duration::from_millis(20);

/// How soon a reconciliation that failed in the kernel is retried.
const RETRY: Duration = Duration::from_secs(1);

/// The watched inputs of the route loop.
pub struct RouteInputs {
    /// Every node's blocks.
    pub blocks: Snapshot<Vec<Block>>,
    /// Every node's InternalIPs.
    pub node_ips: Snapshot<NodeIps>,
}

/// State the loop keeps between reconciliations, to log each fact once.
#[derive(Default)]
struct Memory {
    /// Blocks reported as not routable, with the reason logged.
    skipped: BTreeMap<IpNet, String>,
    /// Routes the kernel refused, with the error logged.
    refused: BTreeMap<IpNet, String>,
    /// Blocks too large to answer for, logged.
    too_large: BTreeSet<IpNet>,
    /// What the bridge answers for now (`None`: not set up, or it failed).
    answering: Option<BTreeSet<IpAddr>>,
    reconciled_once: bool,
}

/// Runs the routed pod network on `kernel` until the task is dropped.
pub async fn run<K: PodNetKernel>(
    kernel: K,
    cfg: RouteConfig,
    mut inputs: RouteInputs,
    metrics: Arc<RouteMetrics>,
) {
    let mut mem = Memory::default();
    let mut links: Option<LinkWatch> = None;
    let mut relevant: BTreeSet<String> = BTreeSet::new();
    let (mut blocks_open, mut ips_open) = (true, true);
    if let Some(b) = &cfg.pod_bridge {
        relevant.insert(b.clone());
    }
    loop {
        if links.is_none() {
            match kernel.watch().await {
                Ok(mut w) => {
                    // The initial snapshot: the first reconciliation reads the links anyway.
                    while w.try_next().is_some() {}
                    links = Some(w);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch links; pod routes follow the resync only")
                }
            }
        }
        let blocks = inputs.blocks.borrow_and_update().clone();
        let ips = inputs.node_ips.borrow_and_update().clone();
        let mut wait = cfg.resync;
        match (blocks, ips) {
            (Some(blocks), Some(ips)) => {
                match once(&kernel, &cfg, &blocks, &ips, &metrics, &mut mem).await {
                    Ok((ok, devs)) => {
                        relevant = devs;
                        if let Some(b) = &cfg.pod_bridge {
                            relevant.insert(b.clone());
                        }
                        if !ok {
                            wait = RETRY;
                        }
                    }
                    Err(e) => {
                        metrics.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "cannot read the kernel's routes or links; retrying");
                        wait = RETRY;
                    }
                }
            }
            (b, i) => {
                tracing::debug!(
                    blocks = b.is_some(),
                    node_addresses = i.is_some(),
                    "waiting for the first complete lists before touching pod routes"
                );
            }
        }
        // Wait for the next change.
        loop {
            tokio::select! {
                r = inputs.blocks.changed(), if blocks_open => {
                    if r.is_err() { blocks_open = false; continue; }
                }
                r = inputs.node_ips.changed(), if ips_open => {
                    if r.is_err() { ips_open = false; continue; }
                }
                ev = next_link(&mut links) => {
                    match ev {
                        None => links = None,
                        Some(ev) if !matters(&ev, &relevant) => continue,
                        Some(_) => {}
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
            break;
        }
        tokio::time::sleep(COALESCE).await;
        if let Some(w) = links.as_mut() {
            while w.try_next().is_some() {}
        }
    }
}

async fn next_link(w: &mut Option<LinkWatch>) -> Option<LinkEvent> {
    match w {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

/// Whether a link event can change the plan or the answering: the pod bridge, or a link with
/// a connected prefix, came, went or changed state. A resync of the watch always matters.
fn matters(ev: &LinkEvent, relevant: &BTreeSet<String>) -> bool {
    match ev {
        LinkEvent::Changed(l) => relevant.contains(&l.name),
        LinkEvent::Removed { name, .. } => relevant.contains(name),
        LinkEvent::Resync => true,
    }
}

/// One reconciliation. Returns whether everything was applied, and the links with connected
/// prefixes (whose events matter).
async fn once<K: PodNetKernel>(
    k: &K,
    cfg: &RouteConfig,
    blocks: &[Block],
    ips: &NodeIps,
    metrics: &RouteMetrics,
    mem: &mut Memory,
) -> Result<(bool, BTreeSet<String>), berth_netlink::Error> {
    let connected = connected(k, cfg.pod_bridge.as_deref()).await?;
    let devs = connected.iter().map(|c| c.dev.clone()).collect();
    let p = plan(PlanInput {
        node: &cfg.node,
        connected: &connected,
        blocks,
        node_ips: ips,
    });
    log_skips(&p, mem);
    metrics
        .skipped
        .store(p.skipped.len() as u64, Ordering::Relaxed);
    let out = reconcile(k, &p, metrics).await?;
    metrics.reconciles.fetch_add(1, Ordering::Relaxed);
    for c in &out.changes {
        log_change(c);
    }
    let mut ok = true;
    let mut refused = BTreeMap::new();
    for f in &out.failed {
        let msg = f.error.to_string();
        if mem.refused.get(&f.dst) != Some(&msg) {
            if f.is_foreign() {
                tracing::warn!(block = %f.dst, error = %msg, "pod route not installed: another route holds its key");
            } else {
                tracing::warn!(block = %f.dst, error = %msg, "pod route change failed; retrying");
            }
        }
        // A foreign route stays until its owner removes it: no fast retry for it.
        ok &= f.is_foreign();
        refused.insert(f.dst, msg);
    }
    mem.refused = refused;
    if !mem.reconciled_once {
        mem.reconciled_once = true;
        let count = |f: fn(&Change) -> bool| out.changes.iter().filter(|c| f(c)).count();
        tracing::info!(
            node = %cfg.node,
            installed = out.installed,
            added = count(|c| matches!(c, Change::Added(_))),
            replaced = count(|c| matches!(c, Change::Replaced { .. })),
            removed = count(|c| matches!(c, Change::Removed { .. })),
            refused = out.failed.len(),
            not_routable = p.skipped.len(),
            "pod routes reconciled from scratch"
        );
    }
    if let Some(bridge) = &cfg.pod_bridge {
        ok &= answer(k, bridge, &p, cfg.answer_limit, metrics, mem).await;
    }
    Ok((ok, devs))
}

/// Answers ARP/NDP on the pod bridge for the routed blocks. Returns false when it must be
/// retried (the bridge exists but answering failed).
async fn answer<K: PodNetKernel>(
    k: &K,
    bridge: &str,
    p: &Plan,
    limit: u32,
    metrics: &RouteMetrics,
    mem: &mut Memory,
) -> bool {
    let own = bridge_addresses(k, bridge).await;
    let (set, too_large) = answered(p, &own, limit);
    for b in &too_large {
        if mem.too_large.insert(*b) {
            tracing::warn!(block = %b, limit, bridge, "block too large to answer ARP/NDP for on the pod bridge: pods reach it only if their prefix does not cover it");
        }
    }
    mem.too_large.retain(|b| too_large.contains(b));
    if mem.answering.is_none() && set.is_empty() {
        // Nothing to answer and never started: leave the bridge alone.
        return true;
    }
    // Asked every time: cheap when nothing changed, and the kernel adapter re-opens its
    // sockets when the bridge was re-created (another index or MAC).
    answer_now(k, bridge, set, metrics, mem).await
}

async fn answer_now<K: PodNetKernel>(
    k: &K,
    bridge: &str,
    set: BTreeSet<IpAddr>,
    metrics: &RouteMetrics,
    mem: &mut Memory,
) -> bool {
    let n = set.len();
    match k.answer(bridge, set.clone()).await {
        Ok(()) => {
            if mem.answering.as_ref().map(|s| s.len()) != Some(n) {
                tracing::info!(
                    bridge,
                    addresses = n,
                    "answering ARP/NDP on the pod bridge for other nodes' blocks"
                );
            }
            mem.answering = Some(set);
            metrics.answered.store(n as u64, Ordering::Relaxed);
            true
        }
        Err(e) if matches!(e.kind, ErrorKind::NoSuchInterface(_)) => {
            // No pod on this node yet: the bridge plugin creates it with the first one, and
            // the link watch brings us back then.
            tracing::debug!(bridge, "pod bridge does not exist yet");
            mem.answering = None;
            metrics.answered.store(0, Ordering::Relaxed);
            true
        }
        Err(e) => {
            tracing::warn!(bridge, error = %e, "cannot answer ARP/NDP on the pod bridge; retrying");
            mem.answering = None;
            metrics.answered.store(0, Ordering::Relaxed);
            false
        }
    }
}

fn log_change(c: &Change) {
    match c {
        Change::Added(r) => tracing::info!(
            block = %r.dst, via = %r.via, dev = %r.dev, node = %r.node, pool = %r.pool,
            "pod route added"
        ),
        Change::Replaced {
            route: r,
            was_via,
            was_dev,
        } => tracing::info!(
            block = %r.dst, via = %r.via, dev = %r.dev, node = %r.node, pool = %r.pool,
            was_via = %was_via.map(|v| v.to_string()).unwrap_or_default(),
            was_dev = %was_dev.clone().unwrap_or_default(),
            "pod route replaced"
        ),
        Change::Removed {
            dst,
            was_via,
            was_dev,
        } => tracing::info!(
            block = %dst,
            was_via = %was_via.map(|v| v.to_string()).unwrap_or_default(),
            was_dev = %was_dev.clone().unwrap_or_default(),
            "pod route removed"
        ),
    }
}

fn log_skips(p: &Plan, mem: &mut Memory) {
    let mut now = BTreeMap::new();
    for s in &p.skipped {
        let why = s.why.to_string();
        if mem.skipped.get(&s.block.cidr) != Some(&why) {
            tracing::info!(block = %s.block.cidr, node = %s.block.node, reason = %why, "block of another node not routed");
        }
        now.insert(s.block.cidr, why);
    }
    mem.skipped = now;
}

/// Removes every pod route (`--pod-routes off`): what a previous `l2` run left behind.
///
/// Why: switching a cluster to BGP mode must not leave stale node-to-node routes that no
/// one updates any more.
pub async fn clear<K: PodNetKernel>(
    k: &K,
    metrics: &RouteMetrics,
) -> Result<usize, berth_netlink::Error> {
    let out = reconcile(k, &Plan::default(), metrics).await?;
    for c in &out.changes {
        log_change(c);
    }
    for f in &out.failed {
        tracing::warn!(block = %f.dst, error = %f.error, "cannot remove a pod route");
    }
    Ok(out.changes.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::POD_ROUTE_METRIC;
    use berth_netlink::fake::{Call, FakeKernel};
    use berth_netlink::{Mac, Route, Routes};
    use tokio::sync::watch;

    fn b(cidr: &str, node: &str) -> Block {
        Block {
            pool: "pods".into(),
            cidr: cidr.parse().unwrap(),
            node: node.into(),
        }
    }

    fn ips(pairs: &[(&str, &str)]) -> NodeIps {
        pairs
            .iter()
            .map(|(n, ip)| (n.to_string(), vec![ip.parse().unwrap()]))
            .collect()
    }

    fn cfg() -> RouteConfig {
        RouteConfig {
            node: "node1".into(),
            pod_bridge: Some("cni0".into()),
            resync: Duration::from_secs(3600),
            answer_limit: 4096,
        }
    }

    fn kernel() -> FakeKernel {
        let k = FakeKernel::new();
        k.add_link("eth0", Mac([2, 0, 0, 0, 0, 1]));
        k.insert_address("eth0", "198.18.0.11/24".parse().unwrap(), 0);
        k.insert_address("eth0", "2001:db8::11/64".parse().unwrap(), 0);
        k
    }

    fn routes(k: &FakeKernel) -> Vec<String> {
        let mut v: Vec<String> = k
            .state()
            .routes
            .iter()
            .filter(|r| r.protocol == berth_netlink::BERTH_PROTOCOL)
            .map(|r| r.to_string())
            .collect();
        v.sort();
        v
    }

    /// Lets the loop run until it is idle again (the clock is paused: sleeps are instant).
    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn follows_the_watches_and_does_nothing_before_both_lists() {
        let k = kernel();
        let stale = Route::to("198.18.64.240/28".parse().unwrap())
            .via("198.18.0.19".parse().unwrap())
            .dev("eth0")
            .metric(POD_ROUTE_METRIC);
        k.replace_route(&stale).await.unwrap();
        let (btx, brx) = watch::channel(None);
        let (itx, irx) = watch::channel(None);
        let m = Arc::new(RouteMetrics::default());
        let task = tokio::spawn(run(
            k.clone(),
            cfg(),
            RouteInputs {
                blocks: brx,
                node_ips: irx,
            },
            m.clone(),
        ));
        // Only the blocks are listed: nothing is touched, not even the stale route.
        btx.send(Some(Arc::new(vec![b("198.18.64.16/28", "node2")])))
            .unwrap();
        settle().await;
        assert_eq!(routes(&k).len(), 1);
        assert_eq!(m.snapshot().reconciles, 0);

        // Both lists: reconciled from scratch; the stale route goes.
        itx.send(Some(Arc::new(ips(&[
            ("node2", "198.18.0.12"),
            ("node3", "198.18.0.13"),
        ]))))
        .unwrap();
        settle().await;
        assert_eq!(
            routes(&k),
            ["198.18.64.16/28 via 198.18.0.12 dev eth0 metric 176"]
        );
        let s = m.snapshot();
        assert_eq!((s.added, s.removed, s.installed), (1, 1, 1));

        // A block claimed by node3, then node2's released: each followed.
        btx.send(Some(Arc::new(vec![
            b("198.18.64.16/28", "node2"),
            b("198.18.64.32/28", "node3"),
            b("2001:db8:64::/122", "node3"),
        ])))
        .unwrap();
        settle().await;
        assert_eq!(
            routes(&k).len(),
            2,
            "node3's IPv6 block waits for an IPv6 InternalIP"
        );
        btx.send(Some(Arc::new(vec![
            b("198.18.64.32/28", "node3"),
            b("2001:db8:64::/122", "node3"),
        ])))
        .unwrap();
        settle().await;
        assert_eq!(
            routes(&k),
            ["198.18.64.32/28 via 198.18.0.13 dev eth0 metric 176"],
            "node3 has no IPv6 InternalIP: its IPv6 block is not routed"
        );
        assert_eq!(m.snapshot().skipped, 1);
        // Its IPv6 address appears: routed.
        itx.send(Some(Arc::new(
            [
                ("node2".to_string(), vec!["198.18.0.12".parse().unwrap()]),
                (
                    "node3".to_string(),
                    vec![
                        "198.18.0.13".parse().unwrap(),
                        "2001:db8::13".parse().unwrap(),
                    ],
                ),
            ]
            .into(),
        )))
        .unwrap();
        settle().await;
        assert_eq!(
            routes(&k),
            [
                "198.18.64.32/28 via 198.18.0.13 dev eth0 metric 176",
                "2001:db8:64::/122 via 2001:db8::13 dev eth0 metric 176"
            ]
        );
        assert_eq!(m.snapshot().skipped, 0);

        // An unchanged snapshot (a watch re-list) writes nothing.
        k.take_calls();
        btx.send_modify(|v| *v = v.clone());
        settle().await;
        assert!(
            k.take_calls().iter().all(|c| !matches!(
                c,
                Call::AddRoute(_) | Call::ReplaceRoute(_) | Call::DeleteRoute(_)
            )),
            "an unchanged input must not write"
        );
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn answers_on_the_pod_bridge_once_it_exists() {
        let k = kernel();
        let (_btx, brx) = watch::channel(Some(Arc::new(vec![
            b("198.18.64.0/28", "node1"),
            b("198.18.64.16/30", "node2"),
        ])));
        let (_itx, irx) = watch::channel(Some(Arc::new(ips(&[("node2", "198.18.0.12")]))));
        let m = Arc::new(RouteMetrics::default());
        let task = tokio::spawn(run(
            k.clone(),
            cfg(),
            RouteInputs {
                blocks: brx,
                node_ips: irx,
            },
            m.clone(),
        ));
        settle().await;
        assert_eq!(routes(&k).len(), 1);
        assert_eq!(m.snapshot().answered, 0, "no bridge yet");
        // The first pod: the bridge plugin creates cni0 with the pool's gateway.
        k.add_link("cni0", Mac([2, 0, 0, 0, 0, 2]));
        k.insert_address("cni0", "198.18.64.1/24".parse().unwrap(), 0);
        settle().await;
        let answered = k.state().answered.get("cni0").cloned().unwrap_or_default();
        let got: Vec<String> = answered.iter().map(|i| i.to_string()).collect();
        assert_eq!(
            got,
            [
                "198.18.64.16",
                "198.18.64.17",
                "198.18.64.18",
                "198.18.64.19"
            ]
        );
        assert_eq!(m.snapshot().answered, 4);
        // The bridge's prefix is not a segment for next hops: nothing routed via cni0.
        assert!(routes(&k).iter().all(|r| !r.contains("cni0")));
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn kernel_failures_are_retried_soon() {
        let k = kernel();
        k.fail_next(
            "replace_route",
            ErrorKind::Transport("socket closed".into()),
        );
        let (_btx, brx) = watch::channel(Some(Arc::new(vec![b("198.18.64.16/28", "node2")])));
        let (_itx, irx) = watch::channel(Some(Arc::new(ips(&[("node2", "198.18.0.12")]))));
        let m = Arc::new(RouteMetrics::default());
        let task = tokio::spawn(run(
            k.clone(),
            cfg(),
            RouteInputs {
                blocks: brx,
                node_ips: irx,
            },
            m.clone(),
        ));
        settle().await;
        assert!(routes(&k).is_empty());
        tokio::time::sleep(RETRY + Duration::from_millis(100)).await;
        settle().await;
        assert_eq!(routes(&k).len(), 1);
        assert_eq!(m.snapshot().errors, 1);
        task.abort();
    }

    #[tokio::test]
    async fn off_clears_only_pod_routes() {
        let k = kernel();
        let pod = Route::to("198.18.64.16/28".parse().unwrap())
            .via("198.18.0.12".parse().unwrap())
            .dev("eth0")
            .metric(POD_ROUTE_METRIC);
        let other = Route::to("198.18.77.0/24".parse().unwrap()).dev("eth0");
        k.replace_route(&pod).await.unwrap();
        k.replace_route(&other).await.unwrap();
        let m = RouteMetrics::default();
        assert_eq!(clear(&k, &m).await.unwrap(), 1);
        assert_eq!(routes(&k), ["198.18.77.0/24 dev eth0"]);
    }
}
