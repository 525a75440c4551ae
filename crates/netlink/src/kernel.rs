//! The real adapter: rtnetlink (netlink-packet-route messages) against one network namespace.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::StreamExt;
use ipnet::IpNet;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressMessage, AddressProtocol, AddressScope,
};
use rtnetlink::packet_route::link::{
    InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMode, State,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{AsyncSocket, SocketAddr, TokioSocket};
use rtnetlink::{LinkMacVlan, LinkMessageBuilder, LinkUnspec, LinkVeth};
use tokio::sync::mpsc;

use crate::error::{Error, ErrorKind, Result};
use crate::netns::Netns;
use crate::traits::{AbortOnDrop, Addresses, LinkWatch, Links, Neighbours, Routes, Rules};
use crate::types::{
    AddrOptions, Address, Family, Link, LinkEvent, Mac, MacvlanMode, NeighState, Neighbour,
    OperState, ProxyEntry, Route, Rule, BERTH_PROTOCOL,
};

const NETLINK_ROUTE: isize = 0;
const RTNLGRP_LINK: u32 = 1;
/// RT_TABLE_COMPAT: what the one-byte table field says when the table is in the attribute.
const TABLE_COMPAT: u8 = 252;

/// The kernel, reached over rtnetlink from one network namespace.
///
/// Why: the one implementation of every trait that talks to Linux. Its netlink socket (and
/// the packet sockets it opens for ARP/NDP) are created inside the namespace it was made for,
/// so it works on a pod's interfaces from any thread while the program stays in its own
/// namespace. Cheap to clone; the connection closes when the last clone is dropped.
#[derive(Clone)]
pub struct Kernel {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    handle: rtnetlink::Handle,
    pub(crate) netns: Option<Netns>,
    _conn: AbortOnDrop,
    pub(crate) responders: Mutex<HashMap<String, crate::l2::Responder>>,
    /// Send-only packet sockets by (ifindex, ethertype), kept open: opening and closing an
    /// AF_PACKET socket costs an RCU grace period in the kernel (milliseconds), which a
    /// takeover's GARPs must not pay.
    pub(crate) senders: Mutex<HashMap<(u32, u16), Arc<crate::raw::PacketSocket>>>,
    /// The gate every answer and announcement passes ([`crate::ArpNdp::set_gate`]).
    pub(crate) gate: Arc<crate::l2::GateSlot>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner.netns {
            Some(ns) => write!(f, "Kernel({})", ns.label()),
            None => write!(f, "Kernel(own namespace)"),
        }
    }
}

/// A netlink failure before context is added.
enum NlError {
    Errno(i32),
    Transport(String),
}

impl Kernel {
    /// Connects to the kernel in the calling thread's network namespace.
    ///
    /// Must be called inside a tokio runtime (the connection runs as a task on it).
    pub fn new() -> Result<Kernel> {
        Kernel::connect(None)
    }

    /// Connects to the kernel inside `netns`: the socket is opened by a short-lived thread
    /// that entered the namespace; no thread of the program changes namespace.
    ///
    /// Must be called inside a tokio runtime.
    pub fn in_netns(netns: &Netns) -> Result<Kernel> {
        Kernel::connect(Some(netns.clone()))
    }

    fn connect(netns: Option<Netns>) -> Result<Kernel> {
        let sock = open_netlink(netns.as_ref(), 0)?;
        let (conn, handle, _unsolicited) = rtnetlink::from_socket(sock);
        let task = tokio::spawn(conn);
        Ok(Kernel {
            inner: Arc::new(Inner {
                handle,
                netns,
                _conn: AbortOnDrop(task),
                responders: Mutex::new(HashMap::new()),
                senders: Mutex::new(HashMap::new()),
                gate: Arc::default(),
            }),
        })
    }

    /// The namespace this kernel handle works in (`None`: the one it was created in).
    pub fn netns(&self) -> Option<&Netns> {
        self.inner.netns.as_ref()
    }

    pub(crate) fn ns_label(&self) -> Option<&str> {
        self.inner.netns.as_ref().map(|n| n.label())
    }

    pub(crate) fn error(
        &self,
        op: &'static str,
        subject: impl Into<String>,
        kind: ErrorKind,
    ) -> Error {
        Error::new(op, subject, self.ns_label(), kind)
    }

    fn nl_error(
        &self,
        op: &'static str,
        subject: impl Into<String>,
        dev: Option<&str>,
        e: NlError,
    ) -> Error {
        let kind = match e {
            NlError::Errno(errno) => ErrorKind::from_errno(errno, dev),
            NlError::Transport(s) => ErrorKind::Transport(s),
        };
        self.error(op, subject, kind)
    }

    async fn request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> std::result::Result<Vec<RouteNetlinkMessage>, NlError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = flags;
        let mut handle = self.inner.handle.clone();
        let mut resp = handle
            .request(req)
            .map_err(|e| NlError::Transport(e.to_string()))?;
        let mut out = Vec::new();
        while let Some(m) = resp.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(x) => out.push(x),
                NetlinkPayload::Error(e) => {
                    if let Some(code) = e.code {
                        return Err(NlError::Errno(code.get().abs()));
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    async fn dump(
        &self,
        msg: RouteNetlinkMessage,
    ) -> std::result::Result<Vec<RouteNetlinkMessage>, NlError> {
        self.request(msg, NLM_F_REQUEST | NLM_F_DUMP).await
    }

    async fn ack(&self, msg: RouteNetlinkMessage, flags: u16) -> std::result::Result<(), NlError> {
        self.request(msg, NLM_F_REQUEST | NLM_F_ACK | flags)
            .await
            .map(|_| ())
    }

    /// The index of `dev`, or [`ErrorKind::NoSuchInterface`].
    pub(crate) async fn index_of(&self, op: &'static str, subject: &str, dev: &str) -> Result<u32> {
        self.get_link(dev)
            .await
            .map(|l| l.index)
            .map_err(|e| self.error(op, subject, e.kind))
    }

    async fn get_link(&self, name: &str) -> Result<Link> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        let out = self
            .request(RouteNetlinkMessage::GetLink(m), NLM_F_REQUEST)
            .await
            .map_err(|e| self.nl_error("looking up link", name, Some(name), e))?;
        out.into_iter()
            .find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(to_link(&l)),
                _ => None,
            })
            .ok_or_else(|| {
                self.error(
                    "looking up link",
                    name,
                    ErrorKind::NoSuchInterface(name.into()),
                )
            })
    }

    async fn index_names(&self) -> Result<HashMap<u32, String>> {
        Ok(self
            .links()
            .await?
            .into_iter()
            .map(|l| (l.index, l.name))
            .collect())
    }

    async fn set_link(
        &self,
        op: &'static str,
        name: &str,
        f: impl FnOnce(LinkMessageBuilder<LinkUnspec>) -> LinkMessageBuilder<LinkUnspec>,
    ) -> Result<()> {
        let idx = self.index_of(op, name, name).await?;
        let msg = f(LinkUnspec::new_with_index(idx)).build();
        self.ack(RouteNetlinkMessage::SetLink(msg), 0)
            .await
            .map_err(|e| self.nl_error(op, name, Some(name), e))
    }

    async fn new_link(&self, op: &'static str, subject: String, msg: LinkMessage) -> Result<()> {
        self.ack(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)
            .await
            .map_err(|e| self.nl_error(op, subject, None, e))
    }

    fn route_msg(&self, r: &Route, oif: Option<u32>, delete: bool) -> RouteMessage {
        let mut m = RouteMessage::default();
        let h = &mut m.header;
        h.address_family = family_of(r.family());
        h.destination_prefix_length = r.dst.prefix_len();
        h.table = if r.table < 256 {
            r.table as u8
        } else {
            TABLE_COMPAT
        };
        h.protocol = RouteProtocol::from(BERTH_PROTOCOL);
        if delete {
            h.scope = RouteScope::NoWhere;
            h.kind = RouteType::Unspec;
        } else {
            h.scope = if r.gateway.is_none() && r.family() == Family::V4 {
                RouteScope::Link
            } else {
                RouteScope::Universe
            };
            h.kind = RouteType::Unicast;
        }
        if r.onlink {
            h.flags |= RouteFlags::Onlink;
        }
        if r.dst.prefix_len() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(
                    r.dst.trunc().addr(),
                )));
        }
        if let Some(gw) = r.gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(i) = oif {
            m.attributes.push(RouteAttribute::Oif(i));
        }
        if let Some(p) = r.metric {
            m.attributes.push(RouteAttribute::Priority(p));
        }
        if let Some(src) = r.src {
            m.attributes
                .push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        m.attributes.push(RouteAttribute::Table(r.table));
        m
    }

    async fn route_oif(&self, op: &'static str, r: &Route) -> Result<Option<u32>> {
        if let Err(why) = r.validate() {
            return Err(self.error(op, r.to_string(), ErrorKind::Invalid(why)));
        }
        match &r.dev {
            Some(d) => Ok(Some(self.index_of(op, &r.to_string(), d).await?)),
            None => Ok(None),
        }
    }

    fn rule_msg(rule: &Rule) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = family_of(rule.family);
        m.header.table = if rule.table < 256 {
            rule.table as u8
        } else {
            0
        };
        m.header.action = RuleAction::ToTable;
        if let Some(n) = rule.from {
            m.header.src_len = n.prefix_len();
            if n.prefix_len() > 0 {
                m.attributes.push(RuleAttribute::Source(n.trunc().addr()));
            }
        }
        if let Some(n) = rule.to {
            m.header.dst_len = n.prefix_len();
            if n.prefix_len() > 0 {
                m.attributes
                    .push(RuleAttribute::Destination(n.trunc().addr()));
            }
        }
        if let Some(d) = &rule.iif {
            m.attributes.push(RuleAttribute::Iifname(d.clone()));
        }
        if let Some(p) = rule.priority {
            m.attributes.push(RuleAttribute::Priority(p));
        }
        m.attributes.push(RuleAttribute::Table(rule.table));
        m.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::from(BERTH_PROTOCOL)));
        m
    }

    fn neigh_msg(family: Family, index: u32, ip: IpAddr, proxy: bool) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header.family = family_of(family);
        m.header.ifindex = index;
        m.header.state = NeighbourState::Permanent;
        if proxy {
            m.header.flags = NeighbourFlags::Proxy;
        }
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
        m
    }
}

/// Opens a NETLINK_ROUTE socket (bound to multicast `groups` if non-zero) inside `netns`,
/// registered with the current tokio runtime.
fn open_netlink(netns: Option<&Netns>, groups: u32) -> Result<TokioSocket> {
    let label = netns.map(|n| n.label());
    let rt = tokio::runtime::Handle::try_current().map_err(|_| {
        Error::new(
            "opening netlink socket",
            "rtnetlink",
            label,
            ErrorKind::Transport("must be called inside a tokio runtime".into()),
        )
    })?;
    let open = move || -> std::io::Result<TokioSocket> {
        let _guard = rt.enter();
        let mut sock = TokioSocket::new(NETLINK_ROUTE)?;
        if groups != 0 {
            sock.socket_mut().bind(&SocketAddr::new(0, groups))?;
        }
        // Large enough that a burst of link notifications does not overrun.
        let _ = sock.socket_mut().set_rx_buf_sz(1 << 20);
        Ok(sock)
    };
    let res = match netns {
        Some(ns) => ns.run(open)?,
        None => open(),
    };
    res.map_err(|e| {
        Error::new(
            "opening netlink socket",
            "rtnetlink",
            label,
            ErrorKind::from_io(e, None),
        )
    })
}

fn family_of(f: Family) -> AddressFamily {
    match f {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

pub(crate) fn to_link(m: &LinkMessage) -> Link {
    let mut link = Link {
        index: m.header.index,
        name: String::new(),
        mac: None,
        admin_up: m.header.flags.contains(LinkFlags::Up),
        lower_up: m.header.flags.contains(LinkFlags::LowerUp),
        oper: OperState::Unknown,
        mtu: 0,
        kind: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(b) => link.mac = Mac::from_slice(b),
            LinkAttribute::Mtu(v) => link.mtu = *v,
            LinkAttribute::OperState(s) => {
                link.oper = match s {
                    State::Up => OperState::Up,
                    State::Down => OperState::Down,
                    State::LowerLayerDown => OperState::LowerLayerDown,
                    State::Dormant => OperState::Dormant,
                    State::Testing => OperState::Testing,
                    State::NotPresent => OperState::NotPresent,
                    _ => OperState::Unknown,
                }
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn to_address(m: &AddressMessage) -> Option<Address> {
    let mut local = None;
    let mut addr = None;
    let mut flags = AddressFlags::from_bits_retain(m.header.flags.bits() as u32);
    let mut protocol = 0u8;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => addr = Some(*ip),
            AddressAttribute::Flags(f) => flags = *f,
            AddressAttribute::Protocol(p) => protocol = u8::from(*p),
            _ => {}
        }
    }
    let ip = local.or(addr)?;
    Some(Address {
        net: IpNet::new(ip, m.header.prefix_len).ok()?,
        index: m.header.index,
        tentative: flags.contains(AddressFlags::Tentative),
        dad_failed: flags.contains(AddressFlags::Dadfailed),
        protocol,
    })
}

fn to_route(m: &RouteMessage, names: &HashMap<u32, String>) -> Option<Route> {
    let fam = match m.header.address_family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        _ => return None,
    };
    if m.header.kind != RouteType::Unicast || m.header.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let mut dst = None;
    let mut r = Route {
        dst: match fam {
            Family::V4 => IpNet::new(IpAddr::from([0u8; 4]), 0).ok()?,
            Family::V6 => IpNet::new(IpAddr::from([0u16; 8]), 0).ok()?,
        },
        gateway: None,
        dev: None,
        table: m.header.table as u32,
        metric: None,
        src: None,
        onlink: m.header.flags.contains(RouteFlags::Onlink),
        protocol: u8::from(m.header.protocol),
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_ip(d),
            RouteAttribute::Gateway(g) => r.gateway = route_ip(g),
            RouteAttribute::Oif(i) => {
                r.dev = Some(names.get(i).cloned().unwrap_or(format!("if{i}")))
            }
            RouteAttribute::Priority(p) => r.metric = Some(*p),
            RouteAttribute::PrefSource(s) => r.src = route_ip(s),
            RouteAttribute::Table(t) => r.table = *t,
            _ => {}
        }
    }
    if let Some(d) = dst {
        r.dst = IpNet::new(d, m.header.destination_prefix_length).ok()?;
    }
    Some(r)
}

fn to_rule(m: &RuleMessage, fam: Family) -> Rule {
    let mut r = Rule {
        family: fam,
        priority: None,
        from: None,
        to: None,
        iif: None,
        table: m.header.table as u32,
        protocol: 0,
    };
    for a in &m.attributes {
        match a {
            RuleAttribute::Source(ip) => r.from = IpNet::new(*ip, m.header.src_len).ok(),
            RuleAttribute::Destination(ip) => r.to = IpNet::new(*ip, m.header.dst_len).ok(),
            RuleAttribute::Iifname(d) => r.iif = Some(d.clone()),
            RuleAttribute::Priority(p) => r.priority = Some(*p),
            RuleAttribute::Table(t) => r.table = *t,
            RuleAttribute::Protocol(p) => r.protocol = u8::from(*p),
            _ => {}
        }
    }
    r
}

fn neigh_ip(m: &NeighbourMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => Some(IpAddr::V4(*v)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => Some(IpAddr::V6(*v)),
        _ => None,
    })
}

fn to_neighbour(m: &NeighbourMessage) -> Option<Neighbour> {
    let ip = neigh_ip(m)?;
    let mut n = Neighbour {
        ip,
        index: m.header.ifindex,
        mac: None,
        state: match m.header.state {
            NeighbourState::Incomplete => NeighState::Incomplete,
            NeighbourState::Reachable => NeighState::Reachable,
            NeighbourState::Stale => NeighState::Stale,
            NeighbourState::Delay => NeighState::Delay,
            NeighbourState::Probe => NeighState::Probe,
            NeighbourState::Failed => NeighState::Failed,
            NeighbourState::Noarp => NeighState::Noarp,
            NeighbourState::Permanent => NeighState::Permanent,
            _ => NeighState::None,
        },
        protocol: 0,
    };
    for a in &m.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(b) => n.mac = Mac::from_slice(b),
            NeighbourAttribute::Protocol(p) => n.protocol = u8::from(*p),
            _ => {}
        }
    }
    Some(n)
}

fn subject_on(x: impl std::fmt::Display, dev: &str) -> String {
    format!("{x} on {dev}")
}

#[async_trait]
impl Addresses for Kernel {
    async fn addresses(&self, dev: &str) -> Result<Vec<Address>> {
        const OP: &str = "listing addresses";
        let idx = self.index_of(OP, dev, dev).await?;
        let out = self
            .dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
            .await
            .map_err(|e| self.nl_error(OP, dev, Some(dev), e))?;
        Ok(out
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == idx => to_address(a),
                _ => None,
            })
            .collect())
    }

    async fn add_address(&self, dev: &str, addr: IpNet, opts: AddrOptions) -> Result<()> {
        const OP: &str = "adding address";
        let subject = subject_on(addr, dev);
        let idx = self.index_of(OP, &subject, dev).await?;
        let mut m = AddressMessage::default();
        m.header.family = family_of(Family::of(addr.addr()));
        m.header.prefix_len = addr.prefix_len();
        m.header.index = idx;
        m.header.scope = AddressScope::Universe;
        let mut flags = AddressFlags::empty();
        if opts.nodad && addr.addr().is_ipv6() {
            flags |= AddressFlags::Nodad;
        }
        if opts.noprefixroute {
            flags |= AddressFlags::Noprefixroute;
        }
        if addr.addr().is_ipv4() {
            m.attributes.push(AddressAttribute::Local(addr.addr()));
        }
        m.attributes.push(AddressAttribute::Address(addr.addr()));
        m.attributes.push(AddressAttribute::Flags(flags));
        m.attributes
            .push(AddressAttribute::Protocol(AddressProtocol::from(
                BERTH_PROTOCOL,
            )));
        match self
            .ack(
                RouteNetlinkMessage::NewAddress(m),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await
        {
            Ok(()) | Err(NlError::Errno(libc::EEXIST)) => Ok(()),
            Err(e) => Err(self.nl_error(OP, subject, Some(dev), e)),
        }
    }

    async fn delete_address(&self, dev: &str, addr: IpNet) -> Result<bool> {
        const OP: &str = "deleting address";
        let subject = subject_on(addr, dev);
        let existing = self.addresses(dev).await?;
        let Some(found) = existing
            .iter()
            .find(|a| a.net.addr() == addr.addr() && a.net.prefix_len() == addr.prefix_len())
        else {
            return Ok(false);
        };
        if found.protocol != BERTH_PROTOCOL {
            return Err(self.error(
                OP,
                subject,
                ErrorKind::Foreign {
                    protocol: found.protocol,
                    berth: BERTH_PROTOCOL,
                },
            ));
        }
        let mut m = AddressMessage::default();
        m.header.family = family_of(Family::of(addr.addr()));
        m.header.prefix_len = addr.prefix_len();
        m.header.index = found.index;
        if addr.addr().is_ipv4() {
            m.attributes.push(AddressAttribute::Local(addr.addr()));
        }
        m.attributes.push(AddressAttribute::Address(addr.addr()));
        match self.ack(RouteNetlinkMessage::DelAddress(m), 0).await {
            Ok(()) => Ok(true),
            Err(NlError::Errno(libc::EADDRNOTAVAIL)) => Ok(false),
            Err(e) => Err(self.nl_error(OP, subject, Some(dev), e)),
        }
    }
}

#[async_trait]
impl Routes for Kernel {
    async fn routes(&self, family: Family, table: u32) -> Result<Vec<Route>> {
        let names = self.index_names().await?;
        let mut m = RouteMessage::default();
        m.header.address_family = family_of(family);
        let out = self
            .dump(RouteNetlinkMessage::GetRoute(m))
            .await
            .map_err(|e| self.nl_error("listing routes", format!("table {table}"), None, e))?;
        Ok(out
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => to_route(r, &names),
                _ => None,
            })
            .filter(|r| r.table == table)
            .collect())
    }

    async fn add_route(&self, route: &Route) -> Result<()> {
        const OP: &str = "adding route";
        let oif = self.route_oif(OP, route).await?;
        let msg = self.route_msg(route, oif, false);
        self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .await
        .map_err(|e| self.nl_error(OP, route.to_string(), route.dev.as_deref(), e))
    }

    async fn replace_route(&self, route: &Route) -> Result<()> {
        const OP: &str = "replacing route";
        let oif = self.route_oif(OP, route).await?;
        let existing = self.routes(route.family(), route.table).await?;
        if let Some(other) = existing
            .iter()
            .find(|r| r.same_key(route) && r.protocol != BERTH_PROTOCOL)
        {
            return Err(self.error(
                OP,
                route.to_string(),
                ErrorKind::Foreign {
                    protocol: other.protocol,
                    berth: BERTH_PROTOCOL,
                },
            ));
        }
        let msg = self.route_msg(route, oif, false);
        self.ack(
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .map_err(|e| self.nl_error(OP, route.to_string(), route.dev.as_deref(), e))
    }

    async fn delete_route(&self, route: &Route) -> Result<bool> {
        const OP: &str = "deleting route";
        // Only table, destination, metric and Berth's protocol: the kernel matches the
        // protocol, so a route someone else made is never the one removed.
        let key = Route {
            gateway: None,
            dev: None,
            src: None,
            onlink: false,
            ..route.clone()
        };
        let msg = self.route_msg(&key, None, true);
        match self.ack(RouteNetlinkMessage::DelRoute(msg), 0).await {
            Ok(()) => Ok(true),
            Err(NlError::Errno(libc::ESRCH | libc::ENOENT)) => Ok(false),
            Err(e) => Err(self.nl_error(OP, route.to_string(), None, e)),
        }
    }

    async fn flush_routes(&self, family: Family, table: u32) -> Result<usize> {
        let mine: Vec<Route> = self
            .routes(family, table)
            .await?
            .into_iter()
            .filter(|r| r.protocol == BERTH_PROTOCOL)
            .collect();
        let mut n = 0;
        for r in &mine {
            let key = Route {
                metric: Some(r.effective_metric()),
                ..r.clone()
            };
            if self.delete_route(&key).await? {
                n += 1;
            }
        }
        Ok(n)
    }
}

#[async_trait]
impl Rules for Kernel {
    async fn rules(&self, family: Family) -> Result<Vec<Rule>> {
        let mut m = RuleMessage::default();
        m.header.family = family_of(family);
        let out = self
            .dump(RouteNetlinkMessage::GetRule(m))
            .await
            .map_err(|e| self.nl_error("listing rules", format!("{family:?}"), None, e))?;
        Ok(out
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => Some(to_rule(r, family)),
                _ => None,
            })
            .collect())
    }

    async fn add_rule(&self, rule: &Rule) -> Result<()> {
        if let Some(ip) = rule.from.map(|n| n.addr()).or(rule.to.map(|n| n.addr())) {
            if Family::of(ip) != rule.family {
                return Err(self.error(
                    "adding rule",
                    rule.to_string(),
                    ErrorKind::Invalid(format!(
                        "{ip} is not of the rule's family {:?}",
                        rule.family
                    )),
                ));
            }
        }
        match self
            .ack(
                RouteNetlinkMessage::NewRule(Self::rule_msg(rule)),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await
        {
            Ok(()) | Err(NlError::Errno(libc::EEXIST)) => Ok(()),
            Err(e) => Err(self.nl_error("adding rule", rule.to_string(), None, e)),
        }
    }

    async fn delete_rule(&self, rule: &Rule) -> Result<bool> {
        match self
            .ack(RouteNetlinkMessage::DelRule(Self::rule_msg(rule)), 0)
            .await
        {
            Ok(()) => Ok(true),
            Err(NlError::Errno(libc::ENOENT | libc::ESRCH)) => Ok(false),
            Err(e) => Err(self.nl_error("deleting rule", rule.to_string(), None, e)),
        }
    }
}

#[async_trait]
impl Neighbours for Kernel {
    async fn neighbours(&self, family: Family, dev: Option<&str>) -> Result<Vec<Neighbour>> {
        const OP: &str = "listing neighbours";
        let idx = match dev {
            Some(d) => Some(self.index_of(OP, d, d).await?),
            None => None,
        };
        let mut m = NeighbourMessage::default();
        m.header.family = family_of(family);
        let out = self
            .dump(RouteNetlinkMessage::GetNeighbour(m))
            .await
            .map_err(|e| self.nl_error(OP, dev.unwrap_or("all links"), dev, e))?;
        Ok(out
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n)
                    if !n.header.flags.contains(NeighbourFlags::Proxy)
                        && idx.is_none_or(|i| n.header.ifindex == i) =>
                {
                    to_neighbour(n)
                }
                _ => None,
            })
            .collect())
    }

    async fn set_permanent(&self, dev: &str, ip: IpAddr, mac: Mac) -> Result<()> {
        const OP: &str = "setting permanent neighbour";
        let subject = format!("{ip} lladdr {mac} on {dev}");
        let idx = self.index_of(OP, &subject, dev).await?;
        let mut m = Self::neigh_msg(Family::of(ip), idx, ip, false);
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        m.attributes
            .push(NeighbourAttribute::Protocol(RouteProtocol::from(
                BERTH_PROTOCOL,
            )));
        self.ack(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .map_err(|e| self.nl_error(OP, subject, Some(dev), e))
    }

    async fn delete_neighbour(&self, dev: &str, ip: IpAddr) -> Result<bool> {
        const OP: &str = "deleting neighbour";
        let subject = subject_on(ip, dev);
        let idx = self.index_of(OP, &subject, dev).await?;
        let m = Self::neigh_msg(Family::of(ip), idx, ip, false);
        match self.ack(RouteNetlinkMessage::DelNeighbour(m), 0).await {
            Ok(()) => Ok(true),
            Err(NlError::Errno(libc::ENOENT)) => Ok(false),
            Err(e) => Err(self.nl_error(OP, subject, Some(dev), e)),
        }
    }

    async fn proxies(&self, family: Family) -> Result<Vec<ProxyEntry>> {
        let mut m = NeighbourMessage::default();
        m.header.family = family_of(family);
        m.header.flags = NeighbourFlags::Proxy;
        let out = self
            .dump(RouteNetlinkMessage::GetNeighbour(m))
            .await
            .map_err(|e| self.nl_error("listing proxy entries", format!("{family:?}"), None, e))?;
        Ok(out
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n)
                    if n.header.flags.contains(NeighbourFlags::Proxy) =>
                {
                    Some(ProxyEntry {
                        ip: neigh_ip(n)?,
                        index: n.header.ifindex,
                    })
                }
                _ => None,
            })
            .collect())
    }

    async fn add_proxy(&self, dev: &str, ip: IpAddr) -> Result<()> {
        const OP: &str = "adding proxy entry";
        let subject = subject_on(ip, dev);
        let idx = self.index_of(OP, &subject, dev).await?;
        let mut m = Self::neigh_msg(Family::of(ip), idx, ip, true);
        m.attributes
            .push(NeighbourAttribute::Protocol(RouteProtocol::from(
                BERTH_PROTOCOL,
            )));
        self.ack(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .map_err(|e| self.nl_error(OP, subject, Some(dev), e))
    }

    async fn delete_proxy(&self, dev: &str, ip: IpAddr) -> Result<bool> {
        const OP: &str = "deleting proxy entry";
        let subject = subject_on(ip, dev);
        let idx = self.index_of(OP, &subject, dev).await?;
        let m = Self::neigh_msg(Family::of(ip), idx, ip, true);
        match self.ack(RouteNetlinkMessage::DelNeighbour(m), 0).await {
            Ok(()) => Ok(true),
            Err(NlError::Errno(libc::ENOENT)) => Ok(false),
            Err(e) => Err(self.nl_error(OP, subject, Some(dev), e)),
        }
    }
}

#[async_trait]
impl Links for Kernel {
    async fn link(&self, name: &str) -> Result<Link> {
        self.get_link(name).await
    }

    async fn links(&self) -> Result<Vec<Link>> {
        let out = self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .await
            .map_err(|e| self.nl_error("listing links", "all", None, e))?;
        Ok(out
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(to_link(l)),
                _ => None,
            })
            .collect())
    }

    async fn set_up(&self, name: &str, up: bool) -> Result<()> {
        let op = if up {
            "setting link up"
        } else {
            "setting link down"
        };
        self.set_link(op, name, |b| if up { b.up() } else { b.down() })
            .await
    }

    async fn set_mac(&self, name: &str, mac: Mac) -> Result<()> {
        self.set_link("setting MAC", name, |b| b.address(mac.0.to_vec()))
            .await
    }

    async fn rename(&self, name: &str, new_name: &str) -> Result<()> {
        if new_name.is_empty() || new_name.len() > 15 || new_name.contains(['/', ' ', ':']) {
            return Err(self.error(
                "renaming link",
                name,
                ErrorKind::Invalid(format!(
                    "`{new_name}` is not an interface name (1-15 characters, no '/', ':' or space)"
                )),
            ));
        }
        self.set_link("renaming link", name, |b| b.name(new_name))
            .await
    }

    async fn add_veth(&self, name: &str, peer: &str, peer_netns: Option<&Netns>) -> Result<()> {
        let mut p = LinkUnspec::new_with_name(peer);
        if let Some(ns) = peer_netns {
            p = p.setns_by_fd(ns.as_raw_fd());
        }
        let msg = LinkVeth::new(name, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(p.build())))
            .build();
        let subject = match peer_netns {
            Some(ns) => format!("veth {name} (peer {peer} in {})", ns.label()),
            None => format!("veth {name} (peer {peer})"),
        };
        self.new_link("creating link", subject, msg).await
    }

    async fn add_macvlan(
        &self,
        name: &str,
        parent: &str,
        mode: MacvlanMode,
        netns: Option<&Netns>,
    ) -> Result<()> {
        let subject = format!("macvlan {name} on {parent}");
        let pidx = self.index_of("creating link", &subject, parent).await?;
        let mode = match mode {
            MacvlanMode::Bridge => MacVlanMode::Bridge,
            MacvlanMode::Private => MacVlanMode::Private,
            MacvlanMode::Vepa => MacVlanMode::Vepa,
            MacvlanMode::Passthru => MacVlanMode::Passthrough,
        };
        let mut b = LinkMacVlan::new(name, pidx, mode);
        if let Some(ns) = netns {
            b = b.setns_by_fd(ns.as_raw_fd());
        }
        self.new_link("creating link", subject, b.build()).await
    }

    async fn move_to_netns(&self, name: &str, netns: &Netns) -> Result<()> {
        self.set_link("moving link to another namespace", name, |b| {
            b.setns_by_fd(netns.as_raw_fd())
        })
        .await
    }

    async fn delete_link(&self, name: &str) -> Result<bool> {
        let idx = match self.get_link(name).await {
            Ok(l) => l.index,
            Err(e) if matches!(e.kind, ErrorKind::NoSuchInterface(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut m = LinkMessage::default();
        m.header.index = idx;
        match self.ack(RouteNetlinkMessage::DelLink(m), 0).await {
            Ok(()) => Ok(true),
            Err(NlError::Errno(libc::ENODEV)) => Ok(false),
            Err(e) => Err(self.nl_error("deleting link", name, Some(name), e)),
        }
    }

    async fn watch(&self) -> Result<LinkWatch> {
        // Subscribe first, then snapshot: a change between the two is queued, not lost.
        let sock = open_netlink(self.inner.netns.as_ref(), 1 << (RTNLGRP_LINK - 1))?;
        let (conn, _handle, mut messages) = rtnetlink::from_socket(sock);
        let (tx, rx) = mpsc::channel(256);
        let me = self.clone();
        let task = tokio::spawn(async move {
            let _conn = AbortOnDrop(tokio::spawn(conn));
            if !snapshot(&me, &tx).await {
                return;
            }
            while let Some((msg, _)) = messages.next().await {
                let ev = match msg.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                        LinkEvent::Changed(to_link(&l))
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                        let l = to_link(&l);
                        LinkEvent::Removed {
                            index: l.index,
                            name: l.name,
                        }
                    }
                    NetlinkPayload::Overrun(_) => {
                        if tx.send(LinkEvent::Resync).await.is_err() || !snapshot(&me, &tx).await {
                            return;
                        }
                        continue;
                    }
                    _ => continue,
                };
                if tx.send(ev).await.is_err() {
                    return;
                }
            }
        });
        Ok(LinkWatch::new(rx, Some(task)))
    }
}

/// Sends a `Changed` event for every link; false when the watch is gone or the dump failed.
async fn snapshot(k: &Kernel, tx: &mpsc::Sender<LinkEvent>) -> bool {
    let Ok(links) = k.links().await else {
        return false;
    };
    for l in links {
        if tx.send(LinkEvent::Changed(l)).await.is_err() {
            return false;
        }
    }
    true
}
