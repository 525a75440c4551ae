//! The ledger: the one durable truth of pools, blocks, claims and bindings.
//!
//! Every write is a compare-and-swap on one record, so correctness never depends on a lock's TTL or
//! a lease's timing, and every backend (embedded redb file, etcd v3, later Kubernetes objects) can
//! offer exactly the same semantics. The shared [`conformance`] suite holds each backend to them.

pub mod conformance;
pub mod embedded;
pub mod etcd;
mod etcd_tls;
pub mod spec;
mod typed;

pub use spec::{open, LedgerSpec, TlsFiles};
pub use typed::{
    BadRecord, LedgerMetrics, Listing, Record, Records, Stored, BAD_RECORDS_METRIC, METRICS,
};

use async_trait::async_trait;
use std::fmt;

/// The kinds of record the ledger holds. Each kind is its own keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Pool specifications.
    Pool,
    /// Node blocks of pod pools.
    Block,
    /// Durable "address belongs to identity" records.
    Claim,
    /// Live uses of addresses.
    Binding,
}

impl Kind {
    /// All kinds, for listing and audits.
    pub const ALL: [Kind; 4] = [Kind::Pool, Kind::Block, Kind::Claim, Kind::Binding];

    /// The kind's keyspace name (plural, lowercase), as used in etcd keys and table names.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pool => "pools",
            Kind::Block => "blocks",
            Kind::Claim => "claims",
            Kind::Binding => "bindings",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = LedgerError;

    /// The singular name [`Kind`]'s `Display` writes (`pool`, `block`, `claim`, `binding`).
    fn from_str(s: &str) -> Result<Self> {
        Kind::ALL
            .into_iter()
            .find(|k| k.to_string() == s)
            .ok_or_else(|| LedgerError::Config(format!("{s:?} is not a ledger record kind")))
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Pool => "pool",
            Kind::Block => "block",
            Kind::Claim => "claim",
            Kind::Binding => "binding",
        })
    }
}

/// Which kind of store a ledger is. A CNI configuration names the one it means (`ipam.ledger`),
/// and the agent refuses requests meant for another: allocating from the wrong ledger would
/// hand out addresses another ledger already gave away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Berth's embedded redb file, one node.
    Embedded,
    /// An etcd v3 cluster.
    Etcd,
    /// Berth's CRDs on a Kubernetes API server.
    Kubernetes,
}

impl Backend {
    /// The name used in configurations and flags: `embedded`, `etcd`, `kubernetes`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Etcd => "etcd",
            Backend::Kubernetes => "kubernetes",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An opaque record version. Writes that name a version succeed only if the record still has it.
/// Opaque because Kubernetes' resourceVersion is; etcd and redb use revision numbers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(pub String);

impl Version {
    /// The version as the numeric revision a backend issued. A version that does not parse was
    /// never issued by this backend, so naming it is a lost compare-and-swap.
    pub fn revision<T: std::str::FromStr>(&self, kind: Kind, name: &str) -> Result<T> {
        self.0.parse().map_err(|_| LedgerError::Conflict {
            kind,
            name: name.to_string(),
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The record's name, unique within its kind.
    pub name: String,
    /// The serialized record.
    pub value: Vec<u8>,
    /// The version to name in a later compare-and-swap.
    pub version: Version,
}

/// Why a ledger operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// `create` found the record already there.
    #[error("{kind} {name:?} already exists")]
    Exists {
        /// Kind.
        kind: Kind,
        /// Name.
        name: String,
    },
    /// The record changed (or vanished) since it was read: the compare-and-swap lost.
    #[error("{kind} {name:?} changed since it was read; re-read and retry")]
    Conflict {
        /// Kind.
        kind: Kind,
        /// Name.
        name: String,
    },
    /// The store cannot be reached or did not answer in time; retrying later may succeed.
    #[error("ledger {backend} is unavailable: {reason}; check that it is running and reachable, then retry")]
    Unavailable {
        /// Which backend, with its address.
        backend: String,
        /// What went wrong.
        reason: String,
    },
    /// A stored record could not be decoded.
    #[error("{kind} {name:?} in the ledger is corrupt: {reason}")]
    Corrupt {
        /// Kind.
        kind: Kind,
        /// Name.
        name: String,
        /// Decoder message.
        reason: String,
    },
    /// The ledger is misconfigured (bad path, bad certificate, bad URL).
    #[error("ledger configuration: {0}")]
    Config(String),
    /// A local I/O failure (embedded file, lock file).
    #[error("ledger I/O on {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

impl LedgerError {
    /// Whether retrying the same request later may succeed (maps to CNI code 11).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LedgerError::Unavailable { .. } | LedgerError::Conflict { .. }
        )
    }
}

/// Result alias for ledger operations.
pub type Result<T, E = LedgerError> = std::result::Result<T, E>;

/// A compare-and-swap record store. Implementations must be linearizable per record.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// Read one record.
    async fn get(&self, kind: Kind, name: &str) -> Result<Option<Entry>>;
    /// Read every record of a kind, in name order.
    async fn list(&self, kind: Kind) -> Result<Vec<Entry>>;
    /// Create a record that must not exist yet.
    async fn create(&self, kind: Kind, name: &str, value: Vec<u8>) -> Result<Version>;
    /// Replace a record that must still have version `expected`.
    async fn update(
        &self,
        kind: Kind,
        name: &str,
        value: Vec<u8>,
        expected: &Version,
    ) -> Result<Version>;
    /// Delete a record that must still have version `expected`.
    async fn delete(&self, kind: Kind, name: &str, expected: &Version) -> Result<()>;
    /// A one-line description for logs and errors (backend and location).
    fn describe(&self) -> String;
    /// Which kind of store this is.
    fn backend(&self) -> Backend;
}
