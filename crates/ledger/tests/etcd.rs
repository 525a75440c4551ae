//! The etcd backend on Debian's real etcd: the conformance suite, TLS as kube-ipam configures it,
//! and a three-member cluster losing a member in the middle of a burst of writes.

use berth_ledger::conformance::{marker, record};
use berth_ledger::etcd::Etcd;
use berth_ledger::{conformance, Kind, Ledger, LedgerError, TlsFiles};
use berth_testbed::{require_root_and_tools, EtcdCluster};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn connect(endpoints: Vec<String>, tls: Option<&TlsFiles>, prefix: &str) -> Arc<dyn Ledger> {
    Arc::new(
        Etcd::connect(&endpoints, tls, prefix)
            .await
            .expect("connect to etcd"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_passes_the_conformance_suite() {
    require_root_and_tools();
    let etcd = EtcdCluster::start(1).unwrap();
    let n = AtomicUsize::new(0);
    let urls = etcd.client_urls();
    conformance::run_all(|| {
        // A fresh prefix per case is a fresh, empty ledger on the same server.
        let prefix = format!("/case{}/", n.fetch_add(1, Ordering::SeqCst));
        let urls = urls.clone();
        async move { connect(urls, None, &prefix).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_etcd_needs_the_client_certificate() {
    require_root_and_tools();
    let etcd = EtcdCluster::start_tls(1).unwrap();
    let files = etcd.tls().expect("TLS cluster has files");
    let tls = TlsFiles {
        cert: Some(files.client_pem().to_path_buf()),
        key: Some(files.client_key_pem().to_path_buf()),
        ca: Some(files.ca_pem().to_path_buf()),
    };
    let l = connect(etcd.client_urls(), Some(&tls), "/berth/").await;
    l.create(Kind::Pool, "p", record(Kind::Pool, "p"))
        .await
        .unwrap();
    assert_eq!(l.list(Kind::Pool).await.unwrap().len(), 1);

    // https without any certificate configured is refused up front, naming the settings to give.
    let err = match Etcd::connect(&etcd.client_urls(), None, "/berth/").await {
        Ok(_) => panic!("https without certificates must not connect"),
        Err(e) => e,
    };
    assert!(matches!(err, LedgerError::Config(_)), "{err}");
    assert!(err.to_string().contains("etcdCertFile"), "{err}");

    // Trusting the CA but presenting no client certificate: the server rejects every request.
    let ca_only = TlsFiles {
        ca: tls.ca.clone(),
        ..Default::default()
    };
    let rejected = match Etcd::connect(&etcd.client_urls(), Some(&ca_only), "/berth/").await {
        Err(e) => e,
        Ok(l) => l
            .list(Kind::Pool)
            .await
            .expect_err("no client certificate, no data"),
    };
    // A configuration error that says what is missing, not an "unavailable" etcd.
    assert!(matches!(rejected, LedgerError::Config(_)), "{rejected}");
    assert!(
        rejected
            .to_string()
            .contains("requires a client certificate")
            && rejected.to_string().contains("etcdCertFile"),
        "{rejected}"
    );

    // A missing certificate file names the field.
    let bad = TlsFiles {
        cert: Some("/nonexistent/etcd.pem".into()),
        ..tls.clone()
    };
    let err = match Etcd::connect(&etcd.client_urls(), Some(&bad), "/berth/").await {
        Ok(_) => panic!("a missing certificate file must be an error"),
        Err(e) => e,
    };
    assert!(
        err.to_string()
            .contains("etcdCertFile /nonexistent/etcd.pem"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_losing_one_mid_burst_lose_no_write() {
    require_root_and_tools();
    let etcd = EtcdCluster::start(3).unwrap();
    let l = connect(etcd.client_urls(), None, "/berth/").await;
    let (writers, each) = (8usize, 40usize);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let l = Arc::clone(&l);
            tokio::spawn(async move {
                let mut done = BTreeSet::new();
                for i in 0..each {
                    let name = format!("198.18.{w}.{i}");
                    // A write that errors may or may not have been applied: retry until it is
                    // known, as the allocator does (Exists after a retry means our earlier try won).
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        match l
                            .create(Kind::Binding, &name, record(Kind::Binding, &name))
                            .await
                        {
                            Ok(_) | Err(LedgerError::Exists { .. }) => break,
                            Err(e) if e.is_transient() && Instant::now() < deadline => {
                                tokio::time::sleep(Duration::from_millis(50)).await
                            }
                            Err(e) => panic!("write {name} failed for good: {e}"),
                        }
                    }
                    done.insert(name);
                }
                done
            })
        })
        .collect();
    // Kill the leader while the writers run.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let leader = etcd.leader_index().expect("a leader");
    etcd.kill_member(leader).unwrap();
    let mut expected = BTreeSet::new();
    for t in tasks {
        expected.extend(t.await.unwrap());
    }
    let listed: BTreeSet<String> = l
        .list(Kind::Binding)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        listed, expected,
        "every acknowledged write is present, nothing else"
    );
    assert_eq!(listed.len(), writers * each);
    for e in l.list(Kind::Binding).await.unwrap() {
        assert_eq!(marker(Kind::Binding, &e.value), e.name, "values intact");
    }
    eprintln!(
        "{} writes across a leader kill in {:?}",
        writers * each,
        started.elapsed()
    );
    // The killed member rejoins and serves the same data.
    etcd.restart_member(leader).unwrap();
    let only = connect(vec![etcd.client_url(leader)], None, "/berth/").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match only.list(Kind::Binding).await {
            Ok(v) if v.len() == writers * each => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!(
                "restarted member never caught up: {:?}",
                other.map(|v| v.len())
            ),
        }
    }
}

/// What Berth says about X.509 v1 client certificates rests on this: rustls (the TLS library
/// etcd-client uses, through tonic) refuses to load a v1 client certificate at all, as
/// `openssl x509 -req` makes it without an extension file; the v3 one of the same CA loads.
#[test]
fn rustls_refuses_a_v1_client_certificate() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    berth_testbed::require_tools(&["openssl"]);
    let dir = tempfile::tempdir().unwrap();
    let pki = berth_testbed::TlsFiles::generate_openssl(dir.path(), false).unwrap();
    let (v3_cert, v3_key) = pki.openssl_client("v3", true).unwrap();
    let load = |cert: &std::path::Path, key: &std::path::Path| {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(chain, key)
    };
    let err = load(&pki.client_cert, &pki.client_key)
        .expect_err("rustls must refuse the v1 client certificate");
    assert!(
        format!("{err:?}").contains("UnsupportedCertVersion"),
        "{err:?}"
    );
    assert!(load(&v3_cert, &v3_key).is_ok());
}
