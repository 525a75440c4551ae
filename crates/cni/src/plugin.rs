//! The `berth-ipam` process: Berth's CNI IPAM plugin, a drop-in for kube-ipam.
//!
//! Thin and quick to start: it forwards the invocation to the node agent's Unix socket. Only when
//! no agent answers and the configuration names a ledger the plugin can open itself (`etcd`, or
//! kube-ipam's `etcdConfig`, or `embedded`) is the invocation served directly, by
//! `berth-ipam-direct` beside it ([`crate::direct`]), with the very same handler the agent uses.
//! A configuration that means the cluster's ledger (`"ledger": "kubernetes"`, or no ledger at
//! all: the agent's) gets "try again" (code 11) instead: a local allocation there would hand out
//! addresses the cluster's ledger does not know.
//!
//! Why two programs: a runtime starts one plugin process per ADD and DEL, and on this path the
//! process's start-up and exit are most of its cost. The direct path links the ledgers' clients
//! and an async runtime (7 MB of code); the agent path needs none of it, and in a binary holding
//! both, the few functions it runs lie scattered over that code, one page fault per 64 KB window
//! touched. Apart, the agent path touches less than half the pages (`docs/bench-ipam.md`).

use crate::config::{peek_version, Store};
use crate::env::Command;
use crate::socket::{read_frame, write_frame, Request, RequestConfig, Response};
use crate::{parse_config, parse_env, CniEnv, CniError, IpamConfig};
use serde_json::Value;
use std::io::{ErrorKind, Read, Seek, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

/// Largest configuration read from stdin.
const MAX_STDIN: u64 = 4 << 20;
/// How long the plugin waits for the agent's answer.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// The program serving the direct path, looked for in the directory of this plugin's executable
/// (symlinks resolved, so a `kube-ipam` link to `berth-ipam` finds it beside `berth-ipam`).
pub const DIRECT_PROGRAM: &str = "berth-ipam-direct";

/// What the front decided for one invocation.
enum Outcome {
    /// The answer to print (from the agent, or an error found before asking it).
    Answer(Result<Option<Value>, CniError>),
    /// No agent, and the configuration allows the direct path: hand over to [`DIRECT_PROGRAM`].
    Direct,
}

/// Run one plugin invocation from the process's environment, stdin and stdout, then exit.
pub fn main() {
    serve(|stdin| match front(stdin) {
        Ok(Outcome::Answer(a)) => a,
        Ok(Outcome::Direct) => Err(exec_direct(stdin)),
        Err(e) => Err(e),
    })
}

/// Read stdin (bounded), answer with `f`, and print the result or the error as the spec asks
/// (an error is JSON on stdout with exit status 1). Shared by both programs.
pub(crate) fn serve(f: impl FnOnce(&[u8]) -> Result<Option<Value>, CniError>) {
    let mut stdin = Vec::new();
    let read = std::io::stdin().take(MAX_STDIN).read_to_end(&mut stdin);
    let version = peek_version(&stdin);
    let outcome = match read {
        Ok(_) => f(&stdin),
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

/// An invocation as both programs first read it.
pub(crate) enum Parsed {
    /// VERSION, answered without a configuration.
    Version(Value),
    /// Any other command, with its environment and configuration.
    Call(Box<(CniEnv, IpamConfig)>),
}

/// The environment, then (except for VERSION) the configuration on `stdin`.
pub(crate) fn parse_invocation(stdin: &[u8]) -> Result<Parsed, CniError> {
    let env = parse_env(&|k| std::env::var(k).ok())?;
    if env.command == Command::Version {
        return Ok(Parsed::Version(
            serde_json::from_str(&crate::version::version_reply()).unwrap_or_default(),
        ));
    }
    Ok(Parsed::Call(Box::new((env, parse_config(stdin)?))))
}

fn front(stdin: &[u8]) -> Result<Outcome, CniError> {
    let (env, cfg) = match parse_invocation(stdin)? {
        Parsed::Version(v) => return Ok(Outcome::Answer(Ok(Some(v)))),
        Parsed::Call(call) => *call,
    };
    Ok(
        match via_agent(
            &cfg,
            Request::new(
                &env,
                RequestConfig::Raw(String::from_utf8_lossy(stdin).into_owned()),
            ),
        )? {
            Some(answer) => Outcome::Answer(answer),
            None => Outcome::Direct,
        },
    )
}

/// Replace this process with [`DIRECT_PROGRAM`] from this executable's directory, the
/// configuration (already read) as its stdin; the environment, stdout and stderr are inherited,
/// so its answer is the runtime's. Returns only when that cannot be done, with why.
fn exec_direct(stdin: &[u8]) -> CniError {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            return CniError::new(
                CniError::IO_FAILURE,
                format!("cannot find this plugin's own executable (/proc/self/exe: {e}), so not {DIRECT_PROGRAM} beside it either: is /proc mounted?"),
            )
        }
    };
    let prog = exe.with_file_name(DIRECT_PROGRAM);
    let config = match memfd_with(stdin) {
        Ok(f) => f,
        Err(e) => {
            return CniError::new(
                CniError::IO_FAILURE,
                format!("cannot hand the configuration to {}: {e}", prog.display()),
            )
        }
    };
    let e = std::process::Command::new(&prog).stdin(config).exec();
    direct_unavailable(&prog, &e)
}

/// Why [`DIRECT_PROGRAM`] could not run, and what to do: an installation with `berth-ipam` but
/// not its direct path is "try again" (an agent may yet serve this node).
fn direct_unavailable(prog: &Path, e: &std::io::Error) -> CniError {
    let dir = prog.parent().unwrap_or(Path::new("")).display();
    CniError::new(
        CniError::TRY_AGAIN_LATER,
        format!(
            "no berth agent answers, and the configuration's own ledger is served by {DIRECT_PROGRAM}, which cannot run ({}: {e}): install {DIRECT_PROGRAM} beside berth-ipam in {dir}, or start the berth agent",
            prog.display()
        ),
    )
}

/// An in-memory file holding `data`, at offset 0: a pipe would block on a configuration larger
/// than its buffer, and a file on disk would have to be cleaned up.
fn memfd_with(data: &[u8]) -> std::io::Result<std::fs::File> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the result is checked.
    let fd = unsafe { libc::memfd_create(c"berth-ipam-config".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(data)?;
    f.rewind()?;
    Ok(f)
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
