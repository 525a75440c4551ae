//! The inspection CLI: pools, blocks, bindings and the audit, from the ledger or, when an agent
//! holds an embedded ledger's lock, through the agent's socket.

use crate::ledger_args::LedgerArgs;
use anyhow::{bail, Context};
use berth_agent::admin::{AdminCommand, AdminRequest, SnapshotReply};
use berth_allocator::Snapshot;
use berth_core::{audit_with_claims, Binding, BindingKind, Block, Holder, PoolSpec, Violation};
use berth_ledger::{BadRecord, LedgerError, LedgerSpec};
use clap::Args;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Options shared by the inspection commands.
#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    pub ledger: LedgerArgs,
    /// Agent socket to ask when the embedded ledger is locked by a running agent.
    #[arg(long, default_value = "/run/berth/agent.sock")]
    pub socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn decode<T: serde::de::DeserializeOwned>(v: Vec<serde_json::Value>) -> serde_json::Result<Vec<T>> {
    v.into_iter().map(serde_json::from_value).collect()
}

fn from_agent(socket: &Path) -> anyhow::Result<Snapshot> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "the ledger is locked and no agent answers on {}",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = serde_json::to_vec(&AdminRequest {
        admin: AdminCommand::Snapshot,
    })?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    let reply: SnapshotReply =
        serde_json::from_str(&answer).context("decoding the agent's snapshot")?;
    if let Some(e) = reply.error {
        bail!(
            "the agent could not read its ledger ({}): {e}",
            reply.ledger
        );
    }
    let mut bad = vec![];
    for b in reply.bad {
        bad.push(BadRecord {
            kind: b.kind.parse()?,
            name: b.name,
            reason: b.reason,
        });
    }
    let s = Snapshot {
        pools: decode(reply.pools)?,
        blocks: decode(reply.blocks)?,
        claims: decode(reply.claims)?,
        bindings: decode(reply.bindings)?,
        bad,
    };
    warn_bad(&s);
    Ok(s)
}

pub(crate) async fn load(args: &InspectArgs) -> anyhow::Result<Snapshot> {
    let embedded_dir = match args.ledger.is_kubernetes() {
        true => None,
        false => match args.ledger.spec()? {
            LedgerSpec::Embedded { dir } => Some(dir),
            _ => None,
        },
    };
    let ledger: std::sync::Arc<dyn berth_ledger::Ledger> = match embedded_dir {
        // A running agent holds the embedded ledger's lock: ask it instead.
        Some(dir) => match berth_ledger::embedded::Embedded::open(&dir, Duration::from_millis(300))
        {
            Ok(l) => std::sync::Arc::new(l),
            Err(LedgerError::Unavailable { .. }) => return from_agent(&args.socket),
            Err(e) => return Err(e).context("opening the embedded ledger"),
        },
        None => args.ledger.open().await.context("opening the ledger")?,
    };
    let s = berth_allocator::snapshot(ledger.as_ref()).await?;
    warn_bad(&s);
    Ok(s)
}

/// Say on stderr that some records were left out, so a listing never looks complete when it is
/// not.
fn warn_bad(s: &Snapshot) {
    if !s.bad.is_empty() {
        eprintln!(
            "warning: {} ledger record(s) cannot be read and are not listed; `berth audit` names them",
            s.bad.len()
        );
    }
}

pub(crate) fn table(rows: Vec<Vec<String>>) {
    let widths: Vec<usize> = (0..rows.first().map_or(0, |r| r.len()))
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = std::io::stdout().lock();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `berth pools`.
pub async fn pools(args: InspectArgs) -> anyhow::Result<()> {
    let s = load(&args).await?;
    if args.json {
        return json(&s.pools);
    }
    let mut used: HashMap<&str, usize> = HashMap::new();
    for b in &s.bindings {
        *used.entry(b.pool.as_str()).or_default() += 1;
    }
    let mut blocks: HashMap<&str, usize> = HashMap::new();
    for b in &s.blocks {
        *blocks.entry(b.pool.as_str()).or_default() += 1;
    }
    let mut rows = vec![vec![
        "NAME".into(),
        "USE".into(),
        "SUBNETS".into(),
        "BLOCK".into(),
        "BLOCKS".into(),
        "USED".into(),
    ]];
    for p in &s.pools {
        rows.push(vec![
            p.name.clone(),
            format!("{:?}", p.use_).to_lowercase(),
            p.subnets
                .iter()
                .map(|s| s.cidr.to_string())
                .collect::<Vec<_>>()
                .join(","),
            p.subnets
                .iter()
                .map(|s| format!("/{}", s.block_prefix()))
                .collect::<Vec<_>>()
                .join(","),
            blocks
                .get(p.name.as_str())
                .copied()
                .unwrap_or(0)
                .to_string(),
            used.get(p.name.as_str()).copied().unwrap_or(0).to_string(),
        ]);
    }
    table(rows);
    Ok(())
}

/// `berth blocks`.
pub async fn blocks(args: InspectArgs) -> anyhow::Result<()> {
    let s = load(&args).await?;
    if args.json {
        return json(&s.blocks);
    }
    let pools: HashMap<&str, &PoolSpec> = s.pools.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut rows = vec![vec![
        "POOL".into(),
        "BLOCK".into(),
        "NODE".into(),
        "USED".into(),
        "CAPACITY".into(),
    ]];
    for b in &s.blocks {
        let used = s
            .bindings
            .iter()
            .filter(|x| matches!(&x.kind, BindingKind::Dynamic { block } if *block == b.cidr))
            .count();
        let cap = pools
            .get(b.pool.as_str())
            .and_then(|p| p.subnets.iter().find(|sn| sn.cidr.contains(&b.cidr)))
            .map(|sn| Block::capacity(b, sn).to_string())
            .unwrap_or_else(|| "orphan".into());
        rows.push(vec![
            b.pool.clone(),
            b.cidr.to_string(),
            b.node.clone(),
            used.to_string(),
            cap,
        ]);
    }
    table(rows);
    Ok(())
}

/// Who holds a binding, as the HOLDER column shows it: `pod NS/NAME`, `service NS/NAME` (several
/// for a shared address), or `-` for a container without Kubernetes arguments.
fn holder(b: &Binding) -> String {
    match &b.holder {
        Holder::Attachment(o) => o
            .pod
            .as_ref()
            .map(|p| format!("pod {}/{}", p.namespace, p.name))
            .unwrap_or_else(|| "-".into()),
        Holder::Services(_) => b.holder.describe(),
    }
}

/// `berth bindings`.
pub async fn bindings(args: InspectArgs) -> anyhow::Result<()> {
    let s = load(&args).await?;
    if args.json {
        return json(&s.bindings);
    }
    let mut rows = vec![vec![
        "ADDRESS".into(),
        "POOL".into(),
        "NODE".into(),
        "KIND".into(),
        "NETWORK".into(),
        "CONTAINER".into(),
        "IFNAME".into(),
        "HOLDER".into(),
    ]];
    for b in &s.bindings {
        let kind = match &b.kind {
            BindingKind::Fixed => "fixed".to_string(),
            BindingKind::Dynamic { block } => format!("block {block}"),
            BindingKind::Claimed { claim } => format!("claim {claim}"),
        };
        let dash = || "-".to_string();
        let o = b.attachment();
        rows.push(vec![
            format!("{}/{}", b.address, b.prefix_len),
            b.pool.clone(),
            if b.node.is_empty() {
                dash()
            } else {
                b.node.clone()
            },
            kind,
            o.map_or_else(dash, |o| o.network.clone()),
            o.map_or_else(dash, |o| o.container_id.chars().take(16).collect()),
            o.map_or_else(dash, |o| o.ifname.clone()),
            holder(b),
        ]);
    }
    table(rows);
    Ok(())
}

/// `berth audit`: exits 1 when an invariant is broken or a record cannot be read.
pub async fn audit(args: InspectArgs) -> anyhow::Result<()> {
    let s = load(&args).await?;
    let mut violations: Vec<Violation> = s
        .bad
        .iter()
        .map(|b| Violation::BadRecord {
            kind: b.kind.to_string(),
            name: b.name.clone(),
            reason: b.reason.clone(),
        })
        .collect();
    violations.extend(audit_with_claims(
        &s.pools,
        &s.blocks,
        &s.claims,
        &s.bindings,
    ));
    if args.json {
        json(&violations.iter().map(|v| v.to_string()).collect::<Vec<_>>())?;
    } else {
        for v in &violations {
            println!("VIOLATION: {v}");
        }
    }
    if !violations.is_empty() {
        eprintln!("audit: {} violation(s)", violations.len());
        std::process::exit(1);
    }
    eprintln!(
        "audit clean: {} pools, {} blocks, {} claims, {} bindings",
        s.pools.len(),
        s.blocks.len(),
        s.claims.len(),
        s.bindings.len()
    );
    Ok(())
}

/// One row of `berth services`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceRow {
    service: String,
    address: Option<String>,
    pool: Option<String>,
    /// `loadBalancer` or `externalIP`; `pending` for a LoadBalancer Service without an address.
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sharing_key: Option<String>,
    /// Why a pending Service waits: the latest AddressPending or InvalidAnnotation Event.
    #[serde(skip_serializing_if = "Option::is_none")]
    waiting: Option<String>,
}

/// `berth services`: every address held for a Service (from the ledger) and, on Kubernetes,
/// every LoadBalancer Service Berth serves that still waits, with why.
pub async fn services(args: InspectArgs) -> anyhow::Result<()> {
    let s = load(&args).await?;
    let mut rows: Vec<ServiceRow> = vec![];
    let mut holding: std::collections::HashSet<String> = Default::default();
    for b in &s.bindings {
        let Some(h) = b.holder.services() else {
            continue;
        };
        for r in &h.services {
            holding.insert(format!("{}/{}", r.namespace, r.name));
            rows.push(ServiceRow {
                service: format!("{}/{}", r.namespace, r.name),
                address: Some(format!("{}/{}", b.address, b.prefix_len)),
                pool: Some(b.pool.clone()),
                kind: if h.external_ip {
                    "externalIP"
                } else {
                    "loadBalancer"
                }
                .into(),
                sharing_key: h.sharing_key.clone(),
                waiting: None,
            });
        }
    }
    if args.ledger.is_kubernetes() || args.ledger.kubeconfig.is_some() {
        let (client, _) = berth_k8s::client(args.ledger.kubeconfig.as_deref()).await?;
        let list = kube::Api::<k8s_openapi::api::core::v1::Service>::all(client.clone())
            .list(&Default::default())
            .await
            .context("listing Services")?;
        for svc in list.items {
            if !berth_k8s::services::wants_load_balancer(&svc) {
                continue;
            }
            let r = berth_k8s::services::service_ref(&svc);
            let key = format!("{}/{}", r.namespace, r.name);
            if holding.contains(&key) {
                continue;
            }
            let events = kube::Api::<k8s_openapi::api::core::v1::Event>::namespaced(
                client.clone(),
                &r.namespace,
            )
            .list(&kube::api::ListParams::default().fields(&format!(
                "involvedObject.name={},involvedObject.kind=Service",
                r.name
            )))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
            let waiting = events
                .iter()
                .filter(|e| {
                    e.involved_object.uid.as_deref() == Some(r.uid.as_str())
                        && matches!(
                            e.reason.as_deref(),
                            Some("AddressPending" | "InvalidAnnotation")
                        )
                })
                .max_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0))
                .and_then(|e| e.message.clone());
            rows.push(ServiceRow {
                service: key,
                address: None,
                pool: None,
                kind: "pending".into(),
                sharing_key: None,
                waiting: Some(waiting.unwrap_or_else(|| "not handled yet".into())),
            });
        }
    }
    rows.sort_by(|a, b| a.service.cmp(&b.service).then(a.address.cmp(&b.address)));
    if args.json {
        return json(&rows);
    }
    let dash = || "-".to_string();
    let mut out = vec![vec![
        "SERVICE".into(),
        "ADDRESS".into(),
        "POOL".into(),
        "KIND".into(),
        "SHARING".into(),
        "WAITING".into(),
    ]];
    for r in rows {
        out.push(vec![
            r.service,
            r.address.unwrap_or_else(dash),
            r.pool.unwrap_or_else(dash),
            r.kind,
            r.sharing_key.unwrap_or_else(dash),
            r.waiting.unwrap_or_else(dash),
        ]);
    }
    table(out);
    Ok(())
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct AnnouncementRow {
    address: String,
    /// `service`, or, for what only BGP advertises, `podBlock` or `clusterIPs`.
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<String>,
    mode: String,
    /// The announcing node (L2).
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    /// `bgp`: the nodes advertising it on an Established session.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    /// A conflict, or why nothing announces it.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// What the nodes' BGP speakers advertise, per prefix: where it comes from, the nodes whose
/// plan has it, and those of them with an Established session to a peer it goes to.
#[derive(Default)]
struct BgpAdvertised {
    routes: std::collections::BTreeMap<
        ipnet::IpNet,
        (
            berth_agent::bgp::Origin,
            std::collections::BTreeSet<String>,
            std::collections::BTreeSet<String>,
        ),
    >,
    /// Pools whose `bgp` settings cannot be used, with why.
    bad_pools: std::collections::BTreeMap<String, String>,
    /// Services (`namespace/name`) with `externalTrafficPolicy: Local`.
    local: std::collections::BTreeSet<String>,
    /// Whether any node opens a session at all.
    peered: bool,
    /// Why the plans are not known, when they are not (every BGP row says it).
    unknown: Option<String>,
}

/// Plans every node as its agent does (the agent's watches and pure plan), and marks which
/// nodes' sessions are Established from the BGPPeers' `status.sessions`.
///
/// Why plan here rather than ask the agents: the CLI reaches the API server, not the nodes,
/// and the plan is a pure function of what it can read.
async fn bgp_advertised(
    client: &kube::Client,
    kube_ledger: bool,
    peers: &[berth_k8s::crd::BGPPeer],
) -> anyhow::Result<BgpAdvertised> {
    use berth_k8s::announce as w;
    let mut inputs = berth_agent::bgp::BgpInputs {
        nodes: w::watch_nodes(client.clone()),
        peers: berth_k8s::bgp::watch_peers(client.clone()),
        cluster: berth_k8s::bgp::watch_configuration(client.clone()),
        pools: w::watch_pools(client.clone()),
        bindings: w::watch_service_bindings(client.clone()),
        services: w::watch_services(client.clone()),
        endpoints: w::watch_endpoint_nodes(
            client.clone(),
            w::endpoint_slice_resource(client).await,
        ),
        blocks: kube_ledger.then(|| berth_k8s::cluster::watch_blocks(client.clone())),
    };
    inputs
        .listed(Duration::from_secs(15))
        .await
        .map_err(anyhow::Error::msg)
        .context("reading BGP peers, pools, Services and EndpointSlices")?;
    let up: std::collections::BTreeSet<(String, String)> = peers
        .iter()
        .flat_map(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            p.status
                .iter()
                .flat_map(|s| s.sessions.iter())
                .filter(|s| s.state == "Established")
                .map(move |s| (name.clone(), s.node.clone()))
        })
        .collect();
    let mut out = BgpAdvertised::default();
    if let Some(services) = inputs.services.borrow().clone() {
        out.local = services
            .iter()
            .filter(|(_, f)| f.local)
            .map(|((ns, n), _)| format!("{ns}/{n}"))
            .collect();
    }
    for (node, plan) in inputs.plans().unwrap_or_default() {
        out.bad_pools.extend(plan.bad_pools.clone());
        out.peered |= !plan.sessions.is_empty();
        for (prefix, route) in plan.routes {
            let sent = route
                .peers
                .iter()
                .any(|p| up.contains(&(p.clone(), node.clone())));
            let e = out
                .routes
                .entry(prefix)
                .or_insert_with(|| (route.origin.clone(), Default::default(), Default::default()));
            e.1.insert(node.clone());
            if sent {
                e.2.insert(node.clone());
            }
        }
    }
    Ok(out)
}

/// `berth announcements`: every Service address in a pool that announces it, with the node
/// announcing it and since when (from the Service's `berth.dev/Announced` condition, which the
/// announcing agent writes), a conflict, or why nothing does (the latest NoAnnouncer Event).
/// For `bgp` pools, the nodes advertising it (planned as each agent plans, on an Established
/// session), and the pod blocks and ClusterIP ranges BGP advertises.
pub async fn announcements(args: InspectArgs) -> anyhow::Result<()> {
    use berth_agent::l2::kube::{read_entries, CONDITION};
    use berth_core::announce::AnnounceMode;
    let s = load(&args).await?;
    let modes: std::collections::BTreeMap<&str, AnnounceMode> = s
        .pools
        .iter()
        .map(|p| (p.name.as_str(), p.announcement.announce))
        .collect();
    let mut conditions: std::collections::BTreeMap<String, String> = Default::default();
    let mut notes: std::collections::BTreeMap<String, String> = Default::default();
    let mut bgp = BgpAdvertised {
        unknown: Some("BGP advertisers are read from Kubernetes: pass --kubeconfig".into()),
        ..Default::default()
    };
    if args.ledger.is_kubernetes() || args.ledger.kubeconfig.is_some() {
        let (client, _) = berth_k8s::client(args.ledger.kubeconfig.as_deref()).await?;
        let list = kube::Api::<k8s_openapi::api::core::v1::Service>::all(client.clone())
            .list(&Default::default())
            .await
            .context("listing Services")?;
        for svc in list.items {
            let r = berth_k8s::services::service_ref(&svc);
            let key = format!("{}/{}", r.namespace, r.name);
            if let Some(c) = svc
                .status
                .as_ref()
                .and_then(|st| st.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == CONDITION))
            {
                conditions.insert(key.clone(), c.message.clone());
            }
        }
        let events = kube::Api::<k8s_openapi::api::core::v1::Event>::all(client.clone())
            .list(&kube::api::ListParams::default().fields("reason=NoAnnouncer"))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        let mut events: Vec<_> = events.into_iter().collect();
        events.sort_by_key(|e| e.last_timestamp.as_ref().map(|t| t.0));
        for e in events {
            let o = &e.involved_object;
            if let (Some(ns), Some(n), Some(m)) = (&o.namespace, &o.name, &e.message) {
                notes.insert(format!("{ns}/{n}"), m.clone());
            }
        }
        // One list of the BGPPeers: whether BGP is in use at all, and their sessions' states.
        let peers = kube::Api::<berth_k8s::crd::BGPPeer>::all(client.clone())
            .list(&Default::default())
            .await;
        if modes.values().any(|m| *m == AnnounceMode::Bgp)
            || peers.as_ref().is_ok_and(|l| !l.items.is_empty())
        {
            let advertised = match peers {
                Ok(l) => bgp_advertised(&client, args.ledger.is_kubernetes(), &l.items).await,
                Err(e) => Err(anyhow::Error::new(e).context("listing BGPPeers")),
            };
            // The L2 rows stand without it: say what is missing instead of failing.
            match advertised {
                Ok(b) => bgp = b,
                Err(e) => bgp.unknown = Some(format!("BGP advertisers unknown: {e:#}")),
            }
        }
    }
    let mut rows = vec![];
    for b in &s.bindings {
        let Some(h) = b.holder.services() else {
            continue;
        };
        let mode = modes
            .get(b.pool.as_str())
            .copied()
            .unwrap_or(AnnounceMode::None);
        if mode == AnnounceMode::None {
            continue;
        }
        for r in &h.services {
            let key = format!("{}/{}", r.namespace, r.name);
            let entry = conditions
                .get(&key)
                .and_then(|m| read_entries(m).into_iter().find(|e| e.address == b.address));
            let mut nodes = vec![];
            let note = if mode == AnnounceMode::Bgp {
                let (n, why) = bgp_note(&bgp, b, &key);
                nodes = n;
                why
            } else {
                match &entry {
                    Some(e) => e.conflict.clone(),
                    None => notes
                        .get(&key)
                        .filter(|m| m.starts_with(&format!("{} ", b.address)))
                        .cloned()
                        .or_else(|| {
                            (mode == AnnounceMode::L2).then(|| "no node announces it yet".into())
                        }),
                }
            };
            rows.push(AnnouncementRow {
                address: b.address.to_string(),
                kind: "service",
                service: Some(key),
                pool: Some(b.pool.clone()),
                mode: format!("{mode:?}").to_lowercase(),
                node: entry.as_ref().map(|e| e.node.clone()),
                nodes,
                since: entry.as_ref().map(|e| e.since.clone()),
                note,
            });
        }
    }
    for (prefix, (origin, planned, sent)) in &bgp.routes {
        let (kind, pool) = match origin {
            berth_agent::bgp::Origin::Service { .. } => continue,
            berth_agent::bgp::Origin::PodBlock => (
                "podBlock",
                s.blocks
                    .iter()
                    .find(|b| b.cidr == *prefix)
                    .map(|b| b.pool.clone()),
            ),
            berth_agent::bgp::Origin::ClusterIps => ("clusterIPs", None),
        };
        rows.push(AnnouncementRow {
            address: prefix.to_string(),
            kind,
            service: None,
            pool,
            mode: "bgp".into(),
            node: None,
            nodes: sent.iter().cloned().collect(),
            since: None,
            note: sent.is_empty().then(|| not_established(planned)),
        });
    }
    rows.sort_by(|a, b| a.address.cmp(&b.address).then(a.service.cmp(&b.service)));
    if args.json {
        return json(&rows);
    }
    let dash = || "-".to_string();
    let mut out = vec![vec![
        "ADDRESS".into(),
        "SERVICE".into(),
        "POOL".into(),
        "MODE".into(),
        "NODE".into(),
        "SINCE".into(),
        "NOTE".into(),
    ]];
    for r in rows {
        let node = match (r.node, r.nodes.is_empty()) {
            (Some(n), _) => n,
            (None, false) => r.nodes.join(","),
            (None, true) => dash(),
        };
        out.push(vec![
            r.address,
            r.service.unwrap_or_else(|| format!("({})", r.kind)),
            r.pool.unwrap_or_else(dash),
            r.mode,
            node,
            r.since.unwrap_or_else(dash),
            r.note.unwrap_or_else(dash),
        ]);
    }
    table(out);
    Ok(())
}

/// A BGP-announced Service address: the nodes advertising it on an Established session, and
/// a note (the prefix it goes out as when aggregated; why no node advertises it).
fn bgp_note(bgp: &BgpAdvertised, b: &Binding, key: &str) -> (Vec<String>, Option<String>) {
    if let Some(why) = &bgp.unknown {
        return (vec![], Some(why.clone()));
    }
    let held = |origin: &berth_agent::bgp::Origin| {
        matches!(origin, berth_agent::bgp::Origin::Service { pool, services }
            if *pool == b.pool
                && services.iter().any(|(ns, n)| key.split_once('/') == Some((ns, n))))
    };
    // The address itself (a host route) by key; only an aggregated pool needs the scan.
    let host = ipnet::IpNet::from(b.address);
    let found = bgp
        .routes
        .get_key_value(&host)
        .filter(|(_, (origin, _, _))| held(origin))
        .or_else(|| {
            bgp.routes
                .iter()
                .find(|(prefix, (origin, _, _))| prefix.contains(&b.address) && held(origin))
        });
    match found {
        Some((prefix, (_, planned, sent))) => {
            let mut notes = vec![];
            if prefix.prefix_len() != prefix.max_prefix_len() {
                notes.push(format!("advertised as {prefix}"));
            }
            if sent.is_empty() {
                notes.push(not_established(planned));
            }
            (
                sent.iter().cloned().collect(),
                (!notes.is_empty()).then(|| notes.join("; ")),
            )
        }
        None => {
            let why = match bgp.bad_pools.get(&b.pool) {
                Some(why) => format!("pool {}: {why}", b.pool),
                None if !bgp.peered => "no node advertises it: no BGPPeer selects a node".into(),
                None if bgp.local.contains(key) => "no node advertises it: \
                    externalTrafficPolicy: Local and no node has a ready endpoint"
                    .into(),
                None => "no node advertises it: no peer of the pool's bgp.peers takes \
                         this address family"
                    .into(),
            };
            (vec![], Some(why))
        }
    }
}

/// Why a planned route is not sent: no planned node's session is Established.
fn not_established(planned: &std::collections::BTreeSet<String>) -> String {
    format!(
        "no session Established on the nodes that would advertise it ({})",
        planned.iter().cloned().collect::<Vec<_>>().join(",")
    )
}

/// One row of `berth bgp status`: a node's session with a BGPPeer.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct SessionRow {
    peer: String,
    address: String,
    peer_asn: u32,
    accepted: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    prefixes_sent: u64,
    prefixes_received: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// `berth bgp status`: every BGPPeer with its `Accepted` condition and each node's session
/// (state, since when, prefixes sent and received, why it is down), from the peers' status,
/// which each node's agent writes. A peer no node has reported on is listed once, without a node.
pub async fn bgp_status(args: InspectArgs) -> anyhow::Result<()> {
    let (client, _) = berth_k8s::client(args.ledger.kubeconfig.as_deref()).await?;
    let peers = kube::Api::<berth_k8s::crd::BGPPeer>::all(client)
        .list(&Default::default())
        .await
        .context("listing BGPPeers")?;
    let mut rows = vec![];
    for p in peers.items {
        let name = p.metadata.name.clone().unwrap_or_default();
        let status = p.status.clone().unwrap_or_default();
        let accepted = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Accepted")
            .map(|c| {
                if c.status == "True" {
                    "True".to_string()
                } else {
                    format!("{}: {}", c.status, c.message)
                }
            })
            .unwrap_or_else(|| "-".into());
        let base = || SessionRow {
            peer: name.clone(),
            address: p.spec.peer.peer_address.to_string(),
            peer_asn: p.spec.peer.peer_asn,
            accepted: accepted.clone(),
            node: None,
            state: None,
            since: None,
            prefixes_sent: 0,
            prefixes_received: 0,
            message: None,
        };
        if status.sessions.is_empty() {
            rows.push(base());
        }
        for s in &status.sessions {
            rows.push(SessionRow {
                node: Some(s.node.clone()),
                state: Some(s.state.clone()),
                since: s.since.clone(),
                prefixes_sent: s.prefixes_sent,
                prefixes_received: s.prefixes_received,
                message: s.message.clone(),
                ..base()
            });
        }
    }
    rows.sort_by(|a, b| a.peer.cmp(&b.peer).then(a.node.cmp(&b.node)));
    if args.json {
        return json(&rows);
    }
    let dash = || "-".to_string();
    let mut out = vec![[
        "PEER", "ADDRESS", "PEER ASN", "ACCEPTED", "NODE", "STATE", "SINCE", "SENT", "RECEIVED",
        "MESSAGE",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect::<Vec<_>>()];
    for r in rows {
        out.push(vec![
            r.peer,
            r.address,
            r.peer_asn.to_string(),
            r.accepted,
            r.node.unwrap_or_else(dash),
            r.state.unwrap_or_else(dash),
            r.since.unwrap_or_else(dash),
            r.prefixes_sent.to_string(),
            r.prefixes_received.to_string(),
            r.message.unwrap_or_else(dash),
        ]);
    }
    table(out);
    Ok(())
}
