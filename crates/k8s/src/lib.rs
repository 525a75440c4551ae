//! Berth's Kubernetes layer.
//!
//! - [`crd`]: the custom resources under `berth.dev` (pools, blocks, claims, bindings), derived from
//!   `berth-core`'s own types so the schema cannot drift from what the ledger stores.
//! - [`names`]: how ledger names map to Kubernetes object names.
//! - [`ledger`]: the Kubernetes ledger backend: one object per record, compare-and-swap on
//!   `resourceVersion`, so no single object is contended by every allocation.

pub mod annotations;
pub mod crd;
pub mod ledger;
pub mod names;

pub use ledger::KubeLedger;
