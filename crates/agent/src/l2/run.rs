//! The L2 announcer's loop on Kubernetes: follow the watched inputs, keep one [`Announcer`]
//! running per announcing interface (see [`super::groups`]: the InternalIP's, and any other a
//! pool names), and tell users what they do (Events and a condition on their Services,
//! metrics, `/status`).
//!
//! Membership comes from the API (the Nodes that L2 pools select); the failover path does not:
//! each announcer heartbeats the other members directly on its LAN, so a dead node, a frozen
//! agent and a cut link all look the same and none waits on the API server. A change of an
//! announcer's membership (a node joins, leaves or changes its InternalIP; its interface or
//! address there changes) restarts it with a graceful hand-over; a change of addresses or
//! eligibility is applied in place.

use super::groups::{groups, Group, Local, LocalLink};
use super::plan::{plan, Inputs, Plan};
use super::Notices;
use berth_announce::election::Config as ElectionConfig;
use berth_announce::metrics::Metrics;
use berth_announce::runtime::{Announcer, Hold, Settings, Snapshot as Status};
use berth_announce::transport::{hello_destination, UdpTransport};
use berth_announce::{BootClock, Clock, Election, Event, Reason, Timing};
use berth_core::{Binding, PoolSpec};
use berth_k8s::announce::{node_names, NodeFacts, ServiceFacts, ServiceKey};
use berth_k8s::cluster::Snapshot;
use berth_netlink::{Addresses, Links};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the announcer runs on this node.
#[derive(Debug, Clone)]
pub struct L2Config {
    /// This node's name.
    pub node: String,
    /// The heartbeat port (UDP), the same on every node.
    pub port: u16,
    /// Heartbeat, fence and takeover timers, the same on every node.
    pub timing: Timing,
    /// An address on the LAN every member probes (two members only).
    pub witness: Option<IpAddr>,
    /// Heartbeats also go through the witness, for a router there to forward (two members).
    pub witness_relay: bool,
}

/// The watched inputs.
pub struct L2Inputs {
    /// Every Node's labels and InternalIPs.
    pub nodes: Snapshot<BTreeMap<String, NodeFacts>>,
    /// Every Pool.
    pub pools: Snapshot<Vec<PoolSpec>>,
    /// Every binding held by Services.
    pub bindings: Snapshot<Vec<Binding>>,
    /// Every Service's UID and traffic policy.
    pub services: Snapshot<BTreeMap<ServiceKey, ServiceFacts>>,
    /// Nodes with a ready endpoint, per Service.
    pub endpoints: Snapshot<BTreeMap<ServiceKey, BTreeSet<String>>>,
}

/// What the agent's `/status`, `/readyz` and `berth announcements` show.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct L2View {
    /// Why this node does not take part, when it does not.
    pub not_member: Option<String>,
    /// Members (nodes some L2 pool selects) and their InternalIPs.
    pub members: BTreeMap<String, IpAddr>,
    /// Addresses planned: pool, Services, eligible nodes, why none may.
    pub addresses: Vec<PlannedView>,
    /// This node's announcers, one per interface.
    pub announcers: Vec<AnnouncerView>,
    /// Pools that select this node but that it cannot announce, with why.
    pub refused: BTreeMap<String, String>,
    /// `announce: interface` addresses this node holds, by interface.
    pub interface_addresses: BTreeMap<String, BTreeSet<IpAddr>>,
}

/// One announcer, for the status view.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AnnouncerView {
    /// Its interface.
    pub interface: String,
    /// Whether its peers' addresses are learnt from hellos (not the InternalIP's interface).
    pub learn: bool,
    /// This node's heartbeat address there.
    pub address: IpAddr,
    /// The pools it announces.
    pub pools: BTreeSet<String>,
    /// Its peers.
    pub peers: BTreeSet<String>,
    /// Its live status (election, peers with their addresses, leases).
    pub status: Option<Status>,
}

/// One planned address, for the status view.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedView {
    /// The address.
    pub address: IpAddr,
    /// Its pool.
    pub pool: String,
    /// The Services holding it, `namespace/name`.
    pub services: Vec<String>,
    /// Members that may announce it.
    pub eligible: BTreeSet<String>,
    /// Why none may, when none may.
    pub why_none: Option<String>,
}

/// A handle on the running loop: its view, for the HTTP endpoints.
#[derive(Clone, Default)]
pub struct L2Handle {
    view: Arc<Mutex<L2View>>,
    announcers: Arc<Mutex<BTreeMap<String, Arc<Announcer>>>>,
}

impl L2Handle {
    /// The current view, with the announcers' live status.
    pub async fn view(&self) -> L2View {
        let anns = self
            .announcers
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default();
        let mut v = self.view.lock().map(|v| v.clone()).unwrap_or_default();
        for a in v.announcers.iter_mut() {
            if let Some(ann) = anns.get(&a.interface) {
                a.status = tokio::time::timeout(Duration::from_secs(1), ann.status())
                    .await
                    .ok()
                    .flatten();
            }
        }
        v
    }

    /// Withdraws everything and hands over (SIGTERM).
    pub async fn leave(&self) {
        let anns = self
            .announcers
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default();
        for a in anns.into_values() {
            a.leave().await;
        }
    }
}

/// Where a running announcer reports: metrics, notices, and the plan its events are read
/// against (which Services hold an address).
struct Outlets {
    metrics: Arc<Metrics>,
    notices: Arc<dyn Notices>,
    plan: Arc<Mutex<Plan>>,
}

struct Running {
    ann: Arc<Announcer>,
    /// The group it was started for: a change of anything but its addresses restarts it.
    group: Group,
    forward: tokio::task::JoinHandle<()>,
}

impl Running {
    fn same_members(&self, g: &Group) -> bool {
        let r = &self.group;
        (r.learn, r.own, &r.peers, &r.known) == (g.learn, g.own, &g.peers, &g.known)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

/// How long to wait after a change for more before acting (a Service and its binding, a pod and
/// its EndpointSlice arrive close together).
const COALESCE: Duration = Duration::from_millis(20);

/// Runs the L2 announcer until the task is dropped.
pub async fn run(
    cfg: L2Config,
    mut inputs: L2Inputs,
    notices: Arc<dyn Notices>,
    metrics: Arc<Metrics>,
    handle: L2Handle,
) {
    let shared_plan: Arc<Mutex<Plan>> = Arc::default();
    let outlets = Outlets {
        metrics: metrics.clone(),
        notices: notices.clone(),
        plan: shared_plan.clone(),
    };
    let mut held: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    let iface_kernel = match berth_netlink::Kernel::new() {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(error = %e, "announce: interface is off: cannot reach the kernel");
            None
        }
    };
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let mut said: Option<String> = None;
    let mut none_said: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut refused_said: BTreeMap<String, String> = BTreeMap::new();
    loop {
        // Re-evaluate after a while although no input changed: an interface may get its
        // address, or an announcer that failed to start may start now.
        let mut retry = false;
        if let Some(inp) = snapshot(&inputs) {
            if let Some(k) = &iface_kernel {
                let want = super::plan::interface_plan(&inp, &cfg.node);
                hold_on_interfaces(k, &want, &mut held, &inp.pools).await;
                if let Ok(mut v) = handle.view.lock() {
                    v.interface_addresses = held.clone();
                }
            }
            let (p, why) = decide(&cfg, &inp);
            // Tell the Services whose address no node may announce, once per reason.
            for (addr, planned) in &p.addresses {
                match &planned.why_none {
                    Some(w) if none_said.get(addr) != Some(w) => {
                        none_said.insert(*addr, w.clone());
                        let msg = format!("{addr} is not announced: {w}");
                        post(&notices, &inp, &planned.services, "NoAnnouncer", msg);
                    }
                    Some(_) => {}
                    None => {
                        none_said.remove(addr);
                    }
                }
            }
            none_said.retain(|a, _| p.addresses.contains_key(a));
            if let Ok(mut sp) = shared_plan.lock() {
                *sp = p.clone();
            }
            match why {
                Some(w) => {
                    if said.as_ref() != Some(&w) {
                        tracing::info!(reason = %w, "not announcing L2 addresses from this node");
                        said = Some(w.clone());
                    }
                    for (_, r) in std::mem::take(&mut running) {
                        r.ann.leave().await;
                    }
                    set_announcers(&handle, &running);
                    set_view(&handle, &p, Some(w), &running, BTreeMap::new());
                }
                None => {
                    said = None;
                    let own = p.members[&cfg.node];
                    let local = match &iface_kernel {
                        Some(k) => read_local(k, own).await,
                        None => Local::default(),
                    };
                    let gs = groups(&p, &inp, &cfg.node, &local, own.is_ipv4(), cfg.port);
                    // Pools this node cannot announce: a Warning on their Services, once per
                    // reason (other nodes may still announce them).
                    for (pool, why) in &gs.refused {
                        if refused_said.get(pool) == Some(why) {
                            continue;
                        }
                        refused_said.insert(pool.clone(), why.clone());
                        tracing::warn!(pool = %pool, reason = %why, "cannot announce this pool's addresses from this node");
                        let msg = format!("node {} does not announce pool {pool}: {why}", cfg.node);
                        for planned in p.addresses.values().filter(|a| a.pool == *pool) {
                            post(
                                &notices,
                                &inp,
                                &planned.services,
                                "NotAnnouncedHere",
                                msg.clone(),
                            );
                        }
                    }
                    refused_said.retain(|pool, _| gs.refused.contains_key(pool));
                    retry |= !gs.refused.is_empty();
                    let stale: Vec<String> = running
                        .iter()
                        .filter(|(dev, r)| {
                            gs.announcers.get(*dev).is_none_or(|g| !r.same_members(g))
                        })
                        .map(|(dev, _)| dev.clone())
                        .collect();
                    for dev in stale {
                        if let Some(r) = running.remove(&dev) {
                            tracing::info!(interface = %dev, "the L2 membership on this interface changed: handing over and restarting its announcer");
                            r.ann.leave().await;
                        }
                    }
                    for (dev, g) in &gs.announcers {
                        if !running.contains_key(dev) {
                            match start(&cfg, g, &outlets).await {
                                Ok(r) => {
                                    running.insert(dev.clone(), r);
                                }
                                Err(e) => {
                                    tracing::warn!(interface = %dev, error = %e, "cannot start the L2 announcer; retrying in 5 s");
                                    retry = true;
                                }
                            }
                        }
                        if let Some(r) = running.get(dev) {
                            r.ann.set_addresses(g.addresses.clone()).await;
                        }
                    }
                    set_announcers(&handle, &running);
                    set_view(&handle, &p, None, &running, gs.refused.clone());
                }
            }
        }
        if retry {
            tokio::select! {
                ok = changed(&mut inputs) => if !ok {
                    tracing::warn!("an L2 input watch ended; the announcer keeps its last plan");
                    std::future::pending::<()>().await;
                },
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            tokio::time::sleep(COALESCE).await;
            continue;
        }
        if !changed(&mut inputs).await {
            tracing::warn!("an L2 input watch ended; the announcer keeps its last plan");
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(COALESCE).await;
    }
}

/// The inputs, once every watch has listed.
fn snapshot(i: &L2Inputs) -> Option<Inputs> {
    let nodes = i.nodes.borrow().clone()?;
    let pools = i.pools.borrow().clone()?;
    let bindings = i.bindings.borrow().clone()?;
    let services = i.services.borrow().clone()?;
    let endpoints = i.endpoints.borrow().clone()?;
    let endpoints = endpoints
        .iter()
        .map(|(k, v)| (k.clone(), node_names(v, &nodes)))
        .collect();
    Some(Inputs {
        nodes: (*nodes).clone(),
        pools: (*pools).clone(),
        bindings: (*bindings).clone(),
        services: (*services).clone(),
        endpoints,
    })
}

/// The plan, and why this node does not take part (when it does not).
fn decide(cfg: &L2Config, inp: &Inputs) -> (Plan, Option<String>) {
    let Some(me) = inp.nodes.get(&cfg.node) else {
        return (
            Plan::default(),
            Some(format!("there is no Node object named {}", cfg.node)),
        );
    };
    let Some(first) = me.ips.first() else {
        return (
            Plan::default(),
            Some(format!("Node {} reports no InternalIP", cfg.node)),
        );
    };
    let p = plan(inp, first.is_ipv4());
    if p.members.is_empty() {
        return (p, Some("no Pool has announce: l2".into()));
    }
    if !p.is_member(&cfg.node) {
        let why =
            p.left_out.get(&cfg.node).cloned().unwrap_or_else(|| {
                "no Pool with announce: l2 selects this node (nodeSelector)".into()
            });
        return (p, Some(why));
    }
    (p, None)
}

/// Waits until some input changed; `false` when a watch ended.
async fn changed(i: &mut L2Inputs) -> bool {
    tokio::select! {
        r = i.nodes.changed() => r.is_ok(),
        r = i.pools.changed() => r.is_ok(),
        r = i.bindings.changed() => r.is_ok(),
        r = i.services.changed() => r.is_ok(),
        r = i.endpoints.changed() => r.is_ok(),
    }
}

fn set_announcers(h: &L2Handle, running: &BTreeMap<String, Running>) {
    if let Ok(mut g) = h.announcers.lock() {
        *g = running
            .iter()
            .map(|(d, r)| (d.clone(), r.ann.clone()))
            .collect();
    }
}

/// Posts an Event on each of `services` on its own task: a retry while the API server is
/// away must not hold up the plan.
fn post(
    notices: &Arc<dyn Notices>,
    inp: &Inputs,
    services: &[ServiceKey],
    reason: &'static str,
    msg: String,
) {
    for s in services {
        let uid = inp.services.get(s).map(|f| f.uid.clone());
        let (n, svc, msg) = (notices.clone(), s.clone(), msg.clone());
        tokio::spawn(async move { n.notice(&svc, uid.as_deref(), true, reason, &msg).await });
    }
}

fn set_view(
    h: &L2Handle,
    p: &Plan,
    not_member: Option<String>,
    running: &BTreeMap<String, Running>,
    refused: BTreeMap<String, String>,
) {
    let held = h
        .view
        .lock()
        .map(|v| v.interface_addresses.clone())
        .unwrap_or_default();
    let v = L2View {
        interface_addresses: held,
        not_member,
        members: p.members.clone(),
        addresses: p
            .addresses
            .iter()
            .map(|(a, pl)| PlannedView {
                address: *a,
                pool: pl.pool.clone(),
                services: pl
                    .services
                    .iter()
                    .map(|(ns, n)| format!("{ns}/{n}"))
                    .collect(),
                eligible: pl.eligible.clone(),
                why_none: pl.why_none.clone(),
            })
            .collect(),
        announcers: running
            .values()
            .map(|r| AnnouncerView {
                interface: r.group.interface.clone(),
                learn: r.group.learn,
                address: r.group.own,
                pools: r.group.pools.clone(),
                peers: r.group.peers.clone(),
                status: None,
            })
            .collect(),
        refused,
    };
    if let Ok(mut g) = h.view.lock() {
        *g = v;
    }
}

/// `announce: interface`: makes the Berth host addresses on each interface exactly `want`.
/// Only addresses Berth added (IFA_PROTO) inside some pool's subnets are ever removed, so an
/// operator's own addresses on `lo` are never touched. `held` is what this node holds after.
async fn hold_on_interfaces(
    kernel: &berth_netlink::Kernel,
    want: &BTreeMap<String, BTreeSet<IpAddr>>,
    held: &mut BTreeMap<String, BTreeSet<IpAddr>>,
    pools: &[PoolSpec],
) {
    let in_pool = |a: IpAddr| {
        pools
            .iter()
            .any(|p| p.subnets.iter().any(|s| s.cidr.contains(&a)))
    };
    let mut devs: BTreeSet<String> = want.keys().chain(held.keys()).cloned().collect();
    devs.insert("lo".into());
    for dev in devs {
        let Ok(current) = kernel.addresses(&dev).await else {
            if want.contains_key(&dev) {
                tracing::warn!(interface = %dev, "announce: interface: the interface does not exist");
            }
            held.remove(&dev);
            continue;
        };
        let ours: BTreeSet<IpAddr> = current
            .iter()
            .filter(|a| {
                a.protocol == berth_netlink::BERTH_PROTOCOL
                    && a.net.prefix_len() == a.net.max_prefix_len()
                    && in_pool(a.net.addr())
            })
            .map(|a| a.net.addr())
            .collect();
        let empty = BTreeSet::new();
        let target = want.get(&dev).unwrap_or(&empty);
        for a in target.difference(&ours) {
            let opts = berth_netlink::AddrOptions {
                nodad: true,
                noprefixroute: true,
            };
            match kernel.add_address(&dev, ipnet::IpNet::from(*a), opts).await {
                Ok(()) => {
                    tracing::info!(address = %a, interface = %dev, "holding the address on the interface (announce: interface)")
                }
                Err(e) => {
                    tracing::warn!(address = %a, interface = %dev, error = %e, "cannot hold the address on the interface")
                }
            }
        }
        for a in ours.difference(target) {
            match kernel.delete_address(&dev, ipnet::IpNet::from(*a)).await {
                Ok(_) => {
                    tracing::info!(address = %a, interface = %dev, "released the address from the interface (announce: interface)")
                }
                Err(e) => {
                    tracing::warn!(address = %a, interface = %dev, error = %e, "cannot remove the address from the interface")
                }
            }
        }
        if target.is_empty() {
            held.remove(&dev);
        } else {
            held.insert(dev.clone(), target.clone());
        }
    }
}

/// This node's interfaces and addresses, and which holds its InternalIP `own`.
async fn read_local(kernel: &berth_netlink::Kernel, own: IpAddr) -> Local {
    let mut out = Local::default();
    let Ok(links) = kernel.links().await else {
        return out;
    };
    for l in links {
        let addrs: Vec<ipnet::IpNet> = kernel
            .addresses(&l.name)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.net)
            .collect();
        if addrs.iter().any(|a| a.addr() == own) {
            out.internal = Some(l.name.clone());
        }
        if l.name != "lo" {
            out.links.push(LocalLink {
                name: l.name,
                addrs,
            });
        }
    }
    out
}

async fn start(cfg: &L2Config, g: &Group, out: &Outlets) -> Result<Running, String> {
    let Outlets {
        metrics,
        notices,
        plan: shared,
    } = out;
    let dev = &g.interface;
    let kernel = berth_netlink::Kernel::new().map_err(|e| e.to_string())?;
    let link = kernel.link(dev).await.map_err(|e| e.to_string())?;
    // Learning peers needs the wildcard address, where hellos to the whole link arrive.
    let bind = match (g.learn, g.own.is_ipv4()) {
        (false, _) => g.own,
        (true, true) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (true, false) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    let transport = UdpTransport::bind(SocketAddr::new(bind, cfg.port), dev)
        .map_err(|e| format!("heartbeat socket {bind}:{} on {dev}: {e}", cfg.port))?;
    // The witness serves a two-member announcer on the InternalIP's interface, or on another
    // interface when it is in one of that interface's subnets.
    let on_link = kernel
        .addresses(dev)
        .await
        .unwrap_or_default()
        .iter()
        .any(|a| cfg.witness.is_some_and(|w| a.net.contains(&w)));
    let witness = cfg
        .witness
        .filter(|_| g.peers.len() == 1 && (!g.learn || on_link));
    let clock: Arc<dyn Clock> = Arc::new(BootClock);
    let ecfg = ElectionConfig {
        me: cfg.node.clone(),
        peers: g.peers.iter().cloned().collect(),
        timing: cfg.timing,
        witness: witness.is_some(),
        incarnation: berth_announce::standalone::incarnation(),
        mac: link.mac.map(|m| m.0),
        probe: true,
    };
    let mut election = Election::new(ecfg, clock.now()).map_err(|e| e.to_string())?;
    election.set_addresses(g.addresses.clone());
    let mut settings = Settings::new(dev, g.known.clone());
    settings.hold = Hold::Nowhere;
    settings.witness = witness;
    settings.relay_from = cfg
        .witness_relay
        .then_some(SocketAddr::new(g.own, cfg.port));
    settings.discovery = g
        .learn
        .then(|| hello_destination(g.own.is_ipv4(), cfg.port, link.index));
    let ann = Announcer::start(
        kernel,
        transport,
        clock,
        election,
        settings,
        metrics.clone(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let ann = Arc::new(ann);
    let forward = tokio::spawn(forward_events(
        ann.subscribe(),
        cfg.node.clone(),
        dev.clone(),
        notices.clone(),
        shared.clone(),
    ));
    tracing::info!(node = %cfg.node, interface = %dev, address = %g.own, port = cfg.port,
        learn = g.learn, pools = ?g.pools, peers = ?g.peers, heartbeat = ?cfg.timing.heartbeat,
        fence = ?cfg.timing.fence, takeover = ?cfg.timing.takeover, "L2 announcer running");
    Ok(Running {
        ann,
        group: g.clone(),
        forward,
    })
}

/// Turns the announcer's events into Events and conditions on the Services concerned.
async fn forward_events(
    mut rx: tokio::sync::broadcast::Receiver<Event>,
    node: String,
    dev: String,
    notices: Arc<dyn Notices>,
    plan: Arc<Mutex<Plan>>,
) {
    let mut seen: BTreeMap<IpAddr, Vec<ServiceKey>> = BTreeMap::new();
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "L2 events were dropped (too many at once)");
                continue;
            }
            Err(_) => return,
        };
        let (addr, warning, reason, message) = match &ev {
            Event::Acquired { addr } => (
                *addr,
                false,
                "Announcing",
                format!("{addr} is announced from node {node} (ARP/NDP on {dev})"),
            ),
            Event::Withdrawn { addr, reason } => {
                let (warn, why) = match reason {
                    Reason::LostMajority => (true, "it no longer hears a majority of the nodes (a partition, or this node stalled); another node takes over"),
                    Reason::LinkDown => (true, "its interface went down; another node takes over"),
                    Reason::Moved => (false, "another node announces it now"),
                    Reason::Leaving => (false, "the agent is stopping and hands over"),
                    Reason::Removed => (false, "it is no longer to be announced"),
                };
                (
                    *addr,
                    warn,
                    "AnnouncementWithdrawn",
                    format!("node {node} stopped announcing {addr}: {why}"),
                )
            }
            Event::Conflict { addr, mac } => (
                *addr,
                true,
                "AddressConflict",
                format!(
                    "{addr} is answered on {dev} by {}, which is not a Berth node: not announced from {node}; probed again every 10 s. Find the host with that MAC and remove the address from it",
                    berth_announce::election::format_mac(*mac)
                ),
            ),
            Event::ConflictCleared { addr } => (
                *addr,
                false,
                "AddressConflictCleared",
                format!("no other host answers for {addr} any more"),
            ),
            Event::PeerDown { peer } => {
                tracing::warn!(peer = %peer, "L2 peer unheard (down, frozen or cut off)");
                continue;
            }
            Event::PeerUp { peer } => {
                tracing::info!(peer = %peer, "L2 peer heard");
                continue;
            }
            other => {
                tracing::debug!(event = ?other, "L2 event");
                continue;
            }
        };
        tracing::info!(address = %addr, reason, "{message}");
        let planned = plan
            .lock()
            .ok()
            .and_then(|p| p.addresses.get(&addr).map(|a| a.services.clone()))
            .unwrap_or_default();
        // An address withdrawn because it left the plan (released, its pool no longer
        // announced) is no longer in it: its Services are the ones it was announced for.
        let services = if planned.is_empty() {
            seen.get(&addr).cloned().unwrap_or_default()
        } else {
            seen.insert(addr, planned.clone());
            planned
        };
        let removed = matches!(
            &ev,
            Event::Withdrawn {
                reason: Reason::Removed,
                ..
            }
        );
        if removed {
            seen.remove(&addr);
        }
        for s in &services {
            // Events on their own (a retry while the API server is away must not hold up the
            // condition writes); conditions in order.
            let (n, svc, msg) = (notices.clone(), s.clone(), message.clone());
            tokio::spawn(async move { n.notice(&svc, None, warning, reason, &msg).await });
            match &ev {
                Event::Acquired { .. } => notices.announced(s, addr, Some(&node)).await,
                Event::Conflict { .. } => notices.conflict(s, addr, &message).await,
                // Nobody takes over an address that left the plan: its entry goes, so the
                // condition never names an announcement that ended.
                _ if removed => notices.announced(s, addr, None).await,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::Planned;
    use super::*;
    use async_trait::async_trait;

    /// Records the calls the forwarder makes.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    #[async_trait]
    impl Notices for Recorder {
        async fn notice(&self, s: &ServiceKey, _: Option<&str>, _: bool, reason: &str, _: &str) {
            self.0
                .lock()
                .unwrap()
                .push(format!("event {}/{} {reason}", s.0, s.1));
        }
        async fn announced(&self, s: &ServiceKey, a: IpAddr, node: Option<&str>) {
            self.0
                .lock()
                .unwrap()
                .push(format!("announced {}/{} {a} {node:?}", s.0, s.1));
        }
        async fn conflict(&self, s: &ServiceKey, a: IpAddr, _: &str) {
            self.0
                .lock()
                .unwrap()
                .push(format!("conflict {}/{} {a}", s.0, s.1));
        }
    }

    /// An address released while its Service stays: the Service hears of the withdrawal and
    /// its condition entry is cleared, although the plan no longer names the address.
    #[tokio::test]
    async fn a_released_address_is_cleared_from_its_service() {
        let addr: IpAddr = "198.18.0.240".parse().unwrap();
        let svc: ServiceKey = ("ns".to_string(), "web".to_string());
        let mut p = Plan::default();
        p.addresses.insert(
            addr,
            Planned {
                pool: "lan".into(),
                services: vec![svc.clone()],
                eligible: BTreeSet::new(),
                why_none: None,
            },
        );
        let plan = Arc::new(Mutex::new(p));
        let rec = Arc::new(Recorder::default());
        let (tx, rx) = tokio::sync::broadcast::channel(16);
        let task = tokio::spawn(forward_events(
            rx,
            "n1".into(),
            "eth0".into(),
            rec.clone(),
            plan.clone(),
        ));
        tx.send(Event::Acquired { addr }).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        plan.lock().unwrap().addresses.clear();
        tx.send(Event::Withdrawn {
            addr,
            reason: Reason::Removed,
        })
        .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(tx);
        task.await.unwrap();
        let calls = rec.0.lock().unwrap().clone();
        assert!(
            calls.contains(&"event ns/web AnnouncementWithdrawn".to_string()),
            "{calls:?}"
        );
        let pos = |c: &str| calls.iter().position(|x| x == c);
        let (set, cleared) = (
            pos("announced ns/web 198.18.0.240 Some(\"n1\")"),
            pos("announced ns/web 198.18.0.240 None"),
        );
        assert!(set.is_some() && cleared > set, "{calls:?}");
    }
}
