//! The cluster controller: one active replica (a Lease elects it), run as a Deployment.
//!
//! Each round it reads the cluster (pods, nodes, StatefulSets, Deployments), then the ledger, and
//! decides with [`decide`] — a pure function — which bindings, blocks and claims to release. Every
//! release is a compare-and-swap on the version read, and anything uncertain is kept: a lookup that
//! failed, a record newer than the pod list, a pod that a fresh GET still finds.

pub mod bgp;
pub mod book;
pub mod decide;
pub mod lease;
pub mod metrics;
pub mod pools;
pub mod run;
pub mod services;

pub use decide::{decide, Action, ClusterView, Decision};
pub use run::{round, run, run_until, update_pool_status, ControllerConfig, Report};
