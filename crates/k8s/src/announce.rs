//! The watches the node agent's L2 announcer follows: Nodes (labels and InternalIPs), Pools,
//! the bindings Services hold, Services (`externalTrafficPolicy`), and EndpointSlices (which
//! nodes have a ready endpoint of which Service).
//!
//! Why here: the announcer's plan is pure (in `berth-agent`); this module turns API objects
//! into its inputs, each a whole snapshot from a watch (see [`crate::cluster::watch_view`]), so
//! an address is announced when the controller binds it and an announcer follows a pod that
//! moves, without polling.

use crate::cluster::{internal_ips, watch_view, Snapshot};
use crate::crd::{AddressBinding, Pool};
use berth_core::{Binding, Holder, PoolSpec};
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::Client;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// A Service, by namespace and name.
pub type ServiceKey = (String, String);

/// The label every node carries with its hostname; EndpointSlices of `discovery.k8s.io/v1beta1`
/// name an endpoint's node by it (`topology`).
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// What the announcer needs of one Node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// Its labels (pools select announcing nodes by them).
    pub labels: BTreeMap<String, String>,
    /// Its InternalIPs, in `status.addresses` order (heartbeats go to the first of a family).
    pub ips: Vec<IpAddr>,
}

/// What the announcer needs of one Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceFacts {
    /// Its UID (Events are posted on it).
    pub uid: String,
    /// `externalTrafficPolicy: Local`: only nodes with a ready endpoint may announce it.
    pub local: bool,
}

/// Whether `node` may carry an address held by `holders` under `externalTrafficPolicy`:
/// every Service holding it that is Local has a ready endpoint on `node` (sharers of an
/// address have the same pods).
///
/// Why one function: the interface mode, the BGP plan and any later mode must agree on it.
pub fn local_endpoints_here(
    holders: &berth_core::ServiceHolders,
    services: &BTreeMap<ServiceKey, ServiceFacts>,
    endpoints: &BTreeMap<ServiceKey, BTreeSet<String>>,
    node: &str,
) -> bool {
    holders.services.iter().all(|s| {
        let key = (s.namespace.clone(), s.name.clone());
        !services.get(&key).is_some_and(|f| f.local)
            || endpoints.get(&key).is_some_and(|n| n.contains(node))
    })
}

/// Every Node's labels and InternalIPs, published when either changes (not on heartbeats).
///
/// RBAC: `list, watch` on `nodes`.
pub fn watch_nodes(client: Client) -> Snapshot<BTreeMap<String, NodeFacts>> {
    watch_view(
        Api::<Node>::all(client),
        "Node",
        |n: &Node| {
            Ok(NodeFacts {
                labels: n.metadata.labels.clone().unwrap_or_default(),
                ips: internal_ips(n),
            })
        },
        |m| m.clone(),
    )
}

/// The nodes' InternalIPs, from the Node snapshot [`watch_nodes`] publishes (see
/// [`crate::cluster::derive`]).
pub fn node_ips(nodes: Snapshot<BTreeMap<String, NodeFacts>>) -> Snapshot<crate::cluster::NodeIps> {
    crate::cluster::derive(nodes, |m| {
        m.iter()
            .map(|(name, facts)| (name.clone(), facts.ips.clone()))
            .collect()
    })
}

/// Every readable Pool.
///
/// RBAC: `list, watch` on `pools.berth.dev`.
pub fn watch_pools(client: Client) -> Snapshot<Vec<PoolSpec>> {
    let api: Api<DynamicObject> = Api::all_with(client, &ApiResource::erase::<Pool>(&()));
    watch_view(api, "Pool", crate::ledger::pool_of, |m| {
        m.values().cloned().collect()
    })
}

/// Every binding held by Services (pod and attachment bindings are left out).
///
/// RBAC: `list, watch` on `addressbindings.berth.dev`.
pub fn watch_service_bindings(client: Client) -> Snapshot<Vec<Binding>> {
    let api: Api<DynamicObject> = Api::all_with(client, &ApiResource::erase::<AddressBinding>(&()));
    watch_view(
        api,
        "AddressBinding",
        |o: &DynamicObject| {
            crate::ledger::binding_of(o)
                .map(|b| matches!(b.holder, Holder::Services(_)).then_some(b))
        },
        |m| m.values().flatten().cloned().collect(),
    )
}

/// Every Service's UID and traffic policy.
///
/// RBAC: `list, watch` on `services`.
pub fn watch_services(client: Client) -> Snapshot<BTreeMap<ServiceKey, ServiceFacts>> {
    watch_view(
        Api::<Service>::all(client),
        "Service",
        |s: &Service| {
            Ok(ServiceFacts {
                uid: s.metadata.uid.clone().unwrap_or_default(),
                local: s
                    .spec
                    .as_ref()
                    .and_then(|sp| sp.external_traffic_policy.as_deref())
                    == Some("Local"),
            })
        },
        |m| {
            m.iter()
                .filter_map(|(k, v)| {
                    let (ns, name) = k.split_once('/')?;
                    Some(((ns.to_string(), name.to_string()), v.clone()))
                })
                .collect()
        },
    )
}

/// The EndpointSlice resource this API server serves: `discovery.k8s.io/v1` where it exists
/// (Kubernetes ≥ 1.21), else `v1beta1` (1.20).
pub async fn endpoint_slice_resource(client: &Client) -> ApiResource {
    let mk = |version: &str| ApiResource {
        group: "discovery.k8s.io".into(),
        version: version.into(),
        api_version: format!("discovery.k8s.io/{version}"),
        kind: "EndpointSlice".into(),
        plural: "endpointslices".into(),
    };
    let v1 = mk("v1");
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &v1);
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => v1,
        Err(_) => mk("v1beta1"),
    }
}

/// The Service an EndpointSlice belongs to and the nodes (names, or hostnames for `v1beta1`
/// slices without `nodeName`) with a ready endpoint in it.
pub fn slice_nodes(o: &DynamicObject) -> Result<(ServiceKey, BTreeSet<String>), String> {
    let ns = o.metadata.namespace.clone().unwrap_or_default();
    let svc = o
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("kubernetes.io/service-name"))
        .cloned()
        .ok_or("has no kubernetes.io/service-name label")?;
    let mut nodes = BTreeSet::new();
    for ep in o
        .data
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        // An unknown readiness counts as ready (the API's own rule).
        let ready = ep
            .pointer("/conditions/ready")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        if !ready {
            continue;
        }
        let node = ep.get("nodeName").and_then(Value::as_str).or_else(|| {
            ep.pointer("/topology/kubernetes.io~1hostname")
                .and_then(Value::as_str)
        });
        if let Some(n) = node {
            nodes.insert(n.to_string());
        }
    }
    Ok(((ns, svc), nodes))
}

/// For every Service, the nodes with a ready endpoint (all its EndpointSlices together).
///
/// RBAC: `list, watch` on `endpointslices.discovery.k8s.io`.
pub fn watch_endpoint_nodes(
    client: Client,
    resource: ApiResource,
) -> Snapshot<BTreeMap<ServiceKey, BTreeSet<String>>> {
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    watch_view(api, "EndpointSlice", slice_nodes, |m| {
        let mut out: BTreeMap<ServiceKey, BTreeSet<String>> = BTreeMap::new();
        for (key, nodes) in m.values() {
            out.entry(key.clone())
                .or_default()
                .extend(nodes.iter().cloned());
        }
        out
    })
}

/// `nodes` (names or hostnames, as EndpointSlices give them) as node names.
pub fn node_names(
    nodes: &BTreeSet<String>,
    known: &BTreeMap<String, NodeFacts>,
) -> BTreeSet<String> {
    nodes
        .iter()
        .filter_map(|n| {
            if known.contains_key(n) {
                return Some(n.clone());
            }
            known
                .iter()
                .find(|(_, f)| f.labels.get(HOSTNAME_LABEL) == Some(n))
                .map(|(name, _)| name.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(v: Value) -> DynamicObject {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn ready_endpoints_by_node_name_or_hostname() {
        let o = slice(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true},
                 "topology": {"kubernetes.io/hostname": "host-a"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}, "nodeName": "n2"},
                {"addresses": ["10.0.0.3"], "nodeName": "n3"}
            ]
        }));
        let (key, nodes) = slice_nodes(&o).unwrap();
        assert_eq!(key, ("shop".to_string(), "web".to_string()));
        assert_eq!(
            nodes,
            ["host-a", "n3"].iter().map(|s| s.to_string()).collect()
        );
        let known: BTreeMap<String, NodeFacts> = [
            (
                "n1".to_string(),
                NodeFacts {
                    labels: [(HOSTNAME_LABEL.to_string(), "host-a".to_string())].into(),
                    ips: vec![],
                },
            ),
            ("n3".to_string(), NodeFacts::default()),
        ]
        .into();
        assert_eq!(
            node_names(&nodes, &known),
            ["n1", "n3"].iter().map(|s| s.to_string()).collect()
        );
    }

    #[test]
    fn a_slice_without_its_service_label_is_refused() {
        let o = slice(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "x", "namespace": "a"}, "endpoints": []
        }));
        assert!(slice_nodes(&o).unwrap_err().contains("service-name"));
    }
}
