//! Where the agent learns what a pod asks for. A trait, so the socket server is testable without a
//! cluster; [`KubePods`] is the real source, fed by a watch of the node's pods.

use async_trait::async_trait;
use berth_allocator::ClaimRequest;
use berth_cni::handler::PodAsk;
use berth_cni::{CniArgs, CniError, IpamConfig};
use berth_k8s::pods::PodCache;
use std::time::Duration;

/// What the pod behind a CNI ADD asks for.
#[async_trait]
pub trait PodSource: Send + Sync {
    /// The pod's request for network `cfg`, from the `K8S_POD_*` arguments. Not a Kubernetes pod
    /// (no such arguments): an empty request.
    async fn ask(&self, args: &CniArgs, cfg: &IpamConfig) -> Result<PodAsk, CniError>;

    /// Why this node must not allocate now (out of service, deleted), if it must not.
    fn fenced(&self) -> Option<String> {
        None
    }

    /// Whether the node came back from being fenced since the last call: the controller may have
    /// released its bindings and reclaimed its blocks meanwhile, so the allocator must re-read
    /// the ledger before the next allocation.
    fn take_reload(&self) -> bool {
        false
    }

    /// Record on the pod behind `args` that its request was refused (a Warning Event with
    /// `reason`), so `kubectl describe pod` says why. Best effort; no pod, no record.
    async fn refused(&self, _args: &CniArgs, _reason: &str, _message: &str) {}
}

/// The Event reason of a request the pool's policy refuses.
pub const POLICY_REFUSED: &str = "BerthPolicyRefused";

/// Pods from the node's watch cache; never an API call on the CNI path (Events aside, which are
/// posted only for a bad annotation).
pub struct KubePods {
    cache: PodCache,
    node: Option<berth_k8s::pods::NodeWatch>,
    reloaded_at: std::sync::atomic::AtomicU64,
    wait: Duration,
}

impl KubePods {
    /// A source over `cache`, waiting up to `wait` for a pod the watch has not delivered yet.
    pub fn new(cache: PodCache, node: Option<berth_k8s::pods::NodeWatch>, wait: Duration) -> Self {
        KubePods {
            cache,
            node,
            reloaded_at: Default::default(),
            wait,
        }
    }

    /// The pod from the API server when the watch has not shown it (or not this UID) within
    /// the wait: the watch is behind, which must not fail the pod.
    async fn read_behind_watch(
        &self,
        ns: &str,
        name: &str,
        args: &CniArgs,
    ) -> Result<std::sync::Arc<k8s_openapi::api::core::v1::Pod>, CniError> {
        let later = |why: String| {
            CniError::new(
                CniError::TRY_AGAIN_LATER,
                format!(
                    "pod {ns}/{name} is not in the berth agent's watch of this node after {:?}, and {why}: try again",
                    self.wait
                ),
            )
        };
        let (got, watch_error) =
            match tokio::time::timeout(FETCH_LIMIT, self.cache.fetch(ns, name)).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(later(format!(
                        "the API server did not answer a read of it within {FETCH_LIMIT:?}"
                    )))
                }
            };
        let behind = watch_error
            .map(|e| format!(" (last watch error: {e})"))
            .unwrap_or_default();
        match got {
            Ok(Some(p)) if args.pod_uid.is_none() || p.metadata.uid == args.pod_uid => {
                tracing::warn!(pod = %format!("{ns}/{name}"), wait = ?self.wait,
                    "pod not in the watch yet; read it from the API server{behind}");
                Ok(p)
            }
            Ok(Some(p)) => Err(later(format!(
                "the API server has it with UID {} where the runtime asks for {}{behind}",
                p.metadata.uid.as_deref().unwrap_or("?"),
                args.pod_uid.as_deref().unwrap_or("?")
            ))),
            Ok(None) => Err(later(format!(
                "the API server has no such pod on this node{behind}"
            ))),
            Err(e) => Err(later(format!(
                "reading it from the API server failed: {e}{behind}"
            ))),
        }
    }
}

/// How long a CNI ADD waits for the API server when the watch has not shown its pod.
const FETCH_LIMIT: Duration = Duration::from_secs(3);

#[async_trait]
impl PodSource for KubePods {
    fn fenced(&self) -> Option<String> {
        self.node.as_ref().and_then(|n| n.fenced())
    }

    fn take_reload(&self) -> bool {
        let Some(n) = &self.node else { return false };
        if n.fenced().is_some() {
            return false;
        }
        let now = n.fencings();
        self.reloaded_at
            .swap(now, std::sync::atomic::Ordering::SeqCst)
            != now
    }

    async fn refused(&self, args: &CniArgs, reason: &str, message: &str) {
        let (Some(ns), Some(name)) = (&args.pod_namespace, &args.pod_name) else {
            return;
        };
        if let Some(pod) = self.cache.get(ns, name, Duration::ZERO).await {
            self.cache.warn(&pod, reason, message).await;
        }
    }

    async fn ask(&self, args: &CniArgs, cfg: &IpamConfig) -> Result<PodAsk, CniError> {
        let (Some(ns), Some(name)) = (&args.pod_namespace, &args.pod_name) else {
            return Ok(PodAsk::default());
        };
        let deadline = tokio::time::Instant::now() + self.wait;
        let pod = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.cache.get(ns, name, left).await {
                // A pod recreated under the same name: wait for the watch to show the new one.
                Some(p) if args.pod_uid.is_some() && p.metadata.uid != args.pod_uid => {
                    if left.is_zero() {
                        break None;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => break other,
            }
        };
        let pod = match pod {
            Some(p) => p,
            None => self.read_behind_watch(ns, name, args).await?,
        };
        match berth_k8s::pods::ask(&pod, &cfg.network, &cfg.pool) {
            Ok(a) => Ok(PodAsk {
                fixed: a.request.fixed,
                claim: a
                    .identity
                    .map(|(identity, size)| ClaimRequest { identity, size }),
                uid: a.uid,
            }),
            Err(e) => {
                let msg = e.to_string();
                self.cache.warn(&pod, "BerthBadAnnotation", &msg).await;
                Err(CniError::config(msg))
            }
        }
    }
}
