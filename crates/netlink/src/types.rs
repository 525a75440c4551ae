//! Plain data the traits speak: MAC addresses, links, addresses, routes, rules, neighbours.
//!
//! These types carry no kernel handle, so fakes and real adapters share them and tests can
//! build them by hand.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// Berth's route protocol number (`proto 176`, hex 0xB0) on every route, rule, neighbour entry
/// and address it writes.
///
/// Why: Berth only ever changes kernel state it made. The kernel matches the protocol on route
/// and rule deletes, so a Berth delete or flush can never remove a route an operator, a DHCP
/// client or a routing daemon added. 176 is free in iproute2's `rt_protos` and in FRR's
/// `rt_protos.d/frr.conf` (186–197, where 0xBE = 190 is FRR's RIPng), BIRD's (12), keepalived's
/// (18) and Calico's (80). `ip route` shows it as `proto 176`, or as `proto berth` with a line
/// `176 berth` in `/etc/iproute2/rt_protos.d/berth.conf`.
pub const BERTH_PROTOCOL: u8 = 176;

/// The kernel's main routing table (254). Why: the table routes go to unless told otherwise.
pub const MAIN_TABLE: u32 = 254;

/// An Ethernet (EUI-48) address.
///
/// Why: announcers report who answered a probe and set neighbour entries by MAC.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// ff:ff:ff:ff:ff:ff. Why: the destination of ARP requests and GARPs.
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    /// 00:00:00:00:00:00. Why: the unknown target hardware address of ARP requests.
    pub const ZERO: Mac = Mac([0; 6]);

    /// Parses a slice of exactly six bytes. Why: netlink hands link-layer addresses as bytes.
    pub fn from_slice(b: &[u8]) -> Option<Mac> {
        <[u8; 6]>::try_from(b).ok().map(Mac)
    }

    /// True for the group bit (multicast/broadcast). Why: such a MAC never answers for a host.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A MAC that did not parse. Why: configuration names MACs as text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a MAC address; write six hex bytes separated by colons, e.g. 02:00:00:00:00:01"
)]
pub struct MacParseError(pub String);

impl FromStr for Mac {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Mac, MacParseError> {
        let err = || MacParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split(':') {
            if n == 6 || part.is_empty() || part.len() > 2 {
                return Err(err());
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| err())?;
            n += 1;
        }
        if n != 6 {
            return Err(err());
        }
        Ok(Mac(out))
    }
}

/// Address family. Why: listings of routes, rules and neighbours are per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// RFC 2863 operational state as the kernel reports it (`ip link`'s `state`).
///
/// Why: an announcer must stop when its interface loses carrier, not only when an admin
/// sets it down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OperState {
    /// Up and passing traffic.
    Up,
    /// Down.
    Down,
    /// Down because a lower layer (the peer of a veth, the parent of a macvlan) is down.
    LowerLayerDown,
    /// Dormant (waiting for an external event).
    Dormant,
    /// Testing mode.
    Testing,
    /// Removed but not yet gone.
    NotPresent,
    /// The driver does not say (e.g. `lo`).
    Unknown,
}

/// One network interface.
///
/// Why: what announcers and attachments need to know about a link: its index (what netlink
/// and packet sockets use), name, MAC and whether it can carry traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index in its namespace.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Hardware address, if the link has an Ethernet-like one.
    pub mac: Option<Mac>,
    /// IFF_UP: set administratively up.
    pub admin_up: bool,
    /// IFF_LOWER_UP: carrier.
    pub lower_up: bool,
    /// Operational state.
    pub oper: OperState,
    /// MTU.
    pub mtu: u32,
    /// Link kind (`veth`, `macvlan`, `bridge`, …), if the kernel says.
    pub kind: Option<String>,
}

impl Link {
    /// Up, with carrier, and operationally up (or unknown, as for `lo`).
    ///
    /// Why: the one test an announcer applies to "the interface exists and is up".
    pub fn is_running(&self) -> bool {
        self.admin_up && self.lower_up && matches!(self.oper, OperState::Up | OperState::Unknown)
    }
}

/// A change seen by a link watch.
///
/// Why: announcers react to their interface going down at once, from the kernel's own
/// notification rather than by polling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// The link exists with this state (new, changed, or part of the initial snapshot).
    Changed(Link),
    /// The link was deleted (or moved to another namespace).
    Removed {
        /// Its former index.
        index: u32,
        /// Its former name.
        name: String,
    },
    /// The kernel dropped notifications (socket buffer overrun); a fresh snapshot of every
    /// link follows as `Changed` events.
    Resync,
}

/// Options for adding an address.
///
/// Why: announcers add IPv6 addresses without duplicate address detection (they probed
/// already, and DAD would keep the address tentative for a second).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AddrOptions {
    /// IFA_F_NODAD (IPv6 only; ignored for IPv4).
    pub nodad: bool,
    /// IFA_F_NOPREFIXROUTE: no route for the prefix (a /24 VIP should not route the /24).
    pub noprefixroute: bool,
}

/// An address on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The address with its prefix length (host bits kept: 198.18.0.5/24).
    pub net: IpNet,
    /// The interface index.
    pub index: u32,
    /// IPv6 DAD has not finished yet.
    pub tentative: bool,
    /// IPv6 DAD found a duplicate.
    pub dad_failed: bool,
    /// The address protocol (IFA_PROTO; [`BERTH_PROTOCOL`] when Berth added it, 0 when unset).
    pub protocol: u8,
}

/// A route.
///
/// Why: one shape for what Berth asks for and what the kernel lists. On add, replace and
/// delete, `protocol` is ignored: Berth always writes [`BERTH_PROTOCOL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix (0.0.0.0/0 or ::/0 for a default route).
    pub dst: IpNet,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Outgoing interface name, if any.
    pub dev: Option<String>,
    /// Routing table (default [`MAIN_TABLE`]).
    pub table: u32,
    /// Priority/metric (`None`: the kernel default, 0 for IPv4, 1024 for IPv6).
    pub metric: Option<u32>,
    /// Preferred source address (`src`).
    pub src: Option<IpAddr>,
    /// RTNH_F_ONLINK: the gateway is on the link even if no subnet says so.
    pub onlink: bool,
    /// Protocol (listing only).
    pub protocol: u8,
}

impl Route {
    /// A route to `dst` in the main table, nothing else set. Why: the builder's start.
    pub fn to(dst: IpNet) -> Route {
        Route {
            dst,
            gateway: None,
            dev: None,
            table: MAIN_TABLE,
            metric: None,
            src: None,
            onlink: false,
            protocol: BERTH_PROTOCOL,
        }
    }

    /// Sets the next hop.
    pub fn via(mut self, gw: IpAddr) -> Route {
        self.gateway = Some(gw);
        self
    }

    /// Sets the outgoing interface.
    pub fn dev(mut self, dev: &str) -> Route {
        self.dev = Some(dev.to_string());
        self
    }

    /// Sets the table.
    pub fn table(mut self, table: u32) -> Route {
        self.table = table;
        self
    }

    /// Sets the metric.
    pub fn metric(mut self, metric: u32) -> Route {
        self.metric = Some(metric);
        self
    }

    /// Sets the preferred source.
    pub fn src(mut self, src: IpAddr) -> Route {
        self.src = Some(src);
        self
    }

    /// Marks the gateway as on-link.
    pub fn onlink(mut self) -> Route {
        self.onlink = true;
        self
    }

    /// The route's family.
    pub fn family(&self) -> Family {
        Family::of(self.dst.addr())
    }

    /// The metric the kernel uses when none is given.
    pub fn effective_metric(&self) -> u32 {
        self.metric.unwrap_or(match self.family() {
            Family::V4 => 0,
            Family::V6 => 1024,
        })
    }

    /// The key the kernel identifies a route by: table, destination, metric.
    ///
    /// Why: replace must know whether it would overwrite someone else's route.
    pub fn same_key(&self, other: &Route) -> bool {
        self.table == other.table
            && self.dst.trunc() == other.dst.trunc()
            && self.effective_metric() == other.effective_metric()
    }

    /// Checks the route is coherent (gateway and source of its family). Why: a clear error
    /// before the kernel answers EINVAL.
    pub fn validate(&self) -> Result<(), String> {
        let fam = self.family();
        if let Some(gw) = self.gateway {
            if Family::of(gw) != fam {
                return Err(format!("gateway {gw} is not of the family of {}", self.dst));
            }
        }
        if let Some(src) = self.src {
            if Family::of(src) != fam {
                return Err(format!("source {src} is not of the family of {}", self.dst));
            }
        }
        if self.gateway.is_none() && self.dev.is_none() {
            return Err(format!("route to {} needs a gateway or a device", self.dst));
        }
        if self.onlink && self.gateway.is_none() {
            return Err(format!("onlink route to {} needs a gateway", self.dst));
        }
        if self.table == 0 {
            return Err("table 0 is not a table; use 254 (main) or another number".into());
        }
        Ok(())
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst.trunc())?;
        if let Some(gw) = self.gateway {
            write!(f, " via {gw}")?;
        }
        if let Some(dev) = &self.dev {
            write!(f, " dev {dev}")?;
        }
        if self.table != MAIN_TABLE {
            write!(f, " table {}", self.table)?;
        }
        if let Some(m) = self.metric {
            write!(f, " metric {m}")?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        Ok(())
    }
}

/// A policy routing rule: `ip rule add [from SRC] [to DST] [iif DEV] lookup TABLE pref N`.
///
/// Why: a pod attachment's replies leave through its own interface by a rule "from the
/// public address lookup its table", while the pod's default route stays on eth0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The family (needed when neither `from` nor `to` is set).
    pub family: Family,
    /// Priority (`pref`); `None` lets the kernel pick one on add.
    pub priority: Option<u32>,
    /// Source prefix.
    pub from: Option<IpNet>,
    /// Destination prefix.
    pub to: Option<IpNet>,
    /// Incoming interface name.
    pub iif: Option<String>,
    /// Table to look up.
    pub table: u32,
    /// Protocol (listing only; Berth writes [`BERTH_PROTOCOL`]).
    pub protocol: u8,
}

impl Rule {
    /// `from SRC lookup TABLE pref PRIORITY`. Why: the source-routing rule attachments use.
    pub fn from_source(src: IpNet, table: u32, priority: u32) -> Rule {
        Rule {
            family: Family::of(src.addr()),
            priority: Some(priority),
            from: Some(src),
            to: None,
            iif: None,
            table,
            protocol: BERTH_PROTOCOL,
        }
    }

    /// Same selector and table (priority compared only when both have one).
    pub fn same_as(&self, other: &Rule) -> bool {
        self.family == other.family
            && self.from.map(|n| n.trunc()) == other.from.map(|n| n.trunc())
            && self.to.map(|n| n.trunc()) == other.to.map(|n| n.trunc())
            && self.iif == other.iif
            && self.table == other.table
            && match (self.priority, other.priority) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.priority {
            write!(f, "pref {p} ")?;
        }
        match self.from {
            Some(n) => write!(f, "from {n}")?,
            None => write!(f, "from all")?,
        }
        if let Some(n) = self.to {
            write!(f, " to {n}")?;
        }
        if let Some(d) = &self.iif {
            write!(f, " iif {d}")?;
        }
        write!(f, " lookup {}", self.table)
    }
}

/// Neighbour cache state (NUD_*).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NeighState {
    /// Resolution in progress.
    Incomplete,
    /// Confirmed recently.
    Reachable,
    /// Valid but unconfirmed.
    Stale,
    /// Waiting before probing.
    Delay,
    /// Probing.
    Probe,
    /// Resolution failed.
    Failed,
    /// No ARP needed (e.g. point-to-point).
    Noarp,
    /// Set by hand; never changes.
    Permanent,
    /// No state.
    None,
}

/// A neighbour (ARP/NDP cache) entry.
///
/// Why: tests watch a client's entry switch MACs after a GARP; attachments set permanent
/// entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// The neighbour's IP.
    pub ip: IpAddr,
    /// Interface index.
    pub index: u32,
    /// Its MAC, if resolved.
    pub mac: Option<Mac>,
    /// Cache state.
    pub state: NeighState,
    /// Entry protocol (NDA_PROTOCOL; 0 when unset).
    pub protocol: u8,
}

/// A proxy neighbour entry (`ip neigh add proxy IP dev DEV`).
///
/// Why: with proxy_arp/proxy_ndp the kernel answers for these addresses on that interface,
/// an alternative to Berth's own responder for routed attachments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyEntry {
    /// The address answered for.
    pub ip: IpAddr,
    /// Interface index.
    pub index: u32,
}

/// Macvlan modes. Why: attachments choose how pods on one parent reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacvlanMode {
    /// Macvlans on one parent talk directly (the CNI default).
    Bridge,
    /// Each macvlan only talks to the outside.
    Private,
    /// Traffic between macvlans goes through the outside switch.
    Vepa,
    /// One macvlan owns the parent.
    Passthru,
}

/// Which form a gratuitous ARP takes.
///
/// Why: hosts differ in which they honour; both are in use (arping -U sends requests, -A
/// replies). Linux updates an existing entry on either form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GarpForm {
    /// ARP request with sender IP = target IP (RFC 5227's ARP Announcement).
    Request,
    /// ARP reply with sender IP = target IP and target MAC = sender MAC.
    Reply,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parse_and_display_round_trip() {
        let m: Mac = "02:00:5e:0A:ff:01".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:5e:0a:ff:01");
        for bad in [
            "",
            "02:00",
            "02:00:00:00:00:00:00",
            "0g:00:00:00:00:00",
            "002:0:0:0:0:0",
            "02::00:00:00:00",
        ] {
            let e = bad.parse::<Mac>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
        assert!(Mac::BROADCAST.is_multicast());
        assert!(!m.is_multicast());
    }

    #[test]
    fn route_validation_names_the_problem() {
        let r = Route::to("198.18.1.0/24".parse().unwrap()).via("2001:db8::1".parse().unwrap());
        assert!(r.validate().unwrap_err().contains("2001:db8::1"));
        let r = Route::to("198.18.1.0/24".parse().unwrap());
        assert!(r.validate().unwrap_err().contains("gateway or a device"));
        let r = Route::to("198.18.1.0/24".parse().unwrap())
            .dev("eth0")
            .onlink();
        assert!(r.validate().is_err());
        let r = Route::to("0.0.0.0/0".parse().unwrap())
            .via("198.18.0.1".parse().unwrap())
            .dev("eth0")
            .onlink();
        assert!(r.validate().is_ok());
        assert_eq!(r.to_string(), "0.0.0.0/0 via 198.18.0.1 dev eth0 onlink");
    }

    #[test]
    fn route_keys_use_kernel_default_metrics() {
        let a = Route::to("2001:db8:1::/64".parse().unwrap()).dev("eth0");
        let b = Route::to("2001:db8:1::/64".parse().unwrap())
            .dev("eth1")
            .metric(1024);
        assert!(a.same_key(&b));
        assert!(!a.same_key(&b.clone().metric(5)));
        assert!(!a.same_key(&a.clone().table(100)));
    }
}
