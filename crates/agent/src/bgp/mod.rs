//! The node's BGP speaker on Kubernetes: [`plan`] decides which sessions and routes (pure),
//! [`run`] carries the plan out with `berth-bgp`'s speaker and reports what it does.

pub mod plan;
pub mod run;

pub use plan::*;
pub use run::{BgpConfig, BgpHandle, BgpInputs, BgpMetrics, BgpOutlets, BgpView, KubeOutlets};
