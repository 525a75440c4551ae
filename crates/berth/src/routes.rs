//! `berth routes`: the pod routes on this node, with the block and node each one is for, and
//! the other nodes' blocks that have no route, with the reason.
//!
//! Reads the kernel of the namespace it runs in (only routes with Berth's protocol and pod-route
//! metric), the ledger's blocks and, when Kubernetes is reachable, the nodes' InternalIPs, and
//! runs the agent's own plan over them, so what it says is what the agent would do.

use crate::inspect::{json, load, table, InspectArgs};
use anyhow::Context;
use berth_agent::routes::reconcile::{connected, pod_routes};
use berth_agent::routes::{plan, PlanInput};
use berth_k8s::cluster::NodeIps;
use clap::Args;
use ipnet::IpNet;
use serde::Serialize;
use std::collections::BTreeMap;

/// Options of `berth routes`.
#[derive(Args, Debug)]
pub struct RoutesArgs {
    #[command(flatten)]
    pub inspect: InspectArgs,
    /// This node's name in the ledger (default: `NODE_NAME`, else the hostname).
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
    /// The agent's `--pod-bridge`.
    #[arg(long, default_value = "cni0")]
    pub pod_bridge: String,
}

/// One line of `berth routes`.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RouteLine {
    /// The block (the route's destination).
    pub block: IpNet,
    /// The next hop in the kernel, if there is a route.
    pub via: Option<std::net::IpAddr>,
    /// The device in the kernel, if there is a route.
    pub dev: Option<String>,
    /// The node owning the block, if the ledger has it.
    pub node: Option<String>,
    /// Its pool.
    pub pool: Option<String>,
    /// `installed`, `missing`, `differs`, `stale` or `not-routed`.
    pub state: &'static str,
    /// Why, for every state but `installed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `berth routes`.
pub async fn routes(args: RoutesArgs) -> anyhow::Result<()> {
    let node = args.node.clone().unwrap_or_else(crate::agent::hostname);
    let kernel = berth_netlink::Kernel::new().context("connecting to the kernel's routing")?;
    let installed = pod_routes(&kernel)
        .await
        .context("listing this node's routes")?;
    let snapshot = load(&args.inspect).await?;
    let bridge = (!args.pod_bridge.is_empty()).then_some(args.pod_bridge.as_str());
    let conn = connected(&kernel, bridge)
        .await
        .context("listing this node's addresses")?;
    let node_ips = node_ips(&args).await;
    let planned = plan(PlanInput {
        node: &node,
        connected: &conn,
        blocks: &snapshot.blocks,
        node_ips: node_ips.as_ref().unwrap_or(&NodeIps::new()),
    });
    let owner: BTreeMap<IpNet, &berth_core::Block> = snapshot
        .blocks
        .iter()
        .map(|b| (b.cidr.trunc(), b))
        .collect();
    let mut lines = Vec::new();
    for (dst, r) in &installed {
        let b = owner.get(dst);
        let (state, reason) = match (b, planned.routes.get(dst), &node_ips) {
            (None, _, _) => (
                "stale",
                Some("no such block in the ledger: the agent removes it".to_string()),
            ),
            (Some(b), _, _) if b.node == node => (
                "stale",
                Some("this node's own block: the agent removes it".to_string()),
            ),
            (Some(_), Some(p), _)
                if r.gateway != Some(p.via) || r.dev.as_deref() != Some(&p.dev) =>
            {
                (
                    "differs",
                    Some(format!(
                        "the plan says via {} dev {}: the agent replaces it",
                        p.via, p.dev
                    )),
                )
            }
            (Some(_), None, Some(_)) => (
                "stale",
                planned
                    .skipped
                    .iter()
                    .find(|s| s.block.cidr == *dst)
                    .map(|s| format!("{}: the agent removes it", s.why)),
            ),
            _ => ("installed", None),
        };
        lines.push(RouteLine {
            block: *dst,
            via: r.gateway,
            dev: r.dev.clone(),
            node: b.map(|b| b.node.clone()),
            pool: b.map(|b| b.pool.clone()),
            state,
            reason,
        });
    }
    if node_ips.is_some() {
        for (dst, p) in &planned.routes {
            if !installed.contains_key(dst) {
                lines.push(RouteLine {
                    block: *dst,
                    via: None,
                    dev: None,
                    node: Some(p.node.clone()),
                    pool: Some(p.pool.clone()),
                    state: "missing",
                    reason: Some(format!(
                        "should go via {} dev {}: is the agent running with --pod-routes l2, or does another route hold the key? (its log says)",
                        p.via, p.dev
                    )),
                });
            }
        }
        for s in &planned.skipped {
            lines.push(RouteLine {
                block: s.block.cidr,
                via: None,
                dev: None,
                node: Some(s.block.node.clone()),
                pool: Some(s.block.pool.clone()),
                state: "not-routed",
                reason: Some(s.why.to_string()),
            });
        }
    }
    lines.sort_by_key(|l| l.block);
    if args.inspect.json {
        return json(&lines);
    }
    let dash = || "-".to_string();
    let mut rows = vec![["BLOCK", "VIA", "DEV", "NODE", "POOL", "STATE"]
        .map(String::from)
        .to_vec()];
    for l in &lines {
        let state = match &l.reason {
            Some(r) => format!("{} ({r})", l.state),
            None => l.state.to_string(),
        };
        rows.push(vec![
            l.block.to_string(),
            l.via.map(|v| v.to_string()).unwrap_or_else(dash),
            l.dev.clone().unwrap_or_else(dash),
            l.node.clone().unwrap_or_else(dash),
            l.pool.clone().unwrap_or_else(dash),
            state,
        ]);
    }
    table(rows);
    if node_ips.is_none() {
        eprintln!(
            "(node addresses need Kubernetes: with --kubeconfig, blocks without a route are listed too)"
        );
    }
    Ok(())
}

/// Every node's InternalIPs, when a cluster is reachable (the Kubernetes ledger, a kubeconfig,
/// or in-cluster credentials).
async fn node_ips(args: &RoutesArgs) -> Option<NodeIps> {
    let l = &args.inspect.ledger;
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    if !l.is_kubernetes() && l.kubeconfig.is_none() && !in_cluster {
        return None;
    }
    let (client, _) = berth_k8s::client(l.kubeconfig.as_deref()).await.ok()?;
    match berth_k8s::cluster::list_node_ips(client).await {
        Ok(ips) => Some(ips),
        Err(e) => {
            eprintln!("cannot list nodes ({e}): blocks without a route are not shown");
            None
        }
    }
}
