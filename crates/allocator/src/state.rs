//! The allocator's cache of the ledger: blocks, bindings, in-flight reservations and cursors.
//! Never held across an await: every ledger write happens outside it.

use berth_core::addr::{from_u128, net_bounds};
use berth_core::block::block_name;
use berth_core::{Binding, Block, Claim, Family, Owner, PoolSpec, SubnetSpec};
use berth_ledger::{BadRecord, Kind, Stored};
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

type AttachmentKey = (String, String, String);

fn key(o: &Owner) -> AttachmentKey {
    (o.network.clone(), o.container_id.clone(), o.ifname.clone())
}

#[derive(Default)]
pub(crate) struct State {
    pub loaded: bool,
    pub pools: HashMap<String, PoolSpec>,
    blocks: BTreeMap<String, Stored<Block>>,
    pub bindings: HashMap<IpAddr, Stored<Binding>>,
    by_owner: HashMap<AttachmentKey, Vec<IpAddr>>,
    pub pending: HashSet<IpAddr>,
    /// Addresses kept by claims (never handed out dynamically), and by which claim.
    claimed: HashMap<IpAddr, String>,
    cursors: HashMap<IpNet, IpAddr>,
    /// Records the ledger holds but Berth cannot read, as of the last reload (and since).
    pub bad: Vec<BadRecord>,
    /// Addresses named by bad binding records: taken, by whom is unknown.
    bad_addresses: HashSet<IpAddr>,
    /// Names (`pool/cidr`) of bad block records: someone else's, never claimed.
    bad_blocks: HashSet<String>,
}

impl State {
    pub fn load(
        &mut self,
        blocks: Vec<Stored<Block>>,
        claims: Vec<Stored<Claim>>,
        bindings: Vec<Stored<Binding>>,
        bad: Vec<BadRecord>,
    ) {
        self.blocks.clear();
        self.bindings.clear();
        self.by_owner.clear();
        self.claimed.clear();
        self.bad.clear();
        self.bad_addresses.clear();
        self.bad_blocks.clear();
        for b in bad {
            self.note_bad(b);
        }
        for b in blocks {
            self.insert_block(b);
        }
        for c in claims {
            self.note_claim(&c.value.name(), &c.value);
        }
        for b in bindings {
            self.insert_binding(b);
        }
        self.loaded = true;
    }

    /// Remember a bad record: a binding's name is its address (taken), a block's name is
    /// `pool/cidr` (another node's). A bad claim's addresses cannot be known.
    fn note_bad(&mut self, b: BadRecord) {
        match b.kind {
            Kind::Binding => {
                if let Ok(ip) = b.name.parse::<IpAddr>() {
                    self.bad_addresses.insert(ip);
                }
            }
            Kind::Block => {
                self.bad_blocks.insert(b.name.clone());
            }
            Kind::Claim | Kind::Pool => {}
        }
        if !self.bad.contains(&b) {
            self.bad.push(b);
        }
    }

    /// A binding record for `ip` turned out unreadable (or misnamed) when read alone.
    pub fn mark_bad_binding(&mut self, ip: IpAddr, reason: String) {
        self.remove_binding(ip);
        self.bad
            .retain(|b| !(b.kind == Kind::Binding && b.name == ip.to_string()));
        self.note_bad(BadRecord {
            kind: Kind::Binding,
            name: ip.to_string(),
            reason,
        });
    }

    /// Remember the addresses a claim keeps, so they are never handed out dynamically.
    pub fn note_claim(&mut self, name: &str, claim: &Claim) {
        for a in &claim.addresses {
            self.claimed.insert(*a, name.to_string());
        }
    }

    pub fn insert_block(&mut self, b: Stored<Block>) {
        let name = b.value.name();
        if self.bad_blocks.remove(&name) {
            self.bad
                .retain(|r| !(r.kind == Kind::Block && r.name == name));
        }
        self.blocks.insert(name, b);
    }

    /// Whether the block is in the ledger: ours, another node's, or an unreadable record
    /// (which counts as another node's, so it is never claimed).
    pub fn block_known(&self, pool: &str, cidr: &IpNet) -> bool {
        let name = block_name(pool, cidr);
        self.blocks.contains_key(&name) || self.bad_blocks.contains(&name)
    }

    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    pub fn insert_binding(&mut self, b: Stored<Binding>) {
        let ip = b.value.address;
        self.remove_binding(ip);
        if self.bad_addresses.remove(&ip) {
            // Readable again (fixed, or replaced after an operator deleted it).
            self.bad
                .retain(|r| !(r.kind == Kind::Binding && r.name == ip.to_string()));
        }
        if let Some(o) = b.value.attachment() {
            self.by_owner.entry(key(o)).or_default().push(ip);
        }
        self.bindings.insert(ip, b);
    }

    pub fn remove_binding(&mut self, ip: IpAddr) {
        if let Some(old) = self.bindings.remove(&ip) {
            let Some(o) = old.value.attachment() else {
                return;
            };
            let k = key(o);
            if let Some(v) = self.by_owner.get_mut(&k) {
                v.retain(|a| *a != ip);
                if v.is_empty() {
                    self.by_owner.remove(&k);
                }
            }
        }
    }

    pub fn held_by(&self, owner: &Owner) -> Vec<Stored<Binding>> {
        self.by_owner
            .get(&key(owner))
            .into_iter()
            .flatten()
            .filter_map(|ip| self.bindings.get(ip).cloned())
            .collect()
    }

    fn my_blocks<'a>(
        &'a self,
        node: &'a str,
        pool: &'a PoolSpec,
        subnet: &'a SubnetSpec,
    ) -> impl Iterator<Item = &'a Block> + 'a {
        self.blocks
            .values()
            .map(|s| &s.value)
            .filter(move |b| b.node == node && b.pool == pool.name && subnet.cidr.contains(&b.cidr))
    }

    /// A free address in one of the node's blocks. Without a cursor for a block (a fresh plugin
    /// process) the scan starts at an offset derived from `hint`, so concurrent processes on one
    /// node rarely race for the same first free address.
    fn find_free(
        &self,
        node: &str,
        pool: &PoolSpec,
        fam: Family,
        hint: u64,
    ) -> Option<(IpAddr, SubnetSpec, IpNet)> {
        let used = |ip: IpAddr| {
            self.bindings.contains_key(&ip)
                || self.pending.contains(&ip)
                || self.claimed.contains_key(&ip)
                || self.bad_addresses.contains(&ip)
        };
        for subnet in pool.subnets.iter().filter(|s| s.family() == fam) {
            for block in self.my_blocks(node, pool, subnet) {
                let start = self.cursors.get(&block.cidr).copied().unwrap_or_else(|| {
                    let (first, last) = net_bounds(&block.cidr);
                    from_u128(first + u128::from(hint) % (last - first + 1), fam)
                });
                if let Some(ip) = block.next_free(subnet, used, Some(start)) {
                    return Some((ip, subnet.clone(), block.cidr));
                }
            }
        }
        None
    }

    /// Pick a free address in one of the node's blocks and mark it in flight.
    pub fn reserve_free(
        &mut self,
        node: &str,
        pool: &PoolSpec,
        fam: Family,
        owner: &Owner,
    ) -> Option<(IpAddr, SubnetSpec, IpNet)> {
        let pick = self.find_free(node, pool, fam, hint(owner))?;
        self.pending.insert(pick.0);
        self.cursors.insert(pick.2, pick.0);
        Some(pick)
    }

    pub fn has_free(&self, node: &str, pool: &PoolSpec, fam: Family) -> bool {
        self.find_free(node, pool, fam, 0).is_some()
    }
}

/// A stable hash of an attachment, to spread fresh processes' first picks over a block.
fn hint(o: &Owner) -> u64 {
    o.container_id
        .bytes()
        .chain(o.ifname.bytes())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}
