//! Results per version, round trips, and prevResult parsing.

use berth_cni::result::{build_result, parse_prev_result, IpConfig, IpamResult, PrevIp};
use berth_cni::{parse_config, parse_resolv_conf, CniVersion, Dns};
use berth_core::{Binding, BindingKind, Holder, Owner, PoolSpec};
use serde_json::json;
use std::net::IpAddr;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn pool() -> PoolSpec {
    let conf = json!({
        "cniVersion": "1.0.0", "name": "n", "type": "macvlan",
        "ipam": {"type": "berth-ipam",
            "ranges": [[{"subnet": "10.1.0.0/16", "gateway": "10.1.0.254"}], [{"subnet": "fd00::/64"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.9"}, {"dst": "::/0"}]}
    });
    parse_config(conf.to_string().as_bytes())
        .expect("pool")
        .pool
}

fn binding(addr: &str, prefix: u8) -> Binding {
    Binding {
        address: ip(addr),
        prefix_len: prefix,
        pool: "n".into(),
        node: "node1".into(),
        holder: Holder::Attachment(Owner {
            network: "n".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            pod: None,
        }),
        kind: BindingKind::Fixed,
        since: Default::default(),
    }
}

fn dns() -> Dns {
    parse_resolv_conf("nameserver 10.96.0.10\nsearch a.svc b.svc\noptions ndots:5\n")
}

#[test]
fn dual_stack_result_per_version() {
    let pool = pool();
    let bindings = [binding("10.1.0.5", 16), binding("fd00::5", 64)];
    for v in CniVersion::ALL {
        let r = build_result(v, &bindings, &pool, Some(dns())).expect("result");
        let got = r.to_value();
        let mut want = json!({
            "cniVersion": v.as_str(),
            "ips": [
                {"address": "10.1.0.5/16", "gateway": "10.1.0.254"},
                {"address": "fd00::5/64", "gateway": "fd00::1"}
            ],
            "routes": [
                {"dst": "0.0.0.0/0"},
                {"dst": "192.168.0.0/16", "gw": "10.1.0.9"},
                {"dst": "::/0"}
            ],
            "dns": {"nameservers": ["10.96.0.10"], "search": ["a.svc", "b.svc"], "options": ["ndots:5"]}
        });
        if v < CniVersion::V1_0_0 {
            want["ips"][0]["version"] = json!("4");
            want["ips"][1]["version"] = json!("6");
        }
        assert_eq!(got, want, "version {v}");
        // Round trip: text -> IpamResult -> identical.
        let text = r.to_json_string();
        let back = IpamResult::from_value(&serde_json::from_str(&text).expect("json"))
            .expect("parse back");
        assert_eq!(back, r, "round trip {v}");
        // And prevResult parsing sees the same addresses.
        let prev = parse_prev_result(&got).expect("prev");
        assert_eq!(
            prev,
            vec![
                PrevIp {
                    address: "10.1.0.5/16".parse().expect("net"),
                    gateway: Some(ip("10.1.0.254"))
                },
                PrevIp {
                    address: "fd00::5/64".parse().expect("net"),
                    gateway: Some(ip("fd00::1"))
                },
            ]
        );
    }
}

#[test]
fn no_dns_and_interface_kept() {
    let pool = pool();
    let r = build_result(
        CniVersion::V0_3_1,
        &[binding("10.1.0.7", 16)],
        &pool,
        Some(Dns::default()),
    )
    .expect("result");
    let v = r.to_value();
    assert!(v.get("dns").is_none());
    // A main plugin's result with interface indexes and extra fields still reads.
    let main = json!({"cniVersion": "0.3.1",
        "interfaces": [{"name": "eth0", "sandbox": "/x"}],
        "ips": [{"version": "4", "address": "10.1.0.7/16", "gateway": "10.1.0.254", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0", "mtu": 1400}], "dns": {}});
    let r = IpamResult::from_value(&main).expect("parse");
    assert_eq!(
        r.ips,
        vec![IpConfig {
            address: "10.1.0.7/16".parse().expect("net"),
            gateway: Some(ip("10.1.0.254")),
            interface: Some(0)
        }]
    );
    assert_eq!(
        r.with_version(CniVersion::V1_1_0).to_value()["ips"][0].get("version"),
        None
    );
}

#[test]
fn binding_outside_pool_is_code_7() {
    let err = build_result(
        CniVersion::V1_0_0,
        &[binding("172.16.0.1", 24)],
        &pool(),
        None,
    )
    .expect_err("outside");
    assert_eq!(err.code, 7);
    assert!(err.msg.contains("172.16.0.1"), "{}", err.msg);
}

#[test]
fn prev_result_old_formats_and_errors() {
    let old = json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1"}, "ip6": {"ip": "fd00::5/64"}});
    let prev = parse_prev_result(&old).expect("0.2.0");
    assert_eq!(prev.len(), 2);
    assert_eq!(prev[1].gateway, None);
    let cases = [
        (json!("x"), vec!["prevResult", "not an object"]),
        (
            json!({"ips": [{"address": "10.1.0.5"}]}),
            vec!["prevResult.ips[0].address", "\"10.1.0.5\""],
        ),
        (
            json!({"ips": [{"gateway": "10.1.0.1"}]}),
            vec!["prevResult.ips[0].address", "missing"],
        ),
        (
            json!({"ips": [{"address": "10.1.0.5/16", "gateway": "g"}]}),
            vec!["prevResult.ips[0].gateway", "\"g\""],
        ),
        (
            json!({"ips": [{"address": "10.1.0.5/16", "version": "6"}]}),
            vec!["prevResult.ips[0].version", "\"6\""],
        ),
        (
            json!({"ips": [1]}),
            vec!["prevResult.ips[0]", "not an object"],
        ),
    ];
    for (v, needles) in cases {
        let e = parse_prev_result(&v).expect_err("bad prevResult");
        assert_eq!(e.code, 6, "{}", e.msg);
        for n in needles {
            assert!(e.msg.contains(n), "{:?} lacks {n:?}", e.msg);
        }
    }
    let e = IpamResult::from_value(&json!({"cniVersion": "0.2.0"})).expect_err("old");
    assert_eq!(e.code, 1);
    let e = IpamResult::from_value(&json!({"cniVersion": "1.0.0", "ips": 3})).expect_err("bad");
    assert_eq!(e.code, 6);
}

#[test]
fn resolv_conf_parsing() {
    let d = parse_resolv_conf(
        "# comment\n; other\nnameserver 10.0.0.1\nnameserver fd00::53\ndomain example.com\nsearch a b\nsearch c d\noptions ndots:5 timeout:1\noptions rotate\nsortlist 1.2.3.4\n",
    );
    assert_eq!(d.nameservers, vec!["10.0.0.1", "fd00::53"]);
    assert_eq!(d.domain.as_deref(), Some("example.com"));
    assert_eq!(d.search, vec!["c", "d"]);
    assert_eq!(d.options, vec!["ndots:5", "timeout:1", "rotate"]);
    assert!(parse_resolv_conf("").is_empty());
}
