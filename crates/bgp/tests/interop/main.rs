//! Interop tests against real BIRD 2, FRR 8.4 and gobgpd in network
//! namespaces. One test binary, so Cargo runs the scenarios in parallel
//! threads (separate binaries would run one after another).
//!
//! Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and the `bird2`, `frr`,
//! `gobgpd`, `iproute2`, `tcpdump` packages (checked first: the tests fail,
//! never skip, without them). Run: `cargo test -p berth-bgp --test interop`.

mod api;
mod bird;
mod common;
mod ecmp;
mod failover;
mod frr;
mod gobgp;
mod library;
mod limits;
mod malformed;
mod md5;
mod multihop;
