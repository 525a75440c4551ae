//! The embedded backend: one redb file on the node, the default when no cluster store is configured.
//!
//! A lock file serialises whole processes (concurrent `berth-ipam` invocations, or the agent), and
//! inside a process one writer thread commits every queued write in a single transaction, so a burst
//! of concurrent allocations costs one fsync rather than one each.

use crate::{Entry, Kind, Ledger, LedgerError, Result, Version};
use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tokio::sync::oneshot;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

fn table(kind: Kind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(kind.as_str())
}

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "ledger.redb";
/// File name of the inter-process lock inside the data directory.
pub const LOCK_FILE: &str = "ledger.lock";

enum Write {
    Create(Vec<u8>),
    Update(Vec<u8>, u64),
    Delete(u64),
}

struct Op {
    kind: Kind,
    name: String,
    write: Write,
    reply: oneshot::Sender<Result<Version>>,
}

/// The embedded ledger over a redb file.
///
/// Dropping it closes the database cleanly before releasing the lock: the writer thread is
/// joined, then the last handle to the database goes (redb records its allocator state, so the
/// next open needs no repair), then the lock file. A short-lived `berth-ipam` process that exited
/// with the database still open left the next process a repair to run: five extra fsyncs and a
/// scan of the whole file on every invocation.
pub struct Embedded {
    // Field order matters: `db` is dropped (closed) before `_lock` is released.
    writer: Option<mpsc::Sender<Op>>,
    thread: Option<std::thread::JoinHandle<()>>,
    db: Arc<Database>,
    path: PathBuf,
    _lock: File,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        // Closing the channel ends the writer loop once queued writes are committed.
        drop(self.writer.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> LedgerError {
    LedgerError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Take an exclusive `flock` on `path`, waiting at most `wait`. Held for the ledger's lifetime.
///
/// The wait is a blocking `flock` in a helper thread, so concurrent plugin processes queue in the
/// kernel and each is woken the moment the lock is free, instead of polling. If the wait times
/// out, the helper thread releases the lock as soon as it gets it (nobody receives the file).
fn lock_file(path: &Path, wait: Duration) -> Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| io_err(path, e))?;
    let try_now = |f: &File| {
        // SAFETY: flock on a file descriptor we own; no memory is touched.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }
    };
    if try_now(&file) == 0 {
        return Ok(file);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(io_err(path, err));
    }
    let (tx, rx) = mpsc::sync_channel::<std::io::Result<File>>(1);
    std::thread::Builder::new()
        .name("ledger-lock".into())
        .spawn(move || {
            // SAFETY: as above; blocks until the lock is ours.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            let res = if rc == 0 {
                Ok(file)
            } else {
                Err(std::io::Error::last_os_error())
            };
            // If the opener gave up, the send fails and dropping the file releases the lock.
            let _ = tx.send(res);
        })
        .map_err(|e| io_err(path, e))?;
    match rx.recv_timeout(wait) {
        Ok(Ok(file)) => Ok(file),
        Ok(Err(e)) => Err(io_err(path, e)),
        Err(_) => Err(LedgerError::Unavailable {
            backend: format!("embedded:{}", path.display()),
            reason: format!(
                "another process has held the ledger lock for over {wait:?} (is a berth agent using this data dir without serving its socket?)"
            ),
        }),
    }
}

impl Embedded {
    /// Open (creating if needed) the ledger in `dir`, waiting up to `wait` for other processes.
    pub fn open(dir: &Path, wait: Duration) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let lock = lock_file(&dir.join(LOCK_FILE), wait)?;
        let path = dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| io_err(&path, e))?;
        // Create the tables on first use only: a write transaction costs an fsync, and the
        // plugin's direct path opens the ledger once per invocation.
        if !tables_exist(&db).map_err(|e| io_err(&path, e))? {
            let txn = db.begin_write().map_err(|e| io_err(&path, e))?;
            {
                for kind in Kind::ALL {
                    txn.open_table(table(kind)).map_err(|e| io_err(&path, e))?;
                }
                txn.open_table(META).map_err(|e| io_err(&path, e))?;
            }
            txn.commit().map_err(|e| io_err(&path, e))?;
        }
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel::<Op>();
        let thread_db = Arc::clone(&db);
        let thread_path = path.clone();
        let thread = std::thread::Builder::new()
            .name("ledger-writer".into())
            .spawn(move || writer_loop(&thread_db, &thread_path, rx))
            .map_err(|e| io_err(&path, e))?;
        Ok(Embedded {
            writer: Some(tx),
            thread: Some(thread),
            db,
            path,
            _lock: lock,
        })
    }

    async fn write(&self, kind: Kind, name: &str, write: Write) -> Result<Version> {
        let (reply, rx) = oneshot::channel();
        let gone = || LedgerError::Io {
            path: self.path.display().to_string(),
            reason: "the ledger writer thread stopped".into(),
        };
        self.writer
            .as_ref()
            .ok_or_else(gone)?
            .send(Op {
                kind,
                name: name.to_string(),
                write,
                reply,
            })
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    fn read<T>(
        &self,
        kind: Kind,
        f: impl FnOnce(
            redb::ReadOnlyTable<&'static str, &'static [u8]>,
        ) -> Result<T, redb::StorageError>,
    ) -> Result<Option<T>> {
        let txn = self.db.begin_read().map_err(|e| io_err(&self.path, e))?;
        match txn.open_table(table(kind)) {
            Ok(t) => f(t).map(Some).map_err(|e| io_err(&self.path, e)),
            Err(TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(io_err(&self.path, e)),
        }
    }
}

/// Whether every table exists already (a read transaction: no fsync).
fn tables_exist(db: &Database) -> std::result::Result<bool, redb::Error> {
    let txn = db.begin_read()?;
    for kind in Kind::ALL {
        match txn.open_table(table(kind)) {
            Ok(_) => {}
            Err(TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
    match txn.open_table(META) {
        Ok(_) => Ok(true),
        Err(TableError::TableDoesNotExist(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn split(raw: &[u8]) -> (u64, Vec<u8>) {
    let mut rev = [0u8; 8];
    let n = raw.len().min(8);
    rev[..n].copy_from_slice(&raw[..n]);
    (
        u64::from_be_bytes(rev),
        raw.get(8..).unwrap_or_default().to_vec(),
    )
}

fn join(rev: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&rev.to_be_bytes());
    out.extend_from_slice(value);
    out
}

fn writer_loop(db: &Database, path: &Path, rx: mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        match apply(db, &batch) {
            Ok(results) => {
                for (op, res) in batch.into_iter().zip(results) {
                    let _ = op.reply.send(res);
                }
            }
            Err(e) => {
                let reason = e.to_string();
                for op in batch {
                    let _ = op.reply.send(Err(io_err(path, &reason)));
                }
            }
        }
    }
}

fn apply(db: &Database, batch: &[Op]) -> std::result::Result<Vec<Result<Version>>, redb::Error> {
    let txn = db.begin_write()?;
    let mut results = Vec::with_capacity(batch.len());
    {
        let mut meta = txn.open_table(META)?;
        let mut rev = meta.get(REVISION)?.map(|g| g.value()).unwrap_or(0);
        for op in batch {
            let mut t = txn.open_table(table(op.kind))?;
            let current = t.get(op.name.as_str())?.map(|g| split(g.value()).0);
            let conflict = || LedgerError::Conflict {
                kind: op.kind,
                name: op.name.clone(),
            };
            let res = match (&op.write, current) {
                (Write::Create(_), Some(_)) => Err(LedgerError::Exists {
                    kind: op.kind,
                    name: op.name.clone(),
                }),
                (Write::Create(v), None) => {
                    rev += 1;
                    t.insert(op.name.as_str(), join(rev, v).as_slice())?;
                    Ok(Version(rev.to_string()))
                }
                (Write::Update(v, want), Some(have)) if *want == have => {
                    rev += 1;
                    t.insert(op.name.as_str(), join(rev, v).as_slice())?;
                    Ok(Version(rev.to_string()))
                }
                (Write::Delete(want), Some(have)) if *want == have => {
                    t.remove(op.name.as_str())?;
                    rev += 1;
                    Ok(Version(rev.to_string()))
                }
                _ => Err(conflict()),
            };
            results.push(res);
        }
        meta.insert(REVISION, rev)?;
    }
    txn.commit()?;
    Ok(results)
}

#[async_trait]
impl Ledger for Embedded {
    async fn get(&self, kind: Kind, name: &str) -> Result<Option<Entry>> {
        Ok(self
            .read(kind, |t| {
                Ok(t.get(name)?.map(|g| {
                    let (rev, value) = split(g.value());
                    Entry {
                        name: name.to_string(),
                        value,
                        version: Version(rev.to_string()),
                    }
                }))
            })?
            .flatten())
    }

    async fn list(&self, kind: Kind) -> Result<Vec<Entry>> {
        Ok(self
            .read(kind, |t| {
                let mut out = vec![];
                for item in t.iter()? {
                    let (k, v) = item?;
                    let (rev, value) = split(v.value());
                    out.push(Entry {
                        name: k.value().to_string(),
                        value,
                        version: Version(rev.to_string()),
                    });
                }
                Ok(out)
            })?
            .unwrap_or_default())
    }

    async fn create(&self, kind: Kind, name: &str, value: Vec<u8>) -> Result<Version> {
        self.write(kind, name, Write::Create(value)).await
    }

    async fn update(
        &self,
        kind: Kind,
        name: &str,
        value: Vec<u8>,
        expected: &Version,
    ) -> Result<Version> {
        let want = expected.revision::<u64>(kind, name)?;
        self.write(kind, name, Write::Update(value, want)).await
    }

    async fn delete(&self, kind: Kind, name: &str, expected: &Version) -> Result<()> {
        let want = expected.revision::<u64>(kind, name)?;
        self.write(kind, name, Write::Delete(want))
            .await
            .map(|_| ())
    }

    fn describe(&self) -> String {
        format!("embedded:{}", self.path.display())
    }

    fn backend(&self) -> crate::Backend {
        crate::Backend::Embedded
    }
}
