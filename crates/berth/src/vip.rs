//! `berth vip --config FILE` and `berth vip status`: the standalone VIP. All logic lives in
//! the `berth-announce` crate; this module only wires the CLI to it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use berth_announce::standalone::{self, VipConfig};

/// Arguments of `berth vip`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct VipArgs {
    #[command(subcommand)]
    cmd: Option<VipCommand>,
    /// TOML configuration (keys in the README's "Standalone VIP" section).
    #[arg(long)]
    config: Option<PathBuf>,
    /// HTTP address for /metrics, /healthz, /readyz and /status; overrides `metrics`.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

#[derive(clap::Subcommand)]
enum VipCommand {
    /// Who announces which VIP since when, and the peers' health, from a running `berth vip`.
    Status {
        /// The configuration of the running `berth vip` (for its `metrics` address).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The HTTP address of the running `berth vip` (instead of --config).
        #[arg(long)]
        metrics_addr: Option<SocketAddr>,
        /// Print the raw JSON of /status.
        #[arg(long)]
        json: bool,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Runs the VIP until SIGTERM/SIGINT, or prints a running one's status.
pub fn run(args: VipArgs) -> anyhow::Result<()> {
    match args.cmd {
        Some(VipCommand::Status {
            config,
            metrics_addr,
            json,
        }) => {
            let addr = match (metrics_addr, config) {
                (Some(a), _) => a,
                (None, Some(path)) => VipConfig::load(&path)?.metrics.with_context(|| {
                    format!(
                        "{} has metrics = \"off\": give --metrics-addr",
                        path.display()
                    )
                })?,
                (None, None) => standalone::DEFAULT_METRICS.parse()?,
            };
            runtime()?
                .block_on(standalone::print_status(addr, json))
                .map_err(anyhow::Error::msg)
        }
        None => {
            let Some(path) = args.config else {
                bail!("berth vip needs --config FILE (or the `status` subcommand)");
            };
            let mut cfg = VipConfig::load(&path)?;
            if let Some(a) = args.metrics_addr {
                cfg.metrics = Some(a);
            }
            // Before the runtime: its threads inherit the scheduling policy.
            if cfg.realtime {
                if let Err(w) = standalone::raise_priority() {
                    tracing::warn!("{w}");
                }
            }
            runtime()?.block_on(standalone::run(cfg))?;
            Ok(())
        }
    }
}
