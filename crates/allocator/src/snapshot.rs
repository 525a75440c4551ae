//! A consistent-enough read of the whole ledger, for the CLI and the audit.

use berth_core::{Binding, Block, Claim, PoolSpec};
use berth_ledger::{Kind, Ledger, LedgerError, Records};

/// Everything the ledger holds about pools, blocks and bindings.
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
}

/// Read the ledger. Claims are read before bindings and blocks after them, so the claim and the
/// block of every binding read (both written before the binding) are in the snapshot too.
pub async fn snapshot(ledger: &dyn Ledger) -> Result<Snapshot, LedgerError> {
    let r = Records(ledger);
    let pools = r.list::<PoolSpec>(Kind::Pool).await?;
    let claims = r.list::<Claim>(Kind::Claim).await?;
    let bindings = r.list::<Binding>(Kind::Binding).await?;
    let blocks = r.list::<Block>(Kind::Block).await?;
    Ok(Snapshot {
        pools: pools.into_iter().map(|s| s.value).collect(),
        blocks: blocks.into_iter().map(|s| s.value).collect(),
        claims: claims.into_iter().map(|s| s.value).collect(),
        bindings: bindings.into_iter().map(|s| s.value).collect(),
    })
}
