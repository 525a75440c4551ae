//! Carrying out a CNI command with an allocator. The node agent and the plugin's direct path both
//! call [`handle`], so the two paths cannot drift apart.

use crate::config::IpamConfig;
use crate::dns::{parse_resolv_conf, Dns};
use crate::env::{CniArgs, Command};
use crate::error::CniError;
use crate::result::{build_result, parse_prev_result};
use berth_allocator::{AddRequest, AllocError, Allocator, ClaimRequest};
use berth_core::policy::PodAsk as PolicyAsk;
use berth_core::{Family, Owner, PolicyError};
use berth_ledger::LedgerError;
use serde_json::Value;
use std::net::IpAddr;

/// Error code for an exhausted pool (plugin-specific range).
pub const POOL_EXHAUSTED: u32 = CniError::PLUGIN_SPECIFIC + 10;

/// The parts of one invocation the handler needs, wherever it came from.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`.
    pub args: CniArgs,
    /// What the pod itself asks for (from its annotations), when the agent knows the pod.
    pub pod: PodAsk,
}

/// What a pod asks for through its annotations; filled by the node agent, empty elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodAsk {
    /// Fixed addresses, at most one per family.
    pub fixed: Vec<IpAddr>,
    /// Keep the addresses for this identity.
    pub claim: Option<ClaimRequest>,
    /// The pod's UID, when the runtime did not pass `K8S_POD_UID`.
    pub uid: Option<String>,
}

impl Invocation {
    fn owner(&self, network: &str) -> Result<Owner, CniError> {
        let need = |v: &Option<String>, name: &str| {
            v.clone().filter(|s| !s.is_empty()).ok_or_else(|| {
                CniError::env(format!(
                    "{name} is required for {}: the runtime must set it",
                    self.command.as_str()
                ))
            })
        };
        Ok(Owner {
            network: network.to_string(),
            container_id: need(&self.container_id, "CNI_CONTAINERID")?,
            ifname: need(&self.ifname, "CNI_IFNAME")?,
            pod: self.args.pod(),
        })
    }
}

/// Map an allocation error to the spec's error codes.
pub fn cni_error(e: AllocError) -> CniError {
    let code = match &e {
        e if e.is_transient() => CniError::TRY_AGAIN_LATER,
        AllocError::Exhausted { .. } => POOL_EXHAUSTED,
        AllocError::Ledger(LedgerError::Config(_)) => CniError::INVALID_NETWORK_CONFIG,
        AllocError::Ledger(_) => CniError::IO_FAILURE,
        _ => CniError::INVALID_NETWORK_CONFIG,
    };
    CniError::new(code, e.to_string())
}

/// Map a ledger error met while opening the store.
pub fn ledger_error(e: LedgerError) -> CniError {
    cni_error(AllocError::Ledger(e))
}

fn read_dns(cfg: &IpamConfig) -> Result<Option<Dns>, CniError> {
    let Some(path) = &cfg.resolv_conf else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        CniError::new(
            CniError::IO_FAILURE,
            format!(
                "ipam.resolvConf {:?} cannot be read: {e}: point it at a readable resolv.conf or remove it",
                path.display().to_string()
            ),
        )
    })?;
    let dns = parse_resolv_conf(&text);
    Ok((!dns.is_empty()).then_some(dns))
}

/// Why a command was refused: by the pool's policy, or for any other reason.
///
/// Why: the agent records a policy refusal on the pod as a Warning Event naming the policy, so it
/// must tell it apart from other errors; the runtime sees code 7 either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The pool's `ipam.policy` does not allow what the pod asks for.
    Policy(PolicyError),
    /// Any other error.
    Cni(CniError),
}

impl From<CniError> for Refusal {
    fn from(e: CniError) -> Self {
        Refusal::Cni(e)
    }
}

impl From<Refusal> for CniError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Policy(p) => CniError::config(p.to_string()),
            Refusal::Cni(e) => e,
        }
    }
}

/// When the configuration names a Pool object (`ipam.pool`), read it and use it as the pool.
///
/// A missing Pool is "try again" (code 11): it may be applied after the node's configuration,
/// and the kubelet retries. A Pool that is not `use: pod`, or invalid, is code 7, naming it.
pub async fn resolve_pool(alloc: &Allocator, cfg: &mut IpamConfig) -> Result<(), CniError> {
    if !cfg.pool_ref {
        return Ok(());
    }
    let name = cfg.pool.name.clone();
    match alloc.pool_named(&name).await.map_err(cni_error)? {
        None => Err(CniError::new(
            CniError::TRY_AGAIN_LATER,
            format!(
                "ipam.pool {name:?} names no Pool: apply a Pool object named {name:?} with use: pod (kubectl get pools.berth.dev lists them)"
            ),
        )),
        Some(p) if p.use_ != berth_core::PoolUse::Pod => Err(CniError::config(format!(
            "ipam.pool {name:?} is a {} pool; pods take addresses only from a Pool with use: pod",
            serde_json::to_value(p.use_)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        ))),
        Some(p) => {
            p.validate().map_err(|e| {
                CniError::config(format!("Pool {name:?} (ipam.pool) is not valid: {e}"))
            })?;
            cfg.use_pool(p)
        }
    }
}

/// Carry out one command. ADD returns the result JSON; the others return nothing on success.
///
/// The version gate applies to every command; `CNI_ARGS` `IP=` requests count for ADD only, so a
/// DEL always gets through to release what the attachment holds.
pub async fn handle(
    alloc: &Allocator,
    inv: &Invocation,
    cfg: &IpamConfig,
) -> Result<Option<Value>, CniError> {
    handle_checked(alloc, inv, cfg)
        .await
        .map_err(CniError::from)
}

/// [`handle`], with a refusal by the pool's policy kept apart from other errors.
///
/// An ADD for a Kubernetes pod (`K8S_POD_NAMESPACE` set) is checked against the pool's policy
/// with every fixed address it asks for, whoever passed it (annotation, `ips` capability,
/// `CNI_ARGS IP=`), since a pod creator controls the capability through Multus.
pub async fn handle_checked(
    alloc: &Allocator,
    inv: &Invocation,
    cfg: &IpamConfig,
) -> Result<Option<Value>, Refusal> {
    cfg.check_command(inv.command)?;
    let resolved;
    let cfg = if cfg.pool_ref && matches!(inv.command, Command::Add | Command::Status) {
        let mut c = cfg.clone();
        resolve_pool(alloc, &mut c).await?;
        resolved = c;
        &resolved
    } else {
        cfg
    };
    match inv.command {
        Command::Add => {
            let mut cfg = cfg.clone();
            cfg.merge_env_ips(&inv.args)?;
            let cfg = &cfg;
            let dns = read_dns(cfg)?;
            let mut fixed = cfg.requested_ips.clone();
            for ip in &inv.pod.fixed {
                match fixed.iter().find(|r| Family::of(**r) == Family::of(*ip)) {
                    Some(r) if r != ip => {
                        return Err(CniError::config(format!(
                            "the pod's annotation asks for {ip} but the runtime asks for {r}: remove one of them"
                        )).into())
                    }
                    Some(_) => {}
                    None => fixed.push(*ip),
                }
            }
            let mut claim = inv.pod.claim.clone();
            if let Some(ns) = inv.args.pod_namespace.as_deref().filter(|n| !n.is_empty()) {
                let ask = PolicyAsk {
                    namespace: ns,
                    fixed: &fixed,
                    claim: claim.as_ref().map(|c| (&c.identity, c.size)),
                };
                let allowed = cfg
                    .pool
                    .policy
                    .check(&cfg.pool.name, &ask)
                    .map_err(Refusal::Policy)?;
                if !allowed.keep_claim {
                    claim = None;
                }
            }
            let mut owner = inv.owner(&cfg.network)?;
            if let Some(p) = owner.pod.as_mut() {
                if p.uid.is_none() {
                    p.uid = inv.pod.uid.clone();
                }
            }
            let req = AddRequest {
                pool: cfg.pool.clone(),
                owner,
                fixed,
                claim,
            };
            let bindings = alloc.add(&req).await.map_err(cni_error)?;
            let result = build_result(cfg.cni_version, &bindings, &cfg.pool, dns)?;
            Ok(Some(result.to_value()))
        }
        Command::Del => {
            alloc
                .release(&inv.owner(&cfg.network)?)
                .await
                .map_err(cni_error)?;
            Ok(None)
        }
        Command::Check => {
            let owner = inv.owner(&cfg.network)?;
            let held = alloc.held(&owner).await.map_err(cni_error)?;
            if held.is_empty() {
                return Err(CniError::new(
                    CniError::UNKNOWN_CONTAINER,
                    format!(
                        "{} holds no address in network {:?}: run ADD again",
                        owner.describe(),
                        cfg.network
                    ),
                )
                .into());
            }
            if let Some(prev) = &cfg.prev_result {
                for ip in parse_prev_result(prev)? {
                    if !held.iter().any(|b| b.address == ip.address.addr()) {
                        return Err(CniError::new(
                            CniError::INVALID_NETWORK_CONFIG,
                            format!(
                                "prevResult lists {} but {} holds {:?} in the ledger: re-run ADD",
                                ip.address,
                                owner.describe(),
                                held.iter()
                                    .map(|b| b.address.to_string())
                                    .collect::<Vec<_>>()
                            ),
                        )
                        .into());
                    }
                }
            }
            Ok(None)
        }
        Command::Gc => {
            let valid: Vec<(String, String)> = cfg
                .valid_attachments
                .iter()
                .map(|a| (a.container_id.clone(), a.ifname.clone()))
                .collect();
            alloc.gc(&cfg.network, &valid).await.map_err(cni_error)?;
            Ok(None)
        }
        Command::Status => {
            alloc.status(&cfg.pool).await.map_err(|e| {
                let e = cni_error(e);
                CniError::new(CniError::PLUGIN_NOT_AVAILABLE, e.msg)
            })?;
            Ok(None)
        }
        Command::Version => Ok(Some(
            serde_json::from_str(&crate::version::version_reply()).unwrap_or_default(),
        )),
    }
}
