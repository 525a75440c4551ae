//! Berth's Kubernetes layer.
//!
//! - [`crd`]: the custom resources under `berth.dev` (pools, blocks, claims, bindings), derived from
//!   `berth-core`'s own types so the schema cannot drift from what the ledger stores.
//! - [`names`]: how ledger names map to Kubernetes object names.
//! - [`ledger`]: the Kubernetes ledger backend: one object per record, compare-and-swap on
//!   `resourceVersion`, so no single object is contended by every allocation.
//! - [`cluster`]: cluster-wide watches of every node's blocks and InternalIPs (the routed pod
//!   network's inputs).
//! - [`client`]: the API client, kube's connection stack with TCP keepalive.
//! - [`events`]: Warning Events on Berth's own objects (a record Berth cannot read).

pub mod annotations;
pub mod announce;
pub mod bgp;
pub mod client;
pub mod cluster;
pub mod crd;
pub mod events;
pub mod ledger;
pub mod names;
pub mod pods;
pub mod services;

pub use ledger::KubeLedger;

use berth_ledger::LedgerError;

/// A client from a kubeconfig file, or the in-cluster / default configuration when `None`, and
/// the server URL for messages.
pub async fn client(
    kubeconfig: Option<&std::path::Path>,
) -> Result<(kube::Client, String), LedgerError> {
    client_from(config(kubeconfig).await?)
}

/// The client configuration from a kubeconfig file, or the in-cluster / default configuration when
/// `None`.
pub async fn config(kubeconfig: Option<&std::path::Path>) -> Result<kube::Config, LedgerError> {
    match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| LedgerError::Config(format!("kubeconfig {}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| LedgerError::Config(format!("kubeconfig {}: {e}", path.display())))
        }
        None => kube::Config::infer().await.map_err(|e| {
            LedgerError::Config(format!(
                "no Kubernetes configuration ({e}): pass --kubeconfig or run in a pod"
            ))
        }),
    }
}

/// Now, as Kubernetes writes a condition's `lastTransitionTime`: RFC 3339 in UTC, whole seconds.
///
/// Why: the controller's Pool conditions and the agent's Service conditions must read alike.
pub fn condition_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A client from a configuration, and the server URL for messages.
pub fn client_from(config: kube::Config) -> Result<(kube::Client, String), LedgerError> {
    let server = config.cluster_url.to_string();
    let client = client::build(config)
        .map_err(|e| LedgerError::Config(format!("Kubernetes client for {server}: {e}")))?;
    Ok((client, server))
}

#[cfg(test)]
mod tests {
    #[test]
    fn condition_time_is_rfc3339_utc_in_whole_seconds() {
        let t = super::condition_now();
        assert_eq!(t.len(), "2026-12-03T13:20:00Z".len(), "{t}");
        assert!(t.ends_with('Z') && !t.contains('.'), "{t}");
        let parsed: k8s_openapi::jiff::Timestamp = t.parse().unwrap();
        let drift = k8s_openapi::jiff::Timestamp::now().as_second() - parsed.as_second();
        assert!((0..=2).contains(&drift), "{t}");
    }
}
