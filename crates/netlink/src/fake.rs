//! A recording fake of every trait, for unit tests of announcer, agent and attachment logic.
//!
//! [`FakeKernel`] keeps links, addresses, routes, rules and neighbours in memory with the
//! kernel's semantics that matter to callers (unknown interface → `NoSuchInterface`, Berth
//! never touches routes or addresses it did not make, idempotent adds, rename needs the link
//! down), records every call with the (tokio) time it was made, lets a test script the world
//! (carrier loss, link removal, a host answering a probe) and inject one-shot failures.
//!
//! ```
//! # tokio_test_block_on(async {
//! use berth_netlink::fake::{Call, FakeKernel};
//! use berth_netlink::{ArpNdp, LinkEvent, Links};
//! let k = FakeKernel::new();
//! k.add_link("eth0", "02:00:00:00:00:01".parse().unwrap());
//! let mut watch = k.watch().await.unwrap();
//! while watch.try_next().is_some() {} // the initial snapshot
//! k.set_carrier("eth0", false);       // the cable is pulled
//! assert!(matches!(watch.next().await, Some(LinkEvent::Changed(l)) if !l.is_running()));
//! k.announce("eth0", "198.18.0.200".parse().unwrap()).await.unwrap();
//! assert_eq!(k.calls().iter().filter(|c| c.op() == "send_garp").count(), 2);
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ipnet::IpNet;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::netns::Netns;
use crate::traits::{Addresses, ArpNdp, Gate, LinkWatch, Links, Neighbours, Routes, Rules};
use crate::types::{
    AddrOptions, Address, Family, GarpForm, Link, LinkEvent, Mac, MacvlanMode, NeighState,
    Neighbour, OperState, ProxyEntry, Route, Rule, BERTH_PROTOCOL,
};

/// One recorded call, with its arguments.
///
/// Why: tests assert what the code under test asked of the kernel, and in which order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Call {
    Addresses {
        dev: String,
    },
    AddAddress {
        dev: String,
        addr: IpNet,
        opts: AddrOptions,
    },
    DeleteAddress {
        dev: String,
        addr: IpNet,
    },
    Routes {
        family: Family,
        table: u32,
    },
    AddRoute(Route),
    ReplaceRoute(Route),
    DeleteRoute(Route),
    FlushRoutes {
        family: Family,
        table: u32,
    },
    Rules {
        family: Family,
    },
    AddRule(Rule),
    DeleteRule(Rule),
    Neighbours {
        family: Family,
        dev: Option<String>,
    },
    SetPermanent {
        dev: String,
        ip: IpAddr,
        mac: Mac,
    },
    DeleteNeighbour {
        dev: String,
        ip: IpAddr,
    },
    Proxies {
        family: Family,
    },
    AddProxy {
        dev: String,
        ip: IpAddr,
    },
    DeleteProxy {
        dev: String,
        ip: IpAddr,
    },
    Link {
        name: String,
    },
    Links,
    SetUp {
        name: String,
        up: bool,
    },
    SetMac {
        name: String,
        mac: Mac,
    },
    Rename {
        name: String,
        new_name: String,
    },
    AddVeth {
        name: String,
        peer: String,
        peer_netns: Option<String>,
    },
    AddMacvlan {
        name: String,
        parent: String,
        mode: MacvlanMode,
        netns: Option<String>,
    },
    MoveToNetns {
        name: String,
        netns: String,
    },
    DeleteLink {
        name: String,
    },
    Watch,
    SendGarp {
        dev: String,
        ip: IpAddr,
        form: GarpForm,
    },
    SendUnsolicitedNa {
        dev: String,
        ip: IpAddr,
    },
    SendUdpVia {
        dev: String,
        via: Mac,
        from: std::net::SocketAddr,
        to: std::net::SocketAddr,
        len: usize,
    },
    Probe {
        dev: String,
        ip: IpAddr,
        wait: Duration,
    },
    Answer {
        dev: String,
        ips: BTreeSet<IpAddr>,
    },
    Answered {
        dev: String,
    },
    SetGate {
        installed: bool,
    },
}

impl Call {
    /// The trait method's name (`"add_address"`, `"send_garp"`, …).
    ///
    /// Why: count or filter calls, and name the operation in [`FakeKernel::fail_next`].
    pub fn op(&self) -> &'static str {
        match self {
            Call::Addresses { .. } => "addresses",
            Call::AddAddress { .. } => "add_address",
            Call::DeleteAddress { .. } => "delete_address",
            Call::Routes { .. } => "routes",
            Call::AddRoute(_) => "add_route",
            Call::ReplaceRoute(_) => "replace_route",
            Call::DeleteRoute(_) => "delete_route",
            Call::FlushRoutes { .. } => "flush_routes",
            Call::Rules { .. } => "rules",
            Call::AddRule(_) => "add_rule",
            Call::DeleteRule(_) => "delete_rule",
            Call::Neighbours { .. } => "neighbours",
            Call::SetPermanent { .. } => "set_permanent",
            Call::DeleteNeighbour { .. } => "delete_neighbour",
            Call::Proxies { .. } => "proxies",
            Call::AddProxy { .. } => "add_proxy",
            Call::DeleteProxy { .. } => "delete_proxy",
            Call::Link { .. } => "link",
            Call::Links => "links",
            Call::SetUp { .. } => "set_up",
            Call::SetMac { .. } => "set_mac",
            Call::Rename { .. } => "rename",
            Call::AddVeth { .. } => "add_veth",
            Call::AddMacvlan { .. } => "add_macvlan",
            Call::MoveToNetns { .. } => "move_to_netns",
            Call::DeleteLink { .. } => "delete_link",
            Call::Watch => "watch",
            Call::SendGarp { .. } => "send_garp",
            Call::SendUnsolicitedNa { .. } => "send_unsolicited_na",
            Call::SendUdpVia { .. } => "send_udp_via",
            Call::Probe { .. } => "probe",
            Call::Answer { .. } => "answer",
            Call::Answered { .. } => "answered",
            Call::SetGate { .. } => "set_gate",
        }
    }
}

/// What the fake holds, as a test reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeState {
    /// Links by index.
    pub links: BTreeMap<u32, Link>,
    /// Addresses (each with its link index).
    pub addresses: Vec<Address>,
    /// Routes, Berth's and others'.
    pub routes: Vec<Route>,
    /// Rules.
    pub rules: Vec<Rule>,
    /// Neighbour entries.
    pub neighbours: Vec<Neighbour>,
    /// Proxy entries.
    pub proxies: Vec<ProxyEntry>,
    /// Addresses answered for, by interface name.
    pub answered: BTreeMap<String, BTreeSet<IpAddr>>,
}

#[derive(Default)]
struct Inner {
    state: FakeState,
    next_index: u32,
    probe_answers: HashMap<IpAddr, Mac>,
    failures: VecDeque<(&'static str, ErrorKind)>,
    watchers: Vec<mpsc::Sender<LinkEvent>>,
    calls: Vec<(Instant, Call)>,
    gate: Option<Arc<dyn Gate>>,
}

impl Inner {
    fn by_name(&self, name: &str) -> Option<&Link> {
        self.state.links.values().find(|l| l.name == name)
    }

    fn index(&self, op: &'static str, subject: &str, dev: &str) -> Result<u32> {
        self.by_name(dev)
            .map(|l| l.index)
            .ok_or_else(|| fake_err(op, subject, ErrorKind::NoSuchInterface(dev.to_string())))
    }

    fn emit(&mut self, ev: LinkEvent) {
        self.watchers.retain(|w| match w.try_send(ev.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    fn update_link(&mut self, index: u32, f: impl FnOnce(&mut Link)) {
        if let Some(l) = self.state.links.get_mut(&index) {
            f(l);
            l.oper = if l.admin_up && l.lower_up {
                OperState::Up
            } else {
                OperState::Down
            };
            let l = l.clone();
            self.emit(LinkEvent::Changed(l));
        }
    }

    fn new_link(&mut self, name: &str, mac: Option<Mac>, kind: &str) -> Result<u32> {
        if self.by_name(name).is_some() {
            return Err(fake_err("creating link", name, ErrorKind::Exists));
        }
        self.next_index += 1;
        let index = self.next_index;
        let link = Link {
            index,
            name: name.to_string(),
            mac,
            admin_up: false,
            lower_up: true,
            oper: OperState::Down,
            mtu: 1500,
            kind: Some(kind.to_string()),
        };
        self.state.links.insert(index, link.clone());
        self.emit(LinkEvent::Changed(link));
        Ok(index)
    }

    fn remove_link(&mut self, index: u32) {
        if let Some(l) = self.state.links.remove(&index) {
            self.state.addresses.retain(|a| a.index != index);
            self.state.neighbours.retain(|n| n.index != index);
            self.state.proxies.retain(|p| p.index != index);
            self.state
                .routes
                .retain(|r| r.dev.as_deref() != Some(l.name.as_str()));
            self.state.answered.remove(&l.name);
            self.emit(LinkEvent::Removed {
                index,
                name: l.name,
            });
        }
    }
}

fn gate_check(g: &Inner, op: &'static str, subject: &str, ip: IpAddr) -> Result<()> {
    match &g.gate {
        Some(gate) if !gate.allows(ip) => Err(fake_err(op, subject, ErrorKind::Gated)),
        _ => Ok(()),
    }
}

fn fake_err(op: &'static str, subject: impl Into<String>, kind: ErrorKind) -> Error {
    Error::new(op, subject, None, kind)
}

/// An in-memory kernel that records every call. Cheap to clone (clones share state).
#[derive(Clone)]
pub struct FakeKernel {
    inner: Arc<Mutex<Inner>>,
}

impl Default for FakeKernel {
    fn default() -> Self {
        FakeKernel::new()
    }
}

impl std::fmt::Debug for FakeKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeKernel")
            .field("state", &self.state())
            .finish()
    }
}

impl FakeKernel {
    /// A fake with only `lo` (index 1, up).
    pub fn new() -> FakeKernel {
        let mut inner = Inner {
            next_index: 1,
            ..Inner::default()
        };
        inner.state.links.insert(
            1,
            Link {
                index: 1,
                name: "lo".into(),
                mac: Some(Mac::ZERO),
                admin_up: true,
                lower_up: true,
                oper: OperState::Unknown,
                mtu: 65536,
                kind: None,
            },
        );
        FakeKernel {
            inner: Arc::new(Mutex::new(inner)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `call` and returns the failure scripted for its op, if any.
    fn begin(&self, call: Call) -> Result<std::sync::MutexGuard<'_, Inner>> {
        let mut g = self.lock();
        let op = call.op();
        g.calls.push((Instant::now(), call));
        if let Some(pos) = g.failures.iter().position(|(o, _)| *o == op) {
            if let Some((_, kind)) = g.failures.remove(pos) {
                return Err(fake_err(op, "(scripted failure)", kind));
            }
        }
        Ok(g)
    }

    // ---- scripting the world (not recorded as calls) ----

    /// Adds an Ethernet link, up with carrier; returns its index.
    pub fn add_link(&self, name: &str, mac: Mac) -> u32 {
        let mut g = self.lock();
        let idx = match g.by_name(name) {
            Some(l) => l.index,
            None => g.new_link(name, Some(mac), "veth").unwrap_or_default(),
        };
        g.update_link(idx, |l| {
            l.mac = Some(mac);
            l.admin_up = true;
            l.lower_up = true;
        });
        idx
    }

    /// Sets a link's carrier (IFF_LOWER_UP), as a cable pull or a peer going down does.
    /// Watches see a `Changed` event.
    pub fn set_carrier(&self, name: &str, carrier: bool) {
        let mut g = self.lock();
        if let Some(idx) = g.by_name(name).map(|l| l.index) {
            g.update_link(idx, |l| l.lower_up = carrier);
        }
    }

    /// Sets a link administratively up or down from outside the code under test.
    pub fn set_admin(&self, name: &str, up: bool) {
        let mut g = self.lock();
        if let Some(idx) = g.by_name(name).map(|l| l.index) {
            g.update_link(idx, |l| l.admin_up = up);
        }
    }

    /// Removes a link (and what was on it); watches see `Removed`.
    pub fn remove_link(&self, name: &str) {
        let mut g = self.lock();
        if let Some(idx) = g.by_name(name).map(|l| l.index) {
            g.remove_link(idx);
        }
    }

    /// Puts a route into the table as someone else would (with its own `protocol`).
    pub fn insert_route(&self, route: Route) {
        self.lock().state.routes.push(route);
    }

    /// Puts an address on `dev` as someone else would (`protocol` 0 for `ip addr add`).
    pub fn insert_address(&self, dev: &str, net: IpNet, protocol: u8) {
        let mut g = self.lock();
        if let Some(index) = g.by_name(dev).map(|l| l.index) {
            g.state.addresses.push(Address {
                net,
                index,
                tentative: false,
                dad_failed: false,
                protocol,
            });
        }
    }

    /// Puts a neighbour entry in the table (as traffic would).
    pub fn insert_neighbour(&self, dev: &str, ip: IpAddr, mac: Mac, state: NeighState) {
        let mut g = self.lock();
        if let Some(index) = g.by_name(dev).map(|l| l.index) {
            g.state
                .neighbours
                .retain(|n| !(n.index == index && n.ip == ip));
            g.state.neighbours.push(Neighbour {
                ip,
                index,
                mac: Some(mac),
                state,
                protocol: 0,
            });
        }
    }

    /// Whether the responder would answer an ARP request or NS for `ip` arriving on `dev`
    /// now: `ip` is in the answered set and the installed gate (if any) allows it.
    ///
    /// Why: lets announcer tests check answer-time fencing without a wire. Not recorded.
    pub fn would_answer(&self, dev: &str, ip: IpAddr) -> bool {
        let g = self.lock();
        g.state.answered.get(dev).is_some_and(|s| s.contains(&ip))
            && g.gate.as_ref().is_none_or(|gate| gate.allows(ip))
    }

    /// Makes a host with `mac` answer probes for `ip` (`None`: no one answers).
    pub fn set_probe_answer(&self, ip: IpAddr, mac: Option<Mac>) {
        let mut g = self.lock();
        match mac {
            Some(m) => g.probe_answers.insert(ip, m),
            None => g.probe_answers.remove(&ip),
        };
    }

    /// Makes the next call of trait method `op` (see [`Call::op`]) fail with `kind`.
    pub fn fail_next(&self, op: &'static str, kind: ErrorKind) {
        self.lock().failures.push_back((op, kind));
    }

    // ---- reading what happened ----

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.iter().map(|(_, c)| c.clone()).collect()
    }

    /// Every call with the tokio time it was made (for paused-clock timing assertions).
    pub fn timed_calls(&self) -> Vec<(Instant, Call)> {
        self.lock().calls.clone()
    }

    /// Every call so far, clearing the record.
    pub fn take_calls(&self) -> Vec<Call> {
        self.lock().calls.drain(..).map(|(_, c)| c).collect()
    }

    /// A copy of what the fake holds.
    pub fn state(&self) -> FakeState {
        self.lock().state.clone()
    }
}

#[async_trait]
impl Addresses for FakeKernel {
    async fn addresses(&self, dev: &str) -> Result<Vec<Address>> {
        let g = self.begin(Call::Addresses { dev: dev.into() })?;
        let idx = g.index("listing addresses", dev, dev)?;
        Ok(g.state
            .addresses
            .iter()
            .filter(|a| a.index == idx)
            .cloned()
            .collect())
    }

    async fn add_address(&self, dev: &str, addr: IpNet, opts: AddrOptions) -> Result<()> {
        let mut g = self.begin(Call::AddAddress {
            dev: dev.into(),
            addr,
            opts,
        })?;
        let index = g.index("adding address", &format!("{addr} on {dev}"), dev)?;
        if !g
            .state
            .addresses
            .iter()
            .any(|a| a.index == index && a.net == addr)
        {
            g.state.addresses.push(Address {
                net: addr,
                index,
                tentative: false,
                dad_failed: false,
                protocol: BERTH_PROTOCOL,
            });
        }
        Ok(())
    }

    async fn delete_address(&self, dev: &str, addr: IpNet) -> Result<bool> {
        let mut g = self.begin(Call::DeleteAddress {
            dev: dev.into(),
            addr,
        })?;
        let subject = format!("{addr} on {dev}");
        let index = g.index("deleting address", &subject, dev)?;
        let Some(pos) = g
            .state
            .addresses
            .iter()
            .position(|a| a.index == index && a.net == addr)
        else {
            return Ok(false);
        };
        let protocol = g.state.addresses[pos].protocol;
        if protocol != BERTH_PROTOCOL {
            return Err(fake_err(
                "deleting address",
                subject,
                ErrorKind::Foreign {
                    protocol,
                    berth: BERTH_PROTOCOL,
                },
            ));
        }
        g.state.addresses.remove(pos);
        Ok(true)
    }
}

fn check_route(g: &Inner, op: &'static str, r: &Route) -> Result<()> {
    r.validate()
        .map_err(|why| fake_err(op, r.to_string(), ErrorKind::Invalid(why)))?;
    if let Some(d) = &r.dev {
        g.index(op, &r.to_string(), d)?;
    }
    Ok(())
}

fn berth(mut r: Route) -> Route {
    r.protocol = BERTH_PROTOCOL;
    r
}

#[async_trait]
impl Routes for FakeKernel {
    async fn routes(&self, family: Family, table: u32) -> Result<Vec<Route>> {
        let g = self.begin(Call::Routes { family, table })?;
        Ok(g.state
            .routes
            .iter()
            .filter(|r| r.family() == family && r.table == table)
            .cloned()
            .collect())
    }

    async fn add_route(&self, route: &Route) -> Result<()> {
        let mut g = self.begin(Call::AddRoute(route.clone()))?;
        check_route(&g, "adding route", route)?;
        if g.state.routes.iter().any(|r| r.same_key(route)) {
            return Err(fake_err(
                "adding route",
                route.to_string(),
                ErrorKind::Exists,
            ));
        }
        g.state.routes.push(berth(route.clone()));
        Ok(())
    }

    async fn replace_route(&self, route: &Route) -> Result<()> {
        let mut g = self.begin(Call::ReplaceRoute(route.clone()))?;
        check_route(&g, "replacing route", route)?;
        if let Some(other) = g
            .state
            .routes
            .iter()
            .find(|r| r.same_key(route) && r.protocol != BERTH_PROTOCOL)
        {
            return Err(fake_err(
                "replacing route",
                route.to_string(),
                ErrorKind::Foreign {
                    protocol: other.protocol,
                    berth: BERTH_PROTOCOL,
                },
            ));
        }
        g.state.routes.retain(|r| !r.same_key(route));
        g.state.routes.push(berth(route.clone()));
        Ok(())
    }

    async fn delete_route(&self, route: &Route) -> Result<bool> {
        let mut g = self.begin(Call::DeleteRoute(route.clone()))?;
        let pos = g.state.routes.iter().position(|r| {
            r.protocol == BERTH_PROTOCOL
                && r.table == route.table
                && r.dst.trunc() == route.dst.trunc()
                && route
                    .metric
                    .is_none_or(|_| r.effective_metric() == route.effective_metric())
        });
        Ok(match pos {
            Some(p) => {
                g.state.routes.remove(p);
                true
            }
            None => false,
        })
    }

    async fn flush_routes(&self, family: Family, table: u32) -> Result<usize> {
        let mut g = self.begin(Call::FlushRoutes { family, table })?;
        let before = g.state.routes.len();
        g.state.routes.retain(|r| {
            !(r.protocol == BERTH_PROTOCOL && r.family() == family && r.table == table)
        });
        Ok(before - g.state.routes.len())
    }
}

#[async_trait]
impl Rules for FakeKernel {
    async fn rules(&self, family: Family) -> Result<Vec<Rule>> {
        let g = self.begin(Call::Rules { family })?;
        Ok(g.state
            .rules
            .iter()
            .filter(|r| r.family == family)
            .cloned()
            .collect())
    }

    async fn add_rule(&self, rule: &Rule) -> Result<()> {
        let mut g = self.begin(Call::AddRule(rule.clone()))?;
        if !g.state.rules.iter().any(|r| r.same_as(rule)) {
            let mut r = rule.clone();
            r.protocol = BERTH_PROTOCOL;
            g.state.rules.push(r);
        }
        Ok(())
    }

    async fn delete_rule(&self, rule: &Rule) -> Result<bool> {
        let mut g = self.begin(Call::DeleteRule(rule.clone()))?;
        match g
            .state
            .rules
            .iter()
            .position(|r| r.protocol == BERTH_PROTOCOL && r.same_as(rule))
        {
            Some(p) => {
                g.state.rules.remove(p);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

#[async_trait]
impl Neighbours for FakeKernel {
    async fn neighbours(&self, family: Family, dev: Option<&str>) -> Result<Vec<Neighbour>> {
        let g = self.begin(Call::Neighbours {
            family,
            dev: dev.map(str::to_string),
        })?;
        let idx = match dev {
            Some(d) => Some(g.index("listing neighbours", d, d)?),
            None => None,
        };
        Ok(g.state
            .neighbours
            .iter()
            .filter(|n| Family::of(n.ip) == family && idx.is_none_or(|i| n.index == i))
            .cloned()
            .collect())
    }

    async fn set_permanent(&self, dev: &str, ip: IpAddr, mac: Mac) -> Result<()> {
        let mut g = self.begin(Call::SetPermanent {
            dev: dev.into(),
            ip,
            mac,
        })?;
        let index = g.index(
            "setting permanent neighbour",
            &format!("{ip} on {dev}"),
            dev,
        )?;
        g.state
            .neighbours
            .retain(|n| !(n.index == index && n.ip == ip));
        g.state.neighbours.push(Neighbour {
            ip,
            index,
            mac: Some(mac),
            state: NeighState::Permanent,
            protocol: BERTH_PROTOCOL,
        });
        Ok(())
    }

    async fn delete_neighbour(&self, dev: &str, ip: IpAddr) -> Result<bool> {
        let mut g = self.begin(Call::DeleteNeighbour {
            dev: dev.into(),
            ip,
        })?;
        let index = g.index("deleting neighbour", &format!("{ip} on {dev}"), dev)?;
        let before = g.state.neighbours.len();
        g.state
            .neighbours
            .retain(|n| !(n.index == index && n.ip == ip));
        Ok(before != g.state.neighbours.len())
    }

    async fn proxies(&self, family: Family) -> Result<Vec<ProxyEntry>> {
        let g = self.begin(Call::Proxies { family })?;
        Ok(g.state
            .proxies
            .iter()
            .filter(|p| Family::of(p.ip) == family)
            .cloned()
            .collect())
    }

    async fn add_proxy(&self, dev: &str, ip: IpAddr) -> Result<()> {
        let mut g = self.begin(Call::AddProxy {
            dev: dev.into(),
            ip,
        })?;
        let index = g.index("adding proxy entry", &format!("{ip} on {dev}"), dev)?;
        if !g
            .state
            .proxies
            .iter()
            .any(|p| p.index == index && p.ip == ip)
        {
            g.state.proxies.push(ProxyEntry { ip, index });
        }
        Ok(())
    }

    async fn delete_proxy(&self, dev: &str, ip: IpAddr) -> Result<bool> {
        let mut g = self.begin(Call::DeleteProxy {
            dev: dev.into(),
            ip,
        })?;
        let index = g.index("deleting proxy entry", &format!("{ip} on {dev}"), dev)?;
        let before = g.state.proxies.len();
        g.state
            .proxies
            .retain(|p| !(p.index == index && p.ip == ip));
        Ok(before != g.state.proxies.len())
    }
}

#[async_trait]
impl Links for FakeKernel {
    async fn link(&self, name: &str) -> Result<Link> {
        let g = self.begin(Call::Link { name: name.into() })?;
        let idx = g.index("looking up link", name, name)?;
        Ok(g.state.links[&idx].clone())
    }

    async fn links(&self) -> Result<Vec<Link>> {
        let g = self.begin(Call::Links)?;
        Ok(g.state.links.values().cloned().collect())
    }

    async fn set_up(&self, name: &str, up: bool) -> Result<()> {
        let mut g = self.begin(Call::SetUp {
            name: name.into(),
            up,
        })?;
        let idx = g.index("setting link state", name, name)?;
        g.update_link(idx, |l| l.admin_up = up);
        Ok(())
    }

    async fn set_mac(&self, name: &str, mac: Mac) -> Result<()> {
        let mut g = self.begin(Call::SetMac {
            name: name.into(),
            mac,
        })?;
        let idx = g.index("setting MAC", name, name)?;
        g.update_link(idx, |l| l.mac = Some(mac));
        Ok(())
    }

    async fn rename(&self, name: &str, new_name: &str) -> Result<()> {
        let mut g = self.begin(Call::Rename {
            name: name.into(),
            new_name: new_name.into(),
        })?;
        let idx = g.index("renaming link", name, name)?;
        if g.by_name(new_name).is_some() {
            return Err(fake_err("renaming link", name, ErrorKind::Exists));
        }
        if g.state.links[&idx].admin_up {
            return Err(fake_err("renaming link", name, ErrorKind::Busy));
        }
        g.update_link(idx, |l| l.name = new_name.to_string());
        Ok(())
    }

    async fn add_veth(&self, name: &str, peer: &str, peer_netns: Option<&Netns>) -> Result<()> {
        let mut g = self.begin(Call::AddVeth {
            name: name.into(),
            peer: peer.into(),
            peer_netns: peer_netns.map(|n| n.label().to_string()),
        })?;
        if peer_netns.is_none() && g.by_name(peer).is_some() {
            return Err(fake_err("creating link", peer, ErrorKind::Exists));
        }
        let n = g.next_index as u8;
        g.new_link(
            name,
            Some(Mac([0x02, 0xfa, 0, 0, 0, n.wrapping_add(1)])),
            "veth",
        )?;
        if peer_netns.is_none() {
            g.new_link(
                peer,
                Some(Mac([0x02, 0xfa, 0, 0, 1, n.wrapping_add(2)])),
                "veth",
            )?;
        }
        Ok(())
    }

    async fn add_macvlan(
        &self,
        name: &str,
        parent: &str,
        mode: MacvlanMode,
        netns: Option<&Netns>,
    ) -> Result<()> {
        let mut g = self.begin(Call::AddMacvlan {
            name: name.into(),
            parent: parent.into(),
            mode,
            netns: netns.map(|n| n.label().to_string()),
        })?;
        g.index(
            "creating link",
            &format!("macvlan {name} on {parent}"),
            parent,
        )?;
        if netns.is_none() {
            let n = g.next_index as u8;
            g.new_link(
                name,
                Some(Mac([0x02, 0xfb, 0, 0, 0, n.wrapping_add(1)])),
                "macvlan",
            )?;
        }
        Ok(())
    }

    async fn move_to_netns(&self, name: &str, netns: &Netns) -> Result<()> {
        let mut g = self.begin(Call::MoveToNetns {
            name: name.into(),
            netns: netns.label().to_string(),
        })?;
        let idx = g.index("moving link to another namespace", name, name)?;
        g.remove_link(idx);
        Ok(())
    }

    async fn delete_link(&self, name: &str) -> Result<bool> {
        let mut g = self.begin(Call::DeleteLink { name: name.into() })?;
        match g.by_name(name).map(|l| l.index) {
            Some(idx) => {
                g.remove_link(idx);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn watch(&self) -> Result<LinkWatch> {
        let mut g = self.begin(Call::Watch)?;
        let (tx, rx) = mpsc::channel(1024);
        for l in g.state.links.values() {
            let _ = tx.try_send(LinkEvent::Changed(l.clone()));
        }
        g.watchers.push(tx);
        Ok(LinkWatch::new(rx, None))
    }
}

fn mac_of(g: &Inner, op: &'static str, subject: &str, dev: &str) -> Result<Mac> {
    let idx = g.index(op, subject, dev)?;
    match g.state.links[&idx].mac {
        Some(m) if m != Mac::ZERO => Ok(m),
        _ => Err(fake_err(
            op,
            subject,
            ErrorKind::Invalid(format!("{dev} has no Ethernet address (ARP/NDP need one)")),
        )),
    }
}

#[async_trait]
impl ArpNdp for FakeKernel {
    fn set_gate(&self, gate: Option<Arc<dyn Gate>>) {
        let mut g = self.lock();
        g.calls.push((
            Instant::now(),
            Call::SetGate {
                installed: gate.is_some(),
            },
        ));
        g.gate = gate;
    }

    async fn send_garp(&self, dev: &str, ip: IpAddr, form: GarpForm) -> Result<()> {
        let g = self.begin(Call::SendGarp {
            dev: dev.into(),
            ip,
            form,
        })?;
        let subject = format!("{ip} on {dev}");
        if !ip.is_ipv4() {
            return Err(fake_err(
                "sending gratuitous ARP",
                subject,
                ErrorKind::Invalid("sending gratuitous ARP needs an IPv4 address".into()),
            ));
        }
        mac_of(&g, "sending gratuitous ARP", &subject, dev)?;
        gate_check(&g, "sending gratuitous ARP", &subject, ip)
    }

    async fn send_unsolicited_na(&self, dev: &str, ip: IpAddr) -> Result<()> {
        let g = self.begin(Call::SendUnsolicitedNa {
            dev: dev.into(),
            ip,
        })?;
        let subject = format!("{ip} on {dev}");
        if !ip.is_ipv6() {
            return Err(fake_err(
                "sending unsolicited NA",
                subject,
                ErrorKind::Invalid("sending unsolicited NA needs an IPv6 address".into()),
            ));
        }
        mac_of(&g, "sending unsolicited NA", &subject, dev)?;
        gate_check(&g, "sending unsolicited NA", &subject, ip)
    }

    async fn send_udp_via(
        &self,
        dev: &str,
        via: Mac,
        from: std::net::SocketAddr,
        to: std::net::SocketAddr,
        payload: &[u8],
    ) -> Result<()> {
        let g = self.begin(Call::SendUdpVia {
            dev: dev.into(),
            via,
            from,
            to,
            len: payload.len(),
        })?;
        let op = "sending UDP through a router";
        let subject = format!("{from} to {to} via {via} on {dev}");
        if from.is_ipv4() != to.is_ipv4() {
            return Err(fake_err(
                op,
                subject,
                ErrorKind::Invalid("the addresses' families differ".into()),
            ));
        }
        mac_of(&g, op, &subject, dev).map(|_| ())
    }

    async fn probe(&self, dev: &str, ip: IpAddr, wait: Duration) -> Result<Option<Mac>> {
        let answer = {
            let g = self.begin(Call::Probe {
                dev: dev.into(),
                ip,
                wait,
            })?;
            mac_of(&g, "probing", &format!("{ip} on {dev}"), dev)?;
            g.probe_answers.get(&ip).copied()
        };
        if answer.is_none() {
            // A real probe waits the whole time when no one answers.
            tokio::time::sleep(wait).await;
        }
        Ok(answer)
    }

    async fn answer(&self, dev: &str, ips: BTreeSet<IpAddr>) -> Result<()> {
        let mut g = self.begin(Call::Answer {
            dev: dev.into(),
            ips: ips.clone(),
        })?;
        if ips.is_empty() {
            g.state.answered.remove(dev);
            return Ok(());
        }
        mac_of(&g, "answering ARP/NDP", dev, dev)?;
        g.state.answered.insert(dev.to_string(), ips);
        Ok(())
    }

    async fn answered(&self, dev: &str) -> Result<BTreeSet<IpAddr>> {
        let g = self.begin(Call::Answered { dev: dev.into() })?;
        Ok(g.state.answered.get(dev).cloned().unwrap_or_default())
    }
}
