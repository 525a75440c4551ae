//! `berth agent`: the node agent's process wiring.

use crate::ledger_args::LedgerArgs;
use anyhow::Context;
use berth_allocator::Allocator;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Options of `berth agent`.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Unix socket berth-ipam connects to.
    #[arg(long, default_value = "/run/berth/agent.sock")]
    pub socket: PathBuf,
    /// This node's name (blocks and bindings are recorded under it). Defaults to the hostname.
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
    /// Watch this node's pods (annotations, StatefulSet and Deployment identities); on by default
    /// when a kubeconfig is given, the ledger is `kubernetes`, or the agent runs in a pod.
    #[arg(long)]
    pub watch_pods: Option<bool>,
    /// How long a CNI ADD waits for its pod to appear in the watch before "try again".
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub pod_wait: Duration,
    /// Routed pod network: `l2` routes every other node's blocks via its InternalIP when that is
    /// on a segment this node is on; `off` leaves pod routes to something else (BGP mode) after
    /// removing those a previous `l2` run made.
    #[arg(long, default_value = "l2")]
    pub pod_routes: berth_agent::routes::PodRoutes,
    /// The bridge this node's pods hang on (the bridge plugin's `bridge`). Its prefix is not a
    /// segment for next hops, and on it the agent answers ARP/NDP for the routed blocks. `""`:
    /// no bridge (pods on macvlan, say).
    #[arg(long, default_value = "cni0")]
    pub pod_bridge: String,
    /// Reconcile pod routes at least this often, besides following the watches.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub pod_routes_resync: Duration,
    /// L2 announcement of Service addresses from `announce: l2` pools (on Kubernetes): `on`
    /// takes part in the election when a pool selects this node; `off` never announces.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub l2: String,
    /// UDP port the agents heartbeat each other on (the same on every node).
    #[arg(long, default_value_t = berth_announce::standalone::DEFAULT_PORT)]
    pub l2_port: u16,
    /// Heartbeat interval; T_fence is 6 and T_takeover 8 heartbeats (the same on every node).
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub l2_heartbeat: Duration,
    /// An address on the LAN both members probe when a pool has exactly two eligible nodes
    /// (the gateway, say): the survivor of a failure then takes over; without it, neither does.
    #[arg(long)]
    pub l2_witness: Option<std::net::IpAddr>,
    /// Send every heartbeat a second time through the witness (a frame to its MAC, which a
    /// router forwards to the peer), so a cut of only the direct path between the two nodes
    /// is not taken for a dead peer by both. `false` where the witness does not route.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub l2_witness_relay: bool,
    /// BGP from this node (on Kubernetes): `on` peers with the BGPPeers that select this node
    /// and advertises what the pools and the BGPConfiguration say; `off` never peers.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub bgp: String,
    /// The namespace whose Secrets hold the BGP peers' passwords (Berth's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "berth-system")]
    pub bgp_secrets_namespace: String,
    /// Serve Prometheus metrics, `/healthz`, `/readyz` and `/status` here (e.g. 0.0.0.0:9473).
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub ledger: LedgerArgs,
}

/// `500ms`, `3s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 500ms, 3s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?} is not a duration such as 500ms, 3s or 2m")),
    }
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Run the agent until SIGTERM or SIGINT.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let mut shutdown = crate::shutdown::Shutdown::install()?;
    let node = args.node.clone().unwrap_or_else(hostname);
    let open = async {
        loop {
            match args.ledger.open().await {
                Ok(l) => break Ok(l),
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "ledger not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => break Err(e),
            }
        }
    };
    let ledger = tokio::select! {
        l = open => l.context("opening the ledger")?,
        sig = shutdown.wait() => {
            tracing::info!(signal = sig, "berth agent stopped before it served");
            return Ok(());
        }
    };
    let alloc = Arc::new(Allocator::new(ledger, node.clone()));
    // Reconcile with the ledger before serving: a restarted agent continues exactly where the
    // ledger says. If the ledger is down now, the first request loads it instead.
    if let Err(e) = alloc.reload().await {
        tracing::warn!(error = %e, "could not read the ledger at start; will load on first request");
    }
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let watch = args
        .watch_pods
        .unwrap_or(args.ledger.kubeconfig.is_some() || args.ledger.is_kubernetes() || in_cluster);
    let pods: Option<Arc<dyn berth_agent::PodSource>> = if watch {
        let (client, server) = berth_k8s::client(args.ledger.kubeconfig.as_deref()).await?;
        tracing::info!(%server, node = %node, "watching this node's pods");
        let cache = berth_k8s::pods::PodCache::start(client.clone(), &node);
        let node_watch = berth_k8s::pods::NodeWatch::start(client, &node);
        Some(Arc::new(berth_agent::KubePods::new(
            cache,
            Some(node_watch),
            args.pod_wait,
        )))
    } else {
        None
    };
    let route_metrics = Arc::new(berth_agent::routes::RouteMetrics::default());
    let nodes = SharedNodes::default();
    let _routes = start_pod_routes(&args, &node, Arc::clone(&route_metrics), &nodes).await;
    let announce = SharedAnnounce::default();
    let l2 = start_l2(&args, &node, &nodes, &announce).await;
    let bgp = start_bgp(&args, &node, &nodes, &announce).await;
    let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _http = match args.metrics {
        Some(addr) => Some(
            crate::agent_http::serve(
                addr,
                l2.as_ref().map(|l| l.handle.clone()),
                l2.as_ref().map(|l| l.metrics.clone()),
                bgp.as_ref().map(|b| (b.handle.clone(), b.metrics.clone())),
                serving.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let listener = berth_agent::bind(&args.socket)?;
    serving.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(node = %node, socket = %args.socket.display(), ledger = %alloc.ledger().describe(), "berth agent serving");
    let result = tokio::select! {
        r = berth_agent::serve(listener, alloc, pods) => r.context("serving the agent socket"),
        sig = shutdown.wait() => {
            tracing::info!(signal = sig, "berth agent stopping");
            Ok(())
        }
    };
    let _ = std::fs::remove_file(&args.socket);
    if let Some(l) = &l2 {
        // Graceful hand-over: the successor takes over without waiting out T_takeover.
        l.handle.leave().await;
    }
    if let Some(b) = &bgp {
        // A clean stop withdraws first (a crash keeps the routes through graceful restart).
        b.handle.leave().await;
    }
    let m = route_metrics.snapshot();
    tracing::info!(
        pod_routes_added = m.added,
        pod_routes_replaced = m.replaced,
        pod_routes_removed = m.removed,
        pod_routes_installed = m.installed,
        "berth agent stopped"
    );
    result
}

/// One watch of every Node (labels and InternalIPs), started by whichever of the pod routes
/// and the L2 announcer needs it first, and shared by both.
///
/// Why: Nodes change every few seconds (heartbeats) and every agent watches all of them; two
/// watches would double what the API server sends to every node.
#[derive(Default)]
struct SharedNodes(std::sync::Mutex<Option<NodeSnapshot>>);

/// Every Node's labels and InternalIPs.
type NodeSnapshot = berth_k8s::cluster::Snapshot<
    std::collections::BTreeMap<String, berth_k8s::announce::NodeFacts>,
>;

impl SharedNodes {
    /// The shared watch, started on `client` if it is not running yet.
    fn get(&self, client: &kube::Client) -> NodeSnapshot {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| berth_k8s::announce::watch_nodes(client.clone()))
            .clone()
    }
}

/// The running L2 announcer: its handle (status, leave) and metrics; the task stops with it.
/// The Service-side watches the L2 announcer and the BGP speaker both follow, started once.
#[derive(Default)]
struct SharedAnnounce(std::sync::Mutex<Option<AnnounceWatches>>);

#[derive(Clone)]
struct AnnounceWatches {
    pools: berth_k8s::cluster::Snapshot<Vec<berth_core::PoolSpec>>,
    bindings: berth_k8s::cluster::Snapshot<Vec<berth_core::Binding>>,
    services: berth_k8s::cluster::Snapshot<
        std::collections::BTreeMap<
            berth_k8s::announce::ServiceKey,
            berth_k8s::announce::ServiceFacts,
        >,
    >,
    endpoints: berth_k8s::cluster::Snapshot<
        std::collections::BTreeMap<
            berth_k8s::announce::ServiceKey,
            std::collections::BTreeSet<String>,
        >,
    >,
}

impl SharedAnnounce {
    async fn get(&self, client: &kube::Client) -> AnnounceWatches {
        if let Some(w) = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return w;
        }
        use berth_k8s::announce as watch;
        let slices = watch::endpoint_slice_resource(client).await;
        let w = AnnounceWatches {
            pools: watch::watch_pools(client.clone()),
            bindings: watch::watch_service_bindings(client.clone()),
            services: watch::watch_services(client.clone()),
            endpoints: watch::watch_endpoint_nodes(client.clone(), slices),
        };
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(w.clone());
        w
    }
}

struct BgpTask {
    handle: berth_agent::bgp::BgpHandle,
    metrics: Arc<berth_agent::bgp::BgpMetrics>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BgpTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_bgp(
    args: &AgentArgs,
    node: &str,
    shared: &SharedNodes,
    announce: &SharedAnnounce,
) -> Option<BgpTask> {
    use berth_agent::bgp::{self, BgpConfig, BgpHandle, BgpInputs, BgpMetrics, KubeOutlets};
    if args.bgp == "off" {
        tracing::info!("BGP off (--bgp off)");
        return None;
    }
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    if args.ledger.kubeconfig.is_none() && !in_cluster && !args.ledger.is_kubernetes() {
        tracing::info!("no BGP: its peers and routes come from Kubernetes (pass --kubeconfig, or run in a pod)");
        return None;
    }
    let client = match berth_k8s::client(args.ledger.kubeconfig.as_deref()).await {
        Ok((c, _)) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no BGP: the cluster cannot be reached");
            return None;
        }
    };
    let w = announce.get(&client).await;
    let blocks = if args.ledger.is_kubernetes() {
        Some(berth_k8s::cluster::watch_blocks(client.clone()))
    } else {
        tracing::info!("BGP: pod blocks are advertised on the Kubernetes ledger only");
        None
    };
    let inputs = BgpInputs {
        nodes: shared.get(&client),
        peers: berth_k8s::bgp::watch_peers(client.clone()),
        cluster: berth_k8s::bgp::watch_configuration(client.clone()),
        pools: w.pools,
        bindings: w.bindings,
        services: w.services,
        endpoints: w.endpoints,
        blocks,
    };
    let outlets = Arc::new(KubeOutlets::new(client, &args.bgp_secrets_namespace, node));
    let metrics = Arc::new(BgpMetrics::new());
    let handle = BgpHandle::default();
    let cfg = BgpConfig {
        node: node.to_string(),
    };
    let task = tokio::spawn(bgp::run::run(
        cfg,
        inputs,
        outlets,
        metrics.clone(),
        handle.clone(),
    ));
    Some(BgpTask {
        handle,
        metrics,
        task,
    })
}

struct L2Task {
    handle: berth_agent::l2::L2Handle,
    metrics: Arc<berth_announce::metrics::Metrics>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for L2Task {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the L2 announcer (`--l2 on`, on Kubernetes). Never fails the agent: without what it
/// needs it says so and announces nothing.
async fn start_l2(
    args: &AgentArgs,
    node: &str,
    shared: &SharedNodes,
    announce: &SharedAnnounce,
) -> Option<L2Task> {
    use berth_agent::l2::{self, KubeNotices, L2Config, L2Handle, L2Inputs};
    if args.l2 == "off" {
        tracing::info!("L2 announcement off (--l2 off)");
        return None;
    }
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    if args.ledger.kubeconfig.is_none() && !in_cluster && !args.ledger.is_kubernetes() {
        tracing::info!("no L2 announcement: Service addresses come from Kubernetes (pass --kubeconfig, or run in a pod)");
        return None;
    }
    let timing = berth_announce::Timing::from_heartbeat(args.l2_heartbeat);
    if let Err(e) = timing.validate(args.l2_witness.is_some()) {
        tracing::error!(error = %e, "no L2 announcement: --l2-heartbeat");
        return None;
    }
    let client = match berth_k8s::client(args.ledger.kubeconfig.as_deref()).await {
        Ok((c, _)) => c,
        Err(e) => {
            tracing::warn!(error = %e, "no L2 announcement: the cluster cannot be reached");
            return None;
        }
    };
    let w = announce.get(&client).await;
    let inputs = L2Inputs {
        nodes: shared.get(&client),
        pools: w.pools,
        bindings: w.bindings,
        services: w.services,
        endpoints: w.endpoints,
    };
    let notices = Arc::new(KubeNotices::new(client, inputs.services.clone(), node));
    let metrics = Arc::new(berth_announce::metrics::Metrics::new());
    let handle = L2Handle::default();
    let cfg = L2Config {
        node: node.to_string(),
        port: args.l2_port,
        timing,
        witness: args.l2_witness,
        witness_relay: args.l2_witness_relay,
    };
    let task = tokio::spawn(l2::run(
        cfg,
        inputs,
        notices,
        metrics.clone(),
        handle.clone(),
    ));
    Some(L2Task {
        handle,
        metrics,
        task,
    })
}

/// Aborts the pod-route task when the agent stops. Routes stay in the kernel: a restart
/// continues with them unchanged.
struct RouteTask(Option<tokio::task::JoinHandle<()>>);

impl Drop for RouteTask {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

/// Starts the routed pod network (`--pod-routes`) on this node's kernel, from the watches the
/// ledger offers. Never fails the agent: without what it needs it says so and routes nothing.
async fn start_pod_routes(
    args: &AgentArgs,
    node: &str,
    metrics: Arc<berth_agent::routes::RouteMetrics>,
    shared: &SharedNodes,
) -> RouteTask {
    use berth_agent::routes::{self, PodRoutes, RouteConfig, RouteInputs};
    let kernel = match berth_netlink::Kernel::new() {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "no pod routes: cannot reach the kernel's routing");
            return RouteTask(None);
        }
    };
    if args.pod_routes == PodRoutes::Off {
        return RouteTask(Some(tokio::spawn(async move {
            match routes::run::clear(&kernel, &metrics).await {
                Ok(n) => tracing::info!(removed = n, "pod routes off (--pod-routes off)"),
                Err(e) => {
                    tracing::warn!(error = %e, "pod routes off; cannot list the kernel's routes")
                }
            }
        })));
    }
    let kube = |what: &'static str| async move {
        match berth_k8s::client(args.ledger.kubeconfig.as_deref()).await {
            Ok((c, _)) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "no pod routes: {what}; or run with --pod-routes off");
                None
            }
        }
    };
    let inputs = if args.ledger.is_kubernetes() {
        let Some(client) = kube("the Kubernetes ledger's cluster cannot be reached").await else {
            return RouteTask(None);
        };
        RouteInputs {
            blocks: berth_k8s::cluster::watch_blocks(client.clone()),
            node_ips: berth_k8s::announce::node_ips(shared.get(&client)),
        }
    } else {
        match args.ledger.spec() {
            Ok(berth_ledger::LedgerSpec::Etcd {
                endpoints,
                tls,
                prefix,
            }) => {
                let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
                if args.ledger.kubeconfig.is_none() && !in_cluster {
                    tracing::warn!(
                        "no pod routes: on the etcd ledger the nodes' InternalIPs come from Kubernetes; pass --kubeconfig (or run in a pod), or --pod-routes off"
                    );
                    return RouteTask(None);
                }
                let Some(client) =
                    kube("node addresses come from Kubernetes, which cannot be reached").await
                else {
                    return RouteTask(None);
                };
                let etcd = match berth_ledger::etcd::Etcd::connect(
                    &endpoints,
                    tls.as_ref(),
                    &prefix,
                )
                .await
                {
                    Ok(e) => e,
                    Err(e) => {
                        tracing::warn!(error = %e, "no pod routes: cannot watch the etcd ledger's blocks");
                        return RouteTask(None);
                    }
                };
                let (c, blocks_prefix) = etcd.watch_parts(berth_ledger::Kind::Block);
                RouteInputs {
                    blocks: routes::etcd::watch_blocks(c, blocks_prefix),
                    node_ips: berth_k8s::announce::node_ips(shared.get(&client)),
                }
            }
            _ => {
                tracing::info!("no pod routes: the embedded ledger is single-node");
                return RouteTask(None);
            }
        }
    };
    let cfg = RouteConfig {
        node: node.to_string(),
        pod_bridge: (!args.pod_bridge.is_empty()).then(|| args.pod_bridge.clone()),
        resync: args.pod_routes_resync,
        answer_limit: ANSWER_LIMIT,
    };
    tracing::info!(node = %node, pod_bridge = %args.pod_bridge, "routing other nodes' blocks (--pod-routes l2)");
    RouteTask(Some(tokio::spawn(routes::run(
        kernel, cfg, inputs, metrics,
    ))))
}

/// Blocks with more addresses than this are routed but not answered for on the pod bridge
/// (a /20 of IPv4, a /116 of IPv6).
const ANSWER_LIMIT: u32 = 4096;
