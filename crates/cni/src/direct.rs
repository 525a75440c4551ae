//! `berth-ipam-direct`: the invocations no agent serves, carried out on the ledger the
//! configuration names (`embedded`, `etcd`, kube-ipam's `etcdConfig`) with the very handler the
//! agent uses. `berth-ipam` ([`crate::plugin`]) hands over to it with `exec` when no agent
//! answers; run alone, it never asks an agent.

use crate::config::Store;
use crate::env::Command;
use crate::handler::{handle, ledger_error, Invocation};
use crate::plugin::{parse_invocation, serve, Parsed};
use crate::{CniError, IpamConfig};
use berth_allocator::Allocator;
use berth_ledger::{LedgerSpec, TlsFiles};
use serde_json::Value;
use std::time::Duration;

/// The longest a direct-path invocation on the etcd ledger takes before it answers "try again"
/// (code 11), whatever etcd does (frozen, partitioned): each etcd request also has its own
/// deadline ([`berth_ledger::etcd::REQUEST_TIMEOUT`]).
pub const DIRECT_DEADLINE: Duration = Duration::from_secs(8);

/// Run one invocation on the configuration's own ledger, from the process's environment, stdin
/// and stdout, then exit.
pub fn main() {
    serve(run)
}

fn run(stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let (env, cfg) = match parse_invocation(stdin)? {
        Parsed::Version(v) => return Ok(Some(v)),
        Parsed::Call(call) => *call,
    };
    let inv = Invocation {
        command: env.command,
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        args: env.args.clone(),
        pod: Default::default(),
    };
    direct(&cfg, &inv)
}

fn node_name(cfg: &IpamConfig) -> String {
    cfg.node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn direct(cfg: &IpamConfig, inv: &Invocation) -> Result<Option<Value>, CniError> {
    let (spec, deadline) = match &cfg.store {
        Store::Embedded { data_dir } => (
            LedgerSpec::Embedded {
                dir: data_dir.clone(),
            },
            // Bounded by the wait for another process's lock (EMBEDDED_LOCK_WAIT).
            None,
        ),
        Store::Etcd {
            endpoints,
            cert,
            key,
            ca,
        } => (
            LedgerSpec::Etcd {
                endpoints: endpoints.clone(),
                tls: (cert.is_some() || key.is_some() || ca.is_some()).then(|| TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: ca.clone(),
                }),
                prefix: berth_ledger::etcd::DEFAULT_PREFIX.to_string(),
            },
            Some(DIRECT_DEADLINE),
        ),
        Store::Agent | Store::Kubernetes => {
            return Err(CniError::new(
                CniError::TRY_AGAIN_LATER,
                "the configuration's ledger is served only by the berth agent: try again once it serves",
            ))
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(
                CniError::IO_FAILURE,
                format!("cannot start the runtime: {e}"),
            )
        })?;
    let work = async {
        let ledger = berth_ledger::open(&spec).await.map_err(ledger_error)?;
        let alloc = Allocator::new(ledger, node_name(cfg));
        handle(&alloc, inv, cfg).await
    };
    rt.block_on(async {
        match deadline {
            None => work.await,
            Some(d) => tokio::time::timeout(d, work).await.unwrap_or_else(|_| {
                Err(CniError::new(
                    match inv.command {
                        Command::Status => CniError::PLUGIN_NOT_AVAILABLE,
                        _ => CniError::TRY_AGAIN_LATER,
                    },
                    format!(
                        "the {} ledger did not complete {} within {} s: check that etcd is running and answering, then retry",
                        cfg.store.backend().map(|b| b.as_str()).unwrap_or("configured"),
                        inv.command.as_str(),
                        d.as_secs()
                    ),
                ))
            }),
        }
    })
}
