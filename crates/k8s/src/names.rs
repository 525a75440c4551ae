//! Ledger names (addresses, `pool/cidr`, identities) are not valid Kubernetes object names. Each
//! is mapped to a readable, valid DNS-1123 name with a hash suffix, so distinct ledger names never
//! meet in one object; the original name is kept in the object's spec.

use berth_ledger::Kind;

/// The object name for a ledger name: lowercase alphanumerics and `-`, at most 63 characters, with
/// a 16-hex-digit FNV-1a hash of the original name at the end.
pub fn object_name(name: &str) -> String {
    let mut readable: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '-'
            }
        })
        .collect();
    while readable.contains("--") {
        readable = readable.replace("--", "-");
    }
    let readable: String = readable.trim_matches('-').chars().take(45).collect();
    let readable = readable.trim_end_matches('-');
    let hash = fnv1a(name.as_bytes());
    if readable.is_empty() {
        format!("x-{hash:016x}")
    } else {
        format!("{readable}-{hash:016x}")
    }
}

/// The object name of a ledger record. A pool whose name is a valid object name is stored under
/// it, so the Pool a user writes (`metadata.name: public`) is the pool `public`; every other name
/// is mapped by [`object_name`] and kept in `spec.key`.
pub fn object_name_of(kind: Kind, name: &str) -> String {
    if kind == Kind::Pool && berth_core::names::is_dns_subdomain(name) {
        name.to_string()
    } else {
        object_name(name)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::object_name;

    fn valid(n: &str) -> bool {
        n.len() <= 63
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && n.starts_with(|c: char| c.is_ascii_alphanumeric())
            && n.ends_with(|c: char| c.is_ascii_alphanumeric())
    }

    #[test]
    fn names_are_valid_readable_and_distinct() {
        let names = [
            "198.18.0.5",
            "2001:db8::5",
            "2001:db8::",
            "pods/198.18.0.0/26",
            "pods/2001:db8:1::/122",
            "a-b",
            "a:b",
            "A:B",
            "",
            "::",
            "pool/statefulset/default/web/0",
            &"x".repeat(300),
        ];
        let mut seen = std::collections::HashSet::new();
        for n in names {
            let o = object_name(n);
            assert!(valid(&o), "{n:?} -> {o:?}");
            assert!(seen.insert(o.clone()), "collision for {n:?}: {o}");
        }
        assert!(object_name("198.18.0.5").starts_with("198-18-0-5-"));
        assert_eq!(object_name("198.18.0.5"), object_name("198.18.0.5"));
    }
}
