//! L2 announcement of Service addresses from the node agent (`announce: l2` pools).
//!
//! - [`plan`]: the pure decision (members, addresses, who may announce each), the same on every
//!   node because it is a function of the watched objects only;
//! - [`run`]: the loop that follows the watches and drives `berth-announce`'s [`Announcer`]
//!   (heartbeats between agents on the LAN, fencing, ARP/NDP answers, GARP / unsolicited NA),
//!   and tells users on their Services;
//! - [`KubeNotices`]: Events and the `Announced` condition on Services.
//!
//! [`Announcer`]: berth_announce::runtime::Announcer

pub mod plan;
pub mod run;

pub use plan::{interface_plan, plan, Inputs, Plan, Planned};
pub use run::{run, L2Config, L2Handle, L2Inputs, L2View};

use async_trait::async_trait;
use berth_core::announce::L2Settings;
use berth_k8s::announce::ServiceKey;
use std::net::IpAddr;

/// Where the announcer tells users what it does.
///
/// Why a trait: the loop is tested without an API server; on Kubernetes these are Events and a
/// condition on the Service.
#[async_trait]
pub trait Notices: Send + Sync + 'static {
    /// An Event on the Service (`uid` when known; otherwise looked up).
    async fn notice(
        &self,
        svc: &ServiceKey,
        uid: Option<&str>,
        warning: bool,
        reason: &str,
        message: &str,
    );
    /// This node now announces `addr` of the Service: recorded where users look.
    async fn announced(&self, svc: &ServiceKey, addr: IpAddr, node: Option<&str>);
    /// A host that is not a Berth node answers for `addr`: recorded where users look.
    async fn conflict(&self, svc: &ServiceKey, addr: IpAddr, message: &str);
}

/// Whether a pool's `l2.interfaces` / `l2.interfaceRegex` admit the interface `dev` (the one
/// holding this node's InternalIP, where the agents heartbeat and answer).
///
/// Why only that interface: the failure detector and the answers must share a link, or a cut
/// of the answering link would go unnoticed; a pool that names other interfaces only is
/// refused on this node, with the reason, rather than announced somewhere unexpected.
pub fn interface_allowed(l2: &L2Settings, dev: &str) -> Result<(), String> {
    if l2.interfaces.is_empty() && l2.interface_regex.is_none() {
        return Ok(());
    }
    if l2.interfaces.iter().any(|i| i == dev) {
        return Ok(());
    }
    if let Some(re) = &l2.interface_regex {
        let r = regex::Regex::new(&format!("^(?:{re})$"))
            .map_err(|e| format!("l2.interfaceRegex {re:?} is not a regular expression: {e}"))?;
        if r.is_match(dev) {
            return Ok(());
        }
    }
    Err(format!(
        "this node's InternalIP is on {dev}, which l2.interfaces {:?} / l2.interfaceRegex {:?} does not admit; Berth announces only on the interface that holds the InternalIP (where agents heartbeat): add {dev} or remove the restriction",
        l2.interfaces, l2.interface_regex
    ))
}

pub mod kube;
pub use kube::KubeNotices;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_lists_and_regexes() {
        let any = L2Settings::default();
        assert!(interface_allowed(&any, "eth0").is_ok());
        let named = L2Settings {
            interfaces: vec!["bond0".into(), "eth0".into()],
            interface_regex: None,
        };
        assert!(interface_allowed(&named, "eth0").is_ok());
        assert!(interface_allowed(&named, "eth1")
            .unwrap_err()
            .contains("eth1"));
        let re = L2Settings {
            interfaces: vec![],
            interface_regex: Some("eth[0-9]+".into()),
        };
        assert!(interface_allowed(&re, "eth12").is_ok());
        // Anchored: a regex matches the whole name.
        assert!(interface_allowed(&re, "veth3").is_err());
        let bad = L2Settings {
            interfaces: vec![],
            interface_regex: Some("(".into()),
        };
        assert!(interface_allowed(&bad, "eth0")
            .unwrap_err()
            .contains("not a regular expression"));
    }
}
