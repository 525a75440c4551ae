//! Berth's core: the vocabulary of the ledger and every allocation decision, as pure functions.
//!
//! Nothing in this crate performs I/O. The ledger adapters store the records defined here, and the
//! allocator drives the decisions made here against a ledger. Keeping the decisions pure is what lets
//! them be property-tested without etcd, Kubernetes or a kernel.

pub mod addr;
pub mod announce;
pub mod audit;
pub mod bgp;
pub mod binding;
pub mod block;
pub mod claim;
pub mod names;
pub mod policy;
pub mod pool;
#[cfg(feature = "schema")]
pub mod schema;
pub mod selector;
pub mod service;
pub mod time;

pub use addr::{AddrRange, Family};
pub use audit::{audit, audit_with_claims, Violation};
pub use binding::{Binding, BindingKind, Holder, Owner, PodRef, ServiceHolders};
pub use block::Block;
pub use claim::{Claim, Identity};
pub use policy::{PolicyError, PoolPolicy};
pub use pool::{PoolError, PoolSpec, PoolUse, Route, SubnetSpec};
pub use service::{ServiceAllocation, ServiceRef, ServiceSettings};
pub use time::Timestamp;
