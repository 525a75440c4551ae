//! Kubernetes' naming rules, for the places that check a name before the API server would.

/// Whether `s` is a DNS-1123 subdomain: what Kubernetes accepts as the name of most objects
/// (Secrets, cluster-scoped custom resources).
///
/// Why here: BGPPeer's Secret references and the Kubernetes adapter's pool names are checked
/// against the same rule.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_subdomains() {
        for ok in ["a", "tor-a", "a.b-c.d0"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "A", "-a", "a-", "a..b", "a_b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
