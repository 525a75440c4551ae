//! A consistent-enough read of the whole ledger, for the CLI and the audit.

use berth_core::{Binding, Block, Claim, PoolSpec};
use berth_ledger::{BadRecord, Kind, Ledger, LedgerError, Records};

/// Everything the ledger holds about pools, blocks, claims and bindings.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Pools.
    pub pools: Vec<PoolSpec>,
    /// Blocks.
    pub blocks: Vec<Block>,
    /// Claims.
    pub claims: Vec<Claim>,
    /// Bindings.
    pub bindings: Vec<Binding>,
    /// Records of any kind that cannot be read; `berth audit` reports each.
    pub bad: Vec<BadRecord>,
}

/// Read the ledger. Claims are read before bindings and blocks after them, so the claim and the
/// block of every binding read (both written before the binding) are in the snapshot too.
/// A bad record does not fail the snapshot: it is listed in [`Snapshot::bad`].
pub async fn snapshot(ledger: &dyn Ledger) -> Result<Snapshot, LedgerError> {
    let r = Records(ledger);
    let pools = r.list::<PoolSpec>(Kind::Pool).await?;
    let claims = r.list::<Claim>(Kind::Claim).await?;
    let bindings = r.list::<Binding>(Kind::Binding).await?;
    let blocks = r.list::<Block>(Kind::Block).await?;
    Ok(Snapshot {
        pools: pools.values(),
        blocks: blocks.values(),
        claims: claims.values(),
        bindings: bindings.values(),
        bad: [pools.bad, claims.bad, bindings.bad, blocks.bad].concat(),
    })
}
