//! The network configuration on stdin, in kube-ipam form or host-local `ranges` form, turned into
//! a validated [`berth_core::PoolSpec`] plus everything else the plugin and agent need.
//!
//! Unknown top-level and `ipam` fields are ignored: real configurations carry plugin-specific keys
//! (`master`, `etcdConfig.kubeConfig`, ...).

use crate::env::{parse_ip_maybe_prefix, CniArgs, Command};
use crate::error::CniError;
use crate::json::{elem_str, join, parse_cidr, parse_ip, show, wrong_type, Obj};
use crate::version::CniVersion;
use berth_core::addr::{from_u128, net_bounds};
use berth_core::pool::{DEFAULT_BLOCK_V4, DEFAULT_BLOCK_V6};
use berth_core::{AddrRange, Family, PoolSpec, PoolUse, Route, SubnetSpec};
use berth_ledger::Backend;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::IpAddr;
use std::path::PathBuf;

/// Where the embedded ledger lives when `ipam.dataDir` is not given.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/berth";
/// The node agent's socket when `ipam.agentSocket` is not given.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/berth/agent.sock";
/// The `ipam.type` values Berth answers to: its own and kube-ipam's, so it is a drop-in.
pub const IPAM_TYPES: [&str; 2] = ["berth-ipam", "kube-ipam"];

/// The values `ipam.ledger` takes.
pub const LEDGER_KINDS: [&str; 3] = ["kubernetes", "etcd", "embedded"];

/// Which ledger the configuration means (`ipam.ledger`, or kube-ipam's `etcdConfig`), and so
/// whether the plugin may allocate by itself when no agent answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Store {
    /// No `ledger` and no `etcdConfig`: whatever ledger this node's agent serves. Only the agent
    /// can serve it; without one the answer is "try again" (code 11), never a local allocation.
    Agent,
    /// `"ledger": "kubernetes"`: Berth's CRDs, which only the node agent serves.
    Kubernetes,
    /// `"ledger": "embedded"`: Berth's embedded ledger in a local directory (`ipam.dataDir`).
    Embedded {
        /// The directory.
        data_dir: PathBuf,
    },
    /// An etcd cluster, as kube-ipam's `etcdConfig` names it.
    Etcd {
        /// Client URLs (`etcdURL`, comma-separated in the configuration).
        endpoints: Vec<String>,
        /// Client certificate (`etcdCertFile`).
        cert: Option<PathBuf>,
        /// Client key (`etcdKeyFile`).
        key: Option<PathBuf>,
        /// CA bundle (`etcdTrustedCAFileFile`, kube-ipam's spelling, or `etcdTrustedCAFile`).
        ca: Option<PathBuf>,
    },
}

impl Store {
    /// The ledger backend this names; `None` for [`Store::Agent`] (the agent's, whichever).
    pub fn backend(&self) -> Option<Backend> {
        match self {
            Store::Agent => None,
            Store::Kubernetes => Some(Backend::Kubernetes),
            Store::Embedded { .. } => Some(Backend::Embedded),
            Store::Etcd { .. } => Some(Backend::Etcd),
        }
    }

    /// Whether the plugin may allocate by itself (the same ledger, opened directly) when no
    /// agent answers: the etcd and embedded ledgers.
    pub fn allows_direct(&self) -> bool {
        matches!(self, Store::Embedded { .. } | Store::Etcd { .. })
    }
}

/// One still-valid attachment listed by the runtime for GC (`cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    /// The container (sandbox) ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name.
    pub ifname: String,
}

/// A parsed and validated IPAM configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamConfig {
    /// The network name (top-level `name`); part of every binding's owner.
    pub network: String,
    /// The configuration's `cniVersion`: results and errors are written in it.
    pub cni_version: CniVersion,
    /// The pool: name is `ipam.name` or else the network name; validated.
    pub pool: PoolSpec,
    /// Which ledger the configuration means.
    pub store: Store,
    /// The node agent's socket; empty (`"agentSocket": ""`) means never ask an agent.
    pub agent_socket: PathBuf,
    /// `ipam.nodeName`; `None` means the caller uses the host name.
    pub node_name: Option<String>,
    /// `ipam.resolvConf`: a file the caller reads and parses with [`crate::dns::parse_resolv_conf`].
    pub resolv_conf: Option<PathBuf>,
    /// Fixed addresses requested by `runtimeConfig.ips`, `args.cni.ips` and (after
    /// [`IpamConfig::merge_env_ips`]) `CNI_ARGS IP=`; at most one per family, each inside the pool.
    pub requested_ips: Vec<IpAddr>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Vec<Attachment>,
    /// `prevResult` as given (CHECK, DEL); parse with [`crate::result::parse_prev_result`].
    pub prev_result: Option<Value>,
    /// `ipam.pool`: the pool is the Pool object (ledger record) of that name, not defined here;
    /// `pool` holds only its name until [`crate::handler::resolve_pool`] reads it, and
    /// `requested_ips` are checked against it then.
    #[serde(default)]
    pub pool_ref: bool,
}

/// Read only `cniVersion`, so an error about the rest of a configuration can still be written in
/// the configuration's version. `None` when absent, unsupported or unreadable.
pub fn peek_version(bytes: &[u8]) -> Option<CniVersion> {
    #[derive(Deserialize)]
    struct Peek {
        #[serde(rename = "cniVersion")]
        cni_version: Option<String>,
    }
    let p: Peek = serde_json::from_slice(bytes).ok()?;
    CniVersion::parse(p.cni_version.as_deref()?).ok()
}

/// Whether `name` is a valid network name per the spec: alphanumeric first, then alphanumerics,
/// `_`, `.` or `-`.
fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Parse and validate the network configuration from stdin bytes.
///
/// Error codes: 6 for JSON that does not decode (with line and column), 1 for a missing or
/// unsupported `cniVersion`, 7 for everything else (each message names the field and value).
///
/// Subnets come from `ipam.subnet` (kube-ipam form), `ipam.ranges` (host-local form, also
/// kube-ipam's "multiple subnets") and `runtimeConfig.ipRanges`, in host-local's order:
/// `ipRanges`, then the single `subnet`, then `ranges`. Berth hands out one address per family, so
/// all range sets of one family are merged into that family's subnet list (host-local would hand
/// out one address per range set); range objects naming the same subnet are merged into one
/// subnet with several ranges. As in host-local and kube-ipam, a subnet without `gateway` gets
/// its first address (`.1`) as gateway.
pub fn parse_config(bytes: &[u8]) -> Result<IpamConfig, CniError> {
    let root: Value =
        serde_json::from_slice(bytes).map_err(|e| CniError::decode("network configuration", &e))?;
    let Value::Object(map) = &root else {
        return Err(CniError::new(
            CniError::DECODING_FAILURE,
            format!(
                "network configuration {} is not a JSON object: send the configuration object on stdin",
                show(&root)
            ),
        ));
    };
    let top = Obj {
        path: String::new(),
        map,
    };
    let cni_version = match top.str("cniVersion")? {
        Some(v) => CniVersion::parse(v)?,
        None => return Err(CniError::new(
            CniError::INCOMPATIBLE_VERSION,
            "cniVersion is missing: add \"cniVersion\": \"1.0.0\" (or 0.3.0, 0.3.1, 0.4.0, 1.1.0)",
        )),
    };
    let network = match top.str("name")? {
        None => {
            return Err(CniError::config(
                "name is missing: give the network a name, e.g. \"name\": \"k8snetwork\"",
            ))
        }
        Some(n) if !valid_network_name(n) => {
            return Err(CniError::config(format!(
                "name {n:?} is not a valid network name: start with a letter or digit, then use letters, digits, '_', '.' or '-'"
            )))
        }
        Some(n) => n.to_string(),
    };
    if top.str("type")?.is_none_or(|t| t.is_empty()) {
        return Err(CniError::config(
            "type is missing: name the main plugin, e.g. \"type\": \"macvlan\"",
        ));
    }
    let Some(ipam) = top.obj("ipam")? else {
        return Err(CniError::config(
            "ipam is missing: add an \"ipam\" object with \"type\": \"berth-ipam\" and a subnet",
        ));
    };
    match ipam.str("type")? {
        None => {
            return Err(CniError::config(
                "ipam.type is missing: set it to \"berth-ipam\" or \"kube-ipam\"",
            ))
        }
        Some(t) if !IPAM_TYPES.contains(&t) => {
            return Err(CniError::config(format!(
                "ipam.type {t:?} is not handled by berth-ipam: set it to \"berth-ipam\" or \"kube-ipam\""
            )))
        }
        Some(_) => {}
    }

    // Range sets, in host-local's order.
    let mut sets: Vec<(String, Vec<Entry>)> = vec![];
    let runtime = top.obj("runtimeConfig")?;
    if let Some(rt) = &runtime {
        if let Some(list) = rt.list("ipRanges")? {
            sets.extend(parse_range_sets(&rt.name("ipRanges"), list)?);
        }
    }
    if let Some(e) = parse_entry(&ipam)? {
        sets.push((ipam.path.clone(), vec![e]));
    } else {
        for key in [
            "rangeStart",
            "rangeEnd",
            "fixedStart",
            "fixedEnd",
            "gateway",
        ] {
            if let Some(v) = ipam.get(key) {
                return Err(CniError::config(format!(
                    "ipam.{key} {} is given without ipam.subnet: add \"subnet\" (CIDR) next to it",
                    show(v)
                )));
            }
        }
    }
    if let Some(list) = ipam.list("ranges")? {
        sets.extend(parse_range_sets(&ipam.name("ranges"), list)?);
    }
    let pool_ref = ipam.nonempty("pool")?.map(str::to_string);
    if let Some(name) = &pool_ref {
        for key in [
            "subnet",
            "ranges",
            "name",
            "policy",
            "routes",
            "exclude",
            "blockSize",
            "blockSizeV6",
        ] {
            if ipam.get(key).is_some() {
                return Err(CniError::config(format!(
                    "ipam.pool {name:?} names a Pool object, which defines the pool, but ipam.{key} is given too: remove ipam.{key} (set it in the Pool), or remove ipam.pool"
                )));
            }
        }
    } else if sets.is_empty() {
        return Err(CniError::config(
            "ipam has no subnet: give ipam.subnet (e.g. \"10.188.0.0/16\"), ipam.ranges, or ipam.pool (the name of a Pool object with use: pod)",
        ));
    }

    let block_v4 = ipam.u8("blockSize")?;
    let block_v6 = ipam.u8("blockSizeV6")?;
    let fixed_anywhere = ipam.bool("fixedAnywhere")?.unwrap_or(false);
    let mut subnets = merge_sets(sets)?;
    for s in &mut subnets {
        let wanted = match s.family() {
            Family::V4 => block_v4.unwrap_or(DEFAULT_BLOCK_V4),
            Family::V6 => block_v6.unwrap_or(DEFAULT_BLOCK_V6),
        };
        // A block cannot be larger than its subnet: a small subnet is one block.
        s.block_size = Some(wanted.max(s.cidr.prefix_len()));
        s.fixed_anywhere = fixed_anywhere;
    }
    if let Some(routes) = ipam.list("routes")? {
        attach_routes(&ipam.name("routes"), routes, &mut subnets)?;
    }
    if let Some(ex) = ipam.list("exclude")? {
        attach_excludes(&ipam.name("exclude"), ex, &mut subnets)?;
    }
    let pool = match &pool_ref {
        Some(name) => PoolSpec {
            name: name.clone(),
            use_: PoolUse::Pod,
            subnets: vec![],
            policy: Default::default(),
            service: Default::default(),
            announcement: Default::default(),
        },
        None => {
            let pool = PoolSpec {
                name: ipam
                    .nonempty("name")?
                    .map_or_else(|| network.clone(), str::to_string),
                use_: PoolUse::Pod,
                subnets,
                policy: crate::policy::parse_policy(&ipam)?,
                service: Default::default(),
                announcement: Default::default(),
            };
            pool.validate()?;
            pool
        }
    };

    let store = parse_store(&ipam)?;
    let agent_socket = match ipam.str("agentSocket")? {
        None => PathBuf::from(DEFAULT_AGENT_SOCKET),
        Some(s) if s.trim().is_empty() => PathBuf::new(),
        Some(s) => PathBuf::from(s),
    };
    if agent_socket.as_os_str().is_empty() && !store.allows_direct() {
        let what = match &store {
            Store::Kubernetes => "ipam.ledger \"kubernetes\", which only the berth agent serves",
            _ => "no ledger of its own (no ipam.ledger, no ipam.etcdConfig), so only this node's berth agent can serve it",
        };
        return Err(CniError::config(format!(
            "ipam.agentSocket \"\" means never ask the agent, but the configuration names {what}: remove agentSocket, or set \"ledger\": \"embedded\" (or etcdConfig) to allocate without an agent"
        )));
    }
    let node_name = ipam.nonempty("nodeName")?.map(str::to_string);
    let resolv_conf = ipam.nonempty("resolvConf")?.map(PathBuf::from);

    let mut requested = vec![];
    if let Some(rt) = &runtime {
        if let Some(list) = rt.list("ips")? {
            requested.extend(parse_ip_list(&rt.name("ips"), list)?);
        }
    }
    if let Some(args) = top.obj("args")? {
        if let Some(cni) = args.obj("cni")? {
            if let Some(list) = cni.list("ips")? {
                requested.extend(parse_ip_list(&cni.name("ips"), list)?);
            }
        }
    }
    // Against a Pool object, checked once it is read.
    let requested_ips = match pool_ref {
        Some(_) => requested.into_iter().map(|(ip, _)| ip).collect(),
        None => check_requests(&pool, requested)?,
    };

    let valid_attachments = match top.list("cni.dev/valid-attachments")? {
        Some(list) => parse_attachments(list)?,
        None => vec![],
    };
    let prev_result = top.get("prevResult").cloned();

    Ok(IpamConfig {
        network,
        cni_version,
        pool,
        store,
        agent_socket,
        node_name,
        resolv_conf,
        requested_ips,
        valid_attachments,
        prev_result,
        pool_ref: pool_ref.is_some(),
    })
}

impl IpamConfig {
    /// Take the Pool object `ipam.pool` names as the pool, and check the requested addresses
    /// against it (code 7 when one lies outside).
    pub fn use_pool(&mut self, pool: PoolSpec) -> Result<(), CniError> {
        let requested = self
            .requested_ips
            .iter()
            .map(|ip| (*ip, "runtimeConfig.ips".to_string()))
            .collect();
        self.pool = pool;
        self.pool_ref = false;
        self.requested_ips = check_requests(&self.pool, requested)?;
        Ok(())
    }

    /// Add the `IP=` addresses from `CNI_ARGS` to the requested fixed addresses, re-checking that
    /// there is at most one per family and each lies in the pool (code 7 otherwise). An address
    /// requested both ways counts once.
    pub fn merge_env_ips(&mut self, args: &CniArgs) -> Result<(), CniError> {
        let mut all = args
            .ips
            .iter()
            .map(|ip| (*ip, "CNI_ARGS IP".to_string()))
            .collect::<Vec<_>>();
        all.extend(
            self.requested_ips
                .iter()
                .map(|ip| (*ip, "requested ips".to_string())),
        );
        self.requested_ips = check_requests(&self.pool, all)?;
        Ok(())
    }

    /// Check `command` may run with this configuration: the version gate of
    /// [`crate::version::check_command`] (code 1), and CHECK's required `prevResult` (code 7).
    pub fn check_command(&self, command: Command) -> Result<(), CniError> {
        crate::version::check_command(command, self.cni_version)?;
        if command == Command::Check && self.prev_result.is_none() {
            return Err(CniError::config(
                "prevResult is missing but CHECK needs it: the runtime must pass the result of the previous ADD",
            ));
        }
        Ok(())
    }

    /// The node this plugin runs on: `ipam.nodeName`, else `hostname` (which the caller reads, as
    /// this crate does no I/O).
    pub fn node_name_or(&self, hostname: &str) -> String {
        self.node_name
            .clone()
            .unwrap_or_else(|| hostname.to_string())
    }

    /// The requested fixed address of `family`, if any.
    pub fn requested(&self, family: Family) -> Option<IpAddr> {
        self.requested_ips
            .iter()
            .copied()
            .find(|ip| Family::of(*ip) == family)
    }
}

/// One range object (or the kube-ipam top-level range), before merging.
#[derive(Debug)]
struct Entry {
    path: String,
    cidr: IpNet,
    range: Option<AddrRange>,
    fixed: Option<AddrRange>,
    gateway: Option<IpAddr>,
}

/// Check `ip` of field `field` is of the subnet's family and inside it.
fn check_inside(field: &str, ip: IpAddr, subnet_field: &str, cidr: &IpNet) -> Result<(), CniError> {
    let (fam, sfam) = (Family::of(ip), Family::of(cidr.addr()));
    if fam != sfam {
        return Err(CniError::config(format!(
            "{field} {:?} is {fam} but {subnet_field} {cidr} is {sfam}: use an {sfam} address",
            ip.to_string()
        )));
    }
    if !cidr.contains(&ip) {
        return Err(CniError::config(format!(
            "{field} {:?} is not inside {subnet_field} {cidr}: move it into the subnet or fix the subnet",
            ip.to_string()
        )));
    }
    Ok(())
}

/// Parse the range fields of `o` (`subnet`, `rangeStart`, `rangeEnd`, `fixedStart`, `fixedEnd`,
/// `gateway`); `None` when there is no `subnet`.
fn parse_entry(o: &Obj<'_>) -> Result<Option<Entry>, CniError> {
    let subnet_field = o.name("subnet");
    let Some(raw) = o.cidr("subnet")? else {
        return Ok(None);
    };
    let cidr = raw.trunc();
    let fam = Family::of(cidr.addr());
    if cidr.prefix_len() + 2 > fam.bits() {
        return Err(CniError::config(format!(
            "{subnet_field} {:?} is too small to allocate from: use a prefix of /{} or shorter",
            raw.to_string(),
            fam.bits() - 2
        )));
    }
    let get = |key: &str| -> Result<Option<IpAddr>, CniError> {
        let ip = o.ip(key)?;
        if let Some(ip) = ip {
            check_inside(&o.name(key), ip, &subnet_field, &cidr)?;
        }
        Ok(ip)
    };
    let (start, end) = (get("rangeStart")?, get("rangeEnd")?);
    let (fstart, fend) = (get("fixedStart")?, get("fixedEnd")?);
    let gateway = get("gateway")?;
    let (first, last) = net_bounds(&cidr);
    let first_usable = from_u128(first + 1, fam);
    let last_usable = match fam {
        Family::V4 => from_u128(last - 1, fam),
        Family::V6 => from_u128(last, fam),
    };
    let mk = |a: &str, b: &str, s: IpAddr, e: IpAddr| {
        AddrRange::new(s, e).ok_or_else(|| {
            CniError::config(format!(
                "{} {:?} is after {} {:?}: swap them",
                o.name(a),
                s.to_string(),
                o.name(b),
                e.to_string()
            ))
        })
    };
    let range = match (start, end) {
        (None, None) => None,
        (s, e) => Some(mk(
            "rangeStart",
            "rangeEnd",
            s.unwrap_or(first_usable),
            e.unwrap_or(last_usable),
        )?),
    };
    let fixed = match (fstart, fend) {
        (None, None) => None,
        (Some(s), Some(e)) => Some(mk("fixedStart", "fixedEnd", s, e)?),
        (Some(_), None) | (None, Some(_)) => {
            let (given, value, missing) = match (fstart, fend) {
                (Some(v), _) => ("fixedStart", v, "fixedEnd"),
                (_, v) => ("fixedEnd", v.unwrap_or(first_usable), "fixedStart"),
            };
            return Err(CniError::config(format!(
                "{} {:?} is given without {}: give both ends of the reserved range",
                o.name(given),
                value.to_string(),
                o.name(missing)
            )));
        }
    };
    Ok(Some(Entry {
        path: o.path.clone(),
        cidr,
        range,
        fixed,
        gateway,
    }))
}

/// Parse a host-local `ranges` value: a list of range sets, each a list of range objects.
fn parse_range_sets(path: &str, list: &[Value]) -> Result<Vec<(String, Vec<Entry>)>, CniError> {
    let mut out = vec![];
    for (i, set) in list.iter().enumerate() {
        let set_path = format!("{path}[{i}]");
        let Value::Array(objs) = set else {
            return Err(wrong_type(&set_path, "a list of range objects", set));
        };
        if objs.is_empty() {
            return Err(CniError::config(format!(
                "{set_path} is an empty range set: add at least one {{\"subnet\": ...}} object or remove it"
            )));
        }
        let mut entries = vec![];
        for (j, o) in objs.iter().enumerate() {
            let obj_path = format!("{set_path}[{j}]");
            let Value::Object(m) = o else {
                return Err(wrong_type(&obj_path, "a range object", o));
            };
            let obj = Obj {
                path: obj_path.clone(),
                map: m,
            };
            let e = parse_entry(&obj)?.ok_or_else(|| {
                CniError::config(format!(
                    "{} is missing: every range object needs a subnet (CIDR)",
                    join(&obj_path, "subnet")
                ))
            })?;
            if let Some(first) = entries.first() {
                let first: &Entry = first;
                if Family::of(first.cidr.addr()) != Family::of(e.cidr.addr()) {
                    return Err(CniError::config(format!(
                        "{set_path} mixes {} and {}: put each family in its own range set",
                        first.cidr, e.cidr
                    )));
                }
            }
            entries.push(e);
        }
        out.push((set_path, entries));
    }
    Ok(out)
}

/// Merge range sets into subnets: one subnet per distinct CIDR, in first-seen order; range
/// objects for the same CIDR add their ranges and reserved ranges, and must agree on the gateway.
fn merge_sets(sets: Vec<(String, Vec<Entry>)>) -> Result<Vec<SubnetSpec>, CniError> {
    let mut subnets: Vec<SubnetSpec> = vec![];
    // Whether some range object asked for the whole subnet (no rangeStart/rangeEnd).
    let mut whole: Vec<bool> = vec![];
    // Which entry set each subnet's gateway, for the conflict message.
    let mut gw_from: Vec<String> = vec![];
    for (_, entries) in sets {
        for e in entries {
            let idx = match subnets.iter().position(|s| s.cidr == e.cidr) {
                Some(i) => i,
                None => {
                    subnets.push(SubnetSpec::new(e.cidr));
                    whole.push(false);
                    gw_from.push(String::new());
                    subnets.len() - 1
                }
            };
            let s = &mut subnets[idx];
            match e.range {
                Some(r) => s.ranges.push(r),
                None => whole[idx] = true,
            }
            s.fixed.extend(e.fixed);
            if let Some(gw) = e.gateway {
                match s.gateway {
                    Some(old) if old != gw => {
                        return Err(CniError::config(format!(
                        "{} {:?} conflicts with {} {:?} for subnet {}: give one gateway per subnet",
                        join(&e.path, "gateway"),
                        gw.to_string(),
                        join(&gw_from[idx], "gateway"),
                        old.to_string(),
                        s.cidr
                    )))
                    }
                    _ => {
                        s.gateway = Some(gw);
                        gw_from[idx] = e.path.clone();
                    }
                }
            }
        }
    }
    for (s, whole) in subnets.iter_mut().zip(whole) {
        if whole {
            s.ranges.clear();
        }
        if s.gateway.is_none() {
            // host-local and kube-ipam default the gateway to the subnet's first address.
            let (first, _) = net_bounds(&s.cidr);
            s.gateway = Some(from_u128(first + 1, s.family()));
        }
    }
    Ok(subnets)
}

/// Attach `ipam.routes` to every subnet of the route's family.
fn attach_routes(path: &str, routes: &[Value], subnets: &mut [SubnetSpec]) -> Result<(), CniError> {
    for (i, r) in routes.iter().enumerate() {
        let rpath = format!("{path}[{i}]");
        let Value::Object(m) = r else {
            return Err(wrong_type(&rpath, "a route object {\"dst\": ...}", r));
        };
        let o = Obj {
            path: rpath.clone(),
            map: m,
        };
        let dst = o.cidr("dst")?.ok_or_else(|| {
            CniError::config(format!(
                "{} is missing: every route needs a destination CIDR, e.g. \"0.0.0.0/0\"",
                o.name("dst")
            ))
        })?;
        let gw = o.ip("gw")?;
        let fam = Family::of(dst.addr());
        if let Some(gw) = gw {
            if Family::of(gw) != fam {
                return Err(CniError::config(format!(
                    "{} {:?} is {} but {} {dst} is {fam}: use an {fam} next hop",
                    o.name("gw"),
                    gw.to_string(),
                    Family::of(gw),
                    o.name("dst")
                )));
            }
        }
        let mut used = false;
        for s in subnets.iter_mut().filter(|s| s.family() == fam) {
            s.routes.push(Route { dst, gw });
            used = true;
        }
        if !used {
            return Err(CniError::config(format!(
                "{} {dst} is {fam} but no subnet is {fam}: remove the route or add an {fam} subnet",
                o.name("dst")
            )));
        }
    }
    Ok(())
}

/// Attach `ipam.exclude` entries (CIDRs or single addresses) to the subnets they overlap.
fn attach_excludes(path: &str, list: &[Value], subnets: &mut [SubnetSpec]) -> Result<(), CniError> {
    for (i, v) in list.iter().enumerate() {
        let field = format!("{path}[{i}]");
        let s = elem_str(&field, v)?;
        let net = if s.contains('/') {
            parse_cidr(&field, s)?
        } else {
            IpNet::from(parse_ip(&field, s)?)
        };
        let mut used = false;
        for sub in subnets.iter_mut() {
            if sub.cidr.contains(&net.network()) || net.contains(&sub.cidr.network()) {
                sub.excludes.push(net);
                used = true;
            }
        }
        if !used {
            return Err(CniError::config(format!(
                "{field} {s:?} is not inside any subnet of the pool: remove it or fix the subnet"
            )));
        }
    }
    Ok(())
}

/// Parse `ipam.ledger`, `ipam.etcdConfig` and `ipam.dataDir` into the ledger the configuration
/// means. `ledger` absent: `etcdConfig` means etcd (kube-ipam's meaning), nothing means the
/// agent's ledger. A field that does not fit the ledger named is code 7, never ignored.
fn parse_store(ipam: &Obj<'_>) -> Result<Store, CniError> {
    let ledger_field = ipam.name("ledger");
    let ledger = match ipam.str("ledger")? {
        None => None,
        Some(l) if LEDGER_KINDS.contains(&l) => Some(l),
        Some(l) => {
            return Err(CniError::config(format!(
                "{ledger_field} {l:?} is not a ledger Berth knows: use \"kubernetes\" (Berth's CRDs, through the node agent), \"etcd\" (with etcdConfig) or \"embedded\" (this node's file at dataDir)"
            )))
        }
    };
    let etcd = ipam.obj("etcdConfig")?;
    let data_dir = ipam.nonempty("dataDir")?;
    let refuse = |field: &str, l: &str, fix: &str| {
        CniError::config(format!(
            "{} is given but the ledger is {l:?}: {fix}",
            ipam.name(field)
        ))
    };
    let no_data_dir = |l: &str| match data_dir {
        Some(_) => Err(refuse(
            "dataDir",
            l,
            "dataDir is the embedded ledger's; remove it, or set \"ledger\": \"embedded\"",
        )),
        None => Ok(()),
    };
    let no_etcd = |l: &str| match etcd {
        Some(_) => Err(refuse(
            "etcdConfig",
            l,
            "etcdConfig names the etcd ledger; remove it, or set \"ledger\": \"etcd\"",
        )),
        None => Ok(()),
    };
    let etcd = match ledger {
        Some("kubernetes") => {
            no_data_dir("kubernetes")?;
            no_etcd("kubernetes")?;
            return Ok(Store::Kubernetes);
        }
        Some("embedded") => {
            no_etcd("embedded")?;
            let data_dir = data_dir.map_or_else(|| PathBuf::from(DEFAULT_DATA_DIR), PathBuf::from);
            return Ok(Store::Embedded { data_dir });
        }
        Some(_) => {
            no_data_dir("etcd")?;
            etcd.ok_or_else(|| {
                CniError::config(format!(
                    "{ledger_field} is \"etcd\" but {} is missing: give etcdConfig with etcdURL (and the certificate files for https)",
                    ipam.name("etcdConfig")
                ))
            })?
        }
        None => match etcd {
            Some(etcd) => {
                no_data_dir("etcd")?;
                etcd
            }
            None => return Ok(Store::Agent),
        },
    };
    let url_field = etcd.name("etcdURL");
    let urls = etcd.nonempty("etcdURL")?.ok_or_else(|| {
        CniError::config(format!(
            "{url_field} is missing: list the etcd client URLs, comma-separated, e.g. \"https://10.0.0.1:2379\""
        ))
    })?;
    let endpoints: Vec<String> = urls
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if endpoints.is_empty() {
        return Err(CniError::config(format!(
            "{url_field} {urls:?} names no endpoint: list the etcd client URLs, comma-separated"
        )));
    }
    let path =
        |k: &str| -> Result<Option<PathBuf>, CniError> { Ok(etcd.nonempty(k)?.map(PathBuf::from)) };
    let cert = path("etcdCertFile")?;
    let key = path("etcdKeyFile")?;
    if cert.is_some() != key.is_some() {
        let (given, missing) = if cert.is_some() {
            ("etcdCertFile", "etcdKeyFile")
        } else {
            ("etcdKeyFile", "etcdCertFile")
        };
        return Err(CniError::config(format!(
            "{} is given without {}: give both the client certificate and its key",
            etcd.name(given),
            etcd.name(missing)
        )));
    }
    let ca = match (path("etcdTrustedCAFileFile")?, path("etcdTrustedCAFile")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(CniError::config(format!(
                "{} {:?} and {} {:?} disagree: give the CA bundle once",
                etcd.name("etcdTrustedCAFileFile"),
                a.display().to_string(),
                etcd.name("etcdTrustedCAFile"),
                b.display().to_string()
            )))
        }
        (a, b) => a.or(b),
    };
    Ok(Store::Etcd {
        endpoints,
        cert,
        key,
        ca,
    })
}

/// Parse a list of requested addresses (`"1.2.3.4"` or `"1.2.3.4/24"`), each tagged with its
/// field name for later messages.
fn parse_ip_list(path: &str, list: &[Value]) -> Result<Vec<(IpAddr, String)>, CniError> {
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let field = format!("{path}[{i}]");
            let s = elem_str(&field, v)?;
            let ip = parse_ip_maybe_prefix(s).ok_or_else(|| {
                CniError::config(format!(
                    "{field} {s:?} is not an IP address: use an IPv4 or IPv6 address, optionally with /prefix"
                ))
            })?;
            Ok((ip, field))
        })
        .collect()
}

/// Check requested fixed addresses: duplicates count once, at most one per family, each inside a
/// subnet of the pool.
fn check_requests(pool: &PoolSpec, reqs: Vec<(IpAddr, String)>) -> Result<Vec<IpAddr>, CniError> {
    let mut out: Vec<(IpAddr, String)> = vec![];
    for (ip, field) in reqs {
        if out.iter().any(|(o, _)| *o == ip) {
            continue;
        }
        if let Some((other, ofield)) = out.iter().find(|(o, _)| Family::of(*o) == Family::of(ip)) {
            return Err(CniError::config(format!(
                "{field} {:?} and {ofield} {:?} are both {}: request at most one address per family",
                ip.to_string(),
                other.to_string(),
                Family::of(ip)
            )));
        }
        if pool.subnet_of(ip).is_none() {
            let subnets: Vec<String> = pool.subnets.iter().map(|s| s.cidr.to_string()).collect();
            return Err(CniError::config(format!(
                "{field} {:?} is not in any subnet of pool {:?} ({}): request an address inside the pool",
                ip.to_string(),
                pool.name,
                subnets.join(", ")
            )));
        }
        out.push((ip, field));
    }
    Ok(out.into_iter().map(|(ip, _)| ip).collect())
}

/// Parse `cni.dev/valid-attachments`.
fn parse_attachments(list: &[Value]) -> Result<Vec<Attachment>, CniError> {
    let path = "cni.dev/valid-attachments";
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let field = format!("{path}[{i}]");
            let Value::Object(m) = v else {
                return Err(wrong_type(
                    &field,
                    "an object {\"containerID\", \"ifname\"}",
                    v,
                ));
            };
            let o = Obj {
                path: field,
                map: m,
            };
            let need = |k: &str| -> Result<String, CniError> {
                o.nonempty(k)?.map(str::to_string).ok_or_else(|| {
                    CniError::config(format!(
                        "{} is missing: every valid attachment needs containerID and ifname",
                        o.name(k)
                    ))
                })
            };
            Ok(Attachment {
                container_id: need("containerID")?,
                ifname: need("ifname")?,
            })
        })
        .collect()
}
