//! The agent's view of its own node's pods: a watch filtered to `spec.nodeName`, kept in memory so
//! the CNI path never calls the API server, plus what a pod asks for (annotations, identity).

use crate::annotations::{self, AnnotationError, PodRequest};
use berth_core::{Identity, PoolSpec};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An in-memory, watch-fed cache of the pods scheduled to one node.
#[derive(Clone)]
pub struct PodCache {
    store: Store<Pod>,
    client: Client,
    node: String,
    last_error: Arc<std::sync::Mutex<Option<String>>>,
}

impl PodCache {
    /// Start watching `node`'s pods; the watch runs on the current runtime until the process ends
    /// and re-lists after errors with backoff.
    pub fn start(client: Client, node: &str) -> Self {
        let api: Api<Pod> = Api::all(client.clone());
        let (store, writer) = reflector::store();
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let stream = watcher(api, cfg)
            .default_backoff()
            .reflect(writer)
            .applied_objects();
        let last_error = Arc::new(std::sync::Mutex::new(None));
        let errors = Arc::clone(&last_error);
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                if let Err(e) = ev {
                    tracing::warn!(error = %e, "pod watch error; retrying");
                    *errors.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                }
            }
        });
        PodCache {
            store,
            client,
            node: node.to_string(),
            last_error,
        }
    }

    /// A cache whose watch never runs: it stays empty, so every lookup goes to [`Self::fetch`].
    ///
    /// Why: a watch that has fallen behind cannot be produced on demand against a real API
    /// server; this is that watch at its worst, for tests of the path that must not fail then.
    pub fn detached(client: Client, node: &str) -> Self {
        let (store, _writer) = reflector::store();
        PodCache {
            store,
            client,
            node: node.to_string(),
            last_error: Arc::new(std::sync::Mutex::new(None)),
        }
    }

    /// The pod read from the API server, for a CNI ADD whose pod the watch has not delivered
    /// within its wait.
    ///
    /// Why: a watch that is behind (an API server under load, a re-list after an error) must
    /// not fail pod creation on its own; one read on that rare path costs less than a sandbox
    /// the kubelet retries every ten seconds. The most recent watch error, if any, is returned
    /// with the result so the caller can say why the watch was behind.
    pub async fn fetch(
        &self,
        namespace: &str,
        name: &str,
    ) -> (Result<Option<Arc<Pod>>, kube::Error>, Option<String>) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let got = api.get_opt(name).await.map(|p| {
            p.filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&self.node))
                .map(Arc::new)
        });
        let err = self
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (got, err)
    }

    /// The pod, waiting up to `wait` for the watch to deliver it (a fresh pod's CNI ADD can
    /// arrive before its watch event).
    pub async fn get(&self, namespace: &str, name: &str, wait: Duration) -> Option<Arc<Pod>> {
        let key = ObjectRef::new(name).within(namespace);
        let deadline = Instant::now() + wait;
        loop {
            if let Some(p) = self.store.get(&key) {
                return Some(p);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Record a Warning Event on the pod, so `kubectl describe pod` shows why its network failed.
    /// Best effort: failing to post an Event never fails the CNI call.
    pub async fn warn(&self, pod: &Pod, reason: &str, message: &str) {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let ev = Event {
            metadata: kube::api::ObjectMeta {
                generate_name: Some(format!(
                    "{}.",
                    pod.metadata.name.clone().unwrap_or_default()
                )),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                namespace: Some(ns.clone()),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            },
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            type_: Some("Warning".into()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some("berth-agent".into()),
                host: Some(self.node.clone()),
            }),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::warn!(error = %e, "could not record an Event on the pod");
        }
    }
}

/// What a pod asks of one network: annotations, and the identity its addresses are kept for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAsk {
    /// Parsed annotations.
    pub request: PodRequest,
    /// Keep the addresses for this identity, with the number per family.
    pub identity: Option<(Identity, u32)>,
    /// The pod's UID.
    pub uid: Option<String>,
}

/// Read what `pod` asks of network `network` with pool `pool`.
///
/// A StatefulSet's pod keeps its addresses per ordinal unless `berth.dev/sticky: "false"`; a pod
/// of a Deployment with `berth.dev/sticky-set: N` takes addresses from the Deployment's set.
pub fn ask(pod: &Pod, network: &str, pool: &PoolSpec) -> Result<PodAsk, AnnotationError> {
    let empty = Default::default();
    let anns = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let request = annotations::parse(anns, network, pool)?;
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let name = pod.metadata.name.clone().unwrap_or_default();
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    let mut identity = None;
    if request.fixed.is_empty() {
        match (owner, request.sticky_set) {
            (Some(o), Some(n)) if o.kind == "ReplicaSet" => {
                // A Deployment's ReplicaSet is named <deployment>-<pod-template-hash>.
                let hash = pod
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("pod-template-hash"))
                    .cloned()
                    .unwrap_or_default();
                let deployment = o
                    .name
                    .strip_suffix(&format!("-{hash}"))
                    .unwrap_or(&o.name)
                    .to_string();
                identity = Some((
                    Identity::StickySet {
                        namespace: ns.clone(),
                        name: deployment,
                    },
                    n,
                ));
            }
            (_, Some(n)) => {
                return Err(AnnotationError {
                    annotation: annotations::STICKY_SET.into(),
                    value: n.to_string(),
                    problem:
                        "is only for pods of a Deployment: put it on the Deployment's pod template"
                            .into(),
                })
            }
            (Some(o), None) if o.kind == "StatefulSet" && request.sticky => {
                let ordinal = name
                    .strip_prefix(&format!("{}-", o.name))
                    .and_then(|s| s.parse::<u32>().ok());
                if let Some(ordinal) = ordinal {
                    identity = Some((
                        Identity::StatefulSet {
                            namespace: ns.clone(),
                            name: o.name.clone(),
                            ordinal,
                        },
                        1,
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(PodAsk {
        request,
        identity,
        uid: pod.metadata.uid.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::SubnetSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn pool() -> PoolSpec {
        PoolSpec {
            name: "p".into(),
            use_: Default::default(),
            subnets: vec![SubnetSpec::new("198.18.0.0/24".parse().unwrap())],
            policy: Default::default(),
            service: Default::default(),
            announcement: Default::default(),
        }
    }

    fn pod(
        name: &str,
        owner: Option<(&str, &str)>,
        anns: &[(&str, &str)],
        hash: Option<&str>,
    ) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("ns".into());
        p.metadata.uid = Some("uid-1".into());
        p.metadata.annotations = Some(
            anns.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        if let Some(h) = hash {
            p.metadata.labels = Some([("pod-template-hash".to_string(), h.to_string())].into());
        }
        if let Some((kind, oname)) = owner {
            p.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: kind.into(),
                name: oname.into(),
                uid: "o".into(),
                controller: Some(true),
                ..Default::default()
            }]);
        }
        p
    }

    #[test]
    fn identities_follow_the_controller() {
        let a = ask(
            &pod("web-3", Some(("StatefulSet", "web")), &[], None),
            "n",
            &pool(),
        )
        .unwrap();
        assert_eq!(
            a.identity,
            Some((
                Identity::StatefulSet {
                    namespace: "ns".into(),
                    name: "web".into(),
                    ordinal: 3
                },
                1
            ))
        );
        let a = ask(
            &pod(
                "web-3",
                Some(("StatefulSet", "web")),
                &[(annotations::STICKY, "false")],
                None,
            ),
            "n",
            &pool(),
        )
        .unwrap();
        assert_eq!(a.identity, None);
        let a = ask(
            &pod(
                "front-7d9f-x2",
                Some(("ReplicaSet", "front-7d9f")),
                &[(annotations::STICKY_SET, "3")],
                Some("7d9f"),
            ),
            "n",
            &pool(),
        )
        .unwrap();
        assert_eq!(
            a.identity,
            Some((
                Identity::StickySet {
                    namespace: "ns".into(),
                    name: "front".into()
                },
                3
            ))
        );
        let a = ask(&pod("plain", None, &[], None), "n", &pool()).unwrap();
        assert_eq!(a.identity, None);
        let a = ask(
            &pod(
                "web-0",
                Some(("StatefulSet", "web")),
                &[(annotations::IPS, "198.18.0.9")],
                None,
            ),
            "n",
            &pool(),
        )
        .unwrap();
        assert_eq!(a.identity, None, "a fixed address needs no claim");
        let e = ask(
            &pod("lone", None, &[(annotations::STICKY_SET, "2")], None),
            "n",
            &pool(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("Deployment"), "{e}");
    }
}

/// The agent's view of its own Node: whether the cluster has taken the node out of service
/// (`node.kubernetes.io/out-of-service` taint) or deleted it. While it has, the controller may
/// release the node's bindings and reclaim its blocks, so the agent must not allocate.
#[derive(Clone)]
pub struct NodeWatch {
    store: Store<k8s_openapi::api::core::v1::Node>,
    node: String,
    seen: Arc<std::sync::atomic::AtomicBool>,
    fencings: Arc<std::sync::atomic::AtomicU64>,
}

fn out_of_service(n: &k8s_openapi::api::core::v1::Node) -> bool {
    n.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|t| t.iter().any(|t| t.key == OUT_OF_SERVICE))
        .unwrap_or(false)
}

/// The taint that fences a node (Kubernetes' non-graceful node shutdown).
pub const OUT_OF_SERVICE: &str = "node.kubernetes.io/out-of-service";

impl NodeWatch {
    /// Start watching the Node object named `node`.
    pub fn start(client: Client, node: &str) -> Self {
        let api: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
        let (store, writer) = reflector::store();
        let cfg = watcher::Config::default().fields(&format!("metadata.name={node}"));
        let stream = watcher(api, cfg).default_backoff().reflect(writer);
        let fencings = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (f, sn) = (Arc::clone(&fencings), Arc::clone(&seen));
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(watcher::Event::Delete(_)) => {
                        f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => {
                        sn.store(true, std::sync::atomic::Ordering::SeqCst);
                        if out_of_service(&n) {
                            f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "node watch error; retrying"),
                }
            }
        });
        NodeWatch {
            store,
            node: node.to_string(),
            seen,
            fencings,
        }
    }

    /// How many times the watch has seen the node fenced or deleted. When it changes, the
    /// controller may have released the node's bindings and blocks: re-read the ledger.
    pub fn fencings(&self) -> u64 {
        self.fencings.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Why the node must not allocate now, if it must not. Before the first list arrives nothing
    /// is known, and allocation goes on (the controller never fences a node it has not seen).
    pub fn fenced(&self) -> Option<String> {
        let Some(n) = self.store.get(&ObjectRef::new(&self.node)) else {
            // Not (yet) in the watch: either the first list has not arrived, or the node was
            // deleted. Only a node seen before and now gone counts as deleted.
            return self
                .seen
                .load(std::sync::atomic::Ordering::SeqCst)
                .then(|| format!("node {} was deleted from the cluster", self.node));
        };
        out_of_service(&n).then(|| format!("node {} has the {OUT_OF_SERVICE} taint", self.node))
    }
}
