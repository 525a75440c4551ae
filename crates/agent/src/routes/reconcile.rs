//! Carrying a [`Plan`] out in the kernel: read this node's connected prefixes, diff the plan
//! against the kernel's pod routes, apply the difference, and answer ARP/NDP on the pod bridge.
//!
//! Why a diff and not "replace everything": a restart with unchanged blocks must change nothing
//! in the kernel (no route flaps while the agent restarts), and only what changed is logged.

use super::plan::{Connected, Plan, PodRoute};
use super::{RouteMetrics, POD_ROUTE_METRIC};
use berth_netlink::{
    Addresses, ArpNdp, ErrorKind, Family, Links, Route, Routes, BERTH_PROTOCOL, MAIN_TABLE,
};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;

/// Everything the routed pod network asks of the kernel.
///
/// Why one trait: the driver is generic over it, so unit tests run it on
/// [`berth_netlink::fake::FakeKernel`] and the agent on [`berth_netlink::Kernel`].
pub trait PodNetKernel: Routes + Links + Addresses + ArpNdp + Send + Sync + 'static {}
impl<T: Routes + Links + Addresses + ArpNdp + Send + Sync + 'static> PodNetKernel for T {}

/// This node's addresses on running links other than `lo` and the pod bridge, without
/// link-local, tentative or failed addresses: the segments next hops may be on.
///
/// Why not the pod bridge: its prefix is the pool's (the bridge plugin puts the pool's gateway
/// on it), and no node's InternalIP is reached through it.
pub async fn connected<K: Links + Addresses>(
    k: &K,
    pod_bridge: Option<&str>,
) -> Result<Vec<Connected>, berth_netlink::Error> {
    let mut out = Vec::new();
    for link in k.links().await? {
        if link.name == "lo" || Some(link.name.as_str()) == pod_bridge || !link.is_running() {
            continue;
        }
        let addrs = match k.addresses(&link.name).await {
            Ok(a) => a,
            // The link went away between the two calls.
            Err(e) if matches!(e.kind, ErrorKind::NoSuchInterface(_)) => continue,
            Err(e) => return Err(e),
        };
        for a in addrs {
            let ip = a.net.addr();
            let link_local = match ip {
                IpAddr::V4(v4) => v4.is_link_local() || v4.is_loopback(),
                IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80 || v6.is_loopback(),
            };
            if link_local || a.tentative || a.dad_failed {
                continue;
            }
            out.push(Connected {
                addr: a.net,
                dev: link.name.clone(),
            });
        }
    }
    out.sort();
    Ok(out)
}

/// This node's own addresses on the pod bridge (its gateways), never answered for.
pub async fn bridge_addresses<K: Addresses>(k: &K, pod_bridge: &str) -> BTreeSet<IpAddr> {
    k.addresses(pod_bridge)
        .await
        .map(|v| v.into_iter().map(|a| a.net.addr()).collect())
        .unwrap_or_default()
}

/// The kernel's pod routes: Berth's protocol, the main table, Berth's pod-route metric.
///
/// Why the metric too: other parts of Berth (attachments' host routes) also write routes with
/// protocol 176; the pod network owns only those with [`POD_ROUTE_METRIC`].
pub async fn pod_routes<K: Routes>(k: &K) -> Result<BTreeMap<IpNet, Route>, berth_netlink::Error> {
    let mut out = BTreeMap::new();
    for fam in [Family::V4, Family::V6] {
        for r in k.routes(fam, MAIN_TABLE).await? {
            if r.protocol == BERTH_PROTOCOL && r.effective_metric() == POD_ROUTE_METRIC {
                out.insert(r.dst.trunc(), r);
            }
        }
    }
    Ok(out)
}

/// The kernel route for a planned one.
pub fn kernel_route(r: &PodRoute) -> Route {
    Route::to(r.dst)
        .via(r.via)
        .dev(&r.dev)
        .metric(POD_ROUTE_METRIC)
}

/// One change made (or attempted) in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A route for a block that had none.
    Added(PodRoute),
    /// A route whose next hop or device changed (the block changed owner, or its node its
    /// InternalIP); `was` is the old next hop and device.
    Replaced {
        /// The new route.
        route: PodRoute,
        /// The old next hop.
        was_via: Option<IpAddr>,
        /// The old device.
        was_dev: Option<String>,
    },
    /// A route for a block that is gone, or no longer routable.
    Removed {
        /// The block.
        dst: IpNet,
        /// Its old next hop.
        was_via: Option<IpAddr>,
        /// Its old device.
        was_dev: Option<String>,
    },
}

/// A change the kernel refused.
#[derive(Debug)]
pub struct Failed {
    /// The block.
    pub dst: IpNet,
    /// The error (names the route and what to do).
    pub error: berth_netlink::Error,
}

impl Failed {
    /// True when the kernel holds someone else's route with the pod route's key.
    pub fn is_foreign(&self) -> bool {
        matches!(self.error.kind, ErrorKind::Foreign { .. })
    }
}

/// What one reconciliation did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Changes made.
    pub changes: Vec<Change>,
    /// Changes refused.
    pub failed: Vec<Failed>,
    /// Pod routes in the kernel afterwards.
    pub installed: usize,
}

/// Makes the kernel's pod routes exactly the plan's: adds missing ones, replaces those whose
/// next hop or device differs, deletes the rest. Touches only routes with Berth's protocol and
/// pod-route metric; a route of anyone else with the same key is left alone and reported.
pub async fn reconcile<K: Routes>(
    k: &K,
    plan: &Plan,
    metrics: &RouteMetrics,
) -> Result<Outcome, berth_netlink::Error> {
    let current = pod_routes(k).await?;
    let mut out = Outcome::default();
    for (dst, want) in &plan.routes {
        let have = current.get(dst);
        if let Some(h) = have {
            if h.gateway == Some(want.via) && h.dev.as_deref() == Some(want.dev.as_str()) {
                continue;
            }
        }
        match k.replace_route(&kernel_route(want)).await {
            Ok(()) => {
                out.changes.push(match have {
                    None => {
                        metrics.added.fetch_add(1, Ordering::Relaxed);
                        Change::Added(want.clone())
                    }
                    Some(h) => {
                        metrics.replaced.fetch_add(1, Ordering::Relaxed);
                        Change::Replaced {
                            route: want.clone(),
                            was_via: h.gateway,
                            was_dev: h.dev.clone(),
                        }
                    }
                });
            }
            Err(error) => {
                metrics.errors.fetch_add(1, Ordering::Relaxed);
                out.failed.push(Failed { dst: *dst, error });
            }
        }
    }
    for (dst, h) in &current {
        if plan.routes.contains_key(dst) {
            continue;
        }
        match k.delete_route(h).await {
            Ok(_) => {
                metrics.removed.fetch_add(1, Ordering::Relaxed);
                out.changes.push(Change::Removed {
                    dst: *dst,
                    was_via: h.gateway,
                    was_dev: h.dev.clone(),
                });
            }
            Err(error) => {
                metrics.errors.fetch_add(1, Ordering::Relaxed);
                out.failed.push(Failed { dst: *dst, error });
            }
        }
    }
    out.installed = pod_routes(k).await.map(|m| m.len()).unwrap_or(0);
    metrics
        .installed
        .store(out.installed as u64, Ordering::Relaxed);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::plan::{plan, PlanInput};
    use berth_core::Block;
    use berth_netlink::fake::{Call, FakeKernel};
    use berth_netlink::Mac;

    fn mac(n: u8) -> Mac {
        Mac([2, 0, 0, 0, 0, n])
    }

    fn world() -> FakeKernel {
        let k = FakeKernel::new();
        k.add_link("eth0", mac(1));
        k.add_link("cni0", mac(2));
        k.insert_address("eth0", "198.18.0.11/24".parse().unwrap(), 0);
        k.insert_address("eth0", "fe80::1/64".parse().unwrap(), 0);
        k.insert_address("cni0", "198.18.64.1/24".parse().unwrap(), 0);
        k
    }

    fn blocks(spec: &[(&str, &str)]) -> Vec<Block> {
        spec.iter()
            .map(|(c, n)| Block {
                pool: "pods".into(),
                cidr: c.parse().unwrap(),
                node: n.to_string(),
            })
            .collect()
    }

    async fn plan_for(k: &FakeKernel, b: &[Block], ips: &[(&str, &str)]) -> Plan {
        let connected = connected(k, Some("cni0")).await.unwrap();
        let node_ips = ips
            .iter()
            .map(|(n, ip)| (n.to_string(), vec![ip.parse().unwrap()]))
            .collect();
        plan(PlanInput {
            node: "node1",
            connected: &connected,
            blocks: b,
            node_ips: &node_ips,
        })
    }

    fn writes(k: &FakeKernel) -> Vec<Call> {
        k.take_calls()
            .into_iter()
            .filter(|c| {
                matches!(
                    c,
                    Call::AddRoute(_)
                        | Call::ReplaceRoute(_)
                        | Call::DeleteRoute(_)
                        | Call::FlushRoutes { .. }
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn connected_leaves_out_lo_the_pod_bridge_link_local_and_down_links() {
        let k = world();
        k.add_link("eth1", mac(3));
        k.insert_address("eth1", "198.19.0.1/24".parse().unwrap(), 0);
        k.set_carrier("eth1", false);
        let c = connected(&k, Some("cni0")).await.unwrap();
        assert_eq!(
            c,
            vec![Connected {
                addr: "198.18.0.11/24".parse().unwrap(),
                dev: "eth0".into()
            }]
        );
        // Without a pod bridge named, the bridge's prefix counts as connected.
        assert_eq!(connected(&k, None).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn adds_replaces_and_removes_only_its_own_routes() {
        let k = world();
        let m = RouteMetrics::default();
        // Someone else's routes: an unrelated one, and one at a pod route's key.
        let mut foreign =
            Route::to("198.18.99.0/24".parse().unwrap()).via("198.18.0.12".parse().unwrap());
        foreign.protocol = 4; // static
        k.insert_route(foreign.clone());
        let mut at_key = Route::to("198.18.64.48/28".parse().unwrap())
            .via("198.18.0.14".parse().unwrap())
            .metric(POD_ROUTE_METRIC);
        at_key.protocol = 4;
        k.insert_route(at_key.clone());
        // A Berth route of another kind (not the pod metric) is not the pod network's.
        let other_berth = Route::to("198.18.77.5/32".parse().unwrap()).dev("eth0");
        k.insert_route(other_berth.clone());
        // A stale pod route of a previous run, for a block that is gone.
        k.insert_route(
            Route::to("198.18.64.80/28".parse().unwrap())
                .via("198.18.0.15".parse().unwrap())
                .dev("eth0")
                .metric(POD_ROUTE_METRIC),
        );

        let b = blocks(&[
            ("198.18.64.0/28", "node1"),
            ("198.18.64.16/28", "node2"),
            ("198.18.64.32/28", "node3"),
            ("198.18.64.48/28", "node4"),
        ]);
        let ips = [
            ("node2", "198.18.0.12"),
            ("node3", "198.18.0.13"),
            ("node4", "198.18.0.14"),
        ];
        let p = plan_for(&k, &b, &ips).await;
        assert_eq!(p.routes.len(), 3);
        k.take_calls();
        let out = reconcile(&k, &p, &m).await.unwrap();
        let added: Vec<String> = out
            .changes
            .iter()
            .filter_map(|c| match c {
                Change::Added(r) => Some(r.dst.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(added, ["198.18.64.16/28", "198.18.64.32/28"]);
        assert!(out.changes.contains(&Change::Removed {
            dst: "198.18.64.80/28".parse().unwrap(),
            was_via: Some("198.18.0.15".parse().unwrap()),
            was_dev: Some("eth0".into())
        }));
        assert_eq!(out.failed.len(), 1);
        assert!(out.failed[0].is_foreign(), "{:?}", out.failed[0].error);
        assert_eq!(out.installed, 2);
        let st = k.state().routes;
        assert!(
            st.contains(&foreign)
                && st.contains(&at_key)
                && st.contains(&{
                    let mut r = other_berth.clone();
                    r.protocol = BERTH_PROTOCOL;
                    r
                }),
            "{st:?}"
        );
        assert_eq!(m.added.load(Ordering::Relaxed), 2);
        assert_eq!(m.removed.load(Ordering::Relaxed), 1);
        assert_eq!(m.errors.load(Ordering::Relaxed), 1);

        // Unchanged inputs: no write at all (what a restart must do).
        k.take_calls();
        let again = reconcile(&k, &p, &m).await.unwrap();
        assert!(again.changes.is_empty());
        let w = writes(&k);
        // Only the refused foreign key is tried again; nothing is written.
        assert!(
            w.iter().all(
                |c| matches!(c, Call::ReplaceRoute(r) if r.dst.to_string() == "198.18.64.48/28")
            ),
            "{w:?}"
        );
        assert_eq!(k.state().routes, st);

        // node3's block changes owner to node2: replaced, not removed and re-added.
        let b2 = blocks(&[
            ("198.18.64.0/28", "node1"),
            ("198.18.64.16/28", "node2"),
            ("198.18.64.32/28", "node2"),
        ]);
        let p2 = plan_for(&k, &b2, &ips).await;
        k.take_calls();
        let out = reconcile(&k, &p2, &m).await.unwrap();
        assert_eq!(
            out.changes,
            vec![Change::Replaced {
                route: p2.routes[&"198.18.64.32/28".parse().unwrap()].clone(),
                was_via: Some("198.18.0.13".parse().unwrap()),
                was_dev: Some("eth0".into()),
            }]
        );
        assert!(
            out.failed.is_empty(),
            "node4's block is gone: nothing refused"
        );
        let w = writes(&k);
        assert_eq!(w.len(), 1, "{w:?}");

        // Every block released: every pod route goes, the others stay.
        let out = reconcile(&k, &Plan::default(), &m).await.unwrap();
        assert_eq!(out.changes.len(), 2);
        assert_eq!(out.installed, 0);
        let left = k.state().routes;
        assert_eq!(left.len(), 3, "{left:?}");
        assert!(left.contains(&foreign) && left.contains(&at_key));
    }

    #[tokio::test]
    async fn kernel_failures_are_reported_and_retried_next_time() {
        let k = world();
        let m = RouteMetrics::default();
        let b = blocks(&[("198.18.64.16/28", "node2")]);
        let p = plan_for(&k, &b, &[("node2", "198.18.0.12")]).await;
        k.fail_next("replace_route", ErrorKind::PermissionDenied);
        let out = reconcile(&k, &p, &m).await.unwrap();
        assert_eq!(out.failed.len(), 1);
        assert!(out.failed[0].error.to_string().contains("CAP_NET_ADMIN"));
        assert_eq!(out.installed, 0);
        let out = reconcile(&k, &p, &m).await.unwrap();
        assert_eq!(out.changes.len(), 1);
        assert_eq!(out.installed, 1);
        k.fail_next("routes", ErrorKind::PermissionDenied);
        assert!(reconcile(&k, &p, &m).await.is_err());
    }
}
