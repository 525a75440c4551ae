//! Typed access to ledger records: JSON in, JSON out, decode errors named.
//!
//! A list never fails because one record is bad: the records that decode come back with the ones
//! that do not ([`BadRecord`]) apart, so one undecodable object cannot stop every agent reload
//! and every controller round. Callers must never read a bad record as "free": a bad binding's
//! name is its address (taken), a bad block's name is `pool/cidr` (someone else's).

use crate::{Entry, Kind, Ledger, LedgerError, Result, Version};
use berth_core::{Binding, Block, Claim, PoolSpec};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A decoded record and the version to compare against when changing it.
#[derive(Debug, Clone)]
pub struct Stored<T> {
    /// The record.
    pub value: T,
    /// Its version.
    pub version: Version,
}

/// A record type of the ledger: what it decodes to and the name it must be stored under.
pub trait Record: Serialize + DeserializeOwned {
    /// The name this record is stored under. A stored record whose name differs from this is
    /// bad: the ledger's uniqueness (one binding per address, one block per CIDR) rests on it.
    fn ledger_name(&self) -> String;
}

impl Record for Binding {
    fn ledger_name(&self) -> String {
        self.name()
    }
}

impl Record for Block {
    fn ledger_name(&self) -> String {
        self.name()
    }
}

impl Record for Claim {
    fn ledger_name(&self) -> String {
        self.name()
    }
}

impl Record for PoolSpec {
    fn ledger_name(&self) -> String {
        self.name.clone()
    }
}

/// A stored record that cannot be used: it does not decode, or its name does not match its
/// content. Readers skip it, report it, and treat what it names as taken.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BadRecord {
    /// Its kind.
    pub kind: Kind,
    /// Its ledger name: for a binding its address, for a block `pool/cidr`.
    pub name: String,
    /// Why it cannot be used.
    pub reason: String,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}: {}", self.kind, self.name, self.reason)
    }
}

/// The result of listing one kind: the usable records, in name order, and the bad ones.
#[derive(Debug, Clone)]
pub struct Listing<T> {
    /// Records that decode and carry the name they are stored under.
    pub records: Vec<Stored<T>>,
    /// Records that do not.
    pub bad: Vec<BadRecord>,
}

impl<T> Default for Listing<T> {
    fn default() -> Self {
        Listing {
            records: vec![],
            bad: vec![],
        }
    }
}

impl<T: Clone> Listing<T> {
    /// The usable records' values.
    pub fn values(&self) -> Vec<T> {
        self.records.iter().map(|s| s.value.clone()).collect()
    }
}

/// Counters a process exposes about its ledger reads (the metrics endpoint reads them).
///
/// `berth_ledger_bad_records` is a gauge per kind: how many bad records the latest list of that
/// kind in this process met. It is non-zero while a bad record is in the ledger.
#[derive(Debug, Default)]
pub struct LedgerMetrics {
    bad: [AtomicU64; Kind::ALL.len()],
}

/// The metric's name, as the metrics endpoint will publish it.
pub const BAD_RECORDS_METRIC: &str = "berth_ledger_bad_records";

impl LedgerMetrics {
    const fn new() -> Self {
        LedgerMetrics {
            bad: [
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
            ],
        }
    }

    fn slot(kind: Kind) -> usize {
        Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
    }

    /// `berth_ledger_bad_records{kind}`: bad records met by the latest list of `kind`.
    pub fn bad_records(&self, kind: Kind) -> u64 {
        self.bad[Self::slot(kind)].load(Ordering::Relaxed)
    }

    /// The gauge summed over kinds.
    pub fn bad_records_total(&self) -> u64 {
        Kind::ALL.iter().map(|k| self.bad_records(*k)).sum()
    }

    fn set_bad_records(&self, kind: Kind, n: u64) {
        self.bad[Self::slot(kind)].store(n, Ordering::Relaxed);
    }
}

/// This process's ledger metrics.
pub static METRICS: LedgerMetrics = LedgerMetrics::new();

/// Bad records already warned about, so a record that stays bad is logged once per process (at
/// warning level), not on every reload and round; a record that changes its reason is new.
static WARNED: Mutex<Option<HashSet<BadRecord>>> = Mutex::new(None);

fn report(kind: Kind, bad: &[BadRecord]) {
    METRICS.set_bad_records(kind, bad.len() as u64);
    let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
    let warned = warned.get_or_insert_with(HashSet::new);
    warned.retain(|b| b.kind != kind || bad.contains(b));
    for b in bad {
        if warned.insert(b.clone()) {
            tracing::warn!(
                kind = %b.kind, name = %b.name, reason = %b.reason,
                "skipping a ledger record Berth cannot read; what it names counts as taken until it is fixed or deleted"
            );
        } else {
            tracing::debug!(kind = %b.kind, name = %b.name, "ledger record still unreadable");
        }
    }
}

/// Typed helpers over any [`Ledger`]; records are stored as JSON so `etcdctl get` stays readable.
pub struct Records<'a, L: ?Sized>(pub &'a L);

fn decode<T: DeserializeOwned>(kind: Kind, e: Entry) -> Result<Stored<T>> {
    serde_json::from_slice(&e.value)
        .map(|value| Stored {
            value,
            version: e.version,
        })
        .map_err(|err| LedgerError::Corrupt {
            kind,
            name: e.name,
            reason: err.to_string(),
        })
}

/// Decode one listed entry: usable, or why not.
fn check<T: Record>(kind: Kind, e: Entry) -> std::result::Result<Stored<T>, BadRecord> {
    let name = e.name.clone();
    match decode::<T>(kind, e) {
        Ok(s) => {
            let own = s.value.ledger_name();
            if own == name {
                Ok(s)
            } else {
                Err(BadRecord {
                    kind,
                    name,
                    reason: format!("it is stored under this name but its content names {own:?}"),
                })
            }
        }
        Err(err) => Err(BadRecord {
            kind,
            name,
            reason: match err {
                LedgerError::Corrupt { reason, .. } => reason,
                other => other.to_string(),
            },
        }),
    }
}

fn encode<T: Serialize>(kind: Kind, name: &str, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|err| LedgerError::Corrupt {
        kind,
        name: name.to_string(),
        reason: err.to_string(),
    })
}

impl<L: Ledger + ?Sized> Records<'_, L> {
    /// Read and decode one record. A record that does not decode is [`LedgerError::Corrupt`].
    pub async fn get<T: DeserializeOwned>(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Option<Stored<T>>> {
        match self.0.get(kind, name).await? {
            Some(e) => decode(kind, e).map(Some),
            None => Ok(None),
        }
    }

    /// Read every record of a kind: the usable ones, and the bad ones apart. Only a failure of
    /// the ledger itself fails the list. Bad records are logged (a warning the first time this
    /// process meets each) and counted in [`METRICS`].
    pub async fn list<T: Record>(&self, kind: Kind) -> Result<Listing<T>> {
        let mut out = Listing::default();
        for e in self.0.list(kind).await? {
            match check(kind, e) {
                Ok(s) => out.records.push(s),
                Err(b) => out.bad.push(b),
            }
        }
        report(kind, &out.bad);
        Ok(out)
    }

    /// Create a record that must not exist.
    pub async fn create<T: Serialize>(&self, kind: Kind, name: &str, v: &T) -> Result<Version> {
        self.0.create(kind, name, encode(kind, name, v)?).await
    }

    /// Replace a record that must still have `expected`.
    pub async fn update<T: Serialize>(
        &self,
        kind: Kind,
        name: &str,
        v: &T,
        expected: &Version,
    ) -> Result<Version> {
        self.0
            .update(kind, name, encode(kind, name, v)?, expected)
            .await
    }
}
