//! The node agent: one per node. It owns the node's blocks through one long-lived allocator, serves
//! `berth-ipam` over a Unix socket so a CNI ADD costs no cluster scan, and on start re-reads the
//! ledger so a restart (even after `kill -9`) changes no address. With `--pod-routes l2` it routes
//! the other nodes' blocks via their InternalIPs ([`routes`]).

pub mod admin;
pub mod bgp;
pub mod l2;
pub mod pods;
pub mod routes;
mod server;

pub use pods::{KubePods, PodSource, POLICY_REFUSED};
pub use server::{bind, serve, AgentError};
