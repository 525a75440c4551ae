//! `ipam.policy`: who may ask the pool for fixed addresses and sticky sets, parsed into
//! [`berth_core::PoolPolicy`], and the check the handler applies to a pod's request.
//!
//! ```json
//! "policy": {"fixedNamespaces": ["infra"], "stickyNamespaces": ["web"],
//!            "statefulSetNamespaces": ["*"], "maxStickySet": 16}
//! ```

use crate::error::CniError;
use crate::json::{elem_str, show, Obj};
use berth_core::policy::{ANY_NAMESPACE, MAX_STICKY_SET_LIMIT};
use berth_core::PoolPolicy;

/// The keys `ipam.policy` knows. Why: an unknown key is a typo, and a typo in a policy would
/// silently leave the default in force.
const KEYS: [&str; 4] = [
    "fixedNamespaces",
    "stickyNamespaces",
    "statefulSetNamespaces",
    "maxStickySet",
];

/// Parse `ipam.policy` (absent: the default policy). Code 7 naming the field on any error.
pub(crate) fn parse_policy(ipam: &Obj<'_>) -> Result<PoolPolicy, CniError> {
    let mut policy = PoolPolicy::default();
    let Some(p) = ipam.obj("policy")? else {
        return Ok(policy);
    };
    for key in p.map.keys() {
        if !KEYS.contains(&key.as_str()) {
            return Err(CniError::config(format!(
                "{} is not a policy key: use {}",
                p.name(key),
                KEYS.join(", ")
            )));
        }
    }
    let namespaces = |key: &str| -> Result<Option<Vec<String>>, CniError> {
        let Some(list) = p.list(key)? else {
            return Ok(None);
        };
        let mut out = vec![];
        for (i, v) in list.iter().enumerate() {
            let field = format!("{}[{i}]", p.name(key));
            let s = elem_str(&field, v)?.trim();
            if s != ANY_NAMESPACE && !valid_namespace(s) {
                return Err(CniError::config(format!(
                    "{field} {s:?} is not a namespace name: give a Kubernetes namespace (lower-case letters, digits, '-') or \"*\" for every namespace"
                )));
            }
            out.push(s.to_string());
        }
        Ok(Some(out))
    };
    if let Some(v) = namespaces("fixedNamespaces")? {
        policy.fixed_namespaces = v;
    }
    if let Some(v) = namespaces("stickyNamespaces")? {
        policy.sticky_namespaces = v;
    }
    if let Some(v) = namespaces("statefulSetNamespaces")? {
        policy.stateful_set_namespaces = v;
    }
    if let Some(v) = p.get("maxStickySet") {
        policy.max_sticky_set = match v.as_u64() {
            Some(n) if (1..=u64::from(MAX_STICKY_SET_LIMIT)).contains(&n) => n as u32,
            _ => {
                return Err(CniError::config(format!(
                    "{} {} is not a sticky set size: give a whole number from 1 to {MAX_STICKY_SET_LIMIT}",
                    p.name("maxStickySet"),
                    show(v)
                )))
            }
        };
    }
    Ok(policy)
}

/// A DNS-1123 label, as Kubernetes requires of namespace names.
fn valid_namespace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(v: Value) -> Result<PoolPolicy, CniError> {
        let Value::Object(map) = &v else { panic!() };
        parse_policy(&Obj {
            path: "ipam".into(),
            map,
        })
    }

    #[test]
    fn absent_is_the_default() {
        assert_eq!(parse(json!({})).unwrap(), PoolPolicy::default());
    }

    #[test]
    fn keys_are_read() {
        let p = parse(
            json!({"policy": {"fixedNamespaces": ["infra", "*"], "stickyNamespaces": ["web"],
                                      "statefulSetNamespaces": [], "maxStickySet": 3}}),
        )
        .unwrap();
        assert_eq!(p.fixed_namespaces, ["infra", "*"]);
        assert_eq!(p.sticky_namespaces, ["web"]);
        assert!(p.stateful_set_namespaces.is_empty());
        assert_eq!(p.max_sticky_set, 3);
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let cases = [
            (
                json!({"policy": {"fixedNamespace": ["x"]}}),
                "ipam.policy.fixedNamespace",
            ),
            (
                json!({"policy": {"fixedNamespaces": "x"}}),
                "ipam.policy.fixedNamespaces",
            ),
            (
                json!({"policy": {"fixedNamespaces": ["Infra"]}}),
                "ipam.policy.fixedNamespaces[0] \"Infra\"",
            ),
            (
                json!({"policy": {"stickyNamespaces": [3]}}),
                "ipam.policy.stickyNamespaces[0]",
            ),
            (
                json!({"policy": {"maxStickySet": 0}}),
                "ipam.policy.maxStickySet 0",
            ),
            (
                json!({"policy": {"maxStickySet": 5000}}),
                "ipam.policy.maxStickySet 5000",
            ),
            (json!({"policy": ["x"]}), "ipam.policy"),
        ];
        for (v, want) in cases {
            let e = parse(v.clone()).unwrap_err();
            assert_eq!(e.code, CniError::INVALID_NETWORK_CONFIG, "{v}");
            assert!(e.msg.contains(want), "{v}: {}", e.msg);
        }
    }
}
