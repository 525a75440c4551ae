//! The `berth-ipam` process: Berth's CNI IPAM plugin, a drop-in for kube-ipam.
//!
//! Thin and quick to start: it forwards the invocation to the node agent's Unix socket. Only when
//! no agent answers and the configuration names a ledger the plugin can open itself (`etcd`, or
//! kube-ipam's `etcdConfig`, or `embedded`) does it allocate directly, with the very same handler
//! the agent uses. A configuration that means the cluster's ledger (`"ledger": "kubernetes"`,
//! or no ledger at all: the agent's) gets "try again" (code 11) instead: a local allocation there
//! would hand out addresses the cluster's ledger does not know.

use crate::config::{peek_version, Store};
use crate::env::Command;
use crate::handler::{handle, ledger_error, Invocation};
use crate::socket::{read_frame, write_frame, Request, RequestConfig, Response};
use crate::{parse_config, parse_env, CniError, IpamConfig};
use berth_allocator::Allocator;
use berth_ledger::{LedgerSpec, TlsFiles};
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// Largest configuration read from stdin.
const MAX_STDIN: u64 = 4 << 20;
/// How long the plugin waits for the agent's answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest a direct-path invocation on the etcd ledger takes before it answers "try again"
/// (code 11), whatever etcd does (frozen, partitioned): each etcd request also has its own
/// deadline ([`berth_ledger::etcd::REQUEST_TIMEOUT`]).
pub const DIRECT_DEADLINE: Duration = Duration::from_secs(8);

/// Run one plugin invocation from the process's environment, stdin and stdout, then exit.
pub fn main() {
    let mut stdin = Vec::new();
    let read = std::io::stdin().take(MAX_STDIN).read_to_end(&mut stdin);
    let version = peek_version(&stdin);
    let outcome = match read {
        Ok(_) => run(&stdin),
        Err(e) => Err(CniError::new(
            CniError::IO_FAILURE,
            format!("cannot read the network configuration from stdin: {e}"),
        )),
    };
    let mut out = std::io::stdout().lock();
    match outcome {
        Ok(Some(v)) => {
            let _ = writeln!(out, "{v}");
        }
        Ok(None) => {}
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json_string(version));
            let _ = out.flush();
            std::process::exit(1);
        }
    }
}

fn run(stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let env = parse_env(&|k| std::env::var(k).ok())?;
    if env.command == Command::Version {
        return Ok(Some(
            serde_json::from_str(&crate::version::version_reply()).unwrap_or_default(),
        ));
    }
    let cfg = parse_config(stdin)?;
    if let Some(answer) = via_agent(
        &cfg,
        Request::new(
            &env,
            RequestConfig::Raw(String::from_utf8_lossy(stdin).into_owned()),
        ),
    )? {
        return answer;
    }
    let inv = Invocation {
        command: env.command,
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
        args: env.args.clone(),
        pod: Default::default(),
    };
    direct(&cfg, &inv)
}

/// Ask the agent. `Ok(None)` when no agent serves the socket and the configuration allows the
/// direct path; when it does not, no agent is "try again". An agent that accepted the request but
/// failed mid-way is "try again" too, never a silent fallback (it may already have allocated).
fn via_agent(
    cfg: &IpamConfig,
    req: Request,
) -> Result<Option<Result<Option<Value>, CniError>>, CniError> {
    if cfg.agent_socket.as_os_str().is_empty() {
        // Configuration parsing only allows this with a ledger the plugin can open itself.
        return Ok(None);
    }
    let mut stream = match UnixStream::connect(&cfg.agent_socket) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return match no_agent(cfg, req.command, &e) {
                None => Ok(None),
                Some(err) => Err(err),
            }
        }
        Err(e) => {
            return Err(CniError::new(
                CniError::TRY_AGAIN_LATER,
                format!(
                    "cannot reach the berth agent at {}: {e}",
                    cfg.agent_socket.display()
                ),
            ))
        }
    };
    let _ = stream.set_read_timeout(Some(AGENT_TIMEOUT));
    let _ = stream.set_write_timeout(Some(AGENT_TIMEOUT));
    let retry = |what: String| {
        CniError::new(
            CniError::TRY_AGAIN_LATER,
            format!(
                "the berth agent at {} {what}: retry",
                cfg.agent_socket.display()
            ),
        )
    };
    write_frame(&mut stream, &req)
        .map_err(|e| retry(format!("did not take the request ({})", e.msg)))?;
    match read_frame::<_, Response>(&mut std::io::BufReader::new(stream)) {
        Ok(Some(resp)) => Ok(Some(resp.into_result())),
        Ok(None) => Err(retry("closed the connection without answering".into())),
        Err(e) => Err(retry(format!("answered badly ({})", e.msg))),
    }
}

/// No agent answers on the socket (`e`): `None` when the plugin may allocate directly, else the
/// "try again" error (code 11; for STATUS code 50, "not available") saying why it may not and
/// what to do.
pub fn no_agent(cfg: &IpamConfig, command: Command, e: &std::io::Error) -> Option<CniError> {
    let sock = cfg.agent_socket.display();
    let msg = match &cfg.store {
        Store::Embedded { .. } | Store::Etcd { .. } => return None,
        Store::Kubernetes => format!(
            "ipam.ledger is \"kubernetes\", which only the berth agent serves, and no agent answers on {sock} ({e}): the agent is not running on this node (restarting, or not deployed); try again once it serves"
        ),
        Store::Agent => format!(
            "no berth agent answers on {sock} ({e}), and ipam names no ledger of its own, so only this node's agent can serve it: start the agent, or set \"ledger\": \"embedded\" (and dataDir) to allocate on this node's embedded ledger without an agent, or give etcdConfig"
        ),
    };
    let code = match command {
        Command::Status => CniError::PLUGIN_NOT_AVAILABLE,
        _ => CniError::TRY_AGAIN_LATER,
    };
    Some(CniError::new(code, msg))
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
