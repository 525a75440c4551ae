//! The conformance suite every ledger backend must pass.
//!
//! Each case gets a fresh, empty ledger from the caller's factory, so cases never see each other's
//! records. Backends call [`run_all`] from their own integration tests.

use crate::{Kind, Ledger, LedgerError, Version};
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

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
}

/// The basic life of a record.
pub async fn create_get_update_delete(l: Arc<dyn Ledger>) {
    assert!(
        l.get(Kind::Binding, "198.18.0.5").await.unwrap().is_none(),
        "fresh ledger is empty"
    );
    let v1 = l
        .create(Kind::Binding, "198.18.0.5", b"one".to_vec())
        .await
        .unwrap();
    let e = l
        .get(Kind::Binding, "198.18.0.5")
        .await
        .unwrap()
        .expect("created record is readable");
    assert_eq!(e.value, b"one");
    assert_eq!(e.version, v1, "get returns the version create returned");
    let v2 = l
        .update(Kind::Binding, "198.18.0.5", b"two".to_vec(), &v1)
        .await
        .unwrap();
    assert_ne!(v1, v2, "an update changes the version");
    let e = l.get(Kind::Binding, "198.18.0.5").await.unwrap().unwrap();
    assert_eq!((e.value.as_slice(), &e.version), (&b"two"[..], &v2));
    l.delete(Kind::Binding, "198.18.0.5", &v2).await.unwrap();
    assert!(
        l.get(Kind::Binding, "198.18.0.5").await.unwrap().is_none(),
        "deleted record is gone"
    );
    // A record can be created again after deletion.
    l.create(Kind::Binding, "198.18.0.5", b"three".to_vec())
        .await
        .unwrap();
}

/// `create` never overwrites.
pub async fn create_is_exclusive(l: Arc<dyn Ledger>) {
    l.create(Kind::Block, "p/198.18.0.0/26", b"a".to_vec())
        .await
        .unwrap();
    let err = l
        .create(Kind::Block, "p/198.18.0.0/26", b"b".to_vec())
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::Exists { .. }),
        "second create: {err}"
    );
    assert_eq!(
        l.get(Kind::Block, "p/198.18.0.0/26")
            .await
            .unwrap()
            .unwrap()
            .value,
        b"a"
    );
}

/// Updates and deletes naming an old version lose, and change nothing.
pub async fn stale_versions_conflict(l: Arc<dyn Ledger>) {
    let v1 = l.create(Kind::Claim, "c", b"1".to_vec()).await.unwrap();
    let v2 = l
        .update(Kind::Claim, "c", b"2".to_vec(), &v1)
        .await
        .unwrap();
    let err = l
        .update(Kind::Claim, "c", b"x".to_vec(), &v1)
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::Conflict { .. }),
        "stale update: {err}"
    );
    let err = l.delete(Kind::Claim, "c", &v1).await.unwrap_err();
    assert!(
        matches!(err, LedgerError::Conflict { .. }),
        "stale delete: {err}"
    );
    let e = l.get(Kind::Claim, "c").await.unwrap().unwrap();
    assert_eq!((e.value.as_slice(), e.version), (&b"2"[..], v2.clone()));
    // Deleting or updating a missing record conflicts too: the version named no longer exists.
    l.delete(Kind::Claim, "c", &v2).await.unwrap();
    assert!(matches!(
        l.delete(Kind::Claim, "c", &v2).await.unwrap_err(),
        LedgerError::Conflict { .. }
    ));
    assert!(matches!(
        l.update(Kind::Claim, "c", b"y".to_vec(), &v2)
            .await
            .unwrap_err(),
        LedgerError::Conflict { .. }
    ));
    // A version that was never issued conflicts rather than erroring oddly.
    l.create(Kind::Claim, "d", b"1".to_vec()).await.unwrap();
    assert!(matches!(
        l.update(
            Kind::Claim,
            "d",
            b"z".to_vec(),
            &Version("not-a-version".into())
        )
        .await
        .unwrap_err(),
        LedgerError::Conflict { .. }
    ));
}

/// Kinds do not see each other's records; lists are in name order.
pub async fn kinds_are_separate_keyspaces(l: Arc<dyn Ledger>) {
    for n in ["b", "a", "c"] {
        l.create(Kind::Pool, n, n.as_bytes().to_vec())
            .await
            .unwrap();
    }
    l.create(Kind::Block, "a", b"block".to_vec()).await.unwrap();
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
    assert_eq!(blocks[0].value, b"block");
    assert!(l.list(Kind::Binding).await.unwrap().is_empty());
}

/// Names with slashes, colons and dots (block CIDRs, IPv6 addresses) round-trip exactly.
pub async fn awkward_names_round_trip(l: Arc<dyn Ledger>) {
    let names = [
        "2001:db8::1",
        "pool-a/2001:db8::/122",
        "198.18.0.0/26",
        "ns/name.with.dots",
    ];
    for n in names {
        l.create(Kind::Binding, n, n.as_bytes().to_vec())
            .await
            .unwrap();
    }
    let listed: BTreeSet<String> = l
        .list(Kind::Binding)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(listed, names.iter().map(|s| s.to_string()).collect());
    for n in names {
        assert_eq!(
            l.get(Kind::Binding, n).await.unwrap().unwrap().value,
            n.as_bytes()
        );
    }
}

/// Many concurrent creates of one name: exactly one wins, the rest see `Exists`.
pub async fn concurrent_creates_have_one_winner(l: Arc<dyn Ledger>) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let l = Arc::clone(&l);
            tokio::spawn(async move {
                l.create(Kind::Binding, "198.18.1.1", format!("{i}").into_bytes())
                    .await
            })
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
    l.create(Kind::Claim, "counter", b"0".to_vec())
        .await
        .unwrap();
    let (workers, each) = (6, 15);
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let l = Arc::clone(&l);
            tokio::spawn(async move {
                let mut done = 0;
                while done < each {
                    let e = l.get(Kind::Claim, "counter").await.unwrap().unwrap();
                    let n: u64 = String::from_utf8(e.value).unwrap().parse().unwrap();
                    match l
                        .update(
                            Kind::Claim,
                            "counter",
                            (n + 1).to_string().into_bytes(),
                            &e.version,
                        )
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
    let e = l.get(Kind::Claim, "counter").await.unwrap().unwrap();
    assert_eq!(
        String::from_utf8(e.value).unwrap(),
        (workers * each).to_string()
    );
}

/// Lists larger than one backend page are complete and unique.
pub async fn large_lists_are_complete(l: Arc<dyn Ledger>) {
    let n = 1_234;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let l = Arc::clone(&l);
            tokio::spawn(async move {
                let name = format!("198.18.{}.{}", i / 256, i % 256);
                l.create(Kind::Binding, &name, vec![b'x'; 200]).await
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
}
