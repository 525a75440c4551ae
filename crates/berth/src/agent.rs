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

fn hostname() -> String {
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
    let listener = berth_agent::bind(&args.socket)?;
    tracing::info!(node = %node, socket = %args.socket.display(), ledger = %alloc.ledger().describe(), "berth agent serving");
    let result = tokio::select! {
        r = berth_agent::serve(listener, alloc, pods) => r.context("serving the agent socket"),
        sig = shutdown.wait() => {
            tracing::info!(signal = sig, "berth agent stopping");
            Ok(())
        }
    };
    let _ = std::fs::remove_file(&args.socket);
    tracing::info!("berth agent stopped");
    result
}
