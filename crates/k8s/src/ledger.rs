//! The Kubernetes ledger backend: each record is one object of Berth's CRDs, and every write is a
//! compare-and-swap on the object's `resourceVersion` (create fails if the object exists; replace
//! and delete carry the version read). Allocations touch only their own binding object, so nodes
//! never queue behind one shared lock object.

use crate::crd::{AddressBinding, Block, Claim, Pool};
use crate::names::object_name_of;
use async_trait::async_trait;
use berth_ledger::{Entry, Kind, Ledger, LedgerError, Result, Version};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, PostParams,
    Preconditions,
};
use kube::Client;
use serde_json::{Map, Value};

/// How long a ledger request waits for the API server's answer.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The Kubernetes ledger.
pub struct KubeLedger {
    client: Client,
    server: String,
}

fn resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Pool => ApiResource::erase::<Pool>(&()),
        Kind::Block => ApiResource::erase::<Block>(&()),
        Kind::Claim => ApiResource::erase::<Claim>(&()),
        Kind::Binding => ApiResource::erase::<AddressBinding>(&()),
    }
}

/// The HTTP status of an API error, if it was one.
fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

impl KubeLedger {
    /// A ledger on the cluster `client` talks to.
    pub fn new(client: Client) -> Self {
        KubeLedger {
            client,
            server: "kubernetes".to_string(),
        }
    }

    /// Connect with a kubeconfig file, or the in-cluster / default configuration when `None`.
    ///
    /// The client does not retry by itself: kube-rs 5 retries 429/503/504 answers by default (up
    /// to 15 times, exponential backoff from 5 ms), which held CNI DELs for 13 s against a
    /// restarting kube-apiserver (503 until it is ready) and could outlast `berth-ipam`'s wait for
    /// the agent, so that a write lands after the runtime was told the ADD failed. The ledger's
    /// callers already treat "unavailable" as transient: the CNI call fails at once with "try
    /// again" (code 11) and the kubelet retries.
    ///
    /// Every request has a deadline ([`REQUEST_TIMEOUT`] to wait for the answer, counted from
    /// when it was sent): an API server that accepts connections but does not answer is
    /// "unavailable" after it, never a hung CNI call. The client serves ledger requests only, no
    /// watches.
    pub async fn connect(kubeconfig: Option<&std::path::Path>) -> Result<Self> {
        let mut config = crate::config(kubeconfig).await?;
        config.default_retry = false;
        config.read_timeout = Some(REQUEST_TIMEOUT);
        config.reset_reader_on_write = true;
        let (client, server) = crate::client_from(config)?;
        Ok(KubeLedger {
            client,
            server: format!("kubernetes:{server}"),
        })
    }

    /// The client, for events that share the connection (not for watches: it has a read
    /// deadline).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &resource(kind))
    }

    fn err(&self, kind: Kind, name: &str, e: kube::Error) -> LedgerError {
        // A resourceVersion the server never issued: the version named does not exist, which is
        // a lost compare-and-swap like any other.
        if let kube::Error::Api(s) = &e {
            if matches!(s.code, 400 | 422) && s.message.contains("resourceVersion") {
                return LedgerError::Conflict {
                    kind,
                    name: name.to_string(),
                };
            }
        }
        match status_code(&e) {
            Some(409) => LedgerError::Conflict {
                kind,
                name: name.to_string(),
            },
            Some(404) => LedgerError::Conflict {
                kind,
                name: name.to_string(),
            },
            Some(422) | Some(400) => LedgerError::Corrupt {
                kind,
                name: name.to_string(),
                reason: e.to_string(),
            },
            // Transient, not a configuration error: a starting kube-apiserver refuses every
            // request until its RBAC authorizer has read the roles, so this must be retried
            // (CNI code 11); a missing rule keeps failing, with this message.
            Some(403) | Some(401) => LedgerError::Unavailable {
                backend: self.server.clone(),
                reason: format!(
                    "the API server refused access to {kind} {name:?} ({e}): grant the agent's service account Berth's RBAC (deploy/base/berth.yaml)"
                ),
            },
            _ => LedgerError::Unavailable {
                backend: self.server.clone(),
                reason: e.to_string(),
            },
        }
    }

    fn object(
        &self,
        kind: Kind,
        name: &str,
        value: Vec<u8>,
        version: Option<&Version>,
    ) -> Result<DynamicObject> {
        let mut spec: Map<String, Value> =
            serde_json::from_slice(&value).map_err(|e| LedgerError::Corrupt {
                kind,
                name: name.to_string(),
                reason: format!("records stored in Kubernetes must be JSON objects: {e}"),
            })?;
        let object = object_name_of(kind, name);
        if object != name {
            spec.insert("key".into(), Value::String(name.to_string()));
        }
        if kind == Kind::Pool {
            // The object's name is the pool's name.
            spec.remove("name");
        }
        let ar = resource(kind);
        Ok(DynamicObject {
            types: Some(kube::core::TypeMeta {
                api_version: ar.api_version.clone(),
                kind: ar.kind.clone(),
            }),
            metadata: ObjectMeta {
                name: Some(object),
                resource_version: version.map(|v| v.0.clone()),
                ..Default::default()
            },
            data: serde_json::json!({ "spec": spec }),
        })
    }
}

/// Whether `v` can be a version this server issued. resourceVersions are opaque, but every
/// apiserver storing in etcd3 issues decimal revisions, and 1.20 answers a malformed one with a
/// 500; such a version can never match, so naming it is a lost compare-and-swap.
fn plausible(v: &Version) -> bool {
    !v.0.is_empty() && v.0.bytes().all(|b| b.is_ascii_digit())
}

/// Back from an object to the ledger's record: the spec without `key`.
///
/// An object without a spec or without `spec.key` (which the CRD schema requires, so only an
/// object stored before it did, or under a relaxed schema) is returned under its object name,
/// with what it has as the value: the typed layer then reports it as a bad record (it does not
/// decode, or it names another record than its own), and the rest of a list is unaffected.
fn entry(kind: Kind, obj: DynamicObject) -> Entry {
    let version = Version(obj.metadata.resource_version.clone().unwrap_or_default());
    let object = obj.metadata.name.unwrap_or_default();
    let mut spec = match obj.data.get("spec") {
        Some(Value::Object(m)) => m.clone(),
        _ => {
            return Entry {
                name: object,
                value: b"{}".to_vec(),
                version,
            }
        }
    };
    let name = match spec.remove("key") {
        Some(Value::String(k)) => k,
        _ => object,
    };
    if kind == Kind::Pool && !spec.contains_key("name") {
        // A Pool's name is its object's (the spec a user writes has none).
        spec.insert("name".into(), Value::String(name.clone()));
    }
    Entry {
        name,
        // Serializing a JSON map cannot fail.
        value: serde_json::to_vec(&spec).unwrap_or_default(),
        version,
    }
}

/// The pool a Pool object holds (its object name is the pool's name unless `spec.key` says
/// otherwise), or why it cannot be read.
///
/// Why public: the Service controller watches Pool objects (a pool a user applies must take
/// effect at once, not at the next list), and reads them exactly as the ledger does.
pub fn pool_of(obj: &DynamicObject) -> std::result::Result<berth_core::PoolSpec, String> {
    let e = entry(Kind::Pool, obj.clone());
    serde_json::from_slice(&e.value).map_err(|err| format!("spec: {err}"))
}

/// The binding an AddressBinding object holds, or why it cannot be read.
///
/// Why public: the L2 announcer watches bindings (an address must be announced the moment the
/// controller binds it, not at the next list), and reads them exactly as the ledger does.
pub fn binding_of(obj: &DynamicObject) -> std::result::Result<berth_core::Binding, String> {
    let e = entry(Kind::Binding, obj.clone());
    serde_json::from_slice(&e.value).map_err(|err| format!("spec: {err}"))
}

#[async_trait]
impl Ledger for KubeLedger {
    async fn get(&self, kind: Kind, name: &str) -> Result<Option<Entry>> {
        match self.api(kind).get_opt(&object_name_of(kind, name)).await {
            Ok(Some(o)) => Ok(Some(entry(kind, o))),
            Ok(None) => Ok(None),
            Err(e) => Err(LedgerError::Unavailable {
                backend: self.server.clone(),
                reason: e.to_string(),
            }),
        }
    }

    async fn list(&self, kind: Kind) -> Result<Vec<Entry>> {
        let api = self.api(kind);
        let mut out = vec![];
        let mut lp = ListParams::default().limit(500);
        loop {
            let page = api.list(&lp).await.map_err(|e| LedgerError::Unavailable {
                backend: self.server.clone(),
                reason: e.to_string(),
            })?;
            let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
            out.extend(page.items.into_iter().map(|o| entry(kind, o)));
            match next {
                Some(token) => lp = lp.continue_token(&token),
                None => break,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn create(&self, kind: Kind, name: &str, value: Vec<u8>) -> Result<Version> {
        let obj = self.object(kind, name, value, None)?;
        match self.api(kind).create(&PostParams::default(), &obj).await {
            Ok(o) => Ok(Version(o.metadata.resource_version.unwrap_or_default())),
            Err(e) if status_code(&e) == Some(409) => Err(LedgerError::Exists {
                kind,
                name: name.to_string(),
            }),
            Err(e) => Err(self.err(kind, name, e)),
        }
    }

    async fn update(
        &self,
        kind: Kind,
        name: &str,
        value: Vec<u8>,
        expected: &Version,
    ) -> Result<Version> {
        if !plausible(expected) {
            return Err(LedgerError::Conflict {
                kind,
                name: name.to_string(),
            });
        }
        let obj = self.object(kind, name, value, Some(expected))?;
        match self
            .api(kind)
            .replace(&object_name_of(kind, name), &PostParams::default(), &obj)
            .await
        {
            Ok(o) => Ok(Version(o.metadata.resource_version.unwrap_or_default())),
            Err(e) => Err(self.err(kind, name, e)),
        }
    }

    async fn delete(&self, kind: Kind, name: &str, expected: &Version) -> Result<()> {
        if !plausible(expected) {
            return Err(LedgerError::Conflict {
                kind,
                name: name.to_string(),
            });
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                resource_version: Some(expected.0.clone()),
                uid: None,
            }),
            ..Default::default()
        };
        match self
            .api(kind)
            .delete(&object_name_of(kind, name), &dp)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(self.err(kind, name, e)),
        }
    }

    fn describe(&self) -> String {
        self.server.clone()
    }

    fn backend(&self) -> berth_ledger::Backend {
        berth_ledger::Backend::Kubernetes
    }
}
