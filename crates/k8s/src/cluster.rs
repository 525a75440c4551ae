//! Cluster-wide watches the node agent's routed pod network needs: every node's blocks (Berth's
//! `Block` objects) and every node's InternalIPs (`Node.status.addresses`).
//!
//! Why watches and not lists: a route must follow a block claim or release within a bound the
//! operator can rely on, without every agent listing the cluster in a loop. Each watch publishes
//! a whole, consistent snapshot into a [`tokio::sync::watch`] channel: `None` until the first
//! full list has arrived (so a consumer never mistakes "not listed yet" for "nothing there"),
//! then the complete current set after every change. After a watch error the last snapshot stays
//! published while kube-runtime re-lists with backoff, so routes stay as they were while the API
//! server is away.

use crate::crd::{Block as BlockObject, BlockRecord};
use berth_core::Block;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// Every node's InternalIPs, by node name, in the order `status.addresses` lists them.
///
/// Why a map of lists: a dual-stack node has one InternalIP per family; the first of a family
/// is the next hop for that family's blocks.
pub type NodeIps = BTreeMap<String, Vec<IpAddr>>;

/// A snapshot channel: `None` until the first complete list, then the current set.
pub type Snapshot<T> = watch::Receiver<Option<Arc<T>>>;

/// The InternalIPs a Node reports, in order; addresses that do not parse are skipped.
///
/// Why public: the CLI and tests read node addresses the same way the agent does.
pub fn internal_ips(node: &Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.trim().parse().ok())
        .collect()
}

/// Every node's InternalIPs, listed once.
///
/// Why: `berth routes` is one-shot and needs no watch.
pub async fn list_node_ips(client: Client) -> Result<NodeIps, kube::Error> {
    let api: Api<Node> = Api::all(client);
    let list = api.list(&Default::default()).await?;
    Ok(list
        .items
        .iter()
        .map(|n| (n.metadata.name.clone().unwrap_or_default(), internal_ips(n)))
        .collect())
}

/// The block a Block object records, or why it cannot be read.
///
/// Why: one bad object must not stop the whole watch (a ledger read never fails as a whole
/// because one record is bad); it is logged and left out.
pub fn block_of(obj: &DynamicObject) -> Result<Block, String> {
    let spec = obj
        .data
        .get("spec")
        .cloned()
        .ok_or_else(|| "has no spec".to_string())?;
    let rec: BlockRecord = serde_json::from_value(spec).map_err(|e| e.to_string())?;
    Ok(rec.block)
}

/// Folds watcher events into a map keyed by object name and publishes a full snapshot after
/// each change (and after each completed re-list).
struct Folder<T: Clone> {
    current: BTreeMap<String, T>,
    buffer: Option<BTreeMap<String, T>>,
}

impl<T: Clone> Folder<T> {
    fn new() -> Self {
        Folder {
            current: BTreeMap::new(),
            buffer: None,
        }
    }

    /// Applies one event; returns whether the published snapshot must be refreshed.
    fn apply(&mut self, ev: watcher::Event<(String, Option<T>)>) -> bool {
        match ev {
            watcher::Event::Init => {
                self.buffer = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply((name, v)) => {
                if let (Some(b), Some(v)) = (self.buffer.as_mut(), v) {
                    b.insert(name, v);
                }
                false
            }
            watcher::Event::InitDone => {
                self.current = self.buffer.take().unwrap_or_default();
                true
            }
            watcher::Event::Apply((name, Some(v))) => {
                self.current.insert(name, v);
                true
            }
            // An object that can no longer be read counts as gone.
            watcher::Event::Apply((name, None)) | watcher::Event::Delete((name, _)) => {
                self.current.remove(&name).is_some()
            }
        }
    }
}

fn map_event<K, T>(
    ev: watcher::Event<K>,
    f: impl Fn(&K) -> (String, Option<T>),
) -> watcher::Event<(String, Option<T>)> {
    match ev {
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitDone => watcher::Event::InitDone,
        watcher::Event::InitApply(k) => watcher::Event::InitApply(f(&k)),
        watcher::Event::Apply(k) => watcher::Event::Apply(f(&k)),
        watcher::Event::Delete(k) => watcher::Event::Delete(f(&k)),
    }
}

/// Watches every object of `api`, reads each with `read`, and publishes `view` of all readable
/// ones after each change that alters the view.
///
/// Why one loop for every watch: the agent follows blocks, nodes, pools, bindings, Services and
/// EndpointSlices the same way (a whole snapshot, `None` until the first complete list, the last
/// snapshot kept while the API server is away, one bad object logged and left out); objects of
/// namespaced kinds are keyed `namespace/name`. Runs on the current tokio runtime until the
/// receiver is dropped.
pub fn watch_view<K, T, P>(
    api: Api<K>,
    what: &'static str,
    read: impl Fn(&K) -> Result<T, String> + Send + 'static,
    view: impl Fn(&BTreeMap<String, T>) -> P + Send + 'static,
) -> Snapshot<P>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    T: Clone + Send + 'static,
    P: PartialEq + Send + Sync + 'static,
{
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        let mut folder = Folder::new();
        let mut published: Option<Arc<P>> = None;
        while let Some(ev) = stream.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(error = %e, kind = what, "watch error; re-listing");
                    continue;
                }
            };
            let ev = map_event(ev, |o: &K| {
                let meta = o.meta();
                let name = match &meta.namespace {
                    Some(ns) => format!("{ns}/{}", meta.name.clone().unwrap_or_default()),
                    None => meta.name.clone().unwrap_or_default(),
                };
                match read(o) {
                    Ok(v) => (name, Some(v)),
                    Err(e) => {
                        tracing::warn!(object = %name, kind = what, error = %e, "object cannot be read; left out");
                        (name, None)
                    }
                }
            });
            if folder.apply(ev) {
                let v = view(&folder.current);
                if published.as_deref() == Some(&v) {
                    continue;
                }
                let v = Arc::new(v);
                published = Some(v.clone());
                if tx.send(Some(v)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Watches every Berth Block object and publishes all blocks after each change.
///
/// RBAC: `get, list, watch` on `blocks.berth.dev`.
pub fn watch_blocks(client: Client) -> Snapshot<Vec<Block>> {
    let api: Api<DynamicObject> = Api::all_with(client, &ApiResource::erase::<BlockObject>(&()));
    watch_view(api, "Block", block_of, |m| m.values().cloned().collect())
}

/// A snapshot computed from another: `f` of each published value, published only when it
/// changes, `None` while the source is.
///
/// Why: one watch of an object kind can serve several consumers that need different views
/// of it (the agent's pod routes want the nodes' InternalIPs, its announcer labels too), so
/// the API server sends each change once per agent, not once per consumer.
pub fn derive<T, P>(mut src: Snapshot<T>, f: impl Fn(&T) -> P + Send + 'static) -> Snapshot<P>
where
    T: Send + Sync + 'static,
    P: PartialEq + Send + Sync + 'static,
{
    let first = src.borrow_and_update().as_deref().map(&f).map(Arc::new);
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = src.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
            let v = src.borrow_and_update().as_deref().map(&f);
            let same = tx.borrow().as_deref() == v.as_ref();
            if !same && tx.send(v.map(Arc::new)).is_err() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};

    #[tokio::test]
    async fn a_derived_snapshot_follows_its_source_and_publishes_only_changes() {
        let (tx, rx) = watch::channel::<Option<Arc<BTreeMap<String, u32>>>>(None);
        let mut d = derive(rx, |m| m.values().sum::<u32>());
        assert!(d.borrow().is_none(), "None while the source is");
        tx.send(Some(Arc::new(BTreeMap::from([
            ("a".into(), 1),
            ("b".into(), 2),
        ]))))
        .unwrap();
        d.changed().await.unwrap();
        assert_eq!(d.borrow_and_update().as_deref(), Some(&3));
        // The same sum from other values: not a change.
        tx.send(Some(Arc::new(BTreeMap::from([("a".into(), 3)]))))
            .unwrap();
        tx.send(Some(Arc::new(BTreeMap::from([("a".into(), 4)]))))
            .unwrap();
        d.changed().await.unwrap();
        assert_eq!(d.borrow_and_update().as_deref(), Some(&4));
        drop(tx);
        assert!(d.changed().await.is_err(), "ends with its source");
    }

    #[test]
    fn internal_ips_in_order_other_types_and_garbage_left_out() {
        let n = Node {
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: "node1".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "2001:db8::11".into(),
                    },
                    NodeAddress {
                        type_: "ExternalIP".into(),
                        address: "198.19.0.1".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "not-an-ip".into(),
                    },
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "198.18.0.11".into(),
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            internal_ips(&n),
            vec![
                "2001:db8::11".parse::<IpAddr>().unwrap(),
                "198.18.0.11".parse().unwrap()
            ]
        );
        assert!(internal_ips(&Node::default()).is_empty());
    }

    #[test]
    fn folder_publishes_whole_lists_and_changes() {
        let mut f: Folder<u32> = Folder::new();
        let e = |n: &str, v: Option<u32>| (n.to_string(), v);
        assert!(!f.apply(watcher::Event::Init));
        assert!(!f.apply(watcher::Event::InitApply(e("a", Some(1)))));
        assert!(!f.apply(watcher::Event::InitApply(e("bad", None))));
        assert!(f.current.is_empty(), "nothing before the list is complete");
        assert!(f.apply(watcher::Event::InitDone));
        assert_eq!(f.current, BTreeMap::from([("a".to_string(), 1)]));
        assert!(f.apply(watcher::Event::Apply(e("b", Some(2)))));
        assert!(f.apply(watcher::Event::Delete(e("a", Some(1)))));
        assert!(!f.apply(watcher::Event::Delete(e("zzz", None))));
        // A re-list replaces the whole set: what it does not list is gone.
        f.apply(watcher::Event::Init);
        f.apply(watcher::Event::InitApply(e("c", Some(3))));
        assert_eq!(
            f.current.len(),
            1,
            "old set kept until the re-list completes"
        );
        assert!(f.apply(watcher::Event::InitDone));
        assert_eq!(f.current, BTreeMap::from([("c".to_string(), 3)]));
        // An object that stopped being readable counts as gone.
        assert!(f.apply(watcher::Event::Apply(e("c", None))));
        assert!(f.current.is_empty());
    }

    #[test]
    fn block_objects_decode_or_say_why() {
        let mut o = DynamicObject::new("x", &ApiResource::erase::<BlockObject>(&()));
        assert!(block_of(&o).unwrap_err().contains("no spec"));
        o.data = serde_json::json!({"spec": {"key": "pods/198.18.64.0/28", "pool": "pods",
            "cidr": "198.18.64.0/28", "node": "node1"}});
        let b = block_of(&o).unwrap();
        assert_eq!(b.node, "node1");
        assert_eq!(b.cidr.to_string(), "198.18.64.0/28");
        o.data =
            serde_json::json!({"spec": {"key": "k", "pool": "pods", "cidr": "nope", "node": "n"}});
        assert!(block_of(&o).is_err());
    }
}
