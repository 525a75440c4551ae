//! Claims: durable "these addresses belong to this identity", independent of any running instance,
//! so an address outlives the pod that used it and follows the identity to another node.

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

/// Who an address is kept for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Identity {
    /// One ordinal of a StatefulSet: `web-2` keeps its address wherever it is recreated.
    StatefulSet {
        /// Namespace.
        namespace: String,
        /// StatefulSet name.
        name: String,
        /// Ordinal.
        ordinal: u32,
    },
    /// A Deployment's sticky set of addresses ("random but sticky"): its pods take free members.
    StickySet {
        /// Namespace.
        namespace: String,
        /// Deployment name.
        name: String,
    },
    /// A Service's LoadBalancer or external address (not shared).
    Service {
        /// Namespace.
        namespace: String,
        /// Service name.
        name: String,
    },
    /// An address Services of one namespace share under one sharing key.
    SharedService {
        /// Namespace.
        namespace: String,
        /// The sharing key.
        key: String,
    },
    /// An explicit key chosen by an operator.
    Key {
        /// The key.
        key: String,
    },
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::StatefulSet {
                namespace,
                name,
                ordinal,
            } => write!(f, "statefulset/{namespace}/{name}/{ordinal}"),
            Identity::StickySet { namespace, name } => write!(f, "stickyset/{namespace}/{name}"),
            Identity::Service { namespace, name } => write!(f, "service/{namespace}/{name}"),
            Identity::SharedService { namespace, key } => write!(f, "shared/{namespace}/{key}"),
            Identity::Key { key } => write!(f, "key/{key}"),
        }
    }
}

/// A claim as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    /// Who the addresses are kept for.
    pub identity: Identity,
    /// The pool they come from.
    pub pool: String,
    /// The addresses kept (one per family, or a sticky set's members).
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema::ip_list"))]
    pub addresses: Vec<IpAddr>,
    /// When the claim was made (microseconds); grace periods count from here.
    pub since: Timestamp,
}

impl Claim {
    /// The claim's ledger name: its identity, pool-qualified.
    pub fn name(&self) -> String {
        format!("{}/{}", self.pool, self.identity)
    }
}

/// Kubernetes wants one flat object schema for a tagged enum: every variant's fields declared once,
/// and each variant's fields required when `kind` names it.
#[cfg(feature = "schema")]
impl schemars::JsonSchema for Identity {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Identity".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "required": ["kind"],
            "properties": {
                "kind": {"type": "string", "enum": ["statefulSet", "stickySet", "service", "sharedService", "key"]},
                "namespace": {"type": "string"},
                "name": {"type": "string"},
                "ordinal": {"type": "integer", "format": "uint32", "minimum": 0, "maximum": u32::MAX},
                "key": {"type": "string"}
            },
            "allOf": [
                crate::schema::when_tag("kind", "statefulSet", &["namespace", "name", "ordinal"]),
                crate::schema::when_tag("kind", "stickySet", &["namespace", "name"]),
                crate::schema::when_tag("kind", "service", &["namespace", "name"]),
                crate::schema::when_tag("kind", "sharedService", &["namespace", "key"]),
                crate::schema::when_tag("kind", "key", &["key"])
            ]
        })
    }
}
