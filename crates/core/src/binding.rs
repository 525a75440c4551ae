//! Bindings: the live use of one address by one workload instance.

use crate::service::ServiceRef;
use crate::time::Timestamp;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A pod, as far as the ledger needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID, when known: it tells a replacement pod of the same name from the original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// Who holds a binding: one network attachment of one container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    /// The CNI network name.
    pub network: String,
    /// The runtime's container (sandbox) ID (`CNI_CONTAINERID`).
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name inside the container.
    pub ifname: String,
    /// The pod, when the runtime passed Kubernetes arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
}

impl Owner {
    /// A human description for error messages: the pod if known, else container and interface.
    pub fn describe(&self) -> String {
        match &self.pod {
            Some(p) => format!(
                "pod {}/{} (container {}, interface {})",
                p.namespace, p.name, self.container_id, self.ifname
            ),
            None => format!("container {} interface {}", self.container_id, self.ifname),
        }
    }

    /// Whether two owners denote the same attachment. Release is checked against this, so a stale
    /// or different owner never frees an address someone else holds.
    pub fn same_attachment(&self, other: &Owner) -> bool {
        self.network == other.network
            && self.container_id == other.container_id
            && self.ifname == other.ifname
    }
}

/// Services holding one address: one, or several sharing it under one sharing key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServiceHolders {
    /// The Services, each with its UID: a release is checked against it.
    pub services: Vec<ServiceRef>,
    /// The sharing key they hold it under (their namespace's), when shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing_key: Option<String>,
    /// Held because the Service names it in `spec.externalIPs` (admitted from a pool with
    /// `externalIPs: true`), not as a LoadBalancer address: it never appears in
    /// `status.loadBalancer`, and it is released when the Service stops naming it.
    #[serde(
        default,
        rename = "externalIP",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub external_ip: bool,
}

/// Who holds a binding: the closed set of holders the core knows. Every release is checked
/// against the holder's identity (container ID and interface, or Service UID).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Holder {
    /// One network attachment of one container (the CNI IPAM path).
    Attachment(Owner),
    /// Services holding a LoadBalancer or external address.
    Services(ServiceHolders),
}

impl Holder {
    /// The attachment, when an attachment holds it.
    pub fn attachment(&self) -> Option<&Owner> {
        match self {
            Holder::Attachment(o) => Some(o),
            Holder::Services(_) => None,
        }
    }

    /// The Services, when Services hold it.
    pub fn services(&self) -> Option<&ServiceHolders> {
        match self {
            Holder::Services(s) => Some(s),
            Holder::Attachment(_) => None,
        }
    }

    /// A short description for messages and CLI output.
    pub fn describe(&self) -> String {
        match self {
            Holder::Attachment(o) => o.describe(),
            Holder::Services(s) => s
                .services
                .iter()
                .map(|r| format!("service {r}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// How a binding's address was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum BindingKind {
    /// Picked inside one of the node's blocks.
    Dynamic {
        /// The block it was picked from.
        block: IpNet,
    },
    /// Asked for explicitly (runtime `ips`, `IP=` argument, annotation).
    Fixed,
    /// Kept for an identity by a claim (a StatefulSet ordinal, a sticky set); may lie in another
    /// node's block, since the address follows the identity.
    Claimed {
        /// The claim's ledger name.
        claim: String,
    },
}

/// The live use of an address. At most one exists per address: the ledger keys bindings by address
/// and creates them with compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    /// The address.
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema::ip"))]
    pub address: IpAddr,
    /// Prefix length of the subnet it came from (what the workload configures).
    #[cfg_attr(
        feature = "schema",
        schemars(schema_with = "crate::schema::prefix_len")
    )]
    pub prefix_len: u8,
    /// The pool it came from.
    pub pool: String,
    /// The node where the workload runs; empty for holders that are not on one node (Services).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Who holds it.
    pub holder: Holder,
    /// How it was chosen.
    #[serde(flatten)]
    pub kind: BindingKind,
    /// When it was made (microseconds); GC guards and grace periods count from here.
    pub since: Timestamp,
}

impl Binding {
    /// The ledger name of a binding: the address itself.
    pub fn name(&self) -> String {
        self.address.to_string()
    }

    /// The attachment holding it, when an attachment does.
    pub fn attachment(&self) -> Option<&Owner> {
        self.holder.attachment()
    }

    /// Whether `owner`'s attachment holds it.
    pub fn held_by_attachment(&self, owner: &Owner) -> bool {
        self.attachment().is_some_and(|o| o.same_attachment(owner))
    }
}

/// Kubernetes wants structural schemas: one object with both variants' fields, exactly one
/// present.
#[cfg(feature = "schema")]
impl schemars::JsonSchema for Holder {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Holder".into()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let attachment = g.subschema_for::<Owner>();
        let services = g.subschema_for::<ServiceHolders>();
        schemars::json_schema!({
            "type": "object",
            "description": "Who holds the address: exactly one of attachment (a container's CNI attachment) or services (Services, several when shared).",
            "minProperties": 1,
            "maxProperties": 1,
            "properties": {
                "attachment": attachment,
                "services": services
            }
        })
    }
}

/// Kubernetes wants one flat object schema for a tagged enum: every variant's fields, declared
/// once, and each variant's own fields required when the tag names it (a `dynamic` binding
/// without a `block` cannot be decoded, so the API server must refuse it).
#[cfg(feature = "schema")]
impl schemars::JsonSchema for BindingKind {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "BindingKind".into()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        use crate::schema::{cidr, when_tag};
        schemars::json_schema!({
            "type": "object",
            "required": ["kind"],
            "properties": {
                "kind": {
                    "type": "string",
                    "enum": ["dynamic", "fixed", "claimed"],
                    "description": "How the address was chosen: dynamic (from the node's block), fixed (asked for), claimed (kept for an identity)."
                },
                "block": cidr(g),
                "claim": {"type": "string", "description": "The claim's ledger name (kind claimed)."}
            },
            "allOf": [
                when_tag("kind", "dynamic", &["block"]),
                when_tag("kind", "claimed", &["claim"])
            ]
        })
    }
}
