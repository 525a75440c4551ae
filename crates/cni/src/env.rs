//! The runtime's environment: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
//! `CNI_ARGS` and `CNI_PATH`, parsed and checked per command.
//!
//! The environment is read through a lookup function so tests (and the agent, which receives the
//! variables over its socket) never touch the process environment.

use crate::error::CniError;
use berth_core::{Owner, PodRef};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

/// A CNI command (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    /// Allocate addresses for an attachment.
    Add,
    /// Release an attachment's addresses.
    Del,
    /// Verify an attachment still holds what `prevResult` says (0.4.0+).
    Check,
    /// Report supported versions.
    Version,
    /// Release everything not in `cni.dev/valid-attachments` (1.1.0+).
    Gc,
    /// Report whether ADD would work (1.1.0+).
    Status,
}

impl Command {
    /// Parse a `CNI_COMMAND` value; the spec spells commands in upper case.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            _ => return None,
        })
    }

    /// The command as the spec spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }

    /// Whether the command acts on one attachment, and so needs a container ID and interface name.
    pub fn is_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What Berth understands in `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniArgs {
    /// Fixed addresses requested with `IP=` (comma-separated for dual-stack).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
    /// `K8S_POD_NAMESPACE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// `K8S_POD_INFRA_CONTAINER_ID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_infra_container_id: Option<String>,
    /// `K8S_POD_UID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// `IgnoreUnknown`: whether unknown keys were tolerated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_unknown: bool,
    /// Unknown `K=V` pairs that were ignored because `IgnoreUnknown` was set (kept for logs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<(String, String)>,
}

impl CniArgs {
    /// The pod these arguments name, when both namespace and name are present.
    pub fn pod(&self) -> Option<PodRef> {
        Some(PodRef {
            namespace: self.pod_namespace.clone()?,
            name: self.pod_name.clone()?,
            uid: self.pod_uid.clone(),
        })
    }
}

/// Parse a boolean as libcni's `UnmarshallableBool` does: `1`/`true` and `0`/`false`, any case.
fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// Parse an address given as `1.2.3.4`, `2001:db8::5` or with a prefix (`1.2.3.4/24`, the prefix
/// being ignored: the subnet decides it).
pub(crate) fn parse_ip_maybe_prefix(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    let addr = s.split_once('/').map_or(s, |(a, _)| a);
    addr.parse().ok()
}

/// Parse `CNI_ARGS` (`K=V;K=V`).
///
/// Matches host-local (libcni `LoadArgs`): keys are case-sensitive; a pair without `=` is an error
/// (code 4); unknown keys are an error (code 2) unless `IgnoreUnknown` is `1`/`true` anywhere in
/// the list; a later duplicate key overrides an earlier one. Differences: the K8S_* keys are known
/// to Berth, so they never need `IgnoreUnknown`; `IP=` takes a comma-separated list (one per
/// family); empty segments (a trailing `;`) are skipped; a value may contain `=`.
pub fn parse_args(s: &str) -> Result<CniArgs, CniError> {
    let mut out = CniArgs::default();
    let mut unknown = vec![];
    for pair in s.split(';') {
        if pair.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = pair.split_once('=') else {
            return Err(CniError::env(format!(
                "CNI_ARGS pair {pair:?} has no '=': write KEY=VALUE pairs separated by ';'"
            )));
        };
        let val = || Some(v.to_string()).filter(|v| !v.is_empty());
        match k {
            "IP" => {
                let mut ips = vec![];
                for part in v.split(',').filter(|p| !p.trim().is_empty()) {
                    let ip = parse_ip_maybe_prefix(part).ok_or_else(|| {
                        CniError::env(format!(
                            "CNI_ARGS IP {part:?} is not an IP address: use a dotted IPv4 or IPv6 address, comma-separated for dual-stack"
                        ))
                    })?;
                    ips.push(ip);
                }
                out.ips = ips;
            }
            "K8S_POD_NAMESPACE" => out.pod_namespace = val(),
            "K8S_POD_NAME" => out.pod_name = val(),
            "K8S_POD_INFRA_CONTAINER_ID" => out.pod_infra_container_id = val(),
            "K8S_POD_UID" => out.pod_uid = val(),
            "IgnoreUnknown" => {
                out.ignore_unknown = parse_bool(v).ok_or_else(|| {
                    CniError::env(format!(
                        "CNI_ARGS IgnoreUnknown {v:?} is not a boolean: use 1, 0, true or false"
                    ))
                })?;
            }
            _ => unknown.push((k.to_string(), v.to_string())),
        }
    }
    if !unknown.is_empty() && !out.ignore_unknown {
        let keys: Vec<&str> = unknown.iter().map(|(k, _)| k.as_str()).collect();
        return Err(CniError::new(
            CniError::UNSUPPORTED_FIELD,
            format!("CNI_ARGS has unknown key(s) {keys:?}: remove them or add IgnoreUnknown=1"),
        ));
    }
    out.unknown = unknown;
    Ok(out)
}

/// The parsed runtime environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`; present for ADD, DEL and CHECK.
    pub container_id: Option<String>,
    /// `CNI_NETNS`; present for ADD and CHECK, optional for DEL.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`; present for ADD, DEL and CHECK.
    pub ifname: Option<String>,
    /// `CNI_ARGS`, parsed.
    pub args: CniArgs,
    /// `CNI_PATH`, split on ':'.
    pub path: Vec<PathBuf>,
}

impl CniEnv {
    /// The owner of the attachment this invocation is about, for ADD/DEL/CHECK. `None` for
    /// commands without a container.
    pub fn owner(&self, network: &str) -> Option<Owner> {
        Some(Owner {
            network: network.to_string(),
            container_id: self.container_id.clone()?,
            ifname: self.ifname.clone()?,
            pod: self.args.pod(),
        })
    }
}

/// Whether `name` is required for `cmd`, per the spec's per-command parameter lists.
///
/// ADD and CHECK need container ID, netns and interface name; DEL needs container ID and interface
/// name (a vanished netns must not block release); GC needs `CNI_PATH`; STATUS and VERSION need
/// nothing beyond `CNI_COMMAND`.
pub fn required(cmd: Command, name: &str) -> bool {
    match name {
        "CNI_CONTAINERID" | "CNI_IFNAME" => cmd.is_attachment(),
        "CNI_NETNS" => matches!(cmd, Command::Add | Command::Check),
        "CNI_PATH" => cmd == Command::Gc,
        _ => false,
    }
}

/// Check a container ID as libcni does: starts alphanumeric, then alphanumerics, `_`, `.`, `-`.
fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Check an interface name as libcni does: 1 to 15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// Parse the environment through `get` (e.g. `|k| std::env::var(k).ok()`).
///
/// Empty values count as absent, as in libcni. A missing required variable, a malformed value or
/// an unknown command is error code 4 naming the variable; unknown `CNI_ARGS` keys are code 2.
pub fn parse_env(get: &dyn Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
    let var = |k: &str| get(k).filter(|v| !v.is_empty());
    let raw_cmd = var("CNI_COMMAND").ok_or_else(|| {
        CniError::env("CNI_COMMAND is not set: set it to ADD, DEL, CHECK, VERSION, GC or STATUS")
    })?;
    let command = Command::parse(&raw_cmd).ok_or_else(|| {
        CniError::env(format!(
            "CNI_COMMAND {raw_cmd:?} is not a CNI command: use ADD, DEL, CHECK, VERSION, GC or STATUS"
        ))
    })?;
    let need = |k: &str| -> Result<Option<String>, CniError> {
        let v = var(k);
        if v.is_none() && required(command, k) {
            return Err(CniError::env(format!(
                "{k} is not set but {command} needs it: the container runtime must pass it"
            )));
        }
        Ok(v)
    };
    let container_id = need("CNI_CONTAINERID")?;
    if let Some(id) = &container_id {
        if !valid_container_id(id) {
            return Err(CniError::env(format!(
                "CNI_CONTAINERID {id:?} has invalid characters: use letters, digits, '_', '.' and '-', starting with a letter or digit"
            )));
        }
    }
    let netns = need("CNI_NETNS")?.map(PathBuf::from);
    let ifname = need("CNI_IFNAME")?;
    if let Some(name) = &ifname {
        if !valid_ifname(name) {
            return Err(CniError::env(format!(
                "CNI_IFNAME {name:?} is not a valid interface name: use 1 to 15 characters without '/', ':' or spaces"
            )));
        }
    }
    let args = match var("CNI_ARGS") {
        Some(a) => parse_args(&a)?,
        None => CniArgs::default(),
    };
    let path = need("CNI_PATH")?
        .map(|p| {
            p.split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default();
    Ok(CniEnv {
        command,
        container_id,
        netns,
        ifname,
        args,
        path,
    })
}

/// [`parse_env`] over a map, for tests and for the agent, which receives the variables as a map.
pub fn parse_env_map(vars: &HashMap<String, String>) -> Result<CniEnv, CniError> {
    parse_env(&|k| vars.get(k).cloned())
}
