//! Property test of the Service controller's book: whatever sequence of plans Services go
//! through (take, keep, share, move, release, Service re-created), the writes the book decides
//! leave a ledger that `audit` finds sound, and each Service holds exactly what it was planned to
//! hold.

use berth_controller::book::{Book, Want};
use berth_core::{audit_with_claims, Binding, Claim, PoolSpec, PoolUse, ServiceRef, SubnetSpec};
use berth_ledger::Version;
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::net::IpAddr;

fn pool() -> PoolSpec {
    PoolSpec {
        name: "public".into(),
        use_: PoolUse::Service,
        subnets: vec![SubnetSpec::new("198.18.100.0/28".parse().unwrap())],
        policy: Default::default(),
        service: Default::default(),
        announcement: Default::default(),
    }
}

fn svc(i: u8, generation: u8) -> ServiceRef {
    ServiceRef {
        namespace: "default".into(),
        name: format!("s{i}"),
        uid: format!("u{i}-{generation}"),
    }
}

fn ip(n: u8) -> IpAddr {
    IpAddr::from([198, 18, 100, n])
}

/// One step: Service `who` (of 4) wants these (address, shared?) pairs; `recreate` replaces it
/// with a new UID first (the old one's records must go).
#[derive(Debug, Clone)]
struct Step {
    who: u8,
    recreate: bool,
    want: Vec<(u8, bool)>,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0u8..4,
        prop::bool::weighted(0.1),
        prop::collection::vec((1u8..15, any::<bool>()), 0..3),
    )
        .prop_map(|(who, recreate, want)| Step {
            who,
            recreate,
            want,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn writes_keep_the_ledger_sound(steps in prop::collection::vec(step(), 1..40)) {
        let mut book = Book::default();
        let mut generation = [0u8; 4];
        let mut version = 0u64;
        let now = berth_core::Timestamp::default();
        for st in steps {
            let mut s = svc(st.who, generation[st.who as usize]);
            if st.recreate {
                // The old Service is gone: release everything it held.
                let w = book.writes(&s, &[], &|_| 28, now);
                for x in &w { version += 1; book.apply(x, Some(Version(version.to_string()))); }
                generation[st.who as usize] += 1;
                s = svc(st.who, generation[st.who as usize]);
            }
            // Keep only what the planner could give: free addresses, or a share under the same key.
            let mut want: Vec<Want> = vec![];
            let mut seen = BTreeSet::new();
            for (n, shared) in st.want {
                let a = ip(n);
                if !seen.insert(a) { continue; }
                let sharing = shared.then(|| ("default".to_string(), "k".to_string()));
                let ok = match book.bindings.get(&a) {
                    None => true,
                    Some(b) => {
                        let h = b.value.holder.services().unwrap();
                        h.services.contains(&s)
                            || (sharing.is_some() && h.sharing_key.as_deref() == Some("k"))
                    }
                };
                if !ok { continue; }
                // A kept address keeps the key it is held under.
                let sharing = match book.bindings.get(&a) {
                    Some(b) => b.value.holder.services().unwrap().sharing_key.clone().map(|k| ("default".to_string(), k)),
                    None => sharing,
                };
                want.push(Want { address: a, pool: "public".into(), sharing, external_ip: false });
            }
            let w = book.writes(&s, &want, &|_| 28, now);
            for x in &w { version += 1; book.apply(x, Some(Version(version.to_string()))); }
            let held: BTreeSet<IpAddr> = book.held_by(&s).0.iter().map(|h| h.0).collect();
            let wanted: BTreeSet<IpAddr> = want.iter().map(|w| w.address).collect();
            prop_assert_eq!(held, wanted);
            let claims: Vec<Claim> = book.claims.values().map(|c| c.value.clone()).collect();
            let bindings: Vec<Binding> = book.bindings.values().map(|b| b.value.clone()).collect();
            let v = audit_with_claims(&[pool()], &[], &claims, &bindings);
            prop_assert!(v.is_empty(), "{:?}", v);
            // No claim is left without a binding naming it (nothing leaks).
            for c in &claims {
                for a in &c.addresses {
                    prop_assert!(book.bindings.contains_key(a), "claim {} keeps {} with no binding", c.name(), a);
                }
            }
        }
    }
}
