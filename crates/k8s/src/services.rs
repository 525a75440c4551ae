//! A Service, as the pure Service address decisions see it ([`berth_core::service::ServiceAsk`]).
//!
//! Why a module of its own: which Services Berth serves (`type`, `loadBalancerClass`), which
//! families they want (`ipFamilies`, or the cluster IP's on servers without that field), what
//! their annotations ask for and how the sharing rule sees their ports and traffic policy are
//! read from the object in one place, testable without an API server.

use berth_core::service::{
    AnnotationError, PortKey, ServiceAnnotations, ServiceAsk, ServiceRef, Sharer,
    LOAD_BALANCER_CLASS,
};
use berth_core::Family;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Whether Berth serves a Service's `loadBalancerClass`: none, or Berth's own. Services of
/// another class belong to another implementation, and Berth never touches them.
pub fn served_class(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.load_balancer_class.as_deref())
        .is_none_or(|c| c == LOAD_BALANCER_CLASS)
}

/// Whether the Service asks for LoadBalancer addresses Berth hands out.
pub fn wants_load_balancer(svc: &Service) -> bool {
    served_class(svc) && svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

/// The families a Service wants, in order: `spec.ipFamilies`, else the families of its cluster
/// IPs (servers before dual-stack), else IPv4.
pub fn families(svc: &Service) -> Vec<Family> {
    let spec = svc.spec.as_ref();
    let mut out: Vec<Family> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        })
        .collect();
    if out.is_empty() {
        out = spec
            .and_then(|s| s.cluster_ips.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(spec.and_then(|s| s.cluster_ip.clone()))
            .filter_map(|s| s.parse::<IpAddr>().ok())
            .map(Family::of)
            .collect();
    }
    let mut seen = vec![];
    out.retain(|f| {
        let new = !seen.contains(f);
        seen.push(*f);
        new
    });
    if out.is_empty() {
        out.push(Family::V4);
    }
    out
}

/// The ports a Service exposes (protocol and port), for the sharing rule.
pub fn ports(spec: &ServiceSpec) -> BTreeSet<PortKey> {
    spec.ports
        .iter()
        .flatten()
        .filter_map(|p| {
            u16::try_from(p.port).ok().map(|port| PortKey {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port,
            })
        })
        .collect()
}

/// With `externalTrafficPolicy: Local`, the pod selector in a canonical form (sorted
/// `key=value`s); `None` for policy Cluster.
pub fn local_traffic(spec: &ServiceSpec) -> Option<String> {
    (spec.external_traffic_policy.as_deref() == Some("Local")).then(|| {
        spec.selector
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// What the sharing rule needs of a Service holding an address: its ports and traffic policy.
/// Read even when the Service's annotations are wrong (a holder stays a holder).
pub fn sharer(svc: &Service) -> Sharer {
    let spec = svc.spec.clone().unwrap_or_default();
    Sharer {
        service: service_ref(svc),
        ports: ports(&spec),
        local_traffic: local_traffic(&spec),
    }
}

/// The addresses in `status.loadBalancer.ingress`, in order (hostnames are not Berth's).
pub fn ingress(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.as_deref().and_then(|ip| ip.parse().ok()))
        .collect()
}

/// The Service's reference (namespace, name, UID).
pub fn service_ref(svc: &Service) -> ServiceRef {
    ServiceRef {
        namespace: svc.metadata.namespace.clone().unwrap_or_default(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
    }
}

/// What a Service asks for, with where its requested addresses came from (for messages), or the
/// annotation error to show on it.
pub fn ask(
    svc: &Service,
    namespace_labels: &BTreeMap<String, String>,
) -> Result<(ServiceAsk, &'static str), AnnotationError> {
    let spec = svc.spec.clone().unwrap_or_default();
    let annotations = svc.metadata.annotations.clone().unwrap_or_default();
    let ann = ServiceAnnotations::parse(&annotations, spec.load_balancer_ip.as_deref())?;
    let ask = ServiceAsk {
        service: service_ref(svc),
        labels: svc.metadata.labels.clone().unwrap_or_default(),
        namespace_labels: namespace_labels.clone(),
        load_balancer: wants_load_balancer(svc),
        families: families(svc),
        requested: ann.requested,
        pool: ann.pool,
        sharing_key: ann.sharing_key,
        ports: ports(&spec),
        local_traffic: local_traffic(&spec),
        // The API server validates externalIPs as addresses; anything else is left out.
        external_ips: spec
            .external_ips
            .iter()
            .flatten()
            .filter_map(|s| s.parse().ok())
            .collect(),
    };
    Ok((ask, ann.requested_from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn classes_types_and_families() {
        let lb = svc(
            json!({"metadata": {"name": "a", "namespace": "ns", "uid": "u"},
            "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv6", "IPv4"],
                     "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}}),
        );
        assert!(wants_load_balancer(&lb));
        assert_eq!(families(&lb), vec![Family::V6, Family::V4]);
        let other = svc(json!({"metadata": {"name": "a"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "example.com/other"}}));
        assert!(!served_class(&other) && !wants_load_balancer(&other));
        let ours = svc(json!({"metadata": {"name": "a"},
            "spec": {"type": "LoadBalancer", "loadBalancerClass": "berth.dev/lb"}}));
        assert!(wants_load_balancer(&ours));
        let cluster = svc(
            json!({"metadata": {"name": "a"}, "spec": {"type": "ClusterIP", "clusterIP": "2001:db8::1"}}),
        );
        assert!(!wants_load_balancer(&cluster));
        // A 1.20 server without ipFamilies: the cluster IP's family.
        assert_eq!(families(&cluster), vec![Family::V6]);
        let (a, from) = ask(&lb, &BTreeMap::new()).unwrap();
        assert_eq!(from, berth_core::service::ANN_IPS);
        assert_eq!(a.service.uid, "u");
        assert_eq!(a.ports.len(), 2);
        assert!(a.ports.iter().any(|p| p.protocol == "UDP" && p.port == 53));
        assert!(a.local_traffic.is_none());
    }

    #[test]
    fn annotations_traffic_policy_and_external_ips() {
        let s = svc(json!({"metadata": {"name": "a", "namespace": "ns",
                "annotations": {"metallb.universe.tf/loadBalancerIPs": "198.18.100.5",
                                "metallb.universe.tf/allow-shared-ip": "k"}},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                     "selector": {"app": "web", "tier": "a"},
                     "externalIPs": ["198.18.110.2"]}}));
        let (a, from) = ask(&s, &BTreeMap::new()).unwrap();
        assert_eq!(from, berth_core::service::ANN_METALLB_UNIVERSE_IPS);
        assert_eq!(a.requested, vec!["198.18.100.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(a.sharing_key.as_deref(), Some("k"));
        assert_eq!(a.local_traffic.as_deref(), Some("app=web,tier=a"));
        assert_eq!(
            a.external_ips,
            vec!["198.18.110.2".parse::<IpAddr>().unwrap()]
        );
        let bad = svc(
            json!({"metadata": {"name": "a", "annotations": {"berth.dev/load-balancer-ips": "nope"}},
            "spec": {"type": "LoadBalancer"}}),
        );
        let e = ask(&bad, &BTreeMap::new()).unwrap_err().to_string();
        assert!(
            e.contains("berth.dev/load-balancer-ips") && e.contains("nope"),
            "{e}"
        );
    }
}
