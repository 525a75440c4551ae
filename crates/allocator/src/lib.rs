//! The allocator: Berth's allocation decisions (from `berth-core`) carried out against a ledger.
//!
//! One [`Allocator`] serves one node. It keeps a cache of the ledger's blocks and bindings so that a
//! node picks addresses inside its own blocks without scanning the cluster; the ledger stays the only
//! truth because every binding and block claim is a compare-and-swap create, and a lost race simply
//! marks the address or block as taken and tries the next. The CNI plugin uses it directly (a fresh
//! allocator per invocation) and the node agent keeps one alive, so both paths run the same code.

mod error;
mod snapshot;
mod state;

pub use error::AllocError;
pub use snapshot::{snapshot, Snapshot};

use berth_core::block::candidate_blocks;
use berth_core::{
    Binding, BindingKind, Block, Claim, Family, Holder, Identity, Owner, PoolSpec, SubnetSpec,
    Timestamp,
};
use berth_ledger::{BadRecord, Kind, Ledger, LedgerError, Records, Stored};
use ipnet::IpNet;
use state::State;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// How many candidate blocks beyond the known ones a claim looks at before calling a pool full.
const CLAIM_SCAN: usize = 4096;
/// How many lost races one allocation tolerates before giving up with "try again".
const MAX_RACES: usize = 256;
/// CNI GC never releases a binding made less than this long before the GC began: the runtime's
/// list of valid attachments may predate it.
pub const GC_GUARD: Duration = Duration::from_secs(1);

/// What an ADD asks for.
#[derive(Debug, Clone)]
pub struct AddRequest {
    /// The pool to allocate from.
    pub pool: PoolSpec,
    /// The attachment that will hold the addresses.
    pub owner: Owner,
    /// Explicitly requested addresses, at most one per family.
    pub fixed: Vec<IpAddr>,
    /// Keep the addresses for an identity (families without a fixed request).
    pub claim: Option<ClaimRequest>,
}

/// Addresses kept for an identity: a StatefulSet ordinal (a set of one per family) or a
/// Deployment's sticky set of `size` per family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// Who the addresses are kept for.
    pub identity: Identity,
    /// How many addresses per family the claim may hold.
    pub size: u32,
}

/// Where an allocator reads the time: the system clock, or a test's clock.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// Allocates for one node against one ledger.
pub struct Allocator {
    ledger: Arc<dyn Ledger>,
    node: String,
    state: Mutex<State>,
    claiming: tokio::sync::Mutex<()>,
    clock: Clock,
}

/// The system clock as a record timestamp (microseconds).
pub fn now() -> Timestamp {
    Timestamp::from_system(SystemTime::now())
}

impl Allocator {
    /// An allocator for `node`; nothing is read until the first request or [`Allocator::reload`].
    pub fn new(ledger: Arc<dyn Ledger>, node: impl Into<String>) -> Self {
        Self::with_clock(ledger, node, Arc::new(now))
    }

    /// An allocator reading the time from `clock` (records' timestamps, the GC guard), so tests
    /// can put the GC exactly where they want it relative to an ADD.
    pub fn with_clock(ledger: Arc<dyn Ledger>, node: impl Into<String>, clock: Clock) -> Self {
        Allocator {
            ledger,
            node: node.into(),
            state: Mutex::new(State::default()),
            claiming: tokio::sync::Mutex::new(()),
            clock,
        }
    }

    fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// The ledger records the last reload found unreadable; their addresses and blocks count as
    /// taken until an operator fixes or deletes them.
    pub fn bad_records(&self) -> Vec<BadRecord> {
        self.state().bad.clone()
    }

    /// The node this allocator serves.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The ledger it writes to.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-read blocks and bindings from the ledger, e.g. after an agent restart. A bad record
    /// does not fail the reload: a bad binding's address and a bad block's CIDR count as taken.
    pub async fn reload(&self) -> Result<(), AllocError> {
        let r = Records(self.ledger.as_ref());
        let blocks = r.list::<Block>(Kind::Block).await?;
        let claims = r.list::<Claim>(Kind::Claim).await?;
        let bindings = r.list::<Binding>(Kind::Binding).await?;
        let bad: Vec<BadRecord> = [blocks.bad, claims.bad, bindings.bad].concat();
        self.state()
            .load(blocks.records, claims.records, bindings.records, bad);
        Ok(())
    }

    async fn ensure_loaded(&self) -> Result<(), AllocError> {
        if !self.state().loaded {
            self.reload().await?;
        }
        Ok(())
    }

    /// Record the pool in the ledger (the configuration is authoritative), unless it is already there.
    /// The pool record named `name` (a Pool object a user applied, on the Kubernetes ledger),
    /// or `None` when there is none.
    ///
    /// Why: a CNI configuration may name a Pool object (`ipam.pool`) instead of defining the
    /// pool; the agent reads it here for each ADD, so an edit of the Pool takes effect at once.
    pub async fn pool_named(&self, name: &str) -> Result<Option<PoolSpec>, AllocError> {
        Ok(Records(self.ledger.as_ref())
            .get::<PoolSpec>(Kind::Pool, name)
            .await?
            .map(|s| s.value))
    }

    async fn ensure_pool(&self, pool: &PoolSpec) -> Result<(), AllocError> {
        if self.state().pools.get(&pool.name) == Some(pool) {
            return Ok(());
        }
        let r = Records(self.ledger.as_ref());
        for _ in 0..MAX_RACES {
            // Raw, so an unreadable pool record is replaced by the configuration (which is
            // authoritative) rather than failing every ADD.
            let res = match self.ledger.get(Kind::Pool, &pool.name).await? {
                Some(e) => match serde_json::from_slice::<PoolSpec>(&e.value) {
                    Ok(cur) if &cur == pool => Ok(e.version),
                    Ok(_) => r.update(Kind::Pool, &pool.name, pool, &e.version).await,
                    Err(err) => {
                        tracing::warn!(pool = %pool.name, error = %err, "replacing an unreadable pool record with the configuration's pool");
                        r.update(Kind::Pool, &pool.name, pool, &e.version).await
                    }
                },
                None => r.create(Kind::Pool, &pool.name, pool).await,
            };
            match res {
                Ok(_) => {
                    self.state().pools.insert(pool.name.clone(), pool.clone());
                    return Ok(());
                }
                Err(LedgerError::Exists { .. } | LedgerError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AllocError::Contended {
            what: format!("pool {}", pool.name),
        })
    }

    /// ADD: the attachment's addresses, one per family of the pool. Repeating an ADD for the same
    /// attachment returns the same addresses. On failure nothing stays allocated.
    pub async fn add(&self, req: &AddRequest) -> Result<Vec<Binding>, AllocError> {
        req.pool.validate()?;
        let families = req.pool.families();
        let mut seen = HashSet::new();
        for ip in &req.fixed {
            let fam = Family::of(*ip);
            if !families.contains(&fam) {
                return Err(AllocError::FamilyNotServed {
                    address: *ip,
                    pool: req.pool.name.clone(),
                });
            }
            if !seen.insert(fam) {
                return Err(AllocError::TwoFixedOfOneFamily { family: fam });
            }
        }
        self.ensure_loaded().await?;
        self.ensure_pool(&req.pool).await?;
        // A repeated ADD: confirm what the cache remembers against the ledger, since another node
        // (or GC) may have released it meanwhile. New attachments, the common case, skip this read.
        let mut existing = vec![];
        let remembered = self.state().held_by(&req.owner);
        for b in remembered {
            if let Some(cur) = self.current_for(b.value.address, &req.owner).await? {
                existing.push(cur);
            }
        }
        let mut out = vec![];
        let mut created = vec![];
        for fam in families {
            let fixed = req.fixed.iter().copied().find(|ip| Family::of(*ip) == fam);
            if let Some(b) = existing.iter().find(|b| Family::of(b.address) == fam) {
                if let Some(ip) = fixed.filter(|ip| *ip != b.address) {
                    self.rollback(&created).await;
                    return Err(AllocError::ConflictingRequest {
                        requested: ip,
                        held: b.address,
                        owner: req.owner.describe(),
                    });
                }
                out.push(b.clone());
                continue;
            }
            let res = match (fixed, &req.claim) {
                (Some(ip), _) => self.bind_fixed(&req.pool, &req.owner, ip).await,
                (None, Some(c)) => self.bind_claimed(&req.pool, fam, &req.owner, c).await,
                (None, None) => self.bind_dynamic(&req.pool, fam, &req.owner).await,
            };
            match res {
                Ok(b) => {
                    created.push(b.clone());
                    out.push(b);
                }
                Err(e) => {
                    self.rollback(&created).await;
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    async fn rollback(&self, created: &[Binding]) {
        for b in created {
            let Some(owner) = b.attachment() else {
                continue;
            };
            if let Err(e) = self.release_one(b.address, owner, None).await {
                tracing::warn!(address = %b.address, error = %e, "could not roll back a partial ADD; GC will release it");
            }
        }
    }

    fn binding(
        &self,
        pool: &PoolSpec,
        subnet: &SubnetSpec,
        owner: &Owner,
        address: IpAddr,
        kind: BindingKind,
    ) -> Binding {
        Binding {
            address,
            prefix_len: subnet.cidr.prefix_len(),
            pool: pool.name.clone(),
            node: self.node.clone(),
            holder: Holder::Attachment(owner.clone()),
            kind,
            since: self.now(),
        }
    }

    async fn bind_fixed(
        &self,
        pool: &PoolSpec,
        owner: &Owner,
        ip: IpAddr,
    ) -> Result<Binding, AllocError> {
        let subnet = pool.subnet_of(ip).ok_or_else(|| AllocError::NotInPool {
            address: ip,
            pool: pool.name.clone(),
        })?;
        if !subnet.allows_fixed(ip) {
            return Err(AllocError::FixedNotAllowed {
                address: ip,
                pool: pool.name.clone(),
                reserved: subnet.fixed.iter().map(|r| r.to_string()).collect(),
            });
        }
        let b = self.binding(pool, subnet, owner, ip, BindingKind::Fixed);
        self.state().pending.insert(ip);
        let res = self.create_binding(b).await;
        self.state().pending.remove(&ip);
        match res? {
            Ok(b) => Ok(b),
            Err(Held::By(h)) if h.held_by_attachment(owner) => Ok(*h),
            Err(Held::By(h)) => Err(AllocError::AddressHeld {
                address: ip,
                holder: h.holder.describe(),
                node: h.node,
            }),
            Err(Held::Bad(reason)) => Err(AllocError::HeldByBadRecord {
                address: ip,
                reason,
            }),
            Err(Held::Vanished) => Err(AllocError::Contended {
                what: format!("address {ip}"),
            }),
        }
    }

    /// Create a binding record. `Ok(Ok(b))`: the address is ours now. `Ok(Err(held))`: someone
    /// holds it (the cache has learned who). A failure with an unclear outcome is remembered for
    /// a later DEL (see [`Self::maybe_written`]).
    async fn create_binding(&self, b: Binding) -> Result<Result<Binding, Held>, AllocError> {
        match Records(self.ledger.as_ref())
            .create(Kind::Binding, &b.name(), &b)
            .await
        {
            Ok(version) => {
                self.state().insert_binding(Stored {
                    value: b.clone(),
                    version,
                });
                Ok(Ok(b))
            }
            Err(LedgerError::Exists { .. }) => Ok(Err(self.refresh_binding(b.address).await?)),
            Err(e) => Err(self.maybe_written(b, e)),
        }
    }

    /// A create that failed without a clear answer (timeout, lost connection) may still have been
    /// applied. Remember the binding as possibly held, so the runtime's DEL for the failed ADD (or a
    /// repeated ADD) checks the ledger for it instead of leaking it; both re-read before acting.
    fn maybe_written(&self, b: Binding, e: LedgerError) -> AllocError {
        if matches!(e, LedgerError::Unavailable { .. }) {
            self.state().insert_binding(Stored {
                value: b,
                version: berth_ledger::Version(String::new()),
            });
        }
        e.into()
    }

    /// Re-read one binding into the cache after losing a race for it.
    async fn refresh_binding(&self, ip: IpAddr) -> Result<Held, AllocError> {
        let got = Records(self.ledger.as_ref())
            .get::<Binding>(Kind::Binding, &ip.to_string())
            .await;
        let mut st = self.state();
        match got {
            Ok(Some(s)) if s.value.address == ip => {
                let b = s.value.clone();
                st.insert_binding(s);
                Ok(Held::By(Box::new(b)))
            }
            Ok(Some(s)) => {
                let reason = format!(
                    "it is stored under this name but its content names {}",
                    s.value.address
                );
                st.mark_bad_binding(ip, reason.clone());
                Ok(Held::Bad(reason))
            }
            Ok(None) => {
                st.remove_binding(ip);
                Ok(Held::Vanished)
            }
            Err(LedgerError::Corrupt { reason, .. }) => {
                // Unreadable: taken by someone we cannot name, never free.
                st.mark_bad_binding(ip, reason.clone());
                Ok(Held::Bad(reason))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The binding the ledger holds for `ip` for `owner`, if it is still that attachment's.
    async fn current_for(&self, ip: IpAddr, owner: &Owner) -> Result<Option<Binding>, AllocError> {
        Ok(match self.refresh_binding(ip).await? {
            Held::By(cur) if cur.held_by_attachment(owner) => Some(*cur),
            _ => None,
        })
    }

    async fn bind_dynamic(
        &self,
        pool: &PoolSpec,
        fam: Family,
        owner: &Owner,
    ) -> Result<Binding, AllocError> {
        for _ in 0..MAX_RACES {
            let pick = self.state().reserve_free(&self.node, pool, fam, owner);
            let Some((ip, subnet, block)) = pick else {
                if !self.claim_block(pool, fam).await? {
                    return Err(AllocError::Exhausted {
                        pool: pool.name.clone(),
                        family: fam,
                    });
                }
                continue;
            };
            let b = self.binding(pool, &subnet, owner, ip, BindingKind::Dynamic { block });
            let res = self.create_binding(b).await;
            self.state().pending.remove(&ip);
            // Held by someone else (a fixed request, a stale cache): the cache learned it; next.
            if let Ok(b) = res? {
                return Ok(b);
            }
        }
        Err(AllocError::Contended {
            what: format!("{fam} addresses of pool {}", pool.name),
        })
    }

    /// An address kept for an identity: a free member of its claim, or a new member taken from
    /// this node's blocks while the claim holds fewer than `size` of the family. The claim is
    /// written (compare-and-swap) before the binding, so a crash in between leaves the address kept,
    /// never lost.
    async fn bind_claimed(
        &self,
        pool: &PoolSpec,
        fam: Family,
        owner: &Owner,
        req: &ClaimRequest,
    ) -> Result<Binding, AllocError> {
        let r = Records(self.ledger.as_ref());
        let name = Claim {
            identity: req.identity.clone(),
            pool: pool.name.clone(),
            addresses: vec![],
            since: Timestamp::EPOCH,
        }
        .name();
        for _ in 0..MAX_RACES {
            let current: Option<Stored<Claim>> = r.get(Kind::Claim, &name).await?;
            if let Some(c) = &current {
                self.state().note_claim(&name, &c.value);
            }
            let members: Vec<IpAddr> = current
                .iter()
                .flat_map(|c| c.value.addresses.iter().copied())
                .filter(|a| Family::of(*a) == fam)
                .collect();
            let mut busy = vec![];
            for ip in &members {
                let Some(subnet) = pool.subnet_of(*ip) else {
                    continue;
                };
                let b = self.binding(
                    pool,
                    subnet,
                    owner,
                    *ip,
                    BindingKind::Claimed {
                        claim: name.clone(),
                    },
                );
                match self.create_binding(b).await? {
                    Ok(b) => return Ok(b),
                    Err(Held::By(h)) if h.held_by_attachment(owner) => return Ok(*h),
                    Err(Held::By(h)) => busy.push(format!("{} by {}", ip, h.holder.describe())),
                    Err(Held::Bad(reason)) => {
                        busy.push(format!("{ip} by an unreadable record ({reason})"))
                    }
                    Err(Held::Vanished) => {}
                }
            }
            if members.len() as u32 >= req.size {
                return Err(AllocError::ClaimBusy {
                    claim: name,
                    held: busy.join(", "),
                });
            }
            // Grow the claim by one address from this node's blocks.
            let Some((ip, subnet, _block)) =
                self.state().reserve_free(&self.node, pool, fam, owner)
            else {
                if !self.claim_block(pool, fam).await? {
                    return Err(AllocError::Exhausted {
                        pool: pool.name.clone(),
                        family: fam,
                    });
                }
                continue;
            };
            let mut claim = current.as_ref().map(|c| c.value.clone()).unwrap_or(Claim {
                identity: req.identity.clone(),
                pool: pool.name.clone(),
                addresses: vec![],
                since: self.now(),
            });
            claim.addresses.push(ip);
            let written = match &current {
                Some(c) => r.update(Kind::Claim, &name, &claim, &c.version).await,
                None => r.create(Kind::Claim, &name, &claim).await,
            };
            self.state().pending.remove(&ip);
            match written {
                Ok(_) => {
                    tracing::info!(claim = %name, address = %ip, "claim keeps a new address");
                    self.state().note_claim(&name, &claim);
                    let b = self.binding(
                        pool,
                        &subnet,
                        owner,
                        ip,
                        BindingKind::Claimed {
                            claim: name.clone(),
                        },
                    );
                    if let Ok(b) = self.create_binding(b).await? {
                        return Ok(b);
                    }
                }
                Err(LedgerError::Exists { .. } | LedgerError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AllocError::Contended {
            what: format!("claim {name}"),
        })
    }

    /// Claim one more block of `pool` for this node. False when no candidate block is left.
    async fn claim_block(&self, pool: &PoolSpec, fam: Family) -> Result<bool, AllocError> {
        let _one_at_a_time = self.claiming.lock().await;
        if self.state().has_free(&self.node, pool, fam) {
            return Ok(true); // another task claimed while we waited
        }
        let r = Records(self.ledger.as_ref());
        for subnet in pool.subnets.iter().filter(|s| s.family() == fam) {
            let known = self.state().block_count();
            let candidates: Vec<IpNet> = {
                let st = self.state();
                candidate_blocks(subnet, &self.node)
                    .take(known + CLAIM_SCAN)
                    .filter(|c| !st.block_known(&pool.name, c))
                    .collect()
            };
            for cidr in candidates {
                let block = Block {
                    pool: pool.name.clone(),
                    cidr,
                    node: self.node.clone(),
                };
                if block.capacity(subnet) == 0 {
                    continue;
                }
                match r.create(Kind::Block, &block.name(), &block).await {
                    Ok(version) => {
                        tracing::info!(block = %cidr, pool = %pool.name, node = %self.node, "claimed block");
                        self.state().insert_block(Stored {
                            value: block,
                            version,
                        });
                        return Ok(true);
                    }
                    Err(LedgerError::Exists { .. }) => {
                        if let Some(s) = r.get::<Block>(Kind::Block, &block.name()).await? {
                            let mine = s.value.node == self.node;
                            self.state().insert_block(s);
                            if mine {
                                return Ok(true);
                            }
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(false)
    }

    /// Owner-checked release of one address: freed only if the ledger still shows this attachment
    /// holding it. Returns the released binding.
    ///
    /// With the cached record of the binding (`cached`), the first attempt is a compare-and-swap
    /// delete against the cached version, without reading first: versions are unique per write,
    /// so the delete succeeds only if the ledger still holds exactly the cached record (whose
    /// owner was checked). Any other outcome falls back to read-check-delete. This saves a ledger
    /// round trip per DEL on the agent, whose cache is normally current.
    async fn release_one(
        &self,
        ip: IpAddr,
        owner: &Owner,
        cached: Option<&Stored<Binding>>,
    ) -> Result<Option<Binding>, AllocError> {
        if let Some(c) =
            cached.filter(|c| c.value.address == ip && c.value.held_by_attachment(owner))
        {
            match self
                .ledger
                .delete(Kind::Binding, &ip.to_string(), &c.version)
                .await
            {
                Ok(()) => {
                    self.state().remove_binding(ip);
                    return Ok(Some(c.value.clone()));
                }
                Err(LedgerError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let r = Records(self.ledger.as_ref());
        for _ in 0..MAX_RACES {
            let cur = match r.get::<Binding>(Kind::Binding, &ip.to_string()).await {
                Ok(Some(cur)) => cur,
                Ok(None) => {
                    self.state().remove_binding(ip);
                    return Ok(None);
                }
                Err(LedgerError::Corrupt { reason, .. }) => {
                    // Nobody can prove it is theirs: it stays, taken, until an operator acts.
                    tracing::warn!(address = %ip, %reason, "not releasing an unreadable binding record");
                    self.state().mark_bad_binding(ip, reason);
                    return Ok(None);
                }
                Err(e) => return Err(e.into()),
            };
            if !cur.value.held_by_attachment(owner) {
                // Someone else holds it now: nothing of ours to free.
                self.state().insert_binding(cur);
                return Ok(None);
            }
            match self
                .ledger
                .delete(Kind::Binding, &ip.to_string(), &cur.version)
                .await
            {
                Ok(()) => {
                    self.state().remove_binding(ip);
                    return Ok(Some(cur.value));
                }
                Err(LedgerError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AllocError::Contended {
            what: format!("address {ip}"),
        })
    }

    /// DEL: release every address the attachment holds. Releasing an unknown attachment succeeds.
    pub async fn release(&self, owner: &Owner) -> Result<Vec<Binding>, AllocError> {
        self.ensure_loaded().await?;
        let held = self.state().held_by(owner);
        let mut out = vec![];
        for b in held {
            if let Some(released) = self.release_one(b.value.address, owner, Some(&b)).await? {
                out.push(released);
            }
        }
        Ok(out)
    }

    /// CHECK: the attachment's bindings as the ledger has them now; empty when it holds none.
    pub async fn held(&self, owner: &Owner) -> Result<Vec<Binding>, AllocError> {
        self.ensure_loaded().await?;
        let cached = self.state().held_by(owner);
        let mut out = vec![];
        for b in cached {
            if let Some(cur) = self.current_for(b.value.address, owner).await? {
                out.push(cur);
            }
        }
        Ok(out)
    }

    /// GC: release this node's bindings in `network` whose attachment is not in `valid`
    /// (container ID, interface). Fails closed: the ledger is re-read first, and bindings made
    /// less than [`GC_GUARD`] before this call started, or being made right now, are kept.
    pub async fn gc(
        &self,
        network: &str,
        valid: &[(String, String)],
    ) -> Result<Vec<Binding>, AllocError> {
        let started = self.now();
        self.reload().await?;
        let valid: HashSet<(&str, &str)> = valid
            .iter()
            .map(|(c, i)| (c.as_str(), i.as_str()))
            .collect();
        let stale: Vec<Binding> = {
            let st = self.state();
            st.bindings
                .values()
                .map(|s| &s.value)
                .filter(|b| b.node == self.node)
                .filter(|b| {
                    b.attachment().is_some_and(|o| {
                        o.network == network
                            && !valid.contains(&(o.container_id.as_str(), o.ifname.as_str()))
                    })
                })
                .filter(|b| started.since(b.since) >= GC_GUARD && !st.pending.contains(&b.address))
                .cloned()
                .collect()
        };
        let mut out = vec![];
        for b in stale {
            let Some(owner) = b.attachment() else {
                continue;
            };
            if let Some(released) = self.release_one(b.address, owner, None).await? {
                tracing::info!(address = %released.address, holder = %released.holder.describe(), "GC released");
                out.push(released);
            }
        }
        Ok(out)
    }

    /// STATUS: the ledger answers and the pool can still hand out an address of every family.
    pub async fn status(&self, pool: &PoolSpec) -> Result<(), AllocError> {
        pool.validate()?;
        self.ledger.get(Kind::Pool, &pool.name).await?;
        self.ensure_loaded().await?;
        for fam in pool.families() {
            let st = self.state();
            if st.has_free(&self.node, pool, fam) {
                continue;
            }
            let claimable = pool.subnets.iter().filter(|s| s.family() == fam).any(|s| {
                candidate_blocks(s, &self.node)
                    .take(st.block_count() + CLAIM_SCAN)
                    .filter(|c| !st.block_known(&pool.name, c))
                    .any(|c| {
                        Block {
                            pool: pool.name.clone(),
                            cidr: c,
                            node: self.node.clone(),
                        }
                        .capacity(s)
                            > 0
                    })
            });
            if !claimable {
                return Err(AllocError::Exhausted {
                    pool: pool.name.clone(),
                    family: fam,
                });
            }
        }
        Ok(())
    }
}

/// Who holds an address that a create found taken.
enum Held {
    /// This binding.
    By(Box<Binding>),
    /// A record that cannot be read (why): the address is taken, by whom is unknown.
    Bad(String),
    /// Nobody any more: the record vanished between the create and the read.
    Vanished,
}
