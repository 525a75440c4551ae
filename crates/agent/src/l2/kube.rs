//! The announcer's notices on Kubernetes: Events on the Service, and the `berth.dev/Announced`
//! condition in its `status.conditions`, which names the node announcing each address.
//!
//! Why a condition and not an annotation: the agent may then patch only `services/status`,
//! never a Service's spec or metadata (a DaemonSet on every node must not be able to redirect
//! a Service); `kubectl get svc -o yaml` and `berth announcements` read it.

use super::Notices;
use async_trait::async_trait;
use berth_k8s::announce::{ServiceFacts, ServiceKey};
use berth_k8s::cluster::Snapshot;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// The condition type.
pub const CONDITION: &str = "berth.dev/Announced";

/// How long an Event or a condition write is retried while the API server is out of reach.
const NOTICE_RETRY: Duration = Duration::from_secs(30);

/// Events and conditions through the API server.
pub struct KubeNotices {
    client: Client,
    services: Snapshot<BTreeMap<ServiceKey, ServiceFacts>>,
    node: String,
}

impl KubeNotices {
    /// Notices posted as `node`'s agent; UIDs come from the Services watch.
    pub fn new(
        client: Client,
        services: Snapshot<BTreeMap<ServiceKey, ServiceFacts>>,
        node: &str,
    ) -> KubeNotices {
        KubeNotices {
            client,
            services,
            node: node.to_string(),
        }
    }

    fn uid(&self, svc: &ServiceKey) -> Option<String> {
        self.services
            .borrow()
            .as_ref()
            .and_then(|m| m.get(svc).map(|f| f.uid.clone()))
    }

    /// Rewrites this address's part of the condition (read, change, write with the read
    /// `resourceVersion`; retried on a conflict with another node's write).
    async fn set_entry(&self, svc: &ServiceKey, addr: IpAddr, entry: Option<String>, bad: bool) {
        let api: Api<Service> = Api::namespaced(self.client.clone(), &svc.0);
        let t0 = tokio::time::Instant::now();
        for _ in 0..30 {
            let cur = match tokio::time::timeout(Duration::from_secs(5), api.get(&svc.1)).await {
                Ok(Ok(s)) => s,
                Ok(Err(kube::Error::Api(e))) if e.code == 404 => return,
                other => {
                    let err = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".into(),
                    };
                    if t0.elapsed() > NOTICE_RETRY {
                        tracing::warn!(service = %format!("{}/{}", svc.0, svc.1), error = %err, "cannot read the Service for its Announced condition; given up");
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let rv = cur.metadata.resource_version.clone().unwrap_or_default();
            let conds: Vec<Value> = cur
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .map(|c| {
                    c.iter()
                        .filter_map(|x| serde_json::to_value(x).ok())
                        .collect()
                })
                .unwrap_or_default();
            let old = conds
                .iter()
                .find(|c| c["type"] == CONDITION)
                .and_then(|c| c["message"].as_str())
                .unwrap_or("");
            let mut entries = parse_entries(old);
            entries.retain(|(a, _)| *a != addr);
            if let Some(e) = &entry {
                entries.push((addr, e.clone()));
            }
            entries.sort_by_key(|(a, _)| *a);
            let message = entries
                .iter()
                .map(|(_, e)| e.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            let any_bad = bad || entries.iter().any(|(_, e)| e.contains(" conflict: "));
            let mut new: Vec<Value> = conds
                .into_iter()
                .filter(|c| c["type"] != CONDITION)
                .collect();
            if !entries.is_empty() {
                new.push(json!({
                    "type": CONDITION,
                    "status": if any_bad { "False" } else { "True" },
                    "reason": if any_bad { "AddressConflict" } else { "Announcing" },
                    "message": message,
                    "lastTransitionTime": now(),
                }));
            }
            let patch = json!({
                "metadata": {"resourceVersion": rv},
                "status": {"conditions": new},
            });
            match api
                .patch_status(&svc.1, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return,
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => {
                    tracing::warn!(service = %format!("{}/{}", svc.0, svc.1), error = %e, "cannot write the Service's Announced condition");
                    return;
                }
            }
        }
    }
}

fn now() -> String {
    berth_k8s::condition_now()
}

/// The entries of an `Announced` message (`ADDR from NODE since TIME; …`), by address.
pub fn parse_entries(message: &str) -> Vec<(IpAddr, String)> {
    message
        .split("; ")
        .filter_map(|e| {
            let addr = e.split_whitespace().next()?.parse().ok()?;
            Some((addr, e.to_string()))
        })
        .collect()
}

/// One announcement read back from a Service's condition, for `berth announcements`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// The address.
    pub address: IpAddr,
    /// The node announcing it.
    pub node: String,
    /// Since when (RFC 3339).
    pub since: String,
    /// A conflict reported instead, if any.
    pub conflict: Option<String>,
}

/// Reads an `Announced` message back.
pub fn read_entries(message: &str) -> Vec<Announced> {
    parse_entries(message)
        .into_iter()
        .map(|(address, e)| {
            let words: Vec<&str> = e.split_whitespace().collect();
            let at = |w: &str| {
                words
                    .iter()
                    .position(|x| *x == w)
                    .and_then(|i| words.get(i + 1))
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            };
            let conflict = e.split_once(" conflict: ").map(|(_, c)| c.to_string());
            Announced {
                address,
                node: at("from"),
                since: at("since"),
                conflict,
            }
        })
        .collect()
}

#[async_trait]
impl Notices for KubeNotices {
    async fn notice(
        &self,
        svc: &ServiceKey,
        uid: Option<&str>,
        warning: bool,
        reason: &str,
        message: &str,
    ) {
        let uid = uid.map(str::to_string).or_else(|| self.uid(svc));
        let r = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Service".into()),
            namespace: Some(svc.0.clone()),
            name: Some(svc.1.clone()),
            uid,
            ..Default::default()
        };
        let component = format!("berth-agent/{}", self.node);
        // The API server may be out of reach exactly when there is most to say (this node's
        // link went down): retry for a while, so the Event arrives once it is back.
        let mut wait = Duration::from_millis(500);
        let t0 = tokio::time::Instant::now();
        loop {
            let post = berth_k8s::events::post(
                &self.client,
                r.clone(),
                warning,
                reason,
                message,
                &component,
            );
            let err = match tokio::time::timeout(Duration::from_secs(5), post).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            };
            if t0.elapsed() > NOTICE_RETRY {
                tracing::warn!(error = %err, reason, "could not post an Event; given up");
                return;
            }
            tracing::debug!(error = %err, reason, "could not post an Event; retrying");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    async fn announced(&self, svc: &ServiceKey, addr: IpAddr, node: Option<&str>) {
        let entry = node.map(|n| format!("{addr} from {n} since {}", now()));
        self.set_entry(svc, addr, entry, false).await;
    }

    async fn conflict(&self, svc: &ServiceKey, addr: IpAddr, message: &str) {
        let entry = format!(
            "{addr} from {} since {} conflict: {message}",
            self.node,
            now()
        );
        self.set_entry(svc, addr, Some(entry), true).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let m = "198.18.0.200 from lab-node2 since 2026-12-02T22:00:00Z; 2001:db8::200 from lab-node1 since 2026-12-02T22:00:01Z";
        let e = read_entries(m);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].node, "lab-node2");
        assert_eq!(e[1].address, "2001:db8::200".parse::<IpAddr>().unwrap());
        assert_eq!(e[1].since, "2026-12-02T22:00:01Z");
        assert!(e.iter().all(|x| x.conflict.is_none()));
        let c = read_entries(
            "198.18.0.9 from n1 since T conflict: 198.18.0.9 is answered by 02:00:00:00:00:01",
        );
        assert!(c[0]
            .conflict
            .as_deref()
            .unwrap()
            .contains("02:00:00:00:00:01"));
    }
}
