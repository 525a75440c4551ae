//! A pool's policy: which namespaces' pods may ask for fixed addresses and for sticky sets, and
//! how large a sticky set may be. Pure.
//!
//! Why: a fixed address (`berth.dev/ips`, `kube-ipam.ip`, the `ips` capability) takes an address
//! from the reserved range, and a Deployment's sticky set keeps up to N addresses out of the
//! pool while no pod uses them. Without a policy anyone allowed to create a pod, in any
//! namespace, could take an address meant for another team's workload or drain the pool. The
//! runtime without Kubernetes (no pod namespace) is trusted as before: the policy is about pods.

use crate::claim::Identity;
use serde::{Deserialize, Serialize};

/// The namespace entry that matches every namespace.
pub const ANY_NAMESPACE: &str = "*";

/// Default largest sticky set a Deployment may ask for.
///
/// Why 16: a sticky set is for a Deployment that needs "random but stable" addresses (for an
/// allow-list outside the cluster), so a few per replica; 16 covers that, and a namespace that
/// needs more is a deliberate operator decision (`maxStickySet`).
pub const DEFAULT_MAX_STICKY_SET: u32 = 16;

/// Largest sticky set any policy may allow. Why: a claim record lists its addresses, and a
/// bigger set is a different feature (a pool of its own).
pub const MAX_STICKY_SET_LIMIT: u32 = 1024;

/// Who may ask a pool for what. Configured in the CNI configuration's `ipam.policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct PoolPolicy {
    /// Namespaces whose pods may ask for fixed addresses; `"*"` is every namespace. Default:
    /// none, so fixed addresses are opt-in per namespace.
    #[serde(default)]
    pub fixed_namespaces: Vec<String>,
    /// Namespaces whose Deployments may ask for a sticky set (`berth.dev/sticky-set`); `"*"` is
    /// every namespace. Default: none.
    #[serde(default)]
    pub sticky_namespaces: Vec<String>,
    /// Namespaces whose StatefulSet pods keep their addresses per ordinal. Default: every
    /// namespace (`["*"]`): it costs one address per ordinal the StatefulSet already has.
    #[serde(default = "any_namespace")]
    pub stateful_set_namespaces: Vec<String>,
    /// Largest sticky set a Deployment may ask for (1 to 1024, default 16).
    #[serde(default = "default_max")]
    pub max_sticky_set: u32,
}

fn any_namespace() -> Vec<String> {
    vec![ANY_NAMESPACE.to_string()]
}

fn default_max() -> u32 {
    DEFAULT_MAX_STICKY_SET
}

impl Default for PoolPolicy {
    fn default() -> Self {
        PoolPolicy {
            fixed_namespaces: vec![],
            sticky_namespaces: vec![],
            stateful_set_namespaces: any_namespace(),
            max_sticky_set: DEFAULT_MAX_STICKY_SET,
        }
    }
}

/// A request the policy refuses. Each names the pool, the policy key and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A pod of a namespace not in `fixedNamespaces` asked for a fixed address.
    #[error("pool {pool:?} policy.fixedNamespaces does not list namespace {namespace:?}, so its pods may not ask for fixed addresses ({asked}): add the namespace to ipam.policy.fixedNamespaces or remove the request")]
    Fixed {
        /// The pool.
        pool: String,
        /// The pod's namespace.
        namespace: String,
        /// The addresses asked for.
        asked: String,
    },
    /// A Deployment of a namespace not in `stickyNamespaces` asked for a sticky set.
    #[error("pool {pool:?} policy.stickyNamespaces does not list namespace {namespace:?}, so its Deployments may not ask for sticky sets: add the namespace to ipam.policy.stickyNamespaces or remove the berth.dev/sticky-set annotation")]
    StickySet {
        /// The pool.
        pool: String,
        /// The Deployment's namespace.
        namespace: String,
    },
    /// A sticky set larger than `maxStickySet`.
    #[error("pool {pool:?} policy.maxStickySet is {max}, but a Deployment in namespace {namespace:?} asks for a sticky set of {size}: ask for at most {max} or raise ipam.policy.maxStickySet")]
    StickySetSize {
        /// The pool.
        pool: String,
        /// The Deployment's namespace.
        namespace: String,
        /// The size asked for.
        size: u32,
        /// The policy's maximum.
        max: u32,
    },
}

/// What a pod asks of a pool, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodAsk<'a> {
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The fixed addresses asked for, shown in a refusal (empty: none).
    pub fixed: &'a [std::net::IpAddr],
    /// The identity the pod's addresses would be kept for, with the set size.
    pub claim: Option<(&'a Identity, u32)>,
}

/// What the policy lets through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// Whether the claim asked for is kept. False for a StatefulSet ordinal in a namespace not in
    /// `statefulSetNamespaces`: the pod gets a dynamic address instead, as with
    /// `berth.dev/sticky: "false"` (not refused: stickiness is the default, not the pod's ask).
    pub keep_claim: bool,
}

fn lists(names: &[String], namespace: &str) -> bool {
    names.iter().any(|n| n == ANY_NAMESPACE || n == namespace)
}

impl PoolPolicy {
    /// Whether pods of `namespace` may ask for fixed addresses.
    pub fn allows_fixed(&self, namespace: &str) -> bool {
        lists(&self.fixed_namespaces, namespace)
    }

    /// Whether Deployments of `namespace` may ask for sticky sets.
    pub fn allows_sticky_set(&self, namespace: &str) -> bool {
        lists(&self.sticky_namespaces, namespace)
    }

    /// Whether StatefulSet pods of `namespace` keep their addresses per ordinal.
    pub fn allows_stateful_set(&self, namespace: &str) -> bool {
        lists(&self.stateful_set_namespaces, namespace)
    }

    /// Decide a pod's request to pool `pool`: refused (with the policy key at fault), or allowed
    /// with or without its claim.
    pub fn check(&self, pool: &str, ask: &PodAsk<'_>) -> Result<Allowed, PolicyError> {
        let ns = ask.namespace;
        if !ask.fixed.is_empty() && !self.allows_fixed(ns) {
            return Err(PolicyError::Fixed {
                pool: pool.to_string(),
                namespace: ns.to_string(),
                asked: ask
                    .fixed
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            });
        }
        let keep_claim = match ask.claim {
            None
            | Some((
                Identity::Key { .. } | Identity::Service { .. } | Identity::SharedService { .. },
                _,
            )) => true,
            Some((Identity::StickySet { .. }, size)) => {
                if !self.allows_sticky_set(ns) {
                    return Err(PolicyError::StickySet {
                        pool: pool.to_string(),
                        namespace: ns.to_string(),
                    });
                }
                if size > self.max_sticky_set {
                    return Err(PolicyError::StickySetSize {
                        pool: pool.to_string(),
                        namespace: ns.to_string(),
                        size,
                        max: self.max_sticky_set,
                    });
                }
                true
            }
            Some((Identity::StatefulSet { .. }, _)) => self.allows_stateful_set(ns),
        };
        Ok(Allowed { keep_claim })
    }

    /// Whether this is the default policy. Why: the default is not written into ledger records,
    /// so pools recorded before policies existed compare equal to today's configuration.
    pub fn is_default(&self) -> bool {
        *self == PoolPolicy::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts() -> Identity {
        Identity::StatefulSet {
            namespace: "db".into(),
            name: "pg".into(),
            ordinal: 0,
        }
    }

    fn set() -> Identity {
        Identity::StickySet {
            namespace: "web".into(),
            name: "front".into(),
        }
    }

    #[test]
    fn defaults_refuse_fixed_and_sticky_sets_but_keep_statefulsets() {
        let p = PoolPolicy::default();
        let ip = ["198.18.0.10".parse().unwrap()];
        let e = p
            .check(
                "pods",
                &PodAsk {
                    namespace: "web",
                    fixed: &ip,
                    claim: None,
                },
            )
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("fixedNamespaces")
                && msg.contains("\"web\"")
                && msg.contains("198.18.0.10"),
            "{msg}"
        );
        let e = p
            .check(
                "pods",
                &PodAsk {
                    namespace: "web",
                    fixed: &[],
                    claim: Some((&set(), 2)),
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("stickyNamespaces"), "{e}");
        let ok = p
            .check(
                "pods",
                &PodAsk {
                    namespace: "db",
                    fixed: &[],
                    claim: Some((&sts(), 1)),
                },
            )
            .unwrap();
        assert!(ok.keep_claim);
        // Nothing asked: always allowed.
        assert!(p
            .check(
                "pods",
                &PodAsk {
                    namespace: "x",
                    fixed: &[],
                    claim: None
                }
            )
            .is_ok());
    }

    #[test]
    fn listed_namespaces_and_the_wildcard() {
        let p = PoolPolicy {
            fixed_namespaces: vec!["infra".into()],
            sticky_namespaces: vec![ANY_NAMESPACE.into()],
            stateful_set_namespaces: vec!["db".into()],
            max_sticky_set: 4,
        };
        assert!(p.allows_fixed("infra") && !p.allows_fixed("infra2") && !p.allows_fixed(""));
        assert!(p.allows_sticky_set("anything"));
        let e = p
            .check(
                "pods",
                &PodAsk {
                    namespace: "web",
                    fixed: &[],
                    claim: Some((&set(), 5)),
                },
            )
            .unwrap_err();
        assert_eq!(
            e,
            PolicyError::StickySetSize {
                pool: "pods".into(),
                namespace: "web".into(),
                size: 5,
                max: 4
            }
        );
        assert!(e.to_string().contains("maxStickySet"));
        // A StatefulSet outside statefulSetNamespaces is not refused: it loses its claim.
        let ok = p
            .check(
                "pods",
                &PodAsk {
                    namespace: "web",
                    fixed: &[],
                    claim: Some((&sts(), 1)),
                },
            )
            .unwrap();
        assert!(!ok.keep_claim);
    }

    #[test]
    fn default_serialises_to_nothing_new_and_reads_back() {
        let p: PoolPolicy = serde_json::from_str("{}").unwrap();
        assert!(p.is_default());
        let p: PoolPolicy =
            serde_json::from_str(r#"{"fixedNamespaces":["a"],"maxStickySet":3}"#).unwrap();
        assert_eq!(p.fixed_namespaces, ["a"]);
        assert_eq!(p.stateful_set_namespaces, [ANY_NAMESPACE]);
        assert_eq!(p.max_sticky_set, 3);
        let back: PoolPolicy = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
