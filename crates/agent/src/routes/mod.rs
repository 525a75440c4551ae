//! The routed pod network without an overlay (`--pod-routes l2`): every node allocates pod
//! addresses from its own blocks, and every agent routes the other nodes' blocks via their
//! InternalIPs, which sit on a segment this node is on.
//!
//! - [`plan`]: the pure decision (which block goes via which next hop, and why some cannot);
//! - [`reconcile`]: the diff of that plan against the kernel's pod routes, and its application;
//! - [`run`]: the loop that follows the watched inputs (blocks, node addresses, links) and
//!   reconciles after each change, from scratch at start;
//! - [`etcd`]: the blocks watch on the etcd ledger (the Kubernetes one is in `berth-k8s`).
//!
//! Pod routes carry Berth's protocol number ([`berth_netlink::BERTH_PROTOCOL`]) and the metric
//! [`POD_ROUTE_METRIC`]; nothing else is ever changed.

pub mod etcd;
pub mod plan;
pub mod reconcile;
pub mod run;

pub use plan::{answered, plan, Connected, Plan, PlanInput, PodRoute, Skip, Skipped};
pub use reconcile::{reconcile, Change, Outcome, PodNetKernel};
pub use run::{run, RouteConfig, RouteInputs};

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};

/// The metric of every pod route (`ip route … proto 176 metric 176`).
///
/// Why a metric of its own: other parts of Berth write routes with protocol 176 too; the pod
/// network owns exactly the protocol-176 routes with this metric in the main table, so it never
/// deletes another part's routes. An operator's route for the same block with a lower metric
/// (e.g. the default 0) takes precedence without being touched.
pub const POD_ROUTE_METRIC: u32 = 176;

/// What the agent does about pod routes.
///
/// Why a switch: in BGP mode the routers learn the blocks and the nodes need no routes to each
/// other; `off` makes the agent leave pod routes alone (after removing those a previous `l2` run
/// left behind).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodRoutes {
    /// Route other nodes' blocks via their InternalIPs on a shared segment.
    #[default]
    L2,
    /// No pod routes.
    Off,
}

impl std::str::FromStr for PodRoutes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "l2" => Ok(PodRoutes::L2),
            "off" => Ok(PodRoutes::Off),
            _ => Err(format!(
                "--pod-routes {s:?} is not a mode: use l2 (route other nodes' blocks via their InternalIPs) or off (BGP mode, or routes made by something else)"
            )),
        }
    }
}

/// Counters of the routed pod network, for the agent's metrics endpoint.
///
/// Why plain atomics: the route loop updates them without locks, and the endpoint reads them
/// whenever it is scraped.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    /// Reconciliations run.
    pub reconciles: AtomicU64,
    /// Routes added.
    pub added: AtomicU64,
    /// Routes replaced (a block changed owner, or its node its InternalIP).
    pub replaced: AtomicU64,
    /// Routes removed.
    pub removed: AtomicU64,
    /// Kernel operations that failed (including refusals to touch a foreign route).
    pub errors: AtomicU64,
    /// Pod routes in the kernel after the last reconciliation (a gauge).
    pub installed: AtomicU64,
    /// Other nodes' blocks without a route after the last plan (a gauge).
    pub skipped: AtomicU64,
    /// Addresses answered for on the pod bridge (a gauge).
    pub answered: AtomicU64,
}

/// A copy of [`RouteMetrics`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct RouteMetricsSnapshot {
    /// See [`RouteMetrics::reconciles`].
    pub reconciles: u64,
    /// See [`RouteMetrics::added`].
    pub added: u64,
    /// See [`RouteMetrics::replaced`].
    pub replaced: u64,
    /// See [`RouteMetrics::removed`].
    pub removed: u64,
    /// See [`RouteMetrics::errors`].
    pub errors: u64,
    /// See [`RouteMetrics::installed`].
    pub installed: u64,
    /// See [`RouteMetrics::skipped`].
    pub skipped: u64,
    /// See [`RouteMetrics::answered`].
    pub answered: u64,
}

impl RouteMetrics {
    /// The current values. Why: what an endpoint renders, and what tests compare.
    pub fn snapshot(&self) -> RouteMetricsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RouteMetricsSnapshot {
            reconciles: l(&self.reconciles),
            added: l(&self.added),
            replaced: l(&self.replaced),
            removed: l(&self.removed),
            errors: l(&self.errors),
            installed: l(&self.installed),
            skipped: l(&self.skipped),
            answered: l(&self.answered),
        }
    }
}
