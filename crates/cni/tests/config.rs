//! Network configuration: the kube-ipam and ranges forms, defaults, and every error path.

use berth_cni::config::{Store, DEFAULT_AGENT_SOCKET, DEFAULT_DATA_DIR};
use berth_cni::{parse_args, parse_config, CniError, IpamConfig};
use berth_core::{AddrRange, Family, Route};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::PathBuf;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// A full configuration around an `ipam` object.
fn with_ipam(ipam: Value) -> Value {
    json!({"cniVersion": "1.0.0", "name": "net1", "type": "macvlan", "ipam": ipam})
}

fn parse(v: &Value) -> Result<IpamConfig, CniError> {
    parse_config(v.to_string().as_bytes())
}

fn ok(v: &Value) -> IpamConfig {
    match parse(v) {
        Ok(c) => c,
        Err(e) => panic!("{v} should parse: {e}"),
    }
}

#[test]
fn minimal_kube_ipam_form_gets_defaults() {
    let cfg = ok(&with_ipam(
        json!({"type": "berth-ipam", "subnet": "10.1.0.0/24"}),
    ));
    assert_eq!(
        cfg.pool.name, "net1",
        "pool name defaults to the network name"
    );
    let s = &cfg.pool.subnets[0];
    assert_eq!(s.gateway, Some(ip("10.1.0.1")), "gateway defaults to .1");
    assert!(s.ranges.is_empty(), "whole subnet is dynamic");
    assert_eq!(s.block_prefix(), 26);
    assert!(!s.fixed_anywhere);
    // No ledger named: whatever this node's agent serves; no direct path.
    assert_eq!(cfg.store, Store::Agent);
    assert!(!cfg.store.allows_direct());
    assert_eq!(cfg.agent_socket, PathBuf::from(DEFAULT_AGENT_SOCKET));
}

/// `ipam.ledger` names the ledger; `etcdConfig` alone keeps kube-ipam's meaning.
#[test]
fn ledger_key_names_the_ledger() {
    let with = |extra: Value| {
        let mut o = json!({"type": "berth-ipam", "subnet": "10.1.0.0/24"});
        if let (Some(m), Value::Object(e)) = (o.as_object_mut(), extra) {
            m.extend(e);
        }
        ok(&with_ipam(o)).store
    };
    assert_eq!(with(json!({"ledger": "kubernetes"})), Store::Kubernetes);
    assert_eq!(
        with(json!({"ledger": "embedded"})),
        Store::Embedded {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR)
        }
    );
    assert_eq!(
        with(json!({"ledger": "embedded", "dataDir": "/d"})),
        Store::Embedded {
            data_dir: "/d".into()
        }
    );
    let etcd = Store::Etcd {
        endpoints: vec!["http://e:2379".into()],
        cert: None,
        key: None,
        ca: None,
    };
    assert_eq!(
        with(json!({"ledger": "etcd", "etcdConfig": {"etcdURL": "http://e:2379"}})),
        etcd
    );
    assert_eq!(
        with(json!({"etcdConfig": {"etcdURL": "http://e:2379"}})),
        etcd
    );
    // A dataDir alone does not make a direct path: the agent's ledger is meant.
    assert_eq!(with(json!({"dataDir": "/d"})), Store::Agent);
    for (store, direct) in [
        (Store::Agent, false),
        (Store::Kubernetes, false),
        (with(json!({"ledger": "embedded"})), true),
        (etcd, true),
    ] {
        assert_eq!(store.allows_direct(), direct, "{store:?}");
    }
}

#[test]
fn berth_fields_are_read() {
    let cfg = ok(&with_ipam(json!({
        "type": "berth-ipam", "subnet": "10.1.0.0/16",
        "ledger": "embedded", "dataDir": "/data/b", "agentSocket": "/tmp/a.sock", "nodeName": "n1",
        "blockSize": 24, "fixedAnywhere": true,
        "exclude": ["10.1.9.0/24", "10.1.0.7"],
        "ranges": [[{"subnet": "fd00::/64"}]], "blockSizeV6": 120
    })));
    assert_eq!(
        cfg.store,
        Store::Embedded {
            data_dir: "/data/b".into()
        }
    );
    assert_eq!(cfg.agent_socket, PathBuf::from("/tmp/a.sock"));
    assert_eq!(cfg.node_name.as_deref(), Some("n1"));
    let v4 = &cfg.pool.subnets[0];
    assert_eq!(v4.block_prefix(), 24);
    assert!(v4.fixed_anywhere);
    assert_eq!(
        v4.excludes,
        vec![
            "10.1.9.0/24".parse().expect("net"),
            "10.1.0.7/32".parse().expect("net")
        ]
    );
    let v6 = &cfg.pool.subnets[1];
    assert_eq!(v6.block_prefix(), 120);
    assert_eq!(v6.gateway, Some(ip("fd00::1")));
    assert!(v6.excludes.is_empty());
}

#[test]
fn block_size_never_exceeds_the_subnet() {
    let cfg = ok(&with_ipam(
        json!({"type": "berth-ipam", "subnet": "10.1.0.0/28", "blockSize": 24}),
    ));
    assert_eq!(cfg.pool.subnets[0].block_prefix(), 28);
}

#[test]
fn one_sided_ranges_default_the_other_end() {
    let cfg = ok(&with_ipam(
        json!({"type": "kube-ipam", "subnet": "10.1.0.0/24", "rangeStart": "10.1.0.100"}),
    ));
    assert_eq!(
        cfg.pool.subnets[0].ranges,
        vec![AddrRange::new(ip("10.1.0.100"), ip("10.1.0.254")).expect("r")]
    );
    let cfg = ok(&with_ipam(
        json!({"type": "kube-ipam", "subnet": "fd00::/120", "rangeEnd": "fd00::20"}),
    ));
    assert_eq!(
        cfg.pool.subnets[0].ranges,
        vec![AddrRange::new(ip("fd00::1"), ip("fd00::20")).expect("r")]
    );
}

#[test]
fn host_bits_in_subnet_are_masked_like_kube_ipam() {
    let cfg = ok(&with_ipam(
        json!({"type": "kube-ipam", "subnet": "10.1.0.9/24"}),
    ));
    assert_eq!(
        cfg.pool.subnets[0].cidr,
        "10.1.0.0/24".parse().expect("net")
    );
}

#[test]
fn ranges_form_dual_stack_and_same_family_merge() {
    // host-local README example plus a second IPv4 range set: Berth merges same-family sets.
    let cfg = ok(&with_ipam(json!({
        "type": "berth-ipam",
        "ranges": [
            [
                {"subnet": "10.10.0.0/16", "rangeStart": "10.10.1.20", "rangeEnd": "10.10.3.50", "gateway": "10.10.0.254"},
                {"subnet": "172.16.5.0/24"}
            ],
            [{"subnet": "3ffe:ffff:0:01ff::/64", "rangeStart": "3ffe:ffff:0:01ff::0010", "rangeEnd": "3ffe:ffff:0:01ff::0020"}],
            [{"subnet": "10.20.0.0/24", "fixedStart": "10.20.0.2", "fixedEnd": "10.20.0.9"}]
        ],
        "routes": [
            {"dst": "0.0.0.0/0"},
            {"dst": "192.168.0.0/16", "gw": "10.10.5.1"},
            {"dst": "3ffe:ffff:0:01ff::1/64"}
        ],
        "dataDir": "/run/my-orchestrator/container-ipam-state"
    })));
    let cidrs: Vec<String> = cfg
        .pool
        .subnets
        .iter()
        .map(|s| s.cidr.to_string())
        .collect();
    assert_eq!(
        cidrs,
        [
            "10.10.0.0/16",
            "172.16.5.0/24",
            "3ffe:ffff:0:1ff::/64",
            "10.20.0.0/24"
        ]
    );
    assert_eq!(cfg.pool.families(), vec![Family::V4, Family::V6]);
    let s0 = &cfg.pool.subnets[0];
    assert_eq!(s0.gateway, Some(ip("10.10.0.254")));
    assert_eq!(s0.routes.len(), 2);
    assert_eq!(
        s0.routes[1],
        Route {
            dst: "192.168.0.0/16".parse().expect("net"),
            gw: Some(ip("10.10.5.1"))
        }
    );
    assert_eq!(cfg.pool.subnets[1].gateway, Some(ip("172.16.5.1")));
    assert_eq!(cfg.pool.subnets[2].routes.len(), 1);
    assert_eq!(
        cfg.pool.subnets[3].fixed,
        vec![AddrRange::new(ip("10.20.0.2"), ip("10.20.0.9")).expect("r")]
    );
    // host-local's dataDir names no Berth ledger: the agent's is meant.
    assert_eq!(cfg.store, Store::Agent);
}

#[test]
fn kube_ipam_multiple_subnets_examples() {
    // docs/multiple-subnets.md, example 3.
    let cfg = ok(&with_ipam(json!({
        "type": "kube-ipam",
        "ranges": [
            [
                {"subnet": "10.188.0.0/16", "rangeStart": "10.188.0.10", "rangeEnd": "10.188.0.100", "gateway": "10.188.0.1"},
                {"subnet": "10.199.0.0/16"}
            ],
            [{"subnet": "10.166.0.0/16", "rangeStart": "10.166.0.30", "rangeEnd": "10.166.0.200"}]
        ]
    })));
    assert_eq!(cfg.pool.subnets.len(), 3);
    assert!(cfg.pool.subnets.iter().all(|s| s.family() == Family::V4));
}

#[test]
fn range_objects_for_one_subnet_merge_into_ranges() {
    let cfg = ok(&with_ipam(json!({
        "type": "berth-ipam",
        "ranges": [[
            {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.20"},
            {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.50", "rangeEnd": "10.1.0.60", "gateway": "10.1.0.254"}
        ]]
    })));
    let s = &cfg.pool.subnets[0];
    assert_eq!(s.ranges.len(), 2);
    assert_eq!(s.gateway, Some(ip("10.1.0.254")));
    // A range object without bounds widens the subnet to all of it.
    let cfg = ok(&with_ipam(json!({
        "type": "berth-ipam",
        "ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10"}, {"subnet": "10.1.0.0/24"}]]
    })));
    assert!(cfg.pool.subnets[0].ranges.is_empty());
}

#[test]
fn single_subnet_goes_before_ranges_and_runtime_ranges_first() {
    let cfg = ok(&json!({
        "cniVersion": "1.1.0", "name": "n", "type": "bridge",
        "runtimeConfig": {"ipRanges": [[{"subnet": "10.3.0.0/24"}]]},
        "ipam": {"type": "berth-ipam", "subnet": "10.1.0.0/24", "ranges": [[{"subnet": "10.2.0.0/24"}]]}
    }));
    let cidrs: Vec<String> = cfg
        .pool
        .subnets
        .iter()
        .map(|s| s.cidr.to_string())
        .collect();
    assert_eq!(cidrs, ["10.3.0.0/24", "10.1.0.0/24", "10.2.0.0/24"]);
}

#[test]
fn unknown_fields_are_ignored() {
    let cfg = ok(&json!({
        "cniVersion": "0.4.0", "name": "n", "type": "macvlan", "master": "eth0", "mtu": 1500,
        "ipam": {"type": "kube-ipam", "subnet": "10.1.0.0/24", "somethingElse": {"a": 1},
                 "etcdConfig": {"etcdURL": "http://e:2379", "kubeConfig": "/x"}}
    }));
    assert_eq!(
        cfg.store,
        Store::Etcd {
            endpoints: vec!["http://e:2379".into()],
            cert: None,
            key: None,
            ca: None
        }
    );
}

#[test]
fn etcd_ca_alternative_spelling() {
    let cfg = ok(&with_ipam(
        json!({"type": "kube-ipam", "subnet": "10.1.0.0/24",
        "etcdConfig": {"etcdURL": " https://a:2379 , https://b:2379,", "etcdTrustedCAFile": "/ca.pem"}}),
    ));
    assert_eq!(
        cfg.store,
        Store::Etcd {
            endpoints: vec!["https://a:2379".into(), "https://b:2379".into()],
            cert: None,
            key: None,
            ca: Some("/ca.pem".into())
        }
    );
}

#[test]
fn requested_ips_runtime_config_args_and_env() {
    let v = json!({
        "cniVersion": "1.0.0", "name": "n", "type": "macvlan",
        "runtimeConfig": {"ips": ["10.1.0.5/24"]},
        "args": {"cni": {"ips": ["fd00::5", "10.1.0.5"]}},
        "ipam": {"type": "berth-ipam", "ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]}
    });
    let mut cfg = ok(&v);
    assert_eq!(cfg.requested_ips, vec![ip("10.1.0.5"), ip("fd00::5")]);
    assert_eq!(cfg.requested(Family::V6), Some(ip("fd00::5")));
    // The same address from CNI_ARGS counts once.
    let args = parse_args("IgnoreUnknown=1;IP=10.1.0.5").expect("args");
    cfg.merge_env_ips(&args).expect("merge");
    assert_eq!(cfg.requested_ips.len(), 2);
    // A different IPv4 address from CNI_ARGS conflicts.
    let args = parse_args("IP=10.1.0.6").expect("args");
    let err = cfg.merge_env_ips(&args).expect_err("two IPv4");
    assert_eq!(err.code, 7);
    assert!(
        err.msg.contains("CNI_ARGS IP") && err.msg.contains("10.1.0.6"),
        "{}",
        err.msg
    );
    // Outside the pool.
    let mut cfg = ok(&v);
    let err = cfg
        .merge_env_ips(&parse_args("IP=192.168.0.1").expect("args"))
        .expect_err("outside");
    assert_eq!(err.code, 7);
    assert!(
        err.msg.contains("192.168.0.1") && err.msg.contains("not in any subnet"),
        "{}",
        err.msg
    );
}

#[test]
fn valid_attachments_and_prev_result_are_kept() {
    let cfg = ok(&json!({
        "cniVersion": "1.1.0", "name": "n", "type": "macvlan",
        "cni.dev/valid-attachments": [{"containerID": "abc", "ifname": "eth0"}],
        "prevResult": {"cniVersion": "1.1.0", "ips": [{"address": "10.1.0.5/24"}]},
        "ipam": {"type": "berth-ipam", "subnet": "10.1.0.0/24"}
    }));
    assert_eq!(cfg.valid_attachments.len(), 1);
    assert_eq!(cfg.valid_attachments[0].container_id, "abc");
    assert_eq!(cfg.valid_attachments[0].ifname, "eth0");
    assert!(cfg.prev_result.is_some());
}

#[test]
fn ipam_config_round_trips_through_serde() {
    let cfg = ok(&with_ipam(
        json!({"type": "kube-ipam", "subnet": "10.1.0.0/24",
        "etcdConfig": {"etcdURL": "https://a:2379", "etcdCertFile": "/c", "etcdKeyFile": "/k"}}),
    ));
    let text = serde_json::to_string(&cfg).expect("ser");
    let back: IpamConfig = serde_json::from_str(&text).expect("de");
    assert_eq!(back, cfg);
}

/// Every error path: (configuration, expected code, substrings the message must contain).
#[test]
fn error_table() {
    let base = |ipam: Value| with_ipam(ipam);
    let k = |extra: Value| {
        let mut o = json!({"type": "kube-ipam", "subnet": "10.1.2.0/24"});
        if let (Some(m), Value::Object(e)) = (o.as_object_mut(), extra) {
            m.extend(e);
        }
        with_ipam(o)
    };
    let cases: Vec<(&str, Value, u32, Vec<&str>)> = vec![
        ("not an object", json!([1, 2]), 6, vec!["not a JSON object"]),
        (
            "version missing",
            json!({"name": "n", "type": "t", "ipam": {}}),
            1,
            vec!["cniVersion", "missing"],
        ),
        (
            "version unsupported",
            json!({"cniVersion": "0.2.0", "name": "n", "type": "t"}),
            1,
            vec!["cniVersion", "\"0.2.0\"", "1.1.0"],
        ),
        (
            "version wrong type",
            json!({"cniVersion": 1, "name": "n", "type": "t"}),
            7,
            vec!["cniVersion", "1", "a number"],
        ),
        (
            "name missing",
            json!({"cniVersion": "1.0.0", "type": "t", "ipam": {}}),
            7,
            vec!["name", "missing"],
        ),
        (
            "name invalid",
            json!({"cniVersion": "1.0.0", "name": "-bad net", "type": "t"}),
            7,
            vec!["name", "\"-bad net\""],
        ),
        (
            "type missing",
            json!({"cniVersion": "1.0.0", "name": "n", "ipam": {}}),
            7,
            vec!["type", "missing"],
        ),
        (
            "ipam missing",
            json!({"cniVersion": "1.0.0", "name": "n", "type": "t"}),
            7,
            vec!["ipam", "missing"],
        ),
        (
            "ipam not object",
            json!({"cniVersion": "1.0.0", "name": "n", "type": "t", "ipam": "x"}),
            7,
            vec!["ipam", "\"x\"", "an object"],
        ),
        (
            "ipam.type missing",
            base(json!({"subnet": "10.0.0.0/24"})),
            7,
            vec!["ipam.type", "missing"],
        ),
        (
            "ipam.type other",
            base(json!({"type": "host-local", "subnet": "10.0.0.0/24"})),
            7,
            vec!["ipam.type", "\"host-local\"", "berth-ipam"],
        ),
        (
            "no subnet",
            base(json!({"type": "kube-ipam"})),
            7,
            vec!["ipam.subnet", "ipam.ranges"],
        ),
        (
            "range without subnet",
            base(json!({"type": "kube-ipam", "rangeStart": "10.0.0.1"})),
            7,
            vec!["ipam.rangeStart", "10.0.0.1", "without ipam.subnet"],
        ),
        (
            "subnet not cidr",
            base(json!({"type": "kube-ipam", "subnet": "10.188.0.0"})),
            7,
            vec!["ipam.subnet", "\"10.188.0.0\"", "CIDR"],
        ),
        (
            "subnet garbage",
            base(json!({"type": "kube-ipam", "subnet": "ten/8"})),
            7,
            vec!["ipam.subnet", "\"ten/8\""],
        ),
        (
            "subnet too small",
            base(json!({"type": "kube-ipam", "subnet": "10.0.0.0/31"})),
            7,
            vec!["ipam.subnet", "10.0.0.0/31", "too small"],
        ),
        (
            "subnet wrong type",
            base(json!({"type": "kube-ipam", "subnet": 10})),
            7,
            vec!["ipam.subnet", "10", "a number"],
        ),
        (
            "rangeStart not ip",
            k(json!({"rangeStart": "10.1.2.300"})),
            7,
            vec![
                "ipam.rangeStart",
                "\"10.1.2.300\"",
                "not an IP address",
                "dotted IPv4 or IPv6",
            ],
        ),
        (
            "rangeEnd not ip",
            k(json!({"rangeEnd": "x"})),
            7,
            vec!["ipam.rangeEnd", "\"x\""],
        ),
        (
            "fixedStart not ip",
            k(json!({"fixedStart": "1.2.3", "fixedEnd": "10.1.2.9"})),
            7,
            vec!["ipam.fixedStart", "\"1.2.3\""],
        ),
        (
            "gateway not ip",
            k(json!({"gateway": "gw"})),
            7,
            vec!["ipam.gateway", "\"gw\""],
        ),
        (
            "gateway other family",
            k(json!({"gateway": "fd00::1"})),
            7,
            vec!["ipam.gateway", "\"fd00::1\"", "IPv6", "ipam.subnet", "IPv4"],
        ),
        (
            "gateway outside",
            k(json!({"gateway": "10.9.9.9"})),
            7,
            vec!["ipam.gateway", "\"10.9.9.9\"", "not inside", "10.1.2.0/24"],
        ),
        (
            "rangeStart outside",
            k(json!({"rangeStart": "10.1.3.1"})),
            7,
            vec!["ipam.rangeStart", "\"10.1.3.1\"", "not inside"],
        ),
        (
            "range reversed",
            k(json!({"rangeStart": "10.1.2.50", "rangeEnd": "10.1.2.10"})),
            7,
            vec![
                "ipam.rangeStart",
                "10.1.2.50",
                "ipam.rangeEnd",
                "10.1.2.10",
                "swap",
            ],
        ),
        (
            "fixed reversed",
            k(json!({"fixedStart": "10.1.2.50", "fixedEnd": "10.1.2.10"})),
            7,
            vec!["ipam.fixedStart", "10.1.2.50", "swap"],
        ),
        (
            "fixedStart alone",
            k(json!({"fixedStart": "10.1.2.5"})),
            7,
            vec!["ipam.fixedStart", "\"10.1.2.5\"", "ipam.fixedEnd"],
        ),
        (
            "fixedEnd alone",
            k(json!({"fixedEnd": "10.1.2.6"})),
            7,
            vec!["ipam.fixedEnd", "\"10.1.2.6\"", "ipam.fixedStart"],
        ),
        (
            "fixed overlaps dynamic",
            k(
                json!({"fixedStart": "10.1.2.5", "fixedEnd": "10.1.2.20", "rangeStart": "10.1.2.10", "rangeEnd": "10.1.2.30"}),
            ),
            7,
            vec!["10.1.2.10-10.1.2.30", "10.1.2.5-10.1.2.20", "overlaps"],
        ),
        (
            "block size too large",
            base(json!({"type": "kube-ipam", "subnet": "10.0.0.0/8", "blockSize": 8})),
            7,
            vec!["blockSize /8", "10.0.0.0/8", "16"],
        ),
        (
            "block size past family",
            k(json!({"blockSize": 33})),
            7,
            vec!["blockSize /33", "10.1.2.0/24", "32"],
        ),
        (
            "block size not number",
            k(json!({"blockSize": "26"})),
            7,
            vec!["ipam.blockSize", "\"26\""],
        ),
        (
            "block size too big number",
            k(json!({"blockSize": 300})),
            7,
            vec!["ipam.blockSize", "300"],
        ),
        (
            "fixedAnywhere not bool",
            k(json!({"fixedAnywhere": "yes"})),
            7,
            vec!["ipam.fixedAnywhere", "\"yes\""],
        ),
        (
            "route dst missing",
            k(json!({"routes": [{"gw": "10.1.2.1"}]})),
            7,
            vec!["ipam.routes[0].dst", "missing"],
        ),
        (
            "route dst bad",
            k(json!({"routes": [{"dst": "0.0.0.0"}]})),
            7,
            vec!["ipam.routes[0].dst", "\"0.0.0.0\"", "CIDR"],
        ),
        (
            "route gw bad",
            k(json!({"routes": [{"dst": "0.0.0.0/0", "gw": "nope"}]})),
            7,
            vec!["ipam.routes[0].gw", "\"nope\""],
        ),
        (
            "route gw family",
            k(json!({"routes": [{"dst": "0.0.0.0/0", "gw": "fd00::1"}]})),
            7,
            vec!["ipam.routes[0].gw", "\"fd00::1\"", "IPv6"],
        ),
        (
            "route family absent",
            k(json!({"routes": [{"dst": "::/0"}]})),
            7,
            vec!["ipam.routes[0].dst", "::/0", "no subnet is IPv6"],
        ),
        (
            "routes not list",
            k(json!({"routes": {"dst": "0.0.0.0/0"}})),
            7,
            vec!["ipam.routes", "a list"],
        ),
        (
            "exclude outside",
            k(json!({"exclude": ["192.168.0.0/24"]})),
            7,
            vec![
                "ipam.exclude[0]",
                "\"192.168.0.0/24\"",
                "not inside any subnet",
            ],
        ),
        (
            "exclude bad",
            k(json!({"exclude": ["10.1.2.x"]})),
            7,
            vec!["ipam.exclude[0]", "\"10.1.2.x\""],
        ),
        (
            "exclude not string",
            k(json!({"exclude": [5]})),
            7,
            vec!["ipam.exclude[0]", "5"],
        ),
        (
            "etcd url missing",
            k(json!({"etcdConfig": {"etcdCertFile": "/c"}})),
            7,
            vec!["ipam.etcdConfig.etcdURL", "missing"],
        ),
        (
            "etcd url empty list",
            k(json!({"etcdConfig": {"etcdURL": " , "}})),
            7,
            vec!["ipam.etcdConfig.etcdURL", "\" , \""],
        ),
        (
            "etcd cert without key",
            k(json!({"etcdConfig": {"etcdURL": "https://a:2379", "etcdCertFile": "/c"}})),
            7,
            vec![
                "ipam.etcdConfig.etcdCertFile",
                "ipam.etcdConfig.etcdKeyFile",
            ],
        ),
        (
            "etcd ca disagree",
            k(
                json!({"etcdConfig": {"etcdURL": "https://a:2379", "etcdTrustedCAFileFile": "/a", "etcdTrustedCAFile": "/b"}}),
            ),
            7,
            vec![
                "etcdTrustedCAFileFile",
                "\"/a\"",
                "etcdTrustedCAFile",
                "\"/b\"",
            ],
        ),
        (
            "etcdConfig not object",
            k(json!({"etcdConfig": "https://a"})),
            7,
            vec!["ipam.etcdConfig", "an object"],
        ),
        (
            "ranges not list",
            base(json!({"type": "kube-ipam", "ranges": {"subnet": "10.0.0.0/8"}})),
            7,
            vec!["ipam.ranges", "a list"],
        ),
        (
            "range set not list",
            base(json!({"type": "kube-ipam", "ranges": [{"subnet": "10.0.0.0/8"}]})),
            7,
            vec!["ipam.ranges[0]", "a list of range objects"],
        ),
        (
            "range set empty",
            base(json!({"type": "kube-ipam", "ranges": [[]]})),
            7,
            vec!["ipam.ranges[0]", "empty"],
        ),
        (
            "range object no subnet",
            base(json!({"type": "kube-ipam", "ranges": [[{"rangeStart": "10.0.0.1"}]]})),
            7,
            vec!["ipam.ranges[0][0].subnet", "missing"],
        ),
        (
            "range object bad ip",
            base(
                json!({"type": "kube-ipam", "ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.1.0/24", "gateway": "10.0.1.300"}]]}),
            ),
            7,
            vec!["ipam.ranges[0][1].gateway", "\"10.0.1.300\""],
        ),
        (
            "range set mixed family",
            base(
                json!({"type": "kube-ipam", "ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}),
            ),
            7,
            vec!["ipam.ranges[0]", "10.0.0.0/24", "fd00::/64"],
        ),
        (
            "gateway conflict",
            base(
                json!({"type": "kube-ipam", "ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.0.0.1"}], [{"subnet": "10.0.0.0/24", "gateway": "10.0.0.2"}]]}),
            ),
            7,
            vec![
                "ipam.ranges[1][0].gateway",
                "\"10.0.0.2\"",
                "ipam.ranges[0][0].gateway",
                "\"10.0.0.1\"",
            ],
        ),
        (
            "subnets overlap",
            base(
                json!({"type": "kube-ipam", "ranges": [[{"subnet": "10.0.0.0/16"}], [{"subnet": "10.0.1.0/24"}]]}),
            ),
            7,
            vec!["10.0.0.0/16", "10.0.1.0/24", "overlap"],
        ),
        (
            "runtime ips bad",
            json!({"cniVersion": "1.0.0", "name": "n", "type": "t", "runtimeConfig": {"ips": ["10.1.2.300/24"]}, "ipam": {"type": "kube-ipam", "subnet": "10.1.2.0/24"}}),
            7,
            vec!["runtimeConfig.ips[0]", "\"10.1.2.300/24\""],
        ),
        (
            "runtime ips not list",
            json!({"cniVersion": "1.0.0", "name": "n", "type": "t", "runtimeConfig": {"ips": "10.1.2.3"}, "ipam": {"type": "kube-ipam", "subnet": "10.1.2.0/24"}}),
            7,
            vec!["runtimeConfig.ips", "a list"],
        ),
        (
            "runtime ips two v4",
            json!({"cniVersion": "1.0.0", "name": "n", "type": "t", "runtimeConfig": {"ips": ["10.1.2.3", "10.1.2.4/24"]}, "ipam": {"type": "kube-ipam", "subnet": "10.1.2.0/24"}}),
            7,
            vec![
                "runtimeConfig.ips[1]",
                "\"10.1.2.4\"",
                "runtimeConfig.ips[0]",
                "\"10.1.2.3\"",
                "one address per family",
            ],
        ),
        (
            "runtime ip outside",
            json!({"cniVersion": "1.0.0", "name": "n", "type": "t", "runtimeConfig": {"ips": ["10.9.9.9"]}, "ipam": {"type": "kube-ipam", "subnet": "10.1.2.0/24"}}),
            7,
            vec![
                "runtimeConfig.ips[0]",
                "\"10.9.9.9\"",
                "not in any subnet",
                "10.1.2.0/24",
            ],
        ),
        (
            "args ips bad",
            json!({"cniVersion": "1.0.0", "name": "n", "type": "t", "args": {"cni": {"ips": ["bad"]}}, "ipam": {"type": "kube-ipam", "subnet": "10.1.2.0/24"}}),
            7,
            vec!["args.cni.ips[0]", "\"bad\""],
        ),
        (
            "valid attachments not list",
            json!({"cniVersion": "1.1.0", "name": "n", "type": "t", "cni.dev/valid-attachments": {}, "ipam": {"type": "kube-ipam", "subnet": "10.1.2.0/24"}}),
            7,
            vec!["cni.dev/valid-attachments", "a list"],
        ),
        (
            "unknown ledger",
            k(json!({"ledger": "redis"})),
            7,
            vec!["ipam.ledger", "\"redis\"", "kubernetes", "etcd", "embedded"],
        ),
        (
            "ledger not a string",
            k(json!({"ledger": 1})),
            7,
            vec!["ipam.ledger"],
        ),
        (
            "etcd ledger without etcdConfig",
            k(json!({"ledger": "etcd"})),
            7,
            vec!["ipam.ledger", "\"etcd\"", "ipam.etcdConfig", "missing"],
        ),
        (
            "kubernetes ledger with dataDir",
            k(json!({"ledger": "kubernetes", "dataDir": "/d"})),
            7,
            vec!["ipam.dataDir", "\"kubernetes\"", "embedded"],
        ),
        (
            "kubernetes ledger with etcdConfig",
            k(json!({"ledger": "kubernetes", "etcdConfig": {"etcdURL": "http://e:2379"}})),
            7,
            vec!["ipam.etcdConfig", "\"kubernetes\""],
        ),
        (
            "embedded ledger with etcdConfig",
            k(json!({"ledger": "embedded", "etcdConfig": {"etcdURL": "http://e:2379"}})),
            7,
            vec!["ipam.etcdConfig", "\"embedded\""],
        ),
        (
            "etcdConfig with dataDir",
            k(json!({"etcdConfig": {"etcdURL": "http://e:2379"}, "dataDir": "/d"})),
            7,
            vec!["ipam.dataDir", "\"etcd\""],
        ),
        (
            "no agent and no ledger of its own",
            k(json!({"agentSocket": ""})),
            7,
            vec![
                "ipam.agentSocket",
                "never ask the agent",
                "\"ledger\": \"embedded\"",
            ],
        ),
        (
            "no agent for the kubernetes ledger",
            k(json!({"agentSocket": "", "ledger": "kubernetes"})),
            7,
            vec!["ipam.agentSocket", "kubernetes", "only the berth agent"],
        ),
        (
            "valid attachment no ifname",
            json!({"cniVersion": "1.1.0", "name": "n", "type": "t", "cni.dev/valid-attachments": [{"containerID": "a"}], "ipam": {"type": "kube-ipam", "subnet": "10.1.2.0/24"}}),
            7,
            vec!["cni.dev/valid-attachments[0].ifname", "missing"],
        ),
    ];
    for (what, conf, code, needles) in cases {
        let err = match parse(&conf) {
            Ok(c) => panic!("{what}: {conf} parsed to {c:?}"),
            Err(e) => e,
        };
        eprintln!("{what}: [{}] {}", err.code, err.msg);
        assert_eq!(err.code, code, "{what}: {}", err.msg);
        for n in needles {
            assert!(
                err.msg.contains(n),
                "{what}: message {:?} lacks {n:?}",
                err.msg
            );
        }
    }
}

#[test]
fn malformed_json_is_code_6_with_position() {
    let err = parse_config(b"{\"cniVersion\": \"1.0.0\",\n \"name\": }").expect_err("bad");
    assert_eq!(err.code, 6);
    assert!(err.msg.contains("line 2"), "{}", err.msg);
    let err = parse_config(b"").expect_err("empty");
    assert_eq!(err.code, 6);
}

#[test]
fn peek_version_and_node_name() {
    use berth_cni::config::peek_version;
    use berth_cni::CniVersion;
    assert_eq!(
        peek_version(b"{\"cniVersion\": \"0.4.0\", \"name\": 5}"),
        Some(CniVersion::V0_4_0)
    );
    assert_eq!(peek_version(b"{\"cniVersion\": \"0.2.0\"}"), None);
    assert_eq!(peek_version(b"{"), None);
    let cfg = ok(&with_ipam(
        json!({"type": "berth-ipam", "subnet": "10.1.0.0/24"}),
    ));
    assert_eq!(cfg.node_name_or("host-a"), "host-a");
    let cfg = ok(&with_ipam(
        json!({"type": "berth-ipam", "subnet": "10.1.0.0/24", "nodeName": "n9"}),
    ));
    assert_eq!(cfg.node_name_or("host-a"), "n9");
}

#[test]
fn command_checks_on_config() {
    use berth_cni::Command;
    let v = |ver: &str, prev: bool| {
        let mut c = json!({"cniVersion": ver, "name": "n", "type": "t",
            "ipam": {"type": "berth-ipam", "subnet": "10.1.0.0/24"}});
        if prev {
            c["prevResult"] = json!({"cniVersion": ver, "ips": []});
        }
        ok(&c)
    };
    assert!(v("0.4.0", true).check_command(Command::Check).is_ok());
    assert_eq!(
        v("0.3.1", true)
            .check_command(Command::Check)
            .map_err(|e| e.code),
        Err(1)
    );
    let e = v("1.0.0", false)
        .check_command(Command::Check)
        .expect_err("no prev");
    assert_eq!(e.code, 7);
    assert!(e.msg.contains("prevResult"), "{}", e.msg);
    assert!(v("1.0.0", false).check_command(Command::Del).is_ok());
    assert_eq!(
        v("1.0.0", false)
            .check_command(Command::Gc)
            .map_err(|e| e.code),
        Err(1)
    );
    assert!(v("1.1.0", false).check_command(Command::Status).is_ok());
}
