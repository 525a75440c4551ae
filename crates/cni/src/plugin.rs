//! The `berth-ipam` process: Berth's CNI IPAM plugin, a drop-in for kube-ipam.
//!
//! Thin and quick to start: it forwards the invocation to the node agent's Unix socket when one
//! serves, and otherwise allocates directly against the configured ledger (etcd when `etcdConfig`
//! is present, else the embedded file) with the very same handler the agent uses.

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

/// Ask the agent. `Ok(None)` when no agent serves the socket, so the caller allocates directly;
/// an agent that accepted the request but failed mid-way is "try again", never a silent fallback
/// (it may already have allocated).
fn via_agent(
    cfg: &IpamConfig,
    req: Request,
) -> Result<Option<Result<Option<Value>, CniError>>, CniError> {
    if cfg.agent_socket.as_os_str().is_empty() {
        return Ok(None);
    }
    let mut stream = match UnixStream::connect(&cfg.agent_socket) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            return Ok(None)
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
    let spec = match &cfg.store {
        Store::Embedded { data_dir } => LedgerSpec::Embedded {
            dir: data_dir.clone(),
        },
        Store::Etcd {
            endpoints,
            cert,
            key,
            ca,
        } => LedgerSpec::Etcd {
            endpoints: endpoints.clone(),
            tls: (cert.is_some() || key.is_some() || ca.is_some()).then(|| TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            }),
            prefix: berth_ledger::etcd::DEFAULT_PREFIX.to_string(),
        },
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
    rt.block_on(async {
        let ledger = berth_ledger::open(&spec).await.map_err(ledger_error)?;
        let alloc = Allocator::new(ledger, node_name(cfg));
        handle(&alloc, inv, cfg).await
    })
}
