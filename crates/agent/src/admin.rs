//! Read-only requests the `berth` CLI sends over the agent socket, so an operator can inspect an
//! embedded ledger while the agent holds its lock.

use serde::{Deserialize, Serialize};

/// An operator request. Told apart from CNI requests by its `admin` field.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminRequest {
    /// What to do; only `snapshot` exists today.
    pub admin: AdminCommand,
}

/// The operator requests the agent answers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AdminCommand {
    /// The whole ledger: pools, blocks, claims, bindings, and the records that cannot be read.
    Snapshot,
}

/// The agent's answer to a snapshot request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotReply {
    /// The node the agent serves.
    pub node: String,
    /// The ledger it uses.
    pub ledger: String,
    /// Pools.
    pub pools: Vec<serde_json::Value>,
    /// Blocks.
    pub blocks: Vec<serde_json::Value>,
    /// Claims.
    #[serde(default)]
    pub claims: Vec<serde_json::Value>,
    /// Bindings.
    pub bindings: Vec<serde_json::Value>,
    /// Records the ledger holds but Berth cannot read.
    #[serde(default)]
    pub bad: Vec<BadRecordReply>,
    /// An error instead of data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A ledger record Berth cannot read, as the agent reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BadRecordReply {
    /// Its kind: `pool`, `block`, `claim` or `binding`.
    pub kind: String,
    /// Its ledger name.
    pub name: String,
    /// Why it cannot be read.
    pub reason: String,
}

impl From<&berth_ledger::BadRecord> for BadRecordReply {
    fn from(b: &berth_ledger::BadRecord) -> Self {
        BadRecordReply {
            kind: b.kind.to_string(),
            name: b.name.clone(),
            reason: b.reason.clone(),
        }
    }
}
