//! The embedded (redb) backend against the conformance suite, plus what only a file can show.

use berth_ledger::conformance;
use berth_ledger::embedded::Embedded;
use berth_ledger::{Kind, Ledger, LedgerError};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_passes_the_conformance_suite() {
    let dirs = std::sync::Mutex::new(vec![]);
    conformance::run_all(|| {
        let dir = tempfile::tempdir().unwrap();
        let l: Arc<dyn Ledger> =
            Arc::new(Embedded::open(dir.path(), Duration::from_secs(1)).unwrap());
        dirs.lock().unwrap().push(dir);
        async move { l }
    })
    .await;
}

#[tokio::test]
async fn records_survive_reopening_and_versions_keep_increasing() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = {
        let l = Embedded::open(dir.path(), Duration::from_secs(1)).unwrap();
        l.create(Kind::Binding, "198.18.0.9", b"held".to_vec())
            .await
            .unwrap()
    };
    // The writer thread releases the lock when the ledger is dropped.
    let l = Embedded::open(dir.path(), Duration::from_secs(5)).unwrap();
    let e = l.get(Kind::Binding, "198.18.0.9").await.unwrap().unwrap();
    assert_eq!((e.value.as_slice(), &e.version), (&b"held"[..], &v1));
    let v2 = l
        .create(Kind::Binding, "198.18.0.10", b"x".to_vec())
        .await
        .unwrap();
    assert!(v2.0.parse::<u64>().unwrap() > v1.0.parse::<u64>().unwrap());
}

#[tokio::test]
async fn a_second_process_waits_for_the_lock_then_says_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let held = Embedded::open(dir.path(), Duration::from_secs(1)).unwrap();
    let t = std::time::Instant::now();
    let err = match Embedded::open(dir.path(), Duration::from_millis(300)) {
        Ok(_) => panic!("a second open must not get the lock while it is held"),
        Err(e) => e,
    };
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(matches!(err, LedgerError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("lock"), "{err}");
    // The waiter that gave up must not keep the lock once the holder lets go.
    drop(held);
    let t = std::time::Instant::now();
    let again = Embedded::open(dir.path(), Duration::from_secs(5));
    assert!(again.is_ok(), "the lock was released: {:?}", again.err());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
}
