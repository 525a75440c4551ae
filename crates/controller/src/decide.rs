//! What to release, decided from a view of the cluster and a ledger snapshot. Pure.

use berth_core::{Binding, Block, Claim, Identity, Timestamp};
use berth_ledger::{BadRecord, Kind};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

/// Records made less than this before the pod list are kept (besides the grace period): the
/// binding's time comes from its node's clock, the list's from the controller's, and a record
/// made just before the list may name a pod the list does not show yet.
pub const NEWER_THAN_LIST: Duration = Duration::from_secs(1);

/// What the controller read from the API server at the start of a round.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// When the reads started. Records made after this (or less than [`NEWER_THAN_LIST`]
    /// before it) are kept.
    pub read_at: Timestamp,
    /// Pods by namespace/name, with their UIDs.
    pub pods: HashMap<(String, String), String>,
    /// Nodes that exist.
    pub nodes: HashSet<String>,
    /// Nodes with the `node.kubernetes.io/out-of-service` taint.
    pub fenced: HashSet<String>,
    /// StatefulSets by namespace/name, with their replica counts.
    pub statefulsets: HashMap<(String, String), u32>,
    /// Deployments by namespace/name.
    pub deployments: HashSet<(String, String)>,
    /// Services by namespace/name, with their UIDs; `None` when they were not listed, and then
    /// no Service's address is released (fail closed).
    pub services: Option<HashMap<(String, String), String>>,
}

/// One release the controller will attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Delete a binding.
    ReleaseBinding {
        /// Its ledger name (the address).
        name: String,
        /// Why.
        reason: String,
        /// Whether to re-check the pod with a fresh GET first (not for fenced nodes).
        recheck_pod: Option<(String, String, Option<String>)>,
    },
    /// Delete an empty block of a node that is gone or fenced.
    ReclaimBlock {
        /// Its ledger name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Delete a claim whose identity is gone.
    ReleaseClaim {
        /// Its ledger name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// The decision of one round.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    /// Releases to attempt, each with compare-and-swap.
    pub actions: Vec<Action>,
}

/// Decide what to release.
///
/// - A binding of a pod on a deleted or fenced node is released at once.
/// - A binding of a pod that is gone (or replaced: another UID) is released once it is older than
///   `grace` *and* older than the pod list, after a fresh GET confirms the pod is gone.
/// - A binding without pod information (a non-Kubernetes runtime) is left to CNI GC.
/// - An empty block of a deleted or fenced node is reclaimed: no binding left in it, no claim
///   keeping an address inside it, and no binding record that cannot be read (`bad`) naming an
///   address inside it.
/// - A StatefulSet claim is released when the StatefulSet is gone or scaled below its ordinal; a
///   sticky set when its Deployment is gone; never while a binding uses it; never younger than grace.
/// - Bad records themselves are never released: nobody can check whose they are.
///
/// `grace` is in seconds.
pub fn decide(
    view: &ClusterView,
    blocks: &[Block],
    claims: &[Claim],
    bindings: &[Binding],
    bad: &[BadRecord],
    grace: u64,
) -> Decision {
    let mut actions = vec![];
    let node_gone = |n: &str| !view.nodes.contains(n) || view.fenced.contains(n);
    let old = |since: Timestamp| {
        since.saturating_add(Duration::from_secs(grace) + NEWER_THAN_LIST) < view.read_at
    };
    let bad_addresses: Vec<IpAddr> = bad
        .iter()
        .filter(|b| b.kind == Kind::Binding)
        .filter_map(|b| b.name.parse().ok())
        .collect();
    let mut released: HashSet<String> = HashSet::new();
    for b in bindings {
        if let Some(h) = b.holder.services() {
            // The service controller releases at once; this is the backstop for a Service
            // deleted while no controller ran.
            let Some(services) = &view.services else {
                continue;
            };
            let gone = h
                .services
                .iter()
                .all(|s| services.get(&(s.namespace.clone(), s.name.clone())) != Some(&s.uid));
            if gone && old(b.since) {
                actions.push(Action::ReleaseBinding {
                    name: b.name(),
                    reason: format!("{} is gone", b.holder.describe()),
                    recheck_pod: None,
                });
                released.insert(b.name());
            }
            continue;
        }
        let Some(pod) = b.attachment().and_then(|o| o.pod.as_ref()) else {
            continue;
        };
        if node_gone(&b.node) {
            let why = if view.fenced.contains(&b.node) {
                "is out of service"
            } else {
                "was deleted"
            };
            actions.push(Action::ReleaseBinding {
                name: b.name(),
                reason: format!("node {} {why}", b.node),
                recheck_pod: None,
            });
            released.insert(b.name());
            continue;
        }
        let key = (pod.namespace.clone(), pod.name.clone());
        let alive = match (view.pods.get(&key), &pod.uid) {
            (None, _) => false,
            (Some(uid), Some(want)) => uid == want,
            (Some(_), None) => true,
        };
        let old_enough = old(b.since);
        if !alive && old_enough {
            actions.push(Action::ReleaseBinding {
                name: b.name(),
                reason: format!("pod {}/{} is gone", pod.namespace, pod.name),
                recheck_pod: Some((pod.namespace.clone(), pod.name.clone(), pod.uid.clone())),
            });
            released.insert(b.name());
        }
    }
    for blk in blocks {
        if !node_gone(&blk.node) {
            continue;
        }
        let used = bindings
            .iter()
            .any(|b| blk.cidr.contains(&b.address) && !released.contains(&b.name()))
            || bad_addresses.iter().any(|a| blk.cidr.contains(a));
        // A claim keeps its addresses while no pod uses them: they are not free, and another
        // node claiming the block could not tell. The block waits until the claim is released
        // (a later round), never in the same round, since a release may still be kept.
        let kept = claims
            .iter()
            .any(|c| c.addresses.iter().any(|a| blk.cidr.contains(a)));
        if !used && !kept {
            actions.push(Action::ReclaimBlock {
                name: blk.name(),
                reason: format!(
                    "node {} is gone or out of service and the block is empty",
                    blk.node
                ),
            });
        }
    }
    for c in claims {
        if !old(c.since) {
            continue;
        }
        let name = c.name();
        let in_use = bindings.iter().any(|b| {
            matches!(&b.kind, berth_core::BindingKind::Claimed { claim } if *claim == name)
                && !released.contains(&b.name())
        });
        if in_use {
            continue;
        }
        let reason = match &c.identity {
            Identity::StatefulSet { namespace, name: sts, ordinal } => {
                match view.statefulsets.get(&(namespace.clone(), sts.clone())) {
                    None => Some(format!("StatefulSet {namespace}/{sts} is gone")),
                    Some(replicas) if ordinal >= replicas => {
                        Some(format!("StatefulSet {namespace}/{sts} was scaled to {replicas}, below ordinal {ordinal}"))
                    }
                    Some(_) => None,
                }
            }
            Identity::StickySet { namespace, name: d } => (!view.deployments.contains(&(namespace.clone(), d.clone())))
                .then(|| format!("Deployment {namespace}/{d} is gone")),
            Identity::Service { namespace, name: svc } => match &view.services {
                Some(services) if !services.contains_key(&(namespace.clone(), svc.clone())) => {
                    Some(format!("Service {namespace}/{svc} is gone"))
                }
                _ => None,
            },
            // Only its bindings keep a shared address: unused and older than grace, it goes.
            Identity::SharedService { namespace, key } => view
                .services
                .is_some()
                .then(|| format!("no Service in {namespace} holds sharing key {key:?} any more")),
            Identity::Key { .. } => None,
        };
        if let Some(reason) = reason {
            actions.push(Action::ReleaseClaim { name, reason });
        }
    }
    Decision { actions }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::{BindingKind, Holder, Owner, PodRef, ServiceHolders, ServiceRef};

    /// `s` seconds after the epoch.
    fn at(s: u64) -> Timestamp {
        Timestamp::from_micros(s as i64 * 1_000_000)
    }

    fn binding(
        addr: &str,
        node: &str,
        pod: Option<(&str, &str, Option<&str>)>,
        since: u64,
    ) -> Binding {
        Binding {
            address: addr.parse().unwrap(),
            prefix_len: 24,
            pool: "p".into(),
            node: node.into(),
            holder: Holder::Attachment(Owner {
                network: "n".into(),
                container_id: format!("c-{addr}"),
                ifname: "eth0".into(),
                pod: pod.map(|(ns, name, uid)| PodRef {
                    namespace: ns.into(),
                    name: name.into(),
                    uid: uid.map(String::from),
                }),
            }),
            kind: BindingKind::Fixed,
            since: at(since),
        }
    }

    fn view() -> ClusterView {
        ClusterView {
            read_at: at(1000),
            pods: [(("ns".to_string(), "alive".to_string()), "u1".to_string())].into(),
            nodes: ["n1".to_string(), "n2".to_string()].into(),
            fenced: ["n2".to_string()].into(),
            ..Default::default()
        }
    }

    fn names(d: &Decision) -> Vec<String> {
        d.actions
            .iter()
            .map(|a| match a {
                Action::ReleaseBinding { name, .. }
                | Action::ReclaimBlock { name, .. }
                | Action::ReleaseClaim { name, .. } => name.clone(),
            })
            .collect()
    }

    #[test]
    fn live_pods_and_young_bindings_are_kept() {
        let b = vec![
            binding("198.18.0.1", "n1", Some(("ns", "alive", Some("u1"))), 10),
            binding("198.18.0.2", "n1", Some(("ns", "gone", None)), 990), // younger than grace
            binding("198.18.0.3", "n1", Some(("ns", "gone", None)), 1000), // newer than the pod list
            binding("198.18.0.4", "n1", None, 10),                         // not a Kubernetes pod
            binding("198.18.0.5", "n1", Some(("ns", "alive", None)), 10), // no UID: the name is alive
        ];
        assert!(decide(&view(), &[], &[], &b, &[], 30).actions.is_empty());
    }

    #[test]
    fn gone_or_replaced_pods_and_dead_nodes_release() {
        let b = vec![
            binding("198.18.0.1", "n1", Some(("ns", "gone", None)), 10),
            binding(
                "198.18.0.2",
                "n1",
                Some(("ns", "alive", Some("old-uid"))),
                10,
            ),
            binding("198.18.0.3", "n2", Some(("ns", "alive", Some("u1"))), 999), // fenced: at once
            binding("198.18.0.4", "n9", Some(("ns", "x", None)), 999),           // node deleted
        ];
        let d = decide(&view(), &[], &[], &b, &[], 30);
        assert_eq!(
            names(&d),
            ["198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.0.4"]
        );
        assert!(matches!(
            &d.actions[2],
            Action::ReleaseBinding {
                recheck_pod: None,
                ..
            }
        ));
        assert!(matches!(
            &d.actions[0],
            Action::ReleaseBinding {
                recheck_pod: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn empty_blocks_of_dead_nodes_are_reclaimed_and_claims_follow_their_owners() {
        let blk = |cidr: &str, node: &str| Block {
            pool: "p".into(),
            cidr: cidr.parse().unwrap(),
            node: node.into(),
        };
        let blocks = vec![
            blk("198.18.0.0/28", "n2"),
            blk("198.18.0.16/28", "n1"),
            blk("198.18.0.32/28", "n9"),
        ];
        let mut b = vec![binding("198.18.0.33", "n9", None, 10)]; // keeps n9's block (no pod info: kept)
        let claim = |ns: &str, name: &str, ordinal: u32| Claim {
            identity: Identity::StatefulSet {
                namespace: ns.into(),
                name: name.into(),
                ordinal,
            },
            pool: "p".into(),
            addresses: vec![],
            since: at(10),
        };
        let mut v = view();
        v.statefulsets.insert(("ns".into(), "web".into()), 2);
        let claims = vec![
            claim("ns", "web", 1),
            claim("ns", "web", 2),
            claim("ns", "db", 0),
        ];
        let used = Claim {
            identity: Identity::StatefulSet {
                namespace: "ns".into(),
                name: "db".into(),
                ordinal: 1,
            },
            ..claims[2].clone()
        };
        let mut inuse = binding("198.18.0.20", "n1", Some(("ns", "db-1", None)), 999);
        inuse.kind = BindingKind::Claimed { claim: used.name() };
        b.push(inuse);
        let mut all = claims.clone();
        all.push(used);
        let d = decide(&v, &blocks, &all, &b, &[], 30);
        assert_eq!(
            names(&d),
            [
                "p/198.18.0.0/28",
                "p/statefulset/ns/web/2",
                "p/statefulset/ns/db/0"
            ]
        );
    }

    #[test]
    fn a_block_holding_a_claimed_address_is_not_empty() {
        let blk = |cidr: &str, node: &str| Block {
            pool: "p".into(),
            cidr: cidr.parse().unwrap(),
            node: node.into(),
        };
        // n2 is fenced, n9 deleted: both would lose their empty blocks.
        let blocks = vec![
            blk("198.18.0.0/28", "n2"),
            blk("198.18.0.16/28", "n2"),
            blk("198.18.0.32/28", "n9"),
        ];
        let mut v = view();
        v.statefulsets.insert(("ns".into(), "web".into()), 3);
        // web-1's claim keeps an address in n2's first block and n9's block, and no pod uses
        // it now (its pod is being recreated elsewhere).
        let claim = Claim {
            identity: Identity::StatefulSet {
                namespace: "ns".into(),
                name: "web".into(),
                ordinal: 1,
            },
            pool: "p".into(),
            addresses: vec![
                "198.18.0.5".parse().unwrap(),
                "198.18.0.40".parse().unwrap(),
            ],
            since: at(10),
        };
        let d = decide(&v, &blocks, std::slice::from_ref(&claim), &[], &[], 30);
        assert_eq!(
            names(&d),
            ["p/198.18.0.16/28"],
            "only the block without a claimed address is reclaimed: {d:?}"
        );
        // Also when the claimed address was bound on the fenced node: the binding goes, the
        // claim and its block stay.
        let mut b = binding("198.18.0.5", "n2", Some(("ns", "web-1", None)), 999);
        b.kind = BindingKind::Claimed {
            claim: claim.name(),
        };
        let d = decide(&v, &blocks, std::slice::from_ref(&claim), &[b], &[], 30);
        assert_eq!(names(&d), ["198.18.0.5", "p/198.18.0.16/28"], "{d:?}");
        // A claim released in this round still keeps the block until a later round.
        v.statefulsets.clear();
        let d = decide(&v, &blocks, std::slice::from_ref(&claim), &[], &[], 30);
        assert_eq!(
            names(&d),
            ["p/198.18.0.16/28", "p/statefulset/ns/web/1"],
            "{d:?}"
        );
        // Once the claim is gone, every block of the dead nodes is empty.
        let d = decide(&v, &blocks, &[], &[], &[], 30);
        assert_eq!(d.actions.len(), 3, "{d:?}");
    }

    /// A fenced node's block that holds only an unreadable binding record is not empty: its
    /// address may be in use, so the block is kept (and nothing bad is released).
    #[test]
    fn a_bad_binding_keeps_its_block() {
        let blocks = vec![Block {
            pool: "p".into(),
            cidr: "198.18.0.0/28".parse().unwrap(),
            node: "n2".into(),
        }];
        let bad = |kind: Kind, name: &str| BadRecord {
            kind,
            name: name.into(),
            reason: "missing field `block`".into(),
        };
        let d = decide(
            &view(),
            &blocks,
            &[],
            &[],
            &[bad(Kind::Binding, "198.18.0.5")],
            30,
        );
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        // A bad record elsewhere does not keep it.
        let d = decide(
            &view(),
            &blocks,
            &[],
            &[],
            &[bad(Kind::Binding, "198.18.1.5")],
            30,
        );
        assert_eq!(names(&d), ["p/198.18.0.0/28"]);
    }

    /// With microsecond times the margins are exact: a binding 30 s + 1 s − 1 µs older than the
    /// list is kept, one 1 µs older than that is released.
    #[test]
    fn grace_and_list_margin_are_exact() {
        let gone = Some(("ns", "gone", None));
        let mut b = binding("198.18.0.1", "n1", gone, 0);
        b.since = Timestamp::from_micros(at(1000).as_micros() - 31_000_000);
        assert!(decide(&view(), &[], &[], std::slice::from_ref(&b), &[], 30)
            .actions
            .is_empty());
        b.since = Timestamp::from_micros(at(1000).as_micros() - 31_000_001);
        assert_eq!(
            names(&decide(&view(), &[], &[], &[b], &[], 30)),
            ["198.18.0.1"]
        );
    }

    #[test]
    fn service_bindings_are_released_only_when_listed_services_are_gone() {
        let svc = |uid: &str| ServiceRef {
            namespace: "default".into(),
            name: "web".into(),
            uid: uid.into(),
        };
        let b = Binding {
            address: "198.18.100.1".parse().unwrap(),
            prefix_len: 28,
            pool: "public".into(),
            node: String::new(),
            holder: Holder::Services(ServiceHolders {
                services: vec![svc("u1")],
                sharing_key: None,
                external_ip: false,
            }),
            kind: BindingKind::Claimed {
                claim: "public/service/default/web".into(),
            },
            since: at(0),
        };
        let claim = Claim {
            identity: Identity::Service {
                namespace: "default".into(),
                name: "web".into(),
            },
            pool: "public".into(),
            addresses: vec![b.address],
            since: at(0),
        };
        let mut view = ClusterView {
            read_at: at(1000),
            ..Default::default()
        };
        // Not listed: fail closed, nothing released.
        let d = decide(
            &view,
            &[],
            std::slice::from_ref(&claim),
            std::slice::from_ref(&b),
            &[],
            30,
        );
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        // Listed and present with the same UID: kept.
        view.services = Some([(("default".into(), "web".into()), "u1".into())].into());
        let d = decide(
            &view,
            &[],
            std::slice::from_ref(&claim),
            std::slice::from_ref(&b),
            &[],
            30,
        );
        assert!(d.actions.is_empty(), "{:?}", d.actions);
        // Re-created (another UID): the old Service's binding goes; the claim waits for a
        // later round, since the binding still used it in this one.
        view.services = Some([(("default".into(), "web".into()), "u2".into())].into());
        let d = decide(
            &view,
            &[],
            std::slice::from_ref(&claim),
            std::slice::from_ref(&b),
            &[],
            30,
        );
        assert!(
            matches!(&d.actions[..], [Action::ReleaseBinding { name, .. }] if name == "198.18.100.1"),
            "{:?}",
            d.actions
        );
        // Gone, binding already released: the claim goes too.
        view.services = Some(Default::default());
        let d = decide(&view, &[], &[claim], &[], &[], 30);
        assert!(
            matches!(&d.actions[..], [Action::ReleaseClaim { .. }]),
            "{:?}",
            d.actions
        );
    }
}
