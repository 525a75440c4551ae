//! Pod annotations that ask for addresses: Berth's own and kube-ipam's, parsed into one request.
//!
//! - `berth.dev/ips: "198.18.0.5,2001:db8::5"`: fixed addresses, at most one per family, for
//!   every Berth network of the pod; `<network>.berth.dev/ips` for one network only (wins).
//! - `berth.dev/sticky: "false"`: a StatefulSet pod does not keep its address (it does by default).
//! - `berth.dev/sticky-set: "N"`: a Deployment's pods take addresses from a sticky set of N.
//! - kube-ipam's `kube-ipam.ip`, `kube-ipam.netmask`, `kube-ipam.gateway`, exactly as seed 001 uses
//!   them: the address is requested; netmask and gateway, when given, must agree with the pool.

use berth_core::{Family, PoolSpec};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

/// Berth's fixed-address annotation.
pub const IPS: &str = "berth.dev/ips";
/// Opt a StatefulSet pod out of keeping its address.
pub const STICKY: &str = "berth.dev/sticky";
/// A Deployment's sticky set size.
pub const STICKY_SET: &str = "berth.dev/sticky-set";
/// kube-ipam's fixed address.
pub const KUBE_IPAM_IP: &str = "kube-ipam.ip";
/// kube-ipam's netmask.
pub const KUBE_IPAM_NETMASK: &str = "kube-ipam.netmask";
/// kube-ipam's gateway.
pub const KUBE_IPAM_GATEWAY: &str = "kube-ipam.gateway";
/// Largest sticky set a Deployment may ask for.
pub const MAX_STICKY_SET: u32 = 1024;

/// What a pod's annotations ask of one network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRequest {
    /// Fixed addresses, at most one per family.
    pub fixed: Vec<IpAddr>,
    /// Whether a StatefulSet pod keeps its address (default true).
    pub sticky: bool,
    /// A Deployment's sticky set size, if asked for.
    pub sticky_set: Option<u32>,
}

/// A bad annotation: names the annotation, its value and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pod annotation {annotation}={value:?} {problem}")]
pub struct AnnotationError {
    /// The annotation key.
    pub annotation: String,
    /// Its value.
    pub value: String,
    /// What is wrong and what to do.
    pub problem: String,
}

fn bad(annotation: &str, value: &str, problem: impl Into<String>) -> AnnotationError {
    AnnotationError {
        annotation: annotation.to_string(),
        value: value.to_string(),
        problem: problem.into(),
    }
}

fn netmask_len(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let len = m.leading_ones();
    (m.checked_shl(len).unwrap_or(0) == 0).then_some(len as u8)
}

/// Parse the annotations of a pod for network `network` against its pool.
pub fn parse(
    annotations: &BTreeMap<String, String>,
    network: &str,
    pool: &PoolSpec,
) -> Result<PodRequest, AnnotationError> {
    let mut req = PodRequest {
        sticky: true,
        ..Default::default()
    };
    let scoped = format!("{network}.{IPS}");
    let (key, value) = match annotations.get(&scoped) {
        Some(v) => (scoped.as_str(), Some(v)),
        None => (IPS, annotations.get(IPS)),
    };
    if let Some(value) = value {
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let ip: IpAddr = part.parse().map_err(|_| {
                bad(key, value, format!("has {part:?}, which is not an IP address: give comma-separated IPv4/IPv6 addresses"))
            })?;
            if req.fixed.iter().any(|o| Family::of(*o) == Family::of(ip)) {
                return Err(bad(
                    key,
                    value,
                    "names two addresses of one family: give at most one IPv4 and one IPv6 address",
                ));
            }
            if pool.subnet_of(ip).is_none() {
                return Err(bad(key, value, format!("asks for {ip}, which is in no subnet of pool {:?}: choose an address inside the pool", pool.name)));
            }
            req.fixed.push(ip);
        }
        if req.fixed.is_empty() {
            return Err(bad(
                key,
                value,
                "is empty: give at least one address or remove the annotation",
            ));
        }
    }
    if let Some(value) = annotations.get(KUBE_IPAM_IP) {
        if !req.fixed.is_empty() {
            return Err(bad(
                KUBE_IPAM_IP,
                value,
                format!("conflicts with {key}: use one of them"),
            ));
        }
        let ip: Ipv4Addr = value.trim().parse().map_err(|_| {
            bad(
                KUBE_IPAM_IP,
                value,
                "is not an IPv4 address (kube-ipam's fixed address is IPv4)",
            )
        })?;
        let ip = IpAddr::V4(ip);
        let subnet = pool.subnet_of(ip).ok_or_else(|| {
            bad(
                KUBE_IPAM_IP,
                value,
                format!(
                    "is in no subnet of pool {:?}: choose an address inside the pool",
                    pool.name
                ),
            )
        })?;
        if let Some(mask) = annotations.get(KUBE_IPAM_NETMASK) {
            let len = mask
                .trim()
                .parse::<Ipv4Addr>()
                .ok()
                .and_then(netmask_len)
                .ok_or_else(|| {
                    bad(
                        KUBE_IPAM_NETMASK,
                        mask,
                        "is not a netmask such as 255.255.0.0",
                    )
                })?;
            if len != subnet.cidr.prefix_len() {
                return Err(bad(KUBE_IPAM_NETMASK, mask, format!("does not match the pool's subnet {}: use its mask or remove the annotation", subnet.cidr)));
            }
        }
        if let Some(gw) = annotations.get(KUBE_IPAM_GATEWAY) {
            let g: IpAddr = gw
                .trim()
                .parse()
                .map_err(|_| bad(KUBE_IPAM_GATEWAY, gw, "is not an IP address"))?;
            if subnet.gateway != Some(g) {
                return Err(bad(KUBE_IPAM_GATEWAY, gw, format!("differs from the pool's gateway {:?} for {}: use it or remove the annotation", subnet.gateway, subnet.cidr)));
            }
        }
        req.fixed.push(ip);
    } else {
        for k in [KUBE_IPAM_NETMASK, KUBE_IPAM_GATEWAY] {
            if let Some(v) = annotations.get(k) {
                return Err(bad(k, v, format!("needs {KUBE_IPAM_IP} beside it")));
            }
        }
    }
    if let Some(v) = annotations.get(STICKY) {
        req.sticky = match v.trim() {
            "true" => true,
            "false" => false,
            _ => return Err(bad(STICKY, v, "must be \"true\" or \"false\"")),
        };
    }
    if let Some(v) = annotations.get(STICKY_SET) {
        let n: u32 = v.trim().parse().map_err(|_| {
            bad(
                STICKY_SET,
                v,
                format!("is not a number: give the set size, 1 to {MAX_STICKY_SET}"),
            )
        })?;
        if n == 0 || n > MAX_STICKY_SET {
            return Err(bad(
                STICKY_SET,
                v,
                format!("must be between 1 and {MAX_STICKY_SET}"),
            ));
        }
        if !req.fixed.is_empty() {
            return Err(bad(
                STICKY_SET,
                v,
                "cannot be combined with a fixed address: use one of them",
            ));
        }
        req.sticky_set = Some(n);
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::{AddrRange, SubnetSpec};

    fn pool() -> PoolSpec {
        let mut v4 = SubnetSpec::new("10.188.0.0/16".parse().unwrap());
        v4.gateway = Some("10.188.0.1".parse().unwrap());
        v4.fixed = vec![AddrRange::new(
            "10.188.0.10".parse().unwrap(),
            "10.188.0.255".parse().unwrap(),
        )
        .unwrap()];
        let v6 = SubnetSpec::new("2001:db8:5::/64".parse().unwrap());
        PoolSpec {
            name: "kube-subnet".into(),
            use_: Default::default(),
            subnets: vec![v4, v6],
            policy: Default::default(),
            service: Default::default(),
            announcement: Default::default(),
        }
    }

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn seed_001_kube_ipam_annotations_request_the_address() {
        let a = ann(&[
            (KUBE_IPAM_IP, "10.188.0.216"),
            (KUBE_IPAM_NETMASK, "255.255.0.0"),
            (KUBE_IPAM_GATEWAY, "10.188.0.1"),
        ]);
        let r = parse(&a, "k8snetwork", &pool()).unwrap();
        assert_eq!(r.fixed, vec!["10.188.0.216".parse::<IpAddr>().unwrap()]);
        assert!(r.sticky);
    }

    #[test]
    fn berth_annotations_dual_stack_and_network_scoped() {
        let a = ann(&[
            (IPS, "10.188.0.20, 2001:db8:5::20"),
            ("net1.berth.dev/ips", "10.188.0.30"),
        ]);
        assert_eq!(parse(&a, "other", &pool()).unwrap().fixed.len(), 2);
        assert_eq!(
            parse(&a, "net1", &pool()).unwrap().fixed,
            vec!["10.188.0.30".parse::<IpAddr>().unwrap()]
        );
        let a = ann(&[(STICKY_SET, "3")]);
        assert_eq!(parse(&a, "n", &pool()).unwrap().sticky_set, Some(3));
        assert!(
            !parse(&ann(&[(STICKY, "false")]), "n", &pool())
                .unwrap()
                .sticky
        );
        assert_eq!(
            parse(&ann(&[]), "n", &pool()).unwrap(),
            PodRequest {
                sticky: true,
                ..Default::default()
            }
        );
    }

    #[test]
    fn bad_annotations_name_the_annotation_and_value() {
        type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
        let cases: Vec<Case> = vec![
            (vec![(IPS, "10.188.0.300")], IPS, "not an IP address"),
            (
                vec![(IPS, "10.188.0.20,10.188.0.21")],
                IPS,
                "two addresses of one family",
            ),
            (vec![(IPS, "198.18.0.1")], IPS, "no subnet"),
            (vec![(IPS, " , ")], IPS, "empty"),
            (vec![(KUBE_IPAM_IP, "2001:db8:5::1")], KUBE_IPAM_IP, "IPv4"),
            (
                vec![
                    (KUBE_IPAM_IP, "10.188.0.216"),
                    (KUBE_IPAM_NETMASK, "255.255.255.0"),
                ],
                KUBE_IPAM_NETMASK,
                "does not match",
            ),
            (
                vec![
                    (KUBE_IPAM_IP, "10.188.0.216"),
                    (KUBE_IPAM_NETMASK, "255.0.255.0"),
                ],
                KUBE_IPAM_NETMASK,
                "not a netmask",
            ),
            (
                vec![
                    (KUBE_IPAM_IP, "10.188.0.216"),
                    (KUBE_IPAM_GATEWAY, "10.188.0.254"),
                ],
                KUBE_IPAM_GATEWAY,
                "differs",
            ),
            (
                vec![(KUBE_IPAM_NETMASK, "255.255.0.0")],
                KUBE_IPAM_NETMASK,
                "needs kube-ipam.ip",
            ),
            (
                vec![(IPS, "10.188.0.20"), (KUBE_IPAM_IP, "10.188.0.21")],
                KUBE_IPAM_IP,
                "conflicts",
            ),
            (vec![(STICKY, "yes")], STICKY, "\"true\" or \"false\""),
            (vec![(STICKY_SET, "0")], STICKY_SET, "between 1 and"),
            (vec![(STICKY_SET, "many")], STICKY_SET, "not a number"),
        ];
        for (pairs, key, needle) in cases {
            let e = parse(&ann(&pairs), "n", &pool()).unwrap_err();
            assert_eq!(e.annotation, key, "{e}");
            let msg = e.to_string();
            assert!(msg.contains(key) && msg.contains(needle), "{msg}");
            assert!(msg.contains(&e.value), "{msg}");
        }
    }
}
