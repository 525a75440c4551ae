//! Runtime environment and CNI_ARGS.

use berth_cni::env::{parse_env_map, required};
use berth_cni::{parse_args, CniError, Command};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn full(cmd: &str) -> HashMap<String, String> {
    vars(&[
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=u-1",
        ),
    ])
}

#[test]
fn add_parses_everything() {
    let env = parse_env_map(&full("ADD")).expect("env");
    assert_eq!(env.command, Command::Add);
    assert_eq!(env.container_id.as_deref(), Some("abc123"));
    assert_eq!(env.netns, Some(PathBuf::from("/var/run/netns/x")));
    assert_eq!(env.ifname.as_deref(), Some("eth0"));
    assert_eq!(
        env.path,
        vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
    );
    let owner = env.owner("net1").expect("owner");
    assert_eq!(owner.network, "net1");
    let pod = owner.pod.expect("pod");
    assert_eq!((pod.namespace.as_str(), pod.name.as_str()), ("ns", "p"));
    assert_eq!(pod.uid.as_deref(), Some("u-1"));
    assert_eq!(env.args.pod_infra_container_id.as_deref(), Some("abc123"));
}

#[test]
fn per_command_requirements() {
    // (command, variable removed, expect error?)
    let cases = [
        ("ADD", "CNI_CONTAINERID", true),
        ("ADD", "CNI_NETNS", true),
        ("ADD", "CNI_IFNAME", true),
        ("ADD", "CNI_PATH", false),
        ("ADD", "CNI_ARGS", false),
        ("DEL", "CNI_NETNS", false),
        ("DEL", "CNI_CONTAINERID", true),
        ("DEL", "CNI_IFNAME", true),
        ("CHECK", "CNI_NETNS", true),
        ("CHECK", "CNI_CONTAINERID", true),
        ("GC", "CNI_CONTAINERID", false),
        ("GC", "CNI_IFNAME", false),
        ("GC", "CNI_NETNS", false),
        ("GC", "CNI_PATH", true),
        ("STATUS", "CNI_CONTAINERID", false),
        ("STATUS", "CNI_PATH", false),
        ("VERSION", "CNI_CONTAINERID", false),
        ("VERSION", "CNI_PATH", false),
    ];
    for (cmd, var, fails) in cases {
        let mut v = full(cmd);
        v.remove(var);
        let r = parse_env_map(&v);
        assert_eq!(r.is_err(), fails, "{cmd} without {var}: {r:?}");
        if let Err(e) = r {
            assert_eq!(e.code, CniError::INVALID_ENVIRONMENT);
            assert!(e.msg.contains(var) && e.msg.contains(cmd), "{}", e.msg);
        }
        // An empty value counts as absent.
        let mut v = full(cmd);
        v.insert(var.to_string(), String::new());
        assert_eq!(parse_env_map(&v).is_err(), fails, "{cmd} with empty {var}");
    }
    assert!(required(Command::Del, "CNI_IFNAME"));
    assert!(!required(Command::Del, "CNI_NETNS"));
}

#[test]
fn only_command_is_needed_for_version() {
    let env = parse_env_map(&vars(&[("CNI_COMMAND", "VERSION")])).expect("env");
    assert_eq!(env.command, Command::Version);
    assert!(env.owner("n").is_none());
}

#[test]
fn env_error_table() {
    let cases: Vec<(&str, &str, &str, u32, Vec<&str>)> = vec![
        (
            "command missing",
            "CNI_COMMAND",
            "",
            4,
            vec!["CNI_COMMAND", "not set"],
        ),
        (
            "command unknown",
            "CNI_COMMAND",
            "add",
            4,
            vec!["CNI_COMMAND", "\"add\""],
        ),
        (
            "container id bad",
            "CNI_CONTAINERID",
            "-x y",
            4,
            vec!["CNI_CONTAINERID", "\"-x y\""],
        ),
        (
            "ifname too long",
            "CNI_IFNAME",
            "abcdefghijklmnop",
            4,
            vec!["CNI_IFNAME", "\"abcdefghijklmnop\""],
        ),
        (
            "ifname slash",
            "CNI_IFNAME",
            "a/b",
            4,
            vec!["CNI_IFNAME", "\"a/b\""],
        ),
        (
            "args no equals",
            "CNI_ARGS",
            "IgnoreUnknown=1;FOO",
            4,
            vec!["CNI_ARGS", "\"FOO\""],
        ),
        (
            "args bad ip",
            "CNI_ARGS",
            "IP=10.1.2.300",
            4,
            vec!["CNI_ARGS IP", "\"10.1.2.300\""],
        ),
        (
            "args bad second ip",
            "CNI_ARGS",
            "IP=10.1.2.3,fd00::zz",
            4,
            vec!["CNI_ARGS IP", "\"fd00::zz\""],
        ),
        (
            "args bad bool",
            "CNI_ARGS",
            "IgnoreUnknown=yes",
            4,
            vec!["IgnoreUnknown", "\"yes\""],
        ),
        (
            "args unknown",
            "CNI_ARGS",
            "MAC=aa:bb;K8S_POD_NAME=p",
            2,
            vec!["CNI_ARGS", "MAC", "IgnoreUnknown=1"],
        ),
        (
            "args unknown ignore off",
            "CNI_ARGS",
            "IgnoreUnknown=0;FOO=1",
            2,
            vec!["FOO"],
        ),
        (
            "args case sensitive",
            "CNI_ARGS",
            "ip=10.0.0.1",
            2,
            vec!["\"ip\""],
        ),
    ];
    for (what, var, val, code, needles) in cases {
        let mut v = full("ADD");
        v.insert(var.to_string(), val.to_string());
        let err = parse_env_map(&v).expect_err(what);
        assert_eq!(err.code, code, "{what}: {}", err.msg);
        for n in needles {
            assert!(err.msg.contains(n), "{what}: {:?} lacks {n:?}", err.msg);
        }
    }
}

#[test]
fn args_semantics_match_host_local() {
    // IgnoreUnknown applies wherever it appears.
    let a = parse_args("FOO=bar;IgnoreUnknown=true;IP=10.0.0.5").expect("args");
    assert!(a.ignore_unknown);
    assert_eq!(a.unknown, vec![("FOO".to_string(), "bar".to_string())]);
    assert_eq!(a.ips, vec!["10.0.0.5".parse::<IpAddr>().expect("ip")]);
    // Dual-stack IP list, trailing separator tolerated, later duplicate wins.
    let a = parse_args("IP=10.0.0.9;IP=10.0.0.5,fd00::5;").expect("args");
    assert_eq!(a.ips.len(), 2);
    assert_eq!(a.ips[1], "fd00::5".parse::<IpAddr>().expect("ip"));
    // K8S keys are known to Berth: no IgnoreUnknown needed.
    let a = parse_args("K8S_POD_NAMESPACE=a;K8S_POD_NAME=b").expect("args");
    assert_eq!(a.pod().expect("pod").name, "b");
    assert!(parse_args("").expect("empty").ips.is_empty());
}
