//! Berth's custom resources, group `berth.dev`, version `v1alpha1`, all cluster-scoped.
//!
//! Each spec is a `berth-core` record plus `key`, the record's ledger name (object names are
//! derived from it by [`crate::names::object_name`]). Printer columns show what an operator wants
//! at a glance with `kubectl get`.

use berth_core::{Binding as CoreBinding, Block as CoreBlock, Claim as CoreClaim, PoolSpec};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Berth resource.
pub const GROUP: &str = "berth.dev";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";

/// A pool of addresses (`kubectl get pools.berth.dev`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Pool",
    plural = "pools",
    shortname = "bpool",
    status = "PoolStatus",
    printcolumn = r#"{"name":"Use","type":"string","jsonPath":".spec.use"}"#,
    printcolumn = r#"{"name":"Subnets","type":"string","jsonPath":".spec.subnets[*].cidr"}"#,
    printcolumn = r#"{"name":"Blocks","type":"integer","jsonPath":".status.blocks"}"#,
    printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.used"}"#,
    printcolumn = r#"{"name":"Free","type":"integer","jsonPath":".status.free"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct PoolRecord {
    /// The record's ledger name, when it is not the object's name (a pool name that is not a
    /// valid object name). Users never write it: a Pool's name is its object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The pool.
    #[serde(flatten)]
    pub pool: PoolSpec,
}

/// What the controller reports about a pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
pub struct PoolStatus {
    /// Blocks claimed by nodes.
    pub blocks: u64,
    /// Addresses bound.
    pub used: u64,
    /// Addresses that can still be handed out dynamically (saturates for huge IPv6 pools).
    pub free: u64,
    /// `Ready` (the pool is valid and overlaps no older pool; when False, nothing is handed out
    /// from it) and `AddressesOutside` (addresses still held outside a pool that shrank: kept,
    /// never moved).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A status condition, shaped as `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's type (`Ready`).
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason.
    pub reason: String,
    /// What is wrong and what to do, naming the field and value.
    pub message: String,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// The generation of the spec the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl Condition {
    /// `want` with `lastTransitionTime` kept from `previous` when the status did not change, as
    /// Kubernetes conventions ask (a condition's time says when it last flipped, not when it was
    /// last written).
    pub fn carry_time(mut want: Condition, previous: &[Condition]) -> Condition {
        if let Some(p) = previous.iter().find(|p| p.type_ == want.type_) {
            if p.status == want.status {
                want.last_transition_time = p.last_transition_time.clone();
            }
        }
        want
    }
}

/// A router the nodes peer with (`kubectl get bgppeers`): Berth's BGPPeer, shaped after
/// MetalLB's and Calico's. Users write it; the agents of the nodes it selects report their
/// sessions in its status.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "BGPPeer",
    plural = "bgppeers",
    shortname = "bpeer",
    status = "BgpPeerStatus",
    printcolumn = r#"{"name":"Peer","type":"string","jsonPath":".spec.peerAddress"}"#,
    printcolumn = r#"{"name":"Peer ASN","type":"integer","jsonPath":".spec.peerASN"}"#,
    printcolumn = r#"{"name":"My ASN","type":"integer","jsonPath":".spec.myASN"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct BgpPeerRecord {
    /// The peer.
    #[serde(flatten)]
    pub peer: berth_core::bgp::PeerSpec,
}

/// What Berth reports about a BGPPeer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct BgpPeerStatus {
    /// `Accepted` (the spec is valid and its Secret readable; when False, no node opens the
    /// session, and the message names the field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// One entry per node peering with this router, each written by that node's agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub sessions: Vec<BgpSessionStatus>,
}

/// One node's session with the peer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BgpSessionStatus {
    /// The node.
    pub node: String,
    /// The session's state (`Established`, `Active`, `Connect`, `OpenSent`, `Idle`, …).
    pub state: String,
    /// Since when it is in that state (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Prefixes this node advertises on the session.
    #[serde(default)]
    pub prefixes_sent: u64,
    /// Prefixes the router sent (Berth accepts none into the kernel; counted for operators).
    #[serde(default)]
    pub prefixes_received: u64,
    /// Why the session is not established, when it is not (a missing Secret, the router's
    /// NOTIFICATION, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Cluster-wide BGP settings (`kubectl get bgpconfigurations`); the one named `default` is
/// read. Why a resource and not agent flags: every agent must advertise the same ClusterIP
/// ranges and pod blocks, and a change must reach them without a rollout.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "BGPConfiguration",
    plural = "bgpconfigurations",
    shortname = "bbgp",
    status = "BgpConfigurationStatus",
    printcolumn = r#"{"name":"My ASN","type":"integer","jsonPath":".spec.myASN"}"#,
    printcolumn = r#"{"name":"Pod blocks","type":"boolean","jsonPath":".spec.advertisePodBlocks"}"#,
    printcolumn = r#"{"name":"ClusterIPs","type":"string","jsonPath":".spec.serviceClusterIPRanges"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct BgpConfigurationRecord {
    /// The settings.
    #[serde(flatten)]
    pub config: berth_core::bgp::BgpConfigSpec,
}

/// What Berth reports about the BGP configuration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct BgpConfigurationStatus {
    /// `Accepted` (valid; when False, the message names the field and the agents keep the
    /// last accepted settings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A node's block of a pod pool (`kubectl get blocks.berth.dev`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Block",
    plural = "blocks",
    shortname = "bblock",
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.pool"}"#,
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct BlockRecord {
    /// The record's ledger name.
    pub key: String,
    /// The block.
    #[serde(flatten)]
    pub block: CoreBlock,
}

/// Addresses kept for an identity (`kubectl get claims.berth.dev`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "Claim",
    plural = "claims",
    shortname = "bclaim",
    printcolumn = r#"{"name":"Identity","type":"string","jsonPath":".spec.key"}"#,
    printcolumn = r#"{"name":"Addresses","type":"string","jsonPath":".spec.addresses"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct ClaimRecord {
    /// The record's ledger name.
    pub key: String,
    /// The claim.
    #[serde(flatten)]
    pub claim: CoreClaim,
}

/// The live use of one address (`kubectl get addressbindings`). The kind is not `Binding`:
/// core/v1 has a Binding kind (the scheduler's), and `kubectl get bindings` would be ambiguous.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "berth.dev",
    version = "v1alpha1",
    kind = "AddressBinding",
    plural = "addressbindings",
    shortname = "bbind",
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address"}"#,
    printcolumn = r#"{"name":"Pool","type":"string","jsonPath":".spec.pool"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".spec.holder.attachment.pod.namespace"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.holder.attachment.pod.name"}"#,
    printcolumn = r#"{"name":"Service NS","type":"string","jsonPath":".spec.holder.services.services[*].namespace"}"#,
    printcolumn = r#"{"name":"Services","type":"string","jsonPath":".spec.holder.services.services[*].name"}"#,
    printcolumn = r#"{"name":"Container","type":"string","priority":1,"jsonPath":".spec.holder.attachment.containerID"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct BindingRecord {
    /// The record's ledger name.
    pub key: String,
    /// The binding.
    #[serde(flatten)]
    pub binding: CoreBinding,
}

/// Every CRD as one multi-document YAML, as checked into `deploy/base/crds.yaml`.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let mut out = String::from(
        "# Generated by `berth crds`; do not edit. A test fails when this file is out of date.\n",
    );
    for crd in [
        Pool::crd(),
        Block::crd(),
        Claim::crd(),
        AddressBinding::crd(),
        BGPPeer::crd(),
        BGPConfiguration::crd(),
    ] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// Create or update Berth's CRDs on a cluster and wait until the API server serves them.
/// Used by tests and by `berth controller --install-crds`; production installs apply
/// `deploy/base/crds.yaml`.
pub async fn install(
    client: &kube::Client,
    timeout: std::time::Duration,
) -> Result<(), kube::Error> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams};
    use kube::CustomResourceExt;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crds = [
        Pool::crd(),
        Block::crd(),
        Claim::crd(),
        AddressBinding::crd(),
        BGPPeer::crd(),
        BGPConfiguration::crd(),
    ];
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("berth").force(),
            &Patch::Apply(crd),
        )
        .await?;
    }
    let deadline = std::time::Instant::now() + timeout;
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        loop {
            let c = api.get(&name).await?;
            let established = c
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(kube::Error::Service(
                    format!("CRD {name} not established in {timeout:?}").into(),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bgp_objects_as_users_write_them_decode() {
        let obj = serde_json::json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "BGPPeer",
            "metadata": {"name": "router-a"},
            "spec": {"peerAddress": "198.18.1.1", "peerASN": 64512},
            "status": {"sessions": [{"node": "n1", "state": "Established", "prefixesSent": 3}]}
        });
        let p: BGPPeer = serde_json::from_value(obj.clone()).unwrap();
        assert_eq!(p.spec.peer.peer_asn, 64512);
        assert_eq!(p.status.unwrap().sessions[0].prefixes_received, 0);
        let c: BGPConfiguration = serde_json::from_value(serde_json::json!({
            "apiVersion": "berth.dev/v1alpha1", "kind": "BGPConfiguration",
            "metadata": {"name": "default"}, "spec": {"myASN": 64513}
        }))
        .unwrap();
        assert_eq!(c.spec.config.my_asn, Some(64513));
    }
}
