//! `berth-netlink`: the kernel side of Berth's networking.
//!
//! Why this crate exists: announcers (L2 and interface mode), the routed pod network and pod
//! attachments all change kernel state — addresses, routes, policy rules, neighbour and proxy
//! entries, links — and put ARP/NDP frames on the wire. This crate does that, and nothing
//! else, behind traits named for what they manage:
//!
//! - [`Addresses`], [`Routes`], [`Rules`], [`Neighbours`], [`Links`] over rtnetlink;
//! - [`ArpNdp`] over AF_PACKET sockets: gratuitous ARP, unsolicited NA, RFC 5227 ARP probes
//!   and NDP DAD probes that report who answered, and a responder that answers for addresses
//!   that are not on the interface;
//! - [`Links::watch`] follows link changes from the kernel's multicast group, so an
//!   announcer learns at once that its interface went down.
//!
//! [`Kernel`] implements every trait against one network namespace: [`Kernel::new`] for the
//! caller's, [`Kernel::in_netns`] for a pod's ([`Netns`]), without any thread of the program
//! changing namespace. [`fake::FakeKernel`] implements them in memory and records every call,
//! for unit tests of the logic above.
//!
//! Berth marks everything it writes with [`BERTH_PROTOCOL`] and never deletes or replaces a
//! route, rule or address that does not carry it.
//!
//! ```no_run
//! # async fn f() -> Result<(), berth_netlink::Error> {
//! use berth_netlink::{AddrOptions, Addresses, ArpNdp, Kernel, Netns, Route, Routes};
//! let pod = Kernel::in_netns(&Netns::open("/run/netns/pod1")?)?;
//! pod.add_address("eth0", "198.18.0.5/24".parse().unwrap(), AddrOptions::default()).await?;
//! pod.add_route(&Route::to("0.0.0.0/0".parse().unwrap()).via("198.18.0.1".parse().unwrap()).dev("eth0")).await?;
//! pod.announce("eth0", "198.18.0.5".parse().unwrap()).await?;
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

mod error;
pub mod fake;
mod kernel;
mod l2;
mod netns;
pub mod packet;
mod raw;
mod traits;
mod types;

pub use error::{Error, ErrorKind, Result};
pub use kernel::Kernel;
pub use netns::Netns;
pub use traits::{Addresses, ArpNdp, Gate, LinkWatch, Links, Neighbours, Routes, Rules};
pub use types::{
    AddrOptions, Address, Family, GarpForm, Link, LinkEvent, Mac, MacParseError, MacvlanMode,
    NeighState, Neighbour, OperState, ProxyEntry, Route, Rule, BERTH_PROTOCOL, MAIN_TABLE,
};
