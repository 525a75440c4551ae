//! `berth controller`: the cluster controller's process wiring.

use crate::agent::parse_duration;
use crate::ledger_args::LedgerArgs;
use anyhow::Context;
use berth_controller::lease::LeaseConfig;
use berth_controller::ControllerConfig;
use clap::Args;
use std::time::Duration;

/// Options of `berth controller`.
#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// A binding whose pod is gone is released once older than this.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Time between rounds.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Namespace of the leader-election Lease: the controller's own (`POD_NAMESPACE` from the
    /// downward API), where deploy/base/berth.yaml's Role lets it hold the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "berth-system")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "berth-controller")]
    pub lease_name: String,
    /// How long a leader keeps the Lease without renewing.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// This replica's identity in the Lease (default: hostname and PID).
    #[arg(long)]
    pub id: Option<String>,
    /// Create or update Berth's CRDs at start (otherwise apply deploy/base/crds.yaml).
    #[arg(long)]
    pub install_crds: bool,
    /// Serve `/metrics` (Prometheus) and `/healthz` here, e.g. `0.0.0.0:9476`; off by default.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Do not hand out Service addresses (LoadBalancer, externalIPs): for clusters where another
    /// implementation does.
    #[arg(long)]
    pub no_services: bool,
    /// Do not check BGPPeers and BGPConfigurations (their `Accepted` condition): for clusters
    /// without Berth's BGP CRDs.
    #[arg(long)]
    pub no_bgp: bool,
    /// How often the Service controller re-reads the ledger and passes over every Service (the
    /// backstop for records changed by hand; changes are acted on at once through watches).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub service_resync: Duration,
    #[command(flatten)]
    pub ledger: LedgerArgs,
}

/// Run the controller until SIGTERM or SIGINT, then give up the Lease.
pub async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    let mut shutdown = crate::shutdown::Shutdown::install()?;
    let ledger = tokio::select! {
        l = args.ledger.open() => l.context("opening the ledger")?,
        sig = shutdown.wait() => {
            tracing::info!(signal = sig, "berth controller stopped before it started");
            return Ok(());
        }
    };
    let (client, server) = berth_k8s::client(args.ledger.kubeconfig.as_deref()).await?;
    if args.install_crds {
        berth_k8s::crd::install(&client, Duration::from_secs(60))
            .await
            .context("installing Berth's CRDs")?;
    }
    let identity = args.id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    tracing::info!(%server, ledger = %ledger.describe(), %identity, "berth controller starting");
    let metrics = std::sync::Arc::new(berth_controller::metrics::ControllerMetrics::default());
    if let Some(addr) = args.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics {addr}: cannot listen there; pick a free address, or leave --metrics out"))?;
        let handler: std::sync::Arc<dyn berth_announce::http::Handler> =
            std::sync::Arc::new(Endpoints(metrics.clone()));
        tokio::spawn(berth_announce::http::serve(listener, handler));
        tracing::info!(%addr, "serving /metrics and /healthz");
    }
    let cfg = ControllerConfig {
        grace: args.grace,
        interval: args.interval,
        lease: LeaseConfig {
            namespace: args.lease_namespace,
            name: args.lease_name,
            identity,
            duration: args.lease_duration,
        },
        pool_status: args.ledger.is_kubernetes(),
        services: (!args.no_services).then(|| berth_controller::services::ServiceConfig {
            resync: args.service_resync,
            metrics: metrics.clone(),
            ..Default::default()
        }),
        bgp: !args.no_bgp,
        metrics,
    };
    berth_controller::run_until(client, ledger, cfg, async move {
        let sig = shutdown.wait().await;
        tracing::info!(signal = sig, "berth controller stopping");
    })
    .await;
    tracing::info!("berth controller stopped");
    Ok(())
}

/// `/metrics` and `/healthz` of the controller.
struct Endpoints(std::sync::Arc<berth_controller::metrics::ControllerMetrics>);

#[async_trait::async_trait]
impl berth_announce::http::Handler for Endpoints {
    async fn get(&self, path: &str) -> berth_announce::http::Reply {
        match path {
            "/metrics" => (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.0.encode(),
            ),
            "/healthz" => (200, "text/plain", "ok\n".into()),
            _ => (404, "text/plain", "try /metrics /healthz\n".into()),
        }
    }
}
