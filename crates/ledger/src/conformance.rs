//! The conformance suite every ledger backend must pass.
//!
//! Each case gets a fresh, empty ledger from the caller's factory, so cases never see each other's
//! records. Backends call [`run_all`] from their own integration tests. Values are well-formed
//! records of their kind (a backend may validate them, as Kubernetes does against the CRD schema)
//! carrying a marker string, and are compared as JSON (a backend may re-serialize them).

use crate::{Kind, Ledger, LedgerError, Records, Version};
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

/// A well-formed record of `kind` carrying `marker`.
pub fn record(kind: Kind, marker: &str) -> Vec<u8> {
    let v = match kind {
        Kind::Pool => serde_json::json!({
            "name": marker, "use": "pod",
            "subnets": [{"cidr": "198.18.0.0/24", "blockSize": 26}]
        }),
        Kind::Block => serde_json::json!({"pool": "p", "cidr": "198.18.0.0/26", "node": marker}),
        Kind::Claim => serde_json::json!({
            "identity": {"kind": "key", "key": "k"}, "pool": marker, "addresses": [],
            "since": "2024-06-15T07:00:00.123456Z"
        }),
        Kind::Binding => serde_json::json!({
            "address": "198.18.0.1", "prefixLen": 24, "pool": "p", "node": marker,
            "holder": {"attachment": {"network": "n", "containerID": "c", "ifname": "eth0"}},
            "kind": "fixed", "since": "2024-06-15T07:00:00.123456Z"
        }),
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// The marker of a record made by [`record`].
pub fn marker(kind: Kind, value: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(value).unwrap_or_default();
    let field = match kind {
        Kind::Pool => "name",
        Kind::Block | Kind::Binding => "node",
        Kind::Claim => "pool",
    };
    v[field].as_str().unwrap_or_default().to_string()
}

/// A factory of fresh, empty ledgers.
pub trait Fresh: Fn() -> Self::Fut {
    /// The future that opens one.
    type Fut: Future<Output = Arc<dyn Ledger>>;
}
impl<F, Fut> Fresh for F
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Ledger>>,
{
    type Fut = Fut;
}

/// Run every case; panics with the case's name on the first failure.
pub async fn run_all<F: Fresh>(fresh: F) {
    create_get_update_delete(fresh().await).await;
    create_is_exclusive(fresh().await).await;
    stale_versions_conflict(fresh().await).await;
    kinds_are_separate_keyspaces(fresh().await).await;
    awkward_names_round_trip(fresh().await).await;
    concurrent_creates_have_one_winner(fresh().await).await;
    concurrent_compare_and_swap_loses_no_update(fresh().await).await;
    large_lists_are_complete(fresh().await).await;
    bad_records_are_listed_apart(fresh().await).await;
}

fn is_conflict(e: &LedgerError) -> bool {
    matches!(e, LedgerError::Conflict { .. })
}

/// The basic life of a record.
pub async fn create_get_update_delete(l: Arc<dyn Ledger>) {
    let b = Kind::Binding;
    assert!(
        l.get(b, "198.18.0.5").await.unwrap().is_none(),
        "fresh ledger is empty"
    );
    let v1 = l.create(b, "198.18.0.5", record(b, "one")).await.unwrap();
    let e = l
        .get(b, "198.18.0.5")
        .await
        .unwrap()
        .expect("created record is readable");
    assert_eq!(marker(b, &e.value), "one");
    assert_eq!(e.version, v1, "get returns the version create returned");
    let v2 = l
        .update(b, "198.18.0.5", record(b, "two"), &v1)
        .await
        .unwrap();
    assert_ne!(v1, v2, "an update changes the version");
    let e = l.get(b, "198.18.0.5").await.unwrap().unwrap();
    assert_eq!((marker(b, &e.value), &e.version), ("two".to_string(), &v2));
    l.delete(b, "198.18.0.5", &v2).await.unwrap();
    assert!(
        l.get(b, "198.18.0.5").await.unwrap().is_none(),
        "deleted record is gone"
    );
    // A record can be created again after deletion.
    l.create(b, "198.18.0.5", record(b, "three")).await.unwrap();
}

/// `create` never overwrites.
pub async fn create_is_exclusive(l: Arc<dyn Ledger>) {
    let k = Kind::Block;
    l.create(k, "p/198.18.0.0/26", record(k, "a"))
        .await
        .unwrap();
    let err = l
        .create(k, "p/198.18.0.0/26", record(k, "b"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::Exists { .. }),
        "second create: {err}"
    );
    let e = l.get(k, "p/198.18.0.0/26").await.unwrap().unwrap();
    assert_eq!(marker(k, &e.value), "a");
}

/// Updates and deletes naming an old version lose, and change nothing.
pub async fn stale_versions_conflict(l: Arc<dyn Ledger>) {
    let c = Kind::Claim;
    let v1 = l.create(c, "c", record(c, "1")).await.unwrap();
    let v2 = l.update(c, "c", record(c, "2"), &v1).await.unwrap();
    let err = l.update(c, "c", record(c, "x"), &v1).await.unwrap_err();
    assert!(is_conflict(&err), "stale update: {err}");
    let err = l.delete(c, "c", &v1).await.unwrap_err();
    assert!(is_conflict(&err), "stale delete: {err}");
    let e = l.get(c, "c").await.unwrap().unwrap();
    assert_eq!(
        (marker(c, &e.value), e.version),
        ("2".to_string(), v2.clone())
    );
    // Deleting or updating a missing record conflicts too: the version named no longer exists.
    l.delete(c, "c", &v2).await.unwrap();
    assert!(is_conflict(&l.delete(c, "c", &v2).await.unwrap_err()));
    assert!(is_conflict(
        &l.update(c, "c", record(c, "y"), &v2).await.unwrap_err()
    ));
    // A version that was never issued conflicts rather than erroring oddly.
    l.create(c, "d", record(c, "1")).await.unwrap();
    let bogus = Version("not-a-version".into());
    let err = l.update(c, "d", record(c, "z"), &bogus).await.unwrap_err();
    assert!(
        is_conflict(&err),
        "update naming a never-issued version: {err:?}"
    );
    let err = l.delete(c, "d", &bogus).await.unwrap_err();
    assert!(
        is_conflict(&err),
        "delete naming a never-issued version: {err:?}"
    );
}

/// Kinds do not see each other's records; lists are in name order.
pub async fn kinds_are_separate_keyspaces(l: Arc<dyn Ledger>) {
    for n in ["b", "a", "c"] {
        l.create(Kind::Pool, n, record(Kind::Pool, n))
            .await
            .unwrap();
    }
    l.create(Kind::Block, "a", record(Kind::Block, "block"))
        .await
        .unwrap();
    let pools: Vec<String> = l
        .list(Kind::Pool)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(pools, ["a", "b", "c"]);
    let blocks = l.list(Kind::Block).await.unwrap();
    assert_eq!(blocks.len(), 1);
    assert_eq!(marker(Kind::Block, &blocks[0].value), "block");
    assert!(l.list(Kind::Binding).await.unwrap().is_empty());
}

/// Names with slashes, colons and dots (block CIDRs, IPv6 addresses) round-trip exactly.
pub async fn awkward_names_round_trip(l: Arc<dyn Ledger>) {
    let b = Kind::Binding;
    let names = [
        "2001:db8::1",
        "pool-a/2001:db8::/122",
        "198.18.0.0/26",
        "ns/name.with.dots",
    ];
    for n in names {
        l.create(b, n, record(b, n)).await.unwrap();
    }
    let listed: BTreeSet<String> = l
        .list(b)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(listed, names.iter().map(|s| s.to_string()).collect());
    for n in names {
        assert_eq!(marker(b, &l.get(b, n).await.unwrap().unwrap().value), n);
    }
}

/// Many concurrent creates of one name: exactly one wins, the rest see `Exists`.
pub async fn concurrent_creates_have_one_winner(l: Arc<dyn Ledger>) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let l = Arc::clone(&l);
            let v = record(Kind::Binding, &format!("w{i}"));
            tokio::spawn(async move { l.create(Kind::Binding, "198.18.1.1", v).await })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => winners += 1,
            Err(LedgerError::Exists { .. }) => {}
            Err(e) => panic!("unexpected error in concurrent create: {e}"),
        }
    }
    assert_eq!(winners, 1);
}

/// Concurrent read-modify-write loops on one counter lose no increment.
pub async fn concurrent_compare_and_swap_loses_no_update(l: Arc<dyn Ledger>) {
    let c = Kind::Claim;
    l.create(c, "counter", record(c, "0")).await.unwrap();
    let (workers, each) = (6, 15);
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let l = Arc::clone(&l);
            tokio::spawn(async move {
                let mut done = 0;
                while done < each {
                    let e = l.get(c, "counter").await.unwrap().unwrap();
                    let n: u64 = marker(c, &e.value).parse().unwrap();
                    match l
                        .update(c, "counter", record(c, &(n + 1).to_string()), &e.version)
                        .await
                    {
                        Ok(_) => done += 1,
                        Err(LedgerError::Conflict { .. }) => {}
                        Err(e) => panic!("unexpected error in CAS loop: {e}"),
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let e = l.get(c, "counter").await.unwrap().unwrap();
    assert_eq!(marker(c, &e.value), (workers * each).to_string());
}

/// Lists larger than one backend page are complete and unique.
pub async fn large_lists_are_complete(l: Arc<dyn Ledger>) {
    let n = 1_234;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let l = Arc::clone(&l);
            tokio::spawn(async move {
                let name = format!("198.18.{}.{}", i / 256, i % 256);
                l.create(Kind::Binding, &name, record(Kind::Binding, &name))
                    .await
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let listed = l.list(Kind::Binding).await.unwrap();
    assert_eq!(listed.len(), n);
    let unique: BTreeSet<&str> = listed.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(unique.len(), n);
    for e in &listed {
        assert_eq!(marker(Kind::Binding, &e.value), e.name, "values intact");
    }
}

/// A record stored under a name its content does not carry (every backend, the Kubernetes one
/// included, stores it: it is well-formed) is listed apart as bad, and the other records still
/// come back: one bad record never fails a list.
pub async fn bad_records_are_listed_apart(l: Arc<dyn Ledger>) {
    let b = Kind::Binding;
    // `record` makes a binding of 198.18.0.1: stored under its own name once, and once under
    // another address's name.
    l.create(b, "198.18.0.1", record(b, "good")).await.unwrap();
    l.create(b, "198.18.0.2", record(b, "misnamed"))
        .await
        .unwrap();
    let got = Records(l.as_ref())
        .list::<berth_core::Binding>(b)
        .await
        .expect("a bad record must not fail the list");
    let good: Vec<String> = got.records.iter().map(|s| s.value.name()).collect();
    assert_eq!(good, ["198.18.0.1"]);
    assert_eq!(got.bad.len(), 1, "{:?}", got.bad);
    assert_eq!(got.bad[0].kind, b);
    assert_eq!(got.bad[0].name, "198.18.0.2");
    assert!(
        got.bad[0].reason.contains("198.18.0.1"),
        "the reason names what the content says: {}",
        got.bad[0].reason
    );
}
