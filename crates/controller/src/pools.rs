//! What a Pool's status conditions say, decided purely from the pool, its problem (invalid, or
//! overlapping an older pool) and the addresses held outside it.
//!
//! Why: a user who writes a bad or overlapping Pool must see why nothing comes from it on the
//! object itself (`kubectl get pool -o yaml`, `kubectl wait --for=condition=Ready`), and a pool
//! that shrank must say which held addresses it no longer contains (they are kept, never moved).

use berth_core::service::PoolProblem;
use berth_core::{Binding, PoolSpec};
use berth_k8s::crd::Condition;
use std::net::IpAddr;

/// The `Ready` condition type.
pub const READY: &str = "Ready";
/// The `AddressesOutside` condition type.
pub const ADDRESSES_OUTSIDE: &str = "AddressesOutside";

/// Addresses bound in `pool` that it no longer contains as usable addresses (it shrank).
pub fn outside_addresses(pool: &PoolSpec, bindings: &[&Binding]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = bindings
        .iter()
        .filter(|b| b.pool == pool.name)
        .filter(|b| pool.usable_subnet(b.address).is_none())
        .map(|b| b.address)
        .collect();
    out.sort();
    out
}

/// The pool's conditions: `Ready`, and `AddressesOutside` when addresses are held outside it.
/// `previous` are the conditions the object has now (their transition times are kept when the
/// status is unchanged); `now` is an RFC 3339 time.
pub fn pool_conditions(
    problem: Option<&PoolProblem>,
    outside: &[IpAddr],
    previous: &[Condition],
    now: &str,
    generation: Option<i64>,
) -> Vec<Condition> {
    let cond = |type_: &str, status: bool, reason: &str, message: String| {
        Condition::carry_time(
            Condition {
                type_: type_.into(),
                status: if status { "True" } else { "False" }.into(),
                reason: reason.into(),
                message,
                last_transition_time: now.into(),
                observed_generation: generation,
            },
            previous,
        )
    };
    let ready = match problem {
        None => cond(
            READY,
            true,
            "Valid",
            "the pool is valid and overlaps no other pool".into(),
        ),
        Some(p @ PoolProblem::Invalid(_)) => cond(
            READY,
            false,
            "Invalid",
            format!("{p}; no address is handed out from this pool until it is fixed"),
        ),
        Some(p @ PoolProblem::Overlaps { .. }) => cond(
            READY,
            false,
            "Overlaps",
            format!("{p}; no address is handed out from this pool until it is fixed"),
        ),
    };
    let mut out = vec![ready];
    if !outside.is_empty() {
        let list: Vec<String> = outside.iter().map(|a| a.to_string()).collect();
        out.push(cond(
            ADDRESSES_OUTSIDE,
            true,
            "Shrunk",
            format!(
                "{} held address(es) are no longer inside this pool ({}): they are kept, never moved; release them or widen spec.subnets",
                outside.len(),
                list.join(", ")
            ),
        ));
    }
    out
}

/// The conditions that call for a Warning Event on the pool now: `Ready=False` or
/// `AddressesOutside=True` that the object did not show before with the same message, so an
/// operator is told once per change, not at every round.
pub fn newly_wrong<'a>(conditions: &'a [Condition], previous: &[Condition]) -> Vec<&'a Condition> {
    conditions
        .iter()
        .filter(|c| {
            (c.type_ == READY && c.status == "False")
                || (c.type_ == ADDRESSES_OUTSIDE && c.status == "True")
        })
        .filter(|c| {
            !previous
                .iter()
                .any(|p| p.type_ == c.type_ && p.status == c.status && p.message == c.message)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::{BindingKind, Holder, Owner, PoolUse, SubnetSpec};

    fn pool(cidr: &str) -> PoolSpec {
        PoolSpec {
            name: "p".into(),
            use_: PoolUse::Service,
            subnets: vec![SubnetSpec::new(cidr.parse().unwrap())],
            policy: Default::default(),
            service: Default::default(),
            announcement: Default::default(),
        }
    }

    #[test]
    fn ready_and_shrunk_conditions_keep_their_transition_time() {
        let c = pool_conditions(None, &[], &[], "2026-01-01T00:00:00Z", Some(1));
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].type_.as_str(), c[0].status.as_str()), (READY, "True"));
        // Unchanged status: the old transition time stays.
        let again = pool_conditions(None, &[], &c, "2026-01-02T00:00:00Z", Some(2));
        assert_eq!(again[0].last_transition_time, "2026-01-01T00:00:00Z");
        assert_eq!(again[0].observed_generation, Some(2));
        // An overlap flips it, with the message naming the other pool.
        let a = pool("198.18.100.0/28");
        let b = PoolSpec {
            name: "q".into(),
            ..pool("198.18.100.0/29")
        };
        let probs = berth_core::service::pool_problems(&[&a, &b]);
        let c2 = pool_conditions(probs.get("q"), &[], &again, "2026-01-03T00:00:00Z", Some(3));
        assert_eq!(c2[0].status, "False");
        assert_eq!(c2[0].reason, "Overlaps");
        assert!(c2[0].message.contains("\"p\""), "{}", c2[0].message);
        assert_eq!(c2[0].last_transition_time, "2026-01-03T00:00:00Z");
    }

    #[test]
    fn addresses_outside_a_shrunk_pool_are_listed() {
        let p = pool("198.18.100.0/30");
        let b = |a: &str| Binding {
            address: a.parse().unwrap(),
            prefix_len: 28,
            pool: "p".into(),
            node: String::new(),
            holder: Holder::Attachment(Owner {
                network: "n".into(),
                container_id: "c".into(),
                ifname: "eth0".into(),
                pod: None,
            }),
            kind: BindingKind::Fixed,
            since: Default::default(),
        };
        let (inside, out1, out2) = (b("198.18.100.1"), b("198.18.100.9"), b("198.18.100.3"));
        let outside = outside_addresses(&p, &[&inside, &out1, &out2]);
        // .3 is the /30's broadcast address now: not usable, so outside too.
        assert_eq!(
            outside,
            vec![
                "198.18.100.3".parse::<IpAddr>().unwrap(),
                "198.18.100.9".parse().unwrap()
            ]
        );
        let c = pool_conditions(None, &outside, &[], "2026-01-01T00:00:00Z", None);
        assert_eq!(c[1].type_, ADDRESSES_OUTSIDE);
        assert!(c[1].message.contains("198.18.100.9") && c[1].message.contains("never moved"));
    }

    #[test]
    fn warnings_once_per_change() {
        let outside: Vec<IpAddr> = vec!["198.18.100.9".parse().unwrap()];
        let now = pool_conditions(None, &outside, &[], "2026-01-01T00:00:00Z", None);
        assert_eq!(newly_wrong(&now, &[]).len(), 1);
        assert!(newly_wrong(&now, &now).is_empty(), "told already");
        let healthy = pool_conditions(None, &[], &[], "2026-01-01T00:00:00Z", None);
        assert!(newly_wrong(&healthy, &[]).is_empty());
    }
}
