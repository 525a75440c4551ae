//! `berth-announce`: L2 announcement of addresses with fenced, sub-second failover.
//!
//! Why this crate exists: an address announced on a LAN (ARP/NDP) must move when its node
//! fails, fast, and must never be answered for by two nodes at once beyond a bound Berth
//! states. The election ([`election`]) is pure and property-tested; the runtime
//! ([`runtime`]) drives it with heartbeats over UDP, link watching, witness and conflict
//! probes, and answers ARP/NDP from this process through `berth-netlink`, each answer gated
//! by the lease ([`lease`]); [`standalone`] is `berth vip --config FILE`.
#![deny(missing_docs)]

pub mod election;
pub mod error;
pub mod http;
pub mod lease;
pub mod message;
pub mod metrics;
pub mod rendezvous;
pub mod runtime;
pub mod standalone;
pub mod time;
pub mod timing;
pub mod transport;

pub use election::{Config, Election, Eligible, Event, Output, Reason, Status};
pub use error::ConfigError;
pub use message::Heartbeat;
pub use time::{BootClock, Clock, Stamp, TokioClock};
pub use timing::Timing;
