//! The BGP objects' `Accepted` condition: the controller checks every BGPPeer against the
//! BGPConfiguration named `default`, and that configuration itself, as they change (watches,
//! not rounds), and says on the object what is wrong: `Accepted=False` naming the field, the
//! value and the fix, and a Warning Event.
//!
//! Why the controller and not each agent: one writer of each object's condition, and a bad
//! peer reported once instead of by every node. The agents check again before they open a
//! session (they never trust a condition) and report their own sessions per node.

use std::collections::{BTreeMap, BTreeSet};

use berth_core::bgp::{BgpConfigSpec, BgpError, PeerSpec};
use berth_k8s::crd::{BGPConfiguration, BGPPeer, Condition};
use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};

/// The condition type.
pub const ACCEPTED: &str = "Accepted";
/// The one BGPConfiguration the agents read.
pub const DEFAULT_CONFIG: &str = "default";
/// The Event source.
const COMPONENT: &str = "berth-controller";

/// Why an object is not accepted: the condition's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// CamelCase reason.
    pub reason: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

impl From<BgpError> for Refusal {
    fn from(e: BgpError) -> Self {
        Refusal {
            reason: "InvalidSpec",
            message: format!("spec.{e}"),
        }
    }
}

/// Whether a peer is accepted, given the `default` configuration (absent: no defaults).
pub fn check_peer(peer: &PeerSpec, cluster: Option<&BgpConfigSpec>) -> Result<(), Refusal> {
    let none = BgpConfigSpec::default();
    peer.validate(cluster.unwrap_or(&none))
        .map_err(Refusal::from)
}

/// Whether a configuration object is accepted: only `default` is read, and it must be valid.
pub fn check_config(name: &str, spec: &BgpConfigSpec) -> Result<(), Refusal> {
    if name != DEFAULT_CONFIG {
        return Err(Refusal {
            reason: "NotDefault",
            message: format!(
                "Berth reads only the BGPConfiguration named \"{DEFAULT_CONFIG}\"; this one ({name:?}) has no effect: rename it, or merge it into \"{DEFAULT_CONFIG}\""
            ),
        });
    }
    spec.validate().map_err(Refusal::from)
}

/// The `Accepted` condition for a check's result. `previous` are the object's conditions now
/// (the transition time is kept while the status holds); `now` is RFC 3339.
pub fn accepted(
    result: &Result<(), Refusal>,
    previous: &[Condition],
    now: &str,
    generation: Option<i64>,
) -> Condition {
    let (status, reason, message) = match result {
        Ok(()) => ("True", "Valid", "the spec is valid".to_string()),
        Err(r) => ("False", r.reason, r.message.clone()),
    };
    Condition::carry_time(
        Condition {
            type_: ACCEPTED.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: now.into(),
            observed_generation: generation,
        },
        previous,
    )
}

/// Whether writing `want` changes what `previous` says.
fn differs(want: &Condition, previous: &[Condition]) -> bool {
    previous.iter().find(|c| c.type_ == want.type_) != Some(want)
}

/// What changed.
enum Trigger {
    /// One peer's spec.
    Peer(String),
    /// A configuration (every peer may depend on it).
    Configs,
    /// A watch (re)listed: everything.
    All,
}

/// Keeps the `Accepted` condition of every BGPPeer and BGPConfiguration until the task is
/// dropped (leadership lost, shutdown).
pub async fn run(client: Client) {
    let (peer_store, peer_writer) = reflector::store::<BGPPeer>();
    let (cfg_store, cfg_writer) = reflector::store::<BGPConfiguration>();
    let mut generations: BTreeMap<String, Option<i64>> = BTreeMap::new();
    let peers = watcher(Api::<BGPPeer>::all(client.clone()), Default::default())
        .default_backoff()
        .reflect(peer_writer)
        .filter_map(move |ev| {
            // Only a change of the spec matters (the status is what this task writes).
            let t = match ev {
                Ok(watcher::Event::Apply(p)) => {
                    let g = p.metadata.generation;
                    (generations.insert(p.name_any(), g) != Some(g))
                        .then(|| Trigger::Peer(p.name_any()))
                }
                Ok(watcher::Event::Delete(p)) => {
                    generations.remove(&p.name_any());
                    None
                }
                Ok(watcher::Event::InitDone) => Some(Trigger::All),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "BGPPeer watch error; re-listing");
                    None
                }
            };
            async move { t }
        })
        .boxed();
    let mut cfg_generations: BTreeMap<String, Option<i64>> = BTreeMap::new();
    let configs = watcher(
        Api::<BGPConfiguration>::all(client.clone()),
        Default::default(),
    )
    .default_backoff()
    .reflect(cfg_writer)
    .filter_map(move |ev| {
        let t = match ev {
            Ok(watcher::Event::Apply(c)) => {
                let g = c.metadata.generation;
                (cfg_generations.insert(c.name_any(), g) != Some(g)).then_some(Trigger::Configs)
            }
            Ok(watcher::Event::Delete(c)) => {
                cfg_generations.remove(&c.name_any());
                Some(Trigger::Configs)
            }
            Ok(watcher::Event::InitDone) => Some(Trigger::All),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(error = %e, "BGPConfiguration watch error; re-listing");
                None
            }
        };
        async move { t }
    })
    .boxed();
    let mut triggers = stream::select_all([peers, configs]);
    let (ps, cs) = (peer_store.clone(), cfg_store.clone());
    let ready = async move {
        let _ = ps.wait_until_ready().await;
        let _ = cs.wait_until_ready().await;
    };
    tokio::pin!(ready);
    // Nothing is judged before both watches listed: a peer checked before the configuration
    // arrived would be refused for a missing myASN.
    loop {
        tokio::select! {
            _ = &mut ready => break,
            t = triggers.next() => if t.is_none() { return },
        }
    }
    let mut refused: BTreeSet<(String, Option<i64>)> = BTreeSet::new();
    let ctl = Checker {
        client,
        peers: peer_store,
        configs: cfg_store,
    };
    ctl.configs_and_peers(&mut refused).await;
    while let Some(t) = triggers.next().await {
        match t {
            Trigger::Peer(name) => {
                if let Some(p) = ctl.peers.get(&reflector::ObjectRef::new(&name)) {
                    ctl.peer(&p, &mut refused).await;
                }
            }
            Trigger::Configs | Trigger::All => ctl.configs_and_peers(&mut refused).await,
        }
    }
}

struct Checker {
    client: Client,
    peers: Store<BGPPeer>,
    configs: Store<BGPConfiguration>,
}

impl Checker {
    fn cluster(&self) -> Option<BgpConfigSpec> {
        self.configs
            .get(&reflector::ObjectRef::new(DEFAULT_CONFIG))
            .map(|c| c.spec.config.clone())
    }

    async fn configs_and_peers(&self, refused: &mut BTreeSet<(String, Option<i64>)>) {
        for c in self.configs.state() {
            let result = check_config(&c.name_any(), &c.spec.config);
            let previous = c
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or(&[]);
            self.write(c.as_ref(), previous, result, refused).await;
        }
        for p in self.peers.state() {
            self.peer(&p, refused).await;
        }
    }

    async fn peer(&self, p: &BGPPeer, refused: &mut BTreeSet<(String, Option<i64>)>) {
        let result = check_peer(&p.spec.peer, self.cluster().as_ref());
        let previous = p
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or(&[]);
        self.write(p, previous, result, refused).await;
    }

    /// Patches the condition when it changes; a refusal also posts one Warning Event per
    /// generation of the object.
    async fn write<K>(
        &self,
        obj: &K,
        previous: &[Condition],
        result: Result<(), Refusal>,
        refused: &mut BTreeSet<(String, Option<i64>)>,
    ) where
        K: Resource<DynamicType = (), Scope = kube::core::ClusterResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let name = obj.name_any();
        let generation = obj.meta().generation;
        let kind = K::kind(&()).to_string();
        let cond = accepted(&result, previous, &berth_k8s::condition_now(), generation);
        if differs(&cond, previous) {
            let api: Api<K> = Api::all(self.client.clone());
            let patch = serde_json::json!({"status": {"conditions": [cond]}});
            if let Err(e) = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::warn!(kind, name, error = %e, "cannot write the Accepted condition");
            }
        }
        let key = (format!("{kind}/{name}"), generation);
        match &result {
            Err(r) if refused.insert(key.clone()) => {
                tracing::warn!(kind, name, reason = r.reason, message = %r.message, "BGP object not accepted");
                let regarding = ObjectReference {
                    api_version: Some(K::api_version(&()).to_string()),
                    kind: Some(kind.clone()),
                    name: Some(name.clone()),
                    uid: obj.meta().uid.clone(),
                    ..Default::default()
                };
                let reason = format!("{kind}Invalid");
                if let Err(e) = berth_k8s::events::post(
                    &self.client,
                    regarding,
                    true,
                    &reason,
                    &r.message,
                    COMPONENT,
                )
                .await
                {
                    tracing::warn!(kind, name, error = %e, "cannot post the Warning Event");
                }
            }
            Ok(()) => {
                refused.retain(|(k, _)| k != &key.0);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(v: serde_json::Value) -> PeerSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_peer_takes_its_asn_from_the_default_configuration() {
        let p = peer(serde_json::json!({"peerAddress": "198.18.1.1", "peerASN": 64512}));
        let r = check_peer(&p, None).unwrap_err();
        assert_eq!(r.reason, "InvalidSpec");
        assert!(r.message.starts_with("spec.myASN"), "{}", r.message);
        let cluster = BgpConfigSpec {
            my_asn: Some(64513),
            ..Default::default()
        };
        assert_eq!(check_peer(&p, Some(&cluster)), Ok(()));
    }

    #[test]
    fn only_the_default_configuration_is_read() {
        let ok = BgpConfigSpec::default();
        assert_eq!(check_config("default", &ok), Ok(()));
        let r = check_config("mine", &ok).unwrap_err();
        assert_eq!(r.reason, "NotDefault");
        assert!(r.message.contains("\"mine\""), "{}", r.message);
    }

    #[test]
    fn the_condition_keeps_its_time_while_it_holds() {
        let bad: Result<(), Refusal> = Err(Refusal {
            reason: "InvalidSpec",
            message: "spec.peerASN 0: reserved".into(),
        });
        let c1 = accepted(&bad, &[], "2026-12-03T10:00:00Z", Some(1));
        assert_eq!(
            (c1.status.as_str(), c1.reason.as_str()),
            ("False", "InvalidSpec")
        );
        let c2 = accepted(
            &bad,
            std::slice::from_ref(&c1),
            "2026-12-03T10:05:00Z",
            Some(1),
        );
        assert_eq!(c2, c1);
        assert!(!differs(&c2, std::slice::from_ref(&c1)));
        let c3 = accepted(
            &Ok(()),
            std::slice::from_ref(&c1),
            "2026-12-03T10:06:00Z",
            Some(2),
        );
        assert_eq!(c3.status, "True");
        assert_eq!(c3.last_transition_time, "2026-12-03T10:06:00Z");
        assert!(differs(&c3, std::slice::from_ref(&c1)));
    }
}
