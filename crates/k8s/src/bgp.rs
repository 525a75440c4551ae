//! The watches and writes of a node's BGP speaker: the BGPPeer and BGPConfiguration objects as
//! snapshots, the peer's password from its Secret, Events on a BGPPeer, and this node's entry
//! in a BGPPeer's `status.sessions`.
//!
//! Why here: the speaker's plan is pure (in `berth-agent`); this module is the thin API side.

use crate::cluster::{watch_view, Snapshot};
use crate::crd::{BGPConfiguration, BGPPeer, BgpSessionStatus};
use berth_core::bgp::{BgpConfigSpec, PeerSpec, SecretKeyRef};
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use std::collections::BTreeMap;
use std::time::Duration;

/// One BGPPeer object as the agent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerObject {
    /// The object's name (pools name peers by it).
    pub name: String,
    /// Its UID (Events are posted on it).
    pub uid: String,
    /// Its labels (pools select peers by them).
    pub labels: BTreeMap<String, String>,
    /// Its spec.
    pub spec: PeerSpec,
}

/// Every BGPPeer, by name. RBAC: `list, watch` on `bgppeers.berth.dev`.
pub fn watch_peers(client: Client) -> Snapshot<Vec<PeerObject>> {
    watch_view(
        Api::<BGPPeer>::all(client),
        "BGPPeer",
        |p: &BGPPeer| {
            Ok(PeerObject {
                name: p.metadata.name.clone().unwrap_or_default(),
                uid: p.metadata.uid.clone().unwrap_or_default(),
                labels: p.metadata.labels.clone().unwrap_or_default(),
                spec: p.spec.peer.clone(),
            })
        },
        |m| m.values().cloned().collect(),
    )
}

/// The BGPConfiguration named `default`, when it exists and is valid. Why "valid": an invalid
/// edit is refused by the controller (`Accepted=False`), and the agent keeps what it had:
/// a snapshot that does not change. RBAC: `list, watch` on `bgpconfigurations.berth.dev`.
pub fn watch_configuration(client: Client) -> Snapshot<Option<BgpConfigSpec>> {
    watch_view(
        Api::<BGPConfiguration>::all(client),
        "BGPConfiguration",
        |c: &BGPConfiguration| Ok(c.spec.config.clone()),
        |m| m.get("default").filter(|c| c.validate().is_ok()).cloned(),
    )
}

/// How long one API call of this module may take.
const CALL: Duration = Duration::from_secs(5);

/// The password a peer names, from its Secret in `namespace`. Fails closed: a missing Secret,
/// a missing key, a value that is not UTF-8 or is empty is an error naming it and what to do.
/// RBAC: `get` on `secrets` in `namespace` only.
pub async fn password(
    client: &Client,
    namespace: &str,
    r: &SecretKeyRef,
) -> Result<String, String> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let what = format!(
        "passwordSecretRef: Secret {namespace}/{} key {:?}",
        r.name,
        r.key()
    );
    let secret = match tokio::time::timeout(CALL, api.get_opt(&r.name)).await {
        Ok(Ok(Some(s))) => s,
        Ok(Ok(None)) => {
            return Err(format!(
                "{what}: the Secret does not exist; create it in {namespace} (the session stays down until then)"
            ))
        }
        Ok(Err(e)) => return Err(format!("{what}: cannot read it: {e}")),
        Err(_) => return Err(format!("{what}: reading it timed out")),
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(r.key()))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(r.key()))
                .map(|s| s.clone().into_bytes())
        });
    match value {
        None => Err(format!(
            "{what}: the Secret has no such key; add it (the session stays down until then)"
        )),
        Some(v) => match String::from_utf8(v) {
            Ok(s) if !s.is_empty() => Ok(s),
            Ok(_) => Err(format!("{what}: the value is empty")),
            Err(_) => Err(format!("{what}: the value is not UTF-8 text")),
        },
    }
}

/// A reference to a BGPPeer, for Events.
pub fn peer_reference(name: &str, uid: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("berth.dev/v1alpha1".into()),
        kind: Some("BGPPeer".into()),
        name: Some(name.into()),
        uid: (!uid.is_empty()).then(|| uid.into()),
        ..Default::default()
    }
}

/// The field manager of `node`'s agent: each node owns its own entry of `status.sessions`
/// (a map list keyed by node), so server-side apply merges the nodes' entries.
pub fn field_manager(node: &str) -> String {
    format!("berth-agent-{node}")
}

/// Writes this node's entry of the peer's `status.sessions` (`None` removes it).
/// RBAC: `patch` on `bgppeers/status`.
pub async fn write_session(
    client: &Client,
    peer: &str,
    node: &str,
    session: Option<&BgpSessionStatus>,
) -> Result<(), String> {
    let api: Api<BGPPeer> = Api::all(client.clone());
    let sessions: Vec<&BgpSessionStatus> = session.into_iter().collect();
    let body = serde_json::json!({
        "apiVersion": "berth.dev/v1alpha1",
        "kind": "BGPPeer",
        "metadata": {"name": peer},
        "status": {"sessions": sessions},
    });
    let pp = PatchParams::apply(&field_manager(node)).force();
    match tokio::time::timeout(CALL, api.patch_status(peer, &pp, &Patch::Apply(&body))).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(kube::Error::Api(e))) if e.code == 404 => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}
