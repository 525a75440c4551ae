//! `berth-bgp`: a small native BGP-4 speaker for announcing a node's
//! addresses to routers, with no Kubernetes dependency.
//!
//! It originates routes (IPv4 and IPv6 unicast), parses and validates what
//! peers send (RFC 7606 error handling) without installing it anywhere, and
//! ties sessions to BFD ([`berth_bfd`]) for sub-second failover. See
//! `README.md` for the configuration keys of `berth bgp --config FILE`.
#![deny(missing_docs)]

pub mod attributes;
pub mod codec;
pub mod config;
pub mod fsm;
pub mod md5;
pub mod prefix;
pub mod rib_out;
pub mod runner;
mod session;
pub mod speaker;

pub use attributes::{Origin, RouteAttrs};
pub use config::{Config, ConfigError};
pub use fsm::State;
pub use prefix::Prefix;
pub use speaker::{BfdConfig, GlobalConfig, PeerConfig, PeerStatus, Speaker, SpeakerError, Target};
