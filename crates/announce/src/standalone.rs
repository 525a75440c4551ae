//! `berth vip --config FILE`: the election, heartbeats and fencing with no Kubernetes.
//!
//! Why: kube-vip's control-plane case (a VIP in front of the API servers before any cluster
//! exists), a plain keepalived replacement, and the way the L2 benchmark runs. Every node runs
//! it with the same peers and VIPs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;

use crate::election::{Config as ElectionConfig, Election, Eligible};
use crate::error::ConfigError;
use crate::http::{self, Handler, Reply};
use crate::metrics::Metrics;
use crate::runtime::{Announcer, Hold, Settings};
use crate::time::{BootClock, Clock};
use crate::timing::Timing;
use crate::transport::UdpTransport;

/// The default heartbeat port (UDP).
pub const DEFAULT_PORT: u16 = 7475;
/// The default HTTP address of `/metrics`, `/healthz`, `/readyz`, `/status`.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9475";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    node: String,
    interface: String,
    heartbeat: Option<String>,
    fence: Option<String>,
    takeover: Option<String>,
    rejoin: Option<String>,
    port: Option<u16>,
    address: Option<IpAddr>,
    witness: Option<IpAddr>,
    witness_relay: Option<bool>,
    metrics: Option<String>,
    probe: Option<bool>,
    probe_wait: Option<String>,
    hold: Option<String>,
    realtime: Option<bool>,
    #[serde(default)]
    peer: Vec<PeerFile>,
    #[serde(default)]
    vip: Vec<VipFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerFile {
    name: String,
    address: Option<IpAddr>,
    port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VipFile {
    address: String,
}

/// A checked standalone configuration.
#[derive(Debug, Clone)]
pub struct VipConfig {
    /// This node's name.
    pub node: String,
    /// The announcing interface.
    pub interface: String,
    /// Timers.
    pub timing: Timing,
    /// The heartbeat port.
    pub port: u16,
    /// This node's heartbeat address (`None`: the interface's first address of the peers'
    /// family).
    pub address: Option<IpAddr>,
    /// The witness (two nodes).
    pub witness: Option<IpAddr>,
    /// Heartbeats also go through the witness (`witness_relay`, default on): a router there
    /// forwards them, so a cut of the direct path between the two nodes alone is survived.
    pub witness_relay: bool,
    /// The HTTP address (`None`: off).
    pub metrics: Option<SocketAddr>,
    /// Conflict probes before the first announcement.
    pub probe: bool,
    /// How long a probe listens.
    pub probe_wait: Duration,
    /// Where VIPs are held.
    pub hold: Hold,
    /// Run with real-time scheduling (SCHED_RR), as corosync does.
    pub realtime: bool,
    /// Peers with a configured address: name → heartbeat address.
    pub peers: BTreeMap<String, SocketAddr>,
    /// Peers listed without an address: learnt from their hellos on the interface (every node
    /// then sends hellos to the whole link). Why: an operator may know the names of the nodes
    /// but not which address each has on the announcing interface (DHCP, another LAN).
    pub learnt: BTreeSet<String>,
    /// The VIPs (with the prefix length written, which is informational).
    pub vips: Vec<ipnet::IpNet>,
}

/// Parses a duration such as `50ms`, `1.5s`, `250us`, `2m`.
pub fn parse_duration(key: &str, v: &str) -> Result<Duration, ConfigError> {
    let bad = || {
        ConfigError::invalid(
            key,
            format!("{v:?}"),
            "write a duration with a unit: \"50ms\", \"1.5s\", \"250us\", \"2m\"",
        )
    };
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(bad)?;
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

impl VipConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<VipConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Parse(format!("reading {}: {e}", path.display())))?;
        VipConfig::parse(&text).map_err(|e| match e {
            ConfigError::Parse(m) => ConfigError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses and checks a configuration's text.
    pub fn parse(text: &str) -> Result<VipConfig, ConfigError> {
        let f: File = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        if f.node.trim().is_empty() {
            return Err(ConfigError::invalid(
                "node",
                "\"\"",
                "give this node a name",
            ));
        }
        if f.interface.trim().is_empty() {
            return Err(ConfigError::invalid(
                "interface",
                "\"\"",
                "name the interface VIPs are announced on (e.g. \"eth0\")",
            ));
        }
        let mut timing = match &f.heartbeat {
            Some(h) => Timing::from_heartbeat(parse_duration("heartbeat", h)?),
            None => Timing::default(),
        };
        if let Some(v) = &f.fence {
            timing.fence = parse_duration("fence", v)?;
        }
        if let Some(v) = &f.takeover {
            timing.takeover = parse_duration("takeover", v)?;
        } else if f.fence.is_some() {
            // Keep the default gap (two heartbeats) above a fence given alone.
            timing.takeover = timing.fence + timing.heartbeat * 2;
        }
        if let Some(v) = &f.rejoin {
            timing.rejoin = parse_duration("rejoin", v)?;
        } else {
            timing.rejoin = timing.rejoin.max(timing.takeover);
        }
        timing.validate(f.witness.is_some())?;
        let port = f.port.unwrap_or(DEFAULT_PORT);
        if port == 0 {
            return Err(ConfigError::invalid(
                "port",
                "0",
                "give the UDP heartbeat port (default 7475)",
            ));
        }
        let mut peers = BTreeMap::new();
        let mut learnt = BTreeSet::new();
        for (i, p) in f.peer.iter().enumerate() {
            if p.name.trim().is_empty() || p.name == f.node {
                return Err(ConfigError::invalid(
                    format!("peer[{i}].name"),
                    format!("{:?}", p.name),
                    "each peer needs a name of its own, not this node's",
                ));
            }
            let twice = match p.address {
                Some(a) => peers
                    .insert(p.name.clone(), SocketAddr::new(a, p.port.unwrap_or(port)))
                    .is_some(),
                None => {
                    if let Some(pp) = p.port {
                        return Err(ConfigError::invalid(
                            format!("peer[{i}].port"),
                            pp.to_string(),
                            "a peer without an address is learnt from its hellos, which come from                              the heartbeat port every node shares: remove the key or give the address",
                        ));
                    }
                    !learnt.insert(p.name.clone())
                }
            };
            if twice || (peers.contains_key(&p.name) && learnt.contains(&p.name)) {
                return Err(ConfigError::invalid(
                    format!("peer[{i}].name"),
                    format!("{:?}", p.name),
                    "listed twice; every peer once",
                ));
            }
        }
        let fams: BTreeSet<bool> = peers.values().map(|a| a.is_ipv4()).collect();
        if fams.len() > 1 {
            return Err(ConfigError::invalid(
                "peer.address",
                "IPv4 and IPv6",
                "heartbeats use one family: give every peer an address of the same family",
            ));
        }
        if let (Some(a), Some(v4)) = (f.address, fams.iter().next()) {
            if a.is_ipv4() != *v4 {
                return Err(ConfigError::invalid(
                    "address",
                    a.to_string(),
                    "must be of the peers' family",
                ));
            }
        }
        match (peers.len() + learnt.len(), f.witness) {
            (1, None) => {
                return Err(ConfigError::invalid(
                    "witness",
                    "missing",
                    "two nodes need a witness, an address on the LAN both nodes reach (e.g. the \
                     gateway): without one no majority survives a failure and the survivor could \
                     never take over",
                ))
            }
            (n, Some(w)) if n != 1 => {
                return Err(ConfigError::invalid(
                    "witness",
                    w.to_string(),
                    format!(
                        "a witness stands in for the second of two nodes; with {} nodes a majority \
                         needs none: remove the key",
                        n + 1
                    ),
                ))
            }
            _ => {}
        }
        if f.vip.is_empty() {
            return Err(ConfigError::invalid(
                "vip",
                "none",
                "list at least one [[vip]] with an address, e.g. address = \"198.18.0.200/24\"",
            ));
        }
        let mut vips: Vec<ipnet::IpNet> = Vec::new();
        for (i, v) in f.vip.iter().enumerate() {
            let key = format!("vip[{i}].address");
            let net: ipnet::IpNet = match v.address.parse::<ipnet::IpNet>() {
                Ok(n) => n,
                Err(_) => match v.address.parse::<IpAddr>() {
                    Ok(a) => ipnet::IpNet::from(a),
                    Err(_) => {
                        return Err(ConfigError::invalid(
                            key,
                            format!("{:?}", v.address),
                            "write an address, optionally with its prefix: \"198.18.0.200/24\"",
                        ))
                    }
                },
            };
            let a = net.addr();
            if a.is_unspecified() || a.is_loopback() || a.is_multicast() {
                return Err(ConfigError::invalid(
                    key,
                    a.to_string(),
                    "must be a unicast address",
                ));
            }
            if peers.values().any(|p| p.ip() == a) || f.address == Some(a) || f.witness == Some(a) {
                return Err(ConfigError::invalid(
                    key,
                    a.to_string(),
                    "is a node's or the witness's own address; a VIP must be an address of its own",
                ));
            }
            if vips.iter().any(|x| x.addr() == a) {
                return Err(ConfigError::invalid(key, a.to_string(), "listed twice"));
            }
            vips.push(net);
        }
        let metrics = match f.metrics.as_deref() {
            None => Some(DEFAULT_METRICS.parse().expect("valid default")),
            Some("") | Some("off") | Some("none") => None,
            Some(m) => Some(m.parse::<SocketAddr>().map_err(|_| {
                ConfigError::invalid(
                    "metrics",
                    format!("{m:?}"),
                    "write ADDRESS:PORT (e.g. \"127.0.0.1:9475\"), or \"off\"",
                )
            })?),
        };
        let hold =
            match f.hold.as_deref() {
                None | Some("lo") => Hold::On("lo".into()),
                Some("none") => Hold::Nowhere,
                Some(other) => return Err(ConfigError::invalid(
                    "hold",
                    format!("{other:?}"),
                    "\"lo\" (the default: this node accepts the VIP's traffic while it announces) \
                     or \"none\" (something else accepts it)",
                )),
            };
        let probe_wait = match &f.probe_wait {
            Some(v) => parse_duration("probe_wait", v)?,
            None => Duration::from_millis(300),
        };
        Ok(VipConfig {
            node: f.node,
            interface: f.interface,
            timing,
            port,
            address: f.address,
            witness: f.witness,
            witness_relay: f.witness_relay.unwrap_or(true),
            metrics,
            probe: f.probe.unwrap_or(true),
            probe_wait,
            hold,
            realtime: f.realtime.unwrap_or(true),
            peers,
            learnt,
            vips,
        })
    }
}

/// Why `berth vip` stopped.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// The configuration.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// Anything at start-up: interface, sockets, sysctls.
    #[error("{0}")]
    Start(String),
}

/// A random incarnation number (from the kernel's random pool; time and PID otherwise).
pub fn incarnation() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_ok()
    {
        return u64::from_le_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}

/// Real-time priority `berth vip` asks for (SCHED_RR, 1–99).
pub const RT_PRIORITY: i32 = 10;

/// Makes the calling thread (and every thread it starts later) SCHED_RR at [`RT_PRIORITY`],
/// with `RLIMIT_RTTIME` set so that a thread that ran 0.5 s without blocking gets SIGXCPU
/// (and is killed at 1 s): a bug can never starve the machine.
///
/// Why: heartbeats and the takeover timer must run on time on a saturated machine; a CPU hog
/// at normal priority then delays them by microseconds, not by its time slices (corosync runs
/// real-time for the same reason). Call it before the runtime's threads are created. Returns
/// a warning to log when the kernel refuses (no CAP_SYS_NICE): `berth vip` then runs at
/// normal priority.
pub fn raise_priority() -> Result<(), String> {
    let lim = libc::rlimit {
        rlim_cur: 500_000,
        rlim_max: 1_000_000,
    };
    // SAFETY: setrlimit with a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_RTTIME, &lim) } != 0 {
        return Err(format!(
            "not running real-time: RLIMIT_RTTIME: {}",
            std::io::Error::last_os_error()
        ));
    }
    let param = libc::sched_param {
        sched_priority: RT_PRIORITY,
    };
    // SAFETY: sched_setscheduler on the calling thread with a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_RR, &param) } != 0 {
        return Err(format!(
            "not running real-time (SCHED_RR {RT_PRIORITY}): {}; heartbeats may be late on a              saturated machine (grant CAP_SYS_NICE, or set realtime = false to silence this)",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Sets `arp_ignore=1` and `arp_announce=2` on `dev`.
///
/// Why: the VIP is held on `lo` so that the node accepts its traffic; without these the
/// kernel would answer ARP for it on `dev` even when this node does not announce it
/// (`arp_ignore=1`: answer only for addresses on the receiving interface), and would use it as
/// the sender address of its own ARP requests, which updates other hosts' caches
/// (`arp_announce=2`: always the interface's own address). IPv6 needs nothing: the kernel
/// answers NS only for addresses on the receiving interface.
pub fn arp_sysctls(dev: &str) -> Result<(), String> {
    for (key, value) in [("arp_ignore", "1"), ("arp_announce", "2")] {
        let path = format!("/proc/sys/net/ipv4/conf/{dev}/{key}");
        std::fs::write(&path, value).map_err(|e| {
            format!(
                "setting {path} to {value}: {e}; without it the kernel answers ARP for a VIP held on lo \
                 even when this node does not announce it (run as root, or set \
                 net.ipv4.conf.{dev}.{key}={value} and hold = \"none\")"
            )
        })?;
    }
    Ok(())
}

struct Endpoints {
    ann: Arc<Announcer>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl Handler for Endpoints {
    async fn get(&self, path: &str) -> Reply {
        let snap = tokio::time::timeout(Duration::from_secs(1), self.ann.status())
            .await
            .ok()
            .flatten();
        match path {
            "/metrics" => (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.encode(),
            ),
            "/healthz" => match snap {
                Some(_) => (200, "text/plain", "ok\n".into()),
                None => (
                    503,
                    "text/plain",
                    "the announcer loop does not answer\n".into(),
                ),
            },
            "/readyz" => match snap {
                Some(s) => {
                    let mut why = Vec::new();
                    if !s.status.link_up {
                        why.push("the interface is down");
                    }
                    if !s.status.quorum {
                        why.push("no majority heard");
                    }
                    if !s.status.settled {
                        why.push("still in the start-up quiet period");
                    }
                    if why.is_empty() {
                        (200, "text/plain", "ready\n".into())
                    } else {
                        (
                            503,
                            "text/plain",
                            format!("not ready: {}\n", why.join(", ")),
                        )
                    }
                }
                None => (
                    503,
                    "text/plain",
                    "the announcer loop does not answer\n".into(),
                ),
            },
            "/status" => match snap {
                Some(s) => (
                    200,
                    "application/json",
                    serde_json::to_string_pretty(&s).unwrap_or_default(),
                ),
                None => (
                    503,
                    "text/plain",
                    "the announcer loop does not answer\n".into(),
                ),
            },
            _ => (
                404,
                "text/plain",
                "try /metrics /healthz /readyz /status\n".into(),
            ),
        }
    }
}

/// Runs `berth vip` until SIGTERM/SIGINT, then withdraws and hands over gracefully.
pub async fn run(cfg: VipConfig) -> Result<(), VipError> {
    use berth_netlink::{Addresses, Kernel, Links};
    let start = |e: String| VipError::Start(e);
    let kernel = Kernel::new().map_err(|e| start(e.to_string()))?;
    let link = kernel
        .link(&cfg.interface)
        .await
        .map_err(|e| start(format!("interface `{}`: {e}", cfg.interface)))?;
    let mac = link.mac.map(|m| m.0);
    // The family: that of `address`, else of the peers' addresses, else IPv4.
    let v4 = match cfg.address {
        Some(a) => a.is_ipv4(),
        None => cfg.peers.values().next().is_none_or(|a| a.is_ipv4()),
    };
    let own = match cfg.address {
        Some(a) => a,
        None => kernel
            .addresses(&cfg.interface)
            .await
            .map_err(|e| start(e.to_string()))?
            .into_iter()
            .map(|a| a.net.addr())
            .find(|a| a.is_ipv4() == v4 && !matches!(a, IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80))
            .ok_or_else(|| {
                start(format!(
                    "interface {} has no {} address to send heartbeats from; add one or set `address`",
                    cfg.interface,
                    if v4 { "IPv4" } else { "IPv6" }
                ))
            })?,
    };
    if matches!(cfg.hold, Hold::On(_)) && cfg.vips.iter().any(|v| v.addr().is_ipv4()) {
        arp_sysctls(&cfg.interface).map_err(start)?;
    }
    // Learning peers needs the wildcard address, where hellos to the whole link arrive.
    let discovery = (!cfg.learnt.is_empty())
        .then(|| crate::transport::hello_destination(v4, cfg.port, link.index));
    let bind = match (discovery.is_some(), v4) {
        (false, _) => own,
        (true, true) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        (true, false) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    let transport = UdpTransport::bind(SocketAddr::new(bind, cfg.port), &cfg.interface)
        .map_err(|e| start(e.to_string()))?;
    let clock: Arc<dyn Clock> = Arc::new(BootClock);
    let ecfg = ElectionConfig {
        me: cfg.node.clone(),
        peers: cfg.peers.keys().chain(&cfg.learnt).cloned().collect(),
        timing: cfg.timing,
        witness: cfg.witness.is_some(),
        incarnation: incarnation(),
        mac,
        probe: cfg.probe,
    };
    let mut election = Election::new(ecfg, clock.now())?;
    election.set_addresses(cfg.vips.iter().map(|v| (v.addr(), Eligible::All)).collect());
    let mut settings = Settings::new(&cfg.interface, cfg.peers.clone());
    settings.discovery = discovery;
    settings.witness = cfg.witness;
    settings.relay_from = cfg.witness_relay.then_some(SocketAddr::new(own, cfg.port));
    settings.hold = cfg.hold.clone();
    settings.probe_wait = cfg.probe_wait;
    let metrics = Arc::new(Metrics::new());
    let ann = Announcer::start(
        kernel,
        transport,
        clock,
        election,
        settings,
        metrics.clone(),
    )
    .await
    .map_err(|e| start(e.to_string()))?;
    let ann = Arc::new(ann);
    let server = match cfg.metrics {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| start(format!("metrics address {addr}: {e}")))?;
            let h: Arc<dyn Handler> = Arc::new(Endpoints {
                ann: ann.clone(),
                metrics,
            });
            Some(tokio::spawn(http::serve(l, h)))
        }
        None => None,
    };
    tracing::info!(
        node = %cfg.node, interface = %cfg.interface, address = %own, port = cfg.port,
        heartbeat = ?cfg.timing.heartbeat, fence = ?cfg.timing.fence, takeover = ?cfg.timing.takeover,
        vips = ?cfg.vips, "berth vip running"
    );
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| start(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| start(e.to_string()))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down: withdrawing and handing over");
    if let Some(s) = server {
        s.abort();
    }
    ann.leave().await;
    Ok(())
}

/// Prints the status of the `berth vip` serving HTTP on `addr`, as a table.
pub async fn print_status(addr: SocketAddr, json: bool) -> Result<(), String> {
    let (code, body) = http::get(addr, "/status").await.map_err(|e| {
        format!("asking berth vip at {addr} for /status: {e} (is it running, with this `metrics` address?)")
    })?;
    if code != 200 {
        return Err(format!(
            "berth vip at {addr} answered {code}: {}",
            body.trim()
        ));
    }
    if json {
        println!("{body}");
        return Ok(());
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("status from {addr} is not JSON: {e}"))?;
    let yes = |b: &serde_json::Value| {
        if b.as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        }
    };
    println!(
        "node {}  link {}  majority {}  heartbeat {}ms  fence {}ms  takeover {}ms  withheld {}",
        v["node"].as_str().unwrap_or("?"),
        if v["link_up"].as_bool() == Some(true) {
            "up"
        } else {
            "down"
        },
        yes(&v["quorum"]),
        v["heartbeat_ms"],
        v["fence_ms"],
        v["takeover_ms"],
        v["withheld"],
    );
    println!(
        "{:<40} {:<12} {:>10} {:<5} {:<10} CONFLICT",
        "ADDRESS", "ANNOUNCER", "SINCE", "HERE", "LEASE"
    );
    for a in v["addresses"].as_array().into_iter().flatten() {
        let since = a["since_seconds"]
            .as_f64()
            .map_or("-".to_string(), |s| format!("{s:.1}s"));
        let lease = match a["lease_ms"].as_u64() {
            Some(0) | None => "-".to_string(),
            Some(u64::MAX) => "always".to_string(),
            Some(ms) => format!("{ms}ms"),
        };
        println!(
            "{:<40} {:<12} {:>10} {:<5} {:<10} {}",
            a["address"].as_str().unwrap_or("?"),
            a["announcer"].as_str().unwrap_or("-"),
            since,
            yes(&a["announcing"]),
            lease,
            a["conflict"].as_str().unwrap_or("-"),
        );
    }
    println!(
        "{:<16} {:<28} {:<6} {:<7} {:>11}  ANNOUNCES",
        "PEER", "ADDRESS", "ALIVE", "STABLE", "LAST HEARD"
    );
    let learning = v["discovery"].as_bool() == Some(true);
    for p in v["peers"].as_array().into_iter().flatten() {
        let heard = p["last_heard_ms"]
            .as_u64()
            .map_or("never".to_string(), |ms| format!("{ms}ms"));
        let ann: Vec<&str> = p["announces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str())
            .collect();
        let name = p["name"].as_str().unwrap_or("?");
        // A peer's address, and whether it was learnt (from its hellos) or configured.
        let address = match v["peer_addresses"][name].as_str() {
            Some(a) if learning => format!("{a} (hello)"),
            Some(a) => a.to_string(),
            None => "not heard yet".to_string(),
        };
        println!(
            "{:<16} {:<28} {:<6} {:<7} {:>11}  {}",
            name,
            address,
            yes(&p["alive"]),
            yes(&p["stable"]),
            heard,
            if ann.is_empty() {
                "-".to_string()
            } else {
                ann.join(",")
            },
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node = "n1"
interface = "eth0"
heartbeat = "50ms"
[[peer]]
name = "n2"
address = "198.18.0.12"
[[peer]]
name = "n3"
address = "198.18.0.13"
[[vip]]
address = "198.18.0.200/24"
"#;

    #[test]
    fn the_issue_example_parses_with_the_defaults() {
        let c = VipConfig::parse(GOOD).unwrap();
        assert_eq!(c.timing, Timing::default());
        assert_eq!(c.port, DEFAULT_PORT);
        assert_eq!(c.peers["n2"], "198.18.0.12:7475".parse().unwrap());
        assert_eq!(c.vips[0].to_string(), "198.18.0.200/24");
        assert_eq!(c.hold, Hold::On("lo".into()));
        assert!(c.probe && c.realtime);
        assert_eq!(c.metrics, Some(DEFAULT_METRICS.parse().unwrap()));
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("k", "50ms").unwrap(),
            Duration::from_millis(50)
        );
        assert_eq!(
            parse_duration("k", "1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            parse_duration("k", "250us").unwrap(),
            Duration::from_micros(250)
        );
        assert_eq!(parse_duration("k", "2m").unwrap(), Duration::from_secs(120));
        for bad in ["50", "ms", "-1s", "5 parsecs", ""] {
            let e = parse_duration("heartbeat", bad).unwrap_err().to_string();
            assert!(e.contains("heartbeat") && e.contains("unit"), "{bad}: {e}");
        }
    }

    fn err(text: &str) -> String {
        VipConfig::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_key_the_value_and_the_fix() {
        let two = GOOD.replace("[[peer]]\nname = \"n3\"\naddress = \"198.18.0.13\"\n", "");
        let e = err(&two);
        assert!(e.contains("witness") && e.contains("gateway"), "{e}");
        let w = format!("witness = \"198.18.0.1\"\n{GOOD}");
        assert!(err(&w).contains("remove the key"));
        assert!(VipConfig::parse(&format!("witness = \"198.18.0.1\"\n{two}")).is_ok());
        let e = err(&GOOD.replace("\"50ms\"", "\"50\""));
        assert!(e.contains("heartbeat") && e.contains("\"50\""), "{e}");
        let e = err(&GOOD.replace(
            "heartbeat = \"50ms\"",
            "fence = \"400ms\"\ntakeover = \"300ms\"",
        ));
        assert!(e.contains("takeover") && e.contains("fence"), "{e}");
        let e = err(&GOOD.replace("198.18.0.200/24", "198.18.0.12"));
        assert!(
            e.contains("vip[0].address") && e.contains("own address"),
            "{e}"
        );
        let e = err(&GOOD.replace("198.18.0.200/24", "banana"));
        assert!(e.contains("vip[0].address") && e.contains("banana"), "{e}");
        let e = err(&GOOD.replace("name = \"n3\"", "name = \"n2\""));
        assert!(e.contains("peer[1].name") && e.contains("twice"), "{e}");
        let e = err(&GOOD.replace("name = \"n3\"", "name = \"n1\""));
        assert!(e.contains("peer[1].name"), "{e}");
        let e = err(&format!("{GOOD}\nmystery = 1\n"));
        assert!(e.contains("mystery"), "{e}");
        let e = err(&format!("metrics = \"somewhere\"\n{GOOD}"));
        assert!(e.contains("metrics") && e.contains("ADDRESS:PORT"), "{e}");
        let e = err(&GOOD.replace("address = \"198.18.0.13\"", "address = \"2001:db8::13\""));
        assert!(e.contains("family"), "{e}");
        let e = err(&format!("hold = \"eth0\"\n{GOOD}"));
        assert!(e.contains("hold"), "{e}");
        let novip = GOOD.replace("[[vip]]\naddress = \"198.18.0.200/24\"\n", "");
        assert!(err(&novip).contains("[[vip]]"));
    }

    #[test]
    fn a_fence_alone_keeps_the_gap_and_the_tuned_set_is_accepted() {
        let c =
            VipConfig::parse(&GOOD.replace("heartbeat = \"50ms\"", "fence = \"500ms\"")).unwrap();
        assert_eq!(c.timing.takeover, Duration::from_millis(600));
        let c = VipConfig::parse(&GOOD.replace(
            "heartbeat = \"50ms\"",
            "heartbeat = \"10ms\"\nfence = \"20ms\"\ntakeover = \"35ms\"\nrejoin = \"1s\"",
        ))
        .unwrap();
        assert_eq!(c.timing.takeover, Duration::from_millis(35));
    }
}
