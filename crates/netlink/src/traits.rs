//! The traits announcers, the agent and attachments program against.
//!
//! Why traits: the logic that decides what to announce and when (election, fencing, failover
//! timing) must be tested without a kernel. [`crate::Kernel`] implements every trait against
//! one network namespace; [`crate::fake::FakeKernel`] implements them in memory, records every
//! call and lets a test script link state.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use tokio::sync::mpsc;

use crate::error::Result;
use crate::netns::Netns;
use crate::types::{
    AddrOptions, Address, Family, GarpForm, Link, LinkEvent, Mac, MacvlanMode, Neighbour,
    ProxyEntry, Route, Rule,
};

/// Addresses on interfaces (`ip addr`).
#[async_trait]
pub trait Addresses: Send + Sync {
    /// Every address on `dev`, both families.
    async fn addresses(&self, dev: &str) -> Result<Vec<Address>>;

    /// Puts `addr` (with its prefix length) on `dev`, marked with Berth's protocol.
    /// Idempotent: an address that is already there is left as it is and this succeeds.
    async fn add_address(&self, dev: &str, addr: IpNet, opts: AddrOptions) -> Result<()>;

    /// Removes `addr` from `dev`. Returns whether it was there. An address Berth did not add
    /// (its IFA_PROTO is not [`crate::BERTH_PROTOCOL`]; the kernel keeps it since Linux 6.1)
    /// is left in place with [`crate::ErrorKind::Foreign`].
    async fn delete_address(&self, dev: &str, addr: IpNet) -> Result<bool>;
}

/// Routes (`ip route`), touching only routes that carry Berth's protocol number.
#[async_trait]
pub trait Routes: Send + Sync {
    /// Every route of `family` in `table`, whoever made it.
    async fn routes(&self, family: Family, table: u32) -> Result<Vec<Route>>;

    /// Adds a route; fails with [`crate::ErrorKind::Exists`] if one with the same key is there.
    async fn add_route(&self, route: &Route) -> Result<()>;

    /// Adds or replaces Berth's route with this key. Fails with
    /// [`crate::ErrorKind::Foreign`] (and changes nothing) when the route with this key was
    /// made by someone else.
    async fn replace_route(&self, route: &Route) -> Result<()>;

    /// Deletes Berth's route with this key (table, destination, metric). A route with the same
    /// key that someone else made is never deleted. Returns whether one was deleted.
    async fn delete_route(&self, route: &Route) -> Result<bool>;

    /// Deletes every Berth route of `family` in `table`; returns how many.
    async fn flush_routes(&self, family: Family, table: u32) -> Result<usize>;
}

/// Policy routing rules (`ip rule`), touching only rules with Berth's protocol number.
#[async_trait]
pub trait Rules: Send + Sync {
    /// Every rule of `family`.
    async fn rules(&self, family: Family) -> Result<Vec<Rule>>;

    /// Adds a rule. Idempotent: an identical rule already there is success.
    async fn add_rule(&self, rule: &Rule) -> Result<()>;

    /// Deletes Berth's rule matching `rule`. Returns whether one was deleted.
    async fn delete_rule(&self, rule: &Rule) -> Result<bool>;
}

/// The neighbour (ARP/NDP) table and proxy entries (`ip neigh`).
#[async_trait]
pub trait Neighbours: Send + Sync {
    /// The neighbour entries of `family`, on `dev` if given.
    async fn neighbours(&self, family: Family, dev: Option<&str>) -> Result<Vec<Neighbour>>;

    /// Sets a permanent entry `ip` → `mac` on `dev` (replacing what is there).
    async fn set_permanent(&self, dev: &str, ip: IpAddr, mac: Mac) -> Result<()>;

    /// Deletes the entry for `ip` on `dev`. Returns whether it was there.
    async fn delete_neighbour(&self, dev: &str, ip: IpAddr) -> Result<bool>;

    /// The proxy entries of `family`.
    async fn proxies(&self, family: Family) -> Result<Vec<ProxyEntry>>;

    /// Adds a proxy entry: with `proxy_arp`/`proxy_ndp` on, the kernel answers for `ip` on
    /// `dev`. Idempotent.
    async fn add_proxy(&self, dev: &str, ip: IpAddr) -> Result<()>;

    /// Deletes a proxy entry. Returns whether it was there.
    async fn delete_proxy(&self, dev: &str, ip: IpAddr) -> Result<bool>;
}

/// Network interfaces (`ip link`).
#[async_trait]
pub trait Links: Send + Sync {
    /// The link called `name`; [`crate::ErrorKind::NoSuchInterface`] if there is none.
    async fn link(&self, name: &str) -> Result<Link>;

    /// Every link.
    async fn links(&self) -> Result<Vec<Link>>;

    /// Sets the link administratively up or down.
    async fn set_up(&self, name: &str, up: bool) -> Result<()>;

    /// Sets the hardware address.
    async fn set_mac(&self, name: &str, mac: Mac) -> Result<()>;

    /// Renames a link (the kernel wants it down first).
    async fn rename(&self, name: &str, new_name: &str) -> Result<()>;

    /// Creates a veth pair `name` ↔ `peer`; the peer is created straight in `peer_netns`
    /// when given (so it never appears here).
    async fn add_veth(&self, name: &str, peer: &str, peer_netns: Option<&Netns>) -> Result<()>;

    /// Creates a macvlan `name` on `parent`, straight in `netns` when given.
    async fn add_macvlan(
        &self,
        name: &str,
        parent: &str,
        mode: MacvlanMode,
        netns: Option<&Netns>,
    ) -> Result<()>;

    /// Moves a link into another network namespace.
    async fn move_to_netns(&self, name: &str, netns: &Netns) -> Result<()>;

    /// Deletes a link. Returns whether it was there.
    async fn delete_link(&self, name: &str) -> Result<bool>;

    /// Watches link changes. The stream starts with a `Changed` event for every existing
    /// link, then follows the kernel's notifications.
    async fn watch(&self) -> Result<LinkWatch>;
}

/// A permission consulted just before each frame for an address leaves: an announcer's lease.
///
/// Why: a process that resumes from a stall (SIGSTOP, a CPU or VM pause) must not answer a
/// request that queued up meanwhile, nor send a queued announcement, on a right it lost while
/// it was not running. The check runs after the frame is built, immediately before the send
/// system call, on the gate's own clock, so no await lies between the check and the wire.
pub trait Gate: Send + Sync + 'static {
    /// Whether an answer or announcement for `ip` may be sent now.
    fn allows(&self, ip: IpAddr) -> bool;
}

/// ARP and NDP on the wire: announcements, conflict probes, and answering for addresses.
#[async_trait]
pub trait ArpNdp: Send + Sync {
    /// Installs `gate` for every later answer, gratuitous ARP and unsolicited NA this handle
    /// sends (`None` removes it). A frame the gate refuses is not sent: the responder drops
    /// it, and [`ArpNdp::send_garp`] / [`ArpNdp::send_unsolicited_na`] fail with
    /// [`crate::ErrorKind::Gated`]. Probes are never gated.
    fn set_gate(&self, gate: Option<Arc<dyn Gate>>);

    /// Sends one gratuitous ARP for `ip` (IPv4) from `dev`'s MAC, to broadcast.
    async fn send_garp(&self, dev: &str, ip: IpAddr, form: GarpForm) -> Result<()>;

    /// Sends one unsolicited Neighbor Advertisement for `ip` (IPv6) from `dev`'s MAC to
    /// all-nodes (ff02::1), with the override flag, so neighbours switch to this MAC.
    async fn send_unsolicited_na(&self, dev: &str, ip: IpAddr) -> Result<()>;

    /// Asks the LAN whether anyone holds `ip`: an RFC 5227 ARP probe (sender IP 0.0.0.0) for
    /// IPv4, a DAD Neighbor Solicitation from :: for IPv6. Sends three probes spread over
    /// `wait` and returns the MAC of the first host other than `dev` itself that answers (or
    /// probes for the same address), or `None` when no one did within `wait`.
    async fn probe(&self, dev: &str, ip: IpAddr, wait: Duration) -> Result<Option<Mac>>;

    /// Answers ARP requests and Neighbor Solicitations for exactly `ips` on `dev` with
    /// `dev`'s MAC, without the addresses being on the interface. Replaces the previous set;
    /// an empty set stops answering on `dev`.
    async fn answer(&self, dev: &str, ips: BTreeSet<IpAddr>) -> Result<()>;

    /// The addresses currently answered for on `dev`.
    async fn answered(&self, dev: &str) -> Result<BTreeSet<IpAddr>>;

    /// Sends one UDP datagram from `from` to `to` on `dev` as a frame to the link-layer address
    /// `via` (a router on the LAN, which forwards it to `to`). Never gated: it announces no
    /// address. Why: heartbeats through the two-node witness, so a cut of only the direct path
    /// between two nodes does not look like a dead peer to both.
    async fn send_udp_via(
        &self,
        dev: &str,
        via: Mac,
        from: std::net::SocketAddr,
        to: std::net::SocketAddr,
        payload: &[u8],
    ) -> Result<()>;

    /// Announces `ip` from `dev`: for IPv4 a gratuitous ARP request and reply, for IPv6 an
    /// unsolicited NA. Why: what a takeover sends, one call for either family.
    async fn announce(&self, dev: &str, ip: IpAddr) -> Result<()> {
        if ip.is_ipv4() {
            self.send_garp(dev, ip, GarpForm::Request).await?;
            self.send_garp(dev, ip, GarpForm::Reply).await
        } else {
            self.send_unsolicited_na(dev, ip).await
        }
    }
}

/// A stream of [`LinkEvent`]s.
///
/// Why: announcers must learn at once that their interface went down. Dropping the watch
/// stops it (and its kernel subscription).
pub struct LinkWatch {
    rx: mpsc::Receiver<LinkEvent>,
    _guard: Option<AbortOnDrop>,
}

impl std::fmt::Debug for LinkWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkWatch").finish_non_exhaustive()
    }
}

impl LinkWatch {
    /// A watch fed by `rx`, with `task` aborted when the watch is dropped.
    ///
    /// Why: lets adapters and fakes (also other crates' fakes) build a watch.
    pub fn new(rx: mpsc::Receiver<LinkEvent>, task: Option<tokio::task::JoinHandle<()>>) -> Self {
        LinkWatch {
            rx,
            _guard: task.map(AbortOnDrop),
        }
    }

    /// The next event; `None` when the watch broke (its kernel socket closed): make a new one.
    pub async fn next(&mut self) -> Option<LinkEvent> {
        self.rx.recv().await
    }

    /// The next event if one is queued, without waiting.
    pub fn try_next(&mut self) -> Option<LinkEvent> {
        self.rx.try_recv().ok()
    }
}

/// Aborts a task when dropped. Why: background tasks die with the handle that owns them.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
