//! Versions, VERSION reply and per-command version gates.

use berth_cni::version::{check_command, compare, version_info, version_reply};
use berth_cni::{CniError, CniVersion, Command};
use std::cmp::Ordering;

#[test]
fn parse_and_order() {
    for v in CniVersion::ALL {
        assert_eq!(CniVersion::parse(v.as_str()).expect("parse"), v);
        assert_eq!(v.to_string(), v.as_str());
    }
    assert!(CniVersion::V0_3_0 < CniVersion::V0_3_1);
    assert!(CniVersion::V0_4_0 < CniVersion::V1_0_0);
    assert!(CniVersion::V1_0_0 < CniVersion::V1_1_0);
    for bad in ["0.1.0", "0.2.0", "1.2.0", "1.0", "", "latest"] {
        let e = CniVersion::parse(bad).expect_err(bad);
        assert_eq!(e.code, CniError::INCOMPATIBLE_VERSION);
        assert!(e.msg.contains(&format!("{bad:?}")), "{}", e.msg);
    }
    assert_eq!(compare("0.2.0", "0.10.0"), Some(Ordering::Less));
    assert_eq!(compare("1.1", "1.1.0"), Some(Ordering::Equal));
    assert_eq!(compare("x", "1.0.0"), None);
}

#[test]
fn version_reply_lists_all() {
    let v: serde_json::Value = serde_json::from_str(&version_reply()).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
    assert_eq!(version_info().supported_versions.len(), 5);
}

#[test]
fn command_gates() {
    use CniVersion::*;
    let cases = [
        (Command::Add, V0_3_0, true),
        (Command::Del, V0_3_1, true),
        (Command::Check, V0_3_1, false),
        (Command::Check, V0_4_0, true),
        (Command::Gc, V1_0_0, false),
        (Command::Gc, V1_1_0, true),
        (Command::Status, V0_4_0, false),
        (Command::Status, V1_1_0, true),
        (Command::Version, V0_3_0, true),
    ];
    for (cmd, v, allowed) in cases {
        let r = check_command(cmd, v);
        assert_eq!(r.is_ok(), allowed, "{cmd} at {v}");
        if let Err(e) = r {
            assert_eq!(e.code, CniError::INCOMPATIBLE_VERSION);
            assert!(
                e.msg.contains(cmd.as_str()) && e.msg.contains(v.as_str()),
                "{}",
                e.msg
            );
        }
    }
}

#[test]
fn error_json_form() {
    let e = CniError::config("ipam.subnet \"x\" is not a CIDR").with_details("more");
    let v: serde_json::Value =
        serde_json::from_str(&e.to_json_string(Some(CniVersion::V0_4_0))).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"cniVersion": "0.4.0", "code": 7, "msg": "ipam.subnet \"x\" is not a CIDR", "details": "more"})
    );
    let v: serde_json::Value =
        serde_json::from_str(&CniError::new(11, "busy").to_json_string(None)).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"cniVersion": "1.1.0", "code": 11, "msg": "busy"})
    );
    let decode = serde_json::from_str::<serde_json::Value>("{\n  \"a\": ]").expect_err("bad");
    let e = CniError::decode("network configuration", &decode);
    assert_eq!(e.code, 6);
    assert!(e.msg.contains("line 2 column"), "{}", e.msg);
}
