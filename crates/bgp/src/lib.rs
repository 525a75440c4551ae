//! `berth-bgp`: a small native BGP-4 speaker for announcing a node's
//! addresses to routers, with no Kubernetes dependency.
//!
//! It originates routes (IPv4 and IPv6 unicast), parses and validates what
//! peers send (RFC 7606 error handling, maximum-prefix limits) without
//! installing it anywhere, and ties sessions to BFD ([`berth_bfd`]) for
//! sub-second failover.
//!
//! The shape: [`fsm`] is the session state machine as pure event handlers
//! (events in, actions out, no I/O); one task per peer (`session`) does the
//! socket and timer work and carries the actions out; [`rib`] holds the routes the
//! embedding program announces, indexed by change so a withdraw costs one
//! lookup; [`Speaker`] is the handle that program holds. Process concerns
//! (signals, logging, the status file) belong to the binary (`berth bgp`).
//! See `README.md` for the configuration keys of `berth bgp --config FILE`.
#![deny(missing_docs)]

pub mod attributes;
pub mod codec;
pub mod config;
pub mod fsm;
pub mod md5;
pub mod prefix;
pub mod rib;
pub mod rib_in;
pub mod rib_out;
mod session;
pub mod speaker;

pub use attributes::{Origin, RouteAttrs};
pub use config::{Config, ConfigError};
pub use fsm::State;
pub use prefix::Prefix;
pub use rib_in::{Family, LimitAction, PrefixLimits};
pub use speaker::{
    BfdConfig, GlobalConfig, PeerChange, PeerConfig, PeerStatus, ShutdownMode, Snapshot, Speaker,
    SpeakerError, Target,
};
