//! The etcd backend against the conformance suite, on Debian's real etcd.

use berth_ledger::conformance;
use berth_ledger::etcd::Etcd;
use berth_ledger::Ledger;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct TmpEtcd(std::process::Child, tempfile::TempDir, String);
impl Drop for TmpEtcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
fn start() -> TmpEtcd {
    let dir = tempfile::tempdir().unwrap();
    let (c, p) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{c}");
    let child = std::process::Command::new("etcd")
        .args(["--name", "t", "--data-dir"])
        .arg(dir.path().join("d"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{p}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{p}"),
        ])
        .args(["--initial-cluster", &format!("t=http://127.0.0.1:{p}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", c)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    TmpEtcd(child, dir, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn etcd_passes_the_conformance_suite() {
    let etcd = start();
    let n = AtomicUsize::new(0);
    let url = etcd.2.clone();
    conformance::run_all(|| {
        let prefix = format!("/case{}/", n.fetch_add(1, Ordering::SeqCst));
        let url = url.clone();
        async move {
            let l: Arc<dyn Ledger> = Arc::new(Etcd::connect(&[url], None, &prefix).await.unwrap());
            l
        }
    })
    .await;
}
