//! The BGP speaker's loop on a node: follow the watched inputs, plan (see [`super::plan`]),
//! keep one `berth-bgp` speaker configured with exactly the planned sessions and routes, and
//! tell users what it does: this node's entry in each BGPPeer's `status.sessions`, Events on
//! the BGPPeer when a session comes up or goes down or cannot start, metrics, and `/status`.
//!
//! Why one speaker per node: the router sees one BGP identifier and one AS per node, and a
//! change of peers or routes is applied to the running sessions without resetting those that
//! did not change (the speaker's `reconcile`).

use super::plan::{
    listen_addresses, plan, speaker_peer, speaker_routes, Inputs, Origin, PeerObject, Plan,
};
use async_trait::async_trait;
use berth_bgp::{GlobalConfig, PeerConfig, ShutdownMode, Speaker, State};
use berth_core::bgp::{BgpConfigSpec, SecretKeyRef};
use berth_core::{Binding, Block, PoolSpec};
use berth_k8s::announce::{NodeFacts, ServiceFacts, ServiceKey};
use berth_k8s::cluster::Snapshot;
use berth_k8s::crd::BgpSessionStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the speaker runs on this node.
#[derive(Debug, Clone)]
pub struct BgpConfig {
    /// This node's name.
    pub node: String,
}

/// The watched inputs, each a whole snapshot.
pub struct BgpInputs {
    /// Every Node's labels and InternalIPs (this node's select peers and pools; its IPv4
    /// InternalIP is the BGP identifier).
    pub nodes: Snapshot<BTreeMap<String, NodeFacts>>,
    /// Every BGPPeer.
    pub peers: Snapshot<Vec<PeerObject>>,
    /// The BGPConfiguration `default`.
    pub cluster: Snapshot<Option<BgpConfigSpec>>,
    /// Every Pool.
    pub pools: Snapshot<Vec<PoolSpec>>,
    /// Every binding held by Services.
    pub bindings: Snapshot<Vec<Binding>>,
    /// Every Service's UID and traffic policy.
    pub services: Snapshot<BTreeMap<ServiceKey, ServiceFacts>>,
    /// Nodes with a ready endpoint, per Service.
    pub endpoints: Snapshot<BTreeMap<ServiceKey, BTreeSet<String>>>,
    /// Every pod block (`None` where the ledger has none to watch: no pod blocks advertised).
    pub blocks: Option<Snapshot<Vec<Block>>>,
}

/// What the loop needs beyond its watches: the API side, behind a trait so the loop runs
/// against a fake in tests.
#[async_trait]
pub trait BgpOutlets: Send + Sync {
    /// The password `r` names (fails closed: an error says what is missing).
    async fn password(&self, r: &SecretKeyRef) -> Result<String, String>;
    /// An Event on the BGPPeer.
    async fn event(&self, peer: &PeerObject, warning: bool, reason: &str, message: &str);
    /// This node's entry in the peer's `status.sessions`; `None` removes it.
    async fn session(&self, peer: &str, status: Option<&BgpSessionStatus>) -> Result<(), String>;
}

/// Event reasons.
pub mod reason {
    /// A session reached Established.
    pub const UP: &str = "SessionEstablished";
    /// An established session went down.
    pub const DOWN: &str = "SessionDown";
    /// The peer's password cannot be read: the session stays down.
    pub const PASSWORD: &str = "PasswordUnavailable";
    /// The peer selects this node but the node does not open the session.
    pub const REFUSED: &str = "PeerRefused";
}

/// One session, for `/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    /// The BGPPeer.
    pub peer: String,
    /// The router's address.
    pub address: String,
    /// The router's AS.
    pub peer_asn: u32,
    /// `Established`, `Active`, …; `Idle` for a session that cannot start.
    pub state: String,
    /// Since when, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Prefixes advertised on it.
    pub prefixes_sent: u64,
    /// Prefixes the router sent.
    pub prefixes_received: u64,
    /// BFD's state, when BFD is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bfd: Option<String>,
    /// Why it is not established.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One route, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RouteView {
    /// The prefix.
    pub prefix: String,
    /// What it is: `service <pool> <ns/name,…>`, `pod-block`, `cluster-ips`.
    pub origin: String,
    /// The BGPPeers it goes to.
    pub peers: Vec<String>,
}

/// What `/status` shows of BGP.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BgpView {
    /// This node's AS, when it peers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_asn: Option<u32>,
    /// The BGP identifier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub router_id: Option<Ipv4Addr>,
    /// Sessions, by BGPPeer name.
    pub sessions: Vec<SessionView>,
    /// Routes advertised.
    pub routes: Vec<RouteView>,
    /// BGPPeers selecting this node that it does not open, and why.
    pub refused: BTreeMap<String, String>,
    /// `announce: bgp` pools whose settings cannot be used, and why.
    pub bad_pools: BTreeMap<String, String>,
}

/// A handle on the running loop: its view (for HTTP), and the clean shutdown.
#[derive(Clone, Default)]
pub struct BgpHandle {
    view: Arc<Mutex<BgpView>>,
    speaker: Arc<Mutex<Option<Speaker>>>,
}

/// How long a clean shutdown waits for the routers to acknowledge the withdrawals.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

impl BgpHandle {
    /// The current view.
    pub fn view(&self) -> BgpView {
        self.view.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Withdraws every route and closes the sessions (SIGTERM, a node drain): the routers
    /// move the traffic before the agent is gone, instead of keeping routes for the graceful
    /// restart time. An agent that dies without this keeps its routes through graceful
    /// restart until it is back.
    pub async fn leave(&self) {
        let sp = self.speaker.lock().ok().and_then(|mut s| s.take());
        if let Some(sp) = sp {
            if tokio::time::timeout(LEAVE_TIMEOUT, sp.shutdown(ShutdownMode::Withdraw))
                .await
                .is_err()
            {
                tracing::warn!("BGP: the routers did not acknowledge the withdrawals within {LEAVE_TIMEOUT:?}; closing");
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

/// The speaker's Prometheus metrics (`berth_bgp_*`).
pub struct BgpMetrics {
    registry: Mutex<Registry>,
    up: Family<PeerLabel, Gauge>,
    sent: Family<PeerLabel, Gauge>,
    received: Family<PeerLabel, Gauge>,
    established: Family<PeerLabel, Counter>,
    down: Family<PeerLabel, Counter>,
    routes: Gauge,
}

impl Default for BgpMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl BgpMetrics {
    /// The metrics, registered.
    pub fn new() -> BgpMetrics {
        let m = BgpMetrics {
            registry: Mutex::new(Registry::with_prefix("berth_bgp")),
            up: Family::default(),
            sent: Family::default(),
            received: Family::default(),
            established: Family::default(),
            down: Family::default(),
            routes: Gauge::default(),
        };
        if let Ok(mut r) = m.registry.lock() {
            r.register(
                "session_up",
                "1 while the session with the BGPPeer is Established",
                m.up.clone(),
            );
            r.register(
                "prefixes_advertised",
                "Prefixes advertised to the BGPPeer",
                m.sent.clone(),
            );
            r.register(
                "prefixes_received",
                "Prefixes the BGPPeer sent",
                m.received.clone(),
            );
            r.register(
                "session_established",
                "Times the session reached Established",
                m.established.clone(),
            );
            r.register(
                "session_down",
                "Times an established session went down",
                m.down.clone(),
            );
            r.register(
                "routes",
                "Routes this node plans to advertise",
                m.routes.clone(),
            );
        }
        m
    }

    /// The registry in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &r).is_err() {
            out.clear();
        }
        out
    }
}

/// How long to wait after a change for more before acting.
const COALESCE: Duration = Duration::from_millis(20);
/// How often a Secret that could not be read is read again.
const SECRET_RETRY: Duration = Duration::from_secs(10);

/// The loop's memory between rounds.
#[derive(Default)]
struct Loop {
    plan: Plan,
    /// BGPPeer name by router address, of the configured sessions.
    names: BTreeMap<IpAddr, String>,
    /// BGPPeers by name, from the last snapshot (for Events).
    peers: BTreeMap<String, PeerObject>,
    /// Sessions that are not configured, with why (password, refusal).
    down: BTreeMap<String, String>,
    /// Warnings told, per (peer, reason), so each is told once while it holds.
    told: BTreeMap<(String, String), String>,
    /// The status entries written, per peer.
    written: BTreeMap<String, BgpSessionStatus>,
    /// The last state seen per peer, and since when.
    seen: BTreeMap<String, (State, String)>,
    /// When a Secret could not be read (read again after [`SECRET_RETRY`]).
    secret_failed: Option<Instant>,
    router_id: Option<Ipv4Addr>,
    /// This node's InternalIPs (a passive peer's session is taken on one of them).
    node_ips: Vec<IpAddr>,
}

/// The inputs as one [`Inputs`], once every watch has listed; with the router ID and the
/// node's InternalIPs.
fn snapshot(i: &BgpInputs, me: &str) -> Option<(Inputs, Option<Ipv4Addr>, Vec<IpAddr>)> {
    let nodes = i.nodes.borrow().clone()?;
    let peers = i.peers.borrow().clone()?;
    let cluster = i.cluster.borrow().clone()?;
    let pools = i.pools.borrow().clone()?;
    let bindings = i.bindings.borrow().clone()?;
    let services = i.services.borrow().clone()?;
    let endpoints = i.endpoints.borrow().clone()?;
    let blocks = match &i.blocks {
        Some(b) => b.borrow().clone()?.as_ref().clone(),
        None => vec![],
    };
    let me_facts = nodes.get(me);
    let router_id = me_facts.and_then(|n| {
        n.ips.iter().find_map(|a| match a {
            IpAddr::V4(v) => Some(*v),
            IpAddr::V6(_) => None,
        })
    });
    Some((
        Inputs {
            labels: me_facts.map(|n| n.labels.clone()).unwrap_or_default(),
            peers: peers.as_ref().clone(),
            cluster: cluster.as_ref().clone(),
            pools: pools.as_ref().clone(),
            bindings: bindings.as_ref().clone(),
            services: services.as_ref().clone(),
            endpoints: endpoints.as_ref().clone(),
            blocks,
        },
        router_id,
        me_facts.map(|n| n.ips.clone()).unwrap_or_default(),
    ))
}

impl BgpInputs {
    /// Waits (up to `within`) until every watch has listed once.
    ///
    /// Why: `berth announcements` plans every node the way its agent does, from the same
    /// watches, and a plan from a half-listed cluster would show routes missing that are not.
    pub async fn listed(&mut self, within: Duration) -> Result<(), String> {
        let all = async {
            let _ = self.nodes.wait_for(Option::is_some).await;
            let _ = self.peers.wait_for(Option::is_some).await;
            let _ = self.cluster.wait_for(Option::is_some).await;
            let _ = self.pools.wait_for(Option::is_some).await;
            let _ = self.bindings.wait_for(Option::is_some).await;
            let _ = self.services.wait_for(Option::is_some).await;
            let _ = self.endpoints.wait_for(Option::is_some).await;
            if let Some(b) = &mut self.blocks {
                let _ = b.wait_for(Option::is_some).await;
            }
        };
        tokio::time::timeout(within, all)
            .await
            .map_err(|_| format!("the watches did not all list within {within:?}"))
    }

    /// Every node's name with the plan its agent computes now (the same inputs, the same
    /// [`plan`]); `None` until every watch has listed.
    pub fn plans(&self) -> Option<BTreeMap<String, Plan>> {
        let nodes = self.nodes.borrow().clone()?;
        // One snapshot; only the node's labels differ between nodes.
        let (mut inputs, _, _) = snapshot(self, "")?;
        let mut out = BTreeMap::new();
        for (name, facts) in nodes.iter() {
            inputs.labels = facts.labels.clone();
            out.insert(name.clone(), plan(&inputs, name));
        }
        Some(out)
    }
}

async fn changed(i: &mut BgpInputs) -> bool {
    let blocks = async {
        match &mut i.blocks {
            Some(b) => b.changed().await.is_ok(),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = i.nodes.changed() => r.is_ok(),
        r = i.peers.changed() => r.is_ok(),
        r = i.cluster.changed() => r.is_ok(),
        r = i.pools.changed() => r.is_ok(),
        r = i.bindings.changed() => r.is_ok(),
        r = i.services.changed() => r.is_ok(),
        r = i.endpoints.changed() => r.is_ok(),
        r = blocks => r,
    }
}

/// A BGP identifier for a node without an IPv4 InternalIP: stable, from its name, never 0.
fn router_id_of(node: &str) -> Ipv4Addr {
    let mut h: u32 = 2166136261;
    for b in node.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16777619);
    }
    Ipv4Addr::from(h.max(1))
}

/// Runs the speaker's loop until the task is dropped.
pub async fn run(
    cfg: BgpConfig,
    mut inputs: BgpInputs,
    outlets: Arc<dyn BgpOutlets>,
    metrics: Arc<BgpMetrics>,
    handle: BgpHandle,
) {
    let mut state = Loop::default();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = true;
    loop {
        if dirty {
            dirty = false;
            if let Some((inp, rid, ips)) = snapshot(&inputs, &cfg.node) {
                state.router_id = rid;
                state.node_ips = ips;
                state
                    .apply(&cfg, &inp, outlets.as_ref(), &metrics, &handle)
                    .await;
            }
        }
        state
            .observe(&cfg, outlets.as_ref(), &metrics, &handle)
            .await;
        tokio::select! {
            ok = changed(&mut inputs) => {
                if !ok {
                    return;
                }
                tokio::time::sleep(COALESCE).await;
                dirty = true;
            }
            _ = tick.tick() => {
                if state.secret_failed.is_some_and(|t| t.elapsed() >= SECRET_RETRY) {
                    dirty = true;
                }
            }
        }
    }
}

fn origin_text(o: &Origin) -> String {
    match o {
        Origin::Service { pool, services } => format!(
            "service {pool} {}",
            services
                .iter()
                .map(|(n, s)| format!("{n}/{s}"))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Origin::PodBlock => "pod-block".into(),
        Origin::ClusterIps => "cluster-ips".into(),
    }
}

impl Loop {
    /// Tells a warning once while it holds (and again if its message changes).
    async fn warn(&mut self, outlets: &dyn BgpOutlets, peer: &str, reason: &str, msg: &str) {
        let k = (peer.to_string(), reason.to_string());
        if self.told.get(&k).map(String::as_str) == Some(msg) {
            return;
        }
        self.told.insert(k, msg.to_string());
        tracing::warn!(peer, reason, "BGP: {msg}");
        if let Some(p) = self.peers.get(peer) {
            outlets.event(p, true, reason, msg).await;
        }
    }

    async fn apply(
        &mut self,
        cfg: &BgpConfig,
        inp: &Inputs,
        outlets: &dyn BgpOutlets,
        metrics: &BgpMetrics,
        handle: &BgpHandle,
    ) {
        self.peers = inp
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        let p = plan(inp, &cfg.node);
        let mut down: BTreeMap<String, String> = BTreeMap::new();
        for (name, why) in &p.refused {
            let msg = format!("node {}: {why}", cfg.node);
            self.warn(outlets, name, reason::REFUSED, &msg).await;
            down.insert(name.clone(), why.clone());
        }
        let mut configs: Vec<(String, PeerConfig)> = vec![];
        let mut secret_failed = false;
        for (name, s) in &p.sessions {
            let password = match &s.spec.password_secret_ref {
                None => None,
                Some(r) => match outlets.password(r).await {
                    Ok(pw) => Some(pw),
                    Err(e) => {
                        // Fail closed: no session without the password it asks for.
                        let msg = format!("node {}: {e}", cfg.node);
                        self.warn(outlets, name, reason::PASSWORD, &msg).await;
                        down.insert(name.clone(), e);
                        secret_failed = true;
                        continue;
                    }
                },
            };
            self.told
                .remove(&(name.clone(), reason::PASSWORD.to_string()));
            configs.push((name.clone(), speaker_peer(name, s, password)));
        }
        self.told
            .retain(|(peer, r), _| r != reason::REFUSED || p.refused.contains_key(peer));
        self.secret_failed = secret_failed.then(Instant::now);
        self.down = down;
        let local_as = p.sessions.values().next().map(|s| s.local_asn);
        let global = local_as.map(|asn| GlobalConfig {
            router_id: self.router_id.unwrap_or_else(|| router_id_of(&cfg.node)),
            local_as: asn,
            // Dial only, unless a peer is passive: a router on the node itself may hold
            // port 179.
            listen: listen_addresses(&p, &self.node_ips),
            // Each peer carries its own restart time (`speaker_peer`), so a change of one
            // peer's restarts that session only.
            graceful_restart_time: None,
        });
        let current = handle
            .speaker
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|s| s.global().clone()));
        if current.is_some() && (configs.is_empty() || current != global) {
            // No session left, or the AS, identifier or listeners changed: every session
            // starts again, after a clean withdrawal.
            handle.leave().await;
        }
        if let (Some(g), false) = (&global, configs.is_empty()) {
            let have = handle.speaker.lock().ok().is_some_and(|s| s.is_some());
            if !have {
                match Speaker::new(g.clone()).await {
                    Ok(sp) => {
                        tracing::info!(local_as = g.local_as, router_id = %g.router_id, "BGP speaker started");
                        if let Ok(mut s) = handle.speaker.lock() {
                            *s = Some(sp);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "BGP speaker cannot start"),
                }
            }
        }
        let sp = handle.speaker.lock().ok().and_then(|s| s.clone());
        if let Some(sp) = sp {
            let peers: Vec<PeerConfig> = configs.iter().map(|(_, c)| c.clone()).collect();
            if let Err(e) = sp.reconcile(&peers, speaker_routes(&p)).await {
                tracing::warn!(error = %e, "BGP: a session could not be configured");
            }
        }
        self.names = configs
            .iter()
            .map(|(n, c)| (c.address, n.clone()))
            .collect();
        metrics
            .routes
            .set(i64::try_from(p.routes.len()).unwrap_or(i64::MAX));
        if let Ok(mut v) = handle.view.lock() {
            v.local_asn = if configs.is_empty() { None } else { local_as };
            v.router_id = global
                .as_ref()
                .map(|g| g.router_id)
                .filter(|_| !configs.is_empty());
            v.routes = p
                .routes
                .iter()
                .map(|(net, r)| RouteView {
                    prefix: net.to_string(),
                    origin: origin_text(&r.origin),
                    peers: r.peers.iter().cloned().collect(),
                })
                .collect();
            v.refused = p.refused.clone();
            v.bad_pools = p.bad_pools.clone();
        }
        for (pool, why) in &p.bad_pools {
            tracing::debug!(pool, why, "BGP: pool not advertised");
        }
        self.plan = p;
    }

    /// Reads the speaker's sessions; on a change of state tells it (Event, metrics) and
    /// writes this node's status entry.
    async fn observe(
        &mut self,
        cfg: &BgpConfig,
        outlets: &dyn BgpOutlets,
        metrics: &BgpMetrics,
        handle: &BgpHandle,
    ) {
        let sp = handle.speaker.lock().ok().and_then(|s| s.clone());
        let snap = sp.map(|s| s.snapshot());
        let mut entries: BTreeMap<String, BgpSessionStatus> = BTreeMap::new();
        let mut views = vec![];
        for ps in snap.iter().flat_map(|s| s.peers.iter()) {
            let Some(name) = ps.address.and_then(|a| self.names.get(&a)).cloned() else {
                continue;
            };
            let since = match self.seen.get(&name) {
                Some((st, t)) if *st == ps.state => t.clone(),
                prev => {
                    let t = berth_k8s::condition_now();
                    let was_up = prev.is_some_and(|(st, _)| *st == State::Established);
                    let label = PeerLabel { peer: name.clone() };
                    let addr = ps.address.map(|a| a.to_string()).unwrap_or_default();
                    if ps.state == State::Established {
                        metrics.established.get_or_create(&label).inc();
                        let msg = format!(
                            "node {}: session with {addr} (AS {}) established",
                            cfg.node,
                            ps.peer_as.unwrap_or_default()
                        );
                        tracing::info!(peer = %name, "BGP: {msg}");
                        if let Some(p) = self.peers.get(&name) {
                            outlets.event(p, false, reason::UP, &msg).await;
                        }
                    } else if was_up {
                        metrics.down.get_or_create(&label).inc();
                        let msg = format!(
                            "node {}: session with {addr} went down: {}",
                            cfg.node,
                            ps.last_error.as_deref().unwrap_or("closed")
                        );
                        tracing::warn!(peer = %name, "BGP: {msg}");
                        if let Some(p) = self.peers.get(&name) {
                            outlets.event(p, true, reason::DOWN, &msg).await;
                        }
                    }
                    self.seen.insert(name.clone(), (ps.state, t.clone()));
                    t
                }
            };
            let up = ps.state == State::Established;
            let label = PeerLabel { peer: name.clone() };
            metrics.up.get_or_create(&label).set(i64::from(up));
            metrics
                .sent
                .get_or_create(&label)
                .set(i64::try_from(ps.prefixes_sent).unwrap_or(i64::MAX));
            metrics
                .received
                .get_or_create(&label)
                .set(i64::try_from(ps.prefixes_received).unwrap_or(i64::MAX));
            let entry = BgpSessionStatus {
                node: cfg.node.clone(),
                state: format!("{:?}", ps.state),
                since: Some(since.clone()),
                prefixes_sent: ps.prefixes_sent as u64,
                prefixes_received: ps.prefixes_received as u64,
                message: (!up).then(|| ps.last_error.clone()).flatten(),
            };
            views.push(SessionView {
                peer: name.clone(),
                address: ps.address.map(|a| a.to_string()).unwrap_or_default(),
                peer_asn: self
                    .peers
                    .get(&name)
                    .map(|p| p.spec.peer_asn)
                    .unwrap_or_default(),
                state: entry.state.clone(),
                since: Some(since),
                prefixes_sent: entry.prefixes_sent,
                prefixes_received: entry.prefixes_received,
                bfd: ps.bfd_state.map(|b| format!("{b:?}")),
                message: entry.message.clone(),
            });
            entries.insert(name, entry);
        }
        // Sessions that cannot start say why.
        for (name, why) in &self.down {
            let entry = BgpSessionStatus {
                node: cfg.node.clone(),
                state: "Idle".into(),
                since: None,
                prefixes_sent: 0,
                prefixes_received: 0,
                message: Some(why.clone()),
            };
            views.push(SessionView {
                peer: name.clone(),
                address: self
                    .peers
                    .get(name)
                    .map(|p| p.spec.peer_address.to_string())
                    .unwrap_or_default(),
                peer_asn: self
                    .peers
                    .get(name)
                    .map(|p| p.spec.peer_asn)
                    .unwrap_or_default(),
                state: entry.state.clone(),
                message: entry.message.clone(),
                ..Default::default()
            });
            entries.insert(name.clone(), entry);
        }
        self.seen.retain(|n, _| entries.contains_key(n));
        views.sort_by(|a, b| a.peer.cmp(&b.peer));
        if let Ok(mut v) = handle.view.lock() {
            v.sessions = views;
        }
        // Status entries: written when they change, removed for peers no longer peered.
        for (name, e) in &entries {
            if self.written.get(name) == Some(e) {
                continue;
            }
            match outlets.session(name, Some(e)).await {
                Ok(()) => {
                    self.written.insert(name.clone(), e.clone());
                }
                Err(err) => {
                    tracing::debug!(peer = %name, error = %err, "BGP: status not written; retried")
                }
            }
        }
        let gone: Vec<String> = self
            .written
            .keys()
            .filter(|n| !entries.contains_key(*n))
            .cloned()
            .collect();
        for name in gone {
            if outlets.session(&name, None).await.is_ok() {
                self.written.remove(&name);
            }
            let label = PeerLabel { peer: name };
            metrics.up.remove(&label);
            metrics.sent.remove(&label);
            metrics.received.remove(&label);
        }
    }
}

/// The outlets on Kubernetes: Secrets in Berth's namespace, Events and `status.sessions` on the
/// BGPPeer.
pub struct KubeOutlets {
    client: kube::Client,
    namespace: String,
    node: String,
}

impl KubeOutlets {
    /// Outlets of `node`'s agent, reading Secrets in `namespace`.
    pub fn new(client: kube::Client, namespace: &str, node: &str) -> KubeOutlets {
        KubeOutlets {
            client,
            namespace: namespace.to_string(),
            node: node.to_string(),
        }
    }
}

#[async_trait]
impl BgpOutlets for KubeOutlets {
    async fn password(&self, r: &SecretKeyRef) -> Result<String, String> {
        berth_k8s::bgp::password(&self.client, &self.namespace, r).await
    }

    async fn event(&self, peer: &PeerObject, warning: bool, reason: &str, message: &str) {
        let r = berth_k8s::bgp::peer_reference(&peer.name, &peer.uid);
        let post =
            berth_k8s::events::post(&self.client, r, warning, reason, message, "berth-agent");
        match tokio::time::timeout(Duration::from_secs(5), post).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, reason, "could not post an Event on a BGPPeer")
            }
            Err(_) => tracing::warn!(reason, "posting an Event on a BGPPeer timed out"),
        }
    }

    async fn session(&self, peer: &str, status: Option<&BgpSessionStatus>) -> Result<(), String> {
        berth_k8s::bgp::write_session(&self.client, peer, &self.node, status).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Outlets that record what the loop tells, with a password lookup that always fails.
    #[derive(Default)]
    struct Fake {
        events: Mutex<Vec<(String, bool, String, String)>>,
        sessions: Mutex<Vec<(String, Option<BgpSessionStatus>)>>,
    }

    #[async_trait]
    impl BgpOutlets for Fake {
        async fn password(&self, r: &SecretKeyRef) -> Result<String, String> {
            Err(format!(
                "passwordSecretRef: Secret berth-system/{} key {:?}: the Secret does not exist",
                r.name,
                r.key()
            ))
        }
        async fn event(&self, peer: &PeerObject, warning: bool, reason: &str, message: &str) {
            self.events.lock().unwrap().push((
                peer.name.clone(),
                warning,
                reason.into(),
                message.into(),
            ));
        }
        async fn session(
            &self,
            peer: &str,
            status: Option<&BgpSessionStatus>,
        ) -> Result<(), String> {
            self.sessions
                .lock()
                .unwrap()
                .push((peer.into(), status.cloned()));
            Ok(())
        }
    }

    fn peer(name: &str, spec: serde_json::Value) -> PeerObject {
        PeerObject {
            name: name.into(),
            uid: format!("uid-{name}"),
            labels: BTreeMap::new(),
            spec: serde_json::from_value(spec).unwrap(),
        }
    }

    fn inputs(peers: Vec<PeerObject>) -> Inputs {
        Inputs {
            peers,
            cluster: Some(BgpConfigSpec {
                my_asn: Some(64513),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn round(l: &mut Loop, inp: &Inputs, fake: &Fake, h: &BgpHandle) {
        let cfg = BgpConfig { node: "n1".into() };
        let m = BgpMetrics::new();
        l.apply(&cfg, inp, fake, &m, h).await;
        l.observe(&cfg, fake, &m, h).await;
    }

    #[tokio::test]
    async fn a_peer_whose_password_cannot_be_read_stays_down_and_says_so_once() {
        let fake = Fake::default();
        let h = BgpHandle::default();
        let mut l = Loop::default();
        // No speaker starts in these tests (every session lacks its password), so nothing is
        // ever sent to these addresses.
        let inp = inputs(vec![peer(
            "tor",
            json!({"peerAddress": "198.18.1.1", "peerASN": 64512,
                   "passwordSecretRef": {"name": "tor-secret"}}),
        )]);
        round(&mut l, &inp, &fake, &h).await;
        // Fail closed: no speaker, so no session and no route.
        assert!(h.speaker.lock().unwrap().is_none());
        assert!(l.secret_failed.is_some(), "the Secret is read again later");
        let events = fake.events.lock().unwrap().clone();
        assert_eq!(events.len(), 1, "{events:?}");
        let (p, warning, reason, msg) = &events[0];
        assert!(
            p == "tor" && *warning && reason == reason::PASSWORD,
            "{events:?}"
        );
        assert!(
            msg.contains("node n1") && msg.contains("tor-secret"),
            "{msg}"
        );
        let sessions = fake.sessions.lock().unwrap().clone();
        assert_eq!(sessions.len(), 1, "{sessions:?}");
        let s = sessions[0].1.as_ref().expect("an entry");
        assert_eq!((s.node.as_str(), s.state.as_str()), ("n1", "Idle"));
        assert!(s
            .message
            .as_deref()
            .is_some_and(|m| m.contains("tor-secret")));
        assert_eq!(h.view().sessions[0].state, "Idle");
        // The same again: nothing told twice, nothing written twice.
        round(&mut l, &inp, &fake, &h).await;
        assert_eq!(fake.events.lock().unwrap().len(), 1);
        assert_eq!(fake.sessions.lock().unwrap().len(), 1);
        // The peer goes: its entry is removed.
        round(&mut l, &inputs(vec![]), &fake, &h).await;
        let sessions = fake.sessions.lock().unwrap().clone();
        assert_eq!(sessions.last(), Some(&("tor".to_string(), None)));
        assert!(l.secret_failed.is_none());
    }

    #[tokio::test]
    async fn a_second_as_for_the_same_node_is_refused_and_reported() {
        let fake = Fake::default();
        let h = BgpHandle::default();
        let mut l = Loop::default();
        // `a` lacks its password, so no speaker starts and nothing is sent anywhere.
        let inp = inputs(vec![
            peer(
                "a",
                json!({"peerAddress": "198.18.1.1", "peerASN": 64512,
                       "passwordSecretRef": {"name": "a"}}),
            ),
            peer(
                "b",
                json!({"peerAddress": "198.18.1.2", "peerASN": 64512, "myASN": 64999}),
            ),
        ]);
        round(&mut l, &inp, &fake, &h).await;
        assert!(h.speaker.lock().unwrap().is_none());
        let events = fake.events.lock().unwrap().clone();
        assert!(
            events.iter().any(|(p, w, r, m)| p == "b"
                && *w
                && r == reason::REFUSED
                && m.contains("AS 64513")),
            "{events:?}"
        );
        assert!(h.view().refused.contains_key("b"));
        let b = fake
            .sessions
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| p == "b")
            .and_then(|(_, s)| s.clone())
            .expect("b's entry");
        assert_eq!(b.state, "Idle");
        assert!(b.message.as_deref().is_some_and(|m| m.contains("AS 64513")));
        // Told once.
        round(&mut l, &inp, &fake, &h).await;
        let refused = fake
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _, r, _)| p == "b" && r == reason::REFUSED)
            .count();
        assert_eq!(refused, 1);
    }
}
