//! The blocks watch on the etcd ledger: list the blocks prefix at one revision, then watch it
//! from the next revision on, publishing every node's blocks after each change.
//!
//! Why: on etcd the routed pod network follows block claims and releases the way it does on
//! Kubernetes (a watch, not a loop of lists). A cancelled or compacted watch, or a lost
//! connection, re-lists after a short backoff; meanwhile the last snapshot stays published, so
//! routes stay as they were.

use berth_core::Block;
use berth_k8s::cluster::Snapshot;
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Watches the blocks under `prefix` (e.g. `/berth/blocks/`, from
/// `berth_ledger::etcd::Etcd::watch_parts`) and publishes all of them after each change.
///
/// Runs on the current tokio runtime until the receiver is dropped.
pub fn watch_blocks(client: Client, prefix: String) -> Snapshot<Vec<Block>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            match follow(client.clone(), &prefix, &tx).await {
                Ok(()) => return, // the receiver is gone
                Err(e) => {
                    tracing::warn!(prefix = %prefix, error = %e, "etcd block watch ended; re-listing");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
    rx
}

fn decode(prefix: &str, key: &[u8], value: &[u8]) -> Option<(String, Block)> {
    let name = String::from_utf8_lossy(key.strip_prefix(prefix.as_bytes())?).into_owned();
    match serde_json::from_slice::<Block>(value) {
        Ok(b) => Some((name, b)),
        Err(e) => {
            tracing::warn!(block = %name, error = %e, "block record cannot be read; left out of the pod routes");
            None
        }
    }
}

fn publish(tx: &watch::Sender<Option<Arc<Vec<Block>>>>, blocks: &BTreeMap<String, Block>) -> bool {
    let v: Vec<Block> = blocks.values().cloned().collect();
    if tx.borrow().as_deref() == Some(&v) {
        return true;
    }
    tx.send(Some(Arc::new(v))).is_ok()
}

/// One list and the watch that follows it. `Ok(())` only when the receiver is gone.
async fn follow(
    mut client: Client,
    prefix: &str,
    tx: &watch::Sender<Option<Arc<Vec<Block>>>>,
) -> Result<(), String> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| e.to_string())?;
    let revision = resp
        .header()
        .map(|h| h.revision())
        .ok_or("the list answer has no revision")?;
    let mut blocks: BTreeMap<String, Block> = resp
        .kvs()
        .iter()
        .filter_map(|kv| decode(prefix, kv.key(), kv.value()))
        .collect();
    if !publish(tx, &blocks) {
        return Ok(());
    }
    let mut stream = client
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await
        .map_err(|e| e.to_string())?;
    loop {
        tokio::select! {
            _ = tx.closed() => return Ok(()),
            m = stream.message() => {
                let Some(resp) = m.map_err(|e| e.to_string())? else {
                    return Err("the watch stream closed".into());
                };
                if resp.canceled() || resp.compact_revision() != 0 {
                    return Err(format!(
                        "the watch was cancelled ({}; compacted at {})",
                        resp.cancel_reason(),
                        resp.compact_revision()
                    ));
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    match ev.event_type() {
                        EventType::Put => match decode(prefix, kv.key(), kv.value()) {
                            Some((name, b)) => {
                                blocks.insert(name, b);
                            }
                            None => {
                                // An unreadable record counts as gone.
                                if let Some(n) = kv.key().strip_prefix(prefix.as_bytes()) {
                                    blocks.remove(String::from_utf8_lossy(n).as_ref());
                                }
                            }
                        },
                        EventType::Delete => {
                            if let Some(n) = kv.key().strip_prefix(prefix.as_bytes()) {
                                blocks.remove(String::from_utf8_lossy(n).as_ref());
                            }
                        }
                    }
                }
                if !publish(tx, &blocks) {
                    return Ok(());
                }
            }
        }
    }
}
