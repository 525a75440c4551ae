//! L2 announcement of Service addresses from the node agent (`announce: l2` pools).
//!
//! - [`plan`]: the pure decision (members, addresses, who may announce each), the same on every
//!   node because it is a function of the watched objects only;
//! - [`groups`]: on this node, which interface each pool is announced on, and so which
//!   announcers run (one per interface, each with its own members and heartbeats);
//! - [`run`]: the loop that follows the watches and drives `berth-announce`'s [`Announcer`]
//!   (heartbeats between agents on the LAN, fencing, ARP/NDP answers, GARP / unsolicited NA),
//!   and tells users on their Services;
//! - [`KubeNotices`]: Events and the `Announced` condition on Services.
//!
//! [`Announcer`]: berth_announce::runtime::Announcer

pub mod groups;
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

/// Whether a pool's `l2.interfaces` / `l2.interfaceRegex` admit the interface `dev`; `Err`
/// only for a regex that does not compile (the pool is refused with that message).
///
/// Why a pool may name interfaces: the LAN its addresses belong to may be another than the one
/// holding the nodes' InternalIPs (a public VLAN on `eth1`, a bond); the announcer then runs on
/// that interface, heartbeats included, so a cut of the answering link is what fails over.
pub fn admits(l2: &L2Settings, dev: &str) -> Result<bool, String> {
    if l2.interfaces.is_empty() && l2.interface_regex.is_none() {
        return Ok(true);
    }
    if l2.interfaces.iter().any(|i| i == dev) {
        return Ok(true);
    }
    if let Some(re) = &l2.interface_regex {
        let r = regex::Regex::new(&format!("^(?:{re})$"))
            .map_err(|e| format!("l2.interfaceRegex {re:?} is not a regular expression: {e}"))?;
        return Ok(r.is_match(dev));
    }
    Ok(false)
}

pub mod kube;
pub use kube::KubeNotices;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_lists_and_regexes() {
        let any = L2Settings::default();
        assert_eq!(admits(&any, "eth0"), Ok(true));
        let named = L2Settings {
            interfaces: vec!["bond0".into(), "eth0".into()],
            interface_regex: None,
        };
        assert_eq!(admits(&named, "eth0"), Ok(true));
        assert_eq!(admits(&named, "eth1"), Ok(false));
        let re = L2Settings {
            interfaces: vec![],
            interface_regex: Some("eth[0-9]+".into()),
        };
        assert_eq!(admits(&re, "eth12"), Ok(true));
        // Anchored: a regex matches the whole name.
        assert_eq!(admits(&re, "veth3"), Ok(false));
        let bad = L2Settings {
            interfaces: vec![],
            interface_regex: Some("(".into()),
        };
        assert!(admits(&bad, "eth0")
            .unwrap_err()
            .contains("not a regular expression"));
    }
}
