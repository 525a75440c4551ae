//! `berth`: one binary for every long-running role and the operator CLI.

mod agent;
mod agent_http;
mod bgp;
mod controller;
mod inspect;
mod install_cni;
mod lab;
mod ledger_args;
mod routes;
mod shutdown;
mod vip;

use clap::{Parser, Subcommand};

/// Command line of the `berth` binary.
#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Addresses that stay put and addresses that reach the outside"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The roles and operator commands `berth` offers.
#[derive(Subcommand)]
enum Command {
    /// Run the node agent: serve berth-ipam on a Unix socket and own this node's blocks.
    Agent(agent::AgentArgs),
    /// Run the cluster controller: GC of bindings whose pod is gone, fencing, claim release.
    Controller(controller::ControllerArgs),
    /// List pools with their subnets and use.
    Pools(inspect::InspectArgs),
    /// List blocks and the node owning each.
    Blocks(inspect::InspectArgs),
    /// List bindings: address, owner, container, interface, node.
    Bindings(inspect::InspectArgs),
    /// List Services' addresses (LoadBalancer and externalIPs) with their pools, and on
    /// Kubernetes the LoadBalancer Services still waiting, with why.
    Services(inspect::InspectArgs),
    /// List announced Service addresses: pool, mode, the node announcing each (L2) and since
    /// when, conflicts, and why an address is announced nowhere.
    Announcements(inspect::InspectArgs),
    /// List this node's pod routes with their block and node, and other nodes' blocks without one.
    Routes(routes::RoutesArgs),
    /// Check the ledger's invariants; exits 1 and prints each violation when one is broken.
    Audit(inspect::InspectArgs),
    /// Print Berth's CustomResourceDefinitions as YAML (what deploy/base/crds.yaml holds).
    Crds,
    /// A small world of network namespaces to show and try Berth on one machine.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Run a BGP speaker from a TOML file (`berth bgp --config FILE`, see crates/bgp/README.md),
    /// or show every node's BGP sessions on Kubernetes (`berth bgp status`).
    Bgp(BgpArgs),
    /// Install berth-ipam and a network configuration on this node (the DaemonSet's init
    /// container): check the conflist, copy the plugin, write both atomically.
    InstallCni(install_cni::InstallCniArgs),
    /// Announce VIPs on the LAN with fenced failover, without Kubernetes (`berth vip --config
    /// FILE`), or show a running one's status (`berth vip status`).
    Vip(vip::VipArgs),
}

/// Arguments of `berth bgp`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BgpArgs {
    #[command(subcommand)]
    cmd: Option<BgpCommand>,
    /// TOML configuration (keys documented in crates/bgp/README.md). SIGHUP re-reads it.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

#[derive(clap::Subcommand)]
enum BgpCommand {
    /// Every BGPPeer, whether it is accepted, and each node's session with it (state, since
    /// when, prefixes sent and received, why it is down), from the peers' status.
    Status(inspect::InspectArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The pod sandbox starts before anything else (no logging, no runtime).
    if let Command::Lab(lab::LabCommand::Pause) = cli.command {
        berth_lab::programs::pause();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: log files and `kubectl logs` get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Roles that run their own runtime, or none.
    let command = match cli.command {
        Command::Lab(cmd) => return lab::run(cmd),
        Command::Crds => {
            print!("{}", berth_k8s::crd::crds_yaml()?);
            return Ok(());
        }
        Command::Bgp(BgpArgs {
            cmd: None,
            config: Some(config),
        }) => return Ok(bgp::run(config)?),
        Command::Bgp(BgpArgs {
            cmd: None,
            config: None,
        }) => anyhow::bail!(
            "berth bgp: pass --config FILE to run a speaker, or `berth bgp status` for the cluster's sessions"
        ),
        Command::InstallCni(args) => return install_cni::run(args),
        Command::Vip(args) => return vip::run(args),
        other => other,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match command {
            Command::Agent(a) => agent::run(a).await,
            Command::Controller(a) => controller::run(a).await,
            Command::Pools(a) => inspect::pools(a).await,
            Command::Blocks(a) => inspect::blocks(a).await,
            Command::Bindings(a) => inspect::bindings(a).await,
            Command::Audit(a) => inspect::audit(a).await,
            Command::Services(a) => inspect::services(a).await,
            Command::Announcements(a) => inspect::announcements(a).await,
            Command::Routes(a) => routes::routes(a).await,
            Command::Bgp(BgpArgs {
                cmd: Some(BgpCommand::Status(a)),
                ..
            }) => inspect::bgp_status(a).await,
            Command::Lab(_)
            | Command::Crds
            | Command::Bgp(_)
            | Command::InstallCni(_)
            | Command::Vip(_) => {
                unreachable!("handled before the runtime starts")
            }
        }
    })
}
