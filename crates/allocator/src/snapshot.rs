//! A consistent-enough read of the whole ledger, for the CLI and the audit.

use berth_core::{Binding, Block, PoolSpec};
use berth_ledger::{Kind, Ledger, LedgerError, Records};

/// Everything the ledger holds about pools, blocks and bindings.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Pools.
    pub pools: Vec<PoolSpec>,
    /// Blocks.
    pub blocks: Vec<Block>,
    /// Bindings.
    pub bindings: Vec<Binding>,
}

/// Read the ledger. Blocks are read after bindings, so the block of every binding read (claimed
/// before the binding was made) is in the snapshot too.
pub async fn snapshot(ledger: &dyn Ledger) -> Result<Snapshot, LedgerError> {
    let r = Records(ledger);
    let pools = r.list::<PoolSpec>(Kind::Pool).await?;
    let bindings = r.list::<Binding>(Kind::Binding).await?;
    let blocks = r.list::<Block>(Kind::Block).await?;
    Ok(Snapshot {
        pools: pools.into_iter().map(|s| s.value).collect(),
        blocks: blocks.into_iter().map(|s| s.value).collect(),
        bindings: bindings.into_iter().map(|s| s.value).collect(),
    })
}
