//! The socket server: one request line in, one response line out, per connection.

use crate::admin::{AdminCommand, AdminRequest, SnapshotReply};
use crate::pods::PodSource;
use berth_allocator::{snapshot, Allocator};
use berth_cni::handler::{handle_checked, Invocation, Refusal};
use berth_cni::socket::{Request, RequestConfig, Response, MAX_FRAME};
use berth_cni::{parse_config, CniError};
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// Why the agent could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Another agent already serves this socket.
    #[error(
        "socket {0} is already served by a running agent: stop it first or choose another --socket"
    )]
    InUse(String),
    /// The socket could not be created.
    #[error("cannot listen on {path}: {reason}")]
    Listen {
        /// The socket path.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// Bind the agent socket, replacing a stale socket file left by a crashed agent but never one that
/// a live agent still serves.
pub fn bind(path: &Path) -> Result<UnixListener, AgentError> {
    let listen_err = |e: std::io::Error| AgentError::Listen {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen_err)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(AgentError::InUse(path.display().to_string()));
        }
        std::fs::remove_file(path).map_err(listen_err)?;
    }
    let l = UnixListener::bind(path).map_err(listen_err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(listen_err)?;
    Ok(l)
}

/// Serve requests until the listener fails. Each connection is handled on its own task, so slow
/// ledger writes of one pod never hold up another.
pub async fn serve(
    listener: UnixListener,
    alloc: Arc<Allocator>,
    pods: Option<Arc<dyn PodSource>>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let alloc = Arc::clone(&alloc);
        let pods = pods.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &alloc, pods.as_deref()).await {
                tracing::debug!(error = %e, "agent connection ended early");
            }
        });
    }
}

async fn connection(
    stream: UnixStream,
    alloc: &Allocator,
    pods: Option<&dyn PodSource>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read).take(MAX_FRAME as u64);
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(());
    }
    let reply = if let Ok(admin) = serde_json::from_str::<AdminRequest>(&line) {
        serde_json::to_vec(&admin_reply(admin, alloc).await)
    } else {
        serde_json::to_vec(&cni_reply(&line, alloc, pods).await)
    };
    let mut reply = reply.map_err(std::io::Error::other)?;
    reply.push(b'\n');
    write.write_all(&reply).await?;
    write.shutdown().await
}

async fn cni_reply(line: &str, alloc: &Allocator, pods: Option<&dyn PodSource>) -> Response {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return Response::from(Err(CniError::decode("agent request", &e))),
    };
    let mut cfg = match &req.config {
        RequestConfig::Raw(raw) => match parse_config(raw.as_bytes()) {
            Ok(c) => c,
            Err(e) => return Response::from(Err(e)),
        },
        RequestConfig::Parsed(c) => (**c).clone(),
    };
    // A configuration naming a Pool object: the pod's annotations are read against that pool.
    if req.command == berth_cni::Command::Add {
        if let Err(e) = berth_cni::handler::resolve_pool(alloc, &mut cfg).await {
            return Response::from(Err(e));
        }
    }
    if let Some(err) = ledger_mismatch(&cfg, alloc) {
        tracing::warn!(command = ?req.command, container = ?req.container_id, msg = %err.msg, "refused");
        return Response::from(Err(err));
    }
    if let Some(source) = pods {
        if req.command == berth_cni::Command::Add {
            if let Some(why) = source.fenced() {
                return Response::from(Err(CniError::new(
                    CniError::TRY_AGAIN_LATER,
                    format!("{why}: its addresses may have been released, so this agent allocates nothing until the node is back"),
                )));
            }
        }
        if source.take_reload() {
            tracing::info!("node is back in service; re-reading the ledger");
            if let Err(e) = alloc.reload().await {
                return Response::from(Err(berth_cni::handler::cni_error(e)));
            }
        }
    }
    let pod = match (req.command, pods) {
        (berth_cni::Command::Add, Some(source)) => match source.ask(&req.args, &cfg).await {
            Ok(p) => p,
            Err(e) => return Response::from(Err(e)),
        },
        _ => Default::default(),
    };
    let inv = Invocation {
        command: req.command,
        container_id: req.container_id.clone(),
        ifname: req.ifname.clone(),
        args: req.args.clone(),
        pod,
    };
    let res = match handle_checked(alloc, &inv, &cfg).await {
        Err(Refusal::Policy(p)) => {
            let msg = p.to_string();
            if let Some(source) = pods {
                source
                    .refused(&req.args, crate::pods::POLICY_REFUSED, &msg)
                    .await;
            }
            Err(CniError::config(msg))
        }
        other => other.map_err(CniError::from),
    };
    match &res {
        Ok(_) => tracing::debug!(command = ?req.command, container = ?req.container_id, "served"),
        Err(e) => {
            tracing::info!(command = ?req.command, container = ?req.container_id, code = e.code, msg = %e.msg, "refused")
        }
    }
    Response::from(res)
}

/// A request whose configuration names another ledger kind than the one this agent runs on is
/// refused (code 7): served here it would allocate from this ledger, while the plugin's direct
/// path (when the agent is down) would use the other, and the two would hand out the same
/// addresses. A configuration that names no ledger means this agent's, whichever it is.
fn ledger_mismatch(cfg: &berth_cni::IpamConfig, alloc: &Allocator) -> Option<CniError> {
    let wanted = cfg.store.backend()?;
    let running = alloc.ledger().backend();
    (wanted != running).then(|| {
        let named = match &cfg.store {
            berth_cni::Store::Etcd { .. } => "ipam.ledger \"etcd\" or ipam.etcdConfig",
            berth_cni::Store::Embedded { .. } => "ipam.ledger \"embedded\"",
            _ => "ipam.ledger \"kubernetes\"",
        };
        CniError::config(format!(
            "the configuration names the {wanted} ledger ({named}) but this berth agent runs on the {running} ledger ({}): one node must use one ledger; make ipam.ledger and the agent's --ledger name the same one",
            alloc.ledger().describe()
        ))
    })
}

async fn admin_reply(req: AdminRequest, alloc: &Allocator) -> SnapshotReply {
    let AdminCommand::Snapshot = req.admin;
    let mut reply = SnapshotReply {
        node: alloc.node().to_string(),
        ledger: alloc.ledger().describe(),
        pools: vec![],
        blocks: vec![],
        claims: vec![],
        bindings: vec![],
        bad: vec![],
        error: None,
    };
    match snapshot(alloc.ledger().as_ref()).await {
        Ok(s) => {
            fn values<T: serde::Serialize>(v: &[T]) -> Vec<serde_json::Value> {
                v.iter()
                    .map(|x| serde_json::to_value(x).unwrap_or_default())
                    .collect()
            }
            reply.pools = values(&s.pools);
            reply.blocks = values(&s.blocks);
            reply.claims = values(&s.claims);
            reply.bindings = values(&s.bindings);
            reply.bad = s.bad.iter().map(Into::into).collect();
        }
        Err(e) => reply.error = Some(e.to_string()),
    }
    reply
}
