//! Seed 001: kube-ipam's README example, exactly as printed (malformed) and corrected.

use berth_cni::config::Store;
use berth_cni::{parse_config, CniError, CniVersion};
use berth_core::{AddrRange, PoolSpec, PoolUse, Route, SubnetSpec};
use std::path::PathBuf;

const SEED: &str = include_str!("fixtures/kube-ipam-seed-001.conf");
const CORRECTED: &str = include_str!("fixtures/kube-ipam-seed-001-corrected.conf");

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().expect("test address")
}

#[test]
fn seed_as_printed_is_a_decode_error_with_position() {
    let err = parse_config(SEED.as_bytes()).expect_err("missing comma must not parse");
    assert_eq!(err.code, CniError::DECODING_FAILURE, "{err}");
    // The missing comma after the kubeConfig line is detected on the next line.
    assert!(err.msg.contains("line 12"), "{}", err.msg);
    assert!(err.msg.contains("column"), "{}", err.msg);
    assert!(err.msg.contains("network configuration"), "{}", err.msg);
    eprintln!("seed: {}", err.to_json_string(None));
}

#[test]
fn fixtures_differ_only_by_the_comma() {
    let a: Vec<&str> = SEED.lines().collect();
    let b: Vec<&str> = CORRECTED.lines().collect();
    assert_eq!(a.len(), b.len());
    let diffs: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    assert_eq!(diffs, vec![10]);
    assert_eq!(format!("{},", a[10]), b[10]);
}

#[test]
fn corrected_seed_parses_to_the_expected_pool() {
    let cfg = parse_config(CORRECTED.as_bytes()).expect("corrected seed parses");
    assert_eq!(cfg.network, "k8snetwork");
    assert_eq!(cfg.cni_version, CniVersion::V0_3_1);
    let mut subnet = SubnetSpec::new("10.188.0.0/16".parse().expect("cidr"));
    subnet.fixed = vec![AddrRange::new(ip("10.188.0.10"), ip("10.188.0.255")).expect("range")];
    subnet.ranges = vec![AddrRange::new(ip("10.188.1.0"), ip("10.188.255.254")).expect("range")];
    subnet.gateway = Some(ip("10.188.0.1"));
    subnet.routes = vec![Route {
        dst: "0.0.0.0/0".parse().expect("cidr"),
        gw: None,
    }];
    assert_eq!(subnet.block_prefix(), 26);
    let want = PoolSpec {
        name: "kube-subnet".into(),
        use_: PoolUse::Pod,
        subnets: vec![subnet],
        policy: Default::default(),
        service: Default::default(),
        announcement: Default::default(),
    };
    assert_eq!(cfg.pool, want);
    assert_eq!(
        cfg.store,
        Store::Etcd {
            endpoints: vec![
                "https://192.168.1.50:2379".into(),
                "https://192.168.1.58:2379".into(),
                "https://192.168.1.63:2379".into(),
            ],
            cert: Some(PathBuf::from("/etc/kubernetes/ssl/etcd.pem")),
            key: Some(PathBuf::from("/etc/kubernetes/ssl/etcd-key.pem")),
            ca: Some(PathBuf::from("/etc/kubernetes/ssl/ca.pem")),
        }
    );
    assert_eq!(cfg.resolv_conf, Some(PathBuf::from("/etc/resolv.conf")));
    assert_eq!(cfg.agent_socket, PathBuf::from("/run/berth/agent.sock"));
    assert_eq!(cfg.node_name, None);
    assert!(cfg.requested_ips.is_empty());
    assert!(cfg.valid_attachments.is_empty());
    assert_eq!(cfg.prev_result, None);
}

#[test]
fn corrected_seed_accepts_berth_ipam_type_too() {
    let conf = CORRECTED.replace("\"kube-ipam\"", "\"berth-ipam\"");
    let a = parse_config(CORRECTED.as_bytes()).expect("kube-ipam");
    let b = parse_config(conf.as_bytes()).expect("berth-ipam");
    assert_eq!(a, b);
}

/// The example network configuration in `deploy/base/10-berth.conflist` parses, as the runtime hands
/// each plugin its own entry with the list's name and version.
#[test]
fn deploy_example_conflist_parses() {
    let text = include_str!("../../../deploy/base/10-berth.conflist");
    let list: serde_json::Value = serde_json::from_str(text).unwrap();
    let mut conf = list["plugins"][0].clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    let cfg = berth_cni::parse_config(conf.to_string().as_bytes()).unwrap();
    assert_eq!(cfg.pool.name, "pods");
    assert_eq!(cfg.pool.subnets.len(), 2);
    // The shipped configuration means the cluster's ledger: no agent, no allocation.
    assert_eq!(cfg.store, berth_cni::Store::Kubernetes);
    assert!(!cfg.store.allows_direct());
}
