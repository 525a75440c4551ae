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
    #[command(flatten)]
    pub ledger: LedgerArgs,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Run the agent until SIGTERM or SIGINT.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let node = args.node.clone().unwrap_or_else(hostname);
    let spec = args.ledger.spec()?;
    let ledger = loop {
        match berth_ledger::open(&spec).await {
            Ok(l) => break l,
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "ledger not reachable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("opening the ledger"),
        }
    };
    let alloc = Arc::new(Allocator::new(ledger, node.clone()));
    // Reconcile with the ledger before serving: a restarted agent continues exactly where the
    // ledger says. If the ledger is down now, the first request loads it instead.
    if let Err(e) = alloc.reload().await {
        tracing::warn!(error = %e, "could not read the ledger at start; will load on first request");
    }
    let listener = berth_agent::bind(&args.socket)?;
    tracing::info!(node = %node, socket = %args.socket.display(), ledger = %alloc.ledger().describe(), "berth agent serving");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = berth_agent::serve(listener, alloc) => r.context("serving the agent socket"),
        _ = term.recv() => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    let _ = std::fs::remove_file(&args.socket);
    tracing::info!("berth agent stopped");
    result
}
