//! Allocation errors. Each names the address, pool or holder involved and says what to do.

use berth_core::{Family, PoolError};
use berth_ledger::LedgerError;
use std::net::IpAddr;

/// Why an allocation request failed.
#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    /// The pool specification is unusable.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A requested address is not in any subnet of the pool.
    #[error("requested address {address} is not in any subnet of pool {pool:?}: ask for an address inside the pool")]
    NotInPool {
        /// The address.
        address: IpAddr,
        /// The pool.
        pool: String,
    },
    /// A requested address lies outside the reserved (fixed) ranges.
    #[error("requested address {address} is not in a reserved range of pool {pool:?} (reserved: {reserved:?}): choose one between fixedStart and fixedEnd, or set fixedAnywhere")]
    FixedNotAllowed {
        /// The address.
        address: IpAddr,
        /// The pool.
        pool: String,
        /// The reserved ranges.
        reserved: Vec<String>,
    },
    /// A requested address's family is not served by the pool.
    #[error("requested address {address} is of a family pool {pool:?} does not serve: add a subnet of that family")]
    FamilyNotServed {
        /// The address.
        address: IpAddr,
        /// The pool.
        pool: String,
    },
    /// Two requested addresses of one family.
    #[error("two fixed {family} addresses were requested for one interface: request at most one per family")]
    TwoFixedOfOneFamily {
        /// The family.
        family: Family,
    },
    /// Another attachment holds the requested address.
    #[error(
        "address {address} is held by {holder} on node {node:?}: try again after it is released"
    )]
    AddressHeld {
        /// The address.
        address: IpAddr,
        /// Who holds it.
        holder: String,
        /// Where.
        node: String,
    },
    /// The requested address is named by a binding record Berth cannot read.
    #[error("address {address} is held by a binding record Berth cannot read ({reason}): it counts as taken until an operator fixes or deletes that record (see berth audit)")]
    HeldByBadRecord {
        /// The address.
        address: IpAddr,
        /// Why the record cannot be read.
        reason: String,
    },
    /// The attachment already holds a different address of the requested family.
    #[error(
        "{owner} already holds {held}, but {requested} was requested: DEL the attachment first"
    )]
    ConflictingRequest {
        /// The new request.
        requested: IpAddr,
        /// What is held.
        held: IpAddr,
        /// The attachment.
        owner: String,
    },
    /// Every address a claim keeps is bound by someone else right now.
    #[error(
        "every address kept by claim {claim:?} is in use ({held}): try again after one is released"
    )]
    ClaimBusy {
        /// The claim.
        claim: String,
        /// Who holds its addresses.
        held: String,
    },
    /// No free address and no block left to claim.
    #[error("pool {pool:?} has no free {family} address for this node: enlarge the pool or release addresses")]
    Exhausted {
        /// The pool.
        pool: String,
        /// The family.
        family: Family,
    },
    /// Lost too many compare-and-swap races in a row.
    #[error("too much contention on {what}; try again")]
    Contended {
        /// What was contended.
        what: String,
    },
}

impl AllocError {
    /// Whether the same request may succeed later (CNI code 11).
    pub fn is_transient(&self) -> bool {
        match self {
            AllocError::Ledger(e) => e.is_transient(),
            AllocError::AddressHeld { .. }
            | AllocError::HeldByBadRecord { .. }
            | AllocError::ClaimBusy { .. }
            | AllocError::Contended { .. } => true,
            _ => false,
        }
    }
}
